//! The journal: the ownership records ([`crate::ownership`]) of every cgroup file the agent
//! has changed, kept durably so a crash at any point loses nothing. Records are changed in
//! memory and written out by [`Journal::flush`] — once per tick, whatever the number of
//! changes — atomically (temp file, fsync, rename, fsync of the directory). The agent flushes
//! before any cgroup write whose record changed and writes nothing when the flush fails. A
//! restarted agent and `sidecar-governor restore` take originals from here, never from values
//! the agent wrote.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::parse::{parse_cpu_max, parse_u64_or_max};
use crate::identity::Identity;
use crate::ownership::{ContainerRecord, CpuMaxValue, Limit, Owned, PodRecord};

const FILE_NAME: &str = "journal.json";
const TMP_NAME: &str = "journal.json.tmp";
const LOCK_NAME: &str = "agent.lock";
/// The version this agent writes; version 1 (untyped strings, no written values) is read and
/// migrated.
pub const VERSION: u32 = 2;

/// A failure reading or writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("create state directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("read journal {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "journal {path} is corrupt at `{key}` ({reason}); it holds the original limits — inspect or move it aside by hand"
    )]
    Corrupt {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("journal {path} has version {found}, this agent reads versions 1 and {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("write journal {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("another sidecar-governor holds {path}; stop it first (it restores on exit)")]
    Busy { path: PathBuf },
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    version: u32,
    /// Keyed by the container cgroup path relative to the cgroup root.
    #[serde(default)]
    containers: BTreeMap<String, ContainerRecord>,
    /// Keyed by the pod cgroup path relative to the cgroup root.
    #[serde(default)]
    pods: BTreeMap<String, PodRecord>,
}

/// Version 1: the originals as raw text, nothing of what the agent wrote.
#[derive(Debug, Deserialize)]
struct OnDiskV1 {
    entries: BTreeMap<String, EntryV1>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryV1 {
    pod_uid: String,
    container_id: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    pod: String,
    #[serde(default)]
    container: String,
    cpu_max: String,
    cpu_max_burst: Option<String>,
    pod_cpu_max: Option<String>,
    memory_high: Option<String>,
    recorded_at: u64,
}

/// How many durable writes the journal made and how many bytes they wrote (for the
/// benchmark and the metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    pub writes: u64,
    pub bytes: u64,
}

/// The journal: loaded once, changed in memory, flushed whole.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    containers: BTreeMap<String, ContainerRecord>,
    pods: BTreeMap<String, PodRecord>,
    /// Memory differs from disk.
    dirty: bool,
    stats: WriteStats,
}

/// What of a record the journal must write out when it changes (cheap to take every tick).
pub trait Snapshot {
    type Of: PartialEq;
    fn snapshot(&self) -> Self::Of;
}

impl Snapshot for ContainerRecord {
    type Of = (
        Owned<CpuMaxValue>,
        Option<Owned<Limit>>,
        Option<Owned<Limit>>,
        bool,
    );
    fn snapshot(&self) -> Self::Of {
        (
            self.cpu_max,
            self.cpu_max_burst,
            self.memory_high,
            self.pod_hold.is_some(),
        )
    }
}

impl Snapshot for PodRecord {
    type Of = (Owned<CpuMaxValue>, usize);
    fn snapshot(&self) -> Self::Of {
        (self.cpu_max, self.holders.len())
    }
}

/// A record being changed: marks the journal due a flush on drop if it changed.
#[derive(Debug)]
pub struct RecordMut<'a, R: Snapshot> {
    record: &'a mut R,
    dirty: &'a mut bool,
    before: R::Of,
}

impl<R: Snapshot> std::ops::Deref for RecordMut<'_, R> {
    type Target = R;
    fn deref(&self) -> &R {
        self.record
    }
}

impl<R: Snapshot> std::ops::DerefMut for RecordMut<'_, R> {
    fn deref_mut(&mut self) -> &mut R {
        self.record
    }
}

impl<R: Snapshot> Drop for RecordMut<'_, R> {
    fn drop(&mut self) {
        if self.record.snapshot() != self.before {
            *self.dirty = true;
        }
    }
}

