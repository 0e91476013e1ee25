//! The [`RemoteStore`] impl: single-key commands, slot-grouped batches, scripts and prefix
//! delete, each bounded by `response_timeout`.

use cache_core::Capabilities;
use std::time::Duration;

use async_trait::async_trait;
use cache_core::{Error, ErrorKind, LeaseFill, LeaseRead, RemoteEntry, RemoteStore, Result};
use cache_redis::support::{glob_escape, ttl_ms};
use futures::future::join_all;
use redis::{RedisError, RedisResult, Value};

use super::batch::{scatter, wrong_length};
use super::script::{lease_answer, noscript_after_load, same_slot, SCRIPT_LOAD_ATTEMPTS};
use super::ClusterStore;

#[async_trait]
impl RemoteStore for ClusterStore {
    fn kind(&self) -> &'static str {
        "cluster"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn max_value_size(&self) -> usize {
        self.inner.config.max_value_size
    }

    /// A `GET`, coalesced with the other single-key reads of this store for the same primary:
    /// sent at once when no read to that primary is in flight, else queued and sent with the
    /// others as one batch (see [`RemoteStore::get_many`]) when the read in flight is
    /// answered. Bounded by `response_timeout` from the call, queue time included.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.coalesced_get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        match keys.len() {
            0 => return Ok(Vec::new()),
            1 => return Ok(vec![self.get(&keys[0]).await?]),
            _ => {}
        }
        let groups = self.groups(keys.iter().map(String::as_str));
        // One `MGET` per slot; a `GET` for a slot's only key (and so for the key-by-key
        // retry of a migrating slot: redis-rs fans an `MGET` out as a multi-slot command,
        // whose `ASK` redirects it does not follow).
        let build = |indices: &[usize]| match indices {
            [i] => vec![redis::cmd("GET").arg(&keys[*i]).to_owned()],
            _ => {
                let mut cmd = redis::cmd("MGET");
                for i in indices {
                    cmd.arg(&keys[*i]);
                }
                vec![cmd]
            }
        };
        let parts = self
            .run("MGET (batch)", self.batch(groups, true, build, decode_mget))
            .await?;
        Ok(scatter(keys.len(), None, parts))
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.check_size(key, value.len())?;
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .to_owned();
        self.run("SET", self.send::<()>(&cmd, None)).await
    }

    async fn set_many(&self, entries: Vec<RemoteEntry>) -> Result<()> {
        for e in &entries {
            self.check_size(&e.key, e.value.len())?;
        }
        match entries.len() {
            0 => return Ok(()),
            1 => {
                let mut entries = entries;
                if let Some(e) = entries.pop() {
                    return self.set(&e.key, e.value, e.ttl).await;
                }
                return Ok(());
            }
            _ => {}
        }
        // One pipeline per primary; within it, one `SET` per key (there is no `MSET` with a
        // TTL).
        let groups = self.groups(entries.iter().map(|e| e.key.as_str()));
        let build = |indices: &[usize]| {
            indices
                .iter()
                .map(|i| {
                    let e = &entries[*i];
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&e.key)
                        .arg(&e.value[..])
                        .arg("PX")
                        .arg(ttl_ms(e.ttl));
                    cmd
                })
                .collect()
        };
        let decode = |answers: Vec<Value>, _: &[usize]| {
            answers
                .into_iter()
                .try_for_each(|a| a.extract_error().map(|_| ()))
        };
        self.run("SET (batch)", self.batch(groups, false, build, decode))
            .await
            .map(|_| ())
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        match keys.len() {
            0 => return Ok(()),
            1 => {
                let cmd = redis::cmd("DEL").arg(&keys[0]).to_owned();
                return self.run("DEL", self.send::<()>(&cmd, None)).await;
            }
            _ => {}
        }
        // One single-key `DEL` per key, in one pipeline per primary: while a slot migrates, a
        // multi-key `DEL` whose keys are not all on the source (a value key with its absent
        // lease key) answers `TRYAGAIN` for the whole migration; single keys follow `ASK`.
        let groups = self.groups(keys.iter().map(String::as_str));
        let build = |indices: &[usize]| {
            indices
                .iter()
                .map(|i| redis::cmd("DEL").arg(&keys[*i]).to_owned())
                .collect()
        };
        let decode = |answers: Vec<Value>, _: &[usize]| {
            answers
                .into_iter()
                .try_for_each(|a| a.extract_error().map(|_| ()))
        };
        // A slot that migrates meanwhile is retried key by key (see `batch_by_slot`).
        self.run("DEL (batch)", self.batch(groups, false, build, decode))
            .await
            .map(|_| ())
    }

    async fn set_after_delete(
        &self,
        first: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        self.check_size(key, value.len())?;
        // Both keys hash to one slot: one pipeline to its primary, the `DEL` first. A slot
        // that migrates meanwhile is retried key by key, in the same order (see
        // `batch_by_slot`).
        let keys = [first, key];
        let groups = self.groups(keys.iter().copied());
        let build = |indices: &[usize]| {
            indices
                .iter()
                .map(|i| {
                    if *i == 0 {
                        redis::cmd("DEL").arg(first).to_owned()
                    } else {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(key).arg(&value[..]).arg("PX").arg(ttl_ms(ttl));
                        cmd
                    }
                })
                .collect()
        };
        let decode = |answers: Vec<Value>, _: &[usize]| {
            answers
                .into_iter()
                .try_for_each(|a| a.extract_error().map(|_| ()))
        };
        self.run(
            "DEL + SET (pipeline)",
            self.batch(groups, false, build, decode),
        )
        .await
        .map(|_| ())
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let Some(primaries) = self.inner.topology.primaries() else {
            return Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "the slot map of the Redis Cluster at {} is not known yet; cannot scan \
                     its primaries",
                    self.inner.ctx.endpoint
                ),
            ));
        };
        let pattern = format!("{}*", glob_escape(prefix));
        let scans = primaries
            .into_iter()
            .map(|node| self.scan_delete(node, &pattern));
        let mut total = 0;
        for result in join_all(scans).await {
            total += result?;
        }
        Ok(total)
    }

    /// Through the read queue of the key's primary: one script call when the read goes out
    /// alone, else the batched read and `SET NX` on a miss. Both keys in one slot.
    async fn get_or_lease(
        &self,
        key: &str,
        lease_key: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Result<LeaseRead> {
        self.coalesced_get_or_lease(key, lease_key, token, ttl)
            .await
    }

    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        self.check_size(key, value.len())?;
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .to_owned();
        let answer = self.run("SET NX", self.send::<Value>(&cmd, None)).await?;
        match answer {
            Value::Okay => Ok(true),
            Value::Nil => Ok(false),
            _ => Err(Error::new(
                ErrorKind::Remote,
                format!(
                    "Redis Cluster at {} answered SET NX with an unexpected reply",
                    self.inner.ctx.endpoint
                ),
            )),
        }
    }

    async fn tag_add(&self, tag_key: &str, member: &str, ttl: Duration) -> Result<()> {
        let ttl = ttl_ms(ttl).to_string();
        let args: [&[u8]; 2] = [member.as_bytes(), ttl.as_bytes()];
        self.eval::<i64>(
            "EVALSHA (tag_add)",
            &self.inner.tag_add_script,
            &[tag_key],
            &args,
        )
        .await
        .map(|_| ())
    }

    async fn tag_take(&self, tag_key: &str, pending_key: &str) -> Result<Vec<String>> {
        self.eval(
            "EVALSHA (tag_take)",
            &self.inner.tag_take_script,
            &[tag_key, pending_key],
            &[],
        )
        .await
    }

    async fn tag_done(&self, pending_key: &str, members: &[String]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let cmd = redis::cmd("SREM").arg(pending_key).arg(members).to_owned();
        self.run("SREM", self.send::<()>(&cmd, None)).await
    }

    async fn set_if_lease(
        &self,
        lease_key: &str,
        token: &[u8],
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool> {
        self.check_size(key, value.len())?;
        same_slot(lease_key, key)?;
        let ttl = ttl_ms(ttl).to_string();
        let args: [&[u8]; 3] = [token, &value, ttl.as_bytes()];
        let stored: i64 = self
            .eval(
                "EVALSHA (set_if_lease)",
                &self.inner.lease_script,
                &[lease_key, key],
                &args,
            )
            .await?;
        Ok(stored == 1)
    }

    /// Grouped like [`RemoteStore::set_many`]: one `SET key value NX PX ttl` per key, one
    /// pipeline per primary, primaries in parallel.
    async fn set_nx_many(&self, keys: &[String], value: &[u8], ttl: Duration) -> Result<Vec<bool>> {
        match keys.len() {
            0 => return Ok(Vec::new()),
            1 => return Ok(vec![self.set_nx(&keys[0], value.to_vec(), ttl).await?]),
            _ => {}
        }
        self.check_size(&keys[0], value.len())?;
        let ttl = ttl_ms(ttl);
        let groups = self.groups(keys.iter().map(String::as_str));
        let build = |indices: &[usize]| {
            indices
                .iter()
                .map(|i| {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&keys[*i]).arg(value).arg("NX").arg("PX").arg(ttl);
                    cmd
                })
                .collect()
        };
        let decode = |answers: Vec<Value>, _: &[usize]| {
            answers
                .into_iter()
                .map(set_nx_answer)
                .collect::<RedisResult<Vec<bool>>>()
        };
        let parts = self
            .run("SET NX (batch)", self.batch(groups, false, build, decode))
            .await?;
        Ok(scatter(keys.len(), false, parts))
    }

    /// Grouped like [`RemoteStore::set_many`] (a fill's lease key and key share a slot): one
    /// `EVALSHA` of the lease script per fill, one pipeline per primary, primaries in
    /// parallel. Fills answered `NOSCRIPT` did nothing; as in [`RemoteStore::set_if_lease`],
    /// they are sent again after a `SCRIPT LOAD` on every primary, all within one
    /// `response_timeout`. No `EVAL`: the minimal ACL rules refuse it.
    async fn set_if_lease_many(&self, fills: Vec<LeaseFill>) -> Result<Vec<bool>> {
        for f in &fills {
            self.check_size(&f.key, f.value.len())?;
            same_slot(&f.lease_key, &f.key)?;
        }
        if fills.len() < 2 {
            let mut out = Vec::with_capacity(1);
            for f in fills {
                out.push(
                    self.set_if_lease(&f.lease_key, &f.token, &f.key, f.value, f.ttl)
                        .await?,
                );
            }
            return Ok(out);
        }
        let script = &self.inner.lease_script;
        let ttls: Vec<String> = fills.iter().map(|f| ttl_ms(f.ttl).to_string()).collect();
        let command = |i: usize| {
            let f = &fills[i];
            let args: [&[u8]; 3] = [&f.token, &f.value, ttls[i].as_bytes()];
            script.command(&[&f.lease_key, &f.key], &args)
        };
        let decode = |answers: Vec<Value>, _: &[usize]| {
            answers
                .into_iter()
                .map(lease_answer)
                .collect::<RedisResult<Vec<Option<bool>>>>()
        };
        let run = async {
            let groups = self.groups(fills.iter().map(|f| f.key.as_str()));
            let build = |indices: &[usize]| indices.iter().map(|i| command(*i)).collect();
            let parts = self.batch(groups, false, build, decode).await?;
            let mut stored = scatter(fills.len(), None, parts);
            for _ in 0..SCRIPT_LOAD_ATTEMPTS {
                let missing: Vec<usize> =
                    (0..stored.len()).filter(|i| stored[*i].is_none()).collect();
                if missing.is_empty() {
                    break;
                }
                self.load_on_primaries(script).await?;
                let groups = self.groups(missing.iter().map(|i| fills[*i].key.as_str()));
                let build =
                    |indices: &[usize]| indices.iter().map(|j| command(missing[*j])).collect();
                for (indices, answers) in self.batch(groups, false, build, decode).await? {
                    for (j, answer) in indices.into_iter().zip(answers) {
                        stored[missing[j]] = answer;
                    }
                }
            }
            stored
                .into_iter()
                .map(|s| s.ok_or_else(noscript_after_load))
                .collect::<RedisResult<Vec<bool>>>()
        };
        self.run("EVALSHA (set_if_lease batch)", run).await
    }
}

