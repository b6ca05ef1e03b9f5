//! The fastjson 1.x JSON dialect spoken by Java RocketMQ: reading it (bare
//! numeric keys, object literals as keys, nulls) into standard JSON for serde,
//! and writing bodies the way fastjson writes them (compact, sorted keys,
//! bare numeric keys, `MessageQueue` objects as keys).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Write;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::{ProtocolError, Result};

/// Deepest nesting accepted while converting; deeper input is rejected
/// instead of risking the stack (serde_json itself stops at 128).
pub const MAX_DEPTH: usize = 100;

/// Which flavour of JSON to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Plain fastjson output: integer map keys unquoted, non-ASCII raw UTF-8.
    #[default]
    Fastjson,
    /// fastjson with BrowserCompatible/QuoteFieldNames: integer map keys
    /// quoted, non-ASCII escaped as `\uXXXX`. Valid standard JSON.
    Standard,
}

/// Map keys starting with this marker carry their own JSON text (an integer
/// or an object) that the writer emits without quotes. It begins with NUL,
/// which no valid topic, group or address contains, and is long enough that
/// a peer-supplied key cannot match it by accident.
const RAW_KEY_PREFIX: &str = "\u{0}apogee-raw-key\u{0}";

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Rewrites fastjson text into standard JSON: non-string object keys become
/// strings holding the key's compact JSON text, bare identifiers and
/// single-quoted strings are quoted, `"k":null` members are dropped (fastjson
/// never writes them and Java treats them as absent), whitespace is removed.
pub fn to_standard_json(input: &[u8]) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(input)
        .map_err(|e| ProtocolError::InvalidBody(format!("body is not UTF-8: {e}")))?;
    let bytes = text.as_bytes();
    let mut conv = Converter {
        src: bytes,
        pos: 0,
        out: Vec::with_capacity(bytes.len() + 16),
    };
    // A UTF-8 byte-order mark is tolerated, as Java readers do.
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        conv.pos = 3;
    }
    conv.skip_ws();
    if conv.pos >= bytes.len() {
        return Err(conv.err("empty body"));
    }
    conv.value(0)?;
    conv.skip_ws();
    if conv.pos != bytes.len() {
        return Err(conv.err("trailing characters after the JSON value"));
    }
    Ok(conv.out)
}

/// Parses a body in either dialect into `T`.
pub fn from_slice<T: DeserializeOwned>(input: &[u8]) -> Result<T> {
    let std_json = to_standard_json(input)?;
    serde_json::from_slice(&std_json)
        .map_err(|e| ProtocolError::InvalidBody(format!("{}: {e}", short_type_name::<T>())))
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

struct Converter<'a> {
    src: &'a [u8],
    pos: usize,
    out: Vec<u8>,
}

