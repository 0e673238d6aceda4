//! The X2Go frontend with a real agent over TLS: resume of a session the agent reports (a
//! disconnected one as it is; a running one suspended through the agent first), and autologin
//! keys installed in the user's `~/.x2go/authorized_keys` by the agent and removed again.
//!
//! The agent's x2go source runs stand-ins for x2goserver's tools: `list.sh` prints
//! `x2golistsessions` lines kept in a state file, `suspend.sh` marks one suspended, and `sudo.sh`
//! runs its command directly (the real grants are in docs/agent-privileges.md). The autologin
//! test needs root: it creates a local user with a home directory.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use switchboard_broker::Broker;
use switchboard_testkit::broker::{AgentGuard, BrokerBuilder, TestBroker};
use tokio::time::Instant;

const LIST: &str = "#!/bin/sh\ncat \"$1\" 2>/dev/null\n";
const SUSPEND: &str = "#!/bin/sh\n# suspend.sh STATE ID: field 5 of the session's line becomes S\nawk -F'|' -v OFS='|' -v id=\"$2\" '$2==id {$5=\"S\"} {print}' \"$1\" > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"\n";
const SUDO: &str =
    "#!/bin/sh\n# sudo.sh -n -u USER -- PROGRAM ARGS...: runs PROGRAM ARGS\nshift 4\nexec \"$@\"\n";

fn line(user: &str, id: &str, state: &str) -> String {
    format!(
        "12685|{id}|50|h1|{state}|2026-11-21T23:40:46|ca4e4aafe7545862263f3aecb3e174c3|127.0.0.1|62379|62380|2026-11-21T23:40:56|{user}|10|62381|-1|-1\n"
    )
}

struct H {
    b: TestBroker,
    _agent: AgentGuard,
    base: String,
}

impl H {
    async fn start(sessions: &str) -> H {
        H::start_ttl(sessions, "2s").await
    }

