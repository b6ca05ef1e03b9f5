//! Consumers: the push consumer ([`PushConsumer`]: rebalanced pull loops
//! feeding a listener) and the lite pull consumer ([`LitePullConsumer`]:
//! `poll` / `seek` / commit), with what they share — settings, listener
//! traits, allocation strategies, offset stores and the per-queue buffer.

pub mod lite_pull;
pub mod offset_store;
pub mod process_queue;
pub mod push;
pub mod simple;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::body::SubscriptionData;
use apogee_protocol::message::keys;
use apogee_protocol::topic;
use futures::future::BoxFuture;

pub use apogee_protocol::allocate::{
    AllocateAveragely, AllocateAveragelyByCircle, AllocateConsistentHash, AllocateStrategy,
};
pub use apogee_protocol::body::{ConsumeFromWhere, MessageModel};
pub use lite_pull::{LitePullConsumer, LitePullConsumerBuilder};
pub use offset_store::{LocalOffsetStore, OffsetStore, RemoteOffsetStore};
pub use process_queue::ProcessQueue;
pub use push::{PushConsumer, PushConsumerBuilder};
pub use simple::{ReceivedMessage, SimpleConsumer, SimpleConsumerBuilder};

use crate::error::{ClientError, Result};
use crate::instance::{now_millis, ClientInstance};
use crate::message::{MessageExt, MessageQueue};

/// What a concurrent listener says about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeConcurrentlyStatus {
    Success,
    /// Redeliver later (through `%RETRY%<group>`).
    ReconsumeLater,
}

/// Per-call context of a concurrent listener.
#[derive(Debug, Clone)]
pub struct ConsumeConcurrentlyContext {
    pub queue: MessageQueue,
    /// Retry delay level on ReconsumeLater; 0 lets the broker choose
    /// (3 + reconsume times), -1 sends straight to the DLQ.
    pub delay_level_when_next_consume: i32,
}

/// What an orderly listener says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeOrderlyStatus {
    Success,
    /// Retry the same message after a pause, blocking the queue meanwhile.
    SuspendCurrentQueueAMoment,
}

/// Per-call context of an orderly listener.
#[derive(Debug, Clone)]
pub struct ConsumeOrderlyContext {
    pub queue: MessageQueue,
    /// Pause before retrying after a suspend.
    pub suspend_current_queue_time: Duration,
}

/// Consumes batches in any order, possibly several at once.
pub trait MessageListenerConcurrently: Send + Sync + 'static {
    fn consume<'a>(
        &'a self,
        msgs: &'a [MessageExt],
        ctx: &'a mut ConsumeConcurrentlyContext,
    ) -> BoxFuture<'a, ConsumeConcurrentlyStatus>;
}

/// Consumes the messages of each queue one after another.
pub trait MessageListenerOrderly: Send + Sync + 'static {
    fn consume<'a>(
        &'a self,
        msgs: &'a [MessageExt],
        ctx: &'a mut ConsumeOrderlyContext,
    ) -> BoxFuture<'a, ConsumeOrderlyStatus>;
}

/// A synchronous closure as a concurrent listener (keep it quick, or use
/// `spawn_blocking` in an async listener).
pub struct ConcurrentlyFn<F>(pub F);

impl<F> MessageListenerConcurrently for ConcurrentlyFn<F>
where
    F: Fn(&[MessageExt], &mut ConsumeConcurrentlyContext) -> ConsumeConcurrentlyStatus
        + Send
        + Sync
        + 'static,
{
    fn consume<'a>(
        &'a self,
        msgs: &'a [MessageExt],
        ctx: &'a mut ConsumeConcurrentlyContext,
    ) -> BoxFuture<'a, ConsumeConcurrentlyStatus> {
        let r = (self.0)(msgs, ctx);
        Box::pin(async move { r })
    }
}

/// A synchronous closure as an orderly listener.
pub struct OrderlyFn<F>(pub F);

impl<F> MessageListenerOrderly for OrderlyFn<F>
where
    F: Fn(&[MessageExt], &mut ConsumeOrderlyContext) -> ConsumeOrderlyStatus
        + Send
        + Sync
        + 'static,
{
    fn consume<'a>(
        &'a self,
        msgs: &'a [MessageExt],
        ctx: &'a mut ConsumeOrderlyContext,
    ) -> BoxFuture<'a, ConsumeOrderlyStatus> {
        let r = (self.0)(msgs, ctx);
        Box::pin(async move { r })
    }
}

