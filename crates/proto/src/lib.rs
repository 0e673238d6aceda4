//! Switchboard wire formats, as pure parse/format code separate from sockets.
//!
//! # Layout
//! - [`agent`]: the messages between an agent and the broker and their framing (length-delimited
//!   JSON, at most 1 MiB a frame, versioned hello).
//! - [`mgmt`]: the management socket's line protocol (at most 4 KiB a line).
//!
//! - [`x2go`]: X2Go's broker protocol: the session-profiles file and its ACLs, the request form,
//!   the `/plain/` and `/json/` reply bodies.
//!
//! Still to come here: the `ipvsadm -R` text. Each parser has a size limit and a fuzz target.

pub mod agent;
pub mod mgmt;
pub mod x2go;
