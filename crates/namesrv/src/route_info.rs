//! The route tables: which brokers serve which topics, brokers by cluster,
//! and broker liveness.
//!
//! Lookups never wait for a registration: the tables are an immutable
//! snapshot behind an `ArcSwap`, and a registration builds the next snapshot
//! (sharing every unchanged entry through `Arc`s) and swaps it in. Writers are
//! serialized by a mutex that no reader takes. Liveness, which changes on
//! every heartbeat, lives outside the snapshot so an unchanged registration
//! only touches that table.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

/// PermName bits (`PermName.java`).
const PERM_READ: i32 = 4;
const PERM_WRITE: i32 = 2;

/// A topic's queues on one broker (Java `QueueData`, minus the broker name,
/// which is the key it is stored under).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueInfo {
    pub read_queue_nums: i32,
    pub write_queue_nums: i32,
    pub perm: i32,
    pub topic_sys_flag: i32,
}

/// One broker set (a master and its slaves) under one broker name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub cluster: String,
    pub broker_name: String,
    /// broker id (0 = master) → `ip:port`.
    pub addrs: BTreeMap<i64, String>,
    pub enable_acting_master: bool,
    pub zone_name: Option<String>,
}

/// A broker's topic as carried in its registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicQueueConfig {
    pub topic: String,
    pub queue: QueueInfo,
}

/// The registration's data version (`DataVersion`): a change means the
/// broker's topic list changed and queue data must be rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataVersion {
    pub state_version: i64,
    pub timestamp: i64,
    pub counter: i64,
}

/// Everything a REGISTER_BROKER request says.
#[derive(Debug, Clone)]
pub struct Registration {
    pub cluster: String,
    pub broker_addr: String,
    pub broker_name: String,
    pub broker_id: i64,
    pub ha_server_addr: String,
    pub zone_name: Option<String>,
    /// `heartbeatTimeoutMillis`; None = the server default.
    pub timeout: Option<Duration>,
    /// None for brokers too old to send `enableActingMaster`.
    pub enable_acting_master: Option<bool>,
    pub data_version: DataVersion,
    pub topics: Vec<TopicQueueConfig>,
    /// The connection the registration came on; its close unregisters the broker.
    pub channel_id: Option<u64>,
}

/// The answer to a registration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterOutcome {
    pub master_addr: Option<String>,
    pub ha_server_addr: Option<String>,
}

/// A topic's route: the input of a TopicRouteData body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute {
    /// broker name → queue info, sorted by broker name.
    pub queues: Vec<(String, QueueInfo)>,
    pub brokers: Vec<BrokerInfo>,
}

#[derive(Clone, Default)]
struct Tables {
    /// topic → broker name → queues.
    topics: HashMap<String, Arc<BTreeMap<String, QueueInfo>>>,
    /// broker name → broker set.
    brokers: HashMap<String, Arc<BrokerInfo>>,
    /// cluster → broker names.
    clusters: HashMap<String, Arc<BTreeSet<String>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LiveKey {
    cluster: String,
    addr: String,
}

#[derive(Debug, Clone)]
struct LiveInfo {
    last_update: Instant,
    timeout: Duration,
    data_version: DataVersion,
    ha_server_addr: String,
    broker_name: String,
    broker_id: i64,
    channel_id: Option<u64>,
}

pub struct RouteInfoManager {
    tables: ArcSwap<Tables>,
    writer: Mutex<()>,
    live: Mutex<HashMap<LiveKey, LiveInfo>>,
    default_timeout: Duration,
    delete_topic_with_registration: bool,
}

impl RouteInfoManager {
    pub fn new(default_timeout: Duration, delete_topic_with_registration: bool) -> Self {
        RouteInfoManager {
            tables: ArcSwap::from_pointee(Tables::default()),
            writer: Mutex::new(()),
            live: Mutex::new(HashMap::new()),
            default_timeout,
            delete_topic_with_registration,
        }
    }

