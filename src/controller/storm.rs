//! Push-storm detection: when many proxies on the node want more CPU within the same few
//! ticks, it is an xDS config push hitting every sidecar at once, not a lasting need. The
//! loop then holds growth back for a grace period (burst absorbs the spike); proxies still
//! hot afterwards grow as usual, and a cool-down keeps the same hot proxies from being
//! mistaken for a new storm. [`hold_back`] applies it to one tick's plans; the agent's loop
//! and the simulator both call it.

use std::collections::HashMap;
use std::time::Instant;

use crate::policy::PushStormPolicy;

/// What this tick is, storm-wise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storm {
    Calm,
    /// A storm was recognised this tick.
    Started,
    /// Within a storm's grace period.
    Ongoing,
}

/// Remembers which proxies wanted to grow recently.
#[derive(Debug, Default)]
pub struct StormDetector {
    wanted: HashMap<String, Instant>,
    grace_until: Option<Instant>,
    cool_until: Option<Instant>,
}

impl StormDetector {
    /// Records the proxies that want to grow at `now` (out of `governed`) and says whether
    /// the node is in a push storm.
    pub fn observe(
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

/// Observes one tick's plans of `governed` proxies (keyed) of which `wants_growth` tells
/// those growing for their load, and drops that growth while a push storm holds it back.
/// Returns what this tick is, storm-wise.
pub fn hold_back<T>(
    detector: &mut StormDetector,
    now: Instant,
    plans: &mut Vec<(String, T)>,
    wants_growth: impl Fn(&T) -> bool,
    governed: usize,
    p: &PushStormPolicy,
) -> Storm {
    let wanting: Vec<&str> = plans
        .iter()
        .filter(|(_, plan)| wants_growth(plan))
        .map(|(k, _)| k.as_str())
        .collect();
    let storm = detector.observe(now, &wanting, governed, p);
    if storm != Storm::Calm {
        plans.retain(|(_, plan)| !wants_growth(plan));
    }
    storm
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
