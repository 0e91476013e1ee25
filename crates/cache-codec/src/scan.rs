//! Bounded structural scans of MessagePack and CBOR input, run only when a decode failed, to
//! say precisely what is wrong with the bytes.
//!
//! The bounds themselves are enforced while serde runs (see `bounded.rs` and the codecs);
//! these scans cost a second pass over the input, so the success path never runs them.
//! Both walk the encoding iteratively (no recursion, memory bounded by [`MAX_DEPTH`]) and
//! reject input when:
//!
//! - a length header claims more bytes, or more elements, than the input has left (every
//!   element needs at least one byte);
//! - containers nest more than [`MAX_DEPTH`] levels deep;
//! - the input is truncated, malformed, or has bytes after the single top-level value.
//!
//! They check structure only (not UTF-8, not types): when the structure is sound, the
//! deserializer's own error explains the failure.

use crate::MAX_DEPTH;

/// Why a scan rejected the input.
pub(crate) type ScanError = String;

/// A cursor over the input.
struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Input { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ScanError> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        match rest.get(..n) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(format!(
                "input truncated: need {n} more bytes at offset {}, only {} left",
                self.pos,
                rest.len()
            )),
        }
    }

    fn u8(&mut self) -> Result<u8, ScanError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    /// A big-endian unsigned integer of `n` (1, 2, 4 or 8) bytes.
    fn uint_be(&mut self, n: usize) -> Result<u64, ScanError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// Skip the `len` payload bytes of the `what` whose head is at offset `at`, rejecting
    /// lengths beyond the input.
    fn skip(&mut self, len: u64, what: &str, at: usize) -> Result<(), ScanError> {
        let n = self.check_fits(len, len, what, at)?;
        self.take(n).map(|_| ())
    }

    /// Check that what the `what` at offset `at` declares (`declared`, needing at least
    /// `min_bytes` more bytes) fits in the input; returns `min_bytes` as usize.
    fn check_fits(
        &self,
        declared: u64,
        min_bytes: u64,
        what: &str,
        at: usize,
    ) -> Result<usize, ScanError> {
        match usize::try_from(min_bytes) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(format!(
                "{what} at offset {at} declares length {declared}, but only {} bytes remain",
                self.remaining()
            )),
        }
    }

    fn finish(&self) -> Result<(), ScanError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(format!(
                "{n} trailing bytes after the value (at offset {})",
                self.pos
            )),
        }
    }
}

fn too_deep(pos: usize) -> ScanError {
    format!("nesting deeper than {MAX_DEPTH} levels at offset {pos}")
}

/// Check that `bytes` is exactly one structurally valid MessagePack value.
#[cfg(feature = "msgpack")]
pub(crate) fn msgpack(bytes: &[u8]) -> Result<(), ScanError> {
    let mut input = Input::new(bytes);
    // Elements still expected by each open container (maps count keys and values).
    let mut open: Vec<u64> = Vec::new();
    loop {
        let at = input.pos;
        let marker = input.u8()?;
        // `Some((declared length, elements, kind))`: a container starts; `None`: a complete
        // scalar (its payload already skipped).
        let container: Option<(u64, u64, &str)> = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => None,
            0x80..=0x8f => Some((
                u64::from(marker & 0x0f),
                2 * u64::from(marker & 0x0f),
                "map",
            )),
            0x90..=0x9f => Some((u64::from(marker & 0x0f), u64::from(marker & 0x0f), "array")),
            0xa0..=0xbf => {
                input.skip(u64::from(marker & 0x1f), "str", at)?;
                None
            }
            0xc1 => return Err(format!("reserved marker 0xc1 at offset {at}")),
            0xc4..=0xc6 => {
                let len = input.uint_be(1 << (marker - 0xc4))?;
                input.skip(len, "bin", at)?;
                None
            }
            0xc7..=0xc9 => {
                let len = input.uint_be(1 << (marker - 0xc7))?;
                input.take(1)?; // ext type
                input.skip(len, "ext", at)?;
                None
            }
            0xca => input.take(4).map(|_| None)?,
            0xcb => input.take(8).map(|_| None)?,
            0xcc..=0xcf => input.take(1 << (marker - 0xcc)).map(|_| None)?,
            0xd0..=0xd3 => input.take(1 << (marker - 0xd0)).map(|_| None)?,
            0xd4..=0xd8 => input.take(1 + (1 << (marker - 0xd4))).map(|_| None)?,
            0xd9..=0xdb => {
                let len = input.uint_be(1 << (marker - 0xd9))?;
                input.skip(len, "str", at)?;
                None
            }
            0xdc | 0xdd => {
                let len = input.uint_be(if marker == 0xdc { 2 } else { 4 })?;
                Some((len, len, "array"))
            }
            0xde | 0xdf => {
                let len = input.uint_be(if marker == 0xde { 2 } else { 4 })?;
                // len < 2^32, so this cannot overflow.
                Some((len, 2 * len, "map"))
            }
        };
        if let Some((declared, n, what)) = container {
            input.check_fits(declared, n, what, at)?;
            if n > 0 {
                if open.len() >= MAX_DEPTH {
                    return Err(too_deep(at));
                }
                open.push(n);
                continue;
            }
        }
        // One element is complete: close every container it completes.
        loop {
            match open.last_mut() {
                None => return input.finish(),
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    open.pop();
                }
            }
        }
    }
}

