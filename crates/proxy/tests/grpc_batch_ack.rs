//! AckMessage with many entries (the proxy sends one BATCH_ACK_MESSAGE per
//! broker): everything acked stays acked past its invisible time, while a
//! group that did not ack gets its messages back; a bad entry gets its own
//! status without failing the others. Two brokers behind the proxy.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use apogee_broker::{BrokerConfig, BrokerController};
use apogee_namesrv::{NameServer, NamesrvConfig};
use apogee_proxy::pb::messaging_service_client::MessagingServiceClient;
use apogee_proxy::pb::{self, Code};
use apogee_proxy::{ProxyConfig, ProxyServer};
use tonic::transport::Channel;

fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-mq-client-id", "batch-ack-test@1".parse().unwrap());
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

/// One receive from every assigned broker; invisible for `invisible_s`.
async fn receive_all(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    invisible_s: i64,
) -> Vec<pb::Message> {
    use pb::receive_message_response::Content;
    let assignment = c
        .query_assignment(req(pb::QueryAssignmentRequest {
            topic: res(topic),
            group: res(group),
            endpoints: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    for a in assignment.assignments {
        let mut r = req(pb::ReceiveMessageRequest {
            group: res(group),
            message_queue: a.message_queue,
            batch_size: 32,
            invisible_duration: Some(prost_types::Duration {
                seconds: invisible_s,
                nanos: 0,
            }),
            long_polling_timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 500_000_000,
            }),
            ..Default::default()
        });
        r.set_timeout(Duration::from_secs(5));
        let mut stream = c.receive_message(r).await.unwrap().into_inner();
        while let Some(item) = stream.message().await.unwrap() {
            if let Some(Content::Message(m)) = item.content {
                out.push(m);
            }
        }
    }
    out
}

fn id_of(m: &pb::Message) -> String {
    m.system_properties
        .as_ref()
        .map(|s| s.message_id.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_ack_message_for_many_entries_over_two_brokers() {
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
    for name in ["broker-a", "broker-b"] {
        let mut cfg = BrokerConfig {
            namesrv_addr: Some(ns_addr.clone()),
            broker_ip1: "127.0.0.1".into(),
            bind_address: "127.0.0.1".into(),
            listen_port: 0,
            broker_name: name.to_owned(),
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
    let proxy = ProxyServer::start(ProxyConfig::new(
        ns_addr,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    ))
    .await
    .unwrap();
    let mut c = MessagingServiceClient::connect(format!("http://{}", proxy.local_addr()))
        .await
        .unwrap();
    let topic = "BatchAck";

    let mut sent = BTreeSet::new();
    for i in 0..24 {
        let id = format!("BA-{i:02}");
        let m = pb::Message {
            topic: res(topic),
            system_properties: Some(pb::SystemProperties {
                message_id: id.clone(),
                message_type: pb::MessageType::Normal as i32,
                ..Default::default()
            }),
            body: id.as_bytes().to_vec().into(),
            ..Default::default()
        };
        let r = c
            .send_message(req(pb::SendMessageRequest { messages: vec![m] }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
        sent.insert(id);
    }

    // Receive everything (both groups), invisible for 2 s.
    let mut acked = Vec::new();
    let mut unacked = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (acked.len() < sent.len() || unacked.len() < sent.len()) && Instant::now() < deadline {
        if acked.len() < sent.len() {
            acked.extend(receive_all(&mut c, topic, "GID-acks", 2).await);
        }
        if unacked.len() < sent.len() {
            unacked.extend(
                receive_all(&mut c, topic, "GID-no-acks", 2)
                    .await
                    .iter()
                    .map(id_of),
            );
        }
    }
    let got: BTreeSet<String> = acked.iter().map(id_of).collect();
    assert_eq!(got, sent);
    assert_eq!(unacked, sent);

    // One AckMessage for all of them, from both brokers, plus a bad entry.
    let mut entries: Vec<pb::AckMessageEntry> = acked
        .iter()
        .map(|m| {
            let sys = m.system_properties.clone().unwrap_or_default();
            pb::AckMessageEntry {
                message_id: sys.message_id,
                receipt_handle: sys.receipt_handle.unwrap_or_default(),
                ..Default::default()
            }
        })
        .collect();
    let brokers_seen: BTreeSet<String> = entries
        .iter()
        .filter_map(|e| e.receipt_handle.split(' ').nth(5).map(str::to_owned))
        .collect();
    assert_eq!(brokers_seen.len(), 2, "messages from both brokers");
    entries.insert(
        3,
        pb::AckMessageEntry {
            message_id: "bad".into(),
            receipt_handle: "not a handle".into(),
            ..Default::default()
        },
    );
    let ack = c
        .ack_message(req(pb::AckMessageRequest {
            group: res("GID-acks"),
            topic: res(topic),
            entries,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.entries.len(), sent.len() + 1);
    for e in &ack.entries {
        let want = if e.message_id == "bad" {
            Code::InvalidReceiptHandle
        } else {
            Code::Ok
        };
        assert_eq!(code(&e.status), want, "{e:?}");
    }
    assert_eq!(code(&ack.status), Code::MultipleResults);

    // The group that did not ack gets its messages back once they are
    // visible again; by then the acked group's would have come back too.
    let mut back = BTreeSet::new();
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while back.len() < sent.len() && Instant::now() < deadline {
        back.extend(
            receive_all(&mut c, topic, "GID-no-acks", 30)
                .await
                .iter()
                .map(id_of),
        );
        again.extend(receive_all(&mut c, topic, "GID-acks", 30).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(back, sent, "unacked messages came back");
    again.extend(receive_all(&mut c, topic, "GID-acks", 30).await);
    let again: Vec<String> = again.iter().map(id_of).collect();
    assert!(again.is_empty(), "acked messages came back: {again:?}");

    proxy.shutdown().await;
    for b in brokers {
        b.shutdown().await;
    }
    namesrv.shutdown().await;
}
