//! A whole L2 value as the engine reads it: header, optional lz4 decompression (bounded by a
//! 16 MiB maximum), then the codec the header names (`cache_codec::decode_any`), into a
//! `serde_json::Value` and into a small struct. Never a panic; errors of kind `Decode`.
#![no_main]

use cache_core::Header;
use cache_core::ErrorKind;
use libfuzzer_sys::fuzz_target;
use tiercache_fuzz::Small;

const MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Ok((header, payload)) = Header::decode(data) else {
        return;
    };
    if header.is_negative() {
        return;
    }
    let plain;
    let payload = if header.is_compressed() {
        match cache_core::support::decompress(payload, MAX_VALUE_SIZE) {
            Ok(bytes) => {
                assert!(bytes.len() <= MAX_VALUE_SIZE);
                plain = bytes;
                &plain[..]
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
                return;
            }
        }
    } else {
        payload
    };
    if let Err(e) = cache_codec::decode_any::<serde_json::Value>(header.codec, payload) {
        assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    }
    if let Err(e) = cache_codec::decode_any::<Small>(header.codec, payload) {
        assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
    }
});
