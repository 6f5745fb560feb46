//! An in-process fake Kubernetes API server, good enough to run the real
//! kube-runtime `Controller` end to end: list and watch with
//! resourceVersions (watches replay from the requested version, then
//! stream), server-side apply (a deep merge, refused with `409 Conflict`
//! when it would change a field another field manager owns, unless
//! forced: see [`super::managed_fields`] for the model and its limits),
//! merge and strategic merge patches (both as JSON merge patches), the
//! status subresource (status ignored on the main resource, `generation`
//! bumped on spec changes only), equality label selectors, metadata-only
//! lists, JSON patches, and owner references (deleting an object deletes
//! its dependents), dry-run creates (`dryRun=All`: answered, not stored),
//! and an admission check a test sets ([`FakeApi::admit_creates`]).
//! Each write reads, checks and stores under one lock,
//! so concurrent writers see each other as with a real server. It is a
//! tower service handed to `kube::Client::new`, so no sockets are
//! involved.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use super::managed_fields::{Conflict, ManagedFields};

type Key = (String, String, String); // resource, namespace, name
type RespBody = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    fields: BTreeMap<Key, ManagedFields>,
    log: Vec<Change>,
    holds: BTreeMap<String, Arc<Hold>>,
    verbs: BTreeMap<String, BTreeSet<&'static str>>,
    creates: Vec<Created>,
    admission: Option<Arc<Admission>>,
}

/// A test's admission check: a status and message refuse the create.
type Admission = dyn Fn(&str, &str, &Value) -> Option<(StatusCode, String)> + Send + Sync;

/// One create request, as the server received it.
#[derive(Clone, Debug)]
pub(crate) struct Created {
    /// The resource (`pods`).
    pub resource: String,
    /// The namespace.
    pub namespace: String,
    /// Whether it was a dry run (`dryRun=All`).
    pub dry_run: bool,
    /// The object sent.
    pub object: Value,
}

/// How a request writes, for field ownership.
enum Write<'a> {
    /// Server-side apply of `applied`.
    Apply {
        manager: &'a str,
        force: bool,
        applied: &'a Value,
    },
    /// Any other write.
    Update { manager: &'a str },
}

/// The manager of a write that names none (the real server derives one
/// from the user agent).
const UNNAMED_MANAGER: &str = "unknown";

/// Writes of one field manager, waiting in the server.
struct Hold {
    waiting: watch::Sender<usize>,
    released: watch::Sender<bool>,
}

/// Holds a field manager's writes (creates, replaces, patches) in the
/// server, unprocessed, until released or dropped: a test can let one
/// client read, then another write, and only then the first write (a
/// stale read).
pub(crate) struct HeldWrites {
    api: FakeApi,
    manager: String,
    hold: Arc<Hold>,
}

impl HeldWrites {
    /// Completes once a write is being held.
    pub(crate) async fn arrived(&self) {
        let _ = self.hold.waiting.subscribe().wait_for(|n| *n > 0).await;
    }

    /// Lets the held writes, and later ones, through.
    pub(crate) fn release(self) {}
}

impl Drop for HeldWrites {
    fn drop(&mut self) {
        self.api.lock().holds.remove(&self.manager);
        self.hold.released.send_replace(true);
    }
}

/// What a cut [`Link`] does to requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// They wait, unanswered, until the link heals (a partition).
    Hang,
    /// They are answered `503 Service Unavailable`.
    Refuse,
}

/// One client's link to the server (see [`FakeApi::linked_client`]).
#[derive(Clone)]
pub(crate) struct Link(Arc<watch::Sender<Option<Cut>>>);

impl Link {
    /// Cuts the link: requests sent from now on are treated as `how` says.
    pub(crate) fn cut(&self, how: Cut) {
        self.0.send_replace(Some(how));
    }

    /// Heals the link; held requests go through.
    pub(crate) fn heal(&self) {
        self.0.send_replace(None);
    }
}

/// The fake API server. Clones share state.
#[derive(Clone)]
pub(crate) struct FakeApi {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
}

/// Resources whose status is only written through `/status`.
const STATUS_SUBRESOURCE: &[&str] = &["keepalivepolicies"];

impl FakeApi {
    pub(crate) fn new() -> Self {
        FakeApi {
            state: Arc::default(),
            changes: broadcast::channel(4096).0,
        }
    }

