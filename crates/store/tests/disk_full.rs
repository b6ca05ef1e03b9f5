//! A full disk heals by itself: forced deletion above
//! diskSpaceCleanForciblyRatio, a dispatcher that survives files it cannot
//! create (index, ConsumeQueue), and no `.tmp` left by a failed creation.
//! Tests that need a real full file system mount a small tmpfs; they skip
//! (with a message) when that is not possible (not root, no mount).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_store::mapped_file::MappedFile;
use apogee_store::vfs::fault::{FaultRule, FaultyVfs};
use apogee_store::vfs::{self, Op};
use apogee_store::{GetStatus, MessageStore, MessageStoreConfig, PutError, StoreHooks};
use common::*;

fn segment_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("commitlog"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
                .count()
        })
        .unwrap_or(0)
}

/// Every `*.tmp` file under `root`.
fn tmp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "tmp") {
                out.push(p);
            }
        }
    }
    out
}

/// A tmpfs mounted on a fresh temp dir, unmounted (lazily) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None (and a message saying why) when the test cannot mount.
    fn mount(size: &str, test: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("{test}: skipped, mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "{test}: skipped, mount failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("{test}: skipped, cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remount the tmpfs with size {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Disk usage read from an atomic the test sets (percent).
/// Small 8 KiB segments, nothing expired (fileReservedTime 72 h) and
/// RocketMQ's default ratios: 75 % max used, 85 % clean forcibly, 90 % refuse.
fn pressure_config(dir: &Path) -> MessageStoreConfig {
    let mut cfg = small_config(dir);
    cfg.mapped_file_size_commit_log = 8 * 1024;
    cfg.file_reserved_time = 72;
    cfg.disk_max_used_space_ratio = 75;
    cfg.disk_space_clean_forcibly_ratio = 85;
    cfg.disk_space_warning_level_ratio = 90;
    cfg
}

fn settable_probe(v: &Arc<AtomicU64>) -> StoreHooks {
    let v = v.clone();
    StoreHooks {
        disk_probe: Some(Arc::new(move |_: &Path| {
            Some(v.load(Ordering::SeqCst) as f64)
        })),
        ..Default::default()
    }
}

/// Above diskSpaceCleanForciblyRatio unexpired segments go, oldest first and
/// one per round, until usage is back under it; reads of what is kept go on.
#[test]
fn forced_deletion_above_clean_forcibly_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pressure_config(dir.path()); // nothing is expired
    cfg.disk_space_warning_level_ratio = 100;
    // Rounds only when the test asks.
    cfg.clean_resource_interval = 3_600_000;
    cfg.disk_check_interval = 3_600_000;
    let used = Arc::new(AtomicU64::new(50));
    let store = MessageStore::open_with(cfg, settable_probe(&used)).unwrap();
    let mut results = Vec::new();
    let mut i = 0;
    while store.commit_log_segment_count() < 5 {
        results.push(
            store
                .put_message(&msg(
                    "Forced",
                    0,
                    &body_of(i),
                    None,
                    Some(&format!("k{i}")),
                    None,
                ))
                .unwrap(),
        );
        i += 1;
    }
    assert!(store.wait_dispatched(store.commit_log_max_offset() as u64, Duration::from_secs(5)));
    // Under the ratio nothing unexpired goes.
    assert_eq!(store.delete_expired_files_now(), 0);
    // At or above 85%: one unexpired segment per round, oldest first.
    used.store(90, Ordering::SeqCst);
    assert_eq!(store.delete_expired_files_now(), 1);
    assert_eq!(store.commit_log_segment_count(), 4);
    assert_eq!(store.delete_expired_files_now(), 1);
    assert_eq!(store.commit_log_segment_count(), 3);
    used.store(80, Ordering::SeqCst);
    assert_eq!(
        store.delete_expired_files_now(),
        0,
        "under diskSpaceCleanForciblyRatio unexpired segments stay"
    );
    assert!(!dir.path().join("commitlog/00000000000000000000").exists());
    assert!(!dir.path().join("commitlog/00000000000000008192").exists());
    let cl_min = store.commit_log_min_offset();
    assert_eq!(cl_min, 2 * 8192);
    // Queues start at the first message still stored; older offsets say so.
    let first_kept = results
        .iter()
        .position(|r| r.phys_offset >= cl_min)
        .unwrap();
    assert_eq!(store.min_offset("Forced", 0), first_kept as i64);
    let r = store.get_messages("g", "Forced", 0, 0, 32, 1 << 20, None);
    assert_eq!(r.status, GetStatus::OffsetTooSmall);
    assert_eq!(r.next_begin_offset, first_kept as i64);
    let msgs = read_all(&store, "Forced", 0, first_kept as i64);
    assert_eq!(msgs.len(), results.len() - first_kept);
    for m in &msgs {
        assert_eq!(&m.body[..], &body_of(m.queue_offset as usize)[..]);
    }
    // Index entries of deleted messages lead nowhere, without error.
    assert!(store
        .query_by_key("Forced", "k0", 10, 0, i64::MAX)
        .messages
        .is_empty());
    let last = format!("k{}", results.len() - 1);
    assert_eq!(
        store
            .query_by_key("Forced", &last, 10, 0, i64::MAX)
            .messages
            .len(),
        1
    );
}

/// Writes refused above diskSpaceWarningLevelRatio resume by themselves:
/// the service thread deletes forcibly and lifts the barrier, no operator.
#[test]
fn refused_writes_resume_without_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pressure_config(dir.path());
    cfg.clean_resource_interval = 3_600_000; // only pressure triggers rounds
    cfg.disk_check_interval = 20;
    // A reader holds the first segment: its deletion waits this long, so the
    // refusal is seen before cleanup lifts it.
    cfg.destroy_mapped_file_interval_forcibly = 300;
    let hooks = StoreHooks {
        disk_probe: Some(Arc::new(|p: &Path| {
            Some(30.0 + 15.0 * segment_count(p) as f64)
        })),
        ..Default::default()
    };
    let store = MessageStore::open_with(cfg, hooks).unwrap();
    store
        .put_message(&msg("Heal", 0, &body_of(0), None, None, None))
        .unwrap();
    let held = read_all(&store, "Heal", 0, 0);
    let held_raw = store.get_messages("g", "Heal", 0, 0, 1, 1 << 20, None);
    assert_eq!(held.len(), 1);
    let t0 = Instant::now();
    let (mut acked, mut refused) = (1usize, 0usize);
    // About 12 segments' worth: the disk "fills" several times over.
    while acked < 1000 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "stuck: {acked} acked, {refused} refused"
        );
        match store.put_message(&msg("Heal", 0, &body_of(acked), None, None, None)) {
            Ok(r) => {
                assert_eq!(r.queue_offset, acked as i64);
                acked += 1;
                // Paced, so the 20 ms disk checks see the disk fill up.
                std::thread::sleep(Duration::from_micros(500));
            }
            Err(e) if e.is_disk_full() => {
                refused += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(refused > 0, "writes were refused while the disk was full");
    // The held reader's bytes stay valid after its segment is gone.
    assert_eq!(&decode(&held_raw.messages[0]).body[..], &body_of(0)[..]);
    drop(held_raw);
    assert!(wait_until(Duration::from_secs(5), || segment_count(
        dir.path()
    ) <= 4));
    assert!(
        store.commit_log_min_offset() > 0,
        "old segments were deleted"
    );
    // Retention may still be deleting (the probe reads 90% at 4 segments):
    // let it settle, or a segment deleted mid-read shortens the count.
    assert!(wait_until(Duration::from_secs(10), || {
        let before = store.commit_log_min_offset();
        std::thread::sleep(Duration::from_millis(400));
        store.commit_log_min_offset() == before
    }));
    let min = store.min_offset("Heal", 0);
    let msgs = read_all(&store, "Heal", 0, min);
    assert_eq!(msgs.len(), acked - min as usize);
    for m in &msgs {
        assert_eq!(&m.body[..], &body_of(m.queue_offset as usize)[..]);
    }
    eprintln!("{acked} acked, {refused} refused on the way");
}

/// The dispatcher cannot proceed and the disk is full: the oldest segment
/// goes even though it is not dispatched, the dispatcher skips to the new
/// start, and reads answer OFFSET_TOO_SMALL / the next offset, never panic.
#[test]
fn undispatched_segment_deleted_when_dispatch_is_stalled_on_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pressure_config(dir.path());
    cfg.disk_space_warning_level_ratio = 100;
    cfg.clean_resource_interval = 3_600_000;
    cfg.disk_check_interval = 3_600_000;
    // No ConsumeQueue entry may wait in memory for long: once the flusher
    // cannot write the first one, dispatch stops.
    cfg.max_unwritten_consume_queue_bytes = 0;
    let used = Arc::new(AtomicU64::new(50));
    let store = MessageStore::open_with(cfg, settable_probe(&used)).unwrap();
    // The queue's folder cannot be made (a file is in the way): no entry of
    // "Stuck" can be written, as on a full disk, and dispatch stalls.
    let blocker = dir.path().join("consumequeue/Stuck");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"in the way").unwrap();
    let mut results = Vec::new();
    for i in 0..300 {
        results.push(
            store
                .put_message(&msg(
                    "Stuck",
                    0,
                    &body_of(i),
                    None,
                    Some(&format!("s{i}")),
                    None,
                ))
                .unwrap(),
        );
    }
    assert!(wait_until(Duration::from_secs(5), || store.is_dispatch_stalled()));
    assert!(
        store.dispatched_offset() < 8192,
        "{}",
        store.dispatched_offset()
    );
    assert!(store.commit_log_segment_count() >= 3);

    // Not full: nothing undispatched is touched.
    assert_eq!(store.delete_expired_files_now(), 0);
    // Full: the oldest goes, undispatched or not — one per round.
    used.store(95, Ordering::SeqCst);
    assert_eq!(store.delete_expired_files_now(), 1);
    assert_eq!(store.commit_log_min_offset(), 8192);
    used.store(50, Ordering::SeqCst);

    std::fs::remove_file(&blocker).unwrap();
    assert!(
        store.wait_dispatched(
            store.commit_log_max_offset() as u64,
            Duration::from_secs(15)
        ),
        "dispatch resumes after the obstacle is gone"
    );
    assert!(wait_until(Duration::from_secs(5), || !store.is_dispatch_stalled()));
    let first_kept = results.iter().position(|r| r.phys_offset >= 8192).unwrap();
    let min = store.min_offset("Stuck", 0);
    assert_eq!(
        min, first_kept as i64,
        "queue starts at its first stored message"
    );
    let r = store.get_messages("g", "Stuck", 0, 0, 32, 1 << 20, None);
    assert_eq!(r.status, GetStatus::OffsetTooSmall);
    assert_eq!(r.next_begin_offset, min);
    let msgs = read_all(&store, "Stuck", 0, min);
    assert_eq!(msgs.len(), results.len() - first_kept);
    for m in &msgs {
        assert_eq!(&m.body[..], &body_of(m.queue_offset as usize)[..]);
    }
    assert!(store
        .query_by_key("Stuck", "s0", 10, 0, i64::MAX)
        .messages
        .is_empty());
    // New messages flow normally.
    let r = store
        .put_message(&msg("Stuck", 0, b"after", None, None, None))
        .unwrap();
    assert_eq!(r.queue_offset, results.len() as i64);
    assert_eq!(read_all(&store, "Stuck", 0, r.queue_offset).len(), 1);
    // And a restart agrees.
    store.shutdown().unwrap();
    drop(store);
    let mut cfg = small_config(dir.path());
    cfg.mapped_file_size_commit_log = 8 * 1024;
    let store = open(cfg);
    assert_eq!(store.min_offset("Stuck", 0), min);
    assert_eq!(store.max_offset("Stuck", 0), results.len() as i64 + 1);
}

