//! Security and hostile-network tests against real redis-servers (cache-testkit):
//!
//! - an ACL user confined to one tenant prefix (`~tenantA:* &tenantA:*`) can run every
//!   operation of a cache with that prefix, adversarial keys included, without a single
//!   denied command (the server's `ACL LOG` must stay empty);
//! - a password appears in no log line (tracing at TRACE and redis-rs' `log` output), no
//!   `Debug` / `Display` of configs, stores, builders, engines, caches or errors: while
//!   connecting, operating, after a wrong password and with the server killed;
//! - connections reset every 100 ms: no wrong value, no panic, bounded reconnects;
//! - 16 MiB values written beside small reads on the same connection: no read stalls 1 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_testkit::{FaultProxy, RedisServer, ServerOptions};
use cache_tiered::core::DEFAULT_MAX_KEY_LEN;
use cache_tiered::{
    BusConfig, Cache, Engine, ErrorKind, MsgPack, RedisConfig, RedisStore, RemoteStore,
};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The password every server of this binary uses: it must never be printed.
const SENTINEL: &str = "S3nt1nel-pa55";
/// The tenant prefix of the ACL tests.
const TENANT: &str = "tenantA";

/// `+@all -@dangerous` confined to the tenant's keys and channels: the simple rule set.
const RULES_SIMPLE: &str = "resetkeys ~tenantA:* resetchannels &tenantA:* +@all -@dangerous";

/// The smallest rule set that runs every operation (see docs/security.md): the commands the
/// cache sends, and the ones its Lua scripts call (scripts are checked command by command).
/// On Redis 7.2+ `+client|setinfo` is added (redis-rs announces itself with it and ignores a
/// refusal, which would still show in the ACL log); Redis 7.0 does not know it.
/// Every command in it is needed: each was removed in turn and the test failed
/// (`+client|tracking` only serves tracking mode). `AUTH` and `HELLO` need no rule.
const RULES_MINIMAL: &str = "resetkeys ~tenantA:* resetchannels &tenantA:* -@all \
    +ping +client|tracking \
    +get +mget +set +del +unlink +scan \
    +evalsha +script|load +sadd +smembers +srem +pttl +pexpire \
    +publish +subscribe";

// ---------------------------------------------------------------------------------------
// Output capture: tracing (TRACE, everything) and the `log` facade (redis-rs) into a buffer.

fn captured_buffer() -> &'static Mutex<Vec<u8>> {
    static BUFFER: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    BUFFER.get_or_init(|| Mutex::new(Vec::new()))
}

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        captured_buffer()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct CaptureLog;

impl log::Log for CaptureLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!(
            "log {} {}: {}\n",
            record.level(),
            record.target(),
            record.args()
        );
        let _ = CaptureWriter.write(line.as_bytes());
    }

    fn flush(&self) {}
}

static CAPTURE_LOG: CaptureLog = CaptureLog;

/// Install the capturing subscriber and logger (once per test binary).
fn capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| CaptureWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        log::set_logger(&CAPTURE_LOG).expect("no other logger");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn captured() -> String {
    String::from_utf8_lossy(&captured_buffer().lock().unwrap_or_else(|p| p.into_inner()))
        .into_owned()
}

// ---------------------------------------------------------------------------------------
// Helpers.

/// The value every test stores under `key`: derived from the key, so a value served for the
/// wrong key is caught.
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

/// Keys chosen to break naive key handling: glob and hash-tag characters, separators, RESP
/// framing, other tenants' prefixes, reserved segments, NUL, unicode, and the longest
/// accepted keys.
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
        "::",
        "a:b:c",
        "\n",
        "line\nbreak",
        "\r\n*1\r\n$4\r\nPING\r\n",
        "{user:1}",
        "{user:1}:profile",
        "{user:1}}",
        " ",
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
    keys.push("é".repeat(DEFAULT_MAX_KEY_LEN / 2));
    keys.push(format!("{{{}}}", "x".repeat(DEFAULT_MAX_KEY_LEN - 2)));
    for k in &keys {
        assert!(k.len() <= DEFAULT_MAX_KEY_LEN);
    }
    keys
}

