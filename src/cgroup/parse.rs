//! Pure parsers for the cgroup v2 interface files the agent reads (`cpu.max`, `cpu.stat`,
//! `*.pressure`, `memory.stat`, `memory.events`, single-value memory files). They take the
//! kernel's text and return typed values or a [`ParseError`] saying what was wrong; no I/O here.

use std::fmt;

/// What was wrong with a cgroup file's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed `{0}`")]
    Malformed(String),
    #[error("missing required key `{0}`")]
    MissingKey(&'static str),
    #[error("`{key}` is not an unsigned integer: `{value}`")]
    BadNumber { key: String, value: String },
}

/// Kernel bounds of `cpu.max` (kernel/sched/core.c: `min_cfs_quota_period`, `max_cfs_quota_period`).
pub const MIN_QUOTA_US: u64 = 1_000;
/// Smallest period the kernel accepts, in microseconds.
pub const MIN_PERIOD_US: u64 = 1_000;
/// Largest period the kernel accepts, in microseconds.
pub const MAX_PERIOD_US: u64 = 1_000_000;

/// The contents of `cpu.max`: a quota (`None` = `max`, unlimited) per period, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CpuMax {
    pub quota_us: Option<u64>,
    pub period_us: u64,
}

impl CpuMax {
    /// The quota in millicores (`None` when unlimited).
    pub fn millis(&self) -> Option<u64> {
        self.quota_us
            .map(|q| q.saturating_mul(1000) / self.period_us.max(1))
    }

    /// The same period with a quota of `millis` millicores (never below the kernel's 1000 us).
    pub fn with_millis(&self, millis: u64) -> CpuMax {
        let quota = millis.saturating_mul(self.period_us) / 1000;
        CpuMax {
            quota_us: Some(quota.max(MIN_QUOTA_US)),
            period_us: self.period_us,
        }
    }

    /// Checks the value against the kernel's bounds before anything is written.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_PERIOD_US..=MAX_PERIOD_US).contains(&self.period_us) {
            return Err(format!(
                "period {} us outside {MIN_PERIOD_US}..={MAX_PERIOD_US}",
                self.period_us
            ));
        }
        match self.quota_us {
            Some(q) if q < MIN_QUOTA_US => Err(format!("quota {q} us below {MIN_QUOTA_US}")),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for CpuMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.quota_us {
            Some(q) => write!(f, "{q} {}", self.period_us),
            None => write!(f, "max {}", self.period_us),
        }
    }
}

fn number(key: &str, value: &str) -> Result<u64, ParseError> {
    value.parse().map_err(|_| ParseError::BadNumber {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// Parses `cpu.max`: `"max 100000"` or `"50000 100000"`. A lone quota (period omitted) is
/// what the kernel accepts on write but never prints, so it is refused here.
pub fn parse_cpu_max(text: &str) -> Result<CpuMax, ParseError> {
    let mut parts = text.split_whitespace();
    let (Some(quota), Some(period), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ParseError::Malformed(text.trim().to_string()));
    };
    let quota_us = if quota == "max" {
        None
    } else {
        Some(number("quota", quota)?)
    };
    let period_us = number("period", period)?;
    if period_us == 0 {
        return Err(ParseError::Malformed(text.trim().to_string()));
    }
    Ok(CpuMax {
        quota_us,
        period_us,
    })
}

/// The counters of `cpu.stat` the agent uses. Fields other than `usage_usec` are absent when
/// the cpu controller is not enabled for the cgroup; they then read as zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub usage_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
    pub nr_bursts: u64,
    pub burst_usec: u64,
}

/// Parses `cpu.stat` (`key value` lines). Unknown keys are ignored (newer kernels add some).
pub fn parse_cpu_stat(text: &str) -> Result<CpuStat, ParseError> {
    let mut stat = CpuStat::default();
    let mut saw_usage = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            return Err(ParseError::Malformed(line.to_string()));
        };
        let slot = match key {
            "usage_usec" => {
                saw_usage = true;
                &mut stat.usage_usec
            }
            "nr_periods" => &mut stat.nr_periods,
            "nr_throttled" => &mut stat.nr_throttled,
            "throttled_usec" => &mut stat.throttled_usec,
            "nr_bursts" => &mut stat.nr_bursts,
            "burst_usec" => &mut stat.burst_usec,
            _ => continue,
        };
        *slot = number(key, value)?;
    }
    if !saw_usage {
        return Err(ParseError::MissingKey("usage_usec"));
    }
    Ok(stat)
}

/// Cumulative stall totals of a PSI file (`cpu.pressure`, `memory.pressure`), in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    pub some_total_us: u64,
    /// `full` is absent from `cpu.pressure` on kernels before 5.13.
    pub full_total_us: Option<u64>,
}

