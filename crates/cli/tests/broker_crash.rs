//! `kill -9` of a broker under load from several producers: after a restart
//! on the same data folder, every message whose send was acknowledged must
//! be consumable exactly where the acknowledgement said it was stored.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_client::{LitePullConsumer, Message, MessageQueue, Producer, SendStatus};
use parking_lot::Mutex;

const TOPIC: &str = "CrashTopic";
const PRODUCERS: usize = 4;

/// (queue id, queue offset) → body, for every acknowledged send.
type Acked = Arc<Mutex<BTreeMap<(i32, i64), String>>>;

fn store_flags(flush: &str) -> Vec<String> {
    [
        format!("flushDiskType={flush}"),
        // Small files keep the test light on disk.
        "mappedFileSizeCommitLog=67108864".to_string(),
        "maxIndexNum=100000".to_string(),
        "maxHashSlotNum=10000".to_string(),
        "defaultTopicQueueNums=4".to_string(),
    ]
    .into_iter()
    .flat_map(|kv| ["--set".to_string(), kv])
    .collect()
}

async fn produce_until_killed(namesrv: String, id: usize, acked: Acked) {
    let producer = Producer::builder()
        .namesrv_addr(namesrv)
        .group(format!("crash-producer-{id}"))
        .build()
        .expect("producer config");
    producer.start().await.expect("producer start");
    let mut failures = 0;
    for seq in 0u64.. {
        let body = format!("p{id}-{seq}");
        match producer.send(Message::new(TOPIC, body.clone())).await {
            Ok(r) if r.status == SendStatus::SendOk => {
                let prev = acked
                    .lock()
                    .insert((r.queue.queue_id, r.queue_offset), body);
                assert!(
                    prev.is_none(),
                    "two acknowledged sends share one queue offset"
                );
                failures = 0;
            }
            Ok(r) => panic!("unexpected send status {:?}", r.status),
            Err(_) => {
                // The broker is gone; stop after a few consecutive failures.
                failures += 1;
                if failures >= 3 {
                    break;
                }
            }
        }
    }
    producer.shutdown().await;
}

/// Reads all queues from offset 0 until every acknowledged position was seen
/// (or 30 s pass). Unacknowledged sends may have been stored too; they are
/// returned as well.
async fn read_everything(
    namesrv: String,
    acked: &BTreeMap<(i32, i64), String>,
) -> HashMap<(i32, i64), String> {
    let consumer = LitePullConsumer::builder()
        .namesrv_addr(namesrv)
        .group("crash-checker")
        .build()
        .expect("consumer config");
    let deadline = Instant::now() + Duration::from_secs(30);
    // The restarted broker registers with its NameServer shortly after start.
    let queues = loop {
        match consumer.fetch_message_queues(TOPIC).await {
            Ok(q) if !q.is_empty() => break q,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("no route for {TOPIC} after restart: {other:?}"),
        }
    };
    let queues: Vec<MessageQueue> = queues.into_iter().collect();
    consumer.assign(queues.clone()).await.expect("assign");
    consumer.start().await.expect("consumer start");
    for mq in &queues {
        consumer.seek_to_begin(mq).await.expect("seek");
    }
    let mut seen = HashMap::new();
    while !acked.keys().all(|k| seen.contains_key(k)) && Instant::now() < deadline {
        for m in consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll")
        {
            let body = String::from_utf8_lossy(&m.body).into_owned();
            let prev = seen.insert((m.queue_id, m.queue_offset), body);
            assert!(
                prev.is_none(),
                "offset {} of queue {} delivered twice",
                m.queue_offset,
                m.queue_id
            );
        }
    }
    consumer.shutdown().await;
    seen
}

fn crash_round(flush: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = store_flags(flush);
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let mut first = support::start_standalone_in(dir.path(), &flag_refs);
    let namesrv = first.namesrv.to_string();
    let acked: Acked = Arc::default();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            rt.spawn(produce_until_killed(
                namesrv.clone(),
                id,
                Arc::clone(&acked),
            ))
        })
        .collect();

    // Let the producers get going, then kill the broker mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().len() < 3000 {
        assert!(Instant::now() < deadline, "producers made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.child.kill().expect("kill -9");
    let _ = first.child.wait();
    for p in producers {
        rt.block_on(p).expect("producer task");
    }
    drop(first);
    let acked = std::mem::take(&mut *acked.lock());
    assert!(acked.len() >= 3000);

    // Restart on the same data folder and read every queue from the start.
    let second = support::start_standalone_in(dir.path(), &flag_refs);
    let seen = rt.block_on(read_everything(second.namesrv.to_string(), &acked));

    let mut missing = 0;
    for ((queue, offset), body) in &acked {
        match seen.get(&(*queue, *offset)) {
            Some(b) if b == body => {}
            Some(b) => panic!("queue {queue} offset {offset}: expected {body}, found {b}"),
            None => missing += 1,
        }
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged messages are missing after kill -9 ({flush})",
        acked.len()
    );
    // Per queue, offsets are contiguous from 0: nothing half-written in between.
    let mut per_queue: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (q, o) in seen.keys() {
        per_queue.entry(*q).or_default().push(*o);
    }
    for (q, mut offsets) in per_queue {
        offsets.sort_unstable();
        for (i, o) in offsets.iter().enumerate() {
            assert_eq!(*o, i as i64, "queue {q} has a gap before offset {o}");
        }
    }
}

#[test]
fn acknowledged_messages_survive_kill_9_async_flush() {
    crash_round("ASYNC_FLUSH");
}

#[test]
fn acknowledged_messages_survive_kill_9_sync_flush() {
    crash_round("SYNC_FLUSH");
}
