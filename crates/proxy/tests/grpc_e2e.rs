//! The gRPC endpoint end to end: an in-process NameServer and broker on
//! ephemeral loopback ports, the proxy in front, and the generated gRPC
//! client (plus apogee's remoting client for the cross-protocol cases).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use apogee_broker::{BrokerConfig, BrokerController};
use apogee_namesrv::{NameServer, NamesrvConfig};
use apogee_proxy::pb::messaging_service_client::MessagingServiceClient;
use apogee_proxy::pb::{self, Code};
use apogee_proxy::{ProxyConfig, ProxyServer};
use tonic::transport::Channel;

struct Harness {
    namesrv: NameServer,
    ns_addr: String,
    brokers: Vec<BrokerController>,
    proxy: ProxyServer,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with(&["broker-a"]).await
    }

    /// A NameServer, one broker per name, and the proxy in front of them.
    async fn start_with(names: &[&str]) -> Harness {
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
        let mut brokers = Vec::new();
        for name in names {
            let mut cfg = BrokerConfig {
                namesrv_addr: Some(ns_addr.clone()),
                broker_ip1: "127.0.0.1".into(),
                bind_address: "127.0.0.1".into(),
                listen_port: 0,
                broker_name: (*name).to_owned(),
                ..Default::default()
            };
            cfg.store.store_path_root_dir = dir.path().join(name);
            cfg.store.disk_space_warning_level_ratio = 100;
            cfg.store.disk_space_clean_forcibly_ratio = 100;
            cfg.store.disk_max_used_space_ratio = 100;
            cfg.store.mapped_file_size_commit_log = 4 * 1024 * 1024;
            cfg.store.mapped_file_size_consume_queue = 20 * 1000;
            brokers.push(BrokerController::start(cfg).await.unwrap());
        }
        let mut pc = ProxyConfig::new(ns_addr.clone(), SocketAddr::from(([127, 0, 0, 1], 0)));
        pc.max_body_size = 1024;
        if let [broker] = brokers.as_slice() {
            // One broker: the endpoint as `apogee standalone` runs it, calling
            // the broker in process. Several: a cluster proxy over TCP.
            pc.local_servers = vec![(
                broker.context().broker_addr.clone(),
                broker.local_endpoint(),
            )];
        }
        let proxy = ProxyServer::start(pc).await.unwrap();
        Harness {
            namesrv,
            ns_addr,
            brokers,
            proxy,
            _dir: dir,
        }
    }

    async fn client(&self) -> MessagingServiceClient<Channel> {
        MessagingServiceClient::connect(format!("http://{}", self.proxy.local_addr()))
            .await
            .unwrap()
    }

    async fn shutdown(self) {
        self.proxy.shutdown().await;
        for b in self.brokers {
            b.shutdown().await;
        }
        self.namesrv.shutdown().await;
    }
}

fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-mq-client-id", "test-client@1".parse().unwrap());
    r
}

fn res(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        name: name.into(),
        ..Default::default()
    })
}

fn code(s: &Option<pb::Status>) -> Code {
    Code::try_from(s.as_ref().map_or(0, |s| s.code)).unwrap_or(Code::Unspecified)
}

fn message(topic: &str, id: &str, body: &[u8]) -> pb::Message {
    pb::Message {
        topic: res(topic),
        user_properties: [("k".to_owned(), "v".to_owned())].into(),
        system_properties: Some(pb::SystemProperties {
            tag: Some("TagA".into()),
            keys: vec!["key1".into()],
            message_id: id.into(),
            message_type: pb::MessageType::Normal as i32,
            ..Default::default()
        }),
        body: body.to_vec().into(),
    }
}

async fn send(c: &mut MessagingServiceClient<Channel>, m: pb::Message) -> pb::SendMessageResponse {
    c.send_message(req(pb::SendMessageRequest { messages: vec![m] }))
        .await
        .unwrap()
        .into_inner()
}

