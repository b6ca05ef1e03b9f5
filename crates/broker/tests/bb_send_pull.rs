//! In-process tests of the data path (send, pull, long polling) over real
//! TCP on 127.0.0.1 with a tempdir store: every response field, every
//! validation code and remark, the pull statuses, tag filtering, commit
//! offset, long polling and the overload answer.

mod ba_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_broker::config::BrokerConfig;
use apogee_broker::context::BrokerContext;
use apogee_broker::BrokerController;
use apogee_protocol::body::{ConsumerData, HeartbeatData, SubscriptionData, TopicConfig};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::{PermName, PullSysFlag};
use apogee_protocol::header::pull::{PullMessageRequestHeader, PullMessageResponseHeader};
use apogee_protocol::header::send::{
    SendMessageRequestHeader, SendMessageRequestHeaderV2, SendMessageResponseHeader,
};
use apogee_protocol::message::batch::{encode_batch, BatchMessage};
use apogee_protocol::message::stored::DecodedMessage;
use apogee_protocol::message::{decode_offset_msg_id, decode_stored_many_strict, keys};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};
use bytes::{Bytes, BytesMut};

struct Broker {
    ctl: BrokerController,
    ctx: Arc<BrokerContext>,
    addr: String,
    client: RemotingClient,
    _dir: tempfile::TempDir,
}

impl Broker {
    async fn start() -> Broker {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tune: impl FnOnce(&mut BrokerConfig)) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = ba_common::broker_config(dir.path(), None);
        tune(&mut cfg);
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
            .invoke(&self.addr, cmd, Duration::from_secs(30))
            .await
            .expect("invoke")
    }

    /// Creates (or replaces) a topic with `queues` read/write queues.
    fn topic(&self, name: &str, queues: i32) {
        self.ctx.topics.update(TopicConfig {
            topic_name: name.into(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            ..Default::default()
        });
    }

    /// Waits until (topic, queue) holds `n` messages: dispatching to the
    /// ConsumeQueue runs just after the append, as in RocketMQ.
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

fn send_header(topic: &str, queue_id: i32, props: &str) -> SendMessageRequestHeader {
    SendMessageRequestHeader {
        producer_group: "PG".into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id,
        sys_flag: 0,
        born_timestamp: 1_700_000_000_000,
        flag: 3,
        properties: Some(props.into()),
        ..Default::default()
    }
}

fn send_v1(h: &SendMessageRequestHeader, body: &'static [u8]) -> RemotingCommand {
    RemotingCommand::request(request_code::SEND_MESSAGE)
        .with_header(h)
        .with_body(Bytes::from_static(body))
}

fn send_v2(code: i32, h: &SendMessageRequestHeader, body: Bytes) -> RemotingCommand {
    let v2: SendMessageRequestHeaderV2 = h.clone().into();
    RemotingCommand::request(code)
        .with_header(&v2)
        .with_body(body)
}

fn pull_req(
    group: &str,
    topic: &str,
    queue_id: i32,
    offset: i64,
    flags: i32,
) -> PullMessageRequestHeader {
    PullMessageRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id,
        queue_offset: offset,
        max_msg_nums: 32,
        sys_flag: flags,
        commit_offset: 0,
        suspend_timeout_millis: 0,
        subscription: Some("*".into()),
        sub_version: 0,
        expression_type: Some("TAG".into()),
        ..Default::default()
    }
}

fn sub_flag() -> i32 {
    PullSysFlag::build(false, false, true, false, false).0
}

async fn pull(
    b: &Broker,
    h: &PullMessageRequestHeader,
) -> (RemotingCommand, PullMessageResponseHeader) {
    let resp = b
        .call(RemotingCommand::request(request_code::PULL_MESSAGE).with_header(h))
        .await;
    let rh: PullMessageResponseHeader = resp
        .decode_header()
        .unwrap_or_else(|e| panic!("pull response header ({:?}): {e}", resp.remark));
    (resp, rh)
}

fn records(resp: &RemotingCommand) -> Vec<DecodedMessage> {
    decode_stored_many_strict(&resp.body.clone().unwrap_or_default(), true).expect("records")
}

fn uniq(i: usize) -> String {
    format!("{:032X}", 0xABCDEF00u64 + i as u64)
}

