//! Who a proxy container is, in Kubernetes' terms: namespace, pod, container, pod UID and
//! container ID. One type for discovery, the journal's records, the per-proxy metric labels
//! and the Events, so the five names travel together and cannot be mixed up. The names are
//! empty where the source does not know them (procfs knows only the pod UID and container ID
//! from the cgroup path).

use prometheus_client::encoding::EncodeLabelSet;
use serde::Serialize;

/// A proxy container's identity. As metric labels it is bounded by the node's containers.
#[derive(
    Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet, Serialize,
)]
pub struct Identity {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pod_uid: String,
    pub container_id: String,
}
