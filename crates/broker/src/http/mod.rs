//! The broker's HTTP listener and the frontends on it.
//!
//! # Layout
//! - [`router`]: the listener's router: the frontends' routes, health, metrics, the body limit
//!   and per-route latency.
//! - [`api`]: the REST API under `/api/v1`.
//! - [`x2go`]: the X2Go broker frontend (`/plain/`, `/json/`).
//! - [`ui`]: the web dashboard (`/ui/`).
//!
//! This module holds what the frontends share ([`AppState`], [`client_ip`]); they never import
//! each other, and only [`router`] knows all of them.

pub mod api;
pub mod router;
pub mod ui;
pub mod x2go;

use crate::engine::EngineHandle;
use crate::tokens::Tokens;
use axum::extract::{MatchedPath, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use std::net::IpAddr;
use std::sync::Arc;
use switchboard_store::SqlStore;
use tokio::time::Instant;

/// What every frontend on the HTTP listener can reach.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: EngineHandle,
    /// Links to agents (commands such as terminate go through them).
    pub agents: crate::agents::AgentHub,
    /// Operator actions (every change an operator asks for goes through them).
    pub actions: crate::actions::Actions,
    /// Accepted bearer tokens.
    pub tokens: Arc<Tokens>,
    /// The store, for readiness and the audit log.
    pub store: Arc<SqlStore>,
    /// Whether `/metrics` answers non-loopback clients.
    pub public_metrics: bool,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Arc<Vec<IpAddr>>,
    /// Ends long-lived responses (pool watch streams) when the broker stops.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Kubernetes pools.
    pub kube: crate::kubernetes::KubePools,
}

/// The address a request came from: the peer, or, when the peer is a trusted proxy, the last
/// address in X-Forwarded-For that is not a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|a| !trusted.contains(a))
        .unwrap_or(peer)
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("tokens", &self.tokens.len())
            .field("public_metrics", &self.public_metrics)
            .finish_non_exhaustive()
    }
}

/// Records latency by route.
pub(crate) async fn record_http(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    crate::metrics::http(&route, &method, resp.status().as_u16(), started.elapsed());
    resp
}
