//! The I/O seam of one proxy: every read and write the per-proxy core needs (sample, read
//! `memory.stat`, write `cpu.max`/`cpu.max.burst`/`memory.high`, reclaim), as the
//! [`ProxyIo`] trait. [`CgroupIo`] implements it over a container's cgroup files (the agent);
//! the simulator implements it over its kernel model. The core never touches a file itself,
//! so both run exactly the same step.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::actuator;
use crate::cgroup::{CgroupError, CpuMax, MemoryStat};
use crate::sampler::{self, MemoryFiles, MemoryRaw, ProxyFiles, RawSample};

/// What the per-proxy core reads and writes. A `CgroupError` that `is_gone()` means the
/// container went away.
pub(crate) trait ProxyIo {
    /// Reads the CPU files now.
    fn sample_cpu(&mut self, now: Instant) -> Result<RawSample, CgroupError>;
    /// Writes `cpu.max`, with the burst moved from `.0` to `.1` in the safe order.
    fn write_cpu(&mut self, cpu_max: &CpuMax, burst: Option<(u64, u64)>)
    -> Result<(), CgroupError>;
    /// Reads the memory files now (`None` when memory is not governed for this proxy).
    fn sample_memory(&mut self, now: Instant) -> Option<Result<MemoryRaw, CgroupError>>;
    /// Reads `memory.stat` (large: only when a decision needs it).
    fn read_memory_stat(&mut self) -> Result<MemoryStat, CgroupError>;
    /// Reads `memory.max` (`None` = unlimited).
    fn read_memory_max(&mut self) -> Result<Option<u64>, CgroupError>;
    /// Reads `memory.high` (`None` = `max`).
    fn read_memory_high(&mut self) -> Result<Option<u64>, CgroupError>;
    /// Writes `memory.high` and returns what the kernel holds after it.
    fn set_memory_high(
        &mut self,
        bytes: u64,
        timeout: Duration,
    ) -> Result<Option<u64>, CgroupError>;
    /// Asks the kernel to reclaim `bytes` from the cgroup.
    fn reclaim(&mut self, bytes: u64, timeout: Duration) -> Result<(), CgroupError>;
}

/// A container's cgroup files, borrowed for one step (the buffer is the loop's, shared).
#[derive(Debug)]
pub(crate) struct CgroupIo<'a> {
    pub dir: &'a Path,
    pub files: &'a mut ProxyFiles,
    pub memory: Option<&'a mut MemoryFiles>,
    pub buf: &'a mut Vec<u8>,
}

impl ProxyIo for CgroupIo<'_> {
    fn sample_cpu(&mut self, now: Instant) -> Result<RawSample, CgroupError> {
        self.files.sample(self.buf, now)
    }

    fn write_cpu(
        &mut self,
        cpu_max: &CpuMax,
        burst: Option<(u64, u64)>,
    ) -> Result<(), CgroupError> {
        // Through the descriptors the sampler holds: no opens, no path lookups.
        actuator::write_cpu_held(self.files, self.buf, cpu_max, burst)
    }

    fn sample_memory(&mut self, now: Instant) -> Option<Result<MemoryRaw, CgroupError>> {
        let files = self.memory.as_mut()?;
        Some(files.sample(self.buf, now))
    }

    fn read_memory_stat(&mut self) -> Result<MemoryStat, CgroupError> {
        sampler::read_memory_stat(self.dir)
    }

    fn read_memory_max(&mut self) -> Result<Option<u64>, CgroupError> {
        sampler::read_memory_max(self.dir)
    }

    fn read_memory_high(&mut self) -> Result<Option<u64>, CgroupError> {
        actuator::read_memory_high(self.dir)
    }

    fn set_memory_high(
        &mut self,
        bytes: u64,
        timeout: Duration,
    ) -> Result<Option<u64>, CgroupError> {
        actuator::set_memory_high(self.dir, Some(bytes), timeout)
    }

    fn reclaim(&mut self, bytes: u64, timeout: Duration) -> Result<(), CgroupError> {
        actuator::reclaim_memory(self.dir, bytes, timeout)
    }
}
