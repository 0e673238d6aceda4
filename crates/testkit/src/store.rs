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

/// A store in memory, for tests of the engine on paused time (a real store does I/O, during
/// which a paused tokio clock jumps to the next timer). It keeps what [`SqlStore`] keeps, in the
/// same way: runtime host state, live sessions, credentials and the audit log. Commits can be
/// made to fail, as a store outage would.
#[derive(Debug, Default)]
pub struct Memory {
    inner: std::sync::Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    hosts: std::collections::BTreeMap<String, switchboard_store::HostState>,
    sessions: std::collections::BTreeMap<
        switchboard_core::SessionId,
        switchboard_core::model::SessionRecord,
    >,
    credentials: std::collections::BTreeMap<String, String>,
    audit: Vec<switchboard_store::AuditRecord>,
    commits: u64,
    failing: bool,
}

impl Memory {
    /// An empty store.
    pub fn new() -> Memory {
        Memory::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// From now on every commit fails (`true`) or succeeds again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.state().failing = failing;
    }

    /// Transactions committed so far (those with durable events).
    pub fn commits(&self) -> u64 {
        self.state().commits
    }

    /// Every audit record, oldest first.
    pub fn audit_log(&self) -> Vec<switchboard_store::AuditRecord> {
        self.state().audit.clone()
    }

    /// The stored record of a session (ended ones included).
    pub fn session(
        &self,
        id: switchboard_core::SessionId,
    ) -> Option<switchboard_core::model::SessionRecord> {
        self.state().sessions.get(&id).cloned()
    }
}

fn unavailable() -> switchboard_store::StoreError {
    switchboard_store::StoreError::Unavailable("the test made the store fail".into())
}

impl switchboard_store::Store for Memory {
    async fn load(&self) -> Result<switchboard_store::Durable, switchboard_store::StoreError> {
        let s = self.state();
        if s.failing {
            return Err(unavailable());
        }
        Ok(switchboard_store::Durable {
            hosts: s.hosts.values().cloned().collect(),
            sessions: s
                .sessions
                .values()
                .filter(|r| r.state != switchboard_core::SessionState::Ended)
                .cloned()
                .collect(),
            credentials: s
                .credentials
                .iter()
                .map(|(h, c)| (h.clone(), c.clone()))
                .collect(),
            max_session_id: s.sessions.keys().next_back().map_or(0, |id| id.0),
        })
    }

    async fn commit(
        &self,
        events: &[switchboard_core::Event],
    ) -> Result<(), switchboard_store::StoreError> {
        use switchboard_core::Event;
        if !events.iter().any(Event::is_durable) {
            return Ok(());
        }
        let mut s = self.state();
        if s.failing {
            return Err(unavailable());
        }
        let host = |s: &mut MemoryState, name: &str| {
            s.hosts
                .entry(name.to_owned())
                .or_insert_with(|| switchboard_store::HostState {
                    name: name.to_owned(),
                    admin: switchboard_core::AdminState::Online,
                    weight: None,
                    offline_when_empty: None,
                })
                .clone()
        };
        for e in events {
            match e {
                Event::AdminStateChanged { host: h, state } => {
                    let mut row = host(&mut s, h);
                    row.admin = *state;
                    s.hosts.insert(row.name.clone(), row);
                }
                Event::OfflineWhenEmpty { host: h, by } => {
                    let mut row = host(&mut s, h);
                    row.offline_when_empty = by.as_deref().map(str::to_owned);
                    s.hosts.insert(row.name.clone(), row);
                }
                Event::WeightChanged { host: h, weight } => {
                    let mut row = host(&mut s, h);
                    row.weight = Some(*weight);
                    s.hosts.insert(row.name.clone(), row);
                }
                Event::Drained { host: h, by } => {
                    let (surface, actor) = by.split_once(' ').unwrap_or(("broker", by));
                    let record = switchboard_store::AuditRecord {
                        id: switchboard_store::audit_id(),
                        at: switchboard_core::Millis::now_wall(),
                        actor: actor.to_owned(),
                        surface: surface.to_owned(),
                        action: "offline (drained)".to_owned(),
                        target: h.to_string(),
                        result: "ok".to_owned(),
                    };
                    s.audit.push(record);
                }
                Event::HostRemoved { name } => {
                    s.hosts.remove(&**name);
                }
                Event::SessionStarted(r) => {
                    s.sessions.insert(r.id, r.clone());
                }
                Event::SessionStateChanged { id, state, at, .. } => {
                    if let Some(r) = s.sessions.get_mut(id) {
                        r.state = *state;
                        r.updated_at = *at;
                    }
                }
                Event::SessionEnded { id, at, .. } => {
                    if let Some(r) = s.sessions.get_mut(id) {
                        r.state = switchboard_core::SessionState::Ended;
                        r.updated_at = *at;
                    }
                }
                Event::CredentialIssued { host: h, hash } => {
                    s.credentials.insert(h.to_string(), hash.to_string());
                }
                Event::CredentialRevoked { host: h } => {
                    s.credentials.remove(&**h);
                }
                _ => {}
            }
        }
        s.commits += 1;
        Ok(())
    }

