//! The documented ACL rules (docs/security.md) on a real Redis Cluster (3 primaries,
//! 3 replicas, started by cache-testkit): a user with exactly the minimal cluster rule set,
//! set with `ACL SETUSER` on every node, runs every operation of the cache (fills, leases,
//! tags, clear, the bus, batch loads) on adversarial keys, and no node's `ACL LOG` records a
//! denied command. An authorisation error (a user without `+get`) is reported as
//! `ErrorKind::Auth` naming the command, every time: it does not open the circuit breaker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_testkit::{ClusterOptions, RedisCluster};
use cache_tiered::core::DEFAULT_MAX_KEY_LEN;
use cache_tiered::core::{BreakerConfig, BreakerStore, CircuitBreaker};
use cache_tiered::{
    BusConfig, Cache, ClusterConfig, ClusterStore, Engine, ErrorKind, MsgPack, RemoteStore,
};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const PASSWORD: &str = "cluster-acl-pa55";
const TENANT: &str = "tenantA";

/// The minimal rule set of docs/security.md (standalone), without `+client|tracking`
/// (tracking needs standalone Redis) and `+client|setinfo` (added on Redis 7.2+ only).
const RULES_MINIMAL: &str = "resetkeys ~tenantA:* resetchannels &tenantA:* -@all \
    +ping \
    +get +mget +set +del +unlink +scan \
    +evalsha +script|load +sadd +smembers +srem +pttl +pexpire \
    +publish +subscribe";

/// What a cluster client needs on top: the slot map (`CLUSTER SLOTS`, at connect and on every
/// refresh) and `READONLY` (sent by redis-rs on every node connection when a read-routing
/// strategy is set, as `ClusterStore` does).
const RULES_CLUSTER: &str = "+cluster|slots +readonly";

/// A private cluster (its ACL log belongs to this test alone) whose every node knows the
/// user `TENANT` with `rules`.
fn cluster_with_user(rules: &str) -> Result<RedisCluster, cache_testkit::Error> {
    let cluster = ClusterOptions::new().start()?;
    for port in cluster.ports() {
        let mut args = vec![
            "ACL".to_owned(),
            "SETUSER".to_owned(),
            TENANT.to_owned(),
            "on".to_owned(),
            format!(">{PASSWORD}"),
        ];
        args.extend(rules.split_whitespace().map(str::to_owned));
        cluster.cli(port, &args)?;
        // Redis 7.2+ only; an error on older servers is expected.
        let _ = cluster.cli(port, &["ACL", "SETUSER", TENANT, "+client|setinfo"]);
    }
    Ok(cluster)
}

/// Every node's `ACL LOG`, empty when no node denied anything.
fn acl_logs(cluster: &RedisCluster) -> String {
    let mut out = String::new();
    for port in cluster.ports() {
        let log = cluster.cli(port, &["ACL", "LOG"]).expect("ACL LOG");
        if !log.trim().is_empty() {
            out.push_str(&format!("node {port}:\n{}\n", log.trim()));
        }
    }
    out
}

fn tenant_config(cluster: &RedisCluster) -> ClusterConfig {
    ClusterConfig::builder()
        .with_urls(cluster.urls())
        .with_username(TENANT)
        .with_password(PASSWORD)
        .with_response_timeout(Duration::from_secs(2))
        .build()
        .expect("valid config")
}

async fn tenant_engine(cluster: &RedisCluster) -> Result<Engine, cache_tiered::Error> {
    cache_tiered::builder(TENANT)
        .with_cluster(tenant_config(cluster))
        .with_bus_config(BusConfig::default().with_heartbeat(Duration::from_millis(200)))
        .build()
        .await
}

fn strings(e: &Engine, ns: &str) -> Result<Cache<String, MsgPack>, cache_tiered::Error> {
    e.cache::<String, MsgPack>(ns)
        .with_jitter(0.0)
        .with_l1_ttl(Duration::from_secs(300))
        .with_l2_ttl(Duration::from_secs(600))
        .build()
}

fn value_of(key: &str, generation: u32) -> String {
    format!("value-of:{key}:gen{generation}")
}

