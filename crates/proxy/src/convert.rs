//! Conversions between remoting records and the gRPC message shapes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

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
    hex(crc32fast::hash(body), HEX_UPPER, 1)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// `v` in hex, at least `min_digits` long. Written by hand: `format!` costs
/// several times as much, once per delivered message.
fn hex(v: u32, digits: &[u8; 16], min_digits: usize) -> String {
    let len = (32 - v.leading_zeros() as usize)
        .div_ceil(4)
        .max(min_digits.max(1));
    (0..len)
        .rev()
        .map(|i| char::from(digits[((v >> (4 * i)) & 0xF) as usize]))
        .collect()
}

/// The body digest in the form the client's own check expects. The official
/// clients disagree on how a CRC32 is written (Java: upper-case hex; Go:
/// lower-case hex; Python: eight upper-case hex digits; Node.js: decimal),
/// and a mismatch makes them drop the message as corrupted, so the form
/// follows the language the client named in its Settings.
pub fn body_digest(lang: pb::Language, body: &[u8]) -> pb::Digest {
    let crc = crc32fast::hash(body);
    let checksum = match lang {
        pb::Language::Golang => hex(crc, HEX_LOWER, 1),
        pb::Language::Python => hex(crc, HEX_UPPER, 8),
        pb::Language::NodeJs => crc.to_string(),
        _ => hex(crc, HEX_UPPER, 1),
    };
    pb::Digest {
        r#type: pb::DigestType::Crc32 as i32,
        checksum,
    }
}

/// Host strings of the messages of one batch: they mostly share their born
/// and store hosts, and a copy is cheaper than formatting each again.
#[derive(Default)]
pub struct Hosts {
    born: Option<(IpAddr, String)>,
    store: Option<(SocketAddr, String)>,
}

impl Hosts {
    fn born(&mut self, addr: &SocketAddr) -> String {
        let ip = addr.ip();
        match &self.born {
            Some((last, s)) if *last == ip => s.clone(),
            _ => {
                let s = ip.to_string();
                self.born = Some((ip, s.clone()));
                s
            }
        }
    }

    fn store(&mut self, addr: &SocketAddr) -> String {
        match &self.store {
            Some((last, s)) if last == addr => s.clone(),
            _ => {
                let s = addr.to_string();
                self.store = Some((*addr, s.clone()));
                s
            }
        }
    }
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
    m: DecodedMessage,
    topic: pb::Resource,
    invisible_ms: Option<i64>,
    lang: pb::Language,
) -> pb::Message {
    to_pb_message_in(m, topic, invisible_ms, lang, &mut Hosts::default())
}

/// The properties a gRPC message shows as system properties (or that decide
/// them), moved out of the record's map in one pass: looking each up would
/// hash its name again, and copying would allocate.
#[derive(Default)]
struct SystemValues {
    tag: Option<String>,
    keys: Option<String>,
    uniq_key: Option<String>,
    receipt: Option<String>,
    sharding_key: Option<String>,
    trace_context: Option<String>,
    deliver_ms: Option<String>,
    timer_out_ms: Option<String>,
    prepared: bool,
    delayed: bool,
}

/// Splits the record's properties into the system values and the user's.
fn split_properties(props: HashMap<String, String>) -> (SystemValues, HashMap<String, String>) {
    let mut sys = SystemValues::default();
    let mut user = HashMap::new();
    for (k, v) in props {
        match k.as_str() {
            keys::TAGS => sys.tag = Some(v),
            keys::KEYS => sys.keys = Some(v),
            keys::UNIQ_KEY => sys.uniq_key = Some(v),
            keys::POP_CK => sys.receipt = Some(v),
            keys::SHARDING_KEY => sys.sharding_key = Some(v),
            keys::TRACE_CONTEXT => sys.trace_context = Some(v),
            keys::TIMER_DELIVER_MS => sys.deliver_ms = Some(v),
            keys::TIMER_OUT_MS => sys.timer_out_ms = Some(v),
            keys::TRANSACTION_PREPARED => sys.prepared = v == "true",
            keys::TIMER_DELAY_SEC | keys::DELAY_TIME_LEVEL => sys.delayed = true,
            name if SYSTEM_KEYS.contains(&name) => {}
            _ => {
                user.insert(k, v);
            }
        }
    }
    (sys, user)
}

