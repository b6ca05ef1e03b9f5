//! Controller-mode failover across hosts: every process has its own network
//! namespace and address on one bridge (3 controllers, a NameServer, two
//! replicas of one broker set, and this test as the load client). Rounds of
//! a steady sender with every SEND_OK recorded, then a fault on the master:
//! - kill -9 (restarted later on its data),
//! - partition: its link to the bridge goes down (cut from controllers,
//!   clients, NameServer and its slave); healed later,
//! - controller partition: only the controllers are unreachable from it
//!   (blackhole routes both ways); clients, NameServer and its slave still
//!   reach it, so a master that kept taking writes would be seen here.
//!
//! Each round waits for the other replica to acknowledge a send, checks that
//! consumer offsets committed before the fault are on the new master, heals
//! the fault and waits until the old master is back in the SyncStateSet as
//! a slave. At the end every acknowledged message must be readable at the
//! queue and offset its SEND_OK named.
//!
//! Needs root and `ip netns`; without them it says why and passes (the
//! loopback test `failover_controller` covers the logic). Rounds:
//! APOGEE_FAILOVER_ROUNDS (3). Namespaces are named
//! `$APOGEE_NETNS_PREFIX-<host>` (default `apofo<pid>`) and deleted when the
//! test ends, also when it fails.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_client::{AdminClient, Message, Producer, SendStatus};
use apogee_protocol::body::{MessageQueue, SubscriptionGroupConfig, TopicConfig};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PullSysFlag;
use apogee_protocol::header::PullMessageRequestHeader;
use apogee_protocol::message::decode_offset_msg_id;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};

mod support;

const TOPIC: &str = "NetnsFailoverTopic";
const BROKER_NAME: &str = "broker-nf";
const QUEUES: i32 = 2;
const CONSUMER_GROUP: &str = "nf-consumer";
const SUBNET: &str = "10.99.0";
const CTL_PORT: u16 = 9878;
const RAFT_PORT: u16 = 9879;
const NS_PORT: u16 = 9876;
const BROKER_PORT: u16 = 10911;

/// Host name and last address byte of every namespace but the switch.
const HOSTS: [(&str, u8); 7] = [
    ("cli", 2),
    ("ns", 10),
    ("c0", 11),
    ("c1", 12),
    ("c2", 13),
    ("a", 21),
    ("b", 22),
];

/// Says something on the real stderr: libtest captures only the print
/// macros, and a skip or the summary must show in a passing run.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn ip_of(host: &str) -> String {
    let last = HOSTS
        .iter()
        .find(|(h, _)| *h == host)
        .map_or(0, |(_, b)| *b);
    format!("{SUBNET}.{last}")
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces and the bridge; deleted on drop.
struct Net {
    prefix: String,
    made: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = run_ip(&["netns", "del", ns]);
        }
    }
}

impl Net {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn sw(&self) -> String {
        self.ns("sw")
    }

