//! The connection the engine's commits go through: one long-lived connection of its own, outside
//! the pool that reads and the audit writer share, so that a commit never queues behind them.
//!
//! It is opened on first use and again after any failure (a failed connection is dropped, not
//! reused). Each opening has a new generation number ([`Store::connection_generation`]): a
//! lock or session state held on the old connection is gone, and the engine sees that.
//!
//! [`Store::connection_generation`]: crate::Store::connection_generation

use crate::{Backend, StoreError};
use sqlx::{AnyConnection, Connection, Executor};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::MutexGuard;

/// How long opening the connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one commit or load may take before the connection is given up (a server that
/// stopped answering without closing the connection). SQLite's own busy timeout is 5 s.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct EngineConnection {
    url: String,
    backend: Backend,
    conn: tokio::sync::Mutex<Option<AnyConnection>>,
    generation: AtomicU64,
}

/// Opens one connection with the settings every Switchboard connection has.
pub(crate) async fn open(url: &str, backend: Backend) -> Result<AnyConnection, StoreError> {
    let mut c = AnyConnection::connect(url).await?;
    if backend == Backend::Sqlite {
        c.execute("PRAGMA synchronous=FULL").await?;
        c.execute("PRAGMA busy_timeout=5000").await?;
    }
    Ok(c)
}

impl EngineConnection {
    pub(crate) fn new(url: String, backend: Backend) -> EngineConnection {
        EngineConnection {
            url,
            backend,
            conn: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The connection, opened first if needed, held until [`Held::done`] (or dropped, as a
    /// cancelled commit drops it: then the next call opens a new one).
    pub(crate) async fn lock(&self) -> Result<Held<'_>, StoreError> {
        let mut slot = self.conn.lock().await;
        let conn = match slot.take() {
            Some(c) => c,
            None => {
                let c = tokio::time::timeout(CONNECT_TIMEOUT, open(&self.url, self.backend))
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable(format!(
                            "no connection within {}s",
                            CONNECT_TIMEOUT.as_secs()
                        ))
                    })??;
                let g = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                if g > 1 {
                    tracing::info!(generation = g, "store connection re-established");
                }
                c
            }
        };
        Ok(Held { slot, conn })
    }

    pub(crate) async fn close(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            let _ = c.close().await;
        }
    }
}

/// The engine's connection while one operation uses it.
pub(crate) struct Held<'a> {
    slot: MutexGuard<'a, Option<AnyConnection>>,
    conn: AnyConnection,
}

impl Held<'_> {
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }

    /// Puts the connection back after a success; after any failure it is dropped, since a new
    /// connection is the one state known to be clean.
    pub(crate) fn done<T>(self, result: &Result<T, StoreError>) {
        let Held { mut slot, conn } = self;
        if result.is_ok() {
            *slot = Some(conn);
        }
    }
}

/// `op`, given up after [`OPERATION_TIMEOUT`].
pub(crate) async fn timed<T>(
    op: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(OPERATION_TIMEOUT, op)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "no answer within {}s",
                OPERATION_TIMEOUT.as_secs()
            )))
        })
}
