//! Thread-per-core workers.
//!
//! Each worker is an OS thread running a single-threaded Tokio runtime
//! with its own upstream connection pool. A client connection is handed
//! to one worker when accepted, and everything for it — its streams, the
//! upstream streams they open, both h2 connections' drivers — runs on
//! that thread: no lock in h2 is contended, no wake-up crosses threads.
//! (Measured: one multi-threaded runtime with two workers proxied ~20%
//! fewer requests per second than a single thread, losing the difference
//! to h2 lock contention and cross-thread wake-ups.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use anyhow::{Context, Result};
use tokio::runtime::Handle;

use crate::proxy::Upstream;

/// One worker thread.
pub struct Worker {
    /// Spawns onto the worker's runtime.
    pub handle: Handle,
    /// The worker's own pool of connections to the application.
    pub upstream: Arc<Upstream>,
    /// Client connections it serves now.
    pub connections: AtomicUsize,
}

impl Worker {
    /// Counts a client connection on this worker while alive.
    pub fn enter(self: &Arc<Self>) -> Seat {
        self.connections.fetch_add(1, Relaxed);
        Seat(self.clone())
    }
}

/// A client connection's place on a worker.
pub struct Seat(Arc<Worker>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Relaxed);
    }
}

/// Starts `n` workers; `upstream` builds each one's pool inside its runtime
/// (the pool spawns its dialer there).
pub fn spawn(
    n: usize,
    upstream: impl Fn() -> Upstream + Send + Sync + 'static,
) -> Result<Vec<Arc<Worker>>> {
    let upstream = Arc::new(upstream);
    let mut workers = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let (tx, rx) = std::sync::mpsc::channel();
        let make = upstream.clone();
        std::thread::Builder::new()
            .name(format!("goaway-worker-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let upstream = rt.block_on(async { Arc::new(make()) });
                let _ = tx.send(Ok((rt.handle().clone(), upstream)));
                // Runs the worker's tasks for the life of the process.
                rt.block_on(std::future::pending::<()>());
            })
            .context("starting a worker thread")?;
        let (handle, upstream) = rx
            .recv()
            .context("worker thread ended during start-up")?
            .context("starting a worker runtime")?;
        workers.push(Arc::new(Worker {
            handle,
            upstream,
            connections: AtomicUsize::new(0),
        }));
    }
    Ok(workers)
}

/// Client connections open on all workers.
pub fn open_connections(workers: &[Arc<Worker>]) -> usize {
    workers.iter().map(|w| w.connections.load(Relaxed)).sum()
}

/// The worker with the fewest client connections.
pub fn least_loaded(workers: &[Arc<Worker>]) -> &Arc<Worker> {
    workers
        .iter()
        .min_by_key(|w| w.connections.load(Relaxed))
        .unwrap_or_else(|| unreachable!("spawn starts at least one worker"))
}
