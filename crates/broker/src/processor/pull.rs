//! The pull path: PULL_MESSAGE (11) and LITE_PULL_MESSAGE (361). Checks the
//! broker, group, topic, queue and subscription as Java's
//! `PullMessageProcessor` does, reads from the store with the tag filter,
//! maps every store status to the pull response code and corrected
//! `nextBeginOffset`, commits the consumer offset when asked, and parks
//! pulls that found nothing in the long-polling service, answering them on
//! arrival or at the hold timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::body::{MessageModel, SubscriptionGroupConfig, TopicConfig};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::{PermName, PullSysFlag};
use apogee_protocol::header::pull::{PullMessageRequestHeader, PullMessageResponseHeader};
use apogee_protocol::message::stored;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, Channel, ProcessorRegistry, RequestContext};
use apogee_store::{GetResult, GetStatus};
use bytes::{Bytes, BytesMut};

use crate::context::BrokerContext;
use crate::filter::{is_sql92, FilterError, SubscriptionFilter, TagMessageFilter};

/// `ForbiddenType` values of the NO_PERMISSION answer.
pub mod forbidden {
    pub const BROKER: i32 = 1;
    pub const GROUP: i32 = 2;
    pub const TOPIC: i32 = 3;
    pub const BROADCASTING_DISABLED: i32 = 4;
}

/// Broker id 0: the master (Java `MixAll.MASTER_ID`).
pub const MASTER_ID: i64 = 0;

/// Registers PULL_MESSAGE and LITE_PULL_MESSAGE.
pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    let ctx = Arc::clone(ctx);
    registry.register_shared(
        &[request_code::PULL_MESSAGE, request_code::LITE_PULL_MESSAGE],
        Arc::new(processor_fn(
            move |rc: RequestContext, req: RemotingCommand| {
                let ctx = Arc::clone(&ctx);
                async move { Ok(process_pull(&ctx, rc.channel(), req).await) }
            },
        )),
    );
}

/// What one pass over a pull request produced.
enum Outcome {
    Respond(RemotingCommand),
    /// Nothing found and the request may be held: park it.
    Suspend {
        topic: String,
        queue_id: i32,
        offset: i64,
        filter: Arc<SubscriptionFilter>,
        hold: Duration,
    },
}

/// Handles one pull, holding it when it finds nothing and may be
/// suspended. `None` when the connection closed while it was held.
pub async fn process_pull(
    ctx: &BrokerContext,
    channel: &Channel,
    req: RemotingCommand,
) -> Option<RemotingCommand> {
    let peer = channel.peer_addr();
    match pull_once(ctx, peer, &req, true) {
        Outcome::Respond(r) => Some(r),
        Outcome::Suspend {
            topic,
            queue_id,
            offset,
            filter,
            hold,
        } => {
            let parked = ctx.pull_hold.park(&topic, queue_id, offset, filter);
            // A message stored between the read and the park would not
            // wake us: look once more now that we are registered.
            if ctx.store.max_offset(&topic, queue_id) <= offset {
                tokio::select! {
                    _ = parked.wait(hold) => {}
                    _ = channel.closed() => return None,
                }
            } else {
                drop(parked);
            }
            match pull_once(ctx, peer, &req, false) {
                Outcome::Respond(r) => Some(r),
                // Unreachable with suspension disallowed; answer "not found".
                Outcome::Suspend { .. } => Some(RemotingCommand::response(
                    response_code::PULL_NOT_FOUND,
                    "OFFSET_OVERFLOW_ONE".to_owned(),
                )),
            }
        }
    }
}

/// A refusal; boxed so the `Result`s carrying it stay small.
type Refusal = Box<RemotingCommand>;

fn reject(code: i32, remark: String) -> Refusal {
    Box::new(RemotingCommand::response(code, remark))
}

fn forbid(remark: String, ty: i32) -> Refusal {
    let h = PullMessageResponseHeader {
        forbidden_type: Some(ty),
        ..Default::default()
    };
    Box::new(RemotingCommand::response(response_code::NO_PERMISSION, remark).with_header(&h))
}

