//! Instruction-count profile of the L1 hit path, for `valgrind --tool=callgrind`:
//! `cargo build --release -p benches --features peers --example l1_profile` then
//! `valgrind --tool=callgrind target/release/examples/l1_profile cache|raw 1000000`.
//! Counts instructions, not seconds, so it is repeatable on a busy machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).cloned().unwrap_or_else(|| "cache".into());
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let value = Arc::new(String::from("a value of a reasonable size for a profile"));
    match which.as_str() {
        "raw" => {
            let qc: quick_cache::sync::Cache<String, Arc<String>> =
                quick_cache::sync::Cache::new(1000);
            qc.insert("user:42".into(), value);
            let mut hits = 0u64;
            for _ in 0..n {
                if black_box(qc.get(black_box("user:42"))).is_some() {
                    hits += 1;
                }
            }
            println!("raw hits {hits}");
        }
        _ => {
            let cache = rt.block_on(async {
                let e = cache_tiered::builder("p")
                    .with_memory_l2()
                    .build()
                    .await
                    .unwrap();
                let c: cache_tiered::Cache<String, cache_tiered::MsgPack> = e
                    .cache("u")
                    .with_l1_ttl(Duration::from_secs(86_400))
                    .with_l2_ttl(Duration::from_secs(86_400))
                    .build()
                    .unwrap();
                c.set("user:42", (*value).clone()).await.unwrap();
                c
            });
            let mut hits = 0u64;
            for _ in 0..n {
                if black_box(cache.get_local(black_box("user:42"))).is_some() {
                    hits += 1;
                }
            }
            println!("cache hits {hits}");
        }
    }
}
