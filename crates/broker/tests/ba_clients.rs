//! Client tables over TCP: heartbeats, consumer lists,
//! NOTIFY_CONSUMER_IDS_CHANGED to every member on join/leave/close and on
//! subscription change, expiry of silent channels, producers,
//! UNREGISTER_CLIENT, CHECK_CLIENT_CONFIG and bad heartbeat bodies.

mod ba_common;

use std::time::Duration;

use apogee_protocol::body::{
    CheckClientRequestBody, GetConsumerListByGroupResponseBody, SubscriptionData,
};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{GetConsumerListByGroupRequestHeader, UnregisterClientRequestHeader};
use apogee_protocol::RemotingCommand;
use ba_common::*;

fn list_request(group: &str) -> RemotingCommand {
    RemotingCommand::request(request_code::GET_CONSUMER_LIST_BY_GROUP).with_header(
        &GetConsumerListByGroupRequestHeader {
            consumer_group: group.into(),
            ..Default::default()
        },
    )
}

async fn consumer_list(broker: &Broker, group: &str) -> Result<Vec<String>, (i32, String)> {
    let resp = broker.call(list_request(group)).await;
    if resp.code != response_code::SUCCESS {
        return Err((resp.code, resp.remark.unwrap_or_default()));
    }
    let body = GetConsumerListByGroupResponseBody::decode(resp.body.as_deref().unwrap_or_default())
        .expect("list body");
    Ok(body.consumer_id_list)
}

