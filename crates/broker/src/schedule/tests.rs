//! Unit tests of the delay service: settings, transform, the persistent
//! wheel (insertion, due extraction, rolling, persistence, crash cut-back),
//! and the engine against a real store.

use std::net::SocketAddr;
use std::sync::Arc;

use apogee_protocol::message::{keys, properties, stored, MessageToStore};
use apogee_protocol::topic::RMQ_SYS_SCHEDULE_TOPIC;
use apogee_store::{MessageStore, MessageStoreConfig};
use bytes::Bytes;

use super::*;

fn settings(levels: &str) -> ScheduleSettings {
    let levels = crate::config::parse_delay_levels(levels).unwrap();
    ScheduleSettings::new(levels, true, 3 * 24 * 3600, 100).unwrap()
}

fn msg(topic: &str, qid: i32, props: &str) -> MessageToStore {
    let host: SocketAddr = "127.0.0.1:10911".parse().unwrap();
    MessageToStore {
        topic: topic.into(),
        queue_id: qid,
        flag: 7,
        body: Bytes::from_static(b"hello"),
        properties: props.into(),
        sys_flag: 0,
        born_timestamp: 1,
        born_host: host,
        store_host: host,
        reconsume_times: 2,
        prepared_transaction_offset: 0,
        tags_code: 0,
    }
}

#[test]
fn settings_reject_bad_values() {
    assert!(ScheduleSettings::new(vec![], true, 10, 100).is_err());
    assert!(ScheduleSettings::new(vec![1000], true, 10, 0).is_err());
    let s = settings("1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h");
    assert_eq!(s.levels_ms.len(), 18);
    assert_eq!(s.levels_ms[17], 7_200_000);
    // The window covers the longest level, so levels never roll.
    let shape = s.wheel_shape();
    assert!(shape.precision_ms * shape.slots as i64 > 7_200_000);
    let svc = ScheduleMessageService::with_settings(s);
    assert_eq!(svc.delay_level_count(), 18);
    assert_eq!(svc.level_delay_ms(3), Some(10_000));
    assert_eq!(svc.level_delay_ms(0), None);
    assert_eq!(svc.level_delay_ms(19), None);
}

#[test]
fn broker_config_errors_are_config_errors() {
    let cfg = crate::config::BrokerConfig {
        message_delay_level: "1s 5x".into(),
        ..Default::default()
    };
    let err = ScheduleMessageService::new(&cfg).err().unwrap();
    assert!(err.to_string().contains("messageDelayLevel"), "{err}");
}

#[test]
fn transform_delay_level() {
    let svc = ScheduleMessageService::with_settings(settings("1s 2s 3s"));
    let mut m = msg(
        "T",
        5,
        "TAGS\u{1}a\u{2}DELAY\u{1}2\u{2}TIMER_DELIVER_MS\u{1}99\u{2}",
    );
    assert!(svc.try_transform_at(&mut m, 1_000).unwrap());
    assert_eq!(m.topic, RMQ_SYS_SCHEDULE_TOPIC);
    assert_eq!(m.queue_id, 1);
    assert_eq!(m.tags_code, 3_000);
    assert_eq!(properties::get(&m.properties, keys::REAL_TOPIC), Some("T"));
    assert_eq!(
        properties::get(&m.properties, keys::REAL_QUEUE_ID),
        Some("5")
    );
    assert_eq!(properties::get(&m.properties, keys::TAGS), Some("a"));
    assert_eq!(properties::get(&m.properties, keys::TIMER_DELIVER_MS), None);
    // Clamped to the last level.
    let mut m = msg("T", 0, "DELAY\u{1}40\u{2}");
    assert!(svc.try_transform_at(&mut m, 0).unwrap());
    assert_eq!(m.queue_id, 2);
    assert_eq!(
        properties::get(&m.properties, keys::DELAY_TIME_LEVEL),
        Some("3")
    );
    // Level 0 / negative: not delayed.
    for p in [
        "DELAY\u{1}0\u{2}",
        "DELAY\u{1}-1\u{2}",
        "TAGS\u{1}x\u{2}",
        "",
    ] {
        let mut m = msg("T", 0, p);
        assert!(!svc.try_transform_at(&mut m, 0).unwrap());
        assert_eq!(m.topic, "T");
        assert_eq!(m.properties, p);
    }
    // Malformed level.
    let mut m = msg("T", 0, "DELAY\u{1}abc\u{2}");
    let e = svc.try_transform_at(&mut m, 0).unwrap_err();
    assert_eq!(
        e.response_code(),
        apogee_protocol::code::response_code::MESSAGE_ILLEGAL
    );
    assert!(!svc.transform(&mut m));
    assert_eq!(m.topic, "T");
}

