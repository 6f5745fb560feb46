//! The operator's plain-HTTP admin server: `GET /healthz` (liveness: the
//! process runs), `GET /readyz` (readiness: the policy cache has synced,
//! a webhook certificate is loaded and — the webhook self-check,
//! [`crate::webhook::self_check`] — the API server could call this
//! replica's webhook through its configuration's `caBundle`, so injection
//! works; 503 names what is missing) and `GET /metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::FutureExt;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::tls::CertStore;
use crate::{Error, Result};

/// What readiness waits for.
#[derive(Debug, Default)]
pub struct Readiness {
    policies_synced: AtomicBool,
    certs: Option<Arc<CertStore>>,
    /// The webhook self-check's last verdict, when it runs.
    webhook: Option<Mutex<Result<(), String>>>,
}

/// The self-check's verdict before its first run.
const NOT_CHECKED: &str = "the webhook has not been checked yet";

impl Readiness {
    /// Readiness that also waits for a certificate in `certs`.
    pub fn with_certs(certs: Arc<CertStore>) -> Self {
        Readiness {
            certs: Some(certs),
            ..Readiness::default()
        }
    }

    /// Also waits for the webhook self-check
    /// ([`crate::webhook::self_check`]) to pass.
    pub fn checking_webhook(mut self) -> Self {
        self.webhook = Some(Mutex::new(Err(NOT_CHECKED.into())));
        self
    }

    /// Marks the policy cache synced.
    pub fn policies_synced(&self) {
        self.policies_synced.store(true, Ordering::Release);
    }

    /// Records the self-check's verdict; a change is logged, at WARN
    /// when the webhook cannot be called.
    pub fn webhook_checked(&self, verdict: Result<(), String>) {
        let Some(webhook) = &self.webhook else {
            return;
        };
        let mut last = webhook.lock().unwrap_or_else(|p| p.into_inner());
        if *last == verdict {
            return;
        }
        match &verdict {
            Ok(()) => info!("the webhook answers through its configuration's caBundle; ready"),
            Err(reason) => warn!(%reason, "the API server could not call this webhook; not ready"),
        }
        *last = verdict;
    }

    /// `None` when the webhook can answer correctly and the API server
    /// can call it; else the first thing missing.
    pub fn not_ready(&self) -> Option<String> {
        if !self.policies_synced.load(Ordering::Acquire) {
            return Some("the policy cache has not synced".into());
        }
        if self.certs.as_ref().is_some_and(|c| !c.is_loaded()) {
            return Some("no webhook certificate is loaded".into());
        }
        let webhook = self.webhook.as_ref()?;
        let verdict = webhook.lock().unwrap_or_else(|p| p.into_inner());
        verdict.as_ref().err().cloned()
    }

    /// True when the webhook can answer correctly (and, with the
    /// self-check, the API server can call it).
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// The admin routes.
pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { metrics, readiness })
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    match s.readiness.not_ready() {
        None => (StatusCode::OK, "ready".to_string()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        ),
    }
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Binds `addr`, failing with the address in the message.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|error| Error::Io {
        path: addr.to_string(),
        error,
    })
}

/// Serves `router` on `listener` until `shutdown` is signalled, then lets
/// open requests finish; `shutdown` is held until they have.
pub async fn serve(listener: TcpListener, router: Router, shutdown: drain_rs::Watch) -> Result<()> {
    let signalled = shutdown.clone().signaled().map(drop);
    let served = axum::serve(listener, router).with_graceful_shutdown(signalled);
    let result = shutdown
        .ignore_signaled()
        .release_after(served.into_future())
        .await;
    result.map_err(|error| Error::Io {
        path: "admin server".into(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn status(router: &Router, path: &str) -> StatusCode {
        let req = Request::get(path).body(Body::empty()).unwrap();
        router.clone().oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn readiness_waits_for_policies_and_certificate() {
        let certs = Arc::new(CertStore::new(crate::tls::provider()));
        let readiness = Arc::new(Readiness::with_certs(certs.clone()));
        let router = router(Arc::new(Metrics::default()), readiness.clone());
        assert_eq!(status(&router, "/healthz").await, StatusCode::OK);
        assert_eq!(
            status(&router, "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.policies_synced();
        assert_eq!(
            status(&router, "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let ca = crate::tls::ca::new_ca().unwrap();
        let (serving, _) = crate::tls::ca::new_serving(&ca, &["svc.ns.svc".into()]).unwrap();
        certs
            .load_pem(serving.cert.as_bytes(), serving.key.as_bytes())
            .unwrap();
        assert_eq!(status(&router, "/readyz").await, StatusCode::OK);
        assert_eq!(status(&router, "/metrics").await, StatusCode::OK);
    }

    async fn body(router: &Router, path: &str) -> (StatusCode, String) {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn with_the_self_check_readiness_waits_for_it_and_says_why_not() {
        let readiness = Arc::new(Readiness::default().checking_webhook());
        let router = router(Arc::new(Metrics::default()), readiness.clone());
        readiness.policies_synced();
        assert_eq!(
            body(&router, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {NOT_CHECKED}")
            )
        );
        readiness.webhook_checked(Err("webhook w of c: caBundle is empty".into()));
        assert_eq!(
            body(&router, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: webhook w of c: caBundle is empty".into()
            )
        );
        readiness.webhook_checked(Ok(()));
        assert_eq!(
            body(&router, "/readyz").await,
            (StatusCode::OK, "ready".into())
        );
        // And back.
        readiness.webhook_checked(Err("gone".into()));
        assert!(!readiness.is_ready());
    }
}
