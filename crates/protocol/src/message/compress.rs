//! Body compression (reference 6.6): the compression type carried in
//! sysFlag bits and zlib helpers with a hard cap on inflated size.

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
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(max_len));
    let limit = (max_len as u64).saturating_add(1);
    let n = ZlibDecoder::new(data)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| ProtocolError::InvalidBody(format!("bad zlib body: {e}")))?;
    if n > max_len {
        return Err(ProtocolError::InvalidBody(format!(
            "decompressed body exceeds {max_len} bytes"
        )));
    }
    Ok(out)
}

/// Inflates a body compressed with `kind`. Only zlib is supported; LZ4 and
/// ZSTD bodies are reported as errors (the broker never needs to inflate).
pub fn decompress(kind: CompressionType, data: &[u8], max_len: usize) -> Result<Vec<u8>> {
    match kind {
        CompressionType::Zlib => decompress_zlib(data, max_len),
        other => Err(ProtocolError::InvalidBody(format!(
            "unsupported body compression {other:?}"
        ))),
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
    }
}
