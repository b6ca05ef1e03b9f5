//! `apogee admin` end to end: every command's help, failures (unreachable
//! NameServer, unknown topic or group) and the commands' tables and JSON
//! against a real `apogee namesrv` / `apogee standalone` process.

mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// What one `apogee` run printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        self.ok();
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// Asserts a failure with exactly one `apogee admin: …` line on stderr
    /// and nothing on stdout; returns that line.
    fn failed_line(&self) -> String {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit code 1; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(self.stdout.trim().is_empty(), "stdout: {}", self.stdout);
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "stderr should be one line: {}", self.stderr);
        assert!(lines[0].starts_with("apogee admin: "), "{}", lines[0]);
        lines[0].to_string()
    }
}

/// Runs the binary with `args` (50 s at most).
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
    match rx.recv_timeout(Duration::from_secs(50)) {
        Ok(Ok(out)) => Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("waiting for apogee {args:?}: {e}"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("apogee {args:?} did not finish within 50 s");
        }
    }
}

/// `apogee admin <args…> -n <ns>`.
fn admin(ns: &str, args: &[&str]) -> Run {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-n", ns]);
    apogee(&all)
}

/// Retries `f` until it returns `Some` (10 s at most).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A 127.0.0.1 port nobody listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

const COMMANDS: &[(&str, &str)] = &[
    ("clusterList", "cluster-list"),
    ("topicList", "topic-list"),
    ("topicRoute", "topic-route"),
    ("topicStatus", "topic-status"),
    ("updateTopic", "update-topic"),
    ("deleteTopic", "delete-topic"),
    ("updateSubGroup", "update-sub-group"),
    ("deleteSubGroup", "delete-sub-group"),
    ("setConsumeMode", "set-consume-mode"),
    ("consumerProgress", "consumer-progress"),
    ("consumerConnection", "consumer-connection"),
    ("brokerStatus", "broker-status"),
    ("queryMsgById", "query-msg-by-id"),
    ("queryMsgByKey", "query-msg-by-key"),
    ("queryMsgByOffset", "query-msg-by-offset"),
    ("resetOffsetByTime", "reset-offset-by-time"),
    ("sendMessage", "send-message"),
    ("consumeMessage", "consume-message"),
    ("getBrokerConfig", "get-broker-config"),
    ("updateBrokerConfig", "update-broker-config"),
    ("cleanUnusedTopic", "clean-unused-topic"),
    ("cleanExpiredCQ", "clean-expired-cq"),
];

#[test]
fn every_command_has_help_with_examples_under_both_names() {
    let top = apogee(&["admin", "--help"]);
    top.ok();
    assert!(top.stdout.contains("Example"), "{}", top.stdout);
    for (camel, kebab) in COMMANDS {
        assert!(top.stdout.contains(camel), "admin --help lists {camel}");
        for name in [camel, kebab] {
            let r = apogee(&["admin", name, "--help"]);
            r.ok();
            assert!(
                r.stdout.contains("Example"),
                "apogee admin {name} --help has no example:\n{}",
                r.stdout
            );
            assert!(
                r.stdout.contains(&format!("apogee admin {camel}")),
                "{name}: the examples use the command"
            );
            assert!(
                r.stdout.contains("-n, --namesrv-addr"),
                "{name}: -n is documented"
            );
        }
    }
}

