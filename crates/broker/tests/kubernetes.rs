//! Kubernetes session pods are sessions of the core: started through the REST API against the
//! fake API server, they are listed by `GET /api/v1/sessions`, `ctl users` and `ctl user`, and
//! the dashboard; `max_sessions_per_user` counts them; `ctl logoffuser` deletes their pods; and
//! a pod found at start is adopted like an agent's session.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;
use switchboard_testkit::kubeapi::FakeApiServer;
use switchboard_testkit::store::Kind;
use tokio::time::Instant;

fn template(ty: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - name: {ty}\n      image: {ty}\n      \
         ports: [{{ name: xpra, containerPort: 14500 }}]\n      readinessProbe: {{ tcpSocket: {{ port: 14500 }} }}\n"
    )
}

/// A broker with Kubernetes pool `k8s` (two session types, at most `cap` sessions per user) on
/// the fake API server.
async fn broker(api: &FakeApiServer, cap: u32, kind: Kind) -> (TestBroker, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("kubeconfig"), api.kubeconfig("sessions")).unwrap();
    std::fs::create_dir_all(dir.join("types/default")).unwrap();
    for ty in ["xfce", "kde"] {
        std::fs::write(dir.join(format!("types/default/{ty}.yaml")), template(ty)).unwrap();
    }
    let extra = format!(
        "[[pool]]\nname = \"k8s\"\nkind = \"kubernetes\"\nnamespace = \"sessions\"\n\
         kubeconfig = \"{d}/kubeconfig\"\ntemplates = \"{d}/types\"\nmax_sessions_per_user = {cap}\n",
        d = dir.display()
    );
    (TestBroker::start(kind, &extra).await, tmp)
}

/// Polls `check` until it holds (at most 15 s); the failure shows what the broker holds.
async fn eventually<F, Fut>(b: &TestBroker, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 15 s\n{}", views(b).await);
}

/// What the broker shows of pool `k8s` (for failure messages).
async fn views(b: &TestBroker) -> String {
    let pods = b.call("GET", "/api/v1/kubernetes/k8s/sessions", None).await;
    let host = b.call("GET", "/api/v1/hosts/kubernetes:k8s", None).await;
    let all = b.call("GET", "/api/v1/sessions", None).await;
    format!("pods {pods:?}\nhost {host:?}\nsessions {all:?}")
}

