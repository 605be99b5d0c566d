//! The `sidecar-governor` binary: command-line parsing (every flag also an environment
//! variable), logging set-up, and the wiring of the library's parts into `run`, `discover`,
//! `check-config`, `simulate` and `restore`. Errors are reported here, at the edge, with
//! `anyhow`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info, warn};

use sidecar_governor::actuator::{RestoreReport, read_cpu_max};
use sidecar_governor::agent::DiscoveryDebug;
use sidecar_governor::agent::{Agent, Command, restore_all};
use sidecar_governor::cri::client::CriTarget;
use sidecar_governor::cri::{default_endpoints, first_existing};
use sidecar_governor::discovery::Proxy;
use sidecar_governor::discovery::auto::AutoDiscovery;
use sidecar_governor::discovery::cri::CriDiscovery;
use sidecar_governor::discovery::procfs::ProcfsDiscovery;
use sidecar_governor::events;
use sidecar_governor::journal::{Journal, lock_state_dir};
use sidecar_governor::policy::{DEFAULT_POLICY_YAML, Policy, PolicyError};
use sidecar_governor::quantity::format_cpu_millis;
use sidecar_governor::reload::{self, ReloadTiming, Reloader};
use sidecar_governor::sampler::{ProxyFiles, cpu_observation};
use sidecar_governor::server::{Limits, Shared, admin_router, auth, public_router, serve};
use sidecar_governor::wake::StallWatch;

#[derive(Debug, Parser)]
#[command(
    name = "sidecar-governor",
    version,
    about = "Right-sizes service-mesh sidecar proxies through cgroup v2"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "SG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DiscoveryMode {
    /// The container runtime (CRI) where its socket answers, else procfs (back to CRI when it
    /// answers again).
    Auto,
    /// Scan /proc for proxy processes.
    Procfs,
    /// The container runtime's CRI API (its socket must exist at start; procfs while it does
    /// not answer).
    Cri,
}

/// Whether Kubernetes Events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Events {
    /// On when in-cluster credentials are found, else off (one log line says so).
    Auto,
    /// Never.
    Off,
}

/// Whether /metrics asks for a Kubernetes token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MetricsAuthMode {
    /// Open to whoever reaches the port (the NetworkPolicy decides who does).
    Off,
    /// A bearer token reviewed by the API server, allowed `get` on /metrics.
    Kubernetes,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// Where the container runtime's CRI socket is (for `--discovery auto|cri`).
#[derive(Debug, clap::Args)]
struct CriArgs {
    /// The CRI socket (`/path` or `unix:///path`). Default: the first that exists of
    /// /run/containerd/containerd.sock, /var/run/crio/crio.sock, /run/crio/crio.sock under
    /// --host-root.
    #[arg(long, env = "SG_CRI_ENDPOINT")]
    cri_endpoint: Option<String>,
    /// Where the host's filesystem is mounted, for the default CRI sockets (a DaemonSet mounts
    /// the host's /run under e.g. /host).
    #[arg(long, env = "SG_HOST_ROOT")]
    host_root: Option<PathBuf>,
    /// Timeout of every CRI call and of a whole CRI discovery pass (`500ms`, `2s`).
    #[arg(long, env = "SG_CRI_TIMEOUT", default_value = "2s", value_parser = parse_duration_arg)]
    cri_timeout: Duration,
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    sidecar_governor::quantity::parse_duration(text).map_err(|e| e.to_string())
}

fn parse_bounded_duration(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_duration_arg(text)?;
    if d < min || d > max {
        return Err(format!(
            "`{text}` is out of range: must be between {} and {}",
            sidecar_governor::quantity::format_duration(min),
            sidecar_governor::quantity::format_duration(max)
        ));
    }
    Ok(d)
}

fn parse_header_timeout(text: &str) -> Result<Duration, String> {
    parse_bounded_duration(text, Duration::from_millis(100), Duration::from_secs(60))
}