#[test]
fn unreachable_namesrv_fails_with_one_clear_line() {
    let port = closed_port();
    let ns = format!("127.0.0.1:{port}");
    for args in [
        &["clusterList"][..],
        &["topicList"][..],
        &["topicList", "--json"][..],
        &["topicRoute", "-t", "TopicTest"][..],
        &["consumerProgress", "-g", "GroupA"][..],
        &[
            "sendMessage",
            "-t",
            "TopicTest",
            "-p",
            "hi",
            "--timeout-ms",
            "2000",
        ][..],
    ] {
        let line = admin(&ns, args).failed_line();
        assert!(line.contains(&ns), "{args:?}: names the NameServer: {line}");
        assert!(
            line.contains("connect") || line.contains("refused"),
            "{args:?}: says what went wrong: {line}"
        );
    }
    // Usage errors are clap's: exit code 2.
    let r = admin(&ns, &["updateTopic", "-t", "T"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--broker-addr") && r.stderr.contains("--cluster"));
}

#[test]
fn namesrv_without_brokers() {
    let ns_proc = support::start_namesrv(&[]);
    let ns = ns_proc.addr.to_string();

    let r = admin(&ns, &["clusterList"]);
    r.ok();
    assert!(r.stdout.contains("no broker is registered"), "{}", r.stdout);
    let v = admin(&ns, &["cluster-list", "--json"]).json();
    assert_eq!(v["brokers"], Value::Array(vec![]));

    let v = admin(&ns, &["topicList", "--json"]).json();
    assert!(v["topics"].is_array(), "{v}");

    let line = admin(&ns, &["topicRoute", "-t", "NoSuchTopic"]).failed_line();
    assert!(line.contains("topic NoSuchTopic does not exist"), "{line}");
    let line = admin(&ns, &["topicStatus", "-t", "NoSuchTopic", "--json"]).failed_line();
    assert!(line.contains("topic NoSuchTopic does not exist"), "{line}");
    let line = admin(&ns, &["updateTopic", "-c", "NoCluster", "-t", "T"]).failed_line();
    assert!(line.contains("NoCluster"), "{line}");
    let line = admin(
        &ns,
        &["resetOffsetByTime", "-g", "G", "-t", "T", "-s", "yesterday"],
    )
    .failed_line();
    assert!(line.contains("yyyy-MM-dd#HH:mm:ss:SSS"), "{line}");
}

#[test]
fn topics_and_messages_end_to_end() {
    let sa = support::start_standalone(&[]);
    let ns = sa.namesrv.to_string();
    let broker_addr = sa.broker.to_string();

    // clusterList: table and JSON name the broker.
    let r = admin(&ns, &["clusterList"]);
    r.ok();
    let header = r.stdout.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("CLUSTER") && header.contains("ADDR"),
        "{header}"
    );
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("DefaultCluster") && l.contains(&broker_addr)),
        "{}",
        r.stdout
    );
    let v = admin(&ns, &["clusterList", "--json"]).json();
    let b = &v["brokers"][0];
    assert_eq!(b["cluster"], "DefaultCluster");
    assert_eq!(b["addr"], broker_addr.as_str());
    assert_eq!(b["broker_id"], 0);
    assert!(b["runtime"].is_object(), "{v}");
    let broker_name = b["broker_name"].as_str().unwrap_or_default().to_string();
    assert!(!broker_name.is_empty());

    // updateTopic on the cluster, then the route shows it.
    let r = admin(
        &ns,
        &[
            "updateTopic",
            "-c",
            "DefaultCluster",
            "-t",
            "AdminTopic",
            "-r",
            "4",
            "-w",
            "4",
        ],
    );
    r.ok();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with(&broker_addr) && l.ends_with("OK")),
        "{}",
        r.stdout
    );
    let route = eventually("the route of AdminTopic", || {
        let r = admin(&ns, &["topicRoute", "-t", "AdminTopic", "--json"]);
        (r.code == Some(0)).then(|| r.json())
    });
    assert_eq!(route["queueDatas"][0]["readQueueNums"], 4, "{route}");
    assert_eq!(route["queueDatas"][0]["writeQueueNums"], 4, "{route}");
    assert_eq!(route["brokerDatas"][0]["brokerName"], broker_name.as_str());
    let r = admin(&ns, &["topic-route", "-t", "AdminTopic"]);
    r.ok();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with(&broker_name) && l.contains("RW-")),
        "{}",
        r.stdout
    );
    let v = admin(&ns, &["topicList", "--json"]).json();
    assert!(
        v["topics"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "AdminTopic")),
        "{v}"
    );
    let r = admin(&ns, &["topicList"]);
    assert!(r.ok().stdout.lines().any(|l| l == "AdminTopic"));

    // sendMessage, then find it every way.
    let sent = admin(
        &ns,
        &[
            "sendMessage",
            "-t",
            "AdminTopic",
            "-p",
            "hello admin",
            "-c",
            "TagA",
            "-k",
            "order-42",
            "--json",
        ],
    )
    .json();
    assert_eq!(sent["status"], "SEND_OK", "{sent}");
    assert_eq!(sent["broker_name"], broker_name.as_str());
    let qid = sent["queue_id"].as_i64().unwrap_or(-1);
    let offset = sent["queue_offset"].as_i64().unwrap_or(-1);
    assert!((0..4).contains(&qid), "{sent}");
    assert_eq!(offset, 0);
    let msg_id = sent["msg_id"].as_str().unwrap_or_default().to_string();
    let offset_msg_id = sent["offset_msg_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let v = admin(&ns, &["queryMsgById", "-i", &offset_msg_id, "--json"]).json();
    let m = &v["messages"][0];
    assert_eq!(m["body"], "hello admin", "{v}");
    assert_eq!(m["tags"], "TagA");
    assert_eq!(m["keys"][0], "order-42");
    assert_eq!(m["queue_id"], qid);
    // The unique-key index is built by the dispatcher, just behind the append.
    let v = eventually("the unique-key index", || {
        let r = admin(
            &ns,
            &["queryMsgById", "-t", "AdminTopic", "-i", &msg_id, "--json"],
        );
        (r.code == Some(0)).then(|| r.json())
    });
    assert_eq!(
        v["messages"][0]["offset_msg_id"],
        offset_msg_id.as_str(),
        "{v}"
    );
    let line = admin(&ns, &["queryMsgById", "-i", &msg_id]).failed_line();
    assert!(
        line.contains("-t"),
        "a unique id without a topic asks for one: {line}"
    );

    let found = eventually("the key index", || {
        let v = admin(
            &ns,
            &[
                "queryMsgByKey",
                "-t",
                "AdminTopic",
                "-k",
                "order-42",
                "--json",
            ],
        )
        .json();
        (v["messages"].as_array().map_or(0, Vec::len) == 1).then_some(v)
    });
    assert_eq!(found["messages"][0]["msg_id"], msg_id.as_str());
    let r = admin(
        &ns,
        &["queryMsgByKey", "-t", "AdminTopic", "-k", "order-42"],
    );
    assert!(
        r.ok().stdout.lines().any(|l| l.starts_with(&msg_id)),
        "{}",
        r.stdout
    );

    let q = qid.to_string();
    let r = admin(
        &ns,
        &[
            "queryMsgByOffset",
            "-t",
            "AdminTopic",
            "-b",
            &broker_name,
            "-i",
            &q,
            "-o",
            "0",
        ],
    );
    r.ok();
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("Body:") && l.ends_with("hello admin")),
        "{}",
        r.stdout
    );
    let line = admin(
        &ns,
        &[
            "queryMsgByOffset",
            "-t",
            "AdminTopic",
            "-b",
            &broker_name,
            "-i",
            &q,
            "-o",
            "5",
        ],
    )
    .failed_line();
    assert!(line.contains("no message at offset 5"), "{line}");

    // topicStatus: exactly one message on the chosen queue.
    let v = admin(&ns, &["topicStatus", "-t", "AdminTopic", "--json"]).json();
    assert_eq!(v["messages"], 1, "{v}");
    let queues = v["queues"].as_array().cloned().unwrap_or_default();
    assert_eq!(queues.len(), 4);
    for q in &queues {
        let expect = if q["queue_id"] == qid { 1 } else { 0 };
        assert_eq!(q["max_offset"], expect, "{q}");
    }
    let r = admin(&ns, &["topicStatus", "-t", "AdminTopic"]);
    assert!(r.ok().stdout.starts_with("BROKER"), "{}", r.stdout);

    // consumeMessage prints it (and only it).
    let v = admin(&ns, &["consumeMessage", "-t", "AdminTopic", "--json"]).json();
    let msgs = v["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(msgs.len(), 1, "{v}");
    assert_eq!(msgs[0]["body"], "hello admin");
    let v = admin(
        &ns,
        &[
            "consumeMessage",
            "-t",
            "AdminTopic",
            "-b",
            &broker_name,
            "-i",
            &q,
            "-o",
            "1",
            "--json",
        ],
    )
    .json();
    assert_eq!(
        v["messages"].as_array().map(Vec::len),
        Some(0),
        "nothing after offset 0: {v}"
    );

    // sendMessage to an explicit queue.
    let v = admin(
        &ns,
        &[
            "send-message",
            "-t",
            "AdminTopic",
            "-p",
            "second",
            "-b",
            &broker_name,
            "-i",
            "3",
            "--json",
        ],
    )
    .json();
    assert_eq!(v["queue_id"], 3, "{v}");

    // deleteTopic: gone from the NameServer afterwards.
    let r = admin(
        &ns,
        &["deleteTopic", "-t", "AdminTopic", "-c", "DefaultCluster"],
    );
    r.ok();
    let line = eventually("the topic to disappear", || {
        let r = admin(&ns, &["topicRoute", "-t", "AdminTopic"]);
        (r.code == Some(1)).then(|| r.failed_line())
    });
    assert!(line.contains("does not exist"), "{line}");
}

