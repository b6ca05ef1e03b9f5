//! Producer-side headers: sending (V1 long keys and V2 one-letter keys),
//! replies, transactions, send-back of consumed messages and recall.

use crate::code::request_code;
use crate::command::RemotingCommand;
use crate::error::{ProtocolError, Result};
use crate::header::{CommandHeader, RpcFields};

command_header! {
    /// SEND_MESSAGE (10) and SEND_REPLY_MESSAGE (324): long field names.
    /// `rpc.broker_name` (`bname`) corresponds to V2's `n`.
    pub struct SendMessageRequestHeader : rpc {
        req producer_group: String => "producerGroup",
        req topic: String => "topic",
        /// Template topic for auto-creation (normally `TBW102`).
        req default_topic: String => "defaultTopic",
        req default_topic_queue_nums: i32 => "defaultTopicQueueNums",
        /// Negative: the broker picks a writable queue.
        req queue_id: i32 => "queueId",
        /// Message sysFlag (compression, transaction type).
        req sys_flag: i32 => "sysFlag",
        req born_timestamp: i64 => "bornTimestamp",
        /// User flag, stored verbatim.
        req flag: i32 => "flag",
        /// The properties string (name\u{1}value\u{2}...).
        opt properties: String => "properties",
        opt reconsume_times: i32 => "reconsumeTimes",
        opt unit_mode: bool => "unitMode",
        opt batch: bool => "batch",
        opt max_reconsume_times: i32 => "maxReconsumeTimes",
    }
}

command_header! {
    /// SEND_MESSAGE_V2 (310), SEND_BATCH_MESSAGE (320), SEND_REPLY_MESSAGE_V2
    /// (325): the same fields under one-letter keys. Java's fast decoder reads
    /// only `a`..`n`; `ns`/`nsd`/`oway`/`lo` are kept so that conversion to and
    /// from [`SendMessageRequestHeader`] is lossless.
    pub struct SendMessageRequestHeaderV2 {
        req producer_group: String => "a",
        req topic: String => "b",
        req default_topic: String => "c",
        req default_topic_queue_nums: i32 => "d",
        req queue_id: i32 => "e",
        req sys_flag: i32 => "f",
        req born_timestamp: i64 => "g",
        req flag: i32 => "h",
        opt properties: String => "i",
        opt reconsume_times: i32 => "j",
        opt unit_mode: bool => "k",
        opt max_reconsume_times: i32 => "l",
        opt batch: bool => "m",
        opt broker_name: String => "n",
        opt namespace: String => "ns",
        opt namespaced: bool => "nsd",
        opt oneway: bool => "oway",
        opt logical: bool => "lo",
    }
}

impl From<SendMessageRequestHeaderV2> for SendMessageRequestHeader {
    fn from(v: SendMessageRequestHeaderV2) -> Self {
        SendMessageRequestHeader {
            producer_group: v.producer_group,
            topic: v.topic,
            default_topic: v.default_topic,
            default_topic_queue_nums: v.default_topic_queue_nums,
            queue_id: v.queue_id,
            sys_flag: v.sys_flag,
            born_timestamp: v.born_timestamp,
            flag: v.flag,
            properties: v.properties,
            reconsume_times: v.reconsume_times,
            unit_mode: v.unit_mode,
            batch: v.batch,
            max_reconsume_times: v.max_reconsume_times,
            rpc: RpcFields {
                broker_name: v.broker_name,
                namespace: v.namespace,
                namespaced: v.namespaced,
                oneway: v.oneway,
                logical: v.logical,
            },
        }
    }
}

impl From<SendMessageRequestHeader> for SendMessageRequestHeaderV2 {
    fn from(v: SendMessageRequestHeader) -> Self {
        SendMessageRequestHeaderV2 {
            producer_group: v.producer_group,
            topic: v.topic,
            default_topic: v.default_topic,
            default_topic_queue_nums: v.default_topic_queue_nums,
            queue_id: v.queue_id,
            sys_flag: v.sys_flag,
            born_timestamp: v.born_timestamp,
            flag: v.flag,
            properties: v.properties,
            reconsume_times: v.reconsume_times,
            unit_mode: v.unit_mode,
            max_reconsume_times: v.max_reconsume_times,
            batch: v.batch,
            broker_name: v.rpc.broker_name,
            namespace: v.rpc.namespace,
            namespaced: v.rpc.namespaced,
            oneway: v.rpc.oneway,
            logical: v.rpc.logical,
        }
    }
}

