//! The L2 contract: an async bytes-in / bytes-out store shared by every instance.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::error::{Error, ErrorKind, Result};

/// One entry of a batched write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEntry {
    /// Full key.
    pub key: String,
    /// Encoded bytes (header + payload, or a raw payload).
    pub value: Vec<u8>,
    /// Time to live in the store.
    pub ttl: Duration,
}

/// One compare-and-set fill of a batch (see [`RemoteStore::set_if_lease`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFill {
    /// The lease key, in the value key's hash slot.
    pub lease_key: String,
    /// The token the lease must still hold.
    pub token: Vec<u8>,
    /// The value's full key.
    pub key: String,
    /// Encoded bytes.
    pub value: Vec<u8>,
    /// Time to live of the value.
    pub ttl: Duration,
}

/// What [`RemoteStore::get_or_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRead {
    /// The key holds these bytes; no lease was asked for.
    Value(Vec<u8>),
    /// The key held nothing and the lease is now the caller's (its token stored).
    Leased,
    /// The key held nothing and someone else holds the lease.
    Busy,
}

/// The refusal of a store asked for an ability it does not have.
pub fn unsupported(kind: &str, needed: Capabilities) -> Error {
    Error::new(
        ErrorKind::InvalidConfig,
        format!("the {kind} store does not support {needed}"),
    )
}

