//! Serde codecs for tiercache: [`Json`], [`MsgPack`] and [`Cbor`].
//!
//! Each codec is a unit struct implementing [`cache_core::Codec`], behind a cargo feature of
//! the same name (all three are on by default). Every codec's
//! [`decode_id`](cache_core::Codec::decode_id) reads values written by *any* codec compiled in
//! (see [`decode_any`]), so a cache configured with MessagePack still reads entries another
//! process wrote as JSON.
//!
//! Decoding is hardened against hostile bytes: it never panics and its errors are always of
//! kind [`ErrorKind::Decode`]; nesting deeper than [`MAX_DEPTH`] is rejected (no stack
//! overflow; enums count as levels, and so do CBOR tags wherever ciborium recurses into
//! them); and for the binary formats the bounds are enforced inside the one pass serde makes
//! over the bytes: a length header is never read beyond the input (a 5-byte input claiming a
//! 4 GiB string fails at once, without allocating), the size hints serde pre-allocates from
//! promise, all together, no more elements than the input has bytes, and bytes after the
//! value are an error. On failure a bounded, non-recursive scan of the input names the
//! structural problem, if there is one.
//!
//! ```
//! # #[cfg(all(feature = "json", feature = "msgpack"))]
//! # fn main() -> Result<(), cache_core::Error> {
//! use cache_codec::{Json, MsgPack};
//! use cache_core::Codec;
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct User {
//!     id: u64,
//!     name: String,
//! }
//!
//! let user = User { id: 7, name: "Ada".into() };
//! let bytes = Json::encode(&user)?;
//! assert_eq!(Json::decode::<User>(&bytes)?, user);
//!
//! // A MessagePack-configured cache can still read the JSON entry: the L2 header names the
//! // codec that wrote it.
//! let read: User = MsgPack::decode_id(Json::ID.as_u8(), &bytes)?;
//! assert_eq!(read, user);
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "json", feature = "msgpack")))]
//! # fn main() {}
//! ```

#![warn(missing_docs)]

use cache_core::{CodecId, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;

#[cfg(any(feature = "msgpack", feature = "cbor"))]
mod bounded;
#[cfg(feature = "cbor")]
mod cbor;
#[cfg(feature = "json")]
mod json;
#[cfg(feature = "msgpack")]
mod msgpack;
#[cfg(any(feature = "msgpack", feature = "cbor"))]
mod scan;

#[cfg(feature = "cbor")]
pub use cbor::Cbor;
#[cfg(feature = "json")]
pub use json::Json;
#[cfg(feature = "msgpack")]
pub use msgpack::MsgPack;

/// The deepest nesting of arrays, maps (and, for CBOR, tags) any codec accepts when decoding.
///
/// Deeper input gives an [`ErrorKind::Decode`] error instead of exhausting the stack. It
/// matches serde_json's built-in recursion limit.
pub const MAX_DEPTH: usize = 128;

/// Decode `bytes` written by the codec whose header byte is `id`, whichever codec that is.
///
/// Every codec's [`decode_id`](cache_core::Codec::decode_id) calls this. An id that is
/// unknown, or names a codec whose feature is not compiled in, gives an error of kind
/// [`ErrorKind::Decode`].
pub fn decode_any<V: DeserializeOwned>(id: u8, bytes: &[u8]) -> Result<V> {
    match CodecId::from_u8(id) {
        #[cfg(feature = "json")]
        Some(CodecId::JSON) => <Json as cache_core::Codec>::decode(bytes),
        #[cfg(feature = "msgpack")]
        Some(CodecId::MSGPACK) => <MsgPack as cache_core::Codec>::decode(bytes),
        #[cfg(feature = "cbor")]
        Some(CodecId::CBOR) => <Cbor as cache_core::Codec>::decode(bytes),
        Some(other) if other <= CodecId::CBOR => Err(Error::new(
            ErrorKind::Decode,
            format!(
                "cannot decode a {}-byte value written with codec {} (id {id}): \
                 that codec is not compiled into this build (enable cache-codec's `{}` feature)",
                bytes.len(),
                other.name(),
                other.name(),
            ),
        )),
        _ => Err(Error::new(
            ErrorKind::Decode,
            format!(
                "cannot decode a {}-byte value: unknown codec id {id} in the value header (no codec of this build has it)",
                bytes.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests;
