//! The offline simulator (`sidecar-governor simulate`): replays per-proxy demand traces
//! ([`trace`]) through a model of the kernel's CPU throttling and memory limits ([`kernel`]) and
//! the agent's own per-proxy core ([`crate::proxy::ProxyCore`]: the same step, ownership record
//! and back-offs as the agent, over the model as its I/O seam) and the agent's push-storm rule
//! ([`crate::controller::storm::hold_back`]), tick by tick at the policy's interval; then it
//! reports per proxy and in total what the policy reserved against the static original limits
//! and what it cost in throttling and memory stall ([`report`]), and can chart one proxy
//! ([`chart`]). Everything here is pure: the trace comes in parsed, the report and the SVG go
//! out as values; reading and writing files is the binary's job.
//!
//! Each tick, the kernel model of every proxy that exists by then runs from the previous tick
//! with the limits in force; then, as in the agent's loop, every proxy's core samples the
//! model and plans, the push-storm rule holds back growth when many proxies want it at once,
//! and the plans are staged in each proxy's record and written back into the model. As in the
//! agent, a proxy's CPU bounds are the policy's after its namespace's `overrides` (a proxy
//! named `namespace/pod` is in `namespace`), narrowed by Envoy's `--concurrency` when the trace
//! gives it; a namespace in mode `off` is left at its originals. `dryRun` and mode `dry-run`
//! are simulated as `on`: the simulation shows what the agent would write. Left out: what a
//! trace cannot show (discovery, conflicts with other writers, write timeouts), pod cgroups
//! (`cpu.allowAboveLimit` raises no pod here), and `cpu.max.burst` (it matters within a
//! 100 ms period, far below a tick).

pub mod chart;
pub mod kernel;
pub mod report;
pub mod trace;

use std::time::{Duration, Instant};

use crate::controller::storm::{self, StormDetector};
use crate::identity::Identity;
use crate::ownership::ContainerRecord;
use crate::policy::{CpuPolicy, Mode, PodControl, Policy};
use crate::proxy::{CpuPlan, MemoryCore, MemoryPlan, ProxyCore, ProxyIo, Settings};

use chart::{Series, SeriesPoint};
use kernel::{CgroupModel, Demand, ModelIo};
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

/// One proxy being replayed: its trace, the kernel model, the agent's per-proxy core and its
/// ownership record, and the figures so far.
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
    core: ProxyCore,
    record: ContainerRecord,
    report: ProxyReport,
    series: Option<Vec<SeriesPoint>>,
}

