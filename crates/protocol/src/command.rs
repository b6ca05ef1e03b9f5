//! `RemotingCommand`: one request or response, and its two header
//! serializations (JSON and the ROCKETMQ binary form).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;

use crate::error::{ProtocolError, Result};
use crate::ext_fields::{put_json_str, ExtFields};

/// Flag bit 0: the frame is a response.
pub const FLAG_RESPONSE: i32 = 0x1;
/// Flag bit 1: the request expects no response.
pub const FLAG_ONEWAY: i32 = 0x2;

/// Version ordinal we put in frames we emit: 4.9.4 (`V4_9_4`), whose
/// behaviour (standard route JSON, RUST language code) every client of the
/// last years understands.
pub const CURRENT_VERSION: i32 = 401;

/// How the header of a frame is serialized (high byte of the header-length word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum SerializeType {
    #[default]
    Json,
    RocketMq,
}

impl SerializeType {
    pub fn code(self) -> u8 {
        match self {
            SerializeType::Json => 0,
            SerializeType::RocketMq => 1,
        }
    }

    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            0 => Ok(SerializeType::Json),
            1 => Ok(SerializeType::RocketMq),
            other => Err(ProtocolError::UnknownSerializeType(other)),
        }
    }
}

/// The sender's implementation language (`LanguageCode.java`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum LanguageCode {
    #[default]
    Java,
    Cpp,
    Dotnet,
    Python,
    Delphi,
    Erlang,
    Ruby,
    Other,
    Http,
    Go,
    Php,
    Oms,
    Rust,
    NodeJs,
}

const LANGUAGES: [(LanguageCode, &str); 14] = [
    (LanguageCode::Java, "JAVA"),
    (LanguageCode::Cpp, "CPP"),
    (LanguageCode::Dotnet, "DOTNET"),
    (LanguageCode::Python, "PYTHON"),
    (LanguageCode::Delphi, "DELPHI"),
    (LanguageCode::Erlang, "ERLANG"),
    (LanguageCode::Ruby, "RUBY"),
    (LanguageCode::Other, "OTHER"),
    (LanguageCode::Http, "HTTP"),
    (LanguageCode::Go, "GO"),
    (LanguageCode::Php, "PHP"),
    (LanguageCode::Oms, "OMS"),
    (LanguageCode::Rust, "RUST"),
    (LanguageCode::NodeJs, "NODE_JS"),
];

impl LanguageCode {
    /// The byte used in the binary header; it equals the enum's position.
    pub fn code(self) -> u8 {
        LANGUAGES.iter().position(|(l, _)| *l == self).unwrap_or(7) as u8
    }

    /// Unknown bytes map to `Other` (Java decodes them to null without error).
    pub fn from_code(code: u8) -> Self {
        LANGUAGES
            .get(code as usize)
            .map(|(l, _)| *l)
            .unwrap_or(LanguageCode::Other)
    }

    pub fn name(self) -> &'static str {
        LANGUAGES[self.code() as usize].1
    }

    /// Unknown names map to `Other`; peers may send anything here.
    pub fn from_name(name: &str) -> Self {
        LANGUAGES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(l, _)| *l)
            .unwrap_or(LanguageCode::Other)
    }
}

/// One remoting frame: a request (flag bit 0 clear) or a response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemotingCommand {
    pub code: i32,
    pub language: LanguageCode,
    pub version: i32,
    pub opaque: i32,
    pub flag: i32,
    pub remark: Option<String>,
    /// The custom header: every typed header travels here as strings.
    pub ext_fields: ExtFields,
    pub body: Option<Bytes>,
    /// How this command's header was (or will be) serialized.
    pub serialize_type: SerializeType,
}

impl RemotingCommand {
    /// A new request with the given code; the opaque is set by the sender.
    pub fn request(code: i32) -> Self {
        RemotingCommand {
            code,
            version: CURRENT_VERSION,
            ..Default::default()
        }
    }