#[test]
fn transform_skips_transactions_and_system_topics() {
    let svc = ScheduleMessageService::with_settings(settings("1s"));
    let mut m = msg("T", 0, "DELAY\u{1}1\u{2}");
    m.sys_flag = apogee_protocol::message::sysflag::TRANSACTION_PREPARED_TYPE;
    assert!(!svc.try_transform_at(&mut m, 0).unwrap());
    m.sys_flag = apogee_protocol::message::sysflag::TRANSACTION_COMMIT_TYPE;
    assert!(svc.try_transform_at(&mut m, 0).unwrap());
    // Already parked: never transformed twice.
    assert!(!svc.try_transform_at(&mut m, 0).unwrap());
    let mut m = msg(TIMER_TOPIC, 0, "TIMER_DELAY_SEC\u{1}5\u{2}");
    assert!(!svc.try_transform_at(&mut m, 0).unwrap());
}

#[test]
fn transform_timers() {
    let svc = ScheduleMessageService::with_settings(settings("1s"));
    let now = 1_000_000;
    for (p, want) in [
        ("TIMER_DELIVER_MS\u{1}1005000\u{2}", 1_005_000),
        ("TIMER_DELAY_SEC\u{1}7\u{2}", 1_007_000),
        ("TIMER_DELAY_MS\u{1}250\u{2}", 1_000_250),
    ] {
        let mut m = msg("T", 3, p);
        assert!(svc.try_transform_at(&mut m, now).unwrap(), "{p}");
        assert_eq!(m.topic, TIMER_TOPIC);
        assert_eq!(m.queue_id, 0);
        assert_eq!(m.tags_code, want);
        assert_eq!(
            properties::get(&m.properties, keys::TIMER_OUT_MS),
            Some(want.to_string().as_str())
        );
        assert_eq!(
            properties::get(&m.properties, keys::REAL_QUEUE_ID),
            Some("3")
        );
    }
    // Already due: stored as is.
    let mut m = msg("T", 0, "TIMER_DELIVER_MS\u{1}5\u{2}");
    assert!(!svc.try_transform_at(&mut m, now).unwrap());
    assert_eq!(m.topic, "T");
    // Beyond the maximum: a clear error; transform() caps instead.
    let far = format!("TIMER_DELAY_SEC\u{1}{}\u{2}", 3 * 24 * 3600 + 1);
    let mut m = msg("T", 0, &far);
    let e = svc.try_transform_at(&mut m, now).unwrap_err();
    assert!(matches!(e, ScheduleError::TimerTooFar { .. }), "{e}");
    assert!(e.to_string().contains("timerMaxDelaySec"));
    assert!(svc.transform(&mut m));
    let out: i64 = properties::get(&m.properties, keys::TIMER_OUT_MS)
        .unwrap()
        .parse()
        .unwrap();
    assert!(out - now_ms() <= 3 * 24 * 3600 * 1000);
    // Garbage.
    let mut m = msg("T", 0, "TIMER_DELAY_MS\u{1}soon\u{2}");
    assert!(matches!(
        svc.try_transform_at(&mut m, now),
        Err(ScheduleError::BadProperty { .. })
    ));
    // Disabled timers are refused, levels still work.
    let mut s = settings("1s");
    s.timer_enabled = false;
    let svc = ScheduleMessageService::with_settings(s);
    let mut m = msg("T", 0, "TIMER_DELAY_SEC\u{1}5\u{2}");
    assert!(matches!(
        svc.try_transform_at(&mut m, now),
        Err(ScheduleError::TimerDisabled)
    ));
    let mut m = msg("T", 0, "DELAY\u{1}1\u{2}TIMER_DELAY_SEC\u{1}5\u{2}");
    assert!(svc.try_transform_at(&mut m, now).unwrap());
}

