//! Producer and admin behaviour against an in-process NameServer and fake
//! brokers: route discovery, the TBW102 fallback, retries on another
//! broker, fault avoidance, SYSTEM_BUSY back-off, batches, compression,
//! ordered sends, heartbeats, unregistration and NameServer admin calls.

mod fake;

use std::collections::HashSet;
use std::time::Duration;

use apogee_client::{AdminClient, Message, Producer, SendStatus};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::message::{batch, compress, keys, properties, sysflag};
use fake::{start_namesrv, FakeBroker};

async fn two_brokers(ns: &str) -> (FakeBroker, FakeBroker) {
    let a = FakeBroker::start("broker-a").await;
    let b = FakeBroker::start("broker-b").await;
    a.register(ns, &[("T", 4, 6), ("TBW102", 8, 7)]).await;
    b.register(ns, &[("T", 4, 6), ("TBW102", 8, 7)]).await;
    (a, b)
}

fn producer(ns: &str) -> Producer {
    Producer::builder()
        .namesrv_addr(format!("127.0.0.1:1;{ns}")) // first one is dead: fail-over
        .group("pg")
        .send_timeout(Duration::from_secs(5))
        .heartbeat_broker_interval(Duration::from_millis(200))
        .build()
        .unwrap()
}

#[tokio::test]
async fn routes_sends_and_results() {
    let ns = start_namesrv().await;
    let (a, b) = two_brokers(&ns.addr).await;
    let p = producer(&ns.addr);
    assert!(
        p.send(Message::new("T", "x")).await.is_err(),
        "not started yet"
    );
    p.start().await.unwrap();

    let queues = p.fetch_publish_queues("T").await.unwrap();
    assert_eq!(queues.len(), 8);
    assert_eq!(queues[0].broker_name, "broker-a");
    assert_eq!(queues[7].broker_name, "broker-b");

    let mut brokers = HashSet::new();
    for i in 0..8 {
        let r = p
            .send(
                Message::new("T", format!("m{i}"))
                    .with_tags("TagA")
                    .with_keys(["k1", "k2"])
                    .with_property("custom", "v"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, SendStatus::SendOk);
        assert!(r.offset_msg_id.starts_with("OFFSET"));
        brokers.insert(r.queue.broker_name.clone());
    }
    assert_eq!(brokers.len(), 2, "round robin reaches both brokers");
    let sends: Vec<_> = a.sends().into_iter().chain(b.sends()).collect();
    assert_eq!(sends.len(), 8);
    let s = &sends[0];
    assert_eq!(s.code, request_code::SEND_MESSAGE_V2);
    assert_eq!(s.ext("a"), Some("pg"));
    assert_eq!(s.ext("b"), Some("T"));
    assert_eq!(s.ext("c"), Some("TBW102"));
    let props = s.ext("i").unwrap();
    assert_eq!(properties::get(props, keys::TAGS), Some("TagA"));
    assert_eq!(properties::get(props, keys::KEYS), Some("k1 k2"));
    assert_eq!(properties::get(props, "custom"), Some("v"));
    assert!(properties::get(props, keys::UNIQ_KEY).is_some());

    // msg_id is the UNIQ_KEY the broker received
    let r = p.send(Message::new("T", "id-check")).await.unwrap();
    let all: Vec<_> = a.sends().into_iter().chain(b.sends()).collect();
    assert!(all
        .iter()
        .any(|c| properties::get(c.ext("i").unwrap(), keys::UNIQ_KEY) == Some(r.msg_id.as_str())));

    // heartbeats reach both masters
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(a.count(request_code::HEART_BEAT) >= 1);
    assert!(b.count(request_code::HEART_BEAT) >= 1);

    p.shutdown().await;
    assert!(a.count(request_code::UNREGISTER_CLIENT) >= 1);
    assert!(b.count(request_code::UNREGISTER_CLIENT) >= 1);
    assert!(p.send(Message::new("T", "late")).await.is_err());
}

#[tokio::test]
async fn unknown_topic_uses_the_auto_create_route() {
    let ns = start_namesrv().await;
    let (a, b) = two_brokers(&ns.addr).await;
    let p = producer(&ns.addr);
    p.start().await.unwrap();
    let queues = p.fetch_publish_queues("Fresh").await.unwrap();
    // min(defaultTopicQueueNums = 4, TBW102's 8) per broker
    assert_eq!(queues.len(), 8);
    assert!(queues.iter().all(|q| q.topic == "Fresh" && q.queue_id < 4));
    p.send(Message::new("Fresh", "x")).await.unwrap();
    let s = a.sends().into_iter().chain(b.sends()).next().unwrap();
    assert_eq!(s.ext("b"), Some("Fresh"));
    assert_eq!(s.ext("d"), Some("4"));
    p.shutdown().await;
}

#[tokio::test]
async fn failed_broker_is_retried_elsewhere_and_avoided() {
    let ns = start_namesrv().await;
    let (a, b) = two_brokers(&ns.addr).await;
    *a.always.lock() = Some(response_code::SYSTEM_ERROR);
    let p = producer(&ns.addr);
    p.start().await.unwrap();
    for i in 0..10 {
        let r = p.send(Message::new("T", format!("m{i}"))).await.unwrap();
        assert_eq!(r.queue.broker_name, "broker-b");
    }
    // at most one attempt reached a before it was isolated
    assert!(a.sends().len() <= 1, "a got {} sends", a.sends().len());
    assert_eq!(b.sends().len(), 10);
    assert!(!p.is_broker_available("broker-a"));

    // a non-retriable refusal is returned with the broker's code and remark
    *b.always.lock() = Some(response_code::MESSAGE_ILLEGAL);
    let err = p.send(Message::new("T", "bad")).await.unwrap_err();
    assert_eq!(err.response_code(), Some(response_code::MESSAGE_ILLEGAL));
    assert_eq!(err.remark(), Some("scripted 13"));
    p.shutdown().await;
}

#[tokio::test]
async fn stopped_broker_is_avoided() {
    let ns = start_namesrv().await;
    let (a, b) = two_brokers(&ns.addr).await;
    let p = producer(&ns.addr);
    p.start().await.unwrap();
    p.fetch_publish_queues("T").await.unwrap();
    a.server.shutdown().await;
    for i in 0..10 {
        let r = p.send(Message::new("T", format!("m{i}"))).await.unwrap();
        assert_eq!(r.queue.broker_name, "broker-b");
    }
    assert_eq!(b.sends().len(), 10);
    assert!(!p.is_broker_available("broker-a"));
    p.shutdown().await;
}

#[tokio::test]
async fn system_busy_is_backed_off_not_returned() {
    let ns = start_namesrv().await;
    let a = FakeBroker::start("broker-a").await;
    a.register(&ns.addr, &[("T", 2, 6)]).await;
    a.script.lock().extend([
        response_code::SYSTEM_BUSY,
        response_code::SYSTEM_BUSY,
        response_code::SYSTEM_BUSY,
        response_code::SYSTEM_BUSY,
    ]);
    let p = producer(&ns.addr);
    p.start().await.unwrap();
    let r = p.send(Message::new("T", "x")).await.unwrap();
    assert_eq!(r.status, SendStatus::SendOk);
    assert_eq!(a.sends().len(), 5, "four busy answers, then the stored one");

    // ordered and queue-targeted sends back off too
    a.script.lock().push_back(response_code::SYSTEM_BUSY);
    let r = p.send_ordered(Message::new("T", "o"), "key").await.unwrap();
    assert_eq!(r.status, SendStatus::SendOk);
    p.shutdown().await;
}

#[tokio::test]
async fn batches_are_split_and_encoded() {
    let ns = start_namesrv().await;
    let a = FakeBroker::start("broker-a").await;
    a.register(&ns.addr, &[("T", 2, 6)]).await;
    let p = Producer::builder()
        .namesrv_addr(ns.addr.clone())
        .group("pg")
        .batch_max_count(3)
        .build()
        .unwrap();
    p.start().await.unwrap();
    let msgs: Vec<Message> = (0..7).map(|i| Message::new("T", format!("b{i}"))).collect();
    let results = p.send_batch(msgs).await.unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].msg_id.split(',').count(), 3);
    let sends = a.sends();
    assert_eq!(sends.len(), 3);
    let mut bodies = Vec::new();
    for s in &sends {
        assert_eq!(s.code, request_code::SEND_BATCH_MESSAGE);
        assert_eq!(s.ext("m"), Some("true"));
        for m in batch::decode_batch(s.body.as_ref().unwrap()).unwrap() {
            assert!(properties::get(&m.properties, keys::UNIQ_KEY).is_some());
            bodies.push(String::from_utf8(m.body.to_vec()).unwrap());
        }
    }
    assert_eq!(bodies, (0..7).map(|i| format!("b{i}")).collect::<Vec<_>>());
    p.shutdown().await;
}

