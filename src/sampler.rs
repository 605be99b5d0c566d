//! The sampler: per-proxy cgroup files held open ([`ProxyFiles`]) and read each tick into a
//! [`RawSample`]; [`cpu_observation`] turns two samples into the deltas the controller
//! decides on. Reading is the agent's hot path, so descriptors are kept and re-read with
//! `pread` from offset 0 into one reused buffer.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::cgroup::parse::{
    parse_cpu_max, parse_cpu_stat, parse_memory_events, parse_memory_stat, parse_pressure,
    parse_u64_or_max,
};
use crate::cgroup::{CgroupError, CgroupFile, CpuMax, CpuStat, MemoryEvents, MemoryStat, Pressure};
use crate::controller::{CpuObservation, MemoryEventsDelta};

/// The interface files read every tick for each proxy (the benchmark's baseline reads the same).
/// (`memory.stat` is read only when a memory decision needs it.)
pub const TICK_FILES: &[&str] = &[
    "cpu.stat",
    "cpu.max",
    "cpu.pressure",
    "memory.current",
    "memory.high",
    "memory.events",
    "memory.pressure",
];

/// The CPU files of one proxy: those read every tick, and `cpu.max` and `cpu.max.burst`
/// held read-write so that the actuator writes and reads them back through the same
/// descriptors ([`crate::actuator::write_cpu_held`]).
#[derive(Debug)]
pub struct ProxyFiles {
    dir: Arc<Path>,
    cpu_stat: CgroupFile,
    cpu_max: CgroupFile,
    /// Absent when the kernel runs without PSI (`psi=0`, Debian's default).
    cpu_pressure: Option<CgroupFile>,
    /// Absent when the kernel has no burst (before 5.14). Read only when a write is due.
    cpu_max_burst: Option<CgroupFile>,
}

/// One tick's raw reading of a proxy's files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawSample {
    pub at: Instant,
    pub cpu: CpuStat,
    pub cpu_max: CpuMax,
    pub cpu_pressure: Option<Pressure>,
}

impl ProxyFiles {
    /// Opens the files of the container cgroup `dir` (`cpu.max` and `cpu.max.burst`
    /// read-write where writing is allowed, read-only otherwise).
    pub fn open(dir: &Path) -> Result<Self, CgroupError> {
        let dir: Arc<Path> = Arc::from(dir);
        let cpu_stat = CgroupFile::open(&dir, "cpu.stat")?;
        let cpu_max = CgroupFile::open_rw(&dir, "cpu.max")?;
        let cpu_pressure = CgroupFile::open(&dir, "cpu.pressure").ok();
        let cpu_max_burst = match CgroupFile::open_rw(&dir, "cpu.max.burst") {
            Ok(f) => Some(f),
            // The cgroup is there (its cpu.max just opened): the kernel has no burst.
            Err(CgroupError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            dir,
            cpu_stat,
            cpu_max,
            cpu_pressure,
            cpu_max_burst,
        })
    }

    /// The container cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `cpu.max`, held read-write where allowed.
    pub fn cpu_max_file(&self) -> &CgroupFile {
        &self.cpu_max
    }

    /// `cpu.max.burst` (`None` when the kernel has no burst).
    pub fn cpu_burst_file(&self) -> Option<&CgroupFile> {
        self.cpu_max_burst.as_ref()
    }

    /// Reads `cpu.max.burst` through the held descriptor (`None` when the kernel has no
    /// burst; `max` reads as `u64::MAX`).
    pub fn read_cpu_burst(&self, buf: &mut Vec<u8>) -> Result<Option<u64>, CgroupError> {
        match &self.cpu_max_burst {
            Some(file) => file
                .read_parsed(buf, parse_u64_or_max)
                .map(|v| Some(v.unwrap_or(u64::MAX))),
            None => Ok(None),
        }
    }

    /// Reads all files now. A PSI read failure drops PSI for this proxy rather than the sample.
    pub fn sample(&mut self, buf: &mut Vec<u8>, at: Instant) -> Result<RawSample, CgroupError> {
        let cpu = self.cpu_stat.read_parsed(buf, parse_cpu_stat)?;
        let cpu_max = self.cpu_max.read_parsed(buf, parse_cpu_max)?;
        let cpu_pressure = match &self.cpu_pressure {
            Some(file) => match file.read_parsed(buf, parse_pressure) {
                Ok(p) => Some(p),
                Err(e) if e.is_gone() => return Err(e),
                Err(_) => {
                    self.cpu_pressure = None;
                    None
                }
            },
            None => None,
        };
        Ok(RawSample {
            at,
            cpu,
            cpu_max,
            cpu_pressure,
        })
    }
}

