//! Guarantees on combined paths: one regression test per hole of issue 13 (a batch with a bad
//! key, a handle built twice, a batch load racing an invalidation, a clear during a fill, a
//! replay racing a write, a lease error, lost tag membership, the invalidating instance
//! re-caching, forged bus sequence numbers, an unbounded publish queue, a bad bus config).
//!
//! Each runs on the in-memory L2 and bus, with a store wrapper that can fail or hold single
//! operations, so the interleaving is forced rather than hoped for.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cache_tiered::core::Message;
use cache_tiered::{
    BusConfig, BusTransport, Cache, Engine, Error, ErrorKind, MemoryBus, MemoryStore, MsgPack,
    RemoteEntry, RemoteStore,
};
use tokio::sync::Notify;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Which store operation a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Get,
    Set,
    Delete,
    SetNx,
    TagAdd,
    TagTake,
}

/// A [`MemoryStore`] whose single operations can be made to fail (a transient error) or be
/// held until released.
#[derive(Debug, Default)]
struct FaultStore {
    inner: MemoryStore,
    failing: Mutex<HashMap<Op, bool>>,
    /// Hold the next call of this op until `release` is notified.
    hold_next: Mutex<Option<Op>>,
    /// The next call of this op is carried out but answers with a timeout (its reply lost).
    lose_reply: Mutex<Option<Op>>,
    held: AtomicUsize,
    release: Notify,
}

impl FaultStore {
    fn new() -> Arc<Self> {
        Arc::new(FaultStore::default())
    }

    fn fail(&self, op: Op, on: bool) {
        self.failing.lock().unwrap().insert(op, on);
    }

    fn hold_next(&self, op: Op) {
        *self.hold_next.lock().unwrap() = Some(op);
    }

    fn lose_reply(&self, op: Op) {
        *self.lose_reply.lock().unwrap() = Some(op);
    }

    /// Whether this call's reply is to be lost (once).
    fn reply_lost(&self, op: Op) -> bool {
        let mut l = self.lose_reply.lock().unwrap();
        if *l == Some(op) {
            *l = None;
            true
        } else {
            false
        }
    }

