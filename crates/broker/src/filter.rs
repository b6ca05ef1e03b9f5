//! Broker-side subscription filtering: turns a consumer's subscription (from
//! its heartbeat or from the pull header) into the store's `MessageFilter`.
//! TAG expressions filter on ConsumeQueue tags codes; SQL92 expressions
//! (compiled once per group and topic by [`SqlFilterCache`], evaluated by
//! `apogee-filter`) on the properties of the stored record.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use apogee_filter::{Expression, Properties, SqlError};
use apogee_protocol::body::heartbeat::SubscriptionData;
use apogee_protocol::message::properties;
use apogee_protocol::message::stored;
use apogee_protocol::message::tags::{java_string_hash, SUB_ALL};
use apogee_store::MessageFilter;
use parking_lot::Mutex;

/// Expression type of tag subscriptions (also meant when absent or empty).
pub const EXPRESSION_TYPE_TAG: &str = "TAG";
/// Expression type of SQL92 subscriptions.
pub const EXPRESSION_TYPE_SQL92: &str = "SQL92";

/// Why a subscription could not be turned into a filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The expression type is neither TAG nor SQL92.
    #[error(
        "the broker does not support consumers filtering messages by {0}; \
         subscribe with a TAG or SQL92 expression"
    )]
    UnsupportedType(String),
    /// An SQL92 subscription while `enablePropertyFilter` is off (Apache's
    /// wording, which clients show).
    #[error("The broker does not support consumer to filter message by {0}")]
    PropertyFilterDisabled(String),
    /// The SQL92 expression does not compile.
    #[error(transparent)]
    Parse(#[from] SqlError),
}

/// Whether `expression_type` names SQL92 (case-insensitive, trimmed).
pub fn is_sql92(expression_type: &str) -> bool {
    expression_type
        .trim()
        .eq_ignore_ascii_case(EXPRESSION_TYPE_SQL92)
}

/// The filter of one pull: by tags code, or by an SQL92 expression over the
/// message's properties.
#[derive(Debug, Clone)]
pub enum SubscriptionFilter {
    Tag(TagMessageFilter),
    Sql(Arc<Expression>),
}

impl SubscriptionFilter {
    /// Matches every message.
    pub fn all() -> Self {
        SubscriptionFilter::Tag(TagMessageFilter::all())
    }

    /// Whether the filter lets everything through.
    pub fn is_all(&self) -> bool {
        match self {
            SubscriptionFilter::Tag(t) => t.is_all(),
            SubscriptionFilter::Sql(_) => false,
        }
    }

    /// Whether a message that just arrived may interest the pull (the
    /// long-polling wake-up): unknown tags codes and properties pass.
    pub fn matches_arrival(&self, tags_code: Option<i64>, properties: Option<&[u8]>) -> bool {
        match self {
            SubscriptionFilter::Tag(t) => t.matches_opt(tags_code),
            SubscriptionFilter::Sql(e) => properties.is_none_or(|p| {
                let text = String::from_utf8_lossy(p);
                e.matches(&StoredProperties(&text))
            }),
        }
    }
}

impl From<TagMessageFilter> for SubscriptionFilter {
    fn from(t: TagMessageFilter) -> Self {
        SubscriptionFilter::Tag(t)
    }
}

impl MessageFilter for SubscriptionFilter {
    fn is_matched_by_tags_code(&self, tags_code: i64) -> bool {
        match self {
            SubscriptionFilter::Tag(t) => t.matches(tags_code),
            // The tags code says nothing about properties.
            SubscriptionFilter::Sql(_) => true,
        }
    }

    fn is_matched_by_commit_log(&self, record: &[u8]) -> bool {
        let SubscriptionFilter::Sql(e) = self else {
            return true;
        };
        // A record that does not decode is not this filter's business: the
        // consumer gets it and reports it, as with a tag filter.
        match record_properties(record) {
            Some(props) => e.matches(&StoredProperties(&props)),
            None => true,
        }
    }
}

/// The properties string of a stored record (borrowed unless it is not
/// UTF-8).
fn record_properties(record: &[u8]) -> Option<Cow<'_, str>> {
    stored::check_record(record, false)
        .ok()
        .map(|info| info.properties)
}

/// A stored properties string as the selector's property source: each
/// lookup scans the string, nothing is copied.
pub struct StoredProperties<'a>(pub &'a str);

impl Properties for StoredProperties<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        properties::get(self.0, name)
    }
}

/// Most (group, topic) expressions kept; beyond it the cache starts over
/// (expressions recompile on their next pull).
const SQL_CACHE_MAX: usize = 10_000;

