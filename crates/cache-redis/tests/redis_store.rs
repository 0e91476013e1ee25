//! `RedisStore` against real redis-server processes from cache-testkit.
//!
//! Non-destructive tests share one server per binary (unique keys per test); tests that count
//! commands, need special options or break the server start a private one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cache_core::{ErrorKind, LeaseFill, LeaseRead, RemoteEntry, RemoteStore};
use cache_redis::{redis, RedisConfig, RedisStore};
use cache_testkit::{free_port, shared_redis, RedisServer, ServerOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A key no other test (or run) uses.
fn unique(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t:{}:{name}:{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn connect(server: &RedisServer) -> cache_core::Result<RedisStore> {
    RedisStore::connect(RedisConfig::builder().with_url(server.url()).build()?).await
}

async fn shared_store() -> Result<RedisStore, Box<dyn std::error::Error>> {
    Ok(connect(shared_redis()?).await?)
}

#[tokio::test]
async fn get_set_round_trip_with_binary_values() -> TestResult {
    let store = shared_store().await?;
    assert_eq!(store.kind(), "redis");
    assert_eq!(store.max_value_size(), 16 * 1024 * 1024);
    let key = unique("bin");
    assert_eq!(store.get(&key).await?, None);
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    store
        .set(&key, all_bytes.clone(), Duration::from_secs(60))
        .await?;
    assert_eq!(store.get(&key).await?, Some(all_bytes));
    let empty = unique("empty");
    store
        .set(&empty, Vec::new(), Duration::from_secs(60))
        .await?;
    assert_eq!(store.get(&empty).await?, Some(Vec::new()));
    Ok(())
}

#[tokio::test]
async fn set_applies_the_ttl_in_milliseconds() -> TestResult {
    let store = shared_store().await?;
    let key = unique("ttl");
    store
        .set(&key, b"v".to_vec(), Duration::from_millis(90_000))
        .await?;
    let mut conn = store.connection();
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await?;
    assert!(pttl > 0 && pttl <= 90_000, "pttl {pttl}");
    // A zero TTL is sent as the shortest one Redis accepts (1 ms), not refused.
    store.set(&key, b"v".to_vec(), Duration::ZERO).await?;
    Ok(())
}

#[tokio::test]
async fn get_many_in_order_with_misses() -> TestResult {
    let store = shared_store().await?;
    let (a, b, missing) = (unique("a"), unique("b"), unique("missing"));
    store
        .set(&a, b"1".to_vec(), Duration::from_secs(60))
        .await?;
    store
        .set(&b, b"2".to_vec(), Duration::from_secs(60))
        .await?;
    let keys = vec![b.clone(), missing, a.clone(), b.clone()];
    assert_eq!(
        store.get_many(&keys).await?,
        vec![
            Some(b"2".to_vec()),
            None,
            Some(b"1".to_vec()),
            Some(b"2".to_vec())
        ]
    );
    assert_eq!(
        store.get_many(std::slice::from_ref(&a)).await?,
        vec![Some(b"1".to_vec())]
    );
    assert_eq!(store.get_many(&[]).await?, Vec::<Option<Vec<u8>>>::new());
    Ok(())
}

#[tokio::test]
async fn set_many_and_delete() -> TestResult {
    let store = shared_store().await?;
    let keys: Vec<String> = (0..20).map(|i| unique(&format!("many{i}"))).collect();
    let entries = keys
        .iter()
        .enumerate()
        .map(|(i, k)| RemoteEntry {
            key: k.clone(),
            value: format!("v{i}").into_bytes(),
            ttl: Duration::from_secs(60),
        })
        .collect();
    store.set_many(entries).await?;
    store.set_many(Vec::new()).await?;
    let got = store.get_many(&keys).await?;
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    let mut conn = store.connection();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&keys[7])
        .query_async(&mut conn)
        .await?;
    assert!(pttl > 0 && pttl <= 60_000, "pttl {pttl}");

    let mut doomed = keys[..10].to_vec();
    doomed.push(unique("never-existed"));
    store.delete(&doomed).await?;
    store.delete(&[]).await?;
    let got = store.get_many(&keys).await?;
    assert!(got[..10].iter().all(Option::is_none));
    assert!(got[10..].iter().all(Option::is_some));
    Ok(())
}

#[tokio::test]
async fn set_nx_only_when_absent() -> TestResult {
    let store = shared_store().await?;
    let lease = unique("lease");
    assert!(
        store
            .set_nx(&lease, b"token-1".to_vec(), Duration::from_secs(60))
            .await?
    );
    assert!(
        !store
            .set_nx(&lease, b"token-2".to_vec(), Duration::from_secs(60))
            .await?
    );
    assert_eq!(store.get(&lease).await?, Some(b"token-1".to_vec()));
    Ok(())
}

#[tokio::test]
async fn set_if_lease_is_a_compare_and_set() -> TestResult {
    let store = shared_store().await?;
    let tag = unique("cas");
    // Same hash slot, as the contract says (irrelevant on a standalone server).
    let lease = format!("{{{tag}}}:lease");
    let key = format!("{{{tag}}}:value");
    let ttl = Duration::from_secs(60);

    // No lease at all: nothing stored.
    assert!(
        !store
            .set_if_lease(&lease, b"t1", &key, b"v0".to_vec(), ttl)
            .await?
    );
    assert_eq!(store.get(&key).await?, None);

    assert!(store.set_nx(&lease, b"t1".to_vec(), ttl).await?);
    // Wrong token: nothing stored, the lease stays.
    assert!(
        !store
            .set_if_lease(&lease, b"t2", &key, b"v1".to_vec(), ttl)
            .await?
    );
    assert_eq!(store.get(&key).await?, None);
    assert_eq!(store.get(&lease).await?, Some(b"t1".to_vec()));
    // Right token: value stored with its TTL, lease deleted.
    assert!(
        store
            .set_if_lease(&lease, b"t1", &key, b"v2".to_vec(), ttl)
            .await?
    );
    assert_eq!(store.get(&key).await?, Some(b"v2".to_vec()));
    assert_eq!(store.get(&lease).await?, None);
    let mut conn = store.connection();
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await?;
    assert!(pttl > 0 && pttl <= 60_000, "pttl {pttl}");
    // The lease is gone, so a second fill with the same token stores nothing.
    assert!(
        !store
            .set_if_lease(&lease, b"t1", &key, b"v3".to_vec(), ttl)
            .await?
    );
    assert_eq!(store.get(&key).await?, Some(b"v2".to_vec()));
    Ok(())
}

#[tokio::test]
async fn get_many_is_one_mget_round_trip() -> TestResult {
    let server = RedisServer::start()?;
    let store = connect(&server).await?;
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    store.get_many(&keys).await?;
    store.get_many(&[]).await?;
    assert_eq!(server.command_calls("mget")?, 1);
    assert_eq!(server.command_calls("get")?, 0);
    Ok(())
}

#[tokio::test]
async fn set_many_is_one_set_per_entry_and_nothing_else() -> TestResult {
    let server = RedisServer::start()?;
    let store = connect(&server).await?;
    let entries = (0..30)
        .map(|i| RemoteEntry {
            key: format!("k{i}"),
            value: vec![1; 10],
            ttl: Duration::from_secs(60),
        })
        .collect();
    store.set_many(entries).await?;
    assert_eq!(server.command_calls("set")?, 30);
    assert_eq!(server.command_calls("multi")?, 0);
    Ok(())
}

/// How many reads of client input the server processed (`INFO stats`), asked on the store's
/// own connection: the `INFO` itself is one of them. On a private server with no other client,
/// a pipeline small enough for one segment is one read: one round trip.
async fn reads_processed(store: &RedisStore) -> Result<u64, Box<dyn std::error::Error>> {
    let mut conn = store.connection();
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(&mut conn)
        .await?;
    let line = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("total_reads_processed:"))
        .ok_or("no total_reads_processed in INFO stats")?;
    Ok(line.parse()?)
}

#[tokio::test]
async fn lease_batches_answer_per_key_in_one_round_trip() -> TestResult {
    let server = RedisServer::start()?;
    let store = connect(&server).await?;
    let ttl = Duration::from_secs(60);
    let leases: Vec<String> = (0..6).map(|i| format!("{{k{i}}}:lease")).collect();
    let keys: Vec<String> = (0..6).map(|i| format!("{{k{i}}}:value")).collect();
    // Another loader holds leases 1 and 4.
    assert!(store.set_nx(&leases[1], b"other".to_vec(), ttl).await?);
    assert!(store.set_nx(&leases[4], b"other".to_vec(), ttl).await?);

    let sets = server.command_calls("set")?;
    let before = reads_processed(&store).await?;
    let taken = store.set_nx_many(&leases, b"mine", ttl).await?;
    let reads = reads_processed(&store).await? - before - 1;
    assert_eq!(taken, [true, false, true, true, false, true]);
    assert_eq!(reads, 1, "SET NX of 6 keys in one round trip");
    assert_eq!(server.command_calls("set")? - sets, 6, "one SET NX per key");
    assert_eq!(store.get(&leases[0]).await?, Some(b"mine".to_vec()));
    assert_eq!(store.get(&leases[1]).await?, Some(b"other".to_vec()));
    let mut conn = store.connection();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&leases[3])
        .query_async(&mut conn)
        .await?;
    assert!(pttl > 0 && pttl <= 60_000, "pttl {pttl}");
    assert!(store.set_nx_many(&[], b"mine", ttl).await?.is_empty());

    let fill = |i: usize, token: &[u8]| LeaseFill {
        lease_key: leases[i].clone(),
        token: token.to_vec(),
        key: keys[i].clone(),
        value: format!("v{i}").into_bytes(),
        ttl,
    };
    // The server has not run the script yet: every EVALSHA answers NOSCRIPT, the store loads
    // the script and sends them again (two round trips), and the answers are still per fill.
    let before = reads_processed(&store).await?;
    let stored = store
        .set_if_lease_many(vec![fill(0, b"mine"), fill(1, b"mine")])
        .await?;
    let reads = reads_processed(&store).await? - before - 1;
    assert_eq!(stored, [true, false], "own lease stored, another's refused");
    assert_eq!(reads, 2, "EVALSHA, then SCRIPT LOAD and EVALSHA again");
    assert_eq!(server.command_calls("eval")?, 0);

    // Script cached: one round trip. Fill 0's lease was consumed by its first fill; 3 has the
    // wrong token; 4 is another's lease; 5's lease is gone.
    store.delete(std::slice::from_ref(&leases[5])).await?;
    let evalsha = server.command_calls("evalsha")?;
    let before = reads_processed(&store).await?;
    let stored = store
        .set_if_lease_many(vec![
            fill(2, b"mine"),
            fill(3, b"wrong"),
            fill(4, b"mine"),
            fill(5, b"mine"),
            fill(0, b"mine"),
        ])
        .await?;
    let reads = reads_processed(&store).await? - before - 1;
    assert_eq!(stored, [true, false, false, false, false]);
    assert_eq!(reads, 1, "5 fills in one round trip");
    assert_eq!(server.command_calls("evalsha")? - evalsha, 5);
    assert!(store.set_if_lease_many(Vec::new()).await?.is_empty());

    let values = store.get_many(&keys).await?;
    let expected: Vec<Option<Vec<u8>>> = [Some("v0"), None, Some("v2"), None, None, None]
        .iter()
        .map(|v| v.map(|v| v.as_bytes().to_vec()))
        .collect();
    assert_eq!(values, expected);
    let leases_left = store.get_many(&leases).await?;
    let expected: Vec<Option<Vec<u8>>> =
        [None, Some("other"), None, Some("mine"), Some("other"), None]
            .iter()
            .map(|v| v.map(|v| v.as_bytes().to_vec()))
            .collect();
    assert_eq!(
        leases_left, expected,
        "a refused fill leaves the lease alone"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&keys[2])
        .query_async(&mut conn)
        .await?;
    assert!(pttl > 0 && pttl <= 60_000, "pttl {pttl}");
    Ok(())
}

