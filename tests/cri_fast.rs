//! FAST CRI tests: the CRI client, CRI discovery, the procfs fallback and the agent on top of
//! them, against an in-process fake runtime — a tonic server implementing the `runtime.v1`
//! calls the agent uses, on a Unix socket in a temporary directory — and fixture trees shaped
//! like cgroupfs and procfs. No containerd, no kernel: these prove the protocol handling,
//! timeouts, event-stream handling, fallback and bookkeeping in well under a minute
//! (`cargo test --test cri_fast`). The real runtime is exercised by the `cri` VM scenario
//! (`scripts/vm-e2e.sh cri`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Container as FixtureContainer, Node};
use sidecar_governor::agent::Agent;
use sidecar_governor::cri::client::{CriClient, CriError, CriTarget, ReadCall};
use sidecar_governor::cri::parse::parse_status_info;
use sidecar_governor::cri::proto::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use sidecar_governor::cri::proto::*;
use sidecar_governor::discovery::auto::AutoDiscovery;
use sidecar_governor::discovery::cri::CriDiscovery;
use sidecar_governor::discovery::procfs::ProcfsDiscovery;
use sidecar_governor::discovery::{Discovery, DiscoveryError, Source};
use sidecar_governor::journal::Journal;
use sidecar_governor::policy::{MatchPolicy, Mode, Policy};
use sidecar_governor::server::Shared;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

type EventTx = mpsc::Sender<Result<ContainerEventResponse, Status>>;

/// What the fake runtime knows and how it behaves.
#[derive(Default)]
struct State {
    containers: Vec<Container>,
    sandboxes: Vec<PodSandbox>,
    /// container ID → (info["info"] JSON, started_at ns)
    infos: HashMap<String, (String, i64)>,
    /// Every call waits this long first (a slow runtime).
    delay: Duration,
    /// Offer GetContainerEvents (else `unimplemented`, like containerd 1.6).
    events: bool,
    subscribers: Vec<EventTx>,
    list_calls: usize,
    status_calls: usize,
    /// Every RPC served, by name.
    calls: Vec<&'static str>,
}

#[derive(Clone, Default)]
struct Fake {
    state: Arc<Mutex<State>>,
}