#[tokio::test]
async fn send_v1_and_v2_fill_every_response_field() {
    // Replies (SEND_REPLY_MESSAGE) answer by their push: see bg_reply.rs.
    let b = Broker::start().await;
    b.topic("SendT", 4);
    let codes = [request_code::SEND_MESSAGE, request_code::SEND_MESSAGE_V2];
    let mut last_phys = -1;
    for (i, code) in codes.into_iter().enumerate() {
        let props = format!(
            "TAGS\u{1}TagA\u{2}KEYS\u{1}k{i}\u{2}UNIQ_KEY\u{1}{}\u{2}WAIT\u{1}true\u{2}",
            uniq(i)
        );
        let h = send_header("SendT", 2, &props);
        let req = if matches!(
            code,
            request_code::SEND_MESSAGE | request_code::SEND_REPLY_MESSAGE
        ) {
            RemotingCommand::request(code)
                .with_header(&h)
                .with_body(Bytes::from(format!("body-{i}")))
        } else {
            send_v2(code, &h, Bytes::from(format!("body-{i}")))
        };
        let resp = b.call(req).await;
        assert_eq!(
            resp.code,
            response_code::SUCCESS,
            "code {code}: {:?}",
            resp.remark
        );
        let rh: SendMessageResponseHeader = resp.decode_header().expect("send response header");
        assert_eq!(rh.queue_id, 2);
        assert_eq!(rh.queue_offset, i as i64);
        assert_eq!(rh.transaction_id.as_deref(), Some(uniq(i).as_str()));
        assert_eq!(rh.msg_id.len(), 32);
        let (host, phys) = decode_offset_msg_id(&rh.msg_id).expect("offset msg id");
        assert_eq!(host, b.ctx.store_host);
        assert!(phys > last_phys);
        last_phys = phys;
        assert_eq!(resp.ext(keys::MSG_REGION), Some("DefaultRegion"));
        assert_eq!(resp.ext(keys::TRACE_SWITCH), Some("true"));
    }
    // The stored records carry what the broker added.
    b.wait_queue("SendT", 2, 2).await;
    let (resp, rh) = pull(&b, &pull_req("G", "SendT", 2, 0, sub_flag())).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(rh.next_begin_offset, 2);
    assert_eq!(rh.max_offset, 2);
    assert_eq!(resp.remark.as_deref(), Some("FOUND"));
    let msgs = records(&resp);
    assert_eq!(msgs.len(), 2);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m.topic, "SendT");
        assert_eq!(m.queue_id, 2);
        assert_eq!(m.queue_offset, i as i64);
        assert_eq!(&m.body[..], format!("body-{i}").as_bytes());
        assert_eq!(m.flag, 3);
        assert_eq!(m.born_timestamp, 1_700_000_000_000);
        assert_eq!(m.born_host.ip().to_string(), "127.0.0.1");
        assert_eq!(m.store_host, b.ctx.store_host);
        assert_eq!(
            m.properties.get(keys::CLUSTER).map(String::as_str),
            Some("DefaultCluster")
        );
        assert_eq!(m.properties.get(keys::UNIQ_KEY), Some(&uniq(i)));
        assert_eq!(
            m.properties.get(keys::TAGS).map(String::as_str),
            Some("TagA")
        );
    }
    assert_eq!(b.ctx.stats.total_put().msgs, 2);
    assert_eq!(b.ctx.stats.total_get().msgs, 2);
    b.stop().await;
}

#[tokio::test]
async fn broker_adds_a_missing_uniq_key_and_picks_a_queue() {
    let b = Broker::start().await;
    b.topic("AnyQ", 3);
    let resp = b
        .call(send_v1(&send_header("AnyQ", -1, "TAGS\u{1}x\u{2}"), b"b"))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let rh: SendMessageResponseHeader = resp.decode_header().expect("header");
    assert!((0..3).contains(&rh.queue_id));
    let uniq = rh.transaction_id.expect("transactionId");
    assert_eq!(uniq.len(), 32);
    b.wait_queue("AnyQ", rh.queue_id, 1).await;
    let (resp, _) = pull(&b, &pull_req("G", "AnyQ", rh.queue_id, 0, sub_flag())).await;
    let m = &records(&resp)[0];
    assert_eq!(m.properties.get(keys::UNIQ_KEY), Some(&uniq));
    b.stop().await;
}

