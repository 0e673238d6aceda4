//! The broker's configuration file.
//!
//! Flow (as in sozu's `command/src/config.rs`): TOML text → [`FileConfig`] (serde, unknown keys
//! refused) → [`FileConfig::validate`] with the `DEFAULT_*` values → [`Config`]. Errors name the
//! file, the line and the key; the broker refuses to start on them and, on reload, keeps the
//! configuration it runs.
//!
//! ```toml
//! [store]
//! url = "sqlite:///var/lib/switchboard/switchboard.db"
//!
//! [http]
//! listen = "127.0.0.1:8080"
//!
//! [placement]
//! reservation_ttl = "60s"
//!
//! [api]
//! tokens_file = "/etc/switchboard/tokens"
//!
//! [[pool]]
//! name = "desktops"
//! policy = "wlc"
//!
//! [[pool.host]]
//! name = "x2go1"
//! address = "10.0.0.11:22"
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchboard_core::config::{ConfigDuration, HostAddr};
use switchboard_core::model::{DEFAULT_WEIGHT, PoolOptions, ResumePreference};
use switchboard_core::{HostSpec, Policy, PoolSpec, Settings};

/// Default configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/switchboard/broker.toml";
/// Default state directory (FHS).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/switchboard";
/// Default runtime directory (FHS).
pub const DEFAULT_RUN_DIR: &str = "/run/switchboard";
/// Default HTTP listen address: loopback only unless configured.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// Default agent listen address.
pub const DEFAULT_AGENT_LISTEN: &str = "127.0.0.1:7443";
/// Default TCP probe interval for agentless hosts with `probe = true`.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// Default TCP probe timeout.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A configuration error: where, and what.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file it came from.
    pub file: String,
    /// What is wrong, with line and key where known.
    pub message: String,
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where state lives (default `/var/lib/switchboard`).
    pub data_dir: Option<PathBuf>,
    /// `[store]`.
    #[serde(default)]
    pub store: StoreSection,
    /// `[http]`.
    #[serde(default)]
    pub http: HttpSection,
    /// `[agents]`.
    #[serde(default)]
    pub agents: AgentsSection,
    /// `[management]`.
    #[serde(default)]
    pub management: ManagementSection,
    /// `[placement]`.
    #[serde(default)]
    pub placement: PlacementSection,
    /// `[api]`.
    #[serde(default)]
    pub api: ApiSection,
    /// `[probe]`.
    #[serde(default)]
    pub probe: ProbeSection,
    /// `[[pool]]` tables.
    #[serde(default)]
    pub pool: Vec<PoolSection>,
}

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite://PATH` or `postgres://…`; default `sqlite://DATA_DIR/switchboard.db`.
    pub url: Option<String>,
}

/// `[http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Listen address (default 127.0.0.1:8080).
    pub listen: Option<String>,
    /// PEM certificate chain; with `tls_key` turns on HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Proxies whose X-Forwarded-For is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Whether `/metrics` answers clients that are not on loopback (default false).
    #[serde(default)]
    pub public_metrics: bool,
}

/// `[agents]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsSection {
    /// Listen address for agent links (default 127.0.0.1:7443). The listener runs when this
    /// is set or when any configured host has an agent.
    pub listen: Option<String>,
    /// PEM certificate chain. Without `tls_cert` and `tls_key` the broker makes a private CA
    /// and a certificate in `DATA_DIR/tls` on first start (agents pin `agent-ca.crt`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or addresses for the generated certificate (beyond localhost, loopback
    /// and this machine's host name): the names agents use to reach the broker.
    #[serde(default)]
    pub names: Vec<String>,
}

/// `[management]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementSection {
    /// Socket path (default /run/switchboard/mgmt.sock).
    pub socket: Option<PathBuf>,
    /// Octal mode, e.g. "0660".
    pub mode: Option<String>,
    /// Group owning the socket.
    pub group: Option<String>,
}

/// `[placement]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSection {
    /// Policy of pools that name none (default wlc).
    pub policy: Option<Policy>,
    /// Reservation lifetime (default 60s).
    pub reservation_ttl: Option<ConfigDuration>,
    /// Report intervals after which a load report is stale (default 3).
    pub stale_after_intervals: Option<u32>,
    /// How long a failed host is avoided (default 5m).
    pub failure_penalty: Option<ConfigDuration>,
    /// Seed of the tie-breaking RNG (default 0).
    pub seed: Option<u64>,
}

