//! The HTTP endpoint: `/metrics` (Prometheus/OpenMetrics text), `/healthz` (the process
//! answers), `/readyz` (a control tick has completed recently) and `/debug/proxies` (JSON
//! view of every governed proxy, for `status` and humans).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

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
    pub cpu_quota_millis: Option<u64>,
    pub cpu_original_millis: Option<u64>,
    pub cpu_usage_millis: Option<f64>,
    pub cpu_throttled_ratio: Option<f64>,
    pub memory_high_bytes: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
    pub memory_pressure_ratio: Option<f64>,
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

/// The agent's HTTP routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/debug/proxies", get(debug_proxies))
        .with_state(shared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_path(shared: &Arc<Shared>, path: &str) -> (StatusCode, String) {
        let response = router(shared.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
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
        let (_, body) = get_path(&shared, "/debug/proxies").await;
        assert!(body.contains("\"proxies\":[]"), "{body}");
    }
}
