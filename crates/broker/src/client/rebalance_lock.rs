//! `RebalanceLockManager`: per consumer group, which client holds which
//! queue for orderly consumption (LOCK_BATCH_MQ / UNLOCK_BATCH_MQ); a lock
//! not renewed within `rebalanceLockMaxLiveTime` (60 s) is free again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use apogee_protocol::body::MessageQueue;
use parking_lot::Mutex;

struct LockEntry {
    client_id: String,
    last_update: Instant,
}

/// Queue locks of all groups.
pub struct RebalanceLockManager {
    table: Mutex<HashMap<String, HashMap<MessageQueue, LockEntry>>>,
    max_live: Duration,
}

impl RebalanceLockManager {
    pub fn new(max_live: Duration) -> Self {
        RebalanceLockManager {
            table: Mutex::new(HashMap::new()),
            max_live,
        }
    }

    /// Locks (or renews) every queue that is free, expired or already held
    /// by `client_id`; returns those the client now holds.
    pub fn try_lock_batch(
        &self,
        group: &str,
        mqs: &[MessageQueue],
        client_id: &str,
    ) -> Vec<MessageQueue> {
        let now = Instant::now();
        let mut table = self.table.lock();
        let locks = table.entry(group.to_string()).or_default();
        let mut ok = Vec::new();
        for mq in mqs {
            match locks.get_mut(mq) {
                None => {
                    locks.insert(
                        mq.clone(),
                        LockEntry {
                            client_id: client_id.to_string(),
                            last_update: now,
                        },
                    );
                    ok.push(mq.clone());
                }
                Some(e) if e.client_id == client_id => {
                    e.last_update = now;
                    ok.push(mq.clone());
                }
                Some(e) if now.saturating_duration_since(e.last_update) > self.max_live => {
                    tracing::info!(group, queue = ?mq, old = %e.client_id, new = client_id, "expired queue lock taken over");
                    e.client_id = client_id.to_string();
                    e.last_update = now;
                    ok.push(mq.clone());
                }
                Some(e) => {
                    tracing::debug!(group, queue = ?mq, holder = %e.client_id, wanted_by = client_id, "queue locked by another client");
                }
            }
        }
        ok
    }

    /// Releases the queues `client_id` holds among `mqs`.
    pub fn unlock_batch(&self, group: &str, mqs: &[MessageQueue], client_id: &str) {
        let mut table = self.table.lock();
        let Some(locks) = table.get_mut(group) else {
            return;
        };
        for mq in mqs {
            if locks.get(mq).is_some_and(|e| e.client_id == client_id) {
                locks.remove(mq);
            }
        }
        if locks.is_empty() {
            table.remove(group);
        }
    }

    /// Whether `client_id` holds an unexpired lock on `mq` (renewing it, as Java does).
    pub fn is_locked(&self, group: &str, mq: &MessageQueue, client_id: &str) -> bool {
        let now = Instant::now();
        let mut table = self.table.lock();
        match table.get_mut(group).and_then(|l| l.get_mut(mq)) {
            Some(e)
                if e.client_id == client_id
                    && now.saturating_duration_since(e.last_update) <= self.max_live =>
            {
                e.last_update = now;
                true
            }
            _ => false,
        }
    }

    /// The current holder of an unexpired lock.
    pub fn holder(&self, group: &str, mq: &MessageQueue) -> Option<String> {
        let now = Instant::now();
        let table = self.table.lock();
        table
            .get(group)?
            .get(mq)
            .filter(|e| now.saturating_duration_since(e.last_update) <= self.max_live)
            .map(|e| e.client_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mq(id: i32) -> MessageQueue {
        MessageQueue::new("T", "broker-a", id)
    }

    #[test]
    fn lock_renew_unlock() {
        let m = RebalanceLockManager::new(Duration::from_secs(60));
        assert_eq!(
            m.try_lock_batch("g", &[mq(0), mq(1)], "c1"),
            vec![mq(0), mq(1)]
        );
        assert_eq!(m.try_lock_batch("g", &[mq(1), mq(2)], "c2"), vec![mq(2)]);
        assert!(m.is_locked("g", &mq(0), "c1"));
        assert!(!m.is_locked("g", &mq(0), "c2"));
        assert_eq!(m.try_lock_batch("g", &[mq(0)], "c1"), vec![mq(0)]);
        // Another group is independent.
        assert_eq!(m.try_lock_batch("g2", &[mq(0)], "c2"), vec![mq(0)]);
        m.unlock_batch("g", &[mq(0), mq(2)], "c1"); // c1 does not hold 2
        assert_eq!(m.holder("g", &mq(0)), None);
        assert_eq!(m.holder("g", &mq(2)).as_deref(), Some("c2"));
    }

    #[test]
    fn expired_lock_is_taken_over() {
        let m = RebalanceLockManager::new(Duration::from_millis(30));
        assert_eq!(m.try_lock_batch("g", &[mq(0)], "c1"), vec![mq(0)]);
        assert!(m.try_lock_batch("g", &[mq(0)], "c2").is_empty());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!m.is_locked("g", &mq(0), "c1"));
        assert_eq!(m.try_lock_batch("g", &[mq(0)], "c2"), vec![mq(0)]);
        assert_eq!(m.holder("g", &mq(0)).as_deref(), Some("c2"));
    }
}
