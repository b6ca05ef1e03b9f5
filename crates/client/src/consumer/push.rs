//! The push consumer (Java `DefaultMQPushConsumer`): subscriptions (plus
//! `%RETRY%<group>` in clustering mode), rebalancing on a timer and on
//! NOTIFY_CONSUMER_IDS_CHANGED, one long-polling pull loop per assigned
//! queue with flow control, a bounded pool of listener calls, send-back of
//! failed messages (with the retry-topic fallback and local retry),
//! orderly consumption under broker queue locks, offset persistence and
//! the broker→client calls (offset reset, running info, direct consume).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use apogee_protocol::body::{
    CMResult, ConsumeMessageDirectlyResult, ConsumeType, ConsumerData, ConsumerRunningInfo,
    HeartbeatData, ProducerData, ResetOffsetBody, SubscriptionData,
};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PullSysFlag;
use apogee_protocol::header::{PullMessageRequestHeader, ResetOffsetRequestHeader};
use apogee_protocol::message::{decode_stored_many, keys};
use apogee_protocol::{topic, RemotingCommand};
use apogee_remoting::{processor_fn, ProcessorRegistry};
use futures::FutureExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use super::offset_store::{LocalOffsetStore, OffsetStore, RemoteOffsetStore};
use super::process_queue::ProcessQueue;
use super::{
    allocate_for_topic, build_sql_subscription, build_subscription, compute_pull_from_where,
    reset_retry_topic, tag_matches, AllocateStrategy, ConsumeConcurrentlyContext,
    ConsumeConcurrentlyStatus, ConsumeFromWhere, ConsumeOrderlyContext, ConsumeOrderlyStatus,
    ConsumerConfig, MessageListenerConcurrently, MessageListenerOrderly, MessageModel,
};
use crate::api::PullStatus;
use crate::error::{ClientError, Result};
use crate::instance::{ClientInstance, ClientOptions, MASTER_ID};
use crate::message::{Message, MessageExt, MessageQueue};
use crate::producer::{spawn_periodic, ProducerConfig, ProducerInner, CLIENT_INNER_PRODUCER_GROUP};
use crate::route::subscribe_queues;

const CREATED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

/// Pause between pulls of a queue held back by flow control.
const FLOW_CONTROL_DELAY: Duration = Duration::from_millis(50);
/// Pause after a failed pull.
const PULL_ERROR_DELAY: Duration = Duration::from_secs(1);

#[derive(Clone)]
enum Listener {
    Concurrently(Arc<dyn MessageListenerConcurrently>),
    Orderly(Arc<dyn MessageListenerOrderly>),
}

/// Builds a [`PushConsumer`].
#[derive(Default)]
pub struct PushConsumerBuilder {
    options: ClientOptions,
    config: ConsumerConfig,
    /// (topic, expression, SQL92?).
    subscriptions: Vec<(String, String, bool)>,
    listener: Option<Listener>,
}

impl PushConsumerBuilder {
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

    /// All consumer settings at once (group included).
    pub fn config(mut self, config: ConsumerConfig) -> Self {
        self.config = config;
        self
    }

    /// Subscribes to `topic` with `"*"` or `"TagA || TagB"`.
    pub fn subscribe(mut self, topic: impl Into<String>, expression: impl Into<String>) -> Self {
        self.subscriptions
            .push((topic.into(), expression.into(), false));
        self
    }

