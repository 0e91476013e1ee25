//! A compressed value's size prefix cannot make the decoder allocate more than the value
//! could expand to: a 5-byte value claiming 16 MiB allocates nothing of that size.
#![allow(clippy::unwrap_used, clippy::panic, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Records the largest single allocation.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
        // SAFETY: same layout, same contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

#[test]
fn a_small_value_claiming_a_large_size_allocates_nothing_large() {
    let mut bomb = ((16u32 << 20) - 1).to_le_bytes().to_vec();
    bomb.push(0);
    LARGEST.store(0, Ordering::SeqCst);
    let r = cache_core::support::decompress(&bomb, 16 << 20);
    let largest = LARGEST.load(Ordering::SeqCst);
    assert!(r.is_err());
    assert!(
        largest < 1 << 20,
        "decoding 5 bytes allocated {largest} bytes at once"
    );
}
