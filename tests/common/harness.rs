//! The whole agent over a fixture [`Node`], driven tick by tick with an injected clock: the
//! harness the fixture-tree integration tests share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Container, Node};
use sidecar_governor::agent::Agent;
use sidecar_governor::discovery::procfs::ProcfsDiscovery;
use sidecar_governor::discovery::{Discovery, DiscoveryError, Proxy, Source};
use sidecar_governor::journal::Journal;
use sidecar_governor::policy::Policy;
use sidecar_governor::policy::{MatchPolicy, PodControl};
use sidecar_governor::server::Shared;

/// Two cores, Istio's default sidecar limit.
pub const TWO_CORES: &str = "200000 100000";

/// The agent, its shared state and the clock it is driven by.
#[derive(Debug)]
pub struct Harness {
    pub agent: Agent,
    pub shared: Arc<Shared>,
    pub now: Instant,
}

/// procfs discovery standing in for the runtime: every proxy found has a runtime identity
/// (what CRI discovery vouches for; the real CRI path is tested by `cri_fast` and the VM).
/// `namespace` and `control` are what CRI would read from the pod's sandbox.
#[derive(Debug)]
pub struct Vouched {
    pub inner: ProcfsDiscovery,
    pub namespace: String,
    pub control: PodControl,
}

impl Discovery for Vouched {
    fn discover(&mut self, rules: &MatchPolicy) -> Result<Vec<Proxy>, DiscoveryError> {
        let mut found = self.inner.discover(rules)?;
        for p in &mut found {
            p.runtime_identity = true;
            p.id.namespace.clone_from(&self.namespace);
            p.control = self.control;
        }
        Ok(found)
    }
    fn source(&self) -> Source {
        self.inner.source()
    }
}

impl Harness {
    /// The agent over `node`, its proxies identified as the runtime would.
    pub fn new(node: &Node, policy: Policy, dry_run: bool) -> Harness {
        Self::vouched(node, policy, dry_run, "", PodControl::default())
    }

    /// The agent over `node`, its proxies identified as the runtime would, in `namespace`,
    /// their pods annotated with `control`.
    pub fn vouched(
        node: &Node,
        policy: Policy,
        dry_run: bool,
        namespace: &str,
        control: PodControl,
    ) -> Harness {
        let discovery = Vouched {
            inner: ProcfsDiscovery::new(&node.proc, &node.cgroup),
            namespace: namespace.to_string(),
            control,
        };
        Self::with(node, policy, dry_run, Box::new(discovery))
    }

    /// The agent over `node` finding proxies by their process names alone (procfs).
    pub fn by_process_name(node: &Node, policy: Policy) -> Harness {
        let discovery = ProcfsDiscovery::new(&node.proc, &node.cgroup);
        Self::with(node, policy, false, Box::new(discovery))
    }

    fn with(
        node: &Node,
        policy: Policy,
        dry_run: bool,
        discovery: Box<dyn sidecar_governor::agent::DiscoveryDebug>,
    ) -> Harness {
        let journal = Journal::load(&node.state).unwrap();
        let shared = Arc::new(Shared::default());
        let agent = Agent::new(
            node.cgroup.clone(),
            policy,
            dry_run,
            discovery,
            journal,
            shared.clone(),
        );
        Harness {
            agent,
            shared,
            now: Instant::now(),
        }
    }

    pub fn tick(&mut self) {
        self.now += Duration::from_secs(1);
        self.agent.tick(self.now);
    }

    pub fn metrics(&self) -> String {
        self.shared.metrics.encode()
    }
}

/// Runs `ticks` seconds: each container uses what `load` says under its current quota.
pub fn run(
    h: &mut Harness,
    containers: &mut [&mut Container],
    ticks: usize,
    load: impl Fn(usize, u64) -> u64,
) {
    for _ in 0..ticks {
        for (i, c) in containers.iter_mut().enumerate() {
            let quota = c.quota_millis().unwrap_or(u64::MAX);
            let demand = load(i, quota);
            let used = demand.min(quota);
            c.run_for_a_second(used, demand - used);
        }
        h.tick();
    }
}

pub fn proxy(node: &mut Node, pod: usize, n: usize) -> Container {
    let mut c = node.container(pod, n, TWO_CORES);
    node.process(
        &mut c,
        "envoy",
        &["/usr/local/bin/envoy", "--concurrency", "2"],
    );
    c
}
