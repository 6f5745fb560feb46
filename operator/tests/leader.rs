//! Leader election ([`run_as_leader`]) against the fake API server, whose
//! replaces are guarded by `resourceVersion` (`409 Conflict` for a stale
//! one) as on a real server: the check mutual exclusion rests on. Replicas
//! share one Lease lasting 2 s (the shortest whole seconds allow beyond
//! the 1 s renew deadline) and try every 250 ms.
//!
//! On tokio's paused clock: the election's timers (retry, renew deadline,
//! expiry as the follower's own clock judges it) are tokio's, and the fake
//! API server is in process (no socket, no thread), so the clock moves
//! only when every replica waits, and a test's seconds of leases take no
//! wall-clock time. The Lease's `renewTime` is still stamped with the wall
//! clock; only its changing matters (expiry is not judged by it). Terms
//! are ordered by the wall clock, which a paused clock cannot make equal.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goaway_operator::leader::{self, LeaseConfig, LeaseTiming, run_as_leader};
use goaway_operator::metrics::Metrics;
use goaway_operator::owner::Owner;
use goaway_operator::rbac::RBAC;
use goaway_operator::{MANAGER, Result};
use goaway_tests::poll;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::fake_api::{Cut, FakeApi};
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
    /// Until shutdown is signalled.
    stop: Option<drain_rs::Signal>,
    /// The drain, once signalled.
    drained: Option<JoinHandle<()>>,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    task: JoinHandle<Result<()>>,
}

impl Replica {
    /// A replica whose work lasts until its term ends.
    fn start(api: &FakeApi, identity: &'static str, terms: &Terms) -> Self {
        Self::start_on(api.client(), identity, Self::recorded(identity, terms))
    }

    /// Work that records its term in `terms` and lasts until told to stop.
    fn recorded(
        identity: &'static str,
        terms: &Terms,
    ) -> impl FnMut(drain_rs::Watch) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static
    {
        let terms = terms.clone();
        move |term: drain_rs::Watch| {
            let terms = terms.clone();
            Box::pin(async move {
                let this = terms.begin(identity);
                let release = term.signaled().await;
                terms.end(this);
                drop(release);
            })
        }
    }

    fn start_with<F, Fut>(api: &FakeApi, identity: &'static str, work: F) -> Self
    where
        F: FnMut(drain_rs::Watch) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::start_on(api.client(), identity, work)
    }

    /// A replica talking to the API server through `client`.
    fn start_on<F, Fut>(client: kube::Client, identity: &'static str, work: F) -> Self
    where
        F: FnMut(drain_rs::Watch) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::start_owned(client, identity, work, Owner::unknown())
    }

