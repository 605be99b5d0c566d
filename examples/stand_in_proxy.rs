//! A stand-in for a sidecar proxy, used by the real-kernel VM tests (`scripts/vm-e2e.sh`).
//!
//! Installed in the VM as `envoy` (so `/proc/PID/comm` reads `envoy`), as `linkerd2-proxy`, and as
//! `app` for an application container. It idles or burns CPU on N threads, can be switched live
//! through a control file, and can hold anonymous memory or page cache for memory tests.
//! Standard library only.
//!
//! ```text
//! stand_in_proxy [--mode idle|spin] [--threads N] [--control FILE] [--concurrency N]
//!                [--alloc-mib N] [--grow-to-mib M --grow-step-mib S]
//!                [--grow-when FILE] [--page-cache-mib N] [--page-cache-dir DIR]
//!                [--http ADDR]
//! ```
//!
//! The control file is re-read every 200 ms; `idle`, `spin` or `spin N` switch the mode.
//! With `--grow-when FILE` the memory growth waits until FILE exists; each step prints
//! `stand-in: grown to N MiB at T s` (T counted from the start of the growth).
//! With `--http ADDR` (e.g. `127.0.0.1:8081`) it also serves HTTP/1.1 there: every request gets
//! `200 ok` (keep-alive, a thread per connection), as the cheap app behind the latency
//! benchmark's proxy.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

#[derive(Debug)]
struct Options {
    spin_threads: usize,
    threads: usize,
    control: Option<String>,
    alloc_mib: usize,
    grow_to_mib: usize,
    grow_step_mib: usize,
    grow_when: Option<String>,
    page_cache_mib: usize,
    page_cache_dir: String,
    http: Option<String>,
}

const USAGE: &str = "usage: stand_in_proxy [--mode idle|spin] [--threads N] [--control FILE] \
[--concurrency N] [--alloc-mib N] [--grow-to-mib M --grow-step-mib S] [--grow-when FILE] \
[--page-cache-mib N] [--page-cache-dir DIR] [--http ADDR]";

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut mode = String::from("idle");
    let mut opts = Options {
        spin_threads: 0,
        threads: 1,
        control: None,
        alloc_mib: 0,
        grow_to_mib: 0,
        grow_step_mib: 0,
        grow_when: None,
        page_cache_mib: 0,
        page_cache_dir: String::from("/tmp"),
        http: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        if name == "-h" || name == "--help" {
            return Err(USAGE.to_string());
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{name}: missing value\n{USAGE}"))?,
        };
        let number = || {
            value
                .parse::<usize>()
                .map_err(|e| format!("{name}: {value:?}: {e}"))
        };
        match name {
            "--mode" => mode = value.clone(),
            "--threads" => opts.threads = number()?,
            "--control" => opts.control = Some(value.clone()),
            "--concurrency" => {
                number()?;
            }
            "--alloc-mib" => opts.alloc_mib = number()?,
            "--grow-to-mib" => opts.grow_to_mib = number()?,
            "--grow-step-mib" => opts.grow_step_mib = number()?,
            "--grow-when" => opts.grow_when = Some(value.clone()),
            "--page-cache-mib" => opts.page_cache_mib = number()?,
            "--page-cache-dir" => opts.page_cache_dir = value.clone(),
            "--http" => opts.http = Some(value.clone()),
            _ => return Err(format!("unknown flag {name}\n{USAGE}")),
        }
    }
    opts.spin_threads = parse_mode(&mode, opts.threads)?;
    if opts.grow_to_mib > opts.alloc_mib && opts.grow_step_mib == 0 {
        return Err("--grow-to-mib needs --grow-step-mib > 0".to_string());
    }
    Ok(opts)
}

/// `idle` -> 0 spinning threads, `spin` -> `default_threads`, `spin N` -> N.
fn parse_mode(text: &str, default_threads: usize) -> Result<usize, String> {
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("idle"), None, None) => Ok(0),
        (Some("spin"), None, None) => Ok(default_threads),
        (Some("spin"), Some(n), None) => n.parse().map_err(|e| format!("mode {text:?}: {e}")),
        _ => Err(format!("mode {text:?}: expected idle, spin or spin N")),
    }
}

