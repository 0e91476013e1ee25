//! # cache-xfetch
//!
//! XFetch early refresh (Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache
//! Stampede Prevention", VLDB 2015): a reader refreshes a value before it expires when
//!
//! ```text
//! now - delta * beta * ln(rand) >= expiry        rand uniform in (0, 1]
//! ```
//!
//! where `delta` is how long the last load took (stored in the L2 header, so every instance
//! draws from the same delta) and `beta` scales eagerness (default 1; > 1 refreshes earlier,
//! < 1 later). With arrivals at rate `r` and no coalescing, the expected number of refreshes
//! per expiry is `e^(1/beta)`, and the first starts on average
//! `delta * beta * (ln(r * delta * beta) + 0.5772)` before expiry.
//!
//! ```
//! use std::time::Duration;
//! use cache_core::RefreshPolicy;
//! use cache_xfetch::XFetch;
//!
//! let x = XFetch::new(1.0);
//! // 10 ms left, the load takes 100 ms: a draw of 0.5 (-ln 0.5 = 0.69 → 69 ms) fires.
//! assert!(x.should_refresh(Duration::from_millis(10), Duration::from_millis(100), 0.5));
//! // 10 s left: it does not.
//! assert!(!x.should_refresh(Duration::from_secs(10), Duration::from_millis(100), 0.5));
//! ```
#![warn(missing_docs)]

use std::time::Duration;

use cache_core::RefreshPolicy;

/// The largest value of `-ln(draw)` for draws of 53-bit precision (`-ln(2^-53)` ≈ 36.7).
const MAX_NEG_LN: f64 = 36.8;

/// The XFetch policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct XFetch {
    beta: f64,
}

impl Default for XFetch {
    fn default() -> Self {
        XFetch { beta: 1.0 }
    }
}

impl XFetch {
    /// XFetch with eagerness `beta` (clamped to `(0, 100]`; non-finite values become 1).
    pub fn new(beta: f64) -> Self {
        let beta = if beta.is_finite() && beta > 0.0 {
            beta.min(100.0)
        } else {
            1.0
        };
        XFetch { beta }
    }

    /// The eagerness parameter.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// How far before expiry this draw says to refresh: `delta * beta * -ln(draw)`.
    pub fn lead(&self, delta: Duration, draw: f64) -> Duration {
        let draw = if draw > 0.0 && draw <= 1.0 {
            draw
        } else {
            f64::MIN_POSITIVE
        };
        let secs = delta.as_secs_f64() * self.beta * (-draw.ln()).min(MAX_NEG_LN);
        Duration::from_secs_f64(secs.max(0.0))
    }
}

impl RefreshPolicy for XFetch {
    fn horizon(&self, delta: Duration) -> Duration {
        Duration::from_secs_f64(delta.as_secs_f64() * self.beta * MAX_NEG_LN)
    }

    fn should_refresh(&self, remaining: Duration, delta: Duration, draw: f64) -> bool {
        self.lead(delta, draw) >= remaining
    }
}

/// Refresh-after-write: a hit refreshes the value (in the background, coalesced with any load
/// of the key, under its lease) once less than `window` of its TTL remains. Deterministic,
/// unlike [`XFetch`]: every instance's first hit inside the window starts a refresh (one per
/// process; with leases, the others wait for or skip the holder's fill).
///
/// ```
/// use std::time::Duration;
/// use cache_core::RefreshPolicy;
/// use cache_xfetch::RefreshAhead;
///
/// // Entries live 60 s; refresh them after 45 s (75 % of their TTL).
/// let p = RefreshAhead::after_fraction(Duration::from_secs(60), 0.75);
/// assert_eq!(p.window(), Duration::from_secs(15));
/// assert!(p.should_refresh(Duration::from_secs(14), Duration::ZERO, 1.0));
/// assert!(!p.should_refresh(Duration::from_secs(16), Duration::ZERO, 1.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshAhead {
    window: Duration,
}

impl RefreshAhead {
    /// Refresh once less than `window` remains before expiry.
    pub fn within(window: Duration) -> Self {
        RefreshAhead { window }
    }

    /// Refresh once `fraction` of `ttl` has passed since the write (`fraction` clamped to
    /// `[0, 1]`; not finite: 1, never early). Use the TTL the cache gives its entries.
    pub fn after_fraction(ttl: Duration, fraction: f64) -> Self {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            1.0
        };
        RefreshAhead {
            window: ttl.mul_f64(1.0 - fraction),
        }
    }

    /// How long before expiry a hit starts the refresh.
    pub fn window(&self) -> Duration {
        self.window
    }
}

impl RefreshPolicy for RefreshAhead {
    fn horizon(&self, _delta: Duration) -> Duration {
        self.window
    }

