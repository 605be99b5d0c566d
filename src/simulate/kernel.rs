//! A model of what the kernel does to one container cgroup under a demand, for the simulator:
//! CFS bandwidth control under `cpu.max` and the `memory.high`/`memory.max` limits. It keeps the
//! cumulative counters the agent reads (`cpu.stat`, `cpu.pressure`, `memory.current`,
//! `memory.events`, `memory.pressure`, `memory.stat`) so the simulator builds observations from
//! them exactly as the agent does from the files. Pure arithmetic; no I/O, no clock.
//!
//! # CPU
//!
//! With demand `d` and quota `q` (millicores) over a stretch of `dt`: the proxy uses
//! `min(d, q)`; the rest, `max(d - q, 0)`, is held back and counted as throttled time
//! (`throttled_usec`, in CPU time: the agent reads it as "runnable work the quota held back").
//! Held-back work is dropped, not carried over. Every 100 ms period with demand counts in
//! `nr_periods`, and in `nr_throttled` while `d > q`. `cpu.pressure` `some` grows by the held-back
//! share of the demand, `(d - q) / d`, of the wall time.
//!
//! # Memory
//!
//! Demand `m` bytes, of which `u` cannot be reclaimed (no swap); the limit in force is
//! `l = min(memory.high, memory.max)`:
//! - `m <= l`: `memory.current = m`, no stall.
//! - `m > l`: the kernel reclaims the page cache that does not fit, so `memory.current =
//!   max(l, u)` (at most `memory.max`). Stall (`memory.pressure` `some`, as a share of wall time)
//!   is `min(1, 60·ou² + 6·oc²)`, with `ou = (u - l)/l` the unreclaimable overage (tasks
//!   throttled: the kernel's high-throttle penalty grows with the square of the overage, about
//!   6 ms per charge batch at 1% over and its 2 s cap near 18% over — read as the share of time a
//!   task allocating steadily sleeps) and `oc` the page cache that does not fit, over `l`
//!   (evicting cache the workload still uses costs refaults, taken as a tenth of that).
//! - `memory.events`: `high` goes up by one for each tick in which demand exceeded
//!   `memory.high` (the kernel counts each reclaim pass, many per second: this is a lower bound;
//!   the controller only tests for an increase), `max` for each tick in which it exceeded
//!   `memory.max`, `oom` and `oom_kill` for each tick in which unreclaimable memory did.
//! - `memory.stat`: `anon` = the unreclaimable part of `memory.current`, `file` = the rest.
//! - `memory.reclaim` frees page cache at once, but the workload's next touch brings it back:
//!   the trace says what it holds, so the model counts the bytes and forgets them the next
//!   stretch.
//! - Writes read back like the kernel's: `cpu.max` via [`CpuMax::with_millis`], `memory.high`
//!   rounded down to whole pages.
//!
//! [`ModelIo`] is the model as the per-proxy core's I/O seam ([`crate::proxy::ProxyIo`]).

use std::time::{Duration, Instant};

use crate::cgroup::{CgroupError, CpuMax, CpuStat, MemoryEvents, MemoryStat, Pressure};
use crate::proxy::ProxyIo;
use crate::sampler::{MemoryRaw, RawSample};

/// The CFS period the model enforces (the kernel's default).
pub const PERIOD_US: u64 = 100_000;
/// `memory.high` is kept in pages.
pub const PAGE_BYTES: u64 = 4096;
/// Weight of the squared unreclaimable overage in the stall share (see the module doc).
pub const THROTTLE_STALL: f64 = 60.0;
/// Weight of the squared page-cache overage in the stall share.
pub const REFAULT_STALL: f64 = 6.0;

/// What the proxy wants during a stretch of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    pub cpu_millis: f64,
    pub memory_bytes: u64,
    /// `<= memory_bytes`.
    pub unreclaimable_bytes: u64,
}

