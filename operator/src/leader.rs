//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas
//! never reconcile at once. The semantics are client-go's
//! (`leaderelection` with a `LeaseLock`), the ones every Kubernetes
//! controller manager uses:
//!
//! - Every write is a read-modify-write guarded by the Lease's
//!   `resourceVersion`: of two replicas claiming at once one gets
//!   `409 Conflict`, and a request that arrives late (a partitioned
//!   leader's renewal) is refused rather than applied to a successor's
//!   Lease.
//! - A follower retries every retry period (jittered) and takes the Lease
//!   when it is free, or when its record has not changed for the lease
//!   duration *as measured on the follower's own clock* since it first saw
//!   that record. Clock skew between nodes therefore does not matter, and
//!   neither does what `renewTime` says.
//! - The leader renews every retry period. If no renewal succeeds within
//!   the renew deadline (shorter than the lease duration), its term ends:
//!   an API server it cannot reach does not keep it leading past the point
//!   where a follower may take over. A renewal that finds another holder
//!   ends the term at once.
//! - A term's work is told to stop and is awaited before the replica says
//!   it no longer leads; on shutdown the Lease is kept renewed while the
//!   work stops, and only then released, so a successor starts promptly
//!   but never alongside it.
//!
//! Every replica serves the webhook; only the leader runs the controller
//! and the caBundle patching.
//!
//! No crate fits: kube-leader-election targets kube 0.96 and does no
//! fencing, and kube-lease-manager renews with an unconditional patch (a
//! late renewal lands on a successor's Lease) and keeps reporting
//! leadership while its renewals fail.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::owner::Owner;
use crate::{MANAGER, Result};

/// How long a lease lasts, how long its holder keeps trying to renew it,
/// and how often replicas try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    duration_seconds: u32,
    renew_deadline: Duration,
    retry_period: Duration,
}

impl LeaseTiming {
    /// Followers take a Lease whose record has not changed for
    /// `duration_seconds`; the leader steps down when it has not renewed
    /// for `renew_deadline`; both try every `retry_period`. `None` unless
    /// `0 < retry_period < renew_deadline < duration_seconds`.
    pub fn new(
        duration_seconds: u32,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Option<Self> {
        let duration = Duration::from_secs(duration_seconds.into());
        let ordered =
            !retry_period.is_zero() && retry_period < renew_deadline && renew_deadline < duration;
        ordered.then_some(LeaseTiming {
            duration_seconds,
            renew_deadline,
            retry_period,
        })
    }

    /// The lease duration.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_seconds.into())
    }

    /// The renew deadline.
    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    /// The retry period.
    pub fn retry_period(&self) -> Duration {
        self.retry_period
    }

    /// A follower's wait between attempts: the retry period plus up to
    /// 1.2 times as much again (client-go's jitter), so replicas started
    /// together do not stay in step.
    fn jittered_retry(&self) -> Duration {
        self.retry_period.mul_f64(1.0 + 1.2 * rand::random::<f64>())
    }
}

