//! The management socket: its permissions, both reply modes, VERDE's commands and ours, bad
//! input, and the audit trail of what operators did through it.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use support::*;
use switchboard_testkit::store::Kind;
use tokio::time::Instant;

fn pool() -> String {
    pools_toml("desktops", &[("h1", 100), ("h2", 100)])
}

#[tokio::test]
async fn the_socket_is_0660_and_other_users_are_refused() {
    let b = TestBroker::start(Kind::Sqlite, &pool()).await;
    let path = b.dir.path().join("mgmt.sock");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // Root (this test) is served.
    let mut c = Ctl::connect(&b).await;
    assert_eq!(c.ok("hello").await["hosts"], 2);
    // An unprivileged user cannot even connect. (The test runs as root, as CI does.)
    std::fs::set_permissions(b.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args([
            "/usr/bin/python3",
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n  s.connect(sys.argv[1]); print('connected')\nexcept PermissionError: print('refused')",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn replies_are_json_lines_or_text_ending_with_a_dot_and_errors_keep_the_connection() {
    let b = TestBroker::start(Kind::Sqlite, &pool()).await;
    let mut c = Ctl::connect(&b).await;
    let v = c.json("frobnicate").await;
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().contains("unknown command"),
        "{v}"
    );
    let v = c.json("weight h1 heavy").await;
    assert!(v["error"].as_str().unwrap().contains("whole number"), "{v}");
    // A line over 4 KiB is refused, and the next one works.
    let v = c.json(&"x".repeat(5000)).await;
    assert!(v["error"].as_str().unwrap().contains("4096"), "{v}");
    assert_eq!(c.ok("hello").await["hosts"], 2);
    // Verbose: human text, then ".".
    assert_eq!(c.text("verbose on").await, vec!["verbose on"]);
    let servers = c.text("servers").await;
    assert!(servers[0].starts_with("HOST"), "{servers:?}");
    assert!(servers.iter().any(|l| l.starts_with("h2 ")), "{servers:?}");
    let err = c.text("server nope").await;
    assert_eq!(err, vec!["error: no host \"nope\""]);
    let help = c.text("help drain").await;
    assert!(
        help[0].starts_with("drain NAME [--then-offline]"),
        "{help:?}"
    );
    // Switching verbose off answers in the new mode already.
    assert_eq!(c.ok("verbose off").await["verbose"], false);
    assert_eq!(c.ok("quit").await, "bye");
}

#[tokio::test]
async fn operator_commands_act_and_are_audited() {
    let b = TestBroker::start(Kind::Sqlite, &pool()).await;
    let (alice, alice_host) = b.start_session("alice", "desktops").await;
    b.start_session("bob", "desktops").await;
    let mut c = Ctl::connect(&b).await;

    let hello = c.ok("hello").await;
    assert_eq!(hello["sessions"], 2);
    assert_eq!(hello["users"], 2);
    let users = c.ok("users").await;
    assert_eq!(users.as_array().unwrap().len(), 2);
    let mine = c.ok("user alice").await;
    assert_eq!(mine[0]["id"], alice);
    let filtered = c.ok(&format!("sessions host={alice_host}")).await;
    assert!(
        filtered
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["host"] == alice_host)
    );
    assert!(
        c.ok("sessions state=disconnected")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Weight, offline/online.
    c.ok("weight h2 250").await;
    assert_eq!(b.ok("GET", "/api/v1/hosts/h2", None).await["weight"], 250);
    c.ok("offlineserver h2").await;
    assert_eq!(
        b.ok("GET", "/api/v1/hosts/h2", None).await["admin"],
        "offline"
    );
    c.ok("onlineserver h2").await;

    // Explain names the pool, the policy and every host.
    let e = c.ok("explain carol desktops").await;
    assert_eq!(e["pool"], "desktops");
    assert_eq!(e["hosts"].as_array().unwrap().len(), 2);

    // Drain then offline: the host goes offline by itself once its last session ends.
    c.ok(&format!("drain {alice_host} --then-offline")).await;
    assert_eq!(
        b.ok("GET", &format!("/api/v1/hosts/{alice_host}"), None)
            .await["admin"],
        "draining"
    );
    // abortuser by session id (agentless host: the record ends at once).
    let r = c.ok(&format!("abortuser {alice}")).await;
    assert_eq!(r[0]["ok"], true, "{r}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = b
            .ok("GET", &format!("/api/v1/hosts/{alice_host}"), None)
            .await;
        if h["admin"] == "offline" {
            break;
        }
        // bob may share alice's host; end his session too if so.
        if h["sessions"] != 0 {
            c.ok("shutdownuser bob").await;
        }
        assert!(
            Instant::now() < deadline,
            "drained host never went offline: {h}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing left for alice: an error that says so.
    let v = c.json("logoffuser alice 5").await;
    assert!(
        v["error"].as_str().unwrap().contains("no live sessions"),
        "{v}"
    );

    // Agentless hosts need no credential: a clear refusal.
    let v = c.json("enroll h1").await;
    assert!(
        v["error"].as_str().unwrap().contains("without an agent"),
        "{v}"
    );

    // Everything above is in the audit log, from `ctl`, by root.
    let audit = c.ok("audit 50").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["surface"] == "ctl")
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for a in [
        "weight 250",
        "offline",
        "online",
        "drain --then-offline",
        "abortuser",
        "offline (drained)",
        "logoffuser",
        "enroll",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["surface"] == "ctl")
            .all(|r| r["actor"] == "root")
    );
    // And the REST API shows the same log.
    let api = b.ok("GET", "/api/v1/audit?limit=50", None).await;
    assert!(api.to_string().contains("drain --then-offline"));
}

/// The audit log keeps `[audit] keep` (records older are deleted when the broker starts), and
/// both `ctl audit` and the REST API page through the rest with the same cursor.
#[tokio::test]
async fn the_audit_log_keeps_its_retention_and_pages_on_both_surfaces() {
    let mut b = BrokerBuilder::new()
        .set("audit", "keep = \"1d\"")
        .toml(&pool())
        .write()
        .await;
    let now = switchboard_core::Millis::now_wall().0;
    let store = switchboard_store::SqlStore::connect(&b.store_url)
        .await
        .unwrap();
    for (id, age_h) in [("old1", 49), ("old2", 25), ("recent", 23)] {
        use switchboard_store::Store;
        store
            .append_audit(&switchboard_store::AuditRecord {
                id: id.into(),
                at: switchboard_core::Millis(now - age_h * 3_600_000),
                actor: "admin".into(),
                surface: "api".into(),
                action: "drain".into(),
                target: "h1".into(),
                result: "ok".into(),
            })
            .await
            .unwrap();
    }
    store.close().await;
    b.boot().await;
    let start = Instant::now();
    loop {
        let log = b.ok("GET", "/api/v1/audit?limit=100", None).await;
        let ids: Vec<&str> = log
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        if !ids.contains(&"old1") && !ids.contains(&"old2") {
            assert!(
                ids.contains(&"recent"),
                "{ids:?}: a record within `keep` stays"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for w in 1..=5 {
        b.ok(
            "PUT",
            "/api/v1/hosts/h1/weight",
            Some(serde_json::json!({"weight": w})),
        )
        .await;
    }
    let mut ctl = Ctl::connect(&b).await;
    let (mut rest, mut socket) = (Vec::new(), Vec::new());
    let (mut r_before, mut c_before) = (String::new(), String::new());
    for _ in 0..10 {
        let path = if r_before.is_empty() {
            "/api/v1/audit?limit=2".to_owned()
        } else {
            format!("/api/v1/audit?limit=2&before={r_before}")
        };
        let page = b.ok("GET", &path, None).await;
        let cmd = if c_before.is_empty() {
            "audit 2".to_owned()
        } else {
            format!("audit 2 before={c_before}")
        };
        let lines = ctl.ok(&cmd).await;
        let (page, lines) = (page.as_array().unwrap(), lines.as_array().unwrap());
        if page.is_empty() {
            assert!(lines.is_empty());
            break;
        }
        r_before = page.last().unwrap()["id"].as_str().unwrap().to_owned();
        c_before = lines.last().unwrap()["id"].as_str().unwrap().to_owned();
        rest.extend(
            page.iter()
                .map(|r| r["action"].as_str().unwrap().to_owned()),
        );
        socket.extend(
            lines
                .iter()
                .map(|r| r["action"].as_str().unwrap().to_owned()),
        );
    }
    assert_eq!(
        rest,
        [
            "weight 5", "weight 4", "weight 3", "weight 2", "weight 1", "drain"
        ],
        "newest first, each once, through the cursor"
    );
    assert_eq!(socket, rest);
    let bad = b.call("GET", "/api/v1/audit?before=", None).await;
    assert_error(&bad, 400, "bad_request");
}
