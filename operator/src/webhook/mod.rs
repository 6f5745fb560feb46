//! The mutating admission webhook on Pod CREATE (docs/design.md §9).
//!
//! `POST /mutate` takes an `admission.k8s.io/v1` AdmissionReview and
//! answers with the JSON patch from [`inject::mutate`] — the same function
//! `goaway-operator inject` runs. The webhook never blocks a pod: anything
//! that goes wrong (an unreadable pod, a policy naming a missing port, a
//! bug that panics) admits the pod unchanged and is logged and counted,
//! and the chart registers it with `failurePolicy: Ignore` for when the
//! operator is down. Served over TLS by [`server`].
//!
//! With `failurePolicy: Ignore` a stalled webhook admits pods all over the
//! cluster without the agent, so no request may stall it or the others. A
//! body is read for at most the API server's timeout and up to
//! [`MAX_REVIEW_BYTES`]. The review's CPU work (decoding, the mutation,
//! serialising) runs on a blocking thread, off the async workers, within
//! half the API server's timeout ([`Webhook::with_timeout`]); past that
//! budget the handler answers on its own — the pod allowed unpatched, with
//! an AdmissionReview warning, a Warning log,
//! `goaway_operator_admissions_total{outcome="error",reason="budget_exceeded"}`
//! and, when a policy selects the pod, a Warning Event `InjectionFailed` —
//! and the late answer is dropped. Connection limits are the server's.
//!
//! Redirect interception's NET_ADMIN init container goes only where it is
//! allowed, with a Warning Event on the pod's owner otherwise. With
//! `--forbid-redirect` the pods of a policy asking for redirect are
//! admitted without the agent (`RedirectForbidden`, and an AdmissionReview
//! warning for whoever creates the pod). A policy asking for it gets
//! namedPort instead in a namespace whose Pod Security label enforces
//! `baseline` or `restricted` (`RedirectRefusedByPodSecurity`), and in one
//! where the API server refuses a dry-run probe pod with that container
//! and admits it without ([`redirect_probe`],
//! `RedirectRefusedByAdmission`).

mod redirect;
pub mod redirect_probe;
mod review;
pub mod self_check;
pub mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use tracing::warn;

use crate::inject::{self, AgentConfig};
use crate::metrics::Metrics;
use crate::{KeepalivePolicy, PolicyDefaults};
use redirect_probe::{ProbeConfig, RedirectProbe};
use review::{Pending, ReviewError};

/// The path the chart's MutatingWebhookConfiguration calls.
pub const MUTATE_PATH: &str = "/mutate";
/// How long the API server waits for an answer unless told otherwise
/// ([`Webhook::with_timeout`]): the chart's `webhook.timeoutSeconds`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest review body read; a larger one is refused (413), and the
/// API server admits the pod unchanged. etcd stores objects of at most
/// 1.5 MiB (as protobuf, which JSON rarely doubles), so no pod that could
/// be stored comes near it.
pub const MAX_REVIEW_BYTES: usize = 4 << 20;

