//! Session lifecycle on Kubernetes: idle, disconnected and maximum-age log-offs, and
//! reconciliation between the pods and what the broker knows about them.
//!
//! The pods are the source of truth: a session is a pod of the pool with the user and type in its
//! annotations. After a broker restart the sessions come back from the pod list; only the
//! connection facts (kept by the gateway) start afresh, and they start in the users' favour (a
//! pod first seen now counts as active and disconnected since now).
//!
//! [`decide`] is pure; [`Lifecycle`] holds the connection facts and runs it periodically.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::names;
use crate::status::{PodState, classify};

/// Annotation (on a template or pod) overriding the pool's idle log-off for its session type.
pub const IDLE_ANNOTATION: &str = "switchboard.io/logoff-idle-after";
/// Annotation overriding the disconnected log-off.
pub const DISCONNECTED_ANNOTATION: &str = "switchboard.io/logoff-disconnected-after";
/// Annotation overriding the maximum session age.
pub const MAX_AGE_ANNOTATION: &str = "switchboard.io/max-session-age";

/// When sessions are logged off; `None` is never.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// No input from the user through the gateway for this long.
    pub idle: Option<Duration>,
    /// No client connected for this long.
    pub disconnected: Option<Duration>,
    /// Older than this.
    pub max_age: Option<Duration>,
}

impl Policy {
    /// This policy with a pod's (its template's) annotations applied over it. A value of "off"
    /// or "0" turns a rule off; a value that does not parse is ignored (and logged).
    pub fn with_annotations(self, pod: &Pod) -> Policy {
        let Some(a) = pod.metadata.annotations.as_ref() else {
            return self;
        };
        let get = |key: &str, default: Option<Duration>| match a.get(key).map(String::as_str) {
            None => default,
            Some("off" | "0" | "never") => None,
            Some(v) => match humantime::parse_duration(v) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(pod = ?pod.metadata.name, key, value = v, error = %e, "ignoring a bad policy annotation");
                    default
                }
            },
        };
        Policy {
            idle: get(IDLE_ANNOTATION, self.idle),
            disconnected: get(DISCONNECTED_ANNOTATION, self.disconnected),
            max_age: get(MAX_AGE_ANNOTATION, self.max_age),
        }
    }
}

/// What the gateway knows about a session's connections (seconds since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    /// Clients connected now.
    pub connections: u32,
    /// Last input from a client (or first sighting).
    pub last_input: u64,
    /// Since when no client has been connected (`None` while one is).
    pub disconnected_since: Option<u64>,
}

impl Activity {
    /// A session first seen at `now`: active, disconnected since now.
    pub fn seen(now: u64) -> Activity {
        Activity {
            connections: 0,
            last_input: now,
            disconnected_since: Some(now),
        }
    }
}

/// Why a pod is deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No input for the idle time.
    Idle,
    /// No client for the disconnected time.
    Disconnected,
    /// Older than the maximum age.
    MaxAge,
    /// Finished, failed or evicted (`delete_stopped_pods`), or broken with no start waiting on it.
    Stopped(String),
    /// Starting for longer than all budgets together with no start waiting on it.
    Stuck,
    /// Not a session: no owner annotations, or its session type has no template any more.
    Orphan(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Idle => f.write_str("idle"),
            Reason::Disconnected => f.write_str("disconnected"),
            Reason::MaxAge => f.write_str("max-age"),
            Reason::Stopped(r) => write!(f, "stopped ({r})"),
            Reason::Stuck => f.write_str("stuck starting"),
            Reason::Orphan(r) => write!(f, "orphan ({r})"),
        }
    }
}

/// One pod as [`decide`] sees it.
#[derive(Clone, Debug)]
pub struct PodFacts {
    /// Pod name.
    pub name: String,
    /// Owner annotations (user, type), if present.
    pub owner: Option<(String, String)>,
    /// Creation time, seconds since the epoch.
    pub created: Option<u64>,
    /// Classified status.
    pub state: PodState,
    /// Its policy (pool defaults with its annotations).
    pub policy: Policy,
    /// Whether its session type still has a template for its user.
    pub has_template: bool,
}

/// A reconciliation step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Delete the pod.
    Delete {
        /// Pod name.
        pod: String,
        /// Why.
        reason: Reason,
    },
    /// Forget the connection facts of a session whose pod is gone.
    Forget {
        /// Pod name.
        pod: String,
    },
}

