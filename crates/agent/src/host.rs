//! The agent on a real host: samples load, looks at its session sources every report interval,
//! and carries out the broker's commands through the source that reported the session.
//!
//! A source whose listing fails keeps its last known sessions (a failed `loginctl` call must not
//! tell the broker that everyone logged out) and the failure is logged once until it recovers.

use crate::config::AgentConfig;
use crate::link::{self, Executor, Feeds, Inventory, LinkParams, LinkState};
use crate::load::LoadSampler;
use crate::sources::{SessionAct, Source};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_core::model::ReportedSession;
use switchboard_proto::agent::Action;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// TLS settings or the server name are unusable.
    #[error(transparent)]
    Link(#[from] link::LinkError),
}

/// Sessions with the index of the source that reported each.
#[derive(Debug, Default, Clone)]
struct Owned {
    sessions: Inventory,
    owner: HashMap<String, usize>,
    /// Rows the sources skipped in this listing (see `sources::Listing`).
    skipped: u64,
}

struct HostExecutor {
    sources: Arc<Vec<Source>>,
    owned: Arc<Mutex<Owned>>,
    poke: Arc<Notify>,
    /// Users with autologin keys this agent added: the latest expiry (epoch ms) of each, for
    /// the sweeper.
    keys: Arc<Mutex<HashMap<String, u64>>>,
}

impl HostExecutor {
    fn find(&self, backend_id: &str) -> Result<(ReportedSession, usize), String> {
        let o = self
            .owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (o.sessions.get(backend_id), o.owner.get(backend_id)) {
            (Some(s), Some(&i)) => Ok((s.clone(), i)),
            _ => Err(format!("no session {backend_id:?} on this host")),
        }
    }

    async fn act(&self, act: SessionAct, backend_id: &str) -> Result<String, String> {
        let (session, i) = self.find(backend_id)?;
        let r = self.sources[i]
            .act(act, &session)
            .await
            .map_err(|e| e.to_string());
        // Look again now, so the broker hears of the change before the next interval.
        self.poke.notify_one();
        r
    }

    /// Whether the same session (id and user: ids such as xpra displays are reused) is still
    /// there.
    async fn still_there(&self, backend_id: &str, user: &str) -> bool {
        let Ok((_, i)) = self.find(backend_id) else {
            return false;
        };
        match self.sources[i].list().await {
            Ok(list) => list
                .iter()
                .any(|s| s.backend_id == backend_id && s.user == user),
            // Cannot tell: assume it is, so the kill is tried (it fails harmlessly if not).
            Err(_) => true,
        }
    }
}

impl Executor for HostExecutor {
    fn execute(
        &self,
        action: Action,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(async move {
            match action {
                Action::Terminate { backend_id } => {
                    self.act(SessionAct::Terminate, &backend_id).await
                }
                Action::Kill { backend_id } => self.act(SessionAct::Kill, &backend_id).await,
                Action::Disconnect { backend_id } => {
                    self.act(SessionAct::Disconnect, &backend_id).await
                }
                Action::Logoff {
                    backend_id,
                    grace_ms,
                } => {
                    let (session, _) = self.find(&backend_id)?;
                    // A failed terminate does not cancel the log-off: the kill still follows.
                    let done = match self.act(SessionAct::Terminate, &backend_id).await {
                        Ok(m) => m,
                        Err(e) => format!("terminate failed ({e})"),
                    };
                    let user = session.user;
                    let me = HostExecutor {
                        sources: self.sources.clone(),
                        owned: self.owned.clone(),
                        poke: self.poke.clone(),
                        keys: self.keys.clone(),
                    };
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(grace_ms)).await;
                        if me.still_there(&backend_id, &user).await {
                            match me.act(SessionAct::Kill, &backend_id).await {
                                Ok(m) => {
                                    tracing::info!(session = %backend_id, message = %m, "log-off grace over: killed")
                                }
                                Err(e) => {
                                    tracing::warn!(session = %backend_id, error = %e, "log-off grace over: kill failed")
                                }
                            }
                        }
                    });
                    Ok(format!("{done}; killed after {grace_ms} ms if still there"))
                }
                Action::AddKey {
                    user,
                    key,
                    expires_at_ms,
                } => {
                    let r = crate::authkeys::apply(
                        &user,
                        crate::authkeys::KeyOp::Add { key, expires_at_ms },
                    )
                    .await
                    .map_err(|e| e.to_string());
                    if r.is_ok() {
                        let mut k = self
                            .keys
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let e = k.entry(user).or_insert(0);
                        *e = (*e).max(expires_at_ms);
                    }
                    r
                }
                Action::RemoveKey { user, key } => {
                    crate::authkeys::apply(&user, crate::authkeys::KeyOp::Remove { key })
                        .await
                        .map_err(|e| e.to_string())
                }
            }
        })
    }
}

