//! The actuator: the only code that writes cgroup files. Every value is validated against the
//! kernel's bounds before it is written, written whole in one `write(2)`, and read back to
//! confirm. Restoring goes through the same path and puts back only what the agent owns:
//! each file is read first and classified against its ownership record, so a value someone
//! else wrote after the agent is left as it is.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::cgroup::parse::{parse_cpu_max, parse_u64_or_max};
use crate::cgroup::{CgroupError, CpuMax, read_value, write_once, write_verified};
use crate::discovery::cgroup_path::{parse_container_path, parse_pod_path};
use crate::journal::{Journal, JournalError};
use crate::ownership::{ContainerRecord, CpuMaxValue, Found, Limit, PodRecord};
use crate::sampler::ProxyFiles;

/// The kernel's page size: `memory.high` is stored in whole pages (4 KiB on x86-64, 16 or
/// 64 KiB on some arm64 kernels), so values are rounded down to it before writing.
pub fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096)
    })
}

/// `bytes` rounded down to whole pages, as the kernel stores `memory.high`.
pub fn page_align(bytes: u64) -> u64 {
    bytes & !(page_size() - 1)
}

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

/// Reads a cgroup's `cpu.max`.
pub fn read_cpu_max(dir: &Path) -> Result<CpuMax, CgroupError> {
    read_value(dir, "cpu.max", parse_cpu_max)
}

/// Reads `cpu.max.burst` (`None` when the kernel has no burst, before 5.14).
pub fn read_cpu_burst(dir: &Path) -> Result<Option<u64>, CgroupError> {
    match read_value(dir, "cpu.max.burst", parse_u64_or_max) {
        Ok(v) => Ok(Some(v.unwrap_or(u64::MAX))),
        Err(e) if e.is_gone() && dir.is_dir() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `memory.high` (`None` = `max`).
pub fn read_memory_high(dir: &Path) -> Result<Option<u64>, CgroupError> {
    read_value(dir, "memory.high", parse_u64_or_max)
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

/// The `cpu.max.burst` to hold under a new quota of `quota_us`: with `ratio` > 0 that share
/// of the quota; otherwise the current burst, lowered to the quota if it is above it (the
/// kernel refuses a burst above the quota). `None` when the kernel has no burst.
pub fn burst_target(current: Option<u64>, quota_us: Option<u64>, ratio: f64) -> Option<u64> {
    let current = current?;
    let quota = quota_us.unwrap_or(u64::MAX);
    if ratio > 0.0 {
        Some(((quota as f64 * ratio) as u64).min(quota))
    } else {
        Some(current.min(quota))
    }
}

/// Where a container's CPU writes go: its files by path (opened for each write), or the
/// descriptors the sampler holds open read-write ([`ProxyFiles`]). Either way each value is
/// written whole in one `write(2)` and read back.
trait CpuFiles {
    /// The container's cgroup directory (for errors).
    fn dir(&self) -> &Path;
    /// Writes a validated `cpu.max` (`text` is its form on the file) and reads it back.
    fn write_cpu_max(&mut self, text: &str, value: &CpuMax) -> Result<CpuMax, CgroupError>;
    /// Writes `cpu.max.burst` and reads it back.
    fn write_burst(&mut self, burst_us: u64) -> Result<(), CgroupError>;
}

/// A container's CPU files by path.
struct ByPath<'a>(&'a Path);

impl CpuFiles for ByPath<'_> {
    fn dir(&self) -> &Path {
        self.0
    }
    fn write_cpu_max(&mut self, text: &str, value: &CpuMax) -> Result<CpuMax, CgroupError> {
        write_verified(self.0, "cpu.max", text, value, parse_cpu_max)
    }
    fn write_burst(&mut self, burst_us: u64) -> Result<(), CgroupError> {
        write_burst(self.0, burst_us)
    }
}

/// A container's CPU files through the descriptors its sampler holds (each falls back to the
/// path when it is not held read-write).
struct Held<'a> {
    files: &'a ProxyFiles,
    buf: &'a mut Vec<u8>,
}

