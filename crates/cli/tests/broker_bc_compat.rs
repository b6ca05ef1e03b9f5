//! Retry, dead letters and delayed messages against a RocketMQ client we
//! did not write: `rocketmq-client-rust` on `apogee standalone` started with
//! short delay levels. A push consumer that answers RECONSUME_LATER gets the
//! message again with a growing reconsume count until its maximum, then the
//! message is in `%DLQ%<group>` (read with PULL_MESSAGE); a producer's
//! delayed messages (delay level, delay seconds, deliver time) arrive no
//! earlier than asked.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PullSysFlag;
use apogee_protocol::header::pull::PullMessageRequestHeader;
use apogee_protocol::message::decode_stored_many_strict;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};
use rocketmq_client_rust::{
    ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus,
    DefaultMQProducer, DefaultMQPushConsumer, MQPushConsumer, MessageListenerConcurrently,
    SendStatus,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_observability::TelemetryRuntimeGuard;

/// Level 2 is 2 s so a delayed send is measurable; every other level is
/// 1 s so retries (level 3 + reconsumeTimes) come back quickly.
const LEVELS: &str = "1s 2s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s 1s";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One delivery as the consumer saw it.
#[derive(Debug, Clone)]
struct Delivery {
    reconsume_times: i32,
    topic: String,
    at_ms: i64,
}

/// Records every delivery by body; fails bodies starting with "fail".
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<HashMap<String, Vec<Delivery>>>>,
}

impl MessageListenerConcurrently for Recorder {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> rocketmq_client_rust::ClientResult<ConsumeConcurrentlyStatus> {
        let mut seen = self.seen.lock().expect("recorder lock");
        let mut fail = false;
        for m in msgs {
            let body = m
                .body()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            fail |= body.starts_with("fail");
            seen.entry(body).or_default().push(Delivery {
                reconsume_times: m.reconsume_times(),
                topic: m.topic().to_string(),
                at_ms: now_ms(),
            });
        }
        Ok(if fail {
            ConsumeConcurrentlyStatus::ReconsumeLater
        } else {
            ConsumeConcurrentlyStatus::ConsumeSuccess
        })
    }
}

fn deliveries(r: &Recorder, body: &str) -> Vec<Delivery> {
    r.seen
        .lock()
        .expect("recorder lock")
        .get(body)
        .cloned()
        .unwrap_or_default()
}

/// Pulls queue 0 of `topic` from offset 0 with the broker's own protocol.
async fn pull_all(
    broker: SocketAddr,
    group: &str,
    topic: &str,
) -> Vec<(String, i32, HashMap<String, String>)> {
    let client = RemotingClient::new(ClientConfig::default());
    let h = PullMessageRequestHeader {
        consumer_group: group.into(),
        topic: topic.into(),
        queue_id: 0,
        queue_offset: 0,
        max_msg_nums: 32,
        sys_flag: PullSysFlag::build(false, false, true, false, false).0,
        commit_offset: 0,
        suspend_timeout_millis: 0,
        subscription: Some("*".into()),
        sub_version: 0,
        expression_type: Some("TAG".into()),
        ..Default::default()
    };
    let resp = client
        .invoke(
            &broker.to_string(),
            RemotingCommand::request(request_code::PULL_MESSAGE).with_header(&h),
            Duration::from_secs(10),
        )
        .await
        .expect("pull");
    client.close().await;
    if resp.code != response_code::SUCCESS {
        return Vec::new();
    }
    decode_stored_many_strict(&resp.body.clone().unwrap_or_default(), true)
        .expect("pulled records")
        .into_iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.body).into_owned(),
                m.reconsume_times,
                m.properties,
            )
        })
        .collect()
}

