//! Transactional messages, with Apache RocketMQ's on-disk state so that the
//! store alone is the state and a restart (kill -9 included) resumes it:
//!
//! * A half message (sysFlag TRANSACTION_PREPARED_TYPE or property
//!   `TRAN_MSG=true`) is stored in `RMQ_SYS_TRANS_HALF_TOPIC` queue 0 with
//!   its destination in `REAL_TOPIC` / `REAL_QID` and its transaction bits
//!   cleared, so it is queued there and nowhere else: consumers never see it.
//! * END_TRANSACTION (37) commits — the message is written to its real topic
//!   with the COMMIT type and without `TRAN_MSG` / `REAL_*` — or rolls back;
//!   either way an op message (tag `d`, body = the half message's queue
//!   offset and a comma) goes to `RMQ_SYS_TRANS_OP_HALF_TOPIC` on the half
//!   message's queue id. An op message is the decision.
//! * The check service scans the half queue from the consume offset of
//!   `CID_RMQ_SYS_TRANS` every `transactionCheckInterval`: a half message
//!   without an op that is older than `transactionTimeOut` (or its
//!   `CHECK_IMMUNITY_TIME_IN_SECONDS`) is written again at the end of the
//!   half queue with `TRANSACTION_CHECK_TIMES` counted up, and the producer
//!   group (a live connection from its heartbeats) gets CHECK_TRANSACTION_STATE
//!   (39, one-way) for that copy; after `transactionCheckMax` checks it goes
//!   to `TRANS_CHECK_MAX_TIME_TOPIC`. The scan's progress is the group's
//!   consume offsets on both system topics.
//!
//! Every half-queue offset the scan settles gets an op message too — the
//! checked copy supersedes it, a discarded one is gone — so the op topic
//! alone says what is still open, and a restart from an older consume
//! offset re-asks nothing.
//!
//! A transaction is identified by its **origin**: the CommitLog offset of
//! its first half message. Every copy the check service writes carries it in
//! [`HALF_ORIGIN`] (an existing stamp is kept), and so does the committed
//! message. UNIQ_KEY alone is not an identity: two producers may reuse one.
//!
//! A commit writes the real message before its op message. If the broker
//! dies between the two, the half message is checked again later; before
//! asking (and before a commit that answers a check) the real topic's
//! UNIQ_KEY index is consulted for a committed message with the same origin.
//! Within one broker run, [`RecentOrigins`] (taken before the store write)
//! also covers concurrent END_TRANSACTIONs and the index lagging the append,
//! so the message is never committed twice. Across a crash the index is the
//! only record: with `messageIndexEnable=false` a commit that lost its op
//! message may be delivered twice (a warning says so at start).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{CheckTransactionStateRequestHeader, EndTransactionRequestHeader};
use apogee_protocol::message::stored::{self, MessageToStore, RecordInfo};
use apogee_protocol::message::{id, keys, properties, sysflag};
use apogee_protocol::{topic, RemotingCommand};
use apogee_remoting::{processor_fn, ProcessorRegistry, RequestContext};
use apogee_store::{GetStatus, MessageStore};
use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::BrokerContext;
use crate::processor::send::{store_message, store_messages, Reject};
use crate::processor::{bad_header, error_response, success};
use crate::schedule::now_ms;

/// Half messages live in queue 0 of the half topic (Apache uses one queue).
pub const HALF_QUEUE_ID: i32 = 0;
/// Tag of op messages that record a decision.
pub const OP_REMOVE_TAG: &str = "d";
/// Separator after each half-queue offset in an op message body.
pub const OP_OFFSET_SEPARATOR: char = ',';
/// Consumer group whose offsets record the check service's progress.
pub const CHECK_GROUP: &str = topic::CID_SYS_RMQ_TRANS;
/// Op messages read per store call during a check pass.
const OP_BATCH: usize = 256;
/// Property carrying a transaction's origin — the CommitLog offset of its
/// first half message — on half-message copies and on the committed message.
/// Apache's copies only carry `TRAN_PREPARED_QUEUE_OFFSET`, and only for
/// immune re-queues; a queue offset is not enough once the half queue was
/// truncated, so Apogee uses its own key.
pub const HALF_ORIGIN: &str = "APOGEE_TRAN_ORIGIN";
/// Origins [`RecentOrigins`] remembers by default.
pub const RECENT_ORIGINS_CAPACITY: usize = 65_536;
/// Committed messages sharing a UNIQ_KEY looked at when searching a commit.
const UNIQ_LOOKUP_MAX: usize = 64;
/// Most half messages examined in one pass (the next pass goes on).
const MAX_HALF_PER_PASS: usize = 100_000;
/// Most op-message batches read in one pass: a half offset that cannot
/// advance (a failing store write) must not make every pass re-read an
/// ever-growing op backlog. A pass that hit this limit settles only what
/// the ops it read decide and stops at the first message needing action.
const MAX_OP_BATCHES_PER_PASS: usize = 64;

