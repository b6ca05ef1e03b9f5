//! Body compression (reference 6.6): the compression type carried in
//! sysFlag bits, and zlib, LZ4 (frame format, as Java's `LZ4FrameOutputStream`
//! writes) and Zstandard (a zstd frame, as `ZstdOutputStream` writes) with a
//! hard cap on the inflated size.

use std::io::{Read, Write};

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;

use super::sysflag;
use crate::error::{ProtocolError, Result};

/// Java producers' default `compressMsgBodyOverHowmuch`.
pub const DEFAULT_COMPRESS_OVER: usize = 4096;
/// Java producers' default compression level.
pub const DEFAULT_LEVEL: u32 = 5;

/// Compression algorithm of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompressionType {
    Lz4,
    Zstd,
    Zlib,
}

impl CompressionType {
    /// The algorithm of a body with this sysFlag, or `None` if it is not
    /// compressed. A zero type field with COMPRESSED set is zlib (4.x).
    pub fn from_sys_flag(flag: i32) -> Option<Self> {
        if flag & sysflag::COMPRESSED == 0 {
            return None;
        }
        Some(match flag & sysflag::COMPRESSION_TYPE_MASK {
            sysflag::COMPRESSION_LZ4 => CompressionType::Lz4,
            sysflag::COMPRESSION_ZSTD => CompressionType::Zstd,
            // 0x300 and, for 4.x clients, 0; other values are undefined and
            // Java falls back to zlib for them too.
            _ => CompressionType::Zlib,
        })
    }

    /// The sysFlag type bits (already shifted) for this algorithm.
    pub fn sys_flag_bits(self) -> i32 {
        match self {
            CompressionType::Lz4 => sysflag::COMPRESSION_LZ4,
            CompressionType::Zstd => sysflag::COMPRESSION_ZSTD,
            CompressionType::Zlib => sysflag::COMPRESSION_ZLIB,
        }
    }
}

/// zlib (RFC 1950) stream of `data`, as `java.util.zip.Deflater` makes.
pub fn compress_zlib(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 16),
        Compression::new(level.min(9)),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// Inflates a zlib stream, refusing output larger than `max_len` bytes and
/// never allocating more than that.
pub fn decompress_zlib(data: &[u8], max_len: usize) -> Result<Vec<u8>> {
    read_capped(ZlibDecoder::new(data), data.len(), max_len, "zlib")
}

/// Reads a decoder to its end, refusing more than `max_len` bytes.
fn read_capped(decoder: impl Read, in_len: usize, max_len: usize, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(in_len.saturating_mul(4).min(max_len));
    let limit = (max_len as u64).saturating_add(1);
    let n = decoder
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| ProtocolError::InvalidBody(format!("bad {what} body: {e}")))?;
    if n > max_len {
        return Err(ProtocolError::InvalidBody(format!(
            "decompressed body exceeds {max_len} bytes"
        )));
    }
    Ok(out)
}

/// An LZ4 frame of `data`.
pub fn compress_lz4(data: &[u8]) -> Vec<u8> {
    let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(data.len() / 2 + 32));
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// A Zstandard frame of `data` at `level`.
pub fn compress_zstd(data: &[u8], level: i32) -> Vec<u8> {
    zstd::stream::encode_all(data, level).unwrap_or_default()
}

/// Compresses `data` with `kind` (`level` applies to zlib and zstd, as in
/// Java where LZ4 has none).
pub fn compress(kind: CompressionType, data: &[u8], level: u32) -> Vec<u8> {
    match kind {
        CompressionType::Zlib => compress_zlib(data, level),
        CompressionType::Lz4 => compress_lz4(data),
        CompressionType::Zstd => compress_zstd(data, level.min(22) as i32),
    }
}

/// Inflates a body compressed with `kind`, refusing output larger than
/// `max_len` bytes.
pub fn decompress(kind: CompressionType, data: &[u8], max_len: usize) -> Result<Vec<u8>> {
    match kind {
        CompressionType::Zlib => decompress_zlib(data, max_len),
        CompressionType::Lz4 => read_capped(
            lz4_flex::frame::FrameDecoder::new(data),
            data.len(),
            max_len,
            "LZ4",
        ),
        CompressionType::Zstd => {
            let dec = zstd::stream::read::Decoder::new(data)
                .map_err(|e| ProtocolError::InvalidBody(format!("bad zstd body: {e}")))?;
            read_capped(dec, data.len(), max_len, "zstd")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_from_flag() {
        assert_eq!(CompressionType::from_sys_flag(0), None);
        assert_eq!(CompressionType::from_sys_flag(0x300), None);
        assert_eq!(
            CompressionType::from_sys_flag(1),
            Some(CompressionType::Zlib)
        );
        assert_eq!(
            CompressionType::from_sys_flag(0x101),
            Some(CompressionType::Lz4)
        );
        assert_eq!(
            CompressionType::from_sys_flag(0x201),
            Some(CompressionType::Zstd)
        );
        assert_eq!(
            CompressionType::from_sys_flag(0x301),
            Some(CompressionType::Zlib)
        );
    }

    #[test]
    fn round_trip_and_cap() {
        let data = vec![7u8; 100_000];
        let z = compress_zlib(&data, DEFAULT_LEVEL);
        assert!(z.len() < 1000);
        assert_eq!(z[0], 0x78, "zlib header");
        assert_eq!(decompress_zlib(&z, 100_000).unwrap(), data);
        assert!(decompress_zlib(&z, 99_999).is_err());
        assert!(decompress_zlib(b"not zlib", 1000).is_err());
        assert!(decompress(CompressionType::Lz4, &z, 1000).is_err());
        assert!(decompress(CompressionType::Zstd, &z, 1000).is_err());
    }

    #[test]
    fn lz4_and_zstd_round_trip_with_the_cap() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for kind in [CompressionType::Lz4, CompressionType::Zstd] {
            let c = compress(kind, &data, DEFAULT_LEVEL);
            assert!(c.len() < data.len() / 4, "{kind:?}: {}", c.len());
            assert_eq!(decompress(kind, &c, data.len()).unwrap(), data, "{kind:?}");
            assert!(
                decompress(kind, &c, data.len() - 1).is_err(),
                "{kind:?} cap"
            );
            // Truncated and garbage input: an error, never a panic.
            assert!(
                decompress(kind, &c[..c.len() / 2], data.len()).is_err(),
                "{kind:?}"
            );
            assert!(
                decompress(kind, b"garbage bytes", 1000).is_err(),
                "{kind:?}"
            );
        }
        // Frame magic numbers, as Java's streams write them.
        assert_eq!(&compress_lz4(b"x")[..4], &[0x04, 0x22, 0x4d, 0x18]);
        assert_eq!(&compress_zstd(b"x", 3)[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    }
}
