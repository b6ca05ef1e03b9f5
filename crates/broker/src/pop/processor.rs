//! POP_MESSAGE, ACK_MESSAGE and CHANGE_MESSAGE_INVISIBLETIME.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PermName;
use apogee_protocol::header::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, ChangeInvisibleTimeResponseHeader,
    PopMessageRequestHeader, PopMessageResponseHeader,
};
use apogee_protocol::message::stored::{self, MessageToStore};
use apogee_protocol::message::{keys, properties};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ProcessorRegistry, RequestContext};
use apogee_store::GetStatus;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use super::order::OrderAck;
use super::{
    build_extra_info, retry_topic_v1, retry_topic_v2, revive_topic, AckMsg, CheckPoint, ExtraInfo,
    PopError, ACK_TAG, BATCH_ACK_TAG, CK_TAG, POP_ORDER_REVIVE_QUEUE, REVIVE_QUEUE_NUM,
};
use crate::context::BrokerContext;
use crate::filter::{is_sql92, SubscriptionFilter, TagMessageFilter};
use crate::processor::send::store_messages;
use crate::processor::{bad_header, error_response, register_with};
use crate::schedule::now_ms;

/// A refusal; boxed so the `Result`s carrying it stay small.
pub(crate) type Refusal = Box<RemotingCommand>;

fn refuse(code: i32, remark: impl Into<String>) -> Refusal {
    Box::new(error_response(code, remark))
}

/// Apache refuses pops of more than 32 messages.
const MAX_POP_NUMS: i32 = 32;

/// The longest invisible time accepted (Apache's clients stay within
/// 12 h): an open checkpoint is kept by the revive service until then.
pub const MAX_INVISIBLE_TIME_MS: i64 = 12 * 3600 * 1000;

/// Queues being popped right now (`topic@group@queue`): two pops of the
/// same queue at once would hand out the same messages (Apache's
/// `QueueLockManager`); a busy queue is skipped, not waited for.
#[derive(Default)]
pub struct QueueLocks {
    held: Mutex<HashSet<String>>,
}

struct QueueGuard<'a> {
    locks: &'a QueueLocks,
    key: String,
}

impl QueueLocks {
    fn try_lock(&self, key: String) -> Option<QueueGuard<'_>> {
        // The map's lock must be released before a guard can exist: a
        // guard built for a busy queue and dropped under it would both
        // deadlock and free the other holder's key.
        let inserted = self.held.lock().insert(key.clone());
        inserted.then(|| QueueGuard { locks: self, key })
    }
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        self.locks.held.lock().remove(&self.key);
    }
}

/// POP requests held by long polling, per `topic@group@queueId` (the
/// request's queue id, -1 included), for POLLING_INFO and the limits.
#[derive(Default)]
pub struct PollingCounts {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_key: std::collections::HashMap<String, usize>,
}

/// Counts one held request while it lives.
pub(crate) struct Held<'a> {
    counts: &'a PollingCounts,
    key: String,
}

impl PollingCounts {
    /// Counts a request held for `key`; `None` (POLLING_FULL) when
    /// `max_total` are held already, or `per_key` for this key (Apache's
    /// `maxPopPollingSize` and `popPollingSize`).
    pub(crate) fn hold(&self, key: String, max_total: usize, per_key: usize) -> Option<Held<'_>> {
        let mut c = self.counts.lock();
        if c.total >= max_total || c.per_key.get(&key).copied().unwrap_or(0) >= per_key {
            return None;
        }
        c.total += 1;
        *c.per_key.entry(key.clone()).or_insert(0) += 1;
        Some(Held { counts: self, key })
    }

    /// Requests held for `key` now.
    pub fn get(&self, key: &str) -> i32 {
        let n = self.counts.lock().per_key.get(key).copied().unwrap_or(0);
        i32::try_from(n).unwrap_or(i32::MAX)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut c = self.counts.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_key.remove(&self.key);
            }
        }
    }
}

/// Apache's `isTimeoutTooMuch`: the request's poll time ended more than
/// 500 ms ago by the broker's clock (a request that waited in a queue or a
/// stale retry); answered POLLING_TIMEOUT without reading anything.
pub(crate) fn timeout_too_much(born_time: i64, poll_time: i64) -> bool {
    now_ms()
        .saturating_sub(born_time)
        .saturating_sub(poll_time.max(0))
        > 500
}

/// Registers POP_MESSAGE, ACK_MESSAGE, BATCH_ACK_MESSAGE and
/// CHANGE_MESSAGE_INVISIBLETIME.
pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    register_with(
        registry,
        ctx,
        request_code::POP_MESSAGE,
        |ctx, rc, req| async move { pop_message(&ctx, &rc, &req).await },
    );
    register_with(
        registry,
        ctx,
        request_code::ACK_MESSAGE,
        |ctx, _, req| async move { Some(ack_message(&ctx, &req).await) },
    );
    register_with(
        registry,
        ctx,
        request_code::BATCH_ACK_MESSAGE,
        |ctx, _, req| async move { Some(batch_ack_message(&ctx, &req).await) },
    );
    register_with(
        registry,
        ctx,
        request_code::CHANGE_MESSAGE_INVISIBLETIME,
        |ctx, _, req| async move { Some(change_invisible_time(&ctx, &req).await) },
    );
}

/// What the pops of one request collected.
#[derive(Default)]
struct Collected {
    records: Vec<Bytes>,
    start_offset_info: String,
    msg_offset_info: String,
    order_count_info: String,
    rest_num: i64,
}

