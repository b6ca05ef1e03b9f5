//! Consumer groups against a RocketMQ client we did not write: the published
//! `rocketmq-client-rust` push consumers on `apogee standalone` share a
//! topic's queues in clustering mode (also while members join and leave),
//! all receive everything in broadcasting mode, resume from the offsets
//! committed before a broker restart (SIGTERM and kill -9), and consume from
//! a cluster of `apogee namesrv` + two `apogee broker` processes.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apogee_protocol::body::fastjson;
use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    ClientConfig, ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext,
    ConsumeConcurrentlyStatus, DefaultMQAdminExt, DefaultMQProducer, DefaultMQPushConsumer,
    MQPushConsumer, MessageListenerConcurrently, MessageQueueListener, SendStatus, TopicAdmin,
};
use rocketmq_model::common::config::TopicConfig;
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_observability::TelemetryRuntimeGuard;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};

/// The client runtime every test drives its producers and consumers on.
struct Client {
    owner: RuntimeOwner,
    rt: Arc<ClientRuntime>,
    _telemetry: TelemetryRuntimeGuard,
}

impl Client {
    fn new(name: &'static str) -> Client {
        // The client runs every listener call as a task in its runtime's
        // metadata-io lane, sized from the CPU count (16 queued tasks on 2
        // cores). A burst beyond that is refused and the client then sends
        // the message back (clustering) or drops it (broadcasting). Java's
        // consumer queues without bound; a deep queue does the same here.
        let mut config = RuntimeConfig::default();
        let lane = &mut config.blocking_lane_policies.metadata_io;
        lane.max_queue_depth = 65_536;
        lane.queue_timeout = Duration::from_secs(60);
        let owner = RuntimeOwner::plan(config)
            .expect("runtime config")
            .build()
            .expect("runtime owner");
        let telemetry = TelemetryRuntimeGuard::noop();
        let rt = ClientRuntime::try_new(
            owner.root_context().component(name),
            ClientRuntimeConfig::default(),
            telemetry.handle(),
        )
        .expect("client runtime");
        Client {
            owner,
            rt,
            _telemetry: telemetry,
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.owner.block_on(f)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.owner.block_on(self.rt.shutdown());
    }
}

/// One delivery as a group member saw it.
#[derive(Debug, Clone)]
struct Delivery {
    member: String,
    body: String,
    uniq: Option<String>,
    queue: i32,
    offset: i64,
    reconsume: i32,
    store_port: u16,
}

/// Deliveries of every member of a group, in arrival order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Delivery>>>);

impl Log {
    fn snapshot(&self) -> Vec<Delivery> {
        self.0.lock().expect("log lock").clone()
    }

    /// How often each body was delivered (any member).
    fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for d in self.0.lock().expect("log lock").iter() {
            *m.entry(d.body.clone()).or_insert(0) += 1;
        }
        m
    }

    fn of(&self, member: &str) -> Vec<Delivery> {
        self.snapshot()
            .into_iter()
            .filter(|d| d.member == member)
            .collect()
    }
}

/// Every delivery was a first attempt: our listeners never fail, so a
/// retried message means the client sent it back on its own (see
/// [`Client::new`]) and the checks that follow would be about the retry
/// topic instead of the broker's queues.
fn assert_first_attempts(log: &Log) {
    let retried: Vec<Delivery> = log
        .snapshot()
        .into_iter()
        .filter(|d| d.reconsume != 0)
        .collect();
    assert!(
        retried.is_empty(),
        "deliveries from the retry topic: {retried:?}"
    );
}

/// A listener that logs under its member's name and always succeeds.
struct Collector {
    member: String,
    log: Log,
}

