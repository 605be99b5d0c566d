//! A tiny stand-in for kubelet's CRI calls, used by the `cri` VM scenario
//! (`scripts/vm/scenarios/cri.sh`) where no `crictl` exists (Debian bookworm has no cri-tools).
//! It reads through the crate's CRI client (which makes read calls only) and makes the lifecycle
//! calls (`RunPodSandbox`, `CreateContainer`, `StartContainer`, `StopContainer`,
//! `RemoveContainer`, `StopPodSandbox`, `RemovePodSandbox`) with its own [`Lifecycle`] client
//! below: they are test tooling, never part of the agent. It creates pods
//! the way kubelet does with the cgroupfs driver: a host-network sandbox with
//! `cgroup_parent = /kubepods/<qos>/pod<uid>`, kubelet's labels on sandbox and containers,
//! containers with CPU limits as `cpu_quota`/`cpu_period`.
//!
//! ```text
//! cri_driver [--endpoint SOCK] [--timeout SECS] wait [SECONDS]
//! cri_driver ... pod-up --name N --namespace NS --uid UID [--qos burstable]
//!                [--annotation K=V]... [--image IMG]
//!                --container 'NAME|CPU_LIMIT_MILLIS|COMMAND ARGS...'... [--mount HOST:CONTAINER[:ro]]...
//!                [--env K=V]... [--host-pid] [--drop-all-caps] [--readonly-rootfs]
//!                [--run-as-user UID] [--no-new-privs] [--seccomp-runtime-default]
//!                [--sandbox ID [--attempt N]]
//!     prints "POD <sandbox id>" and, per container,
//!     "CONTAINER <name> <id> <started_at_unix_ms> <uptime_ms_after_start>"
//!     With --sandbox the containers go into that running sandbox (made by an earlier pod-up
//!     with the same name, namespace, uid, qos and annotations) as kubelet restarts a container:
//!     a new container with `metadata.attempt` N (kubelet's restart count; the old one may stay,
//!     exited, as kubelet leaves it until garbage collection).
//! cri_driver ... stop-container ID [--grace SECS]   (SIGTERM, SIGKILL after SECS; prints the ms)
//! cri_driver ... rm-container ID
//! cri_driver ... pod-down SANDBOX_ID
//! cri_driver ... ps
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sidecar_governor::cri::client::{CriClient, CriTarget};
use sidecar_governor::cri::proto::{
    Capability, ContainerConfig, ContainerMetadata, CreateContainerRequest,
    CreateContainerResponse, ImageSpec, Int64Value, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemoveContainerRequest, RemoveContainerResponse, RemovePodSandboxRequest,
    RemovePodSandboxResponse, RunPodSandboxRequest, RunPodSandboxResponse, SecurityProfile,
    StartContainerRequest, StartContainerResponse, StopContainerRequest, StopContainerResponse,
    StopPodSandboxRequest, StopPodSandboxResponse,
};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};

/// The CRI lifecycle calls kubelet makes, over a channel of their own (the library's
/// `CriClient` makes read calls only).
struct Lifecycle {
    grpc: tonic::client::Grpc<Channel>,
    timeout: Duration,
}

impl Lifecycle {
    fn new(socket: PathBuf, timeout: Duration) -> Lifecycle {
        let connector = tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        // The URI is required by the API and ignored by the connector.
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_timeout(timeout)
            .connect_with_connector_lazy(connector);
        Lifecycle {
            grpc: tonic::client::Grpc::new(channel),
            timeout,
        }
    }

    async fn call<Q, R>(&self, method: &'static str, message: Q) -> anyhow::Result<R>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        let path = PathAndQuery::try_from(format!("/runtime.v1.RuntimeService/{method}"))?;
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        let work = async move {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
            grpc.unary(request, path, tonic_prost::ProstCodec::default())
                .await
        };
        let response = tokio::time::timeout(self.timeout, work)
            .await
            .with_context(|| format!("{method}: timed out after {:?}", self.timeout))?
            .with_context(|| method.to_string())?;
        Ok(response.into_inner())
    }

