//! The Kubernetes-facing parts against stand-ins: hot policy reload through a directory laid
//! out exactly like a kubelet ConfigMap volume (timestamped directory, `..data` symlink, per-key
//! symlinks, swapped atomically); Kubernetes Events POSTed to kube's tower-test mock API
//! server; the agent's event sites on a fixture tree; `status` against the real router.

// Fixture helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use sidecar_governor::agent::{Agent, Command, DiscoveryDebug};
use sidecar_governor::discovery::procfs::ProcfsDiscovery;
use sidecar_governor::discovery::{Discovery, DiscoveryError, Proxy, Source};
use sidecar_governor::events::{self, EventReason, EventSink, PodEvent, RateLimit};
use sidecar_governor::journal::Journal;
use sidecar_governor::policy::{MatchPolicy, Policy};
use sidecar_governor::reload::{self, ReloadTiming, Reloader, policy_hash};
use sidecar_governor::server::{ProxyView, Shared, admin_router};

// ---------------------------------------------------------------------------------------------
// A minimal node: one proxy container in the cgroupfs-driver layout, one envoy process.

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cgroup: PathBuf,
    proc: PathBuf,
    state: PathBuf,
    container: PathBuf,
    usage_us: u64,
    periods: u64,
    throttled: u64,
}

const UID: &str = "0000000a-0000-4000-8000-00000000000a";
const CID: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa01";

