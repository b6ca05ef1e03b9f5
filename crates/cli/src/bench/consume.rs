//! `apogee bench consume`: a push consumer in a consumer group receives from
//! a topic and reports throughput and end-to-end latency (born timestamp to
//! receipt), live every second and as a summary at the end. It only speaks
//! the remoting protocol, so it runs against any RocketMQ-compatible broker.
//! With `--pop` a simple consumer receives through POP instead, acking
//! every message, so the two ways of consuming compare on the same broker.
//! With `--grpc ADDR` it receives through a RocketMQ 5 gRPC endpoint as the
//! official simple consumer does: ReceiveMessage, then one AckMessage
//! carrying the whole batch's receipt handles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use apogee_client::{
    AdminClient, ConcurrentlyFn, ConsumeConcurrentlyStatus, ConsumeFromWhere, PushConsumer,
    SimpleConsumer,
};
use clap::{Args, ValueEnum};

use super::grpc::GrpcClient;
use super::produce::{now_millis, round3};
use super::report::{ms_at, Progress, Reporter, ShardedLatency};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartFrom {
    /// A new group starts at the oldest stored message.
    First,
    /// A new group starts at the newest message (only what arrives from now).
    Last,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// NameServer address(es), `host:port` separated by `;`.
    #[arg(
        short = 'n',
        long = "namesrv-addr",
        env = "NAMESRV_ADDR",
        default_value = "127.0.0.1:9876"
    )]
    namesrv: String,
    /// Topic to consume.
    #[arg(short = 't', long, default_value = "BenchmarkTest")]
    topic: String,
    /// Consumer group.
    #[arg(short = 'g', long, default_value = "benchmark_consumer")]
    group: String,
    /// Subscription expression (tag), e.g. `TagA || TagB`.
    #[arg(long, default_value = "*")]
    tag: String,
    /// Where a group without stored offsets starts.
    #[arg(long, value_enum, default_value_t = StartFrom::First)]
    from: StartFrom,
    /// Stop after this many messages were received.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds (with --count: whichever comes first,
    /// and falling short of the count is an error).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u64>,
    /// Concurrent listener calls.
    #[arg(long, default_value_t = 20)]
    threads: usize,
    /// Messages handed to the listener per call.
    #[arg(long, default_value_t = 1)]
    consume_batch: usize,
    /// Receive through POP (a simple consumer: receive, then ack each
    /// message) instead of a push consumer pulling.
    #[arg(long, conflicts_with = "grpc")]
    pop: bool,
    /// Receive through this RocketMQ 5 gRPC endpoint (`host:port`):
    /// ReceiveMessage, then one AckMessage per received batch.
    #[arg(long, value_name = "ADDR")]
    grpc: Option<String>,
    /// With --grpc: HTTP/2 connections to the endpoint, used round-robin.
    #[arg(long, value_name = "N", default_value_t = 1)]
    grpc_connections: usize,
    /// The client's tokio runtime: comparing protocols on one machine, run
    /// both on the same kind to compare like with like.
    #[arg(long, value_enum, default_value_t = super::report::RuntimeKind::Auto)]
    runtime: super::report::RuntimeKind,
    /// With --pop or --grpc: concurrent receive loops.
    #[arg(long, default_value_t = 4)]
    pop_receivers: usize,
    /// With --pop or --grpc: messages asked for per receive (1..=32).
    #[arg(long, default_value_t = 32)]
    pop_batch: i32,
    /// Print the summary as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// What the listener updates.
struct Shared {
    progress: Arc<Progress>,
    latency: Arc<ShardedLatency>,
    started: Instant,
    /// Microseconds since `started` of the first and latest receipt (0: none yet).
    first_us: AtomicU64,
    last_us: AtomicU64,
    /// Born-to-store time, summed in ms, for the average.
    store_ms_sum: AtomicU64,
    limit: Option<u64>,
    reached: tokio::sync::Notify,
    /// --pop and --grpc: receive calls that returned messages, and the
    /// acknowledgement of each batch (µs).
    receive_latency: ShardedLatency,
    ack_latency: ShardedLatency,
}

pub fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    if args.threads == 0 || args.consume_batch == 0 {
        bail!("--threads and --consume-batch must be at least 1");
    }
    if args.count == Some(0) {
        bail!("--count must be at least 1");
    }
    if (args.pop || args.grpc.is_some())
        && (args.pop_receivers == 0 || !(1..=32).contains(&args.pop_batch))
    {
        bail!("--pop-receivers must be at least 1 and --pop-batch within 1..=32");
    }
    if args.grpc_connections == 0 {
        bail!("--grpc-connections must be at least 1");
    }
    let current_thread = args.runtime.current_thread(args.grpc.is_some());
    super::report::run_async_bench_on("consume", current_thread, run_async(args))
}

