//! What the broker's web surfaces share: the HTTP listener's frontends (REST API, X2Go,
//! dashboard) and the gateway's own listener. It sits below all of them, so neither needs the
//! other.
//!
//! # Layout
//! - [`error`]: [`error::ApiError`] and the mapping of engine, agent and Kubernetes errors.
//! - [`html`]: escaping and the small HTML answers.
//! - [`signin`]: cookie sign-ins (the dashboard's, the gateway's and its connect tokens).
//! - [`serve`]: the one serve loop of every HTTP listener: timeouts, connection caps, shedding.

pub mod error;
pub mod html;
pub mod serve;
pub mod signin;
