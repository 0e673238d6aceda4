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

mod file;
mod kubernetes;
mod x2go;

pub use file::*;
pub use kubernetes::{DEFAULT_DOTFILES, RESERVED_PATHS};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchboard_core::model::{DEFAULT_WEIGHT, PoolOptions, SessionLimits};
use switchboard_core::{HostSpec, PoolSpec, Settings};

pub use crate::engine::Layout;
pub use crate::gateway::GatewayConfig;
pub use crate::http::x2go::X2goConfig;
pub use crate::kubernetes::KubePoolConfig;

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

/// Longest `[agents] empty_inventory_grace`.
const MAX_EMPTY_INVENTORY_GRACE: Duration = Duration::from_secs(3600);

/// A configuration error: where, and what.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file it came from.
    pub file: String,
    /// What is wrong, with line and key where known.
    pub message: String,
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
    /// `[http] max_connections`, if set.
    pub http_max_connections: Option<usize>,
    /// `[http] max_connections_per_source`, if set.
    pub http_max_per_source: Option<usize>,
    /// Agent listener.
    pub agent_listen: SocketAddr,
    /// Whether `[agents] listen` was given (the listener then runs even without agent hosts).
    pub agent_listen_set: bool,
    /// Agent listener certificate and key, if configured (else generated in the data dir).
    pub agent_tls: Option<(PathBuf, PathBuf)>,
    /// Extra names for a generated agent listener certificate.
    pub agent_names: Vec<String>,
    /// How long an empty first inventory from a host with live sessions is held (zero: not).
    pub agent_empty_inventory_grace: Duration,
    /// Management socket path.
    pub management_socket: PathBuf,
    /// Its file mode (default 0660).
    pub management_mode: u32,
    /// The group that owns it (members may use it), if set.
    pub management_group: Option<String>,
    /// Tokens file.
    pub tokens_file: PathBuf,
    /// Settings, hosts and pools: what the engine runs with.
    pub cluster: Layout,
    /// How often session policies are checked.
    pub policy_interval: Duration,
    /// How long audit records are kept (`None`: for ever).
    pub audit_keep: Option<Duration>,
    /// TCP probes of agentless hosts.
    pub probe: crate::probe::Config,
    /// `[auth]`, if configured: the method and the size of its pool.
    pub auth: Option<switchboard_auth::Settings>,
    /// The X2Go frontend, if configured.
    pub x2go: Option<X2goConfig>,
    /// Group whose members may sign in to the dashboard with a password.
    pub ui_admin_group: Option<String>,
    /// Kubernetes pools.
    pub kube_pools: Vec<KubePoolConfig>,
    /// The gateway, if `[gateway] listen` is set.
    pub gateway: Option<GatewayConfig>,
}

/// Checks a pool's session limits: a cap of at least 1, log-off times above zero.
fn check_limits(l: &SessionLimits) -> Result<(), String> {
    if l.max_sessions_per_user == Some(0) {
        return Err("key `max_sessions_per_user` must be at least 1".into());
    }
    for (key, v) in [
        ("logoff_disconnected_after", &l.logoff_disconnected_after),
        ("logoff_idle_after", &l.logoff_idle_after),
        ("max_session_age", &l.max_session_age),
    ] {
        if v.is_some_and(|d| d.0.is_zero()) {
            return Err(format!("key `{key}` must be above zero"));
        }
    }
    Ok(())
}