#[test]
fn rebuild_restores_destination() {
    let svc = ScheduleMessageService::with_settings(settings("1s"));
    let mut m = msg(
        "Dest",
        4,
        "TAGS\u{1}tg\u{2}KEYS\u{1}k\u{2}TIMER_DELAY_MS\u{1}500\u{2}",
    );
    assert!(svc.try_transform_at(&mut m, 10).unwrap());
    let mut buf = bytes::BytesMut::new();
    stored::encode_stored(&m, &mut buf).unwrap();
    let rec = buf.freeze();
    let info = stored::check_record(&rec, false).unwrap();
    let out = rebuild_for_delivery(&rec, &info).unwrap();
    assert_eq!(out.topic, "Dest");
    assert_eq!(out.queue_id, 4);
    assert_eq!(&out.body[..], b"hello");
    assert_eq!(out.flag, 7);
    assert_eq!(out.reconsume_times, 2);
    assert_eq!(
        out.tags_code,
        apogee_protocol::message::tags_hash_code("tg")
    );
    for k in [
        keys::REAL_TOPIC,
        keys::REAL_QUEUE_ID,
        keys::TIMER_DELIVER_MS,
        keys::TIMER_DELAY_MS,
        keys::DELAY_TIME_LEVEL,
    ] {
        assert_eq!(properties::get(&out.properties, k), None, "{k}");
    }
    // The due time stays, as Apache's timer leaves it.
    assert_eq!(
        properties::get(&out.properties, keys::TIMER_OUT_MS),
        Some("510")
    );
    assert_eq!(
        properties::get(&out.properties, keys::WAIT_STORE_MSG_OK),
        Some("false")
    );
    assert_eq!(properties::get(&out.properties, keys::KEYS), Some("k"));
    // Without REAL_TOPIC there is nowhere to deliver.
    let mut buf = bytes::BytesMut::new();
    stored::encode_stored(&msg(TIMER_TOPIC, 0, ""), &mut buf).unwrap();
    let rec = buf.freeze();
    let info = stored::check_record(&rec, false).unwrap();
    assert!(rebuild_for_delivery(&rec, &info).is_none());
}

// ---- wheel ----

fn shape(slots: u32) -> WheelShape {
    WheelShape {
        precision_ms: 100,
        slots,
        segment_bytes: 64 * ENTRY_SIZE,
    }
}

fn entry(deliver_ms: i64, cl: i64) -> TimerEntry {
    TimerEntry::deliver(deliver_ms, cl, 100)
}

/// Delivers every due slot like the engine does; returns the delivered
/// cl offsets in order.
fn drain(idx: &mut TimerIndex, now: i64) -> Vec<i64> {
    let mut out = Vec::new();
    loop {
        idx.skip_empty(now);
        if !idx.cursor_due(now) {
            return out;
        }
        let cursor = idx.cursor_ms();
        for e in idx.cursor_entries().unwrap() {
            if e.deliver_ms >= cursor + 100 {
                idx.insert(e).unwrap();
            } else {
                assert!(e.deliver_ms < now, "never early");
                out.push(e.cl_offset);
            }
        }
        idx.advance();
    }
}

#[test]
fn wheel_orders_and_extracts_due_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut idx, progress) = TimerIndex::open(dir.path(), shape(64), 10_000).unwrap();
    assert!(progress.is_empty());
    assert_eq!(idx.cursor_ms(), 10_000);
    idx.insert(entry(10_550, 1)).unwrap();
    idx.insert(entry(10_120, 2)).unwrap();
    idx.insert(entry(10_199, 3)).unwrap();
    idx.insert(entry(9_000, 4)).unwrap(); // already due: cursor slot
    assert!(drain(&mut idx, 10_050).is_empty());
    assert_eq!(drain(&mut idx, 10_100), vec![4]);
    assert_eq!(drain(&mut idx, 10_199), Vec::<i64>::new());
    assert_eq!(drain(&mut idx, 10_200), vec![2, 3]);
    assert_eq!(drain(&mut idx, 11_000), vec![1]);
    assert_eq!(idx.cursor_ms(), 11_000);
}

