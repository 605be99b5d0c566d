//! The actuator: the only code that writes cgroup files. Every value is validated against the
//! kernel's bounds before it is written, written whole in one `write(2)`, and read back to
//! confirm; restoring from the journal goes through the same path.

use std::path::Path;

use tracing::{debug, info, warn};

use std::time::Duration;

use crate::cgroup::parse::{parse_cpu_max, parse_u64_or_max};
use crate::cgroup::{CgroupError, CpuMax, read_value, write_once, write_verified};
use crate::discovery::cgroup_path::parse_container_path;
use crate::journal::{Entry, Journal, JournalError};

/// Writes `value` to `dir/cpu.max` after validating it; returns what the kernel holds now.
pub fn write_cpu_max(dir: &Path, value: &CpuMax) -> Result<CpuMax, CgroupError> {
    let text = value.to_string();
    value.validate().map_err(|reason| CgroupError::Invalid {
        path: dir.join("cpu.max"),
        value: text.clone(),
        reason,
    })?;
    write_verified(dir, "cpu.max", &text, value, parse_cpu_max)
}

/// Sets the quota of `dir` to `millis` millicores, keeping the period of `current`.
pub fn set_cpu_quota(dir: &Path, current: &CpuMax, millis: u64) -> Result<CpuMax, CgroupError> {
    set_cpu(dir, current, millis, 0.0).map(|(m, _)| m)
}

/// Reads `cpu.max.burst` (`None` when the kernel has no burst, before 5.14).
pub fn read_cpu_burst(dir: &Path) -> Result<Option<u64>, CgroupError> {
    match read_value(dir, "cpu.max.burst", parse_u64_or_max) {
        Ok(v) => Ok(v),
        Err(e) if e.is_gone() && dir.is_dir() => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_burst(dir: &Path, burst_us: u64) -> Result<(), CgroupError> {
    write_verified(
        dir,
        "cpu.max.burst",
        &burst_us.to_string(),
        &Some(burst_us),
        parse_u64_or_max,
    )
    .map(|_| ())
}

/// Sets the quota of `dir` to `millis` millicores (period kept) and, with `burst_ratio` > 0,
/// `cpu.max.burst` to that share of the quota. The kernel refuses a burst above the quota, so
/// burst goes down before the quota does and up after it; both are read back. Returns the
/// new `cpu.max` and the burst now in force (if the kernel has burst).
pub fn set_cpu(
    dir: &Path,
    current: &CpuMax,
    millis: u64,
    burst_ratio: f64,
) -> Result<(CpuMax, Option<u64>), CgroupError> {
    let new = current.with_millis(millis);
    let text = new.to_string();
    new.validate().map_err(|reason| CgroupError::Invalid {
        path: dir.join("cpu.max"),
        value: text.clone(),
        reason,
    })?;
    let quota = new.quota_us.unwrap_or(u64::MAX);
    let wanted = (burst_ratio > 0.0).then_some((quota as f64 * burst_ratio) as u64);
    let mut burst = read_cpu_burst(dir)?;
    if let Some(b) = burst
        && b > quota
    {
        let lower = wanted.unwrap_or(0).min(quota);
        write_burst(dir, lower)?;
        burst = Some(lower);
    }
    let now = write_cpu_max(dir, &new)?;
    if let (Some(w), Some(b)) = (wanted, burst)
        && w != b
    {
        write_burst(dir, w.min(quota))?;
        burst = Some(w.min(quota));
    }
    Ok((now, burst))
}

/// The pod cgroup's quota to hold while the container's quota is `container_millis`
/// (`cpu.allowAboveLimit`): the pod's original plus whatever the container is above its own
/// original. `None` when the pod is unlimited (nothing to raise).
pub fn pod_quota_for(
    pod_original: &CpuMax,
    container_original: Option<u64>,
    container_millis: u64,
) -> Option<u64> {
    let pod = pod_original.millis()?;
    let excess = container_millis.saturating_sub(container_original.unwrap_or(u64::MAX));
    Some(pod.saturating_add(excess))
}

/// Sets the container quota like [`set_cpu`], keeping the pod cgroup's quota above it: a
/// child's quota is silently capped by its parent's, so the pod is raised first and lowered
/// last, back to exactly its original once the container is within its own limit.
pub fn set_cpu_in_pod(
    dir: &Path,
    pod_dir: &Path,
    current: &CpuMax,
    millis: u64,
    burst_ratio: f64,
    pod_original: &CpuMax,
    container_original: Option<u64>,
) -> Result<(CpuMax, Option<u64>), CgroupError> {
    let Some(pod_want) = pod_quota_for(pod_original, container_original, millis) else {
        return set_cpu(dir, current, millis, burst_ratio);
    };
    let pod_now = read_value(pod_dir, "cpu.max", parse_cpu_max)?;
    let target = if Some(pod_want) == pod_original.millis() {
        *pod_original
    } else {
        pod_now.with_millis(pod_want)
    };
    let now_millis = pod_now.millis().unwrap_or(u64::MAX);
    if now_millis < pod_want {
        write_cpu_max(pod_dir, &target)?;
    }
    let result = set_cpu(dir, current, millis, burst_ratio)?;
    if now_millis > pod_want || (now_millis == pod_want && pod_now != target) {
        write_cpu_max(pod_dir, &target)?;
    }
    Ok(result)
}

/// Runs a write that may block (memory writes reclaim synchronously in the writer) on its own
/// thread and waits at most `timeout`; after that the write is left to finish on its own and
/// a [`CgroupError::Timeout`] is returned. The control loop never blocks longer.
fn with_timeout<T: Send + 'static>(
    path: std::path::PathBuf,
    value: String,
    timeout: Duration,
    write: impl FnOnce() -> Result<T, CgroupError> + Send + 'static,
) -> Result<T, CgroupError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("cgroup-write".into())
        .spawn(move || {
            let _ = tx.send(write());
        });
    if let Err(source) = spawned {
        return Err(CgroupError::Write {
            path,
            value,
            source,
        });
    }
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(CgroupError::Timeout {
            path,
            value,
            after: timeout,
        }),
    }
}

