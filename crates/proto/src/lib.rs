//! Switchboard wire formats, as pure parse/format code separate from sockets.
//!
//! # Layout
//! Nothing is here yet. This crate will hold the agent messages and their framing, the management
//! line protocol, the X2Go plain/JSON bodies and the `ipvsadm -R` text, each with a size limit and a
//! fuzz target. Until then the crate only anchors the workspace layout described in DESIGN.md.
