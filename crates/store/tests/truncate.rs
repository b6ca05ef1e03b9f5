//! Offline CommitLog truncation (a returning master cutting the tail its
//! successor never had): the records past the cut are gone after reopening,
//! with their ConsumeQueue entries, and new writes continue at the cut.

mod common;

use apogee_store::epoch::truncate_commit_log;
use common::*;

const TOPIC: &str = "Cut";

#[test]
fn truncate_drops_the_tail_across_segments_and_writes_resume_at_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let store = open(cfg.clone());
    // ~3 segments of 64 KiB.
    let puts: Vec<_> = (0..150)
        .map(|i| {
            store
                .put_message(&msg(TOPIC, 0, &vec![b'x'; 1200], None, None, None))
                .unwrap_or_else(|e| panic!("put {i}: {e}"))
        })
        .collect();
    store.shutdown().unwrap();
    drop(store);
    assert!(puts.last().unwrap().phys_offset as u64 > 2 * cfg.mapped_file_size_commit_log);

    let keep = 70;
    let cut = puts[keep].phys_offset as u64;
    let t = truncate_commit_log(&cfg, cut).unwrap();
    assert!(t.removed > 0);

    let store = open(cfg.clone());
    assert_eq!(store.commit_log_max_offset() as u64, cut);
    let msgs = read_all(&store, TOPIC, 0, 0);
    assert_eq!(msgs.len(), keep);
    assert_eq!(store.max_offset(TOPIC, 0), keep as i64);
    // The next write lands exactly at the cut, with the next queue offset.
    let r = store
        .put_message(&msg(TOPIC, 0, b"after", None, None, None))
        .unwrap();
    assert_eq!(r.phys_offset as u64, cut);
    assert_eq!(r.queue_offset, keep as i64);
    store.shutdown().unwrap();
}