#[tokio::test]
async fn compression_and_ordered_and_targeted_sends() {
    let ns = start_namesrv().await;
    let a = FakeBroker::start("broker-a").await;
    a.register(&ns.addr, &[("T", 8, 6)]).await;
    let p = producer(&ns.addr);
    p.start().await.unwrap();

    let big: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    p.send(Message::new("T", big.clone())).await.unwrap();
    let s = a.sends().pop().unwrap();
    let flag: i32 = s.ext("f").unwrap().parse().unwrap();
    assert_eq!(flag & sysflag::COMPRESSED, sysflag::COMPRESSED);
    let body = s.body.unwrap();
    assert!(body.len() < big.len());
    assert_eq!(compress::decompress_zlib(&body, 1 << 20).unwrap(), big);

    let mut qids = HashSet::new();
    for i in 0..5 {
        let r = p
            .send_ordered(Message::new("T", format!("o{i}")), "order-1")
            .await
            .unwrap();
        qids.insert(r.queue.queue_id);
    }
    assert_eq!(qids.len(), 1, "one key, one queue");

    let q = p.fetch_publish_queues("T").await.unwrap()[5].clone();
    let r = p.send_to_queue(Message::new("T", "q"), &q).await.unwrap();
    assert_eq!(r.queue, q);
    p.send_oneway(Message::new("T", "one")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a
        .sends()
        .iter()
        .any(|c| c.body.as_deref() == Some(&b"one"[..])));
    p.shutdown().await;
}