/// What one stretch of constant demand did to the proxy, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Exposure {
    pub seconds: f64,
    /// The quota in force, in millicores (`None` = unlimited).
    pub quota_millis: Option<u64>,
    /// The memory limit in force (`memory.high`, or `memory.max` where it is lower or `high` is
    /// `max`), in bytes.
    pub memory_limit_bytes: u64,
    /// Demand exceeded the quota.
    pub over_quota: bool,
    /// CPU time used and held back, in core-seconds.
    pub used_core_seconds: f64,
    pub throttled_core_seconds: f64,
    /// Demand exceeded the memory limit in force.
    pub over_limit: bool,
    /// Unreclaimable memory alone exceeded it (tasks throttled, not just cache evicted).
    pub unreclaimable_over_limit: bool,
    /// Bytes of demand above the limit.
    pub over_limit_bytes: u64,
    /// Modeled `memory.pressure` `some` share of this stretch (0..=1).
    pub memory_stall_share: f64,
}

/// The cgroup of one proxy: the limits in force and the kernel's cumulative counters.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupModel {
    cpu_max: CpuMax,
    memory_high: Option<u64>,
    memory_max: u64,
    usage_us: f64,
    periods: f64,
    throttled_periods: f64,
    throttled_us: f64,
    cpu_some_us: f64,
    memory_some_us: f64,
    events: MemoryEvents,
    current: u64,
    stat: MemoryStat,
    /// Set during a tick, turned into `memory.events` increments by [`CgroupModel::end_tick`].
    over_high: bool,
    over_max: bool,
    oom: bool,
}

impl CgroupModel {
    /// A fresh cgroup with `cpu.max` at `cpu_limit_millis` (period [`PERIOD_US`]),
    /// `memory.high` at `max` and `memory.max` at `memory_limit_bytes`.
    pub fn new(cpu_limit_millis: u64, memory_limit_bytes: u64) -> CgroupModel {
        let unlimited = CpuMax {
            quota_us: None,
            period_us: PERIOD_US,
        };
        CgroupModel {
            cpu_max: unlimited.with_millis(cpu_limit_millis),
            memory_high: None,
            memory_max: memory_limit_bytes,
            usage_us: 0.0,
            periods: 0.0,
            throttled_periods: 0.0,
            throttled_us: 0.0,
            cpu_some_us: 0.0,
            memory_some_us: 0.0,
            events: MemoryEvents::default(),
            current: 0,
            stat: MemoryStat::default(),
            over_high: false,
            over_max: false,
            oom: false,
        }
    }

    /// Lets `dt_us` microseconds of constant `demand` pass.
    pub fn run(&mut self, demand: &Demand, dt_us: u64) -> Exposure {
        let dt = dt_us as f64;
        let seconds = dt / 1e6;

        // CPU: usage is what the quota lets through; the rest is throttled.
        let d = demand.cpu_millis.max(0.0);
        let quota = self.cpu_max.millis();
        let q = quota.map_or(f64::INFINITY, |q| q as f64);
        let used = d.min(q);
        let held = (d - q).max(0.0);
        self.usage_us += used / 1000.0 * dt;
        self.throttled_us += held / 1000.0 * dt;
        if d > 0.0 {
            let periods = dt / self.cpu_max.period_us.max(1) as f64;
            self.periods += periods;
            if held > 0.0 {
                self.throttled_periods += periods;
                self.cpu_some_us += held / d * dt;
            }
        }

        // Memory: what does not fit under the limit is reclaimed (cache) or stalls (the rest).
        let m = demand.memory_bytes;
        let u = demand.unreclaimable_bytes.min(m);
        let high = self.memory_high.unwrap_or(u64::MAX);
        let limit = high.min(self.memory_max);
        let current = if m <= limit { m } else { limit.max(u) }.min(self.memory_max);
        let lim = limit.max(1) as f64;
        let over_unreclaimable = u.saturating_sub(limit) as f64 / lim;
        let over_cache = m.saturating_sub(limit.max(u)) as f64 / lim;
        let stall = (THROTTLE_STALL * over_unreclaimable * over_unreclaimable
            + REFAULT_STALL * over_cache * over_cache)
            .min(1.0);
        self.memory_some_us += stall * dt;
        self.current = current;
        let anon = u.min(current);
        self.stat = MemoryStat {
            anon,
            file: current - anon,
            ..MemoryStat::default()
        };
        if dt_us > 0 {
            self.over_high |= m > high;
            self.over_max |= m > self.memory_max;
            self.oom |= u > self.memory_max;
        }

        Exposure {
            seconds,
            quota_millis: quota,
            memory_limit_bytes: limit,
            over_quota: held > 0.0,
            used_core_seconds: used / 1000.0 * seconds,
            throttled_core_seconds: held / 1000.0 * seconds,
            over_limit: m > limit,
            unreclaimable_over_limit: u > limit,
            over_limit_bytes: m.saturating_sub(limit),
            memory_stall_share: stall,
        }
    }

