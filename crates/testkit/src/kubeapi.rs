//! A fake Kubernetes API server for the session backend's tests and benchmark: the part of the
//! real protocol Switchboard uses, over HTTP on loopback.
//!
//! - Pods: create (409 AlreadyExists, 422 on a bad name), get (404), list (label and field
//!   selectors, `limit`/`continue` pages), delete (optionally graceful: `deletionTimestamp` first),
//!   and watch (`?watch=true`, newline-delimited JSON events, from a `resourceVersion` with replay
//!   of the history since, `410 Gone` as an ERROR event when that is too old, `timeoutSeconds`).
//! - PersistentVolumeClaims: create (409), get, list, delete.
//! - Scripted phase transitions per image: a created pod is scheduled, pulls, runs and turns
//!   Ready on a timetable, or fails the way a real kubelet reports it (`ErrImagePull` then
//!   `ImagePullBackOff`, `CrashLoopBackOff`, `Unschedulable`).
//!
//! It is no cluster: nothing runs, and a ready pod's IP is whatever the test says.
#![allow(clippy::unwrap_used)] // test harness: a malformed object is a bug in the test, and panics

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Events kept for watches that resume from an older resourceVersion.
const HISTORY: usize = 50_000;

/// How a created pod behaves, chosen by its first container's image.
#[derive(Clone, Debug)]
pub enum Script {
    /// Scheduled, running and Ready after these delays (each from the previous step).
    Ready {
        /// Create → scheduled.
        schedule: Duration,
        /// Scheduled → containers running.
        pull: Duration,
        /// Running → Ready.
        start: Duration,
    },
    /// Scheduled, then `ErrImagePull`, then `ImagePullBackOff`.
    ImagePullFails {
        /// Scheduled → ErrImagePull.
        after: Duration,
    },
    /// `PodScheduled=False`, reason `Unschedulable`.
    Unschedulable,
    /// Runs, then `CrashLoopBackOff`.
    CrashLoop {
        /// Running → CrashLoopBackOff.
        after: Duration,
    },
    /// Scheduled and stuck in `ContainerCreating` (a slow pull).
    StuckPulling,
    /// Running but never Ready.
    NeverReady,
}

impl Script {
    /// Ready at once (three steps a millisecond apart).
    pub fn ready() -> Script {
        let ms = Duration::from_millis(1);
        Script::Ready {
            schedule: ms,
            pull: ms,
            start: ms,
        }
    }
}

/// Request counts, for tests that assert how much a start cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// POST pods.
    pub creates: u64,
    /// GET pod.
    pub gets: u64,
    /// GET pods (list).
    pub lists: u64,
    /// GET pods?watch.
    pub watches: u64,
    /// DELETE pod.
    pub deletes: u64,
    /// 409s answered.
    pub conflicts: u64,
}

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    ns: String,
    kind: &'static str,
    type_: &'static str,
    object: Value,
}

#[derive(Debug)]
struct Inner {
    rv: u64,
    pods: BTreeMap<(String, String), Value>,
    claims: BTreeMap<(String, String), Value>,
    history: VecDeque<Event>,
    scripts: Vec<(String, Script)>,
    default_script: Script,
    pod_ip: String,
    delete_grace: Duration,
    counts: Counts,
    uid: u64,
}

#[derive(Clone, Debug)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<Event>,
}