    /// [`Replica::start_on`], with `owner` for the Lease.
    fn start_owned<F, Fut>(
        client: kube::Client,
        identity: &'static str,
        work: F,
        owner: Owner,
    ) -> Self
    where
        F: FnMut(drain_rs::Watch) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, shutdown) = drain_rs::channel();
        let (leader_tx, leader) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let ctx = leader::Context {
            client,
            metrics: metrics.clone(),
            leader: leader_tx,
            owner,
        };
        let config = leader::Config {
            lease: LeaseConfig {
                name: LEASE.into(),
                namespace: NAMESPACE.into(),
                identity: identity.into(),
            },
            timing: LeaseTiming::new(2, Duration::from_secs(1), Duration::from_millis(250))
                .unwrap(),
        };
        let task = tokio::spawn(run_as_leader(ctx, config, shutdown, work));
        Replica {
            identity,
            stop: Some(stop),
            drained: None,
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

    /// Signals the replica to shut down, without waiting. Idempotent.
    fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            self.drained = Some(tokio::spawn(stop.drain()));
        }
    }

    /// Shuts the replica down and waits for `run_as_leader` to return and
    /// the drain to complete (every watch released).
    async fn shut_down(mut self) {
        self.signal_shutdown();
        let drained = self.drained.take().expect("signalled");
        let both = futures_util::future::join(self.task, drained);
        let Ok((joined, drained)) = tokio::time::timeout(BOUND, both).await else {
            panic!("{} did not stop in time", self.identity)
        };
        joined.expect("run_as_leader panicked").unwrap();
        drained.expect("the drain task");
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

/// The field manager `run_as_leader` writes the Lease as.
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

/// Polls `check` every 20ms until it holds; panics naming `what` after
/// `bound`.
async fn within(bound: Duration, what: &str, mut check: impl FnMut() -> bool) {
    poll::until_async(what, bound, Duration::from_millis(20), async || check()).await
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

#[tokio::test(start_paused = true)]
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

    // What the chart grants (the operator's RBAC list) covers what was used.
    let granted = RBAC.iter().find(|r| r.resource == "leases").unwrap();
    let used = api.verbs("leases");
    assert!(
        used.iter().all(|verb| granted.verbs.contains(verb)),
        "used {used:?}, granted {:?}",
        granted.verbs
    );
    assert_eq!(lease(&api)["spec"]["leaseTransitions"], 1);
}

/// b reads the Lease (`lease` beforehand) and finds it free, but its
/// claim reaches the server only after a has claimed it: b's write must
/// be refused, and b must not lead.
async fn replica_that_read_the_lease_free_does_not_lead_once_another_took_it(lease: Option<Value>) {
    let api = FakeApi::new();
    if let Some(lease) = lease {
        let lease: Lease = serde_json::from_value(lease).unwrap();
        Api::<Lease>::namespaced(api.client(), NAMESPACE)
            .create(&PostParams::default(), &lease)
            .await
            .unwrap();
    }
    let terms = Terms::default();
    let held = api.hold_writes(&field_manager("b"));
    let b = Replica::start(&api, "b", &terms);
    tokio::time::timeout(BOUND, held.arrived())
        .await
        .expect("b never claimed the Lease");
    let mut a = Replica::start(&api, "a", &terms);
    a.becomes_leader().await;
    held.release();

    // Long enough for b to have led, and for a to have renewed often.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!b.leader.has_changed().unwrap(), "b led");
    assert!(a.is_leader());
    assert_eq!(terms.leaders(), ["a"]);
    assert_eq!(holder(&api).as_deref(), Some("a"));

    b.shut_down().await;
    a.shut_down().await;
    terms.assert_never_overlapped();
}

#[tokio::test(start_paused = true)]
async fn replica_that_found_no_lease_does_not_lead_once_another_created_it() {
    replica_that_read_the_lease_free_does_not_lead_once_another_took_it(None).await;
}

#[tokio::test(start_paused = true)]
async fn replica_that_read_a_released_lease_does_not_lead_once_another_took_it() {
    // As a leader that shut down leaves it.
    let released = json!({"metadata": {"name": LEASE}, "spec": {"leaseDurationSeconds": 1, "leaseTransitions": 3}});
    replica_that_read_the_lease_free_does_not_lead_once_another_took_it(Some(released)).await;
}

#[tokio::test(start_paused = true)]
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

    let released = tokio::time::Instant::now();
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

#[tokio::test(start_paused = true)]
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

#[tokio::test(start_paused = true)]
async fn leader_whose_work_returns_steps_down_for_the_other_replica() {
    let api = FakeApi::new();
    let terms = Terms::default();
    let quitting = terms.clone();
    let (quit, quit_watch) = drain_rs::channel();
    let mut a = Replica::start_with(&api, "a", move |_term| {
        let (terms, quit) = (quitting.clone(), quit_watch.clone());
        async move {
            let this = terms.begin("a");
            let _ = quit.signaled().await;
            terms.end(this);
        }
    });
    a.becomes_leader().await;
    let mut b = Replica::start(&api, "b", &terms);

    let quit = tokio::spawn(quit.drain());
    let done = tokio::time::timeout(BOUND, &mut a.task).await;
    let Ok(joined) = done else {
        panic!("a still campaigns")
    };
    joined.expect("run_as_leader panicked").unwrap();
    assert!(!a.is_leader() && !a.reports_leadership());
    // The work, and with it its watch, went with run_as_leader.
    let drained = tokio::time::timeout(BOUND, quit).await;
    drained.expect("the quit drain").unwrap();

    b.becomes_leader().await;
    terms.have_begun(&["a", "b"]).await;
    terms.assert_never_overlapped();
    b.shut_down().await;
}

/// A leader cut off from the API server must stop leading before its
/// lease expires, or it reconciles alongside its successor:
/// kube-lease-manager itself keeps reporting leadership while its
/// renewals hang or fail.
async fn leader_cut_off_steps_down_before_its_successor_leads(how: Cut) {
    let api = FakeApi::new();
    let terms = Terms::default();
    let (client, link) = api.linked_client();
    let mut a = Replica::start_on(client, "a", Replica::recorded("a", &terms));
    a.becomes_leader().await;
    let mut b = Replica::start(&api, "b", &terms);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_leader());

    link.cut(how);
    let cut = tokio::time::Instant::now();
    assert!(a.comes_to(false).await, "a still leads, cut off ({how:?})");
    // a stopped within its lease (2 s after its last renewal, at most
    // 2 s before the cut) and b, once the Lease expired, took over.
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "{:?}",
        cut.elapsed()
    );
    assert!(!a.reports_leadership());
    b.becomes_leader().await;
    terms.have_begun(&["a", "b"]).await;
    terms.assert_never_overlapped();

    // Back in touch, a finds the Lease taken and follows.
    link.heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!a.is_leader());
    assert_eq!(terms.leaders(), ["a", "b"]);
    assert_eq!(holder(&api).as_deref(), Some("b"));

    // And leads again once b is gone.
    b.shut_down().await;
    a.becomes_leader().await;
    terms.have_begun(&["a", "b", "a"]).await;
    terms.assert_never_overlapped();
    a.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn leader_partitioned_from_the_api_server_steps_down_before_its_successor_leads() {
    leader_cut_off_steps_down_before_its_successor_leads(Cut::Hang).await;
}

