//! Ownership of the cgroup values the agent writes: for each file it may change (a
//! container's `cpu.max`, `cpu.max.burst`, `memory.high`, and a pod's `cpu.max`), one typed
//! record of the original, the last value the agent wrote and confirmed, and a value being
//! written. Every reading of such a file is classified against its record: the original
//! untouched, the agent's own value, or someone else's. Someone else's value becomes the new
//! original — the agent never takes a value it did not write for its own, and never fights
//! another writer. The journal (`crate::journal`) persists these records; this module holds
//! the rules and no I/O.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::cgroup::CpuMax;
use crate::cgroup::parse::{parse_cpu_max, parse_u64_or_max};
use crate::identity::Identity;

/// A byte count or `max` (`memory.high`), or a burst in microseconds (`cpu.max.burst`).
/// Serialised as the kernel prints it: a decimal integer or `"max"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Limit(pub Option<u64>);

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("max"),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(v) => s.serialize_u64(v),
            None => s.serialize_str("max"),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(v) => Ok(Limit(Some(v))),
            Raw::S(s) => parse_u64_or_max(&s)
                .map(Limit)
                .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}"))),
        }
    }
}

/// `cpu.max` as it sits in the journal: the kernel's text, parsed and checked on load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMaxValue(pub CpuMax);

impl Serialize for CpuMaxValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CpuMaxValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let value =
            parse_cpu_max(&text).map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))?;
        value
            .validate()
            .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))?;
        Ok(CpuMaxValue(value))
    }
}

/// What a reading of an owned file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The original, and the agent has not changed it (or its write has not landed).
    Untouched,
    /// A value the agent wrote.
    Ours,
    /// Someone else's value: adopted as the new original.
    Outside,
}

/// One owned file: its original, the last value the agent wrote and the kernel confirmed,
/// and a value journaled for writing whose outcome is not known yet (a write in flight, one
/// that timed out, or a crash between the journal and the write). The kernel holds one of
/// these three, or someone else's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Owned<T> {
    pub original: T,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub written: Option<T>,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub pending: Option<T>,
    /// Migrated from a version-1 journal, which kept no written values: whatever the file
    /// holds at the first reading (if not the original) is the agent's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub legacy: bool,
}

fn none<T>() -> Option<T> {
    None
}

fn is_false(b: &bool) -> bool {
    !b
}

impl<T: Copy + PartialEq> Owned<T> {
    /// A file found holding `original`, untouched by the agent.
    pub fn new(original: T) -> Self {
        Owned {
            original,
            written: None,
            pending: None,
            legacy: false,
        }
    }

    /// A record migrated from a version-1 journal (see `legacy`).
    pub fn legacy(original: T) -> Self {
        Owned {
            legacy: true,
            ..Owned::new(original)
        }
    }

    /// True once the agent may have changed the file.
    pub fn touched(&self) -> bool {
        self.legacy || self.written.is_some() || self.pending.is_some()
    }

    /// Classifies a reading without changing the record.
    pub fn classify(&self, found: &T) -> Found {
        if self.legacy {
            return Found::Ours;
        }
        if self.written.as_ref() == Some(found) || self.pending.as_ref() == Some(found) {
            Found::Ours
        } else if self.written.is_none() && *found == self.original {
            Found::Untouched
        } else {
            Found::Outside
        }
    }

    /// Reconciles a reading with the record: a pending value read back is confirmed, and
    /// someone else's value becomes the original (the agent's values are forgotten). Returns
    /// what the reading was and whether the record changed.
    pub fn observe(&mut self, found: T) -> (Found, bool) {
        if self.legacy {
            self.legacy = false;
            if found != self.original {
                self.written = Some(found);
            }
            return (Found::Ours, true);
        }
        let kind = self.classify(&found);
        let before = *self;
        match kind {
            Found::Ours if self.pending == Some(found) => {
                self.written = Some(found);
                self.pending = None;
            }
            Found::Ours | Found::Untouched => {}
            Found::Outside => *self = Owned::new(found),
        }
        (kind, *self != before)
    }

    /// Records that `value` is about to be written (journal it before the write).
    pub fn begin(&mut self, value: T) {
        if self.written != Some(value) && !(self.written.is_none() && value == self.original) {
            self.pending = Some(value);
        }
    }

    /// Records that the kernel holds `value`, written by the agent.
    pub fn confirm(&mut self, value: T) {
        if self.written.is_none() && value == self.original && self.pending != Some(value) {
            return;
        }
        self.written = Some(value);
        if self.pending == Some(value) {
            self.pending = None;
        }
    }

    /// What the agent means the file to hold now: its latest write, else the original.
    pub fn intended(&self) -> T {
        self.pending.or(self.written).unwrap_or(self.original)
    }
}

