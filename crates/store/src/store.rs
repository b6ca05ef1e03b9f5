//! `MessageStore`: the facade the broker calls. Opens and recovers the store,
//! runs the background threads (flusher, dispatcher, ConsumeQueue
//! flusher/checkpoint, retention/disk guard), and exposes put/get/query.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use apogee_protocol::message::{
    encode_stored, id, keys, properties, stored, stored_size, sysflag, MessageToStore, TagFilter,
};
use bytes::{Bytes, BytesMut};
use parking_lot::{Condvar, Mutex, RwLock};

use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::cleanup::{self, DiskUsageProbe, StatvfsProbe};
use crate::commit_log::CommitLog;
use crate::config::{FlushDiskType, MessageStoreConfig};
use crate::consume_queue::{ConsumeQueue, CqShared, TailState};
use crate::dispatch::{self, MessageArrivingListener};
use crate::error::{Result, StoreError};
use crate::flush::{self, FlushWait, FlushWaiters, WaitSlot};
use crate::index::IndexService;
use crate::recovery;
use crate::vfs::{self, LockGuard, VfsRef};

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

/// Result of a key query.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    /// Matching stored records, newest first.
    pub messages: Vec<Bytes>,
    pub index_last_update_timestamp: i64,
    pub index_last_update_phy_offset: i64,
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

/// Optional hooks given at open.
#[derive(Default, Clone)]
pub struct StoreHooks {
    /// Disk usage source (default: statvfs on the store root).
    pub disk_probe: Option<Arc<dyn DiskUsageProbe>>,
    /// Told about every dispatched message.
    pub arriving_listener: Option<Arc<dyn MessageArrivingListener>>,
    /// Fault injection: called by the flusher before every CommitLog flush
    /// (tests use it to make a flush slow).
    pub before_flush: Option<Arc<dyn Fn() + Send + Sync>>,
    /// The file system (default: the real one). Tests pass a failing or a
    /// power-loss simulating one (see [`crate::vfs`]).
    pub vfs: Option<VfsRef>,
}

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

    /// An append failed: one that failed for lack of space (rolling to a new
    /// CommitLog segment) raises the disk-full barrier, so senders get the
    /// same "disk full" answer as above diskSpaceWarningLevelRatio, and
    /// starts a cleanup that will lift it.
    fn append_failed(&self, e: StoreError) -> StoreError {
        if !e.is_out_of_space() {
            return e;
        }
        self.note_out_of_space();
        if !self.disk_full.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "no space for a new CommitLog segment: refusing writes");
        }
        StoreError::DiskFull {
            used_percent: f64::from_bits(self.disk_used_bits.load(Ordering::Acquire)),
            limit_percent: self.cfg.disk_space_warning_level_ratio,
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
        check_topic_name(topic)?;
        let mut t = self.cqs.write();
        if let Some(cq) = t.get(topic).and_then(|q| q.get(&queue_id)) {
            return Ok(cq.clone());
        }
        let dir = self
            .cfg
            .consumequeue_dir()
            .join(topic)
            .join(queue_id.to_string());
        let cq = Arc::new(ConsumeQueue::load(
            &self.vfs,
            &dir,
            topic,
            queue_id,
            self.cfg.mapped_file_size_consume_queue,
            self.cq_shared.clone(),
        )?);
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

/// Folder (under the store root) where the ConsumeQueue folders of deleted
/// topics wait to be removed; outside `consumequeue/` so that recovery never
/// loads them.
/// Bytes a stored record may add to a body of `maxMessageSize` (Apache's
/// encoder reserves the same 64 KiB).
const RECORD_OVERHEAD_ALLOWANCE: usize = 64 * 1024;

const DELETED_CQ_DIR: &str = "consumequeue.deleted";
/// How long topic deletion waits for dispatch to catch up, before and while
/// appends are blocked.
const DELETE_DISPATCH_WAIT: Duration = Duration::from_secs(5);
const DELETE_DISPATCH_WAIT_LOCKED: Duration = Duration::from_secs(1);

/// Remove what a crash during topic deletion left behind.
fn purge_deleted_queues(vfs: &dyn vfs::Vfs, root: &std::path::Path) {
    let dir = root.join(DELETED_CQ_DIR);
    if vfs.exists(&dir) {
        if let Err(e) = vfs.remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove deleted ConsumeQueues");
        }
    }
}

