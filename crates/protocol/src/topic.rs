//! Topic and group name validation (Java `TopicValidator`) and the reserved
//! topic/group names and prefixes (`TopicValidator`, `MixAll`).

use crate::error::{ProtocolError, Result};

/// Template topic that producers name for auto-creation.
pub const AUTO_CREATE_TOPIC_KEY_TOPIC: &str = "TBW102";
/// Delayed messages wait here, one queue per delay level.
pub const RMQ_SYS_SCHEDULE_TOPIC: &str = "SCHEDULE_TOPIC_XXXX";
pub const RMQ_SYS_BENCHMARK_TOPIC: &str = "BenchmarkTest";
/// Transactional half messages.
pub const RMQ_SYS_TRANS_HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
pub const RMQ_SYS_TRACE_TOPIC: &str = "RMQ_SYS_TRACE_TOPIC";
/// Commit/rollback markers of half messages.
pub const RMQ_SYS_TRANS_OP_HALF_TOPIC: &str = "RMQ_SYS_TRANS_OP_HALF_TOPIC";
pub const RMQ_SYS_TRANS_CHECK_MAX_TIME_TOPIC: &str = "TRANS_CHECK_MAX_TIME_TOPIC";
pub const RMQ_SYS_SELF_TEST_TOPIC: &str = "SELF_TEST_TOPIC";
pub const RMQ_SYS_OFFSET_MOVED_EVENT: &str = "OFFSET_MOVED_EVENT";
pub const RMQ_SYS_ROCKSDB_OFFSET_TOPIC: &str = "CHECKPOINT_TOPIC";
/// Any topic starting with this is a system topic.
pub const SYSTEM_TOPIC_PREFIX: &str = "rmq_sys_";
pub const SYNC_BROKER_MEMBER_GROUP_PREFIX: &str = "rmq_sys_SYNC_BROKER_MEMBER_";

/// Prefix of a consumer group's retry topic.
pub const RETRY_GROUP_TOPIC_PREFIX: &str = "%RETRY%";
/// Prefix of a consumer group's dead-letter topic.
pub const DLQ_GROUP_TOPIC_PREFIX: &str = "%DLQ%";
/// Light message queue prefix (5.x).
pub const LMQ_PREFIX: &str = "%LMQ%";
/// `<cluster>_REPLY_TOPIC` carries request/reply messages.
pub const REPLY_TOPIC_POSTFIX: &str = "REPLY_TOPIC";

/// Consumer groups starting with this are system groups.
pub const CID_RMQ_SYS_PREFIX: &str = "CID_RMQ_SYS_";
pub const DEFAULT_PRODUCER_GROUP: &str = "DEFAULT_PRODUCER";
pub const DEFAULT_CONSUMER_GROUP: &str = "DEFAULT_CONSUMER";
pub const TOOLS_CONSUMER_GROUP: &str = "TOOLS_CONSUMER";
pub const SCHEDULE_CONSUMER_GROUP: &str = "SCHEDULE_CONSUMER";
pub const FILTERSRV_CONSUMER_GROUP: &str = "FILTERSRV_CONSUMER";
pub const MONITOR_CONSUMER_GROUP: &str = "__MONITOR_CONSUMER";
pub const CLIENT_INNER_PRODUCER_GROUP: &str = "CLIENT_INNER_PRODUCER";
pub const SELF_TEST_PRODUCER_GROUP: &str = "SELF_TEST_P_GROUP";
pub const SELF_TEST_CONSUMER_GROUP: &str = "SELF_TEST_C_GROUP";
pub const CID_SYS_RMQ_TRANS: &str = "CID_RMQ_SYS_TRANS";

/// Longest ordinary topic name.
pub const TOPIC_MAX_LENGTH: usize = 127;
/// Longest `%RETRY%`/`%DLQ%` topic name.
pub const RETRY_OR_DLQ_TOPIC_MAX_LENGTH: usize = 255;
/// Longest group name (it becomes part of retry/DLQ topic names).
pub const GROUP_MAX_LENGTH: usize = 120;

