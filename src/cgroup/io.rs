//! File I/O on cgroup interface files: descriptors held open and re-read from offset 0 (the
//! cheap way to sample, design notes §9), one-shot reads, and validated writes that are read
//! back to confirm the kernel kept what was written — through a descriptor held open
//! read-write where there is one (one `ftruncate`, `pwrite` and `pread`, no path lookups),
//! else through fresh opens. Every error names the file and the operation; a failed read is
//! an error, never a zero.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::errno::Errno;

use super::parse::ParseError;
use crate::metrics::ErrorKind;

/// A failure on one cgroup file.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("parse {path}: {source}")]
    Parse { path: PathBuf, source: ParseError },
    #[error("refused to write {value:?} to {path}: {reason}")]
    Invalid {
        path: PathBuf,
        value: String,
        reason: String,
    },
    #[error("verify {path}: wrote {wrote:?} but read back {read:?}")]
    Verify {
        path: PathBuf,
        wrote: String,
        read: String,
    },
    #[error(
        "write {value:?} to {path}: no answer within {after:?} (the kernel is still reclaiming; left alone)"
    )]
    Timeout {
        path: PathBuf,
        value: String,
        after: std::time::Duration,
    },
}

fn io_source(err: &CgroupError) -> Option<&io::Error> {
    match err {
        CgroupError::Open { source, .. }
        | CgroupError::Read { source, .. }
        | CgroupError::Write { source, .. } => Some(source),
        _ => None,
    }
}

impl CgroupError {
    /// True when the cgroup (or the process's view of it) has gone away: the file is missing
    /// (`ENOENT`) or the held descriptor's cgroup was removed (`ENODEV`). Such errors are
    /// churn, not faults.
    pub fn is_gone(&self) -> bool {
        io_source(self).is_some_and(|e| {
            e.kind() == io::ErrorKind::NotFound || errno_of(e) == Some(Errno::ENODEV)
        })
    }

    /// What kind of error this is, for the `errors_total{kind}` metric.
    pub fn kind(&self) -> ErrorKind {
        let errno = io_source(self).and_then(errno_of);
        match (self, errno) {
            (CgroupError::Open { .. } | CgroupError::Read { .. }, _) if self.is_gone() => {
                ErrorKind::ReadGone
            }
            (CgroupError::Open { .. } | CgroupError::Read { .. }, _) => ErrorKind::Read,
            (CgroupError::Write { .. }, Some(Errno::EINVAL)) => ErrorKind::WriteEinval,
            (CgroupError::Write { .. }, _) if self.is_gone() => ErrorKind::WriteGone,
            (CgroupError::Write { .. }, Some(Errno::EPERM | Errno::EACCES | Errno::EROFS)) => {
                ErrorKind::WriteDenied
            }
            (CgroupError::Write { .. }, Some(Errno::EAGAIN)) => ErrorKind::WriteTimeout,
            (CgroupError::Write { .. }, _) => ErrorKind::Write,
            (CgroupError::Parse { .. }, _) => ErrorKind::Parse,
            (CgroupError::Invalid { .. }, _) => ErrorKind::InvalidValue,
            (CgroupError::Verify { .. }, _) => ErrorKind::Verify,
            (CgroupError::Timeout { .. }, _) => ErrorKind::WriteTimeout,
        }
    }
}