/// `[api]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Bearer tokens file (hashes only); default DATA_DIR/tokens.
    pub tokens_file: Option<PathBuf>,
}

/// `[probe]`: TCP probes of agentless hosts with `probe = true`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    /// How often (default 10s).
    pub interval: Option<ConfigDuration>,
    /// Connect timeout (default 2s).
    pub timeout: Option<ConfigDuration>,
}

/// `[[pool]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// Pool name.
    pub name: String,
    /// Placement policy.
    pub policy: Option<Policy>,
    /// Which session to resume first.
    pub resume_prefer: Option<ResumePreference>,
    /// `least-load` session reference for hosts without a cap.
    pub session_ref: Option<u32>,
    /// Whether the pool's hosts run `switchboard agent` (default true). Agentless hosts are
    /// placeable at once, judged only by an optional TCP probe.
    pub agent: Option<bool>,
    /// `[[pool.host]]` tables.
    #[serde(default)]
    pub host: Vec<HostSection>,
}

/// `[[pool.host]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Host name (as the host knows itself).
    pub name: String,
    /// Where clients connect, `host:port`.
    pub address: HostAddr,
    /// Weight (default 100).
    pub weight: Option<u32>,
    /// Session cap.
    pub max_sessions: Option<u32>,
    /// Probe the address with TCP to judge health (agentless hosts).
    #[serde(default)]
    pub probe: bool,
    /// Overrides the pool's `agent` for this host.
    pub agent: Option<bool>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The validated configuration the broker runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the file came from (for reloads and messages).
    pub path: Option<PathBuf>,
    /// State directory.
    pub data_dir: PathBuf,
    /// Store URL.
    pub store_url: String,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// HTTPS certificate and key, if configured.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Whether `/metrics` answers non-loopback clients.
    pub public_metrics: bool,
    /// Agent listener.
    pub agent_listen: SocketAddr,
    /// Whether `[agents] listen` was given (the listener then runs even without agent hosts).
    pub agent_listen_set: bool,
    /// Agent listener certificate and key, if configured (else generated in the data dir).
    pub agent_tls: Option<(PathBuf, PathBuf)>,
    /// Extra names for a generated agent listener certificate.
    pub agent_names: Vec<String>,
    /// Management socket path.
    pub management_socket: PathBuf,
    /// Its file mode (default 0660).
    pub management_mode: u32,
    /// The group that owns it (members may use it), if set.
    pub management_group: Option<String>,
    /// Tokens file.
    pub tokens_file: PathBuf,
    /// Cluster-wide placement settings.
    pub settings: Settings,
    /// Probe interval and timeout.
    pub probe_interval: Duration,
    /// Probe connect timeout.
    pub probe_timeout: Duration,
    /// Every host, once, in first-seen order.
    pub hosts: Vec<HostSpec>,
    /// Every pool.
    pub pools: Vec<PoolSpec>,
}

/// Line (1-based) of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn parse_listen(key: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("key `{key}`: {value:?} is not an IP:port listen address (e.g. 127.0.0.1:8080 or [::1]:8080)"))
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        let mut c = Config::parse(&text, &path.display().to_string())?;
        c.path = Some(path.to_owned());
        Ok(c)
    }

    /// Parses and validates configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: file.to_owned(),
            message,
        };
        let raw: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let msg = e.message().trim().to_owned();
            err(match line {
                Some(l) => format!("line {l}: {msg}"),
                None => msg,
            })
        })?;
        raw.validate().map_err(err)
    }
}

