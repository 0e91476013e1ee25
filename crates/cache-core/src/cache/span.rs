//! Tracing spans: the cache name and a hash of the key (the raw key only when asked).

use super::*;

/// Which operation a span describes.
#[derive(Debug, Clone, Copy)]
pub(super) enum SpanKind {
    Get,
    Load,
    Refresh,
    Invalidate,
}

/// Displays a key as its 64-bit FNV-1a hash in hex (what spans carry instead of the key).
pub(super) struct KeyHash<'a>(pub(super) &'a str);

impl std::fmt::Display for KeyHash<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", crate::key::fnv1a(self.0))
    }
}

impl<V, C> CacheInner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// A span for one operation on `key`, carrying the cache name and a hash of the key (the
    /// raw key only when `trace_raw_keys` is on).
    pub(super) fn span(&self, kind: SpanKind, key: &str) -> tracing::Span {
        // Field values are evaluated only when the span is enabled: a disabled span costs no
        // hashing and no formatting.
        let span = match kind {
            SpanKind::Get => {
                tracing::debug_span!("cache.get", cache = %self.name, key_hash = %KeyHash(key), key = tracing::field::Empty)
            }
            SpanKind::Load => {
                tracing::debug_span!("cache.load", cache = %self.name, key_hash = %KeyHash(key), key = tracing::field::Empty)
            }
            SpanKind::Refresh => {
                tracing::debug_span!("cache.refresh", cache = %self.name, key_hash = %KeyHash(key), key = tracing::field::Empty)
            }
            SpanKind::Invalidate => {
                tracing::debug_span!("cache.invalidate", cache = %self.name, key_hash = %KeyHash(key), key = tracing::field::Empty)
            }
        };
        if self.config.trace_raw_keys {
            span.record("key", key);
        }
        span
    }
}
