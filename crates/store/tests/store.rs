//! Behaviour of the MessageStore facade: append, segments, reads and their
//! statuses, filters, time lookups, index, flush policies, listener.

mod common;

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use apogee_protocol::message::{stored, tags_hash_code};
use apogee_store::{
    FlushDiskType, GetStatus, MessageStore, OpenError, PutError, PutStatus, StoreHooks,
};
use common::*;

/// Minimal executor: poll on this thread, park between wakes.
fn block_on<F: Future>(f: F) -> F::Output {
    struct T(std::thread::Thread);
    impl Wake for T {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(T(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

#[test]
fn put_then_get_returns_stored_bytes_with_assigned_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(small_config(dir.path()));
    let mut phys = Vec::new();
    for i in 0..100 {
        let r = store
            .put_message(&msg("T", 1, &body_of(i), None, None, None))
            .unwrap();
        assert_eq!(r.status, PutStatus::Ok);
        assert_eq!(r.queue_offset, i as i64);
        assert_eq!(r.msg_count, 1);
        assert_eq!(r.msg_id().len(), 32);
        phys.push(r.phys_offset);
    }
    let msgs = read_all(&store, "T", 1, 0);
    assert_eq!(msgs.len(), 100);
    let mut last_ts = 0;
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(&m.body[..], &body_of(i)[..]);
        assert_eq!(m.queue_offset, i as i64);
        assert_eq!(m.physical_offset, phys[i]);
        assert_eq!(m.topic, "T");
        assert_eq!(m.queue_id, 1);
        assert!(m.store_timestamp >= last_ts && m.store_timestamp > 0);
        last_ts = m.store_timestamp;
        assert_eq!(m.store_host, host());
    }
    assert_eq!(store.max_offset("T", 1), 100);
    assert_eq!(store.min_offset("T", 1), 0);
    // Other queues of the topic are independent.
    let r = store
        .put_message(&msg("T", 2, b"x", None, None, None))
        .unwrap();
    assert_eq!(r.queue_offset, 0);
}

#[test]
fn get_statuses_cover_the_pull_cases() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(small_config(dir.path()));
    let r = store.get_messages("g", "Nope", 0, 0, 32, 1 << 20, None);
    assert_eq!(r.status, GetStatus::NoMatchedLogicQueue);
    assert_eq!(r.status.as_str(), "NO_MATCHED_LOGIC_QUEUE");
    let mut end = 0;
    for i in 0..10 {
        end = store
            .put_message(&msg("S", 0, &body_of(i), None, None, None))
            .unwrap()
            .end_offset();
    }
    assert!(store.wait_dispatched(end, Duration::from_secs(5)));
    let r = store.get_messages("g", "S", 0, 10, 32, 1 << 20, None);
    assert_eq!(
        (r.status, r.next_begin_offset, r.max_offset),
        (GetStatus::OffsetOverflowOne, 10, 10)
    );
    let r = store.get_messages("g", "S", 0, 50, 32, 1 << 20, None);
    assert_eq!(r.status, GetStatus::OffsetOverflowBadly);
    assert_eq!(
        r.next_begin_offset, 0,
        "min is 0, so the client is sent back to 0"
    );
    let r = store.get_messages("g", "S", 0, 3, 4, 1 << 20, None);
    assert_eq!(r.status, GetStatus::Found);
    assert_eq!(r.messages.len(), 4);
    assert_eq!(r.next_begin_offset, 7);
    assert_eq!(r.queue_offsets, vec![3, 4, 5, 6]);
    // Byte bound: at least one message, then stop before exceeding.
    let one = r.messages[0].len();
    let r = store.get_messages("g", "S", 0, 0, 32, 1, None);
    assert_eq!(r.messages.len(), 1);
    assert_eq!(r.next_begin_offset, 1);
    let r = store.get_messages("g", "S", 0, 3, 32, one + 1, None);
    assert_eq!(r.messages.len(), 1);
    assert_eq!(r.buffer_total_size, one);
}

#[test]
fn tag_filter_skips_unmatched_and_reports_no_matched_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(small_config(dir.path()));
    let mut end = 0;
    for i in 0..20 {
        let tag = if i % 4 == 0 { "A" } else { "B" };
        end = store
            .put_message(&msg("F", 0, &body_of(i), Some(tag), None, None))
            .unwrap()
            .end_offset();
    }
    assert!(store.wait_dispatched(end, Duration::from_secs(5)));
    let only_a: HashSet<i64> = [tags_hash_code("A")].into_iter().collect();
    let r = store.get_messages("g", "F", 0, 0, 32, 1 << 20, Some(&only_a));
    assert_eq!(r.status, GetStatus::Found);
    assert_eq!(r.queue_offsets, vec![0, 4, 8, 12, 16]);
    assert_eq!(r.next_begin_offset, 20);
    let r = store.get_messages("g", "F", 0, 17, 32, 1 << 20, Some(&only_a));
    assert_eq!(r.status, GetStatus::NoMatchedMessage);
    assert_eq!(r.next_begin_offset, 20);
    let none = |_: i64| false;
    let r = store.get_messages("g", "F", 0, 0, 32, 1 << 20, Some(&none));
    assert_eq!(r.status, GetStatus::NoMatchedMessage);
    let tf = apogee_protocol::message::TagFilter::parse("B");
    let r = store.get_messages("g", "F", 0, 0, 3, 1 << 20, Some(&tf));
    assert_eq!(r.queue_offsets, vec![1, 2, 3]);
}

