//! The message a producer sends ([`Message`]) and the message a consumer
//! receives ([`MessageExt`]), with the property conventions Java clients use
//! (TAGS, KEYS, DELAY, WAIT, UNIQ_KEY …).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::{Deref, DerefMut};

use apogee_protocol::message::{keys, properties, DecodedMessage};
use bytes::Bytes;

pub use apogee_protocol::body::MessageQueue;

/// Bodies inflated by the consumer may not grow past this (a bomb guard);
/// four times Java's default maximum message size.
pub const MAX_INFLATED_BODY: usize = 16 * 1024 * 1024;

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub topic: String,
    /// User flag, stored verbatim by the broker.
    pub flag: i32,
    pub body: Bytes,
    /// User and system properties (TAGS, KEYS, DELAY, …).
    pub properties: HashMap<String, String>,
}

impl Message {
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            flag: 0,
            body: body.into(),
            properties: HashMap::new(),
        }
    }

    pub fn with_tags(mut self, tags: impl Into<String>) -> Self {
        self.set_tags(tags);
        self
    }

    /// Business keys, indexed by the broker for QUERY_MESSAGE.
    pub fn with_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.set_keys(keys);
        self
    }

    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Delay level 1..=18 (1s 5s 10s 30s 1m … 2h); 0 means none.
    pub fn with_delay_level(mut self, level: i32) -> Self {
        self.set_delay_level(level);
        self
    }

    pub fn with_flag(mut self, flag: i32) -> Self {
        self.flag = flag;
        self
    }

    pub fn set_tags(&mut self, tags: impl Into<String>) {
        self.properties.insert(keys::TAGS.to_string(), tags.into());
    }

    pub fn set_keys<I, S>(&mut self, ks: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let joined = ks
            .into_iter()
            .map(|k| k.as_ref().to_string())
            .collect::<Vec<_>>()
            .join(keys::KEY_SEPARATOR);
        self.properties.insert(keys::KEYS.to_string(), joined);
    }

    pub fn set_delay_level(&mut self, level: i32) {
        if level > 0 {
            self.properties
                .insert(keys::DELAY_TIME_LEVEL.to_string(), level.to_string());
        } else {
            self.properties.remove(keys::DELAY_TIME_LEVEL);
        }
    }

    /// Whether the broker should answer only after the message is stored
    /// (the `WAIT` property; Java's default is true).
    pub fn set_wait_store_msg_ok(&mut self, wait: bool) {
        self.properties
            .insert(keys::WAIT_STORE_MSG_OK.to_string(), wait.to_string());
    }

    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }

    pub fn tags(&self) -> Option<&str> {
        self.property(keys::TAGS)
    }

    /// The business keys (KEYS split on spaces).
    pub fn keys(&self) -> Vec<&str> {
        self.property(keys::KEYS)
            .unwrap_or("")
            .split(keys::KEY_SEPARATOR)
            .filter(|k| !k.is_empty())
            .collect()
    }

    pub fn delay_level(&self) -> i32 {
        self.property(keys::DELAY_TIME_LEVEL)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The client-made unique id (UNIQ_KEY), set when the message is sent.
    pub fn uniq_key(&self) -> Option<&str> {
        self.property(keys::UNIQ_KEY)
    }

    /// The properties in wire form (name\u{1}value\u{2}…).
    pub fn properties_string(&self) -> String {
        let mut out = String::with_capacity(
            self.properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum(),
        );
        for (k, v) in &self.properties {
            properties::append(&mut out, k, v);
        }
        out
    }
}

