//! The gateway: an HTTPS/WSS listener of its own for browsers and Xpra clients, so that every
//! path is free for session types.
//!
//! - `GET /login`, `POST /login`: sign in with the `[auth]` method; sets an HttpOnly,
//!   SameSite=Strict session cookie (Secure over TLS). `POST /logout` signs out; it needs the
//!   sign-in's CSRF token (a hidden field of the landing page's form) and ends the sign-in's
//!   connect tokens with it. Both POSTs refuse a cross-site `Origin` (login CSRF: another site
//!   must not sign a browser into its own account).
//! - `GET /`: the landing page: the session types the user may start, each with a link that opens
//!   the Xpra HTML5 client (served under `/client/`) and a connect URL for `xpra attach`.
//! - `GET /start/<type>`: a waiting page that shows the start's progress (server-sent events from
//!   `GET /events/<type>`) and opens the client when the session is ready.
//! - `GET /<type>` with a WebSocket upgrade and a valid cookie: starts or gets the session and relays
//!   the WebSocket stream to the session's Xpra port (TCP). Cross-site upgrades (an `Origin` that
//!   is not this host) are refused.
//! - `GET /t/<token>/<type>` and `GET /t.<token>.<type>`: the same with a short-lived connect token
//!   in the path instead of a cookie, for command-line clients, which carry no credentials in the
//!   upgrade (Xpra 3.1's `xpra attach` accepts only one path segment, hence the second form).
//!   A token belongs to one sign-in and one session type, and its first connection binds it to
//!   that client's address: a URL copied elsewhere does not connect, and signing out ends it.
//!   It is not strictly single-use, because `xpra attach` reconnects by itself with the same URL
//!   after a network blip, and that must keep working.
//!
//! Connections from `[gateway] trusted_proxies` begin with a PROXY protocol v2 header
//! ([`crate::web::serve`]), so the client's own address is what the per-source cap, the sign-in
//! throttle, token binding and the logs see.
//!
//! Session types come from the gateway's Kubernetes pool (its templates) and from static targets
//! (`[[gateway.target]]`: a fixed address, such as a host running Xpra).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use switchboard_core::config::HostAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::kubernetes::KubePools;
use crate::sync::lock;
use crate::web::signin::{Cookie, SignIns};

/// Name of the sign-in cookie.
pub const COOKIE: &str = "switchboard_gateway";
/// Most signed-in browsers and live connect tokens kept (the oldest go first).
const MAX_SESSIONS: usize = 100_000;
/// Largest static file served from the HTML5 client directory.
const MAX_FILE: u64 = 16 * 1024 * 1024;
/// Relay buffer.
const RELAY_BUF: usize = 64 * 1024;
/// Largest WebSocket message accepted from a client.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Longest wait for the TCP connection to a ready session (starting it is bounded by the pool's
/// stage budgets).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    /// Waits until it has stopped.
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.unwrap_or(Ok(()))
    }
}

#[derive(Clone)]
struct Gw {
    cfg: Arc<GatewayConfig>,
    auth: switchboard_auth::Authenticator,
    kube: KubePools,
    tls: bool,
    /// Sign-in cookies → the sign-in.
    signed_in: Arc<Mutex<SignIns<SignIn>>>,
    /// Connect tokens → what they stand for.
    tokens: Arc<Mutex<SignIns<Token>>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Gw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gw")
            .field("listen", &self.cfg.listen)
            .finish_non_exhaustive()
    }
}

/// The gateway, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Listener.
    pub listen: SocketAddr,
    /// Certificate and key (HTTPS/WSS), if configured.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The Kubernetes pool for dynamic session types.
    pub pool: Option<String>,
    /// Static targets: type → (address, allowed users).
    pub targets: BTreeMap<String, (HostAddr, Option<Vec<String>>)>,
    /// Sign-in lifetime.
    pub cookie_ttl: Duration,
    /// Connect-URL token lifetime.
    pub token_ttl: Duration,
    /// The Xpra HTML5 client's directory.
    pub html5_client: PathBuf,
    /// Proxies that must send a PROXY protocol v2 header (`[gateway] trusted_proxies`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// A browser's sign-in.
