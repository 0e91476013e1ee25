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
    let server = ServerOptions::new().with_tls(&certs)?.start()?;
    let tls_port = server.tls_port().unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let config = RedisConfig::builder()
            .with_url(format!("rediss://{host}:{tls_port}/"))
            .with_tls_ca_file(&certs.ca_cert)
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
    let server = ServerOptions::new().with_tls(&certs)?.start()?;
    let config = RedisConfig::builder()
        .with_url(format!(
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
    let server = ServerOptions::new().with_tls(&certs)?.start()?;
    let config = RedisConfig::builder()
        .with_url(format!("rediss://localhost:{}/", server.port()))
        .with_tls_ca_file(&certs.ca_cert)
        .with_connect_timeout(Duration::from_millis(500))
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
        .with_url("rediss://localhost:1/")
        .with_tls_ca_file("/nonexistent/ca.pem")
        .build()?;
    let err = RedisStore::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.message().contains("/nonexistent/ca.pem"), "{err}");
    Ok(())
}

#[tokio::test]
async fn rediss_refuses_a_certificate_from_another_ca() -> TestResult {
    let certs = TestCerts::generate()?;
    let other = TestCerts::generate()?;
    let server = ServerOptions::new().with_tls(&certs)?.start()?;
    let config = RedisConfig::builder()
        .with_url(format!(
            "rediss://localhost:{}/",
            server.tls_port().unwrap()
        ))
        .with_tls_ca_file(&other.ca_cert)
        .build()?;
    let err = RedisStore::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.message().contains("certificate"), "{err}");
    Ok(())
}

#[tokio::test]
async fn rediss_refuses_a_certificate_for_another_host_name() -> TestResult {
    // Signed by the trusted CA, subject CN=localhost, but valid (subjectAltName) only for
    // another name: rustls checks the SAN and never falls back to the CN.
    let certs = TestCerts::generate_with_san("DNS:elsewhere.invalid")?;
    let server = ServerOptions::new().with_tls(&certs)?.start()?;
    let tls_port = server.tls_port().unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let config = RedisConfig::builder()
            .with_url(format!("rediss://{host}:{tls_port}/"))
            .with_tls_ca_file(&certs.ca_cert)
            .build()?;
        let err = RedisStore::connect(config).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection, "{host}: {err}");
        assert!(err.message().contains("certificate"), "{host}: {err}");
    }
    Ok(())
}

/// A fake server that records every byte each client sends and answers nothing useful.
struct Recorder {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    /// Listen; every connection's first bytes are recorded, then `reply` is sent and the
    /// connection closed.
    fn start(reply: &'static [u8]) -> Recorder {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                record.lock().unwrap().push(buf[..n].to_vec());
                let _ = stream.write_all(reply);
            }
        });
        Recorder { port, seen }
    }

    fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn rediss_sends_nothing_but_a_tls_handshake() -> TestResult {
    const SECRET: &str = "S3nt1nel-pa55";
    let certs = TestCerts::generate()?;
    // A "server" that answers like a plaintext Redis would: the client must not take it.
    for reply in [&b"+OK\r\n"[..], b"-ERR not TLS\r\n", b""] {
        let recorder = Recorder::start(reply);
        for (url, password) in [
            (
                format!("rediss://localhost:{}/", recorder.port),
                Some(SECRET),
            ),
            (
                format!("rediss://app:{SECRET}@127.0.0.1:{}/", recorder.port),
                None,
            ),
        ] {
            let mut builder = RedisConfig::builder()
                .with_url(url)
                .with_tls_ca_file(&certs.ca_cert)
                .with_connect_timeout(Duration::from_millis(500));
            if let Some(p) = password {
                builder = builder.with_password(p);
            }
            let err = RedisStore::connect(builder.build()?).await.unwrap_err();
            assert!(
                matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
                "{err}"
            );
            assert!(!err.to_string().contains(SECRET), "{err}");
        }
        let seen = recorder.seen();
        assert!(!seen.is_empty(), "the client never connected");
        for first in &seen {
            // Every connection opened with a TLS handshake record (content type 22, version
            // 3.x), never with a RESP command (AUTH, HELLO, PING, CLIENT SETINFO ...).
            assert!(
                first.len() >= 3 && first[0] == 0x16 && first[1] == 0x03,
                "not a TLS ClientHello: {:?}",
                String::from_utf8_lossy(first)
            );
            let text = String::from_utf8_lossy(first);
            assert!(!text.contains(SECRET), "the password went out in the clear");
            assert!(!text.contains("AUTH") && !text.contains("PING"), "{text}");
        }
    }
    Ok(())
}
