//! apogee-throttle owns log-flood control: a "log once, then summarise"
//! primitive for errors that can repeat per request or per loop iteration
//! (refused sends, busy answers, a full disk, failing flushes, bad frames from
//! one peer). A [`LogThrottle`] is a `static` per log site; an optional small
//! [`Key`] (peer address, error kind, code) splits it further. The first
//! occurrence is logged at once; later ones within the window (10 s by
//! default) only bump an atomic counter; the first occurrence after the
//! window, or a [`tick_all`] / [`flush_all`], logs one line carrying the
//! number suppressed, and a new window starts. Keys per site are capped
//! ([`MAX_KEYS`]); beyond the cap they share one "other" bucket, so memory
//! stays bounded whatever peers do.
//!
//! ```
//! use apogee_throttle::{throttled_warn, LogThrottle};
//!
//! static SEND_REFUSED: LogThrottle = LogThrottle::new("send refused");
//!
//! fn refuse(peer: std::net::SocketAddr, reason: &str) {
//!     // One line now, then at most one summary line per peer per window.
//!     throttled_warn!(SEND_REFUSED, peer, peer = %peer, reason, "send refused");
//! }
//! # refuse("127.0.0.1:1".parse().unwrap(), "disk full");
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tracing::Level;

#[doc(hidden)]
pub use tracing as __tracing;

/// Window used by throttles that do not set their own.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// Distinct keys one throttle tracks; further keys share one bucket.
pub const MAX_KEYS: usize = 1024;

/// `window_start` of a slot that never logged.
const NEVER: u64 = u64::MAX;

static DEFAULT_WINDOW_NS: AtomicU64 = AtomicU64::new(DEFAULT_WINDOW.as_nanos() as u64);

/// Every throttle that has been used, for [`tick_all`] / [`flush_all`].
static REGISTRY: Mutex<Vec<&'static LogThrottle>> = Mutex::new(Vec::new());

/// Sets the window of every throttle that has no window of its own
/// (the process-wide default, [`DEFAULT_WINDOW`] until changed).
pub fn set_default_window(window: Duration) {
    DEFAULT_WINDOW_NS.store(duration_ns(window), Ordering::Relaxed);
}

/// The process-wide default window.
pub fn default_window() -> Duration {
    Duration::from_nanos(DEFAULT_WINDOW_NS.load(Ordering::Relaxed))
}

/// Emits the summaries of every used throttle whose window has passed and
/// forgets idle keys. Call it periodically (every second or so) so that the
/// count of a flood that stopped is still reported.
pub fn tick_all() {
    for t in registered() {
        t.tick();
    }
}

/// Emits every pending summary now, whatever the windows (shutdown, tests).
pub fn flush_all() {
    for t in registered() {
        t.flush();
    }
}

fn registered() -> Vec<&'static LogThrottle> {
    // Copied out so that no lock is held while logging.
    REGISTRY.lock().clone()
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Seconds with one decimal, for summary fields.
#[doc(hidden)]
pub fn secs(d: Duration) -> f64 {
    (d.as_millis() / 100) as f64 / 10.0
}

/// A source of monotonic time, injectable so tests need not wait a window.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn now(&self) -> Duration;
}

/// The real clock: time since the first use in this process.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        static BASE: OnceLock<Instant> = OnceLock::new();
        BASE.get_or_init(Instant::now).elapsed()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    ns: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn advance(&self, by: Duration) {
        self.ns.fetch_add(duration_ns(by), Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.ns.load(Ordering::Relaxed))
    }
}

/// What splits one log site into independently throttled streams. Small and
/// `Copy` so that building one never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// The whole site is one stream.
    None,
    Str(&'static str),
    Num(i64),
    Ip(IpAddr),
    Addr(SocketAddr),
    /// The shared bucket of keys beyond [`MAX_KEYS`] (only in summaries).
    Other,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::None => f.write_str("-"),
            Key::Str(s) => f.write_str(s),
            Key::Num(n) => write!(f, "{n}"),
            Key::Ip(ip) => write!(f, "{ip}"),
            Key::Addr(a) => write!(f, "{a}"),
            Key::Other => f.write_str("other"),
        }
    }
}

impl From<()> for Key {
    fn from(_: ()) -> Self {
        Key::None
    }
}

impl From<&'static str> for Key {
    fn from(s: &'static str) -> Self {
        Key::Str(s)
    }
}

impl From<SocketAddr> for Key {
    fn from(a: SocketAddr) -> Self {
        Key::Addr(a)
    }
}

impl From<&SocketAddr> for Key {
    fn from(a: &SocketAddr) -> Self {
        Key::Addr(*a)
    }
}

impl From<IpAddr> for Key {
    fn from(ip: IpAddr) -> Self {
        Key::Ip(ip)
    }
}

macro_rules! key_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Key {
            fn from(n: $t) -> Self {
                Key::Num(i64::from(n))
            }
        }
    )*};
}
key_from_int!(i8, i16, i32, i64, u8, u16, u32);

