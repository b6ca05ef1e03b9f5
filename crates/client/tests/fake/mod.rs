//! Test doubles: an in-process NameServer and fake brokers (a remoting
//! server answering sends, heartbeats and unregistrations from a script)
//! registered with it, for producer and admin tests that need no store.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use apogee_namesrv::{NameServer, NamesrvConfig};
use apogee_protocol::body::topic::{
    DataVersion, RegisterBrokerBody, TopicConfig, TopicConfigAndMappingSerializeWrapper,
};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::namesrv::RegisterBrokerRequestHeader;
use apogee_protocol::header::SendMessageResponseHeader;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{
    processor_fn, ClientConfig, ProcessorRegistry, RemotingClient, RemotingServer, ServerConfig,
};
use parking_lot::Mutex;

pub struct TestNamesrv {
    pub server: NameServer,
    pub addr: String,
    _dir: tempfile::TempDir,
}

pub async fn start_namesrv() -> TestNamesrv {
    let dir = tempfile::tempdir().unwrap();
    let config = NamesrvConfig {
        listen_port: 0,
        bind_address: "127.0.0.1".into(),
        kv_config_path: dir.path().join("kv.json"),
        ..Default::default()
    };
    let server = NameServer::start(config).await.unwrap();
    let addr = server.local_addr().to_string();
    TestNamesrv {
        server,
        addr,
        _dir: dir,
    }
}

/// One request a fake broker received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub code: i32,
    pub cmd: RemotingCommand,
}

/// A fake broker: answers from `script` first (codes), then SUCCESS.
pub struct FakeBroker {
    pub name: String,
    pub addr: String,
    pub server: RemotingServer,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub script: Arc<Mutex<VecDeque<i32>>>,
    /// When set, every send is answered with this code.
    pub always: Arc<Mutex<Option<i32>>>,
    registrar: RemotingClient,
}

impl FakeBroker {
    pub async fn start(name: &str) -> FakeBroker {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<Mutex<VecDeque<i32>>> = Arc::default();
        let always: Arc<Mutex<Option<i32>>> = Arc::default();
        let registry = ProcessorRegistry::new();
        let counter = Arc::new(Mutex::new(0i64));
        {
            let (seen, script, always) = (seen.clone(), script.clone(), always.clone());
            registry.set_default(processor_fn(move |ctx, req: RemotingCommand| {
                let (seen, script, always, counter) = (
                    seen.clone(),
                    script.clone(),
                    always.clone(),
                    counter.clone(),
                );
                async move {
                    seen.lock().push(Seen {
                        code: req.code,
                        cmd: req.clone(),
                    });
                    match req.code {
                        request_code::SEND_MESSAGE_V2 | request_code::SEND_BATCH_MESSAGE => {
                            let code = always
                                .lock()
                                .or_else(|| script.lock().pop_front())
                                .unwrap_or(response_code::SUCCESS);
                            if code != response_code::SUCCESS {
                                return Ok(Some(RemotingCommand::response(
                                    code,
                                    Some(format!("scripted {code}")),
                                )));
                            }
                            let mut n = counter.lock();
                            *n += 1;
                            let h = SendMessageResponseHeader {
                                msg_id: format!("OFFSET{:08}", *n),
                                queue_id: req.ext("e").and_then(|q| q.parse().ok()).unwrap_or(0),
                                queue_offset: *n - 1,
                                ..Default::default()
                            };
                            let _ = ctx;
                            Ok(Some(RemotingCommand::response(0, None).with_header(&h)))
                        }
                        _ => Ok(Some(RemotingCommand::response(0, None))),
                    }
                }
            }));
        }
        let server =
            RemotingServer::bind(ServerConfig::new("127.0.0.1:0".parse().unwrap()), registry)
                .await
                .unwrap();
        let addr = server.local_addr().to_string();
        FakeBroker {
            name: name.to_string(),
            addr,
            server,
            seen,
            script,
            always,
            registrar: RemotingClient::new(ClientConfig::default()),
        }
    }

    /// Registers with the NameServer; the route lives as long as `self`.
    pub async fn register(&self, namesrv: &str, topics: &[(&str, i32, i32)]) {
        let table: BTreeMap<String, TopicConfig> = topics
            .iter()
            .map(|(t, n, perm)| {
                (
                    t.to_string(),
                    TopicConfig {
                        read_queue_nums: *n,
                        write_queue_nums: *n,
                        perm: *perm,
                        ..TopicConfig::new(*t)
                    },
                )
            })
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
            broker_name: self.name.clone(),
            broker_addr: self.addr.clone(),
            cluster_name: "DefaultCluster".to_string(),
            ha_server_addr: "127.0.0.1:1".to_string(),
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
        let resp = self
            .registrar
            .invoke(namesrv, req, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(resp.code, 0, "registration failed: {:?}", resp.remark);
    }

    pub fn sends(&self) -> Vec<RemotingCommand> {
        self.seen
            .lock()
            .iter()
            .filter(|s| {
                s.code == request_code::SEND_MESSAGE_V2
                    || s.code == request_code::SEND_BATCH_MESSAGE
            })
            .map(|s| s.cmd.clone())
            .collect()
    }

    pub fn count(&self, code: i32) -> usize {
        self.seen.lock().iter().filter(|s| s.code == code).count()
    }
}
