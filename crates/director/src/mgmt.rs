//! The director's management socket: the broker's line protocol and transport
//! ([`switchboard_proto::mgmt_socket`]) with the director's commands, for
//! `switchboard ctl --socket /run/switchboard/director.sock …`.
//!
//! `services` and `stats` print the layouts of `ipvsadm -L -n` and `ipvsadm -L -n --stats
//! --rate`, so operators read them as they read IPVS; with `verbose off` the same figures come as
//! JSON. `drain`, `undrain` and `weight` change runtime state, saved in the state file before the
//! reply.

use crate::Director;
use crate::service::{Backend, Service};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use switchboard_proto::mgmt::{DIRECTOR_COMMANDS, table};
use switchboard_proto::mgmt_socket::Reply;

/// Serves the director's commands.
#[derive(Debug)]
pub struct Handler {
    director: Director,
}

impl Handler {
    /// A handler for `director`.
    pub fn new(director: Director) -> Handler {
        Handler { director }
    }
}

impl switchboard_proto::mgmt_socket::Handler for Handler {
    async fn execute(&self, line: String, actor: String) -> Result<Reply, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((cmd, args)) = words.split_first() else {
            return Err("empty command".into());
        };
        let cmd = cmd.to_ascii_lowercase();
        let result = self.run(&cmd, args);
        if matches!(cmd.as_str(), "drain" | "undrain" | "weight") {
            match &result {
                Ok(_) => tracing::info!(user = %actor, command = %line, "management: done"),
                Err(e) => {
                    tracing::warn!(user = %actor, command = %line, error = %e, "management: refused")
                }
            }
        }
        result
    }
}

fn usage(cmd: &str) -> String {
    let u = DIRECTOR_COMMANDS
        .iter()
        .find(|(n, _, _)| *n == cmd)
        .map_or(cmd, |(_, u, _)| u);
    format!("usage: {u}")
}

fn backend_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a backend address (IP:port, as `services` lists it)"))
}