    /// Wait until a held call is parked.
    async fn wait_held(&self) {
        for _ in 0..2000 {
            if self.held.load(Ordering::SeqCst) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("no call was held");
    }

    fn release_held(&self) {
        self.release.notify_waiters();
    }

    async fn enter(&self, op: Op) -> cache_tiered::Result<()> {
        let hold = {
            let mut h = self.hold_next.lock().unwrap();
            if *h == Some(op) {
                *h = None;
                true
            } else {
                false
            }
        };
        if hold {
            let released = self.release.notified();
            self.held.fetch_add(1, Ordering::SeqCst);
            released.await;
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
        if self
            .failing
            .lock()
            .unwrap()
            .get(&op)
            .copied()
            .unwrap_or(false)
        {
            return Err(Error::new(ErrorKind::Connection, "injected failure"));
        }
        Ok(())
    }
}

#[async_trait]
impl RemoteStore for FaultStore {
    fn kind(&self) -> &'static str {
        "fault"
    }
    fn max_value_size(&self) -> usize {
        self.inner.max_value_size()
    }
    fn capabilities(&self) -> cache_tiered::Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &str) -> cache_tiered::Result<Option<Vec<u8>>> {
        self.enter(Op::Get).await?;
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[String]) -> cache_tiered::Result<Vec<Option<Vec<u8>>>> {
        self.enter(Op::Get).await?;
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> cache_tiered::Result<()> {
        self.enter(Op::Set).await?;
        self.inner.set(key, value, ttl).await
    }
    async fn set_many(&self, entries: Vec<RemoteEntry>) -> cache_tiered::Result<()> {
        self.enter(Op::Set).await?;
        self.inner.set_many(entries).await
    }
    async fn delete(&self, keys: &[String]) -> cache_tiered::Result<()> {
        self.enter(Op::Delete).await?;
        self.inner.delete(keys).await
    }
    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> cache_tiered::Result<bool> {
        self.enter(Op::SetNx).await?;
        self.inner.set_nx(key, value, ttl).await
    }
    async fn delete_prefix(&self, prefix: &str) -> cache_tiered::Result<u64> {
        self.enter(Op::Delete).await?;
        self.inner.delete_prefix(prefix).await
    }
    async fn tag_add(
        &self,
        tag_key: &str,
        member: &str,
        ttl: Duration,
    ) -> cache_tiered::Result<()> {
        self.enter(Op::TagAdd).await?;
        self.inner.tag_add(tag_key, member, ttl).await
    }
    async fn tag_take(
        &self,
        tag_key: &str,
        pending_key: &str,
    ) -> cache_tiered::Result<Vec<String>> {
        self.enter(Op::TagTake).await?;
        let taken = self.inner.tag_take(tag_key, pending_key).await;
        if self.reply_lost(Op::TagTake) {
            return Err(Error::new(ErrorKind::Timeout, "injected: reply lost"));
        }
        taken
    }
    async fn tag_done(&self, pending_key: &str, members: &[String]) -> cache_tiered::Result<()> {
        self.inner.tag_done(pending_key, members).await
    }
    async fn set_if_lease(
        &self,
        lease_key: &str,
        token: &[u8],
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> cache_tiered::Result<bool> {
        self.enter(Op::Set).await?;
        self.inner
            .set_if_lease(lease_key, token, key, value, ttl)
            .await
    }
}

/// One instance: an engine on the shared store and bus.
async fn instance(store: &Arc<FaultStore>, bus: &Arc<MemoryBus>, prefix: &str) -> Engine {
    instance_with(store, bus.attach(), prefix, Duration::from_millis(50)).await
}

/// An instance with its own bus handle and heartbeat.
async fn instance_with(
    store: &Arc<FaultStore>,
    transport: Arc<dyn BusTransport>,
    prefix: &str,
    heartbeat: Duration,
) -> Engine {
    cache_tiered::builder(prefix)
        .with_remote(store.clone())
        .with_bus_transport(transport)
        .with_bus_config(BusConfig::default().with_heartbeat(heartbeat))
        .with_breaker(None)
        .with_recovery(1000, Duration::from_millis(20))
        .build()
        .await
        .unwrap()
}

fn cache(e: &Engine) -> Cache<String, MsgPack> {
    e.cache::<String, MsgPack>("n")
        .with_jitter(0.0)
        .with_lease_timing(Duration::from_secs(5), Duration::from_millis(300))
        .build()
        .unwrap()
}

/// What L2 holds for `key`, decoded through a fresh engine with no L1 copy.
async fn l2_value(store: &Arc<FaultStore>, prefix: &str, key: &str) -> Option<String> {
    let e = cache_tiered::builder(prefix)
        .with_remote(store.clone())
        .with_bus(false)
        .with_breaker(None)
        .build()
        .await
        .unwrap();
    cache(&e).get(key).await.unwrap().map(|v| (*v).clone())
}

async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// A `get_or_load` of `key` whose loader answers `value` only when the gate is opened: a slow
/// load that a write can overtake.
fn held_load(
    c: &Cache<String, MsgPack>,
    key: &'static str,
    value: &'static str,
) -> (
    Arc<Notify>,
    tokio::task::JoinHandle<cache_tiered::Result<Arc<String>>>,
) {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let c = c.clone();
    let load = tokio::spawn(async move {
        c.get_or_load(key, move |_| async move {
            g.notified().await;
            Ok::<_, Error>(value.to_owned())
        })
        .await
    });
    (gate, load)
}

/// Tasks alive on the current runtime.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Wait (at most 2 s) until no more than `before` tasks are alive; returns how many are.
async fn tasks_settle_to(before: usize) -> usize {
    let mut left = alive_tasks();
    for _ in 0..200 {
        if left <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        left = alive_tasks();
    }
    left
}

fn ok_loader(v: &'static str) -> impl FnOnce(String) -> std::future::Ready<Result<String, Error>> {
    move |_| std::future::ready(Ok(v.to_owned()))
}

/// Item 1: a batch with one invalid key is refused before any key is registered in flight.
#[tokio::test]
async fn a_batch_with_an_invalid_key_leaves_nothing_in_flight() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let c = cache(&instance(&store, &bus, "c1").await);
    let err = c
        .get_many_or_load(&["a", ""], |keys: Vec<String>| async move {
            Ok::<_, Error>(keys.into_iter().map(|k| (k, "x".to_owned())).collect())
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidKey);
    let v =
        tokio::time::timeout(Duration::from_secs(5), c.get_or_load("a", ok_loader("1"))).await??;
    assert_eq!(*v, "1");
    Ok(())
}

/// Item 2: two handles on one namespace; dropping one keeps the other coherent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_built_twice_stays_coherent_when_one_is_dropped() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = instance(&store, &bus, "c2").await;
    let b = cache(&instance(&store, &bus, "c2").await);
    let first = cache(&a);
    let second = cache(&a);
    drop(second);
    assert_eq!(*first.get_or_load("k", ok_loader("old")).await?, "old");
    b.set("k", "new".to_owned()).await?;
    assert!(
        eventually(|| first.get_local("k").is_none()).await,
        "the first handle still serves the old value"
    );
    assert_eq!(
        first.get("k").await?.as_deref().map(String::as_str),
        Some("new")
    );
    Ok(())
}

/// Item 2, the same for a cache built after another was dropped and one kept: both handles
/// share one invalidation epoch, so a `set` through one refuses the other's stale fill.
#[tokio::test]
async fn handles_of_one_namespace_share_their_epochs() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = instance(&store, &bus, "c2b").await;
    // Without leases only the epoch stands between a stale load and L1.
    let build = || {
        a.cache::<String, MsgPack>("n")
            .with_jitter(0.0)
            .with_leases(false)
            .build()
            .unwrap()
    };
    let (h1, h2) = (build(), build());
    let (gate, load) = held_load(&h1, "k", "old");
    tokio::time::sleep(Duration::from_millis(50)).await;
    h2.set("k", "new".to_owned()).await?;
    gate.notify_waiters();
    load.await??;
    assert_eq!(
        h1.get_local("k"),
        Some(Some(Arc::new("new".to_owned()))),
        "a load that began before the other handle's set filled L1 with the old value"
    );
    Ok(())
}

