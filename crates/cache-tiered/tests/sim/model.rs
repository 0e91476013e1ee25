//! The model database (the source of truth the loaders read and the writers write), with the
//! history of every value each key ever had and per-instance loader-call counters; and the
//! loaders and writers of the simulated application.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;

use super::faults::Faults;
use super::plan::Answer;
use cache_tiered::{LoadContext, Loaded};

/// A value of the model: `None` is "the source has no such row".
pub type Value = Option<u64>;

#[derive(Default)]
struct State {
    values: BTreeMap<String, Value>,
    history: BTreeMap<String, BTreeSet<Value>>,
    loads: BTreeMap<(usize, String), u64>,
    next: u64,
}

/// The source of truth, shared by every instance of a seed.
#[derive(Default)]
pub struct Db {
    state: Mutex<State>,
}

impl Db {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A value never used before in this seed.
    pub fn fresh(&self) -> u64 {
        let mut s = self.lock();
        s.next += 1;
        s.next
    }

    /// The current value of `key`.
    pub fn read(&self, key: &str) -> Value {
        self.lock().values.get(key).copied().flatten()
    }

    /// Store `value` under `key` (and remember it in the key's history).
    pub fn write(&self, key: &str, value: Value) {
        let mut s = self.lock();
        s.values.insert(key.to_owned(), value);
        s.history.entry(key.to_owned()).or_default().insert(value);
    }

    /// Remember that `value` was given to the cache for `key` (write-behind: the cache has
    /// it before the source does).
    pub fn note(&self, key: &str, value: Value) {
        self.lock()
            .history
            .entry(key.to_owned())
            .or_default()
            .insert(value);
    }

    /// Did `key` ever hold `value` (in the source or on its way there)?
    pub fn ever(&self, key: &str, value: Value) -> bool {
        self.lock()
            .history
            .get(key)
            .is_some_and(|h| h.contains(&value))
    }

    /// Count one loader call of `node` for `key`.
    pub fn count_load(&self, node: usize, key: &str) {
        *self.lock().loads.entry((node, key.to_owned())).or_default() += 1;
    }

    /// Loader calls of every instance for `key` so far.
    pub fn loads_of_key(&self, key: &str) -> u64 {
        self.lock()
            .loads
            .iter()
            .filter(|((_, k), _)| k == key)
            .map(|(_, n)| *n)
            .sum()
    }
}

/// How one loader call behaves, drawn when the step is planned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadPlan {
    /// How long the "query" takes.
    pub sleep_ms: u64,
    /// Read the source before the sleep (a snapshot that can be old by the time it returns)
    /// rather than after it.
    pub read_first: bool,
}

/// The error of a failing loader or writer.
pub fn app_error(what: &str) -> std::io::Error {
    std::io::Error::other(what.to_owned())
}

/// Everything a loader or writer needs, cheap to clone into its future.
#[derive(Clone)]
pub struct Source {
    /// The database.
    pub db: Arc<Db>,
    /// The faults (loader and writer failures).
    pub faults: Arc<Faults>,
    /// The instance calling.
    pub node: usize,
}

impl Source {
    /// Query `key` as planned: count the call, maybe fail, wait, read.
    async fn query(self, key: String, plan: LoadPlan) -> Result<Value, std::io::Error> {
        self.db.count_load(self.node, &key);
        let fails = self.faults.loader_fails(self.node, &key);
        let mut value = if plan.read_first {
            Some(self.db.read(&key))
        } else {
            None
        };
        if plan.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(plan.sleep_ms)).await;
        }
        if fails {
            return Err(app_error("source unavailable (injected)"));
        }
        Ok(value.take().unwrap_or_else(|| self.db.read(&key)))
    }

    /// A loader for `get_or_load`: an absent row is an error.
    #[allow(clippy::type_complexity)]
    pub fn loader(
        &self,
        plan: LoadPlan,
    ) -> impl FnOnce(String) -> BoxFuture<'static, Result<u64, std::io::Error>> + Send + 'static
    {
        let me = self.clone();
        move |key: String| {
            Box::pin(async move {
                me.query(key, plan)
                    .await?
                    .ok_or_else(|| app_error("no such row"))
            })
        }
    }

    /// A loader for `get_or_load_optional`.
    #[allow(clippy::type_complexity)]
    pub fn optional_loader(
        &self,
        plan: LoadPlan,
    ) -> impl FnOnce(String) -> BoxFuture<'static, Result<Option<u64>, std::io::Error>> + Send + 'static
    {
        let me = self.clone();
        move |key: String| Box::pin(me.query(key, plan))
    }

    /// A loader for `get_or_load_with`, answering as `answer` says.
    #[allow(clippy::type_complexity)]
    pub fn context_loader(
        &self,
        plan: LoadPlan,
        answer: Answer,
    ) -> impl FnOnce(LoadContext<u64>) -> BoxFuture<'static, Result<Loaded<u64>, std::io::Error>>
           + Send
           + 'static {
        let me = self.clone();
        move |ctx: LoadContext<u64>| {
            Box::pin(async move {
                let previous = ctx.has_previous().then(|| ctx.previous().map(|v| **v));
                let row = me.query(ctx.into_key(), plan).await?;
                Ok(match answer {
                    Answer::Revalidate if previous == Some(row) => Loaded::unchanged(),
                    Answer::Row | Answer::Revalidate => Loaded::from(row),
                    Answer::NoCache => Loaded::from(row).no_cache(),
                    Answer::ShortTtl => Loaded::from(row).with_ttls(
                        Some(Duration::from_millis(20)),
                        Some(Duration::from_millis(50)),
                    ),
                })
            })
        }
    }

    /// A batch loader for `get_many_or_load`: absent rows are left out.
    #[allow(clippy::type_complexity)]
    pub fn batch_loader(
        &self,
        plan: LoadPlan,
    ) -> impl FnOnce(Vec<String>) -> BoxFuture<'static, Result<HashMap<String, u64>, std::io::Error>>
           + Send
           + 'static {
        let me = self.clone();
        move |keys: Vec<String>| {
            Box::pin(async move {
                for k in &keys {
                    me.db.count_load(me.node, k);
                }
                let fails = me.faults.loader_fails(me.node, &keys.join(" "));
                let read = |db: &Db| -> HashMap<String, u64> {
                    keys.iter()
                        .filter_map(|k| db.read(k).map(|v| (k.clone(), v)))
                        .collect()
                };
                let mut snapshot = plan.read_first.then(|| read(&me.db));
                if plan.sleep_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(plan.sleep_ms)).await;
                }
                if fails {
                    return Err(app_error("source unavailable (injected)"));
                }
                Ok(snapshot.take().unwrap_or_else(|| read(&me.db)))
            })
        }
    }

    /// Write-through's writer: maybe fail (nothing written), else store the value.
    pub async fn write_row(self, key: String, value: u64) -> Result<(), std::io::Error> {
        if self.faults.writer_fails(self.node, &key) {
            return Err(app_error("source refused the write (injected)"));
        }
        self.db.write(&key, Some(value));
        Ok(())
    }
}
