//! A direct reader for the JSON header of a frame, the hottest parse in the
//! system (every request and response has one).
//!
//! It handles the shapes peers really send: one object with scalar values,
//! `extFields` an object of strings, numbers, booleans or nulls. Anything
//! else it declines (`None`): nested values inside `extFields`, floats,
//! duplicate keys, invalid text of any kind. The caller then runs the
//! general serde reader, which gives the same result for every input this
//! one accepts (a test checks that) and the precise error for bad input.

use crate::command::{LanguageCode, RemotingCommand, SerializeType};
use crate::ext_fields::ExtFields;

/// The header fields read here; the rest of the command is filled in by
/// the caller.
pub(crate) fn parse(input: &[u8]) -> Option<RemotingCommand> {
    // Checked once here, so string runs below are sliced without
    // re-validating each one.
    let text = std::str::from_utf8(input).ok()?;
    let mut p = Parser {
        s: input,
        text,
        i: 0,
    };
    let mut cmd = RemotingCommand {
        serialize_type: SerializeType::Json,
        ..Default::default()
    };
    let mut seen = 0u8;
    let mut key = String::new();
    p.ws();
    p.eat(b'{')?;
    p.ws();
    if !p.eat_if(b'}') {
        loop {
            p.ws();
            key.clear();
            p.string_into(&mut key)?;
            p.ws();
            p.eat(b':')?;
            p.ws();
            let bit = match key.as_str() {
                "code" => {
                    cmd.code = p.lenient_i32()?;
                    1
                }
                "version" => {
                    cmd.version = p.lenient_i32()?;
                    2
                }
                "opaque" => {
                    cmd.opaque = p.lenient_i32()?;
                    4
                }
                "flag" => {
                    cmd.flag = p.lenient_i32()?;
                    8
                }
                "language" => {
                    if !p.null() {
                        let mut name = String::new();
                        p.string_into(&mut name)?;
                        cmd.language = LanguageCode::from_name(&name);
                    }
                    16
                }
                "remark" => {
                    if !p.null() {
                        let mut r = String::new();
                        p.string_into(&mut r)?;
                        cmd.remark = Some(r);
                    }
                    32
                }
                "extFields" => {
                    if !p.null() {
                        cmd.ext_fields = p.ext_fields()?;
                    }
                    64
                }
                _ => {
                    p.skip_scalar()?;
                    0
                }
            };
            if seen & bit != 0 {
                return None; // serde reports the duplicate
            }
            seen |= bit;
            p.ws();
            if p.eat_if(b',') {
                continue;
            }
            p.eat(b'}')?;
            break;
        }
    }
    p.ws();
    (p.i == input.len()).then_some(cmd)
}

/// Bytes that end a plain run inside a JSON string.
static STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

