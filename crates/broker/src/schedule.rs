//! Delayed delivery: the 18 (configurable) delay levels, RocketMQ 5
//! any-time timers (`TIMER_DELIVER_MS` / `TIMER_DELAY_SEC` /
//! `TIMER_DELAY_MS`), and the service that delivers both from one persistent
//! timing wheel (`schedule/wheel.rs`).
//!
//! Design (one mechanism for levels and times):
//! 1. On send, [`ScheduleMessageService::try_transform`] parks a delayed
//!    message in the CommitLog under a system topic, keeping its destination
//!    in `REAL_TOPIC`/`REAL_QID`: delay levels go to `SCHEDULE_TOPIC_XXXX`
//!    queue `level - 1` (as Java, so tools see the usual layout), timers to
//!    `rmq_sys_wheel_timer` queue 0 with the absolute time in `TIMER_OUT_MS`.
//!    The CommitLog is the durable copy: the message survives `kill -9` as
//!    soon as the send is acknowledged.
//! 2. One thread tails those consume queues and files each message into the
//!    wheel: deliver time = store time + level delay, or `TIMER_OUT_MS`.
//!    The wheel holds only (CommitLog offset, size, time) on disk, chained
//!    per time slot; RAM holds the fixed slot array, whatever the number of
//!    pending messages.
//! 3. The same thread walks the wheel's cursor: when a slot's time span has
//!    fully passed, its chain is read and each message is rebuilt for its
//!    real topic/queue (DELAY, REAL_*, TIMER_* removed, WAIT=false, tags code
//!    from TAGS) and stored. Delivery is therefore never early and at most
//!    one slot (`timerPrecisionMs`, 100 ms) plus one poll late. Slots that
//!    lie in the future are never read.
//! 4. Progress (cursor, entries of the cursor slot already handled, tail
//!    offsets of the source queues) is checkpointed every second and on
//!    shutdown into `timer/checkpoint.json`, after the delivered messages are
//!    flushed. A clean restart delivers every pending message exactly once;
//!    after a crash, work since the last checkpoint is redone (at-least-once,
//!    as RocketMQ). Messages whose time passed while the broker was down are
//!    delivered at the first tick.

mod wheel;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apogee_protocol::code::response_code;
use apogee_protocol::message::{keys, properties, stored, sysflag, MessageToStore};
use apogee_protocol::topic::RMQ_SYS_SCHEDULE_TOPIC;
use apogee_store::{GetStatus, MessageStore, PutError};
use bytes::Bytes;
use parking_lot::Mutex;

pub use wheel::{TimerCheckpoint, TimerEntry, TimerIndex, WheelShape, ENTRY_SIZE};

use crate::config::BrokerConfig;
use crate::context::BrokerContext;
use crate::error::BrokerError;

/// Topic holding any-time (timer) messages until they are due (Java's
/// `TimerMessageStore.TIMER_TOPIC`).
pub const TIMER_TOPIC: &str = "rmq_sys_wheel_timer";

/// Java's `delayLevel2QueueId`.
pub fn delay_level_to_queue_id(level: i32) -> i32 {
    level - 1
}

/// Why a delay could not be scheduled, or the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// `messageDelayLevel` or a timer setting cannot be used.
    #[error("invalid delay configuration: {0}")]
    Config(String),
    /// The requested any-time delay is longer than `timerMaxDelaySec`.
    #[error(
        "timer message illegal: a delay of {delay_ms} ms is longer than the maximum of \
         {max_ms} ms (timerMaxDelaySec)"
    )]
    TimerTooFar { delay_ms: i64, max_ms: i64 },
    /// A DELAY or TIMER_* property is not a whole number.
    #[error("message illegal: property {name}={value:?} is not a whole number")]
    BadProperty { name: &'static str, value: String },
    /// Timers were sent while `timerWheelEnable` is false.
    #[error("accurate timer message is not enabled (timerWheelEnable=false)")]
    TimerDisabled,
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt timer file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] PutError),
}

impl ScheduleError {
    /// The response code a send answers with (Java maps the timer put
    /// statuses to MESSAGE_ILLEGAL).
    pub fn response_code(&self) -> i32 {
        match self {
            ScheduleError::TimerTooFar { .. }
            | ScheduleError::BadProperty { .. }
            | ScheduleError::TimerDisabled => response_code::MESSAGE_ILLEGAL,
            _ => response_code::SYSTEM_ERROR,
        }
    }
}