fn append_info(dst: &mut String, entry: std::fmt::Arguments<'_>) {
    use std::fmt::Write;
    if !dst.is_empty() {
        dst.push(';');
    }
    let _ = dst.write_fmt(entry);
}

async fn pop_message(
    ctx: &BrokerContext,
    rc: &RequestContext,
    req: &RemotingCommand,
) -> Option<RemotingCommand> {
    let h: PopMessageRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return Some(bad_header(req.code, &e)),
    };
    if let Err(r) = pre_check(ctx, &h) {
        return Some(*r);
    }
    let filter = match pop_filter(ctx, &h) {
        Ok(f) => Arc::new(f),
        Err(r) => return Some(*r),
    };
    if timeout_too_much(h.born_time, h.poll_time) {
        return Some(error_response(
            response_code::POLLING_TIMEOUT,
            format!(
                "the broker[{}] pop message is timeout too much",
                ctx.broker_addr
            ),
        ));
    }
    let order = h.order == Some(true);
    // Registered before the first look, so an ack completing the blocking
    // batch in between still wakes a parked orderly pop.
    let unblocked = ctx.pop_order.unblocked();
    tokio::pin!(unblocked);
    unblocked.as_mut().enable();
    let mut pop_time = now_ms();
    let revive_qid = if h.order == Some(true) {
        POP_ORDER_REVIVE_QUEUE
    } else {
        (pop_time.rem_euclid(i64::from(REVIVE_QUEUE_NUM))) as i32
    };
    let mut got = match pop_all(ctx, &h, &filter, pop_time, revive_qid).await {
        Ok(g) => g,
        Err(r) => return Some(*r),
    };
    if got.records.is_empty() && h.poll_time > 0 {
        // Long polling: park on every queue we could pop from and pop
        // again when one of them grows or the poll time ends.
        let hold = ctx.pull_hold.hold_time(Duration::from_millis(
            u64::try_from(h.poll_time).unwrap_or(0),
        ));
        let (max_total, per_key) = {
            let rc = ctx.runtime_config.read();
            (rc.max_pop_polling_size, rc.pop_polling_size)
        };
        let Some(held) = ctx.pop_polling.hold(
            format!("{}@{}@{}", h.topic, h.consumer_group, h.queue_id),
            max_total,
            per_key,
        ) else {
            return Some(
                RemotingCommand::response(response_code::POLLING_FULL, "POLLING_FULL".to_owned())
                    .with_header(&PopMessageResponseHeader {
                        pop_time,
                        invisible_time: h.invisible_time,
                        revive_qid,
                        ..Default::default()
                    }),
            );
        };
        let mut parked = Vec::new();
        for (topic, qid) in queues_of(ctx, &h) {
            let max = ctx.store.max_offset(&topic, qid);
            parked.push(Box::pin(
                ctx.pull_hold
                    .park(&topic, qid, max, Arc::clone(&filter))
                    .wait(hold),
            ));
        }
        if !parked.is_empty() {
            tokio::select! {
                _ = futures::future::select_all(parked) => {}
                _ = &mut unblocked, if order => {}
                _ = rc.channel().closed() => return None,
            }
            // The header's popTime is the one the checkpoints carry: the
            // client builds its receipt handles from it.
            pop_time = now_ms();
            got = match pop_all(ctx, &h, &filter, pop_time, revive_qid).await {
                Ok(g) => g,
                Err(r) => return Some(*r),
            };
        }
        drop(held);
    }
    let header = PopMessageResponseHeader {
        pop_time,
        invisible_time: h.invisible_time,
        revive_qid,
        rest_num: got.rest_num,
        start_offset_info: Some(got.start_offset_info),
        msg_offset_info: Some(got.msg_offset_info),
        order_count_info: (h.order == Some(true)).then_some(got.order_count_info),
    };
    if got.records.is_empty() {
        return Some(
            RemotingCommand::response(
                response_code::POLLING_TIMEOUT,
                "NO_MESSAGE_IN_QUEUE".to_owned(),
            )
            .with_header(&header),
        );
    }
    let total: usize = got.records.iter().map(Bytes::len).sum();
    let mut body = BytesMut::with_capacity(total);
    for r in &got.records {
        body.extend_from_slice(r);
    }
    ctx.stats.get(
        &h.consumer_group,
        &h.topic,
        got.records.len() as u64,
        total as u64,
    );
    Some(
        RemotingCommand::response(response_code::SUCCESS, "FOUND".to_owned())
            .with_header(&header)
            .with_body(body.freeze()),
    )
}

fn pre_check(ctx: &BrokerContext, h: &PopMessageRequestHeader) -> Result<(), Refusal> {
    check_common(ctx, &h.topic, &h.consumer_group, h.queue_id)?;
    if h.max_msg_nums > MAX_POP_NUMS || h.max_msg_nums <= 0 {
        return Err(refuse(
            response_code::INVALID_PARAMETER,
            format!(
                "the broker[{}] pop message's num must be within 1..={MAX_POP_NUMS}, got {}",
                ctx.broker_addr, h.max_msg_nums
            ),
        ));
    }
    if h.invisible_time <= 0 || h.invisible_time > MAX_INVISIBLE_TIME_MS {
        return Err(refuse(
            response_code::INVALID_PARAMETER,
            format!(
                "invisibleTime must be within 1..={MAX_INVISIBLE_TIME_MS} ms, got {}",
                h.invisible_time
            ),
        ));
    }
    Ok(())
}

