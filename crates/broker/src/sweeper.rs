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
    let failed = Arc::new(Mutex::new(Retries::new(interval)));
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
                lock(&failed).keep(&ids);
            }
            for p in due {
                let id = p.session.id;
                if lock(&failed).waiting(id) {
                    continue;
                }
                if !lock(&in_flight).insert(id) {
                    continue;
                }
                let (actions, in_flight, failed) =
                    (actions.clone(), in_flight.clone(), failed.clone());
                tokio::spawn(async move {
                    if actions.policy_logoff(&p).await.is_err() {
                        lock(&failed).failed(id);
                    } else {
                        lock(&failed).succeeded(id);
                    }
                    lock(&in_flight).remove(&id);
                });
            }
        }
    })
}

/// Failed log-offs and when each may be tried again: one interval after the first failure, then
/// twice as long after each further one, up to [`MAX_BACKOFF`].
#[derive(Debug)]
struct Retries {
    interval: Duration,
    /// When to try again, and the wait after the next failure.
    next: HashMap<SessionId, (Instant, Duration)>,
}

impl Retries {
    fn new(interval: Duration) -> Retries {
        Retries {
            interval,
            next: HashMap::new(),
        }
    }

    /// Whether `id` failed and its wait is not over.
    fn waiting(&self, id: SessionId) -> bool {
        self.next
            .get(&id)
            .is_some_and(|(next, _)| Instant::now() < *next)
    }

    fn failed(&mut self, id: SessionId) {
        let wait = self
            .next
            .get(&id)
            .map_or(self.interval, |(_, w)| *w)
            .min(MAX_BACKOFF);
        self.next
            .insert(id, (Instant::now() + wait, (wait * 2).min(MAX_BACKOFF)));
    }

    fn succeeded(&mut self, id: SessionId) {
        self.next.remove(&id);
    }

    /// Forgets the sessions no longer due (ended, or back within the policy).
    fn keep(&mut self, due: &HashSet<SessionId>) {
        self.next.retain(|id, _| due.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Advances paused time by `secs` and says whether `id` is still waiting.
    async fn after(r: &Retries, id: SessionId, secs: u64) -> bool {
        tokio::time::advance(Duration::from_secs(secs)).await;
        r.waiting(id)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_policy_logoff_waits_twice_as_long_each_time_up_to_ten_minutes() {
        let id = SessionId(7);
        let mut r = Retries::new(Duration::from_secs(10));
        assert!(!r.waiting(id), "never failed: due at once");
        r.failed(id);
        assert!(after(&r, id, 9).await, "first wait: one interval");
        assert!(!after(&r, id, 1).await);
        r.failed(id);
        assert!(after(&r, id, 19).await, "second wait: two intervals");
        assert!(!after(&r, id, 1).await);
        r.failed(id);
        assert!(after(&r, id, 39).await, "third wait: four intervals");
        assert!(!after(&r, id, 1).await);
        for _ in 0..10 {
            r.failed(id);
        }
        assert!(
            after(&r, id, 599).await,
            "the wait stops growing at ten minutes"
        );
        assert!(!after(&r, id, 1).await);
        r.succeeded(id);
        r.failed(id);
        assert!(
            after(&r, id, 9).await,
            "a success starts the schedule again"
        );
        assert!(!after(&r, id, 1).await);
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_no_longer_due_are_forgotten() {
        let (a, b) = (SessionId(1), SessionId(2));
        let mut r = Retries::new(Duration::from_secs(10));
        r.failed(a);
        r.failed(b);
        r.keep(&HashSet::from([b]));
        assert!(!r.waiting(a), "a's record went with it");
        assert!(r.waiting(b));
    }
}