/// Settings of the delay service (from `BrokerConfig`).
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    /// Delay of each level in ms, level 1 first.
    pub levels_ms: Vec<u64>,
    /// Accept TIMER_* properties (`timerWheelEnable`).
    pub timer_enabled: bool,
    /// Longest accepted any-time delay in ms (`timerMaxDelaySec` × 1000).
    pub timer_max_delay_ms: i64,
    /// Slot width in ms (`timerPrecisionMs`).
    pub precision_ms: i64,
    /// How often progress is checkpointed (ms).
    pub flush_interval_ms: u64,
    /// Bytes per timer-log segment.
    pub log_segment_bytes: u64,
}

impl ScheduleSettings {
    /// Reads the keys `messageDelayLevel`, `timerWheelEnable`,
    /// `timerMaxDelaySec` and `timerPrecisionMs`.
    pub fn from_config(cfg: &BrokerConfig) -> Result<Self, ScheduleError> {
        let levels_ms = crate::config::parse_delay_levels(&cfg.message_delay_level)
            .map_err(|r| ScheduleError::Config(format!("messageDelayLevel: {r}")))?;
        Self::new(
            levels_ms,
            cfg.timer_wheel_enable,
            cfg.timer_max_delay_sec,
            cfg.timer_precision_ms,
        )
    }

    /// Settings from explicit values (tests, embedding).
    pub fn new(
        levels_ms: Vec<u64>,
        timer_enabled: bool,
        timer_max_delay_sec: u64,
        precision_ms: u64,
    ) -> Result<Self, ScheduleError> {
        if levels_ms.is_empty() {
            return Err(ScheduleError::Config("no delay levels given".into()));
        }
        if precision_ms == 0 || precision_ms > 60_000 {
            return Err(ScheduleError::Config(format!(
                "timerPrecisionMs must be in 1..=60000, got {precision_ms}"
            )));
        }
        Ok(ScheduleSettings {
            levels_ms,
            timer_enabled,
            timer_max_delay_ms: i64::try_from(timer_max_delay_sec.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            precision_ms: precision_ms as i64,
            flush_interval_ms: 1000,
            log_segment_bytes: 32 * 1024 * 1024,
        })
    }

    /// Wheel shape for a new index: the window covers the longest level (so
    /// level messages never roll) and at least 10 minutes; longer timers roll.
    pub fn wheel_shape(&self) -> WheelShape {
        let max_level = self.levels_ms.iter().copied().max().unwrap_or(0) as i64;
        let window = max_level.max(600_000) + 2 * self.precision_ms;
        let slots = (window / self.precision_ms + 1).clamp(16, 1 << 21);
        WheelShape {
            precision_ms: self.precision_ms,
            slots: slots as u32,
            segment_bytes: self.log_segment_bytes,
        }
    }
}

/// Counters and progress for admin/stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleProgress {
    /// Every slot before this time (ms) is delivered.
    pub cursor_ms: i64,
    /// Messages filed into the wheel since start.
    pub enqueued: u64,
    /// Messages delivered to their real topic since start.
    pub delivered: u64,
    /// Entries re-filed because their time lay beyond the wheel's window.
    pub rolled: u64,
    /// Entries dropped (original gone from the CommitLog, no REAL_TOPIC).
    pub dropped: u64,
    /// Messages not delivered because a recall marked them.
    pub recalled: u64,
    /// Timer entries read or written since start.
    pub entries_touched: u64,
    /// Next consume-queue offset to file, per source queue ("topic@queue").
    pub enqueue_offsets: BTreeMap<String, i64>,
}

#[derive(Default)]
struct Shared {
    cursor_ms: AtomicI64,
    enqueued: AtomicU64,
    delivered: AtomicU64,
    rolled: AtomicU64,
    dropped: AtomicU64,
    recalled: AtomicU64,
    touched: AtomicU64,
    offsets: Mutex<BTreeMap<String, i64>>,
}

struct Runner {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Delay levels and timers: transform on send, deliver when due.
pub struct ScheduleMessageService {
    settings: ScheduleSettings,
    shared: Arc<Shared>,
    runner: Mutex<Option<Runner>>,
}

/// Current wall-clock time in ms.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The delay-relevant properties of a message, found in one pass.
#[derive(Default)]
struct DelayProps<'a> {
    delay: Option<&'a str>,
    deliver_ms: Option<&'a str>,
    delay_sec: Option<&'a str>,
    delay_ms: Option<&'a str>,
    out_ms: bool,
}

fn delay_props(props: &str) -> DelayProps<'_> {
    let mut d = DelayProps::default();
    for (n, v) in properties::iter(props) {
        match n {
            keys::DELAY_TIME_LEVEL => d.delay = Some(v),
            keys::TIMER_DELIVER_MS => d.deliver_ms = Some(v),
            keys::TIMER_DELAY_SEC => d.delay_sec = Some(v),
            keys::TIMER_DELAY_MS => d.delay_ms = Some(v),
            keys::TIMER_OUT_MS => d.out_ms = true,
            _ => {}
        }
    }
    d
}

