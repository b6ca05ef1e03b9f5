//! `kill -9` of a broker under load from several producers and consumers:
//! after a restart on the same data folder, every message whose send was
//! acknowledged must be consumable exactly where the acknowledgement said it
//! was stored, and the consumer group must get every acknowledged message.
//!
//! By default each test runs one round (the CI case). The long mode
//! (`scripts/chaos/crash-rounds.sh`) sets environment variables:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `APOGEE_CRASH_ROUNDS` | 1 | kill -9 / restart rounds on one data folder |
//! | `APOGEE_CRASH_PRODUCERS` | 4 | producers (one sync sender each) |
//! | `APOGEE_CRASH_CONSUMERS` | 2 | push consumers in one group during the load |
//! | `APOGEE_CRASH_ACKS` | 3000 | acknowledged sends per round before the kill |
//! | `APOGEE_CRASH_LOAD_MS` | 0 | … and at least this long under load |
//! | `APOGEE_CRASH_RATE` | 0 (as fast as acknowledged) | sends per second per producer at most |
//! | `APOGEE_CRASH_SEED` | time | seed of the kill-point jitter (with rounds > 1, both limits are a random 0–50 % later) |
//!
//! Round `r` runs producers and consumers against the broker, kills it with
//! SIGKILL once enough sends were acknowledged, restarts it on the same data
//! folder, times how long until it serves again (a send acknowledged and
//! then pulled back), and checks this round's acknowledged messages. The
//! restarted broker carries the next round's load. After the last round,
//! every queue is read from offset 0 and every acknowledged message of every
//! round is checked again, then the consumer group drains to the end.
//! The test ends with one line, `CRASH_SUMMARY key=value …`, and then
//! asserts: no acknowledged message lost, none never delivered, queues
//! contiguous.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apogee_client::{
    ClientOptions, ConcurrentlyFn, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus,
    ConsumeFromWhere, ConsumerConfig, LitePullConsumer, Message, MessageExt, MessageQueue,
    Producer, PushConsumer, SendStatus,
};
use parking_lot::Mutex;

const TOPIC: &str = "CrashTopic";
const CONSUMER_GROUP: &str = "crash-consumers";

/// (queue id, queue offset) → body, for every acknowledged send.
type Acked = Arc<Mutex<BTreeMap<(i32, i64), String>>>;
/// Body → how many times the consumer group was handed it.
type Deliveries = Arc<Mutex<HashMap<String, u32>>>;

struct Settings {
    rounds: usize,
    producers: usize,
    consumers: usize,
    acks: usize,
    load_ms: u64,
    rate: u64,
    seed: u64,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let time_seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let s = Settings {
            rounds: env_num("APOGEE_CRASH_ROUNDS", 1),
            producers: env_num("APOGEE_CRASH_PRODUCERS", 4),
            consumers: env_num("APOGEE_CRASH_CONSUMERS", 2),
            acks: env_num("APOGEE_CRASH_ACKS", 3000),
            load_ms: env_num("APOGEE_CRASH_LOAD_MS", 0),
            rate: env_num("APOGEE_CRASH_RATE", 0),
            seed: env_num("APOGEE_CRASH_SEED", time_seed) | 1,
        };
        assert!(s.rounds >= 1 && s.producers >= 1 && s.acks >= 1);
        s
    }
}

/// xorshift64: enough to spread kill points, reproducible from the seed.
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn store_flags(flush: &str) -> Vec<String> {
    [
        format!("flushDiskType={flush}"),
        // Small files keep the test light on disk.
        "mappedFileSizeCommitLog=67108864".to_string(),
        "maxIndexNum=100000".to_string(),
        "maxHashSlotNum=10000".to_string(),
        "defaultTopicQueueNums=4".to_string(),
        // Consumer offsets reach the disk every second (default 5 s), so
        // after a kill the group redelivers about a second's worth, not
        // whole short rounds again and again.
        "flushConsumerOffsetInterval=1000".to_string(),
    ]
    .into_iter()
    .flat_map(|kv| ["--set".to_string(), kv])
    .collect()
}

async fn produce_until_killed(namesrv: String, round: usize, id: usize, rate: u64, acked: Acked) {
    let producer = Producer::builder()
        .namesrv_addr(namesrv)
        .group(format!("crash-producer-{id}"))
        .build()
        .expect("producer config");
    producer.start().await.expect("producer start");
    let mut failures = 0;
    let start = tokio::time::Instant::now();
    for seq in 0u64.. {
        if rate > 0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate as f64))
                .await;
        }
        let body = format!("r{round}-p{id}-{seq}");
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

