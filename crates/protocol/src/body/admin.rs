//! Consumer-coordination and admin bodies: connections, batch locks,
//! consume/topic statistics (maps keyed by `MessageQueue`), offset resets,
//! group configs, consumer running info and small list bodies.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::fastjson::{lenient, mq_key_map};
use super::heartbeat::{ConsumeFromWhere, ConsumeType, MessageModel, SubscriptionData};
use super::topic::DataVersion;
use super::MessageQueue;
use crate::command::LanguageCode;

/// One client connection as listed by CONSUMER/PRODUCER connection queries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Connection {
    pub client_id: String,
    /// `ip:port` of the TCP peer.
    pub client_addr: String,
    #[serde(with = "language_serde")]
    pub language: LanguageCode,
    #[serde(deserialize_with = "lenient::i32")]
    pub version: i32,
}

/// `LanguageCode` as a body field: written as the Java name, read from a
/// name or a numeric code.
mod language_serde {
    use super::*;

    pub fn serialize<S: Serializer>(l: &LanguageCode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(l.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LanguageCode, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) => match s.trim().parse::<u8>() {
                Ok(code) => LanguageCode::from_code(code),
                Err(_) => LanguageCode::from_name(s.trim()),
            },
            Value::Number(n) => n
                .as_u64()
                .and_then(|c| u8::try_from(c).ok())
                .map(LanguageCode::from_code)
                .unwrap_or(LanguageCode::Other),
            _ => LanguageCode::Other,
        })
    }
}

/// Body of GET_CONSUMER_CONNECTION_LIST (203).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerConnection {
    pub connection_set: Vec<Connection>,
    /// topic -> subscription
    pub subscription_table: BTreeMap<String, SubscriptionData>,
    pub consume_type: ConsumeType,
    pub message_model: MessageModel,
    pub consume_from_where: ConsumeFromWhere,
}

/// Body of GET_PRODUCER_CONNECTION_LIST (204).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProducerConnection {
    pub connection_set: Vec<Connection>,
}

/// Body of LOCK_BATCH_MQ (41); UNLOCK_BATCH_MQ (42) has the same keys.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LockBatchRequestBody {
    pub consumer_group: String,
    pub client_id: String,
    /// Absent from older and non-Java clients: false.
    #[serde(deserialize_with = "lenient::bool")]
    pub only_this_broker: bool,
    pub mq_set: BTreeSet<MessageQueue>,
}

/// Body of UNLOCK_BATCH_MQ (42): same keys as the lock request.
pub type UnlockBatchRequestBody = LockBatchRequestBody;

/// Response body of LOCK_BATCH_MQ: the queues now locked by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LockBatchResponseBody {
    #[serde(rename = "lockOKMQSet")]
    pub lock_ok_mq_set: BTreeSet<MessageQueue>,
}

/// Response body of GET_CONSUMER_LIST_BY_GROUP.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GetConsumerListByGroupResponseBody {
    pub consumer_id_list: Vec<String>,
}

/// Offsets of one queue for one consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OffsetWrapper {
    #[serde(deserialize_with = "lenient::i64")]
    pub broker_offset: i64,
    #[serde(deserialize_with = "lenient::i64")]
    pub consumer_offset: i64,
    #[serde(deserialize_with = "lenient::i64")]
    pub pull_offset: i64,
    #[serde(deserialize_with = "lenient::i64")]
    pub last_timestamp: i64,
    /// Apogee's addition (absent from Apache's body, ignored by its
    /// tools): messages popped (POP) but neither acked nor revived yet.
    #[serde(deserialize_with = "lenient::i64", skip_serializing_if = "is_zero")]
    pub pop_inflight: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Body of GET_CONSUME_STATS (208); `offsetTable` uses object keys.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumeStats {
    #[serde(with = "mq_key_map")]
    pub offset_table: BTreeMap<MessageQueue, OffsetWrapper>,
    #[serde(deserialize_with = "lenient::f64")]
    pub consume_tps: f64,
}

