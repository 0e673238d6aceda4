//! Switchboard wire formats, as pure parse/format code separate from sockets.
//!
//! # Layout
//! - [`agent`]: the messages between an agent and the broker and their framing (length-delimited
//!   JSON, at most 1 MiB a frame, versioned hello).
//!
//! Still to come here: the management line protocol, the X2Go plain/JSON bodies and the
//! `ipvsadm -R` text. Each gets a size limit and a fuzz target.

pub mod agent;
