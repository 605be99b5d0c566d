//! Steady growth of the memory a proxy cannot give back: the known Envoy / pilot-agent leak
//! shape (issue 11). Squeezing such a proxy (probing `memory.high` down toward its
//! unreclaimable memory) only makes it stall sooner; what helps is telling its owner. The
//! watch samples the unreclaimable bytes (`memory.stat`: anon + kernel + sock + shmem)
//! [`SAMPLES`] times a `window` and calls the growth steady when, over a whole `window`, it grew by at least
//! `minGrowth`, in most of the steps, and still in the window's second half. It ends when the
//! growth over the window falls below half of `minGrowth`. Pure: the caller feeds it samples
//! and acts on the changes.

use std::collections::VecDeque;
use std::time::Duration;

use crate::policy::GrowthPolicy;

/// One sample: time since the watch began and the unreclaimable bytes then.
type Sample = (Duration, u64);

/// Samples a window (the sampling interval is the window over this; at most one a tick).
pub(crate) const SAMPLES: u32 = 30;

/// Growth within this much of the previous sample counts as holding, not falling (the
/// kernel's per-cpu counters flush in batches).
const NOISE_BYTES: u64 = 1 << 20;

/// Per-proxy state of the growth watch.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct GrowthWatch {
    samples: VecDeque<Sample>,
    /// Time watched.
    age: Duration,
    /// Time since the last sample (one is due every `window` / [`SAMPLES`]).
    since_sample: Duration,
    /// Steady growth is reported (until it ends).
    pub growing: bool,
}

/// What a sample changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum GrowthChange {
    /// Steady growth found: `grew` bytes over `over`, to `now` bytes.
    Started { grew: u64, over: Duration, now: u64 },
    /// The growth stopped (or slowed below half of `minGrowth` over the window).
    Ended { now: u64 },
}

impl GrowthChange {
    /// Growth in bytes an hour.
    pub(crate) fn per_hour(grew: u64, over: Duration) -> u64 {
        let secs = over.as_secs_f64();
        if secs <= 0.0 {
            return 0;
        }
        (grew as f64 * 3600.0 / secs) as u64
    }
}

impl GrowthWatch {
    /// Advances the watch's clock by `elapsed`; true when a sample is due (the caller then
    /// reads `memory.stat` and calls [`GrowthWatch::observe`]).
    pub(crate) fn tick(&mut self, elapsed: Duration, p: &GrowthPolicy) -> bool {
        if !p.enabled {
            return false;
        }
        self.age += elapsed;
        self.since_sample += elapsed;
        self.samples.is_empty() || self.since_sample >= p.window / SAMPLES
    }

    /// Takes a sample of the unreclaimable bytes (at the current age) and says what changed.
    pub(crate) fn observe(&mut self, unreclaimable: u64, p: &GrowthPolicy) -> Option<GrowthChange> {
        self.since_sample = Duration::ZERO;
        self.samples.push_back((self.age, unreclaimable));
        // Keep one sample at or before the window's start: the span is then the whole window.
        while self.samples.len() > 2 && self.age.saturating_sub(self.samples[1].0) >= p.window {
            self.samples.pop_front();
        }
        let (t0, first) = *self.samples.front()?;
        let span = self.age.saturating_sub(t0);
        let grew = unreclaimable.saturating_sub(first);
        if self.growing {
            let ended = grew < p.min_growth_bytes / 2;
            self.growing = !ended;
            return ended.then_some(GrowthChange::Ended { now: unreclaimable });
        }
        if span < p.window || grew < p.min_growth_bytes || !self.steady(p) {
            return None;
        }
        self.growing = true;
        Some(GrowthChange::Started {
            grew,
            over: span,
            now: unreclaimable,
        })
    }

