//! Switchboard wire formats, as pure parse/format code separate from sockets.
//!
//! # Layout
//! - [`agent`]: the messages between an agent and the broker and their framing (length-delimited
//!   JSON, at most 1 MiB a frame, versioned hello).
//! - [`mgmt`]: the management socket's line protocol (at most 4 KiB a line).
//!
//! Still to come here: the X2Go plain/JSON bodies and the `ipvsadm -R` text. Each gets a size
//! limit and a fuzz target.

pub mod agent;
pub mod mgmt;