    /// Applies a broker registration, following RocketMQ's RouteInfoManager:
    /// only the master (or, for acting-master brokers, the lowest-id slave)
    /// defines the topic's queues, and only when its data version changed or
    /// it registers for the first time.
    pub fn register(&self, reg: Registration) -> RegisterOutcome {
        let key = LiveKey {
            cluster: reg.cluster.clone(),
            addr: reg.broker_addr.clone(),
        };
        let timeout = reg.timeout.unwrap_or(self.default_timeout);

        // Fast path: a periodic registration with nothing new only refreshes liveness.
        if let Some(outcome) = self.refresh_if_unchanged(&key, &reg, timeout) {
            return outcome;
        }

        let _w = self.writer.lock();
        let current = self.tables.load_full();
        let mut next = (*current).clone();

        let names = next.clusters.entry(reg.cluster.clone()).or_default();
        if !names.contains(&reg.broker_name) {
            Arc::make_mut(names).insert(reg.broker_name.clone());
        }

        let mut register_first = !next.brokers.contains_key(&reg.broker_name);
        let broker = next
            .brokers
            .entry(reg.broker_name.clone())
            .or_insert_with(|| {
                Arc::new(BrokerInfo {
                    cluster: reg.cluster.clone(),
                    broker_name: reg.broker_name.clone(),
                    addrs: BTreeMap::new(),
                    enable_acting_master: false,
                    zone_name: reg.zone_name.clone(),
                })
            });
        let broker = Arc::make_mut(broker);
        broker.enable_acting_master = reg.enable_acting_master.unwrap_or(false);
        if reg.zone_name.is_some() {
            broker.zone_name = reg.zone_name.clone();
        }

        // A stale registration for an id now held by a newer broker is ignored.
        if let Some(old_addr) = broker.addrs.get(&reg.broker_id) {
            if *old_addr != reg.broker_addr {
                let live = self.live.lock();
                let old_key = LiveKey {
                    cluster: reg.cluster.clone(),
                    addr: old_addr.clone(),
                };
                if let Some(old) = live.get(&old_key) {
                    if old.data_version.state_version > reg.data_version.state_version {
                        tracing::warn!(
                            broker = %reg.broker_name,
                            id = reg.broker_id,
                            addr = %reg.broker_addr,
                            "ignoring registration: id is held by {old_addr} with a newer state version"
                        );
                        return RegisterOutcome::default();
                    }
                }
            }
        }
        // The same address under another id: a slave became master (or back).
        broker
            .addrs
            .retain(|id, addr| *id == reg.broker_id || *addr != reg.broker_addr);
        let old = broker.addrs.insert(reg.broker_id, reg.broker_addr.clone());
        register_first |= old.is_none();

        let is_master = reg.broker_id == 0;
        let is_prime_slave = reg.enable_acting_master.is_some()
            && !is_master
            && broker.addrs.keys().next() == Some(&reg.broker_id);
        let acting_master = is_prime_slave && reg.enable_acting_master == Some(true);
        let broker_snapshot = broker.clone();

        let changed = {
            let live = self.live.lock();
            live.get(&key).map(|l| l.data_version) != Some(reg.data_version)
        };
        if (is_master || is_prime_slave) && (changed || register_first) {
            for t in &reg.topics {
                let mut q = t.queue;
                if acting_master {
                    q.perm &= !PERM_WRITE;
                }
                let entry = next.topics.entry(t.topic.clone()).or_default();
                if entry.get(&reg.broker_name) != Some(&q) {
                    Arc::make_mut(entry).insert(reg.broker_name.clone(), q);
                }
            }
            if self.delete_topic_with_registration && is_master {
                let keep: BTreeSet<&str> = reg.topics.iter().map(|t| t.topic.as_str()).collect();
                next.topics.retain(|topic, queues| {
                    if queues.contains_key(&reg.broker_name) && !keep.contains(topic.as_str()) {
                        Arc::make_mut(queues).remove(&reg.broker_name);
                    }
                    !queues.is_empty()
                });
            }
        }

        self.live.lock().insert(
            key,
            LiveInfo {
                last_update: Instant::now(),
                timeout,
                data_version: reg.data_version,
                ha_server_addr: reg.ha_server_addr.clone(),
                broker_name: reg.broker_name.clone(),
                broker_id: reg.broker_id,
                channel_id: reg.channel_id,
            },
        );
        self.tables.store(Arc::new(next));
        self.outcome_for(&broker_snapshot, reg.broker_id)
    }

