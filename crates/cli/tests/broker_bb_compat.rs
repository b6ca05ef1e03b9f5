//! The data path against a RocketMQ client we did not write: the published
//! `rocketmq-client-rust` produces to `apogee standalone` (sync, async,
//! oneway, batch, ordered by key) and consumes with push consumers
//! (clustering, every message exactly once; tag filtering).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus,
    DefaultMQProducer, DefaultMQPushConsumer, MQPushConsumer, MessageListenerConcurrently,
    MessageQueueSelector, SelectMessageQueueByHash, SendResult, SendStatus,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_observability::TelemetryRuntimeGuard;

/// `apogee standalone` on ephemeral loopback ports in a temp folder;
/// killed on drop.
/// What a consumer saw, by body.
#[derive(Debug, Clone)]
struct Seen {
    count: usize,
    tags: Option<String>,
    keys: Option<String>,
    uniq: Option<String>,
    topic: String,
}

#[derive(Clone, Default)]
struct Collector {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
}

impl MessageListenerConcurrently for Collector {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeConcurrentlyStatus> {
        let mut seen = self.seen.lock().expect("collector lock");
        for m in msgs {
            let body = m
                .body()
                .map(|b: bytes::Bytes| String::from_utf8_lossy(&b[..]).into_owned())
                .unwrap_or_default();
            let props = m.properties();
            let prop = |k: &str| props.get(&CheetahString::from(k)).map(|v| v.to_string());
            let e = seen.entry(body).or_insert(Seen {
                count: 0,
                tags: prop("TAGS"),
                keys: prop("KEYS"),
                uniq: prop("UNIQ_KEY"),
                topic: m.topic().to_string(),
            });
            e.count += 1;
        }
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

/// One message we sent: body → (tag, key, unique id from the send result).
#[derive(Debug, Clone)]
struct Sent {
    tag: String,
    key: String,
    uniq: Option<String>,
}

const TOPIC: &str = "BbCompatTopic";
const TAGS: [&str; 3] = ["TagA", "TagB", "TagC"];

fn msg(body: &str, tag: &str, key: &str) -> Message {
    Message::builder()
        .topic(TOPIC)
        .tags(tag)
        .key(key)
        .body_slice(body.as_bytes())
        .build_unchecked()
}

/// Checks a send result and records its offset for a per-queue
/// monotonicity check.
fn check_result(
    r: &SendResult,
    broker: SocketAddr,
    last_offsets: &mut BTreeMap<i32, u64>,
) -> (i32, u64, String) {
    assert_eq!(r.send_status, SendStatus::SendOk, "{r:?}");
    let mq = r
        .message_queue
        .as_ref()
        .expect("message queue in the send result");
    assert_eq!(mq.topic().as_str(), TOPIC);
    let q = mq.queue_id();
    assert!((0..4).contains(&q), "queue {q}");
    let uniq = r.msg_id.as_ref().expect("msgId (UNIQ_KEY)").to_string();
    assert_eq!(uniq.len(), 32, "unique key {uniq}");
    let offset_id = r.offset_msg_id.as_ref().expect("offsetMsgId");
    for id in offset_id.split(',') {
        assert_eq!(id.len(), 32, "offset msg id {id}");
        // IPv4 store host + port: the first 12 hex chars are 127.0.0.1:port.
        let port = u16::from_str_radix(&id[12..16], 16).expect("port hex");
        assert_eq!(&id[..8], "7F000001", "store host of {id}");
        assert_eq!(port, broker.port(), "store port of {id}");
    }
    if let Some(prev) = last_offsets.get(&q) {
        assert!(
            r.queue_offset > *prev,
            "queue {q} offset {} after {prev}",
            r.queue_offset
        );
    }
    last_offsets.insert(q, r.queue_offset);
    (q, r.queue_offset, uniq)
}

#[test]
fn client_produces_every_way_and_push_consumers_receive_each_message_once() {
    let sa = support::start_standalone(&[]);
    let ns = sa.namesrv.to_string();
    let broker = sa.broker;

    let owner = support::rocketmq_runtime_owner();
    let telemetry = TelemetryRuntimeGuard::noop();
    let client_rt = ClientRuntime::try_new(
        owner.root_context().component("bb-compat"),
        ClientRuntimeConfig::default(),
        telemetry.handle(),
    )
    .expect("client runtime");

    let sent: BTreeMap<String, Sent> = owner.block_on(async {
        let mut producer = DefaultMQProducer::builder(client_rt.clone())
            .producer_group("BbCompatProducer".to_string())
            .name_server_addr(ns.clone())
            .build();
        producer.start().await.expect("producer start");
        let mut sent = BTreeMap::new();
        let mut last = BTreeMap::new();

        // Sync: the first send auto-creates the topic from TBW102.
        for i in 0..10 {
            let (body, tag, key) = (format!("sync-{i}"), TAGS[i % 3], format!("ks{i}"));
            let r = producer
                .send_with_timeout(msg(&body, tag, &key), 10_000)
                .await
                .expect("sync send")
                .expect("sync send result");
            let (_, _, uniq) = check_result(&r, broker, &mut last);
            sent.insert(
                body,
                Sent {
                    tag: tag.into(),
                    key,
                    uniq: Some(uniq),
                },
            );
        }

        // Async: results arrive through the callback.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<SendResult, String>>();
        for i in 0..5 {
            let (body, tag, key) = (format!("async-{i}"), TAGS[i % 3], format!("ka{i}"));
            let tx = tx.clone();
            producer
                .send_with_callback(msg(&body, tag, &key), move |r, e| {
                    let _ = tx.send(match (r, e) {
                        (Some(r), _) => Ok(r.clone()),
                        (None, e) => Err(format!("{e:?}")),
                    });
                })
                .await
                .expect("async send accepted");
            sent.insert(
                body,
                Sent {
                    tag: tag.into(),
                    key,
                    uniq: None,
                },
            );
        }
        for _ in 0..5 {
            let r = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("async callback in time")
                .expect("callback channel open")
                .expect("async send succeeded");
            assert_eq!(r.send_status, SendStatus::SendOk);
            assert!(r.offset_msg_id.is_some());
        }

        // Oneway: no result; the consumer proves they were stored.
        for i in 0..5 {
            let (body, tag, key) = (format!("oneway-{i}"), TAGS[i % 3], format!("ko{i}"));
            producer
                .send_oneway(msg(&body, tag, &key))
                .await
                .expect("oneway send");
            sent.insert(
                body,
                Sent {
                    tag: tag.into(),
                    key,
                    uniq: None,
                },
            );
        }

        // Batch: one request, consecutive offsets, one offset id per message.
        let batch: Vec<Message> = (0..3)
            .map(|i| msg(&format!("batch-{i}"), "TagA", &format!("kb{i}")))
            .collect();
        let r = producer.send_batch(batch).await.expect("batch send");
        assert_eq!(r.send_status, SendStatus::SendOk, "{r:?}");
        let ids = r.offset_msg_id.clone().expect("batch offset ids");
        assert_eq!(ids.split(',').count(), 3, "batch offset ids {ids}");
        for i in 0..3 {
            sent.insert(
                format!("batch-{i}"),
                Sent {
                    tag: "TagA".into(),
                    key: format!("kb{i}"),
                    uniq: None,
                },
            );
        }

        // Ordered: the same key always lands on the same queue, in order.
        let selector = SelectMessageQueueByHash;
        let mut queue_of: HashMap<i32, i32> = HashMap::new();
        let mut order_last: BTreeMap<i32, u64> = BTreeMap::new();
        for i in 0..9i32 {
            let order = i % 3;
            let (body, key) = (format!("order-{order}-{i}"), format!("ORDER_{order}"));
            let r = producer
                .send_with_selector(
                    msg(&body, "TagB", &key),
                    |mqs, m, arg| selector.select(mqs, m, arg),
                    order,
                )
                .await
                .expect("ordered send")
                .expect("ordered send result");
            let (q, _, uniq) = check_result(&r, broker, &mut order_last);
            assert_eq!(
                *queue_of.entry(order).or_insert(q),
                q,
                "order {order} changed queue"
            );
            sent.insert(
                body,
                Sent {
                    tag: "TagB".into(),
                    key,
                    uniq: Some(uniq),
                },
            );
        }
        producer.shutdown().await;
        sent
    });
    assert_eq!(sent.len(), 32);

    // Push consumers: one taking everything, one filtering by tags.
    let all = Collector::default();
    let filtered = Collector::default();
    let (got_all, got_filtered) = owner.block_on(async {
        let mut c_all = DefaultMQPushConsumer::builder(client_rt.clone())
            .consumer_group("BbCompatAll".to_string())
            .name_server_addr(ns.clone())
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            .build();
        c_all.subscribe(TOPIC, "*").await.expect("subscribe *");
        c_all.register_message_listener_concurrently(all.clone());
        c_all.start().await.expect("consumer start");

        let mut c_tag = DefaultMQPushConsumer::builder(client_rt.clone())
            .consumer_group("BbCompatTags".to_string())
            .name_server_addr(ns.clone())
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            .build();
        c_tag
            .subscribe(TOPIC, "TagA || TagB")
            .await
            .expect("subscribe tags");
        c_tag.register_message_listener_concurrently(filtered.clone());
        c_tag.start().await.expect("consumer start");

        let want_filtered = sent.values().filter(|s| s.tag != "TagC").count();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let (a, f) = (
                all.seen.lock().expect("lock").len(),
                filtered.seen.lock().expect("lock").len(),
            );
            if a >= sent.len() && f >= want_filtered {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "consumers got {a}/{} and {f}/{want_filtered} messages",
                sent.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Give duplicates a chance to show up before judging.
        tokio::time::sleep(Duration::from_secs(1)).await;
        c_all.shutdown().await;
        c_tag.shutdown().await;
        (
            all.seen.lock().expect("lock").clone(),
            filtered.seen.lock().expect("lock").clone(),
        )
    });
    let _ = owner.block_on(client_rt.shutdown());

    assert_eq!(got_all.len(), sent.len(), "every message, nothing else");
    for (body, s) in &sent {
        let g = got_all
            .get(body)
            .unwrap_or_else(|| panic!("{body} never consumed"));
        assert_eq!(g.count, 1, "{body} consumed {} times", g.count);
        assert_eq!(g.topic, TOPIC);
        assert_eq!(g.tags.as_deref(), Some(s.tag.as_str()), "{body}");
        assert_eq!(g.keys.as_deref(), Some(s.key.as_str()), "{body}");
        if let Some(u) = &s.uniq {
            assert_eq!(
                g.uniq.as_ref(),
                Some(u),
                "{body}: unique id of the send result"
            );
        }
    }
    for (body, g) in &got_filtered {
        assert_ne!(
            g.tags.as_deref(),
            Some("TagC"),
            "{body} passed the TagA || TagB filter"
        );
        assert_eq!(g.count, 1, "{body} consumed {} times", g.count);
    }
    assert_eq!(
        got_filtered.len(),
        sent.values().filter(|s| s.tag != "TagC").count()
    );
    drop(sa);
}
