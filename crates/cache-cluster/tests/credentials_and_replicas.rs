//! Rotating credentials and replica reads on a real 6-node Redis Cluster (cache-testkit):
//!
//! - a [`CredentialsProvider`] is asked by every node connection and by the bus's subscriber:
//!   an ACL password changed on every node (`ACL SETUSER app resetpass >new`) plus killed
//!   connections (`CLIENT KILL USER app`) -> the store and the bus work again with the
//!   provider's new password;
//! - replica reads (off by default) send `GET` / `MGET` to the replicas of the key's shard
//!   (counted with `INFO commandstats`), and with them off no read reaches a replica.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_cluster::{ClusterBus, ClusterConfig, ClusterStore, Credentials, CredentialsProvider};
use cache_core::RemoteStore;
use cache_core::{BusEvent, BusTransport};
use cache_testkit::{shared_cluster, RedisCluster};
use tokio::sync::mpsc;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const USER: &str = "app";
const SECRET: &str = "Cluster-r0tated";

fn password(generation: u32) -> String {
    format!("{SECRET}-{generation}")
}

#[derive(Debug, Default)]
struct Rotating {
    generation: AtomicU32,
    calls: AtomicU64,
}

#[async_trait::async_trait]
impl CredentialsProvider for Rotating {
    async fn credentials(&self) -> cache_core::Result<Credentials> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(Credentials::with_user(
            USER,
            password(self.generation.load(Ordering::Relaxed)),
        ))
    }
}

/// Set the password of `app` on every node (ACLs are per node), and optionally drop its
/// connections.
fn set_password(cluster: &RedisCluster, generation: u32, kill: bool) {
    for port in cluster.ports() {
        cluster
            .cli(
                port,
                &[
                    "ACL",
                    "SETUSER",
                    USER,
                    "on",
                    "resetpass",
                    &format!(">{}", password(generation)),
                    "~*",
                    "&*",
                    "+@all",
                ],
            )
            .expect("ACL SETUSER");
        if kill {
            cluster
                .cli(port, &["CLIENT", "KILL", "USER", USER])
                .expect("CLIENT KILL USER");
        }
    }
}

fn keys(prefix: &str) -> Vec<String> {
    (0..12).map(|i| format!("{prefix}:{i}")).collect()
}

