//! The test cluster itself: topology, node control, failover.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cache_testkit::{shared_cluster, RedisCluster, Role};

#[test]
fn shared_cluster_has_three_primaries_and_three_synced_replicas() -> cache_testkit::Result<()> {
    let started = Instant::now();
    let cluster = shared_cluster()?;
    eprintln!("shared cluster ready in {:?}", started.elapsed());
    let nodes = cluster.nodes()?;
    assert_eq!(nodes.len(), 6);
    let masters = cluster.masters()?;
    assert_eq!(masters.len(), 3);
    let covered: u32 = masters
        .iter()
        .flat_map(|m| m.slots.iter())
        .map(|(a, b)| u32::from(*b) - u32::from(*a) + 1)
        .sum();
    assert_eq!(covered, 16384);
    for m in &masters {
        assert_eq!(cluster.replicas_of(m.port)?.len(), 1, "{m:?}");
        assert!(m.pid > 0);
    }
    assert_eq!(nodes.iter().filter(|n| n.role == Role::Replica).count(), 3);
    // Slot lookup agrees with the server.
    let slot = cluster.keyslot(b"{user:42}:profile")?;
    assert_eq!(slot, cluster.keyslot(b"user:42")?);
    let owner = cluster.master_for_slot(slot)?;
    assert!(owner.serves(slot));
    let answer = cluster.cli(owner.port, &["SET", "{user:42}:profile", "v"])?;
    assert_eq!(answer.trim(), "OK");
    assert_eq!(cluster.urls().len(), 6);
    Ok(())
}

#[test]
fn private_cluster_failover_kill_and_restart() -> cache_testkit::Result<()> {
    let started = Instant::now();
    let cluster = RedisCluster::start()?;
    eprintln!("private cluster ready in {:?}", started.elapsed());
    let master = cluster.masters()?.remove(0);
    let replica = cluster.replicas_of(master.port)?.remove(0);
    // Manual failover: the replica takes over, the old primary becomes its replica.
    let t = Instant::now();
    cluster.failover(replica.port)?;
    eprintln!("CLUSTER FAILOVER took {:?}", t.elapsed());
    assert_eq!(cluster.node(replica.port)?.role, Role::Master);
    // SIGKILL of the new primary: the old one is promoted back after the node timeout.
    cluster.kill(replica.port)?;
    let took = cluster.wait_promoted(master.port, Duration::from_secs(15))?;
    eprintln!("promotion after SIGKILL took {took:?}");
    cluster.restart(replica.port)?;
    cluster.wait_healthy(Duration::from_secs(20))?;
    assert_eq!(cluster.node(replica.port)?.role, Role::Replica);
    // SIGSTOP / SIGCONT.
    cluster.stop(replica.port)?;
    assert!(cluster.nodes().is_ok(), "other nodes still answer");
    cluster.cont(replica.port)?;
    Ok(())
}
