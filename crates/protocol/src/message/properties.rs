//! The properties string: `name` U+0001 `value` U+0002, repeated (reference
//! 6.1). Parsing follows Java's `string2messageProperties` leniency and never
//! fails; encoding refuses nothing but callers check the stored-length limit.

use std::collections::HashMap;

use crate::error::{ProtocolError, Result};

/// Separates a property name from its value.
pub const NAME_VALUE_SEPARATOR: char = '\u{1}';
/// Terminates every name/value pair (including the last).
pub const PROPERTY_SEPARATOR: char = '\u{2}';
/// The stored PROPERTIES length is a signed 16-bit integer.
pub const MAX_PROPERTIES_LEN: usize = i16::MAX as usize;

/// Iterator over the well-formed pairs of a properties string, in order.
///
/// Rules (Java `string2messageProperties`): split on U+0002 (a missing
/// trailing separator is fine); split each segment at its first U+0001;
/// drop it if the name or the value is empty. The value may itself contain
/// U+0001. Duplicates are yielded as they come: the last one wins in a map.
#[derive(Debug, Clone)]
pub struct PropertiesIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for PropertiesIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            // Both separators are ASCII, so a matching byte is always a char
            // boundary; a byte scan beats `str::find` on these short pieces.
            let (segment, rest) = match byte_pos(self.rest, SEP_PROPERTY) {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, ""),
            };
            self.rest = rest;
            if let Some(i) = byte_pos(segment, SEP_NAME_VALUE) {
                let (name, value) = (&segment[..i], &segment[i + 1..]);
                if !name.is_empty() && !value.is_empty() {
                    return Some((name, value));
                }
            }
        }
        None
    }
}

const SEP_PROPERTY: u8 = PROPERTY_SEPARATOR as u8;
const SEP_NAME_VALUE: u8 = NAME_VALUE_SEPARATOR as u8;

fn byte_pos(s: &str, b: u8) -> Option<usize> {
    s.bytes().position(|c| c == b)
}

/// Pairs of `s`, in order; malformed segments are skipped.
pub fn iter(s: &str) -> PropertiesIter<'_> {
    PropertiesIter { rest: s }
}

/// The value of `name` in `s` without building a map (last occurrence wins,
/// as in a Java map).
pub fn get<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    iter(s).filter(|(n, _)| *n == name).map(|(_, v)| v).last()
}

/// Parses `s` into a map. Never fails.
pub fn decode(s: &str) -> HashMap<String, String> {
    let pairs = s.bytes().filter(|&b| b == SEP_PROPERTY).count();
    let mut map = HashMap::with_capacity(pairs.max(1));
    for (n, v) in iter(s) {
        map.insert(n.to_owned(), v.to_owned());
    }
    map
}

/// Appends one pair to `dst` in wire form. A `dst` whose last pair lacks
/// its separator (Java clients strip the trailing one) gets it first.
pub fn append(dst: &mut String, name: &str, value: &str) {
    dst.reserve(name.len() + value.len() + 3);
    if !dst.is_empty() && !dst.ends_with(PROPERTY_SEPARATOR) {
        dst.push(PROPERTY_SEPARATOR);
    }
    dst.push_str(name);
    dst.push(NAME_VALUE_SEPARATOR);
    dst.push_str(value);
    dst.push(PROPERTY_SEPARATOR);
}

/// Encodes pairs into a properties string. Names or values containing the
/// separator characters cannot round-trip; [`validate_pair`] reports them.
pub fn encode<I, K, V>(pairs: I) -> String
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut out = String::new();
    for (k, v) in pairs {
        append(&mut out, k.as_ref(), v.as_ref());
    }
    out
}

/// A copy of `s` with every `name` pair removed (malformed segments are
/// dropped too, which is what a Java map round trip does).
pub fn remove(s: &str, name: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (n, v) in iter(s) {
        if n != name {
            append(&mut out, n, v);
        }
    }
    out
}

/// A copy of `s` with `name` set to `value` (replacing earlier values).
pub fn set(s: &str, name: &str, value: &str) -> String {
    let mut out = remove(s, name);
    append(&mut out, name, value);
    out
}

