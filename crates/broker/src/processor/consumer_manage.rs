//! Consumer coordination: GET_CONSUMER_LIST_BY_GROUP, QUERY_CONSUMER_OFFSET,
//! UPDATE_CONSUMER_OFFSET, LOCK_BATCH_MQ and UNLOCK_BATCH_MQ.

use std::sync::{Arc, OnceLock};

use apogee_protocol::body::{
    GetConsumerListByGroupResponseBody, LockBatchRequestBody, LockBatchResponseBody, MessageQueue,
};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{
    GetConsumerListByGroupRequestHeader, QueryConsumerOffsetRequestHeader,
    QueryConsumerOffsetResponseHeader, UpdateConsumerOffsetRequestHeader,
};
use apogee_protocol::message::stored::PHYSICAL_OFFSET_POS;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ProcessorRegistry, RequestContext};
use apogee_throttle::{throttled_warn, LogThrottle};

use super::{bad_body, bad_header, error_response, success};
use crate::context::BrokerContext;

pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    for code in [
        request_code::GET_CONSUMER_LIST_BY_GROUP,
        request_code::QUERY_CONSUMER_OFFSET,
        request_code::UPDATE_CONSUMER_OFFSET,
        request_code::LOCK_BATCH_MQ,
        request_code::UNLOCK_BATCH_MQ,
    ] {
        let c = Arc::clone(ctx);
        registry.register(
            code,
            processor_fn(move |rc, req| {
                let ctx = Arc::clone(&c);
                async move { Ok(Some(process(&ctx, &rc, &req))) }
            }),
        );
    }
}

fn process(ctx: &BrokerContext, rc: &RequestContext, req: &RemotingCommand) -> RemotingCommand {
    match req.code {
        request_code::GET_CONSUMER_LIST_BY_GROUP => consumer_list(ctx, rc, req),
        request_code::QUERY_CONSUMER_OFFSET => query_offset(ctx, req),
        request_code::UPDATE_CONSUMER_OFFSET => update_offset(ctx, rc, req),
        request_code::LOCK_BATCH_MQ => lock_batch(ctx, req),
        request_code::UNLOCK_BATCH_MQ => unlock_batch(ctx, req),
        other => error_response(
            response_code::REQUEST_CODE_NOT_SUPPORTED,
            format!("request code {other} not supported"),
        ),
    }
}

fn consumer_list(
    ctx: &BrokerContext,
    rc: &RequestContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: GetConsumerListByGroupRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req.code, &e),
    };
    let ids = ctx.consumers.client_ids(&h.consumer_group);
    if ids.is_empty() {
        static NO_CONSUMERS: LogThrottle =
            LogThrottle::new("consumer list for a group without live consumers");
        throttled_warn!(NO_CONSUMERS, rc.peer_addr().ip(), group = %h.consumer_group,
            peer = %rc.peer_addr(), "consumer list asked for a group without live consumers");
        return error_response(
            response_code::SYSTEM_ERROR,
            format!("no consumer for this group, {}", h.consumer_group),
        );
    }
    let body = GetConsumerListByGroupResponseBody {
        consumer_id_list: ids,
    };
    success().with_body(body.encode())
}

/// Checks the queue id against the topic's queue count (when the topic is known).
fn check_queue(ctx: &BrokerContext, topic: &str, queue_id: i32) -> Option<RemotingCommand> {
    let queues = ctx
        .topics
        .get(topic)
        .map(|t| t.read_queue_nums.max(t.write_queue_nums))
        .unwrap_or(i32::MAX);
    if queue_id < 0 || queue_id >= queues {
        let remark =
            format!("queueId {queue_id} is illegal for topic {topic}: it has {queues} queues");
        static BAD_QUEUE: LogThrottle = LogThrottle::new("illegal queue id");
        throttled_warn!(BAD_QUEUE, queue_id, "{remark}");
        return Some(error_response(response_code::SYSTEM_ERROR, remark));
    }
    None
}

/// QUERY_CONSUMER_OFFSET, as Java's `ConsumerManageProcessor.queryConsumerOffset`.
fn query_offset(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let h: QueryConsumerOffsetRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req.code, &e),
    };
    if let Some(resp) = check_queue(ctx, &h.topic, h.queue_id) {
        return resp;
    }
    if let Some(offset) = ctx
        .offsets
        .query(&h.consumer_group, &h.topic, h.queue_id)
        .filter(|o| *o >= 0)
    {
        return success().with_header(&QueryConsumerOffsetResponseHeader { offset });
    }
    let min = ctx.store.min_offset(&h.topic, h.queue_id);
    if h.set_zero_if_not_found == Some(false) {
        return error_response(
            response_code::QUERY_NOT_FOUND,
            "Not found, do not set to zero, maybe this group boot first",
        );
    }
    if min <= 0 && first_message_in_memory(ctx, &h.topic, h.queue_id) {
        return success().with_header(&QueryConsumerOffsetResponseHeader { offset: 0 });
    }
    error_response(
        response_code::QUERY_NOT_FOUND,
        "Not found, V3_0_6_SNAPSHOT maybe this group consumer boot first",
    )
}