/// Looks at every source, keeping a failed source's last sessions. Returns the new inventory
/// and owners.
async fn collect(sources: &[Source], previous: &Owned, failing: &mut [bool]) -> Owned {
    let mut out = Owned::default();
    for (i, src) in sources.iter().enumerate() {
        let listed = match src.listing().await {
            Ok(listing) => {
                if failing[i] {
                    tracing::info!(source = src.kind(), "session source works again");
                    failing[i] = false;
                }
                out.skipped += listing.skipped;
                let mut list = listing.sessions;
                // Users whose own listing failed keep their last known sessions.
                if !listing.failed_users.is_empty() {
                    list.extend(
                        previous
                            .owner
                            .iter()
                            .filter(|(_, o)| **o == i)
                            .filter_map(|(id, _)| previous.sessions.get(id))
                            .filter(|s| listing.failed_users.contains(&s.user))
                            .cloned(),
                    );
                }
                list
            }
            Err(e) => {
                if !failing[i] {
                    tracing::warn!(source = src.kind(), error = %e, "session source failed; keeping its last known sessions");
                    failing[i] = true;
                }
                previous
                    .owner
                    .iter()
                    .filter(|(_, o)| **o == i)
                    .filter_map(|(id, _)| previous.sessions.get(id).cloned())
                    .collect()
            }
        };
        for s in listed {
            if out.owner.contains_key(&s.backend_id) {
                tracing::debug!(session = %s.backend_id, "reported by two sources; the first wins");
                continue;
            }
            out.owner.insert(s.backend_id.clone(), i);
            out.sessions.insert(s.backend_id.clone(), s);
        }
    }
    out
}

/// How often the agent drops expired autologin keys from the files it added them to.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Drops expired autologin key lines on a timer, whatever became of the broker's removal (a
/// broker restart, a lost link): every user this agent added a key for is swept once the
/// latest of those keys has expired, and again later if the sweep failed. (sshd refuses an
/// expired key anyway, through the line's `expiry-time`; this keeps the files clean.)
fn spawn_key_sweeper(keys: Arc<Mutex<HashMap<String, u64>>>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = crate::authkeys::now_ms();
            let due: Vec<(String, u64)> = keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .filter(|(_, until)| **until <= now)
                .map(|(u, until)| (u.clone(), *until))
                .collect();
            for (user, until) in due {
                match crate::authkeys::apply(&user, crate::authkeys::KeyOp::Sweep).await {
                    Ok(done) => {
                        tracing::debug!(user = %user, done = %done, "expired autologin keys swept");
                        let mut k = keys
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        // A key added meanwhile keeps the user for a later round.
                        if k.get(&user) == Some(&until) {
                            k.remove(&user);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(user = %user, error = %e, "expired autologin keys not swept; trying again later");
                    }
                }
            }
        }
    });
}

