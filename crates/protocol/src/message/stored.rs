//! The stored message record (reference 6.3): the CommitLog format, which is
//! also the wire format of pulled, queried and checked messages. Encoding
//! writes placeholders for the fields only the store knows (queue offset,
//! physical offset, store timestamp) at fixed positions so they can be
//! patched in place at append time; decoding validates every length against
//! the buffer and never allocates more than the input holds.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

use super::{compress, id, keys, properties, sysflag};
use crate::error::{ProtocolError, Result};

/// Magic code of a V1 record (1-byte topic length): `0xDAA320A7`.
pub const MAGIC_CODE_V1: i32 = 0xDAA3_20A7_u32 as i32;
/// Magic code of a V2 record (2-byte topic length): `0xDAA320AB`.
pub const MAGIC_CODE_V2: i32 = 0xDAA3_20AB_u32 as i32;
/// Magic code of the end-of-file filler in a CommitLog file: `0xCBD43194`.
pub const BLANK_MAGIC_CODE: i32 = 0xCBD4_3194_u32 as i32;

/// Byte position of TOTALSIZE (i32).
pub const TOTAL_SIZE_POS: usize = 0;
/// Byte position of MAGICCODE (i32).
pub const MAGIC_CODE_POS: usize = 4;
/// Byte position of BODYCRC (i32).
pub const BODY_CRC_POS: usize = 8;
/// Byte position of QUEUEID (i32).
pub const QUEUE_ID_POS: usize = 12;
/// Byte position of FLAG (i32).
pub const FLAG_POS: usize = 16;
/// Byte position of QUEUEOFFSET (i64), patched by the store.
pub const QUEUE_OFFSET_POS: usize = 20;
/// Byte position of PHYSICALOFFSET (i64), patched by the store.
pub const PHYSICAL_OFFSET_POS: usize = 28;
/// Byte position of SYSFLAG (i32).
pub const SYS_FLAG_POS: usize = 36;
/// Byte position of BORNTIMESTAMP (i64).
pub const BORN_TIMESTAMP_POS: usize = 40;
/// Byte position of BORNHOST (8 or 20 bytes).
pub const BORN_HOST_POS: usize = 48;
/// STORETIMESTAMP position when the born host is IPv4.
pub const STORE_TIMESTAMP_POS_V4: usize = 56;
/// STORETIMESTAMP position when the born host is IPv6.
pub const STORE_TIMESTAMP_POS_V6: usize = 68;
/// Size of everything but BODY, TOPIC and PROPERTIES contents for IPv4
/// hosts and a V1 record (4-byte body length, 1-byte topic length, 2-byte
/// properties length included).
pub const FIXED_OVERHEAD_V4_V1: usize = 91;
/// Longest topic a V2 record can carry (signed 16-bit length).
pub const MAX_TOPIC_LEN_V2: usize = i16::MAX as usize;
/// Longest topic a V1 record carries; longer topics switch to V2, as Java's
/// `autoMessageVersionOnTopicLen` does.
pub const MAX_TOPIC_LEN_V1: usize = 127;

/// Position of STORETIMESTAMP (i64) in a record with this sysFlag.
#[inline]
pub fn store_timestamp_pos(sys_flag: i32) -> usize {
    BORN_HOST_POS + sysflag::born_host_len(sys_flag)
}

/// Position of STOREHOST in a record with this sysFlag.
#[inline]
pub fn store_host_pos(sys_flag: i32) -> usize {
    store_timestamp_pos(sys_flag) + 8
}

/// Position of RECONSUMETIMES (i32) in a record with this sysFlag.
#[inline]
pub fn reconsume_times_pos(sys_flag: i32) -> usize {
    store_host_pos(sys_flag) + sysflag::store_host_len(sys_flag)
}

/// Position of PREPAREDTRANSACTIONOFFSET (i64) in a record with this sysFlag.
#[inline]
pub fn prepared_transaction_offset_pos(sys_flag: i32) -> usize {
    reconsume_times_pos(sys_flag) + 4
}

/// Position of the BODY length (i32) in a record with this sysFlag
/// (84 for IPv4/IPv4).
#[inline]
pub fn body_len_pos(sys_flag: i32) -> usize {
    prepared_transaction_offset_pos(sys_flag) + 8
}

/// Record layout version, chosen by topic length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageVersion {
    /// 1-byte topic length.
    V1,
    /// 2-byte topic length (topics longer than 127 bytes).
    V2,
}