    fn refresh_if_unchanged(
        &self,
        key: &LiveKey,
        reg: &Registration,
        timeout: Duration,
    ) -> Option<RegisterOutcome> {
        let tables = self.tables.load();
        let broker = tables.brokers.get(&reg.broker_name)?;
        if broker.addrs.get(&reg.broker_id) != Some(&reg.broker_addr)
            || broker.enable_acting_master != reg.enable_acting_master.unwrap_or(false)
        {
            return None;
        }
        {
            let mut live = self.live.lock();
            let info = live.get_mut(key)?;
            if info.data_version != reg.data_version || info.broker_id != reg.broker_id {
                return None;
            }
            info.last_update = Instant::now();
            info.timeout = timeout;
            info.channel_id = reg.channel_id.or(info.channel_id);
        }
        Some(self.outcome_for(broker, reg.broker_id))
    }

    fn outcome_for(&self, broker: &BrokerInfo, broker_id: i64) -> RegisterOutcome {
        if broker_id == 0 {
            return RegisterOutcome::default();
        }
        let Some(master_addr) = broker.addrs.get(&0) else {
            return RegisterOutcome::default();
        };
        let live = self.live.lock();
        let ha = live
            .get(&LiveKey {
                cluster: broker.cluster.clone(),
                addr: master_addr.clone(),
            })
            .map(|l| l.ha_server_addr.clone());
        RegisterOutcome {
            master_addr: Some(master_addr.clone()),
            ha_server_addr: ha,
        }
    }

    /// Refreshes liveness without a registration (BROKER_HEARTBEAT,
    /// QUERY_DATA_VERSION). Returns whether the broker was known.
    pub fn touch(&self, cluster: &str, addr: &str) -> bool {
        let mut live = self.live.lock();
        match live.get_mut(&LiveKey {
            cluster: cluster.to_string(),
            addr: addr.to_string(),
        }) {
            Some(info) => {
                info.last_update = Instant::now();
                true
            }
            None => false,
        }
    }

    /// The data version a broker last registered with.
    pub fn data_version(&self, cluster: &str, addr: &str) -> Option<DataVersion> {
        self.live
            .lock()
            .get(&LiveKey {
                cluster: cluster.to_string(),
                addr: addr.to_string(),
            })
            .map(|l| l.data_version)
    }

    /// Removes one broker (UNREGISTER_BROKER, expiry or a closed connection).
    /// When a broker set has no address left, its name leaves the cluster and
    /// its queues leave every topic.
    pub fn unregister(&self, cluster: &str, addr: &str, broker_name: &str, broker_id: i64) {
        self.live.lock().remove(&LiveKey {
            cluster: cluster.to_string(),
            addr: addr.to_string(),
        });
        let _w = self.writer.lock();
        let current = self.tables.load_full();
        let Some(broker) = current.brokers.get(broker_name) else {
            return;
        };
        if broker.addrs.get(&broker_id).map(String::as_str) != Some(addr) {
            return;
        }
        let mut next = (*current).clone();
        let mut gone = false;
        if let Some(b) = next.brokers.get_mut(broker_name) {
            let b = Arc::make_mut(b);
            b.addrs.remove(&broker_id);
            gone = b.addrs.is_empty();
        }
        if gone {
            next.brokers.remove(broker_name);
            if let Some(names) = next.clusters.get_mut(cluster) {
                Arc::make_mut(names).remove(broker_name);
                if names.is_empty() {
                    next.clusters.remove(cluster);
                }
            }
            next.topics.retain(|_, queues| {
                if queues.contains_key(broker_name) {
                    Arc::make_mut(queues).remove(broker_name);
                }
                !queues.is_empty()
            });
        }
        tracing::info!(%cluster, %addr, %broker_name, broker_id, removed_set = gone, "broker unregistered");
        self.tables.store(Arc::new(next));
    }

