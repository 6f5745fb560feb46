//! The admin HTTP server (docs/design.md §5.2): health, readiness, drain,
//! metrics, the effective policy and live connections.
//!
//! `/readyz`'s answers are logged as they change, with the reason, and
//! the last one is a metric ([`readiness`]).
//!
//! `/healthz`, `/readyz`, `/metrics`, `/policy` and `GET /log-level` answer
//! anyone (probes and scrapers). `/drain`, `PUT /log-level` and
//! `/connections` answer only the pod itself and the node ([`access`]),
//! and with the drain token when one is set.

pub mod access;
pub mod readiness;

use std::sync::Arc;
use std::sync::atomic::Ordering::Acquire;
use std::time::Duration;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpStream;

use self::readiness::Answer;
use crate::Agent;

/// The admin routes.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/drain", get(drain).post(drain))
        .route(
            "/log-level",
            get(log_level).put(set_log_level).post(set_log_level),
        )
        .route("/metrics", get(metrics))
        .route("/policy", get(policy))
        .route("/connections", get(connections))
        .with_state(agent)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// How long `/readyz` waits for the application to accept a connection
/// (`--readiness-checks-upstream`); the injected probe's own timeout is 1s.
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_millis(900);

async fn readyz(State(agent): State<Arc<Agent>>) -> Response {
    let (answer, body) = readiness_answer(&agent).await;
    agent.readiness.observe(answer, body.trim_end());
    let status = if answer == Answer::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// What `/readyz` answers, and why.
async fn readiness_answer(agent: &Agent) -> (Answer, String) {
    if !agent.ready.load(Acquire) {
        return (Answer::Draining, "draining\n".into());
    }
    let Some(upstream) = &agent.config.readiness_upstream else {
        return (Answer::Ready, "ready\n".into());
    };
    // A connect, nothing sent: the app's listener answers it even while
    // all its workers are busy.
    match tokio::time::timeout(
        UPSTREAM_PROBE_TIMEOUT,
        TcpStream::connect(upstream.as_str()),
    )
    .await
    {
        Ok(Ok(_)) => (Answer::Ready, "ready\n".into()),
        Ok(Err(e)) => (
            Answer::UpstreamRefused,
            format!("upstream {upstream} refused the connection: {e}\n"),
        ),
        Err(_) => (
            Answer::UpstreamTimeout,
            format!(
                "upstream {upstream} did not accept a connection within {UPSTREAM_PROBE_TIMEOUT:?}\n"
            ),
        ),
    }
}

/// Serves the admin API on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, agent: Arc<Agent>) -> std::io::Result<()> {
    let app = router(agent).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await
}

/// Starts (or joins) the drain and answers when it has finished — and,
/// with `?min=<Go duration>`, no sooner than that long after the request
/// arrived: the floor a preStop `sleep` the operator replaced with this
/// hook promised its container (docs/design.md §9.1). The drain is
/// shared; the floor is the caller's own. An unreadable `min` is logged
/// and ignored: the hook still drains.
async fn drain(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let arrived = tokio::time::Instant::now();
    if let Some(refused) = guard(&agent, peer, &headers, "drain") {
        return refused;
    }
    let min = match min_hold(query.as_deref()) {
        Ok(min) => min,
        Err(reason) => {
            tracing::warn!(query = query.as_deref(), %reason, "drain request's min ignored");
            None
        }
    };
    let summary = agent.drain().await;
    if let Some(min) = min {
        tokio::time::sleep_until(arrived + min).await;
    }
    Json(summary).into_response()
}

/// The `min` of a `/drain` query string, a Go duration.
fn min_hold(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(value) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("min="))
    else {
        return Ok(None);
    };
    let duration: goaway_transport::policy::GoDuration =
        value.parse().map_err(|e| format!("min={value}: {e}"))?;
    duration
        .to_std()
        .map(Some)
        .ok_or_else(|| format!("min={value}: must not be negative"))
}