impl MessageVersion {
    pub fn magic_code(self) -> i32 {
        match self {
            MessageVersion::V1 => MAGIC_CODE_V1,
            MessageVersion::V2 => MAGIC_CODE_V2,
        }
    }

    pub fn from_magic_code(magic: i32) -> Option<Self> {
        match magic {
            MAGIC_CODE_V1 => Some(MessageVersion::V1),
            MAGIC_CODE_V2 => Some(MessageVersion::V2),
            _ => None,
        }
    }

    /// Bytes used by the TOPIC length prefix.
    pub fn topic_len_size(self) -> usize {
        match self {
            MessageVersion::V1 => 1,
            MessageVersion::V2 => 2,
        }
    }

    /// The version the broker writes for a topic of `topic_len` UTF-8 bytes.
    pub fn for_topic_len(topic_len: usize) -> Self {
        if topic_len > MAX_TOPIC_LEN_V1 {
            MessageVersion::V2
        } else {
            MessageVersion::V1
        }
    }
}

/// BODYCRC as Java's `UtilAll.crc32`: IEEE CRC-32 masked to 31 bits.
#[inline]
pub fn body_crc(body: &[u8]) -> u32 {
    crc32fast::hash(body) & 0x7FFF_FFFF
}

/// Total record size for these content lengths and sysFlag (host bits).
pub fn record_size(
    body_len: usize,
    topic_len: usize,
    properties_len: usize,
    sys_flag: i32,
) -> usize {
    let version = MessageVersion::for_topic_len(topic_len);
    body_len_pos(sys_flag)
        + 4
        + body_len
        + version.topic_len_size()
        + topic_len
        + 2
        + properties_len
}

/// Everything the broker knows about a message before it is appended
/// (Java `MessageExtBrokerInner` minus the fields the store assigns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageToStore {
    pub topic: String,
    pub queue_id: i32,
    /// User flag from the producer.
    pub flag: i32,
    /// Stored as is (compressed if `sys_flag` says so).
    pub body: Bytes,
    /// Properties string (reference 6.1), at most 32767 bytes.
    pub properties: String,
    /// sysFlag; the two host-v6 bits are recomputed from the addresses.
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub born_host: SocketAddr,
    pub store_host: SocketAddr,
    pub reconsume_times: i32,
    pub prepared_transaction_offset: i64,
    /// Consume-queue tags code (not part of the record).
    pub tags_code: i64,
}

impl MessageToStore {
    /// sysFlag as written: host-v6 bits follow the address families
    /// (IPv4-mapped IPv6 addresses count as IPv4 and are written as such).
    pub fn effective_sys_flag(&self) -> i32 {
        let mut f = self.sys_flag & !(sysflag::BORNHOST_V6 | sysflag::STOREHOSTADDRESS_V6);
        if canonical_ip(self.born_host.ip()).is_ipv6() {
            f |= sysflag::BORNHOST_V6;
        }
        if canonical_ip(self.store_host.ip()).is_ipv6() {
            f |= sysflag::STOREHOSTADDRESS_V6;
        }
        f
    }

    pub fn version(&self) -> MessageVersion {
        MessageVersion::for_topic_len(self.topic.len())
    }

    /// Position of STORETIMESTAMP in this message's record (56 or 68).
    pub fn store_timestamp_pos(&self) -> usize {
        store_timestamp_pos(self.effective_sys_flag())
    }

    /// The tags code Java would compute from the TAGS property (0 if none).
    pub fn tags_code_from_properties(&self) -> i64 {
        properties::get(&self.properties, keys::TAGS)
            .map(super::tags::tags_hash_code)
            .unwrap_or(0)
    }
}

/// Size in bytes of the record [`encode_stored`] writes for `msg`.
pub fn stored_size(msg: &MessageToStore) -> usize {
    record_size(
        msg.body.len(),
        msg.topic.len(),
        msg.properties.len(),
        msg.effective_sys_flag(),
    )
}

fn check_encodable(msg: &MessageToStore) -> Result<usize> {
    if msg.topic.is_empty() || msg.topic.len() > MAX_TOPIC_LEN_V2 {
        return Err(ProtocolError::InvalidTopic(format!(
            "topic length {} is outside 1..={MAX_TOPIC_LEN_V2}",
            msg.topic.len()
        )));
    }
    properties::check_len(&msg.properties)?;
    let size = stored_size(msg);
    if size > i32::MAX as usize {
        return Err(ProtocolError::InvalidBody(format!(
            "record of {size} bytes does not fit a 32-bit length"
        )));
    }
    Ok(size)
}

