//! The [`RemoteStore`] implementation of [`RedisStore`]: one bounded command, pipeline or
//! script per call, and how their answers are judged.

use cache_core::Capabilities;
use std::time::Duration;

use async_trait::async_trait;
use cache_core::support::check_value_size;
use cache_core::{Error, ErrorKind, LeaseFill, LeaseRead, RemoteEntry, RemoteStore, Result};
use redis::Value;

use super::{glob_escape, lease_read, ttl_ms, RedisStore};
use crate::coalesce;

impl RedisStore {
    fn check_size(&self, key: &str, len: usize) -> Result<()> {
        check_value_size(key, len, self.inner.config.max_value_size)
    }

    /// The `EVALSHA` of the lease script for one compare-and-set fill
    /// (`KEYS = [lease_key, key]`, `ARGV = [token, value, ttl_ms]`).
    fn lease_invocation(
        &self,
        lease_key: &str,
        token: &[u8],
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.inner.lease_script.prepare_invoke();
        invocation
            .key(lease_key)
            .key(key)
            .arg(token)
            .arg(value)
            .arg(ttl_ms(ttl));
        invocation
    }

    /// Send `pipe` (one round trip) under `response_timeout` and return one answer per command,
    /// server errors included as [`Value::ServerError`], so each command's error can be judged
    /// on its own.
    async fn run_pipeline(
        &self,
        op: &'static str,
        mut pipe: redis::Pipeline,
    ) -> Result<Vec<Value>> {
        pipe.ignore_errors();
        let expected = pipe.len();
        let mut conn = self.conn();
        let answers = self
            .run(op, async move {
                pipe.query_async::<Vec<Value>>(&mut conn).await
            })
            .await?;
        self.check_answers(op, expected, answers.len())?;
        Ok(answers)
    }

    /// A pipeline of `expected` commands must have as many answers.
    fn check_answers(&self, op: &str, expected: usize, got: usize) -> Result<()> {
        if got == expected {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Remote,
            format!(
                "Redis at {} answered {op} of {expected} commands with {got} answers",
                self.inner.ctx.endpoint
            ),
        ))
    }

    /// Whether one `SET NX` stored (`OK`) or found the key taken (nil).
    fn set_nx_answer(&self, op: &str, answer: Value) -> Result<bool> {
        match answer
            .extract_error()
            .map_err(|e| self.inner.ctx.map(op, &e))?
        {
            Value::Okay => Ok(true),
            Value::Nil => Ok(false),
            other => Err(Error::new(
                ErrorKind::Remote,
                format!(
                    "Redis at {} answered {op} with an unexpected {}",
                    self.inner.ctx.endpoint,
                    value_type(&other)
                ),
            )),
        }
    }

    /// Whether one run of the lease script stored (`1`) or not (`0`).
    fn lease_answer(&self, op: &str, answer: Value) -> Result<bool> {
        match answer
            .extract_error()
            .map_err(|e| self.inner.ctx.map(op, &e))?
        {
            Value::Int(stored) => Ok(stored == 1),
            other => Err(Error::new(
                ErrorKind::Remote,
                format!(
                    "Redis at {} answered {op} with an unexpected {}",
                    self.inner.ctx.endpoint,
                    value_type(&other)
                ),
            )),
        }
    }
}

/// Whether a pipeline answer is `NOSCRIPT` (the server has not cached the script).
fn is_noscript(answer: &Value) -> bool {
    matches!(answer, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript))
}

