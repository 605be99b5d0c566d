//! Prometheus metrics: one registry holding every family the agent exports, with bounded
//! labels (per proxy: namespace, pod, container, pod UID, container ID; actions: resource,
//! direction, reason; errors: kind). A proxy's series are removed when it goes.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of every per-proxy series: the proxy's identity.
pub type ProxyLabels = crate::identity::Identity;

/// Labels of `actions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub resource: &'static str,
    pub direction: &'static str,
    pub reason: &'static str,
}

/// Labels of `errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
}

/// What went wrong, as counted in `errors_total{kind}`: a small, fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Read,
    ReadGone,
    Parse,
    Write,
    WriteEinval,
    WriteDenied,
    WriteTimeout,
    WriteGone,
    InvalidValue,
    Verify,
    Journal,
    Discovery,
    Annotation,
}

impl ErrorKind {
    /// Every kind (pre-created at 0, so a rate() over them works from the start).
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::Read,
        ErrorKind::ReadGone,
        ErrorKind::Parse,
        ErrorKind::Write,
        ErrorKind::WriteEinval,
        ErrorKind::WriteDenied,
        ErrorKind::WriteTimeout,
        ErrorKind::WriteGone,
        ErrorKind::InvalidValue,
        ErrorKind::Verify,
        ErrorKind::Journal,
        ErrorKind::Discovery,
        ErrorKind::Annotation,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Read => "read",
            ErrorKind::ReadGone => "read_gone",
            ErrorKind::Parse => "parse",
            ErrorKind::Write => "write",
            ErrorKind::WriteEinval => "write_einval",
            ErrorKind::WriteDenied => "write_denied",
            ErrorKind::WriteTimeout => "write_timeout",
            ErrorKind::WriteGone => "write_gone",
            ErrorKind::InvalidValue => "invalid_value",
            ErrorKind::Verify => "verify",
            ErrorKind::Journal => "journal",
            ErrorKind::Discovery => "discovery",
            ErrorKind::Annotation => "annotation",
        }
    }
}

/// Labels of `config_reloads_total` and `events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Labels of `config_info`: the live policy's hash (one series at a time).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigLabels {
    pub hash: String,
}

/// Labels of `wakeups_total`: what a wake-up between ticks came to (`raised`, `none`,
/// `held` by a push storm).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WakeLabels {
    pub outcome: &'static str,
}

