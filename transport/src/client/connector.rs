//! How a channel opens transport connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Opens one byte stream to the upstream.
pub trait Connect: Send + Sync + 'static {
    /// The stream type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Opens a stream. The channel bounds it with the connect deadline.
    fn connect(&self) -> Pin<Box<dyn Future<Output = io::Result<Self::Io>> + Send + '_>>;

    /// The address, for logs and errors.
    fn describe(&self) -> String;
}

/// Dials a TCP address (`host:port`), with `TCP_NODELAY`, and with
/// `TCP_USER_TIMEOUT` set to the keepalive timeout when keepalive is on
/// (gRFC A18).
#[derive(Clone, Debug)]
pub struct TcpConnector {
    addr: String,
    user_timeout: Option<Duration>,
}

impl TcpConnector {
    /// A connector for `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        TcpConnector {
            addr: addr.into(),
            user_timeout: None,
        }
    }

    /// Sets `TCP_USER_TIMEOUT` on every new socket.
    pub fn with_user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.user_timeout = timeout;
        self
    }
}

impl Connect for TcpConnector {
    type Io = TcpStream;

    fn connect(&self) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + '_>> {
        Box::pin(async move {
            let tcp = TcpStream::connect(&self.addr).await?;
            tcp.set_nodelay(true)?;
            if self.user_timeout.is_some() {
                crate::tcp::set_user_timeout(&tcp, self.user_timeout)?;
            }
            Ok(tcp)
        })
    }

    fn describe(&self) -> String {
        self.addr.clone()
    }
}
