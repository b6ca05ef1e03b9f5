//! Admin calls the broker relays to a consumer's connection:
//! GET_CONSUMER_RUNNING_INFO (307) and CONSUME_MESSAGE_DIRECTLY (309) go to
//! one client and its answer is returned as is;
//! INVOKE_BROKER_TO_GET_CONSUMER_STATUS (223) asks every client of a group
//! (GET_CONSUMER_STATUS_FROM_CLIENT, 221) and merges the answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::body::fastjson::{self, mq_key_map, Dialect};
use apogee_protocol::body::MessageQueue;
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{
    ConsumeMessageDirectlyResultRequestHeader, GetConsumerRunningInfoRequestHeader,
    GetConsumerStatusRequestHeader,
};
use apogee_protocol::message::id::decode_offset_msg_id;
use apogee_protocol::RemotingCommand;
use apogee_remoting::RemotingError;
use serde::{Deserialize, Serialize};

use super::{bad_header, fail, ok, VERSION_V3_0_7_SNAPSHOT, VERSION_V3_1_8_SNAPSHOT};
use crate::context::BrokerContext;

/// How long the broker waits for a client it called (Java `callClient`).
const CALL_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-client wait of INVOKE_BROKER_TO_GET_CONSUMER_STATUS (Java: 5 s).
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `code` with the admin request's fields and body to the consumer
/// `client_id` of `group` and relays its answer (Java `callConsumer`).
async fn call_consumer(
    ctx: &BrokerContext,
    code: i32,
    req: RemotingCommand,
    group: &str,
    client_id: &str,
) -> RemotingCommand {
    let Some(info) = ctx.consumers.find_channel(group, client_id) else {
        return fail(
            response_code::SYSTEM_ERROR,
            format!("The Consumer <{group}> <{client_id}> not online"),
        );
    };
    if info.version < VERSION_V3_1_8_SNAPSHOT {
        return fail(
            response_code::SYSTEM_ERROR,
            format!(
                "The Consumer <{client_id}> Version <{}> too low to finish, please upgrade it to V3_1_8_SNAPSHOT",
                info.version
            ),
        );
    }
    let mut out = RemotingCommand::request(code);
    out.ext_fields = req.ext_fields;
    out.body = req.body;
    match info.channel.invoke(out, CALL_CLIENT_TIMEOUT).await {
        Ok(answer) => {
            let mut resp = RemotingCommand::response(answer.code, answer.remark);
            resp.ext_fields = answer.ext_fields;
            resp.body = answer.body;
            resp
        }
        Err(RemotingError::Timeout { .. }) => fail(
            response_code::CONSUME_MSG_TIMEOUT,
            format!(
                "consumer <{group}> <{client_id}> Timeout: no answer within {} ms",
                CALL_CLIENT_TIMEOUT.as_millis()
            ),
        ),
        Err(e) => fail(
            response_code::SYSTEM_ERROR,
            format!("invoke consumer <{group}> <{client_id}> Exception: {e}"),
        ),
    }
}

pub(super) async fn get_consumer_running_info(
    ctx: &Arc<BrokerContext>,
    req: RemotingCommand,
) -> RemotingCommand {
    let h: GetConsumerRunningInfoRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(&req, e),
    };
    call_consumer(
        ctx,
        request_code::GET_CONSUMER_RUNNING_INFO,
        req,
        &h.consumer_group,
        &h.client_id,
    )
    .await
}