#[tokio::test]
async fn oversized_values_are_refused_before_sending() -> TestResult {
    let server = RedisServer::start()?;
    let config = RedisConfig::builder()
        .with_url(server.url())
        .with_max_value_size(1024)
        .build()?;
    let store = RedisStore::connect(config).await?;
    assert_eq!(store.max_value_size(), 1024);
    let ttl = Duration::from_secs(60);
    let big = vec![0u8; 1025];

    let err = store.set("k", big.clone(), ttl).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge, "{err}");
    assert!(err.message().contains("1025"), "{err}");
    let batch = vec![
        RemoteEntry {
            key: "small".into(),
            value: vec![1; 10],
            ttl,
        },
        RemoteEntry {
            key: "big".into(),
            value: big.clone(),
            ttl,
        },
    ];
    let err = store.set_many(batch).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    let err = store.set_nx("k", big.clone(), ttl).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    let err = store
        .set_if_lease("l", b"t", "k", big.clone(), ttl)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    assert!(!err.is_transient());
    let err = store
        .set_nx_many(&["l1".into(), "l2".into()], &big, ttl)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    let fill = |value: Vec<u8>| LeaseFill {
        lease_key: "l".into(),
        token: b"t".to_vec(),
        key: "k".into(),
        value,
        ttl,
    };
    let err = store
        .set_if_lease_many(vec![fill(vec![1; 10]), fill(big)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);

    // The server never saw any of them (not even the small entry of the refused batch).
    assert_eq!(server.command_calls("set")?, 0);
    assert_eq!(server.command_calls("evalsha")?, 0);
    assert_eq!(server.command_calls("eval")?, 0);
    assert_eq!(store.get("small").await?, None);

    // Exactly the maximum is fine.
    store.set("k", vec![0u8; 1024], ttl).await?;
    assert_eq!(server.command_calls("set")?, 1);
    Ok(())
}