    /// Subscribes to `topic` with an SQL92 expression over message
    /// properties (Java `MessageSelector.bySql`); the broker filters.
    pub fn subscribe_sql(mut self, topic: impl Into<String>, sql: impl Into<String>) -> Self {
        self.subscriptions.push((topic.into(), sql.into(), true));
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

    pub fn listener_concurrently(mut self, l: impl MessageListenerConcurrently) -> Self {
        self.listener = Some(Listener::Concurrently(Arc::new(l)));
        self
    }

    pub fn listener_orderly(mut self, l: impl MessageListenerOrderly) -> Self {
        self.listener = Some(Listener::Orderly(Arc::new(l)));
        self
    }

    crate::producer::setters!(options;
        api_timeout: Duration,
        poll_name_server_interval: Duration,
        heartbeat_broker_interval: Duration,
    );

    crate::producer::setters!(config;
        consume_thread_max: usize,
        consume_message_batch_max_size: usize,
        pull_batch_size: i32,
        pull_threshold_for_queue: usize,
        pull_threshold_size_for_queue: usize,
        broker_suspend_max_time: Duration,
        max_reconsume_times: i32,
        rebalance_interval: Duration,
        persist_consumer_offset_interval: Duration,
        lock_renew_interval: Duration,
        local_retry_delay: Duration,
    );

    /// Broadcasting offset file.
    pub fn offset_store_path(mut self, p: impl Into<std::path::PathBuf>) -> Self {
        self.config.offset_store_path = Some(p.into());
        self
    }

    pub fn build(self) -> Result<PushConsumer> {
        self.config.validate()?;
        let listener = self
            .listener
            .ok_or_else(|| ClientError::InvalidArgument("no message listener set".into()))?;
        if self.subscriptions.is_empty() {
            return Err(ClientError::InvalidArgument("no subscription".into()));
        }
        let mut subs = BTreeMap::new();
        for (t, e, sql) in &self.subscriptions {
            let sd = if *sql {
                build_sql_subscription(t, e)?
            } else {
                build_subscription(t, e)?
            };
            subs.insert(t.clone(), sd);
        }
        if self.config.message_model == MessageModel::Clustering {
            let retry = topic::retry_topic(&self.config.group);
            subs.insert(retry.clone(), SubscriptionData::tag(retry, "*"));
        }
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
        let producer = ProducerInner::new_running(
            Arc::clone(&instance),
            ProducerConfig {
                group: CLIENT_INNER_PRODUCER_GROUP.to_string(),
                ..Default::default()
            },
        );
        let inner = Arc::new(PushInner {
            workers: Arc::new(Semaphore::new(self.config.consume_thread_max)),
            config: self.config,
            instance,
            subscriptions: RwLock::new(subs),
            listener,
            offset_store,
            process_queues: Mutex::new(HashMap::new()),
            topic_queues: RwLock::new(HashMap::new()),
            producer,
            rebalance_now: Notify::new(),
            state: AtomicU8::new(CREATED),
            pull_tasks: Mutex::new(Vec::new()),
        });
        register_processors(&processors, Arc::downgrade(&inner));
        Ok(PushConsumer {
            inner,
            tasks: Mutex::new(Vec::new()),
        })
    }
}

/// A push consumer: pulls for you and calls your listener.
pub struct PushConsumer {
    inner: Arc<PushInner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for PushConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConsumer")
            .field("group", &self.inner.config.group)
            .field("client_id", &self.inner.instance.client_id)
            .finish()
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        for t in self.inner.pull_tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl PushConsumer {
    pub fn builder() -> PushConsumerBuilder {
        PushConsumerBuilder::default()
    }

    pub fn client_id(&self) -> &str {
        self.inner.instance.client_id()
    }

    pub fn group(&self) -> &str {
        &self.inner.config.group
    }

    /// Queues currently assigned to this consumer.
    pub fn assigned_queues(&self) -> BTreeSet<MessageQueue> {
        self.inner.process_queues.lock().keys().cloned().collect()
    }

    /// In-memory consume offsets (what the next persist will write).
    pub fn offsets(&self) -> HashMap<MessageQueue, i64> {
        self.inner.offset_store.snapshot()
    }

    /// Fetches routes, sends the first heartbeat, rebalances and starts the
    /// periodic tasks.
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
            |c| async move { c.persist_offsets().await },
        ));
        if matches!(inner.listener, Listener::Orderly(_))
            && inner.config.message_model == MessageModel::Clustering
        {
            tasks.push(spawn_periodic(
                weak.clone(),
                inner.config.lock_renew_interval,
                inner.config.lock_renew_interval,
                |c| async move { c.lock_all().await },
            ));
        }
        // The rebalance loop: at once, on every notify, and periodically.
        let interval = inner.config.rebalance_interval;
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(c) = weak.upgrade() else { return };
                if c.state.load(Ordering::Acquire) != RUNNING {
                    return;
                }
                c.rebalance().await;
                // A notify that came during the rebalance left a permit, so
                // this wait returns at once and nothing is missed.
                let _ = tokio::time::timeout(interval, c.rebalance_now.notified()).await;
            }
        }));
        tracing::info!(group = %inner.config.group, client_id = %inner.instance.client_id, "push consumer started");
        Ok(())
    }

    /// Triggers a rebalance now (normally done every 20 s and on broker notice).
    pub fn rebalance_now(&self) {
        self.inner.rebalance_now.notify_one();
    }

    /// Stops pulling, waits (up to `consume_wait`) for running listener
    /// calls, persists offsets, releases queue locks and unregisters.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        if inner.state.swap(STOPPED, Ordering::AcqRel) != RUNNING {
            return;
        }
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        for t in inner.pull_tasks.lock().drain(..) {
            t.abort();
        }
        let pqs: Vec<(MessageQueue, Arc<ProcessQueue>)> =
            inner.process_queues.lock().drain().collect();
        for (_, pq) in &pqs {
            pq.set_dropped();
        }
        // Let running listener calls finish so their offsets are counted.
        let max = inner.config.consume_thread_max as u32;
        let _ =
            tokio::time::timeout(Duration::from_secs(10), inner.workers.acquire_many(max)).await;
        let mqs: Vec<MessageQueue> = pqs.iter().map(|(q, _)| q.clone()).collect();
        inner.offset_store.persist_all(Some(&mqs)).await;
        if matches!(inner.listener, Listener::Orderly(_))
            && inner.config.message_model == MessageModel::Clustering
        {
            inner.unlock_queues(&mqs).await;
        }
        inner
            .instance
            .unregister(Some(CLIENT_INNER_PRODUCER_GROUP), Some(&inner.config.group))
            .await;
        inner.instance.close().await;
        tracing::info!(group = %inner.config.group, "push consumer shut down");
    }
}

