//! The agent: one control loop that ties discovery, the sampler, the controller, the actuator
//! and the journal together, tick by tick. [`Agent::tick`] takes the time as an argument so
//! tests drive it on fixture trees; [`Agent::run`] is the real loop on its own thread, woken by
//! the interval or by a [`Command`] (stop, new policy).

mod memory;
mod storm;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::actuator::{self, RestoreReport};
use crate::cgroup::{CgroupError, CpuMax};
use crate::controller::{
    CpuBounds, CpuDecision, CpuObservation, CpuState, Direction, Reason, decide_cpu,
};
use crate::discovery::{Discovery, Proxy};
use crate::events::{EventReason, EventSink, NoEvents, PodEvent};
use crate::journal::{Entry, Journal, JournalError};
use crate::metrics::ProxyLabels;
use crate::policy::{CpuPolicy, Mode, Policy};
use crate::quantity::format_cpu_millis;
use crate::sampler::{ProxyFiles, RawSample, cpu_observation};
use crate::server::{ActionView, ProxyView, Shared, now_unix};

/// What the control loop can be told.
#[derive(Debug)]
pub enum Command {
    /// Stop: restore (if the policy says so) and return.
    Stop,
    /// Apply a new, validated policy from the next tick on.
    Policy(Box<Policy>),
}

/// One governed proxy and the loop's memory of it.
#[derive(Debug)]
struct Governed {
    proxy: Proxy,
    labels: ProxyLabels,
    files: ProxyFiles,
    prev: Option<RawSample>,
    cpu: CpuState,
    /// `cpu.max` before the agent's first write (from the journal after a restart).
    original: CpuMax,
    /// What the agent last wrote and the kernel confirmed; `None` while untouched.
    written: Option<CpuMax>,
    /// Dry run: the quota decisions would have set.
    planned_millis: Option<u64>,
    backoff_until: Option<Instant>,
    failing: bool,
    last_obs: Option<CpuObservation>,
    last_action: Option<ActionView>,
    /// The proxy's own mode (namespace override or pod annotation): `DryRun` means no writes
    /// for this one; `Off` proxies are never governed.
    mode: Mode,
    /// The memory side; `None` when the cgroup has no memory controller files.
    mem: Option<memory::MemoryGoverned>,
}

/// A CPU decision taken this tick, waiting for the push-storm check before it is applied.
#[derive(Debug)]
struct PendingCpu {
    key: String,
    decision: CpuDecision,
    from: u64,
    floor: u64,
    sample: RawSample,
    obs: CpuObservation,
    dry_run: bool,
    burst_ratio: f64,
    above_limit: bool,
}

/// Whether a container's originals are in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Journaling {
    Recorded,
    Failed,
}

/// What sampling and deciding one proxy's CPU came to.
#[derive(Debug)]
enum Step {
    Gone,
    Steady,
    Decided(Box<PendingCpu>),
}

/// Outcome of stopping the agent.
#[derive(Debug)]
pub struct Shutdown {
    pub restore: Option<RestoreReport>,
}

/// The node agent.
#[derive(Debug)]
pub struct Agent {
    cgroup_root: PathBuf,
    policy: Policy,
    dry_run_flag: bool,
    discovery: Box<dyn DiscoveryDebug>,
    governed: BTreeMap<String, Governed>,
    journal: Journal,
    shared: Arc<Shared>,
    last_scan: Option<Instant>,
    buf: Vec<u8>,
    events: Arc<dyn EventSink>,
    storm: storm::StormDetector,
}

/// `Discovery` plus `Debug`, so the agent can derive `Debug`.
pub trait DiscoveryDebug: Discovery + std::fmt::Debug {}
impl<T: Discovery + std::fmt::Debug> DiscoveryDebug for T {}

fn labels_of(p: &Proxy) -> ProxyLabels {
    ProxyLabels {
        namespace: p.namespace.clone(),
        pod: p.pod.clone(),
        container: p.container.clone(),
        pod_uid: p.pod_uid.clone(),
        container_id: p.container_id.clone(),
    }
}

