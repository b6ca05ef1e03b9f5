//! Appends (one message or one client batch) and waits for their flush.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apogee_protocol::message::{
    encode_stored, id, keys, properties, stored, stored_size, sysflag, MessageToStore,
};
use bytes::BytesMut;

use super::{check_topic_name, Inner, MessageStore};
use crate::config::FlushDiskType;
use crate::error::{PutError, Result, WriteRefused};
use crate::flush::{self, FlushWait, WaitSlot};

/// Outcome of a successful put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutStatus {
    /// Stored (and flushed, under SYNC_FLUSH).
    Ok,
    /// Stored, but the flush did not complete within syncFlushTimeout.
    FlushDiskTimeout,
}

impl PutStatus {
    /// RocketMQ's `PutMessageStatus` name.
    pub fn as_str(&self) -> &'static str {
        match self {
            PutStatus::Ok => "PUT_OK",
            PutStatus::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
        }
    }
}

/// Where a put landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub status: PutStatus,
    /// CommitLog offset of the (first) record.
    pub phys_offset: i64,
    /// Bytes appended (all records of a batch).
    pub wrote_bytes: usize,
    /// Queue offset of the (first) message.
    pub queue_offset: i64,
    pub store_timestamp: i64,
    /// Messages appended (1, or the batch size).
    pub msg_count: usize,
    /// Store host written into the record (for the offset message id).
    pub store_host: SocketAddr,
    /// CommitLog offset of every record after the first (batches only).
    pub batch_offsets: Vec<i64>,
}

impl PutResult {
    /// Offset message id of the (first) record (reference 7.1).
    pub fn msg_id(&self) -> String {
        id::offset_msg_id(self.store_host, self.phys_offset)
    }

    /// Comma-joined offset message ids of every record (batch response).
    pub fn msg_ids(&self) -> String {
        let mut s = String::with_capacity((1 + self.batch_offsets.len()) * 33);
        id::push_offset_msg_id(&mut s, self.store_host, self.phys_offset);
        for off in &self.batch_offsets {
            s.push(',');
            id::push_offset_msg_id(&mut s, self.store_host, *off);
        }
        s
    }

    /// CommitLog offset just past the appended bytes.
    pub fn end_offset(&self) -> u64 {
        self.phys_offset as u64 + self.wrote_bytes as u64
    }
}

/// A put whose flush may still be pending (SYNC_FLUSH). Resolves to the
/// final `PutResult`; never blocks the polling thread.
pub struct PendingPut {
    result: Option<PutResult>,
    wait: FlushWait,
}

impl Future for PendingPut {
    type Output = PutResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PutResult> {
        let ok = match Pin::new(&mut self.wait).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(ok) => ok,
        };
        let mut r = self.result.take().unwrap_or_else(|| PutResult {
            status: PutStatus::FlushDiskTimeout,
            phys_offset: 0,
            wrote_bytes: 0,
            queue_offset: 0,
            store_timestamp: 0,
            msg_count: 0,
            store_host: SocketAddr::from(([0, 0, 0, 0], 0)),
            batch_offsets: Vec::new(),
        });
        if !ok {
            r.status = PutStatus::FlushDiskTimeout;
        }
        Poll::Ready(r)
    }
}

/// Bytes a stored record may add to a body of `maxMessageSize` (Apache's
/// encoder reserves the same 64 KiB).
const RECORD_OVERHEAD_ALLOWANCE: usize = 64 * 1024;

thread_local! {
    static ENCODE_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(64 * 1024));
}

impl Inner {
    /// An append failed: one that failed for lack of space (rolling to a new
    /// CommitLog segment) raises the disk-full barrier, so senders get the
    /// same "disk full" answer as above diskSpaceWarningLevelRatio, and
    /// starts a cleanup that will lift it.
    fn append_failed(&self, e: PutError) -> PutError {
        if !e.is_out_of_space() {
            return e;
        }
        self.note_out_of_space();
        if !self.disk_full.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "no space for a new CommitLog segment: refusing writes");
        }
        PutError::DiskFull {
            used_percent: f64::from_bits(self.disk_used_bits.load(Ordering::Acquire)),
            limit_percent: self.cfg.disk_space_warning_level_ratio,
        }
    }
}

