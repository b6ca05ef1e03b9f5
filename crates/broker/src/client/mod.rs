//! Client tables: which producers and consumers are connected, on which
//! channel, in which group ([`ConsumerManager`], [`ProducerManager`]), and
//! the orderly-consumption queue locks ([`RebalanceLockManager`]).

pub mod consumer_manager;
pub mod producer_manager;
pub mod rebalance_lock;

use apogee_protocol::LanguageCode;
use apogee_remoting::Channel;

pub use consumer_manager::{ConsumerGroupInfo, ConsumerManager};
pub use producer_manager::ProducerManager;
pub use rebalance_lock::RebalanceLockManager;

/// One client connection as registered by a heartbeat.
#[derive(Debug, Clone)]
pub struct ClientChannelInfo {
    pub channel: Channel,
    /// `clientID` from the heartbeat (`ip@instance`).
    pub client_id: String,
    /// The client's language (from the request header).
    pub language: LanguageCode,
    /// The client's version (from the request header).
    pub version: i32,
}

impl ClientChannelInfo {
    pub fn new(
        channel: Channel,
        client_id: impl Into<String>,
        language: LanguageCode,
        version: i32,
    ) -> Self {
        ClientChannelInfo {
            channel,
            client_id: client_id.into(),
            language,
            version,
        }
    }
}
