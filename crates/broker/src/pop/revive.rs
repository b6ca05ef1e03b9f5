//! The revive service: reads each revive queue from its saved progress,
//! pairs acks with checkpoints, and once a checkpoint's invisible time has
//! passed writes its un-acked messages to the group's retry topic
//! (reconsumeTimes + 1) or to `%DLQ%group` after `retryMaxTimes`. The
//! progress (consume offset of `REVIVE_GROUP`) only moves past checkpoints
//! that are settled, so a restart reads the open ones again; a crash
//! between a revive and the saved progress may revive a message twice
//! (at-least-once), never zero times.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::flags::PermName;
use apogee_protocol::message::stored::{self, MessageToStore};
use apogee_protocol::message::{keys, properties};
use apogee_protocol::topic;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    retry_topic_v1, revive_topic, AckMsg, CheckPoint, PopError, ACK_TAG, BATCH_ACK_TAG, CK_TAG,
    REVIVE_GROUP, REVIVE_QUEUE_NUM,
};
use crate::context::BrokerContext;
use crate::processor::send::store_messages;
use crate::schedule::now_ms;

/// Revive-topic records read per store call.
const BATCH: usize = 256;
/// Most records examined per queue and pass.
const MAX_PER_PASS: i64 = 200_000;
/// How often the service looks (Apache's `reviveInterval` default).
const INTERVAL: Duration = Duration::from_millis(1000);

/// Runs a revive pass every second until `stop`.
pub fn spawn_revive_loop(
    ctx: Arc<BrokerContext>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(INTERVAL) => {}
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
            if *stop.borrow() {
                return;
            }
            if !ctx.config.is_master() {
                continue;
            }
            for q in 0..REVIVE_QUEUE_NUM {
                match revive_queue(&ctx, q).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(revive_queue = q, revived = n, "pop messages revived"),
                    Err(e) => {
                        static FAIL: apogee_throttle::LogThrottle =
                            apogee_throttle::LogThrottle::new("pop revive failed");
                        apogee_throttle::throttled_warn!(FAIL, q, revive_queue = q, error = %e,
                            "pop revive pass failed; retried next pass");
                    }
                }
            }
        }
    })
}

/// (topic, group, queue, startOffset, popTime): how acks find their checkpoint.
type CkKey = (String, String, i32, i64, i64);