/// Holds the state directory's lock for as long as it lives.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Creates the state directory (mode 0700) if needed.
fn ensure_dir(dir: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| JournalError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Takes the state directory's exclusive lock, so two agents (or an agent and `restore`)
/// never act on the same journal. Released when the returned value is dropped or the
/// process dies.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, JournalError> {
    ensure_dir(dir)?;
    let path = dir.join(LOCK_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| JournalError::Lock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(StateLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::Busy { path }),
        Err(fs::TryLockError::Error(source)) => Err(JournalError::Lock { path, source }),
    }
}

/// The records of a journal file's text: version 2 as it is, version 1 migrated. Every
/// value is typed and checked; a bad one fails the whole load, naming its key.
pub fn parse_journal(path: &Path, bytes: &[u8]) -> Result<Records, JournalError> {
    let corrupt = |key: String, reason: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        key,
        reason,
    };
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let version = serde_json::from_slice::<Version>(bytes)
        .map_err(|e| corrupt("version".into(), e.to_string()))?
        .version;
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match version {
        VERSION => {
            let disk: OnDisk = serde_path_to_error::deserialize(de)
                .map_err(|e| corrupt(e.path().to_string(), e.inner().to_string()))?;
            Ok((disk.containers, disk.pods))
        }
        1 => {
            let disk: OnDiskV1 = serde_path_to_error::deserialize(de)
                .map_err(|e| corrupt(e.path().to_string(), e.inner().to_string()))?;
            migrate_v1(disk).map_err(|(key, reason)| corrupt(key, reason))
        }
        found => Err(JournalError::Version {
            path: path.to_path_buf(),
            found,
        }),
    }
}

/// Container and pod records, by key.
pub type Records = (
    BTreeMap<String, ContainerRecord>,
    BTreeMap<String, PodRecord>,
);

fn migrate_v1(disk: OnDiskV1) -> Result<Records, (String, String)> {
    let mut containers = BTreeMap::new();
    let mut pods: BTreeMap<String, PodRecord> = BTreeMap::new();
    for (key, e) in disk.entries {
        let field = |name: &str| format!("entries.{key}.{name}");
        let cpu = parse_cpu_max(&e.cpu_max)
            .map_err(|err| err.to_string())
            .and_then(|c| c.validate().map(|()| c))
            .map_err(|err| (field("cpuMax"), format!("`{}`: {err}", e.cpu_max)))?;
        let limit = |name: &str, text: &Option<String>| -> Result<_, (String, String)> {
            text.as_deref()
                .map(|t| {
                    parse_u64_or_max(t)
                        .map(|v| Owned::legacy(Limit(v)))
                        .map_err(|err| (field(name), format!("`{t}`: {err}")))
                })
                .transpose()
        };
        let cpu_max_burst = limit("cpuMaxBurst", &e.cpu_max_burst)?;
        let memory_high = limit("memoryHigh", &e.memory_high)?;
        let pod_hold = match &e.pod_cpu_max {
            Some(text) => {
                let pod = parse_cpu_max(text)
                    .map_err(|err| (field("podCpuMax"), format!("`{text}`: {err}")))?;
                let pod_key = key
                    .rsplit_once('/')
                    .map(|(p, _)| p.to_string())
                    .ok_or_else(|| (field("podCpuMax"), "key has no pod".to_string()))?;
                pods.entry(pod_key.clone())
                    .or_insert_with(|| PodRecord {
                        cpu_max: Owned::legacy(CpuMaxValue(pod)),
                        holders: Default::default(),
                    })
                    .holders
                    .insert(key.clone());
                Some(pod_key)
            }
            None => None,
        };
        containers.insert(
            key,
            ContainerRecord {
                id: Identity {
                    pod_uid: e.pod_uid,
                    container_id: e.container_id,
                    namespace: e.namespace,
                    pod: e.pod,
                    container: e.container,
                },
                cpu_max: Owned::legacy(CpuMaxValue(cpu)),
                cpu_max_burst,
                memory_high,
                pod_hold,
                recorded_at: e.recorded_at,
            },
        );
    }
    Ok((containers, pods))
}

