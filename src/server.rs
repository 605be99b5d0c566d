//! The HTTP listeners. The public one serves `/metrics` (Prometheus/OpenMetrics text, with
//! optional Kubernetes token authentication, see [`auth`]), `/healthz` (the process answers)
//! and `/readyz` (a control tick has completed, the journal can be written); the admin one,
//! on loopback by default, serves `/debug/proxies` (JSON view of every governed proxy, with
//! pod identities, host PIDs and cgroup paths: for `status` and `kubectl port-forward`).
//! Each listener is hyper's HTTP/1 server with a header-read timeout (which also closes a
//! kept-alive connection that sends no next request), an idle timeout on the socket (a
//! request or response that stops moving) and a cap on open connections (beyond it a new
//! connection is closed at once). The listeners run on their own runtime; the control loop
//! does not wait on them.

pub mod auth;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// The last action taken on a proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ActionView {
    pub resource: &'static str,
    pub direction: &'static str,
    pub reason: &'static str,
    pub from: String,
    pub to: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// One governed proxy as `/debug/proxies` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProxyView {
    pub key: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pod_uid: String,
    pub container_id: String,
    pub process: String,
    pub pid: u32,
    /// `sidecar`, or `node-proxy` (ztunnel).
    pub class: &'static str,
    pub cpu_quota_millis: Option<u64>,
    pub cpu_original_millis: Option<u64>,
    pub cpu_usage_millis: Option<f64>,
    pub cpu_throttled_ratio: Option<f64>,
    pub memory_high_bytes: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
    pub memory_pressure_ratio: Option<f64>,
    /// Its unreclaimable memory grows steadily (memory.growth).
    pub memory_growing: bool,
    pub backoff: bool,
    pub last_action: Option<ActionView>,
}

/// State shared between the control loop and the HTTP server.
#[derive(Debug, Default)]
pub struct Shared {
    pub metrics: Metrics,
    ready: AtomicBool,
    last_tick_unix: AtomicU64,
    proxies: RwLock<Vec<ProxyView>>,
    pub dry_run: AtomicBool,
    /// Why the agent cannot keep its promises now (the journal cannot be written): `/readyz`
    /// fails with this reason while it is set.
    degraded: RwLock<Option<String>>,
}

impl Shared {
    /// Records a completed tick and the view it produced.
    pub fn publish(&self, views: Vec<ProxyView>) {
        if let Ok(mut slot) = self.proxies.write() {
            *slot = views;
        }
        self.last_tick_unix.store(now_unix(), Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
    }

    /// Records a completed tick, updating the per-proxy view in place with `update` (which
    /// reuses the previous tick's allocations: no churn with thousands of proxies).
    pub fn publish_with(&self, update: impl FnOnce(&mut Vec<ProxyView>)) {
        if let Ok(mut slot) = self.proxies.write() {
            update(&mut slot);
        }
        self.last_tick_unix.store(now_unix(), Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
    }

    /// True once a tick has completed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Sets (or clears) the reason the agent is not ready although it ticks.
    pub fn set_degraded(&self, reason: Option<String>) {
        if let Ok(mut slot) = self.degraded.write() {
            *slot = reason;
        }
    }

    /// Why the agent is not ready although it ticks, if it is not.
    pub fn degraded(&self) -> Option<String> {
        self.degraded.read().ok().and_then(|d| d.clone())
    }

    /// The latest per-proxy view.
    pub fn proxies(&self) -> Vec<ProxyView> {
        self.proxies.read().map(|v| v.clone()).unwrap_or_default()
    }
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if let Some(reason) = shared.degraded() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response()
    } else if shared.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no tick completed yet\n").into_response()
    }
}

#[derive(Serialize)]
struct DebugProxies {
    dry_run: bool,
    last_tick: u64,
    proxies: Vec<ProxyView>,
}

async fn debug_proxies(State(shared): State<Arc<Shared>>) -> axum::Json<impl Serialize> {
    axum::Json(DebugProxies {
        dry_run: shared.dry_run.load(Ordering::Relaxed),
        last_tick: shared.last_tick_unix.load(Ordering::Relaxed),
        proxies: shared.proxies(),
    })
}

