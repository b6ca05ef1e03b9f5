//! JSON bodies exchanged by clients, brokers and the NameServer (reference
//! section 5), with the fastjson dialect handled in [`fastjson`].
//!
//! Every body type has `encode(&self) -> Vec<u8>` (fastjson dialect, what Java
//! parses), `encode_as(&self, Dialect) -> Vec<u8>` and
//! `decode(&[u8]) -> Result<Self, ProtocolError>` (accepts both dialects;
//! missing fields take the Java defaults, unknown fields are ignored).
//! Always serialize through these methods: maps with integer or
//! `MessageQueue` keys carry internal markers that only this writer resolves.

use serde::{Deserialize, Serialize};

/// Adds `encode`, `encode_as` and `decode` to body types.
macro_rules! json_body {
    ($($t:ty),* $(,)?) => {$(
        impl $t {
            /// Serializes in the plain fastjson dialect (what Java peers parse).
            pub fn encode(&self) -> Vec<u8> {
                $crate::body::fastjson::to_vec(self, $crate::body::fastjson::Dialect::Fastjson)
            }

            /// Serializes in the chosen dialect.
            pub fn encode_as(&self, dialect: $crate::body::fastjson::Dialect) -> Vec<u8> {
                $crate::body::fastjson::to_vec(self, dialect)
            }

            /// Parses standard JSON or the fastjson dialect.
            pub fn decode(data: &[u8]) -> Result<Self, $crate::error::ProtocolError> {
                $crate::body::fastjson::from_slice(data)
            }
        }
    )*};
}

/// Declares a Java enum carried in bodies: written as its name, read from
/// its name (or an alias) or from its ordinal, as number or string, since
/// non-Java clients send ordinals (reference 14.1). Variants must be listed
/// in Java declaration order: the position is the ordinal.
macro_rules! java_enum {
    (
        $(#[$m:meta])*
        $name:ident default $def:ident {
            $($(#[$vm:meta])* $variant:ident = $java:literal $(| $alias:literal)*),+ $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vm])* $variant),+
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$def
            }
        }

        impl $name {
            /// All values in Java ordinal order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn java_name(self) -> &'static str {
                match self {
                    $($name::$variant => $java),+
                }
            }

            pub fn ordinal(self) -> usize {
                Self::ALL.iter().position(|v| *v == self).unwrap_or(0)
            }

            pub fn from_java_name(s: &str) -> Option<Self> {
                match s {
                    $($java $(| $alias)* => Some($name::$variant),)+
                    _ => None,
                }
            }

            pub fn from_ordinal(n: i64) -> Option<Self> {
                usize::try_from(n).ok().and_then(|i| Self::ALL.get(i).copied())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.java_name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::Error;
                let v = serde_json::Value::deserialize(d)?;
                let found = match &v {
                    serde_json::Value::String(s) => {
                        let t = s.trim();
                        Self::from_java_name(t)
                            .or_else(|| t.parse::<i64>().ok().and_then(Self::from_ordinal))
                    }
                    serde_json::Value::Number(n) => n.as_i64().and_then(Self::from_ordinal),
                    serde_json::Value::Null => Some(Self::default()),
                    _ => None,
                };
                found.ok_or_else(|| {
                    D::Error::custom(format!(concat!("invalid ", stringify!($name), " {}"), v))
                })
            }
        }
    };
}

pub mod admin;
pub mod assignment;
pub mod fastjson;
pub mod heartbeat;
pub mod route;
pub mod topic;

pub use admin::*;
pub use assignment::*;
pub use fastjson::Dialect;
pub use heartbeat::*;
pub use route::*;
pub use topic::*;

/// `MessageQueue`: one queue of a topic on one broker. Ordered like Java's
/// `compareTo` (topic, brokerName, queueId) so it can key sorted maps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageQueue {
    pub topic: String,
    pub broker_name: String,
    #[serde(deserialize_with = "fastjson::lenient::i32")]
    pub queue_id: i32,
}

impl MessageQueue {
    pub fn new(topic: impl Into<String>, broker_name: impl Into<String>, queue_id: i32) -> Self {
        MessageQueue {
            topic: topic.into(),
            broker_name: broker_name.into(),
            queue_id,
        }
    }
}

json_body!(MessageQueue);
