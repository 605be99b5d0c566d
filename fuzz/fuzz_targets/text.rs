//! Every small parser of outside text in one target, to keep build and CI time small. The
//! input's first byte chooses the parser (`a` is the first of [`PARSERS`], `b` the second, and
//! so on, wrapping); the rest is its text. Each parser must return a value or an error, never
//! panic, and what it returns must keep its documented contract (paths never leave the cgroup
//! root, values read back to themselves).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use sidecar_governor::cgroup::parse::{
    CpuMax, parse_cpu_max, parse_cpu_stat, parse_memory_events, parse_memory_stat, parse_pressure,
    parse_u64_or_max,
};
use sidecar_governor::cri::parse::{
    cgroups_path_to_rel, expand_slice, identity, parse_status_info,
};
use sidecar_governor::cri::proto::{PodSandbox, PodSandboxMetadata};
use sidecar_governor::discovery::cgroup_path::{
    climb_depth, join_ns_path, parse_container_path, parse_proc_cgroup, pod_uid_of,
    resolve_proc_path,
};
use sidecar_governor::discovery::procfs::{parse_stat_ppid, split_cmdline};
use sidecar_governor::discovery::{concurrency_from_args, is_gateway_args};
use sidecar_governor::policy::{PodControl, Policy};
use sidecar_governor::quantity::{
    format_bytes, format_cpu_millis, format_duration, parse_bytes, parse_cpu_millis, parse_duration,
};

/// The parsers, in selector order (`a`, `b`, ...). The corpus files are named after them.
const PARSERS: &[(&str, fn(&[u8]))] = &[
    ("cpu-quantity", cpu_quantity),     // a
    ("bytes-quantity", bytes_quantity), // b
    ("duration", duration),             // c
    ("cpu.max", cpu_max),               // d
    ("cpu.stat", cpu_stat),             // e
    ("pressure", pressure),             // f
    ("u64-or-max", u64_or_max),         // g
    ("memory.stat", memory_stat),       // h
    ("memory.events", memory_events),   // i
    ("proc-cgroup", proc_cgroup),       // j
    ("container-path", container_path), // k
    ("ns-path", ns_path),               // l
    ("proc-stat", proc_stat),           // m
    ("proc-cmdline", proc_cmdline),     // n
    ("cgroups-path", cri_cgroups_path), // o
    ("verbose-info", cri_verbose_info), // p
    ("cri-labels", cri_labels),         // q
    ("annotations", annotations),       // r
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let which = usize::from(first.wrapping_sub(b'a')) % PARSERS.len();
    (PARSERS[which].1)(rest);
});

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A path relative to the cgroup root that stays inside it: no `..`, `.` or empty component.
fn assert_inside_root(rel: &str) {
    assert!(!rel.starts_with('/'), "{rel:?}");
    assert!(
        rel.split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".."),
        "{rel:?}"
    );
}

fn cpu_quantity(data: &[u8]) {
    if let Ok(millis) = parse_cpu_millis(&text(data)) {
        assert!(millis > 0);
        assert_eq!(parse_cpu_millis(&format_cpu_millis(millis)), Ok(millis));
    }
}

fn bytes_quantity(data: &[u8]) {
    if let Ok(bytes) = parse_bytes(&text(data)) {
        assert!(bytes > 0);
        assert_eq!(parse_bytes(&format_bytes(bytes)), Ok(bytes));
    }
}

fn duration(data: &[u8]) {
    if let Ok(d) = parse_duration(&text(data)) {
        assert!(!d.is_zero());
        let _ = format_duration(d);
    }
}

fn cpu_max(data: &[u8]) {
    if let Ok(max) = parse_cpu_max(&text(data)) {
        assert_eq!(parse_cpu_max(&max.to_string()), Ok(max));
        let _ = max.validate();
        if let Some(millis) = max.millis() {
            let _ = max.with_millis(millis);
        }
        let _ = CpuMax::with_millis(&max, u64::MAX);
    }
}

fn cpu_stat(data: &[u8]) {
    let _ = parse_cpu_stat(&text(data));
}

