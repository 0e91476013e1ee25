//! Asking the sentinels: which node is master (`SENTINEL MASTER`), which replicas are usable
//! (`SENTINEL REPLICAS`), and whether a node named so answers `ROLE` as one.

use std::sync::atomic::{AtomicU64, Ordering};

use cache_core::{Error, ErrorKind, Result};
use redis::{AsyncConnectionConfig, Value};

use super::SentinelConfig;
use crate::errors::ErrorContext;
use crate::RedisStore;

/// One sentinel to ask.
struct Node {
    client: redis::Client,
    endpoint: String,
}
/// The sentinels and how to ask them.
pub(super) struct Sentinels {
    pub(super) config: SentinelConfig,
    nodes: Vec<Node>,
    /// For errors about the sentinels (their passwords scrubbed).
    pub(super) ctx: ErrorContext,
    pub(super) lookups: AtomicU64,
}

impl Sentinels {
    /// Validate `config` and make a client for each sentinel (nothing is connected yet).
    pub(super) fn new(config: SentinelConfig) -> Result<Sentinels> {
        let targets = config.sentinel_targets()?;
        #[cfg(feature = "tls")]
        if targets.iter().any(|t| t.tls) {
            // As in RedisStore::connect: our rustls provider is `ring`.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut secrets: Vec<String> = targets.iter().flat_map(|t| t.secrets.clone()).collect();
        secrets.extend(config.redis.resolve()?.secrets);
        let endpoints: Vec<&str> = targets.iter().map(|t| t.endpoint.as_str()).collect();
        let first = &targets[0];
        let ctx = ErrorContext::new(
            format!(
                "sentinels {} (master `{}`)",
                endpoints.join(","),
                config.master_name
            ),
            first.user.clone(),
            first.has_password,
            secrets,
        );
        let mut nodes = Vec::with_capacity(targets.len());
        for target in targets {
            nodes.push(Node {
                client: redis::Client::open(target.info.clone())
                    .map_err(|e| ctx.map("connect", &e))?,
                endpoint: target.endpoint,
            });
        }
        Ok(Sentinels {
            config,
            nodes,
            ctx,
            lookups: AtomicU64::new(0),
        })
    }

    /// `SENTINEL {sub} name` to every sentinel at once, each bounded by the connect and
    /// response timeouts: each sentinel's endpoint with its answer, or why there is none
    /// (passwords scrubbed).
    async fn ask_all<T: redis::FromRedisValue>(
        &self,
        sub: &str,
    ) -> Vec<(&str, std::result::Result<T, String>)> {
        let connect_timeout = self.config.redis.connect_timeout;
        let response_timeout = self.config.redis.response_timeout;
        let name = self.config.master_name.as_str();
        let asks = self.nodes.iter().map(|node| async move {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout));
            let ask = async {
                let mut conn = node
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg(sub)
                    .arg(name)
                    .query_async::<T>(&mut conn)
                    .await
            };
            let limit = connect_timeout + response_timeout;
            let answer = match tokio::time::timeout(limit, ask).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(self.ctx.scrub(&e.to_string())),
                Err(_) => Err(format!("no answer within {limit:?}")),
            };
            (node.endpoint.as_str(), answer)
        });
        futures::future::join_all(asks).await
    }

    /// Ask every sentinel at once (`SENTINEL MASTER name`, each bounded by the connect and
    /// response timeouts) and take, among the answers that name a master not judged down,
    /// the one with the highest configuration epoch (a sentinel that missed the latest
    /// failover names the old master with an older epoch).
    pub(super) async fn find_master(&self) -> Result<(String, u16)> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let name = self.config.master_name.as_str();
        let answers: Vec<(&str, std::result::Result<_, String>)> = self
            .ask_all::<std::collections::HashMap<String, String>>("MASTER")
            .await
            .into_iter()
            .map(|(ep, a)| (ep, a.and_then(|fields| judge(&fields))))
            .collect();
        let best = answers
            .iter()
            .filter_map(|(_, a)| a.as_ref().ok())
            .max_by_key(|(epoch, _, _)| *epoch);
        if let Some((_, host, port)) = best {
            return Ok((host.clone(), *port));
        }
        let why: Vec<String> = answers
            .iter()
            .map(|(ep, a)| match a {
                Ok(_) => format!("{ep}: ok"),
                Err(e) => format!("{ep}: {e}"),
            })
            .collect();
        Err(Error::new(
            ErrorKind::Connection,
            format!(
                "no sentinel names a usable master `{name}` ({})",
                why.join("; ")
            ),
        ))
    }

    /// Ask every sentinel at once `SENTINEL REPLICAS name` and return the replicas that at
    /// least one of them judges usable (not down, link to the master up), each once.
    pub(super) async fn find_replicas(&self) -> Result<Vec<(String, u16)>> {
        let name = self.config.master_name.as_str();
        let mut out: Vec<(String, u16)> = Vec::new();
        let mut answered = false;
        for (_, answer) in self
            .ask_all::<Vec<std::collections::HashMap<String, String>>>("REPLICAS")
            .await
        {
            let Ok(replicas) = answer else {
                continue;
            };
            answered = true;
            for fields in &replicas {
                if let Ok(addr) = judge_replica(fields) {
                    if !out.contains(&addr) {
                        out.push(addr);
                    }
                }
            }
        }
        if !answered {
            return Err(Error::new(
                ErrorKind::Connection,
                format!("no sentinel answered SENTINEL REPLICAS {name}"),
            ));
        }
        Ok(out)
    }

    /// Connect to the replica at `host:port` (the data connection settings) and check that it
    /// says it is a replica.
    pub(super) async fn connect_replica(&self, host: &str, port: u16) -> Result<RedisStore> {
        let store = RedisStore::connect(self.config.master_config(host, port)?).await?;
        let mut conn = store.connection();
        let limit = self.config.redis.response_timeout;
        let role = tokio::time::timeout(limit, redis::cmd("ROLE").query_async::<Value>(&mut conn))
            .await
            .map_err(|_| {
                store
                    .error_context()
                    .elapsed("ROLE", limit, "response_timeout")
            })?
            .map_err(|e| store.error_context().map("ROLE", &e))?;
        if role_is(&role, "slave") {
            return Ok(store);
        }
        Err(Error::new(
            ErrorKind::Connection,
            format!(
                "the sentinels list {} as a replica of `{}`, but it is not one",
                store.endpoint(),
                self.config.master_name
            ),
        ))
    }

    /// Connect to the master at `host:port` and check that it says it is one.
    pub(super) async fn connect_master(&self, host: &str, port: u16) -> Result<RedisStore> {
        let store = RedisStore::connect(self.config.master_config(host, port)?).await?;
        let mut conn = store.connection();
        let limit = self.config.redis.response_timeout;
        let role = tokio::time::timeout(limit, redis::cmd("ROLE").query_async::<Value>(&mut conn))
            .await
            .map_err(|_| {
                store
                    .error_context()
                    .elapsed("ROLE", limit, "response_timeout")
            })?
            .map_err(|e| store.error_context().map("ROLE", &e))?;
        if !role_is(&role, "master") {
            return Err(Error::new(
                ErrorKind::Connection,
                format!(
                    "the sentinels name {} as master `{}`, but it is not a master (yet)",
                    store.endpoint(),
                    self.config.master_name
                ),
            ));
        }
        Ok(store)
    }
}

