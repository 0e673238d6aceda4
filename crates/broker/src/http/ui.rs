//! The web dashboard under `/ui/` on the broker's HTTP listener (`/` redirects there).
//!
//! Server-rendered with askama (HTML-escaped templates in `templates/ui/`) and htmx 2 (vendored
//! in `assets/`, no JavaScript build step): the page polls fragments (`/ui/part/hosts` every 2 s,
//! the others every 5 s) and actions are htmx POSTs that ask for confirmation first.
//!
//! Sign-in: a read-write API token, or, when `[auth]` is configured and `[ui] admin_group` is set,
//! the password of a member of that group (checked like X2Go logins, with the same per-address
//! failure delays). A sign-in makes a server-side session (random id in an `HttpOnly`,
//! `SameSite=Strict` cookie, `Secure` on HTTPS, 12 hours) with its own CSRF token, which every
//! action must carry (`X-CSRF-Token` header, or a `csrf` form field). Every action is audited with
//! surface `ui` and the signed-in name.
//!
//! Load sparklines: a sampler keeps each host's last 60 one-minute load averages, one every 2 s.

use super::{AppState, client_ip};
use crate::actions::hosts::AdminChange;
use crate::actions::{ActionError, Actor, Surface, Termination};
use crate::sync::lock;
use crate::web::html::escape;
use crate::web::signin::{self, Cookie, SignIns};
use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard_auth::{AuthError, Authenticator, printable, secret};
use switchboard_core::SessionId;
use switchboard_proto::mgmt::Target;
use switchboard_store::Store;
use tokio_util::sync::CancellationToken;

/// How long a dashboard sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most dashboard sign-ins at once (the oldest go first).
pub const MAX_SESSIONS: usize = 10_000;
/// Load samples kept per host for its sparkline.
pub const SAMPLES: usize = 60;
/// Time between load samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Most sessions one sessions fragment shows.
pub const MAX_ROWS: usize = 500;

const COOKIE: &str = "sb_ui";
const HTMX: &[u8] = include_bytes!("../../assets/htmx-2.0.11.min.js");
const STYLE: &[u8] = include_bytes!("../../assets/style.css");

#[derive(Debug, Clone)]
struct UiSession {
    who: String,
    csrf: String,
    /// For token sign-ins, the token's hash: the session ends when the token is revoked.
    token_hash: Option<String>,
}

/// The dashboard's state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ui {
    sessions: Arc<Mutex<SignIns<UiSession>>>,
    loads: Arc<Mutex<HashMap<String, VecDeque<f64>>>>,
    /// Members of this group may sign in with their password through `auth`.
    admin_group: Option<String>,
    auth: Option<Authenticator>,
    https: bool,
}

impl Ui {
    /// A dashboard; password sign-in needs both `auth` (not `none`) and `admin_group`.
    pub fn new(auth: Option<Authenticator>, admin_group: Option<String>, https: bool) -> Ui {
        Ui {
            sessions: Arc::new(Mutex::new(SignIns::new(SESSION_TTL, MAX_SESSIONS))),
            loads: Arc::new(Mutex::new(HashMap::new())),
            auth: auth.filter(Authenticator::checks),
            admin_group,
            https,
        }
    }

    fn password_login(&self) -> bool {
        self.auth.is_some() && self.admin_group.is_some()
    }

