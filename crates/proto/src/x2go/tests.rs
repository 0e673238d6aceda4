#![allow(clippy::unwrap_used)]
use super::*;

const FILE: &str = "\
[DEFAULT]
command=TERMINAL
user=BROKER_USER
usebrokerpass=true

[pool-mate]
name=MATE pool
host=node1 (127.0.0.11),node2 (127.0.0.12:2222),node3
command=mate
acl-users-allow=alice
acl-users-deny=ALL
broker-policy=least-load

[v6]
name=IPv6 only
host=six ([::1]:2200),bare (::1)
sshport=2022

[single]
name=Single
host=login1
rootless=not-set
broker-session-autologin=true
";

#[test]
fn profiles_parse_with_defaults_hosts_and_acls() {
    let p = parse_profiles(FILE).unwrap();
    let ids: Vec<&str> = p.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["pool-mate", "single", "v6"], "sorted by id");
    let mate = &p[0];
    assert_eq!(mate.hosts.len(), 3);
    assert_eq!(mate.hosts[0].address.to_string(), "127.0.0.11:22");
    assert_eq!(mate.hosts[1].address.to_string(), "127.0.0.12:2222");
    assert_eq!(mate.hosts[2].address.to_string(), "node3:22");
    assert_eq!(mate.broker_key("broker-policy"), Some("least-load"));
    assert!(!mate.acl.is_open());
    let v6 = &p[2];
    assert_eq!(v6.hosts[0].address.to_string(), "[::1]:2200");
    assert_eq!(v6.hosts[1].address.to_string(), "[::1]:2022");
    assert_eq!(
        v6.hosts[0].plain_server(),
        "six",
        "X2Go Client cannot take an IPv6 literal"
    );
    // `not-set` removes a key, even a built-in one.
    assert!(!p[1].keys.iter().any(|(k, _)| k == "rootless"));
}

#[test]
fn a_profile_is_rendered_as_x2gobroker_renders_it() {
    let p = parse_profiles(FILE).unwrap();
    let keys = p[0].for_user("alice", None, false, false);
    let get = |k: &str| keys.iter().find(|(x, _)| x == k).map(|(_, v)| v.plain());
    assert_eq!(get("user").as_deref(), Some("alice"));
    assert_eq!(get("command").as_deref(), Some("MATE"));
    assert_eq!(
        get("rootless").as_deref(),
        Some("0"),
        "desktops run rootless=0"
    );
    assert_eq!(get("host").as_deref(), Some("node1,node2,node3"));
    assert_eq!(get("usebrokerpass").as_deref(), Some("true"));
    assert_eq!(get("status"), None);
    // With a disconnected session: one host and its status (plain only).
    let keys = p[0].for_user("alice", Some(("node2", 'S')), false, false);
    let get = |k: &str| keys.iter().find(|(x, _)| x == k).map(|(_, v)| v.plain());
    assert_eq!(get("host").as_deref(), Some("node2"));
    assert_eq!(get("status").as_deref(), Some("S"));
    // JSON leaves out what python3-x2go cannot take.
    let json = p[0].for_user("alice", Some(("node2", 'S')), false, true);
    assert!(
        !json
            .iter()
            .any(|(k, _)| k == "status" || k == "usebrokerpass")
    );
    assert!(json.iter().all(|(k, _)| JSON_KEYS.contains(&k.as_str())));
    // Autologin is announced.
    let auto = p[1].for_user("bob", None, true, false);
    assert!(auto.contains(&("autologin".into(), Value::Bool(true))));
    assert!(auto.contains(&("key".into(), Value::Str(KEY_PLACEHOLDER.into()))));
}

#[test]
fn plain_and_json_bodies() {
    let p = parse_profiles(FILE).unwrap();
    let list = vec![("single", p[1].for_user("bob", None, false, false))];
    let body = plain_list(Some("t-1"), &list);
    assert!(body.starts_with("AUTHID:t-1\nAccess granted\nSTART_USER_SESSIONS\n\n[single]\nname=Single\nhost=login1\n"), "{body}");
    assert!(body.ends_with("\n\nEND_USER_SESSIONS\n"));
    assert_eq!(plain_list(None, &[]), "Access granted\n");
    let json: serde_json::Value = serde_json::from_str(&json_list(
        Some("t-2"),
        &[("single", p[1].for_user("bob", None, false, true))],
    ))
    .unwrap();
    assert_eq!(json["next-authid"], "t-2");
    assert_eq!(json["task"], "listprofiles");
    assert_eq!(json["profiles"]["single"]["host"][0], "login1");
    assert_eq!(json["profiles"]["single"]["fullscreen"], false);
    assert_eq!(json["profiles"]["single"]["width"], 800);
    let sel = Selected {
        server: "127.0.0.11".into(),
        port: 22,
        session_info: Some("1|alice-50-1_stDMATE_dp24|50|node1|S|x".into()),
        ..Selected::default()
    };
    assert_eq!(
        plain_select(None, &sel),
        "Access granted\nSERVER:127.0.0.11:22\nSESSION_INFO:1|alice-50-1_stDMATE_dp24|50|node1|S|x\n"
    );
    let j: serde_json::Value = serde_json::from_str(&json_select(Some("n"), &sel)).unwrap();
    assert_eq!(
        j["selected_session"]["port"], "22",
        "python3-x2go wants a string"
    );
    assert!(
        json_select(None, &sel).contains("\n    \""),
        "indent=4 like x2gobroker"
    );
}