/// The checks before reading: broker/group/topic permissions, queue range.
fn pre_check(
    ctx: &BrokerContext,
    h: &PullMessageRequestHeader,
) -> Result<(SubscriptionGroupConfig, TopicConfig), Refusal> {
    let broker_perm = ctx.runtime_config.read().broker_permission;
    if !PermName::is_readable(broker_perm) {
        return Err(forbid(
            format!(
                "the broker[{}] pulling message is forbidden (brokerPermission={broker_perm})",
                ctx.broker_addr
            ),
            forbidden::BROKER,
        ));
    }
    let Some(gc) = ctx.groups.find_or_create(&h.consumer_group) else {
        return Err(reject(
            response_code::SUBSCRIPTION_GROUP_NOT_EXIST,
            format!(
                "subscription group [{}] does not exist and autoCreateSubscriptionGroup is off",
                h.consumer_group
            ),
        ));
    };
    if !gc.consume_enable {
        return Err(forbid(
            format!(
                "subscription group no permission, {} (consumeEnable=false)",
                h.consumer_group
            ),
            forbidden::GROUP,
        ));
    }
    let Some(tc) = ctx.topics.get(&h.topic) else {
        return Err(reject(
            response_code::TOPIC_NOT_EXIST,
            format!("topic[{}] not exist, apply first please!", h.topic),
        ));
    };
    if !PermName::is_readable(tc.perm) {
        return Err(forbid(
            format!("the topic[{}] pulling message is forbidden", h.topic),
            forbidden::TOPIC,
        ));
    }
    if h.queue_id < 0 || h.queue_id >= tc.read_queue_nums {
        return Err(reject(
            response_code::INVALID_PARAMETER,
            format!(
                "queueId[{}] is illegal, topic:[{}] topicConfig.readQueueNums:[{}]",
                h.queue_id, h.topic, tc.read_queue_nums
            ),
        ));
    }
    Ok((gc, tc))
}

/// The filter of this pull: the header's expression with the SUBSCRIPTION
/// flag, else the subscription the consumer registered by heartbeat.
fn subscription_filter(
    ctx: &BrokerContext,
    h: &PullMessageRequestHeader,
    gc: &SubscriptionGroupConfig,
    flags: PullSysFlag,
) -> Result<SubscriptionFilter, Refusal> {
    if flags.has_subscription() {
        let expr = h.subscription.as_deref().unwrap_or("*");
        let ty = h.expression_type.as_deref().unwrap_or("");
        if !is_sql92(ty) {
            return TagMessageFilter::from_expression(expr, Some(ty))
                .map(SubscriptionFilter::Tag)
                .map_err(|e| reject(response_code::SYSTEM_ERROR, e.to_string()));
        }
        // As Apache: the expression is parsed before the switch is looked at.
        let compiled = ctx
            .sql_filters
            .get_or_compile(&h.consumer_group, &h.topic, expr)
            .map_err(|e| reject(response_code::SUBSCRIPTION_PARSE_FAILED, e.to_string()))?;
        property_filter_enabled(ctx, ty)?;
        return Ok(SubscriptionFilter::Sql(compiled));
    }
    let Some(sd) = ctx.consumers.find_subscription(&h.consumer_group, &h.topic) else {
        let remark = if ctx.consumers.group_info(&h.consumer_group).is_none() {
            format!(
                "the consumer's group info not exist: no heartbeat registered group {} yet",
                h.consumer_group
            )
        } else {
            format!(
                "the consumer's subscription not exist: group {} has not subscribed to {}",
                h.consumer_group, h.topic
            )
        };
        return Err(reject(response_code::SUBSCRIPTION_NOT_EXIST, remark));
    };
    if !gc.consume_broadcast_enable {
        let broadcasting = ctx
            .consumers
            .group_info(&h.consumer_group)
            .is_some_and(|g| g.message_model == MessageModel::Broadcasting);
        if broadcasting {
            return Err(forbid(
                format!(
                    "the consumer group[{}] can not consume by broadcast way",
                    h.consumer_group
                ),
                forbidden::BROADCASTING_DISABLED,
            ));
        }
    }
    if sd.sub_version < h.sub_version {
        return Err(reject(
            response_code::SUBSCRIPTION_NOT_LATEST,
            format!(
                "the consumer's subscription not latest: registered subVersion {} is older than {}",
                sd.sub_version, h.sub_version
            ),
        ));
    }
    if is_sql92(&sd.expression_type) && !sd.class_filter_mode {
        // The heartbeat registered it; an expression that does not compile
        // has no filter data (Apache's FILTER_DATA_NOT_EXIST).
        let compiled = ctx
            .sql_filters
            .get_or_compile(&h.consumer_group, &h.topic, &sd.sub_string)
            .map_err(|e| {
                reject(
                    response_code::FILTER_DATA_NOT_EXIST,
                    format!("the consumer's filter data does not exist: {e}"),
                )
            })?;
        property_filter_enabled(ctx, &sd.expression_type)?;
        return Ok(SubscriptionFilter::Sql(compiled));
    }
    TagMessageFilter::from_subscription(&sd)
        .map(SubscriptionFilter::Tag)
        .map_err(|e| reject(response_code::SYSTEM_ERROR, e.to_string()))
}

