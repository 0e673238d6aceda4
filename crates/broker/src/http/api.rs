//! The REST API under `/api/v1`, plus `/healthz`, `/readyz`, `/metrics` and
//! `/api/v1/openapi.json`.
//!
//! JSON in and out. Errors are `{"error": {"code": "…", "message": "…"}}` with the matching status;
//! a refused request changes nothing. Every `/api/v1` call needs a bearer token from the tokens
//! file; read-only tokens may only read. The OpenAPI document is generated from the same handler
//! annotations that register the routes (utoipa-axum), so the two cannot drift apart.

use super::{AppState as App, client_ip};
use crate::actions::hosts::AdminChange;
use crate::actions::{Actor, Surface};
use crate::actions::{Ended, Termination};
use crate::engine::EngineError;
use crate::snapshot::{HostInfo, PoolInfo};
use crate::tokens::Access;
use crate::web::error::{ApiError, ErrorBody, refused_error, start_error};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use switchboard_core::model::{ReservationRecord, SessionRecord, SessionState};
use switchboard_core::{Command, Event, PlacementOutcome, SessionId};
use switchboard_store::Store;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Default page size of list endpoints.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size.
pub const MAX_LIMIT: usize = 1000;

/// Appends an operator action to the audit log (a failure to write it is logged, not hidden).
async fn audit(
    app: &App,
    actor: &Actor,
    action: &str,
    target: &str,
    result: &Result<(), ApiError>,
) {
    let result = match result {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("{}: {}", e.code(), e.message())),
    };
    crate::audit::record(&app.store, &actor.name, "api", action, target, result).await;
}

/// A request body, or why it could not be read (too large: 413).
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

fn body_bytes(body: Body) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(
            status,
            code,
            format!("{} (bodies are limited to {MAX_BODY} bytes)", e.body_text()),
        )
    })
}

/// Parses a JSON body strictly: unknown fields and malformed JSON are 400s.
fn parse_body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Query string parser that reports errors as JSON.
fn query<T: for<'de> Deserialize<'de>>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn session_id(raw: &str) -> Result<SessionId, ApiError> {
    raw.parse::<u64>()
        .map(SessionId)
        .map_err(|_| ApiError::bad_request(format!("{raw:?} is not a session id")))
}

// ----- shapes -----

/// Paging parameters of list endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Items per page, 1–1000 (default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_LIMIT} (got {n})"
        ))),
    }
}

/// One page of `all` in name order, after the cursor (the last name of the previous page).
fn page_by_name<T: Clone>(
    all: &[T],
    name: impl Fn(&T) -> &String,
    q: &PageParams,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    let mut sorted: Vec<&T> = all.iter().collect();
    sorted.sort_by(|a, b| name(a).cmp(name(b)));
    let start = match &q.cursor {
        Some(c) => sorted.partition_point(|t| name(t) <= c),
        None => 0,
    };
    let items: Vec<T> = sorted[start..]
        .iter()
        .take(limit)
        .map(|t| (*t).clone())
        .collect();
    let next = (start + items.len() < sorted.len())
        .then(|| items.last().map(|t| name(t).clone()))
        .flatten();
    (items, next)
}

/// A page of hosts.
#[derive(Debug, Serialize, ToSchema)]
pub struct HostPage {
    /// Hosts, by name.
    #[schema(value_type = Vec<HostInfo>)]
    pub items: Vec<Arc<HostInfo>>,
    /// Cursor of the next page, `null` on the last.
    pub next_cursor: Option<String>,
}

/// A page of pools.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolPage {
    /// Pools, by name.
    pub items: Vec<PoolInfo>,
    /// Cursor of the next page, `null` on the last.
    pub next_cursor: Option<String>,
}

/// A session or reservation.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    /// Switchboard's id.
    pub id: u64,
    /// Owner.
    pub user: String,
    /// Host.
    pub host: String,
    /// Pool it was placed through.
    pub pool: Option<String>,
    /// `reserved`, `starting`, `running`, `disconnected`, `ending`, `unknown` or `ended`.
    pub state: String,
    /// The backend's own id.
    pub backend_id: Option<String>,
    /// Client address that asked for it.
    pub client_addr: Option<String>,
    /// When it was created (ms since the epoch).
    pub created_at: u64,
    /// When it last changed (ms since the epoch).
    pub updated_at: u64,
    /// For reservations: when it lapses unless confirmed (ms since the epoch).
    pub expires_at: Option<u64>,
}

