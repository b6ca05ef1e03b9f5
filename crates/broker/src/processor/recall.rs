//! RECALL_MESSAGE (370, RocketMQ 5.3): cancels a timer message before it is
//! due, given the recall handle its send answered with.
//!
//! As Apache's `RecallMessageProcessor`, the broker does not look the
//! message up: it checks the handle (decodable, same topic, this broker,
//! time still ahead and within `timerMaxDelaySec`) and stores a delete
//! marker under the timer topic at the message's own due time. The
//! delivery thread skips the message when it meets the marker in that slot
//! (`schedule.rs`). The marker is a CommitLog record, so a recall is as
//! durable as the send it cancels. A handle of an unknown or already
//! delivered message is answered the same way: unknown is SUCCESS (nothing
//! to find), delivered has a past timestamp (ILLEGAL_OPERATION).

use std::net::SocketAddr;
use std::sync::Arc;

use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PermName;
use apogee_protocol::header::send::{RecallMessageRequestHeader, RecallMessageResponseHeader};
use apogee_protocol::message::keys;
use apogee_protocol::recall::RecallHandle;
use apogee_protocol::RemotingCommand;
use apogee_remoting::ProcessorRegistry;
use apogee_throttle::{throttled_warn, LogThrottle};

use crate::context::BrokerContext;
use crate::processor::send::{canonical_addr, store_or_reject, StoreInput, DEFAULT_REGION};
use crate::schedule::{now_ms, recall_marker};

static RECALL_REFUSED: LogThrottle = LogThrottle::new("recall refused");

/// Apache's remarks, which clients show as the reason.
const NOT_AVAILABLE: &str = "recall failed, broker service not available";

/// Registers RECALL_MESSAGE.
pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    super::register_with(
        registry,
        ctx,
        request_code::RECALL_MESSAGE,
        |ctx, rc, req| async move {
            let peer = rc.peer_addr();
            let mut resp = match recall(&ctx, peer, &req).await {
                Ok(r) => r,
                Err((code, remark)) => {
                    throttled_warn!(RECALL_REFUSED, code, peer = %peer, response = code,
                        remark = %remark, "recall refused");
                    RemotingCommand::response(code, Some(remark))
                }
            };
            resp.set_ext(keys::MSG_REGION, DEFAULT_REGION);
            Some(resp)
        },
    );
}

type Refusal = (i32, String);

fn refuse(code: i32, remark: impl Into<String>) -> Refusal {
    (code, remark.into())
}

/// Apache's checks, in its order, then the marker.
async fn recall(
    ctx: &BrokerContext,
    peer: SocketAddr,
    req: &RemotingCommand,
) -> Result<RemotingCommand, Refusal> {
    let h: RecallMessageRequestHeader = req.decode_header().map_err(|e| {
        refuse(
            response_code::SYSTEM_ERROR,
            format!("bad RECALL_MESSAGE header: {e}"),
        )
    })?;
    if !ctx.config.recall_message_enable {
        return Err(refuse(
            response_code::NO_PERMISSION,
            "recall failed, operation is forbidden (recallMessageEnable=false)",
        ));
    }
    if !ctx.config.is_master() {
        return Err(refuse(response_code::SLAVE_NOT_AVAILABLE, NOT_AVAILABLE));
    }
    if ctx.is_write_fenced() {
        return Err(refuse(response_code::SERVICE_NOT_AVAILABLE, NOT_AVAILABLE));
    }
    let perm = ctx.runtime_config.read().broker_permission;
    if !PermName::is_writeable(perm) && !ctx.config.allow_recall_when_broker_not_writeable {
        return Err(refuse(response_code::SERVICE_NOT_AVAILABLE, NOT_AVAILABLE));
    }
    if ctx.topics.get_shared(&h.topic).is_none() {
        return Err(refuse(
            response_code::TOPIC_NOT_EXIST,
            format!("recall failed, the topic[{}] not exist", h.topic),
        ));
    }
    let handle = RecallHandle::decode(&h.recall_handle)
        .map_err(|e| refuse(response_code::ILLEGAL_OPERATION, e.to_string()))?;
    // The id goes into the marker's properties: refuse what would corrupt
    // them (separators, control characters) or is absurdly long.
    if handle.message_id.is_empty()
        || handle.message_id.len() > 128
        || handle.message_id.chars().any(char::is_control)
    {
        return Err(refuse(
            response_code::ILLEGAL_OPERATION,
            "recall handle is invalid",
        ));
    }
    if h.topic != handle.topic {
        return Err(refuse(
            response_code::ILLEGAL_OPERATION,
            "recall failed, topic not match",
        ));
    }
    if handle.broker_name != ctx.config.broker_name {
        return Err(refuse(response_code::ILLEGAL_OPERATION, NOT_AVAILABLE));
    }
    let now = now_ms();
    let max_ms =
        i64::try_from(ctx.config.timer_max_delay_sec.saturating_mul(1000)).unwrap_or(i64::MAX);
    let time_left = handle
        .timestamp_ms()
        .map_or(-1, |ts| ts.saturating_sub(now));
    if time_left <= 0 || time_left >= max_ms {
        return Err(refuse(
            response_code::ILLEGAL_OPERATION,
            "recall failed, timestamp invalid",
        ));
    }
    let ts = handle.timestamp_ms().unwrap_or(now);
    let marker = recall_marker(
        &handle,
        ts - 1,
        h.producer_group.as_deref(),
        canonical_addr(peer),
        ctx.store_host,
        now,
    );
    // As Apache, a flush or replication timeout still answers SUCCESS: the
    // marker is stored on this master, so the status and HA outcome are not
    // looked at.
    store_or_reject(ctx, StoreInput::One(marker), None)
        .await
        .map_err(|rej| {
            refuse(
                response_code::SYSTEM_ERROR,
                format!("recall failed, execute error: {}", rej.remark),
            )
        })?;
    ctx.schedule.wake();
    tracing::debug!(topic = %handle.topic, msg_id = %handle.message_id, "recall marker stored");
    let resp = RecallMessageResponseHeader {
        msg_id: handle.message_id,
    };
    Ok(RemotingCommand::response(response_code::SUCCESS, None).with_header(&resp))
}
