//! redis-rs errors as this crate's errors: the cluster's own transient states (redirects,
//! reconfiguration) as connection errors, refused credentials as auth errors.

use std::time::Duration;

use cache_core::{Error, ErrorKind};
use cache_redis::support::{ErrorContext, PROVIDER_FAILED};
use redis::RedisError;

/// Errors that mean "the slot map changed under this request": worth a retry slot by slot.
pub(super) fn is_topology_error(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || matches!(
            e.code(),
            Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY" | "CROSSSLOT")
        )
}

/// Map a redis-rs error, with the cluster's own transient states as connection errors.
pub(crate) fn map_error(ctx: &ErrorContext, op: &str, e: &RedisError) -> Error {
    let ep = &ctx.endpoint;
    // The cluster client wraps the per-node error of its initial connection in an I/O error
    // ("Failed to create initial connections - ..."); recognise refused credentials in it.
    let text = e.to_string();
    if text.contains(PROVIDER_FAILED) {
        return Error::new(
            ErrorKind::Auth,
            format!(
                "no credentials for Redis Cluster at {ep}: {}",
                ctx.scrub(&text)
            ),
        );
    }
    if [
        "AuthenticationFailed",
        "WRONGPASS",
        "NOAUTH",
        "invalid username-password",
    ]
    .iter()
    .any(|needle| text.contains(needle))
    {
        let message = if ctx.has_password {
            format!(
                "Redis Cluster at {ep} refused the credentials for user `{}`",
                ctx.user()
            )
        } else {
            format!("Redis Cluster at {ep} requires authentication but no password is configured")
        };
        return Error::new(ErrorKind::Auth, message);
    }
    if e.kind() == redis::ErrorKind::ClusterConnectionNotFound {
        return Error::new(
            ErrorKind::Connection,
            format!(
                "no connection to the Redis Cluster node serving {op} ({ep}): {}",
                ctx.scrub(&e.to_string())
            ),
        );
    }
    if let Some(
        code @ ("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY"
        | "LOADING"),
    ) = e.code()
    {
        return Error::new(
            ErrorKind::Connection,
            format!(
                "the Redis Cluster ({ep}) is reconfiguring and could not serve {op} within the \
                 retries ({code}): {}",
                ctx.scrub(&e.to_string())
            ),
        );
    }
    ctx.map(op, e)
}

/// A connect-time error (`None`: our own timeout ran out).
pub(super) fn connect_error(ctx: &ErrorContext, e: Option<&RedisError>, limit: Duration) -> Error {
    let mapped = match e.map(|e| map_error(ctx, "connect", e)) {
        Some(mapped) if mapped.kind() != ErrorKind::Timeout => mapped,
        _ => Error::new(
            ErrorKind::Timeout,
            format!(
                "cannot reach the Redis Cluster at {}: no answer within {limit:?} \
                 (connect_timeout)",
                ctx.endpoint
            ),
        ),
    };
    tracing::warn!(
        endpoint = %ctx.endpoint,
        kind = %mapped.kind(),
        error = %mapped.message(),
        "cannot connect to Redis Cluster"
    );
    mapped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_errors_are_transient_connection_errors() {
        let ctx = ErrorContext::new("cluster h:1".into(), "default".into(), false, vec![]);
        let moved = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::Moved),
            "moved",
            "3999 127.0.0.1:6381".to_owned(),
        ));
        let e = map_error(&ctx, "GET", &moved);
        assert_eq!(e.kind(), ErrorKind::Connection);
        assert!(e.is_transient());
        let none = RedisError::from((redis::ErrorKind::ClusterConnectionNotFound, "none"));
        assert_eq!(map_error(&ctx, "GET", &none).kind(), ErrorKind::Connection);
        let other = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "boom",
        ));
        assert_eq!(map_error(&ctx, "GET", &other).kind(), ErrorKind::Remote);
    }
}
