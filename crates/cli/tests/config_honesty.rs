//! Config honesty as a real process: a key whose value asks for a feature
//! Apogee lacks, where running without it would be unsafe, stops
//! `apogee standalone` / `apogee broker` before anything listens, with an
//! error naming the key; a key accepted but not honoured is warned about at
//! the default log level.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `apogee <args>` in a temp dir on ephemeral loopback ports; fails the
/// test if it is still running after 20 s (it would be serving then).
fn run_apogee(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_apogee"))
        .current_dir(dir.path())
        .args(args)
        .env_remove("APOGEE_LOG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apogee");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "apogee {args:?} did not stop: stdout {} stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// `apogee standalone --set key=value` and `apogee broker --set key=value`
/// both exit non-zero, print nothing on stdout (no listen address), and
/// name the key with "not supported yet" on stderr.
fn assert_start_refused(key: &str, value: &str) {
    let set = format!("{key}={value}");
    let standalone = [
        "standalone",
        "--namesrv-port",
        "0",
        "--listen-port",
        "0",
        "--set",
        "bindAddress=127.0.0.1",
        "--set",
        &set,
    ];
    let broker = [
        "broker",
        "-n",
        "127.0.0.1:1",
        "--listen-port",
        "0",
        "--set",
        "bindAddress=127.0.0.1",
        "--set",
        "storePathRootDir=store",
        "--set",
        &set,
    ];
    for args in [&standalone[..], &broker[..]] {
        let out = run_apogee(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started: {stdout} {stderr}");
        assert!(
            !stdout.contains("listening on"),
            "{args:?} listened: {stdout}"
        );
        assert!(
            stderr.contains(&format!("{key}={value}")) && stderr.contains("not supported yet"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn acl_enable_stops_the_start() {
    assert_start_refused("aclEnable", "true");
}

#[test]
fn authentication_enabled_stops_the_start() {
    assert_start_refused("authenticationEnabled", "true");
}

/// Controller mode is honoured now, but only with what it needs: a start
/// without controllers (or in standalone) stops with an error naming the key.
#[test]
fn controller_mode_without_what_it_needs_stops_the_start() {
    for (args, key) in [
        (
            &[
                "broker",
                "-n",
                "127.0.0.1:1",
                "--listen-port",
                "0",
                "--set",
                "bindAddress=127.0.0.1",
                "--set",
                "storePathRootDir=store",
                "--set",
                "enableControllerMode=true",
            ][..],
            "controllerAddr",
        ),
        (
            &[
                "broker",
                "-n",
                "127.0.0.1:1",
                "--listen-port",
                "0",
                "--set",
                "bindAddress=127.0.0.1",
                "--set",
                "storePathRootDir=store",
                "--set",
                "enableControllerMode=true",
                "--set",
                "controllerAddr=127.0.0.1:1",
            ][..],
            "listenPort",
        ),
        (
            &[
                "standalone",
                "--namesrv-port",
                "0",
                "--listen-port",
                "0",
                "--set",
                "bindAddress=127.0.0.1",
                "--set",
                "enableControllerMode=true",
            ][..],
            "enableControllerMode",
        ),
    ] {
        let out = run_apogee(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started: {stdout} {stderr}");
        assert!(
            !stdout.contains("listening on"),
            "{args:?} listened: {stdout}"
        );
        assert!(stderr.contains(key), "{args:?}: {stderr}");
    }
}

#[test]
fn enable_dleger_commit_log_stops_the_start() {
    assert_start_refused("enableDLegerCommitLog", "true");
}

#[test]
fn tls_enable_stops_the_start() {
    assert_start_refused("tlsEnable", "true");
}

#[test]
fn unhonoured_keys_are_warned_about_by_default_and_safe_values_are_quiet() {
    let out = run_apogee(&[
        "broker",
        "--set",
        "sendMessageThreadPoolNums=16",
        "--set",
        "waitTimeMillsInSendQueue=500",
        "--set",
        "aclEnable=false",
        "--set",
        "brokerRole=ASYNC_MASTER",
        "-p",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warned: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warned
            .iter()
            .any(|l| l.contains("sendMessageThreadPoolNums") && l.contains("not honoured")),
        "{stderr}"
    );
    assert!(
        warned
            .iter()
            .any(|l| l.contains("waitTimeMillsInSendQueue") && l.contains("not honoured")),
        "{stderr}"
    );
    assert!(
        !warned
            .iter()
            .any(|l| l.contains("aclEnable") || l.contains("brokerRole")),
        "{stderr}"
    );
}
