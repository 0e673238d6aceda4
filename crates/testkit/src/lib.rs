//! Shared test harness: start a broker and agents in-process, certificates, fixtures, a fake clock.
//!
//! Nothing is here yet beyond what the core tests need; the daemon issues fill it.