/// Appends the complete record for `msg` to `dst` and returns its size.
///
/// QUEUEOFFSET, PHYSICALOFFSET and STORETIMESTAMP are written as 0; the store
/// sets them with [`patch_stored`] (or by writing big-endian i64s at
/// [`QUEUE_OFFSET_POS`], [`PHYSICAL_OFFSET_POS`] and
/// [`MessageToStore::store_timestamp_pos`]). BODYCRC is computed here.
pub fn encode_stored(msg: &MessageToStore, dst: &mut BytesMut) -> Result<usize> {
    let size = check_encodable(msg)?;
    dst.reserve(size);
    write_record(msg, size, dst);
    Ok(size)
}

/// Like [`encode_stored`] but into a caller-provided slice (e.g. a mapped
/// file region); `dst` must hold at least [`stored_size`] bytes.
pub fn encode_stored_into(msg: &MessageToStore, dst: &mut [u8]) -> Result<usize> {
    let size = check_encodable(msg)?;
    let Some(mut out) = dst.get_mut(..size) else {
        return Err(ProtocolError::InvalidBody(format!(
            "destination of {} bytes is smaller than the {size}-byte record",
            dst.len()
        )));
    };
    write_record(msg, size, &mut out);
    Ok(size)
}

fn write_record<B: BufMut>(msg: &MessageToStore, size: usize, dst: &mut B) {
    let sys_flag = msg.effective_sys_flag();
    let version = msg.version();
    dst.put_i32(size as i32);
    dst.put_i32(version.magic_code());
    dst.put_u32(body_crc(&msg.body));
    dst.put_i32(msg.queue_id);
    dst.put_i32(msg.flag);
    dst.put_i64(0); // QUEUEOFFSET, patched at append
    dst.put_i64(0); // PHYSICALOFFSET, patched at append
    dst.put_i32(sys_flag);
    dst.put_i64(msg.born_timestamp);
    put_host(dst, msg.born_host);
    dst.put_i64(0); // STORETIMESTAMP, patched at append
    put_host(dst, msg.store_host);
    dst.put_i32(msg.reconsume_times);
    dst.put_i64(msg.prepared_transaction_offset);
    dst.put_i32(msg.body.len() as i32);
    dst.put_slice(&msg.body);
    match version {
        MessageVersion::V1 => dst.put_u8(msg.topic.len() as u8),
        MessageVersion::V2 => dst.put_i16(msg.topic.len() as i16),
    }
    dst.put_slice(msg.topic.as_bytes());
    dst.put_i16(msg.properties.len() as i16);
    dst.put_slice(msg.properties.as_bytes());
}

/// Writes the store-assigned fields into an encoded record in place.
pub fn patch_stored(
    record: &mut [u8],
    queue_offset: i64,
    physical_offset: i64,
    store_timestamp: i64,
) -> Result<()> {
    let sys_flag = read_i32(record, SYS_FLAG_POS)?;
    let ts = store_timestamp_pos(sys_flag);
    if record.len() < body_len_pos(sys_flag) {
        return Err(truncated("record header"));
    }
    record[QUEUE_OFFSET_POS..QUEUE_OFFSET_POS + 8].copy_from_slice(&queue_offset.to_be_bytes());
    record[PHYSICAL_OFFSET_POS..PHYSICAL_OFFSET_POS + 8]
        .copy_from_slice(&physical_offset.to_be_bytes());
    record[ts..ts + 8].copy_from_slice(&store_timestamp.to_be_bytes());
    Ok(())
}

fn put_host<B: BufMut>(dst: &mut B, addr: SocketAddr) {
    match canonical_ip(addr.ip()) {
        IpAddr::V4(ip) => dst.put_slice(&ip.octets()),
        IpAddr::V6(ip) => dst.put_slice(&ip.octets()),
    }
    dst.put_i32(i32::from(addr.port()));
}

/// IPv4-mapped IPv6 addresses become plain IPv4 (old clients only read IPv4).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// What the first 8 bytes of a CommitLog position hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordHeader {
    /// A message record of `total_size` bytes.
    Message {
        total_size: usize,
        version: MessageVersion,
    },
    /// End-of-file filler: skip `total_size` bytes to the next file.
    Blank { total_size: usize },
}

/// TOTALSIZE of the record at the start of `buf`, if 4 bytes are there and
/// the value is positive. Does not look at anything else.
#[inline]
pub fn peek_total_size(buf: &[u8]) -> Option<usize> {
    let v = i32::from_be_bytes(buf.get(..4)?.try_into().ok()?);
    usize::try_from(v).ok().filter(|&n| n > 0)
}

