//! `ClusterStore` and `ClusterBus` against a real 6-node cluster (cache-testkit).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use cache_cluster::{slot, ClusterBus, ClusterConfig, ClusterStore};
use cache_core::{BusEvent, BusTransport};
use cache_core::{ErrorKind, LeaseFill, LeaseRead, RemoteEntry, RemoteStore};
use cache_testkit::{shared_cluster, ClusterOptions};
use proptest::prelude::*;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn store() -> Result<ClusterStore, Box<dyn std::error::Error + Send + Sync>> {
    let cluster = shared_cluster()?;
    let config = ClusterConfig::builder()
        .with_urls(cluster.urls().into_iter().take(2))
        .with_response_timeout(Duration::from_millis(500))
        .build()?;
    Ok(ClusterStore::connect(config).await?)
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}:{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basics_across_slots() -> TestResult {
    let s = store().await?;
    assert_eq!(s.kind(), "cluster");
    assert_eq!(s.primaries().len(), 3, "slot map known after connect");
    s.ping().await?;
    let ttl = Duration::from_secs(60);
    s.set("basics:a", b"1".to_vec(), ttl).await?;
    assert_eq!(s.get("basics:a").await?, Some(b"1".to_vec()));
    assert_eq!(s.get("basics:missing").await?, None);

    let ks = keys("basics:many", 40);
    let slots: HashSet<u16> = ks.iter().map(|k| slot(k.as_bytes())).collect();
    assert!(slots.len() > 30, "keys spread over slots");
    s.set_many(
        ks.iter()
            .map(|k| RemoteEntry {
                key: k.clone(),
                value: k.as_bytes().to_vec(),
                ttl,
            })
            .collect(),
    )
    .await?;
    let mut asked = ks.clone();
    asked.push("basics:absent".into());
    let got = s.get_many(&asked).await?;
    assert_eq!(got.len(), 41);
    for (k, v) in ks.iter().zip(&got) {
        assert_eq!(v.as_deref(), Some(k.as_bytes()), "{k}");
    }
    assert_eq!(got[40], None);

    // DEL of keys in many slots (one DEL per slot).
    s.delete(&ks[..20]).await?;
    let got = s.get_many(&ks).await?;
    assert!(got[..20].iter().all(Option::is_none));
    assert!(got[20..].iter().all(Option::is_some));

    // delete_prefix scans every primary.
    assert_eq!(s.delete_prefix("basics:many:").await?, 20);
    assert!(s.get_many(&ks).await?.iter().all(Option::is_none));
    assert_eq!(
        s.get("basics:a").await?,
        Some(b"1".to_vec()),
        "other prefix kept"
    );
    // Glob characters in the prefix are literal.
    s.set("basics:*x", b"1".to_vec(), ttl).await?;
    assert_eq!(s.delete_prefix("basics:*").await?, 1);
    assert_eq!(s.get("basics:a").await?, Some(b"1".to_vec()));

    // Oversized values are refused before sending.
    let small = ClusterStore::connect(
        ClusterConfig::builder()
            .with_urls(shared_cluster()?.urls())
            .with_max_value_size(10)
            .build()?,
    )
    .await?;
    let err = small.set("basics:big", vec![0; 11], ttl).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::ValueTooLarge));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_compare_and_set_fill() -> TestResult {
    let s = store().await?;
    let ttl = Duration::from_secs(30);
    for key in ["lease:plain", "lease:{user:7}:profile"] {
        let lease = cache_core::support::lease_key("lease", key).expect("a lease key");
        assert_eq!(slot(lease.as_bytes()), slot(key.as_bytes()), "{lease}");
        assert!(s.set_nx(&lease, b"tok".to_vec(), ttl).await?);
        assert!(!s.set_nx(&lease, b"other".to_vec(), ttl).await?);
        assert!(
            !s.set_if_lease(&lease, b"wrong", key, b"v".to_vec(), ttl)
                .await?
        );
        assert_eq!(s.get(key).await?, None);
        assert!(
            s.set_if_lease(&lease, b"tok", key, b"v".to_vec(), ttl)
                .await?
        );
        assert_eq!(s.get(key).await?, Some(b"v".to_vec()));
        assert_eq!(s.get(&lease).await?, None, "the fill released the lease");
    }
    // The script is loaded lazily on every primary (NOSCRIPT: SCRIPT LOAD, then EVALSHA).
    let cluster = shared_cluster()?;
    for m in cluster.masters()? {
        cluster.cli(m.port, &["SCRIPT", "FLUSH"])?;
    }
    let key = "lease:{after-flush}";
    let lease = cache_core::support::lease_key("lease", key).expect("a lease key");
    assert!(s.set_nx(&lease, b"t".to_vec(), ttl).await?);
    assert!(
        s.set_if_lease(&lease, b"t", key, b"w".to_vec(), ttl)
            .await?
    );
    // Tag index sets: one key each, so one slot.
    s.tag_add("lease:__tags:n:red", "lease:n:1", ttl).await?;
    s.tag_add("lease:__tags:n:red", "lease:n:2", ttl).await?;
    let tag = "lease:__tags:n:red";
    let pending = cache_core::support::tag_pending_key("lease", tag).expect("a pending key");
    let mut members = s.tag_take(tag, &pending).await?;
    members.sort();
    assert_eq!(
        members,
        vec!["lease:n:1".to_owned(), "lease:n:2".to_owned()]
    );
    // Taken members stay pending until done: a lost reply loses none.
    assert_eq!(s.tag_take(tag, &pending).await?.len(), 2);
    s.tag_done(&pending, &members).await?;
    assert!(s.tag_take(tag, &pending).await?.is_empty());
    // Keys in different slots are refused before sending.
    let err = s
        .set_if_lease("{a}x", b"t", "{b}y", b"v".to_vec(), ttl)
        .await
        .err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidKey));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_cost_one_request_per_primary() -> TestResult {
    let s = store().await?;
    let cluster = shared_cluster()?;
    let ttl = Duration::from_secs(60);
    let ks = keys("rt", 100);
    let entries: Vec<RemoteEntry> = ks
        .iter()
        .map(|k| RemoteEntry {
            key: k.clone(),
            value: vec![1; 16],
            ttl,
        })
        .collect();
    let before = s.requests_sent();
    s.set_many(entries).await?;
    let set_requests = s.requests_sent() - before;
    let before = s.requests_sent();
    let got = s.get_many(&ks).await?;
    let get_requests = s.requests_sent() - before;
    assert!(got.iter().all(Option::is_some));
    let before = s.requests_sent();
    s.delete(&ks).await?;
    let del_requests = s.requests_sent() - before;
    eprintln!("100 keys: set_many {set_requests}, get_many {get_requests}, delete {del_requests} requests");
    assert_eq!(set_requests, 3, "one pipeline per primary");
    assert_eq!(get_requests, 3, "one pipeline per primary");
    assert_eq!(del_requests, 3, "one pipeline per primary");

    // Hash-tagged keys share a slot: one MGET on one node.
    let tagged: Vec<String> = (0..50).map(|i| format!("{{user:42}}:field:{i}")).collect();
    let owner = cluster.master_for_slot(slot(b"{user:42}"))?;
    let server = cluster.server(owner.port)?;
    let mget_before = server.command_calls("mget")?;
    let before = s.requests_sent();
    let got = s.get_many(&tagged).await?;
    assert_eq!(got.len(), 50);
    assert_eq!(s.requests_sent() - before, 1);
    // The server saw it as an MGET (other tests share this cluster and may add their own
    // MGETs concurrently, so only "at least one" can be asserted here; the request counter
    // above is exact).
    assert!(
        server.command_calls("mget")? > mget_before,
        "an MGET on the owner"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_batches_answer_per_key_with_one_request_per_primary() -> TestResult {
    // A private cluster (3 primaries, no replicas): its nodes have never run the lease
    // script, and no other test flushes their script caches meanwhile.
    let cluster = ClusterOptions::new().with_replicas_per_master(0).start()?;
    let s = ClusterStore::connect(
        ClusterConfig::builder()
            .with_urls(cluster.urls())
            .with_response_timeout(Duration::from_millis(500))
            .build()?,
    )
    .await?;
    let primaries = s.primaries().len() as u64;
    assert_eq!(primaries, 3);
    let ttl = Duration::from_secs(30);
    let ks = keys("lb", 30);
    let leases: Vec<String> = ks
        .iter()
        .map(|k| cache_core::support::lease_key("lb", k).expect("a lease key"))
        .collect();
    // Another loader holds every third lease.
    for i in (0..30).step_by(3) {
        assert!(s.set_nx(&leases[i], b"other".to_vec(), ttl).await?);
    }

    let before = s.requests_sent();
    let taken = s.set_nx_many(&leases, b"mine", ttl).await?;
    let nx_requests = s.requests_sent() - before;
    let expected: Vec<bool> = (0..30).map(|i| i % 3 != 0).collect();
    assert_eq!(taken, expected);
    assert!(
        nx_requests <= primaries,
        "SET NX of 30 keys: one pipeline per primary, got {nx_requests}"
    );
    assert_eq!(s.get(&leases[0]).await?, Some(b"other".to_vec()));
    assert_eq!(s.get(&leases[1]).await?, Some(b"mine".to_vec()));

    // Even fills carry our token, odd ones a wrong one: stored where the lease is ours and
    // the token matches.
    let fill = |i: usize| LeaseFill {
        lease_key: leases[i].clone(),
        token: if i % 2 == 0 {
            b"mine".to_vec()
        } else {
            b"wrong".to_vec()
        },
        key: ks[i].clone(),
        value: format!("v{i}").into_bytes(),
        ttl,
    };
    let stores = |range: std::ops::Range<usize>| -> Vec<bool> {
        range.map(|i| i % 3 != 0 && i % 2 == 0).collect()
    };
    let calls = |cluster: &cache_testkit::RedisCluster,
                 command: &str|
     -> Result<u64, cache_testkit::Error> {
        let mut n = 0;
        for m in cluster.masters()? {
            n += cluster.server(m.port)?.command_calls(command)?;
        }
        Ok(n)
    };
    let evals = |cluster: &cache_testkit::RedisCluster| calls(cluster, "eval");
    let loads_before = calls(&cluster, "script|load")?;
    // First fills: no node has the script, every EVALSHA answers NOSCRIPT and is sent again
    // after one SCRIPT LOAD on every primary (never EVAL, which the minimal ACL rules
    // refuse).
    let before = s.requests_sent();
    let stored = s.set_if_lease_many((0..15).map(fill).collect()).await?;
    let first_requests = s.requests_sent() - before;
    assert_eq!(stored, stores(0..15));
    assert_eq!(evals(&cluster)?, 0, "no EVAL");
    let loads = calls(&cluster, "script|load")? - loads_before;
    assert!(
        (1..=primaries).contains(&loads),
        "one SCRIPT LOAD per primary, got {loads}"
    );
    assert!(
        first_requests <= 3 * primaries,
        "EVALSHA, SCRIPT LOAD, EVALSHA: one request per primary each, got {first_requests}"
    );
    // Script cached everywhere now: one pipeline per primary.
    let before = s.requests_sent();
    let stored = s.set_if_lease_many((15..30).map(fill).collect()).await?;
    let fill_requests = s.requests_sent() - before;
    assert_eq!(stored, stores(15..30));
    assert_eq!(evals(&cluster)?, 0, "no EVAL");
    assert_eq!(
        calls(&cluster, "script|load")? - loads_before,
        loads,
        "no SCRIPT LOAD once the script is cached"
    );
    assert!(
        fill_requests <= primaries,
        "30 fills: one pipeline per primary, got {fill_requests}"
    );
    eprintln!(
        "30 keys: set_nx_many {nx_requests}, set_if_lease_many {first_requests} (NOSCRIPT) \
         then {fill_requests} requests"
    );

    let values = s.get_many(&ks).await?;
    let left = s.get_many(&leases).await?;
    for i in 0..30 {
        let (v, l) = (&values[i], &left[i]);
        if i % 3 == 0 {
            assert_eq!(v, &None, "{i}: another's lease");
            assert_eq!(l.as_deref(), Some(&b"other"[..]), "{i}");
        } else if i % 2 == 0 {
            assert_eq!(v.as_deref(), Some(format!("v{i}").as_bytes()), "{i}");
            assert_eq!(l, &None, "{i}: the fill released the lease");
        } else {
            assert_eq!(v, &None, "{i}: wrong token");
            assert_eq!(l.as_deref(), Some(&b"mine"[..]), "{i}: lease kept");
        }
    }
    // A fill whose lease key and key are in different slots is refused before sending.
    let mut bad = fill(2);
    bad.lease_key = "{elsewhere}:lease".into();
    let err = s.set_if_lease_many(vec![fill(4), bad]).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidKey));
    assert!(s.set_nx_many(&[], b"mine", ttl).await?.is_empty());
    assert!(s.set_if_lease_many(Vec::new()).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_cluster_not_the_password() -> TestResult {
    // A cluster with a password (3 primaries, no replicas: quicker to start).
    let cluster = ClusterOptions::new()
        .with_replicas_per_master(0)
        .with_requirepass("hunter2")
        .start()?;
    let good = ClusterConfig::builder()
        .with_urls(cluster.urls())
        .with_password("hunter2")
        .build()?;
    let s = ClusterStore::connect(good).await?;
    s.set("auth:k", b"v".to_vec(), Duration::from_secs(5))
        .await?;
    assert_eq!(s.get("auth:k").await?, Some(b"v".to_vec()));
    assert!(!format!("{s:?}").contains("hunter2"));

    let url = cluster.urls()[0].replace("redis://", "redis://:wrong-secret@");
    let bad = ClusterConfig::builder().with_url(url).build()?;
    let err = ClusterStore::connect(bad).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(!err.to_string().contains("wrong-secret"), "{err}");
    assert!(err.to_string().contains("cluster 127.0.0.1:"), "{err}");

    let none = ClusterConfig::builder().with_urls(cluster.urls()).build()?;
    let err = ClusterStore::connect(none).await.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");

    // Nothing listening: a connection error (or a timeout), quickly.
    let port = cache_testkit::free_port()?;
    let nowhere = ClusterConfig::builder()
        .with_url(format!("redis://127.0.0.1:{port}"))
        .with_connect_timeout(Duration::from_millis(500))
        .build()?;
    let started = std::time::Instant::now();
    let err = ClusterStore::connect(nowhere)
        .await
        .expect_err("unreachable");
    assert!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    Ok(())
}

async fn next_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<BusEvent>,
    what: impl Fn(&BusEvent) -> bool,
) -> Option<BusEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if what(&e) => return Some(e),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_delivers_and_reports_a_lost_subscription() -> TestResult {
    let a = ClusterBus::new(&store().await?);
    let b = ClusterBus::new(&store().await?);
    assert_eq!(a.kind(), "cluster-pubsub");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    b.subscribe("bus-test:ch1");
    let _task = b.start(tx)?;
    assert!(next_event(&mut rx, |e| *e == BusEvent::Connected)
        .await
        .is_some());
    // Publishing on any node reaches the subscriber wherever it is connected (classic
    // pub/sub is cluster-wide); repeat until the subscription is in place.
    let got = async {
        loop {
            a.publish("bus-test:ch1", b"hello".to_vec()).await.ok();
            if let Ok(Some(BusEvent::Message { channel, payload })) =
                tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            {
                return (channel, payload);
            }
        }
    };
    let (channel, payload) = tokio::time::timeout(Duration::from_secs(10), got).await?;
    assert_eq!(
        (channel.as_str(), payload.as_slice()),
        ("bus-test:ch1", &b"hello"[..])
    );
    // A channel added later is subscribed on the live connection.
    b.subscribe("bus-test:ch2");
    let got = async {
        loop {
            a.publish("bus-test:ch2", b"later".to_vec()).await.ok();
            if let Ok(Some(BusEvent::Message { channel, .. })) =
                tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            {
                if channel == "bus-test:ch2" {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), got).await?;
    // Cut every pub/sub connection of the cluster: reported, then re-established.
    let cluster = shared_cluster()?;
    for port in cluster.ports() {
        cluster.cli(port, &["CLIENT", "KILL", "TYPE", "pubsub"])?;
    }
    assert!(
        next_event(&mut rx, |e| *e == BusEvent::Disconnected)
            .await
            .is_some(),
        "disconnect reported"
    );
    assert!(
        next_event(&mut rx, |e| *e == BusEvent::Connected)
            .await
            .is_some(),
        "resubscribed"
    );
    let got = async {
        loop {
            a.publish("bus-test:ch1", b"again".to_vec()).await.ok();
            if let Ok(Some(BusEvent::Message { payload, .. })) =
                tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            {
                if payload == b"again" {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), got).await?;
    Ok(())
}

fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Arbitrary bytes, braces included.
        proptest::collection::vec(any::<u8>(), 0..40),
        // Text keys with a hash tag somewhere.
        ("[a-z:{}]{0,10}", "[a-z0-9:]{0,10}", "[a-z{}]{0,10}")
            .prop_map(|(a, tag, b)| format!("{a}{{{tag}}}{b}").into_bytes()),
        // The layout the cache writes.
        ("[a-z]{1,8}", "[a-z]{1,8}", "[ -~]{0,20}")
            .prop_map(|(p, n, k)| format!("{p}:{n}:{k}").into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn slot_equals_cluster_keyslot(key in key_strategy()) {
        let cluster = shared_cluster().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let server = cluster.keyslot(&key).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(slot(&key), server, "key {:?}", String::from_utf8_lossy(&key));
    }
}

/// A slot whose keys are split between its source and its target during a migration (issue
/// 18, item 1): a multi-key command over them answers `TRYAGAIN`, and a pipeline does not
/// follow `ASK`. Batches are served key by key, single commands are retried until the keys
/// meet again, within the response timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_slot_is_served_key_by_key() -> TestResult {
    let cluster = std::sync::Arc::new(ClusterOptions::new().with_replicas_per_master(0).start()?);
    let s = ClusterStore::connect(
        ClusterConfig::builder()
            .with_urls(cluster.urls())
            .with_response_timeout(Duration::from_secs(1))
            .build()?,
    )
    .await?;
    let ttl = Duration::from_secs(60);
    let other_primary = |slot: u16| -> Result<u16, cache_testkit::Error> {
        let source = cluster.master_for_slot(slot)?.port;
        Ok(cluster
            .masters()?
            .into_iter()
            .find(|m| m.port != source)
            .map(|m| m.port)
            .unwrap_or(source))
    };

    // Batches over a hash-tag group of which one key has moved.
    let (a, b, c, d) = ("{m1}:a", "{m1}:b", "{m1}:c", "{m1}:d");
    s.set(a, b"A".to_vec(), ttl).await?;
    s.set(b, b"B".to_vec(), ttl).await?;
    let slot1 = slot(a.as_bytes());
    let m1 = cluster.begin_slot_migration(slot1, other_primary(slot1)?)?;
    cluster.migrate_keys(&m1, &[a.as_bytes()])?;
    let read = s.get_many(&[a.to_owned(), b.to_owned()]).await;
    // A value key with its absent lease key: a multi-key `DEL` would answer `TRYAGAIN`.
    let lease = cache_core::support::lease_key("mig", b).expect("a lease key");
    let deleted = s.delete(&[b.to_owned(), lease]).await;
    let written = s
        .set_many(
            [c, d]
                .iter()
                .map(|k| RemoteEntry {
                    key: (*k).to_owned(),
                    value: k.as_bytes().to_vec(),
                    ttl,
                })
                .collect(),
        )
        .await;
    let after = s
        .get_many(&[a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned()])
        .await;
    cluster.finish_slot_migration(&m1)?;
    assert_eq!(read?, vec![Some(b"A".to_vec()), Some(b"B".to_vec())]);
    deleted?;
    written?;
    assert_eq!(
        after?,
        vec![
            Some(b"A".to_vec()),
            None,
            Some(c.as_bytes().to_vec()),
            Some(d.as_bytes().to_vec())
        ]
    );

    // A fill whose lease key is already on the target while its value key is still on the
    // source: the lease script answers `TRYAGAIN` until the value key moves, 300 ms later
    // (longer than redis-rs's own retries wait).
    let key = "{m2}:v";
    let lease = cache_core::support::lease_key("mig", key).expect("a lease key");
    s.set(key, b"old".to_vec(), ttl).await?;
    let slot2 = slot(key.as_bytes());
    let m2 = cluster.begin_slot_migration(slot2, other_primary(slot2)?)?;
    assert!(s.set_nx(&lease, b"tok".to_vec(), ttl).await?);
    let mover = {
        let (cluster, m2) = (cluster.clone(), m2.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cluster.migrate_keys(&m2, &[key.as_bytes()])
        })
    };
    let filled = s
        .set_if_lease(&lease, b"tok", key, b"new".to_vec(), ttl)
        .await;
    let moved = mover.join().map_err(|_| "the mover thread panicked")?;
    let value = s.get(key).await;
    cluster.finish_slot_migration(&m2)?;
    moved?;
    assert!(filled?, "the fill was refused");
    assert_eq!(value?, Some(b"new".to_vec()));
    Ok(())
}

/// Issue 17: concurrent single-key reads are coalesced on the cluster too (queued reads go out
/// as one slot-grouped batch: a pipeline per primary); every reader gets its own key's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_are_coalesced_per_primary() -> TestResult {
    let s = store().await?;
    let ks = keys("coalesce", 200);
    for (i, k) in ks.iter().enumerate() {
        s.set(k, format!("v{i}").into_bytes(), Duration::from_secs(60))
            .await?;
    }
    let before = s.requests_sent();
    let reads = ks.iter().enumerate().map(|(i, k)| {
        let (s, k) = (s.clone(), k.clone());
        tokio::spawn(async move { (i, s.get(&k).await) })
    });
    for read in futures::future::join_all(reads).await {
        let (i, got) = read?;
        assert_eq!(got?, Some(format!("v{i}").into_bytes()), "key {i}");
    }
    let requests = s.requests_sent() - before;
    eprintln!("200 concurrent reads on the cluster: {requests} requests");
    assert!(requests < 50, "{requests} requests for 200 reads");
    Ok(())
}

/// 200 concurrent writers through one cluster store each find their own value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_land() -> TestResult {
    let s = store().await?;
    let ks = keys("concurrent-set", 200);
    let ttl = Duration::from_secs(60);
    let writes = ks.iter().enumerate().map(|(i, k)| {
        let (s, k) = (s.clone(), k.clone());
        tokio::spawn(async move { s.set(&k, format!("w{i}").into_bytes(), ttl).await })
    });
    for write in futures::future::join_all(writes).await {
        write??;
    }
    for (i, k) in ks.iter().enumerate() {
        assert_eq!(
            s.get(k).await?,
            Some(format!("w{i}").into_bytes()),
            "key {i}"
        );
    }
    // No order is promised for writes of one key in flight at once here (redis-rs routes each
    // cluster command as its own future: a run of 100 ended with write 20, not 99).
    Ok(())
}

/// `get_or_lease` on the cluster (key and lease in one slot, by hash tag): a value is read and
/// no lease taken; a miss takes the lease; a second caller finds it busy. 100 concurrent first
/// steps on one missing key give the lease to exactly one; on 100 distinct missing keys, spread
/// over the primaries, each takes its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_lease_reads_or_takes_the_lease() -> TestResult {
    let s = store().await?;
    let ttl = Duration::from_secs(60);
    let nonce = std::process::id();
    let pair = |name: &str| {
        let tag = format!("{{gol:{nonce}:{name}}}");
        (format!("{tag}:v"), format!("{tag}:__lease"))
    };
    let (key, lease) = pair("hit");
    s.set(&key, b"v".to_vec(), ttl).await?;
    assert_eq!(
        s.get_or_lease(&key, &lease, b"t1", ttl).await?,
        LeaseRead::Value(b"v".to_vec())
    );
    assert_eq!(s.get(&lease).await?, None, "a hit took the lease");
    let (key, lease) = pair("miss");
    s.delete(&[key.clone(), lease.clone()]).await?;
    assert_eq!(
        s.get_or_lease(&key, &lease, b"t1", ttl).await?,
        LeaseRead::Leased
    );
    assert_eq!(s.get(&lease).await?, Some(b"t1".to_vec()));
    assert_eq!(
        s.get_or_lease(&key, &lease, b"t2", ttl).await?,
        LeaseRead::Busy
    );
    let err = s
        .get_or_lease("gol-a", "gol-b", b"t", ttl)
        .await
        .expect_err("keys of two slots");
    assert_eq!(err.kind(), ErrorKind::InvalidKey);

    let (key, lease) = pair("race");
    s.delete(&[key.clone(), lease.clone()]).await?;
    let calls = (0..100).map(|i| {
        let (s, k, l) = (s.clone(), key.clone(), lease.clone());
        tokio::spawn(async move {
            s.get_or_lease(&k, &l, format!("t{i}").as_bytes(), ttl)
                .await
        })
    });
    let mut leased = 0;
    for answer in futures::future::join_all(calls).await {
        match answer?? {
            LeaseRead::Leased => leased += 1,
            LeaseRead::Busy => {}
            other => panic!("a missing key answered {other:?}"),
        }
    }
    assert_eq!(leased, 1, "one lease for one key");
    let pairs: Vec<(String, String)> = (0..100).map(|i| pair(&format!("own:{i}"))).collect();
    for (k, l) in &pairs {
        s.delete(&[k.clone(), l.clone()]).await?;
    }
    let calls = pairs.into_iter().map(|(k, l)| {
        let s = s.clone();
        tokio::spawn(async move { s.get_or_lease(&k, &l, b"t", ttl).await })
    });
    for answer in futures::future::join_all(calls).await {
        assert_eq!(answer??, LeaseRead::Leased);
    }
    Ok(())
}
