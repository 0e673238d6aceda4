//! The X2Go session profiles file as configuration: each profile becomes a pool (its `host=`
//! list, its `broker-*` keys) and the frontend's profile list.

use super::{check_limits, merge_host};
use crate::http::x2go::{
    DEFAULT_AUTOLOGIN_KEY_TTL, DEFAULT_SUSPEND_TIMEOUT, DEFAULT_TOKEN_TTL, X2goConfig,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::config::ConfigDuration;
use switchboard_core::model::{DEFAULT_WEIGHT, PoolOptions, SessionLimits};
use switchboard_core::{HostSpec, Policy, PoolSpec};
use switchboard_proto::x2go::Profile;

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

/// The X2Go frontend's configuration from `[x2go]`, adding each profile's pool and hosts.
#[allow(clippy::too_many_arguments)]
pub(super) fn frontend(
    section: &super::X2goSection,
    auth: bool,
    default_policy: Policy,
    pool_names: &std::collections::BTreeSet<String>,
    hosts: &mut Vec<HostSpec>,
    host_pool: &mut BTreeMap<String, (usize, String)>,
    pools: &mut Vec<PoolSpec>,
) -> Result<Option<X2goConfig>, String> {
    Ok(match section.session_profiles.clone() {
        None => None,
        Some(path) => {
            if !auth {
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
                    section.policy.unwrap_or(default_policy),
                    section.agent.unwrap_or(true),
                    section.session_autologin.unwrap_or(false),
                )
                .map_err(|e| format!("key `x2go.session_profiles`: {}: {e}", path.display()))?;
                let here = format!("{} profile [{}]", path.display(), prof.id);
                for spec in specs {
                    merge_host(hosts, host_pool, spec, &prof.id, &here)?;
                }
                pools.push(pool);
                autologin.push(auto);
            }
            for (user, logins) in &section.login_map {
                if user.is_empty() || logins.iter().any(|l| l.is_empty()) {
                    return Err("key `x2go.login_map`: empty user or login name".into());
                }
            }
            let max_tokens = section
                .max_tokens
                .unwrap_or(switchboard_auth::authid::DEFAULT_MAX);
            if max_tokens == 0 {
                return Err("key `x2go.max_tokens`: must be at least 1".into());
            }
            let token_ttl = section.token_ttl.map_or(DEFAULT_TOKEN_TTL, |d| d.0);
            if token_ttl.is_zero() {
                return Err("key `x2go.token_ttl`: must be above zero".into());
            }
            Some(X2goConfig {
                profiles_path: path,
                listings: Arc::new(
                    profiles
                        .iter()
                        .zip(&autologin)
                        .map(|(p, a)| p.plain_listing(*a))
                        .collect(),
                ),
                profiles: Arc::new(profiles),
                autologin: Arc::new(autologin),
                token_ttl,
                bind_to_address: section.bind_to_address.unwrap_or(true),
                max_tokens,
                login_map: section.login_map.clone(),
                primary_groups: section.primary_groups.unwrap_or(false),
                autologin_key_ttl: section
                    .autologin_key_ttl
                    .map_or(DEFAULT_AUTOLOGIN_KEY_TTL, |d| d.0)
                    .max(Duration::from_secs(1)),
                suspend_timeout: section
                    .suspend_timeout
                    .map_or(DEFAULT_SUSPEND_TIMEOUT, |d| d.0)
                    .max(Duration::from_millis(100)),
                // Set by the whole file's check (it is an `[auth]` key).
                user_header: None,
            })
        }
    })
}