    /// Drops every broker silent for longer than its timeout; returns how many.
    pub fn scan_not_active(&self) -> usize {
        let now = Instant::now();
        let expired: Vec<(LiveKey, LiveInfo)> = self
            .live
            .lock()
            .iter()
            .filter(|(_, l)| now.duration_since(l.last_update) > l.timeout)
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        for (k, l) in &expired {
            tracing::warn!(
                cluster = %k.cluster, addr = %k.addr, broker = %l.broker_name,
                "broker silent for {:?}, removing its routes", l.timeout
            );
            self.unregister(&k.cluster, &k.addr, &l.broker_name, l.broker_id);
        }
        expired.len()
    }

    /// A broker's connection closed: forget the brokers that registered on it.
    pub fn on_channel_closed(&self, channel_id: u64) {
        let gone: Vec<(LiveKey, LiveInfo)> = self
            .live
            .lock()
            .iter()
            .filter(|(_, l)| l.channel_id == Some(channel_id))
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        for (k, l) in gone {
            tracing::info!(addr = %k.addr, "broker connection closed");
            self.unregister(&k.cluster, &k.addr, &l.broker_name, l.broker_id);
        }
    }

    /// The route of a topic, or None if no live broker serves it.
    pub fn route(&self, topic: &str) -> Option<TopicRoute> {
        let tables = self.tables.load();
        let queues = tables.topics.get(topic)?;
        let brokers: Vec<BrokerInfo> = queues
            .keys()
            .filter_map(|name| tables.brokers.get(name).map(|b| (**b).clone()))
            .collect();
        if queues.is_empty() || brokers.is_empty() {
            return None;
        }
        Some(TopicRoute {
            queues: queues.iter().map(|(n, q)| (n.clone(), *q)).collect(),
            brokers,
        })
    }

    /// Every broker set and every cluster's broker names (GET_BROKER_CLUSTER_INFO).
    pub fn cluster_info(&self) -> (Vec<BrokerInfo>, BTreeMap<String, BTreeSet<String>>) {
        let tables = self.tables.load();
        let mut brokers: Vec<BrokerInfo> = tables.brokers.values().map(|b| (**b).clone()).collect();
        brokers.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
        let clusters = tables
            .clusters
            .iter()
            .map(|(c, names)| (c.clone(), (**names).clone()))
            .collect();
        (brokers, clusters)
    }

    pub fn all_topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tables.load().topics.keys().cloned().collect();
        v.sort();
        v
    }

    /// Topics with queues on any broker of `cluster`.
    pub fn topics_by_cluster(&self, cluster: &str) -> Vec<String> {
        let tables = self.tables.load();
        let Some(names) = tables.clusters.get(cluster) else {
            return Vec::new();
        };
        let mut v: Vec<String> = tables
            .topics
            .iter()
            .filter(|(_, q)| q.keys().any(|b| names.contains(b)))
            .map(|(t, _)| t.clone())
            .collect();
        v.sort();
        v
    }

    /// Topics whose sys flag matches `pred` on some broker (unit topic lists).
    pub fn topics_with_flag(&self, pred: impl Fn(i32) -> bool) -> Vec<String> {
        let tables = self.tables.load();
        let mut v: Vec<String> = tables
            .topics
            .iter()
            .filter(|(_, q)| q.values().any(|qi| pred(qi.topic_sys_flag)))
            .map(|(t, _)| t.clone())
            .collect();
        v.sort();
        v
    }

    /// Cluster names and broker names (GET_SYSTEM_TOPIC_LIST_FROM_NS), plus
    /// one master address to ask for the broker's own system topics.
    pub fn system_topics(&self) -> (Vec<String>, Option<String>) {
        let tables = self.tables.load();
        let mut v: Vec<String> = tables.clusters.keys().cloned().collect();
        v.extend(tables.brokers.keys().cloned());
        v.sort();
        v.dedup();
        let addr = tables
            .brokers
            .values()
            .find_map(|b| b.addrs.values().next().cloned());
        (v, addr)
    }

