//! Following broker pools: for each service with `pool = "NAME"`, the director reads the broker's
//! change stream `GET /api/v1/pools/NAME/watch` (server-sent events, one `pool` event with the
//! pool's whole view at connect time and after every change) and turns the pool's hosts into the
//! service's backends: the host's address at the service's `port`, its weight, drained while the
//! host is draining or offline, down while the broker sees its agent as down.
//!
//! When the broker is away (connection refused, stream ended, bad event), the service keeps
//! balancing on the last view it had, and the stream is retried with a backoff from 1 s up to
//! 30 s. Backends are never emptied because the broker is unreachable.

use crate::Director;
use crate::config::{Backends, BrokerConfig};
use crate::service::BackendSpec;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;
use switchboard_proto::watch::PoolEvent;
use tokio_util::sync::CancellationToken;

/// The watch stream's wire types (defined in `switchboard_proto::watch`, shared with the
/// broker), re-exported under the names the director's public API has always had.
pub use switchboard_proto::watch::{PoolEvent as PoolView, PoolHost, SseParser};

/// The followers of pool-backed services, one task per service.
#[derive(Debug)]
pub struct Followers {
    client: reqwest::Client,
    token: String,
    url: String,
    shutdown: CancellationToken,
    /// Service name → (pool, port, stop).
    tasks: std::sync::Mutex<std::collections::BTreeMap<String, (String, u16, CancellationToken)>>,
}

