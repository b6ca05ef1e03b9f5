//! `apogee bench store`: the storage engine alone. Appends N messages with a
//! chosen flush mode and number of writer threads, then reads every message
//! back through the ConsumeQueues, and reports throughput and append latency.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use apogee_protocol::message::MessageToStore;
use apogee_store::{FlushDiskType, GetStatus, MessageStore, MessageStoreConfig};
use bytes::Bytes;
use clap::{Args, ValueEnum};

use super::report::{latency_histogram, ms_at, rss_anon_bytes, rss_bytes, Progress, Reporter};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FlushMode {
    Async,
    Sync,
}

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Messages to append in total.
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    count: u64,
    /// Body size in bytes.
    #[arg(short = 's', long, default_value_t = 1024)]
    size: usize,
    /// Flush policy (flushDiskType): async acknowledges from the page cache,
    /// sync after fdatasync (group commit).
    #[arg(long, value_enum, default_value_t = FlushMode::Async)]
    flush: FlushMode,
    /// Concurrent writers (async tasks on two threads, as in the broker).
    #[arg(short = 'w', long, default_value_t = 1)]
    writers: usize,
    /// Reader threads for the read-back phase.
    #[arg(long, default_value_t = 2)]
    readers: usize,
    /// Queues of the benchmark topic (messages are spread round-robin).
    #[arg(long, default_value_t = 8)]
    queues: i32,
    /// CommitLog segment size in bytes (mappedFileSizeCommitLog).
    #[arg(long, default_value_t = 1 << 30)]
    segment_size: u64,
    /// Store folder; by default a fresh folder in the current directory,
    /// removed afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the store folder afterwards.
    #[arg(long)]
    keep: bool,
    /// Skip the read-back phase.
    #[arg(long)]
    no_read: bool,
    /// Print the summary as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    if args.writers == 0 || args.readers == 0 || args.queues <= 0 {
        bail!("--writers, --readers and --queues must be at least 1");
    }
    let (dir, remove_after) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::current_dir()?.join(format!("apogee-bench-store-{}", std::process::id())),
            !args.keep,
        ),
    };
    let mut config = MessageStoreConfig::with_root(&dir);
    config.mapped_file_size_commit_log = args.segment_size;
    config.flush_disk_type = match args.flush {
        FlushMode::Async => FlushDiskType::AsyncFlush,
        FlushMode::Sync => FlushDiskType::SyncFlush,
    };
    let store = Arc::new(
        MessageStore::open(config)
            .with_context(|| format!("cannot open a store in {}", dir.display()))?,
    );
    let result = bench(&args, &store);
    let shutdown = store.shutdown();
    drop(store);
    if remove_after {
        let _ = std::fs::remove_dir_all(&dir);
    }
    shutdown.context("store shutdown")?;
    result
}

