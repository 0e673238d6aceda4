//! `switchboard up` restarted under a real X2Go session: Debian's x2goserver starts the session,
//! the local agent lists it with the real `sudo -n /usr/sbin/x2golistsessions_root` (the default
//! x2go source, as `up` configures it), and the broker must keep the session's Switchboard id.
//!
//! Needs root (it creates a local user, `sbtest-x2gosrv`, kept for later runs) and the x2goserver
//! and sudo packages (`./scripts/test` installs them).
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
#![allow(clippy::disallowed_types)] // std Instant: this measures real processes and sockets, not our timers

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "sbtest-x2gosrv";

use switchboard_testkit::process::Up;

fn start_up(data: &Path, port: u16) -> (Up, String) {
    let (up, lines) = Up::start(
        Path::new(env!("CARGO_BIN_EXE_switchboard")),
        data,
        port,
        &[],
    );
    (up, lines.join("\n"))
}

/// The test user, created once (home `/tmp/sbtest-x2gosrv-home`).
fn x2go_user() -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates a local user and X2Go sessions: run it as root (./scripts/test does)"
    );
    for (path, package) in [
        ("/usr/sbin/x2golistsessions_root", "x2goserver"),
        ("/usr/bin/x2gostartagent", "x2goserver"),
        ("/usr/bin/sudo", "sudo"),
    ] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: install Debian's {package} (./scripts/test does)"
        );
    }
    let home = PathBuf::from(format!("/tmp/{USER}-home"));
    if nix::unistd::User::from_name(USER).unwrap().is_none() {
        let st = Command::new("useradd")
            .args(["--create-home", "--home-dir"])
            .arg(&home)
            .args(["--shell", "/usr/sbin/nologin", USER])
            .status()
            .unwrap();
        assert!(st.success(), "useradd failed");
    }
    home
}

/// Real X2Go sessions of the test user, terminated with x2goserver's own script at the end.
struct X2go {
    home: PathBuf,
    sessions: Vec<(String, i32)>,
}

impl X2go {
    /// Starts a session as x2goclient's ssh command does (`x2gostartagent` as the user, the
    /// client's address in `X2GO_CLIENT`); returns its X2Go id and its x2goagent's pid.
    fn start(&mut self) -> (String, i32) {
        let home = self.home.display().to_string();
        let out = Command::new("/usr/bin/sudo")
            .args(["-n", "-u", USER, "--", "env", "X2GO_CLIENT=127.0.0.1"])
            .arg(format!("HOME={home}"))
            .arg(format!("USER={USER}"))
            .args(["x2gostartagent", "800x600", "lan", "16m-jpeg-9"])
            .args([
                "unix-kde-depth_24",
                "us",
                "pc105/us",
                "1",
                "D",
                "XTERM",
                "both",
            ])
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "x2gostartagent failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Display, cookie, agent pid, session id, then the ports.
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 4, "x2gostartagent printed {text:?}");
        let (pid, id) = (lines[2].parse().unwrap(), lines[3].to_owned());
        assert!(id.starts_with(&format!("{USER}-")), "{text}");
        self.sessions.push((id.clone(), pid));
        (id, pid)
    }
}

