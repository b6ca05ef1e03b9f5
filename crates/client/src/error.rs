//! The client's error type: what a broker or NameServer refused (with its
//! response code and remark), transport failures, and local misuse.

use apogee_protocol::code::response_code_name;
use apogee_protocol::ProtocolError;
use apogee_remoting::RemotingError;
use thiserror::Error;

/// Everything a client call can fail with.
#[derive(Debug, Error)]
pub enum ClientError {
    /// A broker or NameServer answered with a non-success code.
    #[error("{addr} refused: code {code} ({}) {}", response_code_name(*code).unwrap_or("?"), remark.as_deref().unwrap_or(""))]
    Broker {
        code: i32,
        remark: Option<String>,
        addr: String,
    },
    /// Connecting, writing or waiting for an answer failed.
    #[error(transparent)]
    Remoting(#[from] RemotingError),
    /// A response could not be decoded.
    #[error("bad response: {0}")]
    Protocol(#[from] ProtocolError),
    /// No NameServer knows a route for the topic.
    #[error("no route for topic {0}")]
    NoRoute(String),
    /// The route lists no broker address for this broker name.
    #[error("no address for broker {0}")]
    BrokerNotFound(String),
    /// No NameServer address was configured.
    #[error("no NameServer address configured")]
    NoNameServer,
    /// A bad argument (message too large, empty topic, mixed batch …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The client has not been started, or was shut down.
    #[error("client is not running ({0})")]
    NotRunning(&'static str),
    /// All attempts of a send failed; the last error is kept.
    #[error("send failed after {attempts} attempts: {last}")]
    SendFailed {
        attempts: u32,
        #[source]
        last: Box<ClientError>,
    },
    /// Local file trouble (broadcasting offset store).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A poll or other wait ran out of time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl ClientError {
    /// The broker's response code when a broker said no.
    pub fn response_code(&self) -> Option<i32> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            ClientError::SendFailed { last, .. } => last.response_code(),
            _ => None,
        }
    }

    /// The broker's remark when a broker said no.
    pub fn remark(&self) -> Option<&str> {
        match self {
            ClientError::Broker { remark, .. } => remark.as_deref(),
            ClientError::SendFailed { last, .. } => last.remark(),
            _ => None,
        }
    }

    pub(crate) fn broker(addr: &str, resp: &apogee_protocol::RemotingCommand) -> Self {
        ClientError::Broker {
            code: resp.code,
            remark: resp.remark.clone(),
            addr: addr.to_string(),
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
