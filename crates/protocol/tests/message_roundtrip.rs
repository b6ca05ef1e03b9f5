//! Round trips and fixed-layout checks for the message formats: properties,
//! stored records (V1/V2, IPv4/IPv6), batches, message ids; and garbage
//! inputs that must produce errors, never panics.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use apogee_protocol::message::stored::{
    self, body_len_pos, check_record, decode_stored, decode_stored_bytes, decode_stored_many,
    decode_stored_many_strict, encode_stored, encode_stored_into, iter_records, patch_stored,
    peek_header, peek_total_size, stored_size, MessageToStore, MessageVersion, RecordHeader,
    BLANK_MAGIC_CODE, MAGIC_CODE_V1, MAGIC_CODE_V2, PHYSICAL_OFFSET_POS, QUEUE_OFFSET_POS,
    STORE_TIMESTAMP_POS_V4, STORE_TIMESTAMP_POS_V6,
};
use apogee_protocol::message::{batch, compress, id, keys, properties, sysflag, tags};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

fn sample(topic: &str, born: SocketAddr, store: SocketAddr) -> MessageToStore {
    MessageToStore {
        topic: topic.to_owned(),
        queue_id: 3,
        flag: 7,
        body: Bytes::from_static(b"hello world"),
        properties: properties::encode([("TAGS", "TagA"), ("KEYS", "k1 k2"), ("UNIQ_KEY", "U1")]),
        sys_flag: sysflag::TRANSACTION_COMMIT_TYPE,
        born_timestamp: 1_700_000_000_000,
        born_host: born,
        store_host: store,
        reconsume_times: 2,
        prepared_transaction_offset: 99,
        tags_code: 0,
    }
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        port,
    )
}

#[test]
fn fixed_layout_v4_v1() {
    let msg = sample("T", v4([10, 0, 0, 1], 5000), v4([192, 168, 1, 2], 10911));
    let mut buf = BytesMut::new();
    let n = encode_stored(&msg, &mut buf).unwrap();
    // 91 fixed + 11 body + 1 topic + properties.
    assert_eq!(n, 91 + 11 + 1 + msg.properties.len());
    assert_eq!(n, stored_size(&msg));
    assert_eq!(buf.len(), n);
    let b = &buf[..];
    assert_eq!(&b[0..4], &(n as i32).to_be_bytes());
    assert_eq!(&b[4..8], &[0xDA, 0xA3, 0x20, 0xA7]);
    assert_eq!(&b[8..12], &stored::body_crc(b"hello world").to_be_bytes());
    assert_eq!(&b[12..16], &3i32.to_be_bytes());
    assert_eq!(&b[16..20], &7i32.to_be_bytes());
    assert_eq!(&b[20..36], &[0u8; 16], "offsets are placeholders");
    assert_eq!(&b[36..40], &8i32.to_be_bytes());
    assert_eq!(&b[40..48], &1_700_000_000_000i64.to_be_bytes());
    assert_eq!(&b[48..56], &[10, 0, 0, 1, 0, 0, 0x13, 0x88]);
    assert_eq!(&b[56..64], &[0u8; 8], "store timestamp placeholder");
    assert_eq!(&b[64..72], &[192, 168, 1, 2, 0, 0, 0x2A, 0x9F]);
    assert_eq!(&b[72..76], &2i32.to_be_bytes());
    assert_eq!(&b[76..84], &99i64.to_be_bytes());
    assert_eq!(&b[84..88], &11i32.to_be_bytes());
    assert_eq!(&b[88..99], b"hello world");
    assert_eq!(b[99], 1);
    assert_eq!(b[100], b'T');
    assert_eq!(&b[101..103], &(msg.properties.len() as i16).to_be_bytes());
    assert_eq!(&b[103..], msg.properties.as_bytes());
    assert_eq!(body_len_pos(0), 84);
}

