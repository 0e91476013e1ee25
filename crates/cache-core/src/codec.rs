//! The codec contract: how typed values become L2 bytes and back.
//!
//! Codecs are generic (serde is not object-safe), so a typed cache is `Cache<V, C>`.
//! Implementations live in `cache-codec`.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Result;

/// The one-byte identifier of a codec, written into the L2 header.
///
/// An open byte: the built-in codecs own [`CodecId::JSON`] (1), [`CodecId::MSGPACK`] (2) and
/// [`CodecId::CBOR`] (3), and ids below [`CodecId::FIRST_CUSTOM`] (16) are reserved for codecs
/// this project may add; a codec of your own takes an id from 16 to 255
/// ([`CodecId::custom`]). A reader that meets an id it has no codec for reads a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CodecId(u8);

impl CodecId {
    /// JSON (serde_json).
    pub const JSON: CodecId = CodecId(1);
    /// MessagePack (rmp-serde), structs as maps.
    pub const MSGPACK: CodecId = CodecId(2);
    /// CBOR (ciborium).
    pub const CBOR: CodecId = CodecId(3);
    /// The first id free for codecs outside this project.
    pub const FIRST_CUSTOM: u8 = 16;

    /// The id of a codec of your own: `None` for the reserved ids (below
    /// [`CodecId::FIRST_CUSTOM`]).
    pub const fn custom(id: u8) -> Option<CodecId> {
        if id >= Self::FIRST_CUSTOM {
            Some(CodecId(id))
        } else {
            None
        }
    }

    /// The byte stored in the header.
    pub const fn as_u8(self) -> u8 {
        self.0
    }

    /// The id of a header byte (0 is "no codec": `None`).
    pub const fn from_u8(b: u8) -> Option<CodecId> {
        if b == 0 {
            None
        } else {
            Some(CodecId(b))
        }
    }

    /// A short lowercase name: `json`, `msgpack`, `cbor`, or `custom` for the others.
    pub const fn name(self) -> &'static str {
        match self.0 {
            1 => "json",
            2 => "msgpack",
            3 => "cbor",
            4..=15 => "reserved",
            _ => "custom",
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
