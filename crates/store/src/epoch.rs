//! The epoch file and CommitLog truncation, for replicas whose master
//! changes (controller mode). The epoch file (`epochFileCheckpoint` in the
//! store root) lists, for each master epoch this log holds data of, the
//! CommitLog offset where that epoch's data starts. Two replicas agree on
//! their logs up to the end of the last epoch both list with the same start;
//! past it a returning master may hold records the new master never had,
//! which it must cut ([`truncate_commit_log`]) before following. The store
//! only keeps and compares lists; who exchanges them is not its business.

use std::path::{Path, PathBuf};

use crate::checkpoint::CheckpointFile;
use crate::config::MessageStoreConfig;
use crate::error::{Result, StoreError};
use crate::vfs::{self, OpenMode, VfsRef};

/// One epoch's first CommitLog offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: u32,
    pub start_offset: u64,
}

/// Why the epoch file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EpochFileError {
    #[error("epoch file {path}: line {line} is not 'epoch startOffset': '{text}'")]
    BadLine {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("epoch file {path}: epochs must increase and offsets never decrease (line {line})")]
    OutOfOrder { path: PathBuf, line: usize },
    #[error("epoch file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The epoch list of one store, kept in a small text file (one
/// `epoch startOffset` pair a line) replaced atomically on each change.
pub struct EpochFile {
    vfs: VfsRef,
    path: PathBuf,
    entries: Vec<EpochEntry>,
}

impl EpochFile {
    pub const FILE_NAME: &'static str = "epochFileCheckpoint";

    /// Loads the list of the store under `root` (empty when absent).
    pub fn load(root: &Path) -> std::result::Result<EpochFile, EpochFileError> {
        Self::load_with(vfs::real(), root)
    }

    pub fn load_with(vfs: VfsRef, root: &Path) -> std::result::Result<EpochFile, EpochFileError> {
        let path = root.join(Self::FILE_NAME);
        let io = |source| EpochFileError::Io {
            path: path.clone(),
            source,
        };
        let text = vfs::read_file(&*vfs, &path)
            .map_err(io)?
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let mut entries: Vec<EpochEntry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = || EpochFileError::BadLine {
                path: path.clone(),
                line: i + 1,
                text: line.to_string(),
            };
            let (e, o) = line.split_once(' ').ok_or_else(bad)?;
            let entry = EpochEntry {
                epoch: e.trim().parse().map_err(|_| bad())?,
                start_offset: o.trim().parse().map_err(|_| bad())?,
            };
            if let Some(last) = entries.last() {
                if entry.epoch <= last.epoch || entry.start_offset < last.start_offset {
                    return Err(EpochFileError::OutOfOrder {
                        path: path.clone(),
                        line: i + 1,
                    });
                }
            }
            entries.push(entry);
        }
        Ok(EpochFile { vfs, path, entries })
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn last_epoch(&self) -> Option<u32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Replaces the whole list (a replica taking its master's).
    pub fn replace(&mut self, entries: Vec<EpochEntry>) -> std::result::Result<(), EpochFileError> {
        let sorted = entries
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].start_offset <= w[1].start_offset);
        if !sorted {
            return Err(EpochFileError::OutOfOrder {
                path: self.path.clone(),
                line: 0,
            });
        }
        self.entries = entries;
        self.save()
    }

    /// Records that `epoch` starts at `start_offset` (a broker becoming
    /// master). An epoch already listed is left alone; an entry of a later
    /// epoch, or starting past `start_offset`, is dropped first.
    pub fn append(
        &mut self,
        epoch: u32,
        start_offset: u64,
    ) -> std::result::Result<(), EpochFileError> {
        if self.entries.iter().any(|e| e.epoch == epoch) {
            return Ok(());
        }
        self.entries
            .retain(|e| e.epoch < epoch && e.start_offset <= start_offset);
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.save()
    }

    /// Drops epochs that start past `offset` (after a truncation).
    pub fn truncate_past(&mut self, offset: u64) -> std::result::Result<(), EpochFileError> {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset <= offset);
        if self.entries.len() != before {
            self.save()?;
        }
        Ok(())
    }

    fn save(&self) -> std::result::Result<(), EpochFileError> {
        let mut text = String::new();
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        vfs::write_atomic(&*self.vfs, &self.path, text.as_bytes()).map_err(|e| EpochFileError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// Where a replica's log stops agreeing with its master's: the end of the
/// last epoch both list with the same start (an epoch ends where the next
/// one starts, or at the log's end), or None when they share no epoch.
pub fn common_end(
    local: &[EpochEntry],
    local_max: u64,
    master: &[EpochEntry],
    master_max: u64,
) -> Option<u64> {
    let end_of =
        |list: &[EpochEntry], i: usize, max: u64| list.get(i + 1).map_or(max, |n| n.start_offset);
    for (li, l) in local.iter().enumerate().rev() {
        if let Some(mi) = master
            .iter()
            .position(|m| m.epoch == l.epoch && m.start_offset == l.start_offset)
        {
            return Some(end_of(local, li, local_max).min(end_of(master, mi, master_max)));
        }
    }
    None
}

/// What [`truncate_commit_log`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    /// Bytes of CommitLog dropped.
    pub removed: u64,
}

/// Cuts the CommitLog of the (closed) store at `offset`, a record boundary:
/// later segments are deleted, the tail of the one holding `offset` reads as
/// zeros, and the checkpoint is lowered so that the next open's recovery
/// stops there and drops the ConsumeQueue and index entries past it.
pub fn truncate_commit_log(config: &MessageStoreConfig, offset: u64) -> Result<Truncated> {
    let vfs = vfs::real();
    let dir = config.commitlog_dir();
    let seg = config.mapped_file_size_commit_log;
    let names = match vfs.list_dir(&dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Truncated { removed: 0 });
        }
        Err(e) => return Err(StoreError::io("list CommitLog", &dir, e)),
    };
    let mut removed = 0u64;
    let mut bases: Vec<u64> = names
        .iter()
        .filter(|d| !d.is_dir)
        .filter_map(|d| d.name.to_str()?.parse::<u64>().ok())
        .collect();
    bases.sort_unstable();
    // Latest first: a crash part-way leaves a shorter log, never a hole.
    for &base in bases.iter().rev() {
        let path = dir.join(format!("{base:020}"));
        if base >= offset {
            removed += seg;
            vfs.remove_file(&path)
                .map_err(|e| StoreError::io("remove CommitLog segment", &path, e))?;
        } else if offset < base + seg {
            let f = vfs
                .open(&path, OpenMode::Existing)
                .map_err(|e| StoreError::io("open CommitLog segment", &path, e))?;
            let local = offset - base;
            removed += seg - local;
            f.punch_hole(local, seg - local)
                .or_else(|_| zero_fill(&*f, local, seg))
                .and_then(|()| f.sync_data())
                .map_err(|e| StoreError::io("cut CommitLog segment", &path, e))?;
        }
    }
    vfs.sync_dir(&dir)
        .map_err(|e| StoreError::io("sync directory", &dir, e))?;
    lower_checkpoint(&vfs, &config.store_path_root_dir, offset)?;
    tracing::warn!(offset, removed, "CommitLog truncated");
    Ok(Truncated { removed })
}

