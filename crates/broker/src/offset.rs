//! `ConsumerOffsetManager`: committed consumer offsets per `topic@group` and
//! queue, persisted to `<storePathRootDir>/config/consumerOffset.json` in
//! Java's layout (`{"offsetTable":{"topic@group":{0:12}}}`, integer keys
//! unquoted as fastjson writes them; quoted keys are read too).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use apogee_protocol::body::fastjson::{self, int_key_map, Dialect};
use apogee_protocol::body::DataVersion;
use apogee_store::vfs::{self, VfsRef};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};
use crate::persist::{self, PersistStats, TableWriter};

const TOPIC_GROUP_SEPARATOR: char = '@';

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
struct QueueOffsets(#[serde(with = "int_key_map")] BTreeMap<i32, i64>);

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct OffsetFile {
    offset_table: BTreeMap<String, QueueOffsets>,
    data_version: DataVersion,
}

type OffsetTable = HashMap<String, BTreeMap<i32, i64>>;

struct Inner {
    /// `topic@group` -> queue id -> next offset to consume. Shared with the
    /// writer, which encodes it.
    table: Arc<RwLock<OffsetTable>>,
    /// Commits are frequent: they only set this flag, and the periodic
    /// [`ConsumerOffsetManager::persist_soon`] hands the change to the writer.
    changed: AtomicBool,
    writer: TableWriter,
}

/// Committed offsets. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ConsumerOffsetManager {
    inner: Arc<Inner>,
}

fn key(topic: &str, group: &str) -> String {
    format!("{topic}{TOPIC_GROUP_SEPARATOR}{group}")
}

impl ConsumerOffsetManager {
    /// Loads `config/consumerOffset.json` if present.
    pub fn new(config: &BrokerConfig) -> Result<Self> {
        Self::with_vfs(config, vfs::real())
    }

