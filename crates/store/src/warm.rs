//! The CommitLog warmer: keeps the pages just ahead of the append position
//! faulted in, so appends copy into memory that is already mapped instead
//! of taking a page fault (and a kernel page zeroing) every 4 KiB.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::store::Inner;

/// How far ahead of the append position pages are kept ready.
const WINDOW: u64 = 64 << 20;
/// Pre-fault in steps of this size so the thread notices progress and stop.
const STEP: u64 = 4 << 20;

pub(crate) fn run_warmer(inner: Arc<Inner>) {
    // SYNC_FLUSH segments are written with pwrite; faulting their pages into
    // the mapping would only make every flush write-protect them again.
    if inner.cfg.flush_disk_type == crate::config::FlushDiskType::SyncFlush {
        return;
    }
    let segments = inner.commit_log.segments();
    while !inner.stop_service.load(Ordering::Acquire) {
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
