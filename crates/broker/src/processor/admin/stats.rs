//! Statistics and client tables for admin tools: GET_CONSUME_STATS (lag per
//! queue), GET_TOPIC_STATS_INFO, GET_BROKER_CONSUME_STATS, consumer and
//! producer connections, which groups consume a topic, and the raw offset
//! and delay-progress tables.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use apogee_protocol::body::fastjson::{self, mq_key_map, Dialect};
use apogee_protocol::body::{
    Connection, ConsumeStats, ConsumerConnection, DataVersion, GroupList, MessageQueue,
    OffsetWrapper, ProducerConnection, TopicList, TopicOffset, TopicStatsTable,
};
use apogee_protocol::code::response_code;
use apogee_protocol::header::{
    GetConsumeStatsInBrokerHeader, GetConsumeStatsRequestHeader,
    GetConsumerConnectionListRequestHeader, GetProducerConnectionListRequestHeader,
    GetTopicStatsInfoRequestHeader, QueryTopicConsumeByWhoRequestHeader,
    QueryTopicsByConsumerRequestHeader,
};
use apogee_protocol::message::stored;
use apogee_protocol::RemotingCommand;
use apogee_store::MessageStore;
use serde::Serialize;

use super::{bad_header, fail, ok};
use crate::context::BrokerContext;

/// Store time of the message at `offset` of a queue, if it is still there
/// (Java `getMessageStoreTimeStamp`).
pub fn store_timestamp_at(
    store: &MessageStore,
    topic: &str,
    queue_id: i32,
    offset: i64,
) -> Option<i64> {
    if offset < 0 {
        return None;
    }
    let r = store.get_messages("", topic, queue_id, offset, 1, usize::MAX, None);
    let rec = r.messages.first()?;
    stored::check_record(rec, false)
        .ok()
        .map(|i| i.store_timestamp)
}

/// The topics GET_CONSUME_STATS reports for `group` (Java
/// `getTopicsForCollectingConsumeStats`): an explicit `topicList` as given;
/// else the requested topic, or every topic the group has offsets for or
/// subscribes to; then, if the group has live subscriptions, only those.
pub fn topics_for_consume_stats(
    topic_list: &[String],
    topic: Option<&str>,
    offset_topics: Vec<String>,
    subscribed: &BTreeSet<String>,
) -> BTreeSet<String> {
    if !topic_list.is_empty() {
        return topic_list.iter().cloned().collect();
    }
    let mut topics: BTreeSet<String> = match topic.filter(|t| !t.trim().is_empty()) {
        Some(t) => [t.to_owned()].into(),
        None => offset_topics
            .into_iter()
            .chain(subscribed.iter().cloned())
            .collect(),
    };
    if !subscribed.is_empty() {
        topics.retain(|t| subscribed.contains(t));
    }
    topics
}

/// ConsumeStats of `group` on `topics` (blocking store reads).
pub fn consume_stats(ctx: &BrokerContext, group: &str, topics: &BTreeSet<String>) -> ConsumeStats {
    let mut stats = ConsumeStats::default();
    let broker_name = &ctx.config.broker_name;
    let inflight = ctx.pop_revive.inflight_of(group);
    for topic in topics {
        let Some(cfg) = ctx.topics.get(topic) else {
            tracing::debug!(
                topic,
                group,
                "consume stats: topic config does not exist; skipped"
            );
            continue;
        };
        let committed = ctx.offsets.offsets(group, topic);
        for q in 0..cfg.read_queue_nums.max(0) {
            let pop_inflight = inflight.get(&(topic.clone(), q)).copied().unwrap_or(0);
            let broker_offset = ctx.store.max_offset(topic, q).max(0);
            let consumer_offset = committed.get(&q).copied().unwrap_or(0).max(0);
            let last_timestamp =
                store_timestamp_at(&ctx.store, topic, q, consumer_offset - 1).unwrap_or(0);
            stats.offset_table.insert(
                MessageQueue::new(topic.clone(), broker_name.clone(), q),
                OffsetWrapper {
                    broker_offset,
                    consumer_offset,
                    // No separate pull offset is tracked: the committed
                    // offset is the furthest position the broker knows.
                    pull_offset: consumer_offset,
                    last_timestamp,
                    pop_inflight: i64::try_from(pop_inflight).unwrap_or(i64::MAX),
                },
            );
        }
        // Java reports the per-minute rate.
        stats.consume_tps += ctx.stats.group_get_tps(group, topic).tps_1m;
    }
    stats
}

