//! Round-trips every typed header through `extFields` and through a whole
//! JSON frame, plus the lenient-parsing, error and V1/V2 conversion rules.

use apogee_protocol::ExtFields;

use apogee_protocol::code::request_code;
use apogee_protocol::header::*;
use apogee_protocol::{ProtocolError, RemotingCommand};
use bytes::Buf;
use proptest::prelude::*;

/// Raw random material from which headers are built: each header draws its
/// field values from these pools in order, so one strategy serves every
/// header type and the struct literals below must name every field.
#[derive(Debug, Clone)]
struct Pools {
    strs: Vec<String>,
    ints: Vec<i32>,
    longs: Vec<i64>,
    bools: Vec<bool>,
}

fn pools() -> impl Strategy<Value = Pools> {
    (
        prop::collection::vec(any::<String>(), 24),
        prop::collection::vec(any::<i32>(), 24),
        prop::collection::vec(any::<i64>(), 24),
        prop::collection::vec(any::<bool>(), 64),
    )
        .prop_map(|(strs, ints, longs, bools)| Pools {
            strs,
            ints,
            longs,
            bools,
        })
}

struct Gen {
    p: Pools,
    n: usize,
}

impl Gen {
    fn next(&mut self) -> usize {
        self.n += 1;
        self.n
    }
    fn s(&mut self) -> String {
        let i = self.next();
        self.p.strs[i % self.p.strs.len()].clone()
    }
    fn i(&mut self) -> i32 {
        let i = self.next();
        self.p.ints[i % self.p.ints.len()]
    }
    fn l(&mut self) -> i64 {
        let i = self.next();
        self.p.longs[i % self.p.longs.len()]
    }
    fn b(&mut self) -> bool {
        let i = self.next();
        self.p.bools[i % self.p.bools.len()]
    }
    fn some(&mut self) -> bool {
        self.b()
    }
    fn os(&mut self) -> Option<String> {
        if self.some() {
            Some(self.s())
        } else {
            None
        }
    }
    fn oi(&mut self) -> Option<i32> {
        if self.some() {
            Some(self.i())
        } else {
            None
        }
    }
    fn ol(&mut self) -> Option<i64> {
        if self.some() {
            Some(self.l())
        } else {
            None
        }
    }
    fn ob(&mut self) -> Option<bool> {
        if self.some() {
            Some(self.b())
        } else {
            None
        }
    }
    fn rpc(&mut self) -> RpcFields {
        RpcFields {
            broker_name: self.os(),
            namespace: self.os(),
            namespaced: self.ob(),
            oneway: self.ob(),
            logical: self.ob(),
        }
    }
}

/// Encodes `cmd` as a JSON frame and decodes it again.
fn through_json_frame(cmd: &RemotingCommand) -> RemotingCommand {
    let mut frame = cmd.to_bytes();
    frame.advance(4); // the length prefix, which the frame codec strips
    match RemotingCommand::decode_frame(frame) {
        Ok(c) => c,
        Err(e) => panic!("frame did not decode: {e}"),
    }
}

macro_rules! roundtrip {
    ($($test:ident: $ty:ident { $($field:ident: $gen:ident),* $(,)? })*) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]
            $(
                #[test]
                #[allow(unused_variables, unused_mut)]
                fn $test(p in pools()) {
                    let mut g = Gen { p, n: 0 };
                    let h = $ty { $($field: g.$gen(),)* };
                    let mut ext = ExtFields::new();
                    h.write_ext(&mut ext);
                    prop_assert_eq!(<$ty>::read_ext(&ext), Ok(h.clone()));
                    let cmd = RemotingCommand::request(0).with_header(&h);
                    let back = through_json_frame(&cmd);
                    prop_assert_eq!(back.decode_header::<$ty>(), Ok(h));
                }
            )*
        }
    };
}

