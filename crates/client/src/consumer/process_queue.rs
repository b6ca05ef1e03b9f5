//! The client-side buffer of one assigned queue (Java `ProcessQueue`):
//! pulled but unfinished messages by offset, their count and bytes for
//! flow control, and for orderly consumption the messages being consumed
//! and the broker lock state.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use parking_lot::Mutex;

use crate::instance::now_millis;
use crate::message::MessageExt;

/// A lock older than this is not trusted (Java `REBALANCE_LOCK_MAX_LIVE_TIME`).
pub const LOCK_MAX_LIVE_MS: i64 = 30_000;

/// One buffered message: its body size for flow control and, when the
/// queue is consumed orderly, the message itself (concurrent consumption
/// hands the message to the listener and only tracks the offset here).
struct Buffered {
    body_len: usize,
    msg: Option<MessageExt>,
}

#[derive(Default)]
struct Inner {
    msgs: BTreeMap<i64, Buffered>,
    bytes: usize,
    /// Highest offset ever put (for the commit offset of an empty queue).
    max_offset: i64,
    /// Orderly: offsets (and body sizes) taken out for consumption, not
    /// yet committed.
    consuming: BTreeMap<i64, usize>,
}

impl Inner {
    fn insert(&mut self, offset: i64, body_len: usize, msg: Option<MessageExt>) {
        if self
            .msgs
            .insert(offset, Buffered { body_len, msg })
            .is_none()
        {
            self.bytes += body_len;
        }
        self.max_offset = self.max_offset.max(offset);
    }
}

/// Buffer and state of one assigned queue.
#[derive(Default)]
pub struct ProcessQueue {
    inner: Mutex<Inner>,
    dropped: AtomicBool,
    locked: AtomicBool,
    last_lock_ms: AtomicI64,
    /// An orderly consume task is running for this queue.
    pub(crate) consuming: AtomicBool,
    pub(crate) consume_lock: tokio::sync::Mutex<()>,
}

impl ProcessQueue {
    pub fn new() -> Self {
        ProcessQueue {
            inner: Mutex::new(Inner {
                max_offset: -1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    pub fn set_dropped(&self) {
        self.dropped.store(true, Ordering::Release);
    }

    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Acquire)
    }

    pub fn set_locked(&self, locked: bool) {
        self.locked.store(locked, Ordering::Release);
        if locked {
            self.last_lock_ms.store(now_millis(), Ordering::Release);
        }
    }

    pub fn lock_expired(&self) -> bool {
        now_millis() - self.last_lock_ms.load(Ordering::Acquire) > LOCK_MAX_LIVE_MS
    }

    /// Tracks pulled messages that are handed to a listener elsewhere
    /// (concurrent consumption): offsets and sizes only, no copy.
    pub fn put_offsets(&self, msgs: &[MessageExt]) {
        let mut g = self.inner.lock();
        for m in msgs {
            g.insert(m.queue_offset, m.body.len(), None);
        }
    }

    /// Buffers pulled messages to be taken later (orderly consumption).
    pub fn put(&self, msgs: Vec<MessageExt>) {
        let mut g = self.inner.lock();
        for m in msgs {
            g.insert(m.queue_offset, m.body.len(), Some(m));
        }
    }

    pub fn count(&self) -> usize {
        let g = self.inner.lock();
        g.msgs.len() + g.consuming.len()
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Offset distance between the oldest and newest buffered message.
    pub fn span(&self) -> i64 {
        let g = self.inner.lock();
        match (g.msgs.keys().next(), g.msgs.keys().next_back()) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        }
    }

    /// Removes finished messages; returns the offset to commit: the lowest
    /// still buffered, or one past the highest seen when none is left.
    /// `None` when nothing was ever buffered.
    pub fn remove(&self, offsets: &[i64]) -> Option<i64> {
        let mut g = self.inner.lock();
        for o in offsets {
            if let Some(b) = g.msgs.remove(o) {
                g.bytes = g.bytes.saturating_sub(b.body_len);
            }
        }
        if let Some(first) = g.msgs.keys().next() {
            Some(*first)
        } else if g.max_offset >= 0 {
            Some(g.max_offset + 1)
        } else {
            None
        }
    }

    /// Orderly: takes up to `n` messages, in offset order, for consumption.
    pub fn take(&self, n: usize) -> Vec<MessageExt> {
        let mut g = self.inner.lock();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some((o, b)) = g.msgs.pop_first() else {
                break;
            };
            g.consuming.insert(o, b.body_len);
            // Orderly queues always buffer the message itself.
            if let Some(m) = b.msg {
                out.push(m);
            }
        }
        out
    }

    /// Orderly: the taken messages are done; returns the offset to commit.
    pub fn commit(&self) -> Option<i64> {
        let mut g = self.inner.lock();
        let last = g.consuming.keys().next_back().copied();
        let freed: usize = g.consuming.values().sum();
        g.consuming.clear();
        g.bytes = g.bytes.saturating_sub(freed);
        last.map(|o| o + 1)
    }

    /// Orderly: puts taken messages back to be consumed again.
    pub fn rollback(&self, msgs: Vec<MessageExt>) {
        let mut g = self.inner.lock();
        for m in msgs {
            g.consuming.remove(&m.queue_offset);
            let body_len = m.body.len();
            g.msgs.insert(
                m.queue_offset,
                Buffered {
                    body_len,
                    msg: Some(m),
                },
            );
        }
    }

    /// Drops everything buffered (after a seek or reset).
    pub fn clear(&self) {
        let mut g = self.inner.lock();
        g.msgs.clear();
        g.consuming.clear();
        g.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn msg(offset: i64) -> MessageExt {
        let mut m = MessageExt::from_message(Message::new("T", vec![0u8; 10]));
        m.queue_offset = offset;
        m
    }

    #[test]
    fn commit_offset_is_lowest_unfinished() {
        let pq = ProcessQueue::new();
        assert_eq!(pq.remove(&[]), None);
        pq.put_offsets(&[msg(5), msg(6), msg(7)]);
        assert_eq!(pq.count(), 3);
        assert_eq!(pq.bytes(), 30);
        assert_eq!(pq.span(), 2);
        // 6 finishes first: 5 is still open, so 5 is what may be committed
        assert_eq!(pq.remove(&[6]), Some(5));
        assert_eq!(pq.remove(&[5]), Some(7));
        assert_eq!(pq.remove(&[7]), Some(8));
        assert_eq!(pq.count(), 0);
        assert_eq!(pq.bytes(), 0);
    }

    #[test]
    fn orderly_take_commit_rollback() {
        let pq = ProcessQueue::new();
        pq.put(vec![msg(1), msg(2), msg(3)]);
        let t = pq.take(1);
        assert_eq!(t[0].queue_offset, 1);
        pq.rollback(t);
        let t = pq.take(2);
        assert_eq!(
            t.iter().map(|m| m.queue_offset).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(pq.commit(), Some(3));
        assert_eq!(pq.count(), 1);
        assert_eq!(pq.commit(), None);
    }
}
