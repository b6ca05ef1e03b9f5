//! POP consumption in-process over real TCP on 127.0.0.1: pop → ack and
//! nothing comes back; pop without ack and the message comes back from the
//! retry topic after its invisible time with reconsumeTimes + 1; change of
//! invisible time; the DLQ after `retryMaxTimes`; POP and classic pull by
//! two groups on one topic; long polling; malformed receipts refused.

mod ba_common;

use std::time::{Duration, Instant};

use apogee_broker::pop::processor::{write_ack, write_ck};
use apogee_broker::pop::revive::revive_queue;
use apogee_broker::pop::{
    build_extra_info, revive_topic, AckMsg, CheckPoint, REVIVE_GROUP, REVIVE_QUEUE_NUM,
};
use apogee_broker::schedule::now_ms;
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PullSysFlag;
use apogee_protocol::header::pull::PullMessageRequestHeader;
use apogee_protocol::header::send::SendMessageRequestHeader;
use apogee_protocol::header::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, ChangeInvisibleTimeResponseHeader,
    PopMessageRequestHeader, PopMessageResponseHeader,
};
use apogee_protocol::message::stored::DecodedMessage;
use apogee_protocol::message::{decode_stored_many_strict, keys};
use apogee_protocol::RemotingCommand;
use ba_common::Broker;
use bytes::Bytes;

async fn start() -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(ba_common::broker_config(dir.path(), None)).await;
    (b, dir)
}

async fn send(b: &Broker, topic: &str, queue_id: i32, body: &'static [u8]) {
    let h = SendMessageRequestHeader {
        producer_group: "PG".into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id,
        born_timestamp: now_ms(),
        properties: Some("TAGS\u{1}a\u{2}".into()),
        ..Default::default()
    };
    let resp = b
        .call(
            RemotingCommand::request(request_code::SEND_MESSAGE)
                .with_header(&h)
                .with_body(Bytes::from_static(body)),
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
}

/// A popped message with the receipt handle a client would use: its
/// `POP_CK`, else built from the response header as the Java client does.
struct Popped {
    msg: DecodedMessage,
    handle: String,
}

async fn pop(b: &Broker, group: &str, topic: &str, invisible: i64, poll: i64) -> Vec<Popped> {
    let h = PopMessageRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id: -1,
        max_msg_nums: 32,
        invisible_time: invisible,
        poll_time: poll,
        born_time: now_ms(),
        init_mode: 0,
        exp_type: Some("TAG".into()),
        exp: Some("*".into()),
        ..Default::default()
    };
    pop_req(b, h).await.0
}

/// Sends one POP_MESSAGE; the messages and the response header.
async fn pop_req(
    b: &Broker,
    h: PopMessageRequestHeader,
) -> (Vec<Popped>, Option<PopMessageResponseHeader>) {
    let invisible = h.invisible_time;
    let resp = b
        .call(RemotingCommand::request(request_code::POP_MESSAGE).with_header(&h))
        .await;
    if resp.code == response_code::POLLING_TIMEOUT {
        return (Vec::new(), None);
    }
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let rh: PopMessageResponseHeader = resp.decode_header().expect("pop header");
    assert_eq!(rh.invisible_time, invisible);
    let start_info = rh.start_offset_info.clone().unwrap_or_default();
    let body = resp.body.clone().unwrap_or_default();
    let msgs = decode_stored_many_strict(&body, false)
        .expect("pop body decodes")
        .into_iter()
        .map(|msg| {
            let handle = match msg.properties.get(keys::POP_CK) {
                Some(ck) => ck.clone(),
                None => {
                    // Client rule: the start offset of this queue from startOffsetInfo.
                    let start: i64 = start_info
                        .split(';')
                        .filter_map(|e| {
                            let f: Vec<&str> = e.split(' ').collect();
                            (f.len() == 3 && f[0] == "0" && f[1] == msg.queue_id.to_string())
                                .then(|| f[2].parse().ok())
                                .flatten()
                        })
                        .next()
                        .expect("startOffsetInfo names the queue");
                    build_extra_info(
                        start,
                        rh.pop_time,
                        rh.invisible_time,
                        rh.revive_qid,
                        &msg.topic,
                        &b.ctx().config.broker_name,
                        msg.queue_id,
                        msg.queue_offset,
                    )
                }
            };
            Popped { msg, handle }
        })
        .collect();
    (msgs, Some(rh))
}

