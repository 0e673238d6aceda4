//! The audit log: every operator action (who, from which surface, what, on what, how it went),
//! durable in the store. Shared by the REST API and the management socket.

use switchboard_core::Millis;
use switchboard_store::{AuditRecord, SqlStore, Store};

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
    let mut id = [0u8; 16];
    let _ = getrandom::fill(&mut id);
    let record = AuditRecord {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
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
