//! One governed proxy's controller: the per-proxy core that the agent's loop and the
//! simulator both run. [`ProxyCore`] owns everything the control of one proxy remembers —
//! the CPU and memory controller state, the previous samples, the planned values of a dry run,
//! the back-offs — and works on the proxy's ownership record ([`ContainerRecord`], kept by the
//! journal in the agent, in memory in the simulator).
//!
//! A step has three parts, the same everywhere:
//! 1. [`ProxyCore::step`] samples through the I/O seam ([`io::ProxyIo`]), reconciles each
//!    reading with the record (a value neither original nor the agent's is someone else's: it
//!    becomes the original and the proxy backs off) and plans: a [`CpuPlan`] and a
//!    [`MemoryPlan`], or nothing. Planning itself is pure (`plan_cpu`): samples and the record
//!    in, a decision out.
//! 2. [`ProxyCore::stage_cpu`] / [`ProxyCore::stage_memory`] record the values about to be
//!    written as pending in the record, before any write (the agent flushes the journal then).
//! 3. [`ProxyCore::apply_cpu`] / [`ProxyCore::apply_memory`] write through the seam and
//!    confirm what the kernel holds.
//!
//! Cross-proxy rules (push storms, pod quotas) and side effects (metrics, Events, logs) stay
//! with the caller; the texts of Events and the debug view come from the types here.

pub(crate) mod io;
mod memory;

use std::time::{Duration, Instant};

use crate::cgroup::{CgroupError, CpuMax};
use crate::controller::cpu::blind_looks;
use crate::controller::growth::GrowthChange;
use crate::controller::storm::StormCandidate;
use crate::controller::{
    CpuBounds, CpuDecision, CpuObservation, CpuState, Direction, MemoryAction, Reason, Wake,
    decide_cpu, decide_wake,
};
use crate::events::EventReason;
use crate::ownership::{ContainerRecord, CpuMaxValue, Found, Limit};
use crate::policy::{CpuPolicy, MemoryPolicy};
use crate::quantity::format_cpu_millis;
use crate::sampler::{RawSample, cpu_observation};
use crate::server::{ActionView, ProxyView, now_unix};

pub(crate) use io::{CgroupIo, ProxyIo};
pub(crate) use memory::{MemoryCore, MemoryPlan};

/// What one proxy's step needs to know of the policy (after its namespace's override and
/// its pod's annotations) and of the proxy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings<'a> {
    pub cpu: &'a CpuPolicy,
    pub memory: &'a MemoryPolicy,
    /// Plan only: nothing of this proxy is written.
    pub dry_run: bool,
    /// Envoy's `--concurrency`: the floor keeps every worker some CPU.
    pub concurrency: Option<u32>,
    /// How long to leave the proxy alone after someone else changed one of its files.
    pub conflict_backoff: Duration,
    /// Found through the runtime, not by a process name alone: only such proxies count
    /// toward a push storm (one tenant's processes cannot hold another's sidecars back).
    pub runtime_identity: bool,
    /// The node proxy: never below its own limit (grow-only above it).
    pub protected: bool,
}

/// A CPU decision of one proxy, waiting for the cross-proxy checks before it is staged.
#[derive(Debug, Clone)]
pub(crate) struct CpuPlan {
    pub decision: CpuDecision,
    /// The quota in force (planned, in a dry run), millicores.
    pub from: u64,
    pub floor: u64,
    pub sample: RawSample,
    pub obs: CpuObservation,
    pub dry_run: bool,
    pub burst_ratio: f64,
    /// `cpu.allowAboveLimit`: the container may go above its own limit (the pod is raised).
    pub above_limit: bool,
    /// Counts toward a push storm (a proxy with a runtime identity).
    pub counts_in_storms: bool,
    /// Throttled beyond `cpu.throttledRatio`: a storm holds it back one tick at most.
    pub throttled: bool,
}