#[test]
fn magic_codes_match_java() {
    // Java: 0xAABBCCDD ^ 1880681586 + 8 (V1) and + 4 (V2).
    assert_eq!(MAGIC_CODE_V1, -626_843_481);
    assert_eq!(MAGIC_CODE_V2, -626_843_477);
    assert_eq!(BLANK_MAGIC_CODE, -875_286_124);
    assert_eq!(QUEUE_OFFSET_POS, 20);
    assert_eq!(PHYSICAL_OFFSET_POS, 28);
}

#[test]
fn patch_then_decode_all_host_combinations() {
    let hosts = [
        (v4([1, 2, 3, 4], 1), v4([5, 6, 7, 8], 2)),
        (v6(1), v4([5, 6, 7, 8], 2)),
        (v4([1, 2, 3, 4], 1), v6(2)),
        (v6(1), v6(2)),
    ];
    for (born, store) in hosts {
        let msg = sample("TopicTest", born, store);
        let mut buf = BytesMut::new();
        let n = encode_stored(&msg, &mut buf).unwrap();
        let ts_pos = msg.store_timestamp_pos();
        let expected_ts = if born.is_ipv4() {
            STORE_TIMESTAMP_POS_V4
        } else {
            STORE_TIMESTAMP_POS_V6
        };
        assert_eq!(ts_pos, expected_ts);
        patch_stored(&mut buf, 42, 1 << 33, 1_700_000_000_123).unwrap();
        assert_eq!(
            &buf[ts_pos..ts_pos + 8],
            &1_700_000_000_123i64.to_be_bytes()
        );
        let (m, used) = decode_stored(&buf, true).unwrap();
        assert_eq!(used, n);
        assert_eq!(m.queue_offset, 42);
        assert_eq!(m.physical_offset, 1 << 33);
        assert_eq!(m.store_timestamp, 1_700_000_000_123);
        assert_eq!(m.born_host, born);
        assert_eq!(m.store_host, store);
        assert_eq!(m.sys_flag & sysflag::BORNHOST_V6 != 0, born.is_ipv6());
        assert_eq!(
            m.sys_flag & sysflag::STOREHOSTADDRESS_V6 != 0,
            store.is_ipv6()
        );
        assert_eq!(m.tags(), Some("TagA"));
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["k1", "k2"]);
        assert_eq!(m.msg_id(), "U1");
        let oid = m.offset_msg_id();
        assert_eq!(oid.len(), if store.is_ipv4() { 32 } else { 56 });
        assert_eq!(id::decode_offset_msg_id(&oid).unwrap(), (store, 1 << 33));
        assert_eq!(m.to_message_to_store().properties, msg.properties);
    }
}

#[test]
fn ipv4_mapped_hosts_are_stored_as_ipv4() {
    let mapped: SocketAddr = "[::ffff:10.1.2.3]:9876".parse().unwrap();
    let msg = sample("T", mapped, mapped);
    assert_eq!(msg.effective_sys_flag() & 0x30, 0);
    let mut buf = BytesMut::new();
    encode_stored(&msg, &mut buf).unwrap();
    let info = check_record(&buf, true).unwrap();
    assert_eq!(info.born_host, v4([10, 1, 2, 3], 9876));
}

#[test]
fn long_topic_uses_v2() {
    let topic = "t".repeat(200);
    let msg = sample(&topic, v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2));
    let mut buf = BytesMut::new();
    let n = encode_stored(&msg, &mut buf).unwrap();
    assert_eq!(n, 92 + 11 + 200 + msg.properties.len());
    assert_eq!(&buf[4..8], &MAGIC_CODE_V2.to_be_bytes());
    let info = check_record(&buf, true).unwrap();
    assert_eq!(info.version, MessageVersion::V2);
    assert_eq!(info.topic, topic);
    // Exactly 127 bytes is still V1.
    let msg = sample(&"t".repeat(127), v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2));
    let mut buf = BytesMut::new();
    encode_stored(&msg, &mut buf).unwrap();
    assert_eq!(
        check_record(&buf, true).unwrap().version,
        MessageVersion::V1
    );
}

