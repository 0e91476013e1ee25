//! `cache_core::Message::decode` (what arrives on an invalidation channel, from anyone
//! allowed to publish there): never a panic, errors of kind `Decode`, and whatever decodes
//! encodes back to exactly the input.
#![no_main]

use cache_core::Message;
use cache_core::ErrorKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Message::decode(data) {
        Ok(message) => assert_eq!(message.encode(), data),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Decode, "{e}"),
    }
});
