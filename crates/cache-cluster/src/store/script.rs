//! Lua scripts on a cluster: `EVALSHA` only (the minimal ACL rules refuse `EVAL`), a
//! `NOSCRIPT` answer met by `SCRIPT LOAD` on every primary and one more try.

use cache_core::{Error, ErrorKind, Result};
use futures::future::join_all;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, RedisError, RedisResult, Value};

use super::ClusterStore;
use crate::slot::slot;

/// A Lua script: its source and SHA1.
pub(super) struct LuaScript {
    source: &'static str,
    sha: String,
}

impl LuaScript {
    pub(super) fn new(source: &'static str) -> Self {
        LuaScript {
            source,
            sha: redis::Script::new(source).get_hash().to_owned(),
        }
    }

    /// `EVALSHA sha` of `keys` and `args`.
    pub(super) fn command(&self, keys: &[&str], args: &[&[u8]]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.sha.as_str()).arg(keys.len()).arg(keys);
        for a in args {
            cmd.arg(*a);
        }
        cmd
    }

    /// `SCRIPT LOAD source`: caches the script on the node that runs it. Never `EVAL`, which
    /// the minimal ACL rules (docs/security.md) refuse.
    fn load(&self) -> Cmd {
        redis::cmd("SCRIPT").arg("LOAD").arg(self.source).to_owned()
    }

    /// Check a `SCRIPT LOAD` answer: the node must name the script by our SHA1.
    fn check_loaded(&self, answer: Value) -> RedisResult<()> {
        let sha: String = redis::from_redis_value(answer.extract_error()?)?;
        if sha.eq_ignore_ascii_case(&self.sha) {
            Ok(())
        } else {
            Err(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "SCRIPT LOAD answered another SHA1 than the script's",
                sha,
            )))
        }
    }
}

/// How many times a script call that meets `NOSCRIPT` loads the script and tries again (a
/// node can lose its script cache between the load and the call: failover, restart,
/// `SCRIPT FLUSH`).
pub(super) const SCRIPT_LOAD_ATTEMPTS: usize = 2;

impl ClusterStore {
    /// Run a script on the node of its keys (all in one slot): `EVALSHA`; when that node has
    /// not cached the script yet (`NOSCRIPT`: a new primary after a failover, a restart,
    /// `SCRIPT FLUSH`, the importing node of a migrating slot), `SCRIPT LOAD` on every
    /// primary, then the `EVALSHA` again. No `EVAL`: the minimal ACL rules refuse it.
    pub(super) async fn eval<T: redis::FromRedisValue + Send>(
        &self,
        op: &'static str,
        script: &LuaScript,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T> {
        let evalsha = script.command(keys, args);
        self.run(op, async move {
            match self.send::<T>(&evalsha, None).await {
                Err(e) if is_noscript_error(&e) => {}
                other => return other,
            }
            for _ in 0..SCRIPT_LOAD_ATTEMPTS {
                self.load_on_primaries(script).await?;
                // A single command: redis-rs follows `ASK` to a slot's importing node.
                match self.send::<T>(&evalsha, None).await {
                    Err(e) if is_noscript_error(&e) => {}
                    other => return other,
                }
            }
            Err(noscript_after_load())
        })
        .await
    }

    /// `SCRIPT LOAD` on every primary of the slot map, in parallel (a `NOSCRIPT` answer does
    /// not say which node gave it; during a migration it can be the importing node). Nodes
    /// that fail are skipped; `Ok` when at least one loaded it. Without a slot map, redis-rs
    /// sends it to every node.
    pub(super) async fn load_on_primaries(&self, script: &LuaScript) -> RedisResult<()> {
        let Some(primaries) = self.inner.topology.primaries() else {
            let mut conn = self.conn.clone();
            self.count(1);
            return script.check_loaded(script.load().query_async::<Value>(&mut conn).await?);
        };
        self.count(primaries.len() as u64);
        let loads = primaries.into_iter().map(|node| {
            let mut conn = self.conn.clone();
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: node.host().to_owned(),
                port: node.port(),
            });
            async move { script.check_loaded(conn.route_command(script.load(), route).await?) }
        });
        let results = join_all(loads).await;
        if results.iter().any(Result::is_ok) {
            return Ok(());
        }
        results
            .into_iter()
            .filter_map(Result::err)
            .last()
            .map_or(Ok(()), Err)
    }
}

/// Whether a call failed with `NOSCRIPT` (the node has not cached the script).
fn is_noscript_error(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// Whether a pipeline answer is `NOSCRIPT` (the node has not cached the script).
fn is_noscript(answer: &Value) -> bool {
    matches!(answer, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript))
}

/// A script may only touch one slot: refuse a lease key and a key in different slots before
/// sending.
pub(super) fn same_slot(lease_key: &str, key: &str) -> Result<()> {
    if slot(lease_key.as_bytes()) != slot(key.as_bytes()) {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            "the lease key and the key are in different hash slots; a script can only \
             touch one slot in Redis Cluster",
        ));
    }
    Ok(())
}

/// Whether one run of the lease script stored (`1`) or not (`0`); `None`: `NOSCRIPT`, it did
/// not run.
pub(super) fn lease_answer(answer: Value) -> RedisResult<Option<bool>> {
    if is_noscript(&answer) {
        return Ok(None);
    }
    match answer.extract_error()? {
        Value::Int(stored) => Ok(Some(stored == 1)),
        _ => Err(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected answer to the lease script",
        ))),
    }
}

/// The error of a script call still answered `NOSCRIPT` after its `SCRIPT LOAD`s.
pub(super) fn noscript_after_load() -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "the node answered NOSCRIPT again after SCRIPT LOAD (its script cache keeps being \
         flushed)",
    ))
}