impl Agent {
    /// An agent over `cgroup_root` with its journal already loaded (the caller holds the
    /// state directory's lock). `dry_run_flag` forces dry run whatever the policy says.
    pub fn new(
        cgroup_root: PathBuf,
        policy: Policy,
        dry_run_flag: bool,
        discovery: Box<dyn DiscoveryDebug>,
        journal: Journal,
        shared: Arc<Shared>,
    ) -> Agent {
        let agent = Agent {
            cgroup_root,
            policy,
            dry_run_flag,
            discovery,
            governed: BTreeMap::new(),
            journal,
            shared,
            last_scan: None,
            buf: Vec::with_capacity(4096),
            events: Arc::new(NoEvents),
            storm: storm::StormDetector::default(),
        };
        agent.publish_mode();
        agent
    }

    /// Sends Kubernetes Events about governed pods to `sink` (off by default).
    pub fn set_events(&mut self, sink: Arc<dyn EventSink>) {
        self.events = sink;
    }

    fn publish_mode(&self) {
        self.shared.metrics.set_policy(&self.policy);
        let dry = self.dry_run();
        self.shared
            .dry_run
            .store(dry, std::sync::atomic::Ordering::Relaxed);
        self.shared.metrics.dry_run.set(i64::from(dry));
        self.shared
            .metrics
            .set_source(self.discovery.source().as_str());
    }