impl Node {
    fn new(cpu_max: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let cgroup = root.join("cgroup");
        let proc = root.join("proc");
        let state = root.join("state");
        fs::create_dir_all(&proc).unwrap();
        fs::create_dir_all(&state).unwrap();
        fs::create_dir_all(&cgroup).unwrap();
        fs::write(cgroup.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let rel = format!("kubepods/burstable/pod{UID}/{CID}");
        let container = cgroup.join(&rel);
        fs::create_dir_all(&container).unwrap();
        for d in [container.parent().unwrap(), container.as_path()] {
            fs::write(d.join("cpu.max"), format!("{cpu_max}\n")).unwrap();
            fs::write(
                d.join("cpu.pressure"),
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            )
            .unwrap();
        }
        let pid = proc.join("4242");
        fs::create_dir_all(&pid).unwrap();
        fs::write(pid.join("comm"), "envoy\n").unwrap();
        fs::write(pid.join("cgroup"), format!("0::/{rel}\n")).unwrap();
        fs::write(pid.join("cmdline"), b"envoy\0--concurrency\x002\0").unwrap();
        fs::write(
            pid.join("stat"),
            "4242 (envoy) S 1 4242 4242 0 -1 4194560 0 0\n",
        )
        .unwrap();
        let mut node = Node {
            _dir: dir,
            root,
            cgroup,
            proc,
            state,
            container,
            usage_us: 0,
            periods: 0,
            throttled: 0,
        };
        node.run(0, false);
        node
    }

    /// One more second: `millis` of CPU used; `throttled` = 90% of the periods throttled.
    fn run(&mut self, millis: u64, throttled: bool) {
        self.usage_us += millis * 1000;
        self.periods += 10;
        if throttled {
            self.throttled += 9;
        }
        fs::write(
            self.container.join("cpu.stat"),
            format!(
                "usage_usec {u}\nuser_usec {u}\nsystem_usec 0\nnr_periods {}\nnr_throttled {}\nthrottled_usec {}\nnr_bursts 0\nburst_usec 0\n",
                self.periods,
                self.throttled,
                self.throttled * 1000,
                u = self.usage_us
            ),
        )
        .unwrap();
    }

    fn cpu_max(&self) -> String {
        fs::read_to_string(self.container.join("cpu.max"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn agent(&self, policy: Policy, discovery: Box<dyn DiscoveryDebug>) -> (Agent, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let journal = Journal::load(&self.state).unwrap();
        let agent = Agent::new(
            self.cgroup.clone(),
            policy,
            false,
            discovery,
            journal,
            shared.clone(),
        );
        (agent, shared)
    }

    fn procfs(&self) -> Box<dyn DiscoveryDebug> {
        Box::new(ProcfsDiscovery::new(&self.proc, &self.cgroup))
    }
}

/// procfs discovery plus the pod names CRI discovery would add.
#[derive(Debug)]
struct Named(ProcfsDiscovery);

impl Discovery for Named {
    fn discover(&mut self, rules: &MatchPolicy) -> Result<Vec<Proxy>, DiscoveryError> {
        let mut found = self.0.discover(rules)?;
        for p in &mut found {
            p.id.namespace = "shop".into();
            p.id.pod = "cart-0".into();
            p.id.container = "istio-proxy".into();
            p.runtime_identity = true;
        }
        Ok(found)
    }
    fn source(&self) -> Source {
        self.0.source()
    }
}

fn metric(shared: &Shared, series: &str) -> Option<f64> {
    shared.metrics.encode().lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    })
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Hot reload through a kubelet-shaped ConfigMap volume.

/// Writes `text` as kubelet's atomic writer does: a new timestamped directory, a temporary
/// `..data_tmp` symlink to it renamed over `..data`, the per-key symlink made once, and the old
/// timestamped directory removed.
fn kubelet_update(volume: &Path, text: &str, generation: u32) {
    fs::create_dir_all(volume).unwrap();
    let ts = format!("..2026_11_26_02_00_{generation:02}.{}", 123 + generation);
    let ts_dir = volume.join(&ts);
    fs::create_dir(&ts_dir).unwrap();
    fs::write(ts_dir.join("policy.yaml"), text).unwrap();
    let old = fs::read_link(volume.join("..data")).ok();
    let tmp = volume.join("..data_tmp");
    symlink(&ts, &tmp).unwrap();
    fs::rename(&tmp, volume.join("..data")).unwrap();
    let key = volume.join("policy.yaml");
    if fs::symlink_metadata(&key).is_err() {
        symlink("..data/policy.yaml", &key).unwrap();
    }
    if let Some(old) = old {
        fs::remove_dir_all(volume.join(old)).unwrap();
    }
}

#[test]
fn hot_reload_through_a_kubelet_configmap_volume() {
    let node = Node::new("200000 100000");
    let volume = node.root.join("etc-sidecar-governor");
    let first = "interval: 500ms\n";
    kubelet_update(&volume, first, 0);
    let path = volume.join("policy.yaml");
    assert!(
        fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    let (policy, hash) = reload::load(&path).unwrap();
    assert_eq!(hash, policy_hash(first));
    let (agent, shared) = node.agent(policy, node.procfs());
    let (commands, inbox) = mpsc::channel();
    let reloader = Reloader::new(path.clone(), hash, commands.clone(), shared.clone());
    let watch = reload::spawn(
        reloader,
        ReloadTiming {
            debounce: Duration::from_millis(50),
            fallback: Duration::from_secs(60),
        },
    )
    .unwrap();
    let control = std::thread::spawn(move || agent.run(inbox, None));
    let ticks = || metric(&shared, "sidecar_governor_ticks_total").unwrap_or(0.0);
    wait_for("two ticks", Duration::from_secs(10), || ticks() >= 2.0);
    assert_eq!(node.cpu_max(), "200000 100000");

    // A good change: cpu.max 500m. The quota (2 cores) is above the new ceiling, so the next
    // tick brings it down.
    let good = "interval: 500ms\ncpu:\n  max: 500m\n";
    let before = ticks();
    kubelet_update(&volume, good, 1);
    wait_for(
        "the new ceiling in cpu.max",
        Duration::from_secs(10),
        || node.cpu_max() == "50000 100000",
    );
    let took = ticks() - before;
    assert!(took <= 2.0, "applied after {took} ticks");
    let info = format!(
        "sidecar_governor_config_info{{hash=\"{}\"}}",
        policy_hash(good)
    );
    assert_eq!(metric(&shared, &info), Some(1.0));
    assert_eq!(
        metric(
            &shared,
            "sidecar_governor_config_reloads_total{result=\"success\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&shared, "sidecar_governor_policy_cpu_max_millicores"),
        Some(500.0)
    );

    // A bad change is refused; the last good policy stays live.
    kubelet_update(&volume, "cpu:\n  min: \"3\"\n  max: \"2\"\n", 2);
    wait_for("the refusal", Duration::from_secs(10), || {
        metric(
            &shared,
            "sidecar_governor_config_reloads_total{result=\"failure\"}",
        ) == Some(1.0)
    });
    let at = ticks();
    wait_for("two more ticks", Duration::from_secs(10), || {
        ticks() >= at + 2.0
    });
    assert_eq!(node.cpu_max(), "50000 100000");
    assert_eq!(metric(&shared, &info), Some(1.0), "the live hash changed");
    assert_eq!(
        metric(&shared, "sidecar_governor_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(
        metric(&shared, "sidecar_governor_policy_cpu_max_millicores"),
        Some(500.0)
    );

    // And a good one after it applies again.
    let again = "interval: 500ms\ncpu:\n  max: 400m\n";
    kubelet_update(&volume, again, 3);
    wait_for("the next ceiling", Duration::from_secs(10), || {
        node.cpu_max() == "40000 100000"
    });
    assert_eq!(
        metric(&shared, "sidecar_governor_config_last_reload_successful"),
        Some(1.0)
    );
    let text = shared.metrics.encode();
    assert_eq!(
        text.matches("sidecar_governor_config_info{").count(),
        1,
        "{text}"
    );

    watch.stop();
    commands.send(Command::Stop).unwrap();
    let shutdown = control.join().unwrap();
    assert!(shutdown.restore.unwrap().complete());
    assert_eq!(node.cpu_max(), "200000 100000", "restoreOnExit");
}

// ---------------------------------------------------------------------------------------------
// Events: the agent's sites, then the API calls.

#[derive(Debug, Default)]
struct Recorded(Mutex<Vec<PodEvent>>);

impl EventSink for Recorded {
    fn emit(&self, event: PodEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorded {
    fn reasons(&self) -> Vec<EventReason> {
        self.0.lock().unwrap().iter().map(|e| e.reason).collect()
    }
}

#[test]
fn agent_emits_events_where_actions_matter() {
    let mut node = Node::new("100000 100000");
    let policy = Policy::from_yaml(
        "interval: 1s\ncpu:\n  min: 100m\n  max: \"2\"\n  scaleDownAfter: 2s\n  stepDown: 0.9\n  conflictBackoff: 5s\n",
    )
    .unwrap();
    let (mut agent, _shared) = node.agent(
        policy,
        Box::new(Named(ProcfsDiscovery::new(&node.proc, &node.cgroup))),
    );
    let sink = Arc::new(Recorded::default());
    agent.set_events(sink.clone());
    let t0 = Instant::now();
    let mut second = 0;
    let mut tick = |node: &mut Node, agent: &mut Agent, millis, throttled| {
        node.run(millis, throttled);
        second += 1;
        agent.tick(t0 + Duration::from_secs(second));
    };
    // Idle: shrinks to the floor (100m). Then throttled: scaled up.
    for _ in 0..12 {
        tick(&mut node, &mut agent, 5, false);
    }
    assert_eq!(
        node.cpu_max(),
        "10000 100000",
        "idle proxy reaches the floor"
    );
    assert!(
        sink.reasons().contains(&EventReason::AtFloor),
        "{:?}",
        sink.reasons()
    );
    tick(&mut node, &mut agent, 100, true);
    tick(&mut node, &mut agent, 100, true);
    assert!(
        sink.reasons().contains(&EventReason::ScaledUp),
        "{:?}",
        sink.reasons()
    );

    // Someone else writes cpu.max: a conflict.
    fs::write(node.container.join("cpu.max"), "70000 100000\n").unwrap();
    tick(&mut node, &mut agent, 5, false);
    assert_eq!(sink.reasons().last(), Some(&EventReason::Conflict));

    // The idle proxy shrinks again, then the agent stops and restores.
    for _ in 0..12 {
        tick(&mut node, &mut agent, 5, false);
    }
    agent.shutdown();
    assert_eq!(sink.reasons().last(), Some(&EventReason::Restored));
    let all = sink.0.lock().unwrap();
    assert!(
        all.iter()
            .all(|e| e.namespace == "shop" && e.pod == "cart-0" && e.pod_uid == UID)
    );
}

#[test]
fn more_workers_than_the_limit_serves_is_told_once_and_nothing_is_raised() {
    // Envoy with 8 workers under a 200m limit: 50m each (cpu.perWorkerMin) serves 4.
    let mut node = Node::new("20000 100000");
    let pid = node.proc.join("4242");
    fs::write(pid.join("cmdline"), b"envoy\0--concurrency\x008\0").unwrap();
    let (mut agent, _shared) = node.agent(
        Policy::from_yaml("cpu:\n  scaleDownAfter: 1s\n").unwrap(),
        Box::new(Named(ProcfsDiscovery::new(&node.proc, &node.cgroup))),
    );
    let sink = Arc::new(Recorded::default());
    agent.set_events(sink.clone());
    let t0 = Instant::now();
    for s in 1..5 {
        node.run(150, true);
        agent.tick(t0 + Duration::from_secs(s));
    }
    let told: Vec<PodEvent> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.reason == EventReason::WorkersUnfit)
        .cloned()
        .collect();
    assert_eq!(told.len(), 1, "once, when found: {told:?}");
    assert!(
        told[0].message.contains("8 proxy workers"),
        "{}",
        told[0].message
    );
    assert!(
        told[0].message.contains("4 workers would fit"),
        "{}",
        told[0].message
    );
    assert_eq!(node.cpu_max(), "20000 100000", "never above its own limit");
    // 2 workers fit: nothing to tell.
    let node = Node::new("20000 100000");
    let (mut agent, _shared) = node.agent(
        Policy::default(),
        Box::new(Named(ProcfsDiscovery::new(&node.proc, &node.cgroup))),
    );
    let sink = Arc::new(Recorded::default());
    agent.set_events(sink.clone());
    agent.tick(t0);
    assert!(!sink.reasons().contains(&EventReason::WorkersUnfit));
}

#[test]
fn no_events_without_pod_names() {
    let mut node = Node::new("100000 100000");
    let policy = Policy::from_yaml("cpu:\n  scaleDownAfter: 1s\n  stepDown: 0.9\n").unwrap();
    let (mut agent, _shared) = node.agent(policy, node.procfs());
    let sink = Arc::new(Recorded::default());
    agent.set_events(sink.clone());
    let t0 = Instant::now();
    for s in 1..12 {
        node.run(1, false);
        agent.tick(t0 + Duration::from_secs(s));
    }
    assert_eq!(node.cpu_max(), "10000 100000");
    // Procfs knows no pod names: the agent offers events, the queue drops unnamed ones.
    let shared = Arc::new(Shared::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let queue = events::EventQueue::new(tx, RateLimit::default(), shared);
    for e in sink.0.lock().unwrap().drain(..) {
        queue.emit(e);
    }
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn https_client_builds_with_rustls_and_no_system_openssl() {
    // The in-cluster path builds the same client from the service account's config; here only
    // the TLS stack is exercised (no API server is reachable from these machines).
    let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
    kube::Client::try_from(config).expect("a rustls-backed client");
}

type Mock = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Waits (10 s at most) for the publisher `task` to end, then checks its
/// `events_total{result}` counts.
async fn assert_events_after(
    task: tokio::task::JoinHandle<()>,
    shared: &Shared,
    want: &[(&str, u64)],
) {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the publisher ends within 10 s")
        .unwrap();
    let text = shared.metrics.encode();
    for (result, n) in want {
        let line = format!("sidecar_governor_events_total{{result=\"{result}\"}} {n}");
        assert!(text.contains(&line), "no `{line}` in:\n{text}");
    }
}

async fn next_call(handle: &mut Mock) -> (String, String, serde_json::Value) {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("a request within 10s")
        .expect("a request");
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let reply = serde_json::to_vec(&json).unwrap();
    respond.send_response(
        Response::builder()
            .status(if method == "POST" { 201 } else { 200 })
            .header("content-type", "application/json")
            .body(Body::from(reply))
            .unwrap(),
    );
    (method, uri, json)
}

#[tokio::test]
async fn events_are_posted_to_the_pods_namespace_and_repeats_patched() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let shared = Arc::new(Shared::default());
    let (sink, task) = events::start(
        client,
        8,
        RateLimit {
            burst: 2,
            refill: Duration::from_secs(3600),
        },
        shared.clone(),
    );
    let event = PodEvent {
        namespace: "shop".into(),
        pod: "cart-0".into(),
        pod_uid: UID.into(),
        reason: EventReason::ScaledUp,
        message: "CPU quota of container istio-proxy raised 100m -> 200m (throttled)".into(),
    };
    sink.emit(event.clone());
    let (method, uri, body) = next_call(&mut handle).await;
    assert_eq!(method, "POST");
    assert!(
        uri.starts_with("/apis/events.k8s.io/v1/namespaces/shop/events"),
        "{uri}"
    );
    assert_eq!(body["apiVersion"], "events.k8s.io/v1");
    assert_eq!(body["kind"], "Event");
    assert_eq!(body["metadata"]["namespace"], "shop");
    assert_eq!(body["regarding"]["kind"], "Pod");
    assert_eq!(body["regarding"]["apiVersion"], "v1");
    assert_eq!(body["regarding"]["name"], "cart-0");
    assert_eq!(body["regarding"]["namespace"], "shop");
    assert_eq!(body["regarding"]["uid"], UID);
    assert_eq!(body["reason"], "SidecarCPUScaledUp");
    assert_eq!(body["action"], "ResizeCPU");
    assert_eq!(body["type"], "Normal");
    assert_eq!(body["note"], event.message.as_str());
    assert_eq!(body["reportingController"], "sidecar-governor");
    assert!(body["eventTime"].is_string());

    // The same event again: kube's recorder patches the first into a series.
    sink.emit(event.clone());
    let (method, uri, body) = next_call(&mut handle).await;
    assert_eq!(method, "PATCH");
    assert!(
        uri.starts_with("/apis/events.k8s.io/v1/namespaces/shop/events/cart-0."),
        "{uri}"
    );
    assert_eq!(body["series"]["count"], 2);

    // A third within the rate limit's window is not sent.
    sink.emit(event);
    drop(sink);
    assert_events_after(task, &shared, &[("sent", 2), ("rate_limited", 1)]).await;
}

#[tokio::test]
async fn event_failures_are_counted_not_fatal() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let shared = Arc::new(Shared::default());
    let (sink, task) = events::start(client, 8, RateLimit::default(), shared.clone());
    sink.emit(PodEvent {
        namespace: "shop".into(),
        pod: "cart-1".into(),
        pod_uid: String::new(),
        reason: EventReason::Conflict,
        message: "m".into(),
    });
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request.method(), "POST");
    let forbidden = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
        "message": "events.events.k8s.io is forbidden", "code": 403
    });
    respond.send_response(
        Response::builder()
            .status(403)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&forbidden).unwrap()))
            .unwrap(),
    );
    drop(sink);
    task.await.unwrap();
    assert!(
        shared
            .metrics
            .encode()
            .contains("sidecar_governor_events_total{result=\"failed\"} 1")
    );
}

// An API server that takes the request and never answers (kube's client has no read timeout):
// that Event times out and is counted as failed, and the next one is still written.
#[tokio::test]
async fn an_unanswered_event_times_out_and_the_next_is_sent() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let shared = Arc::new(Shared::default());
    let recorder = kube::runtime::events::Recorder::new(client, events::reporter());
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let task = tokio::spawn(events::publish(
        rx,
        recorder,
        shared.clone(),
        Duration::from_millis(300),
    ));
    let ev = |pod: &str| PodEvent {
        namespace: "shop".into(),
        pod: pod.into(),
        pod_uid: String::new(),
        reason: EventReason::AtFloor,
        message: "m".into(),
    };
    tx.send(ev("cart-hung")).await.unwrap();
    tx.send(ev("cart-next")).await.unwrap();
    // The first request is taken and never answered (its responder kept alive).
    let (_hung, _responder) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("a request within 10s")
        .expect("a request");
    let (method, _, body) = next_call(&mut handle).await;
    assert_eq!(method, "POST");
    assert_eq!(body["regarding"]["name"], "cart-next");
    drop(tx);
    assert_events_after(task, &shared, &[("failed", 1), ("sent", 1)]).await;
}

