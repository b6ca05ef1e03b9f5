//! POP receipt handles ("extraInfo", the `POP_CK` property) and the offset
//! infos of a POP_MESSAGE answer: the text formats broker, clients and the
//! gRPC proxy must agree on (Apache's `ExtraInfoUtil`).
//!
//! A handle is `ckOffset popTime invisibleTime reviveQid retryFlag
//! brokerName queueId queueOffset`, space separated; the retry flag says
//! which topic the message was really popped from: `0` the topic itself,
//! `1` the group's v1 retry topic `%RETRY%group_topic`, `2` the v2 one
//! `%RETRY%group+topic`.

use std::collections::HashMap;

use crate::topic::RETRY_GROUP_TOPIC_PREFIX;

/// Apache `KeyBuilder.buildPopRetryTopicV1`: `%RETRY%group_topic`.
pub fn retry_topic_v1(topic: &str, group: &str) -> String {
    format!("{RETRY_GROUP_TOPIC_PREFIX}{group}_{topic}")
}

/// Apache `KeyBuilder.buildPopRetryTopicV2`: `%RETRY%group+topic`.
pub fn retry_topic_v2(topic: &str, group: &str) -> String {
    format!("{RETRY_GROUP_TOPIC_PREFIX}{group}+{topic}")
}

/// The retry flag of a topic a message was popped from.
pub fn retry_flag(topic: &str) -> &'static str {
    if !topic.starts_with(RETRY_GROUP_TOPIC_PREFIX) {
        "0"
    } else if topic.contains('+') {
        "2"
    } else {
        "1"
    }
}

/// The topic a POP retry topic belongs to (`%RETRY%group+topic` or
/// `%RETRY%group_topic` -> `topic`); any other topic is returned as is.
pub fn normal_topic<'a>(topic: &'a str, group: &str) -> &'a str {
    let Some(rest) = topic.strip_prefix(RETRY_GROUP_TOPIC_PREFIX) else {
        return topic;
    };
    let Some(rest) = rest.strip_prefix(group) else {
        return topic;
    };
    rest.strip_prefix('+')
        .or_else(|| rest.strip_prefix('_'))
        .filter(|t| !t.is_empty())
        .unwrap_or(topic)
}

/// Why a receipt handle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed receipt handle {handle:?}: {why}")]
pub struct BadExtraInfo {
    /// The handle, cut to 200 characters.
    pub handle: String,
    pub why: &'static str,
}

/// A parsed receipt handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraInfo<'a> {
    /// Queue offset of the checkpoint (the batch's first message).
    pub ck_offset: i64,
    pub pop_time: i64,
    pub invisible_time: i64,
    pub revive_qid: i32,
    pub retry: &'a str,
    pub broker_name: &'a str,
    pub queue_id: i32,
    /// Absent in handles from old brokers.
    pub queue_offset: Option<i64>,
}

impl<'a> ExtraInfo<'a> {
    /// Parses a receipt handle; every field is checked, nothing panics.
    pub fn parse(s: &'a str) -> Result<Self, BadExtraInfo> {
        let bad = |why| BadExtraInfo {
            handle: s.chars().take(200).collect(),
            why,
        };
        let mut it = s.split(' ');
        let mut next = |what| it.next().filter(|f| !f.is_empty()).ok_or_else(|| bad(what));
        let ck_offset = next("no checkpoint offset")?
            .parse()
            .map_err(|_| bad("checkpoint offset is not a number"))?;
        let pop_time = next("no pop time")?
            .parse()
            .map_err(|_| bad("pop time is not a number"))?;
        let invisible_time = next("no invisible time")?
            .parse()
            .map_err(|_| bad("invisible time is not a number"))?;
        let revive_qid = next("no revive queue id")?
            .parse()
            .map_err(|_| bad("revive queue id is not a number"))?;
        let retry = next("no retry flag")?;
        if !matches!(retry, "0" | "1" | "2") {
            return Err(bad("retry flag is not 0, 1 or 2"));
        }
        let broker_name = next("no broker name")?;
        let queue_id = next("no queue id")?
            .parse()
            .map_err(|_| bad("queue id is not a number"))?;
        let queue_offset = match it.next() {
            None => None,
            Some(o) => Some(o.parse().map_err(|_| bad("queue offset is not a number"))?),
        };
        Ok(ExtraInfo {
            ck_offset,
            pop_time,
            invisible_time,
            revive_qid,
            retry,
            broker_name,
            queue_id,
            queue_offset,
        })
    }