/// The checks POP, PEEK and NOTIFICATION share: broker and topic readable,
/// queue in range (-1: any), the group exists and may consume.
pub(crate) fn check_common(
    ctx: &BrokerContext,
    topic: &str,
    group: &str,
    queue_id: i32,
) -> Result<(), Refusal> {
    // The revive log and system groups are the broker's own bookkeeping.
    if apogee_protocol::topic::is_system_topic(topic) {
        return Err(refuse(
            response_code::NO_PERMISSION,
            format!("the topic[{topic}] is a system topic: POP is not allowed"),
        ));
    }
    if apogee_protocol::topic::is_sys_consumer_group(group) {
        return Err(refuse(
            response_code::NO_PERMISSION,
            format!("the group[{group}] is a system group: POP is not allowed"),
        ));
    }
    if !PermName::is_readable(ctx.runtime_config.read().broker_permission) {
        return Err(refuse(
            response_code::NO_PERMISSION,
            format!("the broker[{}] pop message is forbidden", ctx.broker_addr),
        ));
    }
    let Some(tc) = ctx.topics.get(topic) else {
        return Err(refuse(
            response_code::TOPIC_NOT_EXIST,
            format!("topic[{topic}] not exist, apply first please!"),
        ));
    };
    if !PermName::is_readable(tc.perm) {
        return Err(refuse(
            response_code::NO_PERMISSION,
            format!("the topic[{topic}] peeking message is forbidden"),
        ));
    }
    if queue_id >= tc.read_queue_nums || queue_id < -1 {
        return Err(refuse(
            response_code::INVALID_PARAMETER,
            format!(
                "queueId[{queue_id}] is illegal, topic:[{topic}] topicConfig.readQueueNums:[{}]",
                tc.read_queue_nums
            ),
        ));
    }
    let Some(gc) = ctx.groups.find_or_create(group) else {
        return Err(refuse(
            response_code::SUBSCRIPTION_GROUP_NOT_EXIST,
            format!("subscription group [{group}] does not exist"),
        ));
    };
    if !gc.consume_enable {
        return Err(refuse(
            response_code::NO_PERMISSION,
            format!("subscription group no permission, {group}"),
        ));
    }
    Ok(())
}

fn pop_filter(
    ctx: &BrokerContext,
    h: &PopMessageRequestHeader,
) -> Result<SubscriptionFilter, Refusal> {
    let expr = h.exp.as_deref().unwrap_or("*");
    let ty = h.exp_type.as_deref().unwrap_or("TAG");
    if is_sql92(ty) {
        return ctx
            .sql_filters
            .get_or_compile(&h.consumer_group, &h.topic, expr)
            .map(SubscriptionFilter::Sql)
            .map_err(|e| refuse(response_code::SUBSCRIPTION_PARSE_FAILED, e.to_string()));
    }
    TagMessageFilter::from_expression(expr, Some(ty))
        .map(SubscriptionFilter::Tag)
        .map_err(|e| refuse(response_code::SUBSCRIPTION_PARSE_FAILED, e.to_string()))
}

/// The (topic, queue) pairs a pop may read. The group's retry topics come
/// first in `popFromRetryProbability` percent of pops, else after the
/// topic (Apache), so neither starves the other.
fn queues_of(ctx: &BrokerContext, h: &PopMessageRequestHeader) -> Vec<(String, i32)> {
    static POPS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let p = ctx.runtime_config.read().pop_from_retry_probability;
    let n = POPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut v = candidate_queues(
        ctx,
        &h.topic,
        &h.consumer_group,
        h.queue_id,
        h.order == Some(true),
    );
    if n % 100 >= p {
        // Retry topics last: a stable partition keeps each group's order.
        let (retry, normal): (Vec<_>, Vec<_>) = v.into_iter().partition(|(t, _)| *t != h.topic);
        v = normal;
        v.extend(retry);
    }
    v
}

/// The (topic, queue) pairs a POP-family request may read: the group's
/// retry topics (v1 and v2, when they exist; not for orderly requests,
/// whose messages never go there) then the topic's queues (`queue_id` -1:
/// all, starting at a varying one so that small pops spread over queues).
pub(crate) fn candidate_queues(
    ctx: &BrokerContext,
    topic: &str,
    group: &str,
    queue_id: i32,
    order: bool,
) -> Vec<(String, i32)> {
    let mut v = Vec::new();
    if !order {
        let v1 = ctx.config.retrieve_message_from_pop_retry_topic_v1;
        let v1 = v1.then(|| retry_topic_v1(topic, group));
        for rt in v1.into_iter().chain([retry_topic_v2(topic, group)]) {
            if let Some(tc) = ctx.topics.get(&rt) {
                for q in 0..tc.read_queue_nums {
                    v.push((rt.clone(), q));
                }
            }
        }
    }
    if queue_id >= 0 {
        v.push((topic.to_owned(), queue_id));
    } else if let Some(tc) = ctx.topics.get(topic) {
        let n = tc.read_queue_nums.max(1);
        let first = (now_ms().rem_euclid(i64::from(n))) as i32;
        for i in 0..n {
            v.push((topic.to_owned(), (first + i) % n));
        }
    }
    v
}

