//! Wake-ups between ticks: a PSI trigger on each governed proxy's `cpu.pressure`, so the
//! loop hears of a stalling proxy within tens of milliseconds instead of at the next tick.
//!
//! A trigger is the text `some <stall us> <window us>` written to the cgroup's `cpu.pressure`
//! through a descriptor kept open; the kernel then raises `POLLPRI` on that descriptor (at
//! most once per window) when some task of the cgroup stalled on CPU for `stall` within the
//! last `window` — throttling by `cpu.max` counts, the tasks are runnable and not running.
//! [`StallWatch`] holds the descriptors in one epoll set and a thread waits on it, passing
//! each proxy's token to the control loop. Nothing runs per proxy between ticks: the thread
//! sleeps in the kernel until a trigger fires.
//!
//! Kernel rules: a window of 500 ms to 10 s; since Linux 6.5 (and in Debian's 6.1.192, backported) a writer without
//! `CAP_SYS_RESOURCE` may only use windows that are multiples of 2 s — refused (`EINVAL`), the
//! watch falls back to the window rounded up to one (the DaemonSet drops every capability;
//! the kernel then checks its thresholds every window/10, so 200 ms instead of 50 ms at 2 s);
//! one trigger per open descriptor; closing the descriptor removes it. A plain file (a
//! fixture tree) is never written: the descriptor must be on cgroup2.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, fstatfs};
use tracing::warn;

/// The text of a trigger: `some <stall us> <window us>` (the kernel reads it with
/// `sscanf`; the trailing newline ends it).
pub fn trigger_text(stall: Duration, window: Duration) -> String {
    format!("some {} {}\n", stall.as_micros(), window.as_micros())
}

/// Why a proxy could not be watched. Each names the file and what was done to it.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("open {path} read-write: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not on cgroup2 (a trigger is only written to the kernel's file)")]
    NotCgroup { path: PathBuf },
    #[error("statfs {path}: {source}")]
    Statfs { path: PathBuf, source: Errno },
    #[error("write trigger {text:?} to {path}: {source}{}", hint(.source))]
    Trigger {
        path: PathBuf,
        text: String,
        source: std::io::Error,
    },
    #[error("add {path} to the epoll set: {source}")]
    Epoll { path: PathBuf, source: Errno },
    #[error(
        "no descriptor left for {path}: the open-file budget (RLIMIT_NOFILE less 256) is spent"
    )]
    NoDescriptor { path: PathBuf },
}

fn hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EINVAL) => {
            " (Linux 6.5+, and Debian's 6.1.192 backport, take windows that are not multiples of 2 s only from a writer with CAP_SYS_RESOURCE)"
        }
        Some(Errno::EOPNOTSUPP) => " (PSI is off: boot with psi=1)",
        _ => "",
    }
}

/// The token the stop event carries (proxies' tokens count up from 0).
const STOP: u64 = u64::MAX;

/// One watched proxy.
#[derive(Debug)]
struct Armed {
    token: u64,
    /// Holds the trigger; closing it removes the trigger (and the epoll entry).
    _file: File,
}

impl Drop for Armed {
    fn drop(&mut self) {
        crate::cgroup::release_descriptor();
    }
}

/// The PSI triggers of the governed proxies and the thread that waits on them.
#[derive(Debug)]
pub struct StallWatch {
    epoll: Arc<Epoll>,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    armed: HashMap<String, Armed>,
    keys: HashMap<u64, String>,
    next: u64,
    /// The policy's stall and window.
    configured: (Duration, Duration),
    stall: Duration,
    /// The window in use (the policy's, or its unprivileged fallback).
    window: Duration,
    text: String,
}

/// The window an unprivileged writer may use on Linux 6.5+: `window` rounded up to a
/// multiple of 2 s (at most 10 s).
pub fn unprivileged_window(window: Duration) -> Duration {
    let two = 2_000_000u128;
    let us = window.as_micros().div_ceil(two) * two;
    Duration::from_micros(us.clamp(two, 10_000_000) as u64)
}