impl From<SessionRecord> for SessionInfo {
    fn from(s: SessionRecord) -> SessionInfo {
        SessionInfo {
            id: s.id.0,
            user: s.user.to_string(),
            host: s.host.to_string(),
            pool: s.pool.map(|p| p.to_string()),
            state: s.state.as_str().to_owned(),
            backend_id: s.backend_id.map(|b| b.to_string()),
            client_addr: s.client.map(|c| c.to_string()),
            created_at: s.created_at.0,
            updated_at: s.updated_at.0,
            expires_at: None,
        }
    }
}

impl From<ReservationRecord> for SessionInfo {
    fn from(r: ReservationRecord) -> SessionInfo {
        SessionInfo {
            id: r.id.0,
            user: r.user.to_string(),
            host: r.host.to_string(),
            pool: Some(r.pool.to_string()),
            state: "reserved".to_owned(),
            backend_id: None,
            client_addr: r.client.map(|c| c.to_string()),
            created_at: r.created_at.0,
            updated_at: r.created_at.0,
            expires_at: Some(r.expires_at.0),
        }
    }
}

/// A page of sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPage {
    /// Sessions, by id.
    pub items: Vec<SessionInfo>,
    /// Cursor of the next page, `null` on the last.
    pub next_cursor: Option<String>,
}

/// `POST /sessions` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceRequest {
    /// Who asks.
    pub user: String,
    /// Which pool.
    pub pool: String,
    /// The client's address, when known.
    #[schema(value_type = Option<String>, example = "127.0.0.9")]
    pub client_addr: Option<IpAddr>,
}

/// A placement.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlaceResponse {
    /// Session id (resumed) or reservation id (new; confirm it with this id).
    pub id: u64,
    /// Chosen host.
    pub host: String,
    /// Where the client connects.
    pub address: String,
    /// Port the client connects to.
    pub port: u16,
    /// Whether this is the user's existing session.
    pub resumed: bool,
    /// `reserved`, or the resumed session's state.
    pub state: String,
    /// For reservations: when it lapses unless confirmed (ms since the epoch).
    pub expires_at: Option<u64>,
    /// Why this host: policy, eligible hosts, exclusions.
    pub reason: String,
}

/// `POST /sessions/{id}/confirm` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConfirmRequest {
    /// The backend's own id for the session.
    pub backend_id: Option<String>,
    /// `true` while the backend is still starting it.
    pub starting: bool,
}

/// `PUT /hosts/{name}/weight` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightRequest {
    /// New weight (0 = no new sessions).
    pub weight: u32,
}

/// Filters of `GET /sessions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SessionFilter {
    /// Only this user's.
    pub user: Option<String>,
    /// Only on this host.
    pub host: Option<String>,
    /// Only placed through this pool.
    pub pool: Option<String>,
    /// Only in this state.
    pub state: Option<String>,
    /// Items per page, 1–1000 (default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `DELETE /sessions/{id}` options.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EndParams {
    /// Seconds to wait for a graceful log-off before forcing (used with agents).
    pub grace: Option<u64>,
}

/// `GET /placements/explain` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExplainParams {
    /// User to explain for.
    pub user: String,
    /// Pool.
    pub pool: String,
}

// ----- hosts and pools -----

/// One host, from the engine itself so that a change just made is visible.
async fn find_host(app: &App, name: &str) -> Result<HostInfo, ApiError> {
    let n = name.to_owned();
    app.engine
        .query(move |s| s.host(&n).map(|h| crate::snapshot::host_info(&h)))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("host {name:?} not found"),
            )
        })
}

