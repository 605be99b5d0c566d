//! Model-based test of the ownership promises (design notes §11, issue 8): random sequences
//! of ticks under changing load, outside writes to container and pod files, sidecar
//! restarts, two proxies in one pod, policy reloads (dry run on and off, `allowAboveLimit`,
//! CPU bounds, burst), journal write failures, and kill -9 followed by a restart or by
//! `restore`, run by the whole agent against a fixture node.
//!
//! Checked after every tick: every owned file holds either its original (or the latest value
//! someone else wrote) or a value the durable journal records as the agent's — so a kill -9
//! at any moment leaves nothing the journal does not cover. A crash is emulated at a write
//! boundary of the last tick (each file is written at most once a tick): before the tick's
//! flush — the journal as it was before the tick, only the restores (writes of originals)
//! done — or after it — the new journal, any of the tick's later writes undone. Checked at
//! the end (SIGTERM, or a crash and `restore`): every file equals its original or the latest
//! outside value.
//!
//! `SG_MODEL_CASES` sets the number of cases (default 64; `.ci/run` runs 10,000), split over two
//! tests that run side by side.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::harness::Harness;
use common::{Container, Node};
use proptest::prelude::*;
use sidecar_governor::agent::restore_all;
use sidecar_governor::journal::Journal;
use sidecar_governor::ownership::{CpuMaxValue, Limit, Owned};
use sidecar_governor::policy::{PodControl, Policy};

/// Container slots: pod 0 holds slots 0 and 1 (two proxies in one pod), pod 1 holds slot 2.
const SLOTS: usize = 3;
const POD_OF: [usize; SLOTS] = [0, 0, 1];
const LIMIT_US: [u64; SLOTS] = [50_000, 80_000, 200_000];

#[derive(Debug, Clone)]
enum Op {
    /// One second with these slots hot (bit i = slot i).
    Tick(u8),
    /// Someone else writes a container's `cpu.max` (quota not a multiple the agent writes).
    OutsideCpu(usize, u64),
    /// Someone else writes a container's `memory.high` (bytes not a whole page).
    OutsideMemory(usize, u64),
    /// Someone else writes a pod's `cpu.max` (an in-place resize).
    OutsidePod(usize, u64),
    /// The kubelet restarts a sidecar: a new container cgroup in the same pod.
    Restart(usize),
    /// A policy reload.
    Reload(PolicyKnobs),
    /// The journal cannot (true) or can (false) be written from now on.
    JournalBroken(bool),
    /// kill -9 at a write boundary of the last tick, then a new agent or (`restore`)
    /// `sidecar-governor restore` and a new agent.
    Crash {
        /// Before the tick's journal flush: its writes after the flush had not happened.
        before_flush: bool,
        /// After the flush, bit i keeps file i's new value.
        keep: u16,
        restore: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct PolicyKnobs {
    dry_run: bool,
    above_limit: bool,
    burst: bool,
    min_millis: u64,
    max_millis: u64,
    /// The proxies' namespace `shop` in `overrides`: 0 none, 1 `mode: off`, 2 `mode: dry-run`,
    /// 3 `allowAboveLimit` withheld, 4 granted with its own bounds.
    shop: u8,
    /// The pods' CPU annotations (min, max), in range or not (applied when the agent
    /// starts, as CRI reads them from the sandbox).
    annotations: (Option<u64>, Option<u64>),
}

impl PolicyKnobs {
    fn policy(&self) -> Policy {
        let mut p = Policy::from_yaml(&(format!(
            "interval: 1s\ndryRun: {}\nmatch:\n  rescanInterval: 1s\ncpu:\n  min: {}m\n  max: {}m\n  scaleDownAfter: 2s\n  conflictBackoff: 3s\n  allowAboveLimit: {}\n  burstRatio: {}\nmemory:\n  settleAfter: 2s\n  scaleDownAfter: 2s\n  probeInterval: 1s\n  stepDown: 0.2\n",
            self.dry_run,
            self.min_millis,
            self.max_millis,
            self.above_limit,
            if self.burst { 0.5 } else { 0.0 },
        ) + match self.shop {
            1 => "overrides:\n  - namespace: shop\n    mode: \"off\"\n",
            2 => "overrides:\n  - namespace: shop\n    mode: dry-run\n",
            3 => "overrides:\n  - namespace: shop\n    cpu: {allowAboveLimit: false}\n",
            4 => "overrides:\n  - namespace: shop\n    cpu: {min: 200m, max: 1500m, allowAboveLimit: true}\n",
            _ => "",
        }))
        .unwrap();
        p.cpu.push_storm.min_proxies = 100;
        p
    }
}

fn knobs() -> impl Strategy<Value = PolicyKnobs> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![50u64, 100, 300]),
        prop::sample::select(vec![1000u64, 2000]),
        0u8..5,
        prop::sample::select(vec![None, Some(150u64), Some(3000)]),
        prop::sample::select(vec![None, Some(400u64), Some(5000)]),
    )
        .prop_map(
            |(dry_run, above_limit, burst, min_millis, max_millis, shop, lo, hi)| PolicyKnobs {
                dry_run: dry_run && min_millis != 300,
                above_limit,
                burst,
                min_millis,
                max_millis,
                shop,
                annotations: (lo, hi.filter(|h| lo.is_none_or(|l| l <= *h))),
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => any::<u8>().prop_map(Op::Tick),
        1 => (0..SLOTS, 1u64..30).prop_map(|(i, q)| Op::OutsideCpu(i, q * 10_000 + 7)),
        1 => (0..SLOTS, 1u64..200).prop_map(|(i, m)| Op::OutsideMemory(i, (m << 20) + 3)),
        1 => (0..2usize, 1u64..40).prop_map(|(p, q)| Op::OutsidePod(p, q * 10_000 + 3)),
        1 => (0..SLOTS).prop_map(Op::Restart),
        1 => knobs().prop_map(Op::Reload),
        1 => any::<bool>().prop_map(Op::JournalBroken),
        1 => (any::<bool>(), any::<u16>(), any::<bool>())
            .prop_map(|(before_flush, keep, restore)| Op::Crash { before_flush, keep, restore }),
    ]
}

