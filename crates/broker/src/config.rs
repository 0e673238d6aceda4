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
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::config::{ConfigDuration, HostAddr};
use switchboard_core::model::{DEFAULT_WEIGHT, PoolOptions, ResumePreference, SessionLimits};
use switchboard_core::{HostSpec, Policy, PoolSpec, Settings};
use switchboard_proto::x2go::Profile;

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
    /// `[auth]`: how users log in (X2Go frontend, dashboard).
    #[serde(default)]
    pub auth: AuthSection,
    /// `[x2go]`: the X2Go broker frontend.
    #[serde(default)]
    pub x2go: X2goSection,
    /// `[ui]`: the web dashboard.
    #[serde(default)]
    pub ui: UiSection,
    /// `[[pool]]` tables.
    #[serde(default)]
    pub pool: Vec<PoolSection>,
    /// `[gateway]`: the HTTPS/WebSocket gateway for browsers and Xpra clients.
    #[serde(default)]
    pub gateway: GatewaySection,
}

/// `[gateway]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Its own listener; the gateway runs when this is set.
    pub listen: Option<String>,
    /// PEM certificate chain: with `tls_key`, the listener speaks HTTPS/WSS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// The Kubernetes pool whose session types the gateway offers.
    pub pool: Option<String>,
    /// Static targets: a session type served by a fixed address (a host running Xpra).
    #[serde(default)]
    pub target: Vec<GatewayTargetSection>,
    /// How long a browser sign-in lasts (default 12h).
    pub cookie_ttl: Option<ConfigDuration>,
    /// How long a connect URL with a token in its path works (default 10m).
    pub token_ttl: Option<ConfigDuration>,
    /// The Xpra HTML5 client's files, served under /client/ (default /usr/share/xpra/www).
    pub html5_client: Option<PathBuf>,
}

/// `[[gateway.target]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTargetSection {
    /// Session type (the URL path `/<type>`).
    #[serde(rename = "type")]
    pub session_type: String,
    /// Where its Xpra server listens (TCP).
    pub address: HostAddr,
    /// Only these users may use it (default: every signed-in user).
    pub users: Option<Vec<String>>,
}

/// How a pool starts sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Listed hosts (with or without agents).
    #[default]
    Hosts,
    /// Per-user pods on Kubernetes.
    Kubernetes,
}

/// `home` of a Kubernetes pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HomeKind {
    /// What the template mounts.
    #[default]
    None,
    /// One shared claim (`home_claim`), a subdirectory per user.
    Shared,
    /// A claim per user, made on first start.
    PerUser,
    /// A fresh home; listed dotfiles saved to and restored from `dotfiles_claim`.
    Dotfiles,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `pam`, `file:PATH` or `none`. No default: a frontend that needs users refuses to start
    /// without it.
    pub method: Option<String>,
    /// PAM service name (default `switchboard`, i.e. `/etc/pam.d/switchboard`).
    pub pam_service: Option<String>,
    /// Most PAM conversations at once (default 2).
    pub pam_pool: Option<usize>,
}

/// `[ui]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiSection {
    /// Members of this group may sign in to the dashboard with their password (through
    /// `[auth]`); without it only admin tokens sign in.
    pub admin_group: Option<String>,
}

