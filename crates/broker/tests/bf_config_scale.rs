//! Config tables that scale (issue #11): creating thousands of topics over
//! one connection must cost a handful of `topics.json` writes, not one per
//! topic, and the broker must be idle soon after the last answer.

mod ba_common;

use std::time::{Duration, Instant};

use apogee_protocol::body::TopicConfigSerializeWrapper;
use apogee_protocol::code::response_code;
use ba_common::create_topic;

/// Process CPU time (user + system) from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Peak resident memory of the process in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Creates `n` topics one request after another (as `mqadmin updateTopic`
/// in a loop does) and returns the number of `topics.json` writes.
async fn create_many(n: usize) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = ba_common::Broker::start(ba_common::broker_config(dir.path(), None)).await;
    let ctx = std::sync::Arc::clone(b.ctx());
    let writes0 = ctx.topics.persist_stats().writes;
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    for i in 0..n {
        let resp = b.call(create_topic(format!("ScaleTopic-{i:05}"))).await;
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
    }
    let answered = t0.elapsed();
    // Idle: nothing left to save and the file holds every topic.
    let path = dir.path().join("config/topics.json");
    let idle = loop {
        let stats = ctx.topics.persist_stats();
        if !stats.pending {
            let elapsed = t0.elapsed();
            let table = std::fs::read(&path)
                .ok()
                .and_then(|d| TopicConfigSerializeWrapper::decode(&d).ok());
            if table.is_some_and(|t| {
                t.topic_config_table
                    .contains_key(&format!("ScaleTopic-{:05}", n - 1))
            }) {
                break elapsed;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "never idle");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let writes = ctx.topics.persist_stats().writes - writes0;
    eprintln!(
        "{n} topics: answered in {:.2} s, idle after {:.2} s, {writes} writes of topics.json, \
         cpu {:.2} s, peak RSS {} MiB",
        answered.as_secs_f64(),
        idle.as_secs_f64(),
        cpu_time().saturating_sub(cpu0).as_secs_f64(),
        peak_rss_kib() / 1024
    );
    b.stop().await;
    let table =
        TopicConfigSerializeWrapper::decode(&std::fs::read(&path).expect("read")).expect("decode");
    assert!(
        (0..n).all(|i| table
            .topic_config_table
            .contains_key(&format!("ScaleTopic-{i:05}"))),
        "every topic persisted"
    );
    writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_topics_cost_a_handful_of_writes() {
    let n = 2000;
    let writes = create_many(n).await;
    assert!(writes < 200, "{writes} writes for {n} topics");
}

/// The measurement of issue #11 (slow in debug builds; run with
/// `cargo test -p apogee-broker --test bf_config_scale -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn ten_thousand_topics() {
    create_many(10_000).await;
}
