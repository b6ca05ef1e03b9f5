//! LOCK_BATCH_MQ / UNLOCK_BATCH_MQ over TCP (ownership, release, expiry,
//! bad bodies) and the VIP port: same service, pulls refused.

mod ba_common;

use std::collections::BTreeSet;
use std::time::Duration;

use apogee_protocol::body::{LockBatchRequestBody, LockBatchResponseBody, MessageQueue};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::PullMessageRequestHeader;
use apogee_protocol::RemotingCommand;
use ba_common::*;

fn mq(id: i32) -> MessageQueue {
    MessageQueue::new("T", "broker-a", id)
}

fn lock_body(client: &str, ids: &[i32]) -> Vec<u8> {
    LockBatchRequestBody {
        consumer_group: "g".into(),
        client_id: client.into(),
        only_this_broker: false,
        mq_set: ids.iter().map(|i| mq(*i)).collect(),
    }
    .encode()
}

async fn lock(broker: &Broker, client: &str, ids: &[i32]) -> BTreeSet<i32> {
    let resp = broker
        .call(
            RemotingCommand::request(request_code::LOCK_BATCH_MQ).with_body(lock_body(client, ids)),
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    LockBatchResponseBody::decode(resp.body.as_deref().unwrap_or(b"{}"))
        .expect("lock body")
        .lock_ok_mq_set
        .into_iter()
        .map(|m| m.queue_id)
        .collect()
}

async fn unlock(broker: &Broker, client: &str, ids: &[i32]) {
    let resp = broker
        .call(
            RemotingCommand::request(request_code::UNLOCK_BATCH_MQ)
                .with_body(lock_body(client, ids)),
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_unlock_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), None);
    // Long enough that no step below outlives it on a loaded machine.
    cfg.rebalance_lock_max_live_time = Duration::from_millis(2000);
    let broker = Broker::start(cfg).await;

    assert_eq!(lock(&broker, "c1", &[0, 1]).await, BTreeSet::from([0, 1]));
    assert_eq!(lock(&broker, "c2", &[1, 2]).await, BTreeSet::from([2]));
    // Renewal by the holder succeeds.
    assert_eq!(lock(&broker, "c1", &[0, 1]).await, BTreeSet::from([0, 1]));
    // Unlocking someone else's queue does nothing; unlocking one's own frees it.
    unlock(&broker, "c2", &[1]).await;
    assert_eq!(lock(&broker, "c2", &[1]).await, BTreeSet::new());
    unlock(&broker, "c1", &[1]).await;
    assert_eq!(lock(&broker, "c2", &[1]).await, BTreeSet::from([1]));
    // c1's lock on 0 expires without renewal.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(lock(&broker, "c2", &[0]).await, BTreeSet::from([0]));

    let resp = broker
        .call(RemotingCommand::request(request_code::LOCK_BATCH_MQ))
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(resp.remark.unwrap().contains("LockBatchRequestBody"));
    let resp = broker
        .call(RemotingCommand::request(request_code::UNLOCK_BATCH_MQ).with_body(&b"[1,2"[..]))
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    broker.stop().await;
}

fn pull(code: i32) -> RemotingCommand {
    RemotingCommand::request(code).with_header(&PullMessageRequestHeader {
        consumer_group: "g".into(),
        topic: "TBW102".into(),
        queue_id: 0,
        queue_offset: 0,
        max_msg_nums: 32,
        sys_flag: 0,
        commit_offset: 0,
        suspend_timeout_millis: 0,
        sub_version: 0,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_port_serves_everything_but_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_config(dir.path(), None)).await;
    let vip = broker.ctl.vip_addr().to_string();
    assert_ne!(vip, broker.addr);
    let m = Member::new("10.0.0.1@a");
    m.heartbeat(&broker.addr, "g", &["TBW102"]).await;

    for code in [request_code::PULL_MESSAGE, request_code::LITE_PULL_MESSAGE] {
        let resp = m.call(&vip, pull(code)).await;
        assert_eq!(resp.code, response_code::REQUEST_CODE_NOT_SUPPORTED);
        assert!(resp.remark.unwrap().contains("VIP"));
    }
    // The same pull on the main port is served.
    let resp = m.call(&broker.addr, pull(request_code::PULL_MESSAGE)).await;
    assert_ne!(resp.code, response_code::REQUEST_CODE_NOT_SUPPORTED);
    // Everything else works on the VIP port.
    assert_eq!(
        m.heartbeat(&vip, "g", &["TBW102"]).await.code,
        response_code::SUCCESS
    );
    m.client.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_listen_port_puts_vip_two_below() {
    // Find a free port pair by binding the main port first.
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        if port < 3 || std::net::TcpListener::bind(("127.0.0.1", port - 2)).is_err() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = broker_config(dir.path(), None);
        cfg.listen_port = port;
        let Ok(ctl) = apogee_broker::BrokerController::start(cfg).await else {
            continue; // lost a race for the port
        };
        assert_eq!(ctl.local_addr().port(), port);
        assert_eq!(ctl.vip_addr().port(), port - 2);
        assert_eq!(ctl.context().broker_addr, format!("127.0.0.1:{port}"));
        ctl.shutdown().await;
        return;
    }
    panic!("no free port pair found");
}
