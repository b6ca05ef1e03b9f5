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

/// Extra text appended to each live line (e.g. the last second's latency);
/// called once per line from the reporter thread.
pub type LiveExtra = Box<dyn FnMut() -> String + Send>;

impl Reporter {
    pub fn start(label: &'static str, total: Option<u64>, progress: Arc<Progress>) -> Reporter {
        Self::start_with(label, total, progress, None)
    }

    /// Like [`Reporter::start`], with `extra` appended to every live line.
    pub fn start_with(
        label: &'static str,
        total: Option<u64>,
        progress: Arc<Progress>,
        mut extra: Option<LiveExtra>,
    ) -> Reporter {
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
                let mut msg = format!("{tps:>10.0} msg/s {mbps:>8.1} MB/s failed {failed}");
                if let Some(extra) = extra.as_mut() {
                    msg.push(' ');
                    msg.push_str(&extra());
                }
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

/// Latency recorder for many concurrent tasks: one histogram pair per shard
/// (whole run + current interval), so a task only ever contends with the
/// once-a-second reader, never with other tasks.
pub struct ShardedLatency {
    shards: Vec<parking_lot::Mutex<(Histogram<u64>, Histogram<u64>)>>,
}

impl ShardedLatency {
    pub fn new(shards: usize) -> ShardedLatency {
        ShardedLatency {
            shards: (0..shards.max(1))
                .map(|_| parking_lot::Mutex::new((latency_histogram(), latency_histogram())))
                .collect(),
        }
    }

    /// Records one latency in microseconds (clamped into the histogram's range).
    pub fn record(&self, shard: usize, micros: u64) {
        let v = micros.clamp(1, 60_000_000);
        let mut g = self.shards[shard % self.shards.len()].lock();
        g.0.saturating_record(v);
        g.1.saturating_record(v);
    }

    /// Average and p99 (ms) since the previous call, or `None` if nothing was
    /// recorded; resets the interval.
    pub fn take_interval(&self) -> Option<(f64, f64)> {
        let mut merged = latency_histogram();
        for s in &self.shards {
            let mut g = s.lock();
            let _ = merged.add(&g.1);
            g.1.reset();
        }
        (!merged.is_empty()).then(|| (merged.mean() / 1000.0, ms_at(&merged, 0.99)))
    }

    /// The whole run's histogram.
    pub fn total(&self) -> Histogram<u64> {
        let mut merged = latency_histogram();
        for s in &self.shards {
            let _ = merged.add(&s.lock().0);
        }
        merged
    }

    /// A live-line callback printing the last interval's average and p99.
    pub fn live_extra(self: &Arc<Self>) -> LiveExtra {
        let me = Arc::clone(self);
        Box::new(move || match me.take_interval() {
            Some((avg, p99)) => format!("avg {avg:.2} ms p99 {p99:.2} ms"),
            None => "avg - ms p99 - ms".to_string(),
        })
    }
}

/// This process's resident set size in bytes (Linux `/proc/self/status`).
pub fn rss_bytes() -> Option<u64> {
    status_kb("VmRSS:").map(|kb| kb * 1024)
}

/// Resident anonymous memory in bytes: the process's own heap and stacks,
/// without the page-cache pages of mapped files that `VmRSS` also counts.
pub fn rss_anon_bytes() -> Option<u64> {
    status_kb("RssAnon:").map(|kb| kb * 1024)
}

fn status_kb(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs an async benchmark on its own runtime; a failure prints one clear
/// line (`apogee bench <what>: …`) and exits with status 1, like `apogee admin`.
pub fn run_async_bench<F>(what: &str, fut: F) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    run_async_bench_on(what, false, fut)
}

/// Which tokio runtime a benchmark client runs on (`--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// current-thread with --grpc (its client drives its connections from
    /// the callers' thread), multi-thread otherwise.
    Auto,
    CurrentThread,
    MultiThread,
}

impl RuntimeKind {
    /// Whether to run on one thread, given whether the client is gRPC.
    pub fn current_thread(self, grpc: bool) -> bool {
        match self {
            RuntimeKind::Auto => grpc,
            RuntimeKind::CurrentThread => true,
            RuntimeKind::MultiThread => false,
        }
    }
}

/// [`run_async_bench`] on a single-threaded runtime when `current_thread`.
pub fn run_async_bench_on<F>(what: &str, current_thread: bool, fut: F) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    use anyhow::Context;
    let mut builder = if current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = builder
        .enable_all()
        .thread_name("apogee-bench")
        .build()
        .context("cannot start the async runtime")?;
    if let Err(e) = rt.block_on(fut) {
        drop(rt);
        eprintln!("apogee bench {what}: {}", crate::admin::one_line(&e));
        std::process::exit(1);
    }
    Ok(())
}
