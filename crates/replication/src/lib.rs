//! apogee-replication owns RocketMQ's classic master/slave replication (the
//! "HA" protocol of Apache's `DefaultHAService`): on a master, an HA server
//! on `haListenPort` that accepts slaves, streams them CommitLog bytes from
//! the offset each one reports and tracks their acknowledgements, so that a
//! SYNC_MASTER can hold a send until a slave has it; on a slave, an HA
//! client that connects to the master's HA address, appends what it
//! receives to its own CommitLog at the same offsets and reports its offset
//! back. The wire format is Apache's (see [`codec`]), so an Apogee slave can
//! follow an Apache master and the other way round. The store knows nothing
//! of this: it lends zero-copy reads and takes raw appends
//! ([`apogee_store::MessageStore::commit_log_data`],
//! [`apogee_store::MessageStore::append_replicated`]); its own dispatcher
//! then builds the slave's ConsumeQueues and index. Each link runs on its own
//! threads with blocking sockets, so no disk or network wait ever sits on an
//! async worker.

pub mod codec;
pub mod master;
pub mod slave;

use std::net::SocketAddr;
use std::time::Duration;

pub use master::{HaServer, SlaveInfo, SyncOutcome};
pub use slave::{HaClient, LinkError};

/// Settings of both sides (RocketMQ's `MessageStoreConfig` HA keys).
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// Where a master listens for slaves (`haListenPort`).
    pub listen_addr: SocketAddr,
    /// `haSendHeartbeatInterval` (5 s): a slave reports its offset at least
    /// this often, a master sends an empty frame when it has had nothing to
    /// send for this long.
    pub heartbeat_interval: Duration,
    /// `haTransferBatchSize` (32 KiB): most CommitLog bytes in one frame.
    pub transfer_batch_size: usize,
    /// `haMaxGapNotInSync` (256 MiB): a slave further behind than this is
    /// out of sync, and a SYNC_MASTER answers SLAVE_NOT_AVAILABLE.
    pub max_gap_not_in_sync: u64,
    /// `haHousekeepingInterval` (20 s): a link silent this long is closed.
    pub housekeeping_interval: Duration,
    /// Pause before a slave reconnects after a failed or broken link.
    pub reconnect_interval: Duration,
    /// Slaves that must hold a message before a waiting send is
    /// acknowledged (`inSyncReplicas` - 1, at least 1).
    pub acks_needed: usize,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 10912)),
            heartbeat_interval: Duration::from_secs(5),
            transfer_batch_size: 32 * 1024,
            max_gap_not_in_sync: 256 * 1024 * 1024,
            housekeeping_interval: Duration::from_secs(20),
            reconnect_interval: Duration::from_secs(1),
            acks_needed: 1,
        }
    }
}