/// List hosts with admin state, health, weight, sessions and latest load.
#[utoipa::path(get, path = "/api/v1/hosts", params(PageParams),
    responses((status = 200, body = HostPage), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_hosts(
    State(app): State<App>,
    q: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HostPage>, ApiError> {
    let q = query(q)?;
    let limit = page_limit(q.limit)?;
    let (items, next_cursor) = page_by_name(&app.engine.snapshot().hosts, |h| &h.name, &q, limit);
    Ok(Json(HostPage { items, next_cursor }))
}

/// One host.
#[utoipa::path(get, path = "/api/v1/hosts/{name}", params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = HostInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_host(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<Json<HostInfo>, ApiError> {
    find_host(&app, &name).await.map(Json)
}

async fn set_admin(
    app: &App,
    actor: &Actor,
    name: String,
    change: AdminChange,
) -> Result<Json<HostInfo>, ApiError> {
    app.actions
        .set_admin(actor, &name, change)
        .await
        .map_err(ApiError::from)?;
    find_host(app, &name).await.map(Json)
}

/// `POST /hosts/{name}/drain` options.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DrainParams {
    /// Take the host offline by itself once it has neither sessions nor reservations (kept
    /// across broker restarts; any later admin change of the host cancels it).
    pub then_offline: Option<bool>,
}

