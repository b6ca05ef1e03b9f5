//! Every I/O call site, one failure at a time. A recording run lists the
//! store's file operations over a workload that appends across segment
//! roll-overs, flushes, builds ConsumeQueues and index files, writes
//! checkpoints, shuts down and recovers. Then, for each kind of operation on
//! each kind of file, the first, second and last such call is made to fail
//! (ENOSPC, then EIO) in a fresh run. Each run must end with:
//! - no panic anywhere (background threads included);
//! - every failure reported to its caller as an error, never swallowed into
//!   a wrong answer: a put that returned PUT_OK is readable afterwards, at the
//!   queue offset it was given, after a restart on a healthy disk;
//! - a store that works again once the fault is gone (without a restart when
//!   it stayed open; otherwise it reopens).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use apogee_store::vfs::fault::{FaultRule, FaultyVfs};
use apogee_store::vfs::{self, Op};
use apogee_store::{FlushDiskType, MessageStore, MessageStoreConfig, PutStatus, StoreHooks};
use common::*;

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Count panics in every thread (the store's own threads included).
fn count_panics() {
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            prev(info);
        }));
    });
}

const TOPICS: [&str; 2] = ["WalkA", "WalkB"];
const MESSAGES: usize = 120;

fn config(dir: &Path, sync: bool) -> MessageStoreConfig {
    let mut cfg = small_config(dir);
    cfg.flush_disk_type = if sync {
        FlushDiskType::SyncFlush
    } else {
        FlushDiskType::AsyncFlush
    };
    cfg.mapped_file_size_commit_log = 8 * 1024;
    cfg.max_index_num = 100;
    cfg.flush_interval_commit_log = 5;
    cfg.flush_interval_consume_queue = 10;
    cfg.sync_flush_timeout = 1_000;
    cfg
}

fn open(dir: &Path, sync: bool, vfs: &FaultyVfs) -> Result<MessageStore, apogee_store::OpenError> {
    MessageStore::open_with(
        config(dir, sync),
        StoreHooks {
            vfs: Some(Arc::new(vfs.clone())),
            ..Default::default()
        },
    )
}

/// (topic, queue, queue offset) → body of every acknowledged put.
type Acked = BTreeMap<(String, i32, i64), Vec<u8>>;

/// Put `n` messages; failures are fine (they are what is being tested), a
/// PUT_OK is a promise. A refused put is retried a few times, so a store
/// that heals gets the chance to show it.
fn put_some(store: &MessageStore, from: usize, n: usize, acked: &mut Acked) -> usize {
    let mut errors = 0;
    for i in from..from + n {
        let topic = TOPICS[i % 2];
        let q = (i / 2 % 2) as i32;
        let body = body_of(i);
        let key = format!("k{i}");
        let m = msg(topic, q, &body, Some("T"), Some(&key), None);
        for attempt in 0..3 {
            match store.put_message(&m) {
                Ok(r) if r.status == PutStatus::Ok => {
                    acked.insert((topic.to_owned(), q, r.queue_offset), body.clone());
                    break;
                }
                Ok(_) => break,
                Err(_) => {
                    errors += 1;
                    if attempt < 2 {
                        std::thread::sleep(Duration::from_millis(30));
                    }
                }
            }
        }
    }
    errors
}

