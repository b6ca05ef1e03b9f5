//! The lite pull consumer (Java `DefaultLitePullConsumer`): subscribe with
//! rebalancing or assign queues yourself, then `poll` batches; `seek`,
//! `seek_to_begin`, `seek_to_end`; offsets committed manually or every
//! `auto_commit_interval`. One background pull task per queue keeps a
//! bounded buffer filled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use apogee_protocol::body::{ConsumeType, ConsumerData, HeartbeatData, SubscriptionData};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PullSysFlag;
use apogee_protocol::header::PullMessageRequestHeader;
use apogee_remoting::{processor_fn, ProcessorRegistry};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::offset_store::{LocalOffsetStore, OffsetStore, RemoteOffsetStore};
use super::{
    allocate_for_topic, build_sql_subscription, build_subscription, compute_pull_from_where,
    tag_matches, AllocateStrategy, ConsumeFromWhere, ConsumerConfig, MessageModel,
};
use crate::api::PullStatus;
use crate::error::{ClientError, Result};
use crate::instance::{ClientInstance, ClientOptions, MASTER_ID};
use crate::message::{MessageExt, MessageQueue};
use crate::producer::spawn_periodic;
use crate::route::subscribe_queues;

const CREATED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

/// Builds a [`LitePullConsumer`].
#[derive(Default)]
pub struct LitePullConsumerBuilder {
    options: ClientOptions,
    config: ConsumerConfig,
}

impl LitePullConsumerBuilder {
    pub fn namesrv_addr(mut self, addr: impl Into<String>) -> Self {
        self.options.namesrv_addr = addr.into();
        self
    }

    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = group.into();
        self
    }

    pub fn instance_name(mut self, name: impl Into<String>) -> Self {
        self.options.instance_name = Some(name.into());
        self
    }

    pub fn options(mut self, options: ClientOptions) -> Self {
        self.options = options;
        self
    }

    pub fn config(mut self, config: ConsumerConfig) -> Self {
        self.config = config;
        self
    }

    pub fn message_model(mut self, m: MessageModel) -> Self {
        self.config.message_model = m;
        self
    }

    pub fn consume_from_where(mut self, w: ConsumeFromWhere) -> Self {
        self.config.consume_from_where = w;
        self
    }

    pub fn consume_timestamp(mut self, ms: i64) -> Self {
        self.config.consume_timestamp = ms;
        self
    }

    pub fn allocate_strategy(mut self, s: Arc<dyn AllocateStrategy>) -> Self {
        self.config.allocate_strategy = s;
        self
    }

    pub fn offset_store_path(mut self, p: impl Into<std::path::PathBuf>) -> Self {
        self.config.offset_store_path = Some(p.into());
        self
    }

    crate::producer::setters!(options;
        api_timeout: Duration,
        poll_name_server_interval: Duration,
        heartbeat_broker_interval: Duration,
    );

    crate::producer::setters!(config;
        pull_batch_size: i32,
        pull_threshold_for_queue: usize,
        pull_threshold_for_all: usize,
        broker_suspend_max_time: Duration,
        rebalance_interval: Duration,
        auto_commit: bool,
        auto_commit_interval: Duration,
        persist_consumer_offset_interval: Duration,
    );

    pub fn build(self) -> Result<LitePullConsumer> {
        self.config.validate()?;
        let processors = ProcessorRegistry::new();
        let instance_name = self.options.instance_name.clone();
        let instance = ClientInstance::new(self.options, Arc::clone(&processors))?;
        let offset_store = match self.config.message_model {
            MessageModel::Clustering => OffsetStore::Remote(RemoteOffsetStore::new(
                Arc::clone(&instance),
                &self.config.group,
            )),
            MessageModel::Broadcasting => {
                let name = instance_name.unwrap_or_else(|| "DEFAULT".to_string());
                OffsetStore::Local(LocalOffsetStore::open(
                    self.config.local_offset_path(&name),
                )?)
            }
        };
        let cap = (self.config.pull_threshold_for_all
            / self.config.pull_batch_size.max(1) as usize)
            .max(1);
        let (tx, rx) = mpsc::channel(cap);
        let inner = Arc::new(LiteInner {
            config: self.config,
            instance,
            subscriptions: RwLock::new(BTreeMap::new()),
            assigned: Mutex::new(None),
            queues: Mutex::new(HashMap::new()),
            topic_queues: RwLock::new(HashMap::new()),
            offset_store,
            tx,
            rx: tokio::sync::Mutex::new(rx),
            state: AtomicU8::new(CREATED),
            rebalance_now: Notify::new(),
            lite_code: AtomicBool::new(true),
            next_auto_commit: Mutex::new(Instant::now()),
        });
        let w = Arc::downgrade(&inner);
        processors.register(
            request_code::NOTIFY_CONSUMER_IDS_CHANGED,
            processor_fn(move |_ctx, _req| {
                let w = w.clone();
                async move {
                    if let Some(c) = w.upgrade() {
                        c.rebalance_now.notify_one();
                    }
                    Ok(None)
                }
            }),
        );
        Ok(LitePullConsumer {
            inner,
            tasks: Mutex::new(Vec::new()),
        })
    }
}

