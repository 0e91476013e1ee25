//! Reads: L1, then L2 (`get`, `get_with`, `get_many`), and turning L2 bytes into values.

use super::*;

impl<V, C> Cache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// The L1 answer alone: `Some(Some(v))` a live value, `Some(None)` a live negative entry,
    /// `None` nothing live. No network, no decoding, no allocation, never yields.
    #[inline]
    pub fn get_local(&self, key: &str) -> Option<Option<Arc<V>>> {
        let inner = &*self.inner;
        let now = inner.engine.now_ms();
        match inner.engine.l1().get(inner.ns, key, now) {
            Some(entry) if entry.expires_at_ms > now && inner.is_fresh(&entry) => {
                inner.downcast(entry)
            }
            _ => {
                inner.event(CacheEvent::L1Miss);
                None
            }
        }
    }

    /// Read through L1 then L2 (filling L1 on an L2 hit). `Ok(None)` when neither tier has
    /// the key (or holds a negative entry). L2 failures are counted and read as a miss.
    ///
    /// An L1 hit is answered when the future is made (it is ready at its first poll, and
    /// allocates nothing); only a miss builds the (boxed) L2 read.
    #[inline]
    pub fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Future<Output = Result<Option<Arc<V>>>> + Send + 'a {
        // An invalid key is never in L1: it misses here and is refused by `get_remote`.
        match self.get_local(key) {
            Some(hit) => Fast::Ready(Some(Ok(hit))),
            None => Fast::Boxed(Box::pin(self.get_remote(key, true))),
        }
    }

    /// [`Cache::get`] with per-call options: `skip_l1_read` reads L2 even when L1 holds the
    /// key, `skip_l2_read` answers from L1 alone, `skip_l1_write` leaves L1 as it is after an
    /// L2 hit. Skipping both reads is an [`ErrorKind::InvalidConfig`] error.
    pub async fn get_with(&self, key: &str, options: &CallOptions) -> Result<Option<Arc<V>>> {
        options.check_read(&self.inner.config)?;
        crate::key::validate_key(key, self.inner.keys.max_key_len())?;
        if !options.skip_l1_read {
            if let Some(hit) = self.get_local(key) {
                return Ok(hit);
            }
        }
        if options.skip_l2_read {
            return Ok(None);
        }
        self.get_remote(key, !options.skip_l1_write).await
    }

    /// The L2 part of [`Cache::get`].
    pub(super) async fn get_remote(&self, key: &str, fill_l1: bool) -> Result<Option<Arc<V>>> {
        crate::key::validate_key(key, self.inner.keys.max_key_len())?;
        let full = self.inner.keys.full(key)?;
        let epoch = self.inner.epoch(key);
        let span = self.inner.span(SpanKind::Get, key);
        use tracing::Instrument;
        Ok(self
            .inner
            .l2_read(key, &full, epoch, fill_l1)
            .instrument(span)
            .await
            .ok()
            .flatten()
            .and_then(|f| if f.stale { None } else { f.value }))
    }

    /// Read many keys: L1 first, then one L2 round trip for all L1 misses. The result is
    /// aligned with `keys`.
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<Arc<V>>>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut missing: Vec<(usize, String)> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let k = k.as_ref();
            crate::key::validate_key(k, self.inner.keys.max_key_len())?;
            match self.get_local(k) {
                Some(hit) => out.push(hit),
                None => {
                    out.push(None);
                    missing.push((i, k.to_owned()));
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let found = self
            .inner
            .l2_read_many(missing.iter().map(|(_, k)| k.clone()).collect())
            .await
            // An L2 failure (already counted) leaves the misses as misses.
            .unwrap_or_default();
        for ((i, _), v) in missing.into_iter().zip(found) {
            out[i] = v.and_then(|f| if f.stale { None } else { f.value });
        }
        Ok(out)
    }
}