#[derive(Debug, Clone)]
struct SignIn {
    user: String,
    /// What `POST /logout` must carry.
    csrf: String,
}

/// A connect token.
#[derive(Debug, Clone)]
struct Token {
    user: String,
    /// The sign-in cookie it was made for (signing out ends it).
    signin: String,
    /// The one session type it opens.
    session_type: String,
    /// The client address its first connection came from; later ones must come from it too.
    bound: Option<std::net::IpAddr>,
}

/// A new cookie or connect token: 128 random bits as hex.
fn secret() -> Result<String, switchboard_auth::secret::SecretError> {
    crate::web::signin::new_secret(16)
}

impl Gw {
    fn cookie(&self) -> Cookie {
        Cookie {
            name: COOKIE,
            path: "/",
            secure: self.tls,
        }
    }

    /// The user a request's sign-in cookie stands for.
    fn user(&self, headers: &HeaderMap) -> Option<String> {
        self.signin(headers).map(|(_, s)| s.user)
    }

    /// A request's sign-in: its cookie and what it stands for.
    fn signin(&self, headers: &HeaderMap) -> Option<(String, SignIn)> {
        let c = self.cookie().read(headers)?;
        let s = lock(&self.signed_in).get(&c).cloned()?;
        Some((c, s))
    }
}

/// Serves the gateway on `listener` (bound by the caller; with `tls` when it speaks HTTPS/WSS)
/// within the process's connection `slots` until `shutdown`.
pub fn start(
    cfg: GatewayConfig,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    auth: switchboard_auth::Authenticator,
    kube: KubePools,
    slots: crate::web::serve::Slots,
    shutdown: CancellationToken,
) -> std::io::Result<Gateway> {
    let addr = listener.local_addr()?;
    let gw = Gw {
        tls: tls.is_some(),
        signed_in: Arc::new(Mutex::new(SignIns::new(cfg.cookie_ttl, MAX_SESSIONS))),
        tokens: Arc::new(Mutex::new(SignIns::new(cfg.token_ttl, MAX_SESSIONS))),
        cfg: Arc::new(cfg),
        auth,
        kube,
        shutdown: shutdown.clone(),
    };
    let proxies = crate::web::serve::Proxies {
        forwarding: Arc::default(),
        proxy_protocol: Arc::new(gw.cfg.trusted_proxies.clone()),
    };
    let router = router(gw);
    let task = tokio::spawn(crate::web::serve::serve(
        listener, router, tls, slots, proxies, "gateway", shutdown,
    ));
    tracing::info!(gateway = %addr, "gateway started");
    Ok(Gateway { addr, task })
}

fn router(gw: Gw) -> Router {
    Router::new()
        .route("/", get(landing))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/client/{*path}", get(client_file))
        .route("/start/{session_type}", get(waiting_page))
        .route("/events/{session_type}", get(events))
        .route("/t/{token}/{session_type}", get(ws_token))
        .route("/{session_type}", get(ws_cookie))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(gw)
}

/// The signed-in user, from the cookie.
struct User(String);

impl FromRequestParts<Gw> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, gw: &Gw) -> Result<User, Response> {
        gw.user(&parts.headers)
            .map(User)
            .ok_or_else(|| Redirect::to("/login").into_response())
    }
}

fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title>\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <style>body{{font-family:sans-serif;max-width:48em;margin:2em auto}}code{{word-break:break-all}}\
         li{{margin:.6em 0}}</style></head><body>{body}</body></html>",
        crate::web::html::escape(title)
    );
    let mut r = Html(html).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("content-security-policy", HeaderValue::from_static("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'"));
    r
}

async fn login_page() -> Response {
    login_form(None)
}

fn login_form(error: Option<&str>) -> Response {
    let err = error
        .map(|e| {
            format!(
                "<p role=\"alert\"><b>{}</b></p>",
                crate::web::html::escape(e)
            )
        })
        .unwrap_or_default();
    page(
        "Sign in",
        &format!(
            "<h1>Sign in</h1>{err}<form method=\"post\" action=\"/login\">\
             <p><label>User <input name=\"user\" autocomplete=\"username\" required autofocus></label></p>\
             <p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\"></label></p>\
             <p><button type=\"submit\">Sign in</button></p></form>"
        ),
    )
}