    /// Why this machine cannot run the test, if it cannot.
    fn unsupported() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root (network namespaces need root)".into());
        }
        let probe = format!("apoprobe{}", std::process::id());
        if let Err(e) = run_ip(&["netns", "add", &probe]) {
            return Some(format!("`ip netns` does not work here: {e}"));
        }
        let veth = run_ip(&[
            "-n", &probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1",
        ])
        .map_err(|e| format!("veth pairs cannot be made here: {e}"));
        // Processes are started with `ip netns exec`, which some
        // containers refuse (it remounts /sys).
        let exec = veth.and_then(|()| {
            run_ip(&["netns", "exec", &probe, "true"])
                .map_err(|e| format!("`ip netns exec` does not work here: {e}"))
        });
        let _ = run_ip(&["netns", "del", &probe]);
        exec.err()
    }

    fn setup(prefix: &str) -> Result<Net, String> {
        let mut net = Net {
            prefix: prefix.to_string(),
            made: Vec::new(),
        };
        let sw = net.sw();
        run_ip(&["netns", "add", &sw])?;
        net.made.push(sw.clone());
        run_ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run_ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (i, (host, _)) in HOSTS.iter().enumerate() {
            let ns = net.ns(host);
            run_ip(&["netns", "add", &ns])?;
            net.made.push(ns.clone());
            // The bridge side is h<i> in the switch; the host side eth0.
            let port = format!("h{i}");
            run_ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            run_ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            run_ip(&["-n", &sw, "link", "set", &port, "up"])?;
            run_ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            run_ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", ip_of(host)),
                "dev",
                "eth0",
            ])?;
            run_ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    fn port_of(host: &str) -> String {
        let i = HOSTS.iter().position(|(h, _)| *h == host).unwrap_or(0);
        format!("h{i}")
    }

    /// Takes `host`'s link to the bridge down (or up again).
    fn link(&self, host: &str, up: bool) -> Result<(), String> {
        run_ip(&[
            "-n",
            &self.sw(),
            "link",
            "set",
            &Self::port_of(host),
            if up { "up" } else { "down" },
        ])
    }

    /// Blackhole routes between `host` and each of `peers`, both ways (or
    /// their removal).
    fn blackhole(&self, host: &str, peers: &[&str], add: bool) -> Result<(), String> {
        let verb = if add { "add" } else { "del" };
        for p in peers {
            for (from, to) in [(host, *p), (*p, host)] {
                run_ip(&[
                    "-n",
                    &self.ns(from),
                    "route",
                    verb,
                    "blackhole",
                    &format!("{}/32", ip_of(to)),
                ])?;
            }
        }
        Ok(())
    }

    /// Moves the calling thread (and threads it starts later) into `host`.
    fn enter(&self, host: &str) -> Result<(), String> {
        let path = format!("/run/netns/{}", self.ns(host));
        let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: a valid namespace fd; setns only changes this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("setns {path}: {}", std::io::Error::last_os_error()))
        }
    }
}

/// A child process whose stderr goes to a log file; killed when dropped.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `apogee <args>` inside `ns` (`ip netns exec` execs, so the child
/// is the apogee process itself).
fn spawn_in(ns: &str, args: &[String], log: &Path, prefix: &'static str) -> (Proc, SocketAddr) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_apogee")])
        .args(args)
        .env("APOGEE_LOG", "info,openraft=warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"));
    let mut child = cmd.spawn().expect("spawn apogee");
    let addr = support::read_listen_addrs(&mut child, &[prefix])[0];
    (Proc { child }, addr)
}

