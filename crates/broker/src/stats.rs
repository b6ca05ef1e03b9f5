//! Broker statistics for the data path: message put/get counters (total,
//! per topic, per group and topic), TPS over sliding windows (10 s, 1 min,
//! 10 min, as Java's runtime info reports them), and the cheap overload
//! signal the send path checks (puts in flight, slow appends).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

/// Default bound on puts in flight (appending or waiting for a flush) before
/// sends are answered SYSTEM_BUSY.
pub const DEFAULT_MAX_INFLIGHT_PUTS: usize = 10_000;
/// An append slower than this marks the store busy (Java's
/// `osPageCacheBusyTimeOutMills` default is 1000 ms).
pub const DEFAULT_BUSY_APPEND_MILLIS: u64 = 1000;

/// Messages per second over the last 10 s, 1 min and 10 min.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tps {
    pub tps_10s: f64,
    pub tps_1m: f64,
    pub tps_10m: f64,
}

impl Tps {
    /// Java runtime-info format: `"<10s> <1m> <10m>"` with two decimals.
    pub fn to_java_string(&self) -> String {
        format!("{:.2} {:.2} {:.2}", self.tps_10s, self.tps_1m, self.tps_10m)
    }
}

/// Counts in `N` buckets of `step` seconds each, a ring: bucket `i` holds
/// second `i*step ..` and sits in slot `i % N`. Inline (no heap): a broker
/// keeps one per topic and per group@topic, for 100,000s of them.
struct Window<const N: usize> {
    step: u64,
    /// (bucket index, count); `u64::MAX` marks an unused slot.
    slots: [(u64, u64); N],
}

impl<const N: usize> Window<N> {
    fn new(step: u64) -> Self {
        Window {
            step: step.max(1),
            slots: [(u64::MAX, 0); N],
        }
    }

    fn add(&mut self, sec: u64, n: u64) {
        let bucket = sec / self.step;
        let slot = &mut self.slots[(bucket % N as u64) as usize];
        if slot.0 != bucket {
            *slot = (bucket, 0);
        }
        slot.1 += n;
    }

    /// Average per second over the complete buckets of the last `secs`
    /// seconds before the bucket holding `now_sec` (the current, partial
    /// bucket is left out so the rate does not dip).
    fn rate(&self, now_sec: u64, secs: u64) -> f64 {
        let cur = now_sec / self.step;
        let n = (secs / self.step).clamp(1, N as u64 - 1).min(cur);
        if n == 0 {
            return 0.0;
        }
        let lo = cur - n;
        let sum: u64 = self
            .slots
            .iter()
            .filter(|(b, _)| *b != u64::MAX && *b >= lo && *b < cur)
            .map(|(_, c)| *c)
            .sum();
        sum as f64 / (n * self.step) as f64
    }
}

/// A counter pair with TPS windows: 1 s buckets for the 10 s rate, 6 s for
/// the minute, 60 s for the 10 minutes (about 0.6 KiB in all). A message
/// only bumps the counters (one cache line); the windows take the counts
/// of a second when the next second's first message (or a reader) comes,
/// so that 100,000 topics sent to round-robin do not each touch ten lines
/// and a lock per message.
struct Meter {
    msgs: AtomicU64,
    bytes: AtomicU64,
    /// The second the counts not yet in the windows belong to.
    pending_sec: AtomicU64,
    windows: Mutex<Windows>,
}

struct Windows {
    w1: Window<11>,
    w6: Window<11>,
    w60: Window<11>,
    /// `msgs` already put into the windows.
    folded: u64,
}

impl Meter {
    fn new() -> Self {
        Meter {
            msgs: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            pending_sec: AtomicU64::new(0),
            windows: Mutex::new(Windows {
                w1: Window::new(1),
                w6: Window::new(6),
                w60: Window::new(60),
                folded: 0,
            }),
        }
    }

