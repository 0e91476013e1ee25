//! [`ClusterConfig`] as an [`L2Backend`]: `cache_tiered::builder(..).with_l2(config)` connects it and
//! takes its cluster-wide pub/sub bus.

use std::sync::Arc;

use async_trait::async_trait;
use cache_core::{L2Backend, L2Parts, L2Request, Result};

use crate::bus::ClusterBus;
use crate::config::ClusterConfig;
use crate::store::ClusterStore;

#[async_trait]
impl L2Backend for ClusterConfig {
    fn name(&self) -> &'static str {
        "cluster"
    }

    /// A [`ClusterStore`] and [`ClusterBus`] over it (no tracking).
    async fn connect(&self, request: &L2Request) -> Result<L2Parts> {
        if request.tracking {
            return Err(request.tracking_unsupported(self.name()));
        }
        let store = ClusterStore::connect(self.clone()).await?;
        let bus = ClusterBus::new(&store);
        Ok(L2Parts::new(Arc::new(store)).with_bus(Arc::new(bus)))
    }
}