fn parse_idle_timeout(text: &str) -> Result<Duration, String> {
    parse_bounded_duration(text, Duration::from_secs(1), Duration::from_secs(600))
}

fn parse_cpu_arg(text: &str) -> Result<u64, String> {
    sidecar_governor::quantity::parse_cpu_millis(text).map_err(|e| e.to_string())
}

fn parse_bytes_arg(text: &str) -> Result<u64, String> {
    sidecar_governor::quantity::parse_bytes(text).map_err(|e| e.to_string())
}

/// The admin listener's connection cap (`status` and a port-forward need one or two).
const ADMIN_MAX_CONNECTIONS: usize = 8;

/// While CRI does not answer, it is probed this often.
const CRI_PROBE_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
struct Roots {
    /// The cgroup v2 mount.
    #[arg(long, env = "SG_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// The procfs mount (the host's, with hostPID).
    #[arg(long, env = "SG_PROC_ROOT", default_value = "/proc")]
    proc_root: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Print a live table of the proxies a running agent governs (from its /debug/proxies).
    Status {
        /// The agent's HTTP endpoint.
        #[arg(long, env = "SG_ENDPOINT", default_value = sidecar_governor::status::DEFAULT_ENDPOINT)]
        endpoint: String,
        /// Print the raw JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Look once: every proxy found, its identity, cgroup, cpu.max and usage.
    Discover {
        #[command(flatten)]
        roots: Roots,
        /// Policy file for the match rules (defaults otherwise).
        #[arg(long, env = "SG_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// How proxies are found.
        #[arg(long, env = "SG_DISCOVERY", value_enum, default_value_t = DiscoveryMode::Auto)]
        discovery: DiscoveryMode,
        #[command(flatten)]
        cri: CriArgs,
    },
    /// Validate a policy file: exit 0 when valid, else print each problem by field.
    CheckConfig {
        /// The policy file.
        file: PathBuf,
    },
    /// Replay usage traces offline through the controller and a model of the kernel: what a
    /// policy would reserve, throttle and stall, per proxy and in total.
    Simulate {
        /// Policy file (YAML). Without it the built-in defaults apply.
        #[arg(long, env = "SG_CONFIG")]
        config: Option<PathBuf>,
        /// The trace: CSV with `time,proxy,cpu_millicores,memory_bytes` (see the README).
        #[arg(long)]
        trace: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Original CPU limit of proxies whose trace rows give none (`2`, `500m`).
        #[arg(long, default_value = "2", value_parser = parse_cpu_arg)]
        cpu_limit: u64,
        /// Original memory limit of proxies whose trace rows give none (`1Gi`, `512Mi`).
        #[arg(long, default_value = "1Gi", value_parser = parse_bytes_arg)]
        memory_limit: u64,
        /// Chart this proxy's demand against its limits over time (with --chart-out).
        #[arg(long, requires = "chart_out")]
        chart: Option<String>,
        /// Where the chart goes (SVG).
        #[arg(long, requires = "chart")]
        chart_out: Option<PathBuf>,
    },
    /// Put back every original limit in the journal (after a crash, before uninstalling).
    Restore {
        #[arg(long, env = "SG_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
        cgroup_root: PathBuf,
        #[arg(
            long,
            env = "SG_STATE_DIR",
            default_value = "/var/lib/sidecar-governor"
        )]
        state_dir: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn load_policy(config: Option<&Path>) -> Result<Policy, PolicyError> {
    match config {
        Some(path) => Policy::load(path),
        None => Policy::from_yaml(DEFAULT_POLICY_YAML),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Cmd::Run(args) => run(args),
        Cmd::Status { endpoint, json } => status(&endpoint, json),
        Cmd::Discover {
            roots,
            config,
            output,
            discovery,
            cri,
        } => discover(&roots, config.as_deref(), output, discovery, &cri),
        Cmd::CheckConfig { file } => return check_config(&file),
        Cmd::Simulate {
            config,
            trace,
            output,
            cpu_limit,
            memory_limit,
            chart,
            chart_out,
        } => simulate(SimulateArgs {
            config,
            trace,
            output,
            cpu_limit,
            memory_limit,
            chart: chart.zip(chart_out),
        }),
        Cmd::Restore {
            cgroup_root,
            state_dir,
        } => restore(&cgroup_root, &state_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("sidecar-governor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path) -> ExitCode {
    match Policy::load(file) {
        Ok(policy) => {
            println!("{}: valid ({})", file.display(), policy.summary());
            ExitCode::SUCCESS
        }
        Err(e @ PolicyError::Read { .. }) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{}: invalid policy", file.display());
            for problem in e.field_errors() {
                eprintln!("  {problem}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `run`'s flags.
#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Policy file (YAML). Without it the built-in defaults apply.
    #[arg(long, env = "SG_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    roots: Roots,
    /// Where the journal of original limits is kept (must survive restarts).
    #[arg(
        long,
        env = "SG_STATE_DIR",
        default_value = "/var/lib/sidecar-governor"
    )]
    state_dir: PathBuf,
    /// Address of the public listener: /metrics, /healthz, /readyz.
    #[arg(long, env = "SG_LISTEN", default_value = "0.0.0.0:9477")]
    listen: SocketAddr,
    /// Address of the admin listener: /debug/proxies (pod identities, host PIDs, cgroup
    /// paths). Loopback by default: reach it with `kubectl port-forward` or `kubectl exec`.
    #[arg(long, env = "SG_ADMIN_LISTEN", default_value = "127.0.0.1:9478")]
    admin_listen: SocketAddr,
    /// A request's head must arrive within this (also closes kept-alive connections that send
    /// nothing): 100ms..60s.
    #[arg(long, env = "SG_HTTP_HEADER_TIMEOUT", default_value = "5s", value_parser = parse_header_timeout)]
    http_header_timeout: Duration,
    /// A connection on which nothing moves for this long is closed: 1s..10m.
    #[arg(long, env = "SG_HTTP_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_idle_timeout)]
    http_idle_timeout: Duration,
    /// Connections the public listener holds open at once (beyond: closed at once): 1..4096.
    /// The admin listener holds at most 8.
    #[arg(long, env = "SG_HTTP_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    http_max_connections: u16,
    /// Authenticate and authorise /metrics with the API server (TokenReview, then
    /// SubjectAccessReview of `get` on the non-resource URL /metrics).
    #[arg(long, env = "SG_METRICS_AUTH", value_enum, default_value_t = MetricsAuthMode::Off)]
    metrics_auth: MetricsAuthMode,
    /// How long a token's review answer is reused: 1s..10m.
    #[arg(long, env = "SG_METRICS_AUTH_CACHE_TTL", default_value = "60s", value_parser = parse_duration_arg)]
    metrics_auth_cache_ttl: Duration,
    /// How many tokens' answers are kept (the oldest go first): 1..65536.
    #[arg(long, env = "SG_METRICS_AUTH_CACHE_SIZE", default_value_t = 1024)]
    metrics_auth_cache_size: usize,
    /// How proxies are found.
    #[arg(long, env = "SG_DISCOVERY", value_enum, default_value_t = DiscoveryMode::Auto)]
    discovery: DiscoveryMode,
    #[command(flatten)]
    cri: CriArgs,
    /// Decide and export, write nothing (overrides the policy's dryRun).
    #[arg(long, env = "SG_DRY_RUN")]
    dry_run: bool,
    /// Stop after this many ticks (benchmarks and tests).
    #[arg(long, hide = true)]
    max_ticks: Option<u64>,
    /// Kubernetes Events on governed pods.
    #[arg(long, env = "SG_EVENTS", value_enum, default_value_t = Events::Auto)]
    events: Events,
    /// Re-read the policy file this often even without a change notification (seconds).
    #[arg(long, env = "SG_CONFIG_POLL_SECONDS", default_value_t = 30)]
    config_poll_seconds: u64,
}

/// The discovery source for `mode`: procfs alone, or CRI with the procfs fallback (`auto`
/// dials the first default socket that exists whenever it connects; `cri` insists on a socket
/// being there at start).
fn make_discovery(
    mode: DiscoveryMode,
    roots: &Roots,
    cri: &CriArgs,
) -> anyhow::Result<Box<dyn DiscoveryDebug>> {
    let procfs = ProcfsDiscovery::new(&roots.proc_root, &roots.cgroup_root);
    if mode == DiscoveryMode::Procfs {
        return Ok(Box::new(procfs));
    }
    let target = match &cri.cri_endpoint {
        Some(endpoint) => {
            let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
            if path.is_empty() || !path.starts_with('/') {
                bail!("--cri-endpoint {endpoint}: want an absolute socket path (or unix:///path)");
            }
            CriTarget::Socket(PathBuf::from(path))
        }
        None => {
            let list = default_endpoints(cri.host_root.as_deref());
            if mode == DiscoveryMode::Cri && first_existing(&list).is_none() {
                bail!(
                    "--discovery cri: no CRI socket at {} (give --cri-endpoint)",
                    list.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            CriTarget::FirstOf(list)
        }
    };
    if mode == DiscoveryMode::Cri
        && let CriTarget::Socket(path) = &target
        && !path.exists()
    {
        warn!(endpoint = %path.display(), "CRI socket not there (yet); procfs until it answers");
    }
    let source = CriDiscovery::new(
        target,
        &roots.proc_root,
        &roots.cgroup_root,
        cri.cri_timeout,
    )?;
    Ok(Box::new(AutoDiscovery::new(
        source,
        procfs,
        CRI_PROBE_EVERY,
    )))
}

fn check_cgroup_root(root: &Path) -> anyhow::Result<()> {
    if !root.join("cgroup.controllers").is_file() {
        let hint = if root.join("cpu").is_dir() || root.join("cpu,cpuacct").is_dir() {
            " (it looks like cgroup v1; sidecar-governor needs the unified cgroup v2 hierarchy)"
        } else {
            ""
        };
        bail!(
            "{} is not a cgroup v2 mount: no cgroup.controllers{hint}",
            root.display()
        );
    }
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            return soft;
        }
        return hard;
    }
    soft
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let loaded = match args.config.as_deref() {
        Some(path) => reload::load(path),
        None => Policy::from_yaml(DEFAULT_POLICY_YAML)
            .map(|p| (p, reload::policy_hash(DEFAULT_POLICY_YAML))),
    }
    .context("refusing to start with an invalid policy");
    let (policy, policy_hash) = match loaded {
        Ok(v) => v,
        Err(e) => return Err(restore_before_refusing(&args, e)),
    };
    // Each proxy holds up to 7 cgroup descriptors (design notes §9): raise the soft
    // open-file limit to the hard one and hold descriptors only within it.
    let open_files = raise_open_file_limit();
    sidecar_governor::cgroup::set_held_budget(open_files.saturating_sub(256) as usize);
    check_cgroup_root(&args.roots.cgroup_root)?;
    let _lock = lock_state_dir(&args.state_dir)?;
    let journal = Journal::load(&args.state_dir)?;
    let discovery = make_discovery(args.discovery, &args.roots, &args.cri)?;
    let shared = Arc::new(Shared::default());
    info!(
        policy = policy.summary(),
        config = ?args.config,
        cgroup_root = %args.roots.cgroup_root.display(),
        proc_root = %args.roots.proc_root.display(),
        state_dir = %args.state_dir.display(),
        journaled = journal.len(),
        discovery = ?args.discovery,
        dry_run = args.dry_run || policy.dry_run,
        "starting"
    );
    let mut agent = Agent::new(
        args.roots.cgroup_root.clone(),
        policy,
        args.dry_run,
        discovery,
        journal,
        shared.clone(),
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("listen on {}", args.listen))?;
    let admin_listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.admin_listen))
        .with_context(|| format!("listen on {} (--admin-listen)", args.admin_listen))?;
    let metrics_auth = match args.metrics_auth {
        MetricsAuthMode::Off => None,
        MetricsAuthMode::Kubernetes => {
            let config = auth::CacheConfig {
                ttl: args.metrics_auth_cache_ttl,
                capacity: args.metrics_auth_cache_size,
            }
            .validated()
            .map_err(anyhow::Error::msg)?;
            let _guard = runtime.enter();
            let kube_config = kube::Config::incluster()
                .context("--metrics-auth kubernetes needs in-cluster credentials")?;
            let client = kube::Client::try_from(kube_config)
                .context("--metrics-auth kubernetes: build a Kubernetes client")?;
            Some(Arc::new(auth::MetricsAuth::new(client, config)))
        }
    };
    let limits = Limits {
        header_timeout: args.http_header_timeout,
        idle_timeout: args.http_idle_timeout,
        max_connections: usize::from(args.http_max_connections),
    };
    let admin_limits = Limits {
        max_connections: ADMIN_MAX_CONNECTIONS,
        ..limits
    };
    info!(
        listen = %args.listen,
        admin_listen = %args.admin_listen,
        metrics_auth = ?args.metrics_auth,
        header_timeout_ms = limits.header_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        max_connections = limits.max_connections,
        "serving /metrics /healthz /readyz; /debug/proxies on the admin listener"
    );

    let (commands, inbox) = std::sync::mpsc::channel();
    // Wake-ups between ticks: PSI triggers on the proxies' cpu.pressure (src/wake.rs).
    let wake = agent.policy().cpu.wake_on_stall;
    let wake_tx = commands.clone();
    match StallWatch::start(wake.stall, wake.window, move |token| {
        wake_tx.send(Command::Wake(token)).is_ok()
    }) {
        Ok(watch) => agent.set_stall_watch(watch),
        Err(e) => warn!(error = %e, "cannot start the stall watch; proxies grow on ticks only"),
    }
    // Hot reload of the policy file (a ConfigMap volume in a cluster).
    let reloader = match &args.config {
        Some(path) => {
            let reloader = Reloader::new(
                path.clone(),
                policy_hash.clone(),
                commands.clone(),
                shared.clone(),
            );
            let timing = ReloadTiming {
                fallback: Duration::from_secs(args.config_poll_seconds.max(1)),
                ..ReloadTiming::default()
            };
            Some(reload::spawn(reloader, timing)?)
        }
        None => {
            shared.metrics.set_config_hash(&policy_hash);
            shared.metrics.config_last_reload_successful.set(1);
            None
        }
    };
    // Kubernetes Events, published from a task on this runtime; the agent never waits on them.
    let events_task = if args.events == Events::Auto {
        let _guard = runtime.enter();
        events::in_cluster_client().map(|client| {
            let (sink, task) =
                events::start(client, 256, events::RateLimit::default(), shared.clone());
            agent.set_events(sink);
            task
        })
    } else {
        info!("Kubernetes Events are off (--events off)");
        None
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let max_ticks = args.max_ticks;
    let control = std::thread::Builder::new()
        .name("control-loop".into())
        .spawn(move || {
            let outcome = agent.run(inbox, max_ticks);
            let _ = done_tx.send(());
            outcome
        })
        .context("start control loop")?;

    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
        let public = serve(
            listener,
            public_router(shared.clone(), metrics_auth),
            limits,
            "public",
        );
        let admin = serve(
            admin_listener,
            admin_router(shared.clone()),
            admin_limits,
            "admin",
        );
        tokio::select! {
            () = public => {}
            () = admin => {}
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = int.recv() => info!("SIGINT: stopping"),
            _ = done_rx => info!("control loop finished"),
        }
        anyhow::Ok(())
    })?;
    let stopping = Instant::now();
    drop(reloader);
    let _ = commands.send(Command::Stop);
    let outcome = control
        .join()
        .map_err(|_| anyhow::anyhow!("control loop panicked"))?;
    if let Some(task) = events_task {
        // The agent (and with it the queue's sender) is gone: publish what is queued, briefly.
        runtime.block_on(async {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                warn!("gave up publishing the last Kubernetes Events after 5s");
            }
        });
    }
    if let Some(report) = &outcome.restore {
        check_restored(report)?;
    }
    if let Some(e) = &outcome.journal_error {
        bail!("the journal could not be written on exit: {e}");
    }
    info!(took_ms = stopping.elapsed().as_millis() as u64, "stopped");
    Ok(())
}

#[derive(serde::Serialize)]
struct DiscoverRow {
    #[serde(flatten)]
    proxy: Proxy,
    cpu_max: Option<String>,
    cpu_quota_millis: Option<u64>,
    cpu_usage_millis: Option<f64>,
}

fn discover(
    roots: &Roots,
    config: Option<&Path>,
    output: Output,
    mode: DiscoveryMode,
    cri: &CriArgs,
) -> anyhow::Result<()> {
    let policy = load_policy(config)?;
    let mut discovery = make_discovery(mode, roots, cri)?;
    let proxies = discovery.discover(&policy.matching)?;
    let source = discovery.source();
    // Two readings 250 ms apart give the usage.
    let mut buf = Vec::new();
    let mut first = Vec::new();
    for p in &proxies {
        let sample = ProxyFiles::open(&p.dir)
            .and_then(|mut f| f.sample(&mut buf, Instant::now()).map(|s| (f, s)));
        first.push(sample.ok());
    }
    std::thread::sleep(Duration::from_millis(250));
    let mut rows = Vec::new();
    for (p, first) in proxies.into_iter().zip(first) {
        let mut row = DiscoverRow {
            cpu_max: read_cpu_max(&p.dir).ok().map(|m| m.to_string()),
            cpu_quota_millis: None,
            cpu_usage_millis: None,
            proxy: p,
        };
        if let Some((mut files, a)) = first
            && let Ok(b) = files.sample(&mut buf, Instant::now())
        {
            row.cpu_quota_millis = b.cpu_max.millis();
            row.cpu_usage_millis = cpu_observation(&a, &b, 0).map(|o| o.usage_millis);
        }
        rows.push(row);
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            println!(
                "{:<16} {:<38} {:<14} {:<13} {:<8} {:<7} {:>8} {:>8}  CGROUP",
                "NAMESPACE", "POD (or UID)", "CONTAINER", "ID", "PROCESS", "PID", "QUOTA", "USAGE"
            );
            let or_dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.to_string()
                }
            };
            for r in &rows {
                let pod = if r.proxy.id.pod.is_empty() {
                    &r.proxy.id.pod_uid
                } else {
                    &r.proxy.id.pod
                };
                println!(
                    "{:<16} {:<38} {:<14} {:<13} {:<8} {:<7} {:>8} {:>8}  {}",
                    or_dash(&r.proxy.id.namespace),
                    pod,
                    or_dash(&r.proxy.id.container),
                    &r.proxy.id.container_id[..r.proxy.id.container_id.len().min(12)],
                    r.proxy.process,
                    r.proxy.pid,
                    r.cpu_quota_millis
                        .map_or_else(|| "max".into(), format_cpu_millis),
                    r.cpu_usage_millis
                        .map_or_else(|| "-".into(), |u| format!("{}m", u.round())),
                    r.proxy.key
                );
            }
            if rows.is_empty() {
                println!("(no proxies found)");
            }
            println!("(discovery: {})", source.as_str());
        }
    }
    Ok(())
}