/// Drain a host: it resumes its sessions but takes no new ones; with `then_offline=true` it goes
/// offline by itself once empty.
#[utoipa::path(post, path = "/api/v1/hosts/{name}/drain", params(("name" = String, Path, description = "Host name"), DrainParams),
    responses((status = 200, body = HostInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn drain_host(
    State(app): State<App>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    q: Result<Query<DrainParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HostInfo>, ApiError> {
    let then_offline = query(q)?.then_offline.unwrap_or(false);
    set_admin(&app, &actor, name, AdminChange::Drain { then_offline }).await
}

/// Undo a drain: the host takes new sessions again.
#[utoipa::path(post, path = "/api/v1/hosts/{name}/undrain", params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = HostInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn undrain_host(
    State(app): State<App>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<HostInfo>, ApiError> {
    set_admin(&app, &actor, name, AdminChange::Undrain).await
}

/// Take a host offline: no new sessions and no resumes.
#[utoipa::path(post, path = "/api/v1/hosts/{name}/offline", params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = HostInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn offline_host(
    State(app): State<App>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<HostInfo>, ApiError> {
    set_admin(&app, &actor, name, AdminChange::Offline).await
}

/// Bring a host online.
#[utoipa::path(post, path = "/api/v1/hosts/{name}/online", params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = HostInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn online_host(
    State(app): State<App>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<HostInfo>, ApiError> {
    set_admin(&app, &actor, name, AdminChange::Online).await
}

/// Set a host's weight (kept across restarts and reloads).
#[utoipa::path(put, path = "/api/v1/hosts/{name}/weight", params(("name" = String, Path, description = "Host name")),
    request_body = WeightRequest,
    responses((status = 200, body = HostInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn set_weight(
    State(app): State<App>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<HostInfo>, ApiError> {
    let req: WeightRequest = parse_body(&headers, &body_bytes(body)?)?;
    app.actions
        .set_weight(&actor, &name, req.weight)
        .await
        .map_err(ApiError::from)?;
    find_host(&app, &name).await.map(Json)
}

/// List pools.
#[utoipa::path(get, path = "/api/v1/pools", params(PageParams),
    responses((status = 200, body = PoolPage)),
    security(("bearer" = [])))]
async fn list_pools(
    State(app): State<App>,
    q: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PoolPage>, ApiError> {
    let q = query(q)?;
    let limit = page_limit(q.limit)?;
    let (items, next_cursor) = page_by_name(&app.engine.snapshot().pools, |p| &p.name, &q, limit);
    Ok(Json(PoolPage { items, next_cursor }))
}

fn pool_view(
    snap: &crate::snapshot::Snapshot,
    pool: &str,
) -> Option<switchboard_proto::watch::PoolEvent> {
    let p = snap.pools.iter().find(|p| p.name == pool)?;
    // One pass over the snapshot, not one per member: a pool of 10,000 hosts costs 10,000
    // lookups an event, not 50 million comparisons.
    let by_name: std::collections::HashMap<&str, &HostInfo> =
        snap.hosts.iter().map(|h| (h.name.as_str(), &**h)).collect();
    let hosts = p
        .hosts
        .iter()
        .filter_map(|name| by_name.get(name.as_str()).copied())
        .map(|h| switchboard_proto::watch::PoolHost {
            name: h.name.clone(),
            address: h.address.clone(),
            port: h.port,
            weight: h.weight,
            admin: h.admin.clone(),
            health: h.health.clone(),
            excluded: h.excluded.clone(),
            sessions: h.sessions,
            load_avg: h
                .load
                .as_ref()
                .map(|l| (l.load_avg[0] * 10.0).round() / 10.0),
        })
        .collect();
    Some(switchboard_proto::watch::PoolEvent {
        pool: p.name.clone(),
        hosts,
    })
}

/// Follow a pool: server-sent events, one `pool` event ([`switchboard_proto::watch::PoolEvent`]) at once and one after
/// every change of its hosts' state, weight, drain, health or load (at most one a second), and a
/// comment line every 15 s to keep proxies from closing the stream. The director follows pools
/// with it.
#[utoipa::path(get, path = "/api/v1/pools/{name}/watch", params(("name" = String, Path, description = "Pool name")),
    responses((status = 200, description = "text/event-stream of `pool` events", content_type = "text/event-stream", body = switchboard_proto::watch::PoolEvent),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn watch_pool(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    let mut rx = app.engine.subscribe();
    let first = pool_view(&rx.borrow_and_update(), &name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no pool {name:?}"),
        )
    })?;
    let event = |v: &switchboard_proto::watch::PoolEvent| {
        SseEvent::default()
            .event("pool")
            .json_data(v)
            .map_err(axum::Error::new)
    };
    let stop = app.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (rx, Some(first), None::<switchboard_proto::watch::PoolEvent>),
        move |(mut rx, pending, last)| {
            let (name, stop) = (name.clone(), stop.clone());
            async move {
                if let Some(v) = pending {
                    return Some((event(&v), (rx, None, Some(v))));
                }
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        r = rx.changed() => if r.is_err() { return None },
                    }
                    // At most one event a second: changes in between are folded into the next.
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                    let v = pool_view(&rx.borrow_and_update(), &name)?;
                    if last.as_ref() != Some(&v) {
                        return Some((event(&v), (rx, None, Some(v))));
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response())
}

// ----- Kubernetes sessions -----

/// Start (or get) a user's session pod.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeStartRequest {
    /// The user.
    pub user: String,
    /// The session type (a template name).
    pub session_type: String,
}

/// A ready session pod.
#[derive(Debug, Serialize, ToSchema)]
pub struct KubeTarget {
    /// Pod name.
    pub pod: String,
    /// Pod IP and session port.
    pub address: String,
}

/// A session of a Kubernetes pool (a pod).
#[derive(Debug, Serialize, ToSchema)]
pub struct KubeSession {
    /// Pod name.
    pub pod: String,
    /// User.
    pub user: String,
    /// Session type.
    pub session_type: String,
    /// `ready`, `scheduling`, `pulling`, `starting`, `broken` or `stopping`.
    pub state: String,
    /// Clients connected through the gateway.
    pub connections: u32,
    /// Created (seconds since the epoch).
    pub created: Option<u64>,
    /// No client since (seconds since the epoch).
    pub disconnected_since: Option<u64>,
}

fn kube_pool<'a>(app: &'a App, pool: &str) -> Result<&'a crate::kubernetes::KubePool, ApiError> {
    app.kube.get(pool).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no Kubernetes pool {pool:?}"),
        )
    })
}

/// The sessions (pods) of a Kubernetes pool, from the broker's pod cache.
#[utoipa::path(get, path = "/api/v1/kubernetes/{pool}/sessions", params(("pool" = String, Path, description = "Kubernetes pool")),
    responses((status = 200, body = [KubeSession]), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_kube_sessions(
    State(app): State<App>,
    Path(pool): Path<String>,
) -> Result<Json<Vec<KubeSession>>, ApiError> {
    let p = kube_pool(&app, &pool)?;
    Ok(Json(
        p.lifecycle
            .sessions()
            .into_iter()
            .map(|s| KubeSession {
                pod: s.pod,
                user: s.user,
                session_type: s.session_type,
                state: s.state,
                connections: s.connections,
                created: s.created,
                disconnected_since: s.disconnected_since,
            })
            .collect(),
    ))
}

/// Start or get a user's session pod: a ready pod at once; else the pod is created from its
/// template (user, then group, then default) and watched until Ready. Concurrent requests for
/// the same user and type share one start. With `Accept: text/event-stream` the answer is a stream
/// of `progress` events (looking, creating, replacing, waiting with the stage) ending with one
/// `ready` or `failed` event; otherwise the call waits for the outcome.
#[utoipa::path(post, path = "/api/v1/kubernetes/{pool}/sessions", params(("pool" = String, Path, description = "Kubernetes pool")),
    request_body = KubeStartRequest,
    responses((status = 200, body = KubeTarget, description = "ready (or text/event-stream of progress)"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 504, body = ErrorBody)),
    security(("bearer" = [])))]
