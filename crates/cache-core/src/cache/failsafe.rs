//! Fail-safe: stale values kept past their expiry, served when the loader fails; `expire`.

use super::*;

impl<V, C> Cache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Mark a key expired everywhere without dropping it: with fail-safe on, the value stays
    /// in both tiers as a stale fallback (the next read loads, and a failing loader serves the
    /// kept value, as for a value that expired by itself); the other instances drop their L1
    /// copies (bus). Without fail-safe there is nothing to keep: it is
    /// [`Cache::invalidate`].
    ///
    /// L2's copy is re-stamped as expired under the key's fill lease, so it never overwrites
    /// a newer write. When that cannot be done (raw mode, leases off, a load of the key in
    /// flight elsewhere, L2 failing) the key is deleted from L2 instead, like `invalidate`
    /// (queued for auto-recovery when L2 is down): never stale, though the fallback is lost.
    pub async fn expire(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        if !inner.config.fail_safe {
            return self.invalidate(key).await;
        }
        let full = inner.keys.full(key)?;
        inner.engine.background().settled(&full).await;
        inner.observer.on_event(CacheEvent::Invalidate);
        inner.bump_epoch(key);
        inner.mark_expired(key);
        let kept = match inner.engine.remote() {
            None => true,
            Some(l2) => self.expire_l2(l2.as_ref(), &full).await,
        };
        let result = if kept {
            Ok(())
        } else {
            self.l2_remove(key, full).await
        };
        // A read that found the live L2 value meanwhile may have filled L1 again.
        inner.bump_epoch(key);
        inner.mark_expired(key);
        inner.announce(key);
        result
    }

    /// Re-stamp L2's copy of `full` as expired now, keeping it until its fail-safe window
    /// ends, under the fill lease. False when that could not be done (the caller deletes).
    pub(super) async fn expire_l2(&self, l2: &dyn crate::remote::RemoteStore, full: &str) -> bool {
        let inner = &self.inner;
        if inner.config.raw {
            return false;
        }
        let Some(lease) = inner.fill_lease_key(full) else {
            return false;
        };
        let token = super::lease::lease_token();
        if !matches!(
            l2.set_nx(&lease, token.clone(), inner.config.lease_ttl)
                .await,
            Ok(true)
        ) {
            return false;
        }
        let now = inner.engine.now_ms().max(1);
        let restamped = match l2.get(full).await {
            Ok(Some(bytes)) => match Header::decode(&bytes) {
                Ok((h, payload)) if h.expires_at_ms == 0 || h.expires_at_ms > now => {
                    let until = inner.stale_until(h.expires_at_ms.max(now));
                    let header = Header {
                        expires_at_ms: now,
                        ..h
                    };
                    Some((header.encode(payload), until.saturating_sub(now)))
                }
                // Expired already: nothing to do.
                Ok(_) => None,
                Err(_) => {
                    inner.release_lease(&lease, &token).await;
                    return false;
                }
            },
            Ok(None) => None,
            Err(e) => {
                inner.l2_failed(L2Op::Get, &e);
                inner.release_lease(&lease, &token).await;
                return false;
            }
        };
        let Some((bytes, keep_ms)) = restamped else {
            inner.release_lease(&lease, &token).await;
            return true;
        };
        // A write since our lease was taken removed it: the compare-and-set stores nothing,
        // and the newer value stands.
        match l2
            .set_if_lease(
                &lease,
                &token,
                full,
                bytes,
                Duration::from_millis(keep_ms.max(1)),
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                inner.l2_failed(L2Op::Set, &e);
                false
            }
        }
    }
}

impl<V, C> CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Turn a live L1 entry of `key` into an expired one, kept as a fail-safe fallback.
    pub(super) fn mark_expired(&self, key: &str) {
        let now = self.engine.now_ms();
        if let Some(entry) = self.engine.l1().get(self.ns, key, now) {
            if entry.expires_at_ms > now {
                self.engine.l1().insert(
                    self.ns,
                    key,
                    L1Entry {
                        expires_at_ms: now,
                        refresh_at_ms: now,
                        ..entry
                    },
                );
            }
        }
    }

    /// How long a value expiring at `expires_at` is kept for fail-safe.
    pub(super) fn stale_until(&self, expires_at: u64) -> u64 {
        if self.config.fail_safe {
            expires_at.saturating_add(self.config.max_stale.as_millis() as u64)
        } else {
            expires_at
        }
    }

    /// A fail-safe cache's fallback for `key`: an L1 entry no longer fresh but kept, with how
    /// long it may be served. `None` when the cache is not fail-safe.
    pub(super) fn local_stale(&self, key: &str) -> Option<(Option<Arc<V>>, u64)> {
        if !self.config.fail_safe {
            return None;
        }
        let now = self.engine.now_ms();
        let entry = self.engine.l1().get(self.ns, key, now)?;
        let until = entry.stale_until_ms;
        Self::value_of(entry).map(|v| (v, until))
    }

    /// The value of an entry without counting anything; `None` on a type mismatch.
    pub(super) fn value_of(entry: L1Entry) -> Option<Option<Arc<V>>> {
        match entry.value {
            None => Some(None),
            Some(any) => any.downcast::<V>().ok().map(Some),
        }
    }

    /// Serve a stale value (fail-safe): count it, and keep it fresh in L1 for the back-off so
    /// the loader is retried only then, not on every call.
    pub(super) fn serve_stale(
        &self,
        key: &str,
        value: &Option<Arc<V>>,
        stale_until: u64,
        epoch: u64,
    ) {
        bump(&self.stats.stale_served);
        self.observer.on_event(CacheEvent::StaleServed);
        tracing::warn!(cache = %self.name, "serving a stale value (fail-safe)");
        let now = self.engine.now_ms();
        let until = now
            .saturating_add(self.config.fail_safe_backoff.as_millis() as u64)
            .min(stale_until);
        if until > now {
            self.insert_if(
                key,
                epoch,
                L1Entry {
                    value: value
                        .clone()
                        .map(|v| v as Arc<dyn std::any::Any + Send + Sync>),
                    expires_at_ms: until,
                    born_ms: self.engine.now_ms(),
                    stale_until_ms: stale_until,
                    refresh_at_ms: until,
                    delta_us: 0,
                    weight: L1_ENTRY_OVERHEAD,
                },
            );
        }
    }
}
