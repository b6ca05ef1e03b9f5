//! Tag hash codes (Java `String.hashCode`, as the ConsumeQueue stores them)
//! and TAG subscription expressions ("*", "TagA || TagB").

use std::collections::HashSet;

/// Java `String.hashCode`: h = 31·h + unit over the UTF-16 code units,
/// wrapping 32-bit arithmetic.
pub fn java_string_hash(s: &str) -> i32 {
    let mut h: i32 = 0;
    for unit in s.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    h
}

/// The ConsumeQueue tags code of a TAGS value: its hash sign-extended to
/// 64 bits (Java widens the int); 0 for an empty tag.
pub fn tags_hash_code(tags: &str) -> i64 {
    if tags.is_empty() {
        0
    } else {
        i64::from(java_string_hash(tags))
    }
}

/// The "subscribe everything" expression.
pub const SUB_ALL: &str = "*";

/// A parsed TAG subscription expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    /// `*`, empty or absent: every message matches.
    All,
    /// One or more tags; `codes` are their Java hash codes.
    Tags {
        tags: HashSet<String>,
        codes: HashSet<i32>,
    },
}

impl TagFilter {
    /// Parses like Java `FilterAPI.buildSubscriptionData`: split on `||`,
    /// trim each part (chars ≤ U+0020, as Java's `trim`), drop empty ones.
    /// An expression with no tag left (e.g. `"||"`) yields an empty set, as
    /// in Java: nothing matches it.
    pub fn parse(expr: &str) -> TagFilter {
        let t = java_trim(expr);
        if t.is_empty() || t == SUB_ALL {
            return TagFilter::All;
        }
        let mut tags = HashSet::new();
        let mut codes = HashSet::new();
        for part in expr.split("||") {
            let tag = java_trim(part);
            if !tag.is_empty() {
                codes.insert(java_string_hash(tag));
                tags.insert(tag.to_owned());
            }
        }
        TagFilter::Tags { tags, codes }
    }

    pub fn is_all(&self) -> bool {
        matches!(self, TagFilter::All)
    }

    /// Broker-side match on a ConsumeQueue tags code (may give false
    /// positives on hash collisions; clients re-check the tag string).
    pub fn matches_code(&self, tags_code: i64) -> bool {
        match self {
            TagFilter::All => true,
            // Java compares the code's int value.
            TagFilter::Tags { codes, .. } => codes.contains(&(tags_code as i32)),
        }
    }

    /// Client-side exact match on a message's TAGS value.
    pub fn matches_tag(&self, tag: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::Tags { tags, .. } => tag.is_some_and(|t| tags.contains(t)),
        }
    }
}

fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= ' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_java() {
        // Values computed with java.lang.String.hashCode.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("TagA"), 2_598_919);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        // Overflowing and negative: "polygenelubricants" hashes to MIN_VALUE.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(tags_hash_code("polygenelubricants"), i64::from(i32::MIN));
        // Non-BMP characters hash as two UTF-16 units.
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
    }

    #[test]
    fn parses_expressions() {
        assert!(TagFilter::parse("*").is_all());
        assert!(TagFilter::parse("").is_all());
        assert!(TagFilter::parse("  * ").is_all());
        let f = TagFilter::parse("TagA || TagB||  ||TagC ");
        let TagFilter::Tags { tags, codes } = &f else {
            panic!("expected tags");
        };
        assert_eq!(tags.len(), 3);
        assert!(codes.contains(&java_string_hash("TagB")));
        assert!(f.matches_code(tags_hash_code("TagC")));
        assert!(!f.matches_code(tags_hash_code("TagD")));
        assert!(f.matches_tag(Some("TagA")));
        assert!(!f.matches_tag(None));
        assert!(!f.matches_tag(Some("TagA ")));
    }
}
