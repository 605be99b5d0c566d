//! Memory governance of one proxy inside the control loop: its held memory files, the
//! senpai-style state, and the steps that sample and reconcile `memory.high` with its
//! ownership record, decide (`decide_memory`), stage the value to write as pending in the
//! journal, and write `memory.high` or `memory.reclaim` through the actuator's timed writer.
//! A write that timed out or failed its read-back stays the agent's own value (pending), so
//! it is never mistaken for someone else's.

use std::time::Instant;

use tracing::{debug, info, warn};

use super::Agent;
use crate::actuator;
use crate::cgroup::CgroupError;
use crate::controller::{
    Direction, MemoryAction, MemoryBounds, MemoryDecision, MemoryObservation, MemoryState, Reason,
    decide_memory, wants_stat,
};
use crate::ownership::{Found, Limit};
use crate::quantity::format_bytes;
use crate::sampler::{MemoryFiles, MemoryRaw, memory_deltas, read_memory_max, read_memory_stat};
use crate::server::{ActionView, now_unix};

/// The memory side of a governed proxy.
#[derive(Debug)]
pub(super) struct MemoryGoverned {
    files: MemoryFiles,
    prev: Option<MemoryRaw>,
    state: MemoryState,
    /// `memory.high` when the proxy was found (`None` = `max`).
    pub found_high: Option<u64>,
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

fn human(high: Option<u64>) -> String {
    high.map_or_else(|| "max".to_string(), format_bytes)
}

/// What sampling and deciding one proxy's memory came to.
#[derive(Debug)]
pub(super) enum MemStep {
    Gone,
    Steady,
    Decided(MemoryWrite),
}

/// A memory decision to write this tick (staged: its value is pending in the journal).
#[derive(Debug)]
pub(super) struct MemoryWrite {
    pub key: String,
    decision: MemoryDecision,
    /// The value to write, in whole pages (`SetHigh`), or the bytes to reclaim.
    action: MemoryAction,
    from: String,
    to: String,
    current: u64,
    pressure: Option<f64>,
}

impl MemoryGoverned {
    /// Opens the memory files of `dir` and reads them once.
    pub fn open(
        dir: &std::path::Path,
        buf: &mut Vec<u8>,
    ) -> Result<MemoryGoverned, crate::cgroup::CgroupError> {
        let mut files = MemoryFiles::open(dir)?;
        let first = files.sample(buf, Instant::now())?;
        let limit = read_memory_max(dir)?;
        Ok(MemoryGoverned {
            files,
            prev: None,
            state: MemoryState::default(),
            found_high: first.high,
            planned: None,
            limit,
            busy_until: None,
            last: None,
        })
    }

    /// Marks `memory.high` as placed (a write of the agent's may hold) or not (it is to be
    /// placed after the settle period).
    pub fn set_placed(&mut self, placed: bool) {
        self.state.placed = placed;
    }

    /// Leaves the memory alone until `until`, and starts its control afresh then.
    pub fn back_off(&mut self, until: Instant) {
        self.state = MemoryState::default();
        self.busy_until = Some(until);
    }

