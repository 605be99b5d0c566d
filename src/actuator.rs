//! The actuator: the only code that writes cgroup files. Every value is validated against the
//! kernel's bounds before it is written, written whole in one `write(2)`, and read back to
//! confirm; restoring from the journal goes through the same path.

use std::path::Path;

use tracing::{debug, info, warn};

use crate::cgroup::parse::parse_cpu_max;
use crate::cgroup::{CgroupError, CpuMax, write_verified};
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
    write_cpu_max(dir, &current.with_millis(millis))
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
    let original = parse_cpu_max(&entry.cpu_max).map_err(|source| CgroupError::Parse {
        path: dir.join("cpu.max"),
        source,
    })?;
    match write_cpu_max(&dir, &original) {
        Ok(_) => Ok(Restored::Restored),
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
