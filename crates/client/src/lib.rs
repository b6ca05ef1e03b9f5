//! apogee-client owns Apogee's native Rust client for the RocketMQ remoting
//! protocol: the producer, the push and lite-pull consumers and the admin
//! client, plus what they share (NameServer fail-over, route cache, broker
//! heartbeats, latency-based fault avoidance, offset stores, rebalancing).
//! It follows the Java client's wire behaviour so it works against Apogee
//! and against any RocketMQ broker, and keeps our broker honest as a second
//! implementation of the protocol.
//!
//! ```no_run
//! use apogee_client::{Message, Producer};
//! # async fn demo() -> Result<(), apogee_client::ClientError> {
//! let producer = Producer::builder()
//!     .namesrv_addr("127.0.0.1:9876")
//!     .group("my-producer")
//!     .build()?;
//! producer.start().await?;
//! let r = producer.send(Message::new("TopicTest", "hello").with_tags("TagA")).await?;
//! println!("{} stored at {:?}#{}", r.msg_id, r.queue, r.queue_offset);
//! producer.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod api;
pub mod consumer;
pub mod error;
pub mod fault;
pub mod instance;
pub mod message;
pub mod producer;
pub mod request_reply;
pub mod route;
pub mod transaction;

pub use admin::{consume_lag, AdminClient, AdminClientBuilder, BrokerOutcome};
pub use api::{PullResult, PullStatus};
pub use consumer::{
    AllocateAveragely, AllocateAveragelyByCircle, AllocateConsistentHash, AllocateStrategy,
    ConcurrentlyFn, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus, ConsumeFromWhere,
    ConsumeOrderlyContext, ConsumeOrderlyStatus, ConsumerConfig, LitePullConsumer,
    LitePullConsumerBuilder, MessageListenerConcurrently, MessageListenerOrderly, MessageModel,
    OrderlyFn, PushConsumer, PushConsumerBuilder, ReceivedMessage, SimpleConsumer,
    SimpleConsumerBuilder,
};
pub use error::{ClientError, Result};
pub use instance::{ClientInstance, ClientOptions};
pub use message::{Message, MessageExt, MessageQueue};
pub use producer::{
    HashQueueSelector, Producer, ProducerBuilder, ProducerConfig, QueueSelector,
    RandomQueueSelector, SendResult, SendStatus,
};
pub use request_reply::create_reply;
pub use transaction::{LocalTransactionState, TransactionChecker, TransactionSendResult};
