//! The codec contract: how typed values become L2 bytes and back.
//!
//! Codecs are generic (serde is not object-safe), so a typed cache is `Cache<V, C>`.
//! Implementations live in `cache-codec`.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Result;

/// Stable one-byte identifiers written into the L2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodecId {
    /// JSON (serde_json).
    Json,
    /// MessagePack (rmp-serde), structs as maps.
    MsgPack,
    /// CBOR (ciborium).
    Cbor,
}

impl CodecId {
    /// The byte stored in the header.
    pub const fn as_u8(self) -> u8 {
        match self {
            CodecId::Json => 1,
            CodecId::MsgPack => 2,
            CodecId::Cbor => 3,
        }
    }

    /// The codec for a header byte, if known.
    pub const fn from_u8(b: u8) -> Option<CodecId> {
        match b {
            1 => Some(CodecId::Json),
            2 => Some(CodecId::MsgPack),
            3 => Some(CodecId::Cbor),
            _ => None,
        }
    }

    /// A short lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            CodecId::Json => "json",
            CodecId::MsgPack => "msgpack",
            CodecId::Cbor => "cbor",
        }
    }
}

/// Turns values into bytes and back.
///
/// `decode_id` lets a cache read values that another cache wrote with a different codec
/// (the header names it): implementations dispatch over every codec compiled in.
pub trait Codec: Send + Sync + 'static {
    /// The id written into the header of values this codec encodes.
    const ID: CodecId;

    /// Encode `value`. Errors are of kind [`crate::ErrorKind::Encode`].
    fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>>;

    /// Decode bytes written by this codec. Errors are of kind [`crate::ErrorKind::Decode`];
    /// hostile input must give an error, never a panic or an unbounded allocation.
    fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V>;

    /// Decode bytes written by the codec `id` (which may be another codec).
    fn decode_id<V: DeserializeOwned>(id: u8, bytes: &[u8]) -> Result<V> {
        if id == Self::ID.as_u8() {
            Self::decode(bytes)
        } else {
            Err(crate::Error::new(
                crate::ErrorKind::Decode,
                format!("value written with codec id {id}, which this build cannot read"),
            ))
        }
    }
}
