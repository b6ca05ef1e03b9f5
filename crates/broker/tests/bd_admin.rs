//! In-process tests of the admin and query processors over real TCP on
//! 127.0.0.1 with a tempdir store: offsets and offset search, query by key,
//! by unique key and by offset id, topic and group CRUD, consume and topic
//! stats, offset reset with the push to a connected consumer, connections
//! and forwarded client calls, runtime info and broker config — each happy
//! path with its body decoded, and each error path with code and remark.

mod ba_common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_broker::context::BrokerContext;
use apogee_broker::BrokerController;
use apogee_protocol::body::{
    ConsumeMessageDirectlyResult, ConsumeStats, ConsumerConnection, ConsumerData, GroupList,
    HeartbeatData, KVTable, MessageQueue, ProducerConnection, ProducerData, ResetOffsetBody,
    SubscriptionData, SubscriptionGroupConfig, SubscriptionGroupWrapper, TopicConfig,
    TopicConfigAndMappingSerializeWrapper, TopicList, TopicStatsTable,
};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{
    ConsumeMessageDirectlyResultRequestHeader, CreateTopicRequestHeader,
    DeleteSubscriptionGroupRequestHeader, DeleteTopicRequestHeader,
    GetAllTopicConfigResponseHeader, GetBrokerConfigResponseHeader, GetConsumeStatsInBrokerHeader,
    GetConsumeStatsRequestHeader, GetConsumerConnectionListRequestHeader,
    GetConsumerRunningInfoRequestHeader, GetConsumerStatusRequestHeader,
    GetEarliestMsgStoretimeRequestHeader, GetEarliestMsgStoretimeResponseHeader,
    GetMaxOffsetRequestHeader, GetMaxOffsetResponseHeader, GetMinOffsetRequestHeader,
    GetMinOffsetResponseHeader, GetProducerConnectionListRequestHeader,
    GetSubscriptionGroupConfigRequestHeader, GetTopicConfigRequestHeader,
    GetTopicStatsInfoRequestHeader, QueryMessageRequestHeader, QueryMessageResponseHeader,
    QueryTopicConsumeByWhoRequestHeader, ResetOffsetRequestHeader, SearchOffsetRequestHeader,
    SearchOffsetResponseHeader, SendMessageRequestHeader, SendMessageResponseHeader,
    ViewMessageRequestHeader,
};
use apogee_protocol::message::{decode_offset_msg_id, decode_stored_many_strict, DecodedMessage};
use apogee_protocol::{java_properties, RemotingCommand};
use apogee_remoting::{processor_fn, ClientConfig, ProcessorRegistry, RemotingClient};
use bytes::Bytes;
use tokio::sync::mpsc;

struct Broker {
    ctl: BrokerController,
    ctx: Arc<BrokerContext>,
    addr: String,
    client: RemotingClient,
    _dir: tempfile::TempDir,
}

