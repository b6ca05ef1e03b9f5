//! Registration that scales (issue #11): topics created in a burst reach the
//! NameServer incrementally and at once — each is routable shortly after its
//! creation was answered — while the NameServer receives far fewer
//! REGISTER_BROKER requests than there are topics.

mod ba_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_protocol::code::response_code;
use apogee_remoting::{ClientConfig, RemotingClient};
use ba_common::*;
use futures::stream::{self, StreamExt};

const TOPICS: usize = 5_000;
/// Creations in flight at once.
const CONCURRENCY: usize = 16;
/// Every this many creations, one topic is watched until it is routable.
const PROBE_EVERY: usize = 250;
/// Measured (debug build, shared 2-core machine, 5,000 creations in about
/// 0.45 s): the slowest probe took 16-32 ms, every topic was in the
/// NameServer's tables 7-15 ms after the last answer, and 36-46
/// REGISTER_BROKER requests carried them. The bounds leave a wide margin
/// for a loaded machine.
const MAX_PROBE_LAG: Duration = Duration::from_secs(1);
const MAX_ALL_ROUTABLE: Duration = Duration::from_secs(3);

fn name(i: usize) -> String {
    format!("RegScale-{i:05}")
}

/// Polls until `topic` is routable; returns how long that took.
async fn wait_routable(client: &RemotingClient, namesrv: &str, topic: &str) -> Duration {
    let t0 = Instant::now();
    while route(client, namesrv, topic).await.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{topic} never routable"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_creations_is_registered_incrementally_and_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ns = start_namesrv(dir.path()).await;
    let ns_addr = ns.local_addr().to_string();
    let broker = Arc::new(
        Broker::start(broker_config(
            &dir.path().join("store"),
            Some(ns_addr.clone()),
        ))
        .await,
    );
    let lookups = Arc::new(RemotingClient::new(ClientConfig::default()));
    // The start's full registration is done; count from here.
    let registers0 = ns.register_requests();

    let t0 = Instant::now();
    let probes = stream::iter(0..TOPICS)
        .map(|i| {
            let broker = Arc::clone(&broker);
            let lookups = Arc::clone(&lookups);
            let ns_addr = ns_addr.clone();
            async move {
                let resp = broker.call(create_topic(name(i))).await;
                assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
                if i % PROBE_EVERY != 0 {
                    return None;
                }
                // Watched from its answer on, in the background of the burst.
                Some(tokio::spawn(async move {
                    wait_routable(&lookups, &ns_addr, &name(i)).await
                }))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|p| async move { p })
        .collect::<Vec<_>>()
        .await;
    let answered = t0.elapsed();

    // Every topic in the NameServer's tables, from the last answer on
    // (looked up in process: 5,000 network lookups would measure themselves).
    let t1 = Instant::now();
    let mut next = 0;
    while next < TOPICS {
        if ns.routes().route(&name(next)).is_some() {
            next += 1;
            continue;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "{} never routable",
            name(next)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let all_routable = t1.elapsed();
    // And every one answers GET_ROUTEINFO_BY_TOPIC.
    let t2 = Instant::now();
    for i in 0..TOPICS {
        assert!(
            route(&lookups, &ns_addr, &name(i)).await.is_some(),
            "{}",
            name(i)
        );
    }
    let lookups_took = t2.elapsed();
    let mut lags = Vec::new();
    for p in probes {
        lags.push(p.await.expect("probe"));
    }
    lags.sort();
    let registers = ns.register_requests() - registers0;
    println!(
        "{TOPICS} topics created in {answered:?} ({CONCURRENCY} in flight); all routable {all_routable:?} \
         after the last answer ({TOPICS} GET_ROUTEINFO_BY_TOPIC then took {lookups_took:?}); probe lag (answer -> routable) median {:?} max {:?} over {} probes; \
         {registers} REGISTER_BROKER requests",
        lags[lags.len() / 2],
        lags[lags.len() - 1],
        lags.len(),
    );
    assert!(
        lags[lags.len() - 1] <= MAX_PROBE_LAG,
        "a topic took {:?} to become routable",
        lags[lags.len() - 1]
    );
    assert!(
        all_routable <= MAX_ALL_ROUTABLE,
        "all topics routable only after {all_routable:?}"
    );
    // Far fewer than the topics, and no more than the pacing allows
    // (one start per 10 ms while the burst lasts, plus a few).
    assert!(
        registers * 10 <= TOPICS as u64,
        "{registers} registrations for {TOPICS} topics"
    );
    let paced = (answered + all_routable).as_millis() as u64 / 10 + 10;
    assert!(
        registers <= paced,
        "{registers} registrations in {answered:?}: pacing allows {paced}"
    );

    lookups.close().await;
    let broker = Arc::into_inner(broker).expect("broker still shared");
    broker.stop().await;
    ns.shutdown().await;
}