impl Default for LeaseTiming {
    /// 15 s, 10 s and 2 s: client-go's and kube-controller-manager's
    /// defaults.
    fn default() -> Self {
        LeaseTiming {
            duration_seconds: 15,
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
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

/// The election: plain data, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Which Lease, and who we are.
    pub lease: LeaseConfig,
    /// How long it lasts and how often it is tried.
    pub timing: LeaseTiming,
}

/// The runtime handles [`run_as_leader`] works with.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Operator metrics (the leader gauge).
    pub metrics: Arc<Metrics>,
    /// Whether this replica leads, for the tasks that only the leader
    /// does part of (the certificate upkeep, [`crate::tls::secret`]).
    pub leader: watch::Sender<bool>,
    /// The Lease's owner once known ([`crate::owner`]): set when the Lease
    /// is created, and added by the holder's next write when missing.
    pub owner: Owner,
}

/// Runs `work` for each term this replica holds the lease, until
/// `shutdown` is signalled. `work` gets a [`drain_rs::Watch`] on its term,
/// signalled when the term ends (the lease is lost or could not be
/// renewed in time, or `shutdown`); the term is over when its future has
/// completed and every clone of that watch is dropped. `ctx.leader` and
/// the leader metric mirror the state: true from the start of a term
/// until it is over. `shutdown` is held until the Lease is released.
///
/// Work that completes on its own ends the term too, and this replica
/// stops campaigning: the lease is released for another replica.
pub async fn run_as_leader<F, Fut>(
    ctx: Context,
    config: Config,
    shutdown: drain_rs::Watch,
    mut work: F,
) -> Result<()>
where
    F: FnMut(drain_rs::Watch) -> Fut,
    Fut: Future<Output = ()>,
{
    let Config { lease, timing } = config;
    let mut elector = Elector::new(ctx.client, &lease, timing, ctx.owner);
    'campaign: loop {
        let mut renewed = loop {
            if shutdown.clone().signaled().now_or_never().is_some() {
                break 'campaign;
            }
            let started = Instant::now();
            match elector.attempt(timing.retry_period).await {
                Attempt::Holds => break started,
                Attempt::HeldBy(holder) => debug!(lease = %lease.name, %holder, "lease held"),
                Attempt::Conflict | Attempt::Failed => {}
            }
            tokio::select! {
                _ = shutdown.clone().signaled() => break 'campaign,
                () = tokio::time::sleep(timing.jittered_retry()) => {}
            }
        };
        info!(lease = %lease.name, identity = %lease.identity, "became leader");
        ctx.metrics.set_leader(true);
        ctx.leader.send_replace(true);
        let (end_term, term) = drain_rs::channel();
        let mut term_work = pin!(work(term));
        let end = tokio::select! {
            () = &mut term_work => TermEnd::WorkReturned,
            end = elector.keep(&mut renewed) => end,
            _ = shutdown.clone().signaled() => TermEnd::Shutdown,
        };
        // Tell the work to stop, and wait for it and every watch on its term.
        let mut over = pin!(async move {
            match end {
                TermEnd::WorkReturned => end_term.drain().await,
                _ => {
                    futures_util::future::join(end_term.drain(), term_work).await;
                }
            }
        });
        match end {
            // Still the holder: keep renewing while the work stops.
            TermEnd::Shutdown => {
                tokio::select! {
                    () = &mut over => {}
                    _ = elector.keep(&mut renewed) => over.await,
                }
            }
            TermEnd::WorkReturned | TermEnd::Lost | TermEnd::Unrenewed => over.await,
        }
        ctx.metrics.set_leader(false);
        ctx.leader.send_replace(false);
        match end {
            TermEnd::Shutdown | TermEnd::WorkReturned => break,
            TermEnd::Lost => warn!(lease = %lease.name, "lost the lease; stopped leading"),
            TermEnd::Unrenewed => warn!(
                lease = %lease.name,
                deadline = ?timing.renew_deadline,
                "could not renew the lease in time; stopped leading"
            ),
        }
    }
    elector.release().await;
    // Held until now: the operator's drain waits for the release.
    drop(shutdown);
    Ok(())
}

/// Why a term ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TermEnd {
    /// Another replica holds the lease.
    Lost,
    /// No renewal succeeded within the renew deadline.
    Unrenewed,
    /// The work returned on its own.
    WorkReturned,
    /// This replica is shutting down.
    Shutdown,
}

/// What one try to acquire or renew the lease found.
#[derive(Debug)]
enum Attempt {
    /// We hold it, freshly renewed.
    Holds,
    /// Another replica holds it and it has not expired.
    HeldBy(String),
    /// Someone else wrote it between our read and our write.
    Conflict,
    /// The API server could not be reached or refused (logged).
    Failed,
}

/// One replica's view of the Lease.
struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    write: PostParams,
    /// The last record seen, and when it was first seen so (our clock).
    observed: Option<(LeaseSpec, Instant)>,
    /// The Lease as we last wrote or read it while holding it.
    held: Option<Lease>,
    /// Failed attempts in a row (only the first of a run is a warning).
    failures: u32,
    /// The Lease's owner, once known.
    owner: Owner,
}

impl Elector {
    fn new(client: Client, config: &LeaseConfig, timing: LeaseTiming, owner: Owner) -> Self {
        Elector {
            owner,
            api: Api::namespaced(client, &config.namespace),
            name: config.name.clone(),
            identity: config.identity.clone(),
            timing,
            write: PostParams {
                field_manager: Some(format!("{MANAGER}-{}", config.identity)),
                ..PostParams::default()
            },
            observed: None,
            held: None,
            failures: 0,
        }
    }

