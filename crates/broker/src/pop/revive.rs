//! The revive service: reads each revive queue, pairs acks with
//! checkpoints, and once a checkpoint's invisible time has passed writes
//! its un-acked messages to the group's retry topic (reconsumeTimes + 1)
//! or to `%DLQ%group` after `retryMaxTimes`.
//!
//! Each queue is read once: the checkpoints still open are kept in memory
//! (`ReviveStates`) with the acks seen for them, so a checkpoint with a
//! long invisible time does not make every pass re-read what follows it.
//! The saved progress (consume offset of `REVIVE_GROUP`) is the offset of
//! the oldest open checkpoint, so a restart reads the open ones again;
//! a checkpoint revived while an older one is still open is settled with
//! a `bAck` record so that the re-read skips it. A crash between a revive
//! and the saved progress may revive a message twice (at-least-once),
//! never zero times.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use apogee_protocol::flags::PermName;
use apogee_protocol::message::stored::{self, MessageToStore};
use apogee_protocol::message::{keys, properties};
use apogee_protocol::topic;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    retry_topic_v1, retry_topic_v2, revive_topic, AckMsg, CheckPoint, PopError, ACK_TAG,
    BATCH_ACK_TAG, CK_TAG, REVIVE_GROUP, REVIVE_QUEUE_NUM,
};
use crate::context::BrokerContext;
use crate::processor::send::store_messages;
use crate::schedule::now_ms;

/// Revive-topic records read per store call.
const BATCH: usize = 256;
/// Most records examined per queue and pass.
const MAX_PER_PASS: i64 = 200_000;
/// Most open checkpoints kept per revive queue (a few hundred bytes each).
const MAX_OPEN: usize = 500_000;
/// A checkpoint is revived only this long after its revive time (Apache's
/// `ackTimeInterval` + 1 s): an ack sent before the revive time is stored
/// by then, so the pass that revives it has read the ack.
pub const REVIVE_MARGIN_MS: i64 = 2000;

/// Runs a revive pass every `reviveInterval` until `stop`.
pub fn spawn_revive_loop(
    ctx: Arc<BrokerContext>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ctx.config.revive_interval) => {}
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
                    Ok(p) if p.revived == 0 => {}
                    Ok(p) => {
                        tracing::info!(
                            revive_queue = q,
                            revived = p.revived,
                            "pop messages revived"
                        )
                    }
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

fn ck_key(ck: &CheckPoint) -> CkKey {
    (
        ck.topic.clone(),
        ck.cid.clone(),
        ck.queue_id,
        ck.start_offset,
        ck.pop_time,
    )
}

/// A checkpoint read but not yet settled.
#[derive(Debug)]
struct Open {
    ck: CheckPoint,
    /// Queue offsets acked (or revived already).
    done: HashSet<i64>,
    /// Queue offsets revived by this service (settled with a `bAck`).
    revived: Vec<i64>,
}

impl Open {
    fn finished(&self) -> bool {
        (0..usize::from(self.ck.num)).all(|i| self.done.contains(&self.ck.offset_at(i)))
    }
}

/// What a revive queue's passes carry over.
#[derive(Debug, Default)]
struct QueueState {
    /// Next revive-topic offset to read; 0 with `open` empty: not started.
    scanned: i64,
    /// Open checkpoints by their revive-topic offset.
    open: BTreeMap<i64, Open>,
    index: HashMap<CkKey, i64>,
    /// Store time of the last record read.
    last_ts: i64,
}

/// The revive service's per-queue state (see the module doc). A pass takes
/// a queue's state out and puts it back; a second pass of the same queue
/// at once finds nothing and does nothing.
#[derive(Default)]
pub struct ReviveStates {
    slots: Mutex<HashMap<i32, Option<QueueState>>>,
    /// Per revive queue, as of its last pass: popped messages neither
    /// acked nor revived, by (group, topic, queue id).
    inflight: Mutex<HashMap<i32, InflightMap>>,
}

/// Popped messages not yet acked nor revived, by (group, topic, queue id).
pub type InflightMap = HashMap<(String, String, i32), u64>;

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Messages written to a retry topic or a DLQ.
    pub revived: usize,
    /// Revive-topic records read.
    pub scanned: usize,
}

/// Holds a queue's state during a pass and puts it back when dropped.
struct Taken<'a> {
    states: &'a ReviveStates,
    q: i32,
    state: Option<QueueState>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.states.slots.lock().insert(self.q, self.state.take());
    }
}

