//! `SubscriptionGroupManager`: consumer group settings (retry queues, max
//! retries, broadcast allowed, consume enabled), created on demand when
//! `autoCreateSubscriptionGroup` is on, persisted to
//! `<storePathRootDir>/config/subscriptionGroup.json` in Java's layout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use apogee_protocol::body::{DataVersion, SubscriptionGroupConfig, SubscriptionGroupWrapper};
use apogee_protocol::topic;
use apogee_store::vfs::{self, VfsRef};
use parking_lot::RwLock;

use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};
use crate::persist::{self, PersistStats, TableWriter};

struct Table {
    groups: BTreeMap<String, SubscriptionGroupConfig>,
    forbidden: BTreeMap<String, BTreeMap<String, i32>>,
    version: DataVersion,
}

struct Inner {
    /// Shared with the writer, which encodes it.
    table: Arc<RwLock<Table>>,
    writer: TableWriter,
    auto_create: AtomicBool,
}

/// The consumer group table. Cheap to clone (shared state).
#[derive(Clone)]
pub struct SubscriptionGroupManager {
    inner: Arc<Inner>,
}

/// Groups Java brokers create at startup.
const SYSTEM_GROUPS: &[&str] = &[
    topic::TOOLS_CONSUMER_GROUP,
    topic::FILTERSRV_CONSUMER_GROUP,
    topic::SELF_TEST_CONSUMER_GROUP,
    topic::CID_SYS_RMQ_TRANS,
];

impl SubscriptionGroupManager {
    /// Creates the system groups and loads `config/subscriptionGroup.json`.
    pub fn new(config: &BrokerConfig) -> Result<Self> {
        Self::with_vfs(config, vfs::real())
    }

