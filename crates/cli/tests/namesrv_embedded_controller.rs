//! `enableControllerInNamesrv=true`: the NameServer process runs a
//! controller group member whose client API is on the NameServer's port, so
//! a controller-mode broker pointed at the NameServer is made master and
//! takes writes; a bad controller key stops the start naming it.

mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A child process killed when the test ends, pass or fail.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn admin(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_apogee"))
        .arg("admin")
        .args(args)
        .stderr(Stdio::piped())
        .output()
        .expect("run apogee admin");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_controller_mode_broker_is_made_master_through_the_namesrv_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let peer = free_port();
    let store = dir.path().join("controller");
    let ns = support::start_namesrv(&[
        "--set",
        "enableControllerInNamesrv=true",
        "--set",
        &format!("controllerDLegerPeers=n0-127.0.0.1:{peer}"),
        "--set",
        "controllerDLegerSelfId=n0",
        "--set",
        &format!("controllerStorePath={}", store.display()),
        "--set",
        "electionTimeoutMills=300",
        "--set",
        "scanNotActiveBrokerInterval=300",
    ]);
    let ns_addr = ns.addr.to_string();
    // Controller mode needs a fixed port (the address the controller knows).
    let port = free_port().to_string();
    let mut broker = Command::new(env!("CARGO_BIN_EXE_apogee"));
    broker.args(["broker", "-n", &ns_addr, "--listen-port", &port]);
    for kv in [
        "bindAddress=127.0.0.1".to_string(),
        "brokerIP1=127.0.0.1".to_string(),
        "diskSpaceWarningLevelRatio=100".to_string(),
        "diskSpaceCleanForciblyRatio=100".to_string(),
        "diskMaxUsedSpaceRatio=100".to_string(),
        format!("storePathRootDir={}", dir.path().join("store").display()),
        "enableControllerMode=true".to_string(),
        format!("controllerAddr={ns_addr}"),
        "brokerRole=SYNC_MASTER".to_string(),
        "brokerHeartbeatInterval=300".to_string(),
        "registerNameServerPeriod=2000".to_string(),
    ] {
        broker.arg("--set").arg(kv);
    }
    let _broker = Killed(
        broker
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn apogee broker"),
    );
    // The controller answers on the NameServer's port.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = admin(&["getControllerMetaData", "-a", &ns_addr]);
        if ok && out.contains("true") {
            break;
        }
        assert!(Instant::now() < deadline, "no controller leader: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The broker was confirmed as master: a send is stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = admin(&[
            "sendMessage",
            "-n",
            &ns_addr,
            "-t",
            "EmbeddedCtl",
            "-p",
            "hello",
        ]);
        if ok && out.contains("SEND_OK") {
            break;
        }
        assert!(Instant::now() < deadline, "no send accepted: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        store.exists(),
        "the controller keeps its state under controllerStorePath"
    );
}

#[test]
fn a_bad_embedded_controller_key_stops_the_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_apogee"))
        .args([
            "namesrv",
            "--listen-port",
            "0",
            "--set",
            "enableControllerInNamesrv=true",
            "--set",
            "controllerDLegerPeers=n0-127.0.0.1:1",
            "--set",
            "controllerDLegerSelfId=n7",
        ])
        .output()
        .expect("run apogee namesrv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("controllerDLegerSelfId"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_apogee"))
        .args(["namesrv", "--set", "enableControllerInNamesrv=maybe", "-p"])
        .output()
        .expect("run apogee namesrv");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("enableControllerInNamesrv"));
}
