//! The NameServer over real TCP: every request code it serves, the JSON
//! dialects, liveness, and bad input (each gets an error response whose
//! remark says what was wrong, or — for broken framing — a closed
//! connection, while other connections keep working).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apogee_namesrv::{NameServer, NamesrvConfig};
use apogee_protocol::body::route::{ClusterInfo, TopicRouteData};
use apogee_protocol::body::topic::{
    DataVersion, KVTable, RegisterBrokerBody, TopicConfig, TopicConfigAndMappingSerializeWrapper,
    TopicList,
};
use apogee_protocol::code::{request_code as rc, response_code as resp};
use apogee_protocol::header::namesrv::*;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

struct Fixture {
    server: NameServer,
    addr: String,
    client: RemotingClient,
    _dir: tempfile::TempDir,
}

async fn start(tune: impl FnOnce(&mut NamesrvConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NamesrvConfig {
        listen_port: 0,
        bind_address: "127.0.0.1".into(),
        kv_config_path: dir.path().join("kvConfig.json"),
        ..Default::default()
    };
    tune(&mut config);
    let server = NameServer::start(config).await.unwrap();
    let addr = server.local_addr().to_string();
    Fixture {
        server,
        addr,
        client: RemotingClient::new(ClientConfig::default()),
        _dir: dir,
    }
}

impl Fixture {
    async fn call(&self, cmd: RemotingCommand) -> RemotingCommand {
        self.client.invoke(&self.addr, cmd, T).await.unwrap()
    }

    async fn route(&self, topic: &str, version: i32) -> RemotingCommand {
        let mut req = RemotingCommand::request(rc::GET_ROUTEINFO_BY_TOPIC).with_header(
            &GetRouteInfoRequestHeader {
                topic: topic.into(),
                ..Default::default()
            },
        );
        req.version = version;
        self.call(req).await
    }
}

fn register_request(
    broker: &str,
    id: i64,
    addr: &str,
    topics: &[(&str, i32)],
    counter: i64,
) -> RemotingCommand {
    let table: BTreeMap<String, TopicConfig> = topics
        .iter()
        .map(|(t, n)| {
            (
                t.to_string(),
                TopicConfig {
                    read_queue_nums: *n,
                    write_queue_nums: *n,
                    perm: 6,
                    ..TopicConfig::new(*t)
                },
            )
        })
        .collect();
    let body = RegisterBrokerBody {
        topic_config_serialize_wrapper: TopicConfigAndMappingSerializeWrapper {
            topic_config_table: table,
            data_version: DataVersion {
                state_version: 0,
                timestamp: 1,
                counter,
            },
            ..Default::default()
        },
        filter_server_list: Vec::new(),
    }
    .encode();
    RemotingCommand::request(rc::REGISTER_BROKER)
        .with_header(&RegisterBrokerRequestHeader {
            broker_name: broker.into(),
            broker_addr: addr.into(),
            cluster_name: "DefaultCluster".into(),
            ha_server_addr: format!("{addr}-ha"),
            broker_id: id,
            enable_acting_master: Some(false),
            ..Default::default()
        })
        .with_body(body)
}

fn remark(r: &RemotingCommand) -> &str {
    r.remark.as_deref().unwrap_or("")
}

#[tokio::test]
async fn routes_in_both_json_dialects() {
    let f = start(|_| {}).await;
    let r = f
        .call(register_request(
            "broker-a",
            0,
            "127.0.0.1:10911",
            &[("T", 4)],
            1,
        ))
        .await;
    assert_eq!(r.code, resp::SUCCESS, "{}", remark(&r));

    let new = f.route("T", 401).await;
    assert_eq!(new.code, resp::SUCCESS);
    let text = String::from_utf8(new.body.clone().unwrap().to_vec()).unwrap();
    assert!(
        text.contains(r#""brokerAddrs":{"0":"127.0.0.1:10911"}"#),
        "{text}"
    );

    let old = f.route("T", 317).await;
    let text = String::from_utf8(old.body.clone().unwrap().to_vec()).unwrap();
    assert!(
        text.contains(r#""brokerAddrs":{0:"127.0.0.1:10911"}"#),
        "{text}"
    );

    // Both parse to the same route.
    let a = TopicRouteData::decode(new.body.as_deref().unwrap()).unwrap();
    let b = TopicRouteData::decode(old.body.as_deref().unwrap()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.queue_datas[0].write_queue_nums, 4);
    f.server.shutdown().await;
}

#[tokio::test]
async fn unknown_topic_is_topic_not_exist() {
    let f = start(|_| {}).await;
    let r = f.route("Nope", 401).await;
    assert_eq!(r.code, resp::TOPIC_NOT_EXIST);
    assert!(remark(&r).contains("Nope"), "{}", remark(&r));
    f.server.shutdown().await;
}

#[tokio::test]
async fn slave_registration_gets_master_address() {
    let f = start(|_| {}).await;
    f.call(register_request("a", 0, "h:1", &[("T", 4)], 1))
        .await;
    let r = f
        .call(register_request("a", 1, "h:2", &[("T", 4)], 1))
        .await;
    let h: RegisterBrokerResponseHeader = r.decode_header().unwrap();
    assert_eq!(h.master_addr.as_deref(), Some("h:1"));
    assert_eq!(h.ha_server_addr.as_deref(), Some("h:1-ha"));
    f.server.shutdown().await;
}

#[tokio::test]
async fn compressed_registration_and_crc_check() {
    let f = start(|_| {}).await;
    let plain = register_request("a", 0, "h:1", &[("Zipped", 3)], 1);
    let body = RegisterBrokerBody::decode(plain.body.as_deref().unwrap()).unwrap();
    let zipped = body.encode_compressed(false).unwrap();
    let mut header: RegisterBrokerRequestHeader = plain.decode_header().unwrap();
    header.compressed = true;
    header.body_crc32 = (crc32fast::hash(&zipped) & 0x7FFF_FFFF) as i32;
    let req = RemotingCommand::request(rc::REGISTER_BROKER)
        .with_header(&header)
        .with_body(zipped.clone());
    let r = f.call(req).await;
    assert_eq!(r.code, resp::SUCCESS, "{}", remark(&r));
    assert_eq!(f.route("Zipped", 401).await.code, resp::SUCCESS);

    header.body_crc32 = header.body_crc32.wrapping_add(1);
    let bad = RemotingCommand::request(rc::REGISTER_BROKER)
        .with_header(&header)
        .with_body(zipped);
    let r = f.call(bad).await;
    assert_eq!(r.code, resp::SYSTEM_ERROR);
    assert!(remark(&r).contains("crc32 not match"), "{}", remark(&r));
    f.server.shutdown().await;
}

#[tokio::test]
async fn cluster_info_and_topic_lists() {
    let f = start(|_| {}).await;
    f.call(register_request("a", 0, "h:1", &[("T", 4), ("U", 2)], 1))
        .await;
    f.call(register_request("b", 0, "h:2", &[("T", 4)], 1))
        .await;

    let r = f
        .call(RemotingCommand::request(rc::GET_BROKER_CLUSTER_INFO))
        .await;
    let info = ClusterInfo::decode(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(info.broker_addr_table.len(), 2);
    assert_eq!(info.broker_addr_table["b"].broker_addrs[&0], "h:2");
    assert_eq!(info.cluster_addr_table["DefaultCluster"].len(), 2);

    let r = f
        .call(RemotingCommand::request(
            rc::GET_ALL_TOPIC_LIST_FROM_NAMESERVER,
        ))
        .await;
    let list = TopicList::decode(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(list.topic_list.iter().collect::<Vec<_>>(), ["T", "U"]);

    let r = f
        .call(
            RemotingCommand::request(rc::GET_TOPICS_BY_CLUSTER).with_header(
                &GetTopicsByClusterRequestHeader {
                    cluster: "DefaultCluster".into(),
                },
            ),
        )
        .await;
    assert_eq!(
        TopicList::decode(r.body.as_deref().unwrap())
            .unwrap()
            .topic_list
            .len(),
        2
    );

    let r = f
        .call(RemotingCommand::request(rc::GET_SYSTEM_TOPIC_LIST_FROM_NS))
        .await;
    let sys = TopicList::decode(r.body.as_deref().unwrap()).unwrap();
    assert!(sys.topic_list.contains("DefaultCluster"));
    assert!(sys.topic_list.contains("a"));
    f.server.shutdown().await;
}

#[tokio::test]
async fn write_permission_wipe_add_and_topic_delete() {
    let f = start(|_| {}).await;
    f.call(register_request("a", 0, "h:1", &[("T", 4), ("U", 4)], 1))
        .await;
    let r = f
        .call(
            RemotingCommand::request(rc::WIPE_WRITE_PERM_OF_BROKER).with_header(
                &WipeWritePermOfBrokerRequestHeader {
                    broker_name: "a".into(),
                },
            ),
        )
        .await;
    let h: WipeWritePermOfBrokerResponseHeader = r.decode_header().unwrap();
    assert_eq!(h.wipe_topic_count, 2);
    let route = TopicRouteData::decode(f.route("T", 401).await.body.as_deref().unwrap()).unwrap();
    assert_eq!(route.queue_datas[0].perm, 4);

    let r = f
        .call(
            RemotingCommand::request(rc::ADD_WRITE_PERM_OF_BROKER).with_header(
                &AddWritePermOfBrokerRequestHeader {
                    broker_name: "a".into(),
                },
            ),
        )
        .await;
    let h: AddWritePermOfBrokerResponseHeader = r.decode_header().unwrap();
    assert_eq!(h.add_topic_count, 2);

    let r = f
        .call(
            RemotingCommand::request(rc::DELETE_TOPIC_IN_NAMESRV).with_header(
                &DeleteTopicFromNamesrvRequestHeader {
                    topic: "U".into(),
                    ..Default::default()
                },
            ),
        )
        .await;
    assert_eq!(r.code, resp::SUCCESS);
    assert_eq!(f.route("U", 401).await.code, resp::TOPIC_NOT_EXIST);
    assert_eq!(f.route("T", 401).await.code, resp::SUCCESS);
    f.server.shutdown().await;
}

#[tokio::test]
async fn kv_config_and_order_topic_conf_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let kv_path = dir.path().join("kv.json");
    let kv_for_first = kv_path.clone();
    let f = start(move |c| {
        c.kv_config_path = kv_for_first;
        c.order_message_enable = true;
    })
    .await;
    let put = RemotingCommand::request(rc::PUT_KV_CONFIG).with_header(&PutKVConfigRequestHeader {
        namespace: "ORDER_TOPIC_CONFIG".into(),
        key: "T".into(),
        value: "a:4".into(),
    });
    assert_eq!(f.call(put).await.code, resp::SUCCESS);
    f.call(register_request("a", 0, "h:1", &[("T", 4)], 1))
        .await;
    let route = TopicRouteData::decode(f.route("T", 401).await.body.as_deref().unwrap()).unwrap();
    assert_eq!(route.order_topic_conf.as_deref(), Some("a:4"));
    f.server.shutdown().await;

    let kv_for_second = kv_path.clone();
    let g = start(move |c| c.kv_config_path = kv_for_second).await;
    let get = RemotingCommand::request(rc::GET_KV_CONFIG).with_header(&GetKVConfigRequestHeader {
        namespace: "ORDER_TOPIC_CONFIG".into(),
        key: "T".into(),
    });
    let r = g.call(get.clone()).await;
    let h: GetKVConfigResponseHeader = r.decode_header().unwrap();
    assert_eq!(h.value.as_deref(), Some("a:4"));

    let list = g
        .call(
            RemotingCommand::request(rc::GET_KVLIST_BY_NAMESPACE).with_header(
                &GetKVListByNamespaceRequestHeader {
                    namespace: "ORDER_TOPIC_CONFIG".into(),
                },
            ),
        )
        .await;
    assert_eq!(
        KVTable::decode(list.body.as_deref().unwrap())
            .unwrap()
            .table["T"],
        "a:4"
    );

    let del =
        RemotingCommand::request(rc::DELETE_KV_CONFIG).with_header(&DeleteKVConfigRequestHeader {
            namespace: "ORDER_TOPIC_CONFIG".into(),
            key: "T".into(),
        });
    assert_eq!(g.call(del).await.code, resp::SUCCESS);
    let r = g.call(get).await;
    assert_eq!(r.code, resp::QUERY_NOT_FOUND);
    g.server.shutdown().await;
}

async fn wait_until_gone(f: &Fixture, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.route(topic, 401).await.code == resp::SUCCESS {
        assert!(Instant::now() < deadline, "route of {topic} never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn silent_broker_expires() {
    let f = start(|c| {
        c.broker_channel_expired_time = Duration::from_millis(300);
        c.scan_not_active_broker_interval = Duration::from_millis(100);
    })
    .await;
    f.call(register_request("a", 0, "h:1", &[("T", 4)], 1))
        .await;
    assert_eq!(f.route("T", 401).await.code, resp::SUCCESS);
    wait_until_gone(&f, "T").await;
    f.server.shutdown().await;
}

#[tokio::test]
async fn closing_the_registering_connection_removes_the_broker() {
    let f = start(|_| {}).await;
    let broker_conn = RemotingClient::new(ClientConfig::default());
    let r = broker_conn
        .invoke(&f.addr, register_request("a", 0, "h:1", &[("T", 4)], 1), T)
        .await
        .unwrap();
    assert_eq!(r.code, resp::SUCCESS);
    assert_eq!(f.route("T", 401).await.code, resp::SUCCESS);
    broker_conn.close().await;
    wait_until_gone(&f, "T").await;
    f.server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_clear_remarks() {
    let f = start(|_| {}).await;

    // Unknown request code.
    let r = f.call(RemotingCommand::request(9999)).await;
    assert_eq!(r.code, resp::REQUEST_CODE_NOT_SUPPORTED);
    assert!(remark(&r).contains("9999"), "{}", remark(&r));

    // Missing required header field.
    let r = f
        .call(RemotingCommand::request(rc::GET_ROUTEINFO_BY_TOPIC))
        .await;
    assert_eq!(r.code, resp::INVALID_PARAMETER);
    assert!(remark(&r).contains("topic"), "{}", remark(&r));

    // Malformed header value.
    let mut req = register_request("a", 0, "h:1", &[("T", 4)], 1);
    req.set_ext("brokerId", "zero");
    let r = f.call(req).await;
    assert_eq!(r.code, resp::INVALID_PARAMETER);
    assert!(
        remark(&r).contains("brokerId") && remark(&r).contains("zero"),
        "{}",
        remark(&r)
    );

    // Invalid topic names.
    let r = f.route("bad topic!", 401).await;
    assert_eq!(r.code, resp::INVALID_PARAMETER);
    assert!(!remark(&r).is_empty());
    let long = "x".repeat(128);
    let r = f.route(&long, 401).await;
    assert_eq!(r.code, resp::INVALID_PARAMETER);
    assert!(remark(&r).contains("127"), "{}", remark(&r));

    // Invalid JSON body.
    let mut req = register_request("a", 0, "h:1", &[("T", 4)], 1);
    req.body = Some(bytes::Bytes::from_static(
        b"{\"topicConfigSerializeWrapper\": [oops",
    ));
    let r = f.call(req).await;
    assert_eq!(r.code, resp::INVALID_PARAMETER);
    assert!(!remark(&r).is_empty());

    // The server still serves normally afterwards.
    assert_eq!(
        f.call(register_request("a", 0, "h:1", &[("T", 4)], 1))
            .await
            .code,
        resp::SUCCESS
    );
    f.server.shutdown().await;
}

/// Writes raw bytes and reports whether the server closed the connection.
async fn closed_after(addr: &str, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(T, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

#[tokio::test]
async fn broken_framing_closes_only_that_connection() {
    let f = start(|_| {}).await;
    // A length prefix far over the 16 MiB maximum.
    assert!(closed_after(&f.addr, &[0x7F, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]).await);
    // A header length larger than the frame.
    assert!(closed_after(&f.addr, &[0, 0, 0, 6, 0, 0, 0, 99, b'{', b'}']).await);
    // A header that is not JSON.
    let mut junk = vec![0, 0, 0, 9, 0, 0, 0, 5];
    junk.extend_from_slice(b"{nope");
    assert!(closed_after(&f.addr, &junk).await);
    // An unknown serialize type.
    assert!(closed_after(&f.addr, &[0, 0, 0, 6, 7, 0, 0, 2, b'{', b'}']).await);

    // Other clients are unaffected.
    assert_eq!(f.route("Nope", 401).await.code, resp::TOPIC_NOT_EXIST);
    f.server.shutdown().await;
}

#[tokio::test]
async fn binary_header_requests_are_answered_in_kind() {
    let f = start(|_| {}).await;
    f.call(register_request("a", 0, "h:1", &[("T", 4)], 1))
        .await;
    let mut req = RemotingCommand::request(rc::GET_ROUTEINFO_BY_TOPIC).with_header(
        &GetRouteInfoRequestHeader {
            topic: "T".into(),
            ..Default::default()
        },
    );
    req.serialize_type = apogee_protocol::SerializeType::RocketMq;
    let r = f.call(req).await;
    assert_eq!(r.code, resp::SUCCESS);
    assert_eq!(r.serialize_type, apogee_protocol::SerializeType::RocketMq);
    assert!(TopicRouteData::decode(r.body.as_deref().unwrap()).is_ok());
    f.server.shutdown().await;
}

#[tokio::test]
async fn namesrv_config_get_and_update() {
    let f = start(|_| {}).await;
    let r = f
        .call(RemotingCommand::request(rc::GET_NAMESRV_CONFIG))
        .await;
    let text = String::from_utf8(r.body.unwrap().to_vec()).unwrap();
    assert!(text.contains("orderMessageEnable=false"), "{text}");

    let upd = RemotingCommand::request(rc::UPDATE_NAMESRV_CONFIG)
        .with_body(&b"orderMessageEnable=true\n"[..]);
    assert_eq!(f.call(upd).await.code, resp::SUCCESS);
    let r = f
        .call(RemotingCommand::request(rc::GET_NAMESRV_CONFIG))
        .await;
    let text = String::from_utf8(r.body.unwrap().to_vec()).unwrap();
    assert!(text.contains("orderMessageEnable=true"), "{text}");

    let bad = RemotingCommand::request(rc::UPDATE_NAMESRV_CONFIG).with_body(&b"listenPort=1\n"[..]);
    let r = f.call(bad).await;
    assert_eq!(r.code, resp::NO_PERMISSION);
    assert!(remark(&r).contains("listenPort"));
    let bad = RemotingCommand::request(rc::UPDATE_NAMESRV_CONFIG).with_body(&b"noSuchKey=1\n"[..]);
    let r = f.call(bad).await;
    assert_eq!(r.code, resp::INVALID_PARAMETER);
    assert!(remark(&r).contains("noSuchKey"));
    f.server.shutdown().await;
}
