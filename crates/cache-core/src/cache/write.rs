//! Writes and invalidations: both tiers, background L2 writes, the bus announcement.

use super::*;

impl<V, C> Cache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Write a value through both tiers with the default TTLs.
    ///
    /// The value is encoded and size-checked first: an encode error or an oversized value is
    /// returned before anything changes. Then L2 is written, L1 updated and the other
    /// instances told (bus). If L2 fails (down, breaker open), L1 still holds the new value
    /// and the write is queued for replay when L2 is back (auto-recovery): `Ok` is returned.
    /// With auto-recovery off, the L2 error is returned.
    pub async fn set(&self, key: &str, value: V) -> Result<()> {
        self.set_inner(key, Arc::new(value), &DEFAULT_OPTIONS, &[])
            .await
    }

    /// Like [`Cache::set`] for a value already behind an `Arc` (no copy: the same `Arc` is
    /// kept in L1). Used by write-behind, which also hands the value to the source writer.
    pub async fn set_shared(&self, key: &str, value: Arc<V>) -> Result<()> {
        self.set_inner(key, value, &DEFAULT_OPTIONS, &[]).await
    }

    /// Like [`Cache::set`], recording the key under each tag so that
    /// [`Cache::invalidate_tag`] drops it (in L2 and in every instance's L1).
    pub async fn set_with_tags(&self, key: &str, value: V, tags: &[&str]) -> Result<()> {
        for t in tags {
            crate::key::validate_key(t, 256)?;
            self.inner.tag_keys(t)?;
        }
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        self.set_inner(key, Arc::new(value), &DEFAULT_OPTIONS, &tags)
            .await
    }

    /// Write-through: run `writer` (your database write) first; when it succeeds, write the
    /// value through L2 and L1 and tell the other instances. If the writer fails, the cache is
    /// unchanged and the error (kind [`ErrorKind::Writer`]) is returned. If the cache update
    /// fails after the source was written, the key is invalidated (never left stale) and the
    /// cache's error is returned.
    pub async fn write<F, Fut, E>(&self, key: &str, value: V, writer: F) -> Result<()>
    where
        F: FnOnce(String, Arc<V>) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.inner.keys.full(key)?;
        let value = Arc::new(value);
        if let Err(e) = writer(key.to_owned(), value.clone()).await {
            let source: Box<dyn std::error::Error + Send + Sync> = e.into();
            return Err(
                Error::new(ErrorKind::Writer, format!("writer failed: {source}"))
                    .with_boxed_source(source),
            );
        }
        match self.set_inner(key, value, &DEFAULT_OPTIONS, &[]).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(cache = %self.inner.name, error = %e, "cache update after a write-through failed; invalidating the key");
                let _ = self.invalidate(key).await;
                Err(e)
            }
        }
    }

    /// Like [`Cache::set`] with a per-call L2 TTL (L1 uses the smaller of it and `l1_ttl`).
    pub async fn set_with_ttl(&self, key: &str, value: V, ttl: Duration) -> Result<()> {
        if ttl.is_zero() {
            return Err(Error::new(ErrorKind::InvalidConfig, "ttl must be positive"));
        }
        let options = CallOptions::new().with_l2_ttl(ttl);
        self.set_inner(key, Arc::new(value), &options, &[]).await
    }

    /// [`Cache::set`] with per-call options ([`CallOptions::check_write`] refuses
    /// contradictions with an [`ErrorKind::InvalidConfig`] error before anything changes):
    ///
    /// - TTLs: this entry's L1 and L2 TTLs.
    /// - `skip_l1_write`: this instance's L1 drops its copy instead of holding the value.
    /// - `skip_l2_write`: L2 drops the key instead of holding the value (no instance reads
    ///   an older value there); this instance's L1 holds the value.
    /// - `background_l2_write`: the call returns once L1 holds the value; the L2 write, then
    ///   the invalidation of the other instances, follow in a background task, in call order
    ///   per key (a later `set` or `invalidate` of the key on this engine waits for them).
    ///   A failed background write goes to auto-recovery like a failed `set` (it is not
    ///   returned: the call has returned); a full queue makes the call wait for its write
    ///   ([`crate::EngineBuilder::with_background_writes`]). Until the write lands, other
    ///   instances read the older value, and so does this one if its L1 copy is evicted.
    ///   [`crate::Engine::shutdown`] finishes the queued writes.
    pub async fn set_with(&self, key: &str, value: V, options: &CallOptions) -> Result<()> {
        options.check_write(&self.inner.config)?;
        self.set_inner(key, Arc::new(value), options, &[]).await
    }

    pub(super) async fn set_inner(
        &self,
        key: &str,
        value: Arc<V>,
        options: &CallOptions,
        tags: &[String],
    ) -> Result<()> {
        let full = self.inner.keys.full(key)?;
        let inner = &self.inner;
        let prepared =
            inner.prepare(Some(value), Duration::ZERO, options.l1_ttl, options.l2_ttl)?;
        let write_l2 = !options.skip_l2_write;
        if let (Some(l2), Some(bytes), true) = (inner.engine.remote(), &prepared.bytes, write_l2) {
            check_value_size(&full, bytes.len(), l2.max_value_size())?;
        }
        // Writes of a key on this engine land in call order: after its background ones.
        inner.engine.background().settled(&full).await;
        inner.observer.on_event(CacheEvent::Set);
        inner.bump_epoch(key);
        if options.background_l2_write && inner.engine.remote().is_some() {
            let epoch = inner.epoch(key);
            inner.keep_in_l1(key, options, &prepared);
            let cache = self.clone();
            let owned_key = key.to_owned();
            let owned_full = full.clone();
            let tags = tags.to_vec();
            let keep = !options.skip_l1_write;
            let job = crate::background::Background::job(full.clone(), async move {
                cache
                    .finish_background(&owned_key, &owned_full, prepared, &tags, epoch, keep)
                    .await;
            });
            match inner.engine.background().push(job) {
                Ok(()) => return Ok(()),
                // The queue is full (or stopped): write in the foreground, as `set` does.
                Err(job) => {
                    job.run().await;
                    return Ok(());
                }
            }
        }
        let result = if write_l2 {
            self.l2_store(key, &full, &prepared, tags).await
        } else {
            self.l2_remove(key, full).await
        };
        // A load or read that began while L2 was being written must not fill L1 after us.
        inner.bump_epoch(key);
        inner.keep_in_l1(key, options, &prepared);
        inner.announce(key);
        result
    }

    /// The L2 part of a background write, then what `set` does after it: L1 again (a read
    /// that found the older L2 value meanwhile must not keep it), and the announcement.
    pub(super) async fn finish_background(
        &self,
        key: &str,
        full: &str,
        prepared: Prepared<V>,
        tags: &[String],
        epoch: u64,
        keep: bool,
    ) {
        let inner = &self.inner;
        if let Err(e) = self.l2_store(key, full, &prepared, tags).await {
            tracing::warn!(cache = %inner.name, error = %e, "background L2 write failed");
        }
        if inner.epoch(key) == epoch {
            inner.bump_epoch(key);
            if keep {
                let entry = inner.entry_of(prepared.value.clone(), &prepared);
                inner.engine.l1().insert(inner.ns, key, entry);
            }
        } else {
            // Dropped or flushed meanwhile (an invalidation from another instance): what L1
            // holds now may be older than L2; drop it.
            inner.state.drop_key(key);
        }
        inner.announce(key);
    }

    /// Write a prepared value to L2 (after removing the key's fill lease, so a load in flight
    /// elsewhere cannot overwrite it) and record its tags. A transient failure is queued for
    /// auto-recovery (as a delete) and counts as done.
    pub(super) async fn l2_store(
        &self,
        key: &str,
        full: &str,
        prepared: &Prepared<V>,
        tags: &[String],
    ) -> Result<()> {
        let inner = &self.inner;
        let (Some(l2), Some(bytes)) = (inner.engine.remote(), prepared.bytes.clone()) else {
            return Ok(());
        };
        let lease = inner.fill_lease_key(full);
        let tag_keys: Vec<String> = tags
            .iter()
            .map(|t| crate::key::tag_key(inner.engine.prefix(), &inner.name, t))
            .collect();
        // Remove the fill lease first: a load in flight elsewhere must not overwrite us. Both
        // in one round trip where the backend can.
        let start = inner.observe.then(Instant::now);
        let mut written = match &lease {
            Some(lk) => l2.set_after_delete(lk, full, bytes, prepared.l2_ttl).await,
            None => l2.set(full, bytes, prepared.l2_ttl).await,
        };
        if written.is_ok() {
            inner.l2_written(start, 1);
        }
        for tag_key in &tag_keys {
            if written.is_err() {
                break;
            }
            written = l2.tag_add(tag_key, full, prepared.l2_ttl).await;
        }
        match written {
            Ok(()) => {
                inner.engine.recovered(full);
                Ok(())
            }
            Err(e) => {
                inner.l2_failed(L2Op::Set, &e);
                // The failed write is settled by a delete when L2 is back: another instance
                // may write the key meanwhile, and only a delete is right in any order.
                inner.queue_or_fail(
                    e,
                    key,
                    full.to_owned(),
                    Replay::delete(lease.into_iter().collect(), tag_keys, prepared.l2_ttl),
                )
            }
        }
    }

    /// Delete a key (and its fill lease) from L2; a transient failure is queued for
    /// auto-recovery and counts as done.
    pub(super) async fn l2_remove(&self, key: &str, full: String) -> Result<()> {
        let inner = &self.inner;
        let Some(l2) = inner.engine.remote() else {
            return Ok(());
        };
        let mut keys = vec![full];
        keys.extend(inner.fill_lease_key(&keys[0]));
        match l2.delete(&keys).await {
            Ok(()) => {
                inner.engine.recovered(&keys[0]);
                Ok(())
            }
            Err(e) => {
                inner.l2_failed(L2Op::Delete, &e);
                let full = keys.remove(0);
                inner.queue_or_fail(
                    e,
                    key,
                    full,
                    Replay::delete(keys, Vec::new(), Duration::ZERO),
                )
            }
        }
    }

    /// Drop a key from both tiers and from every other instance's L1 (bus). L1 is dropped
    /// first, then L2, then the invalidation is published. If L2 fails, the delete is queued
    /// for replay (auto-recovery), or returned as an error when auto-recovery is off.
    pub async fn invalidate(&self, key: &str) -> Result<()> {
        use tracing::Instrument;
        let span = self.inner.span(SpanKind::Invalidate, key);
        self.invalidate_inner(key).instrument(span).await
    }

    pub(super) async fn invalidate_inner(&self, key: &str) -> Result<()> {
        let full = self.inner.keys.full(key)?;
        self.inner.engine.background().settled(&full).await;
        self.inner.bump_epoch(key);
        self.inner.engine.l1().remove(self.inner.ns, key);
        self.inner.observer.on_event(CacheEvent::Invalidate);
        let result = self.l2_remove(key, full).await;
        // A read on this instance while the delete was in flight may have found the old value
        // in L2 and cached it under the already bumped epoch: drop it again.
        self.inner.state.drop_key(key);
        // Announced only once L2 no longer holds the key: another instance that drops its
        // copy on this message and reads L2 at once must not find the old value there (and
        // cache it again). When the delete failed, the message still goes out: the others'
        // copies are no newer than L2's, and the replay announces again.
        self.inner.announce(key);
        result
    }

    /// Drop a key from this process' L1 only.
    pub fn invalidate_local(&self, key: &str) {
        self.inner.bump_epoch(key);
        self.inner.engine.l1().remove(self.inner.ns, key);
    }

    /// Drop every entry of this namespace from this process' L1.
    pub fn clear_local(&self) {
        self.inner.flush_local();
    }

    /// Clear the namespace everywhere: this process' L1, every other instance's L1 (through
    /// the bus) and L2 (every key under the namespace's base, deleted in batches with SCAN;
    /// values written while the clear runs may survive). Returns the number of L2 keys deleted.
    ///
    /// The engine's fill leases are deleted first (those of every namespace: a lease key does
    /// not always show its namespace), so a load that began before the clear cannot store its
    /// value after it; a load in another namespace then merely skips its L2 write once.
    pub async fn clear_namespace(&self) -> Result<u64> {
        let inner = &self.inner;
        inner.need(Capabilities::PREFIX_DELETE)?;
        inner
            .engine
            .inner
            .background
            .settled_prefix(inner.keys.base())
            .await;
        inner.flush_local();
        inner.announce_clear();
        let deleted = match inner.engine.remote() {
            Some(l2) => {
                let leases = format!("{}:__lease:", inner.engine.prefix());
                let result = match l2.delete_prefix(&leases).await {
                    Ok(_) => l2.delete_prefix(inner.keys.base()).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(n) => n,
                    Err(e) => {
                        inner.l2_failed(L2Op::Delete, &e);
                        return Err(e);
                    }
                }
            }
            None => 0,
        };
        // Entries filled from L2 while the delete ran may be old: flush once more, here and
        // (a second message) on every other instance.
        inner.flush_local();
        inner.announce_clear();
        Ok(deleted)
    }
}

