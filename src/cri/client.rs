//! A CRI `RuntimeService` client over a Unix socket: a lazily connected tonic channel that
//! reconnects by itself (the runtime may restart), a timeout on every unary call (also sent to
//! the runtime as `grpc-timeout`), and [`CriError`]s that name the endpoint and the operation.
//! Async; callers on plain threads drive it through a runtime of their own
//! (see [`crate::discovery::cri`]).
//!
//! It makes only the read calls the agent uses — `Version`, `ListContainers`,
//! `ListPodSandbox`, `ContainerStatus` and `GetContainerEvents` — and nothing else: no client
//! for the rest of the service is generated into this crate (`build.rs` builds the server side
//! only, for tests), so nothing linked into the agent can create, start, stop or remove a
//! container or sandbox. The socket itself grants all of that to whoever can connect to it
//! (see the README's security section); the test driver `examples/cri_driver.rs` carries its
//! own lifecycle calls.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status, Streaming};
use tonic_prost::ProstCodec;
use tower::service_fn;

use super::first_existing;
use super::proto::{
    Container, ContainerEventResponse, ContainerFilter, ContainerState, ContainerStateValue,
    ContainerStatusRequest, ContainerStatusResponse, GetEventsRequest, ListContainersRequest,
    ListContainersResponse, ListPodSandboxRequest, ListPodSandboxResponse, PodSandbox,
    VersionRequest, VersionResponse,
};

/// The calls this client makes: every one reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadCall {
    Version,
    ListContainers,
    ListPodSandbox,
    ContainerStatus,
    GetContainerEvents,
}

impl ReadCall {
    /// Every call the client can make.
    pub const ALL: [ReadCall; 5] = [
        ReadCall::Version,
        ReadCall::ListContainers,
        ReadCall::ListPodSandbox,
        ReadCall::ContainerStatus,
        ReadCall::GetContainerEvents,
    ];

    /// The RPC's name in `runtime.v1.RuntimeService`.
    pub fn name(self) -> &'static str {
        match self {
            ReadCall::Version => "Version",
            ReadCall::ListContainers => "ListContainers",
            ReadCall::ListPodSandbox => "ListPodSandbox",
            ReadCall::ContainerStatus => "ContainerStatus",
            ReadCall::GetContainerEvents => "GetContainerEvents",
        }
    }

    /// The gRPC method path.
    fn path(self) -> PathAndQuery {
        PathAndQuery::from_static(match self {
            ReadCall::Version => "/runtime.v1.RuntimeService/Version",
            ReadCall::ListContainers => "/runtime.v1.RuntimeService/ListContainers",
            ReadCall::ListPodSandbox => "/runtime.v1.RuntimeService/ListPodSandbox",
            ReadCall::ContainerStatus => "/runtime.v1.RuntimeService/ContainerStatus",
            ReadCall::GetContainerEvents => "/runtime.v1.RuntimeService/GetContainerEvents",
        })
    }
}

/// Responses larger than this are refused (kubelet allows 16 MiB too; a node with a thousand
/// containers and their labels stays well below).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A CRI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The runtime answered with an error status (or the socket could not be reached: tonic
    /// reports connection failures as `unavailable`).
    #[error("CRI {op} on {endpoint}: {code:?}: {message}", code = .status.code(), message = .status.message())]
    Call {
        endpoint: String,
        op: &'static str,
        status: Box<Status>,
    },
    /// No answer within the call's timeout.
    #[error("CRI {op} on {endpoint}: no answer within {after:?}")]
    Timeout {
        endpoint: String,
        op: &'static str,
        after: Duration,
    },
}

impl CriError {
    /// The gRPC status code; `None` for a timeout.
    pub fn code(&self) -> Option<Code> {
        match self {
            CriError::Call { status, .. } => Some(status.code()),
            CriError::Timeout { .. } => None,
        }
    }

    /// The runtime does not offer this call (e.g. `GetContainerEvents` before containerd 1.7).
    pub fn is_unimplemented(&self) -> bool {
        self.code() == Some(Code::Unimplemented)
    }

    /// The container or sandbox asked about does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound)
    }
}

/// Which socket to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CriTarget {
    /// This socket.
    Socket(PathBuf),
    /// The first of these that exists when connecting (the runtime may appear later).
    FirstOf(Vec<PathBuf>),
}

impl CriTarget {
    /// The socket to dial now, if any exists (a fixed socket is returned as is).
    pub fn resolve(&self) -> Option<PathBuf> {
        match self {
            CriTarget::Socket(p) => Some(p.clone()),
            CriTarget::FirstOf(list) => first_existing(list).cloned(),
        }
    }

    /// For logs and errors.
    pub fn describe(&self) -> String {
        match self {
            CriTarget::Socket(p) => p.display().to_string(),
            CriTarget::FirstOf(list) => {
                let paths: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
                format!("first of [{}]", paths.join(", "))
            }
        }
    }
}