/// SQL92 needs `enablePropertyFilter`; refused as Apache refuses it.
fn property_filter_enabled(ctx: &BrokerContext, expression_type: &str) -> Result<(), Refusal> {
    if ctx.runtime_config.read().enable_property_filter {
        return Ok(());
    }
    let e = FilterError::PropertyFilterDisabled(expression_type.trim().to_owned());
    Err(reject(response_code::SYSTEM_ERROR, e.to_string()))
}

/// Response code for a store status (Java `PullMessageProcessor`).
pub fn pull_code(status: GetStatus, request_offset: i64) -> i32 {
    match status {
        GetStatus::Found => response_code::SUCCESS,
        GetStatus::MessageWasRemoving | GetStatus::NoMatchedMessage => {
            response_code::PULL_RETRY_IMMEDIATELY
        }
        GetStatus::NoMatchedLogicQueue | GetStatus::NoMessageInQueue => {
            if request_offset != 0 {
                response_code::PULL_OFFSET_MOVED
            } else {
                response_code::PULL_NOT_FOUND
            }
        }
        GetStatus::OffsetFoundNull | GetStatus::OffsetOverflowOne => response_code::PULL_NOT_FOUND,
        GetStatus::OffsetOverflowBadly | GetStatus::OffsetTooSmall => {
            response_code::PULL_OFFSET_MOVED
        }
    }
}

/// `nextBeginOffset` as Java's store reports it: the corrected offsets
/// (too small, overflow, empty queue, missing file) are only applied on a
/// master; a slave keeps the requested offset.
pub fn next_begin_offset(r: &GetResult, request_offset: i64, is_master: bool) -> i64 {
    let corrected = matches!(
        r.status,
        GetStatus::NoMatchedLogicQueue
            | GetStatus::NoMessageInQueue
            | GetStatus::OffsetTooSmall
            | GetStatus::OffsetOverflowBadly
            | GetStatus::OffsetFoundNull
    );
    if corrected && !is_master {
        request_offset
    } else {
        r.next_begin_offset
    }
}

/// The pull body: the stored records back to back. One copy; the records
/// themselves are never re-encoded.
pub fn concat_records(r: &GetResult) -> Bytes {
    match r.messages.as_slice() {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut b = BytesMut::with_capacity(r.buffer_total_size);
            for m in many {
                b.extend_from_slice(m);
            }
            b.freeze()
        }
    }
}