    /// The topic the message was popped from (the topic itself, or one of
    /// the group's retry topics).
    pub fn real_topic(&self, topic: &str, group: &str) -> String {
        match self.retry {
            "1" => retry_topic_v1(topic, group),
            "2" => retry_topic_v2(topic, group),
            _ => topic.to_owned(),
        }
    }
}

/// Builds a receipt handle (Apache `ExtraInfoUtil.buildExtraInfo`);
/// `topic` is the topic the message was popped from.
#[allow(clippy::too_many_arguments)]
pub fn build_extra_info(
    ck_offset: i64,
    pop_time: i64,
    invisible_time: i64,
    revive_qid: i32,
    topic: &str,
    broker_name: &str,
    queue_id: i32,
    queue_offset: i64,
) -> String {
    format!(
        "{ck_offset} {pop_time} {invisible_time} {revive_qid} {} {broker_name} {queue_id} {queue_offset}",
        retry_flag(topic)
    )
}

/// Parses a POP answer's `startOffsetInfo` (`flag queueId offset` entries
/// joined by `;`) into (retry flag, queue id) -> checkpoint offset.
/// Malformed entries are skipped: a message whose queue is missing gets no
/// handle and its caller reports it.
pub fn parse_start_offset_info(s: &str) -> HashMap<(String, i32), i64> {
    s.split(';')
        .filter_map(|e| {
            let mut f = e.split(' ');
            let flag = f.next()?;
            let qid = f.next()?.parse().ok()?;
            let offset = f.next()?.parse().ok()?;
            Some(((flag.to_string(), qid), offset))
        })
        .collect()
}

/// One entry of a BATCH_ACK_MESSAGE body (Apache `BatchAck`): the offsets
/// of one checkpoint (one pop of one queue) acked at once, as a bit set
/// relative to the checkpoint's start offset. Field names are Apache's
/// short JSON names; the long ones are accepted too.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchAck {
    #[serde(rename = "c", alias = "consumerGroup")]
    pub consumer_group: String,
    /// The topic without retry prefix; `retry` says which one was popped.
    #[serde(rename = "t", alias = "topic")]
    pub topic: String,
    /// The retry flag of the receipt handle ("0", "1", "2").
    #[serde(rename = "r", alias = "retry")]
    pub retry: String,
    #[serde(rename = "so", alias = "startOffset")]
    pub start_offset: i64,
    #[serde(rename = "q", alias = "queueId")]
    pub queue_id: i32,
    #[serde(rename = "rq", alias = "reviveQueueId")]
    pub revive_queue_id: i32,
    #[serde(rename = "pt", alias = "popTime")]
    pub pop_time: i64,
    #[serde(rename = "it", alias = "invisibleTime", default)]
    pub invisible_time: i64,
    /// A `java.util.BitSet`'s `toByteArray()` (little-endian), base64 as
    /// fastjson writes a byte array: see [`BatchAck::set_offsets`].
    #[serde(rename = "b", alias = "bitSet", default)]
    pub bit_set: Option<String>,
}