/// Why a transactional step failed (logged; the client sees a response code).
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error("storing {what} failed: {source}")]
    Store {
        what: &'static str,
        #[source]
        source: apogee_store::PutError,
    },
    #[error("the half message at CommitLog offset {0} does not decode")]
    BadHalf(i64),
    #[error("the half message has no valid {0} property")]
    MissingProperty(&'static str),
    #[error("a blocking store read did not complete: {0}")]
    Blocking(#[from] tokio::task::JoinError),
}

/// Runs a synchronous store read off the async workers (as the admin
/// processors do): page faults on a cold CommitLog must not stall them.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TransactionError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// Whether a send is a half message: the prepared transaction type in the
/// sysFlag, or `TRAN_MSG=true` (what the clients set).
pub fn is_prepared(sys_flag: i32, props: &str) -> bool {
    sysflag::transaction_value(sys_flag) == sysflag::TRANSACTION_PREPARED_TYPE
        || properties::get(props, keys::TRANSACTION_PREPARED)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Refuses half messages when `rejectTransactionMessage` is set.
pub fn check_accepted(ctx: &BrokerContext) -> Result<(), Reject> {
    if ctx.runtime_config.read().reject_transaction_message {
        return Err(Reject::new(
            response_code::NO_PERMISSION,
            format!(
                "the broker[{}] sending transaction message is forbidden",
                ctx.broker_addr
            ),
        ));
    }
    Ok(())
}

/// Turns a client's message into its half message: destination into
/// `REAL_TOPIC` / `REAL_QID`, the transaction id (its UNIQ_KEY) into
/// `__transactionId__`, transaction bits cleared so the half topic queues it.
pub fn to_half(msg: &mut MessageToStore) {
    let mut props = std::mem::take(&mut msg.properties);
    if let Some(uniq) = properties::get(&props, keys::UNIQ_KEY).map(str::to_owned) {
        props = properties::set(&props, keys::TRANSACTION_ID, &uniq);
    }
    props = properties::set(&props, keys::REAL_TOPIC, &msg.topic);
    props = properties::set(&props, keys::REAL_QUEUE_ID, &msg.queue_id.to_string());
    msg.properties = props;
    msg.sys_flag = sysflag::reset_transaction_value(msg.sys_flag, sysflag::TRANSACTION_NOT_TYPE);
    msg.topic = topic::RMQ_SYS_TRANS_HALF_TOPIC.to_owned();
    msg.queue_id = HALF_QUEUE_ID;
}

/// Registers END_TRANSACTION.
pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    let c = Arc::clone(ctx);
    registry.register(
        request_code::END_TRANSACTION,
        processor_fn(move |rc, req| {
            let ctx = Arc::clone(&c);
            async move { Ok(end_transaction(&ctx, &rc, &req).await) }
        }),
    );
}

/// Creates the system topics' configs (so admin tools list them).
pub fn create_system_topics(ctx: &BrokerContext) {
    use apogee_protocol::flags::PermName;
    for t in [
        topic::RMQ_SYS_TRANS_HALF_TOPIC,
        topic::RMQ_SYS_TRANS_OP_HALF_TOPIC,
    ] {
        ctx.topics
            .get_or_create_system(t, 1, PermName::PERM_READ | PermName::PERM_WRITE, 0);
    }
}

/// END_TRANSACTION: commit or roll back the half message the header names.
/// `None` (no answer) for UNKNOWN, as Apache.
pub async fn end_transaction(
    ctx: &BrokerContext,
    rc: &RequestContext,
    req: &RemotingCommand,
) -> Option<RemotingCommand> {
    let h: EndTransactionRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return Some(bad_header(req.code, &e)),
    };
    if !ctx.config.is_master() {
        return Some(error_response(
            response_code::SLAVE_NOT_AVAILABLE,
            "this broker is a slave: end transaction is forbidden",
        ));
    }
    let commit = match h.commit_or_rollback {
        sysflag::TRANSACTION_COMMIT_TYPE => true,
        sysflag::TRANSACTION_ROLLBACK_TYPE => false,
        other => {
            // UNKNOWN (0): the check service asks again later.
            tracing::debug!(peer = %rc.peer_addr(), group = %h.producer_group,
                state = other, from_check = h.from_transaction_check,
                "transaction still pending");
            return None;
        }
    };
    Some(match decide(ctx, &h, commit).await {
        Ok(()) => success(),
        Err(r) => error_response(r.code, r.remark),
    })
}

async fn decide(
    ctx: &BrokerContext,
    h: &EndTransactionRequestHeader,
    commit: bool,
) -> Result<(), Reject> {
    let store = Arc::clone(&ctx.store);
    let phys = h.commit_log_offset;
    let rec = blocking(move || store.look_message_by_offset(phys))
        .await
        .map_err(|e| Reject::new(response_code::SYSTEM_ERROR, e.to_string()))?;
    let Some(rec) = rec else {
        return Err(Reject::new(
            response_code::SYSTEM_ERROR,
            "Find prepared transaction message failed",
        ));
    };
    let half = stored::check_record(&rec, false).map_err(|_| {
        Reject::new(
            response_code::SYSTEM_ERROR,
            "Find prepared transaction message failed",
        )
    })?;
    if half.topic != topic::RMQ_SYS_TRANS_HALF_TOPIC {
        return Err(Reject::new(
            response_code::SYSTEM_ERROR,
            format!(
                "the message at commitLogOffset {} is not a half message",
                h.commit_log_offset
            ),
        ));
    }
    if !h.from_transaction_check && immunity_passed(ctx, &half) {
        // The producer decided after its own check-immunity time: the check
        // service owns this message now (Apache's rule).
        return Err(Reject::new(
            response_code::ILLEGAL_OPERATION,
            "the transaction was decided after its CHECK_IMMUNITY_TIME_IN_SECONDS; it will be checked",
        ));
    }
    if half.property(keys::PRODUCER_GROUP) != Some(h.producer_group.as_str()) {
        return Err(Reject::new(
            response_code::SYSTEM_ERROR,
            "The producer group wrong",
        ));
    }
    if half.queue_offset != h.tran_state_table_offset {
        return Err(Reject::new(
            response_code::SYSTEM_ERROR,
            "The transaction state table offset wrong",
        ));
    }
    if half.physical_offset != h.commit_log_offset {
        return Err(Reject::new(
            response_code::SYSTEM_ERROR,
            "The commit log offset wrong",
        ));
    }
    if commit {
        let origin = origin_of(&half);
        // Taken before the store write: a second END_TRANSACTION for the
        // same transaction, racing this one or arriving before the index
        // has the commit, sees it here.
        let guard = match ctx.tx_origins.begin(origin) {
            Begin::Started(g) => Some(g),
            Begin::Committed => None,
            Begin::InProgress => {
                return Err(Reject::new(
                    response_code::SYSTEM_ERROR,
                    "the transaction is being committed by another request",
                ))
            }
        };
        if let Some(guard) = guard {
            // A half message old enough to have been checked may already be
            // committed: through its checked copy (a late END_TRANSACTION of
            // the original, or a second answer), or just before a crash that
            // left the op message unwritten. A fresh one cannot, and skips
            // the lookup.
            let timeout = ms_i64(ctx.runtime_config.read().transaction_timeout);
            let may_be_done =
                h.from_transaction_check || age_ms(now_ms(), half.store_timestamp) > timeout;
            let found = if may_be_done {
                already_committed(ctx, &half)
                    .await
                    .map_err(|e| Reject::new(response_code::SYSTEM_ERROR, e.to_string()))?
            } else {
                false
            };
            if !found {
                let msg = committed_message(&half, h.commit_log_offset)
                    .map_err(|e| Reject::new(response_code::SYSTEM_ERROR, e.to_string()))?;
                store_message(ctx, msg)
                    .await
                    .map_err(|e| crate::processor::send::store_error_reject(ctx, &e))?;
            }
            guard.committed();
        }
    }
    write_op(ctx, half.queue_id, half.queue_offset)
        .await
        .map_err(|e| Reject::new(response_code::SYSTEM_ERROR, e.to_string()))
}

