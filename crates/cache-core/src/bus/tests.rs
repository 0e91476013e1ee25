use super::*;

#[test]
fn message_round_trip_and_garbage() -> Result<()> {
    let m = Message {
        kind: KIND_KEYS,
        instance: 7,
        seq: 42,
        keys: vec!["a".into(), "{user:1}:x\n".into(), String::new()],
    };
    assert_eq!(Message::decode(&m.encode())?, m);
    assert!(Message::decode(b"hello").is_err());
    let mut bytes = m.encode();
    bytes.truncate(bytes.len() - 1);
    assert!(Message::decode(&bytes).is_err());
    let mut bomb = m.encode();
    bomb[18..22].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(Message::decode(&bomb).is_err());
    Ok(())
}

use crate::cache::Cache;
use crate::clock::ManualClock;
use crate::remote::MemoryStore;
use crate::testing::{engine, Json};

const MS: Duration = Duration::from_millis(1);

/// Two engines on one bus and one L2; the second one's policy is `policy`. The clock
/// starts at 1,000,000 ms.
struct Pair {
    clock: Arc<ManualClock>,
    writer: Cache<u64, Json>,
    reader: Cache<u64, Json>,
    reader_engine: crate::Engine,
    reader_bus: Arc<MemoryBusHandle>,
    _engines: crate::Engine,
}

fn pair(policy: ReconnectPolicy) -> Result<Pair> {
    let (store, bus) = (Arc::new(MemoryStore::new()), MemoryBus::new());
    let clock = Arc::new(ManualClock::new(1_000_000));
    let (we, _) = engine(&store, &bus, &clock, ReconnectPolicy::Flush)?;
    let (re, reader_bus) = engine(&store, &bus, &clock, policy)?;
    let build = |e: &crate::Engine| {
        e.cache::<u64, Json>("n")
            .with_l1_ttl(Duration::from_secs(300))
            .with_l2_ttl(Duration::from_secs(600))
            .build()
    };
    Ok(Pair {
        writer: build(&we)?,
        reader: build(&re)?,
        clock,
        reader_engine: re,
        reader_bus,
        _engines: we,
    })
}

impl Pair {
    /// The writer sets `k`, the reader reads it into its L1; the clock moves on 1 ms (an
    /// entry born in a flush's own millisecond is not fresh).
    async fn cached(&self, v: u64) -> Result<()> {
        self.writer.set("k", v).await?;
        self.settle().await;
        assert_eq!(self.reader.get("k").await?.as_deref(), Some(&v));
        assert_eq!(self.local(), Some(v));
        self.clock.advance(MS);
        Ok(())
    }

    /// What the reader's L1 serves for `k`.
    fn local(&self) -> Option<u64> {
        self.reader.get_local("k").flatten().map(|v| *v)
    }

    /// Let the bus tasks run (paused time: a few ms pass).
    async fn settle(&self) {
        tokio::time::sleep(5 * MS).await;
    }

    fn losses(&self) -> u64 {
        self.reader_engine.bus_stats().map_or(0, |s| s.losses)
    }
}

#[test]
fn on_loss_is_validated() {
    let bad = |p| BusConfig::default().with_on_loss(p).validate();
    for p in [
        ReconnectPolicy::keep(Duration::ZERO),
        ReconnectPolicy::reload(0),
    ] {
        assert_eq!(
            bad(p).map_err(|e| e.kind()),
            Err(ErrorKind::InvalidConfig),
            "{p:?}"
        );
    }
    assert!(bad(ReconnectPolicy::keep(MS)).is_ok());
    assert!(bad(ReconnectPolicy::reload(1)).is_ok());
    assert_eq!(BusConfig::default().on_loss, ReconnectPolicy::Flush);
}

#[tokio::test(start_paused = true)]
async fn an_engine_with_a_zero_staleness_bound_is_not_built() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(1));
    let built = engine(
        &store,
        &MemoryBus::new(),
        &clock,
        ReconnectPolicy::keep(Duration::ZERO),
    );
    assert_eq!(
        built.err().map(|e| e.kind()),
        Some(ErrorKind::InvalidConfig)
    );
}