fn bench(args: &StoreArgs, store: &Arc<MessageStore>) -> anyhow::Result<()> {
    let topic = "BenchmarkStore";
    let body = Bytes::from(vec![b'x'; args.size]);
    let host: std::net::SocketAddr = "127.0.0.1:10911".parse()?;
    // One prebuilt message per queue: appends reuse them, so the benchmark
    // measures the store, not message construction.
    let templates: Arc<Vec<MessageToStore>> = Arc::new(
        (0..args.queues)
            .map(|q| MessageToStore {
                topic: topic.to_string(),
                queue_id: q,
                flag: 0,
                body: body.clone(),
                properties: "TAGS\u{1}TagA\u{2}".to_string(),
                sys_flag: 0,
                born_timestamp: 0,
                born_host: host,
                store_host: host,
                reconsume_times: 0,
                prepared_transaction_offset: 0,
                tags_code: 0,
            })
            .collect(),
    );

    // ---- append
    let progress = Arc::new(Progress::default());
    let reporter = Reporter::start("append", Some(args.count), Arc::clone(&progress));
    let started = Instant::now();
    let per_writer = args.count / args.writers as u64;
    let extra = args.count % args.writers as u64;
    // Writers are tasks on a two-thread async runtime, the way the broker
    // drives the store: a SYNC_FLUSH writer awaits its flush instead of
    // parking an OS thread, so 64 writers cost 64 futures, not 64 threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the writer runtime")?;
    let results = rt.block_on(async {
        let mut handles = Vec::new();
        for w in 0..args.writers {
            let n = per_writer + u64::from((w as u64) < extra);
            let store = Arc::clone(store);
            let templates = Arc::clone(&templates);
            let progress = Arc::clone(&progress);
            handles.push(tokio::spawn(async move {
                let mut hist = latency_histogram();
                let mut first_error = None;
                for i in 0..n {
                    let msg = &templates[((i as usize) + w) % templates.len()];
                    let t0 = Instant::now();
                    let put = match store.put_message_async(msg) {
                        Ok(pending) => pending.await,
                        Err(e) => {
                            progress.failed.fetch_add(1, Ordering::Relaxed);
                            first_error.get_or_insert(e.to_string());
                            break;
                        }
                    };
                    if put.status != apogee_store::PutStatus::Ok {
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(format!("put status {}", put.status.as_str()));
                        continue;
                    }
                    let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    progress
                        .bytes
                        .fetch_add(put.wrote_bytes as u64, Ordering::Relaxed);
                }
                (hist, first_error)
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await);
        }
        out
    });
    let mut hist = latency_histogram();
    let mut errors = Vec::new();
    for r in results {
        let (h, err) = r.map_err(|_| anyhow::anyhow!("a writer task panicked"))?;
        hist.add(&h).context("merging histograms")?;
        errors.extend(err);
    }
    let append_secs = started.elapsed().as_secs_f64();
    drop(reporter);
    let appended = progress.done.load(Ordering::Relaxed);
    let stored_bytes = progress.bytes.load(Ordering::Relaxed);
    // `dd … conv=fdatasync` counts the time to get its data onto the disk;
    // the figure to set beside it counts until the flusher has covered every
    // appended byte (ASYNC_FLUSH acknowledges earlier, from the page cache).
    if !wait_all_flushed(store, store.commit_log_max_offset() as u64) {
        bail!("the CommitLog was not flushed within 120 s of the last append");
    }
    let durable_secs = started.elapsed().as_secs_f64();
    if let Some(e) = errors.first() {
        eprintln!("append stopped early: {e}");
    }

    // ---- read back through the ConsumeQueues
    let mut read = (0u64, 0u64, 0f64);
    if !args.no_read && appended > 0 {
        let end = store.commit_log_max_offset() as u64;
        if !store.wait_dispatched(end, Duration::from_secs(120)) {
            bail!("the dispatcher did not catch up within 120 s");
        }
        read = read_back(args, store, topic)?;
        if read.0 != appended {
            bail!(
                "read back {} messages but {} were appended",
                read.0,
                appended
            );
        }
    }
    let rss = rss_bytes().unwrap_or(0);
    let rss_anon = rss_anon_bytes().unwrap_or(0);

    let append_tps = appended as f64 / append_secs;
    let append_mb = stored_bytes as f64 / append_secs / 1e6;
    let (read_tps, read_mb) = if read.2 > 0.0 {
        (read.0 as f64 / read.2, read.1 as f64 / read.2 / 1e6)
    } else {
        (0.0, 0.0)
    };
    println!(
        "store benchmark: {} x {} B, flush {:?}, {} writer(s), {} queue(s)",
        appended, args.size, args.flush, args.writers, args.queues
    );
    println!(
        "{:<10} {:>12} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "phase", "messages", "msgs/s", "MB/s", "p50 ms", "p99 ms", "p999 ms", "max ms"
    );
    println!(
        "{:<10} {:>12} {:>12.0} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        "append",
        appended,
        append_tps,
        append_mb,
        ms_at(&hist, 0.5),
        ms_at(&hist, 0.99),
        ms_at(&hist, 0.999),
        hist.max() as f64 / 1000.0
    );
    println!(
        "{:<10} {:>12} {:>12.0} {:>10.1}   (appended and flushed to disk)",
        "+flush",
        appended,
        appended as f64 / durable_secs,
        stored_bytes as f64 / durable_secs / 1e6
    );
    if read.2 > 0.0 {
        println!(
            "{:<10} {:>12} {:>12.0} {:>10.1}",
            "read-back", read.0, read_tps, read_mb
        );
    }
    println!(
        "resident memory after the run: {:.1} MiB, of which {:.1} MiB anonymous (the rest is \
         mapped store pages, i.e. page cache); CommitLog flushes: {}; segments: {}",
        rss as f64 / (1 << 20) as f64,
        rss_anon as f64 / (1 << 20) as f64,
        store.commit_log_flush_count(),
        store.commit_log_segment_count()
    );
    if args.json {
        let summary = serde_json::json!({
            "messages": appended,
            "size": args.size,
            "flush": format!("{:?}", args.flush).to_lowercase(),
            "writers": args.writers,
            "append_msgs_per_s": append_tps,
            "append_mb_per_s": append_mb,
            "flushed_msgs_per_s": appended as f64 / durable_secs,
            "flushed_mb_per_s": stored_bytes as f64 / durable_secs / 1e6,
            "p50_ms": ms_at(&hist, 0.5),
            "p99_ms": ms_at(&hist, 0.99),
            "p999_ms": ms_at(&hist, 0.999),
            "max_ms": hist.max() as f64 / 1000.0,
            "read_msgs_per_s": read_tps,
            "read_mb_per_s": read_mb,
            "rss_bytes": rss,
            "rss_anon_bytes": rss_anon,
            "failed": progress.failed.load(Ordering::Relaxed),
        });
        println!("{summary}");
    }
    if !errors.is_empty() {
        bail!("{} writer(s) failed: {}", errors.len(), errors[0]);
    }
    Ok(())
}

/// Reads every queue from offset 0 to its end; returns (messages, bytes, seconds).
fn read_back(
    args: &StoreArgs,
    store: &Arc<MessageStore>,
    topic: &'static str,
) -> anyhow::Result<(u64, u64, f64)> {
    let progress = Arc::new(Progress::default());
    let reporter = Reporter::start("read", None, Arc::clone(&progress));
    let started = Instant::now();
    let readers = args.readers.min(args.queues as usize);
    let mut handles = Vec::new();
    for r in 0..readers {
        let store = Arc::clone(store);
        let progress = Arc::clone(&progress);
        let queues: Vec<i32> = (0..args.queues)
            .filter(|q| *q as usize % readers == r)
            .collect();
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            for q in queues {
                let mut offset = 0i64;
                loop {
                    let got = store.get_messages("bench", topic, q, offset, 32, 1 << 20, None);
                    if got.status != GetStatus::Found {
                        break;
                    }
                    let mut bytes = 0u64;
                    for m in &got.messages {
                        // Touch each record: its TOTALSIZE must equal the view's length.
                        let total = m
                            .get(..4)
                            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                        if total != Some(m.len() as u32) {
                            return Err(format!("queue {q} offset {offset}: record size mismatch"));
                        }
                        bytes += m.len() as u64;
                    }
                    progress
                        .done
                        .fetch_add(got.messages.len() as u64, Ordering::Relaxed);
                    progress.bytes.fetch_add(bytes, Ordering::Relaxed);
                    offset = got.next_begin_offset;
                }
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a reader thread panicked"))?
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(reporter);
    Ok((
        progress.done.load(Ordering::Relaxed),
        progress.bytes.load(Ordering::Relaxed),
        secs,
    ))
}

/// Waits until the CommitLog is flushed up to `end`. One wait can expire
/// (syncFlushTimeout) while a large ASYNC tail is still being written, so
/// this waits again while the flushed offset moves, up to the overall
/// limit; a wait that fails without progress (a flush error) ends it.
fn wait_all_flushed(store: &MessageStore, end: u64) -> bool {
    let give_up = Instant::now() + Duration::from_secs(120);
    loop {
        let before = store.commit_log_flushed_offset();
        if before as u64 >= end || store.wait_flushed(end, Duration::from_secs(5)) {
            return true;
        }
        if store.commit_log_flushed_offset() == before || Instant::now() >= give_up {
            return false;
        }
    }
}