/// Push consumers of one group, recording every message they are handed.
async fn start_consumers(namesrv: &str, n: usize, deliveries: &Deliveries) -> Vec<PushConsumer> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let d = Arc::clone(deliveries);
        let consumer = PushConsumer::builder()
            .options(ClientOptions {
                namesrv_addr: namesrv.to_string(),
                // The topic may not exist yet when the first round starts.
                poll_name_server_interval: Duration::from_secs(1),
                ..ClientOptions::default()
            })
            .config(ConsumerConfig {
                group: CONSUMER_GROUP.to_string(),
                consume_from_where: ConsumeFromWhere::ConsumeFromFirstOffset,
                rebalance_interval: Duration::from_secs(2),
                persist_consumer_offset_interval: Duration::from_secs(1),
                consume_message_batch_max_size: 32,
                ..ConsumerConfig::default()
            })
            .subscribe(TOPIC, "*")
            .listener_concurrently(ConcurrentlyFn(
                move |msgs: &[MessageExt], _ctx: &mut ConsumeConcurrentlyContext| {
                    let mut d = d.lock();
                    for m in msgs {
                        let body = String::from_utf8_lossy(&m.body).into_owned();
                        *d.entry(body).or_insert(0) += 1;
                    }
                    ConsumeConcurrentlyStatus::Success
                },
            ))
            .build()
            .expect("consumer config");
        consumer.start().await.expect("consumer start");
        out.push(consumer);
    }
    out
}

async fn stop_consumers(consumers: Vec<PushConsumer>) {
    for c in consumers {
        // Against a killed broker the final offset commit fails; bounded.
        let _ = tokio::time::timeout(Duration::from_secs(5), c.shutdown()).await;
    }
}

/// A checking consumer with every queue of the topic assigned.
async fn checker(namesrv: &str) -> (LitePullConsumer, Vec<MessageQueue>) {
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
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("no route for {TOPIC} after restart: {other:?}"),
        }
    };
    let queues: Vec<MessageQueue> = queues.into_iter().collect();
    consumer.assign(queues.clone()).await.expect("assign");
    consumer.start().await.expect("consumer start");
    (consumer, queues)
}

/// Reads the queues from the given offsets (every queue from 0 when `from`
/// is `None`) until every position in `want` was seen (or 30 s pass), and
/// with `drain` on until a poll comes back empty. Unacknowledged sends may
/// have been stored too; they are returned as well.
async fn read_from(
    consumer: &LitePullConsumer,
    queues: &[MessageQueue],
    from: Option<&BTreeMap<i32, i64>>,
    want: &BTreeMap<(i32, i64), String>,
    drain: bool,
) -> HashMap<(i32, i64), String> {
    for mq in queues {
        match from.and_then(|f| f.get(&mq.queue_id)) {
            Some(offset) => consumer.seek(mq, *offset).await.expect("seek"),
            None if from.is_none() => consumer.seek_to_begin(mq).await.expect("seek"),
            // Nothing to check in this queue this round.
            None => consumer.seek_to_end(mq).await.expect("seek"),
        }
    }
    // 30 s, and a second more per 5000 messages to check.
    let deadline = Instant::now() + Duration::from_secs(30 + want.len() as u64 / 5000);
    let mut seen = HashMap::new();
    let mut wanted_seen = 0;
    let mut last_empty = false;
    loop {
        if wanted_seen == want.len() && (!drain || last_empty) || Instant::now() >= deadline {
            break;
        }
        let msgs = consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll");
        last_empty = msgs.is_empty();
        for m in msgs {
            let pos = (m.queue_id, m.queue_offset);
            let body = String::from_utf8_lossy(&m.body).into_owned();
            if want.contains_key(&pos) {
                wanted_seen += 1;
            }
            let prev = seen.insert(pos, body);
            assert!(
                prev.is_none(),
                "offset {} of queue {} delivered twice",
                m.queue_offset,
                m.queue_id
            );
        }
    }
    seen
}

/// Acknowledged messages not found where their acknowledgement said
/// (missing, or another body there). The caller counts them, prints its
/// summary and then fails.
fn missing_of(
    acked: &BTreeMap<(i32, i64), String>,
    seen: &HashMap<(i32, i64), String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for ((queue, offset), body) in acked {
        match seen.get(&(*queue, *offset)) {
            Some(b) if b == body => {}
            Some(b) => {
                eprintln!("queue {queue} offset {offset}: expected {body}, found {b}");
                out.push(body.clone());
            }
            None => out.push(body.clone()),
        }
    }
    out
}