/// A running fake API server; stops when dropped.
#[derive(Debug)]
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Starts on a free loopback port.
    pub async fn start() -> FakeApiServer {
        let (events, _) = broadcast::channel(65_536);
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                rv: 1000,
                pods: BTreeMap::new(),
                claims: BTreeMap::new(),
                history: VecDeque::new(),
                scripts: Vec::new(),
                default_script: Script::ready(),
                pod_ip: "127.0.0.1".into(),
                delete_grace: Duration::ZERO,
                counts: Counts::default(),
                uid: 0,
            })),
            events,
        };
        let app = Router::new()
            .route("/version", get(|| async { ok_json(&json!({ "major": "1", "minor": "33", "gitVersion": "v1.33.0-switchboard-fake", "platform": "linux/amd64" })) }))
            .route("/api", get(|| async { ok_json(&json!({ "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443" }] })) }))
            .route("/apis", get(|| async { ok_json(&json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [] })) }))
            .route("/api/v1", get(|| async { ok_json(&discovery()) }))
            .route(
                "/api/v1/namespaces/{ns}/pods",
                get(list_pods).post(create_pod),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}",
                get(get_pod).delete(delete_pod),
            )
            .route(
                "/api/v1/namespaces/{ns}/persistentvolumeclaims",
                get(list_claims).post(create_claim),
            )
            .route(
                "/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}",
                get(get_claim).delete(delete_claim),
            )
            .fallback(|| async {
                status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            // Real API servers (Go) disable Nagle; without it every streamed watch event after
            // the first waits for a delayed ACK (40 ms).
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        FakeApiServer { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file pointing at this server (for code that reads one).
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n",
            self.url()
        )
    }

    /// Pods whose first image contains `image` follow `script`.
    pub fn script(&self, image: &str, script: Script) {
        self.shared
            .inner
            .lock()
            .unwrap()
            .scripts
            .push((image.to_string(), script));
    }

    /// The script of images no [`script`](Self::script) matches (default: ready at once).
    pub fn default_script(&self, script: Script) {
        self.shared
            .inner
            .lock()
            .expect("fake API state")
            .default_script = script;
    }

    /// The IP that running pods get (default 127.0.0.1).
    pub fn pod_ip(&self, ip: &str) {
        self.shared.inner.lock().expect("fake API state").pod_ip = ip.to_string();
    }

    /// Deletion takes this long: the pod shows a deletionTimestamp first (default: at once).
    pub fn delete_grace(&self, grace: Duration) {
        self.shared
            .inner
            .lock()
            .expect("fake API state")
            .delete_grace = grace;
    }

    /// Request counts so far.
    pub fn counts(&self) -> Counts {
        self.shared.inner.lock().expect("fake API state").counts
    }

    /// The pod `ns/name`, if it exists.
    pub fn pod(&self, ns: &str, name: &str) -> Option<Pod> {
        let inner = self.shared.inner.lock().expect("fake API state");
        inner
            .pods
            .get(&(ns.to_string(), name.to_string()))
            .map(|v| serde_json::from_value(v.clone()).unwrap())
    }

    /// Names of the pods in `ns`.
    pub fn pod_names(&self, ns: &str) -> Vec<String> {
        let inner = self.shared.inner.lock().expect("fake API state");
        inner
            .pods
            .keys()
            .filter(|(n, _)| n == ns)
            .map(|(_, name)| name.clone())
            .collect()
    }

    /// Stores `pod` as it is (status included), as if it had been there all along; no script runs.
    pub fn insert(&self, pod: Pod) {
        let mut v = serde_json::to_value(pod).unwrap();
        let mut inner = self.shared.inner.lock().expect("fake API state");
        let ns = v["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        v["metadata"]["namespace"] = json!(ns);
        let name = v["metadata"]["name"]
            .as_str()
            .expect("a pod name")
            .to_string();
        inner.uid += 1;
        v["metadata"]["uid"] = json!(format!("uid-{}", inner.uid));
        v["metadata"]["creationTimestamp"]
            .as_str()
            .is_none()
            .then(|| v["metadata"]["creationTimestamp"] = json!(now()));
        let ev = commit(&mut inner, &self.shared.events, &ns, "Pod", "ADDED", v);
        inner.pods.insert((ns, name), ev);
    }

    /// Changes pod `ns/name` as a kubelet or the scheduler would (evict it, fail it …).
    pub fn update(&self, ns: &str, name: &str, f: impl FnOnce(&mut Pod)) {
        update(&self.shared, ns, name, |v| {
            let mut pod: Pod = serde_json::from_value(v.clone()).unwrap();
            f(&mut pod);
            *v = serde_json::to_value(pod).unwrap();
        });
    }

    /// A PersistentVolumeClaim `ns/name` that exists already, annotated as `user`'s (someone
    /// made it by hand, or another user's name hashed alike).
    pub fn insert_claim(&self, ns: &str, name: &str, user: &str) {
        let mut inner = self.shared.inner.lock().expect("fake API state");
        let v = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": name,
                "namespace": ns,
                "annotations": { "switchboard.io/user": user },
            },
            "spec": {},
            "status": { "phase": "Bound" },
        });
        let v = commit(
            &mut inner,
            &self.shared.events,
            ns,
            "PersistentVolumeClaim",
            "ADDED",
            v,
        );
        inner.claims.insert((ns.to_string(), name.to_string()), v);
    }

    /// Whether PersistentVolumeClaim `ns/name` exists.
    pub fn has_claim(&self, ns: &str, name: &str) -> bool {
        let inner = self.shared.inner.lock().expect("fake API state");
        inner
            .claims
            .contains_key(&(ns.to_string(), name.to_string()))
    }

    /// Removes pod `ns/name` at once (as if its node vanished and the pod was force-deleted).
    pub fn remove(&self, ns: &str, name: &str) {
        let mut inner = self.shared.inner.lock().expect("fake API state");
        if let Some(v) = inner.pods.remove(&(ns.to_string(), name.to_string())) {
            commit(&mut inner, &self.shared.events, ns, "Pod", "DELETED", v);
        }
    }
}

