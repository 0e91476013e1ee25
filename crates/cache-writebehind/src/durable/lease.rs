//! The flusher lease: one instance at a time flushes (`SET NX PX`; renewed and released by
//! scripts that check the holder).

use std::time::Duration;

use cache_core::Result;
use cache_redis::redis::{self, Value};

use super::call::ms;
use super::DurableQueue;

/// Extend the lease if we still hold it. `KEYS = [lease]`, `ARGV = [me, ttl_ms]`.
pub(super) const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Give the lease up if we hold it. `KEYS = [lease]`, `ARGV = [me]`.
pub(super) const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

impl DurableQueue {
    pub(super) async fn try_acquire(&self, ttl: Duration) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&self.lease)
            .arg(&self.consumer)
            .arg("NX")
            .arg("PX")
            .arg(ms(ttl));
        let v: Value = self.query("SET NX (lease)", &cmd).await?;
        Ok(matches!(v, Value::Okay) || matches!(&v, Value::SimpleString(s) if s == "OK"))
    }

    pub(super) async fn renew(&self, ttl: Duration) -> Result<bool> {
        let mut inv = self.renew_script.key(&self.lease);
        inv.arg(&self.consumer).arg(ms(ttl));
        let n: i64 = self.script("renew lease", inv).await?;
        Ok(n == 1)
    }

    pub(super) async fn release(&self) {
        let mut inv = self.release_script.key(&self.lease);
        inv.arg(&self.consumer);
        match self.script::<i64>("release lease", inv).await {
            Ok(_) => tracing::debug!(stream = %self.stream, "write-behind flusher lease released"),
            Err(e) => tracing::warn!(
                stream = %self.stream,
                error = %e,
                "write-behind: releasing the flusher lease failed; another instance takes over \
                 once it expires"
            ),
        }
    }
}
