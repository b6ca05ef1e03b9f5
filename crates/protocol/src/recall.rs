//! Recall handles (RocketMQ 5.3's `RecallMessageHandle`): the token a send
//! of a timer message answers with, and that RECALL_MESSAGE (370) or the
//! gRPC RecallMessage hands back to cancel the message before it is due.
//!
//! Version 1 is `v1 <topic> <brokerName> <timestamp> <messageId>`, space
//! separated, UTF-8, then URL-safe base64 with padding. Decoding follows
//! Java's: padding optional, extra fields after the fifth ignored, and any
//! failure is the one error "recall handle is invalid". The timestamp is
//! kept as text, as Apache does: the broker decides what an unparsable one
//! means.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, Engine, GeneralPurpose, GeneralPurposeConfig};

/// Tag of the delete marker a recall stores (Apache's `_RECALL_TAG_`).
pub const RECALL_TAG: &str = "_RECALL_TAG_";

const VERSION_1: &str = "v1";

/// Java's `Base64.getUrlEncoder()` / `getUrlDecoder()`: URL alphabet, padded
/// on encode, padding optional on decode, non-zero trailing bits accepted.
const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A handle that cannot be decoded. The text is Apache's remark, which
/// clients may show as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recall handle is invalid")]
pub struct BadRecallHandle;

/// A decoded version-1 recall handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallHandle {
    /// The topic the message was sent to (its real topic, not the timer's).
    pub topic: String,
    /// The broker holding the message.
    pub broker_name: String,
    /// Milliseconds since the epoch, as text: the message's `TIMER_OUT_MS`
    /// plus one (Apache adds one so a marker filed at it lands in the same
    /// slot after flooring).
    pub timestamp: String,
    /// The message's unique client id (`UNIQ_KEY`).
    pub message_id: String,
}

impl RecallHandle {
    pub fn new(
        topic: impl Into<String>,
        broker_name: impl Into<String>,
        timestamp: impl Into<String>,
        message_id: impl Into<String>,
    ) -> Self {
        RecallHandle {
            topic: topic.into(),
            broker_name: broker_name.into(),
            timestamp: timestamp.into(),
            message_id: message_id.into(),
        }
    }

    /// The handle text (no check of the fields, as Apache's `buildHandle`).
    pub fn encode(&self) -> String {
        let raw = [
            VERSION_1,
            &self.topic,
            &self.broker_name,
            &self.timestamp,
            &self.message_id,
        ]
        .join(" ");
        ENGINE.encode(raw.as_bytes())
    }

    /// Parses a handle; never panics, whatever the input.
    pub fn decode(handle: &str) -> Result<Self, BadRecallHandle> {
        if handle.is_empty() {
            return Err(BadRecallHandle);
        }
        let bytes = ENGINE.decode(handle).map_err(|_| BadRecallHandle)?;
        // Java decodes with replacement characters rather than failing.
        let raw = String::from_utf8_lossy(&bytes);
        let mut items: Vec<&str> = raw.split(' ').collect();
        // Java's String.split drops trailing empty strings.
        while items.last().is_some_and(|s| s.is_empty()) {
            items.pop();
        }
        match items.as_slice() {
            [v, topic, broker, ts, id, ..] if *v == VERSION_1 => {
                Ok(RecallHandle::new(*topic, *broker, *ts, *id))
            }
            _ => Err(BadRecallHandle),
        }
    }

    /// The timestamp as milliseconds, None when it is not a whole number
    /// (Apache's `NumberUtils.toLong(s, -1)` reads it the same way).
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp.parse::<i64>().ok()
    }
}

/// The key a recall marks a message deleted by, in `TIMER_DEL_UNIQKEY`
/// (Apache `TimerMessageStore.buildDeleteKey`): `<realTopic>+<uniqKey>`.
pub fn delete_key(real_topic: &str, uniq_key: &str) -> String {
    format!("{real_topic}+{uniq_key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_java_encoding() {
        // The bytes of "v1 t b 1 id" in Java's URL encoder, padded.
        let h = RecallHandle::new("t", "b", "1", "id");
        assert_eq!(h.encode(), "djEgdCBiIDEgaWQ=");
        assert_eq!(RecallHandle::decode("djEgdCBiIDEgaWQ="), Ok(h.clone()));
        // Padding is optional on decode.
        assert_eq!(RecallHandle::decode("djEgdCBiIDEgaWQ"), Ok(h));
    }

    #[test]
    fn url_alphabet_not_standard() {
        // Bytes chosen so the encoding holds '-' / '_' where the standard
        // alphabet has '+' / '/'.
        let h = RecallHandle::new("T?>", "b~~", "1", "\u{3ff}\u{3ff}");
        let s = h.encode();
        assert!(s.contains('-') || s.contains('_'), "{s}");
        assert_eq!(RecallHandle::decode(&s), Ok(h));
        let standard = s.replace('-', "+").replace('_', "/");
        assert_eq!(RecallHandle::decode(&standard), Err(BadRecallHandle));
    }

    #[test]
    fn rejects_what_java_rejects() {
        let enc = |s: &str| ENGINE.encode(s.as_bytes());
        for bad in [
            String::new(),
            "v1 a b c d".to_owned(),             // not base64 (spaces)
            enc("v2 a b c d"),                   // unknown version
            enc("v1 a b c"),                     // four fields
            enc("v1 a b c    "),                 // trailing empties do not count
            enc(" v1 a b c d"),                  // leading empty is the version
            "djEgdCBiIDEgaWQ".to_owned() + "=x", // data after padding
            "a".to_owned(),                      // one char cannot be a unit
        ] {
            assert_eq!(RecallHandle::decode(&bad), Err(BadRecallHandle), "{bad:?}");
        }
    }

    #[test]
    fn extra_fields_ignored_empty_inner_fields_kept() {
        let enc = |s: &str| ENGINE.encode(s.as_bytes());
        let h = RecallHandle::decode(&enc("v1 a b 5 id extra more")).unwrap();
        assert_eq!(h, RecallHandle::new("a", "b", "5", "id"));
        // Java keeps inner empty strings: "v1  b c d" has an empty topic.
        let h = RecallHandle::decode(&enc("v1  b c d")).unwrap();
        assert_eq!(h, RecallHandle::new("", "b", "c", "d"));
    }

    #[test]
    fn timestamp_and_delete_key() {
        let h = RecallHandle::new("t", "b", "1700000000001", "id");
        assert_eq!(h.timestamp_ms(), Some(1_700_000_000_001));
        assert_eq!(RecallHandle::new("t", "b", "x", "id").timestamp_ms(), None);
        assert_eq!(delete_key("Topic", "ABC"), "Topic+ABC");
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = RecallHandle::decode(&s);
        }

        #[test]
        fn arbitrary_base64_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = RecallHandle::decode(&ENGINE.encode(&bytes));
        }

        #[test]
        fn roundtrip(topic in "[A-Za-z0-9_%|-]{1,64}", broker in "[A-Za-z0-9_-]{1,32}",
                     ts in any::<i64>(), id in "[0-9A-F]{32}") {
            let h = RecallHandle::new(topic, broker, ts.to_string(), id);
            let s = h.encode();
            prop_assert_eq!(RecallHandle::decode(&s), Ok(h.clone()));
            prop_assert_eq!(RecallHandle::decode(s.trim_end_matches('=')), Ok(h));
        }
    }
}