    /// Clears (wipe) or restores (add) the write permission of every topic
    /// on `broker_name`; returns the number of topics touched.
    pub fn set_write_perm(&self, broker_name: &str, writable: bool) -> usize {
        let _w = self.writer.lock();
        let current = self.tables.load_full();
        let mut next = (*current).clone();
        let mut count = 0;
        for queues in next.topics.values_mut() {
            if let Some(q) = queues.get(broker_name).copied() {
                let perm = if writable {
                    PERM_READ | PERM_WRITE
                } else {
                    q.perm & !PERM_WRITE
                };
                Arc::make_mut(queues).insert(broker_name.to_string(), QueueInfo { perm, ..q });
                count += 1;
            }
        }
        self.tables.store(Arc::new(next));
        count
    }

    /// Removes a topic, or only its queues on the brokers of `cluster`.
    pub fn delete_topic(&self, topic: &str, cluster: Option<&str>) {
        let _w = self.writer.lock();
        let current = self.tables.load_full();
        let mut next = (*current).clone();
        match cluster.filter(|c| !c.is_empty()) {
            None => {
                next.topics.remove(topic);
            }
            Some(c) => {
                let names = next.clusters.get(c).cloned().unwrap_or_default();
                if let Some(queues) = next.topics.get_mut(topic) {
                    Arc::make_mut(queues).retain(|b, _| !names.contains(b));
                    if queues.is_empty() {
                        next.topics.remove(topic);
                    }
                }
            }
        }
        self.tables.store(Arc::new(next));
    }

    /// Adds queue data for a topic on known brokers (REGISTER_TOPIC_IN_NAMESRV).
    pub fn register_topic(&self, topic: &str, queues: &[(String, QueueInfo)]) {
        let _w = self.writer.lock();
        let current = self.tables.load_full();
        let mut next = (*current).clone();
        for (broker, q) in queues {
            if next.brokers.contains_key(broker) {
                Arc::make_mut(next.topics.entry(topic.to_string()).or_default())
                    .insert(broker.clone(), *q);
            }
        }
        self.tables.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, id: i64, addr: &str, topics: &[(&str, i32)], counter: i64) -> Registration {
        Registration {
            cluster: "DefaultCluster".into(),
            broker_addr: addr.into(),
            broker_name: name.into(),
            broker_id: id,
            ha_server_addr: format!("{addr}-ha"),
            zone_name: None,
            timeout: None,
            enable_acting_master: Some(false),
            data_version: DataVersion {
                state_version: 0,
                timestamp: 1,
                counter,
            },
            topics: topics
                .iter()
                .map(|(t, n)| TopicQueueConfig {
                    topic: t.to_string(),
                    queue: QueueInfo {
                        read_queue_nums: *n,
                        write_queue_nums: *n,
                        perm: 6,
                        topic_sys_flag: 0,
                    },
                })
                .collect(),
            channel_id: Some(7),
        }
    }

    #[test]
    fn registration_builds_routes_and_clusters() {
        let m = RouteInfoManager::new(Duration::from_secs(120), false);
        m.register(reg(
            "broker-a",
            0,
            "10.0.0.1:10911",
            &[("T", 4), ("U", 8)],
            1,
        ));
        m.register(reg("broker-b", 0, "10.0.0.2:10911", &[("T", 2)], 1));
        let r = m.route("T").unwrap();
        assert_eq!(r.queues.len(), 2);
        assert_eq!(r.queues[0].0, "broker-a");
        assert_eq!(r.queues[1].1.write_queue_nums, 2);
        assert_eq!(r.brokers.len(), 2);
        assert_eq!(m.route("U").unwrap().brokers[0].addrs[&0], "10.0.0.1:10911");
        assert!(m.route("V").is_none());
        let (brokers, clusters) = m.cluster_info();
        assert_eq!(brokers.len(), 2);
        assert_eq!(clusters["DefaultCluster"].len(), 2);
        assert_eq!(m.topics_by_cluster("DefaultCluster"), vec!["T", "U"]);
    }