impl MessageListenerConcurrently for Collector {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeConcurrentlyStatus> {
        let mut log = self.log.0.lock().expect("log lock");
        for m in msgs {
            let body = m
                .body()
                .map(|b| String::from_utf8_lossy(&b[..]).into_owned())
                .unwrap_or_default();
            log.push(Delivery {
                member: self.member.clone(),
                body,
                uniq: m
                    .properties()
                    .get(&CheetahString::from("UNIQ_KEY"))
                    .map(|v| v.to_string()),
                queue: m.queue_id(),
                offset: m.queue_offset(),
                reconsume: m.reconsume_times(),
                store_port: m.store_host().port(),
            });
        }
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

/// Queues as (broker name, queue id).
type QueueSet = BTreeSet<(String, i32)>;

/// The queues of one topic currently assigned to a member (from the
/// client's rebalance callback).
#[derive(Clone)]
struct Assignment {
    topic: String,
    queues: Arc<Mutex<Option<QueueSet>>>,
}

impl Assignment {
    fn new(topic: &str) -> Assignment {
        Assignment {
            topic: topic.to_string(),
            queues: Arc::new(Mutex::new(None)),
        }
    }

    fn get(&self) -> QueueSet {
        self.queues
            .lock()
            .expect("assignment lock")
            .clone()
            .unwrap_or_default()
    }
}

impl MessageQueueListener for Assignment {
    fn message_queue_changed(
        &self,
        topic: &str,
        _mq_all: &HashSet<MessageQueue>,
        mq_assigned: &HashSet<MessageQueue>,
    ) {
        // The client also rebalances the group's %RETRY% topic: ignore it.
        if topic != self.topic {
            return;
        }
        let set = mq_assigned
            .iter()
            .map(|mq| (mq.broker_name().to_string(), mq.queue_id()))
            .collect();
        *self.queues.lock().expect("assignment lock") = Some(set);
    }
}

/// True when the members' assignments are non-empty, pairwise disjoint and
/// together cover exactly `total` queues.
fn partitioned(members: &[&Assignment], total: usize) -> bool {
    let sets: Vec<_> = members.iter().map(|a| a.get()).collect();
    let union: BTreeSet<_> = sets.iter().flatten().cloned().collect();
    sets.iter().all(|s| !s.is_empty())
        && sets.iter().map(BTreeSet::len).sum::<usize>() == total
        && union.len() == total
}

/// A push consumer of `group` with its own client instance (two members of
/// one group in one process need distinct client ids).
fn push_consumer(
    c: &Client,
    ns: &str,
    group: &str,
    instance: &str,
    broadcasting: bool,
    assignment: Option<&Assignment>,
) -> DefaultMQPushConsumer {
    let mut cfg = ClientConfig::new();
    cfg.set_instance_name(instance.into());
    // The client's MessageModel lives in rocketmq-protocol, which this crate
    // does not depend on; its serde form names the variant.
    let model = if broadcasting {
        "\"BROADCASTING\""
    } else {
        "\"CLUSTERING\""
    };
    let mut b = DefaultMQPushConsumer::builder(c.rt.clone())
        .client_config(cfg)
        .name_server_addr(ns.to_string())
        .consumer_group(group.to_string())
        .message_model(serde_json::from_str(model).expect("message model"))
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset);
    if let Some(a) = assignment {
        b = b.message_queue_listener(Some(Arc::new(a.clone())));
    }
    b.build()
}

async fn start_member(consumer: &mut DefaultMQPushConsumer, topic: &str, member: &str, log: &Log) {
    consumer.subscribe(topic, "*").await.expect("subscribe");
    consumer.register_message_listener_concurrently(Collector {
        member: member.to_string(),
        log: log.clone(),
    });
    consumer.start().await.expect("consumer start");
}

async fn start_producer(c: &Client, ns: &str, group: &str) -> DefaultMQProducer {
    let mut p = DefaultMQProducer::builder(c.rt.clone())
        .producer_group(group.to_string())
        .name_server_addr(ns.to_string())
        .build();
    p.start().await.expect("producer start");
    p
}

/// What a sync send reported.
#[derive(Debug, Clone)]
struct Sent {
    uniq: String,
    broker: String,
    queue: i32,
    offset: u64,
}

async fn send(p: &DefaultMQProducer, topic: &str, body: &str) -> Sent {
    let m = Message::builder()
        .topic(topic)
        .tags("TagA")
        .body_slice(body.as_bytes())
        .build_unchecked();
    let r = p
        .send_with_timeout(m, 10_000)
        .await
        .expect("send")
        .expect("send result");
    assert_eq!(r.send_status, SendStatus::SendOk, "{body}: {r:?}");
    let mq = r.message_queue.as_ref().expect("queue in the send result");
    assert_eq!(mq.topic().as_str(), topic);
    Sent {
        uniq: r.msg_id.as_ref().expect("msgId").to_string(),
        broker: mq.broker_name().to_string(),
        queue: mq.queue_id(),
        offset: r.queue_offset,
    }
}

/// Polls `cond` every 100 ms until it holds; panics with `what()` after
/// `secs` seconds.
async fn wait_until(secs: u64, mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {}", what());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_admin(c: &Client, ns: &str) -> DefaultMQAdminExt {
    let mut admin = DefaultMQAdminExt::new(c.rt.clone());
    admin.set_namesrv_addr(ns);
    admin.start().await.expect("admin start");
    admin
}

/// Creates `topic` with `queues` read/write queues on every broker address
/// and waits until the NameServer routes it to every one of them (a
/// producer that asked earlier would fall back to TBW102's route).
async fn create_topic(admin: &DefaultMQAdminExt, brokers: &[String], topic: &str, queues: u32) {
    for b in brokers {
        let mut cfg = TopicConfig::new(topic);
        cfg.read_queue_nums = queues;
        cfg.write_queue_nums = queues;
        cfg.perm = 6;
        TopicAdmin::create_and_update_topic_config(admin, CheetahString::from(b.as_str()), cfg)
            .await
            .expect("create topic");
    }
    wait_route(admin, topic, brokers.len(), queues).await;
}

/// Waits until `topic`'s route names `brokers` brokers with `queues` write
/// queues each; returns the broker names.
async fn wait_route(
    admin: &DefaultMQAdminExt,
    topic: &str,
    brokers: usize,
    queues: u32,
) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let route = TopicAdmin::examine_topic_route_info(admin, CheetahString::from(topic)).await;
        if let Ok(Some(r)) = &route {
            let names: BTreeSet<String> = r
                .queue_datas
                .iter()
                .filter(|q| q.write_queue_nums == queues && q.read_queue_nums == queues)
                .map(|q| q.broker_name.to_string())
                .collect();
            if names.len() == brokers && r.broker_datas.len() == brokers {
                return names;
            }
        }
        assert!(
            Instant::now() < deadline,
            "route of {topic} never showed {brokers} brokers with {queues} queues: {route:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A name unique to this test run, so reruns never see old state.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{nanos}", std::process::id())
}

