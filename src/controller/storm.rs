//! Push-storm detection: when many proxies on the node want more CPU within the same few
//! ticks, it is an xDS config push hitting every sidecar at once, not a lasting need. The
//! loop then holds growth back for a grace period (burst absorbs the spike); proxies still
//! hot afterwards grow as usual, and a cool-down keeps the same hot proxies from being
//! mistaken for a new storm. [`hold_back`] applies it to one tick's plans; the agent's loop
//! and the simulator both call it. [`wake_in_grace`] and [`hold_wake`] apply it to a wake-up
//! between ticks (a stall trigger), before and after its proxy is stepped.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::policy::PushStormPolicy;

/// What this tick is, storm-wise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Storm {
    Calm,
    /// A storm was recognised this tick.
    Started,
    /// Within a storm's grace period.
    Ongoing,
}

/// Remembers which proxies wanted to grow recently.
#[derive(Debug, Default)]
pub(crate) struct StormDetector {
    wanted: HashMap<String, Instant>,
    /// Proxies whose growth was held back at the last tick.
    held: HashSet<String>,
    grace_until: Option<Instant>,
    cool_until: Option<Instant>,
}

impl StormDetector {
    /// Within a storm's grace period at `now`.
    fn in_grace(&self, now: Instant) -> bool {
        self.grace_until.is_some_and(|until| now < until)
    }

    /// `key`'s growth was held back between ticks (a wake-up): the next tick counts it as
    /// held at the last one, so a proxy throttled hard then goes through.
    fn held_between_ticks(&mut self, key: &str) {
        self.held.insert(key.to_string());
    }

    /// Records the proxies that want to grow at `now` (out of `governed`) and says whether
    /// the node is in a push storm.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        wanting: &[&str],
        governed: usize,
        p: &PushStormPolicy,
    ) -> Storm {
        if let Some(until) = self.grace_until {
            if now < until {
                return Storm::Ongoing;
            }
            self.grace_until = None;
            self.cool_until = Some(now + p.grace + p.window);
            self.wanted.clear();
        }
        for key in wanting {
            self.wanted.insert((*key).to_string(), now);
        }
        self.wanted
            .retain(|_, at| now.saturating_duration_since(*at) <= p.window);
        if self.cool_until.is_some_and(|c| now < c) {
            return Storm::Calm;
        }
        let needed = (p.min_proxies as usize).max((p.fraction * governed as f64).ceil() as usize);
        if !wanting.is_empty() && self.wanted.len() >= needed {
            self.grace_until = Some(now + p.grace);
            self.wanted.clear();
            return Storm::Started;
        }
        Storm::Calm
    }
}

/// What the push-storm rule needs to know of one proxy's plan.
pub(crate) trait StormCandidate {
    /// Grows the proxy for its load (what a storm holds back).
    fn wants_growth(&self) -> bool;
    /// Counts toward a storm (a proxy whose identity the runtime vouches for).
    fn counts(&self) -> bool;
    /// Throttled hard now: held back for one tick at most.
    fn urgent(&self) -> bool;
}

/// Observes one tick's plans (keyed by proxy) of a node with `verified` proxies that count,
/// and drops the growth a push storm holds back — except an urgent proxy's that was already
/// held last tick: nobody is throttled hard for longer than one tick by a storm. Returns
/// what this tick is, storm-wise.
pub(crate) fn hold_back<T: StormCandidate>(
    detector: &mut StormDetector,
    now: Instant,
    plans: &mut Vec<(String, T)>,
    verified: usize,
    p: &PushStormPolicy,
) -> Storm {
    let wanting: Vec<&str> = plans
        .iter()
        .filter(|(_, plan)| plan.wants_growth() && plan.counts())
        .map(|(k, _)| k.as_str())
        .collect();
    let storm = detector.observe(now, &wanting, verified, p);
    let held_before = std::mem::take(&mut detector.held);
    if storm != Storm::Calm {
        plans.retain(|(key, plan)| {
            let held = plan.wants_growth() && !(plan.urgent() && held_before.contains(key));
            if held {
                detector.held.insert(key.clone());
            }
            !held
        });
    }
    storm
}

/// Before a wake-up steps its proxy: in a storm's grace it is held back unstepped, and the
/// tick decides over its whole interval. A wake-up would take the sample and leave the tick
/// too short a span to show the throttling that lets a hard-throttled proxy through after one
/// tick (seen on the real kernel: a victim whose trigger fired every window was held at its
/// floor for the whole grace). The held wake-up counts as held at the last tick, so the
/// proxy, if throttled hard, grows at the next one. Returns whether it is held.
pub(crate) fn wake_in_grace(detector: &mut StormDetector, now: Instant, key: &str) -> bool {
    let held = detector.in_grace(now);
    if held {
        detector.held_between_ticks(key);
    }
    held
}

