//! `kill -9` of `apogee standalone` with POP checkpoints outstanding and
//! the pop progress never flushed to consumerOffset.json: checkpoints and
//! acks are in the store (the progress is rebuilt from them), so after a restart
//! on the same data folder every un-acked message comes back (from the
//! retry topic, reconsumeTimes 1) and no acked one ever does.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use apogee_broker::pop::build_extra_info;
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::send::SendMessageRequestHeader;
use apogee_protocol::header::{
    AckMessageRequestHeader, PopMessageRequestHeader, PopMessageResponseHeader,
};
use apogee_protocol::message::{decode_stored_many_strict, keys};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};
use bytes::Bytes;

const TOPIC: &str = "PopCrashTopic";
const GROUP: &str = "pop-crash-group";
const N: usize = 20;

/// Consume offsets flushed far less often than the test runs: the kill
/// always falls inside the flush window, so the pop progress must come
/// from the checkpoints in the store.
fn flags() -> Vec<&'static str> {
    vec!["--set", "flushConsumerOffsetInterval=600000"]
}

fn start(dir: &Path) -> support::Standalone {
    support::start_standalone_in(dir, &flags())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Client {
    client: RemotingClient,
    addr: String,
}

/// One popped message: its body, reconsume times, receipt handle and the
/// queue offset to ack.
struct Popped {
    body: String,
    reconsume_times: i32,
    handle: String,
    offset: i64,
    queue_id: i32,
}

impl Client {
    async fn call(&self, cmd: RemotingCommand) -> RemotingCommand {
        self.client
            .invoke(&self.addr, cmd, Duration::from_secs(30))
            .await
            .expect("invoke")
    }

    async fn send(&self, body: String) {
        let h = SendMessageRequestHeader {
            producer_group: "PG".into(),
            topic: TOPIC.into(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id: 0,
            born_timestamp: now_ms(),
            properties: Some(String::new()),
            ..Default::default()
        };
        let r = self
            .call(
                RemotingCommand::request(request_code::SEND_MESSAGE)
                    .with_header(&h)
                    .with_body(Bytes::from(body)),
            )
            .await;
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    }

    async fn pop(&self, invisible: i64) -> Vec<Popped> {
        let h = PopMessageRequestHeader {
            consumer_group: GROUP.into(),
            topic: TOPIC.into(),
            queue_id: -1,
            max_msg_nums: 32,
            invisible_time: invisible,
            poll_time: 0,
            born_time: now_ms(),
            init_mode: 0,
            ..Default::default()
        };
        let r = self
            .call(RemotingCommand::request(request_code::POP_MESSAGE).with_header(&h))
            .await;
        if r.code == response_code::POLLING_TIMEOUT {
            return Vec::new();
        }
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
        let rh: PopMessageResponseHeader = r.decode_header().expect("pop header");
        let starts = rh.start_offset_info.clone().unwrap_or_default();
        let body = r.body.clone().unwrap_or_default();
        decode_stored_many_strict(&body, false)
            .expect("pop body")
            .into_iter()
            .map(|m| {
                let handle = m.properties.get(keys::POP_CK).cloned().unwrap_or_else(|| {
                    let start = starts
                        .split(';')
                        .map(|e| e.split(' ').collect::<Vec<_>>())
                        .find(|f| f.len() == 3 && f[0] == "0" && f[1] == m.queue_id.to_string())
                        .and_then(|f| f[2].parse().ok())
                        .expect("startOffsetInfo names the queue");
                    build_extra_info(
                        start,
                        rh.pop_time,
                        rh.invisible_time,
                        rh.revive_qid,
                        &m.topic,
                        "broker-a",
                        m.queue_id,
                        m.queue_offset,
                    )
                });
                let offset = handle
                    .rsplit(' ')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("handle offset");
                Popped {
                    body: String::from_utf8_lossy(&m.body).into_owned(),
                    reconsume_times: m.reconsume_times,
                    queue_id: m.queue_id,
                    handle,
                    offset,
                }
            })
            .collect()
    }

    async fn ack(&self, p: &Popped) {
        let h = AckMessageRequestHeader {
            consumer_group: GROUP.into(),
            topic: TOPIC.into(),
            queue_id: p.queue_id,
            extra_info: p.handle.clone(),
            offset: p.offset,
            ..Default::default()
        };
        let r = self
            .call(RemotingCommand::request(request_code::ACK_MESSAGE).with_header(&h))
            .await;
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    }
}

fn kill(s: &mut support::Standalone) {
    s.child.kill().expect("kill -9");
    let _ = s.child.wait();
}

#[test]
fn pop_checkpoints_survive_kill_9() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tmp = tempfile::tempdir().expect("temp dir");

    // Round 1: pop everything with a 3 s invisible time, ack the even ones.
    let mut broker = start(tmp.path());
    let c = Client {
        client: RemotingClient::new(ClientConfig::default()),
        addr: broker.broker.to_string(),
    };
    rt.block_on(async {
        for i in 0..N {
            c.send(format!("pop-{i}")).await;
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < N && Instant::now() < deadline {
            got.extend(c.pop(3000).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(got.len(), N, "round 1 pops everything once");
        for p in &got {
            let i: usize = p.body.trim_start_matches("pop-").parse().expect("body");
            if i.is_multiple_of(2) {
                c.ack(p).await;
            }
        }
    });
    kill(&mut broker);
    rt.block_on(c.client.close());

    // Round 2: the odd ones come back after their invisible time; no even one.
    let broker = start(tmp.path());
    let c = Client {
        client: RemotingClient::new(ClientConfig::default()),
        addr: broker.broker.to_string(),
    };
    rt.block_on(async {
        let want: BTreeSet<String> = (0..N)
            .filter(|i| i % 2 == 1)
            .map(|i| format!("pop-{i}"))
            .collect();
        let mut back = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while back.len() < want.len() && Instant::now() < deadline {
            for p in c.pop(60_000).await {
                assert!(want.contains(&p.body), "{} came back but was acked", p.body);
                assert_eq!(p.reconsume_times, 1, "{}", p.body);
                assert!(back.insert(p.body.clone()), "{} handed out twice", p.body);
                c.ack(&p).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(back, want, "every un-acked message came back");
        // Everything acked now: nothing more comes.
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            let extra = c.pop(60_000).await;
            assert!(
                extra.is_empty(),
                "unexpected: {:?}",
                extra.iter().map(|p| &p.body).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        c.client.close().await;
    });
    drop(broker);
}