async fn pop_all(
    ctx: &BrokerContext,
    h: &PopMessageRequestHeader,
    filter: &Arc<SubscriptionFilter>,
    pop_time: i64,
    revive_qid: i32,
) -> Result<Collected, Refusal> {
    let mut got = Collected::default();
    let all = SubscriptionFilter::all();
    for (topic, qid) in queues_of(ctx, h) {
        let want = usize::try_from(h.max_msg_nums)
            .unwrap_or(1)
            .saturating_sub(got.records.len());
        let is_retry = topic != h.topic;
        // Retry copies were filtered on their first delivery.
        let f: &SubscriptionFilter = if is_retry { &all } else { filter };
        if want == 0 {
            let done = match ctx.offsets.query(&h.consumer_group, &topic, qid) {
                Some(o) if o >= 0 => o,
                _ => ctx.store.min_offset(&topic, qid),
            };
            let rest = ctx
                .store
                .max_offset(&topic, qid)
                .saturating_sub(done)
                .max(0);
            got.rest_num = got.rest_num.saturating_add(rest);
            continue;
        }
        if let Err(e) = pop_queue(
            ctx, h, &topic, qid, is_retry, f, want, pop_time, revive_qid, &mut got,
        )
        .await
        {
            static FAIL: apogee_throttle::LogThrottle =
                apogee_throttle::LogThrottle::new("pop failed");
            apogee_throttle::throttled_warn!(FAIL, qid, group = %h.consumer_group, topic, queue = qid,
                error = %e, "pop failed");
            // Messages of earlier queues have their checkpoints: hand them
            // out rather than leave them invisible until revived.
            if got.records.is_empty() {
                return Err(refuse(response_code::SYSTEM_ERROR, e.to_string()));
            }
            break;
        }
    }
    Ok(got)
}

#[allow(clippy::too_many_arguments)]
async fn pop_queue(
    ctx: &BrokerContext,
    h: &PopMessageRequestHeader,
    topic: &str,
    qid: i32,
    is_retry: bool,
    filter: &SubscriptionFilter,
    want: usize,
    pop_time: i64,
    revive_qid: i32,
    got: &mut Collected,
) -> Result<(), PopError> {
    let group = h.consumer_group.as_str();
    let Some(_guard) = ctx.pop_locks.try_lock(format!("{topic}@{group}@{qid}")) else {
        return Ok(());
    };
    let mut offset = match ctx.offsets.query(group, topic, qid) {
        Some(o) if o >= 0 => o,
        _ => {
            let o = init_offset(ctx, topic, qid, is_retry, h.init_mode);
            ctx.offsets.commit(group, topic, qid, o);
            o
        }
    };
    let order = h.order == Some(true);
    let order_key = super::order::key(topic, group, qid);
    if order
        && ctx
            .pop_order
            .blocked(&order_key, h.attempt_id.as_deref(), pop_time)
    {
        return Ok(());
    }
    let use_filter = if filter.is_all() {
        None
    } else {
        Some(filter as &dyn apogee_store::MessageFilter)
    };
    let mut r = ctx
        .store
        .get_messages(group, topic, qid, offset, want, usize::MAX, use_filter);
    if matches!(
        r.status,
        GetStatus::OffsetTooSmall | GetStatus::OffsetOverflowBadly | GetStatus::OffsetFoundNull
    ) {
        // The saved progress is outside the queue: start from the corrected offset.
        offset = r.next_begin_offset;
        ctx.offsets.commit(group, topic, qid, offset);
        r = ctx
            .store
            .get_messages(group, topic, qid, offset, want, usize::MAX, use_filter);
    }
    got.rest_num = got
        .rest_num
        .saturating_add(r.max_offset.saturating_sub(r.next_begin_offset).max(0));
    if r.messages.is_empty() {
        if r.next_begin_offset > offset {
            // Filtered-out entries: nothing to hand out, skip past them.
            ctx.offsets.commit(group, topic, qid, r.next_begin_offset);
        }
        return Ok(());
    }
    let flag = super::retry_flag(topic);
    if order {
        // No checkpoint: the offset stays at the batch start until every
        // message is acked (ack_orderly), so an expired batch comes again.
        let count = ctx.pop_order.record(
            order_key,
            offset,
            r.next_begin_offset,
            r.queue_offsets.clone(),
            pop_time,
            h.invisible_time,
            h.attempt_id.clone(),
        );
        append_info(
            &mut got.order_count_info,
            format_args!("{flag} {qid} {count}"),
        );
    } else {
        write_checkpoint(ctx, h, topic, qid, offset, &r, pop_time, revive_qid).await?;
    }
    append_info(
        &mut got.start_offset_info,
        format_args!("{flag} {qid} {offset}"),
    );
    append_info(&mut got.msg_offset_info, format_args!("{flag} {qid} "));
    for (i, o) in r.queue_offsets.iter().enumerate() {
        use std::fmt::Write;
        // Written in place: no string per message.
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(got.msg_offset_info, "{sep}{o}");
    }
    push_records(
        ctx, h, topic, qid, is_retry, offset, &r, pop_time, revive_qid, got,
    );
    Ok(())
}

/// Where a group's first POP of a queue starts (Apache `getInitOffset`):
/// retry topics and initMode MIN at the first offset; otherwise at 0 when
/// the queue is young (its first message still in memory), else at the
/// last message ("pop last one").
fn init_offset(ctx: &BrokerContext, topic: &str, qid: i32, is_retry: bool, init_mode: i32) -> i64 {
    let min = ctx.store.min_offset(topic, qid);
    if is_retry || init_mode == 0 {
        return min;
    }
    let check_mem = ctx
        .runtime_config
        .read()
        .init_pop_offset_by_check_msg_in_mem;
    if check_mem
        && min <= 0
        && crate::processor::consumer_manage::first_message_in_memory(ctx, topic, qid)
    {
        return 0;
    }
    ctx.store.max_offset(topic, qid).saturating_sub(1).max(0)
}