impl MessageStore {
    /// Whether writes are taken now (puts and replicated appends).
    pub(crate) fn check_writable(&self) -> Result<(), WriteRefused> {
        let i = &self.inner;
        if i.shut_down.load(Ordering::Acquire) {
            return Err(WriteRefused::ShutDown);
        }
        if i.write_error.load(Ordering::Acquire) {
            return Err(WriteRefused::NotWritable(
                "an earlier write or flush failed",
            ));
        }
        if i.disk_full.load(Ordering::Acquire) {
            return Err(WriteRefused::DiskFull {
                used_percent: f64::from_bits(i.disk_used_bits.load(Ordering::Acquire)),
                limit_percent: i.cfg.disk_space_warning_level_ratio,
            });
        }
        Ok(())
    }

    /// Encode and append (one message or one client batch) without waiting
    /// for a flush. Returns the result and whether the caller should wait.
    fn append(&self, msgs: &[MessageToStore]) -> Result<(PutResult, bool), PutError> {
        self.check_writable()?;
        let first = msgs
            .first()
            .ok_or_else(|| PutError::IllegalMessage("empty batch".into()))?;
        check_topic_name(&first.topic).map_err(PutError::IllegalMessage)?;
        if first.queue_id < 0 {
            return Err(PutError::IllegalMessage(format!(
                "negative queue id {}",
                first.queue_id
            )));
        }
        let max = self.inner.cfg.max_message_size;
        for m in msgs {
            if m.topic != first.topic || m.queue_id != first.queue_id {
                return Err(PutError::IllegalMessage(
                    "a batch must target one topic and queue".into(),
                ));
            }
            if sysflag::is_dispatchable(m.sys_flag) != sysflag::is_dispatchable(first.sys_flag) {
                return Err(PutError::IllegalMessage(
                    "a batch cannot mix transaction types".into(),
                ));
            }
            // As Apache's encoder: `maxMessageSize` bounds each body; the
            // record around it (topic, properties, fixed fields) may add up
            // to 64 KiB. A client batch's wire size is bounded by the broker.
            if m.body.len() > max {
                return Err(PutError::MessageTooLarge {
                    size: m.body.len(),
                    max,
                });
            }
            let size = stored_size(m);
            let max_record = max.saturating_add(RECORD_OVERHEAD_ALLOWANCE);
            if size > max_record {
                return Err(PutError::MessageTooLarge {
                    size,
                    max: max_record,
                });
            }
        }
        let dispatchable = sysflag::is_dispatchable(first.sys_flag);
        let sync = self.inner.cfg.flush_disk_type == FlushDiskType::SyncFlush;
        // Only SYNC_FLUSH waits, so only then is the property worth a scan.
        let wait = sync
            && msgs
                .iter()
                .all(|m| properties::get(&m.properties, keys::WAIT_STORE_MSG_OK) != Some("false"));
        let res = ENCODE_BUF.with(|cell| -> Result<_, PutError> {
            let mut buf = cell.borrow_mut();
            buf.clear();
            for m in msgs {
                encode_stored(m, &mut buf).map_err(|e| PutError::Encode(e.to_string()))?;
            }
            let r = self.inner.commit_log.append(
                &first.topic,
                first.queue_id,
                dispatchable,
                &mut buf[..],
                msgs.len(),
            );
            let batch_offsets = if msgs.len() > 1 {
                if let Ok(a) = &r {
                    let mut offs = Vec::with_capacity(msgs.len() - 1);
                    let mut rel = 0usize;
                    for _ in 1..msgs.len() {
                        rel += stored::peek_total_size(&buf[rel..]).unwrap_or(0);
                        offs.push((a.phys_offset + rel as u64) as i64);
                    }
                    offs
                } else {
                    Vec::new()
                }
            } else {
                Vec::new()
            };
            if buf.capacity() > 1024 * 1024 {
                *buf = BytesMut::with_capacity(64 * 1024);
            }
            // Only an append can run out of space (rolling to a new segment).
            Ok((r.map_err(|e| self.inner.append_failed(e))?, batch_offsets))
        })?;
        let (a, batch_offsets) = res;
        let i = &self.inner;
        // Wake the dispatcher only if it sleeps for want of work; while busy
        // it polls (see dispatch::run_dispatcher).
        if i.dispatcher_idle.take() {
            if let Some(t) = i.dispatcher_thread.get() {
                t.unpark();
            }
        }
        if !sync
            && i.commit_log.dirty_bytes() >= flush::async_wake_bytes(&i.cfg)
            && i.flusher_idle.take()
        {
            if let Some(t) = i.flusher_thread.get() {
                t.unpark();
            }
        }
        Ok((
            PutResult {
                status: PutStatus::Ok,
                phys_offset: a.phys_offset as i64,
                wrote_bytes: a.wrote_bytes,
                queue_offset: a.queue_offset,
                store_timestamp: a.store_timestamp,
                msg_count: a.count,
                store_host: first.store_host,
                batch_offsets,
            },
            wait,
        ))
    }

