//! The operator's plain-HTTP admin server: `GET /healthz` (liveness: the
//! process runs), `GET /readyz` (readiness: the policy cache has synced
//! and a webhook certificate is loaded, so a Service may route admission
//! reviews here) and `GET /metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures_util::FutureExt;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::tls::CertStore;
use crate::{Error, Result};

/// What readiness waits for.
#[derive(Debug, Default)]
pub struct Readiness {
    policies_synced: AtomicBool,
    certs: Option<Arc<CertStore>>,
}

impl Readiness {
    /// Readiness that also waits for a certificate in `certs`.
    pub fn with_certs(certs: Arc<CertStore>) -> Self {
        Readiness {
            policies_synced: AtomicBool::new(false),
            certs: Some(certs),
        }
    }

    /// Marks the policy cache synced.
    pub fn policies_synced(&self) {
        self.policies_synced.store(true, Ordering::Release);
    }

    /// True when the webhook can answer correctly.
    pub fn is_ready(&self) -> bool {
        self.policies_synced.load(Ordering::Acquire)
            && self.certs.as_ref().is_none_or(|c| c.is_loaded())
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
    if s.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
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
}