/// The webhook's state: the policies (a reflector store kept current on
/// every replica), the operator's policy defaults, the agent settings and
/// where to report.
pub struct Webhook {
    policies: Store<KeepalivePolicy>,
    namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
    probe: Option<RedirectProbe>,
    defaults: PolicyDefaults,
    agent: AgentConfig,
    metrics: Arc<Metrics>,
    recorder: Option<Recorder>,
    token: Arc<dyn Fn() -> String + Send + Sync>,
    request_timeout: Duration,
    budget: Duration,
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
            probe: None,
            defaults: PolicyDefaults::default(),
            agent,
            metrics,
            recorder: None,
            token: Arc::new(inject::new_drain_token),
            request_timeout: DEFAULT_TIMEOUT,
            budget: DEFAULT_TIMEOUT / 2,
        }
    }

    /// Fits the webhook's time limits to `timeout`, how long the API
    /// server waits for it (the MutatingWebhookConfiguration's
    /// `timeoutSeconds`): a request's body is read for at most that long,
    /// and a review's CPU work gets half of it, leaving the rest for the
    /// connection, the transfer and a slow start. A review past its budget
    /// is answered without it (see the module's doc).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self.budget = timeout / 2;
        self
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
    /// for it get namedPort instead of a pod the API server rejects; a
    /// change of a namespace's labels probes it again
    /// ([`Webhook::with_redirect_probe`]).
    pub fn with_namespaces(mut self, namespaces: Store<PartialObjectMeta<Namespace>>) -> Self {
        self.namespaces = Some(namespaces);
        self
    }

    /// Asks the API server, as `client`, whether a namespace admits
    /// redirect interception's init container before its pods get it
    /// ([`redirect_probe`]), with `config`'s timing; the namespace's Pod
    /// Security label stays the fallback. Probe pods are made with the
    /// agent settings given to [`Webhook::new`].
    pub fn with_redirect_probe(mut self, client: Client, config: ProbeConfig) -> Self {
        self.probe = Some(RedirectProbe::new(client, self.agent.clone(), config));
        self
    }

    /// Publishes Events (kept preStop hooks) with `recorder`.
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Replaces the random drain token source (tests need fixed tokens).
    pub fn with_token_source(mut self, token: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.token = Arc::new(token);
        self
    }

    /// The HTTP routes: `POST /mutate`, and `GET /readyz` for the
    /// replica's own self-check ([`self_check`]), which answers `ok`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(MUTATE_PATH, post(mutate))
            .route(self_check::READY_PATH, get(|| async { "ok" }))
            .with_state(self)
    }
}

async fn mutate(State(webhook): State<Arc<Webhook>>, request: Request) -> Response {
    let body = match webhook.read_body(request).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let started = Instant::now();
    let pending = Arc::new(Pending::default());
    let mut worker = {
        let (webhook, pending) = (webhook.clone(), pending.clone());
        tokio::task::spawn_blocking(move || webhook.review(&body, &pending))
    };
    let joined = match tokio::time::timeout(webhook.budget, &mut worker).await {
        Ok(joined) => joined,
        Err(_) => match webhook.over_budget(&pending, started) {
            Some(answer) => return respond(answer),
            // The worker settled first: its answer is on its way.
            None => worker.await,
        },
    };
    match joined {
        Ok(Some(answer)) => respond(answer),
        // A worker returns None only once the handler has answered, and
        // it panics only outside the injection's own catch_unwind.
        _ => {
            webhook.worker_failed(&pending, started);
            (StatusCode::INTERNAL_SERVER_ERROR, "admission review failed").into_response()
        }
    }
}

impl Webhook {
    /// Reads a review's body: at most [`MAX_REVIEW_BYTES`], for at most the
    /// request timeout. Refused otherwise, counted, and the connection
    /// closed.
    async fn read_body(&self, request: Request) -> Result<Bytes, Response> {
        let started = Instant::now();
        let refuse = |status: StatusCode, reason: &'static str| {
            warn!(reason, "admission review refused");
            self.metrics.admitted("error", reason, started.elapsed());
            (status, [(CONNECTION, "close")], reason).into_response()
        };
        let announced = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > MAX_REVIEW_BYTES as u64) {
            return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"));
        }
        let body = Limited::new(request.into_body(), MAX_REVIEW_BYTES).collect();
        match tokio::time::timeout(self.request_timeout, body).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(error)) if error.is::<LengthLimitError>() => {
                Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"))
            }
            Ok(Err(_)) => Err(refuse(StatusCode::BAD_REQUEST, "unreadable")),
            Err(_) => Err(refuse(StatusCode::REQUEST_TIMEOUT, "request_timeout")),
        }
    }
}

/// The HTTP answer: the AdmissionReview, or, without a uid to answer
/// with, an error status the API server treats as a failed call (and,
/// with failurePolicy Ignore, admits).
fn respond(answer: Result<Vec<u8>, ReviewError>) -> Response {
    match answer {
        Ok(review) => ([(CONTENT_TYPE, "application/json")], review).into_response(),
        Err(error @ ReviewError::Unreadable(_)) => {
            (StatusCode::BAD_REQUEST, error.to_string()).into_response()
        }
        Err(error @ ReviewError::NotDecodedInBudget(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response()
        }
    }
}
