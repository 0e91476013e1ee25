//! MessagePack via rmp-serde.

use cache_core::{Codec, CodecId, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::MAX_DEPTH;

/// MessagePack (rmp-serde), header id [`CodecId::MsgPack`].
///
/// Structs are encoded as maps keyed by field name (`rmp_serde::to_vec_named`), so clients
/// in other languages can read them. Before deserializing, the input is checked by a bounded,
/// non-recursive scan: every length header must fit in the bytes that remain, nesting may not
/// exceed [`MAX_DEPTH`](crate::MAX_DEPTH), and the input must be exactly one value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MsgPack;

impl Codec for MsgPack {
    const ID: CodecId = CodecId::MsgPack;

    fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(value).map_err(|e| {
            Error::new(ErrorKind::Encode, format!("msgpack encode failed: {e}")).with_source(e)
        })
    }

    fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V> {
        // rmp-serde does not count enum nesting ({variant: value} maps) against its depth
        // limit, and hands declared element counts to serde as size hints; the scan bounds
        // both before any deserialization happens.
        crate::scan::msgpack(bytes)
            .map_err(|e| Error::new(ErrorKind::Decode, format!("msgpack decode failed: {e}")))?;
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        // The scan already enforces MAX_DEPTH; this is a second line of defence.
        de.set_max_depth(MAX_DEPTH + 1);
        V::deserialize(&mut de).map_err(|e| {
            Error::new(ErrorKind::Decode, format!("msgpack decode failed: {e}")).with_source(e)
        })
    }

    fn decode_id<V: DeserializeOwned>(id: u8, bytes: &[u8]) -> Result<V> {
        crate::decode_any(id, bytes)
    }
}
