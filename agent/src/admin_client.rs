//! A small HTTP/1.1 client for the admin API: `goaway-agent drain` (for
//! exec preStop hooks) and the demo use it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Sends `method` to `http://{admin}{path}`; returns status and body.
pub async fn call(
    method: hyper::Method,
    admin: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(hyper::StatusCode, String)> {
    let url = format!("http://{admin}{path}");
    let mut req = hyper::Request::builder().method(method).uri(&url);
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .with_context(|| format!("no answer from {url} within {timeout:?}"))?
        .with_context(|| format!("requesting {url}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Where to send a request for an agent whose admin server was given
/// `admin` to listen on: a bind address such as `:15052` or
/// `0.0.0.0:15052` is reached on the loopback address of its family.
pub fn dial_target(admin: &str) -> String {
    if let Some(port) = admin.strip_prefix(':') {
        return format!("127.0.0.1:{port}");
    }
    match admin.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {
            let loopback: IpAddr = match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            };
            SocketAddr::new(loopback, addr.port()).to_string()
        }
        _ => admin.to_owned(),
    }
}

/// POSTs `/drain` to the agent at `admin` (see [`dial_target`]) and
/// returns the JSON summary.
pub async fn request_drain(admin: &str, token: Option<&str>, timeout: Duration) -> Result<String> {
    let admin = dial_target(admin);
    let admin = admin.as_str();
    let (status, body) = call(hyper::Method::POST, admin, "/drain", token, timeout).await?;
    if !status.is_success() {
        bail!("http://{admin}/drain answered {status}: {}", body.trim());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::dial_target;

    #[test]
    fn bind_addresses_are_dialled_on_loopback() {
        assert_eq!(dial_target(":15052"), "127.0.0.1:15052");
        assert_eq!(dial_target("0.0.0.0:15052"), "127.0.0.1:15052");
        assert_eq!(dial_target("[::]:15052"), "[::1]:15052");
        assert_eq!(dial_target("10.0.0.7:15052"), "10.0.0.7:15052");
        assert_eq!(dial_target("[::1]:15052"), "[::1]:15052");
        assert_eq!(dial_target("localhost:15052"), "localhost:15052");
    }
}
