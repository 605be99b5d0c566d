//! What a simulation found, per proxy and in total, and its two renderings: a plain-text table
//! and JSON (the serde form of [`Report`]). Figures add up over stretches of the run; the
//! ratios (savings, shares) are derived once at the end by [`Report::finish`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::kernel::Exposure;
use crate::controller::{Direction, Reason};

const GIB: f64 = (1u64 << 30) as f64;

/// Limit changes of one resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Actions {
    pub up: u64,
    pub down: u64,
    /// By the controller's reason label (`throttled`, `idle`, `placement`, ...).
    pub by_reason: BTreeMap<&'static str, u64>,
}

impl Actions {
    pub fn record(&mut self, direction: Direction, reason: Reason) {
        match direction {
            Direction::Up => self.up += 1,
            Direction::Down | Direction::Restore => self.down += 1,
        }
        *self.by_reason.entry(reason.as_str()).or_default() += 1;
    }

    fn add(&mut self, other: &Actions) {
        self.up += other.up;
        self.down += other.down;
        for (reason, n) in &other.by_reason {
            *self.by_reason.entry(reason).or_default() += n;
        }
    }
}

/// CPU figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuFigures {
    /// Quota in force integrated over time, in core-seconds.
    pub reserved_core_seconds: f64,
    /// The static original limit over the same time.
    pub original_core_seconds: f64,
    /// `1 - reserved / original`, in percent.
    pub saving_percent: f64,
    /// What the trace asked for, what the quota let through and what it held back.
    pub demand_core_seconds: f64,
    pub used_core_seconds: f64,
    pub throttled_core_seconds: f64,
    /// Ticks in which demand exceeded the quota at some point.
    pub ticks_over_quota: u64,
    /// `ticks_over_quota / ticks`, in percent.
    pub over_quota_percent: f64,
    pub actions: Actions,
}

/// Memory figures. "The limit" is `memory.high`, or `memory.max` while `memory.high` is `max`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemoryFigures {
    /// The limit in force integrated over time, in GiB-seconds.
    pub reserved_gib_seconds: f64,
    /// The static original limit (`memory.max`) over the same time.
    pub original_gib_seconds: f64,
    pub saving_percent: f64,
    /// Time with demand above the limit (cache evicted or tasks throttled).
    pub over_high_seconds: f64,
    /// Demand above the limit integrated over time.
    pub over_high_gib_seconds: f64,
    /// Time with unreclaimable memory alone above the limit: tasks throttled.
    pub unreclaimable_over_high_seconds: f64,
    /// Modeled `memory.pressure` `some` total: seconds some task stalled on memory.
    pub stall_seconds: f64,
    /// Ticks in which demand exceeded the limit at some point.
    pub ticks_over_high: u64,
    /// `memory.events` increments.
    pub high_events: u64,
    pub max_events: u64,
    pub oom_kills: u64,
    /// Bytes freed through `memory.reclaim` (`shrinkWith: reclaim`).
    pub reclaimed_bytes: u64,
    pub actions: Actions,
}

/// One proxy's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyReport {
    pub proxy: String,
    /// False when its namespace's mode is `off`: left at its originals.
    pub governed: bool,
    /// From its first row to the end of the trace.
    pub seconds: f64,
    /// Intervals between samples (each tick closes one).
    pub ticks: u64,
    pub cpu_limit_millis: u64,
    pub memory_limit_bytes: u64,
    /// The limits in force at the end.
    pub final_cpu_millis: Option<u64>,
    pub final_memory_high_bytes: Option<u64>,
    pub cpu: CpuFigures,
    pub memory: MemoryFigures,
}

impl ProxyReport {
    pub fn new(
        proxy: &str,
        cpu_limit_millis: u64,
        memory_limit_bytes: u64,
        governed: bool,
    ) -> ProxyReport {
        ProxyReport {
            proxy: proxy.to_string(),
            governed,
            seconds: 0.0,
            ticks: 0,
            cpu_limit_millis,
            memory_limit_bytes,
            final_cpu_millis: None,
            final_memory_high_bytes: None,
            cpu: CpuFigures::default(),
            memory: MemoryFigures::default(),
        }
    }

    /// Adds one stretch of constant demand (`demand_millis` wanted) to the figures.
    pub fn add(&mut self, e: &Exposure, demand_millis: f64) {
        let s = e.seconds;
        self.seconds += s;
        let c = &mut self.cpu;
        let quota = e.quota_millis.unwrap_or(self.cpu_limit_millis);
        c.reserved_core_seconds += quota as f64 / 1000.0 * s;
        c.original_core_seconds += self.cpu_limit_millis as f64 / 1000.0 * s;
        c.demand_core_seconds += demand_millis / 1000.0 * s;
        c.used_core_seconds += e.used_core_seconds;
        c.throttled_core_seconds += e.throttled_core_seconds;
        let m = &mut self.memory;
        m.reserved_gib_seconds += e.memory_limit_bytes as f64 / GIB * s;
        m.original_gib_seconds += self.memory_limit_bytes as f64 / GIB * s;
        if e.over_limit {
            m.over_high_seconds += s;
            m.over_high_gib_seconds += e.over_limit_bytes as f64 / GIB * s;
        }
        if e.unreclaimable_over_limit {
            m.unreclaimable_over_high_seconds += s;
        }
        m.stall_seconds += e.memory_stall_share * s;
    }