    fn add(&self, sec: u64, msgs: u64, bytes: u64) {
        if self.pending_sec.load(Ordering::Relaxed) != sec {
            self.fold(sec);
        }
        self.msgs.fetch_add(msgs, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Puts the counts since the last fold into the second they belong to;
    /// later counts belong to `sec`.
    fn fold(&self, sec: u64) {
        let mut w = self.windows.lock();
        self.fold_locked(&mut w, sec);
    }

    fn fold_locked(&self, w: &mut Windows, sec: u64) {
        let total = self.msgs.load(Ordering::Relaxed);
        let delta = total.saturating_sub(w.folded);
        if delta > 0 {
            let at = self.pending_sec.load(Ordering::Relaxed);
            w.w1.add(at, delta);
            w.w6.add(at, delta);
            w.w60.add(at, delta);
            w.folded = total;
        }
        self.pending_sec.store(sec, Ordering::Relaxed);
    }

    fn tps(&self, now_sec: u64) -> Tps {
        let mut w = self.windows.lock();
        self.fold_locked(&mut w, now_sec);
        Tps {
            tps_10s: w.w1.rate(now_sec, 10),
            tps_1m: w.w6.rate(now_sec, 60),
            tps_10m: w.w60.rate(now_sec, 600),
        }
    }
}

/// A topic's put meter, shared with [`BrokerStats`]'s table.
#[derive(Clone)]
pub struct TopicMeter(Arc<Meter>);

impl std::fmt::Debug for TopicMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicMeter")
            .field("msgs", &self.0.msgs.load(Ordering::Relaxed))
            .finish()
    }
}

/// Keyed by topic or group on every put and get: foldhash, not SipHash.
type FastMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Totals of one topic or one group@topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub msgs: u64,
    pub bytes: u64,
}

/// Data-path statistics shared by the processors (`ctx.stats`).
pub struct BrokerStats {
    started: Instant,
    put: Meter,
    get: Meter,
    topic_put: RwLock<FastMap<Arc<Meter>>>,
    group_get: RwLock<FastMap<FastMap<Meter>>>,
    inflight_puts: AtomicUsize,
    max_inflight_puts: AtomicUsize,
    busy_append_millis: AtomicU64,
    /// Appends running right now, and when one last started from idle or
    /// finished (ms since `started`).
    appending: AtomicUsize,
    append_progress_ms: AtomicU64,
    /// Latest put latency (append + flush wait) in microseconds.
    last_put_micros: AtomicU64,
    busy_rejections: AtomicU64,
    /// Total messages put at the start of today (epoch day of `day`), for
    /// Java's `msgPutTotalTodayMorning`-style numbers.
    day: AtomicI64,
    put_today_morning: AtomicU64,
    get_today_morning: AtomicU64,
    put_yesterday_morning: AtomicU64,
    get_yesterday_morning: AtomicU64,
}

impl Default for BrokerStats {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerStats {
    pub fn new() -> Self {
        BrokerStats {
            started: Instant::now(),
            put: Meter::new(),
            get: Meter::new(),
            topic_put: RwLock::new(FastMap::default()),
            group_get: RwLock::new(FastMap::default()),
            inflight_puts: AtomicUsize::new(0),
            max_inflight_puts: AtomicUsize::new(DEFAULT_MAX_INFLIGHT_PUTS),
            busy_append_millis: AtomicU64::new(DEFAULT_BUSY_APPEND_MILLIS),
            appending: AtomicUsize::new(0),
            append_progress_ms: AtomicU64::new(0),
            last_put_micros: AtomicU64::new(0),
            busy_rejections: AtomicU64::new(0),
            day: AtomicI64::new(epoch_day()),
            put_today_morning: AtomicU64::new(0),
            get_today_morning: AtomicU64::new(0),
            put_yesterday_morning: AtomicU64::new(0),
            get_yesterday_morning: AtomicU64::new(0),
        }
    }