    async fn append_audit(
        &self,
        record: &switchboard_store::AuditRecord,
    ) -> Result<(), switchboard_store::StoreError> {
        let mut s = self.state();
        if s.failing {
            return Err(unavailable());
        }
        s.audit.push(record.clone());
        Ok(())
    }

    async fn audit(
        &self,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<switchboard_store::AuditRecord>, switchboard_store::StoreError> {
        let s = self.state();
        Ok(s.audit
            .iter()
            .rev()
            .skip_while(|r| before.is_some_and(|b| r.id.as_str() != b))
            .skip(usize::from(before.is_some()))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn ping(&self) -> Result<(), switchboard_store::StoreError> {
        if self.state().failing {
            Err(unavailable())
        } else {
            Ok(())
        }
    }
}

/// A PostgreSQL server of a test's own (a cluster in a temp dir on a free loopback port), for
/// tests that stop and start the server: never the one the whole run shares. Stopped and
/// removed when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
    /// `postgres://switchboard@127.0.0.1:PORT/postgres`.
    pub url: String,
}

#[allow(clippy::unwrap_used)] // a test fixture: failing to set up is the test failing
impl PrivatePostgres {
    /// Creates and starts the cluster. Panics with what is missing when the server binaries
    /// are not installed (`./scripts/test` installs Debian's `postgresql`).
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("bin"))
                    .filter(|p| p.join("pg_ctl").exists())
                    .max()
            })
            .expect("PostgreSQL server binaries under /usr/lib/postgresql/*/bin (Debian's postgresql package)");
        let dir = tempfile::Builder::new()
            .prefix("switchboard-pg-own.")
            .tempdir()
            .unwrap();
        if nix::unistd::Uid::effective().is_root() {
            // PostgreSQL refuses to run as root: the account Debian's package made runs it.
            let status = std::process::Command::new("chown")
                .args(["postgres:", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres: {status}");
        }
        let port = crate::free_port();
        let pg = PrivatePostgres {
            url: format!("postgres://switchboard@127.0.0.1:{port}/postgres"),
            dir,
            bin,
            port,
        };
        let data = pg.dir.path().join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "switchboard",
                "--no-sync",
            ],
        );
        pg.start_again();
        pg
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if nix::unistd::Uid::effective().is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn start_again(&self) {
        let d = self.dir.path();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off",
            self.port,
            d.display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                d.join("data").to_str().unwrap(),
                "-l",
                d.join("log").to_str().unwrap(),
                "-w",
                "-o",
                &opts,
                "start",
            ],
        );
    }

    /// Stops the server as an administrator's restart does (`pg_ctl stop -m fast`: sessions
    /// are ended, transactions in flight rolled back).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.dir.path().join("data").to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"];
        let _ = if nix::unistd::Uid::effective().is_root() {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            std::process::Command::new(&exe).args(args).output()
        };
    }
}
