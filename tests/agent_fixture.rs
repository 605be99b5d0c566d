//! The whole agent (discovery → sampler → controller → actuator → journal → metrics) driven
//! tick by tick against fixture trees shaped like cgroupfs and procfs. These prove the
//! wiring and the bookkeeping; the kernel's own behaviour is proven in the VM tests
//! (scripts/vm-e2e.sh).

#![allow(clippy::unwrap_used)]

mod common;

use common::harness::{Harness, TWO_CORES, proxy, run};
use common::{Container, Node};
use sidecar_governor::journal::Journal;
use sidecar_governor::policy::Policy;

fn policy() -> Policy {
    Policy::from_yaml(
        "interval: 1s\nmatch:\n  rescanInterval: 1s\ncpu:\n  min: 100m\n  max: \"2\"\n  scaleDownAfter: 3s\n",
    )
    .unwrap()
}

#[test]
fn one_idle_proxy_shrinks_to_the_floor_and_the_app_is_untouched() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let mut app = node.container(1, 2, "100000 100000");
    node.process(&mut app, "app", &["/app"]);
    let pod_before = envoy.pod_cpu_max();
    let mut h = Harness::new(&node, policy(), false);

    run(&mut h, &mut [&mut envoy, &mut app], 45, |_, _| 5);

    assert_eq!(
        envoy.cpu_max(),
        "10000 100000",
        "idle proxy at the 100m floor"
    );
    assert_eq!(app.cpu_max(), "100000 100000", "app never written");
    assert_eq!(envoy.pod_cpu_max(), pod_before, "pod cgroup never written");
    let journal = Journal::load(&node.state).unwrap();
    assert_eq!(
        journal
            .container(&envoy.rel)
            .unwrap()
            .cpu_max
            .original
            .0
            .to_string(),
        TWO_CORES
    );
    assert!(journal.container(&app.rel).is_none());
    let m = h.metrics();
    assert!(m.contains("sidecar_governor_proxies 1"), "{m}");
    assert!(
        m.contains(
            "sidecar_governor_actions_total{resource=\"cpu\",direction=\"down\",reason=\"idle\"}"
        ),
        "{m}"
    );
    assert!(m.contains(&format!("pod_uid=\"{}\"", envoy.pod_uid)), "{m}");
    assert!(
        m.contains("sidecar_governor_cpu_quota_millicores{") && m.contains("} 100.0"),
        "{m}"
    );
}

#[test]
fn idle_and_hot_proxies_side_by_side() {
    let mut node = Node::new();
    let mut idle = proxy(&mut node, 1, 1);
    let mut hot = proxy(&mut node, 2, 2);
    let mut h = Harness::new(&node, policy(), false);
    // The hot one wants 1.5 cores throughout.
    run(&mut h, &mut [&mut idle, &mut hot], 45, |i, _| {
        if i == 0 { 3 } else { 1500 }
    });
    assert_eq!(idle.quota_millis(), Some(100));
    assert!(
        hot.quota_millis().unwrap() >= 1500,
        "hot keeps what it uses: {}",
        hot.cpu_max()
    );
}

#[test]
fn a_proxy_that_turns_hot_regains_quota_within_three_ticks() {
    let (_node, mut envoy, mut h) = idle_at_the_floor(policy(), false);
    run(&mut h, &mut [&mut envoy], 3, |_, _| 1000);
    assert!(envoy.quota_millis().unwrap() >= 1000, "{}", envoy.cpu_max());
    assert!(
        h.metrics()
            .contains("direction=\"up\",reason=\"throttled\"")
    );
}

#[test]
fn many_proxies_in_both_layouts() {
    let mut node = Node::new();
    let mut containers = Vec::new();
    for n in 0..60 {
        let mut c = if n % 2 == 0 {
            node.container(n, n, TWO_CORES)
        } else {
            node.container_systemd(n, n, TWO_CORES)
        };
        node.process(
            &mut c,
            if n % 3 == 0 {
                "linkerd2-proxy"
            } else {
                "envoy"
            },
            &["proxy"],
        );
        containers.push(c);
    }
    let mut h = Harness::new(&node, policy(), false);
    let mut refs: Vec<&mut Container> = containers.iter_mut().collect();
    run(&mut h, &mut refs, 45, |_, _| 1);
    assert!(h.metrics().contains("sidecar_governor_proxies 60"));
    for c in &containers {
        assert_eq!(c.quota_millis(), Some(100), "{}", c.rel);
    }
    assert_eq!(Journal::load(&node.state).unwrap().len(), 60);
}

#[test]
fn several_processes_in_one_container_are_one_proxy() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let cgroup = format!("/{}", envoy.rel);
    node.process_with_pid(5000, &cgroup, "envoy", &["envoy"], 1);
    node.process_with_pid(
        5001,
        &cgroup,
        "pilot-agent",
        &["pilot-agent", "proxy", "sidecar"],
        1,
    );
    let mut h = Harness::new(&node, policy(), false);
    run(&mut h, &mut [&mut envoy], 2, |_, _| 1);
    assert_eq!(h.agent.governed().len(), 1);
}

