//! Typed custom headers (`extFields`): the `CommandHeader` trait, the lenient
//! field parsing shared by every header, and the header structs themselves
//! (one submodule per area, all re-exported here).
//!
//! Parsing follows what the Java server accepts (reference 1.3 and 14.1):
//! numbers are decimal text with surrounding whitespace ignored, booleans are
//! `true`/`false` in any case or `0`/`1`, and a blank numeric or boolean value
//! counts as absent. A missing required field is
//! [`ProtocolError::MissingField`]; an unparsable value is
//! [`ProtocolError::InvalidField`] naming the field and the value, so a server
//! can answer with a precise remark instead of dropping the connection.

use crate::command::RemotingCommand;
use crate::error::{ProtocolError, Result};
use crate::ext_fields::ExtFields;

#[macro_use]
mod macros;

pub mod admin;
pub mod client;
pub mod namesrv;
pub mod offset;
pub mod pop;
pub mod pull;
pub mod send;

pub use admin::*;
pub use client::*;
pub use namesrv::*;
pub use offset::*;
pub use pop::*;
pub use pull::*;
pub use send::*;

/// A custom header that travels as string pairs in `extFields`.
pub trait CommandHeader: Sized {
    /// Adds this header's fields to `ext` (values as strings, `None` omitted).
    fn write_ext(&self, ext: &mut ExtFields);
    /// Reads the header from `ext`; unknown keys are ignored.
    fn read_ext(ext: &ExtFields) -> Result<Self, ProtocolError>;
}

impl RemotingCommand {
    /// Decodes this command's `extFields` as header `H`.
    pub fn decode_header<H: CommandHeader>(&self) -> Result<H, ProtocolError> {
        H::read_ext(&self.ext_fields)
    }

    /// Writes `h` into this command's `extFields` (existing keys not in `h`
    /// are kept, so extra keys such as `MSG_REGION` can be added before or after).
    pub fn with_header<H: CommandHeader>(mut self, h: &H) -> Self {
        h.write_ext(&mut self.ext_fields);
        self
    }
}

