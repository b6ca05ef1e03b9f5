//! KV configuration (namespace → key → value), persisted as JSON in the
//! same shape as RocketMQ's `kvConfig.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::error::NamesrvError;

/// The namespace whose entries become `orderTopicConf` in routes.
pub const ORDER_TOPIC_CONFIG: &str = "ORDER_TOPIC_CONFIG";

#[derive(Serialize, Deserialize, Default)]
struct KvFile {
    #[serde(rename = "configTable", default)]
    config_table: BTreeMap<String, BTreeMap<String, String>>,
}

pub struct KvConfigManager {
    path: PathBuf,
    table: RwLock<HashMap<String, HashMap<String, String>>>,
    /// Serializes writers of the file so an older snapshot never lands last.
    persist_lock: tokio::sync::Mutex<()>,
}

impl KvConfigManager {
    /// Loads the file if it exists. A missing file is an empty table; a
    /// corrupt one is an error naming the file rather than silent data loss.
    pub fn load(path: &Path) -> Result<Self, NamesrvError> {
        let table = match std::fs::read(path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => HashMap::new(),
            Ok(bytes) => {
                let file: KvFile =
                    serde_json::from_slice(&bytes).map_err(|e| NamesrvError::Io {
                        path: path.display().to_string(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    })?;
                file.config_table
                    .into_iter()
                    .map(|(ns, kv)| (ns, kv.into_iter().collect()))
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                return Err(NamesrvError::Io {
                    path: path.display().to_string(),
                    source: e,
                })
            }
        };
        Ok(KvConfigManager {
            path: path.to_path_buf(),
            table: RwLock::new(table),
            persist_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn put(&self, namespace: &str, key: &str, value: &str) {
        self.table
            .write()
            .entry(namespace.to_string())
            .or_default()
            .insert(key.to_string(), value.to_string());
    }

    pub fn get(&self, namespace: &str, key: &str) -> Option<String> {
        self.table.read().get(namespace)?.get(key).cloned()
    }

    /// Returns whether something was removed.
    pub fn delete(&self, namespace: &str, key: &str) -> bool {
        let mut t = self.table.write();
        let Some(ns) = t.get_mut(namespace) else {
            return false;
        };
        let removed = ns.remove(key).is_some();
        if ns.is_empty() {
            t.remove(namespace);
        }
        removed
    }

    pub fn list(&self, namespace: &str) -> Option<HashMap<String, String>> {
        self.table
            .read()
            .get(namespace)
            .filter(|m| !m.is_empty())
            .cloned()
    }

    /// Writes the table to disk (temp file + rename, so a crash leaves the
    /// old or the new file, never half of one).
    pub async fn persist(&self) -> Result<(), NamesrvError> {
        let _guard = self.persist_lock.lock().await;
        let snapshot = KvFile {
            config_table: self
                .table
                .read()
                .iter()
                .map(|(ns, kv)| {
                    (
                        ns.clone(),
                        kv.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    )
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&snapshot).map_err(|e| NamesrvError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        let io_err = |source| NamesrvError::Io {
            path: self.path.display().to_string(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io_err)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        tokio::fs::write(&tmp, &bytes).await.map_err(io_err)?;
        tokio::fs::rename(&tmp, &self.path).await.map_err(io_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_delete_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv").join("kvConfig.json");
        let kv = KvConfigManager::load(&path).unwrap();
        kv.put(ORDER_TOPIC_CONFIG, "T", "broker-a:4");
        kv.put("ns", "k", "v");
        assert!(kv.delete("ns", "k"));
        assert!(!kv.delete("ns", "k"));
        kv.persist().await.unwrap();
        let again = KvConfigManager::load(&path).unwrap();
        assert_eq!(
            again.get(ORDER_TOPIC_CONFIG, "T").as_deref(),
            Some("broker-a:4")
        );
        assert_eq!(again.list("ns"), None);
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvConfig.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = KvConfigManager::load(&path).err().unwrap().to_string();
        assert!(err.contains("kvConfig.json"), "{err}");
    }
}
