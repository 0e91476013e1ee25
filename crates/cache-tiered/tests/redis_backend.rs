//! The behaviour suite against a real redis-server (started by cache-testkit), plus the
//! checks only a real server can answer: round trips counted by the server, a killed or
//! frozen server mid-test.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_testkit::{shared_redis, RedisServer};
use cache_tiered::{RedisConfig, RedisStore, RemoteStore};
use common::{Backend, TestResult};

const MAX_VALUE: usize = 1024 * 1024;

async fn connect(url: &str) -> Arc<dyn RemoteStore> {
    let config = RedisConfig::builder()
        .with_url(url)
        .with_max_value_size(MAX_VALUE)
        .with_response_timeout(Duration::from_millis(300))
        .build()
        .expect("valid config");
    Arc::new(RedisStore::connect(config).await.expect("redis reachable"))
}

/// The server shared by every test of this binary; each test uses its own key prefix.
struct Shared {
    url: String,
}

#[async_trait::async_trait]
impl Backend for Shared {
    async fn store(&self) -> Arc<dyn RemoteStore> {
        connect(&self.url).await
    }

    async fn set_down(&self, _down: bool) {
        unreachable!("the shared server is never taken down; use a private one");
    }
}

async fn shared() -> Result<Shared, cache_testkit::Error> {
    Ok(Shared {
        url: shared_redis()?.url(),
    })
}

behaviour_suite!(shared);

/// A server of this test's own, which the test may kill and restart.
struct Private {
    server: RedisServer,
}

#[async_trait::async_trait]
impl Backend for Private {
    async fn store(&self) -> Arc<dyn RemoteStore> {
        connect(&self.server.url()).await
    }

    async fn set_down(&self, down: bool) {
        if down {
            self.server.kill().expect("kill redis-server");
        } else {
            self.server.restart().expect("restart redis-server");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_hit_survives_redis_killed_mid_test() -> TestResult {
    let backend = Private {
        server: RedisServer::start()?,
    };
    common::l1_hit_survives_l2_outage(&backend).await?;
    // Redis is back (restarted on the same port): the same engine uses it again by itself.
    let e = common::engine(&backend, "back").await?;
    let c = common::users(&e)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        c.set("after", common::user(1)).await.ok();
        let fresh = common::users(&common::engine(&backend, "back").await?)?;
        if fresh.get("after").await?.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis not used again after restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_is_one_round_trip() -> TestResult {
    let server = RedisServer::start()?;
    let backend = Private { server };
    let writer = common::users(&common::engine(&backend, "rt").await?)?;
    for i in 0..20u64 {
        writer.set(&i.to_string(), common::user(i)).await?;
    }
    let reader = common::users(&common::engine(&backend, "rt").await?)?;
    reader.get("0").await?; // one key in L1 already
    let (mget, get) = (
        backend.server.command_calls("mget")?,
        backend.server.command_calls("get")?,
    );
    let keys: Vec<String> = (0..25).map(|i| i.to_string()).collect();
    let got = reader.get_many(&keys).await?;
    assert_eq!(got.iter().filter(|v| v.is_some()).count(), 20);
    assert_eq!(backend.server.command_calls("mget")? - mget, 1, "one MGET");
    assert_eq!(
        backend.server.command_calls("get")? - get,
        0,
        "no single GETs"
    );
    // get_many_or_load: one MGET for the misses, one batch loader call, then one pipeline of
    // leases (SET NX per key) and one of compare-and-set fills (a SET inside the script).
    let (mget, set) = (
        backend.server.command_calls("mget")?,
        backend.server.command_calls("set")?,
    );
    let calls = Arc::new(AtomicU64::new(0));
    let k = calls.clone();
    let keys: Vec<String> = (100..150).map(|i| i.to_string()).collect();
    reader
        .get_many_or_load(&keys, move |missing| async move {
            k.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(
                missing
                    .iter()
                    .map(|m| (m.clone(), common::user(m.parse().unwrap_or(0))))
                    .collect(),
            )
        })
        .await?;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(backend.server.command_calls("mget")? - mget, 1);
    assert_eq!(
        backend.server.command_calls("set")? - set,
        100,
        "50 leases and 50 compare-and-set fills"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_costs_at_most_the_response_timeout() -> TestResult {
    let backend = Private {
        server: RedisServer::start()?,
    };
    let e = common::engine(&backend, "frozen").await?;
    let c = common::users(&e)?.clone();
    let c2 = e
        .cache::<common::User, cache_tiered::MsgPack>("nolease")
        .with_leases(false)
        .build()?;
    backend.server.stop()?; // SIGSTOP: connections stay open, nothing answers
    let started = Instant::now();
    let v = c2
        .get_or_load("1", |_| async { Ok::<_, std::io::Error>(common::user(1)) })
        .await;
    let took = started.elapsed();
    backend.server.cont()?;
    assert_eq!(
        v?.id, 1,
        "the loader's value comes back while Redis is frozen"
    );
    // One GET and one SET, each bounded by the 300 ms response timeout.
    assert!(took < Duration::from_millis(2 * 300 + 400), "took {took:?}");
    assert!(c2.stats().l2_errors >= 1);
    let _ = c;
    Ok(())
}