    async fn run_pod_sandbox(&self, config: PodSandboxConfig) -> anyhow::Result<String> {
        let request = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let response: RunPodSandboxResponse = self.call("RunPodSandbox", request).await?;
        Ok(response.pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> anyhow::Result<()> {
        let request = StopPodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
        };
        let _: StopPodSandboxResponse = self.call("StopPodSandbox", request).await?;
        Ok(())
    }

    async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> anyhow::Result<()> {
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
        };
        let _: RemovePodSandboxResponse = self.call("RemovePodSandbox", request).await?;
        Ok(())
    }

    async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> anyhow::Result<String> {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let response: CreateContainerResponse = self.call("CreateContainer", request).await?;
        Ok(response.container_id)
    }

    async fn start_container(&self, container_id: &str) -> anyhow::Result<()> {
        let request = StartContainerRequest {
            container_id: container_id.to_string(),
        };
        let _: StartContainerResponse = self.call("StartContainer", request).await?;
        Ok(())
    }

    /// `StopContainer` with a grace period in seconds (0: kill at once).
    async fn stop_container(&self, container_id: &str, grace: i64) -> anyhow::Result<()> {
        let request = StopContainerRequest {
            container_id: container_id.to_string(),
            timeout: grace,
        };
        let _: StopContainerResponse = self.call("StopContainer", request).await?;
        Ok(())
    }

    async fn remove_container(&self, container_id: &str) -> anyhow::Result<()> {
        let request = RemoveContainerRequest {
            container_id: container_id.to_string(),
        };
        let _: RemoveContainerResponse = self.call("RemoveContainer", request).await?;
        Ok(())
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "cri_driver",
    about = "Create and remove pods through CRI, as kubelet would"
)]
struct Cli {
    /// The runtime's CRI socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    endpoint: String,
    /// Per-call timeout in seconds (sandbox and container creation are slow under TCG).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Cmd {
    /// Wait until the runtime answers `Version` (up to SECONDS).
    Wait {
        #[arg(default_value_t = 60)]
        seconds: u64,
    },
    /// Run a pod sandbox and create and start its containers.
    PodUp {
        #[arg(long)]
        name: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        uid: String,
        #[arg(long, default_value = "burstable")]
        qos: String,
        /// Pod annotation KEY=VALUE (repeatable).
        #[arg(long = "annotation")]
        annotations: Vec<String>,
        #[arg(long, default_value = "registry.local/sg-test:1")]
        image: String,
        /// 'NAME|CPU_LIMIT_MILLIS|COMMAND ARGS...' (repeatable, in start order).
        #[arg(long = "container", required = true)]
        containers: Vec<String>,
        /// HOST:CONTAINER[:ro] bind mount for every container (repeatable).
        #[arg(long = "mount")]
        mounts: Vec<String>,
        /// Create the containers in this running sandbox instead of a new one (a restart).
        #[arg(long)]
        sandbox: Option<String>,
        /// The containers' `metadata.attempt` (kubelet's restart count).
        #[arg(long, default_value_t = 0)]
        attempt: u32,
        #[command(flatten)]
        security: Security,
    },
    /// Stop one container as kubelet does: SIGTERM, SIGKILL after the grace period.
    StopContainer {
        id: String,
        #[arg(long, default_value_t = 30)]
        grace: i64,
    },
    /// Stop (at once) and remove one container.
    RmContainer { id: String },
    /// Stop and remove every container of a sandbox, then the sandbox.
    PodDown { sandbox_id: String },
    /// List running containers.
    Ps,
}

/// The DaemonSet-style options (applied to every container of the pod).
#[derive(Debug, Clone, clap::Args)]
struct Security {
    /// Environment variable K=V (repeatable).
    #[arg(long = "env")]
    envs: Vec<String>,
    /// The node's PID namespace (hostPID: true) for the sandbox and the containers.
    #[arg(long)]
    host_pid: bool,
    /// capabilities.drop: [ALL]
    #[arg(long)]
    drop_all_caps: bool,
    /// readOnlyRootFilesystem: true
    #[arg(long)]
    readonly_rootfs: bool,
    /// runAsUser (and runAsGroup, the same number).
    #[arg(long)]
    run_as_user: Option<i64>,
    /// allowPrivilegeEscalation: false
    #[arg(long)]
    no_new_privs: bool,
    /// seccompProfile: RuntimeDefault
    #[arg(long)]
    seccomp_runtime_default: bool,
}

