//! `apogee bench produce`: many concurrent senders push fixed-size messages
//! to a topic through the apogee client (sync, async or oneway, optionally
//! batched), with a live line every second and a latency summary at the end.
//! It speaks the remoting protocol, so it runs against any
//! RocketMQ-compatible broker; with `--grpc ADDR` it sends through a
//! RocketMQ 5 gRPC endpoint instead (SendMessage, as the official clients).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use apogee_client::{Message, Producer};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::stream::{FuturesUnordered, StreamExt};

use super::grpc::{Deadline, GrpcClient};
use super::report::{ms_at, Progress, Reporter, ShardedLatency};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendMode {
    /// Wait for each send's response before the next one.
    Sync,
    /// Keep `--window` sends in flight per sender.
    Async,
    /// Fire and forget (latency is the time to hand the request over).
    Oneway,
}

impl SendMode {
    fn name(self) -> &'static str {
        match self {
            SendMode::Sync => "sync",
            SendMode::Async => "async",
            SendMode::Oneway => "oneway",
        }
    }
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// NameServer address(es), `host:port` separated by `;`.
    #[arg(
        short = 'n',
        long = "namesrv-addr",
        env = "NAMESRV_ADDR",
        default_value = "127.0.0.1:9876"
    )]
    namesrv: String,
    /// Topic to send to.
    #[arg(short = 't', long, default_value = "BenchmarkTest")]
    topic: String,
    /// Message body size in bytes.
    #[arg(short = 's', long, default_value_t = 128)]
    size: usize,
    /// Concurrent senders.
    #[arg(short = 'w', long = "senders", default_value_t = 64)]
    senders: usize,
    /// How each message is sent.
    #[arg(long, value_enum, default_value_t = SendMode::Sync)]
    mode: SendMode,
    /// Stop after this many seconds (default: run until Ctrl-C, or --count).
    #[arg(long, value_name = "SECONDS", conflicts_with = "count")]
    duration: Option<u64>,
    /// Stop after this many messages were attempted.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Messages per request (SEND_BATCH_MESSAGE when above 1).
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: usize,
    /// Tag set on every message.
    #[arg(long)]
    tag: Option<String>,
    /// Give every message a unique business key (indexed by the broker).
    #[arg(long)]
    keys: bool,
    /// Producer group.
    #[arg(short = 'g', long, default_value = "benchmark_producer")]
    group: String,
    /// Sends in flight per sender in async mode.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Send timeout in milliseconds (all retries included).
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Print the summary as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Send through this RocketMQ 5 gRPC endpoint (`host:port`, e.g. the
    /// 8081 of `apogee standalone` or `apogee proxy`) instead of remoting.
    #[arg(long, value_name = "ADDR")]
    grpc: Option<String>,
    /// With --grpc: HTTP/2 connections to the endpoint, used round-robin.
    #[arg(long, value_name = "N", default_value_t = 1)]
    grpc_connections: usize,
    /// The client's tokio runtime: comparing protocols on one machine, run
    /// both on the same kind to compare like with like.
    #[arg(long, value_enum, default_value_t = super::report::RuntimeKind::Auto)]
    runtime: super::report::RuntimeKind,
}

/// Where the messages go.
enum Target {
    Remoting(Arc<Producer>),
    /// The client and the deadline (headers) of every SendMessage.
    Grpc(Arc<(GrpcClient, Deadline)>),
}

impl Clone for Target {
    fn clone(&self) -> Self {
        match self {
            Target::Remoting(p) => Target::Remoting(Arc::clone(p)),
            Target::Grpc(c) => Target::Grpc(Arc::clone(c)),
        }
    }
}

/// State every sender shares.
struct Shared {
    stop: AtomicBool,
    issued: AtomicU64,
    limit: Option<u64>,
    progress: Arc<Progress>,
    latency: Arc<ShardedLatency>,
    first_error: parking_lot::Mutex<Option<String>>,
    template: Message,
    key_prefix: String,
    keys: bool,
    size: u64,
    /// The body, topic and tag again, for gRPC messages.
    body: Bytes,
    topic: String,
    tag: Option<String>,
}

