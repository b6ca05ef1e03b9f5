//! apogee-store: the storage engine (no networking). It owns the CommitLog
//! (every message, in RocketMQ's stored layout, in fixed-size memory-mapped
//! segments), the per-queue ConsumeQueues and the key index built from it by
//! a dispatcher, flushing (async or group-commit sync), the checkpoint and
//! crash recovery, and retention with a disk-full write barrier. The broker
//! talks to it through [`MessageStore`]. File formats: docs/storage-format.md.
//!
//! [`MessageStore`]'s methods live in `store/`, one file per kind of
//! operation (`open`, `put`, `get`, `query`, `admin`, and `logics` for the
//! ConsumeQueue flush and checkpoint); replication's access is in
//! [`replica`]. Errors are one enum per operation ([`error`]): [`OpenError`],
//! [`PutError`], [`DeleteTopicsError`], each wrapping [`StoreError`] for a
//! failed file.

pub mod checkpoint;
pub mod cleanup;
pub mod commit_log;
pub mod config;
pub mod consume_queue;
pub mod dispatch;
pub mod epoch;
pub mod error;
pub mod flush;
pub mod index;
pub mod mapped_file;
pub mod mapped_file_queue;
mod recovery;
pub mod replica;
pub mod store;
pub mod vfs;
mod warm;

pub use cleanup::{DiskUsageProbe, StatvfsProbe};
pub use config::{FlushDiskType, MessageStoreConfig};
pub use dispatch::MessageArrivingListener;
pub use error::{DeleteTopicsError, OpenError, PutError, Result, StoreError, WriteRefused};
pub use flush::FlushWait;
pub use replica::{ReplicaAppend, ReplicaAppendError};
pub use store::{
    GetResult, GetStatus, MessageFilter, MessageStore, PendingPut, PutResult, PutStatus,
    QueryResult, StoreHooks,
};
