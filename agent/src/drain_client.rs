//! `goaway-agent drain`: asks a running agent to drain, for exec preStop
//! hooks, and waits for the summary.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// POSTs `/drain` to `admin` and returns the JSON summary.
pub async fn request_drain(admin: &str, token: Option<&str>, timeout: Duration) -> Result<String> {
    let url = format!("http://{admin}/drain");
    let mut req = hyper::Request::post(&url);
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
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("{url} answered {status}: {}", body.trim());
    }
    Ok(body)
}