impl Fake {
    async fn pause(&self) {
        let delay = self.state.lock().unwrap().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for Fake {
    async fn version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        self.state.lock().unwrap().calls.push("Version");
        self.pause().await;
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake".into(),
            runtime_version: "1.0.0".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        _: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        self.state.lock().unwrap().calls.push("RunPodSandbox");
        Err(Status::unimplemented("fake"))
    }

    async fn stop_pod_sandbox(
        &self,
        _: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        self.state.lock().unwrap().calls.push("StopPodSandbox");
        Err(Status::unimplemented("fake"))
    }

    async fn remove_pod_sandbox(
        &self,
        _: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        self.state.lock().unwrap().calls.push("RemovePodSandbox");
        Err(Status::unimplemented("fake"))
    }

    async fn list_pod_sandbox(
        &self,
        _: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        self.state.lock().unwrap().calls.push("ListPodSandbox");
        self.pause().await;
        let items = self.state.lock().unwrap().sandboxes.clone();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        _: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        self.state.lock().unwrap().calls.push("CreateContainer");
        Err(Status::unimplemented("fake"))
    }

    async fn start_container(
        &self,
        _: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        self.state.lock().unwrap().calls.push("StartContainer");
        Err(Status::unimplemented("fake"))
    }

    async fn stop_container(
        &self,
        _: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        self.state.lock().unwrap().calls.push("StopContainer");
        Err(Status::unimplemented("fake"))
    }

    async fn remove_container(
        &self,
        _: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        self.state.lock().unwrap().calls.push("RemoveContainer");
        Err(Status::unimplemented("fake"))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        self.state.lock().unwrap().calls.push("ListContainers");
        self.pause().await;
        let filter = request.into_inner().filter;
        let mut state = self.state.lock().unwrap();
        state.list_calls += 1;
        let containers = state
            .containers
            .iter()
            .filter(|c| {
                filter
                    .as_ref()
                    .and_then(|f| f.state.as_ref())
                    .is_none_or(|s| s.state == c.state)
            })
            .cloned()
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        self.state.lock().unwrap().calls.push("ContainerStatus");
        self.pause().await;
        let request = request.into_inner();
        let mut state = self.state.lock().unwrap();
        state.status_calls += 1;
        let Some((json, started_at)) = state.infos.get(&request.container_id).cloned() else {
            return Err(Status::not_found(format!(
                "container {} not found",
                request.container_id
            )));
        };
        let mut info = HashMap::new();
        if request.verbose {
            info.insert("info".to_string(), json);
        }
        Ok(Response::new(ContainerStatusResponse {
            status: Some(ContainerStatus {
                id: request.container_id,
                started_at,
                state: ContainerState::ContainerRunning as i32,
                ..Default::default()
            }),
            info,
        }))
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        self.state.lock().unwrap().calls.push("GetContainerEvents");
        let mut state = self.state.lock().unwrap();
        if !state.events {
            return Err(Status::unimplemented("GetContainerEvents"));
        }
        let (tx, rx) = mpsc::channel(16);
        state.subscribers.push(tx);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The fake runtime serving on a socket, on a runtime of its own so that stopping it closes
/// every connection (like a runtime that died).
struct FakeRuntime {
    fake: Fake,
    socket: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
}

impl FakeRuntime {
    fn start(socket: &Path, fake: Fake) -> FakeRuntime {
        let mut f = FakeRuntime {
            fake,
            socket: socket.to_path_buf(),
            rt: None,
        };
        f.restart();
        f
    }

    fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _g = rt.enter();
            tokio::net::UnixListener::bind(&self.socket).unwrap()
        };
        let service = RuntimeServiceServer::new(self.fake.clone());
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
        });
        self.rt = Some(rt);
    }

    fn stop(&mut self) {
        self.fake.state.lock().unwrap().subscribers.clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.fake.state.lock().unwrap()
    }

    /// Sends one event to every open stream.
    fn event(&self, kind: ContainerEventType, id: &str) {
        let subscribers = self.state().subscribers.clone();
        for tx in subscribers {
            let _ = tx.try_send(Ok(ContainerEventResponse {
                container_id: id.to_string(),
                container_event_type: kind as i32,
                created_at: 1,
                ..Default::default()
            }));
        }
    }

    /// Breaks every open stream with an error.
    fn break_streams(&self) {
        let subscribers = std::mem::take(&mut self.state().subscribers);
        for tx in subscribers {
            let _ = tx.try_send(Err(Status::unavailable("runtime restarting")));
        }
    }
}

impl Drop for FakeRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pod the fake runtime and the fixture tree both know.
struct Pod {
    uid: String,
    sandbox_id: String,
}

const NS_LABEL: &str = "io.kubernetes.pod.namespace";

fn labels(ns: &str, pod: &str, uid: &str, container: &str) -> HashMap<String, String> {
    [
        (NS_LABEL, ns),
        ("io.kubernetes.pod.name", pod),
        ("io.kubernetes.pod.uid", uid),
        ("io.kubernetes.container.name", container),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn add_pod(
    fake: &FakeRuntime,
    n: usize,
    ns: &str,
    name: &str,
    annotations: &[(&str, &str)],
) -> Pod {
    let uid = common::pod_uid(n);
    let sandbox_id = format!("sandbox{n:04}");
    fake.state().sandboxes.push(PodSandbox {
        id: sandbox_id.clone(),
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.clone(),
            namespace: ns.into(),
            attempt: 0,
        }),
        state: PodSandboxState::SandboxReady as i32,
        created_at: 1,
        labels: labels(ns, name, &uid, ""),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        runtime_handler: String::new(),
    });
    Pod { uid, sandbox_id }
}

/// Registers a running fixture container with the fake runtime (labels, verbose info).
fn add_container(
    fake: &FakeRuntime,
    pod: &Pod,
    ns: &str,
    pod_name: &str,
    name: &str,
    c: &FixtureContainer,
) {
    let pid = c.pid.expect("container has a process");
    let info = format!(
        r#"{{"sandboxID":"{}","pid":{pid},"runtimeSpec":{{"linux":{{"cgroupsPath":"/{}"}}}}}}"#,
        pod.sandbox_id, c.rel
    );
    let started_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let mut state = fake.state();
    state.infos.insert(c.id.clone(), (info, started_ns));
    state.containers.push(Container {
        id: c.id.clone(),
        pod_sandbox_id: pod.sandbox_id.clone(),
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        state: ContainerState::ContainerRunning as i32,
        created_at: 1,
        labels: labels(ns, pod_name, &pod.uid, name),
        ..Default::default()
    });
}

