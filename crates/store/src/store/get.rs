//! Reads: messages of a queue, offsets, a record by CommitLog offset.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use apogee_protocol::message::{stored, TagFilter};
use bytes::Bytes;

use super::MessageStore;

/// Status of a `get_messages` call (RocketMQ `GetMessageStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    /// At least one message returned.
    Found,
    /// Entries were examined but the filter matched none.
    NoMatchedMessage,
    /// The examined entries point at CommitLog segments already deleted.
    MessageWasRemoving,
    /// The ConsumeQueue segment holding the offset is gone.
    OffsetFoundNull,
    /// offset > max offset.
    OffsetOverflowBadly,
    /// offset == max offset: no new message yet.
    OffsetOverflowOne,
    /// offset < min offset.
    OffsetTooSmall,
    /// The queue does not exist.
    NoMatchedLogicQueue,
    /// The queue exists but has never held a message.
    NoMessageInQueue,
}

impl GetStatus {
    /// RocketMQ's name (the pull response's `remark`).
    pub fn as_str(&self) -> &'static str {
        match self {
            GetStatus::Found => "FOUND",
            GetStatus::NoMatchedMessage => "NO_MATCHED_MESSAGE",
            GetStatus::MessageWasRemoving => "MESSAGE_WAS_REMOVING",
            GetStatus::OffsetFoundNull => "OFFSET_FOUND_NULL",
            GetStatus::OffsetOverflowBadly => "OFFSET_OVERFLOW_BADLY",
            GetStatus::OffsetOverflowOne => "OFFSET_OVERFLOW_ONE",
            GetStatus::OffsetTooSmall => "OFFSET_TOO_SMALL",
            GetStatus::NoMatchedLogicQueue => "NO_MATCHED_LOGIC_QUEUE",
            GetStatus::NoMessageInQueue => "NO_MESSAGE_IN_QUEUE",
        }
    }
}

/// Result of `get_messages`.
#[derive(Debug, Clone)]
pub struct GetResult {
    pub status: GetStatus,
    /// Stored records (reference 6.3), zero-copy views of the CommitLog.
    pub messages: Vec<Bytes>,
    /// Queue offset of each returned message.
    pub queue_offsets: Vec<i64>,
    pub next_begin_offset: i64,
    pub min_offset: i64,
    pub max_offset: i64,
    /// Sum of the returned records' sizes.
    pub buffer_total_size: usize,
}

/// Broker-side filter on ConsumeQueue tags codes.
pub trait MessageFilter {
    fn is_matched_by_tags_code(&self, tags_code: i64) -> bool;

    /// A second look at a message whose tags code passed, with its whole
    /// stored record (property filters read the properties from it).
    fn is_matched_by_commit_log(&self, _record: &[u8]) -> bool {
        true
    }
}

impl MessageFilter for HashSet<i64> {
    fn is_matched_by_tags_code(&self, tags_code: i64) -> bool {
        self.contains(&tags_code)
    }
}

impl MessageFilter for TagFilter {
    fn is_matched_by_tags_code(&self, tags_code: i64) -> bool {
        self.matches_code(tags_code)
    }
}

impl<F: Fn(i64) -> bool> MessageFilter for F {
    fn is_matched_by_tags_code(&self, tags_code: i64) -> bool {
        self(tags_code)
    }
}

impl MessageStore {
    /// Block until everything below `offset` is dispatched to ConsumeQueues
    /// and the index; false on timeout.
    pub fn wait_dispatched(&self, offset: u64, timeout: Duration) -> bool {
        self.inner.wait_dispatched(offset, timeout)
    }

