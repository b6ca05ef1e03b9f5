//! Topic configuration bodies and broker registration: `DataVersion`,
//! `TopicConfig`, the topic-config wrappers, `RegisterBrokerBody` (JSON and
//! the zlib-compressed binary form), `TopicList`, `KVTable`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fastjson::{self, lenient, Dialect};
use crate::error::{ProtocolError, Result};

/// Largest inflated REGISTER_BROKER body accepted (guards against zip bombs).
pub const MAX_INFLATED_REGISTER_BODY: usize = 64 * 1024 * 1024;

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Version stamp of a broker's topic (or group) configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DataVersion {
    /// 5.x; 0 from older brokers.
    #[serde(deserialize_with = "lenient::i64")]
    pub state_version: i64,
    #[serde(deserialize_with = "lenient::i64")]
    pub timestamp: i64,
    #[serde(deserialize_with = "lenient::i64")]
    pub counter: i64,
}

impl DataVersion {
    /// A fresh version stamped now, counter 0 (Java's `new DataVersion()`).
    pub fn now() -> Self {
        DataVersion {
            state_version: 0,
            timestamp: now_millis(),
            counter: 0,
        }
    }

    /// Java `nextVersion()`: stamp now and bump the counter.
    pub fn next_version(&mut self) {
        self.timestamp = now_millis();
        self.counter = self.counter.wrapping_add(1);
    }
}

java_enum! {
    /// `TopicFilterType`.
    TopicFilterType default SingleTag {
        SingleTag = "SINGLE_TAG",
        MultiTag = "MULTI_TAG",
    }
}

/// A topic as a broker configures it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfig {
    pub topic_name: String,
    #[serde(deserialize_with = "lenient::i32")]
    pub read_queue_nums: i32,
    #[serde(deserialize_with = "lenient::i32")]
    pub write_queue_nums: i32,
    #[serde(deserialize_with = "lenient::i32")]
    pub perm: i32,
    pub topic_filter_type: TopicFilterType,
    #[serde(deserialize_with = "lenient::i32")]
    pub topic_sys_flag: i32,
    #[serde(deserialize_with = "lenient::bool")]
    pub order: bool,
    pub attributes: BTreeMap<String, String>,
}

impl Default for TopicConfig {
    /// Java defaults: 16 read/16 write queues, perm READ|WRITE.
    fn default() -> Self {
        TopicConfig {
            topic_name: String::new(),
            read_queue_nums: 16,
            write_queue_nums: 16,
            perm: super::route::PERM_READ | super::route::PERM_WRITE,
            topic_filter_type: TopicFilterType::SingleTag,
            topic_sys_flag: 0,
            order: false,
            attributes: BTreeMap::new(),
        }
    }
}

impl TopicConfig {
    pub fn new(topic_name: impl Into<String>) -> Self {
        TopicConfig {
            topic_name: topic_name.into(),
            ..TopicConfig::default()
        }
    }

    /// The space-separated text form used inside the compressed registration
    /// body: `name read write perm FILTER_TYPE attributesJSON`. (Like Java,
    /// it carries neither `topicSysFlag` nor `order`.)
    pub fn encode_text(&self) -> String {
        let attrs = fastjson::to_vec(&self.attributes, Dialect::Fastjson);
        format!(
            "{} {} {} {} {} {}",
            self.topic_name,
            self.read_queue_nums,
            self.write_queue_nums,
            self.perm,
            self.topic_filter_type.java_name(),
            String::from_utf8_lossy(&attrs)
        )
    }

    /// Parses [`Self::encode_text`]'s form (5 or more space-separated parts).
    /// Unparseable attributes are ignored, as Java does.
    pub fn decode_text(text: &str) -> Result<Self> {
        let mut parts: Vec<&str> = text.split(' ').collect();
        // Java's String.split drops trailing empty strings.
        while parts.last() == Some(&"") {
            parts.pop();
        }
        let bad =
            |why: &str| ProtocolError::InvalidBody(format!("topic config text {text:?}: {why}"));
        let [name, read, write, perm, filter, rest @ ..] = parts.as_slice() else {
            return Err(bad("fewer than 5 fields"));
        };
        let int = |s: &str, field: &str| {
            s.parse::<i32>()
                .map_err(|_| bad(&format!("{field} is not an int")))
        };
        let mut cfg = TopicConfig {
            topic_name: (*name).to_string(),
            read_queue_nums: int(read, "readQueueNums")?,
            write_queue_nums: int(write, "writeQueueNums")?,
            perm: int(perm, "perm")?,
            topic_filter_type: TopicFilterType::from_java_name(filter)
                .ok_or_else(|| bad("unknown topicFilterType"))?,
            ..TopicConfig::default()
        };
        if let Some(attrs) = rest.first() {
            if let Ok(map) = fastjson::from_slice::<BTreeMap<String, String>>(attrs.as_bytes()) {
                cfg.attributes = map;
            }
        }
        Ok(cfg)
    }
}

