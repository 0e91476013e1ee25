//! Hostile input must not make decoding allocate more than a small, fixed amount.
//!
//! A counting global allocator records, per thread, the bytes allocated (the sum of every
//! allocation and every growth by `realloc`, so a buffer grown step by step counts in full)
//! and the largest single allocation. Counting per thread keeps the test harness and tests
//! running in parallel out of the figures: decoding runs on the calling thread.

// A `GlobalAlloc` impl needs `unsafe`; it only forwards to the system allocator.
#![allow(unsafe_code)]
#![cfg(any(feature = "json", feature = "msgpack", feature = "cbor"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use cache_core::{Codec, ErrorKind};

struct Counting;

thread_local! {
    // `const` initialised, no destructor: safe to touch from inside the allocator.
    static TOTAL: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(grown_by: usize, size: usize) {
    // `try_with`: the thread-locals may be gone while a thread shuts down.
    let _ = TOTAL.try_with(|t| t.set(t.get().saturating_add(grown_by)));
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size.saturating_sub(layout.size()), new_size);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What `f` allocated on this thread: (total bytes, largest single allocation).
fn measure(f: impl FnOnce()) -> (usize, usize) {
    TOTAL.with(|t| t.set(0));
    LARGEST.with(|l| l.set(0));
    f();
    (TOTAL.with(Cell::get), LARGEST.with(Cell::get))
}

/// Decode `bytes` into several target types, each of which must fail with a `Decode` error;
/// returns, per target, (total bytes, largest allocation) of that one decode.
fn decode_all<C: Codec>(bytes: &[u8]) -> Vec<(&'static str, usize, usize)> {
    fn one<C: Codec, V: serde::de::DeserializeOwned>(
        name: &'static str,
        bytes: &[u8],
    ) -> (&'static str, usize, usize) {
        let mut kind = None;
        let (total, largest) = measure(|| {
            kind = Some(C::decode::<V>(bytes).map(drop).map_err(|e| e.kind()));
        });
        assert_eq!(
            kind,
            Some(Err(ErrorKind::Decode)),
            "{} into {name}: expected a Decode error",
            C::ID.name()
        );
        (name, total, largest)
    }
    vec![
        one::<C, Vec<u8>>("Vec<u8>", bytes),
        one::<C, Vec<u64>>("Vec<u64>", bytes),
        one::<C, String>("String", bytes),
        one::<C, Vec<Vec<u64>>>("Vec<Vec<u64>>", bytes),
        one::<C, std::collections::HashMap<String, u64>>("HashMap<String, u64>", bytes),
        one::<C, serde_json::Value>("serde_json::Value", bytes),
    ]
}

/// The length headers this test throws at the binary codecs, each followed by 5 bytes.
#[cfg(any(feature = "msgpack", feature = "cbor"))]
const TAIL: [u8; 5] = [1, 2, 3, 4, 5];

#[cfg(any(feature = "msgpack", feature = "cbor"))]
#[test]
fn length_bombs_make_no_large_allocation() {
    // Generous: error messages allocate a little; a pre-allocation driven by a claimed
    // length would be megabytes (serde caps size hints at 1 MiB) or gigabytes.
    const LIMIT: usize = 64 * 1024;

    #[cfg(feature = "msgpack")]
    for head in [
        &[0xc6u8, 0xff, 0xff, 0xff, 0xff][..], // bin32
        &[0xdb, 0xff, 0xff, 0xff, 0xff],       // str32
        &[0xdd, 0xff, 0xff, 0xff, 0xff],       // array32
        &[0xdf, 0xff, 0xff, 0xff, 0xff],       // map32
        &[0x91, 0xdd, 0xff, 0xff, 0xff, 0xff], // [array32]
    ] {
        let bytes = [head, &TAIL[..]].concat();
        for (target, _, largest) in decode_all::<cache_codec::MsgPack>(&bytes) {
            assert!(
                largest < LIMIT,
                "msgpack {head:x?} into {target}: {largest} bytes"
            );
        }
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
        let bytes = [head, &TAIL[..]].concat();
        for (target, _, largest) in decode_all::<cache_codec::Cbor>(&bytes) {
            assert!(
                largest < LIMIT,
                "cbor {head:x?} into {target}: {largest} bytes"
            );
        }
    }
}

/// The criterion: a nesting bomb (128 KiB of nested arrays) and a length bomb (a
/// MessagePack bin32 claiming 4 GiB with 5 bytes present) give a typed `Decode` error,
/// having allocated at most 1 MiB in total, for every codec and target type.
#[test]
fn bombs_allocate_at_most_one_mib_in_total() {
    const LIMIT: usize = 1024 * 1024;
    const BOMB: usize = 128 * 1024;
    let check = |what: &str, results: Vec<(&'static str, usize, usize)>| {
        for (target, total, largest) in results {
            assert!(
                total <= LIMIT,
                "{what} into {target}: {total} bytes allocated in total (largest {largest})"
            );
        }
    };

    #[cfg(feature = "json")]
    {
        // Balanced: 64 Ki `[` then 64 Ki `]`.
        let balanced: Vec<u8> = std::iter::repeat_n(b'[', BOMB / 2)
            .chain(std::iter::repeat_n(b']', BOMB / 2))
            .collect();
        check(
            "json nesting bomb",
            decode_all::<cache_codec::Json>(&balanced),
        );
        let open = vec![b'['; BOMB];
        check(
            "json open nesting bomb",
            decode_all::<cache_codec::Json>(&open),
        );
    }

    #[cfg(feature = "msgpack")]
    {
        // fixarray(1) wrapping fixarray(1) ... around nil.
        let nested: Vec<u8> = std::iter::repeat_n(0x91, BOMB - 1).chain([0xc0]).collect();
        check(
            "msgpack nesting bomb",
            decode_all::<cache_codec::MsgPack>(&nested),
        );
        let maps: Vec<u8> = std::iter::repeat_n([0x81, 0xa1, b'k'], BOMB / 3)
            .flatten()
            .chain([0xc0])
            .collect();
        check(
            "msgpack nested maps",
            decode_all::<cache_codec::MsgPack>(&maps),
        );
        let bin32 = [&[0xc6u8, 0xff, 0xff, 0xff, 0xff][..], &TAIL[..]].concat();
        check(
            "msgpack bin32 claiming 4 GiB",
            decode_all::<cache_codec::MsgPack>(&bin32),
        );
    }

    #[cfg(feature = "cbor")]
    {
        for opener in [0x81u8, 0x9f, 0xa1] {
            let nested: Vec<u8> = std::iter::repeat_n(opener, BOMB - 1)
                .chain([0xf6])
                .collect();
            check(
                &format!("cbor nesting bomb {opener:#04x}"),
                decode_all::<cache_codec::Cbor>(&nested),
            );
        }
        let bytes32 = [&[0x5au8, 0xff, 0xff, 0xff, 0xff][..], &TAIL[..]].concat();
        check(
            "cbor byte string claiming 4 GiB",
            decode_all::<cache_codec::Cbor>(&bytes32),
        );
    }
}

/// The counter itself: growth by `realloc` counts, and so does a plain allocation.
#[test]
fn the_counter_counts_every_byte() {
    let (total, largest) = measure(|| {
        let mut v: Vec<u8> = Vec::new();
        for i in 0..(2 * 1024 * 1024) {
            v.push(i as u8);
        }
        std::hint::black_box(&v);
    });
    assert!(total >= 2 * 1024 * 1024, "{total}");
    assert!(largest >= 2 * 1024 * 1024, "{largest}");
    let (total, _) = measure(|| {
        std::hint::black_box(vec![0u8; 1024]);
    });
    assert!(total >= 1024, "{total}");
}