async fn start_kube_session(
    State(app): State<App>,
    Extension(actor): Extension<Actor>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    let body = body_bytes(body)?;
    let req: KubeStartRequest = parse_body(&headers, &body)?;
    if !switchboard_auth::valid_user(&req.user) {
        return Err(ApiError::bad_request("invalid user name"));
    }
    let p = kube_pool(&app, &pool)?;
    let target = format!("{pool}/{}/{}", req.user, req.session_type);
    let handle = match p.start(&req.user, &req.session_type).await {
        Ok(h) => h,
        Err(e) => {
            let err = refused_error(&e);
            audit(&app, &actor, "start pod", &target, &Err(err.clone())).await;
            return Err(err);
        }
    };
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if sse {
        use futures_util::StreamExt;
        let stream =
            crate::kubernetes::progress_events(handle, app.shutdown.clone()).map(|(name, p)| {
                SseEvent::default()
                    .event(name)
                    .json_data(&p)
                    .map_err(axum::Error::new)
            });
        // Audited beside the stream, not before it: the first progress events must not wait
        // for the audit writer's commit (a fast start would be seen only as `ready`).
        let (app, actor, target) = (app.clone(), actor.clone(), target.clone());
        tokio::spawn(async move {
            audit(&app, &actor, "start pod", &target, &Ok(())).await;
        });
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
            .into_response());
    }
    let r = handle.wait().await;
    let outcome = r.as_ref().map(drop).map_err(start_error);
    audit(&app, &actor, "start pod", &target, &outcome).await;
    let t = r.map_err(|e| start_error(&e))?;
    Ok(Json(KubeTarget {
        pod: t.pod,
        address: t.address.to_string(),
    })
    .into_response())
}

/// Log off a user's session pod (delete it).
#[utoipa::path(delete, path = "/api/v1/kubernetes/{pool}/sessions/{user}/{session_type}",
    params(("pool" = String, Path, description = "Kubernetes pool"), ("user" = String, Path, description = "User"),
        ("session_type" = String, Path, description = "Session type")),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn end_kube_session(
    State(app): State<App>,
    Extension(actor): Extension<Actor>,
    Path((pool, user, session_type)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let p = kube_pool(&app, &pool)?;
    let target = format!("{pool}/{user}/{session_type}");
    let r = match p.backend().delete(&user, &session_type).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no session pod for {target}"),
        )),
        Err(e) => Err(start_error(&e)),
    };
    audit(&app, &actor, "delete pod", &target, &r).await;
    r.map(|()| StatusCode::NO_CONTENT)
}

// ----- sessions -----

/// Place a session: the user's live session in the pool if there is one, else a reservation on
/// the best host. Asking again while the reservation lives returns the same one.
#[utoipa::path(post, path = "/api/v1/sessions", request_body = PlaceRequest,
    responses((status = 200, body = PlaceResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn place(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PlaceResponse>, ApiError> {
    let req: PlaceRequest = parse_body(&headers, &body_bytes(body)?)?;
    // Without an explicit client address, the caller's own (through trusted proxies) is used.
    let client = req
        .client_addr
        .unwrap_or_else(|| client_ip(peer.ip(), &headers, &app.trusted_proxies));
    let p = app.engine.place(req.user, req.pool, Some(client)).await?;
    tracing::info!(user = %p.user, pool = %p.pool, host = %p.host, id = p.id.0, reason = %p.reason, "placed");
    let (resumed, state) = match p.outcome {
        PlacementOutcome::Resumed(s) => (true, s.as_str().to_owned()),
        PlacementOutcome::Reserved | PlacementOutcome::ExistingReservation => {
            (false, "reserved".to_owned())
        }
    };
    Ok(Json(PlaceResponse {
        id: p.id.0,
        host: p.host.to_string(),
        address: p.address.host_str(),
        port: p.address.port,
        resumed,
        state,
        expires_at: p.expires_at.map(|t| t.0),
        reason: p.reason.to_string(),
    }))
}

async fn session_info(app: &App, id: SessionId) -> Result<SessionInfo, ApiError> {
    app.engine
        .query(move |s| {
            s.session(id)
                .map(SessionInfo::from)
                .or_else(|| s.reservation(id).map(SessionInfo::from))
        })
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("session {id} not found"),
            )
        })
}

