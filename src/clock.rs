//! Wall-clock time derived from tokio's clock, so that a paused test clock moves timestamps
//! (deployment creation times, condition transitions) as well as timers.

use std::sync::OnceLock;
use std::time::SystemTime;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    wall: SystemTime,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's one anchor between tokio's clock and the wall clock: every [`Clock`] of a
/// process agrees, so times written by one component (or one run of the loop, before a
/// restart in a test) read the same in another, even on a paused test clock.
static ANCHOR: OnceLock<(Instant, SystemTime)> = OnceLock::new();

impl Clock {
    pub fn new() -> Self {
        let (origin, wall) = *ANCHOR.get_or_init(|| (Instant::now(), SystemTime::now()));
        Clock { origin, wall }
    }

    /// Tokio's monotonic now.
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// The wall-clock time now.
    pub fn now(&self) -> SystemTime {
        self.wall_at(Instant::now())
    }

    /// The wall-clock time at a tokio instant.
    pub fn wall_at(&self, at: Instant) -> SystemTime {
        if at >= self.origin {
            self.wall + (at - self.origin)
        } else {
            self.wall - (self.origin - at)
        }
    }

    /// The tokio instant at a wall-clock time (saturating at now for times in the past
    /// beyond the origin).
    pub fn instant_at(&self, at: SystemTime) -> Instant {
        match at.duration_since(self.wall) {
            Ok(ahead) => self.origin + ahead,
            Err(e) => self.origin.checked_sub(e.duration()).unwrap_or(self.origin),
        }
    }
}

/// A time as RFC 3339, to the second.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
