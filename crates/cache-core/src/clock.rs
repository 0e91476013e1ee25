//! Time sources. The engine reads time through [`Clock`] so tests can drive it by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the unix epoch.
///
/// The L2 header stores absolute expiry times that every instance reads, so the clock is a
/// wall clock. It is read on every L1 hit: implementations must be cheap.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;
}

/// The default clock: a coarse wall clock (Linux `CLOCK_REALTIME_COARSE`, a few ns a read,
/// resolution of one kernel tick), the precise system clock elsewhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        coarse_now_ms()
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
#[inline]
fn coarse_now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME_COARSE is always supported
    // on Linux >= 2.6.32. On failure we fall back to the precise clock.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc == 0 {
        (ts.tv_sec as u64)
            .saturating_mul(1000)
            .saturating_add(ts.tv_nsec as u64 / 1_000_000)
    } else {
        precise_now_ms()
    }
}

#[cfg(not(target_os = "linux"))]
#[inline]
fn coarse_now_ms() -> u64 {
    precise_now_ms()
}

/// The default clock's reading, callable without a trait object (the engine's hot path uses
/// it directly when no clock was injected).
#[inline]
pub fn system_now_ms() -> u64 {
    coarse_now_ms()
}

/// The precise system wall clock in unix milliseconds.
pub fn precise_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A clock moved by hand, for deterministic tests.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            now: AtomicU64::new(start_ms),
        }
    }

    /// Move the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Set the clock.
    pub fn set(&self, ms: u64) {
        self.now.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_is_close_to_precise() {
        let a = SystemClock.now_ms();
        let b = precise_now_ms();
        assert!(a.abs_diff(b) < 50, "coarse {a} precise {b}");
    }
}