struct Batch {
    mq: MessageQueue,
    generation: u64,
    msgs: Vec<MessageExt>,
}

struct LiteQueue {
    dropped: AtomicBool,
    /// Next offset to pull.
    pull_offset: AtomicI64,
    /// One past the last polled message (-1: nothing polled yet).
    consume_offset: AtomicI64,
    /// Bumped by seek so batches pulled before it are discarded.
    generation: AtomicU64,
    buffered: AtomicUsize,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A pull consumer you drive with [`poll`](Self::poll).
pub struct LitePullConsumer {
    inner: Arc<LiteInner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for LitePullConsumer {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        for (_, q) in self.inner.queues.lock().drain() {
            if let Some(t) = q.task.lock().take() {
                t.abort();
            }
        }
    }
}

impl std::fmt::Debug for LitePullConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LitePullConsumer")
            .field("group", &self.inner.config.group)
            .finish()
    }
}

impl LitePullConsumer {
    pub fn builder() -> LitePullConsumerBuilder {
        LitePullConsumerBuilder::default()
    }

    pub fn client_id(&self) -> &str {
        self.inner.instance.client_id()
    }

    /// Subscribes (before or after start); queues come from rebalancing.
    pub async fn subscribe(&self, topic: &str, expression: &str) -> Result<()> {
        self.subscribe_with(build_subscription(topic, expression)?)
            .await
    }

    /// Subscribes with an SQL92 expression over message properties.
    pub async fn subscribe_sql(&self, topic: &str, sql: &str) -> Result<()> {
        self.subscribe_with(build_sql_subscription(topic, sql)?)
            .await
    }

    async fn subscribe_with(&self, sd: SubscriptionData) -> Result<()> {
        if self.inner.assigned.lock().is_some() {
            return Err(ClientError::InvalidArgument(
                "consumer uses assign(), not subscribe()".into(),
            ));
        }
        let topic = sd.topic.clone();
        let topic = topic.as_str();
        self.inner
            .subscriptions
            .write()
            .insert(topic.to_string(), sd);
        if self.inner.running() {
            self.inner.refresh_routes().await;
            self.inner.heartbeat().await;
            self.inner.rebalance_now.notify_one();
        }
        Ok(())
    }

    /// Uses exactly these queues (no rebalancing).
    pub async fn assign(&self, queues: Vec<MessageQueue>) -> Result<()> {
        if !self.inner.subscriptions.read().is_empty() && self.inner.assigned.lock().is_none() {
            return Err(ClientError::InvalidArgument(
                "consumer uses subscribe(), not assign()".into(),
            ));
        }
        let set: BTreeSet<MessageQueue> = queues.into_iter().collect();
        {
            let mut subs = self.inner.subscriptions.write();
            subs.clear();
            for q in &set {
                subs.entry(q.topic.clone())
                    .or_insert_with(|| SubscriptionData::tag(q.topic.clone(), "*"));
            }
        }
        *self.inner.assigned.lock() = Some(set.clone());
        if self.inner.running() {
            self.inner.apply_assignment(set).await;
        }
        Ok(())
    }