#[test]
fn encode_refuses_bad_input() {
    let mut msg = sample("T", v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2));
    msg.properties = "a\u{1}".to_owned() + &"b".repeat(32_766) + "\u{2}";
    let mut buf = BytesMut::new();
    assert!(encode_stored(&msg, &mut buf).is_err());
    assert!(buf.is_empty(), "nothing written on error");
    msg.properties.clear();
    msg.topic.clear();
    assert!(encode_stored(&msg, &mut buf).is_err());
    msg.topic = "T".into();
    let mut small = [0u8; 10];
    assert!(encode_stored_into(&msg, &mut small).is_err());
    let mut big = vec![0u8; stored_size(&msg) + 5];
    let n = encode_stored_into(&msg, &mut big).unwrap();
    assert!(check_record(&big[..n], true).is_ok());
}

#[test]
fn crc_verification_detects_body_corruption() {
    let msg = sample("T", v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2));
    let mut buf = BytesMut::new();
    encode_stored(&msg, &mut buf).unwrap();
    buf[90] ^= 0xFF;
    assert!(check_record(&buf, true).is_err());
    assert!(check_record(&buf, false).is_ok());
}

#[test]
fn crc_is_masked_java_crc32() {
    // java.util.zip.CRC32 of "123456789" is 0xCBF43926; masked to 31 bits.
    assert_eq!(stored::body_crc(b"123456789"), 0xCBF4_3926 & 0x7FFF_FFFF);
    assert_eq!(stored::body_crc(b""), 0);
}

#[test]
fn blank_filler_and_peeks() {
    let mut blank = Vec::new();
    blank.extend_from_slice(&64i32.to_be_bytes());
    blank.extend_from_slice(&BLANK_MAGIC_CODE.to_be_bytes());
    assert_eq!(
        peek_header(&blank).unwrap(),
        RecordHeader::Blank { total_size: 64 }
    );
    assert!(check_record(&blank, false).is_err());
    assert_eq!(peek_total_size(&blank), Some(64));
    assert_eq!(peek_total_size(&[0, 0, 0]), None);
    assert_eq!(peek_total_size(&(-5i32).to_be_bytes()), None);
    assert!(peek_header(&[0xFF; 8]).is_err());
}

#[test]
fn many_records_and_truncation() {
    let mut buf = BytesMut::new();
    for i in 0..5 {
        let mut m = sample("T", v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2));
        m.queue_id = i;
        let start = buf.len();
        encode_stored(&m, &mut buf).unwrap();
        patch_stored(&mut buf[start..], i64::from(i), start as i64, 1).unwrap();
    }
    let all = buf.freeze();
    let msgs = decode_stored_many_strict(&all, true).unwrap();
    assert_eq!(msgs.len(), 5);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.queue_offset, i as i64);
    }
    // Zero-copy body points into the buffer.
    let (m, _) = decode_stored_bytes(&all, false).unwrap();
    assert_eq!(m.body.as_ptr(), all[88..].as_ptr());
    // A truncated tail: the lenient decoder keeps what decoded.
    let cut = all.slice(..all.len() - 3);
    assert_eq!(decode_stored_many(&cut, true).len(), 4);
    assert!(decode_stored_many_strict(&cut, true).is_err());
    let mut it = iter_records(&cut, true);
    assert_eq!(it.by_ref().filter(|r| r.is_ok()).count(), 4);
    assert!(it.next().is_none());
}

#[test]
fn totalsize_must_match_fields() {
    let msg = sample("T", v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2));
    let mut buf = BytesMut::new();
    let n = encode_stored(&msg, &mut buf).unwrap();
    buf.extend_from_slice(&[0; 4]);
    buf[0..4].copy_from_slice(&((n + 4) as i32).to_be_bytes());
    assert!(check_record(&buf, false).is_err());
}

