//! The X2Go frontend over real HTTP on loopback: X2Go Client's plain-protocol requests as
//! captured from the real client (reference §2.3) with golden replies, the JSON protocol, 401s,
//! AUTHID rotation and address binding, ACLs on select, unknown backends, login mapping, client
//! events in the audit log and a profile reload.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use switchboard_broker::Broker;
use switchboard_broker::config::Config;
use switchboard_testkit::broker::{BrokerBuilder, TestBroker};

const PROFILES: &str = "\
# Test profiles: x2gobroker's format, loopback addresses only.
[DEFAULT]
broker-agent-query-mode=NONE
broker-portscan-x2goservers=false
usebrokerpass=true

[pool-mate]
name=MATE pool (3 hosts, one on port 2222)
host=node1 (127.0.0.11),node2 (127.0.0.12:2222),node3 (127.0.0.13)
command=mate
broker-policy=rr

[single-xfce]
name=Single XFCE
host=vm (127.0.0.1)
command=XFCE

[admins-only]
name=Admins only
host=adm (127.0.0.21)
acl-users-allow=alice
acl-users-deny=ALL
acl-users-order=allow-deny

[v6]
name=IPv6 host
host=six ([::1]:2200)

[clients]
name=For the real clients (nothing listens there)
host=target (127.0.0.41:2)
";

struct H {
    b: TestBroker,
    base: String,
    token: String,
}

impl H {
    async fn start(extra: &str) -> H {
        H::start_auth("", extra).await
    }

    /// With `auth` as the `[auth]` section's body (empty: a password file with alice and bob),
    /// and `extra`: keys of `[x2go]`, then tables of their own.
    async fn start_auth(auth: &str, extra: &str) -> H {
        let mut b = BrokerBuilder::new()
            .x2go(PROFILES)
            .password("alice", "alice-pw")
            .password("bob", "bob-pw");
        if !auth.is_empty() {
            b = b.set("auth", auth.trim_end());
        }
        let tables = extra.find("\n[").map_or(
            if extra.starts_with('[') {
                0
            } else {
                extra.len()
            },
            |i| i + 1,
        );
        let (keys, tables) = extra.split_at(tables);
        if !keys.trim().is_empty() {
            b = b.set("x2go", keys.trim_end());
        }
        let b = b.toml(tables).start().await;
        H {
            base: b.base.clone(),
            token: b.token.clone(),
            b,
        }
    }

    fn config(&self) -> Config {
        self.b.config()
    }

    fn broker(&self) -> &Broker {
        self.b.broker()
    }

    async fn post_from(&self, from: &str, path: &str, body: &str) -> (u16, String, String) {
        let r = switchboard_testkit::client_from(from)
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, ct, r.text().await.unwrap())
    }

    async fn post(&self, path: &str, body: &str) -> (u16, String, String) {
        self.post_from("127.0.0.1", path, body).await
    }
}

