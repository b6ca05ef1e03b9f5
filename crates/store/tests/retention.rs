//! Retention and the disk-full barrier, driven by an injected disk probe.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apogee_store::{GetStatus, MessageStore, PutError, StoreHooks};
use common::*;

#[test]
fn expired_segments_are_deleted_and_queues_follow() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.mapped_file_size_commit_log = 8 * 1024;
    cfg.file_reserved_time = 0; // everything but the current segment is expired
    cfg.max_index_num = 30;
    let store = open(cfg);
    let mut results = Vec::new();
    for i in 0..200 {
        results.push(
            store
                .put_message(&msg(
                    "Ret",
                    0,
                    &body_of(i),
                    None,
                    Some(&format!("k{i}")),
                    None,
                ))
                .unwrap(),
        );
    }
    assert!(store.wait_dispatched(store.commit_log_max_offset() as u64, Duration::from_secs(5)));
    let segs_before = store.commit_log_segment_count();
    assert!(segs_before > 3);
    let index_files_before = dir.path().join("index").read_dir().unwrap().count();
    let deleted = store.delete_expired_files_now();
    assert!(deleted > 0);
    assert_eq!(store.commit_log_segment_count(), segs_before - deleted);
    assert!(
        store.commit_log_segment_count() >= 1,
        "the current segment is never deleted"
    );
    let cl_min = store.commit_log_min_offset();
    assert!(cl_min > 0);
    // The queue's min offset moved to the first message still stored.
    let min = store.min_offset("Ret", 0);
    let first_kept = results
        .iter()
        .position(|r| r.phys_offset >= cl_min)
        .unwrap();
    assert_eq!(min, first_kept as i64);
    let r = store.get_messages("g", "Ret", 0, 0, 32, 1 << 20, None);
    assert_eq!(r.status, GetStatus::OffsetTooSmall);
    assert_eq!(r.next_begin_offset, min);
    let msgs = read_all(&store, "Ret", 0, min);
    assert_eq!(msgs.len(), 200 - first_kept);
    assert_eq!(msgs[0].physical_offset, results[first_kept].phys_offset);
    // ConsumeQueue files (100 entries each) and index files followed.
    store.flush_consume_queues().unwrap();
    let cq_files = dir
        .path()
        .join("consumequeue/Ret/0")
        .read_dir()
        .unwrap()
        .count();
    assert!(
        cq_files <= 2,
        "old ConsumeQueue files deleted, {cq_files} left"
    );
    assert!(dir.path().join("index").read_dir().unwrap().count() < index_files_before);
    assert!(store
        .query_by_key("Ret", "k1", 10, 0, i64::MAX)
        .messages
        .is_empty());
    assert_eq!(
        store
            .query_by_key("Ret", "k199", 10, 0, i64::MAX)
            .messages
            .len(),
        1
    );
    assert_eq!(store.offset_by_time("Ret", 0, 0), min);
    // Reopen: min offsets come back the same.
    store.shutdown().unwrap();
    drop(store);
    let store = open({
        let mut c = small_config(dir.path());
        c.mapped_file_size_commit_log = 8 * 1024;
        c.max_index_num = 30;
        c
    });
    assert_eq!(store.min_offset("Ret", 0), min);
    assert_eq!(store.max_offset("Ret", 0), 200);
}

#[test]
fn a_segment_still_being_read_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.mapped_file_size_commit_log = 8 * 1024;
    cfg.file_reserved_time = 0;
    let store = open(cfg);
    for i in 0..100 {
        store
            .put_message(&msg("Held", 0, &body_of(i), None, None, None))
            .unwrap();
    }
    assert!(store.wait_dispatched(store.commit_log_max_offset() as u64, Duration::from_secs(5)));
    let held = store.get_messages("g", "Held", 0, 0, 1, 1 << 20, None);
    assert_eq!(held.messages.len(), 1);
    let before = store.commit_log_segment_count();
    assert_eq!(
        store.delete_expired_files_now(),
        0,
        "first segment is held by a reader"
    );
    assert_eq!(store.commit_log_segment_count(), before);
    assert!(dir.path().join("commitlog/00000000000000000000").exists());
    assert_eq!(&decode(&held.messages[0]).body[..], &body_of(0)[..]);
    drop(held);
    assert!(store.delete_expired_files_now() > 0);
    assert!(!dir.path().join("commitlog/00000000000000000000").exists());
}