/// A received message with its position and store metadata (Java `MessageExt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageExt {
    /// Topic, flag, (already inflated) body and properties. For a message
    /// consumed from `%RETRY%<group>` the topic is the original one.
    pub message: Message,
    pub broker_name: String,
    pub queue_id: i32,
    pub queue_offset: i64,
    pub commit_log_offset: i64,
    pub sys_flag: i32,
    /// UNIQ_KEY, else the offset message id (what Java shows as msgId).
    pub msg_id: String,
    /// Store host + commit-log offset id (VIEW_MESSAGE_BY_ID key).
    pub offset_msg_id: String,
    pub reconsume_times: i32,
    pub born_timestamp: i64,
    pub store_timestamp: i64,
    pub born_host: SocketAddr,
    pub store_host: SocketAddr,
    pub body_crc: u32,
    pub store_size: usize,
    pub prepared_transaction_offset: i64,
}

impl Deref for MessageExt {
    type Target = Message;
    fn deref(&self) -> &Message {
        &self.message
    }
}

impl DerefMut for MessageExt {
    fn deref_mut(&mut self) -> &mut Message {
        &mut self.message
    }
}

impl MessageExt {
    /// Converts a decoded stored record (pull/query/view body). A compressed
    /// body is inflated; one that cannot be is kept as is with COMPRESSED
    /// still set, so the caller sees the raw bytes rather than losing them.
    pub fn from_decoded(mut d: DecodedMessage, broker_name: &str) -> Self {
        if let Err(e) = d.decompress(MAX_INFLATED_BODY) {
            tracing::warn!(topic = %d.topic, offset = d.queue_offset, error = %e, "cannot inflate message body");
        }
        let offset_msg_id = d.offset_msg_id();
        let msg_id = d
            .properties
            .get(keys::UNIQ_KEY)
            .cloned()
            .unwrap_or_else(|| offset_msg_id.clone());
        MessageExt {
            message: Message {
                topic: d.topic,
                flag: d.flag,
                body: d.body,
                properties: d.properties,
            },
            broker_name: broker_name.to_string(),
            queue_id: d.queue_id,
            queue_offset: d.queue_offset,
            commit_log_offset: d.physical_offset,
            sys_flag: d.sys_flag,
            msg_id,
            offset_msg_id,
            reconsume_times: d.reconsume_times,
            born_timestamp: d.born_timestamp,
            store_timestamp: d.store_timestamp,
            born_host: d.born_host,
            store_host: d.store_host,
            body_crc: d.body_crc,
            store_size: d.store_size,
            prepared_transaction_offset: d.prepared_transaction_offset,
        }
    }

    /// The queue this message was read from.
    pub fn queue(&self) -> MessageQueue {
        MessageQueue::new(self.topic.clone(), self.broker_name.clone(), self.queue_id)
    }

    /// A reply pushed by the broker (PUSH_REPLY_MESSAGE_TO_CLIENT): the
    /// message plus what its header says of where and when it was stored.
    pub(crate) fn from_reply(
        message: Message,
        h: &apogee_protocol::header::ReplyMessageRequestHeader,
    ) -> Self {
        let host = |s: &str| {
            s.parse()
                .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
        };
        let mut ext = MessageExt::from_message(message);
        ext.queue_id = h.queue_id;
        ext.sys_flag = h.sys_flag;
        ext.born_timestamp = h.born_timestamp;
        ext.store_timestamp = h.store_timestamp;
        ext.born_host = host(&h.born_host);
        ext.store_host = host(&h.store_host);
        ext.reconsume_times = h.reconsume_times.unwrap_or(0);
        ext
    }

    /// A placeholder with only the message part set (tests, direct consumption).
    pub fn from_message(message: Message) -> Self {
        let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        MessageExt {
            msg_id: message.uniq_key().unwrap_or_default().to_string(),
            message,
            broker_name: String::new(),
            queue_id: 0,
            queue_offset: 0,
            commit_log_offset: 0,
            sys_flag: 0,
            offset_msg_id: String::new(),
            reconsume_times: 0,
            born_timestamp: 0,
            store_timestamp: 0,
            born_host: unspecified,
            store_host: unspecified,
            body_crc: 0,
            store_size: 0,
            prepared_transaction_offset: 0,
        }
    }
}
