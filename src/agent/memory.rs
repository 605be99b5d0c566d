//! Memory inside the control loop: opening a proxy's memory files when it is found, and the
//! loop's side of the memory plans its core ([`crate::proxy::ProxyCore`]) makes — staged as
//! pending in the journal before the one flush, written after it, and counted, logged and
//! shown. What is decided, and how a write that timed out or failed its read-back stays the
//! agent's own value, is the core's (`proxy::memory`).

use std::path::Path;
use std::time::Instant;

use tracing::{info, warn};

use super::Agent;
use crate::cgroup::CgroupError;
use crate::proxy::{CgroupIo, MemoryCore, MemoryPlan};
use crate::sampler::{MemoryFiles, read_memory_max};

/// Opens the memory files of `dir`, reads them once at `now` and makes the memory side of
/// its core, primed with that reading. Also returns the `memory.high` found (`None` = `max`).
pub(super) fn open(
    dir: &Path,
    buf: &mut Vec<u8>,
    now: Instant,
) -> Result<(MemoryFiles, MemoryCore, Option<u64>), CgroupError> {
    let mut files = MemoryFiles::open(dir)?;
    let first = files.sample(buf, now)?;
    let mut core = MemoryCore::new(read_memory_max(dir)?);
    core.prime(first);
    Ok((files, core, first.high))
}

impl Agent {
    /// Records each `memory.high` about to be written as pending in its container's record.
    /// Dry-run plans are only counted and shown.
    pub(super) fn stage_memory(
        &mut self,
        plans: Vec<(String, MemoryPlan)>,
    ) -> Vec<(String, MemoryPlan)> {
        let mut writes = Vec::with_capacity(plans.len());
        for (key, plan) in plans {
            if plan.dry_run {
                self.record_memory_action(&key, &plan);
                continue;
            }
            if let (Some(g), Some(mut record)) =
                (self.governed.get(&key), self.journal.container_mut(&key))
            {
                g.core.stage_memory(&plan, &mut record);
            }
            writes.push((key, plan));
        }
        writes
    }

    /// The journal could not be written: nothing was; a placement is to be made again.
    pub(super) fn unstage_memory(&mut self, writes: &[(String, MemoryPlan)]) {
        for (key, plan) in writes {
            if let Some(g) = self.governed.get_mut(key) {
                g.core.unstage_memory(plan);
            }
        }
    }

    /// Writes one staged memory plan. Returns false when the proxy turned out to be gone.
    pub(super) fn apply_memory(&mut self, key: &str, plan: &MemoryPlan, now: Instant) -> bool {
        let (timeout, backoff) = (
            self.policy.memory.write_timeout,
            self.policy.memory.timeout_backoff,
        );
        let Some(g) = self.governed.get_mut(key) else {
            return true;
        };
        let mut io = CgroupIo {
            dir: &g.proxy.dir,
            files: &mut g.files,
            memory: g.mem_files.as_mut(),
            buf: &mut self.buf,
        };
        let mut record = self.journal.container_mut(key);
        let result =
            g.core
                .apply_memory(&mut io, plan, record.as_deref_mut(), timeout, backoff, now);
        drop(record);
        match result {
            Ok(()) => {
                self.record_memory_action(key, plan);
                true
            }
            Err(e) if e.is_gone() => false,
            Err(e) => {
                warn!(cgroup = key, error = %e, "memory write failed; leaving the cgroup alone for a while");
                self.shared.metrics.error(e.kind());
                true
            }
        }
    }

    /// Counts and logs one memory action.
    fn record_memory_action(&self, key: &str, plan: &MemoryPlan) {
        let d = &plan.decision;
        let (direction, reason) = (d.direction.as_str(), d.reason.as_str());
        self.shared.metrics.action("memory", direction, reason);
        let Some(g) = self.governed.get(key) else {
            return;
        };
        info!(
            cgroup = key,
            namespace = g.proxy.id.namespace,
            pod = g.proxy.id.pod,
            container = g.proxy.id.container,
            direction,
            reason,
            from = plan.from,
            to = plan.to,
            current = plan.current,
            pressure = plan.pressure.unwrap_or(0.0),
            dry_run = plan.dry_run,
            "memory"
        );
    }
}