/// `TopicConfigSerializeWrapper`: what brokers before V3_0_11 registered
/// with, and the layout of the broker's `topics.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfigSerializeWrapper {
    pub topic_config_table: BTreeMap<String, TopicConfig>,
    pub data_version: DataVersion,
}

/// `TopicConfigAndMappingSerializeWrapper` (body of GET_ALL_TOPIC_CONFIG and
/// part of REGISTER_BROKER). The 5.x static-topic maps are kept opaque.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfigAndMappingSerializeWrapper {
    pub topic_config_table: BTreeMap<String, TopicConfig>,
    pub data_version: DataVersion,
    /// topic -> TopicQueueMappingInfo
    pub topic_queue_mapping_info_map: BTreeMap<String, Value>,
    /// topic -> TopicQueueMappingDetail
    pub topic_queue_mapping_detail_map: BTreeMap<String, Value>,
    pub mapping_data_version: DataVersion,
}

impl From<TopicConfigSerializeWrapper> for TopicConfigAndMappingSerializeWrapper {
    fn from(w: TopicConfigSerializeWrapper) -> Self {
        TopicConfigAndMappingSerializeWrapper {
            topic_config_table: w.topic_config_table,
            data_version: w.data_version,
            ..Default::default()
        }
    }
}

impl From<TopicConfigAndMappingSerializeWrapper> for TopicConfigSerializeWrapper {
    fn from(w: TopicConfigAndMappingSerializeWrapper) -> Self {
        TopicConfigSerializeWrapper {
            topic_config_table: w.topic_config_table,
            data_version: w.data_version,
        }
    }
}

/// Body of REGISTER_BROKER.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegisterBrokerBody {
    pub topic_config_serialize_wrapper: TopicConfigAndMappingSerializeWrapper,
    pub filter_server_list: Vec<String>,
}

impl RegisterBrokerBody {
    /// Decodes a REGISTER_BROKER body honouring the header's `compressed`
    /// flag. Because the current Java broker may compress while saying
    /// `compressed=false` (reference 5.5), a body that is not JSON but starts
    /// with a zlib header is also tried as the compressed form. Bodies from
    /// brokers older than V3_0_11 (the bare wrapper) are accepted too.
    pub fn decode_with(data: &[u8], compressed: bool) -> Result<Self> {
        if compressed {
            return Self::decode_compressed(data);
        }
        match Self::decode(data) {
            Ok(body) => Ok(Self::upgrade_bare_wrapper(data, body)),
            Err(json_err) if data.first() == Some(&0x78) => {
                Self::decode_compressed(data).map_err(|_| json_err)
            }
            Err(e) => Err(e),
        }
    }

    /// A bare `TopicConfigSerializeWrapper` body parses as an empty
    /// `RegisterBrokerBody`; detect that and re-read it as the wrapper.
    fn upgrade_bare_wrapper(data: &[u8], body: Self) -> Self {
        let empty = body
            .topic_config_serialize_wrapper
            .topic_config_table
            .is_empty()
            && body.filter_server_list.is_empty();
        if !empty {
            return body;
        }
        match TopicConfigSerializeWrapper::decode(data) {
            Ok(w) if !w.topic_config_table.is_empty() => RegisterBrokerBody {
                topic_config_serialize_wrapper: w.into(),
                filter_server_list: Vec::new(),
            },
            _ => body,
        }
    }

