//! CRI discovery with a procfs fallback: the source behind `--discovery auto` and `cri`.
//! While the runtime answers, proxies come from [`CriDiscovery`]; when a CRI pass fails (socket
//! gone, error, timeout) the same pass is served by [`ProcfsDiscovery`], the change is logged
//! once, and the runtime is probed (`Version`, bounded by the CRI timeout) every
//! `probe_every` until it answers, when discovery returns to CRI. During the fallback the names
//! and annotations CRI gave for containers still present are kept (keyed by container cgroup),
//! so governed proxies keep their metric labels and per-pod settings; containers that start
//! meanwhile are found by process name alone, at the agent's periodic rescans.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::cri::CriDiscovery;
use super::procfs::ProcfsDiscovery;
use super::{Discovery, DiscoveryError, Proxy, Source};
use crate::identity::Identity;
use crate::policy::{MatchPolicy, PodControl};

/// What CRI said about a container, kept for the fallback.
#[derive(Debug, Clone)]
struct Known {
    id: Identity,
    runtime_identity: bool,
    control: PodControl,
    control_errors: Vec<String>,
    started_at_ms: Option<u64>,
}

impl Known {
    fn of(p: &Proxy) -> Known {
        Known {
            id: p.id.clone(),
            runtime_identity: p.runtime_identity,
            control: p.control,
            control_errors: p.control_errors.clone(),
            started_at_ms: p.started_at_ms,
        }
    }

    fn apply(&self, p: &mut Proxy) {
        p.id = self.id.clone();
        p.runtime_identity = self.runtime_identity;
        p.control = self.control;
        p.control_errors = self.control_errors.clone();
        p.started_at_ms = self.started_at_ms;
    }
}

/// CRI first, procfs while CRI does not answer. See the module documentation.
#[derive(Debug)]
pub struct AutoDiscovery {
    cri: CriDiscovery,
    procfs: ProcfsDiscovery,
    active: Source,
    /// No pass has run yet (the first failure is announced differently).
    first: bool,
    known: HashMap<String, Known>,
    probe_every: Duration,
    last_probe: Option<Instant>,
    /// A probe succeeded: the next pass tries CRI.
    cri_back: bool,
}

impl AutoDiscovery {
    /// CRI through `cri`, procfs through `procfs` while CRI fails; the runtime is probed every
    /// `probe_every` during the fallback.
    pub fn new(cri: CriDiscovery, procfs: ProcfsDiscovery, probe_every: Duration) -> Self {
        AutoDiscovery {
            cri,
            procfs,
            active: Source::Cri,
            first: true,
            known: HashMap::new(),
            probe_every,
            last_probe: None,
            cri_back: false,
        }
    }

    /// The CRI source inside.
    pub fn cri(&self) -> &CriDiscovery {
        &self.cri
    }

    fn probe_due(&self, now: Instant) -> bool {
        self.last_probe
            .is_none_or(|t| now.saturating_duration_since(t) >= self.probe_every)
    }

    /// During the fallback: is the runtime back? At most once per `probe_every`.
    fn probe(&mut self, now: Instant) -> bool {
        if !self.probe_due(now) {
            return false;
        }
        self.last_probe = Some(now);
        match self.cri.version() {
            Ok((name, version)) => {
                debug!(runtime = name, version, "CRI answers again");
                true
            }
            Err(e) => {
                debug!(error = %e, "CRI still not answering");
                false
            }
        }
    }
}

impl Discovery for AutoDiscovery {
    fn discover(&mut self, rules: &MatchPolicy) -> Result<Vec<Proxy>, DiscoveryError> {
        let now = Instant::now();
        let try_cri = self.active == Source::Cri || std::mem::take(&mut self.cri_back) || {
            let due = self.probe_due(now);
            due && self.probe(now)
        };
        if try_cri {
            match self.cri.discover(rules) {
                Ok(found) => {
                    if self.active != Source::Cri || self.first {
                        info!(
                            endpoint = self.cri.endpoint(),
                            proxies = found.len(),
                            "discovery through CRI"
                        );
                    }
                    self.active = Source::Cri;
                    self.first = false;
                    self.known = found
                        .iter()
                        .map(|p| (p.key.clone(), Known::of(p)))
                        .collect();
                    return Ok(found);
                }
                Err(e) => {
                    if self.first && !self.cri.socket_exists() {
                        info!(
                            endpoint = self.cri.endpoint(),
                            "no CRI socket: discovery through procfs (CRI is probed every {:?})",
                            self.probe_every
                        );
                    } else if self.active == Source::Cri {
                        warn!(
                            error = %e,
                            "CRI not answering: discovery falls back to procfs until it does (probed every {:?})",
                            self.probe_every
                        );
                    } else {
                        debug!(error = %e, "CRI pass failed again");
                    }
                    self.active = Source::Procfs;
                    self.last_probe = Some(now);
                }
            }
        }
        self.first = false;
        let mut found = self.procfs.discover(rules)?;
        for p in &mut found {
            if let Some(k) = self.known.get(&p.key) {
                k.apply(p);
            }
        }
        self.known
            .retain(|key, _| found.iter().any(|p| &p.key == key));
        Ok(found)
    }

    fn changed(&mut self) -> bool {
        match self.active {
            Source::Cri => self.cri.changed(),
            Source::Procfs => {
                let back = self.probe(Instant::now());
                self.cri_back |= back;
                back
            }
        }
    }

    fn source(&self) -> Source {
        self.active
    }
}
