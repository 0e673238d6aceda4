//! TCP probes of agentless hosts configured with `probe = true`.
//!
//! Every interval each such host's client address gets a TCP connect with a timeout; the result
//! goes to the engine as `ReportProbe`. A failed probe marks the host unreachable and penalizes it;
//! the next good one brings it back. Probes run concurrently, so one dead host never delays the
//! others.

use crate::engine::EngineHandle;
use std::time::Duration;
use switchboard_core::Command;
use switchboard_core::config::HostAddr;
use tokio_util::sync::CancellationToken;

/// Default TCP probe interval for agentless hosts with `probe = true`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default TCP probe timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often and how patiently hosts are probed (`[probe]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Time between probes of a host.
    pub interval: Duration,
    /// Connect timeout of one probe.
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Starts probing the configured hosts (hosts added by a reload are picked up from the snapshot).
pub fn spawn(engine: EngineHandle, config: Config, shutdown: CancellationToken) {
    let Config { interval, timeout } = config;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let targets: Vec<(String, String, u16)> = engine
                .snapshot()
                .hosts
                .iter()
                .filter(|h| h.probe && !h.agent)
                .map(|h| (h.name.clone(), h.address.clone(), h.port))
                .collect();
            let mut set = tokio::task::JoinSet::new();
            for (name, addr, port) in targets {
                let engine = engine.clone();
                set.spawn(async move {
                    let ok = probe(&addr, port, timeout).await;
                    let _ = engine.apply(Command::ReportProbe { host: name, ok }).await;
                });
            }
            while set.join_next().await.is_some() {}
        }
    });
}

/// One TCP connect, bounded by `timeout`.
pub async fn probe(host: &str, port: u16, timeout: Duration) -> bool {
    let target = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => HostAddr::ip(ip, port).to_string(),
        Err(_) => format!("{host}:{port}"),
    };
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await,
        Ok(Ok(_))
    )
}
