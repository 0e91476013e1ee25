//! The configs as [`L2Backend`]s: `cache_tiered::builder(..).with_l2(config)` connects them and takes
//! their bus (pub/sub on the same server) and, when asked, client tracking.

use std::sync::Arc;

use async_trait::async_trait;
use cache_core::{L2Backend, L2Parts, L2Request, Result};

use crate::bus::{RedisBus, RedisTracking};
use crate::config::RedisConfig;
use crate::store::RedisStore;

#[async_trait]
impl L2Backend for RedisConfig {
    fn name(&self) -> &'static str {
        "redis"
    }

    /// A [`RedisStore`], [`RedisBus`] over it, and [`RedisTracking`] when asked (waited for
    /// up to `connect_timeout` at start-up).
    async fn connect(&self, request: &L2Request) -> Result<L2Parts> {
        let store = RedisStore::connect(self.clone()).await?;
        let mut parts =
            L2Parts::new(Arc::new(store.clone())).with_bus(Arc::new(RedisBus::new(&store)));
        if request.tracking {
            let tracking = RedisTracking::new(&store, &request.prefix)?;
            parts = parts.with_tracking(Arc::new(tracking), self.connect_timeout);
        }
        Ok(parts)
    }
}

#[cfg(feature = "sentinel")]
#[async_trait]
impl L2Backend for crate::sentinel::SentinelConfig {
    fn name(&self) -> &'static str {
        "sentinel"
    }

    /// A [`crate::SentinelStore`] on the current master and [`crate::SentinelBus`] over it
    /// (no tracking).
    async fn connect(&self, request: &L2Request) -> Result<L2Parts> {
        if request.tracking {
            return Err(request.tracking_unsupported(self.name()));
        }
        let store = crate::sentinel::SentinelStore::connect(self.clone()).await?;
        let bus = crate::sentinel::SentinelBus::new(&store);
        Ok(L2Parts::new(Arc::new(store)).with_bus(Arc::new(bus)))
    }
}