/// Consumer settings (Java `DefaultMQPushConsumer` / `DefaultLitePullConsumer` names).
#[derive(Clone)]
pub struct ConsumerConfig {
    pub group: String,
    pub message_model: MessageModel,
    pub consume_from_where: ConsumeFromWhere,
    /// For CONSUME_FROM_TIMESTAMP: unix ms (default: half an hour ago).
    pub consume_timestamp: i64,
    pub allocate_strategy: Arc<dyn AllocateStrategy>,
    /// Concurrent listener calls at once (`consumeThreadMax`).
    pub consume_thread_max: usize,
    /// Messages per listener call (`consumeMessageBatchMaxSize`).
    pub consume_message_batch_max_size: usize,
    /// Messages per pull (`pullBatchSize`).
    pub pull_batch_size: i32,
    /// Bytes per pull (`pullBatchSizeInBytes`).
    pub pull_batch_size_in_bytes: i32,
    /// Pause a queue's pulls above this many buffered messages.
    pub pull_threshold_for_queue: usize,
    /// … or above this many buffered body bytes (MiB in Java; bytes here).
    pub pull_threshold_size_for_queue: usize,
    /// Concurrent mode: pause when buffered offsets span more than this.
    pub consume_concurrently_max_span: i64,
    /// Long-poll hold time asked of the broker.
    pub broker_suspend_max_time: Duration,
    /// Pull RPC timeout while suspended.
    pub consumer_timeout_when_suspend: Duration,
    /// Attempts before a message goes to the DLQ (`maxReconsumeTimes`).
    pub max_reconsume_times: i32,
    pub rebalance_interval: Duration,
    pub persist_consumer_offset_interval: Duration,
    /// Orderly: broker lock renewal period.
    pub lock_renew_interval: Duration,
    /// Broadcasting offset file; default `~/.rocketmq_offsets/<instance>/<group>/offsets.json`.
    pub offset_store_path: Option<PathBuf>,
    /// Pause before a failed batch is consumed again locally (send-back failed).
    pub local_retry_delay: Duration,
    /// Lite pull: commit offsets automatically.
    pub auto_commit: bool,
    pub auto_commit_interval: Duration,
    /// Lite pull: messages buffered for `poll` across all queues.
    pub pull_threshold_for_all: usize,
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("group", &self.group)
            .field("message_model", &self.message_model)
            .field("consume_from_where", &self.consume_from_where)
            .field("allocate_strategy", &self.allocate_strategy.name())
            .finish_non_exhaustive()
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: String::new(),
            message_model: MessageModel::Clustering,
            consume_from_where: ConsumeFromWhere::ConsumeFromLastOffset,
            consume_timestamp: now_millis() - 30 * 60 * 1000,
            allocate_strategy: Arc::new(AllocateAveragely),
            consume_thread_max: 20,
            consume_message_batch_max_size: 1,
            pull_batch_size: 32,
            pull_batch_size_in_bytes: 256 * 1024,
            pull_threshold_for_queue: 1000,
            pull_threshold_size_for_queue: 100 * 1024 * 1024,
            consume_concurrently_max_span: 2000,
            broker_suspend_max_time: Duration::from_secs(15),
            consumer_timeout_when_suspend: Duration::from_secs(30),
            max_reconsume_times: 16,
            rebalance_interval: Duration::from_secs(20),
            persist_consumer_offset_interval: Duration::from_secs(5),
            lock_renew_interval: Duration::from_secs(20),
            offset_store_path: None,
            local_retry_delay: Duration::from_secs(5),
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            pull_threshold_for_all: 10_000,
        }
    }
}

impl ConsumerConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        topic::validate_group(&self.group)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        if self.consume_thread_max == 0 || self.consume_message_batch_max_size == 0 {
            return Err(ClientError::InvalidArgument(
                "consume_thread_max and consume_message_batch_max_size must be positive".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn local_offset_path(&self, instance_name: &str) -> PathBuf {
        self.offset_store_path.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            home.join(".rocketmq_offsets")
                .join(instance_name)
                .join(&self.group)
                .join("offsets.json")
        })
    }
}

/// A subscription expression: `*` or `TagA || TagB`.
pub(crate) fn build_subscription(topic: &str, expr: &str) -> Result<SubscriptionData> {
    topic::validate_topic(topic).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
    Ok(SubscriptionData::tag(topic, expr))
}