struct PushInner {
    config: ConsumerConfig,
    instance: Arc<ClientInstance>,
    subscriptions: RwLock<BTreeMap<String, SubscriptionData>>,
    listener: Listener,
    offset_store: OffsetStore,
    process_queues: Mutex<HashMap<MessageQueue, Arc<ProcessQueue>>>,
    topic_queues: RwLock<HashMap<String, BTreeSet<MessageQueue>>>,
    workers: Arc<Semaphore>,
    producer: Arc<ProducerInner>,
    rebalance_now: Notify,
    state: AtomicU8,
    pull_tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl PushInner {
    fn running(&self) -> bool {
        self.state.load(Ordering::Acquire) == RUNNING
    }

    fn is_orderly(&self) -> bool {
        matches!(self.listener, Listener::Orderly(_))
    }

    fn clustering(&self) -> bool {
        self.config.message_model == MessageModel::Clustering
    }

    /// Refreshes the routes of every subscribed topic; true if any changed.
    async fn refresh_routes(&self) -> bool {
        let topics: Vec<String> = self.subscriptions.read().keys().cloned().collect();
        let mut changed = false;
        for t in topics {
            match self.instance.update_route(&t).await {
                Ok((route, _)) => {
                    let qs = subscribe_queues(&t, &route);
                    let mut tq = self.topic_queues.write();
                    if tq.get(&t) != Some(&qs) {
                        tq.insert(t, qs);
                        changed = true;
                    }
                }
                Err(e) => tracing::debug!(topic = %t, error = %e, "route refresh failed"),
            }
        }
        changed
    }

    fn heartbeat_data(&self) -> HeartbeatData {
        HeartbeatData {
            client_id: self.instance.client_id.clone(),
            producer_data_set: vec![ProducerData {
                group_name: CLIENT_INNER_PRODUCER_GROUP.to_string(),
            }],
            consumer_data_set: vec![ConsumerData {
                group_name: self.config.group.clone(),
                consume_type: ConsumeType::ConsumePassively,
                message_model: self.config.message_model,
                consume_from_where: self.config.consume_from_where,
                subscription_data_set: self.subscriptions.read().values().cloned().collect(),
                unit_mode: false,
            }],
            ..Default::default()
        }
    }

    async fn heartbeat(&self) {
        let data = self.heartbeat_data();
        self.instance.send_heartbeat(&data, false).await;
    }

    async fn persist_offsets(&self) {
        let mqs: Vec<MessageQueue> = self.process_queues.lock().keys().cloned().collect();
        self.offset_store.persist_all(Some(&mqs)).await;
    }

    async fn rebalance(self: &Arc<Self>) {
        let topics: Vec<String> = self.subscriptions.read().keys().cloned().collect();
        let mut changed = false;
        for t in topics {
            let all = self.topic_queues.read().get(&t).cloned();
            let all = match all {
                Some(a) => a,
                None => {
                    self.refresh_routes().await;
                    match self.topic_queues.read().get(&t).cloned() {
                        Some(a) => a,
                        None => continue,
                    }
                }
            };
            match allocate_for_topic(&self.instance, &self.config, &all).await {
                Ok(mine) => changed |= self.update_process_queues(&t, mine).await,
                Err(e) => tracing::debug!(topic = %t, error = %e, "rebalance failed"),
            }
        }
        if changed {
            tracing::info!(group = %self.config.group, queues = ?self.process_queues.lock().keys().collect::<Vec<_>>(), "assignment changed");
            self.heartbeat().await;
        }
    }

    /// Drops queues no longer ours and starts the new ones; true on change.
    async fn update_process_queues(
        self: &Arc<Self>,
        topic: &str,
        mine: BTreeSet<MessageQueue>,
    ) -> bool {
        let mut changed = false;
        let gone: Vec<(MessageQueue, Arc<ProcessQueue>)> = {
            let pqs = self.process_queues.lock();
            pqs.iter()
                .filter(|(q, _)| q.topic == topic && !mine.contains(q))
                .map(|(q, p)| (q.clone(), Arc::clone(p)))
                .collect()
        };
        for (mq, pq) in gone {
            pq.set_dropped();
            if self.is_orderly() && self.clustering() {
                // Do not hand the queue over mid-message.
                let _g = tokio::time::timeout(Duration::from_secs(1), pq.consume_lock.lock()).await;
                self.unlock_queues(std::slice::from_ref(&mq)).await;
            }
            let _ = self.offset_store.persist(&mq).await;
            self.offset_store.remove(&mq);
            self.process_queues.lock().remove(&mq);
            changed = true;
        }
        for mq in mine {
            if self.process_queues.lock().contains_key(&mq) {
                continue;
            }
            if self.is_orderly() && self.clustering() && !self.lock_one(&mq).await {
                continue;
            }
            self.offset_store.remove(&mq);
            let next = match compute_pull_from_where(
                &self.instance,
                &self.config,
                &self.offset_store,
                &mq,
            )
            .await
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(?mq, error = %e, "cannot compute start offset; retrying at next rebalance");
                    continue;
                }
            };
            let pq = Arc::new(ProcessQueue::new());
            if self.is_orderly() && self.clustering() {
                pq.set_locked(true);
            }
            self.process_queues
                .lock()
                .insert(mq.clone(), Arc::clone(&pq));
            changed = true;
            tracing::debug!(?mq, next, "queue assigned");
            let task = tokio::spawn(pull_loop(Arc::downgrade(self), mq, pq, next));
            let mut tasks = self.pull_tasks.lock();
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
        changed
    }

