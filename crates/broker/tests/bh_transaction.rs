//! Transactional messages in-process over real TCP: half messages are
//! invisible, END_TRANSACTION's checks and outcomes, `rejectTransactionMessage`,
//! and a half message nobody answers ending in TRANS_CHECK_MAX_TIME_TOPIC
//! after `transactionCheckMax` checks.

mod ba_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_broker::config::BrokerConfig;
use apogee_broker::context::BrokerContext;
use apogee_broker::BrokerController;
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::send::{
    EndTransactionRequestHeader, SendMessageRequestHeader, SendMessageResponseHeader,
};
use apogee_protocol::message::{decode_offset_msg_id, decode_stored, keys, sysflag};
use apogee_protocol::{topic, RemotingCommand};
use apogee_remoting::{ClientConfig, RemotingClient};
use bytes::Bytes;

struct Broker {
    ctl: BrokerController,
    ctx: Arc<BrokerContext>,
    addr: String,
    client: RemotingClient,
    _dir: tempfile::TempDir,
}

impl Broker {
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

    /// Sends half message `body` to `Orders` queue 1; (response, queue offset, CommitLog offset).
    async fn send_half(&self, body: &'static str, born: i64) -> (RemotingCommand, i64, i64) {
        self.send_half_with(body, born, "").await
    }

    /// [`Broker::send_half`] with extra encoded properties.
    async fn send_half_with(
        &self,
        body: &'static str,
        born: i64,
        extra: &str,
    ) -> (RemotingCommand, i64, i64) {
        self.send_half_full(body, &format!("U-{body}"), born, extra)
            .await
    }

