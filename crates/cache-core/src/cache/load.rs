//! Loads of one key: single flight, the caller's bounded wait, early refresh, and the leader's work (L2, lease, loader, both tiers).

use super::*;

impl<V, C> Cache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Read through both tiers; on a full miss run `loader` once for all concurrent callers
    /// of this key in this process, store its value in L2 and L1, and return it.
    ///
    /// The load runs in its own task: dropping this future does not cancel it, and other
    /// callers waiting for it still get the value. A loader error reaches every waiter; a
    /// panicking loader becomes an [`ErrorKind::LoaderPanicked`] error. If the key is held as
    /// a negative entry, the result is an [`ErrorKind::NotFound`] error.
    ///
    /// An L1 hit is answered when the future is made (ready at its first poll, no
    /// allocation); only a miss builds the (boxed) rest of the read.
    pub fn get_or_load<'a, F, Fut, E>(
        &'a self,
        key: &'a str,
        loader: F,
    ) -> impl Future<Output = Result<Arc<V>>> + Send + 'a
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let present = |found: Option<Arc<V>>| {
            found.ok_or_else(|| {
                Error::new(ErrorKind::NotFound, "the source has no value for this key")
            })
        };
        let loader = move |ctx: LoadContext<V>| async move {
            loader(ctx.into_key()).await.map(Loaded::value)
        };
        match self.load_local(key, &DEFAULT_OPTIONS, loader) {
            Local::Hit(found) => Fast::Ready(Some(found.and_then(present))),
            Local::Miss { loader, stale } => Fast::Boxed(Box::pin(async move {
                self.load_remote(key, &DEFAULT_OPTIONS, loader, stale)
                    .await
                    .and_then(present)
            })),
        }
    }

    /// Like [`Cache::get_or_load`], for loaders that can answer "absent" (`Ok(None)`): the
    /// absence is cached for `negative_ttl` (negative caching).
    pub async fn get_or_load_optional<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let loader = move |ctx: LoadContext<V>| async move {
            loader(ctx.into_key()).await.map(Loaded::from)
        };
        self.load_inner(key, &DEFAULT_OPTIONS, loader).await
    }

    /// Like [`Cache::get_or_load`] with a per-call L2 TTL (L1 uses the smaller of it and
    /// `l1_ttl`).
    pub async fn get_or_load_with_ttl<F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        loader: F,
    ) -> Result<Arc<V>>
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let options = CallOptions::new().with_l2_ttl(ttl);
        let loader = move |ctx: LoadContext<V>| async move {
            loader(ctx.into_key()).await.map(Loaded::value)
        };
        let found = self.get_or_load_with(key, &options, loader).await?;
        found.ok_or_else(|| Error::new(ErrorKind::NotFound, "the source has no value for this key"))
    }

    /// The most general load: read through both tiers (as `options` allow); on a miss run
    /// `loader` once for all concurrent callers of this key in this engine, and cache what it
    /// answers as it says. `Ok(None)`: the source has no value ([`Loaded::absent`]).
    ///
    /// The loader receives a [`LoadContext`]: the key, and the value the cache holds when one
    /// is at hand (on a refresh; with fail-safe, an expired value still kept), so it can
    /// revalidate it. It answers a [`Loaded`]: a value, an absence, or
    /// [`Loaded::unchanged`] (keep the previous value, renew its TTLs), optionally with this
    /// entry's own TTLs, tags, or [`Loaded::no_cache`].
    ///
    /// `options` apply to this call ([`CallOptions::check_load`] refuses contradictions with
    /// an [`ErrorKind::InvalidConfig`] error, before anything else happens). A caller that
    /// joins a load already in flight gets that load's result, made with its starter's
    /// options.
    pub async fn get_or_load_with<F, Fut, E>(
        &self,
        key: &str,
        options: &CallOptions,
        loader: F,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        options.check_load(&self.inner.config)?;
        self.load_inner(key, options, loader).await
    }

    pub(super) async fn load_inner<F, Fut, E>(
        &self,
        key: &str,
        options: &CallOptions,
        loader: F,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        match self.load_local(key, options, loader) {
            Local::Hit(found) => found,
            Local::Miss { loader, stale } => self.load_remote(key, options, loader, stale).await,
        }
    }

    /// The L1 part of a load: a live hit (with an early refresh when the policy fires), or
    /// the loader back with any stale value kept for fail-safe.
    pub(super) fn load_local<F, Fut, E>(
        &self,
        key: &str,
        options: &CallOptions,
        loader: F,
    ) -> Local<V, F>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        if let Err(e) = crate::key::validate_key(key, self.inner.keys.max_key_len()) {
            return Local::Hit(Err(e));
        }
        let inner = &*self.inner;
        if options.skip_l1_read {
            return Local::Miss {
                loader,
                stale: None,
            };
        }
        let now = inner.engine.now_ms();
        let mut stale: Option<(Option<Arc<V>>, u64)> = None;
        match inner.engine.l1().get(inner.ns, key, now) {
            Some(entry) if entry.expires_at_ms > now && inner.is_fresh(&entry) => {
                let (refresh_at, expires_at, delta_us) =
                    (entry.refresh_at_ms, entry.expires_at_ms, entry.delta_us);
                if let Some(hit) = inner.downcast(entry) {
                    if now >= refresh_at {
                        if let Err(e) = self
                            .maybe_refresh(key, now, expires_at, delta_us, options, &hit, loader)
                        {
                            return Local::Hit(Err(e));
                        }
                    }
                    return Local::Hit(Ok(hit));
                }
            }
            Some(entry) => {
                // Expired (or flushed) but kept for fail-safe; only a fail-safe cache may
                // fall back on it.
                inner.event(CacheEvent::L1Miss);
                if inner.config.fail_safe {
                    let until = entry.stale_until_ms;
                    stale = CacheInner::<V, C>::value_of(entry).map(|v| (v, until));
                }
            }
            None => inner.event(CacheEvent::L1Miss),
        }
        Local::Miss { loader, stale }
    }

    /// The rest of a load after an L1 miss: join the flight of this key or start one, and
    /// wait for it (bounded by the loader timeouts).
    pub(super) async fn load_remote<F, Fut, E>(
        &self,
        key: &str,
        options: &CallOptions,
        loader: F,
        stale: Option<(Option<Arc<V>>, u64)>,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let full = self.inner.keys.full(key)?;
        let rx = {
            let mut map = self.inner.lock_inflight();
            match map.get(key) {
                Some(rx) => {
                    bump(&self.inner.stats.coalesced);
                    self.inner.observer.on_event(CacheEvent::Coalesced);
                    (rx.clone(), true)
                }
                None => {
                    let rx = Flight::new();
                    map.insert(key.to_owned(), rx.clone());
                    drop(map);
                    self.start_flight(
                        key,
                        rx.clone(),
                        full,
                        *options,
                        loader,
                        None,
                        stale.clone(),
                        SpanKind::Load,
                    )?;
                    (rx, false)
                }
            }
        };
        let (rx, joined) = rx;
        self.wait_bounded(rx, stale.map(|(v, _)| v), joined, options)
            .await
    }

    /// Wait for a load, bounded from the caller's side: past the soft timeout a caller holding
    /// a stale value gets it; past the hard timeout the caller gets the stale value
    /// (fail-safe) or a [`ErrorKind::Timeout`]. The load itself goes on and fills the cache.
    ///
    /// `joined`: the caller did not lead this load (its L1 miss was not followed by its own L2
    /// read); the load's result, when it reaches the caller, is reported as
    /// [`CacheEvent::CoalescedResult`].
    pub(super) async fn wait_bounded(
        &self,
        rx: Flight<V>,
        stale: Option<Option<Arc<V>>>,
        joined: bool,
        options: &CallOptions,
    ) -> Shared<V> {
        let served = |r: Shared<V>| {
            if joined {
                self.inner
                    .event(CacheEvent::CoalescedResult { ok: r.is_ok() });
            }
            r
        };
        let config = &self.inner.config;
        let started = Instant::now();
        let mut pending = std::pin::pin!(rx.wait());
        if let (Some(soft), Some(value)) = (options.soft_timeout(config), &stale) {
            match tokio::time::timeout(soft, pending.as_mut()).await {
                Ok(r) => return served(r),
                Err(_) => {
                    bump(&self.inner.stats.stale_served);
                    self.inner.observer.on_event(CacheEvent::StaleServed);
                    return Ok(value.clone());
                }
            }
        }
        match options.hard_timeout(config) {
            Some(hard) => {
                match tokio::time::timeout(hard.saturating_sub(started.elapsed()), pending).await {
                    Ok(r) => served(r),
                    Err(_) => match stale {
                        Some(value) => {
                            bump(&self.inner.stats.stale_served);
                            self.inner.observer.on_event(CacheEvent::StaleServed);
                            Ok(value)
                        }
                        None => served(Err(Error::new(
                            ErrorKind::Timeout,
                            format!("no value within the hard timeout of {hard:?}"),
                        ))),
                    },
                }
            }
            None => served(pending.await),
        }
    }

    /// On an L1 hit inside the policy's horizon: draw, and if the policy fires, refresh in the
    /// background (coalesced with any load of the key in flight) while the caller gets the
    /// current value.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn maybe_refresh<F, Fut, E>(
        &self,
        key: &str,
        now: u64,
        expires_at: u64,
        delta_us: u32,
        options: &CallOptions,
        current: &Option<Arc<V>>,
        loader: F,
    ) -> Result<()>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let inner = &self.inner;
        let remaining = Duration::from_millis(expires_at.saturating_sub(now));
        let delta = Duration::from_micros(u64::from(delta_us));
        let draw = inner.engine.random().draw();
        if !inner.policy.should_refresh(remaining, delta, draw) {
            return Ok(());
        }
        let mut map = inner.lock_inflight();
        if map.contains_key(key) {
            return Ok(());
        }
        let full = inner.keys.full(key)?;
        let tx = Flight::new();
        map.insert(key.to_owned(), tx.clone());
        drop(map);
        bump(&inner.stats.early_refreshes);
        inner.observer.on_event(CacheEvent::EarlyRefresh);
        self.start_flight(
            key,
            tx,
            full,
            *options,
            loader,
            Some((expires_at, Some(current.clone()))),
            None,
            SpanKind::Refresh,
        )
    }

    /// Reload `key` from the source in the background, whatever the tiers hold: unless a load
    /// of the key is already in flight in this engine (then `Ok(false)`: that load brings a
    /// fresh value), a task takes the fill lease (with leases on), runs `loader`, and writes
    /// the value to L2 (compare-and-set against the lease) and L1; `Ok(true)`. Callers that
    /// read the key meanwhile join that load. While another instance holds the key's lease,
    /// the refresh waits for its value instead (as a load would). A loader error leaves the
    /// cached value as it is (it is logged and counted in [`CacheStats::load_errors`]).
    ///
    /// Errors: [`ErrorKind::InvalidKey`]; [`ErrorKind::Closed`] when no tokio runtime runs.
    pub fn refresh<F, Fut, E>(&self, key: &str, loader: F) -> Result<bool>
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        self.refresh_with(key, move |ctx: LoadContext<V>| async move {
            loader(ctx.into_key()).await.map(Loaded::value)
        })
    }

    /// [`Cache::refresh`] with a loader that receives a [`LoadContext`] (holding the value L1
    /// has now, if any) and answers a [`Loaded`], as in [`Cache::get_or_load_with`]: a
    /// conditional refresh answers [`Loaded::unchanged`] when the source says the value did
    /// not change, and the value is kept with its TTLs renewed in both tiers.
    pub fn refresh_with<F, Fut, E>(&self, key: &str, loader: F) -> Result<bool>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        crate::key::validate_key(key, self.inner.keys.max_key_len())?;
        let full = self.inner.keys.full(key)?;
        // The value L1 holds now: served to a refresh whose lease another instance holds.
        let current = self.get_local(key);
        let mut map = self.inner.lock_inflight();
        if map.contains_key(key) {
            return Ok(false);
        }
        let tx = Flight::new();
        map.insert(key.to_owned(), tx.clone());
        drop(map);
        self.start_flight(
            key,
            tx,
            full,
            DEFAULT_OPTIONS,
            loader,
            Some((RELOAD, current)),
            None,
            SpanKind::Refresh,
        )?;
        Ok(true)
    }

    /// Run the flight of one key (already registered in the in-flight map with `tx`) in its
    /// own task: `fill_one`, then every waiter gets the result.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_flight<F, Fut, E>(
        &self,
        key: &str,
        tx: Flight<V>,
        full: String,
        options: CallOptions,
        loader: F,
        refresh: Option<(u64, Option<Option<Arc<V>>>)>,
        stale: Option<(Option<Arc<V>>, u64)>,
        kind: SpanKind,
    ) -> Result<()>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let guard = FlightGuard {
            inner: Arc::clone(&self.inner),
            flights: vec![(key.to_owned(), tx)],
        };
        let key = key.to_owned();
        let span = self.inner.span(kind, &key);
        spawn(span, async move {
            let result = inner
                .fill_one(key, full, options, loader, refresh, stale, &guard)
                .await;
            guard.finish(|_| result.clone()).await;
        })
    }
}