fn pull_once(
    ctx: &BrokerContext,
    peer: SocketAddr,
    req: &RemotingCommand,
    allow_suspend: bool,
) -> Outcome {
    let h: PullMessageRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => {
            static BAD_HEADER: apogee_throttle::LogThrottle =
                apogee_throttle::LogThrottle::new("bad pull header");
            apogee_throttle::throttled_warn!(BAD_HEADER, peer.ip(), peer = %peer, error = %e,
                "bad pull header");
            return Outcome::Respond(*reject(
                response_code::SYSTEM_ERROR,
                format!("cannot decode the pull request header: {e}"),
            ));
        }
    };
    let flags = PullSysFlag(h.sys_flag);
    let (gc, tc) = match pre_check(ctx, &h) {
        Ok(v) => v,
        Err(r) => return Outcome::Respond(*r),
    };
    let filter = match subscription_filter(ctx, &h, &gc, flags) {
        Ok(f) => f,
        Err(r) => return Outcome::Respond(*r),
    };
    let rc = ctx.runtime_config.read();
    let max_count = usize::try_from(h.max_msg_nums.max(1))
        .unwrap_or(1)
        .min(rc.max_transfer_count_on_message_in_memory.max(1));
    let max_bytes = h
        .max_msg_bytes
        .and_then(|b| usize::try_from(b).ok())
        .filter(|&b| b > 0)
        .unwrap_or(usize::MAX)
        .min(rc.max_transfer_bytes_on_message_in_memory.max(1));
    let hold_requested =
        Duration::from_millis(u64::try_from(h.suspend_timeout_millis).unwrap_or(0));
    let slave_read = rc
        .slave_read_enable
        .then_some(rc.access_message_in_memory_max_ratio);
    drop(rc);
    let is_master = ctx.config.is_master();

    let r = ctx.store.get_messages(
        &h.consumer_group,
        &h.topic,
        h.queue_id,
        h.queue_offset,
        max_count,
        max_bytes,
        if filter.is_all() { None } else { Some(&filter) },
    );
    let mut code = pull_code(r.status, h.queue_offset);
    let next = next_begin_offset(&r, h.queue_offset, is_master);
    if code == response_code::PULL_OFFSET_MOVED && !is_master {
        code = response_code::PULL_RETRY_IMMEDIATELY;
    }
    if code == response_code::PULL_OFFSET_MOVED {
        // A consumer that keeps pulling a bad offset repeats this per pull.
        static OFFSET_MOVED: apogee_throttle::LogThrottle =
            apogee_throttle::LogThrottle::new("pull offset moved");
        apogee_throttle::throttled_warn!(OFFSET_MOVED, h.queue_id, group = %h.consumer_group,
            topic = %h.topic, queue = h.queue_id, requested = h.queue_offset, next,
            status = r.status.as_str(), "pull offset moved; correcting the consumer's offset");
    }

    // Java commits on the first (non-held) pass only, and only on a master.
    if allow_suspend && flags.has_commit_offset() && is_master {
        ctx.offsets
            .commit(&h.consumer_group, &h.topic, h.queue_id, h.commit_offset);
    }

    if code == response_code::PULL_NOT_FOUND && allow_suspend && flags.has_suspend() {
        let hold = ctx.pull_hold.hold_time(hold_requested);
        if !hold.is_zero() {
            return Outcome::Suspend {
                topic: h.topic,
                queue_id: h.queue_id,
                offset: h.queue_offset,
                filter: Arc::new(filter),
                hold,
            };
        }
    }

    let suggest = match slave_read {
        Some(ratio) => {
            let behind = r
                .messages
                .last()
                .and_then(|m| m.get(stored::PHYSICAL_OFFSET_POS..stored::PHYSICAL_OFFSET_POS + 8))
                .and_then(|b| b.try_into().ok())
                .map(i64::from_be_bytes)
                .map(|phys| {
                    ctx.store
                        .commit_log_max_offset()
                        .saturating_sub(phys)
                        .max(0) as u64
                });
            suggest_which_broker_id(behind, memory_bytes(ratio), &gc)
        }
        None => MASTER_ID,
    };
    let header = PullMessageResponseHeader {
        suggest_which_broker_id: suggest,
        next_begin_offset: next,
        min_offset: r.min_offset,
        max_offset: r.max_offset,
        topic_sys_flag: Some(tc.topic_sys_flag),
        group_sys_flag: Some(gc.group_sys_flag),
        ..Default::default()
    };
    let mut resp =
        RemotingCommand::response(code, r.status.as_str().to_owned()).with_header(&header);
    if code == response_code::SUCCESS {
        ctx.stats.get(
            &h.consumer_group,
            &h.topic,
            r.messages.len() as u64,
            r.buffer_total_size as u64,
        );
        resp = resp.with_body(concat_records(&r));
    }
    Outcome::Respond(resp)
}