/// A CRI runtime client. Cheap to clone (the channel is shared).
#[derive(Debug, Clone)]
pub struct CriClient {
    endpoint: Arc<str>,
    inner: tonic::client::Grpc<Channel>,
    timeout: Duration,
}

impl CriClient {
    /// A client for `target` whose unary calls time out after `timeout`. Connects lazily (the
    /// first call dials) and redials after failures. Must be called inside a Tokio runtime.
    pub fn new(target: CriTarget, timeout: Duration) -> CriClient {
        let endpoint: Arc<str> = target.describe().into();
        let target = Arc::new(target);
        let connector = service_fn(move |_: Uri| {
            let target = Arc::clone(&target);
            async move {
                let path = target.resolve().ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no CRI socket: {}", target.describe()),
                    )
                })?;
                let stream = UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        // The URI is required by the API and ignored by the connector.
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_timeout(timeout)
            .connect_with_connector_lazy(connector);
        let inner = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        CriClient {
            endpoint,
            inner,
            timeout,
        }
    }

    /// The same client with another call timeout.
    pub fn with_timeout(&self, timeout: Duration) -> CriClient {
        CriClient {
            timeout,
            ..self.clone()
        }
    }

    /// The endpoint, as given.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// One unary read call, within the timeout.
    async fn unary<Q, R>(&self, call: ReadCall, message: Q) -> Result<R, CriError>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.inner.clone();
        let request = self.request(message);
        let work = async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("connect: {e}")))?;
            grpc.unary(request, call.path(), ProstCodec::default())
                .await
        };
        self.finish(call.name(), work).await
    }

    async fn finish<T, F>(&self, op: &'static str, call: F) -> Result<T, CriError>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // The runtime (or tonic) enforced the `grpc-timeout` we sent.
            Ok(Err(status))
                if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled)
                    && started.elapsed() >= self.timeout.mul_f32(0.9) =>
            {
                Err(CriError::Timeout {
                    endpoint: self.endpoint.to_string(),
                    op,
                    after: self.timeout,
                })
            }
            Ok(Err(status)) => Err(CriError::Call {
                endpoint: self.endpoint.to_string(),
                op,
                status: Box::new(status),
            }),
            Err(_) => Err(CriError::Timeout {
                endpoint: self.endpoint.to_string(),
                op,
                after: self.timeout,
            }),
        }
    }

    /// `Version`: the runtime's name and versions (also the cheapest "are you there?").
    pub async fn version(&self) -> Result<VersionResponse, CriError> {
        let request = VersionRequest {
            version: "v1".into(),
        };
        self.unary(ReadCall::Version, request).await
    }

    /// `ListContainers` with an optional filter.
    pub async fn list_containers(
        &self,
        filter: Option<ContainerFilter>,
    ) -> Result<Vec<Container>, CriError> {
        let response: ListContainersResponse = self
            .unary(ReadCall::ListContainers, ListContainersRequest { filter })
            .await?;
        Ok(response.containers)
    }

    /// `ListContainers` of the running containers only.
    pub async fn list_running_containers(&self) -> Result<Vec<Container>, CriError> {
        self.list_containers(Some(ContainerFilter {
            state: Some(ContainerStateValue {
                state: ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        }))
        .await
    }

    /// `ListPodSandbox`, every sandbox.
    pub async fn list_pod_sandboxes(&self) -> Result<Vec<PodSandbox>, CriError> {
        let response: ListPodSandboxResponse = self
            .unary(
                ReadCall::ListPodSandbox,
                ListPodSandboxRequest { filter: None },
            )
            .await?;
        Ok(response.items)
    }

    /// `ContainerStatus`; with `verbose` the runtime adds `info["info"]` (PID, OCI spec).
    pub async fn container_status(
        &self,
        container_id: &str,
        verbose: bool,
    ) -> Result<ContainerStatusResponse, CriError> {
        let request = ContainerStatusRequest {
            container_id: container_id.to_string(),
            verbose,
        };
        self.unary(ReadCall::ContainerStatus, request).await
    }

    /// `GetContainerEvents`: the runtime's event stream. No timeout: runtimes send the
    /// response headers only with the first event, so this may wait for as long as nothing
    /// happens on the node. Fails at once with `unimplemented` where it is not offered.
    pub async fn container_events(&self) -> Result<Streaming<ContainerEventResponse>, CriError> {
        let mut grpc = self.inner.clone();
        let call = ReadCall::GetContainerEvents;
        let opened = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("connect: {e}")))?;
            grpc.server_streaming(
                Request::new(GetEventsRequest {}),
                call.path(),
                ProstCodec::default(),
            )
            .await
        };
        match opened.await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(CriError::Call {
                endpoint: self.endpoint.to_string(),
                op: call.name(),
                status: Box::new(status),
            }),
        }
    }
}
