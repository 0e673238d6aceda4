//! The X2Go broker frontend: `POST /plain/` (X2Go Client) and `POST /json/` (python3-x2go,
//! pyhoca-cli) on the broker's HTTP listener, speaking x2gobroker's protocol
//! (`switchboard_proto::x2go` has the formats).
//!
//! What differs from x2gobroker, on purpose:
//! - the backend path segment is matched against `inifile` and `zeroconf` (both serve the
//!   configured profiles); anything else is 404 and is never evaluated;
//! - passwords are checked by [`switchboard_auth`] off the request path, with per-source failure
//!   delays; AUTHIDs are random, single-use, rotating, address-bound, expiring and bounded;
//! - `login=` must be the authenticated user unless `[x2go] login_map` allows it;
//! - ACLs are enforced on `selectsession` too; a hidden profile looks exactly like an unknown one;
//! - placement goes through the engine: resume first (the agents report X2Go's sessions), a
//!   running session is suspended through its agent (bounded wait, nobody else waits), otherwise
//!   the profile's placement policy;
//! - autologin keys are installed by the host's agent with an expiry and removed after first use
//!   or `autologin_key_ttl`;
//! - `testcon` needs no credentials and answers `Access granted` (X2Go Client's connection test
//!   works); GET is refused (passwords never travel in URLs).

use crate::agents::AgentHub;
use crate::engine::{EngineError, EngineHandle};
use crate::sync::lock;
use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use switchboard_auth::authid::AuthIds;
use switchboard_auth::{AuthError, Authenticator, Settings, printable, valid_user};
use switchboard_core::{CoreError, PlacementOutcome, SessionState};
use switchboard_proto::agent::Action;
use switchboard_proto::x2go::{self as wire, Form, Profile, Selected, dialect};
use switchboard_store::SqlStore;
use tokio::time::Instant;

/// Which dialect a request speaks (the wire details are `switchboard_proto::x2go::dialect`).
pub use switchboard_proto::x2go::dialect::Dialect as Proto;

/// The X2Go frontend's settings and profiles.
#[derive(Debug, Clone, PartialEq)]
pub struct X2goConfig {
    /// The profiles file.
    pub profiles_path: PathBuf,
    /// Its profiles, sorted by id (each is also a pool in [`Config::pools`]).
    pub profiles: Arc<Vec<Profile>>,
    /// Whether each profile (same order) hands out autologin keys.
    pub autologin: Arc<Vec<bool>>,
    /// Each profile's `/plain/` listing (same order), rendered when the file was loaded.
    pub listings: Arc<Vec<switchboard_proto::x2go::PlainListing>>,
    /// AUTHID chain lifetime.
    pub token_ttl: Duration,
    /// AUTHIDs bound to their address.
    pub bind_to_address: bool,
    /// Most live AUTHIDs.
    pub max_tokens: usize,
    /// Extra logins per broker user.
    pub login_map: BTreeMap<String, Vec<String>>,
    /// Primary groups count for group ACLs.
    pub primary_groups: bool,
    /// Autologin key lifetime when unused.
    pub autologin_key_ttl: Duration,
    /// Wait for an agent to suspend a running session.
    pub suspend_timeout: Duration,
    /// With `[auth] method = "none"`: the header a trusted proxy names the user in
    /// (`[auth] user_header`); without it, `none` takes the request's user (loopback only).
    pub user_header: Option<axum::http::HeaderName>,
}

impl X2goConfig {
    /// Whether broker user `user` may ask for X2Go server login `login`.
    pub fn may_login(&self, user: &str, login: &str) -> bool {
        user == login
            || self
                .login_map
                .get(user)
                .is_some_and(|l| l.iter().any(|x| x == login || x == "*"))
    }
}

