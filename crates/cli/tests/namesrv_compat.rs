//! `apogee namesrv` against a RocketMQ client we did not write: our own
//! remoting client registers fake brokers, then the published
//! `rocketmq-client-rust` admin reads the cluster and the routes back.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use apogee_protocol::body::topic::{
    DataVersion, RegisterBrokerBody, TopicConfig, TopicConfigAndMappingSerializeWrapper,
};
use apogee_protocol::code::request_code;
use apogee_protocol::header::namesrv::RegisterBrokerRequestHeader;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};
use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    ClientRuntime, ClientRuntimeConfig, DefaultMQAdminExt, RouteAdmin, TopicAdmin,
};
use rocketmq_observability::TelemetryRuntimeGuard;
use rocketmq_runtime::RuntimeOwner;

fn topic(name: &str, queues: i32) -> TopicConfig {
    TopicConfig {
        read_queue_nums: queues,
        write_queue_nums: queues,
        perm: 6,
        ..TopicConfig::new(name)
    }
}

async fn register(
    client: &RemotingClient,
    namesrv: &str,
    broker: &str,
    addr: &str,
    topics: &[(&str, i32)],
) {
    let table: BTreeMap<String, TopicConfig> = topics
        .iter()
        .map(|(t, n)| (t.to_string(), topic(t, *n)))
        .collect();
    let body = RegisterBrokerBody {
        topic_config_serialize_wrapper: TopicConfigAndMappingSerializeWrapper {
            topic_config_table: table,
            data_version: DataVersion::now(),
            ..Default::default()
        },
        filter_server_list: Vec::new(),
    }
    .encode();
    let header = RegisterBrokerRequestHeader {
        broker_name: broker.to_string(),
        broker_addr: addr.to_string(),
        cluster_name: "DefaultCluster".to_string(),
        ha_server_addr: "127.0.0.1:10912".to_string(),
        broker_id: 0,
        heartbeat_timeout_millis: None,
        enable_acting_master: Some(false),
        compressed: false,
        body_crc32: (crc32fast::hash(&body) & 0x7FFF_FFFF) as i32,
        zone_name: None,
    };
    let req = RemotingCommand::request(request_code::REGISTER_BROKER)
        .with_header(&header)
        .with_body(body);
    let resp = client
        .invoke(namesrv, req, Duration::from_secs(5))
        .await
        .expect("register broker");
    assert_eq!(resp.code, 0, "registration failed: {:?}", resp.remark);
}

#[test]
fn rocketmq_client_rust_reads_routes_registered_by_our_client() {
    let ns = support::start_namesrv(&[]);
    let ns_addr = ns.addr.to_string();

    // Two fake brokers register over our own remoting client.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(async {
        let client = RemotingClient::new(ClientConfig::default());
        register(
            &client,
            &ns_addr,
            "broker-a",
            "127.0.0.1:10911",
            &[("TopicTest", 4), ("OnlyA", 8)],
        )
        .await;
        register(
            &client,
            &ns_addr,
            "broker-b",
            "127.0.0.1:20911",
            &[("TopicTest", 2)],
        )
        .await;
        client
    });
    // `client` stays connected until the end: the NameServer drops a
    // broker's routes as soon as the connection it registered on closes.

    // The published RocketMQ Rust client reads them back.
    let owner = RuntimeOwner::new().unwrap();
    let telemetry = TelemetryRuntimeGuard::noop();
    let client_rt = ClientRuntime::try_new(
        owner.root_context().component("compat-test"),
        ClientRuntimeConfig::default(),
        telemetry.handle(),
    )
    .unwrap();
    let (cluster, route, only_a, missing) = owner.block_on(async {
        let mut admin = DefaultMQAdminExt::new(client_rt.clone());
        admin.set_namesrv_addr(ns_addr.as_str());
        admin.start().await.expect("admin start");
        let cluster = RouteAdmin::examine_broker_cluster_info(&admin)
            .await
            .expect("cluster info");
        let route = TopicAdmin::examine_topic_route_info(&admin, CheetahString::from("TopicTest"))
            .await
            .expect("route of TopicTest");
        let only_a = TopicAdmin::examine_topic_route_info(&admin, CheetahString::from("OnlyA"))
            .await
            .expect("route of OnlyA");
        let missing =
            TopicAdmin::examine_topic_route_info(&admin, CheetahString::from("NoSuchTopic")).await;
        admin.shutdown().await;
        (cluster, route, only_a, missing)
    });
    let _ = owner.block_on(client_rt.shutdown());
    rt.block_on(client.close());

    // Cluster info: both brokers, master addresses, cluster membership.
    let brokers = cluster.broker_addr_table.expect("brokerAddrTable");
    assert_eq!(brokers.len(), 2);
    let a = &brokers[&CheetahString::from("broker-a")];
    assert_eq!(a.cluster(), "DefaultCluster");
    assert_eq!(
        a.broker_addrs().get(&0).map(|s| s.as_str()),
        Some("127.0.0.1:10911")
    );
    let b = &brokers[&CheetahString::from("broker-b")];
    assert_eq!(
        b.broker_addrs().get(&0).map(|s| s.as_str()),
        Some("127.0.0.1:20911")
    );
    let clusters = cluster.cluster_addr_table.expect("clusterAddrTable");
    let members = &clusters[&CheetahString::from("DefaultCluster")];
    assert!(members.contains(&CheetahString::from("broker-a")));
    assert!(members.contains(&CheetahString::from("broker-b")));

    // Route of a topic on both brokers.
    let route = route.expect("TopicTest has a route");
    assert_eq!(route.queue_datas.len(), 2);
    let qa = route
        .queue_datas
        .iter()
        .find(|q| q.broker_name.as_str() == "broker-a")
        .expect("queue data of broker-a");
    assert_eq!(
        (qa.read_queue_nums, qa.write_queue_nums, qa.perm),
        (4, 4, 6)
    );
    let qb = route
        .queue_datas
        .iter()
        .find(|q| q.broker_name.as_str() == "broker-b")
        .expect("queue data of broker-b");
    assert_eq!((qb.read_queue_nums, qb.write_queue_nums), (2, 2));
    assert_eq!(route.broker_datas.len(), 2);

    // Route of a topic on one broker only.
    let only_a = only_a.expect("OnlyA has a route");
    assert_eq!(only_a.queue_datas.len(), 1);
    assert_eq!(only_a.queue_datas[0].write_queue_nums, 8);
    assert_eq!(only_a.broker_datas.len(), 1);
    assert_eq!(only_a.broker_datas[0].broker_name().as_str(), "broker-a");

    // An unknown topic has no route (TOPIC_NOT_EXIST on the wire).
    assert!(
        !matches!(missing, Ok(Some(_))),
        "unknown topic must not have a route: {missing:?}"
    );
}