#[tokio::test(start_paused = true)]
async fn leader_refused_by_the_api_server_steps_down_before_its_successor_leads() {
    leader_cut_off_steps_down_before_its_successor_leads(Cut::Refuse).await;
}

/// A leader whose reads and renewals fail for a moment, well within its
/// lease, keeps leading: a blip is not a reason to step down.
#[tokio::test(start_paused = true)]
async fn leader_keeps_leading_through_a_brief_api_outage() {
    let api = FakeApi::new();
    let terms = Terms::default();
    let (client, link) = api.linked_client();
    let mut a = Replica::start_on(client, "a", Replica::recorded("a", &terms));
    a.becomes_leader().await;
    // Just after a renewal, so the outage ends before the next is due.
    let renewed = lease(&api)["spec"]["renewTime"].clone();
    within(BOUND, "a renewal", || {
        lease(&api)["spec"]["renewTime"] != renewed
    })
    .await;
    link.cut(Cut::Hang);
    tokio::time::sleep(Duration::from_millis(300)).await;
    link.heal();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(a.is_leader());
    assert_eq!(terms.leaders(), ["a"]);
    a.shut_down().await;
}

/// Expiry is judged by how long the record has gone unchanged on the
/// follower's own clock, not by the holder's `renewTime`: a holder whose
/// clock is an hour behind keeps the lease while it renews.
#[tokio::test(start_paused = true)]
async fn holder_with_a_skewed_clock_keeps_the_lease_while_it_renews() {
    let api = FakeApi::new();
    let leases = Api::<Lease>::namespaced(api.client(), NAMESPACE);
    let an_hour_ago = || MicroTime(Timestamp::now() - Duration::from_secs(3600));
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": LEASE},
        "spec": {"holderIdentity": "skewed", "leaseDurationSeconds": 2, "acquireTime": an_hour_ago(), "renewTime": an_hour_ago()},
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let terms = Terms::default();
    let mut b = Replica::start(&api, "b", &terms);

    let renewing = tokio::spawn(async move {
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let renew = json!({"spec": {"renewTime": an_hour_ago()}});
            leases
                .patch(LEASE, &update_by("skewed"), &Patch::Strategic(renew))
                .await
                .unwrap();
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !b.leader.has_changed().unwrap(),
        "b took a lease being renewed"
    );
    assert_eq!(holder(&api).as_deref(), Some("skewed"));

    // Once the renewals stop, b takes over a lease duration later.
    renewing.await.unwrap();
    let stopped = tokio::time::Instant::now();
    b.becomes_leader().await;
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        stopped.elapsed()
    );
    b.shut_down().await;
}

