//! The controller: pure decisions from samples to actions. Nothing here reads or writes a
//! file or looks at a clock — every input (sample deltas, elapsed time, bounds, policy) is
//! passed in, so each rule is tested tick by tick with plain tables.

pub(crate) mod cpu;
pub(crate) mod growth;
pub(crate) mod memory;
pub(crate) mod storm;

pub(crate) use cpu::{
    CpuBounds, CpuDecision, CpuObservation, CpuState, Wake, decide_cpu, decide_wake,
    fitting_workers,
};
pub(crate) use memory::{
    MemoryAction, MemoryBounds, MemoryDecision, MemoryEventsDelta, MemoryObservation, MemoryState,
    decide_memory, wants_stat,
};

/// Which way an action moved a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
    Restore,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Restore => "restore",
        }
    }
}

/// Why an action was taken: a small, fixed set (it is a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The proxy was throttled in more than `throttledRatio` of its periods.
    Throttled,
    /// Usage above `scaleUpUtilization` of the quota.
    NearQuota,
    /// CPU pressure (PSI) above `pressureThreshold` with usage above target.
    Pressure,
    /// Stalled between ticks: its CPU pressure trigger woke the loop (`cpu.wakeOnStall`).
    Stall,
    /// Low use for `scaleDownAfter`.
    Idle,
    /// The quota lay outside the policy's bounds (a reload moved them).
    Policy,
    /// Put back on agent exit.
    Exit,
    /// Put back by `sidecar-governor restore`.
    Command,
    /// Put back because the container is no longer a governed proxy (or its mode is `off`).
    Released,
    /// Put back because the proxy (or the whole agent) went to dry run.
    DryRun,
    /// First `memory.high` placement at peak plus headroom after the settle period.
    Placement,
    /// `memory.events` `high`, `max` or `oom_kill` went up: immediate back-off.
    MemoryEvents,
    /// Unreclaimable memory nearing `memory.high`: room made before it stalls.
    NearLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Throttled => "throttled",
            Reason::NearQuota => "near_quota",
            Reason::Pressure => "pressure",
            Reason::Stall => "stall",
            Reason::Idle => "idle",
            Reason::Policy => "policy",
            Reason::Exit => "exit",
            Reason::Command => "command",
            Reason::Released => "released",
            Reason::DryRun => "dry_run",
            Reason::Placement => "placement",
            Reason::MemoryEvents => "memory_events",
            Reason::NearLimit => "near_limit",
        }
    }
}
