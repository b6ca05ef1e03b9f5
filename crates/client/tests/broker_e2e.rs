//! End to end against in-process Apogee brokers: every send kind consumed
//! back, rebalancing with members joining and leaving without loss,
//! per-queue order, broadcasting, retry and DLQ, compression, the lite pull
//! consumer, admin calls, and fault avoidance with a stopped broker.

mod cluster;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use apogee_client::consumer::{ConsumeFromWhere, MessageModel};
use apogee_client::{
    consume_lag, ConcurrentlyFn, ConsumeConcurrentlyStatus, ConsumeOrderlyStatus, LitePullConsumer,
    Message, MessageExt, OrderlyFn, Producer, PushConsumer, SendStatus,
};
use cluster::{wait_until, Cluster};
use parking_lot::Mutex;

type Seen = Arc<Mutex<Vec<MessageExt>>>;

fn producer(c: &Cluster, group: &str) -> Producer {
    Producer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group(group)
        .build()
        .unwrap()
}

fn recording_consumer(c: &Cluster, group: &str, topic: &str, seen: &Seen) -> PushConsumer {
    let s = seen.clone();
    PushConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group(group)
        .subscribe(topic, "*")
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .rebalance_interval(Duration::from_secs(2))
        .persist_consumer_offset_interval(Duration::from_millis(500))
        .broker_suspend_max_time(Duration::from_secs(2))
        .listener_concurrently(ConcurrentlyFn(move |msgs: &[MessageExt], _ctx: &mut _| {
            s.lock().extend(msgs.iter().cloned());
            ConsumeConcurrentlyStatus::Success
        }))
        .build()
        .unwrap()
}

