//! Client batch encoding (reference 6.7): the SEND_BATCH_MESSAGE body, one
//! record per message (TOTALSIZE, MAGICCODE 0, BODYCRC 0, FLAG, BODY,
//! PROPERTIES). Decoding borrows from the body and is bounds-checked.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use super::properties;
use super::stored::Reader;
use crate::error::{ProtocolError, Result};

/// Bytes of a batch record besides body and properties contents.
pub const BATCH_RECORD_OVERHEAD: usize = 22;

/// One message of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchMessage {
    pub flag: i32,
    pub body: Bytes,
    /// This message's own properties string (its UNIQ_KEY, KEYS, TAGS…).
    pub properties: String,
}

/// Size of one batch record.
pub fn batch_record_size(body_len: usize, properties_len: usize) -> usize {
    BATCH_RECORD_OVERHEAD + body_len + properties_len
}

/// Appends the batch body for `msgs` to `dst`; returns the bytes written.
pub fn encode_batch(msgs: &[BatchMessage], dst: &mut BytesMut) -> Result<usize> {
    let mut total = 0usize;
    for m in msgs {
        properties::check_len(&m.properties)?;
        let size = batch_record_size(m.body.len(), m.properties.len());
        if size > i32::MAX as usize {
            return Err(ProtocolError::InvalidBody(format!(
                "batch record of {size} bytes does not fit a 32-bit length"
            )));
        }
        total = total.saturating_add(size);
    }
    dst.reserve(total);
    for m in msgs {
        let size = batch_record_size(m.body.len(), m.properties.len());
        dst.put_i32(size as i32);
        dst.put_i32(0); // MAGICCODE: ignored by the broker
        dst.put_i32(0); // BODYCRC: the broker computes it
        dst.put_i32(m.flag);
        dst.put_i32(m.body.len() as i32);
        dst.put_slice(&m.body);
        dst.put_i16(m.properties.len() as i16);
        dst.put_slice(m.properties.as_bytes());
    }
    Ok(total)
}

/// A batch record borrowed from the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord<'a> {
    pub flag: i32,
    /// Offset of BODY within the whole batch buffer (for zero-copy slicing).
    pub body_pos: usize,
    pub body: &'a [u8],
    pub properties: Cow<'a, str>,
}

/// Iterates over the records of a batch body; stops after the first error.
///
/// Like Java's `decodeMessages`, fields are read in sequence and TOTALSIZE
/// is not trusted for anything (clients differ in what they put there).
pub fn iter_batch(buf: &[u8]) -> BatchIter<'_> {
    BatchIter {
        r: Reader { buf, pos: 0 },
        failed: false,
    }
}

/// See [`iter_batch`].
pub struct BatchIter<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    fn read_one(&mut self) -> Result<BatchRecord<'a>> {
        let r = &mut self.r;
        let _total = r.i32()?;
        let _magic = r.i32()?;
        let _crc = r.i32()?;
        let flag = r.i32()?;
        let body_len = r.len_i32("BODY")?;
        let body_pos = r.pos;
        let body = r.bytes(body_len, "BODY")?;
        let props_len = r.len_i16("PROPERTIES")?;
        let props = String::from_utf8_lossy(r.bytes(props_len, "PROPERTIES")?);
        Ok(BatchRecord {
            flag,
            body_pos,
            body,
            properties: props,
        })
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<BatchRecord<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.pos >= self.r.buf.len() {
            return None;
        }
        let item = self.read_one();
        self.failed = item.is_err();
        Some(item)
    }
}

/// Decodes a whole batch body; any malformed record fails the batch (Java
/// rejects the request). Bodies are zero-copy slices of `buf`.
pub fn decode_batch(buf: &Bytes) -> Result<Vec<BatchMessage>> {
    let mut out = Vec::new();
    for rec in iter_batch(buf) {
        let rec = rec?;
        out.push(BatchMessage {
            flag: rec.flag,
            body: buf.slice(rec.body_pos..rec.body_pos + rec.body.len()),
            properties: rec.properties.into_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_layout() {
        let m = BatchMessage {
            flag: 3,
            body: Bytes::from_static(b"hi"),
            properties: "A\u{1}b\u{2}".into(),
        };
        let mut buf = BytesMut::new();
        assert_eq!(
            encode_batch(std::slice::from_ref(&m), &mut buf).unwrap(),
            28
        );
        let expected: &[u8] = &[
            0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, b'h', b'i', 0, 4, b'A', 1,
            b'b', 2,
        ];
        assert_eq!(&buf[..], expected);
        assert_eq!(decode_batch(&buf.freeze()).unwrap(), vec![m]);
    }

    #[test]
    fn truncated_batch_fails() {
        let m = BatchMessage {
            flag: 0,
            body: Bytes::from_static(b"body"),
            properties: String::new(),
        };
        let mut buf = BytesMut::new();
        encode_batch(&[m.clone(), m], &mut buf).unwrap();
        let b = buf.freeze();
        assert!(decode_batch(&b.slice(..b.len() - 1)).is_err());
        assert_eq!(decode_batch(&b).unwrap().len(), 2);
        assert!(decode_batch(&Bytes::new()).unwrap().is_empty());
    }
}
