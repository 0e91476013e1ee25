//! A blocking API for code that is not async (feature `blocking`).
//!
//! [`BlockingEngine`] owns a small tokio runtime (two worker threads by default) that runs the
//! engine's background work (invalidation bus, recovery, loads) and every call. Its caches,
//! [`BlockingCache`], offer the same operations as [`Cache`](crate::Cache) as plain functions; loaders are
//! plain closures, run on the runtime's blocking threads so that a slow database call never
//! stalls the engine.
//!
//! A blocking call made from inside an async runtime would block one of its workers (and
//! deadlock a current-thread runtime): it returns [`ErrorKind::InvalidConfig`] instead,
//! naming the call. Use [`Cache`](crate::Cache) there ([`BlockingCache::cache`] hands it out).
//!
//! ```no_run
//! use cache_tiered::blocking::BlockingEngine;
//! use cache_tiered::MsgPack;
//!
//! # fn main() -> cache_tiered::Result<()> {
//! let engine = BlockingEngine::build(cache_tiered::builder("app").with_redis_url("redis://127.0.0.1:6379/"))?;
//! let users = engine.cache::<String, MsgPack>("users", |b| b.build())?;
//! let name = users.get_or_load("42", |id| Ok::<_, std::io::Error>(format!("user {id}")))?;
//! users.set("42", "renamed".to_owned())?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use cache_core::{CacheBuilder, Codec, Engine, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Builder;

/// Worker threads of the runtime [`BlockingEngine::build`] starts.
pub const DEFAULT_WORKER_THREADS: usize = 2;

/// The runtime a blocking engine owns; shut down without waiting when the last handle goes
/// (never blocks or panics, even if dropped inside an async context).
struct Owned(Option<tokio::runtime::Runtime>);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Owned {
    fn handle(&self) -> Result<&tokio::runtime::Runtime> {
        self.0
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Closed, "the blocking engine's runtime is gone"))
    }
}

/// Run `f` to completion on `rt`, unless the caller is itself inside an async runtime.
fn run<T>(rt: &Owned, call: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "cache_tiered::blocking: {call} was called from inside an async runtime, where it \
                 would block a worker thread; use the async Cache there (BlockingCache::cache)"
            ),
        ));
    }
    rt.handle()?.block_on(f)
}

/// An [`Engine`] with its own runtime, for synchronous callers. Cheap to clone.
#[derive(Clone)]
pub struct BlockingEngine {
    rt: Arc<Owned>,
    engine: Engine,
}

impl std::fmt::Debug for BlockingEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingEngine")
            .field("prefix", &self.engine.prefix())
            .finish()
    }
}

impl BlockingEngine {
    /// Start a runtime ([`DEFAULT_WORKER_THREADS`] workers) and build the engine on it.
    pub fn build(builder: Builder) -> Result<Self> {
        Self::build_with_threads(builder, DEFAULT_WORKER_THREADS)
    }

    /// Like [`BlockingEngine::build`] with `threads` runtime workers (at least 1).
    pub fn build_with_threads(builder: Builder, threads: usize) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("tiercache-blocking")
            .enable_all()
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("cache_tiered::blocking: cannot start a runtime: {e}"),
                )
            })?;
        let rt = Arc::new(Owned(Some(rt)));
        let engine = run(&rt, "BlockingEngine::build", builder.build())?;
        Ok(BlockingEngine { rt, engine })
    }

    /// The engine (for async code that shares it).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// [`Engine::shutdown`]: settle, publish, stop, within `deadline`; what was left.
    pub fn shutdown(&self, deadline: std::time::Duration) -> Result<crate::ShutdownReport> {
        run(&self.rt, "shutdown", async {
            Ok(self.engine.shutdown(deadline).await)
        })
    }

    /// A cache over `namespace`: `configure` sets it up from the engine's builder
    /// (`|b| b.with_l1_ttl(..).build()`).
    pub fn cache<V, C>(
        &self,
        namespace: impl Into<String>,
        configure: impl FnOnce(CacheBuilder<V, C>) -> Result<cache_core::Cache<V, C>>,
    ) -> Result<BlockingCache<V, C>>
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        C: Codec,
    {
        let cache = {
            // Building a cache registers its namespace on the bus: inside the runtime.
            let _entered = self.rt.handle()?.enter();
            configure(self.engine.cache::<V, C>(namespace))?
        };
        Ok(BlockingCache {
            rt: Arc::clone(&self.rt),
            cache,
        })
    }
}

/// A [`Cache`](cache_core::Cache) for synchronous callers (see the [module](self)). Cheap to
/// clone; every method blocks the calling thread until its answer.
pub struct BlockingCache<V, C> {
    rt: Arc<Owned>,
    cache: cache_core::Cache<V, C>,
}

impl<V, C> Clone for BlockingCache<V, C> {
    fn clone(&self) -> Self {
        BlockingCache {
            rt: Arc::clone(&self.rt),
            cache: self.cache.clone(),
        }
    }
}

/// A blocking loader's error, boxed (the async API takes any error that converts).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Run a blocking loader on the runtime's blocking threads.
async fn on_blocking_thread<T, E>(
    f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> std::result::Result<T, BoxError>
where
    T: Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Into::into),
        Err(e) => Err(Box::new(e)),
    }
}

