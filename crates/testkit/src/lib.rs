//! Shared test harness: stores on both backends, fixtures.
//!
//! # Layout
//! - [`http_client`]: an HTTP client for talking to a broker under test.
//! - [`store`]: a fresh SQLite store in a temp dir, and a fresh PostgreSQL database on the server
//!   the test script started (`SWITCHBOARD_TEST_POSTGRES_URL`).

pub mod store;

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
