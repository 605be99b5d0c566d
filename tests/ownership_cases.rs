//! Issue 8's numbered cases, each on a fixture tree with the whole agent: the situations in
//! which an agent without an ownership model left a node worse than it found it (a pod stuck
//! raised, its own value taken for an original, nothing restored). The same cases run on the
//! real kernel in `scripts/vm/scenarios/own-*.sh`.

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::harness::{Harness, TWO_CORES, proxy, run};
use common::{Container, Node};
use sidecar_governor::journal::Journal;
use sidecar_governor::policy::Policy;

fn policy(extra: &str) -> Policy {
    Policy::from_yaml(&format!(
        "interval: 1s\nmatch:\n  rescanInterval: 1s\ncpu:\n  min: 100m\n  max: \"2\"\n  scaleDownAfter: 3s\n{extra}"
    ))
    .unwrap()
}

fn above_limit() -> Policy {
    policy("  allowAboveLimit: true\n")
}

fn quota_us(text: &str) -> u64 {
    text.split(' ').next().unwrap().parse().unwrap()
}

/// A sidecar with a 500m limit in a pod whose own quota is `pod_cpu_max`.
fn limited_sidecar(node: &mut Node, pod: usize, n: usize, pod_cpu_max: &str) -> Container {
    let mut c = node.container(pod, n, "50000 100000");
    fs::write(
        c.dir.parent().unwrap().join("cpu.max"),
        format!("{pod_cpu_max}\n"),
    )
    .unwrap();
    node.process(&mut c, "envoy", &["envoy"]);
    c
}

fn conflicts(h: &Harness) -> u64 {
    let m = h.metrics();
    m.lines()
        .find_map(|l| l.strip_prefix("sidecar_governor_conflicts_total "))
        .unwrap()
        .parse()
        .unwrap()
}

/// Case 1: a hot sidecar restarted by the kubelet (new container cgroup in the same pod)
/// while its pod is raised: the pod is given back when the old container goes, the new one
/// never journals the raised value as the pod's original, and exit leaves the pod exact.
#[test]
fn case_1_a_restarted_sidecar_never_ratchets_its_pod_up() {
    let mut node = Node::new();
    let mut c = limited_sidecar(&mut node, 1, 1, "60000 100000");
    let mut h = Harness::new(&node, above_limit(), false);
    let ceiling = 60_000 + 200_000 - 50_000;
    for restart in 2..5 {
        run(&mut h, &mut [&mut c], 4, |_, _| 1500);
        assert!(quota_us(&c.cpu_max()) > 50_000, "raised above its limit");
        assert!(quota_us(&c.pod_cpu_max()) <= ceiling, "{}", c.pod_cpu_max());
        assert!(quota_us(&c.pod_cpu_max()) > 60_000, "pod raised with it");
        // The kubelet restarts the container: the old cgroup goes, a new one comes.
        node.kill(c.pid.unwrap());
        fs::remove_dir_all(&c.dir).unwrap();
        c = node.container(1, restart, "50000 100000");
        node.process(&mut c, "envoy", &["envoy"]);
        h.tick();
        assert_eq!(
            c.pod_cpu_max(),
            "60000 100000",
            "restart {restart}: the pod is given back when its last holder goes"
        );
    }
    run(&mut h, &mut [&mut c], 4, |_, _| 1500);
    assert!(quota_us(&c.pod_cpu_max()) <= ceiling);
    assert!(h.agent.shutdown().clean());
    assert_eq!(c.cpu_max(), "50000 100000");
    assert_eq!(c.pod_cpu_max(), "60000 100000");
    assert!(Journal::load(&node.state).unwrap().is_empty());
}

