//! The audit log: every operator action (who, from which surface, what, on what, how it went),
//! durable in the store. Written through the action layer (and the X2Go frontend's client
//! events); read by the REST API, the dashboard and the management socket.

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
