//! Route bodies served by the NameServer: `TopicRouteData` (with its
//! version-gated dialect), `QueueData`, `BrokerData`, `ClusterInfo`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fastjson::{self, int_key_map, lenient, Dialect};

/// Request `version` (V4_9_4) from which the NameServer answers routes in
/// standard JSON.
pub const STANDARD_ROUTE_JSON_MIN_VERSION: i32 = 401;

/// Permission bits (`PermName`).
pub const PERM_PRIORITY: i32 = 8;
pub const PERM_READ: i32 = 4;
pub const PERM_WRITE: i32 = 2;
pub const PERM_INHERIT: i32 = 1;

/// Body of the GET_ROUTEINFO_BY_TOPIC response.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicRouteData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_topic_conf: Option<String>,
    pub queue_datas: Vec<QueueData>,
    pub broker_datas: Vec<BrokerData>,
    /// Legacy filter servers (broker address -> filter server addresses); Java always sends `{}`.
    pub filter_server_table: BTreeMap<String, Vec<String>>,
    /// 5.x static-topic mappings, kept opaque.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic_queue_mapping_by_broker: Option<BTreeMap<String, Value>>,
}

impl TopicRouteData {
    /// Encodes the way the Java NameServer answers a request of this
    /// `version`: standard JSON (quoted broker ids, non-ASCII escaped) from
    /// 401 (V4_9_4) on, the fastjson dialect (bare broker ids) before.
    pub fn to_json_for_version(&self, version: i32) -> Vec<u8> {
        self.to_json(version >= STANDARD_ROUTE_JSON_MIN_VERSION, false)
    }

    /// Same as [`Self::to_json_for_version`] with the request header's
    /// `acceptStandardJsonOnly` flag taken into account.
    pub fn to_json(&self, standard_version: bool, accept_standard_json_only: bool) -> Vec<u8> {
        let dialect = if standard_version || accept_standard_json_only {
            Dialect::Standard
        } else {
            Dialect::Fastjson
        };
        fastjson::to_vec(self, dialect)
    }
}

/// One broker name's queues of a topic. 4.x (before 4.9.0) spells the sys
/// flag `topicSynFlag`; both spellings are read and both are written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "QueueDataRepr", into = "QueueDataRepr")]
pub struct QueueData {
    pub broker_name: String,
    pub read_queue_nums: i32,
    pub write_queue_nums: i32,
    pub perm: i32,
    pub topic_sys_flag: i32,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct QueueDataRepr {
    broker_name: String,
    #[serde(deserialize_with = "lenient::i32")]
    read_queue_nums: i32,
    #[serde(deserialize_with = "lenient::i32")]
    write_queue_nums: i32,
    #[serde(deserialize_with = "lenient::i32")]
    perm: i32,
    #[serde(
        deserialize_with = "lenient_opt_i32",
        skip_serializing_if = "Option::is_none"
    )]
    topic_sys_flag: Option<i32>,
    #[serde(
        deserialize_with = "lenient_opt_i32",
        skip_serializing_if = "Option::is_none"
    )]
    topic_syn_flag: Option<i32>,
}

fn lenient_opt_i32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    lenient::i32(d).map(Some)
}

impl From<QueueDataRepr> for QueueData {
    fn from(r: QueueDataRepr) -> Self {
        QueueData {
            broker_name: r.broker_name,
            read_queue_nums: r.read_queue_nums,
            write_queue_nums: r.write_queue_nums,
            perm: r.perm,
            topic_sys_flag: r.topic_sys_flag.or(r.topic_syn_flag).unwrap_or(0),
        }
    }
}

impl From<QueueData> for QueueDataRepr {
    fn from(q: QueueData) -> Self {
        QueueDataRepr {
            broker_name: q.broker_name,
            read_queue_nums: q.read_queue_nums,
            write_queue_nums: q.write_queue_nums,
            perm: q.perm,
            topic_sys_flag: Some(q.topic_sys_flag),
            topic_syn_flag: Some(q.topic_sys_flag),
        }
    }
}

/// One broker name (a master and its slaves) of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BrokerData {
    pub cluster: String,
    pub broker_name: String,
    /// brokerId -> "ip:port"; 0 is the master.
    #[serde(with = "int_key_map")]
    pub broker_addrs: BTreeMap<i64, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone_name: Option<String>,
    #[serde(deserialize_with = "lenient::bool")]
    pub enable_acting_master: bool,
}

impl BrokerData {
    /// The master's address, else the lowest-id slave's (Java picks a random one).
    pub fn select_broker_addr(&self) -> Option<&str> {
        self.broker_addrs
            .get(&0)
            .or_else(|| self.broker_addrs.values().next())
            .map(String::as_str)
    }
}

/// Body of GET_BROKER_CLUSTER_INFO. Java always writes it in the fastjson
/// dialect (bare broker ids), which is what `encode()` does.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterInfo {
    /// brokerName -> BrokerData
    pub broker_addr_table: BTreeMap<String, BrokerData>,
    /// cluster name -> broker names
    pub cluster_addr_table: BTreeMap<String, BTreeSet<String>>,
}

json_body!(TopicRouteData, QueueData, BrokerData, ClusterInfo);