/// Apache's `rejectCommitOrRollback`: with `CHECK_IMMUNITY_TIME_IN_SECONDS`,
/// a producer's own decision arriving after that time is refused.
fn immunity_passed(ctx: &BrokerContext, half: &RecordInfo<'_>) -> bool {
    let Some(s) = half.property(keys::CHECK_IMMUNITY_TIME_IN_SECONDS) else {
        return false;
    };
    let timeout = ms_i64(ctx.runtime_config.read().transaction_timeout);
    age_ms(now_ms(), half.born_timestamp) > immunity_ms(s, timeout)
}

/// `now - born`, saturating: `born` comes from the client and may be any
/// i64, and an overflow panic in the check loop would end it for good.
fn age_ms(now: i64, born: i64) -> i64 {
    now.saturating_sub(born)
}

/// The check-immunity time of a message: its property in seconds, at least
/// the transaction timeout.
fn immunity_ms(prop: &str, timeout_ms: i64) -> i64 {
    prop.trim()
        .parse::<i64>()
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .unwrap_or(0)
        .max(timeout_ms)
}

fn ms_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The message a commit writes: the half message back in its real topic and
/// queue, COMMIT type, without `TRAN_MSG`, `REAL_TOPIC` and `REAL_QID`.
fn committed_message(
    half: &RecordInfo<'_>,
    half_phys: i64,
) -> Result<MessageToStore, TransactionError> {
    let real_topic = half
        .property(keys::REAL_TOPIC)
        .filter(|t| !t.is_empty())
        .ok_or(TransactionError::MissingProperty(keys::REAL_TOPIC))?
        .to_owned();
    let real_queue = half
        .property(keys::REAL_QUEUE_ID)
        .and_then(|q| q.trim().parse::<i32>().ok())
        .ok_or(TransactionError::MissingProperty(keys::REAL_QUEUE_ID))?;
    let mut msg = half.to_message_to_store();
    let mut props = properties::remove(&msg.properties, keys::REAL_TOPIC);
    props = properties::remove(&props, keys::REAL_QUEUE_ID);
    props = properties::remove(&props, keys::TRANSACTION_PREPARED);
    msg.properties = properties::set(&props, HALF_ORIGIN, &origin_of(half).to_string());
    msg.topic = real_topic;
    msg.queue_id = real_queue;
    msg.sys_flag =
        sysflag::reset_transaction_value(half.sys_flag, sysflag::TRANSACTION_COMMIT_TYPE);
    msg.prepared_transaction_offset = half_phys;
    msg.tags_code = msg.tags_code_from_properties();
    Ok(msg)
}

/// The origin of a half message: its [`HALF_ORIGIN`] stamp, or (the first
/// half message of its transaction) its own CommitLog offset.
fn origin_of(half: &RecordInfo<'_>) -> i64 {
    half.property(HALF_ORIGIN)
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(half.physical_offset)
}

/// Stamps a copy of `half` with its origin unless it has one.
fn stamp_origin(copy: &mut MessageToStore, half: &RecordInfo<'_>) {
    if properties::get(&copy.properties, HALF_ORIGIN).is_none() {
        copy.properties = properties::set(
            &copy.properties,
            HALF_ORIGIN,
            &half.physical_offset.to_string(),
        );
    }
}

/// Whether this transaction is already committed: recently by this broker
/// ([`RecentOrigins`]), or found in the real topic's UNIQ_KEY index with the
/// same origin. A committed message without an origin (written before
/// Apogee stamped them) matches on UNIQ_KEY alone.
async fn already_committed(
    ctx: &BrokerContext,
    half: &RecordInfo<'_>,
) -> Result<bool, TransactionError> {
    let origin = origin_of(half);
    if ctx.tx_origins.is_committed(origin) {
        return Ok(true);
    }
    let (Some(real), Some(uniq)) = (
        half.property(keys::REAL_TOPIC).map(str::to_owned),
        half.property(keys::UNIQ_KEY).map(str::to_owned),
    ) else {
        return Ok(false);
    };
    let store = Arc::clone(&ctx.store);
    blocking(move || {
        let r = store.query_by_unique_key(&real, &uniq, UNIQ_LOOKUP_MAX, 0, i64::MAX);
        r.messages.iter().any(|rec| {
            stored::check_record(rec, false).is_ok_and(|m| {
                m.topic == real
                    && sysflag::transaction_value(m.sys_flag) == sysflag::TRANSACTION_COMMIT_TYPE
                    && m.property(keys::UNIQ_KEY) == Some(uniq.as_str())
                    && m.property(HALF_ORIGIN)
                        .is_none_or(|o| o.trim().parse::<i64>().ok() == Some(origin))
            })
        })
    })
    .await
}