impl CpuFiles for Held<'_> {
    fn dir(&self) -> &Path {
        self.files.dir()
    }
    fn write_cpu_max(&mut self, text: &str, value: &CpuMax) -> Result<CpuMax, CgroupError> {
        self.files
            .cpu_max_file()
            .write_verified(self.buf, text, value, parse_cpu_max)
    }
    fn write_burst(&mut self, burst_us: u64) -> Result<(), CgroupError> {
        match self.files.cpu_burst_file() {
            Some(file) => file
                .write_verified(
                    self.buf,
                    &burst_us.to_string(),
                    &Some(burst_us),
                    parse_u64_or_max,
                )
                .map(|_| ()),
            // Not there when the proxy was found: the path says what the kernel says now.
            None => write_burst(self.files.dir(), burst_us),
        }
    }
}

/// Writes a container's new `cpu.max` and, when it changes, its `cpu.max.burst`
/// (`burst` = (now, to)): burst goes down before the quota and up after it, both read back.
pub fn write_cpu(
    dir: &Path,
    cpu_max: &CpuMax,
    burst: Option<(u64, u64)>,
) -> Result<(), CgroupError> {
    write_cpu_to(&mut ByPath(dir), cpu_max, burst)
}

/// [`write_cpu`] through the descriptors `files` holds open read-write (no path lookups, no
/// opens): the same validation, order and read-back; `buf` is the scratch buffer for the
/// read-backs.
pub fn write_cpu_held(
    files: &ProxyFiles,
    buf: &mut Vec<u8>,
    cpu_max: &CpuMax,
    burst: Option<(u64, u64)>,
) -> Result<(), CgroupError> {
    write_cpu_to(&mut Held { files, buf }, cpu_max, burst)
}

