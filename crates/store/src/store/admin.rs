//! Administration: topic deletion, disk and retention controls, shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{check_topic_name, MessageStore};
use crate::cleanup;
use crate::dispatch;
use crate::error::{DeleteTopicsError, Result};
use crate::vfs;

/// Folder (under the store root) where the ConsumeQueue folders of deleted
/// topics wait to be removed; outside `consumequeue/` so that recovery never
/// loads them.
const DELETED_CQ_DIR: &str = "consumequeue.deleted";
/// How long topic deletion waits for dispatch to catch up, before and while
/// appends are blocked.
const DELETE_DISPATCH_WAIT: Duration = Duration::from_secs(5);
const DELETE_DISPATCH_WAIT_LOCKED: Duration = Duration::from_secs(1);

/// Remove what a crash during topic deletion left behind.
pub(super) fn purge_deleted_queues(vfs: &dyn vfs::Vfs, root: &std::path::Path) {
    let dir = root.join(DELETED_CQ_DIR);
    if vfs.exists(&dir) {
        if let Err(e) = vfs.remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove deleted ConsumeQueues");
        }
    }
}

impl MessageStore {
    /// Write every ConsumeQueue entry held in memory to its file, make it
    /// durable and write the checkpoint (the flusher otherwise does this for
    /// a queue once its new entries fill `flushConsumeQueueLeastPages` or at
    /// the thorough interval).
    pub fn flush_consume_queues(&self) -> Result<()> {
        self.inner.flush_logics_all()
    }

