//! The HTTP surface (issue 9, case 5): `/metrics` authenticated and authorised through the
//! Kubernetes TokenReview and SubjectAccessReview APIs (answered by kube's tower-test mock API
//! server) with its cache; and the real binary's listeners: the debug view only on the admin
//! listener, slow, half-sent and idle connections beyond the cap refused or closed while the
//! control loop keeps ticking.

// Fixture helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body as AxumBody;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};
use sidecar_governor::server::auth::{CacheConfig, MetricsAuth};
use sidecar_governor::server::{Shared, public_router};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// Authentication and authorisation of /metrics.

const PROMETHEUS: &str = "system:serviceaccount:monitoring:prometheus";

/// One review the mock API server answered: its URL path and the posted body.
type Calls = Arc<Mutex<Vec<(String, Value)>>>;

/// A stand-in API server: tokens `prometheus` and `alice` are valid users (only the first may
/// `get` /metrics), `expired` is not valid, and `broken` makes the TokenReview fail with a 500.
fn mock_api() -> (kube::Client, Calls) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let path = request.uri().path().to_string();
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let mut review: Value = serde_json::from_slice(&body).unwrap();
            seen.lock().unwrap().push((path.clone(), review.clone()));
            let status = if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
                match review["spec"]["token"].as_str().unwrap() {
                    "prometheus" => json!({"authenticated": true, "user": {
                        "username": PROMETHEUS, "uid": "u-1",
                        "groups": ["system:serviceaccounts", "system:authenticated"]}}),
                    "alice" => json!({"authenticated": true, "user": {
                        "username": "alice", "groups": ["system:authenticated"]}}),
                    "broken" => {
                        respond.send_response(
                            Response::builder()
                                .status(500)
                                .header("content-type", "application/json")
                                .body(Body::from(
                                    br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcd is down","code":500}"#.to_vec(),
                                ))
                                .unwrap(),
                        );
                        continue;
                    }
                    _ => json!({"authenticated": false, "error": "token expired"}),
                }
            } else {
                assert_eq!(path, "/apis/authorization.k8s.io/v1/subjectaccessreviews");
                json!({"allowed": review["spec"]["user"] == PROMETHEUS})
            };
            review["status"] = status;
            respond.send_response(
                Response::builder()
                    .status(201)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&review).unwrap()))
                    .unwrap(),
            );
        }
    });
    (client, calls)
}

