//! The store's errors, one enum per operation where callers must tell the
//! cases apart (as redb does: `StorageError` inside `CommitError`,
//! `TransactionError`, ...):
//!
//! - [`StoreError`]: the store's files failed (I/O, corruption) or its own
//!   background work did; what every operation can meet, and all the
//!   internals return. Each operation's error wraps it (`Store`), so `?`
//!   works from the internals up.
//! - [`OpenError`], of [`crate::MessageStore::open`].
//! - [`PutError`], of the `put_*` calls (and [`WriteRefused`], the part of it a
//!   replicated append shares, see [`crate::ReplicaAppendError`]).
//! - [`DeleteTopicsError`], of [`crate::MessageStore::delete_topics`].
//!
//! Reads and queries do not fail: they answer with a status.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the crate (the error defaults to [`StoreError`]).
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store's files or its background work failed.
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
    /// A file on disk is not what the store expects.
    #[error("corrupt store file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A record already in the CommitLog cannot be dispatched or placed (a
    /// topic that cannot name a directory, replicated bytes that do not fit).
    #[error("illegal message: {0}")]
    IllegalRecord(String),
    /// New ConsumeQueue entries wait in memory for a flusher that cannot
    /// write them (dispatch pauses until it can).
    #[error("{bytes} bytes of ConsumeQueue entries are not yet written (limit {limit}); the ConsumeQueue flusher is behind or failing")]
    ConsumeQueueBacklog { bytes: u64, limit: u64 },
}

impl StoreError {
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            context,
            path: path.into(),
            source,
        }
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

/// The text of both `DiskFull` variants.
fn disk_full(used_percent: f64, limit_percent: u32) -> String {
    format!(
        "disk full: {used_percent:.1}% of the store's disk is used, writes are refused above \
         {limit_percent}% (diskSpaceWarningLevelRatio); free space or wait for cleanup"
    )
}

/// Why [`crate::MessageStore::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the store's lock file.
    #[error("store directory {0} is locked by another process")]
    Locked(PathBuf),
    /// Configuration is invalid.
    #[error("invalid store config: {0}")]
    Config(String),
    /// A file could not be read or written, or is corrupt.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why the store takes no writes at the moment: puts and replicated appends
/// alike. Reads keep working.
#[derive(Debug, thiserror::Error)]
pub enum WriteRefused {
    /// The disk is too full.
    #[error("{}", disk_full(*used_percent, *limit_percent))]
    DiskFull {
        used_percent: f64,
        limit_percent: u32,
    },
    /// An earlier write or flush failed (writes resume once one succeeds).
    #[error("store is not writable: {0}")]
    NotWritable(&'static str),
    /// The store has been shut down.
    #[error("store is shut down")]
    ShutDown,
}

/// Why a put (`put_message`, `put_messages` and their `_async` forms) failed.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The message (or a message of the batch) is larger than `maxMessageSize`.
    #[error("message too large: {size} bytes, maxMessageSize is {max}")]
    MessageTooLarge { size: usize, max: usize },
    /// The encoded record does not fit in one CommitLog segment at all.
    #[error("record of {size} bytes cannot fit in a CommitLog segment of {segment} bytes")]
    DoesNotFitSegment { size: usize, segment: u64 },
    /// The message is malformed (bad field, bad batch, bad topic).
    #[error("illegal message: {0}")]
    IllegalMessage(String),
    /// Encoding a message failed in the protocol layer.
    #[error("message encoding failed: {0}")]
    Encode(String),
    /// Writes are refused because the disk is too full.
    #[error("{}", disk_full(*used_percent, *limit_percent))]
    DiskFull {
        used_percent: f64,
        limit_percent: u32,
    },
    /// Writes are refused after an earlier write or flush failed.
    #[error("store is not writable: {0}")]
    NotWritable(&'static str),
    /// Refused before reaching the store: too many puts in flight or appends
    /// stalled (the broker's flow control; the store itself never says so).
    #[error("store is busy: {0}")]
    Busy(&'static str),
    /// The store has been shut down.
    #[error("store is shut down")]
    ShutDown,
    /// A file could not be written (or read).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PutError {
    /// True for [`PutError::DiskFull`].
    pub fn is_disk_full(&self) -> bool {
        matches!(self, PutError::DiskFull { .. })
    }

    /// True when an I/O call failed for lack of space (see
    /// [`StoreError::is_out_of_space`]).
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, PutError::Store(e) if e.is_out_of_space())
    }
}

impl From<WriteRefused> for PutError {
    fn from(e: WriteRefused) -> Self {
        match e {
            WriteRefused::DiskFull {
                used_percent,
                limit_percent,
            } => PutError::DiskFull {
                used_percent,
                limit_percent,
            },
            WriteRefused::NotWritable(reason) => PutError::NotWritable(reason),
            WriteRefused::ShutDown => PutError::ShutDown,
        }
    }
}

/// Why [`crate::MessageStore::delete_topics`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DeleteTopicsError {
    /// The store has been shut down.
    #[error("store is shut down")]
    ShutDown,
    /// The queues are gone, but writing the checkpoint past their records
    /// failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