    /// Read up to `max_count` messages / `max_bytes` bytes of a queue from
    /// `offset`, keeping those whose tags code passes `filter`.
    #[allow(clippy::too_many_arguments)]
    pub fn get_messages(
        &self,
        _group: &str,
        topic: &str,
        queue_id: i32,
        offset: i64,
        max_count: usize,
        max_bytes: usize,
        filter: Option<&dyn MessageFilter>,
    ) -> GetResult {
        let mut r = GetResult {
            status: GetStatus::NoMatchedLogicQueue,
            messages: Vec::new(),
            queue_offsets: Vec::new(),
            next_begin_offset: 0,
            min_offset: 0,
            max_offset: 0,
            buffer_total_size: 0,
        };
        let Some(cq) = self.inner.find_cq(topic, queue_id) else {
            return r;
        };
        let min = cq.min_offset();
        let max = cq.max_offset();
        r.min_offset = min;
        r.max_offset = max;
        if max == 0 {
            r.status = GetStatus::NoMessageInQueue;
            return r;
        }
        if offset < min {
            r.status = GetStatus::OffsetTooSmall;
            r.next_begin_offset = min;
            return r;
        }
        if offset == max {
            r.status = GetStatus::OffsetOverflowOne;
            r.next_begin_offset = offset;
            return r;
        }
        if offset > max {
            r.status = GetStatus::OffsetOverflowBadly;
            // As RocketMQ: back to min if the queue starts at 0, else to max.
            r.next_begin_offset = if min == 0 { min } else { max };
            return r;
        }
        let cl = &self.inner.commit_log;
        let cl_min = cl.min_offset();
        let scan_limit = (self.inner.cfg.max_filter_message_count as usize).max(max_count);
        let mut removed = 0usize;
        let mut next = offset;
        let mut cached: Option<(u64, u64, Bytes)> = None; // (base, end, whole segment)
        let visited = cq.for_each(offset, scan_limit, |logic, e| {
            if r.messages.len() >= max_count {
                return false;
            }
            if e.is_filler() || e.size <= 0 {
                next = logic + 1;
                return true;
            }
            let phys = e.phys_offset as u64;
            if phys < cl_min {
                removed += 1;
                next = logic + 1;
                return true;
            }
            if let Some(f) = filter {
                if !f.is_matched_by_tags_code(e.tags_code) {
                    next = logic + 1;
                    return true;
                }
            }
            let size = e.size as usize;
            if !r.messages.is_empty() && r.buffer_total_size + size > max_bytes {
                return false;
            }
            let hit = match &cached {
                Some((base, end, _)) => phys >= *base && phys + size as u64 <= *end,
                None => false,
            };
            if !hit {
                cached = cl
                    .segment_at(phys)
                    .map(|s| (s.base(), s.base() + s.wrote(), s.shared_bytes()));
            }
            let Some((base, end, whole)) = &cached else {
                removed += 1;
                next = logic + 1;
                return true;
            };
            if phys + size as u64 > *end {
                // Not published (cannot happen for dispatched entries): stop here.
                return false;
            }
            let local = (phys - base) as usize;
            if let Some(f) = filter {
                if !f.is_matched_by_commit_log(&whole[local..local + size]) {
                    next = logic + 1;
                    return true;
                }
            }
            r.messages.push(whole.slice(local..local + size));
            r.queue_offsets.push(logic);
            r.buffer_total_size += size;
            next = logic + 1;
            true
        });
        if visited.is_none() && r.messages.is_empty() {
            r.status = GetStatus::OffsetFoundNull;
            r.next_begin_offset = cq.next_segment_start(offset);
            return r;
        }
        r.next_begin_offset = next;
        r.status = if !r.messages.is_empty() {
            GetStatus::Found
        } else if removed > 0 {
            GetStatus::MessageWasRemoving
        } else {
            GetStatus::NoMatchedMessage
        };
        r
    }

    /// Next offset of a queue (0 if unknown).
    pub fn max_offset(&self, topic: &str, queue_id: i32) -> i64 {
        self.inner
            .find_cq(topic, queue_id)
            .map(|c| c.max_offset())
            .unwrap_or(0)
    }

    /// First offset of a queue still readable (0 if unknown).
    pub fn min_offset(&self, topic: &str, queue_id: i32) -> i64 {
        self.inner
            .find_cq(topic, queue_id)
            .map(|c| c.min_offset())
            .unwrap_or(0)
    }

    /// Queue ids that have a ConsumeQueue for `topic`.
    pub fn queue_ids(&self, topic: &str) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .inner
            .cqs
            .read()
            .get(topic)
            .map(|q| q.keys().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Topics that have ConsumeQueues.
    pub fn topics(&self) -> Vec<String> {
        self.inner
            .cqs
            .read()
            .keys()
            .map(|k| k.to_string())
            .collect()
    }

    /// Store time of the oldest message still in a queue.
    pub fn earliest_message_time(&self, topic: &str, queue_id: i32) -> Option<i64> {
        let cq = self.inner.find_cq(topic, queue_id)?;
        let e = cq.entry(cq.min_offset())?;
        self.inner
            .commit_log
            .store_timestamp_at(e.phys_offset as u64, e.size as usize)
    }

    /// Store time of the oldest record in the whole CommitLog.
    pub fn earliest_message_time_store(&self) -> Option<i64> {
        let cl = &self.inner.commit_log;
        let min = cl.min_offset();
        let rec = cl.read_record(min)?;
        stored::check_record(&rec, false)
            .ok()
            .map(|i| i.store_timestamp)
    }

    /// The stored record at CommitLog offset `phys` (offset message id lookup).
    pub fn look_message_by_offset(&self, phys: i64) -> Option<Bytes> {
        let phys = u64::try_from(phys).ok()?;
        let rec = self.inner.commit_log.read_record(phys)?;
        let info = stored::check_record(&rec, false).ok()?;
        (info.physical_offset as u64 == phys).then_some(rec)
    }

    /// CommitLog min / max offsets.
    pub fn commit_log_min_offset(&self) -> i64 {
        self.inner.commit_log.min_offset() as i64
    }
    pub fn commit_log_max_offset(&self) -> i64 {
        self.inner.commit_log.max_offset() as i64
    }
    /// CommitLog offset below which everything is on disk.
    pub fn commit_log_flushed_offset(&self) -> i64 {
        self.inner.commit_log.flushed_offset() as i64
    }
    /// CommitLog offset below which ConsumeQueue/index entries exist.
    pub fn dispatched_offset(&self) -> i64 {
        self.inner.dispatched.load(Ordering::Acquire) as i64
    }
}
