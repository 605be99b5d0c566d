//! Discovery through procfs: every process whose `comm` is a proxy name, placed in its
//! container cgroup through `/proc/PID/cgroup`. Raw reads of `comm`, `cgroup`, `stat` and
//! `cmdline` under a passed-in proc root (the scan touches every PID, so it stays lean; the
//! `procfs` crate's per-process handles cost more than the three reads it replaces). A process
//! that vanishes mid-scan is skipped quietly.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::cgroup_path::{
    climb_depth, join_ns_path, parse_container_path, parse_proc_cgroup, resolve_proc_path,
};
use super::{
    Discovery, DiscoveryError, Proxy, Source, concurrency_from_args, cores_from_environ,
    is_gateway_args,
};
use crate::identity::Identity;
use crate::policy::{MatchPolicy, PodControl};

/// What [`ProcfsDiscovery::examine`] found at one PID.
#[derive(Debug, Clone, PartialEq)]
pub enum Examined {
    /// Not a proxy process, not in a pod container cgroup, or gone.
    NotProxy,
    /// A proxy process whose parent runs a gateway or waypoint (`pilot-agent proxy router`).
    Gateway,
    /// A proxy process in a pod container cgroup (boxed: it is much larger than the others).
    Proxy(Box<Proxy>),
}

/// Scans a proc root for proxy processes and maps them to container cgroups under a cgroup root.
#[derive(Debug, Clone)]
pub struct ProcfsDiscovery {
    proc_root: PathBuf,
    cgroup_root: PathBuf,
    /// Where this process's cgroup namespace root sits in the host hierarchy (found once, the
    /// first time a path climbs out of it); `None` inside: not namespaced, or not found.
    ns_root: std::sync::Arc<std::sync::OnceLock<Option<String>>>,
    /// Include gateways and waypoints (`pilot-agent proxy router|waypoint`).
    pub include_gateways: bool,
}

