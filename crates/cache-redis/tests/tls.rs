//! `rediss://` against a real TLS redis-server (feature `tls`): certificates are verified,
//! and there is never a plaintext fallback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use cache_core::{ErrorKind, RemoteStore};
use cache_redis::{RedisConfig, RedisStore};
use cache_testkit::{ServerOptions, TestCerts};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test]
async fn rediss_with_a_trusted_ca_works() -> TestResult {
    let certs = TestCerts::generate()?;
    let server = ServerOptions::new().tls(&certs)?.start()?;
    let tls_port = server.tls_port().unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let config = RedisConfig::builder()
            .url(format!("rediss://{host}:{tls_port}/"))
            .tls_ca_file(&certs.ca_cert)
            .build()?;
        let store = RedisStore::connect(config).await?;
        store
            .set("k", b"v".to_vec(), Duration::from_secs(60))
            .await?;
        assert_eq!(store.get("k").await?, Some(b"v".to_vec()));
    }
    Ok(())
}

#[tokio::test]
async fn rediss_refuses_an_untrusted_certificate() -> TestResult {
    let certs = TestCerts::generate()?;
    let server = ServerOptions::new().tls(&certs)?.start()?;
    let config = RedisConfig::builder()
        .url(format!(
            "rediss://localhost:{}/",
            server.tls_port().unwrap()
        ))
        .build()?;
    let err = RedisStore::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.message().contains("certificate"), "{err}");
    Ok(())
}

#[tokio::test]
async fn rediss_to_a_plaintext_port_never_falls_back() -> TestResult {
    let certs = TestCerts::generate()?;
    let server = ServerOptions::new().tls(&certs)?.start()?;
    let config = RedisConfig::builder()
        .url(format!("rediss://localhost:{}/", server.port()))
        .tls_ca_file(&certs.ca_cert)
        .connect_timeout(Duration::from_millis(500))
        .build()?;
    let err = RedisStore::connect(config).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreadable_ca_file_is_a_config_error() -> TestResult {
    let config = RedisConfig::builder()
        .url("rediss://localhost:1/")
        .tls_ca_file("/nonexistent/ca.pem")
        .build()?;
    let err = RedisStore::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.message().contains("/nonexistent/ca.pem"), "{err}");
    Ok(())
}