/// Whether a `ROLE` answer names `role` (`master`, `slave`).
fn role_is(answer: &Value, role: &str) -> bool {
    match answer {
        Value::Array(items) => {
            matches!(items.first(), Some(Value::BulkString(b)) if b.as_slice() == role.as_bytes())
                || matches!(items.first(), Some(Value::SimpleString(s)) if s == role)
        }
        _ => false,
    }
}

/// A replica's `(ip, port)` from one entry of a `SENTINEL REPLICAS` answer, or why it is not
/// usable: it must be flagged a replica, not judged down or disconnected, with its link to
/// the master up.
fn judge_replica(
    fields: &std::collections::HashMap<String, String>,
) -> std::result::Result<(String, u16), String> {
    let flags = fields.get("flags").map(String::as_str).unwrap_or("");
    let flags: Vec<&str> = flags.split(',').collect();
    if !flags.contains(&"slave") {
        return Err(format!("flags {}", flags.join(",")));
    }
    if let Some(bad) = flags
        .iter()
        .find(|f| matches!(**f, "s_down" | "o_down" | "disconnected"))
    {
        return Err(format!("replica judged {bad}"));
    }
    if fields.get("master-link-status").map(String::as_str) != Some("ok") {
        return Err("its link to the master is down".to_owned());
    }
    let ip = fields.get("ip").cloned().ok_or("no ip in the answer")?;
    let port = fields
        .get("port")
        .and_then(|p| p.parse().ok())
        .ok_or("no port in the answer")?;
    Ok((ip, port))
}

/// The master's `(config-epoch, ip, port)` from one sentinel's `SENTINEL MASTER` answer, or
/// why it is not usable.
fn judge(
    fields: &std::collections::HashMap<String, String>,
) -> std::result::Result<(u64, String, u16), String> {
    let flags = fields.get("flags").map(String::as_str).unwrap_or("");
    let flags: Vec<&str> = flags.split(',').collect();
    if !flags.contains(&"master") {
        return Err(format!("flags {}", flags.join(",")));
    }
    // `disconnected` only says the sentinel's own link is not up (yet: it stays for about a
    // second after a switch); whether the node answers as a master is checked by ROLE.
    if let Some(down) = flags.iter().find(|f| matches!(**f, "s_down" | "o_down")) {
        return Err(format!("master judged {down}"));
    }
    let ip = fields.get("ip").cloned().ok_or("no ip in the answer")?;
    let port = fields
        .get("port")
        .and_then(|p| p.parse().ok())
        .ok_or("no port in the answer")?;
    let epoch = fields
        .get("config-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    Ok((epoch, ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_a_master_not_judged_down_is_usable() {
        let ok = fields(&[
            ("flags", "master"),
            ("ip", "127.0.0.1"),
            ("port", "6380"),
            ("config-epoch", "3"),
        ]);
        assert_eq!(judge(&ok), Ok((3, "127.0.0.1".to_owned(), 6380)));
        for flags in [
            "master,s_down",
            "master,s_down,o_down",
            "slave",
            "s_down,master",
        ] {
            let mut f = ok.clone();
            f.insert("flags".to_owned(), flags.to_owned());
            assert!(judge(&f).is_err(), "{flags}");
        }
        let mut f = ok.clone();
        f.remove("port");
        assert!(judge(&f).is_err());
    }

    #[test]
    fn only_a_synced_replica_that_is_up_is_usable() {
        let ok = fields(&[
            ("flags", "slave"),
            ("ip", "127.0.0.1"),
            ("port", "6381"),
            ("master-link-status", "ok"),
        ]);
        assert_eq!(judge_replica(&ok), Ok(("127.0.0.1".to_owned(), 6381)));
        for (field, value) in [
            ("flags", "slave,s_down"),
            ("flags", "slave,disconnected"),
            ("flags", "master"),
            ("master-link-status", "err"),
        ] {
            let mut f = ok.clone();
            f.insert(field.to_owned(), value.to_owned());
            assert!(judge_replica(&f).is_err(), "{field}={value}");
        }
    }
}