#[tokio::test]
async fn batch_send_gets_consecutive_offsets_and_own_ids() {
    let b = Broker::start().await;
    b.topic("BatchT", 2);
    // One message first so the batch does not start at 0.
    let resp = b
        .call(send_v1(&send_header("BatchT", 1, ""), b"first"))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let msgs: Vec<BatchMessage> = (0..3)
        .map(|i| BatchMessage {
            flag: i,
            body: Bytes::from(format!("m{i}")),
            properties: format!("TAGS\u{1}T{i}\u{2}UNIQ_KEY\u{1}{}\u{2}", uniq(i as usize)),
        })
        .collect();
    let mut body = BytesMut::new();
    encode_batch(&msgs, &mut body).expect("encode batch");
    let mut h = send_header("BatchT", 1, &format!("UNIQ_KEY\u{1}{}\u{2}", uniq(99)));
    h.batch = Some(true);
    let resp = b
        .call(send_v2(request_code::SEND_BATCH_MESSAGE, &h, body.freeze()))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let rh: SendMessageResponseHeader = resp.decode_header().expect("header");
    assert_eq!(rh.queue_id, 1);
    assert_eq!(rh.queue_offset, 1);
    assert_eq!(rh.transaction_id.as_deref(), Some(uniq(99).as_str()));
    let ids: Vec<&str> = rh.msg_id.split(',').collect();
    assert_eq!(ids.len(), 3);
    let phys: Vec<i64> = ids
        .iter()
        .map(|id| decode_offset_msg_id(id).expect("id").1)
        .collect();
    assert!(phys.windows(2).all(|w| w[0] < w[1]));

    b.wait_queue("BatchT", 1, 4).await;
    let (resp, rh) = pull(&b, &pull_req("G", "BatchT", 1, 1, sub_flag())).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(rh.next_begin_offset, 4);
    let got = records(&resp);
    assert_eq!(got.len(), 3);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.queue_offset, 1 + i as i64);
        assert_eq!(m.physical_offset, phys[i]);
        assert_eq!(m.flag, i as i32);
        assert_eq!(&m.body[..], format!("m{i}").as_bytes());
        // Each record keeps its own id, not the batch's.
        assert_eq!(m.properties.get(keys::UNIQ_KEY), Some(&uniq(i)));
        assert_eq!(m.properties.get(keys::TAGS), Some(&format!("T{i}")));
        assert_eq!(
            m.properties.get(keys::CLUSTER).map(String::as_str),
            Some("DefaultCluster")
        );
    }
    // Batches cannot target retry topics.
    let mut h = send_header("%RETRY%G", 0, "");
    h.batch = Some(true);
    let mut body = BytesMut::new();
    encode_batch(&msgs[..1], &mut body).expect("encode");
    let resp = b
        .call(send_v2(request_code::SEND_BATCH_MESSAGE, &h, body.freeze()))
        .await;
    assert_eq!(resp.code, response_code::MESSAGE_ILLEGAL);
    assert!(resp.remark.unwrap_or_default().contains("retry"));
    // A truncated batch is refused whole.
    let mut h = send_header("BatchT", 0, "");
    h.batch = Some(true);
    let resp = b
        .call(send_v2(
            request_code::SEND_BATCH_MESSAGE,
            &h,
            Bytes::from_static(&[0, 0, 0, 30, 0, 0]),
        ))
        .await;
    assert_eq!(resp.code, response_code::MESSAGE_ILLEGAL);
    assert!(resp.remark.unwrap_or_default().contains("malformed"));
    assert_eq!(b.ctx.store.max_offset("BatchT", 0), 0);
    b.stop().await;
}

async fn expect_refusal(b: &Broker, req: RemotingCommand, code: i32, remark_part: &str) {
    let resp = b.call(req).await;
    assert_eq!(resp.code, code, "remark: {:?}", resp.remark);
    let remark = resp.remark.unwrap_or_default();
    assert!(
        remark.contains(remark_part),
        "remark {remark:?} should contain {remark_part:?}"
    );
    // Every send answer carries the region / trace fields.
    assert_eq!(resp.ext_fields.get(keys::MSG_REGION), Some("DefaultRegion"));
}

