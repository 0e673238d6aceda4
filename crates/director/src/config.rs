//! The director's configuration file (`/etc/switchboard/director.toml`; the annotated example is
//! `examples/director.toml`).
//!
//! Values are checked while the file is read, so an error names the file, the line and the key;
//! the director refuses to start on one and, on reload, keeps running on the configuration it
//! had. Runtime changes (weights, drains made with `switchboard ctl`) are not written here: they
//! live in the state file (`[state] file`), so the configuration stays what the operator wrote.

use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchboard_core::config::ConfigDuration;
use switchboard_core::schedule::{HashOptions, SchedulerKind};

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/switchboard/director.toml";
/// Default management socket.
pub const DEFAULT_SOCKET: &str = "/run/switchboard/director.sock";
/// Default runtime state file.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/switchboard/director-state.json";
/// Default weight of a backend.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest weight (IPVS takes a signed 32-bit weight).
pub const MAX_WEIGHT: u32 = 65_535;
/// Default idle timeout: 72 hours, as the LVS director this replaces set with `ipvsadm --set`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(72 * 3600);
/// Default persistence timeout when `persistence = true`: 360 s, ipvsadm's `-p` default.
pub const DEFAULT_PERSISTENCE: Duration = Duration::from_secs(360);
/// Largest configuration file read.
const MAX_FILE: u64 = 4 << 20;

/// An error in the configuration: the file and what is wrong, with line and key where known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// What is wrong.
    pub message: String,
}

/// How the director carries traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A userspace TCP proxy (the default).
    #[default]
    Proxy,
    /// Kernel IPVS rules, programmed with `ipvsadm -R`.
    Ipvs,
}

/// IPVS forwarding method of a service's real servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// Direct routing (`-g`, the IPVS default).
    #[default]
    Dr,
    /// Masquerading, i.e. NAT (`-m`).
    Nat,
    /// IP-in-IP tunnelling (`-i`).
    Tunnel,
}

/// The whole configuration, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where it was read from (for reloads).
    pub path: Option<PathBuf>,
    /// Proxy or IPVS.
    pub mode: Mode,
    /// Use splice(2) for the data path (Linux; default on).
    pub splice: bool,
    /// How long a shutdown waits for live connections; `None` waits for all of them.
    pub shutdown_timeout: Option<Duration>,
    /// Worker threads (`None`: one per CPU; 1: a single-threaded event loop).
    pub threads: Option<usize>,
    /// Client connections of every service at once (`None`: half of the descriptor limit less
    /// a reserve, since each takes two descriptors).
    pub max_connections: Option<usize>,
    /// Client connections from one address at once (0: no cap, the default: an L4 director
    /// often sees whole sites behind one NAT address).
    pub max_connections_per_source: usize,
    /// Management socket path, mode and group.
    pub management_socket: PathBuf,
    /// Mode of the socket file.
    pub management_mode: u32,
    /// Group given the socket.
    pub management_group: Option<String>,
    /// Where `/metrics` is served, if anywhere.
    pub http_listen: Option<SocketAddr>,
    /// The runtime state file.
    pub state_file: PathBuf,
    /// The broker, for services that follow a pool.
    pub broker: Option<BrokerConfig>,
    /// IPVS mode settings.
    pub ipvs: IpvsConfig,
    /// The services, in file order.
    pub services: Vec<ServiceConfig>,
}

/// `[broker]`: where pools are followed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Base URL of the broker's REST API, e.g. `https://broker.example:8443`.
    pub url: String,
    /// File holding a read-only API token.
    pub token_file: PathBuf,
    /// CA certificate (PEM) that signed the broker's certificate, if not a public one.
    pub ca_file: Option<PathBuf>,
}