/// Reads TOTALSIZE and MAGICCODE (needs 8 bytes).
pub fn peek_header(buf: &[u8]) -> Result<RecordHeader> {
    let size = read_i32(buf, TOTAL_SIZE_POS)?;
    let magic = read_i32(buf, MAGIC_CODE_POS)?;
    let total_size = usize::try_from(size)
        .ok()
        .filter(|&n| n >= 8)
        .ok_or_else(|| malformed(format!("TOTALSIZE {size} is not a valid length")))?;
    if magic == BLANK_MAGIC_CODE {
        return Ok(RecordHeader::Blank { total_size });
    }
    match MessageVersion::from_magic_code(magic) {
        Some(version) => Ok(RecordHeader::Message {
            total_size,
            version,
        }),
        None => Err(malformed(format!(
            "unknown magic code {:#010x}",
            magic as u32
        ))),
    }
}

/// A validated record borrowed from its buffer; nothing is copied except a
/// properties string that is not valid UTF-8 (then repaired lossily).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo<'a> {
    pub total_size: usize,
    pub version: MessageVersion,
    pub body_crc: u32,
    pub queue_id: i32,
    pub flag: i32,
    pub queue_offset: i64,
    pub physical_offset: i64,
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub born_host: SocketAddr,
    pub store_timestamp: i64,
    pub store_host: SocketAddr,
    pub reconsume_times: i32,
    pub prepared_transaction_offset: i64,
    /// Byte offset of BODY within the record (for zero-copy slicing).
    pub body_pos: usize,
    pub body: &'a [u8],
    pub topic: &'a str,
    pub properties: Cow<'a, str>,
}

impl<'a> RecordInfo<'a> {
    /// A property by name without building a map.
    pub fn property(&self, name: &str) -> Option<&str> {
        properties::get(&self.properties, name)
    }

    /// Offset message id (store host + physical offset, reference 7.1).
    pub fn offset_msg_id(&self) -> String {
        id::offset_msg_id(self.store_host, self.physical_offset)
    }

    /// The tags code for the consume queue (0 without TAGS).
    pub fn tags_code(&self) -> i64 {
        self.property(keys::TAGS)
            .map(super::tags::tags_hash_code)
            .unwrap_or(0)
    }

    /// An owned copy ready to be stored again (retry / DLQ / schedule
    /// copies keep body, sysFlag and properties byte for byte).
    pub fn to_message_to_store(&self) -> MessageToStore {
        MessageToStore {
            topic: self.topic.to_owned(),
            queue_id: self.queue_id,
            flag: self.flag,
            body: Bytes::copy_from_slice(self.body),
            properties: self.properties.clone().into_owned(),
            sys_flag: self.sys_flag,
            born_timestamp: self.born_timestamp,
            born_host: self.born_host,
            store_host: self.store_host,
            reconsume_times: self.reconsume_times,
            prepared_transaction_offset: self.prepared_transaction_offset,
            tags_code: self.tags_code(),
        }
    }
}