/// Parses a PSI file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and an optional `full` line.
pub fn parse_pressure(text: &str) -> Result<Pressure, ParseError> {
    let mut some = None;
    let mut full = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let kind = parts.next().unwrap_or_default();
        let total = parts
            .find_map(|p| p.strip_prefix("total="))
            .ok_or_else(|| ParseError::Malformed(line.to_string()))?;
        let total = number("total", total)?;
        match kind {
            "some" => some = Some(total),
            "full" => full = Some(total),
            _ => return Err(ParseError::Malformed(line.to_string())),
        }
    }
    Ok(Pressure {
        some_total_us: some.ok_or(ParseError::MissingKey("some"))?,
        full_total_us: full,
    })
}

/// Parses a single-value memory file (`memory.current`, `memory.high`, `memory.max`,
/// `cpu.max.burst`): a byte count or `max` (`None`).
pub fn parse_u64_or_max(text: &str) -> Result<Option<u64>, ParseError> {
    match text.trim() {
        "max" => Ok(None),
        "" => Err(ParseError::Malformed(String::new())),
        value => number("value", value).map(Some),
    }
}

/// The `memory.stat` entries a memory decision needs, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStat {
    pub anon: u64,
    pub file: u64,
    /// `kernel` exists from Linux 5.18; older kernels sum `kernel_stack`, `pagetables`,
    /// `percpu` and `slab_unreclaimable` instead (done by the parser).
    pub kernel: u64,
    pub sock: u64,
    pub shmem: u64,
    pub inactive_file: u64,
    pub active_file: u64,
    pub slab_reclaimable: u64,
}

impl MemoryStat {
    /// Memory the kernel cannot reclaim without swap: anonymous (incl. shmem, which lives in
    /// `file` but cannot be dropped), kernel and socket buffers.
    pub fn unreclaimable(&self) -> u64 {
        self.anon
            .saturating_add(self.kernel)
            .saturating_add(self.sock)
            .saturating_add(self.shmem)
    }

    /// Memory reclaim can free: page cache that is not shmem, and reclaimable slab.
    pub fn reclaimable(&self) -> u64 {
        self.file
            .saturating_sub(self.shmem)
            .saturating_add(self.slab_reclaimable)
    }
}

/// Parses `memory.stat`. `anon` and `file` are required; the rest default to zero.
pub fn parse_memory_stat(text: &str) -> Result<MemoryStat, ParseError> {
    let mut stat = MemoryStat::default();
    let (mut saw_anon, mut saw_file, mut saw_kernel) = (false, false, false);
    let mut kernel_parts = 0u64;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            return Err(ParseError::Malformed(line.to_string()));
        };
        let value_of = || number(key, value);
        match key {
            "anon" => {
                stat.anon = value_of()?;
                saw_anon = true;
            }
            "file" => {
                stat.file = value_of()?;
                saw_file = true;
            }
            "kernel" => {
                stat.kernel = value_of()?;
                saw_kernel = true;
            }
            "kernel_stack" | "pagetables" | "percpu" | "slab_unreclaimable" => {
                kernel_parts = kernel_parts.saturating_add(value_of()?);
            }
            "sock" => stat.sock = value_of()?,
            "shmem" => stat.shmem = value_of()?,
            "inactive_file" => stat.inactive_file = value_of()?,
            "active_file" => stat.active_file = value_of()?,
            "slab_reclaimable" => stat.slab_reclaimable = value_of()?,
            _ => {}
        }
    }
    if !saw_anon {
        return Err(ParseError::MissingKey("anon"));
    }
    if !saw_file {
        return Err(ParseError::MissingKey("file"));
    }
    if !saw_kernel {
        stat.kernel = kernel_parts;
    }
    Ok(stat)
}

/// The counters of `memory.events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

