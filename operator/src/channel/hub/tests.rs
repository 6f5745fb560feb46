//! The hub and the stream it feeds: what an agent is told, in what order,
//! and when.

use std::collections::HashMap;
use std::time::Duration;

use goaway_transport::control::{HEARTBEAT, Message};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};
use tokio::time::Instant;

use super::*;
use crate::channel::stream::{Timing, send_view};

fn pod(namespace: &str, name: &str, policy: &str) -> PodIdentity {
    PodIdentity {
        namespace: namespace.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        policy: policy.into(),
        revision: String::new(),
    }
}

/// A slice listing pods by name (uid `uid-<name>`), each ready or not.
fn slice(name: &str, pods: &[(&str, bool)]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: pods
            .iter()
            .enumerate()
            .map(|(i, (pod, ready))| Endpoint {
                addresses: vec![format!("10.0.0.{i}")],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    serving: Some(true),
                    terminating: Some(!*ready),
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    uid: Some(format!("uid-{pod}")),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: None,
    }
}

fn hub() -> Arc<Hub> {
    Hub::without_watches(Arc::new(Metrics::default()))
}

fn text(s: &str) -> Option<Arc<str>> {
    Some(Arc::from(s))
}

fn standing(ready: bool, slices: u32) -> Option<PodEndpoints> {
    Some(PodEndpoints { ready, slices })
}

#[test]
fn a_view_starts_with_what_is_known() {
    let hub = hub();
    hub.set_policy("shop", "grpc", text("server: {}\n"));
    let mut sub = hub.subscribe(&pod("shop", "api-1", "grpc"));
    assert_eq!(
        *sub.view().borrow(),
        View {
            policy: text("server: {}\n"),
            endpoints: None,
            rebalance: None,
        },
        "no endpoints before the namespace is listed"
    );
    hub.endpoints_listed(
        "shop",
        EndpointIndex::from_slices(&[slice("api", &[("api-1", true)])]),
    );
    assert!(sub.view().has_changed().unwrap());
    assert_eq!(sub.view().borrow_and_update().endpoints, standing(true, 1));
    // A second pod of the namespace starts with the listed slices.
    let mut other = hub.subscribe(&pod("shop", "api-2", "other"));
    assert_eq!(
        *other.view().borrow(),
        View {
            policy: None,
            endpoints: standing(false, 0),
            rebalance: None,
        }
    );
}

#[test]
fn a_policy_change_reaches_its_pods_and_no_others() {
    let hub = hub();
    let mut a = hub.subscribe(&pod("shop", "a", "grpc"));
    let mut b = hub.subscribe(&pod("shop", "b", "other"));
    let mut c = hub.subscribe(&pod("bank", "c", "grpc"));
    for sub in [&mut a, &mut b, &mut c] {
        sub.view().borrow_and_update();
    }
    hub.set_policy("shop", "grpc", text("v1"));
    assert!(a.view().has_changed().unwrap());
    assert_eq!(a.view().borrow_and_update().policy, text("v1"));
    assert!(!b.view().has_changed().unwrap(), "another policy");
    assert!(!c.view().has_changed().unwrap(), "the same name elsewhere");
    // The same text again is no change.
    hub.set_policy("shop", "grpc", text("v1"));
    assert!(!a.view().has_changed().unwrap());
    // Deleted: unknown again (the agent keeps what it has).
    hub.set_policy("shop", "grpc", None);
    assert_eq!(a.view().borrow_and_update().policy, None);
}

#[test]
fn a_relist_keeps_the_last_text_of_an_invalid_policy_and_forgets_deleted_ones() {
    let hub = hub();
    hub.set_policy("shop", "grpc", text("v1"));
    hub.set_policy("shop", "gone", text("g"));
    let mut a = hub.subscribe(&pod("shop", "a", "grpc"));
    let mut g = hub.subscribe(&pod("shop", "g", "gone"));
    let listed: HashMap<PolicyKey, Option<Arc<str>>> = [
        (("shop".into(), "grpc".into()), None),
        (("shop".into(), "new".into()), text("n")),
    ]
    .into();
    hub.replace_policies(listed);
    assert_eq!(a.view().borrow().policy, text("v1"), "invalid: kept");
    assert_eq!(g.view().borrow().policy, None, "gone");
    assert_eq!(hub.policy("shop", "new"), text("n"));
}

#[test]
fn an_endpoint_change_reaches_the_pods_it_concerns() {
    let hub = hub();
    let mut a = hub.subscribe(&pod("shop", "a", "grpc"));
    let mut b = hub.subscribe(&pod("shop", "b", "grpc"));
    hub.endpoints_listed(
        "shop",
        EndpointIndex::from_slices(&[slice("api", &[("a", true), ("b", true)])]),
    );
    a.view().borrow_and_update();
    b.view().borrow_and_update();
    // a terminates.
    let update = slice("api", &[("a", false), ("b", true)]);
    hub.endpoints_changed("shop", |index| index.apply(&update));
    assert_eq!(a.view().borrow_and_update().endpoints, standing(false, 1));
    assert!(!b.view().has_changed().unwrap());
    // Changes in a namespace never listed are dropped (its watch has not
    // synced: nothing is known there).
    hub.endpoints_changed("bank", |_| vec!["uid-a".into()]);
    assert!(!a.view().has_changed().unwrap());
}

#[test]
fn a_pod_stays_subscribed_while_any_of_its_streams_is_open() {
    let hub = hub();
    let first = hub.subscribe(&pod("shop", "a", "grpc"));
    let mut second = hub.subscribe(&pod("shop", "a", "grpc"));
    assert_eq!(hub.subscribed(), 1);
    drop(first);
    assert_eq!(hub.subscribed(), 1);
    hub.set_policy("shop", "grpc", text("v2"));
    assert_eq!(second.view().borrow().policy, text("v2"));
    drop(second);
    assert_eq!(hub.subscribed(), 0);
}

#[test]
fn a_namespace_is_watched_from_its_first_subscriber_until_it_retires_idle() {
    let started = Arc::new(Mutex::new(Vec::new()));
    let log = started.clone();
    let hub = Hub::new(
        Arc::new(Metrics::default()),
        Box::new(move |_, ns, count| log.lock().unwrap().push((ns, count))),
    );
    let a = hub.subscribe(&pod("shop", "a", "grpc"));
    let b = hub.subscribe(&pod("shop", "b", "grpc"));
    assert_eq!(started.lock().unwrap().len(), 1, "one watch per namespace");
    let count = started.lock().unwrap()[0].1.clone();
    assert_eq!(*count.borrow(), 2);
    assert!(!hub.retire_namespace("shop"), "busy");
    drop((a, b));
    assert_eq!(*count.borrow(), 0);
    assert!(hub.retire_namespace("shop"));
    assert_eq!(hub.namespaces(), 0);
    // The next subscriber starts a new watch.
    let _c = hub.subscribe(&pod("shop", "c", "grpc"));
    assert_eq!(started.lock().unwrap().len(), 2);
}

/// The agent's side of a stream: lines parsed as messages, and when each
/// arrived.
struct Agent {
    lines: tokio::io::Lines<BufReader<DuplexStream>>,
}

impl Agent {
    async fn next(&mut self) -> Message {
        let line = self.lines.next_line().await.unwrap().expect("a line");
        Message::from_line(line.as_bytes()).unwrap()
    }
}

/// Streams `pod`'s view from `hub` over an in-memory connection.
fn stream(hub: &Arc<Hub>, pod: &PodIdentity) -> (Agent, tokio::task::JoinHandle<()>) {
    let (agent, mut server) = tokio::io::duplex(64 << 10);
    let mut sub = hub.subscribe(pod);
    let timing = Timing {
        heartbeat: HEARTBEAT,
        write_timeout: Duration::from_secs(10),
    };
    let task = tokio::spawn(async move {
        let metrics = Metrics::default();
        let _ = send_view(sub.view(), &mut server, timing, &metrics).await;
    });
    let lines = BufReader::new(agent).lines();
    (Agent { lines }, task)
}

fn policy(s: &str) -> Message {
    Message::Policy { text: s.into() }
}

fn endpoints(ready: bool, slices: u32) -> Message {
    Message::Endpoints { ready, slices }
}

#[tokio::test(start_paused = true)]
async fn a_stream_starts_with_the_policy_then_the_endpoints_then_each_change() {
    let hub = hub();
    hub.set_policy("shop", "grpc", text("v1"));
    // The first subscriber of a namespace starts its watch, whose list
    // arrives after.
    let (mut agent, _task) = stream(&hub, &pod("shop", "a", "grpc"));
    hub.endpoints_listed(
        "shop",
        EndpointIndex::from_slices(&[slice("api", &[("a", true)])]),
    );
    assert_eq!(agent.next().await, policy("v1"));
    assert_eq!(agent.next().await, endpoints(true, 1));

    let started = Instant::now();
    hub.set_policy("shop", "grpc", text("v2"));
    assert_eq!(agent.next().await, policy("v2"));
    let update = slice("api", &[("a", false)]);
    hub.endpoints_changed("shop", |index| index.apply(&update));
    assert_eq!(agent.next().await, endpoints(false, 1));
    // Pushed at once: no timer was waited for.
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_gets_a_heartbeat_every_interval_and_only_then() {
    let hub = hub();
    hub.set_policy("shop", "grpc", text("v1"));
    let (mut agent, _task) = stream(&hub, &pod("shop", "a", "grpc"));
    let start = Instant::now();
    assert_eq!(agent.next().await, policy("v1"));
    assert_eq!(agent.next().await, Message::Heartbeat);
    assert_eq!(start.elapsed(), HEARTBEAT);
    assert_eq!(agent.next().await, Message::Heartbeat);
    assert_eq!(start.elapsed(), HEARTBEAT * 2);
    // A change resets the silence: the next heartbeat is an interval
    // after it.
    tokio::time::sleep(HEARTBEAT / 2).await;
    hub.set_policy("shop", "grpc", text("v2"));
    let changed = Instant::now();
    assert_eq!(agent.next().await, policy("v2"));
    assert_eq!(agent.next().await, Message::Heartbeat);
    assert_eq!(changed.elapsed(), HEARTBEAT);
}

#[tokio::test(start_paused = true)]
async fn nothing_unknown_is_sent_and_a_change_back_is_sent_again() {
    let hub = hub();
    let (mut agent, _task) = stream(&hub, &pod("shop", "a", "grpc"));
    // Nothing known: the first line is a heartbeat.
    assert_eq!(agent.next().await, Message::Heartbeat);
    hub.endpoints_listed("shop", EndpointIndex::default());
    assert_eq!(agent.next().await, endpoints(false, 0));
    hub.endpoints_changed("shop", |index| index.apply(&slice("api", &[("a", true)])));
    assert_eq!(agent.next().await, endpoints(true, 1));
    hub.endpoints_changed("shop", |index| index.apply(&slice("api", &[("a", false)])));
    assert_eq!(agent.next().await, endpoints(false, 1));
    hub.endpoints_changed("shop", |index| index.apply(&slice("api", &[("a", true)])));
    assert_eq!(agent.next().await, endpoints(true, 1));
    // Out and back in before the stream wrote: the agent is told the
    // last word only, here nothing new (the next line is a heartbeat).
    let before = Instant::now();
    hub.endpoints_changed("shop", |index| index.apply(&slice("api", &[("a", false)])));
    hub.endpoints_changed("shop", |index| index.apply(&slice("api", &[("a", true)])));
    assert_eq!(agent.next().await, Message::Heartbeat);
    assert_eq!(before.elapsed(), HEARTBEAT);
}

#[tokio::test(start_paused = true)]
async fn a_stream_whose_agent_stops_reading_ends_after_the_write_timeout() {
    let hub = hub();
    hub.set_policy("shop", "grpc", Some(Arc::from("x".repeat(1000))));
    // A 1 KiB pipe nobody reads.
    let (_agent, mut server) = tokio::io::duplex(1024);
    let mut sub = hub.subscribe(&pod("shop", "a", "grpc"));
    let timing = Timing {
        heartbeat: HEARTBEAT,
        write_timeout: Duration::from_secs(10),
    };
    let start = Instant::now();
    let ended = tokio::spawn(async move {
        let metrics = Metrics::default();
        send_view(sub.view(), &mut server, timing, &metrics).await
    });
    for i in 0..3 {
        hub.set_policy("shop", "grpc", Some(Arc::from(format!("{i}").repeat(1000))));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let error = ended.await.unwrap().unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    assert!(
        start.elapsed() <= Duration::from_secs(13),
        "{:?}",
        start.elapsed()
    );
}

/// `slice`, labelled as Service `service`'s.
fn service_slice(service: &str, name: &str, pods: &[(&str, bool)]) -> EndpointSlice {
    let mut s = slice(name, pods);
    s.metadata.labels = Some(
        [(
            crate::channel::endpoints::SERVICE_NAME_LABEL.to_string(),
            service.to_string(),
        )]
        .into(),
    );
    s
}

#[tokio::test(start_paused = true)]
async fn a_scale_up_is_told_once_to_the_ready_pods_of_its_service_only() {
    let hub = hub();
    let (mut a, _ta) = stream(&hub, &pod("shop", "a", "grpc"));
    let (mut other, _to) = stream(&hub, &pod("shop", "x", "grpc"));
    hub.endpoints_listed(
        "shop",
        EndpointIndex::from_slices(&[
            service_slice("api", "api-1", &[("a", true), ("b", true)]),
            service_slice("admin", "admin-1", &[("x", true)]),
        ]),
    );
    assert_eq!(a.next().await, endpoints(true, 1));
    assert_eq!(other.next().await, endpoints(true, 1));
    let counts = hub.services("shop").unwrap();
    assert_eq!(
        (counts["api"].ready, counts["admin"].ready),
        (2, 1),
        "{counts:?}"
    );
    // b turned ready in the growth: it is not told.
    let (mut b, _tb) = stream(&hub, &pod("shop", "b", "grpc"));
    assert_eq!(b.next().await, endpoints(true, 1));
    let told = hub.rebalance("shop", "api", 1, 2, &["uid-a".to_string()]);
    assert_eq!(told, [(("shop".to_string(), "grpc".to_string()), 1)]);
    assert_eq!(
        a.next().await,
        Message::Rebalance {
            service: "api".into(),
            from: 1,
            to: 2
        }
    );
    // Not the other Service's pod, nor the new one: their next line is a
    // heartbeat.
    let start = Instant::now();
    assert_eq!(other.next().await, Message::Heartbeat);
    assert_eq!(start.elapsed(), HEARTBEAT);
    assert_eq!(b.next().await, Message::Heartbeat);
    // A stream opened after (the agent reconnecting) is not told again.
    let (mut again, _tg) = stream(&hub, &pod("shop", "a", "grpc"));
    assert_eq!(again.next().await, endpoints(true, 1));
    let start = Instant::now();
    assert_eq!(again.next().await, Message::Heartbeat);
    assert_eq!(start.elapsed(), HEARTBEAT);
}
