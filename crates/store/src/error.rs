//! `StoreError`: every way a store operation can fail, with enough context to
//! tell an operator what happened.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, StoreError>;

/// Errors returned by the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O call failed; `context` says what the store was doing.
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The message (or batch) is larger than `maxMessageSize`.
    #[error("message too large: {size} bytes, maxMessageSize is {max}")]
    MessageTooLarge { size: usize, max: usize },
    /// The encoded record does not fit in one CommitLog segment at all.
    #[error("record of {size} bytes cannot fit in a CommitLog segment of {segment} bytes")]
    DoesNotFitSegment { size: usize, segment: u64 },
    /// The message is malformed (bad field, bad batch, bad encoding).
    #[error("illegal message: {0}")]
    IllegalMessage(String),
    /// Writes are refused because the disk is too full; reads keep working.
    #[error(
        "disk full: {used_percent:.1}% of the store's disk is used, writes are refused above \
         {limit_percent}% (diskSpaceWarningLevelRatio); free space or wait for cleanup"
    )]
    DiskFull {
        used_percent: f64,
        limit_percent: u32,
    },
    /// Writes are refused after an earlier write or flush failed.
    #[error("store is not writable: {0}")]
    NotWritable(&'static str),
    /// The store has been shut down.
    #[error("store is shut down")]
    ShutDown,
    /// Another process holds the store's lock file.
    #[error("store directory {0} is locked by another process")]
    Locked(PathBuf),
    /// A file on disk is not what the store expects.
    #[error("corrupt store file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// Configuration is invalid.
    #[error("invalid store config: {0}")]
    Config(String),
    /// New ConsumeQueue entries wait in memory for a flusher that cannot
    /// write them (dispatch pauses until it can).
    #[error("{bytes} bytes of ConsumeQueue entries are not yet written (limit {limit}); the ConsumeQueue flusher is behind or failing")]
    ConsumeQueueBacklog { bytes: u64, limit: u64 },
    /// Encoding a message failed in the protocol layer.
    #[error("message encoding failed: {0}")]
    Encode(String),
}

impl StoreError {
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// True for [`StoreError::DiskFull`].
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }

    /// True when an I/O call failed for lack of space (ENOSPC, or EDQUOT
    /// for a quota): the condition forced cleanup can cure.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
                    || source.kind() == io::ErrorKind::StorageFull
                    || source.kind() == io::ErrorKind::QuotaExceeded
            }
            _ => false,
        }
    }
}