#[async_trait]
impl RemoteStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn max_value_size(&self) -> usize {
        self.inner.config.max_value_size
    }

    /// A `GET`, coalesced with the other single-key reads of this store: sent at once when no
    /// read is in flight, else queued and sent with the others as one `MGET` when the read in
    /// flight is answered (see the module `coalesce`). Bounded by `response_timeout` from the
    /// call, queue time included.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        coalesce::read(self, key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let cmd = redis::cmd("MGET").arg(keys).to_owned();
        let values = self
            .run("MGET", async move {
                cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn).await
            })
            .await?;
        if values.len() != keys.len() {
            return Err(Error::new(
                ErrorKind::Remote,
                format!(
                    "Redis at {} answered MGET of {} keys with {} values",
                    self.inner.ctx.endpoint,
                    keys.len(),
                    values.len()
                ),
            ));
        }
        Ok(values)
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.check_size(key, value.len())?;
        let mut conn = self.conn();
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .to_owned();
        self.run("SET", async move { cmd.exec_async(&mut conn).await })
            .await
    }

    async fn set_many(&self, entries: Vec<RemoteEntry>) -> Result<()> {
        for e in &entries {
            self.check_size(&e.key, e.value.len())?;
        }
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("SET")
                .arg(e.key)
                .arg(e.value)
                .arg("PX")
                .arg(ttl_ms(e.ttl))
                .ignore();
        }
        let mut conn = self.conn();
        self.run(
            "SET (pipeline)",
            async move { pipe.exec_async(&mut conn).await },
        )
        .await
    }

    async fn set_after_delete(
        &self,
        first: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<()> {
        self.check_size(key, value.len())?;
        // One round trip: the commands of a pipeline run in order on one connection.
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(first).ignore();
        pipe.cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms(ttl))
            .ignore();
        let mut conn = self.conn();
        self.run("DEL + SET (pipeline)", async move {
            pipe.exec_async(&mut conn).await
        })
        .await
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let cmd = redis::cmd("DEL").arg(keys).to_owned();
        self.run("DEL", async move { cmd.exec_async(&mut conn).await })
            .await
    }

    async fn tag_add(&self, tag_key: &str, member: &str, ttl: Duration) -> Result<()> {
        let mut conn = self.conn();
        let mut inv = self.inner.tag_add_script.prepare_invoke();
        inv.key(tag_key).arg(member).arg(ttl_ms(ttl));
        self.run("EVALSHA (tag_add)", async move {
            inv.invoke_async::<i64>(&mut conn).await.map(|_| ())
        })
        .await
    }

    async fn tag_take(&self, tag_key: &str, pending_key: &str) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let mut inv = self.inner.tag_take_script.prepare_invoke();
        inv.key(tag_key).key(pending_key);
        self.run("EVALSHA (tag_take)", async move {
            inv.invoke_async::<Vec<String>>(&mut conn).await
        })
        .await
    }

    async fn tag_done(&self, pending_key: &str, members: &[String]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let cmd = redis::cmd("SREM").arg(pending_key).arg(members).to_owned();
        self.run("SREM", async move { cmd.exec_async(&mut conn).await })
            .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        // SCAN with a MATCH pattern (glob characters in the prefix escaped), deleting each
        // batch as it comes. Each SCAN/DEL call is bounded by response_timeout.
        let pattern = format!("{}*", glob_escape(prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let mut conn = self.conn();
            let cmd = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .to_owned();
            let (next, keys): (u64, Vec<String>) = self
                .run("SCAN", async move { cmd.query_async(&mut conn).await })
                .await?;
            if !keys.is_empty() {
                let mut conn = self.conn();
                let cmd = redis::cmd("UNLINK").arg(&keys).to_owned();
                let n: u64 = self
                    .run("UNLINK", async move { cmd.query_async(&mut conn).await })
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    async fn set_nx(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        self.check_size(key, value.len())?;
        let mut conn = self.conn();
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .to_owned();
        let answer = self
            .run("SET NX", async move {
                cmd.query_async::<Value>(&mut conn).await
            })
            .await?;
        self.set_nx_answer("SET NX", answer)
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
        let mut conn = self.conn();
        let invocation = self.lease_invocation(lease_key, token, key, &value, ttl);
        let stored = self
            .run("EVALSHA (set_if_lease)", async move {
                invocation.invoke_async::<i64>(&mut conn).await
            })
            .await?;
        Ok(stored == 1)
    }

    /// One script call (`GET`, else `SET NX` of the lease) when the read goes out alone;
    /// else the batched `GET`, then `SET NX` on a miss.
    async fn get_or_lease(
        &self,
        key: &str,
        lease_key: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Result<LeaseRead> {
        let script = || async {
            let op = "EVALSHA (get_or_lease)";
            let mut conn = self.conn();
            let mut invocation = self.inner.get_or_lease_script.prepare_invoke();
            invocation
                .key(key)
                .key(lease_key)
                .arg(token)
                .arg(ttl_ms(ttl));
            let answer = self
                .run(op, async move {
                    invocation.invoke_async::<Value>(&mut conn).await
                })
                .await?;
            lease_read(answer, op, &self.inner.ctx.endpoint)
        };
        coalesce::read_or_lease(self, key, script, || {
            self.set_nx(lease_key, token.to_vec(), ttl)
        })
        .await
    }

    /// One pipeline (one round trip) of `SET key value NX PX ttl`, one per key.
    async fn set_nx_many(&self, keys: &[String], value: &[u8], ttl: Duration) -> Result<Vec<bool>> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        self.check_size(first, value.len())?;
        let ttl = ttl_ms(ttl);
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(ttl);
        }
        let op = "SET NX (pipeline)";
        self.run_pipeline(op, pipe)
            .await?
            .into_iter()
            .map(|answer| self.set_nx_answer(op, answer))
            .collect()
    }

    /// One pipeline (one round trip) of `EVALSHA`s of the lease script, one per fill. Fills
    /// answered `NOSCRIPT` (a restarted server, `SCRIPT FLUSH`) did nothing; as in
    /// [`RemoteStore::set_if_lease`], the script is then loaded and those fills are sent again
    /// (one more pipeline: `SCRIPT LOAD`, then their `EVALSHA`s), all within one
    /// `response_timeout`.
    async fn set_if_lease_many(&self, fills: Vec<LeaseFill>) -> Result<Vec<bool>> {
        for f in &fills {
            self.check_size(&f.key, f.value.len())?;
        }
        if fills.is_empty() {
            return Ok(Vec::new());
        }
        let op = "EVALSHA (set_if_lease pipeline)";
        let invocations: Vec<_> = fills
            .iter()
            .map(|f| self.lease_invocation(&f.lease_key, &f.token, &f.key, &f.value, f.ttl))
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for invocation in &invocations {
            pipe.invoke_script(invocation);
        }
        let script = &self.inner.lease_script;
        let mut conn = self.conn();
        let answers = self
            .run(op, async move {
                let mut answers: Vec<Value> = pipe.query_async(&mut conn).await?;
                let missing: Vec<usize> = (0..answers.len())
                    .filter(|i| is_noscript(&answers[*i]))
                    .collect();
                if missing.is_empty() {
                    return Ok(answers);
                }
                let mut again = redis::pipe();
                again.ignore_errors().load_script(script);
                for i in &missing {
                    again.invoke_script(&invocations[*i]);
                }
                let mut retried = again
                    .query_async::<Vec<Value>>(&mut conn)
                    .await?
                    .into_iter();
                // `SCRIPT LOAD` failing (an ACL refusing it, say) is the error to report.
                if let Some(loaded) = retried.next() {
                    loaded.extract_error()?;
                }
                for (i, answer) in missing.into_iter().zip(retried) {
                    answers[i] = answer;
                }
                Ok(answers)
            })
            .await?;
        self.check_answers(op, fills.len(), answers.len())?;
        answers
            .into_iter()
            .map(|answer| self.lease_answer(op, answer))
            .collect()
    }
}

/// A short name of a reply's type, for messages (never its content).
fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "integer",
        Value::BulkString(_) => "bulk string",
        Value::Array(_) => "array",
        Value::SimpleString(_) => "simple string",
        Value::Okay => "OK",
        _ => "reply",
    }
}
