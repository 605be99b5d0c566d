//! Kubernetes Events on the pods whose sidecars the agent resizes (`kubectl describe pod` shows
//! them): scale-ups after throttling, a quota reaching its floor, limits restored, conflicts
//! with someone else's write. The control loop talks to an [`EventSink`] that never blocks:
//! [`EventQueue`] rate-limits per pod and hands events over a bounded channel to a tokio task
//! that publishes them through kube's [`Recorder`] (events.k8s.io/v1; repeats of the same event
//! become a patched series). When the channel is full the event is dropped and counted. Outside
//! a cluster the agent uses [`NoEvents`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::server::Shared;

/// The controller name Events are reported under.
pub const REPORTING_CONTROLLER: &str = "sidecar-governor";

/// Why an Event is written: a small fixed set, shown as the Event's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventReason {
    /// The sidecar's CPU quota was raised (it throttled, ran near its quota, or stalled).
    ScaledUp,
    /// The sidecar's CPU quota came down to the policy's floor.
    AtFloor,
    /// The sidecar's original limits were put back.
    Restored,
    /// Someone else changed a limit the agent had written; the agent backs off.
    Conflict,
    /// The proxy runs more workers than its CPU limit can serve.
    WorkersUnfit,
    /// The proxy's unreclaimable memory grows steadily (the leak shape).
    MemoryGrowing,
}

impl EventReason {
    /// The Event's `reason` (PascalCase, as Kubernetes writes them).
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::ScaledUp => "SidecarCPUScaledUp",
            EventReason::AtFloor => "SidecarCPUAtFloor",
            EventReason::Restored => "SidecarLimitsRestored",
            EventReason::Conflict => "SidecarLimitConflict",
            EventReason::WorkersUnfit => "SidecarConcurrencyTooHigh",
            EventReason::MemoryGrowing => "SidecarMemoryGrowing",
        }
    }

    /// The Event's `action`.
    fn action(self) -> &'static str {
        match self {
            EventReason::ScaledUp | EventReason::AtFloor => "ResizeCPU",
            EventReason::Restored => "Restore",
            EventReason::Conflict => "BackOff",
            EventReason::WorkersUnfit | EventReason::MemoryGrowing => "Advise",
        }
    }

    fn event_type(self) -> EventType {
        match self {
            EventReason::Conflict | EventReason::WorkersUnfit | EventReason::MemoryGrowing => {
                EventType::Warning
            }
            _ => EventType::Normal,
        }
    }
}

/// One Event about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    pub namespace: String,
    pub pod: String,
    /// The pod's UID (binds the Event to this incarnation of the pod); may be empty.
    pub pod_uid: String,
    pub reason: EventReason,
    pub message: String,
}

impl PodEvent {
    /// An Event about the pod of the container `id`.
    pub fn about(id: &crate::identity::Identity, reason: EventReason, message: String) -> Self {
        PodEvent {
            namespace: id.namespace.clone(),
            pod: id.pod.clone(),
            pod_uid: id.pod_uid.clone(),
            reason,
            message,
        }
    }
}

/// Where the control loop sends Events. Implementations must never block.
pub trait EventSink: Send + Sync + fmt::Debug {
    /// Offers one Event; it may be rate-limited or dropped.
    fn emit(&self, event: PodEvent);
}

/// Events off (not in a cluster, or `--events off`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _event: PodEvent) {}
}

/// Per-pod token bucket: `burst` Events at once, then one per `refill`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub burst: u32,
    pub refill: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            burst: 3,
            refill: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-pod rate limiting, pure apart from the time passed in.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    buckets: HashMap<(String, String), Bucket>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        Limiter {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// True when pod `namespace/pod` may have another Event at `now`.
    pub fn allow(&mut self, namespace: &str, pod: &str, now: Instant) -> bool {
        let burst = f64::from(self.limit.burst.max(1));
        let refill = self.limit.refill.as_secs_f64().max(f64::EPSILON);
        if self.buckets.len() > 4096 {
            // Forget pods whose bucket is full again (they behave as new ones).
            let full_after = self.limit.refill * self.limit.burst.max(1);
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.at) < full_after);
        }
        let bucket = self
            .buckets
            .entry((namespace.to_string(), pod.to_string()))
            .or_insert(Bucket {
                tokens: burst,
                at: now,
            });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed / refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The sink the agent uses in a cluster: rate limit, then a bounded channel to the publisher.
#[derive(Debug)]
pub struct EventQueue {
    tx: mpsc::Sender<PodEvent>,
    limiter: Mutex<Limiter>,
    shared: Arc<Shared>,
}

impl EventQueue {
    /// A queue of `capacity` Events in front of `tx`'s receiver.
    pub fn new(tx: mpsc::Sender<PodEvent>, limit: RateLimit, shared: Arc<Shared>) -> EventQueue {
        EventQueue {
            tx,
            limiter: Mutex::new(Limiter::new(limit)),
            shared,
        }
    }
}

impl EventSink for EventQueue {
    fn emit(&self, event: PodEvent) {
        if event.namespace.is_empty() || event.pod.is_empty() {
            return;
        }
        let allowed = self
            .limiter
            .lock()
            .map(|mut l| l.allow(&event.namespace, &event.pod, Instant::now()))
            .unwrap_or(true);
        if !allowed {
            debug!(
                namespace = event.namespace,
                pod = event.pod,
                reason = event.reason.as_str(),
                "event rate-limited"
            );
            self.shared.metrics.event("rate_limited");
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(e)) => {
                debug!(
                    namespace = e.namespace,
                    pod = e.pod,
                    "event queue full; event dropped"
                );
                self.shared.metrics.event("dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.metrics.event("dropped");
            }
        }
    }
}