struct Parser<'a> {
    s: &'a [u8],
    /// `s` as text (already validated).
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.eat_if(b).then_some(())
    }

    fn eat_if(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.s.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    fn null(&mut self) -> bool {
        self.literal(b"null")
    }

    /// Appends the unescaped text of a JSON string to `out`.
    fn string_into(&mut self, out: &mut String) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let start = self.i;
            // Copy the run up to the next quote, backslash or control byte.
            let rest = self.s.get(self.i..).unwrap_or_default();
            self.i += rest
                .iter()
                .position(|&b| STOP[b as usize])
                .unwrap_or(rest.len());
            // Runs end at ASCII bytes, so both ends are char boundaries.
            out.push_str(self.text.get(start..self.i)?);
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                b'\\' => {
                    self.i += 1;
                    let c = match self.peek()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            self.i += 1;
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                // A high surrogate must be followed by a low one.
                                if !self.literal(b"\\u") {
                                    return None;
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            out.push(char::from_u32(code)?);
                            continue;
                        }
                        _ => return None,
                    };
                    self.i += 1;
                    out.push(c);
                }
                _ => return None, // raw control character
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.s.get(self.i..self.i + 4)?;
        let mut v = 0u32;
        for &d in digits {
            v = v * 16 + (d as char).to_digit(16)?;
        }
        self.i += 4;
        Some(v)
    }

    /// An integer token (no fraction or exponent) as its value.
    fn integer(&mut self) -> Option<Integer> {
        let start = self.i;
        let neg = self.eat_if(b'-');
        let digits_start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        let digits = &self.s[digits_start..self.i];
        if digits.is_empty()
            || (digits.len() > 1 && digits[0] == b'0')
            || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        let text = self.text.get(start..self.i)?;
        if neg {
            // serde_json reads `-0` as a float (-0.0); leave it to that path.
            text.parse::<i64>()
                .ok()
                .filter(|&v| v != 0)
                .map(Integer::Signed)
        } else {
            text.parse::<u64>().ok().map(Integer::Unsigned)
        }
    }

    /// A header int: a JSON integer, a numeric string or null (0).
    fn lenient_i32(&mut self) -> Option<i32> {
        match self.peek()? {
            b'n' => self.null().then_some(0),
            b'"' => {
                let mut s = String::new();
                self.string_into(&mut s)?;
                crate::command::int_from_text(&s)
            }
            _ => match self.integer()? {
                Integer::Signed(v) => Some(v as i32),
                Integer::Unsigned(v) => i64::try_from(v).ok().map(|v| v as i32),
            },
        }
    }

    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string_into(&mut String::new()),
            b't' => self.literal(b"true").then_some(()),
            b'f' => self.literal(b"false").then_some(()),
            b'n' => self.null().then_some(()),
            _ => self.integer().map(|_| ()),
        }
    }

    fn ext_fields(&mut self) -> Option<ExtFields> {
        let mut ext = ExtFields::with_capacity(16, self.s.len().saturating_sub(self.i));
        let mut key = String::new();
        self.eat(b'{')?;
        self.ws();
        if self.eat_if(b'}') {
            return Some(ext);
        }
        loop {
            self.ws();
            key.clear();
            self.string_into(&mut key)?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            // The value goes straight into the map's buffer.
            ext.try_insert_with(&key, |val| match self.peek()? {
                b'"' => self.string_into(val).map(|()| true),
                b't' => {
                    self.literal(b"true").then_some(())?;
                    val.push_str("true");
                    Some(true)
                }
                b'f' => {
                    self.literal(b"false").then_some(())?;
                    val.push_str("false");
                    Some(true)
                }
                b'n' => self.null().then_some(false),
                _ => {
                    let mut buf = itoa::Buffer::new();
                    val.push_str(match self.integer()? {
                        Integer::Signed(v) => buf.format(v),
                        Integer::Unsigned(v) => buf.format(v),
                    });
                    Some(true)
                }
            })?;
            self.ws();
            if self.eat_if(b',') {
                continue;
            }
            self.eat(b'}')?;
            return Some(ext);
        }
    }
}

