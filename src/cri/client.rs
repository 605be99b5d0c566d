//! A CRI `RuntimeService` client over a Unix socket: a lazily connected tonic channel that
//! reconnects by itself (the runtime may restart), a timeout on every unary call (also sent to
//! the runtime as `grpc-timeout`), and [`CriError`]s that name the endpoint and the operation.
//! Async; callers on plain threads drive it through a runtime of their own
//! (see [`crate::discovery::cri`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status, Streaming};
use tower::service_fn;

use super::first_existing;
use super::proto::runtime_service_client::RuntimeServiceClient;
use super::proto::{
    Container, ContainerConfig, ContainerEventResponse, ContainerFilter, ContainerState,
    ContainerStateValue, ContainerStatusRequest, ContainerStatusResponse, CreateContainerRequest,
    GetEventsRequest, ListContainersRequest, ListPodSandboxRequest, PodSandbox, PodSandboxConfig,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, VersionRequest, VersionResponse,
};

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
    inner: RuntimeServiceClient<Channel>,
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
        let inner = RuntimeServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        CriClient {
            endpoint,
            inner,
            timeout,
        }
    }

    /// The same client with another call timeout (for slow lifecycle calls).
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

    async fn call<T, F>(&self, op: &'static str, call: F) -> Result<T, CriError>
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
        let mut c = self.inner.clone();
        let request = self.request(VersionRequest {
            version: "v1".into(),
        });
        self.call("Version", c.version(request)).await
    }

    /// `ListContainers` with an optional filter.
    pub async fn list_containers(
        &self,
        filter: Option<ContainerFilter>,
    ) -> Result<Vec<Container>, CriError> {
        let mut c = self.inner.clone();
        let request = self.request(ListContainersRequest { filter });
        Ok(self
            .call("ListContainers", c.list_containers(request))
            .await?
            .containers)
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
        let mut c = self.inner.clone();
        let request = self.request(ListPodSandboxRequest { filter: None });
        Ok(self
            .call("ListPodSandbox", c.list_pod_sandbox(request))
            .await?
            .items)
    }

    /// `ContainerStatus`; with `verbose` the runtime adds `info["info"]` (PID, OCI spec).
    pub async fn container_status(
        &self,
        container_id: &str,
        verbose: bool,
    ) -> Result<ContainerStatusResponse, CriError> {
        let mut c = self.inner.clone();
        let request = self.request(ContainerStatusRequest {
            container_id: container_id.to_string(),
            verbose,
        });
        self.call("ContainerStatus", c.container_status(request))
            .await
    }

    /// `GetContainerEvents`: the runtime's event stream. No timeout: runtimes send the
    /// response headers only with the first event, so this may wait for as long as nothing
    /// happens on the node. Fails at once with `unimplemented` where it is not offered.
    pub async fn container_events(&self) -> Result<Streaming<ContainerEventResponse>, CriError> {
        let mut c = self.inner.clone();
        match c
            .get_container_events(Request::new(GetEventsRequest {}))
            .await
        {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(CriError::Call {
                endpoint: self.endpoint.to_string(),
                op: "GetContainerEvents",
                status: Box::new(status),
            }),
        }
    }

    /// `RunPodSandbox`: returns the sandbox ID.
    pub async fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String, CriError> {
        let mut c = self.inner.clone();
        let request = self.request(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        });
        Ok(self
            .call("RunPodSandbox", c.run_pod_sandbox(request))
            .await?
            .pod_sandbox_id)
    }

    /// `StopPodSandbox`.
    pub async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<(), CriError> {
        let mut c = self.inner.clone();
        let request = self.request(StopPodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
        });
        self.call("StopPodSandbox", c.stop_pod_sandbox(request))
            .await
            .map(drop)
    }

    /// `RemovePodSandbox`.
    pub async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<(), CriError> {
        let mut c = self.inner.clone();
        let request = self.request(RemovePodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
        });
        self.call("RemovePodSandbox", c.remove_pod_sandbox(request))
            .await
            .map(drop)
    }

    /// `CreateContainer` in a sandbox: returns the container ID.
    pub async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> Result<String, CriError> {
        let mut c = self.inner.clone();
        let request = self.request(CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        });
        Ok(self
            .call("CreateContainer", c.create_container(request))
            .await?
            .container_id)
    }

    /// `StartContainer`.
    pub async fn start_container(&self, container_id: &str) -> Result<(), CriError> {
        let mut c = self.inner.clone();
        let request = self.request(StartContainerRequest {
            container_id: container_id.to_string(),
        });
        self.call("StartContainer", c.start_container(request))
            .await
            .map(drop)
    }

    /// `StopContainer` with a grace period in seconds (0: kill at once).
    pub async fn stop_container(&self, container_id: &str, grace: i64) -> Result<(), CriError> {
        let mut c = self.inner.clone();
        let request = self.request(StopContainerRequest {
            container_id: container_id.to_string(),
            timeout: grace,
        });
        self.call("StopContainer", c.stop_container(request))
            .await
            .map(drop)
    }

    /// `RemoveContainer`.
    pub async fn remove_container(&self, container_id: &str) -> Result<(), CriError> {
        let mut c = self.inner.clone();
        let request = self.request(RemoveContainerRequest {
            container_id: container_id.to_string(),
        });
        self.call("RemoveContainer", c.remove_container(request))
            .await
            .map(drop)
    }
}