/// Item 3: a batch load that began before an invalidation does not write its value back.
#[tokio::test]
async fn a_batch_load_racing_an_invalidation_writes_nothing_back() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = cache(&instance(&store, &bus, "c3").await);
    let b = cache(&instance(&store, &bus, "c3").await);
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let load = tokio::spawn({
        let a = a.clone();
        async move {
            a.get_many_or_load(&["k"], move |keys: Vec<String>| async move {
                g.notified().await;
                Ok::<_, Error>(keys.into_iter().map(|k| (k, "old".to_owned())).collect())
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.invalidate("k").await?;
    gate.notify_waiters();
    load.await??;
    assert_eq!(
        l2_value(&store, "c3", "k").await,
        None,
        "the old value was written back"
    );
    Ok(())
}

/// Item 3: the batch path honours the hard loader timeout and fail-safe.
#[tokio::test]
async fn a_hung_batch_loader_is_bounded_and_fail_safe_serves_stale() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let e = instance(&store, &bus, "c3b").await;
    let c: Cache<String, MsgPack> = e
        .cache("n")
        .with_jitter(0.0)
        .with_loader_timeouts(None, Some(Duration::from_millis(100)))
        .build()?;
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        c.get_many_or_load(&["k"], |_keys: Vec<String>| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, Error>(HashMap::new())
        }),
    )
    .await
    .expect("a hung batch loader hung its caller");
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);

    let safe: Cache<String, MsgPack> = e
        .cache("safe")
        .with_jitter(0.0)
        .with_l1_ttl(Duration::from_millis(50))
        .with_l2_ttl(Duration::from_millis(50))
        .with_fail_safe(Duration::from_secs(60), Duration::from_millis(10))
        .build()?;
    safe.set("k", "kept".to_owned()).await?;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let r = safe
        .get_many_or_load(&["k"], |_keys: Vec<String>| async move {
            Err::<HashMap<String, String>, _>(Error::new(ErrorKind::Loader, "db down"))
        })
        .await?;
    assert_eq!(r[0].as_deref().map(String::as_str), Some("kept"));
    Ok(())
}

/// A fill that L2 refuses (another instance deleted the lease, and its bus message has not
/// arrived: here it never does) leaves nothing in L1: the loaded value is returned, not
/// cached in either tier.
#[tokio::test]
async fn a_fill_refused_by_l2_leaves_nothing_in_l1() -> TestResult {
    let store = FaultStore::new();
    let a = cache(&instance(&store, &MemoryBus::new(), "c4r").await);
    let b = cache(&instance(&store, &MemoryBus::new(), "c4r").await);
    let (gate, load) = held_load(&a, "k", "old");
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.invalidate("k").await?;
    gate.notify_waiters();
    assert_eq!(*load.await??, "old", "the loaded value is still returned");
    assert_eq!(
        l2_value(&store, "c4r", "k").await,
        None,
        "the old value was written"
    );
    assert_eq!(a.get_local("k"), None, "L1 kept a value L2 refused");
    Ok(())
}