impl Journal {
    /// Loads the journal in `state_dir` (empty if there is none yet). A temp file left by an
    /// interrupted write is removed: the last renamed journal is the truth.
    pub fn load(state_dir: &Path) -> Result<Journal, JournalError> {
        let path = state_dir.join(FILE_NAME);
        let (containers, pods) = match fs::read(&path) {
            Ok(bytes) => parse_journal(&path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Default::default(),
            Err(source) => return Err(JournalError::Read { path, source }),
        };
        let _ = fs::remove_file(state_dir.join(TMP_NAME));
        Ok(Journal {
            path,
            containers,
            pods,
            dirty: false,
            stats: WriteStats::default(),
        })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record of container `key`, if any.
    pub fn container(&self, key: &str) -> Option<&ContainerRecord> {
        self.containers.get(key)
    }

    /// The record of container `key` to change; the journal is due a flush only if an owned
    /// value or the pod hold actually changed (checked when the returned guard drops).
    pub fn container_mut(&mut self, key: &str) -> Option<RecordMut<'_, ContainerRecord>> {
        let record = self.containers.get_mut(key)?;
        let before = record.snapshot();
        Some(RecordMut {
            record,
            dirty: &mut self.dirty,
            before,
        })
    }

    /// Changes container `key`'s record with `change` (see [`Self::container_mut`]).
    pub fn update_container<T>(
        &mut self,
        key: &str,
        change: impl FnOnce(&mut ContainerRecord) -> T,
    ) -> Option<T> {
        self.container_mut(key).map(|mut r| change(&mut r))
    }

    /// Adds or replaces a container's record. The journal is due a flush only when what is
    /// on disk changes: untouched records are not written out, so adding one (a proxy just
    /// found) costs no write.
    pub fn insert_container(&mut self, key: &str, record: ContainerRecord) {
        let on_disk = record.needs_journal();
        let before = self.containers.insert(key.to_string(), record);
        self.dirty |= on_disk || before.is_some_and(|r| r.needs_journal());
    }

    /// Drops a container's record.
    pub fn remove_container(&mut self, key: &str) -> Option<ContainerRecord> {
        let removed = self.containers.remove(key);
        self.dirty |= removed.is_some();
        removed
    }

    /// Every container record, by key.
    pub fn containers(&self) -> impl Iterator<Item = (&String, &ContainerRecord)> {
        self.containers.iter()
    }

    /// The record of pod `key`, if any.
    pub fn pod(&self, key: &str) -> Option<&PodRecord> {
        self.pods.get(key)
    }

    /// The record of pod `key` to change (due a flush only if it changed).
    pub fn pod_mut(&mut self, key: &str) -> Option<RecordMut<'_, PodRecord>> {
        let record = self.pods.get_mut(key)?;
        let before = record.snapshot();
        Some(RecordMut {
            record,
            dirty: &mut self.dirty,
            before,
        })
    }

    /// Adds or replaces a pod's record.
    pub fn insert_pod(&mut self, key: &str, record: PodRecord) {
        self.pods.insert(key.to_string(), record);
        self.dirty = true;
    }

    /// Drops a pod's record.
    pub fn remove_pod(&mut self, key: &str) -> Option<PodRecord> {
        let removed = self.pods.remove(key);
        self.dirty |= removed.is_some();
        removed
    }

    /// Every pod record, by key.
    pub fn pods(&self) -> impl Iterator<Item = (&String, &PodRecord)> {
        self.pods.iter()
    }

