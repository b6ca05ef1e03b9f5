//! Retention and disk guard: deletes expired CommitLog segments (at
//! `deleteWhen`, under disk pressure, or on request), lets ConsumeQueues and
//! index files follow, and flips the "disk full" write barrier from the
//! disk-usage probe.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        (denom > 0.0).then(|| used * 100.0 / denom)
    }
}

/// Probe the disk and update the write barrier. Returns the usage.
pub(crate) fn check_disk(inner: &Inner) -> Option<f64> {
    let used = inner
        .disk_probe
        .used_percent(&inner.cfg.store_path_root_dir)?;
    inner
        .disk_used_bits
        .store(used.to_bits(), Ordering::Release);
    let limit = f64::from(inner.cfg.disk_space_warning_level_ratio);
    let was_full = inner.disk_full.load(Ordering::Acquire);
    if used >= limit && !was_full {
        inner.disk_full.store(true, Ordering::Release);
        tracing::error!(
            used_percent = used,
            limit_percent = limit,
            "disk full: refusing writes"
        );
    } else if used < limit && was_full {
        inner.disk_full.store(false, Ordering::Release);
        tracing::info!(
            used_percent = used,
            "disk usage back under the limit: accepting writes"
        );
    }
    Some(used)
}

/// One retention round. `manual` deletes expired files regardless of the hour.
/// Returns the number of CommitLog segments deleted.
pub(crate) fn clean_once(inner: &Inner, manual: bool) -> usize {
    let cfg = &inner.cfg;
    let now = now_ms();
    let used = check_disk(inner).unwrap_or(0.0);
    let is_time = cfg.delete_hours().contains(&local_hour(now));
    let pressure = used >= f64::from(cfg.disk_max_used_space_ratio);
    let forcibly = used >= f64::from(cfg.disk_space_clean_forcibly_ratio);
    if !(manual || is_time || pressure) {
        return 0;
    }
    let reserved_ms = cfg.file_reserved_time.saturating_mul(3_600_000);
    let dispatched = inner.dispatched.load(Ordering::Acquire);
    let cl = &inner.commit_log;
    let files = cl.segments().snapshot();
    let mut deleted = 0usize;
    // Never the last (current) segment.
    for f in files.iter().take(files.len().saturating_sub(1)) {
        if deleted >= cfg.delete_files_batch_max {
            break;
        }
        // Never a segment whose records are not all dispatched yet.
        if f.base() + f.size() > dispatched || !f.is_full() {
            break;
        }
        let expired = now.max(0) as u64 >= f.last_modified_ms().saturating_add(reserved_ms);
        if !expired && !forcibly {
            break;
        }
        if !f.destroy(now.max(0) as u64, cfg.destroy_mapped_file_interval_forcibly) {
            tracing::info!(path = %f.path().display(), readers = f.reader_count(),
                "segment still being read; deleting later");
            break;
        }
        deleted += 1;
    }
    if deleted > 0 {
        cl.segments().remove_first(deleted);
        let min = cl.min_offset();
        tracing::info!(
            deleted,
            new_min_offset = min,
            used_percent = used,
            "deleted CommitLog segments"
        );
        for cq in inner.all_cqs() {
            cq.delete_expired(min);
        }
        if let Some(index) = &inner.index {
            index.delete_expired(min);
        }
        check_disk(inner);
    }
    deleted
}

/// The service thread: disk probe, retention, and flush-timeout sweeping.
pub(crate) fn run_service(inner: Arc<Inner>) {
    let tick = Duration::from_millis(inner.cfg.disk_check_interval.clamp(1, 100));
    let disk_every = Duration::from_millis(inner.cfg.disk_check_interval.max(1));
    let clean_every = Duration::from_millis(inner.cfg.clean_resource_interval.max(1));
    let mut last_disk = Instant::now();
    let mut last_clean = Instant::now();
    while !inner.stop_service.load(Ordering::Acquire) {
        std::thread::park_timeout(tick);
        inner.waiters.sweep_expired(Instant::now());
        // Create the next CommitLog segment once the current one is half full.
        if let Some(last) = inner.commit_log.segments().last() {
            if last.wrote() >= last.size() / 2 && !inner.disk_full.load(Ordering::Acquire) {
                if let Err(e) = inner.commit_log.segments().preallocate_next() {
                    // Retried every tick (≤ 100 ms) until it works.
                    static PREALLOC_FAILED: apogee_throttle::LogThrottle =
                        apogee_throttle::LogThrottle::new(
                            "cannot preallocate the next CommitLog segment",
                        );
                    apogee_throttle::throttled_warn!(PREALLOC_FAILED, (), error = %e,
                        "cannot preallocate the next CommitLog segment");
                }
            }
        }
        let manual = inner.manual_delete.swap(false, Ordering::AcqRel);
        if manual || last_clean.elapsed() >= clean_every {
            clean_once(inner.as_ref(), manual);
            last_clean = Instant::now();
            last_disk = last_clean;
        } else if last_disk.elapsed() >= disk_every {
            check_disk(inner.as_ref());
            last_disk = Instant::now();
        }
    }
}