impl Converter<'_> {
    fn err(&self, what: &str) -> ProtocolError {
        ProtocolError::InvalidBody(format!("{what} at byte {}", self.pos))
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b) = self.peek() {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn expect(&mut self, b: u8, what: &str) -> Result<()> {
        self.skip_ws();
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn value(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(self.err("JSON nested too deeply"));
        }
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.dq_string(),
            Some(b'\'') => self.sq_string(),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true"),
            Some(b'f') => self.literal("false"),
            Some(b'n') => self.literal("null"),
            Some(_) => Err(self.err("unexpected character")),
            None => Err(self.err("unexpected end of body")),
        }
    }

    fn literal(&mut self, word: &str) -> Result<()> {
        let end = self.pos + word.len();
        if self.src.get(self.pos..end) == Some(word.as_bytes()) {
            self.out.extend_from_slice(word.as_bytes());
            self.pos = end;
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn number(&mut self) -> Result<()> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E') {
                self.pos += 1;
            } else {
                break;
            }
        }
        let tok = &self.src[start..self.pos];
        // fastjson may suffix longs with L in some modes; accept and drop it.
        if matches!(self.peek(), Some(b'L' | b'l')) {
            self.pos += 1;
        }
        if tok == b"-" {
            return Err(self.err("invalid number"));
        }
        self.out.extend_from_slice(tok);
        Ok(())
    }

    /// Copies a double-quoted string verbatim; escapes are validated later by serde_json.
    fn dq_string(&mut self) -> Result<()> {
        let start = self.pos;
        self.pos += 1;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    self.out.extend_from_slice(&self.src[start..self.pos]);
                    return Ok(());
                }
                Some(b'\\') => self.pos += 2,
                Some(_) => self.pos += 1,
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    /// fastjson's parser accepts 'single-quoted' strings; re-quote them.
    fn sq_string(&mut self) -> Result<()> {
        self.pos += 1;
        self.out.push(b'"');
        loop {
            match self.peek() {
                Some(b'\'') => {
                    self.pos += 1;
                    self.out.push(b'"');
                    return Ok(());
                }
                Some(b'\\') => {
                    match self.src.get(self.pos + 1) {
                        Some(b'\'') => self.out.push(b'\''),
                        Some(&c) => {
                            self.out.push(b'\\');
                            self.out.push(c);
                        }
                        None => return Err(self.err("unterminated string")),
                    }
                    self.pos += 2;
                }
                Some(b'"') => {
                    self.out.extend_from_slice(b"\\\"");
                    self.pos += 1;
                }
                Some(c) => {
                    self.out.push(c);
                    self.pos += 1;
                }
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<()> {
        self.pos += 1;
        self.out.push(b'[');
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.out.push(b']');
            return Ok(());
        }
        loop {
            self.value(depth)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                    // Tolerate a trailing comma, as fastjson does.
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        self.out.push(b']');
                        return Ok(());
                    }
                    self.out.push(b',');
                }
                Some(b']') => {
                    self.pos += 1;
                    self.out.push(b']');
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']' in array")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<()> {
        self.pos += 1;
        self.out.push(b'{');
        let mut members = 0usize;
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    self.out.push(b'}');
                    return Ok(());
                }
                None => return Err(self.err("unterminated object")),
                _ => {}
            }
            let mark = self.out.len();
            if members > 0 {
                self.out.push(b',');
            }
            self.key(depth)?;
            self.expect(b':', "expected ':' after object key")?;
            self.out.push(b':');
            let value_start = self.out.len();
            self.value(depth)?;
            if &self.out[value_start..] == b"null" {
                self.out.truncate(mark);
            } else {
                members += 1;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.err("expected ',' or '}' in object")),
            }
        }
    }

    fn key(&mut self, depth: usize) -> Result<()> {
        match self.peek() {
            Some(b'"') => self.dq_string(),
            Some(b'\'') => self.sq_string(),
            Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                let start = self.pos;
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                let ident = &self.src[start..self.pos];
                self.out.push(b'"');
                self.out.extend_from_slice(ident);
                self.out.push(b'"');
                Ok(())
            }
            _ => {
                // Number, object or array in key position: convert it, then
                // wrap its (compact, standard) text in a JSON string.
                let start = self.out.len();
                self.value(depth)?;
                let raw = self.out.split_off(start);
                let raw = String::from_utf8(raw)
                    .map_err(|_| self.err("object key is not valid UTF-8"))?;
                write_json_string(&mut self.out, &raw, Dialect::Fastjson);
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Serializes `value` in the given dialect: compact, keys sorted like
/// fastjson's MapSortField, raw (unquoted) keys for the maps marked with
/// [`int_key_map`] or [`mq_key_map`].
pub fn to_vec<T: Serialize + ?Sized>(value: &T, dialect: Dialect) -> Vec<u8> {
    match serde_json::to_value(value) {
        Ok(v) => {
            let mut out = Vec::with_capacity(256);
            write_value(&mut out, &v, dialect);
            out
        }
        // Our body types only have string or raw-marked keys, so this cannot
        // happen for them; an empty object is what Java would parse as "all defaults".
        Err(_) => b"{}".to_vec(),
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value, dialect: Dialect) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_json_string(out, s, dialect),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, dialect);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            let mut first = true;
            for (k, val) in entries {
                // fastjson omits null values.
                if val.is_null() {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                write_key(out, k, dialect);
                out.push(b':');
                write_value(out, val, dialect);
            }
            out.push(b'}');
        }
    }
}

