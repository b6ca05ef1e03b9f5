//! Flushing: the flushed-offset watermark waiters (group commit) and the
//! CommitLog flusher thread. SYNC_FLUSH writers register the end of their
//! write and wait; one flusher fdatasyncs everything written so far and
//! releases every waiter it covers, so one sync serves many writers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::config::FlushDiskType;
use crate::store::Inner;

#[derive(Default)]
struct SlotState {
    done: Option<bool>,
    waker: Option<Waker>,
}

/// Completion slot of one flush wait.
#[derive(Default)]
pub struct WaitSlot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

impl WaitSlot {
    fn complete(&self, ok: bool) {
        let waker = {
            let mut st = self.state.lock();
            if st.done.is_some() {
                return;
            }
            st.done = Some(ok);
            st.waker.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Block until completed or `deadline`; true if the flush covered us.
    pub fn wait(&self, deadline: Instant) -> bool {
        let mut st = self.state.lock();
        loop {
            if let Some(ok) = st.done {
                return ok;
            }
            if self.cv.wait_until(&mut st, deadline).timed_out() {
                return st.done.unwrap_or(false);
            }
        }
    }

    fn poll_done(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut st = self.state.lock();
        match st.done {
            Some(ok) => Poll::Ready(ok),
            None => {
                if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

struct Waiter {
    offset: u64,
    deadline: Instant,
    slot: Arc<WaitSlot>,
}

/// Writers waiting for the flushed watermark to pass their offset.
#[derive(Default)]
pub struct FlushWaiters {
    list: Mutex<Vec<Waiter>>,
    len: AtomicU64,
}

impl FlushWaiters {
    /// Register a wait for `offset`; completes at once if already flushed.
    pub fn register(&self, offset: u64, deadline: Instant, flushed: &AtomicU64) -> Arc<WaitSlot> {
        let slot = Arc::new(WaitSlot::default());
        let mut l = self.list.lock();
        if flushed.load(Ordering::Acquire) >= offset {
            drop(l);
            slot.complete(true);
        } else {
            l.push(Waiter {
                offset,
                deadline,
                slot: slot.clone(),
            });
            self.len.store(l.len() as u64, Ordering::Release);
        }
        slot
    }

    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Release every waiter at or below `flushed`; returns how many.
    pub fn complete_upto(&self, flushed: u64) -> usize {
        let mut done = Vec::new();
        {
            let mut l = self.list.lock();
            let mut i = 0;
            while i < l.len() {
                if l[i].offset <= flushed {
                    done.push(l.swap_remove(i).slot);
                } else {
                    i += 1;
                }
            }
            self.len.store(l.len() as u64, Ordering::Release);
        }
        let n = done.len();
        for s in done {
            s.complete(true);
        }
        n
    }

    /// Fail every waiter whose deadline passed.
    pub fn sweep_expired(&self, now: Instant) {
        if self.is_empty() {
            return;
        }
        let mut expired = Vec::new();
        {
            let mut l = self.list.lock();
            let mut i = 0;
            while i < l.len() {
                if l[i].deadline <= now {
                    expired.push(l.swap_remove(i).slot);
                } else {
                    i += 1;
                }
            }
            self.len.store(l.len() as u64, Ordering::Release);
        }
        for s in expired {
            s.complete(false);
        }
    }

    /// Fail everyone (flush error or shutdown without a final flush).
    pub fn fail_all(&self) {
        let all: Vec<_> = {
            let mut l = self.list.lock();
            self.len.store(0, Ordering::Release);
            l.drain(..).map(|w| w.slot).collect()
        };
        for s in all {
            s.complete(false);
        }
    }
}

/// Future that resolves to true once the flush covers the awaited offset,
/// false on FLUSH_DISK_TIMEOUT.
pub struct FlushWait {
    slot: Option<Arc<WaitSlot>>,
}

impl FlushWait {
    pub(crate) fn new(slot: Option<Arc<WaitSlot>>) -> Self {
        FlushWait { slot }
    }
}

impl Future for FlushWait {
    type Output = bool;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        match &self.slot {
            None => Poll::Ready(true),
            Some(s) => s.poll_done(cx),
        }
    }
}

/// How long a SYNC_FLUSH flush may wait for concurrent writers to join it.
const GROUP_COMMIT_DELAY: Duration = Duration::from_micros(200);

/// The CommitLog flusher thread body.
pub(crate) fn run_flusher(inner: Arc<Inner>) {
    let cfg = &inner.cfg;
    let interval = Duration::from_millis(cfg.flush_interval_commit_log.max(1));
    let least = cfg.flush_commit_log_least_pages * 4096;
    let sync = cfg.flush_disk_type == FlushDiskType::SyncFlush;
    let mut last = Instant::now();
    // Writers released by the previous flush (group-commit batch size).
    let mut last_batch = 0usize;
    loop {
        let stopping = inner.stop_flusher.load(Ordering::Acquire);
        let dirty = inner.commit_log.dirty_bytes();
        let need = if sync {
            !inner.waiters.is_empty() || (dirty > 0 && last.elapsed() >= interval)
        } else {
            dirty > 0 && (dirty >= least || last.elapsed() >= interval)
        };
        if need && sync && !stopping && last_batch >= 2 {
            // Several writers shared the last flush, so most of them are
            // appending their next message right now: give them a moment to
            // join this flush instead of syncing for the first arrival alone
            // (PostgreSQL's commit_delay/commit_siblings idea). A lone writer
            // never waits.
            // Each arriving writer unparks us, so wait out the deadline.
            let deadline = last + GROUP_COMMIT_DELAY;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                std::thread::park_timeout(deadline - now);
            }
        }
        if need || stopping {
            if let Some(hook) = &inner.before_flush {
                hook();
            }
            match inner.commit_log.flush() {
                Ok(flushed) => last_batch = inner.waiters.complete_upto(flushed),
                Err(e) => {
                    tracing::error!(error = %e, "CommitLog flush failed; refusing further writes");
                    inner.set_write_error();
                    inner.waiters.fail_all();
                }
            }
            last = Instant::now();
        }
        if stopping {
            break;
        }
        inner.waiters.sweep_expired(Instant::now());
        if !need || dirty == 0 {
            let wait = if sync {
                interval.min(Duration::from_millis(10))
            } else {
                interval
                    .saturating_sub(last.elapsed())
                    .max(Duration::from_millis(1))
            };
            std::thread::park_timeout(wait);
        }
    }
}
