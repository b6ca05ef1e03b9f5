//! Orderly POP (Apache's `ConsumerOrderInfoManager`): a queue's batch
//! handed out with `order=true` blocks the queue until every message of it
//! is acked or its invisible time passes (then the same messages are
//! handed out again, from the offset that never moved past them). Acks
//! move the group's offset to the first un-acked message of the batch.
//!
//! The table is saved to `config/popOrderInfo.json` (written in the
//! background after each change), so a restart keeps an in-flight batch
//! invisible instead of handing it to another consumer at once.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::BrokerConfig;
use crate::error::{BrokerError, Result};
use crate::persist::{self, TableWriter};

/// The batch last handed out from one (topic, group, queue).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Batch {
    start: i64,
    /// Offset after the batch: the group's offset once all are acked.
    next: i64,
    offsets: Vec<i64>,
    acked: Vec<bool>,
    pop_time: i64,
    invisible_time: i64,
    #[serde(default)]
    attempt_id: Option<String>,
    /// How many times this batch was handed out before.
    #[serde(default)]
    redelivered: i32,
}

impl Batch {
    /// The group's offset: the first un-acked message, else past the batch.
    fn next_offset(&self) -> i64 {
        self.offsets
            .iter()
            .zip(&self.acked)
            .find(|(_, &a)| !a)
            .map_or(self.next, |(&o, _)| o)
    }
}

/// What an orderly ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderAck {
    /// No open batch for the queue (e.g. it expired and was replaced, or
    /// was never recorded).
    NoBatch,
    /// The ack's popTime is not the open batch's: a handle of an earlier
    /// delivery (Apache's commitAndNext -2); ignored.
    Stale,
    /// The offset is not in the open batch (Apache's -1).
    NotInBatch,
    /// The group's offset moves to this one; `unblocked`: the batch is done.
    Next { offset: i64, unblocked: bool },
}

/// The offset an orderly ack committed for a (group, topic, queue): the
/// consume offsets are flushed every few seconds, this table at once, so
/// a restart raises them to it (`committed`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Committed {
    group: String,
    topic: String,
    queue_id: i32,
    offset: i64,
}

/// What `popOrderInfo.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    #[serde(default)]
    batches: HashMap<String, Batch>,
    #[serde(default)]
    committed: HashMap<String, Committed>,
}

/// Open orderly batches per `topic@group@queue`.
#[derive(Default)]
pub struct OrderTable {
    batches: Arc<Mutex<Table>>,
    writer: Option<TableWriter>,
    /// Woken when an ack completes a batch (parked orderly pops re-check).
    unblocked: tokio::sync::Notify,
}

/// The key of a queue of a group.
pub fn key(topic: &str, group: &str, queue_id: i32) -> String {
    format!("{topic}@{group}@{queue_id}")
}

const FILE: &str = "popOrderInfo.json";

impl OrderTable {
    /// Loads `config/popOrderInfo.json` if present; saves on changes.
    pub fn with_vfs(config: &BrokerConfig, vfs: apogee_store::vfs::VfsRef) -> Result<Self> {
        let path = persist::config_path(&config.store.store_path_root_dir, FILE);
        let mut table = Table::default();
        if let Some(data) = persist::read_optional(&*vfs, &path)? {
            table = serde_json::from_slice(&data).map_err(|e| BrokerError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        let batches = Arc::new(Mutex::new(table));
        let snap = Arc::clone(&batches);
        let writer = TableWriter::start(
            FILE,
            path,
            vfs,
            // Our own plain data: serialization cannot fail.
            Box::new(move || serde_json::to_vec(&*snap.lock()).unwrap_or_default()),
        )?;
        Ok(OrderTable {
            batches,
            writer: Some(writer),
            unblocked: tokio::sync::Notify::new(),
        })
    }

    fn changed(&self) {
        if let Some(w) = &self.writer {
            w.mark_dirty();
        }
    }

    /// Resolves when an ack completes a batch after this call.
    pub fn unblocked(&self) -> tokio::sync::futures::Notified<'_> {
        self.unblocked.notified()
    }

    /// Whether the queue still has an un-acked, invisible batch. A retry of
    /// the same pop request (same `attemptId`) is not blocked.
    pub fn blocked(&self, key: &str, attempt_id: Option<&str>, now: i64) -> bool {
        let t = self.batches.lock();
        let Some(b) = t.batches.get(key) else {
            return false;
        };
        if b.acked.iter().all(|&a| a) {
            return false;
        }
        if attempt_id.is_some() && attempt_id == b.attempt_id.as_deref() {
            return false;
        }
        now < b.pop_time.saturating_add(b.invisible_time)
    }

    /// Records a batch handed out; returns how often it was handed out
    /// before (the client's reconsume count for orderly messages).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        key: String,
        start: i64,
        next: i64,
        offsets: Vec<i64>,
        pop_time: i64,
        invisible_time: i64,
        attempt_id: Option<String>,
    ) -> i32 {
        let mut t = self.batches.lock();
        let redelivered = match t.batches.get(&key) {
            Some(b) if b.start == start => b.redelivered.saturating_add(1),
            _ => 0,
        };
        let acked = vec![false; offsets.len()];
        t.batches.insert(
            key,
            Batch {
                start,
                next,
                offsets,
                acked,
                pop_time,
                invisible_time,
                attempt_id,
                redelivered,
            },
        );
        drop(t);
        self.changed();
        redelivered
    }

