//! Discovery through the container runtime (CRI): `ListContainers` (running) and
//! `ListPodSandbox` give every container with its Kubernetes names and its pod's annotations;
//! for the containers whose name is in `match.containerNames`, a verbose `ContainerStatus`
//! (asked once per container and cached) gives the PID and the OCI `cgroupsPath`, mapped to the
//! container cgroup under the cgroup root. A container is a proxy only when a process in it has
//! a comm in `match.processNames` (read from procfs, like [`super::procfs`]), and not when that
//! process runs under a gateway or waypoint `pilot-agent` (unless `match.includeGateways`).
//!
//! Freshness: a background task follows `GetContainerEvents` where the runtime offers it and
//! marks discovery dirty on every container start, stop or removal, and when the stream breaks.
//! Without a live stream (containerd 1.6 has none) [`Discovery::changed`] lists the running
//! containers — one cheap call — every tick and compares their IDs with the last pass.
//!
//! The trait is synchronous and called from the control-loop thread: this source owns a small
//! Tokio runtime (one worker thread) and every pass is bounded by one timeout, so a slow runtime
//! costs a tick at most that long.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::cgroup_path::{ContainerPath, parse_container_path, parse_proc_cgroup};
use super::procfs::{Examined, ProcfsDiscovery};
use super::{Discovery, DiscoveryError, Proxy, Source};
use crate::cri::client::{CriClient, CriError, CriTarget};
use crate::cri::parse::{StatusInfo, cgroups_path_to_rel, identity, parse_status_info};
use crate::cri::proto::{Container, ContainerEventType, ContainerStatusResponse, PodSandbox};
use crate::policy::{MatchPolicy, PodControl};

/// A container whose name says proxy but in which no proxy process runs yet (pilot-agent
/// starts Envoy a moment after the container starts) is looked at again every tick for this
/// long, then only at periodic rescans.
const PENDING_FOR: Duration = Duration::from_secs(60);
/// At most this many processes of one container are examined for a proxy process.
const MAX_PIDS_PER_CONTAINER: usize = 256;
/// Retry pause for the event stream when the runtime does not answer.
const EVENTS_RETRY_MAX: Duration = Duration::from_secs(30);
/// Retry pause for the event stream when the runtime does not offer it.
const EVENTS_UNSUPPORTED_RETRY: Duration = Duration::from_secs(300);

/// State shared with the event-stream task.
#[derive(Debug, Default)]
struct EventWatch {
    /// Something happened since the last pass: rescan.
    dirty: AtomicBool,
    /// The stream delivered an event and is still open: no need to list every tick.
    streaming: AtomicBool,
    /// The runtime answered `unimplemented`.
    unsupported: AtomicBool,
    /// Events received (for tests and debugging).
    received: AtomicU64,
}

/// What a verbose status told us about a container, kept for its lifetime.
#[derive(Debug, Clone)]
struct Cached {
    info: StatusInfo,
    started_at_ms: Option<u64>,
}

/// Outcome of looking at one candidate container's processes.
enum Confirmed {
    Proxy(Box<Proxy>),
    Gateway,
    NoProcess,
}

/// Everything one pass fetched from the runtime.
struct Fetched {
    containers: Vec<Container>,
    sandboxes: Vec<PodSandbox>,
    statuses: Vec<(String, Result<ContainerStatusResponse, CriError>)>,
}

/// Discovery through a CRI runtime. See the module documentation.
pub struct CriDiscovery {
    runtime: tokio::runtime::Runtime,
    client: CriClient,
    target: CriTarget,
    procfs: ProcfsDiscovery,
    cgroup_root: PathBuf,
    timeout: Duration,
    statuses: HashMap<String, Cached>,
    pending: HashMap<String, Instant>,
    watch: Arc<EventWatch>,
    last_fingerprint: Option<u64>,
    /// A failure seen by `changed`, handed to the next `discover` instead of a second call.
    deferred: Option<CriError>,
}

impl std::fmt::Debug for CriDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriDiscovery")
            .field("endpoint", &self.client.endpoint())
            .field("cgroup_root", &self.cgroup_root)
            .field("timeout", &self.timeout)
            .field("cached_statuses", &self.statuses.len())
            .field("pending", &self.pending.len())
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

fn millis_since_epoch(nanos: i64) -> Option<u64> {
    u64::try_from(nanos)
        .ok()
        .filter(|n| *n > 0)
        .map(|n| n / 1_000_000)
}

fn fingerprint<'a>(ids: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut ids: Vec<&str> = ids.into_iter().collect();
    ids.sort_unstable();
    let mut h = DefaultHasher::new();
    ids.hash(&mut h);
    h.finish()
}

