//! `TopicConfigManager`: the broker's topic table (queue counts, permissions,
//! order flag), its `DataVersion`, the startup system topics, auto-creation
//! from `TBW102`, and persistence to `<storePathRootDir>/config/topics.json`
//! in Java's `TopicConfigSerializeWrapper` layout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use compact_str::CompactString;

use apogee_protocol::body::{DataVersion, TopicConfig, TopicConfigSerializeWrapper};
use apogee_protocol::flags::PermName;
use apogee_protocol::topic;
use apogee_store::vfs::{self, VfsRef};
use parking_lot::RwLock;

use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};
use crate::persist::{self, PersistStats, TableWriter};
use crate::register::{Outgoing, RegisterSignal, RegisterSlot, RegisterWork};
use crate::stats::{BrokerStats, TopicMeter};

/// Java `PopAckConstants.REVIVE_TOPIC` prefix.
pub const REVIVE_TOPIC_PREFIX: &str = "rmq_sys_REVIVE_LOG_";
/// Java `TimerMessageStore.TIMER_TOPIC`.
pub const TIMER_TOPIC: &str = "rmq_sys_wheel_timer";
/// Queues of `SCHEDULE_TOPIC_XXXX` (one per delay level, at least 18 as Java).
pub const SCHEDULE_TOPIC_QUEUE_NUM: i32 = 18;

/// Looked up on every send and pull: hashed with foldhash, not SipHash,
/// and shared (`Arc`) so a lookup copies nothing.
/// Names inline up to 24 bytes: comparing a key reads no other line.
type TopicMap = HashMap<CompactString, Arc<TopicEntry>, foldhash::fast::RandomState>;

/// A topic's config with the per-topic state the send path needs kept
/// beside it, so that one lookup serves a message (with 100,000 topics
/// every table lookup is a few cache misses). Derefs to the config.
#[derive(Debug)]
pub struct TopicEntry {
    pub config: TopicConfig,
    /// Filled on the first send after the entry was made; a replaced
    /// entry finds the same meter again in the stats table.
    put_meter: OnceLock<TopicMeter>,
}

impl TopicEntry {
    pub fn new(config: TopicConfig) -> Arc<TopicEntry> {
        Arc::new(TopicEntry {
            config,
            put_meter: OnceLock::new(),
        })
    }

    /// The topic's put meter in `stats`.
    pub fn put_meter(&self, stats: &BrokerStats) -> &TopicMeter {
        self.put_meter
            .get_or_init(|| stats.topic_meter(&self.config.topic_name))
    }
}

impl std::ops::Deref for TopicEntry {
    type Target = TopicConfig;
    fn deref(&self) -> &TopicConfig {
        &self.config
    }
}

struct Table {
    topics: TopicMap,
    version: DataVersion,
}

struct Inner {
    /// Shared with the writer, which encodes it.
    table: Arc<RwLock<Table>>,
    writer: TableWriter,
    auto_create: AtomicBool,
    register_signal: Arc<RegisterSignal>,
}

/// The topic table. Cheap to clone (shared state).
#[derive(Clone)]
pub struct TopicConfigManager {
    inner: Arc<Inner>,
}

impl TopicConfigManager {
    /// Builds the startup system topics, then loads `config/topics.json`
    /// (persisted entries override the built-in ones, as in Java).
    /// `register_signal` hears of every change so the broker registers the
    /// changed topics with its NameServers.
    pub fn new(config: &BrokerConfig, register_signal: Arc<RegisterSignal>) -> Result<Self> {
        Self::with_vfs(config, register_signal, vfs::real())
    }