/// Java's choice with `slaveReadEnable`: a consumer reading data more than
/// `memory` bytes behind the CommitLog end (no longer likely in the page
/// cache) is sent to the group's `whichBrokerWhenConsumeSlowly`, others to
/// the group's `brokerId`.
pub fn suggest_which_broker_id(
    behind: Option<u64>,
    memory: u64,
    group: &SubscriptionGroupConfig,
) -> i64 {
    match behind {
        Some(b) if b > memory => group.which_broker_when_consume_slowly,
        _ => group.broker_id,
    }
}

/// `accessMessageInMemoryMaxRatio` percent of the machine's RAM (Java's
/// `TOTAL_PHYSICAL_MEMORY_SIZE * ratio / 100`); unbounded when unknown.
fn memory_bytes(ratio: u32) -> u64 {
    static TOTAL: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let total = TOTAL.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    match total {
        Some(t) => t / 100 * u64::from(ratio),
        None => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: GetStatus, next: i64) -> GetResult {
        GetResult {
            status,
            messages: Vec::new(),
            queue_offsets: Vec::new(),
            next_begin_offset: next,
            min_offset: 3,
            max_offset: 10,
            buffer_total_size: 0,
        }
    }

    #[test]
    fn slave_read_suggests_a_slave_to_consumers_far_behind() {
        let g = SubscriptionGroupConfig {
            which_broker_when_consume_slowly: 1,
            broker_id: 0,
            ..Default::default()
        };
        assert_eq!(suggest_which_broker_id(Some(2_000), 1_000, &g), 1);
        assert_eq!(suggest_which_broker_id(Some(1_000), 1_000, &g), 0);
        assert_eq!(suggest_which_broker_id(None, 1_000, &g), 0);
        assert!(memory_bytes(40) > 0);
    }

    #[test]
    fn status_to_code() {
        use response_code::*;
        assert_eq!(pull_code(GetStatus::Found, 5), SUCCESS);
        assert_eq!(
            pull_code(GetStatus::NoMatchedMessage, 5),
            PULL_RETRY_IMMEDIATELY
        );
        assert_eq!(
            pull_code(GetStatus::MessageWasRemoving, 5),
            PULL_RETRY_IMMEDIATELY
        );
        assert_eq!(pull_code(GetStatus::NoMessageInQueue, 0), PULL_NOT_FOUND);
        assert_eq!(pull_code(GetStatus::NoMessageInQueue, 4), PULL_OFFSET_MOVED);
        assert_eq!(pull_code(GetStatus::NoMatchedLogicQueue, 0), PULL_NOT_FOUND);
        assert_eq!(
            pull_code(GetStatus::NoMatchedLogicQueue, 1),
            PULL_OFFSET_MOVED
        );
        assert_eq!(pull_code(GetStatus::OffsetOverflowOne, 10), PULL_NOT_FOUND);
        assert_eq!(
            pull_code(GetStatus::OffsetOverflowBadly, 11),
            PULL_OFFSET_MOVED
        );
        assert_eq!(pull_code(GetStatus::OffsetTooSmall, 1), PULL_OFFSET_MOVED);
        assert_eq!(pull_code(GetStatus::OffsetFoundNull, 1), PULL_NOT_FOUND);
    }

    #[test]
    fn corrections_only_on_master() {
        let r = result(GetStatus::OffsetTooSmall, 3);
        assert_eq!(next_begin_offset(&r, 1, true), 3);
        assert_eq!(next_begin_offset(&r, 1, false), 1);
        let r = result(GetStatus::OffsetOverflowOne, 10);
        assert_eq!(next_begin_offset(&r, 10, false), 10);
        let r = result(GetStatus::NoMatchedMessage, 8);
        assert_eq!(next_begin_offset(&r, 5, false), 8);
    }

    #[test]
    fn body_concatenates_records() {
        let mut r = result(GetStatus::Found, 2);
        r.messages = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cde")];
        r.buffer_total_size = 5;
        assert_eq!(&concat_records(&r)[..], b"abcde");
        r.messages.truncate(1);
        assert_eq!(&concat_records(&r)[..], b"ab");
    }
}
