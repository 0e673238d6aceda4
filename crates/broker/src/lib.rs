//! The Switchboard broker: the engine that owns the core state, the HTTP routers (REST API, X2Go,
//! dashboard), the agent listener, the management socket and metrics.
//!
//! Nothing is here yet; the broker issue fills it.