#[tokio::test]
async fn invalid_urls_are_typed_and_say_what_is_wrong() {
    let cases: &[(&str, &str)] = &[
        ("", "empty"),
        ("::not a url::", "no scheme"),
        ("redis://exa mple.com", "cannot parse"),
        ("http://127.0.0.1:6379", "unsupported scheme `http`"),
        ("127.0.0.1:6379", "no scheme"),
        ("redis://", "no host"),
        ("redis://127.0.0.1:6379/zero", "database number `zero`"),
        ("redis://127.0.0.1:6379/-2", "database number `-2`"),
        ("redis://127.0.0.1:70000", "cannot parse"),
        ("redis://127.0.0.1:0", "port is 0"),
        ("redis://127.0.0.1/?bogus=1", "unknown parameter `bogus`"),
        ("redis+unix://", "no socket path"),
    ];
    for (url, needle) in cases {
        let mut config = RedisConfig::default();
        config.url = (*url).to_owned();
        let err = RedisStore::connect(config).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{url}: {err}");
        assert!(err.message().contains(needle), "{url}: {err}");
        assert!(!err.is_transient());
        // The builder reports the same.
        let err = RedisConfig::builder().with_url(*url).build().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{url}: {err}");
    }
}

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn rediss_without_the_tls_feature_is_refused_not_downgraded() {
    let err = RedisConfig::builder()
        .with_url("rediss://127.0.0.1:6380/")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    assert!(err.message().contains("`tls` feature"), "{err}");
}