fn remove_container(fake: &FakeRuntime, id: &str) {
    let mut state = fake.state();
    state.containers.retain(|c| c.id != id);
    state.infos.remove(id);
}

const TWO_CORES: &str = "200000 100000";

/// Adds `pid` to the container cgroup's `cgroup.procs` (the fixture tree does not).
fn join_cgroup(c: &FixtureContainer, pid: u32) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(c.dir.join("cgroup.procs"))
        .unwrap();
    writeln!(f, "{pid}").unwrap();
}

/// A process in a container, listed in its cgroup.procs.
fn process(node: &mut Node, c: &mut FixtureContainer, comm: &str, args: &[&str]) -> u32 {
    let pid = node.process(c, comm, args);
    join_cgroup(c, pid);
    pid
}

/// A child process of `ppid` in a container, listed in its cgroup.procs.
fn child(node: &Node, c: &FixtureContainer, pid: u32, comm: &str, args: &[&str], ppid: u32) {
    node.process_with_pid(pid, &format!("/{}", c.rel), comm, args, ppid);
    join_cgroup(c, pid);
}

/// A sidecar container: envoy under a pilot-agent (`proxy sidecar`).
fn sidecar(node: &mut Node, pod: usize, n: usize) -> FixtureContainer {
    let mut c = node.container(pod, n, TWO_CORES);
    let agent = process(
        node,
        &mut c,
        "pilot-agent",
        &["/usr/local/bin/pilot-agent", "proxy", "sidecar"],
    );
    let envoy = 50_000 + n as u32;
    child(
        node,
        &c,
        envoy,
        "envoy",
        &["/usr/local/bin/envoy", "--concurrency", "2"],
        agent,
    );
    c
}

/// A gateway container: envoy under `pilot-agent proxy router`.
fn gateway(node: &mut Node, pod: usize, n: usize) -> FixtureContainer {
    let mut c = node.container(pod, n, TWO_CORES);
    let agent = process(
        node,
        &mut c,
        "pilot-agent",
        &["/usr/local/bin/pilot-agent", "proxy", "router"],
    );
    child(
        node,
        &c,
        50_000 + n as u32,
        "envoy",
        &["/usr/local/bin/envoy"],
        agent,
    );
    c
}

fn app(node: &mut Node, pod: usize, n: usize) -> FixtureContainer {
    let mut c = node.container(pod, n, "100000 100000");
    process(node, &mut c, "app", &["/app"]);
    c
}

fn rules() -> MatchPolicy {
    Policy::default().matching
}

fn socket_in(node: &Node) -> PathBuf {
    node.dir.path().join("cri.sock")
}

