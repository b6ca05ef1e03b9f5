//! Recovery: files are truncated and corrupted on purpose, then the store is
//! reopened and exactly what survives is checked.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use apogee_store::{GetStatus, MessageStoreConfig, PutResult};
use common::*;

const TOPIC: &str = "Rec";

fn seg_path(dir: &Path, base: u64) -> std::path::PathBuf {
    dir.join("commitlog").join(format!("{base:020}"))
}

/// Write `n` messages (keys "key-i"), return their put results; the store is
/// shut down cleanly.
fn populate(cfg: &MessageStoreConfig, n: usize) -> Vec<PutResult> {
    let store = open(cfg.clone());
    let out = (0..n)
        .map(|i| {
            store
                .put_message(&msg(
                    TOPIC,
                    0,
                    &body_of(i),
                    Some("tag"),
                    Some(&format!("key-{i}")),
                    None,
                ))
                .unwrap()
        })
        .collect();
    store.shutdown().unwrap();
    out
}

/// Make the next open look like a crash.
fn mark_crashed(dir: &Path) {
    fs::write(dir.join("abort"), b"").unwrap();
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn read_byte(path: &Path, at: u64) -> u8 {
    let f = OpenOptions::new().read(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0]
}

/// Offset of BODY inside an IPv4/IPv4 record.
const BODY_POS: u64 = 88;

fn assert_survivors(dir: &Path, cfg: &MessageStoreConfig, results: &[PutResult], k: usize) {
    let store = open(cfg.clone());
    assert_eq!(store.max_offset(TOPIC, 0), k as i64, "ConsumeQueue end");
    assert_eq!(
        store.commit_log_max_offset(),
        results[k].phys_offset,
        "CommitLog truncated at record {k}"
    );
    let msgs = read_all(&store, TOPIC, 0, 0);
    assert_eq!(msgs.len(), k);
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(&m.body[..], &body_of(i)[..]);
        assert_eq!(m.queue_offset, i as i64);
        assert_eq!(m.physical_offset, results[i].phys_offset);
    }
    let r = store.get_messages("g", TOPIC, 0, k as i64, 32, 1 << 20, None);
    assert_eq!(r.status, GetStatus::OffsetOverflowOne);
    // Index: entries for removed messages are gone, earlier ones stay.
    assert!(store
        .query_by_key(TOPIC, &format!("key-{k}"), 10, 0, i64::MAX)
        .messages
        .is_empty());
    if k > 0 {
        assert_eq!(
            store
                .query_by_key(TOPIC, &format!("key-{}", k - 1), 10, 0, i64::MAX)
                .messages
                .len(),
            1
        );
    }
    // New appends continue exactly at the cut and survive another reopen.
    let r = store
        .put_message(&msg(
            TOPIC,
            0,
            b"after-recovery",
            None,
            Some("key-new"),
            None,
        ))
        .unwrap();
    assert_eq!(r.queue_offset, k as i64);
    assert_eq!(r.phys_offset, results[k].phys_offset);
    store.shutdown().unwrap();
    drop(store);
    mark_crashed(dir);
    fs::remove_file(dir.join("checkpoint")).unwrap();
    let store = open(cfg.clone());
    let msgs = read_all(&store, TOPIC, 0, 0);
    assert_eq!(
        msgs.len(),
        k + 1,
        "no stale record reappears after the new end"
    );
    assert_eq!(&msgs[k].body[..], b"after-recovery");
    assert_eq!(
        store
            .query_by_key(TOPIC, "key-new", 10, 0, i64::MAX)
            .messages
            .len(),
        1
    );
}

#[test]
fn corrupt_body_truncates_at_that_record_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let results = populate(&cfg, 40);
    let at = results[25].phys_offset as u64 + BODY_POS + 3;
    let path = seg_path(dir.path(), 0);
    patch(&path, at, &[read_byte(&path, at) ^ 0xFF]);
    fs::remove_file(dir.path().join("checkpoint")).unwrap();
    mark_crashed(dir.path());
    assert_survivors(dir.path(), &cfg, &results, 25);
}

#[test]
fn torn_tail_after_checkpoint_is_cut_and_queues_follow() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    // Phase 1: 20 messages, then keep a copy of the checkpoint taken then.
    let store = open(cfg.clone());
    let mut results: Vec<PutResult> = (0..20)
        .map(|i| {
            store
                .put_message(&msg(
                    TOPIC,
                    0,
                    &body_of(i),
                    None,
                    Some(&format!("key-{i}")),
                    None,
                ))
                .unwrap()
        })
        .collect();
    store.shutdown().unwrap();
    drop(store);
    let old_cp = fs::read(dir.path().join("checkpoint")).unwrap();
    // Phase 2: 20 more, ConsumeQueue and index have them all.
    let store = open(cfg.clone());
    for i in 20..40 {
        results.push(
            store
                .put_message(&msg(
                    TOPIC,
                    0,
                    &body_of(i),
                    None,
                    Some(&format!("key-{i}")),
                    None,
                ))
                .unwrap(),
        );
    }
    store.shutdown().unwrap();
    drop(store);
    // Crash as if only the first checkpoint was written and record 31 was
    // torn: its second half never reached the file.
    fs::write(dir.path().join("checkpoint"), &old_cp).unwrap();
    let r = &results[31];
    let half = r.phys_offset as u64 + r.wrote_bytes as u64 / 2;
    patch(
        &seg_path(dir.path(), 0),
        half,
        &vec![0u8; r.wrote_bytes / 2 + 1],
    );
    mark_crashed(dir.path());
    assert_survivors(dir.path(), &cfg, &results, 31);
}