/// The long name of a V2 one-letter key, so errors stay readable.
fn v2_key_label(key: &'static str) -> &'static str {
    match key {
        "a" => "a (producerGroup)",
        "b" => "b (topic)",
        "c" => "c (defaultTopic)",
        "d" => "d (defaultTopicQueueNums)",
        "e" => "e (queueId)",
        "f" => "f (sysFlag)",
        "g" => "g (bornTimestamp)",
        "h" => "h (flag)",
        "i" => "i (properties)",
        "j" => "j (reconsumeTimes)",
        "k" => "k (unitMode)",
        "l" => "l (maxReconsumeTimes)",
        "m" => "m (batch)",
        "n" => "n (brokerName)",
        other => other,
    }
}

impl SendMessageRequestHeaderV2 {
    /// Like [`CommandHeader::read_ext`], but errors name the long field too
    /// (`a (producerGroup)`), which is what a server should put in its remark.
    pub fn read_ext_labelled(ext: &crate::ext_fields::ExtFields) -> Result<Self> {
        Self::read_ext(ext).map_err(|e| match e {
            ProtocolError::MissingField(k) => ProtocolError::MissingField(v2_key_label(k)),
            ProtocolError::InvalidField {
                field,
                value,
                reason,
            } => ProtocolError::InvalidField {
                field: v2_key_label(field),
                value,
                reason,
            },
            other => other,
        })
    }
}

/// The fields of [`SendMessageRequestHeaderV2`] a producer sets on every
/// send, borrowed: written under the same keys and as the same text, with
/// no owned copy of the group, topic and properties per message.
/// `broker_name` and the other optional fields are left out (a producer
/// adds `n` with the target queue).
#[derive(Debug, Clone, Copy)]
pub struct SendMessageRequestHeaderV2Ref<'a> {
    pub producer_group: &'a str,
    pub topic: &'a str,
    pub default_topic: &'a str,
    pub default_topic_queue_nums: i32,
    pub queue_id: i32,
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub flag: i32,
    pub properties: &'a str,
    pub reconsume_times: i32,
    pub unit_mode: bool,
    pub max_reconsume_times: Option<i32>,
    pub batch: bool,
}

impl SendMessageRequestHeaderV2Ref<'_> {
    /// Adds the fields to `ext`, as [`SendMessageRequestHeaderV2`]'s
    /// `write_ext` would for the owned equivalent.
    pub fn write_ext(&self, ext: &mut crate::ext_fields::ExtFields) {
        use crate::header::put;
        ext.insert("a", self.producer_group);
        ext.insert("b", self.topic);
        ext.insert("c", self.default_topic);
        put(ext, "d", &self.default_topic_queue_nums);
        put(ext, "e", &self.queue_id);
        put(ext, "f", &self.sys_flag);
        put(ext, "g", &self.born_timestamp);
        put(ext, "h", &self.flag);
        ext.insert("i", self.properties);
        put(ext, "j", &self.reconsume_times);
        put(ext, "k", &self.unit_mode);
        if let Some(max) = self.max_reconsume_times {
            put(ext, "l", &max);
        }
        put(ext, "m", &self.batch);
    }
}

/// Whether a send-type request code carries the V2 one-letter keys.
pub fn send_code_uses_v2(code: i32) -> bool {
    matches!(
        code,
        request_code::SEND_MESSAGE_V2
            | request_code::SEND_BATCH_MESSAGE
            | request_code::SEND_REPLY_MESSAGE_V2
    )
}

/// Decodes the send header of SEND_MESSAGE / SEND_MESSAGE_V2 /
/// SEND_BATCH_MESSAGE / SEND_REPLY_MESSAGE(_V2), choosing the key set by
/// request code as the Java broker does (310/320/325 → V2, others → V1).
/// Whether the body is a batch is then decided by `batch`, not by the code.
pub fn decode_send_header(cmd: &RemotingCommand) -> Result<SendMessageRequestHeader> {
    if send_code_uses_v2(cmd.code) {
        SendMessageRequestHeaderV2::read_ext_labelled(&cmd.ext_fields).map(Into::into)
    } else {
        SendMessageRequestHeader::read_ext(&cmd.ext_fields)
    }
}

command_header! {
    /// Response to every send code. For a batch `msg_id` holds all offset ids
    /// joined with `,`.
    pub struct SendMessageResponseHeader {
        /// Offset message id (not the client's UNIQ_KEY).
        req msg_id: String => "msgId",
        req queue_id: i32 => "queueId",
        req queue_offset: i64 => "queueOffset",
        /// The message's UNIQ_KEY.
        opt transaction_id: String => "transactionId",
        opt batch_uniq_id: String => "batchUniqId",
        opt recall_handle: String => "recallHandle",
        /// Not a Java header field: the Java broker adds `MSG_REGION`.
        opt msg_region: String => "MSG_REGION",
        /// Not a Java header field: the Java broker adds `TRACE_ON`.
        opt trace_on: String => "TRACE_ON",
    }
}