    /// Most steps grew or held, and the second half of the window grew too (not a plateau
    /// after one step up).
    fn steady(&self, p: &GrowthPolicy) -> bool {
        let steps = self.samples.len().saturating_sub(1);
        if steps < 4 {
            return false;
        }
        let held = self
            .samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .filter(|((_, a), (_, b))| b.saturating_add(NOISE_BYTES) >= *a)
            .count();
        let (t_last, last) = *self.samples.back().expect("samples");
        let (t0, _) = *self.samples.front().expect("samples");
        let mid = t0 + (t_last - t0) / 2;
        let at_mid = self
            .samples
            .iter()
            .find(|(t, _)| *t >= mid)
            .map_or(last, |(_, v)| *v);
        held as f64 >= p.steady * steps as f64
            && last.saturating_sub(at_mid) >= p.min_growth_bytes / 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;
    const MINUTE: Duration = Duration::from_secs(60);

    fn policy() -> GrowthPolicy {
        crate::policy::Policy::default().memory.growth
    }

    /// Feeds one value a sample (ticks of 1 s between, a sample a minute); returns the
    /// changes with the index of the sample they came at.
    fn run(values: &[u64]) -> Vec<(usize, GrowthChange)> {
        let p = policy();
        let mut w = GrowthWatch::default();
        let mut out = Vec::new();
        let mut values = values.iter().enumerate();
        let mut next = values.next();
        while let Some((i, v)) = next {
            if w.tick(Duration::from_secs(1), &p) {
                out.extend(w.observe(*v, &p).map(|c| (i, c)));
                next = values.next();
            }
        }
        out
    }

    #[test]
    fn the_defaults_are_half_an_hour_sampled_every_minute_and_32_mebibytes() {
        let p = policy();
        assert!(p.enabled);
        assert_eq!((p.window, p.min_growth_bytes), (30 * MINUTE, 32 * MI));
        assert_eq!(p.window / SAMPLES, MINUTE);
    }

    #[test]
    fn steady_growth_over_the_window_is_reported_once() {
        // 2 MiB a minute from 100 MiB: 60 MiB over 30 minutes.
        let values: Vec<u64> = (0..45).map(|m| 100 * MI + m * 2 * MI).collect();
        let changes = run(&values);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (at, GrowthChange::Started { grew, over, now }) = changes[0] else {
            panic!("{changes:?}");
        };
        assert_eq!(at, 30, "a whole window of samples first");
        assert_eq!((grew, now), (60 * MI, 160 * MI));
        assert_eq!(over, 30 * MINUTE);
        assert_eq!(GrowthChange::per_hour(grew, over), 120 * MI);
    }

    #[test]
    fn flat_sawtooth_and_one_step_up_are_not_growth() {
        let flat = vec![200 * MI; 60];
        assert!(run(&flat).is_empty());
        // Connection churn: up 20 MiB, back down, again and again.
        let saw: Vec<u64> = (0..60).map(|m| 200 * MI + (m % 4) * 10 * MI).collect();
        assert!(run(&saw).is_empty(), "{:?}", run(&saw));
        // One config push: +64 MiB at minute 3, flat since.
        let step: Vec<u64> = (0..60)
            .map(|m| if m < 3 { 100 * MI } else { 164 * MI })
            .collect();
        assert!(run(&step).is_empty(), "{:?}", run(&step));
        // Growing, but under minGrowth over the window (20 MiB in 30 min).
        let slow: Vec<u64> = (0..60).map(|m| 100 * MI + m * MI * 2 / 3).collect();
        assert!(run(&slow).is_empty());
    }

    #[test]
    fn growth_that_stops_ends_after_the_window_slows() {
        // 40 minutes of 2 MiB a minute, then flat.
        let values: Vec<u64> = (0..100).map(|m| 100 * MI + m.min(40) * 2 * MI).collect();
        let changes = run(&values);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(changes[0].1, GrowthChange::Started { .. }));
        let (at, GrowthChange::Ended { now }) = changes[1] else {
            panic!("{changes:?}");
        };
        assert_eq!(now, 180 * MI);
        // Ended once the window holds less than 16 MiB of growth: 7 minutes of it left.
        assert_eq!(at, 63);
    }

    #[test]
    fn a_disabled_watch_asks_for_nothing() {
        let p = GrowthPolicy {
            enabled: false,
            ..policy()
        };
        let mut w = GrowthWatch::default();
        assert!(!w.tick(MINUTE, &p));
    }
}
