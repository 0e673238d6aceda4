//! IPVS mode: the same services, forwarded by the kernel.
//!
//! Each `[[service]]` listen address becomes an IPVS virtual service (`-t ADDR:PORT`) with the
//! service's scheduler, `sh`/`mh` flags and persistence (`-p`, `-M`), and each backend a real
//! server with the service's `forward` method (`-g` DR, `-m` NAT, `-i` tunnel) and the weight in
//! force. A backend that is drained, down (health checks, the broker) or at weight 0 is written
//! with weight 0: IPVS quiesces it, its established connections continue.
//!
//! Every `INTERVAL` the applier reads the kernel table (`ipvsadm -S -n`) and its connection
//! counters (`ipvsadm -L -n`), computes the difference with
//! [`switchboard_core::ipvs::diff`], and applies it as `ipvsadm -R` lines. The diff never deletes
//! a real server or a service that still has connections (IPVS would black-hole them): it sets
//! the weight to 0 and deletes on a later pass, once the counters are 0.
//!
//! Only virtual services of the configuration, and ones this process added, are managed:
//! anything else in the table is left alone. A service removed from the configuration while the
//! director was stopped is therefore not removed by it; `ipvsadm -D` does that.
//!
//! The global `ipvsadm --set` timeouts come from `[ipvs]` (`tcp_timeout` default 72 h).

use crate::Director;
use crate::config::{Backends, Config, Forward, ServiceConfig};
use crate::state::RuntimeState;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;
use switchboard_core::ipvs::{
    self as table, Change, Persistence, Proto, RealServer, Table, Timeouts, VirtualAddr,
    VirtualService,
};
use switchboard_core::schedule::{HashOptions, SchedulerKind};
use switchboard_proto::ipvsadm;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// How often the applier reconciles the kernel table.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Longest an ipvsadm run may take.
const IPVSADM_TIMEOUT: Duration = Duration::from_secs(10);

fn forward(f: Forward) -> table::Forward {
    match f {
        Forward::Dr => table::Forward::Dr,
        Forward::Nat => table::Forward::Nat,
        Forward::Tunnel => table::Forward::Tunnel,
    }
}

