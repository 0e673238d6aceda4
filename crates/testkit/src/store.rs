//! Fresh stores for tests, on both backends.

use std::sync::atomic::{AtomicU32, Ordering};
use switchboard_store::SqlStore;

/// Environment variable naming the PostgreSQL server tests use.
pub const POSTGRES_URL_VAR: &str = "SWITCHBOARD_TEST_POSTGRES_URL";

/// A store that lives as long as its guard (the SQLite temp dir, or nothing for PostgreSQL).
#[derive(Debug)]
pub struct TestStore {
    /// The store.
    pub store: SqlStore,
    /// The URL it was opened with (to reopen it, as a restarted broker would).
    pub url: String,
    /// Keeps an SQLite file's directory alive.
    pub _dir: Option<tempfile::TempDir>,
}

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SQLite in a temp dir.
    Sqlite,
    /// A new database on the test PostgreSQL server.
    Postgres,
}

/// Both kinds, for tests that must pass on each.
pub const BOTH: [Kind; 2] = [Kind::Sqlite, Kind::Postgres];

/// A URL for a new, empty store of this kind (creating the PostgreSQL database).
pub async fn fresh_url(kind: Kind) -> (String, Option<tempfile::TempDir>) {
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("switchboard.db").display());
            (url, Some(dir))
        }
        Kind::Postgres => (fresh_postgres_database().await, None),
    }
}

/// Opens a new, empty store of this kind.
pub async fn fresh(kind: Kind) -> TestStore {
    let (url, dir) = fresh_url(kind).await;
    let store = SqlStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("open {kind:?} store at {url}: {e}"));
    TestStore {
        store,
        url,
        _dir: dir,
    }
}

/// Creates a uniquely named database on the test server and returns its URL.
///
/// Panics with instructions when the server is not configured: PostgreSQL tests never pass by
/// being skipped.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Executor;
    static N: AtomicU32 = AtomicU32::new(0);
    let base = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_URL_VAR} is not set. PostgreSQL tests need a server: run ./scripts/test, \
             which starts a private one, or set {POSTGRES_URL_VAR}=postgres://USER@127.0.0.1:PORT/postgres"
        )
    });
    let name = format!(
        "sbtest_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        switchboard_core::Millis::now_wall().0 % 1_000_000
    );
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("connect to {base}: {e}"));
    // The name is made of digits and a fixed prefix above: nothing to inject.
    let create = format!("CREATE DATABASE {name}");
    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(create.as_str())))
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    let (prefix, _) = base.rsplit_once('/').expect("URL with a database path");
    format!("{prefix}/{name}")
}
