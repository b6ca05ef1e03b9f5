//! Conversions between remoting records and the gRPC message shapes.

use std::collections::HashMap;
use std::net::SocketAddr;

use apogee_protocol::message::{keys, DecodedMessage};
use prost_types::{Duration as PbDuration, Timestamp};

use crate::pb;

/// Properties the gRPC message carries in its system properties; every
/// other property is the user's.
pub(crate) const SYSTEM_KEYS: &[&str] = &[
    keys::TAGS,
    keys::KEYS,
    keys::UNIQ_KEY,
    keys::SHARDING_KEY,
    keys::TRACE_CONTEXT,
    keys::POP_CK,
    keys::POP_CK_OFFSET,
    keys::FIRST_POP_TIME,
    keys::TRANSACTION_PREPARED,
    keys::PRODUCER_GROUP,
    keys::TIMER_DELIVER_MS,
    keys::TIMER_DELAY_SEC,
    keys::TIMER_DELAY_MS,
    keys::TIMER_ENQUEUE_MS,
    keys::TIMER_DEQUEUE_MS,
    keys::TIMER_ROLL_TIMES,
    keys::TIMER_OUT_MS,
    keys::DELAY_TIME_LEVEL,
    keys::REAL_TOPIC,
    keys::REAL_QUEUE_ID,
    keys::RETRY_TOPIC,
    keys::ORIGIN_MESSAGE_ID,
    keys::RECONSUME_TIME,
    keys::MAX_RECONSUME_TIMES,
    keys::CONSUME_START_TIMESTAMP,
    keys::MSG_REGION,
    keys::TRACE_SWITCH,
    keys::WAIT_STORE_MSG_OK,
    keys::CHECK_IMMUNITY_TIME_IN_SECONDS,
    keys::TRANSACTION_CHECK_TIMES,
    keys::TRANSACTION_PREPARED_QUEUE_OFFSET,
    keys::TRANSACTION_ID,
    keys::CLUSTER,
    keys::MIN_OFFSET,
    keys::MAX_OFFSET,
    keys::BORN_HOST,
    keys::DUP_INFO,
];

/// Largest body inflated for a client (a bomb guard).
const MAX_INFLATED: usize = 64 * 1024 * 1024;

pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn timestamp_ms(t: &Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

pub fn duration(ms: i64) -> PbDuration {
    PbDuration {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Milliseconds of a protobuf duration; `None` when negative.
pub fn duration_ms(d: &PbDuration) -> Option<i64> {
    let ms = d
        .seconds
        .checked_mul(1000)?
        .checked_add(i64::from(d.nanos) / 1_000_000)?;
    (ms >= 0).then_some(ms)
}

/// The CRC32 digest as the Java client checks it: upper-case hex without
/// leading zeros.
pub fn crc32_hex(body: &[u8]) -> String {
    format!("{:X}", crc32fast::hash(body))
}

/// The body digest in the form the client's own check expects. The official
/// clients disagree on how a CRC32 is written (Java: upper-case hex; Go:
/// lower-case hex; Python: eight upper-case hex digits; Node.js: decimal),
/// and a mismatch makes them drop the message as corrupted, so the form
/// follows the language the client named in its Settings.
pub fn body_digest(lang: pb::Language, body: &[u8]) -> pb::Digest {
    let crc = crc32fast::hash(body);
    let checksum = match lang {
        pb::Language::Golang => format!("{crc:x}"),
        pb::Language::Python => format!("{crc:08X}"),
        pb::Language::NodeJs => crc.to_string(),
        _ => crc32_hex(body),
    };
    pb::Digest {
        r#type: pb::DigestType::Crc32 as i32,
        checksum,
    }
}

fn host(addr: &SocketAddr) -> String {
    addr.ip().to_string()
}

/// The message type a stored record was sent as.
pub fn message_type_of(m: &DecodedMessage) -> pb::MessageType {
    if m.property(keys::TRANSACTION_PREPARED) == Some("true") {
        pb::MessageType::Transaction
    } else if m.property(keys::SHARDING_KEY).is_some() {
        pb::MessageType::Fifo
    } else if m.property(keys::TIMER_DELIVER_MS).is_some()
        || m.property(keys::TIMER_DELAY_SEC).is_some()
        || m.property(keys::DELAY_TIME_LEVEL).is_some()
    {
        pb::MessageType::Delay
    } else {
        pb::MessageType::Normal
    }
}

/// A stored record as a gRPC message. `topic` is the name the client asked
/// for (a retry copy lives in `%RETRY%…` but is shown in its real topic).
pub fn to_pb_message(
    mut m: DecodedMessage,
    topic: pb::Resource,
    invisible_ms: Option<i64>,
    lang: pb::Language,
) -> pb::Message {
    if m.decompress(MAX_INFLATED).is_err() {
        // Handed over as stored; the digest below still matches the bytes.
        tracing::warn!(topic = %m.topic, "cannot inflate a compressed body");
    }
    let ty = message_type_of(&m);
    let mut user = HashMap::new();
    for (k, v) in &m.properties {
        if !SYSTEM_KEYS.contains(&k.as_str()) {
            user.insert(k.clone(), v.clone());
        }
    }
    // Before delivery the timer property; after, the due time the timer
    // leaves (TIMER_OUT_MS).
    let delivery = m
        .property(keys::TIMER_DELIVER_MS)
        .or_else(|| m.property(keys::TIMER_OUT_MS))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map(timestamp);
    let sys = pb::SystemProperties {
        tag: m.tags().map(str::to_owned),
        keys: m.keys().map(str::to_owned).collect(),
        message_id: m.msg_id(),
        body_digest: Some(body_digest(lang, &m.body)),
        body_encoding: pb::Encoding::Identity as i32,
        message_type: ty as i32,
        born_timestamp: Some(timestamp(m.born_timestamp)),
        born_host: host(&m.born_host),
        store_timestamp: Some(timestamp(m.store_timestamp)),
        store_host: m.store_host.to_string(),
        delivery_timestamp: delivery,
        receipt_handle: m.property(keys::POP_CK).map(str::to_owned),
        queue_id: m.queue_id,
        queue_offset: Some(m.queue_offset),
        invisible_duration: invisible_ms.map(duration),
        delivery_attempt: Some(m.reconsume_times.saturating_add(1)),
        message_group: m.property(keys::SHARDING_KEY).map(str::to_owned),
        trace_context: m.property(keys::TRACE_CONTEXT).map(str::to_owned),
        ..Default::default()
    };
    pb::Message {
        topic: Some(topic),
        user_properties: user,
        system_properties: Some(sys),
        body: std::mem::take(&mut m.body),
    }
}

/// Inflates a GZIP-encoded body from a client.
pub fn gunzip(body: &[u8], max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("body is not valid gzip: {e}"))?;
    if out.len() > max {
        return Err(format!("inflated body exceeds {max} bytes"));
    }
    Ok(out)
}

/// A pulled message (already inflated by the client crate) as a gRPC message.
pub fn ext_to_pb(
    m: apogee_client::MessageExt,
    topic: pb::Resource,
    lang: pb::Language,
) -> pb::Message {
    let d = DecodedMessage {
        store_size: m.store_size,
        version: apogee_protocol::message::MessageVersion::V1,
        body_crc: m.body_crc,
        queue_id: m.queue_id,
        flag: m.message.flag,
        queue_offset: m.queue_offset,
        physical_offset: m.commit_log_offset,
        sys_flag: m.sys_flag,
        born_timestamp: m.born_timestamp,
        born_host: m.born_host,
        store_timestamp: m.store_timestamp,
        store_host: m.store_host,
        reconsume_times: m.reconsume_times,
        prepared_transaction_offset: m.prepared_transaction_offset,
        topic: m.message.topic,
        body: m.message.body,
        properties_raw: String::new(),
        properties: m.message.properties,
    };
    to_pb_message(d, topic, None, lang)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1] {
            assert_eq!(timestamp_ms(&timestamp(ms)), ms);
        }
        assert_eq!(duration_ms(&duration(1500)), Some(1500));
        assert_eq!(
            duration_ms(&PbDuration {
                seconds: -1,
                nanos: 0
            }),
            None
        );
        assert_eq!(
            duration_ms(&PbDuration {
                seconds: i64::MAX,
                nanos: 0
            }),
            None
        );
    }

    #[test]
    fn crc_is_upper_hex_without_padding() {
        assert_eq!(crc32_hex(b""), "0");
        assert_eq!(crc32_hex(b"hello"), "3610A686");
        // Each client's own form, checked against what it computes.
        let d = |l| body_digest(l, b"hello").checksum;
        assert_eq!(d(pb::Language::Java), "3610A686");
        assert_eq!(d(pb::Language::Golang), "3610a686");
        assert_eq!(d(pb::Language::NodeJs), "907060870");
        // A CRC below 0x10000000: Python pads to eight digits, Java does not.
        let small = (0u32..)
            .map(|i| i.to_le_bytes())
            .find(|b| crc32fast::hash(b) < 0x1000_0000)
            .unwrap_or_default();
        assert_eq!(body_digest(pb::Language::Python, &small).checksum.len(), 8);
        assert!(body_digest(pb::Language::Java, &small).checksum.len() < 8);
    }
}