#[test]
fn groups_and_brokers_end_to_end() {
    let sa = support::start_standalone(&[]);
    let ns = sa.namesrv.to_string();
    let broker_addr = sa.broker.to_string();

    admin(
        &ns,
        &[
            "updateTopic",
            "-b",
            &broker_addr,
            "-t",
            "GroupTopic",
            "-r",
            "2",
            "-w",
            "2",
        ],
    )
    .ok();
    eventually("the route of GroupTopic", || {
        (admin(&ns, &["topicRoute", "-t", "GroupTopic"]).code == Some(0)).then_some(())
    });
    for body in ["one", "two", "three"] {
        admin(&ns, &["sendMessage", "-t", "GroupTopic", "-p", body]).ok();
    }

    // updateSubGroup: JSON echoes the config that was sent.
    let v = admin(
        &ns,
        &[
            "updateSubGroup",
            "-c",
            "DefaultCluster",
            "-g",
            "AdminGroup",
            "-r",
            "3",
            "--json",
        ],
    )
    .json();
    assert_eq!(v["brokers"][0]["ok"], true, "{v}");
    assert_eq!(v["group_config"]["retryMaxTimes"], 3);
    assert_eq!(v["group_config"]["groupName"], "AdminGroup");

    // setConsumeMode: POP for (GroupTopic, AdminGroup); retry topics refused.
    let v = admin(
        &ns,
        &[
            "setConsumeMode",
            "-c",
            "DefaultCluster",
            "-t",
            "GroupTopic",
            "-g",
            "AdminGroup",
            "-m",
            "pop",
            "--json",
        ],
    )
    .json();
    assert_eq!(v["brokers"][0]["ok"], true, "{v}");
    assert_eq!(v["mode"], "POP", "{v}");
    let r = admin(
        &ns,
        &[
            "setConsumeMode",
            "-c",
            "DefaultCluster",
            "-t",
            "%RETRY%AdminGroup",
            "-g",
            "AdminGroup",
            "-m",
            "POP",
        ],
    );
    assert_ne!(
        r.code,
        Some(0),
        "a retry topic's mode is refused: {}",
        r.stdout
    );
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("retry topic"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert_ne!(
        admin(
            &ns,
            &[
                "setConsumeMode",
                "-c",
                "DefaultCluster",
                "-t",
                "GroupTopic",
                "-g",
                "AdminGroup",
                "-m",
                "PUSH"
            ]
        )
        .code,
        Some(0)
    );

    // Reset to the beginning: every queue at 0, so the lag is all 3 messages.
    let v = admin(
        &ns,
        &[
            "resetOffsetByTime",
            "-g",
            "AdminGroup",
            "-t",
            "GroupTopic",
            "-s",
            "0",
            "--json",
        ],
    )
    .json();
    let queues = v["queues"].as_array().cloned().unwrap_or_default();
    assert_eq!(queues.len(), 2, "{v}");
    assert!(queues.iter().all(|q| q["offset"] == 0), "{v}");
    let v = admin(
        &ns,
        &[
            "consumerProgress",
            "-g",
            "AdminGroup",
            "-t",
            "GroupTopic",
            "--json",
        ],
    )
    .json();
    assert_eq!(v["diff_total"], 3, "{v}");
    let per_queue: i64 = v["queues"]
        .as_array()
        .map(|q| q.iter().map(|q| q["diff"].as_i64().unwrap_or(0)).sum())
        .unwrap_or(0);
    assert_eq!(per_queue, 3);
    let r = admin(
        &ns,
        &["consumerProgress", "-g", "AdminGroup", "-t", "GroupTopic"],
    );
    r.ok();
    assert!(r.stdout.starts_with("TOPIC"), "{}", r.stdout);
    assert!(r.stdout.contains("Diff Total: 3"), "{}", r.stdout);

    // Reset to now: nothing left to consume.
    let v = admin(
        &ns,
        &[
            "reset-offset-by-time",
            "-g",
            "AdminGroup",
            "-t",
            "GroupTopic",
            "-s",
            "now",
            "--json",
        ],
    )
    .json();
    let total: i64 = v["queues"]
        .as_array()
        .map(|q| q.iter().map(|q| q["offset"].as_i64().unwrap_or(0)).sum())
        .unwrap_or(0);
    assert_eq!(total, 3, "{v}");
    let v = admin(
        &ns,
        &[
            "consumerProgress",
            "-g",
            "AdminGroup",
            "-t",
            "GroupTopic",
            "--json",
        ],
    )
    .json();
    assert_eq!(v["diff_total"], 0, "{v}");

    // No consumer of the group is connected.
    let line = admin(&ns, &["consumerConnection", "-g", "AdminGroup"]).failed_line();
    assert!(line.contains("AdminGroup"), "{line}");
    // A group nobody ever used and no topic: a plain "unknown".
    let line = admin(&ns, &["consumerProgress", "-g", "NeverUsedGroup"]).failed_line();
    assert!(line.contains("NeverUsedGroup is unknown"), "{line}");

    let r = admin(
        &ns,
        &[
            "deleteSubGroup",
            "-b",
            &broker_addr,
            "-g",
            "AdminGroup",
            "-r",
        ],
    );
    r.ok();
    assert!(r.stdout.contains("OK"), "{}", r.stdout);

    // Broker status and config.
    let v = admin(&ns, &["brokerStatus", "-b", &broker_addr, "--json"]).json();
    assert!(v[&broker_addr]["brokerVersionDesc"].is_string(), "{v}");
    let r = admin(&ns, &["brokerStatus", "-c", "DefaultCluster"]);
    assert!(
        r.ok()
            .stdout
            .lines()
            .any(|l| l.starts_with("brokerVersionDesc")),
        "{}",
        r.stdout
    );
    admin(
        &ns,
        &[
            "updateBrokerConfig",
            "-c",
            "DefaultCluster",
            "-k",
            "maxTransferCountOnMessageInMemory",
            "-v",
            "48",
        ],
    )
    .ok();
    let v = admin(&ns, &["getBrokerConfig", "-b", &broker_addr, "--json"]).json();
    assert_eq!(
        v[&broker_addr]["maxTransferCountOnMessageInMemory"], "48",
        "{v}"
    );
    // The manual cleanups answer OK per broker.
    for cmd in ["cleanUnusedTopic", "cleanExpiredCQ"] {
        let v = admin(&ns, &[cmd, "-c", "DefaultCluster", "--json"]).json();
        assert_eq!(v["brokers"][0]["broker_addr"], broker_addr.as_str(), "{v}");
        assert_eq!(v["brokers"][0]["ok"], true, "{cmd}: {v}");
    }
    let r = admin(&ns, &["get-broker-config", "-b", &broker_addr]);
    assert!(
        r.ok()
            .stdout
            .lines()
            .any(|l| l.starts_with("maxTransferCountOnMessageInMemory ") && l.ends_with(" 48")),
        "{}",
        r.stdout
    );
    // A key the broker refuses to change live: the table says which broker
    // failed and why, and the exit code is 1.
    let r = admin(
        &ns,
        &[
            "updateBrokerConfig",
            "-b",
            &broker_addr,
            "-k",
            "maxMessageSize",
            "-v",
            "8388608",
        ],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with(&broker_addr) && l.contains("FAILED")),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("failed on 1 of 1 broker"), "{}", r.stderr);
    let closed = format!("127.0.0.1:{}", closed_port());
    let line = admin(&ns, &["getBrokerConfig", "-b", &closed]).failed_line();
    assert!(line.contains(&closed), "{line}");
}

