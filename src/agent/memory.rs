//! Memory governance of one proxy inside the control loop: its held memory files, the
//! senpai-style state, and the step that samples, decides (`decide_memory`) and writes
//! `memory.high` or `memory.reclaim` through the actuator's timed writer, journaling the
//! original `memory.high` before the first write.

use std::time::Instant;

use tracing::{debug, info, warn};

use super::{Agent, Journaling};
use crate::actuator;
use crate::controller::{
    MemoryAction, MemoryBounds, MemoryObservation, MemoryState, decide_memory, wants_stat,
};
use crate::quantity::format_bytes;
use crate::sampler::{MemoryFiles, MemoryRaw, memory_deltas, read_memory_max, read_memory_stat};
use crate::server::{ActionView, now_unix};

/// The memory side of a governed proxy.
#[derive(Debug)]
pub(super) struct MemoryGoverned {
    files: MemoryFiles,
    prev: Option<MemoryRaw>,
    state: MemoryState,
    /// `memory.high` before the agent's first write (`None` = `max`).
    pub original: Option<u64>,
    /// What the agent last wrote and read back; `None` while untouched.
    pub written: Option<Option<u64>>,
    /// Dry run: the limit decisions would have set.
    planned: Option<u64>,
    /// The container's `memory.max` (`None` = unlimited).
    pub limit: Option<u64>,
    /// Left alone until then (after a conflict or a write that timed out).
    busy_until: Option<Instant>,
    /// Last reading, for metrics and the debug view.
    pub last: Option<MemoryReading>,
}

/// What the last tick saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct MemoryReading {
    pub current: u64,
    pub high: Option<u64>,
    pub pressure: Option<f64>,
}

/// Formats a `memory.high` value as the kernel prints it.
pub(super) fn high_text(high: Option<u64>) -> String {
    high.map_or_else(|| "max".to_string(), |b| b.to_string())
}

fn human(high: Option<u64>) -> String {
    high.map_or_else(|| "max".to_string(), format_bytes)
}

impl MemoryGoverned {
    /// Opens the memory files of `dir`. `journaled` is the original `memory.high` text from the
    /// journal when an earlier run changed it.
    pub fn open(
        dir: &std::path::Path,
        buf: &mut Vec<u8>,
        journaled: Option<&str>,
    ) -> Result<MemoryGoverned, crate::cgroup::CgroupError> {
        let mut files = MemoryFiles::open(dir)?;
        let first = files.sample(buf, Instant::now())?;
        let limit = read_memory_max(dir)?;
        let journaled = journaled.and_then(|t| crate::cgroup::parse::parse_u64_or_max(t).ok());
        let (original, written, placed) = match journaled {
            Some(original) => (original, Some(first.high), true),
            None => (first.high, None, false),
        };
        Ok(MemoryGoverned {
            files,
            prev: None,
            state: MemoryState {
                placed,
                ..MemoryState::default()
            },
            original,
            written,
            planned: None,
            limit,
            busy_until: None,
            last: None,
        })
    }

    /// The `memory.high` shown to operators: planned in dry run, else the kernel's.
    pub fn shown_high(&self, dry_run: bool) -> Option<u64> {
        let kernel = self.last.and_then(|l| l.high);
        if dry_run {
            self.planned.or(kernel)
        } else {
            kernel
        }
    }
}