    /// Samples every host's load for the sparklines until `shutdown`.
    pub fn spawn_sampler(&self, engine: crate::engine::EngineHandle, shutdown: CancellationToken) {
        let loads = self.loads.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let snap = engine.snapshot();
                sample(&mut lock(&loads), &snap.hosts);
            }
        });
    }

    fn sign_in(&self, who: String, token_hash: Option<String>) -> Option<(String, String)> {
        // 256 random bits each; `None` when the system has no randomness to give.
        let sid = signin::new_secret(32).ok()?;
        let csrf = signin::new_secret(32).ok()?;
        lock(&self.sessions).insert(
            sid.clone(),
            UiSession {
                who,
                csrf: csrf.clone(),
                token_hash,
            },
        );
        Some((sid, csrf))
    }

    fn session(&self, headers: &HeaderMap) -> Option<(String, UiSession)> {
        let sid = self.cookie().read(headers)?;
        let s = lock(&self.sessions).get(&sid).cloned()?;
        Some((sid, s))
    }

    fn cookie(&self) -> Cookie {
        Cookie {
            name: COOKIE,
            path: "/ui",
            secure: self.https,
        }
    }

    fn spark(&self, host: &str) -> String {
        let l = lock(&self.loads);
        let Some(q) = l.get(host).filter(|q| !q.is_empty()) else {
            return String::new();
        };
        let max = q.iter().copied().fold(1.0f64, f64::max);
        let step = 120.0 / (SAMPLES as f64 - 1.0);
        let start = SAMPLES - q.len();
        q.iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    (start + i) as f64 * step,
                    23.0 - (v / max) * 22.0
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Appends each host's latest one-minute load to its samples and forgets hosts that are gone:
/// one pass over the snapshot (with 10,000 hosts, a scan of the snapshot per remembered host
/// cost the broker most of a core every two seconds).
fn sample(loads: &mut HashMap<String, VecDeque<f64>>, hosts: &[Arc<crate::snapshot::HostInfo>]) {
    let mut next = HashMap::with_capacity(hosts.len());
    for h in hosts {
        let (name, mut q) = loads
            .remove_entry(h.name.as_str())
            .unwrap_or_else(|| (h.name.clone(), VecDeque::new()));
        if let Some(load) = &h.load {
            if q.len() == SAMPLES {
                q.pop_front();
            }
            q.push_back(load.load_avg[0]);
        }
        if !q.is_empty() {
            next.insert(name, q);
        }
    }
    *loads = next;
}

fn form(body: &Bytes) -> HashMap<String, String> {
    form_urlencoded::parse(body)
        .take(32)
        .map(|(k, v)| (k.into_owned(), v.chars().take(4096).collect()))
        .collect()
}

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => {
            let mut r = Html(html).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn message(status: StatusCode, text: String) -> Response {
    (status, Html(escape(&text))).into_response()
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage<'a> {
    error: Option<&'a str>,
    password_login: bool,
    admin_group: &'a str,
}

#[derive(Template)]
#[template(path = "ui/dashboard.html")]
struct Dashboard<'a> {
    who: &'a str,
    csrf: &'a str,
}

struct HostRow {
    name: String,
    then_offline: bool,
    address: String,
    admin: String,
    health: String,
    excluded: Option<String>,
    weight: u32,
    sessions: u32,
    reservations: u32,
    spark: String,
    load: String,
}

#[derive(Template)]
#[template(path = "ui/hosts.html")]
struct HostsPart {
    hosts: Vec<HostRow>,
    window: String,
}

struct PoolRow {
    name: String,
    policy: String,
    hosts: String,
    eligible: u32,
    excluded: String,
}

#[derive(Template)]
#[template(path = "ui/pools.html")]
struct PoolsPart {
    pools: Vec<PoolRow>,
}

struct SessionRow {
    id: u64,
    user: String,
    host: String,
    pool: String,
    state: String,
    backend: String,
}

#[derive(Template)]
#[template(path = "ui/sessions.html")]
struct SessionsPart {
    sessions: Vec<SessionRow>,
    truncated: bool,
}

struct AuditRow {
    at: String,
    actor: String,
    surface: String,
    action: String,
    target: String,
    result: String,
}

#[derive(Template)]
#[template(path = "ui/audit.html")]
struct AuditPart {
    records: Vec<AuditRow>,
}

async fn root() -> Redirect {
    Redirect::to("/ui/")
}

async fn login_page(State(app): State<App>) -> Response {
    render(&LoginPage {
        error: None,
        password_login: app.ui.password_login(),
        admin_group: app.ui.admin_group.as_deref().unwrap_or(""),
    })
}

async fn login(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ui = &app.ui;
    let f = form(&body);
    let client = client_ip(peer.ip(), &headers, &app.trusted_proxies);
    let refuse = |m: &str| {
        let mut r = render(&LoginPage {
            error: Some(m),
            password_login: ui.password_login(),
            admin_group: ui.admin_group.as_deref().unwrap_or(""),
        });
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    };
    let token = f.get("token").map(|t| t.trim()).unwrap_or("");
    let token_hash = (!token.is_empty()).then(|| crate::tokens::hash(token));
    let who = if !token.is_empty() {
        match app.tokens.check(token) {
            Some(t) if t.access == crate::tokens::Access::ReadWrite => format!("token:{}", t.name),
            Some(_) => {
                return refuse("That token is read-only; the dashboard needs a read-write token.");
            }
            None => {
                tracing::info!(%client, "dashboard: unknown token");
                return refuse("Unknown token.");
            }
        }
    } else {
        let (Some(auth), Some(group)) = (&ui.auth, &ui.admin_group) else {
            return refuse("Sign in with an admin token.");
        };
        let user = f.get("user").map(|u| u.trim()).unwrap_or("");
        let password = f.get("password").map(String::as_str).unwrap_or("");
        // The authenticator's canonical name from here on.
        let user = match auth.verify(user, password, client).await {
            Ok(canonical) => canonical,
            Err(AuthError::Denied) => return refuse("Wrong user name or password."),
            Err(AuthError::Unavailable(_)) => {
                return refuse("Password sign-in is unavailable right now; use a token.");
            }
            Err(AuthError::Busy) => {
                let mut r = refuse("Too many sign-ins at once; try again in a few seconds.");
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(switchboard_auth::BUSY_RETRY_AFTER),
                );
                return r;
            }
        };
        let groups = match switchboard_auth::groups::lookup(&user, true).await {
            Ok(g) => g,
            Err(_) => return refuse("Group membership cannot be checked right now; use a token."),
        };
        if !groups.iter().any(|g| g == group) {
            tracing::warn!(user = %printable(&user), %client, group, "dashboard: sign-in refused, not in the admin group");
            return refuse("Not a dashboard administrator.");
        }
        user
    };
    let Some((sid, _)) = ui.sign_in(who.clone(), token_hash) else {
        return refuse("No randomness available for a session; try again.");
    };
    let store = app.store.clone();
    tokio::spawn(async move {
        crate::audit::record(&store, &who, "ui", "sign-in", "", Ok(())).await;
    });
    let mut r = Redirect::to("/ui/").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, ui.cookie().set(&sid, SESSION_TTL));
    r
}

