//! Recall (RECALL_MESSAGE) against `apogee standalone` with `kill -9`:
//! timer messages are sent, half of them recalled through the Rust client,
//! the broker is killed at once (no checkpoint, no clean shutdown) and
//! restarted on its data before they are due. Every kept message must
//! arrive and no recalled one, also well after their time.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apogee_client::{ClientError, LitePullConsumer, Message, Producer};
use apogee_protocol::code::response_code;
use apogee_protocol::message::keys;

const TOPIC: &str = "RecallCrashTopic";
const N: usize = 20;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn kill(s: &mut support::Standalone) {
    s.child.kill().expect("kill -9");
    let _ = s.child.wait();
}

/// Bodies polled from every queue of the topic until `want` were seen and
/// then a further `settle` passed with nothing new.
async fn consume(namesrv: &str, want: usize, settle: Duration) -> Vec<String> {
    let consumer = LitePullConsumer::builder()
        .namesrv_addr(namesrv)
        .group("recall-checker")
        .build()
        .expect("consumer config");
    let deadline = Instant::now() + Duration::from_secs(30);
    let queues = loop {
        match consumer.fetch_message_queues(TOPIC).await {
            Ok(q) if !q.is_empty() => break q,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("no route for {TOPIC}: {other:?}"),
        }
    };
    consumer
        .assign(queues.into_iter().collect())
        .await
        .expect("assign");
    consumer.start().await.expect("consumer start");
    let mut got = Vec::new();
    let mut quiet_since = None;
    while Instant::now() < deadline {
        let msgs = consumer
            .poll(Duration::from_millis(300))
            .await
            .unwrap_or_default();
        if msgs.is_empty() {
            if got.len() >= want {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= settle {
                    break;
                }
            }
        } else {
            quiet_since = None;
        }
        got.extend(
            msgs.iter()
                .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
        );
    }
    consumer.shutdown().await;
    got
}

#[test]
fn recall_survives_kill_9() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tmp = tempfile::tempdir().expect("temp dir");
    // Sync flush: an acknowledged recall is on disk when kill -9 comes.
    let flags = ["--set", "flushDiskType=SYNC_FLUSH"];
    let mut broker = support::start_standalone_in(tmp.path(), &flags);
    let namesrv = broker.namesrv.to_string();
    let due = now_ms() + 6_000;
    let recalled: BTreeSet<String> = rt.block_on(async {
        let producer = Producer::builder()
            .namesrv_addr(namesrv.clone())
            .group("recall-producer")
            .build()
            .expect("producer config");
        producer.start().await.expect("producer start");
        let mut recalled = BTreeSet::new();
        for i in 0..N {
            let body = format!("timer-{i}");
            let msg = Message::new(TOPIC, body.clone().into_bytes())
                .with_property(keys::TIMER_DELIVER_MS, due.to_string());
            let sent = producer.send(msg).await.expect("send");
            let handle = sent.recall_handle.expect("a timer send answers a handle");
            if i % 2 == 1 {
                let id = producer
                    .recall_message(TOPIC, &handle)
                    .await
                    .expect("recall");
                assert_eq!(id, sent.msg_id);
                recalled.insert(body);
            }
        }
        // A malformed handle is refused by the client before any request;
        // a well-formed one for another broker by the broker.
        match producer.recall_message(TOPIC, "!!").await {
            Err(ClientError::InvalidArgument(m)) => assert!(m.contains("invalid"), "{m}"),
            other => panic!("malformed handle accepted: {other:?}"),
        }
        producer.shutdown().await;
        recalled
    });
    kill(&mut broker);
    let mut broker = support::start_standalone_in(tmp.path(), &flags);
    let namesrv = broker.namesrv.to_string();
    // Wait until all were due, then read everything the topic holds.
    let wait = (due - now_ms()).max(0) as u64;
    std::thread::sleep(Duration::from_millis(wait + 500));
    let got = rt.block_on(consume(
        &namesrv,
        N - recalled.len(),
        Duration::from_secs(2),
    ));
    let got_set: BTreeSet<String> = got.iter().cloned().collect();
    let want: BTreeSet<String> = (0..N)
        .map(|i| format!("timer-{i}"))
        .filter(|b| !recalled.contains(b))
        .collect();
    assert_eq!(got_set, want, "delivered after kill -9: {got:?}");
    assert_eq!(got.len(), want.len(), "duplicates: {got:?}");
    // The handle's time has passed: too late to recall now.
    rt.block_on(async {
        let producer = Producer::builder()
            .namesrv_addr(namesrv.clone())
            .group("recall-producer")
            .build()
            .expect("producer config");
        producer.start().await.expect("producer start");
        let sent = producer
            .send(Message::new(TOPIC, b"late".to_vec()).with_property(keys::TIMER_DELAY_MS, "300"))
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(800)).await;
        match producer
            .recall_message(TOPIC, &sent.recall_handle.expect("handle"))
            .await
        {
            Err(ClientError::Broker { code, remark, .. }) => {
                assert_eq!(code, response_code::ILLEGAL_OPERATION);
                assert_eq!(remark.as_deref(), Some("recall failed, timestamp invalid"));
            }
            other => panic!("late recall accepted: {other:?}"),
        }
        producer.shutdown().await;
    });
    broker.terminate();
}