fn adversarial_tags() -> Vec<String> {
    ["*", "{t}", "t\n", ":", "ключ", "tenantB", "a b"]
        .into_iter()
        .map(str::to_owned)
        .chain(std::iter::once("t".repeat(256)))
        .collect()
}

fn tenant_config(server: &RedisServer, user: &str) -> RedisConfig {
    RedisConfig::builder()
        .with_url(server.url())
        .with_username(user)
        .with_password(SENTINEL)
        .with_response_timeout(Duration::from_secs(2))
        .build()
        .expect("valid config")
}

async fn tenant_engine(config: RedisConfig, tracking: bool) -> Result<Engine, cache_tiered::Error> {
    cache_tiered::builder(TENANT)
        .with_redis(config)
        .with_tracking(tracking)
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

/// The server's `ACL LOG` (denied commands, keys, channels), empty when nothing was denied.
fn acl_log(server: &RedisServer) -> String {
    server
        .cli(&["ACL", "LOG"])
        .expect("ACL LOG")
        .trim()
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// ACL containment.

/// Run every operation of two engines (`a`, `b`, one bus between them) and a tracking engine
/// `t` with the tenant prefix; every result is checked.
async fn every_operation(server: &RedisServer, user: &str, ns: &str) -> TestResult {
    let a_engine = tenant_engine(tenant_config(server, user), false).await?;
    let b_engine = tenant_engine(tenant_config(server, user), false).await?;
    let t_engine = tenant_engine(tenant_config(server, user), true).await?;
    let a = strings(&a_engine, ns)?;
    let b = strings(&b_engine, ns)?;
    let t = strings(&t_engine, ns)?;
    let keys = adversarial_keys();
    // Let the subscriptions come up before anything is published.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // get (miss), get_or_load, get from L2 in another engine.
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
        assert_eq!(t.get(k).await?.as_deref(), Some(&value_of(k, 0)), "{k:?}");
    }

    // set: the bus drops B's L1 copies, tracking drops T's.
    for k in &keys {
        a.set(k, value_of(k, 1)).await?;
    }
    let dropped = wait_until(
        || keys.iter().all(|k| b.get_local(k).is_none()),
        Duration::from_secs(5),
    )
    .await;
    assert!(dropped, "B kept L1 copies after A's writes");
    let tracked = wait_until(
        || keys.iter().all(|k| t.get_local(k).is_none()),
        Duration::from_secs(5),
    )
    .await;
    assert!(tracked, "tracking did not drop T's L1 copies");
    assert!(
        b_engine.bus_stats().map_or(0, |s| s.received_keys) > 0,
        "B received no invalidation over the bus"
    );
    for k in &keys {
        assert_eq!(b.get(k).await?.as_deref(), Some(&value_of(k, 1)), "{k:?}");
    }

    // get_many from L1 and from L2.
    let got = a.get_many(&keys).await?;
    b.clear_local();
    let got_b = b.get_many(&keys).await?;
    for ((k, x), y) in keys.iter().zip(got).zip(got_b) {
        assert_eq!(x.as_deref(), Some(&value_of(k, 1)), "{k:?}");
        assert_eq!(y.as_deref(), Some(&value_of(k, 1)), "{k:?}");
    }

    // set_with_tags and invalidate_tag, adversarial tags included.
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
    // "all" still lists every key; taking it deletes nothing more but must be allowed.
    assert_eq!(a.invalidate_tag("all").await?, keys.len() as u64);

    // get_many_or_load: one batch load, values in L2 for B.
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

    // clear_namespace: SCAN + UNLINK of the namespace, a clear message on the bus.
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

    // A key over the limit is refused before anything is sent.
    let too_long = "k".repeat(DEFAULT_MAX_KEY_LEN + 1);
    assert_eq!(
        a.get(&too_long).await.map_err(|e| e.kind()),
        Err(ErrorKind::InvalidKey)
    );

    // Nothing failed on the way, even where the cache would have carried on without L2.
    for (name, c) in [("a", &a), ("b", &b), ("t", &t)] {
        let s = c.stats();
        assert_eq!(s.l2_errors, 0, "{name}: {s:?}");
        assert_eq!(s.l2_corrupt, 0, "{name}: {s:?}");
    }
    for (name, e) in [("a", &a_engine), ("b", &b_engine), ("t", &t_engine)] {
        let s = e.bus_stats().unwrap_or_default();
        assert_eq!(s.publish_errors, 0, "{name}: {s:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_acl_user_runs_every_operation() -> TestResult {
    capture();
    let server = ServerOptions::new()
        .with_acl_user(&format!("{TENANT} on >{SENTINEL} {RULES_SIMPLE}"))
        .start()?;
    every_operation(&server, TENANT, "ops").await?;
    let denied = acl_log(&server);
    assert!(denied.is_empty(), "commands were denied:\n{denied}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_acl_rule_set_runs_every_operation() -> TestResult {
    capture();
    let server = ServerOptions::new()
        .with_acl_user(&format!("{TENANT} on >{SENTINEL} {RULES_MINIMAL}"))
        .start()?;
    // Redis 7.2+ only; an error on older servers is expected.
    let _ = server.cli(&["ACL", "SETUSER", TENANT, "+client|setinfo"]);
    every_operation(&server, TENANT, "ops").await?;
    let denied = acl_log(&server);
    assert!(denied.is_empty(), "commands were denied:\n{denied}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_acl_user_is_confined_to_its_prefix() -> TestResult {
    capture();
    let server = ServerOptions::new()
        .with_acl_user(&format!("{TENANT} on >{SENTINEL} {RULES_SIMPLE}"))
        .start()?;
    server.cli(&["SET", "tenantB:ns:secret", "b"])?;
    // The same user with another tenant's prefix: every L2 call is refused, typed Auth.
    let other = cache_tiered::builder("tenantB")
        .with_redis(tenant_config(&server, TENANT))
        .with_bus(false)
        .build()
        .await?;
    let c = strings(&other, "ns")?;
    let written = c.set("secret", "overwritten".to_owned()).await;
    assert!(c.stats().l2_errors >= 1, "{:?}", c.stats());
    assert_eq!(server.cli(&["GET", "tenantB:ns:secret"])?.trim(), "b");
    // Raw commands on the tenant's connection: foreign keys and channels are refused.
    let store = RedisStore::connect(tenant_config(&server, TENANT)).await?;
    let get = store.get("tenantB:ns:secret").await;
    assert_eq!(get.map_err(|e| e.kind()), Err(ErrorKind::Auth));
    let mut conn = store.connection();
    let published: Result<i64, _> = cache_redis::redis::cmd("PUBLISH")
        .arg("tenantB:ns:__inv")
        .arg("x")
        .query_async(&mut conn)
        .await;
    assert!(published.is_err(), "published on another tenant's channel");
    let denied = acl_log(&server);
    assert!(
        denied.contains("tenantB:ns:secret") && denied.contains("tenantB:ns:__inv"),
        "the denials are in the ACL log:\n{denied}"
    );
    // A refused write is an error for the caller: NOPERM is not an outage that a later
    // replay (auto-recovery) could fix, so it must not be accepted and queued.
    let err = written.expect_err("a write the server refused (NOPERM) reported success");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.message().contains("tenantA"), "names the user: {err}");
    assert!(!err.to_string().contains(SENTINEL));
    Ok(())
}

/// An authorisation error is a configuration error: a user without `+get` gets
/// `ErrorKind::Auth` naming the command on every read, and the circuit breaker stays closed
/// (it counts only transient errors), so the error is never hidden behind `CircuitOpen`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorisation_error_does_not_open_the_breaker() -> TestResult {
    use cache_tiered::core::{BreakerConfig, BreakerStore, CircuitBreaker};
    capture();
    let server = ServerOptions::new()
        .with_acl_user(&format!("{TENANT} on >{SENTINEL} {RULES_MINIMAL} -get"))
        .start()?;
    let store = RedisStore::connect(tenant_config(&server, TENANT)).await?;
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
        assert!(!err.to_string().contains(SENTINEL), "{err}");
        assert!(!breaker.is_open(), "opened after {} refusals", i + 1);
    }
    guarded
        .set("tenantA:ns:x", b"v".to_vec(), Duration::from_secs(5))
        .await?;
    assert!(!breaker.is_open());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Secrets.

/// `Display`, `Debug` and the `source` chain of an error.
fn render_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("{e} | {e:?}");
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(" | {s} | {s:?}"));
        source = s.source();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_never_printed() -> TestResult {
    capture();
    let server = ServerOptions::new()
        .with_requirepass(SENTINEL)
        .with_acl_user(&format!("{TENANT} on >{SENTINEL} {RULES_SIMPLE}"))
        .start()?;
    let port = server.port();
    let mut shown: Vec<String> = Vec::new();

    // Configs and builders: the password as a field and inside URLs.
    let by_field = tenant_config(&server, TENANT);
    let by_url = RedisConfig::builder()
        .with_url(format!("redis://{TENANT}:{SENTINEL}@127.0.0.1:{port}/"))
        .build()?;
    let default_user = RedisConfig::builder()
        .with_url(format!("redis://:{SENTINEL}@127.0.0.1:{port}/0"))
        .build()?;
    for c in [&by_field, &by_url, &default_user] {
        shown.push(format!("{c:?}"));
        shown.push(format!("{c:#?}"));
        shown.push(c.redacted_url());
    }
    shown.push(format!(
        "{:?}",
        RedisConfig::builder()
            .with_url(format!("redis://u:{SENTINEL}@127.0.0.1:{port}/"))
            .with_password(SENTINEL)
    ));
    let builder = cache_tiered::builder(TENANT)
        .with_redis(by_url.clone())
        .with_tracking(true);
    shown.push(format!("{builder:?}"));
    let url_builder = cache_tiered::builder(TENANT)
        .with_redis_url(format!("redis://:{SENTINEL}@127.0.0.1:{port}/"));
    shown.push(format!("{url_builder:?}"));

    // Connecting: engines with the bus and tracking, a bare store and its parts.
    let e1 = builder.build().await?;
    let e2 = cache_tiered::builder(TENANT)
        .with_redis(by_field.clone())
        .build()
        .await?;
    let e3 = url_builder.build().await?;
    let store = RedisStore::connect(by_url.clone()).await?;
    shown.push(format!("{store:?}"));
    shown.push(format!("{:?}", store.config()));
    shown.push(format!("{:?}", store.client()));
    shown.push(format!("{:?}", store.client().get_connection_info()));
    shown.push(format!("{:?}", cache_tiered::RedisBus::new(&store)));
    shown.push(format!(
        "{:?}",
        cache_tiered::RedisTracking::new(&store, TENANT)?
    ));
    for e in [&e1, &e2, &e3] {
        shown.push(format!("{e:?}"));
        shown.push(format!("{:?}", e.remote()));
    }
    let cache_builder = e1.cache::<String, MsgPack>("sec");
    shown.push(format!("{cache_builder:?}"));
    let c = cache_builder.build()?;
    let c2 = strings(&e2, "sec")?;
    shown.push(format!("{c:?}"));
    shown.push(format!("{:?}", c.config()));

    // Operations.
    c.set("k", value_of("k", 0)).await?;
    c.set_with_tags("t", value_of("t", 0), &["tag"]).await?;
    assert_eq!(c2.get("k").await?.as_deref(), Some(&value_of("k", 0)));
    c2.get_or_load(
        "l",
        |k| async move { Ok::<_, std::io::Error>(value_of(&k, 0)) },
    )
    .await?;
    c.invalidate("k").await?;
    c.invalidate_tag("tag").await?;
    c.clear_namespace().await?;

    // Wrong passwords and a missing one.
    let wrong = format!("{SENTINEL}-wrong");
    let attempts = [
        RedisConfig::builder()
            .with_url(server.url())
            .with_username(TENANT)
            .with_password(&wrong)
            .build()?,
        RedisConfig::builder()
            .with_url(format!("redis://{TENANT}:{wrong}@127.0.0.1:{port}/"))
            .build()?,
        RedisConfig::builder()
            .with_url(format!("redis://:{wrong}@127.0.0.1:{port}/"))
            .build()?,
        RedisConfig::builder().with_url(server.url()).build()?,
    ];
    for config in attempts {
        shown.push(format!("{config:?}"));
        let err = RedisStore::connect(config.clone()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        shown.push(render_error(&err));
        let err = cache_tiered::builder(TENANT)
            .with_redis(config)
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
        shown.push(render_error(&err));
    }

    // The server dies: operations fail or degrade, the bus and tracking reconnect in a loop.
    server.kill()?;
    for i in 0..3 {
        let key = format!("dead{i}");
        if let Err(e) = c.set(&key, value_of(&key, 0)).await {
            shown.push(render_error(&e));
        }
        c.invalidate_local(&key);
        if let Err(e) = c.get(&key).await {
            shown.push(render_error(&e));
        }
        if let Err(e) = c2
            .get_or_load(
                &key,
                |k| async move { Ok::<_, std::io::Error>(value_of(&k, 0)) },
            )
            .await
        {
            shown.push(render_error(&e));
        }
        if let Err(e) = store.ping().await {
            shown.push(render_error(&e));
        }
    }
    let err = RedisStore::connect(by_url.clone()).await.unwrap_err();
    shown.push(render_error(&err));
    // Let the subscriber and tracking loops fail and log a few times.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shown.push(format!("{:?}", c.stats()));

    // The password is in none of it.
    let out = captured();
    assert!(
        out.contains("connected to Redis") && out.contains("cannot connect to Redis"),
        "the capture missed the connect logs"
    );
    assert!(
        !out.contains(SENTINEL),
        "the password is in the captured log output:\n{}",
        out.lines()
            .filter(|l| l.contains(SENTINEL))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for s in &shown {
        assert!(!s.contains(SENTINEL), "the password is shown: {s}");
    }
    Ok(())
}

/// The same, for passwords a credentials provider hands out (rotating tokens): through the
/// facade builder with the bus and tracking on, a rotation (server first, then the provider),
/// a provider refused by the server and a failing provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_from_a_credentials_provider_is_never_printed() -> TestResult {
    capture();
    let token = |generation: u32| format!("{SENTINEL}-token-{generation}");
    let server = ServerOptions::new()
        .with_requirepass(SENTINEL)
        .with_acl_user(&format!("{TENANT} on >{} {RULES_SIMPLE}", token(1)))
        .start()?;
    let generation = Arc::new(AtomicU64::new(1));
    let failing = Arc::new(AtomicBool::new(false));
    let provider = {
        let generation = generation.clone();
        let failing = failing.clone();
        cache_tiered::credentials_fn(move || {
            let g = generation.load(Ordering::Relaxed) as u32;
            let fail = failing.load(Ordering::Relaxed);
            async move {
                if fail {
                    return Err(cache_tiered::Error::new(
                        ErrorKind::Connection,
                        "token service down",
                    ));
                }
                Ok(cache_tiered::Credentials::with_user(TENANT, token(g)))
            }
        })
    };
    let config = RedisConfig::builder()
        .with_url(server.url())
        .with_credentials_provider(provider)
        .with_response_timeout(Duration::from_secs(1))
        .build()?;
    let mut shown = vec![format!("{config:?} {config:#?}")];
    let builder = cache_tiered::builder(TENANT)
        .with_redis(config.clone())
        .with_tracking(true);
    shown.push(format!("{builder:?}"));
    let e1 = builder.build().await?;
    let e2 = tenant_engine(config.clone(), false).await?;
    let c1 = strings(&e1, "prov")?;
    let c2 = strings(&e2, "prov")?;
    shown.push(format!("{e1:?} {:?} {c1:?}", e1.remote()));
    c1.set("k", value_of("k", 0)).await?;
    assert_eq!(c2.get("k").await?.as_deref(), Some(&value_of("k", 0)));

    // Rotation: the server first (reconnects refused), then the provider.
    server.cli(&[
        "ACL",
        "SETUSER",
        TENANT,
        "resetpass",
        &format!(">{}", token(2)),
    ])?;
    server.cli(&["CLIENT", "KILL", "USER", TENANT])?;
    for i in 0..5 {
        let key = format!("r{i}");
        if let Err(e) = c1.set(&key, value_of(&key, 0)).await {
            shown.push(render_error(&e));
        }
        c1.invalidate_local(&key);
        if let Err(e) = c1.get(&key).await {
            shown.push(render_error(&e));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    generation.store(2, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c1.set("after", value_of("after", 0)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "never reconnected with the rotated token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A failing provider while connections are cut.
    failing.store(true, Ordering::Relaxed);
    server.cli(&["CLIENT", "KILL", "USER", TENANT])?;
    for _ in 0..3 {
        if let Err(e) = c2
            .get_or_load(
                "f",
                |k| async move { Ok::<_, std::io::Error>(value_of(&k, 0)) },
            )
            .await
        {
            shown.push(render_error(&e));
        }
    }
    if let Err(e) = cache_tiered::builder(TENANT)
        .with_redis(config.clone())
        .build()
        .await
    {
        shown.push(render_error(&e));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;

    let out = captured();
    assert!(
        !out.contains(SENTINEL),
        "a token is in the captured log output:\n{}",
        out.lines()
            .filter(|l| l.contains(SENTINEL))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for s in &shown {
        assert!(!s.contains(SENTINEL), "a token is shown: {s}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Hostile network.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_every_100ms_never_give_a_wrong_value() -> TestResult {
    const RESETS: u64 = 50; // every 100 ms for 5 s
    const TASKS: usize = 4;
    let server = RedisServer::start()?;
    let proxy = Arc::new(FaultProxy::start(server.addr())?);
    // The defaults: 500 ms response timeout, reconnect rounds of 1 + 2 attempts, 50 ms..1 s.
    let config = RedisConfig::builder().with_url(proxy.url()).build()?;
    let retries = config.reconnect_retries as u64;
    let engine = cache_tiered::builder("resets")
        .with_redis(config)
        .with_bus_config(BusConfig::default().with_heartbeat(Duration::from_millis(200)))
        .build()
        .await?;
    let cache = engine
        .cache::<String, MsgPack>("kv")
        .with_l1_ttl(Duration::from_millis(50))
        .build()?;
    let keys: Arc<Vec<String>> = Arc::new((0..50).map(|i| format!("key-{i}")).collect());

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let wrong: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (cache, keys, stop) = (cache.clone(), keys.clone(), stop.clone());
        let (ok, failed, wrong) = (ok.clone(), failed.clone(), wrong.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t as u64);
            let check = |k: &str, v: Option<&String>| {
                if let Some(v) = v {
                    if *v != value_of(k, 0) {
                        wrong.lock().unwrap().push(format!("{k:?} -> {v:?}"));
                    }
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let i = rng.usize(..keys.len());
                let k = &keys[i];
                let result = match rng.u8(..4) {
                    0 => cache.set(k, value_of(k, 0)).await,
                    1 => cache
                        .get_or_load(
                            k,
                            |k| async move { Ok::<_, std::io::Error>(value_of(&k, 0)) },
                        )
                        .await
                        .map(|v| check(k, Some(&v))),
                    2 => {
                        cache.invalidate_local(k);
                        cache.get(k).await.map(|v| check(k, v.as_deref()))
                    }
                    _ => {
                        let batch = &keys[i..(i + 5).min(keys.len())];
                        cache.get_many(batch).await.map(|vs| {
                            for (k, v) in batch.iter().zip(vs) {
                                check(k, v.as_deref());
                            }
                        })
                    }
                };
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let resetter = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            interval.tick().await;
            for _ in 0..RESETS {
                interval.tick().await;
                proxy.reset_all();
            }
        })
    };
    resetter.await?;
    stop.store(true, Ordering::Relaxed);
    let mut panics = 0;
    for t in tasks {
        if let Err(e) = t.await {
            assert!(e.is_panic(), "{e}");
            panics += 1;
        }
    }
    let accepted = proxy.connections_accepted();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let wrong = wrong.lock().unwrap().clone();
    assert_eq!(panics, 0);
    assert!(wrong.is_empty(), "{} wrong values: {wrong:?}", wrong.len());
    assert!(ok > 0, "no operation succeeded ({failed} failed)");
    // Each reset breaks the engine's two connections (the multiplexed one and the bus
    // subscriber); each break costs at most one reconnect round of 1 + reconnect_retries
    // attempts. Plus the 3 connections of `build` (probe, multiplexed, subscriber). A
    // reconnect loop without backoff would blow through this by orders of magnitude.
    let bound = 3 + RESETS * 2 * (1 + retries);
    assert!(
        accepted <= bound,
        "{accepted} connections for {RESETS} resets (bound {bound})"
    );
    // And the engine works normally afterwards.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = strings(&engine, "after")?;
        if fresh.set("k", value_of("k", 0)).await.is_ok() && fresh.stats().l2_errors == 0 {
            fresh.invalidate_local("k");
            if fresh.get("k").await?.as_deref() == Some(&value_of("k", 0)) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the engine did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = cache.stats();
    let (gets, mgets) = (server.command_calls("get")?, server.command_calls("mget")?);
    eprintln!(
        "resets: {ok} ok, {failed} failed, 0 wrong, {accepted} connections accepted (bound \
         {bound}); server saw {gets} GET, {mgets} MGET; {stats:?}"
    );
    // The storm really went through Redis (not only through L1 or an open breaker).
    assert!(gets + mgets > 100, "{gets} GET, {mgets} MGET");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_reads_never_stall_behind_16_mib_writes() -> TestResult {
    const MIB: usize = 1024 * 1024;
    const WRITES: usize = 8;
    let server = RedisServer::start()?;
    // A long response timeout, so a stall shows as latency instead of hiding as an error.
    let config = RedisConfig::builder()
        .with_url(server.url())
        .with_max_value_size(17 * MIB)
        .with_response_timeout(Duration::from_secs(10))
        .build()?;
    let engine = cache_tiered::builder("big")
        .with_redis(config)
        .with_bus(false)
        .with_l1_capacity_bytes(256 * MIB as u64)
        .build()
        .await?;
    let big = strings(&engine, "big")?;
    let small = strings(&engine, "small")?;
    let keys: Vec<String> = (0..20).map(|i| format!("small-{i}")).collect();
    for k in &keys {
        small.set(k, value_of(k, 0)).await?;
    }
    let blob = Arc::new("x".repeat(16 * MIB));
    let writing = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (big, blob, writing, done) = (big.clone(), blob.clone(), writing.clone(), done.clone());
        tokio::spawn(async move {
            let mut result = Ok(());
            for i in 0..WRITES {
                writing.store(true, Ordering::SeqCst);
                result = big.set(&format!("blob{}", i % 2), (*blob).clone()).await;
                writing.store(false, Ordering::SeqCst);
                if result.is_err() {
                    break;
                }
            }
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    let mut max = Duration::ZERO;
    let (mut reads, mut overlapping, mut errors) = (0u64, 0u64, 0u64);
    while !done.load(Ordering::SeqCst) {
        for k in &keys {
            small.invalidate_local(k);
            let during_write = writing.load(Ordering::SeqCst);
            let started = Instant::now();
            let got = small.get(k).await;
            let took = started.elapsed();
            max = max.max(took);
            reads += 1;
            if during_write {
                overlapping += 1;
            }
            match got {
                Ok(v) => assert_eq!(v.as_deref(), Some(&value_of(k, 0)), "{k}"),
                Err(_) => errors += 1,
            }
        }
    }
    writer.await??;
    assert_eq!(big.stats().l2_errors, 0, "{:?}", big.stats());
    assert_eq!(errors, 0, "small reads failed");
    assert!(overlapping > 0, "no read overlapped a 16 MiB write");
    eprintln!("16 MiB writes: {reads} small reads, {overlapping} during a write, max {max:?}");
    // The criterion.
    assert!(max < Duration::from_secs(1), "a small GET stalled {max:?}");
    // The big values made it.
    big.clear_local();
    assert_eq!(big.get("blob0").await?.map(|v| v.len()), Some(16 * MIB));
    Ok(())
}