    /// [`ConsumerOffsetManager::new`] on the given file system (the store's).
    pub fn with_vfs(config: &BrokerConfig, vfs: VfsRef) -> Result<Self> {
        let path = persist::config_path(&config.store.store_path_root_dir, "consumerOffset.json");
        let mut table = HashMap::new();
        if let Some(data) = persist::read_optional(&*vfs, &path)? {
            let f: OffsetFile = fastjson::from_slice(&data).map_err(|e| BrokerError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            table = f.offset_table.into_iter().map(|(k, v)| (k, v.0)).collect();
        }
        let table = Arc::new(RwLock::new(table));
        let snap = Arc::clone(&table);
        let writer = TableWriter::start(
            "consumerOffset.json",
            path,
            vfs,
            Box::new(move || encode(&snap)),
        )?;
        Ok(ConsumerOffsetManager {
            inner: Arc::new(Inner {
                table,
                changed: AtomicBool::new(false),
                writer,
            }),
        })
    }

    /// Records `offset` as the group's next offset for the queue.
    pub fn commit(&self, group: &str, topic: &str, queue_id: i32, offset: i64) {
        let prev = self
            .inner
            .table
            .write()
            .entry(key(topic, group))
            .or_default()
            .insert(queue_id, offset);
        // After the change, so that a save started after the flag was
        // taken always includes it.
        self.inner.changed.store(true, Ordering::Release);
        if let Some(p) = prev {
            if offset < p {
                tracing::debug!(
                    group,
                    topic,
                    queue_id,
                    offset,
                    previous = p,
                    "committed offset moved backwards"
                );
            }
        }
    }

    /// The committed offset, `None` when the group never committed one.
    pub fn query(&self, group: &str, topic: &str, queue_id: i32) -> Option<i64> {
        self.inner
            .table
            .read()
            .get(&key(topic, group))
            .and_then(|m| m.get(&queue_id).copied())
    }

    /// All committed offsets of a group on a topic.
    pub fn offsets(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        self.inner
            .table
            .read()
            .get(&key(topic, group))
            .cloned()
            .unwrap_or_default()
    }

    /// Groups with offsets on `topic`.
    pub fn groups_of_topic(&self, topic: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .table
            .read()
            .keys()
            .filter_map(|k| k.split_once(TOPIC_GROUP_SEPARATOR))
            .filter(|(t, _)| *t == topic)
            .map(|(_, g)| g.to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Topics on which `group` has offsets.
    pub fn topics_of_group(&self, group: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .table
            .read()
            .keys()
            .filter_map(|k| k.split_once(TOPIC_GROUP_SEPARATOR))
            .filter(|(_, g)| *g == group)
            .map(|(t, _)| t.to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Forgets every offset of `group`.
    pub fn remove_group(&self, group: &str) {
        self.inner.table.write().retain(|k, _| {
            k.split_once(TOPIC_GROUP_SEPARATOR)
                .is_none_or(|(_, g)| g != group)
        });
        self.inner.changed.store(true, Ordering::Release);
    }

    /// Forgets the group's offsets on one topic.
    pub fn remove(&self, group: &str, topic: &str) {
        self.inner.table.write().remove(&key(topic, group));
        self.inner.changed.store(true, Ordering::Release);
    }

    /// Forgets every group's offsets on `topic` (topic deleted).
    pub fn remove_topic(&self, topic: &str) {
        self.inner.table.write().retain(|k, _| {
            k.split_once(TOPIC_GROUP_SEPARATOR)
                .is_none_or(|(t, _)| t != topic)
        });
        self.inner.changed.store(true, Ordering::Release);
    }

    /// The whole table keyed `topic@group` (GET_ALL_CONSUMER_OFFSET).
    pub fn all(&self) -> BTreeMap<String, BTreeMap<i32, i64>> {
        self.inner
            .table
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// A slave takes its master's table (a GET_ALL_CONSUMER_OFFSET body):
    /// every `topic@group` entry there replaces this one's (Java's
    /// `SlaveSynchronize.syncConsumerOffset`, a `putAll`). Returns the
    /// number of entries taken.
    pub fn merge_from_master(&self, body: &[u8]) -> std::result::Result<usize, String> {
        let f: OffsetFile = fastjson::from_slice(body).map_err(|e| e.to_string())?;
        let n = f.offset_table.len();
        let mut changed = false;
        {
            let mut t = self.inner.table.write();
            for (k, v) in f.offset_table {
                if t.get(&k) != Some(&v.0) {
                    t.insert(k, v.0);
                    changed = true;
                }
            }
        }
        if changed {
            self.inner.changed.store(true, Ordering::Release);
        }
        Ok(n)
    }

    /// The table in Java's file layout (also the GET_ALL_CONSUMER_OFFSET body).
    pub fn encode(&self) -> Vec<u8> {
        encode(&self.inner.table)
    }

    /// Hands the offsets committed since the last call to the background
    /// writer (the periodic persist; never blocks on I/O).
    pub fn persist_soon(&self) {
        if self.inner.changed.swap(false, Ordering::Acquire) {
            self.inner.writer.mark_dirty();
        }
    }

    /// Saves `consumerOffset.json` with every commit made so far and waits
    /// for it (blocking file I/O).
    pub fn persist(&self) -> Result<()> {
        self.inner.changed.store(false, Ordering::Release);
        self.inner.writer.mark_dirty();
        self.inner.writer.flush()
    }

    /// Counters of the background writer of `consumerOffset.json`.
    pub fn persist_stats(&self) -> PersistStats {
        self.inner.writer.stats()
    }
}

/// The table in Java's file layout. Copied under the lock, encoded after it.
fn encode(table: &RwLock<OffsetTable>) -> Vec<u8> {
    let file = OffsetFile {
        offset_table: table
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), QueueOffsets(v.clone())))
            .collect(),
        data_version: DataVersion::now(),
    };
    fastjson::to_vec(&file, Dialect::Fastjson)
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
    fn commit_query_and_listings() {
        let dir = tempfile::tempdir().unwrap();
        let m = ConsumerOffsetManager::new(&cfg(dir.path())).unwrap();
        assert_eq!(m.query("g", "T", 0), None);
        m.commit("g", "T", 0, 12);
        m.commit("g", "T", 1, 3);
        m.commit("g2", "T", 0, 5);
        m.commit("g", "U", 0, 1);
        assert_eq!(m.query("g", "T", 0), Some(12));
        assert_eq!(m.offsets("g", "T"), BTreeMap::from([(0, 12), (1, 3)]));
        assert_eq!(m.groups_of_topic("T"), vec!["g", "g2"]);
        assert_eq!(m.topics_of_group("g"), vec!["T", "U"]);
        m.remove_group("g");
        assert_eq!(m.query("g", "T", 0), None);
        assert_eq!(m.query("g2", "T", 0), Some(5));
        m.remove_topic("T");
        assert!(m.all().is_empty());
    }

    #[test]
    fn file_uses_unquoted_int_keys_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let m = ConsumerOffsetManager::new(&c).unwrap();
        m.commit("g", "T", 0, 12);
        m.commit("g", "T", 7, 99);
        m.persist().unwrap();
        let text = std::fs::read_to_string(dir.path().join("config/consumerOffset.json")).unwrap();
        assert!(
            text.contains("\"offsetTable\":{\"T@g\":{0:12,7:99}}"),
            "{text}"
        );
        let m2 = ConsumerOffsetManager::new(&c).unwrap();
        assert_eq!(m2.offsets("g", "T"), BTreeMap::from([(0, 12), (7, 99)]));
    }

    #[test]
    fn reads_java_files_with_quoted_or_unquoted_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::write(
            dir.path().join("config/consumerOffset.json"),
            br#"{"dataVersion":{"counter":3,"timestamp":1},"offsetTable":{"A@g":{0:4,1:5},"B@g":{"2":6}},"pullOffsetTable":{}}"#,
        )
        .unwrap();
        let m = ConsumerOffsetManager::new(&cfg(dir.path())).unwrap();
        assert_eq!(m.query("g", "A", 1), Some(5));
        assert_eq!(m.query("g", "B", 2), Some(6));
    }
}