/// Adds `spec` to the host table, or checks it agrees with the same host listed elsewhere.
fn merge_host(
    hosts: &mut Vec<HostSpec>,
    host_pool: &mut BTreeMap<String, (usize, String)>,
    spec: HostSpec,
    pool: &str,
    here: &str,
) -> Result<(), String> {
    match host_pool.get(&spec.name) {
        Some((idx, other)) => {
            if hosts[*idx] != spec {
                return Err(format!(
                    "{here}, host {:?}: also defined in pool {other:?} with different \
                     settings; a host's address, weight, cap, agent, probe and \
                     labels must agree wherever it is listed",
                    spec.name
                ));
            }
        }
        None => {
            host_pool.insert(spec.name.clone(), (hosts.len(), pool.to_owned()));
            hosts.push(spec);
        }
    }
    Ok(())
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
        let raw: FileConfig = switchboard_core::config::parse_toml(text).map_err(err)?;
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
        if self.http.max_connections == Some(0) {
            return Err("key `http.max_connections` must be at least 1".into());
        }
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
        let agent_empty_inventory_grace = self
            .agents
            .empty_inventory_grace
            .map_or(crate::agents::DEFAULT_EMPTY_INVENTORY_GRACE, |d| d.0);
        if agent_empty_inventory_grace > MAX_EMPTY_INVENTORY_GRACE {
            return Err(format!(
                "key `agents.empty_inventory_grace`: at most 1h (got {}); sessions a host no \
                 longer has would be shown that long",
                humantime::format_duration(agent_empty_inventory_grace)
            ));
        }
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
        let mut kube_pools = Vec::new();
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
            if p.kind.unwrap_or_default() == PoolKind::Kubernetes {
                kube_pools.push(kubernetes::kube_pool(p).map_err(|m| format!("{here}: {m}"))?);
                continue;
            }
            if let Some(k) = kubernetes::kube_only_key(&p) {
                return Err(format!(
                    "{here}: key `{k}` is for `kind = \"kubernetes\"` pools"
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
                merge_host(&mut hosts, &mut host_pool, spec, &p.name, &here)?;
                if members.contains(&h.name) {
                    return Err(format!("{here}: host {:?} is listed twice", h.name));
                }
                members.push(h.name);
            }
            let session_ref = p.session_ref.unwrap_or(PoolOptions::default().session_ref);
            if session_ref == 0 {
                return Err(format!("{here}: key `session_ref` must be at least 1"));
            }
            let limits = SessionLimits {
                max_sessions_per_user: p.max_sessions_per_user,
                logoff_disconnected_after: p.logoff_disconnected_after,
                logoff_idle_after: p.logoff_idle_after,
                max_session_age: p.max_session_age,
                logoff_grace: p
                    .logoff_grace
                    .unwrap_or(SessionLimits::default().logoff_grace),
            };
            check_limits(&limits).map_err(|m| format!("{here}: {m}"))?;
            pools.push(PoolSpec {
                name: p.name,
                policy: p.policy.unwrap_or(default_policy),
                options: PoolOptions {
                    resume_prefer: p.resume_prefer.unwrap_or_default(),
                    session_ref,
                    limits,
                },
                hosts: members,
            });
        }
        // Each Kubernetes pool is a core pool too, with one host holding its session pods.
        for k in &kube_pools {
            let (host, pool) = kubernetes::core_pool(k, default_policy);
            if hosts.iter().any(|h| h.name == host.name) {
                return Err(format!(
                    "host {:?}: the name is taken by Kubernetes pool {:?}'s sessions",
                    host.name, k.name
                ));
            }
            host_pool.insert(host.name.clone(), (hosts.len(), k.name.clone()));
            hosts.push(host);
            pools.push(pool);
        }
        let auth = match &self.auth.method {
            Some(m) => Some(auth_settings(
                switchboard_auth::Method::parse(
                    m,
                    self.auth.pam_service.as_deref(),
                    self.auth.pam_pool,
                )
                .map_err(|e| format!("key `auth.method`: {e}"))?,
                self.auth.workers,
                self.auth.queue,
            )?),
            None => {
                if self.auth.pam_service.is_some()
                    || self.auth.pam_pool.is_some()
                    || self.auth.workers.is_some()
                    || self.auth.queue.is_some()
                {
                    return Err("key `auth.method`: missing (pam, file:PATH or none)".into());
                }
                None
            }
        };
        let mut x2go = x2go::frontend(
            &self.x2go,
            auth.is_some(),
            default_policy,
            &pool_names,
            &mut hosts,
            &mut host_pool,
            &mut pools,
        )?;

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
        let gateway = kubernetes::gateway(self.gateway, &kube_pools, self.auth.method.is_some())?;
        let user_header = none_auth(
            auth.as_ref().map(|a| &a.method),
            self.auth.user_header.as_deref(),
            x2go.as_ref(),
            http_listen,
            &self.http.trusted_proxies,
            gateway.as_ref().map(|g| g.listen),
        )?;
        if let Some(x) = &mut x2go {
            x.user_header = user_header;
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
            http_max_connections: self.http.max_connections,
            http_max_per_source: self.http.max_connections_per_source,
            agent_listen,
            agent_listen_set: self.agents.listen.is_some(),
            agent_tls,
            agent_names: self.agents.names,
            agent_empty_inventory_grace,
            cluster: Layout {
                settings,
                hosts,
                pools,
            },
            policy_interval: self
                .placement
                .policy_interval
                .map_or(crate::sweeper::DEFAULT_INTERVAL, |d| d.0)
                .max(Duration::from_millis(100)),
            audit_keep: match self.audit.keep {
                None => Some(crate::audit::DEFAULT_KEEP),
                Some(d) if d.0.is_zero() => None,
                Some(d) => Some(d.0),
            },
            probe: crate::probe::Config {
                interval: self
                    .probe
                    .interval
                    .map_or(crate::probe::DEFAULT_INTERVAL, |d| d.0)
                    .max(Duration::from_millis(100)),
                timeout: self
                    .probe
                    .timeout
                    .map_or(crate::probe::DEFAULT_TIMEOUT, |d| d.0)
                    .max(Duration::from_millis(10)),
            },
            auth,
            x2go,
            ui_admin_group: self.ui.admin_group,
            gateway,
            kube_pools,
        })
    }
}