    /// A response with a code and optional remark; `opaque` is set by
    /// [`RemotingCommand::respond_to`] or by the server when it is sent.
    pub fn response(code: i32, remark: impl Into<Option<String>>) -> Self {
        RemotingCommand {
            code,
            version: CURRENT_VERSION,
            flag: FLAG_RESPONSE,
            remark: remark.into(),
            ..Default::default()
        }
    }

    /// Makes `self` the response to `request`: same opaque, same header
    /// serialization, response flag set.
    pub fn respond_to(mut self, request: &RemotingCommand) -> Self {
        self.opaque = request.opaque;
        self.serialize_type = request.serialize_type;
        self.flag |= FLAG_RESPONSE;
        self
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        let body = body.into();
        self.body = if body.is_empty() { None } else { Some(body) };
        self
    }

    pub fn with_remark(mut self, remark: impl Into<String>) -> Self {
        self.remark = Some(remark.into());
        self
    }

    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }

    pub fn mark_oneway(&mut self) {
        self.flag |= FLAG_ONEWAY;
    }

    pub fn mark_response(&mut self) {
        self.flag |= FLAG_RESPONSE;
    }

    pub fn ext(&self, key: &str) -> Option<&str> {
        self.ext_fields.get(key)
    }

    pub fn set_ext(&mut self, key: &str, value: impl AsRef<str>) {
        self.ext_fields.insert(key, value.as_ref());
    }

    pub fn body_len(&self) -> usize {
        self.body.as_ref().map_or(0, Bytes::len)
    }

    // ---------------------------------------------------------------- encode

    /// Writes the frame up to and excluding the body: the total length, the
    /// header-length word and the header. The caller writes the body bytes
    /// after it, which lets the network layer send large bodies (pulled
    /// messages) without copying them into the frame buffer.
    pub fn encode_prefix(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.put_u64(0); // length + header word, patched below
        match self.serialize_type {
            SerializeType::Json => self.write_json_header(dst),
            SerializeType::RocketMq => self.write_binary_header(dst),
        }
        let header_len = dst.len() - start - 8;
        let total = 4 + header_len + self.body_len();
        let word = ((self.serialize_type.code() as u32) << 24) | (header_len as u32 & 0x00FF_FFFF);
        dst[start..start + 4].copy_from_slice(&(total as u32).to_be_bytes());
        dst[start + 4..start + 8].copy_from_slice(&word.to_be_bytes());
    }

    /// Writes the whole frame (prefix and body) into `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        self.encode_prefix(dst);
        if let Some(body) = &self.body {
            dst.extend_from_slice(body);
        }
    }

    /// The whole frame as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(128 + self.body_len());
        self.encode(&mut buf);
        buf.freeze()
    }

    /// The JSON header as fastjson writes it: keys sorted, nulls omitted,
    /// every `extFields` value a string.
    fn write_json_header(&self, dst: &mut BytesMut) {
        let mut num = itoa::Buffer::new();
        dst.put_slice(b"{\"code\":");
        dst.put_slice(num.format(self.code).as_bytes());
        if !self.ext_fields.is_empty() {
            dst.put_slice(b",\"extFields\":{");
            // ExtFields iterates in key order already.
            for (i, (k, v)) in self.ext_fields.iter().enumerate() {
                if i > 0 {
                    dst.put_u8(b',');
                }
                put_json_str(dst, k);
                dst.put_u8(b':');
                put_json_str(dst, v);
            }
            dst.put_u8(b'}');
        }
        dst.put_slice(b",\"flag\":");
        dst.put_slice(num.format(self.flag).as_bytes());
        dst.put_slice(b",\"language\":\"");
        dst.put_slice(self.language.name().as_bytes());
        dst.put_slice(b"\",\"opaque\":");
        dst.put_slice(num.format(self.opaque).as_bytes());
        if let Some(r) = &self.remark {
            dst.put_slice(b",\"remark\":");
            put_json_str(dst, r);
        }
        dst.put_slice(b",\"serializeTypeCurrentRPC\":\"JSON\",\"version\":");
        dst.put_slice(num.format(self.version).as_bytes());
        dst.put_u8(b'}');
    }

    fn write_binary_header(&self, dst: &mut BytesMut) {
        dst.put_i16(self.code as i16);
        dst.put_u8(self.language.code());
        dst.put_i16(self.version as i16);
        dst.put_i32(self.opaque);
        dst.put_i32(self.flag);
        match &self.remark {
            Some(r) if !r.is_empty() => {
                dst.put_i32(r.len() as i32);
                dst.put_slice(r.as_bytes());
            }
            _ => dst.put_i32(0),
        }
        if self.ext_fields.is_empty() {
            dst.put_i32(0);
        } else {
            let len_pos = dst.len();
            dst.put_i32(0);
            for (k, v) in self.ext_fields.iter() {
                if k.is_empty() || v.is_empty() {
                    continue; // Java skips null entries; empty strings read back as null
                }
                dst.put_i16(k.len() as i16);
                dst.put_slice(k.as_bytes());
                dst.put_i32(v.len() as i32);
                dst.put_slice(v.as_bytes());
            }
            let ext_len = (dst.len() - len_pos - 4) as i32;
            dst[len_pos..len_pos + 4].copy_from_slice(&ext_len.to_be_bytes());
        }
    }

    // ---------------------------------------------------------------- decode

    /// Decodes a frame whose 4-byte length prefix has already been removed:
    /// `frame` is the header-length word, the header and the body.
    pub fn decode_frame(mut frame: Bytes) -> Result<Self> {
        if frame.len() < 4 {
            return Err(ProtocolError::MalformedFrame(format!(
                "frame of {} bytes has no header-length word",
                frame.len()
            )));
        }
        let word = frame.get_u32();
        let serialize_type = SerializeType::from_code((word >> 24) as u8)?;
        let header_len = (word & 0x00FF_FFFF) as usize;
        if header_len > frame.len() {
            return Err(ProtocolError::MalformedFrame(format!(
                "header length {header_len} exceeds the {} bytes left in the frame",
                frame.len()
            )));
        }
        let header = frame.split_to(header_len);
        let mut cmd = match serialize_type {
            SerializeType::Json => Self::decode_json_header(&header)?,
            SerializeType::RocketMq => Self::decode_binary_header(&header)?,
        };
        cmd.serialize_type = serialize_type;
        cmd.body = if frame.is_empty() { None } else { Some(frame) };
        Ok(cmd)
    }

    fn decode_json_header(header: &[u8]) -> Result<Self> {
        if let Some(cmd) = crate::json_header::parse(header) {
            return Ok(cmd);
        }
        Self::decode_json_header_general(header)
    }

    /// The serde reader: every JSON shape, precise errors. Also the
    /// reference the fast reader is tested against.
    pub(crate) fn decode_json_header_general(header: &[u8]) -> Result<Self> {
        let h: JsonHeader = serde_json::from_slice(header)
            .map_err(|e| ProtocolError::InvalidJsonHeader(e.to_string()))?;
        Ok(RemotingCommand {
            code: h.code.0,
            language: h
                .language
                .map(|l| LanguageCode::from_name(&l.0))
                .unwrap_or_default(),
            version: h.version.0,
            opaque: h.opaque.0,
            flag: h.flag.0,
            remark: h.remark.map(|r| r.0),
            ext_fields: h.ext_fields.unwrap_or_default(),
            body: None,
            serialize_type: SerializeType::Json,
        })
    }

    fn decode_binary_header(mut h: &[u8]) -> Result<Self> {
        fn need(h: &[u8], n: usize, what: &str) -> Result<()> {
            if h.remaining() < n {
                Err(ProtocolError::InvalidBinaryHeader(format!(
                    "{what} needs {n} bytes, {} left",
                    h.remaining()
                )))
            } else {
                Ok(())
            }
        }
        fn utf8(b: &[u8], what: &str) -> Result<String> {
            String::from_utf8(b.to_vec())
                .map_err(|_| ProtocolError::InvalidBinaryHeader(format!("{what} is not UTF-8")))
        }
        need(h, 21, "fixed part")?;
        let code = h.get_i16() as i32;
        let language = LanguageCode::from_code(h.get_u8());
        let version = h.get_i16() as i32;
        let opaque = h.get_i32();
        let flag = h.get_i32();
        let remark_len = h.get_i32();
        if remark_len < 0 {
            return Err(ProtocolError::InvalidBinaryHeader(format!(
                "negative remark length {remark_len}"
            )));
        }
        let remark_len = remark_len as usize;
        need(h, remark_len + 4, "remark")?;
        let remark = if remark_len == 0 {
            None
        } else {
            Some(utf8(&h[..remark_len], "remark")?)
        };
        h.advance(remark_len);
        let ext_len = h.get_i32();
        if ext_len < 0 {
            return Err(ProtocolError::InvalidBinaryHeader(format!(
                "negative extFields length {ext_len}"
            )));
        }
        let ext_len = ext_len as usize;
        need(h, ext_len, "extFields")?;
        let mut ext = &h[..ext_len];
        let mut ext_fields = ExtFields::with_capacity(16, ext_len);
        while ext.has_remaining() {
            need(ext, 2, "extFields key length")?;
            let klen = ext.get_u16() as usize;
            need(ext, klen + 4, "extFields key")?;
            let key = std::str::from_utf8(&ext[..klen]).map_err(|_| {
                ProtocolError::InvalidBinaryHeader("extFields key is not UTF-8".into())
            })?;
            ext.advance(klen);
            let vlen = ext.get_i32();
            if vlen < 0 {
                return Err(ProtocolError::InvalidBinaryHeader(format!(
                    "negative value length {vlen} for key '{key}'"
                )));
            }
            let vlen = vlen as usize;
            need(ext, vlen, "extFields value")?;
            let value = std::str::from_utf8(&ext[..vlen]).map_err(|_| {
                ProtocolError::InvalidBinaryHeader("extFields value is not UTF-8".into())
            })?;
            if !key.is_empty() && !value.is_empty() {
                ext_fields.insert(key, value);
            }
            ext.advance(vlen);
        }
        Ok(RemotingCommand {
            code,
            language,
            version,
            opaque,
            flag,
            remark,
            ext_fields,
            body: None,
            serialize_type: SerializeType::RocketMq,
        })
    }
}

