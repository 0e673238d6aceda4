//! The Switchboard agent: load sampling, session discovery, command execution and the link to the
//! broker, plus a simulation mode.
//!
//! # Layout
//! - [`config`]: the agent's TOML configuration.
//! - [`host`]: the agent on a real host: sampling, sources, commands.
//! - [`link`]: the TLS link to the broker (hello, heartbeats, reconnects, commands).
//! - [`load`]: load from /proc.
//! - [`sources`]: where sessions come from (x2go, logind, xpra, a site command).
//! - [`authkeys`]: X2Go autologin keys in users' authorized-keys files.
//! - [`sim`]: many simulated hosts in one process.

pub mod authkeys;
pub mod config;
pub mod host;
pub mod link;
pub mod load;
pub mod sim;
pub mod sources;
