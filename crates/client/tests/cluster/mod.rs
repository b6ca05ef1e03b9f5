//! An in-process NameServer plus real Apogee brokers on 127.0.0.1 with
//! ephemeral ports and tempdir stores, for end-to-end client tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apogee_broker::{BrokerConfig, BrokerController};
use apogee_client::AdminClient;
use apogee_namesrv::{NameServer, NamesrvConfig};
use apogee_protocol::body::TopicConfig;

pub struct Cluster {
    pub namesrv: NameServer,
    pub ns_addr: String,
    pub brokers: BTreeMap<String, BrokerController>,
    pub dir: tempfile::TempDir,
}

pub fn broker_config(root: &std::path::Path, ns: &str, name: &str) -> BrokerConfig {
    let mut cfg = BrokerConfig {
        namesrv_addr: Some(ns.to_string()),
        broker_ip1: "127.0.0.1".into(),
        bind_address: "127.0.0.1".into(),
        listen_port: 0,
        broker_name: name.to_string(),
        ..Default::default()
    };
    cfg.store.store_path_root_dir = root.join(name);
    // Tests must not depend on how full the machine's disk is.
    cfg.store.disk_space_warning_level_ratio = 100;
    cfg.store.disk_space_clean_forcibly_ratio = 100;
    cfg.store.disk_max_used_space_ratio = 100;
    cfg.store.mapped_file_size_commit_log = 4 * 1024 * 1024;
    cfg.store.mapped_file_size_consume_queue = 20 * 1000;
    // Check-backs within a test's patience.
    cfg.transaction_timeout = Duration::from_millis(1000);
    cfg.transaction_check_interval = Duration::from_millis(500);
    cfg
}

impl Cluster {
    pub async fn start(broker_names: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let namesrv = NameServer::start(NamesrvConfig {
            listen_port: 0,
            bind_address: "127.0.0.1".into(),
            kv_config_path: dir.path().join("kv.json"),
            ..Default::default()
        })
        .await
        .unwrap();
        let ns_addr = namesrv.local_addr().to_string();
        let mut brokers = BTreeMap::new();
        for name in broker_names {
            let b = BrokerController::start(broker_config(dir.path(), &ns_addr, name))
                .await
                .unwrap();
            brokers.insert(name.to_string(), b);
        }
        Cluster {
            namesrv,
            ns_addr,
            brokers,
            dir,
        }
    }

    pub fn addr(&self, broker: &str) -> String {
        self.brokers[broker].local_addr().to_string()
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::builder()
            .namesrv_addr(self.ns_addr.clone())
            .build()
            .unwrap()
    }

    /// Creates `topic` with `queues` queues on every broker and waits until
    /// the NameServer routes it to all of them.
    pub async fn create_topic(&self, topic: &str, queues: i32) {
        let admin = self.admin();
        for b in self.brokers.values() {
            let cfg = TopicConfig {
                read_queue_nums: queues,
                write_queue_nums: queues,
                perm: 6,
                ..TopicConfig::new(topic)
            };
            admin
                .create_topic(&b.local_addr().to_string(), &cfg)
                .await
                .unwrap();
            b.register_now().await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = admin.topic_route(topic).await {
                if r.queue_datas.len() == self.brokers.len() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "route of {topic} never appeared");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        admin.shutdown().await;
    }

    pub async fn stop_broker(&mut self, name: &str) {
        if let Some(b) = self.brokers.remove(name) {
            b.shutdown().await;
        }
    }

    pub async fn shutdown(mut self) {
        let names: Vec<String> = self.brokers.keys().cloned().collect();
        for n in names {
            self.stop_broker(&n).await;
        }
        self.namesrv.shutdown().await;
    }
}

/// Polls `cond` every 50 ms until it holds or `secs` pass.
pub async fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}