/// Waits until the dispatcher made `n` messages of (topic, queue) visible.
async fn wait_queue(b: &Broker, topic: &str, queue_id: i32, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.ctx().store.max_offset(topic, queue_id) < n {
        assert!(
            Instant::now() < deadline,
            "{topic}:{queue_id} never held {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the revive service has passed every revive-topic record
/// stored so far (every checkpoint in it revived or settled).
async fn wait_revive_settled(b: &Broker) {
    let ctx = b.ctx();
    let rt = revive_topic(&ctx.config.broker_cluster_name);
    let ends: Vec<i64> = (0..REVIVE_QUEUE_NUM)
        .map(|q| ctx.store.max_offset(&rt, q))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (q, end) in (0..REVIVE_QUEUE_NUM).zip(ends) {
        while ctx
            .offsets
            .query(REVIVE_GROUP, &rt, q)
            .unwrap_or_else(|| ctx.store.min_offset(&rt, q))
            < end
        {
            assert!(
                Instant::now() < deadline,
                "revive queue {q} never reached {end}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn queue_offset_of(p: &Popped) -> i64 {
    // A retry copy carries its retry-queue offset as the last handle field.
    p.handle
        .rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("handle has an offset")
}

async fn ack(b: &Broker, group: &str, topic: &str, p: &Popped) -> RemotingCommand {
    let h = AckMessageRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id: p.msg.queue_id,
        extra_info: p.handle.clone(),
        offset: queue_offset_of(p),
        ..Default::default()
    };
    b.call(RemotingCommand::request(request_code::ACK_MESSAGE).with_header(&h))
        .await
}

/// Pops until `n` messages came back or `within` passed.
async fn pop_until(
    b: &Broker,
    group: &str,
    topic: &str,
    invisible: i64,
    n: usize,
    within: Duration,
) -> Vec<Popped> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(pop(b, group, topic, invisible, 0).await);
        if got.len() < n {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    got
}

#[tokio::test]
async fn acked_messages_stay_gone_unacked_come_back_with_reconsume_times() {
    let (b, _dir) = start().await;
    for body in [b"m0" as &[u8], b"m1", b"m2"] {
        send(&b, "PopT", 0, Box::leak(body.to_vec().into_boxed_slice())).await;
    }
    wait_queue(&b, "PopT", 0, 3).await;
    let got = pop(&b, "G1", "PopT", 2000, 0).await;
    assert_eq!(got.len(), 3);
    for p in &got {
        assert_eq!(p.msg.topic, "PopT");
        assert_eq!(p.msg.reconsume_times, 0);
    }
    // Acks for m0 and m1; m2 is left to come back.
    for p in got.iter().filter(|p| &p.msg.body[..] != b"m2") {
        let r = ack(&b, "G1", "PopT", p).await;
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    }
    // Invisible now: a second pop gets nothing.
    assert!(pop(&b, "G1", "PopT", 2000, 0).await.is_empty());

    let back = pop_until(&b, "G1", "PopT", 1000, 1, Duration::from_secs(10)).await;
    assert_eq!(back.len(), 1, "the un-acked message came back");
    let p = &back[0];
    assert_eq!(&p.msg.body[..], b"m2");
    assert_eq!(p.msg.topic, "PopT", "shown in its real topic");
    assert_eq!(p.msg.reconsume_times, 1);
    assert!(p.msg.properties.contains_key(keys::POP_CK));
    let r = ack(&b, "G1", "PopT", p).await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);

    // Classic pull by another group on the same topic sees all three.
    let h = PullMessageRequestHeader {
        consumer_group: "G2".into(),
        topic: "PopT".into(),
        queue_id: 0,
        queue_offset: 0,
        max_msg_nums: 32,
        sys_flag: PullSysFlag::build(false, false, true, false, false).0,
        subscription: Some("*".into()),
        expression_type: Some("TAG".into()),
        ..Default::default()
    };
    let resp = b
        .call(RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&h))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let pulled = decode_stored_many_strict(&resp.body.unwrap_or_default(), false).unwrap();
    assert_eq!(pulled.len(), 3);

    // Everything acked: nothing comes back once the revive service has
    // passed every checkpoint (the retry copy's 1 s one included).
    wait_revive_settled(&b).await;
    assert!(pop(&b, "G1", "PopT", 2000, 0).await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn change_invisible_time_brings_a_message_back_sooner() {
    let (b, _dir) = start().await;
    send(&b, "PopC", 1, b"c0").await;
    send(&b, "PopC", 1, b"c1").await;
    wait_queue(&b, "PopC", 1, 2).await;
    let got = pop(&b, "G", "PopC", 600_000, 0).await;
    assert_eq!(got.len(), 2);
    let change = |p: &Popped, invisible: i64| ChangeInvisibleTimeRequestHeader {
        consumer_group: "G".into(),
        topic: "PopC".into(),
        queue_id: p.msg.queue_id,
        extra_info: p.handle.clone(),
        offset: p.msg.queue_offset,
        invisible_time: invisible,
        ..Default::default()
    };
    let mut new_handles = Vec::new();
    for (p, invisible) in got.iter().zip([500, 1000]) {
        let h = change(p, invisible);
        let resp = b
            .call(
                RemotingCommand::request(request_code::CHANGE_MESSAGE_INVISIBLETIME)
                    .with_header(&h),
            )
            .await;
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
        let rh: ChangeInvisibleTimeResponseHeader = resp.decode_header().unwrap();
        assert_eq!(rh.invisible_time, invisible);
        // The handle Apache's client builds from the response.
        new_handles.push(build_extra_info(
            h.offset,
            rh.pop_time,
            rh.invisible_time,
            rh.revive_qid,
            "PopC",
            &b.ctx().config.broker_name,
            h.queue_id,
            h.offset,
        ));
    }
    // c1 acked with its new handle: it must not come back.
    let c1 = Popped {
        msg: got[1].msg.clone(),
        handle: new_handles[1].clone(),
    };
    let r = ack(&b, "G", "PopC", &c1).await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    let back = pop_until(&b, "G", "PopC", 1000, 1, Duration::from_secs(8)).await;
    assert_eq!(back.len(), 1, "back after the new invisible time");
    assert_eq!(&back[0].msg.body[..], b"c0");
    assert_eq!(back[0].msg.reconsume_times, 1);
    let r = ack(&b, "G", "PopC", &back[0]).await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    // The old 600 s checkpoint was settled by the change (else the revive
    // progress would stay before it), and nothing else comes back.
    wait_revive_settled(&b).await;
    assert!(pop(&b, "G", "PopC", 1000, 0).await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn unacked_goes_to_dlq_after_retry_max_times() {
    let (b, _dir) = start().await;
    let mut g = b.ctx().groups.find_or_create("GD").unwrap();
    g.retry_max_times = 1;
    b.ctx().groups.update(g);
    send(&b, "PopD", 0, b"d0").await;
    wait_queue(&b, "PopD", 0, 1).await;
    assert_eq!(pop(&b, "GD", "PopD", 300, 0).await.len(), 1);
    let again = pop_until(&b, "GD", "PopD", 300, 1, Duration::from_secs(8)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].msg.reconsume_times, 1);
    // Not acked again: reconsumeTimes 1 reached retryMaxTimes 1.
    let deadline = Instant::now() + Duration::from_secs(8);
    while b.ctx().store.max_offset("%DLQ%GD", 0) < 1 {
        assert!(Instant::now() < deadline, "never reached the DLQ");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(pop(&b, "GD", "PopD", 300, 0).await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn long_polling_pop_wakes_on_arrival() {
    let (b, _dir) = start().await;
    send(&b, "PopL", 0, b"first").await;
    wait_queue(&b, "PopL", 0, 1).await;
    let first = pop(&b, "GL", "PopL", 1000, 0).await;
    assert_eq!(first.len(), 1);
    let t0 = Instant::now();
    let (got, ()) = tokio::join!(pop(&b, "GL", "PopL", 1000, 20_000), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(&b, "PopL", 2, b"late").await;
    });
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].msg.body[..], b"late");
    // Woken by the arrival, not by the end of the 20 s poll.
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    // Acked with handles built from the response headers (as Apache's
    // client does): neither may come back once the revive service has
    // passed their checkpoints.
    for p in first.iter().chain(&got) {
        let r = ack(&b, "GL", "PopL", p).await;
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    }
    wait_revive_settled(&b).await;
    assert!(pop(&b, "GL", "PopL", 1000, 0).await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn malformed_receipts_are_refused() {
    let (b, _dir) = start().await;
    send(&b, "PopM", 0, b"x").await;
    for bad in [
        "",
        "1 2",
        "a b c d e f g",
        "0 1 2 3 7 b 0 0",
        "0 1 2 99 0 b 0 0",
    ] {
        let h = AckMessageRequestHeader {
            consumer_group: "G".into(),
            topic: "PopM".into(),
            queue_id: 0,
            extra_info: bad.into(),
            offset: 0,
            ..Default::default()
        };
        let r = b
            .call(RemotingCommand::request(request_code::ACK_MESSAGE).with_header(&h))
            .await;
        assert_eq!(
            r.code,
            response_code::INVALID_PARAMETER,
            "{bad:?}: {:?}",
            r.remark
        );
    }
    // Out-of-range offset with a well-formed handle.
    let h = AckMessageRequestHeader {
        consumer_group: "G".into(),
        topic: "PopM".into(),
        queue_id: 0,
        extra_info: "0 1 2 3 0 b 0 0".into(),
        offset: 50,
        ..Default::default()
    };
    let r = b
        .call(RemotingCommand::request(request_code::ACK_MESSAGE).with_header(&h))
        .await;
    assert_eq!(r.code, response_code::NO_MESSAGE, "{:?}", r.remark);
    // A header missing required fields.
    let r = b
        .call(RemotingCommand::request(request_code::POP_MESSAGE))
        .await;
    assert_eq!(r.code, response_code::SYSTEM_ERROR, "{:?}", r.remark);
    // Too many messages asked for.
    let h = PopMessageRequestHeader {
        consumer_group: "G".into(),
        topic: "PopM".into(),
        queue_id: -1,
        max_msg_nums: 33,
        invisible_time: 1000,
        ..Default::default()
    };
    let r = b
        .call(RemotingCommand::request(request_code::POP_MESSAGE).with_header(&h))
        .await;
    assert_eq!(r.code, response_code::INVALID_PARAMETER, "{:?}", r.remark);
    b.stop().await;
}

#[tokio::test]
async fn batch_ack_and_acks_naming_the_retry_topic() {
    let (b, _dir) = start().await;
    for body in [b"b0" as &[u8], b"b1", b"b2", b"b3"] {
        send(&b, "PopB", 0, Box::leak(body.to_vec().into_boxed_slice())).await;
    }
    wait_queue(&b, "PopB", 0, 4).await;
    let mut h = order_pop("GB", "PopB", 1000);
    h.order = None;
    h.max_msg_nums = 32;
    let (got, rh) = pop_req(&b, h).await;
    assert_eq!(got.len(), 4);
    let rh = rh.unwrap();
    assert_eq!(rh.msg_offset_info.as_deref(), Some("0 0 0,1,2,3"));
    assert_eq!(rh.start_offset_info.as_deref(), Some("0 0 0"));
    let f: Vec<&str> = got[0].handle.split(' ').collect();
    // Offsets 0, 1 and 3 acked: BitSet {0, 1, 3} is the byte 0b1011 ("Cw==").
    let body = format!(
        r#"{{"acks":[{{"c":"GB","t":"PopB","r":"0","so":{},"q":0,"rq":{},"pt":{},"it":1000,"b":"Cw=="}}],"brokerName":"{}"}}"#,
        f[0], f[3], f[1], f[5]
    );
    let r = b
        .call(
            RemotingCommand::request(request_code::BATCH_ACK_MESSAGE).with_body(Bytes::from(body)),
        )
        .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    let back = pop_until(&b, "GB", "PopB", 1000, 1, Duration::from_secs(8)).await;
    assert_eq!(back.len(), 1);
    assert_eq!(&back[0].msg.body[..], b"b2");
    // Acked as Apache's client does: the header names the retry topic.
    let h = AckMessageRequestHeader {
        consumer_group: "GB".into(),
        topic: "%RETRY%GB+PopB".into(),
        queue_id: back[0].msg.queue_id,
        extra_info: back[0].handle.clone(),
        offset: queue_offset_of(&back[0]),
        ..Default::default()
    };
    let r = b
        .call(RemotingCommand::request(request_code::ACK_MESSAGE).with_header(&h))
        .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(pop(&b, "GB", "PopB", 1000, 0).await.is_empty());

    // Malformed batch bodies are refused, not a panic.
    for bad in [
        "",
        "{",
        r#"{"acks":[]}"#,
        r#"{"acks":[{"c":"GB","t":"PopB","r":"7","so":0,"q":0,"rq":0,"pt":0,"it":0}]}"#,
    ] {
        let r = b
            .call(
                RemotingCommand::request(request_code::BATCH_ACK_MESSAGE)
                    .with_body(Bytes::from(bad)),
            )
            .await;
        assert_ne!(r.code, response_code::SUCCESS, "{bad:?}");
    }
    b.stop().await;
}

fn order_pop(group: &str, topic: &str, invisible: i64) -> PopMessageRequestHeader {
    PopMessageRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id: 0,
        max_msg_nums: 1,
        invisible_time: invisible,
        born_time: now_ms(),
        init_mode: 0,
        order: Some(true),
        ..Default::default()
    }
}

#[tokio::test]
async fn orderly_pop_blocks_the_queue_until_ack_or_expiry() {
    let (b, _dir) = start().await;
    send(&b, "PopO", 0, b"o0").await;
    send(&b, "PopO", 0, b"o1").await;
    wait_queue(&b, "PopO", 0, 2).await;
    let (got, rh) = pop_req(&b, order_pop("GO", "PopO", 1500)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].msg.body[..], b"o0");
    let rh = rh.unwrap();
    assert_eq!(
        rh.revive_qid, 999,
        "orderly receipts name the order revive queue"
    );
    assert_eq!(rh.order_count_info.as_deref(), Some("0 0 0"));
    // o1 waits behind the un-acked o0.
    assert!(pop_req(&b, order_pop("GO", "PopO", 1500))
        .await
        .0
        .is_empty());
    let r = ack(&b, "GO", "PopO", &got[0]).await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    let (got, _) = pop_req(&b, order_pop("GO", "PopO", 1000)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].msg.body[..], b"o1");
    // Not acked: blocked until the invisible time passes, then o1 again.
    assert!(pop_req(&b, order_pop("GO", "PopO", 1000))
        .await
        .0
        .is_empty());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (again, rh) = pop_req(&b, order_pop("GO", "PopO", 1000)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(&again[0].msg.body[..], b"o1");
    assert_eq!(rh.unwrap().order_count_info.as_deref(), Some("0 0 1"));
    let r = ack(&b, "GO", "PopO", &again[0]).await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    assert!(pop_req(&b, order_pop("GO", "PopO", 1000))
        .await
        .0
        .is_empty());
    assert_eq!(b.ctx().offsets.query("GO", "PopO", 0), Some(2));
    // Nothing went to a retry topic.
    assert!(b.ctx().topics.get("%RETRY%GO+PopO").is_none());
    b.stop().await;
}

#[tokio::test]
async fn peek_and_notification_do_not_move_the_progress() {
    use apogee_protocol::header::{
        NotificationRequestHeader, NotificationResponseHeader, PeekMessageRequestHeader,
    };
    let (b, _dir) = start().await;
    send(&b, "PopP", 0, b"p0").await;
    wait_queue(&b, "PopP", 0, 1).await;
    let notify = |poll: i64| NotificationRequestHeader {
        consumer_group: "GP".into(),
        topic: "PopP".into(),
        queue_id: -1,
        poll_time: poll,
        born_time: now_ms(),
        ..Default::default()
    };
    let r = b
        .call(RemotingCommand::request(request_code::NOTIFICATION).with_header(&notify(0)))
        .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    let nh: NotificationResponseHeader = r.decode_header().unwrap();
    assert!(nh.has_msg);

    let peek = PeekMessageRequestHeader {
        topic: "PopP".into(),
        queue_id: -1,
        max_msg_nums: 32,
        consumer_group: "GP".into(),
        ..Default::default()
    };
    for _ in 0..2 {
        let r = b
            .call(RemotingCommand::request(request_code::PEEK_MESSAGE).with_header(&peek))
            .await;
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
        let m = decode_stored_many_strict(&r.body.unwrap_or_default(), false).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(&m[0].body[..], b"p0");
    }
    // The pop still gets it; then there is nothing to peek or be told about.
    let got = pop(&b, "GP", "PopP", 60_000, 0).await;
    assert_eq!(got.len(), 1);
    let r = b
        .call(RemotingCommand::request(request_code::PEEK_MESSAGE).with_header(&peek))
        .await;
    assert_eq!(r.code, response_code::PULL_NOT_FOUND, "{:?}", r.remark);
    let r = b
        .call(RemotingCommand::request(request_code::NOTIFICATION).with_header(&notify(0)))
        .await;
    let nh: NotificationResponseHeader = r.decode_header().unwrap();
    assert!(!nh.has_msg);

    // A long-polled notification is answered when a message arrives.
    let t0 = Instant::now();
    let (r, ()) = tokio::join!(
        b.call(RemotingCommand::request(request_code::NOTIFICATION).with_header(&notify(5000))),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            send(&b, "PopP", 1, b"p1").await;
        }
    );
    let nh: NotificationResponseHeader = r.decode_header().unwrap();
    assert!(nh.has_msg);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    b.stop().await;
}

#[tokio::test]
async fn polling_info_counts_held_pops() {
    use apogee_protocol::header::{PollingInfoRequestHeader, PollingInfoResponseHeader};
    let (b, _dir) = start().await;
    send(&b, "PopI", 0, b"i0").await;
    wait_queue(&b, "PopI", 0, 1).await;
    assert_eq!(pop(&b, "GI", "PopI", 60_000, 0).await.len(), 1);
    let info = PollingInfoRequestHeader {
        consumer_group: "GI".into(),
        topic: "PopI".into(),
        queue_id: -1,
        ..Default::default()
    };
    let count = || async {
        let r = b
            .call(RemotingCommand::request(request_code::POLLING_INFO).with_header(&info))
            .await;
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
        let h: PollingInfoResponseHeader = r.decode_header().unwrap();
        h.polling_num
    };
    assert_eq!(count().await, 0);
    let (got, seen) = tokio::join!(pop(&b, "GI", "PopI", 60_000, 1500), async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        count().await
    });
    assert!(got.is_empty());
    assert_eq!(seen, 1, "one pop held while it polled");
    assert_eq!(count().await, 0, "released after the poll time");
    b.stop().await;
}

/// A broker whose revive service never runs on its own: the tests drive
/// `revive_queue` themselves.
async fn start_manual_revive(dir: &std::path::Path) -> Broker {
    let mut cfg = ba_common::broker_config(dir, None);
    cfg.revive_interval = Duration::from_secs(3600);
    Broker::start(cfg).await
}

fn checkpoint(topic: &str, group: &str, start: i64, pop_time: i64, invisible: i64) -> CheckPoint {
    CheckPoint {
        start_offset: start,
        pop_time,
        invisible_time: invisible,
        bit_map: 0,
        num: 1,
        queue_id: 0,
        topic: topic.into(),
        cid: group.into(),
        revive_offset: 0,
        queue_offset_diff: Some(vec![0]),
        broker_name: None,
        re_put_times: None,
    }
}

async fn wait_revive_queue(b: &Broker, q: i32, n: i64) {
    let rt = revive_topic(&b.ctx().config.broker_cluster_name);
    wait_queue(b, &rt, q, n).await;
}

fn revive_progress(b: &Broker, q: i32) -> (i64, i64) {
    let ctx = b.ctx();
    let rt = revive_topic(&ctx.config.broker_cluster_name);
    (
        ctx.offsets.query(REVIVE_GROUP, &rt, q).unwrap_or(0),
        ctx.store.max_offset(&rt, q),
    )
}

#[tokio::test]
async fn revive_retries_a_message_it_cannot_read_yet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = start_manual_revive(dir.path()).await;
    send(&b, "PopR", 0, b"r0").await;
    wait_queue(&b, "PopR", 0, 1).await;
    b.ctx().groups.find_or_create("GR").expect("group");
    // A checkpoint of offset 3, not in the queue yet (as when the
    // dispatch lags): not a gone message, so the pass fails and keeps it.
    let ck = checkpoint("PopR", "GR", 3, now_ms() - 10_000, 1000);
    write_ck(b.ctx(), &ck, 0).await.expect("checkpoint stored");
    // A later due checkpoint of a readable message is not held up by it.
    let ok = checkpoint("PopR", "GR", 0, now_ms() - 10_000, 1000);
    write_ck(b.ctx(), &ok, 0).await.expect("checkpoint stored");
    wait_revive_queue(&b, 0, 2).await;
    assert!(revive_queue(b.ctx(), 0).await.is_err());
    assert_eq!(
        revive_progress(&b, 0).0,
        0,
        "the unreadable checkpoint is not settled"
    );
    // The revived one was settled with a batch ack.
    wait_revive_queue(&b, 0, 3).await;
    wait_queue(&b, "%RETRY%GR+PopR", 0, 1).await;
    for body in [b"r1" as &[u8], b"r2", b"r3"] {
        send(&b, "PopR", 0, Box::leak(body.to_vec().into_boxed_slice())).await;
    }
    wait_queue(&b, "PopR", 0, 4).await;
    let pass = revive_queue(b.ctx(), 0).await.expect("pass");
    assert_eq!(pass.revived, 1);
    wait_queue(&b, "%RETRY%GR+PopR", 0, 2).await;
    let (progress, end) = revive_progress(&b, 0);
    assert_eq!(progress, end, "everything settled");
    b.stop().await;
}

#[tokio::test]
async fn an_ack_stored_right_after_the_revive_time_is_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = start_manual_revive(dir.path()).await;
    send(&b, "PopA", 0, b"a0").await;
    wait_queue(&b, "PopA", 0, 1).await;
    b.ctx().groups.find_or_create("GA").expect("group");
    // Due 100 ms ago: its ack may still be on the way, so no revive yet.
    let ck = checkpoint("PopA", "GA", 0, now_ms() - 1100, 1000);
    write_ck(b.ctx(), &ck, 1).await.expect("checkpoint stored");
    wait_revive_queue(&b, 1, 1).await;
    assert_eq!(revive_queue(b.ctx(), 1).await.expect("pass").revived, 0);
    let ack = AckMsg {
        ack_offset: 0,
        start_offset: 0,
        consumer_group: "GA".into(),
        topic: "PopA".into(),
        queue_id: 0,
        pop_time: ck.pop_time,
        broker_name: None,
        ack_offset_list: None,
    };
    write_ack(b.ctx(), &ack, 1, "ack")
        .await
        .expect("ack stored");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(revive_queue(b.ctx(), 1).await.expect("pass").revived, 0);
        let (progress, end) = revive_progress(&b, 1);
        if progress >= end {
            break;
        }
        assert!(Instant::now() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.ctx().topics.get("%RETRY%GA+PopA").is_none());
    b.stop().await;
}

#[tokio::test]
async fn an_open_checkpoint_neither_blocks_nor_is_reread_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = start_manual_revive(dir.path()).await;
    send(&b, "PopW", 0, b"w0").await;
    wait_queue(&b, "PopW", 0, 1).await;
    b.ctx().groups.find_or_create("GW").expect("group");
    // An hour-long checkpoint, then one long due.
    let long = checkpoint("PopW", "GW", 0, now_ms(), 3_600_000);
    write_ck(b.ctx(), &long, 2)
        .await
        .expect("checkpoint stored");
    let due = checkpoint("PopW", "GW", 0, now_ms() - 10_000, 1000);
    write_ck(b.ctx(), &due, 2).await.expect("checkpoint stored");
    wait_revive_queue(&b, 2, 2).await;
    let p = revive_queue(b.ctx(), 2).await.expect("pass");
    assert_eq!((p.revived, p.scanned), (1, 2));
    // The settle record of the revived one is read once, then nothing.
    wait_revive_queue(&b, 2, 3).await;
    assert_eq!(revive_queue(b.ctx(), 2).await.expect("pass").scanned, 1);
    assert_eq!(revive_queue(b.ctx(), 2).await.expect("pass").scanned, 0);
    let (progress, end) = revive_progress(&b, 2);
    assert_eq!((progress, end), (0, 3), "held at the open checkpoint");
    b.stop().await;

    // After a restart the open one is read again; the revived one is not
    // revived twice.
    let b = start_manual_revive(dir.path()).await;
    let p = revive_queue(b.ctx(), 2).await.expect("pass");
    assert_eq!((p.revived, p.scanned), (0, 3));
    wait_queue(&b, "%RETRY%GW+PopW", 0, 1).await;
    assert_eq!(b.ctx().store.max_offset("%RETRY%GW+PopW", 0), 1);
    // Too long an invisible time is refused.
    let h = PopMessageRequestHeader {
        consumer_group: "GW".into(),
        topic: "PopW".into(),
        queue_id: -1,
        max_msg_nums: 1,
        invisible_time: 13 * 3600 * 1000,
        ..Default::default()
    };
    let r = b
        .call(RemotingCommand::request(request_code::POP_MESSAGE).with_header(&h))
        .await;
    assert_eq!(r.code, response_code::INVALID_PARAMETER, "{:?}", r.remark);
    b.stop().await;
}

#[tokio::test]
async fn init_mode_max_starts_at_a_young_queues_start_else_at_its_last_message() {
    let (b, _dir) = start().await;
    for body in [b"x0" as &[u8], b"x1", b"x2"] {
        send(&b, "PopX", 0, Box::leak(body.to_vec().into_boxed_slice())).await;
    }
    wait_queue(&b, "PopX", 0, 3).await;
    let max_pop = |group: &str| PopMessageRequestHeader {
        consumer_group: group.into(),
        topic: "PopX".into(),
        queue_id: 0,
        max_msg_nums: 32,
        invisible_time: 60_000,
        born_time: now_ms(),
        init_mode: 1,
        ..Default::default()
    };
    // The queue's first message is in memory: a new group reads it all.
    let (got, _) = pop_req(&b, max_pop("GX1")).await;
    let bodies: Vec<&[u8]> = got.iter().map(|p| &p.msg.body[..]).collect();
    assert_eq!(bodies, [b"x0" as &[u8], b"x1", b"x2"]);
    // Not in memory (no memory allowed): Apache's "pop last one".
    b.ctx()
        .runtime_config
        .write()
        .access_message_in_memory_max_ratio = 0;
    let (got, _) = pop_req(&b, max_pop("GX2")).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].msg.body[..], b"x2");
    b.stop().await;
}

