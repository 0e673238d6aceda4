//! The broker's integration tests share testkit's in-process broker (`testkit::broker`).
#![allow(unused_imports)]

pub use switchboard_testkit::broker::{
    AgentGuard, BrokerBuilder, Ctl, Host, Pool, TestBroker, assert_error, pools_toml,
};
