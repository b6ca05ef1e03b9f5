//! Broker ↔ NameServer: registration at start (every topic routable,
//! TBW102 included), re-registration soon after a topic change (a consumer
//! heartbeat creating `%RETRY%<group>`), and unregistration on shutdown.

mod ba_common;

use std::time::Duration;

use apogee_protocol::body::TopicConfig;
use apogee_protocol::code::response_code;
use apogee_remoting::{ClientConfig, RemotingClient};
use ba_common::*;

async fn wait_route(client: &RemotingClient, namesrv: &str, topic: &str, present: bool) -> bool {
    for _ in 0..250 {
        if route(client, namesrv, topic).await.is_some() == present {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_topics_appear_in_routes_and_vanish_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv(dir.path()).await;
    let ns_addr = ns.local_addr().to_string();
    let broker = Broker::start(broker_config(
        &dir.path().join("store"),
        Some(ns_addr.clone()),
    ))
    .await;
    let client = RemotingClient::new(ClientConfig::default());

    // Registered before start returned: TBW102 is routable with RW+INHERIT.
    let r = route(&client, &ns_addr, "TBW102")
        .await
        .expect("TBW102 route");
    assert_eq!(r.broker_datas.len(), 1);
    let bd = &r.broker_datas[0];
    assert_eq!(bd.broker_name, "broker-a");
    assert_eq!(bd.cluster, "DefaultCluster");
    assert_eq!(bd.broker_addrs.get(&0), Some(&broker.addr));
    assert_eq!(r.queue_datas[0].write_queue_nums, 8);
    assert_eq!(r.queue_datas[0].perm, 7);
    for t in [
        "broker-a",
        "DefaultCluster",
        "SCHEDULE_TOPIC_XXXX",
        "SELF_TEST_TOPIC",
    ] {
        assert!(
            route(&client, &ns_addr, t).await.is_some(),
            "{t} not routable"
        );
    }

    // A consumer heartbeat creates %RETRY%g1, which is registered soon.
    assert!(route(&client, &ns_addr, "%RETRY%g1").await.is_none());
    let member = Member::new("127.0.0.1@m1");
    let resp = member.heartbeat(&broker.addr, "g1", &["T1"]).await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_eq!(resp.ext("IS_SUPPORT_HEART_BEAT_V2"), Some("true"));
    assert!(broker.ctx().topics.get("%RETRY%g1").is_some());
    assert!(
        wait_route(&client, &ns_addr, "%RETRY%g1", true).await,
        "retry topic never registered"
    );

    // So is a topic created by an admin path.
    broker.ctx().topics.update(TopicConfig {
        topic_name: "Created".into(),
        read_queue_nums: 3,
        write_queue_nums: 3,
        ..Default::default()
    });
    assert!(wait_route(&client, &ns_addr, "Created", true).await);
    let r = route(&client, &ns_addr, "Created").await.unwrap();
    assert_eq!(r.queue_datas[0].read_queue_nums, 3);

    // Shutdown unregisters: the broker's routes are gone at once.
    broker.stop().await;
    assert!(route(&client, &ns_addr, "TBW102").await.is_none());
    client.close().await;
    ns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_registration_restores_a_forgotten_broker() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv(dir.path()).await;
    let ns_addr = ns.local_addr().to_string();
    let mut cfg = broker_config(&dir.path().join("store"), Some(ns_addr.clone()));
    cfg.register_name_server_period = Duration::from_millis(200);
    let broker = Broker::start(cfg).await;
    let client = RemotingClient::new(ClientConfig::default());
    assert!(route(&client, &ns_addr, "TBW102").await.is_some());

    // The NameServer forgets the broker; the next periodic registration
    // brings it back.
    ns.routes()
        .unregister("DefaultCluster", &broker.addr, "broker-a", 0);
    assert!(route(&client, &ns_addr, "TBW102").await.is_none());
    assert!(wait_route(&client, &ns_addr, "TBW102", true).await);

    broker.stop().await;
    client.close().await;
    ns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_namesrv_addresses_all_get_the_registration() {
    let dir = tempfile::tempdir().unwrap();
    let ns1 = start_namesrv(&dir.path().join("ns1")).await;
    let ns2 = start_namesrv(&dir.path().join("ns2")).await;
    let addrs = format!("{};{}", ns1.local_addr(), ns2.local_addr());
    let broker = Broker::start(broker_config(&dir.path().join("store"), Some(addrs))).await;
    let client = RemotingClient::new(ClientConfig::default());
    for ns in [&ns1, &ns2] {
        assert!(route(&client, &ns.local_addr().to_string(), "TBW102")
            .await
            .is_some());
    }
    broker.stop().await;
    client.close().await;
    ns1.shutdown().await;
    ns2.shutdown().await;
}
