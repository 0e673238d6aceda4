//! The REST API against a broker in-process on 127.0.0.1 with a real store (SQLite and
//! PostgreSQL).
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod support;

use serde_json::{Value, json};
use support::*;
use switchboard_testkit::store::{BOTH, Kind};

fn three_hosts() -> String {
    pools_toml("desktops", &[("h1", 100), ("h2", 100), ("h3", 200)])
}

#[tokio::test]
async fn placement_confirm_get_list_and_end_round_trip() {
    for kind in BOTH {
        let b = TestBroker::start(kind, &three_hosts()).await;
        let p = b
            .ok(
                "POST",
                "/api/v1/sessions",
                Some(json!({"user": "alice", "pool": "desktops", "client_addr": "127.0.0.9"})),
            )
            .await;
        assert_eq!(p["resumed"], false);
        assert_eq!(p["state"], "reserved");
        assert!(
            p["reason"]
                .as_str()
                .unwrap()
                .starts_with("wlc: best of 3 eligible")
        );
        let id = p["id"].as_u64().unwrap();
        // Asking again while the reservation lives returns the same one.
        let again = b
            .ok(
                "POST",
                "/api/v1/sessions",
                Some(json!({"user": "alice", "pool": "desktops"})),
            )
            .await;
        assert_eq!(again["id"], p["id"]);
        let s = b
            .ok(
                "POST",
                &format!("/api/v1/sessions/{id}/confirm"),
                Some(json!({"backend_id": "alice-50-1"})),
            )
            .await;
        assert_eq!(s["state"], "running", "{kind:?}");
        assert_eq!(s["backend_id"], "alice-50-1");
        assert_eq!(s["client_addr"], "127.0.0.9");
        // Now a placement resumes it.
        let r = b
            .ok(
                "POST",
                "/api/v1/sessions",
                Some(json!({"user": "alice", "pool": "desktops"})),
            )
            .await;
        assert_eq!(r["resumed"], true);
        assert_eq!(r["id"].as_u64(), Some(id));
        let got = b.ok("GET", &format!("/api/v1/sessions/{id}"), None).await;
        assert_eq!(got["user"], "alice");
        let list = b.ok("GET", "/api/v1/sessions?user=alice", None).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        let host = got["host"].as_str().unwrap().to_owned();
        let h = b.ok("GET", &format!("/api/v1/hosts/{host}"), None).await;
        assert_eq!(h["sessions"], 1);
        let ended = b
            .ok("DELETE", &format!("/api/v1/sessions/{id}"), None)
            .await;
        assert_eq!(ended["state"], "ended");
        assert_error(
            &b.call("GET", &format!("/api/v1/sessions/{id}"), None).await,
            404,
            "not_found",
        );
    }
}

