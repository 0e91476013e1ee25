//! Hostile length headers must not make decoding allocate more than a small multiple of the
//! input. A counting global allocator records the largest single allocation; this binary has
//! one test so nothing else allocates concurrently in a way that matters (the harness's own
//! allocations are small).

// A `GlobalAlloc` impl needs `unsafe`; it only forwards to the system allocator.
#![allow(unsafe_code)]
// Only the binary codecs have length headers.
#![cfg(any(feature = "msgpack", feature = "cbor"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use cache_core::{Codec, ErrorKind};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The largest single allocation made while decoding `bytes` into a few targets.
fn largest_alloc_decoding<C: Codec>(bytes: &[u8]) -> usize {
    LARGEST.store(0, Ordering::Relaxed);
    let results = [
        C::decode::<Vec<u8>>(bytes).map(drop),
        C::decode::<Vec<u64>>(bytes).map(drop),
        C::decode::<String>(bytes).map(drop),
        C::decode::<Vec<Vec<u64>>>(bytes).map(drop),
        C::decode::<std::collections::HashMap<String, u64>>(bytes).map(drop),
        C::decode::<serde_json::Value>(bytes).map(drop),
    ];
    let largest = LARGEST.load(Ordering::Relaxed);
    for r in results {
        assert!(
            matches!(&r, Err(e) if e.kind() == ErrorKind::Decode),
            "{}: {r:?}",
            C::ID.name()
        );
    }
    largest
}

#[test]
fn length_bombs_allocate_little() {
    // Generous: error messages and the test harness allocate a little; a pre-allocation
    // driven by a claimed length would be megabytes (serde caps size hints at 1 MiB) or
    // gigabytes.
    const LIMIT: usize = 64 * 1024;
    let tail = [1u8, 2, 3, 4, 5];

    #[cfg(feature = "msgpack")]
    for head in [
        &[0xc6u8, 0xff, 0xff, 0xff, 0xff][..], // bin32
        &[0xdb, 0xff, 0xff, 0xff, 0xff],       // str32
        &[0xdd, 0xff, 0xff, 0xff, 0xff],       // array32
        &[0xdf, 0xff, 0xff, 0xff, 0xff],       // map32
        &[0x91, 0xdd, 0xff, 0xff, 0xff, 0xff], // [array32]
    ] {
        let bytes = [head, &tail[..]].concat();
        let largest = largest_alloc_decoding::<cache_codec::MsgPack>(&bytes);
        assert!(largest < LIMIT, "msgpack {head:x?}: {largest} bytes");
    }

    #[cfg(feature = "cbor")]
    for head in [
        &[0x5au8, 0xff, 0xff, 0xff, 0xff][..], // bytes
        &[0x7a, 0xff, 0xff, 0xff, 0xff],       // text
        &[0x9a, 0xff, 0xff, 0xff, 0xff],       // array
        &[0xba, 0xff, 0xff, 0xff, 0xff],       // map
        &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // array, 2^64 - 1
        &[0x81, 0x9a, 0xff, 0xff, 0xff, 0xff], // [array]
    ] {
        let bytes = [head, &tail[..]].concat();
        let largest = largest_alloc_decoding::<cache_codec::Cbor>(&bytes);
        assert!(largest < LIMIT, "cbor {head:x?}: {largest} bytes");
    }
}
