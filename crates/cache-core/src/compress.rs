//! Optional lz4 compression of L2 payloads (feature `lz4`).

use crate::error::{Error, ErrorKind, Result};

/// Compress `payload` (lz4 block, 4-byte little-endian size prepended).
#[cfg(feature = "lz4")]
pub fn compress(payload: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(payload)
}

/// Decompress a payload written by [`compress`], refusing to expand beyond `max_len` bytes
/// (a hostile size prefix cannot make us allocate).
#[cfg(feature = "lz4")]
pub fn decompress(bytes: &[u8], max_len: usize) -> Result<Vec<u8>> {
    if bytes.len() < 4 {
        return Err(Error::new(
            ErrorKind::Decode,
            "compressed payload shorter than its size prefix",
        ));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[..4]);
    let claimed = u32::from_le_bytes(len) as usize;
    if claimed > max_len {
        return Err(Error::new(
            ErrorKind::Decode,
            format!("compressed payload claims {claimed} bytes, over the maximum of {max_len}"),
        ));
    }
    // An lz4 block expands at most 255-fold (a run-length byte stands for at most 255
    // bytes): a larger claim is a lie, refused before anything is allocated for it.
    let most = (bytes.len() - 4).saturating_mul(255).saturating_add(16);
    if claimed > most {
        return Err(Error::new(
            ErrorKind::Decode,
            format!(
                "compressed payload of {} bytes claims {claimed} bytes, more than lz4 can expand to",
                bytes.len() - 4
            ),
        ));
    }
    lz4_flex::block::decompress_size_prepended(bytes)
        .map_err(|e| Error::new(ErrorKind::Decode, format!("lz4: {e}")))
}

/// Without the `lz4` feature a compressed value cannot be read: it is treated as a miss.
#[cfg(not(feature = "lz4"))]
pub fn decompress(_bytes: &[u8], _max_len: usize) -> Result<Vec<u8>> {
    Err(Error::new(
        ErrorKind::Decode,
        "value is lz4-compressed but this build lacks the `lz4` feature",
    ))
}

#[cfg(all(test, feature = "lz4"))]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bomb() -> Result<()> {
        let data = vec![7u8; 10_000];
        let c = compress(&data);
        assert!(c.len() < data.len());
        assert_eq!(decompress(&c, 1 << 20)?, data);
        let mut bomb = (u32::MAX).to_le_bytes().to_vec();
        bomb.push(0);
        assert_eq!(
            decompress(&bomb, 1 << 20).map_err(|e| e.kind()),
            Err(ErrorKind::Decode)
        );
        // The most compressible input still decompresses under the expansion bound.
        for len in [1usize, 100, 65_536, 16 << 20] {
            let zeros = vec![0u8; len];
            assert_eq!(decompress(&compress(&zeros), 16 << 20)?, zeros);
        }
        // A 5-byte value claiming just under the size limit is refused by the bound.
        let mut small = ((16u32 << 20) - 1).to_le_bytes().to_vec();
        small.push(0);
        assert_eq!(
            decompress(&small, 16 << 20).map_err(|e| e.kind()),
            Err(ErrorKind::Decode)
        );
        Ok(())
    }
}