/// Checks that a name/value pair survives a round trip: non-empty, and no
/// separator characters inside (a value may not contain U+0002; a name may
/// contain neither).
pub fn validate_pair(name: &str, value: &str) -> Result<()> {
    let bad_name =
        name.is_empty() || name.contains(NAME_VALUE_SEPARATOR) || name.contains(PROPERTY_SEPARATOR);
    if bad_name {
        return Err(ProtocolError::InvalidField {
            field: "properties",
            value: name.escape_debug().to_string(),
            reason: "property name is empty or contains a separator".into(),
        });
    }
    if value.is_empty() || value.contains(PROPERTY_SEPARATOR) {
        return Err(ProtocolError::InvalidField {
            field: "properties",
            value: name.escape_debug().to_string(),
            reason: "property value is empty or contains U+0002".into(),
        });
    }
    Ok(())
}

/// Refuses a properties string longer than the stored format can hold
/// (the broker answers MESSAGE_ILLEGAL for these).
pub fn check_len(s: &str) -> Result<()> {
    check_len_bytes(s.len())
}

/// [`check_len`] on a byte length.
pub fn check_len_bytes(len: usize) -> Result<()> {
    if len > MAX_PROPERTIES_LEN {
        return Err(ProtocolError::InvalidField {
            field: "properties",
            value: format!("{len} bytes"),
            reason: format!("longer than {MAX_PROPERTIES_LEN} bytes"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_after_a_stripped_trailing_separator() {
        // Java's messageProperties2String drops the last separator.
        let mut s = String::from("CORRELATION_ID\u{1}c-1");
        append(&mut s, "PUSH_REPLY_TIME", "5");
        assert_eq!(get(&s, "CORRELATION_ID"), Some("c-1"));
        assert_eq!(get(&s, "PUSH_REPLY_TIME"), Some("5"));
        let mut e = String::new();
        append(&mut e, "A", "1");
        append(&mut e, "B", "2");
        assert_eq!(e, "A\u{1}1\u{2}B\u{1}2\u{2}");
    }

    #[test]
    fn parses_like_java() {
        let s = "TAGS\u{1}a\u{2}KEYS\u{1}k1 k2\u{2}\u{2}x\u{2}\u{1}v\u{2}n\u{1}\u{2}TAGS\u{1}b\u{2}V\u{1}x\u{1}y";
        let pairs: Vec<_> = iter(s).collect();
        assert_eq!(
            pairs,
            vec![
                ("TAGS", "a"),
                ("KEYS", "k1 k2"),
                ("TAGS", "b"),
                ("V", "x\u{1}y")
            ]
        );
        let m = decode(s);
        assert_eq!(m.get("TAGS").map(String::as_str), Some("b"));
        assert_eq!(get(s, "TAGS"), Some("b"));
        assert_eq!(get(s, "n"), None);
        assert_eq!(m.len(), 3);
        // Multi-byte characters next to the separators.
        let u = "ключ\u{1}значение\u{2}é\u{1}ü\u{1}ß\u{2}日本\u{1}語";
        let pairs: Vec<_> = iter(u).collect();
        assert_eq!(
            pairs,
            vec![("ключ", "значение"), ("é", "ü\u{1}ß"), ("日本", "語")]
        );
    }

    #[test]
    fn encode_set_remove() {
        let s = encode([("A", "1"), ("B", "2")]);
        assert_eq!(s, "A\u{1}1\u{2}B\u{1}2\u{2}");
        let s2 = set(&s, "A", "3");
        assert_eq!(s2, "B\u{1}2\u{2}A\u{1}3\u{2}");
        assert_eq!(remove(&s2, "B"), "A\u{1}3\u{2}");
    }

    #[test]
    fn length_limit() {
        assert!(check_len_bytes(32767).is_ok());
        assert!(check_len_bytes(32768).is_err());
        assert!(validate_pair("a", "b\u{1}c").is_ok());
        assert!(validate_pair("a\u{1}", "b").is_err());
        assert!(validate_pair("a", "").is_err());
    }
}