/// Item 4: a fill that began before `clear_namespace` does not land after it.
#[tokio::test]
async fn a_clear_during_a_fill_wins() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = cache(&instance(&store, &bus, "c4").await);
    let b = cache(&instance(&store, &bus, "c4").await);
    let (gate, load) = held_load(&a, "k", "pre-clear");
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.clear_namespace().await?;
    gate.notify_waiters();
    load.await??;
    assert_eq!(
        l2_value(&store, "c4", "k").await,
        None,
        "the pre-clear value landed"
    );
    Ok(())
}

/// Item 5: a replayed write does not land over a newer write made while it was in flight
/// (a failed write is settled by a delete, which is right in any order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_racing_a_write_does_not_win() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = cache(&instance(&store, &bus, "c5").await);
    store.fail(Op::Set, true);
    store.fail(Op::Delete, true);
    a.set("k", "queued".to_owned()).await?;
    assert_eq!(a.engine().recovery_stats().unwrap().pending, 1);
    // The replay is held in flight while a newer write succeeds.
    store.hold_next(Op::Delete);
    store.fail(Op::Set, false);
    store.fail(Op::Delete, false);
    store.wait_held().await;
    a.set("k", "newer".to_owned()).await?;
    store.release_held();
    assert!(eventually(|| a.engine().recovery_stats().unwrap().pending == 0).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let in_l2 = l2_value(&store, "c5", "k").await;
    assert_ne!(
        in_l2.as_deref(),
        Some("queued"),
        "the replay overwrote a newer write"
    );
    Ok(())
}

/// Two instances whose writes of one key failed in the same outage: whichever settles last,
/// L2 does not end with the older value (found by the simulation, seed 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_of_two_instances_leave_no_older_value() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let engine = |interval: u64| {
        cache_tiered::builder("c5c")
            .with_remote(store.clone())
            .with_bus_transport(bus.attach())
            .with_breaker(None)
            .with_recovery(1000, Duration::from_millis(interval))
            .build()
    };
    // The first writer settles late, the second early.
    let a = cache(&engine(300).await?);
    let b = cache(&engine(10).await?);
    store.fail(Op::Set, true);
    store.fail(Op::Delete, true);
    a.set("k", "first".to_owned()).await?;
    b.set("k", "second".to_owned()).await?;
    // Both replay loops have tried once while L2 was down: B's next try comes first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.fail(Op::Set, false);
    store.fail(Op::Delete, false);
    assert!(
        eventually(|| {
            a.engine().recovery_stats().unwrap().pending == 0
                && b.engine().recovery_stats().unwrap().pending == 0
        })
        .await
    );
    let in_l2 = l2_value(&store, "c5c", "k").await;
    assert_ne!(
        in_l2.as_deref(),
        Some("first"),
        "the older write was replayed last"
    );
    Ok(())
}

/// Item 5: a replayed set removes the fill lease, so a load in flight elsewhere cannot
/// overwrite it.
#[tokio::test]
async fn a_replayed_set_removes_the_fill_lease() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = cache(&instance(&store, &bus, "c5b").await);
    let full = a.full_key("k")?;
    let lease = cache_tiered::core::support::lease_key("c5b", &full).unwrap();
    // Another instance's fill holds the lease.
    assert!(
        store
            .inner
            .set_nx(&lease, b"t".to_vec(), Duration::from_secs(30))
            .await?
    );
    store.fail(Op::Set, true);
    store.fail(Op::Delete, true);
    a.set("k", "written".to_owned()).await?;
    store.fail(Op::Set, false);
    store.fail(Op::Delete, false);
    assert!(eventually(|| a.engine().recovery_stats().unwrap().pending == 0).await);
    let landed = store
        .inner
        .set_if_lease(
            &lease,
            b"t",
            &full,
            b"old".to_vec(),
            Duration::from_secs(30),
        )
        .await?;
    assert!(
        !landed,
        "the other instance's fill overwrote the replayed write"
    );
    Ok(())
}

/// Item 6: when the lease cannot be taken (L2 error), the loaded value is not written
/// unconditionally: an invalidation during the load wins.
#[tokio::test]
async fn a_lease_error_does_not_write_unconditionally() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = cache(&instance(&store, &bus, "c6").await);
    let b = cache(&instance(&store, &bus, "c6").await);
    store.fail(Op::SetNx, true);
    let (gate, load) = held_load(&a, "k", "old");
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.invalidate("k").await?;
    gate.notify_waiters();
    load.await??;
    assert_eq!(
        l2_value(&store, "c6", "k").await,
        None,
        "the old value was written back"
    );
    Ok(())
}