fn cri_discovery(node: &Node, timeout: Duration) -> CriDiscovery {
    CriDiscovery::new(
        CriTarget::Socket(socket_in(node)),
        &node.proc,
        &node.cgroup,
        timeout,
    )
    .unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Waits (up to 5 s) for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fast_client_speaks_runtime_v1() {
    let mut node = Node::new();
    let fake = FakeRuntime::start(&socket_in(&node), Fake::default());
    let pod = add_pod(&fake, 1, "shop", "cart-1", &[("a", "b")]);
    let proxy = sidecar(&mut node, 1, 1);
    add_container(&fake, &pod, "shop", "cart-1", "istio-proxy", &proxy);
    fake.state().containers.push(Container {
        id: "exited".into(),
        state: ContainerState::ContainerExited as i32,
        ..Default::default()
    });

    block_on(async {
        let client = CriClient::new(CriTarget::Socket(socket_in(&node)), Duration::from_secs(2));
        let v = client.version().await.unwrap();
        assert_eq!(
            (v.runtime_name.as_str(), v.runtime_api_version.as_str()),
            ("fake", "v1")
        );
        // the state filter reaches the runtime (field numbers right)
        assert_eq!(client.list_containers(None).await.unwrap().len(), 2);
        let running = client.list_running_containers().await.unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!(
            running[0].labels["io.kubernetes.container.name"],
            "istio-proxy"
        );
        assert_eq!(running[0].metadata.as_ref().unwrap().name, "istio-proxy");
        let sandboxes = client.list_pod_sandboxes().await.unwrap();
        assert_eq!(sandboxes[0].annotations["a"], "b");
        assert_eq!(sandboxes[0].metadata.as_ref().unwrap().namespace, "shop");
        let status = client.container_status(&proxy.id, true).await.unwrap();
        let info = parse_status_info(&proxy.id, &status.info).unwrap();
        assert_eq!(info.pid, proxy.pid);
        assert_eq!(info.cgroups_path, Some(format!("/{}", proxy.rel)));
        let missing = client.container_status("nope", true).await.unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
        let events = client.container_events().await.unwrap_err();
        assert!(events.is_unimplemented(), "{events}");
    });
    // Every call the client has reached the runtime under its runtime.v1 name, and nothing
    // else did: the library's client makes read calls only.
    let mut served = fake.state().calls.clone();
    served.sort_unstable();
    served.dedup();
    let mut reads: Vec<&str> = ReadCall::ALL.iter().map(|c| c.name()).collect();
    reads.sort_unstable();
    assert_eq!(served, reads);
}

#[test]
fn fast_client_timeout_is_honoured() {
    let node = Node::new();
    let fake = FakeRuntime::start(&socket_in(&node), Fake::default());
    fake.state().delay = Duration::from_secs(3);
    block_on(async {
        let client = CriClient::new(
            CriTarget::Socket(socket_in(&node)),
            Duration::from_millis(200),
        );
        let t0 = Instant::now();
        let e = client.version().await.unwrap_err();
        assert!(matches!(e, CriError::Timeout { op: "Version", .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert!(e.to_string().contains("cri.sock"), "{e}");
    });
}

#[test]
fn fast_client_without_a_socket_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let target = CriTarget::FirstOf(vec![dir.path().join("a.sock"), dir.path().join("b.sock")]);
        let client = CriClient::new(target, Duration::from_secs(2));
        let t0 = Instant::now();
        let e = client.version().await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert!(e.to_string().contains("first of"), "{e}");
    });
}

#[test]
fn fast_discovery_finds_sidecars_by_name_and_process() {
    let mut node = Node::new();
    let fake = FakeRuntime::start(&socket_in(&node), Fake::default());
    // pod 1: sidecar + app, with per-pod annotations
    let p1 = add_pod(
        &fake,
        1,
        "shop",
        "cart-1",
        &[
            ("sidecar-governor.io/mode", "dry-run"),
            ("sidecar-governor.io/cpu-min", "200m"),
            ("sidecar.istio.io/status", "{}"),
        ],
    );
    let s1 = sidecar(&mut node, 1, 1);
    let a1 = app(&mut node, 1, 2);
    add_container(&fake, &p1, "shop", "cart-1", "istio-proxy", &s1);
    add_container(&fake, &p1, "shop", "cart-1", "cart", &a1);
    // pod 2: a gateway
    let p2 = add_pod(&fake, 2, "istio-system", "ingressgateway-1", &[]);
    let g2 = gateway(&mut node, 2, 3);
    add_container(
        &fake,
        &p2,
        "istio-system",
        "ingressgateway-1",
        "istio-proxy",
        &g2,
    );
    // pod 3: a bad annotation, and a native sidecar (an init container to the runtime, which
    // does not say so: it is simply a running container)
    let p3 = add_pod(
        &fake,
        3,
        "shop",
        "pay-1",
        &[("sidecar-governor.io/cpu-max", "lots")],
    );
    let s3 = sidecar(&mut node, 3, 4);
    add_container(&fake, &p3, "shop", "pay-1", "istio-proxy", &s3);
    // pod 4: a container named istio-proxy with no proxy process in it
    let p4 = add_pod(&fake, 4, "shop", "odd-1", &[]);
    let o4 = app(&mut node, 4, 5);
    add_container(&fake, &p4, "shop", "odd-1", "istio-proxy", &o4);

    let mut d = cri_discovery(&node, Duration::from_secs(2));
    let found = d.discover(&rules()).unwrap();
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, vec![s1.rel.as_str(), s3.rel.as_str()], "{found:#?}");
    let p = &found[0];
    assert_eq!(
        (
            p.id.namespace.as_str(),
            p.id.pod.as_str(),
            p.id.container.as_str()
        ),
        ("shop", "cart-1", "istio-proxy")
    );
    assert_eq!(p.id.pod_uid, s1.pod_uid);
    assert_eq!(p.id.container_id, s1.id);
    assert_eq!((p.process.as_str(), p.pid), ("envoy", 50_001));
    assert_eq!(p.concurrency, Some(2));
    assert_eq!(p.control.mode, Some(Mode::DryRun));
    assert_eq!(p.control.cpu_min_millis, Some(200));
    assert!(p.control_errors.is_empty());
    assert!(p.started_at_ms.is_some());
    assert_eq!(p.dir, node.cgroup.join(&s1.rel));
    let bad = &found[1];
    assert_eq!(bad.control, Default::default());
    assert_eq!(bad.control_errors.len(), 1);
    assert!(
        bad.control_errors[0].starts_with("sidecar-governor.io/cpu-max:"),
        "{:?}",
        bad.control_errors
    );
    // statuses are asked once per container
    let calls = fake.state().status_calls;
    assert_eq!(calls, 4);
    d.discover(&rules()).unwrap();
    assert_eq!(fake.state().status_calls, calls);

    // the gateway is governed only when asked for
    let mut with_gateways = rules();
    with_gateways.include_gateways = true;
    let found = d.discover(&with_gateways).unwrap();
    assert!(
        found
            .iter()
            .any(|p| p.key == g2.rel && p.id.namespace == "istio-system"),
        "{found:#?}"
    );
    assert_eq!(found.len(), 3);
}