/// Receives once; returns the frames in order.
async fn receive(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    poll_ms: i64,
) -> Vec<pb::receive_message_response::Content> {
    let mut r = req(pb::ReceiveMessageRequest {
        group: res(group),
        message_queue: Some(pb::MessageQueue {
            topic: res(topic),
            id: -1,
            ..Default::default()
        }),
        batch_size: 16,
        invisible_duration: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        long_polling_timeout: Some(prost_types::Duration {
            seconds: poll_ms / 1000,
            nanos: ((poll_ms % 1000) * 1_000_000) as i32,
        }),
        ..Default::default()
    });
    r.set_timeout(Duration::from_millis(poll_ms as u64 + 3000));
    let mut stream = c.receive_message(r).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        out.extend(item.content);
    }
    out
}

/// Receives until a message arrives (a fresh topic's first POP can miss).
async fn receive_some(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
) -> Vec<pb::Message> {
    use pb::receive_message_response::Content;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let frames = receive(c, topic, group, 2000).await;
        let msgs: Vec<pb::Message> = frames
            .into_iter()
            .filter_map(|f| match f {
                Content::Message(m) => Some(m),
                _ => None,
            })
            .collect();
        if !msgs.is_empty() || Instant::now() > deadline {
            return msgs;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_send_receive_ack() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let topic = "GrpcE2E";

    let endpoints = pb::Endpoints {
        scheme: pb::AddressScheme::DomainName as i32,
        addresses: vec![pb::Address {
            host: "mq.example".into(),
            port: 8081,
        }],
    };
    let route = c
        .query_route(req(pb::QueryRouteRequest {
            topic: res(topic),
            endpoints: Some(endpoints.clone()),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&route.status), Code::Ok, "{:?}", route.status);
    assert_eq!(
        route.message_queues.len(),
        4,
        "an auto-created topic has 4 queues"
    );
    for q in &route.message_queues {
        assert_eq!(q.accept_message_types.len(), 4, "auto-created: every type");
        let b = q.broker.as_ref().unwrap();
        assert_eq!(
            b.endpoints.as_ref(),
            Some(&endpoints),
            "the access point used"
        );
    }

    let sent = send(&mut c, message(topic, "ID-1", b"hello")).await;
    assert_eq!(code(&sent.status), Code::Ok, "{:?}", sent.status);
    assert_eq!(sent.entries[0].message_id, "ID-1");

    let msgs = receive_some(&mut c, topic, "GID-e2e").await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(&m.body[..], b"hello");
    let sys = m.system_properties.as_ref().unwrap();
    assert_eq!(sys.message_id, "ID-1");
    assert_eq!(sys.tag.as_deref(), Some("TagA"));
    assert_eq!(sys.keys, vec!["key1".to_owned()]);
    assert_eq!(sys.delivery_attempt, Some(1));
    assert_eq!(m.user_properties.get("k").map(String::as_str), Some("v"));
    let digest = sys.body_digest.as_ref().unwrap();
    // No Settings named a language: Java's form of the CRC32.
    assert_eq!(digest.r#type, pb::DigestType::Crc32 as i32);
    assert_eq!(digest.checksum, "3610A686");
    let handle = sys.receipt_handle.clone().unwrap();

    let renewed = c
        .change_invisible_duration(req(pb::ChangeInvisibleDurationRequest {
            group: res("GID-e2e"),
            topic: res(topic),
            receipt_handle: handle,
            invisible_duration: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            message_id: "ID-1".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&renewed.status), Code::Ok, "{:?}", renewed.status);

    let acked = c
        .ack_message(req(pb::AckMessageRequest {
            group: res("GID-e2e"),
            topic: res(topic),
            entries: vec![pb::AckMessageEntry {
                message_id: "ID-1".into(),
                receipt_handle: renewed.receipt_handle,
                ..Default::default()
            }],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&acked.status), Code::Ok, "{:?}", acked.status);

    // Nothing left: status first, and it says so.
    use pb::receive_message_response::Content;
    let frames = receive(&mut c, topic, "GID-e2e", 500).await;
    assert!(
        matches!(frames.as_slice(), [Content::Status(s)] if s.code == Code::MessageNotFound as i32),
        "{frames:?}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_status_not_a_crash() {
    let h = Harness::start().await;
    let mut c = h.client().await;

    // No client id.
    let r = c
        .query_route(tonic::Request::new(pb::QueryRouteRequest {
            topic: res("T1"),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::ClientIdRequired);

    // Illegal topic name.
    let r = c
        .query_route(req(pb::QueryRouteRequest {
            topic: res("bad topic!"),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(code(&r.status), Code::Ok);

    // Oversized body (the harness allows 1 KiB).
    let r = send(&mut c, message("T1", "ID-big", &[7u8; 2048])).await;
    assert_eq!(code(&r.status), Code::MessageBodyTooLarge, "{:?}", r.status);

    // Bigger than tonic's default 4 MiB frame: still a status, not a transport error.
    let r = send(
        &mut c,
        message("T1", "ID-huge", &vec![1u8; 5 * 1024 * 1024]),
    )
    .await;
    assert_eq!(code(&r.status), Code::MessageBodyTooLarge, "{:?}", r.status);

    // A tag with a separator, a reserved property key.
    let mut m = message("T1", "ID-tag", b"x");
    m.system_properties.as_mut().unwrap().tag = Some("a\u{2}b".into());
    let r = send(&mut c, m).await;
    assert_eq!(code(&r.status), Code::IllegalMessageTag, "{:?}", r.status);
    let mut m = message("T1", "ID-key", b"x");
    m.user_properties.insert("UNIQ_KEY".into(), "mine".into());
    let r = send(&mut c, m).await;
    assert_eq!(
        code(&r.status),
        Code::IllegalMessagePropertyKey,
        "{:?}",
        r.status
    );

    // A polling time no one means (and that would overflow the timers).
    let r = c
        .receive_message(req(pb::ReceiveMessageRequest {
            group: res("G"),
            message_queue: Some(pb::MessageQueue {
                topic: res("T1"),
                id: -1,
                ..Default::default()
            }),
            batch_size: 1,
            long_polling_timeout: Some(prost_types::Duration {
                seconds: i64::MAX / 1000,
                nanos: 0,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        r.content,
        Some(pb::receive_message_response::Content::Status(s)) if s.code == Code::IllegalPollingTime as i32
    ));

    // No message id.
    let r = send(&mut c, message("T1", "", b"x")).await;
    assert_eq!(code(&r.status), Code::IllegalMessageId);

    // Malformed receipt handles.
    for handle in ["", "garbage", "1 2 3 4 0 broker -1 5", &"9 ".repeat(600)] {
        let r = c
            .ack_message(req(pb::AckMessageRequest {
                group: res("G"),
                topic: res("T1"),
                entries: vec![pb::AckMessageEntry {
                    message_id: "x".into(),
                    receipt_handle: handle.to_owned(),
                    ..Default::default()
                }],
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&r.status), Code::InvalidReceiptHandle, "{handle:?}");
    }

    // Invisible duration out of range.
    let r = c
        .receive_message(req(pb::ReceiveMessageRequest {
            group: res("G"),
            message_queue: Some(pb::MessageQueue {
                topic: res("T1"),
                id: -1,
                ..Default::default()
            }),
            batch_size: 1,
            invisible_duration: Some(prost_types::Duration {
                seconds: 0,
                nanos: 1,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        r.content,
        Some(pb::receive_message_response::Content::Status(s)) if s.code == Code::IllegalInvisibleTime as i32
    ));

    // Telemetry: a first command that is not Settings ends the stream with a status.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::TelemetryCommand {
        status: None,
        command: Some(pb::telemetry_command::Command::VerifyMessageResult(
            pb::VerifyMessageResult { nonce: "n".into() },
        )),
    })
    .await
    .unwrap();
    let mut s = c
        .telemetry(req(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let err = s.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    drop(tx);

    // Telemetry: Settings answered promptly with the server's view merged in;
    // then the client vanishes mid-stream.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::TelemetryCommand {
        status: None,
        command: Some(pb::telemetry_command::Command::Settings(pb::Settings {
            client_type: Some(pb::ClientType::Producer as i32),
            pub_sub: Some(pb::settings::PubSub::Publishing(pb::Publishing {
                topics: vec![pb::Resource {
                    name: "T1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut s = c
        .telemetry(req(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(3), s.message())
        .await
        .expect("Settings answered within 3 s")
        .unwrap()
        .unwrap();
    match answer.command {
        Some(pb::telemetry_command::Command::Settings(st)) => match st.pub_sub {
            Some(pb::settings::PubSub::Publishing(p)) => assert_eq!(p.max_body_size, 1024),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    drop(tx);
    drop(s);

    // Still serving.
    let r = send(&mut c, message("T1", "ID-after", b"ok")).await;
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_cross_protocols_both_ways() {
    use apogee_client::{Message, Producer};
    let h = Harness::start().await;
    let mut c = h.client().await;
    let topic = "Cross";

    // Remoting -> gRPC.
    let p = Producer::builder()
        .namesrv_addr(h.ns_addr.clone())
        .group("cross-pg")
        .build()
        .unwrap();
    p.start().await.unwrap();
    // The gRPC route creates the topic with 4 queues first.
    let route = c
        .query_route(req(pb::QueryRouteRequest {
            topic: res(topic),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&route.status), Code::Ok);
    let sent = p
        .send(Message::new(topic, "from-remoting").with_tags("R"))
        .await
        .unwrap();
    let msgs = receive_some(&mut c, topic, "GID-cross").await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(&msgs[0].body[..], b"from-remoting");
    let sys = msgs[0].system_properties.as_ref().unwrap();
    assert_eq!(sys.message_id, sent.msg_id);
    assert_eq!(sys.tag.as_deref(), Some("R"));
    p.shutdown().await;

    // gRPC -> remoting (a pull over remoting sees what gRPC stored).
    let r = send(&mut c, message(topic, "ID-grpc", b"from-grpc")).await;
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    let admin = apogee_client::AdminClient::builder()
        .namesrv_addr(h.ns_addr.clone())
        .build()
        .unwrap();
    let found = apogee_client::LitePullConsumer::builder()
        .namesrv_addr(h.ns_addr.clone())
        .group("cross-pull")
        .consume_from_where(apogee_client::ConsumeFromWhere::ConsumeFromFirstOffset)
        .build()
        .unwrap();
    found.subscribe(topic, "*").await.unwrap();
    found.start().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut bodies = Vec::new();
    while Instant::now() < deadline && !bodies.iter().any(|b: &Vec<u8>| b == b"from-grpc") {
        for m in found.poll(Duration::from_millis(500)).await.unwrap() {
            bodies.push(m.body.to_vec());
            if m.body.as_ref() == b"from-grpc" {
                assert_eq!(m.uniq_key(), Some("ID-grpc"));
                assert_eq!(m.tags(), Some("TagA"));
                assert_eq!(m.property("k"), Some("v"));
            }
        }
    }
    assert!(bodies.iter().any(|b| b == b"from-grpc"), "{bodies:?}");
    found.shutdown().await;
    admin.shutdown().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_in_front_of_two_brokers() {
    use pb::receive_message_response::Content;
    let h = Harness::start_with(&["broker-a", "broker-b"]).await;
    let mut c = h.client().await;
    let topic = "TwoBrokers";

    // Both brokers registered TBW102: the auto-created topic spans both.
    let deadline = Instant::now() + Duration::from_secs(20);
    let route = loop {
        let r = c
            .query_route(req(pb::QueryRouteRequest {
                topic: res(topic),
                endpoints: None,
            }))
            .await
            .unwrap()
            .into_inner();
        if code(&r.status) == Code::Ok || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names: std::collections::BTreeSet<String> = route
        .message_queues
        .iter()
        .filter_map(|q| q.broker.as_ref().map(|b| b.name.clone()))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let assignment = c
        .query_assignment(req(pb::QueryAssignmentRequest {
            topic: res(topic),
            group: res("GID-two"),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(assignment.assignments.len(), 2);

    let mut sent = std::collections::BTreeSet::new();
    for i in 0..8 {
        let id = format!("TWO-{i}");
        let r = send(&mut c, message(topic, &id, id.as_bytes())).await;
        assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
        sent.insert(id);
    }
    // Receive from each broker's assignment until everything came back.
    let mut got = std::collections::BTreeSet::new();
    let mut from = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < sent.len() && Instant::now() < deadline {
        for a in &assignment.assignments {
            let mq = a.message_queue.clone().unwrap();
            let broker = mq.broker.as_ref().unwrap().name.clone();
            let mut r = req(pb::ReceiveMessageRequest {
                group: res("GID-two"),
                message_queue: Some(mq),
                batch_size: 16,
                invisible_duration: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                long_polling_timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            });
            r.set_timeout(Duration::from_secs(4));
            let mut stream = c.receive_message(r).await.unwrap().into_inner();
            while let Some(item) = stream.message().await.unwrap() {
                if let Some(Content::Message(m)) = item.content {
                    let sys = m.system_properties.unwrap();
                    got.insert(sys.message_id.clone());
                    from.insert(broker.clone());
                    let ack = c
                        .ack_message(req(pb::AckMessageRequest {
                            group: res("GID-two"),
                            topic: res(topic),
                            entries: vec![pb::AckMessageEntry {
                                message_id: sys.message_id,
                                receipt_handle: sys.receipt_handle.unwrap_or_default(),
                                ..Default::default()
                            }],
                        }))
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(code(&ack.status), Code::Ok, "{:?}", ack.status);
                }
            }
        }
    }
    assert_eq!(got, sent);
    assert_eq!(from.len(), 2, "messages came from both brokers");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topic_type_dlq_recall_and_polling() {
    use pb::receive_message_response::Content;
    let h = Harness::start().await;
    let mut c = h.client().await;
    let broker_addr = h.brokers[0].local_addr().to_string();

    // A topic created as FIFO accepts FIFO only.
    let admin = apogee_client::AdminClient::builder()
        .namesrv_addr(h.ns_addr.clone())
        .build()
        .unwrap();
    let mut tc = apogee_protocol::body::TopicConfig::new("OnlyFifo");
    tc.read_queue_nums = 2;
    tc.write_queue_nums = 2;
    tc.perm = 6;
    tc.attributes.insert("message.type".into(), "FIFO".into());
    admin.create_topic(&broker_addr, &tc).await.unwrap();
    h.brokers[0].register_now().await;
    let route = c
        .query_route(req(pb::QueryRouteRequest {
            topic: res("OnlyFifo"),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&route.status), Code::Ok, "{:?}", route.status);
    assert_eq!(route.message_queues.len(), 2);
    for q in &route.message_queues {
        assert_eq!(q.accept_message_types, vec![pb::MessageType::Fifo as i32]);
    }
    admin.shutdown().await;

    // Long polling is cut to the call's deadline: a 20 s poll in a 2 s call
    // answers "no message" in time instead of timing out.
    let started = Instant::now();
    let mut r = req(pb::ReceiveMessageRequest {
        group: res("GID-poll"),
        message_queue: Some(pb::MessageQueue {
            topic: res("OnlyFifo"),
            id: -1,
            ..Default::default()
        }),
        batch_size: 1,
        invisible_duration: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        long_polling_timeout: Some(prost_types::Duration {
            seconds: 20,
            nanos: 0,
        }),
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(2));
    let mut stream = c.receive_message(r).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(first.content, Some(Content::Status(ref s)) if s.code == Code::MessageNotFound as i32),
        "{first:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // ForwardMessageToDeadLetterQueue: the message lands in %DLQ%group.
    let sent = send(&mut c, message("DlqTopic", "ID-dlq", b"to-dlq")).await;
    assert_eq!(code(&sent.status), Code::Ok, "{:?}", sent.status);
    let msgs = receive_some(&mut c, "DlqTopic", "GID-dlq").await;
    assert_eq!(msgs.len(), 1);
    let sys = msgs[0].system_properties.clone().unwrap();
    let fwd = c
        .forward_message_to_dead_letter_queue(req(pb::ForwardMessageToDeadLetterQueueRequest {
            group: res("GID-dlq"),
            topic: res("DlqTopic"),
            receipt_handle: sys.receipt_handle.clone().unwrap(),
            message_id: sys.message_id.clone(),
            delivery_attempt: 1,
            max_delivery_attempts: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&fwd.status), Code::Ok, "{:?}", fwd.status);
    let inst = apogee_client::ClientInstance::new(
        apogee_client::ClientOptions {
            namesrv_addr: h.ns_addr.clone(),
            ..Default::default()
        },
        apogee_remoting::ProcessorRegistry::new(),
    )
    .unwrap();
    let pull = apogee_protocol::header::PullMessageRequestHeader {
        consumer_group: "dlq-reader".into(),
        topic: "%DLQ%GID-dlq".into(),
        queue_id: 0,
        queue_offset: 0,
        max_msg_nums: 8,
        // FLAG_SUBSCRIPTION: no heartbeat needed for this reader.
        sys_flag: 0x4,
        subscription: Some("*".into()),
        expression_type: Some("TAG".into()),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let dlq = loop {
        let r = inst
            .pull(
                &broker_addr,
                "broker-a",
                apogee_protocol::code::request_code::PULL_MESSAGE,
                &pull,
                Duration::from_secs(3),
            )
            .await;
        match r {
            Ok(p) if !p.messages.is_empty() => break p.messages,
            _ if Instant::now() > deadline => panic!("nothing in the DLQ: {r:?}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    assert_eq!(dlq[0].body.as_ref(), b"to-dlq");
    inst.close().await;

    // RecallMessage: a delayed send answers a recall handle; recalling
    // with it keeps the message from ever being delivered.
    let delayed = |id: &str, body: &[u8]| {
        let mut m = message("RecallTopic", id, body);
        let sys = m.system_properties.as_mut().unwrap();
        sys.delivery_timestamp = Some(apogee_proxy::convert::timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
                + 1500,
        ));
        sys.message_type = pb::MessageType::Delay as i32;
        m
    };
    let sent = send(&mut c, delayed("ID-recall", b"recall-me")).await;
    assert_eq!(code(&sent.status), Code::Ok, "{:?}", sent.status);
    let handle = sent.entries[0].recall_handle.clone();
    assert!(!handle.is_empty(), "a delayed send carries a recall handle");
    let kept = send(&mut c, delayed("ID-kept", b"kept")).await;
    assert_eq!(code(&kept.status), Code::Ok, "{:?}", kept.status);
    let recall = |topic: &str, handle: &str| {
        req(pb::RecallMessageRequest {
            topic: res(topic),
            recall_handle: handle.into(),
        })
    };
    let bad = c
        .recall_message(recall("RecallTopic", "not-a-handle!"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&bad.status), Code::BadRequest, "{:?}", bad.status);
    assert_eq!(bad.status.unwrap().message, "recall handle is invalid");
    let wrong_topic = c
        .recall_message(recall("OnlyFifo", &handle))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&wrong_topic.status), Code::BadRequest);
    assert_eq!(
        wrong_topic.status.unwrap().message,
        "recall failed, topic not match"
    );
    let recalled = c
        .recall_message(recall("RecallTopic", &handle))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&recalled.status), Code::Ok, "{:?}", recalled.status);
    assert_eq!(recalled.message_id, sent.entries[0].message_id);
    // The kept one arrives; nothing else, also a while after both were due.
    let mut bodies: Vec<Vec<u8>> = receive_some(&mut c, "RecallTopic", "GID-recall")
        .await
        .into_iter()
        .map(|m| m.body.to_vec())
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    for f in receive(&mut c, "RecallTopic", "GID-recall", 1000).await {
        if let Content::Message(m) = f {
            bodies.push(m.body.to_vec());
        }
    }
    assert_eq!(bodies, vec![b"kept".to_vec()]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transaction_ended_through_another_proxy() {
    let h = Harness::start().await;
    let mut a = h.client().await;
    // A second proxy that never saw the half message.
    let other = ProxyServer::start(ProxyConfig::new(
        h.ns_addr.clone(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    ))
    .await
    .unwrap();
    let mut b = MessagingServiceClient::connect(format!("http://{}", other.local_addr()))
        .await
        .unwrap();

    let mut m = message("TxTopic", "ID-tx", b"half");
    m.system_properties.as_mut().unwrap().message_type = pb::MessageType::Transaction as i32;
    let sent = send(&mut a, m).await;
    assert_eq!(code(&sent.status), Code::Ok, "{:?}", sent.status);
    let tx_id = sent.entries[0].transaction_id.clone();
    assert!(!tx_id.is_empty());

    let unknown = b
        .end_transaction(req(pb::EndTransactionRequest {
            topic: res("TxTopic"),
            message_id: "ID-tx".into(),
            transaction_id: "made-up".into(),
            resolution: pb::TransactionResolution::Commit as i32,
            source: pb::TransactionSource::SourceClient as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&unknown.status), Code::InvalidTransactionId);

    let ended = b
        .end_transaction(req(pb::EndTransactionRequest {
            topic: res("TxTopic"),
            message_id: "ID-tx".into(),
            transaction_id: tx_id,
            resolution: pb::TransactionResolution::Commit as i32,
            source: pb::TransactionSource::SourceClient as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&ended.status), Code::Ok, "{:?}", ended.status);
    let msgs = receive_some(&mut a, "TxTopic", "GID-tx").await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(&msgs[0].body[..], b"half");
    other.shutdown().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_gone_mid_poll_does_not_hide_messages() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let topic = "GoneMidPoll";
    // Create the topic and the group's progress first.
    let _ = receive(&mut c, topic, "GID-gone", 200).await;

    // A long poll whose client goes away before anything arrives.
    let mut r = req(pb::ReceiveMessageRequest {
        group: res("GID-gone"),
        message_queue: Some(pb::MessageQueue {
            topic: res(topic),
            id: -1,
            ..Default::default()
        }),
        batch_size: 16,
        invisible_duration: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        long_polling_timeout: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(10));
    let mut gone_client = h.client().await;
    let call = tokio::spawn(async move {
        let mut s = gone_client.receive_message(r).await.unwrap().into_inner();
        while s.message().await.ok().flatten().is_some() {}
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    call.abort();
    let _ = call.await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The parked POP takes this message for the vanished client; it is
    // handed back instead of staying invisible for 60 s.
    let sent = send(&mut c, message(topic, "ID-gone", b"not lost")).await;
    assert_eq!(code(&sent.status), Code::Ok, "{:?}", sent.status);
    // Let the parked POP (not a new one) take it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let msgs = receive_some(&mut c, topic, "GID-gone").await;
    assert_eq!(msgs.len(), 1, "the message came back");
    assert_eq!(&msgs[0].body[..], b"not lost");
    assert!(started.elapsed() < Duration::from_secs(20));
    let attempt = msgs[0].system_properties.as_ref().unwrap().delivery_attempt;
    assert_eq!(attempt, Some(2), "popped once for the vanished client");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_queue_can_be_received_by_id() {
    use pb::receive_message_response::Content;
    let h = Harness::start_with(&["broker-a", "broker-b"]).await;
    let mut c = h.client().await;
    let topic = "ById";
    let route = c
        .query_route(req(pb::QueryRouteRequest {
            topic: res(topic),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.message_queues.len(), 8, "{:?}", route.status);
    let mut sent = std::collections::BTreeSet::new();
    for i in 0..16 {
        let id = format!("BYID-{i}");
        let r = send(&mut c, message(topic, &id, id.as_bytes())).await;
        assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
        sent.insert(id);
    }
    // Like the Python SimpleConsumer: each route queue in turn, by its id.
    let mut got = std::collections::BTreeSet::new();
    for _round in 0..3 {
        for q in &route.message_queues {
            let mut r = req(pb::ReceiveMessageRequest {
                group: res("GID-byid"),
                message_queue: Some(q.clone()),
                batch_size: 16,
                invisible_duration: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                long_polling_timeout: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 300_000_000,
                }),
                ..Default::default()
            });
            r.set_timeout(Duration::from_secs(4));
            let mut stream = c.receive_message(r).await.unwrap().into_inner();
            while let Some(item) = stream.message().await.unwrap() {
                if let Some(Content::Message(m)) = item.content {
                    got.insert(m.system_properties.unwrap().message_id);
                }
            }
        }
    }
    assert_eq!(got, sent);
    h.shutdown().await;
}