/// What a log site should do with one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First occurrence (of this window): log it as it is.
    Log,
    /// First occurrence after a window in which `suppressed` others were
    /// dropped: log it with the count.
    Summarize { suppressed: u64, elapsed: Duration },
    /// Within the window: only counted.
    Suppress,
}

/// One throttled stream: when its window started and how many occurrences
/// were dropped since.
struct Slot {
    window_start: AtomicU64,
    suppressed: AtomicU64,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            window_start: AtomicU64::new(NEVER),
            suppressed: AtomicU64::new(0),
        }
    }

    fn check(&self, now: u64, window: u64) -> Verdict {
        let start = self.window_start.load(Ordering::Acquire);
        if start != NEVER && now.saturating_sub(start) < window {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return Verdict::Suppress;
        }
        // One caller restarts the window; the others count as suppressed.
        if self
            .window_start
            .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return Verdict::Suppress;
        }
        // A racing caller may add to the count between the restart and this
        // swap; it is then reported in this summary rather than the next, never lost.
        // The first window has nothing to report: any count already there was
        // added by a caller that lost this race, so it belongs to the new window.
        if start == NEVER {
            return Verdict::Log;
        }
        match self.suppressed.swap(0, Ordering::AcqRel) {
            0 => Verdict::Log,
            n => Verdict::Summarize {
                suppressed: n,
                elapsed: Duration::from_nanos(now.saturating_sub(start)),
            },
        }
    }

    /// Takes the pending count if the window passed (or `force`), restarting
    /// the window. `None` when nothing is pending; `Some(0)` marks an idle
    /// slot whose window passed (the caller may forget it).
    fn take(&self, now: u64, window: u64, force: bool) -> Option<(u64, Duration)> {
        let start = self.window_start.load(Ordering::Acquire);
        if start == NEVER || (!force && now.saturating_sub(start) < window) {
            return None;
        }
        let n = self.suppressed.swap(0, Ordering::AcqRel);
        if n > 0 {
            // Keep counting in a fresh window rather than logging the next one in full.
            let _ =
                self.window_start
                    .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire);
            return Some((n, Duration::from_nanos(now.saturating_sub(start))));
        }
        (now.saturating_sub(start) >= window).then_some((0, Duration::ZERO))
    }
}

/// One throttled log site. Meant to be a `static`; see the crate docs.
pub struct LogThrottle {
    /// Names the site in summaries that a tick emits.
    name: &'static str,
    /// 0: use the process-wide default window.
    window_ns: AtomicU64,
    /// Level of the site's last line, for the summaries a tick emits.
    level: AtomicU8,
    clock: Option<Arc<dyn Clock>>,
    unkeyed: Slot,
    keyed: OnceLock<RwLock<HashMap<Key, Slot>>>,
    other: Slot,
    max_keys: usize,
    registered: AtomicBool,
}

impl fmt::Debug for LogThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogThrottle")
            .field("name", &self.name)
            .field("window", &self.window())
            .finish_non_exhaustive()
    }
}

impl LogThrottle {
    /// A throttle with the default window and the real clock.
    pub const fn new(name: &'static str) -> Self {
        LogThrottle {
            name,
            window_ns: AtomicU64::new(0),
            level: AtomicU8::new(level_code(Level::WARN)),
            clock: None,
            unkeyed: Slot::new(),
            keyed: OnceLock::new(),
            other: Slot::new(),
            max_keys: MAX_KEYS,
            registered: AtomicBool::new(false),
        }
    }