fn parse_num(name: &'static str, v: &str) -> Result<i64, ScheduleError> {
    v.trim()
        .parse::<i64>()
        .map_err(|_| ScheduleError::BadProperty {
            name,
            value: v.to_owned(),
        })
}

/// `props` without the pairs named in `drop`, then `add` appended.
fn rewrite_props(props: &str, drop: &[&str], add: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(props.len() + 48);
    for (n, v) in properties::iter(props) {
        if !drop.contains(&n) && !add.iter().any(|(a, _)| *a == n) {
            properties::append(&mut out, n, v);
        }
    }
    for (n, v) in add {
        properties::append(&mut out, n, v);
    }
    out
}

const TIMER_PROPS: [&str; 3] = [
    keys::TIMER_DELIVER_MS,
    keys::TIMER_DELAY_SEC,
    keys::TIMER_DELAY_MS,
];

impl ScheduleMessageService {
    /// Service configured from the broker config; nothing runs until
    /// [`ScheduleMessageService::start`].
    pub fn new(cfg: &BrokerConfig) -> Result<Self, BrokerError> {
        let settings = ScheduleSettings::from_config(cfg).map_err(|e| BrokerError::Config {
            key: "messageDelayLevel".into(),
            reason: e.to_string(),
        })?;
        Ok(Self::with_settings(settings))
    }