/// Wall-clock time of day (UTC) to line up with the processes' logs.
fn chrono_now() -> String {
    let ms = now_ms() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn with_sets(head: &[&str], kvs: &[String]) -> Vec<String> {
    let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
    for kv in kvs {
        v.push("--set".into());
        v.push(kv.clone());
    }
    v
}

fn controller_addrs() -> Vec<String> {
    ["c0", "c1", "c2"]
        .iter()
        .map(|h| format!("{}:{CTL_PORT}", ip_of(h)))
        .collect()
}

fn spawn_controller(net: &Net, dir: &Path, i: usize) -> Proc {
    let host = format!("c{i}");
    let peers = (0..3)
        .map(|j| format!("n{j}-{}:{RAFT_PORT}", ip_of(&format!("c{j}"))))
        .collect::<Vec<_>>()
        .join(";");
    let args = with_sets(
        &["controller"],
        &[
            format!("bindAddress={}", ip_of(&host)),
            format!("listenPort={CTL_PORT}"),
            format!("controllerDLegerPeers={peers}"),
            format!("controllerDLegerSelfId=n{i}"),
            format!(
                "controllerStorePath={}",
                dir.join(format!("ctl-n{i}")).display()
            ),
            "scanNotActiveBrokerInterval=300".into(),
            "electionTimeoutMills=500".into(),
        ],
    );
    spawn_in(
        &net.ns(&host),
        &args,
        &dir.join(format!("controller-n{i}-{}.log", now_ms())),
        "apogee controller listening on ",
    )
    .0
}

fn spawn_namesrv(net: &Net, dir: &Path) -> Proc {
    let args = with_sets(
        &["namesrv", "--listen-port", &NS_PORT.to_string()],
        &[
            format!("bindAddress={}", ip_of("ns")),
            format!("kvConfigPath={}", dir.join("kvConfig.json").display()),
        ],
    );
    spawn_in(
        &net.ns("ns"),
        &args,
        &dir.join("namesrv.log"),
        "apogee namesrv listening on ",
    )
    .0
}

/// Broker `host` ("a" or "b"); the same host is the same data folder.
fn spawn_broker(net: &Net, dir: &Path, host: &str) -> Proc {
    let ip = ip_of(host);
    let args = with_sets(
        &[
            "broker",
            "-n",
            &format!("{}:{NS_PORT}", ip_of("ns")),
            "--listen-port",
            &BROKER_PORT.to_string(),
        ],
        &[
            format!("bindAddress={ip}"),
            format!("brokerIP1={ip}"),
            "diskSpaceWarningLevelRatio=100".into(),
            "diskSpaceCleanForciblyRatio=100".into(),
            "diskMaxUsedSpaceRatio=100".into(),
            format!("storePathRootDir={}", dir.join(host).display()),
            format!("brokerName={BROKER_NAME}"),
            "mappedFileSizeCommitLog=16777216".into(),
            "mappedFileSizeConsumeQueue=60000".into(),
            "maxIndexNum=10000".into(),
            "maxHashSlotNum=1000".into(),
            "haSendHeartbeatInterval=1000".into(),
            "brokerRole=SYNC_MASTER".into(),
            "enableControllerMode=true".into(),
            format!("controllerAddr={}", controller_addrs().join(";")),
            "controllerHeartBeatTimeoutMills=3000".into(),
            "brokerHeartbeatInterval=300".into(),
            "registerNameServerPeriod=2000".into(),
        ],
    );
    spawn_in(
        &net.ns(host),
        &args,
        &dir.join(format!("broker-{host}-{}.log", now_ms())),
        "apogee broker listening on ",
    )
    .0
}

fn broker_addr(host: &str) -> String {
    format!("{}:{BROKER_PORT}", ip_of(host))
}

fn host_of(addr: &str) -> Option<&'static str> {
    ["a", "b"].into_iter().find(|h| broker_addr(h) == addr)
}