pub(super) async fn get_consume_stats(
    ctx: &Arc<BrokerContext>,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: GetConsumeStatsRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let group = h.consumer_group.clone();
    let list: Vec<String> = h
        .topic_list
        .as_deref()
        .unwrap_or("")
        .split(';')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let subscribed: BTreeSet<String> = ctx
        .consumers
        .group_info(&group)
        .map(|g| g.subscriptions.into_keys().collect())
        .unwrap_or_default();
    let offset_topics = ctx.offsets.topics_of_group(&group);
    let known_group =
        ctx.groups.contains(&group) || !offset_topics.is_empty() || !subscribed.is_empty();
    if !known_group {
        return fail(
            response_code::SUBSCRIPTION_GROUP_NOT_EXIST,
            format!(
                "consumer group {group} does not exist on broker {} (no config, no offsets, no online consumer)",
                ctx.config.broker_name
            ),
        );
    }
    let topics = topics_for_consume_stats(&list, h.topic.as_deref(), offset_topics, &subscribed);
    if let Some(t) = h.topic.as_deref().filter(|t| !t.trim().is_empty()) {
        if list.is_empty() && !ctx.topics.contains(t) {
            return fail(
                response_code::TOPIC_NOT_EXIST,
                format!("topic[{t}] not exist on broker {}", ctx.config.broker_name),
            );
        }
    }
    let c = Arc::clone(ctx);
    match tokio::task::spawn_blocking(move || consume_stats(&c, &group, &topics)).await {
        Ok(stats) => ok().with_body(stats.encode()),
        Err(e) => fail(
            response_code::SYSTEM_ERROR,
            format!("consume stats failed: {e}"),
        ),
    }
}

/// TopicStatsTable of one topic (blocking store reads).
pub fn topic_stats(ctx: &BrokerContext, topic: &str, queues: i32) -> TopicStatsTable {
    let mut table = TopicStatsTable::default();
    for q in 0..queues.max(0) {
        let min = ctx.store.min_offset(topic, q).max(0);
        let max = ctx.store.max_offset(topic, q).max(0);
        let last = if max > 0 {
            store_timestamp_at(&ctx.store, topic, q, max - 1).unwrap_or(0)
        } else {
            0
        };
        table.offset_table.insert(
            MessageQueue::new(topic, ctx.config.broker_name.clone(), q),
            TopicOffset {
                min_offset: min,
                max_offset: max,
                last_update_timestamp: last,
            },
        );
    }
    table.topic_put_tps = Some(ctx.stats.topic_put_tps(topic).tps_1m);
    table
}

pub(super) async fn get_topic_stats_info(
    ctx: &Arc<BrokerContext>,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: GetTopicStatsInfoRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let Some(cfg) = ctx.topics.get(&h.topic) else {
        return fail(
            response_code::TOPIC_NOT_EXIST,
            format!(
                "topic[{}] not exist on broker {}",
                h.topic, ctx.config.broker_name
            ),
        );
    };
    let queues = cfg.write_queue_nums.max(cfg.read_queue_nums);
    let c = Arc::clone(ctx);
    match tokio::task::spawn_blocking(move || topic_stats(&c, &h.topic, queues)).await {
        Ok(t) => ok().with_body(t.encode()),
        Err(e) => fail(
            response_code::SYSTEM_ERROR,
            format!("topic stats failed: {e}"),
        ),
    }
}

fn connection(info: &crate::client::ClientChannelInfo) -> Connection {
    Connection {
        client_id: info.client_id.clone(),
        client_addr: info.channel.peer_addr().to_string(),
        language: info.language,
        version: info.version,
    }
}

pub(super) fn get_consumer_connection_list(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: GetConsumerConnectionListRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    match ctx.consumers.group_info(&h.consumer_group) {
        Some(g) if !g.channels.is_empty() => {
            let body = ConsumerConnection {
                connection_set: g.channels.iter().map(connection).collect(),
                subscription_table: g.subscriptions,
                consume_type: g.consume_type,
                message_model: g.message_model,
                consume_from_where: g.consume_from_where,
            };
            ok().with_body(body.encode())
        }
        _ => fail(
            response_code::CONSUMER_NOT_ONLINE,
            format!("the consumer group[{}] not online", h.consumer_group),
        ),
    }
}

pub(super) fn get_producer_connection_list(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: GetProducerConnectionListRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let conns = ctx.producers.connections(&h.producer_group);
    if conns.is_empty() {
        return fail(
            response_code::SYSTEM_ERROR,
            format!("the producer group[{}] not exist", h.producer_group),
        );
    }
    let body = ProducerConnection {
        connection_set: conns.iter().map(connection).collect(),
    };
    ok().with_body(body.encode())
}

pub(super) fn query_topic_consume_by_who(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: QueryTopicConsumeByWhoRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let mut groups: BTreeSet<String> = ctx
        .consumers
        .groups_by_topic(&h.topic)
        .into_iter()
        .collect();
    groups.extend(ctx.offsets.groups_of_topic(&h.topic));
    ok().with_body(GroupList { group_list: groups }.encode())
}

