//! Choosing the L2 by URL ([`crate::Builder::with_l2_url`]): the scheme names the backend, the
//! backend's feature compiles it in.
//!
//! | scheme | backend | feature |
//! |---|---|---|
//! | `memory://` | the in-process [`crate::MemoryStore`] (not shared) | none |
//! | `redis://[user:password@]host[:port][/db]` | standalone Redis | `redis` |
//! | `rediss://...` | standalone Redis over TLS | `tls` |
//! | `redis+cluster://[user:password@]host:port[,host:port...]` | Redis Cluster, seed nodes | `cluster` |
//! | `rediss+cluster://...` | Redis Cluster over TLS | `cluster`, `tls` |
//! | `redis+sentinel://[user:password@]host[:port][,host[:port]...]/master[/db]` | the master of a Sentinel group | `sentinel` |
//! | `rediss+sentinel://...` | the same, data connections over TLS | `sentinel`, `tls` |
//!
//! In the cluster and sentinel forms the credentials are those of the data connections (every
//! node, or the master); sentinels that need their own are configured with the typed
//! `SentinelConfig`. Sentinel ports default to 26379, Redis ports to 6379.

use crate::L2;
use cache_core::{Error, ErrorKind, Result};

/// The environment variable [`crate::Builder::with_l2_from_env`] reads.
pub const L2_URL_ENV: &str = "TIERCACHE_L2_URL";

/// What a URL names, before any feature is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Parsed {
    Memory,
    Redis {
        url: String,
    },
    Cluster {
        seeds: Vec<String>,
    },
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        data: String,
    },
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidUrl, message)
}

fn needs(feature: &str, scheme: &str) -> Error {
    Error::new(
        ErrorKind::InvalidConfig,
        format!(
            "the {scheme}:// L2 needs tiercache's `{feature}` feature, which is not compiled in"
        ),
    )
}

/// The scheme of `url`, lower-cased, and the rest after `://`.
fn split_scheme(url: &str) -> Result<(String, &str)> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        invalid("an L2 URL looks like scheme://..., e.g. redis://host:6379/".into())
    })?;
    Ok((scheme.to_ascii_lowercase(), rest))
}

/// `[userinfo@]hosts[/path]` split into its parts (userinfo kept verbatim, never printed).
fn split_authority(rest: &str) -> (Option<&str>, &str, &str) {
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts, path),
        None => (None, authority, path),
    }
}

/// The hosts of a comma-separated list, each with `default_port` when it names none.
fn hosts(list: &str, default_port: u16, scheme: &str) -> Result<Vec<String>> {
    let hosts: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            // `[::1]:6379`, `host:6379`, `host`
            let has_port = match h.rfind(']') {
                Some(end) => h[end..].contains(':'),
                None => h.contains(':'),
            };
            if has_port {
                h.to_owned()
            } else {
                format!("{h}:{default_port}")
            }
        })
        .collect();
    if hosts.is_empty() {
        return Err(invalid(format!(
            "a {scheme}:// URL names at least one host"
        )));
    }
    Ok(hosts)
}

fn parse(url: &str) -> Result<Parsed> {
    let (scheme, rest) = split_scheme(url)?;
    match scheme.as_str() {
        "memory" => Ok(Parsed::Memory),
        "redis" | "rediss" => Ok(Parsed::Redis {
            url: url.to_owned(),
        }),
        "redis+cluster" | "rediss+cluster" => {
            let data = if scheme.starts_with("rediss") {
                "rediss"
            } else {
                "redis"
            };
            let (user, list, _) = split_authority(rest);
            let user = user.map(|u| format!("{u}@")).unwrap_or_default();
            let seeds = hosts(list, 6379, &scheme)?
                .into_iter()
                .map(|h| format!("{data}://{user}{h}/"))
                .collect();
            Ok(Parsed::Cluster { seeds })
        }
        "redis+sentinel" | "rediss+sentinel" => {
            let data = if scheme.starts_with("rediss") {
                "rediss"
            } else {
                "redis"
            };
            let (user, list, path) = split_authority(rest);
            let sentinels = hosts(list, 26379, &scheme)?
                .into_iter()
                .map(|h| format!("redis://{h}/"))
                .collect();
            let mut parts = path.trim_start_matches('/').split('/');
            let master = parts.next().unwrap_or_default().to_owned();
            if master.is_empty() {
                return Err(invalid(format!(
                    "a {scheme}:// URL names the master after the hosts: {scheme}://host:26379/mymaster"
                )));
            }
            let db = parts.next().filter(|d| !d.is_empty());
            if let Some(d) = db {
                if d.parse::<u32>().is_err() {
                    return Err(invalid(format!(
                        "the database of a {scheme}:// URL is a number, after the master name"
                    )));
                }
            }
            let user = user.map(|u| format!("{u}@")).unwrap_or_default();
            // The host is a placeholder: the store connects to the master the sentinels name.
            let data = format!("{data}://{user}127.0.0.1:6379/{}", db.unwrap_or("0"));
            Ok(Parsed::Sentinel {
                sentinels,
                master,
                data,
            })
        }
        other => Err(invalid(format!(
            "unknown L2 scheme {other}:// (known: memory, redis, rediss, redis+cluster, \
             rediss+cluster, redis+sentinel, rediss+sentinel)"
        ))),
    }
}

