//! Classic master/slave replication with real processes: a NameServer, a
//! SYNC_MASTER and a SLAVE of the same brokerName. Every send the master
//! acknowledged (SEND_OK) is recorded; the master is killed with SIGKILL;
//! every acknowledged message must then be pulled from the slave at the
//! queue and offset its SEND_OK named. The master restarts on its data
//! folder, the slave reconnects, and messages sent to the restarted master
//! reach the slave too.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apogee_client::{AdminClient, Message, MessageQueue, Producer, SendStatus};
use apogee_protocol::body::TopicConfig;
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PullSysFlag;
use apogee_protocol::header::PullMessageRequestHeader;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};

const TOPIC: &str = "HaTopic";
const BROKER_NAME: &str = "broker-ha";
const QUEUES: i32 = 2;

/// A broker process on a data folder the test owns; killed when dropped.
struct Broker {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_broker(namesrv: &str, store: &Path, port: u16, extra: &[&str]) -> Broker {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apogee"));
    cmd.args(["broker", "-n", namesrv, "--listen-port", &port.to_string()]);
    for kv in [
        "bindAddress=127.0.0.1".to_string(),
        "brokerIP1=127.0.0.1".to_string(),
        "diskSpaceWarningLevelRatio=100".to_string(),
        "diskSpaceCleanForciblyRatio=100".to_string(),
        "diskMaxUsedSpaceRatio=100".to_string(),
        format!("storePathRootDir={}", store.display()),
        format!("brokerName={BROKER_NAME}"),
        // Small files keep the test light on disk.
        "mappedFileSizeCommitLog=16777216".to_string(),
        "mappedFileSizeConsumeQueue=60000".to_string(),
        "maxIndexNum=10000".to_string(),
        "maxHashSlotNum=1000".to_string(),
        "haSendHeartbeatInterval=1000".to_string(),
        // Fixed broker ports: the gRPC port must not be the shared default.
        "grpcServerPort=0".to_string(),
    ] {
        cmd.arg("--set").arg(kv);
    }
    for kv in extra {
        cmd.arg("--set").arg(kv);
    }
    match std::env::var_os("APOGEE_HA_TEST_LOGS") {
        Some(dir) => {
            let name = format!("broker-{port}-{}.log", std::process::id());
            let f = std::fs::File::create(Path::new(&dir).join(name)).expect("log file");
            cmd.stdout(Stdio::piped()).stderr(f);
        }
        None => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        }
    }
    let mut child = cmd.spawn().expect("spawn apogee broker");
    let addr = support::read_listen_addrs(&mut child, &["apogee broker listening on "])[0];
    Broker { child, addr }
}

/// A port `p` with `p - 2` (VIP), `p` and `p + 1` (HA) free on loopback,
/// so the master can restart on the same addresses.
fn free_master_port() -> u16 {
    for _ in 0..200 {
        let p = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if p < 3 || p == u16::MAX {
            continue;
        }
        let all_free = [p - 2, p, p + 1]
            .iter()
            .all(|q| TcpListener::bind(("127.0.0.1", *q)).is_ok());
        if all_free {
            return p;
        }
    }
    panic!("no free port triple on loopback");
}

fn pull_header(queue_id: i32, offset: i64) -> PullMessageRequestHeader {
    PullMessageRequestHeader {
        consumer_group: "ha-checker".to_string(),
        topic: TOPIC.to_string(),
        queue_id,
        queue_offset: offset,
        max_msg_nums: 32,
        sys_flag: PullSysFlag::build(false, false, true, false, false).0,
        commit_offset: 0,
        suspend_timeout_millis: 0,
        subscription: Some("*".to_string()),
        sub_version: 0,
        expression_type: Some("TAG".to_string()),
        ..Default::default()
    }
}

/// Every message of the topic the broker at `addr` serves: (queue, offset) → body.
async fn read_all(admin: &AdminClient, addr: &str) -> BTreeMap<(i32, i64), String> {
    let mut out = BTreeMap::new();
    for q in 0..QUEUES {
        let mut off = 0i64;
        loop {
            let r = match admin
                .instance()
                .pull(
                    addr,
                    BROKER_NAME,
                    request_code::PULL_MESSAGE,
                    &pull_header(q, off),
                    Duration::from_secs(5),
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("pull from {addr} failed: {e}");
                    break;
                }
            };
            if r.messages.is_empty() {
                break;
            }
            for m in &r.messages {
                out.insert(
                    (q, m.queue_offset),
                    String::from_utf8_lossy(&m.body).into_owned(),
                );
            }
            off = r.next_begin_offset;
        }
    }
    out
}