/// A topic must be usable as one directory name.
fn check_topic_name(topic: &str) -> Result<()> {
    if topic.is_empty()
        || topic == "."
        || topic == ".."
        || topic.len() > 255
        || topic.contains(['/', '\0'])
    {
        return Err(StoreError::IllegalMessage(format!(
            "topic {topic:?} cannot name a directory"
        )));
    }
    Ok(())
}

thread_local! {
    static ENCODE_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(64 * 1024));
}

/// The storage engine. Dropping it shuts it down cleanly.
pub struct MessageStore {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    lock_file: Mutex<Option<LockGuard>>,
    root: PathBuf,
}

impl MessageStore {
    /// Open (creating or recovering) the store at `config.store_path_root_dir`.
    pub fn open(config: MessageStoreConfig) -> Result<MessageStore> {
        Self::open_with(config, StoreHooks::default())
    }

    /// Open with hooks (disk probe, arriving listener).
    pub fn open_with(config: MessageStoreConfig, hooks: StoreHooks) -> Result<MessageStore> {
        config.validate()?;
        let root = config.store_path_root_dir.clone();
        let vfs = hooks.vfs.clone().unwrap_or_else(vfs::real);
        crate::mapped_file_queue::create_dir_durable(&*vfs, &root)?;
        let lock_file = lock_root(&*vfs, &root)?;
        let abort_path = root.join("abort");
        let crashed = vfs.exists(&abort_path);
        // A crash in this same boot lost only the process; the page cache
        // still holds every write. Otherwise assume a power loss.
        let power_lost = crashed && {
            let marker = vfs::read_file(&*vfs, &abort_path).ok().flatten();
            let boot = vfs.boot_id();
            boot.is_none() || marker.as_deref() != boot.as_deref().map(str::as_bytes)
        };
        purge_deleted_queues(&*vfs, &root);
        cleanup::remove_stale_tmp_files(&*vfs, &root);
        let (checkpoint, cp) = CheckpointFile::open(&vfs, &root.join("checkpoint"))?;
        let commit_log = CommitLog::load(
            &vfs,
            &config.commitlog_dir(),
            config.mapped_file_size_commit_log,
        )?;
        // SYNC_FLUSH flushes small ranges constantly: write those segments
        // with pwrite and sync them with fdatasync (see MappedFile).
        commit_log
            .segments()
            .set_syscall_writes(config.flush_disk_type == FlushDiskType::SyncFlush);
        let index = if config.message_index_enable {
            Some(IndexService::load(
                &vfs,
                &config.index_dir(),
                config.max_hash_slot_num,
                config.max_index_num,
            )?)
        } else {
            None
        };
        let inner = Arc::new(Inner {
            vfs: vfs.clone(),
            commit_log,
            cqs: RwLock::new(CqTable::default()),
            cq_generation: AtomicU64::new(0),
            cq_shared: Arc::default(),
            index,
            waiters: FlushWaiters::default(),
            dispatched: AtomicU64::new(0),
            dispatched_store_ts: AtomicI64::new(0),
            dispatch_mu: Mutex::new(()),
            dispatch_cv: Condvar::new(),
            dispatch_waiting: AtomicU64::new(0),
            dispatcher_idle: Default::default(),
            flusher_idle: Default::default(),
            listener: RwLock::new(hooks.arriving_listener),
            disk_probe: hooks.disk_probe.unwrap_or_else(|| Arc::new(StatvfsProbe)),
            before_flush: hooks.before_flush,
            disk_full: AtomicBool::new(false),
            disk_used_bits: AtomicU64::new(0f64.to_bits()),
            out_of_space: AtomicBool::new(false),
            clean_soon: AtomicBool::new(false),
            dispatch_stalled: AtomicBool::new(false),
            write_error: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
            manual_delete: AtomicBool::new(false),
            stop_flusher: AtomicBool::new(false),
            stop_dispatcher: AtomicBool::new(false),
            stop_cq_flusher: AtomicBool::new(false),
            stop_service: AtomicBool::new(false),
            flusher_thread: OnceLock::new(),
            dispatcher_thread: OnceLock::new(),
            service_thread: OnceLock::new(),
            cq_flusher_thread: OnceLock::new(),
            checkpoint,
            checkpoint_mu: Mutex::new(()),
            cfg: config,
        });
        recovery::recover(&inner, cp, crashed, power_lost)?;
        // Mark the store as running: a crash (or power loss) from here on
        // leaves this file.
        // It names this boot, so the next start can tell a killed process
        // from a power loss.
        let boot = vfs.boot_id().unwrap_or_default();
        vfs::write_atomic(&*vfs, &abort_path, boot.as_bytes())
            .map_err(|e| StoreError::io("create abort file", &abort_path, e.into_io()))?;
        inner.flush_logics_all()?;
        cleanup::check_disk(&inner);
        if inner.cfg.flush_disk_type == FlushDiskType::SyncFlush {
            inner.commit_log.prepare_current()?;
        }

        let store = MessageStore {
            inner: inner.clone(),
            threads: Mutex::new(Vec::new()),
            lock_file: Mutex::new(Some(lock_file)),
            root,
        };
        store.spawn("apogee-flush-cl", flush::run_flusher, |i| &i.flusher_thread)?;
        store.spawn("apogee-dispatch", dispatch::run_dispatcher, |i| {
            &i.dispatcher_thread
        })?;
        store.spawn("apogee-flush-cq", run_cq_flusher, |i| &i.cq_flusher_thread)?;
        store.spawn("apogee-store-svc", cleanup::run_service, |i| {
            &i.service_thread
        })?;
        store.spawn("apogee-warm-cl", crate::warm::run_warmer, |_| &UNUSED)?;
        Ok(store)
    }