#[tokio::test]
async fn every_validation_error_has_its_code_and_remark() {
    let b = Broker::start_with(|c| {
        c.store.max_message_size = 64 * 1024;
    })
    .await;
    b.topic("ValT", 4);
    expect_refusal(
        &b,
        send_v1(&send_header("bad topic", 0, ""), b"x"),
        response_code::INVALID_PARAMETER,
        "illegal character",
    )
    .await;
    expect_refusal(
        &b,
        send_v1(&send_header(&"L".repeat(128), 0, ""), b"x"),
        response_code::INVALID_PARAMETER,
        "128",
    )
    .await;
    expect_refusal(
        &b,
        send_v1(&send_header("SCHEDULE_TOPIC_XXXX", 0, ""), b"x"),
        response_code::NO_PERMISSION,
        "SCHEDULE_TOPIC_XXXX",
    )
    .await;
    expect_refusal(
        &b,
        send_v1(&send_header("ValT", 4, ""), b"x"),
        response_code::INVALID_PARAMETER,
        "queueId[4]",
    )
    .await;
    // Unknown topic whose template does not exist cannot be auto-created.
    let mut h = send_header("NewTopicX", 0, "");
    h.default_topic = "NoSuchTemplate".into();
    expect_refusal(
        &b,
        send_v1(&h, b"x"),
        response_code::TOPIC_NOT_EXIST,
        "NewTopicX",
    )
    .await;
    assert!(b.ctx.topics.get("NewTopicX").is_none());
    // Properties beyond 32767 bytes.
    let big = format!("K\u{1}{}\u{2}", "v".repeat(33_000));
    expect_refusal(
        &b,
        send_v1(&send_header("ValT", 0, &big), b"x"),
        response_code::MESSAGE_ILLEGAL,
        "properties",
    )
    .await;
    // Body beyond maxMessageSize.
    let body = Bytes::from(vec![7u8; 64 * 1024 + 1]);
    let req = RemotingCommand::request(request_code::SEND_MESSAGE)
        .with_header(&send_header("ValT", 0, ""))
        .with_body(body);
    expect_refusal(&b, req, response_code::MESSAGE_ILLEGAL, "maxMessageSize").await;
    // A header without its required fields.
    let mut req = RemotingCommand::request(request_code::SEND_MESSAGE_V2);
    req.set_ext("b", "ValT");
    expect_refusal(&b, req, response_code::SYSTEM_ERROR, "producerGroup").await;
    // Topic without write permission.
    b.ctx.topics.update(TopicConfig {
        topic_name: "ReadOnlyT".into(),
        read_queue_nums: 1,
        write_queue_nums: 1,
        perm: PermName::PERM_READ,
        ..Default::default()
    });
    expect_refusal(
        &b,
        send_v1(&send_header("ReadOnlyT", 0, ""), b"x"),
        response_code::NO_PERMISSION,
        "ReadOnlyT",
    )
    .await;
    // Broker without write permission.
    b.ctx.runtime_config.write().broker_permission = PermName::PERM_READ;
    expect_refusal(
        &b,
        send_v1(&send_header("ValT", 0, ""), b"x"),
        response_code::NO_PERMISSION,
        "forbidden",
    )
    .await;
    b.ctx.runtime_config.write().broker_permission = PermName::PERM_READ | PermName::PERM_WRITE;
    // Nothing was stored by any refused request, and the broker still works.
    assert_eq!(b.ctx.store.max_offset("ValT", 0), 0);
    let resp = b.call(send_v1(&send_header("ValT", 0, ""), b"ok")).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    b.stop().await;
}

#[tokio::test]
async fn unknown_topic_is_auto_created_from_tbw102() {
    let b = Broker::start().await;
    let resp = b.call(send_v1(&send_header("AutoT", 1, ""), b"x")).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let tc = b.ctx.topics.get("AutoT").expect("created");
    assert_eq!(tc.write_queue_nums, 4);
    b.stop().await;
}

#[tokio::test]
async fn oneway_send_is_stored_without_answer() {
    let b = Broker::start().await;
    b.topic("OneT", 1);
    let mut req = send_v1(&send_header("OneT", 0, ""), b"quiet");
    req.mark_oneway();
    b.client.invoke_oneway(&b.addr, req).await.expect("oneway");
    b.wait_queue("OneT", 0, 1).await;
    let (resp, _) = pull(&b, &pull_req("G", "OneT", 0, 0, sub_flag())).await;
    assert_eq!(&records(&resp)[0].body[..], b"quiet");
    b.stop().await;
}

#[tokio::test]
async fn retry_sends_past_max_reconsume_go_to_the_dlq() {
    let b = Broker::start().await;
    let mut h = send_header("%RETRY%GR", 0, "DELAY\u{1}3\u{2}");
    h.reconsume_times = Some(3);
    h.max_reconsume_times = Some(2);
    let resp = b.call(send_v1(&h, b"dead")).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    b.wait_queue("%DLQ%GR", 0, 1).await;
    let (resp, _) = pull(&b, &pull_req("GR", "%DLQ%GR", 0, 0, sub_flag())).await;
    let m = &records(&resp)[0];
    assert_eq!(m.reconsume_times, 3);
    assert!(!m.properties.contains_key(keys::DELAY_TIME_LEVEL));
    // Within the limit the message stays in the retry topic.
    let mut h = send_header("%RETRY%GR", 0, "");
    h.reconsume_times = Some(1);
    h.max_reconsume_times = Some(2);
    let resp = b.call(send_v1(&h, b"again")).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    b.wait_queue("%RETRY%GR", 0, 1).await;
    assert_eq!(b.ctx.store.max_offset("%DLQ%GR", 0), 1);
    b.stop().await;
}

