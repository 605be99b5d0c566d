//! Pure readings of what the runtime returns: the Kubernetes identity in CRI labels, the PID
//! and `runtimeSpec.linux.cgroupsPath` in `ContainerStatus{verbose}`'s `info["info"]` JSON, and
//! the mapping of a cgroupsPath to the directory under the cgroup v2 root — systemd driver
//! (`slice:prefix:id`, the slice expanded from its dashes) and cgroupfs driver (a plain path),
//! containerd and CRI-O alike (design notes §4). No I/O.

use std::collections::HashMap;

use serde::Deserialize;

use super::proto::PodSandbox;

/// Container label kubelet sets: the pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Container label kubelet sets: the pod's name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Container label kubelet sets: the pod's UID.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Container label kubelet sets: the container's name in the pod spec.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// A verbose status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(
        "ContainerStatus info of {container_id}: no \"info\" entry (runtime without verbose status?)"
    )]
    NoInfo { container_id: String },
    #[error("ContainerStatus info of {container_id}: parse info[\"info\"] JSON: {source}")]
    Json {
        container_id: String,
        source: serde_json::Error,
    },
}

/// Who a container is, in Kubernetes terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
}

/// The identity from a container's labels, completed from its sandbox's metadata and the
/// container's CRI metadata name where labels are missing (a runtime used without kubelet).
pub fn identity(
    labels: &HashMap<String, String>,
    metadata_name: Option<&str>,
    sandbox: Option<&PodSandbox>,
) -> Identity {
    let label = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
    let meta = sandbox.and_then(|s| s.metadata.as_ref());
    Identity {
        namespace: label(LABEL_POD_NAMESPACE)
            .or_else(|| meta.map(|m| m.namespace.clone()))
            .unwrap_or_default(),
        pod: label(LABEL_POD_NAME)
            .or_else(|| meta.map(|m| m.name.clone()))
            .unwrap_or_default(),
        pod_uid: label(LABEL_POD_UID)
            .or_else(|| meta.map(|m| m.uid.clone()))
            .unwrap_or_default(),
        container: label(LABEL_CONTAINER_NAME)
            .or_else(|| metadata_name.map(str::to_string))
            .unwrap_or_default(),
    }
}

/// What a verbose `ContainerStatus` says about the running container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusInfo {
    /// Host PID of the container's first process; `None` when not running.
    pub pid: Option<u32>,
    /// `runtimeSpec.linux.cgroupsPath` as the runtime gave it to the OCI runtime.
    pub cgroups_path: Option<String>,
}

#[derive(Deserialize)]
struct RawInfo {
    #[serde(default)]
    pid: Option<u64>,
    #[serde(default, rename = "runtimeSpec")]
    runtime_spec: Option<RawSpec>,
}

#[derive(Deserialize)]
struct RawSpec {
    #[serde(default)]
    linux: Option<RawLinux>,
}

#[derive(Deserialize)]
struct RawLinux {
    #[serde(default, rename = "cgroupsPath")]
    cgroups_path: Option<String>,
}

/// Reads `info["info"]` of a verbose `ContainerStatus` (containerd and CRI-O both put the
/// PID and the OCI runtime spec there).
pub fn parse_status_info(
    container_id: &str,
    info: &HashMap<String, String>,
) -> Result<StatusInfo, ParseError> {
    let text = info.get("info").ok_or_else(|| ParseError::NoInfo {
        container_id: container_id.to_string(),
    })?;
    let raw: RawInfo = serde_json::from_str(text).map_err(|source| ParseError::Json {
        container_id: container_id.to_string(),
        source,
    })?;
    Ok(StatusInfo {
        pid: raw
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0),
        cgroups_path: raw
            .runtime_spec
            .and_then(|s| s.linux)
            .and_then(|l| l.cgroups_path)
            .filter(|p| !p.is_empty()),
    })
}