/// `[ipvs]`: settings of IPVS mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsConfig {
    /// The ipvsadm binary.
    pub ipvsadm: PathBuf,
    /// `--set` TCP ESTABLISHED timeout (0 = leave the kernel's).
    pub tcp_timeout: Duration,
    /// `--set` TCP FIN_WAIT timeout (0 = leave the kernel's).
    pub tcpfin_timeout: Duration,
    /// `--set` UDP timeout (0 = leave the kernel's).
    pub udp_timeout: Duration,
}

/// Where a service's backends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backends {
    /// Listed in the file.
    Static(Vec<BackendConfig>),
    /// The hosts of a broker pool, at `port`.
    Pool {
        /// The pool's name.
        name: String,
        /// The port on each host.
        port: u16,
    },
}

/// One listed backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Its address.
    pub address: SocketAddr,
    /// Its weight (0 = no new connections).
    pub weight: u32,
    /// Most connections at once (0 = no cap).
    pub max_conn: u32,
}

/// Source-address persistence (LVS `-p`/`-M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persistence {
    /// How long a client stays with its backend after its last connection ends.
    pub timeout: Duration,
    /// Prefix length grouping client addresses (IPv4; default 32).
    pub netmask_v4: u8,
    /// Prefix length grouping client addresses (IPv6; default 128).
    pub netmask_v6: u8,
    /// Whether a draining backend keeps its persistent clients (IPVS
    /// `expire_quiescent_template=0`, the default) or sends them elsewhere.
    pub drain_keeps_clients: bool,
}

impl Persistence {
    /// The persistence key of a client address: the address under the netmask.
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.netmask_v4))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.netmask_v6))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }
}

/// TCP connect health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Whether checks run at all (`kind = "none"` turns them off: backends count as up).
    pub enabled: bool,
    /// Time between checks of one backend.
    pub interval: Duration,
    /// How long one connect may take.
    pub timeout: Duration,
    /// Successes in a row that bring a down backend up.
    pub rise: u32,
    /// Failures in a row that take an up backend down.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// One `[[service]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Its name (unique).
    pub name: String,
    /// Addresses it listens on.
    pub listen: Vec<SocketAddr>,
    /// The scheduler.
    pub scheduler: SchedulerKind,
    /// sh/mh options.
    pub hash: HashOptions,
    /// Its backends.
    pub backends: Backends,
    /// Source-address persistence.
    pub persistence: Option<Persistence>,
    /// Longest wait for a backend's connect.
    pub connect_timeout: Duration,
    /// A connection with no data either way for this long is closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Cap of connections per backend for pool backends and the default for listed ones.
    pub max_conn: u32,
    /// Send a PROXY protocol v2 header to backends.
    pub proxy_protocol: bool,
    /// Health checks.
    pub health: HealthConfig,
    /// IPVS forwarding method.
    pub forward: Forward,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    director: DirectorSection,
    #[serde(default)]
    management: ManagementSection,
    #[serde(default)]
    http: HttpSection,
    #[serde(default)]
    state: StateSection,
    broker: Option<BrokerSection>,
    #[serde(default)]
    ipvs: IpvsSection,
    #[serde(default, rename = "service")]
    services: Vec<ServiceSection>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DirectorSection {
    mode: Option<Mode>,
    splice: Option<bool>,
    shutdown_timeout: Option<ConfigDuration>,
    threads: Option<Threads>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Threads(usize);

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        if !(1..=1024).contains(&n) {
            return Err(serde::de::Error::custom(format!(
                "threads must be 1–1024, not {n}"
            )));
        }
        Ok(Threads(n as usize))
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ManagementSection {
    socket: Option<PathBuf>,
    mode: Option<FileMode>,
    group: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    listen: Option<Addr>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StateSection {
    file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerSection {
    url: String,
    token_file: PathBuf,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IpvsSection {
    ipvsadm: Option<PathBuf>,
    tcp_timeout: Option<ConfigDuration>,
    tcpfin_timeout: Option<ConfigDuration>,
    udp_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    name: toml::Spanned<String>,
    listen: OneOrMany,
    scheduler: Option<Scheduler>,
    #[serde(default)]
    hash_fallback: bool,
    #[serde(default)]
    hash_port: bool,
    backends: Option<Vec<Addr>>,
    backend: Option<Vec<BackendSection>>,
    pool: Option<String>,
    port: Option<u16>,
    weight: Option<Weight>,
    persistence: Option<PersistenceValue>,
    persistence_netmask: Option<u8>,
    persistence_netmask_v6: Option<u8>,
    drain_keeps_persistent: Option<bool>,
    connect_timeout: Option<ConfigDuration>,
    idle_timeout: Option<ConfigDuration>,
    max_conn: Option<u32>,
    proxy_protocol: Option<ProxyProtocol>,
    health: Option<HealthSection>,
    forward: Option<Forward>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendSection {
    address: Addr,
    weight: Option<Weight>,
    max_conn: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthSection {
    kind: Option<HealthKind>,
    interval: Option<ConfigDuration>,
    timeout: Option<ConfigDuration>,
    rise: Option<u32>,
    fall: Option<u32>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum HealthKind {
    Tcp,
    None,
}

/// `proxy_protocol = "v2"` (or `true`), `false`/`"none"`.
#[derive(Debug, Clone, Copy)]
struct ProxyProtocol(bool);

impl<'de> Deserialize<'de> for ProxyProtocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::B(b) => Ok(ProxyProtocol(b)),
            Raw::S(s) if s == "v2" => Ok(ProxyProtocol(true)),
            Raw::S(s) if s == "none" => Ok(ProxyProtocol(false)),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "{s:?}: use \"v2\" (PROXY protocol version 2) or \"none\""
            ))),
        }
    }
}

/// `persistence = "1h"` or `true` (360 s) or `false`.
#[derive(Debug, Clone, Copy)]
struct PersistenceValue(Option<Duration>);

impl<'de> Deserialize<'de> for PersistenceValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            D(ConfigDuration),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected true, false, or a timeout such as \"1h\" (LVS -p semantics)",
            )
        })? {
            Raw::B(true) => Ok(PersistenceValue(Some(DEFAULT_PERSISTENCE))),
            Raw::B(false) => Ok(PersistenceValue(None)),
            Raw::D(ConfigDuration(d)) if d.is_zero() => Ok(PersistenceValue(None)),
            Raw::D(ConfigDuration(d)) => Ok(PersistenceValue(Some(d))),
        }
    }
}

