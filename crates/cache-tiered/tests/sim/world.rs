//! The instances of one seed and what the application does with them: every operation
//! against the model database (the database first, then the cache, as the application
//! would), fault windows, and, once the faults stop and everything settles, the invariants:
//!
//! - no operation hangs, none fails with `Closed`, none returns a value the key never had;
//! - user repairs (an `invalidate_tag` or a clear that returned an error is retried) succeed;
//! - the recovery queues and write-behind queues drain;
//! - every instance returns the database's value for every key (`get` where a tier holds it,
//!   `get_or_load_optional`, then `get` again), through every cache handle, with at most one
//!   loader call per key (the first instance loads, the others read L2);
//! - a cold key loaded concurrently by every instance costs one loader call (single flight
//!   and fill lease);
//! - bus counters: no loss reported when no bus fault fired, reconnects as injected;
//! - L1 holds no more entries than there are keys.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cache_testkit::{FaultProxy, Mode};
use cache_tiered::{
    BreakerConfig, BusConfig, CacheBuilder, CallOptions, Engine, Error, ErrorKind, MemoryBus,
    MemoryStore, MsgPack, RedisConfig, XFetch,
};
use cache_writebehind::{Batch, WriteBehind};

use super::bus::FaultBus;
use super::clock::VirtualClock;
use super::faults::Faults;
use super::model::{app_error, Db, LoadPlan, Source, Value};
use super::plan::{
    describe, FaultWindow, Op, ReadMode, SeedConfig, Step, WriteMode, COLD, INVALID, KEYS, WB_KEYS,
};
use super::rng::{Failures, Trace, TraceObserver};
use super::store::FaultStore;

/// The typed cache every instance uses.
pub type C = cache_tiered::Cache<u64, MsgPack>;
/// The write-behind queue of an instance.
pub type Wb = WriteBehind<u64, MsgPack>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The durations of a run (virtual for the in-memory run, real on Redis).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// L1 TTL (long, so that a stale L1 copy outlives the run and is seen by the checks).
    pub l1_ttl: Duration,
    /// L2 TTL.
    pub l2_ttl: Duration,
    /// L1 and L2 TTLs of short-TTL seeds.
    pub short_ttl: (Duration, Duration),
    /// Fill lease lifetime and wait.
    pub lease: (Duration, Duration),
    /// Bus heartbeat (the silence limit is three of them).
    pub heartbeat: Duration,
    /// Recovery replay interval.
    pub recovery: Duration,
    /// Breaker cool-down.
    pub cool_down: Duration,
    /// Fail-safe back-off.
    pub fail_safe_backoff: Duration,
    /// Loader soft and hard timeouts of seeds that have them.
    pub loader_timeouts: (Duration, Duration),
    /// Write-behind batch age.
    pub wb_max_age: Duration,
    /// How long to wait after the faults stop (longer than every lease, silence limit,
    /// cool-down, back-off and late delivery).
    pub settle: Duration,
    /// How long to wait after the repairs.
    pub quiet: Duration,
    /// Longest an operation may take before it counts as a hang.
    pub op_timeout: Duration,
    /// Duration of the loads of the final stampede check.
    pub stampede_load: Duration,
}

impl Timing {
    /// The in-memory run (virtual time: generous values cost nothing).
    pub fn memory() -> Timing {
        Timing {
            l1_ttl: Duration::from_secs(60),
            l2_ttl: Duration::from_secs(120),
            short_ttl: (Duration::from_millis(1500), Duration::from_secs(3)),
            lease: (Duration::from_secs(1), Duration::from_millis(300)),
            heartbeat: Duration::from_millis(200),
            recovery: Duration::from_millis(50),
            cool_down: Duration::from_millis(100),
            fail_safe_backoff: Duration::from_millis(200),
            loader_timeouts: (Duration::from_millis(100), Duration::from_secs(1)),
            // The memory queue keeps batch ages on the wall clock: under virtual time a
            // short age would spin; batches go out when full (3) or on flush.
            wb_max_age: Duration::from_secs(3600),
            settle: Duration::from_millis(1600),
            quiet: Duration::from_millis(400),
            op_timeout: Duration::from_secs(30),
            stampede_load: Duration::from_millis(50),
        }
    }

    /// The run on a real Redis (real time: short values).
    pub fn redis() -> Timing {
        Timing {
            l1_ttl: Duration::from_secs(60),
            l2_ttl: Duration::from_secs(120),
            short_ttl: (Duration::from_millis(700), Duration::from_millis(1400)),
            lease: (Duration::from_millis(500), Duration::from_millis(150)),
            heartbeat: Duration::from_millis(100),
            recovery: Duration::from_millis(50),
            cool_down: Duration::from_millis(100),
            fail_safe_backoff: Duration::from_millis(100),
            loader_timeouts: (Duration::from_millis(50), Duration::from_millis(400)),
            wb_max_age: Duration::from_millis(30),
            settle: Duration::from_millis(1200),
            quiet: Duration::from_millis(400),
            op_timeout: Duration::from_secs(15),
            stampede_load: Duration::from_millis(50),
        }
    }
}