    /// Marks `offset` of the batch of (topic, group, queue) popped at
    /// `pop_time` acked.
    pub fn ack(
        &self,
        topic: &str,
        group: &str,
        queue_id: i32,
        offset: i64,
        pop_time: i64,
    ) -> OrderAck {
        let k = key(topic, group, queue_id);
        let mut t = self.batches.lock();
        let Some(b) = t.batches.get_mut(&k) else {
            return OrderAck::NoBatch;
        };
        if b.pop_time != pop_time {
            return OrderAck::Stale;
        }
        let Some(i) = b.offsets.iter().position(|&o| o == offset) else {
            return OrderAck::NotInBatch;
        };
        b.acked[i] = true;
        let next = b.next_offset();
        let done = b.acked.iter().all(|&a| a);
        if done {
            t.batches.remove(&k);
        }
        t.committed.insert(
            k,
            Committed {
                group: group.to_owned(),
                topic: topic.to_owned(),
                queue_id,
                offset: next,
            },
        );
        drop(t);
        self.changed();
        if done {
            self.unblocked.notify_waiters();
        }
        OrderAck::Next {
            offset: next,
            unblocked: done,
        }
    }

    /// The offsets orderly acks committed: (group, topic, queue, offset).
    pub fn committed(&self) -> Vec<(String, String, i32, i64)> {
        self.batches
            .lock()
            .committed
            .values()
            .map(|c| (c.group.clone(), c.topic.clone(), c.queue_id, c.offset))
            .collect()
    }

    /// Keeps the open batch holding `offset` (popped at `pop_time`)
    /// invisible until `now + invisible_time` (Apache's
    /// `updateNextVisibleTime`: the popTime stays, so the handle still
    /// acks). Returns the batch's (popTime, new invisible time), or `None`
    /// when no open batch of that pop holds the offset.
    pub fn change(
        &self,
        key: &str,
        offset: i64,
        pop_time: i64,
        now: i64,
        invisible_time: i64,
    ) -> Option<(i64, i64)> {
        let mut t = self.batches.lock();
        let b = t.batches.get_mut(key)?;
        if b.pop_time != pop_time || !b.offsets.contains(&offset) {
            return None;
        }
        b.invisible_time = now.saturating_add(invisible_time) - b.pop_time;
        let r = (b.pop_time, b.invisible_time);
        drop(t);
        self.changed();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_blocks_until_acked_or_invisible_time_passes() {
        let t = OrderTable::default();
        let k = key("T", "G", 0);
        assert!(!t.blocked(&k, None, 0));
        assert_eq!(
            t.record(k.clone(), 5, 7, vec![5, 6], 1000, 100, Some("a".into())),
            0
        );
        assert!(t.blocked(&k, None, 1050));
        assert!(!t.blocked(&k, Some("a"), 1050), "same attempt");
        assert!(!t.blocked(&k, None, 1100), "invisible time passed");
        assert_eq!(t.record(k.clone(), 5, 7, vec![5, 6], 1100, 100, None), 1);
        assert_eq!(
            t.ack("T", "G", 0, 5, 1000),
            OrderAck::Stale,
            "an earlier delivery"
        );
        assert_eq!(
            t.ack("T", "G", 0, 5, 1100),
            OrderAck::Next {
                offset: 6,
                unblocked: false
            }
        );
        assert!(t.blocked(&k, None, 1150));
        assert_eq!(t.ack("T", "G", 0, 9, 1100), OrderAck::NotInBatch);
        assert_eq!(t.change(&k, 6, 1100, 1150, 500), Some((1100, 550)));
        assert!(t.blocked(&k, None, 1600));
        assert_eq!(t.change(&k, 6, 1000, 1150, 500), None, "stale handle");
        assert_eq!(
            t.ack("T", "G", 0, 6, 1100),
            OrderAck::Next {
                offset: 7,
                unblocked: true
            }
        );
        assert!(!t.blocked(&k, None, 1150));
        assert_eq!(t.ack("T", "G", 0, 6, 1100), OrderAck::NoBatch);
        assert_eq!(t.change(&k, 6, 1100, 1150, 500), None);
        assert_eq!(t.committed(), vec![("G".into(), "T".into(), 0, 7)]);
    }
}
