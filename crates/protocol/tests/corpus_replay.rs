//! Replays the checked-in fuzz seed corpus (fuzz/corpus/<target>/) through
//! the same harness functions the fuzz targets call: no input may panic,
//! and seeds named as valid must decode. `regenerate_seed_corpus` (ignored)
//! rewrites the seeds from code when the formats change.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use apogee_protocol::message::harness::{frame_decoder, message_decoder};
use apogee_protocol::message::{batch, properties, stored, sysflag};
use apogee_protocol::{RemotingCommand, SerializeType};
use bytes::{Bytes, BytesMut};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus dir {} unreadable: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let data = fs::read(e.path()).unwrap_or_else(|err| panic!("{name}: {err}"));
            (name, data)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn frame_decoder_corpus() {
    let seeds = seeds("frame_decoder");
    assert!(seeds.len() >= 3, "frame seed corpus is missing");
    let mut valid = 0;
    for (name, data) in &seeds {
        let outcome = frame_decoder(data);
        if name.starts_with("valid-") {
            valid += 1;
            assert!(outcome.frames >= 1, "{name}: no frame decoded: {outcome:?}");
            assert!(!outcome.codec_error, "{name}: codec error: {outcome:?}");
        }
    }
    assert!(valid >= 2, "expected valid frame seeds");
}