/// The reconciliation decisions at `now` (seconds since the epoch).
///
/// Pods with a start in flight (`starting`) are left to that start. `stuck_after` is how long a
/// pod may stay short of Ready with nobody waiting for it (the sum of the stage budgets).
pub fn decide(
    now: u64,
    pods: &[PodFacts],
    activity: &HashMap<String, Activity>,
    starting: &HashSet<String>,
    stuck_after: Duration,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let present: HashSet<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    for pod in pods {
        if starting.contains(&pod.name) {
            continue;
        }
        let delete = |reason| Action::Delete {
            pod: pod.name.clone(),
            reason,
        };
        let age = pod.created.map(|c| now.saturating_sub(c));
        let act = activity
            .get(&pod.name)
            .copied()
            .unwrap_or(Activity::seen(now));
        let reason = match &pod.state {
            PodState::Replace { reason } if reason == "Terminating" => None,
            PodState::Replace { reason } => Some(Reason::Stopped(reason.clone())),
            PodState::Broken { reason, .. } => Some(Reason::Stopped(reason.clone())),
            _ if pod.owner.is_none() => Some(Reason::Orphan("no owner annotations".into())),
            _ if !pod.has_template && act.connections == 0 => {
                Some(Reason::Orphan("no template for its session type".into()))
            }
            PodState::Waiting { .. } if age.is_some_and(|a| a >= stuck_after.as_secs()) => {
                Some(Reason::Stuck)
            }
            PodState::Waiting { .. } => None,
            PodState::Ready { .. } => {
                let over = |limit: Option<Duration>, since: Option<u64>| match (limit, since) {
                    (Some(l), Some(s)) => now.saturating_sub(s) >= l.as_secs(),
                    _ => false,
                };
                if over(pod.policy.max_age, pod.created) {
                    Some(Reason::MaxAge)
                } else if act.connections == 0
                    && over(pod.policy.disconnected, act.disconnected_since)
                {
                    Some(Reason::Disconnected)
                } else if over(pod.policy.idle, Some(act.last_input)) {
                    Some(Reason::Idle)
                } else {
                    None
                }
            }
        };
        if let Some(reason) = reason {
            actions.push(delete(reason));
        }
    }
    let mut gone: Vec<&String> = activity
        .keys()
        .filter(|k| !present.contains(k.as_str()) && !starting.contains(*k))
        .collect();
    gone.sort();
    actions.extend(gone.into_iter().map(|p| Action::Forget { pod: p.clone() }));
    actions
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Facts about `pod` for [`decide`].
pub fn facts(
    pod: &Pod,
    pool_policy: Policy,
    has_template: impl Fn(&str, &str) -> bool,
) -> PodFacts {
    let a = pod.metadata.annotations.as_ref();
    let owner = a.and_then(|a| {
        Some((
            a.get(names::USER_ANNOTATION)?.clone(),
            a.get(names::TYPE_ANNOTATION)?.clone(),
        ))
    });
    let has = owner.as_ref().is_some_and(|(u, t)| has_template(u, t));
    PodFacts {
        name: pod.metadata.name.clone().unwrap_or_default(),
        owner,
        created: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| u64::try_from(t.0.as_second()).ok()),
        state: classify(pod),
        policy: pool_policy.with_annotations(pod),
        has_template: has,
    }
}

/// The connection facts of a pool's sessions, and the loop that applies the policies.
#[derive(Debug)]
pub struct Lifecycle {
    backend: Backend,
    policy: Policy,
    activity: Mutex<HashMap<String, Activity>>,
}

/// Held by the gateway while a client is connected to a session; marks it disconnected on drop.
#[derive(Debug)]
pub struct Connection {
    lifecycle: Arc<Lifecycle>,
    pod: String,
}

impl Connection {
    /// Records input from the client.
    pub fn input(&self) {
        if let Some(a) = self
            .lifecycle
            .activity
            .lock()
            .expect("activity")
            .get_mut(&self.pod)
        {
            a.last_input = unix_now();
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let now = unix_now();
        if let Some(a) = self
            .lifecycle
            .activity
            .lock()
            .expect("activity")
            .get_mut(&self.pod)
        {
            a.connections = a.connections.saturating_sub(1);
            if a.connections == 0 {
                a.disconnected_since = Some(now);
            }
        }
    }
}

/// A session as the API lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionInfo {
    /// Pod name.
    pub pod: String,
    /// User.
    pub user: String,
    /// Session type.
    pub session_type: String,
    /// "ready", "scheduling", "pulling", "starting", "broken", "stopping".
    pub state: String,
    /// Clients connected through the gateway.
    pub connections: u32,
    /// Created, seconds since the epoch.
    pub created: Option<u64>,
    /// Disconnected since, seconds since the epoch.
    pub disconnected_since: Option<u64>,
}

