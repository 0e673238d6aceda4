//! Log-offs end to end with real processes: a real agent over TLS whose site session source
//! treats `sleep` processes of a local test user as sessions. `abortuser`, `shutdownuser` and
//! `logoffuser` on the management socket (including a grace period running out on a process that
//! ignores SIGTERM), and a pool's session policy logging off a disconnected session, with its
//! audit record. Needs root: it creates a local user and runs processes as that user.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;
use switchboard_broker::Broker;
use switchboard_testkit::broker::{AgentGuard, BrokerBuilder, Ctl, Host, Pool, TestBroker};
use tokio::time::Instant;

const USER: &str = "sbtest-sess";

/// The site source: every process of the test user whose command line starts with `sbsess-ID`,
/// where ID ends with this harness's suffix (`DIR/suffix`), is session ID; a marker file
/// `DIR/ID.disconnected` makes it disconnected.
const SOURCE: &str = r#"#!/bin/sh
dir="$1"; op="$2"; id="$3"
suffix=$(cat "$dir/suffix")
case "$op" in
list)
  pgrep -u sbtest-sess -a -f "^sbsess-[a-z]+$suffix( |\$)" | while read -r pid cmd rest; do
    sid="${cmd#sbsess-}"
    state=running; [ -e "$dir/$sid.disconnected" ] && state=disconnected
    printf '{"id":"%s","user":"sbtest-sess","state":"%s"}\n' "$sid" "$state"
  done ;;
terminate) pkill -TERM -u sbtest-sess -f "^sbsess-$id( |\$)"; true ;;
kill) pkill -KILL -u sbtest-sess -f "^sbsess-$id( |\$)"; true ;;
*) echo "unknown operation $op" >&2; exit 2 ;;
esac
"#;