    pub fn with_settings(settings: ScheduleSettings) -> Self {
        ScheduleMessageService {
            settings,
            shared: Arc::new(Shared::default()),
            runner: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &ScheduleSettings {
        &self.settings
    }

    /// Number of delay levels (Java `maxDelayLevel`).
    pub fn delay_level_count(&self) -> usize {
        self.settings.levels_ms.len()
    }

    /// Delay of `level` (1-based) in ms.
    pub fn level_delay_ms(&self, level: i32) -> Option<u64> {
        let i = usize::try_from(level).ok()?.checked_sub(1)?;
        self.settings.levels_ms.get(i).copied()
    }

    /// Rewrites a delayed message for the schedule/timer topic; see the
    /// module docs. Returns Ok(false) for messages that are not delayed (or
    /// whose timer is already due, which are stored as they are, as Java
    /// does). Errors are send failures: timer too far, malformed property,
    /// timers disabled.
    pub fn try_transform(&self, msg: &mut MessageToStore) -> Result<bool, ScheduleError> {
        self.try_transform_at(msg, now_ms())
    }

    /// [`ScheduleMessageService::try_transform`] with an explicit clock.
    pub fn try_transform_at(
        &self,
        msg: &mut MessageToStore,
        now: i64,
    ) -> Result<bool, ScheduleError> {
        let tran = sysflag::transaction_value(msg.sys_flag);
        if tran != sysflag::TRANSACTION_NOT_TYPE && tran != sysflag::TRANSACTION_COMMIT_TYPE {
            return Ok(false);
        }
        if msg.topic == RMQ_SYS_SCHEDULE_TOPIC || msg.topic == TIMER_TOPIC {
            return Ok(false);
        }
        let d = delay_props(&msg.properties);
        let level = match d.delay {
            Some(v) => parse_num(keys::DELAY_TIME_LEVEL, v)?,
            None => 0,
        };
        let real_qid = msg.queue_id.to_string();
        if level > 0 {
            let max = self.delay_level_count() as i64;
            let level = level.min(max) as i32;
            let level_s = level.to_string();
            // A level wins over timer properties (Java clears them).
            let mut drop: Vec<&str> = TIMER_PROPS.to_vec();
            drop.push(keys::DELAY_TIME_LEVEL);
            msg.properties = rewrite_props(
                &msg.properties,
                &drop,
                &[
                    (keys::DELAY_TIME_LEVEL, &level_s),
                    (keys::REAL_TOPIC, &msg.topic),
                    (keys::REAL_QUEUE_ID, &real_qid),
                ],
            );
            let delay = self.level_delay_ms(level).unwrap_or(0) as i64;
            msg.tags_code = now.saturating_add(delay);
            msg.topic = RMQ_SYS_SCHEDULE_TOPIC.to_owned();
            msg.queue_id = delay_level_to_queue_id(level);
            return Ok(true);
        }
        if d.out_ms {
            return Ok(false);
        }
        let deliver_ms = if let Some(v) = d.delay_sec {
            now.saturating_add(parse_num(keys::TIMER_DELAY_SEC, v)?.saturating_mul(1000))
        } else if let Some(v) = d.delay_ms {
            now.saturating_add(parse_num(keys::TIMER_DELAY_MS, v)?)
        } else if let Some(v) = d.deliver_ms {
            parse_num(keys::TIMER_DELIVER_MS, v)?
        } else {
            return Ok(false);
        };
        if !self.settings.timer_enabled {
            return Err(ScheduleError::TimerDisabled);
        }
        if deliver_ms <= now {
            return Ok(false);
        }
        let delay_ms = deliver_ms - now;
        if delay_ms > self.settings.timer_max_delay_ms {
            return Err(ScheduleError::TimerTooFar {
                delay_ms,
                max_ms: self.settings.timer_max_delay_ms,
            });
        }
        let out = deliver_ms.to_string();
        msg.properties = rewrite_props(
            &msg.properties,
            &[],
            &[
                (keys::TIMER_OUT_MS, &out),
                (keys::REAL_TOPIC, &msg.topic),
                (keys::REAL_QUEUE_ID, &real_qid),
            ],
        );
        msg.tags_code = deliver_ms;
        msg.topic = TIMER_TOPIC.to_owned();
        msg.queue_id = 0;
        Ok(true)
    }

    /// Infallible form for callers that cannot reject: a too-long timer is
    /// capped at the maximum, a malformed property leaves the message as is
    /// (both logged). Send paths should prefer `try_transform`.
    pub fn transform(&self, msg: &mut MessageToStore) -> bool {
        let now = now_ms();
        match self.try_transform_at(msg, now) {
            Ok(t) => t,
            Err(ScheduleError::TimerTooFar { max_ms, .. }) => {
                // Per message.
                static CAPPED: apogee_throttle::LogThrottle =
                    apogee_throttle::LogThrottle::new("timer beyond timerMaxDelaySec");
                apogee_throttle::throttled_warn!(CAPPED, (),
                    topic = %msg.topic, "timer beyond timerMaxDelaySec; capped");
                let cap = now.saturating_add(max_ms).to_string();
                msg.properties = rewrite_props(
                    &msg.properties,
                    &TIMER_PROPS,
                    &[(keys::TIMER_DELIVER_MS, &cap)],
                );
                self.try_transform_at(msg, now).unwrap_or(false)
            }
            Err(e) => {
                static IGNORED: apogee_throttle::LogThrottle =
                    apogee_throttle::LogThrottle::new("delay ignored");
                apogee_throttle::throttled_warn!(IGNORED, (),
                    topic = %msg.topic, error = %e, "delay ignored");
                false
            }
        }
    }

    /// Starts the delivery thread on the broker's store. A failure (an
    /// unreadable timer index) is logged and leaves delivery stopped rather
    /// than taking the broker down: delayed messages are still stored
    /// durably and are delivered by the next healthy start. Use
    /// [`ScheduleMessageService::try_start`] to treat it as fatal.
    pub fn start(&self, ctx: &Arc<BrokerContext>) {
        if let Err(e) = self.try_start(ctx) {
            tracing::error!(error = %e, "delayed delivery NOT running");
        }
    }

    /// [`ScheduleMessageService::start`] returning the failure.
    pub fn try_start(&self, ctx: &Arc<BrokerContext>) -> Result<(), BrokerError> {
        self.start_with_store(ctx.store.clone())
            .map_err(|e| BrokerError::Start(format!("delay service: {e}")))
    }

    /// Starts the delivery thread; the index lives in
    /// `<storePathRootDir>/timer/`. Idempotent.
    pub fn start_with_store(&self, store: Arc<MessageStore>) -> Result<(), ScheduleError> {
        let mut runner = self.runner.lock();
        if runner.is_some() {
            return Ok(());
        }
        let dir = store.config().store_path_root_dir.join("timer");
        let (index, progress) =
            TimerIndex::open_with(store.vfs(), &dir, self.settings.wheel_shape(), now_ms())?;
        let engine = Engine {
            index,
            store,
            levels_ms: self.settings.levels_ms.clone(),
            progress,
            progress_changed: false,
            shared: self.shared.clone(),
            flush_end: 0,
            last_checkpoint: Instant::now(),
            flush_interval: Duration::from_millis(self.settings.flush_interval_ms),
            failing: false,
        };
        engine.publish();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let poll = Duration::from_millis((self.settings.precision_ms / 4).clamp(1, 20) as u64);
        let thread = std::thread::Builder::new()
            .name("apogee-timer".into())
            .spawn(move || engine.run(&stop2, poll))
            .map_err(|e| ScheduleError::Io {
                context: "spawn timer thread",
                path: dir.clone(),
                source: e,
            })?;
        *runner = Some(Runner { stop, thread });
        tracing::info!(levels = self.delay_level_count(), dir = ?dir, "delay service started");
        Ok(())
    }

    /// Stops delivery and checkpoints. Call before the store shuts down.
    pub fn shutdown(&self) {
        let Some(r) = self.runner.lock().take() else {
            return;
        };
        r.stop.store(true, Ordering::Release);
        r.thread.thread().unpark();
        if r.thread.join().is_err() {
            tracing::error!("delay service thread panicked");
        }
    }

    /// Wakes the delivery thread (e.g. right after a delayed message was
    /// stored) instead of waiting for its next poll.
    pub fn wake(&self) {
        if let Some(r) = self.runner.lock().as_ref() {
            r.thread.thread().unpark();
        }
    }

    /// Java's delay offset table (GET_ALL_DELAY_OFFSET): level -> next
    /// `SCHEDULE_TOPIC_XXXX` queue offset taken over by the timer wheel
    /// (as of the last checkpoint). Messages below it are durably scheduled;
    /// the wheel cursor in [`ScheduleMessageService::progress`] says what
    /// has been delivered.
    pub fn level_offsets(&self) -> BTreeMap<i32, i64> {
        let prefix = format!("{RMQ_SYS_SCHEDULE_TOPIC}@");
        self.shared
            .offsets
            .lock()
            .iter()
            .filter_map(|(k, v)| {
                let q: i32 = k.strip_prefix(&prefix)?.parse().ok()?;
                Some((q + 1, *v))
            })
            .collect()
    }

    /// Counters and progress.
    pub fn progress(&self) -> ScheduleProgress {
        let s = &self.shared;
        ScheduleProgress {
            cursor_ms: s.cursor_ms.load(Ordering::Relaxed),
            enqueued: s.enqueued.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
            rolled: s.rolled.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            recalled: s.recalled.load(Ordering::Relaxed),
            entries_touched: s.touched.load(Ordering::Relaxed),
            enqueue_offsets: s.offsets.lock().clone(),
        }
    }
}

impl Drop for ScheduleMessageService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The delete marker a recall stores (Apache `RecallMessageProcessor`):
/// parked straight under the timer topic at `deliver_ms` (the handle's
/// timestamp minus one, the cancelled message's own `TIMER_OUT_MS`, so both
/// meet in one slot), carrying `TIMER_DEL_UNIQKEY` = `<topic>+<uniqKey>`.
/// The delivery thread never delivers it; it only cancels.
pub fn recall_marker(
    handle: &apogee_protocol::recall::RecallHandle,
    deliver_ms: i64,
    producer_group: Option<&str>,
    born_host: std::net::SocketAddr,
    store_host: std::net::SocketAddr,
    now: i64,
) -> MessageToStore {
    use apogee_protocol::recall::{delete_key, RECALL_TAG};
    let mut props = String::with_capacity(192);
    let del = delete_key(&handle.topic, &handle.message_id);
    let out = deliver_ms.to_string();
    let born = now.to_string();
    for (k, v) in [
        (keys::TAGS, RECALL_TAG),
        (keys::TIMER_DEL_UNIQKEY, del.as_str()),
        (keys::UNIQ_KEY, handle.message_id.as_str()),
        (keys::TIMER_DELIVER_MS, handle.timestamp.as_str()),
        (keys::BORN_TIMESTAMP, born.as_str()),
        (keys::TIMER_OUT_MS, out.as_str()),
        (keys::REAL_TOPIC, handle.topic.as_str()),
        (keys::REAL_QUEUE_ID, "0"),
    ] {
        properties::append(&mut props, k, v);
    }
    if let Some(g) = producer_group.filter(|g| !g.is_empty()) {
        properties::append(&mut props, keys::PRODUCER_GROUP, g);
    }
    MessageToStore {
        topic: TIMER_TOPIC.to_owned(),
        queue_id: 0,
        flag: 0,
        body: Bytes::from_static(b"0"),
        properties: props,
        sys_flag: 0,
        born_timestamp: now,
        born_host,
        store_host,
        reconsume_times: 0,
        prepared_transaction_offset: 0,
        tags_code: deliver_ms,
    }
}

/// Rebuilds a parked message for its real topic and queue. None when it
/// has no REAL_TOPIC.
pub fn rebuild_for_delivery(rec: &Bytes, info: &stored::RecordInfo<'_>) -> Option<MessageToStore> {
    let topic = info.property(keys::REAL_TOPIC)?.to_owned();
    let queue_id = info
        .property(keys::REAL_QUEUE_ID)
        .and_then(|q| q.trim().parse::<i32>().ok())
        .filter(|q| *q >= 0)
        .unwrap_or(0);
    let due = info
        .property(keys::TIMER_DELIVER_MS)
        .or_else(|| info.property(keys::TIMER_OUT_MS))
        .map(str::to_owned);
    let mut add = vec![(keys::WAIT_STORE_MSG_OK, "false")];
    // The time it was due, as Apache's timer leaves on delivered messages
    // (gRPC clients show it as the delivery timestamp).
    if let Some(due) = due.as_deref() {
        add.push((keys::TIMER_OUT_MS, due));
    }
    let props = rewrite_props(
        &info.properties,
        &[
            keys::DELAY_TIME_LEVEL,
            keys::REAL_TOPIC,
            keys::REAL_QUEUE_ID,
            keys::TIMER_OUT_MS,
            keys::TIMER_DELIVER_MS,
            keys::TIMER_DELAY_SEC,
            keys::TIMER_DELAY_MS,
        ],
        &add,
    );
    let end = info.body_pos + info.body.len();
    // Share the record's buffer instead of copying the body.
    let body = if end <= rec.len() {
        rec.slice(info.body_pos..end)
    } else {
        Bytes::copy_from_slice(info.body)
    };
    let tags_code = properties::get(&props, keys::TAGS)
        .map(apogee_protocol::message::tags_hash_code)
        .unwrap_or(0);
    Some(MessageToStore {
        topic,
        queue_id,
        flag: info.flag,
        body,
        properties: props,
        sys_flag: info.sys_flag,
        born_timestamp: info.born_timestamp,
        born_host: info.born_host,
        store_host: info.store_host,
        reconsume_times: info.reconsume_times,
        prepared_transaction_offset: info.prepared_transaction_offset,
        tags_code,
    })
}

/// The delivery thread's state: the wheel, the store, source progress.
struct Engine {
    index: TimerIndex,
    store: Arc<MessageStore>,
    levels_ms: Vec<u64>,
    /// "topic@queue" -> next consume-queue offset to file.
    progress: BTreeMap<String, i64>,
    progress_changed: bool,
    shared: Arc<Shared>,
    /// CommitLog end of the messages delivered since the last checkpoint.
    flush_end: u64,
    last_checkpoint: Instant,
    flush_interval: Duration,
    failing: bool,
}

/// Most messages filed per source queue per tick (keeps delivery timely
/// while a large backlog is filed).
const ENQUEUE_BUDGET: usize = 4096;

impl Engine {
    fn run(mut self, stop: &AtomicBool, poll: Duration) {
        while !stop.load(Ordering::Acquire) {
            let wait = match self.tick(now_ms()) {
                Ok(()) => {
                    if self.failing {
                        tracing::info!("delay service recovered");
                    }
                    self.failing = false;
                    poll
                }
                Err(e) => {
                    if !self.failing {
                        tracing::error!(error = %e, "delay service failed; retrying in 1 s");
                    }
                    self.failing = true;
                    Duration::from_secs(1)
                }
            };
            if let Err(e) = self.maybe_checkpoint(false) {
                // Retried every pass of the loop.
                static CHECKPOINT_FAILED: apogee_throttle::LogThrottle =
                    apogee_throttle::LogThrottle::new("timer checkpoint failed");
                apogee_throttle::throttled_error!(CHECKPOINT_FAILED, (),
                    error = %e, "timer checkpoint failed");
            }
            self.publish();
            std::thread::park_timeout(wait);
        }
        if let Err(e) = self.maybe_checkpoint(true) {
            tracing::error!(error = %e, "final timer checkpoint failed");
        }
        self.publish();
    }

    fn publish(&self) {
        let s = &self.shared;
        s.cursor_ms.store(self.index.cursor_ms(), Ordering::Relaxed);
        s.touched
            .store(self.index.entries_touched(), Ordering::Relaxed);
    }

    /// File what arrived, then deliver every slot that has ended by `now`.
    fn tick(&mut self, now: i64) -> Result<(), ScheduleError> {
        self.enqueue_available()?;
        self.deliver_due(now)
    }

    fn enqueue_available(&mut self) -> Result<usize, ScheduleError> {
        let mut total = 0;
        for topic in [RMQ_SYS_SCHEDULE_TOPIC, TIMER_TOPIC] {
            for qid in self.store.queue_ids(topic) {
                total += self.enqueue_queue(topic, qid)?;
            }
        }
        Ok(total)
    }

    fn enqueue_queue(&mut self, topic: &str, qid: i32) -> Result<usize, ScheduleError> {
        let max = self.store.max_offset(topic, qid);
        let key = format!("{topic}@{qid}");
        let start = match self.progress.get(&key) {
            Some(o) => *o,
            None => self.store.min_offset(topic, qid),
        };
        let mut off = start;
        let mut n = 0usize;
        while off < max && n < ENQUEUE_BUDGET {
            let r =
                self.store
                    .get_messages("SCHEDULE_CONSUMER", topic, qid, off, 256, 8 << 20, None);
            match r.status {
                GetStatus::Found => {
                    if r.messages.is_empty() && r.next_begin_offset <= off {
                        break;
                    }
                    for (rec, qoff) in r.messages.iter().zip(&r.queue_offsets) {
                        self.enqueue_record(topic, qid, rec)?;
                        off = qoff + 1;
                        n += 1;
                    }
                    off = off.max(r.next_begin_offset);
                }
                GetStatus::OffsetTooSmall
                | GetStatus::OffsetOverflowBadly
                | GetStatus::MessageWasRemoving
                | GetStatus::NoMatchedMessage
                | GetStatus::OffsetFoundNull => {
                    if r.next_begin_offset <= off && r.status != GetStatus::OffsetTooSmall {
                        break;
                    }
                    static SKIPPED_AHEAD: apogee_throttle::LogThrottle =
                        apogee_throttle::LogThrottle::new("schedule queue skipped ahead");
                    apogee_throttle::throttled_warn!(
                        SKIPPED_AHEAD,
                        qid,
                        topic,
                        qid,
                        from = off,
                        to = r.next_begin_offset,
                        status = r.status.as_str(),
                        "schedule queue skipped ahead"
                    );
                    off = r.next_begin_offset;
                }
                _ => break,
            }
        }
        if off != start || !self.progress.contains_key(&key) {
            self.progress.insert(key, off);
            self.progress_changed = true;
        }
        Ok(n)
    }

    fn enqueue_record(&mut self, topic: &str, qid: i32, rec: &Bytes) -> Result<(), ScheduleError> {
        let info = match stored::check_record(rec, false) {
            Ok(i) => i,
            Err(e) => {
                // Per message.
                static UNREADABLE: apogee_throttle::LogThrottle =
                    apogee_throttle::LogThrottle::new("unreadable delayed message skipped");
                apogee_throttle::throttled_warn!(UNREADABLE, (), topic, qid, error = %e,
                    "unreadable delayed message skipped");
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        let deliver_ms = if topic == RMQ_SYS_SCHEDULE_TOPIC {
            let i = usize::try_from(qid).unwrap_or(0);
            let delay = self
                .levels_ms
                .get(i)
                .or(self.levels_ms.last())
                .copied()
                .unwrap_or(0);
            info.store_timestamp.saturating_add(delay as i64)
        } else {
            info.property(keys::TIMER_OUT_MS)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(info.store_timestamp)
        };
        // A recall's marker (RECALL_MESSAGE) is filed like the message it
        // cancels, at the same time, so both meet in one slot.
        let delete = topic == TIMER_TOPIC && info.property(keys::TIMER_DEL_UNIQKEY).is_some();
        self.index.insert(TimerEntry {
            deliver_ms,
            cl_offset: info.physical_offset,
            size: i32::try_from(info.total_size).unwrap_or(i32::MAX),
            delete,
        })?;
        self.shared.enqueued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn deliver_due(&mut self, now: i64) -> Result<(), ScheduleError> {
        let p = self.index.shape().precision_ms;
        loop {
            self.index.skip_empty(now);
            if !self.index.cursor_due(now) {
                return Ok(());
            }
            let cursor = self.index.cursor_ms();
            let entries = match self.index.cursor_entries() {
                Ok(e) => e,
                Err(e @ ScheduleError::Corrupt { .. }) => {
                    static SLOT_UNREADABLE: apogee_throttle::LogThrottle =
                        apogee_throttle::LogThrottle::new("timer slot unreadable");
                    apogee_throttle::throttled_error!(SLOT_UNREADABLE, (),
                        error = %e, slot_ms = cursor,
                        "timer slot unreadable; skipped");
                    self.index.advance();
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Every marker of the slot counts, also those before `done`
            // (a restart in the middle of a slot must still honour them).
            let recalled = self.recalled_keys(&entries, cursor + p);
            let done = self.index.cursor_done() as usize;
            for (i, e) in entries.iter().enumerate().skip(done) {
                if e.deliver_ms >= cursor + p {
                    self.index.insert(*e)?;
                    self.shared.rolled.fetch_add(1, Ordering::Relaxed);
                } else if !e.delete {
                    self.deliver(e, &recalled)?;
                }
                self.index.set_cursor_done((i + 1) as u32);
            }
            self.index.advance();
        }
    }

    /// The delete keys (`TIMER_DEL_UNIQKEY`, `<realTopic>+<uniqKey>`) of
    /// the slot's recall markers that are due (not rolled on).
    fn recalled_keys(&self, entries: &[TimerEntry], slot_end: i64) -> HashSet<String> {
        let mut keys_out = HashSet::new();
        for e in entries
            .iter()
            .filter(|e| e.delete && e.deliver_ms < slot_end)
        {
            let key = self
                .store
                .look_message_by_offset(e.cl_offset)
                .and_then(|rec| {
                    stored::check_record(&rec, false)
                        .ok()
                        .and_then(|info| info.property(keys::TIMER_DEL_UNIQKEY).map(str::to_owned))
                });
            match key {
                Some(k) => {
                    keys_out.insert(k);
                }
                None => {
                    static MARKER_GONE: apogee_throttle::LogThrottle =
                        apogee_throttle::LogThrottle::new("recall marker unreadable");
                    apogee_throttle::throttled_warn!(
                        MARKER_GONE,
                        (),
                        offset = e.cl_offset,
                        "recall marker unreadable or gone from the CommitLog; its message is delivered"
                    );
                }
            }
        }
        keys_out
    }

    fn deliver(&mut self, e: &TimerEntry, recalled: &HashSet<String>) -> Result<(), ScheduleError> {
        let Some(rec) = self.store.look_message_by_offset(e.cl_offset) else {
            // Per message (retention can remove thousands).
            static GONE: apogee_throttle::LogThrottle =
                apogee_throttle::LogThrottle::new("delayed message no longer in the CommitLog");
            apogee_throttle::throttled_warn!(
                GONE,
                (),
                offset = e.cl_offset,
                "delayed message no longer in the CommitLog; dropped"
            );
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let info = match stored::check_record(&rec, false) {
            Ok(i) => i,
            Err(err) => {
                static DROPPED_UNREADABLE: apogee_throttle::LogThrottle =
                    apogee_throttle::LogThrottle::new("delayed message unreadable");
                apogee_throttle::throttled_warn!(DROPPED_UNREADABLE, (),
                    offset = e.cl_offset, error = %err,
                    "delayed message unreadable; dropped");
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        if !recalled.is_empty() {
            let key = info
                .property(keys::REAL_TOPIC)
                .zip(info.property(keys::UNIQ_KEY))
                .map(|(t, u)| apogee_protocol::recall::delete_key(t, u));
            if key.is_some_and(|k| recalled.contains(&k)) {
                tracing::debug!(
                    offset = e.cl_offset,
                    "delayed message recalled; not delivered"
                );
                self.shared.recalled.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        let Some(msg) = rebuild_for_delivery(&rec, &info) else {
            static NO_REAL_TOPIC: apogee_throttle::LogThrottle =
                apogee_throttle::LogThrottle::new("delayed message without REAL_TOPIC");
            apogee_throttle::throttled_warn!(
                NO_REAL_TOPIC,
                (),
                offset = e.cl_offset,
                "delayed message without REAL_TOPIC; dropped"
            );
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        // WAIT=false: never blocks on a flush; durability is awaited once
        // per checkpoint instead.
        let r = self.store.put_message(&msg)?;
        self.flush_end = self.flush_end.max(r.end_offset());
        self.shared.delivered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn maybe_checkpoint(&mut self, force: bool) -> Result<(), ScheduleError> {
        if !self.index.has_changes() && !self.progress_changed {
            return Ok(());
        }
        if !force && self.last_checkpoint.elapsed() < self.flush_interval {
            return Ok(());
        }
        // Claim deliveries only once the delivered copies are on disk.
        if self.flush_end > 0 {
            if !self
                .store
                .wait_flushed(self.flush_end, Duration::from_secs(3))
            {
                // At every checkpoint while flushes stall (full disk).
                static NOT_FLUSHED: apogee_throttle::LogThrottle =
                    apogee_throttle::LogThrottle::new("delivered messages not flushed yet");
                apogee_throttle::throttled_warn!(
                    NOT_FLUSHED,
                    (),
                    "delivered messages not flushed yet; checkpoint postponed"
                );
                self.last_checkpoint = Instant::now();
                return Ok(());
            }
            self.flush_end = 0;
        }
        self.index.checkpoint(&self.progress)?;
        self.progress_changed = false;
        self.last_checkpoint = Instant::now();
        *self.shared.offsets.lock() = self.progress.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