    /// With `autologin_key_ttl = TTL`.
    async fn start_ttl(sessions: &str, ttl: &str) -> H {
        let b = BrokerBuilder::new()
            .agents()
            // A password file: `none` cannot go with autologin (it would install keys for anyone).
            .password("alice", "pw")
            .password("bob", "pw")
            .password(KEY_USER, "pw")
            .password(KEY_USER2, "pw")
            .x2go(
                "[desk]\nname=Desktop\nhost=h1 (127.0.0.51)\ncommand=XFCE\n\n\
                 [auto]\nname=Autologin desktop\nhost=h1 (127.0.0.51)\nbroker-session-autologin=true\n",
            )
            .set("x2go", &format!("autologin_key_ttl = \"{ttl}\""))
            .start()
            .await;
        let d = b.path();
        std::fs::write(d.join("list.sh"), LIST).unwrap();
        // The suspend script gets the state file from a wrapper, as the agent passes only the id.
        std::fs::write(
            d.join("suspend-wrapper.sh"),
            format!(
                "#!/bin/sh\nexec /bin/sh {:?} {:?} \"$1\"\n",
                d.join("suspend.sh"),
                d.join("state")
            ),
        )
        .unwrap();
        std::fs::write(d.join("suspend.sh"), SUSPEND).unwrap();
        std::fs::write(d.join("sudo.sh"), SUDO).unwrap();
        for f in ["suspend-wrapper.sh", "sudo.sh"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(d.join("state"), sessions).unwrap();
        let source = format!(
            "kind = \"x2go\"\nlist_command = [\"/bin/sh\", {list:?}, {state:?}]\n\
             sudo = {sudo:?}\nsuspend_command = {suspend:?}\n",
            list = d.join("list.sh").display().to_string(),
            state = d.join("state").display().to_string(),
            sudo = d.join("sudo.sh").display().to_string(),
            suspend = d.join("suspend-wrapper.sh").display().to_string(),
        );
        let agent = b
            .spawn_agent("h1", &[source], Duration::from_millis(500))
            .await;
        let base = b.base.clone();
        H {
            b,
            _agent: agent,
            base,
        }
    }

    fn broker(&self) -> &Broker {
        self.b.broker()
    }

    async fn wait_sessions(&self, user: &str, n: usize) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            let u = user.to_owned();
            let have = self
                .broker()
                .engine
                .query(move |s| s.sessions_of_user(&u).len())
                .await
                .unwrap();
            // Linked, and its first load report in: the host takes sessions.
            let up = self.broker().agents.is_connected("h1")
                && self
                    .broker()
                    .engine
                    .snapshot()
                    .hosts
                    .iter()
                    .any(|h| h.name == "h1" && h.excluded.is_none());
            if have == n && up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{user} does not have {n} session(s) reported by the agent, or h1 takes no sessions"
        );
    }

    async fn post(&self, body: &str) -> String {
        let r = switchboard_testkit::http_client()
            .post(format!("{}/plain/", self.base))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        // The reply without its AUTHID line (the next request signs in with the password again).
        let text = r.text().await.unwrap();
        match text.split_once('\n') {
            Some((first, rest)) if first.starts_with("AUTHID:") => rest.to_owned(),
            _ => text,
        }
    }

    fn state(&self) -> String {
        std::fs::read_to_string(self.b.path().join("state")).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_session_reported_by_the_agent_is_resumed() {
    let id = "alice-50-1795304446_stDXFCE_dp24";
    let h = H::start(&line("alice", id, "S")).await;
    h.wait_sessions("alice", 1).await;
    // The profile list names the host and the session's state.
    let list = h
        .post("task=listsessions&user=alice&password=pw&authid=")
        .await;
    assert!(list.contains("[desk]\nname=Desktop\nhost=h1\n"), "{list}");
    assert!(list.contains("\nstatus=S\n"), "{list}");
    let body = h
        .post("task=selectsession&sid=desk&user=alice&password=pw&authid=&login=alice")
        .await;
    assert_eq!(
        body,
        format!(
            "Access granted\nSERVER:127.0.0.51:22\nSESSION_INFO:{}",
            line("alice", id, "S")
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_session_is_suspended_through_the_agent_then_resumed() {
    let id = "bob-51-1795304446_stDXFCE_dp24";
    let h = H::start(&line("bob", id, "R")).await;
    h.wait_sessions("bob", 1).await;
    let started = Instant::now();
    let body = h
        .post("task=selectsession&sid=desk&user=bob&password=pw&authid=&login=bob")
        .await;
    assert_eq!(
        body,
        format!(
            "Access granted\nSERVER:127.0.0.51:22\nSESSION_INFO:{}",
            line("bob", id, "S")
        ),
        "the session is handed over as suspended"
    );
    // The agent ran the suspend command: the host's own list now says S.
    assert_eq!(h.state(), line("bob", id, "S"));
    // x2gobroker sleeps 2 s here and stalls every client; this waits for the agent only.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

const KEY_USER: &str = "sbtest-x2go";
const KEY_USER2: &str = "sbtest-x2go2";

fn key_user_home() -> PathBuf {
    user_home(KEY_USER)
}

fn user_home(user: &str) -> PathBuf {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates a local user: run it as root (./scripts/test does)"
    );
    let home = PathBuf::from(format!("/tmp/{user}-home"));
    if nix::unistd::User::from_name(user).unwrap().is_none() {
        let st = Command::new("useradd")
            .args(["--create-home", "--home-dir"])
            .arg(&home)
            .args(["--shell", "/usr/sbin/nologin", user])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let _ = std::fs::remove_file(home.join(".x2go/authorized_keys"));
    home
}

fn keys_in(home: &Path) -> String {
    std::fs::read_to_string(home.join(".x2go/authorized_keys")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autologin_keys_are_installed_by_the_agent_and_removed_again() {
    let home = key_user_home();
    let h = H::start("").await;
    h.wait_sessions(KEY_USER, 0).await;
    let body = h
        .post(&format!(
            "task=selectsession&sid=auto&user={KEY_USER}&password=pw&authid=&login={KEY_USER}"
        ))
        .await;
    assert!(
        body.starts_with("Access granted\nSERVER:127.0.0.51:22\n-----BEGIN RSA PRIVATE KEY-----\n"),
        "{body}"
    );
    assert!(body.trim_end().ends_with("-----END RSA PRIVATE KEY-----"));
    let installed = keys_in(&home);
    assert!(
        installed.starts_with("expiry-time=\"")
            && installed.contains("\" ssh-rsa AAAA")
            && installed.contains("switchboard-autologin"),
        "{installed:?}"
    );
    // Unused, it is gone after autologin_key_ttl (2 s here).
    let start = Instant::now();
    while !keys_in(&home).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "key still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The profile list announces autologin.
    let list = h
        .post(&format!(
            "task=listsessions&user={KEY_USER}&password=pw&authid="
        ))
        .await;
    assert!(
        list.contains("autologin=1\nkey=<will-be-exchanged-during-session-selection>\n"),
        "{list}"
    );
    // A client's own public key is installed instead when it sends one; options are refused.
    let pubkey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@client";
    let r = switchboard_testkit::http_client()
        .post(format!("{}/plain/", h.base))
        .body(form(&[
            ("task", "selectsession"),
            ("sid", "auto"),
            ("user", KEY_USER),
            ("password", "pw"),
            ("login", KEY_USER),
            ("pubkey", &format!("command=\"/bin/sh\" {pubkey}")),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = switchboard_testkit::http_client()
        .post(format!("{}/json/", h.base))
        .body(form(&[
            ("task", "selectsession"),
            ("profile-id", "auto"),
            ("user", KEY_USER),
            ("password", "pw"),
            ("pubkey", pubkey),
        ]))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["selected_session"]["authentication_pubkey"], "ACCEPTED");
    assert!(v["selected_session"].get("key").is_none());
    let installed = keys_in(&home);
    assert!(
        installed.starts_with("expiry-time=\"") && installed.contains(&format!("\" {pubkey} ")),
        "{installed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autologin_key_is_removed_after_its_first_use() {
    let home = user_home(KEY_USER2);
    // A long lifetime: only the first use can explain the key going away within the test.
    let h = H::start_ttl("", "10m").await;
    h.wait_sessions(KEY_USER2, 0).await;
    let body = h
        .post(&format!(
            "task=selectsession&sid=auto&user={KEY_USER2}&password=pw&authid=&login={KEY_USER2}"
        ))
        .await;
    assert!(body.contains("-----BEGIN RSA PRIVATE KEY-----"), "{body}");
    assert!(keys_in(&home).contains("switchboard-autologin"));
    // The client logs in with the key and starts its session: the agent reports it running.
    std::fs::write(
        h.b.path().join("state"),
        line(KEY_USER2, "sbtest-x2go2-52-1795304446_stDXFCE_dp24", "R"),
    )
    .unwrap();
    let start = Instant::now();
    while !keys_in(&home).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the key outlived its first use: {:?}",
            keys_in(&home)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Distinct valid ed25519 public keys (only key bytes differ).
fn test_key(i: usize) -> String {
    let mut b = *b"AAAAC3NzaC1lZDI1NTE5AAAAIGn2bVbY7nqjZyK0dYxJ4r8sJ1u3m6yWqfIh0pQzX9aB";
    b[40] = b"ABCDEFGH"[i / 8 % 8];
    b[41] = b"ABCDEFGH"[i % 8];
    format!("ssh-ed25519 {}", String::from_utf8(b.to_vec()).unwrap())
}

fn managed_lines(home: &Path) -> usize {
    keys_in(home)
        .lines()
        .filter(|l| l.contains("switchboard-expires="))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_key_edits_of_one_user_lose_nothing() {
    use switchboard_agent::authkeys::{KeyOp, apply};
    const USER: &str = "sbtest-x2go3";
    let home = user_home(USER);
    let until = switchboard_core::Millis::now_wall().0 + 3_600_000;
    let add = |i| {
        apply(
            USER,
            KeyOp::Add {
                key: test_key(i),
                expires_at_ms: until,
            },
        )
    };
    for r in futures_util::future::join_all((0..32).map(add)).await {
        r.unwrap();
    }
    assert_eq!(
        managed_lines(&home),
        32,
        "an edit at once with another lost a key"
    );
    // Sixteen removals interleaved with sixteen new keys leave exactly the others.
    let ops = (0..16).flat_map(|i| {
        [
            apply(USER, KeyOp::Remove { key: test_key(i) }),
            apply(
                USER,
                KeyOp::Add {
                    key: test_key(32 + i),
                    expires_at_ms: until,
                },
            ),
        ]
    });
    for r in futures_util::future::join_all(ops).await {
        r.unwrap();
    }
    let text = keys_in(&home);
    assert_eq!(managed_lines(&home), 32, "{text}");
    for i in 0..16 {
        assert!(!text.contains(&test_key(i)), "removed key {i} is back");
        assert!(text.contains(&test_key(16 + i)) && text.contains(&test_key(32 + i)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorized_keys_that_is_a_hard_link_or_not_the_users_is_refused() {
    use switchboard_agent::authkeys::{AuthKeysError, KeyOp, apply};
    const USER: &str = "sbtest-x2go4";
    let home = user_home(USER);
    let until = switchboard_core::Millis::now_wall().0 + 3_600_000;
    apply(
        USER,
        KeyOp::Add {
            key: test_key(0),
            expires_at_ms: until,
        },
    )
    .await
    .unwrap();
    let file = home.join(".x2go/authorized_keys");
    // A file only root may read, hard-linked in place of the user's file.
    let secret = PathBuf::from(format!("/tmp/{USER}-secret"));
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::remove_file(&file).unwrap();
    std::fs::hard_link(&secret, &file).unwrap();
    let e = apply(
        USER,
        KeyOp::Add {
            key: test_key(1),
            expires_at_ms: until,
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, AuthKeysError::Unsafe { why, .. } if why.contains("hard links")),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "root only\n",
        "not rewritten"
    );
    // A file of someone else's (root's), one link: refused too.
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, "not the user's\n").unwrap();
    let e = apply(
        USER,
        KeyOp::Add {
            key: test_key(1),
            expires_at_ms: until,
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, AuthKeysError::Unsafe { why, .. } if why.contains("owned by uid 0")),
        "{e}"
    );
    std::fs::remove_file(&file).unwrap();
    let _ = std::fs::remove_file(&secret);
}