/// A creation that fails for lack of space removes its half-made file.
#[test]
fn failed_creation_leaves_no_tmp_file() {
    let Some(fs) = Tmpfs::mount("1m", "failed_creation_leaves_no_tmp_file") else {
        return;
    };
    let path = fs.path().join("00000000000000000000");
    let real = vfs::real();
    let err = MappedFile::create(&real, &path, 0, 4 * 1024 * 1024).unwrap_err();
    assert!(err.is_out_of_space(), "{err}");
    assert!(
        tmp_files(fs.path()).is_empty(),
        "{:?}",
        tmp_files(fs.path())
    );
    assert!(!path.exists());
    // The space is back: a file that fits can be made.
    let ok = MappedFile::create(&real, &path, 0, 512 * 1024).unwrap();
    assert_eq!(ok.size(), 512 * 1024);
}

/// Leftover `.tmp` files from an interrupted creation are removed at open.
#[test]
fn stale_tmp_files_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    for p in [
        "commitlog/00000000000000065536.tmp",
        "index/20240101000000000.tmp",
        "consumequeue/T/0/00000000000000002000.tmp",
    ] {
        let p = dir.path().join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"half made").unwrap();
    }
    let store = open(small_config(dir.path()));
    assert!(
        tmp_files(dir.path()).is_empty(),
        "{:?}",
        tmp_files(dir.path())
    );
    store
        .put_message(&msg("T", 0, b"x", None, None, None))
        .unwrap();
}

