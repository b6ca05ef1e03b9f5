//! `apogee bench scale` (issue 11): creates many topics and subscription
//! groups on one broker, then measures what that costs: creation rate, how
//! long the broker stays busy afterwards, its memory and threads, how long
//! until the NameServer routes every topic, route lookup latency, and
//! produce throughput spread over all the topics against one topic, and
//! the broker's CPU with thousands of clients connected and heartbeating.
//!
//! The broker's CPU, memory and threads are read from `/proc/<pid>` when
//! `--broker-pid` is given (same machine only).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use apogee_client::AdminClient;
use apogee_protocol::body::{SubscriptionGroupConfig, TopicConfig};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::SendMessageRequestHeader;
use apogee_protocol::RemotingCommand;
use bytes::Bytes;
use clap::Args;
use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::report::{latency_histogram, ms_at};

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// NameServer address(es), `host:port` separated by `;`.
    #[arg(
        short = 'n',
        long = "namesrv-addr",
        env = "NAMESRV_ADDR",
        default_value = "127.0.0.1:9876"
    )]
    namesrv: String,
    /// Broker to create the topics on (default: the first master the
    /// NameServer knows).
    #[arg(short = 'b', long = "broker-addr")]
    broker: Option<String>,
    /// Process id of the broker (or `apogee standalone`) on this machine:
    /// its CPU time, anonymous memory and threads are read from /proc.
    #[arg(long = "broker-pid")]
    broker_pid: Option<u32>,
    /// Topics to create.
    #[arg(short = 't', long, default_value_t = 10_000)]
    topics: usize,
    /// Subscription groups to create.
    #[arg(short = 'g', long, default_value_t = 1_000)]
    groups: usize,
    /// Read and write queues of every topic.
    #[arg(short = 'q', long, default_value_t = 8)]
    queues: i32,
    /// Name prefix of the created topics and groups.
    #[arg(long, default_value = "scale")]
    prefix: String,
    /// Creation requests in flight on the one connection.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Topics whose route is checked (random ones plus the last 100
    /// created); 0 checks every topic.
    #[arg(long, default_value_t = 2_000)]
    route_samples: usize,
    /// Route lookups (GET_ROUTEINFO_BY_TOPIC of random topics, one at a
    /// time) for the latency figures.
    #[arg(long, default_value_t = 5_000)]
    lookups: usize,
    /// Seconds of each produce run (one topic, then all topics); 0 skips both.
    #[arg(long, default_value_t = 10)]
    produce_secs: u64,
    /// Message body size of the produce runs.
    #[arg(short = 's', long, default_value_t = 1024)]
    size: usize,
    /// Queues of each topic the produce runs write to (at most --queues).
    #[arg(long, default_value_t = 1)]
    produce_queues: i32,
    /// Sends in flight during the produce runs.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// The broker counts as idle when its CPU time over the last three
    /// seconds grew by less than this share of one core more than it did
    /// before the first topic was created.
    #[arg(long, default_value_t = 2.0)]
    idle_cpu_pct: f64,
    /// Give up waiting for idleness or routability after this many seconds.
    #[arg(long, default_value_t = 120)]
    settle_timeout: u64,
    /// Timeout of every request, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Client connections opened after the produce runs, each heartbeating
    /// (HEART_BEAT) every --heartbeat-secs with its phase spread over the
    /// interval; 0 skips the clients phase.
    #[arg(long, default_value_t = 0)]
    pub clients: usize,
    /// Of those, how many heartbeat as push consumers (the rest as
    /// producers), each subscribed to one of the created topics.
    #[arg(long, default_value_t = 2_000)]
    pub consumers: usize,
    /// Consumer groups the consumers are spread over.
    #[arg(long, default_value_t = 200)]
    pub consumer_groups: usize,
    /// Heartbeat interval of every client (RocketMQ's default is 30 s).
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// Seconds over which the broker's CPU is measured with every client
    /// connected and heartbeating.
    #[arg(long, default_value_t = 60)]
    pub clients_secs: u64,
    /// Print the summary as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// One reading of the broker process.