#[test]
fn wheel_rolls_entries_beyond_its_window() {
    let dir = tempfile::tempdir().unwrap();
    // Window: 16 slots x 100 ms = 1.6 s.
    let (mut idx, _) = TimerIndex::open(dir.path(), shape(16), 0).unwrap();
    idx.insert(entry(5_050, 1)).unwrap();
    idx.insert(entry(1_250, 2)).unwrap();
    let mut got = Vec::new();
    let mut now = 0;
    while now <= 6_000 {
        for cl in drain(&mut idx, now) {
            got.push((cl, now));
        }
        now += 10;
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, 2);
    assert!(got[0].1 > 1_250 && got[0].1 <= 1_300 + 10, "{got:?}");
    assert_eq!(got[1].0, 1);
    assert!(got[1].1 > 5_050 && got[1].1 <= 5_100 + 10, "{got:?}");
}

#[test]
fn wheel_tick_does_not_scan_pending_entries() {
    let dir = tempfile::tempdir().unwrap();
    let sh = WheelShape {
        precision_ms: 100,
        slots: 100_000,
        segment_bytes: 1 << 20,
    };
    let (mut idx, _) = TimerIndex::open(dir.path(), sh, 0).unwrap();
    // 100k timers spread over the next 2.7 hours, plus 3 due soon.
    for i in 0..100_000i64 {
        idx.insert(entry(60_000 + i * 97, i)).unwrap();
    }
    for i in 0..3 {
        idx.insert(entry(150 + i, 1_000_000 + i)).unwrap();
    }
    let before = idx.entries_touched();
    assert_eq!(before, 100_003);
    // Run 50 s of ticks: only the 3 due entries are read.
    let mut delivered = Vec::new();
    let mut now = 0;
    while now < 50_000 {
        delivered.extend(drain(&mut idx, now));
        now += 20;
    }
    assert_eq!(delivered, vec![1_000_000, 1_000_001, 1_000_002]);
    assert_eq!(idx.entries_touched() - before, 3);
    // The checkpoint writes only dirty slots and keeps all entries.
    idx.checkpoint(&BTreeMap::new()).unwrap();
    drop(idx);
    let (mut idx, _) = TimerIndex::open(dir.path(), sh, 0).unwrap();
    let t0 = idx.entries_touched();
    assert_eq!(drain(&mut idx, 60_100), vec![0, 1]);
    assert_eq!(idx.entries_touched() - t0, 2);
}

#[test]
fn wheel_persists_and_cuts_back_after_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut progress = BTreeMap::new();
    {
        let (mut idx, _) = TimerIndex::open(dir.path(), shape(64), 0).unwrap();
        idx.insert(entry(500, 1)).unwrap();
        idx.insert(entry(520, 2)).unwrap();
        progress.insert("q@0".to_string(), 2);
        idx.checkpoint(&progress).unwrap();
        // After the checkpoint: more entries and a forced slot write, then
        // a "crash" (no checkpoint.json update).
        idx.insert(entry(530, 3)).unwrap();
        idx.insert(entry(900, 4)).unwrap();
        let mut fake = BTreeMap::new();
        fake.insert("q@0".to_string(), 4);
        idx.checkpoint(&fake).unwrap();
        // Roll checkpoint.json back to the first one, as if the second
        // was never written.
        let cp = TimerCheckpoint {
            cursor_ms: 0,
            cursor_done: 0,
            log_end: 2 * ENTRY_SIZE as i64,
            progress: progress.clone(),
        };
        std::fs::write(
            dir.path().join("checkpoint.json"),
            serde_json::to_vec(&cp).unwrap(),
        )
        .unwrap();
    }
    let (mut idx, p) = TimerIndex::open(dir.path(), shape(64), 123_456).unwrap();
    assert_eq!(p, progress);
    assert_eq!(idx.cursor_ms(), 0);
    // Entries 3 and 4 are gone (they will be re-enqueued from q@0 = 2).
    assert_eq!(drain(&mut idx, 2_000), vec![1, 2]);
    idx.insert(entry(2_050, 5)).unwrap();
    assert_eq!(drain(&mut idx, 2_100), vec![5]);
}

