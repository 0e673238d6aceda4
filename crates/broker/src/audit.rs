//! The audit log: every operator action (who, from which surface, what, on what, how it went),
//! durable in the store. Written through the action layer (and the X2Go frontend's client
//! events); read by the REST API, the dashboard and the management socket, a page at a time.
//!
//! Records go through the store's one batching writer (bounded queue, one transaction per
//! batch), never the engine's connection. They are kept for `[audit] keep` (90 days by default):
//! [`spawn_retention`] deletes older ones at start and every hour after.

use std::sync::Arc;
use std::time::Duration;
use switchboard_core::Millis;
use switchboard_store::{AuditRecord, SqlStore, Store};
use tokio_util::sync::CancellationToken;

/// How long records are kept unless `[audit] keep` says otherwise.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(90 * 24 * 3600);
/// How often old records are deleted.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes records older than `keep`, at once and then every [`PRUNE_EVERY`], until
/// `shutdown`. A failure is logged and tried again at the next round.
pub fn spawn_retention(
    store: Arc<SqlStore>,
    keep: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PRUNE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let now = Millis::now_wall();
            let before = Millis(
                now.0
                    .saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX)),
            );
            match store.prune_audit(before).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::counter!("switchboard_audit_pruned_total").increment(n);
                    tracing::info!(records = n, keep = %switchboard_core::config::format_duration(keep), "audit records past their retention deleted");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "audit retention: old records not deleted; trying again later")
                }
            }
        }
    })
}

/// Appends one record. A failure to write it is logged, never hidden and never fatal to the
/// action itself (which already happened).
pub async fn record(
    store: &SqlStore,
    actor: &str,
    surface: &str,
    action: &str,
    target: &str,
    result: Result<(), String>,
) {
    let record = AuditRecord {
        id: switchboard_store::audit_id(),
        at: Millis::now_wall(),
        actor: actor.to_owned(),
        surface: surface.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        result: match result {
            Ok(()) => "ok".into(),
            Err(e) => e,
        },
    };
    tracing::info!(actor, surface, action, target, result = %record.result, "operator action");
    if let Err(e) = store.append_audit(&record).await {
        tracing::error!(error = %e, action, target, "audit record not written");
    }
}
