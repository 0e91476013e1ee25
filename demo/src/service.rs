//! One service instance: its own tiercache engine (own L1, shared L2 and invalidation bus),
//! an axum router that reads and writes accounts through the cache, `/metrics` and `/stats`.
//! With [`Mode::CacheOff`] the same router serves the same routes with no engine at all:
//! every read is a database query (the demo's baseline run).

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cache_tiered::cache_metrics::metrics_exporter_prometheus::PrometheusHandle;
use cache_tiered::cache_metrics::{L1GaugeTask, MetricsObserver};
use cache_tiered::{
    Cache, CacheEvent, CacheObserver, Engine, MemoryBus, MemoryStore, MsgPack, Observer, XFetch,
};
use serde::{Deserialize, Serialize};

use crate::db::{Account, Db, Purpose};

/// Where this instance's L2 is.
pub enum L2Setup {
    Redis(String),
    /// Both instances share one in-process store and bus (no Redis on the machine).
    Embedded {
        store: Arc<MemoryStore>,
        bus: Arc<MemoryBus>,
    },
}

/// Event counts of one instance, fed by [`Counting`].
#[derive(Default)]
pub struct EventCounts {
    l1_hits: AtomicU64,
    l1_misses: AtomicU64,
    l2_hits: AtomicU64,
    l2_misses: AtomicU64,
    l2_errors: AtomicU64,
    loads: AtomicU64,
    coalesced: AtomicU64,
    lease_waits: AtomicU64,
    invalidations_sent: AtomicU64,
    invalidations_received: AtomicU64,
    invalidations_lost: AtomicU64,
}

/// An [`Observer`] that counts events for `/stats` and forwards them to the Prometheus
/// [`MetricsObserver`]: observers compose by wrapping.
struct Counting {
    metrics: MetricsObserver,
    counts: Arc<EventCounts>,
}

struct CountingCache {
    metrics: Arc<dyn CacheObserver>,
    counts: Arc<EventCounts>,
}

impl Observer for Counting {
    fn for_cache(&self, cache: &str) -> Arc<dyn CacheObserver> {
        Arc::new(CountingCache {
            metrics: self.metrics.for_cache(cache),
            counts: self.counts.clone(),
        })
    }

    fn on_engine_event(&self, event: CacheEvent) {
        self.metrics.on_engine_event(event);
    }
}

impl CacheObserver for CountingCache {
    fn on_event(&self, event: CacheEvent) {
        let c = &self.counts;
        let (counter, n) = match event {
            CacheEvent::L1Hit => (&c.l1_hits, 1),
            CacheEvent::L1Miss => (&c.l1_misses, 1),
            CacheEvent::L2Hit { .. } => (&c.l2_hits, 1),
            CacheEvent::L2Miss { .. } => (&c.l2_misses, 1),
            CacheEvent::L2Error { .. } => (&c.l2_errors, 1),
            CacheEvent::Load { .. } => (&c.loads, 1),
            CacheEvent::Coalesced => (&c.coalesced, 1),
            CacheEvent::LeaseWait => (&c.lease_waits, 1),
            CacheEvent::InvalidationsSent { keys } => (&c.invalidations_sent, u64::from(keys)),
            CacheEvent::InvalidationsReceived { keys } => {
                (&c.invalidations_received, u64::from(keys))
            }
            CacheEvent::InvalidationsLost => (&c.invalidations_lost, 1),
            _ => {
                self.metrics.on_event(event);
                return;
            }
        };
        counter.fetch_add(n, Ordering::Relaxed);
        self.metrics.on_event(event);
    }
}

/// Delete the accounts cached in Redis by an earlier run (whose database was another one),
/// before the instances start: through a short-lived engine without a bus, so that the
/// instances never see a publisher come and go.
pub async fn clear_redis(url: &str) -> Result<u64, cache_tiered::Error> {
    let engine = cache_tiered::builder("demo")
        .with_redis_url(url)
        .with_bus(false)
        .build()
        .await?;
    engine
        .cache::<Account, MsgPack>("accounts")
        .build()?
        .clear_namespace()
        .await
}

/// Request counters of one instance.
#[derive(Default)]
struct Requests {
    reads: AtomicU64,
    writes: AtomicU64,
    not_found: AtomicU64,
    errors: AtomicU64,
}

/// Whether an instance reads and writes through the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reads through L1, L2, then the database; writes through to all three.
    CacheOn,
    /// No engine: every read is a database query, every write only a database write.
    CacheOff,
}

/// The cache of an instance in [`Mode::CacheOn`].
struct Cached {
    engine: Engine,
    accounts: Cache<Account, MsgPack>,
    _l1_gauges: L1GaugeTask,
}