async fn run_async(args: ConsumeArgs) -> anyhow::Result<()> {
    // Fail fast with one clear line when the endpoint, NameServer or topic
    // is missing; the consumer itself would just keep retrying.
    let grpc = match &args.grpc {
        Some(addr) => {
            let client = GrpcClient::connect(addr, args.grpc_connections).await?;
            let brokers = client
                .assignments(&args.topic, &args.group)
                .await
                .with_context(|| {
                    format!(
                        "cannot get an assignment for topic {} from {addr}",
                        args.topic
                    )
                })?;
            if brokers.is_empty() {
                bail!("topic {} has no readable queue", args.topic);
            }
            Some((Arc::new(client), brokers))
        }
        None => {
            remoting_route(&args).await?;
            None
        }
    };
    run_consumer(args, grpc).await
}

async fn remoting_route(args: &ConsumeArgs) -> anyhow::Result<()> {
    let admin = AdminClient::builder()
        .namesrv_addr(args.namesrv.clone())
        .build()
        .context("cannot create a client")?;
    let route = admin.topic_route(&args.topic).await;
    admin.shutdown().await;
    route.with_context(|| {
        format!(
            "cannot get a route for topic {} from NameServer {}",
            args.topic, args.namesrv
        )
    })?;
    Ok(())
}