/// Stores the checkpoint of a batch, then moves the group's offset past it.
#[allow(clippy::too_many_arguments)]
async fn write_checkpoint(
    ctx: &BrokerContext,
    h: &PopMessageRequestHeader,
    topic: &str,
    qid: i32,
    offset: i64,
    r: &apogee_store::GetResult,
    pop_time: i64,
    revive_qid: i32,
) -> Result<(), PopError> {
    let group = h.consumer_group.as_str();
    let ck = CheckPoint {
        start_offset: offset,
        pop_time,
        invisible_time: h.invisible_time,
        bit_map: 0,
        num: u8::try_from(r.messages.len()).unwrap_or(u8::MAX),
        queue_id: qid,
        topic: topic.to_owned(),
        cid: group.to_owned(),
        revive_offset: 0,
        queue_offset_diff: Some(
            r.queue_offsets
                .iter()
                .map(|&o| i32::try_from(o - offset).unwrap_or(i32::MAX))
                .collect(),
        ),
        broker_name: Some(ctx.config.broker_name.clone()),
        re_put_times: None,
    };
    write_ck(ctx, &ck, revive_qid).await?;
    // The checkpoint is durable: the progress may move past these messages.
    ctx.offsets.commit(group, topic, qid, r.next_begin_offset);
    Ok(())
}

/// Adds the records of a batch to the response (retry copies re-encoded
/// in their real topic with their receipt handle).
#[allow(clippy::too_many_arguments)]
fn push_records(
    ctx: &BrokerContext,
    h: &PopMessageRequestHeader,
    topic: &str,
    qid: i32,
    is_retry: bool,
    offset: i64,
    r: &apogee_store::GetResult,
    pop_time: i64,
    revive_qid: i32,
    got: &mut Collected,
) {
    for (rec, &qo) in r.messages.iter().zip(&r.queue_offsets) {
        if !is_retry {
            got.records.push(rec.clone());
            continue;
        }
        // A retry copy is shown in its real topic with its receipt handle
        // (Apache re-encodes these; the client keeps a POP_CK it finds).
        match stored::check_record(rec, false) {
            Ok(info) => {
                let mut m = info.to_message_to_store();
                m.topic = h.topic.clone();
                let ck_info = build_extra_info(
                    offset,
                    pop_time,
                    h.invisible_time,
                    revive_qid,
                    topic,
                    &ctx.config.broker_name,
                    qid,
                    qo,
                );
                if properties::get(&m.properties, keys::POP_CK).is_none() {
                    properties::append(&mut m.properties, keys::POP_CK, &ck_info);
                }
                let mut buf = BytesMut::new();
                if stored::encode_stored(&m, &mut buf).is_ok()
                    && stored::patch_stored(
                        &mut buf,
                        qo,
                        info.physical_offset,
                        info.store_timestamp,
                    )
                    .is_ok()
                {
                    got.records.push(buf.freeze());
                }
            }
            Err(e) => {
                tracing::warn!(topic, queue = qid, offset = qo, error = %e, "undecodable retry record skipped");
            }
        }
    }
}

/// A bookkeeping record for the revive topic.
fn revive_record(ctx: &BrokerContext, revive_qid: i32, tag: &str, body: Vec<u8>) -> MessageToStore {
    let mut props = String::new();
    // No WAIT_STORE_MSG_OK=false: under SYNC_FLUSH a pop, ack or change
    // is answered only once its record is on disk.
    properties::append(&mut props, keys::TAGS, tag);
    let mut m = MessageToStore {
        topic: revive_topic(&ctx.config.broker_cluster_name),
        queue_id: revive_qid,
        flag: 0,
        body: Bytes::from(body),
        properties: props,
        sys_flag: 0,
        born_timestamp: now_ms(),
        born_host: ctx.store_host,
        store_host: ctx.store_host,
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        tags_code: 0,
    };
    m.tags_code = m.tags_code_from_properties();
    m
}

async fn put_revive(
    ctx: &BrokerContext,
    m: MessageToStore,
    what: &'static str,
) -> Result<(), PopError> {
    let r = store_messages(ctx, vec![m])
        .await
        .map_err(|source| PopError::Store { what, source })?;
    if r.status != apogee_store::PutStatus::Ok {
        return Err(PopError::Put {
            what,
            status: r.status.as_str(),
        });
    }
    Ok(())
}

/// Stores a checkpoint in revive queue `revive_qid`.
pub async fn write_ck(
    ctx: &BrokerContext,
    ck: &CheckPoint,
    revive_qid: i32,
) -> Result<(), PopError> {
    let body = serde_json::to_vec(ck).map_err(|e| PopError::Encode(e.to_string()))?;
    put_revive(
        ctx,
        revive_record(ctx, revive_qid, CK_TAG, body),
        "the pop checkpoint",
    )
    .await
}

/// Stores an ack record in revive queue `revive_qid`.
pub async fn write_ack(
    ctx: &BrokerContext,
    ack: &AckMsg,
    revive_qid: i32,
    tag: &str,
) -> Result<(), PopError> {
    let body = serde_json::to_vec(ack).map_err(|e| PopError::Encode(e.to_string()))?;
    put_revive(
        ctx,
        revive_record(ctx, revive_qid, tag, body),
        "the pop ack",
    )
    .await
}

