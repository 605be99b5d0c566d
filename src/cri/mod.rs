//! The container runtime's CRI API (`runtime.v1`), as a client over the runtime's Unix socket.
//! [`proto`] is generated at build time from the vendored subset `proto/runtime/v1/api.proto`
//! (names and field numbers as in `k8s.io/cri-api`); [`client::CriClient`] wraps it with a
//! per-call timeout and errors that name the endpoint and the operation. Discovery on top of it
//! lives in [`crate::discovery::cri`]. Nothing here reads or writes cgroups.

pub mod client;
pub mod parse;

/// Generated CRI `runtime.v1` messages, client and server (the server is for tests and
/// stand-ins).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used
)]
pub mod proto {
    tonic::include_proto!("runtime.v1");
}

use std::path::{Path, PathBuf};

pub use client::{CriClient, CriError};

/// Where runtimes put their CRI socket, in the order they are tried: containerd, then CRI-O.
pub const DEFAULT_ENDPOINTS: [&str; 3] = [
    "/run/containerd/containerd.sock",
    "/var/run/crio/crio.sock",
    "/run/crio/crio.sock",
];

/// The default endpoints under `host_root` (the DaemonSet mounts the host's `/run` under a
/// prefix; `None` or `/` means the paths as they are).
pub fn default_endpoints(host_root: Option<&Path>) -> Vec<PathBuf> {
    DEFAULT_ENDPOINTS
        .iter()
        .map(|p| under_root(host_root, Path::new(p)))
        .collect()
}

/// `path` (absolute) placed under `root`.
pub fn under_root(root: Option<&Path>, path: &Path) -> PathBuf {
    match root {
        Some(root) if root != Path::new("/") => root.join(path.strip_prefix("/").unwrap_or(path)),
        _ => path.to_path_buf(),
    }
}

/// The first of `candidates` that exists now.
pub fn first_existing(candidates: &[PathBuf]) -> Option<&PathBuf> {
    candidates.iter().find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_under_a_host_root() {
        assert_eq!(
            default_endpoints(None)[0],
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            default_endpoints(Some(Path::new("/host")))[1],
            PathBuf::from("/host/var/run/crio/crio.sock")
        );
        assert_eq!(
            default_endpoints(Some(Path::new("/")))[2],
            PathBuf::from("/run/crio/crio.sock")
        );
    }

    #[test]
    fn first_existing_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.sock");
        let b = dir.path().join("b.sock");
        std::fs::write(&b, "").unwrap();
        let list = vec![a, b.clone()];
        assert_eq!(first_existing(&list), Some(&b));
        assert_eq!(first_existing(&list[..1]), None);
    }
}
