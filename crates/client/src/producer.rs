//! The producer: route discovery (with the `TBW102` fallback for topics
//! that do not exist yet), queue selection with latency-based fault
//! avoidance, retries on another broker, SYSTEM_BUSY back-off, zlib
//! compression, batches split to the size limit, ordered sends through a
//! [`QueueSelector`], heartbeats and unregistration.
//!
//! The send path reads the publish table through an `Arc` snapshot (no
//! lock) and builds each request frame once; a retry only rewrites the
//! queue id and broker name fields.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use apogee_protocol::body::{HeartbeatData, ProducerData, TopicRouteData};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{SendMessageRequestHeaderV2Ref, SendMessageResponseHeader};
use apogee_protocol::message::compress::{compress_zlib, DEFAULT_COMPRESS_OVER, DEFAULT_LEVEL};
use apogee_protocol::message::{batch, keys, properties, sysflag, BatchMessage, UniqIdGenerator};
use apogee_protocol::topic;
use apogee_protocol::RemotingCommand;
use apogee_remoting::ProcessorRegistry;
use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use crate::error::{ClientError, Result};
use crate::fault::FaultStrategy;
use crate::instance::{now_millis, ClientInstance, ClientOptions, AUTO_CREATE_TOPIC_KEY};
use crate::message::{Message, MessageExt, MessageQueue};
use crate::request_reply::PendingReplies;
use crate::route::TopicPublishInfo;
use crate::transaction::{LocalTransactionState, TransactionChecker, TransactionSendResult};

/// Java's default producer group.
pub const DEFAULT_PRODUCER_GROUP: &str = "DEFAULT_PRODUCER";
/// Group of the producer consumers use for their retry fallback.
pub const CLIENT_INNER_PRODUCER_GROUP: &str = "CLIENT_INNER_PRODUCER";
/// Java's default `maxMessageSize`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Broker codes after which Java retries a send on another broker.
const RETRY_CODES: &[i32] = &[
    response_code::TOPIC_NOT_EXIST,
    response_code::SERVICE_NOT_AVAILABLE,
    response_code::SYSTEM_ERROR,
    response_code::NO_PERMISSION,
    response_code::NO_BUYER_ID,
    response_code::NOT_IN_CURRENT_UNIT,
];

/// How the broker stored a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendStatus {
    SendOk,
    FlushDiskTimeout,
    FlushSlaveTimeout,
    SlaveNotAvailable,
}

/// Outcome of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    pub status: SendStatus,
    /// The client-made UNIQ_KEY (for a batch, all of them joined by `,`).
    pub msg_id: String,
    /// The broker's offset message id (for a batch, joined by `,`).
    pub offset_msg_id: String,
    pub queue: MessageQueue,
    pub queue_offset: i64,
    pub transaction_id: Option<String>,
    pub region_id: Option<String>,
    /// Set for a timer message (RocketMQ 5.3 brokers): pass it to
    /// [`Producer::recall_message`] to cancel the message before it is due.
    pub recall_handle: Option<String>,
}

/// Chooses the queue of an ordered send.
pub trait QueueSelector: Send + Sync {
    /// Index into `queues` (non-empty) for `msg` sent with `key`.
    fn select(&self, queues: &[MessageQueue], msg: &Message, key: &str) -> usize;
}

/// Java's `SelectMessageQueueByHash`: `|key.hashCode()| % queues`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HashQueueSelector;

impl QueueSelector for HashQueueSelector {
    fn select(&self, queues: &[MessageQueue], _msg: &Message, key: &str) -> usize {
        let h = apogee_protocol::body::java_string_hash(key);
        (h.unsigned_abs() as usize) % queues.len().max(1)
    }
}

/// Random queue (Java `SelectMessageQueueByRandom`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomQueueSelector;

impl QueueSelector for RandomQueueSelector {
    fn select(&self, queues: &[MessageQueue], _msg: &Message, _key: &str) -> usize {
        rand::random::<usize>() % queues.len().max(1)
    }
}

/// Producer settings (Java `DefaultMQProducer` names).
#[derive(Clone)]
pub struct ProducerConfig {
    pub group: String,
    pub send_timeout: Duration,
    /// Extra attempts of a failed sync/async send (`retryTimesWhenSendFailed`).
    pub retry_times_when_send_failed: u32,
    /// Bodies longer than this are zlib-compressed (`compressMsgBodyOverHowmuch`).
    pub compress_msg_body_over_howmuch: usize,
    pub compress_level: u32,
    pub max_message_size: usize,
    /// Queue count asked for when the broker auto-creates a topic.
    pub default_topic_queue_nums: i32,
    /// Template topic for auto-creation (`createTopicKey`).
    pub create_topic_key: String,
    /// Latency-based broker avoidance (`sendLatencyFaultEnable`).
    pub send_latency_fault_enable: bool,
    /// Retry on another broker when the status is not SEND_OK.
    pub retry_another_broker_when_not_store_ok: bool,
    /// A batch request never carries more bytes than this.
    pub batch_max_bytes: usize,
    /// … nor more messages than this.
    pub batch_max_count: usize,
    /// First back-off after SYSTEM_BUSY (doubles per busy answer, ≤ 1 s).
    pub busy_backoff: Duration,
    pub queue_selector: Arc<dyn QueueSelector>,
}

impl std::fmt::Debug for ProducerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerConfig")
            .field("group", &self.group)
            .field("send_timeout", &self.send_timeout)
            .field(
                "retry_times_when_send_failed",
                &self.retry_times_when_send_failed,
            )
            .finish_non_exhaustive()
    }
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            group: DEFAULT_PRODUCER_GROUP.to_string(),
            send_timeout: Duration::from_secs(3),
            retry_times_when_send_failed: 2,
            compress_msg_body_over_howmuch: DEFAULT_COMPRESS_OVER,
            compress_level: DEFAULT_LEVEL,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            default_topic_queue_nums: 4,
            create_topic_key: AUTO_CREATE_TOPIC_KEY.to_string(),
            send_latency_fault_enable: true,
            retry_another_broker_when_not_store_ok: false,
            batch_max_bytes: DEFAULT_MAX_MESSAGE_SIZE,
            batch_max_count: usize::MAX,
            busy_backoff: Duration::from_millis(10),
            queue_selector: Arc::new(HashQueueSelector),
        }
    }
}