    async fn lock_one(&self, mq: &MessageQueue) -> bool {
        let Ok(addr) = self
            .instance
            .master_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await
        else {
            return false;
        };
        let mut set = BTreeSet::new();
        set.insert(mq.clone());
        match self
            .instance
            .lock_batch(&addr, &self.config.group, set)
            .await
        {
            Ok(locked) => locked.contains(mq),
            Err(e) => {
                tracing::debug!(?mq, error = %e, "lock failed");
                false
            }
        }
    }

    /// Renews the broker locks of every assigned queue (orderly).
    async fn lock_all(&self) {
        let pqs: Vec<(MessageQueue, Arc<ProcessQueue>)> = self
            .process_queues
            .lock()
            .iter()
            .map(|(q, p)| (q.clone(), Arc::clone(p)))
            .collect();
        let mut by_broker: BTreeMap<String, BTreeSet<MessageQueue>> = BTreeMap::new();
        for (q, _) in &pqs {
            by_broker
                .entry(q.broker_name.clone())
                .or_default()
                .insert(q.clone());
        }
        for (broker, set) in by_broker {
            let Some(addr) = self.instance.master_addr(&broker) else {
                continue;
            };
            match self
                .instance
                .lock_batch(&addr, &self.config.group, set.clone())
                .await
            {
                Ok(locked) => {
                    for (q, pq) in &pqs {
                        if set.contains(q) {
                            pq.set_locked(locked.contains(q));
                        }
                    }
                }
                Err(e) => tracing::debug!(broker = %addr, error = %e, "lock renewal failed"),
            }
        }
    }

    async fn unlock_queues(&self, mqs: &[MessageQueue]) {
        let mut by_broker: BTreeMap<String, BTreeSet<MessageQueue>> = BTreeMap::new();
        for q in mqs {
            by_broker
                .entry(q.broker_name.clone())
                .or_default()
                .insert(q.clone());
        }
        for (broker, set) in by_broker {
            if let Some(addr) = self.instance.master_addr(&broker) {
                if let Err(e) = self
                    .instance
                    .unlock_batch(&addr, &self.config.group, set, false)
                    .await
                {
                    tracing::debug!(broker = %addr, error = %e, "unlock failed");
                }
            }
        }
    }

    /// Java `sendMessageBack`: CONSUMER_SEND_MSG_BACK to the broker the
    /// message came from; if that fails, a plain send to `%RETRY%<group>`.
    async fn send_back(&self, msg: &MessageExt, delay_level: i32) -> bool {
        let addr = self.instance.master_addr(&msg.broker_name);
        if let Some(addr) = addr {
            match self
                .instance
                .send_msg_back(
                    &addr,
                    &self.config.group,
                    msg,
                    delay_level,
                    self.config.max_reconsume_times,
                )
                .await
            {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(msg_id = %msg.msg_id, error = %e, "send-back failed; resending to the retry topic")
                }
            }
        }
        let retry = topic::retry_topic(&self.config.group);
        let mut m = Message::new(retry, msg.body.clone()).with_flag(msg.flag);
        m.properties = msg.properties.clone();
        let origin = msg
            .property(keys::ORIGIN_MESSAGE_ID)
            .map(str::to_string)
            .unwrap_or_else(|| msg.msg_id.clone());
        m.properties.insert(keys::ORIGIN_MESSAGE_ID.into(), origin);
        m.properties
            .insert(keys::RETRY_TOPIC.into(), msg.topic.clone());
        m.properties.insert(
            keys::RECONSUME_TIME.into(),
            (msg.reconsume_times + 1).to_string(),
        );
        m.properties.insert(
            keys::MAX_RECONSUME_TIMES.into(),
            self.config.max_reconsume_times.to_string(),
        );
        m.properties.remove(keys::UNIQ_KEY);
        m.set_delay_level(if delay_level < 0 {
            0
        } else {
            3 + msg.reconsume_times
        });
        match self.producer.send_for_consumer(m).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(msg_id = %msg.msg_id, error = %e, "retry-topic resend failed; retrying locally");
                false
            }
        }
    }
}

