//! The send path: SEND_MESSAGE (10), SEND_MESSAGE_V2 (310), SEND_BATCH_MESSAGE
//! (320) and SEND_REPLY_MESSAGE(_V2) (324/325). Validates the request as the
//! Java broker's `msgCheck` does, builds the record(s) to store (properties
//! enrichment, hosts, tags code, retry → DLQ), applies the delay/timer
//! transform, refuses quickly with SYSTEM_BUSY under overload, appends
//! without blocking a worker on fsync, and answers with the offset msg id(s),
//! queue id and queue offset. [`store_message`] is the same store step for
//! messages other modules build (retries, scheduled deliveries).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_protocol::body::{TopicConfig, TopicFilterType};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PermName;
use apogee_protocol::header::send::{
    decode_send_header, SendMessageRequestHeader, SendMessageResponseHeader,
};
use apogee_protocol::message::batch::iter_batch;
use apogee_protocol::message::properties::{self, MAX_PROPERTIES_LEN};
use apogee_protocol::message::stored::canonical_ip;
use apogee_protocol::message::{keys, sysflag, MessageToStore, UniqIdGenerator};
use apogee_protocol::topic;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ProcessorRegistry, RequestContext};
use apogee_replication::SyncOutcome;
use apogee_store::{PutError, PutResult, PutStatus};
use apogee_throttle::{throttled_warn, LogThrottle};
use bytes::Bytes;
use rand::Rng;

use crate::config::ControllerAck;
use crate::context::BrokerContext;
use crate::stats::TopicMeter;
use crate::topic_config::TopicEntry;

// One WARN per refusal reason (response code), then a count per window: a
// full disk refuses every send, and one line each flooded the log.
static SEND_REFUSED: LogThrottle = LogThrottle::new("send refused");

/// `MSG_REGION` the broker reports (Java `regionId` default).
pub const DEFAULT_REGION: &str = "DefaultRegion";
/// `TRACE_ON` the broker reports (Java `traceOn` default).
pub const DEFAULT_TRACE_ON: bool = true;
/// Queues of a `%DLQ%` topic (Java `DLQ_NUMS_PER_GROUP`).
pub const DLQ_NUMS_PER_GROUP: i32 = 1;

/// Remark of the SYSTEM_BUSY answer; clients look for the bracketed tag.
pub const BUSY_REMARK: &str = "[PC_SYNCHRONIZED]broker busy, start flow control for a while";

/// The overload reason [`store_message`] reports as `PutError::Busy`;
/// [`store_error_reject`] turns it into SYSTEM_BUSY.
pub const BUSY_REASON: &str = "too many puts in flight or appends stalled";

/// Codes this module answers.
pub const SEND_CODES: [i32; 5] = [
    request_code::SEND_MESSAGE,
    request_code::SEND_MESSAGE_V2,
    request_code::SEND_BATCH_MESSAGE,
    request_code::SEND_REPLY_MESSAGE,
    request_code::SEND_REPLY_MESSAGE_V2,
];

/// Registers the send codes.
pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    let ctx = Arc::clone(ctx);
    registry.register_shared(
        &SEND_CODES,
        Arc::new(processor_fn(
            move |rc: RequestContext, req: RemotingCommand| {
                let ctx = Arc::clone(&ctx);
                async move { Ok(Some(process_send(&ctx, rc.peer_addr(), req).await)) }
            },
        )),
    );
}

/// A refused request: response code and the remark that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: i32,
    pub remark: String,
}

impl Reject {
    pub fn new(code: i32, remark: impl Into<String>) -> Self {
        Reject {
            code,
            remark: remark.into(),
        }
    }
}

/// Handles one send request of any send code and returns the response
/// (the remoting layer drops it for oneway requests; the message is stored
/// all the same).
pub async fn process_send(
    ctx: &BrokerContext,
    peer: SocketAddr,
    req: RemotingCommand,
) -> RemotingCommand {
    let mut resp = match send_inner(ctx, peer, &req).await {
        Ok(r) => r,
        Err(rej) => {
            throttled_warn!(SEND_REFUSED, rej.code, peer = %peer, code = req.code,
                response = rej.code, remark = %rej.remark, "send refused");
            RemotingCommand::response(rej.code, rej.remark)
        }
    };
    resp.set_ext(keys::MSG_REGION, DEFAULT_REGION);
    resp.set_ext(
        keys::TRACE_SWITCH,
        if DEFAULT_TRACE_ON { "true" } else { "false" },
    );
    resp
}

