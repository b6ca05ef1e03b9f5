//! The `checkpoint` file: what is known durable, written after every
//! ConsumeQueue/index flush, and read at start to pick the recovery start.
//! The first 40 bytes keep RocketMQ's StoreCheckpoint positions; Apogee adds
//! exact offsets and a CRC after them.

use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::vfs::{OpenMode, VfsFile, VfsRef};

pub const CHECKPOINT_FILE_SIZE: usize = 4096;
const MAGIC: u64 = 0x4150_4745_434B_5054; // "APGECKPT"
const VERSION: u32 = 1;

/// Contents of the checkpoint file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Store time of the newest flushed CommitLog record (RocketMQ physicMsgTimestamp).
    pub physic_msg_timestamp: i64,
    /// Store time of the newest dispatched record whose ConsumeQueue entry is flushed.
    pub logics_msg_timestamp: i64,
    /// Same for the index.
    pub index_msg_timestamp: i64,
    /// CommitLog offset below which the CommitLog is flushed (a record boundary).
    pub commitlog_flushed_offset: u64,
    /// CommitLog offset below which every record's ConsumeQueue and index
    /// entries are flushed (a record boundary).
    pub dispatched_flushed_offset: u64,
}

impl Checkpoint {
    fn encode(&self) -> [u8; CHECKPOINT_FILE_SIZE] {
        let mut b = [0u8; CHECKPOINT_FILE_SIZE];
        b[0..8].copy_from_slice(&self.physic_msg_timestamp.to_be_bytes());
        b[8..16].copy_from_slice(&self.logics_msg_timestamp.to_be_bytes());
        b[16..24].copy_from_slice(&self.index_msg_timestamp.to_be_bytes());
        // 24..40: RocketMQ masterFlushedOffset / confirmPhyOffset (HA), unused: 0.
        b[40..48].copy_from_slice(&MAGIC.to_be_bytes());
        b[48..52].copy_from_slice(&VERSION.to_be_bytes());
        b[52..60].copy_from_slice(&self.commitlog_flushed_offset.to_be_bytes());
        b[60..68].copy_from_slice(&self.dispatched_flushed_offset.to_be_bytes());
        let crc = crc32fast::hash(&b[0..68]);
        b[68..72].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Checkpoint> {
        let rd8 = |p: usize| {
            b.get(p..p + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
        };
        let rd4 = |p: usize| {
            b.get(p..p + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_be_bytes)
        };
        if rd8(40)? != MAGIC || rd4(48)? != VERSION {
            return None;
        }
        if crc32fast::hash(b.get(0..68)?) != rd4(68)? {
            return None;
        }
        Some(Checkpoint {
            physic_msg_timestamp: rd8(0)? as i64,
            logics_msg_timestamp: rd8(8)? as i64,
            index_msg_timestamp: rd8(16)? as i64,
            commitlog_flushed_offset: rd8(52)?,
            dispatched_flushed_offset: rd8(60)?,
        })
    }
}

/// The checkpoint file handle.
pub struct CheckpointFile {
    path: PathBuf,
    file: Box<dyn VfsFile>,
}

impl CheckpointFile {
    /// Open (creating if needed). Returns the stored checkpoint, or None if
    /// the file is new, short or fails its CRC.
    pub fn open(vfs: &VfsRef, path: &Path) -> Result<(CheckpointFile, Option<Checkpoint>)> {
        let existed = vfs.exists(path);
        let file = vfs
            .open(path, OpenMode::CreateOrOpen)
            .map_err(|e| StoreError::io("open checkpoint", path, e))?;
        if !existed {
            let dir = crate::vfs::parent_dir(path);
            vfs.sync_dir(&dir)
                .map_err(|e| StoreError::io("sync directory", &dir, e))?;
        }
        let mut buf = vec![0u8; CHECKPOINT_FILE_SIZE];
        let n = file
            .read_at(&mut buf, 0)
            .map_err(|e| StoreError::io("read checkpoint", path, e))?;
        let cp = if n >= 72 {
            Checkpoint::decode(&buf[..n])
        } else {
            None
        };
        Ok((
            CheckpointFile {
                path: path.to_path_buf(),
                file,
            },
            cp,
        ))
    }

    /// Write and fdatasync.
    pub fn write(&self, cp: &Checkpoint) -> Result<()> {
        self.file
            .write_all_at(&cp.encode(), 0)
            .map_err(|e| StoreError::io("write checkpoint", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("sync checkpoint", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_crc() {
        let cp = Checkpoint {
            physic_msg_timestamp: 1,
            logics_msg_timestamp: 2,
            index_msg_timestamp: 3,
            commitlog_flushed_offset: 4096,
            dispatched_flushed_offset: 100,
        };
        let mut b = cp.encode();
        assert_eq!(Checkpoint::decode(&b), Some(cp));
        b[55] ^= 1;
        assert_eq!(Checkpoint::decode(&b), None);
    }
}