/// The object an Event is about: the pod.
pub fn pod_reference(event: &PodEvent) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(event.namespace.clone()),
        name: Some(event.pod.clone()),
        uid: (!event.pod_uid.is_empty()).then(|| event.pod_uid.clone()),
        ..Default::default()
    }
}

/// How long writing one Event may take. kube's client has no read timeout by default: an API
/// server (or a Service address) that accepts the connection and never answers would otherwise
/// hold up this Event and every later one, with nothing counted or logged.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(20);

/// Publishes queued Events until every sender is gone, each within `timeout`. Failures (and
/// timeouts) are counted and logged (the first one at warn, then at debug, so a missing RBAC
/// rule does not flood the log); the first Event written is logged at info.
pub async fn publish(
    mut rx: mpsc::Receiver<PodEvent>,
    recorder: Recorder,
    shared: Arc<Shared>,
    timeout: Duration,
) {
    let mut warned = false;
    let mut sent_one = false;
    while let Some(event) = rx.recv().await {
        let reference = pod_reference(&event);
        let k8s = Event {
            type_: event.reason.event_type(),
            reason: event.reason.as_str().into(),
            note: Some(event.message.chars().take(1000).collect()),
            action: event.reason.action().into(),
            secondary: None,
        };
        let outcome = match tokio::time::timeout(timeout, recorder.publish(&k8s, &reference)).await
        {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        };
        match outcome {
            Ok(()) => {
                shared.metrics.event("sent");
                if !sent_one {
                    info!(
                        namespace = event.namespace,
                        pod = event.pod,
                        reason = event.reason.as_str(),
                        "first Kubernetes Event written"
                    );
                    sent_one = true;
                }
            }
            Err(e) => {
                shared.metrics.event("failed");
                if warned {
                    debug!(namespace = event.namespace, pod = event.pod, error = %e, "cannot write event");
                } else {
                    warn!(namespace = event.namespace, pod = event.pod, error = %e, "cannot write event (further failures are logged at debug)");
                    warned = true;
                }
            }
        }
    }
}

/// The reporter: this controller, and the agent's pod (or node) as the instance.
pub fn reporter() -> Reporter {
    let instance = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("NODE_NAME"))
        .ok()
        .filter(|s| !s.is_empty());
    Reporter {
        controller: REPORTING_CONTROLLER.into(),
        instance,
    }
}

/// Starts the publisher on the current tokio runtime with `client` and returns the sink for
/// the agent plus the task (await it after the agent is gone to flush what is queued).
pub fn start(
    client: kube::Client,
    capacity: usize,
    limit: RateLimit,
    shared: Arc<Shared>,
) -> (Arc<EventQueue>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let recorder = Recorder::new(client, reporter());
    let task = tokio::spawn(publish(rx, recorder, shared.clone(), PUBLISH_TIMEOUT));
    (Arc::new(EventQueue::new(tx, limit, shared)), task)
}

/// Events in a cluster: the in-cluster configuration (service account token and
/// `KUBERNETES_SERVICE_HOST`) or `None` with one log line saying why Events are off. Must run
/// inside a tokio runtime.
pub fn in_cluster_client() -> Option<kube::Client> {
    let config = match kube::Config::incluster() {
        Ok(config) => config,
        Err(e) => {
            info!(reason = %e, "not running in a Kubernetes cluster: Kubernetes Events are off");
            return None;
        }
    };
    let cluster_url = config.cluster_url.clone();
    match kube::Client::try_from(config) {
        Ok(client) => {
            info!(server = %cluster_url, "Kubernetes Events on (in-cluster credentials)");
            Some(client)
        }
        Err(e) => {
            warn!(error = %e, "cannot build a Kubernetes client: Kubernetes Events are off");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_a_burst_then_one_per_refill() {
        let mut l = Limiter::new(RateLimit {
            burst: 2,
            refill: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        assert!(l.allow("ns", "a", t0));
        assert!(l.allow("ns", "a", t0));
        assert!(!l.allow("ns", "a", t0));
        // Another pod has its own bucket.
        assert!(l.allow("ns", "b", t0));
        assert!(!l.allow("ns", "a", t0 + Duration::from_secs(5)));
        assert!(l.allow("ns", "a", t0 + Duration::from_secs(11)));
        assert!(!l.allow("ns", "a", t0 + Duration::from_secs(12)));
    }

    #[test]
    fn queue_drops_and_counts_when_full_and_skips_unnamed_pods() {
        let shared = Arc::new(Shared::default());
        let (tx, mut rx) = mpsc::channel(1);
        let q = EventQueue::new(
            tx,
            RateLimit {
                burst: 100,
                refill: Duration::from_secs(1),
            },
            shared.clone(),
        );
        let ev = |pod: &str| PodEvent {
            namespace: "ns".into(),
            pod: pod.into(),
            pod_uid: String::new(),
            reason: EventReason::ScaledUp,
            message: "m".into(),
        };
        q.emit(ev(""));
        q.emit(ev("a"));
        q.emit(ev("b"));
        assert_eq!(rx.try_recv().unwrap().pod, "a");
        assert!(rx.try_recv().is_err());
        let text = shared.metrics.encode();
        assert!(
            text.contains("sidecar_governor_events_total{result=\"dropped\"} 1"),
            "{text}"
        );
    }
}