    #[test]
    fn unchanged_version_keeps_routes_and_new_version_replaces_them() {
        let m = RouteInfoManager::new(Duration::from_secs(120), false);
        m.register(reg("a", 0, "h:1", &[("T", 4)], 1));
        // Same version, different content: ignored, as RocketMQ does.
        m.register(reg("a", 0, "h:1", &[("T", 16)], 1));
        assert_eq!(m.route("T").unwrap().queues[0].1.read_queue_nums, 4);
        m.register(reg("a", 0, "h:1", &[("T", 16)], 2));
        assert_eq!(m.route("T").unwrap().queues[0].1.read_queue_nums, 16);
    }

    #[test]
    fn slave_gets_master_address_and_does_not_define_queues() {
        let m = RouteInfoManager::new(Duration::from_secs(120), false);
        m.register(reg("a", 0, "h:1", &[("T", 4)], 1));
        let out = m.register(reg("a", 1, "h:2", &[("T", 8)], 1));
        assert_eq!(out.master_addr.as_deref(), Some("h:1"));
        assert_eq!(out.ha_server_addr.as_deref(), Some("h:1-ha"));
        let r = m.route("T").unwrap();
        assert_eq!(r.queues[0].1.read_queue_nums, 4);
        assert_eq!(r.brokers[0].addrs.len(), 2);
    }

    #[test]
    fn expiry_and_unregister_remove_routes() {
        let m = RouteInfoManager::new(Duration::from_millis(0), false);
        m.register(reg("a", 0, "h:1", &[("T", 4)], 1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(m.scan_not_active(), 1);
        assert!(m.route("T").is_none());
        assert!(m.cluster_info().0.is_empty());
        assert!(m.cluster_info().1.is_empty());

        let m = RouteInfoManager::new(Duration::from_secs(120), false);
        m.register(reg("a", 0, "h:1", &[("T", 4)], 1));
        m.register(reg("a", 1, "h:2", &[("T", 4)], 1));
        m.unregister("DefaultCluster", "h:1", "a", 0);
        // The slave still serves reads.
        assert_eq!(m.route("T").unwrap().brokers[0].addrs.len(), 1);
        m.on_channel_closed(7);
        assert!(m.route("T").is_none());
    }

    #[test]
    fn write_perm_wipe_and_add() {
        let m = RouteInfoManager::new(Duration::from_secs(120), false);
        m.register(reg("a", 0, "h:1", &[("T", 4), ("U", 4)], 1));
        assert_eq!(m.set_write_perm("a", false), 2);
        assert_eq!(m.route("T").unwrap().queues[0].1.perm, 4);
        assert_eq!(m.set_write_perm("a", true), 2);
        assert_eq!(m.route("T").unwrap().queues[0].1.perm, 6);
        assert_eq!(m.set_write_perm("nope", true), 0);
    }

    #[test]
    fn delete_topic_whole_or_per_cluster() {
        let m = RouteInfoManager::new(Duration::from_secs(120), false);
        m.register(reg("a", 0, "h:1", &[("T", 4), ("U", 4)], 1));
        let mut other = reg("b", 0, "h:2", &[("T", 4)], 1);
        other.cluster = "Other".into();
        m.register(other);
        m.delete_topic("T", Some("Other"));
        assert_eq!(m.route("T").unwrap().queues.len(), 1);
        m.delete_topic("U", None);
        assert!(m.route("U").is_none());
    }

    #[test]
    fn delete_topic_with_registration_drops_missing_topics() {
        let m = RouteInfoManager::new(Duration::from_secs(120), true);
        m.register(reg("a", 0, "h:1", &[("T", 4), ("U", 4)], 1));
        m.register(reg("a", 0, "h:1", &[("T", 4)], 2));
        assert!(m.route("U").is_none());
        assert!(m.route("T").is_some());
    }
}
