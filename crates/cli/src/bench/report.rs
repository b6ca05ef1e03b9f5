//! Shared pieces of the benchmark tools: latency histograms, live progress
//! and the resident-memory reading.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A histogram of latencies in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

/// Milliseconds at a quantile of a microsecond histogram.
pub fn ms_at(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Counters a progress reporter reads once a second.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub bytes: AtomicU64,
    pub failed: AtomicU64,
}

/// Prints a live line every second (a progress bar on a terminal, plain
/// lines otherwise) until dropped.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    pub fn start(label: &'static str, total: Option<u64>, progress: Arc<Progress>) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let tty = std::io::stderr().is_terminal();
            let bar = if tty {
                let bar = match total {
                    Some(n) => indicatif::ProgressBar::new(n),
                    None => indicatif::ProgressBar::new_spinner(),
                };
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
                ) {
                    bar.set_style(style);
                }
                bar.set_prefix(label);
                Some(bar)
            } else {
                None
            };
            let start = Instant::now();
            let mut last = (0u64, 0u64, Instant::now());
            while !stop2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.2.elapsed() < Duration::from_secs(1) && !stop2.load(Ordering::Relaxed) {
                    continue;
                }
                let done = progress.done.load(Ordering::Relaxed);
                let bytes = progress.bytes.load(Ordering::Relaxed);
                let failed = progress.failed.load(Ordering::Relaxed);
                let secs = last.2.elapsed().as_secs_f64().max(1e-9);
                let tps = (done - last.0) as f64 / secs;
                let mbps = (bytes - last.1) as f64 / secs / 1e6;
                let msg = format!("{tps:>10.0} msg/s {mbps:>8.1} MB/s failed {failed}");
                match &bar {
                    Some(bar) => {
                        bar.set_position(done);
                        bar.set_message(msg);
                    }
                    None => eprintln!(
                        "[{:>5.0}s] {label}: {done} done, {msg}",
                        start.elapsed().as_secs_f64()
                    ),
                }
                last = (done, bytes, Instant::now());
            }
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
        });
        Reporter {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// This process's resident set size in bytes (Linux `/proc/self/status`).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
