//! Codec benchmarks: frame encode/decode of a SEND_MESSAGE_V2 request and a
//! 32-message pull response, stored-record encode/decode, body CRC32.

use std::hint::black_box;
use std::net::SocketAddr;

use apogee_protocol::message::{properties, stored, sysflag};
use apogee_protocol::{FrameCodec, RemotingCommand};
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio_util::codec::Decoder;

fn body_1k() -> Bytes {
    Bytes::from((0..1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn send_request() -> RemotingCommand {
    let mut cmd = RemotingCommand::request(310).with_body(body_1k());
    for (k, v) in [
        ("a", "please_rename_unique_group_name"),
        ("b", "TopicTest"),
        ("c", "TBW102"),
        ("d", "4"),
        ("e", "3"),
        ("f", "0"),
        ("g", "1700000000000"),
        ("h", "0"),
        (
            "i",
            "KEYS\u{1}order-42\u{2}TAGS\u{1}TagA\u{2}WAIT\u{1}true\u{2}UNIQ_KEY\u{1}7F0000012B8018B4AAC28ECA39FC0001\u{2}",
        ),
        ("j", "0"),
        ("k", "false"),
        ("m", "false"),
    ] {
        cmd.set_ext(k, v);
    }
    cmd.opaque = 42;
    cmd
}

fn message_to_store(body: Bytes) -> stored::MessageToStore {
    let host = |s: &str| s.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{e}"));
    stored::MessageToStore {
        topic: "TopicTest".into(),
        queue_id: 3,
        flag: 0,
        body,
        properties: properties::encode([
            ("KEYS", "order-42"),
            ("TAGS", "TagA"),
            ("WAIT", "true"),
            ("UNIQ_KEY", "7F0000012B8018B4AAC28ECA39FC0001"),
            ("CLUSTER", "DefaultCluster"),
            ("MSG_REGION", "DefaultRegion"),
            ("TRACE_ON", "true"),
        ]),
        sys_flag: sysflag::TRANSACTION_NOT_TYPE,
        born_timestamp: 1_700_000_000_000,
        born_host: host("192.168.1.10:53211"),
        store_host: host("192.168.1.2:10911"),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        tags_code: 0,
    }
}

fn pull_response() -> RemotingCommand {
    let msg = message_to_store(body_1k());
    let mut body = BytesMut::new();
    for i in 0..32 {
        let start = body.len();
        stored::encode_stored(&msg, &mut body).unwrap_or_else(|e| panic!("{e}"));
        stored::patch_stored(&mut body[start..], i, start as i64, 1_700_000_000_001)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut cmd = RemotingCommand::response(0, Some("FOUND".to_owned())).with_body(body.freeze());
    cmd.set_ext("suggestWhichBrokerId", "0");
    cmd.set_ext("nextBeginOffset", "32");
    cmd.set_ext("minOffset", "0");
    cmd.set_ext("maxOffset", "32");
    cmd
}

fn frames(c: &mut Criterion) {
    for (name, cmd) in [
        ("send_v2_1k", send_request()),
        ("pull_32x1k", pull_response()),
    ] {
        let encoded = cmd.to_bytes();
        let mut g = c.benchmark_group(format!("frame/{name}"));
        g.throughput(Throughput::Bytes(encoded.len() as u64));
        g.bench_function("encode", |b| {
            let mut buf = BytesMut::with_capacity(encoded.len());
            b.iter(|| {
                buf.clear();
                black_box(&cmd).encode(&mut buf);
                black_box(buf.len())
            })
        });
        g.bench_function("decode", |b| {
            let mut codec = FrameCodec::default();
            b.iter(|| {
                let mut buf = BytesMut::from(&encoded[..]);
                black_box(codec.decode(&mut buf).ok().flatten())
            })
        });
        g.finish();
    }
}

fn stored_records(c: &mut Criterion) {
    let msg = message_to_store(body_1k());
    let mut record = BytesMut::new();
    stored::encode_stored(&msg, &mut record).unwrap_or_else(|e| panic!("{e}"));
    let record = record.freeze();
    let mut g = c.benchmark_group("stored");
    g.throughput(Throughput::Bytes(record.len() as u64));
    g.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(record.len());
        b.iter(|| {
            buf.clear();
            black_box(stored::encode_stored(black_box(&msg), &mut buf).ok())
        })
    });
    g.bench_function("check_record_crc", |b| {
        b.iter(|| black_box(stored::check_record(black_box(&record), true).is_ok()))
    });
    g.bench_function("decode_owned", |b| {
        b.iter(|| black_box(stored::decode_stored_bytes(black_box(&record), false).ok()))
    });
    g.finish();
}

fn crc(c: &mut Criterion) {
    let body = body_1k();
    let mut g = c.benchmark_group("crc32");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("body_1k", |b| {
        b.iter(|| black_box(stored::body_crc(black_box(&body))))
    });
    g.finish();
}

criterion_group!(benches, frames, stored_records, crc);
criterion_main!(benches);