/// Builds a [`Producer`].
#[derive(Debug, Default, Clone)]
pub struct ProducerBuilder {
    options: ClientOptions,
    config: ProducerConfig,
    checker: Option<Checker>,
}

/// The transaction checker, shown by name only.
#[derive(Clone)]
struct Checker(Arc<dyn TransactionChecker>);

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransactionChecker")
    }
}

macro_rules! setters {
    ($target:ident; $($(#[$m:meta])* $name:ident : $ty:ty),* $(,)?) => {$(
        $(#[$m])*
        pub fn $name(mut self, v: $ty) -> Self {
            self.$target.$name = v.into();
            self
        }
    )*};
}
pub(crate) use setters;

impl ProducerBuilder {
    /// NameServer list, `host:port;host2:port`.
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

    pub fn client_ip(mut self, ip: impl Into<String>) -> Self {
        self.options.client_ip = Some(ip.into());
        self
    }

    /// All shared client options at once.
    pub fn options(mut self, options: ClientOptions) -> Self {
        self.options = options;
        self
    }

    pub fn queue_selector(mut self, selector: Arc<dyn QueueSelector>) -> Self {
        self.config.queue_selector = selector;
        self
    }

    /// Makes this a transactional producer: `checker` answers the broker's
    /// check-backs for half messages left undecided (needed by
    /// [`Producer::send_in_transaction`]).
    pub fn transaction_checker(mut self, checker: impl TransactionChecker) -> Self {
        self.checker = Some(Checker(Arc::new(checker)));
        self
    }

    setters!(options;
        api_timeout: Duration,
        poll_name_server_interval: Duration,
        heartbeat_broker_interval: Duration,
    );

    setters!(config;
        send_timeout: Duration,
        retry_times_when_send_failed: u32,
        compress_msg_body_over_howmuch: usize,
        compress_level: u32,
        max_message_size: usize,
        default_topic_queue_nums: i32,
        create_topic_key: String,
        send_latency_fault_enable: bool,
        retry_another_broker_when_not_store_ok: bool,
        batch_max_bytes: usize,
        batch_max_count: usize,
        busy_backoff: Duration,
    );

    /// Checks the settings and creates the (not yet started) producer.
    pub fn build(self) -> Result<Producer> {
        topic::validate_group(&self.config.group)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let processors = ProcessorRegistry::new();
        let replies = Arc::new(PendingReplies::default());
        crate::request_reply::register(&processors, Arc::clone(&replies));
        let transactional = self.checker.is_some();
        if let Some(Checker(c)) = self.checker {
            crate::transaction::register_checker(&processors, c);
        }
        let instance = ClientInstance::new(self.options, processors)?;
        Ok(Producer {
            inner: ProducerInner::new(instance, self.config),
            tasks: parking_lot::Mutex::new(Vec::new()),
            replies,
            transactional,
        })
    }
}

const CREATED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

/// A message producer. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Producer {
    inner: Arc<ProducerInner>,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    /// Requests waiting for replies ([`Producer::request`]).
    replies: Arc<PendingReplies>,
    /// Built with a transaction checker.
    transactional: bool,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("group", &self.inner.config.group)
            .field("client_id", &self.inner.instance.client_id)
            .finish()
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl Producer {
    pub fn builder() -> ProducerBuilder {
        ProducerBuilder::default()
    }

    pub fn client_id(&self) -> &str {
        self.inner.instance.client_id()
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Starts route refresh and broker heartbeats. Must be called (inside a
    /// tokio runtime) before sending.
    pub async fn start(&self) -> Result<()> {
        if self
            .inner
            .state
            .compare_exchange(CREATED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ClientError::NotRunning(
                "producer already started or shut down",
            ));
        }
        let mut tasks = self.tasks.lock();
        tasks.push(spawn_periodic(
            Arc::downgrade(&self.inner),
            Duration::from_millis(10),
            self.inner.instance.options.poll_name_server_interval,
            |p| async move { p.refresh_all_routes().await },
        ));
        tasks.push(spawn_periodic(
            Arc::downgrade(&self.inner),
            Duration::from_secs(1),
            self.inner.instance.options.heartbeat_broker_interval,
            |p| async move {
                p.heartbeat().await;
            },
        ));
        tracing::info!(group = %self.inner.config.group, client_id = %self.client_id(), "producer started");
        Ok(())
    }

    /// Stops the background tasks, unregisters from every broker and closes
    /// the connections.
    pub async fn shutdown(&self) {
        if self.inner.state.swap(STOPPED, Ordering::AcqRel) != RUNNING {
            return;
        }
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
        self.inner
            .instance
            .unregister(Some(&self.inner.config.group), None)
            .await;
        self.inner.instance.close().await;
        tracing::info!(group = %self.inner.config.group, "producer shut down");
    }

    /// Sends synchronously, retrying on another broker after a failure.
    pub async fn send(&self, msg: Message) -> Result<SendResult> {
        self.inner.send(msg, self.inner.config.send_timeout).await
    }

    /// Sends `msg` as a half message (invisible to consumers), runs
    /// `execute` (the local transaction) once it is stored, and commits or
    /// rolls it back as `execute` decides; `Unknown` leaves it to the
    /// check-back. A half message that was not stored is rolled back
    /// without running `execute`. Needs a
    /// [`transaction_checker`](ProducerBuilder::transaction_checker).
    pub async fn send_in_transaction(
        &self,
        mut msg: Message,
        execute: impl FnOnce(&Message, &SendResult) -> LocalTransactionState,
    ) -> Result<TransactionSendResult> {
        if !self.transactional {
            return Err(ClientError::InvalidArgument(
                "send_in_transaction needs a producer built with a transaction_checker".into(),
            ));
        }
        // Half messages cannot be delayed (Java clears the level too).
        msg.properties.remove(keys::DELAY_TIME_LEVEL);
        msg.properties
            .insert(keys::TRANSACTION_PREPARED.into(), "true".into());
        msg.properties
            .insert(keys::PRODUCER_GROUP.into(), self.inner.config.group.clone());
        let send = self.send(msg.clone()).await?;
        let state = if send.status == SendStatus::SendOk {
            execute(&msg, &send)
        } else {
            LocalTransactionState::Rollback
        };
        if let Err(e) = crate::transaction::end_after_send(
            &self.inner.instance,
            &self.inner.config.group,
            &send,
            state,
            None,
        )
        .await
        {
            // The broker's check-back settles it.
            tracing::warn!(msg_id = %send.msg_id, error = %e, "END_TRANSACTION not sent; the broker will check back");
        }
        Ok(TransactionSendResult { send, state })
    }

    /// Sends a request and waits up to `timeout` for its reply (Java
    /// `DefaultMQProducer.request`); the responder answers with
    /// [`create_reply`](crate::create_reply).
    pub async fn request(&self, mut msg: Message, timeout: Duration) -> Result<MessageExt> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = UniqIdGenerator::global().next_id();
        msg.properties
            .insert(keys::CORRELATION_ID.into(), id.clone());
        msg.properties.insert(
            keys::MESSAGE_REPLY_TO_CLIENT.into(),
            self.inner.instance.client_id.clone(),
        );
        msg.properties
            .insert(keys::MESSAGE_TTL.into(), timeout.as_millis().to_string());
        if self.inner.instance.cached_route(&msg.topic).is_none() {
            // The broker pushes the reply down the connection it knows this
            // client by: heartbeat before the first request to a topic.
            self.inner.publish_info(&msg.topic).await?;
            self.inner.heartbeat().await;
        }
        let reply = self.replies.wait(&id);
        if let Err(e) = self.inner.send(msg, timeout).await {
            self.replies.forget(&id);
            return Err(e);
        }
        match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok(m)) => Ok(m),
            _ => {
                self.replies.forget(&id);
                Err(ClientError::Timeout(format!(
                    "no reply to request {id} within {timeout:?}"
                )))
            }
        }
    }

    /// Cancels a timer message before it is due (RECALL_MESSAGE, RocketMQ
    /// 5.3): `handle` is [`SendResult::recall_handle`] of its send. Returns
    /// the recalled message's id. The broker does not look the message up:
    /// an unknown one is "recalled" too; one already due is refused.
    pub async fn recall_message(&self, topic: &str, handle: &str) -> Result<String> {
        self.inner.ensure_running()?;
        let decoded = apogee_protocol::recall::RecallHandle::decode(handle)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let instance = &self.inner.instance;
        let addr = instance
            .master_addr_or_refresh(&decoded.broker_name, topic)
            .await?;
        let h = apogee_protocol::header::send::RecallMessageRequestHeader {
            producer_group: Some(self.inner.config.group.clone()),
            topic: topic.to_owned(),
            recall_handle: handle.to_owned(),
            rpc: apogee_protocol::header::RpcFields {
                broker_name: Some(decoded.broker_name),
                ..Default::default()
            },
        };
        let cmd = RemotingCommand::request(request_code::RECALL_MESSAGE).with_header(&h);
        let resp = instance
            .invoke_timeout(&addr, cmd, self.inner.config.send_timeout)
            .await?;
        if resp.code != response_code::SUCCESS {
            return Err(ClientError::broker(&addr, &resp));
        }
        let r: apogee_protocol::header::send::RecallMessageResponseHeader = resp.decode_header()?;
        Ok(r.msg_id)
    }

    /// Like [`send`](Self::send) with an explicit timeout for all attempts.
    pub async fn send_with_timeout(&self, msg: Message, timeout: Duration) -> Result<SendResult> {
        self.inner.send(msg, timeout).await
    }

    /// A send that does not borrow the producer: the returned future can be
    /// spawned or collected, so many sends are in flight at once.
    pub fn send_async(
        &self,
        msg: Message,
    ) -> impl std::future::Future<Output = Result<SendResult>> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            let timeout = inner.config.send_timeout;
            inner.send(msg, timeout).await
        }
    }

    /// Fire and forget: one attempt, no response awaited.
    pub async fn send_oneway(&self, msg: Message) -> Result<()> {
        self.inner.send_oneway(msg).await
    }

    /// Sends to the queue the producer's selector picks for `key` (by
    /// default: hash of the key over the topic's write queues), so all
    /// messages with one key keep their order.
    pub async fn send_ordered(&self, msg: Message, key: &str) -> Result<SendResult> {
        let selector = Arc::clone(&self.inner.config.queue_selector);
        self.inner.send_select(msg, selector.as_ref(), key).await
    }

    /// Like [`send_ordered`](Self::send_ordered) with a given selector.
    pub async fn send_with_selector(
        &self,
        msg: Message,
        selector: &dyn QueueSelector,
        key: &str,
    ) -> Result<SendResult> {
        self.inner.send_select(msg, selector, key).await
    }

    /// Sends to exactly this queue (one attempt).
    pub async fn send_to_queue(&self, msg: Message, queue: &MessageQueue) -> Result<SendResult> {
        self.inner.send_to_queue(msg, queue).await
    }

    /// Sends messages of one topic as batches, split so that no request
    /// exceeds `batch_max_bytes` / `batch_max_count`; one result per request.
    pub async fn send_batch(&self, msgs: Vec<Message>) -> Result<Vec<SendResult>> {
        self.inner.send_batch(msgs).await
    }

    /// The topic's current write queues (fetching the route if needed).
    pub async fn fetch_publish_queues(&self, topic: &str) -> Result<Vec<MessageQueue>> {
        self.inner.ensure_running()?;
        Ok(self.inner.publish_info(topic).await?.queues.clone())
    }

    /// Whether the fault strategy currently avoids `broker_name`.
    pub fn is_broker_available(&self, broker_name: &str) -> bool {
        self.inner.fault.is_available(broker_name)
    }
}