#[tokio::test]
async fn wrong_password_is_auth_and_never_shown() -> TestResult {
    let right = "right-pw-7f3a91";
    let wrong = "wrong-pw-c0ffee";
    let server = ServerOptions::new().with_requirepass(right).start()?;
    for config in [
        RedisConfig::builder()
            .with_url(server.url())
            .with_password(wrong)
            .build()?,
        RedisConfig::builder()
            .with_url(format!("redis://:{wrong}@127.0.0.1:{}/", server.port()))
            .build()?,
    ] {
        let err = RedisStore::connect(config.clone()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        let shown = format!("{err} {err:?} {config:?}");
        assert!(
            shown.contains("refused the credentials for user `default`"),
            "{shown}"
        );
        assert!(shown.contains(&server.port().to_string()), "{shown}");
        assert!(!shown.contains(wrong), "{shown}");
        assert!(!shown.contains(right), "{shown}");
        assert!(!err.is_transient());
    }

    // No password at all against a protected server.
    let err = connect(&server).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.message().contains("no password is configured"), "{err}");

    // The right one works.
    let store = RedisStore::connect(
        RedisConfig::builder()
            .with_url(server.url())
            .with_password(right)
            .build()?,
    )
    .await?;
    store
        .set("k", b"v".to_vec(), Duration::from_secs(5))
        .await?;
    assert_eq!(store.get("k").await?, Some(b"v".to_vec()));
    assert!(!format!("{store:?}").contains(right));
    Ok(())
}

