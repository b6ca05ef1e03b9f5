//! Helpers for tests that run the real `apogee` binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `apogee` process, killed when dropped.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `apogee namesrv` on 127.0.0.1 with an ephemeral port and a
/// throw-away KV config file, and waits until it says where it listens.
pub fn start_namesrv(extra: &[&str]) -> Process {
    let dir = tempfile::tempdir().expect("temp dir");
    let kv = dir.path().join("kvConfig.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apogee"));
    cmd.args([
        "namesrv",
        "--listen-port",
        "0",
        "--set",
        "bindAddress=127.0.0.1",
    ])
    .arg("--set")
    .arg(format!("kvConfigPath={}", kv.display()))
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn apogee namesrv");
    let addr = read_listen_addr(&mut child, "apogee namesrv listening on ");
    Process {
        child,
        addr,
        _dir: dir,
    }
}

/// Reads the process's stdout until the line `<prefix><addr>` appears.
fn read_listen_addr(child: &mut Child, prefix: &'static str) -> SocketAddr {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let text = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the process did not print its listen address in time");
    let addr: SocketAddr = text.parse().expect("listen address");
    addr
}

/// Reads the process's stdout until a line starting with each prefix has
/// appeared (in any order); returns the addresses in `prefixes` order.
pub fn read_listen_addrs(child: &mut Child, prefixes: &[&'static str]) -> Vec<SocketAddr> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let wanted: Vec<&'static str> = prefixes.to_vec();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            for (i, p) in wanted.iter().enumerate() {
                if let Some(rest) = line.strip_prefix(p) {
                    let _ = tx.send((i, rest.trim().to_string()));
                }
            }
        }
    });
    let mut found: Vec<Option<SocketAddr>> = vec![None; prefixes.len()];
    while found.iter().any(Option::is_none) {
        let (i, text) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the process did not print its listen addresses in time");
        found[i] = Some(text.parse().expect("listen address"));
    }
    found.into_iter().flatten().collect()
}

/// Sends SIGTERM and waits (up to 30 s) for the process to exit.
pub fn terminate(child: &mut Child) -> ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `apogee standalone`, killed when dropped.
pub struct Standalone {
    pub child: Child,
    pub namesrv: SocketAddr,
    pub broker: SocketAddr,
    /// Its working directory; the data folder is `<dir>/apogee-data`.
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Standalone {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("apogee-data")
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        terminate(&mut self.child)
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `apogee standalone` on 127.0.0.1 with ephemeral ports in a fresh
/// temp working directory (so data lands in `<tmp>/apogee-data`).
pub fn start_standalone(extra: &[&str]) -> Standalone {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut s = start_standalone_in(tmp.path(), extra);
    s._tmp = Some(tmp);
    s
}

/// Like [`start_standalone`] in a given working directory (restart tests
/// pass the same one again).
pub fn start_standalone_in(dir: &Path, extra: &[&str]) -> Standalone {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apogee"));
    cmd.current_dir(dir)
        .args([
            "standalone",
            "--namesrv-port",
            "0",
            "--listen-port",
            "0",
            "--set",
            "bindAddress=127.0.0.1",
            "--set",
            "brokerIP1=127.0.0.1",
            // Tests must not depend on how full the machine's disk is.
            "--set",
            "diskSpaceWarningLevelRatio=100",
            "--set",
            "diskSpaceCleanForciblyRatio=100",
            "--set",
            "diskMaxUsedSpaceRatio=100",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn apogee standalone");
    let addrs = read_listen_addrs(
        &mut child,
        &[
            "apogee namesrv listening on ",
            "apogee broker listening on ",
        ],
    );
    Standalone {
        child,
        namesrv: addrs[0],
        broker: addrs[1],
        dir: dir.to_path_buf(),
        _tmp: None,
    }
}

/// Starts `apogee broker` registering with `namesrv`, on 127.0.0.1 with an
/// ephemeral port and its store in a fresh temp dir.
pub fn start_broker(namesrv: &str, extra: &[&str]) -> Process {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apogee"));
    cmd.args([
        "broker",
        "-n",
        namesrv,
        "--listen-port",
        "0",
        "--set",
        "bindAddress=127.0.0.1",
        "--set",
        "brokerIP1=127.0.0.1",
        // Tests must not depend on how full the machine's disk is.
        "--set",
        "diskSpaceWarningLevelRatio=100",
        "--set",
        "diskSpaceCleanForciblyRatio=100",
        "--set",
        "diskMaxUsedSpaceRatio=100",
    ])
    .arg("--set")
    .arg(format!(
        "storePathRootDir={}",
        dir.path().join("store").display()
    ))
    .args(extra)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn apogee broker");
    let addr = read_listen_addrs(&mut child, &["apogee broker listening on "])[0];
    Process {
        child,
        addr,
        _dir: dir,
    }
}

/// A runtime owner for rocketmq-client-rust whose listener lane queues
/// without a tight bound. The client runs every consumer listener call as a
/// task in that lane, sized from the CPU count (16 queued tasks on 2 cores);
/// a burst beyond it is refused and the message is sent back (clustering) or
/// dropped (broadcasting). Java's consumer queues without bound; so does this.
pub fn rocketmq_runtime_owner() -> rocketmq_runtime::RuntimeOwner {
    let mut config = rocketmq_runtime::RuntimeConfig::default();
    let lane = &mut config.blocking_lane_policies.metadata_io;
    lane.max_queue_depth = 65_536;
    lane.queue_timeout = Duration::from_secs(60);
    rocketmq_runtime::RuntimeOwner::plan(config)
        .expect("runtime config")
        .build()
        .expect("runtime owner")
}