    /// [`TopicConfigManager::new`] on the given file system (the store's).
    pub fn with_vfs(
        config: &BrokerConfig,
        register_signal: Arc<RegisterSignal>,
        vfs: VfsRef,
    ) -> Result<Self> {
        let path = persist::config_path(&config.store.store_path_root_dir, "topics.json");
        let mut topics = TopicMap::default();
        for t in system_topics(config) {
            topics.insert(CompactString::from(&*t.topic_name), TopicEntry::new(t));
        }
        let mut version = DataVersion::now();
        if let Some(data) = persist::read_optional(&*vfs, &path)? {
            let w =
                TopicConfigSerializeWrapper::decode(&data).map_err(|e| BrokerError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            topics.extend(
                w.topic_config_table
                    .into_iter()
                    .map(|(k, v)| (CompactString::from(k), TopicEntry::new(v))),
            );
            if w.data_version.timestamp > 0 {
                version = w.data_version;
            }
        }
        let table = Arc::new(RwLock::new(Table { topics, version }));
        let snap = Arc::clone(&table);
        let writer = TableWriter::start(
            "topics.json",
            path,
            vfs,
            Box::new(move || {
                let w = encode(&snap.read());
                w.encode()
            }),
        )?;
        Ok(TopicConfigManager {
            inner: Arc::new(Inner {
                table,
                writer,
                auto_create: AtomicBool::new(config.auto_create_topic_enable),
                register_signal,
            }),
        })
    }

    pub fn get(&self, topic: &str) -> Option<TopicConfig> {
        self.inner
            .table
            .read()
            .topics
            .get(topic)
            .map(|c| c.config.clone())
    }

    /// Like [`TopicConfigManager::get`] without copying the config (the
    /// send and pull paths).
    pub fn get_shared(&self, topic: &str) -> Option<Arc<TopicEntry>> {
        self.inner.table.read().topics.get(topic).cloned()
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.inner.table.read().topics.contains_key(topic)
    }

    /// Every topic, ordered by name.
    pub fn all(&self) -> Vec<TopicConfig> {
        let mut v: Vec<TopicConfig> = self
            .inner
            .table
            .read()
            .topics
            .values()
            .map(|c| c.config.clone())
            .collect();
        v.sort_unstable_by(|a, b| a.topic_name.cmp(&b.topic_name));
        v
    }

    /// Every topic name, ordered.
    pub fn topic_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .table
            .read()
            .topics
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort_unstable();
        v
    }

    /// Follows `autoCreateTopicEnable` changes made at runtime (UPDATE_BROKER_CONFIG).
    pub fn set_auto_create(&self, on: bool) {
        self.inner.auto_create.store(on, Ordering::Relaxed);
    }

    /// Creates or replaces a topic; bumps the data version, persists and
    /// asks for re-registration.
    pub fn update(&self, cfg: TopicConfig) {
        let name = cfg.topic_name.clone();
        {
            let mut t = self.inner.table.write();
            t.topics
                .insert(CompactString::from(&*name), TopicEntry::new(cfg));
            t.version.next_version();
            self.mark_register(Some(&name));
        }
        self.changed();
    }

    /// Removes a topic; false when it did not exist.
    pub fn delete(&self, topic: &str) -> bool {
        let removed = {
            let mut t = self.inner.table.write();
            let removed = t.topics.remove(topic).is_some();
            if removed {
                t.version.next_version();
                // An incremental registration cannot say "gone".
                self.mark_register(None);
            }
            removed
        };
        if removed {
            self.changed();
        }
        removed
    }

    /// Java `createTopicInSendMessageMethod`: an unknown topic inherits from
    /// `default_topic` (normally TBW102) when that topic carries the INHERIT
    /// bit (TBW102 only while auto-creation is on). Queue count is
    /// `min(queue_nums, default.writeQueueNums)`; perm is the default's minus
    /// INHERIT. Returns the existing or new config, `None` if not allowed.
    pub fn create_in_send(
        &self,
        topic: &str,
        default_topic: &str,
        queue_nums: i32,
        topic_sys_flag: i32,
    ) -> Option<TopicConfig> {
        let created = {
            let mut t = self.inner.table.write();
            if let Some(existing) = t.topics.get(topic) {
                return Some(TopicConfig::clone(existing));
            }
            let Some(def) = t.topics.get(default_topic) else {
                // Per send to an unknown topic.
                static NO_DEFAULT: apogee_throttle::LogThrottle = apogee_throttle::LogThrottle::new(
                    "cannot auto-create topic: default topic does not exist",
                );
                apogee_throttle::throttled_warn!(
                    NO_DEFAULT,
                    (),
                    topic,
                    default_topic,
                    "cannot auto-create topic: default topic does not exist"
                );
                return None;
            };
            let mut perm = def.perm;
            if default_topic == topic::AUTO_CREATE_TOPIC_KEY_TOPIC
                && !self.inner.auto_create.load(Ordering::Relaxed)
            {
                perm = PermName::PERM_READ | PermName::PERM_WRITE;
            }
            if !PermName::is_inherited(perm) {
                static NO_INHERIT: apogee_throttle::LogThrottle = apogee_throttle::LogThrottle::new(
                    "cannot auto-create topic: default topic has no INHERIT permission",
                );
                apogee_throttle::throttled_warn!(
                    NO_INHERIT,
                    (),
                    topic,
                    default_topic,
                    perm,
                    "cannot auto-create topic: default topic has no INHERIT permission"
                );
                return None;
            }
            let queues = queue_nums.min(def.write_queue_nums).max(0);
            let cfg = TopicConfig {
                topic_name: topic.to_string(),
                read_queue_nums: queues,
                write_queue_nums: queues,
                perm: perm & !PermName::PERM_INHERIT,
                topic_filter_type: def.topic_filter_type,
                topic_sys_flag,
                ..TopicConfig::default()
            };
            t.topics
                .insert(CompactString::from(topic), TopicEntry::new(cfg.clone()));
            t.version.next_version();
            self.mark_register(Some(topic));
            cfg
        };
        tracing::info!(
            topic,
            queues = created.write_queue_nums,
            "topic auto-created from {default_topic}"
        );
        self.changed();
        Some(created)
    }