/// `[x2go]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X2goSection {
    /// An x2gobroker `x2gobroker-sessionprofiles.conf`, used unmodified; each profile becomes a
    /// pool. The frontend (`/plain/`, `/json/`) runs when this is set.
    pub session_profiles: Option<PathBuf>,
    /// How long an AUTHID chain lives after its password login (default 10h, X2Go's
    /// `auth-timeout`).
    pub token_ttl: Option<ConfigDuration>,
    /// Whether an AUTHID is only valid from the address it was issued to (default true).
    pub bind_to_address: Option<bool>,
    /// Most live AUTHIDs (default 100000).
    pub max_tokens: Option<usize>,
    /// Which X2Go server logins (`login=`) each broker user may ask for besides their own name;
    /// `"*"` allows any.
    #[serde(default)]
    pub login_map: BTreeMap<String, Vec<String>>,
    /// Whether profile hosts run `switchboard agent` (default true); a profile's
    /// `broker-agent-query-mode = NONE` makes its hosts agentless.
    pub agent: Option<bool>,
    /// Placement policy of profiles without `broker-policy` (default: `[placement] policy`).
    pub policy: Option<Policy>,
    /// Whether a user's primary group counts for `acl-groups-*` (default false, as X2Go's
    /// `ignore-primary-group-memberships = true`).
    pub primary_groups: Option<bool>,
    /// Autologin for profiles without `broker-session-autologin` (default false, as X2Go's
    /// `default-session-autologin`).
    pub session_autologin: Option<bool>,
    /// How long an autologin key stays installed if it is not used (default 60s).
    pub autologin_key_ttl: Option<ConfigDuration>,
    /// How long `selectsession` waits for an agent to suspend a running session (default 5s).
    pub suspend_timeout: Option<ConfigDuration>,
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
    /// How often session policies (log-off after disconnected, idle, age) are checked
    /// (default 10s).
    pub policy_interval: Option<ConfigDuration>,
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
    /// Most live sessions one user may have on the pool's hosts (default unlimited).
    pub max_sessions_per_user: Option<u32>,
    /// Log off sessions disconnected this long (default never).
    pub logoff_disconnected_after: Option<ConfigDuration>,
    /// Log off sessions whose user has been idle this long, where the source reports idleness
    /// (default never).
    pub logoff_idle_after: Option<ConfigDuration>,
    /// Log off sessions this old (default never).
    pub max_session_age: Option<ConfigDuration>,
    /// Between terminate and kill of a policy log-off (default 60s).
    pub logoff_grace: Option<ConfigDuration>,
    /// `[[pool.host]]` tables.
    #[serde(default)]
    pub host: Vec<HostSection>,
    /// `hosts` (default) or `kubernetes`.
    pub kind: Option<PoolKind>,
    /// Kubernetes: namespace of the session pods.
    pub namespace: Option<String>,
    /// Kubernetes: kubeconfig file (default: in-cluster, then ~/.kube/config).
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes: directory of pod templates (`<user>/`, `<group>/`, `default/`).
    pub templates: Option<PathBuf>,
    /// Kubernetes: session port when no container port is named `xpra` or `session` (14500).
    pub port: Option<u16>,
    /// Kubernetes: budget for finding a node (60s).
    pub scheduling_timeout: Option<ConfigDuration>,
    /// Kubernetes: budget for pulling images and starting containers (5m).
    pub image_pull_timeout: Option<ConfigDuration>,
    /// Kubernetes: budget from running to Ready (2m).
    pub start_timeout: Option<ConfigDuration>,
    /// Kubernetes: home directories (`none`, `shared`, `per-user`).
    pub home: Option<HomeKind>,
    /// Kubernetes: the shared home claim (`home = "shared"`).
    pub home_claim: Option<String>,
    /// Kubernetes: size of per-user home claims (10Gi).
    pub home_size: Option<String>,
    /// Kubernetes: storage class of per-user home claims (cluster default).
    pub home_storage_class: Option<String>,
    /// Kubernetes: where homes are mounted (/home).
    pub home_mount: Option<String>,
    /// Kubernetes: the claim holding saved dotfiles (`home = "dotfiles"`).
    pub dotfiles_claim: Option<String>,
    /// Kubernetes: which dotfiles to save, relative to the home directory.
    pub dotfiles: Option<Vec<String>>,
    /// Kubernetes: allow hostPath volumes in templates (false).
    pub allow_host_path: Option<bool>,
    /// Kubernetes: how often pods and sessions are reconciled (30s).
    pub reconcile_interval: Option<ConfigDuration>,
}

