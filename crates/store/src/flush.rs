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

use crate::config::{FlushDiskType, MessageStoreConfig};
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
    /// While the SYNC_FLUSH flusher gathers a group commit: the number of
    /// waiters at which it wants to be woken (0 = not gathering).
    wake_at: AtomicU64,
}

impl FlushWaiters {
    /// Register a wait for `offset`; completes at once if already flushed.
    /// The flag is true when this waiter completes the group the flusher is
    /// gathering (the caller then wakes it).
    pub fn register(
        &self,
        offset: u64,
        deadline: Instant,
        flushed: &AtomicU64,
    ) -> (Arc<WaitSlot>, bool) {
        let slot = Arc::new(WaitSlot::default());
        let mut l = self.list.lock();
        if flushed.load(Ordering::Acquire) >= offset {
            drop(l);
            slot.complete(true);
            (slot, false)
        } else {
            l.push(Waiter {
                offset,
                deadline,
                slot: slot.clone(),
            });
            let n = l.len() as u64;
            self.len.store(n, Ordering::Release);
            let want = self.wake_at.load(Ordering::Acquire);
            (slot, want != 0 && n == want)
        }
    }

    /// Number of registered waiters.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire) as usize
    }

    /// Ask to be woken when `n` waiters are registered (0: stop asking).
    fn wake_at(&self, n: usize) {
        self.wake_at.store(n as u64, Ordering::Release);
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

/// Shortest gap between two ASYNC_FLUSH flushes while data keeps coming:
/// every msync write-protects the flushed pages (a TLB shoot-down per page
/// and a fault when the appender touches the current page again), so under
/// load one flush covers what ~10 ms of appends wrote instead of a few pages.
const ASYNC_MIN_GAP: Duration = Duration::from_millis(10);

/// Under ASYNC_FLUSH an appender wakes a sleeping flusher once this many
/// bytes are dirty (flushCommitLogLeastPages).
pub(crate) fn async_wake_bytes(cfg: &MessageStoreConfig) -> u64 {
    (cfg.flush_commit_log_least_pages * 4096).max(1)
}

/// The flusher's view of a failing disk: after a failed flush, writes are
/// refused and the flush is retried with growing pauses; the first flush
/// that succeeds lets writes in again. Acknowledged data is never at risk:
/// waiters of the failed range were answered with a failure, and the failed
/// bytes stay dirty (see `MappedFile::flush`) until a flush really writes them.
#[derive(Default)]
pub(crate) struct FlushRetry {
    failing: bool,
    backoff: Duration,
    next: Option<Instant>,
    failures: u64,
}

const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl FlushRetry {
    /// Time left before the next attempt, while failing.
    fn wait(&self, now: Instant) -> Option<Duration> {
        match self.next {
            Some(t) if self.failing && t > now => Some(t - now),
            _ => None,
        }
    }
}

fn flush_now(inner: &Inner, retry: &mut FlushRetry) -> usize {
    if retry.wait(Instant::now()).is_some() {
        return 0;
    }
    if let Some(hook) = &inner.before_flush {
        hook();
    }
    match inner.commit_log.flush() {
        Ok(flushed) => {
            if retry.failing {
                tracing::info!(
                    failed_attempts = retry.failures,
                    flushed,
                    "CommitLog flush works again: accepting writes"
                );
                *retry = FlushRetry::default();
                inner.clear_write_error();
            }
            inner.waiters.complete_upto(flushed)
        }
        Err(e) => {
            // First failure at once, then a count per window while retrying.
            static FLUSH_FAILED: apogee_throttle::LogThrottle =
                apogee_throttle::LogThrottle::new("CommitLog flush failed");
            apogee_throttle::throttled_error!(FLUSH_FAILED, (), error = %e,
                "CommitLog flush failed; refusing writes and retrying");
            retry.failing = true;
            retry.failures += 1;
            retry.backoff = (retry.backoff * 2).clamp(RETRY_MIN, RETRY_MAX);
            retry.next = Some(Instant::now() + retry.backoff);
            inner.set_write_error();
            inner.waiters.fail_all();
            0
        }
    }
}

/// The CommitLog flusher thread body.
pub(crate) fn run_flusher(inner: Arc<Inner>) {
    if inner.cfg.flush_disk_type == FlushDiskType::SyncFlush {
        run_sync_flusher(&inner)
    } else {
        run_async_flusher(&inner)
    }
}

/// ASYNC_FLUSH: flush every flushIntervalCommitLog, or once
/// flushCommitLogLeastPages are dirty, at most once per [`ASYNC_MIN_GAP`].
/// Appenders wake the thread only while it advertises idleness.
fn run_async_flusher(inner: &Inner) {
    let interval = Duration::from_millis(inner.cfg.flush_interval_commit_log.max(1));
    let least = async_wake_bytes(&inner.cfg);
    let mut last = Instant::now();
    let mut retry = FlushRetry::default();
    loop {
        let stopping = inner.stop_flusher.load(Ordering::Acquire);
        if let Some(wait) = retry.wait(Instant::now()).filter(|_| !stopping) {
            inner.waiters.fail_all();
            std::thread::park_timeout(wait.min(Duration::from_millis(100)));
            continue;
        }
        let dirty = inner.commit_log.dirty_bytes();
        let due = dirty > 0
            && (dirty >= least || last.elapsed() >= interval || !inner.waiters.is_empty());
        if due || stopping {
            flush_now(inner, &mut retry);
            last = Instant::now();
        }
        if stopping {
            break;
        }
        inner.waiters.sweep_expired(Instant::now());
        if due {
            // Busy: let the next flush gather more pages; appenders do not
            // wake us meanwhile.
            std::thread::park_timeout(ASYNC_MIN_GAP);
            continue;
        }
        inner.flusher_idle.set();
        if inner.commit_log.dirty_bytes() < least {
            let wait = interval
                .saturating_sub(last.elapsed())
                .max(Duration::from_millis(1));
            std::thread::park_timeout(wait);
        }
        inner.flusher_idle.clear();
    }
}

/// SYNC_FLUSH: flush as soon as a writer waits (group commit), and every
/// flushIntervalCommitLog for writes nobody waits for.
fn run_sync_flusher(inner: &Inner) {
    let interval = Duration::from_millis(inner.cfg.flush_interval_commit_log.max(1));
    let mut last = Instant::now();
    // Writers released by the previous flush (group-commit batch size).
    let mut last_batch = 0usize;
    let mut retry = FlushRetry::default();
    loop {
        let stopping = inner.stop_flusher.load(Ordering::Acquire);
        if let Some(wait) = retry.wait(Instant::now()).filter(|_| !stopping) {
            inner.waiters.fail_all();
            std::thread::park_timeout(wait.min(Duration::from_millis(100)));
            continue;
        }
        let dirty = inner.commit_log.dirty_bytes();
        let need = !inner.waiters.is_empty() || (dirty > 0 && last.elapsed() >= interval);
        if need && !stopping && last_batch >= 2 {
            // Several writers shared the last flush, so most of them are
            // appending their next message right now: give them a moment to
            // join this flush instead of syncing for the first arrival alone
            // (PostgreSQL's commit_delay/commit_siblings idea). A lone writer
            // never waits. The writer that brings the group back to the size
            // of the last one wakes us early; no one else does.
            let deadline = last + GROUP_COMMIT_DELAY;
            inner.waiters.wake_at(last_batch);
            loop {
                let now = Instant::now();
                if now >= deadline || inner.waiters.len() >= last_batch {
                    break;
                }
                std::thread::park_timeout(deadline - now);
            }
            inner.waiters.wake_at(0);
        }
        if need || stopping {
            last_batch = flush_now(inner, &mut retry);
            last = Instant::now();
        }
        if stopping {
            break;
        }
        inner.waiters.sweep_expired(Instant::now());
        if need {
            continue;
        }
        inner.flusher_idle.set();
        if inner.waiters.is_empty() {
            std::thread::park_timeout(interval.min(Duration::from_millis(10)));
        }
        inner.flusher_idle.clear();
    }
}
