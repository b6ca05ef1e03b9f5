//! `MessageStore`: the facade the broker calls. Opens and recovers the store,
//! runs the background threads (flusher, dispatcher, ConsumeQueue
//! flusher/checkpoint, retention/disk guard), and exposes put/get/query.
//!
//! One file per kind of operation: `open` (open, recovery wiring, the
//! background threads), `put` (appends and flush waits), `get` (reads and
//! offsets), `query` (the key index, time lookups), `admin` (topic
//! deletion, disk and retention controls, shutdown) and `logics`
//! (ConsumeQueue/index flush and the checkpoint). This file holds the shared
//! state (`Inner`) and the [`MessageStore`] handle itself.

mod admin;
mod get;
mod logics;
mod open;
mod put;
mod query;

pub use get::{GetResult, GetStatus, MessageFilter};
pub use open::StoreHooks;
pub use put::{PendingPut, PutResult, PutStatus};
pub use query::QueryResult;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::checkpoint::CheckpointFile;
use crate::cleanup::DiskUsageProbe;
use crate::commit_log::CommitLog;
use crate::config::MessageStoreConfig;
use crate::consume_queue::{ConsumeQueue, CqShared};
use crate::dispatch::{self, MessageArrivingListener};
use crate::error::{Result, StoreError};
use crate::flush::FlushWaiters;
use crate::index::IndexService;
use crate::vfs::{LockGuard, VfsRef};

/// Looked up by the dispatcher for every message whose queue is not in its
/// small cache: foldhash, not SipHash.
/// Topic names are kept inline (up to 24 bytes) so that a lookup among
/// 100,000 topics reads no line beyond the bucket to compare the key.
type CqTable = HashMap<
    compact_str::CompactString,
    HashMap<i32, Arc<ConsumeQueue>, foldhash::fast::RandomState>,
    foldhash::fast::RandomState,
>;

/// State shared with the background threads.
pub(crate) struct Inner {
    pub(crate) cfg: MessageStoreConfig,
    pub(crate) vfs: VfsRef,
    pub(crate) commit_log: CommitLog,
    pub(crate) cqs: RwLock<CqTable>,
    /// Bumped whenever queues leave `cqs` (topic deletion): the dispatcher
    /// drops its cached queues when it changes.
    pub(crate) cq_generation: AtomicU64,
    /// ConsumeQueue tails waiting for the flusher (see `consume_queue`).
    pub(crate) cq_shared: Arc<CqShared>,
    pub(crate) index: Option<IndexService>,
    pub(crate) waiters: FlushWaiters,
    /// CommitLog offset up to which ConsumeQueue/index entries exist.
    pub(crate) dispatched: AtomicU64,
    pub(crate) dispatched_store_ts: AtomicI64,
    dispatch_mu: Mutex<()>,
    dispatch_cv: Condvar,
    dispatch_waiting: AtomicU64,
    /// Set while the dispatcher sleeps for want of work (appenders wake it).
    pub(crate) dispatcher_idle: dispatch::IdleFlag,
    /// Set while the CommitLog flusher sleeps for want of work.
    pub(crate) flusher_idle: dispatch::IdleFlag,
    pub(crate) listener: RwLock<Option<Arc<dyn MessageArrivingListener>>>,
    pub(crate) disk_probe: Arc<dyn DiskUsageProbe>,
    pub(crate) before_flush: Option<Arc<dyn Fn() + Send + Sync>>,
    pub(crate) disk_full: AtomicBool,
    pub(crate) disk_used_bits: AtomicU64,
    /// A file could not be created for lack of space, and since then neither
    /// has retention deleted a segment nor has a new CommitLog segment been
    /// created: retention deletes forcibly, and the disk-full barrier stays.
    /// (Not statvfs: quotas and inode exhaustion fail with free blocks.)
    pub(crate) out_of_space: AtomicBool,
    /// Ask the service thread for a retention round at its next tick.
    pub(crate) clean_soon: AtomicBool,
    /// The dispatcher's last pass failed (it retries with backoff).
    pub(crate) dispatch_stalled: AtomicBool,
    write_error: AtomicBool,
    shut_down: AtomicBool,
    pub(crate) manual_delete: AtomicBool,
    pub(crate) stop_flusher: AtomicBool,
    pub(crate) stop_dispatcher: AtomicBool,
    pub(crate) stop_cq_flusher: AtomicBool,
    pub(crate) stop_service: AtomicBool,
    flusher_thread: OnceLock<Thread>,
    dispatcher_thread: OnceLock<Thread>,
    service_thread: OnceLock<Thread>,
    cq_flusher_thread: OnceLock<Thread>,
    checkpoint: CheckpointFile,
    checkpoint_mu: Mutex<()>,
}

impl Inner {
    pub(crate) fn set_write_error(&self) {
        self.write_error.store(true, Ordering::Release);
    }