impl Handler {
    fn run(&self, cmd: &str, args: &[&str]) -> Result<Reply, String> {
        let d = &self.director;
        match (cmd, args) {
            ("help", []) => {
                let rows: Vec<Vec<String>> = DIRECTOR_COMMANDS
                    .iter()
                    .map(|(_, u, w)| vec![(*u).to_owned(), (*w).to_owned()])
                    .collect();
                Ok(Reply::new(
                    json!(
                        DIRECTOR_COMMANDS
                            .iter()
                            .map(|(n, u, w)| json!({"command": n, "usage": u, "does": w}))
                            .collect::<Vec<_>>()
                    ),
                    format!(
                        "{}\nverbose [on|off]  human text or JSON replies\nquit              close this connection",
                        table(&["COMMAND", "DOES"], &rows)
                    ),
                ))
            }
            ("help", [c]) => DIRECTOR_COMMANDS
                .iter()
                .find(|(n, _, _)| n.eq_ignore_ascii_case(c))
                .map(|(n, u, w)| {
                    Reply::new(
                        json!({"command": n, "usage": u, "does": w}),
                        format!("{u}\n  {w}"),
                    )
                })
                .ok_or_else(|| format!("no command {c:?}")),
            ("hello", []) => {
                let services = d.services();
                let backends: usize = services.iter().map(|s| s.backends().len()).sum();
                Ok(Reply::new(
                    json!({"director": true, "services": services.len(), "backends": backends, "connections": d.connections()}),
                    format!(
                        "switchboard director: {} services, {} backends, {} connections",
                        services.len(),
                        backends,
                        d.connections()
                    ),
                ))
            }
            ("services", []) => Ok(services_reply(&d.services())),
            ("services", [name]) => {
                let s = d
                    .service(name)
                    .ok_or_else(|| format!("no service {name:?}"))?;
                Ok(services_reply(&[s]))
            }
            ("stats", []) => Ok(stats_reply(&d.services())),
            ("stats", [name]) => {
                let s = d
                    .service(name)
                    .ok_or_else(|| format!("no service {name:?}"))?;
                Ok(stats_reply(&[s]))
            }
            ("drain", [service, backend]) => {
                let addr = backend_addr(backend)?;
                d.set_override(service, addr, |o| o.drain = true)?;
                let s = d.service(service).ok_or("service vanished")?;
                let n = s.backend(addr).map_or(0, |b| b.connections());
                Ok(Reply::new(
                    json!({"service": service, "backend": backend, "drain": true, "connections": n}),
                    format!("{service} {backend}: draining; {n} live connections keep running"),
                ))
            }
            ("undrain", [service, backend]) => {
                let addr = backend_addr(backend)?;
                d.set_override(service, addr, |o| o.drain = false)?;
                Ok(Reply::new(
                    json!({"service": service, "backend": backend, "drain": false}),
                    format!("{service} {backend}: takes new connections again"),
                ))
            }
            ("weight", [service, backend, w]) => {
                let addr = backend_addr(backend)?;
                let weight = if w.eq_ignore_ascii_case("reset") {
                    None
                } else {
                    Some(
                        w.parse::<u32>()
                            .ok()
                            .filter(|w| *w <= crate::config::MAX_WEIGHT)
                            .ok_or_else(|| {
                                format!(
                                    "weight must be 0–{} or `reset`, not {w:?}",
                                    crate::config::MAX_WEIGHT
                                )
                            })?,
                    )
                };
                d.set_override(service, addr, |o| o.weight = weight)?;
                let s = d.service(service).ok_or("service vanished")?;
                let now = s.backend(addr).map_or(0, |b| b.weight());
                Ok(Reply::new(
                    json!({"service": service, "backend": backend, "weight": now, "runtime": weight.is_some()}),
                    match weight {
                        Some(_) => format!("{service} {backend}: weight {now}"),
                        None => {
                            format!("{service} {backend}: weight {now} (from the configuration)")
                        }
                    },
                ))
            }
            (c, _) if DIRECTOR_COMMANDS.iter().any(|(n, _, _)| *n == c) => Err(usage(c)),
            (c, _) => Err(format!("unknown command {c:?}; `help` lists the commands")),
        }
    }
}

