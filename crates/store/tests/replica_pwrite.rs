//! A replica that appends with pwrite (`use_pwrite_appends`, what a slave
//! does) holds exactly the master's CommitLog, across segment ends (BLANK
//! fillers) and a reopen, and serves every message from its queues.

mod common;

use common::{body_of, msg, open, read_all, small_config};

#[test]
fn pwrite_replica_holds_the_masters_log_across_segments_and_a_reopen() {
    let mdir = tempfile::tempdir().unwrap();
    let sdir = tempfile::tempdir().unwrap();
    let master = open(small_config(mdir.path()));
    // Several 64 KiB segments, so fillers and new segments are crossed.
    let n = 2500;
    for i in 0..n {
        master
            .put_message(&msg("R", (i % 2) as i32, &body_of(i), None, None, None))
            .unwrap();
    }
    let end = master.commit_log_max_offset() as u64;
    assert!(end > 3 * 64 * 1024, "the test must cross segments: {end}");

    let replica = open(small_config(sdir.path()));
    replica.use_pwrite_appends();
    // Odd-sized chunks, as HA frames cut records anywhere.
    let mut pos = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let mut read = 0u64;
    while read < end {
        let Some(chunk) = master.commit_log_data(read, 7_777) else {
            panic!("no master data at {read}");
        };
        read += chunk.len() as u64;
        pending.extend_from_slice(&chunk);
        let r = replica.append_replicated(pos, &pending).unwrap();
        pending.drain(..r.taken);
        pos = r.end.max(pos + r.taken as u64);
        if r.end > read {
            // A BLANK filler: the master's rest of the segment is skipped.
            read = r.end;
            pending.clear();
        }
    }
    assert_eq!(replica.commit_log_max_offset() as u64, end);
    let check = |store: &apogee_store::MessageStore| {
        for q in 0..2 {
            let want: Vec<Vec<u8>> = (0..n).filter(|i| i % 2 == q).map(body_of).collect();
            let got: Vec<Vec<u8>> = read_all(store, "R", q as i32, 0)
                .into_iter()
                .map(|m| m.body.to_vec())
                .collect();
            assert_eq!(got, want, "queue {q}");
        }
    };
    check(&replica);
    replica.shutdown().unwrap();
    drop(replica);
    let reopened = open(small_config(sdir.path()));
    assert_eq!(reopened.commit_log_max_offset() as u64, end);
    check(&reopened);
}