/// The owned files, each with the value it must hold once the agent has let go: its
/// original, or the latest value someone else wrote.
struct World {
    node: Node,
    slots: Vec<Container>,
    next_id: usize,
    /// File path -> the value it must end with.
    expected: BTreeMap<PathBuf, String>,
    knobs: PolicyKnobs,
    broken: bool,
    /// The journal as last seen on disk (a broken journal cannot change there).
    disk: Option<Journal>,
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap().trim().to_string()
}

impl World {
    fn new() -> World {
        let mut node = Node::new();
        let mut slots = Vec::new();
        for (i, limit) in LIMIT_US.iter().enumerate() {
            let mut c = node.container(POD_OF[i] + 1, i + 1, &format!("{limit} 100000"));
            node.process(&mut c, "envoy", &["envoy"]);
            slots.push(c);
        }
        // A pod's quota is the sum of its containers' (kubelet's way).
        for pod in 0..2 {
            let sum: u64 = (0..SLOTS)
                .filter(|i| POD_OF[*i] == pod)
                .map(|i| LIMIT_US[i])
                .sum();
            let dir = slots[(0..SLOTS).find(|i| POD_OF[*i] == pod).unwrap()]
                .dir
                .parent()
                .unwrap()
                .to_path_buf();
            fs::write(dir.join("cpu.max"), format!("{sum} 100000\n")).unwrap();
        }
        let mut w = World {
            node,
            slots,
            next_id: SLOTS + 1,
            expected: BTreeMap::new(),
            knobs: PolicyKnobs {
                dry_run: false,
                above_limit: true,
                burst: false,
                min_millis: 100,
                max_millis: 2000,
                shop: 0,
                annotations: (None, None),
            },
            broken: false,
            disk: None,
        };
        for i in 0..SLOTS {
            w.expect_container(i);
        }
        for p in w.pod_dirs() {
            w.expected
                .insert(p.join("cpu.max"), read(&p.join("cpu.max")));
        }
        w
    }

