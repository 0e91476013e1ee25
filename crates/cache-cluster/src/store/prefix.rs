//! Prefix delete: `SCAN` every primary and `UNLINK` what it finds.

#[cfg(doc)]
use cache_core::RemoteStore;
use cache_core::Result;
use redis::cluster::NodeAddress;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::Value;

use super::ClusterStore;

/// Keys per `SCAN` page of [`RemoteStore::delete_prefix`].
const SCAN_COUNT: u64 = 1000;

impl ClusterStore {
    /// `SCAN` one primary for `pattern` and `UNLINK` what it finds; returns how many.
    pub(super) async fn scan_delete(&self, node: NodeAddress, pattern: &str) -> Result<u64> {
        let by_address = SingleNodeRoutingInfo::ByAddress {
            host: node.host().to_owned(),
            port: node.port(),
        };
        let mut cursor: u64 = 0;
        let mut deleted: u64 = 0;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .to_owned();
            let mut conn = self.conn.clone();
            let routing = RoutingInfo::SingleNode(by_address.clone());
            self.count(1);
            let page = self
                .run("SCAN", async move {
                    let value = conn.route_command(scan, routing).await?;
                    Ok(redis::from_redis_value::<(u64, Vec<Vec<u8>>)>(value)?)
                })
                .await?;
            let (next, keys) = page;
            if !keys.is_empty() {
                deleted += self.unlink_on(&by_address, keys).await?;
            }
            cursor = next;
            if cursor == 0 {
                return Ok(deleted);
            }
        }
    }

    /// `UNLINK` keys found on one node (one pipeline); keys that moved meanwhile are deleted
    /// one by one through the normal routing.
    async fn unlink_on(&self, node: &SingleNodeRoutingInfo, keys: Vec<Vec<u8>>) -> Result<u64> {
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("UNLINK").arg(k);
        }
        let count = keys.len();
        let mut conn = self.conn.clone();
        let route = node.clone();
        self.count(1);
        let values = self
            .run("UNLINK (pipeline)", async move {
                conn.route_pipeline(pipe, 0, count, route).await
            })
            .await?;
        let mut deleted = 0u64;
        let mut moved = Vec::new();
        for (key, value) in keys.into_iter().zip(values) {
            match value {
                Value::Int(n) => deleted += u64::try_from(n).unwrap_or(0),
                _ => moved.push(key),
            }
        }
        for key in moved {
            let mut conn = self.conn.clone();
            self.count(1);
            let n = self
                .run("UNLINK", async move {
                    redis::cmd("UNLINK")
                        .arg(key)
                        .query_async::<i64>(&mut conn)
                        .await
                })
                .await?;
            deleted += u64::try_from(n).unwrap_or(0);
        }
        Ok(deleted)
    }
}
