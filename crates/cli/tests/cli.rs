//! The binary's command line, run as a user runs it.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::Command;

fn switchboard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .output()
        .expect("run switchboard")
}

#[test]
fn help_lists_every_subcommand() {
    let out = switchboard(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["up", "broker", "agent", "director", "ctl", "passwd"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(sub)),
            "--help does not list {sub}:\n{text}"
        );
    }
}

#[test]
fn the_director_checks_its_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("director.toml");
    let out = switchboard(&["director", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/director.toml");
    let out = switchboard(&["director", "--config", example, "--check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 services, mode proxy)"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[service]]\nname = \"ssh\"\nlisten = \"127.0.0.1:2222\"\nbackends = [\"127.0.0.1:22\"]\nschedular = \"rr\"\n").unwrap();
    let out = switchboard(&[
        "director",
        "--config",
        bad.to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5") && err.contains("schedular"), "{err}");
}

#[test]
fn ctl_without_a_broker_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mgmt.sock");
    let out = switchboard(&["ctl", "--socket", sock.to_str().unwrap(), "servers"]);
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(sock.to_str().unwrap()) && err.contains("is the broker or director running"),
        "{err}"
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = switchboard(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_line_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[pool]]\nname = \"p\"\nagent = false\n[[pool.host]]\nname = \"h1\"\naddress = \"127.0.0.2:22\"\n",
    )
    .unwrap();
    let out = switchboard(&[
        "broker",
        "--config",
        good.to_str().unwrap(),
        "--check-config",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 pools, 1 hosts"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[http]\nlisten = \"127.0.0.1:8080\"\nlisten_tls = true\n",
    )
    .unwrap();
    let out = switchboard(&[
        "broker",
        "--config",
        bad.to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml: line 3") && err.contains("listen_tls"),
        "{err}"
    );
}

#[test]
fn token_add_prints_a_token_once_and_stores_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let f = file.to_str().unwrap();
    let out = switchboard(&["token", "add", f, "ops", "--read-only"]);
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(token.starts_with("sbt_"));
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(stored.contains("ops:ro:") && !stored.contains(&token));
    assert_eq!(
        switchboard(&["token", "add", f, "ops"]).status.code(),
        Some(1)
    );
    assert!(switchboard(&["token", "revoke", f, "ops"]).status.success());
    assert!(!std::fs::read_to_string(&file).unwrap().contains("ops:"));
}

#[test]
fn agent_check_config_validates_the_file_the_credential_and_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA the agent can pin, made the way the broker makes its own.
    let pki = switchboard_broker::pki::ensure(&d.join("tls"), &["localhost".to_owned()]).unwrap();
    let cred = d.join("agent.credential");
    std::fs::write(&cred, "sba_test\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600)).unwrap();
    let good = d.join("agent.toml");
    std::fs::write(
        &good,
        format!(
            "broker = \"127.0.0.1:7443\"\nserver_name = \"localhost\"\nca = {:?}\ncredential_file = {:?}\nhost = \"h1\"\n[[source]]\nkind = \"logind\"\n",
            pki.ca_cert.display().to_string(),
            cred.display().to_string()
        ),
    )
    .unwrap();
    let out = switchboard(&[
        "agent",
        "--config",
        good.to_str().unwrap(),
        "--check-config",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (host h1"));

    // A readable-by-all credential file is refused, naming the key.
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = switchboard(&[
        "agent",
        "--config",
        good.to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("credential_file"));

    // Unknown keys name the line.
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "broker = \"127.0.0.1:7443\"\ncolour = \"blue\"\n").unwrap();
    let out = switchboard(&["agent", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("colour"), "{err}");

    // A missing file is a configuration error too.
    let out = switchboard(&["agent", "--config", d.join("nope.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
}

/// Runs `switchboard passwd FILE USER` with `input` on standard input.
fn passwd_with(file: &std::path::Path, user: &str, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["passwd", file.to_str().unwrap(), user])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn passwd_reads_the_password_from_stdin_and_stores_an_argon2_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let out = passwd_with(&file, "alice", "first-pw\n");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("added \"alice\""));
    let out = passwd_with(&file, "alice", "second-pw\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("changed"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("alice:$argon2id$"), "{text}");
    assert!(!text.contains("second-pw"));
    let hash = text.trim().split_once(':').unwrap().1;
    assert!(switchboard_auth::file::check(hash, "second-pw"));
    assert!(!switchboard_auth::file::check(hash, "first-pw"));
    assert!(!passwd_with(&file, "bad:name", "x\n").status.success());
    assert!(
        !passwd_with(&file, "bob", "\n").status.success(),
        "an empty password is refused"
    );
}
