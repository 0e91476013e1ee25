//! Raw mode: values stored as bare JSON, no tiercache header, so that services in other
//! languages read and write the same keys. Here the other client is `redis-cli`.
//!
//! `REDIS_URL=redis://127.0.0.1:6379/ cargo run -p cache-tiered --example raw_interop` (needs
//! `redis-cli` on the PATH; `cargo xtask redis` starts a throwaway server). Without
//! `REDIS_URL` the example says so and exits.
//!
//! Raw mode trades the header's features away: no codec migration, no early-refresh timing
//! shared across instances, negative entries kept in L1 only. With `.tracking(true)` writes
//! by the other clients also drop this process's L1 copies (Redis client-side caching).

use std::process::Command;
use std::time::{Duration, Instant};

use cache_tiered::{Cache, Json};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Profile {
    name: String,
    plan: String,
}

/// `redis-cli -u URL args...`: the other client. Its output without the trailing newline.
fn redis_cli(url: &str, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?.trim_end().to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("raw_interop: needs Redis and redis-cli: set REDIS_URL; nothing to do");
        return Ok(());
    };
    if Command::new("redis-cli").arg("--version").output().is_err() {
        eprintln!("raw_interop: needs redis-cli on the PATH (apt-get install redis-tools)");
        return Ok(());
    }

    let engine = cache_tiered::builder("example-raw")
        .with_redis_url(url.clone())
        // Writes by any client under the prefix drop our L1 copies (RESP3 client tracking).
        .with_tracking(true)
        .build()
        .await?;
    let profiles: Cache<Profile, Json> = engine
        .cache("profiles")
        .with_raw(true) // L2 holds the bare JSON
        .with_l1_ttl(Duration::from_secs(30))
        .with_l2_ttl(Duration::from_secs(300))
        .build()?;
    profiles.clear_namespace().await?;

    // 1. Rust writes, redis-cli reads plain JSON at the key `{prefix}:{namespace}:{key}`.
    let alice = Profile {
        name: "Alice".into(),
        plan: "pro".into(),
    };
    profiles.set("alice", alice.clone()).await?;
    let key = profiles.full_key("alice")?;
    let seen_by_cli = redis_cli(&url, &["GET", &key])?;
    let parsed: Profile = serde_json::from_str(&seen_by_cli)?;
    assert_eq!(parsed, alice, "redis-cli reads what the cache wrote");

    // 2. redis-cli writes JSON, the cache reads it as a typed value.
    let bob_key = profiles.full_key("bob")?;
    redis_cli(
        &url,
        &[
            "SET",
            &bob_key,
            r#"{"name":"Bob","plan":"free"}"#,
            "EX",
            "300",
        ],
    )?;
    let bob = profiles.get("bob").await?;
    assert_eq!(bob.as_deref().map(|p| p.plan.as_str()), Some("free"));

    // 3. redis-cli overwrites a key this process holds in L1: tracking drops the copy.
    //    (Tracking also reports our own write of step 1: let that arrive, then read the key
    //    back into L1.)
    tokio::time::sleep(Duration::from_millis(50)).await;
    profiles.get("alice").await?;
    assert!(profiles.get_local("alice").is_some(), "alice is in L1");
    redis_cli(
        &url,
        &[
            "SET",
            &key,
            r#"{"name":"Alice","plan":"enterprise"}"#,
            "EX",
            "300",
        ],
    )?;
    let written = Instant::now();
    loop {
        let now = profiles.get("alice").await?;
        if now.as_deref().map(|p| p.plan.as_str()) == Some("enterprise") {
            break;
        }
        if written.elapsed() > Duration::from_secs(5) {
            return Err("the L1 copy survived redis-cli's write for 5 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    eprintln!(
        "raw_interop: redis-cli read {seen_by_cli}; the cache read Bob's JSON written by \
         redis-cli; redis-cli's overwrite reached L1 after {:.1?}",
        written.elapsed()
    );
    Ok(())
}
