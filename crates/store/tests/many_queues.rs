//! Queues cost no descriptor or mapping: thousands of written queues fit
//! under a small open-files limit, read back across the in-memory tail and
//! the files, and survive a restart. (Crashes with entries still in memory
//! are walked by `power_loss.rs` and `fault_walk.rs`.)

mod common;

use std::time::Duration;

use apogee_store::{GetStatus, MessageStore};
use common::*;

const QUEUES: usize = 3000;

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count())
}

fn topic(i: usize) -> String {
    format!("Many{i:05}")
}

fn check_all(store: &MessageStore, per_queue: usize) {
    for i in 0..QUEUES {
        let msgs = read_all(store, &topic(i), 0, 0);
        assert_eq!(msgs.len(), per_queue, "{}", topic(i));
        for (n, m) in msgs.iter().enumerate() {
            assert_eq!(m.body.to_vec(), body_of(i * 10 + n), "{} #{n}", topic(i));
        }
    }
}

#[test]
fn thousands_of_queues_need_no_descriptor_or_mapping_each() {
    // Far fewer descriptors than queues: each queue kept open would fail.
    let limit = libc::rlimit {
        rlim_cur: 400,
        rlim_max: 400,
    };
    // SAFETY: plain setrlimit on this test process (its own binary).
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) },
        0,
        "setrlimit"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.mapped_file_size_commit_log = 1 << 20;
    cfg.max_message_size = 4096;
    let fds_before = open_files();
    let maps_before = mappings();
    {
        let store = open(cfg.clone());
        for round in 0..2 {
            for i in 0..QUEUES {
                store
                    .put_message(&msg(
                        &topic(i),
                        0,
                        &body_of(i * 10 + round),
                        None,
                        None,
                        None,
                    ))
                    .unwrap();
            }
            assert!(store.wait_dispatched(
                store.commit_log_max_offset() as u64,
                Duration::from_secs(30)
            ));
            if round == 0 {
                // The first entries go to files, the second stay in memory.
                store.flush_consume_queues().unwrap();
            }
        }
        check_all(&store, 2);
        assert!(!store.is_dispatch_stalled());
        let fds = open_files();
        let maps = mappings();
        assert!(
            fds < fds_before + 64,
            "{fds} descriptors open for {QUEUES} queues (before: {fds_before})"
        );
        assert!(
            maps < maps_before + 200,
            "{maps} mappings for {QUEUES} queues (before: {maps_before})"
        );
        store.shutdown().unwrap();
    }
    // A clean restart finds every entry in the files.
    {
        let store = open(cfg.clone());
        check_all(&store, 2);
        for i in 0..QUEUES {
            store
                .put_message(&msg(&topic(i), 0, &body_of(i * 10 + 2), None, None, None))
                .unwrap();
        }
        check_all(&store, 3);
        store.shutdown().unwrap();
    }
}

/// A queue read from an offset held in the files and from one in memory,
/// and across a file boundary (100 entries per file in the test config).
#[test]
fn reads_span_files_and_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let store = open(cfg);
    for i in 0..150 {
        store
            .put_message(&msg("Span", 0, &body_of(i), None, None, None))
            .unwrap();
    }
    assert!(store.wait_dispatched(store.commit_log_max_offset() as u64, Duration::from_secs(5)));
    store.flush_consume_queues().unwrap();
    for i in 150..230 {
        store
            .put_message(&msg("Span", 0, &body_of(i), None, None, None))
            .unwrap();
    }
    let all = read_all(&store, "Span", 0, 0);
    assert_eq!(all.len(), 230);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.body.to_vec(), body_of(i), "#{i}");
    }
    // One pull that starts in the files and runs into the tail.
    let r = store.get_messages("g", "Span", 0, 140, 32, 1 << 20, None);
    assert_eq!(r.status, GetStatus::Found);
    assert_eq!(r.messages.len(), 32);
    assert_eq!(decode(&r.messages[0]).body.to_vec(), body_of(140));
    assert_eq!(decode(&r.messages[31]).body.to_vec(), body_of(171));
    assert_eq!(
        std::fs::read_dir(dir.path().join("consumequeue/Span/0"))
            .unwrap()
            .count(),
        2,
        "150 entries written: two files of 100"
    );
}