fn kubelet_labels(namespace: &str, pod: &str, uid: &str) -> HashMap<String, String> {
    [
        ("io.kubernetes.pod.namespace", namespace),
        ("io.kubernetes.pod.name", pod),
        ("io.kubernetes.pod.uid", uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn namespaces(host_pid: bool) -> Option<NamespaceOption> {
    Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: if host_pid {
            NamespaceMode::Node as i32
        } else {
            NamespaceMode::Container as i32
        },
        ipc: NamespaceMode::Pod as i32,
        target_id: String::new(),
    })
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * 1000.0) as u64)
}

struct ContainerSpec {
    name: String,
    cpu_limit_millis: i64,
    command: Vec<String>,
}

fn parse_container(spec: &str) -> anyhow::Result<ContainerSpec> {
    let mut parts = spec.splitn(3, '|');
    let (Some(name), Some(cpu), Some(command)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("--container {spec:?}: want 'NAME|CPU_LIMIT_MILLIS|COMMAND ARGS...'");
    };
    Ok(ContainerSpec {
        name: name.to_string(),
        cpu_limit_millis: cpu
            .parse()
            .with_context(|| format!("--container {spec:?}: CPU limit"))?,
        command: command.split_whitespace().map(str::to_string).collect(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn pod_up(
    client: &CriClient,
    life: &Lifecycle,
    name: &str,
    namespace: &str,
    uid: &str,
    qos: &str,
    annotations: &[String],
    image: &str,
    containers: &[String],
    mounts: &[String],
    existing_sandbox: Option<&str>,
    attempt: u32,
    security: &Security,
) -> anyhow::Result<()> {
    let specs = containers
        .iter()
        .map(|c| parse_container(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut annotation_map = HashMap::new();
    for a in annotations {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("--annotation {a:?}: want KEY=VALUE"))?;
        annotation_map.insert(k.to_string(), v.to_string());
    }
    let mounts = mounts
        .iter()
        .map(|m| {
            let (host, container) = m
                .split_once(':')
                .with_context(|| format!("--mount {m:?}: want HOST:CONTAINER[:ro]"))?;
            let (container, readonly) = match container.strip_suffix(":ro") {
                Some(c) => (c, true),
                None => (container, false),
            };
            Ok(Mount {
                host_path: host.to_string(),
                container_path: container.to_string(),
                readonly,
                ..Default::default()
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let envs = security
        .envs
        .iter()
        .map(|e| {
            let (key, value) = e
                .split_once('=')
                .with_context(|| format!("--env {e:?}: want K=V"))?;
            Ok(KeyValue {
                key: key.to_string(),
                value: value.to_string(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let log_directory = format!("/var/log/pods/{namespace}_{name}_{uid}");
    std::fs::create_dir_all(&log_directory).with_context(|| format!("mkdir {log_directory}"))?;
    let cgroup_parent = if qos == "guaranteed" {
        format!("/kubepods/pod{uid}")
    } else {
        format!("/kubepods/{qos}/pod{uid}")
    };
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            attempt: 0,
        }),
        hostname: String::new(),
        log_directory: log_directory.clone(),
        dns_config: None,
        labels: kubelet_labels(namespace, name, uid),
        annotations: annotation_map,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent,
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: namespaces(security.host_pid),
                ..Default::default()
            }),
            sysctls: HashMap::new(),
        }),
    };
    let t0 = Instant::now();
    let sandbox_id = match existing_sandbox {
        Some(id) => id.to_string(),
        None => {
            let id = life
                .run_pod_sandbox(sandbox_config.clone())
                .await
                .context("RunPodSandbox")?;
            eprintln!("cri_driver: sandbox {name} ready in {:?}", t0.elapsed());
            id
        }
    };
    println!("POD {sandbox_id}");
    for spec in specs {
        let mut labels = kubelet_labels(namespace, name, uid);
        labels.insert("io.kubernetes.container.name".into(), spec.name.clone());
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.name.clone(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                annotations: HashMap::new(),
            }),
            command: spec.command.clone(),
            labels,
            log_path: format!("{}/{attempt}.log", spec.name),
            mounts: mounts.clone(),
            envs: envs.clone(),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    cpu_period: if spec.cpu_limit_millis > 0 {
                        100_000
                    } else {
                        0
                    },
                    cpu_quota: spec.cpu_limit_millis * 100,
                    cpu_shares: 102,
                    ..Default::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: namespaces(security.host_pid),
                    capabilities: security.drop_all_caps.then(|| Capability {
                        add_capabilities: Vec::new(),
                        drop_capabilities: vec!["ALL".to_string()],
                    }),
                    readonly_rootfs: security.readonly_rootfs,
                    run_as_user: security.run_as_user.map(|value| Int64Value { value }),
                    run_as_group: security.run_as_user.map(|value| Int64Value { value }),
                    no_new_privs: security.no_new_privs,
                    seccomp: security
                        .seccomp_runtime_default
                        .then(SecurityProfile::default),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let id = life
            .create_container(&sandbox_id, config, sandbox_config.clone())
            .await
            .with_context(|| format!("CreateContainer {}", spec.name))?;
        life.start_container(&id)
            .await
            .with_context(|| format!("StartContainer {}", spec.name))?;
        let after = uptime_ms();
        let started = client
            .container_status(&id, false)
            .await
            .ok()
            .and_then(|s| s.status)
            .map_or(0, |s| s.started_at / 1_000_000);
        println!("CONTAINER {} {id} {started} {after}", spec.name);
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let path = cli
        .endpoint
        .strip_prefix("unix://")
        .unwrap_or(&cli.endpoint)
        .to_string();
    let client = CriClient::new(
        CriTarget::Socket(PathBuf::from(&path)),
        Duration::from_secs(cli.timeout),
    );
    let life = Lifecycle::new(PathBuf::from(&path), Duration::from_secs(cli.timeout));
    match cli.command {
        Cmd::Wait { seconds } => {
            let quick = client.with_timeout(Duration::from_secs(2));
            let deadline = Instant::now() + Duration::from_secs(seconds);
            loop {
                match quick.version().await {
                    Ok(v) => {
                        println!(
                            "{} {} (CRI {})",
                            v.runtime_name, v.runtime_version, v.runtime_api_version
                        );
                        return Ok(());
                    }
                    Err(e) if Instant::now() >= deadline => return Err(e.into()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
        Cmd::PodUp {
            name,
            namespace,
            uid,
            qos,
            annotations,
            image,
            containers,
            mounts,
            sandbox,
            attempt,
            security,
        } => {
            pod_up(
                &client,
                &life,
                &name,
                &namespace,
                &uid,
                &qos,
                &annotations,
                &image,
                &containers,
                &mounts,
                sandbox.as_deref(),
                attempt,
                &security,
            )
            .await
        }
        Cmd::StopContainer { id, grace } => {
            let t0 = Instant::now();
            life.stop_container(&id, grace).await?;
            println!("STOPPED {id} {}", t0.elapsed().as_millis());
            Ok(())
        }
        Cmd::RmContainer { id } => {
            life.stop_container(&id, 0).await?;
            life.remove_container(&id).await?;
            Ok(())
        }
        Cmd::PodDown { sandbox_id } => {
            let all = client.list_containers(None).await?;
            for c in all.iter().filter(|c| c.pod_sandbox_id == sandbox_id) {
                life.stop_container(&c.id, 0).await?;
                life.remove_container(&c.id).await?;
            }
            life.stop_pod_sandbox(&sandbox_id).await?;
            life.remove_pod_sandbox(&sandbox_id).await?;
            Ok(())
        }
        Cmd::Ps => {
            for c in client.list_running_containers().await? {
                let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
                println!(
                    "{} {} {}/{} sandbox={}",
                    &c.id[..c.id.len().min(13)],
                    label("io.kubernetes.container.name"),
                    label("io.kubernetes.pod.namespace"),
                    label("io.kubernetes.pod.name"),
                    &c.pod_sandbox_id[..c.pod_sandbox_id.len().min(13)]
                );
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cri_driver: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cri_driver: {e:#}");
            ExitCode::FAILURE
        }
    }
}