/// The fixed system topics (Java `SYSTEM_TOPIC_SET`).
pub const SYSTEM_TOPICS: [&str; 10] = [
    AUTO_CREATE_TOPIC_KEY_TOPIC,
    RMQ_SYS_SCHEDULE_TOPIC,
    RMQ_SYS_BENCHMARK_TOPIC,
    RMQ_SYS_TRANS_HALF_TOPIC,
    RMQ_SYS_TRACE_TOPIC,
    RMQ_SYS_TRANS_OP_HALF_TOPIC,
    RMQ_SYS_TRANS_CHECK_MAX_TIME_TOPIC,
    RMQ_SYS_SELF_TEST_TOPIC,
    RMQ_SYS_OFFSET_MOVED_EVENT,
    RMQ_SYS_ROCKSDB_OFFSET_TOPIC,
];

/// Topics clients may not send to (answered with NO_PERMISSION).
pub const NOT_ALLOWED_SEND_TOPICS: [&str; 6] = [
    RMQ_SYS_SCHEDULE_TOPIC,
    RMQ_SYS_TRANS_HALF_TOPIC,
    RMQ_SYS_TRANS_OP_HALF_TOPIC,
    RMQ_SYS_TRANS_CHECK_MAX_TIME_TOPIC,
    RMQ_SYS_SELF_TEST_TOPIC,
    RMQ_SYS_OFFSET_MOVED_EVENT,
];

/// `^[%|a-zA-Z0-9_-]+$`, one character at a time.
fn is_valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-')
}

/// The first character outside `[%|a-zA-Z0-9_-]` and its character index.
fn first_illegal_char(name: &str) -> Option<(usize, char)> {
    name.chars().enumerate().find(|(_, c)| !is_valid_char(*c))
}

/// Checks a topic name as the Java broker does: not blank, only
/// `[%|a-zA-Z0-9_-]`, at most 127 characters (255 for `%RETRY%`/`%DLQ%`
/// topics). The error says which character or which length was wrong.
pub fn validate_topic(topic: &str) -> Result<()> {
    if topic.trim().is_empty() {
        return Err(ProtocolError::InvalidTopic("the topic is blank".into()));
    }
    if let Some((i, c)) = first_illegal_char(topic) {
        return Err(ProtocolError::InvalidTopic(format!(
            "topic {topic:?} contains illegal character {c:?} at position {i}; \
             allowed are only ^[%|a-zA-Z0-9_-]+$"
        )));
    }
    // Only ASCII is left, so bytes == characters.
    let len = topic.len();
    if is_retry_topic(topic) || is_dlq_topic(topic) {
        if len > RETRY_OR_DLQ_TOPIC_MAX_LENGTH {
            return Err(ProtocolError::InvalidTopic(format!(
                "retry/DLQ topic {topic:?} is {len} characters long, \
                 more than the maximum of {RETRY_OR_DLQ_TOPIC_MAX_LENGTH}"
            )));
        }
    } else if len > TOPIC_MAX_LENGTH {
        return Err(ProtocolError::InvalidTopic(format!(
            "topic {topic:?} is {len} characters long, more than the maximum of {TOPIC_MAX_LENGTH}"
        )));
    }
    Ok(())
}

/// Checks a group name: not blank, only `[%|a-zA-Z0-9_-]`, at most 120
/// characters.
pub fn validate_group(group: &str) -> Result<()> {
    if group.trim().is_empty() {
        return Err(ProtocolError::InvalidGroup("the group is blank".into()));
    }
    if let Some((i, c)) = first_illegal_char(group) {
        return Err(ProtocolError::InvalidGroup(format!(
            "group {group:?} contains illegal character {c:?} at position {i}; \
             allowed are only ^[%|a-zA-Z0-9_-]+$"
        )));
    }
    let len = group.len();
    if len > GROUP_MAX_LENGTH {
        return Err(ProtocolError::InvalidGroup(format!(
            "group {group:?} is {len} characters long, more than the maximum of {GROUP_MAX_LENGTH}"
        )));
    }
    Ok(())
}

/// A fixed system topic or one starting with `rmq_sys_`.
pub fn is_system_topic(topic: &str) -> bool {
    SYSTEM_TOPICS.contains(&topic) || topic.starts_with(SYSTEM_TOPIC_PREFIX)
}

/// Clients may not send to this topic.
pub fn is_not_allowed_send_topic(topic: &str) -> bool {
    NOT_ALLOWED_SEND_TOPICS.contains(&topic)
}

/// A consumer group reserved for the system (`CID_RMQ_SYS_` prefix).
pub fn is_sys_consumer_group(group: &str) -> bool {
    group.starts_with(CID_RMQ_SYS_PREFIX)
}

/// `%RETRY%<group>`.
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_GROUP_TOPIC_PREFIX}{group}")
}