/// Writes `memory.high` (`None` = `max`) with a timeout, reading it back to confirm. Byte
/// values are rounded down to whole 4 KiB pages, as the kernel stores them.
pub fn set_memory_high(
    dir: &Path,
    bytes: Option<u64>,
    timeout: Duration,
) -> Result<Option<u64>, CgroupError> {
    let bytes = bytes.map(|b| b & !4095);
    let text = bytes.map_or_else(|| "max".to_string(), |b| b.to_string());
    if bytes == Some(0) {
        return Err(CgroupError::Invalid {
            path: dir.join("memory.high"),
            value: text,
            reason: "a zero memory.high would stall every task".into(),
        });
    }
    let owned = dir.to_path_buf();
    let value = text.clone();
    with_timeout(dir.join("memory.high"), text, timeout, move || {
        write_verified(&owned, "memory.high", &value, &bytes, parse_u64_or_max)
    })
}

/// Asks the kernel to reclaim `bytes` from the cgroup once (`memory.reclaim`, Linux 5.19+),
/// with a timeout. The kernel answers `EAGAIN` when it freed less than asked: that is not an
/// error (there was less to reclaim).
pub fn reclaim_memory(dir: &Path, bytes: u64, timeout: Duration) -> Result<(), CgroupError> {
    let owned = dir.to_path_buf();
    let text = bytes.to_string();
    let value = text.clone();
    with_timeout(
        dir.join("memory.reclaim"),
        text,
        timeout,
        move || match write_once(&owned, "memory.reclaim", &value) {
            Err(CgroupError::Write { source, .. }) if source.raw_os_error() == Some(11) => Ok(()),
            other => other,
        },
    )
}