/// A scalar that can be a header field: parsed leniently from text and
/// emitted as the text Java would produce.
pub trait HeaderValue: Sized {
    /// Parses `raw`, the value received under key `field`.
    fn parse_value(field: &'static str, raw: &str) -> Result<Self>;
    /// Appends the wire text of this value to `out`.
    fn write_value(&self, out: &mut String);
    /// Whether a blank value means "absent" (true for numbers and booleans,
    /// which Java's reflective decoder skips when they fail to parse).
    const BLANK_IS_ABSENT: bool;
}

impl HeaderValue for String {
    fn parse_value(_field: &'static str, raw: &str) -> Result<Self> {
        Ok(raw.to_owned())
    }
    fn write_value(&self, out: &mut String) {
        out.push_str(self);
    }
    const BLANK_IS_ABSENT: bool = false;
}

fn invalid(field: &'static str, raw: &str, reason: impl Into<String>) -> ProtocolError {
    ProtocolError::InvalidField {
        field,
        value: raw.to_owned(),
        reason: reason.into(),
    }
}

macro_rules! integer_value {
    ($t:ty, $what:literal) => {
        impl HeaderValue for $t {
            fn parse_value(field: &'static str, raw: &str) -> Result<Self> {
                raw.trim()
                    .parse::<$t>()
                    .map_err(|e| invalid(field, raw, format!("not a {}: {e}", $what)))
            }
            fn write_value(&self, out: &mut String) {
                out.push_str(itoa::Buffer::new().format(*self));
            }
            const BLANK_IS_ABSENT: bool = true;
        }
    };
}

integer_value!(i32, "32-bit integer");
integer_value!(i64, "64-bit integer");

impl HeaderValue for bool {
    fn parse_value(field: &'static str, raw: &str) -> Result<Self> {
        let t = raw.trim();
        // cpp and JS clients write booleans as 0/1 (reference 14.1).
        if t.eq_ignore_ascii_case("true") || t == "1" {
            Ok(true)
        } else if t.eq_ignore_ascii_case("false") || t == "0" {
            Ok(false)
        } else {
            Err(invalid(field, raw, "expected true, false, 1 or 0"))
        }
    }
    fn write_value(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" });
    }
    const BLANK_IS_ABSENT: bool = true;
}

/// Reads an optional field; a blank number/boolean counts as absent.
pub fn optional<T: HeaderValue>(ext: &ExtFields, key: &'static str) -> Result<Option<T>> {
    match ext.get(key) {
        None => Ok(None),
        Some(raw) if T::BLANK_IS_ABSENT && raw.trim().is_empty() => Ok(None),
        Some(raw) => T::parse_value(key, raw).map(Some),
    }
}

/// Reads a required field.
pub fn required<T: HeaderValue>(ext: &ExtFields, key: &'static str) -> Result<T> {
    match ext.get(key) {
        None => Err(ProtocolError::MissingField(key)),
        Some(raw) if T::BLANK_IS_ABSENT && raw.trim().is_empty() => {
            Err(invalid(key, raw, "empty value"))
        }
        Some(raw) => T::parse_value(key, raw),
    }
}

/// Writes one field's text under `key`.
pub fn put<T: HeaderValue>(ext: &mut ExtFields, key: &str, value: &T) {
    ext.insert_with(key, |out| value.write_value(out));
}

command_header! {
    /// Fields inherited from Java's `RpcRequestHeader` (`bname`, `ns`, `nsd`,
    /// `oway`) and `TopicRequestHeader` (`lo`), all optional (reference 4.0).
    /// Embedded as `rpc` in every header whose Java class inherits them.
    pub struct RpcFields {
        /// `bname`: the target broker name.
        opt broker_name: String => "bname",
        /// `ns`: namespace.
        opt namespace: String => "ns",
        /// `nsd`: whether names are already namespaced.
        opt namespaced: bool => "nsd",
        /// `oway`: oneway hint.
        opt oneway: bool => "oway",
        /// `lo`: logical (static-topic) queue addressing; only meaningful for
        /// headers that extend `TopicRequestHeader`.
        opt logical: bool => "lo",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(pairs: &[(&str, &str)]) -> ExtFields {
        pairs.iter().copied().collect()
    }

    #[test]
    fn numbers_are_trimmed_and_blank_is_absent() {
        let e = ext(&[("a", " 42 "), ("b", "  "), ("c", "-7")]);
        assert_eq!(required::<i32>(&e, "a"), Ok(42));
        assert_eq!(optional::<i64>(&e, "b"), Ok(None));
        assert_eq!(optional::<i64>(&e, "c"), Ok(Some(-7)));
        assert_eq!(optional::<String>(&e, "b"), Ok(Some("  ".to_owned())));
        assert!(matches!(
            required::<i32>(&e, "b"),
            Err(ProtocolError::InvalidField { field: "b", .. })
        ));
        assert_eq!(
            required::<i32>(&e, "zz"),
            Err(ProtocolError::MissingField("zz"))
        );
    }

    #[test]
    fn int_overflow_is_invalid() {
        let e = ext(&[("q", "2147483648")]);
        match required::<i32>(&e, "q") {
            Err(ProtocolError::InvalidField { field, value, .. }) => {
                assert_eq!(field, "q");
                assert_eq!(value, "2147483648");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(required::<i64>(&e, "q"), Ok(2147483648));
    }

    #[test]
    fn booleans_accept_words_and_digits() {
        for (raw, want) in [
            ("true", true),
            ("TRUE", true),
            (" True ", true),
            ("1", true),
            ("false", false),
            ("False", false),
            ("0", false),
        ] {
            let e = ext(&[("k", raw)]);
            assert_eq!(required::<bool>(&e, "k"), Ok(want), "raw {raw:?}");
        }
        let e = ext(&[("k", "yes")]);
        assert!(matches!(
            required::<bool>(&e, "k"),
            Err(ProtocolError::InvalidField { field: "k", .. })
        ));
    }

    #[test]
    fn rpc_fields_round_trip_and_skip_none() {
        let r = RpcFields {
            broker_name: Some("broker-a".into()),
            namespaced: Some(false),
            ..Default::default()
        };
        let mut m = ExtFields::new();
        r.write_ext(&mut m);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("bname"), Some("broker-a"));
        assert_eq!(m.get("nsd"), Some("false"));
        assert_eq!(RpcFields::read_ext(&m), Ok(r));
    }
}
