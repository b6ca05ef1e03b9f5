//! Broker-side subscription filtering: turns a consumer's subscription (from
//! its heartbeat or from the pull header) into the store's `MessageFilter`
//! over ConsumeQueue tags codes. Only TAG expressions are supported; SQL92
//! needs a property filter this broker does not have.

use std::collections::HashSet;

use apogee_protocol::body::heartbeat::SubscriptionData;
use apogee_protocol::message::tags::{java_string_hash, SUB_ALL};
use apogee_store::MessageFilter;

/// Expression type of tag subscriptions (also meant when absent or empty).
pub const EXPRESSION_TYPE_TAG: &str = "TAG";
/// Expression type of SQL92 subscriptions (not supported here).
pub const EXPRESSION_TYPE_SQL92: &str = "SQL92";

/// Why a subscription could not be turned into a filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The expression type is not TAG (SQL92 or unknown).
    #[error(
        "the broker does not support consumers filtering messages by {0} \
         (enablePropertyFilter is not available); subscribe with a TAG expression"
    )]
    UnsupportedType(String),
}

/// A TAG subscription as a ConsumeQueue filter: every message, or those whose
/// tags code is the Java hash of one of the subscribed tags.
///
/// Hash collisions can let a foreign tag through; clients re-check the tag
/// string, exactly as with the Java broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagMessageFilter {
    all: bool,
    codes: HashSet<i32>,
}

impl TagMessageFilter {
    /// Matches every message.
    pub fn all() -> Self {
        TagMessageFilter {
            all: true,
            codes: HashSet::new(),
        }
    }

    /// Builds the filter for an expression of `expression_type` (`None` or
    /// empty means TAG).
    pub fn from_expression(
        expression: &str,
        expression_type: Option<&str>,
    ) -> Result<Self, FilterError> {
        check_tag_type(expression_type.unwrap_or(""))?;
        Ok(Self::from_tag_expression(expression))
    }

    /// Parses a TAG expression like the Java client's `FilterAPI`: `*` or
    /// blank → all; otherwise split on `||` and trim each tag.
    pub fn from_tag_expression(expression: &str) -> Self {
        let t = java_trim(expression);
        if t.is_empty() || t == SUB_ALL {
            return Self::all();
        }
        let codes = expression
            .split("||")
            .map(java_trim)
            .filter(|s| !s.is_empty())
            .map(java_string_hash)
            .collect();
        TagMessageFilter { all: false, codes }
    }

    /// Builds the filter for a heartbeat-registered subscription. The
    /// client's `codeSet` is used together with the codes recomputed from
    /// `subString`, so a client that leaves `codeSet` empty still filters.
    pub fn from_subscription(sd: &SubscriptionData) -> Result<Self, FilterError> {
        check_tag_type(&sd.expression_type)?;
        if sd.class_filter_mode {
            // Legacy class filters ran on filter servers, never in the broker.
            return Ok(Self::all());
        }
        let mut f = Self::from_tag_expression(&sd.sub_string);
        if !f.all {
            f.codes.extend(sd.code_set.iter().copied());
        }
        Ok(f)
    }

    /// Whether the filter lets everything through.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// Whether a ConsumeQueue tags code passes (Java compares the int value).
    #[inline]
    pub fn matches(&self, tags_code: i64) -> bool {
        self.all || self.codes.contains(&(tags_code as i32))
    }

    /// Like [`TagMessageFilter::matches`] for a message whose tags code is
    /// unknown (a periodic re-check): Java lets those through.
    #[inline]
    pub fn matches_opt(&self, tags_code: Option<i64>) -> bool {
        tags_code.is_none_or(|c| self.matches(c))
    }
}

impl MessageFilter for TagMessageFilter {
    fn is_matched_by_tags_code(&self, tags_code: i64) -> bool {
        self.matches(tags_code)
    }
}

fn check_tag_type(expression_type: &str) -> Result<(), FilterError> {
    let t = expression_type.trim();
    if t.is_empty() || t.eq_ignore_ascii_case(EXPRESSION_TYPE_TAG) {
        Ok(())
    } else {
        Err(FilterError::UnsupportedType(t.to_owned()))
    }
}

/// Java `String.trim`: strips every char ≤ U+0020.
fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= ' ')
}

#[cfg(test)]
mod tests {
    use super::*;
    use apogee_protocol::message::tags::tags_hash_code;

    #[test]
    fn star_and_blank_match_everything() {
        for e in ["*", "", "  * ", " "] {
            let f = TagMessageFilter::from_tag_expression(e);
            assert!(f.is_all(), "{e:?}");
            assert!(f.matches(12345));
            assert!(f.matches(0));
        }
    }

    #[test]
    fn tags_match_by_hash() {
        let f = TagMessageFilter::from_expression("TagA || TagB", Some("TAG")).unwrap();
        assert!(!f.is_all());
        assert!(f.matches(tags_hash_code("TagA")));
        assert!(f.matches(tags_hash_code("TagB")));
        assert!(!f.matches(tags_hash_code("TagC")));
        // A message without tags has code 0 and does not match a tag list.
        assert!(!f.matches(0));
        assert!(f.matches_opt(None));
        assert!(!f.matches_opt(Some(tags_hash_code("TagC"))));
        // Negative hash codes survive the i64 round trip.
        let neg = TagMessageFilter::from_tag_expression("polygenelubricants");
        assert!(neg.matches(tags_hash_code("polygenelubricants")));
    }

    #[test]
    fn sql92_is_refused() {
        let e = TagMessageFilter::from_expression("a > 1", Some("SQL92")).unwrap_err();
        assert_eq!(e, FilterError::UnsupportedType("SQL92".into()));
        assert!(e.to_string().contains("SQL92"));
        let mut sd = SubscriptionData::tag("T", "a");
        sd.expression_type = "SQL92".into();
        assert!(TagMessageFilter::from_subscription(&sd).is_err());
    }

    #[test]
    fn subscription_uses_code_set_and_sub_string() {
        let sd = SubscriptionData::tag("T", "TagA||TagB");
        let f = TagMessageFilter::from_subscription(&sd).unwrap();
        assert!(f.matches(tags_hash_code("TagB")));
        // A client that sends only a codeSet (sub_string unparsable) still filters.
        let mut sd2 = SubscriptionData::tag("T", "TagA");
        sd2.code_set.insert(java_string_hash("Other"));
        let f2 = TagMessageFilter::from_subscription(&sd2).unwrap();
        assert!(f2.matches(tags_hash_code("Other")));
        assert!(f2.matches(tags_hash_code("TagA")));
        assert!(!f2.matches(tags_hash_code("TagZ")));
        // Missing expression type means TAG.
        let mut sd3 = SubscriptionData::tag("T", "*");
        sd3.expression_type.clear();
        assert!(TagMessageFilter::from_subscription(&sd3).unwrap().is_all());
    }
}
