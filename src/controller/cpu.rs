//! CPU quota decisions (`cpu.max`): fast up, slow down (design notes §5). Growth is driven by
//! stall signals — throttled periods, usage pressing on the quota, CPU pressure — and sized
//! from demand (usage plus throttled time) so a proxy gets what it needs in one or two ticks.
//! Shrinking waits for `scaleDownAfter` of low use, then steps down by at most `stepDown` per
//! tick toward the quiet period's peak usage over the target utilisation, never below the floor.

use std::time::Duration;

use super::{Direction, Reason};
use crate::policy::CpuPolicy;

/// What one tick saw of a proxy's CPU, as deltas since the previous tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuObservation {
    /// Wall time the deltas span.
    pub elapsed: Duration,
    /// CPU used, in millicores (`usage_usec` delta / elapsed).
    pub usage_millis: f64,
    /// Share of enforcement periods that were throttled (`nr_throttled / nr_periods` deltas).
    pub throttled_ratio: f64,
    /// Throttled time per wall time, in millicores (`throttled_usec` delta / elapsed): runnable
    /// work the quota held back.
    pub throttled_millis: f64,
    /// Share of wall time some task waited for CPU (`cpu.pressure` some total delta), if PSI is on.
    pub pressure_some: Option<f64>,
    /// The quota in force now, in millicores.
    pub quota_millis: u64,
    /// Share of the quota used in the periods the proxy had work (usage over `nr_periods`
    /// times the quota): near 1.0 when it used all it may whenever it ran. `None` without
    /// periods (idle, or unlimited).
    pub active_utilization: Option<f64>,
}

/// The range the quota may move in for one proxy, in millicores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuBounds {
    pub floor: u64,
    pub ceiling: u64,
}

impl CpuBounds {
    /// Policy bounds narrowed by the container's original limit (`None` = unlimited): never
    /// above the original, and a floor that never exceeds the ceiling.
    /// With `allowAboveLimit` the original does not cap the ceiling (the pod cgroup is raised)
    /// but still caps the floor: an idle proxy never holds more than its own limit.
    pub(crate) fn new(policy: &CpuPolicy, original_millis: Option<u64>) -> CpuBounds {
        let ceiling = match original_millis {
            Some(o) if !policy.allow_above_limit => o.min(policy.max_millis),
            _ => policy.max_millis,
        };
        let floor = policy.min_millis.min(ceiling);
        CpuBounds {
            floor: original_millis.map_or(floor, |o| floor.min(o)),
            ceiling,
        }
    }

    /// A protected proxy (the node's ztunnel) never goes below its own limit: the floor is
    /// the original (within the ceiling). Unlimited: nothing to protect.
    pub(crate) fn protecting(self, original_millis: Option<u64>) -> CpuBounds {
        let floor = original_millis.map_or(self.floor, |o| self.floor.max(o.min(self.ceiling)));
        CpuBounds { floor, ..self }
    }

    /// Narrows the bounds by Envoy's worker count `workers` (`--concurrency N`): the floor is
    /// at least N workers' minimum, and quota above N+1 cores (the workers plus the main
    /// thread) is useless headroom. Never above the ceiling already set.
    pub(crate) fn with_concurrency(
        self,
        workers: Option<u32>,
        per_worker_millis: u64,
    ) -> CpuBounds {
        let Some(n) = workers.filter(|n| *n > 0).map(u64::from) else {
            return self;
        };
        let ceiling = self.ceiling.min(((n + 1) * 1000).max(self.floor));
        let floor = self.floor.max(n * per_worker_millis).min(ceiling);
        CpuBounds { floor, ceiling }
    }
}

/// The worker count a quota ceiling of `ceiling_millis` can serve at `per_worker_millis`
/// each, when `workers` is more than that (`None` when they fit, or nothing is known).
pub(crate) fn fitting_workers(
    workers: Option<u32>,
    ceiling_millis: u64,
    per_worker_millis: u64,
) -> Option<u32> {
    let n = workers.filter(|n| *n > 0)?;
    let fit = (ceiling_millis / per_worker_millis.max(1)).max(1);
    (u64::from(n) > fit).then(|| u32::try_from(fit).unwrap_or(u32::MAX))
}

/// Per-proxy memory of the controller between ticks.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CpuState {
    /// How long usage has stayed low without throttling.
    pub quiet_for: Duration,
    /// Highest usage in the current window of the quiet stretch, in millicores.
    pub quiet_peak_millis: f64,
    /// Highest usage in the previous window. The peak a shrink respects is the larger of the
    /// two: usage of the last one to two `scaleDownAfter`s, so the tick a busy proxy went
    /// idle does not pin its quota for as long as it stays idle.
    pub previous_peak_millis: f64,
    /// Time into the current window.
    pub window: Duration,
    /// The quota the proxy held when it was last busy, in millicores, decaying toward the
    /// floor while it is quiet: what a proxy woken at its floor is raised to at once. Starts
    /// at the ceiling (the container's own limit: what its author sized it for).
    pub busy_millis: Option<f64>,
}

impl CpuState {
    /// Restarts the quiet clock; the busy level stays.
    fn reset(&mut self) {
        *self = CpuState {
            busy_millis: self.busy_millis,
            ..CpuState::default()
        };
    }

    /// The busy level now (the ceiling before anything was seen), within `bounds`.
    fn busy_level(&self, bounds: CpuBounds) -> u64 {
        let level = self.busy_millis.unwrap_or(bounds.ceiling as f64);
        (level.ceil() as u64).clamp(bounds.floor, bounds.ceiling)
    }