impl<V, C> CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// The value of a live L1 entry, counting the hit; `None` on a type mismatch.
    #[inline(always)]
    pub(super) fn downcast(&self, entry: L1Entry) -> Option<Option<Arc<V>>> {
        match entry.value {
            None => {
                self.event(CacheEvent::L1Hit);
                Some(None)
            }
            Some(any) => match any.downcast::<V>() {
                Ok(v) => {
                    self.event(CacheEvent::L1Hit);
                    Some(Some(v))
                }
                Err(_) => {
                    self.event(CacheEvent::L1Miss);
                    None
                }
            },
        }
    }

    /// Turn one L2 answer into a value: `Some(found)` on a usable hit (L1 filled), `None` on
    /// a miss, an expired or unreadable value, or an error (all counted).
    pub(super) fn accept_l2(
        &self,
        key: &str,
        answer: Option<Vec<u8>>,
        latency: Duration,
        epoch: u64,
    ) -> Option<Found<V>> {
        let Some(bytes) = answer else {
            bump(&self.stats.l2_misses);
            self.observer.on_event(CacheEvent::L2Miss { latency });
            return None;
        };
        let now = self.engine.now_ms();
        match self.decode(&bytes, now) {
            Ok(d) if d.stale => {
                bump(&self.stats.l2_misses);
                self.observer.on_event(CacheEvent::L2Miss { latency });
                Some(Found {
                    value: d.value.map(Arc::new),
                    stale: true,
                    stale_until_ms: d.stale_until_ms,
                    l2_expires_at_ms: d.l2_expires_at_ms,
                    delta_us: d.delta_us,
                })
            }
            Ok(d) => {
                bump(&self.stats.l2_hits);
                self.observer.on_event(CacheEvent::L2Hit { latency });
                let value = d.value.map(Arc::new);
                self.insert_if(
                    key,
                    epoch,
                    L1Entry {
                        value: value
                            .clone()
                            .map(|v| v as Arc<dyn std::any::Any + Send + Sync>),
                        expires_at_ms: d.expires_at_ms,
                        born_ms: self.engine.now_ms(),
                        stale_until_ms: d.stale_until_ms,
                        refresh_at_ms: self.refresh_at(d.expires_at_ms, d.delta_us),
                        delta_us: d.delta_us,
                        weight: d.weight,
                    },
                );
                Some(Found {
                    value,
                    stale: false,
                    stale_until_ms: d.stale_until_ms,
                    l2_expires_at_ms: d.l2_expires_at_ms,
                    delta_us: d.delta_us,
                })
            }
            Err(Unusable::Expired) => {
                bump(&self.stats.l2_misses);
                self.observer.on_event(CacheEvent::L2Miss { latency });
                None
            }
            Err(Unusable::Corrupt(e)) => {
                bump(&self.stats.l2_corrupt);
                self.observer.on_event(CacheEvent::L2Corrupt);
                tracing::warn!(cache = %self.name, error = %e, "unreadable value in L2, treated as a miss");
                None
            }
        }
    }

    /// Read one key from L2 (`Ok(None)`: no L2, a miss, or unreadable bytes). An error is
    /// counted and reported here; the caller only decides what it means for the rest of the
    /// load (see [`unreachable`]).
    pub(super) async fn l2_read(
        &self,
        key: &str,
        full: &str,
        epoch: u64,
        fill_l1: bool,
    ) -> Result<Option<Found<V>>> {
        let Some(l2) = self.engine.remote() else {
            return Ok(None);
        };
        // Timed only for an observer that will hear of it (two clock reads per miss saved).
        let start = self.observe.then(Instant::now);
        match l2.get(full).await {
            Ok(answer) => {
                let latency = start.map_or(Duration::ZERO, |s| s.elapsed());
                // A read that must not fill L1 passes an epoch that never matches.
                let epoch = if fill_l1 { epoch } else { u64::MAX };
                Ok(self.accept_l2(key, answer, latency, epoch))
            }
            Err(e) => {
                self.l2_failed(L2Op::Get, &e);
                Err(e)
            }
        }
    }

    /// One L2 round trip for many keys; aligned with `keys`. Errors as in [`Self::l2_read`].
    pub(super) async fn l2_read_many(&self, keys: Vec<String>) -> Result<Vec<Option<Found<V>>>> {
        let epochs: Vec<u64> = keys.iter().map(|k| self.epoch(k)).collect();
        let Some(l2) = self.engine.remote() else {
            return Ok(keys.iter().map(|_| None).collect());
        };
        let mut fulls = Vec::with_capacity(keys.len());
        for k in &keys {
            match self.keys.full(k) {
                Ok(f) => fulls.push(f),
                Err(_) => return Ok(keys.iter().map(|_| None).collect()),
            }
        }
        let start = self.observe.then(Instant::now);
        match l2.get_many(&fulls).await {
            Ok(answers) => {
                let latency = start.map_or(Duration::ZERO, |s| s.elapsed());
                Ok(keys
                    .iter()
                    .zip(epochs)
                    .zip(answers.into_iter().chain(std::iter::repeat(None)))
                    .map(|((k, epoch), a)| self.accept_l2(k, a, latency, epoch))
                    .collect())
            }
            Err(e) => {
                self.l2_failed(L2Op::Get, &e);
                Err(e)
            }
        }
    }

    /// Decode L2 bytes.
    pub(super) fn decode(
        &self,
        bytes: &[u8],
        now: u64,
    ) -> std::result::Result<Decoded<V>, Unusable> {
        let weight = u32::try_from(bytes.len())
            .unwrap_or(u32::MAX)
            .saturating_add(L1_ENTRY_OVERHEAD);
        if self.config.raw {
            let v = C::decode(bytes).map_err(Unusable::Corrupt)?;
            let exp = now.saturating_add(self.jittered(self.config.l1_ttl).as_millis() as u64);
            return Ok(Decoded {
                value: Some(v),
                expires_at_ms: exp,
                stale_until_ms: self.stale_until(exp),
                stale: false,
                delta_us: 0,
                l2_expires_at_ms: None,
                weight,
            });
        }
        let (h, payload) = Header::decode(bytes)
            .map_err(|e| Unusable::Corrupt(Error::new(ErrorKind::Decode, e.to_string())))?;
        let stale = h.expires_at_ms != 0 && h.expires_at_ms <= now;
        if stale && !(self.config.fail_safe && now < self.stale_until(h.expires_at_ms)) {
            return Err(Unusable::Expired);
        }
        let l1_ttl = if h.is_negative() {
            self.config.l1_ttl.min(self.config.negative_ttl)
        } else {
            self.config.l1_ttl
        };
        let mut l1_exp = now.saturating_add(self.jittered(l1_ttl).as_millis() as u64);
        if h.expires_at_ms != 0 {
            l1_exp = l1_exp.min(h.expires_at_ms);
        }
        let value = if h.is_negative() {
            None
        } else if h.is_compressed() {
            let max = self
                .engine
                .inner
                .l2
                .as_ref()
                .map_or(512 * 1024 * 1024, |s| s.max_value_size());
            let plain = crate::compress::decompress(payload, max).map_err(Unusable::Corrupt)?;
            Some(C::decode_id(h.codec, &plain).map_err(Unusable::Corrupt)?)
        } else {
            Some(C::decode_id(h.codec, payload).map_err(Unusable::Corrupt)?)
        };
        Ok(Decoded {
            value,
            expires_at_ms: l1_exp,
            stale_until_ms: self.stale_until(if h.expires_at_ms != 0 {
                h.expires_at_ms
            } else {
                l1_exp
            }),
            stale,
            l2_expires_at_ms: (h.expires_at_ms != 0).then_some(h.expires_at_ms),
            delta_us: h.delta_us,
            weight,
        })
    }
}
