//! Time as the core sees it: milliseconds since the Unix epoch, passed in by the caller.
//!
//! The core never reads a clock. Daemons pass the wall clock; tests pass whatever they like, which is
//! how expiry is tested without sleeping.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A point in time: milliseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// The epoch itself, handy as a test start.
    pub const ZERO: Millis = Millis(0);

    /// This time plus a duration, saturating.
    pub fn after(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(duration_ms(d)))
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The current wall clock, for daemons (never called inside the core).
    pub fn now_wall() -> Millis {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Millis(duration_ms(d))
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
