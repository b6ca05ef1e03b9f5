//! The simple consumer (POP) against in-process Apogee brokers: every
//! message received once and acked, an un-acked one back with its delivery
//! attempt counted, change of invisible duration, SQL92 and tag filters,
//! and bad arguments refused.

mod cluster;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use apogee_client::consumer::ConsumeFromWhere;
use apogee_client::{ClientError, Message, Producer, ReceivedMessage, SendStatus, SimpleConsumer};
use cluster::Cluster;

fn consumer(c: &Cluster, group: &str, topic: &str) -> SimpleConsumer {
    SimpleConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group(group)
        .subscribe(topic, "*")
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .await_duration(Duration::from_millis(500))
        .build()
        .unwrap()
}

async fn send(c: &Cluster, topic: &str, msgs: Vec<Message>) {
    let p = Producer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group(format!("{topic}-pg"))
        .build()
        .unwrap();
    p.start().await.unwrap();
    for m in msgs {
        assert_eq!(p.send(m).await.unwrap().status, SendStatus::SendOk);
    }
    p.shutdown().await;
}

fn body(m: &ReceivedMessage) -> String {
    String::from_utf8_lossy(&m.message.body).into_owned()
}

/// Receives until `stop` says so or `within` passed.
async fn receive_until(
    c: &SimpleConsumer,
    invisible: Duration,
    within: Duration,
    mut on: impl FnMut(ReceivedMessage) -> bool,
) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for m in c.receive(32, invisible).await.unwrap() {
            if on(m) {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_once_across_brokers_and_acked_ones_stay_gone() {
    let c = Cluster::start(&["broker-a", "broker-b"]).await;
    c.create_topic("Simple", 4).await;
    let sent: BTreeSet<String> = (0..60).map(|i| format!("m{i}")).collect();
    send(
        &c,
        "Simple",
        sent.iter()
            .map(|b| Message::new("Simple", b.clone()))
            .collect(),
    )
    .await;

    let sc = consumer(&c, "simple-g", "Simple");
    sc.start().await.unwrap();
    let mut got = BTreeSet::new();
    let mut brokers = BTreeSet::new();
    let mut dup = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < sent.len() && Instant::now() < deadline {
        let batch = sc.receive(32, Duration::from_secs(5)).await.unwrap();
        for m in &batch {
            brokers.insert(m.message.broker_name.clone());
            assert_eq!(m.message.topic, "Simple");
            assert_eq!(m.delivery_attempt, 1);
            if !got.insert(body(m)) {
                dup.push(body(m));
            }
        }
        // Acked at once, well within the invisible time.
        for m in &batch {
            sc.ack(m).await.unwrap();
        }
    }
    assert_eq!(got, sent);
    assert!(dup.is_empty(), "delivered twice before any expiry: {dup:?}");
    assert_eq!(brokers.len(), 2, "both brokers served: {brokers:?}");
    // Past the invisible time: nothing comes back.
    let mut again = Vec::new();
    receive_until(&sc, Duration::from_secs(5), Duration::from_secs(8), |m| {
        again.push(body(&m));
        false
    })
    .await;
    assert!(again.is_empty(), "acked messages came back: {again:?}");
    sc.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unacked_comes_back_and_change_invisible_duration_holds_it() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Again", 2).await;
    send(
        &c,
        "Again",
        vec![Message::new("Again", "lost"), Message::new("Again", "held")],
    )
    .await;
    let sc = consumer(&c, "again-g", "Again");
    sc.start().await.unwrap();

    let mut first = Vec::new();
    receive_until(&sc, Duration::from_secs(2), Duration::from_secs(20), |m| {
        first.push(m);
        first.len() == 2
    })
    .await;
    assert_eq!(first.len(), 2);
    let mut held = first.into_iter().find(|m| body(m) == "held").unwrap();
    // "held" is extended to 60 s; "lost" is neither acked nor extended.
    let old_handle = held.receipt_handle.clone();
    sc.change_invisible_duration(&mut held, Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(held.receipt_handle, old_handle);

    let mut back = None;
    receive_until(&sc, Duration::from_secs(30), Duration::from_secs(30), |m| {
        assert_ne!(body(&m), "held", "an extended message came back early");
        back = Some(m);
        true
    })
    .await;
    let back = back.expect("the un-acked message came back");
    assert_eq!(body(&back), "lost");
    assert_eq!(
        back.message.topic, "Again",
        "shown under the subscribed topic"
    );
    assert_eq!(back.delivery_attempt, 2);
    sc.ack(&back).await.unwrap();
    // The new handle acks "held"; the old one no longer names a delivery.
    sc.ack(&held).await.unwrap();
    let mut later = Vec::new();
    receive_until(&sc, Duration::from_secs(3), Duration::from_secs(5), |m| {
        later.push(body(&m));
        false
    })
    .await;
    assert!(later.is_empty(), "acked messages came back: {later:?}");
    sc.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql92_and_tag_subscriptions_filter_on_the_broker() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Filtered", 2).await;
    let msgs = (0..10)
        .map(|i| {
            Message::new("Filtered", format!("f{i}"))
                .with_tags(if i % 2 == 0 { "even" } else { "odd" })
                .with_property("n", i.to_string())
        })
        .collect();
    send(&c, "Filtered", msgs).await;

    let sql = SimpleConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("sql-g")
        .subscribe_sql("Filtered", "n BETWEEN 3 AND 6")
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .await_duration(Duration::from_millis(300))
        .build()
        .unwrap();
    sql.start().await.unwrap();
    let tag = SimpleConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("tag-g")
        .subscribe("Filtered", "odd")
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .await_duration(Duration::from_millis(300))
        .build()
        .unwrap();
    tag.start().await.unwrap();
    for (sc, want) in [
        (&sql, vec!["f3", "f4", "f5", "f6"]),
        (&tag, vec!["f1", "f3", "f5", "f7", "f9"]),
    ] {
        let want: BTreeSet<String> = want.into_iter().map(String::from).collect();
        let mut got = BTreeSet::new();
        receive_until(sc, Duration::from_secs(30), Duration::from_secs(8), |m| {
            got.insert(body(&m));
            false
        })
        .await;
        assert_eq!(got, want, "group {}", sc.group());
        sc.shutdown().await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Args", 1).await;
    let sc = consumer(&c, "args-g", "Args");
    assert!(matches!(
        sc.receive(1, Duration::from_secs(1)).await,
        Err(ClientError::NotRunning(_))
    ));
    sc.start().await.unwrap();
    for (max, inv) in [(0, 1), (33, 1), (1, 0), (1, 13 * 3600)] {
        assert!(
            matches!(
                sc.receive(max, Duration::from_secs(inv)).await,
                Err(ClientError::InvalidArgument(_))
            ),
            "max {max} invisible {inv}s"
        );
    }
    send(&c, "Args", vec![Message::new("Args", "a")]).await;
    let mut real = None;
    receive_until(&sc, Duration::from_secs(30), Duration::from_secs(20), |m| {
        real = Some(m);
        true
    })
    .await;
    let real = real.expect("the message");
    let mut bogus = real.clone();
    bogus.receipt_handle = "not a handle".into();
    assert!(matches!(
        sc.ack(&bogus).await,
        Err(ClientError::InvalidArgument(_))
    ));
    assert!(matches!(
        sc.change_invisible_duration(&mut bogus, Duration::from_secs(1))
            .await,
        Err(ClientError::InvalidArgument(_))
    ));
    assert!(SimpleConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("bad group name with spaces")
        .build()
        .is_err());
    sc.ack(&real).await.unwrap();
    sc.shutdown().await;
    c.shutdown().await;
}

/// `ack_many`: one BATCH_ACK_MESSAGE per broker settles every message it
/// names (also ones that came back through the retry topic); the one left
/// out comes back after its invisible time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_ack_settles_what_it_names_and_nothing_else() {
    let c = Cluster::start(&["broker-a", "broker-b"]).await;
    c.create_topic("Batch", 2).await;
    let sent: BTreeSet<String> = (0..20).map(|i| format!("b{i}")).collect();
    send(
        &c,
        "Batch",
        sent.iter()
            .map(|b| Message::new("Batch", b.clone()))
            .collect(),
    )
    .await;
    let sc = consumer(&c, "batch-g", "Batch");
    sc.start().await.unwrap();
    let mut got = Vec::new();
    receive_until(&sc, Duration::from_secs(3), Duration::from_secs(20), |m| {
        got.push(m);
        got.len() == sent.len()
    })
    .await;
    assert_eq!(got.len(), sent.len());
    let brokers: BTreeSet<String> = got.iter().map(|m| m.message.broker_name.clone()).collect();
    assert_eq!(
        brokers.len(),
        2,
        "both brokers in one batch ack: {brokers:?}"
    );
    // All but one acked in one call.
    let left = got.pop().unwrap();
    sc.ack_many(&got).await.unwrap();

    let mut back = Vec::new();
    receive_until(&sc, Duration::from_secs(30), Duration::from_secs(20), |m| {
        back.push(m);
        false
    })
    .await;
    let bodies: Vec<String> = back.iter().map(body).collect();
    assert_eq!(
        bodies,
        vec![body(&left)],
        "only the one left out comes back"
    );
    // A retried delivery (from the retry topic) is batch-acked too.
    sc.ack_many(&back).await.unwrap();
    let mut later = Vec::new();
    receive_until(&sc, Duration::from_secs(3), Duration::from_secs(8), |m| {
        later.push(body(&m));
        false
    })
    .await;
    assert!(
        later.is_empty(),
        "batch-acked messages came back: {later:?}"
    );
    sc.shutdown().await;
    c.shutdown().await;
}