/// The PIDs in a cgroup directory (`cgroup.procs`), and in its crun `container` leaf.
fn cgroup_pids(dir: &Path) -> Vec<String> {
    let mut pids = Vec::new();
    for d in [dir.to_path_buf(), dir.join("container")] {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().map(|l| l.trim().to_string()));
        }
    }
    pids
}

impl CriDiscovery {
    /// A CRI source dialing `target`, with `timeout` on every call and on every whole pass.
    /// Starts its runtime (one worker thread, `sg-cri`) and the event-stream task; the socket
    /// is dialed lazily, so this succeeds even while the runtime is down.
    pub fn new(
        target: CriTarget,
        proc_root: impl Into<PathBuf>,
        cgroup_root: impl Into<PathBuf>,
        timeout: Duration,
    ) -> Result<CriDiscovery, DiscoveryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sg-cri")
            .enable_all()
            .build()
            .map_err(|source| DiscoveryError::CriRuntime {
                endpoint: target.describe(),
                source,
            })?;
        let client = {
            let _guard = runtime.enter();
            CriClient::new(target.clone(), timeout)
        };
        let watch = Arc::new(EventWatch::default());
        runtime.spawn(follow_events(client.clone(), Arc::clone(&watch)));
        let cgroup_root = cgroup_root.into();
        Ok(CriDiscovery {
            runtime,
            procfs: ProcfsDiscovery::new(proc_root, cgroup_root.clone()),
            client,
            target,
            cgroup_root,
            timeout,
            statuses: HashMap::new(),
            pending: HashMap::new(),
            watch,
            last_fingerprint: None,
            deferred: None,
        })
    }

    /// The endpoint, for logs.
    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    /// True when a socket to dial exists now.
    pub fn socket_exists(&self) -> bool {
        self.target.resolve().is_some_and(|p| p.exists())
    }

    /// `Version`: the runtime's name and version when it answers within the timeout.
    pub fn version(&self) -> Result<(String, String), CriError> {
        let client = self.client.clone();
        let v = self
            .runtime
            .block_on(async move { client.version().await })?;
        Ok((v.runtime_name, v.runtime_version))
    }

    /// True when the runtime's event stream is open and delivering (no per-tick listing).
    pub fn events_streaming(&self) -> bool {
        self.watch.streaming.load(Ordering::Acquire)
    }

    /// Container events received so far.
    pub fn events_received(&self) -> u64 {
        self.watch.received.load(Ordering::Relaxed)
    }

    /// Fetches the lists and the statuses not cached yet, all within one timeout.
    fn fetch(&self, rules: &MatchPolicy) -> Result<Fetched, DiscoveryError> {
        let client = self.client.clone();
        let names: HashSet<String> = rules.container_names.iter().cloned().collect();
        let cached: HashSet<String> = self.statuses.keys().cloned().collect();
        let pass = async move {
            let (containers, sandboxes) = tokio::try_join!(
                client.list_running_containers(),
                client.list_pod_sandboxes()
            )?;
            let mut asks = JoinSet::new();
            for c in &containers {
                if is_candidate(c, &names) && !cached.contains(&c.id) {
                    let client = client.clone();
                    let id = c.id.clone();
                    asks.spawn(async move {
                        let status = client.container_status(&id, true).await;
                        (id, status)
                    });
                }
            }
            let mut statuses = Vec::with_capacity(asks.len());
            while let Some(joined) = asks.join_next().await {
                if let Ok(answer) = joined {
                    statuses.push(answer);
                }
            }
            Ok::<_, CriError>(Fetched {
                containers,
                sandboxes,
                statuses,
            })
        };
        let timeout = self.timeout;
        match self
            .runtime
            .block_on(async move { tokio::time::timeout(timeout, pass).await })
        {
            Ok(Ok(fetched)) => Ok(fetched),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(DiscoveryError::CriPass {
                endpoint: self.client.endpoint().to_string(),
                after: timeout,
            }),
        }
    }

    /// Looks for the proxy process among the container's processes: the PID the runtime
    /// gave first, then everything in the container cgroup.
    fn confirm(
        &self,
        path: &ContainerPath,
        pid: u32,
        rules: &MatchPolicy,
        include_gateways: bool,
    ) -> Confirmed {
        let mut pids = vec![pid.to_string()];
        pids.extend(cgroup_pids(&self.cgroup_root.join(&path.container_rel)));
        let mut seen = HashSet::new();
        for pid in pids
            .into_iter()
            .filter(|p| !p.is_empty())
            .take(MAX_PIDS_PER_CONTAINER)
        {
            if !seen.insert(pid.clone()) {
                continue;
            }
            match self
                .procfs
                .examine(&pid, &rules.process_names, include_gateways)
            {
                Examined::Proxy(p) if p.key == path.container_rel => return Confirmed::Proxy(p),
                Examined::Proxy(p) => debug!(
                    pid,
                    expected = path.container_rel,
                    found = p.key,
                    "proxy process in another cgroup than its container's; ignored"
                ),
                Examined::Gateway => return Confirmed::Gateway,
                Examined::NotProxy => {}
            }
        }
        Confirmed::NoProcess
    }

    /// The container cgroup of a container: from its cgroupsPath, else from its process.
    fn container_path(&self, id: &str, info: &StatusInfo, pid: u32) -> Option<ContainerPath> {
        if let Some(cp) = &info.cgroups_path {
            match cgroups_path_to_rel(cp).and_then(|rel| parse_container_path(&rel)) {
                Some(path) => return Some(path),
                None => debug!(
                    container_id = id,
                    cgroups_path = cp,
                    "cgroupsPath is not a pod container cgroup; trying /proc/PID/cgroup"
                ),
            }
        }
        let text =
            std::fs::read_to_string(self.procfs.proc_root().join(pid.to_string()).join("cgroup"))
                .ok()?;
        parse_proc_cgroup(&text)
            .and_then(|p| self.procfs.host_cgroup_path(p))
            .and_then(|rel| parse_container_path(&rel))
    }
}