/// An open CBOR container.
#[cfg(feature = "cbor")]
enum Frame {
    /// Definite-length array, map (keys and values counted) or tag: elements still expected.
    Definite(u64),
    /// Indefinite-length array or map, closed by a break: elements seen so far.
    Indefinite { map: bool, seen: u64 },
    /// Indefinite-length byte (major 2) or text (major 3) string: definite chunks of the same
    /// major type until a break.
    Chunks(u8),
}

/// Check that `bytes` is exactly one well-formed CBOR data item.
#[cfg(feature = "cbor")]
pub(crate) fn cbor(bytes: &[u8]) -> Result<(), ScanError> {
    const BREAK: u8 = 0xff;
    let mut input = Input::new(bytes);
    let mut open: Vec<Frame> = Vec::new();
    loop {
        let at = input.pos;
        let initial = input.u8()?;
        let major = initial >> 5;
        let info = initial & 0x1f;

        if let Some(Frame::Chunks(string_major)) = open.last() {
            let string_major = *string_major;
            if initial == BREAK {
                open.pop();
                // The indefinite string is complete: fall through to close containers.
            } else if major == string_major && info != 31 {
                let len = argument(&mut input, info, at)?;
                input.skip(len, "string chunk", at)?;
                continue;
            } else {
                return Err(format!(
                    "invalid chunk (initial byte {initial:#04x}) in an indefinite-length string \
                     at offset {at}"
                ));
            }
        } else if initial == BREAK {
            match open.pop() {
                Some(Frame::Indefinite { map, seen }) => {
                    if map && seen % 2 == 1 {
                        return Err(format!(
                            "indefinite-length map closed after a key with no value at offset {at}"
                        ));
                    }
                }
                _ => return Err(format!("unexpected break at offset {at}")),
            }
        } else {
            let frame = match (major, info) {
                (0 | 1, _) => {
                    argument(&mut input, info, at)?;
                    None
                }
                (2 | 3, 31) => Some(Frame::Chunks(major)),
                (2 | 3, _) => {
                    let len = argument(&mut input, info, at)?;
                    input.skip(
                        len,
                        if major == 2 {
                            "byte string"
                        } else {
                            "text string"
                        },
                        at,
                    )?;
                    None
                }
                (4, 31) => Some(Frame::Indefinite {
                    map: false,
                    seen: 0,
                }),
                (5, 31) => Some(Frame::Indefinite { map: true, seen: 0 }),
                (4, _) => {
                    let n = argument(&mut input, info, at)?;
                    input.check_fits(n, n, "array", at)?;
                    (n > 0).then_some(Frame::Definite(n))
                }
                (5, _) => {
                    let n = argument(&mut input, info, at)?;
                    let elements = n.saturating_mul(2);
                    input.check_fits(n, elements, "map", at)?;
                    (n > 0).then_some(Frame::Definite(elements))
                }
                (6, _) => {
                    argument(&mut input, info, at)?;
                    Some(Frame::Definite(1))
                }
                // Major 7: simple values and floats (the break byte was handled above).
                _ => {
                    argument(&mut input, info, at)?;
                    None
                }
            };
            if let Some(frame) = frame {
                if open.len() >= MAX_DEPTH {
                    return Err(too_deep(at));
                }
                open.push(frame);
                continue;
            }
        }

        // One item is complete: close every definite container it completes.
        loop {
            match open.last_mut() {
                None => return input.finish(),
                Some(Frame::Definite(left)) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    open.pop();
                }
                Some(Frame::Indefinite { seen, .. }) => {
                    *seen += 1;
                    break;
                }
                // Chunks frames never have items completed inside them.
                Some(Frame::Chunks(_)) => {
                    return Err(format!("malformed indefinite-length string at offset {at}"))
                }
            }
        }
    }
}

