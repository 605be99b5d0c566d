//! The policy: what the operator writes (YAML, Kubernetes conventions) and the validated,
//! typed [`Policy`] the controller reads. Parsing is strict — unknown fields, bad quantities,
//! zero durations and contradictory bounds are errors naming the field — and every field has a
//! default, so `interval: 1s` alone is a valid policy. No I/O but [`Policy::load`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::quantity::{
    QuantityError, format_bytes, format_cpu_millis, format_duration, parse_bytes, parse_cpu_millis,
    parse_duration,
};

/// The policy used when no file is given: the documented defaults.
pub const DEFAULT_POLICY_YAML: &str = include_str!("../daemonset/policy.yaml");

/// Linux keeps 15 bytes of a process name in `/proc/PID/comm`.
const COMM_MAX: usize = 15;
/// The kernel's smallest quota (1000 us) at the default 100 ms period, in millicores.
const KERNEL_MIN_MILLIS: u64 = 10;

/// The range a duration field must lie in (both ends allowed), named in its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationBounds {
    pub min: Duration,
    pub max: Duration,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const fn bounds(min: Duration, max: Duration) -> DurationBounds {
    DurationBounds { min, max }
}

/// Every duration field and its range: long enough that the agent neither fights another
/// writer nor busy-loops, short enough that a typo (`277777h`) cannot park a container or
/// stall the loop for good. The README's policy table lists the same ranges.
pub const DURATION_BOUNDS: &[(&str, DurationBounds)] = &[
    ("interval", bounds(ms(100), secs(600))),
    ("match.rescanInterval", bounds(secs(1), secs(3600))),
    ("cpu.scaleDownAfter", bounds(secs(1), secs(24 * 3600))),
    ("cpu.conflictBackoff", bounds(secs(1), secs(24 * 3600))),
    ("cpu.pushStorm.window", bounds(ms(100), secs(60))),
    ("cpu.pushStorm.grace", bounds(secs(1), secs(60))),
    // The kernel's own range for a PSI trigger's window (its stall must be shorter).
    ("cpu.wakeOnStall.window", bounds(ms(500), secs(10))),
    ("cpu.wakeOnStall.busyHalfLife", bounds(secs(10), secs(3600))),
    ("memory.settleAfter", bounds(secs(1), secs(3600))),
    ("memory.scaleDownAfter", bounds(secs(1), secs(24 * 3600))),
    ("memory.probeInterval", bounds(secs(1), secs(3600))),
    ("memory.writeTimeout", bounds(ms(10), secs(30))),
    ("memory.timeoutBackoff", bounds(secs(1), secs(24 * 3600))),
    ("memory.growth.window", bounds(secs(10), secs(24 * 3600))),
];

/// `cpu.pushStorm.minProxies`: a storm is several proxies, and a node holds a few thousand.
pub const MIN_PROXIES_BOUNDS: (u32, u32) = (2, 10_000);
/// The most entries in `match.processNames` and `match.containerNames`.
pub const MAX_NAMES: usize = 64;
/// The most entries in `match.excludeNamespaces` and in `overrides`.
pub const MAX_NAMESPACES: usize = 1024;

fn duration_bounds(path: &str) -> DurationBounds {
    DURATION_BOUNDS
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(bounds(ms(1), secs(24 * 3600)), |(_, b)| *b)
}

/// A bound as an operator writes it: `100ms`, `1s`, `10m`, `24h`.
fn format_bound(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() == 0 && s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format_duration(d)
    }
}

/// One problem with a policy, named by its field path (`cpu.min`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("read policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy{}: {}", origin(.path), list(.errors))]
    Invalid {
        path: Option<PathBuf>,
        errors: Vec<FieldError>,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl PolicyError {
    /// The individual problems (empty for read errors).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            PolicyError::Invalid { errors, .. } => errors,
            PolicyError::Read { .. } => &[],
        }
    }
}

/// A scalar that may be written as a string or a bare number (`max: 2` or `max: "2"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
}

impl Scalar {
    /// The value as a number: a bare YAML number or a quoted one (`0.6`, `"0.6"`), as
    /// quantity fields take them.
    fn number(&self) -> Result<f64, String> {
        match self {
            Scalar::Int(i) => Ok(*i as f64),
            Scalar::Float(f) => Ok(*f),
            Scalar::Text(t) => t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("`{t}` is not a number")),
        }
    }

    fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicy {
    interval: Option<Scalar>,
    dry_run: Option<bool>,
    restore_on_exit: Option<bool>,
    #[serde(rename = "match")]
    matching: Option<RawMatch>,
    cpu: Option<RawCpu>,
    memory: Option<RawMemory>,
    overrides: Option<Vec<RawOverride>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMemory {
    enabled: Option<bool>,
    min: Option<Scalar>,
    max: Option<Scalar>,
    settle_after: Option<Scalar>,
    headroom: Option<Scalar>,
    margin: Option<Scalar>,
    scale_down_after: Option<Scalar>,
    probe_interval: Option<Scalar>,
    step_down: Option<Scalar>,
    pressure_threshold: Option<Scalar>,
    shrink_with: Option<ShrinkWith>,
    write_timeout: Option<Scalar>,
    timeout_backoff: Option<Scalar>,
    growth: Option<RawGrowth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGrowth {
    enabled: Option<bool>,
    window: Option<Scalar>,
    min_growth: Option<Scalar>,
    steady: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPushStorm {
    min_proxies: Option<Scalar>,
    fraction: Option<Scalar>,
    window: Option<Scalar>,
    grace: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOverride {
    namespace: Option<String>,
    mode: Option<String>,
    cpu: Option<RawBounds>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBounds {
    min: Option<Scalar>,
    max: Option<Scalar>,
    allow_above_limit: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    process_names: Option<Vec<String>>,
    container_names: Option<Vec<String>>,
    exclude_namespaces: Option<Vec<String>>,
    ztunnel_namespaces: Option<Vec<String>>,
    rescan_interval: Option<Scalar>,
    include_gateways: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCpu {
    min: Option<Scalar>,
    max: Option<Scalar>,
    scale_down_after: Option<Scalar>,
    target_utilization: Option<Scalar>,
    scale_up_utilization: Option<Scalar>,
    scale_down_utilization: Option<Scalar>,
    throttled_ratio: Option<Scalar>,
    pressure_threshold: Option<Scalar>,
    step_up: Option<Scalar>,
    step_down: Option<Scalar>,
    conflict_backoff: Option<Scalar>,
    per_worker_min: Option<Scalar>,
    burst_ratio: Option<Scalar>,
    allow_above_limit: Option<bool>,
    push_storm: Option<RawPushStorm>,
    wake_on_stall: Option<RawWake>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawWake {
    enabled: Option<bool>,
    stall: Option<Scalar>,
    window: Option<Scalar>,
    busy_half_life: Option<Scalar>,
}

/// The validated policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Policy {
    /// Control tick.
    pub interval: Duration,
    /// Decide and export, write nothing.
    pub dry_run: bool,
    /// Put every original back on SIGTERM/SIGINT.
    pub restore_on_exit: bool,
    pub matching: MatchPolicy,
    pub cpu: CpuPolicy,
    pub memory: MemoryPolicy,
    /// Per-namespace mode and CPU bounds (at most one entry per namespace).
    pub overrides: Vec<NamespaceOverride>,
}

/// How a proxy is governed: its own dry run or no governing at all, per namespace (policy
/// `overrides`) or per pod (annotation `sidecar-governor.io/mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Governed: decisions are written.
    #[default]
    On,
    /// Decided and exported, never written.
    DryRun,
    /// Not governed; anything the agent changed is put back.
    Off,
}

impl Mode {
    /// `on`, `dry-run` or `off`.
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "on" => Some(Mode::On),
            "dry-run" => Some(Mode::DryRun),
            "off" => Some(Mode::Off),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::On => "on",
            Mode::DryRun => "dry-run",
            Mode::Off => "off",
        }
    }
}

/// One namespace's entry in `overrides`: replaces the policy's mode and CPU bounds there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NamespaceOverride {
    pub namespace: String,
    pub mode: Option<Mode>,
    pub cpu_min_millis: Option<u64>,
    pub cpu_max_millis: Option<u64>,
    /// Grants or withholds `cpu.allowAboveLimit` in this namespace (the policy's otherwise).
    /// Granting it trusts the namespace's pod authors with their pods' CPU.
    pub allow_above_limit: Option<bool>,
}

/// What the agent knows of a proxy that bounds what the policy may grant it: a pod's author
/// chooses its container names, process names, images and annotations, not its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Found through the runtime (CRI: its namespace, a container named in
    /// `match.containerNames`, a proxy process in it), not by a process name alone.
    pub runtime_identity: bool,
    /// The container's own CPU limit (its original `cpu.max`) in millicores; `None` =
    /// unlimited.
    pub limit_millis: Option<u64>,
}

/// Per-pod settings from the pod's annotations (read from the CRI sandbox), already
/// validated. `None` fields leave the namespace's or policy's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PodControl {
    pub mode: Option<Mode>,
    /// Narrows the floor: never below this (but never above the ceiling either).
    pub cpu_min_millis: Option<u64>,
    /// Narrows the ceiling: never above this.
    pub cpu_max_millis: Option<u64>,
}