/// Whether a POST comes from another site's page (its `Origin` is not this host, or the
/// browser says the request is cross-site).
fn cross_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    !same_origin(headers) || fetch_site == Some("cross-site")
}

fn forbidden(msg: &'static str) -> Response {
    (StatusCode::FORBIDDEN, msg).into_response()
}

async fn login(
    State(gw): State<Gw>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if cross_site(&headers) {
        return forbidden("cross-site sign-in refused\n");
    }
    let mut user = None;
    let mut password = String::new();
    for (k, v) in form_urlencoded::parse(&body) {
        match &*k {
            "user" => user = Some(v.into_owned()),
            "password" => password = v.into_owned(),
            _ => {}
        }
    }
    let Some(user) = user.filter(|u| switchboard_auth::valid_user(u)) else {
        return login_form(Some("Enter a user name."));
    };
    match gw.auth.verify(&user, &password, peer.ip()).await {
        // The authenticator's canonical name from here on (templates, pods, targets).
        Ok(user) => {
            let made = secret().and_then(|c| Ok((c, crate::web::signin::new_secret(32)?)));
            let (c, csrf) = match made {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "gateway sign-in: no session cookie");
                    let mut r = login_form(Some("Sign-in is unavailable; try again later."));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return r;
                }
            };
            lock(&gw.signed_in).insert(
                c.clone(),
                SignIn {
                    user: user.clone(),
                    csrf,
                },
            );
            tracing::info!(user = %switchboard_auth::printable(&user), %peer, "gateway sign-in");
            let mut r = Redirect::to("/").into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, gw.cookie().set(&c, gw.cfg.cookie_ttl));
            r
        }
        Err(switchboard_auth::AuthError::Denied) => {
            login_form(Some("Wrong user name or password."))
        }
        Err(switchboard_auth::AuthError::Unavailable(_)) => {
            login_form(Some("Sign-in is unavailable; try again later."))
        }
        Err(switchboard_auth::AuthError::Busy) => {
            let mut r = login_form(Some(
                "Too many sign-ins at once; try again in a few seconds.",
            ));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(switchboard_auth::BUSY_RETRY_AFTER),
            );
            r
        }
    }
}

async fn logout(State(gw): State<Gw>, headers: HeaderMap, body: Bytes) -> Response {
    if cross_site(&headers) {
        return forbidden("cross-site sign-out refused\n");
    }
    if let Some((c, s)) = gw.signin(&headers) {
        let presented = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned());
        let ok = presented
            .is_some_and(|p| switchboard_auth::secret::ct_eq(p.as_bytes(), s.csrf.as_bytes()));
        if !ok {
            return forbidden("sign-out needs the form of the page; reload it and try again\n");
        }
        lock(&gw.signed_in).remove(&c);
        let ended = lock(&gw.tokens).remove_where(|t| t.signin == c);
        tracing::info!(user = %switchboard_auth::printable(&s.user), connect_tokens = ended, "gateway sign-out");
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, gw.cookie().clear());
    r
}

/// The session types `user` may open: static targets, then the pool's templates.
async fn session_types(gw: &Gw, user: &str) -> Vec<String> {
    let mut types: Vec<String> = gw
        .cfg
        .targets
        .iter()
        .filter(|(_, (_, users))| users.as_ref().is_none_or(|u| u.iter().any(|x| x == user)))
        .map(|(t, _)| t.clone())
        .collect();
    if let Some(pool) = gw.cfg.pool.as_deref().and_then(|p| gw.kube.get(p)) {
        match pool.session_types(user).await {
            Ok(t) => types.extend(t.into_iter().filter(|t| !gw.cfg.targets.contains_key(t))),
            Err(e) => tracing::warn!(error = %e, "cannot list session types"),
        }
    }
    types
}