/// The JSON header as peers send it; every key is optional.
#[derive(Deserialize)]
struct JsonHeader {
    #[serde(default)]
    code: LenientI32,
    #[serde(default)]
    language: Option<LenientString>,
    #[serde(default)]
    version: LenientI32,
    #[serde(default)]
    opaque: LenientI32,
    #[serde(default)]
    flag: LenientI32,
    #[serde(default)]
    remark: Option<LenientString>,
    #[serde(default, rename = "extFields")]
    ext_fields: Option<ExtFields>,
}

/// A header int given as text (`"310"`, `" 7 "`): parsed as a long and
/// narrowed like Java's int cast. Shared by both JSON header readers.
pub(crate) fn int_from_text(s: &str) -> Option<i32> {
    s.trim().parse::<i64>().ok().map(|v| v as i32)
}

/// An int32 that may arrive as a JSON number, a numeric string or null
/// (null reads as 0, like a missing key).
#[derive(Default)]
struct LenientI32(i32);

impl<'de> Deserialize<'de> for LenientI32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(LenientI32Visitor)
    }
}

struct LenientI32Visitor;

impl<'de> serde::de::Visitor<'de> for LenientI32Visitor {
    type Value = LenientI32;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer")
    }
    // Out-of-range values wrap like Java's int cast of a long.
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<LenientI32, E> {
        Ok(LenientI32(v as i32))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<LenientI32, E> {
        i64::try_from(v)
            .map(|x| LenientI32(x as i32))
            .map_err(|_| E::custom(format!("{v} is not an integer")))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<LenientI32, E> {
        Err(E::custom(format!("{v} is not an integer")))
    }
    fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<LenientI32, E> {
        int_from_text(s)
            .map(LenientI32)
            .ok_or_else(|| E::custom(format!("'{s}' is not an integer")))
    }
    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<LenientI32, E> {
        Ok(LenientI32(0))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<LenientI32, E> {
        Err(E::custom(format!("{v} is not an integer")))
    }
}

/// A string field that may arrive as any JSON scalar (its text is kept);
/// null reads as absent.
struct LenientString(String);

impl<'de> Deserialize<'de> for LenientString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut s = String::new();
        match serde::de::DeserializeSeed::deserialize(crate::ext_fields::AppendStr(&mut s), d)? {
            Some(()) => Ok(LenientString(s)),
            // `Option<LenientString>` turns JSON null into None before this
            // runs; this arm covers a null reaching here some other way.
            None => Ok(LenientString(String::new())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip_prefix(b: Bytes) -> Bytes {
        let mut b = b;
        let len = b.get_u32() as usize;
        assert_eq!(len, b.len());
        b
    }

    #[test]
    fn json_request_matches_reference_example() {
        let mut c = RemotingCommand::request(105);
        c.opaque = 1;
        c.set_ext("topic", "T");
        let bytes = c.to_bytes();
        let expected = br#"{"code":105,"extFields":{"topic":"T"},"flag":0,"language":"JAVA","opaque":1,"serializeTypeCurrentRPC":"JSON","version":401}"#;
        assert_eq!(&bytes[0..4], &(4 + expected.len() as u32).to_be_bytes());
        assert_eq!(&bytes[4..8], &(expected.len() as u32).to_be_bytes());
        assert_eq!(&bytes[8..], &expected[..]);
    }

    #[test]
    fn binary_request_matches_reference_example() {
        let mut c = RemotingCommand::request(105);
        c.opaque = 1;
        c.serialize_type = SerializeType::RocketMq;
        c.set_ext("topic", "T");
        let bytes = c.to_bytes();
        let expected: &[u8] = &[
            0, 0, 0, 37, 1, 0, 0, 33, 0, 0x69, 0, 0x01, 0x91, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 12, 0, 5, b't', b'o', b'p', b'i', b'c', 0, 0, 0, 1, b'T',
        ];
        assert_eq!(&bytes[..], expected);
        let back = RemotingCommand::decode_frame(strip_prefix(bytes)).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn lenient_json_header_values() {
        let header = br#"{"code":"310","language":"CPP","opaque":7,"flag":0,"extFields":{"d":4,"k":false,"x":null,"i":"a\u0001b"}}"#;
        let mut frame = BytesMut::new();
        frame.put_u32(header.len() as u32);
        frame.put_slice(header);
        frame.put_slice(b"body");
        let c = RemotingCommand::decode_frame(frame.freeze()).unwrap();
        assert_eq!(c.code, 310);
        assert_eq!(c.language, LanguageCode::Cpp);
        assert_eq!(c.ext("d"), Some("4"));
        assert_eq!(c.ext("k"), Some("false"));
        assert_eq!(c.ext("x"), None);
        assert_eq!(c.ext("i"), Some("a\u{1}b"));
        assert_eq!(c.body.as_deref(), Some(&b"body"[..]));
    }

    #[test]
    fn header_longer_than_frame_is_an_error() {
        let mut frame = BytesMut::new();
        frame.put_u32(100);
        frame.put_slice(b"{}");
        assert!(matches!(
            RemotingCommand::decode_frame(frame.freeze()),
            Err(ProtocolError::MalformedFrame(_))
        ));
    }

    #[test]
    fn truncated_binary_header_is_an_error() {
        let mut frame = BytesMut::new();
        frame.put_u32((1 << 24) | 5);
        frame.put_slice(&[0, 1, 0, 0, 0]);
        assert!(matches!(
            RemotingCommand::decode_frame(frame.freeze()),
            Err(ProtocolError::InvalidBinaryHeader(_))
        ));
    }
}