impl ReviveStates {
    /// `group`'s in-flight POP messages by (topic, queue id), as of each
    /// revive queue's last pass (every `reviveInterval`).
    pub fn inflight_of(&self, group: &str) -> HashMap<(String, i32), u64> {
        let mut out: HashMap<(String, i32), u64> = HashMap::new();
        for m in self.inflight.lock().values() {
            for ((g, t, q), n) in m {
                if g == group {
                    *out.entry((t.clone(), *q)).or_default() += n;
                }
            }
        }
        out
    }

    /// Every group's in-flight POP messages.
    pub fn inflight_total(&self) -> u64 {
        self.inflight.lock().values().flat_map(|m| m.values()).sum()
    }

    fn set_inflight(&self, q: i32, st: &QueueState) {
        let mut m = InflightMap::new();
        for open in st.open.values() {
            let left = (0..usize::from(open.ck.num))
                .filter(|&i| !open.done.contains(&open.ck.offset_at(i)))
                .count() as u64;
            if left > 0 {
                *m.entry((open.ck.cid.clone(), open.ck.topic.clone(), open.ck.queue_id))
                    .or_default() += left;
            }
        }
        self.inflight.lock().insert(q, m);
    }

    fn take(&self, q: i32) -> Option<Taken<'_>> {
        let mut slots = self.slots.lock();
        let slot = slots
            .entry(q)
            .or_insert_with(|| Some(QueueState::default()));
        let state = Some(slot.take()?);
        Some(Taken {
            states: self,
            q,
            state,
        })
    }
}