/// The checks ACK and CHANGE_INVISIBLETIME share: the topic and queue
/// exist, the receipt handle parses, the revive queue and the offset are in
/// range. Returns the handle and the topic the message was popped from:
/// Apache's client names that topic itself (a `%RETRY%` one for a retry
/// copy); a request naming the original topic is mapped through the
/// handle's retry flag.
fn check_receipt<'a>(
    ctx: &BrokerContext,
    topic: &str,
    group: &str,
    queue_id: i32,
    extra: &'a str,
    offset: i64,
) -> Result<(ExtraInfo<'a>, String), Refusal> {
    let e = ExtraInfo::parse(extra)
        .map_err(|e| refuse(response_code::INVALID_PARAMETER, e.to_string()))?;
    if e.revive_qid != POP_ORDER_REVIVE_QUEUE && !(0..REVIVE_QUEUE_NUM).contains(&e.revive_qid) {
        return Err(refuse(
            response_code::INVALID_PARAMETER,
            format!("reviveQid {} is out of range", e.revive_qid),
        ));
    }
    let real = if topic.starts_with(apogee_protocol::topic::RETRY_GROUP_TOPIC_PREFIX) {
        topic.to_owned()
    } else {
        e.real_topic(topic, group)
    };
    let Some(tc) = ctx.topics.get(&real) else {
        return Err(refuse(
            response_code::TOPIC_NOT_EXIST,
            format!("topic[{real}] not exist, apply first please!"),
        ));
    };
    if queue_id < 0 || queue_id >= tc.read_queue_nums {
        return Err(refuse(
            response_code::MESSAGE_ILLEGAL,
            format!(
                "queueId[{queue_id}] is illegal, topic:[{real}] topicConfig.readQueueNums:[{}]",
                tc.read_queue_nums
            ),
        ));
    }
    let (min, max) = (
        ctx.store.min_offset(&real, queue_id),
        ctx.store.max_offset(&real, queue_id),
    );
    // Apache's bounds: the max offset itself is accepted.
    if offset < min || offset > max {
        return Err(refuse(
            response_code::NO_MESSAGE,
            format!("offset is illegal, {real}@{queue_id}, ack:{offset}, store:{min}~{max}"),
        ));
    }
    Ok((e, real))
}

async fn ack_message(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let h: AckMessageRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req.code, &e),
    };
    let (e, real) = match check_receipt(
        ctx,
        &h.topic,
        &h.consumer_group,
        h.queue_id,
        &h.extra_info,
        h.offset,
    ) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if e.revive_qid == POP_ORDER_REVIVE_QUEUE {
        return match ack_orderly(
            ctx,
            &h.consumer_group,
            &real,
            h.queue_id,
            h.offset,
            e.pop_time,
        )
        .await
        {
            Ok(()) => RemotingCommand::response(response_code::SUCCESS, None),
            Err(r) => *r,
        };
    }
    let ack = AckMsg {
        ack_offset: h.offset,
        start_offset: e.ck_offset,
        consumer_group: h.consumer_group.clone(),
        topic: real,
        queue_id: h.queue_id,
        pop_time: e.pop_time,
        broker_name: Some(e.broker_name.to_owned()),
        ack_offset_list: None,
    };
    match write_ack(ctx, &ack, e.revive_qid, ACK_TAG).await {
        Ok(()) => RemotingCommand::response(response_code::SUCCESS, None),
        Err(err) => error_response(response_code::SYSTEM_ERROR, err.to_string()),
    }
}

async fn change_invisible_time(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let h: ChangeInvisibleTimeRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req.code, &e),
    };
    if h.invisible_time < 0 || h.invisible_time > MAX_INVISIBLE_TIME_MS {
        return error_response(
            response_code::INVALID_PARAMETER,
            format!(
                "invisibleTime must be within 0..={MAX_INVISIBLE_TIME_MS} ms, got {}",
                h.invisible_time
            ),
        );
    }
    let (e, real) = match check_receipt(
        ctx,
        &h.topic,
        &h.consumer_group,
        h.queue_id,
        &h.extra_info,
        h.offset,
    ) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    // Apache's order: the new checkpoint first (the message must not be
    // lost), then the ack of the old one.
    if e.revive_qid == POP_ORDER_REVIVE_QUEUE {
        // Orderly: the open batch stays invisible longer; its popTime
        // stays, so the client's handle still acks (Apache's
        // updateNextVisibleTime).
        let key = super::order::key(&real, &h.consumer_group, h.queue_id);
        let _guard = lock_queue(ctx, key.clone()).await;
        let Some((pop_time, invisible_time)) =
            ctx.pop_order
                .change(&key, h.offset, e.pop_time, now_ms(), h.invisible_time)
        else {
            return error_response(
                response_code::NO_MESSAGE,
                format!(
                    "no open orderly batch of {real}@{} popped at {} holds offset {}",
                    h.queue_id, e.pop_time, h.offset
                ),
            );
        };
        let rh = ChangeInvisibleTimeResponseHeader {
            pop_time,
            invisible_time,
            revive_qid: POP_ORDER_REVIVE_QUEUE,
        };
        return RemotingCommand::response(response_code::SUCCESS, None).with_header(&rh);
    }
    // Acks find their checkpoint by (topic, group, queue, start, popTime):
    // the new checkpoint must not share the old one's key, or the ack of
    // the old one below would settle it too.
    let pop_time = now_ms().max(e.pop_time.saturating_add(1));
    let ck = CheckPoint {
        start_offset: h.offset,
        pop_time,
        invisible_time: h.invisible_time,
        bit_map: 0,
        num: 1,
        queue_id: h.queue_id,
        topic: real.clone(),
        cid: h.consumer_group.clone(),
        revive_offset: 0,
        queue_offset_diff: Some(vec![0]),
        broker_name: Some(ctx.config.broker_name.clone()),
        re_put_times: None,
    };
    if let Err(err) = write_ck(ctx, &ck, e.revive_qid).await {
        return error_response(response_code::SYSTEM_ERROR, err.to_string());
    }
    let ack = AckMsg {
        ack_offset: h.offset,
        start_offset: e.ck_offset,
        consumer_group: h.consumer_group.clone(),
        topic: real,
        queue_id: h.queue_id,
        pop_time: e.pop_time,
        broker_name: Some(e.broker_name.to_owned()),
        ack_offset_list: None,
    };
    if let Err(err) = write_ack(ctx, &ack, e.revive_qid, ACK_TAG).await {
        return error_response(response_code::SYSTEM_ERROR, err.to_string());
    }
    let rh = ChangeInvisibleTimeResponseHeader {
        pop_time,
        invisible_time: h.invisible_time,
        revive_qid: e.revive_qid,
    };
    RemotingCommand::response(response_code::SUCCESS, None).with_header(&rh)
}

