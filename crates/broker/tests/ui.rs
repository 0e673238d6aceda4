//! The dashboard's sign-in and its guards over real HTTP: admin tokens (read-write only),
//! password sign-in for members of `[ui] admin_group` through PAM, CSRF on every action, and
//! fragments refused without a session. The browser test is `crates/cli/tests/up.rs`.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use switchboard_broker::tokens;
use switchboard_testkit::broker::{BrokerBuilder, Host, Pool, TestBroker};

struct H {
    b: TestBroker,
    base: String,
    rw: String,
    ro: String,
}

async fn start(extra: &str) -> H {
    let b = BrokerBuilder::new()
        .toml(extra)
        .pool(
            Pool::new("p")
                .agentless()
                .host(Host::new("h1", "127.0.0.61:22")),
        )
        .start()
        .await;
    H {
        base: b.base.clone(),
        rw: b.token.clone(),
        ro: b.read_only.clone(),
        b,
    }
}

fn client() -> reqwest::Client {
    switchboard_testkit::install_crypto();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with a form body; returns (status, session cookie).
async fn sign_in(h: &H, body: String) -> (u16, Option<String>) {
    let r = client()
        .post(format!("{}/ui/login", h.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    (r.status().as_u16(), cookie)
}

async fn csrf(h: &H, cookie: &str) -> String {
    let page = client()
        .get(format!("{}/ui/", h.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page.find("X-CSRF-Token\": \"").unwrap() + 16;
    page[at..at + 64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_sign_in_and_every_action_needs_the_csrf_token() {
    let h = start("").await;
    // Without a session: the page goes to sign-in, fragments and actions are refused.
    let r = client()
        .get(format!("{}/ui/", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");
    let r = client()
        .get(format!("{}/ui/part/hosts", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Read-only and unknown tokens do not sign in.
    assert_eq!(sign_in(&h, format!("token={}", h.ro)).await.0, 401);
    assert_eq!(sign_in(&h, "token=nope".into()).await.0, 401);
    let (status, cookie) = sign_in(&h, format!("token={}", h.rw)).await;
    assert_eq!(status, 303);
    let cookie = cookie.unwrap();
    let r = client()
        .get(format!("{}/ui/part/hosts", h.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("id=\"host-h1\""));
    // An action without the CSRF token, or with a wrong one, changes nothing.
    let drain = |token: Option<String>| {
        let mut req = client()
            .post(format!("{}/ui/hosts/h1/drain", h.base))
            .header("cookie", &cookie);
        if let Some(t) = token {
            req = req.header("x-csrf-token", t);
        }
        req.send()
    };
    assert_eq!(drain(None).await.unwrap().status().as_u16(), 403);
    assert_eq!(
        drain(Some("0".repeat(64))).await.unwrap().status().as_u16(),
        403
    );
    let t = csrf(&h, &cookie).await;
    let r = drain(Some(t.clone())).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "h1 is draining");
    // The weight form takes the token as a field too.
    let r = client()
        .post(format!("{}/ui/hosts/h1/weight", h.base))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("weight=7&csrf={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "h1 has weight 7");
    // Log off takes the user as a form field: a name like `../hosts/h1/offline` stays a name.
    let r = client()
        .post(format!("{}/ui/logoff", h.base))
        .header("cookie", &cookie)
        .header("x-csrf-token", &t)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=..%2Fhosts%2Fh1%2Foffline")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "0 session(s) of ../hosts/h1/offline are being logged off"
    );
    // Signing out ends the session.
    client()
        .post(format!("{}/ui/logout", h.base))
        .header("cookie", &cookie)
        .header("x-csrf-token", &t)
        .send()
        .await
        .unwrap();
    let r = client()
        .get(format!("{}/ui/part/hosts", h.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sign_in_ends_when_the_token_is_revoked() {
    let h = start("").await;
    let cookie = sign_in(&h, format!("token={}", h.rw)).await.1.unwrap();
    let part = || {
        client()
            .get(format!("{}/ui/part/hosts", h.base))
            .header("cookie", &cookie)
            .send()
    };
    assert_eq!(part().await.unwrap().status().as_u16(), 200);
    tokens::revoke(&h.b.tokens_file, "admin").unwrap();
    let start = tokio::time::Instant::now();
    while part().await.unwrap().status().as_u16() != 401 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the session outlived its revoked token"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_group_members_sign_in_with_their_password() {
    let (user, password, service) = switchboard_testkit::pam_test_user();
    let group = "sbtest-uiadmins";
    let _ = Command::new("groupadd").arg(group).status();
    assert!(
        Command::new("usermod")
            .args(["-aG", group, user])
            .status()
            .unwrap()
            .success()
    );
    let auth = format!("[auth]\nmethod = \"pam\"\npam_service = \"{service}\"\n");
    let h = start(&format!("{auth}[ui]\nadmin_group = \"{group}\"\n")).await;
    let (status, cookie) = sign_in(&h, format!("user={user}&password={password}")).await;
    assert_eq!(status, 303);
    assert!(cookie.unwrap().starts_with("sb_ui="));
    assert_eq!(
        sign_in(&h, format!("user={user}&password=wrong")).await.0,
        401
    );
    // The right password, but not in the admin group.
    let h = start(&format!("{auth}[ui]\nadmin_group = \"root\"\n")).await;
    assert_eq!(
        sign_in(&h, format!("user={user}&password={password}"))
            .await
            .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_drains_a_host_then_takes_it_offline_once_empty() {
    let h = start("").await;
    let api = |method: reqwest::Method, path: String| {
        client()
            .request(method, format!("{}{path}", h.base))
            .bearer_auth(&h.rw)
    };
    let p: serde_json::Value = api(reqwest::Method::POST, "/api/v1/sessions".into())
        .json(&serde_json::json!({"user": "alice", "pool": "p"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = p["id"].as_u64().unwrap();
    api(
        reqwest::Method::POST,
        format!("/api/v1/sessions/{id}/confirm"),
    )
    .send()
    .await
    .unwrap();
    let (_, cookie) = sign_in(&h, format!("token={}", h.rw)).await;
    let cookie = cookie.unwrap();
    let t = csrf(&h, &cookie).await;
    // The hosts fragment offers it for an online host.
    let part = client()
        .get(format!("{}/ui/part/hosts", h.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(part.contains("/ui/hosts/h1/drain-then-offline"), "{part}");
    let r = client()
        .post(format!("{}/ui/hosts/h1/drain-then-offline", h.base))
        .header("cookie", &cookie)
        .header("x-csrf-token", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "h1 is draining, and goes offline once empty"
    );
    let host = || async {
        api(reqwest::Method::GET, "/api/v1/hosts/h1".into())
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_eq!(host().await["then_offline"], true);
    api(reqwest::Method::DELETE, format!("/api/v1/sessions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(host().await["admin"], "offline");
    let audit: serde_json::Value = api(reqwest::Method::GET, "/api/v1/audit".into())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let by_ui =
        |action: &str| {
            audit.as_array().unwrap().iter().any(|a| {
                a["surface"] == "ui" && a["actor"] == "token:admin" && a["action"] == action
            })
        };
    assert!(
        by_ui("drain --then-offline") && by_ui("offline (drained)"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_sign_in_while_every_check_is_taken_is_a_503_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("slow-passwd");
    switchboard_testkit::broker::slow_password_file(
        &passwd,
        "root",
        "root-pw",
        std::time::Duration::from_millis(700),
    );
    let h = start(&format!(
        "[auth]\nmethod = \"file:{}\"\nworkers = 1\nqueue = 0\n[ui]\nadmin_group = \"root\"\n",
        passwd.display()
    ))
    .await;
    let base = h.base.clone();
    let sign_in_from = |i: u8| {
        let base = base.clone();
        async move {
            switchboard_testkit::install_crypto();
            let r = reqwest::Client::builder()
                .local_address(std::net::IpAddr::from([127, 0, 10, i]))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap()
                .post(format!("{base}/ui/login"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("user=root&password=root-pw")
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), retry, r.text().await.unwrap())
        }
    };
    let first = tokio::spawn(sign_in_from(1));
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let (status, retry, body) = sign_in_from(2).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("2"));
    assert!(body.contains("Too many sign-ins at once"), "{body}");
    assert_eq!(first.await.unwrap().0, 303, "the check that ran signs in");
    assert_eq!(sign_in_from(2).await.0, 303);
}
