//! `BrokerError`: what can go wrong starting, configuring or running the
//! broker (as opposed to per-request failures, which become response codes).

use std::path::PathBuf;
use std::sync::Arc;

use apogee_store::vfs::AtomicWriteError;

/// Errors of the broker crate.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A configuration key has a value the broker cannot use.
    #[error("invalid broker config {key}: {reason}")]
    Config { key: String, reason: String },
    /// A configuration value asks for a feature Apogee does not have yet,
    /// and running without it would be unsafe.
    #[error(
        "broker config {key}={value} is not supported yet: apogee has no {feature}; \
         remove the key or set it to its default"
    )]
    Unsupported {
        key: String,
        value: String,
        feature: &'static str,
    },
    /// The message store could not be opened.
    #[error(transparent)]
    Open(#[from] apogee_store::OpenError),
    /// The message store failed.
    #[error(transparent)]
    Store(#[from] apogee_store::StoreError),
    /// Networking failed (binding a port, reaching a NameServer).
    #[error(transparent)]
    Remoting(#[from] apogee_remoting::RemotingError),
    /// A request or body could not be encoded or decoded.
    #[error(transparent)]
    Protocol(#[from] apogee_protocol::ProtocolError),
    /// A file under the store folder could not be read or written.
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A config file could not be saved; the previous one is intact and the
    /// save is retried. Shared (`Arc`) because every caller waiting on the
    /// failed save gets it.
    #[error("cannot save config file {path}: {source}")]
    ConfigSave {
        path: PathBuf,
        #[source]
        source: Arc<SaveError>,
    },
    /// A persisted JSON file is not what the broker expects.
    #[error("corrupt config file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// Anything else that prevents the broker from starting.
    #[error("broker start failed: {0}")]
    Start(String),
}

impl BrokerError {
    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        BrokerError::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        BrokerError::Io {
            context,
            path: path.into(),
            source,
        }
    }
}

/// Where saving a config file failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
}

impl SaveError {
    /// The underlying I/O error (its errno tells a full disk from an I/O error).
    pub fn io(&self) -> &std::io::Error {
        match self {
            SaveError::CreateDir { source, .. } => source,
            SaveError::Write(e) => e.io(),
        }
    }
}

/// Result alias of the broker crate.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