#[tokio::test]
async fn held_pops_are_limited_and_stale_requests_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ba_common::broker_config(dir.path(), None);
    cfg.max_pop_polling_size = 1;
    let b = Broker::start(cfg).await;
    send(&b, "PopF", 0, b"f0").await;
    wait_queue(&b, "PopF", 0, 1).await;
    assert_eq!(pop(&b, "GF", "PopF", 60_000, 0).await.len(), 1);
    let poll = |poll: i64| PopMessageRequestHeader {
        consumer_group: "GF".into(),
        topic: "PopF".into(),
        queue_id: -1,
        max_msg_nums: 1,
        invisible_time: 60_000,
        poll_time: poll,
        born_time: now_ms(),
        ..Default::default()
    };
    let call = |h: PopMessageRequestHeader| {
        b.call(RemotingCommand::request(request_code::POP_MESSAGE).with_header(&h))
    };
    // One held pop fills the broker: the next one is answered at once.
    let (first, second) = tokio::join!(call(poll(1500)), async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.ctx().pop_polling.get("PopF@GF@-1") == 0 {
            assert!(Instant::now() < deadline, "the first pop was never held");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        call(poll(1500)).await
    });
    assert_eq!(
        first.code,
        response_code::POLLING_TIMEOUT,
        "{:?}",
        first.remark
    );
    assert_eq!(
        second.code,
        response_code::POLLING_FULL,
        "{:?}",
        second.remark
    );
    // A request whose poll time ended long ago is not served.
    let mut stale = poll(1000);
    stale.born_time = now_ms() - 10_000;
    let r = call(stale).await;
    assert_eq!(r.code, response_code::POLLING_TIMEOUT, "{:?}", r.remark);
    assert!(r.remark.unwrap_or_default().contains("timeout too much"));
    b.stop().await;
}