#[test]
fn segments_roll_with_blank_marker_and_twenty_digit_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let seg = cfg.mapped_file_size_commit_log;
    let store = open(cfg);
    let body = vec![7u8; 3000];
    let mut results = Vec::new();
    for _ in 0..60 {
        results.push(
            store
                .put_message(&msg("R", 0, &body, None, None, None))
                .unwrap(),
        );
    }
    assert!(store.commit_log_segment_count() >= 3);
    // No record spans a segment boundary.
    for r in &results {
        let start = r.phys_offset as u64;
        assert_eq!(start / seg, (start + r.wrote_bytes as u64 - 1) / seg);
    }
    // The first segment ends in a BLANK marker right after its last record.
    let last_in_first = results
        .iter()
        .rfind(|r| (r.phys_offset as u64) < seg)
        .unwrap();
    let blank_at = last_in_first.end_offset() as usize;
    let first = std::fs::read(dir.path().join("commitlog").join("00000000000000000000")).unwrap();
    assert_eq!(first.len() as u64, seg);
    let left = i32::from_be_bytes(first[blank_at..blank_at + 4].try_into().unwrap());
    assert_eq!(left as usize, seg as usize - blank_at);
    assert_eq!(
        i32::from_be_bytes(first[blank_at + 4..blank_at + 8].try_into().unwrap()),
        stored::BLANK_MAGIC_CODE
    );
    assert!(dir
        .path()
        .join("commitlog")
        .join(format!("{seg:020}"))
        .exists());
    // And everything reads back in order.
    let msgs = read_all(&store, "R", 0, 0);
    assert_eq!(msgs.len(), 60);
    assert!(msgs
        .iter()
        .enumerate()
        .all(|(i, m)| m.queue_offset == i as i64 && m.body.len() == 3000));
}

#[test]
fn batch_is_one_append_with_consecutive_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(small_config(dir.path()));
    store
        .put_message(&msg("B", 0, b"first", None, None, None))
        .unwrap();
    let batch: Vec<_> = (0..5)
        .map(|i| msg("B", 0, &body_of(i), None, Some(&format!("k{i}")), None))
        .collect();
    let r = store.put_messages(&batch).unwrap();
    assert_eq!(r.queue_offset, 1);
    assert_eq!(r.msg_count, 5);
    assert_eq!(r.batch_offsets.len(), 4);
    assert_eq!(r.msg_ids().split(',').count(), 5);
    let msgs = read_all(&store, "B", 0, 0);
    assert_eq!(msgs.len(), 6);
    for (i, m) in msgs[1..].iter().enumerate() {
        assert_eq!(m.queue_offset, 1 + i as i64);
        assert_eq!(&m.body[..], &body_of(i)[..]);
    }
    assert_eq!(msgs[2].physical_offset, r.batch_offsets[0]);
    // Contiguous: each record starts where the previous ended.
    let sizes: u64 = msgs[1..].iter().map(|m| m.store_size as u64).sum();
    assert_eq!(sizes as usize, r.wrote_bytes);
    // Mixed targets are refused.
    let mixed = vec![
        msg("B", 0, b"a", None, None, None),
        msg("B", 1, b"b", None, None, None),
    ];
    assert!(matches!(
        store.put_messages(&mixed),
        Err(PutError::IllegalMessage(_))
    ));
}