/// A connect token of sign-in `signin` for `ty` (a live unused one with at least a minute left,
/// or a new one).
fn connect_token(
    gw: &Gw,
    signin: &str,
    user: &str,
    ty: &str,
) -> Result<String, switchboard_auth::secret::SecretError> {
    let mut tokens = lock(&gw.tokens);
    let min = Duration::from_secs(60).min(gw.cfg.token_ttl / 2);
    if let Some(t) = tokens.find(min, |t| {
        t.signin == signin && t.session_type == ty && t.bound.is_none()
    }) {
        return Ok(t.to_owned());
    }
    let t = secret()?;
    tokens.insert(
        t.clone(),
        Token {
            user: user.to_owned(),
            signin: signin.to_owned(),
            session_type: ty.to_owned(),
            bound: None,
        },
    );
    Ok(t)
}

async fn landing(State(gw): State<Gw>, headers: HeaderMap) -> Response {
    let Some((cookie, signin)) = gw.signin(&headers) else {
        return Redirect::to("/login").into_response();
    };
    let user = signin.user;
    let types = session_types(&gw, &user).await;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("HOST");
    let scheme = if gw.tls { "wss" } else { "ws" };
    let mins = gw.cfg.token_ttl.as_secs().div_ceil(60);
    let e = crate::web::html::escape;
    let mut list = String::new();
    for t in &types {
        let token = match connect_token(&gw, &cookie, &user, t) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "gateway: no connect token");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no randomness available for a connect token; try again later\n",
                )
                    .into_response();
            }
        };
        list.push_str(&format!(
            "<li><b>{t}</b>: <a href=\"/start/{t}\">open in the browser</a><br>\
             <small>or from a terminal: <code>xpra attach {scheme}://{host}/t.{token}.{t}</code></small></li>",
            t = e(t),
            host = e(host),
        ));
    }
    if list.is_empty() {
        list.push_str("<li>No session types are offered to you.</li>");
    }
    page(
        "Sessions",
        &format!(
            "<h1>Sessions of {}</h1><ul>{list}</ul><p><small>Terminal connect URLs work for {mins} minutes \
             after this page was loaded, from the computer that uses one first, until you sign out; \
             reload for new ones.</small></p>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button>Sign out</button></form>",
            e(&user),
            e(&signin.csrf)
        ),
    )
}

async fn waiting_page(
    State(gw): State<Gw>,
    User(user): User,
    UrlPath(ty): UrlPath<String>,
) -> Response {
    if !session_types(&gw, &user).await.contains(&ty) {
        return (StatusCode::NOT_FOUND, "no such session type\n").into_response();
    }
    let t = crate::web::html::escape(&ty);
    page(
        &format!("Starting {ty}"),
        &format!(
            "<h1>Starting {t}</h1><p id=\"status\">Connecting…</p>\
             <script>\
             const s = document.getElementById('status');\
             const ev = new EventSource('/events/{t}');\
             ev.addEventListener('progress', e => {{ const p = JSON.parse(e.data);\
               s.textContent = p.event === 'waiting' ? ('Waiting: ' + p.stage + (p.detail ? ' (' + p.detail + ')' : '')) : p.event; }});\
             ev.addEventListener('ready', e => {{ ev.close(); s.textContent = 'Ready';\
               location.href = '/client/index.html?path=/{t}&submit=true'; }});\
             ev.addEventListener('failed', e => {{ ev.close(); const p = JSON.parse(e.data);\
               s.textContent = 'Could not start: ' + (p.reason || p.error) + (p.message ? ': ' + p.message : ''); }});\
             </script><p><a href=\"/\">Back</a></p>"
        ),
    )
}