/// Case 2: two governed proxies in one pod share its record: the pod's original is what it
/// was before either raised it.
#[test]
fn case_2_two_proxies_in_one_pod_share_its_original() {
    let mut node = Node::new();
    let mut a = limited_sidecar(&mut node, 1, 1, "100000 100000");
    let mut b = node.container(1, 2, "50000 100000");
    node.process(&mut b, "linkerd2-proxy", &["linkerd2-proxy"]);
    let mut h = Harness::new(&node, above_limit(), false);
    run(&mut h, &mut [&mut a, &mut b], 6, |_, _| 1500);
    let (qa, qb) = (quota_us(&a.cpu_max()), quota_us(&b.cpu_max()));
    assert!(qa > 50_000 && qb > 50_000, "{qa} {qb}");
    assert_eq!(
        quota_us(&a.pod_cpu_max()),
        100_000 + (qa - 50_000) + (qb - 50_000),
        "the pod holds both excesses"
    );
    // One goes idle and shrinks within its limit: the pod comes down by its excess only.
    run(&mut h, &mut [&mut a, &mut b], 40, |i, _| {
        if i == 0 { 1500 } else { 1 }
    });
    let qa = quota_us(&a.cpu_max());
    assert!(quota_us(&b.cpu_max()) <= 50_000);
    assert_eq!(quota_us(&a.pod_cpu_max()), 100_000 + (qa - 50_000));
    assert!(h.agent.shutdown().clean());
    assert_eq!(a.cpu_max(), "50000 100000");
    assert_eq!(b.cpu_max(), "50000 100000");
    assert_eq!(a.pod_cpu_max(), "100000 100000", "the true original");
}

/// Case 3: an in-place resize of the pod while it is raised is someone else's value: it is
/// adopted as the pod's original and left in place on exit.
#[test]
fn case_3_a_pod_resize_is_adopted_not_restored_over() {
    let mut node = Node::new();
    let mut c = limited_sidecar(&mut node, 1, 1, "60000 100000");
    let mut h = Harness::new(&node, above_limit(), false);
    run(&mut h, &mut [&mut c], 4, |_, _| 1500);
    assert!(quota_us(&c.pod_cpu_max()) > 60_000);
    fs::write(c.dir.parent().unwrap().join("cpu.max"), "400000 100000\n").unwrap();
    run(&mut h, &mut [&mut c], 3, |_, _| 1500);
    assert_eq!(conflicts(&h), 1);
    assert_eq!(c.pod_cpu_max(), "400000 100000", "not fought");
    assert!(h.agent.shutdown().clean());
    assert_eq!(c.pod_cpu_max(), "400000 100000", "the resized value stays");
    assert_eq!(c.cpu_max(), "50000 100000");
}

/// Case 4: switching to dry run puts back what the agent changed, then only plans; exit in
/// dry run restores too.
#[test]
fn case_4_dry_run_puts_back_what_the_agent_changed() {
    let with_memory = "memory:\n  settleAfter: 5s\n";
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let mut h = Harness::new(&node, policy(with_memory), false);
    run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
    assert_eq!(envoy.quota_millis(), Some(100));
    let high_file = envoy.dir.join("memory.high");
    let high = || fs::read_to_string(&high_file).unwrap();
    assert_ne!(high().trim(), "max", "memory.high placed");
    let mut dry = policy(with_memory);
    dry.dry_run = true;
    h.agent.set_policy(dry);
    h.tick();
    assert_eq!(envoy.cpu_max(), TWO_CORES, "put back at once");
    assert_eq!(high(), "max");
    let m = h.metrics();
    assert!(
        m.contains("resource=\"cpu\",direction=\"restore\",reason=\"dry_run\""),
        "{m}"
    );
    run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
    assert_eq!(envoy.cpu_max(), TWO_CORES, "dry run plans only");
    assert!(
        h.metrics()
            .contains("sidecar_governor_cpu_quota_millicores{")
    );
    // Back on: governs again from the originals.
    h.agent.set_policy(policy(with_memory));
    run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
    assert_eq!(envoy.quota_millis(), Some(100));
    // A switch to dry run and an exit before the next tick: exit restores in dry run.
    let mut dry = policy(with_memory);
    dry.dry_run = true;
    h.agent.set_policy(dry);
    assert!(h.agent.shutdown().clean());
    assert_eq!(envoy.cpu_max(), TWO_CORES);
    assert_eq!(high(), "max");
}

/// Case 4, after a crash: an agent started in dry run over a journal of an earlier run puts
/// the originals back on its first tick.
#[test]
fn case_4_a_dry_run_start_restores_an_earlier_runs_values() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    {
        let mut h = Harness::new(&node, policy(""), false);
        run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
        assert_eq!(envoy.quota_millis(), Some(100));
    }
    let mut h = Harness::new(&node, policy(""), true);
    h.tick();
    assert_eq!(envoy.cpu_max(), TWO_CORES);
    assert!(Journal::load(&node.state).unwrap().is_empty());
}

