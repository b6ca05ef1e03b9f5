//! Master and slave stores linked by the HA protocol on loopback, and a
//! fake master that sends what a broken or foreign peer would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_protocol::message::{properties, MessageToStore};
use apogee_replication::codec::{self, TRANSFER_HEADER_SIZE};
use apogee_replication::{HaClient, HaConfig, HaServer, SyncOutcome};
use apogee_store::{MessageStore, MessageStoreConfig, ReplicaAppendError};
use bytes::Bytes;

fn config(dir: &Path) -> MessageStoreConfig {
    let mut cfg = MessageStoreConfig::with_root(dir);
    cfg.disk_space_warning_level_ratio = 100;
    cfg.disk_space_clean_forcibly_ratio = 100;
    cfg.disk_max_used_space_ratio = 100;
    // Small segments: the stream crosses several BLANK fillers.
    cfg.mapped_file_size_commit_log = 64 * 1024;
    cfg.mapped_file_size_consume_queue = 100 * 20;
    cfg.max_hash_slot_num = 64;
    cfg.max_index_num = 400;
    cfg.flush_interval_commit_log = 20;
    cfg.max_message_size = 16 * 1024;
    cfg.delete_when = String::new();
    cfg
}

fn open(dir: &Path) -> Arc<MessageStore> {
    Arc::new(MessageStore::open(config(dir)).expect("open store"))
}

fn msg(topic: &str, queue_id: i32, i: usize) -> MessageToStore {
    let mut props = String::new();
    properties::append(&mut props, "TAGS", "t");
    properties::append(&mut props, "UNIQ_KEY", &format!("K{i:08}"));
    MessageToStore {
        topic: topic.into(),
        queue_id,
        flag: 0,
        // 100 B .. 5 KB: records split across 1000-byte frames.
        body: Bytes::from(format!("body-{i:06}-").repeat(1 + (i * 37) % 400)),
        properties: props,
        sys_flag: 0,
        born_timestamp: 1_700_000_000_000,
        born_host: SocketAddr::from(([192, 168, 1, 2], 5555)),
        store_host: SocketAddr::from(([10, 0, 0, 7], 10911)),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        tags_code: 0,
    }
}

