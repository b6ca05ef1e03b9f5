//! Size and encode/decode time of a full REGISTER_BROKER body for a broker
//! with many topics, JSON vs the compressed form (`compressedRegister`).
//!
//! The figures in docs/BENCHMARKS.md come from
//! `cargo test --release -p apogee-protocol --test register_body_size -- --ignored --nocapture`.
//! The quick test checks the property that matters at a smaller scale.

use std::time::{Duration, Instant};

use apogee_protocol::body::{
    DataVersion, RegisterBrokerBody, TopicConfig, TopicConfigSerializeWrapper,
};

/// RocketMQ's default frame limit (`com.rocketmq.remoting.frameMaxLength`).
const FRAME_MAX: usize = 16 * 1024 * 1024;

/// A name per topic: a few business prefixes and a pseudo-random suffix, so
/// the compression figure is not flattered by sequential names.
fn topic_name(i: usize) -> String {
    const PREFIXES: [&str; 5] = [
        "orders",
        "payments",
        "user-events",
        "inventory",
        "audit-log",
    ];
    let mut x = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    format!("{}-{x:016x}", PREFIXES[i % PREFIXES.len()])
}

fn body(topics: usize) -> RegisterBrokerBody {
    let mut w = TopicConfigSerializeWrapper {
        data_version: DataVersion {
            state_version: 0,
            timestamp: 1_700_000_000_000,
            counter: topics as i64,
        },
        ..Default::default()
    };
    for i in 0..topics {
        let mut t = TopicConfig::new(topic_name(i));
        t.read_queue_nums = 8;
        t.write_queue_nums = 8;
        t.perm = 6;
        w.topic_config_table.insert(t.topic_name.clone(), t);
    }
    RegisterBrokerBody {
        topic_config_serialize_wrapper: w.into(),
        filter_server_list: Vec::new(),
    }
}

/// The best of `runs` timings of `f`.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (T, Duration) {
    let mut out = None;
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t0 = Instant::now();
        let v = f();
        best = best.min(t0.elapsed());
        out = Some(v);
    }
    (out.expect("at least one run"), best)
}

fn measure(topics: usize, runs: usize) -> (usize, usize) {
    let b = body(topics);
    let (json, json_enc) = best(runs, || b.encode());
    let (zip, zip_enc) = best(runs, || b.encode_compressed(true).expect("compress"));
    let (back_json, json_dec) = best(runs, || {
        RegisterBrokerBody::decode_with(&json, false).expect("json decode")
    });
    let (back_zip, zip_dec) = best(runs, || {
        RegisterBrokerBody::decode_with(&zip, true).expect("zip decode")
    });
    assert_eq!(
        back_json
            .topic_config_serialize_wrapper
            .topic_config_table
            .len(),
        topics
    );
    assert_eq!(
        back_zip.topic_config_serialize_wrapper.topic_config_table,
        b.topic_config_serialize_wrapper.topic_config_table
    );
    println!(
        "{topics} topics: JSON {} bytes ({:.1} MiB, {:.0}% of the 16 MiB frame), encode {json_enc:?}, decode {json_dec:?}; \
         compressed {} bytes ({:.2} MiB, {:.1}% of the frame, {:.1}x smaller), encode {zip_enc:?}, decode {zip_dec:?}",
        json.len(),
        json.len() as f64 / 1048576.0,
        json.len() as f64 * 100.0 / FRAME_MAX as f64,
        zip.len(),
        zip.len() as f64 / 1048576.0,
        zip.len() as f64 * 100.0 / FRAME_MAX as f64,
        json.len() as f64 / zip.len() as f64,
    );
    (json.len(), zip.len())
}

#[test]
fn compressed_registration_is_far_smaller() {
    let (json, zip) = measure(5_000, 1);
    assert!(zip * 5 < json, "compressed {zip} vs JSON {json}");
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn full_registration_of_100k_topics() {
    for topics in [10_000, 100_000] {
        let (_, zip) = measure(topics, 3);
        assert!(
            zip * 4 < FRAME_MAX,
            "{topics} topics compress to {zip} bytes"
        );
    }
}
