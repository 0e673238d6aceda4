//! Session policies: the broker logs off, through the sessions' agents, what a pool's policy says
//! has been disconnected, idle or alive too long (`logoff_disconnected_after`,
//! `logoff_idle_after`, `max_session_age`; `max_sessions_per_user` is enforced at placement by
//! the core). Every policy log-off is in the audit log with actor `policy`.
//!
//! A sweep runs every `[placement] policy_interval` (default 10 s): one engine query finds the
//! sessions ([`switchboard_core::ClusterState::policy_logoffs`]), and each log-off runs in its
//! own task (through [`crate::actions`], which audits it), so a slow agent delays nothing else. A session being logged off is `ending` and is
//! not picked again; one whose log-off failed is retried after a wait that doubles from one
//! interval up to 10 minutes (each attempt is audited). Only hosts whose agent is up are policed.

use crate::actions::Actions;
use crate::agents::AgentHub;
use crate::engine::EngineHandle;
use crate::sync::lock;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::SessionId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Default time between sweeps.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Longest wait before a failed log-off is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Starts the sweeper.
pub fn spawn(
    engine: EngineHandle,
    agents: AgentHub,
    actions: Actions,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let in_flight: Arc<Mutex<HashSet<SessionId>>> = Arc::new(Mutex::new(HashSet::new()));
    // Failed log-offs: when to try again, and the wait after the next failure.
    let failed: Arc<Mutex<HashMap<SessionId, (Instant, Duration)>>> =
        Arc::new(Mutex::new(HashMap::new()));
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
            {
                let ids: HashSet<SessionId> = due.iter().map(|p| p.session.id).collect();
                lock(&failed).retain(|id, _| ids.contains(id));
            }
            for p in due {
                let id = p.session.id;
                if lock(&failed)
                    .get(&id)
                    .is_some_and(|(next, _)| Instant::now() < *next)
                {
                    continue;
                }
                if !lock(&in_flight).insert(id) {
                    continue;
                }
                let (actions, in_flight, failed) =
                    (actions.clone(), in_flight.clone(), failed.clone());
                tokio::spawn(async move {
                    if actions.policy_logoff(&p).await.is_err() {
                        let mut f = lock(&failed);
                        let wait = f.get(&id).map_or(interval, |(_, w)| *w).min(MAX_BACKOFF);
                        f.insert(id, (Instant::now() + wait, (wait * 2).min(MAX_BACKOFF)));
                    } else {
                        lock(&failed).remove(&id);
                    }
                    lock(&in_flight).remove(&id);
                });
            }
        }
    })
}