fn zero_fill(f: &dyn crate::vfs::VfsFile, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut pos = from;
    while pos < to {
        let n = ((to - pos) as usize).min(zeros.len());
        f.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

fn lower_checkpoint(vfs: &VfsRef, root: &Path, offset: u64) -> Result<()> {
    let path = root.join("checkpoint");
    if !vfs.exists(&path) {
        return Ok(());
    }
    let (file, cp) = CheckpointFile::open(vfs, &path)?;
    if let Some(mut cp) = cp {
        cp.commitlog_flushed_offset = cp.commitlog_flushed_offset.min(offset);
        cp.dispatched_flushed_offset = cp.dispatched_flushed_offset.min(offset);
        file.write(&cp)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: u32, start_offset: u64) -> EpochEntry {
        EpochEntry {
            epoch,
            start_offset,
        }
    }

    #[test]
    fn common_end_is_where_the_logs_stop_agreeing() {
        // The old master wrote epoch 1 up to 500; the new master was at 300
        // when it took epoch 2 and wrote on from there.
        let old = [e(1, 0)];
        let new = [e(1, 0), e(2, 300)];
        assert_eq!(common_end(&old, 500, &new, 800), Some(300));
        // A slave behind the new master's epoch start agrees with all it has.
        assert_eq!(common_end(&old, 200, &new, 800), Some(200));
        // Same history: nothing to cut.
        assert_eq!(common_end(&new, 800, &new, 900), Some(800));
        assert_eq!(common_end(&[e(3, 0)], 10, &new, 800), None);
        assert_eq!(common_end(&[], 0, &new, 800), None);
    }

    #[test]
    fn epoch_file_roundtrip_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = EpochFile::load(dir.path()).unwrap();
        f.append(1, 0).unwrap();
        f.append(1, 50).unwrap();
        f.append(3, 100).unwrap();
        let f2 = EpochFile::load(dir.path()).unwrap();
        assert_eq!(f2.entries(), &[e(1, 0), e(3, 100)]);
        let mut f3 = EpochFile::load(dir.path()).unwrap();
        f3.truncate_past(99).unwrap();
        assert_eq!(EpochFile::load(dir.path()).unwrap().entries(), &[e(1, 0)]);
        std::fs::write(dir.path().join(EpochFile::FILE_NAME), "2 10\n1 20\n").unwrap();
        assert!(matches!(
            EpochFile::load(dir.path()),
            Err(EpochFileError::OutOfOrder { .. })
        ));
        std::fs::write(dir.path().join(EpochFile::FILE_NAME), "x\n").unwrap();
        assert!(matches!(
            EpochFile::load(dir.path()),
            Err(EpochFileError::BadLine { .. })
        ));
    }
}
