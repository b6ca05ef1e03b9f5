//! JSON body tests: proptest round trips in both dialects, fixtures written
//! the way the Java (fastjson 1.x) side and non-Java clients emit them, exact
//! output checks where Java parsers are picky, and garbage input.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Write;

use apogee_protocol::body::*;
use apogee_protocol::command::LanguageCode;
use apogee_protocol::ProtocolError;
use proptest::prelude::*;
use serde_json::{json, Value};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/bodies/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// ---------------------------------------------------------------------------
// Fixtures: what Java and other clients send
// ---------------------------------------------------------------------------

#[test]
fn route_fastjson_4x_with_bare_keys_and_syn_flag() {
    let r = TopicRouteData::decode(&fixture("route_fastjson_4x.json")).unwrap();
    assert_eq!(r.order_topic_conf, None);
    assert_eq!(r.queue_datas.len(), 1);
    let q = &r.queue_datas[0];
    assert_eq!(
        (
            q.broker_name.as_str(),
            q.read_queue_nums,
            q.write_queue_nums,
            q.perm
        ),
        ("broker-a", 4, 4, 6)
    );
    let b = &r.broker_datas[0];
    assert_eq!(
        b.broker_addrs.get(&0).map(String::as_str),
        Some("10.0.0.5:10911")
    );
    assert_eq!(
        b.broker_addrs.get(&1).map(String::as_str),
        Some("10.0.0.6:10911")
    );
    assert_eq!(b.select_broker_addr(), Some("10.0.0.5:10911"));
    assert!(!b.enable_acting_master);
    assert!(r.filter_server_table.is_empty());
}

#[test]
fn route_sys_flag_read_from_either_spelling() {
    let syn = br#"{"queueDatas":[{"brokerName":"b","topicSynFlag":3}]}"#;
    let sys = br#"{"queueDatas":[{"brokerName":"b","topicSysFlag":5}]}"#;
    assert_eq!(
        TopicRouteData::decode(syn).unwrap().queue_datas[0].topic_sys_flag,
        3
    );
    assert_eq!(
        TopicRouteData::decode(sys).unwrap().queue_datas[0].topic_sys_flag,
        5
    );
}

#[test]
fn route_standard_and_5x_fields() {
    let std_form = TopicRouteData::decode(&fixture("route_standard.json")).unwrap();
    let fj_form = TopicRouteData::decode(&fixture("route_fastjson_4x.json")).unwrap();
    assert_eq!(
        std_form.broker_datas[0].broker_addrs.get(&0),
        fj_form.broker_datas[0].broker_addrs.get(&0)
    );

    let r = TopicRouteData::decode(&fixture("route_fastjson_5x.json")).unwrap();
    assert_eq!(r.order_topic_conf.as_deref(), Some("broker-a:4"));
    assert_eq!(r.broker_datas[0].zone_name.as_deref(), Some("zone-1"));
    assert_eq!(r.queue_datas[0].topic_sys_flag, 1);
    assert_eq!(r.topic_queue_mapping_by_broker, Some(BTreeMap::new()));
}

fn sample_route() -> TopicRouteData {
    TopicRouteData {
        order_topic_conf: None,
        queue_datas: vec![QueueData {
            broker_name: "broker-a".into(),
            read_queue_nums: 4,
            write_queue_nums: 4,
            perm: 6,
            topic_sys_flag: 0,
        }],
        broker_datas: vec![BrokerData {
            cluster: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_addrs: BTreeMap::from([(0, "10.0.0.5:10911".to_string())]),
            zone_name: None,
            enable_acting_master: false,
        }],
        filter_server_table: BTreeMap::new(),
        topic_queue_mapping_by_broker: None,
    }
}

