//! Controller mode (automatic failover) with real processes on loopback:
//! three `apogee controller`s, a NameServer and two brokers of one broker
//! set with `enableControllerMode=true`. Every SEND_OK is recorded; the
//! master is killed with SIGKILL; the controller must elect the other
//! replica, which registers as brokerId 0 within 10 s, holds every
//! acknowledged message at the queue and offset its SEND_OK named, and
//! takes new sends. The old master then restarts on its data and rejoins
//! as a slave. A second test takes the quorum away from the controllers.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_client::{AdminClient, Message, Producer, SendStatus};
use apogee_protocol::body::TopicConfig;
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PullSysFlag;
use apogee_protocol::header::PullMessageRequestHeader;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};

const TOPIC: &str = "FailoverTopic";

/// One scenario at a time: each runs three controllers and two brokers
/// whose failover timing the test measures; run side by side on a 2-core
/// machine they starve each other's heartbeats.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const BROKER_NAME: &str = "broker-fo";
const QUEUES: i32 = 2;

/// A child process whose stderr goes to a log file; killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }
}

/// A loopback port that is free now, with `port - 2` and `port + 1` free
/// too (a broker's VIP and HA ports), so it can be reused on restart.
fn free_port() -> u16 {
    for _ in 0..200 {
        let p = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if p < 3 || p == u16::MAX {
            continue;
        }
        if [p - 2, p, p + 1]
            .iter()
            .all(|q| TcpListener::bind(("127.0.0.1", *q)).is_ok())
        {
            return p;
        }
    }
    panic!("no free port triple on loopback");
}

fn spawn(args: &[String], log: &Path, prefix: &'static str) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apogee"));
    cmd.args(args)
        .env("APOGEE_LOG", "info,openraft=warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"));
    let mut child = cmd.spawn().expect("spawn apogee");
    let addr = support::read_listen_addrs(&mut child, &[prefix])[0];
    (
        Proc {
            child,
            log: log.to_path_buf(),
        },
        addr,
    )
}

struct ControllerGroup {
    procs: Vec<Option<Proc>>,
    addrs: Vec<String>,
    /// Each member's command line, to restart it on its ports and store.
    args: Vec<Vec<String>>,
    dir: PathBuf,
}

impl ControllerGroup {
    /// The index of the member that says it leads.
    async fn leader(&self, client: &RemotingClient) -> Option<usize> {
        for (i, a) in self.addrs.iter().enumerate() {
            let req = RemotingCommand::request(request_code::CONTROLLER_GET_METADATA_INFO);
            if let Ok(r) = client.invoke(a, req, Duration::from_secs(1)).await {
                if r.ext("isLeader") == Some("true") {
                    return Some(i);
                }
            }
        }
        None
    }

    fn restart(&mut self, i: usize) {
        let log = self.dir.join(format!("controller-n{i}-{}.log", now_ms()));
        let (p, addr) = spawn(&self.args[i], &log, "apogee controller listening on ");
        assert_eq!(addr.to_string(), self.addrs[i]);
        self.procs[i] = Some(p);
    }
}