impl Agent {
    /// Samples, decides and acts on one proxy's memory. Returns false when it is gone.
    pub(super) fn step_memory(&mut self, key: &str, now: Instant, dry_run: bool) -> bool {
        let policy = self.policy.memory.clone();
        if !policy.enabled {
            return true;
        }
        let conflict_backoff = self.policy.cpu.conflict_backoff;
        let Some(g) = self.governed.get_mut(key) else {
            return true;
        };
        let dir = g.proxy.dir.clone();
        let Some(m) = g.mem.as_mut() else {
            return true;
        };
        let raw = match m.files.sample(&mut self.buf, now) {
            Ok(r) => r,
            Err(e) if e.is_gone() => return false,
            Err(e) => {
                debug!(cgroup = key, error = %e, "cannot sample memory");
                self.shared.metrics.error(e.kind());
                return true;
            }
        };
        // Coexistence, as for CPU: someone else's memory.high becomes the original.
        if !dry_run {
            match m.written {
                Some(w) if w != raw.high => {
                    warn!(
                        cgroup = key,
                        wrote = high_text(w),
                        found = high_text(raw.high),
                        "memory.high changed by someone else; adopting it as the original"
                    );
                    self.shared.metrics.conflicts.inc();
                    m.original = raw.high;
                    m.written = None;
                    m.state = MemoryState::default();
                    m.busy_until = Some(now + conflict_backoff);
                    m.limit = read_memory_max(&dir).unwrap_or(m.limit);
                    let text = high_text(raw.high);
                    if let Err(e) = self.journal.update(key, |e| e.memory_high = Some(text)) {
                        warn!(cgroup = key, error = %e, "cannot update journal");
                        self.shared.metrics.error("journal");
                    }
                }
                None => m.original = raw.high,
                _ => {}
            }
        }
        let deltas = m.prev.as_ref().and_then(|prev| memory_deltas(prev, &raw));
        m.prev = Some(raw);
        m.last = Some(MemoryReading {
            current: raw.current,
            high: raw.high,
            pressure: deltas.and_then(|d| d.2),
        });
        let Some((elapsed, events, pressure)) = deltas else {
            return true;
        };
        if let Some(until) = m.busy_until {
            if now < until {
                return true;
            }
            m.busy_until = None;
        }
        let in_force = if dry_run {
            m.planned.or(raw.high)
        } else {
            raw.high
        };
        let stat = if wants_stat(&m.state, elapsed, raw.current, in_force, &policy) {
            match read_memory_stat(&dir) {
                Ok(s) => Some(s),
                Err(e) if e.is_gone() => return false,
                Err(e) => {
                    debug!(cgroup = key, error = %e, "cannot read memory.stat");
                    self.shared.metrics.error(e.kind());
                    None
                }
            }
        } else {
            None
        };
        let obs = MemoryObservation {
            elapsed,
            current: raw.current,
            high: in_force,
            pressure_some: pressure,
            events,
            stat,
        };
        let bounds = MemoryBounds::new(&policy, m.limit, m.original);
        let Some(decision) = decide_memory(&mut m.state, &obs, bounds, &policy) else {
            return true;
        };
        let (from, to) = match decision.action {
            MemoryAction::SetHigh(b) => (human(in_force), human(Some(b & !4095))),
            MemoryAction::Reclaim(b) => {
                (format_bytes(raw.current), format!("-{}", format_bytes(b)))
            }
        };
        if dry_run {
            if let MemoryAction::SetHigh(b) = decision.action {
                m.planned = Some(b & !4095);
            }
        } else {
            if let MemoryAction::SetHigh(_) = decision.action
                && self.ensure_journaled(key, false) == Journaling::Failed
            {
                return true;
            }
            let Some(m) = self.governed.get_mut(key).and_then(|g| g.mem.as_mut()) else {
                return true;
            };
            let result = match decision.action {
                MemoryAction::SetHigh(b) => {
                    actuator::set_memory_high(&dir, Some(b), policy.write_timeout).map(|now_high| {
                        m.written = Some(now_high);
                        if let Some(prev) = m.prev.as_mut() {
                            prev.high = now_high;
                        }
                    })
                }
                MemoryAction::Reclaim(b) => actuator::reclaim_memory(&dir, b, policy.write_timeout),
            };
            if let Err(e) = result {
                if e.is_gone() {
                    return false;
                }
                warn!(cgroup = key, error = %e, "memory write failed; leaving the cgroup alone for a while");
                self.shared.metrics.error(e.kind());
                m.busy_until = Some(now + policy.timeout_backoff);
                // What the kernel holds now is unknown: re-read it as the truth next tick.
                m.written = None;
                return true;
            }
        }
        let (direction, reason) = (decision.direction.as_str(), decision.reason.as_str());
        self.shared.metrics.action("memory", direction, reason);
        let Some(g) = self.governed.get_mut(key) else {
            return true;
        };
        info!(
            cgroup = key,
            namespace = g.proxy.namespace,
            pod = g.proxy.pod,
            container = g.proxy.container,
            direction,
            reason,
            from,
            to,
            current = raw.current,
            pressure = pressure.unwrap_or(0.0),
            dry_run,
            "memory"
        );
        g.last_action = Some(ActionView {
            resource: "memory",
            direction,
            reason,
            from,
            to,
            at: now_unix(),
        });
        true
    }
}