/// Labels of `discovery_source`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    last_len: std::sync::atomic::AtomicUsize,
    pub proxies: Gauge,
    /// Proxies found by process name alone and left alone (the policy has namespace rules).
    pub unidentified_proxies: Gauge,
    pub actions: Family<ActionLabels, Counter>,
    pub cpu_quota_millicores: Family<ProxyLabels, FloatGauge>,
    pub cpu_original_millicores: Family<ProxyLabels, FloatGauge>,
    pub cpu_usage_millicores: Family<ProxyLabels, FloatGauge>,
    pub cpu_throttled_ratio: Family<ProxyLabels, FloatGauge>,
    pub memory_high_bytes: Family<ProxyLabels, FloatGauge>,
    pub memory_usage_bytes: Family<ProxyLabels, FloatGauge>,
    pub memory_max_bytes: Family<ProxyLabels, FloatGauge>,
    pub memory_pressure_ratio: Family<ProxyLabels, FloatGauge>,
    /// 1 while a proxy's unreclaimable memory grows steadily (the leak shape).
    pub memory_growing: Family<ProxyLabels, Gauge>,
    pub memory_growth_found: Counter,
    pub push_storms: Counter,
    /// Proxies watched by a PSI stall trigger.
    pub stall_triggers: Gauge,
    pub wakeups: Family<WakeLabels, Counter>,
    pub tick_duration_seconds: Histogram,
    pub ticks: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub conflicts: Counter,
    pub journal_entries: Gauge,
    pub discovery_source: Family<SourceLabels, Gauge>,
    pub dry_run: Gauge,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub config_info: Family<ConfigLabels, Gauge>,
    pub config_last_reload_successful: Gauge,
    pub policy_cpu_min_millicores: Gauge,
    pub policy_cpu_max_millicores: Gauge,
    pub events: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sidecar_governor");
        let m = Metrics {
            registry: Registry::default(),
            last_len: std::sync::atomic::AtomicUsize::new(0),
            proxies: Gauge::default(),
            unidentified_proxies: Gauge::default(),
            actions: Family::default(),
            cpu_quota_millicores: Family::default(),
            cpu_original_millicores: Family::default(),
            cpu_usage_millicores: Family::default(),
            cpu_throttled_ratio: Family::default(),
            memory_high_bytes: Family::default(),
            memory_usage_bytes: Family::default(),
            memory_max_bytes: Family::default(),
            memory_pressure_ratio: Family::default(),
            memory_growing: Family::default(),
            memory_growth_found: Counter::default(),
            push_storms: Counter::default(),
            stall_triggers: Gauge::default(),
            wakeups: Family::default(),
            tick_duration_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            ticks: Counter::default(),
            errors: Family::default(),
            conflicts: Counter::default(),
            journal_entries: Gauge::default(),
            discovery_source: Family::default(),
            dry_run: Gauge::default(),
            config_reloads: Family::default(),
            config_info: Family::default(),
            config_last_reload_successful: Gauge::default(),
            policy_cpu_min_millicores: Gauge::default(),
            policy_cpu_max_millicores: Gauge::default(),
            events: Family::default(),
        };
        registry.register("proxies", "Proxies governed now", m.proxies.clone());
        registry.register(
            "unidentified_proxies",
            "Proxies found by a process name alone and left alone until the runtime identifies them (the policy has namespace rules)",
            m.unidentified_proxies.clone(),
        );
        registry.register(
            "memory_high_bytes",
            "memory.high in force (planned, in dry run); +Inf when unlimited",
            m.memory_high_bytes.clone(),
        );
        registry.register(
            "memory_usage_bytes",
            "memory.current at the last tick",
            m.memory_usage_bytes.clone(),
        );
        registry.register(
            "memory_max_bytes",
            "The container's memory.max (the hard limit); +Inf when unlimited",
            m.memory_max_bytes.clone(),
        );
        registry.register(
            "memory_pressure_ratio",
            "Share of the last tick some task stalled on memory (memory.pressure some)",
            m.memory_pressure_ratio.clone(),
        );
        registry.register(
            "memory_growing",
            "1 while the proxy's unreclaimable memory grows steadily (memory.growth: the leak shape; memory.high is not probed down meanwhile)",
            m.memory_growing.clone(),
        );
        registry.register(
            "memory_growth_found",
            "Times steady growth of a proxy's unreclaimable memory was found (each also a SidecarMemoryGrowing Event)",
            m.memory_growth_found.clone(),
        );
        registry.register(
            "push_storms",
            "Node-wide simultaneous CPU spikes (config pushes) absorbed instead of scaling up",
            m.push_storms.clone(),
        );
        registry.register(
            "stall_triggers",
            "Proxies watched by a PSI trigger on cpu.pressure (wake-ups between ticks)",
            m.stall_triggers.clone(),
        );
        for outcome in ["raised", "none", "held"] {
            let _ = m.wakeups.get_or_create(&WakeLabels { outcome });
        }
        registry.register(
            "wakeups",
            "Wake-ups between ticks by a proxy's stall trigger, by outcome (raised, none, held by a push storm)",
            m.wakeups.clone(),
        );
        registry.register(
            "actions",
            "Limit changes made (or, in dry run, decided), by resource, direction and reason",
            m.actions.clone(),
        );
        registry.register(
            "cpu_quota_millicores",
            "CPU quota in force (cpu.max), in millicores",
            m.cpu_quota_millicores.clone(),
        );
        registry.register(
            "cpu_original_millicores",
            "The container's original CPU quota before the agent changed it, in millicores",
            m.cpu_original_millicores.clone(),
        );
        registry.register(
            "cpu_usage_millicores",
            "CPU used over the last tick, in millicores",
            m.cpu_usage_millicores.clone(),
        );
        registry.register(
            "cpu_throttled_ratio",
            "Share of CFS periods throttled over the last tick",
            m.cpu_throttled_ratio.clone(),
        );
        registry.register(
            "tick_duration_seconds",
            "Wall time of one control tick",
            m.tick_duration_seconds.clone(),
        );
        registry.register("ticks", "Control ticks completed", m.ticks.clone());
        registry.register("errors", "Errors by kind", m.errors.clone());
        registry.register(
            "conflicts",
            "Limits changed by someone else and adopted as the new original",
            m.conflicts.clone(),
        );
        registry.register(
            "journal_entries",
            "Containers whose originals are journaled (changed by the agent)",
            m.journal_entries.clone(),
        );
        registry.register(
            "discovery_source",
            "1 for the discovery source in use",
            m.discovery_source.clone(),
        );
        registry.register(
            "dry_run",
            "1 when decisions are not written",
            m.dry_run.clone(),
        );
        registry.register(
            "config_reloads",
            "Policy reloads from the config file, by result (success, failure)",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_info",
            "1 for the live policy, labelled with the first 16 hex digits of its text's SHA-256",
            m.config_info.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 when the last policy (re)load succeeded, 0 when the file holds a refused policy",
            m.config_last_reload_successful.clone(),
        );
        registry.register(
            "policy_cpu_min_millicores",
            "The live policy's cpu.min (the floor), in millicores",
            m.policy_cpu_min_millicores.clone(),
        );
        registry.register(
            "policy_cpu_max_millicores",
            "The live policy's cpu.max (the ceiling), in millicores",
            m.policy_cpu_max_millicores.clone(),
        );
        registry.register(
            "events",
            "Kubernetes Events by result (sent, failed, dropped: queue full, rate_limited)",
            m.events.clone(),
        );
        // Known error kinds exist from the start at 0, so alerts on their rate see a series.
        for kind in ErrorKind::ALL {
            let _ = m.errors.get_or_create(&ErrorLabels {
                kind: kind.as_str(),
            });
        }
        Metrics { registry, ..m }
    }

    /// Counts one error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Counts one action.
    /// Counts a wake-up between ticks by its outcome.
    pub fn wakeup(&self, outcome: &'static str) {
        self.wakeups.get_or_create(&WakeLabels { outcome }).inc();
    }

    pub fn action(&self, resource: &'static str, direction: &'static str, reason: &'static str) {
        self.actions
            .get_or_create(&ActionLabels {
                resource,
                direction,
                reason,
            })
            .inc();
    }

    /// Marks `hash` as the live policy's, removing the previous hash's series.
    pub fn set_config_hash(&self, hash: &str) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&ConfigLabels {
                hash: hash.to_string(),
            })
            .set(1);
    }

    /// Counts one policy reload; `success` also marks the last reload successful.
    pub fn config_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
        self.config_last_reload_successful.set(i64::from(success));
    }

    /// Exports the live policy's bounds.
    pub fn set_policy(&self, policy: &crate::policy::Policy) {
        self.policy_cpu_min_millicores
            .set(i64::try_from(policy.cpu.min_millis).unwrap_or(i64::MAX));
        self.policy_cpu_max_millicores
            .set(i64::try_from(policy.cpu.max_millis).unwrap_or(i64::MAX));
    }

    /// Counts one Kubernetes Event by `result`.
    pub fn event(&self, result: &'static str) {
        self.events.get_or_create(&ResultLabels { result }).inc();
    }

    /// Removes every series of a proxy that went away.
    pub fn forget(&self, labels: &ProxyLabels) {
        self.cpu_quota_millicores.remove(labels);
        self.cpu_original_millicores.remove(labels);
        self.cpu_usage_millicores.remove(labels);
        self.cpu_throttled_ratio.remove(labels);
        self.memory_high_bytes.remove(labels);
        self.memory_usage_bytes.remove(labels);
        self.memory_max_bytes.remove(labels);
        self.memory_pressure_ratio.remove(labels);
        self.memory_growing.remove(labels);
    }

    /// Marks `source` as the discovery source in use.
    pub fn set_source(&self, source: &'static str) {
        for s in ["procfs", "cri"] {
            self.discovery_source
                .get_or_create(&SourceLabels { source: s })
                .set(i64::from(s == source));
        }
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(&self) -> String {
        // Sized from the last exposition: with thousands of series the text is megabytes,
        // and growing it by doubling would briefly hold twice that.
        let hint = self.last_len.load(std::sync::atomic::Ordering::Relaxed);
        let mut out = String::with_capacity(hint + hint / 8 + 16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        self.last_len
            .store(out.len(), std::sync::atomic::Ordering::Relaxed);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_removal() {
        let m = Metrics::new();
        let labels = ProxyLabels {
            pod_uid: "u".into(),
            container_id: "c".into(),
            ..Default::default()
        };
        m.proxies.set(1);
        m.cpu_quota_millicores.get_or_create(&labels).set(250.0);
        m.action("cpu", "down", "idle");
        m.error(ErrorKind::Read);
        let text = m.encode();
        for name in [
            "sidecar_governor_proxies 1",
            "sidecar_governor_actions_total{resource=\"cpu\",direction=\"down\",reason=\"idle\"} 1",
            "sidecar_governor_cpu_quota_millicores{namespace=\"\",pod=\"\",container=\"\",pod_uid=\"u\",container_id=\"c\"} 250.0",
            "sidecar_governor_errors_total{kind=\"read\"} 1",
            "sidecar_governor_tick_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        m.forget(&labels);
        assert!(!m.encode().contains("pod_uid=\"u\""));
    }

    #[test]
    fn config_info_keeps_one_hash() {
        let m = Metrics::new();
        m.set_config_hash("aaaa");
        m.set_config_hash("bbbb");
        m.config_reload(true);
        m.config_reload(false);
        let text = m.encode();
        assert!(
            text.contains("sidecar_governor_config_info{hash=\"bbbb\"} 1"),
            "{text}"
        );
        assert!(!text.contains("aaaa"), "{text}");
        assert!(text.contains("sidecar_governor_config_reloads_total{result=\"success\"} 1"));
        assert!(text.contains("sidecar_governor_config_reloads_total{result=\"failure\"} 1"));
        assert!(text.contains("sidecar_governor_config_last_reload_successful 0"));
    }
}