    /// Uses `clock` instead of the real one.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Caps the number of keys tracked separately (at least 1).
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// Gives this throttle its own window (`Duration::ZERO`: the default).
    pub fn set_window(&self, window: Duration) {
        self.window_ns.store(duration_ns(window), Ordering::Relaxed);
    }

    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns())
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn window_ns(&self) -> u64 {
        match self.window_ns.load(Ordering::Relaxed) {
            0 => DEFAULT_WINDOW_NS.load(Ordering::Relaxed),
            w => w,
        }
    }

    fn now_ns(&self) -> u64 {
        let now = match &self.clock {
            Some(c) => c.now(),
            None => MonotonicClock.now(),
        };
        duration_ns(now)
    }

    /// Decides what to do with one occurrence under `key`. The macros call
    /// this; the suppressed path is a few atomics (and a read lock for a key).
    pub fn check(&'static self, key: impl Into<Key>) -> Verdict {
        self.check_at(key.into(), Level::WARN)
    }

    /// [`LogThrottle::check`] that also records the site's level.
    #[doc(hidden)]
    pub fn check_level(&'static self, key: impl Into<Key>, level: Level) -> Verdict {
        self.check_at(key.into(), level)
    }

    fn check_at(&'static self, key: Key, level: Level) -> Verdict {
        if !self.registered.load(Ordering::Acquire) && !self.registered.swap(true, Ordering::AcqRel)
        {
            REGISTRY.lock().push(self);
        }
        let now = self.now_ns();
        let window = self.window_ns();
        let verdict = match key {
            Key::None => self.unkeyed.check(now, window),
            key => self.check_keyed(key, now, window),
        };
        if verdict != Verdict::Suppress {
            self.level.store(level_code(level), Ordering::Relaxed);
        }
        verdict
    }

    fn check_keyed(&self, key: Key, now: u64, window: u64) -> Verdict {
        let map = self.keyed.get_or_init(|| RwLock::new(HashMap::new()));
        {
            let slots = map.read();
            if let Some(slot) = slots.get(&key) {
                return slot.check(now, window);
            }
            if slots.len() >= self.max_keys {
                return self.other.check(now, window);
            }
        }
        let mut slots = map.write();
        if slots.len() >= self.max_keys && !slots.contains_key(&key) {
            drop(slots);
            return self.other.check(now, window);
        }
        slots
            .entry(key)
            .or_insert_with(Slot::new)
            .check(now, window)
    }

    /// Emits the summaries of streams whose window passed and forgets idle keys.
    pub fn tick(&self) {
        self.summarise(false);
    }

    /// Emits every pending summary now, whatever the window.
    pub fn flush(&self) {
        self.summarise(true);
    }

    fn summarise(&self, force: bool) {
        let now = self.now_ns();
        let window = self.window_ns();
        let mut out: Vec<(Key, u64, Duration)> = Vec::new();
        let mut push = |key: Key, taken: Option<(u64, Duration)>| {
            if let Some((n, elapsed)) = taken {
                if n > 0 {
                    out.push((key, n, elapsed));
                }
            }
        };
        push(Key::None, self.unkeyed.take(now, window, force));
        push(Key::Other, self.other.take(now, window, force));
        if let Some(map) = self.keyed.get() {
            let mut slots = map.write();
            slots.retain(|key, slot| match slot.take(now, window, force) {
                // Idle after its window: forgetting it frees a place under the cap.
                Some((0, _)) => false,
                taken => {
                    push(*key, taken);
                    true
                }
            });
        }
        let level = level_from_code(self.level.load(Ordering::Relaxed));
        for (key, n, elapsed) in out {
            emit_summary(level, self.name, key, n, elapsed);
        }
    }
}

fn emit_summary(level: Level, name: &str, key: Key, n: u64, elapsed: Duration) {
    let s = secs(elapsed);
    macro_rules! at {
        ($lvl:expr) => {
            tracing::event!(
                $lvl,
                site = name,
                key = %key,
                repeated = n,
                in_last_s = s,
                "{name}: repeated {n} times in the last {s} s"
            )
        };
    }
    match level {
        Level::ERROR => at!(Level::ERROR),
        Level::WARN => at!(Level::WARN),
        Level::INFO => at!(Level::INFO),
        Level::DEBUG => at!(Level::DEBUG),
        _ => at!(Level::TRACE),
    }
}

const fn level_code(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        _ => 5,
    }
}

fn level_from_code(code: u8) -> Level {
    match code {
        1 => Level::ERROR,
        2 => Level::WARN,
        3 => Level::INFO,
        4 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// Logs through `tracing` at `$lvl`, throttled by the static `$throttle`
/// under `$key` (anything `Into<Key>`; `()` for none). The rest is what
/// `tracing::event!` takes after the level. A line that ends a window also
/// carries `repeated` (occurrences dropped since the last line) and
/// `in_last_s`.
#[macro_export]
macro_rules! throttled {
    ($lvl:expr, $throttle:expr, $key:expr, $($arg:tt)+) => {
        match $crate::LogThrottle::check_level(&$throttle, $key, $lvl) {
            $crate::Verdict::Suppress => {}
            $crate::Verdict::Log => $crate::__tracing::event!($lvl, $($arg)+),
            $crate::Verdict::Summarize { suppressed, elapsed } => $crate::__tracing::event!(
                $lvl,
                repeated = suppressed,
                in_last_s = $crate::secs(elapsed),
                $($arg)+
            ),
        }
    };
}

/// [`throttled!`] at ERROR.
#[macro_export]
macro_rules! throttled_error {
    ($throttle:expr, $key:expr, $($arg:tt)+) => {
        $crate::throttled!($crate::__tracing::Level::ERROR, $throttle, $key, $($arg)+)
    };
}

/// [`throttled!`] at WARN.
#[macro_export]
macro_rules! throttled_warn {
    ($throttle:expr, $key:expr, $($arg:tt)+) => {
        $crate::throttled!($crate::__tracing::Level::WARN, $throttle, $key, $($arg)+)
    };
}

/// [`throttled!`] at INFO.
#[macro_export]
macro_rules! throttled_info {
    ($throttle:expr, $key:expr, $($arg:tt)+) => {
        $crate::throttled!($crate::__tracing::Level::INFO, $throttle, $key, $($arg)+)
    };
}

#[cfg(test)]
mod tests;