roundtrip! {
    get_route_info_request_header: GetRouteInfoRequestHeader { topic: s, accept_standard_json_only: ob, rpc: rpc }
    register_broker_request_header: RegisterBrokerRequestHeader { broker_name: s, broker_addr: s, cluster_name: s, ha_server_addr: s, broker_id: l, heartbeat_timeout_millis: ol, enable_acting_master: ob, compressed: b, body_crc32: i, zone_name: os }
    register_broker_response_header: RegisterBrokerResponseHeader { ha_server_addr: os, master_addr: os }
    un_register_broker_request_header: UnRegisterBrokerRequestHeader { broker_name: s, broker_addr: s, cluster_name: s, broker_id: l }
    broker_heartbeat_request_header: BrokerHeartbeatRequestHeader { cluster_name: s, broker_addr: s, broker_name: s, broker_id: ol, epoch: oi, max_offset: ol, confirm_offset: ol, heartbeat_timeout_mills: ol, election_priority: oi }
    query_data_version_request_header: QueryDataVersionRequestHeader { broker_name: s, broker_addr: s, cluster_name: s, broker_id: l }
    query_data_version_response_header: QueryDataVersionResponseHeader { changed: b }
    put_k_v_config_request_header: PutKVConfigRequestHeader { namespace: s, key: s, value: s }
    get_k_v_config_request_header: GetKVConfigRequestHeader { namespace: s, key: s }
    get_k_v_config_response_header: GetKVConfigResponseHeader { value: os }
    delete_k_v_config_request_header: DeleteKVConfigRequestHeader { namespace: s, key: s }
    get_k_v_list_by_namespace_request_header: GetKVListByNamespaceRequestHeader { namespace: s }
    delete_topic_from_namesrv_request_header: DeleteTopicFromNamesrvRequestHeader { topic: s, cluster_name: os, rpc: rpc }
    register_topic_request_header: RegisterTopicRequestHeader { topic: s, rpc: rpc }
    register_order_topic_request_header: RegisterOrderTopicRequestHeader { topic: s, order_topic_string: s }
    get_topics_by_cluster_request_header: GetTopicsByClusterRequestHeader { cluster: s }
    wipe_write_perm_of_broker_request_header: WipeWritePermOfBrokerRequestHeader { broker_name: s }
    wipe_write_perm_of_broker_response_header: WipeWritePermOfBrokerResponseHeader { wipe_topic_count: i }
    add_write_perm_of_broker_request_header: AddWritePermOfBrokerRequestHeader { broker_name: s }
    add_write_perm_of_broker_response_header: AddWritePermOfBrokerResponseHeader { add_topic_count: i }
    send_message_request_header: SendMessageRequestHeader { producer_group: s, topic: s, default_topic: s, default_topic_queue_nums: i, queue_id: i, sys_flag: i, born_timestamp: l, flag: i, properties: os, reconsume_times: oi, unit_mode: ob, batch: ob, max_reconsume_times: oi, rpc: rpc }
    send_message_request_header_v2: SendMessageRequestHeaderV2 { producer_group: s, topic: s, default_topic: s, default_topic_queue_nums: i, queue_id: i, sys_flag: i, born_timestamp: l, flag: i, properties: os, reconsume_times: oi, unit_mode: ob, max_reconsume_times: oi, batch: ob, broker_name: os, namespace: os, namespaced: ob, oneway: ob, logical: ob }
    send_message_response_header: SendMessageResponseHeader { msg_id: s, queue_id: i, queue_offset: l, transaction_id: os, batch_uniq_id: os, recall_handle: os, msg_region: os, trace_on: os }
    reply_message_request_header: ReplyMessageRequestHeader { producer_group: s, topic: s, default_topic: s, default_topic_queue_nums: i, queue_id: i, sys_flag: i, born_timestamp: l, flag: i, properties: os, reconsume_times: oi, unit_mode: b, born_host: s, store_host: s, store_timestamp: l, rpc: rpc }
    consumer_send_msg_back_request_header: ConsumerSendMsgBackRequestHeader { offset: l, group: s, delay_level: i, origin_msg_id: os, origin_topic: os, unit_mode: b, max_reconsume_times: oi, rpc: rpc }
    end_transaction_request_header: EndTransactionRequestHeader { topic: os, producer_group: s, tran_state_table_offset: l, commit_log_offset: l, commit_or_rollback: i, from_transaction_check: b, msg_id: s, transaction_id: os, rpc: rpc }
    end_transaction_response_header: EndTransactionResponseHeader {  }
    check_transaction_state_request_header: CheckTransactionStateRequestHeader { topic: os, tran_state_table_offset: l, commit_log_offset: l, msg_id: os, transaction_id: os, offset_msg_id: os, rpc: rpc }
    recall_message_request_header: RecallMessageRequestHeader { producer_group: os, topic: s, recall_handle: s, rpc: rpc }
    recall_message_response_header: RecallMessageResponseHeader { msg_id: s }
    pull_message_request_header: PullMessageRequestHeader { consumer_group: s, topic: s, queue_id: i, queue_offset: l, max_msg_nums: i, sys_flag: i, commit_offset: l, suspend_timeout_millis: l, subscription: os, sub_version: l, expression_type: os, max_msg_bytes: oi, request_source: oi, proxy_froward_client_id: os, rpc: rpc }
    pull_message_response_header: PullMessageResponseHeader { suggest_which_broker_id: l, next_begin_offset: l, min_offset: l, max_offset: l, offset_delta: ol, topic_sys_flag: oi, group_sys_flag: oi, forbidden_type: oi }
    lock_batch_mq_request_header: LockBatchMqRequestHeader { rpc: rpc }
    unlock_batch_mq_request_header: UnlockBatchMqRequestHeader { rpc: rpc }
    query_consumer_offset_request_header: QueryConsumerOffsetRequestHeader { consumer_group: s, topic: s, queue_id: i, set_zero_if_not_found: ob, rpc: rpc }
    query_consumer_offset_response_header: QueryConsumerOffsetResponseHeader { offset: l }
    update_consumer_offset_request_header: UpdateConsumerOffsetRequestHeader { consumer_group: s, topic: s, queue_id: i, commit_offset: l, rpc: rpc }
    update_consumer_offset_response_header: UpdateConsumerOffsetResponseHeader {  }
    get_max_offset_request_header: GetMaxOffsetRequestHeader { topic: s, queue_id: i, committed: b, rpc: rpc }
    get_max_offset_response_header: GetMaxOffsetResponseHeader { offset: l }
    get_min_offset_request_header: GetMinOffsetRequestHeader { topic: s, queue_id: i, rpc: rpc }
    get_min_offset_response_header: GetMinOffsetResponseHeader { offset: l }
    search_offset_request_header: SearchOffsetRequestHeader { topic: s, queue_id: i, timestamp: l, boundary_type: os, rpc: rpc }
    search_offset_response_header: SearchOffsetResponseHeader { offset: l }
    get_earliest_msg_storetime_request_header: GetEarliestMsgStoretimeRequestHeader { topic: s, queue_id: i, rpc: rpc }
    get_earliest_msg_storetime_response_header: GetEarliestMsgStoretimeResponseHeader { timestamp: l }
    query_message_request_header: QueryMessageRequestHeader { topic: s, key: s, max_num: i, begin_timestamp: l, end_timestamp: l, unique_key_query: ob, rpc: rpc }
    query_message_response_header: QueryMessageResponseHeader { index_last_update_timestamp: l, index_last_update_phyoffset: l }
    view_message_request_header: ViewMessageRequestHeader { topic: os, offset: l }
    view_message_response_header: ViewMessageResponseHeader {  }
    heartbeat_request_header: HeartbeatRequestHeader { rpc: rpc }
    unregister_client_request_header: UnregisterClientRequestHeader { client_id: s, producer_group: os, consumer_group: os, rpc: rpc }
    unregister_client_response_header: UnregisterClientResponseHeader {  }
    get_consumer_list_by_group_request_header: GetConsumerListByGroupRequestHeader { consumer_group: s, rpc: rpc }
    get_consumer_list_by_group_response_header: GetConsumerListByGroupResponseHeader {  }
    notify_consumer_ids_changed_request_header: NotifyConsumerIdsChangedRequestHeader { consumer_group: s, rpc: rpc }
    get_consumer_running_info_request_header: GetConsumerRunningInfoRequestHeader { consumer_group: s, client_id: s, jstack_enable: b, rpc: rpc }
    consume_message_directly_result_request_header: ConsumeMessageDirectlyResultRequestHeader { consumer_group: s, client_id: os, msg_id: os, broker_name: os, topic: os, topic_sys_flag: oi, group_sys_flag: oi, rpc: rpc }
    reset_offset_request_header: ResetOffsetRequestHeader { group: s, topic: s, queue_id: i, offset: ol, timestamp: l, is_force: b, rpc: rpc }
    get_consumer_status_request_header: GetConsumerStatusRequestHeader { topic: s, group: s, client_addr: os, rpc: rpc }
    create_topic_request_header: CreateTopicRequestHeader { topic: s, default_topic: s, read_queue_nums: i, write_queue_nums: i, perm: i, topic_filter_type: s, topic_sys_flag: oi, order: b, attributes: os, force: b, rpc: rpc }
    delete_topic_request_header: DeleteTopicRequestHeader { topic: s, rpc: rpc }
    get_all_topic_config_request_header: GetAllTopicConfigRequestHeader { topic_seq: oi, data_version: os, max_topic_num: oi }
    get_all_topic_config_response_header: GetAllTopicConfigResponseHeader { total_topic_num: i }
    get_all_subscription_group_request_header: GetAllSubscriptionGroupRequestHeader { group_seq: oi, data_version: os, max_group_num: oi }
    get_all_subscription_group_response_header: GetAllSubscriptionGroupResponseHeader { total_group_num: i }
    get_topic_stats_info_request_header: GetTopicStatsInfoRequestHeader { topic: s, rpc: rpc }
    get_consume_stats_request_header: GetConsumeStatsRequestHeader { consumer_group: s, topic: os, topic_list: os, rpc: rpc }
    get_consume_stats_in_broker_header: GetConsumeStatsInBrokerHeader { is_order: b }
    get_consumer_connection_list_request_header: GetConsumerConnectionListRequestHeader { consumer_group: s, rpc: rpc }
    get_producer_connection_list_request_header: GetProducerConnectionListRequestHeader { producer_group: s, rpc: rpc }
    get_topic_config_request_header: GetTopicConfigRequestHeader { topic: s, rpc: rpc }
    get_subscription_group_config_request_header: GetSubscriptionGroupConfigRequestHeader { group: s, rpc: rpc }
    query_topic_consume_by_who_request_header: QueryTopicConsumeByWhoRequestHeader { topic: s, rpc: rpc }
    query_topics_by_consumer_request_header: QueryTopicsByConsumerRequestHeader { group: s, rpc: rpc }
    query_subscription_by_consumer_request_header: QuerySubscriptionByConsumerRequestHeader { group: s, topic: os, rpc: rpc }
    delete_subscription_group_request_header: DeleteSubscriptionGroupRequestHeader { group_name: s, clean_offset: b, rpc: rpc }
    get_broker_config_response_header: GetBrokerConfigResponseHeader { version: s }
    query_consume_time_span_request_header: QueryConsumeTimeSpanRequestHeader { topic: s, group: s, rpc: rpc }
    query_correction_offset_header: QueryCorrectionOffsetHeader { filter_groups: os, compare_group: s, topic: s, rpc: rpc }
    clone_group_offset_request_header: CloneGroupOffsetRequestHeader { src_group: s, dest_group: s, topic: os, offline: b, rpc: rpc }
    view_broker_stats_data_request_header: ViewBrokerStatsDataRequestHeader { stats_name: s, stats_key: s }
    get_broker_member_group_request_header: GetBrokerMemberGroupRequestHeader { cluster_name: s, broker_name: s }
    resume_check_half_message_request_header: ResumeCheckHalfMessageRequestHeader { topic: os, msg_id: os }
    update_group_forbidden_request_header: UpdateGroupForbiddenRequestHeader { group: s, topic: s, readable: ob, rpc: rpc }
}