/// No room for an index file: messages still reach their ConsumeQueues
/// (unindexed), nothing is left behind, and indexing resumes once there is
/// room again.
#[test]
fn dispatcher_survives_an_index_file_that_cannot_be_created() {
    let test = "dispatcher_survives_an_index_file_that_cannot_be_created";
    let Some(fs) = Tmpfs::mount("4m", test) else {
        return;
    };
    let mut cfg: MessageStoreConfig = small_config(fs.path());
    cfg.mapped_file_size_commit_log = 256 * 1024;
    // 40 + 1000×4 + 300 000×20 bytes: about 6 MB, more than the disk.
    cfg.max_hash_slot_num = 1000;
    cfg.max_index_num = 300_000;
    let store = open(cfg);
    let mut sent = Vec::new();
    for i in 0..200 {
        sent.push(
            store
                .put_message(&msg(
                    "Idx",
                    0,
                    &body_of(i),
                    None,
                    Some(&format!("key{i}")),
                    Some(&format!("U{i}")),
                ))
                .unwrap(),
        );
    }
    let msgs = read_all(&store, "Idx", 0, 0);
    assert_eq!(msgs.len(), 200, "every message reached its ConsumeQueue");
    assert!(!store.is_dispatch_stalled());
    assert!(store.is_index_suspended());
    assert!(store
        .query_by_key("Idx", "key5", 10, 0, i64::MAX)
        .messages
        .is_empty());
    assert!(
        tmp_files(fs.path()).is_empty(),
        "{:?}",
        tmp_files(fs.path())
    );
    assert_eq!(
        std::fs::read_dir(fs.path().join("index")).unwrap().count(),
        0
    );

    // Room again: the next retry (1 s, then 2 s, …) creates the file.
    fs.resize("64m");
    let t0 = Instant::now();
    let mut i = 200;
    let resumed = wait_until(Duration::from_secs(10), || {
        store
            .put_message(&msg(
                "Idx",
                0,
                &body_of(i),
                None,
                Some(&format!("key{i}")),
                None,
            ))
            .unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(40));
        !store.is_index_suspended()
    });
    assert!(resumed, "indexing resumed after {:?}", t0.elapsed());
    let last = format!("key{}", i - 1);
    assert!(wait_until(Duration::from_secs(5), || {
        store
            .query_by_key("Idx", &last, 10, 0, i64::MAX)
            .messages
            .len()
            == 1
    }));
    assert_eq!(read_all(&store, "Idx", 0, 0).len(), i);
    assert!(tmp_files(fs.path()).is_empty());
    store.shutdown().unwrap();
}

