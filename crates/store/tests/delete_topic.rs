//! Topic deletion: the topic's ConsumeQueues (table, files, folder) and its
//! next queue offsets go; other topics and the CommitLog stay.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apogee_store::{DeleteTopicsError, GetStatus, MessageStore};
use common::*;

fn put(store: &MessageStore, topic: &str, queue_id: i32, body: &[u8]) -> i64 {
    store
        .put_message(&msg(topic, queue_id, body, Some("tag"), None, None))
        .unwrap()
        .queue_offset
}

fn wait_all_dispatched(store: &MessageStore) {
    assert!(store.wait_dispatched(
        store.commit_log_max_offset() as u64,
        Duration::from_secs(10)
    ));
}

fn bodies(store: &MessageStore, topic: &str, queue_id: i32) -> Vec<Vec<u8>> {
    read_all(store, topic, queue_id, 0)
        .into_iter()
        .map(|m| m.body.to_vec())
        .collect()
}

#[test]
fn delete_removes_queues_files_and_offsets_and_the_topic_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let cq_dir = dir.path().join("consumequeue");
    {
        let store = open(cfg.clone());
        // Enough messages to fill more than one ConsumeQueue file (100 entries).
        for i in 0..150 {
            put(&store, "T", (i % 2) as i32, &body_of(i));
        }
        for i in 0..10 {
            put(&store, "Other", 0, &body_of(i));
        }
        wait_all_dispatched(&store);
        store.flush_consume_queues().unwrap();
        assert!(cq_dir.join("T").join("0").is_dir());
        let cl_max = store.commit_log_max_offset();

        assert_eq!(store.delete_topics(&["T", "Missing"]).unwrap(), 2);
        assert!(!cq_dir.join("T").exists(), "topic folder removed");
        assert!(store.queue_ids("T").is_empty());
        assert!(!store.topics().contains(&"T".to_string()));
        for q in 0..2 {
            assert_eq!(store.max_offset("T", q), 0);
            let r = store.get_messages("g", "T", q, 0, 32, 1 << 20, None);
            assert!(r.messages.is_empty());
            assert_eq!(r.status, GetStatus::NoMatchedLogicQueue);
        }
        // The CommitLog keeps its bytes; other topics are untouched.
        assert_eq!(store.commit_log_max_offset(), cl_max);
        assert_eq!(store.max_offset("Other", 0), 10);
        assert_eq!(bodies(&store, "Other", 0).len(), 10);
        // Deleting again finds nothing.
        assert_eq!(store.delete_topics(&["T"]).unwrap(), 0);

        // Re-created: offsets start at 0 and only the new messages read back.
        assert_eq!(put(&store, "T", 0, b"new-0"), 0);
        assert_eq!(put(&store, "T", 0, b"new-1"), 1);
        assert_eq!(put(&store, "T", 1, b"new-q1"), 0);
        assert_eq!(
            bodies(&store, "T", 0),
            vec![b"new-0".to_vec(), b"new-1".to_vec()]
        );
        assert_eq!(bodies(&store, "T", 1), vec![b"new-q1".to_vec()]);
        store.shutdown().unwrap();
    }
    // A clean restart brings nothing old back.
    let store = open(cfg);
    assert_eq!(store.queue_ids("T"), vec![0, 1]);
    assert_eq!(store.max_offset("T", 0), 2);
    assert_eq!(store.min_offset("T", 0), 0);
    assert_eq!(
        bodies(&store, "T", 0),
        vec![b"new-0".to_vec(), b"new-1".to_vec()]
    );
    assert_eq!(bodies(&store, "T", 1), vec![b"new-q1".to_vec()]);
    assert_eq!(put(&store, "T", 0, b"new-2"), 2);
    assert_eq!(store.max_offset("Other", 0), 10);
    assert!(!dir.path().join("consumequeue.deleted").exists());
}

#[test]
fn deleted_topic_stays_deleted_after_a_restart_without_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    {
        let store = open(cfg.clone());
        for i in 0..20 {
            put(&store, "Gone", 0, &body_of(i));
        }
        wait_all_dispatched(&store);
        assert_eq!(store.delete_topics(&["Gone"]).unwrap(), 1);
        store.shutdown().unwrap();
    }
    let store = open(cfg);
    assert!(store.queue_ids("Gone").is_empty());
    assert_eq!(store.max_offset("Gone", 0), 0);
    assert_eq!(put(&store, "Gone", 0, b"again"), 0);
}

/// Puts keep running while the topic is deleted: every message appended
/// after the deletion gets offsets from 0 and reads back from the new queue,
/// none lands in the deleted one.
#[test]
fn delete_while_appending_keeps_the_new_queue_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(small_config(dir.path())));
    for i in 0..30 {
        put(&store, "Busy", 0, format!("b{i}").as_bytes());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut offsets = Vec::new();
            let mut i = 30;
            loop {
                // At least one put starts after the deletion returned.
                let stopping = stop.load(Ordering::Acquire);
                offsets.push((i, put(&store, "Busy", 0, format!("b{i}").as_bytes())));
                i += 1;
                if stopping && i >= 100 {
                    break;
                }
            }
            offsets
        })
    };
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(store.delete_topics(&["Busy"]).unwrap(), 1);
    stop.store(true, Ordering::Release);
    let offsets = writer.join().unwrap();
    // Messages after the reset point are the re-created topic.
    let reset = offsets
        .windows(2)
        .position(|w| w[1].1 <= w[0].1)
        .map_or(0, |p| p + 1);
    let expected: Vec<Vec<u8>> = offsets[reset..]
        .iter()
        .enumerate()
        .map(|(k, (i, off))| {
            assert_eq!(*off, k as i64, "offsets restart at 0");
            format!("b{i}").into_bytes()
        })
        .collect();
    assert_eq!(bodies(&store, "Busy", 0), expected);
    assert_eq!(store.max_offset("Busy", 0), expected.len() as i64);
}

#[test]
fn delete_after_shutdown_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(small_config(dir.path()));
    store.shutdown().unwrap();
    assert!(matches!(
        store.delete_topics(&["T"]),
        Err(DeleteTopicsError::ShutDown)
    ));
}