#[test]
fn compressed_body_decompresses_on_request() {
    let raw = vec![b'x'; 10_000];
    let mut msg = sample("T", v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2));
    msg.body = Bytes::from(compress::compress_zlib(&raw, 5));
    msg.sys_flag |= sysflag::COMPRESSED;
    let mut buf = BytesMut::new();
    encode_stored(&msg, &mut buf).unwrap();
    let (mut m, _) = decode_stored(&buf, true).unwrap();
    assert!(m.decompress(1000).is_err(), "cap enforced");
    m.decompress(10_000).unwrap();
    assert_eq!(&m.body[..], &raw[..]);
    assert_eq!(m.sys_flag & sysflag::COMPRESSED, 0);
}

#[test]
fn tags_code_helpers_agree() {
    let msg = sample("T", v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2));
    assert_eq!(
        msg.tags_code_from_properties(),
        tags::tags_hash_code("TagA")
    );
    let mut buf = BytesMut::new();
    encode_stored(&msg, &mut buf).unwrap();
    let info = check_record(&buf, false).unwrap();
    assert_eq!(info.tags_code(), 2_598_919);
    assert_eq!(info.property(keys::KEYS), Some("k1 k2"));
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| v4(a, p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_filter("not v4-mapped", |(a, _)| Ipv6Addr::from(*a)
                .to_ipv4_mapped()
                .is_none())
            .prop_map(|(a, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p)),
    ]
}

fn arb_prop_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(("[A-Za-z_#.]{1,12}", "[^\u{1}\u{2}]{1,20}"), 0..6)
}

fn arb_msg() -> impl Strategy<Value = MessageToStore> {
    (
        "[A-Za-z0-9%_-]{1,200}",
        any::<i32>(),
        any::<i32>(),
        proptest::collection::vec(any::<u8>(), 0..300),
        arb_prop_pairs(),
        any::<i32>(),
        any::<i64>(),
        arb_addr(),
        arb_addr(),
        any::<i32>(),
        any::<i64>(),
    )
        .prop_map(
            |(topic, queue_id, flag, body, props, sys_flag, born_ts, born, store, rt, pto)| {
                MessageToStore {
                    topic,
                    queue_id,
                    flag,
                    body: Bytes::from(body),
                    properties: properties::encode(props),
                    sys_flag,
                    born_timestamp: born_ts,
                    born_host: born,
                    store_host: store,
                    reconsume_times: rt,
                    prepared_transaction_offset: pto,
                    tags_code: 0,
                }
            },
        )
}