/// Annotation: `off`, `dry-run` or `on`.
pub const ANNOTATION_MODE: &str = "sidecar-governor.io/mode";
/// Annotation: a CPU quantity the pod's proxy is never shrunk below.
pub const ANNOTATION_CPU_MIN: &str = "sidecar-governor.io/cpu-min";
/// Annotation: a CPU quantity the pod's proxy is never grown above.
pub const ANNOTATION_CPU_MAX: &str = "sidecar-governor.io/cpu-max";
/// Every annotation under this prefix must be one of the above.
pub const ANNOTATION_PREFIX: &str = "sidecar-governor.io/";

impl PodControl {
    /// Validates a pod's annotations (only keys under [`ANNOTATION_PREFIX`] are looked at).
    /// Any problem — an unknown key under the prefix, a bad mode or quantity, a minimum below
    /// the kernel's smallest quota or above the maximum — rejects them all: the caller logs
    /// the errors and leaves the pod at the policy's defaults.
    pub fn from_annotations<'a>(
        annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<PodControl, Vec<FieldError>> {
        let mut c = Checker::default();
        let mut control = PodControl::default();
        let mut ours: Vec<(&String, &String)> = annotations
            .into_iter()
            .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
            .collect();
        ours.sort();
        for (key, value) in ours {
            let value = value.trim();
            match key.as_str() {
                ANNOTATION_MODE => match Mode::parse(value) {
                    Some(m) => control.mode = Some(m),
                    None => c.fail(key, format!("`{value}` is not one of off, dry-run, on")),
                },
                ANNOTATION_CPU_MIN => {
                    control.cpu_min_millis = control.cpu_min_millis.or(c.cpu_bound(key, value));
                }
                ANNOTATION_CPU_MAX => {
                    control.cpu_max_millis = control.cpu_max_millis.or(c.cpu_bound(key, value));
                }
                _ => c.fail(
                    key,
                    format!(
                        "unknown annotation (known: {ANNOTATION_MODE}, {ANNOTATION_CPU_MIN}, {ANNOTATION_CPU_MAX})"
                    ),
                ),
            }
        }
        if let (Some(min), Some(max)) = (control.cpu_min_millis, control.cpu_max_millis)
            && min > max
        {
            c.fail(
                ANNOTATION_CPU_MIN,
                format!(
                    "must not exceed {ANNOTATION_CPU_MAX} ({} > {})",
                    format_cpu_millis(min),
                    format_cpu_millis(max)
                ),
            );
        }
        if c.errors.is_empty() {
            Ok(control)
        } else {
            Err(c.errors)
        }
    }
}

/// What governs one proxy: its mode and CPU bounds after namespace overrides and pod
/// annotations (the policy's tuning otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub mode: Mode,
    /// The namespace's tuning (the policy's after the namespace's override).
    pub cpu: CpuPolicy,
}

impl Effective {
    /// The CPU tuning of one proxy of this namespace: growth above the container's own
    /// limit only with a runtime identity (and the namespace's grant), and the pod's
    /// annotations narrowing the bounds — only within [the namespace's floor, the lower of the
    /// container's own limit and the namespace's ceiling]. Annotations outside that range are
    /// refused whole: the pod runs on the namespace's settings and the reason is returned.
    pub fn cpu_for(self, control: &PodControl, standing: Standing) -> (CpuPolicy, Option<String>) {
        let mut cpu = self.cpu;
        cpu.allow_above_limit &= standing.runtime_identity;
        let lo = cpu.min_millis;
        let hi = standing
            .limit_millis
            .map_or(cpu.max_millis, |l| l.min(cpu.max_millis));
        let asked = [
            (ANNOTATION_CPU_MIN, control.cpu_min_millis),
            (ANNOTATION_CPU_MAX, control.cpu_max_millis),
        ];
        for (name, value) in asked {
            if let Some(v) = value
                && !(lo..=hi).contains(&v)
            {
                return (
                    cpu,
                    Some(format!(
                        "{name}={} is outside {}..{} (the policy's floor to the container's own limit or the namespace's ceiling); the pod runs on its namespace's settings",
                        format_cpu_millis(v),
                        format_cpu_millis(lo),
                        format_cpu_millis(hi)
                    )),
                );
            }
        }
        if let Some(v) = control.cpu_min_millis {
            cpu.min_millis = cpu.min_millis.max(v);
        }
        if let Some(v) = control.cpu_max_millis {
            cpu.max_millis = cpu.max_millis.min(v);
        }
        cpu.min_millis = cpu.min_millis.min(cpu.max_millis);
        (cpu, None)
    }
}

/// Which processes and containers are proxies.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MatchPolicy {
    /// `/proc/PID/comm` values that mark a proxy process.
    pub process_names: Vec<String>,
    /// CRI container names that mark a proxy container.
    pub container_names: Vec<String>,
    /// Namespaces never governed.
    pub exclude_namespaces: Vec<String>,
    /// How often the full process scan runs (between scans, known proxies are re-checked).
    pub rescan_interval: Duration,
    /// Also govern gateways and waypoints (`pilot-agent proxy router|waypoint`).
    pub include_gateways: bool,
    /// Where Istio ambient's per-node `ztunnel` may run: a `ztunnel` process (when
    /// `processNames` includes it) is governed only there, identified by the runtime, as a
    /// node proxy (never below its own limit, no memory control).
    pub ztunnel_namespaces: Vec<String>,
}

/// The `/proc/PID/comm` of Istio ambient's per-node proxy.
pub const ZTUNNEL: &str = "ztunnel";

/// CPU bounds and control tuning.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CpuPolicy {
    /// Never below, in millicores.
    pub min_millis: u64,
    /// Never above (nor above the container's own original limit), in millicores.
    pub max_millis: u64,
    /// Low use must last this long before shrinking starts.
    pub scale_down_after: Duration,
    /// Quota is sized so that usage is this share of it.
    pub target_utilization: f64,
    /// Usage above this share of quota grows it at once.
    pub scale_up_utilization: f64,
    /// Usage below this share of quota counts as low use.
    pub scale_down_utilization: f64,
    /// Share of periods throttled (`nr_throttled/nr_periods`) that grows the quota at once.
    pub throttled_ratio: f64,
    /// Share of wall time with some task stalled on CPU (`cpu.pressure` some) that, with usage
    /// above target, grows the quota.
    pub pressure_threshold: f64,
    /// A growth adds at least this fraction of the current quota (1.0 = at least doubles).
    pub step_up: f64,
    /// A shrink removes at most this fraction of the current quota per tick.
    pub step_down: f64,
    /// After someone else changes `cpu.max`, leave the container alone this long.
    pub conflict_backoff: Duration,
    /// Envoy's `--concurrency N` workers each need at least this, in millicores: the floor is
    /// never below N times it, and quota above N+1 cores is never given (it buys nothing).
    pub per_worker_min_millis: u64,
    /// `cpu.max.burst` as a share of the quota (0 = leave burst alone).
    pub burst_ratio: f64,
    /// Grow above the container's own limit (up to `max`), raising the pod cgroup's
    /// `cpu.max` first and lowering it last (for pods with one governed proxy).
    pub allow_above_limit: bool,
    pub push_storm: PushStormPolicy,
    pub wake_on_stall: WakePolicy,
}

