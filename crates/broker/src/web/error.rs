//! Errors as the HTTP surfaces send them: [`ApiError`] (status, stable code, message) and its
//! JSON body, and the one mapping from engine, agent and Kubernetes errors to codes, shared by
//! the REST API, the dashboard and the gateway.

use crate::actions::ActionError;
use crate::agents::CommandError;
use crate::engine::EngineError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An API error: status, stable code, human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// A 400 with code `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code (`not_found`, `bad_request`, `unauthorized`, …).
    pub code: String,
    /// What happened, for people.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ActionError> for ApiError {
    fn from(e: ActionError) -> ApiError {
        let code = e.code();
        ApiError::new(status_of(code), code, e.message())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        ActionError::Engine(e).into()
    }
}

/// The HTTP status of an action's error code (the codes themselves are
/// [`ActionError::code`]'s: one table for the API and the audit log).
fn status_of(code: &str) -> StatusCode {
    match code {
        "not_found" => StatusCode::NOT_FOUND,
        "user_limit" | "conflict" | "bad_transition" | "partial" => StatusCode::CONFLICT,
        "bad_request" => StatusCode::BAD_REQUEST,
        "no_host_available" | "store_unavailable" | "shutting_down" | "agent_unavailable" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "agent_timeout" => StatusCode::GATEWAY_TIMEOUT,
        "agent_failed" => StatusCode::BAD_GATEWAY,
        "agent_unsupported" => StatusCode::NOT_IMPLEMENTED,
        "kubernetes_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The API error for a failed start.
pub fn start_error(e: &switchboard_k8s::StartError) -> ApiError {
    use switchboard_k8s::StartError as E;
    let (status, code) = match e {
        E::Template { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "no_template"),
        E::Broken { .. } => (StatusCode::BAD_GATEWAY, "pod_failed"),
        E::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "pod_timeout"),
        E::NotOwner { .. } => (StatusCode::CONFLICT, "pod_not_owned"),
        E::Api { .. } => (StatusCode::SERVICE_UNAVAILABLE, "kubernetes_unavailable"),
    };
    ApiError::new(status, code, e.to_string())
}

/// The API error for a refused start.
pub fn refused_error(e: &crate::kubernetes::Refused) -> ApiError {
    match e {
        crate::kubernetes::Refused::Limit { .. } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "session_limit",
            e.to_string(),
        ),
        crate::kubernetes::Refused::Groups(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "groups_unavailable",
            e.to_string(),
        ),
    }
}

/// The API error for an agent command that failed.
pub fn agent_error(e: CommandError) -> ApiError {
    ActionError::Agent(e).into()
}
