//! Queue offset queries (GET_MAX_OFFSET, GET_MIN_OFFSET,
//! SEARCH_OFFSET_BY_TIMESTAMP, GET_EARLIEST_MSG_STORETIME) and the admin
//! reset of a group's offsets by timestamp (INVOKE_BROKER_TO_RESET_OFFSET),
//! which moves the committed offsets on the broker and tells every running
//! consumer of the group with RESET_CONSUMER_CLIENT_OFFSET.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::body::{MessageQueue, ResetOffsetBody, ResetOffsetBodyForC};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{
    GetEarliestMsgStoretimeRequestHeader, GetEarliestMsgStoretimeResponseHeader,
    GetMaxOffsetRequestHeader, GetMaxOffsetResponseHeader, GetMinOffsetRequestHeader,
    GetMinOffsetResponseHeader, ResetOffsetRequestHeader, SearchOffsetRequestHeader,
    SearchOffsetResponseHeader,
};
use apogee_protocol::{LanguageCode, RemotingCommand};
use apogee_remoting::RequestContext;
use apogee_store::MessageStore;

use super::{bad_header, fail, ok, VERSION_V3_0_7_SNAPSHOT};
use crate::context::BrokerContext;

/// How long one oneway push to a consumer may wait for the connection.
const PUSH_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) fn get_max_offset(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let h: GetMaxOffsetRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let offset = ctx.store.max_offset(&h.topic, h.queue_id);
    ok().with_header(&GetMaxOffsetResponseHeader { offset })
}

pub(super) fn get_min_offset(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let h: GetMinOffsetRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let offset = ctx.store.min_offset(&h.topic, h.queue_id);
    ok().with_header(&GetMinOffsetResponseHeader { offset })
}

/// Java's `getOffsetInQueueByTime` with a boundary: LOWER is the first
/// offset stored at or after `timestamp` (the max offset when none is);
/// UPPER is the last offset stored at or before it (0 when none is).
pub fn search_offset(
    store: &MessageStore,
    topic: &str,
    queue_id: i32,
    timestamp: i64,
    upper: bool,
) -> i64 {
    if !upper {
        return store.offset_by_time(topic, queue_id, timestamp);
    }
    // The first offset stored after `timestamp`, minus one, is the last
    // one stored at or before it.
    let after = store.offset_by_time(topic, queue_id, timestamp.saturating_add(1));
    if after <= store.min_offset(topic, queue_id) {
        0
    } else {
        after - 1
    }
}

pub(super) async fn search_offset_by_timestamp(
    ctx: &Arc<BrokerContext>,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: SearchOffsetRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let upper = h.is_upper_boundary();
    let store = Arc::clone(&ctx.store);
    // The binary search reads store times from the CommitLog.
    let found = tokio::task::spawn_blocking(move || {
        search_offset(&store, &h.topic, h.queue_id, h.timestamp, upper)
    })
    .await;
    match found {
        Ok(offset) => ok().with_header(&SearchOffsetResponseHeader { offset }),
        Err(e) => fail(
            response_code::SYSTEM_ERROR,
            format!("offset search failed: {e}"),
        ),
    }
}

pub(super) async fn get_earliest_msg_store_time(
    ctx: &Arc<BrokerContext>,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: GetEarliestMsgStoretimeRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let store = Arc::clone(&ctx.store);
    let t = tokio::task::spawn_blocking(move || store.earliest_message_time(&h.topic, h.queue_id))
        .await
        .ok()
        .flatten();
    // Java answers -1 for a queue without messages.
    ok().with_header(&GetEarliestMsgStoretimeResponseHeader {
        timestamp: t.unwrap_or(-1),
    })
}

/// What a reset will do: the new offset of each queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResetPlan {
    pub offsets: BTreeMap<i32, i64>,
}

/// Computes the offsets a reset moves `group` to on `topic` (Java
/// `resetOffsetInner`, plus the `isForce` rule of the client-side path):
/// * `queue_id >= 0` with an explicit `offset` (not -1): that offset, which
///   must lie within the queue's `[min, max]`;
/// * otherwise per queue (one, or all `read_queue_nums`): the max offset
///   when `timestamp < 0`, else the first offset stored at or after it;
/// * without `force`, a committed offset is never moved forward.
///
/// The error is the remark for a SYSTEM_ERROR answer.
#[allow(clippy::too_many_arguments)]
pub fn reset_offsets(
    store: &MessageStore,
    committed: &BTreeMap<i32, i64>,
    topic: &str,
    read_queue_nums: i32,
    queue_id: i32,
    timestamp: i64,
    offset: Option<i64>,
    force: bool,
) -> Result<ResetPlan, String> {
    let target_of = |q: i32| -> i64 {
        if timestamp < 0 {
            store.max_offset(topic, q)
        } else {
            store.offset_by_time(topic, q, timestamp)
        }
    };
    let mut plan = ResetPlan::default();
    if queue_id >= 0 {
        if queue_id >= read_queue_nums {
            return Err(format!(
                "queue {queue_id} does not exist: topic {topic} has {read_queue_nums} read queues"
            ));
        }
        let target = match offset.filter(|o| *o != -1) {
            Some(o) => {
                let (min, max) = (
                    store.min_offset(topic, queue_id),
                    store.max_offset(topic, queue_id),
                );
                if o < min || o > max {
                    return Err(format!(
                        "Target offset {o} not in consume queue range [{min}-{max}] of {topic} queue {queue_id}"
                    ));
                }
                o
            }
            None => target_of(queue_id),
        };
        plan.offsets.insert(queue_id, target);
    } else {
        for q in 0..read_queue_nums.max(0) {
            plan.offsets.insert(q, target_of(q));
        }
    }
    if !force {
        for (q, target) in plan.offsets.iter_mut() {
            if let Some(&c) = committed.get(q) {
                *target = (*target).min(c);
            }
        }
    }
    if plan.offsets.is_empty() {
        return Err(format!(
            "No queues to reset: topic {topic} has no read queues"
        ));
    }
    Ok(plan)
}

