//! `switchboard up`, run as a newcomer runs it: the broker comes up with its own CA, the local
//! agent links to it over TLS and reports this machine's load, simulated hosts join with
//! `--simulate`, and a second start reuses the credential and the CA.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
#![allow(clippy::disallowed_types)] // std Instant: this measures real processes and sockets, not our timers

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_testkit::free_port;
use switchboard_testkit::process::Up;

fn start(data: &std::path::Path, port: u16, simulate: usize) -> (Up, Vec<String>) {
    Up::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_switchboard")),
        data,
        port,
        &["--simulate", &simulate.to_string()],
    )
}

async fn hosts(base: &str, token: &str) -> Vec<Value> {
    let r = switchboard_testkit::http_client()
        .get(format!("{base}/api/v1/hosts?limit=1000"))
        .bearer_auth(token)
        .send()
        .await;
    match r {
        Ok(r) => r.json::<Value>().await.unwrap()["items"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn up_links_its_local_agent_and_simulated_hosts_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (guard, lines) = start(&data, port, 3);
    let text = lines.join("\n");
    assert!(text.contains("local agent linked over TLS"), "{text}");
    assert!(text.contains("Simulated pool `sim`: 3 hosts"), "{text}");
    let token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    // The local host and the three simulated hosts all come up with load reports.
    wait_for(
        "four hosts up with load",
        Duration::from_secs(30),
        async || {
            let h = hosts(&base, &token).await;
            h.len() == 4
                && h.iter().all(|h| {
                    h["health"] == "up" && h["load"]["cpu_count"].as_u64().unwrap_or(0) > 0
                })
        },
    )
    .await;
    let h = hosts(&base, &token).await;
    let sim: Vec<&Value> = h
        .iter()
        .filter(|h| h["name"].as_str().unwrap().starts_with("sim-"))
        .collect();
    assert_eq!(sim.len(), 3);
    for s in &sim {
        let addr = s["address"].as_str().unwrap_or_default().to_owned();
        assert!(addr.starts_with("127.") && addr != "127.0.0.1", "{s}");
    }
    // The X2Go frontend serves the generated profile `desktops` (this machine) to a PAM user.
    assert!(text.contains("/plain/ (X2Go Client)"), "{text}");
    let (user, password, _) = switchboard_testkit::pam_test_user();
    let r = switchboard_testkit::http_client()
        .post(format!("{base}/plain/"))
        .body(format!(
            "task=listsessions&user={user}&password={password}&authid="
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("\n[desktops]\n"), "{body}");
    assert!(
        std::fs::read_to_string(data.join("x2gobroker-sessionprofiles.conf"))
            .unwrap()
            .contains("[desktops]")
    );
    // Secrets are private; the CA and credential stay for the next start.
    use std::os::unix::fs::PermissionsExt;
    for f in [
        "agent.credential",
        "admin.token",
        "tls/agent-ca.key",
        "tls/agents.key",
    ] {
        let mode = std::fs::metadata(data.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // The operator console on the management socket, one-shot and interactive.
    let socket = data.join("mgmt.sock");
    let ctl = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["ctl", "--socket", socket.to_str().unwrap()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = ctl(&["servers"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HOST"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("sim-00003 ")), "{text}");
    let out = ctl(&["server", "no-such-host"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no host"));
    let out = ctl(
        &[],
        "hello\ndrain sim-00001\nsessions host=sim-00001\nquit\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4 hosts"), "{text}");
    assert!(text.contains("sim-00001: draining"), "{text}");
    let out = ctl(&["--", "frobnicate"], "");
    assert_eq!(out.status.code(), Some(1));
    let credential = std::fs::read_to_string(data.join("agent.credential")).unwrap();
    let ca = std::fs::read(data.join("tls/agent-ca.crt")).unwrap();
    drop(guard);

    let (_guard, _) = start(&data, port, 0);
    wait_for("local host up again", Duration::from_secs(30), async || {
        let h = hosts(&base, &token).await;
        h.len() == 1 && h[0]["health"] == "up"
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(data.join("agent.credential")).unwrap(),
        credential,
        "the local agent's credential is reused"
    );
    assert_eq!(std::fs::read(data.join("tls/agent-ca.crt")).unwrap(), ca);
}

/// The dashboard in a real browser: headless Debian chromium, driven by playwright-core
/// (`tests/browser/dashboard.mjs`), signs in with the admin token of `switchboard up --simulate
/// 3`, drains a host through the page, and the REST API confirms it. Screenshots go to
/// `target/test-artifacts/dashboard/`.
#[tokio::test]
async fn the_dashboard_drains_a_host_in_a_real_browser() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let browser_dir = repo.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix tests/browser` (./scripts/test does)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is missing (./scripts/test installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (_guard, _) = start(&data, port, 3);
    let token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    wait_for("sim-00002 up", Duration::from_secs(30), async || {
        hosts(&base, &token)
            .await
            .iter()
            .any(|h| h["name"] == "sim-00002" && h["health"] == "up")
    })
    .await;
    let shots = repo.join("target/test-artifacts/dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .args([&base, &token, "sim-00002", shots.to_str().unwrap()])
        .output()
        .await
        .expect("node runs");
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shots.join("2-drained.png").exists());
    // The REST API sees what the page did, and the audit log says who did it.
    let h = hosts(&base, &token).await;
    let host = h.iter().find(|h| h["name"] == "sim-00002").unwrap();
    assert_eq!(host["admin"], "draining", "{host}");
    let audit: Value = switchboard_testkit::http_client()
        .get(format!("{base}/api/v1/audit"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["surface"] == "ui"
                && a["action"] == "drain"
                && a["target"] == "sim-00002"
                && a["actor"] == "token:admin"),
        "{audit}"
    );
}