/// The memory files read every tick for one proxy.
#[derive(Debug)]
pub struct MemoryFiles {
    current: CgroupFile,
    high: CgroupFile,
    events: CgroupFile,
    pressure: Option<CgroupFile>,
}

/// One tick's raw reading of a proxy's memory files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRaw {
    pub at: Instant,
    pub current: u64,
    /// `memory.high` (`None` = `max`).
    pub high: Option<u64>,
    pub events: MemoryEvents,
    pub pressure: Option<Pressure>,
}

impl MemoryFiles {
    /// Opens the memory files of the container cgroup `dir`.
    pub fn open(dir: &Path) -> Result<Self, CgroupError> {
        let dir: Arc<Path> = Arc::from(dir);
        Ok(Self {
            current: CgroupFile::open(&dir, "memory.current")?,
            high: CgroupFile::open(&dir, "memory.high")?,
            events: CgroupFile::open(&dir, "memory.events")?,
            pressure: CgroupFile::open(&dir, "memory.pressure").ok(),
        })
    }

    /// Reads all files now.
    pub fn sample(&mut self, buf: &mut Vec<u8>, at: Instant) -> Result<MemoryRaw, CgroupError> {
        let current = self
            .current
            .read_parsed(buf, parse_u64_or_max)?
            .unwrap_or(u64::MAX);
        let high = self.high.read_parsed(buf, parse_u64_or_max)?;
        let events = self.events.read_parsed(buf, parse_memory_events)?;
        let pressure = match &self.pressure {
            Some(file) => match file.read_parsed(buf, parse_pressure) {
                Ok(p) => Some(p),
                Err(e) if e.is_gone() => return Err(e),
                Err(_) => {
                    self.pressure = None;
                    None
                }
            },
            None => None,
        };
        Ok(MemoryRaw {
            at,
            current,
            high,
            events,
            pressure,
        })
    }
}

/// Reads `memory.stat` of `dir` once (it is large: only when a decision needs it).
pub fn read_memory_stat(dir: &Path) -> Result<MemoryStat, CgroupError> {
    crate::cgroup::read_value(dir, "memory.stat", parse_memory_stat)
}

/// Reads `memory.max` of `dir` (`None` = unlimited).
pub fn read_memory_max(dir: &Path) -> Result<Option<u64>, CgroupError> {
    crate::cgroup::read_value(dir, "memory.max", parse_u64_or_max)
}

/// Memory deltas between two samples: elapsed time, event increments and the share of time
/// some task stalled on memory. `None` when no time passed or a counter went backwards.
pub fn memory_deltas(
    prev: &MemoryRaw,
    cur: &MemoryRaw,
) -> Option<(std::time::Duration, MemoryEventsDelta, Option<f64>)> {
    let elapsed = cur.at.checked_duration_since(prev.at)?;
    let elapsed_us = elapsed.as_micros() as f64;
    if elapsed_us <= 0.0 {
        return None;
    }
    let events = MemoryEventsDelta {
        high: cur.events.high.checked_sub(prev.events.high)?,
        max: cur.events.max.checked_sub(prev.events.max)?,
        oom_kill: cur.events.oom_kill.checked_sub(prev.events.oom_kill)?,
    };
    let pressure = match (prev.pressure, cur.pressure) {
        (Some(a), Some(b)) => b
            .some_total_us
            .checked_sub(a.some_total_us)
            .map(|d| (d as f64 / elapsed_us).min(1.0)),
        _ => None,
    };
    Some((elapsed, events, pressure))
}