    /// Containers whose files may hold a value the agent wrote (the records that matter on
    /// disk; untouched ones are kept in memory only).
    pub fn len(&self) -> usize {
        self.containers.values().filter(|r| r.touched()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.pods.is_empty()
    }

    /// True when memory holds changes not yet on disk.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Durable writes made so far.
    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    /// Writes the records out if anything changed since the last flush: one atomic, durable
    /// write. Returns whether it wrote. On failure memory keeps the changes (and stays due a
    /// flush) and no temp file is left behind.
    pub fn flush(&mut self) -> Result<bool, JournalError> {
        if !self.dirty {
            return Ok(false);
        }
        let bytes = self.persist()?;
        self.dirty = false;
        self.stats.writes += 1;
        self.stats.bytes += bytes;
        Ok(true)
    }

    fn persist(&self) -> Result<u64, JournalError> {
        #[derive(Serialize)]
        struct View<'a> {
            version: u32,
            containers: BTreeMap<&'a str, &'a ContainerRecord>,
            pods: &'a BTreeMap<String, PodRecord>,
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let werr = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        let view = View {
            version: VERSION,
            containers: self
                .containers
                .iter()
                .filter(|(_, r)| r.needs_journal())
                .map(|(k, r)| (k.as_str(), r))
                .collect(),
            pods: &self.pods,
        };
        let mut bytes = serde_json::to_vec(&view).map_err(|e| werr(io::Error::other(e)))?;
        bytes.push(b'\n');
        ensure_dir(dir)?;
        let tmp = dir.join(TMP_NAME);
        let written = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        })();
        if let Err(source) = written {
            let _ = fs::remove_file(&tmp);
            return Err(werr(source));
        }
        Ok(bytes.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::Found;

    fn record(cpu: &str) -> ContainerRecord {
        ContainerRecord {
            id: crate::identity::Identity {
                pod_uid: "uid".into(),
                container_id: "abc".into(),
                ..Default::default()
            },
            cpu_max: Owned::new(CpuMaxValue(parse_cpu_max(cpu).unwrap())),
            cpu_max_burst: None,
            memory_high: None,
            pod_hold: None,
            recorded_at: 1,
        }
    }

    fn touched(cpu: &str, wrote: &str) -> ContainerRecord {
        let mut r = record(cpu);
        r.cpu_max
            .confirm(CpuMaxValue(parse_cpu_max(wrote).unwrap()));
        r
    }

    #[test]
    fn round_trip_survives_reload_with_one_write_per_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        assert!(j.is_empty());
        j.insert_container("a/b", touched("200000 100000", "10000 100000"));
        j.insert_container("a/c", touched("max 100000", "10000 100000"));
        // Untouched records are not written out.
        j.insert_container("a/d", record("max 100000"));
        assert!(j.flush().unwrap());
        assert!(!j.flush().unwrap(), "nothing changed: no second write");
        assert_eq!(j.stats().writes, 1);
        let mut j2 = Journal::load(dir.path()).unwrap();
        assert_eq!(j2.len(), 2);
        assert!(j2.container("a/d").is_none());
        let r = j2.container("a/b").unwrap();
        assert_eq!(r.cpu_max.original.0.to_string(), "200000 100000");
        assert_eq!(
            r.cpu_max.written.unwrap().0.to_string(),
            "10000 100000",
            "the last written value is journaled beside the original"
        );
        j2.remove_container("a/b");
        j2.remove_container("missing");
        j2.flush().unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_crash_mid_write_leaves_the_previous_journal_and_the_temp_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        j.insert_container("a/b", touched("200000 100000", "10000 100000"));
        j.flush().unwrap();
        fs::write(dir.path().join(TMP_NAME), b"{\"version\":2,\"contai").unwrap();
        let j2 = Journal::load(dir.path()).unwrap();
        assert_eq!(
            j2.container("a/b").unwrap().cpu_max.original.0.to_string(),
            "200000 100000"
        );
        assert!(!dir.path().join(TMP_NAME).exists());
    }

