//! Retention and disk guard: deletes expired CommitLog segments (at
//! `deleteWhen`, under disk pressure, or on request), lets ConsumeQueues and
//! index files follow, and flips the "disk full" write barrier from the
//! disk-usage probe. Under disk pressure (usage at or above
//! `diskSpaceCleanForciblyRatio`, writes refused, or a file that could not
//! be created for lack of space) it deletes the oldest segments even before
//! they expire, so a full disk heals without an operator.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mapped_file::segment_name;
use crate::vfs::Vfs;

use crate::commit_log::now_ms;
use crate::index::local_hour;
use crate::store::Inner;

/// Reports how full the disk holding a path is, in percent (0..=100).
/// Injectable so tests (and operators) need no real full disk.
pub trait DiskUsageProbe: Send + Sync {
    fn used_percent(&self, path: &Path) -> Option<f64>;
}

impl<F> DiskUsageProbe for F
where
    F: Fn(&Path) -> Option<f64> + Send + Sync,
{
    fn used_percent(&self, path: &Path) -> Option<f64> {
        self(path)
    }
}

/// The real probe: statvfs, counting space reserved for root as used (as df does).
#[derive(Debug, Default, Clone, Copy)]
pub struct StatvfsProbe;

impl DiskUsageProbe for StatvfsProbe {
    fn used_percent(&self, path: &Path) -> Option<f64> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: statvfs fills the struct we own; `c` is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        let total = st.f_blocks as f64;
        if total <= 0.0 {
            return None;
        }
        let used = total - st.f_bfree as f64;
        let avail = st.f_bavail as f64;
        let denom = used + avail;
        let blocks = (denom > 0.0).then(|| used * 100.0 / denom)?;
        // Running out of inodes fails creations with ENOSPC just the same.
        let inodes = if st.f_files > 0 {
            (st.f_files - st.f_ffree.min(st.f_files)) as f64 * 100.0 / st.f_files as f64
        } else {
            0.0
        };
        Some(blocks.max(inodes))
    }
}