    /// True when decisions are not written.
    pub fn dry_run(&self) -> bool {
        self.dry_run_flag || self.policy.dry_run
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Keys of the proxies governed now.
    pub fn governed(&self) -> Vec<String> {
        self.governed.keys().cloned().collect()
    }

    /// Replaces the policy; bounds and thresholds apply from the next tick.
    pub fn set_policy(&mut self, policy: Policy) {
        info!(policy = policy.summary(), "policy applied");
        let rescan =
            policy.matching != self.policy.matching || policy.overrides != self.policy.overrides;
        self.policy = policy;
        if rescan {
            self.last_scan = None;
        }
        self.publish_mode();
    }

    /// One control tick at time `now`.
    pub fn tick(&mut self, now: Instant) {
        let started = Instant::now();
        let rescan_due = self.last_scan.is_none_or(|t| {
            now.saturating_duration_since(t) >= self.policy.matching.rescan_interval
        });
        // `changed`: the source saw containers start or stop (CRI) — rescan now, not later.
        if rescan_due || self.discovery.changed() {
            self.rescan(now);
        }
        let keys: Vec<String> = self.governed.keys().cloned().collect();
        let mut gone = Vec::new();
        let mut pending = Vec::new();
        for key in keys {
            let dry_run = self.proxy_dry_run(&key);
            let alive = match self.step(&key, now) {
                Step::Gone => false,
                Step::Steady => true,
                Step::Decided(p) => {
                    pending.push(*p);
                    true
                }
            };
            if !alive || !self.step_memory(&key, now, dry_run) {
                gone.push(key);
            }
        }
        // Many proxies wanting to grow at once is a config push: hold growth back briefly.
        let wanting: Vec<&str> = pending
            .iter()
            .filter(|p| {
                p.decision.direction == Direction::Up && p.decision.reason != Reason::Policy
            })
            .map(|p| p.key.as_str())
            .collect();
        let storm = self.storm.observe(
            now,
            &wanting,
            self.governed.len(),
            &self.policy.cpu.push_storm,
        );
        if storm == storm::Storm::Started {
            self.shared.metrics.push_storms.inc();
            warn!(
                proxies = wanting.len(),
                governed = self.governed.len(),
                grace_s = self.policy.cpu.push_storm.grace.as_secs_f64(),
                "push storm: many proxies spiked at once (a config push?); holding growth back"
            );
        }
        for p in pending {
            if storm != storm::Storm::Calm
                && p.decision.direction == Direction::Up
                && p.decision.reason != Reason::Policy
            {
                debug!(cgroup = p.key, "growth held back during a push storm");
                continue;
            }
            let key = p.key.clone();
            if !self.apply_cpu(p) {
                gone.push(key);
            }
        }
        for key in gone {
            self.forget(&key, false);
        }
        let m = &self.shared.metrics;
        m.proxies.set(self.governed.len() as i64);
        m.journal_entries.set(self.journal.len() as i64);
        m.ticks.inc();
        m.tick_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        self.publish();
    }

    /// Runs discovery and reconciles the governed set with what it found.
    fn rescan(&mut self, now: Instant) {
        self.last_scan = Some(now);
        let result = self.discovery.discover(&self.policy.matching);
        // An `auto` source may have switched between CRI and procfs.
        self.shared
            .metrics
            .set_source(self.discovery.source().as_str());
        let found = match result {
            Ok(found) => found,
            Err(e) => {
                warn!(error = %e, "discovery failed; keeping the current proxy set");
                self.shared.metrics.error("discovery");
                return;
            }
        };
        let excluded = &self.policy.matching.exclude_namespaces;
        let policy = &self.policy;
        let found: Vec<(Proxy, Mode)> = found
            .into_iter()
            .filter(|p| p.namespace.is_empty() || !excluded.contains(&p.namespace))
            .map(|p| {
                let mode = policy.effective(&p.namespace, &p.control).mode;
                (p, mode)
            })
            .filter(|(p, mode)| {
                if *mode == Mode::Off {
                    debug!(
                        cgroup = p.key,
                        namespace = p.namespace,
                        pod = p.pod,
                        "mode off; not governed"
                    );
                }
                *mode != Mode::Off
            })
            .collect();
        let live: HashSet<&str> = found.iter().map(|(p, _)| p.key.as_str()).collect();
        let vanished: Vec<String> = self
            .governed
            .keys()
            .filter(|k| !live.contains(k.as_str()))
            .cloned()
            .collect();
        for key in vanished {
            self.forget(&key, true);
        }
        for (proxy, mode) in found {
            match self.governed.get_mut(&proxy.key) {
                None => self.adopt(proxy, mode),
                Some(g) if g.mode != mode => {
                    info!(
                        cgroup = proxy.key,
                        namespace = proxy.namespace,
                        pod = proxy.pod,
                        from = g.mode.as_str(),
                        to = mode.as_str(),
                        "proxy mode changed; releasing and governing afresh"
                    );
                    let key = proxy.key.clone();
                    self.forget(&key, true);
                    self.adopt(proxy, mode);
                }
                Some(g) => {
                    // Names learnt later (CRI back after a procfs fallback) or new settings.
                    let p = &g.proxy;
                    if (&p.namespace, &p.pod, &p.container, &p.pod_uid, &p.control)
                        != (
                            &proxy.namespace,
                            &proxy.pod,
                            &proxy.container,
                            &proxy.pod_uid,
                            &proxy.control,
                        )
                    {
                        self.shared.metrics.forget(&g.labels);
                        g.labels = labels_of(&proxy);
                        g.proxy = proxy;
                    }
                }
            }
        }
        self.release_orphans();
    }

    /// Starts governing a newly found proxy in `mode` (`On` or `DryRun`).
    fn adopt(&mut self, proxy: Proxy, mode: Mode) {
        let opened = ProxyFiles::open(&proxy.dir).and_then(|mut files| {
            files
                .sample(&mut self.buf, Instant::now())
                .map(|s| (files, s))
        });
        let (files, first) = match opened {
            Ok(v) => v,
            Err(e) if e.is_gone() => {
                debug!(cgroup = proxy.key, "proxy vanished while being adopted");
                return;
            }
            Err(e) => {
                warn!(cgroup = proxy.key, error = %e, "cannot read proxy cgroup; not governed");
                self.shared.metrics.error(e.kind());
                return;
            }
        };
        let journaled = self
            .journal
            .get(&proxy.key)
            .and_then(|e| crate::cgroup::parse::parse_cpu_max(&e.cpu_max).ok());
        let (original, written) = match journaled {
            // Restarted after changing it: the journal holds the original, the file ours.
            Some(original) => (original, Some(first.cpu_max)),
            None => (first.cpu_max, None),
        };
        info!(
            cgroup = proxy.key,
            pod_uid = proxy.pod_uid,
            container_id = proxy.container_id,
            namespace = proxy.namespace,
            pod = proxy.pod,
            container = proxy.container,
            pid = proxy.pid,
            cpu_max = %first.cpu_max,
            original = %original,
            mode = mode.as_str(),
            since_start_ms = proxy.started_at_ms.map(|t| unix_millis().saturating_sub(t)),
            "governing proxy"
        );
        for problem in &proxy.control_errors {
            warn!(
                namespace = proxy.namespace,
                pod = proxy.pod,
                error = problem.as_str(),
                "bad pod annotation; the pod is left at the policy's settings"
            );
            self.shared.metrics.error("annotation");
        }
        let journaled_high = self
            .journal
            .get(&proxy.key)
            .and_then(|e| e.memory_high.clone());
        let mem = match memory::MemoryGoverned::open(
            &proxy.dir,
            &mut self.buf,
            journaled_high.as_deref(),
        ) {
            Ok(m) => Some(m),
            Err(e) => {
                debug!(cgroup = proxy.key, error = %e, "no memory files; memory not governed");
                None
            }
        };
        let labels = labels_of(&proxy);
        let governed = Governed {
            mem,
            labels,
            files,
            prev: None,
            cpu: CpuState::default(),
            original,
            written,
            planned_millis: None,
            backoff_until: None,
            failing: false,
            last_obs: None,
            last_action: None,
            mode,
            proxy,
        };
        self.governed.insert(governed.proxy.key.clone(), governed);
    }

    /// Stops governing `key`. With `release`, a container that still exists gets its
    /// originals back (it is no longer a proxy we govern); otherwise it is gone.
    fn forget(&mut self, key: &str, release: bool) {
        let Some(g) = self.governed.remove(key) else {
            return;
        };
        self.shared.metrics.forget(&g.labels);
        if release && g.proxy.dir.is_dir() {
            info!(cgroup = key, "proxy no longer found; releasing");
            self.restore_keys(Reason::Released, |k| k == key);
        } else {
            debug!(cgroup = key, "proxy gone");
            if let Err(e) = self.journal.remove_all([key]) {
                warn!(cgroup = key, error = %e, "cannot prune journal entry");
                self.shared.metrics.error("journal");
            }
        }
    }

    /// Journal entries for containers not governed now: restore those that still exist
    /// (left by an earlier run), prune the rest.
    fn release_orphans(&mut self) {
        let orphans: HashSet<String> = self
            .journal
            .entries()
            .map(|(k, _)| k.clone())
            .filter(|k| !self.governed.contains_key(k))
            .collect();
        if !orphans.is_empty() {
            self.restore_keys(Reason::Released, |k| orphans.contains(k));
        }
    }

    fn restore_keys(
        &mut self,
        reason: Reason,
        select: impl Fn(&str) -> bool,
    ) -> Option<RestoreReport> {
        if self.dry_run() {
            return None;
        }
        type PodOf = (String, String, String, bool);
        let pods: BTreeMap<String, PodOf> = self
            .journal
            .entries()
            .filter(|(k, _)| select(k))
            .map(|(k, e)| {
                (
                    k.clone(),
                    (
                        e.namespace.clone(),
                        e.pod.clone(),
                        e.pod_uid.clone(),
                        e.memory_high.is_some(),
                    ),
                )
            })
            .collect();
        match actuator::restore_journal(&self.cgroup_root, &mut self.journal, select) {
            Ok(report) => {
                for key in &report.restored {
                    self.shared
                        .metrics
                        .action("cpu", "restore", reason.as_str());
                    if pods.get(key.as_str()).is_some_and(|p| p.3) {
                        self.shared
                            .metrics
                            .action("memory", "restore", reason.as_str());
                    }
                    if let Some((namespace, pod, pod_uid, _)) = pods.get(key.as_str()) {
                        self.events.emit(PodEvent {
                            namespace: namespace.clone(),
                            pod: pod.clone(),
                            pod_uid: pod_uid.clone(),
                            reason: EventReason::Restored,
                            message: format!("Original limits put back ({})", reason.as_str()),
                        });
                    }
                }
                for (_, e) in &report.failed {
                    self.shared.metrics.error(e.kind());
                }
                Some(report)
            }
            Err(e) => {
                warn!(error = %e, "cannot update journal after restore");
                self.shared.metrics.error("journal");
                None
            }
        }
    }

    /// True when this proxy's decisions are not written (global or its own dry run).
    fn proxy_dry_run(&self, key: &str) -> bool {
        self.dry_run()
            || self
                .governed
                .get(key)
                .is_some_and(|g| g.mode == Mode::DryRun)
    }

    /// The CPU bounds of one proxy: policy (narrowed by namespace override and pod
    /// annotations), its original limit, and Envoy's worker count.
    fn cpu_bounds(cpu: &CpuPolicy, g: &Governed) -> CpuBounds {
        CpuBounds::new(cpu, g.original.millis())
            .with_concurrency(g.proxy.concurrency, cpu.per_worker_min_millis)
    }

    /// Makes sure `key`'s originals (CPU and, when governed, memory) are journaled before a
    /// write. Never write what could not be journaled.
    /// With `with_pod`, the pod cgroup's `cpu.max` is journaled too (before it is first raised).
    fn ensure_journaled(&mut self, key: &str, with_pod: bool) -> Journaling {
        let Some(g) = self.governed.get(key) else {
            return Journaling::Failed;
        };
        let memory_high = g.mem.as_ref().map(|m| memory::high_text(m.original));
        let pod_cpu_max = if with_pod {
            match read_cpu_max(&g.proxy.pod_dir) {
                Ok(m) => Some(m.to_string()),
                Err(e) => {
                    warn!(cgroup = key, error = %e, "cannot read the pod's cpu.max; not writing");
                    self.shared.metrics.error(e.kind());
                    return Journaling::Failed;
                }
            }
        } else {
            None
        };
        let result = match self.journal.get(key) {
            Some(e)
                if (e.memory_high.is_some() || memory_high.is_none())
                    && (e.pod_cpu_max.is_some() || pod_cpu_max.is_none()) =>
            {
                return Journaling::Recorded;
            }
            Some(_) => self.journal.update(key, |e| {
                if e.memory_high.is_none() {
                    e.memory_high = memory_high;
                }
                if e.pod_cpu_max.is_none() {
                    e.pod_cpu_max = pod_cpu_max;
                }
            }),
            None => {
                let burst = actuator::read_cpu_burst(&g.proxy.dir).ok().flatten();
                let entry = Entry {
                    pod_uid: g.proxy.pod_uid.clone(),
                    container_id: g.proxy.container_id.clone(),
                    namespace: g.proxy.namespace.clone(),
                    pod: g.proxy.pod.clone(),
                    container: g.proxy.container.clone(),
                    cpu_max: g.original.to_string(),
                    cpu_max_burst: burst.map(|b| b.to_string()),
                    pod_cpu_max,
                    memory_high,
                    recorded_at: now_unix(),
                };
                self.journal.record(key, entry)
            }
        };
        match result {
            Ok(()) => Journaling::Recorded,
            Err(e) => {
                warn!(cgroup = key, error = %e, "cannot journal originals; not writing");
                self.shared.metrics.error("journal");
                Journaling::Failed
            }
        }
    }

    /// Samples and decides the CPU of one proxy; the decision is applied by [`Self::apply_cpu`]
    /// once the whole node has been seen (push-storm check).
    fn step(&mut self, key: &str, now: Instant) -> Step {
        // The proxy's own dry run and bounds (namespace override, pod annotations).
        let (dry_run, cpu_policy) = match self.governed.get(key) {
            Some(g) => (
                self.dry_run() || g.mode == Mode::DryRun,
                self.policy
                    .effective(&g.proxy.namespace, &g.proxy.control)
                    .cpu,
            ),
            None => return Step::Steady,
        };
        let Some(g) = self.governed.get_mut(key) else {
            return Step::Steady;
        };
        let sample = match g.files.sample(&mut self.buf, now) {
            Ok(s) => s,
            Err(e) if e.is_gone() => return Step::Gone,
            Err(e) => {
                if !g.failing {
                    warn!(cgroup = key, error = %e, "cannot sample proxy");
                }
                g.failing = true;
                self.shared.metrics.error(e.kind());
                return Step::Steady;
            }
        };
        if g.failing {
            info!(cgroup = key, "sampling recovered");
            g.failing = false;
        }

        // Coexistence: someone else changed the file.
        if !dry_run {
            match g.written {
                Some(w) if w != sample.cpu_max => {
                    warn!(
                        cgroup = key,
                        wrote = %w,
                        found = %sample.cpu_max,
                        "cpu.max changed by someone else (kubelet resize or an operator); adopting it as the original"
                    );
                    self.shared.metrics.conflicts.inc();
                    self.events.emit(PodEvent {
                        namespace: g.proxy.namespace.clone(),
                        pod: g.proxy.pod.clone(),
                        pod_uid: g.proxy.pod_uid.clone(),
                        reason: EventReason::Conflict,
                        message: format!(
                            "cpu.max of container {} changed by someone else (wrote {w}, found {}): adopted as the original; backing off",
                            g.proxy.container, sample.cpu_max
                        ),
                    });
                    g.original = sample.cpu_max;
                    g.written = None;
                    g.cpu = CpuState::default();
                    g.backoff_until = Some(now + self.policy.cpu.conflict_backoff);
                    let text = sample.cpu_max.to_string();
                    if let Err(e) = self.journal.update(key, |e| e.cpu_max = text) {
                        warn!(cgroup = key, error = %e, "cannot update journal");
                        self.shared.metrics.error("journal");
                    }
                }
                None => g.original = sample.cpu_max,
                _ => {}
            }
        }

        let bounds = Self::cpu_bounds(&cpu_policy, g);
        let in_force = if dry_run {
            g.planned_millis.or(sample.cpu_max.millis())
        } else {
            sample.cpu_max.millis()
        }
        .unwrap_or(bounds.ceiling);
        let obs = g
            .prev
            .as_ref()
            .and_then(|prev| cpu_observation(prev, &sample, in_force));
        g.prev = Some(sample);
        let Some(obs) = obs else {
            return Step::Steady;
        };
        g.last_obs = Some(obs);
        if let Some(until) = g.backoff_until {
            if now < until {
                return Step::Steady;
            }
            g.backoff_until = None;
        }
        match decide_cpu(&mut g.cpu, &obs, bounds, &cpu_policy) {
            None => Step::Steady,
            Some(decision) => Step::Decided(Box::new(PendingCpu {
                key: key.to_string(),
                decision,
                from: in_force,
                floor: bounds.floor,
                sample,
                obs,
                dry_run,
                burst_ratio: cpu_policy.burst_ratio,
                above_limit: cpu_policy.allow_above_limit,
            })),
        }
    }

    /// Applies a CPU decision. Returns false when the proxy turned out to be gone.
    fn apply_cpu(&mut self, p: PendingCpu) -> bool {
        let PendingCpu {
            key,
            decision,
            from,
            floor,
            sample,
            obs,
            dry_run,
            burst_ratio,
            above_limit,
        } = p;
        let key = key.as_str();
        let to = decision.quota_millis;
        // The pod is managed once the policy allows going above the limit, and for as long as
        // the journal says the pod was raised (even if the policy changed since).
        let journaled_pod = |journal: &Journal| {
            journal
                .get(key)
                .and_then(|e| e.pod_cpu_max.as_deref())
                .and_then(|t| crate::cgroup::parse::parse_cpu_max(t).ok())
        };
        let with_pod = above_limit || journaled_pod(&self.journal).is_some();
        if !dry_run && self.ensure_journaled(key, with_pod) == Journaling::Failed {
            return true;
        }
        let pod_original = journaled_pod(&self.journal);
        let Some(g) = self.governed.get_mut(key) else {
            return true;
        };
        if dry_run {
            g.planned_millis = Some(to);
        } else {
            let written = match &pod_original {
                Some(pod) => actuator::set_cpu_in_pod(
                    &g.proxy.dir,
                    &g.proxy.pod_dir,
                    &sample.cpu_max,
                    to,
                    burst_ratio,
                    pod,
                    g.original.millis(),
                ),
                None => actuator::set_cpu(&g.proxy.dir, &sample.cpu_max, to, burst_ratio),
            };
            match written {
                Ok((now_max, _burst)) => {
                    g.written = Some(now_max);
                    g.prev = Some(RawSample {
                        cpu_max: now_max,
                        ..sample
                    });
                }
                Err(e) if e.is_gone() => return false,
                Err(e) => {
                    warn!(cgroup = key, error = %e, "cpu.max write failed");
                    self.shared.metrics.error(e.kind());
                    // What is in the file now is unknown: read it again next tick.
                    g.written = read_cpu_max(&g.proxy.dir).ok().filter(|m| *m != g.original);
                    return true;
                }
            }
        }
        let (direction, reason) = (decision.direction.as_str(), decision.reason.as_str());
        self.shared.metrics.action("cpu", direction, reason);
        let event = match decision.direction {
            _ if dry_run => None,
            Direction::Up => Some(EventReason::ScaledUp),
            Direction::Down if to <= floor => Some(EventReason::AtFloor),
            _ => None,
        };
        if let Some(event) = event {
            self.events.emit(PodEvent {
                namespace: g.proxy.namespace.clone(),
                pod: g.proxy.pod.clone(),
                pod_uid: g.proxy.pod_uid.clone(),
                reason: event,
                message: format!(
                    "CPU quota of container {} {} {} -> {} ({reason}; usage {}m, throttled {:.0}%)",
                    g.proxy.container,
                    if event == EventReason::ScaledUp {
                        "raised"
                    } else {
                        "lowered to its floor"
                    },
                    format_cpu_millis(from),
                    format_cpu_millis(to),
                    obs.usage_millis.round(),
                    obs.throttled_ratio * 100.0
                ),
            });
        }
        info!(
            cgroup = key,
            pod_uid = g.proxy.pod_uid,
            namespace = g.proxy.namespace,
            pod = g.proxy.pod,
            container = g.proxy.container,
            direction,
            reason,
            from = format_cpu_millis(from),
            to = format_cpu_millis(to),
            usage_millicores = obs.usage_millis.round(),
            throttled_ratio = obs.throttled_ratio,
            dry_run,
            "cpu quota"
        );
        g.last_action = Some(ActionView {
            resource: "cpu",
            direction,
            reason,
            from: format_cpu_millis(from),
            to: format_cpu_millis(to),
            at: now_unix(),
        });
        true
    }

    /// Updates the per-proxy gauges and the debug view (in place: the strings of the last
    /// tick's view are reused).
    fn publish(&self) {
        let m = &self.shared.metrics;
        let global_dry_run = self.dry_run();
        self.shared.publish_with(|views| {
            views.truncate(self.governed.len());
            for (i, g) in self.governed.values().enumerate() {
                let dry_run = global_dry_run || g.mode == Mode::DryRun;
                let quota = if dry_run {
                    g.planned_millis.or(g.prev.and_then(|s| s.cpu_max.millis()))
                } else {
                    g.prev.and_then(|s| s.cpu_max.millis())
                };
                if let Some(q) = quota {
                    m.cpu_quota_millicores
                        .get_or_create(&g.labels)
                        .set(q as f64);
                }
                if let Some(o) = g.original.millis() {
                    m.cpu_original_millicores
                        .get_or_create(&g.labels)
                        .set(o as f64);
                }
                if let Some(o) = &g.last_obs {
                    m.cpu_usage_millicores
                        .get_or_create(&g.labels)
                        .set(o.usage_millis);
                    m.cpu_throttled_ratio
                        .get_or_create(&g.labels)
                        .set(o.throttled_ratio);
                }
                let memory_high = g.mem.as_ref().and_then(|mm| mm.shown_high(dry_run));
                let reading = g.mem.as_ref().and_then(|mm| mm.last);
                if let Some(r) = reading {
                    m.memory_high_bytes
                        .get_or_create(&g.labels)
                        .set(memory_high.map_or(f64::INFINITY, |h| h as f64));
                    m.memory_usage_bytes
                        .get_or_create(&g.labels)
                        .set(r.current as f64);
                    let limit = g.mem.as_ref().and_then(|mm| mm.limit);
                    m.memory_max_bytes
                        .get_or_create(&g.labels)
                        .set(limit.map_or(f64::INFINITY, |l| l as f64));
                    if let Some(pr) = r.pressure {
                        m.memory_pressure_ratio.get_or_create(&g.labels).set(pr);
                    }
                }
                if i == views.len() {
                    views.push(ProxyView::default());
                }
                let v = &mut views[i];
                v.key.clone_from(&g.proxy.key);
                v.namespace.clone_from(&g.proxy.namespace);
                v.pod.clone_from(&g.proxy.pod);
                v.container.clone_from(&g.proxy.container);
                v.pod_uid.clone_from(&g.proxy.pod_uid);
                v.container_id.clone_from(&g.proxy.container_id);
                v.process.clone_from(&g.proxy.process);
                v.pid = g.proxy.pid;
                v.cpu_quota_millis = quota;
                v.cpu_original_millis = g.original.millis();
                v.cpu_usage_millis = g.last_obs.map(|o| o.usage_millis);
                v.cpu_throttled_ratio = g.last_obs.map(|o| o.throttled_ratio);
                v.memory_high_bytes = memory_high;
                v.memory_usage_bytes = reading.map(|r| r.current);
                v.memory_pressure_ratio = reading.and_then(|r| r.pressure);
                v.backoff = g.backoff_until.is_some();
                if v.last_action != g.last_action {
                    v.last_action.clone_from(&g.last_action);
                }
            }
        });
    }

    /// Stops governing: with `restoreOnExit` (and not in dry run) every journaled original is
    /// put back.
    pub fn shutdown(&mut self) -> Shutdown {
        let restore = if self.policy.restore_on_exit {
            let report = self.restore_keys(Reason::Exit, |_| true);
            if let Some(r) = &report {
                info!(
                    restored = r.restored.len(),
                    gone = r.gone.len(),
                    failed = r.failed.len(),
                    "restored originals on exit"
                );
            }
            report
        } else {
            info!(
                journaled = self.journal.len(),
                "restoreOnExit is off: limits stay; the journal keeps the originals"
            );
            None
        };
        for g in self.governed.values() {
            self.shared.metrics.forget(&g.labels);
        }
        self.governed.clear();
        Shutdown { restore }
    }

    /// The control loop: ticks every `interval` until told to stop (or after `max_ticks`),
    /// then shuts down.
    pub fn run(mut self, commands: Receiver<Command>, max_ticks: Option<u64>) -> Shutdown {
        let mut ticks = 0u64;
        let mut next = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next {
                self.tick(now);
                ticks += 1;
                if max_ticks.is_some_and(|m| ticks >= m) {
                    break;
                }
                next += self.policy.interval;
                if next <= Instant::now() {
                    // Fell behind (a slow tick): skip, don't burst.
                    next = Instant::now() + self.policy.interval;
                }
            }
            let wait = next.saturating_duration_since(Instant::now());
            match commands.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Command::Policy(p)) => self.set_policy(*p),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        self.shutdown()
    }
}

/// Milliseconds since the epoch, now.
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Restores every journal entry (the `restore` command).
pub fn restore_all(
    cgroup_root: &std::path::Path,
    journal: &mut Journal,
) -> Result<RestoreReport, JournalError> {
    actuator::restore_journal(cgroup_root, journal, |_| true)
}

/// Reads a cgroup's `cpu.max` once (for `discover`).
pub fn read_cpu_max(dir: &std::path::Path) -> Result<CpuMax, CgroupError> {
    crate::cgroup::read_value(dir, "cpu.max", crate::cgroup::parse::parse_cpu_max)
}
