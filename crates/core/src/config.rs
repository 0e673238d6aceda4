//! Conventions shared by every Switchboard config file.
//!
//! - Durations accept humantime strings (`"60s"`, `"5m"`, `"72h"`, `"1h 30m"`) and bare integers,
//!   which are seconds. [`ConfigDuration`] is the field type; [`serde_duration`] does the same for a
//!   plain `std::time::Duration` field with `#[serde(with = "…")]`.
//! - Host addresses are `host:port`, where host is a DNS name, an IPv4 address, or an IPv6 address
//!   in brackets (`[::1]:22`); see [`HostAddr`].
//!
//! Errors here say what was expected and what was found; the config loader adds file, line and key.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

/// Longest host name accepted (RFC 1035 limit for a full name).
pub const MAX_HOST_NAME_LEN: usize = 253;

/// A bad value in a config field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigValueError {
    /// A duration that is neither a humantime string nor a whole number of seconds.
    #[error(
        "invalid duration {value:?}: {reason} (write e.g. \"60s\", \"5m\", \"72h\", or a number of seconds)"
    )]
    Duration {
        /// The text as written.
        value: String,
        /// What the duration parser said.
        reason: String,
    },
    /// A host address that is not `host:port`.
    #[error("invalid address {value:?}: {reason}")]
    Address {
        /// The text as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Line (1-based) of a byte offset in `text`, for config errors that name the line.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .unwrap_or(text)
        .matches('\n')
        .count()
        + 1
}

/// Deserializes a TOML config file's text; the error names the line (1-based) where the parser
/// stopped, when it knows it ("line 3: unknown field `listn`, expected …"). The caller adds the
/// file name.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().to_owned();
        match e.span().map(|s| line_of(text, s.start)) {
            Some(l) => format!("line {l}: {msg}"),
            None => msg,
        }
    })
}

/// Parses a config duration: a humantime string or a bare integer number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ConfigValueError> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| ConfigValueError::Duration {
                value: text.to_owned(),
                reason: e.to_string(),
            });
    }
    humantime::parse_duration(t).map_err(|e| ConfigValueError::Duration {
        value: text.to_owned(),
        reason: e.to_string(),
    })
}

/// Formats a duration the way configs write it (`"1m 30s"`, `"72h"`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A duration field in a config file: humantime string or bare integer seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// A duration of whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        ConfigDuration(Duration::from_secs(s))
    }
}

impl From<ConfigDuration> for Duration {
    fn from(d: ConfigDuration) -> Duration {
        d.0
    }
}

impl FromStr for ConfigDuration {
    type Err = ConfigValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(ConfigDuration)
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"60s\" or \"72h\", or a whole number of seconds")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ConfigDuration::from_secs(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ConfigDuration::from_secs)
                    .map_err(|_| E::custom(format!("a duration cannot be negative (got {v})")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `#[serde(with = "switchboard_core::config::serde_duration")]` for a `Duration` field.
pub mod serde_duration {
    use super::ConfigDuration;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::time::Duration;

    /// Writes the duration as a humantime string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        ConfigDuration(*d).serialize(s)
    }

    /// Reads a humantime string or whole seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        ConfigDuration::deserialize(d).map(|c| c.0)
    }
}

/// The host part of an address: a DNS name or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// A DNS name, lower-cased as written.
    Name(String),
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
        }
    }
}

/// A `host:port` address as written in configs: `login1.example.org:22`, `127.0.0.2:2222`,
/// `[::1]:22`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostAddr {
    /// Name or IP address.
    pub host: Host,
    /// TCP port.
    pub port: u16,
}

impl HostAddr {
    /// An address from an IP and port.
    pub fn ip(ip: IpAddr, port: u16) -> Self {
        HostAddr {
            host: Host::Ip(ip),
            port,
        }
    }

    /// Parses `host:port`, or a bare `host` taking `default_port` (X2Go profiles allow that).
    pub fn parse_with_default_port(
        text: &str,
        default_port: u16,
    ) -> Result<Self, ConfigValueError> {
        parse_addr(text, Some(default_port))
    }

    /// The host part as it would be written in a URL or on a command line (IPv6 without brackets).
    pub fn host_str(&self) -> String {
        match &self.host {
            Host::Name(n) => n.clone(),
            Host::Ip(ip) => ip.to_string(),
        }
    }

