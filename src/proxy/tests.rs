//! The per-proxy core, step by step over the simulator's kernel model (in memory), with
//! failures injected at the seam: what it plans, what it stages before a write, and what it
//! takes for someone else's value.

use std::time::{Duration, Instant};

use super::*;
use crate::cgroup::{CgroupError, MemoryStat};
use crate::controller::{Reason, Wake};
use crate::ownership::Owned;
use crate::policy::Policy;
use crate::sampler::MemoryRaw;
use crate::simulate::kernel::{CgroupModel, Demand, ModelIo};

const MI: u64 = 1 << 20;

/// The kernel model with failures to inject.
struct Fake {
    model: CgroupModel,
    memory: bool,
    reclaimed: u64,
    gone: bool,
    /// `memory.high` writes land but answer with a timeout.
    memory_times_out: bool,
    /// CPU samples taken.
    cpu_samples: usize,
}

fn gone() -> CgroupError {
    CgroupError::Read {
        path: "/fake/cpu.stat".into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

impl Fake {
    fn new(cpu_millis: u64, memory: bool) -> Fake {
        Fake {
            model: CgroupModel::new(cpu_millis, 1 << 30),
            memory,
            reclaimed: 0,
            gone: false,
            memory_times_out: false,
            cpu_samples: 0,
        }
    }

    fn io(&mut self) -> ModelIo<'_> {
        ModelIo {
            model: &mut self.model,
            memory: self.memory,
            reclaimed: &mut self.reclaimed,
        }
    }

    fn run(&mut self, cpu_millis: f64, memory_bytes: u64) {
        let demand = Demand {
            cpu_millis,
            memory_bytes,
            unreclaimable_bytes: memory_bytes / 2,
        };
        self.model.run(&demand, 1_000_000);
        self.model.end_tick();
    }
}

impl ProxyIo for Fake {
    fn sample_cpu(&mut self, now: Instant) -> Result<RawSample, CgroupError> {
        if self.gone {
            return Err(gone());
        }
        self.cpu_samples += 1;
        self.io().sample_cpu(now)
    }
    fn write_cpu(&mut self, v: &CpuMax, b: Option<(u64, u64)>) -> Result<(), CgroupError> {
        self.io().write_cpu(v, b)
    }
    fn sample_memory(&mut self, now: Instant) -> Option<Result<MemoryRaw, CgroupError>> {
        self.io().sample_memory(now)
    }
    fn read_memory_stat(&mut self) -> Result<MemoryStat, CgroupError> {
        self.io().read_memory_stat()
    }
    fn read_memory_max(&mut self) -> Result<Option<u64>, CgroupError> {
        self.io().read_memory_max()
    }
    fn read_memory_high(&mut self) -> Result<Option<u64>, CgroupError> {
        self.io().read_memory_high()
    }
    fn set_memory_high(&mut self, b: u64, t: Duration) -> Result<Option<u64>, CgroupError> {
        let landed = self.io().set_memory_high(b, t)?;
        if self.memory_times_out {
            return Err(CgroupError::Timeout {
                path: "/fake/memory.high".into(),
                value: b.to_string(),
                after: t,
            });
        }
        Ok(landed)
    }
    fn reclaim(&mut self, b: u64, t: Duration) -> Result<(), CgroupError> {
        self.io().reclaim(b, t)
    }
}

/// One proxy: its fake kernel, its core and its record, stepped a second at a time.
struct Proxy {
    fake: Fake,
    core: ProxyCore,
    record: ContainerRecord,
    policy: Policy,
    dry_run: bool,
    t0: Instant,
    second: u64,
}

impl Proxy {
    fn new(cpu_millis: u64, memory: bool) -> Proxy {
        let mut fake = Fake::new(cpu_millis, memory);
        let mut policy = Policy::default();
        policy.memory.enabled = memory;
        let mem = match (fake.sample_memory(Instant::now()), fake.read_memory_max()) {
            (Some(Ok(first)), Ok(limit)) => Some((MemoryCore::new(limit), first.high)),
            _ => None,
        };
        let (mem, found_high) = mem.unzip();
        let record = ContainerRecord {
            id: crate::identity::Identity {
                namespace: "ns".into(),
                pod: "pod".into(),
                container: "istio-proxy".into(),
                pod_uid: "uid".into(),
                container_id: "cid".into(),
            },
            cpu_max: Owned::new(CpuMaxValue(fake.model.cpu_max())),
            cpu_max_burst: None,
            memory_high: found_high.map(|h| Owned::new(Limit(h))),
            pod_hold: None,
            recorded_at: 0,
        };
        Proxy {
            fake,
            core: ProxyCore::new(mem),
            record,
            policy,
            dry_run: false,
            t0: Instant::now(),
            second: 0,
        }
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_secs(self.second)
    }

    /// Lets a second of `cpu_millis` demand pass and steps; plans are staged and applied.
    fn tick(&mut self, cpu_millis: f64) -> StepOutcome {
        self.fake.run(cpu_millis, 100 * MI);
        self.second += 1;
        let now = self.now();
        let settings = Settings {
            cpu: &self.policy.cpu,
            memory: &self.policy.memory,
            dry_run: self.dry_run,
            concurrency: None,
            conflict_backoff: self.policy.cpu.conflict_backoff,
            runtime_identity: true,
            protected: false,
        };
        let out = self
            .core
            .step(&mut self.fake, &mut self.record, &settings, now);
        if let Some(plan) = out.cpu.clone() {
            if plan.dry_run {
                self.core.plan_only(&plan);
            } else {
                let w = self.core.stage_cpu(plan, None, None, &mut self.record);
                // Staged: the record holds the value before the file does.
                assert_eq!(self.record.cpu_max.pending, Some(CpuMaxValue(w.cpu_max)));
                assert_ne!(self.fake.model.cpu_max(), w.cpu_max);
                self.core
                    .apply_cpu(&mut self.fake, &w, Some(&mut self.record))
                    .expect("write");
                assert_eq!(self.record.cpu_max.written, Some(CpuMaxValue(w.cpu_max)));
                assert_eq!(self.record.cpu_max.pending, None);
            }
        }
        if let Some(plan) = out.memory.clone()
            && !plan.dry_run
        {
            self.core.stage_memory(&plan, &mut self.record);
            let p = &self.policy.memory;
            let _ = self.core.apply_memory(
                &mut self.fake,
                &plan,
                Some(&mut self.record),
                p.write_timeout,
                p.timeout_backoff,
                now,
            );
        }
        out
    }

    fn quota(&self) -> Option<u64> {
        self.fake.model.cpu_max().millis()
    }
}

#[test]
fn an_idle_proxy_shrinks_after_scale_down_after_and_a_hot_one_grows() {
    let mut p = Proxy::new(2000, false);
    let wait = p.policy.cpu.scale_down_after.as_secs();
    let mut first_down = None;
    for t in 1..=wait + 5 {
        let out = p.tick(5.0);
        if out.cpu.is_some() && first_down.is_none() {
            first_down = Some(t);
        }
    }
    let first_down = first_down.expect("an idle proxy shrinks");
    assert!(
        first_down >= wait,
        "not before scaleDownAfter ({first_down} s)"
    );
    let low = p.quota().unwrap();
    assert!(low < 2000, "shrunk to {low}m");
    // Hot: grows at the first throttled tick after the one that primes nothing.
    let out = p.tick(1500.0);
    let plan = out.cpu.expect("a throttled proxy grows");
    assert_eq!(plan.decision.direction, Direction::Up);
    assert!(p.quota().unwrap() > low);
    assert!(p.quota().unwrap() <= 2000, "never above its own limit");
}

#[test]
fn a_value_the_agent_did_not_write_becomes_the_original_and_the_proxy_backs_off() {
    let mut p = Proxy::new(2000, false);
    while p.quota() == Some(2000) {
        assert!(p.second < 120, "never shrank");
        p.tick(5.0);
    }
    // A kubelet resize to 3 cores.
    p.fake.model.set_cpu_millis(3000);
    let out = p.tick(5.0);
    assert_eq!(out.outside, vec!["cpu.max"]);
    assert_eq!(p.record.cpu_max.original.0.millis(), Some(3000));
    assert!(p.record.cpu_max.written.is_none(), "nothing of ours holds");
    // Left alone for the back-off, even though it is idle.
    let backoff = p.policy.cpu.conflict_backoff.as_secs();
    for _ in 1..backoff {
        assert!(p.tick(5.0).cpu.is_none());
    }
    assert_eq!(p.quota(), Some(3000));
}

#[test]
fn a_change_before_the_agent_wrote_anything_is_just_the_new_original() {
    let mut p = Proxy::new(2000, false);
    p.tick(5.0);
    p.fake.model.set_cpu_millis(1000);
    let out = p.tick(5.0);
    assert!(
        out.outside.is_empty(),
        "no conflict: nothing of ours was there"
    );
    assert_eq!(p.record.cpu_max.original.0.millis(), Some(1000));
}

#[test]
fn dry_run_plans_and_shows_but_writes_nothing() {
    let mut p = Proxy::new(2000, false);
    p.dry_run = true;
    let mut planned = None;
    for _ in 0..120 {
        if let Some(plan) = p.tick(5.0).cpu {
            assert!(plan.dry_run);
            assert!(plan.event("istio-proxy").is_none(), "no Event for a plan");
            planned = Some(plan.decision.quota_millis);
        }
    }
    let planned = planned.expect("an idle proxy is planned down");
    assert_eq!(p.quota(), Some(2000), "the file is untouched");
    assert!(!p.record.touched());
    assert_eq!(p.core.shown_quota(true), Some(planned));
    assert_eq!(p.core.shown_quota(false), Some(2000));
}

#[test]
fn a_memory_write_that_timed_out_is_the_agents_own_value_not_someone_elses() {
    let mut p = Proxy::new(2000, true);
    p.fake.memory_times_out = true;
    let mut placed = None;
    for _ in 0..200 {
        let out = p.tick(5.0);
        assert!(out.outside.is_empty(), "own write taken for someone else's");
        if let Some(plan) = out.memory
            && plan.decision.reason == Reason::Placement
            && placed.is_none()
        {
            placed = Some(p.second);
        }
    }
    assert!(placed.is_some(), "memory.high placed after settleAfter");
    // The kernel holds the value; the record has it as pending (never as an original).
    let high = p.fake.model.memory_high();
    assert!(high.is_some());
    assert_eq!(p.record.memory_high.unwrap().original, Limit(None));
    assert!(p.record.memory_high.unwrap().touched());
}

#[test]
fn a_gone_container_is_reported_gone() {
    let mut p = Proxy::new(2000, true);
    p.tick(5.0);
    p.fake.gone = true;
    assert!(p.tick(5.0).gone);
}

#[test]
fn a_proxy_primed_when_found_is_not_read_again_at_that_instant() {
    let mut p = Proxy::new(2000, false);
    let found = p.now();
    let first = p.fake.sample_cpu(found).unwrap();
    p.core.prime(first);
    let settings = Settings {
        cpu: &p.policy.cpu,
        memory: &p.policy.memory,
        dry_run: false,
        concurrency: None,
        conflict_backoff: p.policy.cpu.conflict_backoff,
        runtime_identity: true,
        protected: false,
    };
    let out = p.core.step(&mut p.fake, &mut p.record, &settings, found);
    assert_eq!(
        p.fake.cpu_samples, 1,
        "the adoption's reading serves this tick"
    );
    assert!(out.cpu.is_none() && out.problems.is_empty());
    // A second later the primed sample is the previous one: an observation at once.
    p.fake.run(5.0, 100 * MI);
    let later = found + Duration::from_secs(1);
    p.core.step(&mut p.fake, &mut p.record, &settings, later);
    assert_eq!(p.fake.cpu_samples, 2);
    assert!(
        p.core.last_obs().is_some(),
        "observed from the primed sample"
    );
}

#[test]
fn a_wake_up_at_the_ceiling_reads_nothing_and_below_it_grows_only() {
    let mut p = Proxy::new(2000, false);
    // Hot at its own 2 cores (the ceiling): a stall trigger fires every window, and each
    // wake-up must cost nothing — no sample.
    p.tick(3000.0);
    p.tick(3000.0);
    let policy = p.policy.clone();
    let settings = Settings {
        cpu: &policy.cpu,
        memory: &policy.memory,
        dry_run: false,
        concurrency: None,
        conflict_backoff: policy.cpu.conflict_backoff,
        runtime_identity: true,
        protected: false,
    };
    let samples = p.fake.cpu_samples;
    let at = p.now() + Duration::from_millis(300);
    let out = p
        .core
        .wake(&mut p.fake, &mut p.record, &settings, at, Wake::Trigger);
    assert!(out.cpu.is_none() && out.look_again.is_none());
    assert_eq!(p.fake.cpu_samples, samples, "nothing read at the ceiling");
    // Idle: it shrinks on ticks; a wake-up while idle (no stall) never shrinks it further.
    for _ in 0..40 {
        p.tick(5.0);
    }
    let low = p.quota().unwrap();
    assert!(low < 2000);
    p.fake.run(5.0, 100 * MI);
    let at = p.now() + Duration::from_millis(500);
    let out = p
        .core
        .wake(&mut p.fake, &mut p.record, &settings, at, Wake::Trigger);
    assert_eq!(
        p.fake.cpu_samples,
        samples + 41,
        "below the ceiling it samples"
    );
    assert!(out.cpu.is_none(), "no stall, no action: {:?}", out.cpu);
    // Stalled (1.5 cores of demand on the floor): growth, reason stall.
    p.fake.run(1500.0, 100 * MI);
    let at = at + Duration::from_millis(900);
    let out = p
        .core
        .wake(&mut p.fake, &mut p.record, &settings, at, Wake::Trigger);
    let plan = out.cpu.expect("a stalled proxy grows between ticks");
    assert_eq!(
        (plan.decision.direction, plan.decision.reason),
        (Direction::Up, Reason::Stall)
    );
    assert!(plan.decision.quota_millis > low);
}