/// Runs `f` after `first`, then every `period`, until the owner is dropped.
pub(crate) fn spawn_periodic<T, F, Fut>(
    owner: Weak<T>,
    first: Duration,
    period: Duration,
    f: F,
) -> JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(o) = owner.upgrade() else { return };
            f(o).await;
        }
    })
}

/// A message ready for the wire: properties string, body (maybe
/// compressed) and flags, computed once for all attempts.
struct Prepared {
    topic: String,
    body: Bytes,
    properties: String,
    sys_flag: i32,
    flag: i32,
    msg_id: String,
    batch: bool,
    /// A reply of request-reply: sent with SEND_REPLY_MESSAGE_V2.
    reply: bool,
    reconsume_times: i32,
    max_reconsume_times: Option<i32>,
}

pub(crate) struct ProducerInner {
    pub(crate) instance: Arc<ClientInstance>,
    pub(crate) config: ProducerConfig,
    /// Per topic, sharded: a producer of 100,000 topics must not copy a
    /// whole table to add one.
    publish: dashmap::DashMap<String, Arc<TopicPublishInfo>>,
    publish_update: tokio::sync::Mutex<()>,
    fault: FaultStrategy,
    state: AtomicU8,
}

impl ProducerInner {
    pub(crate) fn new(instance: Arc<ClientInstance>, config: ProducerConfig) -> Arc<Self> {
        Arc::new(ProducerInner {
            fault: FaultStrategy::new(config.send_latency_fault_enable),
            instance,
            config,
            publish: dashmap::DashMap::new(),
            publish_update: tokio::sync::Mutex::new(()),
            state: AtomicU8::new(CREATED),
        })
    }

