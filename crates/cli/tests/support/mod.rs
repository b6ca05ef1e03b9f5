//! Helpers for tests that run the real `apogee` binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
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