#[test]
fn shortened_last_segment_is_treated_as_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let results = populate(&cfg, 30);
    let cut = results[17].phys_offset as u64 + 10;
    let f = OpenOptions::new()
        .write(true)
        .open(seg_path(dir.path(), 0))
        .unwrap();
    f.set_len(cut).unwrap();
    drop(f);
    fs::remove_file(dir.path().join("checkpoint")).unwrap();
    mark_crashed(dir.path());
    assert_survivors(dir.path(), &cfg, &results, 17);
}

#[test]
fn garbage_after_the_end_is_ignored_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let results = populate(&cfg, 12);
    let end = results[11].end_offset();
    let garbage: Vec<u8> = (0..500u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8 | 1)
        .collect();
    patch(&seg_path(dir.path(), 0), end, &garbage);
    fs::remove_file(dir.path().join("checkpoint")).unwrap();
    mark_crashed(dir.path());
    let store = open(cfg.clone());
    assert_eq!(store.commit_log_max_offset() as u64, end);
    assert_eq!(read_all(&store, TOPIC, 0, 0).len(), 12);
    store
        .put_message(&msg(TOPIC, 0, b"x", None, None, None))
        .unwrap();
    assert_eq!(read_all(&store, TOPIC, 0, 0).len(), 13);
}

#[test]
fn corrupt_checkpoint_falls_back_to_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let results = populate(&cfg, 25);
    patch(&dir.path().join("checkpoint"), 0, &[0xAB; 72]);
    mark_crashed(dir.path());
    let store = open(cfg.clone());
    assert_eq!(
        store.commit_log_max_offset() as u64,
        results[24].end_offset()
    );
    assert_eq!(read_all(&store, TOPIC, 0, 0).len(), 25);
}

#[test]
fn lost_consume_queues_are_rebuilt_from_the_commit_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.mapped_file_size_commit_log = 8 * 1024; // several segments
    let results = populate(&cfg, 120);
    fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    fs::remove_file(dir.path().join("checkpoint")).unwrap();
    mark_crashed(dir.path());
    let store = open(cfg.clone());
    let msgs = read_all(&store, TOPIC, 0, 0);
    assert_eq!(msgs.len(), 120);
    assert!(msgs
        .iter()
        .zip(&results)
        .all(|(m, r)| m.physical_offset == r.phys_offset));
    assert_eq!(
        store
            .query_by_key(TOPIC, "key-77", 10, 0, i64::MAX)
            .messages
            .len(),
        1
    );
    assert_eq!(
        store
            .put_message(&msg(TOPIC, 0, b"n", None, None, None))
            .unwrap()
            .queue_offset,
        120
    );
}

#[test]
fn recovery_starts_at_the_checkpoint_not_at_the_beginning() {
    // A record corrupted *before* the safe point is not rescanned: recovery
    // cost follows the unflushed tail. (Such damage is found by a full scan,
    // which runs when the checkpoint is missing.)
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let results = populate(&cfg, 30);
    let at = results[5].phys_offset as u64 + BODY_POS;
    let path = seg_path(dir.path(), 0);
    patch(&path, at, &[read_byte(&path, at) ^ 0x55]);
    mark_crashed(dir.path());
    let store = open(cfg.clone());
    assert_eq!(store.max_offset(TOPIC, 0), 30);
    assert_eq!(
        store.commit_log_max_offset() as u64,
        results[29].end_offset()
    );
    assert!(store.wait_dispatched(results[29].end_offset(), Duration::from_secs(1)));
}

#[test]
fn consume_queue_truncation_across_its_file_boundary() {
    // ConsumeQueue files hold 100 entries in the test config: cutting at 90
    // after 150 messages removes the whole second file.
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let results = populate(&cfg, 150);
    let cq_dir = dir.path().join("consumequeue").join(TOPIC).join("0");
    assert_eq!(cq_dir.read_dir().unwrap().count(), 2);
    let at = results[90].phys_offset as u64 + BODY_POS;
    let path = seg_path(dir.path(), 0);
    patch(&path, at, &[read_byte(&path, at) ^ 0x01]);
    fs::remove_file(dir.path().join("checkpoint")).unwrap();
    mark_crashed(dir.path());
    assert_survivors(dir.path(), &cfg, &results, 90);
}
