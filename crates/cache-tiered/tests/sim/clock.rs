//! A [`Clock`] on tokio's time: under a paused runtime it moves only when virtual time does,
//! so L1 and L2 expiry follow the simulation's sleeps, not the wall clock.

use cache_tiered::Clock;

/// Unix milliseconds: a fixed origin plus the tokio time elapsed since the clock was made.
#[derive(Debug)]
pub struct VirtualClock {
    origin: tokio::time::Instant,
    base_ms: u64,
}

impl VirtualClock {
    /// A clock reading `base_ms` now (call inside the runtime whose time it follows).
    pub fn new(base_ms: u64) -> Self {
        VirtualClock {
            origin: tokio::time::Instant::now(),
            base_ms,
        }
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> u64 {
        self.base_ms + self.origin.elapsed().as_millis() as u64
    }
}