enum Integer {
    Signed(i64),
    Unsigned(u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whatever the fast reader accepts, the general reader reads the same.
    fn agrees(input: &[u8]) -> bool {
        match parse(input) {
            None => true,
            Some(fast) => {
                RemotingCommand::decode_json_header_general(input)
                    .ok()
                    .as_ref()
                    == Some(&fast)
            }
        }
    }

    #[test]
    fn common_headers_take_the_fast_path_and_agree() {
        let cases: &[&str] = &[
            r#"{"code":310,"extFields":{"a":"pg","b":"T","e":"3","i":"KEYS\u0001k\u0002","m":"false"},"flag":0,"language":"JAVA","opaque":7,"serializeTypeCurrentRPC":"JSON","version":401}"#,
            r#" { "code" : "11" , "language" : "CPP", "flag":1, "remark":"a \"q\" \\ \/ \b\f\n\r\t é 😀 \ud83d\ude00", "extFields": {"d":4,"k":false,"t":true,"x":null,"n":-12,"u":18446744073709551615} } "#,
            r#"{}"#,
            r#"{"code":null,"language":null,"remark":null,"extFields":null,"other":"x","z":1}"#,
            r#"{"extFields":{"k":"1","k":"2","j":"v","k":null}}"#,
            r#"{"code":2147483648,"opaque":-2147483649}"#,
        ];
        for c in cases {
            assert!(parse(c.as_bytes()).is_some(), "fast path declined {c}");
            assert!(agrees(c.as_bytes()), "readers disagree on {c}");
        }
    }

    #[test]
    fn unusual_shapes_are_left_to_the_general_reader() {
        let cases: &[&str] = &[
            r#"{"code":1.5}"#,
            r#"{"code":-0}"#,
            r#"{"code":1,"code":2}"#,
            r#"{"extFields":{"k":{"n":[1]}}}"#,
            r#"{"extFields":{"k":1e3}}"#,
            r#"{"extFields":{"k":-0}}"#,
            r#"{"remark":"\ud800"}"#,
            r#"{"remark":"\udc00x"}"#,
            r#"{"remark":"tab	raw"}"#,
            r#"{"code":01}"#,
            r#"{"code":99999999999999999999999}"#,
            r#"{"nested":{"a":1}}"#,
            r#"{"code":1} x"#,
            r#"{"code":1,}"#,
            r#"{"code":true}"#,
            r#"{"language":5}"#,
            r#"[1]"#,
            r#""#,
        ];
        for c in cases {
            assert!(parse(c.as_bytes()).is_none(), "fast path accepted {c}");
        }
        assert!(parse(b"{\"remark\":\"\xff\"}").is_none());
    }

    fn json_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
            "[a-zA-Z0-9 %@|]{0,12}".prop_map(|s| format!("\"{s}\"")),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("null".to_owned()),
            Just("1.25".to_owned()),
            Just("{\"x\":[1,\"y\"]}".to_owned()),
        ]
    }

    fn header() -> impl Strategy<Value = String> {
        let ext = prop::collection::vec(("[a-zA-Z]{1,6}", json_value()), 0..8).prop_map(|kv| {
            let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        });
        let field = prop_oneof![
            json_value().prop_map(|v| format!("\"code\":{v}")),
            json_value().prop_map(|v| format!("\"opaque\":{v}")),
            json_value().prop_map(|v| format!("\"flag\":{v}")),
            json_value().prop_map(|v| format!("\"language\":{v}")),
            json_value().prop_map(|v| format!("\"remark\":{v}")),
            json_value().prop_map(|v| format!("\"serializeTypeCurrentRPC\":{v}")),
            ext.prop_map(|e| format!("\"extFields\":{e}")),
        ];
        (prop::collection::vec(field, 0..7), " {0,2}")
            .prop_map(|(fields, ws)| format!("{ws}{{{}}}{ws}", fields.join(&format!(",{ws}"))))
    }

    /// Values every peer sends; the fast reader must take all of these.
    fn plain_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
            (1..i64::MAX).prop_map(|n| n.to_string()),
            (i64::MIN..0).prop_map(|n| n.to_string()),
            Just("true".to_owned()),
            Just("null".to_owned()),
        ]
    }

    fn plain_header() -> impl Strategy<Value = String> {
        (
            any::<i32>(),
            any::<i32>(),
            prop::option::of(any::<String>()),
            prop::collection::vec(("[a-zA-Z]{1,6}", plain_value()), 0..12),
        )
            .prop_map(|(code, opaque, remark, ext)| {
                let ext: Vec<String> = ext.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                let remark = remark
                    .map(|r| format!(",\"remark\":{}", serde_json::to_string(&r).unwrap()))
                    .unwrap_or_default();
                format!(
                    "{{\"code\":{code},\"extFields\":{{{}}},\"flag\":1,\"language\":\"GO\",\"opaque\":{opaque}{remark},\"version\":317}}",
                    ext.join(",")
                )
            })
    }

    proptest! {
        #[test]
        fn plain_headers_take_the_fast_path(h in plain_header()) {
            prop_assert!(parse(h.as_bytes()).is_some(), "fast path declined {}", h);
            prop_assert!(agrees(h.as_bytes()), "readers disagree on {}", h);
        }

        #[test]
        fn generated_headers_agree(h in header()) {
            prop_assert!(agrees(h.as_bytes()), "readers disagree on {}", h);
        }

        #[test]
        fn mutated_headers_agree(h in header(), at in any::<prop::sample::Index>(), b in any::<u8>()) {
            let mut bytes = h.into_bytes();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            prop_assert!(agrees(&bytes), "readers disagree on {:?}", String::from_utf8_lossy(&bytes));
        }
    }
}