/// Confirm a reservation: it becomes a running session (agents do this by reporting the session;
/// agentless integrations call this). Confirming twice is harmless.
#[utoipa::path(post, path = "/api/v1/sessions/{id}/confirm", params(("id" = u64, Path, description = "Reservation id")),
    request_body(content = ConfirmRequest, description = "Optional"),
    responses((status = 200, body = SessionInfo), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn confirm(
    State(app): State<App>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SessionInfo>, ApiError> {
    let id = session_id(&raw)?;
    let body = body_bytes(body)?;
    let req: ConfirmRequest = if body.is_empty() {
        ConfirmRequest::default()
    } else {
        parse_body(&headers, &body)?
    };
    let events = app
        .engine
        .apply(Command::Confirm {
            id,
            backend_id: req.backend_id,
            starting: req.starting,
        })
        .await?;
    // The committed record is in the events; only a repeated confirm needs to look it up.
    let started = events.into_iter().find_map(|e| match e {
        Event::SessionStarted(s) => Some(SessionInfo::from(s)),
        _ => None,
    });
    match started {
        Some(info) => Ok(Json(info)),
        None => session_info(&app, id).await.map(Json),
    }
}

/// One session or reservation.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", params(("id" = u64, Path, description = "Session id")),
    responses((status = 200, body = SessionInfo), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_session(
    State(app): State<App>,
    Path(raw): Path<String>,
) -> Result<Json<SessionInfo>, ApiError> {
    session_info(&app, session_id(&raw)?).await.map(Json)
}

/// End a session (or give a reservation back). A session on an agent host is terminated through
/// its agent (logged off with `grace`, in seconds, when given): the answer is 202 with state
/// `ending`, and the session ends when the agent reports it gone. Other sessions end at once (200).
#[utoipa::path(delete, path = "/api/v1/sessions/{id}", params(("id" = u64, Path, description = "Session id"), EndParams),
    responses((status = 200, body = SessionInfo), (status = 202, body = SessionInfo), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody), (status = 504, body = ErrorBody)),
    security(("bearer" = [])))]
async fn end_session(
    State(app): State<App>,
    Extension(actor): Extension<Actor>,
    Path(raw): Path<String>,
    q: Result<Query<EndParams>, axum::extract::rejection::QueryRejection>,
) -> Result<(StatusCode, Json<SessionInfo>), ApiError> {
    let grace = query(q)?.grace;
    let id = session_id(&raw)?;
    let mut info = session_info(&app, id).await?;
    let how = grace.map_or(Termination::Terminate, Termination::Logoff);
    let ended = app
        .actions
        .end_session(&actor, id, how)
        .await
        .map_err(ApiError::from)?;
    Ok(match ended {
        Ended::ByAgent(_) => {
            info.state = "ending".to_owned();
            (StatusCode::ACCEPTED, Json(info))
        }
        Ended::Record | Ended::Released => {
            info.state = "ended".to_owned();
            (StatusCode::OK, Json(info))
        }
    })
}

/// A newly issued agent credential.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialInfo {
    /// The host it is for.
    pub host: String,
    /// The credential. Shown only now: the broker keeps only its hash. Put it in the agent's
    /// credential file (mode 0600).
    pub credential: String,
}

