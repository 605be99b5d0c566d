//! `sidecar-governor simulate` end to end through the binary: the shipped example traces and
//! policies, JSON and table output, the chart file, and clear errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sidecar-governor"))
        .arg("simulate")
        .args(args)
        .current_dir(root())
        .env_remove("SG_CONFIG")
        .output()
        .expect("run sidecar-governor")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn json_report_of_an_example_trace() {
    let out = simulate(&[
        "--config",
        "examples/policies/tight.yaml",
        "--trace",
        "examples/traces/bursty.csv",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["policy"], "tight.yaml");
    assert_eq!(report["trace"], "bursty.csv");
    assert_eq!(report["proxies"].as_array().unwrap().len(), 4);
    assert_eq!(report["total"]["proxies"], 4);
    let saving = report["total"]["cpu"]["saving_percent"].as_f64().unwrap();
    assert!(saving > 0.0 && saving < 100.0, "{saving}");
    assert!(report["total"]["memory"]["high_events"].is_u64());
}

#[test]
fn table_report_and_chart_file() {
    let dir = tempfile::tempdir().unwrap();
    let svg_path: PathBuf = dir.path().join("cart.svg");
    let out = simulate(&[
        "--trace",
        "examples/traces/steady.csv",
        "--chart",
        "shop/cart-7d9f",
        "--chart-out",
        svg_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.starts_with("policy default · trace steady.csv"),
        "{table}"
    );
    assert!(table.contains("shop/cart-7d9f"));
    assert!(table.lines().last().unwrap().starts_with("TOTAL"));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    assert!(svg.contains("shop/cart-7d9f"));
    assert!(svg.trim_end().ends_with("</svg>"));
}

#[test]
fn an_invalid_trace_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(
        &path,
        "time,proxy,cpu_millicores,memory_bytes\n0,a,10,1048576\n1,a,lots,1048576\n",
    )
    .unwrap();
    let out = simulate(&["--trace", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.csv: line 3, column 3 (cpu_millicores): `lots` is not a number"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_arguments_are_refused() {
    let out = simulate(&[
        "--trace",
        "examples/traces/steady.csv",
        "--chart",
        "nobody",
        "--chart-out",
        "/nonexistent/x.svg",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no proxy `nobody`"));

    // --chart needs --chart-out.
    let out = simulate(&["--trace", "examples/traces/steady.csv", "--chart", "x"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--chart-out"));

    let out = simulate(&[
        "--trace",
        "examples/traces/steady.csv",
        "--cpu-limit",
        "lots",
    ]);
    assert!(!out.status.success());

    let out = simulate(&["--trace", "examples/traces/missing.csv"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("read trace examples/traces/missing.csv"));
}

#[test]
fn every_example_policy_is_valid() {
    let dir = root().join("examples/policies");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        sidecar_governor::policy::Policy::from_yaml(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 2, "tight.yaml and latency.yaml at least");
}