async fn send_inner(
    ctx: &BrokerContext,
    peer: SocketAddr,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Reject> {
    // Java refuses before looking at the request (`rejectRequest`).
    if !ctx.config.is_master() {
        return Err(Reject::new(
            response_code::SYSTEM_BUSY,
            "[REJECTREQUEST]system busy, this broker is a slave and does not accept messages",
        ));
    }
    if ctx.is_write_fenced() {
        return Err(Reject::new(
            response_code::SERVICE_NOT_AVAILABLE,
            "this broker is not confirmed as master by the controller group (controller mode); \
             writes are refused until it is",
        ));
    }
    let header = decode_send_header(req).map_err(|e| {
        Reject::new(
            response_code::SYSTEM_ERROR,
            format!("cannot decode the send request header: {e}"),
        )
    })?;
    let topic_config = msg_check(ctx, &header, peer)?;
    let body = req.body.clone().unwrap_or_default();
    if matches!(
        req.code,
        request_code::SEND_REPLY_MESSAGE | request_code::SEND_REPLY_MESSAGE_V2
    ) {
        return super::reply::send_reply(ctx, peer, &header, &topic_config, body).await;
    }
    let is_batch = header.batch.unwrap_or(false) || req.code == request_code::SEND_BATCH_MESSAGE;
    if is_batch {
        send_batch(ctx, peer, &header, &topic_config, body).await
    } else {
        send_single(ctx, peer, &header, &topic_config, body).await
    }
}

/// Java `msgCheck`: broker permission, topic name and reservation, topic
/// existence (auto-creating it when allowed), queue id range. Returns the
/// topic's config.
pub fn msg_check(
    ctx: &BrokerContext,
    h: &SendMessageRequestHeader,
    peer: SocketAddr,
) -> Result<Arc<TopicEntry>, Reject> {
    let broker_perm = ctx.runtime_config.read().broker_permission;
    if !PermName::is_writeable(broker_perm) {
        return Err(Reject::new(
            response_code::NO_PERMISSION,
            format!(
                "the broker[{}] sending message is forbidden (brokerPermission={})",
                ctx.broker_addr, broker_perm
            ),
        ));
    }
    check_topic_name(&h.topic)?;
    let topic_config = match ctx.topics.get_shared(&h.topic) {
        Some(tc) => tc,
        None => TopicEntry::new(create_topic_for_send(ctx, h, peer)?),
    };
    if !PermName::is_writeable(topic_config.perm) {
        return Err(Reject::new(
            response_code::NO_PERMISSION,
            format!(
                "the topic[{}] sending message is forbidden (perm={})",
                h.topic,
                PermName::perm_to_string(topic_config.perm)
            ),
        ));
    }
    let id_valid = topic_config
        .write_queue_nums
        .max(topic_config.read_queue_nums);
    if h.queue_id >= id_valid {
        return Err(Reject::new(
            response_code::INVALID_PARAMETER,
            format!(
                "request queueId[{}] is illegal: topic {} has {} write / {} read queues (producer {peer})",
                h.queue_id, h.topic, topic_config.write_queue_nums, topic_config.read_queue_nums
            ),
        ));
    }
    Ok(topic_config)
}

/// Topic name rules and topics clients may not send to.
pub fn check_topic_name(name: &str) -> Result<(), Reject> {
    topic::validate_topic(name)
        .map_err(|e| Reject::new(response_code::INVALID_PARAMETER, e.to_string()))?;
    if topic::is_not_allowed_send_topic(name) {
        return Err(Reject::new(
            response_code::NO_PERMISSION,
            format!("Sending message to topic[{name}] is forbidden: it is reserved for the broker"),
        ));
    }
    Ok(())
}

fn create_topic_for_send(
    ctx: &BrokerContext,
    h: &SendMessageRequestHeader,
    peer: SocketAddr,
) -> Result<TopicConfig, Reject> {
    let is_retry = topic::is_retry_topic(&h.topic);
    let mut sys_flag = 0;
    if h.unit_mode.unwrap_or(false) {
        sys_flag = if is_retry {
            apogee_protocol::flags::TopicSysFlag::build(false, true).0
        } else {
            apogee_protocol::flags::TopicSysFlag::build(true, false).0
        };
    }
    tracing::info!(topic = %h.topic, producer = %peer, "topic does not exist; trying to create it on send");
    if let Some(tc) = ctx.topics.create_in_send(
        &h.topic,
        &h.default_topic,
        h.default_topic_queue_nums,
        sys_flag,
    ) {
        // The table registers the new topic with the NameServers.
        return Ok(tc);
    }
    if is_retry {
        let tc = ctx.topics.get_or_create_system(
            &h.topic,
            1,
            PermName::PERM_READ | PermName::PERM_WRITE,
            sys_flag,
        );
        return Ok(tc);
    }
    Err(Reject::new(
        response_code::TOPIC_NOT_EXIST,
        format!(
            "topic[{}] not exist, apply first please! (autoCreateTopicEnable={}, default topic {:?})",
            h.topic, ctx.config.auto_create_topic_enable, h.default_topic
        ),
    ))
}

/// Chooses the queue: the requested one, or a random writable one when the
/// request says "any" (negative).
pub(super) fn choose_queue(requested: i32, tc: &TopicConfig) -> i32 {
    if requested >= 0 {
        requested
    } else {
        let n = tc.write_queue_nums.max(1);
        rand::thread_rng().gen_range(0..n)
    }
}

/// Where a send goes after Java's `handleRetryAndDLQ`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub topic: String,
    pub queue_id: i32,
    /// The message goes to the DLQ: delay properties are dropped.
    pub to_dlq: bool,
}

