//! The Switchboard agent: load sampling, session discovery, command execution and the link to the
//! broker, plus a simulation mode.
//!
//! Nothing is here yet; the agent issue fills it.
