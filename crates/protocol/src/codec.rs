//! Length-prefixed framing of [`RemotingCommand`]s for tokio-util.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::command::RemotingCommand;
use crate::error::ProtocolError;

/// RocketMQ's default `com.rocketmq.remoting.frameMaxLength`: 16 MiB,
/// counting the 4-byte length prefix.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// Splits a byte stream into frames and decodes each into a command.
///
/// A length prefix over the maximum is refused before anything is
/// allocated for it; the caller is expected to close the connection.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_size: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl FrameCodec {
    pub fn new(max_frame_size: usize) -> Self {
        FrameCodec { max_frame_size }
    }

    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }
}

impl Decoder for FrameCodec {
    type Item = RemotingCommand;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RemotingCommand>, CodecError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len + 4 > self.max_frame_size {
            return Err(ProtocolError::FrameTooLarge {
                len: len + 4,
                max: self.max_frame_size,
            }
            .into());
        }
        if len < 4 {
            return Err(ProtocolError::MalformedFrame(format!(
                "frame length {len} is shorter than the header-length word"
            ))
            .into());
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let frame = src.split_to(len).freeze();
        Ok(Some(RemotingCommand::decode_frame(frame)?))
    }
}

impl Encoder<RemotingCommand> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: RemotingCommand, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&item, dst)
    }
}

impl Encoder<&RemotingCommand> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &RemotingCommand, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        item.encode(dst);
        let written = dst.len() - start;
        if written > self.max_frame_size {
            dst.truncate(start);
            return Err(ProtocolError::FrameTooLarge {
                len: written,
                max: self.max_frame_size,
            }
            .into());
        }
        Ok(())
    }
}

/// A framing failure: either the bytes were bad or the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn waits_for_a_whole_frame_then_decodes() {
        let mut cmd = RemotingCommand::request(34).with_body(&b"hello"[..]);
        cmd.opaque = 9;
        let full = cmd.to_bytes();
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        for chunk in full.chunks(7) {
            assert!(buf.is_empty() || codec.decode(&mut buf).unwrap().is_none());
            buf.extend_from_slice(chunk);
        }
        let got = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(got, cmd);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_length_is_refused_without_allocating() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        let cap = buf.capacity();
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Protocol(ProtocolError::FrameTooLarge { .. }))
        ));
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn tiny_length_is_malformed() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        buf.put_u32(2);
        buf.put_u16(0);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Protocol(ProtocolError::MalformedFrame(_)))
        ));
    }
}