/// The L2 that `url` names, or a clear error: a malformed URL ([`ErrorKind::InvalidUrl`]), or
/// a backend whose feature is not compiled in ([`ErrorKind::InvalidConfig`], naming it).
pub(crate) fn l2_of(url: &str) -> Result<L2> {
    let tls = url.trim_start().to_ascii_lowercase().starts_with("rediss");
    if tls && !cfg!(feature = "tls") {
        let scheme = url.split("://").next().unwrap_or("rediss");
        return Err(needs("tls", scheme));
    }
    match parse(url.trim())? {
        Parsed::Memory => Ok(L2::Memory),
        #[cfg(feature = "redis")]
        Parsed::Redis { url } => Ok(L2::RedisUrl(url)),
        #[cfg(not(feature = "redis"))]
        Parsed::Redis { .. } => Err(needs("redis", "redis")),
        #[cfg(feature = "cluster")]
        Parsed::Cluster { seeds } => Ok(L2::Backend(Box::new(
            cache_cluster::ClusterConfig::from_urls(seeds),
        ))),
        #[cfg(not(feature = "cluster"))]
        Parsed::Cluster { .. } => Err(needs("cluster", "redis+cluster")),
        #[cfg(feature = "sentinel")]
        Parsed::Sentinel {
            sentinels,
            master,
            data,
        } => {
            let redis = cache_redis::RedisConfig::builder().with_url(data).build()?;
            let config = cache_redis::SentinelConfig::builder()
                .with_sentinels(sentinels)
                .with_master_name(master)
                .with_redis(redis)
                .build()?;
            Ok(L2::Backend(Box::new(config)))
        }
        #[cfg(not(feature = "sentinel"))]
        Parsed::Sentinel { .. } => Err(needs("sentinel", "redis+sentinel")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn schemes_name_their_backend() {
        assert_eq!(parse("memory://").unwrap(), Parsed::Memory);
        assert_eq!(
            parse("redis://u:p@h:1/2").unwrap(),
            Parsed::Redis {
                url: "redis://u:p@h:1/2".into()
            }
        );
        assert_eq!(
            parse("redis+cluster://u:p@a:7000,b,[::1]:7002").unwrap(),
            Parsed::Cluster {
                seeds: vec![
                    "redis://u:p@a:7000/".into(),
                    "redis://u:p@b:6379/".into(),
                    "redis://u:p@[::1]:7002/".into()
                ]
            }
        );
        assert_eq!(
            parse("REDIS+SENTINEL://:secret@s1,s2:26380/mymaster/3").unwrap(),
            Parsed::Sentinel {
                sentinels: vec!["redis://s1:26379/".into(), "redis://s2:26380/".into()],
                master: "mymaster".into(),
                data: "redis://:secret@127.0.0.1:6379/3".into(),
            }
        );
    }

    #[test]
    fn bad_urls_are_typed_errors_without_the_secret() {
        for (url, kind) in [
            ("host:6379", ErrorKind::InvalidUrl),
            ("mongodb://h", ErrorKind::InvalidUrl),
            ("redis+cluster://:pw@", ErrorKind::InvalidUrl),
            ("redis+sentinel://:pw@s1", ErrorKind::InvalidUrl),
            ("redis+sentinel://:pw@s1/m/x", ErrorKind::InvalidUrl),
        ] {
            let e = parse(url).unwrap_err();
            assert_eq!(e.kind(), kind, "{url}");
            assert!(!e.to_string().contains("pw"), "{e}");
        }
    }

    #[test]
    fn a_scheme_without_its_feature_names_the_feature() {
        #[cfg(not(feature = "cluster"))]
        {
            let e = l2_of("redis+cluster://h:7000").err().unwrap();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
            assert!(e.to_string().contains("`cluster`"), "{e}");
        }
        #[cfg(not(feature = "sentinel"))]
        {
            let e = l2_of("redis+sentinel://h/m").err().unwrap();
            assert!(e.to_string().contains("`sentinel`"), "{e}");
        }
        #[cfg(not(feature = "tls"))]
        {
            let e = l2_of("rediss://h:6380").err().unwrap();
            assert!(e.to_string().contains("`tls`"), "{e}");
        }
        assert!(matches!(l2_of("memory://"), Ok(L2::Memory)));
    }
}