impl<V, C> CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Run the loader under the soft and hard timeouts. With a fallback at hand, passing the
    /// soft timeout hands the fallback to the waiters now while the load goes on.
    pub(super) async fn run_loader<Fut, E>(
        &self,
        fut: Fut,
        key: &str,
        fallback: Option<&Option<Arc<V>>>,
        guard: &FlightGuard<V, C>,
        options: &CallOptions,
    ) -> Result<Loaded<V>>
    where
        Fut: Future<Output = std::result::Result<Loaded<V>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let mut fut = std::pin::pin!(fut);
        if let (Some(soft), Some(fb)) = (options.soft_timeout(&self.config), fallback) {
            match tokio::time::timeout(soft, fut.as_mut()).await {
                Ok(r) => return r.map_err(|e| Error::loader(e.into())),
                Err(_) => {
                    bump(&self.stats.stale_served);
                    self.observer.on_event(CacheEvent::StaleServed);
                    tracing::info!(cache = %self.name, soft_ms = soft.as_millis() as u64, "loader past its soft timeout: serving the previous value while it finishes");
                    guard.publish_early(key, Ok(fb.clone()));
                }
            }
        }
        match options.hard_timeout(&self.config) {
            Some(hard) => {
                match tokio::time::timeout(hard.saturating_sub(started.elapsed()), fut).await {
                    Ok(r) => r.map_err(|e| Error::loader(e.into())),
                    Err(_) => Err(Error::new(
                        ErrorKind::Timeout,
                        format!("loader exceeded its hard timeout of {hard:?}"),
                    )),
                }
            }
            None => fut.await.map_err(|e| Error::loader(e.into())),
        }
    }

    /// Lead the load of one key: L2, then (with a lease) the loader, then both tiers.
    ///
    /// `refresh` is set for an early refresh of a live L1 entry: `(its expiry, its value)`.
    /// An L2 value is then taken only if it is newer than that entry. When the policy says an
    /// L2 value is due for refresh, waiters get it at once and the load continues here.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fill_one<F, Fut, E>(
        self: Arc<Self>,
        key: String,
        full: String,
        options: CallOptions,
        loader: F,
        refresh: Option<(u64, Option<Option<Arc<V>>>)>,
        mut stale: Option<(Option<Arc<V>>, u64)>,
        guard: &FlightGuard<V, C>,
    ) -> Shared<V>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Loaded<V>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let epoch = self.epoch(&key);
        let mut current: Option<Option<Arc<V>>> = refresh.as_ref().and_then(|(_, v)| v.clone());
        // The value at hand before L2 is read (an L2 hit may replace L1's entry), and its age.
        let held = current
            .clone()
            .or_else(|| stale.as_ref().map(|(v, _)| v.clone()));
        let held_age = self.age(&key, &held);
        // A load that will take the fill lease (not a refresh, which has a value at hand)
        // reads L2 and takes the lease on a miss in one step, while misses are common.
        let lease_first = (refresh.is_none()
            && !options.skip_l2_read
            && !options.skip_l2_write
            && self.misses.likely())
        .then(|| self.fill_lease_key(&full))
        .flatten();
        let fill_l1 = !options.skip_l1_write;
        let (read, leasing) = match lease_first {
            _ if options.skip_l2_read => (Ok(None), None),
            Some(lease_key) => {
                match self
                    .l2_read_or_lease(&key, &full, lease_key, epoch, fill_l1)
                    .await
                {
                    Ok((found, leasing)) => (Ok(found), leasing),
                    Err(e) => (Err(e), None),
                }
            }
            None => (self.l2_read(&key, &full, epoch, fill_l1).await, None),
        };
        let (l2_found, l2_down) = match read {
            Ok(found) => {
                if !options.skip_l2_read {
                    self.misses
                        .note(found.as_ref().is_none_or(|found| found.stale));
                }
                (found, false)
            }
            Err(e) => (None, unreachable(&e)),
        };
        let l2_found = match l2_found {
            Some(f) if f.stale => {
                if stale.is_none() {
                    stale = Some((f.value, f.stale_until_ms));
                }
                None
            }
            other => other,
        };
        if let Some(found) = l2_found {
            let newer = match (&refresh, found.l2_expires_at_ms) {
                // `Cache::refresh`: reload whatever L2 holds.
                (Some((RELOAD, _)), _) => false,
                (Some((floor, _)), Some(exp)) => exp > *floor,
                (Some(_), None) => true,
                (None, _) => true,
            };
            if newer {
                if !self.l2_refresh_due(&found) {
                    return Ok(found.value);
                }
                if refresh.is_none() {
                    bump(&self.stats.early_refreshes);
                    self.observer.on_event(CacheEvent::EarlyRefresh);
                }
                guard.publish_early(&key, Ok(found.value.clone()));
                current = Some(found.value);
            }
        }
        // L2 just failed to answer a read: a lease would wait for it again (a frozen server
        // costs a full response timeout per call). Load without one, filling L1 only. A load
        // that will not write L2 takes no lease either: other instances would wait for a
        // value that never comes.
        let fill = if l2_down || options.skip_l2_write {
            Fill::LocalOnly
        } else {
            let settled = match leasing {
                Some(leasing) => {
                    self.await_lease(&key, &full, leasing, current.is_some(), epoch)
                        .await
                }
                None => self.take_lease(&key, &full, current.is_some(), epoch).await,
            };
            match settled {
                Ok(fill) => fill,
                Err(found) => return Ok(found),
            }
        };
        if let (Fill::Skip, Some(value)) = (&fill, &current) {
            // Another instance is refreshing this key; keep serving what we have.
            return Ok(value.clone());
        }
        if current.is_none() {
            bump(&self.stats.sync_loads);
        }
        let start = Instant::now();
        let fallback: Option<Option<Arc<V>>> = current
            .clone()
            .or_else(|| stale.as_ref().map(|(v, _)| v.clone()));
        let age = if same_value(&fallback, &held) {
            held_age
        } else {
            None
        };
        let context = LoadContext::new(key.clone(), fallback.clone(), age);
        let loaded = self
            .run_loader(loader(context), &key, fallback.as_ref(), guard, &options)
            .await;
        let delta = start.elapsed();
        bump(&self.stats.loads);
        self.observer.on_event(CacheEvent::Load {
            duration: delta,
            ok: loaded.is_ok(),
        });
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                bump(&self.stats.load_errors);
                if let Fill::Lease(lk, token) = &fill {
                    self.release_lease(lk, token).await;
                }
                if let Some(value) = current {
                    // A failed refresh: the value in L1 is still fresh.
                    tracing::warn!(cache = %self.name, error = %e, "early refresh failed; keeping the current value");
                    return Ok(value);
                }
                if let Some((value, until)) = stale {
                    // Fail-safe (stale values are only kept when it is on).
                    tracing::warn!(cache = %self.name, error = %e, "loader failed; fail-safe serves the stale value");
                    self.serve_stale(&key, &value, until, epoch);
                    return Ok(value);
                }
                return Err(e);
            }
        };
        let (value, l1_ttl, l2_ttl, cache, tags) = match self.answer(loaded, fallback, &options) {
            Ok(a) => a,
            Err(e) => {
                bump(&self.stats.load_errors);
                if let Fill::Lease(lk, token) = &fill {
                    self.release_lease(lk, token).await;
                }
                return Err(e);
            }
        };
        if !cache {
            if let Fill::Lease(lk, token) = &fill {
                self.release_lease(lk, token).await;
            }
            return Ok(value);
        }
        let (prepared, bytes) = match self.store_prepare(value, delta, l1_ttl, l2_ttl) {
            Ok(p) => p,
            Err(e) => {
                if let Fill::Lease(lk, token) = &fill {
                    self.release_lease(lk, token).await;
                }
                return Err(e);
            }
        };
        // Checked again right before filling L1 (no await in between): a `set` or
        // `invalidate` that ran during the load or the write wins.
        let mut fresh = true;
        let mut stored = false;
        match (self.engine.remote(), bytes, fill) {
            (Some(l2), Some(bytes), Fill::Lease(lk, token)) => {
                let start = self.observe.then(Instant::now);
                match l2
                    .set_if_lease(&lk, &token, &full, bytes, prepared.l2_ttl)
                    .await
                {
                    Ok(true) => {
                        self.l2_written(start, 1);
                        stored = true;
                    }
                    Ok(false) => {
                        self.l2_written(start, 1);
                        fresh = false;
                    }
                    Err(e) => self.l2_failed(L2Op::Set, &e),
                }
            }
            (Some(l2), Some(bytes), Fill::Plain) => {
                let start = self.observe.then(Instant::now);
                match l2.set(&full, bytes, prepared.l2_ttl).await {
                    Ok(()) => {
                        self.l2_written(start, 1);
                        stored = true;
                    }
                    Err(e) => self.l2_failed(L2Op::Set, &e),
                }
            }
            (Some(l2), None, Fill::Lease(lk, token)) => {
                // Nothing to write (oversized or raw-mode absence): free the lease.
                let _ = l2;
                self.release_lease(&lk, &token).await;
            }
            (_, _, Fill::Skip) => fresh = false,
            _ => {}
        }
        if stored && !tags.is_empty() && !self.tag_fill(&key, &full, &tags, prepared.l2_ttl).await {
            fresh = false;
        }
        fresh = fresh && self.epoch(&key) == epoch;
        if fresh && !options.skip_l1_write {
            let entry = self.entry_of(prepared.value.clone(), &prepared);
            fresh = self.insert_if(&key, epoch, entry);
        }
        if !fresh {
            bump(&self.stats.stale_fills_refused);
            tracing::debug!(cache = %self.name, "key changed during the load; the loaded value is returned but not cached");
        }
        Ok(prepared.value)
    }

    /// What a loader's answer means: the value (the previous one for "unchanged"), its TTLs
    /// (the answer's, else the call's), whether to cache it, and its tags.
    #[allow(clippy::type_complexity)]
    pub(super) fn answer(
        &self,
        loaded: Loaded<V>,
        previous: Option<Option<Arc<V>>>,
        options: &CallOptions,
    ) -> Result<(
        Option<Arc<V>>,
        Option<Duration>,
        Option<Duration>,
        bool,
        Vec<String>,
    )> {
        let l1 = loaded.l1_ttl.or(options.l1_ttl);
        let l2 = loaded.l2_ttl.or(options.l2_ttl);
        check_ttls(l1, l2, &self.config)?;
        for t in &loaded.tags {
            crate::key::validate_key(t, 256)?;
            self.tag_keys(t)?;
        }
        let value = match loaded.outcome {
            Outcome::Value(v) => Some(Arc::new(v)),
            Outcome::Absent => None,
            Outcome::Unchanged => previous.ok_or_else(|| {
                Error::new(
                    ErrorKind::Loader,
                    "the loader answered \"unchanged\" but no previous value was at hand",
                )
            })?,
        };
        Ok((value, l1, l2, loaded.cache, loaded.tags))
    }

    /// How long ago this instance stored `previous` in L1, when that is where it came from.
    pub(super) fn age(&self, key: &str, previous: &Option<Option<Arc<V>>>) -> Option<Duration> {
        let previous = previous.as_ref()?;
        let now = self.engine.now_ms();
        let entry = self.engine.l1().get(self.ns, key, now)?;
        let same = match (&entry.value, previous) {
            (None, None) => true,
            (Some(any), Some(v)) => any
                .clone()
                .downcast::<V>()
                .is_ok_and(|held| Arc::ptr_eq(&held, v)),
            _ => false,
        };
        same.then(|| Duration::from_millis(now.saturating_sub(entry.born_ms)))
    }

    /// Store what a loader produced in both tiers and return it.
    pub(super) fn store_prepare(
        &self,
        value: Option<Arc<V>>,
        delta: Duration,
        l1: Option<Duration>,
        l2: Option<Duration>,
    ) -> Result<(Prepared<V>, Option<Vec<u8>>)> {
        let prepared = self.prepare(value, delta, l1, l2)?;
        let mut bytes = prepared.bytes.clone();
        if let (Some(l2), Some(b)) = (self.engine.remote(), &bytes) {
            if b.len() > l2.max_value_size() {
                bump(&self.stats.oversize);
                tracing::warn!(
                    cache = %self.name,
                    size = b.len(),
                    max = l2.max_value_size(),
                    "loaded value exceeds the L2 maximum size; kept in L1 only"
                );
                bytes = None;
            }
        }
        Ok((prepared, bytes))
    }

    /// Does the refresh policy say an L2 value should be reloaded now?
    pub(super) fn l2_refresh_due(&self, found: &Found<V>) -> bool {
        let Some(exp) = found.l2_expires_at_ms else {
            return false;
        };
        let now = self.engine.now_ms();
        let remaining = Duration::from_millis(exp.saturating_sub(now));
        let delta = Duration::from_micros(u64::from(found.delta_us));
        if remaining > self.policy.horizon(delta) {
            return false;
        }
        self.policy
            .should_refresh(remaining, delta, self.engine.random().draw())
    }
}