#[test]
fn message_decoder_corpus() {
    let seeds = seeds("message_decoder");
    assert!(seeds.len() >= 3, "message seed corpus is missing");
    let (mut stored_seen, mut batch_seen) = (0, 0);
    for (name, data) in &seeds {
        let outcome = message_decoder(data);
        if name.starts_with("stored-") {
            stored_seen += 1;
            assert!(outcome.stored_all_ok, "{name}: {outcome:?}");
            assert!(outcome.stored_records >= 1, "{name}: {outcome:?}");
        }
        if name.starts_with("batch-") {
            batch_seen += 1;
            assert!(
                outcome.batch_messages.is_some_and(|n| n >= 1),
                "{name}: {outcome:?}"
            );
        }
    }
    assert!(stored_seen >= 2 && batch_seen >= 1);
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn record(topic: &str, body: &[u8], born: &str, store: &str, phys: i64) -> Vec<u8> {
    let msg = stored::MessageToStore {
        topic: topic.into(),
        queue_id: 1,
        flag: 0,
        body: Bytes::copy_from_slice(body),
        properties: properties::encode([
            ("TAGS", "TagA"),
            ("KEYS", "order-1"),
            ("UNIQ_KEY", "7F0000012B8018B4AAC28ECA39FC0001"),
            ("WAIT", "true"),
        ]),
        sys_flag: sysflag::TRANSACTION_NOT_TYPE,
        born_timestamp: 1_700_000_000_000,
        born_host: addr(born),
        store_host: addr(store),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        tags_code: 0,
    };
    let mut buf = BytesMut::new();
    stored::encode_stored(&msg, &mut buf).unwrap_or_else(|e| panic!("encode: {e}"));
    stored::patch_stored(&mut buf, 7, phys, 1_700_000_000_500)
        .unwrap_or_else(|e| panic!("patch: {e}"));
    buf.to_vec()
}

/// Rewrites the named seeds. Run with
/// `cargo test -p apogee-protocol --test corpus_replay -- --ignored`.
#[test]
#[ignore = "rewrites files under fuzz/corpus"]
fn regenerate_seed_corpus() {
    let frames = corpus_dir("frame_decoder");
    let msgs = corpus_dir("message_decoder");
    fs::create_dir_all(&frames).unwrap_or_else(|e| panic!("{e}"));
    fs::create_dir_all(&msgs).unwrap_or_else(|e| panic!("{e}"));
    let write = |dir: &Path, name: &str, data: &[u8]| {
        fs::write(dir.join(name), data).unwrap_or_else(|e| panic!("{name}: {e}"));
    };

    // A SEND_MESSAGE_V2 request with a JSON header.
    let mut send = RemotingCommand::request(310).with_body(&b"hello fuzz"[..]);
    for (k, v) in [
        ("a", "PG"),
        ("b", "TopicTest"),
        ("c", "TBW102"),
        ("d", "4"),
        ("e", "0"),
        ("f", "0"),
        ("g", "1700000000000"),
        ("h", "0"),
        ("i", "TAGS\u{1}TagA\u{2}WAIT\u{1}true\u{2}"),
        ("j", "0"),
        ("k", "false"),
        ("m", "false"),
    ] {
        send.set_ext(k, v);
    }
    send.opaque = 1;
    write(&frames, "valid-send-v2-json.bin", &send.to_bytes());
    // The same with the ROCKETMQ binary header.
    let mut send_bin = send.clone();
    send_bin.serialize_type = SerializeType::RocketMq;
    write(&frames, "valid-send-v2-binary.bin", &send_bin.to_bytes());
    // A pull response carrying two stored records, followed by a heartbeat.
    let mut body = record("TopicTest", b"one", "10.0.0.1:5000", "10.0.0.2:10911", 0);
    let second_at = body.len() as i64;
    body.extend(record(
        "TopicTest",
        b"two",
        "10.0.0.1:5000",
        "10.0.0.2:10911",
        second_at,
    ));
    let mut pull = RemotingCommand::response(0, Some("FOUND".to_owned())).with_body(body);
    pull.set_ext("nextBeginOffset", "9");
    pull.set_ext("minOffset", "0");
    pull.set_ext("maxOffset", "9");
    pull.set_ext("suggestWhichBrokerId", "0");
    let mut two = pull.to_bytes().to_vec();
    two.extend_from_slice(&RemotingCommand::request(34).to_bytes());
    write(&frames, "valid-pull-response-then-heartbeat.bin", &two);
    // Garbage: a huge length prefix, a tiny one, a truncated frame.
    write(
        &frames,
        "garbage-huge-length.bin",
        &[0x7F, 0xFF, 0xFF, 0xFF, 0, 0],
    );
    write(&frames, "garbage-tiny-length.bin", &[0, 0, 0, 2, 0, 0]);
    let full = send.to_bytes();
    write(&frames, "garbage-truncated.bin", &full[..full.len() / 2]);

    // Message formats.
    write(
        &msgs,
        "stored-v4.bin",
        &record("TopicTest", b"body", "10.0.0.1:5000", "10.0.0.2:10911", 0),
    );
    write(
        &msgs,
        "stored-v6-long-topic.bin",
        &record(
            &"T".repeat(130),
            b"body6",
            "[2001:db8::1]:5000",
            "[2001:db8::2]:10911",
            4096,
        ),
    );
    let mut b = BytesMut::new();
    batch::encode_batch(
        &[
            batch::BatchMessage {
                flag: 0,
                body: Bytes::from_static(b"m1"),
                properties: properties::encode([("UNIQ_KEY", "A1"), ("TAGS", "x")]),
            },
            batch::BatchMessage {
                flag: 1,
                body: Bytes::from_static(b"m2"),
                properties: String::new(),
            },
        ],
        &mut b,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    write(&msgs, "batch-two-messages.bin", &b);
    let mut bad = record("TopicTest", b"body", "10.0.0.1:5000", "10.0.0.2:10911", 0);
    bad[84..88].copy_from_slice(&i32::MAX.to_be_bytes());
    write(&msgs, "garbage-body-length-overflow.bin", &bad);
    write(
        &msgs,
        "garbage-blank-filler.bin",
        &[0, 0, 0, 8, 0xCB, 0xD4, 0x31, 0x94],
    );
    write(
        &msgs,
        "garbage-properties-text.bin",
        "KEYS\u{1}a b\u{2}\u{1}\u{2}TAGS\u{1}\u{2}x".as_bytes(),
    );
}