/// Bytes an unprivileged writer can still allocate on the file system
/// holding `path` (statvfs `f_bavail`), or None if it cannot be asked.
/// Checked before creating a large file, so that a creation bound to fail
/// does not first take every free block (tmpfs and ext4 allocate until they
/// run out) and starve the other writers meanwhile.
pub(crate) fn available_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we own; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Remove the `*.tmp` files that an interrupted segment or index creation
/// left in the store's data folders (`commitlog/`, `index/`,
/// `consumequeue/<topic>/<queue>/`). Called at open, before anything is
/// created. Returns the number removed.
pub(crate) fn remove_stale_tmp_files(vfs: &dyn Vfs, root: &Path) -> usize {
    fn sweep(vfs: &dyn Vfs, dir: &Path, removed: &mut usize) {
        let Ok(entries) = vfs.list_dir(dir) else {
            return;
        };
        for e in entries {
            let path = dir.join(&e.name);
            if e.is_dir || path.extension().is_none_or(|x| x != "tmp") {
                continue;
            }
            match vfs.remove_file(&path) {
                Ok(()) => *removed += 1,
                Err(err) => tracing::warn!(path = %path.display(), error = %err,
                    "cannot remove a leftover temporary file"),
            }
        }
    }
    let mut removed = 0;
    sweep(vfs, &root.join("commitlog"), &mut removed);
    sweep(vfs, &root.join("index"), &mut removed);
    let cq_root = root.join("consumequeue");
    for topic in vfs.list_dir(&cq_root).unwrap_or_default() {
        if !topic.is_dir {
            continue;
        }
        let topic_dir = cq_root.join(&topic.name);
        for queue in vfs.list_dir(&topic_dir).unwrap_or_default() {
            if queue.is_dir {
                sweep(vfs, &topic_dir.join(&queue.name), &mut removed);
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "removed temporary files left by interrupted file creations"
        );
    }
    removed
}

/// Probe the disk and update the write barrier. Returns the usage.
pub(crate) fn check_disk(inner: &Inner) -> Option<f64> {
    let root = &inner.cfg.store_path_root_dir;
    let used = inner.disk_probe.used_percent(root)?;
    inner
        .disk_used_bits
        .store(used.to_bits(), Ordering::Release);
    let limit = f64::from(inner.cfg.disk_space_warning_level_ratio);
    let was_full = inner.disk_full.load(Ordering::Acquire);
    let out_of_space = inner.out_of_space.load(Ordering::Acquire);
    if used >= limit && !was_full {
        inner.disk_full.store(true, Ordering::Release);
        tracing::error!(
            used_percent = used,
            limit_percent = limit,
            "disk full: refusing writes"
        );
    } else if used < limit && was_full && !out_of_space {
        inner.disk_full.store(false, Ordering::Release);
        tracing::info!(
            used_percent = used,
            "disk usage back under the limit: accepting writes"
        );
    }
    Some(used)
}

/// Whether unexpired segments may be deleted now: usage at or above
/// `diskSpaceCleanForciblyRatio` (RocketMQ's "clean immediately"), or writes
/// refused / a file not created for lack of space while usage is above
/// `diskMaxUsedSpaceRatio`. An ENOSPC alone never deletes data: on a disk
/// the probe reports as roomy it is transient (or a quota), and deleting
/// acknowledged messages would not be the cure.
fn must_clean_forcibly(inner: &Inner, used: f64) -> bool {
    let short =
        inner.disk_full.load(Ordering::Acquire) || inner.out_of_space.load(Ordering::Acquire);
    used >= f64::from(inner.cfg.disk_space_clean_forcibly_ratio)
        || (short && used >= f64::from(inner.cfg.disk_max_used_space_ratio))
}

/// One retention round. `manual` deletes expired files regardless of the hour.
/// Returns the number of CommitLog segments deleted.
///
/// Under disk pressure one unexpired segment is deleted per round (rounds
/// then come every `diskCheckInterval`): the space of an unlinked segment
/// returns only once its last mapping is gone, so the next round sees the
/// real usage before deciding on another. A segment whose records are not
/// all dispatched is deleted only under pressure while the dispatcher is
/// stalled (it skips forward to the new start); its messages are lost to
/// consumers, which the deletion log line says.
pub(crate) fn clean_once(inner: &Inner, manual: bool) -> usize {
    let cfg = &inner.cfg;
    let now = now_ms();
    let used = check_disk(inner).unwrap_or(0.0);
    let is_time = cfg.delete_hours().contains(&local_hour(now));
    let pressure = used >= f64::from(cfg.disk_max_used_space_ratio);
    let forcibly = must_clean_forcibly(inner, used);
    if !(manual || is_time || pressure || forcibly) {
        return 0;
    }
    let reserved_ms = cfg.file_reserved_time.saturating_mul(3_600_000);
    let dispatched = inner.dispatched.load(Ordering::Acquire);
    let stalled = inner.dispatch_stalled.load(Ordering::Acquire);
    let cl = &inner.commit_log;
    let files = cl.segments().snapshot();
    let mut deleted = 0usize;
    let mut forced = 0usize;
    // CommitLog range whose records never reached a ConsumeQueue.
    let mut lost: Option<(u64, u64)> = None;
    // Never the last (current) segment.
    for f in files.iter().take(files.len().saturating_sub(1)) {
        if deleted >= cfg.delete_files_batch_max {
            break;
        }
        let expired = now.max(0) as u64 >= f.last_modified_ms().saturating_add(reserved_ms);
        // Under pressure, one segment per round may go early.
        let may_force = forcibly && forced == 0;
        if !(expired || may_force) {
            break;
        }
        // A segment whose records are not all dispatched yet is kept, unless
        // the disk is full and the dispatcher cannot make progress anyway.
        let undispatched = f.base() + f.size() > dispatched || !f.is_full();
        if undispatched && !(may_force && stalled) {
            break;
        }
        if !f.destroy(now.max(0) as u64, cfg.destroy_mapped_file_interval_forcibly) {
            tracing::debug!(path = %f.path().display(), readers = f.reader_count(),
                "segment still being read; deleting later");
            break;
        }
        if !expired || undispatched {
            forced += 1;
        }
        if undispatched {
            let from = dispatched.max(f.base());
            lost = Some((from, f.base() + f.size()));
        }
        deleted += 1;
    }
    if deleted > 0 {
        cl.segments().remove_first(deleted);
        let min = cl.min_offset();
        let first = files.first().map(|f| f.base()).unwrap_or(0);
        let names = files
            .iter()
            .take(deleted)
            .map(|f| segment_name(f.base()))
            .collect::<Vec<_>>()
            .join(",");
        // The snapshot's references keep deleted segments mapped, and their
        // blocks in use, until dropped.
        drop(files);
        // The one line that says what was deleted (and what is gone).
        if forced == 0 {
            tracing::info!(
                deleted,
                segments = %names,
                from_offset = first,
                new_min_offset = min,
                used_percent = used,
                "deleted expired CommitLog segments"
            );
        } else if let Some((lost_from, lost_to)) = lost {
            tracing::error!(
                deleted,
                segments = %names,
                from_offset = first,
                new_min_offset = min,
                undispatched_from = lost_from,
                undispatched_to = lost_to,
                used_percent = used,
                "disk full and dispatch stalled: deleted CommitLog segments before their records \
                 reached the ConsumeQueues; messages in [undispatched_from, undispatched_to) are \
                 lost to consumers"
            );
        } else {
            tracing::warn!(
                deleted,
                segments = %names,
                from_offset = first,
                new_min_offset = min,
                used_percent = used,
                "disk pressure: deleted CommitLog segments before fileReservedTime to free space"
            );
        }
        for cq in inner.all_cqs() {
            cq.delete_expired(min);
        }
        if let Some(index) = &inner.index {
            index.delete_expired(min);
            // Space was freed: an index file that could not be created may fit now.
            index.retry_soon();
        }
        inner.out_of_space.store(false, Ordering::Release);
        // A stalled dispatcher retries (or skips forward) now, and drops its
        // mapping of a deleted segment so the space really comes back.
        inner.wake_dispatcher();
        check_disk(inner);
    }
    deleted
}

/// Retries of a failing background file creation: first after
/// `PREALLOC_RETRY_MIN`, doubling up to `PREALLOC_RETRY_MAX`.
const PREALLOC_RETRY_MIN: Duration = Duration::from_secs(1);
const PREALLOC_RETRY_MAX: Duration = Duration::from_secs(30);

/// Creating the next CommitLog segment ahead of time, with backoff after a
/// failure (one log line per failure streak, not one per tick).
#[derive(Default)]
struct Prealloc {
    failed_since: Option<Instant>,
    delay: Duration,
    retry_at: Option<Instant>,
}

impl Prealloc {
    fn tick(&mut self, inner: &Inner) {
        let segs = inner.commit_log.segments();
        // Out of space, the attempt (backed off) is also how we learn that
        // space is back; otherwise a full disk gets no new segment.
        let out_of_space = inner.out_of_space.load(Ordering::Acquire);
        let Some(last) = segs.last() else {
            // The very first segment could not be made: appends are refused
            // until it exists, so making it is this thread's job.
            if out_of_space && self.retry_at.is_none_or(|t| Instant::now() >= t) {
                let r = inner.commit_log.prepare_current();
                self.settle(inner, r);
            }
            return;
        };
        if inner.disk_full.load(Ordering::Acquire) && !out_of_space {
            return;
        }
        if last.wrote() < last.size() / 2 {
            // An append into the current segment failed for lack of space
            // (a write, not a new file): there is nothing to create, so let
            // appends try again after the backoff.
            if out_of_space {
                match self.retry_at {
                    // A fixed pause: one failed append a second costs nothing.
                    None => self.retry_at = Some(Instant::now() + PREALLOC_RETRY_MIN),
                    Some(t) if Instant::now() >= t => {
                        self.retry_at = None;
                        inner.out_of_space.store(false, Ordering::Release);
                        check_disk(inner);
                    }
                    Some(_) => {}
                }
            }
            return;
        }
        let next = last.base() + last.size();
        if segs.preallocated().is_some_and(|f| f.base() == next) {
            return;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Do not let a creation bound to fail take the last free blocks.
        let fits = available_bytes(segs.dir()).is_none_or(|a| a >= segs.file_size());
        let result = if fits {
            segs.preallocate_next()
        } else {
            Err(crate::error::StoreError::io(
                "preallocate CommitLog segment",
                segs.dir().join(segment_name(next)),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ))
        };
        self.settle(inner, result);
    }

    fn settle(&mut self, inner: &Inner, result: crate::error::Result<()>) {
        match result {
            Ok(()) => {
                // A whole segment fitted: space is back.
                inner.out_of_space.store(false, Ordering::Release);
                if let Some(since) = self.failed_since.take() {
                    tracing::info!(
                        after_ms = since.elapsed().as_millis() as u64,
                        "next CommitLog segment created"
                    );
                }
                self.retry_at = None;
                self.delay = Duration::ZERO;
            }
            Err(e) => {
                if self.failed_since.is_none() {
                    self.failed_since = Some(Instant::now());
                    tracing::warn!(error = %e,
                        "cannot create the next CommitLog segment ahead of time; retrying with backoff");
                }
                self.delay = (self.delay * 2).clamp(PREALLOC_RETRY_MIN, PREALLOC_RETRY_MAX);
                self.retry_at = Some(Instant::now() + self.delay);
                if e.is_out_of_space() {
                    // The next roll would fail: free space before it does.
                    inner.note_out_of_space();
                }
            }
        }
    }
}

/// The service thread: disk probe, retention, and flush-timeout sweeping.
pub(crate) fn run_service(inner: Arc<Inner>) {
    let tick = Duration::from_millis(inner.cfg.disk_check_interval.clamp(1, 100));
    let disk_every = Duration::from_millis(inner.cfg.disk_check_interval.max(1));
    let clean_every = Duration::from_millis(inner.cfg.clean_resource_interval.max(1));
    let mut last_disk = Instant::now();
    let mut last_clean = Instant::now();
    let mut prealloc = Prealloc::default();
    while !inner.stop_service.load(Ordering::Acquire) {
        std::thread::park_timeout(tick);
        inner.waiters.sweep_expired(Instant::now());
        // Create the next CommitLog segment once the current one is half full.
        prealloc.tick(&inner);
        let manual = inner.manual_delete.swap(false, Ordering::AcqRel);
        let soon = inner.clean_soon.swap(false, Ordering::AcqRel);
        if manual || soon || last_clean.elapsed() >= clean_every {
            clean_once(inner.as_ref(), manual);
            last_clean = Instant::now();
            last_disk = last_clean;
        } else if last_disk.elapsed() >= disk_every {
            let used = check_disk(inner.as_ref());
            last_disk = Instant::now();
            // Under pressure, do not wait for cleanResourceInterval.
            if must_clean_forcibly(&inner, used.unwrap_or(0.0)) {
                clean_once(inner.as_ref(), false);
                last_clean = Instant::now();
            }
        }
    }
}
