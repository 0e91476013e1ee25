//! The HTTP scrape endpoint: install it on a free port, run a little traffic, `GET /metrics`
//! with a plain `TcpStream`, and read the counts back.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use cache_metrics::MetricsObserver;
use cache_tiered::MsgPack;
use common::{ops, parse};

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics` over HTTP/1.1; returns (status line, body).
fn scrape(addr: SocketAddr) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap_or_default().to_owned();
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_the_http_endpoint() {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let handle = cache_metrics::install_prometheus(addr).unwrap();
    // A second install fails: one global recorder per process.
    let other = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    assert!(cache_metrics::install_prometheus(other).is_err());

    let engine = cache_tiered::builder("web")
        .with_memory_l2()
        .with_observer(Arc::new(MetricsObserver::new()))
        .build()
        .await
        .unwrap();
    let pages = engine.cache::<String, MsgPack>("pages").build().unwrap();
    pages
        .get_or_load("home", |_| async {
            Ok::<_, io::Error>("<html/>".to_owned())
        })
        .await
        .unwrap();
    for _ in 0..4 {
        pages.get("home").await.unwrap();
    }

    // The endpoint runs on its own thread: a blocking client is fine here.
    let (status, body) = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let s = parse(&body);
    assert_eq!(ops(&s, "pages", "get", "l1", "hit"), 4.0);
    assert_eq!(ops(&s, "pages", "get", "l1", "miss"), 1.0);
    assert_eq!(ops(&s, "pages", "get", "l2", "miss"), 1.0);
    assert_eq!(ops(&s, "pages", "load", "loader", "hit"), 1.0);
    assert!(body.contains("cache_operation_seconds_bucket{cache=\"pages\",operation=\"get\",tier=\"l2\",le=\"0.0005\"}"), "{body}");
    // The handle renders the same series.
    assert_eq!(parse(&handle.render()).len(), s.len());
}