async fn get(
    app: &axum::Router,
    path: &str,
    authorization: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    let mut request = Request::get(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response = app
        .clone()
        .oneshot(request.body(AxumBody::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        challenge,
    )
}

fn kinds(calls: &Calls) -> Vec<&'static str> {
    calls
        .lock()
        .unwrap()
        .iter()
        .map(|(path, _)| {
            if path.ends_with("/tokenreviews") {
                "TokenReview"
            } else {
                "SubjectAccessReview"
            }
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn metrics_need_a_token_allowed_to_get_them() {
    let (client, calls) = mock_api();
    let ttl = Duration::from_secs(30);
    let auth = Arc::new(MetricsAuth::new(client, CacheConfig { ttl, capacity: 16 }));
    let shared = Arc::new(Shared::default());
    shared.publish(vec![]);
    let app = public_router(shared, Some(auth.clone()));

    // Probes stay open, and ask the API server nothing.
    assert_eq!(get(&app, "/healthz", None).await.0, StatusCode::OK);
    assert_eq!(get(&app, "/readyz", None).await.0, StatusCode::OK);
    // No token, or not a bearer token: 401 with a Bearer challenge, no review.
    let (status, _, challenge) = get(&app, "/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge.as_deref(), Some("Bearer"));
    let (status, _, _) = get(&app, "/metrics", Some("Basic cHJvbTpwcm9t")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(kinds(&calls).is_empty(), "{:?}", kinds(&calls));

    // A token the API server does not accept: 401 after one TokenReview.
    let (status, _, _) = get(&app, "/metrics", Some("Bearer expired")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(kinds(&calls), ["TokenReview"]);

    // A valid user without the permission: 403; the SubjectAccessReview asks for exactly
    // `get` on the non-resource URL /metrics for that user.
    let (status, _, _) = get(&app, "/metrics", Some("Bearer alice")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        kinds(&calls),
        ["TokenReview", "TokenReview", "SubjectAccessReview"]
    );
    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls[1].1["spec"]["token"], "alice");
        let sar = &calls[2].1["spec"];
        assert_eq!(sar["user"], "alice");
        assert_eq!(sar["groups"], json!(["system:authenticated"]));
        assert_eq!(
            sar["nonResourceAttributes"],
            json!({"path": "/metrics", "verb": "get"})
        );
        assert!(sar.get("resourceAttributes").is_none(), "{sar}");
    }

    // Allowed: 200 with the metrics; the user's uid and groups reach the review.
    let (status, body, _) = get(&app, "/metrics", Some("Bearer prometheus")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("sidecar_governor_ticks_total"), "{body}");
    assert_eq!(kinds(&calls).len(), 5);
    {
        let calls = calls.lock().unwrap();
        let sar = &calls[4].1["spec"];
        assert_eq!(sar["user"], PROMETHEUS);
        assert_eq!(sar["uid"], "u-1");
        assert_eq!(
            sar["groups"],
            json!(["system:serviceaccounts", "system:authenticated"])
        );
    }

    // Cache hits: the same tokens again within the TTL ask the API server nothing, whatever
    // the answer was.
    tokio::time::advance(ttl - Duration::from_secs(1)).await;
    assert_eq!(
        get(&app, "/metrics", Some("Bearer prometheus")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&app, "/metrics", Some("bearer  prometheus ")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&app, "/metrics", Some("Bearer alice")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&app, "/metrics", Some("Bearer expired")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(kinds(&calls).len(), 5, "{:?}", kinds(&calls));
    assert_eq!(auth.cached(), 3);

    // After the TTL the token is reviewed again.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        get(&app, "/metrics", Some("Bearer prometheus")).await.0,
        StatusCode::OK
    );
    assert_eq!(kinds(&calls).len(), 7, "{:?}", kinds(&calls));

    // An API server that fails: 500, never cached (the next request asks again).
    for n in [8, 9] {
        let (status, _, _) = get(&app, "/metrics", Some("Bearer broken")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(kinds(&calls).len(), n);
    }
}

#[tokio::test]
async fn the_cache_holds_at_most_its_capacity() {
    let (client, calls) = mock_api();
    let auth = Arc::new(MetricsAuth::new(
        client,
        CacheConfig {
            ttl: Duration::from_secs(60),
            capacity: 2,
        },
    ));
    let app = public_router(Arc::new(Shared::default()), Some(auth.clone()));
    for token in ["a", "b", "c", "d", "prometheus"] {
        get(&app, "/metrics", Some(&format!("Bearer {token}"))).await;
    }
    assert_eq!(auth.cached(), 2);
    // `a` was evicted: asked again; `prometheus` is still cached.
    let before = kinds(&calls).len();
    get(&app, "/metrics", Some("Bearer prometheus")).await;
    assert_eq!(kinds(&calls).len(), before);
    get(&app, "/metrics", Some("Bearer a")).await;
    assert_eq!(kinds(&calls).len(), before + 1);
}

// ---------------------------------------------------------------------------------------------
// The real binary's listeners.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Agent {
    child: Child,
    public: u16,
    admin: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-shot HTTP/1.1 GET (the test's own client: `Connection: close`, read to the end).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

fn ticks(port: u16) -> u64 {
    let (status, text) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("sidecar_governor_ticks_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the server closes `stream` (EOF or reset); returns how long that took, or
/// `None` if it stayed open for `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

fn start_agent(node: &common::Node) -> Agent {
    let config = node.dir.path().join("policy.yaml");
    std::fs::write(&config, "interval: 100ms\n").unwrap();
    let (public, admin) = (free_port(), free_port());
    let child = node
        .agent_command(&config)
        .args(["--listen", &format!("127.0.0.1:{public}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--http-max-connections", "4"])
        .args(["--http-header-timeout", "2s"])
        .args(["--http-idle-timeout", "10s"])
        .env("SG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = Agent {
        child,
        public,
        admin,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(public, "/readyz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "the agent never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    agent
}

#[test]
fn the_debug_view_is_on_the_admin_listener_only() {
    let node = common::Node::new();
    let agent = start_agent(&node);
    assert_eq!(
        http_get(agent.public, "/debug/proxies").unwrap().0,
        404,
        "the public listener must not serve the debug view"
    );
    let (status, body) = http_get(agent.admin, "/debug/proxies").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"proxies\":"), "{body}");
    assert_eq!(http_get(agent.admin, "/metrics").unwrap().0, 404);
    assert_eq!(http_get(agent.public, "/healthz").unwrap().0, 200);
}

#[test]
fn slow_and_idle_connections_beyond_the_cap_are_refused_or_closed_while_ticks_continue() {
    let node = common::Node::new();
    let agent = start_agent(&node);
    let before = ticks(agent.public);
    let flood = Instant::now();

    // Fill the cap of 4: two half-sent request heads, two connections that send nothing.
    let mut held: Vec<TcpStream> = (0..4)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", agent.public)).unwrap();
            if i % 2 == 0 {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                    .unwrap();
            }
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // Beyond the cap: closed at once, long before the 2 s header timeout could close it.
    for _ in 0..3 {
        let mut extra = TcpStream::connect(("127.0.0.1", agent.public)).unwrap();
        let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let took = closed_within(&mut extra, Duration::from_secs(5))
            .expect("a connection beyond the cap is closed");
        assert!(took < Duration::from_millis(1500), "closed after {took:?}");
    }

    // The admin listener has its own cap and still answers during the flood.
    assert_eq!(http_get(agent.admin, "/debug/proxies").unwrap().0, 200);

    // The held connections are closed by the header timeout (2 s after they were accepted),
    // not at once and not never.
    for (i, stream) in held.iter_mut().enumerate() {
        let took = closed_within(stream, Duration::from_secs(8))
            .unwrap_or_else(|| panic!("held connection {i} still open after 8s"));
        let since_flood = flood.elapsed();
        assert!(
            since_flood >= Duration::from_millis(1900),
            "connection {i} closed after {since_flood:?} ({took:?}), before the header timeout"
        );
    }

    // Serving again, and the control loop ticked all along (100 ms interval).
    let elapsed = flood.elapsed();
    let after = ticks(agent.public);
    let expected = (elapsed.as_millis() / 100) as u64;
    assert!(
        after - before >= expected / 2,
        "{} ticks in {elapsed:?} of flood, expected about {expected}",
        after - before
    );
}

#[test]
fn a_kept_alive_connection_that_sends_nothing_more_is_closed() {
    let node = common::Node::new();
    let agent = start_agent(&node);
    let mut stream = TcpStream::connect(("127.0.0.1", agent.public)).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The response is complete; the connection stays open for a next request only as long
    // as the header timeout (2 s).
    let took = closed_within(&mut stream, Duration::from_secs(8))
        .expect("an idle kept-alive connection is closed");
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_secs(6),
        "{took:?}"
    );
}
