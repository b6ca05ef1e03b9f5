//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use apogee_protocol::message::{decode_stored, properties, DecodedMessage, MessageToStore};
use apogee_store::{MessageStore, MessageStoreConfig};
use bytes::Bytes;

pub fn host() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 7], 10911))
}

/// A message with a body, optional tag and keys and a UNIQ_KEY.
pub fn msg(
    topic: &str,
    queue_id: i32,
    body: &[u8],
    tag: Option<&str>,
    keys: Option<&str>,
    uniq: Option<&str>,
) -> MessageToStore {
    let mut props = String::new();
    if let Some(t) = tag {
        properties::append(&mut props, "TAGS", t);
    }
    if let Some(k) = keys {
        properties::append(&mut props, "KEYS", k);
    }
    if let Some(u) = uniq {
        properties::append(&mut props, "UNIQ_KEY", u);
    }
    MessageToStore {
        topic: topic.into(),
        queue_id,
        flag: 0,
        body: Bytes::copy_from_slice(body),
        properties: props,
        sys_flag: 0,
        born_timestamp: 1_700_000_000_000,
        born_host: SocketAddr::from(([192, 168, 1, 2], 5555)),
        store_host: host(),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        tags_code: 0,
    }
}

pub fn body_of(i: usize) -> Vec<u8> {
    format!("message-{i:06}-").repeat(1 + i % 7).into_bytes()
}

/// Small segments so tests roll files quickly.
pub fn small_config(dir: &Path) -> MessageStoreConfig {
    let mut cfg = MessageStoreConfig::with_root(dir);
    // Tests must not depend on how full the machine's disk is.
    cfg.disk_space_warning_level_ratio = 100;
    cfg.disk_space_clean_forcibly_ratio = 100;
    cfg.disk_max_used_space_ratio = 100;
    cfg.mapped_file_size_commit_log = 64 * 1024;
    cfg.mapped_file_size_consume_queue = 100 * 20;
    cfg.max_hash_slot_num = 64;
    cfg.max_index_num = 400;
    cfg.flush_interval_commit_log = 20;
    cfg.flush_interval_consume_queue = 50;
    cfg.clean_resource_interval = 3_600_000;
    cfg.disk_check_interval = 20;
    cfg.max_message_size = 16 * 1024;
    // Only the injected probe decides about "disk full" in tests.
    cfg.disk_space_warning_level_ratio = 100;
    cfg.disk_max_used_space_ratio = 100;
    cfg.disk_space_clean_forcibly_ratio = 100;
    cfg.delete_when = String::new();
    cfg
}

pub fn open(cfg: MessageStoreConfig) -> MessageStore {
    match MessageStore::open(cfg) {
        Ok(s) => s,
        Err(e) => panic!("open store: {e}"),
    }
}

pub fn decode(b: &Bytes) -> DecodedMessage {
    match decode_stored(b, true) {
        Ok((m, n)) => {
            assert_eq!(n, b.len(), "record length");
            m
        }
        Err(e) => panic!("stored record does not decode: {e}"),
    }
}

/// Read a whole queue from `from` (waiting for dispatch first).
pub fn read_all(
    store: &MessageStore,
    topic: &str,
    queue_id: i32,
    from: i64,
) -> Vec<DecodedMessage> {
    assert!(store.wait_dispatched(
        store.commit_log_max_offset() as u64,
        Duration::from_secs(10)
    ));
    let mut out = Vec::new();
    let mut off = from;
    loop {
        let r = store.get_messages("g", topic, queue_id, off, 32, 1 << 20, None);
        if r.messages.is_empty() {
            break;
        }
        for b in &r.messages {
            out.push(decode(b));
        }
        off = r.next_begin_offset;
    }
    out
}

/// Poll `f` every 10 ms until it holds or `timeout` passes; its last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}