/// Growth between ticks: a PSI trigger on each governed proxy's `cpu.pressure` wakes the
/// loop when the proxy stalls, and that proxy alone is stepped (grow only).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WakePolicy {
    pub enabled: bool,
    /// The trigger fires when some task of the proxy stalled this long...
    pub stall: Duration,
    /// ...within this window (the kernel accepts 500ms to 10s).
    pub window: Duration,
    /// A woken proxy is raised to the quota it held when it was last busy; that level halves
    /// toward the floor every `busyHalfLife` of quiet.
    pub busy_half_life: Duration,
}

/// How a node-wide simultaneous spike (an xDS config push) is recognised and absorbed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PushStormPolicy {
    /// At least this many proxies must want to grow within `window`...
    pub min_proxies: u32,
    /// ...and at least this share of all governed proxies.
    pub fraction: f64,
    pub window: Duration,
    /// During a storm, growth is held back this long (burst absorbs the spike); a proxy
    /// still hot afterwards grows as usual.
    pub grace: Duration,
}

/// How `memory.shrinkWith` lowers memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShrinkWith {
    /// Lower `memory.high` step by step.
    High,
    /// Keep `memory.high` as a loose ceiling and ask `memory.reclaim` for bytes (Linux 5.19+).
    Reclaim,
}

/// `memory.high` bounds and control tuning.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryPolicy {
    /// Govern `memory.high` at all.
    pub enabled: bool,
    /// Never below, in bytes.
    pub min_bytes: u64,
    /// Never above (nor above the container's `memory.max`), in bytes.
    pub max_bytes: u64,
    /// A new proxy is watched this long before its first placement.
    pub settle_after: Duration,
    /// Placement and growth leave this share above use.
    pub headroom: f64,
    /// The floor is unreclaimable memory plus this, in bytes.
    pub margin_bytes: u64,
    /// Pressure must stay below target this long before probing down.
    pub scale_down_after: Duration,
    /// At most one downward step per this interval.
    pub probe_interval: Duration,
    /// A downward step removes this share.
    pub step_down: f64,
    /// Share of wall time with some task stalled on memory (`memory.pressure` some) above
    /// which `memory.high` is raised at once.
    pub pressure_threshold: f64,
    pub shrink_with: ShrinkWith,
    /// A `memory.high`/`memory.reclaim` write that takes longer is abandoned and counted.
    pub write_timeout: Duration,
    /// After a write timed out, leave the cgroup's memory alone this long.
    pub timeout_backoff: Duration,
    pub growth: GrowthPolicy,
}

/// Steady growth of a proxy's unreclaimable memory (the leak shape): reported (an Event and
/// a metric), and the proxy's `memory.high` no longer probed down while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GrowthPolicy {
    pub enabled: bool,
    /// Growth must hold over this whole window (sampled 30 times in it: one `memory.stat`
    /// read a proxy, at most one a tick)...
    pub window: Duration,
    /// ...adding at least this many bytes...
    pub min_growth_bytes: u64,
    /// ...with at least this share of the samples at or above the one before.
    pub steady: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            interval: Duration::from_secs(1),
            dry_run: false,
            restore_on_exit: true,
            matching: MatchPolicy {
                process_names: vec!["envoy".into(), "linkerd2-proxy".into()],
                container_names: vec!["istio-proxy".into(), "linkerd-proxy".into()],
                exclude_namespaces: Vec::new(),
                rescan_interval: Duration::from_secs(10),
                include_gateways: false,
                ztunnel_namespaces: vec!["istio-system".into()],
            },
            cpu: CpuPolicy {
                min_millis: 100,
                max_millis: 2000,
                scale_down_after: Duration::from_secs(30),
                target_utilization: 0.6,
                scale_up_utilization: 0.85,
                scale_down_utilization: 0.45,
                throttled_ratio: 0.05,
                pressure_threshold: 0.1,
                step_up: 1.0,
                step_down: 0.1,
                conflict_backoff: Duration::from_secs(120),
                per_worker_min_millis: 50,
                burst_ratio: 0.0,
                allow_above_limit: false,
                push_storm: PushStormPolicy {
                    min_proxies: 3,
                    fraction: 0.5,
                    window: Duration::from_secs(3),
                    grace: Duration::from_secs(10),
                },
                wake_on_stall: WakePolicy {
                    enabled: true,
                    stall: Duration::from_millis(30),
                    window: Duration::from_millis(500),
                    busy_half_life: Duration::from_secs(300),
                },
            },
            memory: MemoryPolicy {
                enabled: true,
                min_bytes: 32 << 20,
                max_bytes: 1 << 30,
                settle_after: Duration::from_secs(60),
                headroom: 0.25,
                margin_bytes: 16 << 20,
                scale_down_after: Duration::from_secs(60),
                probe_interval: Duration::from_secs(6),
                step_down: 0.01,
                pressure_threshold: 0.005,
                shrink_with: ShrinkWith::High,
                write_timeout: Duration::from_secs(2),
                timeout_backoff: Duration::from_secs(300),
                growth: GrowthPolicy {
                    enabled: true,
                    window: Duration::from_secs(30 * 60),
                    min_growth_bytes: 32 << 20,
                    steady: 0.8,
                },
            },
            overrides: Vec::new(),
        }
    }
}

/// Collects field errors while turning the raw file into a [`Policy`].
#[derive(Default)]
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn parsed<T>(
        &mut self,
        path: &str,
        value: Option<&Scalar>,
        default: T,
        parse: fn(&str) -> Result<T, QuantityError>,
    ) -> T {
        match value.map(|v| parse(&v.text())) {
            None => default,
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                self.fail(path, e.to_string());
                default
            }
        }
    }

    /// A CPU bound (`cpu.min`-like): a quantity no finer than the kernel's smallest quota.
    fn cpu_bound(&mut self, path: &str, text: &str) -> Option<u64> {
        match parse_cpu_millis(text) {
            Ok(v) if v < KERNEL_MIN_MILLIS => {
                self.fail(
                    path,
                    format!(
                        "{} is below the kernel's smallest quota ({})",
                        format_cpu_millis(v),
                        format_cpu_millis(KERNEL_MIN_MILLIS)
                    ),
                );
                None
            }
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(path, e.to_string());
                None
            }
        }
    }

    /// A duration field, within its [`DURATION_BOUNDS`].
    fn duration(&mut self, path: &str, value: Option<&Scalar>, default: Duration) -> Duration {
        let Some(raw) = value else {
            return default;
        };
        let text = raw.text();
        match parse_duration(&text) {
            Err(e) => {
                self.fail(path, e.to_string());
                default
            }
            Ok(v) => {
                let b = duration_bounds(path);
                if v < b.min || v > b.max {
                    self.fail(
                        path,
                        format!(
                            "`{}` is out of range: must be between {} and {}",
                            text.trim(),
                            format_bound(b.min),
                            format_bound(b.max)
                        ),
                    );
                    default
                } else {
                    v
                }
            }
        }
    }

    /// A share: greater than 0 and at most `max`, written bare or quoted.
    fn ratio(&mut self, path: &str, value: Option<&Scalar>, default: f64, max: f64) -> f64 {
        match value.map(Scalar::number) {
            None => default,
            Some(Ok(v)) if v > 0.0 && v <= max => v,
            Some(Ok(v)) => {
                self.fail(
                    path,
                    format!("{v} must be greater than 0 and at most {max}"),
                );
                default
            }
            Some(Err(e)) => {
                self.fail(path, e);
                default
            }
        }
    }

    /// A whole number within `min..=max`, written bare or quoted.
    fn count(
        &mut self,
        path: &str,
        value: Option<&Scalar>,
        default: u32,
        (min, max): (u32, u32),
    ) -> u32 {
        let Some(raw) = value else {
            return default;
        };
        let parsed = match raw {
            Scalar::Int(i) => Some(*i),
            Scalar::Text(t) => t.trim().parse::<i64>().ok(),
            Scalar::Float(_) => None,
        };
        match parsed {
            Some(v) if (i64::from(min)..=i64::from(max)).contains(&v) => v as u32,
            Some(v) => {
                self.fail(
                    path,
                    format!("{v} is out of range: must be between {min} and {max}"),
                );
                default
            }
            None => {
                self.fail(path, format!("`{}` is not a whole number", raw.text()));
                default
            }
        }
    }

    fn names(
        &mut self,
        path: &str,
        value: Option<Vec<String>>,
        default: Vec<String>,
    ) -> Vec<String> {
        let names = value.unwrap_or(default);
        let most = if path == "match.excludeNamespaces" {
            MAX_NAMESPACES
        } else {
            MAX_NAMES
        };
        if names.len() > most {
            self.fail(
                path,
                format!("{} entries: at most {most} are allowed", names.len()),
            );
        }
        for (i, name) in names.iter().enumerate() {
            if name.trim().is_empty() {
                self.fail(&format!("{path}[{i}]"), "must not be empty");
            }
        }
        names
    }
}