/// A Kubernetes pool, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct KubePoolConfig {
    /// Pool name.
    pub name: String,
    /// kubeconfig file; `None` infers (in-cluster, then ~/.kube/config).
    pub kubeconfig: Option<PathBuf>,
    /// Template directory.
    pub templates: PathBuf,
    /// Rendering settings (namespace, port, home).
    pub render: switchboard_k8s::RenderOptions,
    /// Stage budgets.
    pub budgets: switchboard_k8s::Budgets,
    /// Log-off rules (pool defaults; template annotations override per type).
    pub policy: switchboard_k8s::Policy,
    /// Most sessions per user (default unlimited).
    pub max_sessions_per_user: Option<u32>,
    /// Reconciliation period.
    pub reconcile_interval: Duration,
}

/// The gateway, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Listener.
    pub listen: SocketAddr,
    /// Certificate and key (HTTPS/WSS), if configured.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The Kubernetes pool for dynamic session types.
    pub pool: Option<String>,
    /// Static targets: type → (address, allowed users).
    pub targets: BTreeMap<String, (HostAddr, Option<Vec<String>>)>,
    /// Sign-in lifetime.
    pub cookie_ttl: Duration,
    /// Connect-URL token lifetime.
    pub token_ttl: Duration,
    /// The Xpra HTML5 client's directory.
    pub html5_client: PathBuf,
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
    /// How often session policies are checked.
    pub policy_interval: Duration,
    /// Probe interval and timeout.
    pub probe_interval: Duration,
    /// Probe connect timeout.
    pub probe_timeout: Duration,
    /// `[auth]`, if configured.
    pub auth: Option<switchboard_auth::Method>,
    /// The X2Go frontend, if configured.
    pub x2go: Option<X2goConfig>,
    /// Group whose members may sign in to the dashboard with a password.
    pub ui_admin_group: Option<String>,
    /// Every host, once, in first-seen order.
    pub hosts: Vec<HostSpec>,
    /// Every pool.
    pub pools: Vec<PoolSpec>,
    /// Kubernetes pools.
    pub kube_pools: Vec<KubePoolConfig>,
    /// The gateway, if `[gateway] listen` is set.
    pub gateway: Option<GatewayConfig>,
}

/// The X2Go frontend's settings and profiles.
#[derive(Debug, Clone, PartialEq)]
pub struct X2goConfig {
    /// The profiles file.
    pub profiles_path: PathBuf,
    /// Its profiles, sorted by id (each is also a pool in [`Config::pools`]).
    pub profiles: Arc<Vec<Profile>>,
    /// Whether each profile (same order) hands out autologin keys.
    pub autologin: Arc<Vec<bool>>,
    /// AUTHID chain lifetime.
    pub token_ttl: Duration,
    /// AUTHIDs bound to their address.
    pub bind_to_address: bool,
    /// Most live AUTHIDs.
    pub max_tokens: usize,
    /// Extra logins per broker user.
    pub login_map: BTreeMap<String, Vec<String>>,
    /// Primary groups count for group ACLs.
    pub primary_groups: bool,
    /// Autologin key lifetime when unused.
    pub autologin_key_ttl: Duration,
    /// Wait for an agent to suspend a running session.
    pub suspend_timeout: Duration,
}

impl X2goConfig {
    /// Whether broker user `user` may ask for X2Go server login `login`.
    pub fn may_login(&self, user: &str, login: &str) -> bool {
        user == login
            || self
                .login_map
                .get(user)
                .is_some_and(|l| l.iter().any(|x| x == login || x == "*"))
    }
}

/// Default AUTHID chain lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(36_000);
/// Default autologin key lifetime.
pub const DEFAULT_AUTOLOGIN_KEY_TTL: Duration = Duration::from_secs(60);
/// Default wait for an agent to suspend a session.
pub const DEFAULT_SUSPEND_TIMEOUT: Duration = Duration::from_secs(5);

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

