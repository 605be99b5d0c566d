//! Benchmark: steady-state CPU time per control tick and peak RSS of `sidecar-governor run
//! --dry-run` against generated fixture trees of 100, 1000 and 5000 proxies, beside the cost
//! of simply reading the same cgroup files (open/read/close each, the way a naive agent
//! would), measured in the same run. Medians of several repetitions; ratio = agent / baseline.
//!
//! Then, in process: N proxies appearing in one tick and all written for the first time in
//! one tick — wall time of those ticks and the journal bytes they write — against steady
//! ticks (nothing to write) of the same run, with the journal on disk (`TMPDIR`), fsyncs
//! included. Steady ticks are of two kinds: without discovery, and with the periodic full
//! discovery pass (`match.rescanInterval`, here every 10th tick) that the appear tick also
//! makes, so the appear tick's own cost (adoption) is told apart from discovery's. Discovery
//! alone and one journal flush of N written records alone are timed on the same trees.
//!
//! Run: `cargo bench --bench tick`. Knobs (environment):
//! - `SG_BENCH_SIZES=100,1000`: sizes of the steady-state agent runs (empty: none);
//! - `SG_BENCH_APPEAR_SIZES=100,1000`: sizes of the appearing runs (empty: none);
//! - `SG_BENCH_APPEAR_REPEATS=5`: appearing runs per size (medians are printed);
//! - `SG_BENCH_PERF_FIFO=PATH` and `SG_BENCH_PERF_PHASE=appear|first|steady|settled|rescan`: enable a
//!   `perf record --control fifo:PATH -D -1` for exactly the ticks of that phase.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
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
    let mut child: Child = node
        .agent_command(policy)
        .arg("--dry-run")
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

/// Wall time of one tick, in milliseconds. With `SG_BENCH_PERF_FIFO` set (a `perf record
/// --control fifo:...` control FIFO) and `phase` equal to `SG_BENCH_PERF_PHASE`, perf is
/// enabled for exactly this tick, so a profile holds one kind of tick only.
fn timed_tick(
    h: &mut common::harness::Harness,
    proxies: &mut [common::Container],
    phase: &str,
) -> Tick {
    for c in proxies.iter_mut() {
        c.run_for_a_second(1, 0);
    }
    let profile = std::env::var("SG_BENCH_PERF_PHASE").is_ok_and(|p| p == phase);
    if profile {
        perf_ctl("enable");
    }
    let (start, cpu) = (Instant::now(), tick_cpu_ns());
    h.tick();
    let t = Tick {
        wall: start.elapsed().as_secs_f64() * 1e3,
        cpu: (tick_cpu_ns() - cpu) as f64 / 1e6,
    };
    if profile {
        perf_ctl("disable");
    }
    t
}

/// One tick: wall time and this thread's CPU time, ms (CPU time leaves out waiting for the
/// disk — fsyncs — and for a CPU on a busy machine).
#[derive(Debug, Clone, Copy)]
struct Tick {
    wall: f64,
    cpu: f64,
}

/// This thread's CPU time, ns (exact, unlike schedstat's last-tick figure).
fn tick_cpu_ns() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn perf_ctl(cmd: &str) {
    if let Ok(fifo) = std::env::var("SG_BENCH_PERF_FIFO") {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(fifo)
            .expect("perf control fifo");
        writeln!(f, "{cmd}").expect("perf control");
    }
}

/// One run of [`appearing`]: wall times in ms (CPU times in ms, `*_cpu`), bytes written by
/// the journal.
#[derive(Debug, Clone, Copy)]
struct Appear {
    appear_cpu: f64,
    first_cpu: f64,
    steady_cpu: f64,
    rescan_cpu: f64,
    appear: f64,
    appear_bytes: u64,
    first_write: f64,
    first_bytes: u64,
    first_flushes: u64,
    writing: f64,
    steady: f64,
    steady_rescan: f64,
    discovery: f64,
    flush: f64,
    flush_bytes: u64,
}

/// Periodic full discovery pass in the appearing runs: every `RESCAN_EVERY`th tick rescans.
const RESCAN_EVERY: usize = 10;

