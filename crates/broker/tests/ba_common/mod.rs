//! Shared helpers of BA's integration tests: an in-process NameServer and
//! broker on 127.0.0.1 with ephemeral ports and a tempdir store, and client
//! helpers (heartbeats, a client that records server-pushed requests).

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_broker::{BrokerConfig, BrokerContext, BrokerController};
use apogee_namesrv::{NameServer, NamesrvConfig};
use apogee_protocol::body::{
    ConsumerData, HeartbeatData, MessageModel, ProducerData, SubscriptionData,
};
use apogee_protocol::code::request_code;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ClientConfig, ProcessorRegistry, RemotingClient};
use tokio::sync::mpsc;

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn start_namesrv(dir: &Path) -> NameServer {
    let cfg = NamesrvConfig {
        listen_port: 0,
        bind_address: "127.0.0.1".into(),
        kv_config_path: dir.join("kvConfig.json"),
        ..NamesrvConfig::default()
    };
    NameServer::start(cfg).await.expect("namesrv start")
}

/// A broker config for tests: loopback, ephemeral ports, small store files.
pub fn broker_config(root: &Path, namesrv: Option<String>) -> BrokerConfig {
    let mut cfg = BrokerConfig {
        namesrv_addr: namesrv,
        broker_ip1: "127.0.0.1".into(),
        bind_address: "127.0.0.1".into(),
        listen_port: 0,
        ..Default::default()
    };
    cfg.store.store_path_root_dir = root.to_path_buf();
    // Tests must not depend on how full the machine's disk is.
    cfg.store.disk_space_warning_level_ratio = 100;
    cfg.store.disk_space_clean_forcibly_ratio = 100;
    cfg.store.disk_max_used_space_ratio = 100;
    cfg.store.mapped_file_size_commit_log = 4 * 1024 * 1024;
    cfg.store.mapped_file_size_consume_queue = 20 * 1000;
    cfg
}

pub struct Broker {
    pub ctl: BrokerController,
    pub addr: String,
    pub client: RemotingClient,
}

impl Broker {
    pub async fn start(cfg: BrokerConfig) -> Broker {
        let ctl = BrokerController::start(cfg).await.expect("broker start");
        Broker {
            addr: ctl.local_addr().to_string(),
            ctl,
            client: RemotingClient::new(ClientConfig::default()),
        }
    }

    pub fn ctx(&self) -> &Arc<BrokerContext> {
        self.ctl.context()
    }

    pub async fn call(&self, cmd: RemotingCommand) -> RemotingCommand {
        self.client
            .invoke(&self.addr, cmd, TIMEOUT)
            .await
            .expect("invoke")
    }

    pub async fn stop(self) {
        self.client.close().await;
        self.ctl.shutdown().await;
    }
}

/// A client connection that records every request the broker pushes to it.
pub struct Member {
    pub client_id: String,
    pub client: RemotingClient,
    pub pushed: mpsc::UnboundedReceiver<RemotingCommand>,
}

impl Member {
    pub fn new(client_id: &str) -> Member {
        let registry = ProcessorRegistry::new();
        let (tx, rx) = mpsc::unbounded_channel();
        registry.register(
            request_code::NOTIFY_CONSUMER_IDS_CHANGED,
            processor_fn(move |_ctx, req: RemotingCommand| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(req);
                    Ok(None)
                }
            }),
        );
        Member {
            client_id: client_id.to_string(),
            client: RemotingClient::with_processors(ClientConfig::default(), registry),
            pushed: rx,
        }
    }

    pub async fn call(&self, addr: &str, cmd: RemotingCommand) -> RemotingCommand {
        self.client
            .invoke(addr, cmd, TIMEOUT)
            .await
            .expect("invoke")
    }

    /// Sends a consumer heartbeat for `group` subscribing `topics` with `*`.
    pub async fn heartbeat(&self, addr: &str, group: &str, topics: &[&str]) -> RemotingCommand {
        let data = HeartbeatData {
            client_id: self.client_id.clone(),
            consumer_data_set: vec![consumer_data(group, topics)],
            ..Default::default()
        };
        let cmd = RemotingCommand::request(request_code::HEART_BEAT).with_body(data.encode());
        self.call(addr, cmd).await
    }

    /// Sends a producer heartbeat for `group`.
    pub async fn producer_heartbeat(&self, addr: &str, group: &str) -> RemotingCommand {
        let data = HeartbeatData {
            client_id: self.client_id.clone(),
            producer_data_set: vec![ProducerData {
                group_name: group.into(),
            }],
            ..Default::default()
        };
        let cmd = RemotingCommand::request(request_code::HEART_BEAT).with_body(data.encode());
        self.call(addr, cmd).await
    }

    /// The next pushed request within `wait`, if any.
    pub async fn next_push(&mut self, wait: Duration) -> Option<RemotingCommand> {
        tokio::time::timeout(wait, self.pushed.recv())
            .await
            .ok()
            .flatten()
    }

    /// Drops pushes already received.
    pub fn drain(&mut self) {
        while self.pushed.try_recv().is_ok() {}
    }
}

pub fn consumer_data(group: &str, topics: &[&str]) -> ConsumerData {
    ConsumerData {
        group_name: group.into(),
        message_model: MessageModel::Clustering,
        subscription_data_set: topics
            .iter()
            .map(|t| SubscriptionData::tag(*t, "*"))
            .collect(),
        ..Default::default()
    }
}

/// Polls `cond` until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `tracing` writer that keeps every log line, for tests that count them.
#[derive(Clone, Default)]
pub struct Capture(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock())
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The lines holding every one of `parts`.
    pub fn matching(&self, parts: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect()
    }
}

/// UPDATE_AND_CREATE_TOPIC for `topic` with 4 read / 4 write queues.
pub fn create_topic(topic: String) -> RemotingCommand {
    RemotingCommand::request(request_code::UPDATE_AND_CREATE_TOPIC).with_header(
        &apogee_protocol::header::CreateTopicRequestHeader {
            topic,
            default_topic: "TBW102".into(),
            read_queue_nums: 4,
            write_queue_nums: 4,
            perm: 6,
            topic_filter_type: "SINGLE_TAG".into(),
            ..Default::default()
        },
    )
}

/// The NameServer's route for `topic`; None when it answers TOPIC_NOT_EXIST
/// (any other answer fails the test).
pub async fn route(
    client: &RemotingClient,
    namesrv: &str,
    topic: &str,
) -> Option<apogee_protocol::body::TopicRouteData> {
    use apogee_protocol::code::response_code;
    let h = apogee_protocol::header::GetRouteInfoRequestHeader {
        topic: topic.into(),
        ..Default::default()
    };
    let cmd = RemotingCommand::request(request_code::GET_ROUTEINFO_BY_TOPIC).with_header(&h);
    let resp = client
        .invoke(namesrv, cmd, TIMEOUT)
        .await
        .expect("route call");
    if resp.code != response_code::SUCCESS {
        assert_eq!(
            resp.code,
            response_code::TOPIC_NOT_EXIST,
            "route of {topic}: {:?}",
            resp.remark
        );
        return None;
    }
    Some(
        apogee_protocol::body::TopicRouteData::decode(resp.body.as_deref().unwrap_or_default())
            .expect("route body"),
    )
}
