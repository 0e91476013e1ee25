//! Early refresh: decide, on a hit, whether to reload a value before it expires.

use std::time::Duration;

/// Decides whether a value should be refreshed now, before it expires.
///
/// Object-safe; `cache-xfetch` implements the XFetch algorithm. The engine calls
/// [`RefreshPolicy::should_refresh`] only when the remaining time is within
/// [`RefreshPolicy::horizon`], so the hit path pays one integer compare otherwise.
pub trait RefreshPolicy: Send + Sync + 'static {
    /// Beyond this remaining time the policy never fires for a value whose load took `delta`.
    fn horizon(&self, delta: Duration) -> Duration;

    /// Refresh now? `remaining`: time until expiry; `delta`: how long the last load took;
    /// `draw`: uniform in `(0, 1]`.
    fn should_refresh(&self, remaining: Duration, delta: Duration, draw: f64) -> bool;
}

/// Never refreshes early.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRefresh;

impl RefreshPolicy for NoRefresh {
    fn horizon(&self, _delta: Duration) -> Duration {
        Duration::ZERO
    }

    fn should_refresh(&self, _remaining: Duration, _delta: Duration, _draw: f64) -> bool {
        false
    }
}

/// A source of uniform draws in `(0, 1]`, injectable for deterministic tests.
pub trait RandomSource: Send + Sync + 'static {
    /// A uniform draw in `(0, 1]`.
    fn draw(&self) -> f64;
}

/// The default random source (a fast thread-local generator).
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadRandom;

impl RandomSource for ThreadRandom {
    fn draw(&self) -> f64 {
        1.0 - fastrand::f64()
    }
}

/// A seeded random source for tests.
#[derive(Debug)]
pub struct SeededRandom(std::sync::Mutex<fastrand::Rng>);

impl SeededRandom {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRandom(std::sync::Mutex::new(fastrand::Rng::with_seed(seed)))
    }
}

impl RandomSource for SeededRandom {
    fn draw(&self) -> f64 {
        let mut rng = self.0.lock().unwrap_or_else(|p| p.into_inner());
        1.0 - rng.f64()
    }
}
