//! Benchmark: steady-state CPU time per control tick and peak RSS of `sidecar-governor run
//! --dry-run` against generated fixture trees of 100, 1000 and 5000 proxies, beside the cost
//! of simply reading the same cgroup files (open/read/close each, the way a naive agent
//! would), measured in the same run. Medians of several repetitions; ratio = agent / baseline.
//!
//! Run: `cargo bench --bench tick` (set `SG_BENCH_SIZES=100,1000` to choose sizes).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sidecar_governor::sampler::TICK_FILES;

const REPEATS: usize = 3;

/// CPU time of every thread of `pid`, in nanoseconds (first field of each task's schedstat).
fn cpu_ns_of(pid: &str) -> u64 {
    let tasks = Path::new("/proc").join(pid).join("task");
    std::fs::read_dir(tasks)
        .map(|d| {
            d.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn ticks_of(port: u16) -> Option<u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with("sidecar_governor_ticks_total "))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Open/read/close each file the agent reads per tick, for every proxy: ns per pass.
fn baseline_ns(dirs: &[std::path::PathBuf]) -> f64 {
    let passes = (20_000 / dirs.len()).clamp(3, 200);
    let mut buf = Vec::with_capacity(4096);
    let start = thread_cpu_ns();
    for _ in 0..passes {
        for d in dirs {
            for f in TICK_FILES {
                buf.clear();
                let mut file = std::fs::File::open(d.join(f)).expect("open");
                file.read_to_end(&mut buf).expect("read");
                std::hint::black_box(&buf);
            }
        }
    }
    (thread_cpu_ns() - start) as f64 / passes as f64
}

struct Run {
    ns_per_tick: f64,
    peak_kib: u64,
}

fn agent_run(node: &common::Node, policy: &Path, ticks: u64) -> Run {
    let port = free_port();
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_sidecar-governor"))
        .args(["run", "--dry-run", "--discovery", "procfs", "--config"])
        .arg(policy)
        .arg("--cgroup-root")
        .arg(&node.cgroup)
        .arg("--proc-root")
        .arg(&node.proc)
        .arg("--state-dir")
        .arg(&node.state)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("SG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn agent");
    let pid = child.id().to_string();
    let warmup = 5;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(u64, u64)> = None;
    let mut last = (0, 0);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let Some(t) = ticks_of(port) else { continue };
        let cpu = cpu_ns_of(&pid);
        if t >= warmup && first.is_none() {
            first = Some((t, cpu));
        }
        last = (t, cpu);
        if first.is_some_and(|(t0, _)| t >= t0 + ticks) {
            break;
        }
    }
    let peak_kib = peak_rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let (t0, c0) = first.expect("agent never reached warm-up");
    Run {
        ns_per_tick: (last.1 - c0) as f64 / (last.0 - t0).max(1) as f64,
        peak_kib,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = std::env::var("SG_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            if quick {
                vec![20]
            } else {
                vec![100, 1000, 5000]
            }
        });
    println!(
        "{:>6} {:>16} {:>16} {:>7} {:>10} {:>10}",
        "proxies", "tick CPU (ms)", "read files (ms)", "ratio", "peak RSS", "ticks"
    );
    for n in sizes {
        let mut node = common::Node::new();
        let mut dirs = Vec::with_capacity(n);
        for i in 0..n {
            let mut c = node.container(i, i, "200000 100000");
            node.process(
                &mut c,
                "envoy",
                &["/usr/local/bin/envoy", "--concurrency", "2"],
            );
            let mut app = node.container(i, n + i, "100000 100000");
            node.process(&mut app, "app", &["/app"]);
            dirs.push(c.dir.clone());
        }
        let policy = node.dir.path().join("policy.yaml");
        std::fs::write(&policy, "interval: 100ms\n").expect("write policy");
        let ticks: u64 = if quick {
            5
        } else {
            (20_000 / n as u64).clamp(20, 100)
        };
        let mut agent = Vec::new();
        let mut base = Vec::new();
        let mut peak = 0;
        for _ in 0..if quick { 1 } else { REPEATS } {
            base.push(baseline_ns(&dirs));
            let r = agent_run(&node, &policy, ticks);
            agent.push(r.ns_per_tick);
            peak = peak.max(r.peak_kib);
        }
        let (a, b) = (median(agent), median(base));
        println!(
            "{:>6} {:>16.2} {:>16.2} {:>7.2} {:>7.1}MiB {:>10}",
            n,
            a / 1e6,
            b / 1e6,
            a / b,
            peak as f64 / 1024.0,
            ticks
        );
    }
}