impl Followers {
    /// Reads the token and builds the HTTP client; follows nothing yet.
    pub fn new(broker: &BrokerConfig, shutdown: CancellationToken) -> Result<Followers, String> {
        let token = std::fs::read_to_string(&broker.token_file)
            .map_err(|e| format!("[broker] token_file {}: {e}", broker.token_file.display()))?
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(format!(
                "[broker] token_file {} is empty",
                broker.token_file.display()
            ));
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Duration::from_secs(30));
        if let Some(ca) = &broker.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| format!("[broker] ca_file {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("[broker] ca_file {}: {e}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Followers {
            client,
            token,
            url: broker.url.clone(),
            shutdown,
            tasks: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    /// Follows exactly the pool-backed services of `services`: starts followers for new ones
    /// (or ones whose pool or port changed) and stops those of services gone or no longer
    /// following a pool.
    pub fn sync(&self, director: &Director, services: &[crate::config::ServiceConfig]) {
        let mut tasks = crate::lock(&self.tasks);
        let wanted: std::collections::BTreeMap<String, (String, u16)> = services
            .iter()
            .filter_map(|s| match &s.backends {
                Backends::Pool { name, port } => Some((s.name.clone(), (name.clone(), *port))),
                Backends::Static(_) => None,
            })
            .collect();
        tasks.retain(|service, (pool, port, stop)| {
            let keep = wanted.get(service) == Some(&(pool.clone(), *port));
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (service, (pool, port)) in wanted {
            if tasks.contains_key(&service) {
                continue;
            }
            let stop = self.shutdown.child_token();
            let (d, c, t) = (director.clone(), self.client.clone(), self.token.clone());
            let url = format!("{}/api/v1/pools/{}/watch", self.url, pool);
            let (svc, st) = (service.clone(), stop.clone());
            tokio::spawn(async move { follow(d, c, url, t, svc, port, st).await });
            tasks.insert(service, (pool, port, stop));
        }
    }
}

async fn follow(
    director: Director,
    client: reqwest::Client,
    url: String,
    token: String,
    service: String,
    port: u16,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let r = tokio::select! {
            () = shutdown.cancelled() => return,
            r = stream(&director, &client, &url, &token, &service, port) => r,
        };
        let mut seen = false;
        match &r {
            Ok(events) => {
                seen = *events;
                tracing::warn!(service = %service, url = %url, "broker watch stream ended; keeping the last view");
            }
            Err(e) => {
                tracing::warn!(service = %service, url = %url, error = %e, "broker watch failed; keeping the last view")
            }
        }
        if seen {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The broker sends a comment every 15 s: silence for this long means it is gone without a FIN
/// (a dead peer, a dropped route), and the stream is opened again.
const SILENCE: Duration = Duration::from_secs(45);

/// The next chunk of `resp`, or an error after `silence` without one.
async fn next_chunk(
    resp: &mut reqwest::Response,
    silence: Duration,
) -> Result<Option<bytes::Bytes>, String> {
    tokio::time::timeout(silence, resp.chunk())
        .await
        .map_err(|_| format!("no data from the broker for {} s", silence.as_secs_f32()))?
        .map_err(|e| e.to_string())
}

async fn stream(
    director: &Director,
    client: &reqwest::Client,
    url: &str,
    token: &str,
    service: &str,
    port: u16,
) -> Result<bool, String> {
    let mut resp = client
        .get(url)
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!(
            "HTTP {status}: {}",
            body.chars().take(300).collect::<String>()
        ));
    }
    tracing::info!(service = %service, url = %url, "following the broker pool");
    let mut parser = SseParser::default();
    let mut seen = false;
    while let Some(chunk) = next_chunk(&mut resp, SILENCE).await? {
        for (event, data) in parser.push(&chunk)? {
            if event != "pool" {
                continue;
            }
            let view: PoolEvent =
                serde_json::from_str(&data).map_err(|e| format!("bad pool event: {e}"))?;
            apply(director, service, port, &view)?;
            seen = true;
        }
    }
    Ok(seen)
}

/// Applies a pool view to `service`.
pub(crate) fn apply(
    director: &Director,
    service: &str,
    port: u16,
    view: &PoolEvent,
) -> Result<(), String> {
    let s = director
        .service(service)
        .ok_or_else(|| format!("service {service:?} is gone"))?;
    let max_conn = s.config().max_conn;
    let mut specs = Vec::new();
    let mut flags = Vec::new();
    for h in &view.hosts {
        let Ok(ip) = h.address.parse::<IpAddr>() else {
            tracing::warn!(service = %service, host = %h.name, address = %h.address, "host address is not an IP literal; skipped");
            continue;
        };
        let addr = SocketAddr::new(ip, port);
        if specs.iter().any(|b: &BackendSpec| b.addr == addr) {
            continue;
        }
        specs.push(BackendSpec {
            addr,
            weight: h.weight.min(crate::config::MAX_WEIGHT),
            max_conn,
        });
        flags.push((
            addr,
            h.admin != "online",
            h.health == "unreachable" || h.admin == "offline",
        ));
    }
    director.set_backends(&s, &specs);
    s.synced.store(true, Ordering::Relaxed);
    for (addr, drain, down) in flags {
        if let Some(b) = s.backend(addr) {
            b.broker_drain.store(drain, Ordering::Relaxed);
            b.broker_down.store(down, Ordering::Relaxed);
        }
    }
    tracing::debug!(service = %service, pool = %view.pool, hosts = view.hosts.len(), "pool view applied");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_silent_stream_is_given_up_after_the_silence_limit() {
        use tokio::io::AsyncWriteExt;
        // A server that answers, sends one keep-alive comment, then says nothing and keeps the
        // connection open (a broker gone without a FIN).
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n6\r\n: hi\n\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut resp = reqwest::Client::new()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap();
        let silence = Duration::from_millis(300);
        let first = next_chunk(&mut resp, silence).await.unwrap();
        assert_eq!(first.as_deref(), Some(&b": hi\n\n"[..]));
        let started = tokio::time::Instant::now();
        let err = next_chunk(&mut resp, silence).await.unwrap_err();
        assert!(err.contains("no data from the broker"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "given up after the limit, not at the server's close"
        );
        assert_eq!(
            SILENCE,
            Duration::from_secs(45),
            "three missed 15 s keep-alives"
        );
        server.abort();
    }
}
