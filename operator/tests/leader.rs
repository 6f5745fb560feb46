//! Leader election ([`run_as_leader`]) with the real kube-lease-manager
//! against the fake API server, whose server-side apply refuses to change
//! a field another field manager owns: the conflict kube-lease-manager's
//! mutual exclusion rests on. Replicas share one Lease lasting 2 s,
//! renewed 1 s before it expires (the shortest whole seconds allow). Real
//! time: kube-lease-manager stamps the Lease with the wall clock.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goaway_operator::leader::{LeaseConfig, LeaseTiming, run_as_leader};
use goaway_operator::metrics::Metrics;
use goaway_operator::shutdown::{self, Shutdown};
use goaway_operator::{MANAGER, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::fake_api::FakeApi;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const NAMESPACE: &str = "goaway-system";
const LEASE: &str = "goaway-operator";
/// Long enough for anything that takes a few lease durations.
const BOUND: Duration = Duration::from_secs(10);
/// Sooner than any lease could expire; taking a free Lease takes
/// milliseconds.
const PROMPTLY: Duration = Duration::from_secs(2);

/// One leadership term of one replica: when its work started and ended.
#[derive(Clone, Debug)]
struct Term {
    identity: String,
    started: Instant,
    ended: Option<Instant>,
}

/// Every term of every replica, in the order they started.
#[derive(Clone, Default)]
struct Terms(Arc<Mutex<Vec<Term>>>);

impl Terms {
    fn begin(&self, identity: &str) -> usize {
        let mut terms = self.0.lock().unwrap();
        terms.push(Term {
            identity: identity.into(),
            started: Instant::now(),
            ended: None,
        });
        terms.len() - 1
    }

    fn end(&self, term: usize) {
        self.0.lock().unwrap()[term].ended = Some(Instant::now());
    }

    /// Who led, term by term.
    fn leaders(&self) -> Vec<String> {
        let terms = self.0.lock().unwrap();
        terms.iter().map(|t| t.identity.clone()).collect()
    }

    /// Waits for the terms of `leaders` to have begun: `leader` says true
    /// a moment before the work starts.
    async fn have_begun(&self, leaders: &[&str]) {
        within(BOUND, "the terms to begin", || self.leaders() == leaders).await;
    }

    fn all_ended(&self) -> bool {
        self.0.lock().unwrap().iter().all(|t| t.ended.is_some())
    }

    /// No term started before the previous one had ended.
    fn assert_never_overlapped(&self) {
        let terms = self.0.lock().unwrap();
        for pair in terms.windows(2) {
            let ended = pair[0].ended.unwrap_or_else(Instant::now);
            assert!(ended <= pair[1].started, "terms overlapped: {:?}", *terms);
        }
    }
}

/// One operator replica, campaigning for the Lease.
struct Replica {
    identity: &'static str,
    stop: shutdown::Trigger,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    task: JoinHandle<Result<()>>,
}

impl Replica {
    /// A replica whose work lasts until its term ends.
    fn start(api: &FakeApi, identity: &'static str, terms: &Terms) -> Self {
        let terms = terms.clone();
        Self::start_with(api, identity, move |term: Shutdown| {
            let terms = terms.clone();
            async move {
                let this = terms.begin(identity);
                term.wait().await;
                terms.end(this);
            }
        })
    }

    fn start_with<F, Fut>(api: &FakeApi, identity: &'static str, work: F) -> Self
    where
        F: FnMut(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, signal) = shutdown::channel();
        let (leader_tx, leader) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let config = LeaseConfig {
            name: LEASE.into(),
            namespace: NAMESPACE.into(),
            identity: identity.into(),
        };
        let timing = LeaseTiming::new(2, 1).unwrap();
        let (client, gauge) = (api.client(), metrics.clone());
        let task = tokio::spawn(async move {
            run_as_leader(client, &config, timing, gauge, leader_tx, signal, work).await
        });
        Replica {
            identity,
            stop,
            leader,
            metrics,
            task,
        }
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// What `goaway_operator_leader` says.
    fn reports_leadership(&self) -> bool {
        reports_leadership(&self.metrics)
    }

    /// Whether the `leader` channel says `leads` within [`BOUND`].
    async fn comes_to(&mut self, leads: bool) -> bool {
        let wait = self.leader.wait_for(|l| *l == leads);
        matches!(tokio::time::timeout(BOUND, wait).await, Ok(Ok(_)))
    }

    async fn becomes_leader(&mut self) {
        assert!(self.comes_to(true).await, "{} did not lead", self.identity);
        assert!(self.reports_leadership());
    }

    /// Shuts the replica down and waits for `run_as_leader` to return.
    async fn shut_down(self) {
        self.stop.fire();
        let done = tokio::time::timeout(BOUND, self.task).await;
        let Ok(joined) = done else {
            panic!("{} did not stop in time", self.identity)
        };
        joined.expect("run_as_leader panicked").unwrap();
        assert!(!*self.leader.borrow(), "{} still leads", self.identity);
        assert!(!reports_leadership(&self.metrics));
    }
}

fn reports_leadership(metrics: &Metrics) -> bool {
    let text = metrics.render();
    let gauge = text
        .lines()
        .find_map(|l| l.strip_prefix("goaway_operator_leader "));
    match gauge {
        Some("1") => true,
        Some("0") => false,
        _ => panic!("no leader gauge in\n{text}"),
    }
}

/// The field manager `run_as_leader` gives kube-lease-manager.
fn field_manager(identity: &str) -> String {
    format!("{MANAGER}-{identity}")
}

/// A non-apply patch's parameters, naming its field manager.
fn update_by(manager: &str) -> PatchParams {
    PatchParams {
        field_manager: Some(manager.into()),
        ..PatchParams::default()
    }
}

fn lease(api: &FakeApi) -> Value {
    api.get("leases", NAMESPACE, LEASE).expect("the Lease")
}

fn holder(api: &FakeApi) -> Option<String> {
    lease(api)["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// Polls `check` until it holds; panics naming `what` after `bound`.
async fn within(bound: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn lease_apply_changing_a_field_another_manager_owns_is_a_conflict_unless_forced() {
    let api = FakeApi::new();
    let leases: Api<Lease> = Api::namespaced(api.client(), NAMESPACE);
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": LEASE}})).unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let spec = |holder: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": holder, "leaseDurationSeconds": 2}});
    let apply = |manager: &str| PatchParams::apply(manager);
    let owners = |api: &FakeApi| api.owners("leases", NAMESPACE, LEASE, ".spec.holderIdentity");

    leases
        .patch(LEASE, &apply("a"), &Patch::Apply(spec("a")))
        .await
        .unwrap();
    assert_eq!(owners(&api), ["a"]);

    let refused = leases
        .patch(LEASE, &apply("b"), &Patch::Apply(spec("b")))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("not an API error: {refused}")
    };
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status
            .message
            .contains(r#"conflict with "a": .spec.holderIdentity"#),
        "{}",
        status.message
    );
    assert!(
        !status.message.contains("leaseDurationSeconds"),
        "an unchanged value is no conflict: {}",
        status.message
    );
    assert_eq!(holder(&api).as_deref(), Some("a"));

    // A strategic merge patch is never refused and takes the field over...
    let take = json!({"spec": {"holderIdentity": "c"}});
    leases
        .patch(LEASE, &update_by("c"), &Patch::Strategic(take))
        .await
        .unwrap();
    assert_eq!(owners(&api), ["c"]);
    assert!(
        leases
            .patch(LEASE, &apply("a"), &Patch::Apply(spec("a")))
            .await
            .is_err()
    );
    // ...and deleting it leaves it to whoever applies next.
    let release = json!({"spec": {"holderIdentity": null}});
    leases
        .patch(LEASE, &update_by("c"), &Patch::Strategic(release))
        .await
        .unwrap();
    assert!(owners(&api).is_empty());
    leases
        .patch(LEASE, &apply("b"), &Patch::Apply(spec("b")))
        .await
        .unwrap();
    assert_eq!(owners(&api), ["b"]);

    // Forced, an apply takes the field from its owner.
    leases
        .patch(LEASE, &apply("a").force(), &Patch::Apply(spec("a")))
        .await
        .unwrap();
    assert_eq!(owners(&api), ["a"]);
    assert_eq!(holder(&api).as_deref(), Some("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_replicas_leads_promptly_and_alone() {
    let api = FakeApi::new();
    let terms = Terms::default();
    let a = Replica::start(&api, "a", &terms);
    let b = Replica::start(&api, "b", &terms);

    within(PROMPTLY, "a leader", || a.is_leader() || b.is_leader()).await;
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    assert!(leader.reports_leadership());
    assert_eq!(holder(&api).as_deref(), Some(leader.identity));

    // Several renewals later, nothing has changed hands.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(leader.is_leader() && !follower.is_leader());
    assert!(!follower.reports_leadership());
    assert!(!follower.leader.has_changed().unwrap(), "the follower led");
    assert_eq!(terms.leaders(), [leader.identity]);
    assert!(!terms.all_ended(), "the leader's term ended");

    follower.shut_down().await;
    assert_eq!(holder(&api).as_deref(), Some(leader.identity));
    leader.shut_down().await;
    assert!(terms.all_ended());
    terms.assert_never_overlapped();
    assert_eq!(holder(&api), None, "the Lease was not released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_that_read_the_lease_free_does_not_lead_once_another_took_it() {
    let api = FakeApi::new();
    let terms = Terms::default();
    // b finds the Lease free, but its claim reaches the server late...
    let held = api.hold_applies(&field_manager("b"));
    let b = Replica::start(&api, "b", &terms);
    tokio::time::timeout(BOUND, held.arrived())
        .await
        .expect("b never claimed the Lease");
    // ...after a has claimed it.
    let mut a = Replica::start(&api, "a", &terms);
    a.becomes_leader().await;
    held.release();

    // Long enough for b to have led, and for a to have renewed twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!b.leader.has_changed().unwrap(), "b led");
    assert!(a.is_leader());
    assert_eq!(terms.leaders(), ["a"]);
    assert_eq!(
        api.owners("leases", NAMESPACE, LEASE, ".spec.holderIdentity"),
        [field_manager("a")]
    );

    b.shut_down().await;
    a.shut_down().await;
    terms.assert_never_overlapped();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_that_shuts_down_releases_the_lease_to_the_other_replica() {
    let api = FakeApi::new();
    let terms = Terms::default();
    let mut a = Replica::start(&api, "a", &terms);
    a.becomes_leader().await;
    let mut b = Replica::start(&api, "b", &terms);
    // Time for b to find the Lease held and wait for it to expire.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!b.is_leader() && !b.reports_leadership());

    a.shut_down().await;
    // Its work ended before the Lease was let go, which it was.
    assert!(terms.all_ended());
    assert_ne!(holder(&api).as_deref(), Some("a"));

    let released = Instant::now();
    b.becomes_leader().await;
    // b looks again when the lease it saw would have expired: at most
    // its 2 s after a's last renewal.
    assert!(released.elapsed() < Duration::from_secs(5));
    assert_eq!(holder(&api).as_deref(), Some("b"));
    terms.have_begun(&["a", "b"]).await;
    terms.assert_never_overlapped();

    b.shut_down().await;
    assert!(terms.all_ended());
    assert_eq!(holder(&api), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_whose_lease_is_taken_ends_its_term_and_stops_reporting_leadership() {
    let api = FakeApi::new();
    let terms = Terms::default();
    let mut a = Replica::start(&api, "a", &terms);
    a.becomes_leader().await;

    // Someone else holds the Lease now, as a replica that was stuck past
    // the lease's expiry finds when it comes back.
    let now = MicroTime(Timestamp::now());
    let taken = json!({"spec": {"holderIdentity": "usurper", "acquireTime": now, "renewTime": now, "leaseDurationSeconds": 2}});
    Api::<Lease>::namespaced(api.client(), NAMESPACE)
        .patch(LEASE, &update_by("usurper"), &Patch::Strategic(taken))
        .await
        .unwrap();

    assert!(a.comes_to(false).await, "a still leads");
    assert!(terms.all_ended(), "a's work was not stopped");
    assert!(!a.reports_leadership());
    assert_eq!(holder(&api).as_deref(), Some("usurper"));

    // The usurper never renews: once its lease expires, a leads again.
    a.becomes_leader().await;
    terms.have_begun(&["a", "a"]).await;
    terms.assert_never_overlapped();
    a.shut_down().await;
    assert_eq!(holder(&api), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_whose_work_returns_steps_down_for_the_other_replica() {
    let api = FakeApi::new();
    let terms = Terms::default();
    let quitting = terms.clone();
    let (quit, quit_signal) = shutdown::channel();
    let mut a = Replica::start_with(&api, "a", move |_term| {
        let (terms, mut quit) = (quitting.clone(), quit_signal.clone());
        async move {
            let this = terms.begin("a");
            quit.signalled().await;
            terms.end(this);
        }
    });
    a.becomes_leader().await;
    let mut b = Replica::start(&api, "b", &terms);

    quit.fire();
    let done = tokio::time::timeout(BOUND, &mut a.task).await;
    let Ok(joined) = done else {
        panic!("a still campaigns")
    };
    joined.expect("run_as_leader panicked").unwrap();
    assert!(!a.is_leader() && !a.reports_leadership());

    b.becomes_leader().await;
    terms.have_begun(&["a", "b"]).await;
    terms.assert_never_overlapped();
    b.shut_down().await;
}