fn write_cpu_to(
    files: &mut impl CpuFiles,
    cpu_max: &CpuMax,
    burst: Option<(u64, u64)>,
) -> Result<(), CgroupError> {
    let text = cpu_max.to_string();
    // Validated before anything is written (the burst included).
    cpu_max.validate().map_err(|reason| CgroupError::Invalid {
        path: files.dir().join("cpu.max"),
        value: text.clone(),
        reason,
    })?;
    if let Some((now, to)) = burst
        && to < now
    {
        files.write_burst(to)?;
    }
    files.write_cpu_max(&text, cpu_max)?;
    if let Some((now, to)) = burst
        && to > now
    {
        files.write_burst(to)?;
    }
    Ok(())
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

/// Writes `memory.high` (`None` = `max`) with a timeout, reading it back to confirm. The
/// kernel keeps whole pages: values the agent computes are [`page_align`]ed first; an
/// original is written back as the kernel showed it.
pub fn set_memory_high(
    dir: &Path,
    bytes: Option<u64>,
    timeout: Duration,
) -> Result<Option<u64>, CgroupError> {
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

/// Whether the kernel's `memory.reclaim` takes `swappiness=0` (Linux 6.11+): unknown until
/// the first reclaim, then known for the life of the process.
static RECLAIM_SWAPPINESS: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const TAKES: u8 = 1;
const REFUSES: u8 = 2;

/// The text asking `memory.reclaim` for `bytes` of page cache only (anonymous memory is never
/// swapped out for it), on kernels that take the `swappiness` key.
pub fn reclaim_text(bytes: u64) -> String {
    format!("{bytes} swappiness=0")
}

/// Asks the kernel to reclaim `bytes` from the cgroup once (`memory.reclaim`, Linux 5.19+),
/// with a timeout: page cache only (`swappiness=0`) where the kernel takes it, else as the
/// kernel chooses (without swap that is page cache too). The kernel answers `EAGAIN` when it
/// freed less than asked: that is not an error (there was less to reclaim).
pub fn reclaim_memory(dir: &Path, bytes: u64, timeout: Duration) -> Result<(), CgroupError> {
    let owned = dir.to_path_buf();
    let plain = bytes.to_string();
    let errno = |e: &CgroupError| match e {
        CgroupError::Write { source, .. } => source.raw_os_error(),
        _ => None,
    };
    let less_freed = move |r: Result<(), CgroupError>| match r {
        Err(e) if errno(&e) == Some(nix::errno::Errno::EAGAIN as i32) => Ok(()),
        other => other,
    };
    with_timeout(
        dir.join("memory.reclaim"),
        plain.clone(),
        timeout,
        move || {
            if RECLAIM_SWAPPINESS.load(Ordering::Relaxed) != REFUSES {
                match less_freed(write_once(&owned, "memory.reclaim", &reclaim_text(bytes))) {
                    Ok(()) => {
                        RECLAIM_SWAPPINESS.store(TAKES, Ordering::Relaxed);
                        return Ok(());
                    }
                    // An older kernel does not know the key: plain from now on.
                    Err(e)
                        if errno(&e) == Some(nix::errno::Errno::EINVAL as i32)
                            && RECLAIM_SWAPPINESS.load(Ordering::Relaxed) == UNKNOWN =>
                    {
                        RECLAIM_SWAPPINESS.store(REFUSES, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
            less_freed(write_once(&owned, "memory.reclaim", &plain))
        },
    )
}

/// What restoring one record found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// At least one original is back (verified).
    Restored,
    /// Nothing of the agent's was there (untouched, or someone else's value since).
    Unchanged,
    /// The cgroup no longer exists: nothing to restore.
    Gone,
}

fn invalid(path: std::path::PathBuf, value: String, reason: &str) -> CgroupError {
    CgroupError::Invalid {
        path,
        value,
        reason: reason.to_string(),
    }
}

/// The directory of a journaled container key. The key comes from a file on disk: only a
/// canonical container cgroup path is accepted, so a tampered journal can never direct
/// writes outside the pod hierarchy.
fn container_dir(cgroup_root: &Path, key: &str) -> Result<std::path::PathBuf, CgroupError> {
    let bad = |reason| invalid(cgroup_root.join(key), key.to_string(), reason);
    let parsed = parse_container_path(key)
        .ok_or_else(|| bad("journal key is not a container cgroup path"))?;
    if parsed.container_rel != key || key.split('/').any(|p| p == "..") {
        return Err(bad("journal key is not a canonical container cgroup path"));
    }
    Ok(cgroup_root.join(key))
}

/// The directory of a journaled pod key (a kubelet pod cgroup path, canonical).
fn pod_dir(cgroup_root: &Path, key: &str) -> Result<std::path::PathBuf, CgroupError> {
    if parse_pod_path(key).is_none() {
        return Err(invalid(
            cgroup_root.join(key),
            key.to_string(),
            "journal key is not a canonical pod cgroup path",
        ));
    }
    Ok(cgroup_root.join(key))
}

/// Puts a container's originals back where the agent's values still stand.
pub fn restore_container(
    cgroup_root: &Path,
    key: &str,
    record: &ContainerRecord,
) -> Result<Restored, CgroupError> {
    let dir = container_dir(cgroup_root, key)?;
    if !dir.is_dir() {
        return Ok(Restored::Gone);
    }
    let restore = || -> Result<Restored, CgroupError> {
        let mut wrote = false;
        let cpu_now = CpuMaxValue(read_cpu_max(&dir)?);
        let cpu_ours = record.cpu_max.classify(&cpu_now) == Found::Ours;
        let burst = match record.cpu_max_burst {
            Some(owned) => match read_cpu_burst(&dir)? {
                Some(now) => {
                    let ours = owned.classify(&Limit(Some(now))) == Found::Ours;
                    Some((now, owned.original.0.unwrap_or(0), ours))
                }
                None => None,
            },
            None => None,
        };
        // Burst may not exceed the quota: clear ours, put the quota back, then the burst.
        if let Some((now, _, true)) = burst
            && now > 0
        {
            write_burst(&dir, 0)?;
        }
        if cpu_ours && cpu_now != record.cpu_max.original {
            write_cpu_max(&dir, &record.cpu_max.original.0)?;
            wrote = true;
        }
        if let Some((now, original, true)) = burst
            && (original > 0 || now > 0)
        {
            write_burst(&dir, original)?;
            wrote |= original != now;
        }
        if let Some(owned) = record.memory_high {
            let now = Limit(read_memory_high(&dir)?);
            if owned.classify(&now) == Found::Ours && now != owned.original {
                // Putting a limit back up never reclaims; a lower original may, so bound it.
                set_memory_high(&dir, owned.original.0, Duration::from_secs(10))?;
                wrote = true;
            }
        }
        Ok(if wrote {
            Restored::Restored
        } else {
            Restored::Unchanged
        })
    };
    match restore() {
        Err(e) if e.is_gone() && !dir.exists() => Ok(Restored::Gone),
        other => other,
    }
}

/// Puts a pod's original `cpu.max` back if the agent's raised value still stands (call once
/// no governed container of the pod is above its own limit any more).
pub fn restore_pod(
    cgroup_root: &Path,
    key: &str,
    record: &PodRecord,
) -> Result<Restored, CgroupError> {
    let dir = pod_dir(cgroup_root, key)?;
    if !dir.is_dir() {
        return Ok(Restored::Gone);
    }
    match read_cpu_max(&dir) {
        Ok(now) => {
            let now = CpuMaxValue(now);
            if record.cpu_max.classify(&now) == Found::Ours && now != record.cpu_max.original {
                write_cpu_max(&dir, &record.cpu_max.original.0)?;
                Ok(Restored::Restored)
            } else {
                Ok(Restored::Unchanged)
            }
        }
        Err(e) if e.is_gone() && !dir.exists() => Ok(Restored::Gone),
        Err(e) => Err(e),
    }
}

/// The outcome of restoring many records.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Containers whose originals were put back.
    pub restored: Vec<String>,
    /// Containers with nothing of the agent's left (untouched or changed by someone else).
    pub unchanged: Vec<String>,
    pub gone: Vec<String>,
    /// Containers and pods that could not be restored: kept in the journal.
    pub failed: Vec<(String, CgroupError)>,
    /// Pods put back to their original quota.
    pub pods_restored: Vec<String>,
    /// The journal could not be updated afterwards.
    pub journal_error: Option<JournalError>,
}

impl RestoreReport {
    /// True when nothing failed.
    pub fn complete(&self) -> bool {
        self.failed.is_empty() && self.journal_error.is_none()
    }
}

/// Restores every container record accepted by `select` and drops the restored, unchanged
/// and gone ones (failed ones stay, to be retried); a pod is restored and dropped once no
/// container holds it. The journal is changed in memory only: the caller flushes it.
pub fn restore_records(
    cgroup_root: &Path,
    journal: &mut Journal,
    select: impl Fn(&str) -> bool,
) -> RestoreReport {
    let mut report = RestoreReport::default();
    let selected: Vec<(String, ContainerRecord)> = journal
        .containers()
        .filter(|(k, _)| select(k))
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect();
    for (key, record) in selected {
        match restore_container(cgroup_root, &key, &record) {
            Ok(outcome) => {
                match outcome {
                    Restored::Restored => {
                        info!(cgroup = key, cpu_max = %record.cpu_max.original.0, "restored original");
                        report.restored.push(key.clone());
                    }
                    Restored::Unchanged => report.unchanged.push(key.clone()),
                    Restored::Gone => {
                        debug!(cgroup = key, "container gone; record dropped");
                        report.gone.push(key.clone());
                    }
                }
                journal.remove_container(&key);
                if let Some(pod) = record.pod_hold.as_deref()
                    && let Some(mut p) = journal.pod_mut(pod)
                {
                    p.holders.remove(&key);
                }
            }
            Err(e) => {
                warn!(cgroup = key, error = %e, "restore failed; record kept");
                report.failed.push((key, e));
            }
        }
    }
    release_free_pods(cgroup_root, journal, &mut report);
    report
}

/// Restores and drops every pod record that no container holds any more.
pub fn release_free_pods(cgroup_root: &Path, journal: &mut Journal, report: &mut RestoreReport) {
    let free: Vec<(String, PodRecord)> = journal
        .pods()
        .filter(|(_, p)| p.holders.is_empty())
        .map(|(k, p)| (k.clone(), p.clone()))
        .collect();
    for (key, pod) in free {
        match restore_pod(cgroup_root, &key, &pod) {
            Ok(outcome) => {
                if outcome == Restored::Restored {
                    info!(pod_cgroup = key, cpu_max = %pod.cpu_max.original.0, "restored the pod's original quota");
                    report.pods_restored.push(key.clone());
                }
                journal.remove_pod(&key);
            }
            Err(e) => {
                warn!(pod_cgroup = key, error = %e, "pod restore failed; record kept");
                report.failed.push((key, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::Owned;

    const KEY: &str = "kubepods/burstable/pod1234-abcd/0123456789abcdef0123";
    const POD: &str = "kubepods/burstable/pod1234-abcd";

    fn cpu(text: &str) -> CpuMaxValue {
        CpuMaxValue(parse_cpu_max(text).unwrap())
    }

    fn record(original: &str, wrote: Option<&str>) -> ContainerRecord {
        let mut cpu_max = Owned::new(cpu(original));
        if let Some(w) = wrote {
            cpu_max.confirm(cpu(w));
        }
        ContainerRecord {
            id: crate::identity::Identity {
                pod_uid: "1234-abcd".into(),
                container_id: "0123456789abcdef0123".into(),
                ..Default::default()
            },
            cpu_max,
            cpu_max_burst: None,
            memory_high: None,
            pod_hold: None,
            recorded_at: 0,
        }
    }

    fn read(dir: &Path, file: &str) -> String {
        std::fs::read_to_string(dir.join(file)).unwrap()
    }

    #[test]
    fn invalid_values_are_never_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "200000 100000\n").unwrap();
        let bad = CpuMax {
            quota_us: Some(10),
            period_us: 100_000,
        };
        let err = write_cpu(dir.path(), &bad, None).unwrap_err();
        assert_eq!(err.kind(), crate::metrics::ErrorKind::InvalidValue);
        assert_eq!(read(dir.path(), "cpu.max"), "200000 100000\n");
    }

    #[test]
    fn burst_goes_down_before_the_quota_and_up_after() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "200000 100000\n").unwrap();
        std::fs::write(dir.path().join("cpu.max.burst"), "150000\n").unwrap();
        let to = burst_target(Some(150_000), Some(50_000), 0.5);
        assert_eq!(to, Some(25_000));
        write_cpu(dir.path(), &cpu("50000 100000").0, Some((150_000, 25_000))).unwrap();
        assert_eq!(read(dir.path(), "cpu.max"), "50000 100000");
        assert_eq!(read(dir.path(), "cpu.max.burst"), "25000");
        // Without a ratio, a burst above the new quota is lowered to it, else kept.
        assert_eq!(burst_target(Some(90_000), Some(10_000), 0.0), Some(10_000));
        assert_eq!(burst_target(Some(5_000), Some(10_000), 0.0), Some(5_000));
        assert_eq!(burst_target(None, Some(10_000), 0.5), None);
    }

    #[test]
    fn memory_high_is_whole_pages_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.high"), "max\n").unwrap();
        let bytes = page_align(100 * 1024 * 1024 + 123);
        assert_eq!(bytes % page_size(), 0);
        let got = set_memory_high(dir.path(), Some(bytes), Duration::from_secs(1));
        assert_eq!(got.unwrap(), Some(bytes));
        assert_eq!(
            set_memory_high(dir.path(), None, Duration::from_secs(1)).unwrap(),
            None
        );
        assert_eq!(
            set_memory_high(dir.path(), Some(0), Duration::from_secs(1))
                .unwrap_err()
                .kind(),
            crate::metrics::ErrorKind::InvalidValue
        );
    }

    #[test]
    fn reclaim_asks_for_page_cache_only() {
        assert_eq!(reclaim_text(1 << 20), "1048576 swappiness=0");
        // A file that takes the text (the kernel from 6.11 on) gets it in one write.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.reclaim");
        std::fs::write(&file, "").unwrap();
        // Nothing in this process answers EINVAL, so the key is never given up on here.
        reclaim_memory(dir.path(), 1 << 20, Duration::from_secs(1)).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "1048576 swappiness=0"
        );
        assert_eq!(RECLAIM_SWAPPINESS.load(Ordering::Relaxed), TAKES);
    }

    #[test]
    fn the_page_size_is_the_kernels() {
        let out = std::process::Command::new("getconf")
            .arg("PAGESIZE")
            .output()
            .unwrap();
        let expected: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(page_size(), expected);
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
        assert_eq!(err.kind(), crate::metrics::ErrorKind::WriteTimeout);
        assert!(started.elapsed() < Duration::from_secs(2));
        // Unblock the writer thread so it ends.
        let _ = std::fs::File::open(&fifo);
    }

    #[test]
    fn restore_puts_back_ours_leaves_outside_values_and_prunes_gone() {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let dir = root.path().join(KEY);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.max"), "10000 100000\n").unwrap();
        let outside_key = "kubepods/burstable/pod1234-abcd/00000000000000000000";
        let outside = root.path().join(outside_key);
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("cpu.max"), "300000 100000\n").unwrap();
        let gone_key = "kubepods/burstable/pod1234-abcd/fedcba98765432100000";
        let mut journal = Journal::load(state.path()).unwrap();
        journal.insert_container(KEY, record("max 100000", Some("10000 100000")));
        journal.insert_container(outside_key, record("200000 100000", Some("10000 100000")));
        journal.insert_container(gone_key, record("200000 100000", Some("10000 100000")));
        let report = restore_records(root.path(), &mut journal, |_| true);
        journal.flush().unwrap();
        assert!(report.complete());
        assert_eq!(report.restored, vec![KEY.to_string()]);
        assert_eq!(report.unchanged, vec![outside_key.to_string()]);
        assert_eq!(report.gone, vec![gone_key.to_string()]);
        assert_eq!(read(&dir, "cpu.max"), "max 100000");
        assert_eq!(
            read(&outside, "cpu.max"),
            "300000 100000\n",
            "someone else's value stays"
        );
        assert!(Journal::load(state.path()).unwrap().is_empty());
    }

    #[test]
    fn restore_puts_back_memory_and_burst() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(KEY);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.max"), "10000 100000\n").unwrap();
        std::fs::write(dir.join("cpu.max.burst"), "5000\n").unwrap();
        let high = page_align(50 << 20);
        std::fs::write(dir.join("memory.high"), format!("{high}\n")).unwrap();
        let mut r = record("200000 100000", Some("10000 100000"));
        let mut burst = Owned::new(Limit(Some(50_000)));
        burst.confirm(Limit(Some(5_000)));
        r.cpu_max_burst = Some(burst);
        let mut mem = Owned::new(Limit(None));
        mem.confirm(Limit(Some(high)));
        r.memory_high = Some(mem);
        assert_eq!(
            restore_container(root.path(), KEY, &r).unwrap(),
            Restored::Restored
        );
        assert_eq!(read(&dir, "cpu.max"), "200000 100000");
        assert_eq!(read(&dir, "cpu.max.burst"), "50000");
        assert_eq!(read(&dir, "memory.high"), "max");
    }

    #[test]
    fn a_pod_is_restored_only_when_its_last_holder_goes() {
        let root = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let a = root.path().join(KEY);
        let b_key = format!("{POD}/fedcba98765432100000");
        let b = root.path().join(&b_key);
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("cpu.max"), "150000 100000\n").unwrap();
        }
        let pod = root.path().join(POD);
        std::fs::write(pod.join("cpu.max"), "300000 100000\n").unwrap();
        let mut journal = Journal::load(state.path()).unwrap();
        for k in [KEY, b_key.as_str()] {
            let mut r = record("50000 100000", Some("150000 100000"));
            r.pod_hold = Some(POD.into());
            journal.insert_container(k, r);
        }
        let mut pod_cpu = Owned::new(cpu("100000 100000"));
        pod_cpu.confirm(cpu("300000 100000"));
        journal.insert_pod(
            POD,
            PodRecord {
                cpu_max: pod_cpu,
                holders: [KEY.to_string(), b_key.clone()].into(),
            },
        );
        let report = restore_records(root.path(), &mut journal, |k| k == KEY);
        assert!(report.complete());
        assert_eq!(read(&a, "cpu.max"), "50000 100000");
        assert_eq!(
            read(&pod, "cpu.max"),
            "300000 100000\n",
            "b still holds the pod"
        );
        let report = restore_records(root.path(), &mut journal, |_| true);
        journal.flush().unwrap();
        assert_eq!(report.pods_restored, vec![POD.to_string()]);
        assert_eq!(read(&pod, "cpu.max"), "100000 100000");
        assert!(Journal::load(state.path()).unwrap().is_empty());
    }

    #[test]
    fn tampered_keys_are_refused() {
        let root = tempfile::tempdir().unwrap();
        for key in [
            "../../etc",
            "system.slice/foo",
            "/kubepods/burstable/pod1/0123456789abcdef",
        ] {
            let err = restore_container(root.path(), key, &record("max 100000", None)).unwrap_err();
            assert_eq!(err.kind(), crate::metrics::ErrorKind::InvalidValue, "{key}");
        }
        let pod = PodRecord {
            cpu_max: Owned::new(cpu("max 100000")),
            holders: Default::default(),
        };
        for key in ["../etc", "system.slice", "kubepods/../pod1", ""] {
            assert_eq!(
                restore_pod(root.path(), key, &pod).unwrap_err().kind(),
                crate::metrics::ErrorKind::InvalidValue,
                "{key}"
            );
        }
    }

    /// A container's CPU files on tmpfs where there is one (plain files: these check the
    /// order and the read-backs, not the kernel's rules).
    fn cpu_fixture(cpu_max: &str, burst: &str) -> tempfile::TempDir {
        let dir = crate::cgroup::io::tests::fixture_dir();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 0\n").unwrap();
        std::fs::write(dir.path().join("cpu.max"), format!("{cpu_max}\n")).unwrap();
        std::fs::write(dir.path().join("cpu.max.burst"), format!("{burst}\n")).unwrap();
        dir
    }

    fn file(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn held_cpu_write_validates_orders_and_reads_back() {
        let dir = cpu_fixture("200000 100000", "80000");
        let files = ProxyFiles::open(dir.path()).unwrap();
        let mut buf = Vec::new();
        assert_eq!(files.read_cpu_burst(&mut buf).unwrap(), Some(80_000));
        // Invalid: refused before anything is written, the burst included.
        let bad = parse_cpu_max("500 100000").unwrap();
        let err = write_cpu_held(&files, &mut buf, &bad, Some((80_000, 0))).unwrap_err();
        assert_eq!(err.kind(), crate::metrics::ErrorKind::InvalidValue);
        assert!(err.to_string().contains("cpu.max"), "{err}");
        assert_eq!(file(dir.path(), "cpu.max"), "200000 100000");
        assert_eq!(file(dir.path(), "cpu.max.burst"), "80000");
        // Shrinking below the burst: both written and read back.
        let v = parse_cpu_max("50000 100000").unwrap();
        write_cpu_held(&files, &mut buf, &v, Some((80_000, 25_000))).unwrap();
        assert_eq!(file(dir.path(), "cpu.max"), "50000 100000");
        assert_eq!(file(dir.path(), "cpu.max.burst"), "25000");
        assert_eq!(files.read_cpu_burst(&mut buf).unwrap(), Some(25_000));
    }

    #[test]
    fn held_cpu_write_lowers_burst_before_quota_and_raises_it_after() {
        // A burst file whose writes fail (/dev/full) shows the order: lowering the burst
        // fails before cpu.max is touched; raising it fails after cpu.max was written.
        assert!(Path::new("/dev/full").exists(), "this test needs /dev/full");
        let dir = cpu_fixture("200000 100000", "0");
        std::fs::remove_file(dir.path().join("cpu.max.burst")).unwrap();
        std::os::unix::fs::symlink("/dev/full", dir.path().join("cpu.max.burst")).unwrap();
        let files = ProxyFiles::open(dir.path()).unwrap();
        let mut buf = Vec::new();
        let v = parse_cpu_max("50000 100000").unwrap();
        let err = write_cpu_held(&files, &mut buf, &v, Some((80_000, 25_000))).unwrap_err();
        assert!(err.to_string().contains("cpu.max.burst"), "{err}");
        assert_eq!(file(dir.path(), "cpu.max"), "200000 100000");
        let v = parse_cpu_max("300000 100000").unwrap();
        let err = write_cpu_held(&files, &mut buf, &v, Some((0, 100_000))).unwrap_err();
        assert!(err.to_string().contains("cpu.max.burst"), "{err}");
        assert_eq!(file(dir.path(), "cpu.max"), "300000 100000");
    }

    #[test]
    fn held_and_path_writes_agree() {
        let held = cpu_fixture("200000 100000", "0");
        let path = cpu_fixture("200000 100000", "0");
        let files = ProxyFiles::open(held.path()).unwrap();
        let mut buf = Vec::new();
        for (v, burst) in [
            ("150000 100000", Some((0, 30_000))),
            ("60000 100000", Some((30_000, 12_000))),
            ("max 100000", None),
            ("1000 1000", Some((12_000, 1_000))),
        ] {
            let v = parse_cpu_max(v).unwrap();
            write_cpu_held(&files, &mut buf, &v, burst).unwrap();
            write_cpu(path.path(), &v, burst).unwrap();
            for f in ["cpu.max", "cpu.max.burst"] {
                assert_eq!(file(held.path(), f), file(path.path(), f), "{f} after {v}");
            }
        }
    }

    #[test]
    fn no_burst_file_means_no_burst() {
        let dir = cpu_fixture("200000 100000", "0");
        std::fs::remove_file(dir.path().join("cpu.max.burst")).unwrap();
        let files = ProxyFiles::open(dir.path()).unwrap();
        let mut buf = Vec::new();
        assert_eq!(files.read_cpu_burst(&mut buf).unwrap(), None);
        let v = parse_cpu_max("50000 100000").unwrap();
        write_cpu_held(&files, &mut buf, &v, None).unwrap();
        assert_eq!(file(dir.path(), "cpu.max"), "50000 100000");
    }
}