/// The public listener's routes: `/metrics` (behind `auth` when given), `/healthz` and
/// `/readyz` (always open: the kubelet probes them without a token). Nothing else.
pub fn public_router(shared: Arc<Shared>, auth: Option<Arc<auth::MetricsAuth>>) -> Router {
    let mut routes = Router::new().route("/metrics", get(metrics));
    if let Some(auth) = auth {
        routes = routes.route_layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_token,
        ));
    }
    routes
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// The admin listener's routes: `/debug/proxies` only.
pub fn admin_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/debug/proxies", get(debug_proxies))
        .with_state(shared)
}

/// Timeouts and the connection cap of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request's head must arrive whole within this, counted from when the connection
    /// starts waiting for it (so a kept-alive connection with no next request is closed too).
    pub header_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed.
    pub idle_timeout: Duration,
    /// At most this many connections are open at once; a new one beyond it is closed at
    /// once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }
}

/// Serves `app` on `listener` within `limits` until the future is dropped. `name` names the
/// listener in logs. Accept errors (out of file descriptors) are logged and retried after a
/// pause; they never end the server.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, name: &'static str) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let mut refusing = false;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(listener = name, error = %e, "accept failed; retrying in 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if !refusing {
                warn!(
                    listener = name,
                    max = limits.max_connections,
                    "connection cap reached: closing new connections until one ends"
                );
                refusing = true;
            }
            drop(stream);
            continue;
        };
        if refusing {
            info!(listener = name, "below the connection cap again");
            refusing = false;
        }
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let io = hyper_util::rt::TokioIo::new(idle_timeout(stream, limits.idle_timeout));
            let service = hyper_util::service::TowerToHyperService::new(app);
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(io, service)
                .await;
            if let Err(e) = served {
                debug!(listener = name, %peer, error = %e, "connection closed");
            }
        });
    }
}

/// `stream` failing with `TimedOut` once a read or a write has waited `timeout` for the peer
/// (a kept-alive connection that sends nothing more, a response nobody reads).
pub fn idle_timeout<S: AsyncRead + AsyncWrite>(
    stream: S,
    timeout: Duration,
) -> Pin<Box<TimeoutStream<S>>> {
    let mut io = TimeoutStream::new(stream);
    io.set_read_timeout(Some(timeout));
    io.set_write_timeout(Some(timeout));
    Box::pin(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_from(app: Router, path: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get_path(shared: &Arc<Shared>, path: &str) -> (StatusCode, String) {
        get_from(public_router(shared.clone(), None), path).await
    }

    #[tokio::test]
    async fn readiness_follows_the_first_tick() {
        let shared = Arc::new(Shared::default());
        assert_eq!(get_path(&shared, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get_path(&shared, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        shared.publish(vec![]);
        assert_eq!(get_path(&shared, "/readyz").await.0, StatusCode::OK);
        let (status, body) = get_path(&shared, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("sidecar_governor_proxies"), "{body}");
        let (_, body) = get_from(admin_router(shared.clone()), "/debug/proxies").await;
        assert!(body.contains("\"proxies\":[]"), "{body}");
    }

    #[tokio::test]
    async fn the_debug_view_is_only_on_the_admin_listener() {
        let shared = Arc::new(Shared::default());
        shared.publish(vec![]);
        let (status, _) = get_path(&shared, "/debug/proxies").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = get_from(admin_router(shared.clone()), "/debug/proxies").await;
        assert_eq!(status, StatusCode::OK);
        for path in ["/metrics", "/healthz", "/readyz"] {
            let (status, _) = get_from(admin_router(shared.clone()), path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }

    /// A peer that neither reads nor writes: the wrapped socket fails with `TimedOut` after
    /// the idle timeout (paused time), and each byte moved pushes the deadline back.
    #[tokio::test(start_paused = true)]
    async fn idle_sockets_time_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(16);
        let mut io = idle_timeout(ours, Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        // The peer sends a byte after 6s, then nothing: the read after it times out 10s later.
        let peer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(6)).await;
            theirs.write_all(b"x").await.unwrap();
            // keep the peer open, not reading
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(theirs);
        });
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(6));
        let e = io.read_exact(&mut byte).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(16));
        // A response the peer never reads: the write stalls once the pipe is full, then fails.
        let (ours, _theirs) = tokio::io::duplex(16);
        let mut io = idle_timeout(ours, Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        let e = io.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        peer.abort();
    }
}