impl Shared {
    /// Claims up to `want` message sequence numbers; `None` when the run is over.
    fn claim(&self, want: u64) -> Option<(u64, u64)> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let start = self.issued.fetch_add(want, Ordering::Relaxed);
        match self.limit {
            Some(limit) if start >= limit => None,
            Some(limit) => Some((start, want.min(limit - start))),
            None => Some((start, want)),
        }
    }

    /// A message for sequence number `seq`. The body `Bytes` is shared, not
    /// copied; the topic and properties are owned by `Message`, so cloning
    /// the template is the one allocation left per message.
    fn message(&self, seq: u64) -> Message {
        let mut m = self.template.clone();
        if self.keys {
            m.set_keys([format!("{}{seq}", self.key_prefix)]);
        }
        m
    }

    fn payload(&self, target: &Target, start: u64, n: u64) -> Payload {
        if let Target::Grpc(_) = target {
            return Payload::Grpc(
                (start..start + n)
                    .map(|seq| {
                        super::grpc::message(
                            &self.topic,
                            &self.body,
                            format!("{}{seq:016X}", self.key_prefix),
                            self.tag.as_deref(),
                            self.keys.then(|| format!("{}{seq}", self.key_prefix)),
                        )
                    })
                    .collect(),
            );
        }
        if n == 1 {
            Payload::One(self.message(start))
        } else {
            Payload::Batch((start..start + n).map(|s| self.message(s)).collect())
        }
    }

    fn finish(&self, shard: usize, n: u64, elapsed: Duration, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.latency.record(shard, elapsed.as_micros() as u64);
                self.progress.done.fetch_add(n, Ordering::Relaxed);
                self.progress
                    .bytes
                    .fetch_add(n * self.size, Ordering::Relaxed);
            }
            Err(e) => {
                self.progress.failed.fetch_add(n, Ordering::Relaxed);
                let mut first = self.first_error.lock();
                if first.is_none() {
                    tracing::debug!(error = %e, "send failed");
                    *first = Some(e);
                }
            }
        }
    }
}

enum Payload {
    One(Message),
    Batch(Vec<Message>),
    Grpc(Vec<apogee_proxy::pb::Message>),
}

/// Only SEND_OK counts as sent: a SYNC_MASTER's FLUSH_SLAVE_TIMEOUT or
/// SLAVE_NOT_AVAILABLE (or FLUSH_DISK_TIMEOUT) is a failure here.
fn acknowledged<R: AsRef<[apogee_client::SendResult]>>(
    r: apogee_client::Result<R>,
) -> Result<(), String> {
    let r = r.map_err(|e| e.to_string())?;
    match r
        .as_ref()
        .iter()
        .find(|r| r.status != apogee_client::SendStatus::SendOk)
    {
        Some(r) => Err(format!("not acknowledged: {:?}", r.status)),
        None => Ok(()),
    }
}

/// One timed request; a single concrete future type so that sync and async
/// senders share it.
fn timed_send(
    target: &Target,
    payload: Payload,
    oneway: bool,
) -> impl Future<Output = (u64, Duration, Result<(), String>)> + Send + 'static {
    let target = target.clone();
    async move {
        let start = Instant::now();
        let (n, result) = match (target, payload) {
            (Target::Grpc(c), Payload::Grpc(ms)) => {
                let n = ms.len() as u64;
                let (client, deadline) = &*c;
                (
                    n,
                    client.send(ms, deadline).await.map_err(|e| e.to_string()),
                )
            }
            (Target::Remoting(producer), Payload::One(m)) if oneway => {
                (1, producer.send_oneway(m).await.map_err(|e| e.to_string()))
            }
            (Target::Remoting(producer), Payload::One(m)) => {
                (1, acknowledged(producer.send(m).await.map(|r| [r])))
            }
            (Target::Remoting(producer), Payload::Batch(ms)) => {
                let n = ms.len() as u64;
                (n, acknowledged(producer.send_batch(ms).await))
            }
            (_, p) => {
                let n = match &p {
                    Payload::One(_) => 1,
                    Payload::Batch(ms) => ms.len() as u64,
                    Payload::Grpc(ms) => ms.len() as u64,
                };
                (n, Err("payload does not match the target".to_owned()))
            }
        };
        (n, start.elapsed(), result)
    }
}