#[test]
fn bad_profiles_name_line_and_profile() {
    for (text, line, needle) in [
        ("[a]\nhost=bad host name!\n", 2, "not a host name"),
        ("[a]\nhost=h (10.0.0.1:99999)\n", 2, "port"),
        ("[a]\nhost=\n", 2, "no hosts"),
        ("[a]\nwidth=wide\n", 2, "whole number"),
        ("[a]\nfullscreen=maybe\n", 2, "true or false"),
        (
            "[a]\nacl-clients-allow=gw.example.org\n",
            2,
            "host names are not allowed",
        ),
        ("[a]\nhost=h1,h1\n", 2, "twice"),
    ] {
        let e = parse_profiles(text).unwrap_err();
        assert_eq!(e.line, Some(line), "{text:?}: {e}");
        assert_eq!(e.profile.as_deref(), Some("a"));
        assert!(e.to_string().contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn forms_parse_as_tornado_reads_them() {
    let f = parse_form(
        b"task=selectsession&sid=only-one&user=x2gotest&password=&authid=&login=x2gotest",
    )
    .unwrap();
    assert_eq!(f.task, "selectsession");
    assert_eq!(f.profile, "only-one");
    assert_eq!(f.login(), "x2gotest");
    let f =
        parse_form(b"task=selectsession&profile-id=pool-lb&user=u&pubkey=ssh-ed25519+AAAA&user=v")
            .unwrap();
    assert_eq!(f.profile, "pool-lb");
    assert_eq!(f.user, "v", "the last value counts");
    assert_eq!(f.login(), "v");
    let secret = parse_form(b"user=u&password=hunter2&authid=tok-123").unwrap();
    let shown = format!("{secret:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("tok-123"),
        "{shown}"
    );
    assert!(parse_form(&vec![b'a'; MAX_FORM + 1]).is_err());
    assert!(parse_form(b"sid=a%0Ab").is_err());
}

#[test]
fn pubkeys_are_one_plain_key_line() {
    // A real ed25519 public key blob.
    let ok = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host";
    assert_eq!(check_pubkey(ok).unwrap(), ok);
    for bad in [
        "no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        "command=\"/bin/sh\" ssh-rsa AAAA",
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        "ssh-ed25519 $(id)",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\nssh-rsa AAAA",
        "",
    ] {
        assert!(check_pubkey(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_running_session_is_reported_suspended() {
    let line = "17450|x2gotest-50-1795303252_stDXFCE_dp24|50|vm|R|2026-11-21T23:20:52|ae0f|127.0.0.1|56826|56827|2026-11-21T23:20:54|x2gotest|2|56828|-1|-1";
    let s = as_suspended(line);
    assert_eq!(s.split('|').nth(4), Some("S"));
    assert_eq!(s.len(), line.len());
}

#[test]
fn a_listing_rendered_at_load_is_the_per_request_rendering() {
    // The test file's profiles, and the same under x2gobroker's shipped [DEFAULT] client keys.
    let full = format!(
        "[DEFAULT]\nuser=BROKER_USER\ncommand=TERMINAL\nheight=600\nexport=\nquality=9\n\
         fullscreen=false\nlayout=\nuseexports=true\nwidth=800\nspeed=2\nsoundsystem=pulse\n\
         print=true\ntype=auto\nsndport=4713\nxinerama=true\nvariant=\nusekbd=true\n\
         fstunnel=true\napplications=TERMINAL,WWWBROWSER,MAILCLIENT,OFFICE\nmultidisp=false\n\
         sshproxyport=22\nsound=true\nrootless=true\niconvto=UTF-8\nsoundtunnel=true\ndpi=96\n\
         sshport=22\nsetdpi=0\npack=16m-jpeg\ndirectrdp=false\nusebrokerpass=true\n{}\n\
         [desk]\nname=Desktop\nhost=a (127.0.0.1),b (127.0.0.2)\ncommand=xfce\n\
         [auto]\nname=Auto\nhost=c (127.0.0.3)\nkey=/etc/x\nautologin=false\n",
        FILE.split_once("\n\n").unwrap().1
    );
    for text in [FILE, full.as_str()] {
        let profiles = parse_profiles(text).unwrap();
        assert!(profiles.len() >= 3);
        for autologin in [false, true] {
            for user in ["alice", "bob.smith"] {
                for status in [None, Some('R'), Some('S')] {
                    let listings: Vec<PlainListing> = profiles
                        .iter()
                        .map(|p| p.plain_listing(autologin))
                        .collect();
                    fn session_in(p: &Profile, status: Option<char>) -> Option<(&str, char)> {
                        status.map(|c| (p.hosts.last().map_or("x", |h| h.name.as_str()), c))
                    }
                    let session = |p| session_in(p, status);
                    let keys: Vec<(String, Vec<(String, Value)>)> = profiles
                        .iter()
                        .map(|p| (p.id.clone(), p.for_user(user, session(p), autologin, false)))
                        .collect();
                    let items: Vec<(&str, Vec<(String, Value)>)> = keys
                        .iter()
                        .map(|(id, k)| (id.as_str(), k.clone()))
                        .collect();
                    let want = plain_list(Some("AUTH"), &items);
                    let got = plain_list_rendered(
                        Some("AUTH"),
                        user,
                        listings.iter().zip(&profiles).map(|(l, p)| (l, session(p))),
                    );
                    assert_eq!(got, want, "autologin {autologin}, {user}, {status:?}");
                }
            }
        }
    }
    // No profiles: the head only, as before.
    assert_eq!(
        plain_list_rendered(None, "alice", std::iter::empty()),
        plain_list(None, &[])
    );
}
