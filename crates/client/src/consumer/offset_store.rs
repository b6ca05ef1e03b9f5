//! Consumer offsets: kept in memory per queue, persisted to the broker
//! (clustering: UPDATE_CONSUMER_OFFSET) or to a local JSON file
//! (broadcasting). The stored value is always the lowest offset not yet
//! processed, so a crash re-delivers rather than skips.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::instance::ClientInstance;
use crate::message::MessageQueue;

/// Where offsets live.
pub enum OffsetStore {
    Remote(RemoteOffsetStore),
    Local(LocalOffsetStore),
}

impl OffsetStore {
    fn table(&self) -> &Mutex<HashMap<MessageQueue, i64>> {
        match self {
            OffsetStore::Remote(r) => &r.table,
            OffsetStore::Local(l) => &l.table,
        }
    }

    /// Sets the in-memory offset; with `increase_only` a lower value is ignored.
    pub fn update(&self, mq: &MessageQueue, offset: i64, increase_only: bool) {
        let mut t = self.table().lock();
        let e = t.entry(mq.clone()).or_insert(offset);
        if !increase_only || offset > *e {
            *e = offset;
        }
    }

    pub fn read_memory(&self, mq: &MessageQueue) -> Option<i64> {
        self.table().lock().get(mq).copied()
    }

    /// The stored offset (broker or file); `None` when there is none.
    pub async fn read_store(&self, mq: &MessageQueue) -> Result<Option<i64>> {
        match self {
            OffsetStore::Remote(r) => r.read_store(mq).await,
            OffsetStore::Local(l) => Ok(l.loaded.lock().get(mq).copied()),
        }
    }

    pub fn remove(&self, mq: &MessageQueue) {
        self.table().lock().remove(mq);
    }

    pub fn snapshot(&self) -> HashMap<MessageQueue, i64> {
        self.table().lock().clone()
    }

    /// Persists the offsets of `mqs` (all known when `None`).
    pub async fn persist_all(&self, mqs: Option<&[MessageQueue]>) {
        let snap: Vec<(MessageQueue, i64)> = {
            let t = self.table().lock();
            match mqs {
                Some(list) => list
                    .iter()
                    .filter_map(|q| t.get(q).map(|o| (q.clone(), *o)))
                    .collect(),
                None => t.iter().map(|(q, o)| (q.clone(), *o)).collect(),
            }
        };
        match self {
            OffsetStore::Remote(r) => {
                for (mq, off) in snap {
                    if let Err(e) = r.push(&mq, off, true).await {
                        tracing::debug!(?mq, error = %e, "offset persist failed");
                    }
                }
            }
            OffsetStore::Local(l) => {
                if let Err(e) = l.write_file().await {
                    tracing::warn!(path = %l.path.display(), error = %e, "cannot write offsets");
                }
            }
        }
    }

    /// Persists one queue's offset and waits for the broker's answer.
    pub async fn persist(&self, mq: &MessageQueue) -> Result<()> {
        let Some(off) = self.read_memory(mq) else {
            return Ok(());
        };
        match self {
            OffsetStore::Remote(r) => r.push(mq, off, false).await,
            OffsetStore::Local(l) => l.write_file().await,
        }
    }
}

/// Offsets kept by the brokers (clustering).
pub struct RemoteOffsetStore {
    instance: Arc<ClientInstance>,
    group: String,
    table: Mutex<HashMap<MessageQueue, i64>>,
}

impl RemoteOffsetStore {
    pub fn new(instance: Arc<ClientInstance>, group: impl Into<String>) -> Self {
        RemoteOffsetStore {
            instance,
            group: group.into(),
            table: Mutex::new(HashMap::new()),
        }
    }

    async fn read_store(&self, mq: &MessageQueue) -> Result<Option<i64>> {
        let addr = self
            .instance
            .subscribe_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await?;
        let found = self
            .instance
            .query_consumer_offset(&addr, &self.group, mq)
            .await?;
        if let Some(o) = found {
            self.table.lock().insert(mq.clone(), o);
        }
        Ok(found)
    }