/// Min/max offsets of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicOffset {
    #[serde(deserialize_with = "lenient::i64")]
    pub min_offset: i64,
    #[serde(deserialize_with = "lenient::i64")]
    pub max_offset: i64,
    #[serde(deserialize_with = "lenient::i64")]
    pub last_update_timestamp: i64,
}

/// Body of GET_TOPIC_STATS_INFO (202); `offsetTable` uses object keys.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicStatsTable {
    #[serde(with = "mq_key_map")]
    pub offset_table: BTreeMap<MessageQueue, TopicOffset>,
    /// Only in some 5.x versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_put_tps: Option<f64>,
}

/// Body of RESET_CONSUMER_CLIENT_OFFSET (220) / INVOKE_BROKER_TO_RESET_OFFSET
/// (222) responses: queue -> offset, with object keys.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResetOffsetBody {
    #[serde(with = "mq_key_map")]
    pub offset_table: BTreeMap<MessageQueue, i64>,
}

/// One entry of [`ResetOffsetBodyForC`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageQueueForC {
    pub topic: String,
    pub broker_name: String,
    #[serde(deserialize_with = "lenient::i32")]
    pub queue_id: i32,
    #[serde(deserialize_with = "lenient::i64")]
    pub offset: i64,
}

/// The list form of a reset-offset body, the only one rocketmq-client-cpp parses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ResetOffsetBodyForC {
    pub offset_table: Vec<MessageQueueForC>,
}

impl From<&ResetOffsetBody> for ResetOffsetBodyForC {
    fn from(b: &ResetOffsetBody) -> Self {
        ResetOffsetBodyForC {
            offset_table: b
                .offset_table
                .iter()
                .map(|(mq, off)| MessageQueueForC {
                    topic: mq.topic.clone(),
                    broker_name: mq.broker_name.clone(),
                    queue_id: mq.queue_id,
                    offset: *off,
                })
                .collect(),
        }
    }
}

/// `GroupList`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GroupList {
    pub group_list: BTreeSet<String>,
}

/// A consumer group's broker-side configuration (body of
/// UPDATE_AND_CREATE_SUBSCRIPTIONGROUP, 200). 5.x-only nested objects
/// (`groupRetryPolicy`, `subscriptionDataSet`) are kept opaque.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionGroupConfig {
    pub group_name: String,
    #[serde(deserialize_with = "lenient::bool")]
    pub consume_enable: bool,
    #[serde(deserialize_with = "lenient::bool")]
    pub consume_from_min_enable: bool,
    #[serde(deserialize_with = "lenient::bool")]
    pub consume_broadcast_enable: bool,
    #[serde(deserialize_with = "lenient::bool")]
    pub consume_message_orderly: bool,
    #[serde(deserialize_with = "lenient::i32")]
    pub retry_queue_nums: i32,
    #[serde(deserialize_with = "lenient::i32")]
    pub retry_max_times: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_retry_policy: Option<Value>,
    #[serde(deserialize_with = "lenient::i64")]
    pub broker_id: i64,
    #[serde(deserialize_with = "lenient::i64")]
    pub which_broker_when_consume_slowly: i64,
    #[serde(deserialize_with = "lenient::bool")]
    pub notify_consumer_ids_changed_enable: bool,
    #[serde(deserialize_with = "lenient::i32")]
    pub group_sys_flag: i32,
    #[serde(deserialize_with = "lenient::i32")]
    pub consume_timeout_minute: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_data_set: Option<Value>,
    pub attributes: BTreeMap<String, String>,
}

impl Default for SubscriptionGroupConfig {
    /// Java defaults (reference 5.4).
    fn default() -> Self {
        SubscriptionGroupConfig {
            group_name: String::new(),
            consume_enable: true,
            consume_from_min_enable: true,
            consume_broadcast_enable: true,
            consume_message_orderly: false,
            retry_queue_nums: 1,
            retry_max_times: 16,
            group_retry_policy: None,
            broker_id: 0,
            which_broker_when_consume_slowly: 1,
            notify_consumer_ids_changed_enable: true,
            group_sys_flag: 0,
            consume_timeout_minute: 15,
            subscription_data_set: None,
            attributes: BTreeMap::new(),
        }
    }
}

