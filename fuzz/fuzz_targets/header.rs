//! `cache_core::Header::decode` on arbitrary bytes: never a panic; whatever decodes
//! encodes back to exactly the input (the format has no slack).
#![no_main]

use cache_core::support::HEADER_LEN;
use cache_core::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, payload)) = Header::decode(data) {
        assert_eq!(payload.len() + HEADER_LEN, data.len());
        assert_eq!(header.encode(payload), data);
    }
});