fn ha_config() -> HaConfig {
    HaConfig {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        heartbeat_interval: Duration::from_millis(200),
        transfer_batch_size: 1000,
        reconnect_interval: Duration::from_millis(50),
        housekeeping_interval: Duration::from_secs(5),
        ..HaConfig::default()
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Every message of a queue: (queue offset, record bytes).
fn queue(store: &MessageStore, topic: &str, q: i32) -> Vec<(i64, Bytes)> {
    assert!(store.wait_dispatched(
        store.commit_log_max_offset() as u64,
        Duration::from_secs(10)
    ));
    let mut out = Vec::new();
    let mut off = store.min_offset(topic, q);
    loop {
        let r = store.get_messages("g", topic, q, off, 32, 1 << 20, None);
        if r.messages.is_empty() {
            return out;
        }
        out.extend(
            r.queue_offsets
                .iter()
                .copied()
                .zip(r.messages.iter().cloned()),
        );
        off = r.next_begin_offset;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slave_copies_the_master_byte_for_byte() {
    let (md, sd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = open(md.path());
    let slave = open(sd.path());
    for i in 0..10 {
        master
            .put_message(&msg("TopicA", (i % 2) as i32, i))
            .unwrap();
    }
    let server = HaServer::start(Arc::clone(&master), ha_config()).unwrap();
    // No slave yet: a SYNC_MASTER could not wait for one.
    let end = master.commit_log_max_offset() as u64;
    assert_eq!(
        server
            .wait_replicated(end, Duration::from_millis(100))
            .await,
        SyncOutcome::SlaveNotAvailable
    );
    let client = HaClient::start(
        Arc::clone(&slave),
        ha_config(),
        Some(server.local_addr().to_string()),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || server
        .slaves()
        .len()
        == 1));
    assert_eq!(
        server.wait_replicated(end, Duration::from_secs(20)).await,
        SyncOutcome::Replicated,
        "the slave acknowledged the master's end"
    );
    assert!(client.is_connected());
    // More data after the catch-up reaches the slave too, and each put's
    // end is acknowledged.
    for i in 10..300 {
        let r = master
            .put_message(&msg("TopicA", (i % 2) as i32, i))
            .unwrap();
        server.wake();
        if i % 50 == 0 {
            assert_eq!(
                server
                    .wait_replicated(r.end_offset(), Duration::from_secs(10))
                    .await,
                SyncOutcome::Replicated
            );
        }
    }
    let end = master.commit_log_max_offset();
    assert!(end > 3 * 64 * 1024, "the stream crossed several segments");
    assert!(wait_until(Duration::from_secs(20), || slave
        .commit_log_max_offset()
        == end));
    // Same bytes at the same offsets...
    let mut off = master.commit_log_min_offset() as u64;
    while off < end as u64 {
        let m = master.commit_log_data(off, 1 << 20).unwrap();
        let s = slave.commit_log_data(off, 1 << 20).unwrap();
        assert_eq!(m, s, "CommitLog bytes at {off}");
        off += m.len() as u64;
    }
    // ...and the slave's dispatcher built the same queues.
    for q in 0..2 {
        let (mq, sq) = (queue(&master, "TopicA", q), queue(&slave, "TopicA", q));
        assert_eq!(mq.len(), 150);
        assert_eq!(mq, sq, "queue {q}");
    }
    assert_eq!(server.slaves().len(), 1);
    assert!(server.slaves()[0].in_sync);
    client.shutdown();

    // A new, empty replica starts at the master's last segment (as Apache's).
    let sd2 = tempfile::tempdir().unwrap();
    let slave2 = open(sd2.path());
    let client2 = HaClient::start(
        Arc::clone(&slave2),
        ha_config(),
        Some(server.local_addr().to_string()),
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(20), || slave2
        .commit_log_max_offset()
        == end));
    let seg = master.commit_log_segment_size() as i64;
    assert_eq!(slave2.commit_log_min_offset(), end - end % seg);
    for q in 0..2 {
        let (mq, sq) = (queue(&master, "TopicA", q), queue(&slave2, "TopicA", q));
        assert!(!sq.is_empty());
        assert_eq!(&mq[mq.len() - sq.len()..], &sq[..], "queue {q} tail");
    }
    client2.shutdown();
    server.shutdown();
}

#[test]
fn appends_refuse_the_wrong_offset_and_non_records() {
    let (md, sd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = open(md.path());
    let slave = open(sd.path());
    let a = master.put_message(&msg("T", 0, 1)).unwrap();
    master.put_message(&msg("T", 0, 2)).unwrap();
    let data = master.commit_log_data(0, 1 << 20).unwrap();
    // Only the first record and 10 bytes of the second: the partial one is left.
    let first = a.wrote_bytes;
    let r = slave.append_replicated(0, &data[..first + 10]).unwrap();
    assert_eq!(r.taken, first);
    assert_eq!(r.end, first as u64);
    // Out of place.
    match slave.append_replicated(first as u64 + 5, &data[first..]) {
        Err(ReplicaAppendError::OffsetMismatch { expected, got }) => {
            assert_eq!((expected, got), (first as u64, first as u64 + 5))
        }
        other => panic!("expected an offset mismatch, got {other:?}"),
    }
    // Not a record.
    match slave.append_replicated(first as u64, &[0x55u8; 300]) {
        Err(ReplicaAppendError::BadRecord { offset, .. }) => assert_eq!(offset, first as u64),
        other => panic!("expected a bad record, got {other:?}"),
    }
    // A record copied to the wrong place (its PHYSICALOFFSET disagrees).
    let mut moved = data[..first].to_vec();
    moved.extend_from_slice(&data[..first]);
    let r = slave.append_replicated(first as u64, &moved[first..]);
    assert!(
        matches!(r, Err(ReplicaAppendError::BadRecord { .. })),
        "{r:?}"
    );
    // The rest in order is fine.
    let r = slave
        .append_replicated(first as u64, &data[first..])
        .unwrap();
    assert_eq!(r.end, master.commit_log_max_offset() as u64);
    assert_eq!(slave.commit_log_data(0, 1 << 20).unwrap(), data);
}

type Reply = Box<dyn Fn(u64) -> Vec<u8> + Send>;

/// A fake master: accepts one link per reply and answers the slave's first
/// report with what the reply makes of it. With `hang_up` it then closes
/// the link itself; otherwise the slave must drop it.
fn fake_master(replies: Vec<(Reply, bool)>) -> (SocketAddr, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let mut served = 0;
        for (reply, hang_up) in replies {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut report = [0u8; 8];
            s.read_exact(&mut report).unwrap();
            let offset = codec::decode_report(&report).unwrap();
            let _ = s.write_all(&reply(offset));
            served += 1;
            if hang_up {
                continue;
            }
            // The slave must drop the link: wait for EOF (or a reset).
            let mut sink = [0u8; 64];
            let end = Instant::now() + Duration::from_secs(3);
            loop {
                match s.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if Instant::now() > end => panic!("the slave kept a bad link"),
                    Ok(_) => {}
                }
            }
        }
        served
    });
    (addr, h)
}

#[test]
fn bad_frames_close_the_link_and_it_is_retried() {
    let sd = tempfile::tempdir().unwrap();
    let slave = open(sd.path());
    // Give the slave one record so it is not an empty replica.
    let md = tempfile::tempdir().unwrap();
    let master = open(md.path());
    master.put_message(&msg("T", 0, 1)).unwrap();
    let rec = master.commit_log_data(0, 1 << 20).unwrap();
    slave.append_replicated(0, &rec).unwrap();
    let at = rec.len() as u64;
    let replies: Vec<(Reply, bool)> = vec![
        // Negative body size.
        (
            Box::new(|off| {
                let mut h = codec::encode_header(off, 0).to_vec();
                h[8..].copy_from_slice(&(-5i32).to_be_bytes());
                h
            }),
            false,
        ),
        // An offset that is not the slave's.
        (
            Box::new(|off| {
                let mut f = codec::encode_header(off + 100, 4).to_vec();
                f.extend_from_slice(b"abcd");
                f
            }),
            false,
        ),
        // Garbage where a record must start.
        (
            Box::new(|off| {
                let mut f = codec::encode_header(off, 64).to_vec();
                f.extend_from_slice(&[0x7Fu8; 64]);
                f
            }),
            false,
        ),
        // Truncated: half a header, then the master hangs up.
        (
            Box::new(|off| codec::encode_header(off, 8)[..6].to_vec()),
            true,
        ),
        // A heartbeat at the right place: the slave is back.
        (Box::new(|off| codec::encode_header(off, 0).to_vec()), true),
    ];
    let (addr, fake) = fake_master(replies);
    let client = HaClient::start(Arc::clone(&slave), ha_config(), Some(addr.to_string())).unwrap();
    let served = fake.join().expect("fake master");
    assert_eq!(served, 5, "the slave came back after every bad link");
    assert_eq!(
        slave.commit_log_max_offset() as u64,
        at,
        "nothing bad was stored"
    );
    client.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_pointed_at_no_master_waits_then_follows_the_right_one() {
    let (md, sd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = open(md.path());
    let slave = open(sd.path());
    for i in 0..20 {
        master.put_message(&msg("T", 0, i)).unwrap();
    }
    // A port with nothing listening.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = HaClient::start(Arc::clone(&slave), ha_config(), Some(dead.to_string())).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!client.is_connected());
    assert_eq!(slave.commit_log_max_offset(), 0);
    let server = HaServer::start(Arc::clone(&master), ha_config()).unwrap();
    client.set_master_addr(&server.local_addr().to_string());
    let end = master.commit_log_max_offset();
    assert!(wait_until(Duration::from_secs(10), || slave
        .commit_log_max_offset()
        == end));
    assert_eq!(queue(&slave, "T", 0).len(), 20);
    client.shutdown();
    server.shutdown();
}

#[test]
fn frame_header_constants_match_apache() {
    assert_eq!(TRANSFER_HEADER_SIZE, 12);
    assert_eq!(codec::REPORT_SIZE, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_slave_times_out_and_a_lagging_one_is_not_available() {
    let md = tempfile::tempdir().unwrap();
    let master = open(md.path());
    for i in 0..5 {
        master.put_message(&msg("T", 0, i)).unwrap();
    }
    let cfg = HaConfig {
        // 2 KB: the five messages put the master further ahead than that.
        max_gap_not_in_sync: 2048,
        ..ha_config()
    };
    let server = HaServer::start(Arc::clone(&master), cfg).unwrap();
    // A "slave" that reports offset 1 (so the transfer starts) and then
    // reads without ever acknowledging.
    let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
    s.write_all(&codec::encode_report(1)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || server.slaves().len() == 1));
    let end = master.commit_log_max_offset() as u64;
    assert!(end > 2048);
    // Acked 1, end far beyond the allowed gap: not available, at once.
    let t = Instant::now();
    assert_eq!(
        server.wait_replicated(end, Duration::from_secs(5)).await,
        SyncOutcome::SlaveNotAvailable
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    // Within the gap but never acknowledged: a timeout.
    s.write_all(&codec::encode_report(end - 100)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || server.acked_offset()
        == end - 100));
    let t = Instant::now();
    assert_eq!(
        server
            .wait_replicated(end, Duration::from_millis(300))
            .await,
        SyncOutcome::Timeout
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    // A report beyond the master's end does not acknowledge more than it has.
    s.write_all(&codec::encode_report(end + 10_000)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || server.acked_offset() == end));
    assert_eq!(
        server
            .wait_replicated(end, Duration::from_millis(300))
            .await,
        SyncOutcome::Replicated
    );
    drop(s);
    assert!(wait_until(Duration::from_secs(5), || server
        .slaves()
        .is_empty()));
    assert_eq!(
        server
            .wait_replicated(end, Duration::from_millis(100))
            .await,
        SyncOutcome::SlaveNotAvailable,
        "no slave connected"
    );
    server.shutdown();
}

/// `inSyncReplicas=3` on a classic SYNC_MASTER: two slaves must hold a
/// message; the further behind of the two decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_required_slaves_acknowledge_only_together() {
    let md = tempfile::tempdir().unwrap();
    let master = open(md.path());
    for i in 0..5 {
        master.put_message(&msg("T", 0, i)).unwrap();
    }
    let cfg = HaConfig {
        acks_needed: 2,
        ..ha_config()
    };
    let server = HaServer::start(Arc::clone(&master), cfg).unwrap();
    let end = master.commit_log_max_offset() as u64;
    let mut a = std::net::TcpStream::connect(server.local_addr()).unwrap();
    a.write_all(&codec::encode_report(end)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || server
        .slaves()
        .iter()
        .any(|s| s.ack_offset == end as i64)));
    // One slave has everything, but one is not enough.
    assert_eq!(
        server
            .wait_replicated(end, Duration::from_millis(100))
            .await,
        SyncOutcome::SlaveNotAvailable
    );
    assert_eq!(server.acked_offset(), 0);
    let mut b = std::net::TcpStream::connect(server.local_addr()).unwrap();
    b.write_all(&codec::encode_report(end - 10)).unwrap();
    assert!(wait_until(Duration::from_secs(5), || server.acked_offset() == end - 10));
    // Both connected, the second short of the end: the send times out.
    assert_eq!(
        server
            .wait_replicated(end, Duration::from_millis(200))
            .await,
        SyncOutcome::Timeout
    );
    // A waiting send completes when the second one catches up.
    let waiter = {
        let server = &server;
        async move { server.wait_replicated(end, Duration::from_secs(5)).await }
    };
    let report = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.write_all(&codec::encode_report(end)).unwrap();
    };
    let (outcome, ()) = tokio::join!(waiter, report);
    assert_eq!(outcome, SyncOutcome::Replicated);
    assert_eq!(server.acked_offset(), end);
    drop(a);
    assert!(wait_until(Duration::from_secs(5), || server.slaves().len() == 1));
    let later = end + 1;
    assert_eq!(
        server
            .wait_replicated(later, Duration::from_millis(100))
            .await,
        SyncOutcome::SlaveNotAvailable,
        "one slave left of the two required"
    );
    server.shutdown();
}

#[test]
fn a_peer_that_hangs_up_at_once_is_named_as_probably_not_a_master() {
    let sd = tempfile::tempdir().unwrap();
    let slave = open(sd.path());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    // Accepts and hangs up at once, for as long as the test runs.
    let hangs_up = std::thread::spawn(move || {
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::Acquire) {
            match listener.accept() {
                Ok((s, _)) => {
                    drop(s);
                    n += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        n
    });
    let client = HaClient::start(Arc::clone(&slave), ha_config(), Some(addr.to_string())).unwrap();
    assert!(wait_until(Duration::from_secs(5), || client
        .last_error()
        .is_some_and(|e| e.contains("haListenPort"))));
    stop.store(true, std::sync::atomic::Ordering::Release);
    assert!(hangs_up.join().unwrap() >= 1);
    assert_eq!(slave.commit_log_max_offset(), 0);
    client.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_slave_resumes_from_its_own_end() {
    let (md, sd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = open(md.path());
    let server = HaServer::start(Arc::clone(&master), ha_config()).unwrap();
    let addr = server.local_addr().to_string();
    let slave = open(sd.path());
    let client = HaClient::start(Arc::clone(&slave), ha_config(), Some(addr.clone())).unwrap();
    for i in 0..100 {
        master.put_message(&msg("T", (i % 3) as i32, i)).unwrap();
        server.wake();
    }
    let end = master.commit_log_max_offset();
    assert!(wait_until(Duration::from_secs(10), || slave
        .commit_log_max_offset()
        == end));
    client.shutdown();
    drop(client);
    slave.shutdown().unwrap();
    drop(slave);
    // Meanwhile the master goes on.
    for i in 100..200 {
        master.put_message(&msg("T", (i % 3) as i32, i)).unwrap();
    }
    let slave = open(sd.path());
    assert_eq!(
        slave.commit_log_max_offset(),
        end,
        "the slave kept its data"
    );
    let client = HaClient::start(Arc::clone(&slave), ha_config(), Some(addr)).unwrap();
    let end = master.commit_log_max_offset();
    assert!(wait_until(Duration::from_secs(10), || slave
        .commit_log_max_offset()
        == end));
    for q in 0..3 {
        assert_eq!(queue(&master, "T", q), queue(&slave, "T", q), "queue {q}");
    }
    client.shutdown();
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_slave_holds_the_link_until_space_returns() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (md, sd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = open(md.path());
    // Within the first segment: an empty replica starts at the master's last one.
    for i in 0..10 {
        master.put_message(&msg("T", 0, i)).unwrap();
    }
    // The slave's disk is 95% used, above diskSpaceWarningLevelRatio (90).
    let used = Arc::new(AtomicU64::new(95));
    let probe_used = Arc::clone(&used);
    let mut cfg = config(sd.path());
    cfg.disk_space_warning_level_ratio = 90;
    cfg.disk_space_clean_forcibly_ratio = 99;
    cfg.disk_max_used_space_ratio = 99;
    cfg.disk_check_interval = 3_600_000;
    cfg.clean_resource_interval = 3_600_000;
    let hooks = apogee_store::StoreHooks {
        disk_probe: Some(Arc::new(move |_: &Path| {
            Some(probe_used.load(Ordering::SeqCst) as f64)
        })),
        ..Default::default()
    };
    let slave = Arc::new(MessageStore::open_with(cfg, hooks).unwrap());
    slave.check_disk_now();
    assert!(slave.is_disk_full());
    let server = HaServer::start(Arc::clone(&master), ha_config()).unwrap();
    let client = HaClient::start(
        Arc::clone(&slave),
        ha_config(),
        Some(server.local_addr().to_string()),
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || client
            .last_error()
            .is_some_and(|e| e.contains("disk full"))),
        "{:?}",
        client.last_error()
    );
    assert_eq!(
        slave.commit_log_max_offset(),
        0,
        "nothing written on a full disk"
    );
    // Its link keeps failing and reconnecting: no acknowledgement either way.
    let outcome = server
        .wait_replicated(
            master.commit_log_max_offset() as u64,
            Duration::from_millis(200),
        )
        .await;
    assert_ne!(
        outcome,
        SyncOutcome::Replicated,
        "a slave that cannot store does not acknowledge"
    );
    // Space comes back: the retried link catches up.
    used.store(50, Ordering::SeqCst);
    slave.check_disk_now();
    let end = master.commit_log_max_offset();
    assert!(wait_until(Duration::from_secs(10), || slave
        .commit_log_max_offset()
        == end));
    assert_eq!(queue(&slave, "T", 0), queue(&master, "T", 0));
    client.shutdown();
    server.shutdown();
}