/// Business keys (`KEYS` split on spaces, empty entries dropped); a single
/// key keeps its string.
fn split_keys(raw: Option<String>) -> Vec<String> {
    match raw {
        None => Vec::new(),
        Some(k) if !k.contains(keys::KEY_SEPARATOR) => {
            if k.is_empty() {
                Vec::new()
            } else {
                vec![k]
            }
        }
        Some(k) => k
            .split(keys::KEY_SEPARATOR)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

/// [`to_pb_message`] for one message of a batch, sharing `hosts`.
pub fn to_pb_message_in(
    mut m: DecodedMessage,
    topic: pb::Resource,
    invisible_ms: Option<i64>,
    lang: pb::Language,
    hosts: &mut Hosts,
) -> pb::Message {
    if m.decompress(MAX_INFLATED).is_err() {
        // Handed over as stored; the digest below still matches the bytes.
        tracing::warn!(topic = %m.topic, "cannot inflate a compressed body");
    }
    let (sys, user) = split_properties(std::mem::take(&mut m.properties));
    // As message_type_of decides it.
    let ty = if sys.prepared {
        pb::MessageType::Transaction
    } else if sys.sharding_key.is_some() {
        pb::MessageType::Fifo
    } else if sys.deliver_ms.is_some() || sys.delayed {
        pb::MessageType::Delay
    } else {
        pb::MessageType::Normal
    };
    // Before delivery the timer property; after, the due time the timer
    // leaves (TIMER_OUT_MS).
    let delivery = sys
        .deliver_ms
        .as_deref()
        .or(sys.timer_out_ms.as_deref())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map(timestamp);
    let message_id = match sys.uniq_key {
        Some(u) => u,
        None => m.offset_msg_id(),
    };
    let props = pb::SystemProperties {
        tag: sys.tag,
        keys: split_keys(sys.keys),
        message_id,
        body_digest: Some(body_digest(lang, &m.body)),
        body_encoding: pb::Encoding::Identity as i32,
        message_type: ty as i32,
        born_timestamp: Some(timestamp(m.born_timestamp)),
        born_host: hosts.born(&m.born_host),
        store_timestamp: Some(timestamp(m.store_timestamp)),
        store_host: hosts.store(&m.store_host),
        delivery_timestamp: delivery,
        receipt_handle: sys.receipt,
        queue_id: m.queue_id,
        queue_offset: Some(m.queue_offset),
        invisible_duration: invisible_ms.map(duration),
        delivery_attempt: Some(m.reconsume_times.saturating_add(1)),
        message_group: sys.sharding_key,
        trace_context: sys.trace_context,
        ..Default::default()
    };
    pb::Message {
        topic: Some(topic),
        user_properties: user,
        system_properties: Some(props),
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

    fn record(props: &[(&str, &str)]) -> DecodedMessage {
        let raw = apogee_protocol::message::properties::encode(props.iter().copied());
        DecodedMessage {
            store_size: 0,
            version: apogee_protocol::message::MessageVersion::V1,
            body_crc: 0,
            queue_id: 3,
            flag: 0,
            queue_offset: 42,
            physical_offset: 1234,
            sys_flag: 0,
            born_timestamp: 1_700_000_000_001,
            born_host: "10.0.0.7:5555".parse().unwrap(),
            store_timestamp: 1_700_000_000_002,
            store_host: "10.0.0.8:10911".parse().unwrap(),
            reconsume_times: 2,
            prepared_transaction_offset: 0,
            topic: "T".into(),
            body: bytes::Bytes::from_static(b"hello"),
            properties: apogee_protocol::message::properties::decode(&raw),
            properties_raw: raw,
        }
    }

    #[test]
    fn system_and_user_properties_are_split() {
        let m = record(&[
            (keys::TAGS, "tagA"),
            (keys::KEYS, "k1  k2"),
            (keys::UNIQ_KEY, "ABCDEF"),
            (keys::POP_CK, "42 1 2 3 0 b 3 42"),
            (keys::TRACE_CONTEXT, "tc"),
            (keys::TIMER_OUT_MS, "1700000005000"),
            (keys::WAIT_STORE_MSG_OK, "true"),
            (keys::MIN_OFFSET, "0"),
            ("color", "blue"),
        ]);
        let want_type = message_type_of(&m);
        let resource = pb::Resource {
            name: "T".into(),
            ..Default::default()
        };
        let pm = to_pb_message(m, resource, Some(30_000), pb::Language::Java);
        assert_eq!(pm.user_properties.len(), 1);
        assert_eq!(pm.user_properties["color"], "blue");
        let s = pm.system_properties.unwrap();
        assert_eq!(s.message_type, want_type as i32);
        assert_eq!(s.message_type, pb::MessageType::Normal as i32);
        assert_eq!(s.tag.as_deref(), Some("tagA"));
        assert_eq!(s.keys, ["k1", "k2"]);
        assert_eq!(s.message_id, "ABCDEF");
        assert_eq!(s.receipt_handle.as_deref(), Some("42 1 2 3 0 b 3 42"));
        assert_eq!(s.trace_context.as_deref(), Some("tc"));
        assert_eq!(s.message_group, None);
        assert_eq!(s.delivery_timestamp, Some(timestamp(1_700_000_005_000)));
        assert_eq!(s.born_host, "10.0.0.7");
        assert_eq!(s.store_host, "10.0.0.8:10911");
        assert_eq!(s.delivery_attempt, Some(3));
        assert_eq!(s.body_digest.unwrap().checksum, "3610A686");
        assert_eq!(&pm.body[..], b"hello");

        // Without UNIQ_KEY the offset id; the type as message_type_of says.
        for (props, ty) in [
            (vec![(keys::SHARDING_KEY, "g")], pb::MessageType::Fifo),
            (
                vec![(keys::TRANSACTION_PREPARED, "true")],
                pb::MessageType::Transaction,
            ),
            (
                vec![(keys::TRANSACTION_PREPARED, "false")],
                pb::MessageType::Normal,
            ),
            (vec![(keys::DELAY_TIME_LEVEL, "3")], pb::MessageType::Delay),
            (vec![(keys::TIMER_DELAY_SEC, "3")], pb::MessageType::Delay),
            (vec![(keys::TIMER_DELIVER_MS, "9")], pb::MessageType::Delay),
            (vec![(keys::KEYS, "one")], pb::MessageType::Normal),
        ] {
            let m = record(&props);
            assert_eq!(message_type_of(&m), ty);
            let offset_id = m.offset_msg_id();
            let pm = to_pb_message(m, pb::Resource::default(), None, pb::Language::Golang);
            let s = pm.system_properties.unwrap();
            assert_eq!(s.message_type, ty as i32, "{props:?}");
            assert_eq!(s.message_id, offset_id);
            assert!(pm.user_properties.is_empty());
            if ty == pb::MessageType::Fifo {
                assert_eq!(s.message_group.as_deref(), Some("g"));
            }
            if props[0].0 == keys::KEYS {
                assert_eq!(s.keys, ["one"]);
            }
        }
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
        assert_eq!(d(pb::Language::Python), "3610A686");
        assert_eq!(
            crc32_hex(b"\x00"),
            format!("{:X}", crc32fast::hash(b"\x00"))
        );
        assert_eq!(hex(0, HEX_UPPER, 8), "00000000");
        assert_eq!(hex(0xABC, HEX_LOWER, 1), "abc");
        assert_eq!(hex(u32::MAX, HEX_UPPER, 1), "FFFFFFFF");
        // A CRC below 0x10000000: Python pads to eight digits, Java does not.
        let small = (0u32..)
            .map(|i| i.to_le_bytes())
            .find(|b| crc32fast::hash(b) < 0x1000_0000)
            .unwrap_or_default();
        assert_eq!(body_digest(pb::Language::Python, &small).checksum.len(), 8);
        assert!(body_digest(pb::Language::Java, &small).checksum.len() < 8);
    }
}