/// Item 6: an L2 read error while waiting for another instance's lease does not make this
/// instance write over the lease holder.
#[tokio::test]
async fn a_read_error_while_waiting_for_a_lease_writes_nothing() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = cache(&instance(&store, &bus, "c6b").await);
    let full = a.full_key("k")?;
    let lease = cache_tiered::core::support::lease_key("c6b", &full).unwrap();
    assert!(
        store
            .inner
            .set_nx(&lease, b"other".to_vec(), Duration::from_secs(30))
            .await?
    );
    store.fail(Op::Get, true);
    let calls = Arc::new(AtomicU64::new(0));
    let n = calls.clone();
    a.get_or_load("k", move |_| async move {
        n.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Error>("mine".to_owned())
    })
    .await?;
    store.fail(Op::Get, false);
    assert_eq!(
        store.inner.get(&full).await?,
        None,
        "wrote without the lease while another instance held it"
    );
    Ok(())
}

/// Item 7: a failing delete in `invalidate_tag` loses no member: the delete is replayed and
/// the invalidation announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tag_delete_loses_no_member() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = cache(&instance(&store, &bus, "c7").await);
    let b = cache(&instance(&store, &bus, "c7").await);
    a.set_with_tags("k", "v".to_owned(), &["t"]).await?;
    assert!(b.get("k").await?.is_some());
    store.fail(Op::Delete, true);
    let r = a.invalidate_tag("t").await;
    assert!(
        eventually(|| b.get_local("k").is_none()).await,
        "the other instance was not told (result {r:?})"
    );
    store.fail(Op::Delete, false);
    let mut gone = false;
    for _ in 0..100 {
        let _ = a.invalidate_tag("t").await;
        if l2_value(&store, "c7", "k").await.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the tagged key stays in L2 for good");
    Ok(())
}

/// Item 7: when the reply to the tag take is lost (Redis ran it, the client timed out), a
/// retry of `invalidate_tag` still finds the members (found by the simulation, seed 663).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tag_take_reply_loses_no_member() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = cache(&instance(&store, &bus, "c7c").await);
    let b = cache(&instance(&store, &bus, "c7c").await);
    a.set_with_tags("k", "v".to_owned(), &["t"]).await?;
    assert!(b.get("k").await?.is_some());
    store.lose_reply(Op::TagTake);
    assert_eq!(
        a.invalidate_tag("t").await.unwrap_err().kind(),
        ErrorKind::Timeout
    );
    assert_eq!(a.invalidate_tag("t").await?, 1, "the retry found no member");
    assert_eq!(l2_value(&store, "c7c", "k").await, None);
    assert!(eventually(|| b.get_local("k").is_none()).await);
    Ok(())
}

/// Item 7: a failed `tag_add` is replayed with its write, so a later `invalidate_tag` finds
/// the key.
#[tokio::test]
async fn a_failed_tag_add_is_replayed() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = cache(&instance(&store, &bus, "c7b").await);
    store.fail(Op::TagAdd, true);
    a.set_with_tags("k", "v".to_owned(), &["t"]).await?;
    store.fail(Op::TagAdd, false);
    assert!(eventually(|| a.engine().recovery_stats().unwrap().pending == 0).await);
    assert_eq!(
        a.invalidate_tag("t").await?,
        1,
        "the key's tag membership was lost"
    );
    assert_eq!(l2_value(&store, "c7b", "k").await, None);
    Ok(())
}

/// Item 8: a read on the invalidating instance while its delete is in flight does not
/// re-cache the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invalidating_instance_does_not_recache_the_old_value() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = cache(&instance(&store, &bus, "c8").await);
    a.set("k", "old".to_owned()).await?;
    store.hold_next(Op::Delete);
    let inv = tokio::spawn({
        let a = a.clone();
        async move { a.invalidate("k").await }
    });
    store.wait_held().await;
    let seen = a.get("k").await?;
    assert_eq!(seen.as_deref().map(String::as_str), Some("old"));
    store.release_held();
    inv.await??;
    assert_eq!(
        a.get_local("k"),
        None,
        "L1 kept the old value after the invalidation"
    );
    Ok(())
}