    async fn push(&self, mq: &MessageQueue, offset: i64, oneway: bool) -> Result<()> {
        let addr = self
            .instance
            .subscribe_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await?;
        self.instance
            .update_consumer_offset(&addr, &self.group, mq, offset, oneway)
            .await
    }
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OffsetFile {
    offset_table: Vec<OffsetEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OffsetEntry {
    topic: String,
    broker_name: String,
    queue_id: i32,
    offset: i64,
}

/// Offsets kept in a local JSON file (broadcasting).
pub struct LocalOffsetStore {
    path: PathBuf,
    table: Mutex<HashMap<MessageQueue, i64>>,
    /// What the file held at start (the "store" of a local offset).
    loaded: Mutex<HashMap<MessageQueue, i64>>,
    write_lock: tokio::sync::Mutex<()>,
}

impl LocalOffsetStore {
    /// Loads `path` if it exists (a `.bak` copy is tried when it is corrupt).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let loaded = Self::read_file(&path)
            .or_else(|| Self::read_file(&path.with_extension("json.bak")))
            .unwrap_or_default();
        Ok(LocalOffsetStore {
            path,
            table: Mutex::new(loaded.clone()),
            loaded: Mutex::new(loaded),
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_file(path: &Path) -> Option<HashMap<MessageQueue, i64>> {
        let data = std::fs::read(path).ok()?;
        let file: OffsetFile = match serde_json::from_slice(&data) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "corrupt offset file");
                return None;
            }
        };
        Some(
            file.offset_table
                .into_iter()
                .map(|e| {
                    (
                        MessageQueue::new(e.topic, e.broker_name, e.queue_id),
                        e.offset,
                    )
                })
                .collect(),
        )
    }

    /// Writes the table atomically (temp file + rename, previous kept as .bak).
    async fn write_file(&self) -> Result<()> {
        let _g = self.write_lock.lock().await;
        let mut entries: Vec<OffsetEntry> = self
            .table
            .lock()
            .iter()
            .map(|(q, o)| OffsetEntry {
                topic: q.topic.clone(),
                broker_name: q.broker_name.clone(),
                queue_id: q.queue_id,
                offset: *o,
            })
            .collect();
        entries.sort_by(|a, b| {
            (&a.topic, &a.broker_name, a.queue_id).cmp(&(&b.topic, &b.broker_name, b.queue_id))
        });
        let data = serde_json::to_vec_pretty(&OffsetFile {
            offset_table: entries,
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Some(dir) = self.path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let tmp = self.path.with_extension("json.tmp");
        tokio::fs::write(&tmp, &data).await?;
        if tokio::fs::try_exists(&self.path).await.unwrap_or(false) {
            let _ = tokio::fs::copy(&self.path, self.path.with_extension("json.bak")).await;
        }
        tokio::fs::rename(&tmp, &self.path).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_round_trips_and_keeps_lowest_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g").join("offsets.json");
        let mq = MessageQueue::new("T", "b", 3);
        let store = OffsetStore::Local(LocalOffsetStore::open(&path).unwrap());
        assert_eq!(store.read_store(&mq).await.unwrap(), None);
        store.update(&mq, 10, false);
        store.update(&mq, 7, true); // increase-only ignores going back
        assert_eq!(store.read_memory(&mq), Some(10));
        store.update(&mq, 5, false); // a reset may go back
        assert_eq!(store.read_memory(&mq), Some(5));
        store.persist_all(None).await;
        let again = OffsetStore::Local(LocalOffsetStore::open(&path).unwrap());
        assert_eq!(again.read_store(&mq).await.unwrap(), Some(5));
        assert_eq!(again.read_memory(&mq), Some(5));
        // a corrupt file falls back to the backup of the previous write
        again.update(&mq, 6, false);
        again.persist_all(None).await;
        std::fs::write(&path, b"{not json").unwrap();
        let recovered = LocalOffsetStore::open(&path).unwrap();
        assert_eq!(recovered.loaded.lock().get(&mq), Some(&5));
    }
}