impl BatchAck {
    /// Encodes `offsets` (each at least `start_offset`, at most 2^20 past it)
    /// as the bit set; others are left out.
    pub fn set_offsets(&mut self, offsets: impl IntoIterator<Item = i64>) {
        use base64::Engine;
        let mut bytes: Vec<u8> = Vec::new();
        for o in offsets {
            let Some(i) = o
                .checked_sub(self.start_offset)
                .and_then(|d| usize::try_from(d).ok())
                .filter(|&d| d < MAX_BATCH_ACK_SPAN)
            else {
                continue;
            };
            if bytes.len() <= i / 8 {
                bytes.resize(i / 8 + 1, 0);
            }
            bytes[i / 8] |= 1 << (i % 8);
        }
        self.bit_set = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
    }

    /// The bit set's bytes; `None` when it is not base64.
    pub fn bit_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        let b = self.bit_set.as_deref().unwrap_or("");
        // fastjson writes padding; accept it either way.
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b.trim_end_matches('='))
            .ok()
    }
}

/// Widest span of offsets one [`BatchAck`] entry encodes from its start.
pub const MAX_BATCH_ACK_SPAN: usize = 1 << 20;

/// Body of BATCH_ACK_MESSAGE (Apache `BatchAckMessageRequestBody`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchAckBody {
    #[serde(
        rename = "brokerName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub broker_name: Option<String>,
    #[serde(default)]
    pub acks: Option<Vec<BatchAck>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_round_trips() {
        let h = build_extra_info(10, 1700000000000, 30000, 3, "%RETRY%g+t", "b-a", 2, 12);
        assert_eq!(h, "10 1700000000000 30000 3 2 b-a 2 12");
        let e = ExtraInfo::parse(&h).unwrap();
        assert_eq!(e.queue_offset, Some(12));
        assert_eq!(e.real_topic("t", "g"), "%RETRY%g+t");
        for bad in [
            "",
            "1 2 3",
            "x 1 1 1 0 b 0 0",
            "1 1 1 1 7 b 0 0",
            "1 1 1 1 0 b 0 zz",
        ] {
            assert!(ExtraInfo::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retry_topics_map_back() {
        assert_eq!(normal_topic("%RETRY%g+t", "g"), "t");
        assert_eq!(normal_topic("%RETRY%g_t", "g"), "t");
        assert_eq!(normal_topic("t", "g"), "t");
        assert_eq!(normal_topic("%RETRY%other+t", "g"), "%RETRY%other+t");
        assert_eq!(normal_topic("%RETRY%g", "g"), "%RETRY%g");
    }

    #[test]
    fn start_offset_info_parses() {
        let m = parse_start_offset_info("0 1 5;2 0 7;junk;0 x 3");
        assert_eq!(m.get(&("0".to_string(), 1)), Some(&5));
        assert_eq!(m.get(&("2".to_string(), 0)), Some(&7));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn batch_ack_bit_set_round_trips_as_java_bytes() {
        let mut a = BatchAck {
            consumer_group: "g".into(),
            topic: "t".into(),
            retry: "0".into(),
            start_offset: 100,
            queue_id: 1,
            revive_queue_id: 3,
            pop_time: 5,
            invisible_time: 60_000,
            bit_set: None,
        };
        // 99 is before the start: left out.
        a.set_offsets([100, 102, 109, 99]);
        // Bits 0, 2 (byte 0 = 0b101) and 9 (byte 1 = 0b10), little-endian.
        assert_eq!(a.bit_bytes(), Some(vec![0b101, 0b10]));
        let json = serde_json::to_string(&BatchAckBody {
            broker_name: Some("b".into()),
            acks: Some(vec![a.clone()]),
        })
        .unwrap();
        assert!(
            json.contains("\"so\":100") && json.contains("\"b\":\"BQI=\""),
            "{json}"
        );
        let back: BatchAckBody = serde_json::from_str(&json).unwrap();
        assert_eq!(back.acks.unwrap()[0], a);
        let bad = BatchAck {
            bit_set: Some("**".into()),
            ..a
        };
        assert_eq!(bad.bit_bytes(), None);
    }
}