/// Issue an agent credential for a host, replacing (and disconnecting) any earlier one.
#[utoipa::path(post, path = "/api/v1/hosts/{name}/credentials", params(("name" = String, Path, description = "Host name")),
    responses((status = 201, body = CredentialInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn enroll_host(
    State(app): State<App>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<CredentialInfo>), ApiError> {
    let credential = app
        .actions
        .enroll(&actor, &name)
        .await
        .map_err(ApiError::from)?;
    Ok((
        StatusCode::CREATED,
        Json(CredentialInfo {
            host: name,
            credential,
        }),
    ))
}

/// Revoke a host's agent credential and drop its link.
#[utoipa::path(delete, path = "/api/v1/hosts/{name}/credentials", params(("name" = String, Path, description = "Host name")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn revoke_host(
    State(app): State<App>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.actions
        .revoke(&actor, &name)
        .await
        .map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// List live sessions, filtered, by id.
#[utoipa::path(get, path = "/api/v1/sessions", params(SessionFilter),
    responses((status = 200, body = SessionPage), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_sessions(
    State(app): State<App>,
    q: Result<Query<SessionFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionPage>, ApiError> {
    let f = query(q)?;
    let limit = page_limit(f.limit)?;
    let after = match &f.cursor {
        Some(c) => Some(session_id(c).map_err(|_| ApiError::bad_request("invalid cursor"))?),
        None => None,
    };
    let state = match f.state.as_deref() {
        None => None,
        Some(s) => Some(parse_state(s)?),
    };
    let (user, host, pool) = (f.user, f.host, f.pool);
    let (items, more) = app
        .engine
        .query(move |s| {
            let keep = |r: &SessionRecord| {
                after.is_none_or(|a| r.id > a)
                    && state.is_none_or(|st| r.state == st)
                    && host.as_deref().is_none_or(|h| &*r.host == h)
                    && pool.as_deref().is_none_or(|p| r.pool.as_deref() == Some(p))
                    && user.as_deref().is_none_or(|u| &*r.user == u)
            };
            // Use the user or host index when the filter names one; else scan.
            let mut found: Vec<SessionRecord> = match (&user, &host) {
                (Some(u), _) => s
                    .sessions_of_user(u)
                    .into_iter()
                    .filter(|r| keep(r))
                    .collect(),
                (None, Some(h)) => s
                    .sessions_on_host(h)
                    .into_iter()
                    .filter(|r| keep(r))
                    .collect(),
                (None, None) => {
                    // Keep only the `limit + 1` smallest ids: a page never sorts the cluster.
                    let mut heap = std::collections::BinaryHeap::new();
                    for r in s.sessions().filter(|r| keep(r)) {
                        heap.push(HeapById(r));
                        if heap.len() > limit + 1 {
                            heap.pop();
                        }
                    }
                    heap.into_iter().map(|h| h.0).collect()
                }
            };
            found.sort_by_key(|r| r.id);
            let more = found.len() > limit;
            found.truncate(limit);
            (found, more)
        })
        .await?;
    let next_cursor = more
        .then(|| items.last().map(|r| r.id.0.to_string()))
        .flatten();
    Ok(Json(SessionPage {
        items: items.into_iter().map(SessionInfo::from).collect(),
        next_cursor,
    }))
}

struct HeapById(SessionRecord);
impl PartialEq for HeapById {
    fn eq(&self, o: &Self) -> bool {
        self.0.id == o.0.id
    }
}
impl Eq for HeapById {}
impl PartialOrd for HeapById {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for HeapById {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&o.0.id)
    }
}

fn parse_state(s: &str) -> Result<SessionState, ApiError> {
    match s.parse() {
        Ok(SessionState::Ended) => Err(ApiError::bad_request(
            "ended sessions are not listed here; only live ones are",
        )),
        Ok(state) => Ok(state),
        Err(e) => Err(ApiError::bad_request(e)),
    }
}

/// Dry-run a placement: every host of the pool with its score or why it is excluded.
#[utoipa::path(get, path = "/api/v1/placements/explain", params(ExplainParams),
    responses((status = 200, description = "The explanation", body = Object), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn explain(
    State(app): State<App>,
    q: Result<Query<ExplainParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = query(q)?;
    let e = app
        .engine
        .query(move |s| s.explain(&p.user, &p.pool))
        .await?
        .map_err(|e| ApiError::from(EngineError::Core(e)))?;
    serde_json::to_value(e)
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// Audit parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Newest records to return, 1–1000 (default 100).
    pub limit: Option<usize>,
    /// The next page: records older than the one with this id (the last `id` of a page).
    pub before: Option<String>,
}

/// One audit record.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditInfo {
    /// The record's id (pass the last one as `before` for the next page).
    pub id: String,
    /// When (ms since the epoch).
    pub at: u64,
    /// Who (token name).
    pub actor: String,
    /// From which surface.
    pub surface: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// How it went.
    pub result: String,
}

/// The newest operator actions, newest first; `before` pages on.
#[utoipa::path(get, path = "/api/v1/audit", params(AuditParams),
    responses((status = 200, body = Vec<AuditInfo>), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
async fn audit_log(
    State(app): State<App>,
    q: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditInfo>>, ApiError> {
    let q = query(q)?;
    let limit = page_limit(q.limit)?;
    if q.before
        .as_ref()
        .is_some_and(|b| b.is_empty() || b.len() > 64)
    {
        return Err(ApiError::bad_request(
            "before: a record id from an earlier page",
        ));
    }
    let records = app
        .store
        .audit(u32::try_from(limit).unwrap_or(100), q.before.as_deref())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            )
        })?;
    Ok(Json(
        records
            .into_iter()
            .map(|r| AuditInfo {
                id: r.id,
                at: r.at.0,
                actor: r.actor,
                surface: r.surface,
                action: r.action,
                target: r.target,
                result: r.result,
            })
            .collect(),
    ))
}

// ----- middleware -----

/// Requires a known bearer token; read-only tokens may only read.
async fn require_token(State(app): State<App>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = presented.and_then(|t| app.tokens.check(t)) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer TOKEN)",
        )
        .into_response();
    };
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if token.access == Access::ReadOnly && !reads {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {:?} is read-only", token.name),
        )
        .into_response();
    }
    let mut req = req;
    req.extensions_mut()
        .insert(Actor::new(Surface::Api, token.name));
    next.run(req).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<App>) -> Response {
    // Answered within 2 s whatever the store does (a health checker must not hang on it): not
    // ready at once while the engine rebuilds, and a ping that takes longer counts as down.
    let engine_ready = app.engine.snapshot().ready;
    let store_ready = engine_ready
        && tokio::time::timeout(std::time::Duration::from_secs(2), app.store.ping())
            .await
            .is_ok_and(|r| r.is_ok());
    if engine_ready && store_ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the store is not answering",
        )
        .into_response()
    }
}

