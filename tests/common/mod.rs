//! Fixture trees for tests and benchmarks: a temporary directory laid out like a node's
//! cgroupfs (kubelet-shaped pod and container cgroups with `cpu.max`, `cpu.stat`,
//! `cpu.pressure`, memory files) and procfs (`<pid>/{comm,cgroup,cmdline,stat}`). The one
//! place fixture layouts are made, so every test speaks of the same shapes.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod harness;

use std::fs;
use std::path::{Path, PathBuf};

/// A node: a cgroup root and a proc root under one temporary directory.
#[derive(Debug)]
pub struct Node {
    pub dir: tempfile::TempDir,
    pub cgroup: PathBuf,
    pub proc: PathBuf,
    pub state: PathBuf,
    next_pid: u32,
}

/// One container cgroup in the fixture.
#[derive(Debug, Clone)]
pub struct Container {
    pub rel: String,
    pub dir: PathBuf,
    pub pod_uid: String,
    pub id: String,
    pub pid: Option<u32>,
    usage_us: u64,
    periods: u64,
    throttled: u64,
    throttled_us: u64,
}

/// A 64-hex container ID derived from `n`.
pub fn container_id(n: usize) -> String {
    format!("{n:064x}").replace('0', "a")[..64].to_string()
}

/// A pod UID derived from `n`.
pub fn pod_uid(n: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", n, n)
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Node {
    /// `sidecar-governor run` over this node (procfs discovery, no Events) with the policy
    /// `config`; callers add their own flags (listeners, dry run) before spawning it.
    pub fn agent_command(&self, config: &Path) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sidecar-governor"));
        c.args([
            "run",
            "--discovery",
            "procfs",
            "--events",
            "off",
            "--config",
        ])
        .arg(config)
        .arg("--cgroup-root")
        .arg(&self.cgroup)
        .arg("--proc-root")
        .arg(&self.proc)
        .arg("--state-dir")
        .arg(&self.state);
        c
    }

    pub fn new() -> Node {
        // tmpfs where there is one: the journal's fsyncs then cost nothing, and the tests
        // that tick the agent thousands of times stay fast.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");
        let cgroup = dir.path().join("cgroup");
        let proc = dir.path().join("proc");
        let state = dir.path().join("state");
        fs::create_dir_all(&cgroup).unwrap();
        fs::create_dir_all(&proc).unwrap();
        fs::write(
            cgroup.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        Node {
            dir,
            cgroup,
            proc,
            state,
            next_pid: 1000,
        }
    }

    /// A container cgroup in the cgroupfs-driver layout
    /// (`kubepods/burstable/pod<uid>/<id>`) with `cpu_max` as its limit; the pod cgroup gets
    /// the same `cpu.max` (a one-container pod) unless it exists already.
    pub fn container(&mut self, pod: usize, n: usize, cpu_max: &str) -> Container {
        let uid = pod_uid(pod);
        let id = container_id(n);
        let pod_rel = format!("kubepods/burstable/pod{uid}");
        let rel = format!("{pod_rel}/{id}");
        self.make_container(&pod_rel, rel, uid, id, cpu_max)
    }

    /// A container cgroup in the containerd + systemd layout.
    pub fn container_systemd(&mut self, pod: usize, n: usize, cpu_max: &str) -> Container {
        let uid = pod_uid(pod);
        let id = container_id(n);
        let pod_rel = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        );
        let rel = format!("{pod_rel}/cri-containerd-{id}.scope");
        self.make_container(&pod_rel, rel, uid, id, cpu_max)
    }

    fn make_container(
        &mut self,
        pod_rel: &str,
        rel: String,
        uid: String,
        id: String,
        cpu_max: &str,
    ) -> Container {
        let pod_dir = self.cgroup.join(pod_rel);
        fs::create_dir_all(&pod_dir).unwrap();
        if !pod_dir.join("cpu.max").exists() {
            write_cgroup_files(&pod_dir, cpu_max);
        }
        let dir = self.cgroup.join(&rel);
        fs::create_dir_all(&dir).unwrap();
        write_cgroup_files(&dir, cpu_max);
        Container {
            rel,
            dir,
            pod_uid: uid,
            id,
            pid: None,
            usage_us: 0,
            periods: 0,
            throttled: 0,
            throttled_us: 0,
        }
    }

    /// A process named `comm` in `container`, with `args` as its command line.
    pub fn process(&mut self, container: &mut Container, comm: &str, args: &[&str]) -> u32 {
        let pid = self.next_pid;
        self.next_pid += 1;
        self.process_with_pid(pid, &format!("/{}", container.rel), comm, args, 1);
        container.pid = Some(pid);
        pid
    }

    /// A process with an explicit PID, cgroup path (as `/proc/PID/cgroup` shows it) and parent.
    pub fn process_with_pid(&self, pid: u32, cgroup: &str, comm: &str, args: &[&str], ppid: u32) {
        let dir = self.proc.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
        let mut cmdline = Vec::new();
        for a in args {
            cmdline.extend_from_slice(a.as_bytes());
            cmdline.push(0);
        }
        fs::write(dir.join("cmdline"), cmdline).unwrap();
        fs::write(
            dir.join("stat"),
            format!("{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0 0 0 0 0\n"),
        )
        .unwrap();
    }

    /// Removes a process from the proc tree (it exited).
    pub fn kill(&self, pid: u32) {
        fs::remove_dir_all(self.proc.join(pid.to_string())).unwrap();
    }
}