/// Default AUTHID chain lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(36_000);
/// Default autologin key lifetime.
pub const DEFAULT_AUTOLOGIN_KEY_TTL: Duration = Duration::from_secs(60);
/// Default wait for an agent to suspend a session.
pub const DEFAULT_SUSPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Backends a URL may name (x2gobroker's; both serve the configured profiles).
pub const BACKENDS: &[&str] = &["inifile", "zeroconf"];

/// What the frontend runs with; replaced whole on reload.
#[derive(Debug)]
struct Frontend {
    cfg: X2goConfig,
    by_id: HashMap<String, usize>,
    auth: Authenticator,
    ids: AuthIds,
    needs_groups: bool,
}

/// Most autologin keys waiting for their first use per login and host.
pub const MAX_PENDING_KEYS: usize = 4;
/// Most RSA key pairs generated at once.
pub const MAX_KEYGEN: usize = 2;

/// The X2Go frontend. Cheap to clone.
#[derive(Clone, Debug)]
pub struct X2go {
    current: Arc<ArcSwap<Option<Frontend>>>,
    engine: EngineHandle,
    agents: AgentHub,
    store: Arc<SqlStore>,
    /// Autologin keys installed and not yet removed, by (login, host).
    pending: Arc<std::sync::Mutex<HashMap<(String, String), usize>>>,
    /// What keeps client events from filling the store.
    events: Arc<EventLimit>,
    keygen: Arc<tokio::sync::Semaphore>,
}

fn frontend(cfg: X2goConfig, auth: Authenticator, ids: AuthIds) -> Frontend {
    let by_id = cfg
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| (p.id.clone(), i))
        .collect();
    let needs_groups = cfg.profiles.iter().any(|p| p.acl.needs_groups());
    Frontend {
        cfg,
        by_id,
        auth,
        ids,
        needs_groups,
    }
}

impl X2go {
    /// The frontend for `cfg`, authenticating by `method`.
    /// The frontend for `cfg`, checking passwords with `auth` (shared with the dashboard: one
    /// PAM pool and one failure record per source for both).
    pub fn new(
        cfg: X2goConfig,
        auth: Authenticator,
        engine: EngineHandle,
        agents: AgentHub,
        store: Arc<SqlStore>,
    ) -> X2go {
        let ids = AuthIds::new(cfg.token_ttl, cfg.bind_to_address, cfg.max_tokens);
        let fe = frontend(cfg, auth, ids);
        X2go {
            current: Arc::new(ArcSwap::from_pointee(Some(fe))),
            engine,
            agents,
            store,
            pending: Arc::new(std::sync::Mutex::new(HashMap::new())),
            keygen: Arc::new(tokio::sync::Semaphore::new(MAX_KEYGEN)),
            events: Arc::new(EventLimit::new()),
        }
    }

    /// Applies a reloaded configuration. Live AUTHIDs and failure counts survive unless the
    /// token settings or the method changed. Without `[x2go]` the routes answer 404.
    pub fn reload(&self, cfg: Option<X2goConfig>, method: Option<Settings>) {
        let old = self.current.load();
        let new = match (cfg, method) {
            (Some(cfg), Some(method)) => {
                let (auth, ids) = match &**old {
                    Some(o) => {
                        let auth = if *o.auth.settings() == method {
                            o.auth.clone()
                        } else {
                            Authenticator::new(method)
                        };
                        let ids = if (o.cfg.token_ttl, o.cfg.bind_to_address, o.cfg.max_tokens)
                            == (cfg.token_ttl, cfg.bind_to_address, cfg.max_tokens)
                        {
                            o.ids.clone()
                        } else {
                            AuthIds::new(cfg.token_ttl, cfg.bind_to_address, cfg.max_tokens)
                        };
                        (auth, ids)
                    }
                    None => (
                        Authenticator::new(method),
                        AuthIds::new(cfg.token_ttl, cfg.bind_to_address, cfg.max_tokens),
                    ),
                };
                Some(frontend(cfg, auth, ids))
            }
            _ => None,
        };
        self.current.store(Arc::new(new));
    }

    /// The `[auth] user_header` of the configuration in force, if any.
    pub fn user_header(&self) -> Option<axum::http::HeaderName> {
        self.current
            .load()
            .as_ref()
            .as_ref()?
            .cfg
            .user_header
            .clone()
    }

    /// Answers one request.
    /// `proxied`: the user named by `[auth] user_header`, when a trusted proxy sent it.
    pub async fn handle(
        &self,
        proto: Proto,
        backend: Option<&str>,
        client: IpAddr,
        proxied: Option<&str>,
        body: &Bytes,
    ) -> Response {
        let guard = self.current.load_full();
        let Some(fe) = guard.as_ref().as_ref() else {
            return html(StatusCode::NOT_FOUND);
        };
        if let Some(b) = backend
            && !BACKENDS.contains(&b)
        {
            return html(StatusCode::NOT_FOUND);
        }
        let form = match wire::parse_form(body) {
            Ok(f) => f,
            Err(e) => return bad_request(&e),
        };
        if form.task == "testcon" {
            return ok(proto, proto.testcon().to_owned());
        }
        let (user, authid) = match self.authenticate(fe, &form, client, proxied).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let authid = authid.as_deref();
        match form.task.as_str() {
            "listsessions" | "listprofiles" => {
                let list = self.profile_list(fe, &user, client).await;
                fn session(s: &Option<(String, char)>) -> Option<(&str, char)> {
                    s.as_ref().map(|(h, c)| (h.as_str(), *c))
                }
                let body = match proto {
                    Proto::Plain => wire::plain_list_rendered(
                        authid,
                        &user,
                        list.iter().map(|(i, s)| (&fe.cfg.listings[*i], session(s))),
                    ),
                    Proto::Json => {
                        let items: Vec<(&str, Vec<(String, wire::Value)>)> = list
                            .iter()
                            .map(|(i, s)| {
                                let p = &fe.cfg.profiles[*i];
                                let keys =
                                    p.for_user(&user, session(s), fe.cfg.autologin[*i], true);
                                (p.id.as_str(), keys)
                            })
                            .collect();
                        wire::json_list(authid, &items)
                    }
                };
                ok(proto, body)
            }
            "selectsession" => self.select(fe, &form, &user, client, proto, authid).await,
            task => {
                if task == "clientevent" {
                    self.client_event(&user, client, &form);
                }
                ok(
                    proto,
                    match proto {
                        Proto::Plain => wire::plain_head(authid),
                        Proto::Json => wire::json_plain_reply(authid, task),
                    },
                )
            }
        }
    }