fn write_key(out: &mut Vec<u8>, key: &str, dialect: Dialect) {
    match key.strip_prefix(RAW_KEY_PREFIX) {
        Some(raw) => {
            let is_int = !raw.is_empty() && raw.parse::<i64>().is_ok();
            if is_int && dialect == Dialect::Standard {
                write_json_string(out, raw, dialect);
            } else {
                out.extend_from_slice(raw.as_bytes());
            }
        }
        None => write_json_string(out, key, dialect),
    }
}

fn write_json_string(out: &mut Vec<u8>, s: &str, dialect: Dialect) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) > 0x7e && dialect == Dialect::Standard => {
                // BrowserCompatible escapes everything outside ASCII, as UTF-16 units.
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

// ---------------------------------------------------------------------------
// serde helpers
// ---------------------------------------------------------------------------

/// `#[serde(with = "int_key_map")]` for maps with integer keys
/// (`HashMap<Long, String>` in Java): written bare (`{0:"a"}`) in the
/// fastjson dialect, quoted in the standard one; read from either.
pub mod int_key_map {
    use super::*;

    pub fn serialize<K, V, S>(map: &BTreeMap<K, V>, s: S) -> std::result::Result<S::Ok, S::Error>
    where
        K: Display,
        V: Serialize,
        S: Serializer,
    {
        s.collect_map(map.iter().map(|(k, v)| (format!("{RAW_KEY_PREFIX}{k}"), v)))
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> std::result::Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        BTreeMap::<K, V>::deserialize(d)
    }
}

/// `#[serde(with = "mq_key_map")]` for `Map<MessageQueue, V>`: written as
/// fastjson does, with the queue's object literal as the key
/// (`{{"brokerName":"b","queueId":0,"topic":"T"}:…}`), which is the only form
/// Java admin tools parse; read back from the converted (stringified) keys.
pub mod mq_key_map {
    use super::*;
    use crate::body::MessageQueue;

    pub fn serialize<V, S>(
        map: &BTreeMap<MessageQueue, V>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error>
    where
        V: Serialize,
        S: Serializer,
    {
        s.collect_map(map.iter().map(|(k, v)| (raw_mq_key(k), v)))
    }

    pub fn deserialize<'de, V, D>(d: D) -> std::result::Result<BTreeMap<MessageQueue, V>, D::Error>
    where
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        let by_text = BTreeMap::<String, V>::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (k, v) in by_text {
            let mq: MessageQueue = serde_json::from_str(&k).map_err(|e| {
                serde::de::Error::custom(format!("invalid MessageQueue map key {k:?}: {e}"))
            })?;
            out.insert(mq, v);
        }
        Ok(out)
    }

    /// Key order brokerName, queueId, topic: fastjson's sorted output, which
    /// the Go client's string-splitting parser depends on.
    fn raw_mq_key(mq: &MessageQueue) -> String {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"{\"brokerName\":");
        write_json_string(&mut out, &mq.broker_name, Dialect::Fastjson);
        let _ = write!(out, ",\"queueId\":{},\"topic\":", mq.queue_id);
        write_json_string(&mut out, &mq.topic, Dialect::Fastjson);
        out.push(b'}');
        let mut key = String::with_capacity(out.len() + RAW_KEY_PREFIX.len());
        key.push_str(RAW_KEY_PREFIX);
        key.push_str(&String::from_utf8_lossy(&out));
        key
    }
}

/// Lenient scalar readers: accept what fastjson coerces (numbers as strings,
/// booleans as `0`/`1`/`"true"`, nulls as the default), for fields that
/// non-Java clients fill loosely.
pub mod lenient {
    use super::*;
    use serde::de::Error;

