//! The offline simulator (`sidecar-governor simulate`): replays per-proxy demand traces
//! ([`trace`]) through a model of the kernel's CPU throttling and memory limits ([`kernel`]) and
//! the agent's own controller — `decide_cpu`, `decide_memory`, `wants_stat`, `CpuBounds::new`,
//! `MemoryBounds::new`, fed by `sampler::cpu_observation` — tick by tick at the policy's
//! interval, then reports per proxy and in total what the policy reserved against the static
//! original limits and what it cost in throttling and memory stall ([`report`]), and can chart
//! one proxy ([`chart`]). Everything here is pure: the trace comes in parsed, the report and
//! the SVG go out as values; reading and writing files is the binary's job.
//!
//! Each tick, for each proxy that exists by then, the simulator lets the kernel model run from
//! the previous tick with the limits in force, reads the model's counters into the same
//! samples the agent reads from cgroup files, builds observations from two consecutive samples
//! as the agent does (the first tick only primes them), asks the controller, and writes its
//! decision back into the model. As in the agent, a proxy's CPU bounds are the policy's after
//! its namespace's `overrides` (a proxy named `namespace/pod` is in `namespace`), narrowed by
//! Envoy's `--concurrency` when the trace gives it; a namespace in mode `off` is left at its
//! originals. `dryRun` and mode `dry-run` are simulated as `on`: the simulation shows what the
//! agent would write. Left out: what a trace cannot show (discovery, conflicts with other
//! writers, write timeouts), push-storm absorption across proxies (the agent's detector is
//! private to its loop), and `cpu.max.burst` (it matters within a 100 ms period, far below a
//! tick).

pub mod chart;
pub mod kernel;
pub mod report;
pub mod trace;

use std::time::{Duration, Instant};

use crate::controller::{
    CpuBounds, CpuState, MemoryAction, MemoryBounds, MemoryObservation, MemoryState, decide_cpu,
    decide_memory, wants_stat,
};
use crate::policy::{CpuPolicy, Mode, PodControl, Policy};
use crate::sampler::{MemoryRaw, RawSample, cpu_observation, memory_deltas};

use chart::{Series, SeriesPoint};
use kernel::{CgroupModel, Demand};
use report::{ProxyReport, Report, Totals};
use trace::{ProxyTrace, Trace};

pub use chart::{ChartError, render_svg};
pub use trace::{TraceError, parse_trace};

/// Istio's default sidecar limits, the originals when neither trace nor flags give any.
pub const DEFAULT_CPU_LIMIT_MILLIS: u64 = 2000;
pub const DEFAULT_MEMORY_LIMIT_BYTES: u64 = 1 << 30;

/// How to run a simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Original `cpu.max` of proxies whose trace rows give none, in millicores.
    pub cpu_limit_millis: u64,
    /// Original `memory.max` of proxies whose trace rows give none, in bytes.
    pub memory_limit_bytes: u64,
    /// Record this proxy's demand and limits for a chart.
    pub chart: Option<String>,
    /// Names shown in the report.
    pub policy_name: String,
    pub trace_name: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cpu_limit_millis: DEFAULT_CPU_LIMIT_MILLIS,
            memory_limit_bytes: DEFAULT_MEMORY_LIMIT_BYTES,
            chart: None,
            policy_name: "default".into(),
            trace_name: "trace".into(),
        }
    }
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("simulate: {what} must be greater than 0")]
    ZeroLimit { what: &'static str },
    #[error("simulate --chart: no proxy `{name}` in the trace (it has: {known})")]
    UnknownProxy { name: String, known: String },
}

/// What a simulation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub report: Report,
    /// The charted proxy's record, when one was asked for.
    pub series: Option<Series>,
}

/// One proxy being replayed: its trace, the kernel model, the controller's state and the
/// agent's previous samples, and the figures so far.
struct Runner<'a> {
    trace: &'a ProxyTrace,
    /// The trace row in force at `at_us`.
    cursor: usize,
    /// The model has run up to here.
    at_us: u64,
    model: CgroupModel,
    /// Governed at all (its namespace's mode is not `off`).
    governed: bool,
    /// The policy's CPU tuning after the namespace's overrides.
    cpu_policy: CpuPolicy,
    cpu_bounds: CpuBounds,
    memory_bounds: MemoryBounds,
    cpu_state: CpuState,
    memory_state: MemoryState,
    prev_cpu: Option<RawSample>,
    prev_memory: Option<MemoryRaw>,
    report: ProxyReport,
    series: Option<Vec<SeriesPoint>>,
}

