//! `kill -9` of a broker with transactional (half) messages in flight: the
//! half topic and the op topic are the state, so after a restart on the same
//! data folder no committed message is lost, no rolled-back one is ever
//! delivered, none is committed twice, and undecided ones are checked back
//! and resolved.
//!
//! Round 1: 60 half messages; a third committed, a third rolled back, a
//! third left undecided; kill -9. Round 2 (restart): the undecided ones are
//! checked back (CHECK_TRANSACTION_STATE on the producer's connection) and
//! answered, half commit and half rollback; kill -9 right after. Round 3
//! (restart): nothing is undecided, so no check may come — any check is
//! answered COMMIT, which would make a wrongly re-checked rollback or
//! commit show up as a delivery. The real topic is read from offset 0 after
//! each round and compared with the decisions.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use apogee_protocol::body::{HeartbeatData, ProducerData};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PullSysFlag;
use apogee_protocol::header::pull::PullMessageRequestHeader;
use apogee_protocol::header::send::{
    CheckTransactionStateRequestHeader, EndTransactionRequestHeader, SendMessageRequestHeader,
    SendMessageResponseHeader,
};
use apogee_protocol::message::sysflag;
use apogee_protocol::message::{decode_offset_msg_id, decode_stored, decode_stored_many_strict};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ClientConfig, ProcessorRegistry, RemotingClient};
use bytes::Bytes;
use tokio::sync::mpsc;

const TOPIC: &str = "TxCrashTopic";
const PGROUP: &str = "tx-crash-producer";
const N: usize = 60;

/// What the test decided for message `i` (its body is `tx-{i}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Commit,
    Rollback,
    /// Left undecided in round 1; resolved by the check-back in round 2.
    CheckCommit,
    CheckRollback,
}

fn fate(i: usize) -> Fate {
    match (i % 3, i % 6) {
        (0, _) => Fate::Commit,
        (1, _) => Fate::Rollback,
        (_, 2) => Fate::CheckCommit,
        _ => Fate::CheckRollback,
    }
}

/// A CHECK_TRANSACTION_STATE the producer received: header and message body.
type Check = (CheckTransactionStateRequestHeader, String);

struct Producer {
    client: RemotingClient,
    addr: String,
    checks: mpsc::UnboundedReceiver<Check>,
}

impl Producer {
    /// Connects, registers the producer group by heartbeat (so checks come
    /// to this connection) and forwards every check it receives.
    async fn connect(addr: String) -> Producer {
        let registry = ProcessorRegistry::new();
        let (tx, checks) = mpsc::unbounded_channel();
        registry.register(
            request_code::CHECK_TRANSACTION_STATE,
            processor_fn(move |_rc, req: RemotingCommand| {
                let tx = tx.clone();
                async move {
                    let h: CheckTransactionStateRequestHeader =
                        req.decode_header().expect("check header");
                    let body = req.body.clone().unwrap_or_default();
                    let (m, _) = decode_stored(&body, false).expect("check body is a message");
                    let _ = tx.send((h, String::from_utf8_lossy(&m.body).into_owned()));
                    Ok(None)
                }
            }),
        );
        let client = RemotingClient::with_processors(ClientConfig::default(), registry);
        let p = Producer {
            client,
            addr,
            checks,
        };
        let hb = HeartbeatData {
            client_id: "tx-crash-client".into(),
            producer_data_set: vec![ProducerData {
                group_name: PGROUP.into(),
            }],
            ..Default::default()
        };
        let resp = p
            .call(RemotingCommand::request(request_code::HEART_BEAT).with_body(hb.encode()))
            .await;
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
        p
    }

    async fn call(&self, cmd: RemotingCommand) -> RemotingCommand {
        self.client
            .invoke(&self.addr, cmd, Duration::from_secs(30))
            .await
            .expect("invoke")
    }

    /// Sends half message `tx-{i}`; returns (queue offset, CommitLog offset, uniq key).
    async fn send_half(&self, i: usize) -> (i64, i64, String) {
        let uniq = format!("{:032X}", 0x7A00_0000u64 + i as u64);
        let h = SendMessageRequestHeader {
            producer_group: PGROUP.into(),
            topic: TOPIC.into(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id: 0,
            sys_flag: sysflag::TRANSACTION_PREPARED_TYPE,
            born_timestamp: now_ms(),
            flag: 0,
            properties: Some(format!(
                "TRAN_MSG\u{1}true\u{2}PGROUP\u{1}{PGROUP}\u{2}UNIQ_KEY\u{1}{uniq}\u{2}"
            )),
            ..Default::default()
        };
        let resp = self
            .call(
                RemotingCommand::request(request_code::SEND_MESSAGE)
                    .with_header(&h)
                    .with_body(Bytes::from(format!("tx-{i}"))),
            )
            .await;
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
        let rh: SendMessageResponseHeader = resp.decode_header().expect("send response header");
        let (_, phys) = decode_offset_msg_id(&rh.msg_id).expect("offset msg id");
        (rh.queue_offset, phys, uniq)
    }

    async fn end(&self, queue_offset: i64, phys: i64, uniq: &str, commit: bool, from_check: bool) {
        let h = EndTransactionRequestHeader {
            topic: Some(TOPIC.into()),
            producer_group: PGROUP.into(),
            tran_state_table_offset: queue_offset,
            commit_log_offset: phys,
            commit_or_rollback: if commit {
                sysflag::TRANSACTION_COMMIT_TYPE
            } else {
                sysflag::TRANSACTION_ROLLBACK_TYPE
            },
            from_transaction_check: from_check,
            msg_id: uniq.into(),
            transaction_id: Some(uniq.into()),
            ..Default::default()
        };
        let resp = self
            .call(RemotingCommand::request(request_code::END_TRANSACTION).with_header(&h))
            .await;
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    }

    /// Every body in the real topic's queue 0, from offset 0.
    async fn delivered(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        let mut offset = 0;
        loop {
            let h = PullMessageRequestHeader {
                consumer_group: "tx-crash-reader".into(),
                topic: TOPIC.into(),
                queue_id: 0,
                queue_offset: offset,
                max_msg_nums: 32,
                sys_flag: PullSysFlag::build(false, false, true, false, false).0,
                subscription: Some("*".into()),
                expression_type: Some("TAG".into()),
                ..Default::default()
            };
            let resp = self
                .call(RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&h))
                .await;
            if resp.code != response_code::SUCCESS {
                break;
            }
            let msgs = decode_stored_many_strict(&resp.body.clone().unwrap_or_default(), true)
                .expect("pulled records");
            for m in &msgs {
                assert_eq!(
                    sysflag::transaction_value(m.sys_flag),
                    sysflag::TRANSACTION_COMMIT_TYPE,
                    "a delivered transactional message has the COMMIT type"
                );
                *out.entry(String::from_utf8_lossy(&m.body).into_owned())
                    .or_insert(0) += 1;
                offset = offset.max(m.queue_offset + 1);
            }
        }
        out
    }