/// Everything a handler needs.
pub struct Instance {
    pub name: &'static str,
    l2_label: String,
    /// `None` in [`Mode::CacheOff`].
    cache: Option<Cached>,
    db: Arc<Db>,
    counts: Arc<EventCounts>,
    requests: Requests,
    /// Writes of one key are serialized in this instance (read-modify-write of the row,
    /// then the write-through, in that order).
    write_locks: Box<[tokio::sync::Mutex<()>]>,
    hasher: RandomState,
    metrics: PrometheusHandle,
}

impl Instance {
    pub async fn start(
        name: &'static str,
        mode: Mode,
        l2: &L2Setup,
        l2_label: String,
        db: Arc<Db>,
        metrics: PrometheusHandle,
    ) -> Result<Arc<Instance>, cache_tiered::Error> {
        let counts = Arc::new(EventCounts::default());
        let cache = match mode {
            Mode::CacheOn => Some(Instance::cache(name, l2, &counts).await?),
            Mode::CacheOff => None,
        };
        Ok(Arc::new(Instance {
            name,
            l2_label,
            cache,
            db,
            counts,
            requests: Requests::default(),
            write_locks: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
            metrics,
        }))
    }

    /// The engine and the `accounts` cache of an instance in [`Mode::CacheOn`].
    async fn cache(
        name: &'static str,
        l2: &L2Setup,
        counts: &Arc<EventCounts>,
    ) -> Result<Cached, cache_tiered::Error> {
        // One Prometheus recorder per process: the two instances share it, so each one's
        // series carry an `instance` label.
        let observer = MetricsObserver::new().with_label("instance", name);
        let builder = cache_tiered::builder("demo")
            .with_l1_capacity_bytes(32 * 1024 * 1024)
            .with_observer(Arc::new(Counting {
                metrics: observer.clone(),
                counts: counts.clone(),
            }));
        let builder = match l2 {
            // The invalidation bus (Redis pub/sub) is on by default with Redis.
            L2Setup::Redis(url) => builder.with_redis_url(url.clone()),
            L2Setup::Embedded { store, bus } => builder
                .with_remote(store.clone())
                .with_bus_transport(bus.attach()),
        };
        let engine = builder.build().await?;
        let accounts = engine
            .cache::<Account, MsgPack>("accounts")
            .with_l1_ttl(Duration::from_secs(30))
            .with_l2_ttl(Duration::from_secs(300))
            .with_negative_ttl(Duration::from_secs(30))
            .with_refresh_policy(Arc::new(XFetch::new(1.0)))
            .build()?;
        let l1_gauges = observer.spawn_l1_gauges(&engine, Duration::from_secs(1))?;
        Ok(Cached {
            engine,
            accounts,
            _l1_gauges: l1_gauges,
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/accounts/{id}", get(get_account).put(put_account))
            .route("/metrics", get(metrics))
            .route("/stats", get(stats))
            .with_state(self.clone())
    }

    /// Serve on a free port of 127.0.0.1 until `stop` resolves.
    pub async fn serve(
        self: &Arc<Self>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = self.router();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
        });
        Ok((addr, task))
    }

    fn write_lock(&self, id: u64) -> &tokio::sync::Mutex<()> {
        let i = self.hasher.hash_one(id) as usize % self.write_locks.len();
        &self.write_locks[i]
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> Response {
        self.requests.errors.fetch_add(1, Ordering::Relaxed);
        (StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}\n")).into_response()
    }
}

/// The response header of `GET /accounts/{id}` that says where the answer came from: the
/// load generator splits the read latencies by it.
pub const READ_FROM: &str = "x-demo-read-from";
/// [`READ_FROM`] when this request queried the database (a load, or any read with the cache
/// off); otherwise it is `cache` (L1, L2, or another request's load that it joined).
pub const READ_FROM_DATABASE: &str = "database";

/// `GET /accounts/{id}`: L1, then L2, then one SQLite query for all concurrent callers; with
/// the cache off, one SQLite query per read.
async fn get_account(State(s): State<Arc<Instance>>, Path(id): Path<u64>) -> Response {
    s.requests.reads.fetch_add(1, Ordering::Relaxed);
    let (found, queried) = match &s.cache {
        Some(c) => {
            let db = s.db.clone();
            let loaded = Arc::new(AtomicBool::new(false));
            let flag = loaded.clone();
            let found = c
                .accounts
                .get_or_load_optional(&id.to_string(), move |_key| async move {
                    flag.store(true, Ordering::Relaxed);
                    db.get(id, Purpose::Read).await
                })
                .await
                .map(|found| found.map(|account| Json(&*account).into_response()))
                .map_err(|e| e.to_string());
            (found, loaded.load(Ordering::Relaxed))
        }
        None => (
            s.db.get(id, Purpose::Read)
                .await
                .map(|found| found.map(|account| Json(account).into_response()))
                .map_err(|e| e.to_string()),
            true,
        ),
    };
    match found {
        Ok(Some(mut response)) => {
            response.headers_mut().insert(
                READ_FROM,
                HeaderValue::from_static(if queried { READ_FROM_DATABASE } else { "cache" }),
            );
            response
        }
        Ok(None) => {
            s.requests.not_found.fetch_add(1, Ordering::Relaxed);
            (StatusCode::NOT_FOUND, "no such account\n").into_response()
        }
        Err(e) => s.failed("read", e),
    }
}

/// Body of `PUT /accounts/{id}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Deposit {
    pub deposit_cents: i64,
}

