//! End-to-end simulations on small traces: the policy's controller against the kernel model.

use super::*;
use crate::controller::Reason;

const MI: u64 = 1 << 20;

fn policy() -> Policy {
    Policy::default()
}

fn run(text: &str, policy: &Policy) -> Report {
    let trace = parse_trace(text).unwrap();
    simulate(policy, &trace, &Options::default())
        .unwrap()
        .report
}

/// A per-second trace of `seconds` rows for `proxy` from `f(t) -> (cpu, memory, unreclaimable)`.
fn per_second(proxy: &str, seconds: u64, f: impl Fn(u64) -> (f64, u64, u64)) -> String {
    let mut out = String::from("time,proxy,cpu_millicores,memory_bytes,unreclaimable_bytes\n");
    for t in 0..=seconds {
        let (cpu, mem, anon) = f(t);
        out.push_str(&format!("{t},{proxy},{cpu},{mem},{anon}\n"));
    }
    out
}

#[test]
fn an_idle_proxy_reserves_less_and_never_throttles() {
    let text = per_second("idle", 600, |_| (5.0, 60 * MI, 40 * MI));
    let r = run(&text, &policy());
    let p = &r.proxies[0];
    assert_eq!(p.seconds, 600.0);
    assert_eq!(p.ticks, 600);
    assert!(
        p.cpu.reserved_core_seconds < p.cpu.original_core_seconds,
        "{:?}",
        p.cpu
    );
    assert!(p.cpu.saving_percent > 80.0, "{:?}", p.cpu);
    assert_eq!(p.cpu.throttled_core_seconds, 0.0);
    assert_eq!(p.cpu.ticks_over_quota, 0);
    assert_eq!(p.cpu.actions.up, 0);
    // Down to the policy floor and no further.
    assert_eq!(p.final_cpu_millis, Some(policy().cpu.min_millis));
    // Memory: placed after settling, then probed down; never below demand here.
    assert!(p.memory.reserved_gib_seconds < p.memory.original_gib_seconds);
    assert!(p.memory.saving_percent > 50.0, "{:?}", p.memory);
    assert_eq!(p.memory.over_high_seconds, 0.0);
    assert_eq!(p.memory.high_events, 0);
    assert_eq!(p.memory.actions.by_reason.get("placement"), Some(&1));
    let high = p.final_memory_high_bytes.unwrap();
    assert!((60 * MI..100 * MI).contains(&high), "{}", high / MI);
    assert_eq!(r.total.cpu.saving_percent, p.cpu.saving_percent);
}

#[test]
fn the_cpu_steps_match_the_controllers_own() {
    // Idle from 2000m: nothing for scaleDownAfter, then the controller's 10% steps
    // (2000 -> 1800 -> 1620 -> 1458, as in its unit test), observed through the kernel model.
    let text = per_second("idle", 40, |_| (5.0, 10 * MI, 10 * MI));
    let trace = parse_trace(&text).unwrap();
    let mut options = Options {
        chart: Some("idle".into()),
        ..Options::default()
    };
    options.policy_name = "default".into();
    let out = simulate(&policy(), &trace, &options).unwrap();
    let quotas: Vec<f64> = out
        .series
        .unwrap()
        .points
        .iter()
        .map(|p| p.cpu_quota_millis)
        .collect();
    // Interval k is [k, k+1); the first observation is at tick 1, the quiet clock reaches 30 s
    // at tick 30, whose decision is in force from interval 30 on.
    assert!(quotas[..30].iter().all(|q| *q == 2000.0), "{quotas:?}");
    assert_eq!(&quotas[30..33], &[1800.0, 1620.0, 1458.0]);
}

#[test]
fn a_step_up_in_demand_is_met_within_three_ticks() {
    // Idle for 5 minutes (shrunk to the floor), then 1.2 cores for 2 minutes.
    let text = per_second("hot", 420, |t| {
        let cpu = if t < 300 { 10.0 } else { 1200.0 };
        (cpu, 80 * MI, 60 * MI)
    });
    let r = run(&text, &policy());
    let p = &r.proxies[0];
    assert!(p.cpu.ticks_over_quota >= 1, "{:?}", p.cpu);
    assert!(p.cpu.ticks_over_quota <= 3, "{:?}", p.cpu);
    assert!(p.cpu.actions.up >= 1);
    assert!(
        p.cpu
            .actions
            .by_reason
            .contains_key(Reason::Throttled.as_str())
    );
    // Grown to demand / targetUtilization (capped at the original 2000m).
    assert_eq!(p.final_cpu_millis, Some(2000));
    // Work held back: at most a few ticks' worth of 1.1 cores.
    assert!(
        p.cpu.throttled_core_seconds <= 3.0 * 1.1 + 1e-9,
        "{:?}",
        p.cpu
    );
}