#[test]
fn wheel_resumes_partially_delivered_slot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut idx, _) = TimerIndex::open(dir.path(), shape(64), 0).unwrap();
        for i in 0..5 {
            idx.insert(entry(10 + i, i)).unwrap();
        }
        assert!(idx.cursor_due(100));
        assert_eq!(idx.cursor_entries().unwrap().len(), 5);
        idx.set_cursor_done(2);
        idx.checkpoint(&BTreeMap::new()).unwrap();
    }
    let (mut idx, _) = TimerIndex::open(dir.path(), shape(64), 0).unwrap();
    assert_eq!(idx.cursor_done(), 2);
    let rest: Vec<i64> = idx
        .cursor_entries()
        .unwrap()
        .iter()
        .skip(idx.cursor_done() as usize)
        .map(|e| e.cl_offset)
        .collect();
    assert_eq!(rest, vec![2, 3, 4]);
}

#[test]
fn wheel_deletes_passed_segments() {
    let dir = tempfile::tempdir().unwrap();
    // 64 entries per segment.
    let (mut idx, _) = TimerIndex::open(dir.path(), shape(64), 0).unwrap();
    for i in 0..200 {
        idx.insert(entry(100 + i, i)).unwrap();
    }
    assert_eq!(idx.segment_count(), 4);
    assert_eq!(drain(&mut idx, 1_000).len(), 200);
    idx.insert(entry(2_000, 999)).unwrap();
    idx.checkpoint(&BTreeMap::new()).unwrap();
    assert_eq!(idx.segment_count(), 1);
    drop(idx);
    let (mut idx, _) = TimerIndex::open(dir.path(), shape(64), 0).unwrap();
    assert_eq!(drain(&mut idx, 2_100), vec![999]);
}

#[test]
fn wheel_rejects_garbage_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wheel"), b"not a wheel").unwrap();
    std::fs::write(
        dir.path().join("checkpoint.json"),
        br#"{"cursorMs":0,"cursorDone":0,"logEnd":0,"progress":{}}"#,
    )
    .unwrap();
    assert!(matches!(
        TimerIndex::open(dir.path(), shape(64), 0),
        Err(ScheduleError::Corrupt { .. })
    ));
    std::fs::write(dir.path().join("checkpoint.json"), b"{garbage").unwrap();
    assert!(matches!(
        TimerIndex::open(dir.path(), shape(64), 0),
        Err(ScheduleError::Corrupt { .. })
    ));
}

#[test]
fn wheel_keeps_its_original_shape() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut idx, _) = TimerIndex::open(dir.path(), shape(64), 0).unwrap();
        idx.insert(entry(350, 1)).unwrap();
        idx.checkpoint(&BTreeMap::new()).unwrap();
    }
    let mut other = shape(128);
    other.precision_ms = 10;
    let (mut idx, _) = TimerIndex::open(dir.path(), other, 0).unwrap();
    assert_eq!(idx.shape().slots, 64);
    assert_eq!(idx.shape().precision_ms, 100);
    assert_eq!(drain(&mut idx, 400), vec![1]);
}

// ---- engine against a real store ----

fn open_store(dir: &std::path::Path) -> Arc<MessageStore> {
    let mut cfg = MessageStoreConfig::with_root(dir);
    cfg.mapped_file_size_commit_log = 1 << 20;
    cfg.mapped_file_size_consume_queue = 20 * 1000;
    Arc::new(MessageStore::open(cfg).unwrap())
}

