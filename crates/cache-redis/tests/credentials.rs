//! Rotating credentials against a real redis-server: a [`CredentialsProvider`] is asked at
//! every (re)connect of the store, the pub/sub bus and tracking. An ACL password changed on
//! the server (`ACL SETUSER app resetpass >new`) plus killed connections (`CLIENT KILL USER`)
//! -> everything reconnects with the provider's new password. No password (fixed or from the
//! provider) appears in any log line (tracing and redis-rs' `log` output), `Debug` or error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cache_core::{BusEvent, BusTransport};
use cache_core::{Error, ErrorKind, RemoteStore};
use cache_redis::{
    credentials_fn, Credentials, CredentialsProvider, RedisBus, RedisConfig, RedisStore,
    RedisTracking,
};
use cache_testkit::{RedisServer, ServerOptions};
use tokio::sync::mpsc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Every password of this binary starts with it: none may ever be printed.
const SECRET: &str = "R0tat3d-s3cret";
const USER: &str = "app";

fn password(generation: u32) -> String {
    format!("{SECRET}-{generation}")
}

// ---------------------------------------------------------------------------------------
// Output capture: tracing (TRACE) and the `log` facade (redis-rs) into one buffer.

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

/// A provider handing out the password of its current generation, counting its calls.
#[derive(Debug, Default)]
struct Rotating {
    generation: Mutex<u32>,
    calls: AtomicU64,
    fail: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl CredentialsProvider for Rotating {
    async fn credentials(&self) -> cache_core::Result<Credentials> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.fail.load(Ordering::Relaxed) {
            return Err(Error::new(
                ErrorKind::Connection,
                "the token endpoint is unreachable",
            ));
        }
        let generation = *self.generation.lock().unwrap();
        Ok(Credentials::with_user(USER, password(generation)))
    }
}