#[tokio::test]
async fn pull_statuses_follow_java() {
    let b = Broker::start().await;
    b.topic("PullT", 2);
    for i in 0..3 {
        let resp = b
            .call(send_v1(
                &send_header("PullT", 0, &format!("TAGS\u{1}T{i}\u{2}")),
                b"x",
            ))
            .await;
        assert_eq!(resp.code, response_code::SUCCESS);
    }
    b.wait_queue("PullT", 0, 3).await;
    // Found, limited by maxMsgNums.
    let mut h = pull_req("G", "PullT", 0, 0, sub_flag());
    h.max_msg_nums = 2;
    let (resp, rh) = pull(&b, &h).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(records(&resp).len(), 2);
    assert_eq!(
        (rh.next_begin_offset, rh.min_offset, rh.max_offset),
        (2, 0, 3)
    );
    assert_eq!(rh.suggest_which_broker_id, 0);
    // Caught up: not found, offset unchanged.
    let (resp, rh) = pull(&b, &pull_req("G", "PullT", 0, 3, sub_flag())).await;
    assert_eq!(resp.code, response_code::PULL_NOT_FOUND);
    assert_eq!(resp.remark.as_deref(), Some("OFFSET_OVERFLOW_ONE"));
    assert_eq!(rh.next_begin_offset, 3);
    assert!(resp.body.is_none());
    // Beyond the end: moved back (the queue starts at 0).
    let (resp, rh) = pull(&b, &pull_req("G", "PullT", 0, 100, sub_flag())).await;
    assert_eq!(resp.code, response_code::PULL_OFFSET_MOVED);
    assert_eq!(resp.remark.as_deref(), Some("OFFSET_OVERFLOW_BADLY"));
    assert_eq!(rh.next_begin_offset, 0);
    // A queue that never held a message: 19 at offset 0, 21 elsewhere.
    let (resp, rh) = pull(&b, &pull_req("G", "PullT", 1, 0, sub_flag())).await;
    assert_eq!(resp.code, response_code::PULL_NOT_FOUND);
    assert_eq!(rh.next_begin_offset, 0);
    let (resp, rh) = pull(&b, &pull_req("G", "PullT", 1, 5, sub_flag())).await;
    assert_eq!(resp.code, response_code::PULL_OFFSET_MOVED);
    assert_eq!(rh.next_begin_offset, 0);
    // Pre-checks.
    let resp = b
        .call(
            RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&pull_req(
                "G",
                "PullT",
                2,
                0,
                sub_flag(),
            )),
        )
        .await;
    assert_eq!(resp.code, response_code::INVALID_PARAMETER);
    assert!(resp.remark.unwrap_or_default().contains("queueId[2]"));
    let resp = b
        .call(
            RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&pull_req(
                "G",
                "NoSuchT",
                0,
                0,
                sub_flag(),
            )),
        )
        .await;
    assert_eq!(resp.code, response_code::TOPIC_NOT_EXIST);
    // Without the SUBSCRIPTION flag the heartbeat's subscription is needed.
    let resp = b
        .call(
            RemotingCommand::request(request_code::PULL_MESSAGE)
                .with_header(&pull_req("G", "PullT", 0, 0, 0)),
        )
        .await;
    assert_eq!(resp.code, response_code::SUBSCRIPTION_NOT_EXIST);
    // An expression type the broker does not know.
    let mut h = pull_req("G", "PullT", 0, 0, sub_flag());
    h.expression_type = Some("GROOVY".into());
    h.subscription = Some("a > 1".into());
    let resp = b
        .call(RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&h))
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(resp.remark.unwrap_or_default().contains("GROOVY"));
    // Broker without read permission.
    b.ctx.runtime_config.write().broker_permission = PermName::PERM_WRITE;
    let (resp, rh) = pull(&b, &pull_req("G", "PullT", 0, 0, sub_flag())).await;
    assert_eq!(resp.code, response_code::NO_PERMISSION);
    assert_eq!(rh.forbidden_type, Some(1));
    b.stop().await;
}