fn put(store: &MessageStore, svc: &ScheduleMessageService, props: &str, body: &'static [u8]) {
    let mut m = msg("Real", 1, props);
    m.body = Bytes::from_static(body);
    assert!(svc.try_transform(&mut m).unwrap());
    store.put_message(&m).unwrap();
}

fn bodies(store: &MessageStore, topic: &str, qid: i32) -> Vec<Vec<u8>> {
    let r = store.get_messages("g", topic, qid, 0, 1000, 1 << 24, None);
    r.messages
        .iter()
        .map(|b| {
            stored::decode_stored_bytes(b, false)
                .unwrap()
                .0
                .body
                .to_vec()
        })
        .collect()
}

fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

fn fast_settings() -> ScheduleSettings {
    let mut s = ScheduleSettings::new(vec![300, 600], true, 3600, 20).unwrap();
    s.flush_interval_ms = 50;
    s
}

#[test]
fn engine_delivers_levels_and_timers_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let svc = ScheduleMessageService::with_settings(fast_settings());
    svc.start_with_store(store.clone()).unwrap();
    let t0 = now_ms();
    put(&store, &svc, "DELAY\u{1}2\u{2}", b"level2");
    put(&store, &svc, "TIMER_DELAY_MS\u{1}150\u{2}", b"timer");
    put(&store, &svc, "DELAY\u{1}1\u{2}", b"level1");
    assert!(wait_for(|| bodies(&store, "Real", 1).len() == 3));
    let got = bodies(&store, "Real", 1);
    assert_eq!(
        got,
        vec![b"timer".to_vec(), b"level1".to_vec(), b"level2".to_vec()]
    );
    // Store times prove nothing arrived early.
    let r = store.get_messages("g", "Real", 1, 0, 10, 1 << 20, None);
    let times: Vec<i64> = r
        .messages
        .iter()
        .map(|b| stored::check_record(b, false).unwrap().store_timestamp)
        .collect();
    assert!(
        times[0] >= t0 + 150 && times[1] >= t0 + 300 && times[2] >= t0 + 600,
        "{times:?}"
    );
    let p = svc.progress();
    assert_eq!(p.delivered, 3);
    assert_eq!(p.enqueued, 3);
    svc.shutdown();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(bodies(&store, "Real", 1).len(), 3);
}

#[test]
fn engine_restart_delivers_pending_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path());
        let svc = ScheduleMessageService::with_settings(fast_settings());
        svc.start_with_store(store.clone()).unwrap();
        put(&store, &svc, "TIMER_DELAY_MS\u{1}50\u{2}", b"early");
        assert!(wait_for(|| bodies(&store, "Real", 1).len() == 1));
        put(&store, &svc, "TIMER_DELAY_MS\u{1}700\u{2}", b"late1");
        put(&store, &svc, "DELAY\u{1}2\u{2}", b"late2");
        assert!(wait_for(|| svc.progress().enqueued == 3));
        svc.shutdown();
        store.shutdown().unwrap();
    }
    // Down for a while: both pending ones become due meanwhile.
    std::thread::sleep(std::time::Duration::from_millis(800));
    let store = open_store(dir.path());
    let svc = ScheduleMessageService::with_settings(fast_settings());
    svc.start_with_store(store.clone()).unwrap();
    assert!(wait_for(|| bodies(&store, "Real", 1).len() >= 3));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut got = bodies(&store, "Real", 1);
    got.sort();
    assert_eq!(
        got,
        vec![b"early".to_vec(), b"late1".to_vec(), b"late2".to_vec()]
    );
    assert_eq!(
        svc.progress().enqueued,
        0,
        "nothing re-filed after a clean restart"
    );
    svc.shutdown();
}

#[test]
fn engine_drops_entries_without_destination() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    // A record parked in the timer topic by hand, without REAL_TOPIC.
    let m = msg(TIMER_TOPIC, 0, "TIMER_OUT_MS\u{1}1\u{2}");
    store.put_message(&m).unwrap();
    let svc = ScheduleMessageService::with_settings(fast_settings());
    svc.start_with_store(store.clone()).unwrap();
    assert!(wait_for(|| svc.progress().dropped == 1));
    assert_eq!(svc.progress().delivered, 0);
    svc.shutdown();
}

