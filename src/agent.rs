//! The agent: one control loop that ties discovery, the sampler, the controller, the actuator
//! and the journal together, tick by tick. [`Agent::tick`] takes the time as an argument so
//! tests drive it on fixture trees; [`Agent::run`] is the real loop on its own thread, woken by
//! the interval or by a [`Command`] (stop, new policy).
//!
//! A tick has phases, so the promises of design notes §11 hold by construction: every
//! reading is reconciled with its ownership record first (someone else's value becomes the
//! original); then decisions are taken and the values to write are recorded as pending;
//! then the journal is flushed — one durable write, whatever the number of changes — and only
//! if that succeeded are the cgroup files written, pods raised before their containers and
//! lowered after them.

mod memory;
mod pods;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::actuator::{self, RestoreReport};
use crate::controller::cpu::LOOK_AGAIN;
use crate::controller::growth::GrowthChange;
use crate::controller::storm::{self, StormDetector};
use crate::controller::{Reason, Wake};
use crate::discovery::{Discovery, Proxy, ProxyClass, classify};
use crate::events::{EventReason, EventSink, NoEvents, PodEvent};
use crate::journal::{Journal, JournalError};
use crate::metrics::ErrorKind;
use crate::ownership::{ContainerRecord, Owned};
use crate::policy::{Mode, Policy, Standing};
use crate::proxy::{CgroupIo, CpuPlan, CpuWrite, MemoryPlan, ProxyCore, Settings, StepOutcome};
use crate::quantity::{format_bytes, format_cpu_millis, format_duration};
use crate::sampler::{MemoryFiles, ProxyFiles};
use crate::server::{ProxyView, Shared, now_unix};
use crate::wake::StallWatch;

/// The most proxies looked at again between ticks at once (each look is one sample of its
/// `cpu.stat`, `cpu.max` and `cpu.pressure`: 64 every 100 ms is a few ms of CPU a second).
const MAX_BLIND_LOOKS_PENDING: usize = 64;

/// What the control loop can be told.
#[derive(Debug)]
pub enum Command {
    /// Stop: restore (if the policy says so) and return.
    Stop,
    /// Apply a new, validated policy from the next tick on.
    Policy(Box<Policy>),
    /// A proxy's stall trigger fired (the token [`StallWatch`] gave it).
    Wake(u64),
}

/// One governed proxy in the loop: what discovery found, its open files and its control
/// core ([`ProxyCore`]). Its originals and the values the agent wrote live in its journal
/// record ([`ContainerRecord`]), not here.
#[derive(Debug)]
struct Governed {
    proxy: Proxy,
    files: ProxyFiles,
    /// `None` when memory is not governed or the cgroup has no memory controller files.
    mem_files: Option<MemoryFiles>,
    core: ProxyCore,
    /// Why its pod's CPU annotations are refused now, if they are (logged when it changes).
    refused: Option<String>,
    /// The proxy's own mode (namespace override or pod annotation): `DryRun` means no writes
    /// for this one; `Off` proxies are never governed.
    mode: Mode,
}

impl Governed {
    /// The pod cgroup's key (relative to the cgroup root).
    fn pod_key(&self) -> &str {
        self.proxy.key.rsplit_once('/').map_or("", |(pod, _)| pod)
    }
}

/// Outcome of stopping the agent.
#[derive(Debug)]
pub struct Shutdown {
    pub restore: Option<RestoreReport>,
    /// The journal could not be written at the end (records may be stale on disk).
    pub journal_error: Option<JournalError>,
}

impl Shutdown {
    /// True when everything the agent changed is back (or was meant to stay) and the journal
    /// says so.
    pub fn clean(&self) -> bool {
        self.journal_error.is_none() && self.restore.as_ref().is_none_or(RestoreReport::complete)
    }
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
    /// Why the journal cannot be written now (writes are suspended until it can).
    journal_failing: Option<String>,
    shared: Arc<Shared>,
    last_scan: Option<Instant>,
    buf: Vec<u8>,
    events: Arc<dyn EventSink>,
    storm: StormDetector,
    /// Pod records whose quota must be recomputed this tick (a holder wrote or left).
    pods_due: BTreeSet<String>,
    /// The PSI stall triggers (none on fixture trees, or when the kernel has no PSI).
    stall: Option<StallWatch>,
    /// Wake-ups to look again at a proxy, due at an instant.
    look_again: Vec<(Instant, String, Wake)>,
    /// Why the last proxy could not be watched (warned once per distinct reason).
    stall_failing: Option<String>,
}