/// A repair the application makes after an operation returned an error.
#[derive(Debug, Clone, Copy)]
pub enum Repair {
    /// Invalidate the key again.
    Invalidate(&'static str),
    /// Invalidate the tag again.
    Tag(&'static str),
    /// Clear the namespace again.
    Clear,
}

/// What the operations of a seed share.
#[derive(Clone)]
pub struct Ctx {
    /// The model database.
    pub db: Arc<Db>,
    /// The faults.
    pub faults: Arc<Faults>,
    /// The trace.
    pub trace: Trace,
    /// The failures.
    pub fails: Failures,
    /// Which keys the application wrote with which tag (since the tag's last invalidation).
    pub tags: Arc<Mutex<BTreeMap<&'static str, BTreeSet<&'static str>>>>,
    /// Repairs to make once the faults stop.
    pub repairs: Arc<Mutex<Vec<Repair>>>,
    /// The seed's settings.
    pub cfg: Arc<SeedConfig>,
    /// The run's durations.
    pub timing: Timing,
}

impl Ctx {
    fn fail(&self, category: &'static str, detail: impl Into<String>) {
        self.fails.add(&self.trace, category, detail);
    }

    fn source(&self, node: usize) -> Source {
        Source {
            db: self.db.clone(),
            faults: self.faults.clone(),
            node,
        }
    }

    /// A value returned for `key` must be one the key had at some time.
    fn check_value(&self, what: &str, key: &str, got: Value) {
        if !self.db.ever(key, got) {
            self.fail(
                "phantom-value",
                format!(
                    "{what}: {key:?} returned {got:?}, a value it never had (now {:?})",
                    self.db.read(key)
                ),
            );
        }
    }

    /// An error returned to the application must be one the operation may return.
    fn check_error(&self, what: &str, e: &Error, allowed: &[ErrorKind]) {
        if e.kind() == ErrorKind::Closed {
            self.fail("closed-error", format!("{what}: {e}"));
        } else if !allowed.contains(&e.kind()) {
            self.fail("unexpected-error", format!("{what}: {e}"));
        }
    }

    /// Errors a read that runs the loader may return.
    fn load_errors(&self) -> Vec<ErrorKind> {
        let mut kinds = vec![ErrorKind::Loader];
        if self.cfg.timeouts {
            kinds.push(ErrorKind::Timeout);
        }
        kinds
    }

    fn judge_one(
        &self,
        what: &str,
        key: &str,
        result: cache_tiered::Result<Value>,
        none_answers: bool,
        allowed: &[ErrorKind],
    ) -> String {
        if key == INVALID {
            return match result {
                Err(e) if e.kind() == ErrorKind::InvalidKey => "InvalidKey, as expected".into(),
                other => {
                    self.fail("invalid-key-accepted", format!("{what}: {other:?}"));
                    format!("{other:?}")
                }
            };
        }
        match result {
            Ok(v) => {
                if v.is_some() || none_answers {
                    self.check_value(what, key, v);
                }
                format!("{v:?}")
            }
            Err(e) => {
                self.check_error(what, &e, allowed);
                if e.kind() == ErrorKind::NotFound {
                    self.check_value(what, key, None);
                }
                format!("Err({})", e.kind())
            }
        }
    }

    fn judge_many(
        &self,
        what: &str,
        keys: &[&str],
        result: cache_tiered::Result<Vec<Option<Arc<u64>>>>,
        none_answers: bool,
        allowed: &[ErrorKind],
    ) -> String {
        if keys.contains(&INVALID) {
            return match result {
                Err(e) if e.kind() == ErrorKind::InvalidKey => "InvalidKey, as expected".into(),
                other => {
                    self.fail("invalid-key-accepted", format!("{what}: {other:?}"));
                    format!("{other:?}")
                }
            };
        }
        match result {
            Ok(values) => {
                if values.len() != keys.len() {
                    self.fail(
                        "batch-misaligned",
                        format!("{what}: {} answers for {} keys", values.len(), keys.len()),
                    );
                }
                let values: Vec<Value> = values.iter().map(|v| v.as_deref().copied()).collect();
                for (k, v) in keys.iter().zip(&values) {
                    if v.is_some() || none_answers {
                        self.check_value(what, k, *v);
                    }
                }
                format!("{values:?}")
            }
            Err(e) => {
                self.check_error(what, &e, allowed);
                format!("Err({})", e.kind())
            }
        }
    }

    fn repair_later(&self, repair: Repair) {
        self.trace
            .log(format!("   (the application will retry: {repair:?})"));
        lock(&self.repairs).push(repair);
    }
}

/// What an operation runs on.
#[derive(Clone)]
pub struct Target {
    /// The instance.
    pub node: usize,
    /// The main-namespace cache handle.
    pub cache: C,
    /// The write-behind namespace's cache.
    pub wb_cache: C,
    /// The instance's write-behind queue.
    pub wb: Wb,
    /// Every instance's engine (to ask whether writes are queued for recovery).
    pub engines: Vec<Engine>,
}

/// Does any of `engines` still hold L2 writes queued for recovery?
fn replays_pending(engines: &[Engine]) -> bool {
    engines
        .iter()
        .any(|e| e.recovery_stats().is_some_and(|r| r.pending > 0))
}

/// Run one (non-structural) operation, bounded in time, and trace it.
pub async fn run_op(ctx: Ctx, target: Target, op: Op) {
    let text = describe(&op);
    ctx.trace.log(format!("-> {text}"));
    let outcome = match tokio::time::timeout(ctx.timing.op_timeout, exec(&ctx, &target, op)).await {
        Ok(s) => s,
        Err(_) => {
            ctx.fail(
                "hang",
                format!("{text} did not finish within {:?}", ctx.timing.op_timeout),
            );
            "HANG".into()
        }
    };
    ctx.trace.log(format!("<- {text}: {outcome}"));
}

async fn exec(ctx: &Ctx, t: &Target, op: Op) -> String {
    let what = describe(&op);
    let src = ctx.source(t.node);
    let db = &ctx.db;
    match op {
        Op::Get { key, .. } => {
            let r = t.cache.get(key).await.map(|v| v.as_deref().copied());
            ctx.judge_one(&what, key, r, false, &[])
        }
        Op::GetOrLoad { key, plan, .. } => {
            let r = t
                .cache
                .get_or_load(key, src.loader(plan))
                .await
                .map(|v| Some(*v));
            let mut allowed = ctx.load_errors();
            allowed.push(ErrorKind::NotFound);
            ctx.judge_one(&what, key, r, true, &allowed)
        }
        Op::GetOrLoadOpt { key, plan, .. } => {
            let r = t
                .cache
                .get_or_load_optional(key, src.optional_loader(plan))
                .await
                .map(|v| v.as_deref().copied());
            ctx.judge_one(&what, key, r, true, &ctx.load_errors())
        }
        Op::Refresh { key, plan, .. } => {
            // In the background: its value is judged by the reads that follow, and by the
            // invariants once everything settles.
            match t.cache.refresh(key, src.loader(plan)) {
                Ok(started) => {
                    if key == INVALID {
                        ctx.fail("invalid-key-accepted", format!("{what}: Ok({started})"));
                    }
                    format!("Ok({started})")
                }
                Err(e) if key == INVALID && e.kind() == ErrorKind::InvalidKey => {
                    "InvalidKey, as expected".into()
                }
                Err(e) => {
                    ctx.check_error(&what, &e, &[]);
                    format!("Err({})", e.kind())
                }
            }
        }
        Op::GetMany { keys, .. } => {
            let r = t.cache.get_many(&keys).await;
            ctx.judge_many(&what, &keys, r, false, &[])
        }
        Op::GetManyOrLoad { keys, plan, .. } => {
            let r = t
                .cache
                .get_many_or_load(&keys, src.batch_loader(plan))
                .await;
            ctx.judge_many(&what, &keys, r, true, &ctx.load_errors())
        }
        Op::Set { key, .. } => {
            let v = db.fresh();
            db.write(key, Some(v));
            match t.cache.set(key, v).await {
                Ok(()) => format!("set {v}"),
                Err(e) => {
                    ctx.fail("set-error", format!("{what}: {e}"));
                    ctx.repair_later(Repair::Invalidate(key));
                    format!("Err({})", e.kind())
                }
            }
        }
        Op::SetWithTags { key, tags, .. } => {
            let v = db.fresh();
            db.write(key, Some(v));
            match t.cache.set_with_tags(key, v, &tags).await {
                Ok(()) => {
                    let mut model = lock(&ctx.tags);
                    for tag in &tags {
                        model.entry(*tag).or_default().insert(key);
                    }
                    format!("set {v}")
                }
                Err(e) => {
                    ctx.fail("set-error", format!("{what}: {e}"));
                    ctx.repair_later(Repair::Invalidate(key));
                    format!("Err({})", e.kind())
                }
            }
        }
        Op::Write { key, .. } => {
            let v = db.fresh();
            let writer = src.clone();
            let r = t
                .cache
                .write(key, v, move |k, value: Arc<u64>| {
                    writer.write_row(k, *value)
                })
                .await;
            match r {
                Ok(()) => format!("wrote {v}"),
                Err(e) if e.kind() == ErrorKind::Writer => "the source refused; unchanged".into(),
                Err(e) => {
                    // The source has the value; the library promises to have dropped the key.
                    ctx.check_error(&what, &e, &[e.kind()]);
                    format!("source has {v}, cache update failed: {}", e.kind())
                }
            }
        }
        Op::Invalidate { key, delete, .. } => {
            let v = if delete { None } else { Some(db.fresh()) };
            db.write(key, v);
            match t.cache.invalidate(key).await {
                Ok(()) => format!("row is {v:?}"),
                Err(e) => {
                    ctx.fail("invalidate-error", format!("{what}: {e}"));
                    ctx.repair_later(Repair::Invalidate(key));
                    format!("Err({})", e.kind())
                }
            }
        }
        Op::InvalidateTag { tag, .. } => {
            let members: Vec<&'static str> = lock(&ctx.tags)
                .get(tag)
                .map(|m| m.iter().copied().collect())
                .unwrap_or_default();
            for m in &members {
                db.write(m, Some(db.fresh()));
            }
            // A tagged write whose tag_add failed on another instance joins the index only when
            // that instance settles it (deleting the key and announcing it everywhere): while
            // it is queued, the count may miss it.
            let pending_before = replays_pending(&t.engines);
            match t.cache.invalidate_tag(tag).await {
                Ok(n) => {
                    let pending = pending_before || replays_pending(&t.engines);
                    tag_done(ctx, &what, tag, &members, n, pending);
                    format!("{n} keys (rows updated: {members:?})")
                }
                Err(e) => {
                    ctx.check_error(&what, &e, &[e.kind()]);
                    ctx.repair_later(Repair::Tag(tag));
                    format!("Err({}) (rows updated: {members:?})", e.kind())
                }
            }
        }
        Op::Clear { bulk, .. } => {
            if bulk {
                for k in KEYS {
                    db.write(k, Some(db.fresh()));
                }
            }
            match t.cache.clear_namespace().await {
                Ok(n) => format!("{n} L2 keys deleted"),
                Err(e) => {
                    ctx.check_error(&what, &e, &[e.kind()]);
                    if bulk {
                        ctx.repair_later(Repair::Clear);
                    }
                    format!("Err({})", e.kind())
                }
            }
        }
        Op::WriteBehind { key } => {
            let v = db.fresh();
            db.note(key, Some(v));
            match t.wb.write_behind(key, v).await {
                Ok(()) => format!("accepted {v}"),
                Err(e) => {
                    ctx.fail("write-behind-error", format!("{what}: {e}"));
                    format!("Err({})", e.kind())
                }
            }
        }
        Op::WbGet { key, .. } => {
            let r = t.wb_cache.get(key).await.map(|v| v.as_deref().copied());
            ctx.judge_one(&what, key, r, false, &[])
        }
        Op::GetWith { key, mode, .. } => {
            let options = match mode {
                ReadMode::SkipL1Read => CallOptions::new().skip_l1_read(),
                ReadMode::SkipL2Read => CallOptions::new().skip_l2_read(),
                ReadMode::SkipL1Write => CallOptions::new().skip_l1_write(),
            };
            let r = t
                .cache
                .get_with(key, &options)
                .await
                .map(|v| v.as_deref().copied());
            ctx.judge_one(&what, key, r, false, &[])
        }
        Op::LoadWith {
            key,
            plan,
            answer,
            skip_l2_read,
            ..
        } => {
            let options = if skip_l2_read {
                CallOptions::new().skip_l2_read()
            } else {
                CallOptions::new()
            };
            let r = t
                .cache
                .get_or_load_with(key, &options, src.context_loader(plan, answer))
                .await
                .map(|v| v.as_deref().copied());
            ctx.judge_one(&what, key, r, true, &ctx.load_errors())
        }
        Op::SetWith { key, mode, .. } => {
            let v = db.fresh();
            db.write(key, Some(v));
            let options = match mode {
                WriteMode::Background => CallOptions::new().background_l2_write(),
                WriteMode::SkipL2Write => CallOptions::new().skip_l2_write(),
                WriteMode::SkipL1Write => CallOptions::new().skip_l1_write(),
            };
            match t.cache.set_with(key, v, &options).await {
                Ok(()) if matches!(mode, WriteMode::Background) => {
                    if t.cache
                        .get_local(key)
                        .is_some_and(|held| held.as_deref() != Some(&v))
                    {
                        ctx.fail(
                            "background-write-not-in-l1",
                            format!("{what}: L1 holds {:?}", t.cache.get_local(key)),
                        );
                    }
                    // Until it lands, a background write races with other instances' writes
                    // of the key (documented): the application waits for it before the next
                    // write of the key, as it would for a `set`.
                    let engine = t.cache.engine().clone();
                    let mut waited = 0;
                    while engine.background_writes() > 0 && waited < 10_000 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        waited += 1;
                    }
                    format!("set {v} (in the background, landed after {waited} ms)")
                }
                Ok(()) => format!("set {v}"),
                Err(e) => {
                    ctx.fail("set-error", format!("{what}: {e}"));
                    ctx.repair_later(Repair::Invalidate(key));
                    format!("Err({})", e.kind())
                }
            }
        }
        Op::Expire { key, .. } => {
            let v = Some(db.fresh());
            db.write(key, v);
            match t.cache.expire(key).await {
                Ok(()) => format!("row is {v:?}"),
                Err(e) => {
                    ctx.fail("expire-error", format!("{what}: {e}"));
                    ctx.repair_later(Repair::Invalidate(key));
                    format!("Err({})", e.kind())
                }
            }
        }
        Op::WbFlush { .. }
        | Op::WbClear { .. }
        | Op::AddHandle { .. }
        | Op::DropHandle { .. }
        | Op::Restart { .. } => "structural operations run elsewhere".into(),
    }
}

/// After a successful `invalidate_tag`: the tag is empty, and it must have held at least the
/// keys the application wrote with it, unless some instance still has L2 writes queued for
/// recovery (a tagged `set` queued during an outage reaches L2, tag included, only when it is
/// replayed; whether that replay may land after this invalidation is left to the final
/// checks, which see its value).
fn tag_done(
    ctx: &Ctx,
    what: &str,
    tag: &'static str,
    members: &[&'static str],
    n: u64,
    replays_pending: bool,
) {
    lock(&ctx.tags).entry(tag).or_default().clear();
    if !ctx.cfg.short_ttl && !replays_pending && (n as usize) < members.len() {
        ctx.fail(
            "tag-membership-lost",
            format!(
                "{what}: the tag held {n} keys, but {members:?} were written with it since its \
                 last invalidation"
            ),
        );
    }
}

/// Where the instances' L2 and bus come from.
pub enum Backend {
    /// The shared in-memory L2 and bus, behind the fault layers, on virtual time.
    Memory {
        /// The L2.
        store: Arc<MemoryStore>,
        /// The bus.
        bus: Arc<MemoryBus>,
        /// The clock.
        clock: Arc<VirtualClock>,
    },
    /// A real Redis, one fault proxy per instance.
    Redis {
        /// The proxies.
        proxies: Arc<Vec<FaultProxy>>,
    },
}

/// One instance.
pub struct Node {
    /// How many times this slot's engine was built before.
    pub generation: u32,
    /// The engine.
    pub engine: Engine,
    /// Main-namespace handles (at least one).
    pub caches: Vec<C>,
    /// The write-behind namespace's cache.
    pub wb_cache: C,
    /// The write-behind queue.
    pub wb: Wb,
}

/// Every instance of a seed.
pub struct World {
    /// What the operations share.
    pub ctx: Ctx,
    /// Key prefix of the engines.
    pub prefix: String,
    /// Where L2 and the bus come from.
    pub backend: Backend,
    /// The instances.
    pub nodes: Vec<Node>,
    /// An engine was rebuilt during the run.
    pub restarted: bool,
}

impl World {
    /// Build the instances.
    pub async fn new(ctx: Ctx, prefix: String, backend: Backend) -> Result<World, String> {
        let mut world = World {
            ctx,
            prefix,
            backend,
            nodes: Vec::new(),
            restarted: false,
        };
        for k in KEYS {
            // Two rows start absent.
            let v = if matches!(k, "k0" | "k3") {
                None
            } else {
                Some(world.ctx.db.fresh())
            };
            world.ctx.db.write(k, v);
        }
        for k in WB_KEYS {
            world.ctx.db.write(k, Some(world.ctx.db.fresh()));
        }
        for slot in 0..world.ctx.cfg.nodes {
            let node = world.build_node(slot, 0).await?;
            world.nodes.push(node);
        }
        Ok(world)
    }

    fn cache_builder(&self, engine: &Engine, namespace: &str) -> CacheBuilder<u64, MsgPack> {
        let cfg = &self.ctx.cfg;
        let t = &self.ctx.timing;
        let (l1, l2) = if cfg.short_ttl {
            t.short_ttl
        } else {
            (t.l1_ttl, t.l2_ttl)
        };
        let mut b = engine
            .cache::<u64, MsgPack>(namespace)
            .with_l1_ttl(l1)
            .with_l2_ttl(l2)
            .with_negative_ttl(l1)
            .with_jitter(if cfg.jitter { 0.1 } else { 0.0 })
            .with_lease_timing(t.lease.0, t.lease.1);
        if cfg.fail_safe {
            b = b.with_fail_safe(Duration::from_secs(10), t.fail_safe_backoff);
        }
        if cfg.timeouts {
            b = b.with_loader_timeouts(Some(t.loader_timeouts.0), Some(t.loader_timeouts.1));
        }
        if cfg.short_ttl {
            b = b.with_refresh_policy(Arc::new(XFetch::new(1.0)));
        }
        b
    }

    fn main_cache(&self, engine: &Engine) -> Result<C, String> {
        self.cache_builder(engine, "main")
            .build()
            .map_err(|e| format!("building a cache: {e}"))
    }

    async fn build_node(&self, slot: usize, generation: u32) -> Result<Node, String> {
        let t = &self.ctx.timing;
        let cfg = &self.ctx.cfg;
        let mut bus_config = BusConfig::default()
            .with_heartbeat(t.heartbeat)
            .with_on_loss(cfg.on_loss);
        if cfg.batch_window {
            bus_config = bus_config.with_batch_window(Duration::from_millis(5));
        }
        let mut b = cache_tiered::builder(self.prefix.clone())
            .with_l1_capacity_bytes(256 * 1024)
            .with_bus_config(bus_config)
            .with_breaker(cfg.breaker.then(|| BreakerConfig::new(3, t.cool_down)))
            .with_recovery(10_000, t.recovery)
            .with_observer(Arc::new(TraceObserver {
                node: slot,
                trace: self.ctx.trace.clone(),
            }));
        b = match &self.backend {
            Backend::Memory { store, bus, clock } => b
                .with_remote(Arc::new(FaultStore::new(
                    store.clone(),
                    self.ctx.faults.clone(),
                    slot,
                )))
                .with_bus_transport(Arc::new(FaultBus::new(
                    bus.attach(),
                    self.ctx.faults.clone(),
                    slot,
                )))
                .with_clock(clock.clone()),
            Backend::Redis { proxies } => b.with_redis(
                RedisConfig::builder()
                    .with_url(proxies[slot].url())
                    .with_response_timeout(Duration::from_millis(250))
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
                    .build()
                    .map_err(|e| format!("redis config: {e}"))?,
            ),
        };
        let engine = b
            .build()
            .await
            .map_err(|e| format!("building engine n{slot}: {e}"))?;
        let caches = vec![self.main_cache(&engine)?];
        let wb_cache = self
            .cache_builder(&engine, "wb")
            .build()
            .map_err(|e| format!("building the wb cache: {e}"))?;
        let src = self.ctx.source(slot);
        let writer = move |batch: Batch<u64>| {
            let src = src.clone();
            async move {
                let keys: Vec<&str> = batch.iter().map(|(k, _)| k.as_str()).collect();
                if src.faults.writer_fails(src.node, &keys.join(" ")) {
                    return Err(app_error("source refused the batch (injected)"));
                }
                for (k, v) in batch {
                    src.db.write(&k, Some(*v));
                }
                Ok(())
            }
        };
        let wb = WriteBehind::builder(wb_cache.clone(), writer)
            .with_max_batch(3)
            .with_max_age(t.wb_max_age)
            .with_retry(Duration::from_millis(10), Duration::from_millis(50))
            .build()
            .await
            .map_err(|e| format!("building write-behind: {e}"))?;
        self.ctx.trace.log(format!(
            "n{slot} engine built (generation {generation}, bus instance {:x})",
            engine.instance_id().unwrap_or(0) >> 48
        ));
        Ok(Node {
            generation,
            engine,
            caches,
            wb_cache,
            wb,
        })
    }

    fn slot(&self, node: usize) -> usize {
        node % self.nodes.len()
    }

    fn target(&self, op: &Op) -> Target {
        let (node, handle) = match op {
            Op::Get { node, handle, .. }
            | Op::GetOrLoad { node, handle, .. }
            | Op::GetOrLoadOpt { node, handle, .. }
            | Op::Refresh { node, handle, .. }
            | Op::GetMany { node, handle, .. }
            | Op::GetManyOrLoad { node, handle, .. }
            | Op::Set { node, handle, .. }
            | Op::SetWithTags { node, handle, .. }
            | Op::Write { node, handle, .. }
            | Op::Invalidate { node, handle, .. }
            | Op::InvalidateTag { node, handle, .. }
            | Op::Clear { node, handle, .. }
            | Op::GetWith { node, handle, .. }
            | Op::LoadWith { node, handle, .. }
            | Op::SetWith { node, handle, .. }
            | Op::Expire { node, handle, .. }
            | Op::DropHandle { node, handle } => (*node, *handle),
            Op::WriteBehind { key } => (wb_owner(key), 0),
            Op::WbGet { node, .. }
            | Op::WbFlush { node }
            | Op::WbClear { node }
            | Op::AddHandle { node }
            | Op::Restart { node } => (*node, 0),
        };
        let slot = self.slot(node);
        let n = &self.nodes[slot];
        Target {
            node: slot,
            cache: n.caches[handle % n.caches.len()].clone(),
            wb_cache: n.wb_cache.clone(),
            wb: n.wb.clone(),
            engines: self.nodes.iter().map(|n| n.engine.clone()).collect(),
        }
    }

    /// Run the steps of the seed.
    pub async fn run(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::One(op) if op.solo() => self.structural(op).await,
                Step::One(op) => {
                    let t = self.target(&op);
                    run_op(self.ctx.clone(), t, op).await;
                }
                Step::Many(ops) => {
                    self.ctx
                        .trace
                        .log(format!("together: {} operations", ops.len()));
                    let tasks: Vec<_> = ops
                        .into_iter()
                        .map(|(delay, op)| {
                            let t = self.target(&op);
                            let ctx = self.ctx.clone();
                            tokio::spawn(async move {
                                if delay > 0 {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                }
                                run_op(ctx, t, op).await;
                            })
                        })
                        .collect();
                    for task in tasks {
                        if let Err(e) = task.await {
                            self.ctx
                                .fail("panic", format!("an operation task failed: {e}"));
                        }
                    }
                }
                Step::Pause(ms) => {
                    self.ctx.trace.log(format!("pause {ms} ms"));
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Step::Fault(w) => self.window(w),
            }
        }
    }

    /// Operations that change the instances.
    async fn structural(&mut self, op: Op) {
        let text = describe(&op);
        let timeout = self.ctx.timing.op_timeout;
        match op {
            Op::WbFlush { node } => {
                let wb = self.nodes[self.slot(node)].wb.clone();
                let r = tokio::time::timeout(timeout, wb.flush()).await;
                self.judge_flush(&text, r);
            }
            Op::WbClear { node } => {
                for i in 0..self.nodes.len() {
                    let wb = self.nodes[i].wb.clone();
                    let r = tokio::time::timeout(timeout, wb.flush()).await;
                    self.judge_flush(&format!("{text}: flush n{i}"), r);
                }
                let cache = self.nodes[self.slot(node)].wb_cache.clone();
                let r = cache.clear_namespace().await;
                if let Err(e) = &r {
                    self.ctx.check_error(&text, e, &[e.kind()]);
                }
                self.ctx.trace.log(format!("{text}: {r:?}"));
            }
            Op::AddHandle { node } => {
                let slot = self.slot(node);
                match self.main_cache(&self.nodes[slot].engine) {
                    Ok(c) => {
                        self.nodes[slot].caches.push(c);
                        self.ctx.trace.log(format!(
                            "{text}: now {} handles",
                            self.nodes[slot].caches.len()
                        ));
                    }
                    Err(e) => self.ctx.fail("build-error", format!("{text}: {e}")),
                }
            }
            Op::DropHandle { node, handle } => {
                let slot = self.slot(node);
                let caches = &mut self.nodes[slot].caches;
                if caches.len() > 1 {
                    let i = handle % caches.len();
                    caches.remove(i);
                    self.ctx
                        .trace
                        .log(format!("{text}: dropped h{i}, {} left", caches.len()));
                } else {
                    self.ctx.trace.log(format!("{text}: skipped (last handle)"));
                }
            }
            Op::Restart { node } => {
                let slot = self.slot(node);
                let pending = self.nodes[slot]
                    .engine
                    .recovery_stats()
                    .map_or(0, |s| s.pending);
                if pending > 0 {
                    // The recovery queue lives in the process: dropping it loses the writes
                    // (documented). The application restarts once it has drained.
                    self.ctx.trace.log(format!(
                        "{text}: skipped ({pending} L2 writes still queued for recovery)"
                    ));
                    return;
                }
                let wb = self.nodes[slot].wb.clone();
                let r = tokio::time::timeout(timeout, wb.shutdown()).await;
                self.judge_flush(&format!("{text}: write-behind shutdown"), r);
                // The engine's own shutdown: nothing is queued for recovery (above), so it
                // only publishes what is queued and stops its tasks, within its deadline.
                let started = tokio::time::Instant::now();
                let report = self.nodes[slot].engine.shutdown(timeout).await;
                if started.elapsed() > timeout + Duration::from_secs(1) {
                    self.ctx.fail(
                        "hang",
                        format!("{text}: engine shutdown took {:?}", started.elapsed()),
                    );
                }
                if report.unsettled_recovery > 0 {
                    self.ctx
                        .fail("shutdown-unsettled", format!("{text}: {report:?}"));
                }
                self.ctx
                    .trace
                    .log(format!("{text}: engine shutdown {report:?}"));
                let generation = self.nodes[slot].generation + 1;
                match self.build_node(slot, generation).await {
                    Ok(n) => {
                        // The old engine is dropped here.
                        self.nodes[slot] = n;
                        self.restarted = true;
                    }
                    Err(e) => self.ctx.fail("build-error", format!("{text}: {e}")),
                }
            }
            other => {
                let t = self.target(&other);
                run_op(self.ctx.clone(), t, other).await;
            }
        }
    }

    fn judge_flush(
        &self,
        what: &str,
        r: Result<cache_tiered::Result<()>, tokio::time::error::Elapsed>,
    ) {
        match r {
            Ok(Ok(())) => self.ctx.trace.log(format!("{what}: done")),
            Ok(Err(e)) => self.ctx.fail("write-behind-error", format!("{what}: {e}")),
            Err(_) => self.ctx.fail("hang", format!("{what}: did not finish")),
        }
    }

    /// Start a fault window; it ends by itself.
    fn window(&self, w: FaultWindow) {
        // The window opens now, in step order (so never after the faults stopped); a task
        // closes it.
        let faults = self.ctx.faults.clone();
        let nodes = self.nodes.len();
        match &self.backend {
            Backend::Memory { .. } => {
                let ms = match w {
                    FaultWindow::L2Down { node, ms } => {
                        faults.l2_outage(node.map(|n| n % nodes), true);
                        ms
                    }
                    FaultWindow::BusDown { node, ms } => {
                        faults.disconnect(node % nodes);
                        ms
                    }
                    FaultWindow::Slow { extra, ms } => {
                        faults.latency_spike(extra);
                        ms
                    }
                };
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    match w {
                        FaultWindow::L2Down { node, .. } => {
                            faults.l2_outage(node.map(|n| n % nodes), false);
                        }
                        FaultWindow::BusDown { node, .. } => faults.reconnect(node % nodes),
                        FaultWindow::Slow { .. } => faults.latency_spike(0),
                    }
                });
            }
            Backend::Redis { proxies } => {
                let trace = self.ctx.trace.clone();
                let (which, mode, ms): (Vec<usize>, Mode, u64) = match w {
                    FaultWindow::L2Down { node, ms } => (
                        node.map_or((0..nodes).collect(), |n| vec![n % nodes]),
                        Mode::Blackhole,
                        ms,
                    ),
                    FaultWindow::BusDown { node, .. } => {
                        trace.log(format!("  fault: n{} connections reset", node % nodes));
                        proxies[node % nodes].reset_all();
                        return;
                    }
                    FaultWindow::Slow { extra, ms } => (
                        (0..nodes).collect(),
                        Mode::Delay(Duration::from_millis(extra)),
                        ms,
                    ),
                };
                trace.log(format!("  fault: proxies {which:?} {mode:?} for {ms} ms"));
                for i in &which {
                    proxies[*i].set_mode(mode);
                }
                let proxies = proxies.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    for i in &which {
                        proxies[*i].set_mode(Mode::Pass);
                    }
                    trace.log(format!("  fault: proxies {which:?} pass again"));
                });
            }
        }
    }

    /// Stop the faults, let everything settle, make the application's repairs.
    pub async fn settle(&mut self) {
        let t = self.ctx.timing;
        self.ctx.faults.stop();
        if let Backend::Redis { proxies } = &self.backend {
            for p in proxies.iter() {
                p.set_mode(Mode::Pass);
            }
        }
        tokio::time::sleep(t.settle).await;
        let repairs: Vec<Repair> = std::mem::take(&mut *lock(&self.ctx.repairs));
        for repair in repairs {
            let cache = self.nodes[0].caches[0].clone();
            let mut done = false;
            for attempt in 0..5 {
                let what = format!("repair {repair:?} (attempt {attempt})");
                let r = match repair {
                    Repair::Invalidate(key) => cache.invalidate(key).await.map(|()| 0),
                    Repair::Tag(tag) => {
                        let members: Vec<&'static str> = lock(&self.ctx.tags)
                            .get(tag)
                            .map(|m| m.iter().copied().collect())
                            .unwrap_or_default();
                        let r = cache.invalidate_tag(tag).await;
                        if let Ok(n) = &r {
                            tag_done(&self.ctx, &what, tag, &members, *n, false);
                        }
                        r
                    }
                    Repair::Clear => cache.clear_namespace().await,
                };
                self.ctx.trace.log(format!("{what}: {r:?}"));
                if r.is_ok() {
                    done = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !done {
                self.ctx.fail(
                    "repair-failed",
                    format!("{repair:?} still fails with the faults stopped"),
                );
            }
        }
        for i in 0..self.nodes.len() {
            let wb = self.nodes[i].wb.clone();
            let r = tokio::time::timeout(t.op_timeout, wb.flush()).await;
            self.judge_flush(&format!("settle: flush n{i} write-behind"), r);
        }
        tokio::time::sleep(t.quiet).await;
        self.ctx.trace.log("settled; checking");
    }

    /// The invariants after quiescence.
    pub async fn check(&mut self, memory: bool) {
        let ctx = self.ctx.clone();
        let db = &ctx.db;
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(r) = n.engine.recovery_stats() {
                if r.pending != 0 || r.dropped != 0 {
                    ctx.fail(
                        "recovery-not-drained",
                        format!("n{i}: {r:?} after the faults stopped"),
                    );
                }
            }
            match n.wb.depth().await {
                Ok(0) => {}
                other => ctx.fail(
                    "write-behind-not-drained",
                    format!("n{i}: depth {other:?} after flush"),
                ),
            }
        }
        let all: Vec<(&'static str, bool)> = KEYS
            .iter()
            .map(|k| (*k, false))
            .chain(WB_KEYS.iter().map(|k| (*k, true)))
            .collect();
        // A stale key is reported once, by the first pass that sees it.
        let mut reported: BTreeSet<&'static str> = BTreeSet::new();
        // 1. What the instances hold now (L1, else L2) must be the database's value.
        for (key, wb) in &all {
            let want = db.read(key);
            let mut l1 = Vec::new();
            let mut l2 = Vec::new();
            for (i, n) in self.nodes.iter().enumerate() {
                let c = if *wb { &n.wb_cache } else { &n.caches[0] };
                if let Some(held) = c.get_local(key) {
                    let held = held.as_deref().copied();
                    if held != want {
                        l1.push(format!("n{i} {held:?}"));
                    }
                    continue;
                }
                match c.get(key).await {
                    Ok(Some(v)) if Some(*v) != want => l2.push(format!("n{i} {v}")),
                    Ok(_) => {}
                    Err(e) => ctx.fail("unexpected-error", format!("n{i} get {key:?}: {e}")),
                }
            }
            if !l1.is_empty() {
                reported.insert(key);
                ctx.fail(
                    "stale-l1",
                    format!(
                        "{key:?}: L1 holds {}{}, the database {want:?}",
                        l1.join(", "),
                        if l2.is_empty() {
                            String::new()
                        } else {
                            format!(" (read from L2 by the others: {})", l2.join(", "))
                        }
                    ),
                );
            } else if !l2.is_empty() {
                reported.insert(key);
                ctx.fail(
                    "stale-l2",
                    format!("{key:?}: L2 gives {}, the database {want:?}", l2.join(", ")),
                );
            }
        }
        // 2. A load returns the database's value, with at most one loader call per key in all
        //    (the first instance loads and fills L2, the others read it).
        let before: Vec<u64> = all.iter().map(|(k, _)| db.loads_of_key(k)).collect();
        for (i, n) in self.nodes.iter().enumerate() {
            for (key, wb) in &all {
                let c = if *wb { &n.wb_cache } else { &n.caches[0] };
                self.load_and_compare(&mut reported, &format!("n{i} h0"), c, i, key)
                    .await;
            }
        }
        for ((key, _), before) in all.iter().zip(before) {
            let calls = db.loads_of_key(key) - before;
            if calls > 1 && !reported.contains(key) {
                ctx.fail(
                    "loader-bound",
                    format!(
                        "{key:?}: {calls} loader calls across {} instances, loading one after \
                         the other with L2 up",
                        self.nodes.len()
                    ),
                );
            }
        }
        // 3. `get` agrees.
        for (i, n) in self.nodes.iter().enumerate() {
            for (key, wb) in &all {
                let c = if *wb { &n.wb_cache } else { &n.caches[0] };
                let want = db.read(key);
                match c.get(key).await {
                    Ok(v) if v.as_deref().copied() == want => {}
                    _ if reported.contains(key) => {}
                    other => {
                        reported.insert(key);
                        ctx.fail(
                            "get-disagrees",
                            format!(
                                "n{i} get {key:?} = {:?} after a load, the database {want:?}",
                                other.map(|v| v.as_deref().copied())
                            ),
                        );
                    }
                }
            }
        }
        // 4. Every handle loads (nothing left in flight), from L2 without the loader.
        for (i, n) in self.nodes.iter().enumerate() {
            for (h, c) in n.caches.iter().enumerate() {
                for key in KEYS {
                    c.invalidate_local(key);
                    self.load_and_compare(&mut reported, &format!("n{i} h{h}"), c, i, key)
                        .await;
                }
            }
        }
        // 5. A cold key loaded by every instance at once: one loader call in all.
        let cold = db.fresh();
        db.write(COLD, Some(cold));
        let plan = LoadPlan {
            sleep_ms: ctx.timing.stampede_load.as_millis() as u64,
            read_first: false,
        };
        let mut tasks = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for _ in 0..2 {
                let c = n.caches[n.caches.len() - 1].clone();
                let loader = ctx.source(i).loader(plan);
                tasks.push(tokio::spawn(
                    async move { c.get_or_load(COLD, loader).await },
                ));
            }
        }
        for task in tasks {
            match tokio::time::timeout(ctx.timing.op_timeout, task).await {
                Ok(Ok(Ok(v))) if *v == cold => {}
                other => ctx.fail(
                    "stampede-wrong-value",
                    format!("cold key: {:?}", other.map(|r| r.map(|r| r.map(|v| *v)))),
                ),
            }
        }
        let loads = db.loads_of_key(COLD);
        if loads != 1 {
            ctx.fail(
                "stampede-bound",
                format!(
                    "{loads} loader calls for a cold key loaded at once by {} instances",
                    self.nodes.len()
                ),
            );
        }
        // 6. Counters.
        for (i, n) in self.nodes.iter().enumerate() {
            let l1 = n.engine.l1_stats();
            let bound = (KEYS.len() + WB_KEYS.len() + 1) as u64;
            if l1.entries > bound {
                ctx.fail(
                    "l1-unbounded",
                    format!("n{i} L1 holds {} entries for {bound} keys", l1.entries),
                );
            }
            if !memory {
                continue;
            }
            let Some(bus) = n.engine.bus_stats() else {
                ctx.fail("bus-missing", format!("n{i} has no bus"));
                continue;
            };
            if !self.restarted
                && ctx.faults.bus_fired() == 0
                && (bus.losses != 0 || bus.publish_errors != 0)
            {
                ctx.fail(
                    "bus-false-loss",
                    format!("n{i}: {bus:?} although no bus fault fired and no engine restarted"),
                );
            }
            let injected = ctx.faults.reconnects(i);
            if bus.reconnects != injected {
                ctx.fail(
                    "bus-reconnects",
                    format!(
                        "n{i}: {} reconnects counted, {injected} injected",
                        bus.reconnects
                    ),
                );
            }
        }
    }

    /// `get_or_load_optional` through `c` must return the database's value, with at most one
    /// loader call for the key across all instances.
    async fn load_and_compare(
        &self,
        reported: &mut BTreeSet<&'static str>,
        who: &str,
        c: &C,
        node: usize,
        key: &'static str,
    ) {
        let ctx = &self.ctx;
        let want = ctx.db.read(key);
        let before = ctx.db.loads_of_key(key);
        let loader = ctx.source(node).optional_loader(LoadPlan::default());
        let r =
            tokio::time::timeout(ctx.timing.op_timeout, c.get_or_load_optional(key, loader)).await;
        match r {
            Ok(Ok(v)) if v.as_deref().copied() == want => {}
            Ok(Ok(_)) if reported.contains(key) => {}
            Ok(Ok(v)) => {
                reported.insert(key);
                ctx.fail(
                    "stale-after-load",
                    format!(
                        "{who} get_or_load_optional {key:?} = {:?}, the database {want:?}",
                        v.as_deref().copied()
                    ),
                );
            }
            Ok(Err(e)) if e.kind() == ErrorKind::Closed => ctx.fail(
                "stuck-in-flight",
                format!("{who} get_or_load_optional {key:?}: {e}"),
            ),
            Ok(Err(e)) => ctx.fail(
                "unexpected-error",
                format!("{who} get_or_load_optional {key:?}: {e}"),
            ),
            Err(_) => ctx.fail("hang", format!("{who} get_or_load_optional {key:?} hangs")),
        }
        let calls = ctx.db.loads_of_key(key) - before;
        if calls > 1 && !reported.contains(key) {
            ctx.fail(
                "loader-bound",
                format!("{who} {key:?}: {calls} loader calls for one load"),
            );
        }
    }

    /// Shut the write-behind queues down and drop everything.
    pub async fn teardown(self) {
        for n in &self.nodes {
            let _ = tokio::time::timeout(self.ctx.timing.op_timeout, n.wb.shutdown()).await;
        }
    }
}

fn wb_owner(key: &str) -> usize {
    WB_KEYS.iter().position(|k| *k == key).unwrap_or(0)
}