impl<'a> Runner<'a> {
    fn new(trace: &'a ProxyTrace, policy: &Policy, options: &Options, chart: bool) -> Self {
        let cpu_limit = trace.cpu_limit_millis.unwrap_or(options.cpu_limit_millis);
        let memory_limit = trace
            .memory_limit_bytes
            .unwrap_or(options.memory_limit_bytes);
        let model = CgroupModel::new(cpu_limit, memory_limit);
        let namespace = trace.name.split_once('/').map_or("", |(ns, _)| ns);
        let effective = policy.effective(namespace, &PodControl::default());
        Runner {
            trace,
            cursor: 0,
            at_us: trace.start_us(),
            // As the agent: the original is what cpu.max held at discovery, narrowed by Envoy's
            // worker count; memory.high starts at `max` under the container's memory.max.
            cpu_bounds: CpuBounds::new(&effective.cpu, model.cpu_max().millis())
                .with_concurrency(trace.concurrency, effective.cpu.per_worker_min_millis),
            governed: effective.mode != Mode::Off,
            cpu_policy: effective.cpu,
            memory_bounds: MemoryBounds::new(&policy.memory, Some(model.memory_max()), None),
            model,
            cpu_state: CpuState::default(),
            memory_state: MemoryState::default(),
            prev_cpu: None,
            prev_memory: None,
            report: ProxyReport::new(
                &trace.name,
                cpu_limit,
                memory_limit,
                effective.mode != Mode::Off,
            ),
            series: chart.then(Vec::new),
        }
    }

    /// Runs the model up to `to_us` (one tick's interval), adding up the figures.
    fn advance(&mut self, to_us: u64) {
        if to_us <= self.at_us {
            return;
        }
        let from = self.at_us;
        let points = &self.trace.points;
        let (mut over_quota, mut over_high) = (false, false);
        let (mut peak_cpu, mut peak_memory) = (0.0f64, 0u64);
        let mut last = None;
        while self.at_us < to_us {
            while points
                .get(self.cursor + 1)
                .is_some_and(|p| p.at_us <= self.at_us)
            {
                self.cursor += 1;
            }
            let point = points[self.cursor];
            let until = points
                .get(self.cursor + 1)
                .map_or(to_us, |p| p.at_us.min(to_us));
            let demand = Demand {
                cpu_millis: point.cpu_millis,
                memory_bytes: point.memory_bytes,
                unreclaimable_bytes: point.unreclaimable_bytes,
            };
            let e = self.model.run(&demand, until - self.at_us);
            self.report.add(&e, point.cpu_millis);
            over_quota |= e.over_quota;
            over_high |= e.over_limit;
            peak_cpu = peak_cpu.max(point.cpu_millis);
            peak_memory = peak_memory.max(point.memory_bytes);
            last = Some(e);
            self.at_us = until;
        }
        self.report.close_tick(over_quota, over_high);
        if let (Some(series), Some(e)) = (self.series.as_mut(), last) {
            series.push(SeriesPoint {
                start_s: from as f64 / 1e6,
                end_s: to_us as f64 / 1e6,
                cpu_demand_millis: peak_cpu,
                cpu_quota_millis: e
                    .quota_millis
                    .map_or(self.report.cpu_limit_millis as f64, |q| q as f64),
                memory_demand_bytes: peak_memory as f64,
                memory_limit_bytes: e.memory_limit_bytes as f64,
            });
        }
    }