fn ensure_user() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs processes as a local test user: run it as root (./scripts/test does)"
    );
    if nix::unistd::User::from_name(USER).unwrap().is_none() {
        let st = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", USER])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// Starts session `id`: a `sleep` of the test user named `sbsess-ID`; `stubborn` ignores SIGTERM.
fn start_session(id: &str, stubborn: bool) {
    let trap = if stubborn { "trap '' TERM; " } else { "" };
    // Not waited for here: the session runs until a test ends it, and the harness kills what is
    // left when it is dropped.
    #[allow(clippy::zombie_processes)]
    Command::new("runuser")
        .args(["-u", USER, "--", "bash", "-c"])
        .arg(format!("{trap}exec -a sbsess-{id} sleep 600"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
}

fn alive(id: &str) -> bool {
    Command::new("pgrep")
        .args(["-u", USER, "-f", &format!("^sbsess-{id}( |$)")])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

struct H {
    /// Distinguishes this test's sessions from those of tests running beside it.
    n: usize,
    b: TestBroker,
    _agent: AgentGuard,
}

impl H {
    async fn start(pool_extra: &str) -> H {
        ensure_user();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let b = BrokerBuilder::new()
            .agents()
            .set("placement", "policy_interval = \"200ms\"")
            .pool(
                Pool::new("desk")
                    .set(pool_extra.trim_end())
                    .host(Host::new("h1", "127.0.0.52:22")),
            )
            .start()
            .await;
        let d = b.path();
        std::fs::write(d.join("source.sh"), SOURCE).unwrap();
        std::fs::write(d.join("suffix"), format!("-{}-{n}", std::process::id())).unwrap();
        let script = d.join("source.sh").display().to_string();
        let state = d.display().to_string();
        let source = format!(
            "kind = \"command\"\nlist = [\"/bin/sh\", {script:?}, {state:?}, \"list\"]\n\
             terminate = [\"/bin/sh\", {script:?}, {state:?}, \"terminate\"]\n\
             kill = [\"/bin/sh\", {script:?}, {state:?}, \"kill\"]\n"
        );
        let agent = b
            .spawn_agent("h1", &[source], Duration::from_millis(500))
            .await;
        H {
            n,
            b,
            _agent: agent,
        }
    }

    fn broker(&self) -> &Broker {
        self.b.broker()
    }

    /// Switchboard's id of session `backend` once the agent has reported it.
    async fn session_id(&self, backend: &str) -> u64 {
        let start = Instant::now();
        loop {
            let b = backend.to_owned();
            let id = self
                .broker()
                .engine
                .query(move |s| {
                    s.sessions_of_user(USER)
                        .into_iter()
                        .find(|r| r.backend_id.as_deref() == Some(b.as_str()))
                        .map(|r| r.id.0)
                })
                .await
                .unwrap();
            if let Some(id) = id {
                return id;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "session {backend} never reported"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One management command in JSON mode.
    async fn ctl(&self, line: &str) -> serde_json::Value {
        // JSON mode is the default on the socket: one object per reply.
        Ctl::connect(&self.b).await.json(line).await
    }
}

impl Drop for H {
    fn drop(&mut self) {
        // Only this test's sessions: the tests run in parallel under one user.
        let _ = Command::new("pkill")
            .args([
                "-KILL",
                "-u",
                USER,
                "-f",
                &format!("^sbsess-[a-z]+-{}-{}( |$)", std::process::id(), self.n),
            ])
            .status();
    }
}

async fn gone_within(id: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while alive(id) {
        assert!(
            start.elapsed() < limit,
            "process of session {id} still alive after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// A session name unique to this process and harness: `NAME-PID-N`.
fn tag(h: &H, name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), h.n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_shutdown_and_logoff_end_real_processes() {
    let h = H::start("").await;
    let (a, s, l) = (tag(&h, "abort"), tag(&h, "shutdown"), tag(&h, "logoff"));
    start_session(&a, true);
    start_session(&s, false);
    start_session(&l, true);
    let (ia, is, il) = (
        h.session_id(&a).await,
        h.session_id(&s).await,
        h.session_id(&l).await,
    );
    // abortuser: killed at once, even though it ignores SIGTERM.
    let r = h.ctl(&format!("abortuser {ia}")).await;
    assert_eq!(r["ok"], true, "{r}");
    gone_within(&a, Duration::from_secs(5)).await;
    // shutdownuser: a graceful terminate, which a normal process obeys.
    let r = h.ctl(&format!("shutdownuser {is}")).await;
    assert_eq!(r["ok"], true, "{r}");
    gone_within(&s, Duration::from_secs(5)).await;
    // logoffuser with a 2 s grace on a process that ignores SIGTERM: alive through the grace,
    // killed when it runs out.
    let started = Instant::now();
    let r = h.ctl(&format!("logoffuser {il} 2")).await;
    assert_eq!(r["ok"], true, "{r}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(alive(&l), "killed before its grace ran out");
    gone_within(&l, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "killed {took:?} after the log-off, before its 2 s grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_policy_logs_off_a_disconnected_session_and_audits_it() {
    let h = H::start("logoff_disconnected_after = \"1s\"\nlogoff_grace = \"1s\"\n").await;
    let (keep, drop_) = (tag(&h, "kept"), tag(&h, "idle"));
    start_session(&keep, false);
    start_session(&drop_, false);
    std::fs::write(h.b.path().join(format!("{drop_}.disconnected")), "").unwrap();
    let id = h.session_id(&drop_).await;
    h.session_id(&keep).await;
    // Disconnected for a second: the policy logs it off through the agent.
    gone_within(&drop_, Duration::from_secs(15)).await;
    assert!(alive(&keep), "a running session is left alone");
    let start = Instant::now();
    loop {
        let r = h.ctl("audit 20").await;
        let found = r["data"].as_array().unwrap().iter().any(|a| {
            a["actor"] == "policy"
                && a["surface"] == "policy"
                && a["action"] == "logoff (disconnected policy)"
                && a["result"] == "ok"
                && a["target"].as_str().unwrap().starts_with(&format!(
                    "session {id} of {USER} on h1 in pool desk: disconnected for"
                ))
        });
        if found {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no audit record of the policy log-off: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // explain shows the pool's policies.
    let e = h.ctl(&format!("explain {USER} desk")).await;
    assert_eq!(
        e["data"]["limits"]["logoff_disconnected_after"], "1s",
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_per_user_refuses_one_more_but_resumes() {
    let h = H::start("max_sessions_per_user = 1\n").await;
    let one = tag(&h, "one");
    start_session(&one, false);
    std::fs::write(h.b.path().join(format!("{one}.disconnected")), "").unwrap();
    let id = h.session_id(&one).await;
    // Asking again resumes the session the user has.
    let placed = h
        .broker()
        .engine
        .apply(switchboard_core::Command::Reserve {
            user: USER.into(),
            pool: "desk".into(),
            client: None,
        })
        .await
        .unwrap();
    assert!(
        format!("{placed:?}").contains(&format!("SessionId({id})")),
        "{placed:?}"
    );
    // With the host offline it cannot be resumed, and a new session would be one too many.
    assert_eq!(h.ctl("offlineserver h1").await["ok"], true);
    let e = h
        .broker()
        .engine
        .apply(switchboard_core::Command::Reserve {
            user: USER.into(),
            pool: "desk".into(),
            client: None,
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the most it allows"), "{e}");
    let e = h.ctl(&format!("explain {USER} desk")).await;
    assert_eq!(e["data"]["at_user_limit"], true, "{e}");
    assert_eq!(e["data"]["user_sessions"], 1, "{e}");
}

/// An agent restart keeps its host's sessions as they were: the first inventory waits until
/// the (slow) session source has listed once, so the broker never hears "no sessions" and never
/// ends and re-adopts a live session under a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_keeps_live_sessions_and_their_ids() {
    let b = BrokerBuilder::new()
        .agents()
        .pool(Pool::new("desk").host(Host::new("h1", "127.0.0.55:22")))
        .start()
        .await;
    let source = "kind = \"command\"\nlist = [\"/bin/sh\", \"-c\", \
        \"sleep 1; echo '{\\\"id\\\":\\\"s1\\\",\\\"user\\\":\\\"alice\\\",\\\"state\\\":\\\"running\\\"}'\"]\n"
        .to_owned();
    let find = || async {
        let v = b.ok("GET", "/api/v1/sessions?user=alice", None).await;
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["backend_id"] == "s1")
            .map(|s| {
                (
                    s["id"].as_u64().unwrap(),
                    s["state"].as_str().unwrap().to_owned(),
                )
            })
    };
    let agent = b
        .spawn_agent(
            "h1",
            std::slice::from_ref(&source),
            Duration::from_millis(500),
        )
        .await;
    let start = Instant::now();
    let first = loop {
        if let Some((id, _)) = find().await {
            break id;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "s1 never reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(agent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _again = b
        .spawn_agent("h1", &[source], Duration::from_millis(500))
        .await;
    // Across the restart and well past the first listing, s1 keeps its id and never ends.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let now = find().await;
        assert_eq!(
            now.as_ref().map(|(id, _)| *id),
            Some(first),
            "s1 is still session {first}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `x2golistsessions_root` lists a root session (or any row the agent cannot accept) beside a
/// user's: the user's session is reported, the row is skipped and counted, and the host's
/// inventory goes on changing (it used to freeze on the first bad row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unacceptable_x2go_row_is_skipped_and_counted_not_the_whole_listing() {
    let b = BrokerBuilder::new()
        .agents()
        .pool(Pool::new("desk").host(Host::new("h1", "127.0.0.56:22")))
        .start()
        .await;
    let row = |id: &str, user: &str| {
        format!(
            "17450|{id}|50|vm|R|2026-11-22T23:20:52|ae0f811ae59da775382e700bd67204bb|127.0.0.1|56826|56827|2026-11-22T23:20:54|{user}|2|56828|-1|-1"
        )
    };
    let list = b.path().join("x2golist");
    std::fs::write(
        &list,
        format!(
            "{}\n{}\n",
            row("root-50-1795303252_stDXFCE_dp24", "root"),
            row("alice-51-1795303252_stDXFCE_dp24", "alice")
        ),
    )
    .unwrap();
    let source = format!(
        "kind = \"x2go\"\nlist_command = [\"/bin/cat\", {:?}]\n",
        list.display().to_string()
    );
    let _agent = b
        .spawn_agent("h1", &[source], Duration::from_millis(500))
        .await;
    let start = Instant::now();
    loop {
        let sessions = b.ok("GET", "/api/v1/sessions?host=h1", None).await;
        let host = b.ok("GET", "/api/v1/hosts/h1", None).await;
        let ids: Vec<&str> = sessions["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["backend_id"].as_str())
            .collect();
        if ids == ["alice-51-1795303252_stDXFCE_dp24"] && host["load"]["skipped_rows"] == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{ids:?}, {}",
            host["load"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The listing is not frozen: a new session of bob's appears.
    std::fs::write(
        &list,
        format!(
            "{}\n{}\n{}\n",
            row("root-50-1795303252_stDXFCE_dp24", "root"),
            row("alice-51-1795303252_stDXFCE_dp24", "alice"),
            row("bob-52-1795303252_stDXFCE_dp24", "bob")
        ),
    )
    .unwrap();
    let start = Instant::now();
    loop {
        let sessions = b.ok("GET", "/api/v1/sessions?user=bob", None).await;
        if !sessions["items"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "bob never reported"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
