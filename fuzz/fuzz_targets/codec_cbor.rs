//! `cache_codec::Cbor` decoding arbitrary bytes into `serde_json::Value` and into a small
//! struct (see `tiercache_fuzz::check_codec`): never a panic, errors of kind `Decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tiercache_fuzz::check_codec::<cache_codec::Cbor>(data);
});