impl CpuPlan {
    /// The Kubernetes Event this action is worth, if any, about `container`.
    pub(crate) fn event(&self, container: &str) -> Option<(EventReason, String)> {
        let to = self.decision.quota_millis;
        let reason = match self.decision.direction {
            _ if self.dry_run => return None,
            Direction::Up => EventReason::ScaledUp,
            Direction::Down if to <= self.floor => EventReason::AtFloor,
            _ => return None,
        };
        let verb = if reason == EventReason::ScaledUp {
            "raised"
        } else {
            "lowered to its floor"
        };
        Some((
            reason,
            format!(
                "CPU quota of container {container} {verb} {} -> {} ({}; usage {}m, throttled {:.0}%)",
                format_cpu_millis(self.from),
                format_cpu_millis(to),
                self.decision.reason.as_str(),
                self.obs.usage_millis.round(),
                self.obs.throttled_ratio * 100.0
            ),
        ))
    }

    /// The action as `/debug/proxies` shows it.
    pub(crate) fn view(&self) -> ActionView {
        ActionView {
            resource: "cpu",
            direction: self.decision.direction.as_str(),
            reason: self.decision.reason.as_str(),
            from: format_cpu_millis(self.from),
            to: format_cpu_millis(self.decision.quota_millis),
            at: now_unix(),
        }
    }
}

impl StormCandidate for CpuPlan {
    fn wants_growth(&self) -> bool {
        self.decision.direction == Direction::Up && self.decision.reason != Reason::Policy
    }

    fn counts(&self) -> bool {
        self.counts_in_storms
    }

    fn urgent(&self) -> bool {
        self.throttled
    }
}

/// A CPU write staged: the record holds `cpu_max` (and the burst's target) as pending.
#[derive(Debug, Clone)]
pub(crate) struct CpuWrite {
    pub plan: CpuPlan,
    pub cpu_max: CpuMax,
    /// `cpu.max.burst` from, to.
    pub burst: Option<(u64, u64)>,
}

/// A read that failed (not because the proxy is gone).
#[derive(Debug)]
pub(crate) struct Problem {
    pub what: &'static str,
    pub error: CgroupError,
    /// The first failure of this kind in a row (worth a warning; the rest are counted).
    pub first: bool,
}

/// What one step of one proxy came to.
#[derive(Debug, Default)]
pub(crate) struct StepOutcome {
    /// The container went away.
    pub gone: bool,
    /// Files found changed by someone else (adopted as originals; the proxy backs off).
    pub outside: Vec<&'static str>,
    pub cpu: Option<CpuPlan>,
    pub memory: Option<MemoryPlan>,
    pub problems: Vec<Problem>,
    /// Sampling works again after failing.
    pub recovered: bool,
    /// A wake-up could not yet tell a lasting stall from a blip: look again in about a
    /// period, as this ([`ProxyCore::wake`]).
    pub look_again: Option<Wake>,
    /// The growth watch found steady growth of its unreclaimable memory, or its end.
    pub growth: Option<GrowthChange>,
}

impl StepOutcome {
    fn gone() -> StepOutcome {
        StepOutcome {
            gone: true,
            ..StepOutcome::default()
        }
    }
}

/// One governed proxy's control state.
#[derive(Debug, Default)]
pub(crate) struct ProxyCore {
    cpu: CpuState,
    prev: Option<RawSample>,
    /// Dry run: the quota decisions would have set.
    planned_millis: Option<u64>,
    backoff_until: Option<Instant>,
    /// Sampling fails (logged once until it recovers).
    failing: bool,
    last_obs: Option<CpuObservation>,
    last_action: Option<ActionView>,
    /// The memory side; `None` when memory is not governed for this proxy.
    mem: Option<MemoryCore>,
    /// The quota's ceiling at the last plan: a wake-up of a proxy already there reads nothing
    /// (a proxy hot at its ceiling stalls every trigger window).
    ceiling: Option<u64>,
}

impl ProxyCore {
    /// A proxy just found, with its memory side if memory is governed.
    pub(crate) fn new(mem: Option<MemoryCore>) -> ProxyCore {
        ProxyCore {
            mem,
            ..ProxyCore::default()
        }
    }

