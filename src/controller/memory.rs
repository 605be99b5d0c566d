//! `memory.high` decisions, in the manner of Meta's senpai (design notes §5): watch a new proxy
//! for a settle period, place the limit at its peak plus headroom, then — while memory pressure
//! stays below target — probe downward in small steps (lowering `memory.high`, or asking
//! `memory.reclaim` to free bytes once); on pressure, raise at once in proportion to it (up to
//! doubling); on a `memory.events` `high`/`max`/`oom_kill` increment back off immediately. The
//! floor is never below the memory the kernel cannot reclaim (anon + kernel + sock + shmem,
//! without swap) plus a margin.

use std::time::Duration;

use super::{Direction, Reason};
use crate::cgroup::MemoryStat;
use crate::policy::{MemoryPolicy, ShrinkWith};

/// Increments of `memory.events` counters since the previous tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEventsDelta {
    pub high: u64,
    pub max: u64,
    pub oom_kill: u64,
}

/// What one tick saw of a proxy's memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MemoryObservation {
    pub elapsed: Duration,
    /// `memory.current`.
    pub current: u64,
    /// `memory.high` in force (`None` = `max`, not placed yet).
    pub high: Option<u64>,
    /// Share of wall time some task stalled on memory (`memory.pressure` some delta), if PSI is on.
    pub pressure_some: Option<f64>,
    pub events: MemoryEventsDelta,
    /// `memory.stat`, read only when [`wants_stat`] asked for it.
    pub stat: Option<MemoryStat>,
    /// Its unreclaimable memory grows steadily ([`super::growth`]): not probed down.
    pub growing: bool,
}

/// The range `memory.high` may move in, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryBounds {
    pub floor: u64,
    pub ceiling: u64,
}

impl MemoryBounds {
    /// Policy bounds narrowed by the container's `memory.max` and its original `memory.high`
    /// (`None` = unlimited): the agent never raises memory.high above either.
    pub(crate) fn new(
        policy: &MemoryPolicy,
        limit: Option<u64>,
        original: Option<u64>,
    ) -> MemoryBounds {
        let ceiling = [Some(policy.max_bytes), limit, original]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(policy.max_bytes);
        MemoryBounds {
            floor: policy.min_bytes.min(ceiling),
            ceiling,
        }
    }
}

/// Per-proxy memory of the memory controller between ticks.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MemoryState {
    /// The first placement has been made (or found unnecessary).
    pub placed: bool,
    /// How long the proxy has been watched.
    pub watched_for: Duration,
    /// Highest `memory.current` seen.
    pub peak: u64,
    /// How long pressure has stayed below target.
    pub quiet_for: Duration,
    /// Time since the last downward probe.
    pub since_probe: Duration,
    /// `memory.current` at the previous tick: how fast use grows sets how early the limit
    /// is raised.
    pub last_current: u64,
}

/// Room to keep between unreclaimable memory and the limit: the margin, or two ticks of the
/// current growth if that is more (a proxy growing faster must be raised earlier).
fn room(state: &MemoryState, current: u64, p: &MemoryPolicy) -> u64 {
    let growth = if state.last_current == 0 {
        0
    } else {
        current.saturating_sub(state.last_current)
    };
    p.margin_bytes.max(growth.saturating_mul(2))
}

/// What to do to a proxy's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemoryAction {
    /// Write `memory.high`.
    SetHigh(u64),
    /// Write this many bytes to `memory.reclaim` (once; leaves no limit behind).
    Reclaim(u64),
}

/// A memory decision with its explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryDecision {
    pub action: MemoryAction,
    pub direction: Direction,
    pub reason: Reason,
}

/// Smallest change worth a write: 1% of the value or 1 MiB, whichever is larger.
fn worth(value: u64) -> u64 {
    (value / 100).max(1 << 20)
}

