//! The HTTP listener's router: every frontend's routes on one listener, with the body limit, the
//! JSON fallbacks and per-route latency around them.

use super::AppState;
use super::ui::Ui;
use super::x2go::X2go;
use super::{api, ui, x2go};
use axum::Router;
use axum::extract::DefaultBodyLimit;

/// The whole HTTP application: the REST API, the X2Go frontend when configured, the dashboard.
pub fn router(app: AppState, dashboard: Ui, x2go_frontend: Option<X2go>) -> Router {
    let x2go_routes = match x2go_frontend {
        Some(x) => x2go::routes(app.clone(), x),
        None => Router::new(),
    };
    Router::new()
        .merge(api::routes(app.clone()))
        .merge(x2go_routes)
        .merge(ui::routes(app, dashboard))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn(super::record_http))
        .layer(DefaultBodyLimit::max(api::MAX_BODY))
}