fn ext(pairs: &[(&str, &str)]) -> ExtFields {
    pairs.iter().copied().collect()
}

fn v1_sample() -> SendMessageRequestHeader {
    SendMessageRequestHeader {
        producer_group: "pg".into(),
        topic: "TopicTest".into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: 3,
        sys_flag: 0,
        born_timestamp: 1_700_000_000_000,
        flag: 0,
        properties: Some("KEYS\u{1}k1\u{2}".into()),
        reconsume_times: None,
        unit_mode: Some(false),
        batch: Some(true),
        max_reconsume_times: Some(16),
        rpc: RpcFields {
            broker_name: Some("broker-a".into()),
            ..Default::default()
        },
    }
}

proptest! {
    #[test]
    fn send_v1_v2_conversion_is_lossless(p in pools()) {
        let mut g = Gen { p, n: 0 };
        let v1 = SendMessageRequestHeader {
            producer_group: g.s(), topic: g.s(), default_topic: g.s(),
            default_topic_queue_nums: g.i(), queue_id: g.i(), sys_flag: g.i(),
            born_timestamp: g.l(), flag: g.i(), properties: g.os(),
            reconsume_times: g.oi(), unit_mode: g.ob(), batch: g.ob(),
            max_reconsume_times: g.oi(), rpc: g.rpc(),
        };
        let v2: SendMessageRequestHeaderV2 = v1.clone().into();
        prop_assert_eq!(SendMessageRequestHeader::from(v2.clone()), v1);
        prop_assert_eq!(SendMessageRequestHeaderV2::from(SendMessageRequestHeader::from(v2.clone())), v2);
    }

    #[test]
    fn numbers_with_surrounding_spaces_parse(n in any::<i64>(), pre in " {0,3}", post in "[ \t]{0,3}") {
        let e = ext(&[("offset", &format!("{pre}{n}{post}"))]);
        prop_assert_eq!(QueryConsumerOffsetResponseHeader::read_ext(&e), Ok(QueryConsumerOffsetResponseHeader { offset: n }));
    }

    #[test]
    fn arbitrary_ext_maps_never_panic(m in prop::collection::hash_map("[a-zA-Z]{1,12}", ".{0,8}", 0..12)) {
        // Any outcome is fine as long as decoding returns instead of panicking.
        let m: ExtFields = m.into_iter().collect();
        let _ = PullMessageRequestHeader::read_ext(&m);
        let _ = RegisterBrokerRequestHeader::read_ext(&m);
        let _ = SendMessageRequestHeaderV2::read_ext_labelled(&m);
    }
}