/// Validates the record at the start of `buf` (magic, every length against
/// TOTALSIZE and the buffer, fields exactly filling TOTALSIZE, and BODYCRC
/// if asked) and returns a borrowed view. A BLANK filler is an error here;
/// use [`peek_header`] to tell it apart.
pub fn check_record(buf: &[u8], verify_crc: bool) -> Result<RecordInfo<'_>> {
    let (total_size, version) = match peek_header(buf)? {
        RecordHeader::Message {
            total_size,
            version,
        } => (total_size, version),
        RecordHeader::Blank { .. } => return Err(malformed("BLANK filler, not a message".into())),
    };
    let rec = buf.get(..total_size).ok_or_else(|| {
        truncated_owned(format!(
            "record of {total_size} bytes but only {} available",
            buf.len()
        ))
    })?;
    let mut r = Reader { buf: rec, pos: 8 };
    let body_crc = r.u32()?;
    let queue_id = r.i32()?;
    let flag = r.i32()?;
    let queue_offset = r.i64()?;
    let physical_offset = r.i64()?;
    let sys_flag = r.i32()?;
    let born_timestamp = r.i64()?;
    let born_host = r.host(sys_flag & sysflag::BORNHOST_V6 != 0)?;
    let store_timestamp = r.i64()?;
    let store_host = r.host(sys_flag & sysflag::STOREHOSTADDRESS_V6 != 0)?;
    let reconsume_times = r.i32()?;
    let prepared_transaction_offset = r.i64()?;
    let body_len = r.len_i32("BODY")?;
    let body_pos = r.pos;
    let body = r.bytes(body_len, "BODY")?;
    let topic_len = match version {
        MessageVersion::V1 => usize::from(r.u8()?),
        MessageVersion::V2 => r.len_i16("TOPIC")?,
    };
    let topic = std::str::from_utf8(r.bytes(topic_len, "TOPIC")?)
        .map_err(|_| malformed("TOPIC is not valid UTF-8".into()))?;
    let props_len = r.len_i16("PROPERTIES")?;
    let props = String::from_utf8_lossy(r.bytes(props_len, "PROPERTIES")?);
    if r.pos != total_size {
        return Err(malformed(format!(
            "fields end at byte {} but TOTALSIZE is {total_size}",
            r.pos
        )));
    }
    if verify_crc {
        let actual = self::body_crc(body);
        if actual != body_crc {
            return Err(malformed(format!(
                "BODYCRC mismatch: stored {body_crc:#x}, computed {actual:#x}"
            )));
        }
    }
    Ok(RecordInfo {
        total_size,
        version,
        body_crc,
        queue_id,
        flag,
        queue_offset,
        physical_offset,
        sys_flag,
        born_timestamp,
        born_host,
        store_timestamp,
        store_host,
        reconsume_times,
        prepared_transaction_offset,
        body_pos,
        body,
        topic,
        properties: props,
    })
}

/// Iterates over concatenated records, borrowing; stops after the first
/// error (which it yields) or at the end of the buffer.
pub fn iter_records(buf: &[u8], verify_crc: bool) -> RecordIter<'_> {
    RecordIter {
        buf,
        pos: 0,
        verify_crc,
        failed: false,
    }
}

/// See [`iter_records`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    buf: &'a [u8],
    pos: usize,
    verify_crc: bool,
    failed: bool,
}

impl<'a> RecordIter<'a> {
    /// Byte offset of the next record within the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordInfo<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = self.buf.get(self.pos..)?;
        match check_record(rest, self.verify_crc) {
            Ok(info) => {
                self.pos += info.total_size;
                Some(Ok(info))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// An owned decoded record (Java `MessageExt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedMessage {
    pub store_size: usize,
    pub version: MessageVersion,
    pub body_crc: u32,
    pub queue_id: i32,
    pub flag: i32,
    pub queue_offset: i64,
    pub physical_offset: i64,
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub born_host: SocketAddr,
    pub store_timestamp: i64,
    pub store_host: SocketAddr,
    pub reconsume_times: i32,
    pub prepared_transaction_offset: i64,
    pub topic: String,
    /// As stored: still compressed if `sys_flag` has COMPRESSED.
    pub body: Bytes,
    /// The properties string as stored (keeps pair order).
    pub properties_raw: String,
    pub properties: HashMap<String, String>,
}

impl DecodedMessage {
    fn from_info(info: &RecordInfo<'_>, body: Bytes) -> Self {
        DecodedMessage {
            store_size: info.total_size,
            version: info.version,
            body_crc: info.body_crc,
            queue_id: info.queue_id,
            flag: info.flag,
            queue_offset: info.queue_offset,
            physical_offset: info.physical_offset,
            sys_flag: info.sys_flag,
            born_timestamp: info.born_timestamp,
            born_host: info.born_host,
            store_timestamp: info.store_timestamp,
            store_host: info.store_host,
            reconsume_times: info.reconsume_times,
            prepared_transaction_offset: info.prepared_transaction_offset,
            topic: info.topic.to_owned(),
            body,
            properties_raw: info.properties.clone().into_owned(),
            properties: properties::decode(&info.properties),
        }
    }

    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }

    pub fn tags(&self) -> Option<&str> {
        self.property(keys::TAGS)
    }

    /// Business keys (`KEYS` split on spaces, empty entries dropped).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.property(keys::KEYS)
            .unwrap_or("")
            .split(keys::KEY_SEPARATOR)
            .filter(|k| !k.is_empty())
    }

    /// Offset message id (reference 7.1).
    pub fn offset_msg_id(&self) -> String {
        id::offset_msg_id(self.store_host, self.physical_offset)
    }

    /// The id Java consumers show: UNIQ_KEY, else the offset id.
    pub fn msg_id(&self) -> String {
        match self.property(keys::UNIQ_KEY) {
            Some(u) => u.to_owned(),
            None => self.offset_msg_id(),
        }
    }

