#![allow(clippy::unwrap_used)]
//! The PAM method against the real libpam and pam_unix, with a local test user this test
//! creates. Needs root (to create the user and the PAM service file), as `./scripts/test` runs.

use std::net::IpAddr;
use std::time::Duration;
use switchboard_auth::{AuthError, Authenticator, Method, throttle::Throttle};
use tokio::time::Instant;

fn ensure_user() -> (&'static str, &'static str, &'static str) {
    switchboard_testkit::pam_test_user()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pam_accepts_the_right_password_and_refuses_a_wrong_one() {
    let (user, password, service) = ensure_user();
    let auth = Authenticator::with_throttle(
        Method::Pam {
            service: service.into(),
            pool: 2,
        },
        Throttle::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
            Duration::from_secs(60),
        ),
    );
    assert_eq!(
        auth.verify(user, password, ip("127.0.0.1")).await.unwrap(),
        user
    );
    assert_eq!(
        auth.verify(user, "wrong", ip("127.0.0.1")).await,
        Err(AuthError::Denied)
    );
    assert_eq!(
        auth.verify("sbtest-no-such-user", password, ip("127.0.0.1"))
            .await,
        Err(AuthError::Denied)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_from_one_source_do_not_hold_up_another() {
    let (user, password, service) = ensure_user();
    let auth = Authenticator::new(Method::Pam {
        service: service.into(),
        pool: 2,
    });
    // Eight wrong passwords in flight from one address: pam_unix delays each by about 2 s, and
    // the source's turn lets only one of them hold a PAM thread.
    let mut bad = Vec::new();
    for _ in 0..8 {
        let a = auth.clone();
        bad.push(tokio::spawn(async move {
            a.verify(user, "wrong", ip("127.0.0.66")).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    auth.verify(user, password, ip("127.0.0.1")).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "a good login waited {took:?} behind another source's wrong passwords"
    );
    for b in bad {
        b.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_from_many_sources_leave_a_pam_slot_for_others() {
    let (user, password, service) = ensure_user();
    let auth = Authenticator::new(Method::Pam {
        service: service.into(),
        pool: 2,
    });
    // Six addresses keep sending wrong passwords: each holds a PAM thread for pam_unix's failure
    // delay (about 2 s). Their first attempts, from clean records, fill the pool.
    let mut bad = Vec::new();
    for i in 0..6u8 {
        let a = auth.clone();
        bad.push(tokio::spawn(async move {
            let from = IpAddr::from([127, 0, 8, i + 1]);
            for _ in 0..4 {
                let _ = a.verify(user, "wrong", from).await;
            }
        }));
    }
    // Once every attacker has a failure on record, they may hold only one of the two threads.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let started = Instant::now();
    auth.verify(user, password, ip("127.0.0.1")).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "a clean login waited {took:?} behind other addresses' wrong passwords"
    );
    for b in bad {
        b.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_pam_accepts_is_signed_in_under_its_nss_name_or_not_at_all() {
    // A stack that accepts any name, as sssd or winbind accept aliases of one account.
    let (user, service) = switchboard_testkit::pam_permit_service();
    let auth = Authenticator::new(Method::Pam {
        service: service.into(),
        pool: 2,
    });
    assert_eq!(
        auth.verify(user, "anything", ip("127.0.0.1"))
            .await
            .unwrap(),
        user
    );
    // PAM says yes, but NSS knows no such account: no canonical name, so no sign-in.
    let alias = user.to_uppercase();
    assert_eq!(
        auth.verify(&alias, "anything", ip("127.0.0.2")).await,
        Err(AuthError::Denied)
    );
    assert_eq!(switchboard_auth::pam::canonical("root").unwrap(), "root");
    assert_eq!(
        switchboard_auth::pam::canonical("sbtest-no-such-user"),
        Err(AuthError::Denied)
    );
}