fn bodies(seen: &Seen) -> BTreeSet<String> {
    seen.lock()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_send_kind_is_consumed() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Kinds", 4).await;
    let p = producer(&c, "kinds-pg");
    p.start().await.unwrap();

    let mut expected = BTreeSet::new();
    let r = p
        .send(
            Message::new("Kinds", "sync")
                .with_tags("TagA")
                .with_keys(["key-sync"]),
        )
        .await
        .unwrap();
    assert_eq!(r.status, SendStatus::SendOk);
    expected.insert("sync".to_string());
    let futs: Vec<_> = (0..10)
        .map(|i| p.send_async(Message::new("Kinds", format!("async-{i}"))))
        .collect();
    for (i, f) in futs.into_iter().enumerate() {
        f.await.unwrap();
        expected.insert(format!("async-{i}"));
    }
    p.send_oneway(Message::new("Kinds", "oneway"))
        .await
        .unwrap();
    expected.insert("oneway".into());
    let batch: Vec<Message> = (0..5)
        .map(|i| Message::new("Kinds", format!("batch-{i}")))
        .collect();
    let rs = p.send_batch(batch).await.unwrap();
    assert_eq!(rs[0].msg_id.split(',').count(), 5);
    expected.extend((0..5).map(|i| format!("batch-{i}")));
    let r1 = p
        .send_ordered(Message::new("Kinds", "ordered-1"), "k")
        .await
        .unwrap();
    let r2 = p
        .send_ordered(Message::new("Kinds", "ordered-2"), "k")
        .await
        .unwrap();
    assert_eq!(r1.queue, r2.queue);
    assert_eq!(r2.queue_offset, r1.queue_offset + 1);
    expected.extend(["ordered-1".to_string(), "ordered-2".to_string()]);
    let q = p.fetch_publish_queues("Kinds").await.unwrap()[3].clone();
    let rq = p
        .send_to_queue(Message::new("Kinds", "to-queue"), &q)
        .await
        .unwrap();
    assert_eq!(rq.queue.queue_id, 3);
    expected.insert("to-queue".into());
    p.send(Message::new("Kinds", "delayed").with_delay_level(1))
        .await
        .unwrap();
    expected.insert("delayed".into());
    // compressed on the wire, inflated for the consumer
    let big: String = (0..20_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    p.send(Message::new("Kinds", big.clone())).await.unwrap();
    expected.insert(big.clone());

    let seen: Seen = Arc::default();
    let consumer = recording_consumer(&c, "kinds-cg", "Kinds", &seen);
    consumer.start().await.unwrap();
    let ok = wait_until(40, || bodies(&seen).is_superset(&expected)).await;
    let got = bodies(&seen);
    assert!(
        ok,
        "missing: {:?}",
        expected
            .difference(&got)
            .map(|s| &s[..s.len().min(20)])
            .collect::<Vec<_>>()
    );

    let all = seen.lock().clone();
    let sync = all.iter().find(|m| &m.body[..] == b"sync").unwrap();
    assert_eq!(sync.tags(), Some("TagA"));
    assert_eq!(sync.keys(), vec!["key-sync"]);
    assert_eq!(sync.msg_id, r.msg_id);
    assert_eq!(sync.offset_msg_id, r.offset_msg_id);
    assert_eq!(sync.topic, "Kinds");
    let delayed = all.iter().find(|m| &m.body[..] == b"delayed").unwrap();
    assert!(delayed.store_timestamp >= delayed.born_timestamp);
    let big_msg = all.iter().find(|m| m.body.len() == big.len()).unwrap();
    assert_eq!(big_msg.sys_flag & 1, 0, "consumer sees the inflated body");
    // no duplicates besides at-least-once redelivery (none expected here)
    assert_eq!(all.len(), expected.len());

    consumer.shutdown().await;
    p.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalance_join_and_leave_loses_nothing() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Reb", 8).await;
    let p = producer(&c, "reb-pg");
    p.start().await.unwrap();

    let seen_a: Seen = Arc::default();
    let seen_b: Seen = Arc::default();
    let a = recording_consumer(&c, "reb-cg", "Reb", &seen_a);
    a.start().await.unwrap();
    assert!(
        wait_until(10, || a
            .assigned_queues()
            .iter()
            .filter(|q| q.topic == "Reb")
            .count()
            == 8)
        .await
    );

    let mut sent = BTreeSet::new();
    for i in 0..100 {
        p.send(Message::new("Reb", format!("m{i}"))).await.unwrap();
        sent.insert(format!("m{i}"));
    }
    let b = recording_consumer(&c, "reb-cg", "Reb", &seen_b);
    b.start().await.unwrap();
    // the NOTIFY_CONSUMER_IDS_CHANGED / periodic rebalance splits the queues
    let split = wait_until(15, || {
        let qa: BTreeSet<_> = a
            .assigned_queues()
            .into_iter()
            .filter(|q| q.topic == "Reb")
            .collect();
        let qb: BTreeSet<_> = b
            .assigned_queues()
            .into_iter()
            .filter(|q| q.topic == "Reb")
            .collect();
        qa.len() == 4 && qb.len() == 4 && qa.is_disjoint(&qb)
    })
    .await;
    assert!(
        split,
        "a={:?} b={:?}",
        a.assigned_queues(),
        b.assigned_queues()
    );
    for i in 100..200 {
        p.send(Message::new("Reb", format!("m{i}"))).await.unwrap();
        sent.insert(format!("m{i}"));
    }
    assert!(
        wait_until(20, || !seen_b.lock().is_empty()).await,
        "b got nothing"
    );
    a.shutdown().await;
    assert!(
        wait_until(15, || b
            .assigned_queues()
            .iter()
            .filter(|q| q.topic == "Reb")
            .count()
            == 8)
        .await
    );
    for i in 200..250 {
        p.send(Message::new("Reb", format!("m{i}"))).await.unwrap();
        sent.insert(format!("m{i}"));
    }
    let all = || {
        let mut s = bodies(&seen_a);
        s.extend(bodies(&seen_b));
        s
    };
    let ok = wait_until(30, || all().is_superset(&sent)).await;
    assert!(ok, "lost {:?}", sent.difference(&all()).collect::<Vec<_>>());
    b.shutdown().await;
    p.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orderly_consumption_keeps_per_key_order() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Ord", 4).await;
    let p = producer(&c, "ord-pg");
    p.start().await.unwrap();
    for seq in 0..30 {
        for key in ["k0", "k1", "k2", "k3", "k4"] {
            p.send_ordered(Message::new("Ord", format!("{key}:{seq}")), key)
                .await
                .unwrap();
        }
    }
    let order: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let fails = Arc::new(Mutex::new(HashSet::new()));
    let (o, f) = (order.clone(), fails.clone());
    let consumer = PushConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("ord-cg")
        .subscribe("Ord", "*")
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .broker_suspend_max_time(Duration::from_secs(2))
        .listener_orderly(OrderlyFn(
            move |msgs: &[MessageExt], ctx: &mut apogee_client::ConsumeOrderlyContext| {
                let body = String::from_utf8_lossy(&msgs[0].body).into_owned();
                // fail each "…:7" once: the queue must pause and retry it first
                if body.ends_with(":7") && f.lock().insert(body.clone()) {
                    ctx.suspend_current_queue_time = Duration::from_millis(100);
                    return ConsumeOrderlyStatus::SuspendCurrentQueueAMoment;
                }
                let (key, seq) = body.split_once(':').unwrap();
                o.lock()
                    .entry(key.to_string())
                    .or_default()
                    .push(seq.parse().unwrap());
                ConsumeOrderlyStatus::Success
            },
        ))
        .build()
        .unwrap();
    consumer.start().await.unwrap();
    let done = wait_until(40, || {
        let o = order.lock();
        o.len() == 5 && o.values().all(|v| v.len() >= 30)
    })
    .await;
    assert!(
        done,
        "got {:?}",
        order
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect::<Vec<_>>()
    );
    for (k, v) in order.lock().iter() {
        assert_eq!(v, &(0..30).collect::<Vec<u32>>(), "order of {k}");
    }
    consumer.shutdown().await;
    p.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broadcasting_delivers_everything_to_everyone() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Bc", 2).await;
    let p = producer(&c, "bc-pg");
    p.start().await.unwrap();
    let mut consumers = Vec::new();
    let mut seens = Vec::new();
    for i in 0..2 {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let cons = PushConsumer::builder()
            .namesrv_addr(c.ns_addr.clone())
            .group("bc-cg")
            .message_model(MessageModel::Broadcasting)
            .subscribe("Bc", "*")
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            .offset_store_path(c.dir.path().join(format!("bc-{i}.json")))
            .persist_consumer_offset_interval(Duration::from_millis(300))
            .broker_suspend_max_time(Duration::from_secs(2))
            .listener_concurrently(ConcurrentlyFn(move |msgs: &[MessageExt], _: &mut _| {
                s.lock().extend(msgs.iter().cloned());
                ConsumeConcurrentlyStatus::Success
            }))
            .build()
            .unwrap();
        cons.start().await.unwrap();
        consumers.push(cons);
        seens.push(seen);
    }
    let sent: BTreeSet<String> = (0..20).map(|i| format!("b{i}")).collect();
    for b in &sent {
        p.send(Message::new("Bc", b.clone())).await.unwrap();
    }
    for s in &seens {
        assert!(wait_until(20, || bodies(s).is_superset(&sent)).await);
    }
    // A batch's offset is committed just after its listener returns; a
    // shutdown in between drops that commit (the queue is dropped first),
    // so wait for the commits before checking what shutdown persists.
    for cons in &consumers {
        assert!(wait_until(20, || cons.offsets().values().sum::<i64>() == 20).await);
    }
    for cons in &consumers {
        cons.shutdown().await;
    }
    for i in 0..2 {
        let text = std::fs::read_to_string(c.dir.path().join(format!("bc-{i}.json"))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let total: i64 = v["offsetTable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["offset"].as_i64().unwrap())
            .sum();
        assert_eq!(total, 20, "local offsets cover all messages");
    }
    p.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_are_retried_then_dead_lettered() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Rt", 2).await;
    let p = producer(&c, "rt-pg");
    p.start().await.unwrap();
    p.send(Message::new("Rt", "flaky")).await.unwrap();
    p.send(Message::new("Rt", "poison")).await.unwrap();
    p.send(Message::new("Rt", "fine")).await.unwrap();

    let attempts: Arc<Mutex<Vec<(String, i32, String)>>> = Arc::default();
    let a = attempts.clone();
    let consumer = PushConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("rt-cg")
        .subscribe("Rt", "*")
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .max_reconsume_times(2)
        .broker_suspend_max_time(Duration::from_secs(2))
        .listener_concurrently(ConcurrentlyFn(
            move |msgs: &[MessageExt], ctx: &mut apogee_client::ConsumeConcurrentlyContext| {
                let m = &msgs[0];
                let body = String::from_utf8_lossy(&m.body).into_owned();
                a.lock()
                    .push((body.clone(), m.reconsume_times, m.topic.clone()));
                ctx.delay_level_when_next_consume = 1; // 1 s, to keep the test short
                match body.as_str() {
                    "flaky" if m.reconsume_times == 0 => ConsumeConcurrentlyStatus::ReconsumeLater,
                    "poison" => ConsumeConcurrentlyStatus::ReconsumeLater,
                    _ => ConsumeConcurrentlyStatus::Success,
                }
            },
        ))
        .build()
        .unwrap();
    consumer.start().await.unwrap();
    let count = |b: &str| attempts.lock().iter().filter(|(x, _, _)| x == b).count();
    assert!(
        wait_until(30, || count("flaky") >= 2).await,
        "flaky was not redelivered"
    );
    // the redelivery shows the original topic and one reconsume
    let redelivered = attempts
        .lock()
        .iter()
        .find(|(b, r, _)| b == "flaky" && *r == 1)
        .cloned();
    assert_eq!(redelivered.map(|(_, _, t)| t), Some("Rt".to_string()));
    // poison: first try + 2 retries, then the DLQ
    assert!(
        wait_until(40, || count("poison") >= 3).await,
        "poison attempts {}",
        count("poison")
    );
    let admin = c.admin();
    let dlq = "%DLQ%rt-cg";
    let in_dlq = async {
        for _ in 0..100 {
            if let Ok(stats) = admin.topic_stats(dlq).await {
                if stats
                    .offset_table
                    .values()
                    .map(|o| o.max_offset)
                    .sum::<i64>()
                    >= 1
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    assert!(in_dlq.await, "poison never reached {dlq}");
    assert_eq!(count("fine"), 1);
    admin.shutdown().await;
    consumer.shutdown().await;
    p.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lite_pull_poll_seek_commit() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Lite", 1).await;
    let p = producer(&c, "lite-pg");
    p.start().await.unwrap();
    for i in 0..10 {
        p.send(Message::new("Lite", format!("l{i}"))).await.unwrap();
    }
    let consumer = LitePullConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("lite-cg")
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .auto_commit(false)
        .broker_suspend_max_time(Duration::from_secs(1))
        .build()
        .unwrap();
    let queues = consumer.fetch_message_queues("Lite").await.unwrap();
    assert_eq!(queues.len(), 1);
    let mq = queues.into_iter().next().unwrap();
    consumer.assign(vec![mq.clone()]).await.unwrap();
    consumer.start().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend(consumer.poll(Duration::from_secs(1)).await.unwrap());
        if got.len() >= 10 {
            break;
        }
    }
    let offsets: Vec<i64> = got.iter().map(|m| m.queue_offset).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    consumer.commit_sync().await.unwrap();
    assert_eq!(consumer.committed(&mq).await.unwrap(), Some(10));

    consumer.seek(&mq, 4).await.unwrap();
    let again = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.first().map(|m| m.queue_offset), Some(4));
    consumer.seek_to_begin(&mq).await.unwrap();
    let again = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.first().map(|m| m.queue_offset), Some(0));
    consumer.seek_to_end(&mq).await.unwrap();
    assert!(consumer
        .poll(Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty());
    assert!(consumer.seek(&mq, 11).await.is_err(), "past the end");
    p.send(Message::new("Lite", "late")).await.unwrap();
    let late = consumer.poll(Duration::from_secs(5)).await.unwrap();
    assert_eq!(late.first().map(|m| &m.body[..]), Some(&b"late"[..]));

    consumer.shutdown().await;
    p.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_calls_against_a_broker() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Adm", 2).await;
    let addr = c.addr("broker-a");
    let admin = c.admin();
    let p = producer(&c, "adm-pg");
    p.start().await.unwrap();
    let mut results = Vec::new();
    for i in 0..6 {
        results.push(
            p.send(Message::new("Adm", format!("a{i}")).with_keys([format!("key{i}")]))
                .await
                .unwrap(),
        );
    }
    // the consume queues are built asynchronously after the store acks
    let mut total = 0;
    for _ in 0..50 {
        let stats = admin.topic_stats("Adm").await.unwrap();
        assert_eq!(stats.offset_table.len(), 2);
        total = stats
            .offset_table
            .values()
            .map(|o| o.max_offset)
            .sum::<i64>();
        if total == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(total, 6);

    let viewed = admin.view_message(&results[0].offset_msg_id).await.unwrap();
    assert_eq!(&viewed.body[..], b"a0");
    let by_id = admin
        .query_message_by_id("Adm", &results[1].msg_id)
        .await
        .unwrap();
    assert_eq!(by_id.first().map(|m| &m.body[..]), Some(&b"a1"[..]));
    let by_key = {
        let mut found = Vec::new();
        for _ in 0..50 {
            found = admin
                .query_message_by_key("Adm", "key2", 32, 0, i64::MAX)
                .await
                .unwrap_or_default();
            if !found.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        found
    };
    assert_eq!(by_key.first().map(|m| &m.body[..]), Some(&b"a2"[..]));
    let q = results[3].queue.clone();
    let at = admin
        .message_at(&q, results[3].queue_offset)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&at.body[..], b"a3");
    assert!(admin.max_offset(&q).await.unwrap() > results[3].queue_offset);

    // a consumer makes progress, lag drops to zero, connections are listed
    let seen: Seen = Arc::default();
    let consumer = recording_consumer(&c, "adm-cg", "Adm", &seen);
    consumer.start().await.unwrap();
    assert!(wait_until(20, || seen.lock().len() >= 6).await);
    let conns = admin.consumer_connections("adm-cg").await.unwrap();
    assert_eq!(conns.connection_set.len(), 1);
    assert_eq!(conns.connection_set[0].client_id, consumer.client_id());
    let mut lag = -1;
    for _ in 0..40 {
        let s = admin.consume_stats("adm-cg", Some("Adm")).await.unwrap();
        if s.offset_table.len() >= 2 {
            lag = consume_lag(&s);
            if lag == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(lag, 0);

    // reset to the beginning: the broker pushes the reset to the consumer,
    // which consumes everything again
    let before = seen.lock().len();
    let reset = admin
        .reset_offset_by_time("adm-cg", "Adm", 0, true)
        .await
        .unwrap();
    assert!(reset.values().all(|o| *o == 0), "{reset:?}");
    assert!(
        wait_until(20, || seen.lock().len() >= before + 6).await,
        "reset not applied"
    );
    consumer.shutdown().await;

    let rt: BTreeMap<String, String> = admin.broker_runtime_info(&addr).await.unwrap();
    assert!(rt.contains_key("brokerVersionDesc") || !rt.is_empty());
    let cfg = admin.broker_config(&addr).await.unwrap();
    assert_eq!(cfg.get("brokerName").map(String::as_str), Some("broker-a"));

    let group = apogee_protocol::body::SubscriptionGroupConfig::new("adm-new-group");
    admin
        .create_subscription_group(&addr, &group)
        .await
        .unwrap();
    let groups = admin.broker_subscription_groups(&addr).await.unwrap();
    assert!(groups
        .subscription_group_table
        .contains_key("adm-new-group"));
    admin
        .delete_subscription_group(&addr, "adm-new-group", true)
        .await
        .unwrap();

    admin.delete_topic("Adm", "DefaultCluster").await.unwrap();
    assert!(admin.topic_route("Adm").await.is_err());
    admin.shutdown().await;
    p.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_avoids_a_stopped_broker() {
    let mut c = Cluster::start(&["broker-a", "broker-b"]).await;
    c.create_topic("Fa", 4).await;
    let p = producer(&c, "fa-pg");
    p.start().await.unwrap();
    let mut brokers = HashSet::new();
    for i in 0..8 {
        brokers.insert(
            p.send(Message::new("Fa", format!("x{i}")))
                .await
                .unwrap()
                .queue
                .broker_name,
        );
    }
    assert_eq!(brokers.len(), 2);
    c.stop_broker("broker-a").await;
    for i in 0..20 {
        let r = p.send(Message::new("Fa", format!("y{i}"))).await.unwrap();
        assert_eq!(r.queue.broker_name, "broker-b");
    }
    // Either a failed send isolated broker-a, or a route refresh already
    // dropped it (the stopped broker unregistered from the NameServer).
    let still_routed = p
        .fetch_publish_queues("Fa")
        .await
        .unwrap()
        .iter()
        .any(|q| q.broker_name == "broker-a");
    assert!(!still_routed || !p.is_broker_available("broker-a"));
    p.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql92_subscriptions_push_and_lite_pull() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Sql", 2).await;
    let p = producer(&c, "sql-pg");
    p.start().await.unwrap();
    for i in 0..12 {
        let m = Message::new("Sql", format!("s{i}")).with_property("n", i.to_string());
        assert_eq!(p.send(m).await.unwrap().status, SendStatus::SendOk);
    }
    let want: BTreeSet<String> = ["s2", "s5", "s8", "s11"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let expr = "n IN ('2', '5', '8', '11')";

    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let push = PushConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("sql-push")
        .subscribe_sql("Sql", expr)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .rebalance_interval(Duration::from_secs(2))
        .broker_suspend_max_time(Duration::from_secs(2))
        .listener_concurrently(ConcurrentlyFn(move |msgs: &[MessageExt], _ctx: &mut _| {
            s.lock().extend(msgs.iter().cloned());
            ConsumeConcurrentlyStatus::Success
        }))
        .build()
        .unwrap();
    push.start().await.unwrap();

    let lite = LitePullConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("sql-lite")
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .broker_suspend_max_time(Duration::from_secs(1))
        .build()
        .unwrap();
    lite.subscribe_sql("Sql", expr).await.unwrap();
    lite.start().await.unwrap();
    let mut lite_got = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lite_got.len() < want.len() && std::time::Instant::now() < deadline {
        for m in lite.poll(Duration::from_millis(500)).await.unwrap() {
            lite_got.insert(String::from_utf8_lossy(&m.body).into_owned());
        }
    }
    assert!(wait_until(20, || bodies(&seen).len() >= want.len()).await);
    // Anything that does not match would have arrived by now too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for m in lite.poll(Duration::from_millis(500)).await.unwrap() {
        lite_got.insert(String::from_utf8_lossy(&m.body).into_owned());
    }
    assert_eq!(bodies(&seen), want, "push consumer");
    assert_eq!(lite_got, want, "lite pull consumer");
    // A malformed expression is refused, not ignored.
    assert!(PushConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("sql-bad")
        .subscribe_sql("Sql", "  ")
        .listener_concurrently(ConcurrentlyFn(|_: &[MessageExt], _ctx: &mut _| {
            ConsumeConcurrentlyStatus::Success
        }))
        .build()
        .is_err());
    push.shutdown().await;
    lite.shutdown().await;
    p.shutdown().await;
    c.shutdown().await;
}
