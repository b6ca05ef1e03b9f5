//! `apogee standalone` as a real process: the published
//! `rocketmq-client-rust` admin sees its broker in the cluster info and a
//! route for TBW102; SIGTERM shuts it down cleanly (exit 0, config and
//! offset files written, store closed without an abort marker); `apogee
//! broker` joins a separate `apogee namesrv` and leaves it on SIGTERM.

mod support;

use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    ClientRuntime, ClientRuntimeConfig, DefaultMQAdminExt, RouteAdmin, TopicAdmin,
};
use rocketmq_observability::TelemetryRuntimeGuard;
use rocketmq_runtime::RuntimeOwner;

/// (brokerName, master address) pairs from the cluster info.
type Brokers = Vec<(String, String)>;

/// The brokers in the cluster info, and TBW102's (writeQueueNums, perm).
fn examine(namesrv: &str) -> (Brokers, Option<(u32, u32)>) {
    let owner = RuntimeOwner::new().unwrap();
    let telemetry = TelemetryRuntimeGuard::noop();
    let client_rt = ClientRuntime::try_new(
        owner.root_context().component("ba-standalone-test"),
        ClientRuntimeConfig::default(),
        telemetry.handle(),
    )
    .unwrap();
    let out = owner.block_on(async {
        let mut admin = DefaultMQAdminExt::new(client_rt.clone());
        admin.set_namesrv_addr(namesrv);
        admin.start().await.expect("admin start");
        let cluster = RouteAdmin::examine_broker_cluster_info(&admin)
            .await
            .expect("cluster info");
        let route =
            TopicAdmin::examine_topic_route_info(&admin, CheetahString::from("TBW102")).await;
        admin.shutdown().await;
        let brokers = cluster
            .broker_addr_table
            .unwrap_or_default()
            .iter()
            .map(|(name, bd)| {
                (
                    name.to_string(),
                    bd.broker_addrs()
                        .get(&0)
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>();
        let tbw = match route {
            Ok(Some(r)) => r.queue_datas.first().map(|q| (q.write_queue_nums, q.perm)),
            _ => None,
        };
        (brokers, tbw)
    });
    let _ = owner.block_on(client_rt.shutdown());
    out
}

#[test]
fn standalone_is_seen_by_rocketmq_admin_and_exits_cleanly_on_sigterm() {
    let mut sa = support::start_standalone(&[]);
    let (brokers, tbw) = examine(&sa.namesrv.to_string());
    assert_eq!(
        brokers,
        vec![("broker-a".to_string(), sa.broker.to_string())],
        "cluster info"
    );
    assert_eq!(tbw, Some((8, 7)), "TBW102 route (8 queues, RW+INHERIT)");

    let status = sa.terminate();
    assert!(status.success(), "exit status {status:?}");
    let data = sa.data_dir();
    assert!(data.join("config/topics.json").exists());
    assert!(data.join("config/consumerOffset.json").exists());
    // The store was closed cleanly: no abort marker left behind.
    assert!(!data.join("abort").exists());
}

#[test]
fn broker_process_registers_with_a_separate_namesrv() {
    let ns = support::start_namesrv(&[]);
    let mut broker = support::start_broker(
        &ns.addr.to_string(),
        &[
            "--set",
            "brokerName=broker-x",
            "--set",
            "brokerClusterName=C1",
        ],
    );
    let (brokers, tbw) = examine(&ns.addr.to_string());
    assert_eq!(
        brokers,
        vec![("broker-x".to_string(), broker.addr.to_string())]
    );
    assert!(tbw.is_some());
    let status = support::terminate(&mut broker.child);
    assert!(status.success(), "exit status {status:?}");
    // Unregistered on the way out.
    let (brokers, _) = examine(&ns.addr.to_string());
    assert!(brokers.is_empty(), "{brokers:?}");
}

#[test]
fn bad_config_value_fails_with_the_key_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apogee"))
        .args(["broker", "--set", "listenPort=notaport", "-p"])
        .output()
        .expect("run apogee");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listenPort"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apogee"))
        .args(["broker", "-n", "10.0.0.1:9876;10.0.0.2:9876", "-p"])
        .output()
        .expect("run apogee");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("namesrvAddr=10.0.0.1\\:9876;10.0.0.2\\:9876")
            || text.contains("namesrvAddr=10.0.0.1:9876;10.0.0.2:9876"),
        "{text}"
    );
}
