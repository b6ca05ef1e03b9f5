//! apogee-broker owns the Broker: its configuration (RocketMQ's broker.conf
//! keys), the topic, subscription-group and consumer-offset tables persisted
//! under the store folder, the client tables (producers, consumers, queue
//! locks), NameServer registration, the request processors (send, pull
//! with long polling, offsets, retry and dead letters, delayed delivery,
//! queries and admin) and the controller that starts and stops it all on
//! top of apogee-store and apogee-remoting.

pub mod assignment;
pub mod client;
pub mod config;
pub mod context;
pub mod controller;
pub mod error;
pub mod failover;
pub mod filter;
pub mod long_polling;
pub mod namesrv_api;
pub mod offset;
mod persist;
pub mod pop;
pub mod processor;
pub mod register;
pub mod schedule;
pub mod slave_sync;
pub mod stats;
pub mod subscription_group;
pub mod topic_config;
pub mod transaction;

pub use config::BrokerConfig;
pub use context::BrokerContext;
pub use controller::BrokerController;
pub use error::BrokerError;
