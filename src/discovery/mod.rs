//! Discovery: which containers on this node are sidecar proxies, and where their cgroups are.
//! A [`Discovery`] source — [`procfs`] (process names), [`cri`] (the container runtime, with
//! Kubernetes names and pod annotations) or [`auto`] (CRI, falling back to procfs while the
//! runtime does not answer) — returns the current [`Proxy`] set and can say when it changed;
//! the agent diffs it against what it governs. Sources never write.

pub mod auto;
pub mod cgroup_path;
pub mod cri;
pub mod procfs;

use std::path::PathBuf;

pub use cgroup_path::Layout;

use crate::identity::Identity;
use crate::policy::{MatchPolicy, PodControl};

/// One proxy container, as found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Proxy {
    /// The container cgroup relative to the cgroup root: the identity the agent keys on.
    pub key: String,
    /// The container cgroup directory.
    pub dir: PathBuf,
    /// The pod cgroup directory (the container's parent).
    pub pod_dir: PathBuf,
    /// Namespace, pod, container (empty when the source does not know them: procfs), pod
    /// UID and container ID (flat in `discover --output json`).
    #[serde(flatten)]
    pub id: Identity,
    /// Found through the runtime (CRI: its namespace, a container named in
    /// `match.containerNames`, a proxy process in it), not by a process name alone. Only such
    /// a proxy may be granted anything beyond its own limit; see `policy::Standing`.
    pub runtime_identity: bool,
    pub layout: Layout,
    /// The proxy process found (its comm) and its PID.
    pub process: String,
    pub pid: u32,
    /// The proxy's worker threads: Envoy's `--concurrency N` from its command line, or
    /// Linkerd's `LINKERD2_PROXY_CORES` from its environment.
    pub concurrency: Option<u32>,
    /// Per-pod settings from the pod's annotations (CRI only; defaults otherwise).
    pub control: PodControl,
    /// Problems with the pod's annotations: the agent logs and counts them; `control` is then
    /// the default (the pod is left at the policy's settings).
    pub control_errors: Vec<String>,
    /// When the runtime started the container, in milliseconds since the epoch (CRI only).
    pub started_at_ms: Option<u64>,
    /// A pod's sidecar, or the node's own proxy ([`classify`]).
    pub class: ProxyClass,
}

/// What a proxy serves, and so how it is governed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProxyClass {
    /// A pod's own sidecar: shrunk when idle, grown when hot.
    #[default]
    Sidecar,
    /// Istio ambient's `ztunnel`, carrying all the node's traffic: protected (never below its
    /// own limit; its memory left alone) and grow-only above it (where the policy grants
    /// growth above the limit).
    NodeProxy,
}

impl ProxyClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyClass::Sidecar => "sidecar",
            ProxyClass::NodeProxy => "node-proxy",
        }
    }
}

/// The class of a found proxy, or `None` when it is not to be governed: a `ztunnel`
/// process is the node proxy only where the runtime places it in one of
/// `match.ztunnelNamespaces` (a namespace is the one thing a pod's author does not choose;
/// its process name is theirs).
pub fn classify(proxy: &Proxy, rules: &MatchPolicy) -> Option<ProxyClass> {
    if proxy.process != crate::policy::ZTUNNEL {
        return Some(ProxyClass::Sidecar);
    }
    (proxy.runtime_identity && rules.ztunnel_namespaces.contains(&proxy.id.namespace))
        .then_some(ProxyClass::NodeProxy)
}

/// Which source found the proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Procfs,
    Cri,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Procfs => "procfs",
            Source::Cri => "cri",
        }
    }
}

/// A discovery pass failed as a whole (single vanished processes are not errors).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("list processes in {path}: {source}")]
    ProcRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A CRI call failed (the error names the endpoint and the call).
    #[error(transparent)]
    Cri(#[from] crate::cri::CriError),
    /// A whole CRI discovery pass took longer than its budget.
    #[error("CRI discovery on {endpoint}: no complete answer within {after:?}")]
    CriPass {
        endpoint: String,
        after: std::time::Duration,
    },
    /// The CRI client's own runtime could not start.
    #[error("CRI discovery for {endpoint}: start its async runtime: {source}")]
    CriRuntime {
        endpoint: String,
        source: std::io::Error,
    },
}

/// A source of the current proxy set.
pub trait Discovery: Send {
    /// Every proxy on the node now, one per container cgroup.
    fn discover(&mut self, rules: &MatchPolicy) -> Result<Vec<Proxy>, DiscoveryError>;
    /// True when the proxy set may have changed since the last `discover` (a container
    /// started or stopped) and the agent should rescan now rather than at its next periodic
    /// rescan. Called every tick, so it must be cheap and bounded in time. Sources that
    /// cannot tell say `false` and are rescanned periodically only.
    fn changed(&mut self) -> bool {
        false
    }
    /// Which source this is, for metrics and logs.
    fn source(&self) -> Source;
}