/// The pull loop of one queue: one outstanding long-poll at a time.
async fn pull_loop(weak: Weak<PushInner>, mq: MessageQueue, pq: Arc<ProcessQueue>, mut next: i64) {
    let mut broker_id = MASTER_ID;
    loop {
        let Some(c) = weak.upgrade() else { return };
        if pq.is_dropped() || !c.running() {
            return;
        }
        let cfg = &c.config;
        let throttled = pq.count() > cfg.pull_threshold_for_queue
            || pq.bytes() > cfg.pull_threshold_size_for_queue
            || (!c.is_orderly() && pq.span() > cfg.consume_concurrently_max_span);
        if throttled {
            drop(c);
            tokio::time::sleep(FLOW_CONTROL_DELAY).await;
            continue;
        }
        if c.is_orderly() && c.clustering() && !pq.is_locked() {
            drop(c);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let Some(sd) = c.subscriptions.read().get(&mq.topic).cloned() else {
            return;
        };
        let commit = if c.clustering() {
            c.offset_store.read_memory(&mq).filter(|o| *o > 0)
        } else {
            None
        };
        let addr = match c.instance.broker_addr(&mq.broker_name, broker_id) {
            Some(a) => a,
            None => match c
                .instance
                .master_addr_or_refresh(&mq.broker_name, &mq.topic)
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(?mq, error = %e, "no broker address");
                    drop(c);
                    tokio::time::sleep(PULL_ERROR_DELAY).await;
                    continue;
                }
            },
        };
        let header = PullMessageRequestHeader {
            consumer_group: cfg.group.clone(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            queue_offset: next,
            max_msg_nums: cfg.pull_batch_size,
            // Commit only to a master (Java clears the bit for slaves).
            sys_flag: PullSysFlag::build(
                commit.is_some() && broker_id == MASTER_ID,
                true,
                false,
                false,
                false,
            )
            .0,
            commit_offset: commit.unwrap_or(0),
            suspend_timeout_millis: cfg.broker_suspend_max_time.as_millis() as i64,
            subscription: None,
            sub_version: sd.sub_version,
            expression_type: Some(sd.expression_type.clone()),
            max_msg_bytes: Some(cfg.pull_batch_size_in_bytes),
            ..Default::default()
        };
        let timeout = cfg.consumer_timeout_when_suspend;
        let instance = Arc::clone(&c.instance);
        drop(c);
        let result = instance
            .pull(
                &addr,
                &mq.broker_name,
                request_code::PULL_MESSAGE,
                &header,
                timeout,
            )
            .await;
        let Some(c) = weak.upgrade() else { return };
        if pq.is_dropped() {
            return;
        }
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                let busy = e.response_code() == Some(response_code::SYSTEM_BUSY)
                    || e.response_code() == Some(response_code::FLOW_CONTROL);
                tracing::debug!(?mq, error = %e, "pull failed");
                drop(c);
                broker_id = MASTER_ID;
                tokio::time::sleep(if busy {
                    FLOW_CONTROL_DELAY
                } else {
                    PULL_ERROR_DELAY
                })
                .await;
                continue;
            }
        };
        broker_id = r.suggest_which_broker_id;
        match r.status {
            PullStatus::Found => {
                next = r.next_begin_offset;
                let mut msgs: Vec<MessageExt> = r
                    .messages
                    .into_iter()
                    .filter(|m| tag_matches(&sd, m))
                    .collect();
                if msgs.is_empty() {
                    if pq.count() == 0 {
                        c.offset_store.update(&mq, next, true);
                    }
                    continue;
                }
                for m in &mut msgs {
                    reset_retry_topic(&c.config.group, m);
                }
                match &c.listener {
                    Listener::Concurrently(l) => {
                        pq.put_offsets(&msgs);
                        let l = Arc::clone(l);
                        submit_concurrently(&c, l, &mq, &pq, msgs).await;
                    }
                    Listener::Orderly(l) => {
                        pq.put(msgs);
                        if !pq.consuming.swap(true, Ordering::AcqRel) {
                            tokio::spawn(consume_orderly(
                                Arc::downgrade(&c),
                                Arc::clone(l),
                                mq.clone(),
                                Arc::clone(&pq),
                            ));
                        }
                    }
                }
            }
            PullStatus::NoNewMsg | PullStatus::NoMatchedMsg => {
                next = r.next_begin_offset;
                if pq.count() == 0 {
                    c.offset_store.update(&mq, next, true);
                }
            }
            PullStatus::OffsetIllegal => {
                tracing::warn!(
                    ?mq,
                    requested = header.queue_offset,
                    next = r.next_begin_offset,
                    "pull offset moved"
                );
                pq.set_dropped();
                c.offset_store.update(&mq, r.next_begin_offset, false);
                let _ = c.offset_store.persist(&mq).await;
                c.offset_store.remove(&mq);
                c.process_queues.lock().remove(&mq);
                c.rebalance_now.notify_one();
                return;
            }
        }
    }
}

