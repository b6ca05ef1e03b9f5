//! `MessageStoreConfig`: the store's settings, named after RocketMQ's keys
//! (camelCase in serialized form) with RocketMQ's defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{OpenError, Result};

/// Size of one ConsumeQueue entry in bytes.
pub const CQ_ENTRY_SIZE: u64 = 20;

/// When a write is acknowledged relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum FlushDiskType {
    /// Acknowledge once the message is in the page cache; flush in the background.
    #[serde(rename = "ASYNC_FLUSH")]
    #[default]
    AsyncFlush,
    /// Acknowledge only after fdatasync covers the message (group commit).
    #[serde(rename = "SYNC_FLUSH")]
    SyncFlush,
}

/// Store configuration. Unknown keys are ignored when deserializing and
/// missing keys take their defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageStoreConfig {
    /// Root directory: `commitlog/`, `consumequeue/`, `index/`, `checkpoint`, `abort`, `lock`.
    pub store_path_root_dir: PathBuf,
    /// Size of one CommitLog segment in bytes (default 1 GiB).
    pub mapped_file_size_commit_log: u64,
    /// Size of one ConsumeQueue segment in bytes; a multiple of 20 (default 300 000 × 20).
    pub mapped_file_size_consume_queue: u64,
    pub flush_disk_type: FlushDiskType,
    /// ASYNC_FLUSH: flush at least this often (ms).
    pub flush_interval_commit_log: u64,
    /// ASYNC_FLUSH: flush early once this many 4 KiB pages are dirty.
    pub flush_commit_log_least_pages: u64,
    /// How often ConsumeQueues and index files are flushed and the checkpoint written (ms).
    pub flush_interval_consume_queue: u64,
    /// A ConsumeQueue's new entries are written to its file once they fill
    /// this many 4 KiB pages, or at the thorough interval (0: every flush).
    pub flush_consume_queue_least_pages: u64,
    /// Every ConsumeQueue's new entries are written at least this often (ms).
    pub flush_consume_queue_thorough_interval: u64,
    /// New ConsumeQueue entries held in memory before the dispatcher waits
    /// for the ConsumeQueue flusher (bytes; not a RocketMQ key).
    pub max_unwritten_consume_queue_bytes: u64,
    /// SYNC_FLUSH: how long a writer waits for its flush before FLUSH_DISK_TIMEOUT (ms).
    pub sync_flush_timeout: u64,
    /// Largest accepted message body, in bytes (`maxMessageSize`); the stored
    /// record around it may add up to 64 KiB, as in Apache RocketMQ.
    pub max_message_size: usize,
    /// CommitLog segments older than this many hours are deleted.
    pub file_reserved_time: u64,
    /// Hours of the day (local time) at which expired files are deleted, `;`-separated.
    pub delete_when: String,
    /// Disk use (percent) above which expired files are deleted at any hour.
    pub disk_max_used_space_ratio: u32,
    /// Disk use (percent) above which even unexpired segments are deleted, oldest first.
    pub disk_space_clean_forcibly_ratio: u32,
    /// Disk use (percent) above which writes are refused ("disk full").
    pub disk_space_warning_level_ratio: u32,
    /// How often retention runs (ms).
    pub clean_resource_interval: u64,
    /// How often disk usage is probed (ms).
    pub disk_check_interval: u64,
    /// A segment still referenced by readers is deleted anyway after this long (ms).
    pub destroy_mapped_file_interval_forcibly: u64,
    /// Segments deleted per cleanup round at most.
    pub delete_files_batch_max: usize,
    pub message_index_enable: bool,
    /// Hash slots per index file.
    pub max_hash_slot_num: u32,
    /// Entries per index file (the file rolls over when full).
    pub max_index_num: u32,
    /// Most ConsumeQueue entries examined by one `get_messages` call while filtering.
    pub max_filter_message_count: u32,
}

impl Default for MessageStoreConfig {
    fn default() -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        MessageStoreConfig {
            store_path_root_dir: home.join("store"),
            mapped_file_size_commit_log: 1024 * 1024 * 1024,
            mapped_file_size_consume_queue: 300_000 * CQ_ENTRY_SIZE,
            flush_disk_type: FlushDiskType::AsyncFlush,
            flush_interval_commit_log: 500,
            flush_commit_log_least_pages: 4,
            flush_interval_consume_queue: 1000,
            flush_consume_queue_least_pages: 2,
            flush_consume_queue_thorough_interval: 60_000,
            max_unwritten_consume_queue_bytes: 256 << 20,
            sync_flush_timeout: 5000,
            max_message_size: 4 * 1024 * 1024,
            file_reserved_time: 72,
            delete_when: "04".to_string(),
            disk_max_used_space_ratio: 75,
            disk_space_clean_forcibly_ratio: 85,
            disk_space_warning_level_ratio: 90,
            clean_resource_interval: 10_000,
            disk_check_interval: 1000,
            destroy_mapped_file_interval_forcibly: 120_000,
            delete_files_batch_max: 10,
            message_index_enable: true,
            max_hash_slot_num: 5_000_000,
            max_index_num: 20_000_000,
            max_filter_message_count: 800,
        }
    }
}

impl MessageStoreConfig {
    /// Defaults with the given root directory.
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        MessageStoreConfig {
            store_path_root_dir: root.into(),
            ..Default::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), OpenError> {
        let page = 4096;
        if self.mapped_file_size_commit_log < page
            || self.mapped_file_size_commit_log > i32::MAX as u64 + 1
        {
            return Err(OpenError::Config(format!(
                "mappedFileSizeCommitLog must be in [4096, 2^31], got {}",
                self.mapped_file_size_commit_log
            )));
        }
        let cq = self.mapped_file_size_consume_queue;
        if cq < CQ_ENTRY_SIZE || !cq.is_multiple_of(CQ_ENTRY_SIZE) {
            return Err(OpenError::Config(format!(
                "mappedFileSizeConsumeQueue must be a positive multiple of 20, got {cq}"
            )));
        }
        if self.max_message_size == 0 {
            return Err(OpenError::Config("maxMessageSize must be > 0".into()));
        }
        if self.max_hash_slot_num == 0 || self.max_index_num < 2 {
            return Err(OpenError::Config(
                "maxHashSlotNum must be > 0 and maxIndexNum >= 2".into(),
            ));
        }
        for r in [
            self.disk_max_used_space_ratio,
            self.disk_space_clean_forcibly_ratio,
            self.disk_space_warning_level_ratio,
        ] {
            if r > 100 {
                return Err(OpenError::Config(format!(
                    "disk ratios are percents, got {r}"
                )));
            }
        }
        Ok(())
    }

    /// Hours of the day listed in `deleteWhen` (invalid parts ignored).
    pub(crate) fn delete_hours(&self) -> Vec<u32> {
        self.delete_when
            .split(';')
            .filter_map(|h| h.trim().parse::<u32>().ok())
            .filter(|h| *h < 24)
            .collect()
    }

    pub(crate) fn commitlog_dir(&self) -> PathBuf {
        self.store_path_root_dir.join("commitlog")
    }
    pub(crate) fn consumequeue_dir(&self) -> PathBuf {
        self.store_path_root_dir.join("consumequeue")
    }
    pub(crate) fn index_dir(&self) -> PathBuf {
        self.store_path_root_dir.join("index")
    }
}
