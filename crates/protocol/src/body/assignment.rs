//! Server-side rebalancing bodies: QUERY_ASSIGNMENT (400) and
//! SET_MESSAGE_REQUEST_MODE (401), and the broker's
//! `messageRequestMode.json` table. A RocketMQ 5 consumer that leaves
//! rebalancing to the broker asks it which queues to read, and whether to
//! PULL them or POP them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::fastjson::lenient;
use super::heartbeat::MessageModel;
use super::MessageQueue;

java_enum! {
    /// `MessageRequestMode`: how a consumer group reads a topic.
    MessageRequestMode default Pull {
        Pull = "PULL",
        Pop = "POP",
    }
}

/// Body of SET_MESSAGE_REQUEST_MODE; also the value stored per (topic,
/// group) in `messageRequestMode.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SetMessageRequestModeRequestBody {
    pub topic: String,
    pub consumer_group: String,
    pub mode: MessageRequestMode,
    /// POP only: how many following clients' queues each client also pops
    /// (0 or less: every client pops every queue).
    #[serde(deserialize_with = "lenient::i32")]
    pub pop_share_queue_num: i32,
}

/// Body of QUERY_ASSIGNMENT.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueryAssignmentRequestBody {
    pub topic: String,
    pub consumer_group: String,
    pub client_id: String,
    /// `AllocateMessageQueueStrategy.getName()`, e.g. `AVG`.
    pub strategy_name: String,
    pub message_model: MessageModel,
}

/// One queue of a QUERY_ASSIGNMENT answer. A queue id of -1 means "any
/// queue of the topic on that broker" (POP with no queue sharing limit).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageQueueAssignment {
    pub message_queue: MessageQueue,
    pub mode: MessageRequestMode,
    pub attachments: BTreeMap<String, String>,
}

/// Response body of QUERY_ASSIGNMENT. `None` (JSON null) tells the client
/// the broker could not decide (unknown route, no consumers): it keeps its
/// current queues; an empty list tells it to drop them all.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QueryAssignmentResponseBody {
    pub message_queue_assignments: Option<Vec<MessageQueueAssignment>>,
}

/// `messageRequestMode.json`: topic -> group -> mode.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageRequestModeWrapper {
    pub message_request_mode_map:
        BTreeMap<String, BTreeMap<String, SetMessageRequestModeRequestBody>>,
}

json_body!(
    SetMessageRequestModeRequestBody,
    QueryAssignmentRequestBody,
    QueryAssignmentResponseBody,
    MessageRequestModeWrapper,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_bodies_decode() {
        // As Java 5.x's fastjson writes them.
        let q = br#"{"clientId":"10.0.0.1@1","consumerGroup":"g","messageModel":"CLUSTERING","strategyName":"AVG","topic":"t"}"#;
        let q = QueryAssignmentRequestBody::decode(q).unwrap();
        assert_eq!(q.topic, "t");
        assert_eq!(q.strategy_name, "AVG");
        assert_eq!(q.message_model, MessageModel::Clustering);

        let s = br#"{"consumerGroup":"g","mode":"POP","popShareQueueNum":2,"topic":"t"}"#;
        let s = SetMessageRequestModeRequestBody::decode(s).unwrap();
        assert_eq!(s.mode, MessageRequestMode::Pop);
        assert_eq!(s.pop_share_queue_num, 2);
        // Non-Java tools send the ordinal.
        let s = SetMessageRequestModeRequestBody::decode(br#"{"mode":1}"#).unwrap();
        assert_eq!(s.mode, MessageRequestMode::Pop);
        assert!(SetMessageRequestModeRequestBody::decode(br#"{"mode":"PUSH"}"#).is_err());
    }

    #[test]
    fn answer_round_trips_and_null_means_undecided() {
        let body = QueryAssignmentResponseBody {
            message_queue_assignments: Some(vec![MessageQueueAssignment {
                message_queue: MessageQueue::new("t", "b", -1),
                mode: MessageRequestMode::Pop,
                attachments: BTreeMap::new(),
            }]),
        };
        let text = String::from_utf8(body.encode()).unwrap();
        assert!(text.contains(r#""mode":"POP""#), "{text}");
        assert!(text.contains(r#""queueId":-1"#), "{text}");
        assert_eq!(
            QueryAssignmentResponseBody::decode(text.as_bytes()).unwrap(),
            body
        );
        let none =
            QueryAssignmentResponseBody::decode(br#"{"messageQueueAssignments":null}"#).unwrap();
        assert_eq!(none.message_queue_assignments, None);
    }
}