/// The argument of a CBOR head with additional information `info`.
#[cfg(feature = "cbor")]
fn argument(input: &mut Input<'_>, info: u8, at: usize) -> Result<u64, ScanError> {
    match info {
        0..=23 => Ok(u64::from(info)),
        24..=27 => input.uint_be(1 << (info - 24)),
        _ => Err(format!(
            "invalid additional information {info} in the head at offset {at}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_scan_accepts_valid_and_rejects_malformed() {
        assert_eq!(msgpack(&[0xc0]), Ok(()));
        assert_eq!(msgpack(&[0x92, 0x01, 0xa1, b'x']), Ok(()));
        assert_eq!(msgpack(&[0x81, 0xa1, b'k', 0x90]), Ok(()));
        assert_eq!(msgpack(&[0xd4, 0x01, 0x02]), Ok(()));
        assert_eq!(msgpack(&[0xc7, 0x01, 0x05, 0xff]), Ok(()));
        assert!(msgpack(&[]).is_err());
        assert!(msgpack(&[0xc1]).is_err());
        assert!(msgpack(&[0x92, 0x01]).is_err());
        assert!(msgpack(&[0x01, 0x02]).is_err());
        assert!(msgpack(&[0x81, 0x01]).is_err());
        assert!(msgpack(&[0xcb, 0, 0, 0]).is_err());
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_scan_rejects_oversized_claims() {
        for marker in [0xc6u8, 0xdb, 0xdd, 0xdf, 0xc9] {
            let mut bytes = vec![marker, 0xff, 0xff, 0xff, 0xff];
            bytes.extend_from_slice(&[0; 5]);
            let err = msgpack(&bytes).err().unwrap_or_default();
            assert!(err.contains("declares length"), "{marker:#x}: {err}");
        }
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_scan_limits_depth() {
        let ok: Vec<u8> = std::iter::repeat_n(0x91, MAX_DEPTH).chain([0xc0]).collect();
        assert_eq!(msgpack(&ok), Ok(()));
        let deep: Vec<u8> = std::iter::repeat_n(0x91, MAX_DEPTH + 1)
            .chain([0xc0])
            .collect();
        assert!(msgpack(&deep).err().unwrap_or_default().contains("nesting"));
    }

    #[cfg(feature = "cbor")]
    #[test]
    fn cbor_scan_accepts_valid_and_rejects_malformed() {
        assert_eq!(cbor(&[0xf6]), Ok(()));
        assert_eq!(cbor(&[0x82, 0x01, 0x61, b'x']), Ok(()));
        assert_eq!(cbor(&[0xa1, 0x61, b'k', 0x80]), Ok(()));
        assert_eq!(cbor(&[0x9f, 0x01, 0x9f, 0xff, 0xff]), Ok(()));
        assert_eq!(cbor(&[0xbf, 0x01, 0x02, 0xff]), Ok(()));
        assert_eq!(cbor(&[0x5f, 0x41, 0x00, 0x40, 0xff]), Ok(()));
        assert_eq!(cbor(&[0xc1, 0x1a, 0, 0, 0, 1]), Ok(()));
        assert_eq!(cbor(&[0xf9, 0x3c, 0x00]), Ok(()));
        assert_eq!(
            cbor(&[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Ok(())
        );
        assert!(cbor(&[]).is_err());
        assert!(cbor(&[0xff]).is_err());
        assert!(cbor(&[0x1c]).is_err());
        assert!(cbor(&[0x82, 0x01]).is_err());
        assert!(cbor(&[0x01, 0x01]).is_err());
        assert!(cbor(&[0xbf, 0x01, 0xff]).is_err());
        assert!(cbor(&[0x9f, 0x01]).is_err());
        assert!(cbor(&[0x5f, 0x61, b'x', 0xff]).is_err());
        assert!(cbor(&[0x5f, 0x5f, 0xff, 0xff]).is_err());
        assert!(cbor(&[0x3f]).is_err());
        assert!(cbor(&[0xc1]).is_err());
    }

    #[cfg(feature = "cbor")]
    #[test]
    fn cbor_scan_rejects_oversized_claims() {
        for head in [0x5au8, 0x7a, 0x9a, 0xba] {
            let bytes = [head, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0];
            let err = cbor(&bytes).err().unwrap_or_default();
            assert!(err.contains("declares length"), "{head:#x}: {err}");
        }
        let huge_map = [0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0];
        assert!(cbor(&huge_map)
            .err()
            .unwrap_or_default()
            .contains("declares length"));
    }

    #[cfg(feature = "cbor")]
    #[test]
    fn cbor_scan_limits_depth() {
        for opener in [0x81u8, 0x9f, 0xc6] {
            let deep: Vec<u8> = std::iter::repeat_n(opener, 100_000).collect();
            assert!(cbor(&deep).err().unwrap_or_default().contains("nesting"));
        }
        let ok: Vec<u8> = std::iter::repeat_n(0x81, MAX_DEPTH).chain([0xf6]).collect();
        assert_eq!(cbor(&ok), Ok(()));
    }
}