/// `broker-*` keys a profile may carry.
const BROKER_KEYS: &[&str] = &[
    "broker-policy",
    "broker-max-sessions-per-user",
    "broker-logoff-disconnected-after",
    "broker-logoff-idle-after",
    "broker-max-session-age",
    "broker-logoff-grace",
    "broker-agent-query-mode",
    "broker-agent-hostkey-policy",
    "broker-session-autologin",
    "broker-portscan-x2goservers",
    "broker-authorized-keys",
    "broker-sshproxy-authorized-keys",
    "broker-use-load-checker",
];

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// A profile as a pool: its policy and hosts; and whether it hands out autologin keys.
fn profile_pool(
    p: &Profile,
    default_policy: Policy,
    default_agent: bool,
    default_autologin: bool,
) -> Result<(PoolSpec, Vec<HostSpec>, bool), String> {
    let at = |line: usize, key: &str, m: String| {
        format!("line {line}: profile [{}]: key `{key}`: {m}", p.id)
    };
    let mut policy = default_policy;
    let mut agent = default_agent;
    let mut portscan = true;
    let mut autologin = default_autologin;
    let mut explicit_policy = false;
    let mut limits = SessionLimits::default();
    for (key, value, line) in &p.broker {
        let dur = |v: &str| {
            switchboard_core::config::parse_duration(v)
                .map(ConfigDuration)
                .map_err(|e| at(*line, key, e.to_string()))
        };
        let b = |v: &str| {
            parse_bool(v).ok_or_else(|| at(*line, key, format!("{v:?} is not true or false")))
        };
        match key.as_str() {
            "broker-policy" => {
                policy = value
                    .parse()
                    .map_err(|e: switchboard_core::policy::UnknownPolicy| {
                        at(*line, key, e.to_string())
                    })?;
                explicit_policy = true;
            }
            "broker-agent-query-mode" => {
                agent = match value.trim().to_uppercase().as_str() {
                    "NONE" => false,
                    "LOCAL" | "SSH" => true,
                    _ => {
                        return Err(at(*line, key, format!("{value:?}: use NONE, LOCAL or SSH")));
                    }
                }
            }
            "broker-session-autologin" => autologin = b(value)?,
            "broker-max-sessions-per-user" => {
                limits.max_sessions_per_user = Some(
                    value
                        .trim()
                        .parse()
                        .map_err(|_| at(*line, key, format!("{value:?} is not a whole number")))?,
                );
            }
            "broker-logoff-disconnected-after" => {
                limits.logoff_disconnected_after = Some(dur(value)?);
            }
            "broker-logoff-idle-after" => limits.logoff_idle_after = Some(dur(value)?),
            "broker-max-session-age" => limits.max_session_age = Some(dur(value)?),
            "broker-logoff-grace" => limits.logoff_grace = dur(value)?,
            "broker-portscan-x2goservers" => portscan = b(value)?,
            "broker-use-load-checker" => {
                if b(value)? && !explicit_policy {
                    policy = Policy::X2goLoad;
                }
            }
            k if BROKER_KEYS.contains(&k) => {}
            other => {
                return Err(at(
                    *line,
                    other,
                    format!("unknown broker key; known: {}", BROKER_KEYS.join(", ")),
                ));
            }
        }
    }
    check_limits(&limits).map_err(|m| format!("profile [{}]: {m}", p.id))?;
    let hosts = p
        .hosts
        .iter()
        .map(|h| HostSpec {
            name: h.name.clone(),
            address: h.address.clone(),
            weight: DEFAULT_WEIGHT,
            max_sessions: None,
            labels: BTreeMap::new(),
            agent,
            probe: !agent && portscan,
        })
        .collect();
    Ok((
        PoolSpec {
            name: p.id.clone(),
            policy,
            options: PoolOptions {
                limits,
                ..PoolOptions::default()
            },
            hosts: p.hosts.iter().map(|h| h.name.clone()).collect(),
        },
        hosts,
        autologin,
    ))
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
                kube_pools.push(kube_pool(p).map_err(|m| format!("{here}: {m}"))?);
                continue;
            }
            if let Some(k) = kube_only_key(&p) {
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
        let auth = match &self.auth.method {
            Some(m) => Some(
                switchboard_auth::Method::parse(
                    m,
                    self.auth.pam_service.as_deref(),
                    self.auth.pam_pool,
                )
                .map_err(|e| format!("key `auth.method`: {e}"))?,
            ),
            None => {
                if self.auth.pam_service.is_some() || self.auth.pam_pool.is_some() {
                    return Err("key `auth.method`: missing (pam, file:PATH or none)".into());
                }
                None
            }
        };
        let x2go = match self.x2go.session_profiles.clone() {
            None => None,
            Some(path) => {
                if auth.is_none() {
                    return Err(
                        "the X2Go frontend ([x2go] session_profiles) needs `[auth] method`: \
                         \"pam\", \"file:PATH\", or \"none\" to trust the user name the client sends"
                            .into(),
                    );
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("key `x2go.session_profiles`: {}: {e}", path.display()))?;
                let profiles = switchboard_proto::x2go::parse_profiles(&text)
                    .map_err(|e| format!("key `x2go.session_profiles`: {}: {e}", path.display()))?;
                let mut autologin = Vec::with_capacity(profiles.len());
                for prof in &profiles {
                    if pool_names.contains(&prof.id) {
                        return Err(format!(
                            "key `x2go.session_profiles`: {}: profile [{}] has the name of a [[pool]]; \
                             profiles are pools, so rename one of them",
                            path.display(),
                            prof.id
                        ));
                    }
                    let (pool, specs, auto) = profile_pool(
                        prof,
                        self.x2go.policy.unwrap_or(default_policy),
                        self.x2go.agent.unwrap_or(true),
                        self.x2go.session_autologin.unwrap_or(false),
                    )
                    .map_err(|e| format!("key `x2go.session_profiles`: {}: {e}", path.display()))?;
                    let here = format!("{} profile [{}]", path.display(), prof.id);
                    for spec in specs {
                        merge_host(&mut hosts, &mut host_pool, spec, &prof.id, &here)?;
                    }
                    pools.push(pool);
                    autologin.push(auto);
                }
                for (user, logins) in &self.x2go.login_map {
                    if user.is_empty() || logins.iter().any(|l| l.is_empty()) {
                        return Err("key `x2go.login_map`: empty user or login name".into());
                    }
                }
                let max_tokens = self
                    .x2go
                    .max_tokens
                    .unwrap_or(switchboard_auth::authid::DEFAULT_MAX);
                if max_tokens == 0 {
                    return Err("key `x2go.max_tokens`: must be at least 1".into());
                }
                let token_ttl = self.x2go.token_ttl.map_or(DEFAULT_TOKEN_TTL, |d| d.0);
                if token_ttl.is_zero() {
                    return Err("key `x2go.token_ttl`: must be above zero".into());
                }
                Some(X2goConfig {
                    profiles_path: path,
                    profiles: Arc::new(profiles),
                    autologin: Arc::new(autologin),
                    token_ttl,
                    bind_to_address: self.x2go.bind_to_address.unwrap_or(true),
                    max_tokens,
                    login_map: self.x2go.login_map.clone(),
                    primary_groups: self.x2go.primary_groups.unwrap_or(false),
                    autologin_key_ttl: self
                        .x2go
                        .autologin_key_ttl
                        .map_or(DEFAULT_AUTOLOGIN_KEY_TTL, |d| d.0)
                        .max(Duration::from_secs(1)),
                    suspend_timeout: self
                        .x2go
                        .suspend_timeout
                        .map_or(DEFAULT_SUSPEND_TIMEOUT, |d| d.0)
                        .max(Duration::from_millis(100)),
                })
            }
        };
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
            policy_interval: self
                .placement
                .policy_interval
                .map_or(crate::policy::DEFAULT_INTERVAL, |d| d.0)
                .max(Duration::from_millis(100)),
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
            auth,
            x2go,
            ui_admin_group: self.ui.admin_group,
            hosts,
            pools,
            gateway: gateway(self.gateway, &kube_pools, self.auth.method.is_some())?,
            kube_pools,
        })
    }
}

