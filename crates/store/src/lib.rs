//! Switchboard's durable store: a `Store` trait with one sqlx `Any` implementation for SQLite and
//! PostgreSQL, and its migrations.
//!
//! Nothing is here yet; the broker issue fills it.