#[test]
fn growing_anonymous_memory_stays_under_the_limit() {
    // 100 MiB for 3 minutes (placed at 125 MiB, probed down), then anon grows 10 MiB/s to
    // 300 MiB: the limit must keep ahead with at most a couple of ticks over it.
    let text = per_second("grow", 400, |t| {
        let anon = if t < 180 {
            100 * MI
        } else {
            (100 * MI + (t - 180) * 10 * MI).min(300 * MI)
        };
        (50.0, anon, anon)
    });
    let r = run(&text, &policy());
    let m = &r.proxies[0].memory;
    assert!(m.ticks_over_high <= 2, "{m:?}");
    assert!(m.unreclaimable_over_high_seconds <= 2.0, "{m:?}");
    assert!(m.high_events <= 2, "{m:?}");
    assert!(m.actions.up >= 1, "{m:?}");
    assert!(r.proxies[0].final_memory_high_bytes.unwrap() >= 300 * MI);
}

#[test]
fn envoy_concurrency_sets_the_cpu_floor_as_in_the_agent() {
    // Idle with --concurrency 4: never below 4 x perWorkerMin (50m) = 200m, not the 100m floor.
    let mut text = String::from("time,proxy,cpu_millicores,memory_bytes,concurrency\n");
    text.push_str("0,four,2,10485760,4\n0,none,2,10485760,\n300,four,2,10485760,\n");
    text.push_str("300,none,2,10485760,\n");
    let r = run(&text, &policy());
    assert_eq!(r.proxies[0].final_cpu_millis, Some(200));
    assert_eq!(r.proxies[1].final_cpu_millis, Some(100));
}

#[test]
fn namespace_overrides_apply_as_in_the_agent() {
    let p = Policy::from_yaml(
        "overrides:\n\
         - {namespace: payments, mode: \"off\"}\n\
         - {namespace: shop, cpu: {min: 300m}}\n",
    )
    .unwrap();
    let mut text = String::from("time,proxy,cpu_millicores,memory_bytes\n");
    for name in ["payments/a", "shop/b", "c"] {
        text.push_str(&format!("0,{name},2,10485760\n300,{name},2,10485760\n"));
    }
    let r = run(&text, &p);
    let (off, shop, plain) = (&r.proxies[0], &r.proxies[1], &r.proxies[2]);
    assert!(!off.governed);
    assert_eq!(off.cpu.saving_percent, 0.0);
    assert_eq!(off.memory.saving_percent, 0.0);
    assert_eq!(off.cpu.actions.up + off.cpu.actions.down, 0);
    assert_eq!(shop.final_cpu_millis, Some(300));
    assert_eq!(plain.final_cpu_millis, Some(100));
    assert!(r.render_table().contains("payments/a (off)"));
}

#[test]
fn memory_not_governed_reserves_the_original() {
    let mut p = policy();
    p.memory.enabled = false;
    let r = run(&per_second("a", 300, |_| (5.0, 60 * MI, 40 * MI)), &p);
    let m = &r.proxies[0].memory;
    assert_eq!(m.reserved_gib_seconds, m.original_gib_seconds);
    assert_eq!(m.saving_percent, 0.0);
    assert_eq!(m.actions.up + m.actions.down, 0);
    assert!(!r.memory_governed);
}

#[test]
fn limits_come_from_the_trace_or_the_options() {
    let text = "time,proxy,cpu_millicores,memory_bytes,cpu_limit_millicores,memory_limit_bytes\n\
                0,a,0,1048576,500,268435456\n\
                0,b,0,1048576,,\n\
                10,a,0,1048576,,\n";
    let trace = parse_trace(text).unwrap();
    let options = Options {
        cpu_limit_millis: 1000,
        memory_limit_bytes: 512 * MI,
        ..Options::default()
    };
    let r = simulate(&policy(), &trace, &options).unwrap().report;
    let (a, b) = (&r.proxies[0], &r.proxies[1]);
    assert_eq!((a.cpu_limit_millis, a.memory_limit_bytes), (500, 256 * MI));
    assert_eq!((b.cpu_limit_millis, b.memory_limit_bytes), (1000, 512 * MI));
    assert_eq!(a.cpu.original_core_seconds, 5.0);
    assert_eq!(b.cpu.original_core_seconds, 10.0);
    assert_eq!(r.total.cpu.original_core_seconds, 15.0);
}