impl Drop for X2go {
    fn drop(&mut self) {
        for (id, _) in &self.sessions {
            let _ = Command::new("/usr/bin/sudo")
                .args(["-n", "-u", USER, "--", "/usr/bin/x2goterminate-session", id])
                .current_dir("/")
                .stdin(Stdio::null())
                .output();
            let _ = std::fs::remove_dir_all(self.home.join(format!(".x2go/C-{id}")));
        }
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

async fn get(base: &str, token: &str, path: &str) -> Option<Value> {
    let r = switchboard_testkit::http_client()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    r.json::<Value>().await.ok()
}

/// The test user's sessions the broker has: (backend id, Switchboard id, state).
async fn sessions(base: &str, token: &str) -> Vec<(String, u64, String)> {
    let Some(v) = get(base, token, &format!("/api/v1/sessions?user={USER}")).await else {
        return Vec::new();
    };
    let mut out: Vec<_> = v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            (
                s["backend_id"].as_str().unwrap_or_default().to_owned(),
                s["id"].as_u64().unwrap(),
                s["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A restart of `switchboard up` rewrites no history: a real X2Go session (state R: x2goagent
/// running and waiting for its client, as right after x2goclient's start; x2goagent waits 60 s,
/// longer than this test) keeps its Switchboard session id across a SIGTERM and a new start with
/// the same data directory. Another real session started while `up` was down shows that the
/// first inventory after the restart has come in; then, and a report interval later, the first
/// session has its old id and state, and the user has exactly these two sessions. The store's
/// history (every session row ever, ended ones too) holds just these two, neither ended, and no
/// audit record names the first session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_x2go_session_keeps_its_id_across_a_restart_of_up() {
    let home = x2go_user();
    let mut x2go = X2go {
        home,
        sessions: Vec::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = switchboard_testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (up, text) = start_up(&data, port);
    assert!(
        text.lines()
            .any(|l| l.contains("local agent linked") && l.contains("x2go")),
        "the local agent has no x2go source:\n{text}"
    );
    let token = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let (first, first_pid) = x2go.start();
    let mut id = 0;
    wait_for(
        "the X2Go session reported as running",
        Duration::from_secs(20),
        async || {
            let s = sessions(&base, &token).await;
            match s.as_slice() {
                [(b, i, state)] if *b == first && state == "running" => {
                    id = *i;
                    true
                }
                _ => false,
            }
        },
    )
    .await;

    up.stop();
    let (second, second_pid) = x2go.start();
    let (up, _) = start_up(&data, port);
    wait_for(
        "the session started while up was down",
        Duration::from_secs(20),
        async || {
            sessions(&base, &token)
                .await
                .iter()
                .any(|(b, _, _)| *b == second)
        },
    )
    .await;
    // From the first inventory on, and over the next report (every 3 s), nothing is rewritten.
    let until = Instant::now() + Duration::from_millis(3500);
    let second_id = loop {
        let s = sessions(&base, &token).await;
        assert_eq!(s.len(), 2, "exactly the two sessions: {s:?}");
        let a = s.iter().find(|(b, _, _)| *b == first);
        assert_eq!(
            a.map(|(_, i, state)| (*i, state.as_str())),
            Some((id, "running")),
            "{first} is still session {id}, running: {s:?}"
        );
        if Instant::now() >= until {
            break s.iter().find(|(b, _, _)| *b == second).unwrap().1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(second_id, id);
    assert!(
        alive(first_pid) && alive(second_pid),
        "the x2goagents ran all along (x2goagent {first_pid}, {second_pid})"
    );
    let audit = get(&base, &token, "/api/v1/audit").await.unwrap();
    assert!(
        !audit.as_array().unwrap().iter().any(|a| {
            // Session actions are audited as `session ID (USER on HOST)`.
            let t = a["target"].as_str().unwrap_or_default();
            t.contains(&format!("session {id} ")) || t.contains(&first)
        }),
        "an audit record names session {id}: {audit}"
    );
    up.stop();

    let db = format!("sqlite://{}", data.join("switchboard.db").display());
    let store = switchboard_store::SqlStore::connect(&db).await.unwrap();
    let history = store.session_history(USER, 100).await.unwrap();
    store.close().await;
    let mut rows: Vec<_> = history
        .iter()
        .map(|r| {
            (
                r.id.0,
                r.backend_id.as_deref().unwrap_or_default().to_owned(),
                r.state.as_str(),
            )
        })
        .collect();
    rows.sort();
    let mut want = vec![
        (id, first.clone(), "running"),
        (second_id, second.clone(), "running"),
    ];
    want.sort();
    assert_eq!(rows, want, "the store's session history");
}
