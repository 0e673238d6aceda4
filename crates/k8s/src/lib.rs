//! Switchboard's Kubernetes session backend: a pool of per-user session pods.
//!
//! - [`names`]: deterministic DNS-1123 pod names, labels and annotations;
//! - [`template`]: pod templates per session type (user, then group, then default) and rendering
//!   with a restricted security context;
//! - [`status`]: what a pod's status means for a start (pure);
//! - [`backend`]: start-or-get against the API server, with a watch on readiness;
//! - [`lifecycle`]: idle, disconnected and age log-offs and reconciliation between sessions and
//!   pods (the rules pure, plus the loop that applies them).

pub mod backend;
pub mod lifecycle;
pub mod names;
pub mod status;
pub mod template;

pub use backend::{Backend, PoolSettings, Progress, StartError, StartHandle, Target};
pub use lifecycle::{Lifecycle, Policy};
pub use status::{Budgets, PodState, Stage};
pub use template::{Home, Owner, RenderOptions, TemplateDir};
