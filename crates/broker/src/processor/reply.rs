//! SEND_REPLY_MESSAGE (324) and SEND_REPLY_MESSAGE_V2 (325): a replier's
//! answer to a request message (RocketMQ's request-reply). The broker pushes
//! the reply to the requester's own connection (PUSH_REPLY_MESSAGE_TO_CLIENT,
//! 326), found by the client id in the reply's `REPLY_TO_CLIENT` property
//! among the producers heartbeating here, and, with `storeReplyMessageEnable`
//! (default true), stores it in its topic as well. As Apache's broker: the
//! answer is SUCCESS only when the requester acknowledged the push; a reply
//! whose requester is gone is logged (once, then counted) and answered
//! SYSTEM_ERROR, stored all the same.

use std::net::SocketAddr;
use std::time::Duration;

use apogee_protocol::body::TopicConfig;
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::send::{
    ReplyMessageRequestHeader, SendMessageRequestHeader, SendMessageResponseHeader,
};
use apogee_protocol::message::{keys, properties};
use apogee_protocol::RemotingCommand;
use apogee_throttle::{throttled_warn, LogThrottle};
use bytes::Bytes;

use super::send::{
    build_single, check_sizes, choose_queue, retry_or_dlq, store_or_reject, Reject, StoreInput,
};
use crate::context::BrokerContext;

/// How long the push waits for the requester's answer (Apache's
/// `Broker2Client.callClient` timeout).
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

static REPLY_NOT_PUSHED: LogThrottle = LogThrottle::new("reply not pushed to its requester");

/// Handles one reply; the header was checked by `msg_check`.
pub(super) async fn send_reply(
    ctx: &BrokerContext,
    peer: SocketAddr,
    h: &SendMessageRequestHeader,
    tc: &TopicConfig,
    body: Bytes,
) -> Result<RemotingCommand, Reject> {
    let props = h.properties.as_deref().unwrap_or("");
    check_sizes(ctx, body.len(), props.len())?;
    let queue_id = choose_queue(h.queue_id, tc);

    let pushed = push(ctx, peer, h, props, &body).await;
    let (code, remark) = match &pushed {
        Ok(()) => (response_code::SUCCESS, None),
        Err(why) => {
            throttled_warn!(REPLY_NOT_PUSHED, (), topic = %h.topic, reason = %why,
                "reply not pushed to its requester");
            (response_code::SYSTEM_ERROR, Some(why.clone()))
        }
    };
    // "0" until stored, so that clients can still decode the answer.
    let mut header = SendMessageResponseHeader {
        msg_id: "0".to_owned(),
        queue_id,
        queue_offset: 0,
        ..Default::default()
    };
    if ctx.config.store_reply_message_enable {
        let dest = retry_or_dlq(ctx, h, queue_id)?;
        let (msg, _uniq) = build_single(
            h,
            tc,
            &dest,
            body,
            peer,
            ctx.store_host,
            &ctx.config.broker_cluster_name,
        );
        // As Apache: a failed store is logged; the answer is the push's.
        match store_or_reject(ctx, StoreInput::One(msg), None).await {
            Ok((r, _)) => {
                header.msg_id = r.msg_id();
                header.queue_offset = r.queue_offset;
            }
            Err(rej) => {
                tracing::warn!(topic = %h.topic, code = rej.code, remark = %rej.remark,
                    "reply message not stored");
            }
        }
    }
    Ok(RemotingCommand::response(code, remark).with_header(&header))
}

/// Pushes the reply to the connection of the client named by its
/// `REPLY_TO_CLIENT` property; the reason when that fails.
async fn push(
    ctx: &BrokerContext,
    peer: SocketAddr,
    h: &SendMessageRequestHeader,
    props: &str,
    body: &Bytes,
) -> Result<(), String> {
    let Some(requester) = properties::get(props, keys::MESSAGE_REPLY_TO_CLIENT) else {
        return Err(format!(
            "the reply has no {} property: it cannot be pushed",
            keys::MESSAGE_REPLY_TO_CLIENT
        ));
    };
    let Some(channel) = ctx.producers.channel_for_client(requester) else {
        return Err(format!(
            "the requester {requester} is not connected to this broker"
        ));
    };
    let mut pushed_props = props.to_owned();
    properties::append(
        &mut pushed_props,
        keys::PUSH_REPLY_TIME,
        &apogee_store::commit_log::now_ms().to_string(),
    );
    let header = ReplyMessageRequestHeader {
        producer_group: h.producer_group.clone(),
        topic: h.topic.clone(),
        default_topic: h.default_topic.clone(),
        default_topic_queue_nums: h.default_topic_queue_nums,
        queue_id: h.queue_id,
        sys_flag: h.sys_flag,
        born_timestamp: h.born_timestamp,
        flag: h.flag,
        properties: Some(pushed_props),
        reconsume_times: h.reconsume_times,
        unit_mode: h.unit_mode.unwrap_or(false),
        born_host: peer.to_string(),
        store_host: ctx.store_host.to_string(),
        store_timestamp: apogee_store::commit_log::now_ms(),
        ..Default::default()
    };
    let cmd = RemotingCommand::request(request_code::PUSH_REPLY_MESSAGE_TO_CLIENT)
        .with_header(&header)
        .with_body(body.clone());
    match channel.invoke(cmd, PUSH_TIMEOUT).await {
        Ok(r) if r.code == response_code::SUCCESS => Ok(()),
        Ok(r) => Err(format!(
            "the requester {requester} answered the push with code {}: {}",
            r.code,
            r.remark.as_deref().unwrap_or("")
        )),
        Err(e) => Err(format!("pushing to the requester {requester} failed: {e}")),
    }
}
