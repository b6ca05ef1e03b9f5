//! Issue 11, "done when": the real `apogee standalone` takes 10,000 topics
//! and 1,000 subscription groups through the broker, settles, routes every
//! topic via its NameServer, and keeps its threads and anonymous memory
//! bounded. The numbers come from `apogee bench scale --json`, so the
//! benchmark is exercised too.
//!
//! Routability: the broker sends changed topics to the NameServer
//! incrementally and at once (compressed when the table is large), so every
//! topic must be routable within the settle bound after the burst; the bound
//! is generous, the measured figure is in docs/BENCHMARKS.md.

mod support;

use std::process::Command;

use serde_json::Value;

const TOPICS: u64 = 10_000;
const GROUPS: u64 = 1_000;
/// Generous: idleness and routability are asserted, not their speed.
const SETTLE_S: u64 = 50;
/// Measured 12-13 threads before and after (debug); the
/// margin allows for tokio's blocking pool growing under the burst.
const MAX_THREADS: u64 = 40;
/// Measured (debug build, 10,000 topics x 8 queues, 1,000 groups): 15.5 MiB
/// before, 45 MiB settled; release 83-107 MiB settled. About 3x margin.
const MAX_ANON_MIB: f64 = 320.0;

#[test]
fn ten_thousand_topics_and_a_thousand_groups() {
    let s = support::start_standalone(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_apogee"))
        .args(["bench", "scale", "--json", "--route-samples", "0"])
        .args(["-n", &s.namesrv.to_string()])
        .args(["-b", &s.broker.to_string()])
        .args(["--broker-pid", &s.child.id().to_string()])
        .args(["--topics", &TOPICS.to_string()])
        .args(["--groups", &GROUPS.to_string()])
        // No produce run: every queue written to gets its own ConsumeQueue
        // file with 6 MB of disk reserved (the default size), so sending
        // over 10,000 topics x 8 queues would want ~480 GB.
        .args(["--lookups", "500", "--produce-secs", "2"])
        .args([
            "--clients",
            "500",
            "--consumers",
            "200",
            "--consumer-groups",
            "20",
        ])
        .args(["--heartbeat-secs", "2", "--clients-secs", "4"])
        // A debug build idles at a few % of a core (flush and timer
        // ticks); the threshold only has to tell busy from settled.
        .args(["--idle-cpu-pct", "15"])
        .args(["--settle-timeout", &SETTLE_S.to_string()])
        .output()
        .expect("run apogee bench scale");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench scale failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().expect("a JSON summary line");
    let r: Value = serde_json::from_str(line).expect("JSON summary");
    eprintln!("{r:#}");
    let num = |p: &str| r.pointer(p).and_then(Value::as_f64);

    assert_eq!(r["topic_failures"], 0, "{r}");
    assert_eq!(r["group_failures"], 0, "{r}");
    assert!(num("/idle_after_s").is_some(), "broker never idle: {r}");
    assert_eq!(r["route_checked"].as_u64(), Some(TOPICS));
    assert!(
        num("/all_checked_routable_after_s").is_some(),
        "not every topic routable within {SETTLE_S} s: {r}"
    );
    assert_eq!(r["lookup_failures"], 0, "{r}");
    let threads = num("/after/threads").expect("threads read");
    assert!(threads <= MAX_THREADS as f64, "{threads} threads: {r}");
    let anon = num("/after/rss_anon_mib").expect("RssAnon read");
    assert!(anon <= MAX_ANON_MIB, "RssAnon {anon} MiB: {r}");
    // Sends spread round-robin over every topic (one queue each): each
    // queue written costs no file, descriptor or mapping of its own.
    assert_eq!(
        r.pointer("/produce_all_topics/failed"),
        Some(&Value::from(0)),
        "{r}"
    );
    let spread = num("/produce_all_topics/sent").expect("spread sends");
    assert!(
        spread >= TOPICS as f64,
        "only {spread} sends over {TOPICS} topics: {r}"
    );
    let anon = num("/after_produce/rss_anon_mib").expect("RssAnon read");
    assert!(
        anon <= MAX_ANON_MIB,
        "RssAnon {anon} MiB after producing: {r}"
    );
    // Clients connected and heartbeating, every heartbeat answered.
    assert_eq!(
        r.pointer("/clients/connected"),
        Some(&Value::from(500)),
        "{r}"
    );
    assert_eq!(
        r.pointer("/clients/heartbeat_failures"),
        Some(&Value::from(0)),
        "{r}"
    );
    assert!(num("/clients/heartbeats").unwrap_or(0.0) >= 500.0, "{r}");
    let threads = num("/clients/steady/threads").expect("threads read");
    assert!(
        threads <= MAX_THREADS as f64,
        "{threads} threads with clients: {r}"
    );
}
