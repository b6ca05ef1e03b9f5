//! A full disk refuses every send; the log must say so once and then count,
//! not write one WARN per refused request (an operator once got ~950,000
//! lines in 15 s). One test in this binary: it installs the process-wide
//! subscriber and changes the process-wide throttle window.

mod ba_common;

use ba_common::Capture;

use std::time::Duration;

use apogee_protocol::body::TopicConfig;
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::send::SendMessageRequestHeader;
use apogee_protocol::RemotingCommand;
use bytes::Bytes;

fn refusal_lines(cap: &Capture) -> Vec<String> {
    cap.lines()
        .into_iter()
        .filter(|l| l.contains(" WARN ") && l.contains("send refused"))
        .collect()
}

fn send(topic: &str, i: usize) -> RemotingCommand {
    let h = SendMessageRequestHeader {
        producer_group: "PG".into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: (i % 4) as i32,
        born_timestamp: 1_700_000_000_000,
        ..Default::default()
    };
    RemotingCommand::request(request_code::SEND_MESSAGE)
        .with_header(&h)
        .with_body(Bytes::from_static(b"payload"))
}

async fn send_many(b: &ba_common::Broker, topic: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let calls = chunk.iter().map(|&i| b.call(send(topic, i)));
        for resp in futures::future::join_all(calls).await {
            assert_eq!(
                resp.code,
                response_code::SERVICE_NOT_AVAILABLE,
                "{:?}",
                resp.remark
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refusals_log_once_then_a_count() {
    let cap = Capture::default();
    let writer = cap.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    // Long enough that neither the flood nor the broker's 1 s tick ends it.
    apogee_throttle::set_default_window(Duration::from_secs(3600));

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ba_common::broker_config(dir.path(), None);
    // Any real usage is >= 0 %: the store reports the disk full at once.
    cfg.store.disk_space_warning_level_ratio = 0;
    cfg.store.disk_check_interval = 10;
    let b = ba_common::Broker::start(cfg).await;
    b.ctx().topics.update(TopicConfig {
        topic_name: "Flood".into(),
        read_queue_nums: 4,
        write_queue_nums: 4,
        ..Default::default()
    });
    assert!(
        ba_common::eventually(Duration::from_secs(10), || b.ctx().store.is_disk_full()).await,
        "the store never reported the disk full"
    );

    send_many(&b, "Flood", 2000).await;
    let lines = refusal_lines(&cap);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("disk"), "{}", lines[0]);
    assert!(!lines[0].contains("repeated="), "{}", lines[0]);

    // The pending count comes out as one summary line.
    apogee_throttle::flush_all();
    let lines = refusal_lines(&cap);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[1].contains("send refused: repeated 1999 times")
            && lines[1].contains("repeated=1999"),
        "{}",
        lines[1]
    );

    // The flush started a new window: 500 more refusals add no line...
    send_many(&b, "Flood", 500).await;
    assert_eq!(refusal_lines(&cap).len(), 2);
    // ...until the window has passed; then one line carries their count
    // (from the next refusal, or from the broker's tick if it comes first).
    apogee_throttle::set_default_window(Duration::from_millis(1));
    tokio::time::sleep(Duration::from_millis(20)).await;
    send_many(&b, "Flood", 1).await;
    apogee_throttle::set_default_window(Duration::from_secs(3600));
    let lines = refusal_lines(&cap);
    assert!((3..=4).contains(&lines.len()), "{lines:#?}");
    let with_500: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("repeated=500"))
        .collect();
    assert_eq!(with_500.len(), 1, "{lines:#?}");

    // 2,501 refused sends, and the whole log stays a few dozen lines.
    let all = cap.lines();
    assert!(all.len() < 50, "{} lines: {all:#?}", all.len());
    b.stop().await;
}
