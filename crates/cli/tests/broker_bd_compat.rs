//! Admin and query commands against a RocketMQ client we did not write: the
//! published `rocketmq-client-rust` admin (`DefaultMQAdminExt`) and producer
//! drive `apogee standalone` — create and examine a topic, read its stats,
//! query messages by key and by offset id, read a group's consume stats
//! after its consumer committed, read the broker's runtime info and config,
//! change the config, and delete the topic.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    BrokerAdmin, ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext,
    ConsumeConcurrentlyStatus, ConsumerAdmin, DefaultMQAdminExt, DefaultMQProducer,
    DefaultMQPushConsumer, MQPushConsumer, MessageListenerConcurrently, SendStatus, TopicAdmin,
};
use rocketmq_model::common::config::TopicConfig;
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_observability::TelemetryRuntimeGuard;

const TOPIC: &str = "BdAdminTopic";
const GROUP: &str = "BdAdminGroup";
const MESSAGES: usize = 8;

#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl MessageListenerConcurrently for Counter {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeConcurrentlyStatus> {
        self.0.fetch_add(msgs.len(), Ordering::SeqCst);
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[test]
fn rocketmq_client_rust_admin_drives_topics_queries_stats_and_config() {
    let sa = support::start_standalone(&[]);
    let ns = sa.namesrv.to_string();
    let broker = CheetahString::from(sa.broker.to_string());

    let owner = support::rocketmq_runtime_owner();
    let telemetry = TelemetryRuntimeGuard::noop();
    let client_rt = ClientRuntime::try_new(
        owner.root_context().component("bd-compat"),
        ClientRuntimeConfig::default(),
        telemetry.handle(),
    )
    .expect("client runtime");

    owner.block_on(async {
        let mut admin = DefaultMQAdminExt::new(client_rt.clone());
        admin.set_namesrv_addr(ns.as_str());
        admin.start().await.expect("admin start");

        // Create the topic on the broker and read it back.
        let mut cfg = TopicConfig::new(TOPIC);
        cfg.read_queue_nums = 4;
        cfg.write_queue_nums = 4;
        cfg.perm = 6;
        TopicAdmin::create_and_update_topic_config(&admin, broker.clone(), cfg)
            .await
            .expect("create topic");
        let got = TopicAdmin::examine_topic_config(&admin, broker.clone(), TOPIC.into())
            .await
            .expect("examine topic config");
        assert_eq!(
            (got.read_queue_nums, got.write_queue_nums, got.perm),
            (4, 4, 6)
        );

        // Produce messages with two business keys.
        let mut producer = DefaultMQProducer::builder(client_rt.clone())
            .producer_group("BdAdminProducer".to_string())
            .name_server_addr(ns.clone())
            .build();
        producer.start().await.expect("producer start");
        let mut offset_ids = Vec::new();
        for i in 0..MESSAGES {
            let m = Message::builder()
                .topic(TOPIC)
                .tags("TagA")
                .key(format!("bd-key-{}", i % 2))
                .body_slice(format!("bd-body-{i}").as_bytes())
                .build_unchecked();
            let r = producer
                .send_with_timeout(m, 10_000)
                .await
                .expect("send")
                .expect("send result");
            assert_eq!(r.send_status, SendStatus::SendOk, "{r:?}");
            offset_ids.push(r.offset_msg_id.clone().expect("offset msg id").to_string());
        }

        // Topic stats: every message is counted once across the queues
        // (ConsumeQueue entries appear just after the append, and the very
        // first dispatch also creates the index file: poll briefly).
        let deadline = Instant::now() + Duration::from_secs(20);
        let stats = loop {
            let stats = TopicAdmin::examine_topic_stats(&admin, TOPIC.into(), Some(broker.clone()))
                .await
                .expect("topic stats");
            let total: i64 = stats
                .get_offset_table()
                .values()
                .map(|o| o.get_max_offset() - o.get_min_offset())
                .sum();
            if total >= MESSAGES as i64 {
                assert_eq!(total, MESSAGES as i64);
                break stats;
            }
            assert!(
                Instant::now() < deadline,
                "topic stats stuck at {total} messages"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let table = stats.get_offset_table();
        assert_eq!(table.len(), 4, "one entry per queue");
        assert!(table
            .values()
            .filter(|o| o.get_max_offset() > 0)
            .all(|o| o.get_last_update_timestamp() > 0));

        // Query by key (the index is written just after the append).
        let deadline = Instant::now() + Duration::from_secs(20);
        let found = loop {
            match producer
                .query_message(TOPIC, "bd-key-0", 32, 0, now_ms() + 60_000)
                .await
            {
                Ok(r) if r.message_list().len() >= MESSAGES / 2 => break r,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "query by key never found all: {:?}",
                        other.err()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(found.message_list().len(), MESSAGES / 2);
        let mut bodies: Vec<String> = found
            .message_list()
            .iter()
            .map(|m| String::from_utf8_lossy(&m.body().unwrap_or_default()).into_owned())
            .collect();
        bodies.sort();
        assert_eq!(bodies, ["bd-body-0", "bd-body-2", "bd-body-4", "bd-body-6"]);
        assert!(found.index_last_update_timestamp() > 0);
        assert!(producer
            .query_message(TOPIC, "no-such-key", 32, 0, now_ms())
            .await
            .is_err());

        // View by offset message id, through the producer and the admin.
        let m = producer
            .view_message(TOPIC, &offset_ids[3])
            .await
            .expect("view message");
        assert_eq!(&m.body().unwrap_or_default()[..], b"bd-body-3");
        assert_eq!(m.topic().as_str(), TOPIC);
        let m = ConsumerAdmin::query_message(
            &admin,
            "DefaultCluster".into(),
            TOPIC.into(),
            offset_ids[5].clone().into(),
        )
        .await
        .expect("admin view message");
        assert_eq!(&m.body().unwrap_or_default()[..], b"bd-body-5");
        producer.shutdown().await;

        // A push consumer consumes everything; its offsets get committed.
        let counter = Counter::default();
        let mut consumer = DefaultMQPushConsumer::builder(client_rt.clone())
            .consumer_group(GROUP.to_string())
            .name_server_addr(ns.clone())
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            .build();
        consumer.subscribe(TOPIC, "*").await.expect("subscribe");
        consumer.register_message_listener_concurrently(counter.clone());
        consumer.start().await.expect("consumer start");

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stats = ConsumerAdmin::examine_consume_stats(
                &admin,
                GROUP.into(),
                None,
                None,
                Some(broker.clone()),
                None,
            )
            .await;
            if let Ok(stats) = stats {
                let ours: Vec<_> = stats
                    .get_offset_table()
                    .iter()
                    .filter(|(mq, _)| mq.topic().as_str() == TOPIC)
                    .map(|(_, o)| o)
                    .collect();
                let broker_total: i64 = ours.iter().map(|o| o.get_broker_offset()).sum();
                let consumer_total: i64 = ours.iter().map(|o| o.get_consumer_offset()).sum();
                if ours.len() == 4 && consumer_total == MESSAGES as i64 {
                    assert_eq!(broker_total, MESSAGES as i64);
                    assert_eq!(stats.compute_total_diff(), 0);
                    assert!(ours
                        .iter()
                        .filter(|o| o.get_consumer_offset() > 0)
                        .all(|o| o.get_last_timestamp() > 0));
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "consume stats never showed all {MESSAGES} committed (consumed {})",
                counter.0.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(counter.0.load(Ordering::SeqCst) >= MESSAGES);
        let conn = ConsumerAdmin::examine_consumer_connection_info(
            &admin,
            GROUP.into(),
            Some(broker.clone()),
        )
        .await
        .expect("consumer connection");
        assert_eq!(conn.get_connection_set().len(), 1);
        consumer.shutdown().await;

        // Runtime info: the keys clusterList/brokerStatus print.
        let kv = BrokerAdmin::fetch_broker_runtime_stats(&admin, broker.clone())
            .await
            .expect("runtime info");
        let get = |k: &str| {
            kv.table
                .get(&CheetahString::from(k))
                .unwrap_or_else(|| panic!("runtime info lacks {k}"))
                .to_string()
        };
        assert!(get("msgPutTotalTodayNow").parse::<u64>().expect("number") >= MESSAGES as u64);
        assert!(get("msgGetTotalTodayNow").parse::<u64>().expect("number") >= MESSAGES as u64);
        assert_eq!(get("putTps").split(' ').count(), 3);
        assert!(get("brokerVersionDesc").starts_with('V'));
        assert!(get("commitLogMaxOffset").parse::<i64>().expect("number") > 0);

        // Broker config: read, change a runtime key, read again.
        let conf = BrokerAdmin::get_broker_config(&admin, broker.clone())
            .await
            .expect("broker config");
        let conf_get = |c: &HashMap<CheetahString, CheetahString>, k: &str| {
            c.get(&CheetahString::from(k)).map(|v| v.to_string())
        };
        assert_eq!(conf_get(&conf, "brokerName").as_deref(), Some("broker-a"));
        assert_eq!(
            conf_get(&conf, "listenPort"),
            Some(sa.broker.port().to_string())
        );
        let update: HashMap<CheetahString, CheetahString> =
            [("maxTransferCountOnMessageInMemory".into(), "40".into())].into();
        BrokerAdmin::update_broker_config(&admin, broker.clone(), update)
            .await
            .expect("update broker config");
        let conf = BrokerAdmin::get_broker_config(&admin, broker.clone())
            .await
            .expect("broker config");
        assert_eq!(
            conf_get(&conf, "maxTransferCountOnMessageInMemory").as_deref(),
            Some("40")
        );
        let refused: HashMap<CheetahString, CheetahString> =
            [("listenPort".into(), "1".into())].into();
        assert!(
            BrokerAdmin::update_broker_config(&admin, broker.clone(), refused)
                .await
                .is_err()
        );

        // Delete the topic from the broker.
        let addrs: HashSet<CheetahString> = [broker.clone()].into();
        TopicAdmin::delete_topic_in_broker(&admin, addrs, TOPIC.into())
            .await
            .expect("delete topic");
        assert!(
            TopicAdmin::examine_topic_config(&admin, broker.clone(), TOPIC.into())
                .await
                .is_err()
        );
        assert!(
            TopicAdmin::examine_topic_stats(&admin, TOPIC.into(), Some(broker.clone()))
                .await
                .is_err()
        );
        admin.shutdown().await;
    });
}