    /// Checks the request's credentials: an AUTHID if one is sent, else the password. Returns
    /// the user (the authenticator's canonical name) and the next AUTHID (none with `[auth]
    /// method = "none"`).
    async fn authenticate(
        &self,
        fe: &Frontend,
        form: &Form,
        client: IpAddr,
        proxied: Option<&str>,
    ) -> Result<(String, Option<String>), Response> {
        if !valid_user(&form.user) {
            tracing::info!(%client, "x2go: request without a usable user name");
            return Err(html(StatusCode::UNAUTHORIZED));
        }
        if !fe.auth.checks() {
            // `none`: the user is whoever the request says (a loopback listener, see the
            // config check), or, with `user_header`, whom the trusted proxy signed in.
            return match (&fe.cfg.user_header, proxied) {
                (None, _) => Ok((form.user.clone(), None)),
                (Some(_), Some(u)) if u == form.user => Ok((form.user.clone(), None)),
                (Some(h), p) => {
                    tracing::info!(user = %printable(&form.user), %client, header = %h, proxied = p.is_some(), "x2go: refused: method none takes the user from the trusted proxy's header only");
                    Err(html(StatusCode::UNAUTHORIZED))
                }
            };
        }
        // From here on the user is the authenticator's canonical name (NSS's for PAM), never
        // an alias the client typed: ACLs, login_map, limits and sessions all see that one.
        let (user, origin) = if form.authid.is_empty() {
            match fe.auth.verify(&form.user, &form.password, client).await {
                Ok(canonical) => (canonical, Instant::now()),
                Err(AuthError::Denied) => return Err(html(StatusCode::UNAUTHORIZED)),
                Err(AuthError::Unavailable(_)) => {
                    return Err(html(StatusCode::SERVICE_UNAVAILABLE));
                }
                Err(AuthError::Busy) => return Err(busy()),
            }
        } else {
            match fe.ids.redeem(&form.authid, &form.user, client) {
                Ok(r) => (r.user.to_string(), r.origin),
                Err(e) => {
                    // Tokens are 122 random bits: guessing needs no delay to be hopeless.
                    tracing::info!(user = %printable(&form.user), %client, reason = %e, "x2go: AUTHID refused");
                    return Err(html(StatusCode::UNAUTHORIZED));
                }
            }
        };
        match fe.ids.issue_as(&user, &form.user, client, origin) {
            Ok(t) => Ok((user, Some(t))),
            Err(e) => {
                tracing::error!(error = %e, "x2go: cannot issue an AUTHID");
                Err(html(StatusCode::SERVICE_UNAVAILABLE))
            }
        }
    }

    /// The profiles `user` at `client` may see (their indexes), each with the user's live
    /// session there, if any (a disconnected one first): its host and `R` or `S`.
    async fn profile_list(
        &self,
        fe: &Frontend,
        user: &str,
        client: IpAddr,
    ) -> Vec<(usize, Option<(String, char)>)> {
        let groups = self.groups(fe, user).await;
        let visible: Vec<(usize, &Profile)> = fe
            .cfg
            .profiles
            .iter()
            .enumerate()
            .filter(|(_, p)| allowed(p, user, groups.as_deref(), client))
            .collect();
        // The user's live sessions by host, from the engine.
        let u = user.to_owned();
        let sessions: Vec<(String, SessionState)> = self
            .engine
            .query(move |s| {
                s.sessions_of_user(&u)
                    .into_iter()
                    .filter(|r| {
                        matches!(r.state, SessionState::Running | SessionState::Disconnected)
                    })
                    .map(|r| (r.host.to_string(), r.state))
                    .collect()
            })
            .await
            .unwrap_or_default();
        visible
            .into_iter()
            .map(|(i, p)| {
                let mut found: Option<(String, char)> = None;
                for (host, state) in &sessions {
                    if p.hosts.iter().any(|h| &h.name == host) {
                        let c = if *state == SessionState::Disconnected {
                            'S'
                        } else {
                            'R'
                        };
                        if found.is_none() || c == 'S' {
                            found = Some((host.clone(), c));
                        }
                    }
                }
                (i, found)
            })
            .collect()
    }