#[tokio::test]
async fn tag_filter_and_commit_offset() {
    let b = Broker::start().await;
    b.topic("TagT", 1);
    for tag in ["TagA", "TagB", "TagC", "TagA"] {
        let resp = b
            .call(send_v1(
                &send_header("TagT", 0, &format!("TAGS\u{1}{tag}\u{2}")),
                b"x",
            ))
            .await;
        assert_eq!(resp.code, response_code::SUCCESS);
    }
    b.wait_queue("TagT", 0, 4).await;
    let mut h = pull_req("TG", "TagT", 0, 0, sub_flag());
    h.subscription = Some("TagA || TagC".into());
    let (resp, rh) = pull(&b, &h).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let tags: Vec<String> = records(&resp)
        .iter()
        .map(|m| m.properties.get(keys::TAGS).cloned().unwrap_or_default())
        .collect();
    assert_eq!(tags, ["TagA", "TagC", "TagA"]);
    assert_eq!(rh.next_begin_offset, 4);
    // Nothing matches: retry immediately from past the examined entries.
    h.subscription = Some("TagZ".into());
    let (resp, rh) = pull(&b, &h).await;
    assert_eq!(resp.code, response_code::PULL_RETRY_IMMEDIATELY);
    assert_eq!(resp.remark.as_deref(), Some("NO_MATCHED_MESSAGE"));
    assert_eq!(rh.next_begin_offset, 4);

    // COMMIT_OFFSET stores the consumer offset; without it nothing is stored.
    let mut h = pull_req("TG", "TagT", 0, 0, sub_flag());
    h.commit_offset = 2;
    let _ = pull(&b, &h).await;
    assert_eq!(b.ctx.offsets.query("TG", "TagT", 0), None);
    h.sys_flag = PullSysFlag::build(true, false, true, false, false).0;
    let _ = pull(&b, &h).await;
    assert_eq!(b.ctx.offsets.query("TG", "TagT", 0), Some(2));
    b.stop().await;
}

#[tokio::test]
async fn sql92_pull_filters_on_properties() {
    let b = Broker::start().await;
    b.topic("SqlT", 1);
    let msgs = [
        "a\u{1}1\u{2}TAGS\u{1}TagA\u{2}",
        "a\u{1}5\u{2}TAGS\u{1}TagB\u{2}",
        "a\u{1}9\u{2}color\u{1}red\u{2}",
        "color\u{1}blue\u{2}",
    ];
    for props in msgs {
        let resp = b.call(send_v1(&send_header("SqlT", 0, props), b"x")).await;
        assert_eq!(resp.code, response_code::SUCCESS);
    }
    b.wait_queue("SqlT", 0, 4).await;
    let sql_pull = |expr: &str| {
        let mut h = pull_req("SqlG", "SqlT", 0, 0, sub_flag());
        h.expression_type = Some("SQL92".into());
        h.subscription = Some(expr.into());
        h
    };
    let cases: &[(&str, &[&str])] = &[
        ("a BETWEEN 2 AND 9", &["5", "9"]),
        ("a > 3 OR color = 'blue'", &["5", "9", ""]),
        ("TAGS IN ('TagA', 'TagB')", &["1", "5"]),
        ("color IS NULL", &["1", "5"]),
        ("NOT (a = 1)", &["5", "9"]),
    ];
    for (expr, want) in cases {
        let (resp, rh) = pull(&b, &sql_pull(expr)).await;
        assert_eq!(
            resp.code,
            response_code::SUCCESS,
            "{expr}: {:?}",
            resp.remark
        );
        let got: Vec<String> = records(&resp)
            .iter()
            .map(|m| m.properties.get("a").cloned().unwrap_or_default())
            .collect();
        assert_eq!(got, *want, "{expr}");
        assert_eq!(rh.next_begin_offset, 4, "{expr}");
    }
    // Nothing matches: retry from past the examined entries.
    let (resp, rh) = pull(&b, &sql_pull("a > 100")).await;
    assert_eq!(resp.code, response_code::PULL_RETRY_IMMEDIATELY);
    assert_eq!(rh.next_begin_offset, 4);
    // Malformed: SUBSCRIPTION_PARSE_FAILED (23) with the parser's message.
    let resp = b
        .call(RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&sql_pull("a >")))
        .await;
    assert_eq!(resp.code, response_code::SUBSCRIPTION_PARSE_FAILED);
    assert!(resp
        .remark
        .unwrap_or_default()
        .contains("Invalid MessageSelector"));
    // enablePropertyFilter=false refuses SQL92 subscriptions.
    b.ctx.runtime_config.write().enable_property_filter = false;
    let resp = b
        .call(RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&sql_pull("a > 1")))
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(resp.remark.unwrap_or_default().contains("SQL92"));
    b.stop().await;
}

