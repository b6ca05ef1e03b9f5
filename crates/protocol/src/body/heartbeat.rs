//! Client heartbeat bodies: `HeartbeatData`, `ProducerData`, `ConsumerData`,
//! `SubscriptionData` and the consumer enums, read as leniently as the Java
//! broker reads them (reference 14.1).

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::fastjson::lenient;

/// `ExpressionType.TAG`.
pub const EXPRESSION_TYPE_TAG: &str = "TAG";
/// `ExpressionType.SQL92`.
pub const EXPRESSION_TYPE_SQL92: &str = "SQL92";
/// `SubscriptionData.SUB_ALL`.
pub const SUB_ALL: &str = "*";

java_enum! {
    /// `ConsumeType`. The Java names are primary; the "typeCN" labels
    /// (PULL/PUSH/POP) are accepted as well.
    ConsumeType default ConsumePassively {
        ConsumeActively = "CONSUME_ACTIVELY" | "PULL",
        ConsumePassively = "CONSUME_PASSIVELY" | "PUSH",
        ConsumePop = "CONSUME_POP" | "POP",
    }
}

java_enum! {
    /// `MessageModel`.
    MessageModel default Clustering {
        Broadcasting = "BROADCASTING",
        Clustering = "CLUSTERING",
    }
}

java_enum! {
    /// `ConsumeFromWhere` (three deprecated values keep their ordinals).
    ConsumeFromWhere default ConsumeFromLastOffset {
        ConsumeFromLastOffset = "CONSUME_FROM_LAST_OFFSET",
        ConsumeFromLastOffsetAndFromMinWhenBootFirst = "CONSUME_FROM_LAST_OFFSET_AND_FROM_MIN_WHEN_BOOT_FIRST",
        ConsumeFromMinOffset = "CONSUME_FROM_MIN_OFFSET",
        ConsumeFromMaxOffset = "CONSUME_FROM_MAX_OFFSET",
        ConsumeFromFirstOffset = "CONSUME_FROM_FIRST_OFFSET",
        ConsumeFromTimestamp = "CONSUME_FROM_TIMESTAMP",
    }
}

/// Body of HEART_BEAT.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeartbeatData {
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub producer_data_set: Vec<ProducerData>,
    pub consumer_data_set: Vec<ConsumerData>,
    /// 5.x heartbeat V2; 0 for the classic full heartbeat.
    #[serde(deserialize_with = "lenient::i32")]
    pub heartbeat_fingerprint: i32,
    /// 5.x: subscriptions omitted (heartbeat V2 only).
    #[serde(deserialize_with = "lenient::bool")]
    pub without_sub: bool,
}

/// A producer group in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProducerData {
    pub group_name: String,
}

/// A consumer group in a heartbeat. Java leaves the enums null when absent;
/// here they take the Java push consumer's defaults (PUSH, CLUSTERING,
/// CONSUME_FROM_LAST_OFFSET).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerData {
    pub group_name: String,
    pub consume_type: ConsumeType,
    pub message_model: MessageModel,
    pub consume_from_where: ConsumeFromWhere,
    pub subscription_data_set: Vec<SubscriptionData>,
    #[serde(deserialize_with = "lenient::bool")]
    pub unit_mode: bool,
}

/// One topic subscription of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionData {
    #[serde(deserialize_with = "lenient::bool")]
    pub class_filter_mode: bool,
    pub topic: String,
    pub sub_string: String,
    pub tags_set: BTreeSet<String>,
    /// Tag hash codes; numbers or numeric strings (the Go client's form).
    #[serde(deserialize_with = "lenient::i32_set")]
    pub code_set: BTreeSet<i32>,
    /// Client timestamp (ms); numbers and numeric strings are accepted.
    #[serde(deserialize_with = "lenient::i64")]
    pub sub_version: i64,
    /// `TAG` (also when absent) or `SQL92`.
    pub expression_type: String,
    /// Java marks it `serialize=false`: read, never written.
    #[serde(skip_serializing)]
    pub filter_class_source: Option<String>,
}

