//! Route lookups, alone and while another thread keeps re-registering
//! brokers with changed topic lists (each one rebuilds the route snapshot).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apogee_namesrv::route_info::{
    DataVersion, QueueInfo, Registration, RouteInfoManager, TopicQueueConfig,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

const BROKERS: usize = 20;
const TOPICS: usize = 500;

fn registration(broker: usize, counter: i64) -> Registration {
    Registration {
        cluster: "DefaultCluster".into(),
        broker_addr: format!("10.0.0.{broker}:10911"),
        broker_name: format!("broker-{broker}"),
        broker_id: 0,
        ha_server_addr: format!("10.0.0.{broker}:10912"),
        zone_name: None,
        timeout: Some(Duration::from_secs(3600)),
        enable_acting_master: Some(false),
        data_version: DataVersion {
            state_version: 0,
            timestamp: 1,
            counter,
        },
        topics: (0..TOPICS)
            .map(|t| TopicQueueConfig {
                topic: format!("topic-{t}"),
                queue: QueueInfo {
                    read_queue_nums: 8,
                    write_queue_nums: 8,
                    perm: 6,
                    topic_sys_flag: 0,
                },
            })
            .collect(),
        channel_id: Some(broker as u64),
    }
}

fn populated() -> Arc<RouteInfoManager> {
    let m = Arc::new(RouteInfoManager::new(Duration::from_secs(3600), false));
    for b in 0..BROKERS {
        m.register(registration(b, 1));
    }
    m
}

fn bench_routes(c: &mut Criterion) {
    let m = populated();
    c.bench_function("route_lookup", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % TOPICS;
            let r = m.route(&format!("topic-{i}"));
            assert_eq!(r.map(|r| r.brokers.len()), Some(BROKERS));
        })
    });

    // A writer thread re-registers every broker with a new data version in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let m = Arc::clone(&m);
        let stop = Arc::clone(&stop);
        let regs: Vec<Vec<Registration>> = (0..2)
            .map(|v| (0..BROKERS).map(|b| registration(b, 2 + v)).collect())
            .collect();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for r in &regs[(n % 2) as usize] {
                    m.register(r.clone());
                }
                n += 1;
            }
            n
        })
    };
    c.bench_function("route_lookup_during_registration", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % TOPICS;
            let r = m.route(&format!("topic-{i}"));
            assert!(r.is_some());
        })
    });
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.join().unwrap_or(0);
    eprintln!("writer re-registered all {BROKERS} brokers {rounds} times during the benchmark");

    // Registrations are built outside the timed section (iter_batched).
    let m = populated();
    let same = registration(3, 1);
    c.bench_function("register_unchanged_version", |b| {
        b.iter_batched(|| same.clone(), |r| m.register(r), BatchSize::SmallInput)
    });
    let mut v = 10;
    c.bench_function("register_changed_version", |b| {
        b.iter_batched(
            || {
                v += 1;
                registration(3, v)
            },
            |r| m.register(r),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench_routes);
criterion_main!(benches);
