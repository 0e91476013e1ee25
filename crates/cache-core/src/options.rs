//! Per-call control: [`CallOptions`] for one read, load or write, and the loader's side of a
//! load ([`LoadContext`] in, [`Loaded`] out).

use std::sync::Arc;
use std::time::Duration;

/// Options of one call, overriding the cache's settings for that call only. The default
/// changes nothing: both tiers are read and written, the TTLs and loader timeouts are the
/// cache's.
///
/// Contradictions are refused at the call with an [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) error (see
/// [`CallOptions::check_read`], [`CallOptions::check_load`], [`CallOptions::check_write`]).
///
/// A load is shared by every caller of its key in the engine: the options of the call that
/// starts it apply to it, and a caller that joins it gets its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// Do not read L1 (the call goes to L2, or the loader, even when L1 holds the key).
    pub skip_l1_read: bool,
    /// Do not store the result in L1. A write with this option still drops this instance's
    /// older L1 copy, so L1 never serves a value older than the write.
    pub skip_l1_write: bool,
    /// Do not read L2 (a load goes from L1 straight to the loader).
    pub skip_l2_read: bool,
    /// Do not store the result in L2. A write with this option deletes the key's L2 value
    /// instead (so no instance reads an older value there) and keeps the new one in L1.
    pub skip_l2_write: bool,
    /// Write L2 in the background ([`crate::Cache::set_with`] only): the call returns once L1
    /// holds the value; the L2 write and the invalidation of the other instances follow,
    /// in call order per key. See [`crate::Cache::set_with`].
    pub background_l2_write: bool,
    /// The L1 TTL of what this call stores (default: the cache's `l1_ttl`, capped at the L2
    /// TTL).
    pub l1_ttl: Option<Duration>,
    /// The L2 TTL of what this call stores (default: the cache's `l2_ttl`, or `negative_ttl`
    /// for an absence).
    pub l2_ttl: Option<Duration>,
    /// The soft loader timeout of this load (default: the cache's).
    pub loader_soft_timeout: Option<Duration>,
    /// The hard loader timeout of this load (default: the cache's).
    pub loader_hard_timeout: Option<Duration>,
}

/// Options that change nothing (what the calls without options use).
pub(crate) const DEFAULT_OPTIONS: CallOptions = CallOptions {
    skip_l1_read: false,
    skip_l1_write: false,
    skip_l2_read: false,
    skip_l2_write: false,
    background_l2_write: false,
    l1_ttl: None,
    l2_ttl: None,
    loader_soft_timeout: None,
    loader_hard_timeout: None,
};

impl CallOptions {
    /// Options that change nothing.
    pub fn new() -> Self {
        DEFAULT_OPTIONS
    }

    /// Skip L1 for this call, reading and writing.
    pub fn skip_l1(mut self) -> Self {
        self.skip_l1_read = true;
        self.skip_l1_write = true;
        self
    }

    /// Skip L2 for this call, reading and writing.
    pub fn skip_l2(mut self) -> Self {
        self.skip_l2_read = true;
        self.skip_l2_write = true;
        self
    }

    /// Do not read L1 (see [`CallOptions::skip_l1_read`]).
    pub fn skip_l1_read(mut self) -> Self {
        self.skip_l1_read = true;
        self
    }

    /// Do not write L1 (see [`CallOptions::skip_l1_write`]).
    pub fn skip_l1_write(mut self) -> Self {
        self.skip_l1_write = true;
        self
    }

    /// Do not read L2 (see [`CallOptions::skip_l2_read`]).
    pub fn skip_l2_read(mut self) -> Self {
        self.skip_l2_read = true;
        self
    }

    /// Do not write L2 (see [`CallOptions::skip_l2_write`]).
    pub fn skip_l2_write(mut self) -> Self {
        self.skip_l2_write = true;
        self
    }

    /// Write L2 in the background (see [`CallOptions::background_l2_write`]).
    pub fn background_l2_write(mut self) -> Self {
        self.background_l2_write = true;
        self
    }

    /// Set the L1 TTL of what this call stores.
    pub fn with_l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// Set the L2 TTL of what this call stores.
    pub fn with_l2_ttl(mut self, ttl: Duration) -> Self {
        self.l2_ttl = Some(ttl);
        self
    }