    /// One control tick at `at`, as the agent's loop does it: sample, observe against the
    /// previous sample, decide, write.
    fn tick(&mut self, at: Instant, policy: &Policy) {
        self.model.end_tick();
        if !self.governed {
            return;
        }

        // CPU.
        let sample = RawSample {
            at,
            cpu: self.model.cpu_stat(),
            cpu_max: self.model.cpu_max(),
            cpu_pressure: Some(self.model.cpu_pressure()),
        };
        let in_force = sample.cpu_max.millis().unwrap_or(self.cpu_bounds.ceiling);
        let obs = self
            .prev_cpu
            .as_ref()
            .and_then(|prev| cpu_observation(prev, &sample, in_force));
        self.prev_cpu = Some(sample);
        if let Some(obs) = obs
            && let Some(d) =
                decide_cpu(&mut self.cpu_state, &obs, self.cpu_bounds, &self.cpu_policy)
        {
            let now_max = self.model.set_cpu_millis(d.quota_millis);
            self.prev_cpu = Some(RawSample {
                cpu_max: now_max,
                ..sample
            });
            self.report.cpu.actions.record(d.direction, d.reason);
        }

        // Memory.
        if !policy.memory.enabled {
            return;
        }
        let raw = MemoryRaw {
            at,
            current: self.model.memory_current(),
            high: self.model.memory_high(),
            events: self.model.memory_events(),
            pressure: Some(self.model.memory_pressure()),
        };
        let deltas = self
            .prev_memory
            .as_ref()
            .and_then(|prev| memory_deltas(prev, &raw));
        self.prev_memory = Some(raw);
        let Some((elapsed, events, pressure)) = deltas else {
            return;
        };
        let p = &policy.memory;
        let stat = wants_stat(&self.memory_state, elapsed, raw.current, raw.high, p)
            .then(|| self.model.memory_stat());
        let obs = MemoryObservation {
            elapsed,
            current: raw.current,
            high: raw.high,
            pressure_some: pressure,
            events,
            stat,
        };
        let Some(d) = decide_memory(&mut self.memory_state, &obs, self.memory_bounds, p) else {
            return;
        };
        match d.action {
            MemoryAction::SetHigh(bytes) => {
                let now_high = self.model.set_memory_high(bytes);
                if let Some(prev) = self.prev_memory.as_mut() {
                    prev.high = now_high;
                }
            }
            MemoryAction::Reclaim(bytes) => {
                self.report.memory.reclaimed_bytes += self.model.reclaim(bytes);
            }
        }
        self.report.memory.actions.record(d.direction, d.reason);
    }

    fn finish(mut self, policy_name: &str) -> (ProxyReport, Option<Series>) {
        let events = self.model.memory_events();
        let m = &mut self.report.memory;
        (m.high_events, m.max_events, m.oom_kills) = (events.high, events.max, events.oom_kill);
        self.report.final_cpu_millis = self.model.cpu_max().millis();
        self.report.final_memory_high_bytes = self.model.memory_high();
        let series = self.series.map(|points| Series {
            proxy: self.report.proxy.clone(),
            policy: policy_name.to_string(),
            cpu_original_millis: self.report.cpu_limit_millis,
            memory_original_bytes: self.report.memory_limit_bytes,
            points,
        });
        (self.report, series)
    }
}

/// Replays `trace` under `policy`.
pub fn simulate(
    policy: &Policy,
    trace: &Trace,
    options: &Options,
) -> Result<Outcome, SimulateError> {
    if options.cpu_limit_millis == 0 {
        return Err(SimulateError::ZeroLimit {
            what: "the CPU limit",
        });
    }
    if options.memory_limit_bytes == 0 {
        return Err(SimulateError::ZeroLimit {
            what: "the memory limit",
        });
    }
    if let Some(name) = &options.chart
        && trace.proxy(name).is_none()
    {
        return Err(SimulateError::UnknownProxy {
            name: name.clone(),
            known: trace
                .proxies
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut runners: Vec<Runner<'_>> = trace
        .proxies
        .iter()
        .map(|p| {
            let chart = options.chart.as_deref() == Some(p.name.as_str());
            Runner::new(p, policy, options, chart)
        })
        .collect();

    // Ticks at whole multiples of the interval, like the agent's timer; the stretch after the
    // last tick still counts in the figures.
    let interval_us = (policy.interval.as_micros() as u64).max(1);
    let base = Instant::now();
    let mut tick_us = 0u64;
    while tick_us <= trace.end_us {
        let at = base + Duration::from_micros(tick_us);
        for r in runners.iter_mut().filter(|r| r.trace.start_us() <= tick_us) {
            r.advance(tick_us);
            r.tick(at, policy);
        }
        tick_us += interval_us;
    }
    let mut proxies = Vec::with_capacity(runners.len());
    let mut series = None;
    for mut r in runners {
        r.advance(trace.end_us);
        let (report, s) = r.finish(&options.policy_name);
        proxies.push(report);
        series = series.or(s);
    }
    let mut report = Report {
        policy: options.policy_name.clone(),
        trace: options.trace_name.clone(),
        interval_seconds: policy.interval.as_secs_f64(),
        duration_seconds: trace.end_us as f64 / 1e6,
        memory_governed: policy.memory.enabled,
        proxies,
        total: Totals::default(),
    };
    report.finish();
    Ok(Outcome { report, series })
}

#[cfg(test)]
mod tests;
