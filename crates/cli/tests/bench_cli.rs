//! `apogee bench produce` / `apogee bench consume` against `apogee
//! standalone` processes: JSON summaries, message counts cross-checked with
//! `apogee admin topicStatus`, every send mode, and failures. Nothing here
//! asserts on speed.

mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` (55 s at most).
fn apogee(args: &[&str]) -> Run {
    let child = Command::new(env!("CARGO_BIN_EXE_apogee"))
        .args(args)
        .env_remove("NAMESRV_ADDR")
        .env_remove("APOGEE_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apogee");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(55)) {
        Ok(Ok(out)) => Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("waiting for apogee {args:?}: {e}"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("apogee {args:?} did not finish within 55 s");
        }
    }
}

/// The JSON summary on the last stdout line of a successful run.
fn summary(r: &Run) -> Value {
    assert_eq!(
        r.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    let last = r.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {last}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("summary has no number {key}: {v}"))
}

/// The latency fields exist and are ordered as percentiles must be.
fn check_latency_fields(v: &Value) {
    let p50 = num(v, "p50_ms");
    let p99 = num(v, "p99_ms");
    let p999 = num(v, "p999_ms");
    let max = num(v, "max_ms");
    assert!(p50 <= p99 && p99 <= p999 && p999 <= max, "{v}");
    assert!(num(v, "tps") > 0.0, "{v}");
    assert!(num(v, "mb_per_s") > 0.0, "{v}");
}

/// Messages stored in `topic` according to `apogee admin topicStatus`.
fn stored(ns: &str, topic: &str) -> i64 {
    let r = apogee(&["admin", "topicStatus", "-n", ns, "-t", topic, "--json"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_default();
    v["messages"].as_i64().unwrap_or(-1)
}

fn create_topic(ns: &str, broker: &str, topic: &str) {
    let r = apogee(&[
        "admin",
        "updateTopic",
        "-n",
        ns,
        "-b",
        broker,
        "-t",
        topic,
        "-r",
        "4",
        "-w",
        "4",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while apogee(&["admin", "topicRoute", "-n", ns, "-t", topic]).code != Some(0) {
        assert!(Instant::now() < deadline, "no route for {topic}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn help_has_examples() {
    for cmd in ["produce", "consume"] {
        let r = apogee(&["bench", cmd, "--help"]);
        assert_eq!(r.code, Some(0));
        assert!(r.stdout.contains("Example"), "{}", r.stdout);
        assert!(r.stdout.contains("--json") && r.stdout.contains("--count"));
    }
}

#[test]
fn produce_then_consume_2000() {
    let sa = support::start_standalone(&[]);
    let ns = sa.namesrv.to_string();
    create_topic(&ns, &sa.broker.to_string(), "BenchCli");

    let p = summary(&apogee(&[
        "bench", "produce", "-n", &ns, "-t", "BenchCli", "--count", "2000", "-w", "8", "--json",
    ]));
    assert_eq!(p["sent"], 2000, "{p}");
    assert_eq!(p["failed"], 0, "{p}");
    assert_eq!(p["mode"], "sync");
    check_latency_fields(&p);
    assert_eq!(stored(&ns, "BenchCli"), 2000);

    let c = summary(&apogee(&[
        "bench",
        "consume",
        "-n",
        &ns,
        "-t",
        "BenchCli",
        "-g",
        "bench_cli_group",
        "--count",
        "2000",
        "--duration",
        "45",
        "--json",
    ]));
    assert!(num(&c, "received") >= 2000.0, "{c}");
    assert_eq!(c["failed"], 0);
    check_latency_fields(&c);
    // End-to-end latency counts from the born timestamp, so it is at least
    // the born-to-stored time.
    assert!(num(&c, "max_ms") >= num(&c, "store_avg_ms"), "{c}");
}

#[test]
fn every_send_mode_lands_every_message() {
    let sa = support::start_standalone(&[]);
    let ns = sa.namesrv.to_string();
    create_topic(&ns, &sa.broker.to_string(), "BenchModes");

    let a = summary(&apogee(&[
        "bench",
        "produce",
        "-n",
        &ns,
        "-t",
        "BenchModes",
        "--mode",
        "async",
        "--window",
        "4",
        "-w",
        "4",
        "--batch",
        "10",
        "--count",
        "500",
        "--keys",
        "--tag",
        "TagB",
        "-s",
        "64",
        "--json",
    ]));
    assert_eq!(a["sent"], 500, "{a}");
    assert_eq!(a["failed"], 0, "{a}");
    assert_eq!(a["batch"], 10);
    check_latency_fields(&a);

    let o = summary(&apogee(&[
        "bench",
        "produce",
        "-n",
        &ns,
        "-t",
        "BenchModes",
        "--mode",
        "oneway",
        "-w",
        "2",
        "--count",
        "300",
        "--json",
    ]));
    assert_eq!(o["sent"], 300, "{o}");

    // Oneway sends are not acknowledged: wait for the broker to store them.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = stored(&ns, "BenchModes");
    while n < 800 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        n = stored(&ns, "BenchModes");
    }
    assert_eq!(n, 800);

    // The human summary names the percentiles.
    let r = apogee(&[
        "bench",
        "produce",
        "-n",
        &ns,
        "-t",
        "BenchModes",
        "--count",
        "20",
        "-w",
        "2",
    ]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains("p99.9") && r.stdout.contains("sent        20 messages"),
        "{}",
        r.stdout
    );
}

#[test]
fn failures_exit_non_zero_with_one_line() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = format!("127.0.0.1:{}", l.local_addr().expect("addr").port());
    drop(l);
    for cmd in ["produce", "consume"] {
        let r = apogee(&["bench", cmd, "-n", &closed, "--count", "10", "--json"]);
        assert_eq!(r.code, Some(1), "{cmd}: {}", r.stderr);
        let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{cmd}: {}", r.stderr);
        assert!(
            lines[0].starts_with(&format!("apogee bench {cmd}: ")),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains(&closed), "{}", lines[0]);
    }
    let r = apogee(&["bench", "produce", "--mode", "oneway", "--batch", "4"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("--batch cannot be combined"),
        "{}",
        r.stderr
    );
    let r = apogee(&["bench", "produce", "--count", "5", "--duration", "5"]);
    assert_eq!(r.code, Some(2), "clap rejects --count with --duration");
}

#[test]
fn grpc_produce_then_consume_through_the_endpoint() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let sa = support::start_standalone(&["--set", &format!("grpcServerPort={port}")]);
    let ns = sa.namesrv.to_string();
    create_topic(&ns, &sa.broker.to_string(), "BenchGrpc");
    let grpc = format!("127.0.0.1:{port}");

    let p = summary(&apogee(&[
        "bench",
        "produce",
        "--grpc",
        &grpc,
        "-t",
        "BenchGrpc",
        "--count",
        "1000",
        "-w",
        "8",
        "--batch",
        "2",
        "--keys",
        "--tag",
        "TagG",
        "--json",
    ]));
    assert_eq!(p["sent"], 1000, "{p}");
    assert_eq!(p["failed"], 0, "{p}");
    assert_eq!(p["protocol"], "grpc", "{p}");
    check_latency_fields(&p);
    assert_eq!(stored(&ns, "BenchGrpc"), 1000);

    let c = summary(&apogee(&[
        "bench",
        "consume",
        "--grpc",
        &grpc,
        "-t",
        "BenchGrpc",
        "-g",
        "bench_grpc_group",
        "--count",
        "1000",
        "--duration",
        "45",
        "--json",
    ]));
    assert_eq!(c["bench"], "consume-grpc", "{c}");
    assert!(num(&c, "received") >= 1000.0, "{c}");
    check_latency_fields(&c);
    assert!(
        num(&c, "receive_p50_ms") <= num(&c, "receive_p99_ms"),
        "{c}"
    );
    assert!(num(&c, "ack_p50_ms") <= num(&c, "ack_p99_ms"), "{c}");

    // No endpoint there: one line, non-zero exit.
    let r = apogee(&[
        "bench",
        "produce",
        "--grpc",
        "127.0.0.1:1",
        "-t",
        "BenchGrpc",
        "--count",
        "1",
    ]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("gRPC endpoint"), "{}", r.stderr);
}