/// `[auth] workers` and `queue` for `method`, with their defaults.
fn auth_settings(
    method: switchboard_auth::Method,
    workers: Option<usize>,
    queue: Option<usize>,
) -> Result<switchboard_auth::Settings, String> {
    use switchboard_auth::pool::{DEFAULT_QUEUE, MAX_QUEUE, MAX_WORKERS, default_workers};
    if let Some(w) = workers {
        if matches!(method, switchboard_auth::Method::Pam { .. }) {
            return Err(
                "key `auth.workers`: with method = \"pam\" the number of threads is `auth.pam_pool`"
                    .into(),
            );
        }
        if w == 0 || w > MAX_WORKERS {
            return Err(format!(
                "key `auth.workers`: must be 1..={MAX_WORKERS} (got {w})"
            ));
        }
    }
    let queue = queue.unwrap_or(DEFAULT_QUEUE);
    if queue > MAX_QUEUE {
        return Err(format!(
            "key `auth.queue`: must be 0..={MAX_QUEUE} (got {queue})"
        ));
    }
    Ok(switchboard_auth::Settings {
        method,
        workers: workers.unwrap_or_else(default_workers),
        queue,
    })
}

/// The checks `[auth] method = "none"` needs, which trusts whatever user name a request
/// carries: no autologin (it would install a key for anyone, as anyone), and on a listener off
/// loopback only with the user from a header that a trusted proxy sets (`[auth] user_header`
/// and `[http] trusted_proxies`). The gateway has no such header: `none` there stays on
/// loopback. Returns the header to read.
fn none_auth(
    auth: Option<&switchboard_auth::Method>,
    user_header: Option<&str>,
    x2go: Option<&crate::http::x2go::X2goConfig>,
    http_listen: std::net::SocketAddr,
    trusted_proxies: &[std::net::IpAddr],
    gateway_listen: Option<std::net::SocketAddr>,
) -> Result<Option<axum::http::HeaderName>, String> {
    let none = matches!(auth, Some(switchboard_auth::Method::None));
    let header = match user_header {
        None => None,
        Some(_) if !none => {
            return Err(
                "key `auth.user_header`: only used with method = \"none\" (other methods check \
                 the password themselves)"
                    .into(),
            );
        }
        Some(h) => Some(
            axum::http::HeaderName::try_from(h)
                .map_err(|_| format!("key `auth.user_header`: {h:?} is not an HTTP header name"))?,
        ),
    };
    if !none {
        return Ok(None);
    }
    if header.is_some() && trusted_proxies.is_empty() {
        return Err(
            "key `auth.user_header`: needs `http.trusted_proxies`, the proxies whose header is \
             believed (from anyone else it would be a name anyone can send)"
                .into(),
        );
    }
    if let Some(x) = x2go {
        if let Some((p, _)) = x.profiles.iter().zip(x.autologin.iter()).find(|(_, a)| **a) {
            return Err(format!(
                "key `auth.method`: \"none\" cannot go with X2Go autologin (profile {:?} has \
                 broker-session-autologin): anyone could have a key installed as anyone; use pam \
                 or file:PATH",
                p.id
            ));
        }
        if !http_listen.ip().is_loopback() && header.is_none() {
            return Err(format!(
                "key `auth.method`: \"none\" on {http_listen}, which is not loopback, would \
                 believe any user name a client sends; set `auth.user_header` and \
                 `http.trusted_proxies` so that the name comes from your signing-in proxy, or \
                 use pam or file:PATH"
            ));
        }
    }
    if let Some(g) = gateway_listen
        && !g.ip().is_loopback()
    {
        return Err(format!(
            "key `auth.method`: \"none\" would sign anyone in as anyone on the gateway at {g}, \
             which is not loopback; use pam or file:PATH"
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use switchboard_core::Policy;

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
        assert_eq!(
            c.cluster.settings.reservation_ttl.0,
            Duration::from_secs(90)
        );
        assert_eq!(
            c.cluster.settings.failure_penalty.0,
            Duration::from_secs(600)
        );
        assert_eq!(
            c.cluster.hosts.len(),
            2,
            "a host listed in two pools is one host"
        );
        assert_eq!(c.cluster.hosts[1].weight, 200);
        assert_eq!(c.cluster.hosts[0].weight, 100);
        assert_eq!(c.cluster.pools[0].policy, Policy::LeastLoad);
        assert_eq!(c.cluster.pools[1].policy, Policy::WeightedLeastSessions);
        assert_eq!(c.cluster.pools[1].hosts, vec!["x2go1".to_string()]);
        assert_eq!(c.tokens_file, Path::new("/var/lib/switchboard/tokens"));
        assert_eq!(c.agent_empty_inventory_grace, Duration::from_secs(60));
        let c = Config::parse("[agents]\nempty_inventory_grace = \"0\"\n", "b.toml").unwrap();
        assert_eq!(c.agent_empty_inventory_grace, Duration::ZERO);
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
            (
                "[[pool]]\nname=\"p\"\nmax_sessions_per_user = 0\n",
                "at least 1",
            ),
            (
                "[[pool]]\nname=\"p\"\nlogoff_idle_after = 0\n",
                "above zero",
            ),
            ("[agents]\ntls_key = \"/x\"\n", "go together"),
            (
                "[agents]\nempty_inventory_grace = \"2h\"\n",
                "agents.empty_inventory_grace",
            ),
            ("[agents]\nempty_inventory_grace = \"soon\"\n", "line 2"),
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
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let text = std::fs::read_to_string(examples.join("broker.toml"))
            .unwrap()
            .replace(
                "/etc/x2go/broker/x2gobroker-sessionprofiles.conf",
                &examples
                    .join("x2gobroker-sessionprofiles.conf")
                    .display()
                    .to_string(),
            );
        let c = Config::parse(&text, "examples/broker.toml").unwrap();
        // Two [[pool]]s and the four profiles of the example profiles file.
        assert_eq!(c.cluster.pools.len(), 6);
        let x = c.x2go.as_ref().unwrap();
        assert_eq!(x.profiles.len(), 4);
        assert_eq!(
            *x.autologin,
            [true, false, false, false],
            "kiosk, legacy-shell, pool-mate, staff-xfce"
        );
        assert!(x.may_login("alice", "alice-admin"));
        assert!(!x.may_login("bob", "alice"));
        let legacy = c.cluster.hosts.iter().find(|h| h.name == "old1").unwrap();
        assert!(!legacy.agent && legacy.probe);
        let mate = c
            .cluster
            .pools
            .iter()
            .find(|p| p.name == "pool-mate")
            .unwrap();
        assert_eq!(mate.policy, Policy::LeastLoad);
        assert_eq!(mate.options.limits.max_sessions_per_user, Some(2));
        assert_eq!(
            mate.options.limits.logoff_disconnected_after.unwrap().0,
            Duration::from_secs(8 * 3600)
        );
        let desktops = c
            .cluster
            .pools
            .iter()
            .find(|p| p.name == "desktops")
            .unwrap();
        assert_eq!(
            desktops.options.limits.max_session_age.unwrap().0,
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(c.policy_interval, Duration::from_secs(10));
        assert_eq!(c.audit_keep, Some(Duration::from_secs(90 * 86400)));
        assert_eq!(
            c.cluster
                .hosts
                .iter()
                .find(|h| h.name == "x2go-c")
                .unwrap()
                .address
                .to_string(),
            "127.0.0.63:2222"
        );
        // Without [x2go]: only the [[pool]]s.
        let text = std::fs::read_to_string(examples.join("broker.toml")).unwrap();
        let without = text[..text.find("[x2go]").unwrap()].to_owned()
            + &text[text.find("[probe]").unwrap()..];
        let c = Config::parse(&without, "examples/broker.toml").unwrap();
        assert!(c.x2go.is_none());
        assert!(matches!(
            c.auth.map(|a| a.method),
            Some(switchboard_auth::Method::Pam { .. })
        ));
        assert_eq!(c.cluster.pools.len(), 2);
        assert_eq!(c.cluster.hosts.len(), 2);
        assert_eq!(c.cluster.pools[1].policy, Policy::RoundRobin);
        assert!(c.cluster.hosts[0].probe);
    }

    #[test]
    fn method_none_is_refused_with_autologin_and_off_loopback_without_a_proxy_header() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.conf");
        std::fs::write(&plain, "[desk]\nname=Desk\nhost=h1 (127.0.0.2)\n").unwrap();
        let auto = dir.path().join("auto.conf");
        std::fs::write(
            &auto,
            "[desk]\nname=Desk\nhost=h1 (127.0.0.2)\nbroker-session-autologin=true\n",
        )
        .unwrap();
        let file = |auth: &str, http: &str, profiles: &Path| {
            format!(
                "[auth]\n{auth}\n[http]\n{http}\n[x2go]\nsession_profiles = {:?}\n",
                profiles.display().to_string()
            )
        };
        let parse = |text: String| Config::parse(&text, "b.toml").map_err(|e| e.to_string());
        let none = "method = \"none\"";
        // On loopback without autologin: as before.
        let c = parse(file(none, "listen = \"127.0.0.1:8080\"", &plain)).unwrap();
        assert_eq!(c.x2go.unwrap().user_header, None);
        // Autologin would install a key for anyone, as anyone.
        let e = parse(file(none, "listen = \"127.0.0.1:8080\"", &auto)).unwrap_err();
        assert!(e.contains("autologin") && e.contains("\"desk\""), "{e}");
        // Off loopback the user must come from a trusted proxy's header.
        let e = parse(file(none, "listen = \"0.0.0.0:8080\"", &plain)).unwrap_err();
        assert!(
            e.contains("not loopback") && e.contains("auth.user_header"),
            "{e}"
        );
        let e = parse(file(
            &format!("{none}\nuser_header = \"X-Remote-User\""),
            "listen = \"0.0.0.0:8080\"",
            &plain,
        ))
        .unwrap_err();
        assert!(e.contains("http.trusted_proxies"), "{e}");
        let c = parse(file(
            &format!("{none}\nuser_header = \"X-Remote-User\""),
            "listen = \"0.0.0.0:8080\"\ntrusted_proxies = [\"10.0.0.5\"]",
            &plain,
        ))
        .unwrap();
        assert_eq!(
            c.x2go.unwrap().user_header.as_ref().map(|h| h.as_str()),
            Some("x-remote-user")
        );
        // The header means nothing to methods that check passwords, and must be a header name.
        let e = parse(file(
            "method = \"pam\"\nuser_header = \"X-Remote-User\"",
            "listen = \"127.0.0.1:8080\"",
            &plain,
        ))
        .unwrap_err();
        assert!(e.contains("auth.user_header"), "{e}");
        let e = parse(file(
            &format!("{none}\nuser_header = \"not a header\""),
            "listen = \"0.0.0.0:8080\"\ntrusted_proxies = [\"10.0.0.5\"]",
            &plain,
        ))
        .unwrap_err();
        assert!(e.contains("not an HTTP header name"), "{e}");
        // The gateway has no proxy header: `none` there stays on loopback.
        let gateway = |listen: &str| {
            format!(
                "[auth]\n{none}\n[gateway]\nlisten = \"{listen}\"\ntls_cert = \"/x.crt\"\n\
                 tls_key = \"/x.key\"\n[[gateway.target]]\ntype = \"desktop\"\n\
                 address = \"127.0.0.1:14500\"\n"
            )
        };
        let e = parse(gateway("0.0.0.0:8443")).unwrap_err();
        assert!(
            e.contains("gateway") && e.contains("anyone in as anyone"),
            "{e}"
        );
        parse(gateway("127.0.0.1:8443")).unwrap();
    }

    #[test]
    fn the_x2go_frontend_needs_auth_and_a_readable_profiles_file() {
        let e = Config::parse("[x2go]\nsession_profiles = \"/nonexistent\"\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[auth] method"), "{e}");
        let e = Config::parse(
            "[auth]\nmethod = \"none\"\n[x2go]\nsession_profiles = \"/nonexistent\"\n",
            "b.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("x2go.session_profiles") && e.contains("/nonexistent"),
            "{e}"
        );
        let e = Config::parse("[auth]\nmethod = \"ldap\"\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.method"), "{e}");
    }

    #[test]
    fn the_auth_pool_has_defaults_and_its_keys_are_checked() {
        let c = Config::parse("[auth]\nmethod = \"file:/p\"\n", "b.toml").unwrap();
        let a = c.auth.unwrap();
        assert_eq!(a.queue, switchboard_auth::pool::DEFAULT_QUEUE);
        assert_eq!(a.workers, switchboard_auth::pool::default_workers());
        assert!((1..=4).contains(&a.workers));
        let c = Config::parse(
            "[auth]\nmethod = \"file:/p\"\nworkers = 1\nqueue = 0\n",
            "b.toml",
        )
        .unwrap();
        assert_eq!(c.auth.map(|a| (a.workers, a.queue)), Some((1, 0)));
        let c = Config::parse("[auth]\nmethod = \"pam\"\nqueue = 8\n", "b.toml").unwrap();
        assert_eq!(c.auth.map(|a| a.queue), Some(8));
        for (text, key) in [
            ("method = \"file:/p\"\nworkers = 0\n", "auth.workers"),
            ("method = \"file:/p\"\nqueue = 100000\n", "auth.queue"),
            ("method = \"pam\"\nworkers = 2\n", "auth.pam_pool"),
            ("queue = 2\n", "auth.method"),
        ] {
            let e = Config::parse(&format!("[auth]\n{text}"), "b.toml")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("b.toml: ") && e.contains(key), "{text}: {e}");
        }
        let e = Config::parse("[auth]\nmethod = \"pam\"\nqueue = -1\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn an_empty_file_is_a_valid_broker_with_no_pools() {
        let c = Config::parse("", "b.toml").unwrap();
        assert!(c.cluster.pools.is_empty());
        assert!(c.store_url.starts_with("sqlite:///var/lib/switchboard/"));
        assert_eq!(c.management_socket, Path::new("/run/switchboard/mgmt.sock"));
    }

    fn err_of(text: &str) -> String {
        Config::parse(text, "b.toml").unwrap_err().message
    }

    #[test]
    fn kubernetes_pools_and_the_gateway_are_checked() {
        let kube = "[[pool]]\nname = \"k\"\nkind = \"kubernetes\"\nnamespace = \"sessions\"\ntemplates = \"/t\"\n";
        let c = Config::parse(kube, "b.toml").unwrap();
        assert_eq!(c.kube_pools.len(), 1);
        // A Kubernetes pool has no configured hosts: its core pool holds only the host of its
        // session pods, which placement never picks.
        let pools: Vec<(&str, &[String])> = c
            .cluster
            .pools
            .iter()
            .map(|p| (p.name.as_str(), p.hosts.as_slice()))
            .collect();
        assert_eq!(pools, [("k", &["kubernetes:k".to_owned()][..])]);
        let h = &c.cluster.hosts[0];
        assert_eq!((h.weight, h.agent, h.probe), (0, false, false));
        assert!(
            err_of(&format!(
                "{kube}[[pool]]\nname = \"h\"\nagent = false\n[[pool.host]]\nname = \"kubernetes:k\"\naddress = \"127.0.0.2:22\"\n"
            ))
            .contains("taken by Kubernetes pool")
        );
        assert_eq!(c.kube_pools[0].budgets, switchboard_k8s::Budgets::default());
        let err = |text: &str| Config::parse(text, "b.toml").unwrap_err().message;
        assert!(
            err(&format!(
                "{kube}[[pool.host]]\nname = \"h\"\naddress = \"127.0.0.2:22\"\n"
            ))
            .contains("`host`")
        );
        assert!(
            err("[[pool]]\nname = \"k\"\nkind = \"kubernetes\"\ntemplates = \"/t\"\n")
                .contains("namespace")
        );
        assert!(
            err("[[pool]]\nname = \"h\"\nnamespace = \"x\"\n").contains("kind = \"kubernetes\"")
        );
        assert!(err(&format!("{kube}dotfiles_claim = \"d\"\n")).contains("home = \"dotfiles\""));
        assert!(err(&format!("{kube}home = \"dotfiles\"\n")).contains("dotfiles_claim"));
        assert!(
            err(&format!(
                "{kube}home = \"dotfiles\"\ndotfiles_claim = \"d\"\ndotfiles = [\"../x\"]\n"
            ))
            .contains("dotfiles")
        );
        let c = Config::parse(
            &format!("{kube}home = \"dotfiles\"\ndotfiles_claim = \"d\"\n"),
            "b.toml",
        )
        .unwrap();
        assert!(
            matches!(&c.kube_pools[0].render.home, switchboard_k8s::Home::Dotfiles { files, .. } if files.len() == DEFAULT_DOTFILES.len())
        );
        // The gateway: needs auth, TLS off loopback, a real pool or targets.
        let auth = "[auth]\nmethod = \"none\"\n";
        assert!(err("[gateway]\nlisten = \"127.0.0.1:8443\"\npool = \"k\"\n").contains("[auth]"));
        assert!(
            err(&format!(
                "{auth}{kube}[gateway]\nlisten = \"0.0.0.0:8443\"\npool = \"k\"\n"
            ))
            .contains("tls_cert")
        );
        assert!(
            err(&format!(
                "{auth}[gateway]\nlisten = \"127.0.0.1:8443\"\npool = \"nope\"\n"
            ))
            .contains("no Kubernetes pool")
        );
        assert!(
            err(&format!("{auth}[gateway]\nlisten = \"127.0.0.1:8443\"\n"))
                .contains("needs `pool`")
        );
        let t = "[[gateway.target]]\ntype = \"login\"\naddress = \"127.0.0.1:14500\"\n";
        assert!(
            err(&format!(
                "{auth}[gateway]\nlisten = \"127.0.0.1:8443\"\n{t}"
            ))
            .contains("gateway.target.type")
        );
        let ok = format!(
            "{auth}{kube}[gateway]\nlisten = \"127.0.0.1:8443\"\npool = \"k\"\n[[gateway.target]]\ntype = \"lab\"\naddress = \"127.0.0.1:14500\"\n"
        );
        let g = Config::parse(&ok, "b.toml").unwrap().gateway.unwrap();
        assert_eq!(g.targets.len(), 1);
        assert_eq!(g.token_ttl, Duration::from_secs(600));
    }
}