    fn number_from_value<E: Error>(v: &Value, what: &str) -> std::result::Result<i64, E> {
        match v {
            Value::Null => Ok(0),
            Value::Bool(b) => Ok(i64::from(*b)),
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_u64().map(|u| u as i64))
                .or_else(|| n.as_f64().map(|f| f as i64))
                .ok_or_else(|| E::custom(format!("{what} out of range: {n}"))),
            Value::String(s) => {
                let t = s.trim();
                if t.is_empty() {
                    return Ok(0);
                }
                t.parse::<i64>()
                    .or_else(|_| t.parse::<f64>().map(|f| f as i64))
                    .map_err(|_| E::custom(format!("expected {what}, got string {s:?}")))
            }
            other => Err(E::custom(format!("expected {what}, got {other}"))),
        }
    }

    pub fn i64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
        let v = Value::deserialize(d)?;
        number_from_value(&v, "a long")
    }

    pub fn i32<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<i32, D::Error> {
        let v = Value::deserialize(d)?;
        let n = number_from_value::<D::Error>(&v, "an int")?;
        i32::try_from(n).map_err(|_| D::Error::custom(format!("int out of range: {n}")))
    }

    /// A set of ints whose items may be numbers or numeric strings (the Go
    /// client writes `codeSet` as `["2598919"]`; fastjson converts them).
    pub fn i32_set<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<std::collections::BTreeSet<i32>, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(Default::default()),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    let n = number_from_value::<D::Error>(v, "an int")?;
                    i32::try_from(n).map_err(|_| D::Error::custom(format!("int out of range: {n}")))
                })
                .collect(),
            other => Err(D::Error::custom(format!(
                "expected an array of ints, got {other}"
            ))),
        }
    }

    pub fn f64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(0.0),
            Value::Number(n) => Ok(n.as_f64().unwrap_or(0.0)),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| D::Error::custom(format!("expected a double, got {s:?}"))),
            other => Err(D::Error::custom(format!("expected a double, got {other}"))),
        }
    }

    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(b),
            Value::Number(n) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "y" | "yes" => Ok(true),
                "false" | "0" | "" | "n" | "no" => Ok(false),
                _ => Err(D::Error::custom(format!("expected a boolean, got {s:?}"))),
            },
            other => Err(D::Error::custom(format!("expected a boolean, got {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(s: &str) -> String {
        String::from_utf8(to_standard_json(s.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn bare_int_keys_are_quoted() {
        assert_eq!(
            conv(r#"{"a":{0:"x", 1 : "y"}}"#),
            r#"{"a":{"0":"x","1":"y"}}"#
        );
    }

    #[test]
    fn object_keys_become_strings() {
        assert_eq!(
            conv(r#"{{"brokerName":"b","queueId":0,"topic":"T"}:5}"#),
            r#"{"{\"brokerName\":\"b\",\"queueId\":0,\"topic\":\"T\"}":5}"#
        );
    }

    #[test]
    fn nulls_dropped_and_quotes_fixed() {
        assert_eq!(conv(r#"{"a":null,"b":1}"#), r#"{"b":1}"#);
        assert_eq!(conv(r#"{"b":1,"a":null}"#), r#"{"b":1}"#);
        assert_eq!(conv(r#"{'k':'v"q'}"#), r#"{"k":"v\"q"}"#);
        assert_eq!(conv(r#"{ident:[1,2,]}"#), r#"{"ident":[1,2]}"#);
        assert_eq!(conv(r#"[null,1]"#), r#"[null,1]"#);
    }

    #[test]
    fn errors_not_panics() {
        for bad in [
            "", "{", "[", "{\"a\"", "{\"a\":", "{\"a\":1", "\"abc", "\"ab\\", "{1:}", "tru", "-",
            "{}x", "{,}", "[1 2]", "{'a", "'\\",
        ] {
            assert!(to_standard_json(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(10_000);
        assert!(to_standard_json(deep.as_bytes()).is_err());
        let deep_keys = "{".repeat(10_000);
        assert!(to_standard_json(deep_keys.as_bytes()).is_err());
        assert!(to_standard_json(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn standard_dialect_escapes_non_ascii() {
        let mut out = Vec::new();
        write_json_string(&mut out, "é😀", Dialect::Standard);
        assert_eq!(out, br#""\u00e9\ud83d\ude00""#);
        out.clear();
        write_json_string(&mut out, "é", Dialect::Fastjson);
        assert_eq!(out, "\"é\"".as_bytes());
    }
}