/// INVOKE_BROKER_TO_RESET_OFFSET (222).
pub(super) async fn invoke_reset_offset(
    ctx: &Arc<BrokerContext>,
    rctx: &RequestContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: ResetOffsetRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    tracing::info!(
        caller = %rctx.peer_addr(),
        topic = %h.topic,
        group = %h.group,
        timestamp = h.timestamp,
        force = h.is_force,
        queue_id = h.queue_id,
        "reset offset requested"
    );
    if !ctx.config.is_master() {
        return fail(
            response_code::SYSTEM_ERROR,
            "Can not reset offset in slave broker",
        );
    }
    let Some(topic_cfg) = ctx.topics.get(&h.topic) else {
        tracing::warn!(topic = %h.topic, group = %h.group, "reset offset: topic does not exist");
        return fail(
            response_code::TOPIC_NOT_EXIST,
            format!(
                "Topic {} does not exist on broker {}",
                h.topic, ctx.config.broker_name
            ),
        );
    };
    if !ctx.groups.contains(&h.group) {
        tracing::warn!(topic = %h.topic, group = %h.group, "reset offset: group does not exist");
        return fail(
            response_code::SUBSCRIPTION_GROUP_NOT_EXIST,
            format!(
                "Group {} does not exist on broker {}",
                h.group, ctx.config.broker_name
            ),
        );
    }

    let committed = ctx.offsets.offsets(&h.group, &h.topic);
    let store = Arc::clone(&ctx.store);
    let (topic, read_queues) = (h.topic.clone(), topic_cfg.read_queue_nums);
    let (queue_id, timestamp, offset, force) = (h.queue_id, h.timestamp, h.offset, h.is_force);
    let plan = tokio::task::spawn_blocking(move || {
        reset_offsets(
            &store,
            &committed,
            &topic,
            read_queues,
            queue_id,
            timestamp,
            offset,
            force,
        )
    })
    .await;
    let plan = match plan {
        Ok(Ok(p)) => p,
        Ok(Err(remark)) => {
            tracing::warn!(topic = %h.topic, group = %h.group, "reset offset refused: {remark}");
            return fail(response_code::SYSTEM_ERROR, remark);
        }
        Err(e) => {
            return fail(
                response_code::SYSTEM_ERROR,
                format!("reset offset failed: {e}"),
            )
        }
    };

    for (&q, &off) in &plan.offsets {
        ctx.offsets.commit(&h.group, &h.topic, q, off);
    }
    let broker_name = ctx.config.broker_name.clone();
    let body = ResetOffsetBody {
        offset_table: plan
            .offsets
            .iter()
            .map(|(&q, &off)| {
                (
                    MessageQueue::new(h.topic.clone(), broker_name.clone(), q),
                    off,
                )
            })
            .collect(),
    };
    let pushed = push_reset_to_consumers(ctx, &h, &body).await;
    tracing::info!(
        topic = %h.topic,
        group = %h.group,
        queues = plan.offsets.len(),
        consumers_told = pushed,
        "offsets reset"
    );
    ok().with_body(body.encode())
}

/// Sends RESET_CONSUMER_CLIENT_OFFSET (oneway) to every channel of the
/// group, so running consumers drop their in-memory offsets instead of
/// committing them over the reset. CPP channels get the list form, the
/// only one rocketmq-client-cpp parses. Returns how many were sent.
async fn push_reset_to_consumers(
    ctx: &BrokerContext,
    h: &ResetOffsetRequestHeader,
    body: &ResetOffsetBody,
) -> usize {
    let Some(info) = ctx.consumers.group_info(&h.group) else {
        return 0;
    };
    let header = ResetOffsetRequestHeader {
        group: h.group.clone(),
        topic: h.topic.clone(),
        timestamp: h.timestamp,
        is_force: h.is_force,
        ..Default::default()
    };
    let (mut java_body, mut c_body) = (None, None);
    let mut sent = 0;
    for ch in &info.channels {
        if ch.version < VERSION_V3_0_7_SNAPSHOT {
            tracing::warn!(
                client = %ch.client_id,
                version = ch.version,
                "client too old for RESET_CONSUMER_CLIENT_OFFSET; not told about the reset"
            );
            continue;
        }
        let payload = if ch.language == LanguageCode::Cpp {
            c_body
                .get_or_insert_with(|| bytes::Bytes::from(ResetOffsetBodyForC::from(body).encode()))
                .clone()
        } else {
            java_body
                .get_or_insert_with(|| bytes::Bytes::from(body.encode()))
                .clone()
        };
        // send_oneway sets the ONEWAY flag and the opaque.
        let cmd = RemotingCommand::request(request_code::RESET_CONSUMER_CLIENT_OFFSET)
            .with_header(&header)
            .with_body(payload);
        match tokio::time::timeout(PUSH_TIMEOUT, ch.channel.send_oneway(cmd)).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(e)) => tracing::warn!(client = %ch.client_id, "reset offset push failed: {e}"),
            Err(_) => tracing::warn!(client = %ch.client_id, "reset offset push timed out"),
        }
    }
    sent
}