/// Whether one `SET NX` stored (`OK`) or found the key taken (nil).
fn set_nx_answer(answer: Value) -> RedisResult<bool> {
    match answer.extract_error()? {
        Value::Okay => Ok(true),
        Value::Nil => Ok(false),
        _ => Err(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected answer to SET NX",
        ))),
    }
}

/// The answer of a slot's single command (`MGET`, `DEL`), its server error extracted.
fn only(answers: Vec<Value>) -> RedisResult<Value> {
    let n = answers.len();
    match <[Value; 1]>::try_from(answers) {
        Ok([answer]) => answer.extract_error(),
        Err(_) => Err(wrong_length(n, 1)),
    }
}

/// `MGET` answer of the keys at `indices` (a `GET` answer for a single key).
fn decode_mget(answers: Vec<Value>, indices: &[usize]) -> RedisResult<Vec<Option<Vec<u8>>>> {
    let n = indices.len();
    if n == 1 {
        return Ok(vec![redis::from_redis_value(only(answers)?)?]);
    }
    let values: Vec<Option<Vec<u8>>> = redis::from_redis_value(only(answers)?)?;
    if values.len() != n {
        return Err(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "MGET answer of the wrong length",
            format!("{} values for {n} keys", values.len()),
        )));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use cache_redis::support::MAX_TTL_MS;

    use super::*;

    #[test]
    fn ttl_is_clamped() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(ttl_ms(Duration::MAX), MAX_TTL_MS);
    }
}