#[test]
fn failed_messages_retry_then_dead_letter_and_delays_are_honoured() {
    let sa = support::start_standalone(&["--set", &format!("messageDelayLevel={LEVELS}")]);
    let ns = sa.namesrv.to_string();
    const TOPIC: &str = "BcCompatTopic";
    const GROUP: &str = "BcCompatGroup";

    let owner = support::rocketmq_runtime_owner();
    let telemetry = TelemetryRuntimeGuard::noop();
    let client_rt = ClientRuntime::try_new(
        owner.root_context().component("bc-compat"),
        ClientRuntimeConfig::default(),
        telemetry.handle(),
    )
    .expect("client runtime");
    let rec = Recorder::default();

    let (sent_at, fail_id) = owner.block_on(async {
        let mut producer = DefaultMQProducer::builder(client_rt.clone())
            .producer_group("BcCompatProducer".to_string())
            .name_server_addr(ns.clone())
            .build();
        producer.start().await.expect("producer start");
        // Creates the topic before the consumer looks up its route.
        let warm = Message::builder()
            .topic(TOPIC)
            .body_slice(b"warm-up")
            .build_unchecked();
        let r = producer
            .send_with_timeout(warm, 10_000)
            .await
            .expect("send")
            .expect("send result");
        assert_eq!(r.send_status, SendStatus::SendOk);

        let mut consumer = DefaultMQPushConsumer::builder(client_rt.clone())
            .consumer_group(GROUP.to_string())
            .name_server_addr(ns.clone())
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            .max_reconsume_times(2)
            .build();
        consumer.subscribe(TOPIC, "*").await.expect("subscribe");
        consumer.register_message_listener_concurrently(rec.clone());
        consumer.start().await.expect("consumer start");

        let mut sent_at = HashMap::new();
        let fail = Message::builder()
            .topic(TOPIC)
            .tags("T")
            .body_slice(b"fail-me")
            .build_unchecked();
        let r = producer
            .send_with_timeout(fail, 10_000)
            .await
            .expect("send")
            .expect("send result");
        assert_eq!(r.send_status, SendStatus::SendOk);
        let fail_id = r.msg_id.as_ref().expect("msgId").to_string();
        sent_at.insert("fail-me", now_ms());

        let delayed = [
            (
                "delay-level-2",
                Message::builder()
                    .topic(TOPIC)
                    .body_slice(b"delay-level-2")
                    .delay_level(2),
            ),
            (
                "delay-secs-1",
                Message::builder()
                    .topic(TOPIC)
                    .body_slice(b"delay-secs-1")
                    .delay_secs(1),
            ),
            (
                "deliver-at",
                Message::builder()
                    .topic(TOPIC)
                    .body_slice(b"deliver-at")
                    .deliver_time_ms((now_ms() + 1500) as u64),
            ),
        ];
        for (name, m) in delayed {
            let at = now_ms();
            let r = producer
                .send_with_timeout(m.build_unchecked(), 10_000)
                .await
                .expect("send")
                .expect("send result");
            assert_eq!(r.send_status, SendStatus::SendOk, "{name}: {r:?}");
            sent_at.insert(name, at);
        }

        // The failing message: first delivery plus 2 retries, then the DLQ.
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let dlq = pull_all(sa.broker, GROUP, &format!("%DLQ%{GROUP}")).await;
            let delayed_done = ["delay-level-2", "delay-secs-1", "deliver-at"]
                .iter()
                .all(|b| !deliveries(&rec, b).is_empty());
            if !dlq.is_empty() && delayed_done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not done: dlq {} entries, seen {:?}",
                dlq.len(),
                rec.seen.lock().expect("lock")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Give an extra retry every chance to show up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        consumer.shutdown().await;
        producer.shutdown().await;
        (sent_at, fail_id)
    });

    // RECONSUME_LATER: delivered again with reconsume count 1, then 2,
    // each after its (1 s) delay, from the group's retry topic.
    let d = deliveries(&rec, "fail-me");
    let counts: Vec<i32> = d.iter().map(|x| x.reconsume_times).collect();
    assert_eq!(counts, vec![0, 1, 2], "{d:?}");
    assert_eq!(d[0].topic, TOPIC);
    for w in d.windows(2) {
        assert!(w[1].at_ms - w[0].at_ms >= 1000, "retry came early: {d:?}");
    }

    // After the maximum it is in %DLQ%<group> with its origin.
    let dlq = owner.block_on(pull_all(sa.broker, GROUP, &format!("%DLQ%{GROUP}")));
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let (body, times, props) = &dlq[0];
    assert_eq!(body, "fail-me");
    assert_eq!(*times, 3);
    assert_eq!(props.get("RETRY_TOPIC").map(String::as_str), Some(TOPIC));
    assert!(props.contains_key("ORIGIN_MESSAGE_ID"), "{props:?}");
    assert_eq!(props.get("UNIQ_KEY"), Some(&fail_id));
    assert!(!props.contains_key("DELAY"), "{props:?}");

    // Delays: never early.
    for (name, min_ms) in [
        ("delay-level-2", 2000),
        ("delay-secs-1", 1000),
        ("deliver-at", 1500),
    ] {
        let got = deliveries(&rec, name);
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        let waited = got[0].at_ms - sent_at[name];
        assert!(waited >= min_ms - 50, "{name} arrived after {waited} ms");
    }
    assert_eq!(deliveries(&rec, "warm-up").len(), 1);

    let _ = owner.block_on(client_rt.shutdown());
    drop(sa);
}
