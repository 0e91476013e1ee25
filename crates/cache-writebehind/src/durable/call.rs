//! Redis calls under the response timeout, and how their errors map to [`Error`].

use std::time::Duration;

use cache_core::{Error, ErrorKind, Result};
use cache_redis::redis::{self, FromRedisValue, RedisError, Value};

use super::DurableQueue;

/// A Redis call that failed.
pub(super) enum Failed {
    /// Redis (or the connection) answered with this error.
    Redis(RedisError),
    /// No answer within the response timeout.
    NoAnswer,
}

pub(super) fn redis_error(op: &str, e: RedisError) -> Error {
    let refused = matches!(e.code(), Some("NOPERM" | "NOAUTH" | "WRONGPASS"))
        || e.kind() == redis::ErrorKind::AuthenticationFailed;
    let kind = if refused {
        // A configuration error (ACL rules, credentials): retrying does not help.
        ErrorKind::Auth
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        ErrorKind::Connection
    } else {
        ErrorKind::Remote
    };
    Error::new(kind, format!("write-behind {op}: {e}")).with_source(e)
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl DurableQueue {
    /// Run one command under the response timeout.
    pub(super) async fn query<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        self.bounded(op, cmd.query_async::<T>(&mut conn)).await
    }

    /// Await one Redis call under the response timeout, mapping its error.
    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        self.call(call).await.map_err(|f| self.failed(op, f))
    }

    /// Await one Redis call under the response timeout.
    pub(super) async fn call<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> std::result::Result<T, Failed> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Failed::Redis(e)),
            Err(_) => Err(Failed::NoAnswer),
        }
    }

    pub(super) fn failed(&self, op: &'static str, failed: Failed) -> Error {
        match failed {
            Failed::Redis(e) => redis_error(op, e),
            Failed::NoAnswer => Error::new(
                ErrorKind::Timeout,
                format!(
                    "write-behind {op}: no answer from Redis within {:?}",
                    self.timeout
                ),
            ),
        }
    }

    /// Run a pipeline (a transaction) under the response timeout, ignoring its replies.
    pub(super) async fn transaction(&self, op: &'static str, pipe: &redis::Pipeline) -> Result<()> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async::<Value>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(redis_error(op, e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("write-behind {op}: no answer from Redis"),
            )),
        }
    }

    /// Run one script under the response timeout.
    pub(super) async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        self.bounded(op, inv.invoke_async::<T>(&mut conn)).await
    }
}