/// A listen or backend address: `IP:port`, IPv6 in brackets.
#[derive(Debug, Clone, Copy)]
struct Addr(SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Addr).map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not an IP:port address (e.g. 127.0.0.1:22 or [::1]:22; names are not \
                 resolved, so that a DNS failure cannot move traffic)"
            ))
        })
    }
}

/// `listen = "addr"` or `listen = ["addr", …]`.
#[derive(Debug)]
struct OneOrMany(Vec<SocketAddr>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let raw = Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected an IP:port or a list of them"))?;
        let list = match raw {
            Raw::One(s) => vec![s],
            Raw::Many(v) => v,
        };
        if list.is_empty() {
            return Err(serde::de::Error::custom("at least one listen address"));
        }
        list.iter()
            .map(|s| {
                s.parse().map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is not an IP:port listen address (e.g. 0.0.0.0:22 or [::]:22)"
                    ))
                })
            })
            .collect::<Result<_, _>>()
            .map(OneOrMany)
    }
}

#[derive(Debug, Clone, Copy)]
struct Scheduler(SchedulerKind);

impl<'de> Deserialize<'de> for Scheduler {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map(Scheduler)
            .map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

#[derive(Debug, Clone, Copy)]
struct Weight(u32);

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = u32::deserialize(d)?;
        if w > MAX_WEIGHT {
            return Err(serde::de::Error::custom(format!(
                "weight {w} is above {MAX_WEIGHT}"
            )));
        }
        Ok(Weight(w))
    }
}

