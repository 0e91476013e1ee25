//! Tracing spans carry the cache name and a hash of the key, never the raw key unless the
//! cache opts in (keys can hold personal data).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use cache_tiered::{Cache, MemoryStore, MsgPack};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run(raw_keys: bool) -> String {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = cache_tiered::builder("spans")
            .with_remote(Arc::new(MemoryStore::new()))
            .build()
            .await
            .unwrap();
        let c: Cache<String, MsgPack> = engine
            .cache("people")
            .with_raw_keys_in_traces(raw_keys)
            .build()
            .unwrap();
        c.get_or_load("alice@example.com", |_| async {
            tracing::info!("loading from the database");
            Ok::<_, std::io::Error>("Alice".to_string())
        })
        .await
        .unwrap();
    });
    let out = buffer.0.lock().unwrap().clone();
    String::from_utf8(out).unwrap()
}

#[test]
fn spans_hash_keys_unless_told_otherwise() {
    let hashed = run(false);
    assert!(hashed.contains("cache.load"), "{hashed}");
    assert!(hashed.contains("cache=people"), "{hashed}");
    assert!(hashed.contains("key_hash="), "{hashed}");
    assert!(
        !hashed.contains("alice@example.com"),
        "raw key leaked: {hashed}"
    );
    let raw = run(true);
    assert!(raw.contains("alice@example.com"), "{raw}");
}