    pub(crate) fn clear_write_error(&self) {
        self.write_error.store(false, Ordering::Release);
    }

    /// A file could not be created for lack of space: have retention free
    /// some now instead of at its next round.
    pub(crate) fn note_out_of_space(&self) {
        self.out_of_space.store(true, Ordering::Release);
        self.clean_soon.store(true, Ordering::Release);
        if let Some(t) = self.service_thread.get() {
            t.unpark();
        }
    }

    pub(crate) fn wake_cq_flusher(&self) {
        if let Some(t) = self.cq_flusher_thread.get() {
            t.unpark();
        }
    }

    pub(crate) fn wake_dispatcher(&self) {
        if let Some(t) = self.dispatcher_thread.get() {
            t.unpark();
        }
    }

    pub(crate) fn notify_dispatched(&self) {
        if self.dispatch_waiting.load(Ordering::Acquire) > 0 {
            let _g = self.dispatch_mu.lock();
            self.dispatch_cv.notify_all();
        }
    }

    /// Block until everything below `offset` is dispatched; false on timeout.
    pub(crate) fn wait_dispatched(&self, offset: u64, timeout: Duration) -> bool {
        let i = self;
        let deadline = Instant::now() + timeout;
        i.dispatch_waiting.fetch_add(1, Ordering::AcqRel);
        let mut g = i.dispatch_mu.lock();
        let ok = loop {
            if i.dispatched.load(Ordering::Acquire) >= offset {
                break true;
            }
            if let Some(t) = i.dispatcher_thread.get() {
                t.unpark();
            }
            let step = (Instant::now() + Duration::from_millis(10)).min(deadline);
            if i.dispatch_cv.wait_until(&mut g, step).timed_out() && Instant::now() >= deadline {
                break i.dispatched.load(Ordering::Acquire) >= offset;
            }
        };
        drop(g);
        i.dispatch_waiting.fetch_sub(1, Ordering::AcqRel);
        ok
    }

    pub(crate) fn find_cq(&self, topic: &str, queue_id: i32) -> Option<Arc<ConsumeQueue>> {
        self.cqs.read().get(topic)?.get(&queue_id).cloned()
    }

    /// Load one queue from its folder (not yet in the table).
    pub(crate) fn load_cq(&self, topic: &str, queue_id: i32) -> Result<ConsumeQueue> {
        let dir = self
            .cfg
            .consumequeue_dir()
            .join(topic)
            .join(queue_id.to_string());
        ConsumeQueue::load(
            &self.vfs,
            &dir,
            topic,
            queue_id,
            self.cfg.mapped_file_size_consume_queue,
            self.cq_shared.clone(),
        )
    }

    /// Put a loaded queue in the table (recovery).
    pub(crate) fn insert_cq(&self, cq: ConsumeQueue) {
        self.cqs
            .write()
            .entry(compact_str::CompactString::from(cq.topic()))
            .or_default()
            .insert(cq.queue_id(), Arc::new(cq));
    }

    pub(crate) fn find_or_create_cq(
        &self,
        topic: &str,
        queue_id: i32,
    ) -> Result<Arc<ConsumeQueue>> {
        if let Some(cq) = self.find_cq(topic, queue_id) {
            return Ok(cq);
        }
        check_topic_name(topic).map_err(StoreError::IllegalRecord)?;
        let mut t = self.cqs.write();
        if let Some(cq) = t.get(topic).and_then(|q| q.get(&queue_id)) {
            return Ok(cq.clone());
        }
        let cq = Arc::new(self.load_cq(topic, queue_id)?);
        t.entry(compact_str::CompactString::from(topic))
            .or_default()
            .insert(queue_id, cq.clone());
        Ok(cq)
    }

    pub(crate) fn all_cqs(&self) -> Vec<Arc<ConsumeQueue>> {
        self.cqs
            .read()
            .values()
            .flat_map(|q| q.values().cloned())
            .collect()
    }
}

/// A topic must be usable as one directory name; the error says why not.
fn check_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty()
        || topic == "."
        || topic == ".."
        || topic.len() > 255
        || topic.contains(['/', '\0'])
    {
        return Err(format!("topic {topic:?} cannot name a directory"));
    }
    Ok(())
}

/// The storage engine. Dropping it shuts it down cleanly.
pub struct MessageStore {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    lock_file: Mutex<Option<LockGuard>>,
    root: PathBuf,
}

impl MessageStore {
    pub fn config(&self) -> &MessageStoreConfig {
        &self.inner.cfg
    }

    /// The file system the store uses, for neighbours (the broker's config files) to share.
    pub fn vfs(&self) -> VfsRef {
        self.inner.vfs.clone()
    }

    /// The shared state, for the store's other modules (replica).
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Register (or replace) the arriving-message listener.
    pub fn set_message_arriving_listener(&self, l: Arc<dyn MessageArrivingListener>) {
        *self.inner.listener.write() = Some(l);
    }
}