    fn should_refresh(&self, remaining: Duration, _delta: Duration, _draw: f64) -> bool {
        remaining <= self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_ahead_fires_inside_its_window_only() {
        let p = RefreshAhead::after_fraction(Duration::from_secs(100), 0.8);
        assert_eq!(p.window(), Duration::from_secs(20));
        assert_eq!(p.horizon(Duration::from_secs(5)), Duration::from_secs(20));
        for draw in [f64::MIN_POSITIVE, 0.5, 1.0] {
            assert!(p.should_refresh(Duration::from_secs(20), Duration::ZERO, draw));
            assert!(!p.should_refresh(Duration::from_secs(21), Duration::ZERO, draw));
        }
        assert_eq!(
            RefreshAhead::after_fraction(Duration::from_secs(10), f64::NAN).window(),
            Duration::ZERO
        );
        assert_eq!(
            RefreshAhead::after_fraction(Duration::from_secs(10), -3.0).window(),
            Duration::from_secs(10)
        );
        assert_eq!(
            RefreshAhead::within(Duration::from_secs(3)).window(),
            Duration::from_secs(3)
        );
    }

    /// Simulates one key under Poisson arrivals at rate `r` (per unit time), recompute time
    /// `delta`, no coalescing: every arrival whose draw fires starts a recompute. Returns
    /// (mean recomputations per expiry, mean lead of the first refresh before expiry).
    fn simulate(beta: f64, r: f64, delta: f64, cycles: usize, seed: u64) -> (f64, f64) {
        let x = XFetch::new(beta);
        let mut rng = fastrand::Rng::with_seed(seed);
        let d = Duration::from_secs_f64(delta);
        let mut total_recomputes = 0usize;
        let mut total_lead = 0.0;
        for _ in 0..cycles {
            // Each cycle: the value expires at `ttl`. Arrivals are memoryless, so the cycle
            // starts 12·δβ before expiry: an earlier firing has probability below 1e-3.
            let ttl = delta * beta * 12.0;
            let mut t = 0.0;
            let mut first: Option<f64> = None;
            let mut recomputes = 0usize;
            loop {
                t += -(1.0 - rng.f64()).ln() / r;
                if let Some(f) = first {
                    if t >= f + delta {
                        break; // the first recompute finished: a new value, a new cycle
                    }
                }
                let remaining = ttl - t;
                let fires = remaining <= 0.0
                    || x.should_refresh(Duration::from_secs_f64(remaining), d, 1.0 - rng.f64());
                if fires {
                    recomputes += 1;
                    if first.is_none() {
                        first = Some(t);
                        total_lead += ttl - t;
                    }
                }
            }
            total_recomputes += recomputes;
        }
        (
            total_recomputes as f64 / cycles as f64,
            total_lead / cycles as f64,
        )
    }

    #[test]
    fn recomputations_per_expiry_match_theory() {
        for (beta, expected) in [
            (0.5f64, 2.0f64.exp()),
            (1.0, 1.0f64.exp()),
            (2.0, 0.5f64.exp()),
        ] {
            let (per_expiry, _) = simulate(beta, 100.0, 1.0, 2_000, 42);
            let err = (per_expiry - expected).abs() / expected;
            assert!(
                err < 0.10,
                "beta {beta}: {per_expiry:.3} vs {expected} ({:.1}% off)",
                err * 100.0
            );
        }
    }

    #[test]
    fn first_refresh_lead_matches_theory() {
        // r * delta = 100.
        for beta in [0.5, 1.0, 2.0] {
            let (_, lead) = simulate(beta, 100.0, 1.0, 2_000, 7);
            let expected = beta * ((100.0 * beta).ln() + 0.5772);
            let err = (lead - expected).abs() / expected;
            assert!(
                err < 0.10,
                "beta {beta}: lead {lead:.3} vs {expected:.3} ({:.1}% off)",
                err * 100.0
            );
        }
    }

    #[test]
    fn horizon_bounds_every_draw() {
        let x = XFetch::new(2.0);
        let d = Duration::from_millis(40);
        let h = x.horizon(d);
        for draw in [1.0, 0.5, 1e-9, f64::MIN_POSITIVE, 0.0] {
            assert!(x.lead(d, draw) <= h);
        }
        assert!(!x.should_refresh(h + Duration::from_millis(1), d, 1e-300));
    }

    #[test]
    fn beta_is_sanitised() {
        assert_eq!(XFetch::new(f64::NAN).beta(), 1.0);
        assert_eq!(XFetch::new(-3.0).beta(), 1.0);
        assert_eq!(XFetch::new(1e9).beta(), 100.0);
    }
}