    /// Java `createTopicInSendMessageBackMethod`: the config of a system
    /// topic (retry, DLQ, schedule, ...), created with the given queues,
    /// perm and sys flag when absent.
    pub fn get_or_create_system(
        &self,
        topic: &str,
        queue_nums: i32,
        perm: i32,
        sys_flag: i32,
    ) -> TopicConfig {
        let created = {
            let mut t = self.inner.table.write();
            if let Some(existing) = t.topics.get(topic) {
                return TopicConfig::clone(existing);
            }
            let cfg = TopicConfig {
                topic_name: topic.to_string(),
                read_queue_nums: queue_nums,
                write_queue_nums: queue_nums,
                perm,
                topic_sys_flag: sys_flag,
                ..TopicConfig::default()
            };
            t.topics
                .insert(CompactString::from(topic), TopicEntry::new(cfg.clone()));
            t.version.next_version();
            self.mark_register(Some(topic));
            cfg
        };
        tracing::info!(topic, queues = queue_nums, perm, "system topic created");
        self.changed();
        created
    }

    /// The table and version as registered with NameServers.
    pub fn serialize_wrapper(&self) -> TopicConfigSerializeWrapper {
        encode(&self.inner.table.read())
    }

    pub fn data_version(&self) -> DataVersion {
        self.inner.table.read().version.clone()
    }

    /// Saves `topics.json` with every change made so far and waits for it
    /// (blocking file I/O). Changes are saved in the background anyway; this
    /// is for shutdown and callers that need the file now.
    pub fn persist(&self) -> Result<()> {
        self.inner.writer.flush()
    }

    /// Counters of the background writer of `topics.json`.
    pub fn persist_stats(&self) -> PersistStats {
        self.inner.writer.stats()
    }

    /// Takes what `slot` has pending: the full table, or the changed
    /// topics' configs with the data version. The names are taken under
    /// the table lock, and every change marks its name under that lock
    /// before releasing it, so a data version read here never counts a
    /// change whose topic is missing from the increment (a NameServer
    /// applies topics only when the data version moved).
    pub fn take_registration(&self, slot: &RegisterSlot) -> Option<Outgoing> {
        let t = self.inner.table.read();
        match slot.take()? {
            RegisterWork::Full => Some(Outgoing::Full),
            RegisterWork::Topics(names) => Some(Outgoing::Increment(TopicConfigSerializeWrapper {
                topic_config_table: names
                    .into_iter()
                    .filter_map(|n| {
                        let c = t.topics.get(n.as_str())?.config.clone();
                        Some((n, c))
                    })
                    .collect(),
                data_version: t.version.clone(),
            })),
        }
    }

    /// Tells the NameServer registration tasks of a change (None: a
    /// removal). Called with the table's write lock held; see
    /// [`TopicConfigManager::take_registration`].
    fn mark_register(&self, topic: Option<&str>) {
        match topic {
            Some(t) => self.inner.register_signal.topic_changed(t),
            None => self.inner.register_signal.full(),
        }
    }

    fn changed(&self) {
        // As RocketMQ, the request is answered once the table changed in
        // memory; the file follows (coalesced with other changes).
        self.inner.writer.mark_dirty();
    }
}