    /// The user's groups, when some profile has group rules. `None` when the lookup failed:
    /// profiles with group rules are then refused (fail closed).
    async fn groups(&self, fe: &Frontend, user: &str) -> Option<Vec<String>> {
        if !fe.needs_groups {
            return Some(Vec::new());
        }
        match switchboard_auth::groups::lookup(user, fe.cfg.primary_groups).await {
            Ok(g) => Some(g.to_vec()),
            Err(e) => {
                tracing::error!(error = %e, "x2go: group lookup failed; profiles with group rules are refused");
                None
            }
        }
    }

    async fn select(
        &self,
        fe: &Frontend,
        form: &Form,
        user: &str,
        client: IpAddr,
        proto: Proto,
        authid: Option<&str>,
    ) -> Response {
        let reply = |sel: &Selected| {
            ok(
                proto,
                match proto {
                    Proto::Plain => wire::plain_select(authid, sel),
                    Proto::Json => wire::json_select(authid, sel),
                },
            )
        };
        if form.profile.is_empty() {
            return ok(
                proto,
                match proto {
                    Proto::Plain => wire::plain_head(authid),
                    Proto::Json => wire::json_plain_reply(authid, "selectsession"),
                },
            );
        }
        let none = Selected {
            server: wire::NO_SERVER.into(),
            port: 22,
            ..Selected::default()
        };
        let Some(&idx) = fe.by_id.get(&form.profile) else {
            tracing::info!(user = %printable(user), profile = %printable(&form.profile), "x2go: select of an unknown profile");
            return reply(&none);
        };
        let profile = &fe.cfg.profiles[idx];
        let groups = self.groups(fe, user).await;
        if !allowed(profile, user, groups.as_deref(), client) {
            tracing::warn!(user = %printable(user), %client, profile = %profile.id, "x2go: select refused by the profile's ACL");
            return reply(&none);
        }
        // The login the client asks for is its own typed name unless it says otherwise: that
        // is the canonical user.
        let login = if form.login() == form.user {
            user
        } else {
            form.login()
        };
        if !valid_user(login) {
            return bad_request("login is not a user name");
        }
        if !fe.cfg.may_login(user, login) {
            tracing::warn!(user = %printable(user), login = %printable(login), %client, "x2go: login not allowed for this user ([x2go] login_map)");
            return html(StatusCode::FORBIDDEN);
        }
        let pubkey = if fe.cfg.autologin[idx] && !form.pubkey.is_empty() {
            match wire::check_pubkey(&form.pubkey) {
                Ok(k) => Some(k),
                Err(e) => return bad_request(&e),
            }
        } else {
            None
        };
        let sshport = profile.hosts.first().map_or(22, |h| h.address.port);
        let p = match self
            .engine
            .place(login.to_owned(), profile.id.clone(), Some(client))
            .await
        {
            Ok(p) => p,
            Err(EngineError::Core(CoreError::NoHostAvailable { excluded, .. })) => {
                tracing::warn!(profile = %profile.id, login = %printable(login), %excluded, "x2go: no host available");
                let server = if profile.hosts.len() > 1 {
                    wire::NO_X2GO_SERVER
                } else {
                    wire::NO_SERVER
                };
                return reply(&Selected {
                    server: server.into(),
                    port: sshport,
                    ..Selected::default()
                });
            }
            Err(EngineError::Core(e @ CoreError::UserLimit { .. })) => {
                tracing::warn!(profile = %profile.id, login = %printable(login), error = %e, "x2go: refused by max_sessions_per_user");
                return reply(&none);
            }
            Err(e) => {
                tracing::error!(error = %e, "x2go: placement failed");
                return html(StatusCode::SERVICE_UNAVAILABLE);
            }
        };
        tracing::info!(user = %p.user, pool = %p.pool, host = %p.host, id = p.id.0, reason = %p.reason, "x2go: placed");
        let entry = profile.hosts.iter().find(|h| *h.name == *p.host);
        let server = match (proto, entry) {
            (Proto::Plain, Some(h)) => h.plain_server(),
            (Proto::Plain, None) => match p.address.host {
                switchboard_core::config::Host::Ip(IpAddr::V6(_)) => p.host.to_string(),
                _ => p.address.host_str(),
            },
            (Proto::Json, _) => p.address.host_str(),
        };
        let mut sel = Selected {
            server,
            port: p.address.port,
            ..Selected::default()
        };
        if let PlacementOutcome::Resumed(state) = p.outcome
            && let Some(backend) = &p.backend_id
        {
            let info = self.agents.session_info(&p.host, backend);
            if state == SessionState::Running {
                // Suspend it so this client can take it over; only this request waits.
                let r = self
                    .agents
                    .command(
                        &p.host,
                        Action::Disconnect {
                            backend_id: backend.to_string(),
                        },
                        fe.cfg.suspend_timeout,
                    )
                    .await;
                sel.session_info = match &r {
                    Ok(_) => info.map(|i| wire::as_suspended(&i)),
                    Err(e) => {
                        // The client is told the truth: the session is still running.
                        tracing::warn!(host = %p.host, session = %backend, error = %e, "x2go: could not suspend the running session");
                        info
                    }
                };
            } else {
                sel.session_info = info;
            }
        }
        if fe.cfg.autologin[idx] {
            match self
                .install_key(fe, &p.host, login, pubkey.is_some(), pubkey)
                .await
            {
                Ok(Some(private)) => sel.key = Some(private),
                Ok(None) => sel.pubkey_accepted = true,
                Err(e) => {
                    tracing::warn!(host = %p.host, login = %printable(login), error = %e, "x2go: autologin key not installed; the client will ask for a password");
                }
            }
        }
        reply(&sel)
    }