impl Lifecycle {
    /// The lifecycle of `backend`'s pool with the pool-wide `policy`.
    pub fn new(backend: Backend, policy: Policy) -> Arc<Lifecycle> {
        Arc::new(Lifecycle {
            backend,
            policy,
            activity: Mutex::new(HashMap::new()),
        })
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// A client connected to `pod`.
    pub fn connect(self: &Arc<Self>, pod: &str) -> Connection {
        let now = unix_now();
        let mut map = self.activity.lock().expect("activity");
        let a = map.entry(pod.to_string()).or_insert(Activity::seen(now));
        a.connections += 1;
        a.last_input = now;
        a.disconnected_since = None;
        Connection {
            lifecycle: self.clone(),
            pod: pod.to_string(),
        }
    }

    /// The pool's sessions (pods with owners), from the pod cache.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let activity = self.activity.lock().expect("activity").clone();
        let mut out: Vec<SessionInfo> = self
            .backend
            .pods()
            .iter()
            .filter_map(|pod| {
                let f = facts(pod, self.policy, |_, _| true);
                let (user, session_type) = f.owner?;
                let act = activity.get(&f.name);
                let state = match f.state {
                    PodState::Ready { .. } => "ready".to_string(),
                    PodState::Waiting { stage, .. } => stage.as_str().to_string(),
                    PodState::Broken { .. } => "broken".into(),
                    PodState::Replace { .. } => "stopping".into(),
                };
                Some(SessionInfo {
                    pod: f.name,
                    user,
                    session_type,
                    state,
                    connections: act.map(|a| a.connections).unwrap_or(0),
                    created: f.created,
                    disconnected_since: act.and_then(|a| a.disconnected_since),
                })
            })
            .collect();
        out.sort_by(|a, b| a.pod.cmp(&b.pod));
        out
    }

    /// One reconciliation pass: decide and act. Returns what was done.
    pub async fn reconcile_once(&self) -> Vec<Action> {
        let now = unix_now();
        let pods = self.backend.pods();
        let templates = self.backend.templates();
        // A type counts as removed only when no directory offers it at all (group templates
        // cannot be told apart without each user's groups). Each type is looked up once a pass.
        let mut offered: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.annotations.as_ref()?.get(names::TYPE_ANNOTATION))
            .map(String::as_str)
            .collect();
        offered.retain(|ty| any_template(templates.root(), ty));
        let has_template = |_: &str, ty: &str| offered.contains(ty);
        let facts: Vec<PodFacts> = pods
            .iter()
            .map(|p| facts(p, self.policy, has_template))
            .collect();
        let starting = self.backend.starting();
        let actions = {
            let mut activity = self.activity.lock().expect("activity");
            for f in &facts {
                activity
                    .entry(f.name.clone())
                    .or_insert(Activity::seen(now));
            }
            let b = self.backend.settings().budgets;
            let actions = decide(
                now,
                &facts,
                &activity,
                &starting,
                b.scheduling + b.image_pull + b.start,
            );
            for a in &actions {
                if let Action::Forget { pod } = a {
                    tracing::info!(pod, "session ended: its pod is gone");
                    activity.remove(pod);
                }
            }
            actions
        };
        for a in &actions {
            if let Action::Delete { pod, reason } = a {
                match self.backend.delete_pod(pod).await {
                    Ok(_) => tracing::info!(pod, %reason, "session pod deleted by policy"),
                    Err(e) => {
                        tracing::warn!(pod, %reason, error = %e, "could not delete a session pod")
                    }
                }
            }
        }
        actions
    }

    /// Reconciles every `interval` until `shutdown`.
    pub async fn run(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        self.backend.cache_ready().await;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => { self.reconcile_once().await; }
            }
        }
    }
}