    fn now_sec(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Records `msgs` messages of `bytes` stored into `topic`.
    pub fn put(&self, topic: &str, msgs: u64, bytes: u64) {
        let m = self.topic_meter(topic);
        self.put_to(&m, msgs, bytes);
    }

    /// The put meter of `topic`, created on first use. The send path keeps
    /// it beside the topic's config (`TopicEntry`), so that a message to
    /// one of 100,000 topics does not look its topic up twice.
    pub fn topic_meter(&self, topic: &str) -> TopicMeter {
        if let Some(m) = self.topic_put.read().get(topic) {
            return TopicMeter(m.clone());
        }
        TopicMeter(
            self.topic_put
                .write()
                .entry(topic.to_owned())
                .or_insert_with(|| Arc::new(Meter::new()))
                .clone(),
        )
    }

    /// [`BrokerStats::put`] with the topic's meter already at hand.
    pub fn put_to(&self, meter: &TopicMeter, msgs: u64, bytes: u64) {
        self.roll_day();
        let sec = self.now_sec();
        self.put.add(sec, msgs, bytes);
        meter.0.add(sec, msgs, bytes);
    }

    /// Records `msgs` messages of `bytes` delivered to `group` from `topic`.
    pub fn get(&self, group: &str, topic: &str, msgs: u64, bytes: u64) {
        self.roll_day();
        let sec = self.now_sec();
        self.get.add(sec, msgs, bytes);
        if let Some(m) = self.group_get.read().get(group).and_then(|t| t.get(topic)) {
            m.add(sec, msgs, bytes);
            return;
        }
        self.group_get
            .write()
            .entry(group.to_owned())
            .or_default()
            .entry(topic.to_owned())
            .or_insert_with(Meter::new)
            .add(sec, msgs, bytes);
    }

    /// Put TPS over 10 s / 1 min / 10 min.
    pub fn put_tps(&self) -> Tps {
        self.put.tps(self.now_sec())
    }

    /// Get (delivered) TPS over 10 s / 1 min / 10 min.
    pub fn get_tps(&self) -> Tps {
        self.get.tps(self.now_sec())
    }

    /// Put TPS of one topic.
    pub fn topic_put_tps(&self, topic: &str) -> Tps {
        let now = self.now_sec();
        self.topic_put
            .read()
            .get(topic)
            .map(|m| m.tps(now))
            .unwrap_or_default()
    }

    /// Get TPS of one group on one topic.
    pub fn group_get_tps(&self, group: &str, topic: &str) -> Tps {
        let now = self.now_sec();
        self.group_get
            .read()
            .get(group)
            .and_then(|t| t.get(topic))
            .map(|m| m.tps(now))
            .unwrap_or_default()
    }

    /// Messages and bytes stored since start.
    pub fn total_put(&self) -> Counts {
        Counts {
            msgs: self.put.msgs.load(Ordering::Relaxed),
            bytes: self.put.bytes.load(Ordering::Relaxed),
        }
    }

    /// Messages and bytes delivered since start.
    pub fn total_get(&self) -> Counts {
        Counts {
            msgs: self.get.msgs.load(Ordering::Relaxed),
            bytes: self.get.bytes.load(Ordering::Relaxed),
        }
    }

    /// Totals of one topic since start.
    pub fn topic_put(&self, topic: &str) -> Counts {
        self.topic_put
            .read()
            .get(topic)
            .map(|m| Counts {
                msgs: m.msgs.load(Ordering::Relaxed),
                bytes: m.bytes.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }

    /// Totals of one group on one topic since start.
    pub fn group_get(&self, group: &str, topic: &str) -> Counts {
        self.group_get
            .read()
            .get(group)
            .and_then(|t| t.get(topic))
            .map(|m| Counts {
                msgs: m.msgs.load(Ordering::Relaxed),
                bytes: m.bytes.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }

    /// (put, get) message totals at the start of today and of yesterday,
    /// as counted by this process: `(put_today_morning, get_today_morning,
    /// put_yesterday_morning, get_yesterday_morning)`.
    pub fn day_marks(&self) -> (u64, u64, u64, u64) {
        self.roll_day();
        (
            self.put_today_morning.load(Ordering::Relaxed),
            self.get_today_morning.load(Ordering::Relaxed),
            self.put_yesterday_morning.load(Ordering::Relaxed),
            self.get_yesterday_morning.load(Ordering::Relaxed),
        )
    }

    fn roll_day(&self) {
        let today = epoch_day();
        let day = self.day.load(Ordering::Relaxed);
        if day != today
            && self
                .day
                .compare_exchange(day, today, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let p = self.put.msgs.load(Ordering::Relaxed);
            let g = self.get.msgs.load(Ordering::Relaxed);
            let (pt, gt) = (
                self.put_today_morning.swap(p, Ordering::Relaxed),
                self.get_today_morning.swap(g, Ordering::Relaxed),
            );
            self.put_yesterday_morning.store(pt, Ordering::Relaxed);
            self.get_yesterday_morning.store(gt, Ordering::Relaxed);
        }
    }

    // ---- overload signal -------------------------------------------------

    /// Sets the bound on puts in flight (0 refuses every send: tests use it).
    pub fn set_max_inflight_puts(&self, n: usize) {
        self.max_inflight_puts.store(n, Ordering::Relaxed);
    }

    /// Sets how long appends may make no progress before the store counts
    /// as busy.
    pub fn set_busy_append_millis(&self, ms: u64) {
        self.busy_append_millis.store(ms, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether appends are stalled: some are running and none finished for
    /// longer than the busy limit (Java's "OS page cache busy" signal, which
    /// looks at how long the CommitLog lock has been held).
    pub fn is_store_busy(&self) -> bool {
        self.appending.load(Ordering::Acquire) > 0
            && self
                .now_ms()
                .saturating_sub(self.append_progress_ms.load(Ordering::Acquire))
                > self.busy_append_millis.load(Ordering::Relaxed)
    }

    /// Takes a put slot, or `None` when the broker is overloaded: too many
    /// puts in flight (appending or waiting for their flush), or appends are
    /// stalled. The slot is released on drop.
    pub fn try_begin_put(&self) -> Option<PutPermit<'_>> {
        if self.is_store_busy() {
            self.busy_rejections.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let max = self.max_inflight_puts.load(Ordering::Relaxed);
        let prev = self.inflight_puts.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.inflight_puts.fetch_sub(1, Ordering::AcqRel);
            self.busy_rejections.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(PutPermit { stats: self })
    }

    /// Marks the start of a synchronous append; the guard marks its end.
    pub fn begin_append(&self) -> AppendGuard<'_> {
        if self.appending.fetch_add(1, Ordering::AcqRel) == 0 {
            self.append_progress_ms
                .store(self.now_ms(), Ordering::Release);
        }
        AppendGuard { stats: self }
    }

    /// Records how long a whole put took (append + flush wait).
    pub fn record_put_latency(&self, d: Duration) {
        self.last_put_micros.store(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// Latest put latency.
    pub fn last_put_latency(&self) -> Duration {
        Duration::from_micros(self.last_put_micros.load(Ordering::Relaxed))
    }

    /// Puts currently in flight.
    pub fn inflight_puts(&self) -> usize {
        self.inflight_puts.load(Ordering::Relaxed)
    }

    /// Sends refused as SYSTEM_BUSY since start.
    pub fn busy_rejections(&self) -> u64 {
        self.busy_rejections.load(Ordering::Relaxed)
    }
}

/// An append in progress (see [`BrokerStats::begin_append`]).
pub struct AppendGuard<'a> {
    stats: &'a BrokerStats,
}

impl Drop for AppendGuard<'_> {
    fn drop(&mut self) {
        let s = self.stats;
        s.append_progress_ms.store(s.now_ms(), Ordering::Release);
        s.appending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A put slot from [`BrokerStats::try_begin_put`]; frees it on drop.
pub struct PutPermit<'a> {
    stats: &'a BrokerStats,
}

impl Drop for PutPermit<'_> {
    fn drop(&mut self) {
        self.stats.inflight_puts.fetch_sub(1, Ordering::AcqRel);
    }
}

fn epoch_day() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_accumulate_per_topic_and_group() {
        let s = BrokerStats::new();
        s.put("T", 3, 300);
        s.put("T", 1, 100);
        s.put("U", 2, 20);
        s.get("G", "T", 2, 200);
        assert_eq!(
            s.total_put(),
            Counts {
                msgs: 6,
                bytes: 420
            }
        );
        assert_eq!(
            s.topic_put("T"),
            Counts {
                msgs: 4,
                bytes: 400
            }
        );
        assert_eq!(s.topic_put("none"), Counts::default());
        assert_eq!(
            s.group_get("G", "T"),
            Counts {
                msgs: 2,
                bytes: 200
            }
        );
        assert_eq!(s.total_get().msgs, 2);
    }

    #[test]
    fn meter_folds_each_second_when_the_next_one_starts() {
        let m = Meter::new();
        for sec in 0..20 {
            m.add(sec, 10, 100);
        }
        // Seconds 10..19: 10 per second; the counts of 19 were folded by the read.
        assert!((m.tps(20).tps_10s - 10.0).abs() < 1e-9);
        // A topic sent to once a minute: each message lands in its own second.
        let sparse = Meter::new();
        sparse.add(5, 6, 60);
        sparse.add(65, 6, 60);
        let t = sparse.tps(70);
        assert!((t.tps_1m - 0.1).abs() < 1e-9, "{t:?}");
        assert_eq!(sparse.msgs.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn window_rates_skip_the_current_second() {
        let mut w = Window::<11>::new(1);
        for sec in 0..20 {
            w.add(sec, 10);
        }
        // Seconds 10..19 complete before second 20: 10 per second.
        assert!((w.rate(20, 10) - 10.0).abs() < 1e-9);
        // A burst in the current second does not count yet.
        w.add(20, 1000);
        assert!((w.rate(20, 10) - 10.0).abs() < 1e-9);
        // Old slots are overwritten once the ring wraps.
        w.add(20 + 11, 5);
        assert!(w.rate(20 + 12, 10) < 1.0);
        // Coarser buckets: 60 per 6 s is 10 per second over the minute.
        let mut m = Window::<11>::new(6);
        for sec in 0..66 {
            m.add(sec, 10);
        }
        assert!((m.rate(66, 60) - 10.0).abs() < 1e-9);
        // Only what has elapsed counts at the start.
        assert!((m.rate(13, 60) - 10.0).abs() < 1e-9);
        assert_eq!(
            Tps {
                tps_10s: 1.0,
                tps_1m: 0.5,
                tps_10m: 0.25
            }
            .to_java_string(),
            "1.00 0.50 0.25"
        );
    }

    #[test]
    fn permits_bound_inflight_puts() {
        let s = BrokerStats::new();
        s.set_max_inflight_puts(2);
        let a = s.try_begin_put();
        let b = s.try_begin_put();
        assert!(a.is_some() && b.is_some());
        assert!(s.try_begin_put().is_none());
        assert_eq!(s.inflight_puts(), 2);
        drop(a);
        assert!(s.try_begin_put().is_some());
        assert_eq!(s.busy_rejections(), 1);
        drop(b);
        assert_eq!(s.inflight_puts(), 0);
    }

    #[test]
    fn stalled_append_marks_the_store_busy() {
        let s = BrokerStats::new();
        s.set_busy_append_millis(20);
        let g = s.begin_append();
        assert!(!s.is_store_busy());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.is_store_busy());
        assert!(s.try_begin_put().is_none());
        drop(g);
        assert!(!s.is_store_busy());
        assert!(s.try_begin_put().is_some());
    }
}
