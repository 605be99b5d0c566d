//! Pure mapping between cgroup paths and Kubernetes identities: the pod UID and container ID
//! in kubelet-made cgroup paths (containerd and CRI-O, systemd and cgroupfs drivers), and the
//! resolution of a `/proc/PID/cgroup` line against the host's cgroup mount (design notes §3–4).
//! Only kubelet's own tree counts: a pod cgroup is `kubepods.slice/[kubepods-<qos>.slice/]`
//! `kubepods[-<qos>]-pod<uid>.slice` (systemd driver) or `kubepods/[<qos>/]pod<uid>`
//! (cgroupfs driver), at the top of the cgroup root, `<qos>` being `burstable` or `besteffort`
//! (Guaranteed pods have no level). A pod-shaped directory anywhere else
//! (`system.slice/pod1234/<id>`) is not a pod, and its children are never governed.

/// Which runtime/driver layout a container cgroup path has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `.../cri-containerd-<id>.scope`
    ContainerdSystemd,
    /// `.../pod<uid>/<id>`
    ContainerdCgroupfs,
    /// `.../crio-<id>.scope` (the leaf may be a `container` child with crun)
    CrioSystemd,
    /// `.../pod<uid>/crio-<id>`
    CrioCgroupfs,
    /// `.../docker-<id>.scope` (cri-dockerd)
    DockerSystemd,
}

/// A container cgroup path understood: its pod and container identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPath {
    /// Path of the container cgroup relative to the cgroup root, without leading `/`.
    pub container_rel: String,
    /// Path of the pod cgroup (the container's parent), relative to the cgroup root.
    pub pod_rel: String,
    pub pod_uid: String,
    pub container_id: String,
    pub layout: Layout,
}

fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod UID in a pod cgroup's directory name: `kubepods-burstable-pod<uid_>.slice`,
/// `kubepods-pod<uid_>.slice` (systemd, `-` written as `_`) or `pod<uid>` (cgroupfs).
pub fn pod_uid_of(dir_name: &str) -> Option<String> {
    if let Some(slice) = dir_name.strip_suffix(".slice") {
        let uid = slice.rsplit_once("-pod")?.1;
        let uid = uid.replace('_', "-");
        return is_uid(&uid).then_some(uid);
    }
    let uid = dir_name.strip_prefix("pod")?;
    is_uid(uid).then(|| uid.to_string())
}

/// The QoS levels kubelet puts under `kubepods` (Guaranteed pods sit directly in it).
const QOS_LEVELS: [&str; 2] = ["burstable", "besteffort"];

/// The cgroup driver whose naming a pod cgroup path follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Systemd,
    Cgroupfs,
}

/// The pod UID of a kubelet pod cgroup path (relative to the cgroup root, split into its
/// components), and the driver that named it; `None` unless the path is exactly a pod cgroup
/// in kubelet's tree (see the module notes).
fn kubelet_pod(parts: &[&str]) -> Option<(String, Driver)> {
    match parts {
        ["kubepods.slice", pod] => {
            let uid = pod.strip_prefix("kubepods-pod")?.strip_suffix(".slice")?;
            Some((systemd_uid(uid)?, Driver::Systemd))
        }
        ["kubepods.slice", level, pod] => {
            let qos = level.strip_prefix("kubepods-")?.strip_suffix(".slice")?;
            if !QOS_LEVELS.contains(&qos) {
                return None;
            }
            let uid = pod
                .strip_prefix("kubepods-")?
                .strip_prefix(qos)?
                .strip_prefix("-pod")?
                .strip_suffix(".slice")?;
            Some((systemd_uid(uid)?, Driver::Systemd))
        }
        ["kubepods", pod] => Some((cgroupfs_uid(pod)?, Driver::Cgroupfs)),
        ["kubepods", qos, pod] if QOS_LEVELS.contains(qos) => {
            Some((cgroupfs_uid(pod)?, Driver::Cgroupfs))
        }
        _ => None,
    }
}

