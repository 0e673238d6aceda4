//! Placement policy identifiers, as written in every config.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// How a pool chooses a host for a new session. Resume always comes first, whatever the policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// `rr`: round-robin over eligible hosts in configured order; weight only switches a host on/off.
    RoundRobin,
    /// `wrr`: weighted round-robin with IPVS's interleaved semantics.
    WeightedRoundRobin,
    /// `lc`: fewest sessions plus reservations; weight only switches a host on/off.
    LeastSessions,
    /// `wlc`: fewest (sessions + reservations) / weight, with a quota rule that keeps a storm of
    /// requests within one session of each host's weighted share (see [`crate::placement`]). The
    /// default.
    #[default]
    WeightedLeastSessions,
    /// `sed`: shortest expected delay, (sessions + reservations + 1) / weight.
    ShortestExpectedDelay,
    /// `least-load`: composite of CPU, memory and sessions from load reports (see
    /// [`crate::placement::score`]), adjusted after each placement until the next report.
    LeastLoad,
    /// `two-choices`: two hosts drawn at random in proportion to weight; the one with the lower
    /// (sessions + reservations) / weight wins.
    TwoChoices,
    /// `x2go-load`: X2Go's load-factor formula, (sessions + 1) / load_factor.
    X2goLoad,
}

impl Policy {
    /// Every policy, in documentation order.
    pub const ALL: [Policy; 8] = [
        Policy::RoundRobin,
        Policy::WeightedRoundRobin,
        Policy::LeastSessions,
        Policy::WeightedLeastSessions,
        Policy::ShortestExpectedDelay,
        Policy::LeastLoad,
        Policy::TwoChoices,
        Policy::X2goLoad,
    ];

    /// The identifier used in configs, APIs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "rr",
            Policy::WeightedRoundRobin => "wrr",
            Policy::LeastSessions => "lc",
            Policy::WeightedLeastSessions => "wlc",
            Policy::ShortestExpectedDelay => "sed",
            Policy::LeastLoad => "least-load",
            Policy::TwoChoices => "two-choices",
            Policy::X2goLoad => "x2go-load",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is not one of the identifiers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown placement policy {0:?}; expected one of rr, wrr, lc, wlc, sed, least-load, two-choices, x2go-load"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

impl Serialize for Policy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_round_trips_through_its_identifier() {
        for p in Policy::ALL {
            assert_eq!(p.as_str().parse::<Policy>().unwrap(), p);
        }
        assert_eq!(Policy::default(), Policy::WeightedLeastSessions);
    }

    #[test]
    fn unknown_policy_lists_the_valid_ones() {
        let e = "fastest".parse::<Policy>().unwrap_err().to_string();
        assert!(e.contains("\"fastest\"") && e.contains("least-load"), "{e}");
    }
}