#[derive(Debug, Clone, Copy, Default)]
struct ProcSample {
    rss_anon: Option<u64>,
    threads: Option<u64>,
    cpu: Option<Duration>,
}

impl ProcSample {
    fn read(pid: Option<u32>) -> ProcSample {
        let Some(pid) = pid else {
            return ProcSample::default();
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
        let field = |key: &str| -> Option<u64> {
            let line = status.as_deref()?.lines().find(|l| l.starts_with(key))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        ProcSample {
            rss_anon: field("RssAnon:").map(|kb| kb * 1024),
            threads: field("Threads:"),
            cpu: cpu_time(pid),
        }
    }

    fn json(&self) -> Value {
        json!({
            "rss_anon_mib": self.rss_anon.map(mib),
            "threads": self.threads,
            "cpu_s": self.cpu.map(|c| round3(c.as_secs_f64())),
        })
    }
}

/// User + system CPU time of a process (`/proc/<pid>/stat` fields 14 and
/// 15, in clock ticks; Linux uses 100 ticks/s on every common platform).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields start after its ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn mib(bytes: u64) -> f64 {
    round3(bytes as f64 / (1024.0 * 1024.0))
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Counts failures and keeps the first error text.
#[derive(Default)]
struct Failures {
    count: AtomicU64,
    first: parking_lot::Mutex<Option<String>>,
}

impl Failures {
    fn add(&self, e: impl std::fmt::Display) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

/// A small xorshift generator: random topic picks need no crate.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng(seed | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

pub fn run(args: ScaleArgs) -> anyhow::Result<()> {
    if args.topics == 0 || args.window == 0 || args.inflight == 0 || args.queues <= 0 {
        bail!("--topics, --window, --inflight and --queues must be at least 1");
    }
    if args.size == 0 {
        bail!("--size must be at least 1");
    }
    super::report::run_async_bench("scale", run_async(args))
}

fn topic_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-topic-{i:06}")
}

/// The first master address the NameServer knows.
async fn first_master(admin: &AdminClient) -> anyhow::Result<String> {
    let info = admin
        .cluster_info()
        .await
        .context("cannot get the cluster from the NameServer")?;
    info.broker_addr_table
        .values()
        .find_map(|b| b.broker_addrs.get(&0).cloned())
        .context("the NameServer knows no master broker")
}

async fn run_async(args: ScaleArgs) -> anyhow::Result<()> {
    let admin = AdminClient::builder()
        .namesrv_addr(args.namesrv.clone())
        .api_timeout(Duration::from_millis(args.timeout_ms))
        .build()
        .context("cannot create the admin client")?;
    let broker = match &args.broker {
        Some(b) => b.clone(),
        None => first_master(&admin).await?,
    };
    let pid = args.broker_pid;
    if let Some(p) = pid {
        if cpu_time(p).is_none() {
            bail!("cannot read /proc/{p}/stat: is --broker-pid the broker's process id?");
        }
    }
    // What the broker burns doing nothing, for comparison with the idle
    // threshold (an idle broker still flushes and ticks timers).
    let baseline_pct = match pid {
        Some(p) => {
            let c0 = cpu_time(p);
            let t = Instant::now();
            tokio::time::sleep(Duration::from_secs(2)).await;
            match (c0, cpu_time(p)) {
                (Some(a), Some(b)) => {
                    Some(b.saturating_sub(a).as_secs_f64() / t.elapsed().as_secs_f64() * 100.0)
                }
                _ => None,
            }
        }
        None => None,
    };
    let before = ProcSample::read(pid);

    // Topics, pipelined over the admin client's one connection to the broker.
    let failures = Failures::default();
    let t0 = Instant::now();
    stream::iter(0..args.topics)
        .map(|i| {
            let config = TopicConfig {
                read_queue_nums: args.queues,
                write_queue_nums: args.queues,
                perm: 6,
                ..TopicConfig::new(topic_name(&args.prefix, i))
            };
            let (admin, broker) = (&admin, &broker);
            async move { admin.create_topic(broker, &config).await }
        })
        .buffer_unordered(args.window)
        .for_each(|r| {
            if let Err(e) = r {
                failures.add(e);
            }
            async {}
        })
        .await;
    let topics_took = t0.elapsed();
    let topic_failures = failures.count.load(Ordering::Relaxed);
    if topic_failures == args.topics as u64 {
        bail!(
            "every topic creation failed: {}",
            failures.first.lock().clone().unwrap_or_default()
        );
    }

    let group_failures = Failures::default();
    let t1 = Instant::now();
    stream::iter(0..args.groups)
        .map(|i| {
            let config = SubscriptionGroupConfig::new(format!("{}-group-{i:06}", args.prefix));
            let (admin, broker) = (&admin, &broker);
            async move { admin.create_subscription_group(broker, &config).await }
        })
        .buffer_unordered(args.window)
        .for_each(|r| {
            if let Err(e) = r {
                group_failures.add(e);
            }
            async {}
        })
        .await;
    let groups_took = t1.elapsed();
    let last_answer = Instant::now();

    // Idle and routable, both measured from the last creation's answer and
    // watched at once. The routes are checked one request at a time: the
    // last topic created first, then a sample (or all) with the last 100
    // created. With a standalone broker the NameServer answering these is
    // part of the CPU watched for idleness.
    let settle = Duration::from_secs(args.settle_timeout);
    let mut rng = Rng::new();
    let sample: Vec<String> = if args.route_samples == 0 || args.route_samples >= args.topics {
        (0..args.topics)
            .map(|i| topic_name(&args.prefix, i))
            .collect()
    } else {
        let tail = args.topics.saturating_sub(100);
        (0..args.route_samples)
            .map(|_| rng.below(args.topics))
            .chain(tail..args.topics)
            .map(|i| topic_name(&args.prefix, i))
            .collect()
    };
    let last_topic = topic_name(&args.prefix, args.topics - 1);
    let routes = async {
        let last = wait_routable(
            &admin,
            std::slice::from_ref(&last_topic),
            last_answer,
            settle,
        )
        .await;
        let all = wait_routable(&admin, &sample, last_answer, settle).await;
        (last, all)
    };
    let (idle_after, (last_routable_after, all_routable_after)) = tokio::join!(
        // Idle means back within --idle-cpu-pct of what the empty broker
        // burned (flush threads and timers tick at a few % of a core).
        wait_idle(
            pid,
            baseline_pct.unwrap_or(0.0) + args.idle_cpu_pct,
            last_answer,
            settle
        ),
        routes,
    );
    let after = ProcSample::read(pid);

    let mut lookup = latency_histogram();
    let mut lookup_failures = 0u64;
    for _ in 0..args.lookups {
        let t = topic_name(&args.prefix, rng.below(args.topics));
        let start = Instant::now();
        match admin.instance().fetch_route(&t).await {
            Ok(_) => {
                let _ = lookup.record((start.elapsed().as_micros() as u64).clamp(1, 60_000_000));
            }
            Err(_) => lookup_failures += 1,
        }
    }

    let (one, many) = if args.produce_secs > 0 {
        let d = Duration::from_secs(args.produce_secs);
        let one_topic = vec![topic_name(&args.prefix, 0)];
        let all: Vec<String> = (0..args.topics)
            .map(|i| topic_name(&args.prefix, i))
            .collect();
        let one = produce(&admin, &broker, &one_topic, &args, d, pid).await;
        let many = produce(&admin, &broker, &all, &args, d, pid).await;
        (Some(one), Some(many))
    } else {
        (None, None)
    };
    let after_produce = ProcSample::read(pid);
    let clients = if args.clients > 0 {
        Some(clients_phase(&broker, &args, pid).await?)
    } else {
        None
    };
    admin.shutdown().await;

    let create_rate = args.topics as f64 / topics_took.as_secs_f64().max(1e-9);
    let group_rate = args.groups as f64 / groups_took.as_secs_f64().max(1e-9);
    let ratio = match (&one, &many) {
        (Some(o), Some(m)) if o.tps > 0.0 => Some(m.tps / o.tps),
        _ => None,
    };
    let secs = |d: Option<Duration>| d.map(|d| round3(d.as_secs_f64()));
    let summary = json!({
        "bench": "scale",
        "broker": broker,
        "topics": args.topics,
        "queues": args.queues,
        "groups": args.groups,
        "topic_create_s": round3(topics_took.as_secs_f64()),
        "topics_per_s": round3(create_rate),
        "topic_failures": topic_failures,
        "group_create_s": round3(groups_took.as_secs_f64()),
        "groups_per_s": round3(group_rate),
        "group_failures": group_failures.count.load(Ordering::Relaxed),
        "first_error": failures.first.lock().clone().or_else(|| group_failures.first.lock().clone()),
        "idle_cpu_pct": args.idle_cpu_pct,
        "baseline_cpu_pct": baseline_pct.map(round3),
        "idle_after_s": secs(idle_after),
        "last_topic_routable_after_s": secs(last_routable_after),
        "route_checked": sample.len(),
        "all_checked_routable_after_s": secs(all_routable_after),
        "lookups": args.lookups,
        "lookup_failures": lookup_failures,
        "lookup_p50_ms": ms_at(&lookup, 0.5),
        "lookup_p99_ms": ms_at(&lookup, 0.99),
        "lookup_max_ms": lookup.max() as f64 / 1000.0,
        "before": before.json(),
        "after": after.json(),
        "after_produce": after_produce.json(),
        "produce_one_topic": one.as_ref().map(ProduceResult::json),
        "produce_all_topics": many.as_ref().map(ProduceResult::json),
        "produce_ratio": ratio.map(round3),
        "produce_queues": args.produce_queues.clamp(1, args.queues),
        "clients": clients,
    });
    if args.json {
        println!("{summary}");
    } else {
        print_table(&summary);
    }
    Ok(())
}

/// Time from `since` until the broker's CPU time grew by less than
/// `pct`% of one core over a full second; `None` without a pid or when it
/// never got there within `timeout`.
/// How long the broker must stay (almost) idle to count as settled.
const IDLE_WINDOW: Duration = Duration::from_secs(3);

async fn wait_idle(
    pid: Option<u32>,
    pct: f64,
    since: Instant,
    timeout: Duration,
) -> Option<Duration> {
    let pid = pid?;
    let step = Duration::from_millis(100);
    let budget = Duration::from_secs_f64(pct / 100.0);
    // (when, cpu) readings of the last IDLE_WINDOW; idle is reported as of
    // the window's start, the moment after which the broker did (almost)
    // nothing. Longer than a second: a config writer pauses up to twice its
    // last write's duration between writes, and a quiet second inside such
    // a pause is not the end of the work.
    let mut window: std::collections::VecDeque<(Instant, Duration)> = Default::default();
    loop {
        let now = Instant::now();
        let cpu = cpu_time(pid)?;
        window.push_back((now, cpu));
        // Keep the newest reading that is at least IDLE_WINDOW old in front.
        while window
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= IDLE_WINDOW)
        {
            window.pop_front();
        }
        if let Some(&(t, c)) = window.front() {
            let span = now.duration_since(t);
            if span >= IDLE_WINDOW
                && cpu.saturating_sub(c).as_secs_f64() <= budget.as_secs_f64() * span.as_secs_f64()
            {
                return Some(t.saturating_duration_since(since));
            }
        }
        if since.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(step).await;
    }
}

/// Time from `since` until every topic in `topics` has a route with queues
/// at the NameServer; `None` if that did not happen within `timeout`.
async fn wait_routable(
    admin: &AdminClient,
    topics: &[String],
    since: Instant,
    timeout: Duration,
) -> Option<Duration> {
    let mut pending: Vec<&String> = topics.iter().collect();
    loop {
        let mut still = Vec::new();
        for t in pending {
            match admin.instance().fetch_route(t).await {
                Ok(r) if !r.queue_datas.is_empty() => {}
                _ => still.push(t),
            }
        }
        if still.is_empty() {
            return Some(since.elapsed());
        }
        if since.elapsed() > timeout {
            return None;
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct ProduceResult {
    topics: usize,
    sent: u64,
    failed: u64,
    first_error: Option<String>,
    tps: f64,
    latency: Histogram<u64>,
    /// Broker CPU time (user + system) per stored message, when its pid is known.
    broker_cpu_us_per_msg: Option<f64>,
}

impl ProduceResult {
    fn json(&self) -> Value {
        json!({
            "topics": self.topics,
            "sent": self.sent,
            "failed": self.failed,
            "tps": round3(self.tps),
            "p50_ms": ms_at(&self.latency, 0.5),
            "p99_ms": ms_at(&self.latency, 0.99),
            "broker_cpu_us_per_msg": self.broker_cpu_us_per_msg.map(round3),
            "first_error": self.first_error,
        })
    }
}

/// Sends `--size` bodies with `--inflight` requests in flight for `d`,
/// round-robin over `topics` (queue chosen round-robin too), straight to the
/// broker as SEND_MESSAGE. The producer is bypassed on purpose: it installs
/// each new topic's route by copying its whole route table, which with
/// 100,000 topics would measure the client, not the broker.
async fn produce(
    admin: &AdminClient,
    broker: &str,
    topics: &[String],
    args: &ScaleArgs,
    d: Duration,
    pid: Option<u32>,
) -> ProduceResult {
    let cpu_before = pid.and_then(cpu_time);
    let body = Bytes::from(vec![b'x'; args.size]);
    let next = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let failures = Failures::default();
    let latency = parking_lot::Mutex::new(latency_histogram());
    let group = format!("{}-producer", args.prefix);
    let start = Instant::now();
    let lanes = (0..args.inflight).map(|_| async {
        while start.elapsed() < d {
            let seq = next.fetch_add(1, Ordering::Relaxed);
            let topic = &topics[(seq % topics.len() as u64) as usize];
            let spread = args.produce_queues.clamp(1, args.queues);
            let queue = ((seq / topics.len() as u64) % spread as u64) as i32;
            let header = SendMessageRequestHeader {
                producer_group: group.clone(),
                topic: topic.clone(),
                default_topic: "TBW102".into(),
                default_topic_queue_nums: args.queues,
                queue_id: queue,
                born_timestamp: chrono::Utc::now().timestamp_millis(),
                ..Default::default()
            };
            let cmd = RemotingCommand::request(request_code::SEND_MESSAGE)
                .with_header(&header)
                .with_body(body.clone());
            let t = Instant::now();
            match admin.instance().invoke(broker, cmd).await {
                Ok(r) if r.code == response_code::SUCCESS => {
                    sent.fetch_add(1, Ordering::Relaxed);
                    let micros = (t.elapsed().as_micros() as u64).clamp(1, 60_000_000);
                    let _ = latency.lock().record(micros);
                }
                Ok(r) => failures.add(format!(
                    "code {} {}",
                    r.code,
                    r.remark.as_deref().unwrap_or("")
                )),
                Err(e) => failures.add(e),
            }
        }
    });
    futures::future::join_all(lanes).await;
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let sent = sent.load(Ordering::Relaxed);
    let broker_cpu_us_per_msg = match (cpu_before, pid.and_then(cpu_time)) {
        (Some(a), Some(b)) if sent > 0 => {
            Some(b.saturating_sub(a).as_secs_f64() * 1e6 / sent as f64)
        }
        _ => None,
    };
    let first_error = failures.first.lock().clone();
    ProduceResult {
        topics: topics.len(),
        sent,
        failed: failures.count.load(Ordering::Relaxed),
        first_error,
        tps: sent as f64 / secs,
        latency: latency.into_inner(),
        broker_cpu_us_per_msg,
    }
}

fn print_table(s: &Value) {
    let v = |k: &str| -> String {
        match s.pointer(k) {
            Some(Value::Null) | None => "-".into(),
            Some(Value::String(t)) => t.clone(),
            Some(x) => x.to_string(),
        }
    };
    println!(
        "bench scale: {} topics x {} queues, {} groups, broker {}",
        v("/topics"),
        v("/queues"),
        v("/groups"),
        v("/broker")
    );
    let rows = [
        ("topics created /s", v("/topics_per_s")),
        ("topic creation s", v("/topic_create_s")),
        ("topic failures", v("/topic_failures")),
        ("groups created /s", v("/groups_per_s")),
        ("group failures", v("/group_failures")),
        ("CPU % of a core before", v("/baseline_cpu_pct")),
        ("idle after s", v("/idle_after_s")),
        (
            "last topic routable after s",
            v("/last_topic_routable_after_s"),
        ),
        ("topics checked for a route", v("/route_checked")),
        (
            "all checked routable after s",
            v("/all_checked_routable_after_s"),
        ),
        ("route lookup p50 ms", v("/lookup_p50_ms")),
        ("route lookup p99 ms", v("/lookup_p99_ms")),
        ("anon MiB before", v("/before/rss_anon_mib")),
        ("anon MiB after", v("/after/rss_anon_mib")),
        ("anon MiB after produce", v("/after_produce/rss_anon_mib")),
        ("threads before", v("/before/threads")),
        ("threads after", v("/after/threads")),
        ("threads after produce", v("/after_produce/threads")),
        ("produce 1 topic msg/s", v("/produce_one_topic/tps")),
        ("produce all topics msg/s", v("/produce_all_topics/tps")),
        ("produce all / one", v("/produce_ratio")),
        (
            "broker CPU us/msg, 1 topic",
            v("/produce_one_topic/broker_cpu_us_per_msg"),
        ),
        (
            "broker CPU us/msg, all topics",
            v("/produce_all_topics/broker_cpu_us_per_msg"),
        ),
        ("clients connected", v("/clients/connected")),
        ("clients registered in s", v("/clients/register_s")),
        ("heartbeats sent", v("/clients/heartbeats")),
        ("heartbeat failures", v("/clients/heartbeat_failures")),
        ("CPU % of a core, clients", v("/clients/broker_cpu_pct")),
        ("anon MiB with clients", v("/clients/steady/rss_anon_mib")),
        ("threads with clients", v("/clients/steady/threads")),
    ];
    for (k, val) in rows {
        println!("  {k:<30} {val}");
    }
    if let Some(e) = s.get("first_error").and_then(Value::as_str) {
        println!("  first error: {e}");
    }
    for k in [
        "/produce_one_topic/first_error",
        "/produce_all_topics/first_error",
    ] {
        if let Some(e) = s.pointer(k).and_then(Value::as_str) {
            println!("  {k}: {e}");
        }
    }
}

/// Opens `--clients` connections; the first `--consumers` heartbeat as push
/// consumers of `--consumer-groups` groups (one created topic each), the
/// others as producers. After one heartbeat from every client (timed), each
/// heartbeats every `--heartbeat-secs` at its own phase, and the broker's
/// CPU is read over `--clients-secs`.
async fn clients_phase(broker: &str, args: &ScaleArgs, pid: Option<u32>) -> anyhow::Result<Value> {
    use apogee_protocol::body::{
        ConsumeFromWhere, ConsumeType, ConsumerData, HeartbeatData, MessageModel, ProducerData,
        SubscriptionData,
    };
    use apogee_remoting::client::{ClientConfig, RemotingClient};

    let groups = args.consumer_groups.max(1);
    let body_of = |i: usize| -> Bytes {
        let client_id = format!("127.0.0.1@scale-{i}");
        let data = if i < args.consumers {
            let g = i % groups;
            HeartbeatData {
                client_id,
                consumer_data_set: vec![ConsumerData {
                    group_name: format!("{}-cgroup-{g:05}", args.prefix),
                    consume_type: ConsumeType::ConsumePassively,
                    message_model: MessageModel::Clustering,
                    consume_from_where: ConsumeFromWhere::ConsumeFromLastOffset,
                    subscription_data_set: vec![SubscriptionData {
                        topic: topic_name(&args.prefix, g % args.topics.max(1)),
                        sub_string: "*".into(),
                        sub_version: 1,
                        ..Default::default()
                    }],
                    unit_mode: false,
                }],
                ..Default::default()
            }
        } else {
            HeartbeatData {
                client_id,
                producer_data_set: vec![ProducerData {
                    group_name: format!("{}-pgroup-{:05}", args.prefix, i % groups),
                }],
                ..Default::default()
            }
        };
        Bytes::from(data.encode())
    };
    let config = ClientConfig {
        // Heartbeats are the only traffic: the link must not idle out.
        idle_timeout: None,
        ..ClientConfig::default()
    };
    let before = ProcSample::read(pid);
    let t0 = Instant::now();
    let failures = Failures::default();
    let clients: Vec<(RemotingClient, Bytes)> = stream::iter(0..args.clients)
        .map(|i| {
            let client = RemotingClient::new(config.clone());
            let body = body_of(i);
            async move {
                let cmd =
                    RemotingCommand::request(request_code::HEART_BEAT).with_body(body.clone());
                let r = client
                    .invoke(broker, cmd, Duration::from_millis(args.timeout_ms))
                    .await;
                (client, body, r)
            }
        })
        .buffer_unordered(args.window)
        .filter_map(|(client, body, r)| {
            let ok = match r {
                Ok(resp) if resp.code == response_code::SUCCESS => true,
                Ok(resp) => {
                    failures.add(format!(
                        "HEART_BEAT answered {}: {:?}",
                        resp.code, resp.remark
                    ));
                    false
                }
                Err(e) => {
                    failures.add(e);
                    false
                }
            };
            async move { ok.then_some((client, body)) }
        })
        .collect()
        .await;
    let registered_in = t0.elapsed();
    let connected = clients.len();
    let registered = ProcSample::read(pid);

    // Steady state: every client heartbeats once per interval, phases spread.
    let interval = Duration::from_secs(args.heartbeat_secs.max(1));
    let window = Duration::from_secs(args.clients_secs.max(1));
    let hb_failures = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let c0 = pid.and_then(cpu_time);
    let t1 = Instant::now();
    let n = clients.len().max(1) as u32;
    stream::iter(clients.iter().enumerate())
        .for_each_concurrent(None, |(i, (client, body))| {
            let (hb_failures, sent) = (&hb_failures, &sent);
            async move {
                let mut next = t1 + interval * (i as u32) / n;
                while next < t1 + window {
                    tokio::time::sleep_until(next.into()).await;
                    let cmd =
                        RemotingCommand::request(request_code::HEART_BEAT).with_body(body.clone());
                    match client
                        .invoke(broker, cmd, Duration::from_millis(args.timeout_ms))
                        .await
                    {
                        Ok(r) if r.code == response_code::SUCCESS => {}
                        _ => {
                            hb_failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    next += interval;
                }
            }
        })
        .await;
    let took = t1.elapsed();
    let cpu_pct = match (c0, pid.and_then(cpu_time)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64() / took.as_secs_f64() * 100.0),
        _ => None,
    };
    let steady = ProcSample::read(pid);
    for (c, _) in &clients {
        c.close().await;
    }
    Ok(json!({
        "clients": args.clients,
        "connected": connected,
        "consumers": args.consumers.min(args.clients),
        "consumer_groups": groups,
        "register_s": round3(registered_in.as_secs_f64()),
        "register_failures": failures.count.load(Ordering::Relaxed),
        "first_error": failures.first.lock().clone(),
        "heartbeat_secs": interval.as_secs(),
        "window_s": round3(took.as_secs_f64()),
        "heartbeats": sent.load(Ordering::Relaxed),
        "heartbeat_failures": hb_failures.load(Ordering::Relaxed),
        "broker_cpu_pct": cpu_pct.map(round3),
        "before": before.json(),
        "registered": registered.json(),
        "steady": steady.json(),
    }))
}
