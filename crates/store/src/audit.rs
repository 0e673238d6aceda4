//! The audit log's one writer: records queue (bounded) and are written in batches, one
//! transaction (one fsync) per batch, by a single task with one pool connection at a time. A
//! flood of records (X2Go client events from many clients) then costs a few transactions a
//! second instead of one each, and never holds more than one of the pool's connections; the
//! engine's commits do not use the pool at all.

use crate::{AuditRecord, StoreError, to_i64};
use sqlx::{AnyConnection, AnyPool, Connection};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Records queued at most; writers wait for room ([`AuditWriter::append`]).
const QUEUE: usize = 4096;
/// Records written in one transaction at most.
const BATCH: usize = 256;
/// Rows deleted by one retention statement at most (short write locks on SQLite).
const PRUNE_CHUNK: i64 = 5000;

enum Job {
    Write {
        record: AuditRecord,
        ack: Option<oneshot::Sender<Result<(), String>>>,
    },
    Stop(oneshot::Sender<()>),
}

/// The handle to the writer task. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AuditWriter {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Write { .. } => "Write",
            Job::Stop(_) => "Stop",
        })
    }
}

impl AuditWriter {
    /// Starts the writer on `pool`.
    pub(crate) fn spawn(pool: AnyPool) -> AuditWriter {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
        AuditWriter { tx }
    }

    /// Queues `record` (waiting for room) and waits until it is written.
    pub(crate) async fn append(&self, record: AuditRecord) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Job::Write {
                record,
                ack: Some(ack),
            })
            .await
            .map_err(|_| closed())?;
        done.await
            .map_err(|_| closed())?
            .map_err(StoreError::Unavailable)
    }

    /// Writes what is queued, then stops the writer.
    pub(crate) async fn stop(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Job::Stop(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

async fn run(pool: AnyPool, mut rx: mpsc::Receiver<Job>) {
    let mut records = Vec::with_capacity(BATCH);
    let mut acks = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        let mut stop = None;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write { record, ack } => {
                    records.push(record);
                    acks.extend(ack);
                }
                Job::Stop(ack) => {
                    stop = Some(ack);
                    break;
                }
            }
            if records.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !records.is_empty() {
            let mut result = write(&pool, &records).await;
            if result.is_err() {
                // One retry: a store that blinked (a lock, a failover) usually answers again.
                tokio::time::sleep(Duration::from_millis(500)).await;
                result = write(&pool, &records).await;
            }
            let result = result.map_err(|e| {
                tracing::error!(error = %e, records = records.len(), "audit records not written");
                e.to_string()
            });
            for ack in acks.drain(..) {
                let _ = ack.send(result.clone());
            }
            records.clear();
        }
        if let Some(ack) = stop {
            let _ = ack.send(());
            return;
        }
    }
}

/// Writes `records` in one transaction on a connection of the pool. A connection whose
/// transaction failed is closed, not given back: after failed writes on a full disk, one given
/// back kept SQLite's write lock in the pool, and every later commit of the engine timed out on
/// it ("database is locked") after space had returned. A new connection is known to be clean.
async fn write(pool: &AnyPool, records: &[AuditRecord]) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    let result = write_on(&mut conn, records).await;
    if result.is_err() {
        let _ = conn.close().await;
    }
    result
}

async fn write_on(conn: &mut AnyConnection, records: &[AuditRecord]) -> Result<(), StoreError> {
    let mut tx = conn.begin().await?;
    for r in records {
        sqlx::query(
            "INSERT INTO audit (id, at, actor, surface, action, target, result) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&r.id)
        .bind(to_i64(r.at.0, "time")?)
        .bind(&r.actor)
        .bind(&r.surface)
        .bind(&r.action)
        .bind(&r.target)
        .bind(&r.result)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Deletes the records older than `before` (ms since the epoch), a chunk at a time. Returns how
/// many went.
pub(crate) async fn prune(pool: &AnyPool, before: i64) -> Result<u64, StoreError> {
    let mut total = 0u64;
    loop {
        let done = sqlx::query(
            "DELETE FROM audit WHERE id IN \
             (SELECT id FROM audit WHERE at < $1 ORDER BY at LIMIT $2)",
        )
        .bind(before)
        .bind(PRUNE_CHUNK)
        .execute(pool)
        .await?
        .rows_affected();
        total += done;
        if done < PRUNE_CHUNK as u64 {
            return Ok(total);
        }
    }
}