/// What [`RecentOrigins::begin`] found.
pub enum Begin<'a> {
    /// Nobody else is committing it; commit, then call
    /// [`OriginGuard::committed`] (dropping the guard forgets the attempt).
    Started(OriginGuard<'a>),
    /// Committed by this broker recently: only the op message is missing.
    Committed,
    /// Another request is committing it right now.
    InProgress,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OriginState {
    Deciding,
    Committed,
}

/// Bounded memory of transaction origins being committed or committed
/// recently (oldest forgotten first), for this broker run only.
pub struct RecentOrigins {
    inner: parking_lot::Mutex<OriginsInner>,
    capacity: usize,
}

struct OriginsInner {
    state: HashMap<i64, OriginState>,
    order: std::collections::VecDeque<i64>,
}

impl RecentOrigins {
    pub fn new(capacity: usize) -> Self {
        RecentOrigins {
            inner: parking_lot::Mutex::new(OriginsInner {
                state: HashMap::new(),
                order: std::collections::VecDeque::new(),
            }),
            capacity: capacity.max(1),
        }
    }

    /// Claims `origin` for a commit.
    pub fn begin(&self, origin: i64) -> Begin<'_> {
        let mut g = self.inner.lock();
        match g.state.get(&origin) {
            Some(OriginState::Committed) => return Begin::Committed,
            Some(OriginState::Deciding) => return Begin::InProgress,
            None => {}
        }
        while g.order.len() >= self.capacity {
            let Some(old) = g.order.pop_front() else {
                break;
            };
            g.state.remove(&old);
        }
        g.state.insert(origin, OriginState::Deciding);
        g.order.push_back(origin);
        Begin::Started(OriginGuard {
            set: self,
            origin,
            done: false,
        })
    }

    pub fn is_committed(&self, origin: i64) -> bool {
        self.inner.lock().state.get(&origin) == Some(&OriginState::Committed)
    }
}

/// An origin claimed for a commit; forgotten on drop unless committed (a
/// failed or cancelled attempt must not block the next one).
pub struct OriginGuard<'a> {
    set: &'a RecentOrigins,
    origin: i64,
    done: bool,
}

impl OriginGuard<'_> {
    pub fn committed(mut self) {
        self.done = true;
        if let Some(s) = self.set.inner.lock().state.get_mut(&self.origin) {
            *s = OriginState::Committed;
        }
    }
}

impl Drop for OriginGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut g = self.set.inner.lock();
        if g.state.get(&self.origin) == Some(&OriginState::Deciding) {
            g.state.remove(&self.origin);
            // Its `order` entry stays until evicted; a stale entry only
            // makes eviction come early, never wrong.
        }
    }
}

/// Records a decision on the half message at `half_offset` of `half_queue`.
async fn write_op(
    ctx: &BrokerContext,
    half_queue: i32,
    half_offset: i64,
) -> Result<(), TransactionError> {
    let mut props = String::new();
    properties::append(&mut props, keys::TAGS, OP_REMOVE_TAG);
    properties::append(&mut props, keys::WAIT_STORE_MSG_OK, "false");
    let mut msg = MessageToStore {
        topic: topic::RMQ_SYS_TRANS_OP_HALF_TOPIC.to_owned(),
        queue_id: half_queue,
        flag: 0,
        body: Bytes::from(format!("{half_offset}{OP_OFFSET_SEPARATOR}")),
        properties: props,
        sys_flag: 0,
        born_timestamp: now_ms(),
        born_host: ctx.store_host,
        store_host: ctx.store_host,
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        tags_code: 0,
    };
    msg.tags_code = msg.tags_code_from_properties();
    put_as_is(ctx, msg)
        .await
        .map(|_| ())
        .map_err(|source| TransactionError::Store {
            what: "the transaction op message",
            source,
        })
}

/// Stores a broker-made bookkeeping record exactly as built: no delay or
/// timer property may move a half copy, op or discarded message elsewhere.
async fn put_as_is(
    ctx: &BrokerContext,
    msg: MessageToStore,
) -> Result<apogee_store::PutResult, apogee_store::PutError> {
    store_messages(ctx, vec![msg]).await
}

// ---- check-back ----------------------------------------------------------

/// Runs the check pass every `transactionCheckInterval` until `stop`.
pub fn spawn_check_loop(
    ctx: Arc<BrokerContext>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    if !ctx.config.store.message_index_enable {
        tracing::warn!(
            "messageIndexEnable=false: a transaction commit interrupted by a crash \
             (real message stored, op message not) cannot be found after restart \
             and may be delivered twice"
        );
    }
    tokio::spawn(async move {
        loop {
            let interval = ctx.runtime_config.read().transaction_check_interval;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
            if *stop.borrow() {
                return;
            }
            let stats = check_once(&ctx).await;
            if stats.checked + stats.discarded + stats.repaired > 0 {
                tracing::info!(
                    checked = stats.checked,
                    discarded = stats.discarded,
                    repaired = stats.repaired,
                    no_producer = stats.no_producer,
                    requeued = stats.requeued,
                    "transaction check pass"
                );
            }
        }
    })
}

