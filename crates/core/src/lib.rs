//! Switchboard's core: the cluster state, the rules about it, and placement. Pure and synchronous:
//! no tokio, no clock (time is passed in), no I/O, seeded randomness.
//!
//! # Layout
//! - [`model`]: hosts, pools, sessions, reservations, load reports, settings.
//! - [`command`] and [`event`]: what can be asked, and what changed.
//! - [`state`]: [`ClusterState`], whose [`ClusterState::apply`] is the only mutator, plus queries;
//!   one file per aggregate (hosts, agent reports, pools, reservations, sessions, queries,
//!   invariants).
//! - [`placement`]: the placement rules. `eligibility.rs` says which hosts may take a new session
//!   or resume one (the drain rule); `members.rs` keeps each pool's members in the pool's index
//!   (`index.rs`); `choose.rs` is the host choice of every policy (`wlc`'s quota method, `rr`,
//!   interleaved `wrr`, `two-choices`); [`placement::score`] holds the scoring formulas, and
//!   `placement/mod.rs` the reason attached to every decision.
//! - [`policy`]: placement policy identifiers (`rr`, `wrr`, `lc`, `wlc`, `sed`, `least-load`,
//!   `two-choices`, `x2go-load`).
//! - [`schedule`]: L4 schedulers for the director, with IPVS semantics; `schedule/rotation.rs`
//!   holds the interleaved-WRR step that placement's `wrr` shares.
//! - [`ipvs`]: the kernel IPVS table as typed data, and the diff that never deletes a real server
//!   with live connections.
//! - [`config`]: conventions every config file shares (durations, `host:port`).
//! - [`time`]: the core's notion of time.

pub mod command;
pub mod config;
pub mod error;
pub mod event;
pub mod ipvs;
pub mod model;
pub mod placement;
pub mod policy;
pub mod schedule;
pub mod state;
mod table;
pub mod time;

pub use command::Command;
pub use error::CoreError;
pub use event::{Event, Placement, PlacementOutcome};
pub use model::{
    AdminState, Health, HostSpec, LoadReport, PoolOptions, PoolSpec, SessionId, SessionState,
    Settings,
};
pub use policy::Policy;
pub use state::ClusterState;
pub use time::Millis;
