//! In-process tests of delayed delivery and retry over real TCP on
//! 127.0.0.1 with a tempdir store and short delay levels ("1s 2s 3s"):
//! delay levels and any-time timers become pullable from their real topic
//! no earlier than due and within a bounded time after, CONSUMER_SEND_MSG_BACK
//! walks a message through %RETRY% into %DLQ%, a restart delivers pending
//! messages exactly once, and 100k pending timers are not scanned per tick.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_broker::config::BrokerConfig;
use apogee_broker::context::BrokerContext;
use apogee_broker::schedule::{now_ms, TIMER_TOPIC};
use apogee_broker::BrokerController;
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PullSysFlag;
use apogee_protocol::header::pull::PullMessageRequestHeader;
use apogee_protocol::header::send::{
    ConsumerSendMsgBackRequestHeader, RecallMessageRequestHeader, RecallMessageResponseHeader,
    SendMessageRequestHeader, SendMessageResponseHeader,
};
use apogee_protocol::message::stored::DecodedMessage;
use apogee_protocol::message::{decode_offset_msg_id, decode_stored_many_strict, keys};
use apogee_protocol::recall::RecallHandle;
use apogee_protocol::topic::RMQ_SYS_SCHEDULE_TOPIC;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};
use bytes::Bytes;

struct Broker {
    ctl: BrokerController,
    ctx: Arc<BrokerContext>,
    addr: String,
    client: RemotingClient,
}

fn config(dir: &Path, tune: impl FnOnce(&mut BrokerConfig)) -> BrokerConfig {
    let mut cfg = BrokerConfig {
        namesrv_addr: None,
        broker_ip1: "127.0.0.1".into(),
        bind_address: "127.0.0.1".into(),
        listen_port: 0,
        message_delay_level: "1s 2s 3s".into(),
        timer_precision_ms: 20,
        ..Default::default()
    };
    cfg.store.store_path_root_dir = dir.to_path_buf();
    // Tests must not depend on how full the machine's disk is.
    cfg.store.disk_space_warning_level_ratio = 100;
    cfg.store.disk_space_clean_forcibly_ratio = 100;
    cfg.store.disk_max_used_space_ratio = 100;
    cfg.store.mapped_file_size_commit_log = 8 * 1024 * 1024;
    cfg.store.mapped_file_size_consume_queue = 20 * 20_000;
    tune(&mut cfg);
    cfg
}

impl Broker {
    async fn start(dir: &Path) -> Broker {
        Self::start_with(dir, |_| {}).await
    }

    async fn start_with(dir: &Path, tune: impl FnOnce(&mut BrokerConfig)) -> Broker {
        let ctl = BrokerController::start(config(dir, tune))
            .await
            .expect("broker start");
        let ctx = Arc::clone(ctl.context());
        Broker {
            addr: ctl.local_addr().to_string(),
            ctl,
            ctx,
            client: RemotingClient::new(ClientConfig::default()),
        }
    }

    async fn call(&self, cmd: RemotingCommand) -> RemotingCommand {
        self.client
            .invoke(&self.addr, cmd, Duration::from_secs(30))
            .await
            .expect("invoke")
    }

    /// Sends one message; returns its CommitLog offset.
    async fn send(&self, topic: &str, queue_id: i32, props: &str, body: &'static [u8]) -> i64 {
        let rh = self.send_header(topic, queue_id, props, body).await;
        decode_offset_msg_id(&rh.msg_id).expect("offset msg id").1
    }