/// Write and read back keys across every shard until it works; the time it took.
async fn until_it_works(store: &ClusterStore, prefix: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let ks = keys(prefix);
    loop {
        let value = format!("v{}", started.elapsed().as_nanos()).into_bytes();
        let mut ok = true;
        for k in &ks {
            if store
                .set(k, value.clone(), Duration::from_secs(60))
                .await
                .is_err()
            {
                ok = false;
                break;
            }
        }
        if ok {
            ok = matches!(store.get_many(&ks).await, Ok(v) if v.iter().all(|x| x.as_ref() == Some(&value)));
        }
        if ok {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the cluster store did not work again within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next_state(rx: &mut mpsc::UnboundedReceiver<BusEvent>, limit: Duration) -> BusEvent {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(BusEvent::Message { .. } | BusEvent::KeysChanged(_))) => {}
            Ok(Some(e)) => return e,
            Ok(None) => panic!("the bus ended"),
            Err(_) => panic!("no bus state change within {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_bus_reconnect_with_the_rotated_password() -> TestResult {
    let cluster = shared_cluster()?;
    set_password(cluster, 1, false);
    let provider = Arc::new(Rotating::default());
    provider.generation.store(1, Ordering::Relaxed);
    let config = ClusterConfig::builder()
        .with_urls(cluster.urls())
        .with_response_timeout(Duration::from_secs(1))
        .with_credentials_provider(provider.clone())
        .build()?;
    let store = ClusterStore::connect(config.clone()).await?;
    let publisher = ClusterStore::connect(config.clone()).await?;
    until_it_works(&store, "rot", Duration::from_secs(2)).await;
    let channel = "app:ns:__inv";
    let bus = ClusterBus::new(&store);
    bus.subscribe(channel);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = bus.start(tx)?;
    assert!(matches!(
        next_state(&mut rx, Duration::from_secs(5)).await,
        BusEvent::Connected
    ));
    let before = provider.calls.load(Ordering::Relaxed);

    provider.generation.store(2, Ordering::Relaxed);
    let rotated = Instant::now();
    set_password(cluster, 2, true);
    let took = until_it_works(&store, "rot", Duration::from_secs(10)).await;
    eprintln!("cluster store back {took:?} after the password rotation");
    assert!(provider.calls.load(Ordering::Relaxed) > before);

    assert!(matches!(
        next_state(&mut rx, Duration::from_secs(5)).await,
        BusEvent::Disconnected
    ));
    assert!(matches!(
        next_state(&mut rx, Duration::from_secs(10)).await,
        BusEvent::Connected
    ));
    eprintln!(
        "cluster bus back {:?} after the password rotation",
        rotated.elapsed()
    );
    until_it_works(&publisher, "rot-pub", Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut delivered = false;
    while !delivered && Instant::now() < deadline {
        ClusterBus::new(&publisher)
            .publish(channel, b"after-rotation".to_vec())
            .await?;
        if let Ok(Some(BusEvent::Message { payload, .. })) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            delivered = payload == b"after-rotation";
        }
    }
    assert!(
        delivered,
        "no invalidation reached the bus after the rotation"
    );
    task.abort();
    Ok(())
}

/// `GET` + `MGET` calls on `ports` since the last `CONFIG RESETSTAT`.
fn reads_on(cluster: &RedisCluster, ports: &[u16]) -> u64 {
    ports
        .iter()
        .map(|p| {
            let server = cluster.server(*p).expect("node");
            server.command_calls("get").expect("stats")
                + server.command_calls("mget").expect("stats")
        })
        .sum()
}

/// A replication offset from `INFO replication` (`master_repl_offset`, `slave_repl_offset`).
fn repl_offset(cluster: &RedisCluster, port: u16, field: &str) -> u64 {
    let info = cluster.cli(port, &["INFO", "replication"]).expect("INFO");
    info.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("{field}:"))
                .map(str::to_owned)
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reads_are_served_by_replicas_and_off_by_default() -> TestResult {
    let cluster = shared_cluster()?;
    // Keys of one slot (a hash tag), so one shard's primary and replicas are watched.
    let ks: Vec<String> = (0..4).map(|i| format!("{{replica-reads}}:{i}")).collect();
    let slot = cluster.keyslot(ks[0].as_bytes())?;
    let primary = cluster.master_for_slot(slot)?.port;
    let replicas: Vec<u16> = cluster
        .replicas_of(primary)?
        .into_iter()
        .map(|n| n.port)
        .collect();
    assert!(!replicas.is_empty(), "the shard has no replica");

    let urls = cluster.urls();
    let primary_store =
        ClusterStore::connect(ClusterConfig::builder().with_urls(urls.clone()).build()?).await?;
    assert!(!ClusterConfig::default().replica_reads, "off by default");
    for k in &ks {
        primary_store
            .set(k, b"v".to_vec(), Duration::from_secs(60))
            .await?;
    }
    // Replication is asynchronous: wait until every replica has caught up with the primary.
    let written = repl_offset(cluster, primary, "master_repl_offset");
    for port in &replicas {
        let deadline = Instant::now() + Duration::from_secs(5);
        while repl_offset(cluster, *port, "slave_repl_offset") < written {
            assert!(Instant::now() < deadline, "replica {port} never caught up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // Redis leaves a replica out of `CLUSTER SLOTS` until the nodes have heard (by gossip)
    // that it replicated something (offset > 0), and a fresh test cluster has replicated
    // nothing: wait until every node lists the shard's replicas, then connect.
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in cluster.ports() {
        loop {
            let slots = cluster.cli(port, &["CLUSTER", "SLOTS"])?;
            let listed: Vec<&str> = slots.lines().map(str::trim).collect();
            if replicas
                .iter()
                .all(|r| listed.contains(&r.to_string().as_str()))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {port} never listed the replicas"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let replica_store = ClusterStore::connect(
        ClusterConfig::builder()
            .with_urls(urls)
            .with_replica_reads(true)
            .build()?,
    )
    .await?;

    // Off (the default): no read reaches a replica.
    for port in &replicas {
        cluster.cli(*port, &["CONFIG", "RESETSTAT"])?;
    }
    for _ in 0..10 {
        assert_eq!(primary_store.get(&ks[0]).await?, Some(b"v".to_vec()));
        assert_eq!(primary_store.get_many(&ks).await?.len(), ks.len());
    }
    assert_eq!(
        reads_on(cluster, &replicas),
        0,
        "a read reached a replica with replica reads off"
    );

    // On: reads are served by the replicas, with the right values.
    for _ in 0..10 {
        assert_eq!(replica_store.get(&ks[0]).await?, Some(b"v".to_vec()));
        let values = replica_store.get_many(&ks).await?;
        assert!(
            values.iter().all(|v| v.as_deref() == Some(&b"v"[..])),
            "{values:?}"
        );
    }
    let served = reads_on(cluster, &replicas);
    assert!(served >= 20, "replicas served {served} of 20 reads");
    // Writes still go to the primary.
    replica_store
        .set(&ks[0], b"w".to_vec(), Duration::from_secs(60))
        .await?;
    assert_eq!(primary_store.get(&ks[0]).await?, Some(b"w".to_vec()));
    Ok(())
}