    /// A kube client talking to this server.
    pub(crate) fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        kube::Client::new(service, "default")
    }

    /// A kube client whose link to this server a test can cut and heal.
    pub(crate) fn linked_client(&self) -> (kube::Client, Link) {
        let (api, link) = (self.clone(), Link(Arc::new(watch::channel(None).0)));
        let state = link.0.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let (api, mut state) = (api.clone(), state.subscribe());
            async move {
                let cut = *state.wait_for(|cut| *cut != Some(Cut::Hang)).await.unwrap();
                if cut == Some(Cut::Refuse) {
                    let message = "the server is currently unable to handle the request";
                    return Ok(status(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceUnavailable",
                        message,
                    ));
                }
                Ok::<_, Infallible>(api.handle(req).await)
            }
        });
        (kube::Client::new(service, "default"), link)
    }

    /// The RBAC verbs of every request made for `resource` so far.
    pub(crate) fn verbs(&self, resource: &str) -> BTreeSet<&'static str> {
        self.lock().verbs.get(resource).cloned().unwrap_or_default()
    }

    /// Every create request of `resource` so far, in order.
    pub(crate) fn creates(&self, resource: &str) -> Vec<Created> {
        self.lock()
            .creates
            .iter()
            .filter(|c| c.resource == resource)
            .cloned()
            .collect()
    }

    /// Admission control for creates from now on: `check(resource,
    /// namespace, object)` returning a status and message refuses the
    /// create with them (403: as an admission plugin's denial), dry runs
    /// included.
    pub(crate) fn admit_creates(
        &self,
        check: impl Fn(&str, &str, &Value) -> Option<(StatusCode, String)> + Send + Sync + 'static,
    ) {
        self.lock().admission = Some(Arc::new(check));
    }

    /// The stored object, if any.
    pub(crate) fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&key(resource, namespace, name))
            .cloned()
    }

    /// The field managers owning `field` (`.spec.holderIdentity`) of the
    /// stored object.
    pub(crate) fn owners(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        field: &str,
    ) -> Vec<String> {
        self.lock()
            .fields
            .get(&key(resource, namespace, name))
            .map(|fields| fields.owners(field))
            .unwrap_or_default()
    }

    /// Holds `field_manager`'s writes until the result is released or
    /// dropped.
    pub(crate) fn hold_writes(&self, field_manager: &str) -> HeldWrites {
        let hold = Arc::new(Hold {
            waiting: watch::channel(0).0,
            released: watch::channel(false).0,
        });
        self.lock()
            .holds
            .insert(field_manager.to_string(), hold.clone());
        HeldWrites {
            api: self.clone(),
            manager: field_manager.to_string(),
            hold,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Every stored object of a resource.
    pub(crate) fn list(&self, resource: &str) -> Vec<Value> {
        let state = self.lock();
        state
            .objects
            .iter()
            .filter(|(k, _)| k.0 == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    async fn handle(&self, req: Request<Body>) -> Response<RespBody> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let content_type = req
            .headers()
            .get("content-type")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        let json_patch = content_type.starts_with(b"application/json-patch");
        let apply = content_type.starts_with(b"application/apply-patch");
        let accept = req
            .headers()
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let query: BTreeMap<String, String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), decode(v)))
            .collect();
        let body = req.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        };
        let Some(path) = Path::parse(uri.path()) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "no such path");
        };
        let metadata_only = accept.contains("as=PartialObjectMetadata");
        let manager = query.get("fieldManager").map(String::as_str);
        let verb = match (&method, &path.name) {
            (&Method::GET, None) if query.get("watch").map(String::as_str) == Some("true") => {
                "watch"
            }
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => "other",
        };
        self.lock()
            .verbs
            .entry(path.resource.clone())
            .or_default()
            .insert(verb);
        if !matches!(verb, "get" | "list" | "watch") {
            let hold = manager.and_then(|m| self.lock().holds.get(m).cloned());
            if let Some(hold) = hold {
                let mut released = hold.released.subscribe();
                hold.waiting.send_modify(|n| *n += 1);
                let _ = released.wait_for(|r| *r).await;
            }
        }
        let manager = manager.unwrap_or(UNNAMED_MANAGER);
        match (method, &path.name) {
            (Method::GET, None) if query.get("watch").map(String::as_str) == Some("true") => {
                self.watch(&path, &query, metadata_only)
            }
            (Method::GET, None) => self.list_response(&path, &query, metadata_only),
            (Method::GET, Some(name)) => match self.get(&path.resource, &path.namespace, name) {
                Some(o) => json_response(StatusCode::OK, &o),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} {name} not found", path.resource),
                ),
            },
            (Method::POST, None) => {
                let dry_run = query.get("dryRun").map(String::as_str) == Some("All");
                self.create(&path, manager, body, dry_run)
            }
            (Method::PUT, Some(name)) => self.replace(&path, name, manager, body),
            (Method::PATCH, Some(name)) if json_patch => {
                self.json_patch(&path, name, manager, body)
            }
            (Method::PATCH, Some(name)) if apply => {
                if !query.contains_key("fieldManager") {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        "fieldManager: Required value: is required for apply patch",
                    );
                }
                let force = query.get("force").map(String::as_str) == Some("true");
                self.patch(&path, name, manager, Some(force), body)
            }
            (Method::PATCH, Some(name)) => self.patch(&path, name, manager, None, body),
            (Method::DELETE, Some(name)) => {
                match self.delete(&path.resource, &path.namespace, name) {
                    Some(o) => json_response(StatusCode::OK, &o),
                    None => status(StatusCode::NOT_FOUND, "NotFound", "not found"),
                }
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unsupported",
            ),
        }
    }

    fn list_response(
        &self,
        path: &Path,
        query: &BTreeMap<String, String>,
        metadata_only: bool,
    ) -> Response<RespBody> {
        let state = self.lock();
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|(k, v)| {
                k.0 == path.resource && path.matches_namespace(&k.1) && selects(&selector, v)
            })
            .map(|(_, v)| if metadata_only { partial(v) } else { v.clone() })
            .collect();
        let kind = if metadata_only {
            "PartialObjectMetadataList"
        } else {
            "List"
        };
        json_response(
            StatusCode::OK,
            &json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": state.rv.to_string()}, "items": items}),
        )
    }

    fn watch(
        &self,
        path: &Path,
        query: &BTreeMap<String, String>,
        metadata_only: bool,
    ) -> Response<RespBody> {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let selector = query.get("labelSelector").cloned().unwrap_or_default();
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let mut live = self.changes.subscribe();
        let backlog: Vec<Change> = self
            .lock()
            .log
            .iter()
            .filter(|c| c.rv > from)
            .cloned()
            .collect();
        let path = path.clone();
        let wanted = move |c: &Change| {
            c.resource == path.resource
                && path.matches_namespace(c.object["metadata"]["namespace"].as_str().unwrap_or(""))
                && selects(&selector, &c.object)
        };
        let frame = move |c: &Change| {
            let object = if metadata_only {
                partial(&c.object)
            } else {
                c.object.clone()
            };
            let mut line = serde_json::to_vec(&json!({"type": c.kind, "object": object})).unwrap();
            line.push(b'\n');
            Bytes::from(line)
        };
        tokio::spawn(async move {
            let mut last = from;
            for c in backlog.iter().filter(|c| wanted(c)) {
                last = c.rv;
                if tx.send(frame(c)).is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(c) if c.rv > last && wanted(&c) => {
                        last = c.rv;
                        if tx.send(frame(&c)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
            .unwrap()
    }

    fn create(
        &self,
        path: &Path,
        manager: &str,
        mut object: Value,
        dry_run: bool,
    ) -> Response<RespBody> {
        let mut state = self.lock();
        state.creates.push(Created {
            resource: path.resource.clone(),
            namespace: path.namespace.clone(),
            dry_run,
            object: object.clone(),
        });
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name is required",
            );
        };
        let refused = state
            .admission
            .clone()
            .and_then(|check| check(&path.resource, &path.namespace, &object));
        if let Some((code, message)) = refused {
            let message = match code {
                StatusCode::FORBIDDEN => {
                    format!("{} \"{name}\" is forbidden: {message}", path.resource)
                }
                _ => message,
            };
            let reason = code.canonical_reason().unwrap_or_default().replace(' ', "");
            return status(code, &reason, &message);
        }
        if dry_run {
            object["metadata"]["namespace"] = json!(path.namespace);
            return json_response(StatusCode::CREATED, &object);
        }
        if state.objects.contains_key(&path.key(&name)) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("{name} already exists"),
            );
        }
        if STATUS_SUBRESOURCE.contains(&path.resource.as_str()) {
            strip(&mut object, "status");
        }
        let how = Write::Update { manager };
        self.write(&mut state, path, &name, object, None, how)
    }

    fn replace(&self, path: &Path, name: &str, manager: &str, object: Value) -> Response<RespBody> {
        let mut state = self.lock();
        let Some(current) = state.objects.get(&path.key(name)).cloned() else {
            return status(StatusCode::NOT_FOUND, "NotFound", "not found");
        };
        let wanted = object["metadata"]["resourceVersion"].as_str();
        if wanted.is_some() && wanted != current["metadata"]["resourceVersion"].as_str() {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified",
            );
        }
        let how = Write::Update { manager };
        self.write(&mut state, path, name, object, Some(current), how)
    }

    /// RFC 6902 patches; a failed `test` is a 422 like the real server's.
    fn json_patch(&self, path: &Path, name: &str, manager: &str, ops: Value) -> Response<RespBody> {
        let mut state = self.lock();
        let Some(current) = state.objects.get(&path.key(name)).cloned() else {
            return status(StatusCode::NOT_FOUND, "NotFound", "not found");
        };
        let patch: json_patch::Patch = match serde_json::from_value(ops) {
            Ok(p) => p,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        };
        let mut next = current.clone();
        if let Err(e) = json_patch::patch(&mut next, &patch) {
            return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e.to_string());
        }
        let how = Write::Update { manager };
        self.write(&mut state, path, name, next, Some(current), how)
    }

    /// Apply (`apply` is `Some(force)`) and merge patches, both as a deep
    /// merge.
    fn patch(
        &self,
        path: &Path,
        name: &str,
        manager: &str,
        apply: Option<bool>,
        patch: Value,
    ) -> Response<RespBody> {
        let how = |applied| match apply {
            Some(force) => Write::Apply {
                manager,
                force,
                applied,
            },
            None => Write::Update { manager },
        };
        let mut state = self.lock();
        let current = state.objects.get(&path.key(name)).cloned();
        if path.subresource.as_deref() == Some("status") {
            let Some(current) = current else {
                return status(StatusCode::NOT_FOUND, "NotFound", "not found");
            };
            let mut next = current.clone();
            merge(&mut next["status"], &patch["status"]);
            let applied = json!({"status": patch["status"]});
            let how = how(&applied);
            return self.write(&mut state, path, name, next, Some(current), how);
        }
        let mut next = current.clone().unwrap_or_else(|| json!({}));
        let mut patch = patch;
        if STATUS_SUBRESOURCE.contains(&path.resource.as_str()) {
            strip(&mut patch, "status");
        }
        merge(&mut next, &patch);
        let how = how(&patch);
        self.write(&mut state, path, name, next, current, how)
    }

    /// Checks field ownership for `how`, then stores `object` in place of
    /// `current`, filling in server-owned metadata, logs the change and
    /// answers with the stored object.
    fn write(
        &self,
        state: &mut State,
        path: &Path,
        name: &str,
        mut object: Value,
        current: Option<Value>,
        how: Write<'_>,
    ) -> Response<RespBody> {
        if let Some(cur) = &current
            && path.subresource.is_none()
            && STATUS_SUBRESOURCE.contains(&path.resource.as_str())
        {
            match cur.get("status") {
                Some(s) => object["status"] = s.clone(),
                None => strip(&mut object, "status"),
            }
        }
        let key = path.key(name);
        let mut fields = match &current {
            Some(_) => state.fields.get(&key).cloned().unwrap_or_default(),
            None => ManagedFields::default(),
        };
        match how {
            Write::Apply {
                manager,
                force,
                applied,
            } => {
                if let Err(conflicts) =
                    fields.apply(manager, force, current.as_ref(), applied, &object)
                {
                    return conflict(&conflicts);
                }
            }
            Write::Update { manager } => fields.update(manager, current.as_ref(), &object),
        }
        state.fields.insert(key.clone(), fields);
        state.rv += 1;
        let rv = state.rv;
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        if !path.namespace.is_empty() {
            meta["namespace"] = json!(path.namespace);
        }
        meta["resourceVersion"] = json!(rv.to_string());
        match &current {
            Some(cur) => {
                for k in ["uid", "creationTimestamp"] {
                    meta[k] = cur["metadata"][k].clone();
                }
                let generation = cur["metadata"]["generation"].as_i64().unwrap_or(1);
                let spec_changed =
                    path.subresource.is_none() && cur.get("spec") != object.get("spec");
                object["metadata"]["generation"] = json!(generation + i64::from(spec_changed));
            }
            None => {
                state.uid += 1;
                meta["uid"] = json!(format!("uid-{}", state.uid));
                meta["creationTimestamp"] = json!(format!(
                    "2024-01-01T00:{:02}:{:02}Z",
                    state.uid / 60 % 60,
                    state.uid % 60
                ));
                meta["generation"] = json!(1);
            }
        }
        state.objects.insert(key, object.clone());
        let change = Change {
            rv,
            resource: path.resource.clone(),
            kind: if current.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            object: object.clone(),
        };
        state.log.push(change.clone());
        let _ = self.changes.send(change);
        let code = if current.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        json_response(code, &object)
    }

    /// Deletes an object and, through owner references, its dependents.
    pub(crate) fn delete(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let removed = {
            let mut state = self.lock();
            let key = key(resource, namespace, name);
            let object = state.objects.remove(&key)?;
            state.fields.remove(&key);
            state.rv += 1;
            let change = Change {
                rv: state.rv,
                resource: resource.to_string(),
                kind: "DELETED",
                object: object.clone(),
            };
            state.log.push(change.clone());
            let _ = self.changes.send(change);
            object
        };
        let uid = removed["metadata"]["uid"].clone();
        let dependents: Vec<Key> = {
            let state = self.lock();
            state
                .objects
                .iter()
                .filter(|(_, v)| {
                    v["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|o| o.iter().any(|r| r["uid"] == uid))
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        for (r, ns, n) in dependents {
            self.delete(&r, &ns, &n);
        }
        Some(removed)
    }
}

#[derive(Clone, Debug)]
struct Path {
    resource: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

impl Path {
    fn parse(path: &str) -> Option<Path> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let rest = match *parts.first()? {
            "api" => &parts[2..],
            "apis" => &parts[3..],
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
            _ => (String::new(), rest),
        };
        Some(Path {
            resource: rest.first()?.to_string(),
            namespace,
            name: rest.get(1).map(|s| s.to_string()),
            subresource: rest.get(2).map(|s| s.to_string()),
        })
    }

    fn key(&self, name: &str) -> Key {
        key(&self.resource, &self.namespace, name)
    }

    /// An all-namespaces request matches any namespace.
    fn matches_namespace(&self, ns: &str) -> bool {
        self.namespace.is_empty() || self.namespace == ns
    }
}

fn key(resource: &str, namespace: &str, name: &str) -> Key {
    (
        resource.to_string(),
        namespace.to_string(),
        name.to_string(),
    )
}

/// Equality-based selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-joined.
fn selects(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k].as_str() == Some(v)
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k).is_none()
        } else {
            labels.get(term).is_some()
        }
    })
}

fn partial(object: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]})
}

fn strip(object: &mut Value, field: &str) {
    if let Some(o) = object.as_object_mut() {
        o.remove(field);
    }
}

/// JSON merge patch (RFC 7386): maps merge, null deletes, the rest replaces.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: StatusCode, value: &Value) -> Response<RespBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BodyExt::boxed_unsync(Full::new(Bytes::from(
            serde_json::to_vec(value).unwrap(),
        ))))
        .unwrap()
}

/// The real server's answer to a conflicting apply.
fn conflict(conflicts: &[Conflict]) -> Response<RespBody> {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field}))
        .collect();
    let listed: Vec<String> = conflicts
        .iter()
        .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field))
        .collect();
    let message = format!(
        "Apply failed with {} conflict{}: {}",
        conflicts.len(),
        if conflicts.len() == 1 { "" } else { "s" },
        listed.join("\n")
    );
    json_response(
        StatusCode::CONFLICT,
        &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message, "reason": "Conflict", "details": {"causes": causes}, "code": 409}),
    )
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<RespBody> {
    json_response(
        code,
        &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}),
    )
}