fn assert_notify(cmd: Option<RemotingCommand>, group: &str) {
    let cmd = cmd.expect("expected NOTIFY_CONSUMER_IDS_CHANGED");
    assert_eq!(cmd.code, request_code::NOTIFY_CONSUMER_IDS_CHANGED);
    assert_eq!(cmd.ext("consumerGroup"), Some(group));
}

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_listed_and_notified_on_join_leave_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_config(dir.path(), None)).await;
    let (code, remark) = consumer_list(&broker, "g").await.unwrap_err();
    assert_eq!(code, response_code::SYSTEM_ERROR);
    assert_eq!(remark, "no consumer for this group, g");

    let mut m1 = Member::new("10.0.0.1@a");
    let mut m2 = Member::new("10.0.0.2@b");
    assert_eq!(
        m1.heartbeat(&broker.addr, "g", &["T"]).await.code,
        response_code::SUCCESS
    );
    assert_notify(m1.next_push(TIMEOUT).await, "g"); // its own arrival
    assert_eq!(
        consumer_list(&broker, "g").await.unwrap(),
        vec!["10.0.0.1@a"]
    );

    // A second member joins: both are told.
    m2.heartbeat(&broker.addr, "g", &["T"]).await;
    assert_notify(m1.next_push(TIMEOUT).await, "g");
    assert_notify(m2.next_push(TIMEOUT).await, "g");
    assert_eq!(
        consumer_list(&broker, "g").await.unwrap(),
        vec!["10.0.0.1@a", "10.0.0.2@b"]
    );

    // A repeated heartbeat with the same subscriptions changes nothing.
    m1.heartbeat(&broker.addr, "g", &["T"]).await;
    assert!(m1.next_push(QUIET).await.is_none());
    assert!(m2.next_push(QUIET).await.is_none());

    // UNREGISTER_CLIENT: the remaining member is told.
    let h = UnregisterClientRequestHeader {
        client_id: "10.0.0.2@b".into(),
        consumer_group: Some("g".into()),
        ..Default::default()
    };
    let resp = m2
        .call(
            &broker.addr,
            RemotingCommand::request(request_code::UNREGISTER_CLIENT).with_header(&h),
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    assert_notify(m1.next_push(TIMEOUT).await, "g");
    assert_eq!(
        consumer_list(&broker, "g").await.unwrap(),
        vec!["10.0.0.1@a"]
    );

    // It comes back, then its connection drops: removed and m1 is told.
    m2.heartbeat(&broker.addr, "g", &["T"]).await;
    assert_notify(m1.next_push(TIMEOUT).await, "g");
    m2.drain();
    m2.client.close().await;
    assert_notify(m1.next_push(TIMEOUT).await, "g");
    assert!(
        eventually(TIMEOUT, || broker.ctx().consumers.client_ids("g")
            == vec!["10.0.0.1@a".to_string()])
        .await
    );

    // A subscription change notifies too.
    m1.drain();
    m1.heartbeat(&broker.addr, "g", &["T", "T2"]).await;
    assert_notify(m1.next_push(TIMEOUT).await, "g");
    assert!(broker
        .ctx()
        .consumers
        .find_subscription("g", "T2")
        .is_some());

    m1.client.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_channels_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), None);
    cfg.channel_expired_timeout = Duration::from_millis(300);
    cfg.channel_scan_interval = Duration::from_millis(50);
    let broker = Broker::start(cfg).await;
    let m1 = Member::new("10.0.0.1@a");
    m1.heartbeat(&broker.addr, "g", &["T"]).await;
    m1.producer_heartbeat(&broker.addr, "pg").await;
    assert_eq!(broker.ctx().producers.connections("pg").len(), 1);
    assert!(eventually(TIMEOUT, || broker.ctx().consumers.group_info("g").is_none()).await);
    assert!(broker.ctx().producers.connections("pg").is_empty());
    let (code, _) = consumer_list(&broker, "g").await.unwrap_err();
    assert_eq!(code, response_code::SYSTEM_ERROR);
    m1.client.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_register_and_unregister() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_config(dir.path(), None)).await;
    let p = Member::new("10.0.0.9@p");
    assert_eq!(
        p.producer_heartbeat(&broker.addr, "pg").await.code,
        response_code::SUCCESS
    );
    let conns = broker.ctx().producers.connections("pg");
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].client_id, "10.0.0.9@p");
    assert!(broker
        .ctx()
        .producers
        .channel_for_client("10.0.0.9@p")
        .is_some());
    let h = UnregisterClientRequestHeader {
        client_id: "10.0.0.9@p".into(),
        producer_group: Some("pg".into()),
        ..Default::default()
    };
    p.call(
        &broker.addr,
        RemotingCommand::request(request_code::UNREGISTER_CLIENT).with_header(&h),
    )
    .await;
    assert!(broker.ctx().producers.connections("pg").is_empty());
    p.client.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_creates_group_and_retry_topic_and_rejects_bad_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_config(dir.path(), None)).await;
    let m = Member::new("10.0.0.1@a");
    m.heartbeat(&broker.addr, "cg", &["T"]).await;
    assert!(broker.ctx().groups.get("cg").is_some());
    let retry = broker.ctx().topics.get("%RETRY%cg").expect("retry topic");
    assert_eq!(retry.write_queue_nums, 1);
    assert_eq!(retry.perm, 6);

    let resp = m
        .call(
            &broker.addr,
            RemotingCommand::request(request_code::HEART_BEAT),
        )
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(resp.remark.unwrap().contains("HeartbeatData"));
    let resp = m
        .call(
            &broker.addr,
            RemotingCommand::request(request_code::HEART_BEAT).with_body(&b"{not json"[..]),
        )
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(resp.remark.unwrap().starts_with("bad HEART_BEAT body"));

    // UNREGISTER_CLIENT without clientID names the missing field.
    let resp = m
        .call(
            &broker.addr,
            RemotingCommand::request(request_code::UNREGISTER_CLIENT),
        )
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(resp.remark.unwrap().contains("clientID"));
    m.client.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_client_config_accepts_tags_and_sql_and_refuses_bad_sql() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_config(dir.path(), None)).await;
    let body = |sub: SubscriptionData| {
        CheckClientRequestBody {
            client_id: "c".into(),
            group: "g".into(),
            subscription_data: Some(sub),
            namespace: None,
        }
        .encode()
    };
    let tag = body(SubscriptionData::tag("T", "a || b"));
    let resp = broker
        .call(RemotingCommand::request(request_code::CHECK_CLIENT_CONFIG).with_body(tag))
        .await;
    assert_eq!(resp.code, response_code::SUCCESS);
    let mut sql = SubscriptionData::tag("T", "*");
    sql.expression_type = "SQL92".into();
    sql.sub_string = "a > 1".into();
    let resp = broker
        .call(
            RemotingCommand::request(request_code::CHECK_CLIENT_CONFIG)
                .with_body(body(sql.clone())),
        )
        .await;
    assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    // A malformed expression: SUBSCRIPTION_PARSE_FAILED with the parser's words.
    let mut bad = sql.clone();
    bad.sub_string = "a > ".into();
    let resp = broker
        .call(RemotingCommand::request(request_code::CHECK_CLIENT_CONFIG).with_body(body(bad)))
        .await;
    assert_eq!(resp.code, response_code::SUBSCRIPTION_PARSE_FAILED);
    assert!(resp.remark.unwrap().contains("Invalid MessageSelector"));
    // enablePropertyFilter=false refuses SQL92 as Apache does.
    broker.ctx().runtime_config.write().enable_property_filter = false;
    let resp = broker
        .call(RemotingCommand::request(request_code::CHECK_CLIENT_CONFIG).with_body(body(sql)))
        .await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(resp.remark.unwrap().contains("SQL92"));
    broker.stop().await;
}
