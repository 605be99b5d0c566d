//! The journal of originals: for every cgroup the agent has changed, the values it had before
//! the first write. It is written durably (temp file, fsync, rename, fsync of the directory)
//! *before* that first write, so a crash at any point loses nothing: a restarted agent and
//! `sidecar-governor restore` take originals from here, never from values the agent wrote.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "journal.json";
const LOCK_NAME: &str = "agent.lock";
const VERSION: u32 = 1;

/// A failure reading or writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("create state directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("read journal {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "journal {path} is corrupt ({source}); it holds the original limits — inspect or move it aside by hand"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("journal {path} has version {found}, this agent reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("write journal {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("another sidecar-governor holds {path}; stop it first (it restores on exit)")]
    Busy { path: PathBuf },
}

/// The original values of one container, as raw file text (written back verbatim).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub pod_uid: String,
    pub container_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// `cpu.max` before the agent's first write.
    pub cpu_max: String,
    /// `cpu.max.burst` before the agent's first write, when the agent manages burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max_burst: Option<String>,
    /// The pod cgroup's `cpu.max` before the agent first raised it (`cpu.allowAboveLimit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cpu_max: Option<String>,
    /// `memory.high` before the agent's first write, when memory is governed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_high: Option<String>,
    /// Seconds since the epoch when recorded.
    pub recorded_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    /// Keyed by the container cgroup path relative to the cgroup root.
    entries: BTreeMap<String, Entry>,
}

/// The journal: loaded once, rewritten whole on every change.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

/// Holds the state directory's lock for as long as it lives.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Creates the state directory (mode 0700) if needed.
fn ensure_dir(dir: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| JournalError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

/// Takes the state directory's exclusive lock, so two agents (or an agent and `restore`)
/// never act on the same journal. Released when the returned value is dropped or the
/// process dies.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, JournalError> {
    ensure_dir(dir)?;
    let path = dir.join(LOCK_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| JournalError::Lock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(StateLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::Busy { path }),
        Err(fs::TryLockError::Error(source)) => Err(JournalError::Lock { path, source }),
    }
}