/// Parks a timer message with UNIQ_KEY `uniq` due in `delay_ms`; returns
/// its `TIMER_OUT_MS`.
fn put_timer(store: &MessageStore, svc: &ScheduleMessageService, uniq: &str, delay_ms: i64) -> i64 {
    let props = format!("UNIQ_KEY\u{1}{uniq}\u{2}TIMER_DELAY_MS\u{1}{delay_ms}\u{2}");
    let mut m = msg("Real", 1, &props);
    m.body = Bytes::from(uniq.as_bytes().to_vec());
    assert!(svc.try_transform(&mut m).unwrap());
    let out = properties::get(&m.properties, keys::TIMER_OUT_MS)
        .unwrap()
        .parse()
        .unwrap();
    store.put_message(&m).unwrap();
    out
}

/// Stores the marker RECALL_MESSAGE would for `uniq` sent at `out_ms`.
fn put_marker(store: &MessageStore, topic: &str, uniq: &str, out_ms: i64) {
    let handle =
        apogee_protocol::recall::RecallHandle::new(topic, "b", (out_ms + 1).to_string(), uniq);
    let host: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let m = recall_marker(&handle, out_ms, Some("pg"), host, host, now_ms());
    store.put_message(&m).unwrap();
}

#[test]
fn engine_skips_recalled_messages_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let svc = ScheduleMessageService::with_settings(fast_settings());
    svc.start_with_store(store.clone()).unwrap();
    let a = put_timer(&store, &svc, "A", 400);
    let _b = put_timer(&store, &svc, "B", 400);
    put_marker(&store, "Real", "A", a);
    // A marker naming another topic cancels nothing.
    let c = put_timer(&store, &svc, "C", 400);
    put_marker(&store, "Other", "C", c);
    assert!(wait_for(|| bodies(&store, "Real", 1).len() == 2));
    // Well past A's time and a few more ticks: still not delivered.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut got = bodies(&store, "Real", 1);
    got.sort();
    assert_eq!(got, vec![b"B".to_vec(), b"C".to_vec()]);
    let p = svc.progress();
    assert_eq!((p.delivered, p.recalled, p.enqueued), (2, 1, 5));
    // Markers are never delivered anywhere, not even to "Other".
    assert!(bodies(&store, "Other", 0).is_empty());
    svc.shutdown();
}

#[test]
fn recall_found_in_the_commit_log_after_restart() {
    // Sent and recalled while no delivery thread ran (as after a kill -9
    // that lost the wheel's unsynced work): the wheel files both from the
    // CommitLog on start, and the recall still holds.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path());
        let svc = ScheduleMessageService::with_settings(fast_settings());
        let a = put_timer(&store, &svc, "A", 500);
        put_timer(&store, &svc, "B", 500);
        // The marker first: order inside the slot must not matter.
        put_marker(&store, "Real", "B", a);
        store.shutdown().unwrap();
    }
    let store = open_store(dir.path());
    let svc = ScheduleMessageService::with_settings(fast_settings());
    svc.start_with_store(store.clone()).unwrap();
    assert!(wait_for(|| bodies(&store, "Real", 1).len() == 1));
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert_eq!(bodies(&store, "Real", 1), vec![b"A".to_vec()]);
    assert_eq!(svc.progress().recalled, 1);
    svc.shutdown();
}

#[test]
fn delete_flag_survives_the_timer_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut idx, _) = TimerIndex::open(dir.path(), shape(16), 0).unwrap();
        let mut marker = entry(150, 9);
        marker.delete = true;
        idx.insert(entry(150, 8)).unwrap();
        idx.insert(marker).unwrap();
        idx.checkpoint(&BTreeMap::new()).unwrap();
    }
    let (mut idx, _) = TimerIndex::open(dir.path(), shape(16), 0).unwrap();
    idx.skip_empty(300);
    let got = idx.cursor_entries().unwrap();
    assert_eq!(
        got.iter()
            .map(|e| (e.cl_offset, e.delete))
            .collect::<Vec<_>>(),
        vec![(8, false), (9, true)]
    );
}

