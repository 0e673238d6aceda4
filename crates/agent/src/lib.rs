//! The Switchboard agent: load sampling, session discovery, command execution and the link to the
//! broker, plus a simulation mode.

pub mod authkeys;
pub mod load;
pub mod sources;