#[tokio::test]
async fn acl_users_authenticate_by_name() -> TestResult {
    let server = ServerOptions::new()
        .with_acl_user("alice on >alice-pw-91b2 ~app:* +@all")
        .start()?;
    let err = RedisStore::connect(
        RedisConfig::builder()
            .with_url(server.url())
            .with_username("alice")
            .with_password("not-alices-pw")
            .build()?,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.message().contains("user `alice`"), "{err}");
    assert!(!format!("{err:?}").contains("not-alices-pw"));

    // Credentials in the URL, percent-encoded.
    let url = format!("redis://alice:alice-pw-91b2@127.0.0.1:{}/", server.port());
    let store = RedisStore::connect(RedisConfig::builder().with_url(&url).build()?).await?;
    store
        .set("app:k", b"v".to_vec(), Duration::from_secs(5))
        .await?;
    assert_eq!(store.get("app:k").await?, Some(b"v".to_vec()));
    assert!(!format!("{store:?} {:?}", store.config()).contains("alice-pw-91b2"));

    // A key outside alice's pattern: NOPERM is an Auth error naming the user.
    let err = store.get("other:k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.message().contains("`alice`"), "{err}");
    Ok(())
}

#[tokio::test]
async fn unreachable_port_is_a_connection_error_right_away() -> TestResult {
    let port = free_port()?;
    let config = RedisConfig::builder()
        .with_url(format!("redis://127.0.0.1:{port}/"))
        .with_connect_timeout(Duration::from_secs(10))
        .build()?;
    let started = Instant::now();
    let err = RedisStore::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert_eq!(
        err.message(),
        format!("cannot reach Redis at 127.0.0.1:{port}: connection refused")
    );
    assert!(err.is_transient());
    // Refused is reported as such, without waiting for the connect timeout or retrying.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn connecting_to_a_hung_server_times_out() -> TestResult {
    let server = RedisServer::start()?;
    server.stop()?;
    let config = RedisConfig::builder()
        .with_url(server.url())
        .with_connect_timeout(Duration::from_millis(300))
        .build()?;
    let started = Instant::now();
    let err = RedisStore::connect(config).await.unwrap_err();
    let elapsed = started.elapsed();
    server.cont()?;
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.message().contains("connect_timeout"), "{err}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    Ok(())
}

#[tokio::test]
async fn debug_never_shows_passwords() -> TestResult {
    let server = ServerOptions::new()
        .with_requirepass("dbg-secret-3e8d")
        .start()?;
    let config = RedisConfig::builder()
        .with_url(format!(
            "redis://:dbg-secret-3e8d@127.0.0.1:{}/0",
            server.port()
        ))
        .with_password("dbg-secret-3e8d")
        .build()?;
    let store = RedisStore::connect(config.clone()).await?;
    let shown = format!("{config:?} {store:?} {:#?} {:#?}", config, store);
    assert!(!shown.contains("dbg-secret-3e8d"), "{shown}");
    assert!(shown.contains("***"), "{shown}");
    assert!(shown.contains(&server.port().to_string()));
    Ok(())
}

#[tokio::test]
async fn a_stopped_server_times_out_within_the_response_timeout() -> TestResult {
    let server = RedisServer::start()?;
    let response_timeout = Duration::from_millis(300);
    let config = RedisConfig::builder()
        .with_url(server.url())
        .with_response_timeout(response_timeout)
        .build()?;
    let store = RedisStore::connect(config).await?;
    store
        .set("a", b"A".to_vec(), Duration::from_secs(60))
        .await?;
    store
        .set("b", b"B".to_vec(), Duration::from_secs(60))
        .await?;

    server.stop()?;
    for key in ["a", "b"] {
        let started = Instant::now();
        let err = store.get(key).await.unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.is_transient());
        assert!(
            elapsed < response_timeout + Duration::from_secs(2),
            "{elapsed:?}"
        );
    }
    let err = store
        .set("c", b"C".to_vec(), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    server.cont()?;

    // Late answers to the timed-out calls must not be handed to later calls.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.get("b").await {
            Ok(v) => {
                assert_eq!(v, Some(b"B".to_vec()));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(e.is_transient(), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("store did not recover after SIGCONT: {e}"),
        }
    }
    assert_eq!(store.get("a").await?, Some(b"A".to_vec()));
    Ok(())
}

#[tokio::test]
async fn reconnects_by_itself_after_kill_and_restart() -> TestResult {
    let server = RedisServer::start()?;
    let config = RedisConfig::builder()
        .with_url(server.url())
        .with_response_timeout(Duration::from_millis(300))
        .build()?;
    let store = RedisStore::connect(config).await?;
    store
        .set("k", b"v".to_vec(), Duration::from_secs(60))
        .await?;
    // Load the lease script so the restarted server's empty script cache is exercised.
    assert!(
        !store
            .set_if_lease("l", b"t", "k", b"x".to_vec(), Duration::from_secs(60))
            .await?
    );

    server.kill()?;
    let err = store.get("k").await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{err}"
    );
    assert!(err.is_transient());
    let err = store.get("k").await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{err}"
    );

    server.restart()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.get("k").await {
            // No persistence: the restarted server is empty.
            Ok(v) => {
                assert_eq!(v, None);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert!(e.is_transient(), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("store did not reconnect after restart: {e}"),
        }
    }
    store
        .set("k", b"v2".to_vec(), Duration::from_secs(60))
        .await?;
    assert_eq!(store.get("k").await?, Some(b"v2".to_vec()));
    assert!(
        store
            .set_nx("l", b"t".to_vec(), Duration::from_secs(60))
            .await?
    );
    assert!(
        store
            .set_if_lease("l", b"t", "k", b"v3".to_vec(), Duration::from_secs(60))
            .await?
    );
    assert_eq!(store.get("k").await?, Some(b"v3".to_vec()));
    Ok(())
}

