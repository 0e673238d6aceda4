//! Shared test harness: stores on both backends, fixtures.
//!
//! # Layout
//! - [`broker`] (feature `broker`): a broker started in-process from a typed builder, with an
//!   HTTP client, a management-socket client and in-process agents on request.
//! - [`http_client`]: an HTTP client for talking to a broker under test; [`client_from`] one
//!   whose connections come from a given loopback address; [`audit_count`] counts audit records.
//! - [`kubeapi`]: a fake Kubernetes API server (pods, claims, watches, scripted phases).
//! - [`layers`]: a check that a crate's `crate::` and `super::` imports keep a layer order.
//! - [`store`]: a fresh SQLite store in a temp dir, and a fresh PostgreSQL database on the server
//!   the test script started (`SWITCHBOARD_TEST_POSTGRES_URL`), and a store in memory for tests
//!   on paused time.

#[cfg(feature = "broker")]
pub mod broker;
pub mod ipvs;
pub mod kubeapi;
pub mod layers;
pub mod process;
pub mod store;

/// An HTTP client whose connections come from `from` (a loopback address such as
/// `127.0.3.1`), to be another client to the per-source limits.
pub fn client_from(from: &str) -> reqwest::Client {
    install_crypto();
    let ip: std::net::IpAddr = from
        .parse()
        .unwrap_or_else(|e| panic!("{from:?} is not an address: {e}"));
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .unwrap_or_else(|e| panic!("no HTTP client: {e}"))
}

/// How many records of an audit page (`GET /api/v1/audit`'s JSON array) have an action that
/// starts with `prefix` (such as `"clientevent FLOOD"`).
pub fn audit_count(page: &serde_json::Value, prefix: &str) -> usize {
    page.as_array().map_or(0, |records| {
        records
            .iter()
            .filter(|r| r["action"].as_str().is_some_and(|a| a.starts_with(prefix)))
            .count()
    })
}

/// Installs rustls' ring provider for the process (reqwest is built without one, so that the
/// whole tree uses ring only). Safe to call many times.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A loopback TCP port that was free a moment ago (for daemons that must be told their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// An HTTP client for tests, with the crypto provider installed.
pub fn http_client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::new()
}

/// A local user for PAM tests, with a known password, and a PAM service installed from the
/// shipped `packaging/pam.d/switchboard` under the name `switchboard-test`. Returns (user,
/// password, service). Needs root; `./scripts/test` runs the suite as root.
pub fn pam_test_user() -> (&'static str, &'static str, &'static str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    const USER: &str = "sbtest-pam";
    const PASSWORD: &str = "Corr3ct-Horse";
    const SERVICE: &str = "switchboard-test";
    assert!(
        nix::unistd::geteuid().is_root(),
        "PAM tests create a local user and a PAM service: run them as root (./scripts/test does)"
    );
    if nix::unistd::User::from_name(USER).ok().flatten().is_none() {
        let st = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", USER])
            .status()
            .expect("useradd runs");
        assert!(st.success(), "useradd failed");
    }
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .expect("chpasswd runs");
    writeln!(chpasswd.stdin.take().expect("stdin"), "{USER}:{PASSWORD}").expect("write");
    assert!(chpasswd.wait().expect("chpasswd").success());
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/pam.d/switchboard"),
    )
    .expect("packaging/pam.d/switchboard");
    std::fs::write(format!("/etc/pam.d/{SERVICE}"), shipped).expect("write the PAM service");
    (USER, PASSWORD, SERVICE)
}

/// A PAM service, `switchboard-test-permit`, that accepts any user name and password
/// (`pam_permit` for authentication and account): a stand-in for stacks that accept aliases of
/// an account (sssd, winbind). Also sets up [`pam_test_user`]'s user; returns (user, service).
pub fn pam_permit_service() -> (&'static str, &'static str) {
    const SERVICE: &str = "switchboard-test-permit";
    let (user, _, _) = pam_test_user();
    std::fs::write(
        format!("/etc/pam.d/{SERVICE}"),
        "# Switchboard's tests: accepts every name and password.\nauth required pam_permit.so\naccount required pam_permit.so\n",
    )
    .expect("write the PAM service");
    (user, SERVICE)
}