#[test]
fn gateways_and_non_pod_processes_are_not_governed() {
    let mut node = Node::new();
    let gw = node.container(1, 1, TWO_CORES);
    node.process_with_pid(
        10,
        &format!("/{}", gw.rel),
        "pilot-agent",
        &["pilot-agent", "proxy", "router"],
        1,
    );
    node.process_with_pid(11, &format!("/{}", gw.rel), "envoy", &["envoy"], 10);
    std::fs::create_dir_all(node.cgroup.join("system.slice/envoy.service")).unwrap();
    node.process_with_pid(12, "/system.slice/envoy.service", "envoy", &["envoy"], 1);
    node.process_with_pid(13, "/../../escape", "envoy", &["envoy"], 1);
    let mut h = Harness::new(&node, policy(), false);
    for _ in 0..40 {
        h.tick();
    }
    assert!(h.agent.governed().is_empty());
    assert_eq!(gw.cpu_max(), TWO_CORES);
}

#[test]
fn a_vanished_process_releases_its_container() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let mut h = Harness::new(&node, policy(), false);
    run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
    assert_eq!(envoy.quota_millis(), Some(100));
    node.kill(envoy.pid.unwrap());
    h.tick();
    assert!(h.agent.governed().is_empty());
    assert_eq!(
        envoy.cpu_max(),
        TWO_CORES,
        "released container gets its original back"
    );
    assert!(Journal::load(&node.state).unwrap().is_empty());
    let m = h.metrics();
    assert!(
        !m.contains(&envoy.pod_uid),
        "series of a released proxy removed:\n{m}"
    );
    assert!(
        m.contains("direction=\"restore\",reason=\"released\""),
        "{m}"
    );
}

#[test]
fn a_vanished_cgroup_is_forgotten_quietly() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let mut h = Harness::new(&node, policy(), false);
    run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
    std::fs::remove_dir_all(&envoy.dir).unwrap();
    h.tick();
    node.kill(envoy.pid.unwrap());
    h.tick();
    assert!(h.agent.governed().is_empty());
    assert!(Journal::load(&node.state).unwrap().is_empty());
    let m = h.metrics();
    assert!(
        !m.lines()
            .any(|l| l.starts_with("sidecar_governor_errors_total{") && !l.ends_with(" 0")),
        "churn is not an error:\n{m}"
    );
    assert!(!m.contains(&envoy.pod_uid));
}

/// Sets or clears the immutable attribute of `path` with `chattr` (tmpfs supports it since
/// Linux 6.0; the suite runs as root). False when it cannot be set here.
fn immutable(path: &std::path::Path, on: bool) -> bool {
    std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn an_unwritable_cpu_max_is_counted_not_fatal() {
    let mut node = Node::new();
    let mut bad = proxy(&mut node, 1, 1);
    let mut good = proxy(&mut node, 2, 2);
    // The bad one's cpu.max cannot be opened for writing (EPERM: immutable, as EROFS on a
    // read-only mount): the agent holds it read-only, and every write, through a fresh
    // open, is refused. (An immutable file is checked at open: a descriptor opened before
    // could still write it.)
    let cpu_max = bad.dir.join("cpu.max");
    assert!(
        immutable(&cpu_max, true),
        "this test needs `chattr +i` on the fixture tree (root, tmpfs on Linux >= 6.0)"
    );
    struct Clear(std::path::PathBuf);
    impl Drop for Clear {
        fn drop(&mut self) {
            immutable(&self.0, false);
        }
    }
    let _clear = Clear(cpu_max);
    let mut h = Harness::new(&node, policy(), false);
    h.tick();
    for _ in 0..40 {
        bad.run_for_a_second(1, 0);
        run(&mut h, &mut [&mut good], 1, |_, _| 1);
    }
    assert_eq!(
        good.quota_millis(),
        Some(100),
        "the healthy proxy is still governed"
    );
    assert_eq!(bad.cpu_max(), TWO_CORES, "the refused one is unchanged");
    let m = h.metrics();
    assert!(
        m.lines()
            .find(|l| l.starts_with("sidecar_governor_errors_total{kind=\"write_denied\"}"))
            .is_some_and(|l| !l.ends_with(" 0")),
        "{m}"
    );
    assert!(m.contains("sidecar_governor_proxies 2"), "{m}");
}

#[test]
fn a_crash_keeps_the_originals_and_a_restart_restores_them() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    {
        let mut h = Harness::new(&node, policy(), false);
        run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
        assert_eq!(envoy.quota_millis(), Some(100));
        // Dropped without shutdown: a kill -9.
    }
    let mut h = Harness::new(&node, policy(), false);
    run(&mut h, &mut [&mut envoy], 5, |_, _| 1);
    assert_eq!(
        envoy.quota_millis(),
        Some(100),
        "no fight with our own earlier writes"
    );
    assert!(h.metrics().contains("sidecar_governor_conflicts_total 0"));
    let out = h.agent.shutdown();
    assert!(out.restore.unwrap().complete());
    assert_eq!(
        envoy.cpu_max(),
        TWO_CORES,
        "original from the journal, not the shrunk value"
    );
    assert!(Journal::load(&node.state).unwrap().is_empty());
}