impl<V, C> CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Store a written value in L1, or (`skip_l1_write`) drop this instance's older copy.
    /// Unconditionally: the write's value is the newest this instance knows. (Not through
    /// [`Self::insert_if`]: the epochs are striped, so a write of any key sharing the stripe
    /// would drop it; `cache-writebehind`'s `ten_thousand_writes_then_shutdown_lose_nothing_and_keep_order`
    /// caught that, failing about one run in two.)
    pub(super) fn keep_in_l1(&self, key: &str, options: &CallOptions, prepared: &Prepared<V>) {
        if options.skip_l1_write {
            self.engine.l1().remove(self.ns, key);
            return;
        }
        let entry = self.entry_of(prepared.value.clone(), prepared);
        self.engine.l1().insert(self.ns, key, entry);
    }

    /// After a failed L2 write or delete of `key` (`full`): an outage is queued for replay
    /// (`replay`, announced when done) and counts as done — L1 holds the right state, L2
    /// settles when it is back; a refusal (NOPERM, oversize) would be refused again, so it
    /// is returned, as it is when auto-recovery is off.
    pub(super) fn queue_or_fail(
        &self,
        e: Error,
        key: &str,
        full: String,
        replay: Replay,
    ) -> Result<()> {
        let queued = e.is_transient()
            && self.engine.queue_recovery(
                full,
                replay,
                Some((self.channel.clone(), key.to_owned())),
            );
        if queued {
            bump(&self.stats.queued_for_recovery);
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Tell other instances that `key` changed (batched by the bus).
    pub(super) fn announce(&self, key: &str) {
        if let Some(bus) = self.engine.bus() {
            bus.publish_keys(&self.channel, vec![key.to_owned()]);
            self.observer
                .on_event(CacheEvent::InvalidationsSent { keys: 1 });
        }
    }

    /// Tell other instances to drop this whole namespace from their L1.
    pub(super) fn announce_clear(&self) {
        if let Some(bus) = self.engine.bus() {
            bus.publish_clear(&self.channel);
            self.observer
                .on_event(CacheEvent::InvalidationsSent { keys: 1 });
        }
    }
}