    /// Installs an autologin key for `login` on `host` through its agent: the client's public key,
    /// or a new RSA key pair whose private half is returned. The key is removed after its first
    /// use (a running session of `login` on `host` appears) or after `autologin_key_ttl`.
    async fn install_key(
        &self,
        fe: &Frontend,
        host: &str,
        login: &str,
        client_key: bool,
        pubkey: Option<String>,
    ) -> Result<Option<String>, String> {
        // Nobody could install it; and each key costs an RSA generation and an agent command,
        // so a login has a few waiting for their first use at most.
        if !self.agents.is_connected(host) {
            return Err("the host's agent is not linked".into());
        }
        let slot = (login.to_owned(), host.to_owned());
        {
            let mut p = lock(&self.pending);
            let n = p.entry(slot.clone()).or_default();
            if *n >= MAX_PENDING_KEYS {
                return Err(format!(
                    "{MAX_PENDING_KEYS} keys for this login and host are already waiting for use"
                ));
            }
            *n += 1;
        }
        let r = self
            .make_and_install(fe, host, login, client_key, pubkey)
            .await;
        if r.is_err() {
            self.release_slot(&slot);
        }
        r
    }

    fn release_slot(&self, slot: &(String, String)) {
        let mut p = lock(&self.pending);
        if let Some(n) = p.get_mut(slot) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                p.remove(slot);
            }
        }
    }

    async fn make_and_install(
        &self,
        fe: &Frontend,
        host: &str,
        login: &str,
        client_key: bool,
        pubkey: Option<String>,
    ) -> Result<Option<String>, String> {
        let (public, private) = match pubkey {
            Some(k) => (k, None),
            None => {
                let _permit = self.keygen.acquire().await.map_err(|e| e.to_string())?;
                let (public, private) = tokio::task::spawn_blocking(keys::generate)
                    .await
                    .map_err(|e| e.to_string())??;
                (public, Some(private))
            }
        };
        let ttl = fe.cfg.autologin_key_ttl;
        // Listening before the key exists: its first use cannot come before we hear of it.
        let running = self.engine.subscribe_running();
        let expires_at_ms = switchboard_core::Millis::now_wall()
            .0
            .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        self.agents
            .command(
                host,
                Action::AddKey {
                    user: login.to_owned(),
                    key: public.clone(),
                    expires_at_ms,
                },
                Duration::from_secs(5),
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(host, login = %printable(login), client_key, "x2go: autologin key installed");
        self.spawn_key_removal(host.to_owned(), login.to_owned(), public, ttl, running);
        Ok(private)
    }

    /// Removes the key once `running` announces a running session of `login` on `host` (the
    /// key's first use), or once `ttl` passes unused.
    fn spawn_key_removal(
        &self,
        host: String,
        login: String,
        key: String,
        ttl: Duration,
        mut running: tokio::sync::broadcast::Receiver<crate::engine::SessionRunning>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let used = first_use(&host, &login, ttl, &mut running).await;
            let r = this
                .agents
                .command(
                    &host,
                    Action::RemoveKey {
                        user: login.clone(),
                        key,
                    },
                    Duration::from_secs(10),
                )
                .await;
            this.release_slot(&(login.clone(), host.clone()));
            match r {
                Ok(_) => {
                    tracing::info!(host, login = %printable(&login), used, "x2go: autologin key removed")
                }
                Err(e) => {
                    tracing::warn!(host, login = %printable(&login), error = %e, "x2go: autologin key not removed now; sshd refuses it after its expiry-time and the agent sweeps it")
                }
            }
        });
    }

    /// Records a client event in the audit log (off the request path).
    /// Audits a client event, within [`EventLimit`]: beyond it the event is answered as usual
    /// and counted, not written.
    fn client_event(&self, user: &str, client: IpAddr, form: &Form) {
        let Some(permit) = self.events.admit(user, client) else {
            metrics::counter!("switchboard_x2go_client_events_dropped_total").increment(1);
            return;
        };
        let event = form
            .event
            .iter()
            .find(|(k, _)| k == "event")
            .map_or("", |(_, v)| v.as_str());
        let mut target = format!("profile={}", printable(&form.profile));
        for (k, v) in &form.event {
            if k != "event" {
                target.push_str(&format!(" {k}={}", printable(v)));
            }
        }
        let store = self.store.clone();
        let actor = user.to_owned();
        let action = format!("clientevent {}", printable(event));
        tokio::spawn(async move {
            crate::audit::record(&store, &actor, "x2go", &action, &target, Ok(())).await;
            drop(permit);
        });
    }
}