#[tokio::test]
async fn long_poll_answers_on_arrival_and_at_timeout() {
    let b = Arc::new(Broker::start().await);
    b.topic("LpT", 1);
    // Timeout: nothing arrives, the held pull answers "not found".
    let mut h = pull_req(
        "LG",
        "LpT",
        0,
        0,
        PullSysFlag::build(false, true, true, false, false).0,
    );
    h.suspend_timeout_millis = 300;
    let start = Instant::now();
    let (resp, _) = pull(&b, &h).await;
    assert_eq!(resp.code, response_code::PULL_NOT_FOUND);
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "answered before the hold time"
    );
    assert_eq!(b.ctx.pull_hold.parked_count(), 0);

    // Arrival: a long hold ends as soon as a matching message is stored;
    // a non-matching one does not end it.
    h.suspend_timeout_millis = 20_000;
    h.subscription = Some("Wanted".into());
    let b2 = Arc::clone(&b);
    let h2 = h.clone();
    let start = Instant::now();
    let waiter = tokio::spawn(async move { pull(&b2, &h2).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.ctx.pull_hold.parked_count() == 0 {
        assert!(Instant::now() < deadline, "pull never parked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let resp = b
        .call(send_v1(
            &send_header("LpT", 0, "TAGS\u{1}Other\u{2}"),
            b"no",
        ))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    b.wait_queue("LpT", 0, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // (The 5 s periodic re-check could also wake it, as in Java; this test
    // runs long before the first one.)
    assert!(
        !waiter.is_finished(),
        "a non-matching message woke the pull"
    );
    assert_eq!(b.ctx.pull_hold.parked_count(), 1);
    let resp = b
        .call(send_v1(
            &send_header("LpT", 0, "TAGS\u{1}Wanted\u{2}"),
            b"yes",
        ))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let (resp, rh) = waiter.await.expect("join");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "not answered on arrival"
    );
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let got = records(&resp);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].body[..], b"yes");
    assert_eq!(rh.next_begin_offset, 2);
    match Arc::try_unwrap(b) {
        Ok(b) => b.stop().await,
        Err(_) => panic!("broker still shared"),
    }
}

#[tokio::test]
async fn overload_answers_system_busy() {
    let b = Broker::start().await;
    b.topic("BusyT", 1);
    b.ctx.stats.set_max_inflight_puts(0);
    let resp = b.call(send_v1(&send_header("BusyT", 0, ""), b"x")).await;
    assert_eq!(resp.code, response_code::SYSTEM_BUSY);
    assert!(resp
        .remark
        .unwrap_or_default()
        .starts_with("[PC_SYNCHRONIZED]"));
    assert_eq!(b.ctx.store.max_offset("BusyT", 0), 0);
    assert_eq!(b.ctx.stats.busy_rejections(), 1);
    b.ctx.stats.set_max_inflight_puts(100);
    let resp = b.call(send_v1(&send_header("BusyT", 0, ""), b"x")).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    b.stop().await;
}

/// Every way a put can fail answers with Java's code for it (and the
/// overload refusal with the remark clients look for).
#[tokio::test]
async fn put_errors_map_to_response_codes() {
    use apogee_broker::processor::send::{store_error_reject, BUSY_REASON, BUSY_REMARK};
    use apogee_store::{PutError, StoreError};
    let b = Broker::start().await;
    let io = || StoreError::Io {
        context: "append",
        path: "commitlog".into(),
        source: std::io::Error::other("EIO"),
    };
    let cases = [
        (
            PutError::MessageTooLarge { size: 2, max: 1 },
            response_code::MESSAGE_ILLEGAL,
        ),
        (
            PutError::DoesNotFitSegment {
                size: 2,
                segment: 1,
            },
            response_code::MESSAGE_ILLEGAL,
        ),
        (
            PutError::IllegalMessage("x".into()),
            response_code::MESSAGE_ILLEGAL,
        ),
        (PutError::Encode("x".into()), response_code::MESSAGE_ILLEGAL),
        (PutError::Busy(BUSY_REASON), response_code::SYSTEM_BUSY),
        (
            PutError::DiskFull {
                used_percent: 95.0,
                limit_percent: 90,
            },
            response_code::SERVICE_NOT_AVAILABLE,
        ),
        (
            PutError::NotWritable("flush failed"),
            response_code::SERVICE_NOT_AVAILABLE,
        ),
        (PutError::ShutDown, response_code::SERVICE_NOT_AVAILABLE),
        (PutError::Store(io()), response_code::SYSTEM_ERROR),
    ];
    for (e, code) in cases {
        let r = store_error_reject(&b.ctx, &e);
        assert_eq!(r.code, code, "{e}");
        if let PutError::Busy(_) = e {
            assert_eq!(r.remark, format!("{BUSY_REMARK}: {BUSY_REASON}"));
        }
    }
    b.stop().await;
}

#[tokio::test]
async fn sync_flush_answers_after_the_flush() {
    let b = Broker::start_with(|c| {
        c.store.flush_disk_type = apogee_store::FlushDiskType::SyncFlush;
    })
    .await;
    b.topic("SyncT", 1);
    for i in 0..5 {
        let resp = b
            .call(send_v1(&send_header("SyncT", 0, ""), b"durable"))
            .await;
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
        let rh: SendMessageResponseHeader = resp.decode_header().expect("header");
        assert_eq!(rh.queue_offset, i);
        let (_, phys) = decode_offset_msg_id(&rh.msg_id).expect("id");
        assert!(
            b.ctx.store.commit_log_flushed_offset() > phys,
            "acknowledged before flushed"
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn pull_uses_the_heartbeat_subscription() {
    let b = Broker::start().await;
    b.topic("HbT", 1);
    for tag in ["TagA", "TagB"] {
        let resp = b
            .call(send_v1(
                &send_header("HbT", 0, &format!("TAGS\u{1}{tag}\u{2}")),
                b"x",
            ))
            .await;
        assert_eq!(resp.code, response_code::SUCCESS);
    }
    b.wait_queue("HbT", 0, 2).await;
    let mut sd = SubscriptionData::tag("HbT", "TagB");
    sd.sub_version = 100;
    let hb = HeartbeatData {
        client_id: "127.0.0.1@test".into(),
        consumer_data_set: vec![ConsumerData {
            group_name: "HG".into(),
            subscription_data_set: vec![sd],
            ..Default::default()
        }],
        ..Default::default()
    };
    let resp = b
        .call(RemotingCommand::request(request_code::HEART_BEAT).with_body(hb.encode()))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let mut h = pull_req("HG", "HbT", 0, 0, 0);
    h.sub_version = 100;
    // The header's "*" is ignored without the SUBSCRIPTION flag.
    let (resp, rh) = pull(&b, &h).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let got = records(&resp);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].properties.get(keys::TAGS).map(String::as_str),
        Some("TagB")
    );
    assert_eq!(rh.next_begin_offset, 2);
    // A newer subscription than the registered one.
    h.sub_version = 200;
    let resp = b
        .call(RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&h))
        .await;
    assert_eq!(resp.code, response_code::SUBSCRIPTION_NOT_LATEST);
    // A topic the group did not subscribe to.
    b.topic("OtherT", 1);
    let h = pull_req("HG", "OtherT", 0, 0, 0);
    let resp = b
        .call(RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&h))
        .await;
    assert_eq!(resp.code, response_code::SUBSCRIPTION_NOT_EXIST);
    assert!(resp.remark.unwrap_or_default().contains("OtherT"));
    b.stop().await;
}

