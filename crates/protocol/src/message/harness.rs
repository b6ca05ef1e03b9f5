//! Entry points shared by the fuzz targets (fuzz/fuzz_targets) and the
//! corpus replay test, so both exercise exactly the same code. Not a stable
//! API.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::{batch, compress, id, properties, stored, tags};
use crate::codec::FrameCodec;
use crate::command::RemotingCommand;

/// Frame size limit used while fuzzing (small, so the fuzzer reaches the
/// "too large" path often).
pub const FUZZ_MAX_FRAME: usize = 1 << 20;
/// Inflate cap used while fuzzing.
pub const FUZZ_MAX_INFLATE: usize = 1 << 20;

/// What [`frame_decoder`] saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FrameOutcome {
    /// Frames the codec produced before stopping.
    pub frames: usize,
    /// Whether the codec stopped on an error (as opposed to needing more).
    pub codec_error: bool,
    /// Whether the input decoded as one frame body without its length prefix.
    pub raw_frame_ok: bool,
}

/// Runs `data` through the frame codec (as a byte stream) and through
/// `RemotingCommand::decode_frame` (as one frame without length prefix).
/// Every decoded command is re-encoded and must decode again.
pub fn frame_decoder(data: &[u8]) -> FrameOutcome {
    let mut out = FrameOutcome::default();
    let mut codec = FrameCodec::new(FUZZ_MAX_FRAME);
    let mut buf = BytesMut::from(data);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(cmd)) => {
                out.frames += 1;
                reencode(&cmd);
            }
            Ok(None) => break,
            Err(_) => {
                out.codec_error = true;
                break;
            }
        }
    }
    if let Ok(cmd) = RemotingCommand::decode_frame(Bytes::copy_from_slice(data)) {
        out.raw_frame_ok = true;
        reencode(&cmd);
    }
    out
}

fn reencode(cmd: &RemotingCommand) {
    let bytes = cmd.to_bytes();
    let mut codec = FrameCodec::new(usize::MAX);
    let mut buf = BytesMut::from(&bytes[..]);
    // A command we decoded must survive our own encoder; a failure here is
    // a real bug, so make the fuzzer see it.
    match codec.decode(&mut buf) {
        Ok(Some(_)) => {}
        other => panic!("re-encoded command does not decode: {other:?}"),
    }
}

/// What [`message_decoder`] saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MessageOutcome {
    /// Stored records decoded (CRC verified) before the end or an error.
    pub stored_records: usize,
    /// Whether the whole input was a sequence of valid stored records.
    pub stored_all_ok: bool,
    /// Messages in the input read as a batch body, if it is a valid one.
    pub batch_messages: Option<usize>,
    /// Properties pairs found when the input is read as a properties string.
    pub property_pairs: usize,
}

/// Runs `data` through every message decoder: stored records (borrowed and
/// owned paths, which must agree), batch bodies, the properties string,
/// message ids, tag expressions and zlib inflation.
pub fn message_decoder(data: &[u8]) -> MessageOutcome {
    let mut out = MessageOutcome::default();

    let _ = stored::peek_total_size(data);
    let _ = stored::peek_header(data);
    let mut consumed = 0usize;
    let mut all_ok = true;
    for rec in stored::iter_records(data, true) {
        match rec {
            Ok(info) => {
                out.stored_records += 1;
                consumed += info.total_size;
                let _ = info.offset_msg_id();
                let _ = info.tags_code();
                let copy = info.to_message_to_store();
                let mut enc = BytesMut::new();
                if stored::encode_stored(&copy, &mut enc).is_ok() {
                    let _ = stored::patch_stored(
                        &mut enc,
                        info.queue_offset,
                        info.physical_offset,
                        info.store_timestamp,
                    );
                    let again = stored::check_record(&enc, true);
                    assert!(again.is_ok(), "re-encoded record fails: {again:?}");
                }
            }
            Err(_) => {
                all_ok = false;
                break;
            }
        }
    }
    out.stored_all_ok = all_ok && consumed == data.len();
    let owned = stored::decode_stored_many(&Bytes::copy_from_slice(data), true);
    assert_eq!(
        owned.len(),
        out.stored_records,
        "owned and borrowed decoders disagree"
    );
    for mut m in owned {
        let _ = m.msg_id();
        let _ = m.decompress(FUZZ_MAX_INFLATE);
    }

    out.batch_messages = batch::decode_batch(&Bytes::copy_from_slice(data))
        .ok()
        .map(|v| v.len());

    let text = String::from_utf8_lossy(data);
    out.property_pairs = properties::iter(&text).count();
    let _ = properties::decode(&text);
    let _ = id::decode_offset_msg_id(&text);
    let _ = id::decode_uniq_key(&text);
    let _ = tags::TagFilter::parse(&text).matches_code(0);
    for kind in [
        compress::CompressionType::Zlib,
        compress::CompressionType::Lz4,
        compress::CompressionType::Zstd,
    ] {
        let _ = compress::decompress(kind, data, FUZZ_MAX_INFLATE);
    }
    out
}