/// The first Kubernetes-only key set on a hosts pool.
fn kube_only_key(p: &PoolSection) -> Option<&'static str> {
    [
        ("namespace", p.namespace.is_some()),
        ("kubeconfig", p.kubeconfig.is_some()),
        ("templates", p.templates.is_some()),
        ("port", p.port.is_some()),
        ("scheduling_timeout", p.scheduling_timeout.is_some()),
        ("image_pull_timeout", p.image_pull_timeout.is_some()),
        ("start_timeout", p.start_timeout.is_some()),
        ("home", p.home.is_some()),
        ("home_claim", p.home_claim.is_some()),
        ("home_size", p.home_size.is_some()),
        ("home_storage_class", p.home_storage_class.is_some()),
        ("home_mount", p.home_mount.is_some()),
        ("allow_host_path", p.allow_host_path.is_some()),
        ("reconcile_interval", p.reconcile_interval.is_some()),
        ("dotfiles_claim", p.dotfiles_claim.is_some()),
        ("dotfiles", p.dotfiles.is_some()),
    ]
    .into_iter()
    .find(|(_, set)| *set)
    .map(|(k, _)| k)
}

fn kube_pool(p: PoolSection) -> Result<KubePoolConfig, String> {
    for (k, set) in [
        ("host", !p.host.is_empty()),
        ("policy", p.policy.is_some()),
        ("resume_prefer", p.resume_prefer.is_some()),
        ("session_ref", p.session_ref.is_some()),
        ("agent", p.agent.is_some()),
        ("logoff_grace", p.logoff_grace.is_some()),
    ] {
        if set {
            return Err(format!(
                "key `{k}` does not apply to a Kubernetes pool (its sessions are pods)"
            ));
        }
    }
    let namespace = p
        .namespace
        .ok_or("key `namespace`: missing (the namespace of the session pods)")?;
    if !switchboard_k8s::names::is_dns_label(&namespace) {
        return Err(format!(
            "key `namespace`: {namespace:?} is not a Kubernetes namespace name"
        ));
    }
    let templates = p
        .templates
        .ok_or("key `templates`: missing (a directory of pod templates)")?;
    let mount = p.home_mount.unwrap_or_else(|| "/home".into());
    if !mount.starts_with('/') {
        return Err(format!(
            "key `home_mount`: {mount:?} is not an absolute path"
        ));
    }
    let home_kind = p.home.unwrap_or_default();
    if home_kind != HomeKind::Dotfiles && (p.dotfiles_claim.is_some() || p.dotfiles.is_some()) {
        return Err("keys `dotfiles_claim` and `dotfiles` need `home = \"dotfiles\"`".into());
    }
    let home = match home_kind {
        HomeKind::None => {
            if p.home_claim.is_some() || p.home_size.is_some() || p.home_storage_class.is_some() {
                return Err(
                    "keys `home_claim`, `home_size` and `home_storage_class` need `home`".into(),
                );
            }
            switchboard_k8s::Home::None
        }
        HomeKind::Shared => switchboard_k8s::Home::Shared {
            claim: p.home_claim.ok_or(
                "key `home_claim`: missing (the shared home claim, for home = \"shared\")",
            )?,
            mount,
        },
        HomeKind::Dotfiles => {
            let files = p
                .dotfiles
                .unwrap_or_else(|| DEFAULT_DOTFILES.iter().map(|s| s.to_string()).collect());
            if files.is_empty() || files.len() > 64 {
                return Err("key `dotfiles`: list 1 to 64 paths".into());
            }
            if let Some(bad) = files
                .iter()
                .find(|f| !switchboard_k8s::template::valid_dotfile(f))
            {
                return Err(format!(
                    "key `dotfiles`: {bad:?} must be a path relative to the home directory of letters, digits, '.', '_', '-' and '/'"
                ));
            }
            switchboard_k8s::Home::Dotfiles {
                claim: p
                    .dotfiles_claim
                    .ok_or("key `dotfiles_claim`: missing (the claim that keeps saved dotfiles)")?,
                files,
                mount,
            }
        }
        HomeKind::PerUser => switchboard_k8s::Home::PerUser {
            storage_class: p.home_storage_class,
            size: p.home_size.unwrap_or_else(|| "10Gi".into()),
            mount,
        },
    };
    let budgets = switchboard_k8s::Budgets {
        scheduling: p
            .scheduling_timeout
            .map_or(Duration::from_secs(60), |d| d.0),
        image_pull: p
            .image_pull_timeout
            .map_or(Duration::from_secs(300), |d| d.0),
        start: p.start_timeout.map_or(Duration::from_secs(120), |d| d.0),
    };
    for (k, d) in [
        ("scheduling_timeout", budgets.scheduling),
        ("image_pull_timeout", budgets.image_pull),
        ("start_timeout", budgets.start),
    ] {
        if d.is_zero() {
            return Err(format!("key `{k}`: must be above zero"));
        }
    }
    if p.max_sessions_per_user == Some(0) {
        return Err("key `max_sessions_per_user`: must be at least 1".into());
    }
    Ok(KubePoolConfig {
        render: switchboard_k8s::RenderOptions {
            namespace,
            pool: p.name.clone(),
            default_port: p.port.unwrap_or(14500),
            home,
            allow_host_path: p.allow_host_path.unwrap_or(false),
        },
        name: p.name,
        kubeconfig: p.kubeconfig,
        templates,
        budgets,
        policy: switchboard_k8s::Policy {
            idle: p.logoff_idle_after.map(|d| d.0),
            disconnected: p.logoff_disconnected_after.map(|d| d.0),
            max_age: p.max_session_age.map(|d| d.0),
        },
        max_sessions_per_user: p.max_sessions_per_user,
        reconcile_interval: p
            .reconcile_interval
            .map_or(Duration::from_secs(30), |d| d.0)
            .max(Duration::from_secs(1)),
    })
}