    /// Quiet for `elapsed`: the busy level halves toward the floor every `half_life`.
    fn decay_busy(&mut self, elapsed: Duration, bounds: CpuBounds, half_life: Duration) {
        let floor = bounds.floor as f64;
        let level = self.busy_millis.unwrap_or(bounds.ceiling as f64).max(floor);
        let keep = 0.5f64.powf(elapsed.as_secs_f64() / half_life.as_secs_f64().max(1e-3));
        self.busy_millis = Some(floor + (level - floor) * keep);
    }
}

/// A new quota to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuDecision {
    pub quota_millis: u64,
    pub direction: Direction,
    pub reason: Reason,
}

fn up(quota_millis: u64, reason: Reason) -> Option<CpuDecision> {
    Some(CpuDecision {
        quota_millis,
        direction: Direction::Up,
        reason,
    })
}

fn down(quota_millis: u64, reason: Reason) -> Option<CpuDecision> {
    Some(CpuDecision {
        quota_millis,
        direction: Direction::Down,
        reason,
    })
}

/// Decides the next quota for one proxy. `None` means leave it.
pub(crate) fn decide_cpu(
    state: &mut CpuState,
    obs: &CpuObservation,
    bounds: CpuBounds,
    p: &CpuPolicy,
) -> Option<CpuDecision> {
    let current = obs.quota_millis;
    if current > bounds.ceiling {
        state.reset();
        return down(bounds.ceiling, Reason::Policy);
    }
    if current < bounds.floor {
        state.reset();
        return up(bounds.floor, Reason::Policy);
    }
    let quota = current.max(1) as f64;
    let usage = obs.usage_millis.max(0.0);
    let utilization = usage / quota;

    let reason = if obs.throttled_ratio >= p.throttled_ratio && obs.throttled_ratio > 0.0 {
        Some(Reason::Throttled)
    } else if utilization >= p.scale_up_utilization {
        Some(Reason::NearQuota)
    } else if obs.pressure_some.is_some_and(|s| s >= p.pressure_threshold)
        && utilization >= p.target_utilization
    {
        Some(Reason::Pressure)
    } else {
        None
    };

    if let Some(reason) = reason {
        state.reset();
        let demand = usage + obs.throttled_millis.max(0.0);
        let sized = demand / p.target_utilization;
        let stepped = quota * (1.0 + p.step_up);
        // Throttled while using well under the quota is a short burst (an idle proxy waking
        // up), not a lasting need: one step, not a jump to the burst's size.
        let bursty = reason == Reason::Throttled && utilization < p.target_utilization;
        let want = if bursty { stepped } else { sized.max(stepped) };
        let want = (want.ceil() as u64).clamp(bounds.floor, bounds.ceiling);
        if !bursty {
            state.busy_millis = Some(want.max(current) as f64);
        }
        return (want > current).then(|| up(want, reason)).flatten();
    }

    if utilization < p.scale_down_utilization && obs.throttled_ratio == 0.0 {
        state.decay_busy(obs.elapsed, bounds, p.wake_on_stall.busy_half_life);
        state.quiet_for += obs.elapsed;
        state.quiet_peak_millis = state.quiet_peak_millis.max(usage);
        state.window += obs.elapsed;
        let peak = state.quiet_peak_millis.max(state.previous_peak_millis);
        if state.window >= p.scale_down_after {
            state.previous_peak_millis = state.quiet_peak_millis;
            state.quiet_peak_millis = 0.0;
            state.window = Duration::ZERO;
        }
        if state.quiet_for < p.scale_down_after {
            return None;
        }
        let sized = peak / p.target_utilization;
        let stepped = quota * (1.0 - p.step_down);
        let want = (sized.max(stepped).ceil() as u64).clamp(bounds.floor, bounds.ceiling);
        // Skip changes under 1% (or 1m): they buy nothing and churn the file.
        let worth = (current / 100).max(1);
        return (current.saturating_sub(want) >= worth)
            .then(|| down(want, Reason::Idle))
            .flatten();
    }

    // In the band between low use and pressure: steady, and busy at this quota.
    state.reset();
    state.busy_millis = Some(current as f64);
    None
}

/// How long after a wake-up that could not tell yet the proxy is looked at again: one
/// period (the kernel's default, 100 ms).
pub(crate) const LOOK_AGAIN: Duration = Duration::from_millis(100);

/// The most looks after one trigger (a 2 s window: 20).
const MAX_LOOKS: u32 = 20;

/// Why a proxy is stepped between ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Its stall trigger fired.
    Trigger,
    /// [`LOOK_AGAIN`] after a wake-up that showed nothing of its quota yet, no step taken;
    /// `left`: looks still allowed after this one.
    Blind { left: u32 },
    /// [`LOOK_AGAIN`] after a wake-up that stepped it up once: the last look.
    Stepped,
}

/// Looks a trigger that shows no stall yet is followed by: the kernel fires a trigger at
/// most once a window, so until the window has passed the agent looks itself, or it would be
/// blind to the stall that follows (seen on the real kernel: a trigger on the contention of
/// a burst's start, then the throttling, were 0.5 s slower to raise than the rest).
pub(crate) fn blind_looks(window: Duration) -> u32 {
    let n = window.as_millis().div_ceil(LOOK_AGAIN.as_millis());
    u32::try_from(n).unwrap_or(MAX_LOOKS).clamp(1, MAX_LOOKS)
}

/// What a wake-up between ticks decided for one proxy (grow only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct WakeDecision {
    pub decision: Option<CpuDecision>,
    /// Look again after about one period, as this: the sample spans mostly the quiet before
    /// the stall, so whether it is lasting load cannot be told from it yet.
    pub look_again: Option<Wake>,
}