/// `PUT /accounts/{id}`: read the row from the database (the truth), apply the deposit, then
/// write-through: `Cache::write` updates SQLite first, then L2 and L1, and tells the other
/// instance to drop its copy. With the cache off, only the database is written.
async fn put_account(
    State(s): State<Arc<Instance>>,
    Path(id): Path<u64>,
    Json(body): Json<Deposit>,
) -> Response {
    s.requests.writes.fetch_add(1, Ordering::Relaxed);
    let _serialized = s.write_lock(id).lock().await;
    let current = match s.db.get(id, Purpose::Write).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            s.requests.not_found.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::NOT_FOUND, "no such account\n").into_response();
        }
        Err(e) => return s.failed("write (read)", e),
    };
    let next = Account {
        balance_cents: current.balance_cents + body.deposit_cents,
        version: current.version + 1,
        ..current
    };
    let written = match &s.cache {
        Some(c) => {
            let db = s.db.clone();
            c.accounts
                .write(
                    &id.to_string(),
                    next.clone(),
                    move |_key, value| async move { db.update((*value).clone()).await },
                )
                .await
                .map_err(|e| e.to_string())
        }
        None => s.db.update(next.clone()).await.map_err(|e| e.to_string()),
    };
    match written {
        Ok(()) => Json(next).into_response(),
        Err(e) => s.failed("write", e),
    }
}

/// `GET /metrics`: the Prometheus text exposition of the process's recorder.
async fn metrics(State(s): State<Arc<Instance>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// What `GET /stats` returns.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    pub instance: String,
    pub l2: String,
    pub reads: u64,
    pub writes: u64,
    pub not_found: u64,
    pub errors: u64,
    pub l1_hits: u64,
    pub l1_misses: u64,
    pub l2_hits: u64,
    pub l2_misses: u64,
    pub l2_errors: u64,
    pub loader_calls: u64,
    pub coalesced: u64,
    pub lease_waits: u64,
    pub stale_fills_refused: u64,
    pub early_refreshes: u64,
    pub invalidations_sent: u64,
    pub invalidations_received: u64,
    pub invalidations_lost: u64,
    pub bus_messages_sent: u64,
    /// SELECTs by reads: the cache's loader, or every read with the cache off.
    pub db_read_selects: u64,
    pub db_write_selects: u64,
    pub db_updates: u64,
    pub l1_entries: u64,
    pub l1_bytes: u64,
}

/// `GET /stats`: this instance's counters as JSON.
async fn stats(State(s): State<Arc<Instance>>) -> Json<Stats> {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let c = &s.counts;
    let cache = s
        .cache
        .as_ref()
        .map(|c| c.accounts.stats())
        .unwrap_or_default();
    let l1 = s
        .cache
        .as_ref()
        .map(|c| c.engine.l1_stats())
        .unwrap_or_default();
    Json(Stats {
        instance: s.name.to_owned(),
        l2: s.l2_label.clone(),
        reads: l(&s.requests.reads),
        writes: l(&s.requests.writes),
        not_found: l(&s.requests.not_found),
        errors: l(&s.requests.errors),
        l1_hits: l(&c.l1_hits),
        l1_misses: l(&c.l1_misses),
        l2_hits: l(&c.l2_hits),
        l2_misses: l(&c.l2_misses),
        l2_errors: l(&c.l2_errors),
        loader_calls: l(&c.loads),
        coalesced: l(&c.coalesced),
        lease_waits: l(&c.lease_waits),
        stale_fills_refused: cache.stale_fills_refused,
        early_refreshes: cache.early_refreshes,
        invalidations_sent: l(&c.invalidations_sent),
        invalidations_received: l(&c.invalidations_received),
        invalidations_lost: l(&c.invalidations_lost),
        bus_messages_sent: s
            .cache
            .as_ref()
            .and_then(|c| c.engine.bus_stats())
            .map_or(0, |b| b.sent_messages),
        db_read_selects: l(&s.db.read_selects),
        db_write_selects: l(&s.db.write_selects),
        db_updates: l(&s.db.updates),
        l1_entries: l1.entries,
        l1_bytes: l1.bytes,
    })
}