fn gateway(
    g: GatewaySection,
    kube_pools: &[KubePoolConfig],
    auth: bool,
) -> Result<Option<GatewayConfig>, String> {
    let Some(listen) = g.listen.as_deref() else {
        if g.pool.is_some() || !g.target.is_empty() || g.tls_cert.is_some() {
            return Err(
                "key `gateway.listen`: missing (the gateway runs on its own listener)".into(),
            );
        }
        return Ok(None);
    };
    let listen = parse_listen("gateway.listen", listen)?;
    if !auth {
        return Err("the gateway needs `[auth] method` (its users sign in)".into());
    }
    let tls = match (g.tls_cert, g.tls_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("keys `gateway.tls_cert` and `gateway.tls_key` go together".into()),
    };
    if tls.is_none() && !listen.ip().is_loopback() {
        return Err(format!(
            "key `gateway.listen`: {listen} is not loopback, so the gateway needs `tls_cert` and `tls_key` \
             (passwords and sessions must not cross the network in clear)"
        ));
    }
    if let Some(pool) = &g.pool
        && !kube_pools.iter().any(|k| &k.name == pool)
    {
        return Err(format!(
            "key `gateway.pool`: no Kubernetes pool named {pool:?}"
        ));
    }
    if g.pool.is_none() && g.target.is_empty() {
        return Err(
            "the gateway needs `pool` (a Kubernetes pool) or `[[gateway.target]]` tables".into(),
        );
    }
    let mut targets = BTreeMap::new();
    for t in g.target {
        if !switchboard_k8s::names::is_dns_label(&t.session_type)
            || RESERVED_PATHS.contains(&t.session_type.as_str())
        {
            return Err(format!(
                "key `gateway.target.type`: {:?} must be lower-case letters, digits and '-' and not one of {RESERVED_PATHS:?}",
                t.session_type
            ));
        }
        if targets
            .insert(t.session_type.clone(), (t.address, t.users))
            .is_some()
        {
            return Err(format!(
                "key `gateway.target.type`: {:?} is listed twice",
                t.session_type
            ));
        }
    }
    let nonzero = |k: &str, d: Option<ConfigDuration>, default: Duration| {
        let d = d.map_or(default, |d| d.0);
        if d.is_zero() {
            Err(format!("key `gateway.{k}`: must be above zero"))
        } else {
            Ok(d)
        }
    };
    Ok(Some(GatewayConfig {
        listen,
        tls,
        pool: g.pool,
        targets,
        cookie_ttl: nonzero("cookie_ttl", g.cookie_ttl, Duration::from_secs(12 * 3600))?,
        token_ttl: nonzero("token_ttl", g.token_ttl, Duration::from_secs(600))?,
        html5_client: g
            .html5_client
            .unwrap_or_else(|| PathBuf::from("/usr/share/xpra/www")),
    }))
}