#[tokio::test]
async fn under_sync_flush_a_pop_and_its_ack_are_on_disk_when_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ba_common::broker_config(dir.path(), None);
    cfg.store.flush_disk_type = apogee_store::FlushDiskType::SyncFlush;
    let b = Broker::start(cfg).await;
    send(&b, "PopS", 0, b"s0").await;
    wait_queue(&b, "PopS", 0, 1).await;
    let store = &b.ctx().store;
    let before = store.commit_log_max_offset();
    let got = pop(&b, "GS", "PopS", 60_000, 0).await;
    assert_eq!(got.len(), 1);
    let after_pop = store.commit_log_max_offset();
    assert!(after_pop > before, "the checkpoint was stored");
    assert!(
        store.commit_log_flushed_offset() >= after_pop,
        "the checkpoint is flushed before the pop is answered"
    );
    let r = ack(&b, "GS", "PopS", &got[0]).await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    let after_ack = store.commit_log_max_offset();
    assert!(after_ack > after_pop, "the ack was stored");
    assert!(store.commit_log_flushed_offset() >= after_ack);
    b.stop().await;
}

#[tokio::test]
async fn a_restart_raises_pop_offsets_to_the_newest_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = start_manual_revive(dir.path()).await;
    for body in [b"k0" as &[u8], b"k1", b"k2"] {
        send(&b, "PopK", 0, Box::leak(body.to_vec().into_boxed_slice())).await;
    }
    wait_queue(&b, "PopK", 0, 3).await;
    let got = pop(&b, "GK", "PopK", 60_000, 0).await;
    assert_eq!(got.len(), 3);
    for p in &got {
        let r = ack(&b, "GK", "PopK", p).await;
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    }
    // As if the pop progress had not been flushed before a kill.
    b.ctx().offsets.commit("GK", "PopK", 0, 0);
    b.stop().await;
    let b = start_manual_revive(dir.path()).await;
    assert_eq!(b.ctx().offsets.query("GK", "PopK", 0), Some(3));
    assert!(pop(&b, "GK", "PopK", 60_000, 0).await.is_empty());
    b.stop().await;
}

