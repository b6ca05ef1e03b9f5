use std::io;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::*;

/// Serialises the tests: `tick_all` / `flush_all` reach every registered
/// throttle, so tests running in parallel would steal each other's summaries.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Runs `f` with a subscriber that records every line; returns the lines.
fn capture(f: impl FnOnce()) -> Vec<String> {
    let cap = Capture::default();
    let writer = cap.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(Level::TRACE)
        .finish();
    tracing::subscriber::with_default(sub, f);
    cap.lines()
}

fn leak(t: LogThrottle) -> &'static LogThrottle {
    Box::leak(Box::new(t))
}

fn throttle(name: &'static str) -> (&'static LogThrottle, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    let t = leak(LogThrottle::new(name).with_clock(clock.clone()));
    t.set_window(Duration::from_secs(10));
    (t, clock)
}

fn field(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!("{name}="))?;
    let rest = &line[at + name.len() + 1..];
    Some(rest.split_whitespace().next().unwrap_or("").to_string())
}

#[test]
fn first_logs_then_one_summary_after_the_window() {
    let _g = SERIAL.lock();
    let (t, clock) = throttle("disk full");
    let lines = capture(|| {
        for i in 0..1000 {
            throttled_warn!(*t, (), attempt = i, "send refused");
        }
        clock.advance(Duration::from_secs(10));
        throttled_warn!(*t, (), attempt = 1000, "send refused");
        // A new window started with that line: these are counted again.
        for i in 0..5 {
            throttled_warn!(*t, (), attempt = 1001 + i, "send refused");
        }
    });
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("WARN") && lines[0].contains("send refused"));
    assert!(lines[0].contains("attempt=0"));
    assert_eq!(field(&lines[0], "repeated"), None);
    assert_eq!(field(&lines[1], "repeated").as_deref(), Some("999"));
    assert_eq!(field(&lines[1], "in_last_s").as_deref(), Some("10.0"));
    assert!(lines[1].contains("attempt=1000"));

    let tail = capture(|| t.flush());
    assert_eq!(tail.len(), 1, "{tail:#?}");
    assert!(tail[0].contains("disk full: repeated 5 times in the last 0 s"));
    assert_eq!(field(&tail[0], "repeated").as_deref(), Some("5"));
}

#[test]
fn nothing_suppressed_means_no_summary() {
    let _g = SERIAL.lock();
    let (t, clock) = throttle("rare");
    let lines = capture(|| {
        for _ in 0..3 {
            throttled_warn!(*t, (), "rare event");
            clock.advance(Duration::from_secs(11));
            t.tick();
        }
        t.flush();
    });
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines.iter().all(|l| field(l, "repeated").is_none()));
}

#[test]
fn keys_are_throttled_independently() {
    let _g = SERIAL.lock();
    let (t, clock) = throttle("bad frame");
    let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
    let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
    let lines = capture(|| {
        for _ in 0..100 {
            throttled_warn!(*t, a, peer = %a, "bad frame");
        }
        for _ in 0..7 {
            throttled_warn!(*t, b, peer = %b, "bad frame");
        }
        clock.advance(Duration::from_secs(10));
        throttled_warn!(*t, a, peer = %a, "bad frame");
        throttled_warn!(*t, b, peer = %b, "bad frame");
    });
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(field(&lines[2], "repeated").as_deref(), Some("99"));
    assert!(lines[2].contains("peer=10.0.0.1:1000"));
    assert_eq!(field(&lines[3], "repeated").as_deref(), Some("6"));
    assert!(lines[3].contains("peer=10.0.0.2:1000"));
}

#[test]
fn keys_beyond_the_cap_share_one_bucket() {
    let _g = SERIAL.lock();
    let clock = Arc::new(ManualClock::new());
    let t = leak(
        LogThrottle::new("per peer")
            .with_clock(clock.clone())
            .with_max_keys(2),
    );
    let lines = capture(|| {
        for peer in 0..50u16 {
            throttled_warn!(*t, peer, peer, "per peer");
        }
        assert_eq!(t.keyed.get().map(|m| m.read().len()), Some(2));
        t.flush();
    });
    // Keys 0 and 1 have their own streams; 2 is the first of "other", the
    // remaining 47 are counted there.
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[2].contains("peer=2"));
    assert_eq!(field(&lines[3], "key").as_deref(), Some("other"));
    assert_eq!(field(&lines[3], "repeated").as_deref(), Some("47"));
}

#[test]
fn tick_waits_for_the_window_and_forgets_idle_keys() {
    let _g = SERIAL.lock();
    let (t, clock) = throttle("flush failed");
    let lines = capture(|| {
        for _ in 0..10 {
            throttled_error!(*t, "commitlog", "flush failed");
        }
        clock.advance(Duration::from_secs(5));
        t.tick(); // window not over: nothing
        clock.advance(Duration::from_secs(5));
        t.tick(); // 9 pending: one ERROR summary, window restarts
        t.tick(); // nothing new
        assert_eq!(t.keyed.get().map(|m| m.read().len()), Some(1));
        clock.advance(Duration::from_secs(10));
        t.tick(); // idle for a window: forgotten
        assert_eq!(t.keyed.get().map(|m| m.read().len()), Some(0));
        throttled_error!(*t, "commitlog", "flush failed");
    });
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[1].contains("ERROR"));
    assert!(lines[1].contains("flush failed: repeated 9 times in the last 10 s"));
    assert_eq!(field(&lines[1], "key").as_deref(), Some("commitlog"));
    // Logged as a first occurrence again, without a count.
    assert_eq!(field(&lines[2], "repeated"), None);
}

#[test]
fn tick_all_reaches_every_used_throttle() {
    let _g = SERIAL.lock();
    let (t1, c1) = throttle("one");
    let (t2, c2) = throttle("two");
    let lines = capture(|| {
        for _ in 0..3 {
            throttled_warn!(*t1, (), "one");
            throttled_warn!(*t2, (), "two");
        }
        c1.advance(Duration::from_secs(10));
        c2.advance(Duration::from_secs(1));
        tick_all(); // only t1's window is over
        flush_all(); // t2 regardless
    });
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[2].contains("one: repeated 2 times"));
    assert!(lines[3].contains("two: repeated 2 times"));
}

#[test]
fn concurrent_callers_lose_no_count() {
    let _g = SERIAL.lock();
    let (t, clock) = throttle("busy");
    let lines = capture(|| {
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        std::thread::scope(|s| {
            for _ in 0..4 {
                let d = dispatch.clone();
                s.spawn(move || {
                    tracing::dispatcher::with_default(&d, || {
                        for _ in 0..10_000 {
                            throttled_warn!(*t, (), "busy");
                        }
                    })
                });
            }
        });
        clock.advance(Duration::from_secs(10));
        t.tick();
    });
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(field(&lines[1], "repeated").as_deref(), Some("39999"));
}

#[test]
fn default_window_applies_to_throttles_without_their_own() {
    let _g = SERIAL.lock();
    let clock = Arc::new(ManualClock::new());
    let t = leak(LogThrottle::new("default window").with_clock(clock.clone()));
    assert_eq!(default_window(), DEFAULT_WINDOW);
    set_default_window(Duration::from_millis(100));
    let lines = capture(|| {
        throttled_warn!(*t, (), "x");
        throttled_warn!(*t, (), "x");
        clock.advance(Duration::from_millis(100));
        throttled_warn!(*t, (), "x");
    });
    set_default_window(DEFAULT_WINDOW);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(field(&lines[1], "repeated").as_deref(), Some("1"));
    assert_eq!(field(&lines[1], "in_last_s").as_deref(), Some("0.1"));
}
