//! Shared test harness: stores on both backends, fixtures.
//!
//! # Layout
//! - [`store`]: a fresh SQLite store in a temp dir, and a fresh PostgreSQL database on the server
//!   the test script started (`SWITCHBOARD_TEST_POSTGRES_URL`).

pub mod store;