#[test]
fn undispatched_segments_are_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.mapped_file_size_commit_log = 8 * 1024;
    cfg.file_reserved_time = 0;
    let gate = Arc::new(parking_lot::Mutex::new(()));
    let store = MessageStore::open(cfg).unwrap();
    // Hold the dispatcher back through the listener.
    let g2 = gate.clone();
    store.set_message_arriving_listener(Arc::new(
        move |_: &str, _: i32, _: i64, _: i64, _: i64| {
            drop(g2.lock());
        },
    ));
    let guard = gate.lock();
    for i in 0..100 {
        store
            .put_message(&msg("U", 0, &body_of(i), None, None, None))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    let dispatched = store.dispatched_offset();
    store.delete_expired_files_now();
    assert!(
        store.commit_log_min_offset() <= dispatched,
        "nothing past the dispatched offset is deleted"
    );
    drop(guard);
    assert!(store.wait_dispatched(store.commit_log_max_offset() as u64, Duration::from_secs(5)));
}

/// Disk usage computed from the number of CommitLog segments: 30% + 15% each.
fn segment_probe(root: &Path) -> f64 {
    let n = std::fs::read_dir(root.join("commitlog"))
        .map(|d| d.count())
        .unwrap_or(0);
    30.0 + 15.0 * n as f64
}

#[test]
fn disk_full_refuses_writes_keeps_reads_and_resumes_after_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.mapped_file_size_commit_log = 8 * 1024;
    cfg.disk_space_warning_level_ratio = 90; // 4 segments → 90% → full
    cfg.disk_max_used_space_ratio = 75;
    cfg.disk_space_clean_forcibly_ratio = 100;
    cfg.file_reserved_time = 0;
    cfg.clean_resource_interval = 3_600_000; // cleanup only when asked below
    let enabled = Arc::new(AtomicU64::new(1));
    let en = enabled.clone();
    let hooks = StoreHooks {
        disk_probe: Some(Arc::new(move |p: &Path| {
            (en.load(Ordering::SeqCst) == 1).then(|| segment_probe(p))
        })),
        ..Default::default()
    };
    let store = MessageStore::open_with(cfg, hooks).unwrap();
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        match store.put_message(&msg("Full", 0, &body_of(i), None, None, None)) {
            Ok(r) => acked.push(r),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        if i % 10 == 0 {
            store.check_disk_now();
        }
    }
    let err = refused.expect("writes must be refused once the disk is full");
    assert!(
        matches!(
            err,
            PutError::DiskFull {
                limit_percent: 90,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("disk full"));
    assert!(store.is_disk_full());
    // Reads keep working.
    let msgs = read_all(&store, "Full", 0, 0);
    assert_eq!(msgs.len(), acked.len());
    // Still refused on the next try.
    assert!(store
        .put_message(&msg("Full", 0, b"again", None, None, None))
        .unwrap_err()
        .is_disk_full());
    // Cleanup frees segments; the service thread lifts the barrier by itself.
    store.request_delete_expired_files();
    assert!(
        wait_until(Duration::from_secs(5), || !store.is_disk_full()),
        "writes resume after cleanup"
    );
    let r = store
        .put_message(&msg("Full", 0, b"resumed", None, None, None))
        .unwrap();
    assert_eq!(r.queue_offset, acked.len() as i64);
    // No corruption: reopen with a full scan and read everything still kept.
    let min = store.min_offset("Full", 0);
    store.shutdown().unwrap();
    drop(store);
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let mut cfg = small_config(dir.path());
    cfg.mapped_file_size_commit_log = 8 * 1024;
    let store = open(cfg);
    let msgs = read_all(&store, "Full", 0, min);
    assert_eq!(msgs.len() as i64, acked.len() as i64 + 1 - min);
    assert_eq!(&msgs.last().unwrap().body[..], b"resumed");
    for m in &msgs[..msgs.len() - 1] {
        assert_eq!(&m.body[..], &body_of(m.queue_offset as usize)[..]);
    }
}