pub(super) fn query_topics_by_consumer(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: QueryTopicsByConsumerRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let body = TopicList {
        topic_list: ctx.offsets.topics_of_group(&h.group).into_iter().collect(),
        broker_addr: Some(ctx.broker_addr.clone()),
    };
    ok().with_body(body.encode())
}

pub(super) fn get_all_consumer_offset(ctx: &BrokerContext) -> RemotingCommand {
    ok().with_body(ctx.offsets.encode())
}

/// `DelayOffsetSerializeWrapper`: delay level -> delivered queue offset.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DelayOffsetWrapper {
    #[serde(with = "fastjson::int_key_map")]
    offset_table: BTreeMap<i32, i64>,
    data_version: DataVersion,
}

pub(super) fn get_all_delay_offset(ctx: &BrokerContext) -> RemotingCommand {
    let body = DelayOffsetWrapper {
        offset_table: ctx.schedule.level_offsets(),
        data_version: DataVersion::now(),
    };
    ok().with_body(fastjson::to_vec(&body, Dialect::Fastjson))
}

/// ConsumeStats wrapped for `ConsumeStatsList` (object keys preserved).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsumeStatsJson {
    #[serde(with = "mq_key_map")]
    offset_table: BTreeMap<MessageQueue, OffsetWrapper>,
    consume_tps: f64,
}

/// Body of GET_BROKER_CONSUME_STATS (`ConsumeStatsList`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsumeStatsList {
    consume_stats_list: Vec<BTreeMap<String, Vec<ConsumeStatsJson>>>,
    broker_addr: String,
    total_diff: i64,
    total_inflight_diff: i64,
}

pub(super) async fn get_broker_consume_stats(
    ctx: &Arc<BrokerContext>,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: GetConsumeStatsInBrokerHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let c = Arc::clone(ctx);
    let built = tokio::task::spawn_blocking(move || {
        let mut list = Vec::new();
        let mut total_diff = 0i64;
        for g in c.groups.all() {
            let group = g.group_name;
            let subscribed: BTreeSet<String> = c
                .consumers
                .group_info(&group)
                .map(|i| i.subscriptions.into_keys().collect())
                .unwrap_or_default();
            let mut per_topic = Vec::new();
            for topic in c.offsets.topics_of_group(&group) {
                let Some(cfg) = c.topics.get(&topic) else {
                    continue;
                };
                if h.is_order && !cfg.order {
                    continue;
                }
                if !subscribed.is_empty() && !subscribed.contains(&topic) {
                    continue;
                }
                let s = consume_stats(&c, &group, &[topic].into());
                total_diff += s
                    .offset_table
                    .values()
                    .map(|o| (o.broker_offset - o.consumer_offset).max(0))
                    .sum::<i64>();
                per_topic.push(ConsumeStatsJson {
                    offset_table: s.offset_table,
                    consume_tps: s.consume_tps,
                });
            }
            list.push([(group, per_topic)].into());
        }
        ConsumeStatsList {
            consume_stats_list: list,
            broker_addr: c.broker_addr.clone(),
            total_diff,
            total_inflight_diff: 0,
        }
    })
    .await;
    match built {
        Ok(b) => ok().with_body(fastjson::to_vec(&b, Dialect::Fastjson)),
        Err(e) => fail(
            response_code::SYSTEM_ERROR,
            format!("broker consume stats failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn topic_list_wins_and_ignores_subscriptions() {
        let t = topics_for_consume_stats(
            &["A".into(), "B".into()],
            Some("C"),
            vec!["D".into()],
            &set(&["A"]),
        );
        assert_eq!(t, set(&["A", "B"]));
    }

    #[test]
    fn offsets_and_subscriptions_are_merged_then_filtered() {
        // Without live subscriptions every topic with offsets counts.
        let t = topics_for_consume_stats(&[], None, vec!["T".into(), "%RETRY%g".into()], &set(&[]));
        assert_eq!(t, set(&["%RETRY%g", "T"]));
        // With them, only subscribed topics stay (an old topic is dropped).
        let t = topics_for_consume_stats(
            &[],
            None,
            vec!["T".into(), "Old".into()],
            &set(&["T", "%RETRY%g"]),
        );
        assert_eq!(t, set(&["%RETRY%g", "T"]));
        // An explicit topic the group does not subscribe to is dropped too.
        let t = topics_for_consume_stats(&[], Some("X"), vec![], &set(&["T"]));
        assert!(t.is_empty());
        let t = topics_for_consume_stats(&[], Some("X"), vec![], &set(&[]));
        assert_eq!(t, set(&["X"]));
    }
}