/// The controller leader's view: (master address, SyncStateSet size, epoch).
async fn replica_info(client: &RemotingClient) -> Option<(String, usize, u32)> {
    for addr in controller_addrs() {
        let mut req = RemotingCommand::request(request_code::CONTROLLER_GET_REPLICA_INFO);
        req.set_ext("brokerName", BROKER_NAME);
        let Ok(resp) = client.invoke(&addr, req, Duration::from_secs(1)).await else {
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

async fn wait_in_sync(client: &RemotingClient, timeout: Duration) -> Option<(String, u32)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((m, 2, e)) = replica_info(client).await {
            return Some((m, e));
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pull_header(queue_id: i32, offset: i64) -> PullMessageRequestHeader {
    PullMessageRequestHeader {
        consumer_group: "nf-checker".to_string(),
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

fn dump(dir: &Path) -> String {
    let mut s = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return s;
    };
    let mut logs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    for p in logs {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        s.push_str(&format!("\n--- {} ---\n", p.display()));
        for l in tail.iter().rev() {
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}

/// One acknowledged send: where it landed, its body, which broker answered
/// (from the offset message id), when the send began and when SEND_OK came.
#[derive(Clone)]
struct Ack {
    at: (i32, i64),
    body: String,
    by: Option<IpAddr>,
    began: Instant,
    acked: Instant,
}

async fn new_producer(ns: &str) -> Option<Producer> {
    let p = Producer::builder()
        .namesrv_addr(ns.to_string())
        .group("nf-producer".to_string())
        // An application's choice: a send that gets no answer within 2 s
        // is given up and retried with a fresh route.
        .send_timeout(Duration::from_secs(2))
        .retry_times_when_send_failed(0)
        .build()
        .ok()?;
    p.start().await.ok()?;
    Some(p)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Partition,
    ControllerPartition,
}

impl Fault {
    fn of_round(round: usize) -> Fault {
        match round % 3 {
            0 => Fault::Kill,
            1 => Fault::Partition,
            _ => Fault::ControllerPartition,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::Partition => "partition",
            Fault::ControllerPartition => "controller partition",
        }
    }
}

#[test]
fn failover_rounds_across_network_namespaces() {
    if let Some(why) = Net::unsupported() {
        say(&format!("FAILOVER_NETNS skipped: {why}"));
        return;
    }
    let rounds: usize = std::env::var("APOGEE_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let prefix = std::env::var("APOGEE_NETNS_PREFIX")
        .unwrap_or_else(|_| format!("apofo{}", std::process::id()));
    let net = Net::setup(&prefix).unwrap_or_else(|e| panic!("namespaces: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("APOGEE_FO_KEEP").is_some();
    // The load client is a host of its own: this thread and the runtime's
    // threads (started from it) live in the client namespace.
    net.enter("cli").unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(rounds_body(&net, dir.path(), rounds));
    rt.shutdown_timeout(Duration::from_secs(5));
    if keep {
        say(&format!("logs and data kept in {}", dir.keep().display()));
    }
    if let Err(e) = result {
        panic!("{e}");
    }
    drop(net);
}

async fn rounds_body(net: &Net, dir: &Path, rounds: usize) -> Result<(), String> {
    let _namesrv = spawn_namesrv(net, dir);
    let ns = format!("{}:{NS_PORT}", ip_of("ns"));
    let mut controllers: Vec<Proc> = (0..3).map(|i| spawn_controller(net, dir, i)).collect();
    let mut brokers: HashMap<&'static str, Proc> = ["a", "b"]
        .into_iter()
        .map(|h| (h, spawn_broker(net, dir, h)))
        .collect();
    let raw = RemotingClient::new(ClientConfig::default());
    let (master, _) = wait_in_sync(&raw, Duration::from_secs(60))
        .await
        .ok_or_else(|| format!("no 2-replica SyncStateSet: {}", dump(dir)))?;
    let admin = AdminClient::builder()
        .namesrv_addr(ns.clone())
        .build()
        .map_err(|e| e.to_string())?;
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
        .map_err(|e| format!("create topic: {e}"))?;
    admin
        .create_subscription_group(&master, &SubscriptionGroupConfig::new(CONSUMER_GROUP))
        .await
        .map_err(|e| format!("create group: {e}"))?;

    // The sender: one message after another, a fresh producer (fresh route)
    // after any failure, as an application would retry.
    let acks: Arc<parking_lot::Mutex<Vec<Ack>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (acks, stop, ns) = (Arc::clone(&acks), Arc::clone(&stop), ns.clone());
        let debug = std::env::var_os("APOGEE_FO_DEBUG").is_some();
        tokio::spawn(async move {
            let mut producer = None;
            let mut i = 0u64;
            let mut failing = false;
            while !stop.load(Ordering::Acquire) {
                let Some(p) = producer.as_ref() else {
                    let t = Instant::now();
                    producer = new_producer(&ns).await;
                    if debug {
                        say(&format!(
                            "{} new producer in {} ms",
                            chrono_now(),
                            t.elapsed().as_millis()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let body = format!("m-{i}");
                i += 1;
                let began = Instant::now();
                match tokio::time::timeout(
                    Duration::from_secs(3),
                    p.send(Message::new(TOPIC, body.clone())),
                )
                .await
                {
                    Ok(Ok(r)) if r.status == SendStatus::SendOk => {
                        let by = decode_offset_msg_id(&r.offset_msg_id)
                            .ok()
                            .map(|(a, _)| a.ip());
                        if debug && failing {
                            say(&format!(
                                "{} send of {} ms acknowledged by {by:?}",
                                chrono_now(),
                                began.elapsed().as_millis()
                            ));
                        }
                        failing = false;
                        acks.lock().push(Ack {
                            at: (r.queue.queue_id, r.queue_offset),
                            body,
                            by,
                            began,
                            acked: Instant::now(),
                        });
                    }
                    other => {
                        failing = true;
                        if debug {
                            let why = match other {
                                Ok(Ok(r)) => format!("{:?}", r.status),
                                Ok(Err(e)) => e.to_string(),
                                Err(_) => "no answer in 3 s".into(),
                            };
                            say(&format!(
                                "{} send of {} ms failed: {why}",
                                chrono_now(),
                                began.elapsed().as_millis()
                            ));
                        }
                        if let Some(p) = producer.take() {
                            // Its goodbyes to a cut-off broker take a
                            // timeout; the application goes on meanwhile.
                            tokio::spawn(async move { p.shutdown().await });
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if let Some(p) = producer.take() {
                p.shutdown().await;
            }
        })
    };

    let mut failover_ms = Vec::new();
    let mut stale_acks = 0usize;
    let mut offsets_checked = 0usize;
    for round in 0..rounds {
        let (master, epoch0) = wait_in_sync(&raw, Duration::from_secs(60))
            .await
            .ok_or_else(|| {
                format!(
                    "round {round}: the set never got both replicas in sync: {}",
                    dump(dir)
                )
            })?;
        let old = host_of(&master).ok_or_else(|| format!("unknown master {master}"))?;
        let new = if old == "a" { "b" } else { "a" };
        let new_ip: IpAddr = ip_of(new).parse().map_err(|e| format!("{e}"))?;
        let old_ip: IpAddr = ip_of(old).parse().map_err(|e| format!("{e}"))?;

        // Let some load through the master, then commit consumer offsets
        // there and wait until the slave has them (it copies them every few
        // seconds): a consumer must go on from them after the failover.
        let start = acks.lock().len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acks.lock()[start..]
            .iter()
            .filter(|a| a.by == Some(old_ip))
            .count()
            < 20
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "round {round}: the master takes no sends: {}",
                    dump(dir)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut committed = Vec::new();
        for q in 0..QUEUES {
            let mq = MessageQueue::new(TOPIC, BROKER_NAME, q);
            let off = admin
                .instance()
                .max_offset(&master, &mq)
                .await
                .map_err(|e| format!("round {round}: max offset: {e}"))?;
            admin
                .instance()
                .update_consumer_offset(&master, CONSUMER_GROUP, &mq, off, false)
                .await
                .map_err(|e| format!("round {round}: commit offset: {e}"))?;
            committed.push((mq, off));
        }
        let slave = broker_addr(new);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut all = true;
            for (mq, off) in &committed {
                let got = admin
                    .instance()
                    .query_consumer_offset(&slave, CONSUMER_GROUP, mq)
                    .await;
                all &= matches!(got, Ok(Some(o)) if o >= *off);
            }
            if all {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "round {round}: the slave never copied the committed offsets"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let fault = Fault::of_round(round);
        match fault {
            Fault::Kill => {
                if let Some(p) = brokers.get_mut(old) {
                    p.kill9();
                }
            }
            Fault::Partition => net.link(old, false)?,
            Fault::ControllerPartition => net.blackhole(old, &["c0", "c1", "c2"], true)?,
        }
        // A send that began before the fault may still be acknowledged by
        // the old master; the failover ends with the first SEND_OK from
        // the new one.
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(30);
        let took = loop {
            let first = acks
                .lock()
                .iter()
                .find(|a| a.began > t0 && a.by == Some(new_ip))
                .map(|a| a.acked - t0);
            if let Some(d) = first {
                break d;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "round {round} ({}): no SEND_OK from the new master: {}",
                    fault.name(),
                    dump(dir)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        failover_ms.push(took.as_millis() as u64);
        let moved = matches!(replica_info(&raw).await, Some((m, _, e)) if m == slave && e > epoch0);
        if !moved {
            return Err(format!(
                "round {round}: SEND_OK from {new} but the controller did not move the master"
            ));
        }
        say(&format!(
            "round {round} ({} of {master}, master epoch {epoch0}) failover {} ms",
            fault.name(),
            took.as_millis()
        ));

        // The new master serves the committed offsets.
        for (mq, off) in &committed {
            let got = admin
                .instance()
                .query_consumer_offset(&slave, CONSUMER_GROUP, mq)
                .await
                .map_err(|e| format!("round {round}: query offset on the new master: {e}"))?;
            if got.is_none_or(|o| o < *off) {
                return Err(format!(
                    "round {round}: queue {} committed {off}, the new master says {got:?}",
                    mq.queue_id
                ));
            }
            offsets_checked += 1;
        }

        // Keep sending a while on the new master, with the old one still out
        // (a cut-off master must not take writes meanwhile).
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Heal: the old master returns and must rejoin as a slave.
        match fault {
            Fault::Kill => {
                brokers.insert(old, spawn_broker(net, dir, old));
            }
            Fault::Partition => net.link(old, true)?,
            Fault::ControllerPartition => net.blackhole(old, &["c0", "c1", "c2"], false)?,
        }
        let back = wait_in_sync(&raw, Duration::from_secs(60)).await;
        match back {
            Some((m, _)) if m == slave => {}
            other => {
                return Err(format!(
                    "round {round}: after healing the set is {other:?}, want {slave} master with both in sync: {}",
                    dump(dir)
                ))
            }
        }
        // Acknowledgements by the old master of sends begun after the new
        // master's first SEND_OK: two masters took writes at once.
        let first_new = t0 + took;
        stale_acks += acks
            .lock()
            .iter()
            .filter(|a| a.by == Some(old_ip) && a.began > first_new)
            .count();
    }
    // Some sends after the last rejoin, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let _ = sender.await;

    let master = replica_info(&raw).await.ok_or("no master at the end")?.0;
    let acked: Vec<Ack> = acks.lock().clone();
    let on_master = read_all(&admin, &master).await;
    let lost: Vec<_> = acked
        .iter()
        .filter(|a| on_master.get(&a.at) != Some(&a.body))
        .map(|a| (a.at, a.body.clone()))
        .collect();
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for v in on_master.values() {
        *seen.entry(v.as_str()).or_insert(0) += 1;
    }
    let duplicates = seen.values().filter(|&&n| n > 1).count();
    let mut sorted = failover_ms.clone();
    sorted.sort_unstable();
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    let max = sorted.last().copied().unwrap_or(0);
    say(&format!(
        "FAILOVER_NETNS rounds={rounds} acked={} lost={} duplicates={duplicates} stale_master_acks={stale_acks} offsets_checked={offsets_checked} failover_ms_p50={p50} failover_ms_max={max} failover_ms={failover_ms:?}",
        acked.len(),
        lost.len()
    ));
    admin.shutdown().await;
    raw.close().await;
    for p in controllers.iter_mut() {
        p.kill9();
    }
    drop(brokers);
    if !lost.is_empty() {
        return Err(format!(
            "{} acknowledged messages lost, e.g. {:?}: {}",
            lost.len(),
            &lost[..lost.len().min(5)],
            dump(dir)
        ));
    }
    if stale_acks > 0 {
        return Err(format!(
            "the old master acknowledged {stale_acks} sends after the new master took over"
        ));
    }
    Ok(())
}