/// Sends to `%RETRY%<group>` whose reconsume count exceeds the group's (or
/// the header's) maximum go to `%DLQ%<group>` instead.
pub(super) fn retry_or_dlq(
    ctx: &BrokerContext,
    h: &SendMessageRequestHeader,
    queue_id: i32,
) -> Result<Destination, Reject> {
    let keep = Destination {
        topic: h.topic.clone(),
        queue_id,
        to_dlq: false,
    };
    let Some(group) = h.topic.strip_prefix(topic::RETRY_GROUP_TOPIC_PREFIX) else {
        return Ok(keep);
    };
    let Some(gc) = ctx.groups.find_or_create(group) else {
        return Err(Reject::new(
            response_code::SUBSCRIPTION_GROUP_NOT_EXIST,
            format!("subscription group not exist, {group} (autoCreateSubscriptionGroup is off)"),
        ));
    };
    // Every client from 3.4.9 on sends maxReconsumeTimes; take it when present.
    let max = h.max_reconsume_times.unwrap_or(gc.retry_max_times);
    let times = h.reconsume_times.unwrap_or(0);
    if times <= max {
        return Ok(keep);
    }
    let dlq = topic::dlq_topic(group);
    ctx.topics.get_or_create_system(
        &dlq,
        DLQ_NUMS_PER_GROUP,
        PermName::PERM_READ | PermName::PERM_WRITE,
        0,
    );
    tracing::info!(
        group,
        reconsume_times = times,
        max,
        "retry message goes to the DLQ"
    );
    Ok(Destination {
        topic: dlq,
        queue_id: rand::thread_rng().gen_range(0..DLQ_NUMS_PER_GROUP),
        to_dlq: true,
    })
}

/// The stored properties of a single send: the client's string with
/// `UNIQ_KEY` added when missing and `CLUSTER` set. Returns the string and
/// the message's unique key. The client's pairs are kept byte for byte when
/// nothing needs replacing (the common case costs two scans and an append).
pub fn enrich_properties(props: &str, cluster: &str, to_dlq: bool) -> (String, String) {
    let mut out = if to_dlq {
        let mut s = props.to_owned();
        for k in [
            keys::DELAY_TIME_LEVEL,
            keys::TIMER_DELIVER_MS,
            keys::TIMER_DELAY_SEC,
            keys::TIMER_DELAY_MS,
        ] {
            if properties::get(&s, k).is_some() {
                s = properties::remove(&s, k);
            }
        }
        s
    } else {
        let mut s = String::with_capacity(props.len() + 64 + cluster.len());
        s.push_str(props);
        s
    };
    if !out.is_empty() && !out.ends_with(properties::PROPERTY_SEPARATOR) {
        out.push(properties::PROPERTY_SEPARATOR);
    }
    let uniq = match properties::get(&out, keys::UNIQ_KEY) {
        Some(u) => u.to_owned(),
        None => {
            let u = UniqIdGenerator::global().next_id();
            properties::append(&mut out, keys::UNIQ_KEY, &u);
            u
        }
    };
    match properties::get(&out, keys::CLUSTER) {
        Some(c) if c == cluster => {}
        Some(_) => out = properties::set(&out, keys::CLUSTER, cluster),
        None => properties::append(&mut out, keys::CLUSTER, cluster),
    }
    (out, uniq)
}