/// The signed-in session, or the response to send instead (a redirect to the sign-in page for
/// pages, 401 for fragments and actions).
fn signed_in(app: &App, headers: &HeaderMap, page: bool) -> Result<UiSession, Box<Response>> {
    // A token sign-in lasts only as long as its token.
    let live = app.ui.session(headers).filter(|(sid, s)| {
        let ok = s.token_hash.as_deref().is_none_or(|h| {
            app.tokens
                .check_hash(h)
                .is_some_and(|t| t.access == crate::tokens::Access::ReadWrite)
        });
        if !ok {
            lock(&app.ui.sessions).remove(sid);
        }
        ok
    });
    match live {
        Some((_, s)) => Ok(s),
        None if page => Err(Box::new(Redirect::to("/ui/login").into_response())),
        None => {
            let mut r = message(
                StatusCode::UNAUTHORIZED,
                "Signed out: reload the page to sign in again.".into(),
            );
            r.headers_mut()
                .insert("HX-Redirect", HeaderValue::from_static("/ui/login"));
            Err(Box::new(r))
        }
    }
}

/// A signed-in session whose CSRF token the request carries.
fn authorised(app: &App, headers: &HeaderMap, body: &Bytes) -> Result<UiSession, Box<Response>> {
    let s = signed_in(app, headers, false)?;
    let presented = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| form(body).remove("csrf"));
    let ok = presented.is_some_and(|p| secret::ct_eq(p.as_bytes(), s.csrf.as_bytes()));
    if ok {
        Ok(s)
    } else {
        Err(Box::new(message(
            StatusCode::FORBIDDEN,
            "Missing or wrong CSRF token: reload the page.".into(),
        )))
    }
}

async fn logout(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    if let Ok(s) = authorised(&app, &headers, &body)
        && let Some((sid, _)) = app.ui.session(&headers)
    {
        lock(&app.ui.sessions).remove(&sid);
        let store = app.store.clone();
        tokio::spawn(async move {
            crate::audit::record(&store, &s.who, "ui", "sign-out", "", Ok(())).await;
        });
    }
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, app.ui.cookie().clear());
    r
}