/// The NUL-separated argument vector of `/proc/PID/cmdline`.
pub fn split_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The parent PID from the text of `/proc/PID/stat` (the field after the `)` closing comm).
pub fn parse_stat_ppid(text: &str) -> Option<u32> {
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

impl ProcfsDiscovery {
    pub fn new(proc_root: impl Into<PathBuf>, cgroup_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            cgroup_root: cgroup_root.into(),
            ns_root: Default::default(),
            include_gateways: false,
        }
    }

    /// The host path of a `/proc/PID/cgroup` path, relative to the cgroup root. Inside a
    /// cgroup namespace (a DaemonSet pod on cgroup v2 has its own) paths climb out of the
    /// namespace root with `..`: they are joined to that root's host path, found once by
    /// looking for this process in the cgroup tree; failing that, re-anchored at their
    /// `kubepods` component.
    pub fn host_cgroup_path(&self, path: &str) -> Option<String> {
        if climb_depth(path) == 0 {
            return resolve_proc_path(path);
        }
        match self.ns_root.get_or_init(|| self.find_ns_root()) {
            Some(root) => join_ns_path(root, path),
            None => resolve_proc_path(path),
        }
    }

    /// The host path of this process's cgroup namespace root: how deep it is, from how far
    /// init's cgroup climbs; which directory at that depth, from whose `cgroup.procs` lists
    /// this process (its PID as the proc root's PID namespace numbers it, i.e. the host's with
    /// hostPID). Read once.
    fn find_ns_root(&self) -> Option<String> {
        let me = std::fs::read_link(self.proc_root.join("self")).ok()?;
        let me = me.to_str()?.to_string();
        let init = String::from_utf8(self.read("1", "cgroup")?).ok()?;
        let depth = climb_depth(parse_proc_cgroup(&init)?);
        let mut level = vec![String::new()];
        for _ in 0..depth {
            let mut next = Vec::new();
            for rel in &level {
                let Ok(entries) = std::fs::read_dir(self.cgroup_root.join(rel)) else {
                    continue;
                };
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir())
                        && let Some(name) = e.file_name().to_str()
                    {
                        next.push(if rel.is_empty() {
                            name.to_string()
                        } else {
                            format!("{rel}/{name}")
                        });
                    }
                }
            }
            level = next;
        }
        let found = level.into_iter().find(|rel| {
            std::fs::read_to_string(self.cgroup_root.join(rel).join("cgroup.procs"))
                .is_ok_and(|procs| procs.lines().any(|l| l.trim() == me))
        });
        match &found {
            Some(root) => tracing::info!(
                cgroup_namespace_root = root,
                "in a cgroup namespace: /proc paths are resolved from its root"
            ),
            None => tracing::warn!(
                depth,
                "in a cgroup namespace whose root was not found in the cgroup tree; \
                 /proc paths are re-anchored at their kubepods component"
            ),
        }
        found
    }

    fn read(&self, pid: &str, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.proc_root.join(pid).join(name)).ok()
    }

    /// Examines one PID: `Some(proxy)` when it is a governed proxy process.
    pub fn inspect(&self, pid: &str, names: &[String]) -> Option<Proxy> {
        match self.examine(pid, names, self.include_gateways) {
            Examined::Proxy(proxy) => Some(*proxy),
            Examined::Gateway | Examined::NotProxy => None,
        }
    }

    /// Examines one PID: a proxy process in a pod container cgroup, a gateway or waypoint
    /// proxy (skipped unless `include_gateways`), or neither (also when it vanished).
    pub fn examine(&self, pid: &str, names: &[String], include_gateways: bool) -> Examined {
        let Some(comm_raw) = self.read(pid, "comm") else {
            return Examined::NotProxy;
        };
        let comm = String::from_utf8_lossy(&comm_raw);
        let comm = comm.trim_end_matches('\n');
        if !names.iter().any(|n| n == comm) {
            return Examined::NotProxy;
        }
        let Some(cgroup_raw) = self.read(pid, "cgroup") else {
            return Examined::NotProxy;
        };
        let cgroup_text = String::from_utf8_lossy(&cgroup_raw);
        let Some(rel) = parse_proc_cgroup(&cgroup_text).and_then(|p| self.host_cgroup_path(p))
        else {
            debug!(
                pid,
                comm, "proxy process outside any resolvable cgroup; skipped"
            );
            return Examined::NotProxy;
        };
        let Some(path) = parse_container_path(&rel) else {
            debug!(
                pid,
                comm,
                cgroup = rel,
                "proxy process not in a pod container cgroup; skipped"
            );
            return Examined::NotProxy;
        };
        let args = self
            .read(pid, "cmdline")
            .map(|r| split_cmdline(&r))
            .unwrap_or_default();
        if !include_gateways && self.parent_is_gateway(pid) {
            debug!(
                pid,
                comm,
                cgroup = rel,
                "gateway or waypoint proxy; skipped"
            );
            return Examined::Gateway;
        }
        Examined::Proxy(Box::new(Proxy {
            dir: self.cgroup_root.join(&path.container_rel),
            pod_dir: self.cgroup_root.join(&path.pod_rel),
            key: path.container_rel,
            id: Identity {
                pod_uid: path.pod_uid,
                container_id: path.container_id,
                ..Identity::default()
            },
            runtime_identity: false,
            layout: path.layout,
            process: comm.to_string(),
            pid: pid.parse().unwrap_or_default(),
            concurrency: concurrency_from_args(args.iter().map(String::as_str)).or_else(|| {
                // Linkerd's proxy takes its workers from its environment.
                (comm == "linkerd2-proxy")
                    .then(|| self.read(pid, "environ"))
                    .flatten()
                    .and_then(|raw| cores_from_environ(&raw))
            }),
            control: PodControl::default(),
            control_errors: Vec::new(),
            class: super::ProxyClass::Sidecar,
            started_at_ms: None,
        }))
    }

    fn parent_is_gateway(&self, pid: &str) -> bool {
        let Some(stat) = self.read(pid, "stat") else {
            return false;
        };
        let Some(ppid) = parse_stat_ppid(&String::from_utf8_lossy(&stat)) else {
            return false;
        };
        let Some(raw) = self.read(&ppid.to_string(), "cmdline") else {
            return false;
        };
        let args = split_cmdline(&raw);
        is_gateway_args(args.iter().map(String::as_str))
    }

    /// The proc root scanned.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }
}

impl Discovery for ProcfsDiscovery {
    fn discover(&mut self, rules: &MatchPolicy) -> Result<Vec<Proxy>, DiscoveryError> {
        let entries =
            std::fs::read_dir(&self.proc_root).map_err(|source| DiscoveryError::ProcRoot {
                path: self.proc_root.clone(),
                source,
            })?;
        let include_gateways = self.include_gateways || rules.include_gateways;
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str() else { continue };
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Examined::Proxy(proxy) =
                self.examine(pid, &rules.process_names, include_gateways)
                && seen.insert(proxy.key.clone())
            {
                found.push(*proxy);
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn source(&self) -> Source {
        Source::Procfs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ppid_with_awkward_comm() {
        assert_eq!(parse_stat_ppid("42 (envoy) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parse_stat_ppid("42 (a) b (c)) R 99 1"), Some(99));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn cmdline_split() {
        assert_eq!(
            split_cmdline(b"envoy\0--concurrency\x002\0"),
            vec!["envoy", "--concurrency", "2"]
        );
        assert!(split_cmdline(b"").is_empty());
    }
}
