//! Crash test: a real writer process (this test binary re-executed with an
//! env var) appends and prints every acknowledged offset; it is killed with
//! SIGKILL at random points, the store is reopened and every acknowledged
//! message must be present, intact and in order, with consistent
//! ConsumeQueues and no half-visible record.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use apogee_store::{FlushDiskType, MessageStoreConfig};
use common::*;
use rand::Rng;

const ENV: &str = "APOGEE_STORE_CRASH_WRITER";
const QUEUES: i32 = 4;

fn crash_config(dir: &Path, sync: bool) -> MessageStoreConfig {
    let mut cfg = small_config(dir);
    cfg.flush_disk_type = if sync {
        FlushDiskType::SyncFlush
    } else {
        FlushDiskType::AsyncFlush
    };
    cfg.mapped_file_size_commit_log = 32 * 1024;
    cfg
}

fn body(round: u32, i: u64) -> Vec<u8> {
    let mut b = format!("round-{round}-msg-{i}-").into_bytes();
    b.resize(b.len() + (i % 200) as usize, b'a' + (i % 26) as u8);
    b
}

/// Child entry point: does nothing in a normal test run.
#[test]
fn crash_writer_child() {
    let Ok(spec) = std::env::var(ENV) else { return };
    let mut parts = spec.splitn(3, '|');
    let (Some(dir), Some(mode), Some(round)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad {ENV}: {spec}");
    };
    let round: u32 = round.parse().unwrap();
    let store = open(crash_config(Path::new(dir), mode == "sync"));
    println!("READY");
    for i in 0u64.. {
        let q = (i % QUEUES as u64) as i32;
        let m = msg(
            "Crash",
            q,
            &body(round, i),
            Some("t"),
            Some(&format!("r{round}i{i}")),
            None,
        );
        let r = store.put_message(&m).unwrap();
        println!("ACK {round} {i} {q} {} {}", r.queue_offset, r.phys_offset);
    }
}

struct Ack {
    round: u32,
    i: u64,
}

fn run_round(
    dir: &Path,
    sync: bool,
    round: u32,
    kill_after: Duration,
) -> Vec<(i32, i64, i64, Ack)> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            ENV,
            format!(
                "{}|{}|{}",
                dir.display(),
                if sync { "sync" } else { "async" },
                round
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() == 6 && f[0] == "ACK" {
                let (Ok(round), Ok(i), Ok(q), Ok(qo), Ok(phys)) = (
                    f[1].parse(),
                    f[2].parse(),
                    f[3].parse(),
                    f[4].parse(),
                    f[5].parse(),
                ) else {
                    continue; // a line cut by the kill was never a full ack
                };
                acks.push((q, qo, phys, Ack { round, i }));
            }
        }
        acks
    });
    std::thread::sleep(kill_after);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap()
}

/// Reopen, verify, and shut down cleanly.
fn verify(dir: &Path, sync: bool, acked: &HashMap<(i32, i64), (i64, Ack)>) {
    let store = open(crash_config(dir, sync));
    let mut per_queue = 0;
    for q in 0..QUEUES {
        // read_all decodes every record with its CRC: nothing is half-visible.
        let msgs = read_all(&store, "Crash", q, 0);
        assert_eq!(
            msgs.len() as i64,
            store.max_offset("Crash", q),
            "queue {q} is contiguous"
        );
        let mut last_phys = -1;
        for (n, m) in msgs.iter().enumerate() {
            assert_eq!(m.queue_offset, n as i64, "queue {q} offsets in order");
            assert_eq!(m.queue_id, q);
            assert!(
                m.physical_offset > last_phys,
                "queue {q} in CommitLog order"
            );
            last_phys = m.physical_offset;
            let key = m.keys().next().unwrap().to_owned();
            let (r, i) = key[1..].split_once('i').unwrap();
            let (r, i): (u32, u64) = (r.parse().unwrap(), i.parse().unwrap());
            assert_eq!(&m.body[..], &body(r, i)[..], "body of {key}");
            if let Some((phys, ack)) = acked.get(&(q, n as i64)) {
                assert_eq!(m.physical_offset, *phys, "acked message moved");
                assert_eq!((r, i), (ack.round, ack.i), "acked message replaced");
            }
        }
        per_queue += msgs.len();
        for &(aq, qo) in acked.keys() {
            if aq == q {
                assert!(qo < msgs.len() as i64, "acknowledged ({q}, {qo}) lost");
            }
        }
    }
    assert!(per_queue >= acked.len());
    store.shutdown().unwrap();
}

#[test]
fn kill_9_at_random_points_loses_nothing_acknowledged() {
    if std::env::var(ENV).is_ok() {
        return;
    }
    let mut rng = rand::thread_rng();
    for sync in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut acked: HashMap<(i32, i64), (i64, Ack)> = HashMap::new();
        let mut total = 0;
        // At least 20 kill -9 rounds per flush mode.
        for round in 0..20 {
            let ms = rng.gen_range(30..250);
            let acks = run_round(dir.path(), sync, round, Duration::from_millis(ms));
            total += acks.len();
            for (q, qo, phys, ack) in acks {
                assert!(
                    acked.insert((q, qo), (phys, ack)).is_none(),
                    "queue offset ({q}, {qo}) acknowledged twice"
                );
            }
            verify(dir.path(), sync, &acked);
        }
        assert!(
            total > 0,
            "the writer acknowledged nothing in any round (sync={sync})"
        );
    }
}
