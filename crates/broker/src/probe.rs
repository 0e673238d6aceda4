//! TCP probes of agentless hosts configured with `probe = true`.
//!
//! Every interval each such host's client address gets a TCP connect with a timeout; the result
//! goes to the engine as `ReportProbe`. A failed probe marks the host unreachable and penalizes it;
//! the next good one brings it back. Probes run concurrently, so one dead host never delays the
//! others. A probe that fails on this side (no descriptor or buffer free for the socket) gives no
//! verdict: an overloaded broker must not mark healthy hosts unreachable.

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
                    match probe(&addr, port, timeout).await {
                        Some(ok) => {
                            let _ = engine.apply(Command::ReportProbe { host: name, ok }).await;
                        }
                        None => {
                            metrics::counter!("switchboard_probe_no_verdict_total").increment(1);
                            tracing::warn!(host = %name, "probe not made: no socket free on this side; no verdict");
                        }
                    }
                });
            }
            while set.join_next().await.is_some() {}
        }
    });
}

/// One TCP connect, bounded by `timeout`: whether the host answered, or `None` when the connect
/// failed on this side (out of descriptors or buffers), which says nothing of the host.
pub async fn probe(host: &str, port: u16, timeout: Duration) -> Option<bool> {
    let target = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => HostAddr::ip(ip, port).to_string(),
        Err(_) => format!("{host}:{port}"),
    };
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
        Ok(Ok(_)) => Some(true),
        Ok(Err(e)) if local_failure(&e) => None,
        _ => Some(false),
    }
}

/// Errors of the probing side, not of the host.
fn local_failure(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_no_verdict_on_the_host() {
        for errno in [nix::libc::EMFILE, nix::libc::ENFILE] {
            assert!(local_failure(&std::io::Error::from_raw_os_error(errno)));
        }
        for errno in [
            nix::libc::ECONNREFUSED,
            nix::libc::EHOSTUNREACH,
            nix::libc::ETIMEDOUT,
        ] {
            assert!(!local_failure(&std::io::Error::from_raw_os_error(errno)));
        }
    }
}