/// Progress of starting `user`'s `ty`, as server-sent events (`progress`, then `ready` or
/// `failed`). A static target is ready at once.
async fn events(State(gw): State<Gw>, User(user): User, UrlPath(ty): UrlPath<String>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let ev = |name: &str, v: &serde_json::Value| {
        Event::default()
            .event(name)
            .json_data(v)
            .map_err(axum::Error::new)
    };
    if !session_types(&gw, &user).await.contains(&ty) {
        return (StatusCode::NOT_FOUND, "no such session type\n").into_response();
    }
    if let Some((addr, _)) = gw.cfg.targets.get(&ty) {
        let one = futures_util::stream::once({
            let v = serde_json::json!({ "event": "ready", "address": addr.to_string() });
            async move { ev("ready", &v) }
        });
        return Sse::new(one).into_response();
    }
    let Some(pool) = gw.cfg.pool.as_deref().and_then(|p| gw.kube.get(p)) else {
        return (StatusCode::NOT_FOUND, "no such session type\n").into_response();
    };
    let handle = match pool.start(&user, &ty).await {
        Ok(h) => h,
        Err(e) => {
            let v = serde_json::json!({ "event": "failed", "error": "refused", "message": e.to_string() });
            return Sse::new(futures_util::stream::once(async move { ev("failed", &v) }))
                .into_response();
        }
    };
    // Progress is internally tagged (`{"event": …}`), a failure's fields next to the tag, as the
    // waiting page reads them.
    let stream =
        crate::kubernetes::progress_events(handle, gw.shutdown.clone()).map(|(name, p)| {
            Event::default()
                .event(name)
                .json_data(&p)
                .map_err(axum::Error::new)
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn client_file(State(gw): State<Gw>, UrlPath(path): UrlPath<String>) -> Response {
    let Some(rel) = switchboard_proto::gateway::client_path(&path) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let full: PathBuf = gw.cfg.html5_client.join(rel);
    match tokio::fs::metadata(&full).await {
        Ok(m) if m.is_file() && m.len() <= MAX_FILE => {}
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
    let Ok(bytes) = tokio::fs::read(&full).await else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let ct = match full.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    };
    ([(header::CONTENT_TYPE, ct)], bytes).into_response()
}

/// Refuses upgrades whose Origin is another site (cross-site WebSocket hijacking).
fn same_origin(headers: &HeaderMap) -> bool {
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    switchboard_proto::gateway::same_origin(get(header::ORIGIN), get(header::HOST))
}

async fn ws_cookie(
    State(gw): State<Gw>,
    UrlPath(ty): UrlPath<String>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if let Some((token, ty)) = dotted_token(&ty) {
        let (token, ty) = (token.to_string(), ty.to_string());
        return ws_token(State(gw), UrlPath((token, ty)), peer, headers, ws).await;
    }
    let user = gw.user(&headers);
    let Ok(ws) = ws else {
        // A browser opening /<type> directly: send it through the waiting page.
        return match user {
            Some(_) => Redirect::to(&format!("/start/{}", urlencode(&ty))).into_response(),
            None => Redirect::to("/login").into_response(),
        };
    };
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "cross-site WebSocket upgrade refused\n",
        )
            .into_response();
    }
    let Some(user) = user else {
        return (StatusCode::UNAUTHORIZED, "sign in first\n").into_response();
    };
    upgrade(gw, user, ty, ws).await
}

async fn ws_token(
    State(gw): State<Gw>,
    UrlPath((token, ty)): UrlPath<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return (
            StatusCode::BAD_REQUEST,
            "this URL is for WebSocket clients (xpra attach)\n",
        )
            .into_response();
    };
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "cross-site WebSocket upgrade refused\n",
        )
            .into_response();
    }
    let user = match use_token(&gw, &token, &ty, peer.ip()) {
        Ok(u) => u,
        Err(msg) => {
            tracing::info!(%peer, session_type = %ty, "gateway: connect token refused: {msg}");
            return (StatusCode::UNAUTHORIZED, format!("{msg}\n")).into_response();
        }
    };
    upgrade(gw, user, ty, ws).await
}

/// The user a connect token stands for, if it may open `ty` from `client`; its first use binds
/// it to `client`.
fn use_token(
    gw: &Gw,
    token: &str,
    ty: &str,
    client: std::net::IpAddr,
) -> Result<String, &'static str> {
    let mut tokens = lock(&gw.tokens);
    let t = tokens
        .get_mut(token)
        .ok_or("unknown or expired connect token")?;
    if t.session_type != ty {
        return Err("this connect token is for another session type");
    }
    if lock(&gw.signed_in).get(&t.signin).is_none() {
        return Err("unknown or expired connect token");
    }
    match t.bound {
        None => t.bound = Some(client),
        Some(ip) if ip == client => {}
        Some(_) => return Err("this connect token was first used from another address"),
    }
    Ok(t.user.clone())
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `t.<token>.<type>` (one path segment, for Xpra 3.1 clients) → (token, type).
fn dotted_token(seg: &str) -> Option<(&str, &str)> {
    switchboard_proto::gateway::dotted_token(seg)
}