/// A real small disk filled many times over: writes are refused when full
/// and resume by themselves, every file creation failure (CommitLog,
/// ConsumeQueue) is survived, and no `.tmp` is left.
#[test]
fn real_full_disk_heals_by_itself() {
    let Some(fs) = Tmpfs::mount("2m", "real_full_disk_heals_by_itself") else {
        return;
    };
    let mut cfg = small_config(fs.path());
    cfg.mapped_file_size_commit_log = 256 * 1024;
    cfg.mapped_file_size_consume_queue = 1000 * 20;
    cfg.max_hash_slot_num = 1000;
    cfg.max_index_num = 4000; // about 84 KB per index file
    cfg.file_reserved_time = 72;
    cfg.disk_max_used_space_ratio = 75;
    cfg.disk_space_clean_forcibly_ratio = 85;
    cfg.disk_space_warning_level_ratio = 90;
    cfg.disk_check_interval = 20;
    let store = open(cfg);
    let t0 = Instant::now();
    let (mut acked, mut refused) = (0usize, 0usize);
    let mut last_refusal: Option<Instant> = None;
    let mut longest_refusal = Duration::ZERO;
    let mut refusing_since: Option<Instant> = None;
    // About 3 MB of records on a 2 MB disk, over 8 queues.
    while acked < 16_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "stuck: {acked} acked, {refused} refused"
        );
        let q = (acked % 8) as i32;
        match store.put_message(&msg(
            "Real",
            q,
            &body_of(acked),
            None,
            None,
            Some(&format!("u{acked}")),
        )) {
            Ok(_) => {
                if let Some(s) = refusing_since.take() {
                    longest_refusal = longest_refusal.max(s.elapsed());
                }
                acked += 1;
            }
            Err(PutError::DiskFull { .. }) => {
                refused += 1;
                refusing_since.get_or_insert_with(Instant::now);
                last_refusal = Some(Instant::now());
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("unexpected error after {acked} acks: {e}"),
        }
    }
    assert!(store.wait_dispatched(
        store.commit_log_max_offset() as u64,
        Duration::from_secs(10)
    ));
    assert!(
        store.commit_log_min_offset() > 0,
        "old segments were deleted"
    );
    assert!(
        tmp_files(fs.path()).is_empty(),
        "{:?}",
        tmp_files(fs.path())
    );
    eprintln!(
        "end of load: {:.1}% used, {} segments, min {} max {}",
        store.disk_used_percent(),
        store.commit_log_segment_count(),
        store.commit_log_min_offset(),
        store.commit_log_max_offset()
    );
    // Let retention settle (it may still be deleting) before reading.
    let settled = wait_until(Duration::from_secs(10), || {
        let before = store.commit_log_min_offset();
        std::thread::sleep(Duration::from_millis(300));
        store.commit_log_min_offset() == before
    });
    assert!(
        settled,
        "retention keeps deleting: {:.1}% used",
        store.disk_used_percent()
    );
    // Everything still stored reads back.
    for q in 0..8 {
        let min = store.min_offset("Real", q);
        let msgs = read_all(&store, "Real", q, min);
        assert_eq!(msgs.len() as i64, store.max_offset("Real", q) - min);
    }
    eprintln!(
        "{acked} acked, {refused} refused, longest refusal {longest_refusal:?}, last at {:?}",
        last_refusal.map(|t| t.duration_since(t0))
    );
}

