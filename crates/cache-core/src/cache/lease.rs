//! Fill leases across instances: take, wait for the holder, give back.

use super::*;

impl<V, C> CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    pub(super) fn lease_key(&self, full: &str) -> Option<String> {
        lease_key(self.engine.prefix(), full)
    }

    /// The fill lease key of `full` when this cache uses leases (what every write deletes).
    pub(super) fn fill_lease_key(&self, full: &str) -> Option<String> {
        self.config.leases.then(|| self.lease_key(full)).flatten()
    }

    /// Take the fill lease for `full`. With no value at hand and the lease busy, wait up to
    /// `lease_wait` for the holder's value (`Err(found)` when it arrives).
    pub(super) async fn take_lease(
        &self,
        key: &str,
        full: &str,
        have_value: bool,
        epoch: u64,
    ) -> std::result::Result<Fill, Option<Arc<V>>> {
        let epochs = HashMap::from([(key.to_owned(), epoch)]);
        let (mut fills, mut delivered) = self
            .take_leases(vec![(key.to_owned(), full.to_owned())], &epochs, have_value)
            .await;
        if let Some((_, value)) = delivered.pop() {
            return Err(value);
        }
        // One key in, one fill out; never an unconditional write if that ever failed.
        Ok(fills.pop().map_or(Fill::LocalOnly, |(_, _, fill)| fill))
    }

    /// Take the fill leases of one or many keys: one batched `SET NX`; keys whose lease
    /// another instance holds are skipped when the caller has a value at hand
    /// (`have_value`, an early refresh), else polled (one batched read per round) for up to
    /// `lease_wait`, then taken over, or loaded without writing. Returns the fills, and the
    /// values other instances delivered meanwhile.
    #[allow(clippy::type_complexity)]
    pub(super) async fn take_leases(
        &self,
        keys: Vec<(String, String)>,
        epochs: &HashMap<String, u64>,
        have_value: bool,
    ) -> (Vec<(String, String, Fill)>, Vec<(String, Option<Arc<V>>)>) {
        let mut fills = Vec::with_capacity(keys.len());
        let mut delivered = Vec::new();
        let Some(l2) = self.engine.remote().filter(|_| self.config.leases) else {
            fills.extend(keys.into_iter().map(|(k, f)| (k, f, Fill::Plain)));
            return (fills, delivered);
        };
        let mut leased = Vec::with_capacity(keys.len());
        for (k, full) in keys {
            match self.lease_key(&full) {
                Some(lk) => leased.push((k, full, lk)),
                None => fills.push((k, full, Fill::Plain)),
            }
        }
        if leased.is_empty() {
            return (fills, delivered);
        }
        let token = lease_token();
        let ttl = self.config.lease_ttl;
        let lease_keys: Vec<String> = leased.iter().map(|(_, _, lk)| lk.clone()).collect();
        let mut busy = Vec::new();
        match l2.set_nx_many(&lease_keys, &token, ttl).await {
            Ok(taken) => {
                for ((k, full, lk), ok) in leased.into_iter().zip(taken) {
                    if ok {
                        self.observer.on_event(CacheEvent::LeaseAcquired);
                        fills.push((k, full, Fill::Lease(lk, token.clone())));
                    } else {
                        busy.push((k, full, lk));
                    }
                }
            }
            Err(e) => {
                self.l2_failed(L2Op::Lease, &e);
                fills.extend(leased.into_iter().map(|(k, f, _)| (k, f, Fill::LocalOnly)));
                return (fills, delivered);
            }
        }
        if have_value {
            fills.extend(busy.into_iter().map(|(k, f, _)| (k, f, Fill::Skip)));
            return (fills, delivered);
        }
        if busy.is_empty() {
            return (fills, delivered);
        }
        bump(&self.stats.lease_waits);
        self.observer.on_event(CacheEvent::LeaseWait);
        let deadline = Instant::now() + self.config.lease_wait;
        let mut pause = Duration::from_millis(1);
        while !busy.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
            pause = (pause * 2).min(Duration::from_millis(10));
            let fulls: Vec<String> = busy.iter().map(|(_, f, _)| f.clone()).collect();
            let start = Instant::now();
            match l2.get_many(&fulls).await {
                Ok(answers) => {
                    let mut still = Vec::with_capacity(busy.len());
                    for ((k, full, lk), a) in busy.into_iter().zip(answers) {
                        // Only a value counts: a poll that finds nothing yet is no L2 miss.
                        let found = a.and_then(|bytes| {
                            let epoch = epochs.get(&k).copied().unwrap_or(0);
                            self.accept_l2(&k, Some(bytes), start.elapsed(), epoch)
                        });
                        match found {
                            Some(found) if !found.stale => delivered.push((k, found.value)),
                            _ => still.push((k, full, lk)),
                        }
                    }
                    busy = still;
                }
                // Keep waiting: the holders may still deliver.
                Err(e) => self.l2_failed(L2Op::Get, &e),
            }
        }
        if busy.is_empty() {
            return (fills, delivered);
        }
        // The holders did not deliver in time: take their leases over, else load without
        // writing (we cannot prove our values are not stale).
        let lease_keys: Vec<String> = busy.iter().map(|(_, _, lk)| lk.clone()).collect();
        match l2.set_nx_many(&lease_keys, &token, ttl).await {
            Ok(taken) => {
                for ((k, full, lk), ok) in busy.into_iter().zip(taken) {
                    let fill = if ok {
                        Fill::Lease(lk, token.clone())
                    } else {
                        Fill::Skip
                    };
                    fills.push((k, full, fill));
                }
            }
            Err(e) => {
                self.l2_failed(L2Op::Lease, &e);
                fills.extend(busy.into_iter().map(|(k, f, _)| (k, f, Fill::LocalOnly)));
            }
        }
        (fills, delivered)
    }

    /// Give a lease back early (after a failed load), only if it is still ours.
    pub(super) async fn release_lease(&self, lease_key: &str, token: &[u8]) {
        if let Some(l2) = self.engine.remote() {
            // A compare-and-set of an empty marker that expires at once frees the lease
            // without touching another holder's.
            let _ = l2
                .set_if_lease(
                    lease_key,
                    token,
                    lease_key,
                    Vec::new(),
                    Duration::from_millis(1),
                )
                .await;
        }
    }
}

/// A fresh lease token: 128 random bits, hex.
pub(super) fn lease_token() -> Vec<u8> {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)).into_bytes()
}