impl StallWatch {
    /// Starts the waiting thread; `notify(token)` is called for each trigger that fires and
    /// stops the thread when it returns false (the loop is gone).
    pub fn start(
        stall: Duration,
        window: Duration,
        notify: impl Fn(u64) -> bool + Send + 'static,
    ) -> std::io::Result<StallWatch> {
        let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
        let stop = Arc::new(EventFd::from_value_and_flags(
            0,
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        epoll.add(&*stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP))?;
        let (e, s) = (epoll.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("stall-watch".into())
            .spawn(move || wait_loop(&e, &s, notify))?;
        Ok(StallWatch {
            epoll,
            stop,
            thread: Some(thread),
            armed: HashMap::new(),
            keys: HashMap::new(),
            next: 0,
            configured: (stall, window),
            stall,
            window,
            text: trigger_text(stall, window),
        })
    }

    /// Watches the proxy `key` whose cgroup is `dir` (nothing if already watched).
    pub fn arm(&mut self, key: &str, dir: &Path) -> Result<(), WakeError> {
        if self.armed.contains_key(key) {
            return Ok(());
        }
        let path = dir.join("cpu.pressure");
        // The trigger's descriptor counts in the same budget as the held cgroup files.
        if !crate::cgroup::reserve_descriptor() {
            return Err(WakeError::NoDescriptor { path });
        }
        let (file, token) = match self.open_trigger(path) {
            Ok(v) => v,
            Err(e) => {
                crate::cgroup::release_descriptor();
                return Err(e);
            }
        };
        self.keys.insert(token, key.to_string());
        self.armed
            .insert(key.to_string(), Armed { token, _file: file });
        Ok(())
    }

    /// Opens `path`, writes the trigger and adds it to the epoll set.
    fn open_trigger(&mut self, path: PathBuf) -> Result<(File, u64), WakeError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc_nonblock())
            .open(&path)
            .map_err(|source| WakeError::Open {
                path: path.clone(),
                source,
            })?;
        let fs = fstatfs(&file).map_err(|source| WakeError::Statfs {
            path: path.clone(),
            source,
        })?;
        if fs.filesystem_type() != CGROUP2_SUPER_MAGIC {
            return Err(WakeError::NotCgroup { path });
        }
        if let Err(e) = write_trigger(&mut file, &self.text) {
            let fallback = unprivileged_window(self.window);
            let einval = e.raw_os_error() == Some(Errno::EINVAL as i32);
            // Refused as an unprivileged writer's short window: the 2 s multiple, from now on.
            let text = trigger_text(self.stall, fallback);
            if !(einval && fallback != self.window && write_trigger(&mut file, &text).is_ok()) {
                return Err(WakeError::Trigger {
                    path,
                    text: self.text.clone(),
                    source: e,
                });
            }
            warn!(
                window_ms = self.window.as_millis() as u64,
                fallback_ms = fallback.as_millis() as u64,
                "the kernel refused the stall trigger's window (without CAP_SYS_RESOURCE, Linux 6.5+ and Debian 6.1.192 take only multiples of 2 s); using the fallback"
            );
            self.window = fallback;
            self.text = text;
        }
        let token = self.next;
        self.epoll
            .add(&file, EpollEvent::new(EpollFlags::EPOLLPRI, token))
            .map_err(|source| WakeError::Epoll { path, source })?;
        self.next += 1;
        Ok((file, token))
    }

    /// Stops watching `key` (its descriptor is closed, which removes the trigger).
    pub fn disarm(&mut self, key: &str) {
        if let Some(a) = self.armed.remove(key) {
            self.keys.remove(&a.token);
        }
    }

    /// Stops watching every proxy.
    pub fn disarm_all(&mut self) {
        self.armed.clear();
        self.keys.clear();
    }

