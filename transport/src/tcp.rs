//! Socket options for accepted and dialled TCP connections.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::ServerParams;

/// Sets `TCP_NODELAY` and, per gRFC A18, `TCP_USER_TIMEOUT` to the
/// keepalive timeout: unacknowledged data then fails the socket after
/// `timeout` instead of ~15 minutes of retransmissions.
pub fn configure_accepted(tcp: &TcpStream, params: &ServerParams) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    set_user_timeout(tcp, Some(params.timeout))
}

/// Sets `TCP_USER_TIMEOUT` (Linux); a no-op elsewhere.
pub fn set_user_timeout(tcp: &TcpStream, timeout: Option<Duration>) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    {
        socket2::SockRef::from(tcp).set_tcp_user_timeout(timeout)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    {
        let _ = (tcp, timeout);
        Ok(())
    }
}

/// Reads `TCP_USER_TIMEOUT` back (Linux; `None` elsewhere or when unset).
pub fn user_timeout(tcp: &TcpStream) -> io::Result<Option<Duration>> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    {
        socket2::SockRef::from(tcp).tcp_user_timeout()
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    {
        let _ = tcp;
        Ok(None)
    }
}
