//! The deployment files agree with the code: every metric the dashboard and the alerts use is
//! one the agent exports, the DaemonSet passes only flags and `SG_*` variables the binary
//! knows, and the ConfigMap's policy is valid.

// Fixture helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use sidecar_governor::metrics::Metrics;
use sidecar_governor::policy::{DEFAULT_POLICY_YAML, Policy};

/// Metrics the dashboard may chart before src/metrics.rs exports them (work in progress). Remove
/// a name from here once it is exported (the test fails as a reminder).
const PENDING: &[&str] = &[];

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// Every `sidecar_governor_*` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("sidecar_governor_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Families exported, as `(name, type)`: from the `# TYPE` lines of a fresh registry (families
/// without series are not encoded), plus every name src/metrics.rs registers (type unknown:
/// any suffix accepted).
fn exported() -> Vec<(String, String)> {
    let mut families: Vec<(String, String)> = Metrics::new()
        .encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect();
    let source = read("src/metrics.rs");
    let mut rest = source.as_str();
    while let Some(i) = rest.find("register") {
        rest = &rest[i + "register".len()..];
        let call = rest.trim_start_matches("_with_unit").trim_start();
        let Some(args) = call.strip_prefix('(') else {
            continue;
        };
        let args = args.trim_start();
        if let Some(quoted) = args.strip_prefix('"')
            && let Some(end) = quoted.find('"')
        {
            let name = format!("sidecar_governor_{}", &quoted[..end]);
            if !families.iter().any(|(f, _)| *f == name) {
                families.push((name, "unknown".into()));
            }
        }
    }
    families
}

/// The family a sample name belongs to, if exported.
fn family_of(name: &str, families: &[(String, String)]) -> Option<String> {
    families.iter().find_map(|(family, kind)| {
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total", ""],
            "histogram" => &["_bucket", "_sum", "_count", ""],
            "unknown" => &["_total", "_bucket", "_sum", "_count", "_info", ""],
            _ => &[""],
        };
        suffixes
            .iter()
            .any(|s| name == format!("{family}{s}"))
            .then(|| family.clone())
    })
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let families = exported();
    assert!(families.len() > 10, "{families:?}");
    let mut missing = Vec::new();
    let mut used_pending = BTreeSet::new();
    for file in [
        "daemonset/grafana-dashboard.json",
        "daemonset/prometheusrule.yaml",
    ] {
        let text = read(file);
        let names = names_in(&text);
        assert!(!names.is_empty(), "{file} names no metric");
        for name in names {
            if PENDING.contains(&name.as_str()) {
                used_pending.insert(name);
                continue;
            }
            if family_of(&name, &families).is_none() {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not exported by src/metrics.rs:\n{}",
        missing.join("\n")
    );
    for name in PENDING {
        assert!(
            family_of(name, &families).is_none(),
            "{name} is exported now: remove it from PENDING in tests/manifests.rs"
        );
    }
}

#[test]
fn configmap_policy_is_the_valid_default() {
    let text = read("daemonset/policy.yaml");
    assert_eq!(text, DEFAULT_POLICY_YAML);
    Policy::from_yaml(&text).unwrap();
    let kustomization = read("daemonset/kustomization.yaml");
    assert!(kustomization.contains("- policy.yaml"), "{kustomization}");
}

#[test]
fn daemonset_passes_only_known_flags_and_variables() {
    let help = Command::new(env!("CARGO_BIN_EXE_sidecar-governor"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let daemonset = read("daemonset/daemonset.yaml");
    let mut checked = 0;
    for line in daemonset.lines().map(str::trim) {
        if let Some(arg) = line.strip_prefix("- --") {
            let flag = arg.split('=').next().unwrap();
            assert!(
                help.contains(&format!("--{flag}")),
                "--{flag} unknown:\n{help}"
            );
            checked += 1;
        }
        if let Some(var) = line.strip_prefix("- name: SG_") {
            let var = format!("SG_{var}");
            // SG_LOG is read by the logging set-up, not clap.
            if var != "SG_LOG" {
                assert!(
                    help.contains(&format!("env: {var}")),
                    "{var} unknown:\n{help}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} flags/variables found");
    assert!(daemonset.contains("--config=/etc/sidecar-governor/policy.yaml"));
    assert!(daemonset.contains("mountPath: /etc/sidecar-governor"));
}
