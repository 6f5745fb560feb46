//! `goaway-operator run`: wires the parts together.
//!
//! Every replica: reflectors keep the policies and the namespaces' labels
//! for the webhook (which also probes namespaces with dry runs before
//! redirect interception), the
//! certificate is kept loaded ([`crate::tls::secret::maintain`]), the
//! webhook serves on TLS, the admin server serves health and metrics, and
//! the control channel ([`crate::channel`]) serves agents, fed by the
//! same policy watch; readiness includes a self-check that the API
//! server could call this replica's webhook
//! ([`crate::webhook::self_check`]). The operator's Deployment is looked up to own the
//! Secret and Lease ([`crate::owner`]).
//! The leader (or the only replica without leader election) runs the
//! controller. Every task holds a clone of the [`drain_rs::Watch`] it is
//! given ([`crate::lifecycle`]). On shutdown the listeners close first,
//! in-flight reviews and reconciliations finish, then the lease is
//! released; `run` returns once every task has.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::admin::{self, Readiness};
use crate::channel::{self, auth::Authenticator, policies::PolicySource};
use crate::cli::RunArgs;
use crate::metrics::Metrics;
use crate::owner::{self, Owner};
use crate::tls::{self, CertStore};
use crate::webhook::redirect_probe::ProbeConfig;
use crate::webhook::{self, Webhook};
use crate::{KeepalivePolicy, MANAGER, Result, controller, leader};

