#![allow(clippy::unwrap_used)]
//! The PAM method against the real libpam and pam_unix, with a local test user this test
//! creates. Needs root (to create the user and the PAM service file), as `./scripts/test` runs.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use switchboard_auth::{AuthError, Authenticator, Method, throttle::Throttle};

const USER: &str = "sbtest-pam";
const PASSWORD: &str = "Corr3ct-Horse";
const SERVICE: &str = "switchboard-test";

fn ensure_user() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates a local user and a PAM service: run it as root (./scripts/test does)"
    );
    if nix::unistd::User::from_name(USER).unwrap().is_none() {
        let st = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", USER])
            .status()
            .unwrap();
        assert!(st.success(), "useradd failed");
    }
    let mut chpasswd = Command::new("chpasswd")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(chpasswd.stdin.take().unwrap(), "{USER}:{PASSWORD}").unwrap();
    assert!(chpasswd.wait().unwrap().success());
    // The shipped service file, installed under a test name.
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/pam.d/switchboard"),
    )
    .unwrap();
    std::fs::write(format!("/etc/pam.d/{SERVICE}"), shipped).unwrap();
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pam_accepts_the_right_password_and_refuses_a_wrong_one() {
    ensure_user();
    let auth = Authenticator::with_throttle(
        Method::Pam {
            service: SERVICE.into(),
            pool: 2,
        },
        Throttle::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
            Duration::from_secs(60),
        ),
    );
    auth.verify(USER, PASSWORD, ip("127.0.0.1")).await.unwrap();
    assert_eq!(
        auth.verify(USER, "wrong", ip("127.0.0.1")).await,
        Err(AuthError::Denied)
    );
    assert_eq!(
        auth.verify("sbtest-no-such-user", PASSWORD, ip("127.0.0.1"))
            .await,
        Err(AuthError::Denied)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_from_one_source_do_not_hold_up_another() {
    ensure_user();
    let auth = Authenticator::new(Method::Pam {
        service: SERVICE.into(),
        pool: 2,
    });
    // Eight wrong passwords in flight from one address: pam_unix delays each by about 2 s, and
    // the source's turn lets only one of them hold a PAM thread.
    let mut bad = Vec::new();
    for _ in 0..8 {
        let a = auth.clone();
        bad.push(tokio::spawn(async move {
            a.verify(USER, "wrong", ip("127.0.0.66")).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    auth.verify(USER, PASSWORD, ip("127.0.0.1")).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "a good login waited {took:?} behind another source's wrong passwords"
    );
    for b in bad {
        b.abort();
    }
}