/// Restarted broker: spawn → listening, → first SEND_OK, → that message
/// pulled back. Returns the probe's position and body with the timings.
struct Recovery {
    listening: Duration,
    send: Duration,
    serving: Duration,
}

async fn probe_until_serving(
    namesrv: &str,
    spawned: Instant,
    listening: Duration,
    round: usize,
) -> (Recovery, (i32, i64), String) {
    let producer = Producer::builder()
        .namesrv_addr(namesrv)
        .group("crash-probe")
        .build()
        .expect("producer config");
    producer.start().await.expect("producer start");
    let body = format!("probe-{round}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pos = loop {
        match producer.send(Message::new(TOPIC, body.clone())).await {
            Ok(r) if r.status == SendStatus::SendOk => break (r.queue.queue_id, r.queue_offset),
            Ok(r) => panic!("unexpected probe send status {:?}", r.status),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "restarted broker accepts no send: {e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let send = spawned.elapsed();
    producer.shutdown().await;
    let (consumer, queues) = checker(namesrv).await;
    let want = BTreeMap::from([(pos, body.clone())]);
    let from = BTreeMap::from([(pos.0, pos.1)]);
    let seen = read_from(&consumer, &queues, Some(&from), &want, false).await;
    consumer.shutdown().await;
    assert_eq!(
        seen.get(&pos),
        Some(&body),
        "restarted broker does not serve the probe it acknowledged"
    );
    let serving = spawned.elapsed();
    (
        Recovery {
            listening,
            send,
            serving,
        },
        pos,
        body,
    )
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn start(dir: &Path, flags: &[&str]) -> (support::Standalone, Instant, Duration) {
    let spawned = Instant::now();
    let s = support::start_standalone_in(dir, flags);
    (s, spawned, spawned.elapsed())
}

fn crash_rounds(flush: &str) {
    let settings = Settings::from_env();
    let mut jitter = Jitter(settings.seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = store_flags(flush);
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();

    let mut acked: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let mut lost: BTreeSet<String> = BTreeSet::new();
    let deliveries: Deliveries = Arc::default();
    let mut recoveries: Vec<Recovery> = Vec::new();
    let (mut broker, _, _) = start(dir.path(), &flag_refs);

    for round in 0..settings.rounds {
        let namesrv = broker.namesrv.to_string();
        let round_acked: Acked = Arc::default();
        let producers: Vec<_> = (0..settings.producers)
            .map(|id| {
                rt.spawn(produce_until_killed(
                    namesrv.clone(),
                    round,
                    id,
                    settings.rate,
                    Arc::clone(&round_acked),
                ))
            })
            .collect();
        let consumers = rt.block_on(start_consumers(&namesrv, settings.consumers, &deliveries));

        // Let the load get going, then kill the broker mid-stream (in long
        // runs at a random point up to half as late again).
        let late = if settings.rounds > 1 {
            (jitter.next() % 1001) as f64 / 2000.0
        } else {
            0.0
        };
        let target = settings.acks + (settings.acks as f64 * late) as usize;
        let min_load = Duration::from_millis(settings.load_ms).mul_f64(1.0 + late);
        let load_start = Instant::now();
        let deadline = load_start + min_load + Duration::from_secs(60);
        while round_acked.lock().len() < target || load_start.elapsed() < min_load {
            assert!(
                Instant::now() < deadline,
                "producers made no progress (round {round})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        broker.child.kill().expect("kill -9");
        let _ = broker.child.wait();
        for p in producers {
            rt.block_on(p).expect("producer task");
        }
        rt.block_on(stop_consumers(consumers));
        let round_acked = std::mem::take(&mut *round_acked.lock());
        assert!(round_acked.len() >= target);

        // An acknowledged position taken again by a later send means the
        // earlier message is gone.
        for (pos, body) in &round_acked {
            if let Some(old) = acked.insert(*pos, body.clone()) {
                eprintln!("round {round}: {pos:?} acknowledged for {old}, then for {body}");
                lost.insert(old);
            }
        }

        // Restart on the same data folder, time it, check this round.
        drop(broker);
        let (next, spawned, listening) = start(dir.path(), &flag_refs);
        broker = next;
        let namesrv = broker.namesrv.to_string();
        let (recovery, probe_pos, probe_body) =
            rt.block_on(probe_until_serving(&namesrv, spawned, listening, round));
        if let Some(old) = acked.insert(probe_pos, probe_body) {
            eprintln!(
                "round {round}: the probe was acknowledged at {probe_pos:?}, the place of {old}"
            );
            lost.insert(old);
        }
        let mut from: BTreeMap<i32, i64> = BTreeMap::new();
        for (q, o) in round_acked.keys() {
            let e = from.entry(*q).or_insert(*o);
            *e = (*e).min(*o);
        }
        let seen = rt.block_on(async {
            let (consumer, queues) = checker(&namesrv).await;
            let seen = read_from(&consumer, &queues, Some(&from), &round_acked, false).await;
            consumer.shutdown().await;
            seen
        });
        let missing = missing_of(&round_acked, &seen);
        println!(
            "round {round} {flush}: acked {} (total {}), missing {}, recovery: listening {} ms, send {} ms, serving {} ms, elapsed {:.0} s",
            round_acked.len(),
            acked.len(),
            missing.len(),
            recovery.listening.as_millis(),
            recovery.send.as_millis(),
            recovery.serving.as_millis(),
            started.elapsed().as_secs_f64(),
        );
        lost.extend(missing);
        recoveries.push(recovery);
    }

    // Every round again, from offset 0.
    let namesrv = broker.namesrv.to_string();
    let seen = rt.block_on(async {
        let (consumer, queues) = checker(&namesrv).await;
        let seen = read_from(&consumer, &queues, None, &acked, true).await;
        consumer.shutdown().await;
        seen
    });
    lost.extend(missing_of(&acked, &seen));
    let mut positions: HashMap<&str, u32> = HashMap::new();
    for body in seen.values() {
        *positions.entry(body.as_str()).or_insert(0) += 1;
    }
    let stored_twice = positions.values().filter(|n| **n > 1).count();

    // The consumer group drains to the end: it must get every acknowledged
    // message (probes included) at least once.
    let never_delivered = rt.block_on(async {
        let consumers = start_consumers(&namesrv, settings.consumers, &deliveries).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let missing = || {
            let d = deliveries.lock();
            acked.values().filter(|b| !d.contains_key(*b)).count()
        };
        while missing() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stop_consumers(consumers).await;
        missing()
    });
    let (delivered_twice, redeliveries) = {
        let d = deliveries.lock();
        (
            d.values().filter(|n| **n > 1).count(),
            d.values()
                .map(|n| u64::from(n.saturating_sub(1)))
                .sum::<u64>(),
        )
    };

    let mut listening: Vec<Duration> = recoveries.iter().map(|r| r.listening).collect();
    let mut send: Vec<Duration> = recoveries.iter().map(|r| r.send).collect();
    let mut serving: Vec<Duration> = recoveries.iter().map(|r| r.serving).collect();
    listening.sort_unstable();
    send.sort_unstable();
    serving.sort_unstable();
    println!(
        "CRASH_SUMMARY flush={flush} rounds={} producers={} consumers={} acks={} load_ms={} rate={} seed={} acked={} \
         acked_lost={} never_delivered={} stored_twice={} delivered_twice={} redeliveries={} \
         listening_ms_p50={:.0} listening_ms_max={:.0} send_ms_p50={:.0} send_ms_max={:.0} \
         recovery_ms_p50={:.0} recovery_ms_max={:.0} elapsed_s={:.0}",
        settings.rounds,
        settings.producers,
        settings.consumers,
        settings.acks,
        settings.load_ms,
        settings.rate,
        settings.seed,
        acked.len(),
        lost.len(),
        never_delivered,
        stored_twice,
        delivered_twice,
        redeliveries,
        percentile(&listening, 0.5),
        percentile(&listening, 1.0),
        percentile(&send, 0.5),
        percentile(&send, 1.0),
        percentile(&serving, 0.5),
        percentile(&serving, 1.0),
        started.elapsed().as_secs_f64(),
    );

    assert!(
        lost.is_empty(),
        "{} of {} acknowledged messages are missing after kill -9 ({flush}), e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(
        never_delivered, 0,
        "{never_delivered} acknowledged messages never reached the consumer group ({flush})"
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
    crash_rounds("ASYNC_FLUSH");
}

#[test]
fn acknowledged_messages_survive_kill_9_sync_flush() {
    crash_rounds("SYNC_FLUSH");
}
