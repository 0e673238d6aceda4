//! The Switchboard director: L4 listeners over the schedulers in `switchboard_core::schedule`,
//! health checks, splice, and the IPVS applier.
//!
//! Nothing is here yet; the director issue fills it.
