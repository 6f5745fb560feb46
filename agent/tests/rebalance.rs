//! Scale-up rebalancing (docs/design.md §7.5), black-box: a real agent
//! with a stand-in operator (a local TLS server speaking the control
//! channel: the 101 upgrade, then JSON lines) and idle HTTP/2 clients.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use common::agent;
use goaway_tests::agent::{Agent, wait_for};
use goaway_tests::{Scratch, grpc_server};
use goaway_transport::control::{self, Message};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The stand-in operator: accepts one agent, answers its upgrade, then
/// writes each message it is given (and a heartbeat every 5s).
async fn operator(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    mut messages: mpsc::UnboundedReceiver<Message>,
) -> Result<()> {
    let (tcp, _) = listener.accept().await?;
    let mut stream = tls.accept(tcp).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await?);
    }
    let head = String::from_utf8_lossy(&head);
    anyhow::ensure!(
        head.starts_with(&format!("GET {} HTTP/1.1", control::PATH)),
        "{head}"
    );
    stream
        .write_all(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\r\n",
                control::PROTOCOL
            )
            .as_bytes(),
        )
        .await?;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    loop {
        let message = tokio::select! {
            m = messages.recv() => match m {
                Some(m) => m,
                None => return Ok(()),
            },
            _ = heartbeat.tick() => Message::Heartbeat,
        };
        stream.write_all(&message.to_line()).await?;
        stream.flush().await?;
    }
}

/// A TLS acceptor for `localhost` and the CA file that signed it.
fn tls(dir: &Scratch) -> Result<(tokio_rustls::TlsAcceptor, std::path::PathBuf)> {
    use goaway_operator::tls::ca;
    let authority = ca::new_ca()?;
    let (serving, _) = ca::new_serving(&authority, &["localhost".to_string()])?;
    let chain = CertificateDer::pem_slice_iter(serving.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(serving.key.as_bytes()).context("serving key")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    let ca_file = dir.write("ca.crt", &authority.cert)?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca_file))
}

/// An idle HTTP/2 client connection to `agent`; the task ends when the
/// agent closes it.
async fn idle_client(agent: &Agent) -> Result<JoinHandle<()>> {
    idle_client_from(agent, [127, 0, 0, 1]).await
}

/// The same from another loopback address: another client's.
async fn idle_client_from(agent: &Agent, ip: [u8; 4]) -> Result<JoinHandle<()>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(ip), 0).into())?;
    let tcp: TcpStream = socket.connect(agent.listen).await?;
    let (send, connection) = h2::client::handshake(tcp).await?;
    Ok(tokio::spawn(async move {
        let _ = connection.await;
        drop(send);
    }))
}

fn metric(agent: &Agent, series: &str) -> Result<f64> {
    agent.metrics()?.value(series)
}