    fn register_flush(&self, end: u64) -> Arc<WaitSlot> {
        let i = &self.inner;
        let deadline = Instant::now() + Duration::from_millis(i.cfg.sync_flush_timeout);
        let (slot, group_complete) =
            i.waiters
                .register(end, deadline, i.commit_log.flushed_atomic());
        if group_complete || i.flusher_idle.take() {
            if let Some(t) = i.flusher_thread.get() {
                t.unpark();
            }
        }
        slot
    }

    fn put_blocking(&self, msgs: &[MessageToStore]) -> Result<PutResult, PutError> {
        let (mut r, wait) = self.append(msgs)?;
        if wait {
            let slot = self.register_flush(r.end_offset());
            let deadline =
                Instant::now() + Duration::from_millis(self.inner.cfg.sync_flush_timeout);
            if !slot.wait(deadline) {
                r.status = PutStatus::FlushDiskTimeout;
            }
        }
        Ok(r)
    }

    fn put_pending(&self, msgs: &[MessageToStore]) -> Result<PendingPut, PutError> {
        let (r, wait) = self.append(msgs)?;
        let slot = wait.then(|| self.register_flush(r.end_offset()));
        Ok(PendingPut {
            result: Some(r),
            wait: FlushWait::new(slot),
        })
    }

    /// Store one message. Under SYNC_FLUSH this blocks until flushed (or
    /// syncFlushTimeout → `PutStatus::FlushDiskTimeout`); async callers use
    /// [`MessageStore::put_message_async`].
    pub fn put_message(&self, msg: &MessageToStore) -> Result<PutResult, PutError> {
        self.put_blocking(std::slice::from_ref(msg))
    }

    /// Store one client batch: one append, consecutive queue offsets.
    pub fn put_messages(&self, batch: &[MessageToStore]) -> Result<PutResult, PutError> {
        self.put_blocking(batch)
    }

    /// Append now; the returned future resolves once the flush policy is
    /// satisfied (at once under ASYNC_FLUSH). Never blocks the caller on I/O.
    pub fn put_message_async(&self, msg: &MessageToStore) -> Result<PendingPut, PutError> {
        self.put_pending(std::slice::from_ref(msg))
    }

    /// Batch variant of [`MessageStore::put_message_async`].
    pub fn put_messages_async(&self, batch: &[MessageToStore]) -> Result<PendingPut, PutError> {
        self.put_pending(batch)
    }

    /// Block until the CommitLog is flushed up to `offset`; false on timeout.
    pub fn wait_flushed(&self, offset: u64, timeout: Duration) -> bool {
        let slot = self.register_flush(offset);
        slot.wait(Instant::now() + timeout)
    }

    /// Future resolving once the CommitLog is flushed up to `offset` (false
    /// after syncFlushTimeout).
    pub fn flushed_future(&self, offset: u64) -> FlushWait {
        FlushWait::new(Some(self.register_flush(offset)))
    }
}