/// A bus message forged with a real publisher id and a sequence number at `u64::MAX`
/// neither kills the receiver nor disables loss detection for that publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_sequence_number_does_not_deafen_the_receiver() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let hour = Duration::from_secs(3600);
    let a = cache(&instance_with(&store, bus.attach(), "s1", hour).await);
    let b_handle = bus.attach();
    let b_engine = instance_with(&store, b_handle.clone(), "s1", hour).await;
    let b = cache(&b_engine);
    let forger = bus.attach();
    let channel = "s1:n:__inv";
    for _ in 0..2 {
        let forged = Message {
            kind: 1,
            instance: b_engine.instance_id().unwrap(),
            seq: u64::MAX,
            keys: vec!["other".into()],
        };
        forger.publish(channel, forged.encode()).await?;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // B's next invalidation is lost; its following one must reveal the gap.
    a.get_or_load("k", ok_loader("old")).await?;
    b_handle.drop_next(1);
    b.set("k", "new".to_owned()).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.set("j", "x".to_owned()).await?;
    assert!(
        eventually(|| a.get_local("k").is_none()).await,
        "the loss went undetected after the forged message"
    );
    Ok(())
}

/// The outgoing invalidation queue is bounded: when the transport stalls, a flood of
/// invalidations turns into a namespace clear instead of unbounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_queue_is_bounded() -> TestResult {
    #[derive(Debug)]
    struct Stalled {
        inner: Arc<cache_tiered::MemoryBusHandle>,
        stalled: AtomicBool,
        go: Notify,
    }
    #[async_trait]
    impl BusTransport for Stalled {
        fn kind(&self) -> &'static str {
            "stalled"
        }
        async fn publish(&self, channel: &str, payload: Vec<u8>) -> cache_tiered::Result<()> {
            while self.stalled.load(Ordering::SeqCst) {
                let go = self.go.notified();
                if !self.stalled.load(Ordering::SeqCst) {
                    break;
                }
                go.await;
            }
            self.inner.publish(channel, payload).await
        }
        fn start(
            &self,
            events: tokio::sync::mpsc::UnboundedSender<cache_tiered::core::BusEvent>,
        ) -> cache_tiered::Result<tokio::task::JoinHandle<()>> {
            self.inner.start(events)
        }
        fn subscribe(&self, channel: &str) {
            self.inner.subscribe(channel)
        }
    }
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let a = cache(&instance(&store, &bus, "s2").await);
    let stalled = Arc::new(Stalled {
        inner: bus.attach(),
        stalled: AtomicBool::new(false),
        go: Notify::new(),
    });
    let b_engine = cache_tiered::builder("s2")
        .with_remote(store.clone())
        .with_bus_transport(stalled.clone())
        .with_bus_config(
            BusConfig::default()
                .with_heartbeat(Duration::from_secs(3600))
                .with_max_queued_keys(100),
        )
        .with_breaker(None)
        .build()
        .await?;
    let b = cache(&b_engine);
    a.get_or_load("k", ok_loader("old")).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    stalled.stalled.store(true, Ordering::SeqCst);
    for i in 0..1000u32 {
        b.invalidate(&format!("x{i}")).await?;
    }
    b.set("k", "new".to_owned()).await?;
    let queued = b_engine.bus_stats().unwrap().queued_keys;
    assert!(queued <= 100, "{queued} keys queued for publishing");
    stalled.stalled.store(false, Ordering::SeqCst);
    stalled.go.notify_waiters();
    assert!(
        eventually(|| a.get_local("k").is_none()).await,
        "an invalidation was dropped when the queue overflowed"
    );
    Ok(())
}

/// A bus config that would panic a task (a zero heartbeat) is refused when the engine is
/// built.
#[tokio::test]
async fn a_zero_heartbeat_is_a_config_error() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let config = BusConfig::default().with_heartbeat(Duration::ZERO);
    let r = cache_tiered::builder("s3")
        .with_remote(store)
        .with_bus_transport(bus.attach())
        .with_bus_config(config)
        .build()
        .await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidConfig);
    Ok(())
}

/// An engine dropped right after a write still sends the invalidation it had queued (found
/// by the simulation, seed 10025).
#[tokio::test]
async fn a_dropped_engine_still_sends_its_queued_invalidations() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    // Long heartbeats: only the message itself can tell A (no silence detection).
    let hour = Duration::from_secs(3600);
    let a = cache(&instance_with(&store, bus.attach(), "s4", hour).await);
    a.get_or_load("k", ok_loader("old")).await?;
    {
        let b_engine = instance_with(&store, bus.attach(), "s4", hour).await;
        let b = cache(&b_engine);
        // Let B's subscription and first heartbeat settle.
        tokio::time::sleep(Duration::from_millis(10)).await;
        b.set("k", "new".to_owned()).await?;
        // No await between the write and the drop: the publish is still queued.
    }
    assert!(
        eventually(|| a.get_local("k").is_none()).await,
        "the invalidation queued before the drop was never sent"
    );
    Ok(())
}

