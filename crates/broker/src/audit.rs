//! The audit log: every operator action (who, from which surface, what, on what, how it went),
//! durable in the store. Shared by the REST API and the management socket.

use switchboard_core::Millis;
use switchboard_store::{AuditRecord, SqlStore, Store};

/// A unique id that sorts in the order records were made (the log lists newest first, and
/// several actions can share a millisecond): nanoseconds since the epoch, a process-wide
/// sequence number, and random bits so that two brokers never collide.
fn next_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    format!(
        "{nanos:024}{:012}{:08x}",
        SEQ.fetch_add(1, Ordering::Relaxed),
        u32::from_be_bytes(r)
    )
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
        id: next_id(),
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