    /// [`Broker::send_half_with`] with a chosen UNIQ_KEY.
    async fn send_half_full(
        &self,
        body: &'static str,
        uniq: &str,
        born: i64,
        extra: &str,
    ) -> (RemotingCommand, i64, i64) {
        let h = SendMessageRequestHeader {
            producer_group: "PG".into(),
            topic: "Orders".into(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id: 1,
            sys_flag: sysflag::TRANSACTION_PREPARED_TYPE,
            born_timestamp: born,
            properties: Some(format!(
                "TRAN_MSG\u{1}true\u{2}PGROUP\u{1}PG\u{2}UNIQ_KEY\u{1}{uniq}\u{2}TAGS\u{1}T\u{2}{extra}"
            )),
            ..Default::default()
        };
        let resp = self
            .call(
                RemotingCommand::request(request_code::SEND_MESSAGE)
                    .with_header(&h)
                    .with_body(Bytes::from_static(body.as_bytes())),
            )
            .await;
        if resp.code != response_code::SUCCESS {
            return (resp, -1, -1);
        }
        let rh: SendMessageResponseHeader = resp.decode_header().expect("send response");
        let (_, phys) = decode_offset_msg_id(&rh.msg_id).expect("offset msg id");
        (resp, rh.queue_offset, phys)
    }

    async fn end(&self, group: &str, qo: i64, phys: i64, state: i32) -> RemotingCommand {
        let h = EndTransactionRequestHeader {
            producer_group: group.into(),
            tran_state_table_offset: qo,
            commit_log_offset: phys,
            commit_or_rollback: state,
            msg_id: "U".into(),
            ..Default::default()
        };
        self.call(RemotingCommand::request(request_code::END_TRANSACTION).with_header(&h))
            .await
    }

    async fn wait_max(&self, topic: &str, queue: i32, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ctx.store.max_offset(topic, queue) < n {
            assert!(
                Instant::now() < deadline,
                "{topic}:{queue} never reached {n}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        self.client.close().await;
        self.ctl.shutdown().await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test]
async fn half_messages_commit_rollback_and_end_transaction_checks() {
    let b = Broker::start_with(|_| {}).await;
    let (resp, qo, phys) = b.send_half("a", now_ms()).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let rh: SendMessageResponseHeader = resp.decode_header().unwrap();
    assert_eq!(rh.queue_id, 1, "the answer names the real queue");
    assert_eq!(rh.transaction_id.as_deref(), Some("U-a"));
    b.wait_max(topic::RMQ_SYS_TRANS_HALF_TOPIC, 0, 1).await;
    assert_eq!(
        b.ctx.store.max_offset("Orders", 1),
        0,
        "a half message is invisible"
    );

    // Apache's checks: producer group and both offsets must match.
    let r = b
        .end("Other", qo, phys, sysflag::TRANSACTION_COMMIT_TYPE)
        .await;
    assert_eq!(r.code, response_code::SYSTEM_ERROR);
    assert_eq!(r.remark.as_deref(), Some("The producer group wrong"));
    let r = b
        .end("PG", qo + 5, phys, sysflag::TRANSACTION_COMMIT_TYPE)
        .await;
    assert_eq!(
        r.remark.as_deref(),
        Some("The transaction state table offset wrong")
    );
    let r = b
        .end("PG", qo, phys + 1, sysflag::TRANSACTION_COMMIT_TYPE)
        .await;
    assert_eq!(r.code, response_code::SYSTEM_ERROR);

    // Commit: the message appears in its real queue with the COMMIT type.
    let r = b
        .end("PG", qo, phys, sysflag::TRANSACTION_COMMIT_TYPE)
        .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    b.wait_max("Orders", 1, 1).await;
    let rec = b
        .ctx
        .store
        .get_messages("G", "Orders", 1, 0, 8, usize::MAX, None)
        .messages;
    assert_eq!(rec.len(), 1);
    let (m, _) = decode_stored(&rec[0], true).unwrap();
    assert_eq!(&m.body[..], b"a");
    assert_eq!(
        sysflag::transaction_value(m.sys_flag),
        sysflag::TRANSACTION_COMMIT_TYPE
    );
    assert_eq!(m.prepared_transaction_offset, phys);
    assert_eq!(m.property(keys::TAGS), Some("T"));
    assert_eq!(m.property(keys::REAL_TOPIC), None);
    assert_eq!(m.property(keys::TRANSACTION_PREPARED), None);
    // The decision is an op message: tag d, body "<offset>,".
    b.wait_max(topic::RMQ_SYS_TRANS_OP_HALF_TOPIC, 0, 1).await;
    let op = b
        .ctx
        .store
        .get_messages(
            "G",
            topic::RMQ_SYS_TRANS_OP_HALF_TOPIC,
            0,
            0,
            8,
            usize::MAX,
            None,
        )
        .messages;
    let (m, _) = decode_stored(&op[0], true).unwrap();
    assert_eq!(m.property(keys::TAGS), Some("d"));
    assert_eq!(&m.body[..], format!("{qo},").as_bytes());

    // A second commit of the same half message once it is old enough to
    // have been checked (timeout 0 here): found in the index, not doubled.
    b.ctx.runtime_config.write().transaction_timeout = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b
        .ctx
        .store
        .query_by_unique_key("Orders", "U-a", 4, 0, i64::MAX)
        .messages
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the commit was never indexed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = b
        .end("PG", qo, phys, sysflag::TRANSACTION_COMMIT_TYPE)
        .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    b.wait_max(topic::RMQ_SYS_TRANS_OP_HALF_TOPIC, 0, 2).await;
    assert_eq!(b.ctx.store.max_offset("Orders", 1), 1, "committed twice");
    b.ctx.runtime_config.write().transaction_timeout = Duration::from_secs(6);

    // Rollback: nothing reaches the real topic; UNKNOWN gets no answer.
    let (_, qo2, phys2) = b.send_half("b", now_ms()).await;
    let r = b
        .end("PG", qo2, phys2, sysflag::TRANSACTION_ROLLBACK_TYPE)
        .await;
    assert_eq!(r.code, response_code::SUCCESS);
    b.wait_max(topic::RMQ_SYS_TRANS_OP_HALF_TOPIC, 0, 3).await;
    assert_eq!(b.ctx.store.max_offset("Orders", 1), 1);

    // rejectTransactionMessage refuses half messages.
    b.ctx.runtime_config.write().reject_transaction_message = true;
    let (resp, _, _) = b.send_half("c", now_ms()).await;
    assert_eq!(resp.code, response_code::NO_PERMISSION);
    b.stop().await;
}

#[tokio::test]
async fn unanswered_half_message_goes_to_the_check_max_topic() {
    let b = Broker::start_with(|c| {
        c.transaction_check_interval = Duration::from_millis(50);
        c.transaction_timeout = Duration::from_millis(0);
        c.transaction_check_max = 2;
    })
    .await;
    // Born long ago, and no producer of group PG is connected to answer.
    let (resp, _, _) = b.send_half("lonely", now_ms() - 60_000).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let t = topic::RMQ_SYS_TRANS_CHECK_MAX_TIME_TOPIC;
    b.wait_max(t, 0, 1).await;
    let rec = b
        .ctx
        .store
        .get_messages("G", t, 0, 0, 8, usize::MAX, None)
        .messages;
    let (m, _) = decode_stored(&rec[0], true).unwrap();
    assert_eq!(&m.body[..], b"lonely");
    assert_eq!(m.property(keys::TRANSACTION_CHECK_TIMES), Some("2"));
    assert_eq!(m.property(keys::REAL_TOPIC), Some("Orders"));
    // Original + two checked copies in the half queue; nothing in the real topic.
    assert_eq!(
        b.ctx.store.max_offset(topic::RMQ_SYS_TRANS_HALF_TOPIC, 0),
        3
    );
    assert_eq!(b.ctx.store.max_offset("Orders", 1), 0);
    // Settled: more passes move nothing else.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.ctx.store.max_offset(t, 0), 1);
    assert_eq!(
        b.ctx.store.max_offset(topic::RMQ_SYS_TRANS_HALF_TOPIC, 0),
        3
    );
    b.stop().await;
}

#[tokio::test]
async fn a_commit_whose_op_message_was_lost_is_settled_without_a_check() {
    // The crash window of a commit: the real message is stored, the op
    // message is not. The scan must find the commit and only record it.
    let b = Broker::start_with(|c| {
        c.transaction_check_interval = Duration::from_millis(50);
        c.transaction_timeout = Duration::from_millis(0);
    })
    .await;
    // Stored (and indexed) first, so the scan cannot see the half message
    // before its commit exists.
    let committed = apogee_protocol::message::stored::MessageToStore {
        topic: "Orders".into(),
        queue_id: 1,
        flag: 0,
        body: Bytes::from_static(b"crashed"),
        properties: "PGROUP\u{1}PG\u{2}UNIQ_KEY\u{1}U-crashed\u{2}TAGS\u{1}T\u{2}".into(),
        sys_flag: sysflag::TRANSACTION_COMMIT_TYPE,
        born_timestamp: now_ms() - 60_000,
        born_host: "127.0.0.1:1".parse().unwrap(),
        store_host: "127.0.0.1:2".parse().unwrap(),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        tags_code: 0,
    };
    b.ctx
        .store
        .put_message_async(&committed)
        .expect("append")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b
        .ctx
        .store
        .query_by_unique_key("Orders", "U-crashed", 4, 0, i64::MAX)
        .messages
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the commit was never indexed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (resp, _, _) = b.send_half("crashed", now_ms() - 60_000).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    // Settled by an op message for the half message; no copy re-queued.
    b.wait_max(topic::RMQ_SYS_TRANS_OP_HALF_TOPIC, 0, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.ctx.store.max_offset(topic::RMQ_SYS_TRANS_HALF_TOPIC, 0),
        1
    );
    assert_eq!(
        b.ctx
            .store
            .max_offset(topic::RMQ_SYS_TRANS_OP_HALF_TOPIC, 0),
        1
    );
    assert_eq!(b.ctx.store.max_offset("Orders", 1), 1);
    assert_eq!(
        b.ctx
            .store
            .max_offset(topic::RMQ_SYS_TRANS_CHECK_MAX_TIME_TOPIC, 0),
        0
    );
    b.stop().await;
}

/// Every message of the half queue, decoded: (body, properties).
fn half_queue(b: &Broker) -> Vec<(Vec<u8>, std::collections::HashMap<String, String>)> {
    b.ctx
        .store
        .get_messages(
            "G",
            topic::RMQ_SYS_TRANS_HALF_TOPIC,
            0,
            0,
            1024,
            usize::MAX,
            None,
        )
        .messages
        .iter()
        .map(|r| {
            let (m, _) = decode_stored(r, true).unwrap();
            (m.body.to_vec(), m.properties.clone())
        })
        .collect()
}

#[tokio::test]
async fn extreme_born_timestamps_do_not_break_the_check_pass() {
    let b = Broker::start_with(|c| {
        c.transaction_check_interval = Duration::from_secs(3600);
        c.transaction_timeout = Duration::from_millis(0);
    })
    .await;
    for (body, born) in [("min", i64::MIN), ("max", i64::MAX)] {
        let (resp, _, _) = b.send_half(body, born).await;
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
        let (resp, _, _) = b
            .send_half_with(body, born, "CHECK_IMMUNITY_TIME_IN_SECONDS\u{1}60\u{2}")
            .await;
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    }
    b.wait_max(topic::RMQ_SYS_TRANS_HALF_TOPIC, 0, 4).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Overflowing `now - born` panicked here before.
    let stats = apogee_broker::transaction::check_once(&b.ctx).await;
    assert_eq!(stats.half_offset, 4, "{stats:?}");
    b.stop().await;
}

#[tokio::test]
async fn an_immune_half_message_does_not_hold_back_later_checks() {
    let b = Broker::start_with(|c| {
        c.transaction_check_interval = Duration::from_millis(50);
        c.transaction_timeout = Duration::from_millis(0);
        c.transaction_check_max = 1000;
    })
    .await;
    // First in the queue, immune for an hour (capped at 1000 × 50 ms).
    let (resp, qo_a, _) = b
        .send_half_with(
            "a",
            now_ms(),
            "CHECK_IMMUNITY_TIME_IN_SECONDS\u{1}3600\u{2}",
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    // Another transaction behind it, long due for its check.
    let (resp, _, _) = b.send_half("b", now_ms() - 60_000).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = half_queue(&b);
        let b_checked = q
            .iter()
            .any(|(body, p)| body == b"b" && p.contains_key(keys::TRANSACTION_CHECK_TIMES));
        let a_copy = q.iter().skip(1).find(|(body, _)| body == b"a");
        if b_checked {
            let (_, p) = a_copy.expect("the immune message was re-queued");
            let stamp = qo_a.to_string();
            assert_eq!(
                p.get(keys::TRANSACTION_PREPARED_QUEUE_OFFSET),
                Some(&stamp),
                "{p:?}"
            );
            assert!(!p.contains_key(keys::TRANSACTION_CHECK_TIMES), "{p:?}");
            break;
        }
        assert!(Instant::now() < deadline, "b was never checked: {q:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn two_half_messages_sharing_a_uniq_key_are_both_committed() {
    let b = Broker::start_with(|c| {
        c.transaction_check_interval = Duration::from_secs(3600);
    })
    .await;
    let (_, qo1, phys1) = b.send_half_full("one", "SAME", now_ms(), "").await;
    let (_, qo2, phys2) = b.send_half_full("two", "SAME", now_ms(), "").await;
    assert!(phys1 >= 0 && phys2 >= 0);
    let r = b
        .end("PG", qo1, phys1, sysflag::TRANSACTION_COMMIT_TYPE)
        .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    b.wait_max("Orders", 1, 1).await;
    // Old enough to have been checked: the second commit looks for an
    // existing one, which must not be the first transaction's.
    b.ctx.runtime_config.write().transaction_timeout = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b
        .ctx
        .store
        .query_by_unique_key("Orders", "SAME", 4, 0, i64::MAX)
        .messages
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the commit was never indexed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = b
        .end("PG", qo2, phys2, sysflag::TRANSACTION_COMMIT_TYPE)
        .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    b.wait_max("Orders", 1, 2).await;
    let bodies: Vec<Vec<u8>> = b
        .ctx
        .store
        .get_messages("G", "Orders", 1, 0, 8, usize::MAX, None)
        .messages
        .iter()
        .map(|r| decode_stored(r, true).unwrap().0.body.to_vec())
        .collect();
    assert_eq!(bodies, vec![b"one".to_vec(), b"two".to_vec()]);
    b.stop().await;
}

#[tokio::test]
async fn concurrent_commits_of_one_half_message_deliver_it_once() {
    let b = Broker::start_with(|c| {
        c.transaction_check_interval = Duration::from_secs(3600);
    })
    .await;
    let (_, qo, phys) = b.send_half("dup", now_ms()).await;
    let c = sysflag::TRANSACTION_COMMIT_TYPE;
    let (r1, r2) = tokio::join!(b.end("PG", qo, phys, c), b.end("PG", qo, phys, c));
    assert!(
        r1.code == response_code::SUCCESS || r2.code == response_code::SUCCESS,
        "{:?} {:?}",
        r1.remark,
        r2.remark
    );
    // And once more after both, before the index could matter.
    let r3 = b.end("PG", qo, phys, c).await;
    assert_eq!(r3.code, response_code::SUCCESS, "{:?}", r3.remark);
    b.wait_max("Orders", 1, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.ctx.store.max_offset("Orders", 1), 1, "committed twice");
    b.stop().await;
}

#[tokio::test]
async fn one_pass_checks_every_undecided_message_across_read_batches() {
    let b = Broker::start_with(|c| {
        c.transaction_check_interval = Duration::from_secs(3600);
        c.transaction_timeout = Duration::from_millis(0);
    })
    .await;
    const BODIES: [&str; 70] = [
        "m00", "m01", "m02", "m03", "m04", "m05", "m06", "m07", "m08", "m09", "m10", "m11", "m12",
        "m13", "m14", "m15", "m16", "m17", "m18", "m19", "m20", "m21", "m22", "m23", "m24", "m25",
        "m26", "m27", "m28", "m29", "m30", "m31", "m32", "m33", "m34", "m35", "m36", "m37", "m38",
        "m39", "m40", "m41", "m42", "m43", "m44", "m45", "m46", "m47", "m48", "m49", "m50", "m51",
        "m52", "m53", "m54", "m55", "m56", "m57", "m58", "m59", "m60", "m61", "m62", "m63", "m64",
        "m65", "m66", "m67", "m68", "m69",
    ];
    let mut rolled_back = 0;
    for (n, body) in BODIES.iter().enumerate() {
        let (resp, qo, phys) = b.send_half(body, now_ms() - 60_000).await;
        assert_eq!(resp.code, response_code::SUCCESS);
        if n % 3 == 0 {
            let r = b
                .end("PG", qo, phys, sysflag::TRANSACTION_ROLLBACK_TYPE)
                .await;
            assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
            rolled_back += 1;
        }
    }
    b.wait_max(topic::RMQ_SYS_TRANS_OP_HALF_TOPIC, 0, rolled_back)
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stats = apogee_broker::transaction::check_once(&b.ctx).await;
    assert_eq!(stats.half_offset, 70, "{stats:?}");
    assert_eq!(stats.checked as i64, 70 - rolled_back, "{stats:?}");
    b.stop().await;
}

#[tokio::test]
async fn a_re_queued_immune_copy_is_settled_once_its_transaction_commits() {
    let b = Broker::start_with(|c| {
        c.transaction_check_interval = Duration::from_millis(50);
        c.transaction_timeout = Duration::from_millis(0);
        c.transaction_check_max = 1000;
    })
    .await;
    let (resp, qo, phys) = b
        .send_half_with(
            "imm",
            now_ms(),
            "CHECK_IMMUNITY_TIME_IN_SECONDS\u{1}3600\u{2}",
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    // The scan moves it to the end of the queue (a copy exists).
    b.wait_max(topic::RMQ_SYS_TRANS_HALF_TOPIC, 0, 2).await;
    // The producer commits through the original, within its immunity.
    let r = b
        .end("PG", qo, phys, sysflag::TRANSACTION_COMMIT_TYPE)
        .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    b.wait_max("Orders", 1, 1).await;
    // The copies stop: the next pass settles the open copy as committed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = b.ctx.store.max_offset(topic::RMQ_SYS_TRANS_HALF_TOPIC, 0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if b.ctx.store.max_offset(topic::RMQ_SYS_TRANS_HALF_TOPIC, 0) == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the immune copy is re-queued forever"
        );
    }
    assert_eq!(b.ctx.store.max_offset("Orders", 1), 1, "committed twice");
    b.stop().await;
}
