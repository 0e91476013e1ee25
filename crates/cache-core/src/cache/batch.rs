//! Batch loads (`get_many_or_load`): one L2 round trip, leases per key, one loader call.

use super::*;

impl<V, C> Cache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Read many keys through both tiers; keys missing from both are loaded with one call of
    /// `loader`, which receives them all and returns the values it found (keys it leaves out
    /// are cached as absent). Keys already being loaded by another caller are joined, not
    /// loaded again. The result is aligned with `keys`.
    pub async fn get_many_or_load<K, F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<Option<Arc<V>>>>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        // Every key is checked before any is registered in flight: a bad key leaves nothing
        // behind.
        for k in keys {
            crate::key::validate_key(k.as_ref(), self.inner.keys.max_key_len())?;
        }
        let mut out: Vec<Option<Arc<V>>> = Vec::with_capacity(keys.len());
        // (index, flight, joined: not led by this call's first occurrence of the key)
        let mut waits: Vec<(usize, Flight<V>, bool)> = Vec::new();
        let mut led: Vec<(String, Flight<V>)> = Vec::new();
        let mut stale: HashMap<String, (Option<Arc<V>>, u64)> = HashMap::new();
        {
            let mut map = self.inner.lock_inflight();
            for (i, k) in keys.iter().enumerate() {
                let k = k.as_ref();
                if let Some(hit) = self.get_local(k) {
                    out.push(hit);
                    continue;
                }
                out.push(None);
                if let Some(kept) = self.inner.local_stale(k) {
                    stale.insert(k.to_owned(), kept);
                }
                match map.get(k) {
                    Some(rx) => {
                        if !led.iter().any(|(l, _)| l == k) {
                            bump(&self.inner.stats.coalesced);
                            self.inner.observer.on_event(CacheEvent::Coalesced);
                        }
                        waits.push((i, rx.clone(), true));
                    }
                    None => {
                        let rx = Flight::new();
                        map.insert(k.to_owned(), rx.clone());
                        led.push((k.to_owned(), rx.clone()));
                        waits.push((i, rx, false));
                    }
                }
            }
        }
        if !led.is_empty() {
            let inner = Arc::clone(&self.inner);
            let keys: Vec<String> = led.iter().map(|(k, _)| k.clone()).collect();
            let guard = FlightGuard {
                inner: Arc::clone(&self.inner),
                flights: led,
            };
            let span = tracing::debug_span!("cache.load_many", cache = %self.inner.name, keys = keys.len());
            let kept = stale.clone();
            spawn(span, async move {
                let results = inner.fill_many(keys, loader, kept).await;
                guard
                    .finish(|k| {
                        results.get(k).cloned().unwrap_or_else(|| {
                            Err(Error::new(ErrorKind::Closed, "batch load lost a key"))
                        })
                    })
                    .await;
            })?;
        }
        let results = futures::future::join_all(waits.into_iter().map(|(i, rx, joined)| {
            let kept = keys
                .get(i)
                .and_then(|k| stale.get(k.as_ref()))
                .map(|(v, _)| v.clone());
            async move {
                (
                    i,
                    self.wait_bounded(rx, kept, joined, &DEFAULT_OPTIONS).await,
                )
            }
        }))
        .await;
        for (i, r) in results {
            out[i] = r?;
        }
        Ok(out)
    }
}

