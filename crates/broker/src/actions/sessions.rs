//! Ending sessions: one by id, all of a user's, and the sweeper's policy log-offs.
//!
//! A session on an agent host with a backend id is ended by its agent (it stays `ending` until
//! the agent reports it gone); any other session's record is ended at once; a reservation is
//! given back.

use super::{AGENT_TIMEOUT, ActionError, Actions, Actor};
use std::time::Duration;
use switchboard_core::model::{PolicyLogoff, SessionRecord};
use switchboard_core::{Command, CoreError, SessionId};
use switchboard_proto::agent::Action as AgentAction;
use switchboard_proto::mgmt::Target;

/// The sessions of `ends` that could not be ended, each as `id: why`.
pub fn failures(ends: &[SessionEnd]) -> Vec<String> {
    ends.iter()
        .filter_map(|e| {
            e.result
                .as_ref()
                .err()
                .map(|err| format!("{}: {err}", e.session.id))
        })
        .collect()
}

/// How a session is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// Kill it now.
    Kill,
    /// Terminate it gracefully.
    Terminate,
    /// Terminate, then kill after this many seconds if it is still there.
    Logoff(u64),
}

impl Termination {
    /// The audit log's (and the console's) word for ending sessions this way.
    pub fn as_str(self) -> &'static str {
        match self {
            Termination::Kill => "abortuser",
            Termination::Terminate => "shutdownuser",
            Termination::Logoff(_) => "logoffuser",
        }
    }
}

/// How a session was ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Its agent carried out the command (with this message), or for a pod of a Kubernetes
    /// pool, the pod is being deleted; the session is `ending` until it is reported gone.
    ByAgent(String),
    /// No agent could act on it (agentless host, or no backend id): the record was ended.
    Record,
    /// It was a reservation, given back.
    Released,
}

/// One session of a target and how ending it went.
#[derive(Debug)]
pub struct SessionEnd {
    /// The session as it was.
    pub session: SessionRecord,
    /// What happened.
    pub result: Result<Ended, ActionError>,
}

impl Actions {
    /// Ends one session (or gives a reservation back).
    pub async fn end_session(
        &self,
        actor: &Actor,
        id: SessionId,
        how: Termination,
    ) -> Result<Ended, ActionError> {
        let found = self
            .engine
            .query(move |s| {
                s.session(id)
                    .map(|r| (r.user, r.host, false))
                    .or_else(|| s.reservation(id).map(|r| (r.user, r.host, true)))
            })
            .await;
        let (target, r) = match found {
            Err(e) => (format!("session {id}"), Err(e.into())),
            Ok(None) => (
                format!("session {id}"),
                Err(ActionError::Engine(
                    CoreError::IdNotFound {
                        kind: "session",
                        id,
                    }
                    .into(),
                )),
            ),
            Ok(Some((user, host, reserved))) => {
                let target = format!("session {id} ({user} on {host})");
                let r = if reserved {
                    self.engine
                        .apply(Command::Release { id })
                        .await
                        .map(|_| Ended::Released)
                        .map_err(ActionError::from)
                } else {
                    self.end(id, how).await
                };
                (target, r)
            }
        };
        self.audit(actor, how.as_str(), &target, &r).await;
        r
    }

    /// Ends every live session of a target (a user's, or one by id), each on its own; the
    /// action fails if any of them could not be ended, and says which.
    pub async fn end_sessions(
        &self,
        actor: &Actor,
        target: &Target,
        how: Termination,
    ) -> Result<Vec<SessionEnd>, ActionError> {
        let t = target.clone();
        let found = self
            .engine
            .query(move |s| match &t {
                Target::Session(id) => s.session(SessionId(*id)).into_iter().collect::<Vec<_>>(),
                Target::User(u) => s.sessions_of_user(u),
            })
            .await
            .map_err(ActionError::from);
        let sessions = match found {
            Ok(s) if s.is_empty() => Err(ActionError::NoSessions(target.to_string())),
            r => r,
        };
        let sessions = match sessions {
            Ok(s) => s,
            Err(e) => {
                let r = Err(e);
                self.audit(actor, how.as_str(), &target.to_string(), &r)
                    .await;
                return r;
            }
        };
        let mut ends = Vec::with_capacity(sessions.len());
        for session in sessions {
            let result = self.end(session.id, how).await;
            ends.push(SessionEnd { session, result });
        }
        let failures = failures(&ends);
        let outcome = if failures.is_empty() {
            Ok(())
        } else {
            Err(ActionError::Partial {
                failed: failures.len(),
                total: ends.len(),
                details: failures.join("; "),
            })
        };
        self.audit(actor, how.as_str(), &target.to_string(), &outcome)
            .await;
        Ok(ends)
    }

    /// Logs a session off because its pool's policy says so (actor `policy`), audited with the
    /// rule and the figures that triggered it.
    pub async fn policy_logoff(&self, p: &PolicyLogoff) -> Result<Ended, ActionError> {
        // Whole seconds, rounded up: a 500 ms grace must not become an immediate kill.
        let grace_secs = p.grace.as_millis().div_ceil(1000) as u64;
        let r = self
            .end(p.session.id, Termination::Logoff(grace_secs))
            .await;
        let (action, target) = describe(p);
        let actor = Actor::new(super::Surface::Policy, "policy");
        self.audit(&actor, &action, &target, &r).await;
        r
    }

    /// Ends a live session: through its agent when it is on an agent host and has a backend
    /// id, by deleting its pod when it is a Kubernetes pool's, otherwise by ending the record.
    async fn end(&self, id: SessionId, how: Termination) -> Result<Ended, ActionError> {
        let engine = &self.engine;
        let kube = self.kube.clone();
        let target = engine
            .query(move |s| {
                let r = s.session(id)?;
                let acts = s.host(&r.host).is_some_and(|h| h.spec.agent)
                    || kube.by_host(&r.host).is_some();
                Some((r.host.to_string(), r.backend_id.filter(|_| acts)))
            })
            .await?;
        if let (Some((host, Some(pod))), Some(pool)) = (
            &target,
            target.as_ref().and_then(|(h, _)| self.kube.by_host(h)),
        ) {
            // Every way of ending a pod session deletes the pod; it ends when the pod is gone.
            pool.backend().delete_pod(pod).await?;
            return match engine.apply(Command::BeginEnding { id }).await {
                Ok(_) | Err(crate::engine::EngineError::Core(CoreError::IdNotFound { .. })) => {
                    Ok(Ended::ByAgent(format!("pod {pod} of {host} deleted")))
                }
                Err(e) => Err(e.into()),
            };
        }
        let Some((host, Some(backend_id))) = target else {
            engine.apply(Command::EndSession { id }).await?;
            return Ok(Ended::Record);
        };
        let backend_id = backend_id.to_string();
        let action = match how {
            Termination::Kill => AgentAction::Kill { backend_id },
            Termination::Terminate => AgentAction::Terminate { backend_id },
            Termination::Logoff(grace) => AgentAction::Logoff {
                backend_id,
                grace_ms: grace.saturating_mul(1000),
            },
        };
        let message = self.agents.command(&host, action, AGENT_TIMEOUT).await?;
        match engine.apply(Command::BeginEnding { id }).await {
            // Already gone: the agent's report came first.
            Ok(_) | Err(crate::engine::EngineError::Core(CoreError::IdNotFound { .. })) => {
                Ok(Ended::ByAgent(message))
            }
            Err(e) => Err(e.into()),
        }
    }
}

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