fn systemd_uid(underscored: &str) -> Option<String> {
    let uid = underscored.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

fn cgroupfs_uid(dir_name: &str) -> Option<String> {
    let uid = dir_name.strip_prefix("pod")?;
    is_uid(uid).then(|| uid.to_string())
}

/// The pod UID of `rel` when it is a kubelet pod cgroup (relative to the cgroup root, no
/// leading `/`, no `.` or `..`): the only pod cgroups whose `cpu.max` the agent may raise.
pub fn parse_pod_path(rel: &str) -> Option<String> {
    let parts: Vec<&str> = rel.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return None;
    }
    kubelet_pod(&parts).map(|(uid, _)| uid)
}

fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn container_of(dir_name: &str) -> Option<(String, Layout)> {
    let scoped = |prefix: &str| {
        dir_name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(".scope"))
            .filter(|id| is_container_id(id))
            .map(str::to_string)
    };
    if let Some(id) = scoped("cri-containerd-") {
        return Some((id, Layout::ContainerdSystemd));
    }
    if let Some(id) = scoped("crio-") {
        return Some((id, Layout::CrioSystemd));
    }
    if let Some(id) = scoped("docker-") {
        return Some((id, Layout::DockerSystemd));
    }
    if let Some(id) = dir_name
        .strip_prefix("crio-")
        .filter(|id| is_container_id(id))
    {
        return Some((id.to_string(), Layout::CrioCgroupfs));
    }
    is_container_id(dir_name).then(|| (dir_name.to_string(), Layout::ContainerdCgroupfs))
}

/// Understands a container cgroup path (relative to the cgroup root). Returns `None` for
/// anything that is not a container directly inside a kubelet pod cgroup under the kubepods
/// tree, named as that pod's cgroup driver names containers — such cgroups are never
/// governed. A crun `container` leaf maps to its `crio-<id>.scope` parent, where the
/// limits live.
pub fn parse_container_path(rel: &str) -> Option<ContainerPath> {
    let mut parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    if parts.last() == Some(&"container")
        && parts.len() >= 2
        && parts[parts.len() - 2].starts_with("crio-")
    {
        parts.pop();
    }
    if parts.len() < 2 {
        return None;
    }
    let (container_id, layout) = container_of(parts[parts.len() - 1])?;
    // conmon's scope is not the container.
    if parts[parts.len() - 1].starts_with("crio-conmon-") {
        return None;
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return None;
    }
    let (pod_uid, driver) = kubelet_pod(&parts[..parts.len() - 1])?;
    let systemd_leaf = matches!(
        layout,
        Layout::ContainerdSystemd | Layout::CrioSystemd | Layout::DockerSystemd
    );
    if systemd_leaf != (driver == Driver::Systemd) {
        return None;
    }
    Some(ContainerPath {
        container_rel: parts.join("/"),
        pod_rel: parts[..parts.len() - 1].join("/"),
        pod_uid,
        container_id,
        layout,
    })
}

