//! The simple consumer (RocketMQ 5's `SimpleConsumer`, over the remoting
//! protocol's POP): `receive` pops a batch from one of the subscribed
//! topics' brokers, each message hidden from the rest of the group for an
//! invisible duration; `ack` settles a message, `change_invisible_duration`
//! postpones (or brings forward) its return. A message neither acked nor
//! extended comes back after its invisible duration, through the group's
//! retry topic, and after the group's max attempts goes to its DLQ. The
//! broker tracks progress: no offsets, no rebalancing on this side.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use apogee_protocol::body::{
    ConsumeType, ConsumerData, HeartbeatData, MessageModel, SubscriptionData,
    EXPRESSION_TYPE_SQL92, EXPRESSION_TYPE_TAG,
};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, ChangeInvisibleTimeResponseHeader,
    PopMessageRequestHeader, PopMessageResponseHeader,
};
use apogee_protocol::message::{decode_stored_many, keys};
use apogee_protocol::pop::{self, ExtraInfo};
use apogee_protocol::topic;
use apogee_remoting::ProcessorRegistry;
use parking_lot::{Mutex, RwLock};
use tokio::task::JoinHandle;

use super::ConsumeFromWhere;
use crate::error::{ClientError, Result};
use crate::instance::{now_millis, ClientInstance, ClientOptions};
use crate::message::MessageExt;
use crate::producer::spawn_periodic;
use crate::route::subscribe_queues;

/// Longest invisible duration accepted (the 5.x clients' limit).
pub const MAX_INVISIBLE: Duration = Duration::from_secs(12 * 3600);
/// Most messages one receive asks for (the broker's limit).
pub const MAX_BATCH: i32 = 32;

/// A message received by a [`SimpleConsumer`], with its receipt handle.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The message; its topic is the subscribed one, also when it came
    /// back through the group's retry topic.
    pub message: MessageExt,
    /// The `POP_CK` receipt handle that acks or extends this delivery;
    /// replaced by [`SimpleConsumer::change_invisible_duration`].
    pub receipt_handle: String,
    /// Which delivery this is (1 for the first).
    pub delivery_attempt: i32,
}

/// Builds a [`SimpleConsumer`].
#[derive(Default)]
pub struct SimpleConsumerBuilder {
    options: ClientOptions,
    group: String,
    subscriptions: Vec<(String, String, &'static str)>,
    await_duration: Option<Duration>,
    from_where: ConsumeFromWhere,
}

impl SimpleConsumerBuilder {
    pub fn namesrv_addr(mut self, addr: impl Into<String>) -> Self {
        self.options.namesrv_addr = addr.into();
        self
    }

    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    pub fn options(mut self, options: ClientOptions) -> Self {
        self.options = options;
        self
    }

    /// Subscribes to `topic` with a tag expression (`*`, `TagA || TagB`).
    pub fn subscribe(mut self, topic: impl Into<String>, tags: impl Into<String>) -> Self {
        self.subscriptions
            .push((topic.into(), tags.into(), EXPRESSION_TYPE_TAG));
        self
    }

    /// Subscribes to `topic` with an SQL92 expression over properties.
    pub fn subscribe_sql(mut self, topic: impl Into<String>, sql: impl Into<String>) -> Self {
        self.subscriptions
            .push((topic.into(), sql.into(), EXPRESSION_TYPE_SQL92));
        self
    }

    /// How long a `receive` waits on the broker for messages to arrive
    /// (long polling; 0 answers at once). Default 15 s.
    pub fn await_duration(mut self, d: Duration) -> Self {
        self.await_duration = Some(d);
        self
    }

    /// Where a group without progress starts in a queue: the first offset
    /// ([`ConsumeFromWhere::ConsumeFromFirstOffset`]) or the end (default).
    pub fn consume_from_where(mut self, w: ConsumeFromWhere) -> Self {
        self.from_where = w;
        self
    }