    /// An internal producer already running on a consumer's instance.
    pub(crate) fn new_running(instance: Arc<ClientInstance>, config: ProducerConfig) -> Arc<Self> {
        let p = Self::new(instance, config);
        p.state.store(RUNNING, Ordering::Release);
        p
    }

    fn ensure_running(&self) -> Result<()> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => Ok(()),
            CREATED => Err(ClientError::NotRunning("producer not started")),
            _ => Err(ClientError::NotRunning("producer shut down")),
        }
    }

    async fn heartbeat(&self) {
        let data = HeartbeatData {
            client_id: self.instance.client_id.clone(),
            producer_data_set: vec![ProducerData {
                group_name: self.config.group.clone(),
            }],
            ..Default::default()
        };
        self.instance.send_heartbeat(&data, true).await;
    }

    async fn refresh_all_routes(&self) {
        let topics: Vec<String> = self.publish.iter().map(|e| e.key().clone()).collect();
        for t in topics {
            if let Err(e) = self.refresh_publish(&t, false).await {
                tracing::debug!(topic = %t, error = %e, "route refresh failed");
            }
        }
    }

    fn publish_cached(&self, topic: &str) -> Option<Arc<TopicPublishInfo>> {
        let info = self.publish.get(topic).map(|e| Arc::clone(e.value()))?;
        info.ok().then_some(info)
    }

    /// The publish list of `topic` from the snapshot, fetched on first use.
    pub(crate) async fn publish_info(&self, topic: &str) -> Result<Arc<TopicPublishInfo>> {
        if let Some(info) = self.publish_cached(topic) {
            return Ok(info);
        }
        let _g = self.publish_update.lock().await;
        // Another sender may have fetched it while we waited.
        if let Some(info) = self.publish_cached(topic) {
            return Ok(info);
        }
        self.refresh_publish(topic, true).await
    }

    /// Fetches the route; for an unknown topic falls back to the
    /// `createTopicKey` route (the broker creates the topic on first send).
    async fn refresh_publish(
        &self,
        topic: &str,
        allow_default: bool,
    ) -> Result<Arc<TopicPublishInfo>> {
        let route = match self.instance.fetch_route(topic).await {
            Ok(r) => r,
            Err(e)
                if allow_default && e.response_code() == Some(response_code::TOPIC_NOT_EXIST) =>
            {
                let mut r = self
                    .instance
                    .fetch_route(&self.config.create_topic_key)
                    .await?;
                for qd in &mut r.queue_datas {
                    let n = self.config.default_topic_queue_nums.min(qd.read_queue_nums);
                    qd.read_queue_nums = n;
                    qd.write_queue_nums = n;
                }
                tracing::debug!(topic, "topic not found; using the auto-create route");
                r
            }
            Err(e) => return Err(e),
        };
        self.install_route(topic, route)
    }

    fn install_route(&self, topic: &str, route: TopicRouteData) -> Result<Arc<TopicPublishInfo>> {
        let (route, changed) = self.instance.store_route(topic, route);
        if !changed {
            if let Some(info) = self.publish_cached(topic) {
                return Ok(info);
            }
        }
        let info = Arc::new(TopicPublishInfo::from_route(topic, route));
        self.publish.insert(topic.to_string(), Arc::clone(&info));
        if info.ok() {
            Ok(info)
        } else {
            Err(ClientError::NoRoute(topic.to_string()))
        }
    }

    fn check_message(&self, msg: &Message) -> Result<()> {
        topic::validate_topic(&msg.topic)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        if topic::is_not_allowed_send_topic(&msg.topic) {
            return Err(ClientError::InvalidArgument(format!(
                "sending to topic {} is not allowed",
                msg.topic
            )));
        }
        if msg.body.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the message body is empty".into(),
            ));
        }
        if msg.body.len() > self.config.max_message_size {
            return Err(ClientError::InvalidArgument(format!(
                "the message body is {} bytes, more than the maximum of {}",
                msg.body.len(),
                self.config.max_message_size
            )));
        }
        Ok(())
    }

    fn prepare(&self, mut msg: Message) -> Result<Prepared> {
        self.check_message(&msg)?;
        // A generated UNIQ_KEY goes straight into the encoded properties
        // below rather than into the message's map first.
        let (msg_id, generated) = match msg.properties.get(keys::UNIQ_KEY) {
            Some(id) => (id.clone(), false),
            None => (UniqIdGenerator::global().next_id(), true),
        };
        // Retry-topic sends (a consumer's fallback) carry the counters in
        // the header, not as properties (Java `sendKernelImpl`).
        let mut reconsume_times = 0;
        let mut max_reconsume_times = None;
        if topic::is_retry_topic(&msg.topic) {
            if let Some(v) = msg.properties.remove(keys::RECONSUME_TIME) {
                reconsume_times = v.trim().parse().unwrap_or(0);
            }
            if let Some(v) = msg.properties.remove(keys::MAX_RECONSUME_TIMES) {
                max_reconsume_times = v.trim().parse().ok();
            }
        }
        let mut props = msg.properties_string();
        if generated {
            properties::append(&mut props, keys::UNIQ_KEY, &msg_id);
        }
        properties::check_len(&props).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let mut sys_flag = 0;
        if msg
            .properties
            .get(keys::TRANSACTION_PREPARED)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            sys_flag |= sysflag::TRANSACTION_PREPARED_TYPE;
        }
        let reply = msg.properties.get(keys::MESSAGE_TYPE).map(String::as_str)
            == Some(keys::REPLY_MESSAGE_FLAG);
        let body = if msg.body.len() > self.config.compress_msg_body_over_howmuch {
            sys_flag |= sysflag::COMPRESSED | sysflag::COMPRESSION_ZLIB;
            Bytes::from(compress_zlib(&msg.body, self.config.compress_level))
        } else {
            msg.body
        };
        Ok(Prepared {
            topic: msg.topic,
            body,
            properties: props,
            sys_flag,
            flag: msg.flag,
            msg_id,
            batch: false,
            reply,
            reconsume_times,
            max_reconsume_times,
        })
    }

    /// The request of one send attempt: a `SendMessageRequestHeaderV2`
    /// written from borrowed values (`SendMessageRequestHeaderV2Ref`).
    /// Building the typed header first cloned the group, topic and
    /// properties per message only to copy them again.
    fn build_command(&self, p: &Prepared) -> RemotingCommand {
        send_command(&self.config, p, now_millis())
    }

    /// A consumer's retry-topic fallback send (default timeout and retries).
    pub(crate) async fn send_for_consumer(&self, msg: Message) -> Result<SendResult> {
        self.send(msg, self.config.send_timeout).await
    }

    async fn send(&self, msg: Message, timeout: Duration) -> Result<SendResult> {
        self.ensure_running()?;
        let p = self.prepare(msg)?;
        self.send_with_retries(p, timeout).await
    }

    async fn send_oneway(&self, msg: Message) -> Result<()> {
        self.ensure_running()?;
        let p = self.prepare(msg)?;
        let info = self.publish_info(&p.topic).await?;
        let mq = self
            .fault
            .select(&info, None)
            .ok_or_else(|| ClientError::NoRoute(p.topic.clone()))?
            .clone();
        let addr = self
            .instance
            .master_addr_or_refresh(&mq.broker_name, &p.topic)
            .await?;
        let mut cmd = self.build_command(&p);
        set_target(&mut cmd, &mq);
        cmd.mark_oneway();
        self.instance.remoting.invoke_oneway(&addr, cmd).await?;
        Ok(())
    }

    /// The retry loop of sync and async sends (Java `sendDefaultImpl`).
    async fn send_with_retries(&self, p: Prepared, timeout: Duration) -> Result<SendResult> {
        let deadline = Instant::now() + timeout;
        let info = self.publish_info(&p.topic).await?;
        let total = 1 + self.config.retry_times_when_send_failed;
        // The first attempt sends this command; a retry builds a new one.
        let mut first_cmd = Some(self.build_command(&p));
        let mut attempts = 0u32;
        let mut busy = 0u32;
        let mut last_broker: Option<String> = None;
        let mut last_err: Option<ClientError> = None;
        while attempts < total {
            // One clock read per attempt serves the deadline check and, as
            // the attempt's start (after the route lookup, like Java's
            // beginTimestampPrev), the latency fault avoidance records.
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let Some(mq) = self.fault.select(&info, last_broker.as_deref()).cloned() else {
                return Err(ClientError::NoRoute(p.topic.clone()));
            };
            let addr = match self
                .instance
                .master_addr_or_refresh(&mq.broker_name, &p.topic)
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    attempts += 1;
                    last_broker = Some(mq.broker_name.clone());
                    last_err = Some(e);
                    continue;
                }
            };
            let mut cmd = first_cmd.take().unwrap_or_else(|| self.build_command(&p));
            set_target(&mut cmd, &mq);
            let outcome = self
                .instance
                .remoting
                .invoke_until(&addr, cmd, deadline.into(), deadline - now)
                .await
                .map_err(ClientError::from)
                .and_then(|resp| process_send_response(&addr, &mq, &p, &resp));
            let latency = now.elapsed();
            match outcome {
                Ok(res) => {
                    self.fault.update(&mq.broker_name, latency, false);
                    if res.status != SendStatus::SendOk
                        && self.config.retry_another_broker_when_not_store_ok
                        && attempts + 1 < total
                    {
                        attempts += 1;
                        last_broker = Some(mq.broker_name.clone());
                        continue;
                    }
                    return Ok(res);
                }
                Err(e) if e.response_code() == Some(response_code::SYSTEM_BUSY) => {
                    // The broker sheds load: wait and try again (another
                    // queue by round robin) until the deadline, without
                    // spending a retry or bothering the caller.
                    self.fault.update(&mq.broker_name, latency, false);
                    let backoff = self
                        .config
                        .busy_backoff
                        .saturating_mul(1 << busy.min(7))
                        .min(Duration::from_secs(1));
                    busy += 1;
                    tracing::debug!(broker = %addr, ?backoff, "broker busy, backing off");
                    last_err = Some(e);
                    let wake = (Instant::now() + backoff).min(deadline);
                    tokio::time::sleep_until(wake.into()).await;
                }
                Err(e) => {
                    self.fault.update(&mq.broker_name, latency, true);
                    attempts += 1;
                    last_broker = Some(mq.broker_name.clone());
                    let retriable = match &e {
                        ClientError::Broker { code, .. } => RETRY_CODES.contains(code),
                        ClientError::Remoting(_) | ClientError::BrokerNotFound(_) => true,
                        _ => false,
                    };
                    tracing::debug!(broker = %addr, attempt = attempts, error = %e, "send attempt failed");
                    if !retriable {
                        return Err(e);
                    }
                    if e.response_code() == Some(response_code::TOPIC_NOT_EXIST) {
                        // the route may be stale; the next snapshot picks it up
                        let _ = self.refresh_publish(&p.topic, false).await;
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(match last_err {
            Some(last) => ClientError::SendFailed {
                attempts: attempts.max(1),
                last: Box::new(last),
            },
            None => ClientError::Timeout(format!("send to {} timed out", p.topic)),
        })
    }

    /// One attempt to a given queue, with SYSTEM_BUSY back-off.
    async fn send_once_to(
        &self,
        p: Prepared,
        mq: &MessageQueue,
        timeout: Duration,
    ) -> Result<SendResult> {
        let deadline = Instant::now() + timeout;
        let addr = self
            .instance
            .master_addr_or_refresh(&mq.broker_name, &p.topic)
            .await?;
        let mut cmd = self.build_command(&p);
        set_target(&mut cmd, mq);
        let mut busy = 0u32;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(format!("send to {mq:?} timed out")));
            }
            let begin = Instant::now();
            let outcome = self
                .instance
                .remoting
                .invoke(&addr, cmd.clone(), deadline - now)
                .await
                .map_err(ClientError::from)
                .and_then(|resp| process_send_response(&addr, mq, &p, &resp));
            let latency = begin.elapsed();
            match outcome {
                Err(e) if e.response_code() == Some(response_code::SYSTEM_BUSY) => {
                    let backoff = self
                        .config
                        .busy_backoff
                        .saturating_mul(1 << busy.min(7))
                        .min(Duration::from_secs(1));
                    busy += 1;
                    let wake = (Instant::now() + backoff).min(deadline);
                    tokio::time::sleep_until(wake.into()).await;
                }
                other => {
                    self.fault.update(&mq.broker_name, latency, other.is_err());
                    return other;
                }
            }
        }
    }

    async fn send_select(
        &self,
        msg: Message,
        selector: &dyn QueueSelector,
        key: &str,
    ) -> Result<SendResult> {
        self.ensure_running()?;
        let start = Instant::now();
        let p = self.prepare(msg)?;
        let info = self.publish_info(&p.topic).await?;
        if info.queues.is_empty() {
            return Err(ClientError::NoRoute(p.topic.clone()));
        }
        // The selector sees the message as the user built it.
        let view = Message {
            topic: p.topic.clone(),
            flag: p.flag,
            body: Bytes::new(),
            properties: properties::decode(&p.properties),
        };
        let idx = selector.select(&info.queues, &view, key);
        let mq = info.queues.get(idx).cloned().ok_or_else(|| {
            ClientError::InvalidArgument(format!("selector returned queue index {idx}"))
        })?;
        let timeout = self.config.send_timeout.saturating_sub(start.elapsed());
        self.send_once_to(p, &mq, timeout).await
    }

    async fn send_to_queue(&self, msg: Message, mq: &MessageQueue) -> Result<SendResult> {
        self.ensure_running()?;
        if msg.topic != mq.topic {
            return Err(ClientError::InvalidArgument(format!(
                "message topic {} differs from queue topic {}",
                msg.topic, mq.topic
            )));
        }
        let p = self.prepare(msg)?;
        if self.instance.master_addr(&mq.broker_name).is_none() {
            self.publish_info(&p.topic).await?;
        }
        self.send_once_to(p, mq, self.config.send_timeout).await
    }

    async fn send_batch(&self, msgs: Vec<Message>) -> Result<Vec<SendResult>> {
        self.ensure_running()?;
        let groups = prepare_batches(
            msgs,
            self.config.max_message_size,
            self.config.batch_max_bytes,
            self.config.batch_max_count,
        )?;
        let mut results = Vec::with_capacity(groups.len());
        for g in groups {
            results.push(self.send_with_retries(g, self.config.send_timeout).await?);
        }
        Ok(results)
    }
}

