//! The bytes on the HA link, as Apache RocketMQ's classic HA service
//! (`DefaultHAConnection` / `DefaultHAClient`) puts them:
//!
//! * slave → master: its CommitLog max offset, 8 bytes big-endian, nothing
//!   else (the first one received is where the master starts sending);
//! * master → slave: frames of a 12-byte header — CommitLog offset of the
//!   first byte (8, big-endian), body size (4, big-endian) — then the body,
//!   raw CommitLog bytes. A frame with size 0 is a heartbeat that carries
//!   the master's next transfer offset.

/// Size of a master → slave frame header.
pub const TRANSFER_HEADER_SIZE: usize = 8 + 4;
/// Size of a slave → master report.
pub const REPORT_SIZE: usize = 8;
/// Largest body a slave accepts in one frame. Apache's slave reads into a
/// 4 MiB buffer, so no compatible master sends more than that.
pub const MAX_FRAME_BODY: usize = 4 * 1024 * 1024;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// CommitLog offset of the body's first byte.
    pub offset: u64,
    /// Body size in bytes (0 = heartbeat).
    pub size: usize,
}

/// Why a frame header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame offset {0} is negative")]
    NegativeOffset(i64),
    #[error("frame body size {0} is negative")]
    NegativeSize(i32),
    #[error("frame body size {size} exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
}

/// Encodes a frame header.
pub fn encode_header(offset: u64, size: u32) -> [u8; TRANSFER_HEADER_SIZE] {
    let mut h = [0u8; TRANSFER_HEADER_SIZE];
    h[..8].copy_from_slice(&offset.to_be_bytes());
    h[8..].copy_from_slice(&size.to_be_bytes());
    h
}

/// Decodes and checks a frame header.
pub fn decode_header(h: &[u8; TRANSFER_HEADER_SIZE]) -> Result<FrameHeader, FrameError> {
    let mut off = [0u8; 8];
    off.copy_from_slice(&h[..8]);
    let mut sz = [0u8; 4];
    sz.copy_from_slice(&h[8..]);
    let offset = i64::from_be_bytes(off);
    let size = i32::from_be_bytes(sz);
    let offset = u64::try_from(offset).map_err(|_| FrameError::NegativeOffset(offset))?;
    let size = usize::try_from(size).map_err(|_| FrameError::NegativeSize(size))?;
    if size > MAX_FRAME_BODY {
        return Err(FrameError::TooLarge {
            size,
            max: MAX_FRAME_BODY,
        });
    }
    Ok(FrameHeader { offset, size })
}

/// Encodes a slave's report.
pub fn encode_report(offset: u64) -> [u8; REPORT_SIZE] {
    offset.to_be_bytes()
}

/// Decodes a slave's report; None for a negative offset (never sent by a
/// sane slave).
pub fn decode_report(b: &[u8; REPORT_SIZE]) -> Option<u64> {
    u64::try_from(i64::from_be_bytes(*b)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_apaches() {
        let h = encode_header(0x0102_0304_0506_0708, 0x0A0B_0C0D);
        assert_eq!(
            h,
            [1, 2, 3, 4, 5, 6, 7, 8, 0x0A, 0x0B, 0x0C, 0x0D],
            "offset (8, big-endian) then size (4, big-endian)"
        );
        assert_eq!(
            decode_header(&encode_header(1 << 40, 32 * 1024)),
            Ok(FrameHeader {
                offset: 1 << 40,
                size: 32 * 1024
            })
        );
        assert_eq!(
            decode_header(&encode_header(77, 0)),
            Ok(FrameHeader {
                offset: 77,
                size: 0
            })
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut h = encode_header(5, 10);
        h[8..].copy_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(decode_header(&h), Err(FrameError::NegativeSize(-1)));
        let mut h = encode_header(5, 10);
        h[..8].copy_from_slice(&(-7i64).to_be_bytes());
        assert_eq!(decode_header(&h), Err(FrameError::NegativeOffset(-7)));
        let h = encode_header(5, (MAX_FRAME_BODY + 1) as u32);
        assert!(matches!(
            decode_header(&h),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn report_is_eight_big_endian_bytes() {
        assert_eq!(encode_report(258), [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(decode_report(&encode_report(1 << 33)), Some(1 << 33));
        assert_eq!(decode_report(&(-1i64).to_be_bytes()), None);
    }
}