impl SubscriptionGroupConfig {
    pub fn new(group_name: impl Into<String>) -> Self {
        SubscriptionGroupConfig {
            group_name: group_name.into(),
            ..Default::default()
        }
    }
}

/// Body of GET_ALL_SUBSCRIPTIONGROUP_CONFIG (201).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionGroupWrapper {
    pub subscription_group_table: BTreeMap<String, SubscriptionGroupConfig>,
    /// group -> topic -> forbidden bits
    pub forbidden_table: BTreeMap<String, BTreeMap<String, i32>>,
    pub data_version: DataVersion,
}

/// Body a client returns for GET_CONSUMER_RUNNING_INFO (307). Kept
/// permissive: brokers only relay it, so the nested per-queue and status
/// objects stay opaque JSON.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerRunningInfo {
    /// `java.util.Properties`; values are normally strings.
    pub properties: BTreeMap<String, Value>,
    pub subscription_set: Vec<SubscriptionData>,
    /// queue -> ProcessQueueInfo
    #[serde(with = "mq_key_map")]
    pub mq_table: BTreeMap<MessageQueue, Value>,
    /// queue -> PopProcessQueueInfo
    #[serde(with = "mq_key_map")]
    pub mq_pop_table: BTreeMap<MessageQueue, Value>,
    /// topic -> ConsumeStatus
    pub status_table: BTreeMap<String, Value>,
    pub user_consumer_info: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jstack: Option<String>,
}

java_enum! {
    /// `CMResult`: outcome of CONSUME_MESSAGE_DIRECTLY.
    CMResult default CrSuccess {
        CrSuccess = "CR_SUCCESS",
        CrLater = "CR_LATER",
        CrRollback = "CR_ROLLBACK",
        CrCommit = "CR_COMMIT",
        CrThrowException = "CR_THROW_EXCEPTION",
        CrReturnNull = "CR_RETURN_NULL",
    }
}

/// Body a client returns for CONSUME_MESSAGE_DIRECTLY (309).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumeMessageDirectlyResult {
    #[serde(deserialize_with = "lenient::bool")]
    pub order: bool,
    #[serde(deserialize_with = "lenient::bool")]
    pub auto_commit: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consume_result: Option<CMResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remark: Option<String>,
    /// Java's spelling ("Mills").
    #[serde(deserialize_with = "lenient::i64")]
    pub spent_time_mills: i64,
}

impl Default for ConsumeMessageDirectlyResult {
    fn default() -> Self {
        ConsumeMessageDirectlyResult {
            order: false,
            auto_commit: true,
            consume_result: None,
            remark: None,
            spent_time_mills: 0,
        }
    }
}

/// Body of CHECK_CLIENT_CONFIG (46).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CheckClientRequestBody {
    pub client_id: String,
    pub group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_data: Option<SubscriptionData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One queue's time span in [`QueryConsumeTimeSpanBody`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueueTimeSpan {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_queue: Option<MessageQueue>,
    #[serde(deserialize_with = "lenient::i64")]
    pub min_time_stamp: i64,
    #[serde(deserialize_with = "lenient::i64")]
    pub max_time_stamp: i64,
    #[serde(deserialize_with = "lenient::i64")]
    pub consume_time_stamp: i64,
    #[serde(deserialize_with = "lenient::i64")]
    pub delay_time: i64,
}

/// Body of QUERY_CONSUME_TIME_SPAN (303).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueryConsumeTimeSpanBody {
    pub consume_time_span_set: Vec<QueueTimeSpan>,
}

json_body!(
    Connection,
    ConsumerConnection,
    ProducerConnection,
    LockBatchRequestBody,
    LockBatchResponseBody,
    GetConsumerListByGroupResponseBody,
    OffsetWrapper,
    ConsumeStats,
    TopicOffset,
    TopicStatsTable,
    ResetOffsetBody,
    MessageQueueForC,
    ResetOffsetBodyForC,
    GroupList,
    SubscriptionGroupConfig,
    SubscriptionGroupWrapper,
    ConsumerRunningInfo,
    ConsumeMessageDirectlyResult,
    CheckClientRequestBody,
    QueueTimeSpan,
    QueryConsumeTimeSpanBody,
);