/// What one check pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CheckStats {
    /// CHECK_TRANSACTION_STATE requests sent (or attempted).
    pub checked: usize,
    /// Half messages moved to TRANS_CHECK_MAX_TIME_TOPIC.
    pub discarded: usize,
    /// Half messages found committed without their op message (crash
    /// between the two writes); their op message was written.
    pub repaired: usize,
    /// Checks that found no live producer connection of the group.
    pub no_producer: usize,
    /// Half messages still within their CHECK_IMMUNITY_TIME_IN_SECONDS,
    /// moved to the end of the half queue.
    pub requeued: usize,
    /// Half-queue consume offset after the pass.
    pub half_offset: i64,
}

/// The decisions recorded from `op_offset` on: half offset → op offset,
/// the number of undecided references per op message, and the op messages
/// already fully behind `half_min`.
struct Ops {
    removed: HashMap<i64, i64>,
    pending: BTreeMap<i64, usize>,
    done: Vec<i64>,
    /// More op messages follow than this pass read.
    truncated: bool,
}

fn read_ops(store: &MessageStore, op_offset: i64, half_min: i64) -> Ops {
    let mut ops = Ops {
        removed: HashMap::new(),
        pending: BTreeMap::new(),
        done: Vec::new(),
        truncated: false,
    };
    let mut off = op_offset;
    for batch in 0.. {
        if batch == MAX_OP_BATCHES_PER_PASS {
            ops.truncated =
                off < store.max_offset(topic::RMQ_SYS_TRANS_OP_HALF_TOPIC, HALF_QUEUE_ID);
            break;
        }
        let r = store.get_messages(
            CHECK_GROUP,
            topic::RMQ_SYS_TRANS_OP_HALF_TOPIC,
            HALF_QUEUE_ID,
            off,
            OP_BATCH,
            usize::MAX,
            None,
        );
        if r.status != GetStatus::Found {
            break;
        }
        for (rec, &op_off) in r.messages.iter().zip(&r.queue_offsets) {
            let mut refs = 0;
            if let Ok(m) = stored::check_record(rec, false) {
                if m.property(keys::TAGS) == Some(OP_REMOVE_TAG) {
                    let body = String::from_utf8_lossy(m.body);
                    for half in body
                        .split(OP_OFFSET_SEPARATOR)
                        .filter_map(|s| s.trim().parse::<i64>().ok())
                        .filter(|&h| h >= half_min)
                    {
                        ops.removed.insert(half, op_off);
                        refs += 1;
                    }
                }
            }
            if refs == 0 {
                ops.done.push(op_off);
            } else {
                ops.pending.insert(op_off, refs);
            }
        }
        if r.next_begin_offset <= off {
            break;
        }
        off = r.next_begin_offset;
    }
    ops
}

/// Half messages waiting for a decision, for admin tools.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HalfCounts {
    /// Stored half messages neither committed nor rolled back (nor yet
    /// discarded by the check service).
    pub undecided: u64,
    /// Decisions left unread (more op messages than one pass reads): then
    /// `undecided` is an upper bound.
    pub upper_bound: bool,
}

/// Counts the undecided half messages: those past the check service's
/// progress that no op message settles. Blocking store reads.
pub fn half_counts(ctx: &BrokerContext) -> HalfCounts {
    let half_t = topic::RMQ_SYS_TRANS_HALF_TOPIC;
    let op_t = topic::RMQ_SYS_TRANS_OP_HALF_TOPIC;
    let half_min = ctx.store.min_offset(half_t, HALF_QUEUE_ID);
    let half_max = ctx.store.max_offset(half_t, HALF_QUEUE_ID);
    let start = ctx
        .offsets
        .query(CHECK_GROUP, half_t, HALF_QUEUE_ID)
        .unwrap_or(half_min)
        .max(half_min);
    if start >= half_max {
        return HalfCounts::default();
    }
    let op_start = ctx
        .offsets
        .query(CHECK_GROUP, op_t, HALF_QUEUE_ID)
        .unwrap_or(0)
        .max(ctx.store.min_offset(op_t, HALF_QUEUE_ID));
    let ops = read_ops(&ctx.store, op_start, start);
    let decided = ops
        .removed
        .keys()
        .filter(|&&h| h >= start && h < half_max)
        .count() as u64;
    HalfCounts {
        undecided: ((half_max - start) as u64).saturating_sub(decided),
        upper_bound: ops.truncated,
    }
}

/// The first op offset from `from` not yet fully decided.
fn next_op_offset(mut done: Vec<i64>, from: i64) -> i64 {
    done.sort_unstable();
    let mut next = from;
    for d in done {
        if d == next {
            next += 1;
        } else if d > next {
            break;
        }
    }
    next
}

/// Half messages read per blocking store call during a pass.
const HALF_BATCH: usize = 32;

/// Reads the half queue ahead in batches, off the async workers.
#[derive(Default)]
struct HalfReader {
    buf: std::collections::VecDeque<(i64, Bytes)>,
}

enum Fetched {
    Message(Bytes),
    /// Nothing at the offset asked; the queue goes on here.
    SkipTo(i64),
    End,
}

impl HalfReader {
    async fn get(&mut self, ctx: &BrokerContext, at: i64) -> Result<Fetched, TransactionError> {
        while self.buf.front().is_some_and(|(o, _)| *o < at) {
            self.buf.pop_front();
        }
        if self.buf.is_empty() {
            let store = Arc::clone(&ctx.store);
            let r = blocking(move || {
                store.get_messages(
                    CHECK_GROUP,
                    topic::RMQ_SYS_TRANS_HALF_TOPIC,
                    HALF_QUEUE_ID,
                    at,
                    HALF_BATCH,
                    usize::MAX,
                    None,
                )
            })
            .await?;
            if r.messages.is_empty() {
                return Ok(if r.next_begin_offset > at {
                    Fetched::SkipTo(r.next_begin_offset)
                } else {
                    Fetched::End
                });
            }
            self.buf.extend(r.queue_offsets.into_iter().zip(r.messages));
        }
        Ok(match self.buf.front() {
            Some((o, _)) if *o > at => Fetched::SkipTo(*o),
            Some(_) => match self.buf.pop_front() {
                Some((_, rec)) => Fetched::Message(rec),
                None => Fetched::End,
            },
            None => Fetched::End,
        })
    }
}