/// See [`ProducerInner::build_command`].
fn send_command(config: &ProducerConfig, p: &Prepared, born_timestamp: i64) -> RemotingCommand {
    let code = if p.batch {
        request_code::SEND_BATCH_MESSAGE
    } else if p.reply {
        request_code::SEND_REPLY_MESSAGE_V2
    } else {
        request_code::SEND_MESSAGE_V2
    };
    let mut cmd = ClientInstance::request(code);
    SendMessageRequestHeaderV2Ref {
        producer_group: &config.group,
        topic: &p.topic,
        default_topic: &config.create_topic_key,
        default_topic_queue_nums: config.default_topic_queue_nums,
        queue_id: 0,
        sys_flag: p.sys_flag,
        born_timestamp,
        flag: p.flag,
        properties: &p.properties,
        reconsume_times: p.reconsume_times,
        unit_mode: false,
        max_reconsume_times: p.max_reconsume_times,
        batch: p.batch,
    }
    .write_ext(&mut cmd.ext_fields);
    cmd.with_body(p.body.clone())
}

fn set_target(cmd: &mut RemotingCommand, mq: &MessageQueue) {
    apogee_protocol::header::put(&mut cmd.ext_fields, "e", &mq.queue_id);
    cmd.ext_fields.insert("n", &mq.broker_name);
}

