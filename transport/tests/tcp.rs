//! Socket options on real TCP connections (gRFC A18).

use std::time::Duration;

use goaway_transport::{Policy, policy::Strictness, tcp};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn accepted_socket_gets_tcp_user_timeout_equal_to_keepalive_timeout() {
    let (policy, _) = Policy::load("server: {timeout: 7s}", Strictness::Permissive).unwrap();
    let params = policy.server_params();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = TcpStream::connect(addr).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    assert_eq!(tcp::user_timeout(&accepted).unwrap(), None);
    tcp::configure_accepted(&accepted, &params).unwrap();
    assert_eq!(
        tcp::user_timeout(&accepted).unwrap(),
        Some(Duration::from_secs(7))
    );
    assert!(accepted.nodelay().unwrap());
}

#[tokio::test]
async fn dialled_socket_gets_tcp_user_timeout_when_keepalive_is_on() {
    use goaway_transport::client::{Connect, TcpConnector};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let with = TcpConnector::new(addr.clone()).with_user_timeout(Some(Duration::from_secs(3)));
    let tcp = with.connect().await.unwrap();
    assert_eq!(
        tcp::user_timeout(&tcp).unwrap(),
        Some(Duration::from_secs(3))
    );
    let without = TcpConnector::new(addr);
    let tcp = without.connect().await.unwrap();
    assert_eq!(tcp::user_timeout(&tcp).unwrap(), None);
}