#[test]
fn demand_changing_between_ticks_is_integrated() {
    // 2 s ticks; demand steps at 1.5 s and 3 s: the model sees each stretch.
    let mut p = policy();
    p.interval = Duration::from_secs(2);
    let text = "time,proxy,cpu_millicores,memory_bytes\n\
                0,a,100,1048576\n\
                1.5,a,3000,1048576\n\
                3,a,100,1048576\n\
                4,a,100,1048576\n";
    let r = run(text, &p);
    let c = &r.proxies[0].cpu;
    // 1.5 s x 0.1 + 1.5 s x 3 + 1 s x 0.1 core-seconds asked.
    assert!((c.demand_core_seconds - 4.75).abs() < 1e-9, "{c:?}");
    // 1 s of it (1.5..2.5 s... at most) above the 2000m original.
    assert!(c.throttled_core_seconds > 0.0);
    assert_eq!(r.proxies[0].ticks, 2);
}

#[test]
fn proxies_starting_late_are_simulated_from_their_first_row() {
    let text = "time,proxy,cpu_millicores,memory_bytes\n\
                0,early,10,1048576\n\
                100.5,late,10,1048576\n\
                200,early,10,1048576\n";
    let r = run(text, &policy());
    assert_eq!(r.proxies[0].seconds, 200.0);
    assert_eq!(r.proxies[1].seconds, 99.5);
    // [100.5, 101), then 99 whole ticks.
    assert_eq!(r.proxies[1].ticks, 100);
}

#[test]
fn chart_of_an_unknown_proxy_is_an_error() {
    let trace = parse_trace("time,proxy,cpu_millicores,memory_bytes\n0,a,1,1\n").unwrap();
    let options = Options {
        chart: Some("b".into()),
        ..Options::default()
    };
    let e = simulate(&policy(), &trace, &options)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no proxy `b`") && e.contains("it has: a"), "{e}");
}

#[test]
fn the_chart_is_svg_naming_the_proxy() {
    let text = per_second("shop/cart", 200, |t| {
        ((t % 60) as f64 * 20.0, (80 + t / 10) * MI, 64 * MI)
    });
    let trace = parse_trace(&text).unwrap();
    let options = Options {
        chart: Some("shop/cart".into()),
        ..Options::default()
    };
    let out = simulate(&policy(), &trace, &options).unwrap();
    let series = out.series.unwrap();
    assert_eq!(series.points.len(), 200);
    let svg = render_svg(&series).unwrap();
    assert!(svg.starts_with("<svg"));
    assert!(svg.contains("shop/cart"));
}

#[test]
fn the_example_traces_and_policies_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tight = Policy::load(&root.join("examples/policies/tight.yaml")).unwrap();
    for name in ["steady", "bursty", "diurnal"] {
        let path = root.join(format!("examples/traces/{name}.csv"));
        let trace = trace::load(&path).unwrap();
        assert!(trace.proxies.len() >= 3, "{name}");
        for p in [&policy(), &tight] {
            let r = simulate(p, &trace, &Options::default()).unwrap().report;
            let t = &r.total;
            assert!(t.cpu.saving_percent.is_finite() && t.memory.saving_percent.is_finite());
            assert!(t.cpu.reserved_core_seconds > 0.0, "{name}");
            assert!(t.cpu.saving_percent > 0.0, "{name}: {t:?}");
        }
    }
}

#[test]
fn a_push_storm_holds_growth_back_as_in_the_agent() {
    // Ten proxies idle for two minutes (down at the floor), then all hot in the same second:
    // the agent's push-storm rule recognises a storm.
    let mut text = String::from("time,proxy,cpu_millicores,memory_bytes,unreclaimable_bytes\n");
    for t in 0..=180u64 {
        for i in 0..10 {
            let cpu = if t >= 120 { 1500.0 } else { 5.0 };
            text.push_str(&format!("{t},p{i},{cpu},{},{}\n", 60 * MI, 40 * MI));
        }
    }
    let r = run(&text, &policy());
    assert_eq!(r.push_storms, 1, "one storm recognised");
    // A single proxy with the same load grows at once.
    let alone = run(
        &per_second("p0", 180, |t| {
            (if t >= 120 { 1500.0 } else { 5.0 }, 60 * MI, 40 * MI)
        }),
        &policy(),
    );
    assert_eq!(alone.push_storms, 0);
    // The storm holds their growth back, but a proxy throttled this hard for one tick at
    // most: one more tick of 1.5 cores' demand at the floor, no more.
    let (stormy, single) = (&r.proxies[0].cpu, &alone.proxies[0].cpu);
    let extra = stormy.throttled_core_seconds - single.throttled_core_seconds;
    assert!(
        extra > 0.5 && extra < 1.6,
        "held back one tick: {} vs {} core-seconds throttled",
        stormy.throttled_core_seconds,
        single.throttled_core_seconds
    );
    assert!(stormy.actions.up > 0, "grows once the grace period is over");
}