// ---------------------------------------------------------------------------------------------
// `status` against the real router.

#[tokio::test]
async fn status_reads_the_real_debug_endpoint() {
    let shared = Arc::new(Shared::default());
    shared.publish(vec![ProxyView {
        key: format!("kubepods/burstable/pod{UID}/{CID}"),
        namespace: "shop".into(),
        pod: "cart-0".into(),
        container: "istio-proxy".into(),
        pod_uid: UID.into(),
        container_id: CID.into(),
        process: "envoy".into(),
        pid: 4242,
        class: "sidecar",
        cpu_quota_millis: Some(250),
        cpu_original_millis: Some(2000),
        cpu_usage_millis: Some(42.4),
        cpu_throttled_ratio: Some(0.125),
        memory_high_bytes: Some(96 << 20),
        memory_usage_bytes: Some(64 << 20),
        memory_pressure_ratio: Some(0.0),
        memory_growing: false,
        backoff: false,
        last_action: Some(sidecar_governor::server::ActionView {
            resource: "cpu",
            direction: "down",
            reason: "idle",
            from: "300m".into(),
            to: "250m".into(),
            at: sidecar_governor::server::now_unix(),
        }),
    }]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, admin_router(shared)).await.unwrap();
    });
    let status = sidecar_governor::status::fetch(&format!("http://{addr}"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status.proxies.len(), 1);
    let table = sidecar_governor::status::render(&status, sidecar_governor::server::now_unix());
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for col in [
        "NAMESPACE",
        "POD",
        "QUOTA",
        "USAGE",
        "THROTTLED",
        "LAST ACTION",
    ] {
        assert!(header.contains(col), "{table}");
    }
    let row = lines.next().unwrap();
    for cell in [
        "shop",
        "cart-0",
        "250m",
        "42m",
        "12.5%",
        "cpu down 300m -> 250m (idle",
    ] {
        assert!(row.contains(cell), "{cell} missing: {table}");
    }
    // A wrong endpoint is an error naming it.
    let err = sidecar_governor::status::fetch("http://127.0.0.1:1", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    server.abort();
}