fn pressure(data: &[u8]) {
    let _ = parse_pressure(&text(data));
}

fn u64_or_max(data: &[u8]) {
    let _ = parse_u64_or_max(&text(data));
}

fn memory_stat(data: &[u8]) {
    if let Ok(stat) = parse_memory_stat(&text(data)) {
        let _ = (stat.unreclaimable(), stat.reclaimable());
    }
}

fn memory_events(data: &[u8]) {
    let _ = parse_memory_events(&text(data));
}

fn check_container_path(rel: &str) {
    if let Some(found) = parse_container_path(rel) {
        assert!(found.container_rel.starts_with(&found.pod_rel), "{found:?}");
        assert!(found.container_id.len() >= 12, "{found:?}");
        assert!(!found.pod_uid.is_empty(), "{found:?}");
    }
}

/// `/proc/PID/cgroup`, resolved under the root the way procfs discovery does.
fn proc_cgroup(data: &[u8]) {
    let text = text(data);
    let Some(path) = parse_proc_cgroup(&text) else {
        return;
    };
    let _ = climb_depth(path);
    if let Some(rel) = resolve_proc_path(path) {
        assert_inside_root(&rel);
        check_container_path(&rel);
    }
}

fn container_path(data: &[u8]) {
    let text = text(data);
    check_container_path(&text);
    for part in text.split('/') {
        let _ = pod_uid_of(part);
    }
}

/// `ns_root` on the first line, the namespaced `/proc/PID/cgroup` path on the second.
fn ns_path(data: &[u8]) {
    let text = text(data);
    let (ns_root, path) = text.split_once('\n').unwrap_or((&text, ""));
    if let Some(joined) = join_ns_path(ns_root, path)
        && !ns_root.split('/').any(|p| p == "..")
    {
        assert!(!joined.split('/').any(|p| p == ".."), "{joined:?}");
    }
}

fn proc_stat(data: &[u8]) {
    let _ = parse_stat_ppid(&text(data));
}

fn proc_cmdline(data: &[u8]) {
    let args = split_cmdline(data);
    let _ = concurrency_from_args(args.iter().map(String::as_str));
    let _ = is_gateway_args(args.iter().map(String::as_str));
}

fn cri_cgroups_path(data: &[u8]) {
    let text = text(data);
    if let Some(rel) = cgroups_path_to_rel(&text) {
        assert_inside_root(&rel);
        check_container_path(&rel);
    }
    if let Some(path) = expand_slice(&text)
        && !path.is_empty()
    {
        assert!(path.split('/').all(|p| p.ends_with(".slice")), "{path:?}");
    }
}

fn cri_verbose_info(data: &[u8]) {
    let info = HashMap::from([("info".to_string(), text(data).into_owned())]);
    if let Ok(status) = parse_status_info("c0ffee", &info) {
        assert_ne!(status.pid, Some(0));
        if let Some(path) = status.cgroups_path
            && let Some(rel) = cgroups_path_to_rel(&path)
        {
            assert_inside_root(&rel);
        }
    }
}

/// The container's metadata name, then the sandbox's name, UID and namespace, one a line;
/// then `key=value` labels.
fn cri_labels(data: &[u8]) {
    let text = text(data);
    let mut lines = text.lines();
    let mut next = || lines.next().unwrap_or_default().to_string();
    let metadata_name = next();
    let sandbox = PodSandbox {
        metadata: Some(PodSandboxMetadata {
            name: next(),
            uid: next(),
            namespace: next(),
            attempt: 0,
        }),
        ..Default::default()
    };
    let labels: HashMap<String, String> = lines
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = identity(&labels, Some(&metadata_name), Some(&sandbox));
    let _ = identity(&labels, None, None);
}

/// `key=value` pod annotations, one a line.
fn annotations(data: &[u8]) {
    let text = text(data);
    let annotations: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(control) = PodControl::from_annotations(&annotations) {
        let effective = Policy::default().effective("default", &control);
        assert!(effective.cpu.min_millis <= effective.cpu.max_millis);
    }
}
