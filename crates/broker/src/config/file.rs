//! The configuration file as written: [`FileConfig`] and its sections, deserialised by serde with
//! unknown keys refused. [`super::FileConfig::validate`] turns it into a [`super::Config`].

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use switchboard_core::Policy;
use switchboard_core::config::{ConfigDuration, HostAddr};
use switchboard_core::model::ResumePreference;

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
    /// `[audit]`: the audit log.
    #[serde(default)]
    pub audit: AuditSection,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// How long records are kept (default 90 days; `"0"` keeps them for ever).
    pub keep: Option<ConfigDuration>,
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
    /// Load balancers or TLS-passthrough ingresses in front of the gateway: a connection from
    /// one of these addresses must begin with a PROXY protocol v2 header, whose client address
    /// is then the connection's (for the per-source cap, the sign-in throttle and the logs).
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
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
    /// Most password-file checks at once (default: one per CPU, at most 4). For `pam` the
    /// number of threads is `pam_pool`.
    pub workers: Option<usize>,
    /// Most checks waiting for a thread (default 64); beyond it a sign-in is refused at once
    /// with 503 and `Retry-After`.
    pub queue: Option<usize>,
    /// With `method = "none"`: the request header that names the user, set by a proxy in
    /// `[http] trusted_proxies` that has signed the user in (for example `X-Remote-User`).
    /// Needed for `none` on a listener that is not on loopback.
    pub user_header: Option<String>,
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
    /// Connections of every HTTP listener (this one and the gateway's) at once (default: the
    /// descriptor limit less 256 kept for the store, probes, agents and `ctl`).
    pub max_connections: Option<usize>,
    /// Connections from one client address at once (default 512; 0 for no cap). Trusted
    /// proxies are exempt.
    pub max_connections_per_source: Option<usize>,
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
    /// How long an empty first inventory on a new link is held when the host has live sessions
    /// (default 60s; `"0"` applies it at once; at most 1h).
    pub empty_inventory_grace: Option<ConfigDuration>,
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