#[test]
fn fast_discovery_lists_every_tick_without_events_and_sees_changes() {
    let mut node = Node::new();
    let fake = FakeRuntime::start(&socket_in(&node), Fake::default());
    let p1 = add_pod(&fake, 1, "shop", "cart-1", &[]);
    let s1 = sidecar(&mut node, 1, 1);
    add_container(&fake, &p1, "shop", "cart-1", "istio-proxy", &s1);
    let mut d = cri_discovery(&node, Duration::from_secs(2));
    assert_eq!(d.discover(&rules()).unwrap().len(), 1);
    assert!(!d.changed(), "nothing changed");
    let p2 = add_pod(&fake, 2, "shop", "cart-2", &[]);
    let s2 = sidecar(&mut node, 2, 2);
    add_container(&fake, &p2, "shop", "cart-2", "istio-proxy", &s2);
    assert!(d.changed(), "a container started");
    assert_eq!(d.discover(&rules()).unwrap().len(), 2);
    assert!(!d.changed());
    remove_container(&fake, &s1.id);
    assert!(d.changed(), "a container went");
    assert_eq!(d.discover(&rules()).unwrap().len(), 1);
    assert!(!d.events_streaming());
}

#[test]
fn fast_discovery_keeps_looking_at_a_proxy_container_until_its_proxy_runs() {
    let mut node = Node::new();
    let fake = FakeRuntime::start(&socket_in(&node), Fake::default());
    let p1 = add_pod(&fake, 1, "shop", "cart-1", &[]);
    // pilot-agent up, envoy not started yet
    let mut c = node.container(1, 1, TWO_CORES);
    let agent = process(
        &mut node,
        &mut c,
        "pilot-agent",
        &["pilot-agent", "proxy", "sidecar"],
    );
    add_container(&fake, &p1, "shop", "cart-1", "istio-proxy", &c);
    let mut d = cri_discovery(&node, Duration::from_secs(2));
    assert!(d.discover(&rules()).unwrap().is_empty());
    assert!(d.changed(), "pending: look again next tick");
    child(&node, &c, 60_000, "envoy", &["envoy"], agent);
    assert_eq!(d.discover(&rules()).unwrap().len(), 1);
    assert!(!d.changed());
}

#[test]
fn fast_discovery_of_a_slow_runtime_is_bounded() {
    let mut node = Node::new();
    let fake = FakeRuntime::start(&socket_in(&node), Fake::default());
    let p1 = add_pod(&fake, 1, "shop", "cart-1", &[]);
    let s1 = sidecar(&mut node, 1, 1);
    add_container(&fake, &p1, "shop", "cart-1", "istio-proxy", &s1);
    fake.state().delay = Duration::from_secs(5);
    let mut d = cri_discovery(&node, Duration::from_millis(300));
    let t0 = Instant::now();
    let e = d.discover(&rules()).unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        matches!(
            e,
            DiscoveryError::Cri(CriError::Timeout { .. }) | DiscoveryError::CriPass { .. }
        ),
        "{e}"
    );
    // `changed` is bounded too, and hands its failure to the next pass
    let t0 = Instant::now();
    assert!(d.changed());
    assert!(t0.elapsed() < Duration::from_millis(1500));
    let t0 = Instant::now();
    assert!(d.discover(&rules()).is_err());
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "deferred error, no second wait"
    );
}