#[test]
fn oversized_message_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_message_size = 1000;
    let store = open(cfg);
    let err = store
        .put_message(&msg("Big", 0, &vec![0u8; 2000], None, None, None))
        .unwrap_err();
    assert!(
        matches!(err, PutError::MessageTooLarge { max: 1000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("maxMessageSize"));
    assert_eq!(store.commit_log_max_offset(), 0, "nothing was written");
    assert!(store
        .put_message(&msg("Big", 0, &[0u8; 100], None, None, None))
        .is_ok());
}

#[test]
fn body_of_exactly_max_message_size_is_stored_with_its_record() {
    // Apache bounds the body by maxMessageSize and lets the record around it
    // (topic, properties, fixed fields) add up to 64 KiB.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_message_size = 1000;
    let store = open(cfg);
    assert!(store
        .put_message(&msg(
            "Big",
            0,
            &[7u8; 1000],
            Some("TagA"),
            Some("k1 k2"),
            None
        ))
        .is_ok());
    let err = store
        .put_message(&msg("Big", 0, &[7u8; 1001], None, None, None))
        .unwrap_err();
    assert!(
        matches!(
            err,
            PutError::MessageTooLarge {
                size: 1001,
                max: 1000
            }
        ),
        "{err}"
    );
}

#[test]
fn offset_by_time_and_earliest_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(small_config(dir.path()));
    let mut stamps = Vec::new();
    for i in 0..6 {
        let r = store
            .put_message(&msg("Time", 0, &body_of(i), None, None, None))
            .unwrap();
        stamps.push(r.store_timestamp);
        std::thread::sleep(Duration::from_millis(15));
    }
    assert!(store.wait_dispatched(store.commit_log_max_offset() as u64, Duration::from_secs(5)));
    assert_eq!(store.offset_by_time("Time", 0, 0), 0);
    assert_eq!(store.offset_by_time("Time", 0, stamps[3]), 3);
    assert_eq!(store.offset_by_time("Time", 0, stamps[3] - 1), 3);
    assert_eq!(store.offset_by_time("Time", 0, stamps[5] + 1), 6);
    assert_eq!(store.offset_by_time("Nope", 0, 0), 0);
    assert_eq!(store.earliest_message_time("Time", 0), Some(stamps[0]));
    assert_eq!(store.earliest_message_time_store(), Some(stamps[0]));
}

#[test]
fn index_query_by_key_and_unique_key_with_time_range_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.max_index_num = 40; // forces several index files
    let store = open(cfg);
    let mut results = Vec::new();
    for i in 0..30 {
        let keys = format!("order-{} common", i % 3);
        let uniq = format!("UNIQ{i:04}");
        results.push(
            store
                .put_message(&msg("Idx", 0, &body_of(i), None, Some(&keys), Some(&uniq)))
                .unwrap(),
        );
    }
    store
        .put_message(&msg("Other", 0, b"o", None, Some("order-1"), None))
        .unwrap();
    assert!(store.wait_dispatched(store.commit_log_max_offset() as u64, Duration::from_secs(5)));
    assert!(
        dir.path().join("index").read_dir().unwrap().count() >= 2,
        "index rolled over by count"
    );
    let q = store.query_by_key("Idx", "order-1", 64, 0, i64::MAX);
    assert_eq!(q.messages.len(), 10);
    for b in &q.messages {
        let m = decode(b);
        assert_eq!(m.topic, "Idx");
        assert!(m.keys().any(|k| k == "order-1"));
    }
    assert_eq!(
        store
            .query_by_key("Idx", "common", 5, 0, i64::MAX)
            .messages
            .len(),
        5
    );
    let u = store.query_by_unique_key("Idx", "UNIQ0017", 32, 0, i64::MAX);
    assert_eq!(u.messages.len(), 1);
    assert_eq!(
        decode(&u.messages[0]).physical_offset,
        results[17].phys_offset
    );
    assert!(store
        .query_by_unique_key("Idx", "order-1", 32, 0, i64::MAX)
        .messages
        .is_empty());
    // Time window entirely in the past: nothing.
    assert!(store
        .query_by_key("Idx", "order-1", 64, 0, results[0].store_timestamp - 10_000)
        .messages
        .is_empty());
    assert!(q.index_last_update_phy_offset > 0);
    // Lookup by offset id reads straight from the CommitLog.
    let b = store
        .look_message_by_offset(results[5].phys_offset)
        .unwrap();
    assert_eq!(decode(&b).queue_offset, 5);
    assert!(store
        .look_message_by_offset(results[5].phys_offset + 1)
        .is_none());
    assert!(store.look_message_by_offset(i64::MAX).is_none());
}

#[test]
fn sync_flush_acknowledges_after_flush_and_groups_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_disk_type = FlushDiskType::SyncFlush;
    cfg.mapped_file_size_commit_log = 1024 * 1024;
    let store = Arc::new(open(cfg));
    let r = store
        .put_message(&msg("Sync", 0, b"one", None, None, None))
        .unwrap();
    assert_eq!(r.status, PutStatus::Ok);
    assert!(store.commit_log_flushed_offset() as u64 >= r.end_offset());
    let writers: i32 = 32;
    let per: usize = 20;
    let total_msgs = writers as usize * per;
    let flushes_before = store.commit_log_flush_count();
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let s = store.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    let r = s
                        .put_message(&msg("Sync", w % 4, &body_of(i), None, None, None))
                        .unwrap();
                    assert_eq!(r.status, PutStatus::Ok);
                    assert!(s.commit_log_flushed_offset() as u64 >= r.end_offset());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let flushes = store.commit_log_flush_count() - flushes_before;
    assert!(
        flushes < total_msgs as u64,
        "group commit: {flushes} flushes for {total_msgs} messages"
    );
    let total: i64 = (0..4).map(|q| store.max_offset("Sync", q)).sum();
    assert!(store.wait_dispatched(store.commit_log_max_offset() as u64, Duration::from_secs(5)));
    let total_after: i64 = (0..4).map(|q| store.max_offset("Sync", q)).sum();
    assert!(total <= total_after);
    // Every acknowledged message plus the first one.
    assert_eq!(total_after, total_msgs as i64 + 1);
}

