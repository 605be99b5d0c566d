//! The reaction-time probe of the latency benchmark (`scripts/vm/scenarios/latency.sh`, issue 11).
//! Standard library only; built into the VM's initramfs like the stand-in proxy.
//!
//! ```text
//! throttle_probe reaction --cgroup DIR --floor QUOTA_US --bursts N [--max-bursts 2N] [--poll-ms 3]
//!                [--settle-ms 2000] [--jitter-ms 1000] [--floor-wait-ms 120000] -- LOAD [ARGS...]
//! throttle_probe quota-avg --cgroup DIR --for-ms MS [--every-ms 250]
//! ```
//!
//! `reaction`: until N bursts are timed (or `--max-bursts` were run), wait until the governed
//! cgroup's `cpu.max` quota has been at the floor (QUOTA_US, e.g. `10000` for 100m at the
//! 100 ms period) for `--settle-ms` plus a random
//! 0..`--jitter-ms` (the agent wrote the floor on a tick: without it every burst would start
//! at the same phase of the agent's tick, and the distribution would be one value), run LOAD (a
//! command that puts load on the proxy for a while, e.g. `wrk -d 3s ...`) and poll `cpu.stat`
//! (`nr_throttled`) and `cpu.max` every `--poll-ms` until the quota rises above the floor or
//! LOAD exits. One line per burst:
//!
//! ```text
//! PROBE burst=3 load_to_throttle_ms=41 throttle_to_raise_ms=1012 load_to_raise_ms=1053 raised=yes raised_to=20000 polls=350 poll_avg_ms=3.0
//! ```
//!
//! (`poll_avg_ms`: the interval the polls really had, sleep and reads included: the timing's
//! resolution.)
//!
//! `throttle_to_raise_ms` is the reaction: from the first poll that saw `nr_throttled` move while
//! the quota was at the floor (the kernel counts a throttled period when the period timer
//! refills the quota, so this lags the start of throttling by at most one period) to the first
//! poll that saw the quota above the floor. A burst whose LOAD ended before any raise is a miss
//! (`raised=no`); one raised before any throttled period is counted as `unthrottled` (it has no
//! reaction to time, so it does not count toward N). After a raise LOAD is left to finish (it
//! has its own duration) before the next burst. Last, a summary over the timed bursts
//! (`raised`; nearest-rank percentiles), `bursts` being all that were run:
//!
//! ```text
//! PROBE-SUMMARY bursts=50 raised=50 misses=0 unthrottled=0 p50_ms=1010 p99_ms=1990 max_ms=2003 load_p50_ms=1060 load_p99_ms=2050 poll_avg_ms=3.1
//! ```
//!
//! Exit status 0 when every burst started from the floor (misses are reported, not an error),
//! 1 when the quota never settled at the floor within `--floor-wait-ms` (the summary still
//! prints what was measured), 2 on bad arguments or unreadable files.
//!
//! `quota-avg`: sample `cpu.max` every `--every-ms` for `--for-ms` and print
//! `QUOTA-AVG avg_m=412 min_m=100 max_m=2000 samples=160 unlimited=0` (millicores; samples
//! reading `max` are counted in `unlimited` and left out of the average).

use std::process::{Child, Command, ExitCode};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  throttle_probe reaction --cgroup DIR --floor QUOTA_US --bursts N [--max-bursts 2N] [--poll-ms 3] [--settle-ms 2000] [--jitter-ms 1000] [--floor-wait-ms 120000] -- LOAD [ARGS...]
  throttle_probe quota-avg --cgroup DIR --for-ms MS [--every-ms 250]";

/// `cpu.max`: the quota in microseconds (`None` for `max`) and the period.
fn read_cpu_max(dir: &str) -> Result<(Option<u64>, u64), String> {
    let text = std::fs::read_to_string(format!("{dir}/cpu.max"))
        .map_err(|e| format!("{dir}/cpu.max: {e}"))?;
    parse_cpu_max(&text).ok_or_else(|| format!("{dir}/cpu.max: cannot parse {text:?}"))
}