    /// Renews every retry period while the term lasts; returns when the
    /// lease is lost or not renewed within the renew deadline of
    /// `renewed`, the start of the last successful renewal.
    async fn keep(&mut self, renewed: &mut Instant) -> TermEnd {
        loop {
            let deadline = *renewed + self.timing.renew_deadline;
            let next = (Instant::now() + self.timing.retry_period).min(deadline);
            tokio::time::sleep_until(next).await;
            let started = Instant::now();
            if started >= deadline {
                return TermEnd::Unrenewed;
            }
            match self.attempt(deadline - started).await {
                Attempt::Holds => *renewed = started,
                Attempt::HeldBy(holder) => {
                    warn!(lease = %self.name, %holder, "the lease was taken");
                    return TermEnd::Lost;
                }
                Attempt::Conflict | Attempt::Failed => {}
            }
        }
    }

    /// One try to acquire or renew, within `limit`.
    async fn attempt(&mut self, limit: Duration) -> Attempt {
        let result = tokio::time::timeout(limit, self.try_acquire_or_renew()).await;
        let error = match result {
            Ok(Ok(attempt)) => {
                self.failures = 0;
                return attempt;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {limit:?}"),
        };
        self.failures += 1;
        if self.failures == 1 || self.held.is_some() {
            warn!(lease = %self.name, %error, "lease request failed");
        } else {
            debug!(lease = %self.name, %error, failures = self.failures, "lease request failed");
        }
        Attempt::Failed
    }

    async fn try_acquire_or_renew(&mut self) -> kube::Result<Attempt> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let mut lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.claim(&LeaseSpec::default(), now)),
            };
            self.owner.add_to(&mut lease.metadata);
            return self.write(self.api.create(&self.write, &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(&spec);
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        if let Some(holder) = holder
            && holder != self.identity
            && !self.expired(&spec)
        {
            self.held = None;
            return Ok(Attempt::HeldBy(holder.to_string()));
        }
        lease.spec = Some(self.claim(&spec, now));
        // Same write: a Lease made before the owner was known gets it.
        self.owner.add_to(&mut lease.metadata);
        self.write(self.api.replace(&self.name, &self.write, &lease).await)
    }

    /// `current` claimed (or renewed) by us at `now`.
    fn claim(&self, current: &LeaseSpec, now: MicroTime) -> LeaseSpec {
        let ours = current.holder_identity.as_deref() == Some(self.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.duration_seconds as i32),
            acquire_time: match &current.acquire_time {
                Some(acquired) if ours => Some(acquired.clone()),
                _ => Some(now.clone()),
            },
            renew_time: Some(now),
            lease_transitions: Some(current.lease_transitions.unwrap_or(0) + i32::from(!ours)),
            ..current.clone()
        }
    }

    /// Records the result of a create or replace.
    fn write(&mut self, result: kube::Result<Lease>) -> kube::Result<Attempt> {
        match result {
            Ok(lease) => {
                self.observe(&lease.spec.clone().unwrap_or_default());
                self.held = Some(lease);
                Ok(Attempt::Holds)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                debug!(lease = %self.name, reason = %status.reason, "lease changed under us");
                Ok(Attempt::Conflict)
            }
            Err(error) => Err(error),
        }
    }

    /// Notes `spec` as seen now, if it differs from the last record seen.
    fn observe(&mut self, spec: &LeaseSpec) {
        if self.observed.as_ref().is_none_or(|(seen, _)| seen != spec) {
            self.observed = Some((spec.clone(), Instant::now()));
        }
    }

    /// Whether the observed record `spec` has gone unchanged for its
    /// lease duration.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let Some((_, since)) = &self.observed else {
            return true;
        };
        let lasts = spec.lease_duration_seconds.unwrap_or(0).max(0);
        *since + Duration::from_secs(lasts as u64) <= Instant::now()
    }

    /// Lets the lease go if we hold it, so a follower need not wait for
    /// it to expire. A Lease changed since (someone else took it) is left
    /// alone.
    async fn release(&mut self) {
        let Some(mut lease) = self.held.take() else {
            return;
        };
        let now = MicroTime(Timestamp::now());
        let spec = lease.spec.take().unwrap_or_default();
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..spec
        });
        let released = self.api.replace(&self.name, &self.write, &lease);
        match tokio::time::timeout(self.timing.renew_deadline, released).await {
            Ok(Ok(_)) => info!(lease = %self.name, "released the lease"),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
                info!(lease = %self.name, "the lease changed hands; nothing to release")
            }
            Ok(Err(error)) => warn!(lease = %self.name, %error, "releasing the lease failed"),
            Err(_) => warn!(lease = %self.name, "releasing the lease timed out"),
        }
    }
}