impl Broker {
    async fn start() -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ba_common::broker_config(dir.path(), None);
        let ctl = BrokerController::start(cfg).await.expect("broker start");
        let ctx = Arc::clone(ctl.context());
        Broker {
            addr: ctl.local_addr().to_string(),
            ctl,
            ctx,
            client: RemotingClient::new(ClientConfig::default()),
            _dir: dir,
        }
    }

    async fn call(&self, cmd: RemotingCommand) -> RemotingCommand {
        self.client
            .invoke(&self.addr, cmd, Duration::from_secs(20))
            .await
            .expect("invoke")
    }

    async fn call_h<H: apogee_protocol::header::CommandHeader>(
        &self,
        code: i32,
        h: &H,
    ) -> RemotingCommand {
        self.call(RemotingCommand::request(code).with_header(h))
            .await
    }

    fn topic(&self, name: &str, queues: i32) {
        self.ctx.topics.update(TopicConfig {
            topic_name: name.into(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            ..Default::default()
        });
    }

    /// Sends one message; returns the response header.
    async fn send(
        &self,
        topic: &str,
        queue_id: i32,
        keys: &str,
        uniq: &str,
        body: &str,
    ) -> SendMessageResponseHeader {
        let props = format!(
            "KEYS\u{1}{keys}\u{2}UNIQ_KEY\u{1}{uniq}\u{2}TAGS\u{1}TagA\u{2}WAIT\u{1}true\u{2}"
        );
        let h = SendMessageRequestHeader {
            producer_group: "PG".into(),
            topic: topic.into(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id,
            sys_flag: 0,
            born_timestamp: 1_700_000_000_000,
            flag: 0,
            properties: Some(props),
            ..Default::default()
        };
        let resp = self
            .call(
                RemotingCommand::request(request_code::SEND_MESSAGE)
                    .with_header(&h)
                    .with_body(Bytes::from(body.to_owned())),
            )
            .await;
        assert_eq!(resp.code, response_code::SUCCESS, "send: {:?}", resp.remark);
        resp.decode_header().expect("send response header")
    }

    async fn wait_queue(&self, topic: &str, queue_id: i32, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ctx.store.max_offset(topic, queue_id) < n {
            assert!(
                Instant::now() < deadline,
                "{topic}:{queue_id} never reached {n} messages"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn stop(self) {
        self.client.close().await;
        self.ctl.shutdown().await;
    }
}

fn uniq(i: usize) -> String {
    format!("{:032X}", 0x5EED_0000u64 + i as u64)
}

fn records(resp: &RemotingCommand) -> Vec<DecodedMessage> {
    decode_stored_many_strict(&resp.body.clone().unwrap_or_default(), true).expect("records")
}

fn remark(resp: &RemotingCommand) -> &str {
    resp.remark.as_deref().unwrap_or("")
}

/// A consumer (and producer) client whose connection answers
/// broker-initiated calls: pushed requests are forwarded to `pushed`,
/// GET_CONSUMER_RUNNING_INFO is answered with a fixed body.
struct FakeClient {
    client: RemotingClient,
    pushed: mpsc::UnboundedReceiver<RemotingCommand>,
}

impl FakeClient {
    async fn connect(
        b: &Broker,
        client_id: &str,
        group: &str,
        topics: &[&str],
        producer_group: Option<&str>,
    ) -> Self {
        let (tx, pushed) = mpsc::unbounded_channel();
        let registry = ProcessorRegistry::new();
        let push_tx = tx.clone();
        registry.register(
            request_code::RESET_CONSUMER_CLIENT_OFFSET,
            processor_fn(move |_, req| {
                let tx = push_tx.clone();
                async move {
                    let _ = tx.send(req);
                    Ok(None)
                }
            }),
        );
        registry.register(
            request_code::GET_CONSUMER_RUNNING_INFO,
            processor_fn(move |_, req: RemotingCommand| async move {
                let who = req.ext("clientId").unwrap_or("").to_owned();
                Ok(Some(
                    RemotingCommand::response(response_code::SUCCESS, None).with_body(
                        format!(r#"{{"properties":{{"answeredBy":"{who}"}}}}"#).into_bytes(),
                    ),
                ))
            }),
        );
        registry.register(
            request_code::GET_CONSUMER_STATUS_FROM_CLIENT,
            processor_fn(move |_, req: RemotingCommand| async move {
                let topic = req.ext("topic").unwrap_or("").to_owned();
                let body = format!(
                    r#"{{"messageQueueTable":{{{{"brokerName":"broker-a","queueId":0,"topic":"{topic}"}}:5}}}}"#
                );
                Ok(Some(
                    RemotingCommand::response(response_code::SUCCESS, None).with_body(body.into_bytes()),
                ))
            }),
        );
        registry.register(
            request_code::CONSUME_MESSAGE_DIRECTLY,
            processor_fn(move |_, req: RemotingCommand| async move {
                // Echo what arrived: the stored message and the broker's fields.
                let msg = decode_stored_many_strict(&req.body.clone().unwrap_or_default(), true)
                    .ok()
                    .and_then(|m| m.into_iter().next());
                let remark = format!(
                    "{}|{}",
                    msg.map(|m| String::from_utf8_lossy(&m.body).into_owned())
                        .unwrap_or_default(),
                    req.ext("brokerName").unwrap_or("")
                );
                Ok(Some(RemotingCommand::response(response_code::SUCCESS, None).with_body(
                    format!(r#"{{"order":false,"autoCommit":true,"consumeResult":"CR_SUCCESS","remark":"{remark}","spentTimeMills":1}}"#)
                        .into_bytes(),
                )))
            }),
        );
        let client = RemotingClient::with_processors(ClientConfig::default(), registry);
        let hb = HeartbeatData {
            client_id: client_id.into(),
            producer_data_set: producer_group
                .map(|g| {
                    vec![ProducerData {
                        group_name: g.into(),
                    }]
                })
                .unwrap_or_default(),
            consumer_data_set: vec![ConsumerData {
                group_name: group.into(),
                subscription_data_set: topics
                    .iter()
                    .map(|t| SubscriptionData::tag(*t, "*"))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let resp = client
            .invoke(
                &b.addr,
                RemotingCommand::request(request_code::HEART_BEAT).with_body(hb.encode()),
                Duration::from_secs(10),
            )
            .await
            .expect("heartbeat");
        assert_eq!(
            resp.code,
            response_code::SUCCESS,
            "heartbeat: {:?}",
            resp.remark
        );
        FakeClient { client, pushed }
    }
}

#[tokio::test]
async fn offset_queries_and_search_by_timestamp() {
    let b = Broker::start().await;
    b.topic("OffT", 2);
    let mut store_times = Vec::new();
    for i in 0..5 {
        let h = b.send("OffT", 0, &format!("k{i}"), &uniq(i), "x").await;
        let (_, phys) = decode_offset_msg_id(&h.msg_id).expect("offset id");
        let rec = b.ctx.store.look_message_by_offset(phys).expect("stored");
        store_times.push(
            apogee_protocol::message::check_record(&rec, false)
                .unwrap()
                .store_timestamp,
        );
        // Distinct store times so the search has something to find.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    b.wait_queue("OffT", 0, 5).await;

    let max = |q| GetMaxOffsetRequestHeader {
        topic: "OffT".into(),
        queue_id: q,
        ..Default::default()
    };
    let resp = b.call_h(request_code::GET_MAX_OFFSET, &max(0)).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(
        resp.decode_header::<GetMaxOffsetResponseHeader>()
            .unwrap()
            .offset,
        5
    );
    let resp = b.call_h(request_code::GET_MAX_OFFSET, &max(1)).await;
    assert_eq!(
        resp.decode_header::<GetMaxOffsetResponseHeader>()
            .unwrap()
            .offset,
        0
    );

    let min = GetMinOffsetRequestHeader {
        topic: "OffT".into(),
        queue_id: 0,
        ..Default::default()
    };
    let resp = b.call_h(request_code::GET_MIN_OFFSET, &min).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(
        resp.decode_header::<GetMinOffsetResponseHeader>()
            .unwrap()
            .offset,
        0
    );

    let early = |q| GetEarliestMsgStoretimeRequestHeader {
        topic: "OffT".into(),
        queue_id: q,
        ..Default::default()
    };
    let resp = b
        .call_h(request_code::GET_EARLIEST_MSG_STORETIME, &early(0))
        .await;
    assert_eq!(
        resp.decode_header::<GetEarliestMsgStoretimeResponseHeader>()
            .unwrap()
            .timestamp,
        store_times[0]
    );
    let resp = b
        .call_h(request_code::GET_EARLIEST_MSG_STORETIME, &early(1))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(
        resp.decode_header::<GetEarliestMsgStoretimeResponseHeader>()
            .unwrap()
            .timestamp,
        -1
    );

    let search = |ts: i64, boundary: Option<&str>| SearchOffsetRequestHeader {
        topic: "OffT".into(),
        queue_id: 0,
        timestamp: ts,
        boundary_type: boundary.map(str::to_owned),
        ..Default::default()
    };
    let found = |resp: RemotingCommand| {
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
        resp.decode_header::<SearchOffsetResponseHeader>()
            .unwrap()
            .offset
    };
    // Exactly at message 2's time: lower and upper both find it (distinct times).
    assert_eq!(
        found(
            b.call_h(
                request_code::SEARCH_OFFSET_BY_TIMESTAMP,
                &search(store_times[2], None)
            )
            .await
        ),
        2
    );
    assert_eq!(
        found(
            b.call_h(
                request_code::SEARCH_OFFSET_BY_TIMESTAMP,
                &search(store_times[2], Some("upper"))
            )
            .await
        ),
        2
    );
    // Between messages 2 and 3: lower → 3, upper → 2.
    let between = store_times[2] + 1;
    if between < store_times[3] {
        assert_eq!(
            found(
                b.call_h(
                    request_code::SEARCH_OFFSET_BY_TIMESTAMP,
                    &search(between, Some("LOWER"))
                )
                .await
            ),
            3
        );
        assert_eq!(
            found(
                b.call_h(
                    request_code::SEARCH_OFFSET_BY_TIMESTAMP,
                    &search(between, Some("UPPER"))
                )
                .await
            ),
            2
        );
    }
    // After everything: lower → max offset, upper → last message.
    let late = store_times[4] + 60_000;
    assert_eq!(
        found(
            b.call_h(
                request_code::SEARCH_OFFSET_BY_TIMESTAMP,
                &search(late, None)
            )
            .await
        ),
        5
    );
    assert_eq!(
        found(
            b.call_h(
                request_code::SEARCH_OFFSET_BY_TIMESTAMP,
                &search(late, Some("UPPER"))
            )
            .await
        ),
        4
    );
    // Before everything: lower → 0, upper → 0 (as Java).
    assert_eq!(
        found(
            b.call_h(request_code::SEARCH_OFFSET_BY_TIMESTAMP, &search(1, None))
                .await
        ),
        0
    );
    assert_eq!(
        found(
            b.call_h(
                request_code::SEARCH_OFFSET_BY_TIMESTAMP,
                &search(1, Some("UPPER"))
            )
            .await
        ),
        0
    );

    // A header without queueId is refused with the field named.
    let mut bad = RemotingCommand::request(request_code::GET_MAX_OFFSET);
    bad.set_ext("topic", "OffT");
    let resp = b.call(bad).await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(remark(&resp).contains("queueId"), "{:?}", resp.remark);
    b.stop().await;
}

async fn query(b: &Broker, topic: &str, key: &str, unique: bool) -> RemotingCommand {
    let h = QueryMessageRequestHeader {
        topic: topic.into(),
        key: key.into(),
        max_num: 32,
        begin_timestamp: 0,
        end_timestamp: i64::MAX,
        unique_key_query: unique.then_some(true),
        ..Default::default()
    };
    b.call_h(request_code::QUERY_MESSAGE, &h).await
}

/// Polls QUERY_MESSAGE until it answers SUCCESS (the index is built by the
/// dispatcher just after the append).
async fn query_until_found(b: &Broker, topic: &str, key: &str, unique: bool) -> RemotingCommand {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = query(b, topic, key, unique).await;
        if resp.code == response_code::SUCCESS {
            return resp;
        }
        assert_eq!(
            resp.code,
            response_code::QUERY_NOT_FOUND,
            "{:?}",
            resp.remark
        );
        assert!(Instant::now() < deadline, "{key} never became queryable");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn query_by_key_by_unique_key_and_by_offset_id() {
    let b = Broker::start().await;
    b.topic("QryT", 2);
    let mut ids = Vec::new();
    for i in 0..4 {
        // Messages 0..2 share the business key "order-7"; 3 has its own.
        let keys = if i < 3 {
            "order-7 shared".to_owned()
        } else {
            "order-8".to_owned()
        };
        let h = b
            .send(
                "QryT",
                i as i32 % 2,
                &keys,
                &uniq(i),
                &format!("payload-{i}"),
            )
            .await;
        ids.push(h.msg_id);
    }

    let resp = query_until_found(&b, "QryT", "order-7", false).await;
    let rh: QueryMessageResponseHeader = resp.decode_header().expect("query response header");
    assert!(rh.index_last_update_timestamp > 0);
    assert!(rh.index_last_update_phyoffset >= 0);
    // The index may lag by a message; wait until all three are there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut msgs = records(&resp);
    while msgs.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "only {} of 3 messages found by key",
            msgs.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        msgs = records(&query(&b, "QryT", "order-7", false).await);
    }
    assert_eq!(msgs.len(), 3);
    let mut bodies: Vec<String> = msgs
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["payload-0", "payload-1", "payload-2"]);
    assert!(msgs
        .iter()
        .all(|m| m.topic == "QryT" && m.keys().any(|k| k == "order-7")));

    // Unique key: exactly the one message, whatever maxNum says.
    let resp = query_until_found(&b, "QryT", &uniq(3), true).await;
    let msgs = records(&resp);
    assert_eq!(msgs.len(), 1);
    assert_eq!(&msgs[0].body[..], b"payload-3");
    assert_eq!(msgs[0].property("UNIQ_KEY"), Some(uniq(3).as_str()));
    // A business key is not a unique key.
    let resp = query(&b, "QryT", "order-8", true).await;
    assert_eq!(resp.code, response_code::QUERY_NOT_FOUND);

    // Unknown key: QUERY_NOT_FOUND with the header still present.
    let resp = query(&b, "QryT", "nope", false).await;
    assert_eq!(resp.code, response_code::QUERY_NOT_FOUND);
    assert!(
        remark(&resp).contains("can not find message"),
        "{:?}",
        resp.remark
    );
    assert!(resp.decode_header::<QueryMessageResponseHeader>().is_ok());

    // By offset message id: the address in the id is this broker.
    let (addr, phys) = decode_offset_msg_id(&ids[1]).unwrap();
    assert_eq!(addr.to_string(), b.addr);
    let view = ViewMessageRequestHeader {
        topic: Some("QryT".into()),
        offset: phys,
    };
    let resp = b.call_h(request_code::VIEW_MESSAGE_BY_ID, &view).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let msgs = records(&resp);
    assert_eq!(msgs.len(), 1);
    assert_eq!(&msgs[0].body[..], b"payload-1");
    assert_eq!(msgs[0].offset_msg_id(), ids[1]);
    // An offset where no record starts.
    let view = ViewMessageRequestHeader {
        topic: None,
        offset: phys + 1,
    };
    let resp = b.call_h(request_code::VIEW_MESSAGE_BY_ID, &view).await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(
        remark(&resp).contains("can not find message by the offset"),
        "{:?}",
        resp.remark
    );
    b.stop().await;
}

fn create_topic(topic: &str, queues: i32, perm: i32) -> CreateTopicRequestHeader {
    CreateTopicRequestHeader {
        topic: topic.into(),
        default_topic: "TBW102".into(),
        read_queue_nums: queues,
        write_queue_nums: queues,
        perm,
        topic_filter_type: "SINGLE_TAG".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn topic_create_get_list_and_delete() {
    let b = Broker::start().await;
    let mut h = create_topic("AdmT", 3, 6);
    h.attributes = Some("+message.type=NORMAL".into());
    let resp = b.call_h(request_code::UPDATE_AND_CREATE_TOPIC, &h).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    // Idempotent.
    let resp = b.call_h(request_code::UPDATE_AND_CREATE_TOPIC, &h).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    // Messages whose queue the delete below must remove.
    for i in 0..3 {
        b.send("AdmT", 1, "k", &uniq(i), "old").await;
    }
    b.wait_queue("AdmT", 1, 3).await;

    let get = GetTopicConfigRequestHeader {
        topic: "AdmT".into(),
        ..Default::default()
    };
    let resp = b.call_h(request_code::GET_TOPIC_CONFIG, &get).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let cfg = TopicConfig::decode(resp.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        (cfg.read_queue_nums, cfg.write_queue_nums, cfg.perm),
        (3, 3, 6)
    );
    assert_eq!(
        cfg.attributes.get("message.type").map(String::as_str),
        Some("NORMAL")
    );

    let resp = b
        .call(RemotingCommand::request(request_code::GET_ALL_TOPIC_CONFIG))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let all = TopicConfigAndMappingSerializeWrapper::decode(resp.body.as_deref().unwrap()).unwrap();
    assert!(all.topic_config_table.contains_key("AdmT"));
    assert!(all.topic_config_table.contains_key("TBW102"));
    let total = resp
        .decode_header::<GetAllTopicConfigResponseHeader>()
        .unwrap()
        .total_topic_num;
    assert_eq!(total as usize, all.topic_config_table.len());

    let resp = b
        .call(RemotingCommand::request(
            request_code::GET_SYSTEM_TOPIC_LIST_FROM_BROKER,
        ))
        .await;
    let sys = TopicList::decode(resp.body.as_deref().unwrap()).unwrap();
    assert!(sys.topic_list.contains("SCHEDULE_TOPIC_XXXX"));
    assert!(sys.topic_list.contains("DefaultCluster"));
    assert!(!sys.topic_list.contains("AdmT"));

    // Updates change the queue count (shrinking is allowed).
    let resp = b
        .call_h(
            request_code::UPDATE_AND_CREATE_TOPIC,
            &create_topic("AdmT", 2, 4),
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(b.ctx.topics.get("AdmT").unwrap().perm, 4);

    // Bad requests: code and remark.
    let cases: Vec<(CreateTopicRequestHeader, i32, &str)> = vec![
        (
            create_topic("bad topic!", 4, 6),
            response_code::INVALID_PARAMETER,
            "illegal character",
        ),
        (
            create_topic("SCHEDULE_TOPIC_XXXX", 4, 6),
            response_code::INVALID_PARAMETER,
            "system topic",
        ),
        (
            create_topic("T0", 0, 6),
            response_code::INVALID_PARAMETER,
            "readQueueNums 0",
        ),
        (
            create_topic("T1", 4, 99),
            response_code::INVALID_PARAMETER,
            "perm 99",
        ),
        (
            CreateTopicRequestHeader {
                topic_filter_type: "SQL".into(),
                ..create_topic("T2", 4, 6)
            },
            response_code::INVALID_PARAMETER,
            "topicFilterType",
        ),
        (
            CreateTopicRequestHeader {
                attributes: Some("+colour=red".into()),
                ..create_topic("T3", 4, 6)
            },
            response_code::SYSTEM_ERROR,
            "unsupported key",
        ),
    ];
    for (h, code, text) in cases {
        let resp = b.call_h(request_code::UPDATE_AND_CREATE_TOPIC, &h).await;
        assert_eq!(resp.code, code, "{}: {:?}", h.topic, resp.remark);
        assert!(
            remark(&resp).contains(text),
            "{}: {:?}",
            h.topic,
            resp.remark
        );
        assert!(b.ctx.topics.get(&h.topic).is_none() || h.topic == "SCHEDULE_TOPIC_XXXX");
    }
    // A missing required field is named.
    let mut raw = RemotingCommand::request(request_code::UPDATE_AND_CREATE_TOPIC);
    raw.set_ext("topic", "T4");
    let resp = b.call(raw).await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(remark(&resp).contains("defaultTopic"), "{:?}", resp.remark);

    // Delete drops the topic, its offsets and its store queues.
    let cq_dir = b
        .ctx
        .store
        .config()
        .store_path_root_dir
        .join("consumequeue")
        .join("AdmT");
    b.ctx.store.flush_consume_queues().unwrap();
    assert!(cq_dir.is_dir());
    b.ctx.offsets.commit("G", "AdmT", 0, 5);
    let del = DeleteTopicRequestHeader {
        topic: "AdmT".into(),
        ..Default::default()
    };
    let resp = b.call_h(request_code::DELETE_TOPIC_IN_BROKER, &del).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    assert!(b.ctx.topics.get("AdmT").is_none());
    assert_eq!(b.ctx.offsets.query("G", "AdmT", 0), None);
    assert!(
        !cq_dir.exists(),
        "the topic's consumequeue folder is removed"
    );
    assert_eq!(b.ctx.store.max_offset("AdmT", 1), 0);
    let resp = b.call_h(request_code::GET_TOPIC_CONFIG, &get).await;
    assert_eq!(resp.code, response_code::TOPIC_NOT_EXIST);
    assert!(remark(&resp).contains("AdmT"));
    let resp = b
        .call_h(
            request_code::GET_TOPIC_STATS_INFO,
            &GetTopicStatsInfoRequestHeader {
                topic: "AdmT".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(resp.code, response_code::TOPIC_NOT_EXIST);
    // Re-created, the topic starts at queue offset 0.
    let resp = b
        .call_h(
            request_code::UPDATE_AND_CREATE_TOPIC,
            &create_topic("AdmT", 2, 6),
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(
        b.send("AdmT", 1, "k", &uniq(9), "new").await.queue_offset,
        0
    );
    b.wait_queue("AdmT", 1, 1).await;
    assert_eq!(b.ctx.store.max_offset("AdmT", 1), 1);
    let sysdel = DeleteTopicRequestHeader {
        topic: "TBW102".into(),
        ..Default::default()
    };
    let resp = b
        .call_h(request_code::DELETE_TOPIC_IN_BROKER, &sysdel)
        .await;
    assert_eq!(resp.code, response_code::INVALID_PARAMETER);
    assert!(b.ctx.topics.get("TBW102").is_some());
    b.stop().await;
}

#[tokio::test]
async fn clean_unused_topic_drops_only_queues_missing_from_the_topic_table() {
    let b = Broker::start().await;
    for t in ["KeptT", "OrphanT"] {
        let resp = b
            .call_h(
                request_code::UPDATE_AND_CREATE_TOPIC,
                &create_topic(t, 2, 6),
            )
            .await;
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
        b.send(t, 0, "k", &uniq(if t == "KeptT" { 1 } else { 2 }), "m")
            .await;
        b.wait_queue(t, 0, 1).await;
    }
    // The table forgets OrphanT (as after restoring an old topics.json);
    // its queues stay in the store until the cleanup.
    assert!(b.ctx.topics.delete("OrphanT"));
    assert!(b.ctx.store.topics().contains(&"OrphanT".to_string()));
    let resp = b
        .call(RemotingCommand::request(request_code::CLEAN_UNUSED_TOPIC))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let left = b.ctx.store.topics();
    assert!(!left.contains(&"OrphanT".to_string()), "{left:?}");
    assert!(left.contains(&"KeptT".to_string()), "{left:?}");
    assert_eq!(b.ctx.store.max_offset("KeptT", 0), 1);
    assert_eq!(b.ctx.store.max_offset("OrphanT", 0), 0);
    b.stop().await;
}

#[tokio::test]
async fn subscription_group_create_get_list_and_delete() {
    let b = Broker::start().await;
    let cfg = SubscriptionGroupConfig {
        retry_max_times: 3,
        consume_broadcast_enable: false,
        ..SubscriptionGroupConfig::new("AdmG")
    };
    let resp = b
        .call(
            RemotingCommand::request(request_code::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP)
                .with_body(cfg.encode()),
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);

    let get = GetSubscriptionGroupConfigRequestHeader {
        group: "AdmG".into(),
        ..Default::default()
    };
    let resp = b
        .call_h(request_code::GET_SUBSCRIPTIONGROUP_CONFIG, &get)
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let got = SubscriptionGroupConfig::decode(resp.body.as_deref().unwrap()).unwrap();
    assert_eq!(got.retry_max_times, 3);
    assert!(!got.consume_broadcast_enable);

    let resp = b
        .call(RemotingCommand::request(
            request_code::GET_ALL_SUBSCRIPTIONGROUP_CONFIG,
        ))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let all = SubscriptionGroupWrapper::decode(resp.body.as_deref().unwrap()).unwrap();
    assert_eq!(
        all.subscription_group_table
            .get("AdmG")
            .map(|g| g.retry_max_times),
        Some(3)
    );

    let bad = SubscriptionGroupConfig::new("bad group");
    let resp = b
        .call(
            RemotingCommand::request(request_code::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP)
                .with_body(bad.encode()),
        )
        .await;
    assert_eq!(resp.code, response_code::INVALID_PARAMETER);
    assert!(
        remark(&resp).contains("illegal character"),
        "{:?}",
        resp.remark
    );
    let resp = b
        .call(RemotingCommand::request(
            request_code::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP,
        ))
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(remark(&resp).contains("body"), "{:?}", resp.remark);

    // Delete with cleanOffset drops the group's offsets too.
    b.ctx.offsets.commit("AdmG", "SomeT", 0, 9);
    let del = DeleteSubscriptionGroupRequestHeader {
        group_name: "AdmG".into(),
        clean_offset: true,
        ..Default::default()
    };
    let resp = b.call_h(request_code::DELETE_SUBSCRIPTIONGROUP, &del).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(b.ctx.offsets.query("AdmG", "SomeT", 0), None);
    let resp = b
        .call_h(request_code::GET_SUBSCRIPTIONGROUP_CONFIG, &get)
        .await;
    assert_eq!(resp.code, response_code::SUBSCRIPTION_GROUP_NOT_EXIST);
    assert!(remark(&resp).contains("AdmG"));
    b.stop().await;
}

#[tokio::test]
async fn consume_and_topic_stats_show_lag() {
    let b = Broker::start().await;
    b.topic("StatT", 2);
    let mut times = Vec::new();
    for i in 0..10 {
        let h = b
            .send("StatT", i as i32 % 2, "k", &uniq(100 + i), "x")
            .await;
        let (_, phys) = decode_offset_msg_id(&h.msg_id).unwrap();
        let rec = b.ctx.store.look_message_by_offset(phys).unwrap();
        times.push(
            apogee_protocol::message::check_record(&rec, false)
                .unwrap()
                .store_timestamp,
        );
    }
    b.wait_queue("StatT", 0, 5).await;
    b.wait_queue("StatT", 1, 5).await;
    // The group (created by admin: offsets are only accepted for a known
    // group) consumed 3 of queue 0 and nothing of queue 1.
    let resp = b
        .call(
            RemotingCommand::request(request_code::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP)
                .with_body(SubscriptionGroupConfig::new("StatG").encode()),
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let commit = apogee_protocol::header::UpdateConsumerOffsetRequestHeader {
        consumer_group: "StatG".into(),
        topic: "StatT".into(),
        queue_id: 0,
        commit_offset: 3,
        ..Default::default()
    };
    let resp = b
        .call_h(request_code::UPDATE_CONSUMER_OFFSET, &commit)
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);

    let req = GetConsumeStatsRequestHeader {
        consumer_group: "StatG".into(),
        ..Default::default()
    };
    let resp = b.call_h(request_code::GET_CONSUME_STATS, &req).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let stats = ConsumeStats::decode(resp.body.as_deref().unwrap()).unwrap();
    let q = |i| MessageQueue::new("StatT", "broker-a", i);
    let q0 = &stats.offset_table[&q(0)];
    assert_eq!(
        (q0.broker_offset, q0.consumer_offset, q0.pull_offset),
        (5, 3, 3)
    );
    // Store time of the last consumed message: queue 0 holds messages 0,2,4,...
    assert_eq!(q0.last_timestamp, times[4]);
    let q1 = &stats.offset_table[&q(1)];
    assert_eq!(
        (q1.broker_offset, q1.consumer_offset, q1.last_timestamp),
        (5, 0, 0)
    );
    let lag: i64 = stats
        .offset_table
        .values()
        .map(|o| o.broker_offset - o.consumer_offset)
        .sum();
    assert_eq!(lag, 7);
    // The body carries the MessageQueue object keys Java admin parses.
    let text = String::from_utf8_lossy(resp.body.as_deref().unwrap()).into_owned();
    assert!(
        text.contains(r#"{"brokerName":"broker-a","queueId":0,"topic":"StatT"}:{"#),
        "{text}"
    );

    // Unknown group and unknown topic.
    let req = GetConsumeStatsRequestHeader {
        consumer_group: "NoSuchG".into(),
        ..Default::default()
    };
    let resp = b.call_h(request_code::GET_CONSUME_STATS, &req).await;
    assert_eq!(resp.code, response_code::SUBSCRIPTION_GROUP_NOT_EXIST);
    assert!(remark(&resp).contains("NoSuchG"));
    let req = GetConsumeStatsRequestHeader {
        consumer_group: "StatG".into(),
        topic: Some("NoSuchT".into()),
        ..Default::default()
    };
    let resp = b.call_h(request_code::GET_CONSUME_STATS, &req).await;
    assert_eq!(resp.code, response_code::TOPIC_NOT_EXIST);

    // Topic stats.
    let resp = b
        .call_h(
            request_code::GET_TOPIC_STATS_INFO,
            &GetTopicStatsInfoRequestHeader {
                topic: "StatT".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let ts = TopicStatsTable::decode(resp.body.as_deref().unwrap()).unwrap();
    assert_eq!(ts.offset_table.len(), 2);
    let t1 = &ts.offset_table[&q(1)];
    assert_eq!(
        (t1.min_offset, t1.max_offset, t1.last_update_timestamp),
        (0, 5, times[9])
    );

    // Who consumes the topic (from offsets), and the raw offset table.
    let resp = b
        .call_h(
            request_code::QUERY_TOPIC_CONSUME_BY_WHO,
            &QueryTopicConsumeByWhoRequestHeader {
                topic: "StatT".into(),
                ..Default::default()
            },
        )
        .await;
    let groups = GroupList::decode(resp.body.as_deref().unwrap()).unwrap();
    assert!(groups.group_list.contains("StatG"));
    let resp = b
        .call(RemotingCommand::request(
            request_code::GET_ALL_CONSUMER_OFFSET,
        ))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let text = String::from_utf8_lossy(resp.body.as_deref().unwrap()).into_owned();
    assert!(text.contains("StatT@StatG"), "{text}");
    let resp = b
        .call(RemotingCommand::request(request_code::GET_ALL_DELAY_OFFSET))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert!(String::from_utf8_lossy(resp.body.as_deref().unwrap()).contains("offsetTable"));
    b.stop().await;
}

#[tokio::test]
async fn reset_offset_by_timestamp_moves_offsets_and_tells_the_consumer() {
    let b = Broker::start().await;
    b.topic("RstT", 2);
    let mut times = Vec::new();
    for i in 0..6 {
        let h = b.send("RstT", 0, "k", &uniq(200 + i), "x").await;
        let (_, phys) = decode_offset_msg_id(&h.msg_id).unwrap();
        let rec = b.ctx.store.look_message_by_offset(phys).unwrap();
        times.push(
            apogee_protocol::message::check_record(&rec, false)
                .unwrap()
                .store_timestamp,
        );
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    b.wait_queue("RstT", 0, 6).await;
    let mut consumer = FakeClient::connect(&b, "127.0.0.1@rst", "RstG", &["RstT"], None).await;
    // The consumer has consumed everything.
    b.ctx.offsets.commit("RstG", "RstT", 0, 6);

    let h = ResetOffsetRequestHeader {
        group: "RstG".into(),
        topic: "RstT".into(),
        timestamp: times[2],
        is_force: true,
        ..Default::default()
    };
    let resp = b
        .call_h(request_code::INVOKE_BROKER_TO_RESET_OFFSET, &h)
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let body = ResetOffsetBody::decode(resp.body.as_deref().unwrap()).unwrap();
    let q0 = MessageQueue::new("RstT", "broker-a", 0);
    let q1 = MessageQueue::new("RstT", "broker-a", 1);
    assert_eq!(body.offset_table.get(&q0), Some(&2));
    assert_eq!(body.offset_table.get(&q1), Some(&0));
    assert_eq!(b.ctx.offsets.query("RstG", "RstT", 0), Some(2));

    // The running consumer was told, with the same offsets.
    let pushed = tokio::time::timeout(Duration::from_secs(10), consumer.pushed.recv())
        .await
        .expect("RESET_CONSUMER_CLIENT_OFFSET within 10 s")
        .expect("push");
    assert_eq!(pushed.code, request_code::RESET_CONSUMER_CLIENT_OFFSET);
    assert!(pushed.is_oneway());
    let ph: ResetOffsetRequestHeader = pushed.decode_header().unwrap();
    assert_eq!(
        (ph.group.as_str(), ph.topic.as_str(), ph.timestamp),
        ("RstG", "RstT", times[2])
    );
    let pb = ResetOffsetBody::decode(pushed.body.as_deref().unwrap()).unwrap();
    assert_eq!(pb, body);

    // Without force a committed offset is not moved forward.
    b.ctx.offsets.commit("RstG", "RstT", 0, 1);
    let h2 = ResetOffsetRequestHeader {
        timestamp: times[4],
        is_force: false,
        ..h.clone()
    };
    let resp = b
        .call_h(request_code::INVOKE_BROKER_TO_RESET_OFFSET, &h2)
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(b.ctx.offsets.query("RstG", "RstT", 0), Some(1));
    // timestamp -1 means "skip to the end".
    let h3 = ResetOffsetRequestHeader {
        timestamp: -1,
        ..h.clone()
    };
    let resp = b
        .call_h(request_code::INVOKE_BROKER_TO_RESET_OFFSET, &h3)
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(b.ctx.offsets.query("RstG", "RstT", 0), Some(6));
    // One queue, explicit offset, and an offset out of range.
    let h4 = ResetOffsetRequestHeader {
        queue_id: 0,
        offset: Some(4),
        ..h.clone()
    };
    let resp = b
        .call_h(request_code::INVOKE_BROKER_TO_RESET_OFFSET, &h4)
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(b.ctx.offsets.query("RstG", "RstT", 0), Some(4));
    let h5 = ResetOffsetRequestHeader {
        queue_id: 0,
        offset: Some(60),
        ..h.clone()
    };
    let resp = b
        .call_h(request_code::INVOKE_BROKER_TO_RESET_OFFSET, &h5)
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(
        remark(&resp).contains("not in consume queue range"),
        "{:?}",
        resp.remark
    );

    // Unknown topic and unknown group.
    let bad_topic = ResetOffsetRequestHeader {
        topic: "NoSuchT".into(),
        ..h.clone()
    };
    let resp = b
        .call_h(request_code::INVOKE_BROKER_TO_RESET_OFFSET, &bad_topic)
        .await;
    assert_eq!(resp.code, response_code::TOPIC_NOT_EXIST);
    assert!(remark(&resp).contains("NoSuchT"));
    let bad_group = ResetOffsetRequestHeader {
        group: "NoSuchG".into(),
        ..h.clone()
    };
    // Auto-created groups exist; this one never heartbeated.
    assert!(!b.ctx.groups.contains("NoSuchG"));
    let resp = b
        .call_h(request_code::INVOKE_BROKER_TO_RESET_OFFSET, &bad_group)
        .await;
    assert_eq!(resp.code, response_code::SUBSCRIPTION_GROUP_NOT_EXIST);
    assert!(remark(&resp).contains("NoSuchG"));
    consumer.client.close().await;
    b.stop().await;
}

#[tokio::test]
async fn connections_and_forwarded_running_info() {
    let b = Broker::start().await;
    b.topic("ConT", 1);
    let consumer = FakeClient::connect(&b, "127.0.0.1@con", "ConG", &["ConT"], Some("ConPG")).await;

    let resp = b
        .call_h(
            request_code::GET_CONSUMER_CONNECTION_LIST,
            &GetConsumerConnectionListRequestHeader {
                consumer_group: "ConG".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let cc = ConsumerConnection::decode(resp.body.as_deref().unwrap()).unwrap();
    assert_eq!(cc.connection_set.len(), 1);
    let conn = &cc.connection_set[0];
    assert_eq!(conn.client_id, "127.0.0.1@con");
    assert!(
        conn.client_addr.starts_with("127.0.0.1:"),
        "{}",
        conn.client_addr
    );
    assert_eq!(conn.version, apogee_protocol::command::CURRENT_VERSION);
    assert!(cc.subscription_table.contains_key("ConT"));

    let resp = b
        .call_h(
            request_code::GET_CONSUMER_CONNECTION_LIST,
            &GetConsumerConnectionListRequestHeader {
                consumer_group: "Offline".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(resp.code, response_code::CONSUMER_NOT_ONLINE);
    assert!(remark(&resp).contains("Offline"));

    let resp = b
        .call_h(
            request_code::GET_PRODUCER_CONNECTION_LIST,
            &GetProducerConnectionListRequestHeader {
                producer_group: "ConPG".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let pc = ProducerConnection::decode(resp.body.as_deref().unwrap()).unwrap();
    assert_eq!(pc.connection_set[0].client_id, "127.0.0.1@con");
    let resp = b
        .call_h(
            request_code::GET_PRODUCER_CONNECTION_LIST,
            &GetProducerConnectionListRequestHeader {
                producer_group: "NoPG".into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(remark(&resp).contains("NoPG"));

    let resp = b
        .call_h(
            request_code::QUERY_TOPIC_CONSUME_BY_WHO,
            &QueryTopicConsumeByWhoRequestHeader {
                topic: "ConT".into(),
                ..Default::default()
            },
        )
        .await;
    assert!(GroupList::decode(resp.body.as_deref().unwrap())
        .unwrap()
        .group_list
        .contains("ConG"));

    // GET_CONSUMER_RUNNING_INFO is relayed to the client and back.
    let ri = GetConsumerRunningInfoRequestHeader {
        consumer_group: "ConG".into(),
        client_id: "127.0.0.1@con".into(),
        jstack_enable: false,
        ..Default::default()
    };
    let resp = b.call_h(request_code::GET_CONSUMER_RUNNING_INFO, &ri).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let text = String::from_utf8_lossy(resp.body.as_deref().unwrap()).into_owned();
    assert!(text.contains(r#""answeredBy":"127.0.0.1@con""#), "{text}");
    // INVOKE_BROKER_TO_GET_CONSUMER_STATUS asks every client and merges.
    let st = GetConsumerStatusRequestHeader {
        topic: "ConT".into(),
        group: "ConG".into(),
        ..Default::default()
    };
    let resp = b
        .call_h(request_code::INVOKE_BROKER_TO_GET_CONSUMER_STATUS, &st)
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let text = String::from_utf8_lossy(resp.body.as_deref().unwrap()).into_owned();
    assert!(
        text.contains(r#""consumerTable":{"127.0.0.1@con":{{"brokerName":"broker-a","queueId":0,"topic":"ConT"}:5}}"#),
        "{text}"
    );
    let st_none = GetConsumerStatusRequestHeader {
        group: "Offline".into(),
        ..st
    };
    let resp = b
        .call_h(request_code::INVOKE_BROKER_TO_GET_CONSUMER_STATUS, &st_none)
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(remark(&resp).contains("Offline"));

    // CONSUME_MESSAGE_DIRECTLY: the broker attaches the stored message.
    let sent = b.send("ConT", 0, "k", &uniq(400), "direct-body").await;
    let direct = ConsumeMessageDirectlyResultRequestHeader {
        consumer_group: "ConG".into(),
        client_id: Some("127.0.0.1@con".into()),
        msg_id: Some(sent.msg_id.clone()),
        topic: Some("ConT".into()),
        ..Default::default()
    };
    let resp = b
        .call_h(request_code::CONSUME_MESSAGE_DIRECTLY, &direct)
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let result = ConsumeMessageDirectlyResult::decode(resp.body.as_deref().unwrap()).unwrap();
    assert_eq!(result.remark.as_deref(), Some("direct-body|broker-a"));
    let bad_id = ConsumeMessageDirectlyResultRequestHeader {
        msg_id: Some("XYZ".into()),
        ..direct
    };
    let resp = b
        .call_h(request_code::CONSUME_MESSAGE_DIRECTLY, &bad_id)
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(remark(&resp).contains("XYZ"), "{:?}", resp.remark);

    // GET_BROKER_CONSUME_STATS lists every group with offsets.
    b.ctx.offsets.commit("ConG", "ConT", 0, 1);
    let resp = b
        .call_h(
            request_code::GET_BROKER_CONSUME_STATS,
            &GetConsumeStatsInBrokerHeader { is_order: false },
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let text = String::from_utf8_lossy(resp.body.as_deref().unwrap()).into_owned();
    assert!(text.contains(r#""ConG":[{"consumeTps""#), "{text}");
    assert!(text.contains(r#""totalDiff":0"#), "{text}");

    let ri_missing = GetConsumerRunningInfoRequestHeader {
        client_id: "ghost".into(),
        ..ri
    };
    let resp = b
        .call_h(request_code::GET_CONSUMER_RUNNING_INFO, &ri_missing)
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(remark(&resp).contains("not online"), "{:?}", resp.remark);
    consumer.client.close().await;
    b.stop().await;
}

#[tokio::test]
async fn runtime_info_has_the_keys_mqadmin_reads() {
    let b = Broker::start().await;
    b.topic("RtT", 1);
    for i in 0..3 {
        b.send("RtT", 0, "k", &uniq(300 + i), "x").await;
    }
    let resp = b
        .call(RemotingCommand::request(
            request_code::GET_BROKER_RUNTIME_INFO,
        ))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let kv = KVTable::decode(resp.body.as_deref().unwrap())
        .unwrap()
        .table;
    let get = |k: &str| {
        kv.get(k)
            .unwrap_or_else(|| panic!("missing key {k}"))
            .clone()
    };
    for k in [
        "brokerVersionDesc",
        "putTps",
        "getTransferredTps",
        "msgPutTotalTodayNow",
        "msgGetTotalTodayNow",
        "msgPutTotalTodayMorning",
        "msgGetTotalTodayMorning",
        "msgPutTotalYesterdayMorning",
        "msgGetTotalYesterdayMorning",
        "commitLogDiskRatio",
        "pageCacheLockTimeMills",
        "sendThreadPoolQueueSize",
        "sendThreadPoolQueueHeadWaitTimeMills",
        "pullThreadPoolQueueSize",
        "pullThreadPoolQueueHeadWaitTimeMills",
        "earliestMessageTimeStamp",
        "brokerActive",
        "timerReadBehind",
        "timerOffsetBehind",
        "timerCongestNum",
        "timerEnqueueTps",
        "timerDequeueTps",
        "bootTimestamp",
        "commitLogMinOffset",
        "commitLogMaxOffset",
        "dispatchBehindBytes",
    ] {
        get(k);
    }
    assert!(get("brokerVersionDesc").starts_with('V'));
    assert!(get("msgPutTotalTodayNow").parse::<u64>().unwrap() >= 3);
    let tps: Vec<f64> = get("putTps")
        .split(' ')
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(tps.len(), 3);
    assert!(tps.iter().all(|t| *t >= 0.0));
    let ratio: f64 = get("commitLogDiskRatio").parse().unwrap();
    assert!((0.0..=1.0).contains(&ratio), "{ratio}");
    assert!(get("commitLogMaxOffset").parse::<i64>().unwrap() > 0);
    assert_eq!(get("commitLogMinOffset"), "0");
    let boot: i64 = get("bootTimestamp").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(boot <= now && boot > now - 600_000, "{boot} vs {now}");
    let earliest: i64 = get("earliestMessageTimeStamp").parse().unwrap();
    assert!(earliest >= boot - 1000 && earliest <= now, "{earliest}");
    b.stop().await;
}

#[tokio::test]
async fn broker_config_get_and_update() {
    let b = Broker::start().await;
    let resp = b
        .call(RemotingCommand::request(request_code::GET_BROKER_CONFIG))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let version = resp
        .decode_header::<GetBrokerConfigResponseHeader>()
        .unwrap()
        .version;
    assert!(version.contains("counter"), "{version}");
    let props = java_properties::parse(std::str::from_utf8(resp.body.as_deref().unwrap()).unwrap());
    assert_eq!(
        props.get("brokerName").map(String::as_str),
        Some("broker-a")
    );
    assert_eq!(
        props.get("autoCreateTopicEnable").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        props.get("listenPort"),
        Some(&b.ctl.local_addr().port().to_string())
    );

    let update = |text: &str| {
        RemotingCommand::request(request_code::UPDATE_BROKER_CONFIG)
            .with_body(text.as_bytes().to_vec())
    };
    let resp = b
        .call(update(
            "autoCreateTopicEnable=false\nmaxTransferCountOnMessageInMemory=40\n",
        ))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    assert!(!b.ctx.runtime_config.read().auto_create_topic_enable);
    let resp = b
        .call(RemotingCommand::request(request_code::GET_BROKER_CONFIG))
        .await;
    let props: BTreeMap<_, _> =
        java_properties::parse(std::str::from_utf8(resp.body.as_deref().unwrap()).unwrap());
    assert_eq!(
        props.get("autoCreateTopicEnable").map(String::as_str),
        Some("false")
    );
    assert_eq!(
        props
            .get("maxTransferCountOnMessageInMemory")
            .map(String::as_str),
        Some("40")
    );

    // Refusals leave the config untouched (all or nothing).
    let cases = [
        (
            "noSuchKey=1\n",
            response_code::INVALID_PARAMETER,
            "noSuchKey",
        ),
        (
            "listenPort=1234\nautoCreateTopicEnable=true\n",
            response_code::NO_PERMISSION,
            "listenPort",
        ),
        (
            "autoCreateTopicEnable=perhaps\n",
            response_code::INVALID_PARAMETER,
            "autoCreateTopicEnable",
        ),
    ];
    for (text, code, word) in cases {
        let resp = b.call(update(text)).await;
        assert_eq!(resp.code, code, "{text}: {:?}", resp.remark);
        assert!(remark(&resp).contains(word), "{text}: {:?}", resp.remark);
    }
    assert!(!b.ctx.runtime_config.read().auto_create_topic_enable);
    b.stop().await;
}