/// A tracking transport whose connection comes up only when the test says so (a delayed
/// `CLIENT TRACKING ON`): writes made before are never reported, as with Redis.
#[derive(Debug, Default)]
struct LateTracking {
    events: Mutex<Option<tokio::sync::mpsc::UnboundedSender<cache_tiered::core::BusEvent>>>,
}

#[async_trait]
impl BusTransport for LateTracking {
    fn kind(&self) -> &'static str {
        "late-tracking"
    }
    async fn publish(&self, _channel: &str, _payload: Vec<u8>) -> cache_tiered::Result<()> {
        Ok(())
    }
    fn start(
        &self,
        events: tokio::sync::mpsc::UnboundedSender<cache_tiered::core::BusEvent>,
    ) -> cache_tiered::Result<tokio::task::JoinHandle<()>> {
        *self.events.lock().unwrap() = Some(events.clone());
        Ok(tokio::spawn(async move { events.closed().await }))
    }
    fn subscribe(&self, _channel: &str) {}
}

/// Tracking start-up: what L1 took before tracking was on is not trusted once it is on, and
/// the engine says whether it is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_filled_before_tracking_came_up_is_flushed() -> TestResult {
    let store = FaultStore::new();
    let writer = cache_tiered::builder("s5")
        .with_remote(store.clone())
        .with_bus(false)
        .build()
        .await?;
    let writer = cache(&writer);
    writer.set("k", "v1".to_owned()).await?;
    let tracking = Arc::new(LateTracking::default());
    let engine = cache_tiered::core::Engine::builder("s5")
        .with_l1(Arc::new(cache_tiered::QuickL1::with_capacity_bytes(
            1 << 20,
        )))
        .with_l2(store.clone())
        .with_tracking(tracking.clone())
        .build()?;
    assert!(!engine.wait_for_tracking(Duration::from_millis(20)).await);
    let c = cache(&engine);
    assert_eq!(c.get("k").await?.as_deref().map(String::as_str), Some("v1"));
    // Another client writes while tracking is not on yet: nobody reports it.
    writer.set("k", "v2".to_owned()).await?;
    let events = tracking.events.lock().unwrap().clone().unwrap();
    events.send(cache_tiered::core::BusEvent::Connected)?;
    assert!(engine.wait_for_tracking(Duration::from_secs(5)).await);
    assert!(
        eventually(|| c.get_local("k").is_none()).await,
        "L1 kept a value filled before tracking was on"
    );
    assert_eq!(c.get("k").await?.as_deref().map(String::as_str), Some("v2"));
    Ok(())
}

/// Nothing is left running: an engine with a bus, caches, loads, a queued recovery entry and
/// queued invalidations, once dropped, leaves no task behind on the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_engine_leaves_no_task_running() -> TestResult {
    let before = alive_tasks();
    {
        let (store, bus) = (FaultStore::new(), MemoryBus::new());
        let a = cache(&instance(&store, &bus, "s6").await);
        let b = cache(&instance(&store, &bus, "s6").await);
        a.get_or_load("k", ok_loader("v")).await?;
        b.get_many_or_load(&["j", "k"], |keys: Vec<String>| async move {
            Ok::<_, Error>(keys.into_iter().map(|k| (k, "v".to_owned())).collect())
        })
        .await?;
        store.fail(Op::Delete, true);
        a.set("k", "w".to_owned()).await?; // queued for recovery
        b.invalidate("j").await?;
        assert!(a.engine().recovery_stats().unwrap().pending > 0);
    }
    let left = tasks_settle_to(before).await;
    assert!(
        left <= before,
        "{} tasks still alive after the engines were dropped",
        left - before
    );
    Ok(())
}

