//! CONSUMER_SEND_MSG_BACK (36): a consumer hands back a message it failed
//! to consume; it is re-stored in `%RETRY%<group>` with a growing delay
//! (through the delay service, so the retry arrives after its level), or in
//! `%DLQ%<group>` once `maxReconsumeTimes` is reached (reference 9.5, Java
//! `AbstractSendMessageProcessor.consumerSendMsgBack`).

use std::sync::Arc;

use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::{PermName, TopicSysFlag};
use apogee_protocol::header::send::ConsumerSendMsgBackRequestHeader;
use apogee_protocol::message::{keys, properties, stored, MessageToStore};
use apogee_protocol::topic;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ProcessorRegistry, RequestContext};
use bytes::Bytes;
use rand::Rng;

use crate::context::BrokerContext;
use crate::processor::send::store_message;

/// Request version from which the header's `maxReconsumeTimes` counts
/// (`MQVersion.V3_4_9`).
pub const VERSION_WITH_MAX_RECONSUME: i32 = 121;
/// Queues of a dead-letter topic (Java `DLQ_NUMS_PER_GROUP`).
pub const DLQ_NUMS_PER_GROUP: i32 = 1;

/// Registers CONSUMER_SEND_MSG_BACK.
pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    let ctx = Arc::clone(ctx);
    registry.register(
        request_code::CONSUMER_SEND_MSG_BACK,
        processor_fn(move |rc: RequestContext, req: RemotingCommand| {
            let ctx = Arc::clone(&ctx);
            async move {
                let resp = match send_back(&ctx, &req).await {
                    Ok(()) => RemotingCommand::response(response_code::SUCCESS, None),
                    Err((code, remark)) => {
                        static REFUSED: apogee_throttle::LogThrottle =
                            apogee_throttle::LogThrottle::new("send-back refused");
                        apogee_throttle::throttled_warn!(REFUSED, code, peer = %rc.peer_addr(),
                            code, remark = %remark, "send-back refused");
                        RemotingCommand::response(code, remark)
                    }
                };
                Ok(Some(resp))
            }
        }),
    );
}

/// Where a handed-back message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendBackTarget {
    /// `%RETRY%<group>` with this delay level.
    Retry { delay_level: i32 },
    /// `%DLQ%<group>`, no delay.
    Dlq,
}

/// Java's decision: DLQ when the message was already consumed
/// `max_reconsume_times` times or the consumer asked for it (level < 0);
/// otherwise retry with the requested level, or 3 + reconsumeTimes.
pub fn decide_target(
    reconsume_times: i32,
    max_reconsume_times: i32,
    delay_level: i32,
) -> SendBackTarget {
    if reconsume_times >= max_reconsume_times || delay_level < 0 {
        SendBackTarget::Dlq
    } else if delay_level == 0 {
        SendBackTarget::Retry {
            delay_level: 3i32.saturating_add(reconsume_times),
        }
    } else {
        SendBackTarget::Retry { delay_level }
    }
}

type Refusal = (i32, String);

/// Handles one send-back request.
pub async fn send_back(ctx: &BrokerContext, req: &RemotingCommand) -> Result<(), Refusal> {
    // Java's SendMessageProcessor (which serves send-backs) refuses every
    // request on a slave (`rejectRequest`); the client retries on the master.
    if !ctx.config.is_master() {
        return Err((
            response_code::SYSTEM_BUSY,
            "[REJECTREQUEST]system busy, this broker is a slave and does not accept messages"
                .to_owned(),
        ));
    }
    if ctx.is_write_fenced() {
        return Err((
            response_code::SERVICE_NOT_AVAILABLE,
            "this broker is not confirmed as master by the controller group (controller mode)"
                .to_owned(),
        ));
    }
    let h: ConsumerSendMsgBackRequestHeader = req.decode_header().map_err(|e| {
        (
            response_code::SYSTEM_ERROR,
            format!("cannot decode the send-back request header: {e}"),
        )
    })?;
    let Some(group) = ctx.groups.find_or_create(&h.group) else {
        return Err((
            response_code::SUBSCRIPTION_GROUP_NOT_EXIST,
            format!("subscription group not exist, {}", h.group),
        ));
    };
    let broker_perm = ctx.runtime_config.read().broker_permission;
    if !PermName::is_writeable(broker_perm) {
        return Err((
            response_code::NO_PERMISSION,
            format!(
                "the broker[{}] sending message is forbidden",
                ctx.broker_addr
            ),
        ));
    }
    if group.retry_queue_nums <= 0 {
        // Java: the group opted out of retries; the message is dropped.
        return Ok(());
    }
    let retry_topic = topic::retry_topic(&h.group);
    let sys_flag = if h.unit_mode {
        TopicSysFlag::build(false, true).0
    } else {
        0
    };
    let retry_cfg = ctx.topics.get_or_create_system(
        &retry_topic,
        group.retry_queue_nums,
        PermName::PERM_WRITE | PermName::PERM_READ,
        sys_flag,
    );
    if !PermName::is_writeable(retry_cfg.perm) {
        return Err((
            response_code::NO_PERMISSION,
            format!("the topic[{retry_topic}] sending message is forbidden"),
        ));
    }

    let Some(rec) = ctx.store.look_message_by_offset(h.offset) else {
        return Err((
            response_code::SYSTEM_ERROR,
            format!("look message by offset failed, {}", h.offset),
        ));
    };
    let info = stored::check_record(&rec, false).map_err(|e| {
        (
            response_code::SYSTEM_ERROR,
            format!("the message at offset {} is unreadable: {e}", h.offset),
        )
    })?;

    let mut max_reconsume = group.retry_max_times;
    if req.version >= VERSION_WITH_MAX_RECONSUME {
        if let Some(m) = h.max_reconsume_times {
            max_reconsume = m;
        }
    }
    let target = decide_target(info.reconsume_times, max_reconsume, h.delay_level);
    let msg = build_send_back_message(
        ctx,
        &rec,
        &info,
        &h.group,
        &target,
        retry_cfg.write_queue_nums.max(1),
    );
    if target == SendBackTarget::Dlq {
        ctx.topics.get_or_create_system(
            &msg.topic,
            DLQ_NUMS_PER_GROUP,
            PermName::PERM_WRITE | PermName::PERM_READ,
            0,
        );
        tracing::info!(group = %h.group, topic = %msg.topic,
            origin_topic = h.origin_topic.as_deref().unwrap_or(""),
            uniq_key = properties::get(&msg.properties, keys::UNIQ_KEY).unwrap_or(""),
            "message moved to the dead-letter queue");
    }
    match store_message(ctx, msg).await {
        Ok(r) if r.status == apogee_store::PutStatus::Ok => Ok(()),
        Ok(r) => Err((response_code::SYSTEM_ERROR, r.status.as_str().to_owned())),
        Err(e) => Err((
            response_code::SYSTEM_ERROR,
            format!("storing the retry message failed: {e}"),
        )),
    }
}