    /// Inflates a compressed body in place (at most `max_len` bytes) and
    /// clears COMPRESSED, as Java consumers do; a no-op otherwise.
    pub fn decompress(&mut self, max_len: usize) -> Result<()> {
        if let Some(kind) = compress::CompressionType::from_sys_flag(self.sys_flag) {
            let inflated = compress::decompress(kind, &self.body, max_len)?;
            self.body = Bytes::from(inflated);
            self.sys_flag = sysflag::clear_compressed_flag(self.sys_flag);
        }
        Ok(())
    }

    /// A copy ready to be stored again (keeps body and sysFlag unchanged).
    pub fn to_message_to_store(&self) -> MessageToStore {
        MessageToStore {
            topic: self.topic.clone(),
            queue_id: self.queue_id,
            flag: self.flag,
            body: self.body.clone(),
            properties: self.properties_raw.clone(),
            sys_flag: self.sys_flag,
            born_timestamp: self.born_timestamp,
            born_host: self.born_host,
            store_host: self.store_host,
            reconsume_times: self.reconsume_times,
            prepared_transaction_offset: self.prepared_transaction_offset,
            tags_code: self.tags().map(super::tags::tags_hash_code).unwrap_or(0),
        }
    }
}

/// Decodes the record at the start of `buf` (body copied) and returns it
/// with the number of bytes it occupied.
pub fn decode_stored(buf: &[u8], verify_crc: bool) -> Result<(DecodedMessage, usize)> {
    let info = check_record(buf, verify_crc)?;
    let body = Bytes::copy_from_slice(info.body);
    Ok((DecodedMessage::from_info(&info, body), info.total_size))
}

/// Like [`decode_stored`] but the body is a zero-copy slice of `buf`.
pub fn decode_stored_bytes(buf: &Bytes, verify_crc: bool) -> Result<(DecodedMessage, usize)> {
    let info = check_record(buf, verify_crc)?;
    let body = buf.slice(info.body_pos..info.body_pos + info.body.len());
    Ok((DecodedMessage::from_info(&info, body), info.total_size))
}

/// Decodes concatenated records (a pull/query body) the way Java clients
/// do: until the buffer ends or a record fails to decode; what decoded
/// before the failure is returned. Bodies are zero-copy slices.
pub fn decode_stored_many(buf: &Bytes, verify_crc: bool) -> Vec<DecodedMessage> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match decode_stored_bytes(&buf.slice(pos..), verify_crc) {
            Ok((msg, n)) => {
                pos += n;
                out.push(msg);
            }
            Err(_) => break,
        }
    }
    out
}

/// Like [`decode_stored_many`] but any undecodable byte is an error.
pub fn decode_stored_many_strict(buf: &Bytes, verify_crc: bool) -> Result<Vec<DecodedMessage>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let (msg, n) = decode_stored_bytes(&buf.slice(pos..), verify_crc)?;
        pos += n;
        out.push(msg);
    }
    Ok(out)
}

fn read_i32(buf: &[u8], pos: usize) -> Result<i32> {
    buf.get(pos..pos + 4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_be_bytes)
        .ok_or_else(|| truncated("record header"))
}

fn malformed(msg: String) -> ProtocolError {
    ProtocolError::MalformedMessage(msg)
}

fn truncated(what: &str) -> ProtocolError {
    ProtocolError::MalformedMessage(format!("truncated {what}"))
}

fn truncated_owned(msg: String) -> ProtocolError {
    ProtocolError::MalformedMessage(msg)
}

/// Bounds-checked big-endian reader over one record.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                malformed(format!(
                    "{what} of {n} bytes at {} overruns the {}-byte record",
                    self.pos,
                    self.buf.len()
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.bytes(N, "field")?;
        s.try_into().map_err(|_| truncated("field"))
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(crate) fn len_i32(&mut self, what: &str) -> Result<usize> {
        let v = self.i32()?;
        usize::try_from(v).map_err(|_| malformed(format!("{what} length {v} is negative")))
    }

    pub(crate) fn len_i16(&mut self, what: &str) -> Result<usize> {
        let v = self.i16()?;
        usize::try_from(v).map_err(|_| malformed(format!("{what} length {v} is negative")))
    }

    fn host(&mut self, v6: bool) -> Result<SocketAddr> {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))
        };
        let port = self.i32()?;
        let port =
            u16::try_from(port).map_err(|_| malformed(format!("port {port} out of range")))?;
        Ok(SocketAddr::new(ip, port))
    }
}
