//! Config saves under faults (issue #10): ENOSPC and EIO injected into every
//! step of a save (create, write, fdatasync, rename) of `topics.json` and
//! `subscriptionGroup.json`. A save fails with a clear error, logged once
//! per file rather than per change; no `.tmp` is left; the previous file
//! stays readable; the tables in memory are unaffected; once the fault
//! clears, the retry (or the next change) saves the latest state. One test
//! in this binary: it installs the process-wide subscriber.

mod ba_common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_broker::error::BrokerError;
use apogee_broker::register::RegisterSignal;
use apogee_broker::subscription_group::SubscriptionGroupManager;
use apogee_broker::topic_config::TopicConfigManager;
use apogee_broker::BrokerConfig;
use apogee_protocol::body::{SubscriptionGroupConfig, TopicConfig};
use apogee_store::vfs::fault::{FaultRule, FaultyVfs};
use apogee_store::vfs::{self, Op};
use ba_common::Capture;

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn topic(name: String) -> TopicConfig {
    TopicConfig {
        topic_name: name,
        read_queue_nums: 2,
        write_queue_nums: 2,
        ..Default::default()
    }
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn no_tmp(dir: &Path) {
    let tmps: Vec<_> = std::fs::read_dir(dir.join("config"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(tmps.is_empty(), "{tmps:?}");
}

fn errno_of(e: &BrokerError) -> Option<i32> {
    match e {
        BrokerError::ConfigSave { source, .. } => source.io().raw_os_error(),
        _ => None,
    }
}

/// The topics a freshly loaded manager finds on disk (the file as it is).
fn topics_on_disk(cfg: &BrokerConfig) -> TopicConfigManager {
    TopicConfigManager::new(cfg, Arc::new(RegisterSignal::new())).expect("topics.json readable")
}

#[test]
fn config_saves_survive_enospc_and_eio() {
    let cap = Capture::default();
    let writer = cap.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    // Longer than the test: every failure after the first is only counted.
    apogee_throttle::set_default_window(Duration::from_secs(3600));

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = BrokerConfig::default();
    cfg.store.store_path_root_dir = dir.path().to_path_buf();
    let fvfs = FaultyVfs::new(vfs::real());
    let topics = TopicConfigManager::with_vfs(
        &cfg,
        Arc::new(RegisterSignal::new()),
        Arc::new(fvfs.clone()),
    )
    .unwrap();
    let groups = SubscriptionGroupManager::with_vfs(&cfg, Arc::new(fvfs.clone())).unwrap();
    topics.update(topic("Before".into()));
    topics.persist().unwrap();
    groups.update(SubscriptionGroupConfig::new("GroupBefore"));
    groups.persist().unwrap();

    let mut n = 0;
    for errno in [ENOSPC, EIO] {
        for op in [Op::Create, Op::Write, Op::Fdatasync, Op::Rename] {
            let what = format!("errno {errno} on {op:?}");
            let saved = topics.persist_stats();
            fvfs.set_rule(Some(FaultRule {
                op: Some(op),
                path_contains: Some("topics.json"),
                nth: 0,
                errno,
                sticky: true,
            }));
            // A burst of changes while every save fails.
            let first = n;
            for _ in 0..200 {
                topics.update(topic(format!("T{n:04}")));
                n += 1;
            }
            let err = topics.persist().expect_err(&what);
            assert_eq!(errno_of(&err), Some(errno), "{what}: {err}");
            assert!(err.to_string().contains("topics.json"), "{what}: {err}");
            // Retried with backoff, not once per change.
            wait_for("a retry", || {
                topics.persist_stats().failures >= saved.failures + 3
            });
            let stats = topics.persist_stats();
            assert!(stats.pending, "{what}");
            assert_eq!(stats.writes, saved.writes, "{what}");
            assert!(stats.failures - saved.failures < 60, "{what}: {stats:?}");
            no_tmp(dir.path());
            // The file is the previous one, intact.
            let old = topics_on_disk(&cfg);
            assert!(old.contains("Before"), "{what}");
            assert!(!old.contains(&format!("T{first:04}")), "{what}");
            drop(old);
            // Memory is right.
            assert!((first..n).all(|i| topics.contains(&format!("T{i:04}"))));

            // The fault clears: the retry saves the latest state by itself.
            fvfs.set_rule(None);
            wait_for("the retry to save", || !topics.persist_stats().pending);
            let now = topics_on_disk(&cfg);
            assert!(
                (0..n).all(|i| now.contains(&format!("T{i:04}"))),
                "{what}: latest state saved"
            );
            no_tmp(dir.path());
        }

        // Same for the groups; here the next change after the fault saves.
        let what = format!("groups, errno {errno}");
        fvfs.set_rule(Some(FaultRule {
            op: Some(Op::Write),
            path_contains: Some("subscriptionGroup.json"),
            nth: 0,
            errno,
            sticky: true,
        }));
        groups.update(SubscriptionGroupConfig::new(format!("G{errno}a")));
        let err = groups.persist().expect_err(&what);
        assert_eq!(errno_of(&err), Some(errno), "{what}: {err}");
        no_tmp(dir.path());
        let old = SubscriptionGroupManager::new(&cfg).unwrap();
        assert!(old.contains("GroupBefore") && !old.contains(&format!("G{errno}a")));
        assert!(groups.contains(&format!("G{errno}a")));
        fvfs.set_rule(None);
        groups.update(SubscriptionGroupConfig::new(format!("G{errno}b")));
        groups.persist().unwrap();
        let now = SubscriptionGroupManager::new(&cfg).unwrap();
        assert!(now.contains(&format!("G{errno}a")) && now.contains(&format!("G{errno}b")));
    }

    // One error line per file for all those failed saves, naming the file
    // and the cause; one line each time saving works again.
    for file in ["topics.json", "subscriptionGroup.json"] {
        let errors = cap.matching(&["ERROR", "cannot save config file", file]);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].contains("No space left on device"), "{errors:?}");
    }
    assert_eq!(
        cap.matching(&["INFO", "config file saved again", "topics.json"])
            .len(),
        8
    );
    // The summary line counts the suppressed failures.
    apogee_throttle::flush_all();
    let errors = cap.matching(&["ERROR", "cannot save config file", "topics.json"]);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[1].contains("repeated"), "{errors:#?}");
}