/// One pass over the half queue (Apache's `TransactionalMessageServiceImpl.check`).
pub async fn check_once(ctx: &BrokerContext) -> CheckStats {
    let mut stats = CheckStats::default();
    let half_t = topic::RMQ_SYS_TRANS_HALF_TOPIC;
    let op_t = topic::RMQ_SYS_TRANS_OP_HALF_TOPIC;
    let half_min = ctx.store.min_offset(half_t, HALF_QUEUE_ID);
    let half_max = ctx.store.max_offset(half_t, HALF_QUEUE_ID);
    let start = ctx
        .offsets
        .query(CHECK_GROUP, half_t, HALF_QUEUE_ID)
        .unwrap_or(half_min)
        .max(half_min);
    stats.half_offset = start;
    if start >= half_max {
        return stats;
    }
    let op_start = ctx
        .offsets
        .query(CHECK_GROUP, op_t, HALF_QUEUE_ID)
        .unwrap_or(0)
        .max(ctx.store.min_offset(op_t, HALF_QUEUE_ID));
    let store = Arc::clone(&ctx.store);
    let mut ops = match blocking(move || read_ops(&store, op_start, start)).await {
        Ok(ops) => ops,
        Err(e) => {
            tracing::warn!(error = %e, "reading transaction op messages failed; retried next pass");
            return stats;
        }
    };
    let mut reader = HalfReader::default();
    let (timeout, check_max, interval) = {
        let rc = ctx.runtime_config.read();
        (
            ms_i64(rc.transaction_timeout),
            rc.transaction_check_max,
            ms_i64(rc.transaction_check_interval),
        )
    };
    let immunity_cap = immunity_cap_ms(timeout, check_max, interval);
    let pass_start = now_ms();
    let mut i = start;
    let mut examined = 0usize;
    while i < half_max && examined < MAX_HALF_PER_PASS {
        examined += 1;
        if let Some(op) = ops.removed.remove(&i) {
            if let Some(n) = ops.pending.get_mut(&op) {
                *n -= 1;
                if *n == 0 {
                    ops.pending.remove(&op);
                    ops.done.push(op);
                }
            }
            i += 1;
            continue;
        }
        if ops.truncated {
            // Unread ops may decide this message: act on it next pass.
            break;
        }
        let rec = match reader.get(ctx, i).await {
            Ok(Fetched::Message(rec)) => rec,
            Ok(Fetched::SkipTo(next)) => {
                // Entries gone (retention): skip them.
                i = next;
                continue;
            }
            Ok(Fetched::End) => break,
            Err(e) => {
                tracing::warn!(error = %e, offset = i, "reading a half message failed; retried next pass");
                break;
            }
        };
        let Ok(half) = stored::check_record(&rec, false) else {
            static BAD: apogee_throttle::LogThrottle =
                apogee_throttle::LogThrottle::new("undecodable half message");
            apogee_throttle::throttled_warn!(
                BAD,
                0,
                offset = i,
                "half message does not decode; skipped"
            );
            i += 1;
            continue;
        };
        let times = half
            .property(keys::TRANSACTION_CHECK_TIMES)
            .map(|s| s.trim().parse::<i32>().unwrap_or(-1));
        if times.is_some_and(|t| t >= check_max) {
            match discard(ctx, &half).await {
                Ok(()) => stats.discarded += 1,
                Err(e) => {
                    tracing::warn!(error = %e, offset = i, "discarding a half message failed; retried next pass");
                    break;
                }
            }
            i += 1;
            continue;
        }
        if half.store_timestamp >= pass_start {
            break;
        }
        let age = age_ms(now_ms(), half.born_timestamp);
        match half.property(keys::CHECK_IMMUNITY_TIME_IN_SECONDS) {
            None if (0..=timeout).contains(&age) => {
                // Younger messages follow; the next pass looks again.
                break;
            }
            // A copy whose transaction this broker just committed (the
            // producer answered for an earlier copy) is settled below instead.
            Some(s)
                if (0..immunity_ms(s, timeout).min(immunity_cap)).contains(&age)
                    && !ctx.tx_origins.is_committed(origin_of(&half)) =>
            {
                // Its own immunity says "not yet", but messages after it may
                // be due: move it to the end of the queue and go on.
                if let Err(e) = requeue_immune(ctx, &half).await {
                    tracing::warn!(error = %e, offset = i, "re-queueing an immune half message failed; retried next pass");
                    break;
                }
                stats.requeued += 1;
                i += 1;
                continue;
            }
            _ => {}
        }
        let found = match already_committed(ctx, &half).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, offset = i, "looking up a commit failed; retried next pass");
                break;
            }
        };
        if found {
            if let Err(e) = write_op(ctx, half.queue_id, half.queue_offset).await {
                tracing::warn!(error = %e, "recording a found commit failed; retried next pass");
                break;
            }
            stats.repaired += 1;
            i += 1;
            continue;
        }
        let next_times = times.map_or(1, |t| t.max(0) + 1);
        match check_back(ctx, &half, next_times).await {
            Ok(sent) => {
                stats.checked += 1;
                if !sent {
                    stats.no_producer += 1;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, offset = i, "re-queueing a half message for its check failed; retried next pass");
                break;
            }
        }
        i += 1;
    }
    if i != start {
        ctx.offsets.commit(CHECK_GROUP, half_t, HALF_QUEUE_ID, i);
    }
    let op_next = next_op_offset(ops.done, op_start);
    if op_next != op_start {
        ctx.offsets
            .commit(CHECK_GROUP, op_t, HALF_QUEUE_ID, op_next);
    }
    stats.half_offset = i;
    stats
}

