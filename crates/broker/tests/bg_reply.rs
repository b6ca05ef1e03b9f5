//! Request-reply: SEND_REPLY_MESSAGE(_V2) is pushed to the requester named
//! by REPLY_TO_CLIENT (PUSH_REPLY_MESSAGE_TO_CLIENT) and stored; a reply
//! whose requester is gone is answered SYSTEM_ERROR and still stored.

mod ba_common;

use std::time::Duration;

use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::send::{
    ReplyMessageRequestHeader, SendMessageRequestHeader, SendMessageRequestHeaderV2,
    SendMessageResponseHeader,
};
use apogee_protocol::message::{keys, properties};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ClientConfig, ProcessorRegistry, RemotingClient};
use ba_common::*;
use bytes::Bytes;
use tokio::sync::mpsc;

/// A requester: answers every PUSH_REPLY_MESSAGE_TO_CLIENT with SUCCESS and
/// hands it to the test.
fn requester() -> (RemotingClient, mpsc::UnboundedReceiver<RemotingCommand>) {
    let registry = ProcessorRegistry::new();
    let (tx, rx) = mpsc::unbounded_channel();
    registry.register(
        request_code::PUSH_REPLY_MESSAGE_TO_CLIENT,
        processor_fn(move |_ctx, req: RemotingCommand| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(req);
                Ok(Some(RemotingCommand::response(
                    response_code::SUCCESS,
                    None,
                )))
            }
        }),
    );
    (
        RemotingClient::with_processors(ClientConfig::default(), registry),
        rx,
    )
}

fn reply_header(topic: &str, props: &str) -> SendMessageRequestHeader {
    SendMessageRequestHeader {
        producer_group: "ReplierGroup".into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: 1,
        born_timestamp: 1_700_000_000_000,
        properties: Some(props.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_reply_reaches_its_requester_and_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(broker_config(dir.path(), None)).await;
    assert_eq!(
        b.call(create_topic("ReplyT".into())).await.code,
        response_code::SUCCESS
    );
    let (req_client, mut pushes) = requester();
    let heartbeat = apogee_protocol::body::HeartbeatData {
        client_id: "10.0.0.9@requester".into(),
        producer_data_set: vec![apogee_protocol::body::ProducerData {
            group_name: "RequesterGroup".into(),
        }],
        ..Default::default()
    };
    let hb = RemotingCommand::request(request_code::HEART_BEAT).with_body(heartbeat.encode());
    let resp = req_client.invoke(&b.addr, hb, TIMEOUT).await.unwrap();
    assert_eq!(resp.code, response_code::SUCCESS);

    let mut props = String::new();
    properties::append(
        &mut props,
        keys::MESSAGE_REPLY_TO_CLIENT,
        "10.0.0.9@requester",
    );
    properties::append(&mut props, "CORRELATION_ID", "corr-1");
    properties::append(&mut props, keys::MESSAGE_TYPE, "reply");
    let h = reply_header("ReplyT", &props);
    // V2 (short field names), as Java's DefaultMQProducer sends replies.
    let v2 = SendMessageRequestHeaderV2::from(h.clone());
    let cmd = RemotingCommand::request(request_code::SEND_REPLY_MESSAGE_V2)
        .with_header(&v2)
        .with_body(Bytes::from_static(b"the answer"));
    let resp = b.call(cmd).await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    let rh: SendMessageResponseHeader = resp.decode_header().unwrap();
    assert_eq!(rh.queue_id, 1);
    assert_eq!(rh.msg_id.len(), 32, "stored: an offset message id");

    let push = tokio::time::timeout(Duration::from_secs(5), pushes.recv())
        .await
        .expect("a push within 5 s")
        .expect("push");
    assert_eq!(push.body.as_deref(), Some(&b"the answer"[..]));
    let ph: ReplyMessageRequestHeader = push.decode_header().unwrap();
    assert_eq!(ph.topic, "ReplyT");
    assert_eq!(ph.producer_group, "ReplierGroup");
    assert_eq!(ph.queue_id, 1);
    assert_eq!(ph.born_timestamp, 1_700_000_000_000);
    assert!(ph.store_timestamp > 0);
    let pushed_props = ph.properties.unwrap_or_default();
    assert_eq!(
        properties::get(&pushed_props, "CORRELATION_ID"),
        Some("corr-1")
    );
    assert!(properties::get(&pushed_props, keys::PUSH_REPLY_TIME).is_some());
    assert_eq!(ph.store_host, b.ctx().store_host.to_string());

    // Stored in its topic too (storeReplyMessageEnable defaults to true).
    assert!(
        eventually(Duration::from_secs(5), || b
            .ctx()
            .store
            .max_offset("ReplyT", 1)
            == 1)
        .await
    );

    // The requester goes: the next reply is answered SYSTEM_ERROR, named,
    // and still stored.
    req_client.close().await;
    assert!(
        eventually(Duration::from_secs(5), || b
            .ctx()
            .producers
            .channel_for_client("10.0.0.9@requester")
            .is_none())
        .await
    );
    let cmd = RemotingCommand::request(request_code::SEND_REPLY_MESSAGE)
        .with_header(&h)
        .with_body(Bytes::from_static(b"too late"));
    let resp = b.call(cmd).await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    let remark = resp.remark.clone().unwrap_or_default();
    assert!(remark.contains("10.0.0.9@requester"), "{remark}");
    assert!(
        eventually(Duration::from_secs(5), || b
            .ctx()
            .store
            .max_offset("ReplyT", 1)
            == 2)
        .await
    );

    // Without REPLY_TO_CLIENT there is no one to push to.
    let cmd = RemotingCommand::request(request_code::SEND_REPLY_MESSAGE)
        .with_header(&reply_header("ReplyT", ""))
        .with_body(Bytes::from_static(b"to nobody"));
    let resp = b.call(cmd).await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(
        resp.remark.unwrap_or_default().contains("REPLY_TO_CLIENT"),
        "names the property"
    );
    b.stop().await;
}