#[test]
fn fast_event_stream_marks_changes_and_a_broken_stream_relists() {
    let mut node = Node::new();
    let fake = FakeRuntime::start(
        &socket_in(&node),
        Fake {
            state: Arc::new(Mutex::new(State {
                events: true,
                ..Default::default()
            })),
        },
    );
    let p1 = add_pod(&fake, 1, "shop", "cart-1", &[]);
    let s1 = sidecar(&mut node, 1, 1);
    add_container(&fake, &p1, "shop", "cart-1", "istio-proxy", &s1);
    let mut d = cri_discovery(&node, Duration::from_secs(2));
    assert_eq!(d.discover(&rules()).unwrap().len(), 1);
    eventually("a subscriber", || !fake.state().subscribers.is_empty());
    // until the stream has delivered something, it is not trusted: list every tick
    assert!(!d.changed());
    fake.event(ContainerEventType::ContainerStartedEvent, "x");
    eventually("the stream to be live", || d.events_streaming());
    assert!(d.changed(), "an event marks discovery dirty");
    d.discover(&rules()).unwrap();
    let lists = fake.state().list_calls;
    for _ in 0..5 {
        assert!(!d.changed());
    }
    assert_eq!(
        fake.state().list_calls,
        lists,
        "no listing while the stream is live"
    );
    // created events do not matter (nothing runs yet)
    fake.event(ContainerEventType::ContainerCreatedEvent, "y");
    eventually("the event", || d.events_received() == 2);
    assert!(!d.changed());
    // a stopped container
    fake.event(ContainerEventType::ContainerStoppedEvent, &s1.id);
    eventually("the event", || d.events_received() == 3);
    assert!(d.changed());
    // the stream breaks: relist now, and list every tick until it is back
    fake.break_streams();
    eventually("the stream to close", || !d.events_streaming());
    assert!(
        d.changed(),
        "a broken stream means events may have been missed"
    );
    d.discover(&rules()).unwrap();
    let lists = fake.state().list_calls;
    assert!(!d.changed());
    assert_eq!(fake.state().list_calls, lists + 1, "listing again");
    // it comes back (retried after a second)
    eventually("a new subscriber", || !fake.state().subscribers.is_empty());
    fake.event(ContainerEventType::ContainerStartedEvent, "z");
    eventually("the stream to be live again", || d.events_streaming());
}

#[test]
fn fast_auto_falls_back_to_procfs_and_returns_to_cri() {
    let mut node = Node::new();
    let mut fake = FakeRuntime::start(&socket_in(&node), Fake::default());
    let p1 = add_pod(
        &fake,
        1,
        "shop",
        "cart-1",
        &[("sidecar-governor.io/mode", "dry-run")],
    );
    let s1 = sidecar(&mut node, 1, 1);
    add_container(&fake, &p1, "shop", "cart-1", "istio-proxy", &s1);
    let mut auto = AutoDiscovery::new(
        cri_discovery(&node, Duration::from_millis(500)),
        ProcfsDiscovery::new(&node.proc, &node.cgroup),
        Duration::from_millis(200),
    );
    let found = auto.discover(&rules()).unwrap();
    assert_eq!(auto.source(), Source::Cri);
    assert_eq!(found[0].id.pod, "cart-1");

    fake.stop();
    assert!(auto.changed(), "the runtime went");
    let found = auto.discover(&rules()).unwrap();
    assert_eq!(auto.source(), Source::Procfs);
    assert_eq!(found.len(), 1);
    // names and per-pod settings learnt from CRI are kept for a container still there
    assert_eq!(found[0].id.pod, "cart-1");
    assert_eq!(found[0].control.mode, Some(Mode::DryRun));
    // a proxy started meanwhile is found by its process alone
    let s2 = sidecar(&mut node, 2, 2);
    let found = auto.discover(&rules()).unwrap();
    let new = found.iter().find(|p| p.key == s2.rel).unwrap();
    assert_eq!(new.id.pod, "");
    assert_eq!(new.id.pod_uid, s2.pod_uid);

    fake.restart();
    let p2 = add_pod(&fake, 2, "shop", "cart-2", &[]);
    add_container(&fake, &p2, "shop", "cart-2", "istio-proxy", &s2);
    eventually("a probe to see the runtime back", || auto.changed());
    let found = auto.discover(&rules()).unwrap();
    assert_eq!(auto.source(), Source::Cri);
    let new = found.iter().find(|p| p.key == s2.rel).unwrap();
    assert_eq!(new.id.pod, "cart-2");
}