pub(super) async fn consume_message_directly(
    ctx: &Arc<BrokerContext>,
    mut req: RemotingCommand,
) -> RemotingCommand {
    let h: ConsumeMessageDirectlyResultRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(&req, e),
    };
    let Some(client_id) = h.client_id.as_deref().filter(|c| !c.is_empty()) else {
        return fail(
            response_code::SYSTEM_ERROR,
            "CONSUME_MESSAGE_DIRECTLY needs the clientId of the consumer to call",
        );
    };
    req.set_ext("brokerName", ctx.config.broker_name.clone());
    if let Some(t) = h.topic.as_deref().and_then(|t| ctx.topics.get(t)) {
        req.set_ext("topicSysFlag", t.topic_sys_flag.to_string());
    }
    if let Some(g) = ctx.groups.get(&h.consumer_group) {
        req.set_ext("groupSysFlag", g.group_sys_flag.to_string());
    }
    let msg_id = h.msg_id.as_deref().unwrap_or("");
    let Ok((_, offset)) = decode_offset_msg_id(msg_id) else {
        return fail(
            response_code::SYSTEM_ERROR,
            format!("msgId {msg_id:?} is not an offset message id (32 or 56 hex characters)"),
        );
    };
    let store = Arc::clone(&ctx.store);
    let rec = tokio::task::spawn_blocking(move || store.look_message_by_offset(offset))
        .await
        .ok()
        .flatten();
    let Some(rec) = rec else {
        return fail(
            response_code::SYSTEM_ERROR,
            format!("can not find message {msg_id} (CommitLog offset {offset}) on this broker"),
        );
    };
    req.body = Some(rec);
    let client_id = client_id.to_owned();
    call_consumer(
        ctx,
        request_code::CONSUME_MESSAGE_DIRECTLY,
        req,
        &h.consumer_group,
        &client_id,
    )
    .await
}

/// queue -> offset, object keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
struct MqOffsets(#[serde(with = "mq_key_map")] BTreeMap<MessageQueue, i64>);

/// `GetConsumerStatusBody`: one client's answer (`messageQueueTable`) or
/// the merged answer of a group (`consumerTable`, client id -> offsets).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct GetConsumerStatusBody {
    #[serde(with = "mq_key_map")]
    message_queue_table: BTreeMap<MessageQueue, i64>,
    consumer_table: BTreeMap<String, MqOffsets>,
}

pub(super) async fn get_consumer_status(
    ctx: &Arc<BrokerContext>,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: GetConsumerStatusRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let channels = ctx
        .consumers
        .group_info(&h.group)
        .map(|g| g.channels)
        .unwrap_or_default();
    if channels.is_empty() {
        return fail(
            response_code::SYSTEM_ERROR,
            format!(
                "No Any Consumer online in the consumer group: [{}]",
                h.group
            ),
        );
    }
    let only = h.client_addr.as_deref().filter(|c| !c.trim().is_empty());
    let ask = GetConsumerStatusRequestHeader {
        topic: h.topic.clone(),
        group: h.group.clone(),
        ..Default::default()
    };
    let mut merged = GetConsumerStatusBody::default();
    for ch in channels
        .iter()
        .filter(|c| only.is_none_or(|id| id == c.client_id))
    {
        if ch.version < VERSION_V3_0_7_SNAPSHOT {
            return fail(
                response_code::SYSTEM_ERROR,
                format!(
                    "the client does not support this feature. version={}",
                    ch.version
                ),
            );
        }
        let cmd = RemotingCommand::request(request_code::GET_CONSUMER_STATUS_FROM_CLIENT)
            .with_header(&ask);
        match ch.channel.invoke(cmd, STATUS_TIMEOUT).await {
            Ok(answer) if answer.code == response_code::SUCCESS => {
                let Some(body) = answer.body.as_deref() else {
                    continue;
                };
                match fastjson::from_slice::<GetConsumerStatusBody>(body) {
                    Ok(b) => {
                        merged
                            .consumer_table
                            .insert(ch.client_id.clone(), MqOffsets(b.message_queue_table));
                    }
                    Err(e) => {
                        tracing::warn!(client = %ch.client_id, "bad consumer status body: {e}")
                    }
                }
            }
            Ok(answer) => {
                tracing::warn!(client = %ch.client_id, code = answer.code, "consumer status refused")
            }
            Err(e) => tracing::warn!(client = %ch.client_id, "consumer status call failed: {e}"),
        }
    }
    ok().with_body(fastjson::to_vec(&merged, Dialect::Fastjson))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_status_body_uses_object_keys_and_round_trips() {
        let mq = MessageQueue::new("T", "broker-a", 1);
        let mut b = GetConsumerStatusBody::default();
        b.consumer_table
            .insert("c1".into(), MqOffsets([(mq.clone(), 7)].into()));
        let json = String::from_utf8(fastjson::to_vec(&b, Dialect::Fastjson)).unwrap();
        assert!(
            json.contains(r#""c1":{{"brokerName":"broker-a","queueId":1,"topic":"T"}:7}"#),
            "{json}"
        );
        let back: GetConsumerStatusBody = fastjson::from_slice(json.as_bytes()).unwrap();
        assert_eq!(back, b);
    }
}