/// `%DLQ%<group>`.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_GROUP_TOPIC_PREFIX}{group}")
}

/// `<cluster>_REPLY_TOPIC`.
pub fn reply_topic(cluster: &str) -> String {
    format!("{cluster}_{REPLY_TOPIC_POSTFIX}")
}

pub fn is_retry_topic(topic: &str) -> bool {
    topic.starts_with(RETRY_GROUP_TOPIC_PREFIX)
}

pub fn is_dlq_topic(topic: &str) -> bool {
    topic.starts_with(DLQ_GROUP_TOPIC_PREFIX)
}

/// The group of a `%RETRY%<group>` or `%DLQ%<group>` topic.
pub fn group_of_retry_or_dlq_topic(topic: &str) -> Option<&str> {
    topic
        .strip_prefix(RETRY_GROUP_TOPIC_PREFIX)
        .or_else(|| topic.strip_prefix(DLQ_GROUP_TOPIC_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<()>) -> String {
        match r {
            Err(ProtocolError::InvalidTopic(m)) | Err(ProtocolError::InvalidGroup(m)) => m,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_legal_names() {
        for t in [
            "TopicTest",
            "a",
            "A-b_c|d%e",
            "%RETRY%g1",
            "%DLQ%g1",
            "TBW102",
        ] {
            assert_eq!(validate_topic(t), Ok(()), "{t}");
        }
        assert_eq!(validate_topic(&"x".repeat(127)), Ok(()));
        assert_eq!(validate_group("please_rename_unique_group_name"), Ok(()));
    }

    #[test]
    fn blank_and_illegal_characters() {
        assert!(msg(validate_topic("")).contains("blank"));
        assert!(msg(validate_topic("   ")).contains("blank"));
        let m = msg(validate_topic("ab c"));
        assert!(m.contains("' '") && m.contains("position 2"), "{m}");
        let m = msg(validate_topic("tópic"));
        assert!(m.contains("'ó'") && m.contains("position 1"), "{m}");
        let m = msg(validate_topic("a.b"));
        assert!(m.contains("'.'"), "{m}");
        let m = msg(validate_group("g/1"));
        assert!(m.contains("'/'") && m.contains("position 1"), "{m}");
        assert!(msg(validate_group("")).contains("blank"));
    }

    #[test]
    fn length_limits() {
        let m = msg(validate_topic(&"x".repeat(128)));
        assert!(m.contains("128") && m.contains("127"), "{m}");
        let retry = format!("%RETRY%{}", "g".repeat(248));
        assert_eq!(retry.len(), 255);
        assert_eq!(validate_topic(&retry), Ok(()));
        let m = msg(validate_topic(&format!("{retry}g")));
        assert!(m.contains("256") && m.contains("255"), "{m}");
        let dlq = format!("%DLQ%{}", "g".repeat(250));
        assert_eq!(validate_topic(&dlq), Ok(()));
        assert!(validate_topic(&format!("{dlq}g")).is_err());
        assert_eq!(validate_group(&"g".repeat(120)), Ok(()));
        let m = msg(validate_group(&"g".repeat(121)));
        assert!(m.contains("121") && m.contains("120"), "{m}");
    }

    #[test]
    fn system_names() {
        assert!(is_system_topic("TBW102"));
        assert!(is_system_topic("SCHEDULE_TOPIC_XXXX"));
        assert!(is_system_topic("rmq_sys_anything"));
        assert!(!is_system_topic("TopicTest"));
        assert!(is_not_allowed_send_topic(RMQ_SYS_TRANS_HALF_TOPIC));
        assert!(!is_not_allowed_send_topic(AUTO_CREATE_TOPIC_KEY_TOPIC));
        assert!(is_sys_consumer_group("CID_RMQ_SYS_TRANS"));
        assert_eq!(retry_topic("g"), "%RETRY%g");
        assert_eq!(dlq_topic("g"), "%DLQ%g");
        assert_eq!(reply_topic("DefaultCluster"), "DefaultCluster_REPLY_TOPIC");
        assert_eq!(group_of_retry_or_dlq_topic("%RETRY%g"), Some("g"));
        assert_eq!(group_of_retry_or_dlq_topic("%DLQ%g"), Some("g"));
        assert_eq!(group_of_retry_or_dlq_topic("g"), None);
        assert!(is_retry_topic("%RETRY%g") && is_dlq_topic("%DLQ%g"));
    }
}