/// `GET /api/v1`: the resources this server has (for clients that discover, such as kubectl).
fn discovery() -> Value {
    let res = |name: &str, singular: &str, kind: &str, short: &str| {
        json!({ "name": name, "singularName": singular, "namespaced": true, "kind": kind,
            "verbs": ["create", "delete", "get", "list", "watch"], "shortNames": [short] })
    };
    json!({ "kind": "APIResourceList", "groupVersion": "v1", "resources": [
        res("pods", "pod", "Pod", "po"),
        res("persistentvolumeclaims", "persistentvolumeclaim", "PersistentVolumeClaim", "pvc"),
    ] })
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .expect("a time after 1970")
        .to_string()
}

/// Bumps the resourceVersion, stamps `object`, records and broadcasts the event; returns the
/// stamped object.
fn commit(
    inner: &mut Inner,
    events: &broadcast::Sender<Event>,
    ns: &str,
    kind: &'static str,
    type_: &'static str,
    mut object: Value,
) -> Value {
    inner.rv += 1;
    object["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
    object["kind"] = json!(kind);
    object["apiVersion"] = json!("v1");
    let ev = Event {
        rv: inner.rv,
        ns: ns.to_string(),
        kind,
        type_,
        object: object.clone(),
    };
    if inner.history.len() == HISTORY {
        inner.history.pop_front();
    }
    inner.history.push_back(ev.clone());
    let _ = events.send(ev);
    object
}

fn update(shared: &Shared, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> bool {
    let mut inner = shared.inner.lock().expect("fake API state");
    let key = (ns.to_string(), name.to_string());
    let Some(mut v) = inner.pods.get(&key).cloned() else {
        return false;
    };
    f(&mut v);
    let v = commit(&mut inner, &shared.events, ns, "Pod", "MODIFIED", v);
    inner.pods.insert(key, v);
    true
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(v: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    watch: Option<String>,
    resource_version: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    timeout_seconds: Option<u64>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

fn matches(q: &ListQuery, obj: &Value) -> bool {
    let meta = &obj["metadata"];
    if let Some(fs) = q.field_selector.as_deref().filter(|s| !s.is_empty()) {
        for term in fs.split(',') {
            let (k, v) = term.split_once('=').unwrap_or((term, ""));
            let v = v.trim_start_matches('=');
            let actual = match k {
                "metadata.name" => meta["name"].as_str(),
                "metadata.namespace" => meta["namespace"].as_str(),
                "status.phase" => obj["status"]["phase"].as_str(),
                _ => None,
            };
            if actual != Some(v) {
                return false;
            }
        }
    }
    if let Some(ls) = q.label_selector.as_deref().filter(|s| !s.is_empty()) {
        for term in ls.split(',') {
            let (k, v) = term.split_once('=').unwrap_or((term, ""));
            let v = v.trim_start_matches('=');
            if meta["labels"][k].as_str() != Some(v) {
                return false;
            }
        }
    }
    true
}

async fn list_pods(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if matches!(q.watch.as_deref(), Some("true" | "1")) {
        s.inner.lock().expect("fake API state").counts.watches += 1;
        return watch(s, ns, "Pod", q);
    }
    let mut inner = s.inner.lock().expect("fake API state");
    inner.counts.lists += 1;
    list(&inner.pods, inner.rv, &ns, "PodList", &q)
}

async fn list_claims(
    State(s): State<Shared>,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if matches!(q.watch.as_deref(), Some("true" | "1")) {
        return watch(s, ns, "PersistentVolumeClaim", q);
    }
    let inner = s.inner.lock().expect("fake API state");
    list(
        &inner.claims,
        inner.rv,
        &ns,
        "PersistentVolumeClaimList",
        &q,
    )
}

fn list(
    map: &BTreeMap<(String, String), Value>,
    rv: u64,
    ns: &str,
    kind: &str,
    q: &ListQuery,
) -> Response {
    let start = (ns.to_string(), q.continue_.clone().unwrap_or_default());
    let limit = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut next = None;
    for ((n, name), v) in map.range(start..) {
        if n != ns {
            break;
        }
        if q.continue_.as_deref() == Some(name.as_str()) {
            continue;
        }
        if !matches(q, v) {
            continue;
        }
        if items.len() == limit {
            next = items
                .last()
                .and_then(|v: &&Value| v["metadata"]["name"].as_str())
                .map(str::to_string);
            break;
        }
        items.push(v);
    }
    let mut meta = json!({ "resourceVersion": rv.to_string() });
    if let Some(c) = next {
        meta["continue"] = json!(c);
    }
    ok_json(&json!({ "kind": kind, "apiVersion": "v1", "metadata": meta, "items": items }))
}

fn watch(s: Shared, ns: String, kind: &'static str, q: ListQuery) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
    // Subscribe and read the history under one lock, so no event falls between them.
    let (mut live, replay, too_old) = {
        let inner = s.inner.lock().expect("fake API state");
        let live = s.events.subscribe();
        let from: Option<u64> = q
            .resource_version
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "0")
            .and_then(|v| v.parse().ok());
        match from {
            None => {
                let map = if kind == "Pod" {
                    &inner.pods
                } else {
                    &inner.claims
                };
                let now: Vec<Event> = map
                    .iter()
                    .filter(|((n, _), v)| *n == ns && matches(&q, v))
                    .map(|(_, v)| Event {
                        rv: inner.rv,
                        ns: ns.clone(),
                        kind,
                        type_: "ADDED",
                        object: v.clone(),
                    })
                    .collect();
                (live, now, false)
            }
            Some(from) => {
                let oldest = inner.history.front().map(|e| e.rv).unwrap_or(inner.rv + 1);
                if from + 1 < oldest && from < inner.rv {
                    (live, Vec::new(), true)
                } else {
                    // The history is in resourceVersion order: start at the first newer event.
                    let first = inner.history.partition_point(|e| e.rv <= from);
                    let replay = inner
                        .history
                        .range(first..)
                        .filter(|e| e.kind == kind)
                        .cloned()
                        .collect();
                    (live, replay, false)
                }
            }
        }
    };
    let timeout = Duration::from_secs(q.timeout_seconds.unwrap_or(1800).min(1800));
    tokio::spawn(async move {
        let send = |e: &Event| {
            let line = json!({ "type": e.type_, "object": e.object }).to_string() + "\n";
            tx.try_send(Bytes::from(line)).is_ok()
        };
        if too_old {
            let line = json!({ "type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410 } })
            .to_string()
                + "\n";
            let _ = tx.send(Bytes::from(line)).await;
            return;
        }
        let mut last = 0;
        for e in &replay {
            if e.ns == ns && matches(&q, &e.object) && !send(e) {
                return;
            }
            last = last.max(e.rv);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let e = tokio::select! {
                // The client went away: stop filtering events for nobody.
                () = tx.closed() => return,
                r = tokio::time::timeout_at(deadline, live.recv()) => match r {
                    Err(_) | Ok(Err(_)) => return, // timeout, or lagged: the client watches again
                    Ok(Ok(e)) => e,
                },
            };
            if e.rv <= last || e.kind != kind || e.ns != ns || !matches(&q, &e.object) {
                continue;
            }
            if tx
                .send(Bytes::from(
                    json!({ "type": e.type_, "object": e.object }).to_string() + "\n",
                ))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn get_pod(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    let mut inner = s.inner.lock().expect("fake API state");
    inner.counts.gets += 1;
    match inner.pods.get(&(ns, name.clone())) {
        Some(v) => ok_json(v),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        ),
    }
}

async fn create_pod(State(s): State<Shared>, Path(ns): Path<String>, body: Bytes) -> Response {
    let mut v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    if serde_json::from_value::<Pod>(v.clone()).is_err() {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not a Pod");
    }
    let Some(name) = v["metadata"]["name"].as_str().map(str::to_string) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value",
        );
    };
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!("Pod \"{name}\" is invalid: metadata.name"),
        );
    }
    let image = v["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let mut inner = s.inner.lock().expect("fake API state");
    inner.counts.creates += 1;
    let key = (ns.clone(), name.clone());
    if inner.pods.contains_key(&key) {
        inner.counts.conflicts += 1;
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("pods \"{name}\" already exists"),
        );
    }
    inner.uid += 1;
    v["metadata"]["namespace"] = json!(ns);
    v["metadata"]["uid"] = json!(format!("uid-{}", inner.uid));
    v["metadata"]["creationTimestamp"] = json!(now());
    v["status"] = json!({ "phase": "Pending", "qosClass": "BestEffort" });
    let v = commit(&mut inner, &s.events, &ns, "Pod", "ADDED", v);
    inner.pods.insert(key, v.clone());
    let script = inner
        .scripts
        .iter()
        .find(|(img, _)| image.contains(img.as_str()))
        .map(|(_, s)| s.clone())
        .unwrap_or_else(|| inner.default_script.clone());
    let ip = inner.pod_ip.clone();
    drop(inner);
    let uid = v["metadata"]["uid"].clone();
    tokio::spawn(run_script(s, ns, name, uid, image, ip, script));
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// Walks a created pod through its script, as the scheduler and kubelet would.
async fn run_script(
    s: Shared,
    ns: String,
    name: String,
    uid: Value,
    image: String,
    ip: String,
    script: Script,
) {
    // Each step applies only while the pod is the same object and not being deleted.
    let step = |f: &dyn Fn(&mut Value)| {
        update(&s, &ns, &name, |v| {
            if v["metadata"]["uid"] == uid && v["metadata"]["deletionTimestamp"].is_null() {
                f(v)
            }
        })
    };
    let cs = |state: Value, ready: bool, restarts: u64| json!([{ "name": "c0", "image": image, "imageID": "", "ready": ready, "restartCount": restarts, "state": state }]);
    let scheduled = |v: &mut Value| {
        v["spec"]["nodeName"] = json!("fake-node");
        v["status"]["hostIP"] = json!("127.0.0.1");
        v["status"]["conditions"] = json!([{ "type": "PodScheduled", "status": "True" }]);
        v["status"]["containerStatuses"] = cs(
            json!({ "waiting": { "reason": "ContainerCreating" } }),
            false,
            0,
        );
    };
    let running = |v: &mut Value| {
        v["status"]["phase"] = json!("Running");
        v["status"]["podIP"] = json!(ip);
        v["status"]["startTime"] = json!(now());
        v["status"]["conditions"] = json!([{ "type": "PodScheduled", "status": "True" }, { "type": "Ready", "status": "False" }]);
        v["status"]["containerStatuses"] =
            cs(json!({ "running": { "startedAt": now() } }), false, 0);
    };
    let sleep = tokio::time::sleep;
    match script {
        Script::Ready {
            schedule,
            pull,
            start,
        } => {
            sleep(schedule).await;
            step(&scheduled);
            sleep(pull).await;
            step(&running);
            sleep(start).await;
            step(&|v: &mut Value| {
                v["status"]["conditions"] = json!([{ "type": "PodScheduled", "status": "True" }, { "type": "Ready", "status": "True" }]);
                v["status"]["containerStatuses"][0]["ready"] = json!(true);
            });
        }
        Script::ImagePullFails { after } => {
            sleep(Duration::from_millis(1)).await;
            step(&scheduled);
            sleep(after).await;
            let msg = format!("failed to pull image \"{image}\": not found");
            step(&|v: &mut Value| {
                v["status"]["containerStatuses"] = cs(
                    json!({ "waiting": { "reason": "ErrImagePull", "message": msg } }),
                    false,
                    0,
                )
            });
            sleep(Duration::from_millis(20)).await;
            step(&|v: &mut Value| {
                v["status"]["containerStatuses"] = cs(
                    json!({ "waiting": { "reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image}\"") } }),
                    false,
                    0,
                )
            });
        }
        Script::Unschedulable => {
            sleep(Duration::from_millis(1)).await;
            step(&|v: &mut Value| {
                v["status"]["conditions"] = json!([{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient memory." }]);
            });
        }
        Script::CrashLoop { after } => {
            sleep(Duration::from_millis(1)).await;
            step(&scheduled);
            step(&running);
            sleep(after).await;
            step(&|v: &mut Value| {
                v["status"]["containerStatuses"] = cs(
                    json!({ "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container" } }),
                    false,
                    3,
                )
            });
        }
        Script::StuckPulling => {
            sleep(Duration::from_millis(1)).await;
            step(&scheduled);
        }
        Script::NeverReady => {
            sleep(Duration::from_millis(1)).await;
            step(&scheduled);
            step(&running);
        }
    }
}

async fn delete_pod(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    let grace = {
        let mut inner = s.inner.lock().expect("fake API state");
        inner.counts.deletes += 1;
        let key = (ns.clone(), name.clone());
        let Some(v) = inner.pods.get(&key).cloned() else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("pods \"{name}\" not found"),
            );
        };
        if inner.delete_grace.is_zero() {
            inner.pods.remove(&key);
            let v = commit(&mut inner, &s.events, &ns, "Pod", "DELETED", v);
            return ok_json(&v);
        }
        if !v["metadata"]["deletionTimestamp"].is_null() {
            return ok_json(&v);
        }
        inner.delete_grace
    };
    let mut out = Value::Null;
    update(&s, &ns, &name, |v| {
        v["metadata"]["deletionTimestamp"] = json!(now());
        out = v.clone();
    });
    let s2 = s.clone();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        let mut inner = s2.inner.lock().expect("fake API state");
        if let Some(v) = inner.pods.remove(&(ns.clone(), name)) {
            commit(&mut inner, &s2.events, &ns, "Pod", "DELETED", v);
        }
    });
    ok_json(&out)
}

async fn create_claim(State(s): State<Shared>, Path(ns): Path<String>, body: Bytes) -> Response {
    let mut v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    let Some(name) = v["metadata"]["name"].as_str().map(str::to_string) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value",
        );
    };
    let mut inner = s.inner.lock().expect("fake API state");
    let key = (ns.clone(), name.clone());
    if inner.claims.contains_key(&key) {
        inner.counts.conflicts += 1;
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("persistentvolumeclaims \"{name}\" already exists"),
        );
    }
    v["metadata"]["namespace"] = json!(ns);
    v["status"] = json!({ "phase": "Bound" });
    let v = commit(
        &mut inner,
        &s.events,
        &ns,
        "PersistentVolumeClaim",
        "ADDED",
        v,
    );
    inner.claims.insert(key, v.clone());
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn get_claim(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    let inner = s.inner.lock().expect("fake API state");
    match inner.claims.get(&(ns, name.clone())) {
        Some(v) => ok_json(v),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("persistentvolumeclaims \"{name}\" not found"),
        ),
    }
}

async fn delete_claim(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let mut inner = s.inner.lock().expect("fake API state");
    match inner.claims.remove(&(ns.clone(), name.clone())) {
        Some(v) => {
            let v = commit(
                &mut inner,
                &s.events,
                &ns,
                "PersistentVolumeClaim",
                "DELETED",
                v,
            );
            ok_json(&v)
        }
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("persistentvolumeclaims \"{name}\" not found"),
        ),
    }
}