/// Dotfiles saved by `home = "dotfiles"` unless `dotfiles` says otherwise.
pub const DEFAULT_DOTFILES: &[&str] = &[
    ".bashrc",
    ".profile",
    ".config",
    ".local/share/applications",
    ".ssh/config",
];

/// Gateway paths that cannot be session types.
pub const RESERVED_PATHS: &[&str] = &[
    "login", "logout", "client", "t", "events", "static", "healthz",
];

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
        assert_eq!(c.pools.len(), 6);
        let x = c.x2go.as_ref().unwrap();
        assert_eq!(x.profiles.len(), 4);
        assert_eq!(
            *x.autologin,
            [true, false, false, false],
            "kiosk, legacy-shell, pool-mate, staff-xfce"
        );
        assert!(x.may_login("alice", "alice-admin"));
        assert!(!x.may_login("bob", "alice"));
        let legacy = c.hosts.iter().find(|h| h.name == "old1").unwrap();
        assert!(!legacy.agent && legacy.probe);
        let mate = c.pools.iter().find(|p| p.name == "pool-mate").unwrap();
        assert_eq!(mate.policy, Policy::LeastLoad);
        assert_eq!(mate.options.limits.max_sessions_per_user, Some(2));
        assert_eq!(
            mate.options.limits.logoff_disconnected_after.unwrap().0,
            Duration::from_secs(8 * 3600)
        );
        let desktops = c.pools.iter().find(|p| p.name == "desktops").unwrap();
        assert_eq!(
            desktops.options.limits.max_session_age.unwrap().0,
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(c.policy_interval, Duration::from_secs(10));
        assert_eq!(
            c.hosts
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
        assert!(matches!(c.auth, Some(switchboard_auth::Method::Pam { .. })));
        assert_eq!(c.pools.len(), 2);
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(c.pools[1].policy, Policy::RoundRobin);
        assert!(c.hosts[0].probe);
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
    fn an_empty_file_is_a_valid_broker_with_no_pools() {
        let c = Config::parse("", "b.toml").unwrap();
        assert!(c.pools.is_empty());
        assert!(c.store_url.starts_with("sqlite:///var/lib/switchboard/"));
        assert_eq!(c.management_socket, Path::new("/run/switchboard/mgmt.sock"));
    }

    #[test]
    fn kubernetes_pools_and_the_gateway_are_checked() {
        let kube = "[[pool]]\nname = \"k\"\nkind = \"kubernetes\"\nnamespace = \"sessions\"\ntemplates = \"/t\"\n";
        let c = Config::parse(kube, "b.toml").unwrap();
        assert_eq!(c.kube_pools.len(), 1);
        assert!(c.pools.is_empty(), "a Kubernetes pool is not a hosts pool");
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