async fn wait_until(mut f: impl FnMut() -> bool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

/// The adversarial keys of the standalone test (`security.rs`), hash tags included: they
/// decide the slot, and a lease key must share its value key's slot.
fn adversarial_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "plain",
        "*",
        "?",
        "[a-z]",
        "\\",
        "{",
        "}",
        "}{",
        "{}",
        ":",
        "a:b:c",
        "line\nbreak",
        "\r\n*1\r\n$4\r\nPING\r\n",
        "{user:1}",
        "{user:1}:profile",
        "{user:1}}",
        "tenantB:stolen",
        "*:__inv",
        "__lease:x",
        "__tags:x",
        "nul\0byte",
        "ключ",
        "🔑🗝",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    keys.push("k".repeat(DEFAULT_MAX_KEY_LEN));
    keys.push(format!("{{{}}}", "x".repeat(DEFAULT_MAX_KEY_LEN - 2)));
    keys.extend((0..40).map(|i| format!("spread-{i}")));
    keys
}

fn adversarial_tags() -> Vec<String> {
    ["*", "{t}", "t\n", ":", "ключ", "tenantB", "a b"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// Run every operation of two engines (one bus between them) with the tenant prefix; every
/// result is checked, and no L2 or publish error may occur.
async fn every_operation(cluster: &RedisCluster, ns: &str) -> TestResult {
    let a_engine = tenant_engine(cluster).await?;
    let b_engine = tenant_engine(cluster).await?;
    let a = strings(&a_engine, ns)?;
    let b = strings(&b_engine, ns)?;
    let keys = adversarial_keys();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // get (miss), get_or_load (lease + compare-and-set fill), get from L2 in another engine.
    for k in &keys {
        assert_eq!(a.get(k).await?, None, "{k:?}");
        let key = k.clone();
        let v = a
            .get_or_load(k, move |_| async move {
                Ok::<_, std::io::Error>(value_of(&key, 0))
            })
            .await?;
        assert_eq!(*v, value_of(k, 0), "{k:?}");
        assert_eq!(b.get(k).await?.as_deref(), Some(&value_of(k, 0)), "{k:?}");
    }

    // set: the bus drops B's L1 copies.
    for k in &keys {
        a.set(k, value_of(k, 1)).await?;
    }
    let dropped = wait_until(
        || keys.iter().all(|k| b.get_local(k).is_none()),
        Duration::from_secs(5),
    )
    .await;
    assert!(dropped, "B kept L1 copies after A's writes");
    for k in &keys {
        assert_eq!(b.get(k).await?.as_deref(), Some(&value_of(k, 1)), "{k:?}");
    }

    // get_many from L1 and from L2 (one MGET per slot, one pipeline per primary).
    let got = a.get_many(&keys).await?;
    b.clear_local();
    let got_b = b.get_many(&keys).await?;
    for ((k, x), y) in keys.iter().zip(got).zip(got_b) {
        assert_eq!(x.as_deref(), Some(&value_of(k, 1)), "{k:?}");
        assert_eq!(y.as_deref(), Some(&value_of(k, 1)), "{k:?}");
    }

    // set_with_tags and invalidate_tag.
    let tags = adversarial_tags();
    for (i, k) in keys.iter().enumerate() {
        let own = &tags[i % tags.len()];
        a.set_with_tags(k, value_of(k, 2), &[own.as_str(), "all"])
            .await?;
    }
    for (i, tag) in tags.iter().enumerate() {
        let members = keys
            .iter()
            .enumerate()
            .filter(|(j, _)| j % tags.len() == i)
            .count() as u64;
        assert_eq!(a.invalidate_tag(tag).await?, members, "tag {tag:?}");
    }
    for k in &keys {
        assert_eq!(a.get(k).await?, None, "{k:?} survived its tag");
    }
    assert_eq!(a.invalidate_tag("all").await?, keys.len() as u64);

    // get_many_or_load: batched leases (SET NX) and batched fills (the lease script).
    let loaded = a
        .get_many_or_load(&keys, |missing| async move {
            Ok::<_, std::io::Error>(
                missing
                    .into_iter()
                    .map(|k| {
                        let v = value_of(&k, 3);
                        (k, v)
                    })
                    .collect::<HashMap<_, _>>(),
            )
        })
        .await?;
    b.clear_local();
    let from_l2 = b.get_many(&keys).await?;
    for ((k, x), y) in keys.iter().zip(loaded).zip(from_l2) {
        assert_eq!(x.as_deref(), Some(&value_of(k, 3)), "{k:?}");
        assert_eq!(y.as_deref(), Some(&value_of(k, 3)), "{k:?}");
    }

    // invalidate: gone from both tiers and from B's L1.
    for k in &keys {
        a.invalidate(k).await?;
    }
    let dropped = wait_until(
        || keys.iter().all(|k| b.get_local(k).is_none()),
        Duration::from_secs(5),
    )
    .await;
    assert!(dropped, "B kept L1 copies after A's invalidations");
    for k in &keys {
        assert_eq!(b.get(k).await?, None, "{k:?}");
    }

    // clear_namespace: SCAN + UNLINK on every primary, a clear message on the bus.
    for k in &keys {
        a.set(k, value_of(k, 4)).await?;
        assert_eq!(b.get(k).await?.as_deref(), Some(&value_of(k, 4)), "{k:?}");
    }
    let deleted = a.clear_namespace().await?;
    assert!(deleted >= keys.len() as u64, "deleted {deleted}");
    let flushed = wait_until(
        || keys.iter().all(|k| b.get_local(k).is_none()),
        Duration::from_secs(5),
    )
    .await;
    assert!(flushed, "B kept L1 copies after clear_namespace");
    for k in &keys {
        assert_eq!(b.get(k).await?, None, "{k:?}");
    }

    for (name, c) in [("a", &a), ("b", &b)] {
        let s = c.stats();
        assert_eq!(s.l2_errors, 0, "{name}: {s:?}");
        assert_eq!(s.l2_corrupt, 0, "{name}: {s:?}");
    }
    for (name, e) in [("a", &a_engine), ("b", &b_engine)] {
        let s = e.bus_stats().unwrap_or_default();
        assert_eq!(s.publish_errors, 0, "{name}: {s:?}");
        assert!(
            s.received_keys > 0 || name == "a",
            "{name} received nothing: {s:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_cluster_acl_rule_set_runs_every_operation() -> TestResult {
    let started = Instant::now();
    let cluster = cluster_with_user(&format!("{RULES_MINIMAL} {RULES_CLUSTER}"))?;
    // No node has the scripts yet: the first EVALSHA on each node meets NOSCRIPT and the
    // script is loaded with SCRIPT LOAD (EVAL is refused by these rules).
    every_operation(&cluster, "ops").await?;
    // Lose the scripts on every node (as after a failover or a restart) and go again.
    for port in cluster.ports() {
        cluster.cli(port, &["SCRIPT", "FLUSH"])?;
    }
    every_operation(&cluster, "again").await?;
    let denied = acl_logs(&cluster);
    assert!(denied.is_empty(), "commands were denied:\n{denied}");
    let mut evals = 0;
    for port in cluster.ports() {
        evals += cluster.server(port)?.command_calls("eval")?;
    }
    assert_eq!(evals, 0, "no EVAL");
    eprintln!(
        "every operation under the minimal cluster rules: {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorisation_error_does_not_open_the_breaker() -> TestResult {
    let rules = format!("{RULES_MINIMAL} {RULES_CLUSTER} -get");
    let cluster = cluster_with_user(&rules)?;
    let store = ClusterStore::connect(tenant_config(&cluster)).await?;
    let breaker = Arc::new(CircuitBreaker::new(
        "L2",
        BreakerConfig::new(2, Duration::from_secs(60)),
        None,
    ));
    let guarded = BreakerStore::new(Arc::new(store), breaker.clone());
    for i in 0..10 {
        let err = guarded
            .get(&format!("tenantA:ns:{i}"))
            .await
            .expect_err("GET is not allowed");
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        assert!(err.message().contains("GET"), "names the command: {err}");
        assert!(err.message().contains(TENANT), "names the user: {err}");
        assert!(!err.to_string().contains(PASSWORD), "{err}");
        assert!(!breaker.is_open(), "opened after {} refusals", i + 1);
    }
    // The allowed commands still go through.
    guarded
        .set("tenantA:ns:x", b"v".to_vec(), Duration::from_secs(5))
        .await?;
    assert!(!breaker.is_open());
    Ok(())
}