#[test]
fn slow_flush_reports_flush_disk_timeout_sync_and_async() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_disk_type = FlushDiskType::SyncFlush;
    cfg.sync_flush_timeout = 50;
    let hooks = StoreHooks {
        before_flush: Some(Arc::new(|| std::thread::sleep(Duration::from_millis(300)))),
        ..Default::default()
    };
    let store = MessageStore::open_with(cfg, hooks).unwrap();
    let r = store
        .put_message(&msg("Slow", 0, b"x", None, None, None))
        .unwrap();
    assert_eq!(r.status, PutStatus::FlushDiskTimeout);
    assert_eq!(r.status.as_str(), "FLUSH_DISK_TIMEOUT");
    let p = store
        .put_message_async(&msg("Slow", 0, b"y", None, None, None))
        .unwrap();
    let r2 = block_on(p);
    assert_eq!(r2.status, PutStatus::FlushDiskTimeout);
    assert_eq!(
        r2.queue_offset, 1,
        "the message is stored even though the flush timed out"
    );
}

#[test]
fn async_put_future_resolves_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.flush_disk_type = FlushDiskType::SyncFlush;
    let store = open(cfg);
    let p = store
        .put_message_async(&msg("Fut", 0, b"x", None, None, None))
        .unwrap();
    let r = block_on(p);
    assert_eq!(r.status, PutStatus::Ok);
    assert!(store.commit_log_flushed_offset() as u64 >= r.end_offset());
    assert!(block_on(store.flushed_future(r.end_offset())));
    assert!(store.wait_flushed(r.end_offset(), Duration::from_secs(1)));
}

#[test]
fn async_flush_flushes_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(small_config(dir.path()));
    let r = store
        .put_message(&msg("Bg", 0, b"x", None, None, None))
        .unwrap();
    assert_eq!(r.status, PutStatus::Ok);
    // flushIntervalCommitLog is 20 ms in the test config.
    assert!(store.wait_flushed(r.end_offset(), Duration::from_secs(5)));
}

#[test]
fn arriving_listener_sees_every_dispatched_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(small_config(dir.path()));
    let seen = Arc::new(AtomicUsize::new(0));
    let s2 = seen.clone();
    store.set_message_arriving_listener(Arc::new(
        move |topic: &str, q: i32, off: i64, code: i64, _ts: i64| {
            assert_eq!(topic, "L");
            assert_eq!(q, 3);
            assert_eq!(code, tags_hash_code("t"));
            assert_eq!(off as usize, s2.fetch_add(1, Ordering::SeqCst));
        },
    ));
    let mut end = 0;
    for i in 0..10 {
        end = store
            .put_message(&msg("L", 3, &body_of(i), Some("t"), None, None))
            .unwrap()
            .end_offset();
    }
    assert!(store.wait_dispatched(end, Duration::from_secs(5)));
    assert_eq!(seen.load(Ordering::SeqCst), 10);
}

#[test]
fn clean_reopen_keeps_everything_and_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    {
        let store = open(cfg.clone());
        for i in 0..50 {
            store
                .put_message(&msg("C", 0, &body_of(i), None, Some("kk"), None))
                .unwrap();
        }
        store.shutdown().unwrap();
        assert!(
            !dir.path().join("abort").exists(),
            "clean shutdown removes the abort marker"
        );
        assert!(dir.path().join("checkpoint").exists());
    }
    let store = open(cfg);
    assert_eq!(store.max_offset("C", 0), 50);
    let r = store
        .put_message(&msg("C", 0, b"next", None, None, None))
        .unwrap();
    assert_eq!(r.queue_offset, 50);
    let msgs = read_all(&store, "C", 0, 0);
    assert_eq!(msgs.len(), 51);
    assert_eq!(
        store
            .query_by_key("C", "kk", 100, 0, i64::MAX)
            .messages
            .len(),
        50
    );
}

#[test]
fn a_second_open_of_the_same_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = open(small_config(dir.path()));
    assert!(matches!(
        MessageStore::open(small_config(dir.path())),
        Err(OpenError::Locked(_))
    ));
}