fn start_controllers(dir: &Path) -> ControllerGroup {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("n{i}-127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(";");
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    let mut all_args = Vec::new();
    for (i, (listen, _)) in ports.iter().enumerate() {
        let args: Vec<String> = [
            "controller".to_string(),
            "--set".into(),
            "bindAddress=127.0.0.1".into(),
            "--set".into(),
            format!("listenPort={listen}"),
            "--set".into(),
            format!("controllerDLegerPeers={peers}"),
            "--set".into(),
            format!("controllerDLegerSelfId=n{i}"),
            "--set".into(),
            format!(
                "controllerStorePath={}",
                dir.join(format!("ctl-n{i}")).display()
            ),
            "--set".into(),
            "scanNotActiveBrokerInterval=300".into(),
            "--set".into(),
            "electionTimeoutMills=500".into(),
        ]
        .to_vec();
        let (p, addr) = spawn(
            &args,
            &dir.join(format!("controller-n{i}.log")),
            "apogee controller listening on ",
        );
        procs.push(Some(p));
        addrs.push(addr.to_string());
        all_args.push(args);
    }
    ControllerGroup {
        procs,
        addrs,
        args: all_args,
        dir: dir.to_path_buf(),
    }
}

fn spawn_broker(
    dir: &Path,
    name: &str,
    ns: &str,
    ctl: &str,
    port: u16,
    extra: &[&str],
) -> (Proc, String) {
    // The same name is the same data folder (a restart).
    let store = dir.join(name);
    let mut args: Vec<String> = vec![
        "broker".into(),
        "-n".into(),
        ns.into(),
        "--listen-port".into(),
        port.to_string(),
    ];
    for kv in [
        "bindAddress=127.0.0.1".to_string(),
        "brokerIP1=127.0.0.1".to_string(),
        "diskSpaceWarningLevelRatio=100".to_string(),
        "diskSpaceCleanForciblyRatio=100".to_string(),
        "diskMaxUsedSpaceRatio=100".to_string(),
        format!("storePathRootDir={}", store.display()),
        format!("brokerName={BROKER_NAME}"),
        "mappedFileSizeCommitLog=16777216".to_string(),
        "mappedFileSizeConsumeQueue=60000".to_string(),
        "maxIndexNum=10000".to_string(),
        "maxHashSlotNum=1000".to_string(),
        "haSendHeartbeatInterval=1000".to_string(),
        "brokerRole=SYNC_MASTER".to_string(),
        "enableControllerMode=true".to_string(),
        format!("controllerAddr={ctl}"),
        "controllerHeartBeatTimeoutMills=3000".to_string(),
        "brokerHeartbeatInterval=300".to_string(),
        // The new master's NameServer registration moves clients' routes.
        "registerNameServerPeriod=2000".to_string(),
    ] {
        args.push("--set".into());
        args.push(kv);
    }
    for kv in extra {
        args.push("--set".into());
        args.push(kv.to_string());
    }
    let (p, addr) = spawn(
        &args,
        &dir.join(format!("{name}-{}.log", now_ms())),
        "apogee broker listening on ",
    );
    (p, addr.to_string())
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The controller leader's view of the broker set: (master address,
/// SyncStateSet size, master epoch).
async fn replica_info(client: &RemotingClient, ctl: &[String]) -> Option<(String, usize, u32)> {
    for addr in ctl {
        let mut req = RemotingCommand::request(request_code::CONTROLLER_GET_REPLICA_INFO);
        req.set_ext("brokerName", BROKER_NAME);
        let Ok(resp) = client.invoke(addr, req, Duration::from_secs(2)).await else {
            continue;
        };
        if resp.code != response_code::SUCCESS {
            continue;
        }
        let master = resp.ext("masterAddress")?.to_string();
        let epoch = resp.ext("masterEpoch")?.parse().ok()?;
        let body: serde_json::Value =
            serde_json::from_slice(resp.body.as_deref().unwrap_or_default()).ok()?;
        let n = body["syncStateSet"].as_array().map_or(0, Vec::len);
        return Some((master, n, epoch));
    }
    None
}

/// REGISTER_BROKER of `addr` as brokerId 0 of the broker set, with
/// `state_version` as a broker of that master epoch sends it.
fn stale_master_registration(addr: &str, state_version: i64) -> RemotingCommand {
    use apogee_protocol::body::topic::{
        DataVersion, RegisterBrokerBody, TopicConfigAndMappingSerializeWrapper,
    };
    use apogee_protocol::header::namesrv::RegisterBrokerRequestHeader;
    let body = RegisterBrokerBody {
        topic_config_serialize_wrapper: TopicConfigAndMappingSerializeWrapper {
            data_version: DataVersion {
                state_version,
                timestamp: 1,
                counter: 1,
            },
            ..Default::default()
        },
        filter_server_list: Vec::new(),
    }
    .encode();
    RemotingCommand::request(request_code::REGISTER_BROKER)
        .with_header(&RegisterBrokerRequestHeader {
            broker_name: BROKER_NAME.into(),
            broker_addr: addr.into(),
            cluster_name: "DefaultCluster".into(),
            ha_server_addr: String::new(),
            broker_id: 0,
            enable_acting_master: Some(false),
            ..Default::default()
        })
        .with_body(body)
}

fn pull_header(queue_id: i32, offset: i64) -> PullMessageRequestHeader {
    PullMessageRequestHeader {
        consumer_group: "fo-checker".to_string(),
        topic: TOPIC.to_string(),
        queue_id,
        queue_offset: offset,
        max_msg_nums: 32,
        sys_flag: PullSysFlag::build(false, false, true, false, false).0,
        subscription: Some("*".to_string()),
        expression_type: Some("TAG".to_string()),
        ..Default::default()
    }
}

async fn read_all(admin: &AdminClient, addr: &str) -> BTreeMap<(i32, i64), String> {
    let mut out = BTreeMap::new();
    for q in 0..QUEUES {
        let mut off = 0i64;
        loop {
            let Ok(r) = admin
                .instance()
                .pull(
                    addr,
                    BROKER_NAME,
                    request_code::PULL_MESSAGE,
                    &pull_header(q, off),
                    Duration::from_secs(5),
                )
                .await
            else {
                break;
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

/// Whether every thread of `pid` is stopped (state `T`) within `timeout`.
fn wait_stopped(pid: u32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        let all = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("stat"))
                        .ok()
                        .and_then(|s| {
                            // State follows the parenthesised name.
                            s.rsplit_once(") ")
                                .and_then(|(_, rest)| rest.chars().next())
                        })
                        .is_some_and(|c| c == 'T' || c == 't')
                })
            })
            .unwrap_or(false);
        if all {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f().await
}

fn dump(procs: &[&Proc]) -> String {
    let mut s = String::new();
    for p in procs {
        let text = p.log_text();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        s.push_str(&format!("\n--- {} ---\n", p.log.display()));
        for l in tail.iter().rev() {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

async fn new_producer(ns: &str, group: &str) -> Producer {
    let p = Producer::builder()
        .namesrv_addr(ns.to_string())
        .group(group.to_string())
        .build()
        .expect("producer config");
    p.start().await.expect("producer start");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_master_elects_the_slave_and_loses_no_acknowledged_message() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let namesrv = support::start_namesrv(&[]);
    let ns = namesrv.addr.to_string();
    let group = start_controllers(dir.path());
    let ctl = group.addrs.join(";");
    let raw = RemotingClient::new(ClientConfig::default());

    let (pa, pb) = (free_port(), free_port());
    let (a, a_addr) = spawn_broker(dir.path(), "a", &ns, &ctl, pa, &[]);
    let (b, b_addr) = spawn_broker(dir.path(), "b", &ns, &ctl, pb, &[]);
    let names = BTreeMap::from([(a_addr.clone(), ("a", pa)), (b_addr.clone(), ("b", pb))]);
    let mut brokers: BTreeMap<String, Proc> = BTreeMap::from([(a_addr, a), (b_addr, b)]);

    // One of them is master, and the other joins its SyncStateSet.
    let deadline = Instant::now() + Duration::from_secs(30);
    let master_addr = loop {
        if let Some((m, 2, _)) = replica_info(&raw, &group.addrs).await {
            break m;
        }
        let all: Vec<&Proc> = brokers
            .values()
            .chain(group.procs.iter().flatten())
            .collect();
        assert!(
            Instant::now() < deadline,
            "no master with a 2-replica SyncStateSet: {}",
            dump(&all)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let slave_addr = brokers
        .keys()
        .find(|k| **k != master_addr)
        .cloned()
        .expect("a slave");

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
    // The slave copies the topic config from its master (it must have it
    // to serve the topic once it is master).
    let known = wait_for(Duration::from_secs(30), || async {
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
    assert!(known, "the slave never copied the topic config");

    let producer = new_producer(&ns, "fo-producer").await;
    let warm = wait_for(Duration::from_secs(30), || async {
        matches!(producer.send(Message::new(TOPIC, "warm-up")).await,
            Ok(r) if r.status == SendStatus::SendOk)
    })
    .await;
    assert!(warm, "the master never acknowledged a send");

    let mut acked: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for i in 0..200 {
        let body = format!("before-{i}");
        if let Ok(r) = producer.send(Message::new(TOPIC, body.clone())).await {
            if r.status == SendStatus::SendOk {
                acked.insert((r.queue.queue_id, r.queue_offset), body);
            }
        }
    }
    assert_eq!(acked.len(), 200, "every send with a live slave is SEND_OK");

    let (old_name, pa) = names[&master_addr];
    // kill -9 the master.
    let mut old_master = brokers.remove(&master_addr).expect("master process");
    old_master.kill9();
    let killed = Instant::now();

    // The controller elects the slave; it registers as brokerId 0.
    let elected = wait_for(Duration::from_secs(10), || async {
        let ctl_ok =
            matches!(replica_info(&raw, &group.addrs).await, Some((m, _, _)) if m == slave_addr);
        let route_ok = admin.topic_route(TOPIC).await.is_ok_and(|r| {
            r.broker_datas
                .iter()
                .any(|b| b.broker_addrs.get(&0).map(String::as_str) == Some(slave_addr.as_str()))
        });
        ctl_ok && route_ok
    })
    .await;
    let failover_ms = killed.elapsed().as_millis();
    let all: Vec<&Proc> = brokers
        .values()
        .chain(group.procs.iter().flatten())
        .collect();
    assert!(
        elected,
        "no new master registered as brokerId 0 within 10 s: {}",
        dump(&all)
    );

    // Sending goes on (a fresh producer reads the new route at once).
    let producer2 = new_producer(&ns, "fo-producer-2").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let first_ok = loop {
        match producer2.send(Message::new(TOPIC, "after-warm")).await {
            Ok(r) if r.status == SendStatus::SendOk => {
                acked.insert((r.queue.queue_id, r.queue_offset), "after-warm".into());
                break killed.elapsed().as_millis();
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the new master never acknowledged a send: {}",
            dump(&all)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for i in 0..50 {
        let body = format!("after-{i}");
        let r = producer2
            .send(Message::new(TOPIC, body.clone()))
            .await
            .expect("send to the new master");
        assert_eq!(
            r.status,
            SendStatus::SendOk,
            "a master alone in its SyncStateSet acknowledges"
        );
        acked.insert((r.queue.queue_id, r.queue_offset), body);
    }

    // Every acknowledged message, before and after, is on the new master.
    let on_new = read_all(&admin, &slave_addr).await;
    let missing: Vec<_> = acked
        .iter()
        .filter(|(k, v)| on_new.get(*k) != Some(*v))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged messages missing on the new master: {missing:?} ({} acked, {} there)",
        acked.len(),
        on_new.len()
    );
    eprintln!(
        "FAILOVER_SUMMARY acked={} elected_and_routed_ms={failover_ms} first_send_ok_ms={first_ok}",
        acked.len()
    );

    // The old master restarts on its data and joins as a slave: it copies
    // what the new master acknowledged, and does not take the role back.
    let (back, back_addr) = spawn_broker(dir.path(), old_name, &ns, &ctl, pa, &[]);
    assert_eq!(back_addr, master_addr);
    drop(old_master);
    brokers.insert(back_addr.clone(), back);
    let all: Vec<&Proc> = brokers
        .values()
        .chain(group.procs.iter().flatten())
        .collect();
    let rejoined = wait_for(Duration::from_secs(30), || async {
        let s = read_all(&admin, &back_addr).await;
        acked.iter().all(|(k, v)| s.get(k) == Some(v))
    })
    .await;
    assert!(
        rejoined,
        "the old master did not catch up as a slave: {}",
        dump(&all)
    );
    let info = replica_info(&raw, &group.addrs).await;
    assert!(
        matches!(&info, Some((m, _, _)) if *m == slave_addr),
        "the master moved back: {info:?}"
    );
    // mqadmin's controller-mode commands see the same.
    let admin_json = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_apogee"))
            .args(["admin", "-n", &ns, "--json"])
            .args(args)
            .output()
            .expect("apogee admin");
        (
            out.status.success(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, v, err) = admin_json(&["getSyncStateSet", "-a", &group.addrs[0], "-b", BROKER_NAME]);
    assert!(ok, "{err}");
    assert_eq!(
        v["replicasInfoTable"][BROKER_NAME]["masterAddress"].as_str(),
        Some(slave_addr.as_str()),
        "{v}"
    );
    let (ok, v, err) = admin_json(&["getControllerMetaData", "-a", &group.addrs[1]]);
    assert!(ok, "{err}");
    assert!(
        v["peers"].as_str().is_some_and(|p| p.contains("n0-")),
        "{v}"
    );
    let (ok, v, err) = admin_json(&["getBrokerEpoch", "-b", BROKER_NAME]);
    assert!(ok, "{err}");
    let epochs: Vec<u64> = v[slave_addr.as_str()]["epochList"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["epoch"].as_u64())
        .collect();
    assert_eq!(epochs, [1, 2], "the new master's epochs: {v}");
    let (ok, _, err) = admin_json(&[
        "electMaster",
        "-a",
        &group.addrs[0],
        "-c",
        "DefaultCluster",
        "--brokerName",
        BROKER_NAME,
        "-b",
        "99",
    ]);
    assert!(
        !ok && err.contains("refused"),
        "electing an unknown replica: {err}"
    );

    let refused = producer2
        .send(Message::new(TOPIC, "x"))
        .await
        .map(|r| r.status);
    assert!(matches!(
        refused,
        Ok(SendStatus::SendOk)
            | Ok(SendStatus::SlaveNotAvailable)
            | Ok(SendStatus::FlushSlaveTimeout)
    ));

    // The new master registers its epoch as the stateVersion: an old
    // master cut off from the controllers (fenced, still registering
    // brokerId 0 with the epoch it had) cannot take the route back.
    let stale = stale_master_registration("127.0.0.1:1", 1);
    let r = raw.invoke(&ns, stale, Duration::from_secs(5)).await;
    assert!(r.is_ok(), "{r:?}");
    let route = admin.topic_route(TOPIC).await.expect("route");
    assert!(
        route
            .broker_datas
            .iter()
            .any(|b| b.broker_addrs.get(&0).map(String::as_str) == Some(slave_addr.as_str())),
        "a registration of an older epoch took brokerId 0: {route:?}"
    );

    producer.shutdown().await;
    producer2.shutdown().await;
    admin.shutdown().await;
    raw.close().await;
    drop(brokers);
    drop(group);
    if std::env::var_os("APOGEE_FO_KEEP").is_some() {
        eprintln!("logs and data kept in {}", dir.keep().display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_controller_quorum_nothing_changes_and_the_master_stops_writes() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut group = start_controllers(dir.path());
    let raw = RemotingClient::new(ClientConfig::default());
    let register = |addr: String| {
        let raw = raw.clone();
        async move {
            let mut req = RemotingCommand::request(request_code::CONTROLLER_REGISTER_BROKER);
            req.set_ext("clusterName", "C");
            req.set_ext("brokerName", "q");
            req.set_ext("brokerId", "1");
            req.set_ext("brokerAddress", "127.0.0.1:1");
            raw.invoke(&addr, req, Duration::from_secs(8)).await
        }
    };
    // With all three up, one of them accepts a registration.
    let accepted = wait_for(Duration::from_secs(20), || async {
        for a in &group.addrs {
            if matches!(register(a.clone()).await, Ok(r) if r.code == response_code::SUCCESS) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(accepted, "no controller accepted a registration");

    // A lone master of another broker set, confirmed and taking sends.
    let namesrv = support::start_namesrv(&[]);
    let ns = namesrv.addr.to_string();
    let (broker, broker_addr) = spawn_broker(
        dir.path(),
        "lone",
        &ns,
        &group.addrs.join(";"),
        free_port(),
        &[],
    );
    let admin = AdminClient::builder()
        .namesrv_addr(ns.clone())
        .build()
        .expect("admin");
    let mastered = wait_for(Duration::from_secs(20), || async {
        matches!(replica_info(&raw, &group.addrs).await, Some((m, _, _)) if m == broker_addr)
    })
    .await;
    assert!(
        mastered,
        "the lone broker never became master: {}",
        dump(&[&broker])
    );
    // The controller names it master before its role switch (a restart
    // inside the process) is done: retry while the listener comes back.
    let created = wait_for(Duration::from_secs(20), || async {
        admin
            .create_topic(
                &broker_addr,
                &TopicConfig {
                    topic_name: TOPIC.into(),
                    read_queue_nums: 1,
                    write_queue_nums: 1,
                    ..Default::default()
                },
            )
            .await
            .is_ok()
    })
    .await;
    assert!(created, "create topic: {}", dump(&[&broker]));
    let producer = new_producer(&ns, "quorum-producer").await;
    let sent = wait_for(Duration::from_secs(20), || async {
        matches!(producer.send(Message::new(TOPIC, "m")).await,
            Ok(r) if r.status == SendStatus::SendOk)
    })
    .await;
    assert!(sent, "the lone master took no send: {}", dump(&[&broker]));

    // Two of three gone: no quorum.
    for p in group.procs.iter_mut().take(2) {
        if let Some(mut p) = p.take() {
            p.kill9();
        }
    }
    // The master cannot get its role confirmed any more: within its lease
    // (half of controllerHeartBeatTimeoutMills) it stops taking writes.
    let fenced = wait_for(Duration::from_secs(10), || async {
        producer.send(Message::new(TOPIC, "after")).await.is_err()
    })
    .await;
    assert!(
        fenced,
        "a master without a controller quorum still takes writes: {}",
        dump(&[&broker])
    );
    // A send checks the lease itself; the watchdog that logs the fence
    // looks every 100 ms, so its line may come just after the refusal.
    let logged = wait_for(Duration::from_secs(2), || async {
        broker.log_text().contains("refusing writes")
    })
    .await;
    assert!(logged, "{}", dump(&[&broker]));
    producer.shutdown().await;
    admin.shutdown().await;
    drop(broker);
    let survivor = group.procs[2].as_ref().expect("survivor");
    let said = wait_for(Duration::from_secs(20), || async {
        survivor
            .log_text()
            .contains("controller group has no leader")
    })
    .await;
    assert!(said, "no clear log line: {}", dump(&[survivor]));
    let r = register(group.addrs[2].clone())
        .await
        .expect("the survivor still answers");
    assert_ne!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    assert!(r.remark.is_some(), "a refusal says why");
    let survivor = group.procs[2].as_mut().expect("survivor");
    assert!(
        survivor.child.try_wait().expect("wait").is_none(),
        "the controller crashed"
    );
    raw.close().await;
}

/// `minInSyncReplicas=2`: while the SyncStateSet is master + slave, sends
/// are acknowledged; once the slave is gone and the master has shrunk the
/// set to itself, sends are refused before they are stored (SYSTEM_ERROR
/// "in-sync replicas not enough", as Apache); when the slave returns and
/// rejoins the set, sends go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_in_sync_replicas_refuses_sends_while_the_set_is_too_small() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let namesrv = support::start_namesrv(&[]);
    let ns = namesrv.addr.to_string();
    let group = start_controllers(dir.path());
    let ctl = group.addrs.join(";");
    let raw = RemotingClient::new(ClientConfig::default());
    let extra = [
        "minInSyncReplicas=2",
        "haMaxTimeSlaveNotCatchup=2000",
        "syncFlushTimeout=800",
    ];
    let (pa, pb) = (free_port(), free_port());
    let (a, a_addr) = spawn_broker(dir.path(), "a", &ns, &ctl, pa, &extra);
    let (b, b_addr) = spawn_broker(dir.path(), "b", &ns, &ctl, pb, &extra);
    let mut brokers: BTreeMap<String, (Proc, &str, u16)> =
        BTreeMap::from([(a_addr, (a, "a", pa)), (b_addr, (b, "b", pb))]);
    let all = |b: &BTreeMap<String, (Proc, &str, u16)>| {
        dump(&b.values().map(|(p, _, _)| p).collect::<Vec<_>>())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let master_addr = loop {
        if let Some((m, 2, _)) = replica_info(&raw, &group.addrs).await {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no 2-replica SyncStateSet: {}",
            all(&brokers)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let slave_addr = brokers
        .keys()
        .find(|k| **k != master_addr)
        .cloned()
        .unwrap();
    let admin = AdminClient::builder()
        .namesrv_addr(ns.clone())
        .build()
        .expect("admin");
    admin
        .create_topic(
            &master_addr,
            &TopicConfig {
                topic_name: TOPIC.into(),
                read_queue_nums: 1,
                write_queue_nums: 1,
                ..Default::default()
            },
        )
        .await
        .expect("create topic");
    let producer = new_producer(&ns, "min-isr-producer").await;
    let sent = wait_for(Duration::from_secs(30), || async {
        matches!(producer.send(Message::new(TOPIC, "both")).await,
            Ok(r) if r.status == SendStatus::SendOk)
    })
    .await;
    assert!(
        sent,
        "no send acknowledged with both replicas: {}",
        all(&brokers)
    );

    let (mut slave, slave_name, slave_port) = brokers.remove(&slave_addr).unwrap();
    slave.kill9();
    drop(slave);
    let shrunk = wait_for(Duration::from_secs(20), || async {
        matches!(replica_info(&raw, &group.addrs).await, Some((m, 1, _)) if m == master_addr)
    })
    .await;
    assert!(shrunk, "the SyncStateSet never shrank: {}", all(&brokers));
    // The master learns the new set on its next heartbeat answer.
    let refused = wait_for(Duration::from_secs(10), || async {
        match producer.send(Message::new(TOPIC, "alone")).await {
            Err(e) => e.to_string().contains("in-sync replicas not enough"),
            Ok(_) => false,
        }
    })
    .await;
    assert!(
        refused,
        "a master below minInSyncReplicas took sends: {}",
        all(&brokers)
    );
    let refused_again = producer.send(Message::new(TOPIC, "alone-2")).await;
    assert!(
        matches!(&refused_again, Err(e) if e.to_string().contains("minInSyncReplicas is 2")),
        "{refused_again:?}"
    );
    // A refused send is not stored.
    let stored = read_all(&admin, &master_addr).await;
    assert!(stored.values().any(|body| body == "both"), "{stored:?}");
    assert!(
        stored.values().all(|body| body != "alone-2"),
        "a refused send was stored: {stored:?}"
    );

    let (back, back_addr) = spawn_broker(dir.path(), slave_name, &ns, &ctl, slave_port, &extra);
    assert_eq!(back_addr, slave_addr);
    brokers.insert(back_addr, (back, slave_name, slave_port));
    let again = wait_for(Duration::from_secs(40), || async {
        matches!(producer.send(Message::new(TOPIC, "rejoined")).await,
            Ok(r) if r.status == SendStatus::SendOk)
    })
    .await;
    assert!(
        again,
        "sends stayed refused after the slave rejoined: {}",
        all(&brokers)
    );
    assert!(
        matches!(replica_info(&raw, &group.addrs).await, Some((m, 2, _)) if m == master_addr),
        "the set did not grow back"
    );
    producer.shutdown().await;
    admin.shutdown().await;
    raw.close().await;
}

/// The master writes messages its slave never gets (the slave is stopped:
/// the sends answer FLUSH_SLAVE_TIMEOUT, not acknowledged), then both die.
/// The slave comes back first and is elected (it is in the SyncStateSet);
/// it takes new sends at the same queue offsets. When the old master comes
/// back it must cut the tail only it had, and then hold exactly what the
/// new master acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_master_cuts_the_tail_nobody_acknowledged() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let namesrv = support::start_namesrv(&[]);
    let ns = namesrv.addr.to_string();
    let group = start_controllers(dir.path());
    let ctl = group.addrs.join(";");
    let raw = RemotingClient::new(ClientConfig::default());
    let extra = ["syncFlushTimeout=800"];

    let (pa, pb) = (free_port(), free_port());
    let (a, a_addr) = spawn_broker(dir.path(), "a", &ns, &ctl, pa, &extra);
    let (b, b_addr) = spawn_broker(dir.path(), "b", &ns, &ctl, pb, &extra);
    let names = BTreeMap::from([(a_addr.clone(), ("a", pa)), (b_addr.clone(), ("b", pb))]);
    let mut brokers: BTreeMap<String, Proc> = BTreeMap::from([(a_addr, a), (b_addr, b)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let master_addr = loop {
        if let Some((m, 2, _)) = replica_info(&raw, &group.addrs).await {
            break m;
        }
        assert!(Instant::now() < deadline, "no 2-replica SyncStateSet");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let slave_addr = names.keys().find(|k| **k != master_addr).cloned().unwrap();
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
    let known = wait_for(Duration::from_secs(30), || async {
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
    assert!(known, "the slave never copied the topic config");
    let producer = new_producer(&ns, "cut-producer").await;
    let warm = wait_for(Duration::from_secs(30), || async {
        matches!(producer.send(Message::new(TOPIC, "warm-up")).await,
            Ok(r) if r.status == SendStatus::SendOk)
    })
    .await;
    assert!(warm, "the master never acknowledged a send");
    let mut acked = BTreeMap::new();
    for i in 0..40 {
        let body = format!("before-{i}");
        let r = producer
            .send(Message::new(TOPIC, body.clone()))
            .await
            .expect("send");
        assert_eq!(r.status, SendStatus::SendOk);
        acked.insert((r.queue.queue_id, r.queue_offset), body);
    }

    // Freeze the slave: what the master stores now stays its own.
    let (slave_name, _) = names[&slave_addr];
    let (master_name, master_port) = names[&master_addr];
    let mut slave = brokers.remove(&slave_addr).unwrap();
    let mut master = brokers.remove(&master_addr).unwrap();
    let stopped = Command::new("kill")
        .args(["-STOP", &slave.child.id().to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success());
    // kill returns before every thread has stopped (one busy in the kernel,
    // say on a page fault, stops only on its way out): wait until all have.
    assert!(
        wait_stopped(slave.child.id(), Duration::from_secs(10)),
        "the slave did not stop"
    );
    let mut unacked = BTreeMap::new();
    for i in 0..4 {
        let body = format!("unacked-{i}");
        let r = producer
            .send(Message::new(TOPIC, body.clone()))
            .await
            .expect("send");
        assert_eq!(r.status, SendStatus::FlushSlaveTimeout, "{body}");
        unacked.insert((r.queue.queue_id, r.queue_offset), body);
    }
    master.kill9();
    slave.kill9();
    drop(master);
    drop(slave);

    // The slave returns first and is elected: it is in the SyncStateSet.
    let (pb2, _) = (names[&slave_addr].1, ());
    let (s2, s2_addr) = spawn_broker(dir.path(), slave_name, &ns, &ctl, pb2, &extra);
    assert_eq!(s2_addr, slave_addr);
    brokers.insert(s2_addr.clone(), s2);
    let elected = wait_for(Duration::from_secs(15), || async {
        matches!(replica_info(&raw, &group.addrs).await, Some((m, _, _)) if m == slave_addr)
    })
    .await;
    let all: Vec<&Proc> = brokers
        .values()
        .chain(group.procs.iter().flatten())
        .collect();
    assert!(elected, "the in-sync slave was not elected: {}", dump(&all));
    let producer2 = new_producer(&ns, "cut-producer-2").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = BTreeMap::new();
    while after.len() < 20 {
        match producer2
            .send(Message::new(TOPIC, format!("after-{}", after.len())))
            .await
        {
            Ok(r) if r.status == SendStatus::SendOk => {
                after.insert(
                    (r.queue.queue_id, r.queue_offset),
                    format!("after-{}", after.len()),
                );
            }
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "the new master takes no sends: {}",
                    dump(&all)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // The new master reuses the offsets only the old one had written.
    assert!(
        unacked.keys().any(|k| after.contains_key(k)),
        "the test did not make the logs diverge: {unacked:?} vs {after:?}"
    );
    acked.extend(after);

    // The old master returns: it must cut its own tail and follow.
    let (old, old_addr) = spawn_broker(dir.path(), master_name, &ns, &ctl, master_port, &extra);
    assert_eq!(old_addr, master_addr);
    let log = old.log.clone();
    brokers.insert(old_addr.clone(), old);
    let all: Vec<&Proc> = brokers
        .values()
        .chain(group.procs.iter().flatten())
        .collect();
    let caught_up = wait_for(Duration::from_secs(30), || async {
        let s = read_all(&admin, &old_addr).await;
        acked.iter().all(|(k, v)| s.get(k) == Some(v))
    })
    .await;
    assert!(
        caught_up,
        "the old master does not hold what the new one acknowledged: {}",
        dump(&all)
    );
    let s = read_all(&admin, &old_addr).await;
    for (k, v) in &unacked {
        assert_ne!(
            s.get(k),
            Some(v),
            "the unacknowledged tail survived at {k:?}"
        );
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("cut the CommitLog tail"),
        "no cut logged: {}",
        dump(&all)
    );
    assert!(
        matches!(replica_info(&raw, &group.addrs).await, Some((m, _, _)) if m == slave_addr),
        "the master moved back"
    );
    producer.shutdown().await;
    producer2.shutdown().await;
    admin.shutdown().await;
    raw.close().await;
}

/// Rounds of failover under a steady trickle of sends (the chaos test's
/// short form; `scripts/chaos/failover-rounds.sh` runs many). Each round
/// takes the current master away — kill -9 on even rounds, SIGSTOP on odd
/// ones (a frozen or cut-off master that comes back later believing it is
/// master) — waits for the other replica to take sends, then brings the old
/// one back (restart, or SIGCONT) and waits until it is in the SyncStateSet
/// again. At the end every acknowledged message must be on the master at
/// the queue and offset its SEND_OK named. Rounds: APOGEE_FAILOVER_ROUNDS (2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_rounds_lose_no_acknowledged_message() {
    let _serial = SERIAL.lock().await;
    let rounds: usize = std::env::var("APOGEE_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let namesrv = support::start_namesrv(&[]);
    let ns = namesrv.addr.to_string();
    let mut group = start_controllers(dir.path());
    let ctl = group.addrs.join(";");
    let raw = RemotingClient::new(ClientConfig::default());
    let (pa, pb) = (free_port(), free_port());
    let (a, a_addr) = spawn_broker(dir.path(), "a", &ns, &ctl, pa, &[]);
    let (b, b_addr) = spawn_broker(dir.path(), "b", &ns, &ctl, pb, &[]);
    let names = BTreeMap::from([(a_addr.clone(), ("a", pa)), (b_addr.clone(), ("b", pb))]);
    let mut brokers: BTreeMap<String, Proc> = BTreeMap::from([(a_addr, a), (b_addr, b)]);
    let ctl_addrs = group.addrs.clone();
    let in_sync = |want: usize| {
        let raw = raw.clone();
        let addrs = ctl_addrs.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some((m, n, e)) = replica_info(&raw, &addrs).await {
                    if n == want {
                        return Some((m, e));
                    }
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (master, _) = in_sync(2).await.expect("a 2-replica SyncStateSet");
    let admin = AdminClient::builder()
        .namesrv_addr(ns.clone())
        .build()
        .expect("admin");
    admin
        .create_topic(
            &master,
            &TopicConfig {
                topic_name: TOPIC.into(),
                read_queue_nums: QUEUES,
                write_queue_nums: QUEUES,
                ..Default::default()
            },
        )
        .await
        .expect("create topic");
    let slave = names.keys().find(|k| **k != master).cloned().unwrap();
    let known = wait_for(Duration::from_secs(30), || async {
        admin
            .instance()
            .pull(
                &slave,
                BROKER_NAME,
                request_code::PULL_MESSAGE,
                &pull_header(0, 0),
                Duration::from_secs(5),
            )
            .await
            .is_ok()
    })
    .await;
    assert!(known, "the slave never copied the topic config");

    // The sender: one message after another; a fresh producer (fresh
    // route) after any failure, as an application would retry: the time to
    // the first SEND_OK then measures the failover, not a client's route
    // refresh period.
    // (queue, offset), body, when the send began, when SEND_OK came.
    type Acks = Arc<parking_lot::Mutex<Vec<((i32, i64), String, Instant, Instant)>>>;
    let acks: Acks = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (acks, stop, ns) = (Arc::clone(&acks), Arc::clone(&stop), ns.clone());
        tokio::spawn(async move {
            let mut producer = new_producer(&ns, "rounds-producer").await;
            let (mut i, mut failures) = (0u64, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let body = format!("m-{i}");
                i += 1;
                let began = Instant::now();
                match tokio::time::timeout(
                    Duration::from_secs(4),
                    producer.send(Message::new(TOPIC, body.clone())),
                )
                .await
                {
                    Ok(Ok(r)) if r.status == SendStatus::SendOk => {
                        failures = 0;
                        acks.lock().push((
                            (r.queue.queue_id, r.queue_offset),
                            body,
                            began,
                            Instant::now(),
                        ));
                    }
                    _ => {
                        failures += 1;
                        if failures >= 1 {
                            let old = std::mem::replace(
                                &mut producer,
                                new_producer(&ns, "rounds-producer").await,
                            );
                            // Its goodbye to a frozen broker waits out a
                            // timeout; the application goes on meanwhile.
                            tokio::spawn(async move { old.shutdown().await });
                            failures = 0;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            producer.shutdown().await;
        })
    };

    let mut failover_ms = Vec::new();
    for round in 0..rounds {
        let (master, epoch0) = in_sync(2).await.unwrap_or_else(|| {
            let all: Vec<&Proc> = brokers.values().collect();
            panic!(
                "round {round}: the set never got both replicas in sync: {}",
                dump(&all)
            )
        });
        let other = names.keys().find(|k| **k != master).cloned().unwrap();
        let freeze = round % 2 == 1;
        // Every third round the controller leader dies first (its log and
        // vote on disk bring it back later).
        let killed_leader = if round % 3 == 2 {
            let l = group.leader(&raw).await;
            if let Some(p) = l.and_then(|i| group.procs[i].as_mut()) {
                p.kill9();
            }
            eprintln!("round {round}: killed the controller leader {l:?}");
            l
        } else {
            None
        };
        {
            let p = brokers.get_mut(&master).unwrap();
            if freeze {
                let st = Command::new("kill")
                    .args(["-STOP", &p.child.id().to_string()])
                    .status();
                assert!(st.is_ok_and(|s| s.success()));
            } else {
                p.kill9();
            }
        }
        // From when the kill returned: a send that began before it may
        // still have been acknowledged by the old master.
        let t0 = Instant::now();
        // The other replica is master and acknowledges a send begun after
        // the kill.
        let deadline = t0 + Duration::from_secs(20);
        let took = loop {
            let after = acks
                .lock()
                .iter()
                .find(|(_, _, began, _)| *began > t0)
                .map(|(_, _, _, at)| *at - t0);
            // A new epoch: the controller's answers never go back in time.
            let moved = matches!(replica_info(&raw, &group.addrs).await,
                Some((m, _, e)) if m == other && e > epoch0);
            if let (Some(d), true) = (after, moved) {
                break d;
            }
            let all: Vec<&Proc> = brokers.values().collect();
            assert!(
                Instant::now() < deadline,
                "round {round}: no send acknowledged after the failover: {}",
                dump(&all)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        failover_ms.push(took.as_millis() as u64);
        eprintln!(
            "round {round} ({} of {master}, master epoch {epoch0}) failover {} ms",
            if freeze { "SIGSTOP" } else { "kill -9" },
            took.as_millis()
        );
        if let Some(i) = killed_leader {
            group.restart(i);
        }
        // Bring the old master back as a replica.
        if freeze {
            let p = brokers.get_mut(&master).unwrap();
            let st = Command::new("kill")
                .args(["-CONT", &p.child.id().to_string()])
                .status();
            assert!(st.is_ok_and(|s| s.success()));
        } else {
            let (name, port) = names[&master];
            let (p, addr) = spawn_broker(dir.path(), name, &ns, &ctl, port, &[]);
            assert_eq!(addr, master);
            brokers.insert(addr, p);
        }
    }
    assert!(
        in_sync(2).await.is_some(),
        "the last old master never rejoined"
    );
    stop.store(true, std::sync::atomic::Ordering::Release);
    let _ = sender.await;

    let master = replica_info(&raw, &group.addrs).await.expect("master").0;
    let acked: Vec<_> = acks.lock().clone();
    let on_master = read_all(&admin, &master).await;
    let lost: Vec<_> = acked
        .iter()
        .filter(|(k, v, _, _)| on_master.get(k) != Some(v))
        .map(|(k, v, _, _)| (*k, v.clone()))
        .collect();
    let mut seen = std::collections::HashMap::new();
    for v in on_master.values() {
        *seen.entry(v.clone()).or_insert(0u32) += 1;
    }
    let duplicates = seen.values().filter(|&&n| n > 1).count();
    failover_ms.sort_unstable();
    let p50 = failover_ms.get(failover_ms.len() / 2).copied().unwrap_or(0);
    let max = failover_ms.last().copied().unwrap_or(0);
    eprintln!(
        "FAILOVER_ROUNDS rounds={rounds} acked={} lost={} duplicates={duplicates} failover_ms_p50={p50} failover_ms_max={max}",
        acked.len(),
        lost.len()
    );
    let all: Vec<&Proc> = brokers
        .values()
        .chain(group.procs.iter().flatten())
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged messages lost: {:?}: {}",
        &lost[..lost.len().min(5)],
        dump(&all)
    );
    assert!(max <= 10_000, "a failover took {max} ms");
    admin.shutdown().await;
    raw.close().await;
    drop(all);
    drop(brokers);
    drop(group);
    if std::env::var_os("APOGEE_FO_KEEP").is_some() {
        eprintln!("logs and data kept in {}", dir.keep().display());
    }
}