#[tokio::test]
async fn database_number_from_the_url_is_selected() -> TestResult {
    let server = RedisServer::start()?;
    let store = RedisStore::connect(
        RedisConfig::builder()
            .with_url(format!("redis://127.0.0.1:{}/3", server.port()))
            .build()?,
    )
    .await?;
    store
        .set("in-db-3", b"v".to_vec(), Duration::from_secs(60))
        .await?;
    assert_eq!(server.cli(&["-n", "3", "GET", "in-db-3"])?.trim(), "v");
    assert_eq!(server.cli(&["-n", "0", "EXISTS", "in-db-3"])?.trim(), "0");
    Ok(())
}

#[tokio::test]
async fn unix_socket_urls_work() -> TestResult {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("redis.sock");
    let server = ServerOptions::new()
        .with_arg("--unixsocket")
        .with_arg(socket.to_string_lossy())
        .with_arg("--unixsocketperm")
        .with_arg("700")
        .start()?;
    for scheme in ["redis+unix", "unix"] {
        let store = RedisStore::connect(
            RedisConfig::builder()
                .with_url(format!("{scheme}://{}?db=1", socket.display()))
                .build()?,
        )
        .await?;
        assert_eq!(store.endpoint(), socket.display().to_string());
        store
            .set("u", b"1".to_vec(), Duration::from_secs(60))
            .await?;
        assert_eq!(store.get("u").await?, Some(b"1".to_vec()));
    }
    assert_eq!(server.cli(&["-n", "1", "GET", "u"])?.trim(), "1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_store_serves_concurrent_callers() -> TestResult {
    let store = shared_store().await?;
    let prefix = unique("conc");
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        let key = format!("{prefix}:{i}");
        tasks.push(tokio::spawn(async move {
            store
                .set(&key, i.to_string().into_bytes(), Duration::from_secs(60))
                .await?;
            store.get(&key).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await??, Some(i.to_string().into_bytes()));
    }
    Ok(())
}

#[tokio::test]
async fn the_connection_is_shared_for_other_uses() -> TestResult {
    let store = shared_store().await?;
    store.ping().await?;
    let mut conn = store.connection();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    assert_eq!(pong, "PONG");
    Ok(())
}

/// Issue 17: concurrent single-key reads are coalesced (the first goes out at once as a
/// `GET`, the ones that arrive meanwhile as one `MGET` when it is answered); a lone reader
/// sends plain `GET`s; every reader gets its own key's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_are_coalesced_into_mgets() -> TestResult {
    let server = RedisServer::start()?;
    let store = connect(&server).await?;
    let keys: Vec<String> = (0..200).map(|i| format!("co:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        store
            .set(k, format!("v{i}").into_bytes(), Duration::from_secs(60))
            .await?;
    }
    // A lone reader: one GET per read, no MGET.
    for k in keys.iter().take(5) {
        assert!(store.get(k).await?.is_some());
    }
    assert_eq!(server.command_calls("get")?, 5);
    assert_eq!(server.command_calls("mget")?, 0);
    // 200 readers at once.
    let reads = keys.iter().enumerate().map(|(i, k)| {
        let (store, k) = (store.clone(), k.clone());
        tokio::spawn(async move { (i, store.get(&k).await) })
    });
    for read in futures::future::join_all(reads).await {
        let (i, got) = read?;
        assert_eq!(got?, Some(format!("v{i}").into_bytes()), "key {i}");
    }
    let (gets, mgets) = (
        server.command_calls("get")? - 5,
        server.command_calls("mget")?,
    );
    eprintln!("200 concurrent reads: {gets} GET + {mgets} MGET");
    assert!(mgets >= 1, "no MGET: {gets} GETs");
    assert!(
        gets + mgets < 100,
        "{gets} GET + {mgets} MGET for 200 reads"
    );
    Ok(())
}

/// A reader dropped while its `GET` is in flight (the one the others queue behind) does not
/// leave the queue stuck: later reads, alone or concurrent, are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_read_does_not_wedge_the_others() -> TestResult {
    let store = shared_store().await?;
    let key = unique("wedge");
    store
        .set(&key, b"v".to_vec(), Duration::from_secs(60))
        .await?;
    for _ in 0..20 {
        // Dropped at its first timer tick, mostly with its GET still in flight.
        let _ = tokio::time::timeout(Duration::from_micros(1), store.get(&key)).await;
    }
    let reads = (0..50).map(|_| {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move { store.get(&key).await })
    });
    for read in futures::future::join_all(reads).await {
        assert_eq!(read??, Some(b"v".to_vec()));
    }
    assert_eq!(store.get(&key).await?, Some(b"v".to_vec()));
    Ok(())
}