/// Writes the interface files of a fresh cgroup.
pub fn write_cgroup_files(dir: &Path, cpu_max: &str) {
    fs::write(dir.join("cpu.max"), format!("{cpu_max}\n")).unwrap();
    fs::write(dir.join("cpu.max.burst"), "0\n").unwrap();
    fs::write(
        dir.join("cpu.stat"),
        "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n",
    )
    .unwrap();
    fs::write(
        dir.join("cpu.pressure"),
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    )
    .unwrap();
    fs::write(dir.join("memory.current"), "10485760\n").unwrap();
    fs::write(dir.join("memory.high"), "max\n").unwrap();
    fs::write(dir.join("memory.max"), "1073741824\n").unwrap();
    fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    )
    .unwrap();
    fs::write(
        dir.join("memory.stat"),
        "anon 8388608\nfile 2097152\nkernel 0\nsock 0\nshmem 0\n",
    )
    .unwrap();
    fs::write(
        dir.join("memory.pressure"),
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    )
    .unwrap();
}

impl Container {
    /// Adds one second of activity: `millis` of CPU used, and when `throttled` the quota held
    /// back `held_millis` more (100 periods per second, 90 of them throttled).
    /// `periods` enforcement periods in which the proxy used `used_us` in all, `throttled`
    /// of them throttled for `held_us` in all (a part of a second: a wake-up's span).
    pub fn run_periods(&mut self, periods: u64, used_us: u64, throttled: u64, held_us: u64) {
        self.usage_us += used_us;
        self.periods += periods;
        self.throttled += throttled;
        self.throttled_us += held_us;
        self.write_cpu_stat();
    }

    pub fn run_for_a_second(&mut self, millis: u64, held_millis: u64) {
        self.usage_us += millis * 1000;
        self.periods += 10;
        if held_millis > 0 {
            self.throttled += 9;
            self.throttled_us += held_millis * 1000;
        }
        self.write_cpu_stat();
    }

    fn write_cpu_stat(&self) {
        fs::write(
            self.dir.join("cpu.stat"),
            format!(
                "usage_usec {}\nuser_usec {}\nsystem_usec 0\nnr_periods {}\nnr_throttled {}\nthrottled_usec {}\nnr_bursts 0\nburst_usec 0\n",
                self.usage_us, self.usage_us, self.periods, self.throttled, self.throttled_us
            ),
        )
        .unwrap();
    }

    /// The `cpu.max` text now (trimmed).
    pub fn cpu_max(&self) -> String {
        fs::read_to_string(self.dir.join("cpu.max"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The pod cgroup's `cpu.max` text now (trimmed).
    pub fn pod_cpu_max(&self) -> String {
        fs::read_to_string(self.dir.parent().unwrap().join("cpu.max"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The quota now in millicores (`None` = max).
    pub fn quota_millis(&self) -> Option<u64> {
        let text = self.cpu_max();
        let mut parts = text.split_whitespace();
        let quota = parts.next()?;
        let period: u64 = parts.next()?.parse().ok()?;
        quota.parse::<u64>().ok().map(|q| q * 1000 / period)
    }
}