#[tokio::test]
async fn admin_reads_namesrv_state() {
    let ns = start_namesrv().await;
    let (_a, _b) = two_brokers(&ns.addr).await;
    let admin = AdminClient::builder()
        .namesrv_addr(ns.addr.clone())
        .build()
        .unwrap();
    let info = admin.cluster_info().await.unwrap();
    assert_eq!(info.broker_addr_table.len(), 2);
    assert_eq!(info.cluster_addr_table["DefaultCluster"].len(), 2);
    let topics = admin.topic_list().await.unwrap();
    assert!(topics.contains("T") && topics.contains("TBW102"));
    let route = admin.topic_route("T").await.unwrap();
    assert_eq!(route.queue_datas.len(), 2);
    let err = admin.topic_route("Nope").await.unwrap_err();
    assert_eq!(err.response_code(), Some(response_code::TOPIC_NOT_EXIST));
    assert_eq!(
        admin
            .cluster_master_addrs("DefaultCluster")
            .await
            .unwrap()
            .len(),
        2
    );

    admin.put_kv_config("NS", "k", "v").await.unwrap();
    assert_eq!(
        admin.get_kv_config("NS", "k").await.unwrap().as_deref(),
        Some("v")
    );
    assert_eq!(
        admin
            .kv_list("NS")
            .await
            .unwrap()
            .get("k")
            .map(String::as_str),
        Some("v")
    );
    admin.delete_kv_config("NS", "k").await.unwrap();
    assert_eq!(admin.get_kv_config("NS", "k").await.unwrap(), None);

    let wiped = admin.wipe_write_perm("broker-a").await.unwrap();
    assert_eq!(wiped.len(), 1);
    assert_eq!(wiped[0].1, 2, "T and TBW102");
    let route = admin.topic_route("T").await.unwrap();
    let qa = route
        .queue_datas
        .iter()
        .find(|q| q.broker_name == "broker-a")
        .unwrap();
    assert_eq!(qa.perm & 2, 0);
    admin.add_write_perm("broker-a").await.unwrap();
    admin.shutdown().await;
}