#[tokio::test]
async fn orderly_acks_check_the_pop_time_wake_parked_pops_and_batch_ack() {
    let (b, _dir) = start().await;
    for body in [b"q0" as &[u8], b"q1", b"q2", b"q3", b"q4"] {
        send(&b, "PopQ", 0, Box::leak(body.to_vec().into_boxed_slice())).await;
    }
    wait_queue(&b, "PopQ", 0, 5).await;
    // A delivery expires and q0 is handed out again: an ack with the first
    // delivery's handle is stale and moves nothing.
    let (first, _) = pop_req(&b, order_pop("GQ", "PopQ", 300)).await;
    assert_eq!(&first[0].msg.body[..], b"q0");
    let again = loop {
        let (got, _) = pop_req(&b, order_pop("GQ", "PopQ", 60_000)).await;
        if !got.is_empty() {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(&again[0].msg.body[..], b"q0");
    let r = ack(&b, "GQ", "PopQ", &first[0]).await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    assert_eq!(b.ctx().offsets.query("GQ", "PopQ", 0), Some(0));
    assert!(pop_req(&b, order_pop("GQ", "PopQ", 60_000))
        .await
        .0
        .is_empty());

    // A parked orderly pop is woken by the ack that unblocks the queue.
    let mut held = order_pop("GQ", "PopQ", 60_000);
    held.poll_time = 20_000;
    let t0 = Instant::now();
    let ((got, _), ()) = tokio::join!(pop_req(&b, held), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = ack(&b, "GQ", "PopQ", &again[0]).await;
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    });
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].msg.body[..], b"q1");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());

    // So is a held orderly NOTIFICATION.
    {
        use apogee_protocol::header::{NotificationRequestHeader, NotificationResponseHeader};
        let n = NotificationRequestHeader {
            consumer_group: "GQ".into(),
            topic: "PopQ".into(),
            queue_id: 0,
            poll_time: 20_000,
            born_time: now_ms(),
            order: Some(true),
            ..Default::default()
        };
        let t0 = Instant::now();
        let (r, ()) = tokio::join!(
            b.call(RemotingCommand::request(request_code::NOTIFICATION).with_header(&n)),
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let r = ack(&b, "GQ", "PopQ", &got[0]).await;
                assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
            }
        );
        let nh: NotificationResponseHeader = r.decode_header().unwrap();
        assert!(nh.has_msg);
        assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    }
    let (got, _) = pop_req(&b, order_pop("GQ", "PopQ", 60_000)).await;
    assert_eq!(&got[0].msg.body[..], b"q2");

    // A new invisible time keeps the handle valid (same popTime).
    let h = ChangeInvisibleTimeRequestHeader {
        consumer_group: "GQ".into(),
        topic: "PopQ".into(),
        queue_id: 0,
        extra_info: got[0].handle.clone(),
        offset: got[0].msg.queue_offset,
        invisible_time: 60_000,
        ..Default::default()
    };
    let r = b
        .call(RemotingCommand::request(request_code::CHANGE_MESSAGE_INVISIBLETIME).with_header(&h))
        .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    let r = ack(&b, "GQ", "PopQ", &got[0]).await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    assert_eq!(b.ctx().offsets.query("GQ", "PopQ", 0), Some(3));
    // No open batch any more: a change is refused, not a silent success.
    let r = b
        .call(RemotingCommand::request(request_code::CHANGE_MESSAGE_INVISIBLETIME).with_header(&h))
        .await;
    assert_ne!(r.code, response_code::SUCCESS, "{:?}", r.remark);

    // BATCH_ACK of an orderly batch (reviveQid 999).
    let mut two = order_pop("GQ", "PopQ", 60_000);
    two.max_msg_nums = 2;
    let (got, rh) = pop_req(&b, two).await;
    assert_eq!(got.len(), 2);
    let rh = rh.unwrap();
    // BitSet {0, 1} from startOffset 3: the byte 0b11 ("Aw==").
    let body = format!(
        r#"{{"acks":[{{"c":"GQ","t":"PopQ","r":"0","so":3,"q":0,"rq":999,"pt":{},"it":60000,"b":"Aw=="}}],"brokerName":"{}"}}"#,
        rh.pop_time,
        b.ctx().config.broker_name
    );
    let r = b
        .call(
            RemotingCommand::request(request_code::BATCH_ACK_MESSAGE).with_body(Bytes::from(body)),
        )
        .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    assert_eq!(b.ctx().offsets.query("GQ", "PopQ", 0), Some(5));
    b.stop().await;
}