#[tokio::test]
async fn sql92_heartbeat_subscription_filters_and_a_bad_one_has_no_filter_data() {
    let b = Broker::start().await;
    b.topic("HbSql", 1);
    for a in ["1", "7"] {
        let resp = b
            .call(send_v1(
                &send_header("HbSql", 0, &format!("a\u{1}{a}\u{2}")),
                b"x",
            ))
            .await;
        assert_eq!(resp.code, response_code::SUCCESS);
    }
    b.wait_queue("HbSql", 0, 2).await;
    let register = |group: &str, expr: &str| {
        let mut sd = SubscriptionData::tag("HbSql", expr);
        sd.expression_type = "SQL92".into();
        sd.sub_version = 100;
        HeartbeatData {
            client_id: "127.0.0.1@sql".into(),
            consumer_data_set: vec![ConsumerData {
                group_name: group.into(),
                subscription_data_set: vec![sd],
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode()
    };
    for (group, expr) in [("SqlG1", "a > 5"), ("SqlG2", "a >")] {
        let resp = b
            .call(
                RemotingCommand::request(request_code::HEART_BEAT).with_body(register(group, expr)),
            )
            .await;
        // Apache accepts the heartbeat either way; the bad one has no filter.
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    }
    let mut h = pull_req("SqlG1", "HbSql", 0, 0, 0);
    h.sub_version = 100;
    h.expression_type = Some("SQL92".into());
    let (resp, rh) = pull(&b, &h).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let got = records(&resp);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].properties.get("a").map(String::as_str), Some("7"));
    assert_eq!(rh.next_begin_offset, 2);
    let mut h = pull_req("SqlG2", "HbSql", 0, 0, 0);
    h.sub_version = 100;
    let resp = b
        .call(RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&h))
        .await;
    assert_eq!(resp.code, response_code::FILTER_DATA_NOT_EXIST);
    assert!(resp
        .remark
        .unwrap_or_default()
        .contains("Invalid MessageSelector"));
    b.stop().await;
}