/// Once the fault has fired, an open store must take writes again by itself
/// (the fault is one call; nothing else is wrong with the disk).
fn heals(store: &MessageStore, acked: &mut Acked, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 20_000;
    loop {
        let before = acked.len();
        put_some(store, i, 1, acked);
        if acked.len() > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the open store never took writes again"
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One run of the workload; returns the acknowledged puts.
fn workload(dir: &Path, sync: bool, vfs: &FaultyVfs, what: &str) -> Acked {
    let mut acked = Acked::new();
    if let Ok(store) = open(dir, sync, vfs) {
        put_some(&store, 0, MESSAGES, &mut acked);
        if vfs.failures() > 0 {
            heals(&store, &mut acked, what);
        }
        let _ = store.wait_dispatched(store.commit_log_max_offset() as u64, Duration::from_secs(2));
        let _ = store.query_by_key(TOPICS[0], "k0", 4, 0, i64::MAX);
        let _ = store.shutdown();
    }
    // A restart on the same disk: recovery's calls are walked too.
    if let Ok(store) = open(dir, sync, vfs) {
        put_some(&store, MESSAGES, 20, &mut acked);
        let _ = store.shutdown();
    }
    acked
}

/// Which file a call touched, for grouping call sites.
fn kind(path: &Path) -> &'static str {
    let p = path.to_string_lossy();
    for k in [
        "commitlog",
        "consumequeue",
        "index",
        "checkpoint",
        "abort",
        "lock",
    ] {
        if p.contains(k) {
            return k;
        }
    }
    "root"
}

/// After the fault: a healthy restart must find every acknowledged put, and
/// the store must take writes.
fn verify(dir: &Path, sync: bool, acked: &Acked, what: &str) {
    let healthy = FaultyVfs::new(vfs::real());
    let store = open(dir, sync, &healthy)
        .unwrap_or_else(|e| panic!("{what}: store does not reopen on a healthy disk: {e}"));
    for ((topic, q, qo), body) in acked {
        let r = store.get_messages("g", topic, *q, *qo, 1, 1 << 20, None);
        let got = r.messages.first().map(decode);
        assert!(
            got.as_ref()
                .is_some_and(|m| m.body.as_ref() == body.as_slice()),
            "{what}: acknowledged {topic}/{q}@{qo} lost ({:?})",
            r.status
        );
    }
    let mut more = Acked::new();
    assert_eq!(
        put_some(&store, 10_000, 4, &mut more),
        0,
        "{what}: a healthy store must take writes"
    );
    store
        .shutdown()
        .unwrap_or_else(|e| panic!("{what}: clean shutdown: {e}"));
}

fn walk(sync: bool) {
    count_panics();
    let mode = if sync { "SYNC_FLUSH" } else { "ASYNC_FLUSH" };

    // Recording run: which calls does the workload make?
    let dir = tempfile::tempdir().expect("tempdir");
    let recorder = FaultyVfs::new(vfs::real());
    recorder.record();
    let acked = workload(dir.path(), sync, &recorder, mode);
    assert_eq!(
        acked.len(),
        MESSAGES + 20,
        "{mode}: the healthy run acknowledges everything"
    );
    let calls = recorder.recorded();
    let mut sites: BTreeMap<(Op, &'static str), usize> = BTreeMap::new();
    for c in &calls {
        *sites.entry((c.op, kind(&c.path))).or_default() += 1;
    }
    for op in [Op::Create, Op::Allocate, Op::Msync, Op::Rename, Op::SyncDir] {
        assert!(
            sites.keys().any(|(o, _)| *o == op),
            "{mode}: the workload never makes a {op:?} call"
        );
    }
    if sync {
        assert!(sites.keys().any(|(o, _)| *o == Op::Fdatasync));
        assert!(sites.keys().any(|(o, _)| *o == Op::Write));
    }

    let mut runs = 0;
    let mut failed_calls = 0u64;
    let mut plans = BTreeSet::new();
    for ((op, k), count) in &sites {
        for nth in [0, 1, count.saturating_sub(1)] {
            if nth < *count {
                plans.insert((*op, *k, nth as u64));
            }
        }
    }
    let started = Instant::now();
    for (op, k, nth) in plans {
        for errno in [libc::ENOSPC, libc::EIO] {
            let what = format!("{mode}: {op:?} on {k} #{nth} fails with errno {errno}");
            let dir = tempfile::tempdir().expect("tempdir");
            let faulty = FaultyVfs::new(vfs::real());
            faulty.set_rule(Some(FaultRule {
                op: Some(op),
                path_contains: (k != "root").then_some(k),
                nth,
                errno,
                sticky: false,
            }));
            let before = PANICS.load(Ordering::SeqCst);
            let acked = workload(dir.path(), sync, &faulty, &what);
            assert_eq!(PANICS.load(Ordering::SeqCst), before, "{what}: panicked");
            failed_calls += faulty.failures();
            verify(dir.path(), sync, &acked, &what);
            runs += 1;
        }
    }
    eprintln!(
        "{mode}: {} call sites walked in {runs} runs ({failed_calls} calls failed) in {:.1} s",
        sites.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failed_calls > 0, "{mode}: the walk must inject failures");
}

/// One test for both modes: the panic counter is process-wide.
#[test]
fn every_io_failure_is_survived() {
    walk(false);
    walk(true);
}