async fn sessions_of(b: &TestBroker, user: &str) -> Vec<Value> {
    let v = b
        .ok("GET", &format!("/api/v1/sessions?user={user}"), None)
        .await;
    v["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_pod_is_a_session_everywhere_and_logoffuser_ends_it() {
    let api = FakeApiServer::start().await;
    let (b, _templates) = broker(&api, 1, Kind::Sqlite).await;
    let started = b
        .ok(
            "POST",
            "/api/v1/kubernetes/k8s/sessions",
            Some(json!({"user": "alice", "session_type": "xfce"})),
        )
        .await;
    assert_eq!(started["pod"], "alice-xfce", "{started}");
    // The core lists it: REST, with its pod as the backend id, on the pool's pod host.
    eventually(&b, "the pod is a session of the core", || async {
        sessions_of(&b, "alice").await.len() == 1
    })
    .await;
    let s = &sessions_of(&b, "alice").await[0];
    assert_eq!(
        (
            s["backend_id"].as_str(),
            s["host"].as_str(),
            s["state"].as_str()
        ),
        (
            Some("alice-xfce"),
            Some("kubernetes:k8s"),
            Some("disconnected")
        ),
        "{s}"
    );
    // ctl sees it.
    let mut ctl = Ctl::connect(&b).await;
    let users = ctl.ok("users").await;
    assert_eq!(users[0]["user"], "alice", "{users}");
    assert_eq!(users[0]["hosts"][0], "kubernetes:k8s", "{users}");
    let user = ctl.ok("user alice").await;
    assert_eq!(user[0]["backend_id"], "alice-xfce", "{user}");
    // The per-user cap counts it: a second session type is refused.
    let refused = b
        .call(
            "POST",
            "/api/v1/kubernetes/k8s/sessions",
            Some(json!({"user": "alice", "session_type": "kde"})),
        )
        .await;
    assert_error(&refused, 429, "session_limit");
    assert!(api.pod("sessions", "alice-kde").is_none());
    // The core counts it against the pool's cap (and would resume it, not place a new one).
    let e = ctl.ok("explain alice k8s").await;
    assert_eq!(e["user_sessions"], 1, "{e}");
    assert_eq!(e["limits"]["max_sessions_per_user"], 1, "{e}");
    assert_eq!(e["resume"]["host"], "kubernetes:k8s", "{e}");
    // logoffuser ends it: the pod is deleted, and the session ends when it is gone.
    let r = ctl.ok("logoffuser alice").await;
    assert_eq!(r[0]["ok"], true, "{r}");
    eventually(&b, "the pod is deleted", || async {
        api.pod("sessions", "alice-xfce").is_none()
    })
    .await;
    eventually(&b, "the session ended", || async {
        sessions_of(&b, "alice").await.is_empty()
    })
    .await;
    // Audited like any other log-off.
    let audit = ctl.ok("audit 20").await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "logoffuser" && r["surface"] == "ctl" && r["result"] == "ok"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_pod_sessions_and_rest_delete_ends_them() {
    let api = FakeApiServer::start().await;
    let (b, _templates) = broker(&api, 2, Kind::Sqlite).await;
    b.ok(
        "POST",
        "/api/v1/kubernetes/k8s/sessions",
        Some(json!({"user": "bob", "session_type": "kde"})),
    )
    .await;
    eventually(&b, "the pod is a session", || async {
        sessions_of(&b, "bob").await.len() == 1
    })
    .await;
    let id = sessions_of(&b, "bob").await[0]["id"].as_u64().unwrap();
    // The dashboard's sessions fragment, signed in with the admin token.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = client
        .post(format!("{}/ui/login", b.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", b.token))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let part = client
        .get(format!("{}/ui/part/sessions?user=bob", b.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        part.contains("bob-kde") && part.contains("kubernetes:k8s"),
        "{part}"
    );
    // REST DELETE deletes the pod (202: ending until it is gone).
    let (status, body) = b
        .call("DELETE", &format!("/api/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(&b, "the pod is deleted", || async {
        api.pod("sessions", "bob-kde").is_none()
    })
    .await;
    eventually(&b, "the session ended", || async {
        sessions_of(&b, "bob").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_found_at_start_are_adopted_and_vanished_ones_ended() {
    let api = FakeApiServer::start().await;
    let (mut b, _templates) = broker(&api, 2, Kind::Sqlite).await;
    b.ok(
        "POST",
        "/api/v1/kubernetes/k8s/sessions",
        Some(json!({"user": "carol", "session_type": "xfce"})),
    )
    .await;
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while sessions_of(&b, "carol").await.len() != 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "the pod is a session: {}", views(&b).await);
    let id = sessions_of(&b, "carol").await[0]["id"].clone();
    // Across a restart the session keeps its id (it is durable, and the pod is still there).
    b.restart().await;
    eventually(&b, "the session is back", || async {
        sessions_of(&b, "carol")
            .await
            .first()
            .map(|s| s["id"].clone())
            == Some(id.clone())
    })
    .await;
    // A pod removed behind the broker's back ends its session.
    api.remove("sessions", "carol-xfce");
    eventually(&b, "the vanished pod's session ended", || async {
        sessions_of(&b, "carol").await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_at_once_of_several_types_stay_within_the_per_user_cap() {
    let api = FakeApiServer::start().await;
    let (b, _dir) = broker(&api, 1, Kind::Sqlite).await;
    let start = |ty: &'static str| {
        b.call(
            "POST",
            "/api/v1/kubernetes/k8s/sessions",
            Some(json!({"user": "alice", "session_type": ty})),
        )
    };
    // Both before either pod exists: the cap counts the start in flight too.
    let (x, k) = tokio::join!(start("xfce"), start("kde"));
    let refused = [&x, &k].iter().filter(|r| r.0 == 429).count();
    assert_eq!(
        refused, 1,
        "exactly one of two is refused with a cap of 1: {x:?} {k:?}"
    );
    let accepted = if x.0 == 429 { &k } else { &x };
    assert!(accepted.0 < 300, "{accepted:?}");
    let refused = if x.0 == 429 { &x } else { &k };
    assert_error(refused, 429, "session_limit");
    eventually(&b, "one pod", || async {
        api.pod_names("sessions").len() == 1
    })
    .await;
}