/// The longest CHECK_IMMUNITY_TIME_IN_SECONDS honoured: about the time a
/// message would take to use up its checks (at least the timeout). Apache
/// has no such bound; without it a huge immunity would be re-queued every
/// pass forever without ever counting towards `transactionCheckMax`.
fn immunity_cap_ms(timeout_ms: i64, check_max: i32, interval_ms: i64) -> i64 {
    interval_ms
        .saturating_mul(i64::from(check_max.max(1)))
        .max(timeout_ms)
}

/// Writes a half message that is still immune again at the end of the half
/// queue (check count unchanged) and records an op for its old offset.
/// The copy carries `TRAN_PREPARED_QUEUE_OFFSET` = the queue offset of the
/// first half message of the transaction (Apache's
/// `putImmunityMsgBackToHalfQueue`); an existing stamp is kept.
async fn requeue_immune(
    ctx: &BrokerContext,
    half: &RecordInfo<'_>,
) -> Result<(), TransactionError> {
    let mut copy = half.to_message_to_store();
    stamp_origin(&mut copy, half);
    if properties::get(&copy.properties, keys::TRANSACTION_PREPARED_QUEUE_OFFSET).is_none() {
        copy.properties = properties::set(
            &copy.properties,
            keys::TRANSACTION_PREPARED_QUEUE_OFFSET,
            &half.queue_offset.to_string(),
        );
    }
    put_as_is(ctx, copy)
        .await
        .map_err(|source| TransactionError::Store {
            what: "the immune half message",
            source,
        })?;
    write_op(ctx, half.queue_id, half.queue_offset).await
}

/// Writes the half message again at the end of the half queue with its
/// check count, then asks a producer of its group about that copy.
/// `Ok(false)`: no live producer connection (the copy waits for the next pass).
async fn check_back(
    ctx: &BrokerContext,
    half: &RecordInfo<'_>,
    times: i32,
) -> Result<bool, TransactionError> {
    let mut copy = half.to_message_to_store();
    stamp_origin(&mut copy, half);
    copy.properties = properties::set(
        &copy.properties,
        keys::TRANSACTION_CHECK_TIMES,
        &times.to_string(),
    );
    let put = put_as_is(ctx, copy.clone())
        .await
        .map_err(|source| TransactionError::Store {
            what: "the half message for its check",
            source,
        })?;
    // The copy supersedes this offset: recorded as an op so that a scan
    // restarting from an older consume offset (kill -9 before the offsets
    // were saved) does not check the transaction again.
    write_op(ctx, half.queue_id, half.queue_offset).await?;
    let group = half.property(keys::PRODUCER_GROUP).unwrap_or("");
    let Some(channel) = ctx.producers.any_channel(group) else {
        static NO_PRODUCER: apogee_throttle::LogThrottle =
            apogee_throttle::LogThrottle::new("no producer for transaction check");
        apogee_throttle::throttled_warn!(
            NO_PRODUCER,
            0,
            group,
            "transaction check: no live producer connection of the group"
        );
        return Ok(false);
    };
    let uniq = half.property(keys::UNIQ_KEY).map(str::to_owned);
    let header = CheckTransactionStateRequestHeader {
        topic: Some(topic::RMQ_SYS_TRANS_HALF_TOPIC.to_owned()),
        tran_state_table_offset: put.queue_offset,
        commit_log_offset: put.phys_offset,
        msg_id: uniq.clone(),
        transaction_id: uniq,
        offset_msg_id: Some(id::offset_msg_id(ctx.store_host, put.phys_offset)),
        rpc: apogee_protocol::header::RpcFields {
            broker_name: Some(ctx.config.broker_name.clone()),
            ..Default::default()
        },
    };
    let body = check_body(&copy, &put)?;
    let cmd = RemotingCommand::request(request_code::CHECK_TRANSACTION_STATE)
        .with_header(&header)
        .with_body(body);
    // Queued without waiting: a producer that does not read its socket must
    // not stall the scan. A dropped check is asked again: the copy stays
    // undecided and is checked on a later pass.
    if let Err(e) = channel.try_send_oneway(cmd) {
        static SEND_FAILED: apogee_throttle::LogThrottle =
            apogee_throttle::LogThrottle::new("transaction check send failed");
        apogee_throttle::throttled_warn!(
            SEND_FAILED,
            0,
            group,
            error = %e,
            "sending CHECK_TRANSACTION_STATE failed; asked again on a later pass"
        );
    }
    Ok(true)
}

/// The message a check carries: the stored copy, shown in its real topic
/// and queue (clients decode it as a stored record).
fn check_body(
    copy: &MessageToStore,
    put: &apogee_store::PutResult,
) -> Result<Bytes, TransactionError> {
    let mut m = copy.clone();
    if let Some(t) = properties::get(&copy.properties, keys::REAL_TOPIC) {
        m.topic = t.to_owned();
    }
    if let Some(q) = properties::get(&copy.properties, keys::REAL_QUEUE_ID)
        .and_then(|q| q.trim().parse::<i32>().ok())
    {
        m.queue_id = q;
    }
    let mut buf = BytesMut::new();
    stored::encode_stored(&m, &mut buf).map_err(|_| TransactionError::BadHalf(put.phys_offset))?;
    stored::patch_stored(
        &mut buf,
        put.queue_offset,
        put.phys_offset,
        put.store_timestamp,
    )
    .map_err(|_| TransactionError::BadHalf(put.phys_offset))?;
    Ok(buf.freeze())
}

