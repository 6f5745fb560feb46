//! `goaway-agent run`: wires the proxy, admin server, policy reload and
//! signal handling together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Release};

use anyhow::{Context, Result, bail};
use goaway_transport::client::{Channel, ChannelConfig};
use goaway_transport::{Counters, Policy};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::RunArgs;
use crate::control::{self, ControlConfig, Endpoints};
use crate::drain::{self, DrainState};
use crate::policy::{PolicyStore, load_file, watch_file};
use crate::proxy::Upstream;
use crate::{
    Agent, CONNECTION_WINDOW, Config, STREAM_WINDOW, UPSTREAM_BACKOFF, UPSTREAM_CONNECTION_WINDOW,
    UPSTREAM_DATA_FRAME_BUDGET, UPSTREAM_MAX_HEADER_LIST_SIZE, admin, connections, metrics, proxy,
    workers,
};

/// A bound, serving agent.
pub struct Running {
    /// The shared state.
    pub agent: Arc<Agent>,
    /// Where clients connect.
    pub listen: std::net::SocketAddr,
    /// Where the admin API answers.
    pub admin: std::net::SocketAddr,
}

/// Validates the arguments and the policy, binds both ports and starts
/// serving. Fails — before binding anything — on an invalid policy file
/// or flag, with the field and the reason.
pub async fn start(args: &RunArgs) -> Result<Running> {
    let policy = match &args.policy {
        Some(path) => load_file(path)?,
        None => Policy::default(),
    };
    let connect_timeout = args
        .upstream_connect_timeout
        .to_std()
        .filter(|d| !d.is_zero())
        .context("--upstream-connect-timeout: must be greater than zero")?;
    let poll_interval = args
        .policy_poll_interval
        .to_std()
        .filter(|d| !d.is_zero())
        .context("--policy-poll-interval: must be greater than zero")?;
    if args.upstream_max_connections == 0 {
        bail!("--upstream-max-connections: must be at least 1");
    }
    if args.max_connections == 0 {
        bail!("--max-connections: must be at least 1");
    }
    // RFC 9113 §6.5.2 counts 32 bytes per field: a smaller limit refuses
    // every request.
    if args.max_header_list_size < 1024 {
        bail!("--max-header-list-size: must be at least 1024");
    }
    let handshake_timeout = args
        .handshake_timeout
        .to_std()
        .filter(|d| !d.is_zero())
        .context("--handshake-timeout: must be greater than zero")?;
    let drain_expiry = args
        .drain_expiry
        .to_std()
        .filter(|d| !d.is_zero())
        .context("--drain-expiry: must be greater than zero")?;
    let control = match (
        &args.control_url,
        &args.control_ca,
        &args.control_token_file,
    ) {
        (Some(url), Some(ca), Some(token)) => Some(
            ControlConfig::parse(url, ca.clone(), token.clone())
                .map_err(|e| anyhow::anyhow!("--control-url: {e}"))?,
        ),
        _ => None,
    };
    let gateways = admin::access::default_gateways();
    let admin_access = admin::access::AdminAccess::parse(&args.admin_allow, &gateways)
        .map_err(|e| anyhow::anyhow!("--admin-allow: {e}"))?;
    let drain_token = match (&args.drain_token, &args.drain_token_file) {
        (Some(t), _) => Some(t.trim().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--drain-token-file: reading {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    if drain_token.as_deref() == Some("") {
        bail!("--drain-token: must not be empty");
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen: binding {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin)
        .await
        .with_context(|| format!("--admin: binding {}", args.admin))?;

    let counters = Arc::new(Counters::default());
    let workers = {
        let (counters, addr, client_params) = (
            counters.clone(),
            args.upstream.clone(),
            policy.client_params(),
        );
        let max_connections = args.upstream_max_connections;
        workers::spawn(
            args.worker_threads.unwrap_or_else(default_workers),
            move || {
                let mut client_h2 = h2::client::Builder::new();
                client_h2
                    .initial_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(UPSTREAM_CONNECTION_WINDOW)
                    .data_frame_budget(UPSTREAM_DATA_FRAME_BUDGET)
                    .max_header_list_size(UPSTREAM_MAX_HEADER_LIST_SIZE);
                let channel = Channel::tcp(
                    addr.clone(),
                    ChannelConfig {
                        params: client_params,
                        counters: counters.clone(),
                        h2: client_h2,
                        backoff: UPSTREAM_BACKOFF,
                        max_connections,
                    },
                );
                channel.connect();
                Upstream {
                    channel,
                    addr: addr.clone(),
                    connect_timeout,
                    counters: counters.clone(),
                }
            },
        )?
    };

    let mut server_h2 = h2::server::Builder::new();
    server_h2
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(args.max_header_list_size);
    if let Some(n) = args.max_concurrent_streams {
        server_h2.max_concurrent_streams(n);
    }
    let ready = Arc::new(AtomicBool::new(false));
    let store = PolicyStore::new(policy, args.policy.clone());
    let channels = workers.iter().map(|w| w.upstream.channel.clone()).collect();
    let config = Config {
        drain_token,
        server_h2,
        handshake_timeout,
        max_connections: args.max_connections,
        readiness_upstream: args
            .readiness_checks_upstream
            .then(|| args.upstream.clone()),
        forwarded_for: args.forwarded_for,
        drain_expiry,
        admin_access,
    };
    let (drain, accepting) = DrainState::new();
    // Without a control channel the operator's word never comes, and a
    // drain waits its whole delay.
    let (endpoints_tx, endpoints) = tokio::sync::watch::channel(Endpoints::Unknown);
    let control_connected = Arc::new(AtomicBool::new(false));
    let readiness = Arc::new(AtomicU8::new(0));
    let agent = Arc::new(Agent {
        config,
        metrics: metrics::Metrics::new(
            counters.clone(),
            channels,
            ready.clone(),
            control_connected.clone(),
            readiness.clone(),
        ),
        workers,
        policy: store.clone(),
        connections: connections::ConnectionTable::default(),
        passthrough: Default::default(),
        counters,
        drain,
        ready,
        endpoints,
        control_connected: control_connected.clone(),
        readiness: crate::admin::readiness::Readiness::new(readiness),
        rebalancer: Default::default(),
    });
    if let Some(config) = control {
        tokio::spawn(control::run(config, agent.clone(), endpoints_tx));
    }

    if let Some(path) = args.policy.clone() {
        let a = agent.clone();
        tokio::spawn(watch_file(store.clone(), path, poll_interval, move |ok| {
            a.metrics.reload(ok)
        }));
        tokio::spawn(apply_reloads(agent.clone()));
    }
    let listen = listener.local_addr()?;
    let admin = admin_listener.local_addr()?;
    tokio::spawn(proxy::accept_loop(listener, agent.clone(), accepting));
    let served = agent.clone();
    tokio::spawn(async move {
        if let Err(e) = admin::serve(admin_listener, served).await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    agent.ready.store(true, Release);
    tracing::info!(%listen, %admin, upstream = %args.upstream, workers = agent.workers.len(), admin_access = ?agent.config.admin_access, "serving");
    Ok(Running {
        agent,
        listen,
        admin,
    })
}

/// Worker threads by default: the CPUs this process may use, at most two —
/// a sidecar shares its pod's CPU with the application.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// Pushes each accepted policy to live connections and the upstream.
async fn apply_reloads(agent: Arc<Agent>) {
    let mut changes = agent.policy.subscribe();
    while changes.changed().await.is_ok() {
        let policy = changes.borrow_and_update().clone();
        let params = policy.server_params();
        let handles = agent.connections.handles();
        for h in &handles {
            h.update_params(params);
        }
        for w in &agent.workers {
            w.upstream.channel.set_params(policy.client_params());
        }
        tracing::info!(connections = handles.len(), "new policy applied");
    }
}

/// Runs until SIGTERM or SIGINT. A drain that already ran (the preStop
/// hook) means exit 0 at once; otherwise the drain runs first.
pub async fn run(args: RunArgs) -> Result<()> {
    let running = start(&args).await?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let agent = running.agent;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
        e = drain::expire(&agent, running.listen) => {
            return Err(e).context("opening the listener again after the drain expired");
        }
    }
    if agent.drain.summary().is_some() {
        tracing::info!("drained earlier; exiting");
        return Ok(());
    }
    // No preStop drain ran (or one is running): drain, then exit. A second
    // signal exits at once.
    tokio::select! {
        summary = agent.drain() => tracing::info!(?summary, "exiting after drain"),
        _ = term.recv() => tracing::warn!("second SIGTERM; exiting without waiting"),
        _ = int.recv() => tracing::warn!("second SIGINT; exiting without waiting"),
    }
    Ok(())
}

/// `goaway-agent check-config FILE`.
pub fn check_config(path: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (policy, warnings) = Policy::load(&text, goaway_transport::policy::Strictness::Permissive)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let effective = serde_json::to_string_pretty(&policy.effective())?;
    println!("{}: valid\n{effective}", path.display());
    Ok(())
}