    fn pod_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .slots
            .iter()
            .map(|c| c.dir.parent().unwrap().to_path_buf())
            .collect();
        dirs.dedup();
        dirs
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .slots
            .iter()
            .flat_map(|c| ["cpu.max", "cpu.max.burst", "memory.high"].map(|f| c.dir.join(f)))
            .collect();
        files.extend(self.pod_dirs().into_iter().map(|p| p.join("cpu.max")));
        files
    }

    fn expect_container(&mut self, i: usize) {
        for f in ["cpu.max", "cpu.max.burst", "memory.high"] {
            let path = self.slots[i].dir.join(f);
            self.expected.insert(path.clone(), read(&path));
        }
    }

    fn outside(&mut self, path: PathBuf, value: String) {
        fs::write(&path, format!("{value}\n")).unwrap();
        self.expected.insert(path, value);
    }

    fn set_broken(&mut self, broken: bool) {
        // A non-empty directory where the temp file goes: the journal cannot be replaced,
        // and the last one stays readable (the stand-in for a full disk; root ignores modes).
        let tmp = self.node.state.join("journal.json.tmp");
        if broken && !self.broken {
            fs::create_dir_all(tmp.join("x")).unwrap();
        } else if !broken && self.broken {
            fs::remove_dir_all(&tmp).unwrap();
        }
        self.broken = broken;
    }

    fn harness(&self) -> Harness {
        let (cpu_min_millis, cpu_max_millis) = self.knobs.annotations;
        let control = PodControl {
            cpu_min_millis,
            cpu_max_millis,
            ..PodControl::default()
        };
        Harness::vouched(&self.node, self.knobs.policy(), false, "shop", control)
    }

    fn tick(&mut self, h: &mut Harness, hot: u8) {
        for (i, c) in self.slots.iter_mut().enumerate() {
            let quota = c.quota_millis().unwrap_or(u64::MAX);
            let demand = if hot & (1 << i) != 0 { 1500 } else { 1 };
            let used = demand.min(quota);
            c.run_for_a_second(used, demand - used);
        }
        h.tick();
    }

    /// Every file holds its expected value or one the journal on disk records as the
    /// agent's.
    fn check_covered(&mut self, step: usize) -> Result<(), TestCaseError> {
        if !self.broken || self.disk.is_none() {
            self.disk = Some(Journal::load(&self.node.state).unwrap());
        }
        for path in self.files() {
            let now = read(&path);
            prop_assert!(
                self.covers(&path, &now),
                "step {step}: {} holds {now:?}, expected {:?}, and the journal on disk does not record it as the agent's",
                path.display(),
                self.expected[&path]
            );
        }
        Ok(())
    }

    /// `value` in `path` is its expected value or one the journal on disk (as last read)
    /// records as the agent's.
    fn covers(&self, path: &Path, value: &str) -> bool {
        if self.expected[path] == value {
            return true;
        }
        let Some(disk) = self.disk.as_ref() else {
            return false;
        };
        let dir = path.parent().unwrap();
        let key = dir
            .strip_prefix(&self.node.cgroup)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        match (file.as_str(), disk.container(&key), disk.pod(&key)) {
            ("cpu.max", Some(r), _) => ours_cpu(&r.cpu_max, value),
            ("cpu.max", None, Some(p)) => ours_cpu(&p.cpu_max, value),
            ("cpu.max.burst", Some(r), _) => r.cpu_max_burst.is_some_and(|o| ours_limit(&o, value)),
            ("memory.high", Some(r), _) => r.memory_high.is_some_and(|o| ours_limit(&o, value)),
            _ => false,
        }
    }

    fn check_restored(&self, when: &str) -> Result<(), TestCaseError> {
        for path in self.files() {
            prop_assert_eq!(
                read(&path),
                self.expected[&path].clone(),
                "{}: {} is not its original nor the latest outside value",
                when,
                path.display()
            );
        }
        Ok(())
    }
}

fn ours_cpu(o: &Owned<CpuMaxValue>, now: &str) -> bool {
    let written = |v: Option<CpuMaxValue>| v.is_some_and(|v| v.0.to_string() == now);
    o.legacy || written(o.written) || written(o.pending)
}