    /// Sends one message; returns the response header.
    async fn send_header(
        &self,
        topic: &str,
        queue_id: i32,
        props: &str,
        body: &'static [u8],
    ) -> SendMessageResponseHeader {
        let h = SendMessageRequestHeader {
            producer_group: "PG".into(),
            topic: topic.into(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id,
            sys_flag: 0,
            born_timestamp: now_ms(),
            flag: 0,
            properties: Some(props.into()),
            ..Default::default()
        };
        let resp = self
            .call(
                RemotingCommand::request(request_code::SEND_MESSAGE)
                    .with_header(&h)
                    .with_body(Bytes::from_static(body)),
            )
            .await;
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
        resp.decode_header().expect("send response header")
    }

    /// RECALL_MESSAGE; the response as is.
    async fn recall(&self, topic: &str, handle: &str) -> RemotingCommand {
        let h = RecallMessageRequestHeader {
            producer_group: Some("PG".into()),
            topic: topic.into(),
            recall_handle: handle.into(),
            ..Default::default()
        };
        self.call(RemotingCommand::request(request_code::RECALL_MESSAGE).with_header(&h))
            .await
    }

    /// Waits until (topic, queue) holds `n` messages; returns when.
    async fn wait_queue(&self, topic: &str, queue_id: i32, n: i64, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if self.ctx.store.max_offset(topic, queue_id) >= n {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "{topic}:{queue_id} never reached {n} messages (has {})",
                self.ctx.store.max_offset(topic, queue_id)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// PULL_MESSAGE from offset 0 of (topic, queue).
    async fn pull(&self, group: &str, topic: &str, queue_id: i32) -> Vec<DecodedMessage> {
        let h = PullMessageRequestHeader {
            consumer_group: group.into(),
            topic: topic.into(),
            queue_id,
            queue_offset: 0,
            max_msg_nums: 32,
            sys_flag: PullSysFlag::build(false, false, true, false, false).0,
            commit_offset: 0,
            suspend_timeout_millis: 0,
            subscription: Some("*".into()),
            sub_version: 0,
            expression_type: Some("TAG".into()),
            ..Default::default()
        };
        let resp = self
            .call(RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&h))
            .await;
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
        decode_stored_many_strict(&resp.body.clone().unwrap_or_default(), true).expect("records")
    }

    async fn send_back(
        &self,
        group: &str,
        offset: i64,
        delay_level: i32,
        max: Option<i32>,
        version: i32,
    ) -> RemotingCommand {
        let h = ConsumerSendMsgBackRequestHeader {
            offset,
            group: group.into(),
            delay_level,
            origin_msg_id: None,
            origin_topic: Some("SB".into()),
            unit_mode: false,
            max_reconsume_times: max,
            ..Default::default()
        };
        let mut cmd =
            RemotingCommand::request(request_code::CONSUMER_SEND_MSG_BACK).with_header(&h);
        cmd.version = version;
        self.call(cmd).await
    }

    async fn stop(self) {
        self.client.close().await;
        self.ctl.shutdown().await;
    }
}

fn no_delay_props(m: &DecodedMessage) {
    // TIMER_OUT_MS (the due time) stays, as Apache's timer leaves it.
    for k in [
        keys::DELAY_TIME_LEVEL,
        keys::REAL_TOPIC,
        keys::REAL_QUEUE_ID,
        keys::TIMER_DELIVER_MS,
        keys::TIMER_DELAY_MS,
        keys::TIMER_DELAY_SEC,
    ] {
        assert!(
            !m.properties.contains_key(k),
            "{k} left on {:?}",
            m.properties
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_level_arrives_after_its_level() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path()).await;
    let t0 = Instant::now();
    let sent_ms = now_ms();
    b.send(
        "DT",
        2,
        "TAGS\u{1}tg\u{2}KEYS\u{1}k1\u{2}DELAY\u{1}1\u{2}",
        b"one-second",
    )
    .await;
    // Parked in the schedule topic, not yet in the real one.
    b.wait_queue(RMQ_SYS_SCHEDULE_TOPIC, 0, 1, Duration::from_secs(5))
        .await;
    assert_eq!(b.ctx.store.max_offset("DT", 2), 0);
    let arrived = b.wait_queue("DT", 2, 1, Duration::from_secs(10)).await;
    assert!(
        arrived - t0 >= Duration::from_millis(1000),
        "{:?}",
        arrived - t0
    );
    let msgs = b.pull("G", "DT", 2).await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(&m.body[..], b"one-second");
    assert_eq!(m.topic, "DT");
    assert_eq!(m.queue_id, 2);
    assert!(m.store_timestamp >= sent_ms + 1000);
    assert_eq!(m.tags(), Some("tg"));
    assert_eq!(m.property(keys::KEYS), Some("k1"));
    assert_eq!(m.property(keys::WAIT_STORE_MSG_OK), Some("false"));
    no_delay_props(m);
    // A level beyond the last is clamped to it (3 s), never dropped.
    let t1 = Instant::now();
    b.send("DT", 0, "DELAY\u{1}99\u{2}", b"clamped").await;
    let arrived = b.wait_queue("DT", 0, 1, Duration::from_secs(15)).await;
    assert!(
        arrived - t1 >= Duration::from_millis(3000),
        "{:?}",
        arrived - t1
    );
    let p = b.ctx.schedule.progress();
    assert_eq!(p.delivered, 2);
    assert!(b.ctx.schedule.level_offsets().contains_key(&1));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_arrive_at_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path()).await;
    let deliver_at = now_ms() + 400;
    b.send(
        "TT",
        0,
        &format!("TIMER_DELIVER_MS\u{1}{deliver_at}\u{2}"),
        b"abs",
    )
    .await;
    b.send("TT", 1, "TIMER_DELAY_MS\u{1}250\u{2}", b"rel-ms")
        .await;
    let sec_sent = now_ms();
    b.send("TT", 2, "TIMER_DELAY_SEC\u{1}1\u{2}", b"rel-sec")
        .await;
    b.wait_queue(TIMER_TOPIC, 0, 3, Duration::from_secs(5))
        .await;
    b.wait_queue("TT", 0, 1, Duration::from_secs(10)).await;
    b.wait_queue("TT", 1, 1, Duration::from_secs(10)).await;
    b.wait_queue("TT", 2, 1, Duration::from_secs(10)).await;
    let abs = &b.pull("G", "TT", 0).await[0];
    assert_eq!(&abs.body[..], b"abs");
    assert!(
        abs.store_timestamp >= deliver_at,
        "early: {} < {deliver_at}",
        abs.store_timestamp
    );
    // Bounded lateness (generous: this machine is shared with other builds).
    assert!(
        abs.store_timestamp < deliver_at + 2000,
        "late: {}",
        abs.store_timestamp - deliver_at
    );
    no_delay_props(abs);
    let sec = &b.pull("G", "TT", 2).await[0];
    assert!(sec.store_timestamp >= sec_sent + 1000);
    // A timer already due is stored directly.
    b.send("TT", 3, "TIMER_DELIVER_MS\u{1}1000\u{2}", b"past")
        .await;
    b.wait_queue("TT", 3, 1, Duration::from_secs(5)).await;
    b.stop().await;
}

/// Asserts a refused recall: code and remark.
fn refused(resp: &RemotingCommand, code: i32, remark: &str) {
    assert_eq!(resp.code, code, "{:?}", resp.remark);
    assert_eq!(resp.remark.as_deref(), Some(remark));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_cancels_a_timer_message() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path()).await;
    let kept = b
        .send_header(
            "RC",
            0,
            "UNIQ_KEY\u{1}KEEP\u{2}TIMER_DELAY_MS\u{1}1200\u{2}",
            b"kept",
        )
        .await;
    let gone = b
        .send_header(
            "RC",
            0,
            "UNIQ_KEY\u{1}GONE\u{2}TIMER_DELAY_MS\u{1}1200\u{2}",
            b"gone",
        )
        .await;
    // Delay levels and plain messages get no handle (as Apache).
    let level = b.send_header("RC", 1, "DELAY\u{1}1\u{2}", b"level").await;
    assert_eq!(level.recall_handle, None);
    let plain = b.send_header("RCX", 2, "", b"plain").await;
    assert_eq!(plain.recall_handle, None);
    let handle = gone.recall_handle.clone().expect("timer send has a handle");
    let decoded = RecallHandle::decode(&handle).expect("decodable");
    assert_eq!(
        (
            decoded.topic.as_str(),
            decoded.broker_name.as_str(),
            decoded.message_id.as_str()
        ),
        ("RC", "broker-a", "GONE")
    );
    assert!(kept.recall_handle.is_some());

    // Refusals first, each with Apache's code and remark.
    refused(
        &b.recall("RC", "not base64 at all").await,
        response_code::ILLEGAL_OPERATION,
        "recall handle is invalid",
    );
    refused(
        &b.recall("RC", "").await,
        response_code::ILLEGAL_OPERATION,
        "recall handle is invalid",
    );
    refused(
        &b.recall("NoSuchTopic", &handle).await,
        response_code::TOPIC_NOT_EXIST,
        "recall failed, the topic[NoSuchTopic] not exist",
    );
    refused(
        &b.recall("RCX", &handle).await,
        response_code::ILLEGAL_OPERATION,
        "recall failed, topic not match",
    );
    let other_broker = RecallHandle::new("RC", "broker-z", &decoded.timestamp, "GONE").encode();
    refused(
        &b.recall("RC", &other_broker).await,
        response_code::ILLEGAL_OPERATION,
        "recall failed, broker service not available",
    );
    let past = RecallHandle::new("RC", "broker-a", (now_ms() - 1).to_string(), "GONE").encode();
    refused(
        &b.recall("RC", &past).await,
        response_code::ILLEGAL_OPERATION,
        "recall failed, timestamp invalid",
    );
    let junk_ts = RecallHandle::new("RC", "broker-a", "soon", "GONE").encode();
    refused(
        &b.recall("RC", &junk_ts).await,
        response_code::ILLEGAL_OPERATION,
        "recall failed, timestamp invalid",
    );

    let resp = b.recall("RC", &handle).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let rh: RecallMessageResponseHeader = resp.decode_header().unwrap();
    assert_eq!(rh.msg_id, "GONE");

    // The kept one arrives; the recalled one never does, also well after.
    b.wait_queue("RC", 0, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got: Vec<Vec<u8>> = b
        .pull("G", "RC", 0)
        .await
        .iter()
        .map(|m| m.body.to_vec())
        .collect();
    assert_eq!(got, vec![b"kept".to_vec()]);
    assert_eq!(b.ctx.schedule.progress().recalled, 1);
    // Too late now: the handle's time has passed.
    refused(
        &b.recall("RC", &handle).await,
        response_code::ILLEGAL_OPERATION,
        "recall failed, timestamp invalid",
    );
    b.stop().await;

    // recallMessageEnable=false refuses as Apache's default does.
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start_with(dir.path(), |c| c.recall_message_enable = false).await;
    let sent = b
        .send_header("RC", 0, "TIMER_DELAY_MS\u{1}5000\u{2}", b"x")
        .await;
    let resp = b.recall("RC", &sent.recall_handle.unwrap()).await;
    assert_eq!(resp.code, response_code::NO_PERMISSION, "{:?}", resp.remark);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recall_holds_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path()).await;
    let sent = b
        .send_header(
            "RR",
            0,
            "UNIQ_KEY\u{1}R1\u{2}TIMER_DELAY_MS\u{1}1500\u{2}",
            b"recalled",
        )
        .await;
    b.send(
        "RR",
        0,
        "UNIQ_KEY\u{1}R2\u{2}TIMER_DELAY_MS\u{1}1500\u{2}",
        b"kept",
    )
    .await;
    let resp = b.recall("RR", &sent.recall_handle.unwrap()).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    b.stop().await;
    // Both fall due while the broker is down.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let b = Broker::start(dir.path()).await;
    b.wait_queue("RR", 0, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got: Vec<Vec<u8>> = b
        .pull("G", "RR", 0)
        .await
        .iter()
        .map(|m| m.body.to_vec())
        .collect();
    assert_eq!(got, vec![b"kept".to_vec()]);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_back_retries_with_delay_then_goes_to_dlq() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path()).await;
    let orig = b
        .send(
            "SB",
            1,
            "TAGS\u{1}red\u{2}UNIQ_KEY\u{1}ABC123\u{2}",
            b"work",
        )
        .await;
    let orig_id = apogee_protocol::message::offset_msg_id(b.ctx.store_host, orig);

    // First failure: level 0 → 3 + reconsumeTimes (clamped to 3 s here).
    let t0 = Instant::now();
    let resp = b.send_back("G1", orig, 0, Some(2), 401).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let retry_cfg = b.ctx.topics.get("%RETRY%G1").expect("retry topic created");
    assert_eq!(retry_cfg.write_queue_nums, 1);
    assert_eq!(
        b.ctx.store.max_offset("%RETRY%G1", 0),
        0,
        "retry is delayed"
    );
    let arrived = b
        .wait_queue("%RETRY%G1", 0, 1, Duration::from_secs(15))
        .await;
    assert!(
        arrived - t0 >= Duration::from_millis(3000),
        "{:?}",
        arrived - t0
    );
    let r1 = b.pull("G1", "%RETRY%G1", 0).await;
    let m1 = &r1[0];
    assert_eq!(&m1.body[..], b"work");
    assert_eq!(m1.reconsume_times, 1);
    assert_eq!(m1.property(keys::RETRY_TOPIC), Some("SB"));
    assert_eq!(m1.property(keys::ORIGIN_MESSAGE_ID), Some(orig_id.as_str()));
    assert_eq!(m1.property(keys::UNIQ_KEY), Some("ABC123"));
    assert_eq!(m1.tags(), Some("red"));
    no_delay_props(m1);

    // Second failure with an explicit level 1.
    let t1 = Instant::now();
    let resp = b.send_back("G1", m1.physical_offset, 1, Some(2), 401).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let arrived = b
        .wait_queue("%RETRY%G1", 0, 2, Duration::from_secs(10))
        .await;
    assert!(arrived - t1 >= Duration::from_millis(1000));
    let r2 = b.pull("G1", "%RETRY%G1", 0).await;
    let m2 = &r2[1];
    assert_eq!(m2.reconsume_times, 2);
    assert_eq!(m2.property(keys::ORIGIN_MESSAGE_ID), Some(orig_id.as_str()));

    // Third failure: reconsumeTimes 2 ≥ max 2 → DLQ at once, no delay.
    let resp = b.send_back("G1", m2.physical_offset, 1, Some(2), 401).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    b.wait_queue("%DLQ%G1", 0, 1, Duration::from_secs(5)).await;
    let dlq_cfg = b.ctx.topics.get("%DLQ%G1").expect("dlq topic created");
    assert_eq!(dlq_cfg.write_queue_nums, 1);
    let d = &b.pull("G1", "%DLQ%G1", 0).await[0];
    assert_eq!(&d.body[..], b"work");
    assert_eq!(d.reconsume_times, 3);
    assert_eq!(d.property(keys::RETRY_TOPIC), Some("SB"));
    assert_eq!(d.property(keys::ORIGIN_MESSAGE_ID), Some(orig_id.as_str()));
    assert_eq!(d.property(keys::DLQ_ORIGIN_TOPIC), Some("SB"));
    no_delay_props(d);
    assert_eq!(b.ctx.store.max_offset("%RETRY%G1", 0), 2);

    // delayLevel -1: straight to the DLQ.
    let resp = b.send_back("G1", orig, -1, None, 401).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    b.wait_queue("%DLQ%G1", 0, 2, Duration::from_secs(5)).await;

    // Old clients (version < 121): the header's max is ignored, the group's
    // retryMaxTimes (16) applies, so reconsumeTimes 2 still retries.
    let resp = b.send_back("G1", m2.physical_offset, 1, Some(2), 100).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    b.wait_queue("%RETRY%G1", 0, 3, Duration::from_secs(10))
        .await;
    assert_eq!(b.ctx.store.max_offset("%DLQ%G1", 0), 2);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_back_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start_with(dir.path(), |c| c.auto_create_subscription_group = false).await;
    let off = b.send("SB", 0, "", b"x").await;
    let resp = b.send_back("NoSuchGroup", off, 0, None, 401).await;
    assert_eq!(resp.code, response_code::SUBSCRIPTION_GROUP_NOT_EXIST);
    assert!(resp.remark.unwrap_or_default().contains("NoSuchGroup"));
    // A known group, but an offset that holds no message.
    let resp = b.send_back("TOOLS_CONSUMER", off + 7, 0, None, 401).await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(
        resp.remark
            .clone()
            .unwrap_or_default()
            .contains("look message by offset failed"),
        "{:?}",
        resp.remark
    );
    // A header without its required fields.
    let resp = b
        .call(RemotingCommand::request(
            request_code::CONSUMER_SEND_MSG_BACK,
        ))
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(resp.remark.unwrap_or_default().contains("offset"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_delivers_pending_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(dir.path()).await;
    b.send("RT", 0, "TIMER_DELAY_MS\u{1}50\u{2}", b"before")
        .await;
    b.wait_queue("RT", 0, 1, Duration::from_secs(5)).await;
    b.send("RT", 0, "DELAY\u{1}2\u{2}", b"level-2s").await;
    b.send("RT", 0, "TIMER_DELAY_MS\u{1}1500\u{2}", b"timer-1.5s")
        .await;
    b.send("RT", 0, "TIMER_DELAY_SEC\u{1}4\u{2}", b"timer-4s")
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.ctx.schedule.progress().enqueued < 4 {
        assert!(
            Instant::now() < deadline,
            "not filed: {:?}",
            b.ctx.schedule.progress()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.stop().await;
    // Two of them fall due while the broker is down.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let b = Broker::start(dir.path()).await;
    b.wait_queue("RT", 0, 3, Duration::from_secs(5)).await;
    b.wait_queue("RT", 0, 4, Duration::from_secs(10)).await;
    // Give a duplicate every chance to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got: Vec<Vec<u8>> = b
        .pull("G", "RT", 0)
        .await
        .iter()
        .map(|m| m.body.to_vec())
        .collect();
    got.sort();
    let mut want: Vec<Vec<u8>> = vec![
        b"before".to_vec(),
        b"level-2s".to_vec(),
        b"timer-1.5s".to_vec(),
        b"timer-4s".to_vec(),
    ];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(b.ctx.schedule.progress().enqueued, 0, "nothing filed twice");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pending_timers_are_not_scanned_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start_with(dir.path(), |c| {
        c.store.mapped_file_size_commit_log = 32 * 1024 * 1024;
    })
    .await;
    const N: usize = 100_000;
    let ctx = Arc::clone(&b.ctx);
    // Parked through the same transform the send path uses, straight into
    // the store (100k round trips would only measure the network).
    tokio::task::spawn_blocking(move || {
        let host = ctx.store_host;
        for i in 0..N {
            let mut m = apogee_protocol::message::MessageToStore {
                topic: "Far".into(),
                queue_id: 0,
                flag: 0,
                body: Bytes::from_static(b"f"),
                properties: format!("TIMER_DELAY_SEC\u{1}{}\u{2}", 3600 + (i % 7200)),
                sys_flag: 0,
                born_timestamp: 0,
                born_host: host,
                store_host: host,
                reconsume_times: 0,
                prepared_transaction_offset: 0,
                tags_code: 0,
            };
            assert!(ctx.schedule.try_transform(&mut m).unwrap());
            ctx.store.put_message(&m).unwrap();
        }
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while b.ctx.schedule.progress().enqueued < N as u64 {
        assert!(
            Instant::now() < deadline,
            "not filed: {:?}",
            b.ctx.schedule.progress()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = b.ctx.schedule.progress().entries_touched;
    assert_eq!(before, N as u64, "filing touches each entry once");
    // Ticks keep running (every few ms) while one near timer goes through.
    b.send("Near", 0, "TIMER_DELAY_MS\u{1}300\u{2}", b"near")
        .await;
    b.wait_queue("Near", 0, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = b.ctx.schedule.progress();
    // The near timer: filed once, read once. Nothing else was looked at.
    assert_eq!(p.entries_touched - before, 2, "{p:?}");
    assert_eq!(p.delivered, 1);
    assert_eq!(b.ctx.store.max_offset("Far", 0), 0);
    b.stop().await;
}