/// Client events are audited at most [`EVENT_BURST`] at once and one every [`EVENT_EVERY`] after
/// that, per user and source address, and at most [`EVENT_WRITES`] writes at a time: an X2Go
/// client sends a handful per session, and a user who sends thousands must not fill the audit
/// log or keep the store from the engine's commits.
pub const EVENT_BURST: u32 = 10;
/// See [`EVENT_BURST`].
pub const EVENT_EVERY: Duration = Duration::from_secs(2);
/// See [`EVENT_BURST`].
pub const EVENT_WRITES: usize = 16;
/// Most (user, source) pairs remembered; a full table forgets the pairs whose allowance is whole.
const EVENT_KEYS: usize = 65_536;

#[derive(Debug)]
struct EventLimit {
    /// (user, source) → (events allowed now, when that was counted).
    buckets: std::sync::Mutex<HashMap<(String, IpAddr), (u32, Instant)>>,
    writes: Arc<tokio::sync::Semaphore>,
}

impl EventLimit {
    fn new() -> EventLimit {
        EventLimit {
            buckets: std::sync::Mutex::new(HashMap::new()),
            writes: Arc::new(tokio::sync::Semaphore::new(EVENT_WRITES)),
        }
    }

    /// A write permit for one event of `user` from `client`, or `None` when over the limit.
    fn admit(&self, user: &str, client: IpAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let now = Instant::now();
        let refill = |(left, at): (u32, Instant)| {
            let earned = now.duration_since(at).as_millis() / EVENT_EVERY.as_millis().max(1);
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            if earned == 0 {
                (left, at)
            } else {
                (left.saturating_add(earned).min(EVENT_BURST), now)
            }
        };
        {
            let mut b = crate::sync::lock(&self.buckets);
            if b.len() >= EVENT_KEYS {
                b.retain(|_, v| refill(*v).0 < EVENT_BURST);
                if b.len() >= EVENT_KEYS {
                    b.clear();
                }
            }
            let entry = b
                .entry((user.to_owned(), client))
                .or_insert((EVENT_BURST, now));
            let (left, at) = refill(*entry);
            if left == 0 {
                *entry = (0, at);
                return None;
            }
            *entry = (left - 1, at);
        }
        self.writes.clone().try_acquire_owned().ok()
    }
}

/// Whether the profile's ACL lets `user` in; without groups (a failed lookup) a profile with
/// group rules is refused.
fn allowed(p: &Profile, user: &str, groups: Option<&[String]>, client: IpAddr) -> bool {
    match groups {
        Some(g) => p.acl.allows(user, g, client),
        None => !p.acl.needs_groups() && p.acl.allows(user, &[], client),
    }
}

fn ok(proto: Proto, body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(proto.content_type()),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An error page as tornado writes it (X2Go clients show it).
pub fn html(status: StatusCode) -> Response {
    let body = dialect::error_page(
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
    );
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(dialect::HTML),
    );
    r
}