#[test]
fn route_dialect_follows_request_version() {
    let r = sample_route();
    let standard = String::from_utf8(r.to_json_for_version(401)).unwrap();
    assert_eq!(
        standard,
        r#"{"brokerDatas":[{"brokerAddrs":{"0":"10.0.0.5:10911"},"brokerName":"broker-a","cluster":"DefaultCluster","enableActingMaster":false}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSynFlag":0,"topicSysFlag":0,"writeQueueNums":4}]}"#
    );
    // Standard output is plain JSON for any parser.
    assert!(serde_json::from_str::<Value>(&standard).is_ok());

    let old = String::from_utf8(r.to_json_for_version(400)).unwrap();
    assert_eq!(old, standard.replace(r#"{"0":"#, r#"{0:"#));
    assert!(
        serde_json::from_str::<Value>(&old).is_err(),
        "fastjson dialect is not standard JSON"
    );
    // acceptStandardJsonOnly forces standard JSON for an old version.
    assert_eq!(String::from_utf8(r.to_json(false, true)).unwrap(), standard);
    assert_eq!(r.encode(), old.as_bytes());

    for body in [standard.as_bytes(), old.as_bytes()] {
        assert_eq!(TopicRouteData::decode(body).unwrap(), r);
    }
}

#[test]
fn standard_dialect_escapes_non_ascii_fastjson_does_not() {
    let mut r = sample_route();
    r.broker_datas[0].cluster = "集群".into();
    let standard = String::from_utf8(r.to_json_for_version(401)).unwrap();
    assert!(standard.is_ascii());
    assert!(
        standard.contains(r#""cluster":"\u96c6\u7fa4""#),
        "{standard}"
    );
    let plain = String::from_utf8(r.encode()).unwrap();
    assert!(plain.contains(r#""cluster":"集群""#));
    assert_eq!(TopicRouteData::decode(standard.as_bytes()).unwrap(), r);
    assert_eq!(TopicRouteData::decode(plain.as_bytes()).unwrap(), r);
}

#[test]
fn cluster_info_fastjson_and_emitted_with_bare_keys() {
    let bytes = fixture("cluster_info.json");
    let c = ClusterInfo::decode(&bytes).unwrap();
    assert_eq!(c.broker_addr_table.len(), 2);
    assert_eq!(
        c.broker_addr_table["broker-a"].broker_addrs[&1],
        "10.0.0.6:10911"
    );
    assert_eq!(
        c.cluster_addr_table["DefaultCluster"],
        BTreeSet::from(["broker-a".to_string(), "broker-b".to_string()])
    );
    // Our output is byte-identical to what Java writes for these maps.
    assert_eq!(
        String::from_utf8(c.encode()).unwrap(),
        String::from_utf8(bytes).unwrap()
    );
}

#[test]
fn register_broker_body_5x() {
    let b = RegisterBrokerBody::decode_with(&fixture("register_broker_5x.json"), false).unwrap();
    let w = &b.topic_config_serialize_wrapper;
    assert_eq!(w.data_version.counter, 3);
    assert_eq!(w.data_version.timestamp, 1_700_000_000_000);
    assert_eq!(w.mapping_data_version.timestamp, 1_700_000_000_001);
    assert_eq!(w.topic_config_table.len(), 2);
    let t = &w.topic_config_table["TopicTest"];
    assert_eq!((t.read_queue_nums, t.write_queue_nums, t.perm), (4, 4, 6));
    assert_eq!(t.topic_filter_type, TopicFilterType::SingleTag);
    let retry = &w.topic_config_table["%RETRY%group_a"];
    assert_eq!(
        retry.attributes.get("+message.type").map(String::as_str),
        Some("NORMAL")
    );
    assert!(b.filter_server_list.is_empty());
}

#[test]
fn register_broker_bare_wrapper_from_old_brokers() {
    let b = RegisterBrokerBody::decode_with(&fixture("register_broker_bare_wrapper.json"), false)
        .unwrap();
    let w = &b.topic_config_serialize_wrapper;
    assert_eq!(w.data_version.counter, 1);
    assert_eq!(w.data_version.state_version, 0);
    assert_eq!(w.topic_config_table["TopicTest"].read_queue_nums, 4);
    // Missing attributes keep the Java default (empty map).
    assert!(w.topic_config_table["TopicTest"].attributes.is_empty());
}

/// The inflated stream of Java's `RegisterBrokerBody.encode(true)`, by
/// hand: big-endian int lengths, the DataVersion JSON, the topic count, each
/// `TopicConfig.encode()` text, the filter-server JSON and (5.x) the mappings.
fn java_style_raw(with_mappings: bool) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(&(data.len() as i32).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut raw = Vec::new();
    chunk(
        &mut raw,
        br#"{"counter":7,"stateVersion":0,"timestamp":1700000000000}"#,
    );
    raw.extend_from_slice(&2i32.to_be_bytes());
    // Java writes its map's iteration order; ours is sorted by name.
    chunk(
        &mut raw,
        br#"TopicB 8 2 4 MULTI_TAG {"+message.type":"FIFO"}"#,
    );
    chunk(&mut raw, b"TopicTest 4 4 6 SINGLE_TAG {}");
    chunk(&mut raw, b"[]");
    if with_mappings {
        raw.extend_from_slice(&1i32.to_be_bytes());
        chunk(&mut raw, br#"{"bname":"broker-a","currIdMap":{0:0},"dirty":false,"epoch":1,"scope":"__global__","topic":"TopicB","totalQueues":2}"#);
    }
    raw
}

/// Builds a compressed body by hand, following Java's encode(true) layout.
fn java_style_compressed(with_mappings: bool) -> Vec<u8> {
    let raw = java_style_raw(with_mappings);
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&raw).unwrap();
    enc.finish().unwrap()
}

#[test]
fn register_broker_compressed_form() {
    for with_mappings in [false, true] {
        let data = java_style_compressed(with_mappings);
        // Honour the header flag, and sniff zlib when the flag says false.
        for flag in [true, false] {
            let b = RegisterBrokerBody::decode_with(&data, flag).unwrap();
            let w = &b.topic_config_serialize_wrapper;
            assert_eq!(w.data_version.counter, 7);
            assert_eq!(w.topic_config_table.len(), 2);
            let tb = &w.topic_config_table["TopicB"];
            assert_eq!(
                (tb.read_queue_nums, tb.write_queue_nums, tb.perm),
                (8, 2, 4)
            );
            assert_eq!(tb.topic_filter_type, TopicFilterType::MultiTag);
            assert_eq!(tb.attributes["+message.type"], "FIFO");
            assert_eq!(
                w.topic_queue_mapping_info_map.len(),
                usize::from(with_mappings)
            );
            if with_mappings {
                assert_eq!(
                    w.topic_queue_mapping_info_map["TopicB"]["totalQueues"],
                    json!(2)
                );
            }
        }
    }
}

/// The encode side writes exactly Java's layout (what a Java NameServer's
/// `RegisterBrokerBody.decode(data, true)` reads), for 4.x and 5.x streams.
#[test]
fn register_broker_compressed_encode_matches_java_layout() {
    use std::io::Read;
    let mut body = RegisterBrokerBody::decode_with(&java_style_compressed(false), true).unwrap();
    let w = &mut body.topic_config_serialize_wrapper;
    w.data_version.timestamp = 1_700_000_000_000;
    let inflate = |data: &[u8]| {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let ours = body.encode_compressed(false).unwrap();
    assert_eq!(
        ours[0], 0x78,
        "a zlib stream, as Java's DeflaterOutputStream writes"
    );
    assert_eq!(inflate(&ours), java_style_raw(false));
    // 5.x: the mapping count follows (0 here: Java writes it even when empty).
    let mut raw5 = java_style_raw(false);
    raw5.extend_from_slice(&0i32.to_be_bytes());
    assert_eq!(inflate(&body.encode_compressed(true).unwrap()), raw5);
}

#[test]
fn register_broker_compressed_round_trip_and_truncation() {
    let mut body = RegisterBrokerBody::default();
    let w = &mut body.topic_config_serialize_wrapper;
    w.data_version = DataVersion {
        state_version: 2,
        timestamp: 99,
        counter: 5,
    };
    let mut t = TopicConfig::new("T1");
    t.attributes.insert("k".into(), "v".into());
    w.topic_config_table.insert("T1".into(), t);
    w.topic_config_table
        .insert("T2".into(), TopicConfig::new("T2"));
    body.filter_server_list = vec!["10.0.0.1:1".into()];
    let data = body.encode_compressed(true).unwrap();
    let back = RegisterBrokerBody::decode_compressed(&data).unwrap();
    assert_eq!(back, body);

    for cut in [0, 1, 2, data.len() / 2, data.len() - 1] {
        assert!(
            RegisterBrokerBody::decode_compressed(&data[..cut]).is_err(),
            "cut {cut}"
        );
    }
    // A well-formed zlib stream whose lengths lie.
    let mut raw = Vec::new();
    raw.extend_from_slice(&1000i32.to_be_bytes());
    raw.extend_from_slice(b"{}");
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&raw).unwrap();
    let lying = enc.finish().unwrap();
    assert!(RegisterBrokerBody::decode_compressed(&lying).is_err());
    let mut raw = Vec::new();
    raw.extend_from_slice(&(-5i32).to_be_bytes());
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&raw).unwrap();
    assert!(RegisterBrokerBody::decode_compressed(&enc.finish().unwrap()).is_err());
}

#[test]
fn topic_config_text_form() {
    let t = TopicConfig::decode_text("TopicTest 4 8 6 SINGLE_TAG").unwrap();
    assert_eq!((t.read_queue_nums, t.write_queue_nums), (4, 8));
    assert!(t.attributes.is_empty());
    let mut t2 = TopicConfig::new("X");
    t2.attributes.insert("a".into(), "b".into());
    assert_eq!(t2.encode_text(), r#"X 16 16 6 SINGLE_TAG {"a":"b"}"#);
    assert_eq!(TopicConfig::decode_text(&t2.encode_text()).unwrap(), t2);
    // Attributes with spaces are ignored like Java does, not an error.
    let t3 = TopicConfig::decode_text(r#"X 1 1 6 SINGLE_TAG {"a":"b c"}"#).unwrap();
    assert!(t3.attributes.is_empty());
    for bad in ["", "X 1 1 6", "X a 1 6 SINGLE_TAG", "X 1 1 6 NOPE"] {
        assert!(TopicConfig::decode_text(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn topic_config_missing_fields_take_java_defaults() {
    let t = TopicConfig::decode(br#"{"topicName":"T"}"#).unwrap();
    assert_eq!(t, TopicConfig::new("T"));
    assert_eq!((t.read_queue_nums, t.write_queue_nums, t.perm), (16, 16, 6));
}

#[test]
fn small_bodies() {
    let tl =
        TopicList::decode(br#"{"topicList":["A","B","A"],"brokerAddr":"1.2.3.4:10911"}"#).unwrap();
    assert_eq!(tl.topic_list.len(), 2);
    assert_eq!(tl.broker_addr.as_deref(), Some("1.2.3.4:10911"));
    assert_eq!(TopicList::default().encode(), br#"{"topicList":[]}"#);

    let kv = KVTable::decode(br#"{"table":{"T":"broker-a:4"}}"#).unwrap();
    assert_eq!(kv.table["T"], "broker-a:4");
    assert_eq!(kv.encode(), br#"{"table":{"T":"broker-a:4"}}"#);

    // A peer-supplied key starting with NUL is an ordinary (escaped) string.
    let odd = KVTable::decode(br#"{"table":{"\u0000x":"v"}}"#).unwrap();
    assert_eq!(odd.encode(), br#"{"table":{"\u0000x":"v"}}"#);

    let gl = GroupList::decode(br#"{"groupList":["g1","g2"]}"#).unwrap();
    assert_eq!(gl.group_list.len(), 2);

    let cl =
        GetConsumerListByGroupResponseBody::decode(br#"{"consumerIdList":["c1","c2"]}"#).unwrap();
    assert_eq!(cl.consumer_id_list, ["c1", "c2"]);
    assert_eq!(cl.encode(), br#"{"consumerIdList":["c1","c2"]}"#);

    let dv = DataVersion::decode(br#"{"counter":2,"timestamp":3}"#).unwrap();
    assert_eq!(
        dv,
        DataVersion {
            state_version: 0,
            timestamp: 3,
            counter: 2
        }
    );
    assert_eq!(
        dv.encode(),
        br#"{"counter":2,"stateVersion":0,"timestamp":3}"#
    );
    let mut dv2 = dv.clone();
    dv2.next_version();
    assert_eq!(dv2.counter, 3);
}

#[test]
fn heartbeat_from_java_client() {
    let h = HeartbeatData::decode(&fixture("heartbeat_java.json")).unwrap();
    assert_eq!(h.client_id, "10.0.0.9@12345#1700000000000");
    assert_eq!(
        h.producer_data_set,
        vec![ProducerData {
            group_name: "CLIENT_INNER_PRODUCER".into()
        }]
    );
    let c = &h.consumer_data_set[0];
    assert_eq!(c.consume_type, ConsumeType::ConsumePassively);
    assert_eq!(c.message_model, MessageModel::Clustering);
    assert_eq!(
        c.consume_from_where,
        ConsumeFromWhere::ConsumeFromLastOffset
    );
    let s = &c.subscription_data_set[0];
    assert_eq!(s.sub_version, 1_700_000_000_123);
    assert_eq!(s.code_set, BTreeSet::from([2598919, 2598920]));
    assert_eq!(s, &{
        let mut e = SubscriptionData::tag("TopicTest", "TagA || TagB");
        e.sub_version = 1_700_000_000_123;
        e
    });
    // Re-encoding gives back exactly the Java bytes (sorted keys, compact).
    assert_eq!(
        String::from_utf8(h.encode()).unwrap(),
        String::from_utf8(fixture("heartbeat_java.json")).unwrap()
    );
}

#[test]
fn heartbeat_from_non_java_client() {
    let h = HeartbeatData::decode(&fixture("heartbeat_nonjava.json")).unwrap();
    assert_eq!(h.heartbeat_fingerprint, 0);
    assert!(!h.without_sub);
    let c = &h.consumer_data_set[0];
    assert_eq!(c.consume_type, ConsumeType::ConsumePassively);
    assert_eq!(c.message_model, MessageModel::Clustering);
    assert_eq!(
        c.consume_from_where,
        ConsumeFromWhere::ConsumeFromFirstOffset
    );
    assert!(!c.unit_mode);
    let s = &c.subscription_data_set[0];
    assert_eq!(s.sub_version, 1_700_000_000_999);
    assert_eq!(s.expression_type, "TAG");
    assert!(s.is_tag_type());
    assert!(!s.class_filter_mode);
    assert_eq!(
        s.tags_set,
        BTreeSet::from(["TagB".to_string(), "TagZ".to_string()])
    );
}

#[test]
fn heartbeat_enum_variants_and_errors() {
    let parse =
        |c: &str| HeartbeatData::decode(format!(r#"{{"consumerDataSet":[{c}]}}"#).as_bytes());
    let c = parse(
        r#"{"consumeType":"0","messageModel":0,"consumeFromWhere":"CONSUME_FROM_TIMESTAMP"}"#,
    )
    .unwrap();
    let c = &c.consumer_data_set[0];
    assert_eq!(c.consume_type, ConsumeType::ConsumeActively);
    assert_eq!(c.message_model, MessageModel::Broadcasting);
    assert_eq!(c.consume_from_where, ConsumeFromWhere::ConsumeFromTimestamp);
    let pop = parse(r#"{"consumeType":"CONSUME_POP","unitMode":"1"}"#).unwrap();
    assert_eq!(
        pop.consumer_data_set[0].consume_type,
        ConsumeType::ConsumePop
    );
    assert!(pop.consumer_data_set[0].unit_mode);
    // Missing enums take the push-consumer defaults.
    let d = parse(r#"{"groupName":"g"}"#).unwrap();
    assert_eq!(
        d.consumer_data_set[0].consume_type,
        ConsumeType::ConsumePassively
    );
    assert_eq!(
        d.consumer_data_set[0].message_model,
        MessageModel::Clustering
    );
    // Out-of-range ordinal / unknown name: a clear error.
    for bad in [
        r#"{"consumeType":7}"#,
        r#"{"messageModel":"SOMETIMES"}"#,
        r#"{"consumeFromWhere":-1}"#,
    ] {
        match parse(bad) {
            Err(ProtocolError::InvalidBody(msg)) => assert!(msg.contains("invalid"), "{msg}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    // Nulls are treated as absent.
    let n = parse(r#"{"groupName":"g","consumeType":null,"subscriptionDataSet":null}"#).unwrap();
    assert_eq!(n.consumer_data_set[0].group_name, "g");
}

#[test]
fn subscription_missing_subversion_takes_now() {
    let s = SubscriptionData::decode(br#"{"topic":"T","subString":"*"}"#).unwrap();
    assert!(s.sub_version > 1_600_000_000_000);
    assert_eq!(s.expression_type, "TAG");
    // filterClassSource is read but never written (Java serialize=false).
    let s = SubscriptionData::decode(br#"{"topic":"T","filterClassSource":"x"}"#).unwrap();
    assert_eq!(s.filter_class_source.as_deref(), Some("x"));
    assert!(!String::from_utf8(s.encode())
        .unwrap()
        .contains("filterClassSource"));
}

#[test]
fn lock_batch_without_only_this_broker() {
    let b = LockBatchRequestBody::decode(&fixture("lock_batch_no_only_this_broker.json")).unwrap();
    assert!(!b.only_this_broker);
    assert_eq!(b.consumer_group, "group_a");
    assert_eq!(b.mq_set.len(), 2);
    assert!(b.mq_set.contains(&MessageQueue::new("T", "broker-a", 1)));
    let resp = LockBatchResponseBody {
        lock_ok_mq_set: b.mq_set.clone(),
    };
    let text = String::from_utf8(resp.encode()).unwrap();
    assert!(
        text.starts_with(r#"{"lockOKMQSet":[{"brokerName":"broker-a","queueId":0,"topic":"T"}"#),
        "{text}"
    );
    let u: UnlockBatchRequestBody =
        UnlockBatchRequestBody::decode(br#"{"onlyThisBroker":true}"#).unwrap();
    assert!(u.only_this_broker);
}

#[test]
fn consume_stats_object_keys_exactly_as_java() {
    let bytes = fixture("consume_stats.json");
    let cs = ConsumeStats::decode(&bytes).unwrap();
    assert_eq!(cs.offset_table.len(), 2);
    let w = &cs.offset_table[&MessageQueue::new("T", "broker-a", 0)];
    assert_eq!(
        (w.broker_offset, w.consumer_offset, w.pull_offset),
        (10, 8, 10)
    );
    assert_eq!(w.last_timestamp, 1_700_000_000_000);
    assert_eq!(cs.consume_tps, 0.0);
    assert_eq!(
        String::from_utf8(cs.encode()).unwrap(),
        String::from_utf8(bytes).unwrap()
    );

    // The single-queue example of reference 5.4, byte for byte.
    let one = ConsumeStats {
        offset_table: BTreeMap::from([(
            MessageQueue::new("T", "broker-a", 0),
            OffsetWrapper {
                broker_offset: 10,
                consumer_offset: 8,
                pull_offset: 10,
                last_timestamp: 1_700_000_000_000,
                // Zero: left out, so the body is Apache's byte for byte.
                pop_inflight: 0,
            },
        )]),
        consume_tps: 0.0,
    };
    assert_eq!(
        String::from_utf8(one.encode()).unwrap(),
        r#"{"consumeTps":0.0,"offsetTable":{{"brokerName":"broker-a","queueId":0,"topic":"T"}:{"brokerOffset":10,"consumerOffset":8,"lastTimestamp":1700000000000,"pullOffset":10}}}"#
    );
}

#[test]
fn topic_stats_and_reset_offset() {
    let ts = TopicStatsTable::decode(&fixture("topic_stats_table.json")).unwrap();
    let o = &ts.offset_table[&MessageQueue::new("T", "broker-a", 0)];
    assert_eq!(
        (o.min_offset, o.max_offset, o.last_update_timestamp),
        (0, 10, 1_700_000_000_000)
    );
    assert_eq!(ts.topic_put_tps, None);
    assert_eq!(ts.encode(), fixture("topic_stats_table.json"));

    let bytes = fixture("reset_offset.json");
    let r = ResetOffsetBody::decode(&bytes).unwrap();
    assert_eq!(r.offset_table[&MessageQueue::new("T", "broker-a", 1)], 7);
    assert_eq!(r.encode(), bytes);

    let c = ResetOffsetBodyForC::from(&r);
    assert_eq!(
        String::from_utf8(c.encode()).unwrap(),
        r#"{"offsetTable":[{"brokerName":"broker-a","offset":5,"queueId":0,"topic":"T"},{"brokerName":"broker-a","offset":7,"queueId":1,"topic":"T"}]}"#
    );
    // Object keys whose text is not a MessageQueue are an error, not a panic.
    assert!(ResetOffsetBody::decode(br#"{"offsetTable":{"x":1}}"#).is_err());
    assert!(ResetOffsetBody::decode(br#"{"offsetTable":{[1,2]:1}}"#).is_err());
    // Whitespace inside the object key is tolerated.
    let spaced = br#"{"offsetTable":{ { "topic" : "T", "brokerName":"b", "queueId": 3 } : 9 }}"#;
    assert_eq!(
        ResetOffsetBody::decode(spaced).unwrap().offset_table[&MessageQueue::new("T", "b", 3)],
        9
    );
}

#[test]
fn consumer_connection_and_running_info() {
    let cc = ConsumerConnection::decode(&fixture("consumer_connection.json")).unwrap();
    assert_eq!(cc.connection_set[0].language, LanguageCode::Java);
    assert_eq!(cc.connection_set[0].version, 453);
    assert_eq!(cc.message_model, MessageModel::Broadcasting);
    assert_eq!(
        cc.consume_from_where,
        ConsumeFromWhere::ConsumeFromFirstOffset
    );
    assert_eq!(cc.subscription_table["T"].sub_string, "*");
    assert_eq!(cc.encode(), fixture("consumer_connection.json"));
    let conn = Connection::decode(br#"{"language":1,"clientId":"c"}"#).unwrap();
    assert_eq!(conn.language, LanguageCode::Cpp);

    let bytes = fixture("consumer_running_info.json");
    let ri = ConsumerRunningInfo::decode(&bytes).unwrap();
    assert_eq!(
        ri.properties["PROP_CONSUME_TYPE"],
        json!("CONSUME_PASSIVELY")
    );
    assert_eq!(
        ri.mq_table[&MessageQueue::new("T", "broker-a", 0)]["commitOffset"],
        json!(42)
    );
    assert_eq!(ri.status_table["T"]["consumeOKTPS"], json!(1.5));
    assert_eq!(ri.jstack.as_deref(), Some("thread dump"));
    assert_eq!(ri.encode(), bytes);
}

#[test]
fn subscription_group_defaults_and_misc() {
    let g = SubscriptionGroupConfig::decode(&fixture("subscription_group_minimal.json")).unwrap();
    assert_eq!(g, SubscriptionGroupConfig::new("group_a"));
    assert!(g.consume_enable && g.consume_broadcast_enable && g.notify_consumer_ids_changed_enable);
    assert_eq!(
        (
            g.retry_queue_nums,
            g.retry_max_times,
            g.consume_timeout_minute
        ),
        (1, 16, 15)
    );
    assert_eq!(g.which_broker_when_consume_slowly, 1);

    let r =
        ConsumeMessageDirectlyResult::decode(br#"{"consumeResult":"CR_LATER","spentTimeMills":5}"#)
            .unwrap();
    assert_eq!(r.consume_result, Some(CMResult::CrLater));
    assert!(r.auto_commit, "Java default autoCommit=true");

    let c = CheckClientRequestBody::decode(br#"{"clientId":"c","group":"g","subscriptionData":{"topic":"T","subString":"a > 1","expressionType":"SQL92"}}"#).unwrap();
    assert_eq!(
        c.subscription_data
            .as_ref()
            .map(|s| s.expression_type.as_str()),
        Some("SQL92")
    );
}

// ---------------------------------------------------------------------------
// Garbage never panics
// ---------------------------------------------------------------------------

fn decode_all(data: &[u8]) -> usize {
    let mut errors = 0;
    macro_rules! try_all {
        ($($t:ty),*) => {$( if <$t>::decode(data).is_err() { errors += 1; } )*};
    }
    try_all!(
        TopicRouteData,
        QueueData,
        BrokerData,
        ClusterInfo,
        TopicConfig,
        DataVersion,
        TopicConfigSerializeWrapper,
        TopicConfigAndMappingSerializeWrapper,
        RegisterBrokerBody,
        TopicList,
        KVTable,
        HeartbeatData,
        ProducerData,
        ConsumerData,
        SubscriptionData,
        MessageQueue,
        Connection,
        ConsumerConnection,
        ProducerConnection,
        LockBatchRequestBody,
        LockBatchResponseBody,
        GetConsumerListByGroupResponseBody,
        ConsumeStats,
        OffsetWrapper,
        TopicStatsTable,
        TopicOffset,
        ResetOffsetBody,
        ResetOffsetBodyForC,
        GroupList,
        SubscriptionGroupConfig,
        SubscriptionGroupWrapper,
        ConsumerRunningInfo,
        ConsumeMessageDirectlyResult,
        CheckClientRequestBody,
        QueryConsumeTimeSpanBody
    );
    let _ = RegisterBrokerBody::decode_with(data, true);
    let _ = RegisterBrokerBody::decode_with(data, false);
    errors
}

#[test]
fn garbage_truncated_and_deep_input_is_an_error() {
    const TYPES: usize = 35;
    let heartbeat = fixture("heartbeat_java.json");
    let mut cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"   ".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        b"{".to_vec(),
        b"}".to_vec(),
        b"{\"a\":}".to_vec(),
        b"{{{{".to_vec(),
        b"nul".to_vec(),
        b"{\"clientID\":\"x\"} trailing".to_vec(),
        "[".repeat(100_000).into_bytes(),
        "{1:".repeat(100_000).into_bytes(),
        "{{".repeat(100_000).into_bytes(),
    ];
    for cut in (1..heartbeat.len()).step_by(7) {
        cases.push(heartbeat[..cut].to_vec());
    }
    for case in &cases {
        assert_eq!(
            decode_all(case),
            TYPES,
            "{:?}",
            String::from_utf8_lossy(&case[..case.len().min(40)])
        );
    }
    // Wrong-typed fields are errors too.
    assert!(HeartbeatData::decode(br#"{"consumerDataSet":"nope"}"#).is_err());
    assert!(TopicRouteData::decode(br#"{"brokerDatas":[{"brokerAddrs":{"x":"a"}}]}"#).is_err());
    match BrokerData::decode(br#"{"brokerAddrs":[1]}"#) {
        Err(ProtocolError::InvalidBody(msg)) => assert!(msg.contains("BrokerData"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Nesting within the limit is fine.
    let ok = format!("{}{}", "[".repeat(50), "]".repeat(50));
    assert!(apogee_protocol::body::fastjson::to_standard_json(ok.as_bytes()).is_ok());
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

fn roundtrip<T>(
    v: &T,
    encode: impl Fn(&T, Dialect) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<T, ProtocolError>,
) -> Result<(), TestCaseError>
where
    T: PartialEq + Debug,
{
    for dialect in [Dialect::Fastjson, Dialect::Standard] {
        let bytes = encode(v, dialect);
        let back = decode(&bytes).map_err(|e| {
            TestCaseError::fail(format!("{e} in {}", String::from_utf8_lossy(&bytes)))
        })?;
        prop_assert_eq!(
            &back,
            v,
            "{:?}: {}",
            dialect,
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(())
}

macro_rules! rt {
    ($t:ty, $v:expr) => {
        roundtrip::<$t>(&$v, |v, d| v.encode_as(d), |b| <$t>::decode(b))
    };
}

fn s() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_%@.:\\- é集\"\\\\\n\u{1}😀]{0,10}"
}
fn key() -> impl Strategy<Value = String> {
    // Keys of arbitrary text, including quotes and non-ASCII.
    "[a-zA-Z0-9_%@.:\\-é\"\\\\]{0,8}"
}
fn opt_s() -> impl Strategy<Value = Option<String>> {
    prop::option::of(s())
}
fn f() -> impl Strategy<Value = f64> {
    // serde_json's default float parser may be off by one ulp on long
    // mantissas; TPS values need no such precision, so use exact quarters.
    prop_oneof![Just(0.0), any::<i32>().prop_map(|i| f64::from(i) / 4.0)]
}
fn mq() -> impl Strategy<Value = MessageQueue> {
    (s(), s(), any::<i32>()).prop_map(|(t, b, q)| MessageQueue::new(t, b, q))
}
fn json_val() -> impl Strategy<Value = Value> {
    // Opaque nested objects; no nulls (absent and null are the same to Java).
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        s().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map(key(), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
fn smap() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(key(), s(), 0..3)
}
fn sset() -> impl Strategy<Value = BTreeSet<String>> {
    prop::collection::btree_set(s(), 0..3)
}
fn data_version() -> impl Strategy<Value = DataVersion> {
    (any::<i64>(), any::<i64>(), any::<i64>()).prop_map(|(a, b, c)| DataVersion {
        state_version: a,
        timestamp: b,
        counter: c,
    })
}
fn queue_data() -> impl Strategy<Value = QueueData> {
    (s(), any::<i32>(), any::<i32>(), any::<i32>(), any::<i32>()).prop_map(|(b, r, w, p, f)| {
        QueueData {
            broker_name: b,
            read_queue_nums: r,
            write_queue_nums: w,
            perm: p,
            topic_sys_flag: f,
        }
    })
}
fn broker_data() -> impl Strategy<Value = BrokerData> {
    (
        s(),
        s(),
        prop::collection::btree_map(any::<i64>(), s(), 0..3),
        opt_s(),
        any::<bool>(),
    )
        .prop_map(|(c, b, a, z, e)| BrokerData {
            cluster: c,
            broker_name: b,
            broker_addrs: a,
            zone_name: z,
            enable_acting_master: e,
        })
}
fn topic_config() -> impl Strategy<Value = TopicConfig> {
    (
        s(),
        any::<i32>(),
        any::<i32>(),
        any::<i32>(),
        any::<bool>(),
        any::<i32>(),
        any::<bool>(),
        smap(),
    )
        .prop_map(|(n, r, w, p, multi, f, o, a)| TopicConfig {
            topic_name: n,
            read_queue_nums: r,
            write_queue_nums: w,
            perm: p,
            topic_filter_type: if multi {
                TopicFilterType::MultiTag
            } else {
                TopicFilterType::SingleTag
            },
            topic_sys_flag: f,
            order: o,
            attributes: a,
        })
}
fn sub_data() -> impl Strategy<Value = SubscriptionData> {
    (
        any::<bool>(),
        s(),
        s(),
        sset(),
        prop::collection::btree_set(any::<i32>(), 0..3),
        any::<i64>(),
        s(),
    )
        .prop_map(|(c, t, ss, tags, codes, v, e)| SubscriptionData {
            class_filter_mode: c,
            topic: t,
            sub_string: ss,
            tags_set: tags,
            code_set: codes,
            sub_version: v,
            expression_type: e,
            filter_class_source: None,
        })
}
fn pick<T: Copy + Debug + 'static>(all: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(all)
}
fn consumer_data() -> impl Strategy<Value = ConsumerData> {
    (
        s(),
        pick(ConsumeType::ALL),
        pick(MessageModel::ALL),
        pick(ConsumeFromWhere::ALL),
        prop::collection::vec(sub_data(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(g, ct, mm, cf, subs, u)| ConsumerData {
            group_name: g,
            consume_type: ct,
            message_model: mm,
            consume_from_where: cf,
            subscription_data_set: subs,
            unit_mode: u,
        })
}
fn connection() -> impl Strategy<Value = Connection> {
    (s(), s(), 0u8..14, any::<i32>()).prop_map(|(id, addr, l, v)| Connection {
        client_id: id,
        client_addr: addr,
        language: LanguageCode::from_code(l),
        version: v,
    })
}
fn mq_map<V: Debug + Clone + 'static>(
    v: impl Strategy<Value = V> + 'static,
) -> impl Strategy<Value = BTreeMap<MessageQueue, V>> {
    prop::collection::btree_map(mq(), v, 0..3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn rt_route(qd in prop::collection::vec(queue_data(), 0..3), bd in prop::collection::vec(broker_data(), 0..3),
                otc in opt_s(), fst in prop::collection::btree_map(key(), prop::collection::vec(s(), 0..2), 0..2),
                mapping in prop::option::of(prop::collection::btree_map(key(), json_val(), 0..2))) {
        let r = TopicRouteData { order_topic_conf: otc, queue_datas: qd, broker_datas: bd, filter_server_table: fst, topic_queue_mapping_by_broker: mapping };
        rt!(TopicRouteData, r)?;
        for v in [0, 400, 401, 500] {
            prop_assert_eq!(TopicRouteData::decode(&r.to_json_for_version(v)).unwrap(), r.clone());
        }
    }

    #[test]
    fn rt_queue_broker(q in queue_data(), b in broker_data()) {
        rt!(QueueData, q)?;
        rt!(BrokerData, b)?;
    }

    #[test]
    fn rt_cluster_info(bat in prop::collection::btree_map(key(), broker_data(), 0..3),
                       cat in prop::collection::btree_map(key(), sset(), 0..3)) {
        rt!(ClusterInfo, ClusterInfo { broker_addr_table: bat, cluster_addr_table: cat })?;
    }

    #[test]
    fn rt_topic_bodies(t in topic_config(), table in prop::collection::btree_map(key(), topic_config(), 0..3),
                       dv in data_version(), dv2 in data_version(),
                       info in prop::collection::btree_map(key(), json_val(), 0..2),
                       detail in prop::collection::btree_map(key(), json_val(), 0..2),
                       filters in prop::collection::vec(s(), 0..2), tl in sset(), ba in opt_s(), kv in smap()) {
        rt!(TopicConfig, t)?;
        rt!(DataVersion, dv)?;
        rt!(TopicConfigSerializeWrapper, TopicConfigSerializeWrapper { topic_config_table: table.clone(), data_version: dv.clone() })?;
        let w = TopicConfigAndMappingSerializeWrapper {
            topic_config_table: table, data_version: dv, topic_queue_mapping_info_map: info,
            topic_queue_mapping_detail_map: detail, mapping_data_version: dv2,
        };
        rt!(TopicConfigAndMappingSerializeWrapper, w)?;
        let body = RegisterBrokerBody { topic_config_serialize_wrapper: w, filter_server_list: filters };
        rt!(RegisterBrokerBody, body)?;
        prop_assert_eq!(RegisterBrokerBody::decode_with(&body.encode(), false).unwrap(), body.clone());
        rt!(TopicList, TopicList { topic_list: tl, broker_addr: ba })?;
        rt!(KVTable, KVTable { table: kv })?;
    }

    #[test]
    fn rt_heartbeat(id in s(), producers in prop::collection::vec(s(), 0..3),
                    consumers in prop::collection::vec(consumer_data(), 0..3), fp in any::<i32>(), ws in any::<bool>()) {
        let h = HeartbeatData {
            client_id: id,
            producer_data_set: producers.into_iter().map(|g| ProducerData { group_name: g }).collect(),
            consumer_data_set: consumers,
            heartbeat_fingerprint: fp,
            without_sub: ws,
        };
        rt!(HeartbeatData, h)?;
        for c in &h.consumer_data_set {
            rt!(ConsumerData, c)?;
            for sd in &c.subscription_data_set {
                rt!(SubscriptionData, sd)?;
            }
        }
    }

    #[test]
    fn rt_connections_and_locks(conns in prop::collection::vec(connection(), 0..3),
                                subs in prop::collection::btree_map(key(), sub_data(), 0..2),
                                ct in pick(ConsumeType::ALL), mm in pick(MessageModel::ALL), cf in pick(ConsumeFromWhere::ALL),
                                g in s(), c in s(), otb in any::<bool>(), mqs in prop::collection::btree_set(mq(), 0..4),
                                ids in prop::collection::vec(s(), 0..3), m in mq()) {
        rt!(MessageQueue, m)?;
        for conn in &conns {
            rt!(Connection, conn)?;
        }
        rt!(ConsumerConnection, ConsumerConnection { connection_set: conns.clone(), subscription_table: subs, consume_type: ct, message_model: mm, consume_from_where: cf })?;
        rt!(ProducerConnection, ProducerConnection { connection_set: conns })?;
        rt!(LockBatchRequestBody, LockBatchRequestBody { consumer_group: g, client_id: c, only_this_broker: otb, mq_set: mqs.clone() })?;
        rt!(LockBatchResponseBody, LockBatchResponseBody { lock_ok_mq_set: mqs })?;
        rt!(GetConsumerListByGroupResponseBody, GetConsumerListByGroupResponseBody { consumer_id_list: ids })?;
    }

    #[test]
    fn rt_stats(ow in mq_map((any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>()).prop_map(|(a, b, c, d, e)| OffsetWrapper { broker_offset: a, consumer_offset: b, pull_offset: c, last_timestamp: d, pop_inflight: e })),
                tps in f(),
                to in mq_map((any::<i64>(), any::<i64>(), any::<i64>()).prop_map(|(a, b, c)| TopicOffset { min_offset: a, max_offset: b, last_update_timestamp: c })),
                put_tps in prop::option::of(f()),
                reset in mq_map(any::<i64>())) {
        for w in ow.values() {
            rt!(OffsetWrapper, w)?;
        }
        rt!(ConsumeStats, ConsumeStats { offset_table: ow, consume_tps: tps })?;
        for t in to.values() {
            rt!(TopicOffset, t)?;
        }
        rt!(TopicStatsTable, TopicStatsTable { offset_table: to, topic_put_tps: put_tps })?;
        let r = ResetOffsetBody { offset_table: reset };
        rt!(ResetOffsetBody, r)?;
        let rc = ResetOffsetBodyForC::from(&r);
        for e in &rc.offset_table {
            rt!(MessageQueueForC, e)?;
        }
        rt!(ResetOffsetBodyForC, rc)?;
    }

    #[test]
    fn rt_groups(name in s(), bools in prop::collection::vec(any::<bool>(), 5), ints in prop::collection::vec(any::<i32>(), 4),
                 longs in (any::<i64>(), any::<i64>()), policy in prop::option::of(json_val()), subs in prop::option::of(json_val()),
                 attrs in smap(), gl in sset(),
                 forbidden in prop::collection::btree_map(key(), prop::collection::btree_map(key(), any::<i32>(), 0..2), 0..2),
                 dv in data_version()) {
        let g = SubscriptionGroupConfig {
            group_name: name.clone(),
            consume_enable: bools[0],
            consume_from_min_enable: bools[1],
            consume_broadcast_enable: bools[2],
            consume_message_orderly: bools[3],
            retry_queue_nums: ints[0],
            retry_max_times: ints[1],
            group_retry_policy: policy,
            broker_id: longs.0,
            which_broker_when_consume_slowly: longs.1,
            notify_consumer_ids_changed_enable: bools[4],
            group_sys_flag: ints[2],
            consume_timeout_minute: ints[3],
            subscription_data_set: subs,
            attributes: attrs,
        };
        rt!(SubscriptionGroupConfig, g)?;
        rt!(SubscriptionGroupWrapper, SubscriptionGroupWrapper { subscription_group_table: BTreeMap::from([(name, g)]), forbidden_table: forbidden, data_version: dv })?;
        rt!(GroupList, GroupList { group_list: gl })?;
    }

    #[test]
    fn rt_client_bodies(props in prop::collection::btree_map(key(), json_val(), 0..3), subs in prop::collection::vec(sub_data(), 0..2),
                        mqt in mq_map(json_val()), mqp in mq_map(json_val()),
                        status in prop::collection::btree_map(key(), json_val(), 0..2), uci in smap(), jstack in opt_s(),
                        order in any::<bool>(), ac in any::<bool>(), res in prop::option::of(pick(CMResult::ALL)), remark in opt_s(), spent in any::<i64>(),
                        cid in s(), grp in s(), sd in prop::option::of(sub_data()), ns in opt_s(),
                        spans in prop::collection::vec((prop::option::of(mq()), any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>()), 0..3)) {
        rt!(ConsumerRunningInfo, ConsumerRunningInfo { properties: props, subscription_set: subs, mq_table: mqt, mq_pop_table: mqp, status_table: status, user_consumer_info: uci, jstack })?;
        rt!(ConsumeMessageDirectlyResult, ConsumeMessageDirectlyResult { order, auto_commit: ac, consume_result: res, remark, spent_time_mills: spent })?;
        rt!(CheckClientRequestBody, CheckClientRequestBody { client_id: cid, group: grp, subscription_data: sd, namespace: ns })?;
        let spans: Vec<QueueTimeSpan> = spans.into_iter().map(|(m, a, b, c, d)| QueueTimeSpan { message_queue: m, min_time_stamp: a, max_time_stamp: b, consume_time_stamp: c, delay_time: d }).collect();
        for sp in &spans {
            rt!(QueueTimeSpan, sp)?;
        }
        rt!(QueryConsumeTimeSpanBody, QueryConsumeTimeSpanBody { consume_time_span_set: spans })?;
    }

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_all(&data);
    }

    #[test]
    fn random_jsonish_text_never_panics(text in "[{}\\[\\]:,\"'0-9a-zA-Z \\\\.nul-]{0,80}") {
        decode_all(text.as_bytes());
        let _ = apogee_protocol::body::fastjson::to_standard_json(text.as_bytes());
    }

    #[test]
    fn converter_output_is_standard_json(v in json_val()) {
        // Whatever valid JSON goes in, valid equivalent JSON comes out.
        let text = serde_json::to_vec(&v).unwrap();
        let out = apogee_protocol::body::fastjson::to_standard_json(&text).unwrap();
        prop_assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), v);
    }
}