pub(super) fn check_sizes(
    ctx: &BrokerContext,
    body_len: usize,
    props_len: usize,
) -> Result<(), Reject> {
    let max = ctx.config.store.max_message_size;
    if props_len > MAX_PROPERTIES_LEN {
        return Err(Reject::new(
            response_code::MESSAGE_ILLEGAL,
            format!(
                "the message is illegal: properties are {props_len} bytes, the limit is {MAX_PROPERTIES_LEN} bytes"
            ),
        ));
    }
    if body_len > max {
        return Err(Reject::new(
            response_code::MESSAGE_ILLEGAL,
            format!(
                "the message is illegal: body is {body_len} bytes, maxMessageSize is {max} bytes"
            ),
        ));
    }
    Ok(())
}

fn topic_sys_flag(h: &SendMessageRequestHeader, tc: &TopicConfig) -> i32 {
    let mut f = h.sys_flag;
    if tc.topic_filter_type == TopicFilterType::MultiTag {
        f |= sysflag::MULTI_TAGS;
    }
    f
}

/// Batches cannot carry half messages (no client sends them so).
fn refuse_transactions(h: &SendMessageRequestHeader, props: &str) -> Result<(), Reject> {
    if crate::transaction::is_prepared(h.sys_flag, props) {
        return Err(Reject::new(
            response_code::MESSAGE_ILLEGAL,
            "a batch cannot hold transactional (half) messages",
        ));
    }
    Ok(())
}

/// Builds the record of a single (non-batch) send.
#[allow(clippy::too_many_arguments)]
pub fn build_single(
    h: &SendMessageRequestHeader,
    tc: &TopicConfig,
    dest: &Destination,
    body: Bytes,
    peer: SocketAddr,
    store_host: SocketAddr,
    cluster: &str,
) -> (MessageToStore, String) {
    let (props, uniq) =
        enrich_properties(h.properties.as_deref().unwrap_or(""), cluster, dest.to_dlq);
    let mut msg = MessageToStore {
        topic: dest.topic.clone(),
        queue_id: dest.queue_id,
        flag: h.flag,
        body,
        properties: props,
        sys_flag: topic_sys_flag(h, tc),
        born_timestamp: h.born_timestamp,
        born_host: canonical_addr(peer),
        store_host,
        reconsume_times: h.reconsume_times.unwrap_or(0),
        prepared_transaction_offset: 0,
        tags_code: 0,
    };
    msg.tags_code = msg.tags_code_from_properties();
    (msg, uniq)
}

/// An IPv4-mapped IPv6 peer becomes plain IPv4 (old clients read only IPv4).
pub fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(a.ip()), a.port())
}

async fn send_single(
    ctx: &BrokerContext,
    peer: SocketAddr,
    h: &SendMessageRequestHeader,
    tc: &TopicEntry,
    body: Bytes,
) -> Result<RemotingCommand, Reject> {
    let props_len = h.properties.as_deref().map_or(0, str::len);
    check_sizes(ctx, body.len(), props_len)?;
    let half = crate::transaction::is_prepared(h.sys_flag, h.properties.as_deref().unwrap_or(""));
    if half {
        crate::transaction::check_accepted(ctx)?;
    }
    let queue_id = choose_queue(h.queue_id, tc);
    let dest = retry_or_dlq(ctx, h, queue_id)?;
    let (msg, uniq) = build_single(
        h,
        tc,
        &dest,
        body,
        peer,
        ctx.store_host,
        &ctx.config.broker_cluster_name,
    );
    if msg.properties.len() > MAX_PROPERTIES_LEN {
        return Err(Reject::new(
            response_code::MESSAGE_ILLEGAL,
            format!(
                "the message is illegal: properties grow to {} bytes with the broker's additions, the limit is {MAX_PROPERTIES_LEN}",
                msg.properties.len()
            ),
        ));
    }
    let mut msg = msg;
    if half {
        // Parked in the half topic until END_TRANSACTION (transaction.rs).
        crate::transaction::to_half(&mut msg);
    } else {
        // Delay levels and timers are parked under the schedule/timer topics;
        // a timer beyond the maximum or a malformed delay fails the send.
        ctx.schedule
            .try_transform(&mut msg)
            .map_err(|e| Reject::new(e.response_code(), e.to_string()))?;
    }
    let recall_handle = recall_handle_for(ctx, &msg, &uniq);
    // The meter counts the topic the message is stored under; a delayed,
    // half or retried message is counted under its own topic, by name.
    let meter = (msg.topic == h.topic).then(|| tc.put_meter(&ctx.stats));
    let (r, ha) = store_or_reject(ctx, StoreInput::One(msg), meter).await?;
    let mut resp = success_response(&r, ha, r.msg_id(), queue_id, Some(uniq));
    if let Some(handle) = recall_handle {
        resp.set_ext("recallHandle", handle);
    }
    Ok(resp)
}

