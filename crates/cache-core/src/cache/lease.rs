//! Fill leases across instances: take, wait for the holder, give back.

use std::sync::atomic::AtomicU32;

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
        let (fills, delivered) = self
            .take_leases(vec![(key.to_owned(), full.to_owned())], &epochs, have_value)
            .await;
        one_fill(fills, delivered)
    }

    /// The first step of a load that will take the fill lease `lease_key`: read L2 and, on a
    /// miss, take the lease, in one step ([`RemoteStore::get_or_lease`]: one round trip when
    /// the read goes out alone). What the read found (as [`Self::l2_read`]) and, on a miss,
    /// the lease: ours, or another instance's to wait for (with [`Self::await_lease`]).
    pub(super) async fn l2_read_or_lease(
        &self,
        key: &str,
        full: &str,
        lease_key: String,
        epoch: u64,
        fill_l1: bool,
    ) -> Result<(Option<Found<V>>, Option<Leasing>)> {
        let Some(l2) = self.engine.remote() else {
            return Ok((None, None));
        };
        let token = lease_token();
        let start = self.observe.then(Instant::now);
        let read = l2
            .get_or_lease(full, &lease_key, &token, self.config.lease_ttl)
            .await;
        let latency = start.map_or(Duration::ZERO, |s| s.elapsed());
        // A read that must not fill L1 passes an epoch that never matches.
        let epoch = if fill_l1 { epoch } else { u64::MAX };
        match read {
            Ok(LeaseRead::Value(bytes)) => {
                Ok((self.accept_l2(key, Some(bytes), latency, epoch), None))
            }
            Ok(LeaseRead::Leased) => {
                self.accept_l2(key, None, latency, epoch);
                self.observer.on_event(CacheEvent::LeaseAcquired);
                Ok((None, Some(Leasing::Taken(lease_key, token))))
            }
            Ok(LeaseRead::Busy) => {
                self.accept_l2(key, None, latency, epoch);
                Ok((None, Some(Leasing::Busy(lease_key, token))))
            }
            Err(e) => {
                self.l2_failed(L2Op::Get, &e);
                Err(e)
            }
        }
    }

    /// The fill of a load whose first step found the lease: ours, or another instance's,
    /// waited for as [`Self::take_lease`] does (`Err(found)`: its value arrived).
    pub(super) async fn await_lease(
        &self,
        key: &str,
        full: &str,
        leasing: Leasing,
        have_value: bool,
        epoch: u64,
    ) -> std::result::Result<Fill, Option<Arc<V>>> {
        match leasing {
            Leasing::Taken(lease_key, token) => Ok(Fill::Lease(lease_key, token)),
            Leasing::Busy(lease_key, token) => {
                let epochs = HashMap::from([(key.to_owned(), epoch)]);
                let busy = vec![(key.to_owned(), full.to_owned(), lease_key)];
                let (fills, delivered) = self.await_holders(busy, token, &epochs, have_value).await;
                one_fill(fills, delivered)
            }
        }
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
        let delivered = Vec::new();
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
        let (more, delivered) = self.await_holders(busy, token, epochs, have_value).await;
        fills.extend(more);
        (fills, delivered)
    }

    /// Keys whose lease (`token` was refused) another instance holds: skipped when the
    /// caller has a value at hand (`have_value`), else polled (one batched read per round)
    /// for up to `lease_wait`, then taken over, or loaded without writing. Returns their
    /// fills, and the values the holders delivered meanwhile.
    #[allow(clippy::type_complexity)]
    pub(super) async fn await_holders(
        &self,
        mut busy: Vec<(String, String, String)>,
        token: Vec<u8>,
        epochs: &HashMap<String, u64>,
        have_value: bool,
    ) -> (Vec<(String, String, Fill)>, Vec<(String, Option<Arc<V>>)>) {
        let mut fills = Vec::with_capacity(busy.len());
        let mut delivered = Vec::new();
        let Some(l2) = self.engine.remote() else {
            fills.extend(busy.into_iter().map(|(k, f, _)| (k, f, Fill::LocalOnly)));
            return (fills, delivered);
        };
        let ttl = self.config.lease_ttl;
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

/// How often a load's first step has found nothing in L2 lately, to choose how it reads:
/// [`RemoteStore::get_or_lease`] (a script: one round trip fewer on a miss, a few
/// microseconds more on a hit) while misses are common, a plain (batched) `GET` while hits
/// are. An average over the last ~16 first steps, in 1/1024ths.
pub(super) struct MissShare(AtomicU32);

impl MissShare {
    /// A quarter: misses at least this common make the script worth its cost on hits.
    const THRESHOLD: u32 = 256;

    /// Starts at one half: the first loads take the lease in their first step.
    pub(super) fn new() -> Self {
        MissShare(AtomicU32::new(512))
    }

    /// Whether misses are common enough to read with [`RemoteStore::get_or_lease`].
    pub(super) fn likely(&self) -> bool {
        self.0.load(Ordering::Relaxed) >= Self::THRESHOLD
    }

    /// Count one first step. Racing updates may lose one: it is an estimate.
    pub(super) fn note(&self, missed: bool) {
        let old = self.0.load(Ordering::Relaxed);
        let new = old - old / 16 + if missed { 64 } else { 0 };
        self.0.store(new, Ordering::Relaxed);
    }
}

/// The lease a load's first step found on an L2 miss (see
/// [`CacheInner::l2_read_or_lease`]): `(lease key, token)`.
pub(super) enum Leasing {
    /// Taken: the lease holds our token.
    Taken(String, Vec<u8>),
    /// Another instance holds it; our token, for a takeover.
    Busy(String, Vec<u8>),
}

/// The fill of a one-key lease step: the holder's delivered value (`Err`), else the key's
/// fill; never an unconditional write if that ever failed.
fn one_fill<V>(
    mut fills: Vec<(String, String, Fill)>,
    mut delivered: Vec<(String, Option<Arc<V>>)>,
) -> std::result::Result<Fill, Option<Arc<V>>> {
    if let Some((_, value)) = delivered.pop() {
        return Err(value);
    }
    Ok(fills.pop().map_or(Fill::LocalOnly, |(_, _, fill)| fill))
}

/// A fresh lease token: 128 random bits, hex.
pub(super) fn lease_token() -> Vec<u8> {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::MissShare;

    #[test]
    fn the_script_is_chosen_while_misses_are_common() {
        let share = MissShare::new();
        assert!(
            share.likely(),
            "the first loads take the lease in their first step"
        );
        for _ in 0..11 {
            share.note(false);
        }
        assert!(!share.likely(), "after a run of hits, a plain GET");
        for _ in 0..4 {
            share.note(true);
        }
        assert!(share.likely(), "a few misses bring the script back");
        // One miss in eight stays below the threshold; one in three stays above.
        for (every, likely) in [(8, false), (3, true)] {
            for i in 0..400 {
                share.note(i % every == 0);
            }
            assert_eq!(share.likely(), likely, "one miss in {every}");
        }
    }
}
