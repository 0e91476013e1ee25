//! Values made ready for both tiers (encoding, TTLs, jitter) and epoch-checked L1 inserts.

use super::*;

/// Values ready for both tiers.
pub(super) struct Prepared<V> {
    pub(super) value: Option<Arc<V>>,
    pub(super) bytes: Option<Vec<u8>>,
    pub(super) l1_expires_at_ms: u64,
    pub(super) l1_stale_until_ms: u64,
    pub(super) l1_refresh_at_ms: u64,
    pub(super) l2_ttl: Duration,
    pub(super) delta_us: u32,
    pub(super) weight: u32,
}

impl<V, C> CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Encode a value (or absence) and work out its TTLs.
    pub(super) fn prepare(
        &self,
        value: Option<Arc<V>>,
        delta: Duration,
        l1: Option<Duration>,
        l2: Option<Duration>,
    ) -> Result<Prepared<V>> {
        let now = self.engine.now_ms();
        let base_l2 = match (&value, l2) {
            (_, Some(t)) => t,
            (None, None) => self.config.negative_ttl,
            (Some(_), None) => self.config.l2_ttl,
        };
        let l2_ttl = self.jittered(base_l2);
        let l1_ttl = self
            .jittered(l1.unwrap_or(self.config.l1_ttl).min(base_l2))
            .min(l2_ttl);
        let delta_us = u32::try_from(delta.as_micros()).unwrap_or(u32::MAX);
        let l2_expires_at_ms = now.saturating_add(l2_ttl.as_millis() as u64);
        let payload = match &value {
            Some(v) => Some(C::encode(&**v)?),
            None => None,
        };
        let bytes = if self.config.raw {
            payload
        } else {
            let mut flags = 0u8;
            #[allow(unused_mut)]
            let mut body = payload.unwrap_or_default();
            if value.is_none() {
                flags |= Header::FLAG_NEGATIVE;
            }
            #[cfg(feature = "lz4")]
            if let Some(min) = self.config.compress_above {
                if body.len() >= min {
                    body = crate::compress::compress(&body);
                    flags |= Header::FLAG_COMPRESSED;
                }
            }
            let h = Header {
                codec: C::ID.as_u8(),
                flags,
                expires_at_ms: l2_expires_at_ms,
                delta_us,
            };
            Some(h.encode(&body))
        };
        let weight = bytes
            .as_ref()
            .map_or(0, |b| u32::try_from(b.len()).unwrap_or(u32::MAX))
            .saturating_add(L1_ENTRY_OVERHEAD);
        let l1_expires_at_ms = now.saturating_add(l1_ttl.as_millis() as u64);
        // Redis keeps the value `max_stale` past its logical expiry for fail-safe.
        let l2_ttl = if self.config.fail_safe {
            l2_ttl.saturating_add(self.config.max_stale)
        } else {
            l2_ttl
        };
        Ok(Prepared {
            value,
            bytes,
            l1_expires_at_ms,
            l1_stale_until_ms: self.stale_until(l2_expires_at_ms.max(l1_expires_at_ms)),
            l1_refresh_at_ms: self.refresh_at(l1_expires_at_ms, delta_us),
            l2_ttl,
            delta_us,
            weight,
        })
    }

    pub(super) fn entry_of(&self, value: Option<Arc<V>>, p: &Prepared<V>) -> L1Entry {
        L1Entry {
            value: value.map(|v| v as Arc<dyn std::any::Any + Send + Sync>),
            expires_at_ms: p.l1_expires_at_ms,
            born_ms: self.engine.now_ms(),
            stale_until_ms: p.l1_stale_until_ms,
            refresh_at_ms: p.l1_refresh_at_ms,
            delta_us: p.delta_us,
            weight: p.weight,
        }
    }

    /// Insert `entry` into L1 unless the key's epoch moved from `epoch`; false when it did.
    /// The epoch is checked again after the insert: an invalidation processed between the
    /// check and the insert (it bumps the epoch, then removes the entry) would otherwise leave
    /// the older value behind; the entry is then removed again (a miss, never a stale hit).
    pub(super) fn insert_if(&self, key: &str, epoch: u64, entry: L1Entry) -> bool {
        if self.epoch(key) != epoch {
            return false;
        }
        self.engine.l1().insert(self.ns, key, entry);
        if self.epoch(key) != epoch {
            self.engine.l1().remove(self.ns, key);
            return false;
        }
        true
    }

    pub(super) fn jittered(&self, ttl: Duration) -> Duration {
        let j = self.config.jitter;
        if j <= 0.0 {
            return ttl;
        }
        let cut = ttl.mul_f64(j * fastrand::f64());
        ttl.saturating_sub(cut).max(Duration::from_millis(1))
    }

    /// When an entry expiring at `expires_at` becomes eligible for early refresh.
    pub(super) fn refresh_at(&self, expires_at: u64, delta_us: u32) -> u64 {
        let horizon = self
            .policy
            .horizon(Duration::from_micros(u64::from(delta_us)));
        expires_at.saturating_sub(horizon.as_millis() as u64)
    }
}
