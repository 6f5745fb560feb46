//! Waiting for a condition another thread, process or task brings about:
//! look, and if it does not hold yet, sleep and look again until a
//! deadline. One loop for blocking tests ([`until`]) and one for async
//! ones ([`until_async`]); on timeout both say
//! `timed out after {timeout:?} waiting for {what}`.

use std::time::Duration;

use anyhow::{Result, bail};

/// What a check returns: `true` or `Some(value)` once the wait is over.
pub trait Ready {
    /// What the wait returns.
    type Output;

    /// `Some` once the condition holds.
    fn ready(self) -> Option<Self::Output>;
}

impl Ready for bool {
    type Output = ();

    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Output = T;

    fn ready(self) -> Option<T> {
        self
    }
}

/// Calls `check` every `every` until it is ready and returns what it
/// returned. Fails with `timed out after {timeout:?} waiting for {what}`
/// once `timeout` has passed; an error from `check` ends the wait with
/// that error.
pub fn until<R: Ready>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<R>,
) -> Result<R::Output> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check()?.ready() {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// [`until`] for an async `check`, on tokio's clock (so on a paused clock
/// the timeout is in test time). Panics on timeout: its callers are
/// tests that assert.
pub async fn until_async<R: Ready>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> R,
) -> R::Output {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await.ready() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Waits until something accepts connections on `127.0.0.1:{port}`,
/// looking every 20 ms.
pub fn listening(port: u16, timeout: Duration) -> Result<()> {
    until(
        &format!("something to listen on 127.0.0.1:{port}"),
        timeout,
        Duration::from_millis(20),
        || Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_returns_the_value_once_ready_and_names_what_timed_out() {
        let mut n = 0;
        let got = until(
            "three looks",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                Ok((n == 3).then_some(n))
            },
        );
        assert_eq!(got.unwrap(), 3);
        let err = until("never", Duration::ZERO, Duration::ZERO, || Ok(false)).unwrap_err();
        assert_eq!(err.to_string(), "timed out after 0ns waiting for never");
    }

    #[test]
    fn an_error_from_the_check_ends_the_wait() {
        let err = until::<bool>("x", Duration::from_secs(5), Duration::ZERO, || {
            bail!("broken")
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "broken");
    }

    #[tokio::test(start_paused = true)]
    async fn until_async_times_out_on_the_paused_clock() {
        let start = tokio::time::Instant::now();
        let mut looks = 0;
        until_async(
            "five looks",
            Duration::from_secs(60),
            Duration::from_secs(10),
            async || {
                looks += 1;
                looks == 5
            },
        )
        .await;
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        let never = tokio::spawn(until_async(
            "never",
            Duration::from_secs(1),
            Duration::from_millis(100),
            async || false,
        ));
        let panic = never.await.unwrap_err().into_panic();
        assert_eq!(
            panic.downcast_ref::<String>().unwrap(),
            "timed out after 1s waiting for never"
        );
    }
}