#[tokio::test]
async fn an_orderly_batch_stays_invisible_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(ba_common::broker_config(dir.path(), None)).await;
    send(&b, "PopZ", 0, b"z0").await;
    wait_queue(&b, "PopZ", 0, 1).await;
    let (got, _) = pop_req(&b, order_pop("GZ", "PopZ", 60_000)).await;
    assert_eq!(got.len(), 1);
    b.stop().await;
    let b = Broker::start(ba_common::broker_config(dir.path(), None)).await;
    assert!(
        pop_req(&b, order_pop("GZ", "PopZ", 60_000))
            .await
            .0
            .is_empty(),
        "the in-flight batch is not handed to another consumer"
    );
    // The handle from before the restart still acks it.
    let r = ack(&b, "GZ", "PopZ", &got[0]).await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    assert_eq!(b.ctx().offsets.query("GZ", "PopZ", 0), Some(1));
    // As if the consume offset had not been flushed before a kill: the
    // acked message is still not handed out again.
    b.ctx().offsets.commit("GZ", "PopZ", 0, 0);
    b.stop().await;
    let b = Broker::start(ba_common::broker_config(dir.path(), None)).await;
    assert_eq!(b.ctx().offsets.query("GZ", "PopZ", 0), Some(1));
    assert!(pop_req(&b, order_pop("GZ", "PopZ", 60_000))
        .await
        .0
        .is_empty());
    b.stop().await;
}