    /// Set the soft and hard loader timeouts of this load (`None` keeps the cache's).
    pub fn with_loader_timeouts(mut self, soft: Option<Duration>, hard: Option<Duration>) -> Self {
        self.loader_soft_timeout = soft;
        self.loader_hard_timeout = hard;
        self
    }
}

/// What a loader receives in [`crate::Cache::get_or_load_with`]: the key, and the value the
/// cache holds for it when one is at hand, so the loader can revalidate it (ETag /
/// `If-Modified-Since` style) and answer [`Loaded::unchanged`].
///
/// A value is at hand on a refresh (an early refresh, [`crate::Cache::refresh`]: the current
/// value), and, with fail-safe on, when the key expired but is still kept (the stale value).
#[derive(Debug)]
pub struct LoadContext<V> {
    key: String,
    previous: Option<Option<Arc<V>>>,
    age: Option<Duration>,
}

impl<V> LoadContext<V> {
    pub(crate) fn new(
        key: String,
        previous: Option<Option<Arc<V>>>,
        age: Option<Duration>,
    ) -> Self {
        LoadContext { key, previous, age }
    }

    /// The user key being loaded.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value the cache holds for this key, when one is at hand (`None` otherwise, and
    /// when what it holds is an absence).
    pub fn previous(&self) -> Option<&Arc<V>> {
        self.previous.as_ref().and_then(Option::as_ref)
    }

    /// Whether the cache holds something for this key (a value, or a cached absence): only
    /// then may the loader answer [`Loaded::unchanged`].
    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// How long ago this instance stored the previous value, when known (values kept in L1
    /// carry their birth time; a value found in L2 does not).
    pub fn age(&self) -> Option<Duration> {
        self.age
    }

    /// Take the key out of the context.
    pub fn into_key(self) -> String {
        self.key
    }
}

/// What the loader found.
#[derive(Debug)]
pub(crate) enum Outcome<V> {
    Value(V),
    Absent,
    Unchanged,
}

/// A loader's answer in [`crate::Cache::get_or_load_with`]: a value, an absence, or
/// "unchanged", with how to cache it.
#[derive(Debug)]
#[must_use]
pub struct Loaded<V> {
    pub(crate) outcome: Outcome<V>,
    pub(crate) l1_ttl: Option<Duration>,
    pub(crate) l2_ttl: Option<Duration>,
    pub(crate) cache: bool,
    pub(crate) tags: Vec<String>,
}

impl<V> Loaded<V> {
    fn of(outcome: Outcome<V>) -> Self {
        Loaded {
            outcome,
            l1_ttl: None,
            l2_ttl: None,
            cache: true,
            tags: Vec::new(),
        }
    }

    /// The source has this value.
    pub fn value(value: V) -> Self {
        Self::of(Outcome::Value(value))
    }

    /// The source has no value for this key (cached for `negative_ttl`, unless TTLs are set).
    pub fn absent() -> Self {
        Self::of(Outcome::Absent)
    }

    /// The previous value is still right (see [`LoadContext::previous`]): it is kept, with its
    /// TTLs renewed in both tiers; the loader produced no new value. Answering this when
    /// nothing was at hand ([`LoadContext::has_previous`] false) fails the load with an
    /// [`ErrorKind::Loader`](crate::ErrorKind::Loader) error.
    pub fn unchanged() -> Self {
        Self::of(Outcome::Unchanged)
    }

    /// Store this entry with its own TTLs (each `None` keeps the cache's). A zero TTL, or an
    /// L1 TTL above the L2 TTL, fails the load with [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig).
    pub fn with_ttls(mut self, l1: Option<Duration>, l2: Option<Duration>) -> Self {
        self.l1_ttl = l1;
        self.l2_ttl = l2;
        self
    }

    /// Do not cache this answer in either tier: the callers of this load get it, the next
    /// read loads again (tokens, `Cache-Control: no-store` responses, partial results).
    pub fn no_cache(mut self) -> Self {
        self.cache = false;
        self
    }

    /// Record the key under these tags in L2 (see [`crate::Cache::invalidate_tag`]).
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }
}

impl<V> From<Option<V>> for Loaded<V> {
    fn from(found: Option<V>) -> Self {
        match found {
            Some(v) => Loaded::value(v),
            None => Loaded::absent(),
        }
    }
}