/// The log filter in force.
async fn log_level() -> Response {
    match crate::logging::filter() {
        Some(f) => format!("{f}\n").into_response(),
        None => (StatusCode::NOT_FOUND, "logging is not initialised\n").into_response(),
    }
}

/// Replaces the log filter with the request body (`GOAWAY_LOG` syntax).
/// Needs the drain token, like `/drain`: both change what the agent does.
async fn set_log_level(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(refused) = guard(&agent, peer, &headers, "log level change") {
        return refused;
    }
    match crate::logging::set_filter(&body) {
        Ok(now) => {
            tracing::info!(filter = %now, "log filter changed");
            format!("{now}\n").into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// The refusal of a request from outside the pod and its node, or
/// without the drain token when one is set.
fn guard(agent: &Agent, peer: SocketAddr, headers: &HeaderMap, what: &str) -> Option<Response> {
    outsider(agent, peer, what).or_else(|| unauthorized(agent, headers, what))
}

/// The 403 for a request from a source `--admin-allow` does not list.
fn outsider(agent: &Agent, peer: SocketAddr, what: &str) -> Option<Response> {
    if agent.config.admin_access.allows(peer.ip()) {
        return None;
    }
    tracing::warn!(%peer, "{what} request from outside the pod and its node refused");
    Some(
        (
            StatusCode::FORBIDDEN,
            "only the pod itself and its node may use this endpoint (--admin-allow)\n",
        )
            .into_response(),
    )
}

/// The 401 for a request without the drain token, when one is set.
fn unauthorized(agent: &Agent, headers: &HeaderMap, what: &str) -> Option<Response> {
    let token = agent.config.drain_token.as_ref()?;
    if presented(headers).is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes())) {
        return None;
    }
    tracing::warn!("{what} request without a valid token refused");
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "drain token required\n",
        )
            .into_response(),
    )
}

/// The token from `Authorization: Bearer …` or `X-Goaway-Drain-Token`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let (scheme, token) = v.trim_start().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers
        .get("x-goaway-drain-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Compares without an early exit, so timing does not reveal the prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Prometheus text format 0.0.4 unless the scraper asks for OpenMetrics
/// (Prometheus itself does, in its Accept header).
async fn metrics(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    let open_metrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = if open_metrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            agent.metrics.encode(),
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            agent.metrics.encode_classic(),
        )
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The effective policy (every default filled in) at the top level, and
/// where it came from under `source`.
async fn policy(State(agent): State<Arc<Agent>>) -> Json<serde_json::Value> {
    let mut v = serde_json::to_value(agent.policy.current().effective()).unwrap_or_default();
    v["source"] = json!(agent.policy.status());
    Json(v)
}

/// Every client connection, with its peer address: for the pod and its
/// node only (no token needed, as it changes nothing).
async fn connections(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if let Some(refused) = outsider(&agent, peer, "connections") {
        return refused;
    }
    let mut views = agent.connections.views();
    views.extend(agent.passthrough.views());
    Json(views).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented(&h), Some("abc"));
        // The scheme is case-insensitive.
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "bearer  abc".parse().unwrap());
        assert_eq!(presented(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert("x-goaway-drain-token", "xyz".parse().unwrap());
        assert_eq!(presented(&h), Some("xyz"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented(&h), None);
    }

    #[test]
    fn the_drain_floor_is_a_go_duration_in_the_query() {
        assert_eq!(min_hold(None), Ok(None));
        assert_eq!(min_hold(Some("x=1")), Ok(None));
        assert_eq!(min_hold(Some("min=5s")), Ok(Some(Duration::from_secs(5))));
        assert_eq!(
            min_hold(Some("a=b&min=1m30s")),
            Ok(Some(Duration::from_secs(90)))
        );
        assert!(min_hold(Some("min=5")).is_err());
        assert!(min_hold(Some("min=-1s")).is_err());
    }
}