proptest! {
    #[test]
    fn properties_round_trip(pairs in arb_prop_pairs()) {
        let s = properties::encode(pairs.iter().map(|(k, v)| (k, v)));
        let parsed: Vec<(String, String)> = properties::iter(&s)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        prop_assert_eq!(&parsed, &pairs);
        let map = properties::decode(&s);
        let expected: HashMap<String, String> = pairs.into_iter().collect();
        prop_assert_eq!(map, expected);
    }

    #[test]
    fn properties_decode_never_panics(s in "\\PC*", raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = properties::decode(&s);
        let text = String::from_utf8_lossy(&raw);
        for (k, v) in properties::iter(&text) {
            prop_assert!(!k.is_empty() && !v.is_empty());
            let clean = !k.contains('\u{1}') && !k.contains('\u{2}') && !v.contains('\u{2}');
            prop_assert!(clean, "separator leaked into a pair");
        }
    }

    #[test]
    fn stored_round_trip(msg in arb_msg(), qo in any::<i64>(), po in any::<i64>(), st in any::<i64>()) {
        let mut buf = BytesMut::new();
        let n = encode_stored(&msg, &mut buf).unwrap();
        prop_assert_eq!(n, stored_size(&msg));
        patch_stored(&mut buf, qo, po, st).unwrap();
        let (m, used) = decode_stored(&buf, true).unwrap();
        prop_assert_eq!(used, n);
        prop_assert_eq!(&m.topic, &msg.topic);
        prop_assert_eq!(m.queue_id, msg.queue_id);
        prop_assert_eq!(m.flag, msg.flag);
        prop_assert_eq!(&m.body, &msg.body);
        prop_assert_eq!(&m.properties_raw, &msg.properties);
        prop_assert_eq!(m.sys_flag, msg.effective_sys_flag());
        prop_assert_eq!(m.born_timestamp, msg.born_timestamp);
        prop_assert_eq!(m.born_host, msg.born_host);
        prop_assert_eq!(m.store_host, msg.store_host);
        prop_assert_eq!(m.reconsume_times, msg.reconsume_times);
        prop_assert_eq!(m.prepared_transaction_offset, msg.prepared_transaction_offset);
        prop_assert_eq!((m.queue_offset, m.physical_offset, m.store_timestamp), (qo, po, st));
        prop_assert_eq!(
            m.version,
            if msg.topic.len() > 127 { MessageVersion::V2 } else { MessageVersion::V1 }
        );
        // Re-encoding the decoded copy gives the same bytes.
        let mut again = BytesMut::new();
        encode_stored(&m.to_message_to_store(), &mut again).unwrap();
        patch_stored(&mut again, qo, po, st).unwrap();
        prop_assert_eq!(&again[..], &buf[..]);
    }

    #[test]
    fn stored_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = check_record(&data, true);
        let _ = decode_stored(&data, false);
        let b = Bytes::from(data);
        let _ = decode_stored_many(&b, true);
        for r in iter_records(&b, false) { let _ = r; }
    }

    #[test]
    fn mutated_record_never_panics(msg in arb_msg(), pos in any::<usize>(), val in any::<u8>(), cut in any::<usize>()) {
        let mut buf = BytesMut::new();
        encode_stored(&msg, &mut buf).unwrap();
        let p = pos % buf.len();
        buf[p] = val;
        let c = cut % (buf.len() + 1);
        let _ = check_record(&buf[..c], true);
        let _ = decode_stored(&buf, true);
    }

    #[test]
    fn batch_round_trip(msgs in proptest::collection::vec(
        (any::<i32>(), proptest::collection::vec(any::<u8>(), 0..100), arb_prop_pairs()), 0..8)) {
        let msgs: Vec<batch::BatchMessage> = msgs.into_iter().map(|(flag, body, props)| batch::BatchMessage {
            flag, body: Bytes::from(body), properties: properties::encode(props),
        }).collect();
        let mut buf = BytesMut::new();
        let n = batch::encode_batch(&msgs, &mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        let back = batch::decode_batch(&buf.freeze()).unwrap();
        prop_assert_eq!(back, msgs);
    }

    #[test]
    fn batch_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = batch::decode_batch(&Bytes::from(data));
    }

    #[test]
    fn offset_msg_id_round_trip(addr in arb_addr(), off in any::<i64>()) {
        let s = id::offset_msg_id(addr, off);
        prop_assert_eq!(s.len(), if addr.is_ipv4() { 32 } else { 56 });
        prop_assert!(s.chars().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
        prop_assert_eq!(id::decode_offset_msg_id(&s).unwrap(), (addr, off));
    }

    #[test]
    fn msg_id_garbage_never_panics(s in "\\PC{0,60}") {
        let _ = id::decode_offset_msg_id(&s);
        let _ = id::decode_uniq_key(&s);
        let _ = id::uniq_key_timestamp(&s, 1_700_000_000_000, 0);
    }

    #[test]
    fn inflate_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = compress::decompress_zlib(&data, 4096);
    }
}

#[test]
fn uniq_ids_are_distinct_and_well_formed() {
    let g = id::UniqIdGenerator::global();
    let ids: std::collections::HashSet<String> = (0..1000).map(|_| g.next_id()).collect();
    assert_eq!(ids.len(), 1000);
    for s in &ids {
        assert!(s.len() == 32 || s.len() == 56);
        assert!(id::decode_uniq_key(s).is_ok());
    }
}
