//! Injecting the agent never breaks an app that is not plain h2c: a TLS
//! server (openssl s_server) and an HTTP/1.x server (Python's http.server)
//! behind a real agent still answer real clients (curl), through an L4
//! splice that is counted, listed in `/connections` and closed when a
//! drain finishes; h2c prior-knowledge gRPC clients are still managed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::{agent, grpc_client};
use goaway_tests::agent::wait_for;
use goaway_tests::poll::listening;
use goaway_tests::{Proc, Scratch, free_port, grpc_server, python};

fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .context("curl")?;
    if !out.status.success() {
        bail!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn passthrough_count(agent: &goaway_tests::agent::Agent, protocol: &str) -> Result<f64> {
    agent.metrics()?.value(&format!(
        "goaway_passthrough_connections_total{{protocol=\"{protocol}\"}}"
    ))
}

#[test]
fn a_tls_app_keeps_working_behind_the_agent() -> Result<()> {
    let dir = Scratch::new("passthrough-tls")?;
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()?;
    assert!(status.success());
    let port = free_port();
    let _app = Proc::spawn(
        "openssl s_server",
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key),
    )?;
    listening(port, Duration::from_secs(30))?;
    let agent = agent(port).start()?;
    // The app's own TLS status page, through the agent.
    let page = curl(&["-k", &format!("https://{}/", agent.listen)])?;
    assert!(page.contains("s_server"), "{page}");
    assert_eq!(passthrough_count(&agent, "tls")?, 1.0);
    assert_eq!(passthrough_count(&agent, "http1")?, 0.0);
    // Not an HTTP/2 connection: nothing counted as one.
    assert_eq!(agent.metrics()?.value("goaway_connections_total")?, 0.0);
    Ok(())
}

#[test]
fn an_http1_app_keeps_working_and_spliced_connections_end_with_the_drain() -> Result<()> {
    let dir = Scratch::new("passthrough-http1")?;
    std::fs::write(dir.path().join("hello.txt"), "hello over HTTP/1.1\n")?;
    let port = free_port();
    let _app = Proc::spawn(
        "http.server",
        Command::new(python())
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir.path()),
    )?;
    listening(port, Duration::from_secs(30))?;
    let agent = agent(port).start()?;
    let body = curl(&[&format!("http://{}/hello.txt", agent.listen)])?;
    assert_eq!(body, "hello over HTTP/1.1\n");
    assert_eq!(passthrough_count(&agent, "http1")?, 1.0);

    // An h2c gRPC app would be managed; here the same agent keeps a
    // spliced connection open (a request line, no end of headers yet)...
    let mut held = TcpStream::connect(agent.listen)?;
    held.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n")?;
    // (Found by its own address: curl's connection may still be listed.)
    let held_peer = held.local_addr()?.to_string();
    wait_for(
        Duration::from_secs(10),
        "the held connection listed",
        || {
            let list = agent.connections()?;
            Ok(list
                .iter()
                .any(|c| c["protocol"] == "http1" && c["peer"] == held_peer.as_str()))
        },
    )?;
    // ...which the drain closes when it finishes: it is still open then
    // (the app waits for the rest of the headers), so the drain counts it.
    let summary = agent.drain(&[])?;
    assert!(summary["duration_seconds"].is_number(), "{summary}");
    held.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut rest = Vec::new();
    let closed = match held.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the spliced connection outlived the drain");
    // The log is read from the agent's stderr by another thread; the drain
    // logs this line every time, with how many it closed.
    wait_for(
        Duration::from_secs(10),
        "the drain's passthrough log line",
        || {
            Ok(!agent
                .log_events("closing passthrough connections")
                .is_empty())
        },
    )?;
    let closing = &agent.log_events("closing passthrough connections")[0];
    assert!(
        closing["connections"].as_u64() >= Some(1),
        "the held connection was not open for the drain to close: {closing}"
    );
    Ok(())
}

#[test]
fn h2c_grpc_clients_are_still_managed() -> Result<()> {
    let (_server, port) = grpc_server(&[])?;
    let agent = agent(port).start()?;
    let r = grpc_client(&agent.target(), &["call"])?;
    assert_eq!(r["code"], "OK", "{r}");
    let m = agent.metrics()?;
    assert_eq!(m.value("goaway_connections_total")?, 1.0);
    assert_eq!(
        passthrough_count(&agent, "tls")? + passthrough_count(&agent, "http1")?,
        0.0
    );
    Ok(())
}