fn any_template(root: &std::path::Path, ty: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(root) else {
        return true;
    };
    entries
        .flatten()
        .any(|e| e.path().join(format!("{ty}.yaml")).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const H: u64 = 3600;

    fn ready(name: &str, created: u64, policy: Policy) -> PodFacts {
        PodFacts {
            name: name.into(),
            owner: Some(("alice".into(), "xfce".into())),
            created: Some(created),
            state: PodState::Ready {
                ip: IpAddr::from([10, 0, 0, 1]),
            },
            policy,
            has_template: true,
        }
    }

    fn policy() -> Policy {
        Policy {
            idle: Some(Duration::from_secs(12 * H)),
            disconnected: Some(Duration::from_secs(8 * H)),
            max_age: Some(Duration::from_secs(7 * 24 * H)),
        }
    }

    fn del(pod: &str, reason: Reason) -> Action {
        Action::Delete {
            pod: pod.into(),
            reason,
        }
    }

    #[test]
    fn policies_log_off_in_order() {
        let now = 100 * 24 * H;
        let pods = vec![
            ready("young", now - H, policy()),
            ready("old", now - 8 * 24 * H, policy()),
            ready("away", now - 24 * H, policy()),
            ready("idle", now - 24 * H, policy()),
            ready("busy", now - 24 * H, policy()),
            ready("no-rules", now - 80 * 24 * H, Policy::default()),
        ];
        let mut act = HashMap::new();
        act.insert(
            "young".to_string(),
            Activity {
                connections: 0,
                last_input: now - H,
                disconnected_since: Some(now - H),
            },
        );
        act.insert(
            "old".to_string(),
            Activity {
                connections: 1,
                last_input: now,
                disconnected_since: None,
            },
        );
        act.insert(
            "away".to_string(),
            Activity {
                connections: 0,
                last_input: now - 9 * H,
                disconnected_since: Some(now - 9 * H),
            },
        );
        act.insert(
            "idle".to_string(),
            Activity {
                connections: 1,
                last_input: now - 13 * H,
                disconnected_since: None,
            },
        );
        act.insert(
            "busy".to_string(),
            Activity {
                connections: 1,
                last_input: now - 60,
                disconnected_since: None,
            },
        );
        act.insert(
            "gone".to_string(),
            Activity {
                connections: 0,
                last_input: now,
                disconnected_since: Some(now),
            },
        );
        let actions = decide(now, &pods, &act, &HashSet::new(), Duration::from_secs(600));
        assert_eq!(
            actions,
            vec![
                del("old", Reason::MaxAge),
                del("away", Reason::Disconnected),
                del("idle", Reason::Idle),
                Action::Forget { pod: "gone".into() },
            ]
        );
    }

    #[test]
    fn a_session_without_facts_counts_from_now() {
        // After a restart nothing is known about connections: nobody is logged off at once.
        let now = 100 * H;
        let pods = vec![ready(
            "p",
            now - 50 * H,
            Policy {
                max_age: None,
                ..policy()
            },
        )];
        assert!(
            decide(
                now,
                &pods,
                &HashMap::new(),
                &HashSet::new(),
                Duration::from_secs(600)
            )
            .is_empty()
        );
    }

    #[test]
    fn stopped_broken_orphaned_and_stuck_pods_go() {
        let now = 100 * H;
        let mut stopped = ready("stopped", now - H, policy());
        stopped.state = PodState::Replace {
            reason: "Evicted".into(),
        };
        let mut terminating = ready("terminating", now - H, policy());
        terminating.state = PodState::Replace {
            reason: "Terminating".into(),
        };
        let mut broken = ready("broken", now - H, policy());
        broken.state = PodState::Broken {
            reason: "ImagePullBackOff".into(),
            message: String::new(),
        };
        let mut orphan = ready("orphan", now - H, policy());
        orphan.owner = None;
        let mut untemplated = ready("untemplated", now - H, policy());
        untemplated.has_template = false;
        let mut stuck = ready("stuck", now - H, policy());
        stuck.state = PodState::Waiting {
            stage: crate::Stage::Pulling,
            detail: None,
        };
        let mut pulling = ready("pulling", now - 60, policy());
        pulling.state = stuck.state.clone();
        let mut mine = broken.clone();
        mine.name = "mine".into();
        let pods = vec![
            stopped,
            terminating,
            broken,
            orphan,
            untemplated,
            stuck,
            pulling,
            mine,
        ];
        let starting = HashSet::from(["mine".to_string()]);
        let actions = decide(
            now,
            &pods,
            &HashMap::new(),
            &starting,
            Duration::from_secs(600),
        );
        assert_eq!(
            actions,
            vec![
                del("stopped", Reason::Stopped("Evicted".into())),
                del("broken", Reason::Stopped("ImagePullBackOff".into())),
                del("orphan", Reason::Orphan("no owner annotations".into())),
                del(
                    "untemplated",
                    Reason::Orphan("no template for its session type".into())
                ),
                del("stuck", Reason::Stuck),
            ]
        );
    }

    #[test]
    fn annotations_override_the_pool() {
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(
            [
                (MAX_AGE_ANNOTATION.to_string(), "2h".to_string()),
                (IDLE_ANNOTATION.to_string(), "off".to_string()),
                (DISCONNECTED_ANNOTATION.to_string(), "soon".to_string()),
            ]
            .into(),
        );
        let p = policy().with_annotations(&pod);
        assert_eq!(p.max_age, Some(Duration::from_secs(2 * H)));
        assert_eq!(p.idle, None);
        assert_eq!(
            p.disconnected,
            policy().disconnected,
            "a bad value keeps the pool's"
        );
    }
}