/// Splits pulled messages into listener batches, each run when a worker
/// slot frees up (waiting here slows this queue's pulls: back-pressure).
async fn submit_concurrently(
    c: &Arc<PushInner>,
    l: Arc<dyn MessageListenerConcurrently>,
    mq: &MessageQueue,
    pq: &Arc<ProcessQueue>,
    msgs: Vec<MessageExt>,
) {
    let n = c.config.consume_message_batch_max_size.max(1);
    let started = Instant::now();
    // Batches are taken from the front by iterating: `split_off` from the
    // front moved every remaining message once per batch (quadratic in the
    // pull size; 4% of a consumer's CPU with batches of one).
    let mut msgs = msgs.into_iter();
    loop {
        let batch: Vec<MessageExt> = msgs.by_ref().take(n).collect();
        if batch.is_empty() {
            break;
        }
        let Ok(permit) = Arc::clone(&c.workers).acquire_owned().await else {
            return;
        };
        let (w, l, mq, pq) = (
            Arc::downgrade(c),
            Arc::clone(&l),
            mq.clone(),
            Arc::clone(pq),
        );
        let mut work = Box::pin(async move {
            consume_concurrently(w, l, mq, pq, batch).await;
            drop(permit);
        });
        // A listener that finishes without waiting is run right here while
        // this pull's messages have taken less than INLINE_BUDGET: no task
        // spawn and no wake-up per message. One that waits (or once the
        // budget is spent) gets a task, so slow listeners still run in
        // parallel on the worker pool.
        if started.elapsed() < INLINE_BUDGET {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if std::future::Future::poll(work.as_mut(), &mut cx).is_ready() {
                continue;
            }
        }
        tokio::spawn(work);
    }
}

/// How long one pull's messages may be consumed inline in the pull loop.
const INLINE_BUDGET: Duration = Duration::from_micros(500);

async fn consume_concurrently(
    weak: Weak<PushInner>,
    l: Arc<dyn MessageListenerConcurrently>,
    mq: MessageQueue,
    pq: Arc<ProcessQueue>,
    mut batch: Vec<MessageExt>,
) {
    loop {
        if pq.is_dropped() {
            return;
        }
        let mut ctx = ConsumeConcurrentlyContext {
            queue: mq.clone(),
            delay_level_when_next_consume: 0,
        };
        let status = AssertUnwindSafe(l.consume(&batch, &mut ctx))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(?mq, "listener panicked; treating as ReconsumeLater");
                ConsumeConcurrentlyStatus::ReconsumeLater
            });
        let Some(c) = weak.upgrade() else { return };
        if pq.is_dropped() {
            return;
        }
        let mut done: Vec<i64> = Vec::with_capacity(batch.len());
        let mut again: Vec<MessageExt> = Vec::new();
        match status {
            ConsumeConcurrentlyStatus::Success => done.extend(batch.iter().map(|m| m.queue_offset)),
            ConsumeConcurrentlyStatus::ReconsumeLater if !c.clustering() => {
                // Broadcasting: a failure is only logged (Java drops it).
                tracing::warn!(
                    ?mq,
                    count = batch.len(),
                    "broadcast consumption failed; dropping"
                );
                done.extend(batch.iter().map(|m| m.queue_offset));
            }
            ConsumeConcurrentlyStatus::ReconsumeLater => {
                for m in batch.drain(..) {
                    if c.send_back(&m, ctx.delay_level_when_next_consume).await {
                        done.push(m.queue_offset);
                    } else {
                        again.push(m);
                    }
                }
            }
        }
        if let Some(offset) = pq.remove(&done) {
            if !pq.is_dropped() {
                c.offset_store.update(&mq, offset, true);
            }
        }
        if again.is_empty() {
            return;
        }
        // Neither send-back nor the retry topic worked: consume again here.
        for m in &mut again {
            m.reconsume_times += 1;
        }
        let delay = c.config.local_retry_delay;
        drop(c);
        tokio::time::sleep(delay).await;
        batch = again;
    }
}