    /// Closes one tick's interval.
    pub fn close_tick(&mut self, over_quota: bool, over_high: bool) {
        self.ticks += 1;
        self.cpu.ticks_over_quota += u64::from(over_quota);
        self.memory.ticks_over_high += u64::from(over_high);
    }
}

/// Everything added up.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub proxies: usize,
    /// Proxy-seconds.
    pub seconds: f64,
    pub ticks: u64,
    pub cpu: CpuFigures,
    pub memory: MemoryFigures,
}

/// A simulation's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub policy: String,
    pub trace: String,
    pub interval_seconds: f64,
    /// The trace's end.
    pub duration_seconds: f64,
    /// Whether `memory.high` was governed (`memory.enabled`).
    pub memory_governed: bool,
    /// Push storms recognised (ticks where growth of many proxies at once was held back).
    pub push_storms: u64,
    pub proxies: Vec<ProxyReport>,
    pub total: Totals,
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

fn saving(reserved: f64, original: f64) -> f64 {
    if original > 0.0 {
        100.0 * (1.0 - reserved / original)
    } else {
        0.0
    }
}

impl CpuFigures {
    fn add(&mut self, o: &CpuFigures) {
        self.reserved_core_seconds += o.reserved_core_seconds;
        self.original_core_seconds += o.original_core_seconds;
        self.demand_core_seconds += o.demand_core_seconds;
        self.used_core_seconds += o.used_core_seconds;
        self.throttled_core_seconds += o.throttled_core_seconds;
        self.ticks_over_quota += o.ticks_over_quota;
        self.actions.add(&o.actions);
    }

    fn finish(&mut self, ticks: u64) {
        self.saving_percent = saving(self.reserved_core_seconds, self.original_core_seconds);
        self.over_quota_percent = percent(self.ticks_over_quota as f64, ticks as f64);
    }
}

impl MemoryFigures {
    fn add(&mut self, o: &MemoryFigures) {
        self.reserved_gib_seconds += o.reserved_gib_seconds;
        self.original_gib_seconds += o.original_gib_seconds;
        self.over_high_seconds += o.over_high_seconds;
        self.over_high_gib_seconds += o.over_high_gib_seconds;
        self.unreclaimable_over_high_seconds += o.unreclaimable_over_high_seconds;
        self.stall_seconds += o.stall_seconds;
        self.ticks_over_high += o.ticks_over_high;
        self.high_events += o.high_events;
        self.max_events += o.max_events;
        self.oom_kills += o.oom_kills;
        self.reclaimed_bytes += o.reclaimed_bytes;
        self.actions.add(&o.actions);
    }

    fn finish(&mut self) {
        self.saving_percent = saving(self.reserved_gib_seconds, self.original_gib_seconds);
    }
}

impl Report {
    /// Derives the ratios and the totals from the per-proxy sums.
    pub fn finish(&mut self) {
        let mut total = Totals {
            proxies: self.proxies.len(),
            ..Totals::default()
        };
        for p in &mut self.proxies {
            p.cpu.finish(p.ticks);
            p.memory.finish();
            total.seconds += p.seconds;
            total.ticks += p.ticks;
            total.cpu.add(&p.cpu);
            total.memory.add(&p.memory);
        }
        total.cpu.finish(total.ticks);
        total.memory.finish();
        self.total = total;
    }