/// Runs the operator until `shutdown` is signalled. Flags the operator
/// cannot run with are refused first, before anything is bound or read.
pub async fn run(args: RunArgs, shutdown: drain_rs::Watch) -> Result<()> {
    let agent = args.agent.agent_config()?;
    let defaults = args.defaults.policy_defaults()?;
    let lease_timing = args.lease_timing()?;
    let webhook_timeout = args.webhook_timeout()?;
    let control_server = args.control_server();
    // Bind next: a taken port is a startup error, not a half-running operator.
    let webhook_listener = admin::bind(args.webhook_addr).await?;
    let admin_listener = admin::bind(args.admin_addr).await?;
    let control_listener = match &control_server {
        Some(_) => Some(admin::bind(args.control_addr).await?),
        None => None,
    };
    let client = Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let identity = args.identity();
    let certs = Arc::new(CertStore::new(tls::provider()));
    let readiness = Arc::new(Readiness::with_certs(certs.clone()).checking_webhook());

    let policies_api: Api<KeepalivePolicy> = match &args.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (policies, writer) = reflector::store();
    // The control channel's hub hears every policy event the webhook's
    // cache does.
    let hub = channel::hub(client.clone(), metrics.clone(), identity.clone());
    let mut policy_source = PolicySource::new(hub.clone(), defaults.clone());
    let reflect = reflector(writer, watcher(policies_api, watcher::Config::default()))
        .default_backoff()
        .for_each(move |event| {
            if let Ok(event) = &event {
                policy_source.event(event);
            }
            async {}
        });
    // The namespaces' labels (metadata only), for their Pod Security
    // level: the watched one, or all.
    let namespaces_config = match &args.watch_namespace {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let (namespaces, ns_writer) = reflector::store();
    let reflect_namespaces = reflector(
        ns_writer,
        watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            namespaces_config,
        ),
    )
    .default_backoff()
    .for_each(|_| async {});
    let reflector_stop = shutdown.clone();
    let reflector_task = tokio::spawn(async move {
        tokio::select! {
            _ = futures_util::future::join(reflect, reflect_namespaces) => {}
            _ = reflector_stop.signaled() => {}
        }
    });
    let synced = policies.clone();
    let ready = readiness.clone();
    tokio::spawn(async move {
        if synced.wait_until_ready().await.is_ok() {
            info!("policy cache synced");
            ready.policies_synced();
        }
    });

    // The operator's Deployment's uid, for the owner references of its
    // Secret and Lease, is read in the background: nothing waits for it.
    let owner = Owner::unknown();
    let owner_task = args.owner_deployment().map(|name| {
        tokio::spawn(owner::resolve(
            client.clone(),
            args.namespace.clone(),
            name.to_string(),
            owner.clone(),
        ))
    });
    let (leader_tx, leader_rx) = watch::channel(false);
    // A failed webhook self-check has the certificate upkeep sync at once.
    let resync = Arc::new(Notify::new());
    let tls_task = tokio::spawn(tls::secret::maintain(
        tls::secret::Context {
            client: client.clone(),
            store: certs.clone(),
            leader: leader_rx,
            owner: owner.clone(),
            resync: resync.clone(),
        },
        tls::secret::Config {
            namespace: args.namespace.clone(),
            source: args.tls_source(),
        },
        shutdown.clone(),
    ));

    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(identity.clone()),
    };
    let mut webhook = Webhook::new(policies, agent, metrics.clone())
        .with_namespaces(namespaces)
        .with_policy_defaults(defaults.clone())
        .with_timeout(webhook_timeout)
        .with_recorder(Recorder::new(client.clone(), reporter));
    if args.probes_redirect() {
        webhook = webhook.with_redirect_probe(client.clone(), ProbeConfig::default());
    }
    let webhook = Arc::new(webhook);
    let webhook_task = tokio::spawn(webhook::server::serve(
        webhook_listener,
        webhook.router(),
        webhook::server::Context {
            certs: certs.clone(),
            metrics: metrics.clone(),
        },
        args.webhook_server(),
        shutdown.clone(),
    ));
    let control_task = match (control_listener, control_server) {
        (Some(listener), Some(config)) => {
            let ctx = channel::Context {
                certs: certs.clone(),
                auth: Arc::new(Authenticator::new(
                    client.clone(),
                    args.watch_namespace.clone(),
                    metrics.clone(),
                )),
                hub,
                drains: Arc::new(channel::drains::Drains::in_cluster(
                    client.clone(),
                    metrics.clone(),
                    identity.clone(),
                )),
                metrics: metrics.clone(),
            };
            Some(tokio::spawn(channel::serve(
                listener,
                ctx,
                config,
                shutdown.clone(),
            )))
        }
        _ => None,
    };
    let self_check_task = tokio::spawn(webhook::self_check::run(
        client.clone(),
        webhook::self_check::Config {
            webhook_config: args.webhook_config.clone(),
            webhook_addr: args.webhook_addr,
        },
        readiness.clone(),
        resync,
        shutdown.clone(),
    ));
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        admin::router(metrics.clone(), readiness),
        shutdown.clone(),
    ));

    let controller_config = controller::Config {
        namespace: args.watch_namespace.clone(),
        defaults,
        instance: Some(identity),
        ca: certs.ca(),
    };
    let lead = |term: drain_rs::Watch| {
        controller::run(
            client.clone(),
            metrics.clone(),
            controller_config.clone(),
            term,
        )
    };
    match args.lease() {
        Some(lease) => {
            let ctx = leader::Context {
                client: client.clone(),
                metrics: metrics.clone(),
                leader: leader_tx,
                owner,
            };
            let config = leader::Config {
                lease,
                timing: lease_timing,
            };
            leader::run_as_leader(ctx, config, shutdown.clone(), lead).await?
        }
        None => {
            metrics.set_leader(true);
            leader_tx.send_replace(true);
            lead(shutdown.clone()).await;
        }
    }

    let servers = [
        ("webhook", Some(webhook_task)),
        ("admin", Some(admin_task)),
        ("control channel", control_task),
    ];
    for (name, task) in servers.into_iter().filter_map(|(n, t)| Some((n, t?))) {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, server = name, "server failed"),
            Err(error) => warn!(%error, server = name, "server task failed"),
        }
    }
    if let Some(task) = owner_task {
        task.abort();
    }
    let _ = tls_task.await;
    let _ = self_check_task.await;
    let _ = reflector_task.await;
    info!("stopped");
    Ok(())
}