    pub fn build(self) -> Result<SimpleConsumer> {
        topic::validate_group(&self.group)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let mut subs = BTreeMap::new();
        for (t, expr, kind) in self.subscriptions {
            topic::validate_topic(&t).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
            let sd = if kind == EXPRESSION_TYPE_SQL92 {
                SubscriptionData::sql(&t, &expr)
            } else {
                SubscriptionData::tag(&t, &expr)
            };
            subs.insert(t, sd);
        }
        let instance = ClientInstance::new(self.options, ProcessorRegistry::new())?;
        Ok(SimpleConsumer {
            inner: Arc::new(Inner {
                instance,
                group: self.group,
                subscriptions: RwLock::new(subs),
                await_duration: self.await_duration.unwrap_or(Duration::from_secs(15)),
                init_mode: match self.from_where {
                    ConsumeFromWhere::ConsumeFromFirstOffset
                    | ConsumeFromWhere::ConsumeFromMinOffset => 0,
                    _ => 1,
                },
                next: AtomicUsize::new(0),
                running: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// A POP consumer: see the module documentation.
pub struct SimpleConsumer {
    inner: Arc<Inner>,
}

struct Inner {
    instance: Arc<ClientInstance>,
    group: String,
    subscriptions: RwLock<BTreeMap<String, SubscriptionData>>,
    await_duration: Duration,
    /// POP_MESSAGE `initMode`: 0 from the first offset, 1 from the end.
    init_mode: i32,
    /// Round-robin position over (topic, broker) pairs.
    next: AtomicUsize,
    running: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl SimpleConsumer {
    pub fn builder() -> SimpleConsumerBuilder {
        SimpleConsumerBuilder::default()
    }

    pub fn group(&self) -> &str {
        &self.inner.group
    }

    /// Fetches the subscribed topics' routes and starts heartbeating.
    pub async fn start(&self) -> Result<()> {
        if self.inner.running.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let topics: Vec<String> = self.inner.subscriptions.read().keys().cloned().collect();
        for t in &topics {
            self.inner.instance.update_route(t).await?;
        }
        self.inner.heartbeat().await;
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let opts = &self.inner.instance.options;
        let mut tasks = self.inner.tasks.lock();
        tasks.push(spawn_periodic(
            weak.clone(),
            opts.poll_name_server_interval,
            opts.poll_name_server_interval,
            |c| async move {
                let topics: Vec<String> = c.subscriptions.read().keys().cloned().collect();
                for t in topics {
                    if let Err(e) = c.instance.update_route(&t).await {
                        tracing::debug!(topic = %t, error = %e, "route refresh failed");
                    }
                }
            },
        ));
        tasks.push(spawn_periodic(
            weak,
            opts.heartbeat_broker_interval,
            opts.heartbeat_broker_interval,
            |c| async move { c.heartbeat().await },
        ));
        Ok(())
    }

    /// Adds (or replaces) a tag subscription while running.
    pub async fn subscribe(&self, topic_name: &str, tags: &str) -> Result<()> {
        topic::validate_topic(topic_name)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        self.inner.instance.update_route(topic_name).await?;
        self.inner.subscriptions.write().insert(
            topic_name.to_string(),
            SubscriptionData::tag(topic_name, tags),
        );
        self.inner.heartbeat().await;
        Ok(())
    }

    /// Pops up to `max` messages (1..=32), hidden from the rest of the
    /// group for `invisible`. Waits up to the await duration for messages
    /// to arrive; an empty result means none came.
    pub async fn receive(&self, max: i32, invisible: Duration) -> Result<Vec<ReceivedMessage>> {
        if !self.inner.running.load(Ordering::SeqCst) {
            return Err(ClientError::NotRunning("simple consumer"));
        }
        if !(1..=MAX_BATCH).contains(&max) {
            return Err(ClientError::InvalidArgument(format!(
                "receive asks for {max} messages: 1..={MAX_BATCH}"
            )));
        }
        if invisible.is_zero() || invisible > MAX_INVISIBLE {
            return Err(ClientError::InvalidArgument(format!(
                "invisible duration {invisible:?} is outside (0, {MAX_INVISIBLE:?}]"
            )));
        }
        let targets = self.inner.targets();
        if targets.is_empty() {
            return Err(ClientError::NoRoute(
                self.inner
                    .subscriptions
                    .read()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(","),
            ));
        }
        // Each (topic, broker) in turn, long polling only on the last one
        // tried, so one empty broker does not hold back another's messages.
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..targets.len() {
            let (sd, broker) = &targets[(start + i) % targets.len()];
            let poll = if i + 1 == targets.len() {
                self.inner.await_duration
            } else {
                Duration::ZERO
            };
            let got = self.inner.pop(sd, broker, max, invisible, poll).await?;
            if !got.is_empty() {
                return Ok(got);
            }
        }
        Ok(Vec::new())
    }

    /// Acknowledges a delivery: the message will not come back.
    pub async fn ack(&self, m: &ReceivedMessage) -> Result<()> {
        let (addr, info) = self.inner.handle_target(m).await?;
        let h = AckMessageRequestHeader {
            consumer_group: self.inner.group.clone(),
            topic: m.message.topic.clone(),
            queue_id: info.queue_id,
            extra_info: m.receipt_handle.clone(),
            offset: info.queue_offset.unwrap_or(m.message.queue_offset),
            ..Default::default()
        };
        self.inner
            .instance
            .invoke_ok(
                &addr,
                ClientInstance::request_with(request_code::ACK_MESSAGE, &h),
            )
            .await?;
        Ok(())
    }

    /// Acknowledges many deliveries with one BATCH_ACK_MESSAGE per broker
    /// (one entry per pop they came from). All or nothing per broker: an
    /// error names the first broker that refused.
    pub async fn ack_many(&self, msgs: &[ReceivedMessage]) -> Result<()> {
        // broker address -> (retry, start, queue, revive qid, pop time, topic) -> offsets;
        // the key borrows from the messages (no copy per message).
        type Key<'a> = (&'a str, i64, i32, i32, i64, &'a str);
        let mut by_broker: BTreeMap<String, BTreeMap<Key<'_>, (i64, Vec<i64>)>> = BTreeMap::new();
        for m in msgs {
            let (addr, info) = self.inner.handle_target(m).await?;
            let topic = pop::normal_topic(&m.message.topic, &self.inner.group);
            let offset = info.queue_offset.unwrap_or(m.message.queue_offset);
            let key = (
                info.retry,
                info.ck_offset,
                info.queue_id,
                info.revive_qid,
                info.pop_time,
                topic,
            );
            let e = by_broker
                .entry(addr)
                .or_default()
                .entry(key)
                .or_insert((info.invisible_time, Vec::new()));
            e.1.push(offset);
        }
        for (addr, entries) in by_broker {
            let acks = entries
                .into_iter()
                .map(
                    |((retry, start, queue_id, rq, pop_time, topic), (it, offs))| {
                        let mut a = pop::BatchAck {
                            consumer_group: self.inner.group.clone(),
                            topic: topic.to_owned(),
                            retry: retry.to_owned(),
                            start_offset: start,
                            queue_id,
                            revive_queue_id: rq,
                            pop_time,
                            invisible_time: it,
                            bit_set: None,
                        };
                        a.set_offsets(offs);
                        a
                    },
                )
                .collect();
            let body = serde_json::to_vec(&pop::BatchAckBody {
                broker_name: None,
                acks: Some(acks),
            })
            .map_err(|e| ClientError::InvalidArgument(format!("batch ack body: {e}")))?;
            let req = apogee_protocol::RemotingCommand::request(request_code::BATCH_ACK_MESSAGE)
                .with_body(bytes::Bytes::from(body));
            self.inner.instance.invoke_ok(&addr, req).await?;
        }
        Ok(())
    }

    /// Makes the message invisible for `invisible` from now (shorter brings
    /// it back sooner). The message's receipt handle is replaced: the old
    /// one no longer acks it.
    pub async fn change_invisible_duration(
        &self,
        m: &mut ReceivedMessage,
        invisible: Duration,
    ) -> Result<()> {
        if invisible > MAX_INVISIBLE {
            return Err(ClientError::InvalidArgument(format!(
                "invisible duration {invisible:?} is over {MAX_INVISIBLE:?}"
            )));
        }
        let (addr, info) = self.inner.handle_target(m).await?;
        let h = ChangeInvisibleTimeRequestHeader {
            consumer_group: self.inner.group.clone(),
            topic: m.message.topic.clone(),
            queue_id: info.queue_id,
            extra_info: m.receipt_handle.clone(),
            offset: info.queue_offset.unwrap_or(m.message.queue_offset),
            invisible_time: millis(invisible),
            ..Default::default()
        };
        let resp = self
            .inner
            .instance
            .invoke_ok(
                &addr,
                ClientInstance::request_with(request_code::CHANGE_MESSAGE_INVISIBLETIME, &h),
            )
            .await?;
        let rh: ChangeInvisibleTimeResponseHeader = resp.decode_header()?;
        let popped_from = info.real_topic(&m.message.topic, &self.inner.group);
        m.receipt_handle = pop::build_extra_info(
            info.ck_offset,
            rh.pop_time,
            rh.invisible_time,
            rh.revive_qid,
            &popped_from,
            info.broker_name,
            info.queue_id,
            info.queue_offset.unwrap_or(m.message.queue_offset),
        );
        Ok(())
    }

    /// Stops heartbeating and leaves the group.
    pub async fn shutdown(&self) {
        if !self.inner.running.swap(false, Ordering::SeqCst) {
            return;
        }
        for t in self.inner.tasks.lock().drain(..) {
            t.abort();
        }
        self.inner
            .instance
            .unregister(None, Some(&self.inner.group))
            .await;
        self.inner.instance.close().await;
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Inner {
    async fn heartbeat(&self) {
        let data = HeartbeatData {
            client_id: self.instance.client_id.clone(),
            consumer_data_set: vec![ConsumerData {
                group_name: self.group.clone(),
                consume_type: ConsumeType::ConsumePop,
                message_model: MessageModel::Clustering,
                consume_from_where: ConsumeFromWhere::ConsumeFromLastOffset,
                subscription_data_set: self.subscriptions.read().values().cloned().collect(),
                unit_mode: false,
            }],
            ..Default::default()
        };
        self.instance.send_heartbeat(&data, true).await;
    }

    /// Every (subscription, broker name) with readable queues.
    fn targets(&self) -> Vec<(SubscriptionData, String)> {
        let subs = self.subscriptions.read();
        let mut out = Vec::new();
        for (t, sd) in subs.iter() {
            let Some(route) = self.instance.cached_route(t) else {
                continue;
            };
            let mut brokers: Vec<String> = subscribe_queues(t, &route)
                .into_iter()
                .map(|q| q.broker_name)
                .collect();
            brokers.dedup();
            out.extend(brokers.into_iter().map(|b| (sd.clone(), b)));
        }
        out
    }

    async fn pop(
        &self,
        sd: &SubscriptionData,
        broker: &str,
        max: i32,
        invisible: Duration,
        poll: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let addr = self
            .instance
            .master_addr_or_refresh(broker, &sd.topic)
            .await?;
        let h = PopMessageRequestHeader {
            consumer_group: self.group.clone(),
            topic: sd.topic.clone(),
            queue_id: -1,
            max_msg_nums: max,
            invisible_time: millis(invisible),
            poll_time: millis(poll),
            born_time: now_millis(),
            init_mode: self.init_mode,
            exp_type: Some(if sd.expression_type.is_empty() {
                EXPRESSION_TYPE_TAG.to_string()
            } else {
                sd.expression_type.clone()
            }),
            exp: Some(sd.sub_string.clone()),
            order: Some(false),
            ..Default::default()
        };
        let cmd = ClientInstance::request_with(request_code::POP_MESSAGE, &h);
        let timeout = poll + self.instance.options.api_timeout;
        let resp = self.instance.remoting.invoke(&addr, cmd, timeout).await?;
        match resp.code {
            response_code::SUCCESS => {}
            response_code::POLLING_TIMEOUT
            | response_code::NO_MESSAGE
            | response_code::PULL_NOT_FOUND => return Ok(Vec::new()),
            _ => return Err(ClientError::broker(&addr, &resp)),
        }
        let rh: PopMessageResponseHeader = resp.decode_header()?;
        let starts = pop::parse_start_offset_info(rh.start_offset_info.as_deref().unwrap_or(""));
        let body = resp.body.clone().unwrap_or_default();
        let mut out = Vec::new();
        for d in decode_stored_many(&body, false) {
            let mut m = MessageExt::from_decoded(d, broker);
            let popped_from = m.message.topic.clone();
            let handle = match m.message.properties.get(keys::POP_CK) {
                Some(ck) => ck.clone(),
                None => {
                    let key = (pop::retry_flag(&popped_from).to_string(), m.queue_id);
                    let Some(ck_offset) = starts.get(&key) else {
                        tracing::warn!(topic = %popped_from, queue = m.queue_id, offset = m.queue_offset, "popped message without a checkpoint offset in the answer: skipped (it comes back after its invisible time)");
                        continue;
                    };
                    pop::build_extra_info(
                        *ck_offset,
                        rh.pop_time,
                        rh.invisible_time,
                        rh.revive_qid,
                        &popped_from,
                        broker,
                        m.queue_id,
                        m.queue_offset,
                    )
                }
            };
            // A retry copy is shown with the topic it was subscribed as.
            m.message.topic = pop::normal_topic(&popped_from, &self.group).to_string();
            let delivery_attempt = m.reconsume_times.saturating_add(1);
            out.push(ReceivedMessage {
                message: m,
                receipt_handle: handle,
                delivery_attempt,
            });
        }
        Ok(out)
    }

    /// The master holding a handle's message, and the parsed handle.
    async fn handle_target<'a>(&self, m: &'a ReceivedMessage) -> Result<(String, ExtraInfo<'a>)> {
        let info = ExtraInfo::parse(&m.receipt_handle)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let addr = self
            .instance
            .master_addr_or_refresh(info.broker_name, &m.message.topic)
            .await?;
        Ok((addr, info))
    }
}
