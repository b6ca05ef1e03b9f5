//! POP consumption (Apache RocketMQ 5's server-side consumption): the
//! broker picks the queue, hands out messages with a receipt handle
//! (`extraInfo` / `POP_CK`), and keeps them invisible until they are acked
//! or their invisible time passes; then the revive service puts them back
//! in the group's retry topic (or `%DLQ%group` after `retryMaxTimes`).
//!
//! The state is in the store:
//! * a checkpoint (tag `ck`, Apache's `PopCheckPoint` JSON) and every ack
//!   (tag `ack`, Apache's `AckMsg` JSON) are messages in
//!   `rmq_sys_REVIVE_LOG_<cluster>` on the queue named by `reviveQid`;
//!   under SYNC_FLUSH a pop or ack is answered once its record is flushed;
//! * the pop progress is the group's consume offset on each queue, moved
//!   only after the checkpoint is stored; consume offsets are flushed every
//!   `flushConsumerOffsetInterval`, so at start each group's offset is
//!   raised to the end of its newest checkpoint (`revive::recover_pop_offsets`)
//!   and a kill -9 hands out no popped message as new;
//! * the revive service's progress is the consume offset of
//!   `CID_RMQ_SYS_REVIVE_GROUP` on each revive queue (the oldest open
//!   checkpoint; see `revive`).
//!
//! Orderly POP (`order=true`) writes no checkpoint: see `order`.
//! PEEK_MESSAGE, NOTIFICATION and POLLING_INFO are in `peek`.

pub mod order;
pub mod peek;
pub mod processor;
pub mod revive;

use apogee_protocol::topic::RETRY_GROUP_TOPIC_PREFIX;
use serde::{Deserialize, Serialize};

/// Registers every POP request code served.
pub fn register(
    registry: &apogee_remoting::ProcessorRegistry,
    ctx: &std::sync::Arc<crate::context::BrokerContext>,
) {
    processor::register(registry, ctx);
    peek::register(registry, ctx);
}

/// Tag of checkpoint records in the revive topic (Apache `CK_TAG`).
pub const CK_TAG: &str = "ck";
/// Tag of ack records (Apache `ACK_TAG`).
pub const ACK_TAG: &str = "ack";
/// Tag of batch-ack records (Apache `BATCH_ACK_TAG`).
pub const BATCH_ACK_TAG: &str = "bAck";
/// Group whose consume offsets on the revive topic are the revive progress
/// (Apache `PopAckConstants.REVIVE_GROUP`).
pub const REVIVE_GROUP: &str = "CID_RMQ_SYS_REVIVE_GROUP";
/// Queues of the revive topic (Apache's default `reviveQueueNum`).
pub const REVIVE_QUEUE_NUM: i32 = 8;
/// The revive queue of orderly pops (Apache `POP_ORDER_REVIVE_QUEUE`).
pub const POP_ORDER_REVIVE_QUEUE: i32 = 999;

/// Why a POP request or a revive step failed.
#[derive(Debug, thiserror::Error)]
pub enum PopError {
    #[error(transparent)]
    BadExtraInfo(#[from] BadExtraInfo),
    #[error("storing {what} failed: {source}")]
    Store {
        what: &'static str,
        #[source]
        source: apogee_store::PutError,
    },
    #[error("encoding a revive-topic record failed: {0}")]
    Encode(String),
    #[error("reading {topic}:{queue_id} offset {offset} to revive it failed: {why}")]
    ReviveRead {
        topic: String,
        queue_id: i32,
        offset: i64,
        why: &'static str,
    },
    #[error("the revive scan thread failed: {0}")]
    Scan(String),
    #[error("storing {what} failed: {status}")]
    Put {
        what: &'static str,
        status: &'static str,
    },
}

/// The revive topic of a cluster.
pub fn revive_topic(cluster: &str) -> String {
    format!("{}{cluster}", crate::topic_config::REVIVE_TOPIC_PREFIX)
}

// The receipt-handle format and retry-topic names are shared with clients
// and the gRPC proxy.
pub use apogee_protocol::pop::{
    build_extra_info, retry_flag, retry_topic_v1, retry_topic_v2, BadExtraInfo, ExtraInfo,
};

/// Apache's `PopCheckPoint` JSON (short field names as fastjson writes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckPoint {
    #[serde(rename = "so")]
    pub start_offset: i64,
    #[serde(rename = "pt")]
    pub pop_time: i64,
    #[serde(rename = "it")]
    pub invisible_time: i64,
    #[serde(rename = "bm", default)]
    pub bit_map: i32,
    #[serde(rename = "n")]
    pub num: u8,
    #[serde(rename = "q")]
    pub queue_id: i32,
    #[serde(rename = "t")]
    pub topic: String,
    #[serde(rename = "c")]
    pub cid: String,
    #[serde(rename = "ro", default)]
    pub revive_offset: i64,
    /// Queue-offset differences from `so`, one per message.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub queue_offset_diff: Option<Vec<i32>>,
    #[serde(rename = "bn", default, skip_serializing_if = "Option::is_none")]
    pub broker_name: Option<String>,
    #[serde(rename = "rp", default, skip_serializing_if = "Option::is_none")]
    pub re_put_times: Option<String>,
}