/// The cgroup v2 path of a process from the text of `/proc/PID/cgroup` (the `0::` line).
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Joins a `/proc/PID/cgroup` path read inside a cgroup namespace to the host path of that
/// namespace's root (`ns_root`, relative to the cgroup root): `/../../pod<uid>/<id>` read by an
/// agent whose namespace root is `kubepods/burstable/pod<a>/<b>` is
/// `kubepods/burstable/pod<uid>/<id>`. `None` when it would climb above the cgroup root.
pub fn join_ns_path(ns_root: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = ns_root.split('/').filter(|p| !p.is_empty()).collect();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            parts.pop()?;
        } else {
            parts.push(part);
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// How many levels a `/proc/PID/cgroup` path climbs above the reader's cgroup namespace root
/// (its leading `..` components): the depth of that root in the host hierarchy when the
/// process is in the host's root cgroup (as init is).
pub fn climb_depth(path: &str) -> usize {
    path.split('/')
        .filter(|p| !p.is_empty())
        .take_while(|p| *p == "..")
        .count()
}

/// Resolves a `/proc/PID/cgroup` path against the cgroup root as the host sees it. Inside a
/// cgroup namespace the path can start with `/../..`: those components are dropped and the
/// rest is matched from its `kubepods` component on, so it never escapes the root.
/// Returns the path relative to the root (no leading `/`), or `None` if it cannot be placed.
pub fn resolve_proc_path(path: &str) -> Option<String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let escaped = parts.contains(&"..");
    let clean: Vec<&str> = parts.iter().copied().filter(|p| *p != "..").collect();
    if clean.is_empty() {
        return None;
    }
    if escaped {
        let start = clean.iter().position(|p| p.starts_with("kubepods"))?;
        return Some(clean[start..].join("/"));
    }
    Some(clean.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";
    const UID: &str = "8f3c1e2a-1b2c-4d5e-9f00-123456789abc";

    fn underscored() -> String {
        UID.replace('-', "_")
    }

    #[test]
    fn containerd_systemd_burstable_and_guaranteed() {
        let rel = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            underscored()
        );
        let p = parse_container_path(&rel).unwrap();
        assert_eq!(p.pod_uid, UID);
        assert_eq!(p.container_id, ID);
        assert_eq!(p.layout, Layout::ContainerdSystemd);
        assert!(p.pod_rel.ends_with(".slice"));
        let guaranteed = format!(
            "kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
            underscored()
        );
        assert_eq!(parse_container_path(&guaranteed).unwrap().pod_uid, UID);
    }

    #[test]
    fn containerd_cgroupfs() {
        let p = parse_container_path(&format!("kubepods/burstable/pod{UID}/{ID}")).unwrap();
        assert_eq!(p.layout, Layout::ContainerdCgroupfs);
        assert_eq!(p.pod_rel, format!("kubepods/burstable/pod{UID}"));
        let besteffort = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(parse_container_path(&besteffort).unwrap().container_id, ID);
    }

    #[test]
    fn crio_systemd_with_and_without_crun_leaf() {
        let base = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-{ID}.scope",
            underscored()
        );
        let p = parse_container_path(&base).unwrap();
        assert_eq!(p.layout, Layout::CrioSystemd);
        let leaf = parse_container_path(&format!("{base}/container")).unwrap();
        assert_eq!(leaf.container_rel, base);
        let conmon = base.replace("crio-", "crio-conmon-");
        assert_eq!(parse_container_path(&conmon), None);
    }

    #[test]
    fn crio_cgroupfs() {
        let p = parse_container_path(&format!("kubepods/pod{UID}/crio-{ID}")).unwrap();
        assert_eq!(p.layout, Layout::CrioCgroupfs);
        assert_eq!(p.pod_uid, UID);
    }

    #[test]
    fn non_pod_cgroups_are_refused() {
        for rel in [
            "",
            "system.slice/containerd.service",
            "user.slice/user-0.slice/session-1.scope",
            &format!("k8s.io/{ID}"),
            &format!("kubepods/burstable/pod{UID}"),
            "kubepods.slice/kubepods-burstable.slice",
            &format!("kubepods/burstable/pod{UID}/not-a-container"),
        ] {
            assert_eq!(parse_container_path(rel), None, "{rel}");
        }
    }

    #[test]
    fn pod_shaped_cgroups_outside_the_kubepods_tree_are_refused() {
        let u = underscored();
        for rel in [
            // issue 9, case 4
            format!("system.slice/pod1234/{ID}"),
            format!("system.slice/pod{UID}/{ID}"),
            format!("pod{UID}/{ID}"),
            format!("kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
            format!("user.slice/kubepods/burstable/pod{UID}/{ID}"),
            format!("system.slice/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
            format!("evil.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"),
            // a pod nested inside another pod, or under a level that is not a QoS class
            format!("kubepods/burstable/pod{UID}/pod{UID}/{ID}"),
            format!("kubepods/guaranteed/pod{UID}/{ID}"),
            format!("kubepods/evil/pod{UID}/{ID}"),
            format!(
                "kubepods.slice/kubepods-evil.slice/kubepods-evil-pod{u}.slice/cri-containerd-{ID}.scope"
            ),
            // a systemd pod slice whose name does not follow its parent's
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
            ),
            format!("kubepods.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"),
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"
            ),
            // the drivers' names mixed
            format!("kubepods/burstable/pod{UID}/cri-containerd-{ID}.scope"),
            format!("kubepods.slice/kubepods-pod{u}.slice/{ID}"),
            // climbing
            format!("kubepods/burstable/../burstable/pod{UID}/{ID}"),
        ] {
            assert_eq!(parse_container_path(&rel), None, "{rel}");
        }
    }

    #[test]
    fn every_qos_level_of_both_drivers_is_accepted() {
        let u = underscored();
        for (rel, pod_rel) in [
            (
                format!("kubepods/pod{UID}/{ID}"),
                format!("kubepods/pod{UID}"),
            ),
            (
                format!("kubepods/burstable/pod{UID}/{ID}"),
                format!("kubepods/burstable/pod{UID}"),
            ),
            (
                format!("kubepods/besteffort/pod{UID}/crio-{ID}"),
                format!("kubepods/besteffort/pod{UID}"),
            ),
            (
                format!("kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
                format!("kubepods.slice/kubepods-pod{u}.slice"),
            ),
            (
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{ID}.scope"
                ),
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice"
                ),
            ),
        ] {
            let p = parse_container_path(&rel).unwrap_or_else(|| panic!("{rel}"));
            assert_eq!(p.pod_rel, pod_rel);
            assert_eq!(p.pod_uid, UID);
            assert_eq!(p.container_id, ID);
            assert_eq!(parse_pod_path(&pod_rel).as_deref(), Some(UID), "{pod_rel}");
        }
    }

    #[test]
    fn pod_paths_are_kubelet_pods_only() {
        let u = underscored();
        assert_eq!(
            parse_pod_path(&format!("kubepods/burstable/pod{UID}")).as_deref(),
            Some(UID)
        );
        for rel in [
            format!("system.slice/pod{UID}"),
            format!("pod{UID}"),
            "kubepods/burstable".to_string(),
            "kubepods.slice/kubepods-burstable.slice".to_string(),
            format!("/kubepods/burstable/pod{UID}"),
            format!("kubepods/burstable/pod{UID}/{ID}"),
            format!("kubepods/./pod{UID}"),
            format!("x.slice/kubepods-pod{u}.slice"),
        ] {
            assert_eq!(parse_pod_path(&rel), None, "{rel}");
        }
    }

    #[test]
    fn proc_cgroup_lines() {
        assert_eq!(
            parse_proc_cgroup("0::/kubepods/burstable/podx/abc\n"),
            Some("/kubepods/burstable/podx/abc")
        );
        // hybrid hosts list v1 hierarchies first
        assert_eq!(
            parse_proc_cgroup("12:cpu,cpuacct:/foo\n0::/bar\n"),
            Some("/bar")
        );
        assert_eq!(parse_proc_cgroup("4:memory:/foo\n"), None);
    }

    #[test]
    fn namespaced_paths_join_the_namespace_root() {
        let root = "kubepods/burstable/podaaaa/agentid";
        assert_eq!(
            join_ns_path(root, "/../../podbbbb/envoyid").as_deref(),
            Some("kubepods/burstable/podbbbb/envoyid")
        );
        assert_eq!(
            join_ns_path(root, "/../../../besteffort/podc/x").as_deref(),
            Some("kubepods/besteffort/podc/x")
        );
        assert_eq!(join_ns_path(root, "/").as_deref(), Some(root));
        assert_eq!(
            join_ns_path("a/b", "/../../../x"),
            None,
            "never above the root"
        );
        assert_eq!(
            join_ns_path("", "/kubepods/x").as_deref(),
            Some("kubepods/x")
        );
        assert_eq!(climb_depth("/../../../init.scope"), 3);
        assert_eq!(climb_depth("/init.scope"), 0);
        assert_eq!(climb_depth("/../.."), 2);
    }

    #[test]
    fn namespaced_paths_resolve_inside_the_root() {
        assert_eq!(
            resolve_proc_path("/../../kubepods/burstable/podx/abc").as_deref(),
            Some("kubepods/burstable/podx/abc")
        );
        assert_eq!(
            resolve_proc_path("/kubepods.slice/a.slice/b.scope").as_deref(),
            Some("kubepods.slice/a.slice/b.scope")
        );
        assert_eq!(resolve_proc_path("/../../etc/passwd"), None);
        assert_eq!(resolve_proc_path("/"), None);
    }
}