fn listen_of(s: &Service) -> String {
    let c = s.config();
    c.listen
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn backend_json(b: &Backend) -> Value {
    let c = &b.counters;
    let r = *crate::lock(&c.rates);
    json!({
        "address": b.addr.to_string(),
        "state": b.state(),
        "weight": b.weight(),
        "config_weight": b.config_weight.load(Ordering::Relaxed),
        "runtime_weight": b.runtime_weight(),
        "drained": b.drained.load(Ordering::Relaxed),
        "broker_drain": b.broker_drain.load(Ordering::Relaxed),
        "health_up": b.up.load(Ordering::Relaxed),
        "max_conn": b.max_conn.load(Ordering::Relaxed),
        "active": c.active.load(Ordering::Relaxed),
        "inactive": c.inactive.load(Ordering::Relaxed),
        "connections": c.total.load(Ordering::Relaxed),
        "connect_errors": c.connect_errors.load(Ordering::Relaxed),
        "bytes_in": c.bytes_in.load(Ordering::Relaxed),
        "bytes_out": c.bytes_out.load(Ordering::Relaxed),
        "cps": r.cps, "in_bps": r.in_bps, "out_bps": r.out_bps,
    })
}

/// `services`: the `ipvsadm -L -n` layout, plus each backend's state.
fn services_reply(services: &[Arc<Service>]) -> Reply {
    let mut text = String::from(
        "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn State\n",
    );
    let mut list = Vec::new();
    for s in services {
        let c = s.config();
        let mut row = format!("TCP  {} {}", listen_of(s), c.scheduler);
        if c.hash.fallback || c.hash.port {
            let mut flags = Vec::new();
            if c.hash.fallback {
                flags.push(format!("{}-fallback", c.scheduler));
            }
            if c.hash.port {
                flags.push(format!("{}-port", c.scheduler));
            }
            row.push_str(&format!(" ({})", flags.join(",")));
        }
        if let Some(p) = c.persistence {
            row.push_str(&format!(" persistent {}", p.timeout.as_secs()));
            if p.netmask_v4 != 32 {
                row.push_str(&format!(" mask {}", p.netmask_v4));
            }
        }
        row.push_str(&format!("  [{}]", s.name));
        text.push_str(&row);
        text.push('\n');
        let backends = s.backends();
        for b in &backends {
            text.push_str(&format!(
                "  -> {:<28} {:<7} {:<6} {:<10} {:<10} {}\n",
                b.addr.to_string(),
                "Proxy",
                b.weight(),
                b.counters.active.load(Ordering::Relaxed),
                b.counters.inactive.load(Ordering::Relaxed),
                b.state()
            ));
        }
        list.push(json!({
            "name": s.name,
            "listen": c.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "scheduler": c.scheduler.as_str(),
            "persistence": c.persistence.map(|p| p.timeout.as_secs()),
            "active": s.counters.active.load(Ordering::Relaxed),
            "inactive": s.counters.inactive.load(Ordering::Relaxed),
            "persistent_clients": s.templates(),
            "backends": backends.iter().map(|b| backend_json(b)).collect::<Vec<_>>(),
        }));
    }
    Reply::new(json!(list), text.trim_end().to_owned())
}

fn large(n: u64) -> String {
    // As ipvsadm's print_largenum: K below 10^9, M below 10^11, G below 10^14, then T.
    match n {
        0..100_000_000 => n.to_string(),
        100_000_000..1_000_000_000 => format!("{}K", n / 1_000),
        1_000_000_000..100_000_000_000 => format!("{}M", n / 1_000_000),
        100_000_000_000..100_000_000_000_000 => format!("{}G", n / 1_000_000_000),
        _ => format!("{}T", n / 1_000_000_000_000),
    }
}

/// `stats`: `ipvsadm -L -n --stats` and `--rate` columns side by side.
fn stats_reply(services: &[Arc<Service>]) -> Reply {
    let mut text = format!(
        "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n  -> RemoteAddress:Port\n",
        "Prot LocalAddress:Port", "Conns", "InBytes", "OutBytes", "CPS", "InBPS", "OutBPS"
    );
    let mut list = Vec::new();
    let row = |label: String, c: &crate::service::Counters| {
        let r = *crate::lock(&c.rates);
        format!(
            "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            label,
            large(c.total.load(Ordering::Relaxed)),
            large(c.bytes_in.load(Ordering::Relaxed)),
            large(c.bytes_out.load(Ordering::Relaxed)),
            r.cps.round() as u64,
            large(r.in_bps.round() as u64),
            large(r.out_bps.round() as u64),
        )
    };
    for s in services {
        text.push_str(&row(format!("TCP  {}", listen_of(s)), &s.counters));
        let backends = s.backends();
        for b in &backends {
            text.push_str(&row(format!("  -> {}", b.addr), &b.counters));
        }
        let c = &s.counters;
        let r = *crate::lock(&c.rates);
        list.push(json!({
            "name": s.name,
            "connections": c.total.load(Ordering::Relaxed),
            "active": c.active.load(Ordering::Relaxed),
            "inactive": c.inactive.load(Ordering::Relaxed),
            "bytes_in": c.bytes_in.load(Ordering::Relaxed),
            "bytes_out": c.bytes_out.load(Ordering::Relaxed),
            "cps": r.cps, "in_bps": r.in_bps, "out_bps": r.out_bps,
            "backends": backends.iter().map(|b| backend_json(b)).collect::<Vec<_>>(),
        }));
    }
    Reply::new(json!(list), text.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::large;

    #[test]
    fn large_numbers_are_abbreviated_like_ipvsadm() {
        assert_eq!(large(99_999_999), "99999999");
        assert_eq!(large(123_456_789), "123456K");
        assert_eq!(large(12_345_678_900), "12345M");
        assert_eq!(large(123_456_789_000), "123G");
    }
}