/// `Flush` (the default) is what it always was: flushed at the disconnect, and what L1
/// took while deaf is flushed again at the reconnect.
#[tokio::test(start_paused = true)]
async fn flush_drops_l1_at_the_loss_and_again_at_the_reconnect() -> Result<()> {
    let p = pair(ReconnectPolicy::Flush)?;
    p.cached(1).await?;
    p.reader_bus.disconnect();
    p.settle().await;
    assert_eq!(p.local(), None, "kept through a loss");
    assert_eq!(p.losses(), 1);
    // Filled while deaf, then missed: dropped when the subscription is back.
    p.clock.advance(MS);
    assert_eq!(p.reader.get("k").await?.as_deref(), Some(&1));
    p.writer.set("k", 2).await?;
    p.settle().await;
    assert_eq!(p.local(), Some(1));
    p.clock.advance(MS);
    p.reader_bus.reconnect();
    p.settle().await;
    assert_eq!(p.local(), None);
    assert_eq!(p.reader.get("k").await?.as_deref(), Some(&2));
    Ok(())
}

/// `Keep`: L1 serves through the loss (the missed write included), and is flushed
/// `max_staleness` after it while still deaf, then again every `max_staleness`.
#[tokio::test(start_paused = true)]
async fn keep_serves_during_a_loss_and_flushes_at_max_staleness() -> Result<()> {
    let p = pair(ReconnectPolicy::keep(Duration::from_millis(500)))?;
    p.cached(1).await?;
    p.reader_bus.disconnect();
    p.settle().await;
    assert_eq!(p.losses(), 1, "the loss is counted at once");
    p.writer.set("k", 2).await?; // missed by the reader
    tokio::time::sleep(400 * MS).await;
    assert_eq!(p.local(), Some(1), "not kept through the loss");
    p.clock.advance(MS);
    tokio::time::sleep(100 * MS).await;
    assert_eq!(p.local(), None, "kept past max_staleness");
    // Still deaf: what L1 takes now is flushed again a bound later.
    p.clock.advance(MS);
    assert_eq!(p.reader.get("k").await?.as_deref(), Some(&2));
    p.writer.set("k", 3).await?; // missed too
    tokio::time::sleep(400 * MS).await;
    assert_eq!(p.local(), Some(2));
    p.clock.advance(MS);
    tokio::time::sleep(100 * MS).await;
    assert_eq!(
        p.local(),
        None,
        "a fill made while deaf outlived max_staleness"
    );
    assert_eq!(p.reader.get("k").await?.as_deref(), Some(&3));
    assert_eq!(p.losses(), 1);
    Ok(())
}

/// `Keep`: a reconnect before the bound flushes at once, and ends the deadline.
#[tokio::test(start_paused = true)]
async fn keep_flushes_at_the_reconnect() -> Result<()> {
    let p = pair(ReconnectPolicy::keep(Duration::from_millis(500)))?;
    p.cached(1).await?;
    p.reader_bus.disconnect();
    p.writer.set("k", 2).await?; // missed
    tokio::time::sleep(100 * MS).await;
    assert_eq!(p.local(), Some(1));
    p.clock.advance(MS);
    p.reader_bus.reconnect();
    p.settle().await;
    assert_eq!(p.local(), None, "kept past the reconnect");
    p.clock.advance(MS);
    assert_eq!(p.reader.get("k").await?.as_deref(), Some(&2));
    // No flush left over from the loss: the new value stays past the old deadline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p.local(), Some(2));
    assert_eq!(p.reader_engine.bus_stats().map(|s| s.reconnects), Some(1));
    Ok(())
}

/// `Keep`: a lost message (a gap seen at the publisher's next message) is flushed
/// `max_staleness` after it is noticed, not at once.
#[tokio::test(start_paused = true)]
async fn keep_flushes_a_gap_after_max_staleness() -> Result<()> {
    let p = pair(ReconnectPolicy::keep(Duration::from_millis(500)))?;
    p.writer.set("other", 7).await?; // first contact: numbering starts
    p.cached(1).await?;
    // Lose one message from the writer by breaking the reader's subscription for it
    // alone, without telling the reader (a lost delivery).
    p.reader_bus.deaf.store(true, Ordering::SeqCst);
    p.writer.set("k", 2).await?;
    p.settle().await;
    p.reader_bus.deaf.store(false, Ordering::SeqCst);
    p.writer.set("j", 1).await?; // its number shows the gap
    p.settle().await;
    assert_eq!(p.losses(), 1, "the gap went unnoticed");
    assert_eq!(p.local(), Some(1), "not kept after a gap");
    p.clock.advance(MS);
    tokio::time::sleep(500 * MS).await;
    assert_eq!(p.local(), None, "kept past max_staleness after a gap");
    assert_eq!(p.reader.get("k").await?.as_deref(), Some(&2));
    Ok(())
}