#[test]
fn clustering_members_share_queues_and_lose_nothing_when_members_join_and_leave() {
    const TOPIC: &str = "GroupsClusterTopic";
    const FIRST: usize = 80;
    let sa = support::start_standalone(&[]);
    let ns = sa.namesrv.to_string();
    let c = Client::new("groups-clustering");
    let group = unique("GroupsClustering");

    c.block_on(async {
        let admin = start_admin(&c, &ns).await;
        create_topic(&admin, &[sa.broker.to_string()], TOPIC, 8).await;

        // Two members; wait until they split the 8 queues between them.
        let log = Log::default();
        let (asg_a, asg_b, asg_c) = (
            Assignment::new(TOPIC),
            Assignment::new(TOPIC),
            Assignment::new(TOPIC),
        );
        let mut a = push_consumer(&c, &ns, &group, &unique("A"), false, Some(&asg_a));
        start_member(&mut a, TOPIC, "A", &log).await;
        let mut b = push_consumer(&c, &ns, &group, &unique("B"), false, Some(&asg_b));
        start_member(&mut b, TOPIC, "B", &log).await;
        wait_until(
            30,
            || partitioned(&[&asg_a, &asg_b], 8),
            || {
                format!(
                    "A {:?} and B {:?} never split 8 queues",
                    asg_a.get(),
                    asg_b.get()
                )
            },
        )
        .await;
        let (queues_a, queues_b) = (asg_a.get(), asg_b.get());

        // Steady state: every message exactly once, by the member that owns
        // its queue; both members get work.
        let producer = start_producer(&c, &ns, &unique("GroupsClusterProducer")).await;
        let mut sent: BTreeMap<String, Sent> = BTreeMap::new();
        for i in 0..FIRST {
            let body = format!("first-{i}");
            let s = send(&producer, TOPIC, &body).await;
            sent.insert(body, s);
        }
        let used: BTreeSet<i32> = sent.values().map(|s| s.queue).collect();
        assert_eq!(used.len(), 8, "the producer spreads over all 8 queues");
        wait_until(
            30,
            || log.counts().len() >= FIRST,
            || format!("group got {}/{FIRST}", log.counts().len()),
        )
        .await;
        // Give duplicates a chance to show up before judging.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_first_attempts(&log);
        let counts = log.counts();
        assert_eq!(counts.len(), FIRST, "nothing but what was sent");
        for (body, s) in &sent {
            assert_eq!(counts.get(body), Some(&1), "{body} delivered to the group");
            let d = log
                .snapshot()
                .into_iter()
                .find(|d| &d.body == body)
                .expect("delivery");
            assert_eq!(d.uniq.as_deref(), Some(s.uniq.as_str()), "{body} unique id");
            assert_eq!(
                (d.queue, d.offset),
                (s.queue, s.offset as i64),
                "{body} (queue, offset): delivered {d:?}, sent {s:?}"
            );
            let owner = if d.member == "A" {
                &queues_a
            } else {
                &queues_b
            };
            assert!(
                owner.iter().any(|(_, q)| *q == d.queue),
                "{body} on queue {} went to {} which owns {owner:?}",
                d.queue,
                d.member
            );
        }
        let (got_a, got_b) = (log.of("A").len(), log.of("B").len());
        assert!(got_a > 0 && got_b > 0, "A got {got_a}, B got {got_b}");
        assert_eq!(got_a + got_b, FIRST);
        assert_eq!(
            asg_a.get(),
            queues_a,
            "no rebalance without membership change"
        );
        assert_eq!(
            asg_b.get(),
            queues_b,
            "no rebalance without membership change"
        );

        // Membership changes while a producer keeps sending: C joins, then
        // A leaves. Nothing may be lost; duplicates are counted.
        let stop = AtomicBool::new(false);
        let producing = async {
            let mut sent = BTreeMap::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let body = format!("churn-{i}");
                let s = send(&producer, TOPIC, &body).await;
                sent.insert(body, s);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        };
        let churn = async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mut cc = push_consumer(&c, &ns, &group, &unique("C"), false, Some(&asg_c));
            start_member(&mut cc, TOPIC, "C", &log).await;
            wait_until(
                30,
                || partitioned(&[&asg_a, &asg_b, &asg_c], 8),
                || {
                    format!(
                        "A {:?}, B {:?}, C {:?} never split 8 queues",
                        asg_a.get(),
                        asg_b.get(),
                        asg_c.get()
                    )
                },
            )
            .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            a.shutdown().await;
            wait_until(
                30,
                || partitioned(&[&asg_b, &asg_c], 8),
                || format!("B {:?}, C {:?} never took over", asg_b.get(), asg_c.get()),
            )
            .await;
            let a_stopped_at = log.of("A").len();
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.store(true, Ordering::SeqCst);
            (cc, a_stopped_at)
        };
        let (churn_sent, (mut cc, a_stopped_at)) = tokio::join!(producing, churn);
        assert!(
            churn_sent.len() > 50,
            "sent {} during churn",
            churn_sent.len()
        );

        wait_until(
            30,
            || {
                let counts = log.counts();
                churn_sent.keys().all(|b| counts.contains_key(b))
            },
            || {
                let counts = log.counts();
                let missing: Vec<_> = churn_sent
                    .keys()
                    .filter(|b| !counts.contains_key(*b))
                    .collect();
                format!(
                    "lost during churn: {} e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(10)]
                )
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        b.shutdown().await;
        cc.shutdown().await;
        producer_shutdown(producer).await;
        admin_shutdown(admin).await;

        assert_first_attempts(&log);
        let all = log.snapshot();
        assert_eq!(
            log.of("A").len(),
            a_stopped_at,
            "A consumed after its shutdown"
        );
        let churn: Vec<&Delivery> = all
            .iter()
            .filter(|d| d.body.starts_with("churn-"))
            .collect();
        assert!(
            churn.iter().all(|d| churn_sent.contains_key(&d.body)),
            "a delivery that was never sent"
        );
        let got_c = churn.iter().filter(|d| d.member == "C").count();
        assert!(got_c > 0, "the joining member C got no work");
        // A queue "moved" when more than one member consumed from it.
        let mut members_of_queue: HashMap<i32, BTreeSet<&str>> = HashMap::new();
        for d in &churn {
            members_of_queue
                .entry(d.queue)
                .or_default()
                .insert(d.member.as_str());
        }
        let mut per_body: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
        for d in &churn {
            per_body.entry(d.body.as_str()).or_default().push(d);
        }
        let dups: Vec<_> = per_body.iter().filter(|(_, ds)| ds.len() > 1).collect();
        let extra: usize = dups.iter().map(|(_, ds)| ds.len() - 1).sum();
        println!(
            "churn: sent {}, delivered {}, duplicated messages {} ({} extra deliveries), \
             first-phase duplicates {}; moved queues {:?}",
            churn_sent.len(),
            churn.len(),
            dups.len(),
            extra,
            all.iter().filter(|d| d.body.starts_with("first-")).count() - FIRST,
            members_of_queue
                .iter()
                .filter(|(_, m)| m.len() > 1)
                .map(|(q, m)| (*q, m.clone()))
                .collect::<BTreeMap<_, _>>()
        );
        for (body, ds) in &dups {
            let q = ds[0].queue;
            assert!(
                members_of_queue.get(&q).is_some_and(|m| m.len() > 1),
                "{body} delivered {} times on queue {q}, which never changed owner: {ds:?}",
                ds.len()
            );
        }
        // The first phase's messages were not redelivered by the churn.
        assert_eq!(
            all.iter().filter(|d| d.body.starts_with("first-")).count(),
            FIRST,
            "messages consumed before the churn were delivered again"
        );
    });
    drop(c);
    drop(sa);
}

async fn producer_shutdown(mut p: DefaultMQProducer) {
    p.shutdown().await;
}

async fn admin_shutdown(mut a: DefaultMQAdminExt) {
    a.shutdown().await;
}

/// Removes the broadcasting consumers' local offset files (the client keeps
/// them in `~/.rocketmq_offsets/<clientIp>@<instance>/`) when dropped.
struct LocalOffsets(Vec<String>);

impl Drop for LocalOffsets {
    fn drop(&mut self) {
        let root = std::env::var("rocketmq.client.localOffsetStoreDir")
            .map(PathBuf::from)
            .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".rocketmq_offsets")))
            .unwrap_or_else(|_| PathBuf::from("/tmp/.rocketmq_offsets"));
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if self.0.iter().any(|i| name.ends_with(&format!("@{i}"))) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[test]
fn broadcasting_members_each_receive_every_message() {
    const TOPIC: &str = "GroupsBroadcastTopic";
    const BEFORE: usize = 20;
    const AFTER: usize = 20;
    let sa = support::start_standalone(&[]);
    let ns = sa.namesrv.to_string();
    let c = Client::new("groups-broadcast");
    let group = unique("GroupsBroadcast");
    let (inst_a, inst_b) = (unique("BcA"), unique("BcB"));
    let _cleanup = LocalOffsets(vec![inst_a.clone(), inst_b.clone()]);

    c.block_on(async {
        let admin = start_admin(&c, &ns).await;
        create_topic(&admin, &[sa.broker.to_string()], TOPIC, 4).await;
        let producer = start_producer(&c, &ns, &unique("GroupsBroadcastProducer")).await;
        let mut sent = BTreeMap::new();
        for i in 0..BEFORE {
            let body = format!("before-{i}");
            sent.insert(body.clone(), send(&producer, TOPIC, &body).await);
        }

        // Both members of one group; in broadcasting each owns every queue.
        let log = Log::default();
        let (asg_a, asg_b) = (Assignment::new(TOPIC), Assignment::new(TOPIC));
        let mut a = push_consumer(&c, &ns, &group, &inst_a, true, Some(&asg_a));
        start_member(&mut a, TOPIC, "A", &log).await;
        let mut b = push_consumer(&c, &ns, &group, &inst_b, true, Some(&asg_b));
        start_member(&mut b, TOPIC, "B", &log).await;
        wait_until(
            30,
            || asg_a.get().len() == 4 && asg_b.get().len() == 4,
            || format!("A {:?}, B {:?}: not all queues", asg_a.get(), asg_b.get()),
        )
        .await;
        for i in 0..AFTER {
            let body = format!("after-{i}");
            sent.insert(body.clone(), send(&producer, TOPIC, &body).await);
        }

        let all = BEFORE + AFTER;
        let distinct = |m: &str| {
            log.of(m)
                .into_iter()
                .map(|d| d.body)
                .collect::<BTreeSet<_>>()
                .len()
        };
        wait_until(
            30,
            || distinct("A") >= all && distinct("B") >= all,
            || {
                format!(
                    "A got {}/{all}, B got {}/{all}",
                    distinct("A"),
                    distinct("B")
                )
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.shutdown().await;
        b.shutdown().await;
        producer_shutdown(producer).await;
        admin_shutdown(admin).await;

        assert_first_attempts(&log);
        for member in ["A", "B"] {
            let got = log.of(member);
            assert_eq!(got.len(), all, "{member}: every message once, nothing else");
            let bodies: BTreeSet<&str> = got.iter().map(|d| d.body.as_str()).collect();
            assert_eq!(bodies.len(), all, "{member} got a message twice");
            for d in &got {
                let s = sent
                    .get(&d.body)
                    .unwrap_or_else(|| panic!("{member} got {} which was never sent", d.body));
                assert_eq!(d.uniq.as_deref(), Some(s.uniq.as_str()), "{}", d.body);
                assert_eq!(
                    (d.queue, d.offset),
                    (s.queue, s.offset as i64),
                    "{d:?} {s:?}"
                );
            }
        }
    });
    drop(c);
    drop(sa);
}

/// `topic@group`'s per-queue offsets in the broker's
/// `config/consumerOffset.json` (fastjson layout), if the file is there.
fn persisted_offsets(data_dir: &Path, topic: &str, group: &str) -> Option<BTreeMap<i32, i64>> {
    let raw = std::fs::read(data_dir.join("config").join("consumerOffset.json")).ok()?;
    let json = fastjson::to_standard_json(&raw).expect("consumerOffset.json is fastjson");
    let v: serde_json::Value = serde_json::from_slice(&json).expect("standard json");
    let table = v.get("offsetTable")?.get(format!("{topic}@{group}"))?;
    Some(
        table
            .as_object()?
            .iter()
            .map(|(q, o)| {
                (
                    q.parse::<i32>().expect("queue id key"),
                    o.as_i64().expect("offset"),
                )
            })
            .collect(),
    )
}

/// How many of `sent` went to each queue (= each queue's next offset on a
/// fresh topic).
fn per_queue(sent: &BTreeMap<String, Sent>) -> BTreeMap<i32, i64> {
    let mut m = BTreeMap::new();
    for s in sent.values() {
        *m.entry(s.queue).or_insert(0) += 1;
    }
    m
}

/// A group consumes N messages and commits; the standalone stops (SIGTERM,
/// or kill -9 once the offsets are on disk) and restarts on the same data
/// folder; a new instance of the group gets the M new messages and none of
/// the N.
fn offsets_survive_restart(kill9: bool) {
    const TOPIC: &str = "GroupsRestartTopic";
    const N: usize = 40;
    const M: usize = 20;
    let tmp = tempfile::tempdir().expect("temp dir");
    let flags = ["--set", "flushConsumerOffsetInterval=500"];
    let mut sa = support::start_standalone_in(tmp.path(), &flags);
    let data_dir = sa.data_dir();
    let c = Client::new("groups-restart");
    let group = unique("GroupsRestart");

    let first: BTreeMap<String, Sent> = c.block_on(async {
        let ns = sa.namesrv.to_string();
        let admin = start_admin(&c, &ns).await;
        create_topic(&admin, &[sa.broker.to_string()], TOPIC, 4).await;
        let producer = start_producer(&c, &ns, &unique("GroupsRestartProducer")).await;
        let mut sent = BTreeMap::new();
        for i in 0..N {
            let body = format!("before-{i}");
            sent.insert(body.clone(), send(&producer, TOPIC, &body).await);
        }
        producer_shutdown(producer).await;

        let log = Log::default();
        let mut consumer = push_consumer(&c, &ns, &group, &unique("R1"), false, None);
        start_member(&mut consumer, TOPIC, "R1", &log).await;
        wait_until(
            30,
            || log.counts().len() >= N,
            || format!("consumed {}/{N}", log.counts().len()),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Graceful shutdown commits the consumed offsets to the broker.
        consumer.shutdown().await;
        assert_first_attempts(&log);
        let counts = log.counts();
        assert_eq!(counts.len(), N);
        assert!(
            counts.values().all(|&n| n == 1),
            "a message twice: {counts:?}"
        );

        // The broker holds the commits (what the admin reads is its table).
        let broker = CheetahString::from(sa.broker.to_string());
        let want = per_queue(&sent);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stats = rocketmq_client_rust::ConsumerAdmin::examine_consume_stats(
                &admin,
                group.as_str().into(),
                None,
                None,
                Some(broker.clone()),
                None,
            )
            .await;
            let committed: BTreeMap<i32, i64> = stats
                .map(|s| {
                    s.get_offset_table()
                        .iter()
                        .filter(|(mq, _)| mq.topic().as_str() == TOPIC)
                        .map(|(mq, o)| (mq.queue_id(), o.get_consumer_offset()))
                        .collect()
                })
                .unwrap_or_default();
            if committed == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "broker never held the commits {want:?}: {committed:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        admin_shutdown(admin).await;
        sent
    });
    let want = per_queue(&first);

    if kill9 {
        // The periodic flush (500 ms here) writes the offsets; crash after.
        let deadline = Instant::now() + Duration::from_secs(20);
        while persisted_offsets(&data_dir, TOPIC, &group).as_ref() != Some(&want) {
            assert!(
                Instant::now() < deadline,
                "offsets never reached disk: {:?}",
                persisted_offsets(&data_dir, TOPIC, &group)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        sa.child.kill().expect("kill -9");
        let status = sa.child.wait().expect("wait");
        assert!(!status.success(), "killed: {status:?}");
    } else {
        let status = sa.terminate();
        assert!(status.success(), "SIGTERM exit: {status:?}");
        assert_eq!(
            persisted_offsets(&data_dir, TOPIC, &group).as_ref(),
            Some(&want),
            "offsets on disk after a clean stop"
        );
    }
    drop(sa);

    let sa = support::start_standalone_in(tmp.path(), &flags);
    let ns = sa.namesrv.to_string();
    let log = Log::default();
    let after: BTreeMap<String, Sent> = c.block_on(async {
        let admin = start_admin(&c, &ns).await;
        // The restarted broker registers the topic it reloaded.
        wait_route(&admin, TOPIC, 1, 4).await;
        let producer = start_producer(&c, &ns, &unique("GroupsRestartProducer")).await;
        let mut sent = BTreeMap::new();
        for i in 0..M {
            let body = format!("after-{i}");
            sent.insert(body.clone(), send(&producer, TOPIC, &body).await);
        }
        producer_shutdown(producer).await;

        let mut consumer = push_consumer(&c, &ns, &group, &unique("R2"), false, None);
        start_member(&mut consumer, TOPIC, "R2", &log).await;
        wait_until(
            30,
            || sent.keys().all(|b| log.counts().contains_key(b)),
            || {
                format!(
                    "resumed consumer got {:?}",
                    log.counts().keys().collect::<Vec<_>>()
                )
            },
        )
        .await;
        // Anything from before the restart would arrive with the rest.
        tokio::time::sleep(Duration::from_secs(2)).await;
        consumer.shutdown().await;
        admin_shutdown(admin).await;
        sent
    });
    assert_first_attempts(&log);
    let got = log.snapshot();
    let redelivered: Vec<&str> = got
        .iter()
        .filter(|d| first.contains_key(&d.body))
        .map(|d| d.body.as_str())
        .collect();
    println!(
        "restart ({}): {} new delivered, {} of the first {N} redelivered",
        if kill9 { "kill -9" } else { "SIGTERM" },
        got.len() - redelivered.len(),
        redelivered.len()
    );
    // The offsets were on disk before the stop, so nothing comes back.
    assert!(
        redelivered.is_empty(),
        "consumed before the restart, delivered again: {redelivered:?}"
    );
    assert_eq!(got.len(), M, "each new message once: {got:?}");
    for d in &got {
        let s = after.get(&d.body).expect("sent after the restart");
        assert_eq!(d.uniq.as_deref(), Some(s.uniq.as_str()), "{}", d.body);
    }
    drop(c);
    drop(sa);
}

#[test]
fn committed_offsets_survive_a_sigterm_restart() {
    offsets_survive_restart(false);
}

#[test]
fn committed_offsets_survive_a_kill9_after_the_broker_persisted_them() {
    offsets_survive_restart(true);
}

#[test]
fn two_broker_cluster_spreads_sends_and_one_consumer_gets_all() {
    const TOPIC: &str = "GroupsTwoBrokerTopic";
    const COUNT: usize = 40;
    let ns = support::start_namesrv(&[]);
    let ns_addr = ns.addr.to_string();
    let broker = |name: &str| {
        let name = format!("brokerName={name}");
        support::start_broker(
            &ns_addr,
            &[
                "--set",
                "brokerClusterName=ApogeeGroupsCluster",
                "--set",
                &name,
            ],
        )
    };
    let (ba, bb) = (broker("apogee-a"), broker("apogee-b"));
    let port_of: HashMap<&str, u16> = [("apogee-a", ba.addr.port()), ("apogee-b", bb.addr.port())]
        .into_iter()
        .collect();
    let c = Client::new("groups-two-brokers");
    let group = unique("GroupsTwoBrokers");

    c.block_on(async {
        let admin = start_admin(&c, &ns_addr).await;
        create_topic(
            &admin,
            &[ba.addr.to_string(), bb.addr.to_string()],
            TOPIC,
            4,
        )
        .await;
        let names = wait_route(&admin, TOPIC, 2, 4).await;
        assert_eq!(
            names,
            ["apogee-a", "apogee-b"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        let info = rocketmq_client_rust::RouteAdmin::examine_broker_cluster_info(&admin)
            .await
            .expect("cluster info");
        let members = info
            .cluster_addr_table
            .expect("clusterAddrTable")
            .get(&CheetahString::from("ApogeeGroupsCluster"))
            .cloned()
            .expect("our cluster");
        assert!(members.contains(&CheetahString::from("apogee-a")));
        assert!(members.contains(&CheetahString::from("apogee-b")));

        let producer = start_producer(&c, &ns_addr, &unique("GroupsTwoBrokersProducer")).await;
        let mut sent = BTreeMap::new();
        for i in 0..COUNT {
            let body = format!("spread-{i}");
            sent.insert(body.clone(), send(&producer, TOPIC, &body).await);
        }
        producer_shutdown(producer).await;
        let mut per_broker: BTreeMap<&str, usize> = BTreeMap::new();
        for s in sent.values() {
            *per_broker.entry(s.broker.as_str()).or_insert(0) += 1;
        }
        println!("two brokers: sends per broker {per_broker:?}");
        assert_eq!(
            per_broker.len(),
            2,
            "sends reached both brokers: {per_broker:?}"
        );
        assert!(
            per_broker.values().all(|&n| n >= COUNT / 4),
            "{per_broker:?}"
        );

        let log = Log::default();
        let mut consumer = push_consumer(&c, &ns_addr, &group, &unique("T"), false, None);
        start_member(&mut consumer, TOPIC, "T", &log).await;
        wait_until(
            30,
            || log.counts().len() >= COUNT,
            || format!("consumed {}/{COUNT}", log.counts().len()),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        consumer.shutdown().await;
        admin_shutdown(admin).await;

        assert_first_attempts(&log);
        let got = log.snapshot();
        assert_eq!(got.len(), COUNT, "each message once");
        for d in &got {
            let s = sent.get(&d.body).expect("a sent message");
            assert_eq!(d.uniq.as_deref(), Some(s.uniq.as_str()), "{}", d.body);
            assert_eq!(
                (d.queue, d.offset),
                (s.queue, s.offset as i64),
                "{d:?} {s:?}"
            );
            assert_eq!(
                Some(&d.store_port),
                port_of.get(s.broker.as_str()),
                "{} stored by the broker its send result named",
                d.body
            );
        }
    });
    drop(c);
    drop((ba, bb, ns));
}
