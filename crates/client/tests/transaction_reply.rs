//! The Rust client's transactional producer (commit, rollback, unknown
//! settled by check-back) and request-reply, against in-process brokers.

mod cluster;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apogee_client::consumer::ConsumeFromWhere;
use apogee_client::{
    create_reply, ClientError, ConcurrentlyFn, ConsumeConcurrentlyStatus, LocalTransactionState,
    Message, MessageExt, Producer, PushConsumer, SendStatus,
};
use cluster::{wait_until, Cluster};
use parking_lot::Mutex;

fn collect(c: &Cluster, group: &str, topic: &str, seen: Arc<Mutex<Vec<String>>>) -> PushConsumer {
    PushConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group(group)
        .subscribe(topic, "*")
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .rebalance_interval(Duration::from_secs(2))
        .broker_suspend_max_time(Duration::from_secs(1))
        .listener_concurrently(ConcurrentlyFn(move |msgs: &[MessageExt], _ctx: &mut _| {
            seen.lock().extend(
                msgs.iter()
                    .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
            );
            ConsumeConcurrentlyStatus::Success
        }))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_rollback_and_check_back() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Tx", 2).await;
    let checks = Arc::new(AtomicUsize::new(0));
    let ch = Arc::clone(&checks);
    let p = Producer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("tx-pg")
        .transaction_checker(move |m: &MessageExt| {
            ch.fetch_add(1, Ordering::SeqCst);
            // "unknown-commit" was committed locally after all; the rest not.
            if m.body.as_ref() == b"unknown-commit" {
                LocalTransactionState::Commit
            } else {
                LocalTransactionState::Rollback
            }
        })
        .build()
        .unwrap();
    p.start().await.unwrap();
    let mut ran = Vec::new();
    for (body, decide) in [
        ("commit", LocalTransactionState::Commit),
        ("rollback", LocalTransactionState::Rollback),
        ("unknown-commit", LocalTransactionState::Unknown),
        ("unknown-rollback", LocalTransactionState::Unknown),
    ] {
        let r = p
            .send_in_transaction(Message::new("Tx", body), |m, sent| {
                ran.push((String::from_utf8_lossy(&m.body).into_owned(), sent.status));
                decide
            })
            .await
            .unwrap();
        assert_eq!(r.send.status, SendStatus::SendOk);
        assert_eq!(r.state, decide);
    }
    assert_eq!(ran.len(), 4, "the local transaction ran once per message");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let cons = collect(&c, "tx-cg", "Tx", Arc::clone(&seen));
    cons.start().await.unwrap();
    assert!(
        wait_until(30, || seen.lock().len() >= 2).await,
        "committed messages arrive: {:?}",
        seen.lock()
    );
    assert!(
        wait_until(30, || checks.load(Ordering::SeqCst) >= 2).await,
        "both unknown ones are checked back"
    );
    // Longer than a few check rounds: nothing else shows up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got: BTreeSet<String> = seen.lock().iter().cloned().collect();
    let want: BTreeSet<String> = ["commit", "unknown-commit"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        seen.lock().len(),
        2,
        "each committed message once: {:?}",
        seen.lock()
    );

    // A plain producer cannot start transactions.
    let plain = Producer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("plain-pg")
        .build()
        .unwrap();
    plain.start().await.unwrap();
    assert!(matches!(
        plain
            .send_in_transaction(Message::new("Tx", "x"), |_, _| {
                LocalTransactionState::Commit
            })
            .await,
        Err(ClientError::InvalidArgument(_))
    ));
    plain.shutdown().await;
    cons.shutdown().await;
    p.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_gets_the_reply_and_times_out_without_one() {
    let c = Cluster::start(&["broker-a"]).await;
    c.create_topic("Req", 2).await;
    let responder = Arc::new(
        Producer::builder()
            .namesrv_addr(c.ns_addr.clone())
            .group("reply-pg")
            .build()
            .unwrap(),
    );
    responder.start().await.unwrap();
    let r = Arc::clone(&responder);
    let server = PushConsumer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("req-cg")
        .subscribe("Req", "*")
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .rebalance_interval(Duration::from_secs(2))
        .broker_suspend_max_time(Duration::from_secs(1))
        .listener_concurrently(ConcurrentlyFn(move |msgs: &[MessageExt], _ctx: &mut _| {
            for m in msgs {
                if m.body.as_ref() == b"ignore me" {
                    continue;
                }
                let mut body = b"re: ".to_vec();
                body.extend_from_slice(&m.body);
                let reply = create_reply(m, body).expect("a request message");
                let r = Arc::clone(&r);
                tokio::spawn(async move {
                    let _ = r.send(reply).await;
                });
            }
            ConsumeConcurrentlyStatus::Success
        }))
        .build()
        .unwrap();
    server.start().await.unwrap();

    let requester = Producer::builder()
        .namesrv_addr(c.ns_addr.clone())
        .group("req-pg")
        .build()
        .unwrap();
    requester.start().await.unwrap();
    for i in 0..3 {
        let reply = requester
            .request(
                Message::new("Req", format!("q{i}")),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        assert_eq!(reply.body.as_ref(), format!("re: q{i}").as_bytes());
    }
    let err = requester
        .request(Message::new("Req", "ignore me"), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err}");
    // A message that is no request cannot be replied to.
    assert!(create_reply(&MessageExt::from_message(Message::new("Req", "x")), "y").is_err());
    requester.shutdown().await;
    server.shutdown().await;
    responder.shutdown().await;
    c.shutdown().await;
}