#[test]
fn dry_run_decides_the_same_and_writes_nothing() {
    let mut node = Node::new();
    let mut live_c = proxy(&mut node, 1, 1);
    let mut node2 = Node::new();
    let mut dry_c = proxy(&mut node2, 1, 1);
    let mut live = Harness::new(&node, policy(), false);
    let mut dry = Harness::new(&node2, policy(), true);
    run(&mut live, &mut [&mut live_c], 40, |_, _| 1);
    run(&mut dry, &mut [&mut dry_c], 40, |_, _| 1);
    assert_eq!(dry_c.cpu_max(), TWO_CORES);
    assert!(Journal::load(&node2.state).unwrap().is_empty());
    let actions = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("sidecar_governor_actions_total"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(actions(&live.metrics()), actions(&dry.metrics()));
    assert!(!actions(&dry.metrics()).is_empty());
    let quota = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("sidecar_governor_cpu_quota_millicores"))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(quota(&dry.metrics()), Some("100.0".into()));
    assert!(dry.metrics().contains("sidecar_governor_dry_run 1"));
    dry.agent.shutdown();
    assert_eq!(dry_c.cpu_max(), TWO_CORES);
}

#[test]
fn an_external_change_is_adopted_not_reverted() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let mut h = Harness::new(&node, policy(), false);
    run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
    assert_eq!(envoy.quota_millis(), Some(100));
    // kubelet resizes the container to 1.5 cores.
    std::fs::write(envoy.dir.join("cpu.max"), "150000 100000\n").unwrap();
    run(&mut h, &mut [&mut envoy], 30, |_, _| 1);
    assert_eq!(
        envoy.cpu_max(),
        "150000 100000",
        "left alone during the back-off"
    );
    assert!(h.metrics().contains("sidecar_governor_conflicts_total 1"));
    // After the back-off (2m) it governs again, with the new original as the ceiling.
    run(&mut h, &mut [&mut envoy], 150, |_, _| 1);
    assert_eq!(envoy.quota_millis(), Some(100));
    h.agent.shutdown();
    assert_eq!(
        envoy.cpu_max(),
        "150000 100000",
        "restores the adopted original"
    );
}

#[test]
fn a_policy_change_applies_on_the_next_tick() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let mut h = Harness::new(&node, policy(), false);
    run(&mut h, &mut [&mut envoy], 3, |_, _| 1000);
    let mut tighter = policy();
    tighter.cpu.max_millis = 800;
    h.agent.set_policy(tighter);
    run(&mut h, &mut [&mut envoy], 1, |_, _| 1000);
    assert_eq!(envoy.quota_millis(), Some(800));
    assert!(h.metrics().contains("direction=\"down\",reason=\"policy\""));
}

#[test]
fn an_unlimited_original_is_bounded_and_restored_to_max() {
    let mut node = Node::new();
    let mut c = node.container(1, 1, "max 100000");
    node.process(&mut c, "envoy", &["envoy"]);
    let mut h = Harness::new(&node, policy(), false);
    run(&mut h, &mut [&mut c], 45, |_, _| 1);
    assert_eq!(c.quota_millis(), Some(100));
    h.agent.shutdown();
    assert_eq!(c.cpu_max(), "max 100000");
}

#[test]
fn restore_on_exit_off_leaves_limits_and_journal() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let mut p = policy();
    p.restore_on_exit = false;
    let mut h = Harness::new(&node, p, false);
    run(&mut h, &mut [&mut envoy], 40, |_, _| 1);
    assert!(h.agent.shutdown().restore.is_none());
    assert_eq!(envoy.quota_millis(), Some(100));
    assert_eq!(Journal::load(&node.state).unwrap().len(), 1);
}

#[test]
fn memory_high_is_placed_after_settling_journaled_and_restored() {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    std::fs::write(
        envoy.dir.join("memory.current"),
        format!("{}\n", 100u64 << 20),
    )
    .unwrap();
    std::fs::write(
        envoy.dir.join("memory.stat"),
        format!(
            "anon {}\nfile {}\nkernel 0\nsock 0\nshmem 0\n",
            80u64 << 20,
            20u64 << 20
        ),
    )
    .unwrap();
    let p = Policy::from_yaml(
        "interval: 1s\nmatch:\n  rescanInterval: 1s\ncpu:\n  scaleDownAfter: 3s\nmemory:\n  settleAfter: 5s\n",
    )
    .unwrap();
    let mut h = Harness::new(&node, p, false);
    run(&mut h, &mut [&mut envoy], 8, |_, _| 500);
    let high = std::fs::read_to_string(envoy.dir.join("memory.high")).unwrap();
    assert_eq!(
        high.trim(),
        (125u64 << 20).to_string(),
        "peak 100Mi + 25% headroom"
    );
    let journal = Journal::load(&node.state).unwrap();
    assert_eq!(
        journal
            .container(&envoy.rel)
            .unwrap()
            .memory_high
            .map(|m| m.original.to_string())
            .as_deref(),
        Some("max")
    );
    let m = h.metrics();
    assert!(
        m.contains("resource=\"memory\",direction=\"down\",reason=\"placement\""),
        "{m}"
    );
    assert!(m.contains("sidecar_governor_memory_high_bytes{"), "{m}");
    h.agent.shutdown();
    let high = std::fs::read_to_string(envoy.dir.join("memory.high")).unwrap();
    assert_eq!(high.trim(), "max");
    assert!(
        h.metrics()
            .contains("resource=\"memory\",direction=\"restore\"")
    );
}