    fn spawn(
        &self,
        name: &str,
        body: fn(Arc<Inner>),
        slot: fn(&Inner) -> &OnceLock<Thread>,
    ) -> Result<()> {
        let inner = self.inner.clone();
        let h = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(inner))
            .map_err(|e| StoreError::io("spawn thread", &self.root, e))?;
        let _ = slot(&self.inner).set(h.thread().clone());
        self.threads.lock().push(h);
        Ok(())
    }

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

    pub(crate) fn check_writable(&self) -> Result<()> {
        let i = &self.inner;
        if i.shut_down.load(Ordering::Acquire) {
            return Err(StoreError::ShutDown);
        }
        if i.write_error.load(Ordering::Acquire) {
            return Err(StoreError::NotWritable("an earlier write or flush failed"));
        }
        if i.disk_full.load(Ordering::Acquire) {
            return Err(StoreError::DiskFull {
                used_percent: f64::from_bits(i.disk_used_bits.load(Ordering::Acquire)),
                limit_percent: i.cfg.disk_space_warning_level_ratio,
            });
        }
        Ok(())
    }

    /// Encode and append (one message or one client batch) without waiting
    /// for a flush. Returns the result and whether the caller should wait.
    fn append(&self, msgs: &[MessageToStore]) -> Result<(PutResult, bool)> {
        self.check_writable()?;
        let first = msgs
            .first()
            .ok_or_else(|| StoreError::IllegalMessage("empty batch".into()))?;
        check_topic_name(&first.topic)?;
        if first.queue_id < 0 {
            return Err(StoreError::IllegalMessage(format!(
                "negative queue id {}",
                first.queue_id
            )));
        }
        let max = self.inner.cfg.max_message_size;
        for m in msgs {
            if m.topic != first.topic || m.queue_id != first.queue_id {
                return Err(StoreError::IllegalMessage(
                    "a batch must target one topic and queue".into(),
                ));
            }
            if sysflag::is_dispatchable(m.sys_flag) != sysflag::is_dispatchable(first.sys_flag) {
                return Err(StoreError::IllegalMessage(
                    "a batch cannot mix transaction types".into(),
                ));
            }
            // As Apache's encoder: `maxMessageSize` bounds each body; the
            // record around it (topic, properties, fixed fields) may add up
            // to 64 KiB. A client batch's wire size is bounded by the broker.
            if m.body.len() > max {
                return Err(StoreError::MessageTooLarge {
                    size: m.body.len(),
                    max,
                });
            }
            let size = stored_size(m);
            let max_record = max.saturating_add(RECORD_OVERHEAD_ALLOWANCE);
            if size > max_record {
                return Err(StoreError::MessageTooLarge {
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
        let res = ENCODE_BUF.with(|cell| -> Result<_> {
            let mut buf = cell.borrow_mut();
            buf.clear();
            for m in msgs {
                encode_stored(m, &mut buf).map_err(|e| StoreError::Encode(e.to_string()))?;
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

    fn put_blocking(&self, msgs: &[MessageToStore]) -> Result<PutResult> {
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

    fn put_pending(&self, msgs: &[MessageToStore]) -> Result<PendingPut> {
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
    pub fn put_message(&self, msg: &MessageToStore) -> Result<PutResult> {
        self.put_blocking(std::slice::from_ref(msg))
    }

    /// Store one client batch: one append, consecutive queue offsets.
    pub fn put_messages(&self, batch: &[MessageToStore]) -> Result<PutResult> {
        self.put_blocking(batch)
    }

    /// Append now; the returned future resolves once the flush policy is
    /// satisfied (at once under ASYNC_FLUSH). Never blocks the caller on I/O.
    pub fn put_message_async(&self, msg: &MessageToStore) -> Result<PendingPut> {
        self.put_pending(std::slice::from_ref(msg))
    }

    /// Batch variant of [`MessageStore::put_message_async`].
    pub fn put_messages_async(&self, batch: &[MessageToStore]) -> Result<PendingPut> {
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

    /// Write every ConsumeQueue entry held in memory to its file, make it
    /// durable and write the checkpoint (the flusher otherwise does this for
    /// a queue once its new entries fill `flushConsumeQueueLeastPages` or at
    /// the thorough interval).
    pub fn flush_consume_queues(&self) -> Result<()> {
        self.inner.flush_logics_all()
    }

    /// Block until everything below `offset` is dispatched to ConsumeQueues
    /// and the index; false on timeout.
    pub fn wait_dispatched(&self, offset: u64, timeout: Duration) -> bool {
        self.inner.wait_dispatched(offset, timeout)
    }

    /// Delete topics from the store as RocketMQ's `deleteTopics` does: their
    /// ConsumeQueues leave the table and their files (and the topic folder)
    /// are removed, and their next queue offsets are forgotten, so a topic
    /// re-created later starts at offset 0. CommitLog records stay until
    /// retention removes them; index entries are left alone. Returns the
    /// number of queues removed. Blocking (file I/O, waits for dispatch).
    pub fn delete_topics(&self, topics: &[&str]) -> Result<usize> {
        let i = &self.inner;
        if i.shut_down.load(Ordering::Acquire) {
            return Err(StoreError::ShutDown);
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

    /// Register (or replace) the arriving-message listener.
    pub fn set_message_arriving_listener(&self, l: Arc<dyn MessageArrivingListener>) {
        *self.inner.listener.write() = Some(l);
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

static UNUSED: OnceLock<Thread> = OnceLock::new();

/// ConsumeQueue/index flusher and checkpoint writer.
fn run_cq_flusher(inner: Arc<Inner>) {
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

/// Take an exclusive lock on `<root>/lock` so two processes never share a store.
fn lock_root(vfs: &dyn vfs::Vfs, root: &std::path::Path) -> Result<LockGuard> {
    let path = root.join("lock");
    vfs.lock(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            StoreError::Locked(root.to_path_buf())
        } else {
            StoreError::io("lock store", &path, e)
        }
    })
}