/// consumerProgress counts POP messages popped and not yet acked, and
/// brokerStatus counts half messages waiting for a decision.
#[test]
fn pop_inflight_and_undecided_half_messages_are_counted() {
    use apogee_client::consumer::ConsumeFromWhere;
    use apogee_client::{LocalTransactionState, Message, Producer, SendStatus, SimpleConsumer};

    // No check-back within the test: undecided ones stay undecided.
    let sa = support::start_standalone(&[
        "--set",
        "transactionTimeOut=600000",
        "--set",
        "transactionCheckInterval=600000",
    ]);
    let ns = sa.namesrv.to_string();
    let broker_addr = sa.broker.to_string();
    admin(
        &ns,
        &[
            "updateTopic",
            "-b",
            &broker_addr,
            "-t",
            "PopTopic",
            "-r",
            "1",
            "-w",
            "1",
        ],
    )
    .ok();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let producer = Producer::builder()
        .namesrv_addr(ns.clone())
        .group("count-pg")
        .transaction_checker(|_: &apogee_client::MessageExt| LocalTransactionState::Unknown)
        .build()
        .expect("producer");
    let consumer = SimpleConsumer::builder()
        .namesrv_addr(ns.clone())
        .group("count-popg")
        .subscribe("PopTopic", "*")
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .await_duration(Duration::from_millis(500))
        .build()
        .expect("simple consumer");
    let received = rt.block_on(async {
        producer.start().await.expect("start producer");
        for i in 0..5 {
            let r = producer
                .send(Message::new("PopTopic", format!("pop-{i}")))
                .await
                .expect("send");
            assert_eq!(r.status, SendStatus::SendOk);
        }
        for (body, decide) in [
            ("tx-commit", LocalTransactionState::Commit),
            ("tx-rollback", LocalTransactionState::Rollback),
            ("tx-open-1", LocalTransactionState::Unknown),
            ("tx-open-2", LocalTransactionState::Unknown),
            ("tx-open-3", LocalTransactionState::Unknown),
        ] {
            let r = producer
                .send_in_transaction(Message::new("PopTopic", body), |_, _| decide)
                .await
                .expect("transactional send");
            assert_eq!(r.send.status, SendStatus::SendOk);
        }
        consumer.start().await.expect("start consumer");
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        // The committed transactional message is on the topic too.
        while got.len() < 6 && Instant::now() < deadline {
            got.extend(
                consumer
                    .receive(16, Duration::from_secs(120))
                    .await
                    .expect("receive"),
            );
        }
        got
    });
    assert_eq!(received.len(), 6, "five plain and one committed message");

    let inflight_total = || {
        admin(&ns, &["consumerProgress", "-g", "count-popg", "--json"]).json()["inflight_total"]
            .as_i64()
    };
    eventually("6 in flight", || {
        (inflight_total() == Some(6)).then_some(())
    });
    rt.block_on(async {
        for m in &received[..4] {
            consumer.ack(m).await.expect("ack");
        }
    });
    eventually("2 in flight after 4 acks", || {
        (inflight_total() == Some(2)).then_some(())
    });
    let text = admin(&ns, &["consumerProgress", "-g", "count-popg"])
        .ok()
        .stdout
        .clone();
    assert!(
        text.contains("INFLIGHT") && text.contains("Inflight Total: 2"),
        "{text}"
    );

    let undecided = || {
        let v = admin(&ns, &["brokerStatus", "-b", &broker_addr, "--json"]).json();
        v[broker_addr.as_str()]["transactionHalfUndecided"]
            .as_str()
            .map(str::to_owned)
    };
    eventually("3 undecided half messages", || {
        (undecided().as_deref() == Some("3")).then_some(())
    });
    rt.block_on(async {
        consumer.shutdown().await;
        producer.shutdown().await;
    });
}
