//! The management socket: a UNIX socket speaking the line protocol of
//! [`switchboard_proto::mgmt`] (VERDE's command set plus drain, weight, sessions, explain,
//! enroll, revoke and audit), for `switchboard ctl` and for scripts.
//!
//! The socket is created with the configured mode (default 0660) and group. On top of the file
//! permissions, each connection's peer credentials (SO_PEERCRED) are checked: root, the broker's
//! own user, and members of the configured group are served; anyone else is told so and
//! disconnected. Every action is audited with surface `ctl` and the peer's user name.

use crate::actions::hosts::AdminChange;
use crate::actions::{Actions, Actor, Ended, SessionEnd, Surface, Termination};
use crate::agents::AgentHub;
use crate::engine::{EngineError, EngineHandle};
use crate::snapshot::HostInfo;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use switchboard_core::model::SessionRecord;
use switchboard_proto::mgmt::{self, COMMANDS, Request, SessionFilter, Target, table};
use switchboard_proto::mgmt_socket::{self, Reply};
use switchboard_store::{SqlStore, Store};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// Why the socket could not be set up.
pub use switchboard_proto::mgmt_socket::SocketError as MgmtError;
pub use switchboard_proto::mgmt_socket::{bind, user_name};

/// What the socket's commands act on.
#[derive(Clone)]
pub struct Mgmt {
    /// The engine.
    pub engine: EngineHandle,
    /// Agent links.
    pub agents: AgentHub,
    /// The store (audit log).
    pub store: Arc<SqlStore>,
    /// Operator actions.
    pub actions: Actions,
}

impl std::fmt::Debug for Mgmt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mgmt").finish_non_exhaustive()
    }
}

/// Serves connections until `shutdown`, then removes the socket file.
pub fn spawn(
    mgmt: Mgmt,
    listener: UnixListener,
    path: PathBuf,
    gid: Option<u32>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    mgmt_socket::spawn(Arc::new(mgmt), listener, path, gid, shutdown)
}

impl mgmt_socket::Handler for Mgmt {
    async fn execute(&self, line: String, actor: String) -> Result<Reply, String> {
        match mgmt::parse(&line) {
            Ok(None) => Err("empty command".into()),
            // The transport answers these itself; they cannot arrive here.
            Ok(Some(Request::Quit | Request::Verbose(_))) => Err("not here".into()),
            Ok(Some(r)) => self.execute(r, &actor).await,
            Err(e) => Err(e.0),
        }
    }
}

fn engine_err(e: EngineError) -> String {
    e.to_string()
}

impl Mgmt {
    async fn admin(&self, actor: &str, host: String, change: AdminChange) -> Result<Reply, String> {
        let who = Actor::new(Surface::Ctl, actor);
        self.actions
            .set_admin(&who, &host, change)
            .await
            .map(|()| {
                let state = change.state();
                Reply::new(
                    json!({"host": host, "admin": state.as_str()}),
                    format!("{host}: {}", state.as_str()),
                )
            })
            .map_err(|e| e.message())
    }

    async fn end(&self, actor: &str, target: Target, how: Termination) -> Result<Reply, String> {
        let who = Actor::new(Surface::Ctl, actor);
        let ends = self
            .actions
            .end_sessions(&who, &target, how)
            .await
            .map_err(|e| e.message())?;
        let failed = ends.iter().filter(|e| e.result.is_err()).count();
        let message = |e: &SessionEnd| match &e.result {
            Ok(Ended::ByAgent(m)) => m.clone(),
            Ok(Ended::Record | Ended::Released) => "ended (no agent to act on the host)".to_owned(),
            Err(err) => err.to_string(),
        };
        let rows = ends
            .iter()
            .map(|e| {
                vec![
                    e.session.id.0.to_string(),
                    e.session.user.to_string(),
                    e.session.host.to_string(),
                    match &e.result {
                        Ok(_) => message(e),
                        Err(_) => format!("FAILED: {}", message(e)),
                    },
                ]
            })
            .collect::<Vec<_>>();
        let j =
            json!(ends
            .iter()
            .map(|e| json!({"id": e.session.id.0, "user": e.session.user, "host": e.session.host,
                            "ok": e.result.is_ok(), "message": message(e)}))
            .collect::<Vec<_>>());
        let text = table(&["SESSION", "USER", "HOST", "RESULT"], &rows);
        if failed == 0 {
            Ok(Reply::new(j, text))
        } else {
            Err(format!(
                "{failed} of {} sessions not ended:\n{text}",
                ends.len()
            ))
        }
    }