/// The answer when sign-in is busy ([`AuthError::Busy`]): tornado's 503 page, as for a store
/// outage, with `Retry-After`.
fn busy() -> Response {
    let mut r = html(StatusCode::SERVICE_UNAVAILABLE);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(switchboard_auth::BUSY_RETRY_AFTER),
    );
    r
}

fn bad_request(message: &str) -> Response {
    let mut r = (StatusCode::BAD_REQUEST, dialect::bad_request(message)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(dialect::TEXT),
    );
    r
}

/// The answer to GET on the X2Go paths: credentials never travel in URLs.
pub fn get_refused(_headers: HeaderMap) -> Response {
    let mut r = html(StatusCode::METHOD_NOT_ALLOWED);
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

/// Autologin key pairs.
pub mod keys {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;

    fn put_string(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(b);
    }

    fn put_mpint(out: &mut Vec<u8>, be: &[u8]) {
        let trimmed: &[u8] = {
            let start = be.iter().position(|b| *b != 0).unwrap_or(be.len());
            &be[start..]
        };
        if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
            let mut v = Vec::with_capacity(trimmed.len() + 1);
            v.push(0);
            v.extend_from_slice(trimmed);
            put_string(out, &v);
        } else {
            put_string(out, trimmed);
        }
    }

    /// A new RSA-2048 key pair: the OpenSSH public key line and the private key as traditional
    /// PEM (`BEGIN RSA PRIVATE KEY`), the only form X2Go Client 4.1 reads.
    pub fn generate() -> Result<(String, String), String> {
        use base64::Engine;
        let mut rng = rsa::rand_core::OsRng;
        let key = rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| e.to_string())?;
        let pem = key
            .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
            .map_err(|e| e.to_string())?;
        let mut blob = Vec::new();
        put_string(&mut blob, b"ssh-rsa");
        put_mpint(&mut blob, &key.e().to_bytes_be());
        put_mpint(&mut blob, &key.n().to_bytes_be());
        let public = format!(
            "ssh-rsa {} switchboard-autologin",
            base64::engine::general_purpose::STANDARD.encode(blob)
        );
        Ok((public, pem.to_string()))
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]

        #[test]
        fn a_generated_pair_is_a_valid_public_line_and_pkcs1_pem() {
            let (public, private) = super::generate().unwrap();
            assert!(private.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
            assert!(
                private
                    .trim_end()
                    .ends_with("-----END RSA PRIVATE KEY-----")
            );
            let checked = switchboard_proto::x2go::check_pubkey(&public).unwrap();
            assert_eq!(checked, public);
        }
    }
}

/// Waits for the first use of an autologin key: `true` once `running` announces a running
/// session of `login` on `host`, `false` once `ttl` passes without one (or the news stops).
async fn first_use(
    host: &str,
    login: &str,
    ttl: Duration,
    running: &mut tokio::sync::broadcast::Receiver<crate::engine::SessionRunning>,
) -> bool {
    use tokio::sync::broadcast::error::RecvError;
    let deadline = tokio::time::sleep(ttl);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return false,
            news = running.recv() => match news {
                Ok(s) if *s.host == *host && *s.user == *login => return true,
                Ok(_) => {}
                // Too much news at once to keep up: the key stays until its TTL, as it would
                // without a login.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return false,
            },
        }
    }
}

// ----- routes -----

use super::{AppState, client_ip};
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::routing::post;
use std::net::SocketAddr;

/// What the X2Go routes serve with.
#[derive(Clone)]
struct App {
    x2go: X2go,
    trusted_proxies: Arc<Vec<IpAddr>>,
}

async fn serve(
    app: &App,
    proto: Proto,
    backend: Option<&str>,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let client = client_ip(peer.ip(), headers, &app.trusted_proxies);
    // The user header counts only from a trusted proxy: anyone else could send it.
    let proxied = app
        .x2go
        .user_header()
        .filter(|_| app.trusted_proxies.contains(&peer.ip()))
        .and_then(|h| headers.get(&h)?.to_str().ok().map(str::to_owned))
        .filter(|u| valid_user(u));
    app.x2go
        .handle(proto, backend, client, proxied.as_deref(), body)
        .await
}

