//! Message formats: sysFlag bits, property names and the properties string,
//! the stored record (CommitLog / pull body), client batches, message ids,
//! tag hash codes and subscription expressions, and body compression.

pub mod batch;
pub mod compress;
#[doc(hidden)]
pub mod harness;
pub mod id;
pub mod keys;
pub mod properties;
pub mod stored;
pub mod sysflag;
pub mod tags;

pub use batch::{decode_batch, encode_batch, iter_batch, BatchMessage, BatchRecord};
pub use compress::CompressionType;
pub use id::{decode_offset_msg_id, offset_msg_id, UniqIdGenerator};
pub use stored::{
    body_crc, check_record, decode_stored, decode_stored_bytes, decode_stored_many,
    decode_stored_many_strict, encode_stored, encode_stored_into, iter_records, patch_stored,
    peek_header, peek_total_size, store_timestamp_pos, stored_size, DecodedMessage, MessageToStore,
    MessageVersion, RecordHeader, RecordInfo, PHYSICAL_OFFSET_POS, QUEUE_OFFSET_POS,
};
pub use tags::{tags_hash_code, TagFilter};