/// N proxies appear at once, are first written at once, then shrink and settle. Steady ticks
/// (nothing written) are split into those with the periodic full discovery pass and those
/// without; discovery alone and a journal flush of N written records alone are timed on the
/// same trees.
fn appearing(n: usize) -> Appear {
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
    let policy = sidecar_governor::policy::Policy::from_yaml(&format!(
        "interval: 1s\nmatch:\n  rescanInterval: {RESCAN_EVERY}s\ncpu:\n  scaleDownAfter: 3s\nmemory:\n  enabled: false\n"
    ))
    .expect("policy");
    let mut h = common::harness::Harness::new(&node, policy.clone(), false);
    let before = h.agent.journal().stats();
    let appear_tick = timed_tick(&mut h, &mut proxies, "appear");
    let appear = appear_tick.wall;
    let appear_bytes = h.agent.journal().stats().bytes - before.bytes;
    let mut first_write = None;
    let mut writing = Vec::new();
    let mut steady = Vec::new();
    let mut steady_rescan = Vec::new();
    // The harness's clock moves 1 s a tick: tick i (the appear tick is 0) rescans when
    // i is a multiple of RESCAN_EVERY.
    for i in 1..=120 {
        let rescan = i % RESCAN_EVERY == 0;
        let before = h.agent.journal().stats();
        let phase = match (rescan, first_write.is_none()) {
            (true, _) => "rescan",
            (false, true) => "first",
            (false, false) if i > 100 => "settled",
            (false, false) => "steady",
        };
        let t = timed_tick(&mut h, &mut proxies, phase);
        let after = h.agent.journal().stats();
        let bytes = after.bytes - before.bytes;
        match (bytes, first_write, rescan) {
            (0, _, true) => steady_rescan.push(t),
            (0, _, false) => steady.push(t),
            (_, None, _) => first_write = Some((t, bytes, after.writes - before.writes)),
            _ => writing.push(t.wall),
        }
    }
    let (first_tick, first_bytes, first_flushes) =
        first_write.expect("the proxies were never written");
    let first_write = first_tick.wall;
    let wall = |v: &[Tick]| median(v.iter().map(|t| t.wall).collect());
    let cpu = |v: &[Tick]| median(v.iter().map(|t| t.cpu).collect());
    assert_eq!(h.agent.governed().len(), n, "every proxy governed");
    // Discovery alone on the same trees: the full pass a rescan makes.
    let mut discovery =
        sidecar_governor::discovery::procfs::ProcfsDiscovery::new(&node.proc, &node.cgroup);
    let discovery_ms = median(
        (0..5)
            .map(|_| {
                let start = Instant::now();
                let found = sidecar_governor::discovery::Discovery::discover(
                    &mut discovery,
                    &policy.matching,
                )
                .expect("discover");
                assert_eq!(found.len(), n);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let (flush, flush_bytes) = flush_alone(n);
    Appear {
        appear_cpu: appear_tick.cpu,
        first_cpu: first_tick.cpu,
        steady_cpu: cpu(&steady),
        rescan_cpu: cpu(&steady_rescan),
        appear,
        appear_bytes,
        first_write,
        first_bytes,
        first_flushes,
        writing: median(writing),
        steady: wall(&steady),
        steady_rescan: wall(&steady_rescan),
        discovery: discovery_ms,
        flush,
        flush_bytes,
    }
}

/// One journal flush of `n` container records each with a pending `cpu.max` (what the first
/// writing tick flushes), on disk with its fsyncs: median ms of 5, and its bytes.
fn flush_alone(n: usize) -> (f64, u64) {
    use sidecar_governor::cgroup::parse::parse_cpu_max;
    use sidecar_governor::journal::Journal;
    use sidecar_governor::ownership::{ContainerRecord, CpuMaxValue};
    let original = parse_cpu_max("200000 100000").expect("cpu.max");
    let mut times = Vec::new();
    let mut bytes = 0;
    for round in 0..5u64 {
        let disk = tempfile::tempdir().expect("state dir");
        let mut journal = Journal::load(&disk.path().join("state")).expect("journal");
        for i in 0..n {
            let id = sidecar_governor::identity::Identity {
                pod_uid: common::pod_uid(i),
                container_id: common::container_id(i),
                ..Default::default()
            };
            let mut r = ContainerRecord::untouched(id, original, Some(0), None, 1_700_000_000);
            r.cpu_max
                .begin(CpuMaxValue(original.with_millis(1800 - round)));
            let key = format!(
                "kubepods/burstable/pod{}/{}",
                common::pod_uid(i),
                common::container_id(i)
            );
            journal.insert_container(&key, r);
        }
        let before = journal.stats();
        let start = Instant::now();
        journal.flush().expect("flush");
        times.push(start.elapsed().as_secs_f64() * 1e3);
        bytes = journal.stats().bytes - before.bytes;
    }
    (median(times), bytes)
}

fn print_appear(label: &str, n: usize, a: &Appear) {
    println!(
        "{:>7} {:>6} {:>8.2} {:>7} {:>8.2} {:>8} {:>3} {:>8.2} {:>7.2} {:>8.2} {:>7.2} {:>7.2} {:>8} {:>7.2} {:>7.2} {:>7.2}",
        label,
        n,
        a.appear,
        a.appear_bytes,
        a.first_write,
        a.first_bytes,
        a.first_flushes,
        a.writing,
        a.steady,
        a.steady_rescan,
        a.discovery,
        a.flush,
        a.flush_bytes,
        a.appear / a.steady,
        a.appear / a.steady_rescan,
        a.first_write / a.steady,
    );
    println!(
        "{:>7} {:>6} cpu: appear {:.2}, 1st write {:.2}, steady {:.2}, steady+rescan {:.2} ms; appear/steady {:.2}, appear/steady+rescan {:.2}, 1st write/steady {:.2}",
        "",
        n,
        a.appear_cpu,
        a.first_cpu,
        a.steady_cpu,
        a.rescan_cpu,
        a.appear_cpu / a.steady_cpu,
        a.appear_cpu / a.rescan_cpu,
        a.first_cpu / a.steady_cpu,
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
        "\n{:>7} {:>6} {:>8} {:>7} {:>8} {:>8} {:>3} {:>8} {:>7} {:>8} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7}",
        "",
        "proxies",
        "appear",
        "bytes",
        "1st wr",
        "bytes",
        "fl",
        "writing",
        "steady",
        "st+scan",
        "discov",
        "flush",
        "fl bytes",
        "ap/st",
        "ap/scan",
        "wr/st"
    );
    let appear_sizes: Vec<usize> = std::env::var("SG_BENCH_APPEAR_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| if quick { vec![20] } else { vec![100, 1000] });
    let repeats: usize = std::env::var("SG_BENCH_APPEAR_REPEATS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 });
    for n in appear_sizes {
        let runs: Vec<Appear> = (0..repeats.max(1)).map(|_| appearing(n)).collect();
        for (i, a) in runs.iter().enumerate() {
            print_appear(&format!("run {}", i + 1), n, a);
        }
        // Medians of each column, and of each run's own ratios (not ratios of medians).
        let m = |f: fn(&Appear) -> f64| median(runs.iter().map(f).collect());
        let mb = |f: fn(&Appear) -> u64| median(runs.iter().map(|a| f(a) as f64).collect()) as u64;
        let med = Appear {
            appear_cpu: m(|a| a.appear_cpu),
            first_cpu: m(|a| a.first_cpu),
            steady_cpu: m(|a| a.steady_cpu),
            rescan_cpu: m(|a| a.rescan_cpu),
            appear: m(|a| a.appear),
            appear_bytes: mb(|a| a.appear_bytes),
            first_write: m(|a| a.first_write),
            first_bytes: mb(|a| a.first_bytes),
            first_flushes: mb(|a| a.first_flushes),
            writing: m(|a| a.writing),
            steady: m(|a| a.steady),
            steady_rescan: m(|a| a.steady_rescan),
            discovery: m(|a| a.discovery),
            flush: m(|a| a.flush),
            flush_bytes: mb(|a| a.flush_bytes),
        };
        print_appear("median", n, &med);
        println!(
            "{:>7} {:>6} ratios (median of each run's): appear/steady {:.2}, appear/steady+rescan {:.2}, first write/steady {:.2}, flush share of first write {:.0}%",
            "",
            n,
            m(|a| a.appear / a.steady),
            m(|a| a.appear / a.steady_rescan),
            m(|a| a.first_write / a.steady),
            m(|a| 100.0 * a.flush / a.first_write),
        );
        println!(
            "{:>7} {:>6} cpu ratios (median of each run's): appear/steady {:.2}, appear/steady+rescan {:.2}, first write/steady {:.2}",
            "",
            n,
            m(|a| a.appear_cpu / a.steady_cpu),
            m(|a| a.appear_cpu / a.rescan_cpu),
            m(|a| a.first_cpu / a.steady_cpu),
        );
    }
}