fn status(endpoint: &str, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start async runtime")?;
    let status = runtime.block_on(sidecar_governor::status::fetch(
        endpoint,
        Duration::from_secs(10),
    ))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    print!(
        "{}",
        sidecar_governor::status::render(&status, sidecar_governor::server::now_unix())
    );
    Ok(())
}

struct SimulateArgs {
    config: Option<PathBuf>,
    trace: PathBuf,
    output: Output,
    cpu_limit: u64,
    memory_limit: u64,
    /// The proxy to chart and the SVG file.
    chart: Option<(String, PathBuf)>,
}

fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use sidecar_governor::simulate;
    let name = |path: &Path| {
        path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    let policy = load_policy(args.config.as_deref())?;
    let trace = simulate::trace::load(&args.trace)?;
    let options = simulate::Options {
        cpu_limit_millis: args.cpu_limit,
        memory_limit_bytes: args.memory_limit,
        chart: args.chart.as_ref().map(|(proxy, _)| proxy.clone()),
        policy_name: args
            .config
            .as_deref()
            .map_or_else(|| "default".into(), name),
        trace_name: name(&args.trace),
    };
    let outcome = simulate::simulate(&policy, &trace, &options)?;
    if let (Some(series), Some((_, out))) = (&outcome.series, &args.chart) {
        let svg = simulate::render_svg(series)?;
        std::fs::write(out, svg).with_context(|| format!("write chart {}", out.display()))?;
    }
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&outcome.report)?),
        Output::Table => print!("{}", outcome.report.render_table()),
    }
    Ok(())
}

