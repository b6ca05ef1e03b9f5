//! Request-reply (Java `DefaultMQProducer.request` and
//! `MessageUtil.createReplyMessage`): a request carries a correlation id,
//! the requester's client id and a time to live; the responder sends a
//! reply message to the cluster's reply topic, and the broker pushes it to
//! the requester's connection (PUSH_REPLY_MESSAGE_TO_CLIENT), where it
//! completes the waiting request.

use std::sync::Arc;

use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::ReplyMessageRequestHeader;
use apogee_protocol::message::{keys, properties};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ProcessorRegistry};
use apogee_throttle::{throttled_warn, LogThrottle};
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::{ClientError, Result};
use crate::message::{Message, MessageExt};

/// Requests waiting for their reply, by correlation id.
#[derive(Default)]
pub(crate) struct PendingReplies {
    waiting: dashmap::DashMap<String, oneshot::Sender<MessageExt>>,
}

impl PendingReplies {
    pub(crate) fn wait(&self, correlation_id: &str) -> oneshot::Receiver<MessageExt> {
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(correlation_id.to_string(), tx);
        rx
    }

    pub(crate) fn forget(&self, correlation_id: &str) {
        self.waiting.remove(correlation_id);
    }
}

static LATE_REPLY: LogThrottle = LogThrottle::new("reply for no waiting request");

/// Serves PUSH_REPLY_MESSAGE_TO_CLIENT for `pending`.
pub(crate) fn register(registry: &ProcessorRegistry, pending: Arc<PendingReplies>) {
    registry.register(
        request_code::PUSH_REPLY_MESSAGE_TO_CLIENT,
        processor_fn(move |rc, req: RemotingCommand| {
            let pending = Arc::clone(&pending);
            let broker = rc.peer_addr();
            async move {
                let h: ReplyMessageRequestHeader = match req.decode_header() {
                    Ok(h) => h,
                    Err(e) => {
                        return Ok(Some(RemotingCommand::response(
                            response_code::SYSTEM_ERROR,
                            Some(format!("bad reply header: {e}")),
                        )))
                    }
                };
                let props = h.properties.clone().unwrap_or_default();
                let Some(id) = properties::get(&props, keys::CORRELATION_ID).map(str::to_string)
                else {
                    return Ok(Some(RemotingCommand::response(
                        response_code::SYSTEM_ERROR,
                        Some("reply without CORRELATION_ID".into()),
                    )));
                };
                let mut msg = Message::new(h.topic.clone(), req.body.clone().unwrap_or_default());
                msg.flag = h.flag;
                msg.properties = properties::decode(&props);
                let ext = MessageExt::from_reply(msg, &h);
                match pending.waiting.remove(&id) {
                    Some((_, tx)) => {
                        let _ = tx.send(ext);
                    }
                    None => {
                        throttled_warn!(LATE_REPLY, (), %broker, correlation_id = %id, "a reply came for a request no longer waiting (timed out?)");
                    }
                }
                Ok(Some(RemotingCommand::response(response_code::SUCCESS, None)))
            }
        }),
    );
}

/// The reply to `request` with `body` (Java `MessageUtil.createReplyMessage`):
/// addressed to the cluster's reply topic and to the requesting client.
pub fn create_reply(request: &MessageExt, body: impl Into<Bytes>) -> Result<Message> {
    let p = &request.properties;
    let (Some(cluster), Some(id), Some(to)) = (
        p.get(keys::CLUSTER),
        p.get(keys::CORRELATION_ID),
        p.get(keys::MESSAGE_REPLY_TO_CLIENT),
    ) else {
        return Err(ClientError::InvalidArgument(
            "not a request message: it lacks CLUSTER, CORRELATION_ID or REPLY_TO_CLIENT".into(),
        ));
    };
    let mut reply = Message::new(apogee_protocol::topic::reply_topic(cluster), body);
    reply
        .properties
        .insert(keys::CORRELATION_ID.into(), id.clone());
    reply
        .properties
        .insert(keys::MESSAGE_REPLY_TO_CLIENT.into(), to.clone());
    if let Some(ttl) = p.get(keys::MESSAGE_TTL) {
        reply
            .properties
            .insert(keys::MESSAGE_TTL.into(), ttl.clone());
    }
    reply
        .properties
        .insert(keys::MESSAGE_TYPE.into(), keys::REPLY_MESSAGE_FLAG.into());
    Ok(reply)
}