async fn upgrade(gw: Gw, user: String, ty: String, ws: WebSocketUpgrade) -> Response {
    if !session_types(&gw, &user).await.contains(&ty) {
        return (StatusCode::NOT_FOUND, "no such session type\n").into_response();
    }
    // Resolve the target before upgrading, so that a failure is a plain HTTP error.
    let (target, conn) = match resolve(&gw, &user, &ty).await {
        Ok(t) => t,
        Err((status, msg)) => {
            tracing::info!(user = %switchboard_auth::printable(&user), session_type = %ty, error = %msg, "gateway: no session");
            return (status, format!("{msg}\n")).into_response();
        }
    };
    let tcp = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(target.as_str()),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("session at {target}: {e}\n"),
            )
                .into_response();
        }
        Err(_) => {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                format!("session at {target}: connect timed out\n"),
            )
                .into_response();
        }
    };
    let _ = tcp.set_nodelay(true);
    tracing::info!(user = %switchboard_auth::printable(&user), session_type = %ty, %target, "gateway: relaying");
    let stop = gw.shutdown.clone();
    // Xpra 3.1's Python client sends unmasked frames (XPRA_WEBSOCKET_MASK defaults to off), which
    // RFC 6455 forbids; masking protects proxy caches on plain HTTP and adds nothing inside TLS,
    // so they are accepted rather than refusing every `xpra attach ws(s)://` of that version.
    ws.protocols(["binary"])
        .accept_unmasked_frames(true)
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| relay(socket, tcp, conn, stop))
}

type Activity = Option<switchboard_k8s::lifecycle::Connection>;

async fn resolve(
    gw: &Gw,
    user: &str,
    ty: &str,
) -> Result<(String, Activity), (StatusCode, String)> {
    if let Some((addr, _)) = gw.cfg.targets.get(ty) {
        return Ok((target_string(addr), None));
    }
    let pool = gw
        .cfg
        .pool
        .as_deref()
        .and_then(|p| gw.kube.get(p))
        .ok_or((StatusCode::NOT_FOUND, "no such session type".to_string()))?;
    let handle = pool.start(user, ty).await.map_err(|e| {
        let a = crate::web::error::refused_error(&e);
        (a.status(), e.to_string())
    })?;
    let t = handle
        .wait()
        .await
        .map_err(|e| (crate::web::error::start_error(&e).status(), e.to_string()))?;
    let conn = pool.lifecycle.connect(&t.pod);
    Ok((t.address.to_string(), Some(conn)))
}

fn target_string(addr: &HostAddr) -> String {
    format!("{}:{}", addr.host, addr.port)
}

/// Relays WebSocket messages to the TCP stream and back until either side ends.
async fn relay(
    socket: WebSocket,
    tcp: tokio::net::TcpStream,
    conn: Activity,
    stop: CancellationToken,
) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tcp.into_split();
    let up = async {
        let mut last_mark = Instant::now();
        if let Some(c) = &conn {
            c.input();
        }
        while let Some(Ok(msg)) = ws_rx.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::copy_from_slice(t.as_str().as_bytes()),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
            if last_mark.elapsed() >= Duration::from_secs(1) {
                last_mark = Instant::now();
                if let Some(c) = &conn {
                    c.input();
                }
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; RELAY_BUF];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    tokio::select! {
        () = stop.cancelled() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
    drop(conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_origins() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; switchboard_gateway=xyz; b=2"),
        );
        assert_eq!(crate::web::signin::read(&h, COOKIE).as_deref(), Some("xyz"));
        h.insert(
            header::HOST,
            HeaderValue::from_static("gw.example.org:8443"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://gw.example.org:8443"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
    }
}