/// Expands a systemd slice name to its path: `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`
/// (systemd's rule: every dash opens a child slice). `-.slice` is the root (empty path).
/// `None` for names systemd refuses (not `.slice`, empty parts, a leading or doubled dash).
pub fn expand_slice(slice: &str) -> Option<String> {
    if slice == "-.slice" {
        return Some(String::new());
    }
    let stem = slice.strip_suffix(".slice")?;
    if stem.is_empty() || stem.contains('/') || stem.starts_with('-') || stem.ends_with('-') {
        return None;
    }
    let mut path = String::with_capacity(slice.len() * 2);
    let mut prefix = String::with_capacity(stem.len());
    for (i, part) in stem.split('-').enumerate() {
        if part.is_empty() {
            return None;
        }
        if i > 0 {
            prefix.push('-');
            path.push('/');
        }
        prefix.push_str(part);
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Some(path)
}

/// Maps a container's `cgroupsPath` to its cgroup directory relative to the cgroup v2 root
/// (no leading `/`):
/// - systemd driver, `slice:prefix:name` — `kubepods-burstable-pod<uid_>.slice:cri-containerd:<id>`
///   → `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`
///   (CRI-O: prefix `crio`; an empty prefix gives `<name>.scope`);
/// - cgroupfs driver, a path — `/kubepods/burstable/pod<uid>/<id>` (CRI-O: `.../crio-<id>`).
///
/// `None` when the text fits neither form or would leave the root.
pub fn cgroups_path_to_rel(cgroups_path: &str) -> Option<String> {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let rel = match parts.as_slice() {
        [slice, prefix, name] => {
            if name.is_empty() || name.contains('/') || prefix.contains('/') {
                return None;
            }
            let parent = if slice.is_empty() {
                // runc's default parent.
                "system.slice".to_string()
            } else {
                expand_slice(slice)?
            };
            let unit = if name.ends_with(".slice") || name.ends_with(".scope") {
                (*name).to_string()
            } else if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            if parent.is_empty() {
                unit
            } else {
                format!("{parent}/{unit}")
            }
        }
        [path] => {
            let clean: Vec<&str> = path
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .collect();
            if clean.is_empty() || clean.contains(&"..") {
                return None;
            }
            clean.join("/")
        }
        _ => return None,
    };
    Some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::proto::PodSandboxMetadata;
    use crate::discovery::cgroup_path::{Layout, parse_container_path};

    const ID: &str = "4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";
    const UID: &str = "8f3c1e2a-1b2c-4d5e-9f00-123456789abc";
    const UID_: &str = "8f3c1e2a_1b2c_4d5e_9f00_123456789abc";

    #[test]
    fn slices_expand_like_systemd() {
        assert_eq!(
            expand_slice("kubepods.slice").as_deref(),
            Some("kubepods.slice")
        );
        assert_eq!(
            expand_slice("kubepods-burstable.slice").as_deref(),
            Some("kubepods.slice/kubepods-burstable.slice")
        );
        assert_eq!(
            expand_slice(&format!("kubepods-besteffort-pod{UID_}.slice")).as_deref(),
            Some(
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
                )
                .as_str()
            )
        );
        assert_eq!(expand_slice("-.slice").as_deref(), Some(""));
        for bad in [
            "kubepods",
            "-a.slice",
            "a-.slice",
            "a--b.slice",
            ".slice",
            "a/b.slice",
        ] {
            assert_eq!(expand_slice(bad), None, "{bad}");
        }
    }

    /// Every runtime/driver form maps to a path the agent's own parser accepts, with the
    /// right layout, pod UID and container ID.
    #[test]
    fn every_runtime_and_driver_form() {
        let cases = [
            (
                format!("kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"),
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                Layout::ContainerdSystemd,
            ),
            (
                format!("kubepods-pod{UID_}.slice:cri-containerd:{ID}"),
                format!("kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                Layout::ContainerdSystemd,
            ),
            (
                format!("kubepods-besteffort-pod{UID_}.slice:crio:{ID}"),
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                Layout::CrioSystemd,
            ),
            (
                format!("kubepods-burstable-pod{UID_}.slice:docker:{ID}"),
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"
                ),
                Layout::DockerSystemd,
            ),
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                format!("kubepods/burstable/pod{UID}/{ID}"),
                Layout::ContainerdCgroupfs,
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                format!("kubepods/pod{UID}/{ID}"),
                Layout::ContainerdCgroupfs,
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
                format!("kubepods/besteffort/pod{UID}/crio-{ID}"),
                Layout::CrioCgroupfs,
            ),
        ];
        for (cgroups_path, want, layout) in cases {
            let rel = cgroups_path_to_rel(&cgroups_path).unwrap();
            assert_eq!(rel, want, "{cgroups_path}");
            let parsed = parse_container_path(&rel).unwrap();
            assert_eq!(parsed.layout, layout, "{cgroups_path}");
            assert_eq!(parsed.pod_uid, UID, "{cgroups_path}");
            assert_eq!(parsed.container_id, ID, "{cgroups_path}");
            assert_eq!(parsed.container_rel, rel);
        }
        // kubelet --cgroup-root=/custom (kind's /kubelet): mapped, but outside the kubepods
        // tree at the cgroup root, so never governed (issue 9, case 4).
        let rel = cgroups_path_to_rel(&format!("/custom/kubepods/burstable/pod{UID}/{ID}"));
        assert_eq!(
            rel.as_deref(),
            Some(format!("custom/kubepods/burstable/pod{UID}/{ID}").as_str())
        );
        assert_eq!(rel.as_deref().and_then(parse_container_path), None);
    }

    #[test]
    fn odd_and_hostile_forms() {
        assert_eq!(
            cgroups_path_to_rel(&format!(":cri-containerd:{ID}")).as_deref(),
            Some(format!("system.slice/cri-containerd-{ID}.scope").as_str())
        );
        assert_eq!(
            cgroups_path_to_rel(&format!("kubepods.slice::{ID}")).as_deref(),
            Some(format!("kubepods.slice/{ID}.scope").as_str())
        );
        // a pod slice with no container is not a container (the parser refuses it later)
        let pod_only = cgroups_path_to_rel("kubepods-pod1.slice:crio:x.scope").unwrap();
        assert_eq!(pod_only, "kubepods.slice/kubepods-pod1.slice/x.scope");
        for bad in [
            "",
            "/",
            "/../../etc",
            "a:b",
            "a:b:c:d",
            "kubepods:crio:x",
            "kubepods.slice:crio:",
            "kubepods.slice:crio:a/b",
        ] {
            assert_eq!(cgroups_path_to_rel(bad), None, "{bad}");
        }
        // relative cgroupfs paths are taken from the root too
        assert_eq!(cgroups_path_to_rel("a/b").as_deref(), Some("a/b"));
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Shaped like containerd 1.6's verbose info (trimmed).
    const CONTAINERD_INFO: &str = r#"{
  "sandboxID": "a1b2",
  "pid": 4242,
  "removing": false,
  "snapshotKey": "c3d4",
  "snapshotter": "native",
  "runtimeType": "io.containerd.runc.v2",
  "runtimeOptions": {"systemd_cgroup": false},
  "config": {"metadata": {"name": "istio-proxy"}},
  "runtimeSpec": {
    "ociVersion": "1.0.2-dev",
    "process": {"args": ["/usr/local/bin/pilot-agent", "proxy", "sidecar"]},
    "linux": {
      "resources": {"cpu": {"quota": 200000, "period": 100000}},
      "cgroupsPath": "/kubepods/burstable/pod8f3c1e2a-1b2c-4d5e-9f00-123456789abc/4a3b",
      "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    }
  }
}"#;

    /// Shaped like CRI-O's verbose info (trimmed).
    const CRIO_INFO: &str = r#"{"sandboxID":"e5f6","pid":777,"runtimeSpec":{"ociVersion":"1.0.2","linux":{"cgroupsPath":"kubepods-burstable-pod8f3c1e2a_1b2c_4d5e_9f00_123456789abc.slice:crio:4a3b"}}}"#;

    #[test]
    fn verbose_info_of_containerd_and_crio() {
        let i = parse_status_info("c", &map(&[("info", CONTAINERD_INFO)])).unwrap();
        assert_eq!(i.pid, Some(4242));
        assert_eq!(
            i.cgroups_path.as_deref(),
            Some("/kubepods/burstable/pod8f3c1e2a-1b2c-4d5e-9f00-123456789abc/4a3b")
        );
        let i = parse_status_info("c", &map(&[("info", CRIO_INFO)])).unwrap();
        assert_eq!(i.pid, Some(777));
        assert!(i.cgroups_path.unwrap().ends_with(":crio:4a3b"));
    }

    #[test]
    fn verbose_info_gaps() {
        // exited container: pid 0, no spec
        let i = parse_status_info("c", &map(&[("info", r#"{"pid":0}"#)])).unwrap();
        assert_eq!(i, StatusInfo::default());
        let e = parse_status_info("c1", &HashMap::new()).unwrap_err();
        assert!(e.to_string().contains("c1"), "{e}");
        let e = parse_status_info("c2", &map(&[("info", "{not json")])).unwrap_err();
        assert!(matches!(e, ParseError::Json { .. }));
        let i = parse_status_info("c", &map(&[("info", r#"{"pid":9,"runtimeSpec":{}}"#)])).unwrap();
        assert_eq!((i.pid, i.cgroups_path), (Some(9), None));
    }

    #[test]
    fn identity_from_labels_then_sandbox() {
        let labels = map(&[
            (LABEL_POD_NAMESPACE, "shop"),
            (LABEL_POD_NAME, "cart-5d9f"),
            (LABEL_POD_UID, UID),
            (LABEL_CONTAINER_NAME, "istio-proxy"),
        ]);
        assert_eq!(
            identity(&labels, Some("ignored"), None),
            Identity {
                namespace: "shop".into(),
                pod: "cart-5d9f".into(),
                pod_uid: UID.into(),
                container: "istio-proxy".into(),
            }
        );
        let sandbox = PodSandbox {
            metadata: Some(PodSandboxMetadata {
                name: "p".into(),
                uid: "u".into(),
                namespace: "ns".into(),
                attempt: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            identity(&HashMap::new(), Some("envoy-box"), Some(&sandbox)),
            Identity {
                namespace: "ns".into(),
                pod: "p".into(),
                pod_uid: "u".into(),
                container: "envoy-box".into(),
            }
        );
        assert_eq!(identity(&HashMap::new(), None, None), Identity::default());
    }
}