fn parse_cpu_max(text: &str) -> Option<(Option<u64>, u64)> {
    let mut words = text.split_whitespace();
    let quota = match words.next()? {
        "max" => None,
        q => Some(q.parse().ok()?),
    };
    let period = words.next()?.parse().ok()?;
    Some((quota, period))
}

/// A field of `cpu.stat`.
fn read_stat(dir: &str, field: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("{dir}/cpu.stat"))
        .map_err(|e| format!("{dir}/cpu.stat: {e}"))?;
    parse_stat(&text, field).ok_or_else(|| format!("{dir}/cpu.stat: no {field}"))
}

fn parse_stat(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == field {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
fn percentile(sorted: &[u64], p: u64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as u64).div_ceil(100).max(1) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The mean interval of `polls` polls over `polled`, in milliseconds with one decimal.
fn poll_avg(polled: Duration, polls: u64) -> String {
    if polls == 0 {
        return "-".to_string();
    }
    format!("{:.1}", polled.as_secs_f64() * 1000.0 / polls as f64)
}

fn ms_since(t0: Instant, t: Instant) -> u64 {
    t.duration_since(t0).as_millis() as u64
}

#[derive(Debug, Default)]
struct Flags {
    cgroup: Option<String>,
    floor: Option<u64>,
    bursts: u64,
    max_bursts: Option<u64>,
    poll_ms: u64,
    settle_ms: u64,
    jitter_ms: u64,
    floor_wait_ms: u64,
    for_ms: u64,
    every_ms: u64,
    load: Vec<String>,
}

fn parse_flags(args: &[String]) -> Result<Flags, String> {
    let mut f = Flags {
        bursts: 1,
        poll_ms: 3,
        settle_ms: 2000,
        jitter_ms: 1000,
        floor_wait_ms: 120_000,
        every_ms: 250,
        ..Flags::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--" {
            f.load = it.cloned().collect();
            break;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag}: missing value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag}: {value:?}: {e}"))
        };
        match flag.as_str() {
            "--cgroup" => f.cgroup = Some(value.clone()),
            "--floor" => f.floor = Some(number()?),
            "--bursts" => f.bursts = number()?,
            "--max-bursts" => f.max_bursts = Some(number()?),
            "--poll-ms" => f.poll_ms = number()?.max(1),
            "--settle-ms" => f.settle_ms = number()?,
            "--jitter-ms" => f.jitter_ms = number()?,
            "--floor-wait-ms" => f.floor_wait_ms = number()?,
            "--for-ms" => f.for_ms = number()?,
            "--every-ms" => f.every_ms = number()?.max(1),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok(f)
}

/// A small xorshift generator, seeded from the clock: the jitter needs no better.
struct Rng(u64);

impl Rng {
    fn from_clock() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    /// Uniform-enough in 0..=max.
    fn below(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % (max + 1)
    }
}

/// Wait until the quota has read `floor` continuously for `settle`; false after `limit`.
fn wait_at_floor(dir: &str, floor: u64, settle: Duration, limit: Duration, poll: Duration) -> bool {
    let start = Instant::now();
    let mut since: Option<Instant> = None;
    while start.elapsed() < limit {
        let at_floor = matches!(read_cpu_max(dir), Ok((Some(q), _)) if q == floor);
        let now = Instant::now();
        if at_floor {
            let s = *since.get_or_insert(now);
            if now.duration_since(s) >= settle {
                return true;
            }
        } else {
            since = None;
        }
        thread::sleep(poll.max(Duration::from_millis(20)));
    }
    false
}

/// What one burst showed.
#[derive(Debug, Default)]
struct Burst {
    load_to_throttle_ms: Option<u64>,
    throttle_to_raise_ms: Option<u64>,
    load_to_raise_ms: Option<u64>,
    raised_to: Option<u64>,
    polls: u64,
    /// How long the polling ran (load start to the raise or the load's end).
    polled: Duration,
}

fn spawn_load(load: &[String]) -> Result<Child, String> {
    Command::new(&load[0])
        .args(&load[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", load[0]))
}

fn one_burst(dir: &str, floor: u64, poll: Duration, load: &[String]) -> Result<Burst, String> {
    let n0 = read_stat(dir, "nr_throttled")?;
    let mut child = spawn_load(load)?;
    let t_load = Instant::now();
    let mut b = Burst::default();
    let mut t_throttle: Option<Instant> = None;
    let mut last_n = n0;
    loop {
        thread::sleep(poll);
        b.polls += 1;
        let n = read_stat(dir, "nr_throttled")?;
        let (quota, _) = read_cpu_max(dir)?;
        let now = Instant::now();
        let at_floor = quota == Some(floor);
        if t_throttle.is_none() && n > last_n && at_floor {
            t_throttle = Some(now);
            b.load_to_throttle_ms = Some(ms_since(t_load, now));
        }
        last_n = n;
        b.polled = now.duration_since(t_load);
        if quota.is_none_or(|q| q > floor) {
            b.load_to_raise_ms = Some(ms_since(t_load, now));
            b.throttle_to_raise_ms = t_throttle.map(|t| ms_since(t, now));
            b.raised_to = quota.or(Some(u64::MAX));
            break;
        }
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Ok(b);
        }
    }
    child.wait().map_err(|e| e.to_string())?;
    Ok(b)
}

fn reaction(f: &Flags) -> Result<bool, String> {
    let dir = f.cgroup.as_deref().ok_or("--cgroup is required")?;
    let floor = f.floor.ok_or("--floor is required")?;
    if f.load.is_empty() {
        return Err(format!("no LOAD command after --\n{USAGE}"));
    }
    read_cpu_max(dir)?;
    read_stat(dir, "nr_throttled")?;
    let poll = Duration::from_millis(f.poll_ms);
    let mut reactions = Vec::new();
    let mut load_reactions = Vec::new();
    let (mut misses, mut unthrottled, mut done) = (0u64, 0u64, 0u64);
    let mut settled = true;
    let (mut polls, mut polled) = (0u64, Duration::ZERO);
    let mut rng = Rng::from_clock();
    let max_bursts = f.max_bursts.unwrap_or(f.bursts * 2).max(f.bursts);
    for i in 1..=max_bursts {
        if reactions.len() as u64 + misses >= f.bursts {
            break;
        }
        if !wait_at_floor(
            dir,
            floor,
            Duration::from_millis(f.settle_ms + rng.below(f.jitter_ms)),
            Duration::from_millis(f.floor_wait_ms),
            poll,
        ) {
            let (q, _) = read_cpu_max(dir)?;
            println!(
                "PROBE burst={i} not at the floor {floor} within {} ms (quota {})",
                f.floor_wait_ms,
                q.map_or_else(|| "max".to_string(), |q| q.to_string())
            );
            settled = false;
            break;
        }
        let b = one_burst(dir, floor, poll, &f.load)?;
        done += 1;
        polls += b.polls;
        polled += b.polled;
        match (b.load_to_raise_ms, b.throttle_to_raise_ms) {
            (None, _) => misses += 1,
            (Some(l), None) => {
                unthrottled += 1;
                load_reactions.push(l);
            }
            (Some(l), Some(r)) => {
                reactions.push(r);
                load_reactions.push(l);
            }
        }
        println!(
            "PROBE burst={i} load_to_throttle_ms={} throttle_to_raise_ms={} load_to_raise_ms={} raised={} raised_to={} polls={} poll_avg_ms={}",
            fmt_opt(b.load_to_throttle_ms),
            fmt_opt(b.throttle_to_raise_ms),
            fmt_opt(b.load_to_raise_ms),
            if b.load_to_raise_ms.is_some() {
                "yes"
            } else {
                "no"
            },
            fmt_opt(b.raised_to),
            b.polls,
            poll_avg(b.polled, b.polls),
        );
    }
    reactions.sort_unstable();
    load_reactions.sort_unstable();
    println!(
        "PROBE-SUMMARY bursts={done} raised={} misses={misses} unthrottled={unthrottled} p50_ms={} p99_ms={} max_ms={} load_p50_ms={} load_p99_ms={} poll_avg_ms={}",
        reactions.len(),
        fmt_opt(percentile(&reactions, 50)),
        fmt_opt(percentile(&reactions, 99)),
        fmt_opt(reactions.last().copied()),
        fmt_opt(percentile(&load_reactions, 50)),
        fmt_opt(percentile(&load_reactions, 99)),
        poll_avg(polled, polls),
    );
    Ok(settled)
}

fn quota_avg(f: &Flags) -> Result<(), String> {
    let dir = f.cgroup.as_deref().ok_or("--cgroup is required")?;
    let every = Duration::from_millis(f.every_ms);
    let end = Instant::now() + Duration::from_millis(f.for_ms);
    let mut next = Instant::now();
    let (mut sum, mut n, mut unlimited) = (0u64, 0u64, 0u64);
    let (mut min, mut max) = (u64::MAX, 0u64);
    while Instant::now() < end {
        match read_cpu_max(dir)? {
            (Some(q), period) if period > 0 => {
                let m = q * 1000 / period;
                sum += m;
                n += 1;
                min = min.min(m);
                max = max.max(m);
            }
            _ => unlimited += 1,
        }
        // Fixed-rate sampling: the next sample is due one period after the last one was.
        next += every;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
    let avg = sum.checked_div(n);
    println!(
        "QUOTA-AVG avg_m={} min_m={} max_m={} samples={n} unlimited={unlimited}",
        fmt_opt(avg),
        fmt_opt((n > 0).then_some(min)),
        fmt_opt((n > 0).then_some(max)),
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let flags = match parse_flags(rest) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("throttle_probe: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd.as_str() {
        "reaction" => reaction(&flags).map(|settled| if settled { 0 } else { 1 }),
        "quota-avg" => quota_avg(&flags).map(|()| 0),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("throttle_probe: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max() {
        assert_eq!(parse_cpu_max("10000 100000\n"), Some((Some(10000), 100000)));
        assert_eq!(parse_cpu_max("max 100000\n"), Some((None, 100000)));
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn stat() {
        let text = "usage_usec 5\nnr_periods 10\nnr_throttled 3\nthrottled_usec 900\n";
        assert_eq!(parse_stat(text, "nr_throttled"), Some(3));
        assert_eq!(parse_stat(text, "throttled_usec"), Some(900));
        assert_eq!(parse_stat(text, "nr_bursts"), None);
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50), Some(2));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn poll_average() {
        assert_eq!(poll_avg(Duration::from_millis(300), 100), "3.0");
        assert_eq!(poll_avg(Duration::ZERO, 0), "-");
    }

    #[test]
    fn jitter_in_range() {
        let mut r = Rng(12345);
        let v: Vec<u64> = (0..1000).map(|_| r.below(1000)).collect();
        assert!(v.iter().all(|x| *x <= 1000));
        assert!(v.iter().any(|x| *x < 250) && v.iter().any(|x| *x > 750));
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn flags() {
        let args: Vec<String> = [
            "--cgroup", "/x", "--floor", "10000", "--", "wrk", "-d", "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = parse_flags(&args).expect("valid");
        assert_eq!(f.cgroup.as_deref(), Some("/x"));
        assert_eq!(f.floor, Some(10000));
        assert_eq!(f.load, vec!["wrk", "-d", "3s"]);
        assert!(parse_flags(&["--bogus".into(), "1".into()]).is_err());
    }
}