async fn sender(
    id: usize,
    producer: Target,
    shared: Arc<Shared>,
    mode: SendMode,
    batch: u64,
    window: usize,
) {
    match mode {
        SendMode::Sync | SendMode::Oneway => {
            while let Some((start, n)) = shared.claim(batch) {
                let payload = shared.payload(&producer, start, n);
                let (n, took, r) = timed_send(&producer, payload, mode == SendMode::Oneway).await;
                shared.finish(id, n, took, r);
            }
        }
        SendMode::Async => {
            // `window` sequential lanes: that many sends in flight per
            // sender. The lanes live for the whole run, so the
            // FuturesUnordered allocates once per lane (not per send) and
            // polls only the lanes that were woken.
            let mut lanes: FuturesUnordered<_> = (0..window)
                .map(|_| {
                    let (producer, shared) = (&producer, &shared);
                    async move {
                        while let Some((start, n)) = shared.claim(batch) {
                            let payload = shared.payload(producer, start, n);
                            let (n, took, r) = timed_send(producer, payload, false).await;
                            shared.finish(id, n, took, r);
                        }
                    }
                })
                .collect();
            while lanes.next().await.is_some() {}
        }
    }
}

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    if args.senders == 0 || args.batch == 0 || args.window == 0 {
        bail!("--senders, --batch and --window must be at least 1");
    }
    if args.size == 0 {
        bail!("--size must be at least 1");
    }
    if args.batch > 1 && args.mode == SendMode::Oneway {
        bail!("--batch cannot be combined with --mode oneway (batches are sent and acknowledged)");
    }
    if args.count == Some(0) {
        bail!("--count must be at least 1");
    }
    if args.grpc.is_some() && args.mode == SendMode::Oneway {
        bail!("--grpc has no oneway send (SendMessage is always answered)");
    }
    if args.grpc_connections == 0 {
        bail!("--grpc-connections must be at least 1");
    }
    let current_thread = args.runtime.current_thread(args.grpc.is_some());
    super::report::run_async_bench_on("produce", current_thread, run_async(args))
}

async fn run_async(args: ProduceArgs) -> anyhow::Result<()> {
    let target = match &args.grpc {
        Some(addr) => {
            let client = grpc_client(addr, &args).await?;
            let deadline = client.deadline(Duration::from_millis(args.timeout_ms));
            Target::Grpc(Arc::new((client, deadline)))
        }
        None => Target::Remoting(remoting_producer(&args).await?),
    };
    run_with(args, target).await
}

/// A gRPC client, after checking that the topic has a route.
async fn grpc_client(addr: &str, args: &ProduceArgs) -> anyhow::Result<GrpcClient> {
    let client = GrpcClient::connect(addr, args.grpc_connections).await?;
    let queues = client
        .route(&args.topic)
        .await
        .with_context(|| format!("cannot get a route for topic {} from {addr}", args.topic))?;
    if queues == 0 {
        bail!("topic {} has no queue", args.topic);
    }
    Ok(client)
}

async fn remoting_producer(args: &ProduceArgs) -> anyhow::Result<Arc<Producer>> {
    let producer = Producer::builder()
        .namesrv_addr(args.namesrv.clone())
        .group(args.group.clone())
        .send_timeout(Duration::from_millis(args.timeout_ms))
        // Send bodies as they are: the benchmark measures the broker, not zlib.
        .compress_msg_body_over_howmuch(usize::MAX)
        .build()
        .context("cannot create the producer")?;
    producer
        .start()
        .await
        .context("cannot start the producer")?;
    let producer = Arc::new(producer);
    // Fail fast, with one clear line, when the NameServer or the topic is
    // not there, instead of counting failures.
    let queues = producer
        .fetch_publish_queues(&args.topic)
        .await
        .with_context(|| {
            format!(
                "cannot get a route for topic {} from NameServer {}",
                args.topic, args.namesrv
            )
        })?;
    if queues.is_empty() {
        bail!("topic {} has no writable queue", args.topic);
    }
    Ok(producer)
}

