//! Running a connection's streams inside the connection's own task.
//!
//! A frame for a stream then wakes one task, which moves the data and
//! flushes the connection in the same poll (a spawned task per stream
//! costs a scheduler round trip per wake-up), and the per-stream futures
//! need not be `Send` or `'static`. The set is made with the first stream:
//! it allocates even when empty, and many connections sit idle.

use std::future::{Future, poll_fn};
use std::task::Poll;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Incoming, ServerConnection};

/// The streams still running when their connection closed.
pub struct Streams<F> {
    set: Option<FuturesUnordered<F>>,
}

impl<F: Future<Output = ()>> Streams<F> {
    /// Runs them to the end (with the connection gone, they only have
    /// errors left to report). Dropping them instead cancels them.
    pub async fn finish(self) {
        if let Some(mut set) = self.set {
            while set.next().await.is_some() {}
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> ServerConnection<T> {
    /// Accepts every stream until the connection closes
    /// ([`outcome`](Self::outcome) says why), running `start(stream)` for
    /// each inside this task, and returns the streams still running then.
    pub async fn serve_streams<S, F>(&mut self, mut start: S) -> Streams<F>
    where
        S: FnMut(Incoming) -> F,
        F: Future<Output = ()>,
    {
        let mut set = None::<FuturesUnordered<F>>;
        poll_fn(|cx| {
            loop {
                let accepted = match self.poll_accept(cx) {
                    Poll::Ready(Some(stream)) => {
                        set.get_or_insert_with(FuturesUnordered::new)
                            .push(start(stream));
                        true
                    }
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => false,
                };
                if let Some(s) = set.as_mut() {
                    while let Poll::Ready(Some(())) = s.poll_next_unpin(cx) {}
                }
                if !accepted {
                    return Poll::Pending;
                }
            }
        })
        .await;
        Streams { set }
    }
}