    /// The plain-text table: one line per proxy and a total.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "policy {} · trace {} · {} proxies · {:.0} s at {} s ticks{}{}",
            self.policy,
            self.trace,
            self.proxies.len(),
            self.duration_seconds,
            self.interval_seconds,
            if self.memory_governed {
                ""
            } else {
                " · memory not governed"
            },
            match self.push_storms {
                0 => String::new(),
                n => format!(" · {n} push storm(s): growth held back"),
            }
        );
        let _ = writeln!(
            out,
            "{:<24} {:>22} {:>7} {:>10} {:>13} {:>7} │ {:>22} {:>7} {:>9} {:>8} {:>7} {:>7}",
            "PROXY",
            "CPU core-s (original)",
            "SAVED",
            "THROTTLED",
            "OVER QUOTA",
            "UP/DN",
            "MEM GiB-s (original)",
            "SAVED",
            "OVER HIGH",
            "STALL",
            "HIGH EV",
            "UP/DN"
        );
        let row = |out: &mut String, name: &str, ticks: u64, c: &CpuFigures, m: &MemoryFigures| {
            let _ = writeln!(
                out,
                "{:<24} {:>22} {:>6.1}% {:>9.1}s {:>13} {:>7} │ {:>22} {:>6.1}% {:>8.0}s {:>7.1}s {:>7} {:>7}",
                truncate(name, 24),
                format!(
                    "{:.0} ({:.0})",
                    c.reserved_core_seconds, c.original_core_seconds
                ),
                c.saving_percent,
                c.throttled_core_seconds,
                format!(
                    "{}/{} {:.1}%",
                    c.ticks_over_quota, ticks, c.over_quota_percent
                ),
                format!("{}/{}", c.actions.up, c.actions.down),
                format!(
                    "{:.1} ({:.1})",
                    m.reserved_gib_seconds, m.original_gib_seconds
                ),
                m.saving_percent,
                m.over_high_seconds,
                m.stall_seconds,
                m.high_events,
                format!("{}/{}", m.actions.up, m.actions.down),
            );
        };
        for p in &self.proxies {
            let name = if p.governed {
                p.proxy.clone()
            } else {
                format!("{} (off)", p.proxy)
            };
            row(&mut out, &name, p.ticks, &p.cpu, &p.memory);
        }
        let t = &self.total;
        row(&mut out, "TOTAL", t.ticks, &t.cpu, &t.memory);
        out
    }
}

fn truncate(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        name.to_string()
    } else {
        let head: String = name.chars().take(width - 1).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposure(seconds: f64, quota: u64, limit: u64) -> Exposure {
        Exposure {
            seconds,
            quota_millis: Some(quota),
            memory_limit_bytes: limit,
            ..Exposure::default()
        }
    }

    #[test]
    fn savings_and_shares_add_up_over_proxies() {
        let mut a = ProxyReport::new("a", 2000, 1 << 30, true);
        // 10 s at 500m of 2000m and 256 MiB of 1 GiB.
        a.add(&exposure(10.0, 500, 256 << 20), 100.0);
        for t in 0..10 {
            a.close_tick(t == 0, false);
        }
        a.cpu.actions.record(Direction::Down, Reason::Idle);
        let mut b = ProxyReport::new("b", 1000, 1 << 30, true);
        b.add(&exposure(10.0, 1000, 1 << 30), 100.0);
        for _ in 0..10 {
            b.close_tick(false, false);
        }
        b.cpu.actions.record(Direction::Up, Reason::Throttled);
        let mut r = Report {
            policy: "p".into(),
            trace: "t".into(),
            interval_seconds: 1.0,
            duration_seconds: 10.0,
            memory_governed: true,
            push_storms: 0,
            proxies: vec![a, b],
            total: Totals::default(),
        };
        r.finish();
        let a = &r.proxies[0];
        assert_eq!(a.cpu.reserved_core_seconds, 5.0);
        assert_eq!(a.cpu.original_core_seconds, 20.0);
        assert_eq!(a.cpu.saving_percent, 75.0);
        assert_eq!(a.cpu.over_quota_percent, 10.0);
        assert_eq!(a.memory.saving_percent, 75.0);
        let t = &r.total;
        assert_eq!(t.proxies, 2);
        assert_eq!(t.cpu.reserved_core_seconds, 15.0);
        assert_eq!(t.cpu.original_core_seconds, 30.0);
        assert_eq!(t.cpu.saving_percent, 50.0);
        assert_eq!(t.cpu.over_quota_percent, 5.0);
        assert_eq!((t.cpu.actions.up, t.cpu.actions.down), (1, 1));
        assert_eq!(t.cpu.actions.by_reason.get("idle"), Some(&1));
        assert_eq!(t.memory.saving_percent, 37.5);
        let table = r.render_table();
        assert!(table.contains("TOTAL"), "{table}");
        assert!(table.lines().nth(2).unwrap().starts_with("a "), "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["total"]["cpu"]["saving_percent"], 50.0);
        assert_eq!(
            json["proxies"][1]["cpu"]["actions"]["by_reason"]["throttled"],
            1
        );
    }

    #[test]
    fn empty_runs_have_no_nan() {
        let mut r = Report {
            policy: "p".into(),
            trace: "t".into(),
            interval_seconds: 1.0,
            duration_seconds: 0.0,
            memory_governed: true,
            push_storms: 0,
            proxies: vec![ProxyReport::new("a", 100, 100, true)],
            total: Totals::default(),
        };
        r.finish();
        assert_eq!(r.total.cpu.saving_percent, 0.0);
        assert_eq!(r.total.cpu.over_quota_percent, 0.0);
        assert!(serde_json::to_string(&r).is_ok());
    }
}
