//! Time sources. The engine reads time through [`Clock`] so tests can drive it by hand.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the unix epoch.
///
/// The L2 header stores absolute expiry times that every instance reads, so the clock is a
/// wall clock. It is read on every L1 hit: implementations must be cheap.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;
}

/// The default clock: the wall clock in milliseconds, as last stored by one process-wide
/// background thread (`tiercache-clock`, which reads the system clock every millisecond).
/// A reading is one atomic load; it lags the system clock by about a millisecond (more when
/// the machine is so busy that the thread is not scheduled). Should that thread fail to
/// start, every reading asks the system (a coarse clock on Linux, a few ns).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        system_now_ms()
    }
}

/// The last reading of the ticker thread; 0 until it runs (or when it cannot).
static TICKED_MS: AtomicU64 = AtomicU64::new(0);

/// How often the ticker thread refreshes [`TICKED_MS`].
const TICK: std::time::Duration = std::time::Duration::from_millis(1);

/// The default clock's reading, callable without a trait object (the engine's hot path uses
/// it directly when no clock was injected).
#[inline]
pub fn system_now_ms() -> u64 {
    let ticked = TICKED_MS.load(Ordering::Relaxed);
    if ticked != 0 {
        ticked
    } else {
        start_ticker()
    }
}

/// Whether this process has started (or tried to start) its ticker thread.
static STARTED: AtomicBool = AtomicBool::new(false);

/// Starts the ticker thread once per process; answers from the system clock meanwhile.
#[cold]
#[inline(never)]
fn start_ticker() -> u64 {
    if STARTED
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        reset_in_forked_children();
        TICKED_MS.store(precise_now_ms().max(1), Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("tiercache-clock".into())
            .spawn(|| loop {
                std::thread::sleep(TICK);
                TICKED_MS.store(precise_now_ms().max(1), Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            // Stays started: every read asks the system clock from now on.
            TICKED_MS.store(0, Ordering::Relaxed);
            tracing::warn!(error = %e, "cannot start the clock thread; reading the system clock on every L1 hit");
        }
    }
    coarse_now_ms()
}

/// A child forked without `exec` has no ticker thread (only the forking thread survives a
/// fork), so the reading it inherited would stand still: the child starts its own ticker on
/// its first read. Registered once per process image (children inherit the handler).
#[cfg(unix)]
#[allow(unsafe_code)]
fn reset_in_forked_children() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    extern "C" fn in_child() {
        // Only atomic stores: safe in a freshly forked child.
        TICKED_MS.store(0, Ordering::Relaxed);
        STARTED.store(false, Ordering::Relaxed);
    }
    if !REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: registers a handler that only performs atomic stores; no prepare or parent
        // handler. A failure (ENOMEM) leaves forked children on a frozen reading, as before.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        if rc != 0 {
            tracing::warn!(rc, "cannot register the clock's fork handler");
        }
    }
}

#[cfg(not(unix))]
fn reset_in_forked_children() {}

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

/// The precise system wall clock in unix milliseconds.
pub fn precise_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The engine's time source: the default clock read inline (one atomic load on the hot
/// path, no dynamic call), or a clock injected with [`crate::EngineBuilder::with_clock`].
#[derive(Clone)]
pub(crate) enum ClockSource {
    /// [`SystemClock`], read without a trait object.
    System,
    /// An injected clock (tests, simulations).
    Injected(std::sync::Arc<dyn Clock>),
}

impl ClockSource {
    /// Milliseconds since the unix epoch.
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        match self {
            ClockSource::System => system_now_ms(),
            ClockSource::Injected(c) => c.now_ms(),
        }
    }
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
    fn system_clock_follows_the_wall_clock() {
        let a = SystemClock.now_ms();
        let b = precise_now_ms();
        assert!(a.abs_diff(b) < 50, "clock {a} precise {b}");
        assert!(
            coarse_now_ms().abs_diff(b) < 50,
            "coarse {} precise {b}",
            coarse_now_ms()
        );
        // The ticker keeps it moving: 30 ms later it has moved by roughly as much.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let c = SystemClock.now_ms();
        assert!(c >= a + 20, "the clock moved only {} ms in 30 ms", c - a);
        assert!(c.abs_diff(precise_now_ms()) < 50);
    }
}
