//! The operator's lifecycle: how its tasks learn that it is stopping, and
//! how `main` learns that they have.
//!
//! One idiom, linkerd's drain-rs ([`drain`]), the one the agent uses for
//! its connections' drain: `main` holds the [`drain_rs::Signal`] (through
//! [`run_until`]), and every long-running task holds a [`drain_rs::Watch`]
//! for as long as it runs. On SIGTERM or SIGINT ([`os_signal`]) the
//! signal is drained: every watch sees it, the accept loops stop first,
//! in-flight work (reviews, reconciliations, the leader's term and the
//! release of its Lease) finishes, and each task drops its watch when it
//! is done. The drain is complete once the last watch is dropped; `main`
//! waits for that up to [`SHUTDOWN_TIMEOUT`]. The leader hands each term
//! a channel of its own, used the same way ([`crate::leader`]).
//!
//! A task waits for the signal on a clone of its watch
//! (`watch.clone().signaled()`, or polled once with `now_or_never` for
//! "already signalled?"), keeping the original, and with it the drain,
//! until it has finished; or it wraps its work in
//! [`drain_rs::ReleaseShutdown::release_after`].
//!
//! This module owns the OS signals the operator stops on and how long it
//! waits for its tasks; what each task does when told to stop is that
//! task's module's contract.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use tracing::info;

/// How long the operator waits, once told to stop, for every task to
/// finish (the drain to complete) before it exits anyway. Below the 30 s
/// `terminationGracePeriodSeconds` a pod gets by default (the chart sets
/// none), so the operator exits on its own rather than being killed; above
/// what a stop normally takes: the webhook's
/// [`DRAIN_TIMEOUT`](crate::webhook::server::DRAIN_TIMEOUT) (10 s), and,
/// after the running reconciliations, the Lease's release, bounded by the
/// renew deadline (10 s by default).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

/// Runs `task`, handed the [`drain_rs::Watch`], until it returns on its own
/// (then this returns at once, with its output) or `stop` completes. Then
/// drains: signals every watch and waits for `task` to return and every
/// watch to be dropped, at most `bound`. `None` when the bound passed
/// first; `task` is dropped unfinished, and tasks it spawned run on until
/// the runtime goes.
pub async fn run_until<F, Fut>(
    stop: impl Future<Output = ()>,
    bound: Duration,
    task: F,
) -> Option<Fut::Output>
where
    F: FnOnce(drain_rs::Watch) -> Fut,
    Fut: Future,
{
    let (signal, watch) = drain_rs::channel();
    let mut running = pin!(task(watch));
    tokio::select! {
        output = &mut running => return Some(output),
        () = stop => {}
    }
    info!("shutting down");
    let drained = futures_util::future::join(signal.drain(), running);
    let ((), output) = tokio::time::timeout(bound, drained).await.ok()?;
    Some(output)
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The next connection on `listener`, or `Err` with what `signalled`
/// completes with once the operator is stopping (the accept loops of the
/// webhook and the control channel). An accept error (descriptors
/// exhausted) is logged and retried after 50 ms.
pub async fn accept_until<R>(
    listener: &tokio::net::TcpListener,
    signalled: &mut std::pin::Pin<&mut impl std::future::Future<Output = R>>,
) -> Result<(tokio::net::TcpStream, std::net::SocketAddr), R> {
    loop {
        tokio::select! {
            release = signalled.as_mut() => return Err(release),
            accepted = listener.accept() => match accepted {
                Ok(a) => return Ok(a),
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    const BOUND: Duration = Duration::from_secs(5);

    /// A spawned task that holds a watch for `lasts` after the signal,
    /// then notes that it finished.
    fn holder(watch: drain_rs::Watch, lasts: Duration) -> Arc<AtomicBool> {
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        tokio::spawn(async move {
            let release = watch.signaled().await;
            tokio::time::sleep(lasts).await;
            done.store(true, Ordering::SeqCst);
            drop(release);
        });
        finished
    }

    #[tokio::test(start_paused = true)]
    async fn stop_waits_for_the_task_and_every_watch() {
        let mut finished = None;
        let output = run_until(std::future::ready(()), BOUND, |watch| {
            finished = Some(holder(watch.clone(), Duration::from_secs(2)));
            async move {
                let _ = watch.signaled().await;
                "returned"
            }
        })
        .await;
        assert_eq!(output, Some("returned"));
        assert!(finished.unwrap().load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_on_its_own_is_not_waited_for() {
        let started = tokio::time::Instant::now();
        let mut finished = None;
        let output = run_until(std::future::pending(), BOUND, |watch| {
            finished = Some(holder(watch, Duration::from_secs(1)));
            std::future::ready("returned")
        })
        .await;
        assert_eq!(output, Some("returned"));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(!finished.unwrap().load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_held_past_the_bound_is_given_up_on() {
        let started = tokio::time::Instant::now();
        let output = run_until(std::future::ready(()), BOUND, |watch| async move {
            let _held = watch;
            std::future::pending::<()>().await
        })
        .await;
        assert_eq!(output, None);
        assert_eq!(started.elapsed(), BOUND);
    }
}