#[test]
fn v1_to_v2_keys_on_the_wire() {
    let v2: SendMessageRequestHeaderV2 = v1_sample().into();
    let cmd = RemotingCommand::request(request_code::SEND_MESSAGE_V2).with_header(&v2);
    assert_eq!(cmd.ext("a"), Some("pg"));
    assert_eq!(cmd.ext("b"), Some("TopicTest"));
    assert_eq!(cmd.ext("d"), Some("4"));
    assert_eq!(cmd.ext("g"), Some("1700000000000"));
    assert_eq!(cmd.ext("m"), Some("true"));
    assert_eq!(cmd.ext("l"), Some("16"));
    assert_eq!(cmd.ext("n"), Some("broker-a"));
    assert_eq!(cmd.ext("j"), None);
    assert_eq!(cmd.ext("producerGroup"), None);
    assert_eq!(decode_send_header(&cmd), Ok(v1_sample()));
}

#[test]
fn send_header_is_decoded_by_request_code() {
    let v1 = v1_sample();
    let v2: SendMessageRequestHeaderV2 = v1.clone().into();
    for code in [
        request_code::SEND_MESSAGE_V2,
        request_code::SEND_BATCH_MESSAGE,
        request_code::SEND_REPLY_MESSAGE_V2,
    ] {
        let cmd = RemotingCommand::request(code).with_header(&v2);
        assert_eq!(decode_send_header(&cmd), Ok(v1.clone()), "code {code}");
        // The long keys are not looked at for these codes.
        let wrong = RemotingCommand::request(code).with_header(&v1);
        assert_eq!(
            decode_send_header(&wrong),
            Err(ProtocolError::MissingField("a (producerGroup)"))
        );
    }
    for code in [request_code::SEND_MESSAGE, request_code::SEND_REPLY_MESSAGE] {
        let cmd = RemotingCommand::request(code).with_header(&v1);
        assert_eq!(decode_send_header(&cmd), Ok(v1.clone()), "code {code}");
    }
}