/// Spinner number `index` burns CPU while `index < wanted`, and naps otherwise.
fn spinner(index: usize, wanted: Arc<AtomicUsize>) {
    let mut x: u64 = index as u64 + 1;
    loop {
        if index < wanted.load(Ordering::Relaxed) {
            for _ in 0..100_000 {
                x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
        } else {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn set_spinners(wanted: &AtomicUsize, spawned: &mut usize, n: usize, shared: &Arc<AtomicUsize>) {
    wanted.store(n, Ordering::Relaxed);
    while *spawned < n {
        let index = *spawned;
        let w = Arc::clone(shared);
        thread::spawn(move || spinner(index, w));
        *spawned += 1;
    }
}

/// Allocate `from` MiB, touch every page, grow by `step` MiB a second up to `to` (once
/// `start_file` exists, when given), and keep touching the pages so they stay resident and
/// recently used.
fn hold_memory(from: usize, to: usize, step: usize, start_file: Option<String>) {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut held = 0;
    let grow = |mib: usize, blocks: &mut Vec<Vec<u8>>| {
        for _ in 0..mib {
            let mut block = vec![0u8; MIB];
            touch(&mut block, 1);
            blocks.push(block);
        }
    };
    grow(from, &mut blocks);
    held += from;
    println!("stand-in: holding {held} MiB anonymous memory");
    let mut round: u8 = 1;
    let mut growth_start: Option<Instant> = None;
    loop {
        thread::sleep(Duration::from_secs(1));
        let may_grow = start_file
            .as_deref()
            .is_none_or(|f| std::path::Path::new(f).exists());
        if held < to && may_grow {
            let start = *growth_start.get_or_insert_with(|| {
                println!("stand-in: growth starts");
                Instant::now()
            });
            let add = step.min(to - held);
            grow(add, &mut blocks);
            held += add;
            println!(
                "stand-in: grown to {held} MiB at {:.1} s",
                start.elapsed().as_secs_f64()
            );
        }
        round = round.wrapping_add(1);
        for block in &mut blocks {
            touch(block, round);
        }
    }
}

fn touch(block: &mut [u8], value: u8) {
    for i in (0..block.len()).step_by(PAGE) {
        block[i] = value;
    }
    black_box(block);
}

/// Write and read back a file of `mib` MiB so the cgroup is charged for its page cache.
fn fill_page_cache(dir: &str, mib: usize) -> std::io::Result<String> {
    let path = format!("{dir}/stand-in-{}.cache", std::process::id());
    let chunk = vec![0x5au8; MIB];
    let mut file = std::fs::File::create(&path)?;
    for _ in 0..mib {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    let mut back = std::fs::File::open(&path)?;
    let mut buf = vec![0u8; MIB];
    let mut total = 0;
    loop {
        let n = back.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    println!("stand-in: page cache file {path} ({} MiB)", total / MIB);
    Ok(path)
}

/// Serve `200 ok` to every HTTP/1.x request on `addr`, a thread per connection, keeping the
/// connection open unless the client asks to close it (or speaks HTTP/1.0 without keep-alive).
fn serve_http(listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        thread::spawn(move || {
            let _ = http_connection(stream);
        });
    }
}

fn http_connection(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request = line.trim_end().to_string();
        if request.is_empty() {
            continue;
        }
        let mut close = request.ends_with("HTTP/1.0");
        let mut body_len = 0usize;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "connection" if value == "close" => close = true,
                "connection" if value == "keep-alive" => close = false,
                "content-length" => body_len = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        if body_len > 0 {
            std::io::copy(
                &mut (&mut reader).take(body_len as u64),
                &mut std::io::sink(),
            )?;
        }
        let connection = if close { "close" } else { "keep-alive" };
        // One write: one segment for the whole response.
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: {connection}\r\n\r\nok\n"
        );
        out.write_all(response.as_bytes())?;
        if close {
            return Ok(());
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("stand-in: {e}");
            return ExitCode::from(2);
        }
    };
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    println!(
        "stand-in: started pid={} comm={} spinning={} control={}",
        std::process::id(),
        comm.trim(),
        opts.spin_threads,
        opts.control.as_deref().unwrap_or("-"),
    );

    if opts.page_cache_mib > 0
        && let Err(e) = fill_page_cache(&opts.page_cache_dir, opts.page_cache_mib)
    {
        eprintln!("stand-in: page cache: {e}");
        return ExitCode::from(1);
    }
    if opts.alloc_mib > 0 || opts.grow_to_mib > 0 {
        let (from, to, step) = (
            opts.alloc_mib,
            opts.grow_to_mib.max(opts.alloc_mib),
            opts.grow_step_mib,
        );
        let start_file = opts.grow_when.clone();
        thread::spawn(move || hold_memory(from, to, step, start_file));
    }

    if let Some(addr) = &opts.http {
        match TcpListener::bind(addr) {
            Ok(listener) => {
                println!("stand-in: serving HTTP on {addr}");
                thread::spawn(move || serve_http(listener));
            }
            Err(e) => {
                eprintln!("stand-in: --http {addr}: {e}");
                return ExitCode::from(1);
            }
        }
    }

    let wanted = Arc::new(AtomicUsize::new(0));
    let mut spawned = 0;
    set_spinners(&wanted, &mut spawned, opts.spin_threads, &wanted);
    let mut last_control = String::new();
    let started = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(200));
        let Some(path) = &opts.control else { continue };
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let text = text.trim().to_string();
        if text.is_empty() || text == last_control {
            continue;
        }
        match parse_mode(&text, opts.threads) {
            Ok(n) => {
                set_spinners(&wanted, &mut spawned, n, &wanted);
                println!(
                    "stand-in: pid={} mode {text:?} -> spinning={n} at {:.1}s",
                    std::process::id(),
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => eprintln!("stand-in: control file {path}: {e}"),
        }
        last_control = text;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("idle", 3), Ok(0));
        assert_eq!(parse_mode("spin", 3), Ok(3));
        assert_eq!(parse_mode(" spin 2\n", 3), Ok(2));
        assert!(parse_mode("run", 1).is_err());
    }

    #[test]
    fn flags() {
        let args: Vec<String> = ["--mode", "spin", "--threads=2", "--concurrency", "4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let o = parse_args(&args).expect("valid flags");
        assert_eq!((o.spin_threads, o.threads), (2, 2));
        assert!(parse_args(&["--bogus".to_string(), "1".to_string()]).is_err());
    }
}