/// Case 5: a start refused for an invalid policy puts back every journaled original first.
#[test]
fn case_5_a_start_on_an_invalid_policy_restores_then_fails() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    {
        let mut h = Harness::new(&node, policy("memory:\n  settleAfter: 5s\n"), false);
        run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
        assert_eq!(envoy.quota_millis(), Some(100));
    }
    assert_ne!(
        fs::read_to_string(envoy.dir.join("memory.high"))
            .unwrap()
            .trim(),
        "max"
    );
    let config = node.dir.path().join("policy.yaml");
    fs::write(&config, "cpu:\n  min: banana\n").unwrap();
    let out = node
        .agent_command(&config)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("invalid policy"), "{stderr}");
    assert!(stderr.contains("cpu.min"), "names the field: {stderr}");
    assert_eq!(envoy.cpu_max(), TWO_CORES, "{stderr}");
    assert_eq!(
        fs::read_to_string(envoy.dir.join("memory.high")).unwrap(),
        "max"
    );
    assert!(Journal::load(&node.state).unwrap().is_empty());
}

/// Case 6: a change made while the agent was down is someone else's, not the agent's.
#[test]
fn case_6_a_change_while_down_is_adopted_as_the_original() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    {
        let mut h = Harness::new(&node, policy(""), false);
        run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
        assert_eq!(envoy.quota_millis(), Some(100));
    }
    fs::write(envoy.dir.join("cpu.max"), "300000 100000\n").unwrap();
    let mut h = Harness::new(&node, policy(""), false);
    run(&mut h, &mut [&mut envoy], 10, |_, _| 1);
    assert_eq!(conflicts(&h), 1);
    assert_eq!(envoy.cpu_max(), "300000 100000", "backing off");
    assert!(h.agent.shutdown().clean());
    assert_eq!(envoy.cpu_max(), "300000 100000", "not the older original");
}

/// Case 7: a `memory.high` write whose outcome is unknown (timed out, or a crash between the
/// journal and the write) is the agent's own either way: never an outside change.
#[test]
fn case_7_a_memory_write_of_unknown_outcome_is_never_an_outside_change() {
    let page = sidecar_governor::actuator::page_size();
    let (a, b) = (40 * (1 << 20) / page * page, 30 * (1 << 20) / page * page);
    for holds in [a, b] {
        let mut node = Node::new();
        let mut envoy = proxy(&mut node, 1, 1);
        // What the journal says after a write of `b` that did not answer in time.
        fs::create_dir_all(&node.state).unwrap();
        fs::write(
            node.state.join("journal.json"),
            format!(
                r#"{{"version":2,"containers":{{"{}":{{"podUid":"{}","containerId":"{}","cpuMax":{{"original":"200000 100000"}},"memoryHigh":{{"original":"max","written":{a},"pending":{b}}},"recordedAt":1}}}},"pods":{{}}}}"#,
                envoy.rel, envoy.pod_uid, envoy.id
            ),
        )
        .unwrap();
        fs::write(envoy.dir.join("memory.high"), format!("{holds}\n")).unwrap();
        let mut h = Harness::new(&node, policy(""), false);
        run(&mut h, &mut [&mut envoy], 5, |_, _| 1);
        assert_eq!(conflicts(&h), 0, "holding {holds}");
        assert!(h.agent.shutdown().clean());
        assert_eq!(
            fs::read_to_string(envoy.dir.join("memory.high")).unwrap(),
            "max",
            "the true original"
        );
    }
}