    /// Takes `first` (read when the proxy was found) as the previous CPU sample: the next
    /// step observes from it, and a step at the same instant reads nothing again.
    pub(crate) fn prime(&mut self, first: RawSample) {
        self.prev = Some(first);
    }

    /// The memory side, if governed.
    pub(crate) fn memory(&self) -> Option<&MemoryCore> {
        self.mem.as_ref()
    }

    /// Leaves the proxy alone until `until` and starts its control afresh then (someone else
    /// changed one of its files, or its pod's).
    pub(crate) fn back_off(&mut self, until: Instant) {
        self.cpu = CpuState::default();
        self.backoff_until = Some(until);
        if let Some(m) = self.mem.as_mut() {
            m.back_off(until);
        }
    }

    /// Leaves only the CPU alone until `until` (its pod's quota changed under it).
    pub(crate) fn back_off_cpu(&mut self, until: Instant) {
        self.backoff_until = Some(until);
    }

    /// Starts afresh from the originals (after they were put back).
    pub(crate) fn reset(&mut self) {
        self.prev = None;
        self.cpu = CpuState::default();
        self.planned_millis = None;
        if let Some(m) = self.mem.as_mut() {
            m.reset();
        }
    }

    /// Forgets the plans (the proxy's mode changed).
    pub(crate) fn reset_plan(&mut self) {
        self.planned_millis = None;
        self.cpu = CpuState::default();
    }

    /// Samples, reconciles and plans the proxy's CPU and memory (see the module doc).
    pub(crate) fn step(
        &mut self,
        io: &mut impl ProxyIo,
        record: &mut ContainerRecord,
        s: &Settings<'_>,
        now: Instant,
    ) -> StepOutcome {
        let mut out = StepOutcome::default();
        let Some(sample) = self.sample(io, now, &mut out) else {
            return out;
        };
        let (outside, plan) = self.plan_cpu(sample, record, s, now);
        if outside {
            out.outside.push("cpu.max");
        }
        out.cpu = plan;
        if s.memory.enabled && self.mem.is_some() {
            match self.step_memory(io, record, s, now, &mut out) {
                Ok(plan) => out.memory = plan,
                Err(()) => return StepOutcome::gone(),
            }
        }
        out
    }

    /// The step of a proxy woken between ticks by its stall trigger or looked at again
    /// shortly after (`wake`): samples its CPU, reconciles like a tick and plans growth only
    /// (`decide_wake`); memory and shrinking stay on the tick. Nothing in a dry run.
    pub(crate) fn wake(
        &mut self,
        io: &mut impl ProxyIo,
        record: &mut ContainerRecord,
        s: &Settings<'_>,
        now: Instant,
        wake: Wake,
    ) -> StepOutcome {
        let mut out = StepOutcome::default();
        let at_ceiling = self
            .prev
            .and_then(|p| p.cpu_max.millis())
            .zip(self.ceiling)
            .is_some_and(|(q, c)| q >= c);
        if s.dry_run || at_ceiling {
            return out;
        }
        let Some(sample) = self.sample(io, now, &mut out) else {
            return out;
        };
        let (outside, plan, look_again) = self.plan(sample, record, s, now, Some(wake));
        if outside {
            out.outside.push("cpu.max");
        }
        out.cpu = plan;
        out.look_again = look_again;
        out
    }

    /// Reads the CPU sample of a step; `None` (with `out` saying why) when there is none.
    fn sample(
        &mut self,
        io: &mut impl ProxyIo,
        now: Instant,
        out: &mut StepOutcome,
    ) -> Option<RawSample> {
        // Sampled at this instant already (found in this tick): nothing new to observe.
        if self.prev.is_some_and(|p| p.at >= now) {
            return None;
        }
        match io.sample_cpu(now) {
            Ok(v) => {
                out.recovered = std::mem::take(&mut self.failing);
                Some(v)
            }
            Err(e) if e.is_gone() => {
                out.gone = true;
                None
            }
            Err(error) => {
                out.problems.push(Problem {
                    what: "sample",
                    error,
                    first: !self.failing,
                });
                self.failing = true;
                None
            }
        }
    }