/// Reads Envoy's worker count from its argument vector (`--concurrency N` or `--concurrency=N`).
pub fn concurrency_from_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Option<u32> {
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--concurrency" {
            return args.next().and_then(|v| v.parse().ok());
        }
        if let Some(v) = arg.strip_prefix("--concurrency=") {
            return v.parse().ok();
        }
    }
    None
}

/// The environment variable Linkerd's proxy takes its worker count from (set by the
/// injector from the proxy's CPU limit or `config.linkerd.io/proxy-cpu-limit`).
pub const LINKERD_CORES_VAR: &str = "LINKERD2_PROXY_CORES";

/// Reads Linkerd's worker count from a process's `environ` (NUL-separated `KEY=VALUE`);
/// nothing else of the environment is kept.
pub fn cores_from_environ(raw: &[u8]) -> Option<u32> {
    raw.split(|b| *b == 0).find_map(|entry| {
        let value = entry
            .strip_prefix(LINKERD_CORES_VAR.as_bytes())?
            .strip_prefix(b"=")?;
        std::str::from_utf8(value).ok()?.trim().parse().ok()
    })
}

/// True when a `pilot-agent` argument vector runs a gateway or waypoint (`proxy router`,
/// `proxy waypoint`), which are not sidecars.
pub fn is_gateway_args<'a>(args: impl IntoIterator<Item = &'a str>) -> bool {
    let args: Vec<&str> = args.into_iter().collect();
    args.windows(2)
        .any(|w| w[0] == "proxy" && matches!(w[1], "router" | "waypoint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proxy found by the runtime in `namespace`, running `process`.
    fn found(namespace: &str, process: &str) -> Proxy {
        Proxy {
            key: "kubepods/podu/c".into(),
            dir: "/sys/fs/cgroup/kubepods/podu/c".into(),
            pod_dir: "/sys/fs/cgroup/kubepods/podu".into(),
            id: Identity {
                namespace: namespace.into(),
                pod: "cart".into(),
                container: "istio-proxy".into(),
                pod_uid: "u".into(),
                container_id: "c".into(),
            },
            runtime_identity: true,
            layout: Layout::ContainerdCgroupfs,
            process: process.into(),
            pid: 7,
            concurrency: None,
            control: PodControl::default(),
            control_errors: Vec::new(),
            started_at_ms: None,
            class: ProxyClass::Sidecar,
        }
    }

    #[test]
    fn discover_json_keeps_the_identity_flat() {
        let p = found("shop", "envoy");
        let v = serde_json::to_value(&p).unwrap();
        for (k, want) in [
            ("namespace", "shop"),
            ("pod_uid", "u"),
            ("container_id", "c"),
        ] {
            assert_eq!(v[k], want, "{v}");
        }
        assert!(v.get("id").is_none(), "{v}");
    }

    #[test]
    fn linkerd_cores_from_the_environment() {
        let env = b"PATH=/bin\0LINKERD2_PROXY_CORES=2\0LINKERD2_PROXY_LOG=warn\0";
        assert_eq!(cores_from_environ(env), Some(2));
        assert_eq!(cores_from_environ(b"LINKERD2_PROXY_CORES_MIN=1\0"), None);
        assert_eq!(cores_from_environ(b"LINKERD2_PROXY_CORES=x\0"), None);
        assert_eq!(cores_from_environ(b""), None);
    }

    #[test]
    fn concurrency_forms() {
        let args = ["/usr/local/bin/envoy", "-c", "x.json", "--concurrency", "4"];
        assert_eq!(concurrency_from_args(args), Some(4));
        assert_eq!(concurrency_from_args(["envoy", "--concurrency=2"]), Some(2));
        assert_eq!(concurrency_from_args(["envoy", "--concurrency"]), None);
        assert_eq!(concurrency_from_args(["envoy", "--concurrency", "x"]), None);
        assert_eq!(concurrency_from_args(["envoy"]), None);
    }

    #[test]
    fn ztunnel_is_the_node_proxy_only_identified_in_its_namespaces() {
        let rules = crate::policy::Policy::default().matching;
        let mut p = found("istio-system", "ztunnel");
        assert_eq!(classify(&p, &rules), Some(ProxyClass::NodeProxy));
        // By its process name alone, or in a tenant's namespace: not governed at all.
        p.runtime_identity = false;
        assert_eq!(classify(&p, &rules), None);
        p.runtime_identity = true;
        p.id.namespace = "shop".into();
        assert_eq!(classify(&p, &rules), None);
        // Any other proxy process is a sidecar, wherever it runs.
        p.process = "envoy".into();
        assert_eq!(classify(&p, &rules), Some(ProxyClass::Sidecar));
        p.id.namespace = "istio-system".into();
        assert_eq!(classify(&p, &rules), Some(ProxyClass::Sidecar));
    }

    #[test]
    fn gateway_forms() {
        assert!(is_gateway_args([
            "/usr/local/bin/pilot-agent",
            "proxy",
            "router"
        ]));
        assert!(is_gateway_args(["pilot-agent", "proxy", "waypoint", "--x"]));
        assert!(!is_gateway_args(["pilot-agent", "proxy", "sidecar"]));
        assert!(!is_gateway_args(["envoy", "-c", "router"]));
    }
}
