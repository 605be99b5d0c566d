//! Hot policy reload: the policy file is normally a key of a ConfigMap volume, which kubelet
//! updates by writing a new timestamped directory and atomically renaming a `..data` symlink
//! over the old one (`policy.yaml -> ..data/policy.yaml`). A watch on the file itself would
//! follow the old inode and die, so [`Reloader`] watches the file's *directory* (inotify via
//! `notify`), waits for the burst of changes to settle (debounce), and re-reads the file; a
//! slow timer re-reads it too, in case a change notification is lost. A new valid policy is
//! sent to the control loop as [`Command::Policy`] and applies from its next tick; an invalid
//! one is refused with each problem logged and the last good policy stays live. Metrics tell
//! which: `config_reloads_total{result}`, `config_last_reload_successful`, and
//! `config_info{hash}` for the live policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tracing::{debug, error, info, warn};

use crate::agent::Command;
use crate::policy::{Policy, PolicyError};
use crate::server::Shared;

/// Why the reloader could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("policy file {path} has no parent directory to watch")]
    NoParent { path: PathBuf },
    #[error("start reload thread for {path}: {source}")]
    Thread {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The first 16 hex digits of the SHA-256 of the policy text: `config_info{hash}`.
pub fn policy_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and validates the policy at `path` once: the policy and its text's hash.
pub fn load(path: &Path) -> Result<(Policy, String), PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let policy = parse_at(&text, path)?;
    Ok((policy, policy_hash(&text)))
}

/// Parses policy text read from `path` (errors name the file).
fn parse_at(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    Policy::from_yaml(text).map_err(|e| match e {
        PolicyError::Invalid { errors, .. } => PolicyError::Invalid {
            path: Some(path.to_path_buf()),
            errors,
        },
        other => other,
    })
}

/// Timing of the reloader.
#[derive(Debug, Clone, Copy)]
pub struct ReloadTiming {
    /// Quiet time after the last change notification before the file is read.
    pub debounce: Duration,
    /// Re-read this often even without a notification.
    pub fallback: Duration,
}

impl Default for ReloadTiming {
    fn default() -> Self {
        ReloadTiming {
            debounce: Duration::from_millis(250),
            fallback: Duration::from_secs(30),
        }
    }
}

/// What one check of the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The text is the one seen last (live or already refused).
    Unchanged,
    /// A new valid policy, sent to the control loop; its hash.
    Applied(String),
    /// A new invalid or unreadable policy, refused; the last good one stays.
    Refused(String),
}

/// Checks the policy file for changes and forwards valid ones.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    /// Hash of the text (or read error) seen last, good or bad: each change counts once.
    seen: String,
    /// Hash of the live policy.
    live: String,
    commands: Sender<Command>,
    shared: Arc<Shared>,
}

impl Reloader {
    /// A reloader for `path`, whose policy with text hash `live_hash` is already live.
    pub fn new(
        path: PathBuf,
        live_hash: String,
        commands: Sender<Command>,
        shared: Arc<Shared>,
    ) -> Reloader {
        shared.metrics.set_config_hash(&live_hash);
        shared.metrics.config_last_reload_successful.set(1);
        Reloader {
            path,
            seen: live_hash.clone(),
            live: live_hash,
            commands,
            shared,
        }
    }

    /// The live policy's hash.
    pub fn live_hash(&self) -> &str {
        &self.live
    }

    /// Reads the file and acts on a change.
    pub fn check(&mut self) -> Outcome {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                let seen = format!("read-error:{:?}", e.kind());
                if seen == self.seen {
                    return Outcome::Unchanged;
                }
                self.seen = seen;
                error!(
                    path = %self.path.display(),
                    error = %e,
                    live_hash = self.live,
                    "cannot read policy file; keeping the last good policy"
                );
                self.shared.metrics.config_reload(false);
                return Outcome::Refused(e.to_string());
            }
        };
        let hash = policy_hash(&text);
        if hash == self.seen {
            return Outcome::Unchanged;
        }
        self.seen = hash.clone();
        if hash == self.live {
            // Back to the live text after a refused one.
            info!(hash, "policy file is back to the live policy");
            self.shared.metrics.config_last_reload_successful.set(1);
            return Outcome::Unchanged;
        }
        match parse_at(&text, &self.path) {
            Ok(policy) => {
                info!(
                    path = %self.path.display(),
                    hash,
                    previous = self.live,
                    policy = policy.summary(),
                    "policy reloaded; applies from the next tick"
                );
                if self
                    .commands
                    .send(Command::Policy(Box::new(policy)))
                    .is_err()
                {
                    debug!("control loop gone; policy not applied");
                }
                self.live = hash.clone();
                self.shared.metrics.set_config_hash(&hash);
                self.shared.metrics.config_reload(true);
                Outcome::Applied(hash)
            }
            Err(e) => {
                let problems: Vec<String> =
                    e.field_errors().iter().map(ToString::to_string).collect();
                error!(
                    path = %self.path.display(),
                    hash,
                    live_hash = self.live,
                    problems = ?problems,
                    "invalid policy refused; keeping the last good policy"
                );
                self.shared.metrics.config_reload(false);
                Outcome::Refused(e.to_string())
            }
        }
    }
}