async fn metrics(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if !app.public_metrics && !client_ip(peer.ip(), &headers, &app.trusted_proxies).is_loopback() {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "/metrics answers loopback clients only; set http.public_metrics = true to change that",
        )
        .into_response();
    }
    let body = crate::metrics::handle().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The answer for a path nothing serves.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The answer for a method a path does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Switchboard API", description = "Session broker and load balancer for Linux remote-desktop and login clusters."),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;
impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API routes and their OpenAPI document, from one registration.
pub fn api_routes() -> (Router<App>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_hosts))
        .routes(routes!(get_host))
        .routes(routes!(drain_host))
        .routes(routes!(undrain_host))
        .routes(routes!(offline_host))
        .routes(routes!(online_host))
        .routes(routes!(set_weight))
        .routes(routes!(list_pools))
        .routes(routes!(watch_pool))
        .routes(routes!(place, list_sessions))
        .routes(routes!(confirm))
        .routes(routes!(get_session, end_session))
        .routes(routes!(explain))
        .routes(routes!(audit_log))
        .routes(routes!(enroll_host, revoke_host))
        .routes(routes!(list_kube_sessions, start_kube_session))
        .routes(routes!(end_kube_session))
        .split_for_parts()
}

/// The REST API with its bearer-token check, its OpenAPI document, health, readiness and metrics.
pub fn routes(app: App) -> Router {
    let (api, doc) = api_routes();
    let doc = Arc::new(doc);
    let api = api.route_layer(axum::middleware::from_fn_with_state(
        app.clone(),
        require_token,
    ));
    Router::new()
        .merge(api)
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json((*doc).clone()) }
            }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(app)
}