/// What a push storm does with a stepped wake-up's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WakeHold {
    /// The plan's growth is held back (the proxy counts as held at the next tick).
    pub held: bool,
    /// This wake-up completed a storm.
    pub started: bool,
}

/// After a wake-up stepped `key` into `plan`: the wake-up counts toward a storm as a tick's
/// plan does (out of `verified` proxies that count), and its growth is held while one lasts.
/// It observes rather than [`hold_back`]s: that keeps which proxies the last tick held (a
/// proxy throttled hard is held one tick at most), which a wake-up must not reset.
pub(crate) fn hold_wake<T: StormCandidate>(
    detector: &mut StormDetector,
    now: Instant,
    key: &str,
    plan: &T,
    verified: usize,
    p: &PushStormPolicy,
) -> WakeHold {
    let wanting: &[&str] = if plan.wants_growth() && plan.counts() {
        &[key]
    } else {
        &[]
    };
    let storm = detector.observe(now, wanting, verified, p);
    let held = storm != Storm::Calm && plan.wants_growth();
    if held {
        detector.held_between_ticks(key);
    }
    WakeHold {
        held,
        started: storm == Storm::Started,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use std::time::Duration;

    fn p() -> PushStormPolicy {
        Policy::default().cpu.push_storm
    }

    #[test]
    fn a_few_hot_proxies_are_no_storm() {
        let mut d = StormDetector::default();
        let t0 = Instant::now();
        assert_eq!(d.observe(t0, &["a", "b"], 10, &p()), Storm::Calm);
        assert_eq!(
            d.observe(t0 + Duration::from_secs(1), &["c"], 10, &p()),
            Storm::Calm
        );
    }

    #[test]
    fn most_of_the_node_within_the_window_is_a_storm_then_grace_then_cool_down() {
        let mut d = StormDetector::default();
        let t0 = Instant::now();
        let s = |n| Duration::from_secs(n);
        assert_eq!(d.observe(t0, &["a", "b", "c"], 10, &p()), Storm::Calm);
        assert_eq!(d.observe(t0 + s(1), &["d", "e"], 10, &p()), Storm::Started);
        assert_eq!(d.observe(t0 + s(2), &["a"], 10, &p()), Storm::Ongoing);
        assert_eq!(d.observe(t0 + s(10), &["a"], 10, &p()), Storm::Ongoing);
        // After the grace period proxies still hot may grow: no new storm right away.
        let all = ["a", "b", "c", "d", "e", "f"];
        assert_eq!(d.observe(t0 + s(12), &all, 10, &p()), Storm::Calm);
        assert_eq!(d.observe(t0 + s(13), &all, 10, &p()), Storm::Calm);
        // Much later, a new push is a new storm.
        assert_eq!(d.observe(t0 + s(60), &all, 10, &p()), Storm::Started);
    }

    #[test]
    fn old_wants_fall_out_of_the_window() {
        let mut d = StormDetector::default();
        let t0 = Instant::now();
        assert_eq!(d.observe(t0, &["a", "b", "c", "d"], 10, &p()), Storm::Calm);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(d.observe(later, &["e", "f"], 10, &p()), Storm::Calm);
    }

    #[test]
    fn small_nodes_need_min_proxies() {
        let mut d = StormDetector::default();
        let t0 = Instant::now();
        // Two of two proxies is 100% of the node but fewer than minProxies (3).
        assert_eq!(d.observe(t0, &["a", "b"], 2, &p()), Storm::Calm);
    }
}

#[cfg(test)]
mod hold_back_tests {
    use super::*;
    use crate::policy::Policy;
    use std::time::Duration;

    #[derive(Debug, Clone, Copy)]
    struct Plan {
        grow: bool,
        counts: bool,
        urgent: bool,
    }

    impl StormCandidate for Plan {
        fn wants_growth(&self) -> bool {
            self.grow
        }
        fn counts(&self) -> bool {
            self.counts
        }
        fn urgent(&self) -> bool {
            self.urgent
        }
    }

    fn plans(n: usize, plan: Plan, prefix: &str) -> Vec<(String, Plan)> {
        (0..n).map(|i| (format!("{prefix}{i}"), plan)).collect()
    }

    const SPIKE: Plan = Plan {
        grow: true,
        counts: true,
        urgent: false,
    };

    #[test]
    fn processes_without_a_runtime_identity_make_no_storm() {
        let p = Policy::default().cpu.push_storm;
        let mut d = StormDetector::default();
        let by_name = Plan {
            counts: false,
            ..SPIKE
        };
        let mut tick = plans(3, by_name, "app");
        let victim = Plan {
            urgent: true,
            ..SPIKE
        };
        tick.push(("victim".into(), victim));
        // Three processes named envoy and one real sidecar out of four verified sidecars.
        assert_eq!(
            hold_back(&mut d, Instant::now(), &mut tick, 4, &p),
            Storm::Calm
        );
        assert!(tick.iter().any(|(k, _)| k == "victim"), "the victim grows");
    }

    #[test]
    fn a_hard_throttled_proxy_is_held_one_tick_at_most() {
        let p = Policy::default().cpu.push_storm;
        let mut d = StormDetector::default();
        let t0 = Instant::now();
        let urgent = Plan {
            urgent: true,
            ..SPIKE
        };
        let mut tick = plans(5, SPIKE, "p");
        tick.push(("victim".into(), urgent));
        assert_eq!(hold_back(&mut d, t0, &mut tick, 6, &p), Storm::Started);
        assert!(tick.is_empty(), "all growth held at the storm's first tick");
        // Next tick, still in the grace period: the hard-throttled one grows, the rest wait.
        let mut tick = plans(5, SPIKE, "p");
        tick.push(("victim".into(), urgent));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(hold_back(&mut d, t1, &mut tick, 6, &p), Storm::Ongoing);
        let keys: Vec<&str> = tick.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["victim"]);
        // Shrinks and policy moves are never held.
        let mut tick = vec![(
            "p0".to_string(),
            Plan {
                grow: false,
                ..SPIKE
            },
        )];
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(hold_back(&mut d, t2, &mut tick, 6, &p), Storm::Ongoing);
        assert_eq!(tick.len(), 1);
    }

    #[test]
    fn a_wake_up_completing_a_storm_is_held_and_counts_as_held_at_the_next_tick() {
        let p = Policy::default().cpu.push_storm;
        let mut d = StormDetector::default();
        let t0 = Instant::now();
        let mut tick = plans(2, SPIKE, "p");
        assert_eq!(hold_back(&mut d, t0, &mut tick, 6, &p), Storm::Calm);
        assert_eq!(tick.len(), 2, "two of six are no storm: they grow");
        // A third proxy's trigger fires between ticks: with it, half the node wants more.
        let urgent = Plan {
            urgent: true,
            ..SPIKE
        };
        let t = t0 + Duration::from_millis(300);
        let hold = hold_wake(&mut d, t, "victim", &urgent, 6, &p);
        assert_eq!(
            hold,
            WakeHold {
                held: true,
                started: true
            }
        );
        // Its later wake-ups in the grace are held unstepped.
        assert!(wake_in_grace(
            &mut d,
            t + Duration::from_millis(200),
            "victim"
        ));
        // The next tick, still in the grace: held once already, the urgent one goes through.
        let mut tick = plans(2, SPIKE, "p");
        tick.push(("victim".into(), urgent));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(hold_back(&mut d, t1, &mut tick, 6, &p), Storm::Ongoing);
        let keys: Vec<&str> = tick.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["victim"]);
    }

    #[test]
    fn a_wake_up_does_not_reset_what_the_last_tick_held() {
        let p = Policy::default().cpu.push_storm;
        let mut d = StormDetector::default();
        let t0 = Instant::now();
        let urgent = Plan {
            urgent: true,
            ..SPIKE
        };
        let mut tick = plans(5, SPIKE, "p");
        tick.push(("victim".into(), urgent));
        assert_eq!(hold_back(&mut d, t0, &mut tick, 6, &p), Storm::Started);
        // Another proxy's wake-up between the ticks, stepped into a plan that does not grow
        // (no storm rule applies to it), then one into growth: held, in the storm.
        let t = t0 + Duration::from_millis(500);
        let quiet = Plan {
            grow: false,
            ..SPIKE
        };
        let hold = hold_wake(&mut d, t, "p0", &quiet, 6, &p);
        assert!(!hold.held && !hold.started);
        assert!(hold_wake(&mut d, t, "p1", &SPIKE, 6, &p).held);
        // The victim was held by the last tick: it still goes through at the next one.
        let mut tick = vec![("victim".to_string(), urgent)];
        assert_eq!(
            hold_back(&mut d, t0 + Duration::from_secs(1), &mut tick, 6, &p),
            Storm::Ongoing
        );
        assert_eq!(tick.len(), 1);
    }

    #[test]
    fn out_of_a_storm_a_wake_up_is_neither_held_in_grace_nor_held() {
        let p = Policy::default().cpu.push_storm;
        let mut d = StormDetector::default();
        let t0 = Instant::now();
        assert!(!wake_in_grace(&mut d, t0, "a"));
        let hold = hold_wake(&mut d, t0, "a", &SPIKE, 6, &p);
        assert_eq!(
            hold,
            WakeHold {
                held: false,
                started: false
            }
        );
        // A process without a runtime identity never completes a storm by waking.
        let by_name = Plan {
            counts: false,
            ..SPIKE
        };
        for k in ["b", "c", "d", "e"] {
            assert!(!hold_wake(&mut d, t0, k, &by_name, 6, &p).held);
        }
    }
}