    /// Delete topics from the store as RocketMQ's `deleteTopics` does: their
    /// ConsumeQueues leave the table and their files (and the topic folder)
    /// are removed, and their next queue offsets are forgotten, so a topic
    /// re-created later starts at offset 0. CommitLog records stay until
    /// retention removes them; index entries are left alone. Returns the
    /// number of queues removed. Blocking (file I/O, waits for dispatch).
    pub fn delete_topics(&self, topics: &[&str]) -> Result<usize, DeleteTopicsError> {
        let i = &self.inner;
        if i.shut_down.load(Ordering::Acquire) {
            return Err(DeleteTopicsError::ShutDown);
        }
        // Only names that can be a directory can have queues; the check also
        // keeps `join` below inside the consumequeue folder.
        let topics: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| check_topic_name(t).is_ok())
            .collect();
        if topics.is_empty() {
            return Ok(0);
        }
        // Records already appended must reach the old queues before they go:
        // dispatched afterwards, they would recreate a queue at their old
        // offsets. Wait without blocking appends first...
        let end = i.commit_log.max_offset();
        if !i.wait_dispatched(end, DELETE_DISPATCH_WAIT) {
            tracing::warn!(end, "topic deletion: dispatch is behind; deleting anyway");
        }
        let cq_root = i.cfg.consumequeue_dir();
        let trash_root = self.root.join(DELETED_CQ_DIR);
        // Made before appends are blocked; inside, only one rename per topic.
        if let Err(e) = i.vfs.create_dir_all(&trash_root) {
            tracing::warn!(dir = %trash_root.display(), error = %e, "cannot create the folder for deleted ConsumeQueues");
        }
        let (removed, trash) = i.commit_log.with_append_lock(|offsets| {
            // ...then, with appends blocked, for the few appended since.
            let end = i.commit_log.max_offset();
            if !i.wait_dispatched(end, DELETE_DISPATCH_WAIT_LOCKED) {
                tracing::warn!(end, "topic deletion: dispatch is behind; deleting anyway");
            }
            let mut removed = Vec::new();
            {
                let mut table = i.cqs.write();
                for t in &topics {
                    offsets.remove_topic(t);
                    if let Some(queues) = table.remove(*t) {
                        removed.extend(queues.into_values());
                    }
                }
                i.cq_generation.fetch_add(1, Ordering::AcqRel);
            }
            // Move each topic folder aside (one rename) so a queue recreated
            // as soon as appends resume starts in an empty folder; the files
            // are unlinked after the lock is released.
            let mut trash = Vec::new();
            for t in &topics {
                let dir = cq_root.join(t);
                if !i.vfs.exists(&dir) {
                    continue;
                }
                let to =
                    trash_root.join(format!("{t}.{}", i.cq_generation.load(Ordering::Relaxed)));
                match i.vfs.rename(&dir, &to) {
                    Ok(()) => trash.push(to),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e,
                            "cannot move ConsumeQueue folder aside; deleting it in place");
                        if let Err(e) = i.vfs.remove_dir_all(&dir) {
                            tracing::error!(dir = %dir.display(), error = %e,
                                "cannot delete ConsumeQueue folder");
                        }
                    }
                }
            }
            // The old queues' files are gone from their paths: mark their
            // segments deleted and forget them, so nothing holding an old
            // queue (flusher, retention, a reader) touches the paths a new
            // queue may use.
            for cq in &removed {
                cq.retire();
            }
            (removed.len(), trash)
        });
        // A power loss must not bring the deleted queues back.
        if let Err(e) = i.vfs.sync_dir(&cq_root) {
            tracing::warn!(dir = %cq_root.display(), error = %e, "cannot sync the ConsumeQueue folder");
        }
        for dir in trash {
            if let Err(e) = i.vfs.remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e,
                    "cannot delete a removed ConsumeQueue folder; it is retried at the next start");
            }
        }
        // Only succeeds once empty: what could not be deleted stays for the
        // next start.
        let _ = i.vfs.remove_dir(&trash_root);
        tracing::info!(?topics, queues = removed, "topics deleted from the store");
        // Persist a dispatch point past the deleted topics' records, so
        // recovery does not re-dispatch them into resurrected queues.
        i.flush_logics_all()?;
        Ok(removed)
    }

    /// Last probed disk usage (percent).
    pub fn disk_used_percent(&self) -> f64 {
        f64::from_bits(self.inner.disk_used_bits.load(Ordering::Acquire))
    }
    /// Whether writes are currently refused for lack of disk space.
    pub fn is_disk_full(&self) -> bool {
        self.inner.disk_full.load(Ordering::Acquire)
    }
    /// Whether the dispatcher's last pass failed (it is retrying): new
    /// messages do not reach their ConsumeQueues meanwhile.
    pub fn is_dispatch_stalled(&self) -> bool {
        self.inner.dispatch_stalled.load(Ordering::Acquire)
    }
    /// Whether key indexing is suspended because the index cannot be written.
    pub fn is_index_suspended(&self) -> bool {
        self.inner.index.as_ref().is_some_and(|i| i.is_suspended())
    }
    /// Probe the disk now (instead of waiting for the next tick).
    pub fn check_disk_now(&self) -> Option<f64> {
        cleanup::check_disk(&self.inner)
    }

    /// Delete expired files now, whatever the hour (RocketMQ
    /// `executeDeleteFilesManually`), synchronously. Returns the number of
    /// CommitLog segments deleted.
    pub fn delete_expired_files_now(&self) -> usize {
        cleanup::clean_once(&self.inner, true)
    }

    /// Ask the service thread to delete expired files on its next tick.
    pub fn request_delete_expired_files(&self) {
        self.inner.manual_delete.store(true, Ordering::Release);
        if let Some(t) = self.inner.service_thread.get() {
            t.unpark();
        }
    }

    /// CommitLog flushes (msync calls covering new data) so far.
    pub fn commit_log_flush_count(&self) -> u64 {
        self.inner.commit_log.flush_count()
    }

    /// Number of CommitLog segment files.
    pub fn commit_log_segment_count(&self) -> usize {
        self.inner.commit_log.segments().len()
    }

    /// Flush, checkpoint and stop. Idempotent; also run on drop.
    pub fn shutdown(&self) -> Result<()> {
        let i = &self.inner;
        if i.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        i.commit_log.barrier();
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        // Order matters: the flusher and dispatcher drain before the
        // ConsumeQueue flusher writes the final checkpoint.
        i.stop_flusher.store(true, Ordering::Release);
        i.stop_dispatcher.store(true, Ordering::Release);
        i.stop_service.store(true, Ordering::Release);
        i.stop_cq_flusher.store(true, Ordering::Release);
        for h in threads {
            h.thread().unpark();
            let _ = h.join();
        }
        let r = (|| -> Result<()> {
            i.commit_log.flush()?;
            dispatch::dispatch_all_here(i, true)?;
            i.flush_logics_all()?;
            Ok(())
        })();
        i.waiters.complete_upto(i.commit_log.flushed_offset());
        i.waiters.fail_all();
        match &r {
            Ok(()) if !i.write_error.load(Ordering::Acquire) => {
                let abort = self.root.join("abort");
                if let Err(e) = i.vfs.remove_file(&abort) {
                    tracing::warn!(error = %e, "cannot remove abort file");
                } else if let Err(e) = i.vfs.sync_dir(&self.root) {
                    tracing::warn!(error = %e, "cannot sync the store folder");
                }
                tracing::info!(root = %self.root.display(), "store shut down cleanly");
            }
            Ok(()) => tracing::warn!("store shut down after a write error; next start recovers"),
            Err(e) => tracing::error!(error = %e, "store shutdown failed; next start recovers"),
        }
        *self.lock_file.lock() = None;
        r
    }
}

impl Drop for MessageStore {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