/// `Discovery` plus `Debug`, so the agent can derive `Debug`.
pub trait DiscoveryDebug: Discovery + std::fmt::Debug {}
impl<T: Discovery + std::fmt::Debug> DiscoveryDebug for T {}

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
            journal_failing: None,
            shared,
            last_scan: None,
            buf: Vec::with_capacity(4096),
            events: Arc::new(NoEvents),
            storm: StormDetector::default(),
            pods_due: BTreeSet::new(),
            stall: None,
            look_again: Vec::new(),
            stall_failing: None,
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

    /// The journal (for tests and the benchmark).
    pub fn journal(&self) -> &Journal {
        &self.journal
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
        self.rearm();
        self.publish_mode();
    }

    /// Gives the agent its stall triggers: every governed proxy is watched from now on
    /// (when `cpu.wakeOnStall` is enabled), and the loop is woken when one stalls.
    pub fn set_stall_watch(&mut self, watch: StallWatch) {
        self.stall = Some(watch);
        self.rearm();
    }

    /// Watches every governed proxy with the policy's trigger, or none when it is off or
    /// the whole agent is in dry run (a wake-up would write nothing).
    fn rearm(&mut self) {
        let w = self.policy.cpu.wake_on_stall;
        let on = self.wakes();
        let Some(watch) = self.stall.as_mut() else {
            return;
        };
        if on {
            watch.set_trigger(w.stall, w.window);
            let keys: Vec<String> = self.governed.keys().cloned().collect();
            for key in keys {
                self.arm(&key);
            }
        } else {
            watch.disarm_all();
        }
        self.publish_stall();
    }

    /// Watches one governed proxy (a failure is warned once per distinct reason and leaves
    /// the proxy on ticks alone).
    fn arm(&mut self, key: &str) {
        let on = self.wakes();
        let (Some(watch), Some(g)) = (self.stall.as_mut(), self.governed.get(key)) else {
            return;
        };
        if !on || watch.is_armed(key) {
            return;
        }
        if let Err(e) = watch.arm(key, &g.proxy.dir) {
            let why = e.to_string();
            // The same cause on every proxy (no PSI, no privilege) is one warning.
            let cause = why.rsplit_once(": ").map_or(why.as_str(), |(_, c)| c);
            if self.stall_failing.as_deref() != Some(cause) {
                warn!(cgroup = key, error = %e, "no stall trigger; this proxy grows on ticks only");
                self.stall_failing = Some(cause.to_string());
            } else {
                debug!(cgroup = key, error = %e, "no stall trigger");
            }
        }
    }

    /// Wake-ups between ticks are on: enabled by the policy and the agent not in dry run (a
    /// wake-up would write nothing).
    fn wakes(&self) -> bool {
        self.policy.cpu.wake_on_stall.enabled && !self.dry_run()
    }

    fn publish_stall(&self) {
        let n = self.stall.as_ref().map_or(0, StallWatch::len);
        self.shared.metrics.stall_triggers.set(n as i64);
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
        // Dry run (global or per proxy) puts back what the agent changed, then only plans.
        self.release_dry_run();
        self.reconcile_pods(now);
        let keys: Vec<String> = self.governed.keys().cloned().collect();
        let mut gone = Vec::new();
        let mut cpu_plans: Vec<(String, CpuPlan)> = Vec::new();
        let mut mem_plans: Vec<(String, MemoryPlan)> = Vec::new();
        for key in keys {
            let out = self.step(&key, now);
            if out.gone {
                gone.push(key);
                continue;
            }
            if let Some(p) = out.cpu {
                cpu_plans.push((key.clone(), p));
            }
            if let Some(p) = out.memory {
                mem_plans.push((key, p));
            }
        }
        self.hold_back_storm(now, &mut cpu_plans);
        // Stage: every value about to be written is recorded as pending, then one flush.
        let mut cpu_writes = Vec::new();
        for (key, p) in cpu_plans {
            if p.dry_run {
                self.plan_only(&key, &p);
            } else if let Some(w) = self.stage_cpu(&key, p, &mut gone) {
                cpu_writes.push((key, w));
            }
        }
        // Proxies found gone so far leave the journal in this tick's flush, not the next one.
        for key in std::mem::take(&mut gone) {
            self.forget(&key, false);
        }
        let pod_writes = self.stage_pods();
        let mem_writes = self.stage_memory(mem_plans);
        if self.flush_journal() {
            let (raise, lower): (Vec<_>, Vec<_>) = pod_writes.into_iter().partition(|w| w.raise);
            self.apply_pods(raise);
            for (key, w) in cpu_writes {
                if !self.apply_cpu(&key, w) {
                    gone.push(key);
                }
            }
            self.apply_pods(lower);
            for (key, w) in mem_writes {
                if !self.apply_memory(&key, &w, now) {
                    gone.push(key);
                }
            }
        } else {
            self.unstage_memory(&mem_writes);
        }
        // Proxies that vanished between staging and writing leave at the next tick's flush.
        for key in gone {
            self.forget(&key, false);
        }
        let m = &self.shared.metrics;
        m.proxies.set(self.governed.len() as i64);
        m.journal_entries.set(self.journal.len() as i64);
        m.ticks.inc();
        self.publish_stall();
        m.tick_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        self.publish();
    }

    /// Many proxies wanting to grow at once is a config push: hold growth back briefly.
    fn hold_back_storm(&mut self, now: Instant, plans: &mut Vec<(String, CpuPlan)>) {
        let before = plans.len();
        let governed = self.storm_counted();
        let p = &self.policy.cpu.push_storm;
        let state = storm::hold_back(&mut self.storm, now, plans, governed, p);
        if state == storm::Storm::Started {
            self.storm_started(before - plans.len(), governed);
        } else if before != plans.len() {
            debug!(
                held = before - plans.len(),
                "growth held back during a push storm"
            );
        }
    }

    /// Proxies that count toward a push storm: only sidecars the runtime vouches for
    /// (another tenant's processes cannot make a storm that holds back someone else's).
    fn storm_counted(&self) -> usize {
        self.governed
            .values()
            .filter(|g| g.proxy.runtime_identity)
            .count()
    }

    /// A push storm was recognised (at a tick or a wake-up): counted and warned.
    fn storm_started(&self, held: usize, governed: usize) {
        self.shared.metrics.push_storms.inc();
        warn!(
            proxies = held,
            governed,
            grace_s = self.policy.cpu.push_storm.grace.as_secs_f64(),
            "push storm: many proxies wanted to grow at once (a config push?); holding growth back"
        );
    }

    /// Writes the journal if anything changed. Returns false when it could not: then no
    /// cgroup file is written this tick, `/readyz` says why, and it is logged once per episode.
    fn flush_journal(&mut self) -> bool {
        match self.journal.flush() {
            Ok(_) => {
                if self.journal_failing.take().is_some() {
                    info!(
                        journal = %self.journal.path().display(),
                        "journal writable again; resuming writes"
                    );
                    self.shared.set_degraded(None);
                }
                true
            }
            Err(e) => {
                self.shared.metrics.error(ErrorKind::Journal);
                if self.journal_failing.is_none() {
                    warn!(error = %e, "cannot write the journal; no cgroup writes until it can be written");
                }
                let reason = format!("journal unwritable: {e}");
                self.shared.set_degraded(Some(reason.clone()));
                self.journal_failing = Some(reason);
                false
            }
        }
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
                self.shared.metrics.error(ErrorKind::Discovery);
                return;
            }
        };
        let excluded = &self.policy.matching.exclude_namespaces;
        let policy = &self.policy;
        // A proxy found by its process name alone could be anyone's: where a namespace rule
        // could apply to it, it is left alone until the runtime identifies it.
        let namespace_rules = !excluded.is_empty() || !policy.overrides.is_empty();
        let mut unidentified = 0;
        let found: Vec<(Proxy, Mode)> = found
            .into_iter()
            .filter(|p| {
                let leave = !p.runtime_identity && namespace_rules;
                if leave {
                    unidentified += 1;
                    debug!(
                        cgroup = p.key,
                        "no runtime identity and the policy has namespace rules; left alone"
                    );
                }
                !leave
            })
            .filter(|p| p.id.namespace.is_empty() || !excluded.contains(&p.id.namespace))
            .filter_map(|mut p| {
                let Some(class) = classify(&p, &policy.matching) else {
                    debug!(
                        cgroup = p.key,
                        namespace = p.id.namespace,
                        "ztunnel without a runtime identity in match.ztunnelNamespaces; not governed"
                    );
                    return None;
                };
                p.class = class;
                Some(p)
            })
            .map(|p| {
                let mode = policy.effective(&p.id.namespace, &p.control).mode;
                (p, mode)
            })
            .filter(|(p, mode)| {
                if *mode == Mode::Off {
                    debug!(
                        cgroup = p.key,
                        namespace = p.id.namespace,
                        pod = p.id.pod,
                        "mode off; not governed"
                    );
                }
                *mode != Mode::Off
            })
            .collect();
        self.shared.metrics.unidentified_proxies.set(unidentified);
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
                None => self.adopt(proxy, mode, now),
                Some(g) => {
                    if g.mode != mode {
                        info!(
                            cgroup = proxy.key,
                            namespace = proxy.id.namespace,
                            pod = proxy.id.pod,
                            from = g.mode.as_str(),
                            to = mode.as_str(),
                            "proxy mode changed"
                        );
                        g.mode = mode;
                        g.core.reset_plan();
                    }
                    // Names learnt later (CRI back after a procfs fallback) or new settings.
                    let p = &g.proxy;
                    if (&p.id, &p.control) != (&proxy.id, &proxy.control) {
                        self.shared.metrics.forget(&g.proxy.id);
                        g.proxy = proxy;
                    }
                }
            }
        }
        self.release_orphans();
    }

    /// Starts governing a newly found proxy in `mode` (`On` or `DryRun`): its files are read
    /// and reconciled with the journal's record of an earlier run, if any — a value found that
    /// the agent did not write becomes the original.
    fn adopt(&mut self, proxy: Proxy, mode: Mode, now: Instant) {
        let opened = ProxyFiles::open(&proxy.dir).and_then(|mut files| {
            let first = files.sample(&mut self.buf, now)?;
            let burst = files.read_cpu_burst(&mut self.buf)?;
            Ok((files, first, burst))
        });
        let (files, first, burst) = match opened {
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
        // The node proxy: protected. Without a CPU limit of its own there is nothing to
        // protect or grow (a limit the agent wrote would be a new cap on the node's traffic);
        // its memory is left alone.
        let node_proxy = proxy.class == ProxyClass::NodeProxy;
        if node_proxy
            && first.cpu_max.millis().is_none()
            && self.journal.container(&proxy.key).is_none()
        {
            debug!(
                cgroup = proxy.key,
                "node proxy (ztunnel) without a CPU limit; not governed"
            );
            return;
        }
        let mem = if self.policy.memory.enabled && !node_proxy {
            match memory::open(&proxy.dir, &mut self.buf, now) {
                Ok(m) => Some(m),
                Err(e) => {
                    debug!(cgroup = proxy.key, error = %e, "no memory files; memory not governed");
                    None
                }
            }
        } else {
            None
        };
        let memory_high = mem.as_ref().map(|(_, _, high)| *high);
        // Restarted after changing it: reconcile each file with what was journaled.
        let outside = self
            .journal
            .update_container(&proxy.key, |r| {
                r.reconcile_found(first.cpu_max, burst, memory_high)
            })
            .unwrap_or_default();
        let record = match self.journal.container(&proxy.key) {
            Some(r) => r.clone(),
            None => {
                let r = ContainerRecord::untouched(
                    proxy.id.clone(),
                    first.cpu_max,
                    burst,
                    memory_high,
                    now_unix(),
                );
                self.journal.insert_container(&proxy.key, r.clone());
                r
            }
        };
        info!(
            cgroup = proxy.key,
            pod_uid = proxy.id.pod_uid,
            container_id = proxy.id.container_id,
            namespace = proxy.id.namespace,
            pod = proxy.id.pod,
            container = proxy.id.container,
            pid = proxy.pid,
            class = proxy.class.as_str(),
            cpu_max = %first.cpu_max,
            original = %record.cpu_max.original.0,
            mode = mode.as_str(),
            since_start_ms = proxy.started_at_ms.map(|t| unix_millis().saturating_sub(t)),
            "governing proxy"
        );
        // kubelet's Memory QoS (cgroup v2, feature gate MemoryQoS) writes memory.high into the
        // container when it creates it; so may another manager. Either way it is the original
        // and the ceiling: the agent only ever places memory.high below it, and a later change
        // of it is someone else's (adopted, backed off from).
        if let Some(high) = record
            .memory_high
            .filter(|h| !h.touched())
            .and_then(|h| h.original.0)
        {
            info!(
                cgroup = proxy.key,
                memory_high = %format_bytes(high),
                "memory.high was set before the agent (kubelet Memory QoS or another manager): kept as the original and the ceiling"
            );
        }
        for problem in &proxy.control_errors {
            warn!(
                namespace = proxy.id.namespace,
                pod = proxy.id.pod,
                error = problem.as_str(),
                "bad pod annotation; the pod is left at the policy's settings"
            );
            self.shared.metrics.error(ErrorKind::Annotation);
        }
        let (mem_files, mem_core) = match mem {
            Some((files, mut core, _)) => {
                // Placed only once a write of the agent's may have landed.
                core.set_placed(record.memory_high.is_some_and(|h| h.touched()));
                (Some(files), Some(core))
            }
            None => (None, None),
        };
        self.advise_workers(&proxy, record.cpu_max.original.0.millis());
        let key = proxy.key.clone();
        // The reading just taken is the first sample: this tick's step reads nothing again.
        let mut core = ProxyCore::new(mem_core);
        core.prime(first);
        self.governed.insert(
            key.clone(),
            Governed {
                files,
                mem_files,
                core,
                refused: None,
                mode,
                proxy,
            },
        );
        if !outside.is_empty() {
            if let Some(g) = self.governed.get_mut(&key) {
                g.core.back_off(now + self.policy.cpu.conflict_backoff);
            }
            self.tell_outside(&key, &outside.join(", "));
        }
        self.arm(&key);
    }

    /// A proxy with more workers than its CPU ceiling can serve (`cpu.perWorkerMin` each) is
    /// told about once, when found: a warning and an Event on its pod naming the worker count
    /// that would fit. The quota is not raised for it (the pod's author set the workers).
    fn advise_workers(&self, proxy: &Proxy, original_millis: Option<u64>) {
        let effective = self.policy.effective(&proxy.id.namespace, &proxy.control);
        let standing = Standing {
            runtime_identity: proxy.runtime_identity,
            limit_millis: original_millis,
        };
        let (cpu, _) = effective.cpu_for(&proxy.control, standing);
        let ceiling = crate::controller::CpuBounds::new(&cpu, original_millis).ceiling;
        let Some(fit) = crate::controller::fitting_workers(
            proxy.concurrency,
            ceiling,
            cpu.per_worker_min_millis,
        ) else {
            return;
        };
        let workers = proxy.concurrency.unwrap_or_default();
        let message = format!(
            "container {} runs {workers} proxy workers but its CPU ceiling {} (the lower of its limit and the policy's cpu.max) gives {} each at most; {fit} workers would fit (Envoy --concurrency, Linkerd LINKERD2_PROXY_CORES); the quota is not raised for them",
            proxy.id.container,
            format_cpu_millis(ceiling),
            format_cpu_millis(ceiling / u64::from(workers.max(1))),
        );
        warn!(
            cgroup = proxy.key,
            namespace = proxy.id.namespace,
            pod = proxy.id.pod,
            workers,
            fit,
            "more proxy workers than the CPU ceiling can serve"
        );
        self.events.emit(PodEvent::about(
            &proxy.id,
            EventReason::WorkersUnfit,
            message,
        ));
    }

    /// Someone else changed `what` of a governed container: its value is the original now
    /// (the record says so already, and the core backs off); count it and tell.
    fn tell_outside(&self, key: &str, what: &str) {
        let Some(g) = self.governed.get(key) else {
            return;
        };
        warn!(
            cgroup = key,
            files = what,
            "changed by someone else (kubelet resize or an operator); adopting it as the original"
        );
        self.shared.metrics.conflicts.inc();
        self.events.emit(PodEvent::about(
            &g.proxy.id,
            EventReason::Conflict,
            format!(
                "{what} of container {} changed by someone else: adopted as the original; backing off",
                g.proxy.id.container
            ),
        ));
    }

    /// The growth watch found steady growth of a proxy's unreclaimable memory (the leak
    /// shape), or saw it end: tell (a Warning Event on the pod when found).
    fn tell_growth(&self, key: &str, change: GrowthChange) {
        let Some(g) = self.governed.get(key) else {
            return;
        };
        match change {
            GrowthChange::Started { grew, over, now } => {
                let rate = GrowthChange::per_hour(grew, over);
                warn!(
                    cgroup = key,
                    grew = %format_bytes(grew),
                    over = %format_duration(over),
                    unreclaimable = %format_bytes(now),
                    "unreclaimable memory grows steadily (the leak shape); memory.high is no longer probed down"
                );
                self.shared.metrics.memory_growth_found.inc();
                self.events.emit(PodEvent::about(
                    &g.proxy.id,
                    EventReason::MemoryGrowing,
                    format!(
                        "Unreclaimable memory of container {} grew steadily by {} over {} (about {}/h), to {}: the shape of a proxy memory leak. memory.high is not lowered while it lasts; the container's memory limit still applies",
                        g.proxy.id.container,
                        format_bytes(grew),
                        format_duration(over),
                        format_bytes(rate),
                        format_bytes(now)
                    ),
                ));
            }
            GrowthChange::Ended { now } => info!(
                cgroup = key,
                unreclaimable = %format_bytes(now),
                "unreclaimable memory stopped growing; memory.high is probed down again when quiet"
            ),
        }
    }

    /// Stops governing `key`. With `release`, a container that still exists gets its
    /// originals back (it is no longer a proxy we govern); a gone one's record is dropped
    /// either way, and a pod it held raised is given back when no other container holds it.
    fn forget(&mut self, key: &str, release: bool) {
        let Some(g) = self.governed.remove(key) else {
            return;
        };
        if let Some(w) = self.stall.as_mut() {
            w.disarm(key);
        }
        let m = &self.shared.metrics;
        m.forget(&g.proxy.id);
        // The count goes with the series (a wake-up between ticks forgets a proxy too).
        m.proxies.set(self.governed.len() as i64);
        if release {
            info!(cgroup = key, "proxy no longer found; releasing");
        } else {
            debug!(cgroup = key, "proxy gone");
        }
        self.restore_keys(Reason::Released, |k| k == key);
    }

    /// Journal records of containers not governed now: restore those that still exist (left
    /// by an earlier run), drop the rest.
    fn release_orphans(&mut self) {
        let orphans: HashSet<String> = self
            .journal
            .containers()
            .map(|(k, _)| k.clone())
            .filter(|k| !self.governed.contains_key(k))
            .collect();
        if !orphans.is_empty() {
            self.restore_keys(Reason::Released, |k| orphans.contains(k));
        }
    }

    /// Puts back what the agent changed on proxies now in dry run (global or their own).
    fn release_dry_run(&mut self) {
        let global = self.dry_run();
        let keys: BTreeSet<String> = self
            .journal
            .containers()
            .filter(|(k, r)| {
                r.touched()
                    && (global
                        || self
                            .governed
                            .get(*k)
                            .is_some_and(|g| g.mode == Mode::DryRun))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        info!(
            proxies = keys.len(),
            "dry run: putting back what the agent changed"
        );
        self.restore_keys(Reason::DryRun, |k| keys.contains(k));
    }

    /// Restores the selected records. Records of proxies still governed are replaced by
    /// untouched ones (the agent goes on planning from the originals). The journal is flushed
    /// with the tick (or by the caller at shutdown).
    fn restore_keys(&mut self, reason: Reason, select: impl Fn(&str) -> bool) -> RestoreReport {
        let selected: BTreeMap<String, ContainerRecord> = self
            .journal
            .containers()
            .filter(|(k, _)| select(k))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let report = actuator::restore_records(&self.cgroup_root, &mut self.journal, |k| {
            selected.contains_key(k)
        });
        for r in selected.values() {
            if let Some(pod) = &r.pod_hold
                && self.journal.pod(pod).is_some()
            {
                self.pods_due.insert(pod.clone());
            }
        }
        for key in &report.restored {
            let Some(r) = selected.get(key) else { continue };
            self.shared
                .metrics
                .action("cpu", "restore", reason.as_str());
            if r.memory_high.is_some_and(|m| m.touched()) {
                self.shared
                    .metrics
                    .action("memory", "restore", reason.as_str());
            }
            self.events.emit(PodEvent::about(
                &r.id,
                EventReason::Restored,
                format!("Original limits put back ({})", reason.as_str()),
            ));
        }
        for (_, e) in &report.failed {
            self.shared.metrics.error(e.kind());
        }
        // Still governed: start again from an untouched record of the originals.
        for key in report.restored.iter().chain(&report.unchanged) {
            if let (Some(g), Some(r)) = (self.governed.get_mut(key), selected.get(key)) {
                let fresh = ContainerRecord {
                    cpu_max: Owned::new(r.cpu_max.original),
                    cpu_max_burst: r.cpu_max_burst.map(|b| Owned::new(b.original)),
                    memory_high: r.memory_high.map(|m| Owned::new(m.original)),
                    pod_hold: None,
                    ..r.clone()
                };
                self.journal.insert_container(key, fresh);
                g.core.reset();
            }
        }
        report
    }

    /// Samples, reconciles and plans one proxy through its core; logs and counts what went
    /// wrong and tells of files someone else changed.
    fn step(&mut self, key: &str, now: Instant) -> StepOutcome {
        self.step_as(key, now, None)
    }

    /// [`Agent::step`] for a tick (`wake` `None`) or a wake-up between ticks (`Some`).
    fn step_as(&mut self, key: &str, now: Instant, wake: Option<Wake>) -> StepOutcome {
        let global_dry_run = self.dry_run_flag || self.policy.dry_run;
        let (Some(g), Some(mut record)) =
            (self.governed.get_mut(key), self.journal.container_mut(key))
        else {
            return StepOutcome::default();
        };
        // The proxy's own dry run and bounds: its namespace's, its pod's annotations only
        // narrowing them, growth above its own limit only with a runtime identity.
        let effective = self
            .policy
            .effective(&g.proxy.id.namespace, &g.proxy.control);
        let standing = Standing {
            runtime_identity: g.proxy.runtime_identity,
            limit_millis: record.cpu_max.original.0.millis(),
        };
        let (cpu, refused) = effective.cpu_for(&g.proxy.control, standing);
        if refused != g.refused {
            if let Some(why) = &refused {
                warn!(
                    cgroup = key,
                    namespace = g.proxy.id.namespace,
                    pod = g.proxy.id.pod,
                    error = why.as_str(),
                    "pod annotation refused"
                );
                self.shared.metrics.error(ErrorKind::Annotation);
            }
            g.refused = refused;
        }
        let settings = Settings {
            cpu: &cpu,
            memory: &self.policy.memory,
            dry_run: global_dry_run || g.mode == Mode::DryRun,
            concurrency: g.proxy.concurrency,
            conflict_backoff: self.policy.cpu.conflict_backoff,
            runtime_identity: g.proxy.runtime_identity,
            protected: g.proxy.class == ProxyClass::NodeProxy,
        };
        let mut io = CgroupIo {
            dir: &g.proxy.dir,
            files: &mut g.files,
            memory: g.mem_files.as_mut(),
            buf: &mut self.buf,
        };
        let out = match wake {
            None => g.core.step(&mut io, &mut record, &settings, now),
            Some(wake) => g.core.wake(&mut io, &mut record, &settings, now, wake),
        };
        drop(record);
        for p in &out.problems {
            if p.first {
                warn!(cgroup = key, error = %p.error, what = p.what, "cannot read proxy cgroup");
            } else {
                debug!(cgroup = key, error = %p.error, what = p.what, "cannot read proxy cgroup");
            }
            self.shared.metrics.error(p.error.kind());
        }
        if out.recovered {
            info!(cgroup = key, "sampling recovered");
        }
        if !out.outside.is_empty() {
            self.tell_outside(key, &out.outside.join(", "));
        }
        if let Some(change) = out.growth {
            self.tell_growth(key, change);
        }
        out
    }

    /// A stall trigger fired: the proxy it watches is stepped at `now` ([`Agent::wake_proxy`]).
    pub fn on_wake(&mut self, token: u64, now: Instant) {
        let Some(key) = self.stall.as_ref().and_then(|w| w.key_of(token)) else {
            return; // disarmed since (the proxy went)
        };
        let key = key.to_string();
        self.wake_proxy(&key, now);
    }

    /// The wake-ups due to look again at a proxy by `now`, stepped; returns when the next is
    /// due, if any.
    pub fn look_again_due(&mut self, now: Instant) -> Option<Instant> {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.look_again)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.look_again = later;
        for (_, key, wake) in due {
            self.step_woken(&key, now, wake);
        }
        self.next_look_again()
    }

    /// A proxy's stall trigger fired: it is stepped at `now` ([`Agent::step_woken`]).
    pub fn wake_proxy(&mut self, key: &str, now: Instant) {
        self.step_woken(key, now, Wake::Trigger);
    }

    /// Steps one proxy between ticks, as woken by its stall trigger or looking again
    /// shortly after (`wake`): growth only, staged, journaled and written like a tick's (pods
    /// raised before their container). A push storm holds it back as it holds a tick's.
    fn step_woken(&mut self, key: &str, now: Instant, wake: Wake) {
        if !self.wakes() {
            return;
        }
        if storm::wake_in_grace(&mut self.storm, now, key) {
            self.shared.metrics.wakeup("held");
            return;
        }
        let out = self.step_as(key, now, Some(wake));
        if out.gone {
            self.forget(key, false);
            self.flush_journal();
            return;
        }
        match out.look_again {
            // Looks of a trigger that showed nothing yet are bounded node-wide: on a node
            // whose CPUs are contended every idle proxy's trigger may fire.
            Some(Wake::Blind { .. }) if self.look_again.len() >= MAX_BLIND_LOOKS_PENDING => {
                debug!(cgroup = key, "too many looks pending; the tick decides");
            }
            Some(wake) => self
                .look_again
                .push((now + LOOK_AGAIN, key.to_string(), wake)),
            None => {}
        }
        let Some(plan) = out.cpu else {
            self.shared.metrics.wakeup("none");
            return;
        };
        if self.storm_holds(now, key, &plan) {
            self.shared.metrics.wakeup("held");
            return;
        }
        let mut gone = Vec::new();
        let staged = self.stage_cpu(key, plan, &mut gone);
        let pod_writes = self.stage_pods();
        let mut raised = false;
        if self.flush_journal() {
            let (raise, lower): (Vec<_>, Vec<_>) = pod_writes.into_iter().partition(|w| w.raise);
            self.apply_pods(raise);
            if let Some(w) = staged {
                if self.apply_cpu(key, w) {
                    raised = true;
                } else {
                    gone.push(key.to_string());
                }
            }
            self.apply_pods(lower);
        }
        for key in gone {
            self.forget(&key, false);
        }
        self.shared
            .metrics
            .wakeup(if raised { "raised" } else { "none" });
    }

    /// Whether a push storm holds back a wake-up's growth ([`storm::hold_wake`]).
    fn storm_holds(&mut self, now: Instant, key: &str, plan: &CpuPlan) -> bool {
        let governed = self.storm_counted();
        let p = &self.policy.cpu.push_storm;
        let hold = storm::hold_wake(&mut self.storm, now, key, plan, governed, p);
        if hold.started {
            self.storm_started(usize::from(hold.held), governed);
        }
        hold.held
    }

    /// When the next look-again is due, if any.
    fn next_look_again(&self) -> Option<Instant> {
        self.look_again.iter().map(|(at, _, _)| *at).min()
    }

    /// Dry run: the decision is only remembered (and shown).
    fn plan_only(&mut self, key: &str, p: &CpuPlan) {
        if let Some(g) = self.governed.get_mut(key) {
            g.core.plan_only(p);
        }
        self.record_cpu_action(key, p);
    }

    /// Records the values a CPU plan will write as pending: the container's `cpu.max`, its
    /// burst, and its hold on the pod when it may go above its own limit.
    fn stage_cpu(&mut self, key: &str, p: CpuPlan, gone: &mut Vec<String>) -> Option<CpuWrite> {
        let g = self.governed.get(key)?;
        let record = self.journal.container(key)?;
        // The burst in force now, reconciled like any owned value.
        let burst = match record.cpu_max_burst {
            Some(_) => match g.files.read_cpu_burst(&mut self.buf) {
                Ok(now) => now,
                Err(e) if e.is_gone() => {
                    gone.push(key.to_string());
                    return None;
                }
                Err(e) => {
                    warn!(cgroup = key, error = %e, "cannot read cpu.max.burst; not writing");
                    self.shared.metrics.error(e.kind());
                    return None;
                }
            },
            None => None,
        };
        // The pod's quota is held only for a container that may go above its own limit.
        let pod_key = if p.above_limit || record.pod_hold.is_some() {
            let (pod_key, pod_dir) = (g.pod_key().to_string(), g.proxy.pod_dir.clone());
            self.ensure_pod_record(&pod_key, &pod_dir)
                .ok()?
                .then_some(pod_key)
        } else {
            None
        };
        let g = self.governed.get(key)?;
        let mut record = self.journal.container_mut(key)?;
        let write = g.core.stage_cpu(p, burst, pod_key.as_deref(), &mut record);
        drop(record);
        if let Some(pod_key) = pod_key {
            if let Some(mut pod) = self.journal.pod_mut(&pod_key) {
                pod.holders.insert(key.to_string());
            }
            self.pods_due.insert(pod_key);
        }
        Some(write)
    }

    /// Applies a staged CPU write. Returns false when the proxy turned out to be gone.
    fn apply_cpu(&mut self, key: &str, w: CpuWrite) -> bool {
        let Some(g) = self.governed.get_mut(key) else {
            return true;
        };
        let mut io = CgroupIo {
            dir: &g.proxy.dir,
            files: &mut g.files,
            memory: None,
            buf: &mut self.buf,
        };
        let mut record = self.journal.container_mut(key);
        match g.core.apply_cpu(&mut io, &w, record.as_deref_mut()) {
            Ok(()) => {}
            Err(e) if e.is_gone() => return false,
            Err(e) => {
                // What the file holds now is either the old or the new value, both ours
                // (pending): the next reading sorts it out.
                warn!(cgroup = key, error = %e, "cpu.max write failed");
                self.shared.metrics.error(e.kind());
                return true;
            }
        }
        drop(record);
        self.record_cpu_action(key, &w.plan);
        true
    }

    /// Counts, logs and tells (Events) one CPU action.
    fn record_cpu_action(&self, key: &str, p: &CpuPlan) {
        let Some(g) = self.governed.get(key) else {
            return;
        };
        let (direction, reason) = (p.decision.direction.as_str(), p.decision.reason.as_str());
        self.shared.metrics.action("cpu", direction, reason);
        if let Some((event, message)) = p.event(&g.proxy.id.container) {
            self.events
                .emit(PodEvent::about(&g.proxy.id, event, message));
        }
        info!(
            cgroup = key,
            pod_uid = g.proxy.id.pod_uid,
            namespace = g.proxy.id.namespace,
            pod = g.proxy.id.pod,
            container = g.proxy.id.container,
            direction,
            reason,
            from = format_cpu_millis(p.from),
            to = format_cpu_millis(p.decision.quota_millis),
            usage_millicores = p.obs.usage_millis.round(),
            throttled_ratio = p.obs.throttled_ratio,
            dry_run = p.dry_run,
            "cpu quota"
        );
    }

    /// Updates the per-proxy gauges and the debug view (in place: the strings of the last
    /// tick's view are reused).
    fn publish(&self) {
        let m = &self.shared.metrics;
        let global_dry_run = self.dry_run();
        self.shared.publish_with(|views| {
            views.truncate(self.governed.len());
            for (i, (key, g)) in self.governed.iter().enumerate() {
                let dry_run = global_dry_run || g.mode == Mode::DryRun;
                let record = self.journal.container(key);
                let original = record.and_then(|r| r.cpu_max.original.0.millis());
                if let Some(q) = g.core.shown_quota(dry_run) {
                    m.cpu_quota_millicores
                        .get_or_create(&g.proxy.id)
                        .set(q as f64);
                }
                if let Some(o) = original {
                    m.cpu_original_millicores
                        .get_or_create(&g.proxy.id)
                        .set(o as f64);
                }
                if let Some(o) = g.core.last_obs() {
                    m.cpu_usage_millicores
                        .get_or_create(&g.proxy.id)
                        .set(o.usage_millis);
                    m.cpu_throttled_ratio
                        .get_or_create(&g.proxy.id)
                        .set(o.throttled_ratio);
                }
                if let Some(mm) = g.core.memory()
                    && let Some(r) = mm.last
                {
                    let high = mm.shown_high(dry_run);
                    m.memory_high_bytes
                        .get_or_create(&g.proxy.id)
                        .set(high.map_or(f64::INFINITY, |h| h as f64));
                    m.memory_usage_bytes
                        .get_or_create(&g.proxy.id)
                        .set(r.current as f64);
                    m.memory_max_bytes
                        .get_or_create(&g.proxy.id)
                        .set(mm.limit.map_or(f64::INFINITY, |l| l as f64));
                    if let Some(pr) = r.pressure {
                        m.memory_pressure_ratio.get_or_create(&g.proxy.id).set(pr);
                    }
                    m.memory_growing
                        .get_or_create(&g.proxy.id)
                        .set(i64::from(mm.growth.growing));
                }
                if i == views.len() {
                    views.push(ProxyView::default());
                }
                let v = &mut views[i];
                v.key.clone_from(&g.proxy.key);
                v.namespace.clone_from(&g.proxy.id.namespace);
                v.pod.clone_from(&g.proxy.id.pod);
                v.container.clone_from(&g.proxy.id.container);
                v.pod_uid.clone_from(&g.proxy.id.pod_uid);
                v.container_id.clone_from(&g.proxy.id.container_id);
                v.process.clone_from(&g.proxy.process);
                v.class = g.proxy.class.as_str();
                v.pid = g.proxy.pid;
                g.core.fill_view(v, dry_run, original);
            }
        });
    }

    /// Stops governing: with `restoreOnExit`, every original in the journal is put back, in
    /// any mode (dry run included: a switch to dry run has put back what it could, and
    /// records left by an earlier run are restored too). The journal is flushed last.
    pub fn shutdown(&mut self) -> Shutdown {
        let restore = if self.policy.restore_on_exit {
            let report = self.restore_keys(Reason::Exit, |_| true);
            info!(
                restored = report.restored.len(),
                gone = report.gone.len(),
                failed = report.failed.len(),
                pods = report.pods_restored.len(),
                "restored originals on exit"
            );
            Some(report)
        } else {
            info!(
                journaled = self.journal.len(),
                "restoreOnExit is off: limits stay; the journal keeps the originals"
            );
            None
        };
        // Untouched records of governed proxies are not written out; drop them so the
        // journal on disk holds only what still needs restoring.
        let untouched: Vec<String> = self
            .journal
            .containers()
            .filter(|(_, r)| !r.needs_journal())
            .map(|(k, _)| k.clone())
            .collect();
        for key in untouched {
            self.journal.remove_container(&key);
        }
        let journal_error = self.journal.flush().err();
        if let Some(e) = &journal_error {
            warn!(error = %e, "cannot update the journal on exit");
            self.shared.metrics.error(ErrorKind::Journal);
        }
        for g in self.governed.values() {
            self.shared.metrics.forget(&g.proxy.id);
        }
        self.governed.clear();
        Shutdown {
            restore,
            journal_error,
        }
    }

    /// The control loop: ticks every `interval` until told to stop (or after `max_ticks`),
    /// then shuts down.
    pub fn run(mut self, commands: Receiver<Command>, max_ticks: Option<u64>) -> Shutdown {
        let mut ticks = 0u64;
        let mut next = Instant::now();
        let mut look_again: Option<Instant> = None;
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
            if look_again.is_some_and(|at| at <= Instant::now()) {
                look_again = self.look_again_due(Instant::now());
            }
            let until = look_again.map_or(next, |at| at.min(next));
            let wait = until.saturating_duration_since(Instant::now());
            match commands.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Command::Policy(p)) => self.set_policy(*p),
                Ok(Command::Wake(token)) => {
                    self.on_wake(token, Instant::now());
                    look_again = self.next_look_again();
                }
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

/// Restores every journal record (the `restore` command, and a start refused for an invalid
/// policy) and writes the journal once.
pub fn restore_all(cgroup_root: &std::path::Path, journal: &mut Journal) -> RestoreReport {
    let mut report = actuator::restore_records(cgroup_root, journal, |_| true);
    if let Err(e) = journal.flush() {
        report.journal_error = Some(e);
    }
    report
}