/// Six identified proxies idle for 40 s: all at their 100m floor.
fn six_idle_at_the_floor() -> (Node, Vec<Container>, Harness) {
    let mut node = Node::new();
    let mut proxies: Vec<Container> = (0..6).map(|n| proxy(&mut node, n, n)).collect();
    let mut h = Harness::new(&node, policy(), false);
    {
        let mut refs: Vec<&mut Container> = proxies.iter_mut().collect();
        run(&mut h, &mut refs, 40, |_, _| 1);
    }
    assert!(proxies.iter().all(|c| c.quota_millis() == Some(100)));
    (node, proxies, h)
}

#[test]
fn a_push_storm_holds_throttled_proxies_back_one_tick_at_most() {
    let (_node, mut proxies, mut h) = six_idle_at_the_floor();
    // Every proxy spikes at once (a config push): a storm, growth held back that tick.
    {
        let mut refs: Vec<&mut Container> = proxies.iter_mut().collect();
        run(&mut h, &mut refs, 1, |_, _| 1000);
    }
    assert!(h.metrics().contains("sidecar_governor_push_storms_total 1"));
    assert!(
        proxies.iter().all(|c| c.quota_millis() == Some(100)),
        "held back at the storm's first tick"
    );
    // Throttled 90% (beyond cpu.throttledRatio): never held for longer than one tick.
    {
        let mut refs: Vec<&mut Container> = proxies.iter_mut().collect();
        run(&mut h, &mut refs, 1, |_, _| 1000);
    }
    assert!(
        proxies.iter().all(|c| c.quota_millis().unwrap() > 100),
        "{:?}",
        proxies.iter().map(|c| c.quota_millis()).collect::<Vec<_>>()
    );
}

/// Issue 9 case 2 with wake-ups, as first seen on the real kernel (`tenancy-storm`): a storm
/// recognised between ticks (the triggers of every spiking proxy fire), then the victim's
/// trigger firing again in every window, the last one just before each tick. Its wake-ups
/// were held back, and each took the sample the tick needed to see it throttled: it stayed at
/// its floor for the whole grace. Now wake-ups wait in a storm's grace (the tick decides, over
/// its whole interval), and one held between ticks counts as held at the last tick.
#[test]
fn a_storm_holds_a_woken_throttled_proxy_back_one_tick_at_most() {
    let (_node, mut proxies, mut h) = six_idle_at_the_floor();
    let ms = std::time::Duration::from_millis;
    // 300 ms after a tick all six spike at the floor and their triggers fire.
    for c in proxies.iter_mut() {
        c.run_periods(3, 30_000, 3, 270_000);
    }
    for c in &proxies {
        h.agent.wake_proxy(&c.rel, h.now + ms(300));
    }
    assert!(h.metrics().contains("sidecar_governor_push_storms_total 1"));
    let (others, victim) = proxies.split_at_mut(5);
    let victim = &mut victim[0];
    assert_eq!(victim.quota_millis(), Some(100), "its wake-up held back");
    let mut grown_at = None;
    for tick in 1..=3 {
        for c in others.iter_mut() {
            let quota = c.quota_millis().unwrap();
            c.run_for_a_second(quota.min(1000), 1000 - quota.min(1000));
        }
        // Its second at the floor, throttled in every period; its trigger fires 10 ms
        // before the tick.
        victim.run_periods(10, 100_000, 10, 900_000);
        h.agent.wake_proxy(&victim.rel, h.now + ms(990));
        h.tick();
        if victim.quota_millis().unwrap() > 100 {
            grown_at = Some(tick);
            break;
        }
    }
    assert_eq!(
        grown_at,
        Some(1),
        "held back for longer than one tick: {}",
        victim.cpu_max()
    );
}

#[test]
fn processes_named_envoy_without_a_runtime_identity_make_no_storm() {
    let mut node = Node::new();
    let mut proxies: Vec<Container> = (0..6).map(|n| proxy(&mut node, n, n)).collect();
    // By process name alone: none counts toward a storm, so all grow at once.
    let mut h = Harness::by_process_name(&node, policy());
    {
        let mut refs: Vec<&mut Container> = proxies.iter_mut().collect();
        run(&mut h, &mut refs, 40, |_, _| 1);
        run(&mut h, &mut refs, 1, |_, _| 1000);
    }
    assert!(h.metrics().contains("sidecar_governor_push_storms_total 0"));
    assert!(proxies.iter().all(|c| c.quota_millis().unwrap() > 100));
}