    #[test]
    fn a_bad_field_fails_the_load_naming_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE_NAME),
            br#"{"version":2,"containers":{"kubepods/pod1/abc":{"podUid":"u","containerId":"c","cpuMax":{"original":"banana"},"recordedAt":1}},"pods":{}}"#,
        )
        .unwrap();
        let err = Journal::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("journal.json"), "{err}");
        assert!(
            err.contains("kubepods/pod1/abc") && err.contains("cpuMax.original"),
            "{err}"
        );
        assert!(err.contains("banana"), "{err}");
    }

    #[test]
    fn version_1_is_migrated_and_its_found_values_are_the_agents() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(FILE_NAME),
            br#"{"version":1,"entries":{"kubepods/burstable/poduid/cid":{"podUid":"uid","containerId":"cid","cpuMax":"200000 100000","podCpuMax":"250000 100000","memoryHigh":"max","recordedAt":1}}}"#,
        )
        .unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        let mut r = j.container_mut("kubepods/burstable/poduid/cid").unwrap();
        assert_eq!(r.pod_hold.as_deref(), Some("kubepods/burstable/poduid"));
        let shrunk = CpuMaxValue(parse_cpu_max("10000 100000").unwrap());
        assert_eq!(r.cpu_max.observe(shrunk).0, Found::Ours);
        assert_eq!(r.cpu_max.written, Some(shrunk));
        assert_eq!(r.cpu_max.original.0.to_string(), "200000 100000");
        drop(r);
        assert!(
            j.is_dirty(),
            "the first reading of a migrated record changes it"
        );
        let pod = j.pod("kubepods/burstable/poduid").unwrap();
        assert!(pod.holders.contains("kubepods/burstable/poduid/cid"));
        // Written back as version 2.
        j.flush().unwrap();
        let text = fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.starts_with("{\"version\":2"), "{text}");
        assert!(Journal::load(dir.path()).is_ok());
    }

    #[test]
    fn corrupt_journal_is_an_error_not_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"not json").unwrap();
        let err = Journal::load(dir.path()).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }));
        assert!(err.to_string().contains("journal.json"), "{err}");
        fs::write(dir.path().join(FILE_NAME), b"{\"version\":9}").unwrap();
        assert!(matches!(
            Journal::load(dir.path()).unwrap_err(),
            JournalError::Version { found: 9, .. }
        ));
    }

    #[test]
    fn a_failed_flush_keeps_the_changes_due_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut j = Journal::load(&state).unwrap();
        j.insert_container("a", touched("1000 100000", "2000 100000"));
        j.flush().unwrap();
        // The journal's path taken by a directory: rename fails after the temp file exists.
        fs::remove_file(state.join(FILE_NAME)).unwrap();
        fs::create_dir(state.join(FILE_NAME)).unwrap();
        fs::write(state.join(FILE_NAME).join("x"), b"").unwrap();
        j.insert_container("b", touched("2000 100000", "3000 100000"));
        assert!(j.flush().is_err());
        assert!(j.is_dirty());
        assert!(!state.join(TMP_NAME).exists(), "no stray temp file");
        fs::remove_dir_all(state.join(FILE_NAME)).unwrap();
        assert!(j.flush().unwrap(), "recovers once the path is free");
        assert_eq!(Journal::load(&state).unwrap().len(), 2);
    }

    #[test]
    fn a_proxy_just_found_costs_no_write_until_a_record_must_be_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        j.insert_container("a/b", record("200000 100000"));
        assert!(!j.is_dirty(), "an untouched record is not written out");
        assert!(!j.flush().unwrap());
        j.insert_container("a/c", touched("200000 100000", "10000 100000"));
        assert!(j.flush().unwrap());
        // Replacing a record on disk with an untouched one (after a restore) must reach it.
        j.insert_container("a/c", record("200000 100000"));
        assert!(j.is_dirty());
        assert!(j.flush().unwrap());
        assert_eq!(Journal::load(dir.path()).unwrap().len(), 0);
    }

    #[test]
    fn reading_a_record_without_changing_it_costs_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        j.insert_container("a/b", touched("200000 100000", "10000 100000"));
        j.flush().unwrap();
        let same = CpuMaxValue(parse_cpu_max("10000 100000").unwrap());
        j.container_mut("a/b").unwrap().cpu_max.observe(same);
        assert!(!j.is_dirty());
        assert!(!j.flush().unwrap());
        let other = CpuMaxValue(parse_cpu_max("20000 100000").unwrap());
        j.container_mut("a/b").unwrap().cpu_max.begin(other);
        assert!(j.flush().unwrap());
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_state_dir(dir.path()).unwrap();
        assert!(matches!(
            lock_state_dir(dir.path()).unwrap_err(),
            JournalError::Busy { .. }
        ));
        drop(held);
        assert!(lock_state_dir(dir.path()).is_ok());
    }
}
