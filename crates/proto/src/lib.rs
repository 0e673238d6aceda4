//! Switchboard wire formats, as pure parse/format code separate from sockets.
//!
//! # Layout
//! - [`agent`]: the messages between an agent and the broker and their framing (length-delimited
//!   JSON, at most 1 MiB a frame, versioned hello).
//! - [`mgmt`]: the management socket's line protocol (at most 4 KiB a line).
//! - [`mgmt_socket`]: that protocol's transport on a UNIX socket (peer credentials, bounded
//!   lines, reply forms), shared by the broker and the director; the one module here that does
//!   I/O.
//!
//! - [`x2go`]: X2Go's broker protocol: the session-profiles file and its ACLs, the request form,
//!   the `/plain/` and `/json/` reply bodies.
//!
//! - [`gateway`]: what the broker's gateway reads from request paths and headers (connect tokens
//!   in a path segment, client file paths, the `Origin` check).
//!
//! - [`ipvsadm`]: `ipvsadm` text: the `-S -n` / `-R` rules, the change lines that apply an IPVS
//!   table diff, `--set` timeouts and the `-L -n` connection counters.
//!
//! - [`proxy`]: PROXY protocol version 2, the header the director sends a backend ahead of a
//!   proxied connection, and its incremental parser (at most 552 bytes a header).
//!
//! - [`watch`]: the broker's pool watch stream (`GET /api/v1/pools/{name}/watch`): the `pool`
//!   event the broker sends and the director follows, and the server-sent events parser (at most
//!   4 MiB an event).
//!
//! Each parser has a size limit and a fuzz target.

pub mod agent;
pub mod gateway;
pub mod ipvsadm;
pub mod mgmt;
pub mod mgmt_socket;
pub mod proxy;
pub mod watch;
pub mod x2go;