/// The agent over CRI discovery: names in the metrics, a new proxy governed at the next tick,
/// a removed one forgotten at the next tick, per-pod modes, and the fallback reported.
#[test]
fn fast_agent_over_cri() {
    let mut node = Node::new();
    let mut fake = FakeRuntime::start(&socket_in(&node), Fake::default());
    let p1 = add_pod(&fake, 1, "shop", "cart-1", &[]);
    let mut s1 = sidecar(&mut node, 1, 1);
    let mut a1 = app(&mut node, 1, 2);
    add_container(&fake, &p1, "shop", "cart-1", "istio-proxy", &s1);
    add_container(&fake, &p1, "shop", "cart-1", "cart", &a1);
    let p2 = add_pod(
        &fake,
        2,
        "shop",
        "cart-2",
        &[("sidecar-governor.io/mode", "dry-run")],
    );
    let mut s2 = sidecar(&mut node, 2, 3);
    add_container(&fake, &p2, "shop", "cart-2", "istio-proxy", &s2);
    let p3 = add_pod(
        &fake,
        3,
        "shop",
        "cart-3",
        &[("sidecar-governor.io/mode", "off")],
    );
    let mut s3 = sidecar(&mut node, 3, 4);
    add_container(&fake, &p3, "shop", "cart-3", "istio-proxy", &s3);
    let p4 = add_pod(&fake, 4, "kube-system", "dns-1", &[]);
    let s4 = sidecar(&mut node, 4, 5);
    add_container(&fake, &p4, "kube-system", "dns-1", "istio-proxy", &s4);

    let policy = Policy::from_yaml(
        "interval: 1s\nmatch:\n  rescanInterval: 1h\n  excludeNamespaces: [kube-system]\ncpu:\n  min: 100m\n  scaleDownAfter: 2s\n",
    )
    .unwrap();
    let shared = Arc::new(Shared::default());
    let auto = AutoDiscovery::new(
        cri_discovery(&node, Duration::from_secs(1)),
        ProcfsDiscovery::new(&node.proc, &node.cgroup),
        Duration::from_millis(200),
    );
    let mut agent = Agent::new(
        node.cgroup.clone(),
        policy,
        false,
        Box::new(auto),
        Journal::load(&node.state).unwrap(),
        shared.clone(),
    );
    let mut now = Instant::now();
    let mut tick = |agent: &mut Agent, cs: &mut [&mut FixtureContainer]| {
        for c in cs.iter_mut() {
            c.run_for_a_second(5, 0);
        }
        now += Duration::from_secs(1);
        agent.tick(now);
    };
    tick(&mut agent, &mut [&mut s1, &mut s2, &mut s3, &mut a1]);
    let m = shared.metrics.encode();
    assert!(m.contains("sidecar_governor_proxies 2"), "{m}");
    assert!(
        m.contains("sidecar_governor_discovery_source{source=\"cri\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("namespace=\"shop\",pod=\"cart-1\",container=\"istio-proxy\""),
        "{m}"
    );
    assert!(!m.contains("cart-3"), "mode off: not governed\n{m}");
    assert!(!m.contains("dns-1"), "excluded namespace\n{m}");
    for _ in 0..12 {
        tick(&mut agent, &mut [&mut s1, &mut s2, &mut s3, &mut a1]);
    }
    assert!(
        s1.quota_millis().unwrap() < 2000,
        "s1 shrinks: {}",
        s1.cpu_max()
    );
    assert_eq!(s2.cpu_max(), TWO_CORES, "dry-run pod: never written");
    assert_eq!(s3.cpu_max(), TWO_CORES, "off pod: never written");
    assert_eq!(a1.cpu_max(), "100000 100000", "app never written");
    assert_eq!(s4.cpu_max(), TWO_CORES, "excluded namespace never written");

    // a proxy starts: governed at the next tick (no periodic rescan for an hour)
    let p5 = add_pod(&fake, 5, "shop", "cart-5", &[]);
    let mut s5 = sidecar(&mut node, 5, 6);
    add_container(&fake, &p5, "shop", "cart-5", "istio-proxy", &s5);
    tick(&mut agent, &mut [&mut s1, &mut s5]);
    let m = shared.metrics.encode();
    assert!(
        m.contains("pod=\"cart-5\""),
        "new proxy governed within a tick\n{m}"
    );
    assert!(m.contains("sidecar_governor_proxies 3"), "{m}");

    // one is removed: forgotten at the next tick
    remove_container(&fake, &s5.id);
    node.kill(50_006);
    tick(&mut agent, &mut [&mut s1]);
    let m = shared.metrics.encode();
    assert!(
        !m.contains("pod=\"cart-5\""),
        "series removed within a tick\n{m}"
    );
    assert!(m.contains("sidecar_governor_proxies 2"), "{m}");

    // a whole agent over CRI made read calls only
    let calls = fake.state().calls.clone();
    let reads: Vec<&str> = ReadCall::ALL.iter().map(|c| c.name()).collect();
    assert!(calls.iter().all(|c| reads.contains(c)), "{calls:?}");
    assert!(calls.contains(&"ContainerStatus"), "{calls:?}");

    // the runtime goes: procfs keeps governing, names kept, the source reported
    fake.stop();
    tick(&mut agent, &mut [&mut s1, &mut s2, &mut s3]);
    let m = shared.metrics.encode();
    assert!(
        m.contains("sidecar_governor_discovery_source{source=\"procfs\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("sidecar_governor_discovery_source{source=\"cri\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("pod=\"cart-1\""),
        "names kept in the fallback\n{m}"
    );
    assert!(!m.contains("cart-3"), "off pod still not governed\n{m}");
    let governed = agent.governed();
    assert!(
        governed.contains(&s1.rel) && governed.contains(&s2.rel),
        "{governed:?}"
    );
    assert_eq!(s3.cpu_max(), TWO_CORES);
}

#[test]
fn fast_agent_counts_bad_annotations_and_applies_pod_bounds() {
    let mut node = Node::new();
    let fake = FakeRuntime::start(&socket_in(&node), Fake::default());
    let p1 = add_pod(
        &fake,
        1,
        "shop",
        "cart-1",
        &[("sidecar-governor.io/cpu-min", "500m")],
    );
    let mut s1 = sidecar(&mut node, 1, 1);
    add_container(&fake, &p1, "shop", "cart-1", "istio-proxy", &s1);
    let p2 = add_pod(
        &fake,
        2,
        "shop",
        "cart-2",
        &[("sidecar-governor.io/mode", "maybe")],
    );
    let mut s2 = sidecar(&mut node, 2, 2);
    add_container(&fake, &p2, "shop", "cart-2", "istio-proxy", &s2);
    let policy = Policy::from_yaml(
        "match:\n  rescanInterval: 1h\ncpu:\n  min: 100m\n  scaleDownAfter: 1s\n  stepDown: 0.5\n",
    )
    .unwrap();
    let shared = Arc::new(Shared::default());
    let mut agent = Agent::new(
        node.cgroup.clone(),
        policy,
        false,
        Box::new(cri_discovery(&node, Duration::from_secs(1))),
        Journal::load(&node.state).unwrap(),
        shared.clone(),
    );
    let mut now = Instant::now();
    for _ in 0..20 {
        s1.run_for_a_second(1, 0);
        s2.run_for_a_second(1, 0);
        now += Duration::from_secs(1);
        agent.tick(now);
    }
    assert_eq!(
        s1.quota_millis(),
        Some(500),
        "annotation floor: {}",
        s1.cpu_max()
    );
    assert_eq!(
        s2.quota_millis(),
        Some(100),
        "bad annotation: policy floor: {}",
        s2.cpu_max()
    );
    let m = shared.metrics.encode();
    assert!(
        m.contains("sidecar_governor_errors_total{kind=\"annotation\"} 1"),
        "{m}"
    );
}