    /// Reconciles a CPU sample with the record and decides (pure). Returns whether the
    /// sample showed someone else's `cpu.max`, and the plan.
    pub(crate) fn plan_cpu(
        &mut self,
        sample: RawSample,
        record: &mut ContainerRecord,
        s: &Settings<'_>,
        now: Instant,
    ) -> (bool, Option<CpuPlan>) {
        let (outside, plan, _) = self.plan(sample, record, s, now, None);
        (outside, plan)
    }

    /// [`ProxyCore::plan_cpu`] for a tick (`wake` `None`) or a wake-up; the
    /// last value says whether a wake-up wants to look again.
    fn plan(
        &mut self,
        sample: RawSample,
        record: &mut ContainerRecord,
        s: &Settings<'_>,
        now: Instant,
        wake: Option<Wake>,
    ) -> (bool, Option<CpuPlan>, Option<Wake>) {
        // Coexistence: a value neither original nor ours is someone else's; it becomes the
        // original (the record changes, and the journal is due a flush, only then).
        let was_touched = record.cpu_max.touched();
        let (found, _) = record.cpu_max.observe(CpuMaxValue(sample.cpu_max));
        let outside = found == Found::Outside && was_touched;
        if outside {
            self.back_off(now + s.conflict_backoff);
        }
        let original = record.cpu_max.original.0;
        let bounds = CpuBounds::new(s.cpu, original.millis())
            .with_concurrency(s.concurrency, s.cpu.per_worker_min_millis);
        let bounds = if s.protected {
            bounds.protecting(original.millis())
        } else {
            bounds
        };
        self.ceiling = Some(bounds.ceiling);
        let in_force = if s.dry_run {
            self.planned_millis.or(sample.cpu_max.millis())
        } else {
            sample.cpu_max.millis()
        }
        .unwrap_or(bounds.ceiling);
        let obs = self
            .prev
            .as_ref()
            .and_then(|prev| cpu_observation(prev, &sample, in_force));
        self.prev = Some(sample);
        let Some(obs) = obs else {
            return (outside, None, None);
        };
        self.last_obs = Some(obs);
        if let Some(until) = self.backoff_until {
            if now < until {
                return (outside, None, None);
            }
            self.backoff_until = None;
        }
        let (decision, look_again) = match wake {
            None => (decide_cpu(&mut self.cpu, &obs, bounds, s.cpu), None),
            Some(wake) => {
                let blind = blind_looks(s.cpu.wake_on_stall.window);
                let w = decide_wake(&mut self.cpu, &obs, bounds, s.cpu, wake, blind);
                (w.decision, w.look_again)
            }
        };
        let plan = decision.map(|decision| CpuPlan {
            decision,
            from: in_force,
            floor: bounds.floor,
            sample,
            obs,
            dry_run: s.dry_run,
            burst_ratio: s.cpu.burst_ratio,
            above_limit: s.cpu.allow_above_limit,
            counts_in_storms: s.runtime_identity,
            throttled: obs.throttled_ratio > s.cpu.throttled_ratio,
        });
        (outside, plan, look_again)
    }

    /// Dry run: the decision is only remembered (and shown).
    pub(crate) fn plan_only(&mut self, plan: &CpuPlan) {
        self.planned_millis = Some(plan.decision.quota_millis);
        self.last_action = Some(plan.view());
    }

