//! Whether a namespace admits redirect interception's init container,
//! asked of the API server (docs/design.md §10.2).
//!
//! A namespace's Pod Security label is not the only thing that refuses a
//! container adding NET_ADMIN: cluster-wide Pod Security defaults (an
//! AdmissionConfiguration's `defaults`), a ValidatingAdmissionPolicy,
//! Kyverno or Gatekeeper do too, and say nothing on the namespace. So
//! before the webhook gives a namespace's pods redirect interception, it
//! creates two probe pods there as dry runs (`dryRun=All`: admitted or
//! refused by every admission step, never stored), at once: one with the
//! `goaway-intercept` init container exactly as injection builds it, one
//! without ([`crate::inject::redirect_probe_pod`]). Only "without
//! admitted, with refused" means the namespace refuses redirect
//! ([`Verdict::Refused`], with the API server's message); both admitted,
//! both refused (something else about the pod) or no answer is
//! inconclusive, and the namespace's Pod Security label decides as
//! before.
//!
//! Time: a review runs on a blocking thread within its budget (half the
//! API server's timeout), so a probe must not hold it long. A review that
//! finds no current answer for its namespace starts a probe in the
//! background (one per namespace at a time) and waits for it at most
//! [`ProbeConfig::wait`] (1s, and never more than half the budget); if
//! the API server is slower, that pod is decided on the label and the
//! probe's answer serves the namespace's next pods. A probe gets
//! [`ProbeConfig::timeout`] in all.
//!
//! Answers are kept per namespace: for [`ProbeConfig::ttl`] (10 min, for
//! policy engines whose rules change without the namespace changing), for
//! [`ProbeConfig::retry`] after a failed probe, and only while the
//! namespace's labels are those it was probed with (the webhook watches
//! namespaces' metadata: a label that brings a namespace under a policy
//! probes it again). Each replica keeps its own answers.
//!
//! The probe is made as the operator's account, not as the controller
//! that creates the real pods: an admission rule that treats users
//! differently may judge the two apart.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::MANAGER;
use crate::inject::{AgentConfig, PROBE_NAME_PREFIX, redirect_probe_pod};

/// How long a review waits for its namespace's probe, at most.
pub const DEFAULT_PROBE_WAIT: Duration = Duration::from_secs(1);
/// How long one probe (both dry runs) may take.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer of the API server is used.
pub const DEFAULT_PROBE_TTL: Duration = Duration::from_secs(600);
/// How long after a failed probe the namespace is probed again.
pub const DEFAULT_PROBE_RETRY: Duration = Duration::from_secs(30);

/// The probe's timing (see the module's doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// How long a review waits for a probe, at most (the webhook caps it
    /// at half the review's budget).
    pub wait: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// How long an answer is used.
    pub ttl: Duration,
    /// How long a failed probe's namespace waits for the next.
    pub retry: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            wait: DEFAULT_PROBE_WAIT,
            timeout: DEFAULT_PROBE_TIMEOUT,
            ttl: DEFAULT_PROBE_TTL,
            retry: DEFAULT_PROBE_RETRY,
        }
    }
}

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted without the init container, refused with it: the
    /// namespace refuses redirect. The API server's message.
    Refused(String),
    /// Admitted with the init container too.
    Admitted,
    /// Refused without the init container as well, for something else
    /// about the probe pod (the message): it says nothing about redirect.
    Unrelated(String),
    /// No answer: a timeout, a connection or server error.
    Failed(String),
}

/// Reads the two dry runs' results: the pod without the init container,
/// and with it.
pub fn classify(without: Result<(), kube::Error>, with: Result<(), kube::Error>) -> Verdict {
    let answer = |result: Result<(), kube::Error>, refused: fn(String) -> Verdict| match result {
        Ok(()) => None,
        Err(error) => Some(match refusal(&error) {
            Some(message) => refused(message.to_string()),
            None => Verdict::Failed(error.to_string()),
        }),
    };
    answer(without, Verdict::Unrelated)
        .or_else(|| answer(with, Verdict::Refused))
        .unwrap_or(Verdict::Admitted)
}

/// The message of an error that refuses the request itself (an admission
/// denial, invalid, forbidden), not one that says the namespace is gone,
/// the server busy or the request timed out.
fn refusal(error: &kube::Error) -> Option<&str> {
    match error {
        kube::Error::Api(status)
            if (400..500).contains(&status.code)
                && ![404, 408, 409, 429].contains(&status.code) =>
        {
            Some(&status.message)
        }
        _ => None,
    }
}

/// Probes `namespace` once, as `client`: both dry runs at once.
pub async fn probe(client: &Client, agent: &AgentConfig, namespace: &str) -> Verdict {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = PostParams {
        dry_run: true,
        field_manager: Some(MANAGER.into()),
    };
    let name = format!("{PROBE_NAME_PREFIX}{:08x}", rand::random::<u32>());
    let create = |with_intercept| {
        let pod = redirect_probe_pod(agent, &name, with_intercept);
        let (pods, params) = (&pods, &params);
        async move { pods.create(params, &pod).await.map(drop) }
    };
    let (without, with) = futures_util::future::join(create(false), create(true)).await;
    classify(without, with)
}

/// A namespace's labels when it was probed (`None`: not known).
pub(super) type Labels = Option<BTreeMap<String, String>>;

/// The webhook's probes and their answers, per namespace.
pub(super) struct RedirectProbe {
    client: Client,
    agent: AgentConfig,
    config: ProbeConfig,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    entries: Mutex<HashMap<String, Entry>>,
    /// Notified whenever a probe has finished.
    settled: Condvar,
    next_id: AtomicU64,
}

