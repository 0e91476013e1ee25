//! Mutual TLS against a real redis-server with `tls-auth-clients yes` (feature `tls`): a
//! client without a certificate, or with one from another CA, is refused with a typed error;
//! one with a certificate from the server's CA reads, writes and subscribes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cache_core::{BusEvent, BusTransport};
use cache_core::{ErrorKind, RemoteStore};
use cache_redis::{RedisBus, RedisConfig, RedisStore};
use cache_testkit::{RedisServer, ServerOptions, TestCerts};
use tokio::sync::mpsc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn mtls_server(certs: &TestCerts) -> Result<RedisServer, cache_testkit::Error> {
    ServerOptions::new()
        .tls_requiring_client_certs(certs)?
        .start()
}

fn url(server: &RedisServer) -> String {
    format!("rediss://localhost:{}/", server.tls_port().unwrap())
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_with_a_typed_error() -> TestResult {
    let certs = TestCerts::generate()?;
    let server = mtls_server(&certs)?;
    let config = RedisConfig::builder()
        .with_url(url(&server))
        .with_tls_ca_file(&certs.ca_cert)
        .build()?;
    let err = RedisStore::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(
        err.message().contains("requires a TLS client certificate"),
        "the message should say a client certificate is needed: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() -> TestResult {
    let certs = TestCerts::generate()?;
    let other = TestCerts::generate()?;
    let server = mtls_server(&certs)?;
    let config = RedisConfig::builder()
        .with_url(url(&server))
        .with_tls_ca_file(&certs.ca_cert)
        .with_tls_client_cert(&other.client_cert, &other.client_key)
        .build()?;
    let err = RedisStore::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    Ok(())
}

#[tokio::test]
async fn a_client_with_a_certificate_reads_writes_and_subscribes() -> TestResult {
    let certs = TestCerts::generate()?;
    let server = mtls_server(&certs)?;
    let config = RedisConfig::builder()
        .with_url(url(&server))
        .with_tls_ca_file(&certs.ca_cert)
        .with_tls_client_cert(&certs.client_cert, &certs.client_key)
        .build()?;
    let store = RedisStore::connect(config.clone()).await?;
    store
        .set("k", b"v".to_vec(), Duration::from_secs(60))
        .await?;
    assert_eq!(store.get("k").await?, Some(b"v".to_vec()));
    assert_eq!(
        store
            .get_many(&["k".to_owned(), "missing".to_owned()])
            .await?,
        vec![Some(b"v".to_vec()), None]
    );

    // The pub/sub subscriber presents the certificate too.
    let bus = RedisBus::new(&store);
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.subscribe("app:ns:__inv");
    let task = bus.start(tx)?;
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
    assert!(matches!(first, Some(BusEvent::Connected)), "{first:?}");
    let publisher = RedisStore::connect(config).await?;
    RedisBus::new(&publisher)
        .publish("app:ns:__inv", b"hello".to_vec())
        .await?;
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
    assert!(
        matches!(&got, Some(BusEvent::Message { payload, .. }) if payload == b"hello"),
        "{got:?}"
    );
    task.abort();
    Ok(())
}

#[tokio::test]
async fn the_private_key_is_never_shown() -> TestResult {
    let certs = TestCerts::generate()?;
    let server = mtls_server(&certs)?;
    let config = RedisConfig::builder()
        .with_url(url(&server))
        .with_tls_ca_file(&certs.ca_cert)
        .with_tls_client_cert(&certs.client_cert, &certs.client_key)
        .build()?;
    let store = RedisStore::connect(config.clone()).await?;
    let key_pem = std::fs::read_to_string(&certs.client_key)?;
    // A line of the key's base64 body, and its DER bytes as `Debug` of a byte slice would
    // print them.
    let body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    let shown = format!(
        "{config:?} {store:?} {:?} {:?}",
        store.client(),
        store.client().get_connection_info()
    );
    for line in body {
        assert!(!shown.contains(line), "the key is shown: {shown}");
    }
    assert!(!shown.contains("PRIVATE KEY"), "the key is shown: {shown}");
    Ok(())
}

#[tokio::test]
async fn an_unreadable_client_key_is_a_config_error() -> TestResult {
    let certs = TestCerts::generate()?;
    let config = RedisConfig::builder()
        .with_url("rediss://localhost:1/")
        .with_tls_client_cert(&certs.client_cert, "/nonexistent/client.key")
        .build()?;
    let err = RedisStore::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.message().contains("tls_client_key_file"), "{err}");
    // A certificate file where the key should be: refused as a config error, not a panic.
    let config = RedisConfig::builder()
        .with_url("rediss://localhost:1/")
        .with_tls_client_cert(&certs.client_cert, &certs.client_cert)
        .build()?;
    let err = RedisStore::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    Ok(())
}
