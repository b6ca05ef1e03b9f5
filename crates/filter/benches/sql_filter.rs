//! Cost of one SQL92 evaluation per message, over a properties string laid
//! out as the broker stores it (name U+0001 value U+0002 …), looked up in
//! place as the broker does.

use apogee_filter::{Expression, Properties};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

/// The stored properties string, scanned per lookup as the broker does.
struct Stored<'a>(&'a str);

impl Properties for Stored<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        apogee_protocol::message::properties::get(self.0, name)
    }
}

fn bench(c: &mut Criterion) {
    let props = "TAGS\u{1}TagA\u{2}KEYS\u{1}order-42\u{2}UNIQ_KEY\u{1}7F0000011A2B3C4D5E6F\u{2}\
                 WAIT\u{1}true\u{2}a\u{1}7\u{2}region\u{1}eu-west\u{2}price\u{1}19.90\u{2}";
    let cases = [
        ("eq_string", "region = 'eu-west'"),
        ("between", "a BETWEEN 5 AND 10"),
        (
            "mixed_4_terms",
            "(a > 3 AND region IN ('eu-west', 'us-east')) OR (price >= 100.0 AND TAGS IS NOT NULL)",
        ),
        ("missing_property", "nothere = 'x' OR other > 5"),
    ];
    for (name, sql) in cases {
        let e = Expression::compile(sql).expect("benchmark expressions compile");
        c.bench_function(&format!("sql92/{name}"), |b| {
            b.iter(|| e.matches(black_box(&Stored(props))))
        });
    }
    // The broker's whole per-message step: find the properties in the
    // stored record (validating it), then evaluate.
    let record = stored_record(props);
    let e = Expression::compile(cases[2].1).expect("compiles");
    c.bench_function("sql92/broker_record_mixed_4_terms", |b| {
        b.iter(|| {
            let info = apogee_protocol::message::stored::check_record(black_box(&record), false)
                .expect("valid record");
            e.matches(&Stored(&info.properties))
        })
    });
    c.bench_function("sql92/compile_mixed", |b| {
        b.iter(|| Expression::compile(black_box(cases[2].1)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

fn stored_record(props: &str) -> Vec<u8> {
    use apogee_protocol::message::stored::{encode_stored, MessageToStore};
    let msg = MessageToStore {
        topic: "BenchmarkTest".into(),
        queue_id: 0,
        flag: 0,
        body: vec![b'x'; 128].into(),
        properties: props.into(),
        sys_flag: 0,
        born_timestamp: 1,
        born_host: "127.0.0.1:1".parse().expect("addr"),
        store_host: "127.0.0.1:2".parse().expect("addr"),
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        tags_code: 0,
    };
    let mut b = bytes::BytesMut::new();
    encode_stored(&msg, &mut b).expect("encodes");
    b.to_vec()
}
