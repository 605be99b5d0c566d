//! Issue 9's numbered cases on a fixture tree with the whole agent: nothing a pod's author
//! controls (process names, annotations) raises a limit or steers the agent; only the
//! namespace, which the runtime vouches for, is not theirs. The real-runtime versions run in
//! the `cri` VM (`scripts/vm/scenarios/tenancy-*.sh`).

#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::harness::{Harness, run};
use common::{Container, Node};
use sidecar_governor::policy::{PodControl, Policy};

fn policy(extra: &str) -> Policy {
    Policy::from_yaml(&format!(
        "interval: 1s\nmatch:\n  rescanInterval: 1s\ncpu:\n  min: 100m\n  max: \"2\"\n  scaleDownAfter: 3s\n  allowAboveLimit: true\n{extra}"
    ))
    .unwrap()
}

/// A container with a `limit` cpu.max in a pod of the same quota, running `comm`.
fn container(node: &mut Node, pod: usize, limit: &str, comm: &str) -> Container {
    let mut c = node.container(pod, pod, limit);
    fs::write(
        c.dir.parent().unwrap().join("cpu.max"),
        format!("{limit}\n"),
    )
    .unwrap();
    node.process(&mut c, comm, &[comm]);
    c
}

fn quota_us(text: &str) -> u64 {
    text.split(' ').next().unwrap().parse().unwrap()
}

fn metric(h: &Harness, name: &str) -> String {
    h.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
        .unwrap_or_else(|| panic!("no {name}"))
}

/// Case 1a: an app whose process is named `envoy`, found by its process name alone, hot under
/// `allowAboveLimit`: neither it nor its pod ever goes above its own limit.
#[test]
fn case_1_a_process_named_envoy_never_escapes_its_limit() {
    let mut node = Node::new();
    let mut app = container(&mut node, 1, "10000 100000", "envoy");
    let mut h = Harness::by_process_name(&node, policy(""));
    let mut peak = (0, 0);
    for _ in 0..30 {
        run(&mut h, &mut [&mut app], 1, |_, _| 2000);
        peak.0 = peak.0.max(quota_us(&app.cpu_max()));
        peak.1 = peak.1.max(quota_us(&app.pod_cpu_max()));
    }
    assert_eq!(
        peak,
        (10_000, 10_000),
        "container and pod at most their 100m"
    );
    assert_eq!(
        metric(&h, "sidecar_governor_proxies"),
        "1",
        "governed, within its limit"
    );
}

/// Case 1b: a sidecar whose pod annotation asks for a floor above its own limit, idle under
/// `allowAboveLimit`: the annotation is refused (counted), the pod runs on the namespace's
/// settings and shrinks; it never pins itself above its limit.
#[test]
fn case_1_an_annotation_above_the_limit_is_refused() {
    let mut node = Node::new();
    let mut c = container(&mut node, 1, "100000 100000", "envoy");
    let asks = PodControl {
        cpu_min_millis: Some(2000),
        ..PodControl::default()
    };
    let mut h = Harness::vouched(&node, policy(""), false, "shop", asks);
    let mut peak = (0, 0);
    for _ in 0..20 {
        run(&mut h, &mut [&mut c], 1, |_, _| 1);
        peak.0 = peak.0.max(quota_us(&c.cpu_max()));
        peak.1 = peak.1.max(quota_us(&c.pod_cpu_max()));
    }
    assert_eq!(peak, (100_000, 100_000), "never above its own 1 core");
    assert!(
        quota_us(&c.cpu_max()) < 50_000,
        "shrinking: {}",
        c.cpu_max()
    );
    assert!(
        h.metrics()
            .contains("sidecar_governor_errors_total{kind=\"annotation\"} 1"),
        "{}",
        h.metrics()
    );
}

/// Case 1c: a verified sidecar in a namespace granted `allowAboveLimit` still grows above
/// its limit with its pod, and both come back exactly; in a namespace that withholds it, it
/// stays within its limit.
#[test]
fn case_1_the_grant_is_per_namespace() {
    let extra = "overrides:\n  - namespace: tenants\n    cpu: {allowAboveLimit: false}\n";
    for (namespace, above) in [("mesh", true), ("tenants", false)] {
        let mut node = Node::new();
        let mut c = container(&mut node, 1, "50000 100000", "envoy");
        let mut h = Harness::vouched(
            &node,
            policy(extra),
            false,
            namespace,
            PodControl::default(),
        );
        run(&mut h, &mut [&mut c], 15, |_, _| 2000);
        let (q, pod) = (quota_us(&c.cpu_max()), quota_us(&c.pod_cpu_max()));
        if above {
            assert!(q > 50_000 && pod >= q, "{namespace}: {q} in a pod of {pod}");
        } else {
            assert_eq!((q, pod), (50_000, 50_000), "{namespace}");
        }
        h.agent.shutdown();
        assert_eq!(c.cpu_max(), "50000 100000", "{namespace}");
        assert_eq!(
            c.pod_cpu_max(),
            "50000 100000",
            "{namespace}: the pod exactly back"
        );
    }
}

/// Case 3: with namespace rules in the policy (`excludeNamespaces`, `overrides`), a proxy
/// found by its process name alone (namespace unknown) is left alone and counted.
#[test]
fn case_3_no_runtime_identity_is_left_alone_where_namespace_rules_apply() {
    for extra in [
        "match:\n  excludeNamespaces: [kube-system]\n",
        "overrides:\n  - namespace: batch\n    mode: \"off\"\n",
    ] {
        let text = format!("interval: 1s\ncpu:\n  min: 100m\n  scaleDownAfter: 3s\n{extra}");
        let policy = Policy::from_yaml(&text).unwrap();
        let mut node = Node::new();
        let mut c = container(&mut node, 1, "200000 100000", "envoy");
        let mut h = Harness::by_process_name(&node, policy);
        run(&mut h, &mut [&mut c], 20, |_, _| 1);
        assert_eq!(c.cpu_max(), "200000 100000", "{extra}");
        assert_eq!(metric(&h, "sidecar_governor_proxies"), "0", "{extra}");
        assert_eq!(
            metric(&h, "sidecar_governor_unidentified_proxies"),
            "1",
            "{extra}"
        );
    }
    // Without namespace rules it is governed, within its own limit.
    let mut node = Node::new();
    let mut c = container(&mut node, 1, "200000 100000", "envoy");
    let mut h = Harness::by_process_name(&node, policy(""));
    run(&mut h, &mut [&mut c], 20, |_, _| 1);
    assert!(
        quota_us(&c.cpu_max()) < 100_000,
        "shrinking: {}",
        c.cpu_max()
    );
    assert_eq!(metric(&h, "sidecar_governor_unidentified_proxies"), "0");
}