command_header! {
    /// PUSH_REPLY_MESSAGE_TO_CLIENT (326), broker to client.
    pub struct ReplyMessageRequestHeader : rpc {
        req producer_group: String => "producerGroup",
        req topic: String => "topic",
        req default_topic: String => "defaultTopic",
        req default_topic_queue_nums: i32 => "defaultTopicQueueNums",
        req queue_id: i32 => "queueId",
        req sys_flag: i32 => "sysFlag",
        req born_timestamp: i64 => "bornTimestamp",
        req flag: i32 => "flag",
        opt properties: String => "properties",
        opt reconsume_times: i32 => "reconsumeTimes",
        def unit_mode: bool = false => "unitMode",
        /// `ip:port`.
        req born_host: String => "bornHost",
        /// `ip:port`.
        req store_host: String => "storeHost",
        req store_timestamp: i64 => "storeTimestamp",
    }
}

command_header! {
    /// CONSUMER_SEND_MSG_BACK (36): a consumer returns a message for retry.
    pub struct ConsumerSendMsgBackRequestHeader : rpc {
        /// Commit-log offset of the consumed message.
        req offset: i64 => "offset",
        req group: String => "group",
        /// 0: broker chooses (3 + reconsumeTimes); -1: straight to DLQ.
        req delay_level: i32 => "delayLevel",
        opt origin_msg_id: String => "originMsgId",
        opt origin_topic: String => "originTopic",
        def unit_mode: bool = false => "unitMode",
        opt max_reconsume_times: i32 => "maxReconsumeTimes",
    }
}

command_header! {
    /// END_TRANSACTION (37).
    pub struct EndTransactionRequestHeader : rpc {
        opt topic: String => "topic",
        req producer_group: String => "producerGroup",
        /// Queue offset returned by the half-message send.
        req tran_state_table_offset: i64 => "tranStateTableOffset",
        /// Commit-log offset of the half message.
        req commit_log_offset: i64 => "commitLogOffset",
        /// 0 unknown, 8 commit, 12 rollback (message sysFlag values).
        req commit_or_rollback: i32 => "commitOrRollback",
        def from_transaction_check: bool = false => "fromTransactionCheck",
        /// The message's UNIQ_KEY.
        req msg_id: String => "msgId",
        opt transaction_id: String => "transactionId",
    }
}

command_header! {
    /// Response to END_TRANSACTION (no fields).
    pub struct EndTransactionResponseHeader {}
}

command_header! {
    /// CHECK_TRANSACTION_STATE (39), broker to producer.
    pub struct CheckTransactionStateRequestHeader : rpc {
        /// The real topic of the half message.
        opt topic: String => "topic",
        req tran_state_table_offset: i64 => "tranStateTableOffset",
        req commit_log_offset: i64 => "commitLogOffset",
        opt msg_id: String => "msgId",
        opt transaction_id: String => "transactionId",
        opt offset_msg_id: String => "offsetMsgId",
    }
}

command_header! {
    /// RECALL_MESSAGE (370, 5.3+ timer messages).
    pub struct RecallMessageRequestHeader : rpc {
        opt producer_group: String => "producerGroup",
        req topic: String => "topic",
        req recall_handle: String => "recallHandle",
    }
}

command_header! {
    /// Response to RECALL_MESSAGE.
    pub struct RecallMessageResponseHeader {
        req msg_id: String => "msgId",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext_fields::ExtFields;

    #[test]
    fn borrowed_v2_header_writes_what_the_owned_one_writes() {
        for (batch, max) in [(false, None), (true, Some(16))] {
            let props = "TAGS\u{1}t\u{2}KEYS\u{1}k \"q\"\u{2}";
            let borrowed = SendMessageRequestHeaderV2Ref {
                producer_group: "PG",
                topic: "TopicA",
                default_topic: "TBW102",
                default_topic_queue_nums: 4,
                queue_id: 3,
                sys_flag: 1,
                born_timestamp: 1_700_000_000_123,
                flag: 7,
                properties: props,
                reconsume_times: 2,
                unit_mode: false,
                max_reconsume_times: max,
                batch,
            };
            let owned = SendMessageRequestHeaderV2 {
                producer_group: "PG".into(),
                topic: "TopicA".into(),
                default_topic: "TBW102".into(),
                default_topic_queue_nums: 4,
                queue_id: 3,
                sys_flag: 1,
                born_timestamp: 1_700_000_000_123,
                flag: 7,
                properties: Some(props.into()),
                reconsume_times: Some(2),
                unit_mode: Some(false),
                max_reconsume_times: max,
                batch: Some(batch),
                ..Default::default()
            };
            let (mut a, mut b) = (ExtFields::new(), ExtFields::new());
            borrowed.write_ext(&mut a);
            owned.write_ext(&mut b);
            assert_eq!(a.iter().collect::<Vec<_>>(), b.iter().collect::<Vec<_>>());
            assert_eq!(SendMessageRequestHeaderV2::read_ext(&a).unwrap(), owned);
        }
    }
}