/// Deltas between two samples as the controller sees them, with `quota_millis` the quota in
/// force. `None` when no time passed or a counter went backwards (the cgroup was recreated).
pub fn cpu_observation(
    prev: &RawSample,
    cur: &RawSample,
    quota_millis: u64,
) -> Option<CpuObservation> {
    let elapsed = cur.at.checked_duration_since(prev.at)?;
    let elapsed_us = elapsed.as_micros() as f64;
    if elapsed_us <= 0.0 {
        return None;
    }
    let usage = cur.cpu.usage_usec.checked_sub(prev.cpu.usage_usec)?;
    let periods = cur.cpu.nr_periods.checked_sub(prev.cpu.nr_periods)?;
    let throttled = cur.cpu.nr_throttled.checked_sub(prev.cpu.nr_throttled)?;
    let throttled_us = cur
        .cpu
        .throttled_usec
        .checked_sub(prev.cpu.throttled_usec)?;
    let pressure_some = match (prev.cpu_pressure, cur.cpu_pressure) {
        (Some(a), Some(b)) => b
            .some_total_us
            .checked_sub(a.some_total_us)
            .map(|d| (d as f64 / elapsed_us).min(1.0)),
        _ => None,
    };
    // The share of its quota used in the periods it ran: 1.0 when every period it was
    // active it used all it may (the kernel counts only periods with runnable work).
    let active_utilization = match prev.cpu_max.quota_us {
        Some(q) if periods > 0 && q > 0 => Some(usage as f64 / (periods as f64 * q as f64)),
        _ => None,
    };
    Some(CpuObservation {
        elapsed,
        active_utilization,
        usage_millis: usage as f64 * 1000.0 / elapsed_us,
        throttled_ratio: if periods == 0 {
            0.0
        } else {
            (throttled as f64 / periods as f64).min(1.0)
        },
        throttled_millis: throttled_us as f64 * 1000.0 / elapsed_us,
        pressure_some,
        quota_millis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(at: Instant, usage: u64, periods: u64, throttled: u64, t_us: u64) -> RawSample {
        RawSample {
            at,
            cpu: CpuStat {
                usage_usec: usage,
                nr_periods: periods,
                nr_throttled: throttled,
                throttled_usec: t_us,
                ..CpuStat::default()
            },
            cpu_max: CpuMax {
                quota_us: Some(10_000),
                period_us: 100_000,
            },
            cpu_pressure: Some(Pressure {
                some_total_us: usage / 2,
                full_total_us: None,
            }),
        }
    }

    #[test]
    fn deltas_per_second() {
        let t0 = Instant::now();
        let a = sample(t0, 1_000_000, 100, 0, 0);
        let b = sample(t0 + Duration::from_secs(2), 1_200_000, 120, 10, 1_800_000);
        let o = cpu_observation(&a, &b, 100).unwrap();
        assert!((o.usage_millis - 100.0).abs() < 1e-9);
        assert!((o.throttled_ratio - 0.5).abs() < 1e-9);
        assert!((o.throttled_millis - 900.0).abs() < 1e-9);
        assert!((o.pressure_some.unwrap() - 0.05).abs() < 1e-9);
        assert_eq!(o.elapsed, Duration::from_secs(2));
    }

    #[test]
    fn counters_going_backwards_mean_no_observation() {
        let t0 = Instant::now();
        let a = sample(t0, 5_000_000, 100, 0, 0);
        let b = sample(t0 + Duration::from_secs(1), 10, 1, 0, 0);
        assert_eq!(cpu_observation(&a, &b, 100), None);
        assert_eq!(cpu_observation(&a, &a, 100), None);
    }

    #[test]
    fn memory_files_and_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let w = |f: &str, t: &str| std::fs::write(dir.path().join(f), t).unwrap();
        w("memory.current", "1048576\n");
        w("memory.high", "max\n");
        w("memory.events", "low 0\nhigh 2\nmax 0\noom 0\noom_kill 0\n");
        w(
            "memory.pressure",
            "some avg10=0 avg60=0 avg300=0 total=100\nfull avg10=0 avg60=0 avg300=0 total=0\n",
        );
        let mut files = MemoryFiles::open(dir.path()).unwrap();
        let mut buf = Vec::new();
        let t0 = Instant::now();
        let a = files.sample(&mut buf, t0).unwrap();
        assert_eq!((a.current, a.high), (1_048_576, None));
        w("memory.events", "low 0\nhigh 5\nmax 1\noom 0\noom_kill 0\n");
        w(
            "memory.pressure",
            "some avg10=0 avg60=0 avg300=0 total=10100\nfull avg10=0 avg60=0 avg300=0 total=0\n",
        );
        w("memory.high", "2097152\n");
        let b = files.sample(&mut buf, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(b.high, Some(2_097_152));
        let (elapsed, events, pressure) = memory_deltas(&a, &b).unwrap();
        assert_eq!(elapsed, Duration::from_secs(1));
        assert_eq!((events.high, events.max, events.oom_kill), (3, 1, 0));
        assert!((pressure.unwrap() - 0.01).abs() < 1e-9);
        assert_eq!(memory_deltas(&b, &a), None);
    }

    #[test]
    fn files_are_reread_and_psi_is_optional() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 5\n").unwrap();
        std::fs::write(dir.path().join("cpu.max"), "max 100000\n").unwrap();
        let mut files = ProxyFiles::open(dir.path()).unwrap();
        let mut buf = Vec::new();
        let s = files.sample(&mut buf, Instant::now()).unwrap();
        assert_eq!((s.cpu.usage_usec, s.cpu_pressure), (5, None));
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 9\n").unwrap();
        assert_eq!(
            files
                .sample(&mut buf, Instant::now())
                .unwrap()
                .cpu
                .usage_usec,
            9
        );
        std::fs::remove_file(dir.path().join("cpu.max")).unwrap();
        assert!(ProxyFiles::open(dir.path()).unwrap_err().is_gone());
    }
}
