//! Criterion benches for the store: 1 KiB appends (async flush) and a
//! 32-entry ConsumeQueue read. Compiled in CI, run by hand.

use std::net::SocketAddr;

use apogee_protocol::message::MessageToStore;
use apogee_store::{MessageStore, MessageStoreConfig};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn msg(body: Bytes) -> MessageToStore {
    let host: SocketAddr = "127.0.0.1:10911"
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 10911)));
    MessageToStore {
        topic: "BenchTopic".into(),
        queue_id: 0,
        flag: 0,
        body,
        properties: "TAGS\u{1}a\u{2}".into(),
        sys_flag: 0,
        born_timestamp: 0,
        born_host: host,
        store_host: host,
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        tags_code: 0,
    }
}

fn open(dir: &std::path::Path) -> MessageStore {
    let mut cfg = MessageStoreConfig::with_root(dir);
    cfg.mapped_file_size_commit_log = 64 * 1024 * 1024;
    cfg.max_hash_slot_num = 1024;
    cfg.max_index_num = 4096;
    match MessageStore::open(cfg) {
        Ok(s) => s,
        Err(e) => panic!("open store: {e}"),
    }
}

fn bench_append(c: &mut Criterion) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let store = open(dir.path());
    let m = msg(Bytes::from(vec![b'x'; 1024]));
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("append_1k_async", |b| {
        b.iter(|| store.put_message(&m).map(|r| r.phys_offset).unwrap_or(-1))
    });
    g.finish();
}

fn bench_cq_lookup(c: &mut Criterion) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let store = open(dir.path());
    let m = msg(Bytes::from(vec![b'y'; 128]));
    let mut end = 0;
    for _ in 0..10_000 {
        if let Ok(r) = store.put_message(&m) {
            end = r.end_offset();
        }
    }
    store.wait_dispatched(end, std::time::Duration::from_secs(10));
    let mut off = 0i64;
    c.bench_function("cq_lookup_32", |b| {
        b.iter(|| {
            let r = store.get_messages("g", "BenchTopic", 0, off, 32, 1 << 20, None);
            off = if r.next_begin_offset >= 9_968 {
                0
            } else {
                r.next_begin_offset
            };
            r.messages.len()
        })
    });
}

criterion_group!(benches, bench_append, bench_cq_lookup);
criterion_main!(benches);