/// The shared remote tier (Redis, Redis Cluster, or the in-memory store for tests).
///
/// Every method is bounded in time by the implementation (a response timeout). Keys are full
/// keys (prefix and namespace included); implementations never rewrite them.
#[async_trait]
pub trait RemoteStore: Send + Sync + fmt::Debug + 'static {
    /// A short name for logs and metrics ("redis", "cluster", "memory").
    fn kind(&self) -> &'static str;

    /// The largest value `set` accepts, in bytes. Larger values are refused before sending.
    fn max_value_size(&self) -> usize;

    /// The optional abilities this store has (fill leases, tags, prefix delete). A cache
    /// checks them when it is built. The default is none: a store that implements
    /// [`RemoteStore::set_nx`] and [`RemoteStore::set_if_lease`], the tag methods or
    /// [`RemoteStore::delete_prefix`] says so here. A wrapping store (a layer) answers its
    /// inner store's set.
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }

    /// The value under `key`.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// The values under `keys`, in order, in as few round trips as the backend allows.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Store `value` under `key` for `ttl`.
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()>;

    /// Store many entries in as few round trips as the backend allows.
    async fn set_many(&self, entries: Vec<RemoteEntry>) -> Result<()>;

    /// Delete keys (missing keys are fine).
    async fn delete(&self, keys: &[String]) -> Result<()>;

    /// Delete `first` (a key's fill lease), then store `value` under `key` for `ttl`, in as
    /// few round trips as the backend allows (both keys are in the same hash slot): what
    /// every `set` does. The default makes the two calls one after the other; a backend
    /// overrides it to pipeline them. An error means either may or may not have happened.
    async fn set_after_delete(
        &self,
        first: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        self.delete(&[first.to_owned()]).await?;
        self.set(key, value, ttl).await
    }

    /// Store `value` under `key` only if `key` does not exist (lease acquisition). Part of
    /// [`Capabilities::LEASES`]; the default refuses.
    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        let _ = (key, value, ttl);
        Err(unsupported(self.kind(), Capabilities::LEASES))
    }

    /// Delete every key starting with `prefix` (namespace clear); returns how many. The
    /// default refuses: a store must opt in.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let _ = prefix;
        Err(unsupported(self.kind(), Capabilities::PREFIX_DELETE))
    }

    /// Add `member` to the tag index set `tag_key`, which lives at least `ttl` from now.
    async fn tag_add(&self, tag_key: &str, member: &str, ttl: Duration) -> Result<()> {
        let _ = (tag_key, member, ttl);
        Err(unsupported(self.kind(), Capabilities::TAGS))
    }

    /// Atomically move the members of the tag index set `tag_key` into `pending_key` (same
    /// hash slot; it lives at least as long as the index set did) and return every member
    /// `pending_key` now holds. The members stay there until [`RemoteStore::tag_done`]: a
    /// lost reply or a failed delete loses none, the next call returns them again.
    async fn tag_take(&self, tag_key: &str, pending_key: &str) -> Result<Vec<String>> {
        let _ = (tag_key, pending_key);
        Err(unsupported(self.kind(), Capabilities::TAGS))
    }

    /// Remove `members` (their deletes are done) from `pending_key`.
    async fn tag_done(&self, pending_key: &str, members: &[String]) -> Result<()> {
        let _ = (pending_key, members);
        Err(unsupported(self.kind(), Capabilities::TAGS))
    }

    /// Compare-and-set fill: if `lease_key` still holds `token`, delete the lease and store
    /// `value` under `key` for `ttl`, atomically; otherwise store nothing. Returns whether it
    /// stored. Both keys are in the same hash slot. Part of [`Capabilities::LEASES`]; the
    /// default refuses.
    async fn set_if_lease(
        &self,
        lease_key: &str,
        token: &[u8],
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool> {
        let _ = (lease_key, token, key, value, ttl);
        Err(unsupported(self.kind(), Capabilities::LEASES))
    }

    /// Read `key`; if it holds nothing, take its fill lease: [`RemoteStore::set_nx`] of
    /// `token` under `lease_key` (same hash slot) for `ttl`. What a load does first. The
    /// default makes the two calls one after the other; the Redis stores do both in one round
    /// trip (a script) when the read would go out alone, and read through their batched
    /// `GET`s otherwise. An error means the lease may or may not have been taken (it then
    /// expires after `ttl`). Part of [`Capabilities::LEASES`].
    async fn get_or_lease(
        &self,
        key: &str,
        lease_key: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Result<LeaseRead> {
        if let Some(bytes) = self.get(key).await? {
            return Ok(LeaseRead::Value(bytes));
        }
        Ok(if self.set_nx(lease_key, token.to_vec(), ttl).await? {
            LeaseRead::Leased
        } else {
            LeaseRead::Busy
        })
    }

    /// [`RemoteStore::set_nx`] of `value` under each of `keys` (the leases of a batch load);
    /// whether each was stored, in order. The default sends the calls concurrently; a
    /// backend overrides it to batch them into as few round trips as it can.
    async fn set_nx_many(&self, keys: &[String], value: &[u8], ttl: Duration) -> Result<Vec<bool>> {
        futures::future::join_all(keys.iter().map(|k| self.set_nx(k, value.to_vec(), ttl)))
            .await
            .into_iter()
            .collect()
    }

    /// [`RemoteStore::set_if_lease`] for each fill of a batch load; whether each stored, in
    /// order. The default sends the calls concurrently; a backend overrides it to batch them.
    async fn set_if_lease_many(&self, fills: Vec<LeaseFill>) -> Result<Vec<bool>> {
        futures::future::join_all(fills.into_iter().map(|f| async move {
            self.set_if_lease(&f.lease_key, &f.token, &f.key, f.value, f.ttl)
                .await
        }))
        .await
        .into_iter()
        .collect()
    }
}

/// Refuse a value over `max` before anything is sent.
pub fn check_value_size(key: &str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::new(
            ErrorKind::ValueTooLarge,
            format!(
                "value for key of {} bytes is {len} bytes, over the maximum of {max} bytes",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// An in-memory [`RemoteStore`] for unit tests and for running without Redis.
///
/// Not shared between processes. It can be switched "down" to simulate an outage, and counts
/// the calls it receives so tests can assert round trips.
pub struct MemoryStore {
    map: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
    tags: Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
    down: AtomicBool,
    calls: AtomicU64,
    /// Added to every call, microseconds (a slow network in tests).
    latency_us: AtomicU64,
    max_value_size: usize,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("down", &self.down.load(Ordering::Relaxed))
            .field("max_value_size", &self.max_value_size)
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with a 512 MiB value limit (Redis' own limit).
    pub fn new() -> Self {
        Self::with_max_value_size(512 * 1024 * 1024)
    }

    /// An empty store refusing values over `max` bytes.
    pub fn with_max_value_size(max: usize) -> Self {
        MemoryStore {
            map: Mutex::new(HashMap::new()),
            tags: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            max_value_size: max,
        }
    }

    /// Simulate an outage (`true`): every call fails with a connection error.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Make every call from now on take `latency` before it acts (a slow network; tests use
    /// it to widen races). `Duration::ZERO` turns it off.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_us
            .store(latency.as_micros() as u64, Ordering::SeqCst);
    }

    /// How many calls reached the store (each one is one "round trip").
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Write raw bytes, bypassing everything (tests plant corrupt values with it).
    pub fn put_raw(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        self.lock()
            .insert(key.to_owned(), (value, Instant::now() + ttl));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<u8>, Instant)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Connection, "memory store is down"));
        }
        Ok(())
    }

    /// Waits out the configured latency (nothing when it is zero).
    async fn pause(&self) {
        let us = self.latency_us.load(Ordering::SeqCst);
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }

    fn live(map: &mut HashMap<String, (Vec<u8>, Instant)>, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        match map.get(key) {
            Some((v, exp)) if *exp > now => Some(v.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }
}

#[async_trait]
impl RemoteStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn max_value_size(&self) -> usize {
        self.max_value_size
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.enter()?;
        self.pause().await;
        Ok(Self::live(&mut self.lock(), key))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.enter()?;
        self.pause().await;
        let mut map = self.lock();
        Ok(keys.iter().map(|k| Self::live(&mut map, k)).collect())
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        check_value_size(key, value.len(), self.max_value_size)?;
        self.enter()?;
        self.pause().await;
        self.lock()
            .insert(key.to_owned(), (value, Instant::now() + ttl));
        Ok(())
    }

    async fn set_many(&self, entries: Vec<RemoteEntry>) -> Result<()> {
        for e in &entries {
            check_value_size(&e.key, e.value.len(), self.max_value_size)?;
        }
        self.enter()?;
        self.pause().await;
        let now = Instant::now();
        let mut map = self.lock();
        for e in entries {
            map.insert(e.key, (e.value, now + e.ttl));
        }
        Ok(())
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        self.enter()?;
        self.pause().await;
        let mut map = self.lock();
        for k in keys {
            map.remove(k);
        }
        Ok(())
    }

    async fn tag_add(&self, tag_key: &str, member: &str, _ttl: Duration) -> Result<()> {
        self.enter()?;
        self.pause().await;
        let mut tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        tags.entry(tag_key.to_owned())
            .or_default()
            .insert(member.to_owned());
        Ok(())
    }

    async fn tag_take(&self, tag_key: &str, pending_key: &str) -> Result<Vec<String>> {
        self.enter()?;
        self.pause().await;
        let mut tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        let taken = tags.remove(tag_key).unwrap_or_default();
        let pending = tags.entry(pending_key.to_owned()).or_default();
        pending.extend(taken);
        Ok(pending.iter().cloned().collect())
    }

    async fn tag_done(&self, pending_key: &str, members: &[String]) -> Result<()> {
        self.enter()?;
        self.pause().await;
        let mut tags = self.tags.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pending) = tags.get_mut(pending_key) {
            for m in members {
                pending.remove(m);
            }
            if pending.is_empty() {
                tags.remove(pending_key);
            }
        }
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.enter()?;
        self.pause().await;
        let mut map = self.lock();
        let before = map.len();
        map.retain(|k, _| !k.starts_with(prefix));
        Ok((before - map.len()) as u64)
    }

    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        self.enter()?;
        self.pause().await;
        let mut map = self.lock();
        if Self::live(&mut map, key).is_some() {
            return Ok(false);
        }
        map.insert(key.to_owned(), (value, Instant::now() + ttl));
        Ok(true)
    }

    /// One call, atomic like the Redis script.
    async fn get_or_lease(
        &self,
        key: &str,
        lease_key: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Result<LeaseRead> {
        self.enter()?;
        self.pause().await;
        let mut map = self.lock();
        if let Some(value) = Self::live(&mut map, key) {
            return Ok(LeaseRead::Value(value));
        }
        if Self::live(&mut map, lease_key).is_some() {
            return Ok(LeaseRead::Busy);
        }
        map.insert(lease_key.to_owned(), (token.to_vec(), Instant::now() + ttl));
        Ok(LeaseRead::Leased)
    }

    async fn set_if_lease(
        &self,
        lease_key: &str,
        token: &[u8],
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool> {
        check_value_size(key, value.len(), self.max_value_size)?;
        self.enter()?;
        self.pause().await;
        let mut map = self.lock();
        match Self::live(&mut map, lease_key) {
            Some(t) if t == token => {
                map.remove(lease_key);
                map.insert(key.to_owned(), (value, Instant::now() + ttl));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn set_nx_many(&self, keys: &[String], value: &[u8], ttl: Duration) -> Result<Vec<bool>> {
        self.enter()?;
        self.pause().await;
        let mut map = self.lock();
        Ok(keys
            .iter()
            .map(|k| {
                if Self::live(&mut map, k).is_some() {
                    return false;
                }
                map.insert(k.clone(), (value.to_vec(), Instant::now() + ttl));
                true
            })
            .collect())
    }

    async fn set_if_lease_many(&self, fills: Vec<LeaseFill>) -> Result<Vec<bool>> {
        for f in &fills {
            check_value_size(&f.key, f.value.len(), self.max_value_size)?;
        }
        self.enter()?;
        self.pause().await;
        let mut map = self.lock();
        Ok(fills
            .into_iter()
            .map(|f| match Self::live(&mut map, &f.lease_key) {
                Some(t) if t == f.token => {
                    map.remove(&f.lease_key);
                    map.insert(f.key, (f.value, Instant::now() + f.ttl));
                    true
                }
                _ => false,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_basics() -> Result<()> {
        let s = MemoryStore::with_max_value_size(10);
        s.set("a", b"1".to_vec(), Duration::from_secs(5)).await?;
        assert_eq!(s.get("a").await?, Some(b"1".to_vec()));
        let err = s.set("b", vec![0; 11], Duration::from_secs(5)).await;
        assert_eq!(err.map_err(|e| e.kind()), Err(ErrorKind::ValueTooLarge));
        assert!(s.set_nx("l", b"t".to_vec(), Duration::from_secs(5)).await?);
        assert!(!s.set_nx("l", b"u".to_vec(), Duration::from_secs(5)).await?);
        assert!(
            !s.set_if_lease("l", b"u", "a", b"2".to_vec(), Duration::from_secs(5))
                .await?
        );
        assert!(
            s.set_if_lease("l", b"t", "a", b"3".to_vec(), Duration::from_secs(5))
                .await?
        );
        assert_eq!(s.get("a").await?, Some(b"3".to_vec()));
        // get_or_lease: the value, else the lease (one call), else busy.
        let ttl = Duration::from_secs(5);
        let calls = s.calls();
        assert_eq!(
            s.get_or_lease("a", "la", b"t", ttl).await?,
            LeaseRead::Value(b"3".to_vec())
        );
        assert_eq!(s.get("la").await?, None, "a hit took the lease");
        assert_eq!(
            s.get_or_lease("m", "lm", b"t", ttl).await?,
            LeaseRead::Leased
        );
        assert_eq!(s.get("lm").await?, Some(b"t".to_vec()));
        assert_eq!(s.get_or_lease("m", "lm", b"u", ttl).await?, LeaseRead::Busy);
        assert_eq!(s.calls() - calls, 5, "one call each");
        s.set_down(true);
        assert_eq!(
            s.get("a").await.map_err(|e| e.kind()),
            Err(ErrorKind::Connection)
        );
        Ok(())
    }
}