    pub async fn start(&self) -> Result<()> {
        let inner = &self.inner;
        if inner
            .state
            .compare_exchange(CREATED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ClientError::NotRunning(
                "consumer already started or shut down",
            ));
        }
        inner.refresh_routes().await;
        inner.heartbeat().await;
        // Assigned queues are pulled as soon as start returns, so a seek
        // right after start finds them.
        let assigned = inner.assigned.lock().clone();
        if let Some(set) = assigned {
            inner.apply_assignment(set).await;
        }
        *inner.next_auto_commit.lock() = Instant::now() + inner.config.auto_commit_interval;
        let weak = Arc::downgrade(inner);
        let mut tasks = self.tasks.lock();
        tasks.push(spawn_periodic(
            weak.clone(),
            inner.instance.options.poll_name_server_interval,
            inner.instance.options.poll_name_server_interval,
            |c| async move {
                if c.refresh_routes().await {
                    c.rebalance_now.notify_one();
                }
            },
        ));
        tasks.push(spawn_periodic(
            weak.clone(),
            inner.instance.options.heartbeat_broker_interval,
            inner.instance.options.heartbeat_broker_interval,
            |c| async move { c.heartbeat().await },
        ));
        tasks.push(spawn_periodic(
            weak.clone(),
            inner.config.persist_consumer_offset_interval,
            inner.config.persist_consumer_offset_interval,
            |c| async move {
                let mqs: Vec<MessageQueue> = c.queues.lock().keys().cloned().collect();
                c.offset_store.persist_all(Some(&mqs)).await;
            },
        ));
        let interval = inner.config.rebalance_interval;
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(c) = weak.upgrade() else { return };
                if !c.running() {
                    return;
                }
                c.rebalance().await;
                // A notify that came during the rebalance left a permit, so
                // this wait returns at once and nothing is missed.
                let _ = tokio::time::timeout(interval, c.rebalance_now.notified()).await;
            }
        }));
        Ok(())
    }

    /// The next batch of messages (from one queue), or an empty Vec when
    /// none arrives within `timeout`.
    pub async fn poll(&self, timeout: Duration) -> Result<Vec<MessageExt>> {
        let inner = &self.inner;
        if !inner.running() {
            return Err(ClientError::NotRunning("consumer not running"));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = inner.rx.lock().await;
        let out = loop {
            let batch = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(b)) => b,
                Ok(None) | Err(_) => break Vec::new(),
            };
            let q = inner.queues.lock().get(&batch.mq).cloned();
            let Some(q) = q else { continue };
            q.buffered.fetch_sub(
                batch.msgs.len().min(q.buffered.load(Ordering::Acquire)),
                Ordering::AcqRel,
            );
            if q.dropped.load(Ordering::Acquire)
                || q.generation.load(Ordering::Acquire) != batch.generation
            {
                continue;
            }
            if let Some(last) = batch.msgs.last() {
                q.consume_offset
                    .store(last.queue_offset + 1, Ordering::Release);
            }
            break batch.msgs;
        };
        drop(rx);
        if inner.config.auto_commit {
            let due = {
                let mut next = inner.next_auto_commit.lock();
                if Instant::now() >= *next {
                    *next = Instant::now() + inner.config.auto_commit_interval;
                    true
                } else {
                    false
                }
            };
            if due {
                inner.commit(false).await?;
            }
        }
        Ok(out)
    }

    /// Commits what has been polled so far and waits for the brokers.
    pub async fn commit_sync(&self) -> Result<()> {
        self.inner.commit(true).await
    }

    /// The offset stored for `mq` (broker or file).
    pub async fn committed(&self, mq: &MessageQueue) -> Result<Option<i64>> {
        self.inner.offset_store.read_store(mq).await
    }

    /// Queues currently assigned.
    pub fn assignment(&self) -> BTreeSet<MessageQueue> {
        self.inner.queues.lock().keys().cloned().collect()
    }

    /// The topic's readable queues (fetching the route if needed).
    pub async fn fetch_message_queues(&self, topic: &str) -> Result<BTreeSet<MessageQueue>> {
        let (route, _) = self.inner.instance.update_route(topic).await?;
        Ok(subscribe_queues(topic, &route))
    }

    /// Next poll of `mq` starts at `offset` (which must be within the queue).
    pub async fn seek(&self, mq: &MessageQueue, offset: i64) -> Result<()> {
        let addr = self
            .inner
            .instance
            .master_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await?;
        let min = self.inner.instance.min_offset(&addr, mq).await?;
        let max = self.inner.instance.max_offset(&addr, mq).await?;
        if offset < min || offset > max {
            return Err(ClientError::InvalidArgument(format!(
                "offset {offset} outside [{min}, {max}] of {mq:?}"
            )));
        }
        self.inner.seek_to(mq, offset)
    }

    pub async fn seek_to_begin(&self, mq: &MessageQueue) -> Result<()> {
        let addr = self
            .inner
            .instance
            .master_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await?;
        let min = self.inner.instance.min_offset(&addr, mq).await?;
        self.inner.seek_to(mq, min)
    }

    pub async fn seek_to_end(&self, mq: &MessageQueue) -> Result<()> {
        let addr = self
            .inner
            .instance
            .master_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await?;
        let max = self.inner.instance.max_offset(&addr, mq).await?;
        self.inner.seek_to(mq, max)
    }

    /// Stops pulling, commits (if auto-commit) and unregisters.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.state.swap(STOPPED, Ordering::AcqRel) != RUNNING {
            return;
        }
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        let qs: Vec<(MessageQueue, Arc<LiteQueue>)> = inner
            .queues
            .lock()
            .iter()
            .map(|(m, q)| (m.clone(), Arc::clone(q)))
            .collect();
        for (_, q) in &qs {
            q.dropped.store(true, Ordering::Release);
            if let Some(t) = q.task.lock().take() {
                t.abort();
            }
        }
        if inner.config.auto_commit {
            let _ = inner.commit(true).await;
        }
        inner
            .instance
            .unregister(None, Some(&inner.config.group))
            .await;
        inner.instance.close().await;
    }
}