/// True when the decision about to be taken (`elapsed` after the last one) needs
/// `memory.stat` (costly: read it only then): at the first placement, when a downward probe is
/// due, or when usage nears the limit.
pub(crate) fn wants_stat(
    state: &MemoryState,
    elapsed: Duration,
    current: u64,
    high: Option<u64>,
    p: &MemoryPolicy,
) -> bool {
    match high {
        _ if !state.placed => state.watched_for + elapsed >= p.settle_after,
        None => false,
        Some(h) => {
            current as f64 >= h as f64 * (1.0 - p.headroom / 2.0)
                || current.saturating_add(room(state, current, p).saturating_mul(2)) >= h
                || (state.quiet_for + elapsed >= p.scale_down_after
                    && state.since_probe + elapsed >= p.probe_interval)
        }
    }
}

/// The lowest `memory.high` that is safe now: the policy floor, unreclaimable memory plus the
/// margin, and `memory.current` minus what reclaim could free.
pub(crate) fn safe_floor(
    bounds: MemoryBounds,
    current: u64,
    stat: &MemoryStat,
    p: &MemoryPolicy,
) -> u64 {
    bounds
        .floor
        .max(stat.unreclaimable().saturating_add(p.margin_bytes))
        .max(current.saturating_sub(stat.reclaimable()))
}

fn set(bytes: u64, direction: Direction, reason: Reason) -> Option<MemoryDecision> {
    Some(MemoryDecision {
        action: MemoryAction::SetHigh(bytes),
        direction,
        reason,
    })
}