/// How long the first inventory waits for a session source that keeps failing: after that the
/// others' sessions are reported (the failing one's are unknown, so the broker may end them).
pub const FIRST_LISTING_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the agent for one real host until `shutdown`. Returns the link state receiver.
pub fn spawn(
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<LinkState>, AgentError> {
    let params = LinkParams {
        broker: config.broker.clone(),
        server_name: link::server_name(&config.server_name)?,
        tls: link::client_tls(&config.ca)?,
        host: config.host.clone(),
        credential: config.credential.clone(),
        interval: config.report_interval,
        quiet: false,
    };
    let sources: Arc<Vec<Source>> = Arc::new(config.sources.into_iter().map(Source::new).collect());
    let owned = Arc::new(Mutex::new(Owned::default()));
    let poke = Arc::new(Notify::new());
    let (load_tx, load_rx) = watch::channel(None);
    let (sessions_tx, sessions_rx) = watch::channel(Arc::new(Inventory::new()));
    let (listed_tx, listed_rx) = watch::channel(false);
    let (state_tx, state_rx) = watch::channel(LinkState::Down("starting".into()));
    let interval = config.report_interval;
    {
        let sources = sources.clone();
        let owned = owned.clone();
        let poke = poke.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut sampler = LoadSampler::new();
            let mut failing = vec![false; sources.len()];
            // Which sources have listed once; the first inventory waits for all of them, or
            // for FIRST_LISTING_WAIT when one keeps failing.
            let mut ever = vec![false; sources.len()];
            let started = tokio::time::Instant::now();
            let mut load_failing = false;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let poked = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => false,
                    _ = poke.notified() => true,
                };
                let previous = owned
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                let now = collect(&sources, &previous, &mut failing).await;
                let skipped = now.skipped;
                let count = u32::try_from(now.sessions.len()).unwrap_or(u32::MAX);
                let was_listed = *listed_tx.borrow();
                for (e, f) in ever.iter_mut().zip(&failing) {
                    *e |= !f;
                }
                if !was_listed
                    && (ever.iter().all(|e| *e) || started.elapsed() >= FIRST_LISTING_WAIT)
                {
                    if !ever.iter().all(|e| *e) {
                        tracing::warn!(wait = ?FIRST_LISTING_WAIT, "a session source has not listed yet; reporting the others");
                    }
                    listed_tx.send_replace(true);
                    // Wakes the link even when the inventory is still the empty one.
                    sessions_tx.send_replace(Arc::new(now.sessions.clone()));
                } else if **sessions_tx.borrow() != now.sessions {
                    sessions_tx.send_replace(Arc::new(now.sessions.clone()));
                }
                *owned
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
                if poked {
                    continue;
                }
                match sampler.sample(count) {
                    Ok(mut r) => {
                        r.skipped_rows = skipped;
                        load_failing = false;
                        load_tx.send_replace(Some(r));
                    }
                    Err(e) => {
                        if !load_failing {
                            tracing::warn!(error = %e, "cannot read the host's load");
                            load_failing = true;
                        }
                    }
                }
            }
        });
    }
    let keys: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    spawn_key_sweeper(keys.clone(), shutdown.clone());
    let exec = Arc::new(HostExecutor {
        sources,
        owned,
        poke,
        keys,
    });
    let feeds = Feeds {
        load: load_rx,
        sessions: sessions_rx,
        listed: listed_rx,
    };
    tokio::spawn(link::run(params, feeds, exec, state_tx, shutdown));
    Ok(state_rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sources::SourceConfig;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_str().unwrap().to_owned()
    }

    /// A user whose own listing starts failing keeps the sessions last listed for them (the
    /// broker must not hear that they ended), and the others' are listed as usual.
    #[tokio::test]
    async fn a_user_whose_listing_fails_keeps_their_last_known_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sudo = script(
            d,
            "sudo",
            "#!/bin/sh\nSB_USER=\"$3\"; export SB_USER; shift 4\nexec \"$@\"\n",
        );
        let xpra = script(
            d,
            "xpra",
            &format!(
                "#!/bin/sh\n[ \"$1\" = list ] || exit 1\n\
                 if [ \"$SB_USER\" = broken ] && [ -e {fail:?} ]; then exit 1; fi\n\
                 n=100; [ \"$SB_USER\" = broken ] && n=200\n\
                 printf 'Found the following xpra sessions:\\n/home/%s/.xpra:\\n\\tLIVE session at :%s\\n' \"$SB_USER\" \"$n\"\n",
                fail = d.join("fail").display().to_string()
            ),
        );
        let sources = vec![Source::new(SourceConfig::Xpra {
            xpra,
            sudo,
            pkill: "/bin/false".into(),
            users: Some(vec!["broken".into(), "sbxpra".into()]),
            runtime_dir: "/nonexistent".into(),
            getent: "getent".into(),
        })];
        let mut failing = vec![false];
        let first = collect(&sources, &Owned::default(), &mut failing).await;
        let ids = |o: &Owned| o.sessions.keys().cloned().collect::<Vec<_>>();
        assert_eq!(ids(&first), [":100", ":200"]);
        assert_eq!(first.skipped, 0);
        std::fs::write(d.join("fail"), "").unwrap();
        let second = collect(&sources, &first, &mut failing).await;
        assert_eq!(ids(&second), [":100", ":200"], "broken's session stands");
        assert_eq!(second.sessions[":200"].user, "broken");
        assert_eq!(second.skipped, 1);
        assert!(!failing[0], "the source as a whole did not fail");
    }
}
