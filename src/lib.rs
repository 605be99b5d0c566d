//! sidecar-governor: a per-node agent that right-sizes service-mesh sidecar proxies (Envoy in
//! Istio's `istio-proxy`, `linkerd2-proxy`) by moving their cgroup v2 `cpu.max` within a
//! policy's bounds — idle proxies shrink, hot ones get room before they throttle — with every
//! original journaled so it can always be put back.
//!
//! Data flow (design notes §2): [`policy`] → [`discovery`] → [`sampler`] →
//! [`controller`] (pure) → [`actuator`] + [`journal`] → [`metrics`] / [`server`], driven by
//! the loop in [`agent`]. [`simulate`] replays recorded or synthetic usage traces offline
//! through the same controller and a model of the kernel.

pub mod actuator;
pub mod agent;
pub mod cgroup;
pub(crate) mod controller;
pub mod cri;
pub mod discovery;
pub mod events;
pub mod identity;
pub mod journal;
pub mod metrics;
pub mod ownership;
pub mod policy;
pub(crate) mod proxy;
pub mod quantity;
pub mod reload;
pub mod sampler;
pub mod server;
pub mod simulate;
pub mod status;
pub mod wake;