/// What restoring one journal entry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// The original values are back (verified).
    Restored,
    /// The container cgroup no longer exists: nothing to restore.
    Gone,
}

/// Puts one entry's originals back under `cgroup_root`.
pub fn restore_entry(
    cgroup_root: &Path,
    key: &str,
    entry: &Entry,
) -> Result<Restored, CgroupError> {
    // The key is a path from a file on disk: accept only a container cgroup path, so a
    // tampered journal can never direct writes outside the pod hierarchy.
    let invalid = |reason: &str| CgroupError::Invalid {
        path: cgroup_root.join(key),
        value: entry.cpu_max.clone(),
        reason: reason.to_string(),
    };
    let Some(parsed) = parse_container_path(key) else {
        return Err(invalid("journal key is not a container cgroup path"));
    };
    if parsed.container_rel != key || key.split('/').any(|p| p == "..") {
        return Err(invalid(
            "journal key is not a canonical container cgroup path",
        ));
    }
    let dir = cgroup_root.join(key);
    if !dir.is_dir() {
        return Ok(Restored::Gone);
    }
    let pod_dir = cgroup_root.join(&parsed.pod_rel);
    let original = parse_cpu_max(&entry.cpu_max).map_err(|source| CgroupError::Parse {
        path: dir.join("cpu.max"),
        source,
    })?;
    let restore = || -> Result<(), CgroupError> {
        // Burst may not exceed the quota: clear it, put the quota back, then the burst.
        let burst = match &entry.cpu_max_burst {
            Some(text) => Some(parse_u64_or_max(text).map_err(|source| CgroupError::Parse {
                path: dir.join("cpu.max.burst"),
                source,
            })?),
            None => None,
        };
        if burst.is_some() {
            write_burst(&dir, 0)?;
        }
        write_cpu_max(&dir, &original)?;
        if let Some(Some(b)) = burst
            && b > 0
        {
            write_burst(&dir, b)?;
        }
        // The container is back within its own limit: now the pod may come down.
        if let Some(text) = &entry.pod_cpu_max {
            let pod = parse_cpu_max(text).map_err(|source| CgroupError::Parse {
                path: pod_dir.join("cpu.max"),
                source,
            })?;
            write_cpu_max(&pod_dir, &pod)?;
        }
        if let Some(text) = &entry.memory_high {
            let high = parse_u64_or_max(text).map_err(|source| CgroupError::Parse {
                path: dir.join("memory.high"),
                source,
            })?;
            // Putting a limit back up never reclaims; a lower original may, so bound it.
            set_memory_high(&dir, high, Duration::from_secs(10))?;
        }
        Ok(())
    };
    match restore() {
        Ok(()) => Ok(Restored::Restored),
        Err(e) if e.is_gone() && !dir.exists() => Ok(Restored::Gone),
        Err(e) => Err(e),
    }
}

/// The outcome of restoring many entries.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub restored: Vec<String>,
    pub gone: Vec<String>,
    pub failed: Vec<(String, CgroupError)>,
}

