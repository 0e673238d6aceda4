//! Session policies: the broker logs off, through the sessions' agents, what a pool's policy says
//! has been disconnected, idle or alive too long (`logoff_disconnected_after`,
//! `logoff_idle_after`, `max_session_age`; `max_sessions_per_user` is enforced at placement by
//! the core). Every policy log-off is in the audit log with actor `policy`.
//!
//! A sweep runs every `[placement] policy_interval` (default 10 s): one engine query finds the
//! sessions ([`switchboard_core::ClusterState::policy_logoffs`]), and each log-off runs in its
//! own task, so a slow agent delays nothing else. A session being logged off is `ending` and is
//! not picked again; one whose log-off failed is retried at the next sweep.

use crate::agents::{AgentHub, Ending};
use crate::engine::EngineHandle;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::SessionId;
use switchboard_core::model::PolicyLogoff;
use switchboard_store::SqlStore;
use tokio_util::sync::CancellationToken;

/// Default time between sweeps.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// How long a policy waits for an agent to accept a log-off.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

fn human(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// What the audit log says about a policy log-off.
pub fn describe(p: &PolicyLogoff) -> (String, String) {
    let why = match p.rule {
        switchboard_core::model::LogoffRule::Disconnected => "disconnected for",
        switchboard_core::model::LogoffRule::Idle => "idle for",
        switchboard_core::model::LogoffRule::Age => "running for",
    };
    (
        format!("logoff ({} policy)", p.rule.as_str()),
        format!(
            "session {} of {} on {} in pool {}: {} {} (limit {})",
            p.session.id.0,
            p.session.user,
            p.session.host,
            p.pool,
            why,
            human(p.for_ms),
            human(p.limit_ms)
        ),
    )
}

/// Starts the sweeper.
pub fn spawn(
    engine: EngineHandle,
    agents: AgentHub,
    store: Arc<SqlStore>,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let in_flight: Arc<Mutex<HashSet<SessionId>>> = Arc::new(Mutex::new(HashSet::new()));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let hub = agents.clone();
            let due = match engine
                .query(move |s| s.policy_logoffs(|host, backend| hub.idle_secs(host, backend)))
                .await
            {
                Ok(d) => d,
                Err(_) => continue,
            };
            for p in due {
                let id = p.session.id;
                if !in_flight
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id)
                {
                    continue;
                }
                let (agents, store, in_flight) = (agents.clone(), store.clone(), in_flight.clone());
                tokio::spawn(async move {
                    let grace_secs = p.grace.as_secs();
                    let r = agents
                        .end_session(id, Ending::Logoff(grace_secs), COMMAND_TIMEOUT)
                        .await;
                    let (action, target) = describe(&p);
                    let result = r.map(|_| ()).map_err(|e| e.to_string());
                    crate::audit::record(&store, "policy", "policy", &action, &target, result)
                        .await;
                    in_flight
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&id);
                });
            }
        }
    })
}