/// The running reloader thread; dropping it stops the thread.
#[derive(Debug)]
pub struct ReloadHandle {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ReloadHandle {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ReloadHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum Wake {
    Changed,
    Stop,
}

/// Starts watching `reloader`'s file: a thread that waits for notifications on its directory
/// (or the fallback timer), debounces, and checks.
pub fn spawn(mut reloader: Reloader, timing: ReloadTiming) -> Result<ReloadHandle, ReloadError> {
    let dir = reloader
        .path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .ok_or_else(|| ReloadError::NoParent {
            path: reloader.path.clone(),
        })?
        .to_path_buf();
    let (wake_tx, wake_rx) = mpsc::channel::<Wake>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let watcher = {
        let wake = wake_tx.clone();
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) if !event.kind.is_access() => {
                let _ = wake.send(Wake::Changed);
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "config watch error"),
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w))
    };
    let watcher = match watcher {
        Ok(w) => {
            info!(dir = %dir.display(), fallback_s = timing.fallback.as_secs(), "watching the policy directory for changes");
            Some(w)
        }
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, fallback_s = timing.fallback.as_secs(), "cannot watch the policy directory; re-reading on a timer only");
            None
        }
    };
    // Stop requests arrive on their own channel; forward them into the wake channel.
    let stopper = {
        let wake = wake_tx;
        std::thread::Builder::new()
            .name("config-reload-stop".into())
            .spawn(move || {
                let _ = stop_rx.recv();
                let _ = wake.send(Wake::Stop);
            })
            .map_err(|source| ReloadError::Thread {
                path: reloader.path.clone(),
                source,
            })?
    };
    let path = reloader.path.clone();
    let thread = std::thread::Builder::new()
        .name("config-reload".into())
        .spawn(move || {
            let _watcher = watcher;
            watch_loop(&mut reloader, &wake_rx, timing);
            let _ = stopper.join();
        })
        .map_err(|source| ReloadError::Thread { path, source })?;
    Ok(ReloadHandle {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

fn watch_loop(reloader: &mut Reloader, wake: &Receiver<Wake>, timing: ReloadTiming) {
    let mut next_poll = Instant::now() + timing.fallback;
    loop {
        let wait = next_poll.saturating_duration_since(Instant::now());
        match wake.recv_timeout(wait) {
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Wake::Changed) => {
                // Debounce: wait until the directory has been quiet for `debounce`.
                loop {
                    match wake.recv_timeout(timing.debounce) {
                        Ok(Wake::Changed) => continue,
                        Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => break,
                    }
                }
                debug!("policy directory changed");
                reloader.check();
            }
            Err(RecvTimeoutError::Timeout) => {
                reloader.check();
                next_poll = Instant::now() + timing.fallback;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "interval: 1s\n";
    const OTHER: &str = "interval: 2s\n";
    const BAD: &str = "cpu:\n  min: \"3\"\n  max: \"2\"\n";

    fn reloader(dir: &Path) -> (Reloader, Receiver<Command>, Arc<Shared>) {
        let path = dir.join("policy.yaml");
        std::fs::write(&path, GOOD).unwrap();
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let r = Reloader::new(path, policy_hash(GOOD), tx, shared.clone());
        (r, rx, shared)
    }

    #[test]
    fn changes_apply_once_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, rx, shared) = reloader(dir.path());
        assert_eq!(r.check(), Outcome::Unchanged);
        std::fs::write(dir.path().join("policy.yaml"), OTHER).unwrap();
        assert_eq!(r.check(), Outcome::Applied(policy_hash(OTHER)));
        assert!(
            matches!(rx.try_recv(), Ok(Command::Policy(p)) if p.interval == Duration::from_secs(2))
        );
        assert_eq!(r.check(), Outcome::Unchanged);

        std::fs::write(dir.path().join("policy.yaml"), BAD).unwrap();
        assert!(matches!(r.check(), Outcome::Refused(e) if e.contains("cpu.min")));
        assert!(rx.try_recv().is_err());
        // A refused text counts once, not on every re-read.
        assert_eq!(r.check(), Outcome::Unchanged);
        assert_eq!(r.live_hash(), policy_hash(OTHER));
        let text = shared.metrics.encode();
        assert!(
            text.contains("sidecar_governor_config_reloads_total{result=\"failure\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sidecar_governor_config_last_reload_successful 0"),
            "{text}"
        );
        assert!(text.contains(&format!("config_info{{hash=\"{}\"}} 1", policy_hash(OTHER))));

        std::fs::remove_file(dir.path().join("policy.yaml")).unwrap();
        assert!(matches!(r.check(), Outcome::Refused(_)));
        assert_eq!(r.check(), Outcome::Unchanged);
    }

    #[test]
    fn hash_is_short_and_stable() {
        assert_eq!(policy_hash(GOOD).len(), 16);
        assert_eq!(policy_hash(GOOD), policy_hash(GOOD));
        assert_ne!(policy_hash(GOOD), policy_hash(OTHER));
    }
}