/// Power cuts between any two operations of the wheel (unsynced bytes torn):
/// it reopens, and holds exactly the entries its last checkpoint covered.
#[test]
fn wheel_survives_power_loss_at_any_point() {
    use apogee_store::vfs::sim::{CrashMode, SimVfs};
    let dir = std::path::Path::new("/store/timer");
    for cut in [0usize, 1, 7, 30, 31, 64, 65, 99, 140, 190] {
        let disk = SimVfs::new();
        let mut covered = 0i64;
        {
            let (mut idx, _) =
                TimerIndex::open_with(Arc::new(disk.clone()), dir, shape(16), 0).unwrap();
            // One op per step: 150 inserts, a checkpoint after every 30.
            let mut inserted = 0i64;
            for step in 0..cut {
                if step % 31 == 30 {
                    let p = BTreeMap::from([("q@0".to_string(), inserted)]);
                    idx.checkpoint(&p).unwrap();
                    covered = inserted;
                } else {
                    idx.insert(entry(100 + inserted * 10, inserted)).unwrap();
                    inserted += 1;
                }
            }
        }
        let disk = disk
            .crash(CrashMode {
                seed: cut as u64,
                torn_probability: 1.0,
            })
            .unwrap();
        let (mut idx, p) = TimerIndex::open_with(Arc::new(disk), dir, shape(16), 0)
            .unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        assert_eq!(p.get("q@0").copied().unwrap_or(0), covered, "cut {cut}");
        let mut got = Vec::new();
        let mut now = 0;
        while now <= 5_000 {
            got.extend(drain(&mut idx, now));
            now += 50;
        }
        assert_eq!(got, (0..covered).collect::<Vec<_>>(), "cut {cut}");
    }
}

/// A checkpoint that cannot be written (full disk, I/O error) fails, leaves
/// no `.tmp`, keeps the previous checkpoint, and succeeds once the fault clears.
#[test]
fn wheel_checkpoint_under_enospc_and_eio() {
    use apogee_store::vfs::fault::{FaultRule, FaultyVfs};
    use apogee_store::vfs::Op;
    for (errno, op) in [
        (28, Op::Create),
        (28, Op::Write),
        (5, Op::Fdatasync),
        (5, Op::Rename),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fvfs = FaultyVfs::new(apogee_store::vfs::real());
        let (mut idx, _) =
            TimerIndex::open_with(Arc::new(fvfs.clone()), dir.path(), shape(16), 0).unwrap();
        idx.insert(entry(100, 1)).unwrap();
        idx.checkpoint(&BTreeMap::from([("q@0".to_string(), 1)]))
            .unwrap();
        idx.insert(entry(200, 2)).unwrap();
        fvfs.set_rule(Some(FaultRule {
            op: Some(op),
            path_contains: Some("checkpoint.json"),
            nth: 0,
            errno,
            sticky: true,
        }));
        let err = idx
            .checkpoint(&BTreeMap::from([("q@0".to_string(), 2)]))
            .unwrap_err();
        match &err {
            ScheduleError::Io { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(errno), "{op:?}: {err}")
            }
            other => panic!("{op:?}: {other}"),
        }
        assert!(!dir.path().join("checkpoint.json.tmp").exists(), "{op:?}");
        let (_, p) = TimerIndex::open(dir.path(), shape(16), 0).unwrap();
        assert_eq!(p.get("q@0"), Some(&1), "{op:?}: previous checkpoint kept");
        fvfs.set_rule(None);
        idx.checkpoint(&BTreeMap::from([("q@0".to_string(), 2)]))
            .unwrap();
        drop(idx);
        let (_, p) = TimerIndex::open(dir.path(), shape(16), 0).unwrap();
        assert_eq!(p.get("q@0"), Some(&2), "{op:?}");
    }
}