#[tokio::test]
async fn retry_topics_are_read_first_only_in_some_pops() {
    let (b, _dir) = start().await;
    send(&b, "PopY", 0, b"y0").await;
    wait_queue(&b, "PopY", 0, 1).await;
    assert_eq!(pop(&b, "GY", "PopY", 300, 0).await.len(), 1);
    // Not acked: revived to the retry topic.
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.ctx().store.max_offset("%RETRY%GY+PopY", 0) < 1 {
        assert!(Instant::now() < deadline, "never revived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send(&b, "PopY", 0, b"y1").await;
    wait_queue(&b, "PopY", 0, 2).await;
    let one = |group: &str| PopMessageRequestHeader {
        consumer_group: group.into(),
        topic: "PopY".into(),
        queue_id: -1,
        max_msg_nums: 1,
        invisible_time: 60_000,
        born_time: now_ms(),
        ..Default::default()
    };
    b.ctx().runtime_config.write().pop_from_retry_probability = 0;
    let (got, _) = pop_req(&b, one("GY")).await;
    assert_eq!(&got[0].msg.body[..], b"y1", "the topic first");
    b.ctx().runtime_config.write().pop_from_retry_probability = 100;
    let (got, _) = pop_req(&b, one("GY")).await;
    assert_eq!(&got[0].msg.body[..], b"y0", "the retry topic first");
    b.stop().await;
}

#[tokio::test]
async fn system_topics_and_groups_cannot_be_popped() {
    let (b, _dir) = start().await;
    send(&b, "PopSys", 0, b"x").await;
    let rt = revive_topic(&b.ctx().config.broker_cluster_name);
    for (topic, group) in [(rt.as_str(), "G"), ("PopSys", "CID_RMQ_SYS_X")] {
        let h = PopMessageRequestHeader {
            consumer_group: group.into(),
            topic: topic.into(),
            queue_id: -1,
            max_msg_nums: 1,
            invisible_time: 60_000,
            born_time: now_ms(),
            ..Default::default()
        };
        let r = b
            .call(RemotingCommand::request(request_code::POP_MESSAGE).with_header(&h))
            .await;
        assert_eq!(
            r.code,
            response_code::NO_PERMISSION,
            "{topic} {group}: {:?}",
            r.remark
        );
    }
    b.stop().await;
}

#[tokio::test]
async fn revive_does_not_recreate_a_deleted_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = start_manual_revive(dir.path()).await;
    send(&b, "PopG", 0, b"g0").await;
    wait_queue(&b, "PopG", 0, 1).await;
    assert!(b.ctx().groups.get("GGone").is_none());
    let ck = checkpoint("PopG", "GGone", 0, now_ms() - 10_000, 1000);
    write_ck(b.ctx(), &ck, 3).await.expect("checkpoint stored");
    wait_revive_queue(&b, 3, 1).await;
    let pass = revive_queue(b.ctx(), 3).await.expect("pass");
    assert_eq!(pass.revived, 0);
    assert!(b.ctx().groups.get("GGone").is_none(), "not created again");
    assert!(b.ctx().topics.get("%RETRY%GGone+PopG").is_none());
    let (progress, end) = revive_progress(&b, 3);
    assert_eq!(progress, end, "the checkpoint is settled");
    b.stop().await;
}