/// The owned files of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    /// Who the container is (names kept for the Events of a later run, and for operators).
    pub id: Identity,
    pub cpu_max: Owned<CpuMaxValue>,
    /// `None` when the kernel has no `cpu.max.burst` (before 5.14).
    pub cpu_max_burst: Option<Owned<Limit>>,
    /// `None` when the cgroup has no memory controller files.
    pub memory_high: Option<Owned<Limit>>,
    /// The pod cgroup whose `cpu.max` this container holds raised (`cpu.allowAboveLimit`).
    pub pod_hold: Option<String>,
    /// Seconds since the epoch when first recorded.
    pub recorded_at: u64,
}

/// A container record as the journal stores it: the identity's fields flat beside the owned
/// values (journal v2), unknown keys refused. Borrowed to write, owned to read.
#[derive(Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    deny_unknown_fields,
    bound(
        serialize = "S: Serialize + AsRef<str>, C: Serialize, L: Serialize",
        deserialize = "S: Deserialize<'de> + Default, C: Deserialize<'de>, L: Deserialize<'de>"
    )
)]
struct RecordWire<S, C, L> {
    pod_uid: S,
    container_id: S,
    #[serde(default, skip_serializing_if = "is_empty")]
    namespace: S,
    #[serde(default, skip_serializing_if = "is_empty")]
    pod: S,
    #[serde(default, skip_serializing_if = "is_empty")]
    container: S,
    cpu_max: C,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpu_max_burst: Option<L>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memory_high: Option<L>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod_hold: Option<S>,
    recorded_at: u64,
}

fn is_empty<S: AsRef<str>>(s: &S) -> bool {
    s.as_ref().is_empty()
}

impl Serialize for ContainerRecord {
    fn serialize<Z: Serializer>(&self, z: Z) -> Result<Z::Ok, Z::Error> {
        let id = &self.id;
        RecordWire {
            pod_uid: id.pod_uid.as_str(),
            container_id: id.container_id.as_str(),
            namespace: id.namespace.as_str(),
            pod: id.pod.as_str(),
            container: id.container.as_str(),
            cpu_max: &self.cpu_max,
            cpu_max_burst: self.cpu_max_burst.as_ref(),
            memory_high: self.memory_high.as_ref(),
            pod_hold: self.pod_hold.as_deref(),
            recorded_at: self.recorded_at,
        }
        .serialize(z)
    }
}

impl<'de> Deserialize<'de> for ContainerRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = RecordWire::<String, Owned<CpuMaxValue>, Owned<Limit>>::deserialize(d)?;
        Ok(ContainerRecord {
            id: Identity {
                namespace: w.namespace,
                pod: w.pod,
                container: w.container,
                pod_uid: w.pod_uid,
                container_id: w.container_id,
            },
            cpu_max: w.cpu_max,
            cpu_max_burst: w.cpu_max_burst,
            memory_high: w.memory_high,
            pod_hold: w.pod_hold,
            recorded_at: w.recorded_at,
        })
    }
}

impl ContainerRecord {
    /// A record of what a container holds when first found: nothing of the agent's.
    pub fn untouched(
        id: Identity,
        cpu_max: CpuMax,
        burst: Option<u64>,
        memory_high: Option<Option<u64>>,
        recorded_at: u64,
    ) -> ContainerRecord {
        ContainerRecord {
            id,
            cpu_max: Owned::new(CpuMaxValue(cpu_max)),
            cpu_max_burst: burst.map(|b| Owned::new(Limit(Some(b)))),
            memory_high: memory_high.map(|h| Owned::new(Limit(h))),
            pod_hold: None,
            recorded_at,
        }
    }

    /// True when any of the container's files may hold a value the agent wrote.
    pub fn touched(&self) -> bool {
        self.cpu_max.touched()
            || self.cpu_max_burst.is_some_and(|b| b.touched())
            || self.memory_high.is_some_and(|m| m.touched())
    }

    /// True when the record must be on disk: a file may hold the agent's value, or the
    /// container holds its pod raised. Untouched records are kept in memory only.
    pub fn needs_journal(&self) -> bool {
        self.touched() || self.pod_hold.is_some()
    }

    /// Reconciles the record with what a container's files hold when it is found (at start,
    /// or after a restart of the agent): each value that is neither the original nor the
    /// agent's becomes the original. Files the record did not know yet are recorded as found.
    /// Returns the files someone else changed.
    pub fn reconcile_found(
        &mut self,
        cpu_max: CpuMax,
        burst: Option<u64>,
        memory_high: Option<Option<u64>>,
    ) -> Vec<&'static str> {
        let mut outside = Vec::new();
        let mut check = |what, found: Found| {
            if found == Found::Outside {
                outside.push(what);
            }
        };
        check("cpu.max", self.cpu_max.observe(CpuMaxValue(cpu_max)).0);
        match (self.cpu_max_burst.as_mut(), burst) {
            (Some(o), Some(b)) => check("cpu.max.burst", o.observe(Limit(Some(b))).0),
            (None, b) => self.cpu_max_burst = b.map(|b| Owned::new(Limit(Some(b)))),
            (Some(_), None) => {}
        }
        match (self.memory_high.as_mut(), memory_high) {
            (Some(o), Some(h)) => check("memory.high", o.observe(Limit(h)).0),
            (None, Some(h)) => self.memory_high = Some(Owned::new(Limit(h))),
            (_, None) => {}
        }
        outside
    }

    /// The container's quota above its own original limit (what its pod must be raised by).
    pub fn excess_millis(&self) -> u64 {
        let Some(original) = self.cpu_max.original.0.millis() else {
            return 0;
        };
        self.cpu_max
            .intended()
            .0
            .millis()
            .map_or(0, |m| m.saturating_sub(original))
    }
}