/// Waits for the queue's pop lock (pops hold it only briefly).
async fn lock_queue(ctx: &BrokerContext, key: String) -> QueueGuard<'_> {
    loop {
        if let Some(g) = ctx.pop_locks.try_lock(key.clone()) {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// An orderly ack (Apache's `ackOrderly`): under the queue's lock, the
/// group's offset moves to the first un-acked message of the open batch.
/// An ack of an earlier delivery (another popTime) changes nothing; an
/// ack no open batch knows (the table lost) moves the offset one past
/// itself when it is the next message.
async fn ack_orderly(
    ctx: &BrokerContext,
    group: &str,
    topic: &str,
    queue_id: i32,
    offset: i64,
    pop_time: i64,
) -> Result<(), Refusal> {
    let consumed = |ctx: &BrokerContext| {
        ctx.offsets
            .query(group, topic, queue_id)
            .is_some_and(|o| offset < o)
    };
    if consumed(ctx) {
        return Ok(());
    }
    let key = super::order::key(topic, group, queue_id);
    let _guard = lock_queue(ctx, key.clone()).await;
    if consumed(ctx) {
        return Ok(());
    }
    match ctx.pop_order.ack(topic, group, queue_id, offset, pop_time) {
        OrderAck::Next { offset: next, .. } => ctx.offsets.commit(group, topic, queue_id, next),
        OrderAck::Stale => {
            tracing::debug!(
                group,
                topic,
                queue_id,
                offset,
                pop_time,
                "stale orderly ack ignored"
            );
        }
        OrderAck::NotInBatch => {
            return Err(refuse(
                response_code::MESSAGE_ILLEGAL,
                format!("offset is illegal, key:{key}, commit:{offset}: not in the open batch"),
            ))
        }
        OrderAck::NoBatch => {
            if ctx.offsets.query(group, topic, queue_id) == Some(offset) {
                ctx.offsets
                    .commit(group, topic, queue_id, offset.saturating_add(1));
            }
        }
    }
    Ok(())
}

/// Most offsets one BATCH_ACK_MESSAGE may ack (a client's batch ack covers
/// pops of at most 32 messages each; this leaves ample room).
const MAX_BATCH_ACK_OFFSETS: usize = 65_536;

/// The offsets `start + i` for every bit `i` set in a BitSet's bytes that
/// lie in `[lo, hi]`; only the bytes covering that range are looked at,
/// and at most `limit` offsets are returned (`None`: more were set).
fn bit_offsets(bytes: &[u8], start: i64, lo: i64, hi: i64, limit: usize) -> Option<Vec<i64>> {
    let mut v = Vec::new();
    let from = lo.max(start);
    if from > hi {
        return Some(v);
    }
    // Bit indexes relative to `start`, clamped to the bytes present.
    // i128: `from - start` may not fit an i64.
    let bits = (bytes.len() as u64).saturating_mul(8);
    let rel = |o: i64| (i128::from(o) - i128::from(start)).clamp(0, i128::from(u64::MAX)) as u64;
    let first = rel(from).min(bits);
    let last = rel(hi).min(bits.saturating_sub(1));
    let mut i = first;
    while i <= last && i < bits {
        let byte = bytes[(i / 8) as usize];
        if byte == 0 {
            // Skip the rest of an empty byte.
            i = (i / 8 + 1) * 8;
            continue;
        }
        if byte & (1 << (i % 8)) != 0 {
            let Some(o) = i64::try_from(i).ok().and_then(|d| start.checked_add(d)) else {
                break;
            };
            if v.len() == limit {
                return None;
            }
            v.push(o);
        }
        i += 1;
    }
    Some(v)
}

/// BATCH_ACK_MESSAGE (200151): one `bAck` record per entry, with the acked
/// offsets that lie inside their queue (Apache skips the others).
async fn batch_ack_message(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let body: Option<apogee_protocol::pop::BatchAckBody> = match req.body.as_deref() {
        None | Some([]) => None,
        Some(b) => match serde_json::from_slice(b) {
            Ok(v) => Some(v),
            Err(e) => {
                return error_response(
                    response_code::SYSTEM_ERROR,
                    format!("bad BATCH_ACK_MESSAGE body (BatchAckMessageRequestBody JSON): {e}"),
                )
            }
        },
    };
    let Some(body) = body else {
        return error_response(response_code::NO_MESSAGE, "the batch ack has no acks");
    };
    let acks = body.acks.unwrap_or_default();
    if acks.is_empty() {
        return error_response(response_code::NO_MESSAGE, "the batch ack has no acks");
    }
    let mut budget = MAX_BATCH_ACK_OFFSETS;
    for a in &acks {
        let topic = match a.retry.as_str() {
            "0" => a.topic.clone(),
            "1" => retry_topic_v1(&a.topic, &a.consumer_group),
            "2" => retry_topic_v2(&a.topic, &a.consumer_group),
            other => {
                return error_response(
                    response_code::INVALID_PARAMETER,
                    format!("batch ack retry flag {other:?} is not 0, 1 or 2"),
                )
            }
        };
        let orderly = a.revive_queue_id == POP_ORDER_REVIVE_QUEUE;
        if !orderly && !(0..REVIVE_QUEUE_NUM).contains(&a.revive_queue_id) {
            return error_response(
                response_code::INVALID_PARAMETER,
                format!("reviveQid {} is out of range", a.revive_queue_id),
            );
        }
        if a.bit_set.is_none() {
            continue;
        }
        let Some(bytes) = a.bit_bytes() else {
            return error_response(
                response_code::INVALID_PARAMETER,
                "batch ack bit set is not base64",
            );
        };
        let (min, max) = (
            ctx.store.min_offset(&topic, a.queue_id),
            ctx.store.max_offset(&topic, a.queue_id),
        );
        // Apache skips offsets outside the queue.
        let Some(offsets) = bit_offsets(&bytes, a.start_offset, min, max, budget) else {
            return error_response(
                response_code::INVALID_PARAMETER,
                format!("a batch ack may ack at most {MAX_BATCH_ACK_OFFSETS} offsets"),
            );
        };
        budget -= offsets.len();
        if orderly {
            for o in offsets {
                if let Err(r) =
                    ack_orderly(ctx, &a.consumer_group, &topic, a.queue_id, o, a.pop_time).await
                {
                    return *r;
                }
            }
            continue;
        }
        if offsets.is_empty() {
            continue;
        }
        let ack = AckMsg {
            ack_offset: -1,
            start_offset: a.start_offset,
            consumer_group: a.consumer_group.clone(),
            topic,
            queue_id: a.queue_id,
            pop_time: a.pop_time,
            broker_name: body.broker_name.clone(),
            ack_offset_list: Some(offsets),
        };
        if let Err(e) = write_ack(ctx, &ack, a.revive_queue_id, BATCH_ACK_TAG).await {
            return error_response(response_code::SYSTEM_ERROR, e.to_string());
        }
    }
    RemotingCommand::response(response_code::SUCCESS, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_queue_is_skipped_and_its_holder_keeps_it() {
        let locks = QueueLocks::default();
        let first = locks.try_lock("T@G@0".into());
        assert!(first.is_some());
        // Refused while held (this used to deadlock: the refused guard was
        // dropped under the map's lock, and would have freed the key).
        assert!(locks.try_lock("T@G@0".into()).is_none());
        assert!(locks.try_lock("T@G@0".into()).is_none());
        assert!(locks.try_lock("T@G@1".into()).is_some());
        drop(first);
        assert!(locks.try_lock("T@G@0".into()).is_some());
    }

    #[test]
    fn bit_set_bytes_to_offsets() {
        // BitSet {0, 2, 9}: bytes [0b101, 0b10] = "BQI=".
        let decode = |s: &str| {
            apogee_protocol::pop::BatchAck {
                consumer_group: String::new(),
                topic: String::new(),
                retry: "0".into(),
                start_offset: 0,
                queue_id: 0,
                revive_queue_id: 0,
                pop_time: 0,
                invisible_time: 0,
                bit_set: Some(s.into()),
            }
            .bit_bytes()
        };
        let b = decode("BQI=").unwrap();
        assert_eq!(b, vec![5, 2]);
        assert_eq!(bit_offsets(&b, 10, 0, 100, 10), Some(vec![10, 12, 19]));
        // Clamped to the queue's range.
        assert_eq!(bit_offsets(&b, 10, 11, 18, 10), Some(vec![12]));
        assert_eq!(bit_offsets(&b, 10, 20, 100, 10), Some(vec![]));
        assert_eq!(bit_offsets(&b, 10, 0, 5, 10), Some(vec![]));
        assert_eq!(decode("AQ").unwrap(), vec![1]);
        assert!(decode("*").is_none());
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn bit_offsets_neither_overflow_nor_explode() {
        // Start near i64::MAX: no overflow, only what fits.
        let all = vec![0xffu8; 4];
        let v = bit_offsets(&all, i64::MAX - 3, 0, i64::MAX, 100).unwrap();
        assert_eq!(v, vec![i64::MAX - 3, i64::MAX - 2, i64::MAX - 1, i64::MAX]);
        // A huge set bit range is cut to the queue's range, not listed.
        let big = vec![0xffu8; 16 << 20];
        assert_eq!(bit_offsets(&big, 0, 5, 7, 100), Some(vec![5, 6, 7]));
        // More set bits in range than allowed: refused.
        assert_eq!(bit_offsets(&big, 0, 0, i64::MAX, 1000), None);
        assert_eq!(bit_offsets(&big, i64::MIN, i64::MIN, 3, 100), None);
        assert_eq!(bit_offsets(&big, i64::MIN, 5, 7, 100), Some(vec![]));
    }
}
