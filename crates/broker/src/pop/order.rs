//! Orderly POP (Apache's `ConsumerOrderInfoManager`, kept in memory): a
//! queue's batch handed out with `order=true` blocks the queue until every
//! message of it is acked (then the group's offset moves past it) or its
//! invisible time passes (then the same messages are handed out again,
//! from the offset that never moved). The offset is the durable part: after
//! a restart the unfinished batch is simply handed out again.

use std::collections::HashMap;

use parking_lot::Mutex;

/// The batch last handed out from one (topic, group, queue).
struct Batch {
    start: i64,
    /// Offset after the batch: the group's offset once all are acked.
    next: i64,
    offsets: Vec<i64>,
    acked: Vec<bool>,
    pop_time: i64,
    invisible_time: i64,
    attempt_id: Option<String>,
    /// How many times this batch was handed out before.
    redelivered: i32,
}

/// Open orderly batches per `topic@group@queue`.
#[derive(Default)]
pub struct OrderTable {
    batches: Mutex<HashMap<String, Batch>>,
}

/// The key of a queue of a group.
pub fn key(topic: &str, group: &str, queue_id: i32) -> String {
    format!("{topic}@{group}@{queue_id}")
}

impl OrderTable {
    /// Whether the queue still has an un-acked, invisible batch. A retry of
    /// the same pop request (same `attemptId`) is not blocked.
    pub fn blocked(&self, key: &str, attempt_id: Option<&str>, now: i64) -> bool {
        let t = self.batches.lock();
        let Some(b) = t.get(key) else {
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
        let redelivered = match t.get(&key) {
            Some(b) if b.start == start => b.redelivered.saturating_add(1),
            _ => 0,
        };
        let acked = vec![false; offsets.len()];
        t.insert(
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
        redelivered
    }

    /// Marks `offset` acked. `Some(next)` when that completed the batch:
    /// the group's offset moves to `next`. `None` when the offset is not in
    /// an open batch (unknown, e.g. after a restart).
    pub fn ack(&self, key: &str, offset: i64) -> Option<Option<i64>> {
        let mut t = self.batches.lock();
        let b = t.get_mut(key)?;
        let i = b.offsets.iter().position(|&o| o == offset)?;
        b.acked[i] = true;
        if b.acked.iter().all(|&a| a) {
            let next = b.next;
            t.remove(key);
            return Some(Some(next));
        }
        Some(None)
    }

    /// A new invisible time for the open batch holding `offset`; false
    /// when there is none.
    pub fn change(&self, key: &str, offset: i64, pop_time: i64, invisible_time: i64) -> bool {
        let mut t = self.batches.lock();
        match t.get_mut(key) {
            Some(b) if b.offsets.contains(&offset) => {
                b.pop_time = pop_time;
                b.invisible_time = invisible_time;
                true
            }
            _ => false,
        }
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
        assert_eq!(t.ack(&k, 5), Some(None));
        assert!(t.blocked(&k, None, 1150));
        assert_eq!(t.ack(&k, 9), None);
        assert_eq!(t.ack(&k, 6), Some(Some(7)));
        assert!(!t.blocked(&k, None, 1150));
    }
}