impl Journal {
    /// Loads the journal in `state_dir` (empty if there is none yet).
    pub fn load(state_dir: &Path) -> Result<Journal, JournalError> {
        let path = state_dir.join(FILE_NAME);
        let entries = match fs::read(&path) {
            Ok(bytes) => {
                let disk: OnDisk =
                    serde_json::from_slice(&bytes).map_err(|source| JournalError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                if disk.version != VERSION {
                    return Err(JournalError::Version {
                        path,
                        found: disk.version,
                    });
                }
                disk.entries
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(JournalError::Read { path, source }),
        };
        Ok(Journal { path, entries })
    }

    /// The original values recorded for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Every entry, by key.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records (or replaces) `key`'s originals and persists before returning.
    pub fn record(&mut self, key: &str, entry: Entry) -> Result<(), JournalError> {
        let previous = self.entries.insert(key.to_string(), entry);
        self.persist().inspect_err(|_| {
            // Keep memory equal to disk: the write did not happen.
            match previous {
                Some(p) => self.entries.insert(key.to_string(), p),
                None => self.entries.remove(key),
            };
        })
    }

    /// Changes `key`'s entry with `change` (if there is one) and persists before returning;
    /// on failure the entry is left as it was.
    pub fn update(
        &mut self,
        key: &str,
        change: impl FnOnce(&mut Entry),
    ) -> Result<(), JournalError> {
        let Some(entry) = self.entries.get_mut(key) else {
            return Ok(());
        };
        let before = entry.clone();
        change(entry);
        if *entry == before {
            return Ok(());
        }
        self.persist().inspect_err(|_| {
            self.entries.insert(key.to_string(), before);
        })
    }

    /// Forgets the given keys (restored or gone) and persists if anything changed.
    pub fn remove_all<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), JournalError> {
        let mut removed = Vec::new();
        for key in keys {
            if let Some(e) = self.entries.remove(key) {
                removed.push((key.to_string(), e));
            }
        }
        if removed.is_empty() {
            return Ok(());
        }
        self.persist().inspect_err(|_| self.entries.extend(removed))
    }

    /// Writes the whole journal atomically and durably.
    fn persist(&self) -> Result<(), JournalError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        ensure_dir(dir)?;
        let werr = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        let disk = OnDisk {
            version: VERSION,
            entries: self.entries.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&disk).map_err(|e| werr(io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut file = File::create(&tmp).map_err(werr)?;
            file.write_all(&bytes).map_err(werr)?;
            file.sync_all().map_err(werr)?;
        }
        fs::rename(&tmp, &self.path).map_err(werr)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(werr)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cpu: &str) -> Entry {
        Entry {
            pod_uid: "uid".into(),
            container_id: "abc".into(),
            namespace: String::new(),
            pod: String::new(),
            container: String::new(),
            cpu_max: cpu.into(),
            cpu_max_burst: None,
            pod_cpu_max: None,
            memory_high: None,
            recorded_at: 1,
        }
    }

    #[test]
    fn round_trip_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        assert!(j.is_empty());
        j.record("a/b", entry("200000 100000")).unwrap();
        j.record("a/c", entry("max 100000")).unwrap();
        let j2 = Journal::load(dir.path()).unwrap();
        assert_eq!(j2.len(), 2);
        assert_eq!(j2.get("a/b").unwrap().cpu_max, "200000 100000");
        let mut j2 = j2;
        j2.remove_all(["a/b", "missing"]).unwrap();
        assert_eq!(Journal::load(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_crash_mid_write_leaves_the_previous_journal() {
        // The temp file of an interrupted write is ignored; the last renamed journal counts.
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        j.record("a/b", entry("200000 100000")).unwrap();
        fs::write(
            dir.path().join("journal.json.tmp"),
            b"{\"version\":1,\"entr",
        )
        .unwrap();
        let j2 = Journal::load(dir.path()).unwrap();
        assert_eq!(j2.get("a/b").unwrap().cpu_max, "200000 100000");
    }

    #[test]
    fn update_changes_one_entry_durably() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        j.record("a", entry("max 100000")).unwrap();
        j.update("a", |e| e.memory_high = Some("max".into()))
            .unwrap();
        j.update("missing", |e| e.cpu_max = "x".into()).unwrap();
        let j2 = Journal::load(dir.path()).unwrap();
        assert_eq!(j2.get("a").unwrap().memory_high.as_deref(), Some("max"));
        assert_eq!(j2.len(), 1);
    }

    #[test]
    fn entries_without_newer_fields_still_load() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("journal.json"),
            br#"{"version":1,"entries":{"k":{"podUid":"u","containerId":"c","cpuMax":"max 100000","recordedAt":1}}}"#,
        )
        .unwrap();
        let j = Journal::load(dir.path()).unwrap();
        assert_eq!(j.get("k").unwrap().memory_high, None);
    }

    #[test]
    fn corrupt_journal_is_an_error_not_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("journal.json"), b"not json").unwrap();
        let err = Journal::load(dir.path()).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }));
        assert!(err.to_string().contains("journal.json"), "{err}");
        fs::write(
            dir.path().join("journal.json"),
            b"{\"version\":9,\"entries\":{}}",
        )
        .unwrap();
        assert!(matches!(
            Journal::load(dir.path()).unwrap_err(),
            JournalError::Version { found: 9, .. }
        ));
    }

    #[test]
    fn failed_persist_keeps_memory_equal_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut j = Journal::load(&state).unwrap();
        j.record("a", entry("1000 100000")).unwrap();
        // Make the directory unwritable by replacing it with a file.
        fs::remove_dir_all(&state).unwrap();
        fs::write(&state, b"").unwrap();
        assert!(j.record("b", entry("2000 100000")).is_err());
        assert!(j.get("b").is_none());
        assert!(j.remove_all(["a"]).is_err());
        assert!(j.get("a").is_some());
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_state_dir(dir.path()).unwrap();
        assert!(matches!(
            lock_state_dir(dir.path()).unwrap_err(),
            JournalError::Busy { .. }
        ));
        drop(held);
        assert!(lock_state_dir(dir.path()).is_ok());
    }
}