#[test]
fn envoy_concurrency_sets_the_floor() {
    let mut node = Node::new();
    let mut c = node.container(1, 1, TWO_CORES);
    node.process(
        &mut c,
        "envoy",
        &["envoy", "-c", "envoy.json", "--concurrency", "4"],
    );
    let mut h = Harness::new(&node, policy(), false);
    run(&mut h, &mut [&mut c], 60, |_, _| 1);
    assert_eq!(c.quota_millis(), Some(200), "4 workers x 50m");
}

#[test]
fn above_the_limit_only_when_allowed_with_the_pod_raised_and_restored() {
    for allowed in [false, true] {
        let mut node = Node::new();
        let mut c = node.container(1, 1, "50000 100000");
        node.process(&mut c, "envoy", &["envoy"]);
        std::fs::write(c.dir.parent().unwrap().join("cpu.max"), "60000 100000\n").unwrap();
        let p = Policy::from_yaml(&format!(
            "interval: 1s\nmatch:\n  rescanInterval: 1s\ncpu:\n  allowAboveLimit: {allowed}\n"
        ))
        .unwrap();
        let mut h = Harness::new(&node, p, false);
        run(&mut h, &mut [&mut c], 4, |_, _| 1500);
        if allowed {
            assert!(c.quota_millis().unwrap() >= 1500, "{}", c.cpu_max());
            let pod: u64 = c.pod_cpu_max().split(' ').next().unwrap().parse().unwrap();
            let quota: u64 = c.cpu_max().split(' ').next().unwrap().parse().unwrap();
            assert_eq!(pod, 60_000 + quota - 50_000, "pod raised by the excess");
        } else {
            assert_eq!(c.cpu_max(), "50000 100000", "capped at its own limit");
            assert_eq!(c.pod_cpu_max(), "60000 100000");
        }
        h.agent.shutdown();
        assert_eq!(c.cpu_max(), "50000 100000");
        assert_eq!(c.pod_cpu_max(), "60000 100000", "pod restored");
    }
}

#[test]
fn inside_a_cgroup_namespace_paths_are_resolved_from_its_root() {
    // The agent runs in a pod of its own with a private cgroup namespace (the cgroup v2
    // default): /proc/PID/cgroup of a sidecar in another pod of the same QoS class reads
    // `/../../pod<uid>/<id>`, with no kubepods component to re-anchor at.
    let mut node = Node::new();
    let agent = node.container(9, 9, "50000 100000");
    std::fs::write(agent.dir.join("cgroup.procs"), "4242\n").unwrap();
    node.process_with_pid(
        4242,
        "/",
        "sidecar-governo",
        &["sidecar-governor", "run"],
        1,
    );
    std::os::unix::fs::symlink("4242", node.proc.join("self")).unwrap();
    node.process_with_pid(1, "/../../../../init.scope", "systemd", &["/sbin/init"], 0);
    let mut c = node.container(1, 1, TWO_CORES);
    let rel = format!("/../../pod{}/{}", c.pod_uid, c.id);
    node.process_with_pid(5000, &rel, "envoy", &["envoy"], 1);
    c.pid = Some(5000);
    let mut h = Harness::new(&node, policy(), false);
    run(&mut h, &mut [&mut c], 45, |_, _| 1);
    assert_eq!(h.agent.governed(), vec![c.rel.clone()]);
    assert_eq!(c.quota_millis(), Some(100));
    assert_eq!(
        agent.cpu_max(),
        "50000 100000",
        "the agent's own cgroup is not a proxy"
    );
}

/// One proxy idle for 45 s under `policy`: at its 100m floor (planned, in a dry run).
fn idle_at_the_floor(policy: Policy, dry_run: bool) -> (Node, common::Container, Harness) {
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let mut h = Harness::new(&node, policy, dry_run);
    run(&mut h, &mut [&mut envoy], 45, |_, _| 2);
    if !dry_run {
        assert_eq!(envoy.quota_millis(), Some(100));
    }
    (node, envoy, h)
}