/// Case 8: with the journal unwritable, nothing is written (not even after an adoption),
/// `/readyz` says why, and writes resume once it can be written; exit reports the failure.
#[test]
fn case_8_no_writes_while_the_journal_cannot_be_written() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let mut h = Harness::new(&node, policy(""), false);
    run(&mut h, &mut [&mut envoy], 8, |_, _| 1);
    let shrinking = envoy.cpu_max();
    assert_ne!(shrinking, TWO_CORES, "shrinking");
    // The journal's path taken (the stand-in for a full disk: root ignores permissions).
    let journal = node.state.join("journal.json");
    fs::remove_file(&journal).unwrap();
    fs::create_dir(&journal).unwrap();
    fs::write(journal.join("x"), "").unwrap();
    run(&mut h, &mut [&mut envoy], 10, |_, _| 1);
    assert_eq!(
        envoy.cpu_max(),
        shrinking,
        "no write without a durable record"
    );
    let reason = h.shared.degraded().expect("not ready");
    assert!(reason.contains("journal"), "{reason}");
    assert!(!node.state.join("journal.json.tmp").exists());
    // An outside change while it is unwritable: adopted in memory, still no writes.
    fs::write(envoy.dir.join("cpu.max"), "150000 100000\n").unwrap();
    run(&mut h, &mut [&mut envoy], 150, |_, _| 1);
    assert_eq!(envoy.cpu_max(), "150000 100000");
    // Space returns: the record is written, then governing resumes.
    fs::remove_dir_all(&journal).unwrap();
    h.tick();
    assert!(h.shared.degraded().is_none());
    let on_disk = Journal::load(&node.state).unwrap();
    let r = on_disk.container(&envoy.rel).unwrap();
    assert_eq!(r.cpu_max.original.0.to_string(), "150000 100000");
    run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
    assert_eq!(envoy.quota_millis(), Some(100));
    // A journal that cannot be updated after the restore makes exit unclean.
    fs::remove_file(&journal).unwrap();
    fs::create_dir(&journal).unwrap();
    fs::write(journal.join("x"), "").unwrap();
    let out = h.agent.shutdown();
    assert_eq!(envoy.cpu_max(), "150000 100000", "restored all the same");
    assert!(out.journal_error.is_some());
    assert!(!out.clean());
}

/// Case 8: a `cpu.max.burst` that cannot be read stops the write; it is not swallowed.
#[test]
fn case_8_a_burst_read_error_stops_the_write() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let mut h = Harness::new(&node, policy(""), false);
    h.tick();
    // What the agent's held descriptor reads is no burst (the file itself is kept: a held
    // descriptor would go on reading a file replaced under it, as cgroupfs never does).
    fs::write(envoy.dir.join("cpu.max.burst"), "banana\n").unwrap();
    run(&mut h, &mut [&mut envoy], 10, |_, _| 1);
    assert_eq!(envoy.cpu_max(), TWO_CORES);
    let m = h.metrics();
    assert!(
        m.lines()
            .find(|l| l.starts_with("sidecar_governor_errors_total{kind=\"parse\"}"))
            .is_some_and(|l| !l.ends_with(" 0")),
        "{m}"
    );
}

/// Case 9: many new proxies in one tick cost one journal write, not one each.
#[test]
fn case_9_one_journal_write_per_tick_whatever_the_number_of_proxies() {
    let mut node = Node::new();
    let mut proxies: Vec<Container> = (0..200).map(|i| proxy(&mut node, i, i)).collect();
    let mut refs: Vec<&mut Container> = proxies.iter_mut().collect();
    let mut h = Harness::new(&node, policy(""), false);
    let ticks = 12;
    run(&mut h, &mut refs, ticks, |_, _| 1);
    assert!(
        refs.iter().all(|c| c.quota_millis() < Some(2000)),
        "all shrinking"
    );
    let stats = h.agent.journal().stats();
    assert!(stats.writes <= ticks as u64, "{stats:?}");
    assert_eq!(Journal::load(&node.state).unwrap().len(), 200);
}

/// Case 10: a restart after a proxy was journaled but before `memory.high` was placed
/// places it after settling, instead of treating the limit as placed and creeping down.
#[test]
fn case_10_a_restart_before_placement_still_places_memory_high() {
    let settle = "memory:\n  settleAfter: 20s\n";
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let high_file = envoy.dir.join("memory.high");
    let high = || fs::read_to_string(&high_file).unwrap();
    {
        let mut h = Harness::new(&node, policy(settle), false);
        run(&mut h, &mut [&mut envoy], 10, |_, _| 1);
        assert!(envoy.quota_millis() < Some(2000), "CPU written: journaled");
        assert_eq!(high(), "max\n", "memory.high not placed yet");
    }
    let mut h = Harness::new(&node, policy(settle), false);
    run(&mut h, &mut [&mut envoy], 25, |_, _| 1);
    let placed: u64 = high().trim().parse().unwrap();
    assert!(
        placed <= 64 << 20,
        "placed near use, not at the limit: {placed}"
    );
}