impl<'a> Runner<'a> {
    fn new(trace: &'a ProxyTrace, policy: &Policy, options: &Options, chart: bool) -> Self {
        let cpu_limit = trace.cpu_limit_millis.unwrap_or(options.cpu_limit_millis);
        let memory_limit = trace
            .memory_limit_bytes
            .unwrap_or(options.memory_limit_bytes);
        let mut model = CgroupModel::new(cpu_limit, memory_limit);
        let namespace = trace.name.split_once('/').map_or("", |(ns, _)| ns);
        let effective = policy.effective(namespace, &PodControl::default());
        // As the agent: the originals are what the files held when the proxy was found.
        let mut reclaimed = 0;
        let mut io = ModelIo {
            model: &mut model,
            memory: policy.memory.enabled,
            reclaimed: &mut reclaimed,
        };
        let mem = match (io.sample_memory(Instant::now()), io.read_memory_max()) {
            (Some(Ok(first)), Ok(limit)) => Some((MemoryCore::new(limit), first.high)),
            _ => None,
        };
        let id = Identity {
            namespace: namespace.to_string(),
            pod: trace.name.clone(),
            ..Identity::default()
        };
        let (mem, found_high) = mem.unzip();
        let record = ContainerRecord::untouched(id, model.cpu_max(), None, found_high, 0);
        Runner {
            trace,
            cursor: 0,
            at_us: trace.start_us(),
            governed: effective.mode != Mode::Off,
            cpu_policy: effective.cpu,
            model,
            core: ProxyCore::new(mem),
            record,
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

    /// Samples and plans at `at` through the agent's per-proxy core.
    fn step(&mut self, at: Instant, policy: &Policy) -> (Option<CpuPlan>, Option<MemoryPlan>) {
        self.model.end_tick();
        if !self.governed {
            return (None, None);
        }
        let settings = Settings {
            cpu: &self.cpu_policy,
            memory: &policy.memory,
            dry_run: false,
            concurrency: self.trace.concurrency,
            conflict_backoff: policy.cpu.conflict_backoff,
            runtime_identity: true,
            protected: false,
        };
        let mut io = ModelIo {
            model: &mut self.model,
            memory: policy.memory.enabled,
            reclaimed: &mut self.report.memory.reclaimed_bytes,
        };
        let out = self.core.step(&mut io, &mut self.record, &settings, at);
        (out.cpu, out.memory)
    }

    /// Stages and writes one CPU plan into the model, as the agent does.
    fn apply_cpu(&mut self, plan: CpuPlan, policy: &Policy) {
        let (direction, reason) = (plan.decision.direction, plan.decision.reason);
        let write = self.core.stage_cpu(plan, None, None, &mut self.record);
        let mut io = ModelIo {
            model: &mut self.model,
            memory: policy.memory.enabled,
            reclaimed: &mut self.report.memory.reclaimed_bytes,
        };
        if self
            .core
            .apply_cpu(&mut io, &write, Some(&mut self.record))
            .is_ok()
        {
            self.report.cpu.actions.record(direction, reason);
        }
    }

    /// Stages and writes one memory plan into the model, as the agent does.
    fn apply_memory(&mut self, plan: &MemoryPlan, at: Instant, policy: &Policy) {
        self.core.stage_memory(plan, &mut self.record);
        let p = &policy.memory;
        let mut io = ModelIo {
            model: &mut self.model,
            memory: p.enabled,
            reclaimed: &mut self.report.memory.reclaimed_bytes,
        };
        let applied = self.core.apply_memory(
            &mut io,
            plan,
            Some(&mut self.record),
            p.write_timeout,
            p.timeout_backoff,
            at,
        );
        if applied.is_ok() {
            let d = &plan.decision;
            self.report.memory.actions.record(d.direction, d.reason);
        }
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
    let mut storms = StormDetector::default();
    let index: std::collections::HashMap<&str, usize> = trace
        .proxies
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let mut push_storms = 0u64;
    while tick_us <= trace.end_us {
        let at = base + Duration::from_micros(tick_us);
        let mut cpu_plans: Vec<(String, CpuPlan)> = Vec::new();
        let mut memory_plans = Vec::new();
        let mut governed = 0;
        for (i, r) in runners.iter_mut().enumerate() {
            if r.trace.start_us() > tick_us {
                continue;
            }
            r.advance(tick_us);
            governed += usize::from(r.governed);
            let (cpu, memory) = r.step(at, policy);
            if let Some(p) = cpu {
                cpu_plans.push((r.trace.name.clone(), p));
            }
            if let Some(p) = memory {
                memory_plans.push((i, p));
            }
        }
        let state = storm::hold_back(
            &mut storms,
            at,
            &mut cpu_plans,
            governed,
            &policy.cpu.push_storm,
        );
        push_storms += u64::from(state == storm::Storm::Started);
        for (name, plan) in cpu_plans {
            if let Some(&i) = index.get(name.as_str()) {
                runners[i].apply_cpu(plan, policy);
            }
        }
        for (i, plan) in memory_plans {
            runners[i].apply_memory(&plan, at, policy);
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
        push_storms,
        proxies,
        total: Totals::default(),
    };
    report.finish();
    Ok(Outcome { report, series })
}

#[cfg(test)]
mod tests;