async fn run_consumer(
    args: ConsumeArgs,
    grpc: Option<(Arc<GrpcClient>, Vec<String>)>,
) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::default());
    let latency = Arc::new(ShardedLatency::new(16));
    let shared = Arc::new(Shared {
        progress: Arc::clone(&progress),
        latency: Arc::clone(&latency),
        started: Instant::now(),
        first_us: AtomicU64::new(0),
        last_us: AtomicU64::new(0),
        store_ms_sum: AtomicU64::new(0),
        limit: args.count,
        reached: tokio::sync::Notify::new(),
        receive_latency: ShardedLatency::new(args.pop_receivers),
        ack_latency: ShardedLatency::new(args.pop_receivers),
    });
    let from = match args.from {
        StartFrom::First => ConsumeFromWhere::ConsumeFromFirstOffset,
        StartFrom::Last => ConsumeFromWhere::ConsumeFromLastOffset,
    };
    let consumer = if let Some((client, brokers)) = grpc {
        Consumer::Grpc(start_grpc(&args, client, brokers, &shared))
    } else if args.pop {
        Consumer::Pop(start_pop(&args, from, &shared).await?)
    } else {
        Consumer::Push(start_push(&args, from, &shared).await?)
    };

    let reporter = Reporter::start_with(
        "consume",
        args.count,
        Arc::clone(&progress),
        Some(latency.live_extra()),
    );
    let deadline = async {
        match args.duration {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    let count_reached = async {
        if args.count.is_some() {
            shared.reached.notified().await
        } else {
            std::future::pending().await
        }
    };
    tokio::select! {
        _ = count_reached => {}
        _ = deadline => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let elapsed = shared.started.elapsed();
    drop(reporter);
    consumer.shutdown().await;
    summarize(&args, &shared, elapsed)
}

impl Shared {
    /// Counts a batch received at `now` (ms) from queue `shard`.
    fn record<'a>(&self, shard: usize, msgs: impl Iterator<Item = &'a apogee_client::MessageExt>) {
        self.record_raw(
            shard,
            msgs.map(|m| (m.born_timestamp, m.store_timestamp, m.body.len())),
        )
    }

    /// Counts a batch of (born ms, stored ms, body length) received now.
    fn record_raw(&self, shard: usize, msgs: impl Iterator<Item = (i64, i64, usize)>) {
        let now = now_millis();
        let mut bytes = 0u64;
        let mut store_ms = 0u64;
        let mut n = 0u64;
        for (born, stored, len) in msgs {
            let e2e_ms = (now - born).max(0) as u64;
            self.latency.record(shard, e2e_ms.saturating_mul(1000));
            store_ms += (stored - born).max(0) as u64;
            bytes += len as u64;
            n += 1;
        }
        if n == 0 {
            return;
        }
        let at = (self.started.elapsed().as_micros() as u64).max(1);
        let _ = self
            .first_us
            .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
        self.last_us.fetch_max(at, Ordering::Relaxed);
        self.store_ms_sum.fetch_add(store_ms, Ordering::Relaxed);
        self.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
        let total = self.progress.done.fetch_add(n, Ordering::Relaxed) + n;
        if self.limit.is_some_and(|l| total >= l) {
            self.reached.notify_one();
        }
    }
}

enum Consumer {
    Push(PushConsumer),
    Pop(PopLoops),
    Grpc(GrpcLoops),
}

struct GrpcLoops {
    stop: Arc<std::sync::atomic::AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Consumer {
    async fn shutdown(self) {
        match self {
            Consumer::Push(c) => c.shutdown().await,
            Consumer::Pop(p) => {
                p.stop.store(true, Ordering::Relaxed);
                for t in p.loops {
                    let _ = t.await;
                }
                p.consumer.shutdown().await;
            }
            Consumer::Grpc(g) => {
                g.stop.store(true, Ordering::Relaxed);
                for t in g.loops {
                    let _ = t.await;
                }
            }
        }
    }
}

struct PopLoops {
    consumer: Arc<SimpleConsumer>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

async fn start_push(
    args: &ConsumeArgs,
    from: ConsumeFromWhere,
    shared: &Arc<Shared>,
) -> anyhow::Result<PushConsumer> {
    let listener = {
        let shared = Arc::clone(shared);
        ConcurrentlyFn(
            move |msgs: &[apogee_client::MessageExt],
                  ctx: &mut apogee_client::ConsumeConcurrentlyContext| {
                shared.record(ctx.queue.queue_id.unsigned_abs() as usize, msgs.iter());
                ConsumeConcurrentlyStatus::Success
            },
        )
    };
    let consumer = PushConsumer::builder()
        .namesrv_addr(args.namesrv.clone())
        .group(args.group.clone())
        .subscribe(args.topic.clone(), args.tag.clone())
        .consume_from_where(from)
        .consume_thread_max(args.threads)
        .consume_message_batch_max_size(args.consume_batch)
        .listener_concurrently(listener)
        .build()
        .context("cannot create the consumer")?;
    consumer
        .start()
        .await
        .context("cannot start the consumer")?;
    Ok(consumer)
}

/// `--pop`: receive loops over one simple consumer, each acking its batch
/// (one batch ack) before the next receive.
async fn start_pop(
    args: &ConsumeArgs,
    from: ConsumeFromWhere,
    shared: &Arc<Shared>,
) -> anyhow::Result<PopLoops> {
    let consumer = SimpleConsumer::builder()
        .namesrv_addr(args.namesrv.clone())
        .group(args.group.clone())
        .subscribe(args.topic.clone(), args.tag.clone())
        .consume_from_where(from)
        .await_duration(Duration::from_secs(2))
        .build()
        .context("cannot create the simple consumer")?;
    consumer
        .start()
        .await
        .context("cannot start the simple consumer")?;
    let consumer = Arc::new(consumer);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops = (0..args.pop_receivers)
        .map(|i| {
            let (c, stop, shared) = (Arc::clone(&consumer), Arc::clone(&stop), Arc::clone(shared));
            let batch = args.pop_batch;
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let got = match c.receive(batch, Duration::from_secs(60)).await {
                        Ok(got) => got,
                        Err(e) => {
                            eprintln!("receive failed: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    if got.is_empty() {
                        continue;
                    }
                    shared.receive_latency.record(i, micros(asked.elapsed()));
                    shared.record(i, got.iter().map(|m| &m.message));
                    // One BATCH_ACK_MESSAGE per broker, as the 5.x clients do.
                    let acking = Instant::now();
                    let acked = c.ack_many(&got).await;
                    shared.ack_latency.record(i, micros(acking.elapsed()));
                    if let Err(e) = acked {
                        eprintln!("ack failed: {e}");
                    }
                }
            })
        })
        .collect();
    Ok(PopLoops {
        consumer,
        stop,
        loops,
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Born and store timestamps (ms) of a received gRPC message (0 if absent).
fn grpc_times(m: &apogee_proxy::pb::Message) -> (i64, i64) {
    use apogee_proxy::convert::timestamp_ms;
    let sys = m.system_properties.as_ref();
    let born = sys.and_then(|s| s.born_timestamp.as_ref());
    let stored = sys.and_then(|s| s.store_timestamp.as_ref());
    (
        born.map(timestamp_ms).unwrap_or(0),
        stored.map(timestamp_ms).unwrap_or(0),
    )
}

/// `--grpc`: receive loops, each taking the assigned brokers in turn and
/// acking each batch with one AckMessage before its next receive.
fn start_grpc(
    args: &ConsumeArgs,
    client: Arc<GrpcClient>,
    brokers: Vec<String>,
    shared: &Arc<Shared>,
) -> GrpcLoops {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let brokers = Arc::new(brokers);
    let loops = (0..args.pop_receivers)
        .map(|i| {
            let (c, stop, shared) = (Arc::clone(&client), Arc::clone(&stop), Arc::clone(shared));
            let brokers = Arc::clone(&brokers);
            let (group, topic, batch) = (args.group.clone(), args.topic.clone(), args.pop_batch);
            tokio::spawn(async move {
                let poll = Duration::from_secs(2);
                let receive_deadline = c.deadline(poll + Duration::from_secs(3));
                let ack_deadline = c.deadline(Duration::from_secs(5));
                let mut turn = i;
                while !stop.load(Ordering::Relaxed) {
                    let broker = &brokers[turn % brokers.len()];
                    turn = turn.wrapping_add(1);
                    let asked = Instant::now();
                    let received = c
                        .receive(
                            &group,
                            &topic,
                            broker,
                            batch,
                            Duration::from_secs(60),
                            poll,
                            &receive_deadline,
                        )
                        .await;
                    let got = match received {
                        Ok(got) => got.messages,
                        Err(e) => {
                            eprintln!("receive failed: {e}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    if got.is_empty() {
                        continue;
                    }
                    shared.receive_latency.record(i, micros(asked.elapsed()));
                    shared.record_raw(
                        i,
                        got.iter().map(|m| {
                            let (born, stored) = grpc_times(m);
                            (born, stored, m.body.len())
                        }),
                    );
                    let acking = Instant::now();
                    let r = c.ack(&group, &topic, got, &ack_deadline).await;
                    shared.ack_latency.record(i, micros(acking.elapsed()));
                    if let Err(e) = r {
                        eprintln!("ack failed: {e}");
                    }
                }
            })
        })
        .collect();
    GrpcLoops { stop, loops }
}

fn summarize(args: &ConsumeArgs, shared: &Shared, elapsed: Duration) -> anyhow::Result<()> {
    let progress = &shared.progress;
    let latency = &shared.latency;
    let received = progress.done.load(Ordering::Relaxed);
    let bytes = progress.bytes.load(Ordering::Relaxed);
    let h = latency.total();
    let (rh, ah) = (shared.receive_latency.total(), shared.ack_latency.total());
    // Rates over the receiving window, so that start-up (route lookup,
    // rebalance) does not dilute them.
    let first = shared.first_us.load(Ordering::Relaxed);
    let last = shared.last_us.load(Ordering::Relaxed);
    let window = if received > 1 && last > first {
        (last - first) as f64 / 1e6
    } else {
        elapsed.as_secs_f64()
    }
    .max(1e-9);
    let tps = received as f64 / window;
    let mb_per_s = bytes as f64 / window / 1e6;
    let store_avg_ms = if received > 0 {
        shared.store_ms_sum.load(Ordering::Relaxed) as f64 / received as f64
    } else {
        0.0
    };
    if args.json {
        let summary = serde_json::json!({
            "bench": if args.grpc.is_some() {
                "consume-grpc"
            } else if args.pop {
                "consume-pop"
            } else {
                "consume"
            },
            "topic": args.topic,
            "group": args.group,
            "elapsed_s": round3(elapsed.as_secs_f64()),
            "received": received,
            "failed": 0,
            "tps": round3(tps),
            "mb_per_s": round3(mb_per_s),
            "avg_ms": round3(h.mean() / 1000.0),
            "p50_ms": ms_at(&h, 0.5),
            "p90_ms": ms_at(&h, 0.9),
            "p99_ms": ms_at(&h, 0.99),
            "p999_ms": ms_at(&h, 0.999),
            "max_ms": h.max() as f64 / 1000.0,
            "store_avg_ms": round3(store_avg_ms),
            "receive_p50_ms": ms_at(&rh, 0.5),
            "receive_p99_ms": ms_at(&rh, 0.99),
            "ack_p50_ms": ms_at(&ah, 0.5),
            "ack_p99_ms": ms_at(&ah, 0.99),
        });
        println!("{summary}");
    } else {
        println!(
            "bench consume{}: topic {}, group {}, subscription {}",
            if args.grpc.is_some() {
                " (gRPC: ReceiveMessage + AckMessage)"
            } else if args.pop {
                " (POP: receive + ack)"
            } else {
                ""
            },
            args.topic,
            args.group,
            args.tag
        );
        println!(
            "  received    {received} messages in {:.2} s",
            elapsed.as_secs_f64()
        );
        println!("  throughput  {tps:.0} msg/s, {mb_per_s:.2} MB/s (while receiving)");
        println!(
            "  end-to-end latency ms (born to receipt)  avg {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            h.mean() / 1000.0,
            ms_at(&h, 0.5),
            ms_at(&h, 0.9),
            ms_at(&h, 0.99),
            ms_at(&h, 0.999),
            h.max() as f64 / 1000.0
        );
        println!("  born to stored avg {store_avg_ms:.1} ms");
        if args.pop || args.grpc.is_some() {
            println!(
                "  receive call ms (batches that brought messages)  p50 {:.3}  p99 {:.3}",
                ms_at(&rh, 0.5),
                ms_at(&rh, 0.99)
            );
            println!(
                "  ack of a batch ms  p50 {:.3}  p99 {:.3}",
                ms_at(&ah, 0.5),
                ms_at(&ah, 0.99)
            );
        }
    }
    if let Some(limit) = args.count {
        if received < limit {
            bail!("received {received} of {limit} messages before stopping");
        }
    }
    Ok(())
}