/// Consumes one queue strictly in order while the broker lock is held.
async fn consume_orderly(
    weak: Weak<PushInner>,
    l: Arc<dyn MessageListenerOrderly>,
    mq: MessageQueue,
    pq: Arc<ProcessQueue>,
) {
    loop {
        let Some(c) = weak.upgrade() else { return };
        if pq.is_dropped() || !c.running() {
            pq.consuming.store(false, Ordering::Release);
            return;
        }
        if c.clustering() && (!pq.is_locked() || pq.lock_expired()) {
            if !c.lock_one(&mq).await {
                drop(c);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            pq.set_locked(true);
        }
        let Ok(_permit) = Arc::clone(&c.workers).acquire_owned().await else {
            return;
        };
        let _guard = pq.consume_lock.lock().await;
        let msgs = pq.take(c.config.consume_message_batch_max_size);
        if msgs.is_empty() {
            pq.consuming.store(false, Ordering::Release);
            // A pull may have added messages after take() and before the
            // flag was cleared; reclaim the task if so.
            if pq.count() > 0 && !pq.consuming.swap(true, Ordering::AcqRel) {
                continue;
            }
            return;
        }
        let mut ctx = ConsumeOrderlyContext {
            queue: mq.clone(),
            suspend_current_queue_time: Duration::from_secs(1),
        };
        let status = AssertUnwindSafe(l.consume(&msgs, &mut ctx))
            .catch_unwind()
            .await
            .unwrap_or(ConsumeOrderlyStatus::SuspendCurrentQueueAMoment);
        if pq.is_dropped() {
            pq.rollback(msgs);
            pq.consuming.store(false, Ordering::Release);
            return;
        }
        let commit = match status {
            ConsumeOrderlyStatus::Success => true,
            ConsumeOrderlyStatus::SuspendCurrentQueueAMoment => {
                let poison = msgs
                    .iter()
                    .any(|m| m.reconsume_times >= c.config.max_reconsume_times);
                if poison && c.clustering() {
                    // Give up on these: to the DLQ (delay level -1).
                    let mut all_sent = true;
                    for m in &msgs {
                        all_sent &= c.send_back(m, -1).await;
                    }
                    all_sent
                } else {
                    false
                }
            }
        };
        if commit {
            if let Some(offset) = pq.commit() {
                c.offset_store.update(&mq, offset, false);
            }
        } else {
            let again: Vec<MessageExt> = msgs
                .into_iter()
                .map(|mut m| {
                    m.reconsume_times += 1;
                    m
                })
                .collect();
            pq.rollback(again);
            let pause = ctx.suspend_current_queue_time;
            drop(_guard);
            drop(c);
            tokio::time::sleep(pause).await;
        }
    }
}

fn register_processors(reg: &ProcessorRegistry, weak: Weak<PushInner>) {
    let w = weak.clone();
    reg.register(
        request_code::NOTIFY_CONSUMER_IDS_CHANGED,
        processor_fn(move |_ctx, _req: RemotingCommand| {
            let w = w.clone();
            async move {
                if let Some(c) = w.upgrade() {
                    tracing::debug!(group = %c.config.group, "consumer ids changed");
                    c.rebalance_now.notify_one();
                }
                Ok(None)
            }
        }),
    );
    let w = weak.clone();
    reg.register(
        request_code::RESET_CONSUMER_CLIENT_OFFSET,
        processor_fn(move |_ctx, req: RemotingCommand| {
            let w = w.clone();
            async move {
                let oneway = req.is_oneway();
                if let Some(c) = w.upgrade() {
                    let h: ResetOffsetRequestHeader = req.decode_header()?;
                    let body = ResetOffsetBody::decode(req.body.as_deref().unwrap_or(b"{}"))?;
                    c.reset_offsets(&h.topic, body.offset_table).await;
                }
                Ok((!oneway).then(|| RemotingCommand::response(response_code::SUCCESS, None)))
            }
        }),
    );
    let w = weak.clone();
    reg.register(
        request_code::GET_CONSUMER_RUNNING_INFO,
        processor_fn(move |_ctx, _req: RemotingCommand| {
            let w = w.clone();
            async move {
                let Some(c) = w.upgrade() else {
                    return Ok(Some(RemotingCommand::response(
                        response_code::SYSTEM_ERROR,
                        Some("consumer gone".into()),
                    )));
                };
                let info = c.running_info();
                Ok(Some(
                    RemotingCommand::response(response_code::SUCCESS, None)
                        .with_body(info.encode()),
                ))
            }
        }),
    );
    let w = weak;
    reg.register(
        request_code::CONSUME_MESSAGE_DIRECTLY,
        processor_fn(move |_ctx, req: RemotingCommand| {
            let w = w.clone();
            async move {
                let Some(c) = w.upgrade() else {
                    return Ok(Some(RemotingCommand::response(
                        response_code::SYSTEM_ERROR,
                        Some("consumer gone".into()),
                    )));
                };
                let broker = req.ext("brokerName").unwrap_or_default().to_string();
                let body = req.body.clone().unwrap_or_default();
                let Some(d) = decode_stored_many(&body, false).into_iter().next() else {
                    return Ok(Some(RemotingCommand::response(
                        response_code::SYSTEM_ERROR,
                        Some("no message in body".into()),
                    )));
                };
                let msg = MessageExt::from_decoded(d, &broker);
                let result = c.consume_directly(msg).await;
                Ok(Some(
                    RemotingCommand::response(response_code::SUCCESS, None)
                        .with_body(result.encode()),
                ))
            }
        }),
    );
}

impl PushInner {
    /// RESET_CONSUMER_CLIENT_OFFSET: drop the affected queues, store the new
    /// offsets on the broker, and let the rebalance restart them there.
    async fn reset_offsets(&self, topic: &str, table: BTreeMap<MessageQueue, i64>) {
        let affected: Vec<(MessageQueue, Arc<ProcessQueue>)> = self
            .process_queues
            .lock()
            .iter()
            .filter(|(q, _)| q.topic == topic && table.contains_key(*q))
            .map(|(q, p)| (q.clone(), Arc::clone(p)))
            .collect();
        for (mq, pq) in &affected {
            pq.set_dropped();
            pq.clear();
            if let Some(o) = table.get(mq) {
                self.offset_store.update(mq, *o, false);
                if let Err(e) = self.offset_store.persist(mq).await {
                    tracing::warn!(?mq, error = %e, "cannot store reset offset");
                }
            }
            self.offset_store.remove(mq);
            self.process_queues.lock().remove(mq);
        }
        tracing::info!(topic, queues = affected.len(), "offsets reset by broker");
        self.rebalance_now.notify_one();
    }

    fn running_info(&self) -> ConsumerRunningInfo {
        let mut info = ConsumerRunningInfo::default();
        let props = [
            ("consumerGroup", self.config.group.clone()),
            (
                "messageModel",
                self.config.message_model.java_name().to_string(),
            ),
            (
                "consumeFromWhere",
                self.config.consume_from_where.java_name().to_string(),
            ),
            (
                "consumeType",
                ConsumeType::ConsumePassively.java_name().to_string(),
            ),
            ("consumeOrderly", self.is_orderly().to_string()),
            ("PROP_CLIENT_VERSION", "apogee".to_string()),
            ("PROP_CONSUMER_START_TIMESTAMP", "0".to_string()),
        ];
        for (k, v) in props {
            info.properties
                .insert(k.to_string(), serde_json::Value::String(v));
        }
        info.subscription_set = self.subscriptions.read().values().cloned().collect();
        let offsets = self.offset_store.snapshot();
        for (mq, pq) in self.process_queues.lock().iter() {
            info.mq_table.insert(
                mq.clone(),
                serde_json::json!({
                    "commitOffset": offsets.get(mq).copied().unwrap_or(-1),
                    "cachedMsgCount": pq.count(),
                    "cachedMsgSizeInMiB": pq.bytes() / (1024 * 1024),
                    "locked": pq.is_locked(),
                    "droped": pq.is_dropped(),
                }),
            );
        }
        info
    }

    async fn consume_directly(&self, mut msg: MessageExt) -> ConsumeMessageDirectlyResult {
        reset_retry_topic(&self.config.group, &mut msg);
        let start = Instant::now();
        let mq = msg.queue();
        let msgs = [msg];
        let (order, result) = match &self.listener {
            Listener::Concurrently(l) => {
                let mut ctx = ConsumeConcurrentlyContext {
                    queue: mq,
                    delay_level_when_next_consume: 0,
                };
                let r = AssertUnwindSafe(l.consume(&msgs, &mut ctx))
                    .catch_unwind()
                    .await;
                (
                    false,
                    match r {
                        Ok(ConsumeConcurrentlyStatus::Success) => CMResult::CrSuccess,
                        Ok(ConsumeConcurrentlyStatus::ReconsumeLater) => CMResult::CrLater,
                        Err(_) => CMResult::CrThrowException,
                    },
                )
            }
            Listener::Orderly(l) => {
                let mut ctx = ConsumeOrderlyContext {
                    queue: mq,
                    suspend_current_queue_time: Duration::from_secs(1),
                };
                let r = AssertUnwindSafe(l.consume(&msgs, &mut ctx))
                    .catch_unwind()
                    .await;
                (
                    true,
                    match r {
                        Ok(ConsumeOrderlyStatus::Success) => CMResult::CrSuccess,
                        Ok(ConsumeOrderlyStatus::SuspendCurrentQueueAMoment) => CMResult::CrLater,
                        Err(_) => CMResult::CrThrowException,
                    },
                )
            }
        };
        ConsumeMessageDirectlyResult {
            order,
            auto_commit: true,
            consume_result: Some(result),
            remark: None,
            spent_time_mills: start.elapsed().as_millis() as i64,
        }
    }
}
