//! Throughput of transactional send + commit against plain sends, on one
//! `apogee standalone` over loopback, in the same run (docs/BENCHMARKS.md).
//! Ignored by default; run with the release binary:
//!
//! ```sh
//! cargo test --release -p apogee --test transaction_throughput -- --ignored --nocapture
//! ```
//!
//! `APOGEE_TX_SENDERS` (default 32) concurrent senders, each on the same
//! connection, `APOGEE_TX_SECS` (default 10) seconds per phase. A
//! transactional message is a SEND_MESSAGE of a half message, then an
//! END_TRANSACTION commit sent one-way (as the Java client does); the
//! figure counts committed messages, checked in the real topic at the end.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::offset::{GetMaxOffsetRequestHeader, GetMaxOffsetResponseHeader};
use apogee_protocol::header::send::{
    EndTransactionRequestHeader, SendMessageRequestHeader, SendMessageResponseHeader,
};
use apogee_protocol::message::{decode_offset_msg_id, sysflag};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};
use bytes::Bytes;

const PGROUP: &str = "tx-bench-producer";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn header(topic: &str, seq: u64, transactional: bool) -> SendMessageRequestHeader {
    let uniq = format!("{:032X}", seq);
    let props = if transactional {
        format!("TRAN_MSG\u{1}true\u{2}PGROUP\u{1}{PGROUP}\u{2}UNIQ_KEY\u{1}{uniq}\u{2}")
    } else {
        format!("UNIQ_KEY\u{1}{uniq}\u{2}")
    };
    SendMessageRequestHeader {
        producer_group: PGROUP.into(),
        topic: topic.into(),
        default_topic: "TBW102".into(),
        default_topic_queue_nums: 4,
        queue_id: (seq % 4) as i32,
        sys_flag: if transactional {
            sysflag::TRANSACTION_PREPARED_TYPE
        } else {
            0
        },
        born_timestamp: 0,
        properties: Some(props),
        ..Default::default()
    }
}

/// One sender: send (and commit) until `deadline`; returns messages done.
async fn sender(
    client: Arc<RemotingClient>,
    addr: String,
    topic: String,
    transactional: bool,
    next: Arc<AtomicU64>,
    deadline: Instant,
) -> u64 {
    let body = Bytes::from(vec![b'x'; 128]);
    let mut done = 0;
    while Instant::now() < deadline {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        let h = header(&topic, seq, transactional);
        let resp = client
            .invoke(
                &addr,
                RemotingCommand::request(request_code::SEND_MESSAGE)
                    .with_header(&h)
                    .with_body(body.clone()),
                Duration::from_secs(10),
            )
            .await
            .expect("send");
        assert_eq!(resp.code, response_code::SUCCESS, "{:?}", resp.remark);
        if transactional {
            let rh: SendMessageResponseHeader = resp.decode_header().expect("send response");
            let (_, phys) = decode_offset_msg_id(&rh.msg_id).expect("offset msg id");
            let end = EndTransactionRequestHeader {
                topic: Some(topic.clone()),
                producer_group: PGROUP.into(),
                tran_state_table_offset: rh.queue_offset,
                commit_log_offset: phys,
                commit_or_rollback: sysflag::TRANSACTION_COMMIT_TYPE,
                from_transaction_check: false,
                msg_id: format!("{:032X}", seq),
                transaction_id: None,
                ..Default::default()
            };
            client
                .invoke_oneway(
                    &addr,
                    RemotingCommand::request(request_code::END_TRANSACTION).with_header(&end),
                )
                .await
                .expect("end transaction");
        }
        done += 1;
    }
    done
}

async fn phase(
    client: &Arc<RemotingClient>,
    addr: &str,
    topic: &str,
    transactional: bool,
    senders: u64,
    secs: u64,
) -> (u64, Duration) {
    let next = Arc::new(AtomicU64::new(if transactional { 1 << 40 } else { 0 }));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            tokio::spawn(sender(
                Arc::clone(client),
                addr.to_owned(),
                topic.to_owned(),
                transactional,
                Arc::clone(&next),
                deadline,
            ))
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("sender task");
    }
    (total, start.elapsed())
}

#[test]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
fn transactional_send_and_commit_throughput() {
    let senders = env_num("APOGEE_TX_SENDERS", 32);
    let secs = env_num("APOGEE_TX_SECS", 10);
    let broker = support::start_standalone(&["--set", "mappedFileSizeCommitLog=268435456"]);
    let addr = broker.broker.to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = Arc::new(RemotingClient::new(ClientConfig::default()));
    rt.block_on(async {
        let (plain, t1) = phase(&client, &addr, "TxBenchPlain", false, senders, secs).await;
        let (tx, t2) = phase(&client, &addr, "TxBenchTx", true, senders, secs).await;
        // The one-way commits land shortly after the last send.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut committed = 0;
        for q in 0..4 {
            let h = GetMaxOffsetRequestHeader {
                topic: "TxBenchTx".into(),
                queue_id: q,
                ..Default::default()
            };
            let resp = client
                .invoke(
                    &addr,
                    RemotingCommand::request(request_code::GET_MAX_OFFSET).with_header(&h),
                    Duration::from_secs(10),
                )
                .await
                .expect("max offset");
            let rh: GetMaxOffsetResponseHeader = resp.decode_header().expect("max offset header");
            committed += rh.offset as u64;
        }
        assert_eq!(
            committed, tx,
            "every committed transaction is in the real topic, once"
        );
        let plain_rate = plain as f64 / t1.as_secs_f64();
        let tx_rate = tx as f64 / t2.as_secs_f64();
        println!(
            "TX_BENCH senders={senders} secs={secs} plain_msgs={plain} plain_per_s={plain_rate:.0} \
             tx_msgs={tx} tx_per_s={tx_rate:.0} ratio={:.2}",
            tx_rate / plain_rate
        );
        assert!(tx > 0 && plain > 0);
    });
    rt.block_on(client.close());
    drop(broker);
}
