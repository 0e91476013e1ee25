//! Replica reads on a real Sentinel group (feature `sentinel`; cache-testkit starts a master,
//! a replica and three sentinels): off by default no read reaches the replica; with
//! `replica_reads` the store's `get` / `get_many` are served by the replica the sentinels list
//! (counted with `INFO commandstats`), writes stay on the master, and a replica that dies
//! sends reads back to the master.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cache_core::RemoteStore;
use cache_redis::{RedisConfig, SentinelConfig, SentinelStore};
use cache_testkit::{RedisSentinel, RedisServer};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn config(group: &RedisSentinel, replica_reads: bool) -> SentinelConfig {
    SentinelConfig::builder()
        .with_sentinels(group.sentinel_urls())
        .with_master_name(group.master_name())
        .with_redis(
            RedisConfig::builder()
                .with_response_timeout(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .with_replica_reads(replica_reads)
        .build()
        .unwrap()
}

fn reads(server: &RedisServer) -> u64 {
    server.command_calls("get").unwrap() + server.command_calls("mget").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reads_are_served_by_the_replica_and_off_by_default() -> TestResult {
    let group = RedisSentinel::start()?;
    let master = group.master_server()?;
    let replica = group
        .nodes()
        .iter()
        .find(|n| n.port() != master.port())
        .expect("a replica");

    let plain = SentinelStore::connect(config(&group, false)).await?;
    assert_eq!(plain.replica(), None, "off by default");
    assert!(!SentinelConfig::default().replica_reads);
    let keys: Vec<String> = (0..4).map(|i| format!("rr:{i}")).collect();
    for k in &keys {
        plain.set(k, b"v".to_vec(), Duration::from_secs(60)).await?;
    }
    // Replication is asynchronous: wait until the replica has the keys.
    let deadline = Instant::now() + Duration::from_secs(5);
    while replica
        .cli(&["EXISTS", &keys[0], &keys[1], &keys[2], &keys[3]])?
        .trim()
        != "4"
    {
        assert!(Instant::now() < deadline, "the replica never got the keys");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    replica.cli(&["CONFIG", "RESETSTAT"])?;
    for _ in 0..10 {
        assert_eq!(plain.get(&keys[0]).await?, Some(b"v".to_vec()));
        assert_eq!(plain.get_many(&keys).await?.len(), keys.len());
    }
    assert_eq!(
        reads(replica),
        0,
        "a read reached the replica with replica reads off"
    );

    let store = SentinelStore::connect(config(&group, true)).await?;
    assert_eq!(
        store.replica().as_deref(),
        Some(format!("127.0.0.1:{}", replica.port()).as_str())
    );
    master.cli(&["CONFIG", "RESETSTAT"])?;
    for _ in 0..10 {
        assert_eq!(store.get(&keys[0]).await?, Some(b"v".to_vec()));
        let values = store.get_many(&keys).await?;
        assert!(
            values.iter().all(|v| v.as_deref() == Some(&b"v"[..])),
            "{values:?}"
        );
    }
    assert!(
        reads(replica) >= 20,
        "the replica served {} of 20 reads",
        reads(replica)
    );
    assert_eq!(
        reads(master),
        0,
        "a read reached the master with a usable replica"
    );
    // Writes (and leases) stay on the master.
    store
        .set(&keys[0], b"w".to_vec(), Duration::from_secs(60))
        .await?;
    assert!(
        store
            .set_nx("rr:lease", b"t".to_vec(), Duration::from_secs(60))
            .await?
    );
    assert_eq!(master.cli(&["GET", &keys[0]])?.trim(), "w");

    // The replica dies: reads fall back to the master, right away.
    replica.kill()?;
    for _ in 0..5 {
        assert!(store.get(&keys[1]).await?.is_some());
    }
    assert_eq!(store.replica(), None);
    assert!(reads(master) >= 4, "the master did not take the reads over");
    Ok(())
}