/// Parses `memory.events`; `oom_group_kill` (Linux 5.17+) may be missing.
pub fn parse_memory_events(text: &str) -> Result<MemoryEvents, ParseError> {
    let mut events = MemoryEvents::default();
    let mut saw_high = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            return Err(ParseError::Malformed(line.to_string()));
        };
        let slot = match key {
            "low" => &mut events.low,
            "high" => {
                saw_high = true;
                &mut events.high
            }
            "max" => &mut events.max,
            "oom" => &mut events.oom,
            "oom_kill" => &mut events.oom_kill,
            "oom_group_kill" => &mut events.oom_group_kill,
            _ => continue,
        };
        *slot = number(key, value)?;
    }
    if !saw_high {
        return Err(ParseError::MissingKey("high"));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_forms() {
        assert_eq!(
            parse_cpu_max("max 100000\n"),
            Ok(CpuMax {
                quota_us: None,
                period_us: 100_000
            })
        );
        let limited = parse_cpu_max("200000 100000\n").unwrap();
        assert_eq!(limited.quota_us, Some(200_000));
        assert_eq!(limited.millis(), Some(2000));
        assert_eq!(limited.to_string(), "200000 100000");
        assert_eq!(
            parse_cpu_max("max 100000").unwrap().to_string(),
            "max 100000"
        );
        assert_eq!(parse_cpu_max("5000 50000").unwrap().millis(), Some(100));
    }

    #[test]
    fn cpu_max_garbage() {
        for bad in [
            "",
            "max",
            "100000",
            "a b",
            "1 2 3",
            "-5 100000",
            "max 0",
            "max x",
        ] {
            assert!(parse_cpu_max(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn cpu_max_with_millis_keeps_period_and_kernel_floor() {
        let m = parse_cpu_max("max 50000").unwrap();
        assert_eq!(m.with_millis(500).to_string(), "25000 50000");
        assert_eq!(m.with_millis(1).quota_us, Some(MIN_QUOTA_US));
        assert!(m.with_millis(1).validate().is_ok());
        assert!(
            CpuMax {
                quota_us: Some(999),
                period_us: 100_000
            }
            .validate()
            .is_err()
        );
        assert!(
            CpuMax {
                quota_us: Some(5000),
                period_us: 2_000_000
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn cpu_stat_full_and_minimal() {
        let text = "usage_usec 2356000\nuser_usec 1200000\nsystem_usec 1156000\n\
                    core_sched.force_idle_usec 0\nnr_periods 120\nnr_throttled 30\n\
                    throttled_usec 450000\nnr_bursts 0\nburst_usec 0\n";
        let s = parse_cpu_stat(text).unwrap();
        assert_eq!(s.usage_usec, 2_356_000);
        assert_eq!(s.nr_periods, 120);
        assert_eq!(s.nr_throttled, 30);
        assert_eq!(s.throttled_usec, 450_000);
        // Without the cpu controller the kernel prints only the usage lines.
        let minimal = parse_cpu_stat("usage_usec 10\nuser_usec 5\nsystem_usec 5\n").unwrap();
        assert_eq!(minimal.usage_usec, 10);
        assert_eq!(minimal.nr_periods, 0);
        assert_eq!(
            parse_cpu_stat("user_usec 5\n"),
            Err(ParseError::MissingKey("usage_usec"))
        );
        assert!(parse_cpu_stat("usage_usec lots\n").is_err());
        assert!(parse_cpu_stat("usage_usec\n").is_err());
    }

    #[test]
    fn pressure_files() {
        let cpu = "some avg10=1.50 avg60=0.80 avg300=0.10 total=123456\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=789\n";
        assert_eq!(
            parse_pressure(cpu),
            Ok(Pressure {
                some_total_us: 123_456,
                full_total_us: Some(789)
            })
        );
        let old = "some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n";
        assert_eq!(parse_pressure(old).unwrap().full_total_us, None);
        assert!(parse_pressure("").is_err());
        assert!(parse_pressure("some avg10=0.00\n").is_err());
        assert!(parse_pressure("weird total=1\n").is_err());
    }

    #[test]
    fn single_values() {
        assert_eq!(parse_u64_or_max("max\n"), Ok(None));
        assert_eq!(parse_u64_or_max("134217728\n"), Ok(Some(134_217_728)));
        assert!(parse_u64_or_max("").is_err());
        assert!(parse_u64_or_max("12k").is_err());
    }

    #[test]
    fn memory_stat_new_and_old_kernels() {
        let new = "anon 104857600\nfile 52428800\nkernel 4194304\nkernel_stack 65536\n\
                   pagetables 131072\nsock 8192\nshmem 1048576\nfile_mapped 0\n\
                   inactive_file 30000000\nactive_file 21428800\nslab_reclaimable 1000\n";
        let s = parse_memory_stat(new).unwrap();
        assert_eq!(s.kernel, 4_194_304);
        assert_eq!(
            s.unreclaimable(),
            104_857_600 + 4_194_304 + 8192 + 1_048_576
        );
        assert_eq!(s.reclaimable(), 52_428_800 - 1_048_576 + 1000);
        let old = "anon 100\nfile 50\nkernel_stack 10\npagetables 20\npercpu 5\n\
                   slab_unreclaimable 7\nsock 3\n";
        assert_eq!(parse_memory_stat(old).unwrap().kernel, 42);
        assert_eq!(
            parse_memory_stat("file 1\n"),
            Err(ParseError::MissingKey("anon"))
        );
    }

    #[test]
    fn memory_events() {
        let text = "low 0\nhigh 17\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n";
        let e = parse_memory_events(text).unwrap();
        assert_eq!((e.high, e.max, e.oom_kill), (17, 2, 1));
        let older = "low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\n";
        assert_eq!(parse_memory_events(older).unwrap().high, 3);
        assert!(parse_memory_events("low 0\n").is_err());
    }
}
