//! The agent's TOML configuration (`switchboard agent --config /etc/switchboard/agent.toml`).
//!
//! Unknown keys are errors that name the file, the line and the key; the agent refuses to start
//! on a bad file. `examples/agent.toml` documents every key.

use crate::sources::SourceConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use switchboard_core::config::ConfigDuration;

/// Default path of the configuration.
pub const DEFAULT_CONFIG: &str = "/etc/switchboard/agent.toml";
/// Default report interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3);
/// Shortest report interval.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// Longest report interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The broker's agent listener, `host:port`.
    pub broker: String,
    /// Name to check in the broker's certificate (default: the host part of `broker`).
    pub server_name: Option<String>,
    /// The CA certificate that signed the broker's certificate (pinned: nothing else is trusted).
    pub ca: PathBuf,
    /// File holding this host's credential (from `switchboard ctl enroll HOST`).
    pub credential_file: PathBuf,
    /// This host's name as the broker's pools list it (default: the short host name).
    pub host: Option<String>,
    /// How often load is reported and sessions are looked at (default 3s; 0.5s–60s).
    pub report_interval: Option<ConfigDuration>,
    /// Where sessions come from: `[[source]]` tables (`kind = "x2go" | "logind" | "xpra" |
    /// "command"`).
    #[serde(default)]
    pub source: Vec<SourceConfig>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Broker address, `host:port`.
    pub broker: String,
    /// TLS server name to verify.
    pub server_name: String,
    /// Pinned CA certificate.
    pub ca: PathBuf,
    /// The credential (read from the file).
    pub credential: String,
    /// Host name announced to the broker.
    pub host: String,
    /// Report interval.
    pub report_interval: Duration,
    /// Session sources.
    pub sources: Vec<SourceConfig>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// What is wrong, with line and key where known.
    pub message: String,
}

/// This machine's short host name (`x2go1` for `x2go1.example.org`).
pub fn short_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| h.trim().split('.').next().map(str::to_owned))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The host part of `host:port` (without brackets for IPv6).
pub fn host_part(addr: &str) -> Option<&str> {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h);
    }
    addr.rsplit_once(':').map(|(h, _)| h)
}

/// Reads a file that holds secrets, refusing it when group or others may read it.
pub fn read_private(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{}: readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a credential file: the credential on its first non-empty line. The file must not be
/// readable by others.
pub fn read_credential(path: &Path) -> Result<String, String> {
    read_private(path)?
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: no credential in the file", path.display()))
}

impl AgentConfig {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let raw = Self::parse(&text, &file)?;
        let credential = read_credential(&raw.credential_file).map_err(|m| ConfigError {
            file: file.clone(),
            message: format!("key `credential_file`: {m}"),
        })?;
        raw.validate(credential)
            .map_err(|message| ConfigError { file, message })
    }

    /// Parses the text of a file (without reading the credential).
    pub fn parse(text: &str, file: &str) -> Result<FileConfig, ConfigError> {
        switchboard_core::config::parse_toml(text).map_err(|message| ConfigError {
            file: file.to_owned(),
            message,
        })
    }
}

impl FileConfig {
    /// Applies defaults and checks values.
    pub fn validate(self, credential: String) -> Result<AgentConfig, String> {
        let Some(host_of_broker) = host_part(&self.broker).filter(|h| !h.is_empty()) else {
            return Err(format!(
                "key `broker`: {:?} is not host:port (IPv6 in brackets)",
                self.broker
            ));
        };
        let port_ok = self
            .broker
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok_and(|p| p != 0));
        if !port_ok {
            return Err(format!("key `broker`: {:?} has no valid port", self.broker));
        }
        let interval = self.report_interval.map_or(DEFAULT_INTERVAL, |d| d.0);
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err(format!(
                "key `report_interval`: {interval:?} is outside 0.5s–60s"
            ));
        }
        let host = self.host.unwrap_or_else(short_hostname);
        if host.is_empty() {
            return Err("key `host`: must not be empty".into());
        }
        Ok(AgentConfig {
            server_name: self
                .server_name
                .unwrap_or_else(|| host_of_broker.to_owned()),
            broker: self.broker,
            ca: self.ca,
            credential,
            host,
            report_interval: interval,
            sources: self.source,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MINIMAL: &str = "broker = \"broker.example.org:7443\"\nca = \"/etc/switchboard/agent-ca.crt\"\ncredential_file = \"/etc/switchboard/agent.credential\"\n";

    #[test]
    fn defaults_follow_the_documentation() {
        let c = AgentConfig::parse(MINIMAL, "a.toml")
            .unwrap()
            .validate("sba_x".into())
            .unwrap();
        assert_eq!(c.server_name, "broker.example.org");
        assert_eq!(c.report_interval, Duration::from_secs(3));
        assert_eq!(c.host, short_hostname());
        assert!(c.sources.is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_line_and_key() {
        let e = AgentConfig::parse(&format!("{MINIMAL}colour = 1\n"), "/etc/a.toml").unwrap_err();
        assert!(e.to_string().starts_with("/etc/a.toml: line 4"), "{e}");
        assert!(e.to_string().contains("colour"), "{e}");
        for (text, needle) in [
            ("report_interval = \"100ms\"\n", "report_interval"),
            ("report_interval = \"2m\"\n", "report_interval"),
        ] {
            let e = AgentConfig::parse(&format!("{MINIMAL}{text}"), "a.toml")
                .unwrap()
                .validate("sba_x".into())
                .unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let e = AgentConfig::parse(
            &MINIMAL.replace("broker.example.org:7443", "broker"),
            "a.toml",
        )
        .unwrap()
        .validate("x".into())
        .unwrap_err();
        assert!(e.contains("key `broker`"), "{e}");
    }

    #[test]
    fn the_documented_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = AgentConfig::parse(&text, "agent.toml")
            .unwrap()
            .validate("sba_x".into())
            .unwrap();
        assert_eq!(c.broker, "broker.example.org:7443");
        assert_eq!(c.report_interval, DEFAULT_INTERVAL);
        let kinds: Vec<&str> = c.sources.iter().map(|s| s.kind()).collect();
        assert_eq!(kinds, ["x2go", "logind"]);
    }

    #[test]
    fn ipv6_brokers_are_bracketed() {
        assert_eq!(host_part("[::1]:7443"), Some("::1"));
        assert_eq!(host_part("b.example.org:7443"), Some("b.example.org"));
    }

    #[test]
    fn credential_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cred");
        std::fs::write(&p, "# comment\nsba_abc\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_credential(&p).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_credential(&p).unwrap(), "sba_abc");
    }
}