struct LiteInner {
    config: ConsumerConfig,
    instance: Arc<ClientInstance>,
    subscriptions: RwLock<BTreeMap<String, SubscriptionData>>,
    assigned: Mutex<Option<BTreeSet<MessageQueue>>>,
    queues: Mutex<HashMap<MessageQueue, Arc<LiteQueue>>>,
    topic_queues: RwLock<HashMap<String, BTreeSet<MessageQueue>>>,
    offset_store: OffsetStore,
    tx: mpsc::Sender<Batch>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Batch>>,
    state: AtomicU8,
    rebalance_now: Notify,
    /// LITE_PULL_MESSAGE accepted (falls back to PULL_MESSAGE once refused).
    lite_code: AtomicBool,
    next_auto_commit: Mutex<Instant>,
}

impl LiteInner {
    fn running(&self) -> bool {
        self.state.load(Ordering::Acquire) == RUNNING
    }

    async fn refresh_routes(&self) -> bool {
        let topics: Vec<String> = self.subscriptions.read().keys().cloned().collect();
        let mut changed = false;
        for t in topics {
            if let Ok((route, _)) = self.instance.update_route(&t).await {
                let qs = subscribe_queues(&t, &route);
                let mut tq = self.topic_queues.write();
                if tq.get(&t) != Some(&qs) {
                    tq.insert(t, qs);
                    changed = true;
                }
            }
        }
        changed
    }

    async fn heartbeat(&self) {
        let subs: Vec<SubscriptionData> = self.subscriptions.read().values().cloned().collect();
        if subs.is_empty() {
            return;
        }
        let data = HeartbeatData {
            client_id: self.instance.client_id.clone(),
            consumer_data_set: vec![ConsumerData {
                group_name: self.config.group.clone(),
                consume_type: ConsumeType::ConsumeActively,
                message_model: self.config.message_model,
                consume_from_where: self.config.consume_from_where,
                subscription_data_set: subs,
                unit_mode: false,
            }],
            ..Default::default()
        };
        self.instance.send_heartbeat(&data, false).await;
    }