/// One pass over revive queue `q`; the number of messages revived.
pub async fn revive_queue(ctx: &BrokerContext, q: i32) -> Result<usize, PopError> {
    let rt = revive_topic(&ctx.config.broker_cluster_name);
    let min = ctx.store.min_offset(&rt, q);
    let max = ctx.store.max_offset(&rt, q);
    let start = ctx
        .offsets
        .query(REVIVE_GROUP, &rt, q)
        .unwrap_or(min)
        .max(min);
    if start >= max {
        return Ok(0);
    }
    let end = max.min(start.saturating_add(MAX_PER_PASS));
    let mut cks: Vec<(i64, CheckPoint)> = Vec::new();
    let mut acked: HashMap<CkKey, HashSet<i64>> = HashMap::new();
    let mut off = start;
    while off < end {
        let r = ctx
            .store
            .get_messages(REVIVE_GROUP, &rt, q, off, BATCH, usize::MAX, None);
        if r.messages.is_empty() {
            if r.next_begin_offset > off {
                off = r.next_begin_offset;
                continue;
            }
            break;
        }
        for (rec, &ro) in r.messages.iter().zip(&r.queue_offsets) {
            let Ok(m) = stored::check_record(rec, false) else {
                continue;
            };
            match m.property(keys::TAGS) {
                Some(CK_TAG) => match serde_json::from_slice::<CheckPoint>(m.body) {
                    Ok(ck) => cks.push((ro, ck)),
                    Err(e) => {
                        tracing::warn!(revive_queue = q, offset = ro, error = %e, "bad checkpoint skipped")
                    }
                },
                Some(ACK_TAG) | Some(BATCH_ACK_TAG) => {
                    match serde_json::from_slice::<AckMsg>(m.body) {
                        Ok(a) => {
                            let set = acked
                                .entry((
                                    a.topic,
                                    a.consumer_group,
                                    a.queue_id,
                                    a.start_offset,
                                    a.pop_time,
                                ))
                                .or_default();
                            match a.ack_offset_list {
                                Some(list) => set.extend(list),
                                None => {
                                    set.insert(a.ack_offset);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(revive_queue = q, offset = ro, error = %e, "bad ack skipped")
                        }
                    }
                }
                _ => {}
            }
        }
        off = r.next_begin_offset.max(off + 1);
    }
    let now = now_ms();
    let mut revived = 0;
    // Progress: up to the first checkpoint still invisible. Later due
    // checkpoints are revived now and settled with a batch ack of what was
    // revived, so that the re-read from the held-back progress skips them.
    let mut progress = off;
    for (ro, ck) in &cks {
        if ck.revive_time() > now {
            progress = progress.min(*ro);
            continue;
        }
        let key = (
            ck.topic.clone(),
            ck.cid.clone(),
            ck.queue_id,
            ck.start_offset,
            ck.pop_time,
        );
        let acks = acked.get(&key);
        let mut done = Vec::new();
        for i in 0..usize::from(ck.num) {
            let qo = ck.offset_at(i);
            if acks.is_some_and(|a| a.contains(&qo)) {
                continue;
            }
            match revive_one(ctx, ck, qo).await {
                Ok(true) => {
                    revived += 1;
                    done.push(qo);
                }
                Ok(false) => done.push(qo),
                Err(e) => {
                    // Keep the progress before this checkpoint: retried next pass.
                    commit(ctx, &rt, q, start, progress.min(*ro));
                    return Err(e);
                }
            }
        }
        if !done.is_empty() && progress < *ro {
            settle(ctx, q, ck, done).await?;
        }
    }
    commit(ctx, &rt, q, start, progress);
    Ok(revived)
}

/// Records that the checkpoint's `offsets` were revived (a `bAck` record).
async fn settle(
    ctx: &BrokerContext,
    q: i32,
    ck: &CheckPoint,
    offsets: Vec<i64>,
) -> Result<(), PopError> {
    let ack = AckMsg {
        ack_offset: offsets.first().copied().unwrap_or(ck.start_offset),
        start_offset: ck.start_offset,
        consumer_group: ck.cid.clone(),
        topic: ck.topic.clone(),
        queue_id: ck.queue_id,
        pop_time: ck.pop_time,
        broker_name: ck.broker_name.clone(),
        ack_offset_list: Some(offsets),
    };
    super::processor::write_ack(ctx, &ack, q, BATCH_ACK_TAG).await
}

fn commit(ctx: &BrokerContext, rt: &str, q: i32, start: i64, to: i64) {
    if to > start {
        ctx.offsets.commit(REVIVE_GROUP, rt, q, to);
    }
}

/// Writes the message at `qo` of the checkpoint's queue to the retry topic
/// or the DLQ. `Ok(false)` when the message is gone (retention).
async fn revive_one(ctx: &BrokerContext, ck: &CheckPoint, qo: i64) -> Result<bool, PopError> {
    let r = ctx.store.get_messages(
        REVIVE_GROUP,
        &ck.topic,
        ck.queue_id,
        qo,
        1,
        usize::MAX,
        None,
    );
    let (Some(rec), Some(&got)) = (r.messages.first(), r.queue_offsets.first()) else {
        return Ok(false);
    };
    if got != qo {
        return Ok(false);
    }
    let Ok(info) = stored::check_record(rec, false) else {
        return Ok(false);
    };
    let group = ck.cid.as_str();
    let max_times = ctx
        .groups
        .find_or_create(group)
        .map_or(16, |g| g.retry_max_times);
    let origin = info
        .property(keys::RETRY_TOPIC)
        .map(str::to_owned)
        .unwrap_or_else(|| super::parse_normal_topic(&ck.topic, group));
    let mut m: MessageToStore = info.to_message_to_store();
    let dlq = info.reconsume_times >= max_times;
    let rw = PermName::PERM_READ | PermName::PERM_WRITE;
    if dlq {
        m.topic = topic::dlq_topic(group);
        ctx.topics.get_or_create_system(&m.topic, 1, rw, 0);
        tracing::info!(group, topic = %origin, offset = qo, "pop message moved to the dead-letter queue");
    } else if ck.topic.starts_with(topic::RETRY_GROUP_TOPIC_PREFIX) {
        m.topic = ck.topic.clone();
    } else {
        m.topic = retry_topic_v1(&ck.topic, group);
        ctx.topics.get_or_create_system(&m.topic, 1, rw, 0);
    }
    m.queue_id = 0;
    let mut props = String::with_capacity(m.properties.len() + 64);
    for (n, v) in properties::iter(&m.properties) {
        if n != keys::POP_CK && n != keys::DELAY_TIME_LEVEL && n != keys::WAIT_STORE_MSG_OK {
            properties::append(&mut props, n, v);
        }
    }
    if info.property(keys::RETRY_TOPIC).is_none() {
        properties::append(&mut props, keys::RETRY_TOPIC, &origin);
    }
    if info.property(keys::FIRST_POP_TIME).is_none() {
        properties::append(&mut props, keys::FIRST_POP_TIME, &ck.pop_time.to_string());
    }
    if dlq {
        properties::append(&mut props, keys::DLQ_ORIGIN_TOPIC, &origin);
    }
    properties::append(&mut props, keys::WAIT_STORE_MSG_OK, "false");
    m.properties = props;
    m.reconsume_times = info.reconsume_times.saturating_add(1);
    m.store_host = ctx.store_host;
    let what = "the revived pop message";
    let r = store_messages(ctx, vec![m])
        .await
        .map_err(|source| PopError::Store { what, source })?;
    if r.status != apogee_store::PutStatus::Ok {
        return Err(PopError::Put {
            what,
            status: r.status.as_str(),
        });
    }
    Ok(true)
}