#[test]
fn cpp_style_v2_with_digit_booleans_and_padded_numbers() {
    let mut cmd = RemotingCommand::request(request_code::SEND_MESSAGE_V2);
    for (k, v) in [
        ("a", "cpp_group"),
        ("b", "TopicTest"),
        ("c", "TBW102"),
        ("d", " 4"),
        ("e", "0 "),
        ("f", "0"),
        ("g", "1700000000123"),
        ("h", "0"),
        ("k", "0"),
        ("m", "1"),
        ("j", ""),
    ] {
        cmd.set_ext(k, v);
    }
    let h = decode_send_header(&cmd).unwrap();
    assert_eq!(h.default_topic_queue_nums, 4);
    assert_eq!(h.queue_id, 0);
    assert_eq!(h.unit_mode, Some(false));
    assert_eq!(h.batch, Some(true));
    // A blank optional number counts as absent, as in Java's reflective decoder.
    assert_eq!(h.reconsume_times, None);
}

#[test]
fn bad_v2_value_names_both_keys_and_the_value() {
    let mut v2: SendMessageRequestHeaderV2 = v1_sample().into();
    v2.queue_id = 0;
    let mut cmd = RemotingCommand::request(request_code::SEND_MESSAGE_V2).with_header(&v2);
    cmd.set_ext("e", "three");
    match decode_send_header(&cmd) {
        Err(ProtocolError::InvalidField { field, value, .. }) => {
            assert_eq!(field, "e (queueId)");
            assert_eq!(value, "three");
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = decode_send_header(&cmd).unwrap_err().to_string();
    assert!(err.contains("queueId") && err.contains("three"), "{err}");
}

#[test]
fn missing_required_field_is_named() {
    let e = ext(&[
        ("consumerGroup", "g"),
        ("topic", "t"),
        ("queueId", "1"),
        ("queueOffset", "0"),
        ("maxMsgNums", "32"),
        ("sysFlag", "3"),
        ("commitOffset", "0"),
        ("suspendTimeoutMillis", "15000"),
    ]);
    assert_eq!(
        PullMessageRequestHeader::read_ext(&e),
        Err(ProtocolError::MissingField("subVersion"))
    );
    let mut e = e;
    e.insert("subVersion", "1700000000000");
    let h = PullMessageRequestHeader::read_ext(&e).unwrap();
    assert_eq!(h.sys_flag, 3);
    assert_eq!(h.subscription, None);
    assert_eq!(h.rpc, RpcFields::default());
}

#[test]
fn bad_numeric_and_boolean_values_are_reported() {
    let e = ext(&[("consumerGroup", "g"), ("topic", "t"), ("queueId", "1x")]);
    match QueryConsumerOffsetRequestHeader::read_ext(&e) {
        Err(ProtocolError::InvalidField { field, value, .. }) => {
            assert_eq!((field, value.as_str()), ("queueId", "1x"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = ext(&[
        ("consumerGroup", "g"),
        ("topic", "t"),
        ("queueId", "1"),
        ("setZeroIfNotFound", "maybe"),
    ]);
    match QueryConsumerOffsetRequestHeader::read_ext(&e) {
        Err(ProtocolError::InvalidField { field, value, .. }) => {
            assert_eq!((field, value.as_str()), ("setZeroIfNotFound", "maybe"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn java_defaults_apply_when_primitives_are_absent() {
    let e = ext(&[("topic", "t"), ("queueId", "0")]);
    assert!(GetMaxOffsetRequestHeader::read_ext(&e).unwrap().committed);
    let e = ext(&[
        ("group", "g"),
        ("topic", "t"),
        ("timestamp", "0"),
        ("isForce", "true"),
    ]);
    let r = ResetOffsetRequestHeader::read_ext(&e).unwrap();
    assert_eq!(r.queue_id, -1);
    assert!(r.is_force);
    // Old clients send GET_ALL_TOPIC_CONFIG without any header.
    assert_eq!(
        GetAllTopicConfigRequestHeader::read_ext(&ExtFields::new()),
        Ok(GetAllTopicConfigRequestHeader::default())
    );
    // An empty header decodes from anything.
    assert_eq!(
        HeartbeatRequestHeader::read_ext(&ext(&[("bname", "b")]))
            .unwrap()
            .rpc
            .broker_name
            .as_deref(),
        Some("b")
    );
}

#[test]
fn response_headers_emit_only_present_fields() {
    let h = PullMessageResponseHeader {
        suggest_which_broker_id: 0,
        next_begin_offset: 10,
        min_offset: 0,
        max_offset: 10,
        ..Default::default()
    };
    let cmd =
        RemotingCommand::response(19, Some("OFFSET_OVERFLOW_ONE".to_string())).with_header(&h);
    assert_eq!(cmd.ext_fields.len(), 4);
    assert_eq!(cmd.ext("nextBeginOffset"), Some("10"));
    assert_eq!(cmd.ext("offsetDelta"), None);
}

#[test]
fn search_offset_boundary() {
    let mut h = SearchOffsetRequestHeader::default();
    assert!(!h.is_upper_boundary());
    h.boundary_type = Some("upper".into());
    assert!(h.is_upper_boundary());
    h.boundary_type = Some("LOWER".into());
    assert!(!h.is_upper_boundary());
}