struct CachedSql {
    expression: String,
    compiled: Result<Arc<Expression>, SqlError>,
}

/// Compiled SQL92 expressions per (group, topic), so each subscription is
/// compiled once — on its heartbeat or first pull — and again only when
/// its text changes. Failures are cached too (and logged once).
#[derive(Default)]
pub struct SqlFilterCache {
    map: Mutex<HashMap<String, HashMap<String, CachedSql>>>,
    len: std::sync::atomic::AtomicUsize,
}

impl SqlFilterCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The compiled `expression` of `group` on `topic`.
    pub fn get_or_compile(
        &self,
        group: &str,
        topic: &str,
        expression: &str,
    ) -> Result<Arc<Expression>, SqlError> {
        {
            let m = self.map.lock();
            if let Some(c) = m.get(group).and_then(|t| t.get(topic)) {
                if c.expression == expression {
                    return c.compiled.clone();
                }
            }
        }
        // Compiled outside the lock: a long expression must not stall pulls.
        let compiled = Expression::compile(expression).map(Arc::new);
        if let Err(e) = &compiled {
            tracing::warn!(group, topic, expression, error = %e,
                "SQL92 subscription does not compile; its pulls are refused");
        }
        let mut m = self.map.lock();
        if self.len.load(std::sync::atomic::Ordering::Relaxed) >= SQL_CACHE_MAX {
            m.clear();
            self.len.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        let prev = m.entry(group.to_owned()).or_default().insert(
            topic.to_owned(),
            CachedSql {
                expression: expression.to_owned(),
                compiled: compiled.clone(),
            },
        );
        if prev.is_none() {
            self.len.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        compiled
    }

    /// Expressions cached right now.
    pub fn len(&self) -> usize {
        self.len.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    fn tag_filter_refuses_other_types() {
        let e = TagMessageFilter::from_expression("a > 1", Some("SQL92")).unwrap_err();
        assert_eq!(e, FilterError::UnsupportedType("SQL92".into()));
        let mut sd = SubscriptionData::tag("T", "a");
        sd.expression_type = "SQL92".into();
        assert!(TagMessageFilter::from_subscription(&sd).is_err());
    }

    fn record(props: &str) -> Vec<u8> {
        use apogee_protocol::message::stored::{encode_stored, MessageToStore};
        let msg = MessageToStore {
            topic: "T".into(),
            queue_id: 0,
            flag: 0,
            body: bytes::Bytes::from_static(b"x"),
            properties: props.into(),
            sys_flag: 0,
            born_timestamp: 1,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            tags_code: 0,
        };
        let mut b = bytes::BytesMut::new();
        encode_stored(&msg, &mut b).unwrap();
        b.to_vec()
    }

    #[test]
    fn sql_filter_reads_the_stored_properties() {
        let cache = SqlFilterCache::new();
        let e = cache
            .get_or_compile("G", "T", "a > 3 AND TAGS = 'TagA'")
            .unwrap();
        let f = SubscriptionFilter::Sql(e);
        assert!(!f.is_all());
        // Every tags code passes the first look.
        assert!(f.is_matched_by_tags_code(12345));
        let yes = record("a\u{1}5\u{2}TAGS\u{1}TagA\u{2}");
        let no = record("a\u{1}1\u{2}TAGS\u{1}TagA\u{2}");
        let missing = record("TAGS\u{1}TagA\u{2}");
        assert!(f.is_matched_by_commit_log(&yes));
        assert!(!f.is_matched_by_commit_log(&no));
        assert!(!f.is_matched_by_commit_log(&missing));
        // The long-polling check: properties known or not.
        assert!(f.matches_arrival(Some(1), Some(b"a\x015\x02TAGS\x01TagA\x02")));
        assert!(!f.matches_arrival(Some(1), Some(b"a\x011\x02")));
        assert!(f.matches_arrival(None, None));
        // Tag filters ignore properties.
        let t = SubscriptionFilter::from(TagMessageFilter::from_tag_expression("TagA"));
        assert!(t.is_matched_by_commit_log(&no));
    }

    #[test]
    fn sql_cache_compiles_once_and_follows_changes() {
        let cache = SqlFilterCache::new();
        let a = cache.get_or_compile("G", "T", "a = 1").unwrap();
        let b = cache.get_or_compile("G", "T", "a = 1").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = cache.get_or_compile("G", "T", "a = 2").unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(cache.len(), 1);
        let err = cache.get_or_compile("G", "U", "a = ").unwrap_err();
        assert!(err.to_string().contains("Invalid MessageSelector"));
        assert_eq!(cache.get_or_compile("G", "U", "a = ").unwrap_err(), err);
        assert_eq!(cache.len(), 2);
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