impl Rotating {
    fn rotate_to(&self, generation: u32) {
        *self.generation.lock().unwrap() = generation;
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

fn server() -> Result<RedisServer, cache_testkit::Error> {
    ServerOptions::new()
        .with_acl_user(&format!("{USER} on >{} ~* &* +@all", password(1)))
        .start()
}

fn config(server: &RedisServer, provider: &Arc<Rotating>) -> RedisConfig {
    RedisConfig::builder()
        .with_url(server.url())
        .with_response_timeout(Duration::from_secs(1))
        .with_credentials_provider(provider.clone())
        .build()
        .expect("valid config")
}

/// The server now wants password `generation` for `app`, and drops every connection of it.
fn rotate_on_server(server: &RedisServer, generation: u32) {
    server
        .cli(&[
            "ACL",
            "SETUSER",
            USER,
            "resetpass",
            &format!(">{}", password(generation)),
        ])
        .expect("ACL SETUSER");
    server
        .cli(&["CLIENT", "KILL", "USER", USER])
        .expect("CLIENT KILL USER");
}

/// Write and read back until it works; the time it took.
async fn until_it_works(store: &RedisStore, key: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let value = format!("v{}", started.elapsed().as_nanos()).into_bytes();
        let ok = match store.set(key, value.clone(), Duration::from_secs(60)).await {
            Ok(()) => store.get(key).await.ok() == Some(Some(value)),
            Err(_) => false,
        };
        if ok {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the store did not work again within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next event that is not a `Message`, within `limit`.
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

// ---------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reconnects_with_the_rotated_password() -> TestResult {
    capture();
    let server = server()?;
    let provider = Arc::new(Rotating::default());
    provider.rotate_to(1);
    let store = RedisStore::connect(config(&server, &provider)).await?;
    until_it_works(&store, "k", Duration::from_secs(1)).await;
    let before = provider.calls();
    assert!(
        before >= 2,
        "the probe and the connection each ask: {before}"
    );

    // The provider learns the new password first (the usual order for a secret store), then
    // the server changes it and drops the connections.
    provider.rotate_to(2);
    rotate_on_server(&server, 2);
    let took = until_it_works(&store, "k", Duration::from_secs(5)).await;
    eprintln!("store back {took:?} after the password rotation");
    assert!(
        provider.calls() > before,
        "the reconnect did not ask the provider"
    );
    assert!(server.cli(&["ACL", "WHOAMI"]).is_ok());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_lagging_behind_the_server_is_picked_up_by_a_later_reconnect() -> TestResult {
    capture();
    let server = server()?;
    let provider = Arc::new(Rotating::default());
    provider.rotate_to(1);
    let store = RedisStore::connect(config(&server, &provider)).await?;
    until_it_works(&store, "k", Duration::from_secs(1)).await;

    // The server changes first: reconnects with the old password are refused (Auth).
    rotate_on_server(&server, 2);
    let mut refused = None;
    for _ in 0..50 {
        match store.get("k").await {
            Err(e) if e.kind() == ErrorKind::Auth => {
                refused = Some(e);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let refused = refused.expect("reconnects with the old password are refused");
    assert!(!refused.to_string().contains(SECRET), "{refused}");
    assert!(!format!("{refused:?}").contains(SECRET), "{refused:?}");

    provider.rotate_to(2);
    let took = until_it_works(&store, "k", Duration::from_secs(5)).await;
    eprintln!("store back {took:?} after the provider caught up");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_and_tracking_reconnect_with_the_rotated_password() -> TestResult {
    capture();
    let server = server()?;
    let provider = Arc::new(Rotating::default());
    provider.rotate_to(1);
    let store = RedisStore::connect(config(&server, &provider)).await?;
    let publisher = RedisStore::connect(config(&server, &provider)).await?;
    let channel = "app:ns:__inv";

    let bus = RedisBus::new(&store);
    bus.subscribe(channel);
    let (tx, mut bus_rx) = mpsc::unbounded_channel();
    let bus_task = bus.start(tx)?;
    assert!(matches!(
        next_state(&mut bus_rx, Duration::from_secs(5)).await,
        BusEvent::Connected
    ));
    let tracking = RedisTracking::new(&store, "app")?;
    let (tx, mut tracking_rx) = mpsc::unbounded_channel();
    let tracking_task = tracking.start(tx)?;
    assert!(matches!(
        next_state(&mut tracking_rx, Duration::from_secs(5)).await,
        BusEvent::Connected
    ));

    provider.rotate_to(2);
    let rotated = Instant::now();
    rotate_on_server(&server, 2);

    // Both report the loss, then come back on the new password.
    for (name, rx) in [("bus", &mut bus_rx), ("tracking", &mut tracking_rx)] {
        assert!(
            matches!(
                next_state(rx, Duration::from_secs(5)).await,
                BusEvent::Disconnected
            ),
            "{name}"
        );
        assert!(
            matches!(
                next_state(rx, Duration::from_secs(5)).await,
                BusEvent::Connected
            ),
            "{name}"
        );
        eprintln!(
            "{name} back {:?} after the password rotation",
            rotated.elapsed()
        );
    }

    // An invalidation still reaches the subscriber, and a write still reaches tracking.
    until_it_works(&publisher, "app:ns:k", Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut delivered = false;
    while !delivered && Instant::now() < deadline {
        RedisBus::new(&publisher)
            .publish(channel, b"after-rotation".to_vec())
            .await?;
        if let Ok(Some(BusEvent::Message { payload, .. })) =
            tokio::time::timeout(Duration::from_millis(200), bus_rx.recv()).await
        {
            delivered = payload == b"after-rotation";
        }
    }
    assert!(
        delivered,
        "no invalidation reached the bus after the rotation"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tracked = false;
    while !tracked && Instant::now() < deadline {
        publisher
            .set("app:ns:tracked", b"x".to_vec(), Duration::from_secs(60))
            .await?;
        if let Ok(Some(BusEvent::KeysChanged(keys))) =
            tokio::time::timeout(Duration::from_millis(200), tracking_rx.recv()).await
        {
            tracked = keys.iter().any(|k| k == "app:ns:tracked");
        }
    }
    assert!(tracked, "no tracking invalidation after the rotation");
    bus_task.abort();
    tracking_task.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_a_typed_error_and_recovers() -> TestResult {
    capture();
    let server = server()?;
    let provider = Arc::new(Rotating::default());
    provider.rotate_to(1);
    provider.fail.store(true, Ordering::Relaxed);
    let err = RedisStore::connect(config(&server, &provider))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(
        err.message().contains("credentials provider")
            && err.message().contains("token endpoint is unreachable"),
        "{err}"
    );

    provider.fail.store(false, Ordering::Relaxed);
    let store = RedisStore::connect(config(&server, &provider)).await?;
    // The provider fails while the connection is cut: calls fail, then work again once it
    // answers.
    provider.fail.store(true, Ordering::Relaxed);
    server.cli(&["CLIENT", "KILL", "USER", USER])?;
    let mut failed = false;
    for _ in 0..20 {
        if store.get("k").await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        failed,
        "a cut connection with a failing provider cannot come back"
    );
    provider.fail.store(false, Ordering::Relaxed);
    until_it_works(&store, "k", Duration::from_secs(5)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_from_the_provider_is_auth() -> TestResult {
    capture();
    let server = server()?;
    let config = RedisConfig::builder()
        .with_url(server.url())
        .with_credentials_provider(credentials_fn(|| async {
            Ok(Credentials::with_user(USER, password(99)))
        }))
        .build()?;
    let err = RedisStore::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.message().contains("`app`"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_a_user_name_uses_the_configured_one() -> TestResult {
    capture();
    let server = server()?;
    let config = RedisConfig::builder()
        .with_url(format!("redis://{USER}@127.0.0.1:{}/", server.port()))
        .with_credentials_provider(credentials_fn(|| async {
            Ok(Credentials::new(password(1)))
        }))
        .build()?;
    let store = RedisStore::connect(config).await?;
    until_it_works(&store, "k", Duration::from_secs(1)).await;
    let mut conn = store.connection();
    let whoami: String = cache_redis::redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut conn)
        .await?;
    assert_eq!(whoami, USER);
    Ok(())
}

/// Runs last in its binary's output order only by chance: it checks everything captured so
/// far plus its own work, and is harmless to run alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_from_the_provider_is_ever_printed() -> TestResult {
    capture();
    let server = server()?;
    let provider = Arc::new(Rotating::default());
    provider.rotate_to(1);
    let config = config(&server, &provider);
    let store = RedisStore::connect(config.clone()).await?;
    let bus = RedisBus::new(&store);
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.subscribe("app:ns:__inv");
    let task = bus.start(tx)?;
    next_state(&mut rx, Duration::from_secs(5)).await;
    let mut shown = vec![
        format!("{config:?} {config:#?}"),
        format!("{store:?}"),
        format!("{:?}", store.config()),
        format!("{:?}", store.client().get_connection_info()),
        format!("{:?}", store.fresh_client().await?.get_connection_info()),
        format!("{bus:?}"),
        format!("{:?}", RedisTracking::new(&store, "app")?),
        format!(
            "{:?}",
            RedisConfig::builder().with_credentials_provider(provider.clone())
        ),
    ];
    // Refused rotations, a failing provider, a dead server.
    rotate_on_server(&server, 2);
    for _ in 0..5 {
        if let Err(e) = store.get("k").await {
            shown.push(format!("{e} {e:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    provider.rotate_to(2);
    until_it_works(&store, "k", Duration::from_secs(5)).await;
    provider.fail.store(true, Ordering::Relaxed);
    server.kill()?;
    for _ in 0..5 {
        if let Err(e) = store.set("k", b"v".to_vec(), Duration::from_secs(1)).await {
            shown.push(format!("{e} {e:?}"));
        }
    }
    if let Err(e) = RedisStore::connect(config.clone()).await {
        shown.push(format!("{e} {e:?}"));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    task.abort();

    let out = captured();
    assert!(
        out.contains("connected to Redis"),
        "the capture missed the connect logs"
    );
    assert!(
        !out.contains(SECRET),
        "a password is in the captured log output:\n{}",
        out.lines()
            .filter(|l| l.contains(SECRET))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for s in &shown {
        assert!(!s.contains(SECRET), "a password is shown: {s}");
    }
    Ok(())
}