    /// The literal IP address, if the host is one.
    pub fn ip_addr(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for HostAddr {
    type Err = ConfigValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_addr(s, None)
    }
}

impl Serialize for HostAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_addr(text: &str, default_port: Option<u16>) -> Result<HostAddr, ConfigValueError> {
    let err = |reason: &str| ConfigValueError::Address {
        value: text.to_owned(),
        reason: reason.to_owned(),
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(err("empty address; write host:port"));
    }
    let (host, port_text) = if let Some(rest) = t.strip_prefix('[') {
        let close = rest
            .find(']')
            .ok_or_else(|| err("missing ']' after an IPv6 address"))?;
        let ip: Ipv6Addr = rest[..close]
            .parse()
            .map_err(|_| err("not a valid IPv6 address inside the brackets"))?;
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(err("unexpected text after ']'; write [ADDRESS]:PORT")),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        if t.matches(':').count() > 1 {
            return Err(err("write IPv6 addresses in brackets, e.g. [::1]:22"));
        }
        let (h, p) = match t.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (t, None),
        };
        (parse_host(h).map_err(|r| err(&r))?, p)
    };
    let port = match (port_text, default_port) {
        (Some(p), _) => {
            let port: u16 = p
                .parse()
                .map_err(|_| err("the port must be a number from 1 to 65535"))?;
            if port == 0 {
                return Err(err("the port must be a number from 1 to 65535"));
            }
            port
        }
        (None, Some(d)) => d,
        (None, None) => return Err(err("missing port; write host:port")),
    };
    Ok(HostAddr { host, port })
}

fn parse_host(h: &str) -> Result<Host, String> {
    if let Ok(ip) = h.parse::<std::net::Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    if h.is_empty() {
        return Err("empty host name".to_owned());
    }
    if h.len() > MAX_HOST_NAME_LEN {
        return Err(format!(
            "host name longer than {MAX_HOST_NAME_LEN} characters"
        ));
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let name = h.strip_suffix('.').unwrap_or(h);
    if !name.split('.').all(valid_label) {
        return Err(format!(
            "{h:?} is not a valid host name (letters, digits, '-', '_' and dots)"
        ));
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_name_the_line() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            listen: String,
        }
        let e = parse_toml::<T>("# a comment\n\nlistn = \"x\"\n").unwrap_err();
        assert!(e.starts_with("line 3: unknown field `listn`"), "{e}");
        let ok: T = parse_toml("listen = \"x\"\n").unwrap();
        assert_eq!(ok.listen, "x");
    }

    #[test]
    fn durations_accept_humantime_and_bare_seconds() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(
            parse_duration("72h").unwrap(),
            Duration::from_secs(72 * 3600)
        );
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn bad_durations_say_what_to_write() {
        let e = parse_duration("soon").unwrap_err().to_string();
        assert!(e.contains("\"soon\"") && e.contains("72h"), "{e}");
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5").is_err());
    }

    #[derive(Deserialize, Debug)]
    struct T {
        a: ConfigDuration,
        #[serde(with = "serde_duration")]
        b: Duration,
    }

    #[test]
    fn duration_fields_deserialize_from_toml_strings_and_integers() {
        let t: T = toml::from_str("a = \"5m\"\nb = 30\n").unwrap();
        assert_eq!(t.a.0, Duration::from_secs(300));
        assert_eq!(t.b, Duration::from_secs(30));
        let e = toml::from_str::<T>("a = -1\nb = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("negative"), "{e}");
    }

    #[test]
    fn duration_serializes_as_humantime() {
        let s = serde_json::to_string(&ConfigDuration::from_secs(3600 * 72)).unwrap();
        assert_eq!(s, "\"3days\"");
        let back: ConfigDuration = serde_json::from_str(&s).unwrap();
        assert_eq!(back.0, Duration::from_secs(3600 * 72));
    }

    #[test]
    fn addresses_parse_names_ipv4_and_bracketed_ipv6() {
        let a: HostAddr = "Login1.Example.org:22".parse().unwrap();
        assert_eq!(a.host, Host::Name("login1.example.org".into()));
        assert_eq!(a.port, 22);
        let b: HostAddr = "127.0.0.2:2222".parse().unwrap();
        assert_eq!(b.ip_addr(), Some("127.0.0.2".parse().unwrap()));
        let c: HostAddr = "[::1]:2200".parse().unwrap();
        assert_eq!(c.ip_addr(), Some("::1".parse().unwrap()));
        assert_eq!(c.to_string(), "[::1]:2200");
        assert_eq!(c.host_str(), "::1");
    }

    #[test]
    fn bad_addresses_are_explained() {
        let cases = [
            ("::1:22", "brackets"),
            ("host", "missing port"),
            ("host:0", "1 to 65535"),
            ("host:99999", "1 to 65535"),
            ("[::1", "missing ']'"),
            ("[nope]:22", "IPv6"),
            ("bad host:22", "not a valid host name"),
            ("-x:22", "not a valid host name"),
            ("", "empty"),
        ];
        for (input, needle) in cases {
            let e = input.parse::<HostAddr>().unwrap_err().to_string();
            assert!(e.contains(needle), "{input:?}: {e}");
        }
    }

    #[test]
    fn default_port_applies_only_when_none_is_written() {
        let a = HostAddr::parse_with_default_port("x2go1", 22).unwrap();
        assert_eq!(a.port, 22);
        let b = HostAddr::parse_with_default_port("[::1]", 22).unwrap();
        assert_eq!(b.to_string(), "[::1]:22");
        let c = HostAddr::parse_with_default_port("x2go1:2222", 22).unwrap();
        assert_eq!(c.port, 2222);
    }
}