    async fn execute(&self, r: Request, actor: &str) -> Result<Reply, String> {
        match r {
            Request::Help(None) => {
                let rows: Vec<Vec<String>> = COMMANDS
                    .iter()
                    .map(|(_, u, d)| vec![(*u).to_owned(), (*d).to_owned()])
                    .collect();
                Ok(Reply::new(
                    json!(
                        COMMANDS
                            .iter()
                            .map(|(n, u, d)| json!({"command": n, "usage": u, "does": d}))
                            .collect::<Vec<_>>()
                    ),
                    table(&["COMMAND", "DOES"], &rows),
                ))
            }
            Request::Help(Some(c)) => match COMMANDS.iter().find(|(n, _, _)| *n == c) {
                Some((n, u, d)) => Ok(Reply::new(
                    json!({"command": n, "usage": u, "does": d}),
                    format!("{u}\n  {d}"),
                )),
                None => Err(format!("no command {c:?}; `help` lists them")),
            },
            Request::Hello => {
                let snap = self.engine.snapshot();
                let (sessions, users) = self
                    .engine
                    .query(|s| {
                        let mut u: Vec<_> = s.sessions().map(|r| r.user).collect();
                        u.sort();
                        u.dedup();
                        (s.session_count(), u.len())
                    })
                    .await
                    .map_err(engine_err)?;
                let up = snap.hosts.iter().filter(|h| h.health == "up").count();
                Ok(Reply::new(
                    json!({"version": env!("CARGO_PKG_VERSION"), "hosts": snap.hosts.len(), "hosts_up": up,
                           "sessions": sessions, "users": users, "reservations": snap.reservations, "ready": snap.ready}),
                    format!(
                        "Switchboard broker {}: {} hosts ({} up), {} sessions, {} users, {} reservations",
                        env!("CARGO_PKG_VERSION"),
                        snap.hosts.len(),
                        up,
                        sessions,
                        users,
                        snap.reservations
                    ),
                ))
            }
            Request::Servers => {
                let snap = self.engine.snapshot();
                let rows = snap.hosts.iter().map(|h| server_row(h)).collect::<Vec<_>>();
                Ok(Reply::new(
                    json!(snap.hosts),
                    table(
                        &[
                            "HOST",
                            "ADMIN",
                            "HEALTH",
                            "SESSIONS",
                            "RESERVED",
                            "WEIGHT",
                            "LOAD1",
                            "CPU",
                            "MEM FREE",
                            "NOT PLACEABLE",
                        ],
                        &rows,
                    ),
                ))
            }
            Request::Server(name) => {
                let snap = self.engine.snapshot();
                let h = snap
                    .hosts
                    .iter()
                    .find(|h| h.name == name)
                    .ok_or_else(|| format!("no host {name:?}"))?;
                let connected = self.agents.is_connected(&h.name);
                let mut text = format!(
                    "host       {}\naddress    {}:{}\nadmin      {}\nhealth     {}\nagent      {}\nweight     {}\nsessions   {}{}\nreserved   {}\npools      {}\nplaceable  {}",
                    h.name,
                    h.address,
                    h.port,
                    h.admin,
                    h.health,
                    if !h.agent {
                        "none (agentless)"
                    } else if connected {
                        "linked"
                    } else {
                        "not linked"
                    },
                    h.weight,
                    h.sessions,
                    h.max_sessions
                        .map(|m| format!(" of {m}"))
                        .unwrap_or_default(),
                    h.reservations,
                    h.pools.join(", "),
                    h.excluded
                        .as_deref()
                        .map_or("yes".to_owned(), |e| format!("no ({e})")),
                );
                if let Some(l) = &h.load {
                    text.push_str(&format!(
                        "\nload       {:.2} {:.2} {:.2}, cpu {:.0}% of {}, memory {} of {} MiB free, {} users",
                        l.load_avg[0],
                        l.load_avg[1],
                        l.load_avg[2],
                        l.cpu_utilisation * 100.0,
                        l.cpu_count,
                        l.mem_available_kib / 1024,
                        l.mem_total_kib / 1024,
                        l.users
                    ));
                }
                let mut j = json!(h);
                j["agent_linked"] = json!(connected);
                Ok(Reply::new(j, text))
            }
            Request::Users => {
                let users = self
                    .engine
                    .query(|s| {
                        let mut by: std::collections::BTreeMap<String, (usize, Vec<String>)> =
                            Default::default();
                        for r in s.sessions() {
                            let e = by.entry(r.user.to_string()).or_default();
                            e.0 += 1;
                            if !e.1.iter().any(|h| **h == *r.host) {
                                e.1.push(r.host.to_string());
                            }
                        }
                        by
                    })
                    .await
                    .map_err(engine_err)?;
                let rows = users
                    .iter()
                    .map(|(u, (n, hosts))| vec![u.clone(), n.to_string(), hosts.join(",")])
                    .collect::<Vec<_>>();
                Ok(Reply::new(
                    json!(
                        users
                            .iter()
                            .map(|(u, (n, h))| json!({"user": u, "sessions": n, "hosts": h}))
                            .collect::<Vec<_>>()
                    ),
                    table(&["USER", "SESSIONS", "HOSTS"], &rows),
                ))
            }
            Request::User(name) => {
                let n = name.clone();
                let sessions = self
                    .engine
                    .query(move |s| s.sessions_of_user(&n))
                    .await
                    .map_err(engine_err)?;
                Ok(sessions_reply(&sessions))
            }
            Request::Sessions(f) => {
                let sessions = self
                    .engine
                    .query(move |s| s.sessions().filter(|r| keep(&f, r)).collect::<Vec<_>>())
                    .await
                    .map_err(engine_err)?;
                Ok(sessions_reply(&sessions))
            }
            Request::Reservations => {
                let rs = self
                    .engine
                    .query(|s| s.reservations())
                    .await
                    .map_err(engine_err)?;
                let rows = rs
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.0.to_string(),
                            r.user.to_string(),
                            r.host.to_string(),
                            r.pool.to_string(),
                            r.expires_at.0.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>();
                Ok(Reply::new(
                    json!(rs.iter().map(|r| json!({"id": r.id.0, "user": r.user, "host": r.host, "pool": r.pool, "expires_at": r.expires_at.0})).collect::<Vec<_>>()),
                    table(&["ID", "USER", "HOST", "POOL", "EXPIRES AT (ms)"], &rows),
                ))
            }
            Request::Explain(user, pool) => {
                let e = self
                    .engine
                    .query(move |s| s.explain(&user, &pool))
                    .await
                    .map_err(engine_err)?
                    .map_err(|e| e.to_string())?;
                let mut text = format!(
                    "pool {} ({}): resume {}, next new session on {}",
                    e.pool,
                    e.policy.as_str(),
                    e.resume.as_ref().map_or("nothing".to_owned(), |r| format!(
                        "{} on {}",
                        r.id.0, r.host
                    )),
                    e.next.as_deref().unwrap_or("no host")
                );
                let l = &e.limits;
                let show = |d: &Option<switchboard_core::config::ConfigDuration>| {
                    d.map_or("off".to_owned(), |d| {
                        humantime::format_duration(d.0).to_string()
                    })
                };
                text.push_str(&format!(
                    "\npolicies: {} session(s) of this user here, at most {}{}; log off when disconnected {}, idle {}, older than {} (grace {})",
                    e.user_sessions,
                    l.max_sessions_per_user.map_or("unlimited".to_owned(), |m| m.to_string()),
                    if e.at_user_limit { " (a new session would be refused)" } else { "" },
                    show(&l.logoff_disconnected_after),
                    show(&l.logoff_idle_after),
                    show(&l.max_session_age),
                    humantime::format_duration(l.logoff_grace.0),
                ));
                let rows = e
                    .hosts
                    .iter()
                    .map(|h| {
                        vec![
                            h.host.to_string(),
                            h.score.map_or("-".into(), |s| format!("{s:.4}")),
                            h.excluded.map_or(
                                if h.penalized {
                                    "penalized".into()
                                } else {
                                    String::new()
                                },
                                |x| x.as_str().to_owned(),
                            ),
                            h.sessions.to_string(),
                            h.reservations.to_string(),
                            h.weight.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>();
                text.push('\n');
                text.push_str(&table(
                    &[
                        "HOST", "SCORE", "EXCLUDED", "SESSIONS", "RESERVED", "WEIGHT",
                    ],
                    &rows,
                ));
                Ok(Reply::new(json!(e), text))
            }
            Request::Audit { n, before } => {
                let records = self
                    .store
                    .audit(n, before.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                let rows = records
                    .iter()
                    .map(|r| {
                        vec![
                            r.at.0.to_string(),
                            r.actor.clone(),
                            r.surface.clone(),
                            r.action.clone(),
                            r.target.clone(),
                            r.result.clone(),
                            r.id.clone(),
                        ]
                    })
                    .collect::<Vec<_>>();
                Ok(Reply::new(
                    json!(records.iter().map(|r| json!({"id": r.id, "at": r.at.0, "actor": r.actor, "surface": r.surface, "action": r.action, "target": r.target, "result": r.result})).collect::<Vec<_>>()),
                    table(&["AT (ms)", "WHO", "FROM", "ACTION", "TARGET", "RESULT", "ID"], &rows),
                ))
            }
            Request::OfflineServer(h) => self.admin(actor, h, AdminChange::Offline).await,
            Request::OnlineServer(h) => self.admin(actor, h, AdminChange::Online).await,
            Request::Undrain(h) => self.admin(actor, h, AdminChange::Undrain).await,
            Request::Drain { host, then_offline } => {
                self.admin(actor, host, AdminChange::Drain { then_offline })
                    .await
            }
            Request::Weight(host, weight) => {
                let who = Actor::new(Surface::Ctl, actor);
                self.actions
                    .set_weight(&who, &host, weight)
                    .await
                    .map(|()| {
                        Reply::new(
                            json!({"host": host, "weight": weight}),
                            format!("{host}: weight {weight}"),
                        )
                    })
                    .map_err(|e| e.message())
            }
            Request::Enroll(host) => {
                let who = Actor::new(Surface::Ctl, actor);
                self.actions
                    .enroll(&who, &host)
                    .await
                    .map(|c| {
                        Reply::new(
                            json!({"host": host, "credential": c}),
                            format!("{c}\n(the credential for {host}, shown only now: put it in the agent's credential_file, mode 0600)"),
                        )
                    })
                    .map_err(|e| e.message())
            }
            Request::Revoke(host) => {
                let who = Actor::new(Surface::Ctl, actor);
                self.actions
                    .revoke(&who, &host)
                    .await
                    .map(|()| {
                        Reply::new(
                            json!({"host": host}),
                            format!("{host}: credential revoked, link dropped"),
                        )
                    })
                    .map_err(|e| e.message())
            }
            Request::AbortUser(t) => self.end(actor, t, Termination::Kill).await,
            Request::ShutdownUser(t) => self.end(actor, t, Termination::Terminate).await,
            Request::LogoffUser(t, grace) => self.end(actor, t, Termination::Logoff(grace)).await,
            Request::Quit | Request::Verbose(_) => Err("handled by the connection".into()),
        }
    }
}

fn keep(f: &SessionFilter, r: &SessionRecord) -> bool {
    f.user.as_deref().is_none_or(|u| *r.user == *u)
        && f.host.as_deref().is_none_or(|h| *r.host == *h)
        && f.pool
            .as_deref()
            .is_none_or(|p| r.pool.as_deref() == Some(p))
        && f.state.as_deref().is_none_or(|s| r.state.as_str() == s)
}

fn sessions_reply(sessions: &[SessionRecord]) -> Reply {
    let rows = sessions
        .iter()
        .map(|s| {
            vec![
                s.id.0.to_string(),
                s.user.to_string(),
                s.host.to_string(),
                s.pool.as_deref().unwrap_or("-").to_owned(),
                s.state.as_str().to_owned(),
                s.backend_id.as_deref().unwrap_or("-").to_owned(),
            ]
        })
        .collect::<Vec<_>>();
    Reply::new(
        json!(sessions
            .iter()
            .map(|s| json!({"id": s.id.0, "user": s.user, "host": s.host, "pool": s.pool, "state": s.state.as_str(),
                             "backend_id": s.backend_id, "created_at": s.created_at.0}))
            .collect::<Vec<_>>()),
        table(&["ID", "USER", "HOST", "POOL", "STATE", "BACKEND ID"], &rows),
    )
}

fn server_row(h: &HostInfo) -> Vec<String> {
    let (load1, cpu, mem) = match &h.load {
        Some(l) => (
            format!("{:.2}", l.load_avg[0]),
            format!("{:.0}%", l.cpu_utilisation * 100.0),
            if l.mem_total_kib > 0 {
                format!(
                    "{:.0}%",
                    l.mem_available_kib as f64 * 100.0 / l.mem_total_kib as f64
                )
            } else {
                "-".into()
            },
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    vec![
        h.name.clone(),
        h.admin.clone(),
        h.health.clone(),
        match h.max_sessions {
            Some(m) => format!("{}/{m}", h.sessions),
            None => h.sessions.to_string(),
        },
        h.reservations.to_string(),
        h.weight.to_string(),
        load1,
        cpu,
        mem,
        h.excluded.clone().unwrap_or_default(),
    ]
}