fn ours_limit(o: &Owned<Limit>, now: &str) -> bool {
    let written = |v: Option<Limit>| v.is_some_and(|v| v.to_string() == now);
    o.legacy || written(o.written) || written(o.pending)
}

fn run_case(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = World::new();
    let mut h = w.harness();
    let mut before: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut journal_before: Option<Vec<u8>> = None;
    for (step, op) in ops.iter().enumerate() {
        match op.clone() {
            Op::Tick(hot) => {
                before = w
                    .files()
                    .into_iter()
                    .map(|p| {
                        let v = read(&p);
                        (p, v)
                    })
                    .collect();
                journal_before = fs::read(w.node.state.join("journal.json")).ok();
                w.tick(&mut h, hot);
                w.check_covered(step)?;
                continue;
            }
            Op::OutsideCpu(i, quota) => {
                let path = w.slots[i].dir.join("cpu.max");
                w.outside(path, format!("{quota} 100000"));
            }
            Op::OutsideMemory(i, bytes) => {
                let path = w.slots[i].dir.join("memory.high");
                w.outside(path, bytes.to_string());
            }
            Op::OutsidePod(p, quota) => {
                let path = w.pod_dirs()[p].join("cpu.max");
                w.outside(path, format!("{quota} 100000"));
            }
            Op::Restart(i) => {
                let old = w.slots[i].clone();
                w.node.kill(old.pid.unwrap());
                for f in ["cpu.max", "cpu.max.burst", "memory.high"] {
                    w.expected.remove(&old.dir.join(f));
                }
                fs::remove_dir_all(&old.dir).unwrap();
                let id = w.next_id;
                w.next_id += 1;
                let mut c = w
                    .node
                    .container(POD_OF[i] + 1, id, &format!("{} 100000", LIMIT_US[i]));
                w.node.process(&mut c, "envoy", &["envoy"]);
                w.slots[i] = c;
                w.expect_container(i);
            }
            Op::Reload(k) => {
                w.knobs = k;
                h.agent.set_policy(k.policy());
            }
            Op::JournalBroken(b) => w.set_broken(b),
            Op::Crash {
                before_flush,
                keep,
                restore,
            } => {
                drop(h);
                if before_flush && let Some(journal) = &journal_before {
                    fs::write(w.node.state.join("journal.json"), journal).unwrap();
                }
                w.disk = Some(Journal::load(&w.node.state).unwrap());
                for (bit, path) in w.files().into_iter().enumerate() {
                    let Some(old) = before.get(&path) else {
                        continue;
                    };
                    let now = read(&path);
                    let undo = if before_flush {
                        now != w.expected[&path]
                    } else {
                        keep & (1 << (bit % 16)) == 0 && w.covers(&path, old)
                    };
                    if now != *old && undo {
                        fs::write(&path, format!("{old}\n")).unwrap();
                    }
                }
                w.check_covered(step)?;
                if restore {
                    w.set_broken(false);
                    let mut journal = Journal::load(&w.node.state).unwrap();
                    let report = restore_all(&w.node.cgroup, &mut journal);
                    prop_assert!(report.complete(), "restore: {:?}", report.failed);
                    w.check_restored("after restore")?;
                }
                h = w.harness();
            }
        }
        before.clear();
        journal_before = None;
    }
    let out = h.agent.shutdown();
    prop_assert!(
        out.restore.as_ref().is_some_and(|r| r.failed.is_empty()),
        "exit: {:?}",
        out.restore
    );
    prop_assert!(
        out.journal_error.is_none() || w.broken,
        "journal error on exit with a writable journal: {:?}",
        out.journal_error
    );
    w.check_restored("after SIGTERM")
}

/// Cases per test: half of `SG_MODEL_CASES` (the cases are split over two tests, which the
/// test harness runs on two threads, each drawing its own sequences).
fn cases() -> u32 {
    let total: u32 = std::env::var("SG_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    total.div_ceil(2)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_agent_never_leaves_a_node_worse_than_it_found_it(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        run_case(&ops)?;
    }

    #[test]
    fn the_agent_never_leaves_a_node_worse_than_it_found_it_second_half(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        run_case(&ops)?;
    }
}
