//! Benchmark: steady-state CPU time per control tick and peak RSS of `sidecar-governor run
//! --dry-run` against generated fixture trees of 100, 1000 and 5000 proxies, beside the cost
//! of simply reading the same cgroup files (open/read/close each, the way a naive agent
//! would), measured in the same run. Medians of several repetitions; ratio = agent / baseline.
//!
//! Then, in process: N proxies appearing in one tick and all written for the first time in
//! one tick — wall time of those ticks and the journal bytes they write — against a steady
//! tick (nothing to write) of the same run, with the journal on disk (`TMPDIR`), fsyncs
//! included.
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
        .args(["--admin-listen", "127.0.0.1:0"])
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

/// Wall time of one tick, in milliseconds.
fn timed_tick(h: &mut common::harness::Harness, proxies: &mut [common::Container]) -> f64 {
    for c in proxies.iter_mut() {
        c.run_for_a_second(1, 0);
    }
    let start = Instant::now();
    h.tick();
    start.elapsed().as_secs_f64() * 1e3
}

/// N proxies appear at once, are first written at once, then shrink and settle.
fn appearing(n: usize) {
    let mut node = common::Node::new();
    // The journal on a real disk, as on a node (the fixture tree itself may be tmpfs).
    let disk = tempfile::tempdir().expect("state dir");
    node.state = disk.path().join("state");
    let mut proxies: Vec<common::Container> = (0..n)
        .map(|i| {
            let mut c = node.container(i, i, "200000 100000");
            node.process(&mut c, "envoy", &["/usr/local/bin/envoy"]);
            c
        })
        .collect();
    let policy = sidecar_governor::policy::Policy::from_yaml(
        "interval: 1s\nmatch:\n  rescanInterval: 3600s\ncpu:\n  scaleDownAfter: 3s\nmemory:\n  enabled: false\n",
    )
    .expect("policy");
    let mut h = common::harness::Harness::new(&node, policy, false);
    let appear = timed_tick(&mut h, &mut proxies);
    let mut first_write = None;
    let mut writing = Vec::new();
    let mut steady = Vec::new();
    for _ in 0..80 {
        let before = h.agent.journal().stats();
        let ms = timed_tick(&mut h, &mut proxies);
        let after = h.agent.journal().stats();
        let bytes = after.bytes - before.bytes;
        match (bytes, first_write) {
            (0, _) => steady.push(ms),
            (_, None) => first_write = Some((ms, bytes, after.writes - before.writes)),
            _ => writing.push(ms),
        }
    }
    let (fw_ms, fw_bytes, fw_writes) = first_write.expect("the proxies were never written");
    let steady_ms = median(steady);
    let stats = h.agent.journal().stats();
    println!(
        "{:>6} {:>12.2} {:>14.2} {:>12} {:>8} {:>14.2} {:>11.2} {:>9.2} {:>9.2} {:>9}",
        n,
        appear,
        fw_ms,
        fw_bytes,
        fw_writes,
        median(writing),
        steady_ms,
        appear / steady_ms,
        fw_ms / steady_ms,
        stats.writes
    );
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
    println!(
        "\n{:>6} {:>12} {:>14} {:>12} {:>8} {:>14} {:>11} {:>9} {:>9} {:>9}",
        "proxies",
        "appear (ms)",
        "1st write (ms)",
        "1st bytes",
        "flushes",
        "writing (ms)",
        "steady (ms)",
        "appear/x",
        "write/x",
        "journal"
    );
    let appear_sizes: Vec<usize> = if quick { vec![20] } else { vec![100, 1000] };
    for n in appear_sizes {
        appearing(n);
    }
}
