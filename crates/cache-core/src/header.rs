//! The versioned header in front of every value stored in L2.
//!
//! Layout (16 bytes, little endian), followed by the payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | magic `0xCA` |
//! | 1 | 1 | format version (`1`) |
//! | 2 | 1 | codec id (see [`crate::codec::CodecId`]) |
//! | 3 | 1 | flags ([`Header::FLAG_COMPRESSED`], [`Header::FLAG_NEGATIVE`]) |
//! | 4 | 8 | logical expiry, unix milliseconds (`0` = none) |
//! | 12 | 4 | delta: how long the load took, microseconds (saturating) |
//!
//! Anything that does not parse (short, wrong magic, unknown version, unknown flags) is a
//! [`HeaderError`], which the engine treats as a miss: it is counted and the key is
//! overwritten by the next load. It never panics.

use std::fmt;

/// The first byte of every headed value.
pub const MAGIC: u8 = 0xCA;
/// The current format version.
pub const VERSION: u8 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 16;

/// The decoded header of an L2 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Which codec wrote the payload.
    pub codec: u8,
    /// Flag bits.
    pub flags: u8,
    /// Logical expiry in unix milliseconds; `0` means none recorded.
    pub expires_at_ms: u64,
    /// How long the load that produced the value took, in microseconds.
    pub delta_us: u32,
}

/// Why a header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer bytes than a header.
    TooShort,
    /// The first byte is not [`MAGIC`]: foreign or corrupt bytes.
    BadMagic,
    /// A version this build does not understand.
    UnknownVersion(u8),
    /// Flag bits this build does not understand.
    UnknownFlags(u8),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::TooShort => f.write_str("value shorter than the header"),
            HeaderError::BadMagic => f.write_str("value does not start with the cache magic byte"),
            HeaderError::UnknownVersion(v) => write!(f, "unknown header version {v}"),
            HeaderError::UnknownFlags(v) => write!(f, "unknown header flags {v:#04x}"),
        }
    }
}

impl std::error::Error for HeaderError {}

impl Header {
    /// The payload is lz4-compressed (size-prepended block).
    pub const FLAG_COMPRESSED: u8 = 0b0000_0001;
    /// The value is a negative entry ("the source has no such key"); the payload is empty.
    pub const FLAG_NEGATIVE: u8 = 0b0000_0010;
    const KNOWN_FLAGS: u8 = Self::FLAG_COMPRESSED | Self::FLAG_NEGATIVE;

    /// True when [`Header::FLAG_COMPRESSED`] is set.
    pub fn is_compressed(&self) -> bool {
        self.flags & Self::FLAG_COMPRESSED != 0
    }

    /// True when [`Header::FLAG_NEGATIVE`] is set.
    pub fn is_negative(&self) -> bool {
        self.flags & Self::FLAG_NEGATIVE != 0
    }

    /// Append the 16 header bytes to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.push(MAGIC);
        out.push(VERSION);
        out.push(self.codec);
        out.push(self.flags);
        out.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        out.extend_from_slice(&self.delta_us.to_le_bytes());
    }

    /// Build `header ++ payload` in one allocation.
    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        self.write_to(&mut out);
        out.extend_from_slice(payload);
        out
    }

    /// Split `bytes` into a header and its payload.
    pub fn decode(bytes: &[u8]) -> Result<(Header, &[u8]), HeaderError> {
        if bytes.len() < HEADER_LEN {
            return Err(if bytes.first().is_some_and(|b| *b != MAGIC) {
                HeaderError::BadMagic
            } else {
                HeaderError::TooShort
            });
        }
        let (head, payload) = bytes.split_at(HEADER_LEN);
        if head[0] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if head[1] != VERSION {
            return Err(HeaderError::UnknownVersion(head[1]));
        }
        let flags = head[3];
        if flags & !Self::KNOWN_FLAGS != 0 {
            return Err(HeaderError::UnknownFlags(flags));
        }
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&head[4..12]);
        let mut delta = [0u8; 4];
        delta.copy_from_slice(&head[12..16]);
        Ok((
            Header {
                codec: head[2],
                flags,
                expires_at_ms: u64::from_le_bytes(exp),
                delta_us: u32::from_le_bytes(delta),
            },
            payload,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(codec in any::<u8>(), flags in 0u8..4, exp in any::<u64>(), delta in any::<u32>(),
                      payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let h = Header { codec, flags, expires_at_ms: exp, delta_us: delta };
            let bytes = h.encode(&payload);
            let (back, rest) = Header::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, h);
            prop_assert_eq!(rest, &payload[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Header::decode(&bytes);
        }
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Header::decode(b""), Err(HeaderError::TooShort));
        assert_eq!(Header::decode(b"{\"a\":1}"), Err(HeaderError::BadMagic));
        let mut v = Header {
            codec: 1,
            flags: 0,
            expires_at_ms: 5,
            delta_us: 1,
        }
        .encode(b"x");
        v[1] = 9;
        assert_eq!(Header::decode(&v), Err(HeaderError::UnknownVersion(9)));
        v[1] = VERSION;
        v[3] = 0x80;
        assert_eq!(Header::decode(&v), Err(HeaderError::UnknownFlags(0x80)));
    }
}