/// On shutdown the leader keeps its lease renewed while its work stops,
/// however long that takes, and only then lets it go.
#[tokio::test(start_paused = true)]
async fn leader_keeps_the_lease_until_its_slow_work_has_stopped() {
    let api = FakeApi::new();
    let terms = Terms::default();
    let slow = terms.clone();
    let mut a = Replica::start_with(&api, "a", move |term: drain_rs::Watch| {
        let terms = slow.clone();
        async move {
            let this = terms.begin("a");
            let release = term.signaled().await;
            // Longer than the lease lasts.
            tokio::time::sleep(Duration::from_secs(3)).await;
            terms.end(this);
            drop(release);
        }
    });
    a.becomes_leader().await;
    let mut b = Replica::start(&api, "b", &terms);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = tokio::time::Instant::now();
    a.signal_shutdown();
    b.becomes_leader().await;
    assert!(
        stopping.elapsed() >= Duration::from_secs(3),
        "{:?}",
        stopping.elapsed()
    );
    terms.have_begun(&["a", "b"]).await;
    terms.assert_never_overlapped();
    a.shut_down().await;
    b.shut_down().await;
}

/// The operator's Deployment, as `owner::resolve` finds it.
fn deployment_owner() -> Owner {
    let deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "goaway-operator", "namespace": NAMESPACE, "uid": "deployment-uid"},
    }))
    .unwrap();
    Owner::known(goaway_operator::owner::reference(&deployment).unwrap())
}

fn lease_owners(api: &FakeApi) -> Vec<String> {
    lease(api)["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{}/{} {}",
                r["kind"].as_str().unwrap(),
                r["name"].as_str().unwrap(),
                r["uid"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_owned_by_the_operators_deployment_so_an_uninstall_deletes_it() {
    let owned = ["Deployment/goaway-operator deployment-uid"];
    // Created by the replica: owned from the start.
    let api = FakeApi::new();
    let terms = Terms::default();
    let mut a = Replica::start_owned(
        api.client(),
        "a",
        Replica::recorded("a", &terms),
        deployment_owner(),
    );
    a.becomes_leader().await;
    assert_eq!(lease_owners(&api), owned);
    a.shut_down().await;
    // Released, still owned.
    assert_eq!(lease_owners(&api), owned);

    // Left by an older release without an owner: the holder's next write
    // adds it, once.
    let api = FakeApi::new();
    let leases: Api<Lease> = Api::namespaced(api.client(), NAMESPACE);
    let old: Lease =
        serde_json::from_value(json!({"metadata": {"name": LEASE}, "spec": {}})).unwrap();
    leases.create(&PostParams::default(), &old).await.unwrap();
    assert!(lease_owners(&api).is_empty());
    let mut b = Replica::start_owned(
        api.client(),
        "b",
        Replica::recorded("b", &terms),
        deployment_owner(),
    );
    b.becomes_leader().await;
    assert_eq!(lease_owners(&api), owned);
    // Renewals later, still exactly one reference.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(holder(&api).as_deref(), Some("b"));
    assert_eq!(lease_owners(&api), owned);
    b.shut_down().await;
}