async fn run_with(args: ProduceArgs, producer: Target) -> anyhow::Result<()> {
    let body = body(args.size);
    let mut template = Message::new(args.topic.clone(), body.clone());
    if let Some(tag) = &args.tag {
        template.set_tags(tag.clone());
    }
    let progress = Arc::new(Progress::default());
    let latency = Arc::new(ShardedLatency::new(args.senders));
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        limit: args.count,
        progress: Arc::clone(&progress),
        latency: Arc::clone(&latency),
        first_error: parking_lot::Mutex::new(None),
        template,
        key_prefix: format!("bench-{}-{}-", std::process::id(), now_millis()),
        keys: args.keys,
        size: args.size as u64,
        body,
        topic: args.topic.clone(),
        tag: args.tag.clone(),
    });

    let stopper = {
        let shared = Arc::clone(&shared);
        let duration = args.duration.map(Duration::from_secs);
        tokio::spawn(async move {
            match duration {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            shared.stop.store(true, Ordering::Relaxed);
        })
    };

    let reporter = Reporter::start_with(
        "produce",
        args.count,
        Arc::clone(&progress),
        Some(latency.live_extra()),
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.senders)
        .map(|id| {
            tokio::spawn(sender(
                id,
                producer.clone(),
                Arc::clone(&shared),
                args.mode,
                args.batch as u64,
                args.window,
            ))
        })
        .collect();
    for t in tasks {
        if let Err(e) = t.await {
            tracing::warn!(error = %e, "a sender task ended abnormally");
        }
    }
    let elapsed = started.elapsed();
    stopper.abort();
    drop(reporter);
    if let Target::Remoting(p) = &producer {
        p.shutdown().await;
    }

    let sent = progress.done.load(Ordering::Relaxed);
    let failed = progress.failed.load(Ordering::Relaxed);
    let first_error = shared.first_error.lock().clone();
    let h = latency.total();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let tps = sent as f64 / secs;
    let mb_per_s = (sent * args.size as u64) as f64 / secs / 1e6;
    if args.json {
        let summary = serde_json::json!({
            "bench": "produce",
            "protocol": if args.grpc.is_some() { "grpc" } else { "remoting" },
            "mode": args.mode.name(),
            "topic": args.topic,
            "size": args.size,
            "senders": args.senders,
            "batch": args.batch,
            "elapsed_s": round3(secs),
            "sent": sent,
            "failed": failed,
            "tps": round3(tps),
            "mb_per_s": round3(mb_per_s),
            "avg_ms": round3(h.mean() / 1000.0),
            "p50_ms": ms_at(&h, 0.5),
            "p90_ms": ms_at(&h, 0.9),
            "p99_ms": ms_at(&h, 0.99),
            "p999_ms": ms_at(&h, 0.999),
            "max_ms": h.max() as f64 / 1000.0,
            "first_error": first_error,
        });
        println!("{summary}");
    } else {
        println!(
            "bench produce{}: mode {}, {} senders, {}-byte bodies, batch {}, topic {}",
            if args.grpc.is_some() { " (gRPC)" } else { "" },
            args.mode.name(),
            args.senders,
            args.size,
            args.batch,
            args.topic
        );
        println!("  sent        {sent} messages in {secs:.2} s, failed {failed}");
        println!("  throughput  {tps:.0} msg/s, {mb_per_s:.2} MB/s");
        println!(
            "  latency ms  avg {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            h.mean() / 1000.0,
            ms_at(&h, 0.5),
            ms_at(&h, 0.9),
            ms_at(&h, 0.99),
            ms_at(&h, 0.999),
            h.max() as f64 / 1000.0
        );
        if let Some(e) = &first_error {
            println!("  first error {e}");
        }
    }
    if sent == 0 && failed > 0 {
        bail!(
            "every send failed: {}",
            first_error.unwrap_or_else(|| "unknown error".into())
        );
    }
    Ok(())
}

/// A body of `size` printable bytes, made once and shared by every message.
fn body(size: usize) -> Bytes {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    Bytes::from(
        (0..size)
            .map(|i| ALPHABET[(i * 7 + i / ALPHABET.len()) % ALPHABET.len()])
            .collect::<Vec<u8>>(),
    )
}

pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