fn restore(cgroup_root: &Path, state_dir: &Path) -> anyhow::Result<()> {
    let _lock = lock_state_dir(state_dir)?;
    let mut journal = Journal::load(state_dir)?;
    if journal.is_empty() {
        println!(
            "nothing to restore: the journal in {} is empty",
            state_dir.display()
        );
        return Ok(());
    }
    let report = restore_all(cgroup_root, &mut journal);
    println!(
        "restored {}, unchanged {} (nothing of the agent's left), gone {}, pods {}, failed {}",
        report.restored.len(),
        report.unchanged.len(),
        report.gone.len(),
        report.pods_restored.len(),
        report.failed.len()
    );
    check_restored(&report)
}

/// An error naming what a restore could not do (records kept, journal not updated).
fn check_restored(report: &RestoreReport) -> anyhow::Result<()> {
    for (key, e) in &report.failed {
        eprintln!("  {key}: {e}");
    }
    if let Some(e) = &report.journal_error {
        bail!("originals put back, but the journal could not be updated: {e}");
    }
    if !report.failed.is_empty() {
        bail!(
            "{} cgroup(s) not restored; they stay in the journal (run `sidecar-governor restore` once the cause is fixed)",
            report.failed.len()
        );
    }
    Ok(())
}

/// A start refused for an invalid policy: the agent cannot govern, so it puts back every
/// original it journaled (nothing is left shrunk with nobody to grow it), then fails.
fn restore_before_refusing(args: &RunArgs, error: anyhow::Error) -> anyhow::Error {
    let restored = (|| -> anyhow::Result<RestoreReport> {
        let _lock = lock_state_dir(&args.state_dir)?;
        let mut journal = Journal::load(&args.state_dir)?;
        Ok(restore_all(&args.roots.cgroup_root, &mut journal))
    })();
    match restored {
        Ok(report) => {
            let outcome = check_restored(&report);
            error!(
                restored = report.restored.len(),
                pods = report.pods_restored.len(),
                failed = report.failed.len(),
                "invalid policy: put back every journaled original before exiting"
            );
            match outcome {
                Ok(()) => error,
                Err(e) => error.context(format!("and restoring failed: {e:#}")),
            }
        }
        Err(e) => error.context(format!("and the originals could not be restored: {e:#}")),
    }
}