/// A file mode written as an octal string (`"0660"`).
#[derive(Debug, Clone, Copy)]
struct FileMode(u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .map(FileMode)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not an octal mode like \"0660\""))
            })
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: path.display().to_string(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > MAX_FILE {
            return Err(err(format!("larger than {MAX_FILE} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let mut c = Config::parse(&text, &path.display().to_string())?;
        c.path = Some(path.to_owned());
        Ok(c)
    }

    /// Parses and checks configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_owned(),
            message,
        };
        let raw: FileConfig = switchboard_core::config::parse_toml(text).map_err(err)?;
        raw.check(text).map_err(err)
    }

    /// Whether any service follows a broker pool.
    pub fn follows_pools(&self) -> bool {
        self.services
            .iter()
            .any(|s| matches!(s.backends, Backends::Pool { .. }))
    }
}

impl FileConfig {
    fn check(self, text: &str) -> Result<Config, String> {
        let mut names = BTreeSet::new();
        let mut listens = BTreeSet::new();
        let mut services = Vec::new();
        for s in self.services {
            let line = switchboard_core::config::line_of(text, s.name.span().start);
            let name = s.name.into_inner();
            let at =
                |key: &str, m: String| format!("line {line}: service {name:?}: key `{key}`: {m}");
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(at(
                    "name",
                    "use 1–64 letters, digits, `-`, `_` or `.`".into(),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(at("name", "another service has this name".into()));
            }
            for l in &s.listen.0 {
                if !listens.insert(*l) {
                    return Err(at("listen", format!("{l} is used by another service")));
                }
            }
            let weight = s.weight.map_or(DEFAULT_WEIGHT, |w| w.0);
            let max_conn = s.max_conn.unwrap_or(0);
            let backends = match (s.backends, s.backend, s.pool) {
                (Some(list), None, None) => Backends::Static(
                    list.into_iter()
                        .map(|a| BackendConfig {
                            address: a.0,
                            weight,
                            max_conn,
                        })
                        .collect(),
                ),
                (None, Some(tables), None) => Backends::Static(
                    tables
                        .into_iter()
                        .map(|b| BackendConfig {
                            address: b.address.0,
                            weight: b.weight.map_or(weight, |w| w.0),
                            max_conn: b.max_conn.unwrap_or(max_conn),
                        })
                        .collect(),
                ),
                (None, None, Some(pool)) => {
                    if self.broker.is_none() {
                        return Err(at(
                            "pool",
                            "following a pool needs a [broker] section with url and token_file"
                                .into(),
                        ));
                    }
                    Backends::Pool {
                        name: pool,
                        port: s
                            .port
                            .or_else(|| s.listen.0.first().map(SocketAddr::port))
                            .unwrap_or(22),
                    }
                }
                (None, None, None) => {
                    return Err(at(
                        "backends",
                        "give `backends = [\"IP:port\", …]`, [[service.backend]] tables, or `pool = \"NAME\"`".into(),
                    ));
                }
                _ => {
                    return Err(at(
                        "backends",
                        "`backends`, [[service.backend]] and `pool` are alternatives; give one"
                            .into(),
                    ));
                }
            };
            if let Backends::Static(list) = &backends {
                let mut seen = BTreeSet::new();
                for b in list {
                    if !seen.insert(b.address) {
                        return Err(at("backends", format!("{} is listed twice", b.address)));
                    }
                }
            }
            if s.port.is_some() && !matches!(backends, Backends::Pool { .. }) {
                return Err(at("port", "only for `pool` backends".into()));
            }
            let persistence = match s.persistence.and_then(|p| p.0) {
                Some(timeout) => {
                    let v4 = s.persistence_netmask.unwrap_or(32);
                    let v6 = s.persistence_netmask_v6.unwrap_or(128);
                    if !(1..=32).contains(&v4) {
                        return Err(at(
                            "persistence_netmask",
                            format!("{v4} is not a prefix length 1–32"),
                        ));
                    }
                    if !(1..=128).contains(&v6) {
                        return Err(at(
                            "persistence_netmask_v6",
                            format!("{v6} is not a prefix length 1–128"),
                        ));
                    }
                    Some(Persistence {
                        timeout,
                        netmask_v4: v4,
                        netmask_v6: v6,
                        drain_keeps_clients: s.drain_keeps_persistent.unwrap_or(true),
                    })
                }
                None => {
                    if s.persistence_netmask.is_some()
                        || s.persistence_netmask_v6.is_some()
                        || s.drain_keeps_persistent.is_some()
                    {
                        return Err(at(
                            "persistence",
                            "netmask and drain_keeps_persistent need `persistence`".into(),
                        ));
                    }
                    None
                }
            };
            let mut health = HealthConfig::default();
            if let Some(h) = s.health {
                health.enabled = h.kind != Some(HealthKind::None);
                if let Some(i) = h.interval {
                    health.interval = i.0;
                }
                if let Some(t) = h.timeout {
                    health.timeout = t.0;
                }
                health.rise = h.rise.unwrap_or(health.rise);
                health.fall = h.fall.unwrap_or(health.fall);
                if health.interval < Duration::from_millis(100) {
                    return Err(at("health.interval", "at least 100ms".into()));
                }
                if health.timeout.is_zero() {
                    return Err(at("health.timeout", "must be more than 0".into()));
                }
                if health.rise == 0 || health.fall == 0 {
                    return Err(at("health", "rise and fall are at least 1".into()));
                }
            }
            let connect_timeout = s.connect_timeout.map_or(Duration::from_secs(5), |d| d.0);
            if connect_timeout.is_zero() {
                return Err(at("connect_timeout", "must be more than 0".into()));
            }
            let idle_timeout = match s.idle_timeout {
                None => Some(DEFAULT_IDLE_TIMEOUT),
                Some(d) if d.0.is_zero() => None,
                Some(d) => Some(d.0),
            };
            let scheduler = s.scheduler.map_or(SchedulerKind::Wlc, |k| k.0);
            if (s.hash_fallback || s.hash_port)
                && !matches!(scheduler, SchedulerKind::Sh | SchedulerKind::Mh)
            {
                return Err(at(
                    "hash_fallback",
                    "hash options are for the sh and mh schedulers".into(),
                ));
            }
            services.push(ServiceConfig {
                name,
                listen: s.listen.0,
                scheduler,
                hash: HashOptions {
                    fallback: s.hash_fallback,
                    port: s.hash_port,
                },
                backends,
                persistence,
                connect_timeout,
                idle_timeout,
                max_conn,
                proxy_protocol: s.proxy_protocol.is_some_and(|p| p.0),
                health,
                forward: s.forward.unwrap_or_default(),
            });
        }
        let broker = match self.broker {
            Some(b) => {
                if !(b.url.starts_with("http://") || b.url.starts_with("https://")) {
                    return Err(format!(
                        "[broker] key `url`: {:?} is not an http(s) URL",
                        b.url
                    ));
                }
                Some(BrokerConfig {
                    url: b.url.trim_end_matches('/').to_owned(),
                    token_file: b.token_file,
                    ca_file: b.ca_file,
                })
            }
            None => None,
        };
        Ok(Config {
            path: None,
            mode: self.director.mode.unwrap_or_default(),
            splice: self.director.splice.unwrap_or(true),
            threads: self.director.threads.map(|t| t.0),
            max_connections: match self.director.max_connections {
                Some(0) => return Err("key `director.max_connections` must be at least 1".into()),
                n => n,
            },
            max_connections_per_source: self.director.max_connections_per_source.unwrap_or(0),
            shutdown_timeout: self
                .director
                .shutdown_timeout
                .map(|d| d.0)
                .filter(|d| !d.is_zero()),
            management_socket: self
                .management
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            management_mode: self.management.mode.map_or(0o660, |m| m.0),
            management_group: self.management.group,
            http_listen: self.http.listen.map(|a| a.0),
            state_file: self
                .state
                .file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE)),
            broker,
            ipvs: IpvsConfig {
                ipvsadm: self
                    .ipvs
                    .ipvsadm
                    .unwrap_or_else(|| PathBuf::from("ipvsadm")),
                tcp_timeout: self.ipvs.tcp_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0),
                tcpfin_timeout: self.ipvs.tcpfin_timeout.map_or(Duration::ZERO, |d| d.0),
                udp_timeout: self.ipvs.udp_timeout.map_or(Duration::ZERO, |d| d.0),
            },
            services,
        })
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forward::Dr => "dr",
            Forward::Nat => "nat",
            Forward::Tunnel => "tunnel",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_small_file_gets_the_defaults() {
        let c = Config::parse(
            "[[service]]\nname = \"ssh\"\nlisten = \"127.0.0.1:2222\"\nbackends = [\"127.0.0.1:22\", \"[::1]:22\"]\n",
            "d.toml",
        )
        .unwrap();
        let s = &c.services[0];
        assert_eq!(s.scheduler, SchedulerKind::Wlc);
        assert_eq!(s.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
        assert_eq!(s.connect_timeout, Duration::from_secs(5));
        assert!(s.persistence.is_none());
        assert!(s.health.enabled);
        let Backends::Static(b) = &s.backends else {
            panic!()
        };
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].weight, DEFAULT_WEIGHT);
        assert_eq!(c.mode, Mode::Proxy);
        assert!(c.splice);
        assert_eq!(c.shutdown_timeout, None);
        assert_eq!(c.management_mode, 0o660);
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let text = "[[service]]\nname = \"ssh\"\nlisten = \"127.0.0.1:2222\"\nbackends = [\"127.0.0.1:22\"]\nscheduler = \"fastest\"\n";
        let e = Config::parse(text, "d.toml").unwrap_err().to_string();
        assert!(e.starts_with("d.toml: line 5"), "{e}");
        assert!(e.contains("unknown scheduler"), "{e}");

        let text = "[[service]]\nname = \"ssh\"\nlisten = \"127.0.0.1:2222\"\nbackends = [\"login1:22\"]\n";
        let e = Config::parse(text, "d.toml").unwrap_err().to_string();
        assert!(e.starts_with("d.toml: line 4"), "{e}");

        let text = "[[service]]\nname = \"ssh\"\nlisten = \"127.0.0.1:2222\"\nbackends = [\"127.0.0.1:22\"]\npersistance = \"1h\"\n";
        let e = Config::parse(text, "d.toml").unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("persistance"), "{e}");

        let text = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:22\"]\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:2\"\nbackends = [\"127.0.0.1:22\"]\n";
        let e = Config::parse(text, "d.toml").unwrap_err().to_string();
        assert!(e.contains("line 6") && e.contains("another service"), "{e}");

        let text = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\npool = \"login\"\n";
        let e = Config::parse(text, "d.toml").unwrap_err().to_string();
        assert!(e.contains("[broker]"), "{e}");
    }

    #[test]
    fn persistence_keys_mask_the_source() {
        let p = Persistence {
            timeout: DEFAULT_PERSISTENCE,
            netmask_v4: 24,
            netmask_v6: 64,
            drain_keeps_clients: true,
        };
        assert_eq!(
            p.key("10.1.2.3".parse().unwrap()),
            "10.1.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            p.key("::ffff:10.1.2.3".parse().unwrap()),
            "10.1.2.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            p.key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        let full = Persistence {
            netmask_v4: 32,
            ..p
        };
        assert_eq!(
            full.key("10.1.2.3".parse().unwrap()),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/director.toml");
        let c = Config::load(&path).unwrap();
        assert!(!c.services.is_empty());
    }
}
