//! The memory side of the per-proxy core: the senpai-style state, the previous reading, the
//! planned `memory.high` of a dry run and the back-off; the step that reconciles
//! `memory.high` with its ownership record and decides (`decide_memory`), and the write of
//! `memory.high` or `memory.reclaim`. A write that timed out or failed its read-back stays
//! the agent's own value (pending or confirmed from the read-back), so it is never mistaken
//! for someone else's.

use std::time::{Duration, Instant};

use super::{Problem, ProxyCore, ProxyIo, Settings, StepOutcome};
use crate::actuator;
use crate::cgroup::CgroupError;
use crate::controller::growth::GrowthWatch;
use crate::controller::{
    Direction, MemoryAction, MemoryBounds, MemoryDecision, MemoryObservation, MemoryState, Reason,
    decide_memory, wants_stat,
};
use crate::ownership::{ContainerRecord, Found, Limit};
use crate::quantity::format_bytes;
use crate::sampler::{MemoryRaw, memory_deltas};
use crate::server::{ActionView, now_unix};

/// The memory side of a governed proxy.
#[derive(Debug)]
pub(crate) struct MemoryCore {
    prev: Option<MemoryRaw>,
    state: MemoryState,
    /// Dry run: the limit decisions would have set.
    planned: Option<u64>,
    /// The container's `memory.max` (`None` = unlimited).
    pub limit: Option<u64>,
    /// Left alone until then (after a conflict or a write that timed out).
    busy_until: Option<Instant>,
    /// Last reading, for metrics and the debug view.
    pub last: Option<MemoryReading>,
    /// Steady growth of its unreclaimable memory (kept across back-offs and restores: the
    /// proxy's memory is what it is, whoever holds its limit).
    pub growth: GrowthWatch,
}

/// What the last step saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MemoryReading {
    pub current: u64,
    pub high: Option<u64>,
    pub pressure: Option<f64>,
}

/// A memory decision to write (staged: its value is pending in the record).
#[derive(Debug, Clone)]
pub(crate) struct MemoryPlan {
    pub decision: MemoryDecision,
    /// The value to write, in whole pages (`SetHigh`), or the bytes to reclaim.
    pub action: MemoryAction,
    pub from: String,
    pub to: String,
    pub current: u64,
    pub pressure: Option<f64>,
    pub dry_run: bool,
}

impl MemoryPlan {
    /// The action as `/debug/proxies` shows it.
    pub(crate) fn view(&self) -> ActionView {
        ActionView {
            resource: "memory",
            direction: self.decision.direction.as_str(),
            reason: self.decision.reason.as_str(),
            from: self.from.clone(),
            to: self.to.clone(),
            at: now_unix(),
        }
    }
}

fn human(high: Option<u64>) -> String {
    high.map_or_else(|| "max".to_string(), format_bytes)
}

impl MemoryCore {
    /// The memory side of a proxy whose `memory.max` is `limit`.
    pub(crate) fn new(limit: Option<u64>) -> MemoryCore {
        MemoryCore {
            prev: None,
            state: MemoryState::default(),
            planned: None,
            limit,
            busy_until: None,
            last: None,
            growth: GrowthWatch::default(),
        }
    }

    /// Takes `first` (read when the proxy was found) as the previous reading: the next step
    /// observes from it instead of reading the files twice.
    pub(crate) fn prime(&mut self, first: MemoryRaw) {
        self.prev = Some(first);
    }

    /// Marks `memory.high` as placed (a write of the agent's may hold) or not (it is to be
    /// placed after the settle period).
    pub(crate) fn set_placed(&mut self, placed: bool) {
        self.state.placed = placed;
    }

    /// Leaves the memory alone until `until`, and starts its control afresh then.
    pub(crate) fn back_off(&mut self, until: Instant) {
        self.state = MemoryState::default();
        self.busy_until = Some(until);
    }

    /// Starts afresh from the originals (after a restore).
    pub(crate) fn reset(&mut self) {
        self.state = MemoryState::default();
        self.planned = None;
        self.prev = None;
    }

    /// The `memory.high` shown to operators: planned in dry run, else the kernel's.
    pub(crate) fn shown_high(&self, dry_run: bool) -> Option<u64> {
        let kernel = self.last.and_then(|l| l.high);
        if dry_run {
            self.planned.or(kernel)
        } else {
            kernel
        }
    }

    pub(super) fn unstage(&mut self, plan: &MemoryPlan) {
        if plan.decision.reason == Reason::Placement {
            self.set_placed(false);
        }
    }
}