/// The table in Java's layout. Cloned under the lock, encoded after it.
fn encode(t: &Table) -> TopicConfigSerializeWrapper {
    TopicConfigSerializeWrapper {
        topic_config_table: t
            .topics
            .iter()
            .map(|(k, v)| (k.to_string(), v.config.clone()))
            .collect(),
        data_version: t.version.clone(),
    }
}

fn sys_topic(name: impl Into<String>, queues: i32, perm: i32) -> TopicConfig {
    TopicConfig {
        topic_name: name.into(),
        read_queue_nums: queues,
        write_queue_nums: queues,
        perm,
        ..TopicConfig::default()
    }
}

/// The topics a broker creates at startup (reference 9.2).
pub fn system_topics(c: &BrokerConfig) -> Vec<TopicConfig> {
    let rw = PermName::PERM_READ | PermName::PERM_WRITE;
    let toggled = |on: bool| PermName::PERM_INHERIT | if on { rw } else { 0 };
    let mut v = vec![sys_topic(topic::RMQ_SYS_SELF_TEST_TOPIC, 1, rw)];
    if c.auto_create_topic_enable {
        v.push(sys_topic(
            topic::AUTO_CREATE_TOPIC_KEY_TOPIC,
            c.default_topic_queue_nums,
            rw | PermName::PERM_INHERIT,
        ));
    }
    v.push(sys_topic(topic::RMQ_SYS_BENCHMARK_TOPIC, 1024, rw));
    v.push(sys_topic(
        c.broker_cluster_name.clone(),
        16,
        toggled(c.cluster_topic_enable),
    ));
    v.push(sys_topic(
        c.broker_name.clone(),
        1,
        toggled(c.broker_topic_enable),
    ));
    v.push(sys_topic(topic::RMQ_SYS_OFFSET_MOVED_EVENT, 1, rw));
    let levels = i32::try_from(c.delay_levels().len()).unwrap_or(SCHEDULE_TOPIC_QUEUE_NUM);
    v.push(sys_topic(
        topic::RMQ_SYS_SCHEDULE_TOPIC,
        levels.max(SCHEDULE_TOPIC_QUEUE_NUM),
        rw,
    ));
    if c.trace_topic_enable {
        v.push(sys_topic(c.msg_trace_topic_name.clone(), 1, rw));
    }
    v.push(sys_topic(topic::reply_topic(&c.broker_cluster_name), 1, rw));
    v.push(sys_topic(
        format!("{REVIVE_TOPIC_PREFIX}{}", c.broker_cluster_name),
        8,
        rw,
    ));
    v.push(sys_topic(
        format!(
            "{}{}",
            topic::SYNC_BROKER_MEMBER_GROUP_PREFIX,
            c.broker_name
        ),
        1,
        PermName::PERM_INHERIT,
    ));
    v.push(sys_topic(topic::RMQ_SYS_TRANS_HALF_TOPIC, 1, rw));
    v.push(sys_topic(topic::RMQ_SYS_TRANS_OP_HALF_TOPIC, 1, rw));
    if c.timer_wheel_enable {
        v.push(sys_topic(TIMER_TOPIC, 1, rw));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &std::path::Path) -> BrokerConfig {
        let mut c = BrokerConfig::default();
        c.store.store_path_root_dir = dir.to_path_buf();
        c
    }

    #[test]
    fn startup_topics_present() {
        let dir = tempfile::tempdir().unwrap();
        let m = TopicConfigManager::new(&cfg(dir.path()), Arc::new(RegisterSignal::new())).unwrap();
        let tbw = m.get("TBW102").unwrap();
        assert_eq!(tbw.perm, 7);
        assert_eq!(tbw.write_queue_nums, 8);
        assert!(m.get("SCHEDULE_TOPIC_XXXX").is_some());
        assert!(m.get("DefaultCluster").is_some());
        assert!(m.get("broker-a").is_some());
        assert!(m.get("DefaultCluster_REPLY_TOPIC").is_some());
        assert!(m.get("rmq_sys_SYNC_BROKER_MEMBER_broker-a").is_some());
    }

    #[test]
    fn no_tbw102_without_auto_create() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.auto_create_topic_enable = false;
        let m = TopicConfigManager::new(&c, Arc::new(RegisterSignal::new())).unwrap();
        assert!(m.get("TBW102").is_none());
        assert!(m.create_in_send("T1", "TBW102", 4, 0).is_none());
    }

    #[test]
    fn create_in_send_inherits_and_bumps_version() {
        let dir = tempfile::tempdir().unwrap();
        let signal = Arc::new(RegisterSignal::new());
        let m = TopicConfigManager::new(&cfg(dir.path()), signal).unwrap();
        let v0 = m.data_version();
        let t = m.create_in_send("NewTopic", "TBW102", 16, 0).unwrap();
        assert_eq!(t.write_queue_nums, 8, "capped by TBW102's queues");
        assert_eq!(t.perm, 6, "INHERIT removed");
        let v1 = m.data_version();
        assert!(v1.counter > v0.counter);
        // Second call returns the same config without a version change.
        assert_eq!(m.create_in_send("NewTopic", "TBW102", 2, 0).unwrap(), t);
        assert_eq!(m.data_version(), v1);
        // A default topic without INHERIT refuses.
        assert!(m.create_in_send("Other", "NewTopic", 4, 0).is_none());
    }

    #[test]
    fn persisted_topics_survive_reload_in_java_layout() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        {
            let m = TopicConfigManager::new(&c, Arc::new(RegisterSignal::new())).unwrap();
            let mut t = TopicConfig::new("Persisted");
            t.read_queue_nums = 3;
            t.write_queue_nums = 3;
            t.order = true;
            m.update(t);
            m.get_or_create_system("%RETRY%g1", 1, 6, 0);
            m.persist().unwrap();
            assert!(m.delete("%RETRY%g1"));
            assert!(!m.delete("%RETRY%g1"));
            m.persist().unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join("config/topics.json")).unwrap();
        assert!(text.contains("\"topicConfigTable\""), "{text}");
        assert!(text.contains("\"dataVersion\""), "{text}");
        let m = TopicConfigManager::new(&c, Arc::new(RegisterSignal::new())).unwrap();
        let t = m.get("Persisted").unwrap();
        assert_eq!(t.read_queue_nums, 3);
        assert!(t.order);
        assert!(m.get("%RETRY%g1").is_none());
    }

    /// Power cuts at arbitrary moments of a stream of saves (with the
    /// unsynced bytes of files torn): the reloaded table is always a state
    /// the broker had, never a torn or unreadable file.
    #[test]
    fn power_loss_leaves_the_old_or_the_new_table() {
        use apogee_store::vfs::sim::{CrashMode, SimVfs};
        let mut c = BrokerConfig::default();
        c.store.store_path_root_dir = "/store".into();
        let mut disk = SimVfs::new();
        let mut next = 0usize;
        for round in 0..20u64 {
            let m = TopicConfigManager::with_vfs(
                &c,
                Arc::new(RegisterSignal::new()),
                Arc::new(disk.clone()),
            )
            .unwrap();
            // What survived the previous cut is a prefix of the topics made.
            let have = (0..next)
                .take_while(|i| m.contains(&format!("P{i:04}")))
                .count();
            assert!(
                (have..next).all(|i| !m.contains(&format!("P{i:04}"))),
                "round {round}: not a state the table had"
            );
            if round > 0 {
                assert!(m.contains("P0000"), "round {round}: saved table lost");
            }
            next = have;
            for _ in 0..40 {
                let mut t = TopicConfig::new(format!("P{next:04}"));
                t.read_queue_nums = 1;
                t.write_queue_nums = 1;
                m.update(t);
                next += 1;
                if round == 0 && next == 1 {
                    m.persist().unwrap();
                }
            }
            // Cut the power somewhere in the middle of the saves.
            std::thread::sleep(std::time::Duration::from_micros(round * 700));
            disk = disk
                .crash(CrashMode {
                    seed: round,
                    torn_probability: 1.0,
                })
                .unwrap();
        }
        // A completed save survives a cut right after it.
        let m = TopicConfigManager::with_vfs(
            &c,
            Arc::new(RegisterSignal::new()),
            Arc::new(disk.clone()),
        )
        .unwrap();
        m.update(TopicConfig::new("Last"));
        m.persist().unwrap();
        let disk = disk
            .crash(CrashMode {
                seed: 99,
                torn_probability: 1.0,
            })
            .unwrap();
        let m = TopicConfigManager::with_vfs(&c, Arc::new(RegisterSignal::new()), Arc::new(disk))
            .unwrap();
        assert!(m.contains("Last"));
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::write(dir.path().join("config/topics.json"), b"{not json").unwrap();
        let err = TopicConfigManager::new(&cfg(dir.path()), Arc::new(RegisterSignal::new()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("topics.json"), "{err}");
    }
}