    async fn rebalance(self: &Arc<Self>) {
        let assigned = self.assigned.lock().clone();
        if let Some(set) = assigned {
            self.apply_assignment(set).await;
            return;
        }
        let topics: Vec<String> = self.subscriptions.read().keys().cloned().collect();
        let mut mine = BTreeSet::new();
        for t in &topics {
            let all = self.topic_queues.read().get(t).cloned().unwrap_or_default();
            match allocate_for_topic(&self.instance, &self.config, &all).await {
                Ok(part) => mine.extend(part),
                Err(e) => {
                    tracing::debug!(topic = %t, error = %e, "rebalance failed");
                    // keep what we have for this topic
                    mine.extend(self.queues.lock().keys().filter(|q| &q.topic == t).cloned());
                }
            }
        }
        if self.apply_assignment(mine).await {
            self.heartbeat().await;
        }
    }

    /// Starts pull tasks for new queues and stops removed ones.
    async fn apply_assignment(self: &Arc<Self>, mine: BTreeSet<MessageQueue>) -> bool {
        let mut changed = false;
        let gone: Vec<(MessageQueue, Arc<LiteQueue>)> = self
            .queues
            .lock()
            .iter()
            .filter(|(q, _)| !mine.contains(*q))
            .map(|(q, l)| (q.clone(), Arc::clone(l)))
            .collect();
        for (mq, q) in gone {
            q.dropped.store(true, Ordering::Release);
            if let Some(t) = q.task.lock().take() {
                t.abort();
            }
            let co = q.consume_offset.load(Ordering::Acquire);
            if co >= 0 && self.config.auto_commit {
                self.offset_store.update(&mq, co, false);
                let _ = self.offset_store.persist(&mq).await;
            }
            self.offset_store.remove(&mq);
            self.queues.lock().remove(&mq);
            changed = true;
        }
        for mq in mine {
            if self.queues.lock().contains_key(&mq) {
                continue;
            }
            self.offset_store.remove(&mq);
            let start = match compute_pull_from_where(
                &self.instance,
                &self.config,
                &self.offset_store,
                &mq,
            )
            .await
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(?mq, error = %e, "cannot compute start offset");
                    continue;
                }
            };
            let q = Arc::new(LiteQueue {
                dropped: AtomicBool::new(false),
                pull_offset: AtomicI64::new(start),
                consume_offset: AtomicI64::new(start),
                generation: AtomicU64::new(0),
                buffered: AtomicUsize::new(0),
                task: Mutex::new(None),
            });
            self.queues.lock().insert(mq.clone(), Arc::clone(&q));
            let task = tokio::spawn(lite_pull_loop(
                Arc::downgrade(self),
                mq,
                Arc::clone(&q),
                0,
                start,
            ));
            *q.task.lock() = Some(task);
            changed = true;
        }
        changed
    }

    fn seek_to(self: &Arc<Self>, mq: &MessageQueue, offset: i64) -> Result<()> {
        let q = self
            .queues
            .lock()
            .get(mq)
            .cloned()
            .ok_or_else(|| ClientError::InvalidArgument(format!("{mq:?} is not assigned")))?;
        if let Some(t) = q.task.lock().take() {
            t.abort();
        }
        q.pull_offset.store(offset, Ordering::Release);
        q.consume_offset.store(offset, Ordering::Release);
        q.buffered.store(0, Ordering::Release);
        let generation = q.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let task = tokio::spawn(lite_pull_loop(
            Arc::downgrade(self),
            mq.clone(),
            Arc::clone(&q),
            generation,
            offset,
        ));
        *q.task.lock() = Some(task);
        Ok(())
    }

    async fn commit(&self, wait: bool) -> Result<()> {
        let qs: Vec<(MessageQueue, i64)> = self
            .queues
            .lock()
            .iter()
            .map(|(m, q)| (m.clone(), q.consume_offset.load(Ordering::Acquire)))
            .filter(|(_, o)| *o >= 0)
            .collect();
        for (mq, o) in &qs {
            self.offset_store.update(mq, *o, false);
        }
        if wait {
            for (mq, _) in &qs {
                self.offset_store.persist(mq).await?;
            }
        } else {
            let mqs: Vec<MessageQueue> = qs.into_iter().map(|(m, _)| m).collect();
            self.offset_store.persist_all(Some(&mqs)).await;
        }
        Ok(())
    }
}

