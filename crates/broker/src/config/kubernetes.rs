//! Kubernetes pools and the gateway as configuration: `[[pool]] kind = "kubernetes"` and
//! `[gateway]`, validated.

use super::file::{GatewaySection, HomeKind, PoolSection};
use super::parse_listen;
use crate::gateway::GatewayConfig;
use crate::kubernetes::KubePoolConfig;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use switchboard_core::config::ConfigDuration;
use switchboard_core::config::{Host, HostAddr};
use switchboard_core::model::{PoolOptions, SessionLimits};
use switchboard_core::{HostSpec, Policy, PoolSpec};

/// The core's side of a Kubernetes pool: the host that holds its session pods (weight 0, so
/// placement never picks it) and a pool of that one host carrying the pool's per-user cap.
pub(super) fn core_pool(k: &KubePoolConfig, policy: Policy) -> (HostSpec, PoolSpec) {
    let name = crate::kubernetes::session_host(&k.name);
    let host = HostSpec {
        name: name.clone(),
        address: HostAddr {
            host: Host::Name(format!("pods.{}", k.render.namespace)),
            port: k.render.default_port,
        },
        weight: 0,
        max_sessions: None,
        labels: [("kind".to_owned(), "kubernetes".to_owned())].into(),
        agent: false,
        probe: false,
    };
    let pool = PoolSpec {
        name: k.name.clone(),
        policy,
        options: PoolOptions {
            limits: SessionLimits {
                max_sessions_per_user: k.max_sessions_per_user,
                ..SessionLimits::default()
            },
            ..PoolOptions::default()
        },
        hosts: vec![name],
    };
    (host, pool)
}

/// The first Kubernetes-only key set on a hosts pool.
pub(super) fn kube_only_key(p: &PoolSection) -> Option<&'static str> {
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

pub(super) fn kube_pool(p: PoolSection) -> Result<KubePoolConfig, String> {
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

pub(super) fn gateway(
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
        trusted_proxies: g.trusted_proxies,
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