macro_rules! handlers {
    ($root:ident, $one:ident, $rest:ident, $proto:expr) => {
        async fn $root(
            State(app): State<App>,
            ConnectInfo(peer): ConnectInfo<SocketAddr>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            serve(&app, $proto, None, peer, &headers, &body).await
        }

        async fn $one(
            State(app): State<App>,
            ConnectInfo(peer): ConnectInfo<SocketAddr>,
            Path(backend): Path<String>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            serve(&app, $proto, Some(&backend), peer, &headers, &body).await
        }

        async fn $rest(
            State(app): State<App>,
            ConnectInfo(peer): ConnectInfo<SocketAddr>,
            Path((backend, _rest)): Path<(String, String)>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Response {
            serve(&app, $proto, Some(&backend), peer, &headers, &body).await
        }
    };
}

handlers!(plain_root, plain_one, plain_rest, Proto::Plain);
handlers!(json_root, json_one, json_rest, Proto::Json);

async fn refused(headers: HeaderMap) -> Response {
    get_refused(headers)
}

/// The X2Go routes: `/plain/[BACKEND/[…]]` and `/json/[BACKEND/[…]]`, POST only.
pub fn routes(shared: AppState, x2go: X2go) -> Router {
    let app = App {
        x2go,
        trusted_proxies: shared.trusted_proxies,
    };
    Router::new()
        .route("/plain/", post(plain_root).get(refused))
        .route("/plain/{backend}", post(plain_one).get(refused))
        .route("/plain/{backend}/", post(plain_one).get(refused))
        .route("/plain/{backend}/{*rest}", post(plain_rest).get(refused))
        .route("/json/", post(json_root).get(refused))
        .route("/json/{backend}", post(json_one).get(refused))
        .route("/json/{backend}/", post(json_one).get(refused))
        .route("/json/{backend}/{*rest}", post(json_rest).get(refused))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{EVENT_BURST, EVENT_EVERY, EventLimit, first_use};
    use crate::engine::SessionRunning;
    use std::time::Duration;
    use tokio::sync::broadcast;

    fn news(user: &str, host: &str) -> SessionRunning {
        SessionRunning {
            user: user.into(),
            host: host.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_autologin_key_is_used_by_its_users_session_on_its_host() {
        let (tx, mut rx) = broadcast::channel(16);
        let wait = tokio::spawn(async move {
            first_use("h1", "alice", Duration::from_secs(120), &mut rx).await
        });
        // Let the wait start (and its TTL with it) before time moves.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(60)).await;
        tx.send(news("bob", "h1")).unwrap();
        tx.send(news("alice", "h2")).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            !wait.is_finished(),
            "another user's or host's session is not the key's use"
        );
        tx.send(news("alice", "h1")).unwrap();
        assert!(
            wait.await.unwrap(),
            "the user's session on the host uses the key"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_autologin_key_lapses_at_its_ttl_and_not_before() {
        let (tx, mut rx) = broadcast::channel::<SessionRunning>(16);
        let wait = tokio::spawn(async move {
            first_use("h1", "alice", Duration::from_secs(120), &mut rx).await
        });
        // Let the wait start (and its TTL with it) before time moves.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(!wait.is_finished(), "still waiting a second before the TTL");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!wait.await.unwrap(), "lapsed unused at the TTL");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn client_events_are_limited_per_user_and_source() {
        let l = EventLimit::new();
        let a: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        let mut kept = Vec::new();
        for _ in 0..EVENT_BURST {
            kept.push(l.admit("alice", a).expect("within the burst"));
            drop(kept.pop());
        }
        assert!(l.admit("alice", a).is_none(), "the burst is spent");
        assert!(l.admit("bob", a).is_some(), "another user has his own");
        assert!(l.admit("alice", b).is_some(), "another source has its own");
        tokio::time::advance(EVENT_EVERY - Duration::from_millis(1)).await;
        assert!(l.admit("alice", a).is_none(), "not yet earned");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(l.admit("alice", a).is_some(), "one every interval");
        assert!(l.admit("alice", a).is_none());
        tokio::time::advance(EVENT_EVERY * 100).await;
        for _ in 0..EVENT_BURST {
            assert!(l.admit("alice", a).is_some(), "refilled up to the burst");
        }
        assert!(l.admit("alice", a).is_none(), "and no further");
    }

    #[tokio::test(start_paused = true)]
    async fn client_event_writes_in_flight_are_bounded() {
        let l = EventLimit::new();
        let held: Vec<_> = (0..super::EVENT_WRITES)
            .map(|i| {
                let ip = std::net::IpAddr::from([127, 0, 1, i as u8]);
                l.admit("alice", ip).expect("a write slot")
            })
            .collect();
        assert!(
            l.admit("alice", "127.0.2.1".parse().unwrap()).is_none(),
            "no more writes at once than the limit"
        );
        drop(held);
        assert!(l.admit("alice", "127.0.2.1".parse().unwrap()).is_some());
    }
}
