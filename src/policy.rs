//! The policy: what the operator writes (YAML, Kubernetes conventions) and the validated,
//! typed [`Policy`] the controller reads. Parsing is strict — unknown fields, bad quantities,
//! zero durations and contradictory bounds are errors naming the field — and every field has a
//! default, so `interval: 1s` alone is a valid policy. No I/O but [`Policy::load`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::quantity::{
    QuantityError, format_cpu_millis, format_duration, parse_cpu_millis, parse_duration,
};

/// The policy used when no file is given: the documented defaults.
pub const DEFAULT_POLICY_YAML: &str = include_str!("../daemonset/policy.yaml");

/// Linux keeps 15 bytes of a process name in `/proc/PID/comm`.
const COMM_MAX: usize = 15;
/// The kernel's smallest quota (1000 us) at the default 100 ms period, in millicores.
const KERNEL_MIN_MILLIS: u64 = 10;

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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMatch {
    process_names: Option<Vec<String>>,
    container_names: Option<Vec<String>>,
    exclude_namespaces: Option<Vec<String>>,
    rescan_interval: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCpu {
    min: Option<Scalar>,
    max: Option<Scalar>,
    scale_down_after: Option<Scalar>,
    target_utilization: Option<f64>,
    scale_up_utilization: Option<f64>,
    scale_down_utilization: Option<f64>,
    throttled_ratio: Option<f64>,
    pressure_threshold: Option<f64>,
    step_up: Option<f64>,
    step_down: Option<f64>,
    conflict_backoff: Option<Scalar>,
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
}

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
            },
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

    fn ratio(&mut self, path: &str, value: Option<f64>, default: f64, max: f64) -> f64 {
        match value {
            None => default,
            Some(v) if v.is_finite() && v > 0.0 && v <= max => v,
            Some(v) => {
                self.fail(
                    path,
                    format!("{v} must be greater than 0 and at most {max}"),
                );
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
        let interval = c.parsed(
            "interval",
            raw.interval.as_ref(),
            d.interval,
            parse_duration,
        );
        if interval < Duration::from_millis(100) || interval > Duration::from_secs(600) {
            c.fail("interval", "must be between 100ms and 10m");
        }

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
            rescan_interval: c.parsed(
                "match.rescanInterval",
                m.rescan_interval.as_ref(),
                d.matching.rescan_interval,
                parse_duration,
            ),
        };

        let r = raw.cpu.unwrap_or_default();
        let dc = &d.cpu;
        let cpu = CpuPolicy {
            min_millis: c.parsed("cpu.min", r.min.as_ref(), dc.min_millis, parse_cpu_millis),
            max_millis: c.parsed("cpu.max", r.max.as_ref(), dc.max_millis, parse_cpu_millis),
            scale_down_after: c.parsed(
                "cpu.scaleDownAfter",
                r.scale_down_after.as_ref(),
                dc.scale_down_after,
                parse_duration,
            ),
            target_utilization: c.ratio(
                "cpu.targetUtilization",
                r.target_utilization,
                dc.target_utilization,
                1.0,
            ),
            scale_up_utilization: c.ratio(
                "cpu.scaleUpUtilization",
                r.scale_up_utilization,
                dc.scale_up_utilization,
                1.0,
            ),
            scale_down_utilization: c.ratio(
                "cpu.scaleDownUtilization",
                r.scale_down_utilization,
                dc.scale_down_utilization,
                1.0,
            ),
            throttled_ratio: c.ratio(
                "cpu.throttledRatio",
                r.throttled_ratio,
                dc.throttled_ratio,
                1.0,
            ),
            pressure_threshold: c.ratio(
                "cpu.pressureThreshold",
                r.pressure_threshold,
                dc.pressure_threshold,
                1.0,
            ),
            step_up: c.ratio("cpu.stepUp", r.step_up, dc.step_up, 10.0),
            step_down: c.ratio("cpu.stepDown", r.step_down, dc.step_down, 0.9),
            conflict_backoff: c.parsed(
                "cpu.conflictBackoff",
                r.conflict_backoff.as_ref(),
                dc.conflict_backoff,
                parse_duration,
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
            cpu,
        }
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
    fn syntax_errors_are_reported() {
        let e = errors("interval: [1s\n");
        assert_eq!(e.len(), 1);
    }
}