impl Policy {
    /// Parses and validates policy text. All semantic problems are reported together; a
    /// syntax error or an unknown field stops at the first one (named by its path).
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        Self::from_yaml_at(text, None)
    }

    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_at(&text, Some(path))
    }

    fn from_yaml_at(text: &str, path: Option<&Path>) -> Result<Policy, PolicyError> {
        let invalid = |errors| PolicyError::Invalid {
            path: path.map(Path::to_path_buf),
            errors,
        };
        let raw: RawPolicy = if text.trim().is_empty() {
            RawPolicy::default()
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = e.path().to_string();
                let mut message = e.into_inner().to_string();
                // The YAML error repeats the parent path ("cpu: unknown field"): drop it.
                if let Some((head, rest)) = message.split_once(": ")
                    && field.starts_with(head)
                {
                    message = rest.to_string();
                }
                invalid(vec![FieldError {
                    path: if field == "." {
                        "(document)".into()
                    } else {
                        field
                    },
                    message,
                }])
            })?
        };
        let mut check = Checker::default();
        let policy = Self::check(raw, &mut check);
        if check.errors.is_empty() {
            Ok(policy)
        } else {
            Err(invalid(check.errors))
        }
    }

    fn check(raw: RawPolicy, c: &mut Checker) -> Policy {
        let d = Policy::default();
        let interval = c.duration("interval", raw.interval.as_ref(), d.interval);

        let m = raw.matching.unwrap_or_default();
        let process_names = c.names(
            "match.processNames",
            m.process_names,
            d.matching.process_names.clone(),
        );
        if process_names.is_empty() {
            c.fail("match.processNames", "must name at least one process");
        }
        for (i, name) in process_names.iter().enumerate() {
            if name.len() > COMM_MAX {
                c.fail(
                    &format!("match.processNames[{i}]"),
                    format!(
                        "`{name}` is longer than {COMM_MAX} bytes and can never match /proc/PID/comm"
                    ),
                );
            }
        }
        let matching = MatchPolicy {
            process_names,
            container_names: c.names(
                "match.containerNames",
                m.container_names,
                d.matching.container_names.clone(),
            ),
            exclude_namespaces: c.names("match.excludeNamespaces", m.exclude_namespaces, vec![]),
            rescan_interval: c.duration(
                "match.rescanInterval",
                m.rescan_interval.as_ref(),
                d.matching.rescan_interval,
            ),
            include_gateways: m.include_gateways.unwrap_or(d.matching.include_gateways),
            ztunnel_namespaces: c.names(
                "match.ztunnelNamespaces",
                m.ztunnel_namespaces,
                d.matching.ztunnel_namespaces.clone(),
            ),
        };

        let r = raw.cpu.unwrap_or_default();
        let dc = &d.cpu;
        let cpu = CpuPolicy {
            min_millis: c.parsed("cpu.min", r.min.as_ref(), dc.min_millis, parse_cpu_millis),
            max_millis: c.parsed("cpu.max", r.max.as_ref(), dc.max_millis, parse_cpu_millis),
            scale_down_after: c.duration(
                "cpu.scaleDownAfter",
                r.scale_down_after.as_ref(),
                dc.scale_down_after,
            ),
            target_utilization: c.ratio(
                "cpu.targetUtilization",
                r.target_utilization.as_ref(),
                dc.target_utilization,
                1.0,
            ),
            scale_up_utilization: c.ratio(
                "cpu.scaleUpUtilization",
                r.scale_up_utilization.as_ref(),
                dc.scale_up_utilization,
                1.0,
            ),
            scale_down_utilization: c.ratio(
                "cpu.scaleDownUtilization",
                r.scale_down_utilization.as_ref(),
                dc.scale_down_utilization,
                1.0,
            ),
            throttled_ratio: c.ratio(
                "cpu.throttledRatio",
                r.throttled_ratio.as_ref(),
                dc.throttled_ratio,
                1.0,
            ),
            pressure_threshold: c.ratio(
                "cpu.pressureThreshold",
                r.pressure_threshold.as_ref(),
                dc.pressure_threshold,
                1.0,
            ),
            step_up: c.ratio("cpu.stepUp", r.step_up.as_ref(), dc.step_up, 10.0),
            step_down: c.ratio("cpu.stepDown", r.step_down.as_ref(), dc.step_down, 0.9),
            conflict_backoff: c.duration(
                "cpu.conflictBackoff",
                r.conflict_backoff.as_ref(),
                dc.conflict_backoff,
            ),
            per_worker_min_millis: c.parsed(
                "cpu.perWorkerMin",
                r.per_worker_min.as_ref(),
                dc.per_worker_min_millis,
                parse_cpu_millis,
            ),
            allow_above_limit: r.allow_above_limit.unwrap_or(dc.allow_above_limit),
            burst_ratio: match r.burst_ratio.as_ref().map(Scalar::number) {
                None => dc.burst_ratio,
                Some(Ok(v)) if (0.0..=1.0).contains(&v) => v,
                Some(Ok(v)) => {
                    c.fail("cpu.burstRatio", format!("{v} must be between 0 and 1"));
                    dc.burst_ratio
                }
                Some(Err(e)) => {
                    c.fail("cpu.burstRatio", e);
                    dc.burst_ratio
                }
            },
            push_storm: Self::check_push_storm(r.push_storm.unwrap_or_default(), &dc.push_storm, c),
            wake_on_stall: Self::check_wake(
                r.wake_on_stall.unwrap_or_default(),
                &dc.wake_on_stall,
                c,
            ),
        };
        if r.min.is_some() && cpu.min_millis < KERNEL_MIN_MILLIS {
            c.fail(
                "cpu.min",
                format!(
                    "{} is below the kernel's smallest quota (1000us per 100ms period = {})",
                    format_cpu_millis(cpu.min_millis),
                    format_cpu_millis(KERNEL_MIN_MILLIS)
                ),
            );
        }
        if cpu.min_millis > cpu.max_millis {
            c.fail(
                "cpu.min",
                format!(
                    "must not exceed cpu.max ({} > {})",
                    format_cpu_millis(cpu.min_millis),
                    format_cpu_millis(cpu.max_millis)
                ),
            );
        }
        if cpu.scale_down_utilization >= cpu.target_utilization {
            c.fail(
                "cpu.scaleDownUtilization",
                format!(
                    "must be below cpu.targetUtilization ({} >= {})",
                    cpu.scale_down_utilization, cpu.target_utilization
                ),
            );
        }
        if cpu.target_utilization >= cpu.scale_up_utilization {
            c.fail(
                "cpu.targetUtilization",
                format!(
                    "must be below cpu.scaleUpUtilization ({} >= {})",
                    cpu.target_utilization, cpu.scale_up_utilization
                ),
            );
        }

        Policy {
            interval,
            dry_run: raw.dry_run.unwrap_or(d.dry_run),
            restore_on_exit: raw.restore_on_exit.unwrap_or(d.restore_on_exit),
            matching,
            overrides: Self::check_overrides(raw.overrides.unwrap_or_default(), &cpu, c),
            cpu,
            memory: Self::check_memory(raw.memory.unwrap_or_default(), &d.memory, c),
        }
    }

    fn check_push_storm(r: RawPushStorm, d: &PushStormPolicy, c: &mut Checker) -> PushStormPolicy {
        let min_proxies = c.count(
            "cpu.pushStorm.minProxies",
            r.min_proxies.as_ref(),
            d.min_proxies,
            MIN_PROXIES_BOUNDS,
        );
        PushStormPolicy {
            min_proxies,
            fraction: c.ratio(
                "cpu.pushStorm.fraction",
                r.fraction.as_ref(),
                d.fraction,
                1.0,
            ),
            window: c.duration("cpu.pushStorm.window", r.window.as_ref(), d.window),
            grace: c.duration("cpu.pushStorm.grace", r.grace.as_ref(), d.grace),
        }
    }

    fn check_wake(r: RawWake, d: &WakePolicy, c: &mut Checker) -> WakePolicy {
        let w = WakePolicy {
            enabled: r.enabled.unwrap_or(d.enabled),
            stall: c.duration("cpu.wakeOnStall.stall", r.stall.as_ref(), d.stall),
            window: c.duration("cpu.wakeOnStall.window", r.window.as_ref(), d.window),
            busy_half_life: c.duration(
                "cpu.wakeOnStall.busyHalfLife",
                r.busy_half_life.as_ref(),
                d.busy_half_life,
            ),
        };
        if w.stall >= w.window {
            c.fail(
                "cpu.wakeOnStall.stall",
                format!(
                    "must be shorter than cpu.wakeOnStall.window ({} >= {})",
                    format_duration(w.stall),
                    format_duration(w.window)
                ),
            );
        }
        w
    }

    fn check_growth(r: RawGrowth, d: &GrowthPolicy, c: &mut Checker) -> GrowthPolicy {
        let g = GrowthPolicy {
            enabled: r.enabled.unwrap_or(d.enabled),
            window: c.duration("memory.growth.window", r.window.as_ref(), d.window),
            min_growth_bytes: c.parsed(
                "memory.growth.minGrowth",
                r.min_growth.as_ref(),
                d.min_growth_bytes,
                parse_bytes,
            ),
            steady: c.ratio("memory.growth.steady", r.steady.as_ref(), d.steady, 1.0),
        };
        if g.min_growth_bytes < 1 << 20 {
            c.fail(
                "memory.growth.minGrowth",
                "must be at least 1Mi (smaller growth is the kernel's counting noise)",
            );
        }
        g
    }

    fn check_memory(r: RawMemory, d: &MemoryPolicy, c: &mut Checker) -> MemoryPolicy {
        let m = MemoryPolicy {
            enabled: r.enabled.unwrap_or(d.enabled),
            min_bytes: c.parsed("memory.min", r.min.as_ref(), d.min_bytes, parse_bytes),
            max_bytes: c.parsed("memory.max", r.max.as_ref(), d.max_bytes, parse_bytes),
            settle_after: c.duration(
                "memory.settleAfter",
                r.settle_after.as_ref(),
                d.settle_after,
            ),
            headroom: c.ratio("memory.headroom", r.headroom.as_ref(), d.headroom, 4.0),
            margin_bytes: c.parsed(
                "memory.margin",
                r.margin.as_ref(),
                d.margin_bytes,
                parse_bytes,
            ),
            scale_down_after: c.duration(
                "memory.scaleDownAfter",
                r.scale_down_after.as_ref(),
                d.scale_down_after,
            ),
            probe_interval: c.duration(
                "memory.probeInterval",
                r.probe_interval.as_ref(),
                d.probe_interval,
            ),
            step_down: c.ratio("memory.stepDown", r.step_down.as_ref(), d.step_down, 0.5),
            pressure_threshold: c.ratio(
                "memory.pressureThreshold",
                r.pressure_threshold.as_ref(),
                d.pressure_threshold,
                1.0,
            ),
            shrink_with: r.shrink_with.unwrap_or(d.shrink_with),
            write_timeout: c.duration(
                "memory.writeTimeout",
                r.write_timeout.as_ref(),
                d.write_timeout,
            ),
            timeout_backoff: c.duration(
                "memory.timeoutBackoff",
                r.timeout_backoff.as_ref(),
                d.timeout_backoff,
            ),
            growth: Self::check_growth(r.growth.unwrap_or_default(), &d.growth, c),
        };
        if m.min_bytes > m.max_bytes {
            c.fail(
                "memory.min",
                format!(
                    "must not exceed memory.max ({} > {})",
                    format_bytes(m.min_bytes),
                    format_bytes(m.max_bytes)
                ),
            );
        }
        if m.min_bytes < 4 << 20 {
            c.fail(
                "memory.min",
                "must be at least 4Mi (a proxy cannot run in less)",
            );
        }
        m
    }

    fn check_overrides(
        raw: Vec<RawOverride>,
        cpu: &CpuPolicy,
        c: &mut Checker,
    ) -> Vec<NamespaceOverride> {
        if raw.len() > MAX_NAMESPACES {
            c.fail(
                "overrides",
                format!(
                    "{} entries: at most {MAX_NAMESPACES} are allowed",
                    raw.len()
                ),
            );
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, o) in raw.into_iter().enumerate() {
            let at = |field: &str| format!("overrides[{i}].{field}");
            let namespace = o.namespace.unwrap_or_default();
            if namespace.trim().is_empty() {
                c.fail(&at("namespace"), "is required");
            } else if !seen.insert(namespace.clone()) {
                c.fail(
                    &at("namespace"),
                    format!("`{namespace}` already has an entry"),
                );
            }
            let mode = o.mode.and_then(|m| {
                let parsed = Mode::parse(m.trim());
                if parsed.is_none() {
                    c.fail(&at("mode"), format!("`{m}` is not one of off, dry-run, on"));
                }
                parsed
            });
            let bounds = o.cpu.unwrap_or_default();
            let mut millis = |field: &str, value: Option<&Scalar>| {
                value.and_then(|v| c.cpu_bound(&at(field), &v.text()))
            };
            let cpu_min_millis = millis("cpu.min", bounds.min.as_ref());
            let cpu_max_millis = millis("cpu.max", bounds.max.as_ref());
            let (min, max) = (
                cpu_min_millis.unwrap_or(cpu.min_millis),
                cpu_max_millis.unwrap_or(cpu.max_millis),
            );
            if min > max {
                c.fail(
                    &at("cpu.min"),
                    format!(
                        "must not exceed the namespace's cpu.max ({} > {})",
                        format_cpu_millis(min),
                        format_cpu_millis(max)
                    ),
                );
            }
            out.push(NamespaceOverride {
                namespace,
                mode,
                cpu_min_millis,
                cpu_max_millis,
                allow_above_limit: bounds.allow_above_limit,
            });
        }
        out
    }

    /// The override of `namespace`, if the policy has one.
    pub fn override_for(&self, namespace: &str) -> Option<&NamespaceOverride> {
        if namespace.is_empty() {
            return None;
        }
        self.overrides.iter().find(|o| o.namespace == namespace)
    }

    /// The mode and the namespace's CPU tuning for a proxy in `namespace` with the pod's
    /// `control`. The most specific setting wins for the mode (pod annotation, then namespace
    /// override, then `on`); a namespace override replaces the policy's CPU bounds and may
    /// grant or withhold `allowAboveLimit`. The pod's CPU annotations are applied per proxy by
    /// [`Effective::cpu_for`]. The agent's global dry run (`dryRun` or `--dry-run`) is applied
    /// on top by the agent and wins over every mode but `off`.
    pub fn effective(&self, namespace: &str, control: &PodControl) -> Effective {
        let mut cpu = self.cpu.clone();
        let mut mode = Mode::On;
        if let Some(o) = self.override_for(namespace) {
            mode = o.mode.unwrap_or(mode);
            cpu.min_millis = o.cpu_min_millis.unwrap_or(cpu.min_millis);
            cpu.max_millis = o.cpu_max_millis.unwrap_or(cpu.max_millis);
            cpu.allow_above_limit = o.allow_above_limit.unwrap_or(cpu.allow_above_limit);
        }
        mode = control.mode.unwrap_or(mode);
        Effective { mode, cpu }
    }

    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        format!(
            "interval={} cpu={}..{} scaleDownAfter={} dryRun={}",
            format_duration(self.interval),
            format_cpu_millis(self.cpu.min_millis),
            format_cpu_millis(self.cpu.max_millis),
            format_duration(self.cpu.scale_down_after),
            self.dry_run
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        Policy::from_yaml(text)
            .unwrap_err()
            .field_errors()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn interval_alone_is_valid_and_defaults_fill_the_rest() {
        let p = Policy::from_yaml("interval: 1s\n").unwrap();
        assert_eq!(p, Policy::default());
        assert_eq!(Policy::from_yaml("").unwrap(), Policy::default());
    }

    #[test]
    fn embedded_default_file_matches_code_defaults() {
        assert_eq!(
            Policy::from_yaml(DEFAULT_POLICY_YAML).unwrap(),
            Policy::default()
        );
    }

    #[test]
    fn issue_example_parses() {
        let text = r#"
interval: 1s
dryRun: false
restoreOnExit: true
match:
  processNames: [envoy, linkerd2-proxy]
  containerNames: [istio-proxy, linkerd-proxy]
  excludeNamespaces: []
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 30s
"#;
        let p = Policy::from_yaml(text).unwrap();
        assert_eq!(p.cpu.min_millis, 100);
        assert_eq!(p.cpu.max_millis, 2000);
        assert_eq!(p.cpu.scale_down_after, Duration::from_secs(30));
    }

    #[test]
    fn numbers_and_strings_both_work_for_quantities() {
        let p = Policy::from_yaml("cpu:\n  max: 2\n  min: 0.25\n").unwrap();
        assert_eq!((p.cpu.min_millis, p.cpu.max_millis), (250, 2000));
    }

    #[test]
    fn min_above_max_names_the_field() {
        assert_eq!(
            errors("cpu:\n  min: \"3\"\n  max: \"2\"\n"),
            vec!["cpu.min: must not exceed cpu.max (3 > 2)"]
        );
    }

    #[test]
    fn below_kernel_minimum_quota() {
        let e = errors("cpu:\n  min: 5m\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("cpu.min: 5m is below the kernel's smallest quota"),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let e = errors("cpu:\n  mni: 100m\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("cpu.mni: unknown field `mni`"), "{e:?}");
        let e = errors("intervall: 1s\n");
        assert!(e[0].contains("unknown field `intervall`"), "{e:?}");
    }

    #[test]
    fn bad_values_are_all_reported() {
        let e = errors(
            "interval: 0s\ncpu:\n  max: lots\n  scaleDownAfter: -5s\n  stepDown: 1.5\n  targetUtilization: 0\n",
        );
        let joined = e.join("\n");
        for field in [
            "interval:",
            "cpu.max:",
            "cpu.scaleDownAfter:",
            "cpu.stepDown:",
            "cpu.targetUtilization:",
        ] {
            assert!(joined.contains(field), "{field} missing from {joined}");
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        let e = errors("dryRun: maybe\n");
        assert!(e[0].starts_with("dryRun:"), "{e:?}");
        let e = errors("match:\n  processNames: envoy\n");
        assert!(e[0].starts_with("match.processNames:"), "{e:?}");
    }

    #[test]
    fn utilization_order_is_enforced() {
        let e = errors("cpu:\n  scaleDownUtilization: 0.7\n");
        assert_eq!(
            e,
            vec!["cpu.scaleDownUtilization: must be below cpu.targetUtilization (0.7 >= 0.6)"]
        );
    }

    #[test]
    fn process_names_longer_than_comm_never_match() {
        let e = errors("match:\n  processNames: [envoy, a-very-long-proxy-name]\n");
        assert!(e[0].starts_with("match.processNames[1]:"), "{e:?}");
        let e = errors("match:\n  processNames: []\n");
        assert_eq!(
            e,
            vec!["match.processNames: must name at least one process"]
        );
    }

    #[test]
    fn memory_section_parses_and_validates() {
        let p = Policy::from_yaml(
            "memory:\n  min: 64Mi\n  max: 512Mi\n  shrinkWith: reclaim\n  settleAfter: 30s\n",
        )
        .unwrap();
        assert_eq!(
            (p.memory.min_bytes, p.memory.max_bytes),
            (64 << 20, 512 << 20)
        );
        assert_eq!(p.memory.shrink_with, ShrinkWith::Reclaim);
        assert_eq!(
            errors("memory:\n  min: 2Gi\n  max: 1Gi\n"),
            vec!["memory.min: must not exceed memory.max (2Gi > 1Gi)"]
        );
        let e = errors("memory:\n  shrinkWith: swap\n");
        assert!(e[0].starts_with("memory.shrinkWith:"), "{e:?}");
        let e = errors("memory:\n  max: 1GB\n");
        assert!(e[0].starts_with("memory.max:"), "{e:?}");
    }

    #[test]
    fn cpu_extras_validate() {
        let p = Policy::from_yaml(
            "cpu:\n  perWorkerMin: 25m\n  burstRatio: 0.5\n  pushStorm:\n    minProxies: 5\n",
        )
        .unwrap();
        assert_eq!(p.cpu.per_worker_min_millis, 25);
        assert_eq!(p.cpu.burst_ratio, 0.5);
        assert_eq!(p.cpu.push_storm.min_proxies, 5);
        assert_eq!(
            errors("cpu:\n  burstRatio: 2\n"),
            vec!["cpu.burstRatio: 2 must be between 0 and 1"]
        );
        assert_eq!(
            errors("cpu:\n  pushStorm:\n    minProxies: 1\n"),
            vec!["cpu.pushStorm.minProxies: 1 is out of range: must be between 2 and 10000"]
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        let e = errors("interval: [1s\n");
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn namespace_overrides_parse_and_apply() {
        let p = Policy::from_yaml(
            "overrides:\n  - namespace: payments\n    cpu: {min: 200m, max: \"1\"}\n    mode: dry-run\n  - namespace: batch\n    mode: \"off\"\n",
        )
        .unwrap();
        assert_eq!(p.overrides.len(), 2);
        let e = p.effective("payments", &PodControl::default());
        assert_eq!(e.mode, Mode::DryRun);
        assert_eq!((e.cpu.min_millis, e.cpu.max_millis), (200, 1000));
        assert_eq!(p.effective("batch", &PodControl::default()).mode, Mode::Off);
        let other = p.effective("shop", &PodControl::default());
        assert_eq!(other.mode, Mode::On);
        assert_eq!(other.cpu, p.cpu);
        // procfs knows no namespace: never an override
        assert_eq!(p.effective("", &PodControl::default()).cpu, p.cpu);
    }

    #[test]
    fn override_errors_name_the_entry() {
        let e = errors(
            "overrides:\n  - cpu: {min: 100m}\n  - namespace: a\n    mode: sometimes\n  - namespace: a\n  - namespace: b\n    cpu: {max: 50m}\n  - namespace: c\n    cpu: {min: 5m}\n",
        );
        let joined = e.join("\n");
        for want in [
            "overrides[0].namespace: is required",
            "overrides[1].mode: `sometimes` is not one of off, dry-run, on",
            "overrides[2].namespace: `a` already has an entry",
            "overrides[3].cpu.min: must not exceed the namespace's cpu.max (100m > 50m)",
            "overrides[4].cpu.min: 5m is below the kernel's smallest quota",
        ] {
            assert!(joined.contains(want), "{want} missing from\n{joined}");
        }
        let e = errors("overrides:\n  - namespace: a\n    cpu: {mn: 1}\n");
        assert!(
            e[0].starts_with("overrides[0].cpu.mn: unknown field"),
            "{e:?}"
        );
        let e = errors("overrides:\n  - namespace: a\n    memory: {}\n");
        assert!(
            e[0].starts_with("overrides[0].memory: unknown field"),
            "{e:?}"
        );
    }

    #[test]
    fn include_gateways_switch() {
        assert!(!Policy::default().matching.include_gateways);
        let p = Policy::from_yaml("match:\n  includeGateways: true\n").unwrap();
        assert!(p.matching.include_gateways);
    }

    fn annotations(pairs: &[(&str, &str)]) -> Result<PodControl, Vec<String>> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PodControl::from_annotations(&map).map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn pod_annotations_valid() {
        assert_eq!(annotations(&[]).unwrap(), PodControl::default());
        let c = annotations(&[
            ("sidecar-governor.io/mode", "dry-run"),
            ("sidecar-governor.io/cpu-min", "250m"),
            ("sidecar-governor.io/cpu-max", "1.5"),
            ("sidecar.istio.io/status", "{}"),
            ("kubectl.kubernetes.io/restartedAt", "x"),
        ])
        .unwrap();
        assert_eq!(
            c,
            PodControl {
                mode: Some(Mode::DryRun),
                cpu_min_millis: Some(250),
                cpu_max_millis: Some(1500),
            }
        );
        assert_eq!(
            annotations(&[("sidecar-governor.io/mode", "off")])
                .unwrap()
                .mode,
            Some(Mode::Off)
        );
        assert_eq!(
            annotations(&[("sidecar-governor.io/mode", " on ")])
                .unwrap()
                .mode,
            Some(Mode::On)
        );
    }

    #[test]
    fn pod_annotations_invalid() {
        let e = annotations(&[("sidecar-governor.io/mode", "Off")]).unwrap_err();
        assert_eq!(
            e,
            vec!["sidecar-governor.io/mode: `Off` is not one of off, dry-run, on"]
        );
        let e = annotations(&[("sidecar-governor.io/cpu-max", "lots")]).unwrap_err();
        assert!(e[0].starts_with("sidecar-governor.io/cpu-max: "), "{e:?}");
        let e = annotations(&[("sidecar-governor.io/cpu-min", "1m")]).unwrap_err();
        assert!(e[0].contains("below the kernel's smallest quota"), "{e:?}");
        let e = annotations(&[
            ("sidecar-governor.io/cpu-min", "2"),
            ("sidecar-governor.io/cpu-max", "1"),
        ])
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "sidecar-governor.io/cpu-min: must not exceed sidecar-governor.io/cpu-max (2 > 1)"
            ]
        );
        let e = annotations(&[
            ("sidecar-governor.io/cpu-mx", "1"),
            ("sidecar-governor.io/mode", "on"),
        ])
        .unwrap_err();
        assert!(
            e[0].starts_with("sidecar-governor.io/cpu-mx: unknown annotation"),
            "{e:?}"
        );
    }

    const RUNTIME: Standing = Standing {
        runtime_identity: true,
        limit_millis: Some(2000),
    };

    #[test]
    fn annotations_narrow_within_the_floor_and_the_containers_own_limit() {
        let p = Policy::from_yaml(
            "cpu: {min: 100m, max: \"4\"}\noverrides:\n  - namespace: payments\n    mode: dry-run\n    cpu: {max: \"1\"}\n",
        )
        .unwrap();
        let pod = PodControl {
            mode: Some(Mode::On),
            cpu_min_millis: Some(300),
            cpu_max_millis: Some(800),
        };
        // the pod's mode is the most specific; its bounds only narrow
        let e = p.effective("payments", &pod);
        assert_eq!(e.mode, Mode::On);
        let (cpu, refused) = e.cpu_for(&pod, RUNTIME);
        assert_eq!((cpu.min_millis, cpu.max_millis, refused), (300, 800, None));
        // Out of range, refused whole (the namespace's settings apply): above the namespace's
        // ceiling, above the container's own limit, below the policy's floor.
        let cases = [
            ("payments", Some(300), Some(1500), RUNTIME, (100, 1000)),
            ("shop", Some(3000), None, RUNTIME, (100, 4000)),
            ("shop", None, Some(2500), RUNTIME, (100, 4000)),
            ("shop", Some(50), None, RUNTIME, (100, 4000)),
        ];
        for (ns, min, max, standing, want) in cases {
            let pod = PodControl {
                cpu_min_millis: min,
                cpu_max_millis: max,
                ..PodControl::default()
            };
            let (cpu, refused) = p.effective(ns, &pod).cpu_for(&pod, standing);
            assert_eq!(
                (cpu.min_millis, cpu.max_millis),
                want,
                "{ns} {min:?} {max:?}"
            );
            let why = refused.unwrap_or_else(|| panic!("{ns} {min:?} {max:?} not refused"));
            assert!(
                why.contains("the pod runs on its namespace's settings"),
                "{why}"
            );
        }
    }

    #[test]
    fn growth_above_the_limit_needs_a_runtime_identity_and_the_namespaces_grant() {
        let p = Policy::from_yaml(
            "cpu: {allowAboveLimit: true}\noverrides:\n  - namespace: tenants\n    cpu: {allowAboveLimit: false}\n  - namespace: mesh\n    cpu: {allowAboveLimit: true}\n",
        )
        .unwrap();
        let none = PodControl::default();
        let by_name = Standing {
            runtime_identity: false,
            limit_millis: Some(100),
        };
        let allowed =
            |ns: &str, s: Standing| p.effective(ns, &none).cpu_for(&none, s).0.allow_above_limit;
        assert!(allowed("mesh", RUNTIME));
        assert!(
            allowed("shop", RUNTIME),
            "the policy's grant where no override says"
        );
        assert!(!allowed("tenants", RUNTIME), "withheld by the namespace");
        assert!(!allowed("mesh", by_name), "never by a process name alone");
        assert!(!allowed("", by_name));
        let q = Policy::from_yaml(
            "overrides:\n  - namespace: mesh\n    cpu: {allowAboveLimit: true}\n",
        )
        .unwrap();
        assert!(
            q.effective("mesh", &none)
                .cpu_for(&none, RUNTIME)
                .0
                .allow_above_limit
        );
        assert!(
            !q.effective("shop", &none)
                .cpu_for(&none, RUNTIME)
                .0
                .allow_above_limit
        );
    }

    /// `a.b.c: value` as nested YAML.
    fn yaml_at(path: &str, value: &str) -> String {
        let mut out = String::new();
        let parts: Vec<&str> = path.split('.').collect();
        for (depth, part) in parts.iter().enumerate() {
            out.push_str(&"  ".repeat(depth));
            out.push_str(part);
            if depth + 1 == parts.len() {
                out.push_str(&format!(": {value}\n"));
            } else {
                out.push_str(":\n");
            }
        }
        out
    }

    /// Each duration field, the smallest and largest value it takes, a value just outside
    /// each end, and the error's wording of the range (issue 9, case 7).
    #[allow(clippy::type_complexity)]
    const DURATIONS: &[(&str, &str, &str, &str, &str, &str, fn(&Policy) -> Duration)] = &[
        (
            "interval",
            "100ms",
            "10m",
            "99ms",
            "601s",
            "100ms and 10m",
            |p| p.interval,
        ),
        (
            "match.rescanInterval",
            "1s",
            "1h",
            "1ms",
            "61m",
            "1s and 1h",
            |p| p.matching.rescan_interval,
        ),
        (
            "cpu.scaleDownAfter",
            "1s",
            "24h",
            "999ms",
            "25h",
            "1s and 24h",
            |p| p.cpu.scale_down_after,
        ),
        (
            "cpu.conflictBackoff",
            "1s",
            "24h",
            "0.001ms",
            "277777h",
            "1s and 24h",
            |p| p.cpu.conflict_backoff,
        ),
        (
            "cpu.pushStorm.window",
            "100ms",
            "1m",
            "50ms",
            "61s",
            "100ms and 1m",
            |p| p.cpu.push_storm.window,
        ),
        (
            "cpu.pushStorm.grace",
            "1s",
            "1m",
            "500ms",
            "2m",
            "1s and 1m",
            |p| p.cpu.push_storm.grace,
        ),
        (
            "cpu.wakeOnStall.window",
            "500ms",
            "10s",
            "499ms",
            "11s",
            "500ms and 10s",
            |p| p.cpu.wake_on_stall.window,
        ),
        (
            "cpu.wakeOnStall.busyHalfLife",
            "10s",
            "1h",
            "9s",
            "61m",
            "10s and 1h",
            |p| p.cpu.wake_on_stall.busy_half_life,
        ),
        (
            "memory.settleAfter",
            "1s",
            "1h",
            "10ms",
            "2h",
            "1s and 1h",
            |p| p.memory.settle_after,
        ),
        (
            "memory.scaleDownAfter",
            "1s",
            "24h",
            "100ms",
            "48h",
            "1s and 24h",
            |p| p.memory.scale_down_after,
        ),
        (
            "memory.probeInterval",
            "1s",
            "1h",
            "1ms",
            "3601s",
            "1s and 1h",
            |p| p.memory.probe_interval,
        ),
        (
            "memory.writeTimeout",
            "10ms",
            "30s",
            "1ms",
            "277777h",
            "10ms and 30s",
            |p| p.memory.write_timeout,
        ),
        (
            "memory.timeoutBackoff",
            "1s",
            "24h",
            "1ms",
            "1441m",
            "1s and 24h",
            |p| p.memory.timeout_backoff,
        ),
        (
            "memory.growth.window",
            "10s",
            "24h",
            "9s",
            "25h",
            "10s and 24h",
            |p| p.memory.growth.window,
        ),
    ];

    #[test]
    fn every_duration_has_bounds_named_in_the_error() {
        for (path, min, max, below, above, range, get) in DURATIONS {
            for ok in [min, max] {
                let p = Policy::from_yaml(&yaml_at(path, ok))
                    .unwrap_or_else(|e| panic!("{path}: {ok}: {e}"));
                assert_eq!(get(&p), parse_duration(ok).unwrap(), "{path}: {ok}");
            }
            for bad in [below, above] {
                assert_eq!(
                    errors(&yaml_at(path, bad)),
                    vec![format!(
                        "{path}: `{bad}` is out of range: must be between {range}"
                    )],
                    "{path}: {bad}"
                );
            }
        }
        // every bounded field is in the table above, and nothing else is
        let mut listed: Vec<&str> = DURATIONS.iter().map(|d| d.0).collect();
        let mut bounded: Vec<&str> = DURATION_BOUNDS.iter().map(|d| d.0).collect();
        listed.sort_unstable();
        bounded.sort_unstable();
        assert_eq!(listed, bounded);
    }

    #[test]
    fn the_growth_watch_is_configured_under_memory() {
        let p = Policy::from_yaml(
            "memory:\n  growth:\n    window: 10m\n    minGrowth: 64Mi\n    steady: 0.9\n",
        )
        .unwrap();
        let g = p.memory.growth;
        assert!(g.enabled);
        assert_eq!(
            (g.window, g.min_growth_bytes, g.steady),
            (Duration::from_secs(600), 64 << 20, 0.9)
        );
        assert_eq!(
            errors("memory:\n  growth:\n    minGrowth: 512Ki\n"),
            vec![
                "memory.growth.minGrowth: must be at least 1Mi (smaller growth is the kernel's counting noise)"
            ]
        );
        let e = errors("memory:\n  growth:\n    steady: 1.5\n");
        assert!(e[0].starts_with("memory.growth.steady:"), "{e:?}");
        let e = errors("memory:\n  growth:\n    sampleEvery: 1m\n");
        assert!(
            e[0].starts_with("memory.growth.sampleEvery: unknown field"),
            "{e:?}"
        );
    }

    #[test]
    fn a_stall_trigger_must_be_shorter_than_its_window() {
        let p =
            Policy::from_yaml("cpu:\n  wakeOnStall:\n    stall: 100ms\n    window: 2s\n").unwrap();
        let w = p.cpu.wake_on_stall;
        assert!(w.enabled);
        assert_eq!((w.stall, w.window), (ms(100), secs(2)));
        assert_eq!(
            errors("cpu:\n  wakeOnStall:\n    stall: 500ms\n"),
            vec![
                "cpu.wakeOnStall.stall: must be shorter than cpu.wakeOnStall.window (500ms >= 500ms)"
            ]
        );
        let off = Policy::from_yaml("cpu:\n  wakeOnStall:\n    enabled: false\n").unwrap();
        assert!(!off.cpu.wake_on_stall.enabled);
        assert!(errors("cpu:\n  wakeOnStall:\n    stal: 1ms\n")[0].contains("stal"));
    }

    #[test]
    fn counts_have_bounds() {
        let at = |v: &str| yaml_at("cpu.pushStorm.minProxies", v);
        assert_eq!(
            Policy::from_yaml(&at("2"))
                .unwrap()
                .cpu
                .push_storm
                .min_proxies,
            2
        );
        assert_eq!(
            Policy::from_yaml(&at("\"10000\""))
                .unwrap()
                .cpu
                .push_storm
                .min_proxies,
            10000
        );
        assert_eq!(
            errors(&at("10001")),
            vec!["cpu.pushStorm.minProxies: 10001 is out of range: must be between 2 and 10000"]
        );
        assert_eq!(
            errors(&at("-3")),
            vec!["cpu.pushStorm.minProxies: -3 is out of range: must be between 2 and 10000"]
        );
        assert_eq!(
            errors(&at("2.5")),
            vec!["cpu.pushStorm.minProxies: `2.5` is not a whole number"]
        );
        let many = |n: usize| {
            (0..n)
                .map(|i| format!("p{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert!(Policy::from_yaml(&format!("match:\n  processNames: [{}]\n", many(64))).is_ok());
        assert_eq!(
            errors(&format!("match:\n  processNames: [{}]\n", many(65))),
            vec!["match.processNames: 65 entries: at most 64 are allowed"]
        );
        assert_eq!(
            errors(&format!("match:\n  containerNames: [{}]\n", many(65))),
            vec!["match.containerNames: 65 entries: at most 64 are allowed"]
        );
        assert!(
            Policy::from_yaml(&format!("match:\n  excludeNamespaces: [{}]\n", many(1024))).is_ok()
        );
        assert_eq!(
            errors(&format!("match:\n  excludeNamespaces: [{}]\n", many(1025))),
            vec!["match.excludeNamespaces: 1025 entries: at most 1024 are allowed"]
        );
        let overrides = |n: usize| {
            let mut y = String::from("overrides:\n");
            for i in 0..n {
                y.push_str(&format!("  - namespace: ns{i}\n"));
            }
            y
        };
        assert!(Policy::from_yaml(&overrides(1024)).is_ok());
        assert_eq!(
            errors(&overrides(1025)),
            vec!["overrides: 1025 entries: at most 1024 are allowed"]
        );
    }

    #[test]
    fn ratios_take_quoted_numbers_like_quantities() {
        let quoted = Policy::from_yaml(
            "cpu:\n  targetUtilization: \"0.7\"\n  scaleUpUtilization: '0.9'\n  scaleDownUtilization: \"0.5\"\n  throttledRatio: \"0.1\"\n  pressureThreshold: \"0.2\"\n  stepUp: \"2\"\n  stepDown: \" 0.2 \"\n  burstRatio: \"0.5\"\n  pushStorm:\n    fraction: \"0.75\"\nmemory:\n  headroom: \"0.5\"\n  stepDown: \"0.02\"\n  pressureThreshold: \"0.01\"\n",
        )
        .unwrap();
        let bare = Policy::from_yaml(
            "cpu:\n  targetUtilization: 0.7\n  scaleUpUtilization: 0.9\n  scaleDownUtilization: 0.5\n  throttledRatio: 0.1\n  pressureThreshold: 0.2\n  stepUp: 2\n  stepDown: 0.2\n  burstRatio: 0.5\n  pushStorm:\n    fraction: 0.75\nmemory:\n  headroom: 0.5\n  stepDown: 0.02\n  pressureThreshold: 0.01\n",
        )
        .unwrap();
        assert_eq!(quoted, bare);
        assert_eq!(quoted.cpu.target_utilization, 0.7);
        assert_eq!(quoted.cpu.step_up, 2.0);
        assert_eq!(quoted.cpu.step_down, 0.2);
        assert_eq!(quoted.cpu.burst_ratio, 0.5);
        assert_eq!(quoted.cpu.push_storm.fraction, 0.75);
        assert_eq!(quoted.memory.headroom, 0.5);
        // the same ranges apply however it is written, and text that is no number is named
        assert_eq!(
            errors("cpu:\n  stepDown: \"1.5\"\n"),
            vec!["cpu.stepDown: 1.5 must be greater than 0 and at most 0.9"]
        );
        assert_eq!(
            errors("cpu:\n  throttledRatio: \"5%\"\n"),
            vec!["cpu.throttledRatio: `5%` is not a number"]
        );
        assert_eq!(
            errors("memory:\n  headroom: \"inf\"\n"),
            vec!["memory.headroom: `inf` is not a number"]
        );
        assert_eq!(
            errors("cpu:\n  burstRatio: \"NaN\"\n"),
            vec!["cpu.burstRatio: `NaN` is not a number"]
        );
    }
}