/// A pod cgroup whose `cpu.max` the agent raised for containers above their own limits. It
/// is shared by those containers (`holders`) and released — put back to its original — only
/// when the last of them is released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRecord {
    pub cpu_max: Owned<CpuMaxValue>,
    pub holders: BTreeSet<String>,
}

impl PodRecord {
    /// The pod quota to hold when its holders are `excess_millis` above their own limits in
    /// all: exactly the original when none is, never below it. `None` when the pod is
    /// unlimited (nothing to raise).
    pub fn target(&self, excess_millis: u64) -> Option<CpuMax> {
        let original = self.cpu_max.original.0;
        let millis = original.millis()?;
        if excess_millis == 0 {
            return Some(original);
        }
        Some(original.with_millis(millis.saturating_add(excess_millis)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(text: &str) -> CpuMaxValue {
        CpuMaxValue(parse_cpu_max(text).unwrap())
    }

    #[test]
    fn a_reading_is_untouched_ours_or_outside() {
        let mut o = Owned::new(cpu("200000 100000"));
        assert_eq!(o.classify(&cpu("200000 100000")), Found::Untouched);
        assert_eq!(o.classify(&cpu("10000 100000")), Found::Outside);
        o.begin(cpu("10000 100000"));
        // Journaled but not landed: the original is still untouched; the new value is ours.
        assert_eq!(o.classify(&cpu("200000 100000")), Found::Untouched);
        assert_eq!(o.observe(cpu("10000 100000")), (Found::Ours, true));
        assert_eq!(o.written, Some(cpu("10000 100000")));
        assert_eq!(o.pending, None);
        // Back at the original after the agent wrote: someone else put it there.
        assert_eq!(o.classify(&cpu("200000 100000")), Found::Outside);
        // A value nobody of ours wrote becomes the original; the agent's values are forgotten.
        assert_eq!(o.observe(cpu("300000 100000")), (Found::Outside, true));
        assert_eq!(o, Owned::new(cpu("300000 100000")));
    }

    #[test]
    fn a_write_whose_outcome_is_unknown_stays_ours_both_ways() {
        let mut o = Owned::new(Limit(None));
        o.begin(Limit(Some(100 << 20)));
        o.confirm(Limit(Some(100 << 20)));
        o.begin(Limit(Some(90 << 20)));
        // Timed out: the kernel may hold the old or the new value; neither is an outside change.
        assert_eq!(o.observe(Limit(Some(100 << 20))), (Found::Ours, false));
        assert_eq!(o.observe(Limit(Some(90 << 20))), (Found::Ours, true));
        assert_eq!(o.intended(), Limit(Some(90 << 20)));
        assert_eq!(o.original, Limit(None));
    }

    #[test]
    fn writing_the_original_back_leaves_the_record_untouched() {
        let mut o = Owned::new(cpu("200000 100000"));
        o.begin(cpu("200000 100000"));
        o.confirm(cpu("200000 100000"));
        assert!(!o.touched());
    }

    #[test]
    fn journal_values_are_typed() {
        let l: Limit = serde_json::from_str("\"max\"").unwrap();
        assert_eq!(l, Limit(None));
        let l: Limit = serde_json::from_str("4096").unwrap();
        assert_eq!(l, Limit(Some(4096)));
        assert!(serde_json::from_str::<Limit>("\"banana\"").is_err());
        assert!(serde_json::from_str::<CpuMaxValue>("\"banana\"").is_err());
        assert!(serde_json::from_str::<CpuMaxValue>("\"10 100000\"").is_err());
        let c: CpuMaxValue = serde_json::from_str("\"max 100000\"").unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"max 100000\"");
    }

    #[test]
    fn a_pod_target_is_its_original_plus_the_holders_excess() {
        let pod = PodRecord {
            cpu_max: Owned::new(cpu("60000 100000")),
            holders: BTreeSet::new(),
        };
        assert_eq!(pod.target(0), Some(cpu("60000 100000").0));
        assert_eq!(pod.target(1000), Some(cpu("160000 100000").0));
        let unlimited = PodRecord {
            cpu_max: Owned::new(cpu("max 100000")),
            holders: BTreeSet::new(),
        };
        assert_eq!(unlimited.target(1000), None);
    }
}