    /// Records the values `plan` will write as pending: `cpu.max`, the burst moved from
    /// `burst_now` (read just before, reconciled like any owned value) by the plan's ratio,
    /// and the hold on the pod `hold_pod` when the container may go above its own limit.
    pub(crate) fn stage_cpu(
        &self,
        plan: CpuPlan,
        burst_now: Option<u64>,
        hold_pod: Option<&str>,
        record: &mut ContainerRecord,
    ) -> CpuWrite {
        let cpu_max = plan.sample.cpu_max.with_millis(plan.decision.quota_millis);
        let burst = match (record.cpu_max_burst.as_mut(), burst_now) {
            (Some(owned), Some(now)) => {
                owned.observe(Limit(Some(now)));
                let to =
                    crate::actuator::burst_target(Some(now), cpu_max.quota_us, plan.burst_ratio)
                        .unwrap_or(now);
                if to != now {
                    owned.begin(Limit(Some(to)));
                }
                Some((now, to))
            }
            _ => None,
        };
        record.cpu_max.begin(CpuMaxValue(cpu_max));
        if let Some(pod) = hold_pod {
            record.pod_hold = Some(pod.to_string());
        }
        CpuWrite {
            plan,
            cpu_max,
            burst,
        }
    }

    /// Writes a staged CPU decision and confirms it. On an error the record keeps the value
    /// as pending: the file holds the old or the new value, both the agent's.
    pub(crate) fn apply_cpu(
        &mut self,
        io: &mut impl ProxyIo,
        w: &CpuWrite,
        record: Option<&mut ContainerRecord>,
    ) -> Result<(), CgroupError> {
        io.write_cpu(&w.cpu_max, w.burst)?;
        if let Some(r) = record {
            r.cpu_max.confirm(CpuMaxValue(w.cpu_max));
            if let (Some(o), Some((_, to))) = (r.cpu_max_burst.as_mut(), w.burst) {
                o.confirm(Limit(Some(to)));
            }
        }
        self.prev = Some(RawSample {
            cpu_max: w.cpu_max,
            ..w.plan.sample
        });
        self.planned_millis = None;
        self.last_action = Some(w.plan.view());
        Ok(())
    }

    /// The quota shown to operators: planned in a dry run, else the kernel's.
    pub(crate) fn shown_quota(&self, dry_run: bool) -> Option<u64> {
        let kernel = self.prev.and_then(|s| s.cpu_max.millis());
        if dry_run {
            self.planned_millis.or(kernel)
        } else {
            kernel
        }
    }

    /// The last CPU observation (usage, throttling).
    pub(crate) fn last_obs(&self) -> Option<CpuObservation> {
        self.last_obs
    }

    /// Fills `/debug/proxies`' control fields of this proxy.
    pub(crate) fn fill_view(&self, v: &mut ProxyView, dry_run: bool, original: Option<u64>) {
        let reading = self.mem.as_ref().and_then(|m| m.last);
        v.cpu_quota_millis = self.shown_quota(dry_run);
        v.cpu_original_millis = original;
        v.cpu_usage_millis = self.last_obs.map(|o| o.usage_millis);
        v.cpu_throttled_ratio = self.last_obs.map(|o| o.throttled_ratio);
        v.memory_high_bytes = self.mem.as_ref().and_then(|m| m.shown_high(dry_run));
        v.memory_usage_bytes = reading.map(|r| r.current);
        v.memory_pressure_ratio = reading.and_then(|r| r.pressure);
        v.memory_growing = self.mem.as_ref().is_some_and(|m| m.growth.growing);
        v.backoff = self.backoff_until.is_some();
        if v.last_action != self.last_action {
            v.last_action.clone_from(&self.last_action);
        }
    }

    /// Records the values `plan` will write in memory as pending.
    pub(crate) fn stage_memory(&self, plan: &MemoryPlan, record: &mut ContainerRecord) {
        if let MemoryAction::SetHigh(b) = plan.action
            && let Some(o) = record.memory_high.as_mut()
        {
            o.begin(Limit(Some(b)));
        }
    }

    /// The journal could not be written: nothing was; a placement is to be made again.
    pub(crate) fn unstage_memory(&mut self, plan: &MemoryPlan) {
        if let Some(m) = self.mem.as_mut() {
            m.unstage(plan);
        }
    }
}

#[cfg(test)]
mod tests;