/// The errno of an I/O error, by name.
fn errno_of(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

/// No cgroup interface file the agent reads comes near this; anything larger is not one.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Descriptors held open across all [`CgroupFile`]s, and how many may be (the rest of the
/// process's open-file limit stays free for sockets, logs and one-shot reads).
static HELD: AtomicUsize = AtomicUsize::new(0);
static HELD_BUDGET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Sets how many cgroup descriptors may be held open at once (beyond that, files are opened
/// for each read). Call once at start-up from the process's open-file limit.
pub fn set_held_budget(max: usize) {
    HELD_BUDGET.store(max, Ordering::Relaxed);
}

/// Takes one descriptor from the budget for something held open outside a [`CgroupFile`]
/// (a PSI trigger); false when the budget is spent. Give it back with [`release_descriptor`].
pub fn reserve_descriptor() -> bool {
    let held = HELD.fetch_add(1, Ordering::Relaxed) < HELD_BUDGET.load(Ordering::Relaxed);
    if !held {
        HELD.fetch_sub(1, Ordering::Relaxed);
    }
    held
}

/// Gives back a descriptor taken with [`reserve_descriptor`].
pub fn release_descriptor() {
    HELD.fetch_sub(1, Ordering::Relaxed);
}

/// Descriptors held open now.
pub fn held_descriptors() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// A cgroup file re-read each tick: held open and re-read with `pread` at offset 0 (the
/// cheap way, design notes §9) while the descriptor budget allows, else opened per read.
#[derive(Debug)]
pub struct CgroupFile {
    dir: Arc<Path>,
    name: &'static str,
    file: Option<File>,
    /// The held descriptor is open read-write (see [`CgroupFile::open_rw`]).
    writable: bool,
    /// What this descriptor last saw the file hold: its length, and whether it ended in a
    /// newline (see [`CgroupFile::write_verified`]).
    seen: Cell<(usize, bool)>,
}

impl Drop for CgroupFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            HELD.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl CgroupFile {
    /// Opens `dir/name` read-only (held if the budget allows). A missing file is an error
    /// either way, so a cgroup without the controller is noticed at once.
    pub fn open(dir: &Arc<Path>, name: &'static str) -> Result<Self, CgroupError> {
        let path = dir.join(name);
        let file = File::open(&path).map_err(|source| CgroupError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self::hold(dir, name, file, false))
    }

    /// Opens `dir/name` read-write, to be read like [`CgroupFile::open`] and written with
    /// [`CgroupFile::write_verified`] through the same descriptor. Where writing is not
    /// allowed (a read-only mount, no permission) it is opened read-only instead, and a write
    /// goes through a fresh open that reports the kernel's refusal.
    pub fn open_rw(dir: &Arc<Path>, name: &'static str) -> Result<Self, CgroupError> {
        let path = dir.join(name);
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Ok(Self::hold(dir, name, file, true)),
            Err(e)
                if matches!(
                    errno_of(&e),
                    Some(Errno::EACCES | Errno::EPERM | Errno::EROFS)
                ) =>
            {
                Self::open(dir, name)
            }
            Err(source) => Err(CgroupError::Open { path, source }),
        }
    }

    /// Keeps `file` open if the descriptor budget allows (else it is closed and the file is
    /// opened for each read and write).
    fn hold(dir: &Arc<Path>, name: &'static str, file: File, writable: bool) -> Self {
        let held = HELD.fetch_add(1, Ordering::Relaxed) < HELD_BUDGET.load(Ordering::Relaxed);
        if !held {
            HELD.fetch_sub(1, Ordering::Relaxed);
        }
        Self {
            dir: dir.clone(),
            name,
            file: held.then_some(file),
            writable: held && writable,
            seen: Cell::new((usize::MAX, false)),
        }
    }

    /// The file's path, for errors and logs.
    pub fn path(&self) -> PathBuf {
        self.dir.join(self.name)
    }

    /// True while the descriptor is held open.
    pub fn is_held(&self) -> bool {
        self.file.is_some()
    }

    /// Reads the whole file from offset 0 into `buf` (a scratch buffer kept between calls)
    /// and returns its text.
    pub fn read_into<'b>(&self, buf: &'b mut Vec<u8>) -> Result<&'b str, CgroupError> {
        let opened;
        let file = match &self.file {
            Some(f) => f,
            None => {
                opened = File::open(self.path()).map_err(|source| CgroupError::Open {
                    path: self.path(),
                    source,
                })?;
                &opened
            }
        };
        if buf.len() < 4096 {
            buf.resize(4096, 0);
        }
        let mut filled = 0usize;
        loop {
            if filled == buf.len() {
                if filled as u64 >= MAX_FILE_BYTES {
                    return Err(CgroupError::Parse {
                        path: self.path(),
                        source: ParseError::Malformed(format!(
                            "larger than {MAX_FILE_BYTES} bytes"
                        )),
                    });
                }
                buf.resize(filled * 2, 0);
            }
            match file.read_at(&mut buf[filled..], filled as u64) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    // cgroup (seq_file) and regular files return less than asked only at
                    // the end: spare the extra read(2).
                    if filled < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CgroupError::Read {
                        path: self.path(),
                        source,
                    });
                }
            }
        }
        self.seen
            .set((filled, filled > 0 && buf[filled - 1] == b'\n'));
        std::str::from_utf8(&buf[..filled]).map_err(|_| CgroupError::Parse {
            path: self.path(),
            source: ParseError::Malformed("not UTF-8".into()),
        })
    }

    /// Reads and parses the file with `parse`.
    pub fn read_parsed<T>(
        &self,
        buf: &mut Vec<u8>,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, CgroupError> {
        let text = self.read_into(buf)?;
        parse(text).map_err(|source| CgroupError::Parse {
            path: self.path(),
            source,
        })
    }

    /// True when writes go through the held descriptor (held, and opened read-write).
    pub fn is_writable(&self) -> bool {
        self.writable && self.file.is_some()
    }

    /// Writes `value` whole in one `write(2)` and reads it back, as [`write_verified`] does,
    /// but through the held read-write descriptor: `pwrite` at offset 0, `ftruncate` to the
    /// value's length only where what the descriptor last read was longer than the value and
    /// its newline (ignored by cgroupfs; cuts the rest of a longer earlier value from a
    /// plain-file fixture), then `pread` from offset 0 into `buf`. The write counts only when
    /// the parsed read-back equals `expected`. Without such a descriptor it is
    /// [`write_verified`] on the path.
    pub fn write_verified<T: PartialEq + std::fmt::Debug>(
        &self,
        buf: &mut Vec<u8>,
        value: &str,
        expected: &T,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Result<T, CgroupError> {
        let Some(file) = self.file.as_ref().filter(|_| self.writable) else {
            return write_verified(&self.dir, self.name, value, expected, parse);
        };
        let write = || -> io::Result<()> {
            let n = loop {
                match file.write_at(value.as_bytes(), 0) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            // One value per write(2): a part of it is not the value, and is not retried.
            if n != value.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {n} of {} bytes", value.len()),
                ));
            }
            // cgroupfs takes the write as the whole value. A plain file (a fixture) keeps
            // what was past it: cut that unless it was nothing, or the old value's newline.
            let (len, newline) = self.seen.get();
            if n < len && !(newline && n + 1 == len) {
                file.set_len(n as u64)?;
            }
            Ok(())
        };
        write().map_err(|source| CgroupError::Write {
            path: self.path(),
            value: value.to_string(),
            source,
        })?;
        let read = self.read_parsed(buf, parse)?;
        if &read != expected {
            return Err(CgroupError::Verify {
                path: self.path(),
                wrote: value.to_string(),
                read: format!("{read:?}"),
            });
        }
        Ok(read)
    }
}