enum Entry {
    Running {
        id: u64,
        labels: Labels,
    },
    Done {
        verdict: Verdict,
        labels: Labels,
        until: Instant,
    },
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RedirectProbe {
    pub(super) fn new(client: Client, agent: AgentConfig, config: ProbeConfig) -> Self {
        RedirectProbe {
            client,
            agent,
            config,
            shared: Arc::default(),
        }
    }

    /// The most a review waits: [`ProbeConfig::wait`], within `cap`.
    pub(super) fn wait(&self, cap: Duration) -> Duration {
        self.config.wait.min(cap)
    }

    /// The current answer for `namespace`, whose labels are `labels`:
    /// kept, or probed now, waiting up to `wait` (blocking: call it from
    /// the review's blocking thread). `None` when no answer came in time;
    /// the probe goes on and its answer serves the next reviews.
    pub(super) fn verdict(
        &self,
        namespace: &str,
        labels: &Labels,
        wait: Duration,
    ) -> Option<Verdict> {
        let deadline = std::time::Instant::now() + wait;
        let mut entries = self.shared.lock();
        loop {
            match entries.get(namespace) {
                Some(Entry::Done {
                    verdict,
                    labels: probed,
                    until,
                }) if probed == labels && *until > Instant::now() => return Some(verdict.clone()),
                Some(Entry::Running { labels: probed, .. }) if probed == labels => {}
                _ => {
                    let runtime = tokio::runtime::Handle::try_current().ok()?;
                    let now = Instant::now();
                    entries.retain(|_, e| !matches!(e, Entry::Done { until, .. } if *until <= now));
                    let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                    let running = Entry::Running {
                        id,
                        labels: labels.clone(),
                    };
                    entries.insert(namespace.to_string(), running);
                    runtime.spawn(self.run(namespace.to_string(), id, labels.clone()));
                }
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                debug!(%namespace, ?wait, "redirect probe still running; deciding on the namespace's labels");
                return None;
            }
            entries = self
                .shared
                .settled
                .wait_timeout(entries, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// One probe of `namespace` in the background; its answer is kept
    /// unless a newer probe of the namespace started meanwhile.
    fn run(
        &self,
        namespace: String,
        id: u64,
        labels: Labels,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (client, agent) = (self.client.clone(), self.agent.clone());
        let (config, shared) = (self.config.clone(), self.shared.clone());
        async move {
            let asked = probe(&client, &agent, &namespace);
            let verdict = match tokio::time::timeout(config.timeout, asked).await {
                Ok(verdict) => verdict,
                Err(_) => Verdict::Failed(format!("no answer within {:?}", config.timeout)),
            };
            let kept = match &verdict {
                Verdict::Refused(message) => {
                    info!(%namespace, refusal = %message, "redirect probe: the namespace refuses redirect interception's init container");
                    config.ttl
                }
                Verdict::Admitted => {
                    debug!(%namespace, "redirect probe: the namespace admits redirect interception's init container");
                    config.ttl
                }
                Verdict::Unrelated(message) => {
                    warn!(%namespace, refusal = %message, "redirect probe inconclusive: the probe pod is refused without the init container too; the namespace's labels decide");
                    config.ttl
                }
                Verdict::Failed(error) => {
                    warn!(%namespace, %error, retry = ?config.retry, "redirect probe failed; the namespace's labels decide");
                    config.retry
                }
            };
            let mut entries = shared.lock();
            if matches!(entries.get(&namespace), Some(Entry::Running { id: running, .. }) if *running == id)
            {
                let until = Instant::now() + kept;
                entries.insert(
                    namespace,
                    Entry::Done {
                        verdict,
                        labels,
                        until,
                    },
                );
            }
            drop(entries);
            shared.settled.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, message: &str) -> Result<(), kube::Error> {
        let mut status = Status::failure(message, "Forbidden");
        status.code = code;
        Err(kube::Error::Api(status.boxed()))
    }

    #[test]
    fn only_admitted_without_and_refused_with_refuses_redirect() {
        let denied = "pods \"goaway-redirect-probe-1\" is forbidden: violates PodSecurity \"baseline:latest\": non-default capabilities";
        assert_eq!(
            classify(Ok(()), api(403, denied)),
            Verdict::Refused(denied.into())
        );
        // Webhooks deny with codes of their own; a 4xx about the request
        // is a refusal of it.
        assert_eq!(
            classify(Ok(()), api(400, "admission webhook denied")),
            Verdict::Refused("admission webhook denied".into())
        );
        assert_eq!(
            classify(Ok(()), api(422, "invalid")),
            Verdict::Refused("invalid".into())
        );
        assert_eq!(classify(Ok(()), Ok(())), Verdict::Admitted);
        // Refused either way: about something else.
        for with in [Ok(()), api(403, "with")] {
            assert_eq!(
                classify(api(403, "quota: must specify limits.cpu"), with),
                Verdict::Unrelated("quota: must specify limits.cpu".into())
            );
        }
    }

    #[test]
    fn errors_that_are_not_refusals_are_failures() {
        // The namespace is gone, a conflict, throttling, a timeout, a
        // server error: no answer about the init container.
        for code in [404, 408, 409, 429, 500, 503, 504] {
            let verdict = classify(Ok(()), api(code, "busy"));
            assert!(matches!(verdict, Verdict::Failed(_)), "{code}: {verdict:?}");
            let verdict = classify(api(code, "busy"), api(403, "with"));
            assert!(matches!(verdict, Verdict::Failed(_)), "{code}: {verdict:?}");
        }
        let connection = kube::Error::Service("connection refused".into());
        assert!(matches!(
            classify(Ok(()), Err(connection)),
            Verdict::Failed(e) if e.contains("connection refused")
        ));
    }
}