/// Moves a half message checked `transactionCheckMax` times to
/// `TRANS_CHECK_MAX_TIME_TOPIC` (queue 0, properties kept).
async fn discard(ctx: &BrokerContext, half: &RecordInfo<'_>) -> Result<(), TransactionError> {
    use apogee_protocol::flags::PermName;
    let t = topic::RMQ_SYS_TRANS_CHECK_MAX_TIME_TOPIC;
    ctx.topics
        .get_or_create_system(t, 1, PermName::PERM_READ | PermName::PERM_WRITE, 0);
    let mut m = half.to_message_to_store();
    m.topic = t.to_owned();
    m.queue_id = 0;
    tracing::warn!(
        real_topic = half.property(keys::REAL_TOPIC).unwrap_or(""),
        uniq = half.property(keys::UNIQ_KEY).unwrap_or(""),
        "half message checked transactionCheckMax times: moved to {t}"
    );
    put_as_is(ctx, m)
        .await
        .map_err(|source| TransactionError::Store {
            what: "the discarded half message",
            source,
        })?;
    // Settled for good: never scanned again, whatever the saved offset.
    write_op(ctx, half.queue_id, half.queue_offset).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_message_rewrite() {
        let mut m = MessageToStore {
            topic: "Orders".into(),
            queue_id: 3,
            flag: 0,
            body: Bytes::from_static(b"x"),
            properties: "TRAN_MSG\u{1}true\u{2}PGROUP\u{1}P\u{2}UNIQ_KEY\u{1}U1\u{2}".into(),
            sys_flag: sysflag::TRANSACTION_PREPARED_TYPE,
            born_timestamp: 1,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            tags_code: 0,
        };
        assert!(is_prepared(m.sys_flag, &m.properties));
        assert!(is_prepared(0, &m.properties));
        assert!(!is_prepared(0, "TRAN_MSG\u{1}false\u{2}"));
        to_half(&mut m);
        assert_eq!(m.topic, topic::RMQ_SYS_TRANS_HALF_TOPIC);
        assert_eq!(m.queue_id, 0);
        assert!(sysflag::is_dispatchable(m.sys_flag));
        let p = |k| properties::get(&m.properties, k).map(str::to_owned);
        assert_eq!(p(keys::REAL_TOPIC).as_deref(), Some("Orders"));
        assert_eq!(p(keys::REAL_QUEUE_ID).as_deref(), Some("3"));
        assert_eq!(p(keys::TRANSACTION_ID).as_deref(), Some("U1"));

        // Commit: back to the real topic, COMMIT type, bookkeeping removed.
        let mut buf = BytesMut::new();
        stored::encode_stored(&m, &mut buf).unwrap();
        stored::patch_stored(&mut buf, 7, 4096, 5).unwrap();
        let half = stored::check_record(&buf, true).unwrap();
        let c = committed_message(&half, 4096).unwrap();
        assert_eq!((c.topic.as_str(), c.queue_id), ("Orders", 3));
        assert_eq!(
            sysflag::transaction_value(c.sys_flag),
            sysflag::TRANSACTION_COMMIT_TYPE
        );
        assert_eq!(c.prepared_transaction_offset, 4096);
        assert_eq!(properties::get(&c.properties, HALF_ORIGIN), Some("4096"));
        for k in [
            keys::REAL_TOPIC,
            keys::REAL_QUEUE_ID,
            keys::TRANSACTION_PREPARED,
        ] {
            assert_eq!(properties::get(&c.properties, k), None, "{k}");
        }
        assert_eq!(
            properties::get(&c.properties, keys::PRODUCER_GROUP),
            Some("P")
        );
    }

    #[test]
    fn op_offsets_advance_over_contiguous_decisions() {
        assert_eq!(next_op_offset(vec![], 5), 5);
        assert_eq!(next_op_offset(vec![6, 5, 7], 5), 8);
        assert_eq!(next_op_offset(vec![5, 7], 5), 6);
        assert_eq!(next_op_offset(vec![3, 4], 5), 5);
    }

    #[test]
    fn ages_saturate_on_extreme_born_timestamps() {
        assert_eq!(age_ms(1000, 400), 600);
        assert_eq!(age_ms(1000, i64::MIN), i64::MAX);
        assert_eq!(age_ms(1000, i64::MAX), 1000 - i64::MAX);
        assert_eq!(age_ms(-5, i64::MAX), i64::MIN);
    }

    #[test]
    fn recent_origins_claim_commit_forget_and_evict() {
        let set = RecentOrigins::new(2);
        let Begin::Started(g) = set.begin(10) else {
            panic!("fresh origin not started");
        };
        assert!(matches!(set.begin(10), Begin::InProgress));
        drop(g); // a failed attempt is forgotten
        let Begin::Started(g) = set.begin(10) else {
            panic!("a failed attempt blocked the next");
        };
        g.committed();
        assert!(matches!(set.begin(10), Begin::Committed));
        assert!(set.is_committed(10));
        for o in [11, 12] {
            if let Begin::Started(g) = set.begin(o) {
                g.committed();
            }
        }
        assert!(!set.is_committed(10), "the oldest is evicted");
        assert!(set.is_committed(11) && set.is_committed(12));
    }

    #[test]
    fn immunity_cap() {
        assert_eq!(immunity_cap_ms(6000, 15, 60_000), 900_000);
        assert_eq!(immunity_cap_ms(6000, 0, 10), 6000);
        assert_eq!(immunity_cap_ms(0, i32::MAX, i64::MAX), i64::MAX);
    }

    #[test]
    fn immunity_is_at_least_the_timeout() {
        assert_eq!(immunity_ms("10", 6000), 10_000);
        assert_eq!(immunity_ms("1", 6000), 6000);
        assert_eq!(immunity_ms("junk", 6000), 6000);
    }
}