/// The wake-up path (a proxy's stall trigger fired) on a fixture tree: the trigger itself is
/// the kernel's and is proven in the VM (`wake-stall`); here, what a wake-up does.
#[test]
fn a_woken_proxy_grows_between_ticks_and_is_journaled() {
    let (node, mut envoy, mut h) = idle_at_the_floor(policy(), false);
    let ms = std::time::Duration::from_millis;
    // 300 ms after the tick: three quiet periods, then one throttled at the floor. The span
    // cannot tell a blip from load: one step, and a second look.
    envoy.run_periods(4, 10_000, 1, 90_000);
    h.agent.wake_proxy(&envoy.rel, h.now + ms(300));
    assert_eq!(
        envoy.quota_millis(),
        Some(200),
        "one step: {}",
        envoy.cpu_max()
    );
    let journal = Journal::load(&node.state).unwrap();
    let record = journal.container(&envoy.rel).unwrap();
    assert_eq!(record.cpu_max.original.0.to_string(), TWO_CORES);
    assert!(record.cpu_max.touched());
    // The second look, a period later: its whole 200m used and throttled: lasting load.
    envoy.run_periods(1, 20_000, 1, 80_000);
    assert_eq!(
        h.agent.look_again_due(h.now + ms(350)),
        Some(h.now + ms(400))
    );
    assert_eq!(envoy.quota_millis(), Some(200), "not due yet");
    assert_eq!(h.agent.look_again_due(h.now + ms(400)), None);
    // The busy level: the 2-core original, decayed a little over 45 s of quiet.
    let q = envoy.quota_millis().unwrap();
    assert!((1700..2000).contains(&q), "busy level: {}", envoy.cpu_max());
    let m = h.metrics();
    assert!(m.contains("direction=\"up\",reason=\"stall\"} 2"), "{m}");
    assert!(
        m.contains("sidecar_governor_wakeups_total{outcome=\"raised\"} 2"),
        "{m}"
    );
    // A wake-up with nothing stalled does nothing, and the tick goes on from there.
    h.agent.wake_proxy(&envoy.rel, h.now + ms(600));
    assert_eq!(envoy.quota_millis(), Some(q));
    assert!(
        h.metrics()
            .contains("sidecar_governor_wakeups_total{outcome=\"none\"} 1")
    );
    // The restore still brings back the original.
    let out = h.agent.shutdown();
    assert!(out.clean(), "{out:?}");
    assert_eq!(envoy.cpu_max(), TWO_CORES);
}

#[test]
fn wake_ups_write_nothing_in_dry_run_or_when_off() {
    for (dry_run, yaml) in [(true, ""), (false, "  wakeOnStall:\n    enabled: false\n")] {
        let text =
            format!("interval: 1s\ncpu:\n  min: 100m\n  max: \"2\"\n  scaleDownAfter: 3s\n{yaml}");
        let (_node, mut envoy, mut h) =
            idle_at_the_floor(Policy::from_yaml(&text).unwrap(), dry_run);
        let before = envoy.cpu_max();
        envoy.run_periods(1, 10_000, 1, 90_000);
        h.agent
            .wake_proxy(&envoy.rel, h.now + std::time::Duration::from_millis(300));
        assert_eq!(
            envoy.cpu_max(),
            before,
            "dry run {dry_run}, policy {yaml:?}"
        );
        assert!(
            h.metrics()
                .contains("sidecar_governor_wakeups_total{outcome=\"raised\"} 0")
        );
    }
}

#[test]
fn linkerd_workers_come_from_its_environment() {
    use sidecar_governor::discovery::Discovery;
    use sidecar_governor::discovery::procfs::ProcfsDiscovery;
    let mut node = Node::new();
    let mut c = node.container(1, 1, TWO_CORES);
    let pid = node.process(
        &mut c,
        "linkerd2-proxy",
        &["/usr/lib/linkerd/linkerd2-proxy"],
    );
    std::fs::write(
        node.proc.join(pid.to_string()).join("environ"),
        b"LINKERD2_PROXY_LOG=warn\0LINKERD2_PROXY_CORES=3\0",
    )
    .unwrap();
    let envoy = proxy(&mut node, 2, 2);
    let found = ProcfsDiscovery::new(&node.proc, &node.cgroup)
        .discover(&policy().matching)
        .unwrap();
    let workers = |rel: &str| found.iter().find(|p| p.key == rel).unwrap().concurrency;
    assert_eq!(workers(&c.rel), Some(3));
    // Envoy's come from its command line.
    assert_eq!(workers(&envoy.rel), Some(2));
}

/// Events offered by the agent, kept for the test.
#[derive(Debug, Default)]
struct Recorded(std::sync::Mutex<Vec<sidecar_governor::events::PodEvent>>);

impl sidecar_governor::events::EventSink for Recorded {
    fn emit(&self, event: sidecar_governor::events::PodEvent) {
        self.0.lock().unwrap().push(event);
    }
}

