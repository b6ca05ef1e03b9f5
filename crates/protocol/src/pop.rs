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
}