/// 200 concurrent writers through one store each find their own value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_land() -> TestResult {
    let store = shared_store().await?;
    let prefix = unique("cw");
    let ttl = Duration::from_secs(60);
    let writes = (0..200).map(|i| {
        let (store, key) = (store.clone(), format!("{prefix}:{i}"));
        tokio::spawn(async move { store.set(&key, format!("v{i}").into_bytes(), ttl).await })
    });
    for write in futures::future::join_all(writes).await {
        write??;
    }
    for i in 0..200 {
        assert_eq!(
            store.get(&format!("{prefix}:{i}")).await?,
            Some(format!("v{i}").into_bytes()),
            "key {i}"
        );
    }
    // No order is promised for writes of one key in flight at once (a run of 100 such writes
    // once ended with write 89, not 99): a caller that needs order awaits each write.
    Ok(())
}

/// `get_or_lease`, a load's first step: a value is read and no lease taken; a miss takes the
/// lease (the token, with its TTL); a second caller finds it busy. 100 concurrent first steps
/// on one missing key (one goes out alone as the script, the rest are batched, then `SET NX`)
/// give the lease to exactly one; on 100 distinct missing keys each takes its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_lease_reads_or_takes_the_lease() -> TestResult {
    let store = shared_store().await?;
    let prefix = unique("gol");
    let ttl = Duration::from_secs(60);
    let pair = |name: &str| {
        (
            format!("{prefix}:{name}"),
            format!("{prefix}:__lease:{name}"),
        )
    };
    let (key, lease) = pair("hit");
    store.set(&key, b"v".to_vec(), ttl).await?;
    let got = store.get_or_lease(&key, &lease, b"t1", ttl).await?;
    assert_eq!(got, LeaseRead::Value(b"v".to_vec()));
    assert_eq!(store.get(&lease).await?, None, "a hit took the lease");
    let (key, lease) = pair("miss");
    let got = store.get_or_lease(&key, &lease, b"t1", ttl).await?;
    assert_eq!(got, LeaseRead::Leased);
    assert_eq!(store.get(&lease).await?, Some(b"t1".to_vec()));
    let mut conn = store.connection();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&lease)
        .query_async(&mut conn)
        .await?;
    assert!(pttl > 0 && pttl <= 60_000, "pttl {pttl}");
    let got = store.get_or_lease(&key, &lease, b"t2", ttl).await?;
    assert_eq!(got, LeaseRead::Busy);

    let (key, lease) = pair("race");
    let calls = (0..100).map(|i| {
        let (s, k, l) = (store.clone(), key.clone(), lease.clone());
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
    let calls = (0..100).map(|i| {
        let (s, (k, l)) = (store.clone(), pair(&format!("own:{i}")));
        tokio::spawn(async move { s.get_or_lease(&k, &l, b"t", ttl).await })
    });
    for answer in futures::future::join_all(calls).await {
        assert_eq!(answer??, LeaseRead::Leased);
    }
    Ok(())
}