    /// Closes a tick: the events seen during it become `memory.events` increments.
    pub fn end_tick(&mut self) {
        self.events.high += u64::from(self.over_high);
        self.events.max += u64::from(self.over_max);
        self.events.oom += u64::from(self.oom);
        self.events.oom_kill += u64::from(self.oom);
        (self.over_high, self.over_max, self.oom) = (false, false, false);
    }

    /// `cpu.stat` now.
    pub fn cpu_stat(&self) -> CpuStat {
        CpuStat {
            usage_usec: self.usage_us.round() as u64,
            nr_periods: self.periods.round() as u64,
            nr_throttled: self.throttled_periods.round() as u64,
            throttled_usec: self.throttled_us.round() as u64,
            nr_bursts: 0,
            burst_usec: 0,
        }
    }

    /// `cpu.pressure` now.
    pub fn cpu_pressure(&self) -> Pressure {
        Pressure {
            some_total_us: self.cpu_some_us.round() as u64,
            full_total_us: None,
        }
    }

    /// `cpu.max` now.
    pub fn cpu_max(&self) -> CpuMax {
        self.cpu_max
    }

    /// Writes `cpu.max` to `millis` millicores (period kept) and returns what reads back.
    pub fn set_cpu_millis(&mut self, millis: u64) -> CpuMax {
        self.cpu_max = self.cpu_max.with_millis(millis);
        self.cpu_max
    }

    /// Writes `cpu.max`.
    pub fn set_cpu_max(&mut self, value: CpuMax) {
        self.cpu_max = value;
    }

    pub fn memory_current(&self) -> u64 {
        self.current
    }

    /// `memory.high` (`None` = `max`).
    pub fn memory_high(&self) -> Option<u64> {
        self.memory_high
    }

    pub fn memory_max(&self) -> u64 {
        self.memory_max
    }

    pub fn memory_events(&self) -> MemoryEvents {
        self.events
    }

    pub fn memory_pressure(&self) -> Pressure {
        Pressure {
            some_total_us: self.memory_some_us.round() as u64,
            full_total_us: None,
        }
    }

    pub fn memory_stat(&self) -> MemoryStat {
        self.stat
    }

    /// Writes `memory.high` and returns what reads back (whole pages).
    pub fn set_memory_high(&mut self, bytes: u64) -> Option<u64> {
        self.memory_high = Some(bytes / PAGE_BYTES * PAGE_BYTES);
        self.memory_high
    }

    /// Writes `bytes` to `memory.reclaim`: frees page cache at once (until the next stretch)
    /// and returns how much was freed.
    pub fn reclaim(&mut self, bytes: u64) -> u64 {
        let freed = bytes.min(self.stat.file);
        self.stat.file -= freed;
        self.current -= freed;
        freed
    }
}

/// The model as the per-proxy core's I/O seam: what the agent reads from and writes to cgroup
/// files, the simulator reads from and writes to the model. The model has no `cpu.max.burst`
/// (it matters within a 100 ms period, far below a tick) and its writes never time out.
#[derive(Debug)]
pub struct ModelIo<'a> {
    pub model: &'a mut CgroupModel,
    /// Memory is governed (the core samples the memory files).
    pub memory: bool,
    /// Bytes `memory.reclaim` freed so far.
    pub reclaimed: &'a mut u64,
}