/// The recall handle a single send of a timer message answers with (Apache
/// `attachRecallHandle`): only messages parked under the timer topic (not
/// delay levels) and not retries. Its timestamp is `TIMER_OUT_MS + 1`, as
/// Apache's, which RECALL_MESSAGE turns back into the message's slot.
fn recall_handle_for(ctx: &BrokerContext, msg: &MessageToStore, uniq: &str) -> Option<String> {
    if msg.topic != crate::schedule::TIMER_TOPIC {
        return None;
    }
    let out_ms: i64 = properties::get(&msg.properties, keys::TIMER_OUT_MS)?
        .parse()
        .ok()?;
    let real_topic = properties::get(&msg.properties, keys::REAL_TOPIC)?;
    if topic::is_retry_topic(real_topic) {
        return None;
    }
    let handle = apogee_protocol::recall::RecallHandle::new(
        real_topic,
        ctx.config.broker_name.as_str(),
        out_ms.saturating_add(1).to_string(),
        uniq,
    );
    Some(handle.encode())
}

async fn send_batch(
    ctx: &BrokerContext,
    peer: SocketAddr,
    h: &SendMessageRequestHeader,
    tc: &TopicEntry,
    body: Bytes,
) -> Result<RemotingCommand, Reject> {
    if h.topic.len() > topic::TOPIC_MAX_LENGTH {
        return Err(Reject::new(
            response_code::MESSAGE_ILLEGAL,
            format!("message topic length too long {}", h.topic.len()),
        ));
    }
    if topic::is_retry_topic(&h.topic) {
        return Err(Reject::new(
            response_code::MESSAGE_ILLEGAL,
            format!("batch request does not support retry group {}", h.topic),
        ));
    }
    if body.len() > ctx.config.store.max_message_size {
        return Err(Reject::new(
            response_code::MESSAGE_ILLEGAL,
            format!(
                "the message is illegal: batch body is {} bytes, maxMessageSize is {} bytes",
                body.len(),
                ctx.config.store.max_message_size
            ),
        ));
    }
    refuse_transactions(h, h.properties.as_deref().unwrap_or(""))?;
    let queue_id = choose_queue(h.queue_id, tc);
    let sys_flag = topic_sys_flag(h, tc);
    let born_host = canonical_addr(peer);
    let cluster = &ctx.config.broker_cluster_name;
    let mut msgs = Vec::new();
    for (i, rec) in iter_batch(&body).enumerate() {
        let rec = rec.map_err(|e| {
            Reject::new(
                response_code::MESSAGE_ILLEGAL,
                format!("the batch is malformed at message {i}: {e}"),
            )
        })?;
        // Only the record's own properties are stored (reference 6.7): the
        // batch-level UNIQ_KEY must not make every message share one id.
        let (props, _) = enrich_properties(&rec.properties, cluster, false);
        if props.len() > MAX_PROPERTIES_LEN {
            return Err(Reject::new(
                response_code::MESSAGE_ILLEGAL,
                format!(
                    "the message is illegal: properties of batch message {i} are {} bytes, the limit is {MAX_PROPERTIES_LEN}",
                    props.len()
                ),
            ));
        }
        let mut m = MessageToStore {
            topic: h.topic.clone(),
            queue_id,
            flag: rec.flag,
            body: body.slice(rec.body_pos..rec.body_pos + rec.body.len()),
            properties: props,
            sys_flag,
            born_timestamp: h.born_timestamp,
            born_host,
            store_host: ctx.store_host,
            reconsume_times: h.reconsume_times.unwrap_or(0),
            prepared_transaction_offset: 0,
            tags_code: 0,
        };
        m.tags_code = m.tags_code_from_properties();
        msgs.push(m);
    }
    if msgs.is_empty() {
        return Err(Reject::new(
            response_code::MESSAGE_ILLEGAL,
            "the batch holds no message",
        ));
    }
    let uniq = h
        .properties
        .as_deref()
        .and_then(|p| properties::get(p, keys::UNIQ_KEY))
        .map(str::to_owned);
    let meter = Some(tc.put_meter(&ctx.stats));
    let (r, ha) = store_or_reject(ctx, StoreInput::Batch(msgs), meter).await?;
    Ok(success_response(&r, ha, r.msg_ids(), queue_id, uniq))
}