    /// Starts afresh from the originals (after a restore).
    pub fn reset(&mut self) {
        self.state = MemoryState::default();
        self.planned = None;
        self.prev = None;
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
    /// Samples, reconciles and decides one proxy's memory.
    pub(super) fn step_memory(&mut self, key: &str, now: Instant, dry_run: bool) -> MemStep {
        if !self.policy.memory.enabled {
            return MemStep::Steady;
        }
        let conflict_backoff = self.policy.cpu.conflict_backoff;
        let Some(g) = self.governed.get_mut(key) else {
            return MemStep::Steady;
        };
        let dir = g.proxy.dir.clone();
        let Some(m) = g.mem.as_mut() else {
            return MemStep::Steady;
        };
        let raw = match m.files.sample(&mut self.buf, now) {
            Ok(r) => r,
            Err(e) if e.is_gone() => return MemStep::Gone,
            Err(e) => {
                debug!(cgroup = key, error = %e, "cannot sample memory");
                self.shared.metrics.error(e.kind());
                return MemStep::Steady;
            }
        };
        // Coexistence, as for CPU: someone else's memory.high becomes the original.
        let found = Limit(raw.high);
        let Some(Some((kind, was_touched, original))) = self.journal.update_container(key, |r| {
            r.memory_high.as_mut().map(|o| {
                let was_touched = o.touched();
                let (kind, _) = o.observe(found);
                (kind, was_touched, o.original)
            })
        }) else {
            return MemStep::Steady;
        };
        if kind == Found::Outside && was_touched {
            warn!(
                cgroup = key,
                found = %found,
                "memory.high changed by someone else; adopting it as the original"
            );
            self.shared.metrics.conflicts.inc();
            m.back_off(now + conflict_backoff);
            m.limit = read_memory_max(&dir).unwrap_or(m.limit);
        }
        let deltas = m.prev.as_ref().and_then(|prev| memory_deltas(prev, &raw));
        m.prev = Some(raw);
        m.last = Some(MemoryReading {
            current: raw.current,
            high: raw.high,
            pressure: deltas.and_then(|d| d.2),
        });
        let Some((elapsed, events, pressure)) = deltas else {
            return MemStep::Steady;
        };
        if let Some(until) = m.busy_until {
            if now < until {
                return MemStep::Steady;
            }
            m.busy_until = None;
        }
        let in_force = if dry_run {
            m.planned.or(raw.high)
        } else {
            raw.high
        };
        let policy = &self.policy.memory;
        let stat = if wants_stat(&m.state, elapsed, raw.current, in_force, policy) {
            match read_memory_stat(&dir) {
                Ok(s) => Some(s),
                Err(e) if e.is_gone() => return MemStep::Gone,
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
        let bounds = MemoryBounds::new(policy, m.limit, original.0);
        let Some(decision) = decide_memory(&mut m.state, &obs, bounds, policy) else {
            return MemStep::Steady;
        };
        let action = match decision.action {
            MemoryAction::SetHigh(b) => MemoryAction::SetHigh(actuator::page_align(b)),
            other => other,
        };
        let (from, to) = match action {
            MemoryAction::SetHigh(b) => (human(in_force), human(Some(b))),
            MemoryAction::Reclaim(b) => {
                (format_bytes(raw.current), format!("-{}", format_bytes(b)))
            }
        };
        let write = MemoryWrite {
            key: key.to_string(),
            decision,
            action,
            from,
            to,
            current: raw.current,
            pressure,
        };
        if dry_run {
            if let MemoryAction::SetHigh(b) = action {
                m.planned = Some(b);
            }
            self.record_memory_action(&write, true);
            return MemStep::Steady;
        }
        MemStep::Decided(write)
    }

    /// Records each `memory.high` about to be written as pending in its container's record.
    pub(super) fn stage_memory(&mut self, writes: Vec<MemoryWrite>) -> Vec<MemoryWrite> {
        for w in &writes {
            if let MemoryAction::SetHigh(b) = w.action {
                self.journal.update_container(&w.key, |r| {
                    if let Some(o) = r.memory_high.as_mut() {
                        o.begin(Limit(Some(b)));
                    }
                });
            }
        }
        writes
    }

    /// The journal could not be written: nothing was; a placement is to be made again.
    pub(super) fn unstage_memory(&mut self, writes: Vec<MemoryWrite>) {
        for w in writes {
            if w.decision.reason == Reason::Placement
                && let Some(m) = self.governed.get_mut(&w.key).and_then(|g| g.mem.as_mut())
            {
                m.set_placed(false);
            }
        }
    }

    /// Writes one staged memory decision. Returns false when the proxy turned out to be gone.
    pub(super) fn apply_memory(&mut self, w: MemoryWrite, now: Instant) -> bool {
        let timeout = self.policy.memory.write_timeout;
        let backoff = self.policy.memory.timeout_backoff;
        let Some(dir) = self.governed.get(&w.key).map(|g| g.proxy.dir.clone()) else {
            return true;
        };
        let result = match w.action {
            MemoryAction::SetHigh(b) => actuator::set_memory_high(&dir, Some(b), timeout),
            MemoryAction::Reclaim(b) => actuator::reclaim_memory(&dir, b, timeout).map(|()| None),
        };
        let confirm = |agent: &mut Agent, value: Option<u64>| {
            agent.journal.update_container(&w.key, |r| {
                if let Some(o) = r.memory_high.as_mut() {
                    o.confirm(Limit(value));
                }
            });
        };
        match result {
            Ok(now_high) => {
                if let MemoryAction::SetHigh(_) = w.action {
                    confirm(self, now_high);
                }
                if let Some(m) = self.governed.get_mut(&w.key).and_then(|g| g.mem.as_mut())
                    && let Some(prev) = m.prev.as_mut()
                    && let MemoryAction::SetHigh(_) = w.action
                {
                    prev.high = now_high;
                }
            }
            Err(e) if e.is_gone() => return false,
            Err(e) => {
                warn!(cgroup = w.key, error = %e, "memory write failed; leaving the cgroup alone for a while");
                self.shared.metrics.error(e.kind());
                // The kernel holds what the write left: for a read-back that differs, that
                // value came from the agent's own write and is the agent's.
                if let CgroupError::Verify { .. } = e
                    && let Ok(read) = actuator::read_memory_high(&dir)
                {
                    confirm(self, read);
                }
                if let Some(m) = self.governed.get_mut(&w.key).and_then(|g| g.mem.as_mut()) {
                    // A lowering write reclaims and may go on for long: leave the cgroup be.
                    // A raise reclaims nothing; a slow one is retried at the next tick, so a
                    // growing proxy is never held below its need for `timeoutBackoff`.
                    if w.decision.direction != Direction::Up {
                        m.busy_until = Some(now + backoff);
                    }
                    if w.decision.reason == Reason::Placement {
                        m.set_placed(false);
                    }
                }
                return true;
            }
        }
        self.record_memory_action(&w, false);
        true
    }

    /// Counts, logs and shows one memory action.
    fn record_memory_action(&mut self, w: &MemoryWrite, dry_run: bool) {
        let (direction, reason) = (w.decision.direction.as_str(), w.decision.reason.as_str());
        self.shared.metrics.action("memory", direction, reason);
        let Some(g) = self.governed.get_mut(&w.key) else {
            return;
        };
        info!(
            cgroup = w.key,
            namespace = g.proxy.namespace,
            pod = g.proxy.pod,
            container = g.proxy.container,
            direction,
            reason,
            from = w.from,
            to = w.to,
            current = w.current,
            pressure = w.pressure.unwrap_or(0.0),
            dry_run,
            "memory"
        );
        g.last_action = Some(ActionView {
            resource: "memory",
            direction,
            reason,
            from: w.from.clone(),
            to: w.to.clone(),
            at: now_unix(),
        });
    }
}
