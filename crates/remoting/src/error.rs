//! Errors returned by the remoting server, client and channels.

use apogee_protocol::codec::CodecError;
use thiserror::Error;

/// Everything that can go wrong while talking to a peer.
#[derive(Debug, Error)]
pub enum RemotingError {
    #[error("cannot connect to {addr}: {source}")]
    ConnectFailed {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind {addr}: {source}")]
    BindFailed {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no response from {addr} within {millis} ms")]
    Timeout { addr: String, millis: u64 },
    #[error("connection to {addr} is closed")]
    ConnectionClosed { addr: String },
    #[error("write queue to {addr} is full")]
    QueueFull { addr: String },
    #[error("the remoting client is closed")]
    ClientClosed,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = RemotingError> = std::result::Result<T, E>;