/// The virtual services of one `[[service]]`, with `dests` as (address, weight in force).
pub fn services_of(sc: &ServiceConfig, dests: &[(SocketAddr, u32)]) -> Vec<VirtualService> {
    sc.listen
        .iter()
        .map(|listen| {
            let ipv6 = listen.is_ipv6();
            let flags = if matches!(sc.scheduler, SchedulerKind::Sh | SchedulerKind::Mh) {
                sc.hash
            } else {
                HashOptions::default()
            };
            VirtualService {
                vaddr: VirtualAddr::Inet {
                    proto: Proto::Tcp,
                    addr: *listen,
                },
                scheduler: sc.scheduler,
                flags,
                persistence: sc.persistence.map(|p| {
                    Persistence {
                        timeout_secs: u32::try_from(p.timeout.as_secs())
                            .unwrap_or(u32::MAX)
                            .clamp(1, table::MAX_PERSISTENCE_SECS),
                        netmask: Some(if ipv6 { p.netmask_v6 } else { p.netmask_v4 }),
                    }
                    .normalized(ipv6)
                }),
                dests: dests
                    .iter()
                    // IPVS does not mix address families outside tunnels.
                    .filter(|(a, _)| a.is_ipv6() == ipv6 || sc.forward == Forward::Tunnel)
                    .map(|(addr, weight)| RealServer {
                        addr: *addr,
                        forward: forward(sc.forward),
                        weight: *weight,
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The global timeouts of `[ipvs]`.
pub fn timeouts(config: &Config) -> Timeouts {
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    Timeouts {
        tcp: secs(config.ipvs.tcp_timeout),
        tcpfin: secs(config.ipvs.tcpfin_timeout),
        udp: secs(config.ipvs.udp_timeout),
    }
}

/// Runs ipvsadm with `args`, feeding `input` on stdin; returns its stdout.
async fn ipvsadm(bin: &Path, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("{} {args:?}: {e}", bin.display()))?;
    }
    let out = tokio::time::timeout(IPVSADM_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "{} {args:?} took more than {IPVSADM_TIMEOUT:?}",
                bin.display()
            )
        })?
        .map_err(|e| format!("{} {args:?}: {e}", bin.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}): {stderr}",
            bin.display(),
            args.join(" "),
            out.status
        ));
    }
    if !stderr.is_empty() {
        // `ipvsadm -R` goes on past a line the kernel refuses, printing why.
        return Err(format!("{} {}: {stderr}", bin.display(), args.join(" ")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel's table and counters.
async fn read_kernel(
    bin: &Path,
) -> Result<(Table, HashMap<(VirtualAddr, SocketAddr), u64>), String> {
    let rules = ipvsadm(bin, &["-S", "-n"], None).await?;
    let current = ipvsadm::parse_rules(&rules).map_err(|e| {
        format!("cannot read `ipvsadm -S -n`: {e} (the director manages only tables it can read)")
    })?;
    let list = ipvsadm(bin, &["-L", "-n"], None).await?;
    let counts = ipvsadm::parse_list_counts(&list)
        .map_err(|e| format!("cannot read `ipvsadm -L -n`: {e}"))?
        .into_iter()
        .map(|(v, r, a, i)| ((v.normalized(), r), a + i))
        .collect();
    Ok((current, counts))
}

/// The part of `current` this director manages: the services in `managed`.
fn managed_part(current: &Table, managed: &BTreeSet<String>) -> Table {
    Table {
        services: current
            .services
            .iter()
            .filter(|s| managed.contains(&s.vaddr.normalized().to_string()))
            .cloned()
            .collect(),
    }
}

/// Forgets managed services that are no longer in the kernel: deleted by a run that failed half
/// way (`ipvsadm -R` goes on past a refused line, and its exit status does not say which lines
/// took), or by hand. A service someone else creates later at that address is then theirs.
fn prune_managed(managed: &mut BTreeSet<String>, current: &Table) {
    let present: BTreeSet<String> = current
        .services
        .iter()
        .map(|s| s.vaddr.normalized().to_string())
        .collect();
    managed.retain(|v| present.contains(v));
}

/// The changes that bring the kernel to `desired`: in the managed services and the desired ones.
fn plan(
    current: &Table,
    desired: &Table,
    counts: &HashMap<(VirtualAddr, SocketAddr), u64>,
    managed: &BTreeSet<String>,
) -> Vec<Change> {
    let mut scope = managed.clone();
    scope.extend(
        desired
            .services
            .iter()
            .map(|s| s.vaddr.normalized().to_string()),
    );
    let current = managed_part(current, &scope);
    table::diff(&current, desired, |v, r| {
        counts.get(&(v.normalized(), *r)).copied().unwrap_or(0) > 0
    })
}

/// `--dry-run`: what would be applied to the kernel now, as `ipvsadm -R` lines (and the
/// `--set` line), from the configuration and the runtime state file. Notes go to the second
/// string (for stderr).
pub async fn dry_run(config: &Config) -> Result<(String, String), String> {
    let state = RuntimeState::load(&config.state_file)?;
    let mut notes = String::new();
    let mut desired = Table::default();
    for sc in &config.services {
        let dests: Vec<(SocketAddr, u32)> = match &sc.backends {
            Backends::Static(list) => list
                .iter()
                .map(|b| {
                    let o = state.get(&sc.name, &b.address.to_string());
                    let w = if o.drain {
                        0
                    } else {
                        o.weight.unwrap_or(b.weight)
                    };
                    (b.address, w)
                })
                .collect(),
            Backends::Pool { name, .. } => {
                notes.push_str(&format!(
                    "# service {:?} follows pool {name:?}: its real servers come from the broker at run time; shown without them\n",
                    sc.name
                ));
                Vec::new()
            }
        };
        desired.services.extend(services_of(sc, &dests));
    }
    desired
        .validate()
        .map_err(|e| format!("the configuration cannot be expressed in IPVS: {e}"))?;
    let (current, counts) = match read_kernel(&config.ipvs.ipvsadm).await {
        Ok(k) => k,
        Err(e) => {
            notes.push_str(&format!(
                "# cannot read the kernel table ({e}); showing everything as new\n"
            ));
            (Table::default(), HashMap::new())
        }
    };
    let changes = plan(&current, &desired, &counts, &BTreeSet::new());
    let mut out = String::new();
    let t = timeouts(config);
    if t != Timeouts::default() {
        out.push_str(&ipvsadm::render_timeouts(&t));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str(&ipvsadm::render_changes(&changes));
    if changes.is_empty() {
        notes.push_str("# the kernel table already matches the configuration\n");
    }
    Ok((out, notes))
}

/// The table the director wants now, from its services' live view.
fn desired_now(director: &Director) -> Table {
    let mut desired = Table::default();
    for s in director.services() {
        if !s.synced.load(Ordering::Relaxed) {
            // A pool-backed service before the broker's first view: leave its entries alone.
            continue;
        }
        let sc = s.config();
        let dests: Vec<(SocketAddr, u32)> = s
            .backends()
            .iter()
            .filter(|b| !b.removed.load(Ordering::Relaxed))
            .map(|b| {
                let w = if b.draining() || !b.available() {
                    0
                } else {
                    b.weight()
                };
                (b.addr, w.min(table::MAX_WEIGHT))
            })
            .collect();
        desired.services.extend(services_of(&sc, &dests));
    }
    desired
}

/// Starts the applier: sets the timeouts, then reconciles every [`INTERVAL`] until `shutdown`.
pub fn spawn(director: Director, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let config = director.config();
        let bin = config.ipvs.ipvsadm.clone();
        let t = timeouts(&config);
        if t != Timeouts::default() {
            let args = [
                "--set".to_owned(),
                t.tcp.to_string(),
                t.tcpfin.to_string(),
                t.udp.to_string(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match ipvsadm(&bin, &args, None).await {
                Ok(_) => tracing::info!(
                    tcp = t.tcp,
                    tcpfin = t.tcpfin,
                    udp = t.udp,
                    "IPVS timeouts set"
                ),
                Err(e) => tracing::error!(error = %e, "IPVS timeouts not set"),
            }
        }
        let mut managed = BTreeSet::new();
        let mut last_error = String::new();
        loop {
            match reconcile(&director, &bin, &mut managed).await {
                Ok(0) => last_error.clear(),
                Ok(n) => {
                    last_error.clear();
                    tracing::info!(changes = n, "IPVS table updated");
                }
                Err(e) => {
                    // Once per distinct failure, not every two seconds.
                    if e != last_error {
                        tracing::error!(error = %e, "IPVS table not updated");
                        last_error = e;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(INTERVAL) => {}
            }
        }
    });
}

/// One pass: returns how many changes were applied.
async fn reconcile(
    director: &Director,
    bin: &Path,
    managed: &mut BTreeSet<String>,
) -> Result<usize, String> {
    let desired = desired_now(director);
    desired
        .validate()
        .map_err(|e| format!("the services cannot be expressed in IPVS: {e}"))?;
    let (current, counts) = read_kernel(bin).await?;
    // The kernel's counters are the connection counts of `ctl services` and /metrics here.
    for s in director.services() {
        let sc = s.config();
        for b in s.backends() {
            let n: u64 = sc
                .listen
                .iter()
                .map(|l| {
                    let v = VirtualAddr::Inet {
                        proto: Proto::Tcp,
                        addr: *l,
                    }
                    .normalized();
                    counts.get(&(v, b.addr)).copied().unwrap_or(0)
                })
                .sum();
            b.counters.active.store(n, Ordering::Relaxed);
        }
    }
    prune_managed(managed, &current);
    let changes = plan(&current, &desired, &counts, managed);
    for s in &desired.services {
        managed.insert(s.vaddr.normalized().to_string());
    }
    if changes.is_empty() {
        return Ok(0);
    }
    let text = ipvsadm::render_changes(&changes);
    for line in text.lines() {
        tracing::info!(rule = %line, "ipvsadm -R");
    }
    ipvsadm(bin, &["-R"], Some(&text)).await?;
    // Services deleted from the kernel leave the managed set at the next pass (`prune_managed`).
    Ok(changes.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn services_render_as_ipvsadm_rules() {
        let c = Config::parse(
            "[[service]]\nname = \"ssh\"\nlisten = [\"10.0.0.100:22\", \"[2001:db8::100]:22\"]\nscheduler = \"wlc\"\npersistence = \"1h\"\npersistence_netmask = 24\nforward = \"dr\"\nbackends = [\"10.0.1.11:22\", \"10.0.1.12:22\", \"[2001:db8::11]:22\"]\n\
             [[service]]\nname = \"rdp\"\nlisten = \"10.0.0.100:3389\"\nscheduler = \"sh\"\nhash_fallback = true\nforward = \"nat\"\n[[service.backend]]\naddress = \"10.0.1.21:3389\"\nweight = 1\n",
            "t.toml",
        )
        .unwrap();
        let mut t = Table::default();
        t.services.extend(services_of(
            &c.services[0],
            &[
                ("10.0.1.11:22".parse().unwrap(), 100),
                ("10.0.1.12:22".parse().unwrap(), 0),
                ("[2001:db8::11]:22".parse().unwrap(), 100),
            ],
        ));
        t.services.extend(services_of(
            &c.services[1],
            &[("10.0.1.21:3389".parse().unwrap(), 1)],
        ));
        t.validate().unwrap();
        assert_eq!(
            ipvsadm::render_rules(&t),
            "-A -t 10.0.0.100:22 -s wlc -p 3600 -M 255.255.255.0\n\
             -a -t 10.0.0.100:22 -r 10.0.1.11:22 -g -w 100\n\
             -a -t 10.0.0.100:22 -r 10.0.1.12:22 -g -w 0\n\
             -A -t [2001:db8::100]:22 -s wlc -p 3600\n\
             -a -t [2001:db8::100]:22 -r [2001:db8::11]:22 -g -w 100\n\
             -A -t 10.0.0.100:3389 -s sh -b sh-fallback\n\
             -a -t 10.0.0.100:3389 -r 10.0.1.21:3389 -m -w 1\n"
        );
    }

    #[test]
    fn only_managed_services_are_touched_and_live_servers_are_quiesced() {
        let mine: VirtualAddr = VirtualAddr::Inet {
            proto: Proto::Tcp,
            addr: "10.0.0.100:22".parse().unwrap(),
        };
        let foreign = VirtualAddr::Inet {
            proto: Proto::Tcp,
            addr: "10.0.0.200:80".parse().unwrap(),
        };
        let rs = |a: &str, w| RealServer {
            addr: a.parse().unwrap(),
            forward: table::Forward::Dr,
            weight: w,
        };
        let mut svc = VirtualService::new(mine, SchedulerKind::Rr);
        svc.dests = vec![rs("10.0.1.11:22", 1), rs("10.0.1.12:22", 1)];
        let mut other = VirtualService::new(foreign, SchedulerKind::Wlc);
        other.dests = vec![rs("10.0.2.1:80", 1)];
        let current = Table {
            services: vec![svc.clone(), other],
        };
        let mut want = svc.clone();
        want.dests.truncate(1);
        let desired = Table {
            services: vec![want],
        };
        let live: HashMap<(VirtualAddr, SocketAddr), u64> =
            HashMap::from([((mine.normalized(), "10.0.1.12:22".parse().unwrap()), 3)]);
        let changes = plan(&current, &desired, &live, &BTreeSet::new());
        assert_eq!(
            ipvsadm::render_changes(&changes),
            "-e -t 10.0.0.100:22 -r 10.0.1.12:22 -g -w 0\n"
        );
        let changes = plan(&current, &desired, &HashMap::new(), &BTreeSet::new());
        assert_eq!(
            ipvsadm::render_changes(&changes),
            "-d -t 10.0.0.100:22 -r 10.0.1.12:22\n"
        );
    }

    /// A service this director added and that is gone from the kernel (a half-failed run, or an
    /// administrator) is forgotten, so one created at that address later by someone else is
    /// never deleted; a managed service still in the kernel stays managed.
    #[test]
    fn managed_services_gone_from_the_kernel_are_forgotten() {
        let kept = VirtualAddr::Inet {
            proto: Proto::Tcp,
            addr: "10.0.0.100:22".parse().unwrap(),
        };
        let gone = VirtualAddr::Inet {
            proto: Proto::Tcp,
            addr: "10.0.0.100:3389".parse().unwrap(),
        };
        let mut managed: BTreeSet<String> = [kept, gone]
            .iter()
            .map(|v| v.normalized().to_string())
            .collect();
        let before = Table {
            services: vec![VirtualService::new(kept, SchedulerKind::Rr)],
        };
        prune_managed(&mut managed, &before);
        assert_eq!(
            managed.iter().cloned().collect::<Vec<_>>(),
            vec![kept.normalized().to_string()]
        );
        // Someone else creates a service at the forgotten address: a configuration without it
        // leaves it alone.
        let theirs = Table {
            services: vec![
                VirtualService::new(kept, SchedulerKind::Rr),
                VirtualService::new(gone, SchedulerKind::Wlc),
            ],
        };
        let desired = Table {
            services: vec![VirtualService::new(kept, SchedulerKind::Rr)],
        };
        prune_managed(&mut managed, &theirs);
        assert!(plan(&theirs, &desired, &HashMap::new(), &managed).is_empty());
    }
}
