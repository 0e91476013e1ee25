//! CBOR via ciborium.

use cache_core::{Codec, CodecId, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::MAX_DEPTH;

/// CBOR (ciborium), header id [`CodecId::Cbor`].
///
/// Structs are encoded as maps keyed by field name. Before deserializing, the input is
/// checked by a bounded, non-recursive scan: it must be exactly one well-formed CBOR item,
/// every length header must fit in the bytes that remain, and nesting may not exceed
/// [`MAX_DEPTH`](crate::MAX_DEPTH); ciborium's own recursion limit is set to match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Cbor;

impl Codec for Cbor {
    const ID: CodecId = CodecId::Cbor;

    fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).map_err(|e| {
            Error::new(ErrorKind::Encode, format!("cbor encode failed: {e}")).with_source(e)
        })?;
        Ok(out)
    }

    fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V> {
        crate::scan::cbor(bytes)
            .map_err(|e| Error::new(ErrorKind::Decode, format!("cbor decode failed: {e}")))?;
        ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH + 1).map_err(|e| {
            Error::new(ErrorKind::Decode, format!("cbor decode failed: {e}")).with_source(e)
        })
    }

    fn decode_id<V: DeserializeOwned>(id: u8, bytes: &[u8]) -> Result<V> {
        crate::decode_any(id, bytes)
    }
}