/// Reads `[st.scanned, end)` of the revive queue into `st`; returns the
/// records read. Blocking work: runs on a blocking thread.
fn scan(ctx: &BrokerContext, rt: &str, q: i32, st: &mut QueueState, end: i64) -> usize {
    let mut off = st.scanned;
    let mut read = 0usize;
    'read: while off < end {
        let r = ctx
            .store
            .get_messages(REVIVE_GROUP, rt, q, off, BATCH, usize::MAX, None);
        if r.messages.is_empty() {
            if r.next_begin_offset > off {
                off = r.next_begin_offset;
                continue;
            }
            break;
        }
        for (rec, &ro) in r.messages.iter().zip(&r.queue_offsets) {
            if st.open.len() >= MAX_OPEN {
                // Bounded memory: the rest is read once older ones close.
                static FULL: apogee_throttle::LogThrottle =
                    apogee_throttle::LogThrottle::new("pop revive queue full");
                apogee_throttle::throttled_warn!(
                    FULL,
                    q,
                    revive_queue = q,
                    open = MAX_OPEN,
                    "too many open pop checkpoints; reading of the revive queue paused"
                );
                off = ro;
                break 'read;
            }
            read += 1;
            let Ok(m) = stored::check_record(rec, false) else {
                continue;
            };
            st.last_ts = m.store_timestamp;
            match m.property(keys::TAGS) {
                Some(CK_TAG) => match serde_json::from_slice::<CheckPoint>(m.body) {
                    Ok(ck) => {
                        st.index.insert(ck_key(&ck), ro);
                        st.open.insert(
                            ro,
                            Open {
                                ck,
                                done: HashSet::new(),
                                revived: Vec::new(),
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(revive_queue = q, offset = ro, error = %e, "bad checkpoint skipped")
                    }
                },
                Some(ACK_TAG) | Some(BATCH_ACK_TAG) => {
                    match serde_json::from_slice::<AckMsg>(m.body) {
                        Ok(a) => {
                            let key = (
                                a.topic,
                                a.consumer_group,
                                a.queue_id,
                                a.start_offset,
                                a.pop_time,
                            );
                            // An ack of no open checkpoint is for one
                            // settled already (acks follow their checkpoint).
                            let Some(&at) = st.index.get(&key) else {
                                continue;
                            };
                            let Some(open) = st.open.get_mut(&at) else {
                                continue;
                            };
                            match a.ack_offset_list {
                                Some(list) => open.done.extend(list),
                                None => {
                                    open.done.insert(a.ack_offset);
                                }
                            }
                            if open.finished() && open.revived.is_empty() {
                                st.open.remove(&at);
                                st.index.remove(&key);
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
    st.scanned = off;
    read
}

/// The time before which a checkpoint's revive time (plus the margin) must
/// lie for it to be revived by a pass that started at `now` and read up
/// to a record stored at `last_ts`. When the pass stopped before the end
/// of the queue (`truncated`), acks stored after `last_ts` were not read:
/// only checkpoints due before then are safe.
pub fn revive_cutoff(now: i64, last_ts: i64, truncated: bool) -> i64 {
    let t = if truncated { now.min(last_ts) } else { now };
    t.saturating_sub(REVIVE_MARGIN_MS)
}

/// One pass over revive queue `q`.
pub async fn revive_queue(ctx: &Arc<BrokerContext>, q: i32) -> Result<Pass, PopError> {
    // The time first, the end of the queue after: every ack stored before
    // `now` is below `max` and read by this pass.
    let now = now_ms();
    let rt = revive_topic(&ctx.config.broker_cluster_name);
    let min = ctx.store.min_offset(&rt, q);
    let max = ctx.store.max_offset(&rt, q);
    let start = ctx
        .offsets
        .query(REVIVE_GROUP, &rt, q)
        .unwrap_or(min)
        .max(min);
    let Some(mut taken) = ctx.pop_revive.take(q) else {
        return Ok(Pass::default());
    };
    let mut st = taken.state.take().unwrap_or_default();
    if st.scanned < start || st.scanned > max {
        // First pass, or the saved progress moved (reset, retention):
        // read again from it.
        st = QueueState {
            scanned: start,
            ..Default::default()
        };
    }
    let end = max.min(st.scanned.saturating_add(MAX_PER_PASS));
    let c = Arc::clone(ctx);
    let rt2 = rt.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let r = scan(&c, &rt2, q, &mut st, end);
        (st, r)
    })
    .await;
    let (mut st, read) = match joined {
        Ok(v) => v,
        // The state is lost with the thread: the next pass reads again
        // from the saved progress.
        Err(e) => return Err(PopError::Scan(e.to_string())),
    };
    let cutoff = revive_cutoff(now, st.last_ts, st.scanned < max);
    let mut pass = Pass {
        revived: 0,
        scanned: read,
    };
    let result = revive_due(ctx, q, &mut st, cutoff, &mut pass).await;
    let progress = st.open.keys().next().copied().unwrap_or(st.scanned);
    if progress > start {
        ctx.offsets.commit(REVIVE_GROUP, &rt, q, progress);
    }
    ctx.pop_revive.set_inflight(q, &st);
    taken.state = Some(st);
    result.map(|()| pass)
}

/// Revives the due open checkpoints, oldest first.
async fn revive_due(
    ctx: &BrokerContext,
    q: i32,
    st: &mut QueueState,
    cutoff: i64,
    pass: &mut Pass,
) -> Result<(), PopError> {
    let due: Vec<i64> = st
        .open
        .iter()
        .filter(|(_, o)| o.ck.revive_time() < cutoff)
        .map(|(&ro, _)| ro)
        .collect();
    let mut unreadable = None;
    'cks: for ro in due {
        let Some(open) = st.open.get_mut(&ro) else {
            continue;
        };
        for i in 0..usize::from(open.ck.num) {
            let qo = open.ck.offset_at(i);
            if open.done.contains(&qo) {
                continue;
            }
            match revive_one(ctx, &open.ck, qo).await {
                Ok(true) => pass.revived += 1,
                Ok(false) => {}
                // This checkpoint stays open (and holds the saved
                // progress); later ones are still revived.
                Err(e @ PopError::ReviveRead { .. }) => {
                    unreadable.get_or_insert(e);
                    continue 'cks;
                }
                // A failing store fails the rest too: stop the pass.
                Err(e) => return Err(e),
            }
            open.done.insert(qo);
            open.revived.push(qo);
        }
        // An older open checkpoint holds the saved progress back: a
        // restart reads this one again, so record what was revived.
        let older_open = st.open.range(..ro).next().is_some();
        if let Some(open) = st.open.get(&ro) {
            if older_open && !open.revived.is_empty() {
                settle(ctx, q, &open.ck, open.revived.clone()).await?;
            }
        }
        if let Some(open) = st.open.remove(&ro) {
            st.index.remove(&ck_key(&open.ck));
        }
    }
    unreadable.map_or(Ok(()), Err)
}

/// After a restart, raises each group's POP offset on a queue to the end
/// of its newest checkpoint in the revive topic (and to what orderly acks
/// committed, from the order table): consume offsets are
/// flushed every few seconds, checkpoints are in the store, so a kill
/// within that window must not hand out popped (and maybe acked) messages
/// again. Reads each revive queue from the revive progress (older
/// checkpoints are settled and their offsets were flushed with it).
pub async fn recover_pop_offsets(ctx: &Arc<BrokerContext>) {
    let c = Arc::clone(ctx);
    let r = tokio::task::spawn_blocking(move || {
        let rt = revive_topic(&c.config.broker_cluster_name);
        let mut ends: HashMap<(String, String, i32), i64> = HashMap::new();
        for q in 0..REVIVE_QUEUE_NUM {
            let min = c.store.min_offset(&rt, q);
            let max = c.store.max_offset(&rt, q);
            let mut off = c
                .offsets
                .query(REVIVE_GROUP, &rt, q)
                .unwrap_or(min)
                .max(min);
            while off < max {
                let r = c
                    .store
                    .get_messages(REVIVE_GROUP, &rt, q, off, BATCH, usize::MAX, None);
                if r.messages.is_empty() {
                    if r.next_begin_offset > off {
                        off = r.next_begin_offset;
                        continue;
                    }
                    break;
                }
                for rec in &r.messages {
                    let Ok(m) = stored::check_record(rec, false) else {
                        continue;
                    };
                    if m.property(keys::TAGS) != Some(CK_TAG) {
                        continue;
                    }
                    let Ok(ck) = serde_json::from_slice::<CheckPoint>(m.body) else {
                        continue;
                    };
                    let Some(last) = usize::from(ck.num).checked_sub(1) else {
                        continue;
                    };
                    let end = ck.offset_at(last).saturating_add(1);
                    let e = ends.entry((ck.cid, ck.topic, ck.queue_id)).or_insert(end);
                    *e = (*e).max(end);
                }
                off = r.next_begin_offset.max(off + 1);
            }
        }
        // Orderly acks record their offsets in the order table at once.
        for (group, topic, q, o) in c.pop_order.committed() {
            let e = ends.entry((group, topic, q)).or_insert(o);
            *e = (*e).max(o);
        }
        let mut raised = 0usize;
        for ((group, topic, q), end) in ends {
            if c.offsets.query(&group, &topic, q).is_none_or(|o| o < end) {
                c.offsets.commit(&group, &topic, q, end);
                raised += 1;
            }
        }
        raised
    })
    .await;
    match r {
        Ok(0) => {}
        Ok(n) => tracing::info!(queues = n, "pop offsets raised to their newest checkpoints"),
        Err(e) => tracing::warn!(error = %e, "pop offset recovery failed"),
    }
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

/// Writes the message at `qo` of the checkpoint's queue to the retry topic
/// or the DLQ. `Ok(false)` when the message or its group is gone.
async fn revive_one(ctx: &BrokerContext, ck: &CheckPoint, qo: i64) -> Result<bool, PopError> {
    if ctx.topics.get(&ck.topic).is_none() {
        tracing::info!(topic = %ck.topic, offset = qo, "pop message of a deleted topic dropped");
        return Ok(false);
    }
    let r = ctx.store.get_messages(
        REVIVE_GROUP,
        &ck.topic,
        ck.queue_id,
        qo,
        1,
        usize::MAX,
        None,
    );
    let gone_or = |why: &'static str| {
        // Only a message below the queue's first offset is gone
        // (retention); anything else is retried by the next pass.
        if qo < ctx.store.min_offset(&ck.topic, ck.queue_id) {
            Ok(false)
        } else {
            Err(PopError::ReviveRead {
                topic: ck.topic.clone(),
                queue_id: ck.queue_id,
                offset: qo,
                why,
            })
        }
    };
    let (Some(rec), Some(&got)) = (r.messages.first(), r.queue_offsets.first()) else {
        return gone_or("no message at the offset");
    };
    if got != qo {
        return gone_or("the store returned another offset");
    }
    let info = match stored::check_record(rec, false) {
        Ok(i) => i,
        Err(_) => return gone_or("the stored record does not decode"),
    };
    let group = ck.cid.as_str();
    // A deleted group or topic is not created again by the revive.
    let Some(gc) = ctx.groups.get(group) else {
        tracing::info!(group, topic = %ck.topic, offset = qo, "pop message of a deleted group dropped");
        return Ok(false);
    };
    let max_times = gc.retry_max_times;
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
        m.topic = if ctx.config.enable_retry_topic_v2 {
            retry_topic_v2(&ck.topic, group)
        } else {
            retry_topic_v1(&ck.topic, group)
        };
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
    // Waited for under SYNC_FLUSH: the revive progress moves past the
    // checkpoint only once the revived copy is durable.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_pass_only_revives_what_its_acks_cover() {
        assert_eq!(
            revive_cutoff(10_000, 9_000, false),
            10_000 - REVIVE_MARGIN_MS
        );
        assert_eq!(revive_cutoff(10_000, 6_000, true), 6_000 - REVIVE_MARGIN_MS);
        assert_eq!(revive_cutoff(10_000, 0, true), -REVIVE_MARGIN_MS);
        assert_eq!(revive_cutoff(i64::MIN, 0, false), i64::MIN);
    }
}
