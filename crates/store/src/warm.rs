//! The CommitLog warmer: keeps the pages just ahead of the append position
//! faulted in, so appends copy into memory that is already mapped instead
//! of taking a page fault (and a kernel page zeroing) every 4 KiB.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::store::Inner;

/// How far ahead of the append position pages are kept ready.
const WINDOW: u64 = 64 << 20;
/// Pre-fault in steps of this size: the thread notices progress and stop,
/// and one madvise call stays short (about 1 ms on fresh guest memory).
const STEP: u64 = 512 << 10;

pub(crate) fn run_warmer(inner: Arc<Inner>) {
    // SYNC_FLUSH segments are written with pwrite; faulting their pages into
    // the mapping would only make every flush write-protect them again.
    if inner.cfg.flush_disk_type == crate::config::FlushDiskType::SyncFlush {
        return;
    }
    lower_priority();
    let segments = inner.commit_log.segments();
    while !inner.stop_service.load(Ordering::Acquire) {
        // A replica's pwrite appends fault nothing in (see
        // `MessageStore::use_pwrite_appends`).
        if segments.syscall_writes() {
            std::thread::park_timeout(Duration::from_millis(100));
            continue;
        }
        let pos = inner.commit_log.max_offset();
        let target = pos + WINDOW;
        let candidates = [
            segments.find(pos).or_else(|| segments.last()),
            segments.preallocated(),
        ];
        let mut worked = false;
        for seg in candidates.into_iter().flatten() {
            let (base, end) = (seg.base(), seg.base() + seg.size());
            if end <= pos || base >= target {
                continue;
            }
            let from = seg.warmed().max(pos.saturating_sub(base));
            let to = (target - base).min(seg.size()).min(from + STEP);
            if from >= to {
                continue;
            }
            if let Err(e) = seg.populate_for_write(from, to) {
                // Old kernels lack MADV_POPULATE_WRITE; appends then simply
                // fault pages in themselves.
                tracing::info!(error = %e, "CommitLog warm-up unavailable");
                return;
            }
            worked = true;
            break;
        }
        if !worked {
            std::thread::park_timeout(Duration::from_millis(2));
        }
    }
}

/// Warming is an optimisation, never worth delaying a request for: as a
/// SCHED_IDLE thread it yields its CPU the moment any normal thread wakes.
/// Without this, one long page-fault loop held a core for up to 25 ms on a
/// 2-core host while network threads waited to run (seen with `perf sched`).
/// If the warmer starves, appends fault their pages in themselves.
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "CommitLog warmer keeps normal priority"
        );
    }
}