/// Reads `dir/name` once and parses it.
pub fn read_value<T>(
    dir: &Path,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, CgroupError> {
    use std::io::Read;
    let path = dir.join(name);
    let read_err = |source| CgroupError::Read {
        path: path.clone(),
        source,
    };
    let mut text = String::new();
    File::open(&path)
        .and_then(|f| f.take(MAX_FILE_BYTES).read_to_string(&mut text))
        .map_err(read_err)?;
    if text.len() as u64 >= MAX_FILE_BYTES {
        return Err(CgroupError::Parse {
            path,
            source: ParseError::Malformed(format!("larger than {MAX_FILE_BYTES} bytes")),
        });
    }
    parse(&text).map_err(|source| CgroupError::Parse { path, source })
}

/// Writes `value` to `dir/name` in a single `write(2)` without reading it back (for
/// write-only files such as `memory.reclaim`).
pub fn write_once(dir: &Path, name: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(name);
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path,
            value: value.to_string(),
            source,
        })
}

/// Writes `value` to `dir/name` in a single `write(2)` (cgroup files take one value per
/// write), never creating the file, then reads it back and parses it with `parse`; the write
/// counts only when the parsed read-back equals `expected`.
pub fn write_verified<T: PartialEq + std::fmt::Debug>(
    dir: &Path,
    name: &str,
    value: &str,
    expected: &T,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, CgroupError> {
    let path = dir.join(name);
    let write = || -> io::Result<()> {
        // truncate: harmless on cgroupfs, and keeps plain-file fixtures honest.
        let mut file = OpenOptions::new().write(true).truncate(true).open(&path)?;
        file.write_all(value.as_bytes())
    };
    write().map_err(|source| CgroupError::Write {
        path: path.clone(),
        value: value.to_string(),
        source,
    })?;
    let read = read_value(dir, name, parse)?;
    if &read != expected {
        return Err(CgroupError::Verify {
            path,
            wrote: value.to_string(),
            read: format!("{read:?}"),
        });
    }
    Ok(read)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::parse::{parse_cpu_max, parse_u64_or_max};
    use super::*;

    #[test]
    fn held_file_rereads_from_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.current");
        std::fs::write(&path, "100\n").unwrap();
        let dir_arc: Arc<Path> = Arc::from(dir.path());
        let file = CgroupFile::open(&dir_arc, "memory.current").unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            file.read_parsed(&mut buf, parse_u64_or_max).unwrap(),
            Some(100)
        );
        std::fs::write(&path, "250\n").unwrap();
        assert_eq!(
            file.read_parsed(&mut buf, parse_u64_or_max).unwrap(),
            Some(250)
        );
    }

    #[test]
    fn large_files_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.stat");
        let text = "x 1\n".repeat(5000);
        std::fs::write(&path, &text).unwrap();
        let dir_arc: Arc<Path> = Arc::from(dir.path());
        let file = CgroupFile::open(&dir_arc, "memory.stat").unwrap();
        let mut buf = Vec::new();
        assert_eq!(file.read_into(&mut buf).unwrap().len(), text.len());
        // A shorter file read into the same (now larger) buffer.
        std::fs::write(&path, "x 1\n").unwrap();
        assert_eq!(file.read_into(&mut buf).unwrap(), "x 1\n");
    }

    /// The tests that change or depend on the descriptor budget (a process-wide static) run
    /// one at a time.
    fn budget_lock() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn past_the_budget_files_are_opened_per_read() {
        let _budget = budget_lock();
        // Runs alone in this process's counter space only loosely (tests share statics), so it
        // checks relative behaviour: with a budget of what is held now, a new file is unheld.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), "max 100000\n").unwrap();
        let d: Arc<Path> = Arc::from(dir.path());
        set_held_budget(0);
        let unheld = CgroupFile::open(&d, "cpu.max").unwrap();
        set_held_budget(usize::MAX);
        assert!(!unheld.is_held());
        let mut buf = Vec::new();
        assert_eq!(unheld.read_into(&mut buf).unwrap(), "max 100000\n");
        std::fs::write(dir.path().join("cpu.max"), "5000 100000\n").unwrap();
        assert_eq!(unheld.read_into(&mut buf).unwrap(), "5000 100000\n");
        let held = CgroupFile::open(&d, "cpu.max").unwrap();
        assert!(held.is_held());
        std::fs::remove_file(dir.path().join("cpu.max")).unwrap();
        assert!(unheld.read_into(&mut buf).unwrap_err().is_gone());
        assert_eq!(held.read_into(&mut buf).unwrap(), "5000 100000\n");
    }

    #[test]
    fn errors_carry_path_and_operation() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_value(dir.path(), "cpu.max", parse_cpu_max).unwrap_err();
        assert!(err.is_gone());
        assert_eq!(err.kind(), ErrorKind::ReadGone);
        assert!(err.to_string().contains("cpu.max"), "{err}");
        std::fs::write(dir.path().join("cpu.max"), "garbage\n").unwrap();
        let err = read_value(dir.path(), "cpu.max", parse_cpu_max).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Parse);
        assert!(err.to_string().starts_with("parse "), "{err}");
    }

    #[test]
    fn write_never_creates_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let expected = parse_cpu_max("50000 100000").unwrap();
        let err = write_verified(
            dir.path(),
            "cpu.max",
            "50000 100000",
            &expected,
            parse_cpu_max,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WriteGone);
        assert!(!dir.path().join("cpu.max").exists());

        std::fs::write(dir.path().join("cpu.max"), "200000 100000\n").unwrap();
        let got = write_verified(
            dir.path(),
            "cpu.max",
            "50000 100000",
            &expected,
            parse_cpu_max,
        )
        .unwrap();
        assert_eq!(got, expected);
        // A read-back that differs from what was meant is a verify error.
        let other = parse_cpu_max("60000 100000").unwrap();
        let err = write_verified(dir.path(), "cpu.max", "50000 100000", &other, parse_cpu_max)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Verify);
    }

    /// A fixture directory on tmpfs where there is one (plain files: these check descriptor
    /// handling, write order and read-backs, not what cgroupfs does with a write).
    pub(crate) fn fixture_dir() -> tempfile::TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        }
    }

    /// A fixture `cpu.max` holding `text`, opened read-write and held: the directory (kept
    /// alive), the file's path and the held file.
    fn held_cpu_max(text: &str) -> (tempfile::TempDir, PathBuf, CgroupFile) {
        let dir = fixture_dir();
        let path = dir.path().join("cpu.max");
        std::fs::write(&path, text).unwrap();
        let d: Arc<Path> = Arc::from(dir.path());
        let file = CgroupFile::open_rw(&d, "cpu.max").unwrap();
        (dir, path, file)
    }

    #[test]
    fn held_read_write_descriptor_writes_and_reads_back() {
        let _budget = budget_lock();
        let (_dir, path, file) = held_cpu_max("200000 100000\n");
        assert!(file.is_held() && file.is_writable());
        let mut buf = Vec::new();
        let want = parse_cpu_max("50000 100000").unwrap();
        // A shorter value over a longer one: the whole file is the new value.
        let got = file
            .write_verified(&mut buf, "50000 100000", &want, parse_cpu_max)
            .unwrap();
        assert_eq!(got, want);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "50000 100000");
        // The same descriptor reads what someone else wrote since, from offset 0.
        std::fs::write(&path, "300000 100000\n").unwrap();
        assert_eq!(
            file.read_parsed(&mut buf, parse_cpu_max).unwrap(),
            parse_cpu_max("300000 100000").unwrap()
        );
        let want = parse_cpu_max("max 100000").unwrap();
        file.write_verified(&mut buf, "max 100000", &want, parse_cpu_max)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "max 100000");
    }

    #[test]
    fn held_writes_cut_only_what_is_past_the_value_and_its_newline() {
        let _budget = budget_lock();
        let (_dir, path, file) = held_cpu_max("200000 100000\n");
        let mut buf = Vec::new();
        let write = |value: &str, buf: &mut Vec<u8>| {
            let want = parse_cpu_max(value).unwrap();
            file.write_verified(buf, value, &want, parse_cpu_max)
                .unwrap();
            std::fs::read_to_string(&path).unwrap()
        };
        // Nothing read yet: what the file holds is unknown, so the rest is cut.
        assert_eq!(write("190000 100000", &mut buf), "190000 100000");
        // As long as the last value: nothing to cut.
        assert_eq!(write("180000 100000", &mut buf), "180000 100000");
        // Someone else's value with its newline, read (as every tick samples the file): a
        // value one byte shorter keeps that newline and nothing else.
        std::fs::write(&path, "170000 100000\n").unwrap();
        file.read_parsed(&mut buf, parse_cpu_max).unwrap();
        assert_eq!(write("160000 100000", &mut buf), "160000 100000\n");
        // Shorter than that: the rest of the old value is cut.
        assert_eq!(write("90000 100000", &mut buf), "90000 100000");
        assert_eq!(write("max 100000", &mut buf), "max 100000");
        // Longer: the file grows.
        assert_eq!(write("1200000 100000", &mut buf), "1200000 100000");
    }

    #[test]
    fn held_write_verify_failure_names_the_path() {
        let dir = fixture_dir();
        std::fs::write(dir.path().join("cpu.max"), "200000 100000\n").unwrap();
        let d: Arc<Path> = Arc::from(dir.path());
        let file = CgroupFile::open_rw(&d, "cpu.max").unwrap();
        let mut buf = Vec::new();
        // The read-back parses to something else than what was meant.
        let other = parse_cpu_max("60000 100000").unwrap();
        let err = file
            .write_verified(&mut buf, "50000 100000", &other, parse_cpu_max)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Verify);
        let text = err.to_string();
        assert!(text.starts_with("verify "), "{text}");
        assert!(
            text.contains(&dir.path().join("cpu.max").display().to_string()),
            "{text}"
        );
        // A read-back that does not parse is a parse error on the same path.
        let err = file
            .write_verified(&mut buf, "banana", &other, parse_cpu_max)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Parse);
        assert!(err.to_string().contains("cpu.max"), "{err}");
    }

    #[test]
    fn held_write_error_names_the_path_and_value() {
        // /dev/full: opened read-write, refuses to be truncated or written.
        let dev: Arc<Path> = Arc::from(Path::new("/dev"));
        let file = CgroupFile::open_rw(&dev, "full").expect("this test needs /dev/full");
        let mut buf = Vec::new();
        let err = file
            .write_verified(&mut buf, "1000", &Some(1000), parse_u64_or_max)
            .unwrap_err();
        assert!(matches!(err, CgroupError::Write { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("write \"1000\" to /dev/full:"),
            "{err}"
        );
    }

    #[test]
    fn unheld_read_write_file_writes_through_the_path() {
        let _budget = budget_lock();
        let dir = fixture_dir();
        std::fs::write(dir.path().join("cpu.max.burst"), "0\n").unwrap();
        let d: Arc<Path> = Arc::from(dir.path());
        set_held_budget(0);
        let file = CgroupFile::open_rw(&d, "cpu.max.burst").unwrap();
        set_held_budget(usize::MAX);
        assert!(!file.is_held() && !file.is_writable());
        let mut buf = Vec::new();
        file.write_verified(&mut buf, "5000", &Some(5000), parse_u64_or_max)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cpu.max.burst")).unwrap(),
            "5000"
        );
        // Through the path, a vanished file is a write error that says the file is gone.
        std::fs::remove_file(dir.path().join("cpu.max.burst")).unwrap();
        let err = file
            .write_verified(&mut buf, "0", &Some(0), parse_u64_or_max)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WriteGone);
        assert!(!dir.path().join("cpu.max.burst").exists());
    }
}