impl FileConfig {
    /// Applies defaults and checks everything that is not a matter of syntax.
    pub fn validate(self) -> Result<Config, String> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let store_url = self
            .store
            .url
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("switchboard.db").display()));
        switchboard_store::backend_of(&store_url).map_err(|e| format!("key `store.url`: {e}"))?;
        let http_listen = parse_listen(
            "http.listen",
            self.http.listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN),
        )?;
        let http_tls = match (self.http.tls_cert, self.http.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("keys `http.tls_cert` and `http.tls_key` go together".into()),
        };
        let agent_listen = parse_listen(
            "agents.listen",
            self.agents
                .listen
                .as_deref()
                .unwrap_or(DEFAULT_AGENT_LISTEN),
        )?;
        let agent_tls = match (self.agents.tls_cert, self.agents.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("keys `agents.tls_cert` and `agents.tls_key` go together".into()),
        };
        let default_policy = self.placement.policy.unwrap_or_default();
        let defaults = Settings::default();
        let settings = Settings {
            reservation_ttl: self
                .placement
                .reservation_ttl
                .unwrap_or(defaults.reservation_ttl),
            stale_after_intervals: self
                .placement
                .stale_after_intervals
                .unwrap_or(defaults.stale_after_intervals),
            failure_penalty: self
                .placement
                .failure_penalty
                .unwrap_or(defaults.failure_penalty),
            seed: self.placement.seed.unwrap_or(defaults.seed),
        };
        if settings.reservation_ttl.0.is_zero() {
            return Err("key `placement.reservation_ttl`: must be above zero".into());
        }
        if settings.stale_after_intervals == 0 {
            return Err("key `placement.stale_after_intervals`: must be at least 1".into());
        }
        let mut hosts: Vec<HostSpec> = Vec::new();
        let mut host_pool: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let mut pools = Vec::new();
        let mut pool_names = std::collections::BTreeSet::new();
        for (pi, p) in self.pool.into_iter().enumerate() {
            let here = format!("pool[{pi}] ({:?})", p.name);
            if p.name.is_empty() {
                return Err(format!("{here}: key `name` must not be empty"));
            }
            if !pool_names.insert(p.name.clone()) {
                return Err(format!(
                    "{here}: a pool named {:?} is defined twice",
                    p.name
                ));
            }
            let mut members = Vec::new();
            for h in p.host {
                if h.name.is_empty() {
                    return Err(format!("{here}: key `host.name` must not be empty"));
                }
                if h.max_sessions == Some(0) {
                    return Err(format!(
                        "{here}, host {:?}: key `max_sessions` must be at least 1",
                        h.name
                    ));
                }
                let agent = h.agent.or(p.agent).unwrap_or(true);
                if agent && h.probe {
                    return Err(format!(
                        "{here}, host {:?}: key `probe` is for agentless hosts; set `agent = false` \
                         on the pool or the host, or drop `probe` (an agent's link is its health check)",
                        h.name
                    ));
                }
                let spec = HostSpec {
                    name: h.name.clone(),
                    address: h.address,
                    weight: h.weight.unwrap_or(DEFAULT_WEIGHT),
                    max_sessions: h.max_sessions,
                    labels: h.labels,
                    agent,
                    probe: h.probe,
                };
                match host_pool.get(&h.name) {
                    Some((idx, other)) => {
                        if hosts[*idx] != spec {
                            return Err(format!(
                                "{here}, host {:?}: also defined in pool {other:?} with different \
                                 settings; a host's address, weight, cap, agent, probe and \
                                 labels must agree wherever it is listed",
                                h.name
                            ));
                        }
                    }
                    None => {
                        host_pool.insert(h.name.clone(), (hosts.len(), p.name.clone()));
                        hosts.push(spec);
                    }
                }
                if members.contains(&h.name) {
                    return Err(format!("{here}: host {:?} is listed twice", h.name));
                }
                members.push(h.name);
            }
            let session_ref = p.session_ref.unwrap_or(PoolOptions::default().session_ref);
            if session_ref == 0 {
                return Err(format!("{here}: key `session_ref` must be at least 1"));
            }
            pools.push(PoolSpec {
                name: p.name,
                policy: p.policy.unwrap_or(default_policy),
                options: PoolOptions {
                    resume_prefer: p.resume_prefer.unwrap_or_default(),
                    session_ref,
                },
                hosts: members,
            });
        }
        let management_mode = match &self.management.mode {
            None => 0o660,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    format!(
                        "key `management.mode`: {m:?} is not an octal file mode such as \"0660\""
                    )
                })?,
        };
        if management_mode & 0o007 != 0 {
            return Err(format!(
                "key `management.mode`: {:o} lets every local user drive the broker; use 0660 or tighter",
                management_mode
            ));
        }
        if let Some(g) = &self.management.group
            && (g.is_empty() || g.contains(':') || g.contains('\n'))
        {
            return Err(format!("key `management.group`: {g:?} is not a group name"));
        }
        Ok(Config {
            path: None,
            management_mode,
            management_group: self.management.group.clone(),
            management_socket: self
                .management
                .socket
                .unwrap_or_else(|| Path::new(DEFAULT_RUN_DIR).join("mgmt.sock")),
            tokens_file: self
                .api
                .tokens_file
                .unwrap_or_else(|| data_dir.join("tokens")),
            data_dir,
            store_url,
            http_listen,
            http_tls,
            trusted_proxies: self.http.trusted_proxies,
            public_metrics: self.http.public_metrics,
            agent_listen,
            agent_listen_set: self.agents.listen.is_some(),
            agent_tls,
            agent_names: self.agents.names,
            settings,
            probe_interval: self
                .probe
                .interval
                .map_or(DEFAULT_PROBE_INTERVAL, |d| d.0)
                .max(Duration::from_millis(100)),
            probe_timeout: self
                .probe
                .timeout
                .map_or(DEFAULT_PROBE_TIMEOUT, |d| d.0)
                .max(Duration::from_millis(10)),
            hosts,
            pools,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"
[store]
url = "sqlite:///tmp/x.db"

[placement]
reservation_ttl = "90s"
failure_penalty = 600

[[pool]]
name = "desktops"
policy = "least-load"

[[pool.host]]
name = "x2go1"
address = "127.0.0.2:22"
max_sessions = 40

[[pool.host]]
name = "x2go2"
address = "[::1]:2222"
weight = 200

[[pool]]
name = "shells"

[[pool.host]]
name = "x2go1"
address = "127.0.0.2:22"
max_sessions = 40
"#;

    #[test]
    fn a_full_config_parses_with_defaults_filled_in() {
        let c = Config::parse(GOOD, "broker.toml").unwrap();
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.settings.reservation_ttl.0, Duration::from_secs(90));
        assert_eq!(c.settings.failure_penalty.0, Duration::from_secs(600));
        assert_eq!(c.hosts.len(), 2, "a host listed in two pools is one host");
        assert_eq!(c.hosts[1].weight, 200);
        assert_eq!(c.hosts[0].weight, 100);
        assert_eq!(c.pools[0].policy, Policy::LeastLoad);
        assert_eq!(c.pools[1].policy, Policy::WeightedLeastSessions);
        assert_eq!(c.pools[1].hosts, vec!["x2go1".to_string()]);
        assert_eq!(c.tokens_file, Path::new("/var/lib/switchboard/tokens"));
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let text = "[http]\nlisten = \"127.0.0.1:1\"\nlisten_port = 8\n";
        let e = Config::parse(text, "/etc/switchboard/broker.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/switchboard/broker.toml: line 3"), "{e}");
        assert!(e.contains("listen_port"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        let cases = [
            ("[placement]\npolicy = \"fastest\"\n", "least-load"),
            ("[placement]\nreservation_ttl = \"soon\"\n", "72h"),
            ("[http]\nlisten = \"localhost\"\n", "http.listen"),
            ("[store]\nurl = \"mysql://x\"\n", "store.url"),
            (
                "[[pool]]\nname=\"p\"\n[[pool.host]]\nname=\"a\"\naddress=\"::1:22\"\n",
                "brackets",
            ),
            (
                "[[pool]]\nname=\"p\"\n[[pool]]\nname=\"p\"\n",
                "defined twice",
            ),
            (
                "[[pool]]\nname=\"p\"\n[[pool.host]]\nname=\"a\"\naddress=\"127.0.0.2:22\"\n[[pool]]\nname=\"q\"\n[[pool.host]]\nname=\"a\"\naddress=\"127.0.0.3:22\"\n",
                "different settings",
            ),
            ("[http]\ntls_cert = \"/x\"\n", "go together"),
            ("[agents]\ntls_key = \"/x\"\n", "go together"),
            (
                "[[pool]]\nname=\"p\"\n[[pool.host]]\nname=\"a\"\naddress=\"127.0.0.2:22\"\nprobe = true\n",
                "agent = false",
            ),
        ];
        for (text, needle) in cases {
            let e = Config::parse(text, "b.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_documented_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/broker.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.pools.len(), 2);
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(c.pools[1].policy, Policy::RoundRobin);
        assert!(c.hosts[0].probe);
    }

    #[test]
    fn an_empty_file_is_a_valid_broker_with_no_pools() {
        let c = Config::parse("", "b.toml").unwrap();
        assert!(c.pools.is_empty());
        assert!(c.store_url.starts_with("sqlite:///var/lib/switchboard/"));
        assert_eq!(c.management_socket, Path::new("/run/switchboard/mgmt.sock"));
    }
}
