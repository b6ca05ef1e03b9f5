//! The NameServer: a light route registry. Brokers register their topics
//! here every 30 s; a broker silent past its timeout (120 s) is dropped;
//! producers, consumers and admin tools ask it which brokers serve a topic.
//! It also keeps the small KV configuration (ORDER_TOPIC_CONFIG, …) that
//! RocketMQ persists in `kvConfig.json`.

pub mod config;
pub mod error;
pub mod kv_config;
pub mod route_info;

pub use config::NamesrvConfig;
pub use error::NamesrvError;
pub mod processor;
pub mod server;

pub use server::NameServer;
