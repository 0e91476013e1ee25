//! Loader context and per-call options: a conditional refresh ("unchanged" keeps the value and
//! renews its TTL, no new value written), answers that are not cached or carry their own TTL,
//! a read that skips L1, a write that returns before Redis answers, and `expire`.
//!
//! Run with a Redis URL (`cargo xtask redis` starts a throwaway one):
//! `REDIS_URL=redis://127.0.0.1:6379/ cargo run -p cache-tiered --example loader_context`.
//! Without `REDIS_URL` it runs on the in-process L2.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_tiered::core::Header;
use cache_tiered::{Cache, CallOptions, LoadContext, Loaded, MsgPack};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Page {
    path: String,
    etag: u64,
    body: String,
}

/// What the loader returns: the answer, later.
type PageLoad = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Loaded<Page>, std::io::Error>> + Send>,
>;

/// Stands in for an HTTP origin with ETags: `version` is the current ETag of every page.
#[derive(Clone, Default)]
struct Origin {
    version: Arc<AtomicU64>,
    full_fetches: Arc<AtomicU64>,
    not_modified: Arc<AtomicU64>,
}

impl Origin {
    /// A conditional GET: `None` for "304 Not Modified".
    async fn fetch(&self, path: &str, if_none_match: Option<u64>) -> Option<Page> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let etag = self.version.load(Ordering::SeqCst);
        if if_none_match == Some(etag) {
            self.not_modified.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        self.full_fetches.fetch_add(1, Ordering::SeqCst);
        Some(Page {
            path: path.to_owned(),
            etag,
            body: format!("<h1>{path} v{etag}</h1>"),
        })
    }

    /// The loader: revalidate what the cache holds, else fetch.
    fn loader(&self) -> impl FnOnce(LoadContext<Page>) -> PageLoad + Send + 'static {
        let origin = self.clone();
        move |ctx: LoadContext<Page>| {
            Box::pin(async move {
                let held = ctx.previous().map(|p| p.etag);
                match origin.fetch(ctx.key(), held).await {
                    None => Ok(Loaded::unchanged()),
                    Some(page) => Ok(Loaded::value(page)),
                }
            })
        }
    }
}

/// The logical expiry recorded in L2 for `key` (ms since the epoch).
async fn l2_expiry(
    cache: &Cache<Page, MsgPack>,
    key: &str,
) -> Result<u64, Box<dyn std::error::Error>> {
    let l2 = cache.engine().remote().ok_or("no L2")?;
    let bytes = l2.get(&cache.full_key(key)?).await?.ok_or("not in L2")?;
    let (header, _) = Header::decode(&bytes)?;
    Ok(header.expires_at_ms)
}

async fn settle(cache: &Cache<Page, MsgPack>) {
    while cache.in_flight() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let builder = cache_tiered::builder("loader-context").with_l1_capacity_bytes(16 * 1024 * 1024);
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => builder.with_redis_url(url),
        Err(_) => builder.with_memory_l2(),
    };
    let engine = builder.build().await?;
    let pages: Cache<Page, MsgPack> = engine
        .cache("pages")
        .with_jitter(0.0)
        .with_l1_ttl(Duration::from_secs(30))
        .with_l2_ttl(Duration::from_secs(60))
        .with_fail_safe(Duration::from_secs(600), Duration::from_secs(1))
        .build()?;
    pages.invalidate("/home").await?;
    let origin = Origin::default();
    let options = CallOptions::new();

    // First read: a full fetch.
    let page = pages
        .get_or_load_with("/home", &options, origin.loader())
        .await?
        .ok_or("no page")?;
    assert_eq!(page.etag, 0);
    let first_expiry = l2_expiry(&pages, "/home").await?;

    // A conditional refresh while the origin has not changed: "304", the value is kept and
    // its TTL renewed, the page is not fetched again.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(pages.refresh_with("/home", origin.loader())?);
    settle(&pages).await;
    let renewed_expiry = l2_expiry(&pages, "/home").await?;
    assert!(renewed_expiry > first_expiry);
    assert_eq!(origin.full_fetches.load(Ordering::SeqCst), 1);
    assert_eq!(origin.not_modified.load(Ordering::SeqCst), 1);
    eprintln!(
        "loader_context: conditional refresh -> 304, no new value written, L2 expiry renewed by {} ms",
        renewed_expiry - first_expiry
    );

    // The origin changes: the next refresh fetches the new page.
    origin.version.fetch_add(1, Ordering::SeqCst);
    assert!(pages.refresh_with("/home", origin.loader())?);
    settle(&pages).await;
    assert_eq!(pages.get("/home").await?.map(|p| p.etag), Some(1));

    // An answer that must not be cached, and one with its own TTL.
    let secret = pages
        .get_or_load_with("/token", &options, |ctx: LoadContext<Page>| async move {
            let page = Page {
                path: ctx.key().to_owned(),
                etag: 0,
                body: "one-time".into(),
            };
            Ok::<_, std::io::Error>(Loaded::value(page).no_cache())
        })
        .await?;
    assert!(secret.is_some());
    assert_eq!(pages.get("/token").await?, None);
    pages
        .get_or_load_with("/news", &options, |ctx: LoadContext<Page>| async move {
            let page = Page {
                path: ctx.key().to_owned(),
                etag: 0,
                body: "breaking".into(),
            };
            Ok::<_, std::io::Error>(
                Loaded::value(page).with_ttls(None, Some(Duration::from_secs(5))),
            )
        })
        .await?;

    // Per-call options: read L2 past this instance's L1; write without waiting for Redis.
    let from_l2 = pages
        .get_with("/home", &CallOptions::new().skip_l1_read())
        .await?;
    assert_eq!(from_l2.map(|p| p.etag), Some(1));
    let mut page = pages.get("/home").await?.ok_or("no page")?.as_ref().clone();
    page.body.push_str(" (edited)");
    let start = Instant::now();
    pages
        .set_with(
            "/home",
            page.clone(),
            &CallOptions::new().background_l2_write(),
        )
        .await?;
    let returned_after = start.elapsed();
    assert_eq!(pages.get_local("/home").flatten().as_deref(), Some(&page));
    while engine.background_writes() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    eprintln!("loader_context: a background set returned after {returned_after:?}; L2 has it now");

    // Contradictory options are refused at the call.
    let refused = pages
        .set_with("/home", page, &CallOptions::new().skip_l1().skip_l2())
        .await;
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(cache_tiered::ErrorKind::InvalidConfig)
    );

    // `expire`: not fresh any more, but kept as the fallback when the origin is down.
    pages.expire("/home").await?;
    let fallback = pages
        .get_or_load("/home", |_| async {
            Err::<Page, _>(std::io::Error::other("origin down"))
        })
        .await?;
    assert_eq!(fallback.etag, 1);
    eprintln!(
        "loader_context: after expire, a failing origin -> the kept page is served (fail-safe)"
    );

    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