    async fn close(self) {
        self.client.close().await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn flags() -> Vec<&'static str> {
    vec![
        "--set",
        "transactionCheckInterval=300",
        "--set",
        "transactionTimeOut=1500",
        "--set",
        "flushConsumerOffsetInterval=500",
        "--set",
        "mappedFileSizeCommitLog=67108864",
        "--set",
        "maxIndexNum=100000",
        "--set",
        "maxHashSlotNum=10000",
    ]
}

fn start(dir: &Path) -> support::Standalone {
    support::start_standalone_in(dir, &flags())
}

/// The bodies that must be delivered once decisions up to `round` are in.
fn expected(check_resolved: bool) -> BTreeMap<String, usize> {
    (0..N)
        .filter(|&i| match fate(i) {
            Fate::Commit => true,
            Fate::CheckCommit => check_resolved,
            _ => false,
        })
        .map(|i| (format!("tx-{i}"), 1))
        .collect()
}

fn kill(s: &mut support::Standalone) {
    s.child.kill().expect("kill -9");
    let _ = s.child.wait();
}

#[test]
fn half_messages_survive_kill_9() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tmp = tempfile::tempdir().expect("temp dir");

    // Round 1: decide two thirds, leave a third in flight, kill -9.
    let mut broker = start(tmp.path());
    let producer = rt.block_on(Producer::connect(broker.broker.to_string()));
    rt.block_on(async {
        for i in 0..N {
            let (qo, phys, uniq) = producer.send_half(i).await;
            match fate(i) {
                Fate::Commit => producer.end(qo, phys, &uniq, true, false).await,
                Fate::Rollback => producer.end(qo, phys, &uniq, false, false).await,
                _ => {}
            }
        }
    });
    let want = expected(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = rt.block_on(producer.delivered());
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "round 1 before the kill: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(&mut broker);
    rt.block_on(producer.close());

    // Round 2: restart; the undecided are checked back and answered.
    let mut broker = start(tmp.path());
    let mut producer = rt.block_on(Producer::connect(broker.broker.to_string()));
    assert_eq!(
        rt.block_on(producer.delivered()),
        want,
        "round 1 after restart"
    );
    let mut answered = BTreeMap::new();
    let undecided = (0..N)
        .filter(|&i| matches!(fate(i), Fate::CheckCommit | Fate::CheckRollback))
        .count();
    let deadline = Instant::now() + Duration::from_secs(60);
    rt.block_on(async {
        while answered.len() < undecided {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some((h, body))) = tokio::time::timeout(left, producer.checks.recv()).await
            else {
                panic!(
                    "only {} of {undecided} checks came: {answered:?}",
                    answered.len()
                );
            };
            let i: usize = body
                .strip_prefix("tx-")
                .and_then(|s| s.parse().ok())
                .expect("body tx-<i>");
            let commit = match fate(i) {
                Fate::CheckCommit => true,
                Fate::CheckRollback => false,
                other => panic!("{body} was decided ({other:?}) but was checked"),
            };
            let uniq = h.msg_id.clone().expect("check names the message");
            producer
                .end(
                    h.tran_state_table_offset,
                    h.commit_log_offset,
                    &uniq,
                    commit,
                    true,
                )
                .await;
            *answered.entry(body).or_insert(0) += 1;
        }
    });
    let want = expected(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = rt.block_on(producer.delivered());
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "round 2: {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(&mut broker);
    rt.block_on(producer.close());

    // Round 3: restart; nothing is undecided. Answer COMMIT to anything
    // asked, so a wrong re-check would show as an extra delivery.
    let broker = start(tmp.path());
    let mut producer = rt.block_on(Producer::connect(broker.broker.to_string()));
    let mut stray = Vec::new();
    rt.block_on(async {
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some((h, body))) = tokio::time::timeout_at(until, producer.checks.recv()).await
        {
            let uniq = h.msg_id.clone().unwrap_or_default();
            producer
                .end(
                    h.tran_state_table_offset,
                    h.commit_log_offset,
                    &uniq,
                    true,
                    true,
                )
                .await;
            stray.push(body);
        }
    });
    assert_eq!(rt.block_on(producer.delivered()), want, "round 3");
    assert!(
        stray.is_empty(),
        "decided transactions were checked again: {stray:?}"
    );
    rt.block_on(producer.close());
    drop(broker);
}
