//! CBOR via ciborium.

use std::cell::Cell;

use cache_core::{Codec, CodecId, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::bounded::{Bounded, Budget};
use crate::MAX_DEPTH;

/// CBOR (ciborium), header id [`CodecId::CBOR`].
///
/// Structs are encoded as maps keyed by field name. Decoding is one pass of ciborium over the
/// input with the bounds enforced as it goes: nesting (enums and tags included) may not exceed
/// [`MAX_DEPTH`] (ciborium's own recursion limit is set to match), no size
/// hint serde sees promises more elements than the input has bytes, strings are read in
/// bounded chunks (never pre-allocated from a claimed length), and no byte may follow the
/// value ciborium reads. What counts as one value is ciborium's reading, as with a plain
/// `ciborium::from_reader` call: it is more lenient than strict CBOR in places (it reads an
/// enum from a text string followed by its payload, and does not require a struct or tuple
/// to consume every element of an array), which no bound depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Cbor;

impl Codec for Cbor {
    const ID: CodecId = CodecId::CBOR;

    fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).map_err(|e| {
            Error::new(ErrorKind::Encode, format!("cbor encode failed: {e}")).with_source(e)
        })?;
        Ok(out)
    }

    fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V> {
        let _ = INPUT_LEN.try_with(|len| len.set(bytes.len()));
        // What ciborium did not read is trailing bytes: its decoder never reads ahead past
        // the end of the value it returns.
        let unread = Cell::new(0);
        let input = Input {
            rest: bytes,
            unread: &unread,
        };
        match ciborium::de::from_reader_with_recursion_limit::<Whole<V>, _>(input, MAX_DEPTH + 1) {
            Ok(Whole(value)) if unread.get() == 0 => Ok(value),
            Ok(_) => Err(decode_error(bytes, Err(unread.get()))),
            Err(e) => Err(decode_error(bytes, Ok(e))),
        }
    }

    fn decode_id<V: DeserializeOwned>(id: u8, bytes: &[u8]) -> Result<V> {
        crate::decode_any(id, bytes)
    }
}

thread_local! {
    /// The length of the input [`Cbor::decode`] is decoding on this thread. ciborium takes a
    /// `DeserializeOwned` type, not a seed, so this is how [`Whole`] learns the budget for
    /// size hints; it is read once, at the start of the decode.
    static INPUT_LEN: Cell<usize> = const { Cell::new(0) };
}

/// The input, handed to ciborium by value (as fast as a plain `&[u8]`; a `&mut &[u8]` costs
/// an indirection per read): when ciborium drops it, it leaves the number of bytes it did not
/// read in `unread`.
struct Input<'a, 'u> {
    rest: &'a [u8],
    unread: &'u Cell<usize>,
}

impl std::io::Read for Input<'_, '_> {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.rest.read(buf)
    }

    #[inline]
    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.rest.read_exact(buf)
    }
}

impl Drop for Input<'_, '_> {
    fn drop(&mut self) {
        self.unread.set(self.rest.len());
    }
}

/// The decoded value, deserialized through [`Bounded`].
struct Whole<V>(V);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Whole<V> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> std::result::Result<Self, D::Error> {
        // Without the thread-local (thread teardown), a zero budget: no size hints at all.
        let budget = Budget::new(INPUT_LEN.try_with(Cell::get).unwrap_or(0));
        V::deserialize(Bounded::new(de, &budget)).map(Whole)
    }
}

/// The error for input that failed to decode: `failure` is ciborium's error, or how many
/// bytes were left after the value ciborium read. The structural scan runs only here, to name
/// the problem precisely (a length header claiming more than the input holds, nesting too
/// deep, trailing bytes); when the structure is sound, the error is ciborium's (a type
/// mismatch, invalid UTF-8, ...).
#[cold]
#[inline(never)]
fn decode_error(
    bytes: &[u8],
    failure: std::result::Result<ciborium::de::Error<std::io::Error>, usize>,
) -> Error {
    let detail = match (crate::scan::cbor(bytes), &failure) {
        (Err(scan), _) => scan,
        (Ok(()), Ok(e)) => e.to_string(),
        // One well-formed item, but ciborium stopped short of its end: it does not require a
        // struct or tuple to consume every element of an array.
        (Ok(()), Err(left)) => format!(
            "bytes left unread after the value: {left} (an array with more elements than \
             the target type takes?)"
        ),
    };
    let error = Error::new(ErrorKind::Decode, format!("cbor decode failed: {detail}"));
    match failure {
        Ok(e) => error.with_source(e),
        Err(_) => error,
    }
}
