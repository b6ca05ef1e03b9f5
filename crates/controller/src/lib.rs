//! apogee-controller owns RocketMQ 5's controller mode: a small group of
//! controllers (`apogee controller`) that agree, through Raft (the
//! `openraft` crate), on who is master of each broker set, the master epoch
//! and the SyncStateSet (the replicas known to hold every acknowledged
//! message), and elect a new master from that set when the master's
//! heartbeats stop. Brokers talk to it with Apache's controller request
//! codes, so the broker side and `mqadmin` see the same API as Apache's
//! controller. The replicated state is a pure state machine
//! ([`state::ControllerState`]); the Raft log, vote and snapshots live as
//! files under `controllerStorePath`; Raft RPCs between controllers travel
//! over the project's remoting layer on the peer ports given in
//! `controllerDLegerPeers`. Heartbeats are not replicated: each controller
//! keeps its own table, and brokers send them to every controller.

pub mod config;
pub mod error;
pub mod processor;
pub mod raft;
pub mod server;
pub mod state;

pub use config::ControllerConfig;
pub use error::ControllerError;
pub use server::ControllerServer;