/// One queue's pull loop. It owns the position it pulls from and belongs to
/// one generation of the queue: a seek bumps the generation and starts a new
/// loop, and a loop that finds itself outdated stops without touching the
/// queue (an aborted task may still be running on another worker thread
/// until its next await, so it must never publish a stale batch or offset).
async fn lite_pull_loop(
    weak: Weak<LiteInner>,
    mq: MessageQueue,
    q: Arc<LiteQueue>,
    generation: u64,
    mut offset: i64,
) {
    let mut broker_id = MASTER_ID;
    loop {
        let Some(c) = weak.upgrade() else { return };
        if q.dropped.load(Ordering::Acquire)
            || !c.running()
            || q.generation.load(Ordering::Acquire) != generation
        {
            return;
        }
        if q.buffered.load(Ordering::Acquire) > c.config.pull_threshold_for_queue {
            drop(c);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let Some(sd) = c.subscriptions.read().get(&mq.topic).cloned() else {
            return;
        };
        let addr = match c.instance.broker_addr(&mq.broker_name, broker_id) {
            Some(a) => a,
            None => match c
                .instance
                .master_addr_or_refresh(&mq.broker_name, &mq.topic)
                .await
            {
                Ok(a) => a,
                Err(_) => {
                    drop(c);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let header = PullMessageRequestHeader {
            consumer_group: c.config.group.clone(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            queue_offset: offset,
            max_msg_nums: c.config.pull_batch_size,
            sys_flag: PullSysFlag::build(false, true, true, false, true).0,
            commit_offset: 0,
            suspend_timeout_millis: c.config.broker_suspend_max_time.as_millis() as i64,
            subscription: Some(sd.sub_string.clone()),
            sub_version: 0,
            expression_type: Some(sd.expression_type.clone()),
            max_msg_bytes: Some(c.config.pull_batch_size_in_bytes),
            ..Default::default()
        };
        let code = if c.lite_code.load(Ordering::Relaxed) {
            request_code::LITE_PULL_MESSAGE
        } else {
            request_code::PULL_MESSAGE
        };
        let timeout = c.config.consumer_timeout_when_suspend;
        let instance = Arc::clone(&c.instance);
        let tx = c.tx.clone();
        let group = c.config.group.clone();
        drop(c);
        let result = instance
            .pull(&addr, &mq.broker_name, code, &header, timeout)
            .await;
        if q.dropped.load(Ordering::Acquire) || q.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                if e.response_code() == Some(response_code::REQUEST_CODE_NOT_SUPPORTED)
                    && code == request_code::LITE_PULL_MESSAGE
                {
                    if let Some(c) = weak.upgrade() {
                        c.lite_code.store(false, Ordering::Relaxed);
                    }
                    continue;
                }
                tracing::debug!(?mq, group = %group, error = %e, "lite pull failed");
                broker_id = MASTER_ID;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        broker_id = r.suggest_which_broker_id;
        let requested = offset;
        offset = r.next_begin_offset;
        q.pull_offset.store(offset, Ordering::Release);
        if r.status == PullStatus::Found {
            let msgs: Vec<MessageExt> = r
                .messages
                .into_iter()
                .filter(|m| tag_matches(&sd, m))
                .collect();
            if msgs.is_empty() {
                continue;
            }
            q.buffered.fetch_add(msgs.len(), Ordering::AcqRel);
            let batch = Batch {
                mq: mq.clone(),
                generation,
                msgs,
            };
            if tx.send(batch).await.is_err() {
                return;
            }
        } else if r.status == PullStatus::OffsetIllegal {
            tracing::warn!(
                ?mq,
                requested,
                next = r.next_begin_offset,
                "lite pull offset moved"
            );
        }
    }
}
