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
    c.bench_function("sql92/compile_mixed", |b| {
        b.iter(|| Expression::compile(black_box(cases[2].1)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