    /// Watches with a new trigger from now on (proxies are re-armed by the caller).
    pub fn set_trigger(&mut self, stall: Duration, window: Duration) {
        if (stall, window) != self.configured {
            self.disarm_all();
            self.configured = (stall, window);
            self.stall = stall;
            self.window = window;
            self.text = trigger_text(stall, window);
        }
    }

    /// The trigger in use (`some <stall us> <window us>`).
    pub fn trigger(&self) -> &str {
        self.text.trim_end()
    }

    /// The proxy a token belongs to (`None` once it was disarmed).
    pub fn key_of(&self, token: u64) -> Option<&str> {
        self.keys.get(&token).map(String::as_str)
    }

    pub fn is_armed(&self, key: &str) -> bool {
        self.armed.contains_key(key)
    }

    /// How many proxies are watched.
    pub fn len(&self) -> usize {
        self.armed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }
}

impl Drop for StallWatch {
    fn drop(&mut self) {
        self.armed.clear();
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes a trigger in one `write` (the kernel takes it from a single buffer).
fn write_trigger(file: &mut File, text: &str) -> std::io::Result<()> {
    match file.write(text.as_bytes())? {
        n if n == text.len() => Ok(()),
        n => Err(std::io::Error::other(format!("short write of {n} bytes"))),
    }
}

/// `O_NONBLOCK`: a descriptor polled for triggers never blocks a read.
fn libc_nonblock() -> i32 {
    nix::fcntl::OFlag::O_NONBLOCK.bits()
}

/// Waits for triggers until the stop event or until `notify` says the loop is gone.
fn wait_loop(epoll: &Epoll, stop: &EventFd, notify: impl Fn(u64) -> bool) {
    let mut events = [EpollEvent::empty(); 64];
    loop {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                warn!(error = %e, "stall watch: epoll_wait failed; wake-ups between ticks stop");
                return;
            }
        };
        for e in &events[..n] {
            if e.data() == STOP {
                let _ = stop.read();
                return;
            }
            if !notify(e.data()) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn trigger_text_is_the_kernels_format() {
        assert_eq!(
            trigger_text(Duration::from_millis(30), Duration::from_millis(500)),
            "some 30000 500000\n"
        );
    }

    #[test]
    fn unprivileged_windows_are_multiples_of_two_seconds() {
        let s = Duration::from_secs;
        assert_eq!(unprivileged_window(Duration::from_millis(500)), s(2));
        assert_eq!(unprivileged_window(s(2)), s(2));
        assert_eq!(unprivileged_window(Duration::from_millis(2001)), s(4));
        assert_eq!(unprivileged_window(s(10)), s(10));
    }

    #[test]
    fn a_plain_file_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let pressure = dir.path().join("cpu.pressure");
        let text = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        std::fs::write(&pressure, text).unwrap();
        let (tx, _rx) = mpsc::channel();
        let mut w = StallWatch::start(Duration::from_millis(30), Duration::from_millis(500), {
            move |t| tx.send(t).is_ok()
        })
        .unwrap();
        let e = w.arm("a", dir.path()).unwrap_err();
        assert!(matches!(e, WakeError::NotCgroup { .. }), "{e}");
        assert!(e.to_string().contains("cpu.pressure"), "{e}");
        assert_eq!(std::fs::read_to_string(&pressure).unwrap(), text);
        assert!(w.is_empty() && !w.is_armed("a"));
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut w =
            StallWatch::start(Duration::from_millis(30), Duration::from_secs(1), |_| true).unwrap();
        let e = w.arm("a", dir.path()).unwrap_err();
        assert!(matches!(e, WakeError::Open { .. }));
        assert!(e.to_string().contains("cpu.pressure"), "{e}");
    }

    #[test]
    fn dropping_the_watch_stops_its_thread() {
        let w =
            StallWatch::start(Duration::from_millis(30), Duration::from_secs(1), |_| true).unwrap();
        drop(w); // joins: a thread that did not stop would hang the test
    }
}
