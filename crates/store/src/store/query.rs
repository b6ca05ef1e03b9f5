//! Lookups through the key index and by store time.

use std::collections::HashSet;

use apogee_protocol::message::{keys, properties, stored};
use bytes::Bytes;

use super::MessageStore;

/// Result of a key query.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    /// Matching stored records, newest first.
    pub messages: Vec<Bytes>,
    pub index_last_update_timestamp: i64,
    pub index_last_update_phy_offset: i64,
}

impl MessageStore {
    /// First queue offset whose message was stored at or after `timestamp`
    /// (ms); the max offset if none, 0 for an unknown queue.
    pub fn offset_by_time(&self, topic: &str, queue_id: i32, timestamp: i64) -> i64 {
        let Some(cq) = self.inner.find_cq(topic, queue_id) else {
            return 0;
        };
        let cl = &self.inner.commit_log;
        let cl_min = cl.min_offset();
        let (mut lo, mut hi) = (cq.min_offset(), cq.max_offset());
        // Skip entries whose message is gone.
        while lo < hi {
            match cq.entry(lo) {
                Some(e) if !e.is_filler() && e.phys_offset as u64 >= cl_min => break,
                _ => lo += 1,
            }
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let ts = cq
                .entry(mid)
                .filter(|e| !e.is_filler())
                .and_then(|e| cl.store_timestamp_at(e.phys_offset as u64, e.size as usize));
            match ts {
                Some(t) if t >= timestamp => hi = mid,
                _ => lo = mid + 1,
            }
        }
        lo
    }

    /// Messages of `topic` indexed under `key` (a KEYS word or a UNIQ_KEY),
    /// stored within `[begin, end]` ms, newest first, at most `max`. Hash
    /// collisions are filtered out here.
    pub fn query_by_key(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin: i64,
        end: i64,
    ) -> QueryResult {
        self.query(topic, key, max, begin, end, false)
    }

    /// Like [`MessageStore::query_by_key`] but only UNIQ_KEY matches.
    pub fn query_by_unique_key(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin: i64,
        end: i64,
    ) -> QueryResult {
        self.query(topic, key, max, begin, end, true)
    }

    fn query(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin: i64,
        end: i64,
        uniq_only: bool,
    ) -> QueryResult {
        let mut out = QueryResult::default();
        let Some(index) = &self.inner.index else {
            return out;
        };
        let (ts, phy) = index.last_update();
        out.index_last_update_timestamp = ts;
        out.index_last_update_phy_offset = phy;
        let mut seen = HashSet::new();
        // Ask for extra candidates: collisions are dropped below.
        for phys in index.query(topic, key, max.saturating_mul(2).max(max), begin, end) {
            if out.messages.len() >= max {
                break;
            }
            if !seen.insert(phys) {
                continue;
            }
            let Some(rec) = self.look_message_by_offset(phys) else {
                continue;
            };
            let Ok(info) = stored::check_record(&rec, false) else {
                continue;
            };
            if info.topic != topic {
                continue;
            }
            let uniq = properties::get(&info.properties, keys::UNIQ_KEY) == Some(key);
            let by_keys = !uniq_only
                && properties::get(&info.properties, keys::KEYS)
                    .is_some_and(|k| k.split(' ').any(|w| w == key));
            if uniq || by_keys {
                out.messages.push(rec);
            }
        }
        out
    }
}