impl ProxyCore {
    /// Samples, reconciles and decides the memory. `Err(())`: the container is gone.
    pub(super) fn step_memory(
        &mut self,
        io: &mut impl ProxyIo,
        record: &mut ContainerRecord,
        s: &Settings<'_>,
        now: Instant,
        out: &mut StepOutcome,
    ) -> Result<Option<MemoryPlan>, ()> {
        let Some(m) = self.mem.as_mut() else {
            return Ok(None);
        };
        let raw = match io.sample_memory(now) {
            None => return Ok(None),
            Some(Ok(r)) => r,
            Some(Err(e)) if e.is_gone() => return Err(()),
            Some(Err(error)) => {
                out.problems.push(Problem {
                    what: "memory",
                    error,
                    first: false,
                });
                return Ok(None);
            }
        };
        // Coexistence, as for CPU: someone else's memory.high becomes the original.
        let Some(owned) = record.memory_high.as_mut() else {
            return Ok(None);
        };
        let was_touched = owned.touched();
        let (kind, _) = owned.observe(Limit(raw.high));
        let original = owned.original;
        if kind == Found::Outside && was_touched {
            out.outside.push("memory.high");
            m.back_off(now + s.conflict_backoff);
            m.limit = io.read_memory_max().unwrap_or(m.limit);
        }
        let deltas = m.prev.as_ref().and_then(|prev| memory_deltas(prev, &raw));
        m.prev = Some(raw);
        m.last = Some(MemoryReading {
            current: raw.current,
            high: raw.high,
            pressure: deltas.and_then(|d| d.2),
        });
        let Some((elapsed, events, pressure)) = deltas else {
            return Ok(None);
        };
        if let Some(until) = m.busy_until {
            if now < until {
                return Ok(None);
            }
            m.busy_until = None;
        }
        let in_force = if s.dry_run {
            m.planned.or(raw.high)
        } else {
            raw.high
        };
        let policy = s.memory;
        let growth_due = m.growth.tick(elapsed, &policy.growth);
        let stat = if growth_due || wants_stat(&m.state, elapsed, raw.current, in_force, policy) {
            match io.read_memory_stat() {
                Ok(v) => Some(v),
                Err(e) if e.is_gone() => return Err(()),
                Err(error) => {
                    out.problems.push(Problem {
                        what: "memory.stat",
                        error,
                        first: false,
                    });
                    None
                }
            }
        } else {
            None
        };
        if let Some(st) = stat.filter(|_| growth_due) {
            out.growth = m.growth.observe(st.unreclaimable(), &policy.growth);
        }
        let obs = MemoryObservation {
            elapsed,
            current: raw.current,
            high: in_force,
            pressure_some: pressure,
            events,
            stat,
            growing: m.growth.growing,
        };
        let bounds = MemoryBounds::new(policy, m.limit, original.0);
        let Some(decision) = decide_memory(&mut m.state, &obs, bounds, policy) else {
            return Ok(None);
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
        let plan = MemoryPlan {
            decision,
            action,
            from,
            to,
            current: raw.current,
            pressure,
            dry_run: s.dry_run,
        };
        if s.dry_run {
            if let MemoryAction::SetHigh(b) = action {
                m.planned = Some(b);
            }
            self.last_action = Some(plan.view());
        }
        Ok(Some(plan))
    }

    /// Writes a staged memory decision and confirms it. On an error other than gone, a lowering write leaves the cgroup
    /// alone for `backoff` (it reclaims and may go on for long); a slow raise reclaims
    /// nothing and is retried at the next step, so a growing proxy is never held below its
    /// need. A read-back that differs is the agent's own value.
    pub(crate) fn apply_memory(
        &mut self,
        io: &mut impl ProxyIo,
        plan: &MemoryPlan,
        mut record: Option<&mut ContainerRecord>,
        timeout: Duration,
        backoff: Duration,
        now: Instant,
    ) -> Result<(), CgroupError> {
        let result = match plan.action {
            MemoryAction::SetHigh(b) => io.set_memory_high(b, timeout).map(Some),
            MemoryAction::Reclaim(b) => io.reclaim(b, timeout).map(|()| None),
        };
        let mut confirm = |value: Option<u64>| {
            if let Some(o) = record.as_deref_mut().and_then(|r| r.memory_high.as_mut()) {
                o.confirm(Limit(value));
            }
        };
        match result {
            Ok(now_high) => {
                if let Some(high) = now_high {
                    confirm(high);
                    if let Some(prev) = self.mem.as_mut().and_then(|m| m.prev.as_mut()) {
                        prev.high = high;
                    }
                }
                self.last_action = Some(plan.view());
                Ok(())
            }
            Err(e) if e.is_gone() => Err(e),
            Err(e) => {
                if let CgroupError::Verify { .. } = e
                    && let Ok(read) = io.read_memory_high()
                {
                    confirm(read);
                }
                if let Some(m) = self.mem.as_mut() {
                    if plan.decision.direction != Direction::Up {
                        m.busy_until = Some(now + backoff);
                    }
                    if plan.decision.reason == Reason::Placement {
                        m.set_placed(false);
                    }
                }
                Err(e)
            }
        }
    }
}