/// The leak shape (issue 11): anon grows a MiB a second over a page cache the probes would
/// drop. Found over the growth window (30 s here, sampled every second): one Warning Event, the metric, and `memory.high` no
/// longer probed down; once the growth stops and the window forgets it, probing resumes.
#[test]
fn steady_growth_of_unreclaimable_memory_is_told_and_not_squeezed() {
    use sidecar_governor::events::EventReason;
    const MI: u64 = 1 << 20;
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let p = Policy::from_yaml(
        "interval: 1s\nmatch:\n  rescanInterval: 1s\nmemory:\n  settleAfter: 3s\n  scaleDownAfter: 3s\n  probeInterval: 1s\n  stepDown: 0.05\n  growth:\n    window: 30s\n    minGrowth: 8Mi\n",
    )
    .unwrap();
    let mut h = Harness::new(&node, p, false);
    let sink = std::sync::Arc::new(Recorded::default());
    h.agent.set_events(sink.clone());
    let high = |c: &Container| {
        std::fs::read_to_string(c.dir.join("memory.high"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .ok()
    };
    let growing = |h: &Harness| {
        h.metrics()
            .lines()
            .find(|l| l.starts_with("sidecar_governor_memory_growing{"))
            .map(|l| l.ends_with(" 1"))
    };
    let mut anon = 40 * MI;
    let mut second = |envoy: &mut Container, h: &mut Harness, grow: u64| {
        anon += grow;
        let file = 200 * MI;
        std::fs::write(
            envoy.dir.join("memory.current"),
            format!("{}\n", anon + file),
        )
        .unwrap();
        std::fs::write(
            envoy.dir.join("memory.stat"),
            format!("anon {anon}\nfile {file}\nkernel 0\nsock 0\nshmem 0\n"),
        )
        .unwrap();
        run(h, &mut [&mut *envoy], 1, |_, _| 5);
    };
    let mut found_at = None;
    let mut highs = Vec::new();
    for t in 0..40 {
        second(&mut envoy, &mut h, MI);
        highs.push(high(&envoy));
        if found_at.is_none() && growing(&h) == Some(true) {
            found_at = Some(t);
        }
    }
    let at = found_at.expect("steady growth found");
    assert!((29..=32).contains(&at), "a whole window first: {at}");
    let events = sink.0.lock().unwrap().clone();
    let told: Vec<_> = events
        .iter()
        .filter(|e| e.reason == EventReason::MemoryGrowing)
        .collect();
    assert_eq!(told.len(), 1, "{events:?}");
    assert!(
        told[0].message.contains("grew steadily"),
        "{}",
        told[0].message
    );
    assert!(
        h.metrics()
            .contains("sidecar_governor_memory_growth_found_total 1"),
        "{}",
        h.metrics()
    );
    // Probed down before it was found (200 MiB of cache to drop), never after.
    let before: Vec<_> = highs[..at].iter().flatten().collect();
    assert!(
        before.windows(2).any(|w| w[1] < w[0]),
        "probes ran before: {highs:?}"
    );
    let after: Vec<_> = highs[at + 1..].iter().flatten().collect();
    assert!(
        after.windows(2).all(|w| w[1] >= w[0]),
        "not squeezed after: {highs:?}"
    );
    // The growth stops: once the window holds under half of minGrowth it has ended, and
    // probing resumes.
    let held = high(&envoy).unwrap();
    for _ in 0..40 {
        second(&mut envoy, &mut h, 0);
    }
    assert_eq!(growing(&h), Some(false));
    assert!(high(&envoy).unwrap() < held, "probed down again");
    let out = h.agent.shutdown();
    assert!(out.clean(), "{out:?}");
    assert_eq!(high(&envoy), None, "memory.high back to max");
}

/// kubelet's Memory QoS (issue 11) writes `memory.high` into the container when it creates
/// it: requests 64Mi, limit 256Mi, throttling factor 0.9 give 236.8Mi (page-rounded). The
/// agent takes it as the original and the ceiling: it never raises above it, even when use
/// presses on it; a later kubelet write (an in-place resize) is adopted, not fought, and is
/// what SIGTERM leaves.
#[test]
fn kubelet_memory_qos_is_the_original_and_the_ceiling() {
    const MI: u64 = 1 << 20;
    let kubelet = (64 * MI + (192 * MI * 9) / 10) / 4096 * 4096;
    let mut node = Node::new();
    let mut envoy = proxy(&mut node, 1, 1);
    let write = |c: &Container, file: &str, v: String| {
        std::fs::write(c.dir.join(file), format!("{v}\n")).unwrap();
    };
    let read = |c: &Container| std::fs::read_to_string(c.dir.join("memory.high")).unwrap();
    write(&envoy, "memory.high", kubelet.to_string());
    write(&envoy, "memory.max", (256 * MI).to_string());
    let p = Policy::from_yaml(
        "interval: 1s\nmatch:\n  rescanInterval: 1s\ncpu:\n  conflictBackoff: 2s\nmemory:\n  settleAfter: 3s\n",
    )
    .unwrap();
    let mut h = Harness::new(&node, p, false);
    // Quiet at 100Mi (80 anon): placed at peak + 25% = 125Mi, under kubelet's value.
    let use_ = |c: &Container, anon: u64, file: u64| {
        write(c, "memory.current", (anon + file).to_string());
        write(
            c,
            "memory.stat",
            format!("anon {anon}\nfile {file}\nkernel 0\nsock 0\nshmem 0"),
        );
    };
    use_(&envoy, 80 * MI, 20 * MI);
    run(&mut h, &mut [&mut envoy], 6, |_, _| 5);
    assert_eq!(read(&envoy).trim(), (125 * MI).to_string(), "placed below");
    let journal = Journal::load(&node.state).unwrap();
    let record = journal.container(&envoy.rel).unwrap();
    assert_eq!(
        record.memory_high.unwrap().original.to_string(),
        kubelet.to_string(),
        "kubelet's value is the original"
    );
    // Anon grows to 230Mi, past kubelet's line minus the margin: raised, to kubelet's
    // value at most.
    for anon in [150, 190, 220, 230] {
        use_(&envoy, anon * MI, 5 * MI);
        run(&mut h, &mut [&mut envoy], 2, |_, _| 5);
        let high: u64 = read(&envoy).trim().parse().unwrap();
        assert!(high <= kubelet, "{high} above kubelet's {kubelet}");
    }
    assert_eq!(
        read(&envoy).trim(),
        kubelet.to_string(),
        "raised to the ceiling"
    );
    // kubelet resizes the pod: memory.high 300Mi. Adopted (a conflict), never written over.
    let resized = 300 * MI;
    write(&envoy, "memory.high", resized.to_string());
    use_(&envoy, 100 * MI, 5 * MI);
    run(&mut h, &mut [&mut envoy], 1, |_, _| 5);
    assert!(
        h.metrics().contains("sidecar_governor_conflicts_total 1"),
        "{}",
        h.metrics()
    );
    // Nothing of the agent's is left to restore there: the record holds kubelet's value or
    // is gone.
    let journal = Journal::load(&node.state).unwrap();
    if let Some(owned) = journal.container(&envoy.rel).and_then(|r| r.memory_high) {
        assert_eq!(owned.original.to_string(), resized.to_string());
        assert!(!owned.touched());
    }
    run(&mut h, &mut [&mut envoy], 1, |_, _| 5);
    assert_eq!(read(&envoy).trim(), resized.to_string(), "backed off");
    let out = h.agent.shutdown();
    assert!(out.clean(), "{out:?}");
    assert_eq!(read(&envoy).trim(), resized.to_string(), "kubelet's latest");
}

/// Istio ambient's ztunnel (issue 11) with `processNames` including it: the node's proxy, in
/// `istio-system` (a namespace no pod author chooses). Protected: idle, it keeps its own 1-core
/// limit and its memory is left alone; hot, it grows above the limit where the policy grants
/// that for its namespace (the pod raised first), and comes back down to its limit, never
/// below. The same process in a tenant's namespace, or without a CPU limit, is not governed.
#[test]
fn ztunnel_is_a_protected_grow_only_node_proxy_in_its_namespace_only() {
    use sidecar_governor::policy::PodControl;
    const ONE_CORE: &str = "100000 100000";
    let text = "interval: 1s\nmatch:\n  rescanInterval: 1s\n  processNames: [envoy, ztunnel]\ncpu:\n  min: 100m\n  max: \"3\"\n  scaleDownAfter: 3s\noverrides:\n  - namespace: istio-system\n    cpu: {allowAboveLimit: true}\n";
    let ztunnel = |node: &mut Node, cpu_max: &str| {
        let mut c = node.container(1, 1, cpu_max);
        std::fs::write(c.dir.parent().unwrap().join("cpu.max"), "max 100000\n").unwrap();
        node.process(
            &mut c,
            "ztunnel",
            &["/usr/local/bin/ztunnel", "proxy", "ztunnel"],
        );
        c
    };
    let harness = |node: &Node, namespace: &str| {
        Harness::vouched(
            node,
            Policy::from_yaml(text).unwrap(),
            false,
            namespace,
            PodControl::default(),
        )
    };

    let mut node = Node::new();
    let mut zt = ztunnel(&mut node, ONE_CORE);
    let mut h = harness(&node, "istio-system");
    run(&mut h, &mut [&mut zt], 20, |_, _| 5);
    assert_eq!(zt.cpu_max(), ONE_CORE, "idle: never below its own limit");
    let high = std::fs::read_to_string(zt.dir.join("memory.high")).unwrap();
    assert_eq!(high.trim(), "max", "memory left alone");
    assert!(
        h.metrics().contains("sidecar_governor_proxies 1"),
        "{}",
        h.metrics()
    );
    // All the node's traffic at once: 2.5 cores of demand. Raised above its limit, the pod
    // (unlimited here) needs nothing.
    run(&mut h, &mut [&mut zt], 4, |_, _| 2500);
    let hot = zt.quota_millis().unwrap();
    assert!(hot > 1000, "grown above its limit: {}", zt.cpu_max());
    // Idle again: back to its limit, not below.
    run(&mut h, &mut [&mut zt], 20, |_, _| 5);
    assert_eq!(zt.cpu_max(), ONE_CORE);
    assert!(h.agent.shutdown().clean());
    assert_eq!(zt.cpu_max(), ONE_CORE);

    // A tenant's process named ztunnel in its own namespace: not governed (a regular sidecar
    // there would be shrunk when idle).
    for (namespace, cpu_max) in [("shop", ONE_CORE), ("istio-system", "max 100000")] {
        let mut node = Node::new();
        let mut zt = ztunnel(&mut node, cpu_max);
        let mut h = harness(&node, namespace);
        run(&mut h, &mut [&mut zt], 20, |_, _| 5);
        assert_eq!(zt.cpu_max(), cpu_max, "{namespace}: untouched");
        assert!(
            h.metrics().contains("sidecar_governor_proxies 0"),
            "{namespace} {cpu_max}: {}",
            h.metrics()
        );
        assert!(Journal::load(&node.state).unwrap().is_empty());
    }
}
