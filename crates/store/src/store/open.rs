//! Opening the store: lock, load, recover, then start the background threads.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use parking_lot::{Condvar, Mutex, RwLock};

use super::admin::purge_deleted_queues;
use super::logics::run_cq_flusher;
use super::{CqTable, Inner, MessageStore};
use crate::checkpoint::CheckpointFile;
use crate::cleanup::{self, DiskUsageProbe, StatvfsProbe};
use crate::commit_log::CommitLog;
use crate::config::{FlushDiskType, MessageStoreConfig};
use crate::dispatch::{self, MessageArrivingListener};
use crate::error::{OpenError, Result, StoreError};
use crate::flush::{self, FlushWaiters};
use crate::index::IndexService;
use crate::recovery;
use crate::vfs::{self, LockGuard, VfsRef};

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

impl MessageStore {
    /// Open (creating or recovering) the store at `config.store_path_root_dir`.
    pub fn open(config: MessageStoreConfig) -> Result<MessageStore, OpenError> {
        Self::open_with(config, StoreHooks::default())
    }

    /// Open with hooks (disk probe, arriving listener).
    pub fn open_with(
        config: MessageStoreConfig,
        hooks: StoreHooks,
    ) -> Result<MessageStore, OpenError> {
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
}

static UNUSED: OnceLock<Thread> = OnceLock::new();

/// Take an exclusive lock on `<root>/lock` so two processes never share a store.
fn lock_root(vfs: &dyn vfs::Vfs, root: &std::path::Path) -> Result<LockGuard, OpenError> {
    let path = root.join("lock");
    vfs.lock(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            OpenError::Locked(root.to_path_buf())
        } else {
            StoreError::io("lock store", &path, e).into()
        }
    })
}
