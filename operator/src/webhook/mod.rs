//! The mutating admission webhook on Pod CREATE (SPEC §5).
//!
//! `POST /mutate` takes an `admission.k8s.io/v1` AdmissionReview and
//! answers with the JSON patch from [`inject::mutate`] — the same function
//! `goaway-operator inject` runs. The webhook never blocks a pod: anything
//! that goes wrong (an unreadable pod, a policy naming a missing port, a
//! bug that panics) admits the pod unchanged and is logged and counted,
//! and the chart registers it with `failurePolicy: Ignore` for when the
//! operator is down. Served over TLS by [`server`].

mod review;
pub mod server;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use tracing::warn;

use crate::inject::{self, AgentConfig};
use crate::metrics::Metrics;
use crate::{KeepalivePolicy, PolicyDefaults};

/// The path the chart's MutatingWebhookConfiguration calls.
pub const MUTATE_PATH: &str = "/mutate";

/// The webhook's state: the policies (a reflector store kept current on
/// every replica), the operator's policy defaults, the agent settings and
/// where to report.
pub struct Webhook {
    policies: Store<KeepalivePolicy>,
    namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
    defaults: PolicyDefaults,
    agent: AgentConfig,
    metrics: Arc<Metrics>,
    recorder: Option<Recorder>,
    token: fn() -> String,
}

impl Webhook {
    /// A webhook injecting with `agent` for the policies in `policies`,
    /// used as written (see [`Webhook::with_policy_defaults`]).
    pub fn new(
        policies: Store<KeepalivePolicy>,
        agent: AgentConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Webhook {
            policies,
            namespaces: None,
            defaults: PolicyDefaults::default(),
            agent,
            metrics,
            recorder: None,
            token: inject::new_drain_token,
        }
    }

    /// Merges the operator's `defaults` into every policy (grace period,
    /// which policies are valid), as the controller does for the file.
    pub fn with_policy_defaults(mut self, defaults: PolicyDefaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// Reads the namespaces' labels from `namespaces` (a metadata
    /// reflector): in a namespace whose Pod Security level refuses
    /// redirect interception's NET_ADMIN init container, policies asking
    /// for it get namedPort instead of a pod the API server rejects.
    pub fn with_namespaces(mut self, namespaces: Store<PartialObjectMeta<Namespace>>) -> Self {
        self.namespaces = Some(namespaces);
        self
    }

    /// Publishes Events (kept preStop hooks) with `recorder`.
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Replaces the random drain token source (tests need fixed tokens).
    pub fn with_token_source(mut self, token: fn() -> String) -> Self {
        self.token = token;
        self
    }

    /// The HTTP routes: `POST /mutate`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(MUTATE_PATH, post(mutate))
            .with_state(self)
    }
}

async fn mutate(State(webhook): State<Arc<Webhook>>, body: Bytes) -> Response {
    let started = Instant::now();
    match webhook.review(&body) {
        Ok(answer) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            answer,
        )
            .into_response(),
        Err(error) => {
            // No uid to answer with: the API server treats this as a
            // webhook failure and, with failurePolicy Ignore, admits.
            warn!(%error, "unreadable admission review");
            webhook
                .metrics
                .admitted("error", "unreadable", started.elapsed());
            (StatusCode::BAD_REQUEST, error.to_string()).into_response()
        }
    }
}
