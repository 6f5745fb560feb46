//! Leader election on a `coordination.k8s.io/v1` Lease
//! (kube-lease-manager), so two replicas never reconcile at once.
//!
//! Every replica serves the webhook; only the holder of the Lease runs the
//! controller and the caBundle patching. A term ends when the lease is
//! lost or on shutdown: the leader's work is told to stop, finishes what
//! is in flight, and only then is the lease released (on shutdown) — a
//! successor waits for the release or the lease's expiry.

use std::future::Future;
use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::shutdown::{self, Shutdown};
use crate::{MANAGER, Result};

/// Seconds a lease stays valid without renewal.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// Seconds before expiry the holder renews.
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// How long a lease lasts and when its holder renews it. The default is
/// [`LEASE_DURATION_SECONDS`] and [`LEASE_GRACE_SECONDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    duration_seconds: u64,
    grace_seconds: u64,
}

impl LeaseTiming {
    /// A lease valid for `duration_seconds` after each renewal, renewed
    /// `grace_seconds` before it would expire. `None` unless
    /// `0 < grace_seconds < duration_seconds` (kube-lease-manager's rule;
    /// otherwise the holder renews in a busy loop or only once expired).
    pub const fn new(duration_seconds: u64, grace_seconds: u64) -> Option<Self> {
        if grace_seconds == 0 || grace_seconds >= duration_seconds {
            return None;
        }
        Some(LeaseTiming {
            duration_seconds,
            grace_seconds,
        })
    }
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            duration_seconds: LEASE_DURATION_SECONDS,
            grace_seconds: LEASE_GRACE_SECONDS,
        }
    }
}

/// Which Lease, and who we are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace (the operator's).
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
}

/// Runs `work` for each term this replica holds the lease, until
/// `shutdown`. `work` gets a signal that fires when the term ends (the
/// lease is lost, or `shutdown`); the term is over when its future
/// completes. `leader` and the leader metric mirror the state: true from
/// the start of a term until `work` has finished.
///
/// Work that completes on its own ends the term too, and this replica
/// stops campaigning: the lease is released for another replica.
pub async fn run_as_leader<F, Fut>(
    client: Client,
    config: &LeaseConfig,
    timing: LeaseTiming,
    metrics: Arc<Metrics>,
    leader: watch::Sender<bool>,
    mut shutdown: Shutdown,
    mut work: F,
) -> Result<()>
where
    F: FnMut(Shutdown) -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client, &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(timing.duration_seconds)
        .with_grace(timing.grace_seconds)
        .with_field_manager(format!("{MANAGER}-{}", config.identity))
        .build()
        .await?;
    let (mut holder, task) = manager.watch().await;
    loop {
        tokio::select! {
            () = shutdown.signalled() => break,
            became = holder.wait_for(|h| *h) => if became.is_err() { break },
        }
        info!(lease = %config.name, identity = %config.identity, "became leader");
        metrics.set_leader(true);
        leader.send_replace(true);
        let (end_term, term) = shutdown::channel();
        let mut term_work = std::pin::pin!(work(term));
        let (finished, lost) = tokio::select! {
            () = &mut term_work => (true, false),
            lost = holder.wait_for(|h| !*h) => (false, lost.is_ok()),
            () = shutdown.signalled() => (false, false),
        };
        end_term.fire();
        // A finished future must not be polled again.
        if !finished {
            term_work.await;
        }
        metrics.set_leader(false);
        leader.send_replace(false);
        if !lost || shutdown.is_signalled() {
            break;
        }
        warn!(lease = %config.name, "lost leadership; stopped leading");
    }
    // Closing the channel makes the manager release the lease.
    drop(holder);
    match task.await {
        Ok(Ok(_)) => info!(lease = %config.name, "released lease"),
        Ok(Err(error)) => warn!(%error, "releasing lease failed"),
        Err(error) => warn!(%error, "lease task failed"),
    }
    Ok(())
}