pub(super) fn success_response(
    r: &PutResult,
    ha: Option<SyncOutcome>,
    msg_id: String,
    queue_id: i32,
    transaction_id: Option<String>,
) -> RemotingCommand {
    // As Java's handleHA after handleDiskFlush: a replication failure is
    // the answer even when the flush succeeded.
    let (code, remark) = match (ha, r.status) {
        (Some(SyncOutcome::SlaveNotAvailable), _) => (
            response_code::SLAVE_NOT_AVAILABLE,
            Some(
                "the message is stored on the master, but no slave is connected or in sync \
                 (haMaxGapNotInSync)"
                    .to_owned(),
            ),
        ),
        (Some(SyncOutcome::Timeout), _) => (
            response_code::FLUSH_SLAVE_TIMEOUT,
            Some(
                "the message is stored on the master, but no slave acknowledged it within \
                 syncFlushTimeout"
                    .to_owned(),
            ),
        ),
        (_, PutStatus::Ok) => (response_code::SUCCESS, None),
        (_, PutStatus::FlushDiskTimeout) => (
            response_code::FLUSH_DISK_TIMEOUT,
            Some(
                "the message is stored but the disk flush did not finish within syncFlushTimeout"
                    .to_owned(),
            ),
        ),
    };
    let h = SendMessageResponseHeader {
        msg_id,
        queue_id,
        queue_offset: r.queue_offset,
        transaction_id,
        ..Default::default()
    };
    RemotingCommand::response(code, remark).with_header(&h)
}

pub(super) enum StoreInput {
    One(MessageToStore),
    Batch(Vec<MessageToStore>),
}

/// Whether the producer waits for the message to be stored (property
/// `WAIT`, true unless "false"; Java `isWaitStoreMsgOK`).
fn waits_for_store(m: &MessageToStore) -> bool {
    properties::get(&m.properties, keys::WAIT_STORE_MSG_OK) != Some("false")
}

/// Stores a client send; on a SYNC_MASTER, then waits (up to
/// syncFlushTimeout) for the slaves `inSyncReplicas` asks for, as Java's
/// `handleHA`. In controller mode a SyncStateSet below `minInSyncReplicas`
/// refuses the send before it is stored.
pub(super) async fn store_or_reject(
    ctx: &BrokerContext,
    input: StoreInput,
    meter: Option<&TopicMeter>,
) -> Result<(PutResult, Option<SyncOutcome>), Reject> {
    let waits = match &input {
        StoreInput::One(m) => waits_for_store(m),
        StoreInput::Batch(ms) => ms.iter().all(waits_for_store),
    };
    let controller = ctx.config.enable_controller_mode;
    if waits && controller {
        check_in_sync_replicas(ctx)?;
    }
    let wants_wait = waits && ctx.config.is_sync_master();
    let res = match input {
        StoreInput::One(msg) => put_one(ctx, msg, meter).await,
        StoreInput::Batch(msgs) => put_batch(ctx, msgs, meter).await,
    };
    // Controller mode: with a SyncStateSet of this master alone, only it
    // can be elected, so its own copy is the acknowledgement. Read after
    // the put (SeqCst, paired with the supervisor's store before it reads
    // the grow barrier): a put the barrier missed sees the flag cleared.
    let wait_slave = wants_wait
        && match (controller, ctx.config.controller_ack()) {
            (false, _) => true,
            (true, ControllerAck::Master) => false,
            (true, ControllerAck::Slave) => true,
            (true, ControllerAck::SyncStateSet) => !ctx.acks_alone(),
        };
    let r = res.map_err(|e| store_error_reject(ctx, &e))?;
    let ha = match ctx.ha_server() {
        Some(ha) if wait_slave => {
            let timeout = Duration::from_millis(ctx.config.store.sync_flush_timeout);
            Some(ha.wait_replicated(r.end_offset(), timeout).await)
        }
        _ => None,
    };
    Ok((r, ha))
}