/// An SQL92 subscription; the broker compiles and checks the expression
/// (a malformed one is refused at the first heartbeat or pull).
pub(crate) fn build_sql_subscription(topic: &str, sql: &str) -> Result<SubscriptionData> {
    topic::validate_topic(topic).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
    if sql.trim().is_empty() {
        return Err(ClientError::InvalidArgument(format!(
            "empty SQL92 expression for topic {topic}"
        )));
    }
    Ok(SubscriptionData::sql(topic, sql))
}

/// Client-side tag check after a pull (the broker filters by hash code only).
pub(crate) fn tag_matches(sd: &SubscriptionData, msg: &MessageExt) -> bool {
    if sd.tags_set.is_empty() || sd.sub_string == "*" || sd.class_filter_mode {
        return true;
    }
    msg.tags().is_some_and(|t| sd.tags_set.contains(t))
}

/// A message pulled from `%RETRY%<group>` is shown with its original topic.
pub(crate) fn reset_retry_topic(group: &str, msg: &mut MessageExt) {
    let retry = topic::retry_topic(group);
    if msg.topic == retry {
        if let Some(t) = msg.property(keys::RETRY_TOPIC).map(str::to_string) {
            msg.message.topic = t;
        }
    }
}

/// The queues of `topic` this client should own now (clustering: its share
/// by `strategy` among the group's members; broadcasting: all).
pub(crate) async fn allocate_for_topic(
    instance: &ClientInstance,
    config: &ConsumerConfig,
    all: &BTreeSet<MessageQueue>,
) -> Result<BTreeSet<MessageQueue>> {
    if config.message_model == MessageModel::Broadcasting || all.is_empty() {
        return Ok(all.clone());
    }
    // Ask a broker of the topic; every broker knows the whole group.
    let mut brokers: Vec<&str> = all.iter().map(|q| q.broker_name.as_str()).collect();
    brokers.dedup();
    let mut last = None;
    let start = rand::random::<usize>() % brokers.len().max(1);
    for i in 0..brokers.len() {
        let name = brokers[(start + i) % brokers.len()];
        let Some(addr) = instance.broker_addr(name, crate::instance::MASTER_ID) else {
            continue;
        };
        match instance.consumer_ids(&addr, &config.group).await {
            Ok(mut ids) => {
                ids.sort();
                ids.dedup();
                let queues: Vec<MessageQueue> = all.iter().cloned().collect();
                return Ok(config
                    .allocate_strategy
                    .allocate(&config.group, instance.client_id(), &queues, &ids)
                    .into_iter()
                    .collect());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::NoRoute(format!("brokers of {:?}", all.iter().next()))))
}

/// Where to start a queue with no stored offset (Java `computePullFromWhere`).
pub(crate) async fn compute_pull_from_where(
    instance: &ClientInstance,
    config: &ConsumerConfig,
    store: &OffsetStore,
    mq: &MessageQueue,
) -> Result<i64> {
    if let Some(o) = store.read_store(mq).await? {
        if o >= 0 {
            return Ok(o);
        }
    }
    let addr = instance
        .subscribe_addr_or_refresh(&mq.broker_name, &mq.topic)
        .await?;
    let is_retry = topic::is_retry_topic(&mq.topic);
    match config.consume_from_where {
        ConsumeFromWhere::ConsumeFromFirstOffset | ConsumeFromWhere::ConsumeFromMinOffset => Ok(0),
        ConsumeFromWhere::ConsumeFromTimestamp => {
            if is_retry {
                instance.max_offset(&addr, mq).await
            } else {
                instance
                    .search_offset(&addr, mq, config.consume_timestamp)
                    .await
            }
        }
        _ => {
            if is_retry {
                Ok(0)
            } else {
                instance.max_offset(&addr, mq).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    #[test]
    fn tag_filter_and_retry_reset() {
        let sd = build_subscription("T", "A || B").unwrap();
        let a = MessageExt::from_message(Message::new("T", "x").with_tags("A"));
        let c = MessageExt::from_message(Message::new("T", "x").with_tags("C"));
        let none = MessageExt::from_message(Message::new("T", "x"));
        assert!(tag_matches(&sd, &a));
        assert!(!tag_matches(&sd, &c));
        assert!(!tag_matches(&sd, &none));
        let all = build_subscription("T", "*").unwrap();
        assert!(tag_matches(&all, &none));
        assert!(build_subscription("bad topic", "*").is_err());

        let mut r = MessageExt::from_message(
            Message::new("%RETRY%g", "x").with_property(keys::RETRY_TOPIC, "T"),
        );
        reset_retry_topic("g", &mut r);
        assert_eq!(r.topic, "T");
    }
}