impl Default for SubscriptionData {
    /// Java defaults: TAG expression, `subVersion` = now.
    fn default() -> Self {
        SubscriptionData {
            class_filter_mode: false,
            topic: String::new(),
            sub_string: String::new(),
            tags_set: BTreeSet::new(),
            code_set: BTreeSet::new(),
            sub_version: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            expression_type: EXPRESSION_TYPE_TAG.to_string(),
            filter_class_source: None,
        }
    }
}

impl SubscriptionData {
    /// Builds a TAG subscription the way the Java client's
    /// `FilterAPI.buildSubscriptionData` does: `*` or empty means all tags;
    /// otherwise split on `||`, trim, drop empties, and record each tag's
    /// Java `String.hashCode()`.
    pub fn tag(topic: impl Into<String>, sub_string: &str) -> Self {
        let mut sd = SubscriptionData {
            topic: topic.into(),
            ..SubscriptionData::default()
        };
        let trimmed = sub_string.trim();
        if trimmed.is_empty() || trimmed == SUB_ALL {
            sd.sub_string = SUB_ALL.to_string();
        } else {
            sd.sub_string = sub_string.to_string();
            for tag in sub_string
                .split("||")
                .map(str::trim)
                .filter(|t| !t.is_empty())
            {
                sd.code_set.insert(java_string_hash(tag));
                sd.tags_set.insert(tag.to_string());
            }
        }
        sd
    }

    /// An SQL92 subscription (Java `FilterAPI.build(topic, expr, "SQL92")`):
    /// the expression is kept as written; the broker compiles it.
    pub fn sql(topic: impl Into<String>, expression: &str) -> Self {
        SubscriptionData {
            topic: topic.into(),
            sub_string: expression.trim().to_string(),
            expression_type: EXPRESSION_TYPE_SQL92.to_string(),
            ..SubscriptionData::default()
        }
    }

    /// Whether the expression type is TAG (the default when absent or empty).
    pub fn is_tag_type(&self) -> bool {
        self.expression_type.is_empty()
            || self
                .expression_type
                .eq_ignore_ascii_case(EXPRESSION_TYPE_TAG)
    }
}

/// Java `String.hashCode()` over UTF-16 code units (the tag codes stored in
/// the ConsumeQueue and sent in `codeSet`).
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)))
}

json_body!(HeartbeatData, ProducerData, ConsumerData, SubscriptionData);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_known_values() {
        // "TagA".hashCode() in Java is 2598919; "" is 0.
        assert_eq!(java_string_hash("TagA"), 2598919);
        assert_eq!(java_string_hash(""), 0);
    }

    #[test]
    fn go_client_code_set_of_strings_is_read() {
        // rocketmq-client-go writes the tag hash codes as JSON strings.
        let json = br#"{"classFilterMode":false,"topic":"T","subString":"TagA || TagB",
            "tagsSet":["TagA","TagB"],"codeSet":["2598919","2598920"],
            "subVersion":1700000000000,"expressionType":"TAG"}"#;
        let sd: SubscriptionData = crate::body::fastjson::from_slice(json).unwrap();
        assert_eq!(
            sd.code_set.into_iter().collect::<Vec<_>>(),
            [2598919, 2598920]
        );
        let java = br#"{"topic":"T","subString":"TagA","tagsSet":["TagA"],"codeSet":[2598919]}"#;
        let sd: SubscriptionData = crate::body::fastjson::from_slice(java).unwrap();
        assert_eq!(sd.code_set.into_iter().collect::<Vec<_>>(), [2598919]);
        let bad = br#"{"topic":"T","codeSet":["TagA"]}"#;
        assert!(crate::body::fastjson::from_slice::<SubscriptionData>(bad).is_err());
    }

    #[test]
    fn tag_subscription_splits_and_trims() {
        let sd = SubscriptionData::tag("T", "TagB || TagZ");
        assert_eq!(
            sd.tags_set.iter().map(String::as_str).collect::<Vec<_>>(),
            ["TagB", "TagZ"]
        );
        assert_eq!(sd.code_set.len(), 2);
        assert!(SubscriptionData::tag("T", " * ").tags_set.is_empty());
    }
}