impl<V, C> CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Lead the load of many keys: one L2 round trip, a lease per missing key (waiting for
    /// another instance's fill like a single-key load), one loader call for the keys left,
    /// under the hard loader timeout, with fail-safe fallbacks; then both tiers, each fill
    /// compare-and-set against its lease.
    pub(super) async fn fill_many<F, Fut, E>(
        self: Arc<Self>,
        keys: Vec<String>,
        loader: F,
        mut stale: HashMap<String, (Option<Arc<V>>, u64)>,
    ) -> HashMap<String, Shared<V>>
    where
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let mut results: HashMap<String, Shared<V>> = HashMap::with_capacity(keys.len());
        let epochs: HashMap<String, u64> =
            keys.iter().map(|k| (k.clone(), self.epoch(k))).collect();
        let epoch_of = |k: &str| epochs.get(k).copied().unwrap_or(0);
        let (found, l2_down) = match self.l2_read_many(keys.clone()).await {
            Ok(found) => (found, false),
            Err(e) => (keys.iter().map(|_| None).collect(), unreachable(&e)),
        };
        let mut missing = Vec::new();
        for (k, f) in keys.into_iter().zip(found) {
            match f {
                Some(f) if !f.stale => {
                    results.insert(k, Ok(f.value));
                }
                Some(f) => {
                    if self.config.fail_safe {
                        stale
                            .entry(k.clone())
                            .or_insert((f.value, f.stale_until_ms));
                    }
                    missing.push(k);
                }
                None => missing.push(k),
            }
        }
        if missing.is_empty() {
            return results;
        }
        // A lease per key, in one batch; keys another instance is filling are waited for.
        let mut to_load: Vec<(String, String, Fill)> = Vec::new();
        let mut named = Vec::with_capacity(missing.len());
        for k in missing {
            match self.keys.full(&k) {
                Ok(full) => named.push((k, full)),
                Err(e) => {
                    results.insert(k, Err(e));
                }
            }
        }
        // As in `fill_one`: no leases right after L2 failed to answer the read.
        let (fills, delivered) = if l2_down {
            let fills = named
                .into_iter()
                .map(|(k, full)| (k, full, Fill::LocalOnly))
                .collect();
            (fills, Vec::new())
        } else {
            self.take_leases(named, &epochs, false).await
        };
        for (k, value) in delivered {
            results.insert(k, Ok(value));
        }
        to_load.extend(fills);
        if to_load.is_empty() {
            return results;
        }
        bump(&self.stats.sync_loads);
        let start = Instant::now();
        let names: Vec<String> = to_load.iter().map(|(k, _, _)| k.clone()).collect();
        let loaded = self.run_batch_loader(loader(names)).await;
        let delta = start.elapsed();
        bump(&self.stats.loads);
        self.observer.on_event(CacheEvent::Load {
            duration: delta,
            ok: loaded.is_ok(),
        });
        let mut values = match loaded {
            Ok(m) => m,
            Err(e) => {
                bump(&self.stats.load_errors);
                for (k, _, fill) in to_load {
                    if let Fill::Lease(lk, token) = &fill {
                        self.release_lease(lk, token).await;
                    }
                    match stale.remove(&k) {
                        Some((value, until)) => {
                            tracing::warn!(cache = %self.name, error = %e, "batch loader failed; fail-safe serves the stale value");
                            self.serve_stale(&k, &value, until, epoch_of(&k));
                            results.insert(k, Ok(value));
                        }
                        None => {
                            results.insert(k, Err(e.clone()));
                        }
                    }
                }
                return results;
            }
        };
        let mut fills = Vec::new();
        for (k, full, fill) in to_load {
            let v = values.remove(&k);
            match self.store_prepare(v.map(Arc::new), delta, None, None) {
                Ok((prepared, bytes)) => fills.push((k, full, fill, prepared, bytes)),
                Err(e) => {
                    if let Fill::Lease(lk, token) = &fill {
                        self.release_lease(lk, token).await;
                    }
                    results.insert(k, Err(e));
                }
            }
        }
        // Compare-and-set fills in one batch; plain ones (no leases) in one batch.
        let mut cas = Vec::new();
        let mut plain = Vec::new();
        let mut stored = vec![true; fills.len()];
        for (i, (_, full, fill, prepared, bytes)) in fills.iter_mut().enumerate() {
            match (bytes.take(), &*fill) {
                (Some(value), Fill::Lease(lk, token)) => cas.push((
                    i,
                    LeaseFill {
                        lease_key: lk.clone(),
                        token: token.clone(),
                        key: full.clone(),
                        value,
                        ttl: prepared.l2_ttl,
                    },
                )),
                (None, Fill::Lease(lk, token)) => self.release_lease(lk, token).await,
                (Some(value), Fill::Plain) => plain.push(RemoteEntry {
                    key: full.clone(),
                    value,
                    ttl: prepared.l2_ttl,
                }),
                (_, Fill::Skip) => stored[i] = false,
                _ => {}
            }
        }
        if let Some(l2) = self.engine.remote() {
            if !cas.is_empty() {
                let (at, batch): (Vec<usize>, Vec<LeaseFill>) = cas.into_iter().unzip();
                let start = self.observe.then(Instant::now);
                match l2.set_if_lease_many(batch).await {
                    Ok(answers) => {
                        self.l2_written(start, at.len());
                        for (i, ok) in at.into_iter().zip(answers) {
                            stored[i] = ok;
                        }
                    }
                    Err(e) => self.l2_failed(L2Op::Set, &e),
                }
            }
            if !plain.is_empty() {
                let n = plain.len();
                let start = self.observe.then(Instant::now);
                match l2.set_many(plain).await {
                    Ok(()) => self.l2_written(start, n),
                    Err(e) => self.l2_failed(L2Op::Set, &e),
                }
            }
        }
        let written = stored;
        for ((k, _, _, prepared, _), stored) in fills.into_iter().zip(written) {
            let entry = self.entry_of(prepared.value.clone(), &prepared);
            if !(stored && self.insert_if(&k, epoch_of(&k), entry)) {
                bump(&self.stats.stale_fills_refused);
            }
            results.insert(k, Ok(prepared.value));
        }
        results
    }

    /// Run a batch loader under the hard loader timeout.
    pub(super) async fn run_batch_loader<Fut, E>(&self, fut: Fut) -> Result<HashMap<String, V>>
    where
        Fut: Future<Output = std::result::Result<HashMap<String, V>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.config.loader_hard_timeout {
            Some(hard) => match tokio::time::timeout(hard, fut).await {
                Ok(r) => r.map_err(|e| Error::loader(e.into())),
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!("batch loader exceeded its hard timeout of {hard:?}"),
                )),
            },
            None => fut.await.map_err(|e| Error::loader(e.into())),
        }
    }
}