/// Splits `AUTHID:…` off a plain reply.
fn authid(body: &str) -> (String, String) {
    let (first, rest) = body.split_once('\n').unwrap();
    let id = first.strip_prefix("AUTHID:").expect("an AUTHID line first");
    (id.to_owned(), rest.to_owned())
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(actual, expected, "reply differs from {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x2go_client_requests_get_golden_replies() {
    let h = H::start("").await;
    // Exactly what X2Go Client 4.1.2.2 sends (reference §2.3), with a real password.
    let (status, ct, body) = h
        .post(
            "/plain/",
            "task=listsessions&user=alice&password=alice-pw&authid=",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ct, "text/plain; charset=utf-8");
    let (id, rest) = authid(&body);
    golden("plain_listsessions_alice.txt", &rest);
    // The next request presents the AUTHID, as the client does.
    let (status, _, body) = h
        .post(
            "/plain/",
            &format!(
                "task=selectsession&sid=single-xfce&user=alice&password=&authid={id}&login=alice"
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (id, rest) = authid(&body);
    assert_eq!(rest, "Access granted\nSERVER:127.0.0.1:22\n");
    // A host reachable only by IPv6 is named, since X2Go Client splits SERVER: on colons.
    let (_, _, body) = h
        .post(
            "/plain/",
            &format!("task=selectsession&sid=v6&user=alice&password=&authid={id}&login=alice"),
        )
        .await;
    let (id, rest) = authid(&body);
    assert_eq!(rest, "Access granted\nSERVER:six:2200\n");
    // Round robin over the pool's three hosts, one of them on port 2222; the reservation lives,
    // so the same user asking again gets the same host.
    let (_, _, body) = h
        .post(
            "/plain/",
            &format!(
                "task=selectsession&sid=pool-mate&user=alice&password=&authid={id}&login=alice"
            ),
        )
        .await;
    let (id, first) = authid(&body);
    assert!(
        first.starts_with("Access granted\nSERVER:127.0.0.1"),
        "{first}"
    );
    let (_, _, body) = h
        .post(
            "/plain/",
            &format!(
                "task=selectsession&sid=pool-mate&user=alice&password=&authid={id}&login=alice"
            ),
        )
        .await;
    assert_eq!(authid(&body).1, first);
    // Bob does not see the admins' profile.
    let (_, _, body) = h
        .post(
            "/plain/",
            "task=listsessions&user=bob&password=bob-pw&authid=",
        )
        .await;
    golden("plain_listsessions_bob.txt", &authid(&body).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_protocol_as_python_x2go_speaks_it() {
    let h = H::start("").await;
    // pyhoca-cli's login: user and password, no task.
    let (status, ct, body) = h.post("/json/", "user=alice&password=alice-pw").await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/json"), "{ct}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["auth-status"], "Access granted");
    assert_eq!(v["task"], "");
    let id = v["next-authid"].as_str().unwrap().to_owned();
    let (_, _, body) = h
        .post(
            "/json/",
            &format!("task=listprofiles&user=alice&authid={id}"),
        )
        .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let profiles = v["profiles"].as_object().unwrap();
    assert_eq!(profiles.len(), 5);
    let mate = &profiles["pool-mate"];
    assert_eq!(mate["host"], serde_json::json!(["node1", "node2", "node3"]));
    assert_eq!(mate["command"], "MATE");
    assert_eq!(mate["rootless"], false);
    // Keys python3-x2go fails on are not sent (usebrokerpass comes from [DEFAULT]).
    for p in profiles.values() {
        for k in p.as_object().unwrap().keys() {
            assert!(
                switchboard_proto::x2go::JSON_KEYS.contains(&k.as_str()),
                "key {k} would crash python3-x2go"
            );
        }
    }
    let id = v["next-authid"].as_str().unwrap().to_owned();
    let (_, _, body) = h
        .post(
            "/json/",
            &format!("task=selectsession&profile-id=v6&user=alice&authid={id}"),
        )
        .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["task"], "selectsession");
    assert_eq!(
        v["selected_session"],
        serde_json::json!({"server": "::1", "port": "2200"})
    );
    // testcon on /json/ is an empty 200, with or without credentials.
    let (status, _, body) = h.post("/json/", "task=testcon").await;
    assert_eq!((status, body.as_str()), (200, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_401_and_tokens_are_single_use_and_rotate() {
    let h = H::start("").await;
    let (status, ct, body) = h
        .post(
            "/plain/",
            "task=listsessions&user=alice&password=nope&authid=",
        )
        .await;
    assert_eq!(status, 401);
    assert!(ct.starts_with("text/html"));
    assert_eq!(body, switchboard_proto::x2go::UNAUTHORIZED_BODY);
    let (status, _, _) = h
        .post(
            "/plain/",
            "task=listsessions&user=nobody&password=x&authid=",
        )
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = h.post("/plain/", "task=listsessions&password=x").await;
    assert_eq!(status, 401, "no user at all");
    // A good login starts a chain; each token works once and the next one differs.
    let (_, _, body) = h
        .post(
            "/plain/",
            "task=listsessions&user=alice&password=alice-pw&authid=",
        )
        .await;
    let (t1, _) = authid(&body);
    let (status, _, body) = h
        .post(
            "/plain/",
            &format!("task=listsessions&user=alice&authid={t1}"),
        )
        .await;
    assert_eq!(status, 200);
    let (t2, _) = authid(&body);
    assert_ne!(t1, t2);
    let (status, _, _) = h
        .post(
            "/plain/",
            &format!("task=listsessions&user=alice&authid={t1}"),
        )
        .await;
    assert_eq!(status, 401, "a replayed token is refused");
    // A token is the user's: bob cannot use alice's.
    let (status, _, _) = h
        .post(
            "/plain/",
            &format!("task=listsessions&user=bob&authid={t2}"),
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_bound_to_the_client_address() {
    let h = H::start("").await;
    let (_, _, body) = h
        .post(
            "/plain/",
            "task=listsessions&user=alice&password=alice-pw&authid=",
        )
        .await;
    let (t1, _) = authid(&body);
    let (status, _, _) = h
        .post_from(
            "127.0.0.2",
            "/plain/",
            &format!("task=listsessions&user=alice&authid={t1}"),
        )
        .await;
    assert_eq!(status, 401, "another address");
    let (status, _, _) = h
        .post(
            "/plain/",
            &format!("task=listsessions&user=alice&authid={t1}"),
        )
        .await;
    assert_eq!(status, 401, "a token tried from elsewhere is burnt");
    // With bind_to_address = false a chain may move.
    let h = H::start("bind_to_address = false\n").await;
    let (_, _, body) = h
        .post(
            "/plain/",
            "task=listsessions&user=alice&password=alice-pw&authid=",
        )
        .await;
    let (t1, _) = authid(&body);
    let (status, _, _) = h
        .post_from(
            "127.0.0.2",
            "/plain/",
            &format!("task=listsessions&user=alice&authid={t1}"),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_hold_on_select_too() {
    let h = H::start("").await;
    // x2gobroker hands out a server for a hidden profile; here bob gets what an unknown profile
    // gets, and the profile's host is never revealed.
    let (status, _, body) = h
        .post(
            "/plain/",
            "task=selectsession&sid=admins-only&user=bob&password=bob-pw&authid=&login=bob",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        authid(&body).1,
        "Access granted\nSERVER:no-server-available:22\n"
    );
    let (_, _, body) = h
        .post(
            "/plain/",
            "task=selectsession&sid=no-such&user=bob&password=bob-pw&authid=&login=bob",
        )
        .await;
    assert_eq!(
        authid(&body).1,
        "Access granted\nSERVER:no-server-available:22\n"
    );
    let (_, _, body) = h
        .post(
            "/plain/",
            "task=selectsession&sid=admins-only&user=alice&password=alice-pw&authid=&login=alice",
        )
        .await;
    assert_eq!(authid(&body).1, "Access granted\nSERVER:127.0.0.21:22\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_paths_and_methods() {
    let h = H::start("").await;
    for path in [
        "/plain/inifile/",
        "/plain/zeroconf",
        "/plain/inifile/foo/bar",
        "/json/inifile/",
    ] {
        let (status, _, _) = h.post(path, "task=testcon").await;
        assert_eq!(status, 200, "{path}");
    }
    // x2gobroker pasted this segment into exec(); here it is looked up in a fixed list.
    for path in ["/plain/ldap/", "/plain/os%3Bsystem/", "/json/__import__/"] {
        let (status, ct, _) = h.post(path, "task=testcon").await;
        assert_eq!(status, 404, "{path}");
        assert!(ct.starts_with("text/html"));
    }
    // GET would put passwords into URLs and access logs.
    let r = switchboard_testkit::http_client()
        .get(format!(
            "{}/plain/?task=testcon&user=alice&password=alice-pw",
            h.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // testcon needs no credentials and passes X2Go Client's "Access granted" check.
    let (status, _, body) = h.post("/plain/", "task=testcon").await;
    assert_eq!((status, body.as_str()), (200, "Access granted\nOK\n"));
    // Oversized bodies are refused.
    let (status, _, _) = h.post("/plain/", &"a".repeat(200 << 10)).await;
    assert!(status == 400 || status == 413, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_must_be_the_user_unless_mapped() {
    let h = H::start("[x2go.login_map]\nalice = [\"alice-admin\"]\n").await;
    // x2gobroker lets an authenticated user ask for anyone's login (finding S1).
    let (status, _, _) = h
        .post(
            "/plain/",
            "task=selectsession&sid=single-xfce&user=bob&password=bob-pw&authid=&login=alice",
        )
        .await;
    assert_eq!(status, 403);
    let (status, _, body) = h
        .post(
            "/plain/",
            "task=selectsession&sid=single-xfce&user=alice&password=alice-pw&authid=&login=alice-admin",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("SERVER:127.0.0.1:22"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_reach_the_audit_log() {
    let h = H::start("").await;
    let (status, _, body) = h
        .post(
            "/plain/",
            "task=clientevent&user=alice&password=alice-pw&sid=single-xfce&event=CONNECTED&server=vm&cmd=XFCE&authid=",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(authid(&body).1, "Access granted\n");
    // setpass is accepted and changes nothing (X2Go Client sends it; x2gobroker ignores it too).
    let (status, _, body) = h
        .post(
            "/plain/",
            "task=setpass&user=alice&password=alice-pw&newpass=other&authid=",
        )
        .await;
    assert_eq!(
        (status, authid(&body).1.as_str()),
        (200, "Access granted\n")
    );
    let (status, _, _) = h
        .post(
            "/plain/",
            "task=listsessions&user=alice&password=alice-pw&authid=",
        )
        .await;
    assert_eq!(status, 200, "the password is unchanged");
    let client = switchboard_testkit::http_client();
    let mut found = false;
    for _ in 0..50 {
        let v: serde_json::Value = client
            .get(format!("{}/api/v1/audit", h.base))
            .bearer_auth(&h.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        found = v.as_array().unwrap().iter().any(|r| {
            r["surface"] == "x2go"
                && r["actor"] == "alice"
                && r["action"] == "clientevent CONNECTED"
                && r["target"].as_str().unwrap().contains("server=vm")
        });
        if found {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(found, "client event not in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_reloaded_with_the_configuration() {
    let h = H::start("").await;
    let reloader = h.broker().reloader();
    let path = h.b.path().join("profiles.conf");
    std::fs::write(
        &path,
        format!("{PROFILES}\n[late]\nname=Added later\nhost=late1 (127.0.0.31)\n"),
    )
    .unwrap();
    reloader.apply(h.config()).await.unwrap();
    let (_, _, body) = h
        .post(
            "/plain/",
            "task=selectsession&sid=late&user=bob&password=bob-pw&authid=&login=bob",
        )
        .await;
    assert_eq!(authid(&body).1, "Access granted\nSERVER:127.0.0.31:22\n");
    // A broken file is refused at load, naming file, line and profile.
    std::fs::write(&path, "[bad]\nhost=h1 (10.0.0.1:99999)\n").unwrap();
    let e = Config::parse(
        &format!(
            "data_dir = {:?}\n[auth]\nmethod = \"none\"\n[x2go]\nsession_profiles = {:?}\n",
            h.b.path().display().to_string(),
            path.display().to_string()
        ),
        "b.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("line 2: profile [bad]"), "{e}");
}

/// Debian's X2Go tools: the scripts start with `#!/usr/bin/env python3` and need Debian's Python
/// with python3-x2go, not another python3 that may come first on PATH.
const DEBIAN_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_x2go_lists_profiles_and_selects_a_session() {
    let h = H::start("").await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/x2go_library.py");
    let out = tokio::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .args([&format!("{}/json/", h.base), "alice", "alice-pw", "clients"])
        .env("PATH", DEBIAN_PATH)
        .env("HOME", h.b.path())
        .output()
        .await
        .expect("python3-x2go is installed (./scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["auth"], true);
    assert_eq!(
        v["profiles"],
        serde_json::json!(["admins-only", "clients", "pool-mate", "single-xfce", "v6"])
    );
    assert_eq!(v["names"]["single-xfce"], "Single XFCE");
    let ids: Vec<&str> = v["authids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2],
        "AUTHIDs rotate: {ids:?}"
    );
    assert_eq!(
        v["selected"],
        serde_json::json!({"server": "127.0.0.41", "port": "2"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyhoca_cli_lists_profiles_and_connects_where_it_was_sent() {
    let h = H::start("").await;
    let url = format!("{}/json/", h.base).replace("http://", "http://alice@");
    let run = |args: Vec<String>| {
        let home = h.b.path().to_owned();
        async move {
            let out = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                tokio::process::Command::new("pyhoca-cli")
                    .args(&args)
                    .env("PATH", DEBIAN_PATH)
                    .env("HOME", home)
                    // pyhoca-cli wants a display even to list profiles; nothing is drawn.
                    .env("DISPLAY", ":99")
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("pyhoca-cli finished")
            .expect("pyhoca-cli is installed (./scripts/test installs it)");
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        }
    };
    let listed = run(vec![
        "--broker-url".into(),
        url.clone(),
        "--broker-password".into(),
        "alice-pw".into(),
        "--list-profiles".into(),
    ])
    .await;
    for id in ["admins-only", "clients", "pool-mate", "single-xfce", "v6"] {
        assert!(
            listed.contains(&format!("Profile ID: {id}")),
            "{id} missing:\n{listed}"
        );
    }
    assert!(listed.contains("Profile Name: MATE pool (3 hosts, one on port 2222)"));
    // Selecting a profile: pyhoca-cli asks the broker, then connects by SSH to the server it was
    // given (nothing listens there, so it stops at the connection).
    let selected = run(vec![
        "--broker-url".into(),
        url,
        "--broker-password".into(),
        "alice-pw".into(),
        "-P".into(),
        "clients".into(),
        "--add-to-known-hosts".into(),
    ])
    .await;
    assert!(
        selected.contains("connecting to [127.0.0.41]:2"),
        "pyhoca-cli did not go where the broker sent it:\n{selected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pam_logins_through_the_system_stack() {
    let (user, password, service) = switchboard_testkit::pam_test_user();
    let h = H::start_auth(
        &format!("method = \"pam\"\npam_service = \"{service}\"\n"),
        "",
    )
    .await;
    let (status, _, body) = h
        .post(
            "/plain/",
            &format!("task=listsessions&user={user}&password={password}&authid="),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (id, rest) = authid(&body);
    assert!(
        rest.starts_with("Access granted\nSTART_USER_SESSIONS\n"),
        "{rest}"
    );
    let (status, _, _) = h
        .post(
            "/plain/",
            &format!("task=listsessions&user={user}&authid={id}"),
        )
        .await;
    assert_eq!(status, 200, "the AUTHID chain continues without PAM");
    let (status, _, _) = h
        .post(
            "/plain/",
            &format!("task=listsessions&user={user}&password=wrong&authid="),
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_none_takes_the_user_from_the_trusted_proxys_header_only() {
    let b = BrokerBuilder::new()
        .x2go(PROFILES)
        .set("auth", "method = \"none\"\nuser_header = \"X-Remote-User\"")
        .set("http", "trusted_proxies = [\"127.0.0.1\"]")
        .start()
        .await;
    let post = |from: &'static str, header: Option<&'static str>, user: &'static str| {
        let base = b.base.clone();
        async move {
            let mut r = switchboard_testkit::client_from(from)
                .post(format!("{base}/plain/"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("task=listsessions&user={user}&password=&authid="));
            if let Some(h) = header {
                r = r.header("X-Remote-User", h);
            }
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // The proxy (127.0.0.1, trusted) signed alice in: her request is served.
    let (status, body) = post("127.0.0.1", Some("alice"), "alice").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[single-xfce]"), "{body}");
    // Another name in the request than the proxy's, no header, or the header from a peer that
    // is not a trusted proxy: refused.
    assert_eq!(post("127.0.0.1", Some("alice"), "bob").await.0, 401);
    assert_eq!(post("127.0.0.1", None, "alice").await.0, 401);
    assert_eq!(post("127.0.0.2", Some("alice"), "alice").await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_event_flood_is_answered_but_not_all_written() {
    let h = H::start("").await;
    // One sign-in, then an AUTHID chain of 200 client events, as fast as they go.
    let (_, _, body) = h
        .post(
            "/plain/",
            "task=listsessions&user=alice&password=alice-pw&authid=",
        )
        .await;
    let mut id = authid(&body).0;
    for i in 0..200 {
        let (status, _, body) = h
            .post(
                "/plain/",
                &format!("task=clientevent&user=alice&authid={id}&sid=single-xfce&event=FLOOD{i}"),
            )
            .await;
        assert_eq!(status, 200, "every event is answered");
        id = authid(&body).0;
    }
    // The store took a burst, not the flood (allow one or two more earned while it ran).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let v: serde_json::Value = switchboard_testkit::http_client()
        .get(format!("{}/api/v1/audit?limit=500", h.base))
        .bearer_auth(&h.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v.is_array(), "{v}");
    let written = switchboard_testkit::audit_count(&v, "clientevent FLOOD");
    let burst = switchboard_broker::http::x2go::EVENT_BURST as usize;
    assert!(
        (burst..=burst + 5).contains(&written),
        "{written} of 200 client events written"
    );
}

/// A broker whose password checks run on one worker with one waiting place, with alice's hash
/// taking about `check` to verify.
async fn busy_broker(check: std::time::Duration) -> H {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.keep().join("slow-passwd");
    switchboard_testkit::broker::slow_password_file(&path, "alice", "alice-pw", check);
    H::start_auth(
        &format!(
            "method = \"file:{}\"\nworkers = 1\nqueue = 1\n",
            path.display()
        ),
        "",
    )
    .await
}

/// One password login from `from`: (status, Retry-After, body, how long it took).
async fn timed_login(
    h: &H,
    from: String,
    path: &'static str,
) -> (u16, Option<String>, String, std::time::Duration) {
    let started = tokio::time::Instant::now();
    let r = switchboard_testkit::client_from(&from)
        .post(format!("{}{path}", h.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("task=listsessions&user=alice&password=alice-pw&authid=")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.text().await.unwrap();
    (status, retry, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_password_logins_is_bounded_and_the_rest_are_refused_at_once() {
    let check = std::time::Duration::from_millis(700);
    let h = busy_broker(check).await;
    // Eight logins at once from eight addresses, in both dialects: one runs, one waits, the
    // others are refused at once with tornado's 503 page and Retry-After.
    let mut burst = Vec::new();
    for i in 0..8u8 {
        let path = if i % 2 == 0 { "/plain/" } else { "/json/" };
        burst.push(timed_login(&h, format!("127.0.6.{}", i + 1), path));
    }
    let results = futures_util::future::join_all(burst).await;
    let granted: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert!(
        (1..=2).contains(&granted.len()) && granted.len() + busy.len() == results.len(),
        "at most one running and one waiting: {:?}",
        results.iter().map(|r| (r.0, r.3)).collect::<Vec<_>>()
    );
    for (status, retry, body, took) in &busy {
        assert_eq!(*status, 503);
        assert_eq!(retry.as_deref(), Some("2"));
        assert!(body.contains("503: Service Unavailable"), "{body}");
        assert!(
            *took < check / 2,
            "a refusal came only after {took:?}: it waited for a worker"
        );
    }
    // The refusals left no failure on their sources' records: a login from one of them right
    // after the burst is checked at once and succeeds.
    let refused_from = results
        .iter()
        .position(|r| r.0 == 503)
        .map(|i| format!("127.0.6.{}", i + 1))
        .unwrap();
    let (status, _, body, _) = timed_login(&h, refused_from, "/plain/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Access granted"), "{body}");
    let metrics = reqwest::get(format!("{}/metrics", h.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused: f64 = metrics
        .lines()
        .find(|l| l.starts_with("switchboard_auth_busy_total{work=\"file\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no busy counter in:\n{metrics}"));
    assert_eq!(refused, busy.len() as f64);
}

/// pyhoca-cli against a broker whose password checks are all taken: it gets the 503 and
/// reports that it has no such profile (its answer to any refused broker request), without
/// hanging or crashing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyhoca_cli_reports_a_busy_broker_and_exits() {
    let h = Arc::new(busy_broker(std::time::Duration::from_millis(800)).await);
    // Four clients keep the worker and the waiting place taken while pyhoca-cli runs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for i in 0..4u8 {
        let (h, stop) = (h.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, ..) = timed_login(&h, format!("127.0.7.{}", i + 1), "/plain/").await;
                if status == 503 {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let url = format!("{}/json/", h.base).replace("http://", "http://alice@");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new("pyhoca-cli")
            .args(["--broker-url", &url, "--broker-password", "alice-pw"])
            .args(["-P", "clients", "--add-to-known-hosts"])
            .env("PATH", DEBIAN_PATH)
            .env("HOME", h.b.path())
            .env("DISPLAY", ":99")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("pyhoca-cli does not hang on a busy broker")
    .expect("pyhoca-cli is installed (./scripts/test installs it)");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Refused, pyhoca-cli sees no profiles (as for the store's 503) and says so; it does not go
    // to the server it would otherwise have been sent to.
    assert!(!text.contains("Traceback"), "pyhoca-cli crashed:\n{text}");
    assert!(
        !text.contains("connecting to [127.0.0.41]:2"),
        "connected although refused:\n{text}"
    );
    assert!(
        text.contains("error: no such session profile of name: clients"),
        "no failure reported:\n{text}"
    );
}

/// A PAM stack that accepts an alias of an account (here: any name) cannot be used to get past
/// a user ACL: the name after sign-in is NSS's, and a name NSS does not know is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_that_pam_accepts_does_not_get_past_a_user_acl() {
    let (user, service) = switchboard_testkit::pam_permit_service();
    let profiles = format!(
        "[DEFAULT]\nbroker-agent-query-mode=NONE\n\n\
         [open]\nname=Open\nhost=o (127.0.0.51)\n\n\
         [not-for-them]\nname=Everyone but the test user\nhost=n (127.0.0.52)\n\
         acl-users-allow=ALL\nacl-users-deny={user}\nacl-users-order=deny-allow\n"
    );
    let b = BrokerBuilder::new()
        .x2go(&profiles)
        .set(
            "auth",
            &format!("method = \"pam\"\npam_service = \"{service}\""),
        )
        .start()
        .await;
    let post = |body: String| {
        let base = b.base.clone();
        async move {
            let r = reqwest::Client::new()
                .post(format!("{base}/plain/"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = post(format!("task=listsessions&user={user}&password=x&authid=")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("[open]") && !body.contains("[not-for-them]"),
        "{body}"
    );
    let alias = user.to_uppercase();
    for task in ["listsessions", "selectsession&sid=not-for-them"] {
        let (status, body) = post(format!("task={task}&user={alias}&password=x&authid=")).await;
        assert_eq!(status, 401, "{alias} got in: {body}");
    }
}