async fn dashboard(State(app): State<App>, headers: HeaderMap) -> Response {
    match signed_in(&app, &headers, true) {
        Ok(s) => render(&Dashboard {
            who: &s.who,
            csrf: &s.csrf,
        }),
        Err(r) => *r,
    }
}

#[derive(Debug, serde::Deserialize)]
struct SessionFilter {
    user: Option<String>,
    host: Option<String>,
    pool: Option<String>,
}

async fn part(
    State(app): State<App>,
    Path(name): Path<String>,
    headers: HeaderMap,
    filter: Result<Query<SessionFilter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = signed_in(&app, &headers, false) {
        return *r;
    }
    match name.as_str() {
        "hosts" => {
            let snap = app.engine.snapshot();
            let hosts = snap
                .hosts
                .iter()
                .map(|h| HostRow {
                    name: h.name.clone(),
                    then_offline: h.then_offline,
                    address: format!("{}:{}", h.address, h.port),
                    admin: h.admin.clone(),
                    health: h.health.clone(),
                    excluded: h.excluded.clone(),
                    weight: h.weight,
                    sessions: h.sessions,
                    reservations: h.reservations,
                    spark: app.ui.spark(&h.name),
                    load: h
                        .load
                        .as_ref()
                        .map_or("-".into(), |l| format!("{:.2}", l.load_avg[0])),
                })
                .collect();
            render(&HostsPart {
                hosts,
                window: humantime::format_duration(SAMPLE_EVERY * SAMPLES as u32).to_string(),
            })
        }
        "pools" => {
            let snap = app.engine.snapshot();
            let pools = snap
                .pools
                .iter()
                .map(|p| PoolRow {
                    name: p.name.clone(),
                    policy: p.policy.clone(),
                    hosts: p.hosts.join(", "),
                    eligible: p.eligible,
                    excluded: p
                        .excluded
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
                .collect();
            render(&PoolsPart { pools })
        }
        "sessions" => {
            let f = filter.ok().map(|Query(f)| f);
            let pick = |v: Option<&String>| v.filter(|s| !s.is_empty()).cloned();
            let (user, host, pool) = match &f {
                Some(f) => (
                    pick(f.user.as_ref()),
                    pick(f.host.as_ref()),
                    pick(f.pool.as_ref()),
                ),
                None => (None, None, None),
            };
            let rows = app
                .engine
                .query(move |s| {
                    let mut out = Vec::new();
                    let mut more = false;
                    for r in s.sessions() {
                        if user.as_deref().is_some_and(|u| *r.user != *u)
                            || host.as_deref().is_some_and(|h| *r.host != *h)
                            || pool
                                .as_deref()
                                .is_some_and(|p| r.pool.as_deref() != Some(p))
                        {
                            continue;
                        }
                        if out.len() == MAX_ROWS {
                            more = true;
                            break;
                        }
                        out.push(SessionRow {
                            id: r.id.0,
                            user: r.user.to_string(),
                            host: r.host.to_string(),
                            pool: r.pool.as_deref().unwrap_or("").to_owned(),
                            state: r.state.as_str().to_owned(),
                            backend: r.backend_id.as_deref().unwrap_or("").to_owned(),
                        });
                    }
                    (out, more)
                })
                .await;
            match rows {
                Ok((sessions, truncated)) => render(&SessionsPart {
                    sessions,
                    truncated,
                }),
                Err(e) => message(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            }
        }
        "audit" => match app.store.audit(50, None).await {
            Ok(records) => render(&AuditPart {
                records: records
                    .into_iter()
                    .map(|r| AuditRow {
                        at: humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + Duration::from_millis(r.at.0),
                        )
                        .to_string(),
                        actor: r.actor,
                        surface: r.surface,
                        action: r.action,
                        target: r.target,
                        result: r.result,
                    })
                    .collect(),
            }),
            Err(e) => message(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        _ => message(StatusCode::NOT_FOUND, "no such part".into()),
    }
}

/// The status line for `#status` after an action (which the action layer has audited).
fn status_line<T>(action: &str, target: &str, r: Result<T, ActionError>, ok: String) -> Response {
    match r {
        Ok(_) => message(StatusCode::OK, ok),
        Err(e) => message(
            StatusCode::CONFLICT,
            format!("{action} {target}: {}", e.message()),
        ),
    }
}

async fn host_action(
    State(app): State<App>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = match authorised(&app, &headers, &body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let who = Actor::new(Surface::Ui, s.who);
    let change = match action.as_str() {
        "drain" => AdminChange::Drain {
            then_offline: false,
        },
        "drain-then-offline" => AdminChange::Drain { then_offline: true },
        "undrain" => AdminChange::Undrain,
        "offline" => AdminChange::Offline,
        "online" => AdminChange::Online,
        "weight" => {
            let Some(weight) = form(&body)
                .get("weight")
                .and_then(|w| w.trim().parse::<u32>().ok())
            else {
                return message(
                    StatusCode::CONFLICT,
                    format!("weight {name}: the weight must be a whole number"),
                );
            };
            let r = app.actions.set_weight(&who, &name, weight).await;
            return status_line("weight", &name, r, format!("{name} has weight {weight}"));
        }
        _ => return message(StatusCode::NOT_FOUND, "no such action".into()),
    };
    let r = app.actions.set_admin(&who, &name, change).await;
    let ok = match change {
        AdminChange::Drain { then_offline: true } => {
            format!("{name} is draining, and goes offline once empty")
        }
        c => format!("{name} is {}", c.state().as_str()),
    };
    status_line(&action, &name, r, ok)
}

async fn terminate_session(
    State(app): State<App>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = match authorised(&app, &headers, &body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let who = Actor::new(Surface::Ui, s.who);
    let r = app
        .actions
        .end_session(&who, SessionId(id), Termination::Terminate)
        .await;
    status_line(
        "terminate",
        &id.to_string(),
        r,
        format!("session {id} is ending"),
    )
}

/// Logs a user off everywhere; the user name comes as a form field (never in the URL, where
/// a name with `/` or `..` could point the request elsewhere).
async fn logoff_user(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let s = match authorised(&app, &headers, &body) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(user) = form(&body).remove("user").filter(|u| !u.is_empty()) else {
        return message(StatusCode::BAD_REQUEST, "which user?".into());
    };
    let who = Actor::new(Surface::Ui, s.who);
    let target = Target::User(user.clone());
    let how = Termination::Logoff(switchboard_proto::mgmt::DEFAULT_GRACE);
    match app.actions.end_sessions(&who, &target, how).await {
        Ok(ends) => {
            let failed = crate::actions::sessions::failures(&ends);
            if failed.is_empty() {
                message(
                    StatusCode::OK,
                    format!("{} session(s) of {user} are being logged off", ends.len()),
                )
            } else {
                message(
                    StatusCode::CONFLICT,
                    format!("logoff {user}: {}", failed.join("; ")),
                )
            }
        }
        // No live sessions is not a failure here: nothing was left to log off.
        Err(ActionError::NoSessions(_)) => message(
            StatusCode::OK,
            format!("0 session(s) of {user} are being logged off"),
        ),
        Err(e) => message(
            StatusCode::CONFLICT,
            format!("logoff {user}: {}", e.message()),
        ),
    }
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, ct) = match name.as_str() {
        "htmx.min.js" => (HTMX, "text/javascript; charset=utf-8"),
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// What the dashboard's handlers serve with: the listener's shared state and the dashboard's own.
#[derive(Clone)]
struct App {
    shared: AppState,
    ui: Ui,
}

impl std::ops::Deref for App {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.shared
    }
}

/// The dashboard's routes.
pub fn routes(shared: AppState, ui: Ui) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/ui", get(root))
        .route("/ui/", get(dashboard))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/part/{name}", get(part))
        .route("/ui/hosts/{name}/{action}", post(host_action))
        .route("/ui/sessions/{id}/terminate", post(terminate_session))
        .route("/ui/logoff", post(logoff_user))
        .route("/ui/static/{name}", get(asset))
        .with_state(App { shared, ui })
}
