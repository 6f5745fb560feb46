//! A small HTTP/1.1 client for the admin API: `goaway-agent drain` (for
//! exec preStop hooks) and the demo use it.

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

/// POSTs `/drain` to `admin` and returns the JSON summary.
pub async fn request_drain(admin: &str, token: Option<&str>, timeout: Duration) -> Result<String> {
    let (status, body) = call(hyper::Method::POST, admin, "/drain", token, timeout).await?;
    if !status.is_success() {
        bail!("http://{admin}/drain answered {status}: {}", body.trim());
    }
    Ok(body)
}
