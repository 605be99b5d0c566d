//! Pod cgroups inside the control loop (`cpu.allowAboveLimit`): a child's quota is silently
//! capped by its parent's, so a container grown above its own limit needs its pod raised by
//! the excess. One shared record per pod ([`crate::ownership::PodRecord`]) is held by the
//! governed containers that raised it; its quota is the original plus their excess, written
//! once per tick — before the containers when it goes up, after them when it comes down —
//! reconciled every tick like any owned file, and given back when the last holder goes.

use std::path::Path;
use std::time::Instant;

use tracing::warn;

use super::Agent;
use crate::actuator;
use crate::cgroup::CpuMax;
use crate::events::{EventReason, PodEvent};
use crate::ownership::{CpuMaxValue, Found, Owned, PodRecord};

/// A pod quota staged this tick.
#[derive(Debug)]
pub(super) struct PodWrite {
    key: String,
    target: CpuMax,
    /// Goes up: written before the containers.
    pub raise: bool,
}

impl Agent {
    /// Makes sure `pod_key` has a record before a container first holds it. `Ok(false)` when
    /// the pod is unlimited (nothing to raise); `Err` when its `cpu.max` cannot be read (then
    /// the container is not written either).
    pub(super) fn ensure_pod_record(&mut self, pod_key: &str, pod_dir: &Path) -> Result<bool, ()> {
        if let Some(pod) = self.journal.pod(pod_key) {
            return Ok(pod.cpu_max.original.0.quota_us.is_some());
        }
        match actuator::read_cpu_max(pod_dir) {
            Ok(now) if now.quota_us.is_none() => Ok(false),
            Ok(now) => {
                self.journal.insert_pod(
                    pod_key,
                    PodRecord {
                        cpu_max: Owned::new(CpuMaxValue(now)),
                        holders: Default::default(),
                    },
                );
                Ok(true)
            }
            Err(e) => {
                warn!(pod_cgroup = pod_key, error = %e, "cannot read the pod's cpu.max; not writing");
                self.shared.metrics.error(e.kind());
                Err(())
            }
        }
    }

    /// Reads every held pod's `cpu.max` and reconciles it with its record: a value the agent
    /// did not write (an in-place resize of the pod) becomes the pod's original, is counted,
    /// and the pod's containers back off.
    pub(super) fn reconcile_pods(&mut self, now: Instant) {
        let keys: Vec<String> = self.journal.pods().map(|(k, _)| k.clone()).collect();
        for key in keys {
            let dir = self.cgroup_root.join(&key);
            let found = match actuator::read_cpu_max(&dir) {
                Ok(v) => CpuMaxValue(v),
                Err(e) if e.is_gone() => continue,
                Err(e) => {
                    self.shared.metrics.error(e.kind());
                    continue;
                }
            };
            let Some(pod) = self.journal.pod(&key) else {
                continue;
            };
            let touched = pod.cpu_max.touched();
            match pod.cpu_max.classify(&found) {
                Found::Untouched => continue,
                Found::Ours if pod.cpu_max.pending != Some(found) => continue,
                _ => {}
            }
            let holders = pod.holders.clone();
            let Some(mut pod) = self.journal.pod_mut(&key) else {
                continue;
            };
            let (kind, _) = pod.cpu_max.observe(found);
            if kind != Found::Outside || !touched {
                continue;
            }
            warn!(
                pod_cgroup = key,
                found = %found.0,
                "the pod's cpu.max changed by someone else (in-place resize?); adopting it as the original"
            );
            self.shared.metrics.conflicts.inc();
            let backoff = now + self.policy.cpu.conflict_backoff;
            let mut told = false;
            for holder in holders {
                if let Some(g) = self.governed.get_mut(&holder) {
                    g.core.back_off_cpu(backoff);
                    if !told {
                        told = true;
                        self.events.emit(PodEvent::about(
                            &g.proxy.id,
                            EventReason::Conflict,
                            format!(
                                "the pod's cpu.max changed by someone else (found {}): adopted as its original; backing off",
                                found.0
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// Recomputes the quota of each pod whose holders changed this tick — its original plus
    /// their excess over their own limits — and records it as pending where it moves.
    pub(super) fn stage_pods(&mut self) -> Vec<PodWrite> {
        let due = std::mem::take(&mut self.pods_due);
        let mut writes = Vec::new();
        for key in due {
            let Some(pod) = self.journal.pod(&key) else {
                continue;
            };
            let excess: u64 = pod
                .holders
                .iter()
                .filter_map(|h| self.journal.container(h))
                .map(|r| r.excess_millis())
                .sum();
            let Some(target) = pod.target(excess) else {
                continue;
            };
            let intended = pod.cpu_max.intended().0;
            if target == intended {
                continue;
            }
            let raise = target.millis() > intended.millis();
            if let Some(mut pod) = self.journal.pod_mut(&key) {
                pod.cpu_max.begin(CpuMaxValue(target));
            }
            writes.push(PodWrite { key, target, raise });
        }
        writes
    }

    /// Writes staged pod quotas and confirms them in their records.
    pub(super) fn apply_pods(&mut self, writes: Vec<PodWrite>) {
        for w in writes {
            let dir = self.cgroup_root.join(&w.key);
            match actuator::write_cpu_max(&dir, &w.target) {
                Ok(now) => {
                    if let Some(mut pod) = self.journal.pod_mut(&w.key) {
                        pod.cpu_max.confirm(CpuMaxValue(now));
                    }
                }
                Err(e) if e.is_gone() => {}
                Err(e) => {
                    warn!(pod_cgroup = w.key, error = %e, "pod cpu.max write failed");
                    self.shared.metrics.error(e.kind());
                }
            }
        }
    }
}