fn process_send_response(
    addr: &str,
    mq: &MessageQueue,
    p: &Prepared,
    resp: &RemotingCommand,
) -> Result<SendResult> {
    let status = match resp.code {
        response_code::SUCCESS => SendStatus::SendOk,
        response_code::FLUSH_DISK_TIMEOUT => SendStatus::FlushDiskTimeout,
        response_code::FLUSH_SLAVE_TIMEOUT => SendStatus::FlushSlaveTimeout,
        response_code::SLAVE_NOT_AVAILABLE => SendStatus::SlaveNotAvailable,
        _ => return Err(ClientError::broker(addr, resp)),
    };
    let h: SendMessageResponseHeader = resp.decode_header()?;
    let msg_id = match (&h.batch_uniq_id, p.batch) {
        (Some(id), true) if !id.is_empty() => id.clone(),
        _ => p.msg_id.clone(),
    };
    Ok(SendResult {
        status,
        msg_id,
        offset_msg_id: h.msg_id,
        queue: MessageQueue::new(mq.topic.clone(), mq.broker_name.clone(), h.queue_id),
        queue_offset: h.queue_offset,
        transaction_id: h.transaction_id,
        region_id: h.msg_region,
        recall_handle: h.recall_handle.filter(|s| !s.is_empty()),
    })
}