/// Sends `n` messages; returns the acknowledged ones ((queue, offset) → body)
/// and how many sends got another answer.
async fn send_n(producer: &Producer, tag: &str, n: usize) -> (BTreeMap<(i32, i64), String>, usize) {
    let mut acked = BTreeMap::new();
    let mut other = 0;
    for i in 0..n {
        let body = format!("{tag}-{i}");
        match producer.send(Message::new(TOPIC, body.clone())).await {
            Ok(r) if r.status == SendStatus::SendOk => {
                acked.insert((r.queue.queue_id, r.queue_offset), body);
            }
            _ => other += 1,
        }
    }
    (acked, other)
}

async fn wait_for<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f().await
}

async fn new_producer(namesrv: &str, group: &str) -> Producer {
    let p = Producer::builder()
        .namesrv_addr(namesrv.to_string())
        .group(group.to_string())
        .build()
        .expect("producer config");
    p.start().await.expect("producer start");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_master_kill_9_loses_no_acknowledged_message() {
    let namesrv = support::start_namesrv(&[]);
    let ns = namesrv.addr.to_string();
    let master_dir = tempfile::tempdir().unwrap();
    let slave_dir = tempfile::tempdir().unwrap();
    let master_port = free_master_port();
    let master_flags = ["brokerRole=SYNC_MASTER", "brokerId=0"];
    let mut master = spawn_broker(&ns, master_dir.path(), master_port, &master_flags);
    let master_addr = master.addr.to_string();
    let admin = AdminClient::builder()
        .namesrv_addr(ns.clone())
        .build()
        .expect("admin");
    admin
        .create_topic(
            &master_addr,
            &TopicConfig {
                topic_name: TOPIC.into(),
                read_queue_nums: QUEUES,
                write_queue_nums: QUEUES,
                ..Default::default()
            },
        )
        .await
        .expect("create topic");

    let routed = wait_for(Duration::from_secs(20), || async {
        admin
            .topic_route(TOPIC)
            .await
            .is_ok_and(|r| r.queue_datas.iter().any(|q| q.write_queue_nums == QUEUES))
    })
    .await;
    assert!(routed, "the NameServer never routed the topic");

    // No slave yet: the message is stored, but the answer says no slave has it.
    let producer = new_producer(&ns, "ha-producer").await;
    let lonely = producer
        .send(Message::new(TOPIC, "no-slave-yet"))
        .await
        .expect("send without a slave");
    assert_eq!(lonely.status, SendStatus::SlaveNotAvailable);

    let slave = spawn_broker(
        &ns,
        slave_dir.path(),
        0,
        &["brokerRole=SLAVE", "brokerId=1"],
    );
    let slave_addr = slave.addr.to_string();
    // A slave refuses sends and consumer send-backs before reading them
    // (Java's rejectRequest on a slave: SYSTEM_BUSY); either would fork its
    // CommitLog from the master's.
    let raw = RemotingClient::new(ClientConfig::default());
    for code in [
        request_code::SEND_MESSAGE_V2,
        request_code::CONSUMER_SEND_MSG_BACK,
    ] {
        let refused = raw
            .invoke(
                &slave_addr,
                RemotingCommand::request(code),
                Duration::from_secs(5),
            )
            .await
            .expect("slave answers");
        assert_eq!(
            refused.code,
            response_code::SYSTEM_BUSY,
            "code {code}: {:?}",
            refused.remark
        );
    }
    raw.close().await;

    // The slave copies topic configs from its master every few seconds:
    // wait until it knows the topic (its data comes with every send).
    let known = wait_for(Duration::from_secs(20), || async {
        admin
            .instance()
            .pull(
                &slave_addr,
                BROKER_NAME,
                request_code::PULL_MESSAGE,
                &pull_header(0, 0),
                Duration::from_secs(5),
            )
            .await
            .is_ok()
    })
    .await;
    assert!(
        known,
        "the slave never copied the topic config from its master"
    );

    // The first sends wait for the slave's link (SLAVE_NOT_AVAILABLE before).
    let warm = wait_for(Duration::from_secs(30), || async {
        matches!(
            producer.send(Message::new(TOPIC, "warm-up")).await,
            Ok(r) if r.status == SendStatus::SendOk
        )
    })
    .await;
    assert!(
        warm,
        "the SYNC_MASTER never acknowledged a send with its slave"
    );

    let n = 400;
    let (acked, other) = send_n(&producer, "before-kill", n).await;
    assert_eq!(other, 0, "every send with a live slave is SEND_OK");
    assert_eq!(acked.len(), n);

    // Both sides report the link (GET_BROKER_HA_STATUS, mqadmin haStatus).
    let status = wait_for(Duration::from_secs(10), || async {
        let Ok(m) = admin.ha_status(&master_addr).await else {
            return false;
        };
        let conns = m["haConnectionInfo"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        m["master"] == true
            && conns.len() == 1
            && conns[0]["inSync"] == true
            && conns[0]["slaveAckOffset"] == m["masterCommitLogMaxOffset"]
    })
    .await;
    assert!(status, "the master's HA status shows its slave in sync");
    let s = admin.ha_status(&slave_addr).await.expect("slave HA status");
    assert_eq!(s["master"], false);
    assert_eq!(
        s["haClientRuntimeInfo"]["masterAddr"].as_str(),
        Some(format!("127.0.0.1:{}", master_port + 1).as_str())
    );
    let out = Command::new(env!("CARGO_BIN_EXE_apogee"))
        .args(["admin", "-n", &ns, "haStatus", "-b", &master_addr, "--json"])
        .output()
        .expect("apogee admin haStatus");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("haStatus JSON");
    assert_eq!(v[&master_addr]["inSyncSlaveNums"], 1, "{v}");

    // kill -9 the master: what it acknowledged must be on the slave.
    master.child.kill().expect("kill -9 the master");
    let _ = master.child.wait();
    let killed_at = Instant::now();
    // The slave copies the topic from the master every few seconds; it had
    // plenty of time while the sends ran, but wait for it if needed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (on_slave, complete) = loop {
        let on_slave = read_all(&admin, &slave_addr).await;
        let complete = acked.keys().all(|k| on_slave.contains_key(k));
        if complete || Instant::now() > deadline {
            break (on_slave, complete);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing: Vec<_> = acked
        .iter()
        .filter(|(k, v)| on_slave.get(*k) != Some(*v))
        .take(5)
        .collect();
    assert!(
        complete && missing.is_empty(),
        "acknowledged messages not on the slave at their queue/offset: {missing:?} \
         ({} of {} there)",
        on_slave.len(),
        acked.len()
    );
    eprintln!(
        "HA_SUMMARY acked={} on_slave={} checked_in_ms={}",
        acked.len(),
        on_slave.len(),
        killed_at.elapsed().as_millis()
    );

    // The slave answers offset queries for its queues.
    let direct = admin
        .instance()
        .max_offset(
            &slave_addr,
            &MessageQueue {
                topic: TOPIC.into(),
                broker_name: BROKER_NAME.into(),
                queue_id: 0,
            },
        )
        .await
        .expect("max offset from the slave");
    let q0 = acked.keys().filter(|(q, _)| *q == 0).count() as i64;
    assert!(direct >= q0, "slave queue 0 holds {direct}, acked {q0}");

    // Restart the master on its data: the slave reconnects and catches up.
    drop(master);
    let master = spawn_broker(&ns, master_dir.path(), master_port, &master_flags);
    assert_eq!(master.addr.port(), master_port);
    let producer2 = new_producer(&ns, "ha-producer-2").await;
    let warm = wait_for(Duration::from_secs(30), || async {
        matches!(
            producer2.send(Message::new(TOPIC, "warm-up-2")).await,
            Ok(r) if r.status == SendStatus::SendOk
        )
    })
    .await;
    assert!(warm, "the restarted master never got its slave back");
    let (acked2, other2) = send_n(&producer2, "after-restart", 100).await;
    assert_eq!(other2, 0);
    for (k, v) in &acked2 {
        assert!(
            !acked.contains_key(k),
            "offset {k:?} acknowledged twice (before and after the restart)"
        );
        assert_eq!(acked.get(k), None, "{v}");
    }
    let reached = wait_for(Duration::from_secs(20), || {
        let admin = &admin;
        let slave_addr = &slave_addr;
        let acked2 = &acked2;
        async move {
            let s = read_all(admin, slave_addr).await;
            acked2.iter().all(|(k, v)| s.get(k) == Some(v))
        }
    })
    .await;
    assert!(
        reached,
        "messages sent to the restarted master reached the slave"
    );
    // The old ones are still there too.
    let s = read_all(&admin, &slave_addr).await;
    assert!(acked.iter().all(|(k, v)| s.get(k) == Some(v)));
    producer.shutdown().await;
    producer2.shutdown().await;
    admin.shutdown().await;
    drop(slave);
    drop(master);
}