/// Decides for a proxy woken between ticks by its stall trigger, or looked at again shortly
/// after ([`Wake`]): growth only — shrinking stays on the tick.
///
/// A stall is lasting load when, in the periods the proxy ran, it used its whole quota
/// and was throttled in most of them: then it is raised at once to the larger of its demand
/// and its busy level ([`CpuState::busy_millis`]). A wake-up that sees a stall it cannot call
/// lasting steps up once (fast, and cheap if it was a blip) and looks again once. One that
/// sees no stall of its quota yet (the trigger fired on the first throttled periods, diluted
/// in the span since the last tick, or on contention as load began) looks again every
/// [`LOOK_AGAIN`] until the trigger's window has passed (`blind` looks in all: the kernel
/// will not fire again before), without a step. One step at most before lasting load is
/// seen; then the tick decides.
pub(crate) fn decide_wake(
    state: &mut CpuState,
    obs: &CpuObservation,
    bounds: CpuBounds,
    p: &CpuPolicy,
    wake: Wake,
    blind: u32,
) -> WakeDecision {
    let current = obs.quota_millis;
    let none = WakeDecision::default();
    if current < bounds.floor {
        state.reset();
        return WakeDecision {
            decision: up(bounds.floor, Reason::Policy),
            look_again: None,
        };
    }
    if current >= bounds.ceiling {
        return none;
    }
    let quota = current as f64;
    // Throttled by its own quota: what a higher quota helps. CPU pressure alone helps only
    // when the proxy uses its quota (as on a tick): an idle proxy waiting for a CPU another
    // cgroup holds is contention, not a small quota.
    let throttled = obs.throttled_ratio >= p.throttled_ratio && obs.throttled_ratio > 0.0;
    let stalling = obs.pressure_some.is_some_and(|s| s >= p.pressure_threshold);
    let pressured = stalling && obs.usage_millis / quota.max(1.0) >= p.target_utilization;
    if !throttled && !pressured {
        // Nothing of its quota shows yet: look again while the kernel cannot tell.
        let left = match wake {
            Wake::Trigger => blind.checked_sub(1),
            Wake::Blind { left } => left.checked_sub(1),
            Wake::Stepped => None,
        };
        return WakeDecision {
            decision: None,
            look_again: left.map(|left| Wake::Blind { left }),
        };
    }
    // Lasting only on recent evidence: a span reaching back to the last tick also holds a
    // short job that stalled for a few periods and is done (seen on the real kernel: an idle
    // haproxy's timers, 40 ms of work at a 100m floor, every 10 s, were each taken for
    // load and raised to 2 cores). Such a span steps once and looks again.
    let lasting = obs.elapsed <= LASTING_SPAN
        && obs
            .active_utilization
            .is_some_and(|u| u >= p.scale_up_utilization)
        && obs.throttled_ratio >= LASTING_THROTTLED_RATIO;
    let stepped = quota * (1.0 + p.step_up);
    let (want, look_again) = if lasting {
        // Lasting load: not a quiet stretch.
        state.reset();
        let demand =
            (obs.usage_millis.max(0.0) + obs.throttled_millis.max(0.0)) / p.target_utilization;
        let want = stepped.max(demand).max(state.busy_level(bounds) as f64);
        (want, None)
    } else if wake != Wake::Stepped {
        // One step on the bet it is load, and one look; the quiet clock runs on (a blip must
        // not hold an idle proxy above its floor for another scaleDownAfter).
        (stepped, Some(Wake::Stepped))
    } else {
        // Stepped and looked again, and it is not lasting load: the tick decides.
        return none;
    };
    let want = (want.ceil() as u64).clamp(bounds.floor, bounds.ceiling);
    if want <= current {
        return WakeDecision {
            decision: None,
            look_again,
        };
    }
    WakeDecision {
        decision: up(want, Reason::Stall),
        look_again,
    }
}

/// The longest span whose stall can be called lasting: the last two periods (a look's span,
/// or a trigger's right after a tick).
const LASTING_SPAN: Duration = Duration::from_millis(250);