/// Validates a batch (one topic, no delay, no retry topic), stamps every
/// message with a UNIQ_KEY and splits it into requests that respect the
/// byte and count limits (each request's body is the exact encoded size).
fn prepare_batches(
    msgs: Vec<Message>,
    max_message_size: usize,
    max_bytes: usize,
    max_count: usize,
) -> Result<Vec<Prepared>> {
    let Some(first) = msgs.first() else {
        return Err(ClientError::InvalidArgument("empty batch".into()));
    };
    let topic_name = first.topic.clone();
    let wait = first.property(keys::WAIT_STORE_MSG_OK).map(str::to_string);
    topic::validate_topic(&topic_name).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
    if topic::is_retry_topic(&topic_name) {
        return Err(ClientError::InvalidArgument(
            "retry topics cannot be batched".into(),
        ));
    }
    let mut encoded = Vec::with_capacity(msgs.len());
    for mut m in msgs {
        if m.topic != topic_name {
            return Err(ClientError::InvalidArgument(
                "all messages of a batch must have the same topic".into(),
            ));
        }
        if m.delay_level() > 0 {
            return Err(ClientError::InvalidArgument(
                "delay levels are not supported in batches".into(),
            ));
        }
        if m.property(keys::WAIT_STORE_MSG_OK) != wait.as_deref() {
            return Err(ClientError::InvalidArgument(
                "all messages of a batch must have the same WAIT flag".into(),
            ));
        }
        if m.body.is_empty() || m.body.len() > max_message_size {
            return Err(ClientError::InvalidArgument(format!(
                "batch message body of {} bytes (allowed 1..={max_message_size})",
                m.body.len()
            )));
        }
        let id = m
            .properties
            .entry(keys::UNIQ_KEY.to_string())
            .or_insert_with(|| UniqIdGenerator::global().next_id())
            .clone();
        let props = m.properties_string();
        properties::check_len(&props).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        encoded.push((
            id,
            BatchMessage {
                flag: m.flag,
                body: m.body,
                properties: props,
            },
        ));
    }
    let chunks = split_batch(encoded, max_bytes, max_count)?;
    let mut out = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
        let records: Vec<BatchMessage> = chunk.into_iter().map(|(_, m)| m).collect();
        let mut body = BytesMut::new();
        batch::encode_batch(&records, &mut body)?;
        let mut props = String::new();
        if let Some(w) = &wait {
            properties::append(&mut props, keys::WAIT_STORE_MSG_OK, w);
        }
        properties::append(
            &mut props,
            keys::UNIQ_KEY,
            &UniqIdGenerator::global().next_id(),
        );
        out.push(Prepared {
            topic: topic_name.clone(),
            body: body.freeze(),
            properties: props,
            sys_flag: 0,
            flag: 0,
            msg_id: ids.join(","),
            batch: true,
            reply: false,
            reconsume_times: 0,
            max_reconsume_times: None,
        });
    }
    Ok(out)
}