/// Whether the message at queue offset 0 is recent enough to still be in
/// the page cache: within `accessMessageInMemoryMaxRatio` percent of RAM of
/// the CommitLog's end (Java's in-memory test), so a new group reads a young
/// queue from its start.
pub(crate) fn first_message_in_memory(ctx: &BrokerContext, topic: &str, queue_id: i32) -> bool {
    let got = ctx
        .store
        .get_messages("", topic, queue_id, 0, 1, usize::MAX, None);
    let (Some(rec), Some(0)) = (got.messages.first(), got.queue_offsets.first().copied()) else {
        return false;
    };
    let Some(phys) = rec
        .get(PHYSICAL_OFFSET_POS..PHYSICAL_OFFSET_POS + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_be_bytes)
    else {
        return false;
    };
    let ratio = u64::from(ctx.runtime_config.read().access_message_in_memory_max_ratio);
    let memory = total_physical_memory().saturating_mul(ratio) / 100;
    let behind = ctx
        .store
        .commit_log_max_offset()
        .saturating_sub(phys)
        .max(0) as u64;
    behind <= memory
}

/// Total RAM in bytes (from /proc/meminfo; 8 GiB when unknown).
fn total_physical_memory() -> u64 {
    static MEM: OnceLock<u64> = OnceLock::new();
    *MEM.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(8 << 30)
    })
}

/// UPDATE_CONSUMER_OFFSET (Java 5.x checks group and topic exist).
fn update_offset(
    ctx: &BrokerContext,
    rc: &RequestContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: UpdateConsumerOffsetRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req.code, &e),
    };
    if !ctx.groups.contains(&h.consumer_group) {
        static UNKNOWN_GROUP: LogThrottle = LogThrottle::new("offset update for an unknown group");
        throttled_warn!(UNKNOWN_GROUP, rc.peer_addr().ip(), group = %h.consumer_group,
            peer = %rc.peer_addr(), "offset update for an unknown group");
        return error_response(
            response_code::SUBSCRIPTION_GROUP_NOT_EXIST,
            format!("Group {} not exist!", h.consumer_group),
        );
    }
    if !ctx.topics.contains(&h.topic) {
        static UNKNOWN_TOPIC: LogThrottle = LogThrottle::new("offset update for an unknown topic");
        throttled_warn!(UNKNOWN_TOPIC, rc.peer_addr().ip(), topic = %h.topic,
            peer = %rc.peer_addr(), "offset update for an unknown topic");
        return error_response(
            response_code::TOPIC_NOT_EXIST,
            format!("Topic {} not exist!", h.topic),
        );
    }
    if let Some(resp) = check_queue(ctx, &h.topic, h.queue_id) {
        return resp;
    }
    if h.commit_offset < 0 {
        return error_response(
            response_code::SYSTEM_ERROR,
            format!("commitOffset {} is negative", h.commit_offset),
        );
    }
    ctx.offsets
        .commit(&h.consumer_group, &h.topic, h.queue_id, h.commit_offset);
    success()
}

/// The error is the response to send (boxed: responses are large).
fn decode_lock_body(req: &RemotingCommand) -> Result<LockBatchRequestBody, Box<RemotingCommand>> {
    let Some(body) = req.body.as_deref() else {
        return Err(Box::new(bad_body(req.code, "LockBatchRequestBody", None)));
    };
    LockBatchRequestBody::decode(body)
        .map_err(|e| Box::new(bad_body(req.code, "LockBatchRequestBody", Some(&e))))
}

fn lock_batch(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let body = match decode_lock_body(req) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let mqs: Vec<MessageQueue> = body.mq_set.into_iter().collect();
    let locked = ctx
        .locks
        .try_lock_batch(&body.consumer_group, &mqs, &body.client_id);
    let resp = LockBatchResponseBody {
        lock_ok_mq_set: locked.into_iter().collect(),
    };
    success().with_body(resp.encode())
}

fn unlock_batch(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let body = match decode_lock_body(req) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let mqs: Vec<MessageQueue> = body.mq_set.into_iter().collect();
    ctx.locks
        .unlock_batch(&body.consumer_group, &mqs, &body.client_id);
    success()
}
