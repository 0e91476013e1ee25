//! The behaviour suite against the in-memory L2.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::Arc;

use cache_tiered::{MemoryStore, RemoteStore};
use common::Backend;

struct Memory(Arc<MemoryStore>);

#[async_trait::async_trait]
impl Backend for Memory {
    async fn store(&self) -> Arc<dyn RemoteStore> {
        self.0.clone()
    }

    async fn set_down(&self, down: bool) {
        self.0.set_down(down);
    }
}

async fn memory() -> Result<Memory, cache_tiered::Error> {
    Ok(Memory(Arc::new(MemoryStore::with_max_value_size(
        1024 * 1024,
    ))))
}

behaviour_suite!(memory);

#[tokio::test]
async fn l1_hit_survives_l2_outage() -> common::TestResult {
    common::l1_hit_survives_l2_outage(&memory().await?).await
}

#[tokio::test]
async fn get_many_is_one_round_trip() -> common::TestResult {
    let m = memory().await?;
    let e = common::engine(&m, "rt").await?;
    let c = common::users(&e)?;
    for i in 0..10u64 {
        m.0.put_raw(
            &c.full_key(&i.to_string())?,
            vec![1],
            std::time::Duration::from_secs(9),
        );
    }
    let before = m.0.calls();
    let keys: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    c.get_many(&keys).await?;
    assert_eq!(m.0.calls() - before, 1);
    Ok(())
}