/// Splits encoded batch records into consecutive chunks of at most
/// `max_bytes` encoded bytes and `max_count` records, keeping order.
pub fn split_batch<T>(
    records: Vec<(T, BatchMessage)>,
    max_bytes: usize,
    max_count: usize,
) -> Result<Vec<Vec<(T, BatchMessage)>>> {
    let max_count = max_count.max(1);
    let mut out = Vec::new();
    let mut cur: Vec<(T, BatchMessage)> = Vec::new();
    let mut cur_bytes = 0usize;
    for (tag, m) in records {
        let size = batch::batch_record_size(m.body.len(), m.properties.len());
        if size > max_bytes {
            return Err(ClientError::InvalidArgument(format!(
                "one batch message encodes to {size} bytes, more than the batch limit of {max_bytes}"
            )));
        }
        if !cur.is_empty() && (cur_bytes + size > max_bytes || cur.len() >= max_count) {
            out.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_bytes += size;
        cur.push((tag, m));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apogee_protocol::header::SendMessageRequestHeaderV2;

    fn rec(n: usize) -> (usize, BatchMessage) {
        (
            n,
            BatchMessage {
                flag: 0,
                body: Bytes::from(vec![b'x'; n]),
                properties: String::new(),
            },
        )
    }

    #[test]
    fn split_respects_bytes_and_count_and_order() {
        // 22 bytes overhead each
        let recs: Vec<_> = (0..10).map(|_| rec(78)).collect(); // 100 bytes each
        let chunks = split_batch(recs, 350, usize::MAX).unwrap();
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        let recs: Vec<_> = (0..10).map(rec).collect();
        let chunks = split_batch(recs, 1 << 20, 4).unwrap();
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let flat: Vec<usize> = chunks.into_iter().flatten().map(|(t, _)| t).collect();
        assert_eq!(flat, (0..10).collect::<Vec<_>>());
        assert!(split_batch(vec![rec(1000)], 500, 10).is_err());
    }

    #[test]
    fn batch_preparation_stamps_ids_and_encodes() {
        let msgs: Vec<Message> = (0..5)
            .map(|i| Message::new("T", format!("body-{i}")).with_tags("A"))
            .collect();
        let preps = prepare_batches(msgs, 1 << 20, 1 << 20, 2).unwrap();
        assert_eq!(preps.len(), 3);
        let ids: Vec<&str> = preps[0].msg_id.split(',').collect();
        assert_eq!(ids.len(), 2);
        let decoded = batch::decode_batch(&preps[0].body).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(&decoded[1].body[..], b"body-1");
        assert_eq!(
            properties::get(&decoded[0].properties, keys::UNIQ_KEY),
            Some(ids[0])
        );
        assert_eq!(
            properties::get(&decoded[0].properties, keys::TAGS),
            Some("A")
        );
        assert!(preps.iter().all(|p| p.batch));
    }

    #[test]
    fn build_command_matches_the_typed_header() {
        let config = ProducerConfig {
            group: "PG".into(),
            ..ProducerConfig::default()
        };
        for (batch, max) in [(false, None), (true, Some(16))] {
            let p = Prepared {
                topic: "TopicA".into(),
                body: Bytes::from_static(b"body"),
                properties: "TAGS\u{1}t\u{2}KEYS\u{1}k \"q\"\u{2}".into(),
                sys_flag: 1,
                flag: 7,
                msg_id: String::new(),
                batch,
                reply: false,
                reconsume_times: 2,
                max_reconsume_times: max,
            };
            let built = send_command(&config, &p, 1_700_000_000_123);
            let typed = SendMessageRequestHeaderV2 {
                producer_group: "PG".into(),
                topic: "TopicA".into(),
                default_topic: config.create_topic_key.clone(),
                default_topic_queue_nums: config.default_topic_queue_nums,
                queue_id: 0,
                sys_flag: 1,
                born_timestamp: 1_700_000_000_123,
                flag: 7,
                properties: Some(p.properties.clone()),
                reconsume_times: Some(2),
                unit_mode: Some(false),
                max_reconsume_times: max,
                batch: Some(batch),
                ..Default::default()
            };
            let expected = RemotingCommand::request(built.code).with_header(&typed);
            let pairs = |c: &RemotingCommand| {
                c.ext_fields
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(pairs(&built), pairs(&expected));
            assert_eq!(
                built.decode_header::<SendMessageRequestHeaderV2>().unwrap(),
                typed
            );
            assert_eq!(&built.body.as_ref().unwrap()[..], b"body");
        }
    }

    #[test]
    fn batch_rejects_mixed_topics_and_delay() {
        let mixed = vec![Message::new("A", "1"), Message::new("B", "2")];
        assert!(prepare_batches(mixed, 100, 100, 10).is_err());
        let delayed = vec![Message::new("A", "1").with_delay_level(3)];
        assert!(prepare_batches(delayed, 100, 100, 10).is_err());
        assert!(prepare_batches(Vec::new(), 100, 100, 10).is_err());
    }

    #[test]
    fn hash_selector_matches_java_string_hash() {
        let queues: Vec<MessageQueue> = (0..8).map(|i| MessageQueue::new("T", "b", i)).collect();
        let m = Message::new("T", "x");
        // "order-1".hashCode() in Java is -1207111310 → |h| % 8 = 6
        let h = apogee_protocol::body::java_string_hash("order-1");
        assert_eq!(h, -1207111310);
        assert_eq!(HashQueueSelector.select(&queues, &m, "order-1"), 6);
        // stable per key
        for k in ["a", "b", "order-42"] {
            let i = HashQueueSelector.select(&queues, &m, k);
            assert_eq!(i, HashQueueSelector.select(&queues, &m, k));
            assert!(i < 8);
        }
    }

    fn producer(compress_over: usize) -> Arc<ProducerInner> {
        let inst = ClientInstance::new(
            ClientOptions {
                namesrv_addr: "127.0.0.1:1".into(),
                ..Default::default()
            },
            ProcessorRegistry::new(),
        )
        .unwrap();
        ProducerInner::new(
            inst,
            ProducerConfig {
                compress_msg_body_over_howmuch: compress_over,
                ..Default::default()
            },
        )
    }

    #[test]
    fn large_bodies_are_compressed_and_round_trip() {
        let p = producer(4096);
        let body: Vec<u8> = (0..20_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        let prep = p.prepare(Message::new("T", body.clone())).unwrap();
        assert_eq!(prep.sys_flag & sysflag::COMPRESSED, sysflag::COMPRESSED);
        assert!(prep.body.len() < body.len());
        let back =
            apogee_protocol::message::compress::decompress_zlib(&prep.body, 1 << 20).unwrap();
        assert_eq!(back, body);
        let small = p.prepare(Message::new("T", vec![1u8; 100])).unwrap();
        assert_eq!(small.sys_flag, 0);
        assert_eq!(small.body.len(), 100);
        assert_eq!(
            properties::get(&small.properties, keys::UNIQ_KEY),
            Some(small.msg_id.as_str())
        );
    }

    #[test]
    fn invalid_messages_are_refused() {
        let p = producer(4096);
        assert!(p.prepare(Message::new("T", Vec::<u8>::new())).is_err());
        assert!(p.prepare(Message::new("bad topic", "x")).is_err());
        assert!(p
            .prepare(Message::new("T", vec![0u8; DEFAULT_MAX_MESSAGE_SIZE + 1]))
            .is_err());
    }

    #[test]
    fn retry_topic_counters_move_to_the_header() {
        let p = producer(4096);
        let m = Message::new("%RETRY%g", "x")
            .with_property(keys::RECONSUME_TIME, "3")
            .with_property(keys::MAX_RECONSUME_TIMES, "16");
        let prep = p.prepare(m).unwrap();
        assert_eq!(prep.reconsume_times, 3);
        assert_eq!(prep.max_reconsume_times, Some(16));
        assert!(properties::get(&prep.properties, keys::RECONSUME_TIME).is_none());
        let cmd = p.build_command(&prep);
        assert_eq!(cmd.code, request_code::SEND_MESSAGE_V2);
        assert_eq!(cmd.ext("j"), Some("3"));
        assert_eq!(cmd.ext("l"), Some("16"));
    }
}