fn is_candidate(c: &Container, names: &HashSet<String>) -> bool {
    let name = c
        .labels
        .get(crate::cri::parse::LABEL_CONTAINER_NAME)
        .or(c.metadata.as_ref().map(|m| &m.name));
    name.is_some_and(|n| names.contains(n))
}

impl Discovery for CriDiscovery {
    fn discover(&mut self, rules: &MatchPolicy) -> Result<Vec<Proxy>, DiscoveryError> {
        if let Some(e) = self.deferred.take() {
            return Err(e.into());
        }
        // Everything that happens from here on is seen by this pass or marks the next one.
        self.watch.dirty.store(false, Ordering::Release);
        let fetched = self.fetch(rules)?;
        let names: HashSet<String> = rules.container_names.iter().cloned().collect();
        let include_gateways = rules.include_gateways;

        for (id, answer) in fetched.statuses {
            match answer {
                Ok(response) => {
                    let started_at_ms = response
                        .status
                        .as_ref()
                        .and_then(|s| millis_since_epoch(s.started_at));
                    match parse_status_info(&id, &response.info) {
                        Ok(info) => {
                            self.statuses.insert(
                                id,
                                Cached {
                                    info,
                                    started_at_ms,
                                },
                            );
                        }
                        Err(e) => warn!(error = %e, "cannot read container status; skipped"),
                    }
                }
                Err(e) if e.is_not_found() => {
                    debug!(
                        container_id = id,
                        "container gone before its status was read"
                    );
                }
                Err(e) => {
                    warn!(container_id = id, error = %e, "container status failed; retried next pass")
                }
            }
        }

        let running: HashSet<&str> = fetched.containers.iter().map(|c| c.id.as_str()).collect();
        self.statuses.retain(|id, _| running.contains(id.as_str()));
        self.pending.retain(|id, _| running.contains(id.as_str()));
        self.last_fingerprint = Some(fingerprint(running.iter().copied()));

        let sandboxes: HashMap<&str, &PodSandbox> = fetched
            .sandboxes
            .iter()
            .map(|s| (s.id.as_str(), s))
            .collect();
        let now = Instant::now();
        let mut found: Vec<Proxy> = Vec::new();
        let mut keys = HashSet::new();
        for c in fetched
            .containers
            .iter()
            .filter(|c| is_candidate(c, &names))
        {
            let Some(cached) = self.statuses.get(&c.id) else {
                self.pending.entry(c.id.clone()).or_insert(now);
                continue;
            };
            let Some(pid) = cached.info.pid else {
                debug!(
                    container_id = c.id,
                    "running container without a PID; skipped"
                );
                continue;
            };
            let sandbox = sandboxes.get(c.pod_sandbox_id.as_str()).copied();
            let who = identity(
                &c.labels,
                c.metadata.as_ref().map(|m| m.name.as_str()),
                sandbox,
            );
            let Some(path) = self.container_path(&c.id, &cached.info, pid) else {
                debug!(
                    container_id = c.id,
                    namespace = who.namespace,
                    pod = who.pod,
                    container = who.container,
                    "not in a pod container cgroup; skipped"
                );
                continue;
            };
            let mut proxy = match self.confirm(&path, pid, rules, include_gateways) {
                Confirmed::Proxy(p) => *p,
                Confirmed::Gateway => {
                    debug!(
                        namespace = who.namespace,
                        pod = who.pod,
                        container = who.container,
                        "gateway or waypoint; not a sidecar (match.includeGateways)"
                    );
                    self.pending.remove(&c.id);
                    continue;
                }
                Confirmed::NoProcess => {
                    self.pending.entry(c.id.clone()).or_insert(now);
                    debug!(
                        namespace = who.namespace,
                        pod = who.pod,
                        container = who.container,
                        "no proxy process in the container (yet)"
                    );
                    continue;
                }
            };
            self.pending.remove(&c.id);
            let (control, control_errors) =
                match sandbox.map(|s| PodControl::from_annotations(&s.annotations)) {
                    Some(Ok(control)) => (control, Vec::new()),
                    Some(Err(errors)) => (
                        PodControl::default(),
                        errors.iter().map(ToString::to_string).collect(),
                    ),
                    None => (PodControl::default(), Vec::new()),
                };
            proxy.id.namespace = who.namespace;
            proxy.id.pod = who.pod;
            proxy.id.container = who.container;
            if !who.pod_uid.is_empty() {
                proxy.id.pod_uid = who.pod_uid;
            }
            // The runtime's ID is the full one; the cgroup name may be the same or a prefix.
            proxy.id.container_id = c.id.clone();
            // A candidate by its runtime container name, with a proxy process in it.
            proxy.runtime_identity = !proxy.id.namespace.is_empty();
            proxy.control = control;
            proxy.control_errors = control_errors;
            proxy.started_at_ms = cached.started_at_ms;
            if keys.insert(proxy.key.clone()) {
                found.push(proxy);
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn changed(&mut self) -> bool {
        if self.watch.dirty.swap(false, Ordering::AcqRel) {
            return true;
        }
        let now = Instant::now();
        if self
            .pending
            .values()
            .any(|since| now.saturating_duration_since(*since) < PENDING_FOR)
        {
            return true;
        }
        if self.watch.streaming.load(Ordering::Acquire) {
            return false;
        }
        let client = self.client.clone();
        let timeout = self.timeout;
        let listed = self.runtime.block_on(async move {
            match tokio::time::timeout(timeout, client.list_running_containers()).await {
                Ok(r) => r,
                Err(_) => Err(CriError::Timeout {
                    endpoint: client.endpoint().to_string(),
                    op: "ListContainers",
                    after: timeout,
                }),
            }
        });
        match listed {
            Ok(containers) => {
                let fp = fingerprint(containers.iter().map(|c| c.id.as_str()));
                self.last_fingerprint != Some(fp)
            }
            Err(e) => {
                self.deferred = Some(e);
                true
            }
        }
    }

    fn source(&self) -> Source {
        Source::Cri
    }
}

/// Follows `GetContainerEvents` for as long as the discovery lives, marking it dirty on
/// container starts, stops and removals, and when the stream opens or breaks (events may have
/// been missed). Backs off while the runtime is away; retries rarely where the call is not
/// offered.
async fn follow_events(client: CriClient, watch: Arc<EventWatch>) {
    let mut pause = Duration::from_secs(1);
    loop {
        match client.container_events().await {
            Ok(mut stream) => {
                let mut open = false;
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            if !open {
                                open = true;
                                watch.streaming.store(true, Ordering::Release);
                                info!(
                                    endpoint = client.endpoint(),
                                    "CRI event stream open: rescanning on container events"
                                );
                            }
                            watch.received.fetch_add(1, Ordering::Relaxed);
                            if event.container_event_type
                                != ContainerEventType::ContainerCreatedEvent as i32
                            {
                                watch.dirty.store(true, Ordering::Release);
                            }
                            pause = Duration::from_secs(1);
                        }
                        Ok(None) => {
                            warn!(
                                endpoint = client.endpoint(),
                                "CRI event stream ended; relisting"
                            );
                            break;
                        }
                        Err(status) => {
                            warn!(
                                endpoint = client.endpoint(),
                                code = ?status.code(),
                                error = status.message(),
                                "CRI event stream broke; relisting"
                            );
                            break;
                        }
                    }
                }
                watch.streaming.store(false, Ordering::Release);
                watch.dirty.store(true, Ordering::Release);
            }
            Err(e) if e.is_unimplemented() => {
                watch.streaming.store(false, Ordering::Release);
                if !watch.unsupported.swap(true, Ordering::AcqRel) {
                    info!(
                        endpoint = client.endpoint(),
                        "the runtime offers no GetContainerEvents: listing running containers every tick instead"
                    );
                }
                pause = EVENTS_UNSUPPORTED_RETRY;
            }
            Err(e) => {
                debug!(error = %e, "CRI event stream not open; retrying");
            }
        }
        tokio::time::sleep(pause).await;
        if pause < EVENTS_UNSUPPORTED_RETRY {
            pause = (pause * 2).min(EVENTS_RETRY_MAX);
        }
    }
}