/// Throttled in at least this share of the periods it ran: the stall is the quota's, not a
/// blip (with the whole quota used in those periods).
const LASTING_THROTTLED_RATIO: f64 = 0.5;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    const TICK: Duration = Duration::from_secs(1);
    const TRIGGER: Wake = Wake::Trigger;
    const STEPPED: Wake = Wake::Stepped;
    /// The last look of a trigger that showed nothing.
    const UNSTEPPED: Wake = Wake::Blind { left: 0 };
    /// Looks of a trigger in the default 500 ms window.
    const BLIND: u32 = 5;
    /// No step; looks until the window has passed.
    const LOOK_ONLY: WakeDecision = WakeDecision {
        decision: None,
        look_again: Some(Wake::Blind { left: BLIND - 1 }),
    };

    /// [`super::decide_wake`] in the default window.
    fn decide_wake(
        state: &mut CpuState,
        obs: &CpuObservation,
        bounds: CpuBounds,
        p: &CpuPolicy,
        wake: Wake,
    ) -> WakeDecision {
        super::decide_wake(state, obs, bounds, p, wake, BLIND)
    }

    #[test]
    fn a_trigger_is_looked_after_for_its_window() {
        assert_eq!(blind_looks(Duration::from_millis(500)), 5);
        assert_eq!(blind_looks(Duration::from_millis(550)), 6);
        assert_eq!(blind_looks(Duration::from_secs(2)), 20);
        assert_eq!(blind_looks(Duration::from_secs(10)), 20, "at most 20");
    }

    fn policy() -> CpuPolicy {
        Policy::default().cpu
    }

    fn obs(quota: u64, usage: f64) -> CpuObservation {
        CpuObservation {
            elapsed: TICK,
            usage_millis: usage,
            throttled_ratio: 0.0,
            throttled_millis: 0.0,
            pressure_some: Some(0.0),
            quota_millis: quota,
            active_utilization: None,
        }
    }

    fn bounds() -> CpuBounds {
        CpuBounds::new(&policy(), Some(2000))
    }

    /// Runs a closed loop: each tick's decision becomes the next tick's quota.
    /// `usage(tick, quota)` gives the usage the proxy shows under that quota.
    fn simulate(
        start: u64,
        ticks: usize,
        usage: impl Fn(usize, u64) -> (f64, f64, f64),
    ) -> Vec<(u64, Option<CpuDecision>)> {
        let p = policy();
        let mut state = CpuState::default();
        let mut quota = start;
        let mut out = Vec::new();
        for t in 0..ticks {
            let (u, ratio, throttled) = usage(t, quota);
            let o = CpuObservation {
                throttled_ratio: ratio,
                throttled_millis: throttled,
                ..obs(quota, u)
            };
            let d = decide_cpu(&mut state, &o, bounds(), &p);
            if let Some(d) = d {
                quota = d.quota_millis;
            }
            out.push((quota, d));
        }
        out
    }

    #[test]
    fn workers_that_the_ceiling_cannot_serve() {
        // 8 workers at 50m each need 400m: a 200m limit serves 4.
        assert_eq!(fitting_workers(Some(8), 200, 50), Some(4));
        assert_eq!(fitting_workers(Some(4), 200, 50), None);
        assert_eq!(fitting_workers(Some(2), 50, 50), Some(1));
        assert_eq!(fitting_workers(Some(3), 20, 50), Some(1), "at least one");
        assert_eq!(fitting_workers(None, 100, 50), None);
        assert_eq!(fitting_workers(Some(0), 100, 50), None);
    }

    #[test]
    fn bounds_respect_original_and_policy() {
        let p = policy();
        assert_eq!(
            CpuBounds::new(&p, Some(2000)),
            CpuBounds {
                floor: 100,
                ceiling: 2000
            }
        );
        assert_eq!(CpuBounds::new(&p, Some(500)).ceiling, 500);
        assert_eq!(CpuBounds::new(&p, None).ceiling, 2000);
        // An original below the policy floor: never raised above the original.
        assert_eq!(
            CpuBounds::new(&p, Some(50)),
            CpuBounds {
                floor: 50,
                ceiling: 50
            }
        );
    }

    #[test]
    fn above_the_limit_only_when_allowed() {
        let allowed = CpuPolicy {
            allow_above_limit: true,
            ..policy()
        };
        assert_eq!(CpuBounds::new(&allowed, Some(500)).ceiling, 2000);
        assert_eq!(CpuBounds::new(&policy(), Some(500)).ceiling, 500);
    }

    #[test]
    fn concurrency_sets_floor_and_useful_ceiling() {
        let b = CpuBounds::new(&policy(), Some(8000)).with_concurrency(Some(4), 50);
        assert_eq!(
            b,
            CpuBounds {
                floor: 200,
                ceiling: 2000
            }
        );
        let wide = CpuPolicy {
            max_millis: 16_000,
            ..policy()
        };
        let b = CpuBounds::new(&wide, Some(8000)).with_concurrency(Some(2), 50);
        assert_eq!(
            b,
            CpuBounds {
                floor: 100,
                ceiling: 3000
            }
        );
        // Never above the original limit.
        let b = CpuBounds::new(&policy(), Some(150)).with_concurrency(Some(4), 50);
        assert_eq!(
            b,
            CpuBounds {
                floor: 150,
                ceiling: 150
            }
        );
        assert_eq!(
            CpuBounds::new(&policy(), Some(2000)).with_concurrency(None, 50),
            CpuBounds::new(&policy(), Some(2000))
        );
        // An idle proxy with 4 workers stops at 200m, not 100m.
        let p = policy();
        let mut state = CpuState::default();
        let mut quota = 2000;
        for _ in 0..120 {
            if let Some(d) = decide_cpu(&mut state, &obs(quota, 1.0), b4(), &p) {
                quota = d.quota_millis;
            }
        }
        assert_eq!(quota, 200);
    }

    fn b4() -> CpuBounds {
        CpuBounds::new(&policy(), Some(2000)).with_concurrency(Some(4), 50)
    }

    #[test]
    fn idle_waits_for_scale_down_after_then_steps_down() {
        // Idle (5m used of 2000m): nothing for the first 29 ticks, then 10% steps.
        let trace = simulate(2000, 40, |_, _| (5.0, 0.0, 0.0));
        for (t, (quota, d)) in trace.iter().enumerate().take(29) {
            assert_eq!((*quota, *d), (2000, None), "tick {t}");
        }
        assert_eq!(
            trace[29].1,
            Some(CpuDecision {
                quota_millis: 1800,
                direction: Direction::Down,
                reason: Reason::Idle
            })
        );
        assert_eq!(trace[30].0, 1620);
        assert_eq!(trace[31].0, 1458);
    }

    #[test]
    fn idle_reaches_floor_within_half_a_minute_after_scale_down_after() {
        let trace = simulate(2000, 120, |_, _| (3.0, 0.0, 0.0));
        let first_floor = trace.iter().position(|(q, _)| *q == 100).unwrap();
        assert!(
            (30..=30 + 32).contains(&first_floor),
            "reached the floor at tick {first_floor}"
        );
        // and stays there without further writes
        assert!(
            trace[first_floor + 1..]
                .iter()
                .all(|(q, d)| *q == 100 && d.is_none())
        );
    }

    #[test]
    fn throttled_proxy_gets_its_demand_in_one_tick() {
        // At 100m a 1-core spinner uses 100m and is throttled ~900m worth of time.
        let d = decide_cpu(
            &mut CpuState::default(),
            &CpuObservation {
                throttled_ratio: 0.9,
                throttled_millis: 900.0,
                ..obs(100, 100.0)
            },
            bounds(),
            &policy(),
        )
        .unwrap();
        assert_eq!(d.direction, Direction::Up);
        assert_eq!(d.reason, Reason::Throttled);
        // demand 1000m at 60% target = 1667m
        assert_eq!(d.quota_millis, 1667);
    }

    #[test]
    fn a_throttled_blip_while_idle_is_one_step_not_a_jump() {
        // At the 100m floor an idle proxy (20m used) is throttled in a few periods with a lot
        // of throttled time: it doubles, it does not jump to 500m+.
        let d = decide_cpu(
            &mut CpuState::default(),
            &CpuObservation {
                throttled_ratio: 0.2,
                throttled_millis: 300.0,
                ..obs(100, 20.0)
            },
            bounds(),
            &policy(),
        )
        .unwrap();
        assert_eq!((d.reason, d.quota_millis), (Reason::Throttled, 200));
    }

    #[test]
    fn turning_hot_from_the_floor_recovers_within_three_ticks() {
        // Demand of 1000m: under quota q the proxy uses min(q, 1000) and is throttled for the rest.
        let demand = 1000.0;
        let trace = simulate(100, 3, |_, q| {
            let used = (q as f64).min(demand);
            let held = demand - used;
            let ratio = if held > 0.0 { 0.9 } else { 0.0 };
            (used, ratio, held)
        });
        assert!(trace[2].0 as f64 >= demand, "{trace:?}");
    }

    #[test]
    fn without_throttle_time_growth_still_doubles() {
        // Near quota but no throttled_usec (older kernels): at least doubles each tick.
        let trace = simulate(100, 3, |_, q| ((q as f64 * 0.95).min(900.0), 0.0, 0.0));
        assert_eq!(trace[0].0, 200);
        assert_eq!(trace[1].0, 400);
        assert_eq!(trace[2].0, 800);
        assert_eq!(trace[0].1.unwrap().reason, Reason::NearQuota);
    }

    #[test]
    fn growth_stops_at_the_ceiling() {
        let trace = simulate(1500, 3, |_, q| (q as f64, 0.8, 4000.0));
        assert_eq!(trace[0].0, 2000);
        assert_eq!(trace[1], (2000, None));
    }

    #[test]
    fn hot_proxy_keeps_what_it_uses() {
        // A steady 1-core user starting at 2 cores settles at usage/target and stays.
        let trace = simulate(2000, 200, |_, q| ((q as f64).min(1000.0), 0.0, 0.0));
        let settled = trace.last().unwrap().0;
        assert!(settled >= 1000, "quota {settled} below usage");
        assert!(settled <= 2000);
        // No oscillation in the last 60 ticks.
        assert!(
            trace[140..].iter().all(|(_, d)| d.is_none()),
            "{:?}",
            &trace[140..]
        );
    }

    #[test]
    fn in_band_usage_resets_the_quiet_clock() {
        let p = policy();
        let mut state = CpuState::default();
        for _ in 0..20 {
            assert_eq!(decide_cpu(&mut state, &obs(1000, 10.0), bounds(), &p), None);
        }
        // One tick at 60% usage: steady, clock reset.
        assert_eq!(
            decide_cpu(&mut state, &obs(1000, 600.0), bounds(), &p),
            None
        );
        assert_eq!(state.quiet_for, Duration::ZERO);
        for _ in 0..29 {
            assert_eq!(decide_cpu(&mut state, &obs(1000, 10.0), bounds(), &p), None);
        }
        assert!(decide_cpu(&mut state, &obs(1000, 10.0), bounds(), &p).is_some());
    }

    #[test]
    fn shrinking_stops_once_usage_is_back_in_the_band() {
        // 400m used of 1000m (40%, low): 900, then 810 (49%, in the band): steady there.
        let trace = simulate(1000, 60, |_, q| ((q as f64).min(400.0), 0.0, 0.0));
        assert_eq!(trace[29].0, 900);
        assert_eq!(trace.last().unwrap().0, 810);
    }

    #[test]
    fn quiet_peak_limits_a_large_step() {
        let p = CpuPolicy {
            step_down: 0.5,
            ..policy()
        };
        let mut state = CpuState::default();
        let usage = [100.0, 400.0];
        let mut last = None;
        for t in 0..30 {
            last = decide_cpu(&mut state, &obs(1000, usage[t % 2]), bounds(), &p);
        }
        // max(peak 400 / 0.6, 1000 * 0.5) = 667
        assert_eq!(last.unwrap().quota_millis, 667);
    }

    #[test]
    fn a_busy_proxy_that_goes_idle_reaches_the_floor() {
        // Busy at 1.2 cores, then idle: the tick it stopped (partial usage 700m) counts as
        // quiet but must not pin the quota at 700/0.6 while it stays idle.
        let trace = simulate(2000, 150, |t, q| {
            let u = match t {
                0..10 => 1200.0,
                10 => 700.0,
                _ => 5.0,
            };
            ((q as f64).min(u), 0.0, 0.0)
        });
        assert_eq!(trace.last().unwrap().0, 100, "{:?}", &trace[100..]);
    }

    #[test]
    fn pressure_needs_usage_above_target() {
        let p = policy();
        let pressured = |usage| CpuObservation {
            pressure_some: Some(0.5),
            ..obs(1000, usage)
        };
        // Contention from elsewhere on the node with a mostly idle proxy: no growth.
        assert_eq!(
            decide_cpu(&mut CpuState::default(), &pressured(100.0), bounds(), &p),
            None
        );
        let d = decide_cpu(&mut CpuState::default(), &pressured(700.0), bounds(), &p).unwrap();
        assert_eq!((d.reason, d.quota_millis), (Reason::Pressure, 2000));
    }

    #[test]
    fn policy_bounds_are_enforced_first() {
        let p = policy();
        let d = decide_cpu(&mut CpuState::default(), &obs(3000, 0.0), bounds(), &p).unwrap();
        assert_eq!(
            (d.direction, d.reason, d.quota_millis),
            (Direction::Down, Reason::Policy, 2000)
        );
        let d = decide_cpu(&mut CpuState::default(), &obs(50, 0.0), bounds(), &p).unwrap();
        assert_eq!(
            (d.direction, d.reason, d.quota_millis),
            (Direction::Up, Reason::Policy, 100)
        );
    }

    #[test]
    fn any_throttling_blocks_shrinking() {
        let p = policy();
        let mut state = CpuState::default();
        let o = CpuObservation {
            throttled_ratio: 0.01,
            ..obs(1000, 10.0)
        };
        for _ in 0..60 {
            assert_eq!(decide_cpu(&mut state, &o, bounds(), &p), None);
        }
    }

    #[test]
    fn a_spike_during_quiet_restarts_the_wait() {
        let p = policy();
        let mut state = CpuState::default();
        for _ in 0..25 {
            decide_cpu(&mut state, &obs(1000, 5.0), bounds(), &p);
        }
        let d = decide_cpu(&mut state, &obs(1000, 950.0), bounds(), &p).unwrap();
        assert_eq!(d.direction, Direction::Up);
        assert_eq!(state.quiet_for, Duration::ZERO);
    }

    /// What a wake-up sees: `quota` in force, `usage` and throttled time over the span,
    /// `ratio` of its active periods throttled, `active` share of the quota used in them.
    fn stalled(quota: u64, usage: f64, ratio: f64, active: f64) -> CpuObservation {
        CpuObservation {
            elapsed: Duration::from_millis(100),
            throttled_ratio: ratio,
            throttled_millis: if ratio > 0.0 { 900.0 } else { 0.0 },
            active_utilization: Some(active),
            ..obs(quota, usage)
        }
    }

    fn wake(state: &mut CpuState, o: &CpuObservation, w: Wake) -> (u64, Option<Wake>, Reason) {
        let w = decide_wake(state, o, bounds(), &policy(), w);
        let d = w.decision.expect("a decision");
        assert_eq!(d.direction, Direction::Up);
        (d.quota_millis, w.look_again, d.reason)
    }

    #[test]
    fn a_first_wake_that_cannot_tell_steps_once_and_looks_again() {
        // The span since the last tick is mostly the quiet before the stall: 2 of 10 active
        // periods throttled, a fifth of the quota used in them.
        let mut state = CpuState::default();
        let o = stalled(100, 20.0, 0.2, 0.2);
        assert_eq!(
            wake(&mut state, &o, TRIGGER),
            (200, Some(STEPPED), Reason::Stall)
        );
        // Looked again and it was a blip: nothing more, the tick decides.
        let blip = stalled(200, 10.0, 0.1, 0.1);
        assert_eq!(
            decide_wake(&mut state, &blip, bounds(), &policy(), STEPPED),
            WakeDecision::default()
        );
    }

    #[test]
    fn lasting_load_jumps_to_the_busy_level() {
        // Never seen busy: the busy level is the ceiling (the container's own 2 cores).
        let mut state = CpuState::default();
        let o = stalled(200, 200.0, 1.0, 1.0);
        assert_eq!(wake(&mut state, &o, STEPPED), (2000, None, Reason::Stall));
        // Lasting on the first wake-up: at once, no second look.
        let mut state = CpuState::default();
        assert_eq!(
            wake(&mut state, &stalled(100, 100.0, 0.9, 0.95), TRIGGER).1,
            None
        );
    }

    #[test]
    fn the_busy_level_is_the_last_busy_quota_decaying_toward_the_floor() {
        let p = policy();
        let mut state = CpuState::default();
        // Busy in the band at 800m (60% used): the level is 800m.
        assert_eq!(decide_cpu(&mut state, &obs(800, 480.0), bounds(), &p), None);
        assert_eq!(state.busy_millis, Some(800.0));
        // 300 s quiet (one half-life) at 800m, shrinking as it goes.
        let mut quota = 800;
        for _ in 0..300 {
            if let Some(d) = decide_cpu(&mut state, &obs(quota, 2.0), bounds(), &p) {
                quota = d.quota_millis;
            }
        }
        assert_eq!(quota, 100, "idle reaches the floor");
        let level = state.busy_millis.unwrap();
        assert!(
            (level - 450.0).abs() < 1.0,
            "half way to the floor: {level}"
        );
        // Woken at the floor under lasting load: raised to that level, not merely doubled.
        let o = stalled(100, 100.0, 1.0, 1.0);
        let (to, _, _) = wake(
            &mut state,
            &CpuObservation {
                throttled_millis: 100.0,
                ..o
            },
            TRIGGER,
        );
        assert_eq!(to, 451);
    }

    /// A short job at the floor (40 ms of work, four throttled periods, then done) fires the
    /// trigger as load does; the span since the last tick cannot tell them apart. One step,
    /// and the look decides: done, nothing more; still using all of it, the busy level.
    #[test]
    fn a_short_job_stalled_at_the_floor_is_one_step_not_the_busy_level() {
        let p = policy();
        let b = bounds();
        let job = CpuObservation {
            elapsed: Duration::from_millis(700),
            ..stalled(100, 40.0 / 0.7, 1.0, 1.0)
        };
        let mut state = CpuState::default();
        let w = decide_wake(&mut state, &job, b, &p, TRIGGER);
        assert_eq!(
            (w.decision.map(|d| d.quota_millis), w.look_again),
            (Some(200), Some(STEPPED))
        );
        let done = stalled(200, 5.0, 0.0, 0.05);
        assert_eq!(
            decide_wake(&mut state, &done, b, &p, STEPPED),
            WakeDecision::default()
        );
        // Load: the look finds the 200m used and throttled.
        let mut state = CpuState::default();
        decide_wake(&mut state, &job, b, &p, TRIGGER);
        let w = decide_wake(&mut state, &stalled(200, 200.0, 1.0, 1.0), b, &p, STEPPED);
        assert_eq!(w.decision.map(|d| d.quota_millis), Some(2000));
    }

    #[test]
    fn demand_above_the_busy_level_wins() {
        let mut state = CpuState {
            busy_millis: Some(300.0),
            ..CpuState::default()
        };
        // 100m used, 1500m held back: demand 1600m at 60% target = 2667m, capped at 2000m.
        let o = CpuObservation {
            throttled_millis: 1500.0,
            ..stalled(100, 100.0, 1.0, 1.0)
        };
        assert_eq!(wake(&mut state, &o, TRIGGER).0, 2000);
    }

    #[test]
    fn a_wake_without_a_stall_or_at_the_ceiling_does_nothing() {
        let p = policy();
        let mut state = CpuState {
            quiet_for: Duration::from_secs(20),
            ..CpuState::default()
        };
        // Woken (pressure below the threshold, no throttling): no step, one look; looked
        // again and still nothing: done. The quiet clock is kept throughout.
        let calm = CpuObservation {
            pressure_some: Some(0.01),
            ..stalled(100, 5.0, 0.0, 0.1)
        };
        assert_eq!(
            decide_wake(&mut state, &calm, bounds(), &p, TRIGGER),
            LOOK_ONLY
        );
        assert_eq!(
            decide_wake(&mut state, &calm, bounds(), &p, UNSTEPPED),
            WakeDecision::default()
        );
        assert_eq!(state.quiet_for, Duration::from_secs(20));
        // At the ceiling: nothing to give; above it: never a shrink between ticks.
        for quota in [2000, 3000] {
            assert_eq!(
                decide_wake(
                    &mut state,
                    &stalled(quota, quota as f64, 1.0, 1.0),
                    bounds(),
                    &p,
                    TRIGGER
                ),
                WakeDecision::default()
            );
        }
    }

    #[test]
    fn pressure_wakes_a_proxy_using_its_quota_not_an_idle_one() {
        let p = policy();
        let quiet = Duration::from_secs(20);
        let mut state = CpuState {
            quiet_for: quiet,
            ..CpuState::default()
        };
        // Idle (10m of 200m) and waiting for CPUs other cgroups hold: contention, not its
        // quota (seen on the real kernel under a busy host, idle-shrinks on 6.1 and 6.12):
        // no step; looks while the kernel would not tell of a stall that follows.
        let contended = CpuObservation {
            pressure_some: Some(0.5),
            ..stalled(200, 10.0, 0.0, 0.05)
        };
        assert_eq!(
            decide_wake(&mut state, &contended, bounds(), &p, TRIGGER),
            LOOK_ONLY
        );
        // Using 70% of its quota with pressure: one step, a second look, quiet clock kept.
        let pressured = CpuObservation {
            pressure_some: Some(0.5),
            ..stalled(100, 70.0, 0.0, 0.7)
        };
        let w = decide_wake(&mut state, &pressured, bounds(), &p, TRIGGER);
        assert_eq!(w.decision.map(|d| d.quota_millis), Some(200));
        assert_eq!(w.look_again, Some(STEPPED));
        assert_eq!(state.quiet_for, quiet, "a first step keeps the quiet clock");
        // Lasting load restarts it.
        decide_wake(
            &mut state,
            &stalled(200, 200.0, 1.0, 1.0),
            bounds(),
            &p,
            STEPPED,
        );
        assert_eq!(state.quiet_for, Duration::ZERO);
    }

    #[test]
    fn a_throttled_period_or_two_below_the_ratio_is_no_stall() {
        // 1 of 40 periods throttled (2.5% < cpu.throttledRatio 5%): nothing.
        let w = decide_wake(
            &mut CpuState::default(),
            &stalled(100, 20.0, 0.025, 0.2),
            bounds(),
            &policy(),
            TRIGGER,
        );
        assert_eq!(w, LOOK_ONLY);
    }

    /// The trigger fires on the first throttled periods; the span since the last tick
    /// dilutes them below `cpu.throttledRatio`. Seen on the real kernel as the slowest
    /// reactions (the next trigger came a PSI window later): it looks again instead.
    #[test]
    fn a_trigger_that_shows_no_stall_yet_looks_again_and_steps_then() {
        let p = policy();
        let b = bounds();
        let mut state = CpuState::default();
        // Span of the last tick: 1 of 40 active periods throttled.
        let diluted = stalled(100, 20.0, 0.025, 0.2);
        assert_eq!(decide_wake(&mut state, &diluted, b, &p, TRIGGER), LOOK_ONLY);
        // 100 ms later: throttled in 3 of 10 periods, not yet lasting: one step, a look.
        let w = decide_wake(&mut state, &stalled(100, 60.0, 0.3, 0.6), b, &p, UNSTEPPED);
        assert_eq!(w.decision.map(|d| d.quota_millis), Some(200));
        assert_eq!(w.look_again, Some(STEPPED));
        // And then lasting: the busy level (the ceiling, never seen busy).
        let w = decide_wake(&mut state, &stalled(200, 200.0, 1.0, 1.0), b, &p, STEPPED);
        assert_eq!(
            (w.decision.map(|d| d.quota_millis), w.look_again),
            (Some(2000), None)
        );
    }

    /// Every path through the wake-up ends within the window's looks of a trigger and one
    /// after a step, with at most one step before lasting load is seen.
    #[test]
    fn a_trigger_is_followed_by_the_windows_looks_and_one_step_at_most() {
        let p = policy();
        let b = bounds();
        let samples = [
            stalled(100, 5.0, 0.0, 0.1),   // nothing
            stalled(100, 60.0, 0.3, 0.6),  // a stall, not lasting
            stalled(100, 100.0, 1.0, 1.0), // lasting
        ];
        // Every sequence of BLIND + 2 samples.
        let n = BLIND as usize + 2;
        for code in 0..3usize.pow(n as u32) {
            let seq: Vec<&CpuObservation> = (0..n)
                .map(|i| &samples[(code / 3usize.pow(i as u32)) % 3])
                .collect();
            let mut state = CpuState::default();
            let (mut stage, mut looks, mut steps) = (Some(TRIGGER), 0, 0);
            for o in &seq {
                let Some(w) = stage else { break };
                let out = decide_wake(&mut state, o, b, &p, w);
                if out.decision.is_some() && out.look_again.is_some() {
                    steps += 1;
                }
                looks += usize::from(out.look_again.is_some());
                stage = out.look_again;
            }
            assert!(stage.is_none(), "ends: {seq:?}");
            assert!(
                looks <= BLIND as usize + 1 && steps <= 1,
                "{looks} looks {steps} steps: {seq:?}"
            );
        }
    }

    #[test]
    fn below_the_floor_a_wake_restores_the_floor() {
        let w = decide_wake(
            &mut CpuState::default(),
            &stalled(50, 50.0, 1.0, 1.0),
            bounds(),
            &policy(),
            TRIGGER,
        );
        let d = w.decision.unwrap();
        assert_eq!(
            (d.quota_millis, d.reason, w.look_again),
            (100, Reason::Policy, None)
        );
    }

    /// Tick by tick, with wake-ups: idle from 2 cores to the floor, then a burst of 1.2 cores
    /// of demand. The wake-up and its second look give the proxy its busy level within one
    /// period; ticks then settle it without oscillating, and it goes back down once idle.
    #[test]
    fn wake_then_ticks_idle_burst_idle() {
        let p = CpuPolicy {
            scale_down_after: Duration::from_secs(3),
            step_down: 0.9,
            ..policy()
        };
        let b = bounds();
        let mut state = CpuState::default();
        let mut quota = 2000u64;
        let tick = |state: &mut CpuState, quota: &mut u64, usage: f64, throttled: f64| {
            let ratio = if throttled > 0.0 { 0.9 } else { 0.0 };
            let o = CpuObservation {
                throttled_ratio: ratio,
                throttled_millis: throttled,
                ..obs(*quota, usage)
            };
            let d = decide_cpu(state, &o, b, &p);
            if let Some(d) = d {
                *quota = d.quota_millis;
            }
            d
        };
        // Idle: at the floor after scaleDownAfter plus two steps.
        let mut at_floor = None;
        for t in 0..10 {
            tick(&mut state, &mut quota, 3.0, 0.0);
            if quota == 100 && at_floor.is_none() {
                at_floor = Some(t);
            }
        }
        assert_eq!(at_floor, Some(3), "2000 -> 200 -> 100 after 3 s quiet");
        // The burst: the first wake's span is diluted by the idle before it.
        let first = decide_wake(&mut state, &stalled(100, 15.0, 0.2, 0.3), b, &p, TRIGGER);
        quota = first.decision.unwrap().quota_millis;
        assert_eq!((quota, first.look_again), (200, Some(STEPPED)));
        let again = decide_wake(&mut state, &stalled(200, 200.0, 1.0, 1.0), b, &p, STEPPED);
        quota = again.decision.unwrap().quota_millis;
        assert!(
            quota >= 1800,
            "busy level (the ceiling, decayed over 10 s): {quota}"
        );
        // Ticks under 1.2 cores of demand: no throttling now; it settles and holds.
        let mut trace = Vec::new();
        for _ in 0..20 {
            trace.push((quota, tick(&mut state, &mut quota, 1200.0, 0.0)));
        }
        assert!(trace.iter().all(|(q, _)| *q >= 1200), "{trace:?}");
        assert!(
            trace[3..].iter().all(|(_, d)| d.is_none()),
            "no oscillation: {trace:?}"
        );
        // Idle again: back to the floor within a few seconds.
        for _ in 0..6 {
            tick(&mut state, &mut quota, 3.0, 0.0);
        }
        assert_eq!(quota, 100);
    }
}
