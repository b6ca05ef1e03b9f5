//! The dispatcher ("reput"): reads the CommitLog from the dispatched offset
//! to its published end and builds ConsumeQueue and index entries, then tells
//! the arriving-message listener. The CommitLog stays the only source of
//! truth: everything here can be rebuilt from it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::message::{keys, properties, stored, sysflag};

use crate::error::{Result, StoreError};
use crate::store::Inner;

/// Told about every message as soon as its ConsumeQueue entry exists
/// (RocketMQ `MessageArrivingListener`); the broker wakes long-polling pulls
/// here. Called on the dispatcher thread: keep it short and non-blocking.
pub trait MessageArrivingListener: Send + Sync {
    fn arriving(
        &self,
        topic: &str,
        queue_id: i32,
        logic_offset: i64,
        tags_code: i64,
        store_timestamp: i64,
    );
}

impl<F> MessageArrivingListener for F
where
    F: Fn(&str, i32, i64, i64, i64) + Send + Sync,
{
    fn arriving(
        &self,
        topic: &str,
        queue_id: i32,
        logic_offset: i64,
        tags_code: i64,
        store_timestamp: i64,
    ) {
        self(topic, queue_id, logic_offset, tags_code, store_timestamp)
    }
}

/// What dispatching one position produced.
pub(crate) enum Step {
    /// Nothing published at this position yet.
    End,
    /// Moved to `next`.
    Next(u64),
}

/// Dispatch the record at `pos` (which must be published). Returns where the
/// next record starts.
pub(crate) fn dispatch_at(inner: &Inner, pos: u64, notify: bool) -> Result<Step> {
    let cl = &inner.commit_log;
    if pos >= cl.max_offset() {
        return Ok(Step::End);
    }
    let Some(seg) = cl.segment_at(pos) else {
        // The segment holding `pos` was deleted: skip to the next one.
        let size = cl.segment_size();
        return Ok(Step::Next((pos / size + 1) * size));
    };
    let local = pos - seg.base();
    if local + 8 > seg.size() {
        return Ok(Step::Next(seg.base() + seg.size()));
    }
    let Some(head) = seg.read_visible(local, 8) else {
        return Ok(Step::End);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        path: seg.path().to_path_buf(),
        reason: format!("at CommitLog offset {pos}: {reason}"),
    };
    let total = match stored::peek_header(head).map_err(|e| corrupt(e.to_string()))? {
        stored::RecordHeader::Blank { .. } => return Ok(Step::Next(seg.base() + seg.size())),
        stored::RecordHeader::Message { total_size, .. } => total_size as u64,
    };
    let rec = seg
        .read_visible(local, total)
        .ok_or_else(|| corrupt("record runs past the published end".into()))?;
    let info = stored::check_record(rec, false).map_err(|e| corrupt(e.to_string()))?;
    if sysflag::is_dispatchable(info.sys_flag) {
        let tags_code = info.tags_code();
        let cq = inner.find_or_create_cq(info.topic, info.queue_id)?;
        cq.put(info.queue_offset, pos as i64, total as i32, tags_code)?;
        if let Some(index) = &inner.index {
            let keys = properties::get(&info.properties, keys::KEYS);
            let uniq = properties::get(&info.properties, keys::UNIQ_KEY);
            if keys.is_some() || uniq.is_some() {
                index.build_index(info.topic, keys, uniq, pos as i64, info.store_timestamp)?;
            }
        }
        if notify {
            if let Some(l) = inner.listener.read().as_ref() {
                l.arriving(
                    info.topic,
                    info.queue_id,
                    info.queue_offset,
                    tags_code,
                    info.store_timestamp,
                );
            }
        }
    } else if sysflag::transaction_value(info.sys_flag) != sysflag::TRANSACTION_ROLLBACK_TYPE {
        // Prepared half messages are indexed (for transaction checks) but not queued.
        if let Some(index) = &inner.index {
            let keys = properties::get(&info.properties, keys::KEYS);
            let uniq = properties::get(&info.properties, keys::UNIQ_KEY);
            index.build_index(info.topic, keys, uniq, pos as i64, info.store_timestamp)?;
        }
    }
    inner
        .dispatched_store_ts
        .store(info.store_timestamp, Ordering::Release);
    Ok(Step::Next(pos + total))
}

/// Dispatch everything published, publishing progress as it goes.
pub(crate) fn dispatch_available(inner: &Inner, notify: bool) -> Result<bool> {
    let mut pos = inner.dispatched.load(Ordering::Acquire);
    let mut progressed = false;
    let mut n = 0u32;
    loop {
        match dispatch_at(inner, pos, notify)? {
            Step::End => break,
            Step::Next(next) => {
                pos = next;
                progressed = true;
                n += 1;
                // Publish in small batches so pulls and waiters see progress.
                if n.is_multiple_of(64) {
                    inner.dispatched.store(pos, Ordering::Release);
                }
            }
        }
    }
    if progressed {
        inner.dispatched.store(pos, Ordering::Release);
        inner.notify_dispatched();
    }
    Ok(progressed)
}

/// The dispatcher thread body.
pub(crate) fn run_dispatcher(inner: Arc<Inner>) {
    let mut failed = false;
    loop {
        let stopping = inner.stop_dispatcher.load(Ordering::Acquire);
        let progressed = match dispatch_available(&inner, true) {
            Ok(p) => {
                failed = false;
                p
            }
            Err(e) => {
                if !failed {
                    tracing::error!(error = %e, "dispatch failed; retrying");
                }
                failed = true;
                false
            }
        };
        if stopping && !progressed {
            break;
        }
        if !progressed {
            std::thread::park_timeout(if failed {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(5)
            });
        }
    }
}