impl<V, C> BlockingCache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// The async cache behind this one (same tiers, same in-flight loads).
    pub fn cache(&self) -> &cache_core::Cache<V, C> {
        &self.cache
    }

    /// [`Cache::get`](cache_core::Cache::get).
    pub fn get(&self, key: &str) -> Result<Option<Arc<V>>> {
        run(&self.rt, "get", self.cache.get(key))
    }

    /// [`Cache::get_many`](cache_core::Cache::get_many).
    pub fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<Arc<V>>>> {
        run(&self.rt, "get_many", self.cache.get_many(keys))
    }

    /// [`Cache::get_or_load`](cache_core::Cache::get_or_load) with a blocking loader (run on
    /// a blocking thread of the engine's runtime).
    pub fn get_or_load<F, E>(&self, key: &str, loader: F) -> Result<Arc<V>>
    where
        F: FnOnce(String) -> std::result::Result<V, E> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let load = move |k: String| on_blocking_thread(move || loader(k));
        run(&self.rt, "get_or_load", self.cache.get_or_load(key, load))
    }

    /// [`Cache::get_or_load_optional`](cache_core::Cache::get_or_load_optional) with a
    /// blocking loader.
    pub fn get_or_load_optional<F, E>(&self, key: &str, loader: F) -> Result<Option<Arc<V>>>
    where
        F: FnOnce(String) -> std::result::Result<Option<V>, E> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let load = move |k: String| on_blocking_thread(move || loader(k));
        run(
            &self.rt,
            "get_or_load_optional",
            self.cache.get_or_load_optional(key, load),
        )
    }

    /// [`Cache::get_many_or_load`](cache_core::Cache::get_many_or_load) with a blocking
    /// loader.
    pub fn get_many_or_load<K, F, E>(&self, keys: &[K], loader: F) -> Result<Vec<Option<Arc<V>>>>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> std::result::Result<HashMap<String, V>, E> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let load = move |missing: Vec<String>| on_blocking_thread(move || loader(missing));
        run(
            &self.rt,
            "get_many_or_load",
            self.cache.get_many_or_load(keys, load),
        )
    }

    /// [`Cache::refresh`](cache_core::Cache::refresh) with a blocking loader: returns once
    /// the reload is started.
    pub fn refresh<F, E>(&self, key: &str, loader: F) -> Result<bool>
    where
        F: FnOnce(String) -> std::result::Result<V, E> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let load = move |k: String| on_blocking_thread(move || loader(k));
        run(&self.rt, "refresh", async { self.cache.refresh(key, load) })
    }

    /// [`Cache::get_with`](cache_core::Cache::get_with): a read with per-call options.
    pub fn get_with(&self, key: &str, options: &crate::CallOptions) -> Result<Option<Arc<V>>> {
        run(&self.rt, "get_with", self.cache.get_with(key, options))
    }

    /// [`Cache::get_or_load_with`](cache_core::Cache::get_or_load_with) with a blocking
    /// loader that receives the [`LoadContext`](crate::LoadContext) and answers a
    /// [`Loaded`](crate::Loaded).
    pub fn get_or_load_with<F, E>(
        &self,
        key: &str,
        options: &crate::CallOptions,
        loader: F,
    ) -> Result<Option<Arc<V>>>
    where
        F: FnOnce(crate::LoadContext<V>) -> std::result::Result<crate::Loaded<V>, E>
            + Send
            + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let load = move |ctx: crate::LoadContext<V>| on_blocking_thread(move || loader(ctx));
        run(
            &self.rt,
            "get_or_load_with",
            self.cache.get_or_load_with(key, options, load),
        )
    }

    /// [`Cache::set_with`](cache_core::Cache::set_with): a write with per-call options.
    pub fn set_with(&self, key: &str, value: V, options: &crate::CallOptions) -> Result<()> {
        run(
            &self.rt,
            "set_with",
            self.cache.set_with(key, value, options),
        )
    }

    /// [`Cache::expire`](cache_core::Cache::expire).
    pub fn expire(&self, key: &str) -> Result<()> {
        run(&self.rt, "expire", self.cache.expire(key))
    }

    /// [`Cache::set`](cache_core::Cache::set).
    pub fn set(&self, key: &str, value: V) -> Result<()> {
        run(&self.rt, "set", self.cache.set(key, value))
    }

    /// [`Cache::set_with_tags`](cache_core::Cache::set_with_tags).
    pub fn set_with_tags(&self, key: &str, value: V, tags: &[&str]) -> Result<()> {
        run(
            &self.rt,
            "set_with_tags",
            self.cache.set_with_tags(key, value, tags),
        )
    }

    /// [`Cache::invalidate`](cache_core::Cache::invalidate).
    pub fn invalidate(&self, key: &str) -> Result<()> {
        run(&self.rt, "invalidate", self.cache.invalidate(key))
    }

    /// [`Cache::invalidate_tag`](cache_core::Cache::invalidate_tag).
    pub fn invalidate_tag(&self, tag: &str) -> Result<u64> {
        run(&self.rt, "invalidate_tag", self.cache.invalidate_tag(tag))
    }

    /// [`Cache::clear_namespace`](cache_core::Cache::clear_namespace).
    pub fn clear_namespace(&self) -> Result<u64> {
        run(&self.rt, "clear_namespace", self.cache.clear_namespace())
    }
}
