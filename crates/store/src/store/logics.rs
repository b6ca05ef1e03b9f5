//! The ConsumeQueue/index flusher and the checkpoint it writes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Inner;
use crate::checkpoint::Checkpoint;
use crate::consume_queue::TailState;
use crate::error::{Result, StoreError};
use crate::vfs;

impl Inner {
    /// Flush ConsumeQueues and index, then write the checkpoint. Writes
    /// only the tails that are due (see `consume_queue`); the checkpoint's
    /// dispatch point stays below every tail left in memory.
    pub(crate) fn flush_logics_and_checkpoint(&self) -> Result<()> {
        self.flush_logics(false)
    }

    /// Like [`Inner::flush_logics_and_checkpoint`], writing every tail
    /// (shutdown, topic deletion, tests).
    pub(crate) fn flush_logics_all(&self) -> Result<()> {
        self.flush_logics(true)
    }

    fn flush_logics(&self, force: bool) -> Result<()> {
        /// More files than this written in one flush: one syncfs instead of
        /// one fdatasync each.
        const SYNC_EACH_MAX: usize = 32;
        let _g = self.checkpoint_mu.lock();
        // Read before the dirty list: every entry below `dispatched` is
        // either in a listed tail or already durable in its file.
        let dispatched = self.dispatched.load(Ordering::Acquire);
        let mut logics_ts = self.dispatched_store_ts.load(Ordering::Acquire);
        let listed = std::mem::take(&mut *self.cq_shared.dirty.lock());
        // Over half the memory budget: write everything now.
        let force = force
            || self.cq_shared.tail_bytes.load(Ordering::Relaxed)
                > self.cfg.max_unwritten_consume_queue_bytes / 2;
        let now = crate::commit_log::now_ms();
        let least = if force {
            0
        } else {
            (self.cfg.flush_consume_queue_least_pages as usize).saturating_mul(4096)
        };
        let max_age = if force {
            0
        } else {
            self.cfg
                .flush_consume_queue_thorough_interval
                .min(i64::MAX as u64) as i64
        };
        let mut keep = Vec::new();
        let mut written = Vec::new();
        let mut files = Vec::new();
        let mut created = false;
        let mut safe = dispatched;
        let mut failed = None;
        for cq in listed {
            if cq.is_retired() {
                continue;
            }
            if failed.is_some() {
                keep.push(cq);
                continue;
            }
            match cq.tail_state(now, least.max(1), max_age) {
                TailState::Empty => {
                    if cq.tail_written(i64::MIN) {
                        keep.push(cq);
                    }
                }
                TailState::Kept {
                    first_phys,
                    first_ts,
                } => {
                    safe = safe.min(first_phys.max(0) as u64);
                    logics_ts = logics_ts.min(first_ts);
                    keep.push(cq);
                }
                TailState::Due => match cq.write_tail() {
                    Ok(w) => {
                        created |= w.created;
                        for f in w.files {
                            if files.len() <= SYNC_EACH_MAX && !files.contains(&f) {
                                files.push(f);
                            }
                        }
                        written.push((cq, w.upto));
                    }
                    Err(e) => {
                        failed = Some(e);
                        keep.push(cq);
                    }
                },
            }
        }
        let rewrites = self.cq_shared.files_unsynced.swap(false, Ordering::AcqRel);
        let synced = match failed {
            Some(e) => Err(e),
            None if written.is_empty() && !rewrites => Ok(()),
            None if created || rewrites || files.len() > SYNC_EACH_MAX => {
                let root = self.cfg.consumequeue_dir();
                self.vfs
                    .sync_fs(&root)
                    .map_err(|e| StoreError::io("sync file system", &root, e))
            }
            None => files.iter().try_for_each(|p| {
                self.vfs
                    .open(p, vfs::OpenMode::Existing)
                    .and_then(|f| f.sync_data())
                    .map_err(|e| StoreError::io("flush segment", p, e))
            }),
        };
        if let Err(e) = synced {
            // Nothing written counts: the tails stay and are written again
            // (re-dirtying pages a failed writeback may have marked clean).
            if rewrites {
                self.cq_shared.files_unsynced.store(true, Ordering::Release);
            }
            let mut d = self.cq_shared.dirty.lock();
            d.extend(keep);
            d.extend(written.into_iter().map(|(cq, _)| cq));
            return Err(e);
        }
        for (cq, upto) in written {
            // Entries added while writing were dispatched after `dispatched`
            // was read, so they do not lower `safe`; kept for the next round.
            if cq.tail_written(upto) {
                keep.push(cq);
            }
        }
        if !keep.is_empty() {
            self.cq_shared.dirty.lock().extend(keep);
        }
        if let Some(index) = &self.index {
            index.flush()?;
        }
        let cl_flushed = self.commit_log.flushed_offset();
        self.checkpoint.write(&Checkpoint {
            physic_msg_timestamp: self.commit_log.flushed_store_ts(),
            logics_msg_timestamp: logics_ts,
            index_msg_timestamp: self.dispatched_store_ts.load(Ordering::Acquire),
            commitlog_flushed_offset: cl_flushed,
            dispatched_flushed_offset: safe,
        })
    }
}

/// ConsumeQueue/index flusher and checkpoint writer.
pub(super) fn run_cq_flusher(inner: Arc<Inner>) {
    let interval = Duration::from_millis(inner.cfg.flush_interval_consume_queue.max(1));
    while !inner.stop_cq_flusher.load(Ordering::Acquire) {
        std::thread::park_timeout(interval);
        if inner.stop_cq_flusher.load(Ordering::Acquire) {
            break;
        }
        if let Err(e) = inner.flush_logics_and_checkpoint() {
            if e.is_out_of_space() {
                inner.note_out_of_space();
            }
            static CQ_FLUSH_FAILED: apogee_throttle::LogThrottle =
                apogee_throttle::LogThrottle::new("ConsumeQueue flush / checkpoint failed");
            apogee_throttle::throttled_error!(CQ_FLUSH_FAILED, (), error = %e,
                "ConsumeQueue flush / checkpoint failed");
        }
    }
}