/// Issue 16: `Engine::shutdown` settles the recovery queue while L2 answers, publishes the
/// queued invalidations, reports what it could not finish by its deadline, and stops the
/// engine's tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_within_its_deadline_and_stops_every_task() -> TestResult {
    let before = alive_tasks();
    {
        let (store, bus) = (FaultStore::new(), MemoryBus::new());
        let reader = instance(&store, &bus, "sd").await;
        let b = cache(&reader);
        // L2 down for good: the write is accepted (L1) and queued; the deadline passes.
        let down = instance(&store, &bus, "sd").await;
        store.fail(Op::Delete, true);
        cache(&down).set("k", "lost".to_owned()).await?;
        let report = down.shutdown(Duration::from_millis(100)).await;
        assert_eq!(report.unsettled_recovery, 1, "{report:?}");
        assert_eq!(report.unsent_invalidations, 0, "{report:?}");
        store.fail(Op::Delete, false);
        // L2 back before the deadline: settled (the key deleted in L2 and announced).
        let a_engine = instance(&store, &bus, "sd").await;
        let a = cache(&a_engine);
        a.set("k", "v1".to_owned()).await?;
        assert_eq!(b.get("k").await?.as_deref().map(String::as_str), Some("v1"));
        store.fail(Op::Delete, true);
        a.set("k", "v2".to_owned()).await?;
        assert_eq!(a_engine.recovery_stats().map(|s| s.pending), Some(1));
        let heal = {
            let store = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                store.fail(Op::Delete, false);
            })
        };
        let report = a_engine.shutdown(Duration::from_secs(5)).await;
        heal.await?;
        assert_eq!(report, cache_tiered::ShutdownReport::default());
        assert_eq!(
            l2_value(&store, "sd", "k").await,
            None,
            "the old value left L2"
        );
        assert!(
            eventually(|| b.get_local("k").is_none()).await,
            "the reader's copy was invalidated"
        );
    }
    let left = tasks_settle_to(before).await;
    assert!(left <= before, "{} tasks still alive", left - before);
    Ok(())
}

/// An L1 whose first insert of one key, once armed, waits on its thread before inserting:
/// long enough for another instance's invalidation to be processed between the engine's
/// epoch check and the insert.
struct SlowInsertL1 {
    inner: cache_tiered::QuickL1,
    key: &'static str,
    armed: AtomicBool,
    delay: Duration,
}

impl cache_tiered::L1Store for SlowInsertL1 {
    fn get(
        &self,
        ns: cache_tiered::core::NamespaceId,
        key: &str,
        now_ms: u64,
    ) -> Option<cache_tiered::core::L1Entry> {
        self.inner.get(ns, key, now_ms)
    }

    fn insert(
        &self,
        ns: cache_tiered::core::NamespaceId,
        key: &str,
        entry: cache_tiered::core::L1Entry,
    ) {
        if key == self.key && self.armed.swap(false, Ordering::SeqCst) {
            std::thread::sleep(self.delay);
        }
        self.inner.insert(ns, key, entry);
    }

    fn remove(&self, ns: cache_tiered::core::NamespaceId, key: &str) {
        self.inner.remove(ns, key);
    }

    fn clear_namespace(&self, ns: cache_tiered::core::NamespaceId) {
        self.inner.clear_namespace(ns);
    }

    fn clear(&self) {
        self.inner.clear();
    }

    fn stats(&self) -> cache_tiered::L1Stats {
        self.inner.stats()
    }
}

/// An invalidation processed between a fill's epoch check and its L1 insert (the receiver
/// bumps the epoch, then removes the entry, before the insert lands) must not leave the older
/// value in L1: the fill checks the epoch again after inserting. Failed before: L1 kept "old"
/// until its TTL while L2 and the other instance had "new".
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn an_invalidation_between_the_epoch_check_and_the_insert_wins() -> TestResult {
    let (store, bus) = (FaultStore::new(), MemoryBus::new());
    let l1 = Arc::new(SlowInsertL1 {
        inner: cache_tiered::QuickL1::with_capacity_bytes(1 << 20),
        key: "k",
        armed: AtomicBool::new(false),
        delay: Duration::from_millis(300),
    });
    let a_engine = Engine::builder("c-slow-insert")
        .with_custom_l1(l1.clone())
        .with_l2(store.clone())
        .with_bus(bus.attach())
        .with_bus_config(BusConfig::default().with_heartbeat(Duration::from_millis(50)))
        .with_breaker(None)
        .build()?;
    let a = cache(&a_engine);
    let b = cache(&instance(&store, &bus, "c-slow-insert").await);
    b.set("k", "old".to_owned()).await?;
    l1.armed.store(true, Ordering::SeqCst);
    // A reads "old" from L2; its L1 insert waits 300 ms on a worker thread.
    let reader = {
        let a = a.clone();
        tokio::spawn(async move { a.get("k").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Meanwhile B writes "new": A's receiver drops "k" before the insert lands.
    b.set("k", "new".to_owned()).await?;
    let read = reader.await??;
    assert_eq!(
        read.as_deref().map(String::as_str),
        Some("old"),
        "the read itself was old"
    );
    // Give A's receiver time to have processed the message (it had, during the sleep).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_ne!(
        a.get_local("k").flatten().as_deref().map(String::as_str),
        Some("old"),
        "A's L1 kept the value an invalidation had already dropped"
    );
    assert_eq!(
        a.get("k").await?.as_deref().map(String::as_str),
        Some("new")
    );
    Ok(())
}
