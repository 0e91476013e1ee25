//! JSON via serde_json.

use cache_core::{Codec, CodecId, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// JSON (serde_json), header id [`CodecId::JSON`].
///
/// Output is plain JSON text (structs are objects), readable by any JSON client. Finite
/// floats round-trip bit-exactly; non-finite floats (NaN, ±∞) are written as `null`, as
/// serde_json does, and so do not read back as floats. Nesting deeper than
/// [`MAX_DEPTH`](crate::MAX_DEPTH) is rejected by serde_json's recursion limit; trailing
/// non-whitespace after the value is rejected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Json;

impl Codec for Json {
    const ID: CodecId = CodecId::JSON;

    fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| {
            Error::new(ErrorKind::Encode, format!("json encode failed: {e}")).with_source(e)
        })
    }

    fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::new(ErrorKind::Decode, format!("json decode failed: {e}")).with_source(e)
        })
    }

    fn decode_id<V: DeserializeOwned>(id: u8, bytes: &[u8]) -> Result<V> {
        crate::decode_any(id, bytes)
    }
}