#[tokio::test]
async fn acknowledged_changes_survive_a_restart() {
    for kind in BOTH {
        let mut b = TestBroker::start(kind, &three_hosts()).await;
        let mut ids = Vec::new();
        for u in ["alice", "bob", "carol"] {
            let (id, _) = b.start_session(u, "desktops").await;
            ids.push(id);
        }
        b.ok("POST", "/api/v1/hosts/h1/drain", None).await;
        b.ok("PUT", "/api/v1/hosts/h2/weight", Some(json!({"weight": 7})))
            .await;
        b.ok("POST", "/api/v1/hosts/h3/offline", None).await;
        b.restart().await;
        let hosts = b.ok("GET", "/api/v1/hosts", None).await;
        let by_name = |n: &str| {
            hosts["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["name"] == n)
                .unwrap()
                .clone()
        };
        assert_eq!(by_name("h1")["admin"], "draining", "{kind:?}");
        assert_eq!(by_name("h2")["weight"], 7, "{kind:?}");
        assert_eq!(by_name("h3")["admin"], "offline", "{kind:?}");
        for id in ids {
            let s = b.ok("GET", &format!("/api/v1/sessions/{id}"), None).await;
            assert_eq!(s["state"], "running", "{kind:?}");
        }
    }
}

#[tokio::test]
async fn host_admin_actions_and_weight() {
    let b = TestBroker::start(Kind::Sqlite, &three_hosts()).await;
    let h = b.ok("POST", "/api/v1/hosts/h1/drain", None).await;
    assert_eq!(h["admin"], "draining");
    assert_eq!(h["excluded"], "draining");
    let h = b.ok("POST", "/api/v1/hosts/h1/undrain", None).await;
    assert_eq!(h["admin"], "online");
    assert_eq!(h["excluded"], Value::Null);
    assert_eq!(
        b.ok("POST", "/api/v1/hosts/h1/offline", None).await["admin"],
        "offline"
    );
    assert_eq!(
        b.ok("POST", "/api/v1/hosts/h1/online", None).await["admin"],
        "online"
    );
    let h = b
        .ok("PUT", "/api/v1/hosts/h1/weight", Some(json!({"weight": 0})))
        .await;
    assert_eq!(h["weight"], 0);
    assert_eq!(h["excluded"], "zero_weight");
    // Drained and zero-weight hosts get no new sessions.
    b.ok("POST", "/api/v1/hosts/h2/drain", None).await;
    for i in 0..5 {
        let p = b
            .ok(
                "POST",
                "/api/v1/sessions",
                Some(json!({"user": format!("u{i}"), "pool": "desktops"})),
            )
            .await;
        assert_eq!(p["host"], "h3");
    }
    let pools = b.ok("GET", "/api/v1/pools", None).await;
    assert_eq!(pools["items"][0]["eligible"], 1);
    assert_eq!(pools["items"][0]["excluded"]["draining"], 1);
}

#[tokio::test]
async fn tokens_are_required_and_read_only_tokens_only_read() {
    let b = TestBroker::start(Kind::Sqlite, &three_hosts()).await;
    let anon = b
        .client
        .get(format!("{}/api/v1/hosts", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    let body: Value = anon.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_error(
        &b.call_as("sbt_nope", "GET", "/api/v1/hosts", None).await,
        401,
        "unauthorized",
    );
    let ro = b.read_only.clone();
    assert_eq!(b.call_as(&ro, "GET", "/api/v1/hosts", None).await.0, 200);
    assert_error(
        &b.call_as(&ro, "POST", "/api/v1/hosts/h1/drain", None).await,
        403,
        "forbidden",
    );
    assert_eq!(
        b.ok("GET", "/api/v1/hosts/h1", None).await["admin"],
        "online"
    );
    // Health, readiness and metrics need no token.
    for path in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        let r = b
            .client
            .get(format!("{}{path}", b.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
}

#[tokio::test]
async fn revoked_tokens_stop_working_without_a_restart() {
    let b = TestBroker::start(Kind::Sqlite, &three_hosts()).await;
    assert_eq!(b.call("GET", "/api/v1/hosts", None).await.0, 200);
    switchboard_broker::tokens::revoke(&b.tokens_file, "admin").unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if b.call("GET", "/api/v1/hosts", None).await.0 == 401 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "revoked token still accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let added = switchboard_broker::tokens::add(
        &b.tokens_file,
        "late",
        switchboard_broker::tokens::Access::ReadWrite,
    )
    .unwrap();
    loop {
        if b.call_as(&added, "GET", "/api/v1/hosts", None).await.0 == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new token not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn bad_input_gets_a_json_error_and_changes_nothing() {
    let b = TestBroker::start(Kind::Sqlite, &three_hosts()).await;
    let url = format!("{}/api/v1/sessions", b.base);
    let send = |body: String, ct: &'static str| {
        let c = b.client.clone();
        let url = url.clone();
        let token = b.token.clone();
        async move {
            let r = c
                .post(url)
                .bearer_auth(token)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    assert_error(
        &send("{not json".into(), "application/json").await,
        400,
        "bad_request",
    );
    assert_error(
        &send(
            r#"{"user":"a","pool":"desktops","admin":true}"#.into(),
            "application/json",
        )
        .await,
        400,
        "bad_request",
    );
    assert_error(
        &send(r#"{"user":"a","pool":"desktops"}"#.into(), "text/plain").await,
        415,
        "unsupported_media_type",
    );
    let big = format!(r#"{{"user":"{}","pool":"desktops"}}"#, "x".repeat(100_000));
    assert_error(
        &send(big, "application/json").await,
        413,
        "payload_too_large",
    );
    assert_error(
        &b.call(
            "POST",
            "/api/v1/sessions",
            Some(json!({"user": "a", "pool": "nope"})),
        )
        .await,
        404,
        "not_found",
    );
    assert_error(
        &b.call("POST", "/api/v1/hosts/nope/drain", None).await,
        404,
        "not_found",
    );
    assert_error(
        &b.call("GET", "/api/v1/hosts/nope", None).await,
        404,
        "not_found",
    );
    assert_error(
        &b.call("POST", "/api/v1/sessions/12/confirm", None).await,
        404,
        "not_found",
    );
    assert_error(
        &b.call("GET", "/api/v1/sessions/abc", None).await,
        400,
        "bad_request",
    );
    assert_error(
        &b.call(
            "PUT",
            "/api/v1/hosts/h1/weight",
            Some(json!({"weight": -1})),
        )
        .await,
        400,
        "bad_request",
    );
    assert_error(
        &b.call("GET", "/api/v1/sessions?state=zombie", None).await,
        400,
        "bad_request",
    );
    assert_error(
        &b.call("GET", "/api/v1/hosts?limit=0", None).await,
        400,
        "bad_request",
    );
    assert_error(
        &b.call("GET", "/api/v1/nothing", None).await,
        404,
        "not_found",
    );
    assert_error(
        &b.call("PATCH", "/api/v1/hosts", None).await,
        405,
        "method_not_allowed",
    );
    // Nothing changed.
    let list = b.ok("GET", "/api/v1/sessions", None).await;
    assert!(list["items"].as_array().unwrap().is_empty());
    let hosts = b.ok("GET", "/api/v1/hosts", None).await;
    assert!(
        hosts["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["admin"] == "online" && h["reservations"] == 0)
    );
}

#[tokio::test]
async fn lists_paginate_with_a_cursor() {
    let names: Vec<String> = (0..7).map(|i| format!("n{i}")).collect();
    let hosts: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 100)).collect();
    let b = TestBroker::start(Kind::Sqlite, &pools_toml("p", &hosts)).await;
    let mut seen = Vec::new();
    let mut path = "/api/v1/hosts?limit=3".to_owned();
    loop {
        let page = b.ok("GET", &path, None).await;
        for h in page["items"].as_array().unwrap() {
            seen.push(h["name"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/hosts?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, names);
    for i in 0..5 {
        let p = b
            .ok(
                "POST",
                "/api/v1/sessions",
                Some(json!({"user": format!("u{i}"), "pool": "p"})),
            )
            .await;
        b.ok(
            "POST",
            &format!("/api/v1/sessions/{}/confirm", p["id"]),
            None,
        )
        .await;
    }
    let first = b.ok("GET", "/api/v1/sessions?limit=2", None).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let c = first["next_cursor"].as_str().unwrap().to_owned();
    let rest = b
        .ok(
            "GET",
            &format!("/api/v1/sessions?limit=10&cursor={c}"),
            None,
        )
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 3);
    assert_eq!(rest["next_cursor"], Value::Null);
    let on_n0 = b
        .ok("GET", "/api/v1/sessions?host=n0&state=running", None)
        .await;
    assert!(
        on_n0["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["host"] == "n0")
    );
}

#[tokio::test]
async fn explain_lists_every_host() {
    let b = TestBroker::start(Kind::Sqlite, &three_hosts()).await;
    b.ok("POST", "/api/v1/hosts/h2/drain", None).await;
    let e = b
        .ok(
            "GET",
            "/api/v1/placements/explain?user=alice&pool=desktops",
            None,
        )
        .await;
    let hosts = e["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    assert_eq!(hosts[2]["host"], "h2");
    assert_eq!(hosts[2]["excluded"], "draining");
    assert_eq!(e["policy"], "wlc");
    let next = e["next"].as_str().unwrap().to_owned();
    let p = b
        .ok(
            "POST",
            "/api/v1/sessions",
            Some(json!({"user": "alice", "pool": "desktops"})),
        )
        .await;
    assert_eq!(p["host"], next.as_str());
}

#[tokio::test]
async fn openapi_documents_every_route_and_only_real_ones() {
    let b = TestBroker::start(Kind::Sqlite, &three_hosts()).await;
    let doc = b.ok("GET", "/api/v1/openapi.json", None).await;
    let paths = doc["paths"].as_object().unwrap();
    let expected = [
        ("get", "/api/v1/hosts"),
        ("get", "/api/v1/hosts/{name}"),
        ("post", "/api/v1/hosts/{name}/drain"),
        ("post", "/api/v1/hosts/{name}/undrain"),
        ("post", "/api/v1/hosts/{name}/offline"),
        ("post", "/api/v1/hosts/{name}/online"),
        ("put", "/api/v1/hosts/{name}/weight"),
        ("get", "/api/v1/pools"),
        ("get", "/api/v1/pools/{name}/watch"),
        ("post", "/api/v1/sessions"),
        ("get", "/api/v1/sessions"),
        ("get", "/api/v1/sessions/{id}"),
        ("delete", "/api/v1/sessions/{id}"),
        ("post", "/api/v1/sessions/{id}/confirm"),
        ("get", "/api/v1/placements/explain"),
        ("get", "/api/v1/audit"),
        ("post", "/api/v1/hosts/{name}/credentials"),
        ("delete", "/api/v1/hosts/{name}/credentials"),
        ("get", "/api/v1/kubernetes/{pool}/sessions"),
        ("post", "/api/v1/kubernetes/{pool}/sessions"),
        (
            "delete",
            "/api/v1/kubernetes/{pool}/sessions/{user}/{session_type}",
        ),
    ];
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    want.sort();
    assert_eq!(documented, want);
    // Every documented operation is served (anything but the router's own 404/405).
    for (method, path) in &documented {
        let concrete = path
            .replace("{name}", "h1")
            .replace("{id}", "1")
            .replace("{pool}", "k8s")
            .replace("{user}", "alice")
            .replace("{session_type}", "xfce");
        let (status, body) = b.call(&method.to_uppercase(), &concrete, None).await;
        let code = body["error"]["code"].as_str().unwrap_or("");
        assert!(
            !(status == 405
                || (status == 404
                    && code == "not_found"
                    && body["error"]["message"] == "no such endpoint")),
            "{method} {concrete} documented but not routed: {status} {body}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn reload_adds_and_removes_hosts_keeping_sessions_and_runtime_weights() {
    let mut b = TestBroker::start(Kind::Sqlite, &three_hosts()).await;
    b.ok("PUT", "/api/v1/hosts/h1/weight", Some(json!({"weight": 5})))
        .await;
    let p = b
        .ok(
            "POST",
            "/api/v1/sessions",
            Some(json!({"user": "alice", "pool": "desktops"})),
        )
        .await;
    b.ok(
        "POST",
        &format!("/api/v1/sessions/{}/confirm", p["id"]),
        None,
    )
    .await;
    b.extra = pools_toml("desktops", &[("h1", 100), ("h2", 100), ("h4", 100)]);
    let config = b.config();
    b.broker
        .as_ref()
        .unwrap()
        .engine
        .reconfigure(config.cluster)
        .await
        .unwrap();
    let hosts = b.ok("GET", "/api/v1/hosts", None).await;
    let names: Vec<&str> = hosts["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    let had_h3 = p["host"] == "h3";
    assert!(names.contains(&"h4"));
    assert_eq!(
        names.contains(&"h3"),
        had_h3,
        "h3 stays only while it has a session"
    );
    let h1 = b.ok("GET", "/api/v1/hosts/h1", None).await;
    assert_eq!(
        h1["weight"], 5,
        "a weight set at run time survives a reload"
    );
    b.ok("GET", &format!("/api/v1/sessions/{}", p["id"]), None)
        .await;
}

#[tokio::test]
async fn operator_actions_are_audited_with_who_what_and_result() {
    for kind in BOTH {
        let b = TestBroker::start(kind, &three_hosts()).await;
        b.ok("POST", "/api/v1/hosts/h1/drain", None).await;
        b.ok(
            "PUT",
            "/api/v1/hosts/h2/weight",
            Some(json!({"weight": 50})),
        )
        .await;
        let _ = b.call("POST", "/api/v1/hosts/nope/offline", None).await;
        let log = b.ok("GET", "/api/v1/audit?limit=10", None).await;
        let log = log.as_array().unwrap();
        assert_eq!(log.len(), 3, "{kind:?}: {log:?}");
        assert_eq!(log[2]["action"], "drain");
        assert_eq!(log[2]["target"], "h1");
        assert_eq!(log[2]["actor"], "admin");
        assert_eq!(log[2]["surface"], "api");
        assert_eq!(log[2]["result"], "ok");
        assert_eq!(log[1]["action"], "weight 50");
        assert!(
            log[0]["result"].as_str().unwrap().starts_with("not_found"),
            "{log:?}"
        );
    }
}

#[test]
fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    use axum::http::HeaderMap;
    use switchboard_broker::http::client_ip;
    let proxy: std::net::IpAddr = "127.0.0.5".parse().unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", "203.0.113.7, 127.0.0.5".parse().unwrap());
    let peer_untrusted: std::net::IpAddr = "127.0.0.6".parse().unwrap();
    assert_eq!(client_ip(peer_untrusted, &h, &[proxy]), peer_untrusted);
    assert_eq!(
        client_ip(proxy, &h, &[proxy]),
        "203.0.113.7".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(client_ip(proxy, &HeaderMap::new(), &[proxy]), proxy);
}

/// The pool watch stream: one `pool` event at once, another after a drain, 404 for an unknown
/// pool, 401 without a token.
#[tokio::test]
async fn a_pool_watch_streams_the_pool_and_its_changes() {
    let b = TestBroker::start(Kind::Sqlite, &three_hosts()).await;
    let url = format!("{}/api/v1/pools/desktops/watch", b.base);
    let r = b.client.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = b
        .client
        .get(format!("{}/api/v1/pools/nope/watch", b.base))
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let mut r = b
        .client
        .get(&url)
        .bearer_auth(&b.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut text = String::new();
    let mut next_event = async || -> Value {
        loop {
            if let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    assert!(block.contains("event: pool"), "{block}");
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), r.chunk())
                .await
                .expect("an event within 10 s")
                .unwrap()
                .expect("the stream stays open");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    };
    let first = next_event().await;
    assert_eq!(first["pool"], "desktops");
    let hosts = first["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    assert_eq!(hosts[2]["name"], "h3");
    assert_eq!(hosts[2]["weight"], 200);
    assert_eq!(hosts[1]["admin"], "online");
    b.ok("POST", "/api/v1/hosts/h2/drain", None).await;
    let second = next_event().await;
    assert_eq!(second["hosts"][1]["name"], "h2");
    assert_eq!(second["hosts"][1]["admin"], "draining");
}

/// `GET /hosts/{name}` as JSON.
async fn host(b: &TestBroker, name: &str) -> Value {
    b.ok("GET", &format!("/api/v1/hosts/{name}"), None).await
}

#[tokio::test]
async fn drain_then_offline_takes_the_host_offline_once_its_last_session_ends() {
    for kind in BOTH {
        let b = TestBroker::start(kind, &pools_toml("desktops", &[("h1", 100)])).await;
        let (id, _) = b.start_session("alice", "desktops").await;
        let h = b
            .ok("POST", "/api/v1/hosts/h1/drain?then_offline=true", None)
            .await;
        assert_eq!(h["admin"], "draining", "{kind:?}: {h}");
        assert_eq!(h["then_offline"], true, "{kind:?}: {h}");
        // Its user still resumes there while it drains.
        let p = b
            .ok(
                "POST",
                "/api/v1/sessions",
                Some(json!({"user": "alice", "pool": "desktops"})),
            )
            .await;
        assert_eq!(
            (p["resumed"].as_bool(), p["id"].as_u64()),
            (Some(true), Some(id))
        );
        // The last session ends: the host goes offline by itself.
        b.ok("DELETE", &format!("/api/v1/sessions/{id}"), None)
            .await;
        let h = host(&b, "h1").await;
        assert_eq!(h["admin"], "offline", "{kind:?}: {h}");
        assert_eq!(h["then_offline"], false, "{kind:?}: {h}");
        let log = b.ok("GET", "/api/v1/audit?limit=10", None).await;
        let actions: Vec<(&str, &str, &str)> = log
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["action"].as_str().unwrap(),
                    r["surface"].as_str().unwrap(),
                    r["actor"].as_str().unwrap(),
                )
            })
            .collect();
        assert!(
            actions.contains(&("drain --then-offline", "api", "admin"))
                && actions.contains(&("offline (drained)", "api", "admin")),
            "{kind:?}: {actions:?}"
        );
    }
}

#[tokio::test]
async fn drain_then_offline_survives_a_broker_restart() {
    for kind in BOTH {
        let mut b =
            TestBroker::start(kind, &pools_toml("desktops", &[("h1", 100), ("h2", 100)])).await;
        let (a, ha) = b.start_session("alice", "desktops").await;
        let (c, hc) = b.start_session("carol", "desktops").await;
        assert_ne!(ha, hc, "one session on each host");
        let on_h1 = if ha == "h1" { a } else { c };
        b.ok("POST", "/api/v1/hosts/h1/drain?then_offline=true", None)
            .await;
        // An operator's later change of h2 is its own; h1's pending offline stays.
        b.ok("POST", "/api/v1/hosts/h2/drain", None).await;
        b.restart().await;
        let h = host(&b, "h1").await;
        assert_eq!(
            (h["admin"].as_str(), h["then_offline"].as_bool()),
            (Some("draining"), Some(true)),
            "{kind:?}: the pending offline is durable: {h}"
        );
        assert_eq!(host(&b, "h2").await["then_offline"], false, "{kind:?}");
        b.ok("DELETE", &format!("/api/v1/sessions/{on_h1}"), None)
            .await;
        assert_eq!(host(&b, "h1").await["admin"], "offline", "{kind:?}");
        assert_eq!(host(&b, "h2").await["admin"], "draining", "{kind:?}");
        // And that, too, survives a restart.
        b.restart().await;
        let h = host(&b, "h1").await;
        assert_eq!(
            (h["admin"].as_str(), h["then_offline"].as_bool()),
            (Some("offline"), Some(false)),
            "{kind:?}: {h}"
        );
    }
}

#[tokio::test]
async fn an_admin_change_cancels_a_pending_drain_then_offline() {
    let b = TestBroker::start(Kind::Sqlite, &pools_toml("desktops", &[("h1", 100)])).await;
    let (id, _) = b.start_session("alice", "desktops").await;
    b.ok("POST", "/api/v1/hosts/h1/drain?then_offline=true", None)
        .await;
    let h = b.ok("POST", "/api/v1/hosts/h1/undrain", None).await;
    assert_eq!(
        (h["admin"].as_str(), h["then_offline"].as_bool()),
        (Some("online"), Some(false))
    );
    b.ok("DELETE", &format!("/api/v1/sessions/{id}"), None)
        .await;
    assert_eq!(host(&b, "h1").await["admin"], "online");
    // A drained host that is already empty goes offline at once.
    let h = b
        .ok("POST", "/api/v1/hosts/h1/drain?then_offline=true", None)
        .await;
    assert_eq!(h["admin"], "offline", "{h}");
    let bad = b
        .call("POST", "/api/v1/hosts/h1/drain?then_offline=maybe", None)
        .await;
    assert_error(&bad, 400, "bad_request");
}

/// The ids the store already holds from now on, as if the clock had been stepped back by the
/// length of the run: 20,000 ended sessions, one each millisecond from now, for 20 seconds.
async fn ended_sessions_ahead(url: &str) -> u64 {
    use sqlx::{Connection, Executor};
    sqlx::any::install_default_drivers();
    let base = switchboard_core::Millis::now_wall().0 * 1000;
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    // Digits only: nothing to inject.
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 19999) \
         INSERT INTO sessions (id, user_name, host, pool, state, backend_id, client, created_at, \
         updated_at, ended_at) \
         SELECT {base} + i * 1000, 'ghost', 'h1', NULL, 'ended', NULL, NULL, 1, 1, 1 FROM n"
    );
    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str())))
        .await
        .unwrap();
    base + 19_999 * 1000
}

#[tokio::test]
async fn session_ids_never_repeat_an_ended_sessions_after_the_clock_steps_back() {
    for kind in BOTH {
        let mut b = TestBroker::start(kind, &three_hosts()).await;
        let highest = ended_sessions_ahead(&b.store_url).await;
        b.restart().await;
        // Each new id lands in the range the ended sessions hold unless it is seeded above it.
        for user in ["alice", "bob", "carol"] {
            let (id, _) = b.start_session(user, "desktops").await;
            assert!(
                id > highest,
                "{kind:?}: id {id} is not above the stored {highest}"
            );
        }
    }
}
