//! The one shutdown signal, owned by `main`: a [`Trigger`] fires it, every
//! task holds a [`Shutdown`] and stops when it fires (accept loops first,
//! then in-flight work finishes).

use tokio::sync::watch;

/// Fires the shutdown.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Learns about the shutdown. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and signal.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Signals every [`Shutdown`]. Idempotent.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Completes once the trigger fired (or was dropped).
    pub async fn signalled(&mut self) {
        // An Err means the trigger is gone, which is a shutdown too.
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// True once the trigger fired.
    pub fn is_signalled(&self) -> bool {
        *self.0.borrow()
    }

    /// [`Shutdown::signalled`], consuming the signal: an owned `'static`
    /// future for APIs that take one (the controller's graceful shutdown).
    pub async fn wait(mut self) {
        self.signalled().await
    }
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
