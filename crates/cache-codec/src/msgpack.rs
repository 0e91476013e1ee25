//! MessagePack via rmp-serde.

use cache_core::{Codec, CodecId, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bounded::{Bounded, Budget};
use crate::MAX_DEPTH;

/// MessagePack (rmp-serde), header id [`CodecId::MSGPACK`].
///
/// Structs are encoded as maps keyed by field name (`rmp_serde::to_vec_named`), so clients
/// in other languages can read them. Decoding is one pass of rmp-serde over the input with
/// the bounds enforced as it goes: nesting (enums included) may not exceed
/// [`MAX_DEPTH`], no size hint serde sees promises more elements than the
/// input has bytes, no length is read beyond the input, and the input must be exactly one value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MsgPack;

impl Codec for MsgPack {
    const ID: CodecId = CodecId::MSGPACK;

    fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(value).map_err(|e| {
            Error::new(ErrorKind::Encode, format!("msgpack encode failed: {e}")).with_source(e)
        })
    }

    fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V> {
        let budget = Budget::new(bytes.len());
        // Reading from a slice, rmp-serde never reads a length beyond the input (it slices,
        // it does not allocate). `Bounded` adds what it lacks: enum nesting counted against
        // the depth limit, and size hints capped by the input length. rmp-serde's own limit
        // (arrays and maps only) stays as a second line of defence.
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        de.set_max_depth(MAX_DEPTH + 1);
        match V::deserialize(Bounded::new(&mut de, &budget)) {
            Ok(value) if at_end(&mut de) => Ok(value),
            Ok(_) => Err(decode_error(bytes, None)),
            Err(e) => Err(decode_error(bytes, Some(e))),
        }
    }

    fn decode_id<V: DeserializeOwned>(id: u8, bytes: &[u8]) -> Result<V> {
        crate::decode_any(id, bytes)
    }
}

/// Whether the deserializer has consumed the whole input: reading one more marker fails
/// with an end-of-input error. (A value rmp-serde returns successfully has been read to its
/// end, so anything left is trailing bytes.)
fn at_end<'de, R: rmp_serde::decode::ReadSlice<'de>>(de: &mut rmp_serde::Deserializer<R>) -> bool {
    matches!(
        bool::deserialize(de),
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof
    )
}

/// The error for input that failed to decode (`serde` is rmp-serde's error, `None` for
/// trailing bytes). The structural scan runs only here, to name the problem precisely (a
/// length header claiming more than the input holds, nesting too deep, trailing bytes); when
/// the structure is sound, the error is serde's (a type mismatch, invalid UTF-8, ...).
#[cold]
#[inline(never)]
fn decode_error(bytes: &[u8], serde: Option<rmp_serde::decode::Error>) -> Error {
    let detail = match (crate::scan::msgpack(bytes), &serde) {
        (Err(scan), _) => scan,
        (Ok(()), Some(e)) => e.to_string(),
        (Ok(()), None) => "trailing bytes after the value".to_owned(),
    };
    let error = Error::new(
        ErrorKind::Decode,
        format!("msgpack decode failed: {detail}"),
    );
    match serde {
        Some(e) => error.with_source(e),
        None => error,
    }
}