impl ProxyIo for ModelIo<'_> {
    fn sample_cpu(&mut self, now: Instant) -> Result<RawSample, CgroupError> {
        Ok(RawSample {
            at: now,
            cpu: self.model.cpu_stat(),
            cpu_max: self.model.cpu_max(),
            cpu_pressure: Some(self.model.cpu_pressure()),
        })
    }

    fn write_cpu(&mut self, cpu_max: &CpuMax, _: Option<(u64, u64)>) -> Result<(), CgroupError> {
        self.model.set_cpu_max(*cpu_max);
        Ok(())
    }

    fn sample_memory(&mut self, now: Instant) -> Option<Result<MemoryRaw, CgroupError>> {
        let m = &self.model;
        self.memory.then(|| {
            Ok(MemoryRaw {
                at: now,
                current: m.memory_current(),
                high: m.memory_high(),
                events: m.memory_events(),
                pressure: Some(m.memory_pressure()),
            })
        })
    }

    fn read_memory_stat(&mut self) -> Result<MemoryStat, CgroupError> {
        Ok(self.model.memory_stat())
    }

    fn read_memory_max(&mut self) -> Result<Option<u64>, CgroupError> {
        Ok(Some(self.model.memory_max()))
    }

    fn read_memory_high(&mut self) -> Result<Option<u64>, CgroupError> {
        Ok(self.model.memory_high())
    }

    fn set_memory_high(&mut self, bytes: u64, _: Duration) -> Result<Option<u64>, CgroupError> {
        Ok(self.model.set_memory_high(bytes))
    }

    fn reclaim(&mut self, bytes: u64, _: Duration) -> Result<(), CgroupError> {
        *self.reclaimed += self.model.reclaim(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;
    const SEC: u64 = 1_000_000;

    fn demand(cpu: f64, mem: u64, unreclaimable: u64) -> Demand {
        Demand {
            cpu_millis: cpu,
            memory_bytes: mem,
            unreclaimable_bytes: unreclaimable,
        }
    }

    #[test]
    fn cpu_under_the_quota_is_not_throttled() {
        let mut k = CgroupModel::new(500, 1024 * MI);
        assert_eq!(k.cpu_max().to_string(), "50000 100000");
        let e = k.run(&demand(200.0, 0, 0), 2 * SEC);
        assert!(!e.over_quota);
        assert_eq!(e.quota_millis, Some(500));
        assert!((e.used_core_seconds - 0.4).abs() < 1e-12);
        assert_eq!(e.throttled_core_seconds, 0.0);
        let s = k.cpu_stat();
        assert_eq!(
            (s.usage_usec, s.nr_periods, s.nr_throttled, s.throttled_usec),
            (400_000, 20, 0, 0)
        );
        assert_eq!(k.cpu_pressure().some_total_us, 0);
    }

    #[test]
    fn cpu_demand_above_the_quota_is_throttled_time() {
        // 1000m wanted under 250m for 1 s: 250 ms used, 750 ms held back, every period throttled.
        let mut k = CgroupModel::new(250, 1024 * MI);
        let e = k.run(&demand(1000.0, 0, 0), SEC);
        assert!(e.over_quota);
        assert!((e.used_core_seconds - 0.25).abs() < 1e-12);
        assert!((e.throttled_core_seconds - 0.75).abs() < 1e-12);
        let s = k.cpu_stat();
        assert_eq!(
            (s.usage_usec, s.nr_periods, s.nr_throttled, s.throttled_usec),
            (250_000, 10, 10, 750_000)
        );
        // 3/4 of the demand held back: some-pressure 3/4 of the second.
        assert_eq!(k.cpu_pressure().some_total_us, 750_000);
        // Half a second at 100m: counters keep adding up.
        k.run(&demand(100.0, 0, 0), SEC / 2);
        let s = k.cpu_stat();
        assert_eq!(
            (s.usage_usec, s.nr_periods, s.nr_throttled),
            (300_000, 15, 10)
        );
    }

    #[test]
    fn idle_cpu_counts_no_periods_and_writes_read_back_like_the_kernel() {
        let mut k = CgroupModel::new(2000, 1024 * MI);
        k.run(&demand(0.0, 0, 0), SEC);
        assert_eq!(k.cpu_stat().nr_periods, 0);
        let m = k.set_cpu_millis(123);
        assert_eq!(m.to_string(), "12300 100000");
        assert_eq!(m.millis(), Some(123));
        // The kernel's smallest quota is 1000 us.
        assert_eq!(k.set_cpu_millis(1).quota_us, Some(1000));
    }

    #[test]
    fn memory_under_the_limit_is_all_current() {
        let mut k = CgroupModel::new(1000, 1024 * MI);
        let e = k.run(&demand(0.0, 300 * MI, 200 * MI), SEC);
        assert!(!e.over_limit);
        assert_eq!(e.memory_limit_bytes, 1024 * MI);
        assert_eq!(k.memory_current(), 300 * MI);
        let st = k.memory_stat();
        assert_eq!((st.anon, st.file), (200 * MI, 100 * MI));
        assert_eq!(st.unreclaimable(), 200 * MI);
        assert_eq!(st.reclaimable(), 100 * MI);
        k.end_tick();
        assert_eq!(k.memory_events(), MemoryEvents::default());
        assert_eq!(k.memory_pressure().some_total_us, 0);
    }

    #[test]
    fn cache_above_high_is_reclaimed_with_a_small_stall() {
        let mut k = CgroupModel::new(1000, 1024 * MI);
        assert_eq!(k.set_memory_high(200 * MI + 5), Some(200 * MI));
        // 220 MiB wanted, 150 MiB of it anon: 20 MiB of cache does not fit (10% of 200).
        let e = k.run(&demand(0.0, 220 * MI, 150 * MI), SEC);
        assert!(e.over_limit && !e.unreclaimable_over_limit);
        assert_eq!(e.over_limit_bytes, 20 * MI);
        assert_eq!(k.memory_current(), 200 * MI);
        // 6 * 0.1^2 = 0.06 of the second.
        assert!((e.memory_stall_share - 0.06).abs() < 1e-12);
        assert_eq!(k.memory_pressure().some_total_us, 60_000);
        // One high event per tick, however many stretches.
        k.run(&demand(0.0, 230 * MI, 150 * MI), SEC);
        k.end_tick();
        k.end_tick();
        assert_eq!(k.memory_events().high, 1);
        assert_eq!(k.memory_events().max, 0);
    }

    #[test]
    fn unreclaimable_above_high_throttles_hard() {
        let mut k = CgroupModel::new(1000, 1024 * MI);
        k.set_memory_high(100 * MI);
        // 110 MiB anon + 10 MiB cache over a 100 MiB high: ou = 0.1, oc = 0.1.
        let e = k.run(&demand(0.0, 120 * MI, 110 * MI), SEC);
        assert!(e.unreclaimable_over_limit);
        assert_eq!(k.memory_current(), 110 * MI);
        assert!((e.memory_stall_share - (60.0 * 0.01 + 6.0 * 0.01)).abs() < 1e-12);
        // 20% over: saturated.
        let e = k.run(&demand(0.0, 120 * MI, 120 * MI), SEC);
        assert_eq!(e.memory_stall_share, 1.0);
        k.end_tick();
        assert_eq!(k.memory_events().high, 1);
    }

    #[test]
    fn memory_max_events_and_oom() {
        let mut k = CgroupModel::new(1000, 100 * MI);
        // No memory.high: the limit in force is memory.max; cache over it is reclaimed.
        let e = k.run(&demand(0.0, 150 * MI, 50 * MI), SEC);
        assert_eq!(e.memory_limit_bytes, 100 * MI);
        assert_eq!(k.memory_current(), 100 * MI);
        k.end_tick();
        let ev = k.memory_events();
        assert_eq!((ev.high, ev.max, ev.oom_kill), (0, 1, 0));
        k.run(&demand(0.0, 150 * MI, 120 * MI), SEC);
        assert_eq!(k.memory_current(), 100 * MI);
        k.end_tick();
        let ev = k.memory_events();
        assert_eq!((ev.high, ev.max, ev.oom_kill), (0, 2, 1));
    }

    #[test]
    fn reclaim_frees_cache_only() {
        let mut k = CgroupModel::new(1000, 1024 * MI);
        k.run(&demand(0.0, 100 * MI, 70 * MI), SEC);
        assert_eq!(k.reclaim(50 * MI), 30 * MI);
        assert_eq!(k.memory_current(), 70 * MI);
        assert_eq!(k.memory_stat().file, 0);
    }
}