/// The file system says ENOSPC (every block reservation fails, as on a disk
/// that stays full) while usage reads only 50%: the dispatcher retries
/// instead of wedging, retention deletes forcibly anyway, a put that needs a
/// new segment answers "disk full" (not an I/O error), and everything
/// resumes by itself once space is back.
#[test]
fn enospc_is_survived_and_heals_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pressure_config(dir.path());
    cfg.disk_check_interval = 20;
    // Every flush writes every new ConsumeQueue entry (and meets ENOSPC).
    cfg.flush_consume_queue_least_pages = 0;
    let faulty = FaultyVfs::new(vfs::real());
    let used = Arc::new(AtomicU64::new(50));
    let mut hooks = settable_probe(&used);
    hooks.vfs = Some(Arc::new(faulty.clone()));
    let store = MessageStore::open_with(cfg, hooks).unwrap();
    let mut n = 0usize;
    while store.commit_log_segment_count() < 4 {
        store
            .put_message(&msg("Old", 0, &body_of(n), None, None, None))
            .unwrap();
        n += 1;
    }
    assert!(store.wait_dispatched(store.commit_log_max_offset() as u64, Duration::from_secs(5)));

    // A full disk: no block can be reserved, nothing can be written into
    // a new or sparse ConsumeQueue file.
    faulty.set_rules(vec![
        FaultRule {
            path_contains: None,
            op: Some(Op::Allocate),
            nth: 0,
            errno: libc::ENOSPC,
            sticky: true,
        },
        FaultRule {
            path_contains: Some("consumequeue"),
            op: Some(Op::Write),
            nth: 0,
            errno: libc::ENOSPC,
            sticky: true,
        },
    ]);
    // A new queue needs no file to be read: its entry waits in memory.
    let r = store
        .put_message(&msg("New", 0, b"first of New", None, None, None))
        .unwrap();
    assert!(store.wait_dispatched(r.end_offset(), Duration::from_secs(5)));
    let got = store.get_messages("g", "New", 0, 0, 32, 1 << 20, None);
    assert_eq!(got.status, GetStatus::Found);
    // ENOSPC on a disk the probe calls roomy deletes nothing (it is
    // transient, or a quota)...
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(store.commit_log_min_offset(), 0, "no deletion at 50% used");
    // ...above diskMaxUsedSpaceRatio it does, though below the forcible ratio.
    used.store(80, Ordering::Release);
    assert!(
        wait_until(Duration::from_secs(5), || store.commit_log_min_offset() > 0),
        "forced deletion after ENOSPC"
    );
    // Reads of what is stored go on.
    assert!(!read_all_dispatched(&store, "Old").is_empty());
    // Filling the current segment: the roll to a new one cannot get its
    // blocks, and the sender is told "disk full".
    let refused = loop {
        match store.put_message(&msg("Old", 0, &body_of(n), None, None, None)) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 10_000, "the current segment never filled");
    };
    assert!(refused.is_disk_full(), "{refused}");
    assert!(store.is_disk_full());

    // Space is back: no operator action, no restart.
    faulty.set_rule(None);
    assert!(
        wait_until(Duration::from_secs(10), || !store.is_disk_full()),
        "the barrier lifts"
    );
    assert!(store.wait_dispatched(
        store.commit_log_max_offset() as u64,
        Duration::from_secs(10)
    ));
    assert!(wait_until(Duration::from_secs(5), || !store.is_dispatch_stalled()));
    let got = store.get_messages("g", "New", 0, 0, 32, 1 << 20, None);
    assert_eq!(got.status, GetStatus::Found);
    assert_eq!(&decode(&got.messages[0]).body[..], b"first of New");
    assert_eq!(got.queue_offsets[0], r.queue_offset);
    store
        .put_message(&msg("Old", 0, b"resumed", None, None, None))
        .unwrap();
    assert!(
        tmp_files(dir.path()).is_empty(),
        "{:?}",
        tmp_files(dir.path())
    );
}

/// What a pull from the queue's min offset returns, read to the end.
fn read_all_dispatched(
    store: &MessageStore,
    topic: &str,
) -> Vec<apogee_protocol::message::DecodedMessage> {
    let mut out = Vec::new();
    let mut off = store.min_offset(topic, 0);
    loop {
        let r = store.get_messages("g", topic, 0, off, 32, 1 << 20, None);
        if r.messages.is_empty() {
            break;
        }
        out.extend(r.messages.iter().map(decode));
        off = r.next_begin_offset;
    }
    out
}