/// The message to store for a send-back: same body, flag, sysFlag, born
/// time/host and properties, `RETRY_TOPIC` and `ORIGIN_MESSAGE_ID` kept or
/// added, reconsumeTimes + 1, WAIT=false, and DELAY set for a retry (so the
/// delay service parks it) or removed for the DLQ.
pub fn build_send_back_message(
    ctx: &BrokerContext,
    rec: &Bytes,
    info: &stored::RecordInfo<'_>,
    group: &str,
    target: &SendBackTarget,
    retry_queue_nums: i32,
) -> MessageToStore {
    let origin_topic = info
        .property(keys::RETRY_TOPIC)
        .unwrap_or(info.topic)
        .to_owned();
    let origin_id = info
        .property(keys::ORIGIN_MESSAGE_ID)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| info.offset_msg_id());
    let (topic, queue_id, delay) = match target {
        SendBackTarget::Retry { delay_level } => (
            topic::retry_topic(group),
            rand::thread_rng().gen_range(0..retry_queue_nums.max(1)),
            Some(delay_level.to_string()),
        ),
        SendBackTarget::Dlq => (
            topic::dlq_topic(group),
            rand::thread_rng().gen_range(0..DLQ_NUMS_PER_GROUP),
            None,
        ),
    };
    let mut set: Vec<(&str, &str)> = vec![
        (keys::RETRY_TOPIC, &origin_topic),
        (keys::ORIGIN_MESSAGE_ID, &origin_id),
        (keys::WAIT_STORE_MSG_OK, "false"),
    ];
    if let Some(d) = &delay {
        set.push((keys::DELAY_TIME_LEVEL, d));
    } else {
        set.push((keys::DLQ_ORIGIN_TOPIC, &origin_topic));
        set.push((keys::DLQ_ORIGIN_MESSAGE_ID, &origin_id));
    }
    let mut props = String::with_capacity(info.properties.len() + 96);
    for (n, v) in properties::iter(&info.properties) {
        let replaced = set.iter().any(|(k, _)| *k == n);
        // A DLQ copy is never delayed; stale timer properties must not
        // delay a retry either (its DELAY level wins anyway).
        let stale = n == keys::DELAY_TIME_LEVEL
            || n == keys::TIMER_DELIVER_MS
            || n == keys::TIMER_DELAY_SEC
            || n == keys::TIMER_DELAY_MS
            || n == keys::TIMER_OUT_MS
            || n == keys::REAL_TOPIC
            || n == keys::REAL_QUEUE_ID;
        if !replaced && !stale {
            properties::append(&mut props, n, v);
        }
    }
    for (k, v) in &set {
        properties::append(&mut props, k, v);
    }
    let end = info.body_pos + info.body.len();
    let body = if end <= rec.len() {
        rec.slice(info.body_pos..end)
    } else {
        Bytes::copy_from_slice(info.body)
    };
    let tags_code = properties::get(&props, keys::TAGS)
        .map(apogee_protocol::message::tags_hash_code)
        .unwrap_or(0);
    MessageToStore {
        topic,
        queue_id,
        flag: info.flag,
        body,
        properties: props,
        sys_flag: info.sys_flag,
        born_timestamp: info.born_timestamp,
        born_host: info.born_host,
        store_host: ctx.store_host,
        reconsume_times: info.reconsume_times.saturating_add(1),
        prepared_transaction_offset: info.prepared_transaction_offset,
        tags_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_follows_java_rules() {
        assert_eq!(
            decide_target(0, 16, 0),
            SendBackTarget::Retry { delay_level: 3 }
        );
        assert_eq!(
            decide_target(5, 16, 0),
            SendBackTarget::Retry { delay_level: 8 }
        );
        assert_eq!(
            decide_target(5, 16, 2),
            SendBackTarget::Retry { delay_level: 2 }
        );
        assert_eq!(decide_target(16, 16, 0), SendBackTarget::Dlq);
        assert_eq!(decide_target(17, 16, 4), SendBackTarget::Dlq);
        assert_eq!(decide_target(0, 16, -1), SendBackTarget::Dlq);
        assert_eq!(decide_target(0, 0, 0), SendBackTarget::Dlq);
        assert_eq!(
            decide_target(i32::MAX - 1, i32::MAX, 0),
            SendBackTarget::Retry {
                delay_level: i32::MAX
            }
        );
    }
}