impl CheckPoint {
    /// When the un-acked messages come back.
    pub fn revive_time(&self) -> i64 {
        self.pop_time.saturating_add(self.invisible_time)
    }

    /// Queue offset of the message at `index`.
    pub fn offset_at(&self, index: usize) -> i64 {
        match &self.queue_offset_diff {
            Some(d) if !d.is_empty() => {
                self.start_offset + i64::from(d.get(index).copied().unwrap_or(0))
            }
            _ => self.start_offset + index as i64,
        }
    }

    /// Index of the message at queue offset `offset`, if it is one of this
    /// checkpoint's (Apache `indexOfAck`).
    pub fn index_of(&self, offset: i64) -> Option<usize> {
        let diff = offset.checked_sub(self.start_offset)?;
        if diff < 0 {
            return None;
        }
        match &self.queue_offset_diff {
            Some(d) if !d.is_empty() => d.iter().position(|&x| i64::from(x) == diff),
            _ => (diff < i64::from(self.num)).then_some(diff as usize),
        }
    }
}

/// Apache's `AckMsg` JSON; `BatchAckMsg` adds `aol` (read only here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckMsg {
    #[serde(rename = "ao", alias = "ackOffset", default)]
    pub ack_offset: i64,
    #[serde(rename = "so", alias = "startOffset")]
    pub start_offset: i64,
    #[serde(rename = "c", alias = "consumerGroup")]
    pub consumer_group: String,
    #[serde(rename = "t", alias = "topic")]
    pub topic: String,
    #[serde(rename = "q", alias = "queueId")]
    pub queue_id: i32,
    #[serde(rename = "pt", alias = "popTime")]
    pub pop_time: i64,
    #[serde(rename = "bn", alias = "brokerName", default)]
    pub broker_name: Option<String>,
    #[serde(
        rename = "aol",
        alias = "ackOffsetList",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ack_offset_list: Option<Vec<i64>>,
}

/// The topic a retry topic of `group` was made for (Apache
/// `KeyBuilder.parseNormalTopic`); other topics are returned as they are.
pub fn parse_normal_topic(t: &str, group: &str) -> String {
    let v2 = format!("{RETRY_GROUP_TOPIC_PREFIX}{group}+");
    let v1 = format!("{RETRY_GROUP_TOPIC_PREFIX}{group}_");
    t.strip_prefix(&v2)
        .or_else(|| t.strip_prefix(&v1))
        .unwrap_or(t)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_info_round_trip_and_errors() {
        let s = build_extra_info(5, 1000, 3000, 2, "%RETRY%G_T", "b1", 3, 7);
        assert_eq!(s, "5 1000 3000 2 1 b1 3 7");
        let e = ExtraInfo::parse(&s).unwrap();
        assert_eq!(e.ck_offset, 5);
        assert_eq!(e.queue_offset, Some(7));
        assert_eq!(e.real_topic("T", "G"), "%RETRY%G_T");
        assert_eq!(
            ExtraInfo::parse("5 1 2 3 2 b 1")
                .unwrap()
                .real_topic("T", "G"),
            "%RETRY%G+T"
        );
        for bad in [
            "",
            "x",
            "1 2 3",
            "1 2 3 4 9 b 1",
            "1 2 3 4 0 b q",
            "1 2 3 4 0 b 1 z",
        ] {
            assert!(ExtraInfo::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(retry_flag("T"), "0");
        assert_eq!(retry_flag("%RETRY%G+T"), "2");
    }

    #[test]
    fn checkpoint_json_matches_apache_names() {
        let ck = CheckPoint {
            start_offset: 10,
            pop_time: 1,
            invisible_time: 2,
            bit_map: 0,
            num: 2,
            queue_id: 1,
            topic: "T".into(),
            cid: "G".into(),
            revive_offset: 0,
            queue_offset_diff: Some(vec![0, 3]),
            broker_name: Some("b".into()),
            re_put_times: None,
        };
        let j = serde_json::to_string(&ck).unwrap();
        assert!(j.contains("\"so\":10") && j.contains("\"d\":[0,3]"), "{j}");
        assert_eq!(ck.offset_at(1), 13);
        assert_eq!(ck.index_of(13), Some(1));
        assert_eq!(ck.index_of(12), None);
        let a: AckMsg =
            serde_json::from_str(r#"{"ao":13,"so":10,"c":"G","t":"T","q":1,"pt":1,"bn":"b"}"#)
                .unwrap();
        assert_eq!(a.ack_offset, 13);
    }
}