impl RestoreReport {
    /// True when nothing failed.
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Restores every journal entry accepted by `select`, then drops the restored and gone
/// entries from the journal (failed ones stay, to be retried).
pub fn restore_journal(
    cgroup_root: &Path,
    journal: &mut Journal,
    select: impl Fn(&str) -> bool,
) -> Result<RestoreReport, JournalError> {
    let mut report = RestoreReport::default();
    let selected: Vec<(String, Entry)> = journal
        .entries()
        .filter(|(k, _)| select(k))
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect();
    for (key, entry) in selected {
        match restore_entry(cgroup_root, &key, &entry) {
            Ok(Restored::Restored) => {
                info!(cgroup = key, cpu_max = entry.cpu_max, "restored original");
                report.restored.push(key);
            }
            Ok(Restored::Gone) => {
                debug!(cgroup = key, "container gone; journal entry pruned");
                report.gone.push(key);
            }
            Err(e) => {
                warn!(cgroup = key, error = %e, "restore failed; entry kept");
                report.failed.push((key, e));
            }
        }
    }
    journal.remove_all(
        report
            .restored
            .iter()
            .chain(report.gone.iter())
            .map(String::as_str),
    )?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "kubepods/burstable/pod1234-abcd/0123456789abcdef0123";

    fn entry(cpu: &str) -> Entry {
        Entry {
            pod_uid: "1234-abcd".into(),
            container_id: "0123456789abcdef0123".into(),
            namespace: String::new(),
            pod: String::new(),
            container: String::new(),
            cpu_max: cpu.into(),
            cpu_max_burst: None,
            pod_cpu_max: None,
            memory_high: None,
            recorded_at: 0,
        }
    }

    #[test]
    fn invalid_values_are_never_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "200000 100000\n").unwrap();
        let bad = CpuMax {
            quota_us: Some(10),
            period_us: 100_000,
        };
        let err = write_cpu_max(dir.path(), &bad).unwrap_err();
        assert_eq!(err.kind(), "invalid_value");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cpu.max")).unwrap(),
            "200000 100000\n"
        );
    }

    #[test]
    fn quota_keeps_period() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "100000 50000\n").unwrap();
        let current = parse_cpu_max("100000 50000").unwrap();
        let now = set_cpu_quota(dir.path(), &current, 100).unwrap();
        assert_eq!(now.to_string(), "5000 50000");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cpu.max")).unwrap(),
            "5000 50000"
        );
    }

    #[test]
    fn restore_puts_back_prunes_gone_and_keeps_failures() {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let dir = root.path().join(KEY);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.max"), "10000 100000\n").unwrap();
        let gone_key = "kubepods/burstable/pod1234-abcd/fedcba98765432100000";
        let bad_key = "kubepods/burstable/pod1234-abcd/00000000000000000000";
        std::fs::create_dir_all(root.path().join(bad_key)).unwrap();
        let mut journal = Journal::load(state.path()).unwrap();
        journal.record(KEY, entry("max 100000")).unwrap();
        journal.record(gone_key, entry("200000 100000")).unwrap();
        journal.record(bad_key, entry("not a value")).unwrap();
        let report = restore_journal(root.path(), &mut journal, |_| true).unwrap();
        assert_eq!(report.restored, vec![KEY.to_string()]);
        assert_eq!(report.gone, vec![gone_key.to_string()]);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "max 100000"
        );
        let reloaded = Journal::load(state.path()).unwrap();
        assert_eq!(reloaded.len(), 1);
        assert!(reloaded.get(bad_key).is_some());
    }

    #[test]
    fn burst_goes_down_before_the_quota_and_up_after() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "200000 100000\n").unwrap();
        std::fs::write(dir.path().join("cpu.max.burst"), "150000\n").unwrap();
        let current = parse_cpu_max("200000 100000").unwrap();
        let (now, burst) = set_cpu(dir.path(), &current, 500, 0.5).unwrap();
        assert_eq!(now.to_string(), "50000 100000");
        assert_eq!(burst, Some(25_000));
        let (now, burst) = set_cpu(dir.path(), &now, 1000, 0.5).unwrap();
        assert_eq!((now.quota_us, burst), (Some(100_000), Some(50_000)));
        // Without a ratio, an existing burst above the new quota is still lowered first.
        std::fs::write(dir.path().join("cpu.max.burst"), "90000\n").unwrap();
        let (_, burst) = set_cpu(dir.path(), &now, 100, 0.0).unwrap();
        assert_eq!(burst, Some(0));
    }

    #[test]
    fn memory_high_is_page_aligned_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.high"), "max\n").unwrap();
        let got = set_memory_high(
            dir.path(),
            Some(100 * 1024 * 1024 + 123),
            Duration::from_secs(1),
        );
        assert_eq!(got.unwrap(), Some(100 * 1024 * 1024));
        assert_eq!(
            set_memory_high(dir.path(), None, Duration::from_secs(1)).unwrap(),
            None
        );
        assert_eq!(
            set_memory_high(dir.path(), Some(10), Duration::from_secs(1))
                .unwrap_err()
                .kind(),
            "invalid_value"
        );
    }

    #[test]
    fn a_write_that_blocks_times_out() {
        // A FIFO with no reader blocks open(2) for writing: the stand-in for a write that
        // reclaims for a long time.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("memory.reclaim");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let started = std::time::Instant::now();
        let err = reclaim_memory(dir.path(), 4096, Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), "write_timeout");
        assert!(started.elapsed() < Duration::from_secs(2));
        // Unblock the writer thread so it ends.
        let _ = std::fs::File::open(&fifo);
    }

    #[test]
    fn restore_puts_back_memory_and_burst() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(KEY);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.max"), "10000 100000\n").unwrap();
        std::fs::write(dir.join("cpu.max.burst"), "5000\n").unwrap();
        std::fs::write(dir.join("memory.high"), "52428800\n").unwrap();
        let mut e = entry("200000 100000");
        e.cpu_max_burst = Some("50000".into());
        e.memory_high = Some("max".into());
        assert_eq!(
            restore_entry(root.path(), KEY, &e).unwrap(),
            Restored::Restored
        );
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("cpu.max"), "200000 100000");
        assert_eq!(read("cpu.max.burst"), "50000");
        assert_eq!(read("memory.high"), "max");
    }

    #[test]
    fn the_pod_is_raised_first_and_lowered_last_then_restored() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(KEY);
        let pod = dir.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.max"), "50000 100000\n").unwrap();
        std::fs::write(pod.join("cpu.max"), "60000 100000\n").unwrap();
        let pod_original = parse_cpu_max("60000 100000").unwrap();
        let current = parse_cpu_max("50000 100000").unwrap();
        let read = |d: &Path| std::fs::read_to_string(d.join("cpu.max")).unwrap();
        assert_eq!(pod_quota_for(&pod_original, Some(500), 1500), Some(1600));
        assert_eq!(pod_quota_for(&pod_original, Some(500), 300), Some(600));
        let (now, _) =
            set_cpu_in_pod(&dir, &pod, &current, 1500, 0.0, &pod_original, Some(500)).unwrap();
        assert_eq!(
            (read(&dir).as_str(), read(&pod).as_str()),
            ("150000 100000", "160000 100000")
        );
        set_cpu_in_pod(&dir, &pod, &now, 200, 0.0, &pod_original, Some(500)).unwrap();
        assert_eq!(
            (read(&dir).as_str(), read(&pod).as_str()),
            ("20000 100000", "60000 100000")
        );
        // Restore puts both back.
        set_cpu_in_pod(&dir, &pod, &now, 1500, 0.0, &pod_original, Some(500)).unwrap();
        let mut e = entry("50000 100000");
        e.pod_cpu_max = Some("60000 100000".into());
        assert_eq!(
            restore_entry(root.path(), KEY, &e).unwrap(),
            Restored::Restored
        );
        assert_eq!(
            (read(&dir).as_str(), read(&pod).as_str()),
            ("50000 100000", "60000 100000")
        );
        // An unlimited pod is never written.
        std::fs::write(pod.join("cpu.max"), "max 100000\n").unwrap();
        let unlimited = parse_cpu_max("max 100000").unwrap();
        set_cpu_in_pod(&dir, &pod, &current, 1500, 0.0, &unlimited, Some(500)).unwrap();
        assert_eq!(read(&pod), "max 100000\n");
    }

    #[test]
    fn tampered_keys_are_refused() {
        let root = tempfile::tempdir().unwrap();
        for key in [
            "../../etc",
            "system.slice/foo",
            "/kubepods/burstable/pod1/0123456789abcdef",
        ] {
            let err = restore_entry(root.path(), key, &entry("max 100000")).unwrap_err();
            assert_eq!(err.kind(), "invalid_value", "{key}");
        }
    }
}