    /// Decodes the compressed (zlib) form written by Java's
    /// `RegisterBrokerBody.encode(true)`.
    pub fn decode_compressed(data: &[u8]) -> Result<Self> {
        let mut inflated = Vec::new();
        ZlibDecoder::new(data)
            .take(MAX_INFLATED_REGISTER_BODY as u64 + 1)
            .read_to_end(&mut inflated)
            .map_err(|e| {
                ProtocolError::InvalidBody(format!("compressed register body: inflate failed: {e}"))
            })?;
        if inflated.len() > MAX_INFLATED_REGISTER_BODY {
            return Err(ProtocolError::InvalidBody(format!(
                "compressed register body inflates beyond {MAX_INFLATED_REGISTER_BODY} bytes"
            )));
        }
        let mut r = Reader {
            buf: &inflated,
            pos: 0,
        };
        let mut body = RegisterBrokerBody::default();
        let wrapper = &mut body.topic_config_serialize_wrapper;

        wrapper.data_version = DataVersion::decode(r.chunk("dataVersion")?)?;

        let topics = r.count("topic count")?;
        for _ in 0..topics {
            let text = std::str::from_utf8(r.chunk("topic config")?).map_err(|_| {
                ProtocolError::InvalidBody(
                    "compressed register body: topic config is not UTF-8".into(),
                )
            })?;
            let cfg = TopicConfig::decode_text(text)?;
            wrapper
                .topic_config_table
                .insert(cfg.topic_name.clone(), cfg);
        }

        // Java logs and keeps an empty list when this JSON is bad.
        let filters = r.chunk("filterServerList")?;
        body.filter_server_list = fastjson::from_slice(filters).unwrap_or_default();

        // Brokers before 5.0 end the stream here.
        if !r.at_end() {
            let mappings = r.count("topic queue mapping count")?;
            for _ in 0..mappings {
                let info: Value = fastjson::from_slice(r.chunk("topic queue mapping")?)?;
                let topic = info
                    .get("topic")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                body.topic_config_serialize_wrapper
                    .topic_queue_mapping_info_map
                    .insert(topic, info);
            }
        }
        Ok(body)
    }

    /// Encodes the compressed form as a Java 5.x broker does (with the
    /// trailing topic-queue-mapping section; `with_mappings=false` stops
    /// after the filter-server list like 4.x brokers).
    pub fn encode_compressed(&self, with_mappings: bool) -> Result<Vec<u8>> {
        let mut raw = Vec::new();
        let wrapper = &self.topic_config_serialize_wrapper;
        put_chunk(&mut raw, &wrapper.data_version.encode())?;
        put_len(&mut raw, wrapper.topic_config_table.len())?;
        for cfg in wrapper.topic_config_table.values() {
            put_chunk(&mut raw, cfg.encode_text().as_bytes())?;
        }
        put_chunk(
            &mut raw,
            &fastjson::to_vec(&self.filter_server_list, Dialect::Fastjson),
        )?;
        if with_mappings {
            put_len(&mut raw, wrapper.topic_queue_mapping_info_map.len())?;
            for info in wrapper.topic_queue_mapping_info_map.values() {
                put_chunk(&mut raw, &fastjson::to_vec(info, Dialect::Fastjson))?;
            }
        }
        let mut enc = ZlibEncoder::new(Vec::new(), Compression::best());
        enc.write_all(&raw)
            .and_then(|_| enc.finish())
            .map_err(|e| ProtocolError::InvalidBody(format!("deflate failed: {e}")))
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<()> {
    let n = i32::try_from(len)
        .map_err(|_| ProtocolError::InvalidBody(format!("length {len} exceeds an int")))?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_chunk(out: &mut Vec<u8>, data: &[u8]) -> Result<()> {
    put_len(out, data.len())?;
    out.extend_from_slice(data);
    Ok(())
}

/// Bounds-checked reader over the inflated registration stream.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .ok_or_else(|| {
                ProtocolError::InvalidBody(format!("compressed register body: truncated {what}"))
            })?;
        self.pos += 4;
        Ok(i32::from_be_bytes(bytes))
    }

    fn count(&mut self, what: &str) -> Result<usize> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| {
            ProtocolError::InvalidBody(format!("compressed register body: negative {what} {n}"))
        })
    }

    fn chunk(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = self.count(what)?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| {
                ProtocolError::InvalidBody(format!(
                    "compressed register body: {what} length {len} exceeds the data"
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

/// `TopicList`: topic names, and for some admin calls the broker address.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicList {
    pub topic_list: BTreeSet<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_addr: Option<String>,
}

/// `KVTable`: a string map (e.g. the ORDER_TOPIC_CONFIG namespace returned
/// to a registering broker).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KVTable {
    pub table: BTreeMap<String, String>,
}

json_body!(
    DataVersion,
    TopicConfig,
    TopicConfigSerializeWrapper,
    TopicConfigAndMappingSerializeWrapper,
    RegisterBrokerBody,
    TopicList,
    KVTable,
);