#[test]
fn a_scale_up_sends_the_oldest_connections_away_within_the_window() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let dir = Scratch::new("rebalance")?;
    let (acceptor, ca_file) = tls(&dir)?;
    let token = dir.write("token", "not-checked-by-this-stand-in")?;
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let control_port = listener.local_addr()?.port();
    let (tell, messages) = mpsc::unbounded_channel();
    let operator = rt.spawn(operator(listener, acceptor, messages));

    let policy = dir.write(
        "policy.yaml",
        "rebalance:\n  enabled: true\n  window: 6s\n  maxPercent: 100\n",
    )?;
    let (_app, port) = grpc_server(&[])?;
    let agent = agent(port)
        .policy(policy)
        .args([
            "--control-url",
            &format!("https://localhost:{control_port}"),
            "--control-ca",
            ca_file.to_str().context("path")?,
            "--control-token-file",
            token.to_str().context("path")?,
        ])
        .start()?;
    wait_for(Duration::from_secs(20), "the control channel", || {
        Ok(metric(&agent, "goaway_control_connected")? == 1.0)
    })?;

    // Four connections, one after the other: 0 is the oldest.
    let mut clients = Vec::new();
    for n in 1..=4 {
        clients.push(rt.block_on(idle_client(&agent))?);
        wait_for(Duration::from_secs(10), "the connection listed", || {
            Ok(agent.connections()?.len() == n)
        })?;
    }

    // Not a scale-up, then a scale-up from 1 to 2: half of the four.
    let told = std::time::Instant::now();
    for (from, to) in [(0, 2), (2, 2), (1, 2)] {
        tell.send(Message::Rebalance {
            service: "api".into(),
            from,
            to,
        })?;
    }
    wait_for(Duration::from_secs(30), "two rebalance GOAWAYs", || {
        Ok(metric(&agent, "goaway_rebalance_goaways_total")? == 2.0)
    })?;
    wait_for(Duration::from_secs(10), "the two closed", || {
        Ok(clients.iter().filter(|c| c.is_finished()).count() == 2)
    })?;
    let gone: Vec<bool> = clients.iter().map(JoinHandle::is_finished).collect();
    assert_eq!(gone, [true, true, false, false], "the two oldest");
    let m = agent.metrics()?;
    assert_eq!(m.value("goaway_rebalances_total")?, 1.0, "{}", m.text);
    assert_eq!(
        m.value("goaway_goaways_sent_total{reason=\"rebalance\"}")?,
        2.0
    );
    let lines = agent.log_events("rebalancing: GOAWAY to the oldest connections over the window");
    assert_eq!(lines.len(), 1, "{}", agent.log());
    let line = &lines[0];
    assert_eq!(
        (
            &line["service"],
            &line["from"],
            &line["to"],
            &line["connections"],
            &line["chosen"]
        ),
        (&"api".into(), &1.into(), &2.into(), &4.into(), &2.into()),
        "{line}"
    );
    // Within the window and its tail, a client that connects here is sent
    // on at once, four times in all (twice the one move per old pod that
    // lands back on an old pod, 1 → 2, two moved). From the address the
    // two went away from (127.0.0.1), twice only: a client of pod IPs
    // comes back to the same pod whatever happens, and then stays.
    let sent_on = |from: [u8; 4]| -> Result<()> {
        let client = rt.block_on(idle_client_from(&agent, from))?;
        wait_for(Duration::from_secs(10), "the arrival sent on", || {
            Ok(client.is_finished())
        })
    };
    sent_on([127, 0, 0, 1])?;
    sent_on([127, 0, 0, 1])?;
    let back = rt.block_on(idle_client(&agent))?;
    wait_for(
        Duration::from_secs(10),
        "the client back, and staying",
        || Ok(agent.connections()?.len() == 3),
    )?;
    sent_on([127, 0, 0, 2])?;
    sent_on([127, 0, 0, 2])?;
    let kept = rt.block_on(idle_client_from(&agent, [127, 0, 0, 2]))?;
    wait_for(Duration::from_secs(10), "the fifth listed", || {
        Ok(agent.connections()?.len() == 4)
    })?;
    assert!(!back.is_finished());
    let m = agent.metrics()?;
    assert_eq!(
        m.value("goaway_rebalance_bounces_total")?,
        4.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.value("goaway_goaways_sent_total{reason=\"rebalance\"}")?,
        6.0
    );
    assert_eq!(m.value("goaway_rebalance_goaways_total")?, 2.0);

    // Nothing more comes after the window (6 s) and its tail (5 s), and a
    // new client stays.
    std::thread::sleep(
        (told + Duration::from_secs(12)).saturating_duration_since(std::time::Instant::now()),
    );
    let late = rt.block_on(idle_client_from(&agent, [127, 0, 0, 3]))?;
    wait_for(Duration::from_secs(10), "the late client listed", || {
        Ok(agent.connections()?.len() == 5)
    })?;
    assert!(!kept.is_finished() && !late.is_finished());
    assert!(!clients[2].is_finished() && !clients[3].is_finished());
    assert_eq!(metric(&agent, "goaway_rebalance_goaways_total")?, 2.0);

    drop(tell);
    rt.block_on(operator)??;
    Ok(())
}
