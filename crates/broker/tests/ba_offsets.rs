//! Consumer offsets over TCP: UPDATE/QUERY_CONSUMER_OFFSET with Java's
//! not-found rules, bad input codes and remarks, periodic persistence, and
//! offsets, topics and groups surviving a broker restart.

mod ba_common;

use std::time::Duration;

use apogee_protocol::body::{SubscriptionGroupConfig, TopicConfig};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{
    QueryConsumerOffsetRequestHeader, QueryConsumerOffsetResponseHeader,
    UpdateConsumerOffsetRequestHeader,
};
use apogee_protocol::message::MessageToStore;
use apogee_protocol::RemotingCommand;
use ba_common::*;
use bytes::Bytes;

fn update(group: &str, topic: &str, queue_id: i32, offset: i64) -> RemotingCommand {
    RemotingCommand::request(request_code::UPDATE_CONSUMER_OFFSET).with_header(
        &UpdateConsumerOffsetRequestHeader {
            consumer_group: group.into(),
            topic: topic.into(),
            queue_id,
            commit_offset: offset,
            ..Default::default()
        },
    )
}

fn query(group: &str, topic: &str, queue_id: i32, zero: Option<bool>) -> RemotingCommand {
    RemotingCommand::request(request_code::QUERY_CONSUMER_OFFSET).with_header(
        &QueryConsumerOffsetRequestHeader {
            consumer_group: group.into(),
            topic: topic.into(),
            queue_id,
            set_zero_if_not_found: zero,
            ..Default::default()
        },
    )
}

async fn queried(
    broker: &Broker,
    group: &str,
    topic: &str,
    queue_id: i32,
) -> Result<i64, (i32, String)> {
    let resp = broker.call(query(group, topic, queue_id, None)).await;
    if resp.code != response_code::SUCCESS {
        return Err((resp.code, resp.remark.unwrap_or_default()));
    }
    Ok(resp
        .decode_header::<QueryConsumerOffsetResponseHeader>()
        .expect("offset header")
        .offset)
}

fn topic(broker: &Broker, name: &str, queues: i32) {
    broker.ctx().topics.update(TopicConfig {
        topic_name: name.into(),
        read_queue_nums: queues,
        write_queue_nums: queues,
        ..Default::default()
    });
}

fn store_one(broker: &Broker, topic: &str, queue_id: i32) {
    let host = broker.ctx().store_host;
    let msg = MessageToStore {
        topic: topic.into(),
        queue_id,
        flag: 0,
        body: Bytes::from_static(b"hello"),
        properties: String::new(),
        sys_flag: 0,
        born_timestamp: 1,
        born_host: host,
        store_host: host,
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        tags_code: 0,
    };
    broker.ctx().store.put_message(&msg).expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_query_and_not_found_rules() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_config(dir.path(), None)).await;
    topic(&broker, "T", 4);
    broker.ctx().groups.find_or_create("g").unwrap();

    assert_eq!(
        broker.call(update("g", "T", 0, 12)).await.code,
        response_code::SUCCESS
    );
    assert_eq!(queried(&broker, "g", "T", 0).await, Ok(12));
    assert_eq!(broker.ctx().offsets.query("g", "T", 0), Some(12));

    // Never committed, empty queue: QUERY_NOT_FOUND with Java's remark.
    let (code, remark) = queried(&broker, "g", "T", 1).await.unwrap_err();
    assert_eq!(code, response_code::QUERY_NOT_FOUND);
    assert_eq!(
        remark,
        "Not found, V3_0_6_SNAPSHOT maybe this group consumer boot first"
    );

    // A young queue whose first message is still in memory reads from 0 ...
    store_one(&broker, "T", 2);
    assert!(eventually(TIMEOUT, || broker.ctx().store.max_offset("T", 2) == 1).await);
    assert_eq!(queried(&broker, "g", "T", 2).await, Ok(0));
    // ... unless the 5.x client asks not to be given zero.
    let resp = broker.call(query("g", "T", 2, Some(false))).await;
    assert_eq!(resp.code, response_code::QUERY_NOT_FOUND);
    assert!(resp.remark.unwrap().contains("do not set to zero"));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offset_requests_get_codes_and_remarks() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(broker_config(dir.path(), None)).await;
    topic(&broker, "T", 4);
    broker.ctx().groups.find_or_create("g").unwrap();

    let resp = broker.call(update("nog", "T", 0, 1)).await;
    assert_eq!(resp.code, response_code::SUBSCRIPTION_GROUP_NOT_EXIST);
    assert_eq!(resp.remark.as_deref(), Some("Group nog not exist!"));

    let resp = broker.call(update("g", "NoTopic", 0, 1)).await;
    assert_eq!(resp.code, response_code::TOPIC_NOT_EXIST);
    assert_eq!(resp.remark.as_deref(), Some("Topic NoTopic not exist!"));

    for q in [4, -1] {
        let resp = broker.call(update("g", "T", q, 1)).await;
        assert_eq!(resp.code, response_code::SYSTEM_ERROR);
        let remark = resp.remark.unwrap();
        assert!(
            remark.contains(&format!("queueId {q} is illegal")),
            "{remark}"
        );
        let resp = broker.call(query("g", "T", q, None)).await;
        assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    }

    let mut missing = update("g", "T", 0, 1);
    missing.ext_fields.remove("commitOffset");
    let resp = broker.call(missing).await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(resp.remark.unwrap().contains("commitOffset"));

    let mut garbled = query("g", "T", 0, None);
    garbled.set_ext("queueId", "zero");
    let resp = broker.call(garbled).await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    assert!(resp.remark.unwrap().contains("queueId"));

    let resp = broker.call(update("g", "T", 0, -5)).await;
    assert_eq!(resp.code, response_code::SYSTEM_ERROR);
    // Nothing bad was recorded.
    assert_eq!(broker.ctx().offsets.query("g", "T", 0), None);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_persisted_periodically() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(dir.path(), None);
    cfg.flush_consumer_offset_interval = Duration::from_millis(100);
    let broker = Broker::start(cfg).await;
    topic(&broker, "T", 2);
    broker.ctx().groups.find_or_create("g").unwrap();
    broker.call(update("g", "T", 1, 77)).await;
    let file = dir.path().join("config/consumerOffset.json");
    assert!(
        eventually(TIMEOUT, || std::fs::read_to_string(&file)
            .is_ok_and(|t| t.contains("\"T@g\":{1:77}")))
        .await,
        "offset never persisted"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_topics_and_groups_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = Broker::start(broker_config(dir.path(), None)).await;
        topic(&broker, "Kept", 5);
        let mut g = SubscriptionGroupConfig::new("kg");
        g.retry_max_times = 4;
        broker.ctx().groups.update(g);
        assert_eq!(
            broker.call(update("kg", "Kept", 3, 41)).await.code,
            response_code::SUCCESS
        );
        broker.stop().await;
    }
    let broker = Broker::start(broker_config(dir.path(), None)).await;
    assert_eq!(queried(&broker, "kg", "Kept", 3).await, Ok(41));
    let t = broker.ctx().topics.get("Kept").expect("topic reloaded");
    assert_eq!((t.read_queue_nums, t.write_queue_nums), (5, 5));
    assert_eq!(
        broker
            .ctx()
            .groups
            .get("kg")
            .expect("group reloaded")
            .retry_max_times,
        4
    );
    broker.stop().await;
}