/// Apache's IN_SYNC_REPLICAS_NOT_ENOUGH: a controller-mode master whose
/// SyncStateSet is smaller than `minInSyncReplicas` stores nothing.
fn check_in_sync_replicas(ctx: &BrokerContext) -> Result<(), Reject> {
    let min = ctx.config.min_in_sync_replicas as usize;
    if min <= 1 {
        return Ok(());
    }
    let in_sync = ctx
        .sync_state_set_size
        .load(std::sync::atomic::Ordering::SeqCst)
        .max(1);
    if in_sync < min {
        return Err(Reject::new(
            response_code::SYSTEM_ERROR,
            format!(
                "in-sync replicas not enough: the SyncStateSet has {in_sync}, minInSyncReplicas is {min}"
            ),
        ));
    }
    Ok(())
}

/// The response for a failed put (Java `handlePutMessageResult`).
pub fn store_error_reject(ctx: &BrokerContext, e: &PutError) -> Reject {
    match e {
        PutError::MessageTooLarge { .. }
        | PutError::DoesNotFitSegment { .. }
        | PutError::IllegalMessage(_)
        | PutError::Encode(_) => Reject::new(
            response_code::MESSAGE_ILLEGAL,
            format!(
                "the message is illegal: {e} (msg body length limit {}B, msg properties length limit 32KB)",
                ctx.config.store.max_message_size
            ),
        ),
        PutError::Busy(r) => {
            Reject::new(response_code::SYSTEM_BUSY, format!("{BUSY_REMARK}: {r}"))
        }
        PutError::DiskFull { .. } | PutError::NotWritable(_) | PutError::ShutDown => {
            Reject::new(
                response_code::SERVICE_NOT_AVAILABLE,
                format!("service not available now: {e}"),
            )
        }
        PutError::Store(_) => Reject::new(
            response_code::SYSTEM_ERROR,
            format!("storing the message failed: {e}"),
        ),
    }
}

/// Stores one message built by the broker (send, retry, scheduled
/// delivery): applies the delay/timer transform, refuses under overload with
/// `PutError::Busy(BUSY_REASON)`, appends, then waits for
/// the flush policy without blocking the worker (SYNC_FLUSH timeouts come
/// back as `PutStatus::FlushDiskTimeout`). Counts the put in `ctx.stats`.
pub async fn store_message(
    ctx: &BrokerContext,
    mut msg: MessageToStore,
) -> Result<PutResult, PutError> {
    ctx.schedule.transform(&mut msg);
    put_one(ctx, msg, None).await
}

/// Appends one message as it is (no delay transform). `meter`, when given,
/// is the put meter of `msg.topic`.
async fn put_one(
    ctx: &BrokerContext,
    msg: MessageToStore,
    meter: Option<&TopicMeter>,
) -> Result<PutResult, PutError> {
    let Some(_permit) = ctx.stats.try_begin_put() else {
        return Err(PutError::Busy(BUSY_REASON));
    };
    let start = Instant::now();
    let pending = {
        let _append = ctx.stats.begin_append();
        ctx.store.put_message_async(&msg)?
    };
    ctx.wake_replication();
    let r = pending.await;
    ctx.stats.record_put_latency(start.elapsed());
    match meter {
        Some(m) => ctx
            .stats
            .put_to(m, r.msg_count as u64, r.wrote_bytes as u64),
        None => ctx
            .stats
            .put(&msg.topic, r.msg_count as u64, r.wrote_bytes as u64),
    }
    Ok(r)
}

/// Stores a client batch in one append (consecutive queue offsets). No
/// delay transform: clients refuse delayed messages in batches.
pub async fn store_messages(
    ctx: &BrokerContext,
    msgs: Vec<MessageToStore>,
) -> Result<PutResult, PutError> {
    put_batch(ctx, msgs, None).await
}