    /// [`SubscriptionGroupManager::new`] on the given file system (the store's).
    pub fn with_vfs(config: &BrokerConfig, vfs: VfsRef) -> Result<Self> {
        let path =
            persist::config_path(&config.store.store_path_root_dir, "subscriptionGroup.json");
        let mut groups = BTreeMap::new();
        for g in SYSTEM_GROUPS {
            let mut c = SubscriptionGroupConfig::new(*g);
            c.consume_broadcast_enable = true;
            groups.insert(g.to_string(), c);
        }
        let mut forbidden = BTreeMap::new();
        let mut version = DataVersion::now();
        if let Some(data) = persist::read_optional(&*vfs, &path)? {
            let w = SubscriptionGroupWrapper::decode(&data).map_err(|e| BrokerError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            groups.extend(w.subscription_group_table);
            forbidden = w.forbidden_table;
            if w.data_version.timestamp > 0 {
                version = w.data_version;
            }
        }
        let table = Arc::new(RwLock::new(Table {
            groups,
            forbidden,
            version,
        }));
        let snap = Arc::clone(&table);
        let writer = TableWriter::start(
            "subscriptionGroup.json",
            path,
            vfs,
            Box::new(move || {
                let w = encode(&snap.read());
                w.encode()
            }),
        )?;
        Ok(SubscriptionGroupManager {
            inner: Arc::new(Inner {
                table,
                writer,
                auto_create: AtomicBool::new(config.auto_create_subscription_group),
            }),
        })
    }

    pub fn get(&self, group: &str) -> Option<SubscriptionGroupConfig> {
        self.inner.table.read().groups.get(group).cloned()
    }

    pub fn contains(&self, group: &str) -> bool {
        self.inner.table.read().groups.contains_key(group)
    }

    /// The group's config; created with the defaults when absent and
    /// `autoCreateSubscriptionGroup` is on (or the group is a system group),
    /// `None` otherwise.
    pub fn find_or_create(&self, group: &str) -> Option<SubscriptionGroupConfig> {
        if let Some(c) = self.get(group) {
            return Some(c);
        }
        if !self.inner.auto_create.load(Ordering::Relaxed) && !topic::is_sys_consumer_group(group) {
            return None;
        }
        if topic::validate_group(group).is_err() {
            return None;
        }
        let created = {
            let mut t = self.inner.table.write();
            if let Some(c) = t.groups.get(group) {
                return Some(c.clone());
            }
            let c = SubscriptionGroupConfig::new(group);
            t.groups.insert(group.to_string(), c.clone());
            t.version.next_version();
            c
        };
        tracing::info!(group, "subscription group auto-created");
        self.changed();
        Some(created)
    }

    /// Creates or replaces a group.
    pub fn update(&self, cfg: SubscriptionGroupConfig) {
        {
            let mut t = self.inner.table.write();
            t.groups.insert(cfg.group_name.clone(), cfg);
            t.version.next_version();
        }
        self.changed();
    }

    /// Removes a group; false when it did not exist.
    pub fn delete(&self, group: &str) -> bool {
        let removed = {
            let mut t = self.inner.table.write();
            let removed = t.groups.remove(group).is_some();
            t.forbidden.remove(group);
            if removed {
                t.version.next_version();
            }
            removed
        };
        if removed {
            self.changed();
        }
        removed
    }

    pub fn all(&self) -> Vec<SubscriptionGroupConfig> {
        self.inner.table.read().groups.values().cloned().collect()
    }

    /// Follows `autoCreateSubscriptionGroup` changes made at runtime.
    pub fn set_auto_create(&self, on: bool) {
        self.inner.auto_create.store(on, Ordering::Relaxed);
    }

    pub fn data_version(&self) -> DataVersion {
        self.inner.table.read().version.clone()
    }

    /// The whole table (body of GET_ALL_SUBSCRIPTIONGROUP_CONFIG).
    pub fn wrapper(&self) -> SubscriptionGroupWrapper {
        encode(&self.inner.table.read())
    }

    /// Saves `subscriptionGroup.json` with every change made so far and
    /// waits for it (blocking file I/O); changes are saved in the
    /// background anyway.
    pub fn persist(&self) -> Result<()> {
        self.inner.writer.flush()
    }

    /// Counters of the background writer of `subscriptionGroup.json`.
    pub fn persist_stats(&self) -> PersistStats {
        self.inner.writer.stats()
    }

    fn changed(&self) {
        self.inner.writer.mark_dirty();
    }
}

/// The table in Java's layout. Cloned under the lock, encoded after it.
fn encode(t: &Table) -> SubscriptionGroupWrapper {
    SubscriptionGroupWrapper {
        subscription_group_table: t.groups.clone(),
        forbidden_table: t.forbidden.clone(),
        data_version: t.version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &std::path::Path, auto: bool) -> BrokerConfig {
        let mut c = BrokerConfig::default();
        c.store.store_path_root_dir = dir.to_path_buf();
        c.auto_create_subscription_group = auto;
        c
    }

    #[test]
    fn auto_create_follows_switch() {
        let dir = tempfile::tempdir().unwrap();
        let m = SubscriptionGroupManager::new(&cfg(dir.path(), false)).unwrap();
        assert!(m.find_or_create("g1").is_none());
        assert!(m.find_or_create(topic::TOOLS_CONSUMER_GROUP).is_some());
        m.set_auto_create(true);
        let g = m.find_or_create("g1").unwrap();
        assert_eq!(g.retry_max_times, 16);
        assert_eq!(g.retry_queue_nums, 1);
        assert!(m.find_or_create("bad group!").is_none());
    }

    #[test]
    fn groups_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), true);
        {
            let m = SubscriptionGroupManager::new(&c).unwrap();
            let mut g = SubscriptionGroupConfig::new("g2");
            g.retry_max_times = 3;
            g.consume_broadcast_enable = false;
            m.update(g);
            m.find_or_create("g3");
            assert!(m.delete("g3"));
            m.persist().unwrap();
        }
        let text =
            std::fs::read_to_string(dir.path().join("config/subscriptionGroup.json")).unwrap();
        assert!(text.contains("\"subscriptionGroupTable\""), "{text}");
        let m = SubscriptionGroupManager::new(&c).unwrap();
        let g = m.get("g2").unwrap();
        assert_eq!(g.retry_max_times, 3);
        assert!(!g.consume_broadcast_enable);
        assert!(m.get("g3").is_none());
    }
}