/// Decides the next memory action for one proxy. `None` means leave it.
pub(crate) fn decide_memory(
    state: &mut MemoryState,
    obs: &MemoryObservation,
    bounds: MemoryBounds,
    p: &MemoryPolicy,
) -> Option<MemoryDecision> {
    state.watched_for += obs.elapsed;
    state.peak = state.peak.max(obs.current);
    let room = room(state, obs.current, p);
    state.last_current = obs.current;
    let pressure = obs.pressure_some.unwrap_or(0.0);
    let headroom = |bytes: u64| (bytes as f64 * (1.0 + p.headroom)) as u64;

    if !state.placed {
        // Watch, then place once at peak + headroom (not after hundreds of small steps).
        if pressure >= p.pressure_threshold || obs.events.max > 0 || obs.events.oom_kill > 0 {
            state.quiet_for = Duration::ZERO;
            return None;
        }
        state.quiet_for += obs.elapsed;
        if state.watched_for < p.settle_after {
            return None;
        }
        let stat = obs.stat?;
        let floor = safe_floor(bounds, obs.current, &stat, p);
        let want = headroom(state.peak).max(floor).min(bounds.ceiling);
        state.placed = true;
        state.since_probe = Duration::ZERO;
        let now = obs.high.unwrap_or(u64::MAX);
        return (want.saturating_add(worth(want)) <= now)
            .then(|| set(want, Direction::Down, Reason::Placement))
            .flatten();
    }
    let high = match obs.high {
        Some(h) if h <= bounds.ceiling => h,
        // Above the bounds (a policy change, or a write that never landed).
        _ => return set(bounds.ceiling, Direction::Down, Reason::Policy),
    };

    // Immediate back-off: the kernel hit the hard limit or killed, or throttled at
    // memory.high while tasks stalled. `high` increments with no stall at all are the kernel
    // reclaiming cold cache — what a downward probe asks for — so they alone are no back-off
    // (without PSI there is no telling, and every increment counts).
    let stalled = obs.pressure_some.is_none_or(|p| p > 0.0);
    let hit = obs.events.max + obs.events.oom_kill + if stalled { obs.events.high } else { 0 };
    if hit > 0 {
        state.quiet_for = Duration::ZERO;
        let want = ((high as f64 * 1.5) as u64)
            .max(headroom(obs.current))
            .min(bounds.ceiling);
        return (want > high)
            .then(|| set(want, Direction::Up, Reason::MemoryEvents))
            .flatten();
    }
    // Pressure above target: raise in proportion to it, up to doubling.
    if pressure >= p.pressure_threshold {
        state.quiet_for = Duration::ZERO;
        let grow = (0.1 * pressure / p.pressure_threshold).clamp(0.1, 1.0);
        let want = ((high as f64 * (1.0 + grow)) as u64).min(bounds.ceiling);
        return (want > high)
            .then(|| set(want, Direction::Up, Reason::Pressure))
            .flatten();
    }
    // Memory that cannot be reclaimed is within the margin of the limit: make room (headroom
    // above it) before it stalls. The trigger is the same line the downward probe stops at
    // (unreclaimable + margin), so the two never chase each other.
    if let Some(stat) = &obs.stat
        && stat.unreclaimable().saturating_add(room) > high
    {
        let need = headroom(stat.unreclaimable())
            .max(stat.unreclaimable().saturating_add(room.saturating_mul(2)))
            .min(bounds.ceiling);
        if need > high {
            state.quiet_for = Duration::ZERO;
            let want = need
                .max(high.saturating_add(worth(high)))
                .min(bounds.ceiling);
            return set(want, Direction::Up, Reason::NearLimit);
        }
    }
    if high < bounds.floor {
        return set(bounds.floor, Direction::Up, Reason::Policy);
    }

    // Steady growth of what cannot be reclaimed (the leak shape): squeezing it only makes
    // it stall sooner. Reported by the caller; the way up above stays open.
    if obs.growing {
        state.quiet_for = Duration::ZERO;
        return None;
    }
    // Quiet: probe downward, at most one step per probe interval.
    if pressure < p.pressure_threshold / 2.0 {
        state.quiet_for += obs.elapsed;
    } else {
        state.quiet_for = Duration::ZERO;
    }
    state.since_probe += obs.elapsed;
    if state.quiet_for < p.scale_down_after || state.since_probe < p.probe_interval {
        return None;
    }
    let stat = obs.stat?;
    let floor = safe_floor(bounds, obs.current, &stat, p);
    match p.shrink_with {
        ShrinkWith::High => {
            let want = ((high as f64 * (1.0 - p.step_down)) as u64).max(floor);
            if high.saturating_sub(want) < worth(high) {
                return None;
            }
            state.since_probe = Duration::ZERO;
            set(want, Direction::Down, Reason::Idle)
        }
        ShrinkWith::Reclaim => {
            let want = ((obs.current as f64 * (1.0 - p.step_down)) as u64).max(floor);
            let bytes = obs.current.saturating_sub(want);
            if bytes < worth(obs.current) {
                return None;
            }
            state.since_probe = Duration::ZERO;
            Some(MemoryDecision {
                action: MemoryAction::Reclaim(bytes),
                direction: Direction::Down,
                reason: Reason::Idle,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    const MI: u64 = 1 << 20;
    const TICK: Duration = Duration::from_secs(1);

    fn policy() -> MemoryPolicy {
        Policy::default().memory
    }

    fn stat(anon: u64, file: u64) -> MemoryStat {
        MemoryStat {
            anon,
            file,
            ..MemoryStat::default()
        }
    }

    fn obs(current: u64, high: Option<u64>, stat_: Option<MemoryStat>) -> MemoryObservation {
        MemoryObservation {
            elapsed: TICK,
            current,
            high,
            pressure_some: Some(0.0),
            events: MemoryEventsDelta::default(),
            stat: stat_,
            growing: false,
        }
    }

    fn bounds() -> MemoryBounds {
        MemoryBounds::new(&policy(), Some(1024 * MI), None)
    }

    #[test]
    fn bounds_follow_the_container_limit() {
        let p = policy();
        assert_eq!(
            MemoryBounds::new(&p, Some(1024 * MI), None).ceiling,
            1024 * MI
        );
        assert_eq!(MemoryBounds::new(&p, None, None).ceiling, p.max_bytes);
        assert_eq!(MemoryBounds::new(&p, Some(MI), None).floor, MI);
        assert_eq!(
            MemoryBounds::new(&p, None, Some(300 * MI)).ceiling,
            300 * MI
        );
    }

    #[test]
    fn first_placement_is_peak_plus_headroom_after_settling() {
        // 100 MiB used under a 1 GiB limit: placed once settled, not in hundreds of 1% steps.
        let p = policy();
        let mut s = MemoryState::default();
        let settle = p.settle_after.as_secs() as usize;
        for t in 1..settle {
            let o = obs(100 * MI, None, None);
            assert_eq!(decide_memory(&mut s, &o, bounds(), &p), None, "tick {t}");
        }
        assert!(wants_stat(&s, TICK, 100 * MI, None, &p));
        let d = decide_memory(
            &mut s,
            &obs(100 * MI, None, Some(stat(80 * MI, 20 * MI))),
            bounds(),
            &p,
        )
        .unwrap();
        assert_eq!(d.reason, Reason::Placement);
        assert_eq!(d.direction, Direction::Down);
        let MemoryAction::SetHigh(h) = d.action else {
            panic!("{d:?}")
        };
        assert_eq!(h, (100.0 * MI as f64 * (1.0 + p.headroom)) as u64);
        assert!(settle <= 120, "within a couple of minutes");
    }

    #[test]
    fn placement_never_below_unreclaimable_plus_margin() {
        let p = policy();
        let mut s = MemoryState {
            watched_for: p.settle_after,
            peak: 10 * MI,
            ..Default::default()
        };
        assert!(!s.placed);
        let d = decide_memory(
            &mut s,
            &obs(10 * MI, None, Some(stat(60 * MI, 0))),
            bounds(),
            &p,
        )
        .unwrap();
        assert_eq!(d.action, MemoryAction::SetHigh(60 * MI + p.margin_bytes));
    }

    #[test]
    fn quiet_probes_step_down_one_step_per_probe_interval_to_the_floor() {
        let p = MemoryPolicy {
            step_down: 0.1,
            ..policy()
        };
        let mut s = MemoryState {
            watched_for: p.settle_after,
            placed: true,
            ..Default::default()
        };
        let mut high = 200 * MI;
        let mut writes = 0;
        // 20 MiB anon, the rest page cache that reclaim can drop.
        for _ in 0..400 {
            let current = high.min(150 * MI);
            let st = stat(20 * MI, current - 20 * MI);
            let need = wants_stat(&s, TICK, current, Some(high), &p);
            let o = obs(current, Some(high), need.then_some(st));
            if let Some(d) = decide_memory(&mut s, &o, bounds(), &p) {
                assert_eq!((d.direction, d.reason), (Direction::Down, Reason::Idle));
                let MemoryAction::SetHigh(h) = d.action else {
                    panic!()
                };
                assert!(h < high);
                high = h;
                writes += 1;
            }
        }
        assert_eq!(high, 20 * MI + p.margin_bytes, "stops at anon + margin");
        assert!(writes > 5);
    }

    /// Steady growth of anon (the leak shape, found by the growth watch): never squeezed,
    /// while the way up stays open.
    #[test]
    fn a_growing_proxy_is_not_probed_down_but_still_raised() {
        let p = policy();
        let mut s = MemoryState {
            watched_for: p.settle_after,
            placed: true,
            quiet_for: p.scale_down_after,
            since_probe: p.probe_interval,
            ..Default::default()
        };
        // Quiet for long, 100 MiB of cache to drop: a probe is due, but it is growing.
        let growing = |current, anon| MemoryObservation {
            growing: true,
            ..obs(current, Some(400 * MI), Some(stat(anon, current - anon)))
        };
        assert_eq!(
            decide_memory(&mut s, &growing(300 * MI, 200 * MI), bounds(), &p),
            None
        );
        // Without the growth the same sample probes down.
        let mut t = s.clone();
        t.quiet_for = p.scale_down_after;
        let plain = MemoryObservation {
            growing: false,
            ..growing(300 * MI, 200 * MI)
        };
        let d = decide_memory(&mut t, &plain, bounds(), &p).expect("a probe");
        assert_eq!((d.direction, d.reason), (Direction::Down, Reason::Idle));
        // Grown to within the margin of the limit: raised as any proxy is.
        let d = decide_memory(&mut s, &growing(395 * MI, 390 * MI), bounds(), &p).expect("raise");
        assert_eq!((d.direction, d.reason), (Direction::Up, Reason::NearLimit));
    }

    #[test]
    fn nothing_shrinks_before_scale_down_after() {
        let p = policy();
        let mut s = MemoryState {
            watched_for: p.settle_after,
            placed: true,
            ..Default::default()
        };
        let quiet = p.scale_down_after.as_secs() as usize;
        for _ in 0..quiet - 1 {
            let o = obs(50 * MI, Some(200 * MI), Some(stat(10 * MI, 40 * MI)));
            assert_eq!(decide_memory(&mut s, &o, bounds(), &p), None);
        }
    }

    #[test]
    fn pressure_raises_in_proportion_up_to_doubling() {
        let p = policy();
        let at = |pressure: f64| {
            let mut s = MemoryState {
                placed: true,
                ..Default::default()
            };
            let o = MemoryObservation {
                pressure_some: Some(pressure),
                ..obs(100 * MI, Some(100 * MI), None)
            };
            decide_memory(&mut s, &o, bounds(), &p).map(|d| (d.action, d.reason))
        };
        assert_eq!(at(0.0), None);
        let small = at(p.pressure_threshold).unwrap();
        assert_eq!(small.1, Reason::Pressure);
        assert_eq!(small.0, MemoryAction::SetHigh(110 * MI));
        assert_eq!(at(1.0).unwrap().0, MemoryAction::SetHigh(200 * MI));
    }

    #[test]
    fn memory_events_back_off_at_once() {
        let p = policy();
        for events in [
            MemoryEventsDelta {
                high: 3,
                ..Default::default()
            },
            MemoryEventsDelta {
                max: 1,
                ..Default::default()
            },
            MemoryEventsDelta {
                oom_kill: 1,
                ..Default::default()
            },
        ] {
            let mut s = MemoryState {
                placed: true,
                quiet_for: Duration::from_secs(999),
                ..Default::default()
            };
            let o = MemoryObservation {
                events,
                pressure_some: Some(0.001),
                ..obs(100 * MI, Some(100 * MI), None)
            };
            let d = decide_memory(&mut s, &o, bounds(), &p).unwrap();
            assert_eq!(
                (d.direction, d.reason),
                (Direction::Up, Reason::MemoryEvents)
            );
            assert_eq!(d.action, MemoryAction::SetHigh(150 * MI));
            assert_eq!(s.quiet_for, Duration::ZERO);
        }
    }

    #[test]
    fn high_events_without_stall_are_cache_reclaim_not_a_back_off() {
        let p = policy();
        let mut s = MemoryState {
            placed: true,
            ..Default::default()
        };
        let o = MemoryObservation {
            events: MemoryEventsDelta {
                high: 5,
                ..Default::default()
            },
            ..obs(100 * MI, Some(100 * MI), None)
        };
        assert_eq!(decide_memory(&mut s, &o, bounds(), &p), None);
        // Without PSI there is no telling: every increment backs off.
        let blind = MemoryObservation {
            pressure_some: None,
            ..o
        };
        let d = decide_memory(&mut s, &blind, bounds(), &p).unwrap();
        assert_eq!(d.reason, Reason::MemoryEvents);
    }

    #[test]
    fn probing_down_and_near_limit_do_not_chase_each_other() {
        // 200 MiB of anon, cache on top: probes stop at anon + margin and nothing raises it
        // again while anon stays put.
        let p = MemoryPolicy {
            step_down: 0.1,
            ..policy()
        };
        let mut s = MemoryState {
            placed: true,
            ..Default::default()
        };
        let mut high = 400 * MI;
        let mut ups = 0;
        for _ in 0..600 {
            let current = high.min(300 * MI);
            let st = stat(200 * MI, current - 200 * MI);
            let need = wants_stat(&s, TICK, current, Some(high), &p);
            let o = obs(current, Some(high), need.then_some(st));
            if let Some(d) = decide_memory(&mut s, &o, bounds(), &p) {
                if d.direction == Direction::Up {
                    ups += 1;
                }
                if let MemoryAction::SetHigh(h) = d.action {
                    high = h;
                }
            }
        }
        assert_eq!(ups, 0);
        assert_eq!(high, 200 * MI + p.margin_bytes);
    }

    #[test]
    fn fast_growth_is_met_earlier_than_the_margin() {
        // 40 MiB per tick (over twice the 16 MiB margin), already growing when the window
        // starts: the limit still stays ahead.
        let p = policy();
        let mut s = MemoryState {
            watched_for: p.settle_after,
            placed: true,
            last_current: 60 * MI,
            ..Default::default()
        };
        let mut high = 125 * MI;
        for t in 0..=10u64 {
            let anon = 100 * MI + t * 40 * MI;
            assert!(anon <= high, "tick {t}: anon {anon} over high {high}");
            let need = wants_stat(&s, TICK, anon, Some(high), &p);
            let o = obs(anon, Some(high), need.then_some(stat(anon, 0)));
            if let Some(MemoryDecision {
                action: MemoryAction::SetHigh(h),
                ..
            }) = decide_memory(&mut s, &o, bounds(), &p)
            {
                high = h;
            }
        }
    }

    #[test]
    fn growing_anon_gets_room_before_it_hits_the_limit() {
        // Anonymous memory grows 10 MiB per tick from 100 to 300 MiB; the limit must stay ahead.
        let p = policy();
        let mut s = MemoryState {
            watched_for: p.settle_after,
            placed: true,
            ..Default::default()
        };
        let mut high = 125 * MI;
        let mut over = 0;
        for t in 0..=20u64 {
            let anon = 100 * MI + t * 10 * MI;
            if anon > high {
                over += 1;
            }
            let current = anon.min(high);
            let need = wants_stat(&s, TICK, current, Some(high), &p);
            let o = obs(current, Some(high), need.then_some(stat(anon, 0)));
            if let Some(d) = decide_memory(&mut s, &o, bounds(), &p) {
                assert_eq!(d.direction, Direction::Up, "tick {t}: {d:?}");
                if let MemoryAction::SetHigh(h) = d.action {
                    high = h;
                }
            }
        }
        assert_eq!(over, 0, "anon never exceeded memory.high");
        assert!(high >= 300 * MI);
    }

    #[test]
    fn reclaim_mode_asks_for_bytes_and_keeps_the_ceiling() {
        let p = MemoryPolicy {
            shrink_with: ShrinkWith::Reclaim,
            step_down: 0.1,
            ..policy()
        };
        let mut s = MemoryState {
            watched_for: p.settle_after,
            placed: true,
            quiet_for: p.scale_down_after,
            since_probe: p.probe_interval,
            ..Default::default()
        };
        let o = obs(100 * MI, Some(200 * MI), Some(stat(10 * MI, 90 * MI)));
        let d = decide_memory(&mut s, &o, bounds(), &p).unwrap();
        assert_eq!(d.action, MemoryAction::Reclaim(100 * MI - 90 * MI));
        // Nothing left to reclaim: nothing asked.
        let mut s2 = MemoryState {
            quiet_for: p.scale_down_after,
            since_probe: p.probe_interval,
            ..s
        };
        let o = obs(20 * MI, Some(200 * MI), Some(stat(20 * MI, 0)));
        assert_eq!(decide_memory(&mut s2, &o, bounds(), &p), None);
    }

    #[test]
    fn stat_is_wanted_only_when_a_decision_needs_it() {
        let p = policy();
        let fresh = MemoryState::default();
        assert!(!wants_stat(&fresh, TICK, 10 * MI, None, &p));
        let almost = MemoryState {
            watched_for: p.settle_after - TICK,
            ..Default::default()
        };
        assert!(wants_stat(&almost, TICK, 10 * MI, None, &p));
        assert!(!wants_stat(&fresh, TICK, 10 * MI, None, &p));
        let settled = MemoryState {
            watched_for: p.settle_after,
            placed: true,
            ..Default::default()
        };
        assert!(!wants_stat(&settled, TICK, 10 * MI, Some(200 * MI), &p));
        assert!(wants_stat(&settled, TICK, 190 * MI, Some(200 * MI), &p));
        let due = MemoryState {
            quiet_for: p.scale_down_after,
            since_probe: p.probe_interval,
            ..settled
        };
        assert!(wants_stat(&due, TICK, 10 * MI, Some(200 * MI), &p));
    }
}