async fn put_batch(
    ctx: &BrokerContext,
    msgs: Vec<MessageToStore>,
    meter: Option<&TopicMeter>,
) -> Result<PutResult, PutError> {
    let Some(_permit) = ctx.stats.try_begin_put() else {
        return Err(PutError::Busy(BUSY_REASON));
    };
    let start = Instant::now();
    let pending = {
        let _append = ctx.stats.begin_append();
        ctx.store.put_messages_async(&msgs)?
    };
    ctx.wake_replication();
    let r = pending.await;
    ctx.stats.record_put_latency(start.elapsed());
    match (meter, msgs.first()) {
        (Some(m), _) => ctx
            .stats
            .put_to(m, r.msg_count as u64, r.wrote_bytes as u64),
        (None, Some(first)) => {
            ctx.stats
                .put(&first.topic, r.msg_count as u64, r.wrote_bytes as u64)
        }
        (None, None) => {}
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrich_adds_uniq_key_and_cluster() {
        let (p, u) = enrich_properties("TAGS\u{1}a\u{2}", "C1", false);
        assert_eq!(properties::get(&p, keys::UNIQ_KEY), Some(u.as_str()));
        assert_eq!(u.len(), 32);
        assert_eq!(properties::get(&p, keys::CLUSTER), Some("C1"));
        assert!(p.starts_with("TAGS\u{1}a\u{2}"));
        // An existing key is kept; a missing trailing separator is repaired.
        let (p2, u2) = enrich_properties("UNIQ_KEY\u{1}ABC\u{2}KEYS\u{1}k", "C1", false);
        assert_eq!(u2, "ABC");
        assert_eq!(properties::get(&p2, keys::KEYS), Some("k"));
        assert_eq!(properties::get(&p2, keys::CLUSTER), Some("C1"));
        // A foreign cluster value is replaced, not duplicated.
        let (p3, _) = enrich_properties("CLUSTER\u{1}X\u{2}", "C1", false);
        assert_eq!(p3.matches("CLUSTER").count(), 1);
        assert_eq!(properties::get(&p3, keys::CLUSTER), Some("C1"));
        // DLQ copies lose their delay.
        let (p4, _) = enrich_properties("DELAY\u{1}3\u{2}TAGS\u{1}t\u{2}", "C1", true);
        assert_eq!(properties::get(&p4, keys::DELAY_TIME_LEVEL), None);
        assert_eq!(properties::get(&p4, keys::TAGS), Some("t"));
        // Empty input.
        let (p5, u5) = enrich_properties("", "C1", false);
        assert!(p5.starts_with("UNIQ_KEY\u{1}"));
        assert!(!u5.is_empty());
    }

    #[test]
    fn topic_name_checks() {
        assert!(check_topic_name("Good_Topic-1").is_ok());
        assert_eq!(
            check_topic_name("bad topic").unwrap_err().code,
            response_code::INVALID_PARAMETER
        );
        assert_eq!(
            check_topic_name(&"x".repeat(128)).unwrap_err().code,
            response_code::INVALID_PARAMETER
        );
        let r = check_topic_name("SCHEDULE_TOPIC_XXXX").unwrap_err();
        assert_eq!(r.code, response_code::NO_PERMISSION);
        assert!(r.remark.contains("SCHEDULE_TOPIC_XXXX"));
    }

    #[test]
    fn builds_single_record() {
        let h = SendMessageRequestHeader {
            producer_group: "PG".into(),
            topic: "T".into(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id: 2,
            sys_flag: 0,
            born_timestamp: 1234,
            flag: 7,
            properties: Some("TAGS\u{1}TagA\u{2}".into()),
            reconsume_times: Some(2),
            ..Default::default()
        };
        let tc = TopicConfig {
            topic_name: "T".into(),
            topic_filter_type: TopicFilterType::MultiTag,
            ..Default::default()
        };
        let dest = Destination {
            topic: "T".into(),
            queue_id: 2,
            to_dlq: false,
        };
        let peer: SocketAddr = "[::ffff:10.1.2.3]:5555".parse().unwrap();
        let store: SocketAddr = "10.0.0.9:10911".parse().unwrap();
        let (m, uniq) = build_single(&h, &tc, &dest, Bytes::from_static(b"hi"), peer, store, "DC");
        assert_eq!(m.born_host, "10.1.2.3:5555".parse::<SocketAddr>().unwrap());
        assert_eq!(m.store_host, store);
        assert_eq!(m.flag, 7);
        assert_eq!(m.reconsume_times, 2);
        assert_eq!(m.born_timestamp, 1234);
        assert_eq!(m.sys_flag & sysflag::MULTI_TAGS, sysflag::MULTI_TAGS);
        assert_eq!(
            m.tags_code,
            apogee_protocol::message::tags_hash_code("TagA")
        );
        assert_eq!(
            properties::get(&m.properties, keys::UNIQ_KEY),
            Some(uniq.as_str())
        );
    }

    #[test]
    fn negative_queue_picks_a_writable_one() {
        let tc = TopicConfig {
            write_queue_nums: 3,
            read_queue_nums: 8,
            ..Default::default()
        };
        for _ in 0..100 {
            let q = choose_queue(-1, &tc);
            assert!((0..3).contains(&q));
        }
        assert_eq!(choose_queue(5, &tc), 5);
    }
}
