//! `MappedFileQueue`: the ordered segments of one log (CommitLog or one
//! ConsumeQueue) in a directory, found by global offset, rolled when full.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::error::{Result, StoreError};
use crate::mapped_file::{segment_name, MappedFile};
use crate::vfs::{self, OpenMode, VfsRef};

pub struct MappedFileQueue {
    vfs: VfsRef,
    dir: PathBuf,
    file_size: u64,
    files: RwLock<Vec<Arc<MappedFile>>>,
    /// The next segment, created ahead of time off the append path.
    prealloc: Mutex<Option<Arc<MappedFile>>>,
    /// Segments are written with pwrite (see `MappedFile::set_syscall_writes`).
    syscall_writes: std::sync::atomic::AtomicBool,
    /// New segments get written zero blocks (SYNC_FLUSH; see `new_segment`).
    zero_new: std::sync::atomic::AtomicBool,
}

impl MappedFileQueue {
    /// Open every 20-digit-named segment in `dir` (created if missing).
    pub fn load(vfs: &VfsRef, dir: &Path, file_size: u64) -> Result<MappedFileQueue> {
        create_dir_durable(&**vfs, dir)?;
        let mut bases = Vec::new();
        let rd = vfs
            .list_dir(dir)
            .map_err(|e| StoreError::io("list directory", dir, e))?;
        for entry in rd {
            let name = entry.name;
            let Some(name) = name.to_str() else { continue };
            if name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(base) = name.parse::<u64>() {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let mut files = Vec::with_capacity(bases.len());
        let last_base = bases.last().copied();
        for base in bases {
            if Some(base) == last_base {
                extend_short_tail(vfs, &dir.join(segment_name(base)), file_size)?;
            }
            if !base.is_multiple_of(file_size) {
                return Err(StoreError::Corrupt {
                    path: dir.join(segment_name(base)),
                    reason: format!("segment name is not a multiple of the file size {file_size}"),
                });
            }
            if let Some(prev) = files.last() {
                let prev: &Arc<MappedFile> = prev;
                if prev.base() + file_size != base {
                    return Err(StoreError::Corrupt {
                        path: dir.join(segment_name(base)),
                        reason: format!("gap in segments after {}", segment_name(prev.base())),
                    });
                }
            }
            files.push(Arc::new(MappedFile::open(
                vfs,
                &dir.join(segment_name(base)),
                base,
                file_size,
            )?));
        }
        Ok(MappedFileQueue {
            vfs: vfs.clone(),
            dir: dir.to_path_buf(),
            file_size,
            files: RwLock::new(files),
            prealloc: Mutex::new(None),
            syscall_writes: std::sync::atomic::AtomicBool::new(false),
            zero_new: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    pub fn first(&self) -> Option<Arc<MappedFile>> {
        self.files.read().first().cloned()
    }
    pub fn last(&self) -> Option<Arc<MappedFile>> {
        self.files.read().last().cloned()
    }
    pub fn len(&self) -> usize {
        self.files.read().len()
    }
    pub fn is_empty(&self) -> bool {
        self.files.read().is_empty()
    }
    pub fn snapshot(&self) -> Vec<Arc<MappedFile>> {
        self.files.read().clone()
    }

    /// Offset of the first byte still on disk (0 if empty).
    pub fn min_offset(&self) -> u64 {
        self.files.read().first().map(|f| f.base()).unwrap_or(0)
    }

    /// End of visible data: base + wrote of the last segment.
    pub fn max_offset(&self) -> u64 {
        self.files
            .read()
            .last()
            .map(|f| f.base() + f.wrote())
            .unwrap_or(0)
    }

    /// The segment containing global `offset`.
    pub fn find(&self, offset: u64) -> Option<Arc<MappedFile>> {
        let files = self.files.read();
        let first = files.first()?;
        if offset < first.base() {
            return None;
        }
        let idx = ((offset - first.base()) / self.file_size) as usize;
        let f = files.get(idx)?;
        (offset >= f.base() && offset < f.base() + self.file_size).then(|| f.clone())
    }

    /// Create and append the segment starting at `base` (must be the next one).
    pub fn create(&self, base: u64) -> Result<Arc<MappedFile>> {
        // Lock order everywhere: prealloc slot, then the file list.
        let mut slot = self.prealloc.lock();
        let mut files = self.files.write();
        if let Some(last) = files.last() {
            if last.base() + self.file_size != base {
                return Err(StoreError::Corrupt {
                    path: self.dir.join(segment_name(base)),
                    reason: format!("new segment does not follow {}", segment_name(last.base())),
                });
            }
        } else if !base.is_multiple_of(self.file_size) {
            return Err(StoreError::Corrupt {
                path: self.dir.join(segment_name(base)),
                reason: "first segment not aligned to the file size".into(),
            });
        }
        let ready = slot.take().filter(|f| f.base() == base);
        let f = match ready {
            Some(f) => f,
            None => self.new_segment(base)?,
        };
        files.push(f.clone());
        Ok(f)
    }

    /// Makes every segment, present and future, write through pwrite, new
    /// ones with written zero blocks (SYNC_FLUSH: an fdatasync then has no
    /// extent to convert).
    pub fn set_syscall_writes(&self, on: bool) {
        self.zero_new
            .store(on, std::sync::atomic::Ordering::Release);
        self.set_pwrite(on);
    }

    /// Makes every segment, present and future, write through pwrite, new
    /// ones only reserved as usual. For a replica: its appends are large
    /// replicated batches, and pwrite fills page-cache pages without the
    /// kernel zeroing each fresh page first, as a store into the mapping
    /// (or the warmer ahead of it) makes it do.
    pub fn set_pwrite_appends(&self, on: bool) {
        self.set_pwrite(on);
    }

    /// Whether segments are written with pwrite.
    pub fn syscall_writes(&self) -> bool {
        self.syscall_writes
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_pwrite(&self, on: bool) {
        use std::sync::atomic::Ordering;
        self.syscall_writes.store(on, Ordering::Release);
        for f in self.files.read().iter() {
            f.set_syscall_writes(on);
        }
        if let Some(f) = self.prealloc.lock().as_ref() {
            f.set_syscall_writes(on);
        }
    }

    fn new_segment(&self, base: u64) -> Result<Arc<MappedFile>> {
        use std::sync::atomic::Ordering;
        // SYNC_FLUSH segments get written blocks (see
        // `MappedFile::create_with`).
        let syscall = self.syscall_writes.load(Ordering::Acquire);
        let f = MappedFile::create_with(
            &self.vfs,
            &self.dir.join(segment_name(base)),
            base,
            self.file_size,
            self.zero_new.load(Ordering::Acquire),
        )?;
        f.set_syscall_writes(syscall);
        Ok(Arc::new(f))
    }

    /// The segment created ahead of time, if any.
    pub fn preallocated(&self) -> Option<Arc<MappedFile>> {
        self.prealloc.lock().clone()
    }

    /// Create the segment after the last one now (file creation and block
    /// reservation happen here, not under the append lock). A crash leaves
    /// it as an all-zero segment past the end, which recovery removes.
    pub fn preallocate_next(&self) -> Result<()> {
        let mut slot = self.prealloc.lock();
        let Some(last) = self.last() else {
            return Ok(());
        };
        let base = last.base() + self.file_size;
        if slot.as_ref().is_some_and(|f| f.base() == base) {
            return Ok(());
        }
        *slot = Some(self.new_segment(base)?);
        Ok(())
    }

    /// Flush every segment overlapping `[.., upto)` that still has dirty bytes.
    pub fn flush(&self, upto: u64) -> Result<()> {
        for f in self.snapshot() {
            if f.base() >= upto {
                break;
            }
            if f.flushed() < f.size().min(upto - f.base()) {
                f.flush(upto - f.base())?;
            }
        }
        Ok(())
    }

    /// Remove (and unlink) every segment whose base is >= `offset`.
    pub fn drop_from(&self, offset: u64) {
        let mut files = self.files.write();
        while files.last().is_some_and(|f| f.base() >= offset) {
            if let Some(f) = files.pop() {
                f.destroy_now();
            }
        }
    }

    /// Remove the first `n` segments from the list (already destroyed).
    pub fn remove_first(&self, n: usize) {
        let mut files = self.files.write();
        let n = n.min(files.len());
        files.drain(..n);
    }
}

/// A last segment shorter than the segment size is a torn tail (e.g. the
/// file was cut): extend it with zeros so recovery can find the valid end.
fn extend_short_tail(vfs: &VfsRef, path: &Path, file_size: u64) -> Result<()> {
    let len = vfs
        .file_len(path)
        .map_err(|e| StoreError::io("stat segment", path, e))?;
    if len < file_size {
        tracing::warn!(path = %path.display(), len, file_size, "last segment is short; extending with zeros");
        let f = vfs
            .open(path, OpenMode::Existing)
            .map_err(|e| StoreError::io("open segment", path, e))?;
        f.set_len(file_size)
            .map_err(|e| StoreError::io("extend segment", path, e))?;
        f.sync_data()
            .map_err(|e| StoreError::io("extend segment", path, e))?;
    }
    Ok(())
}

/// Create `dir` and any missing parents so that they survive a power loss:
/// each new directory's name is made durable by syncing its parent.
pub(crate) fn create_dir_durable(vfs: &dyn vfs::Vfs, dir: &Path) -> Result<()> {
    if vfs.exists(dir) {
        return Ok(());
    }
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !vfs.exists(a))
        .collect();
    vfs.create_dir_all(dir)
        .map_err(|e| StoreError::io("create directory", dir, e))?;
    for d in missing.iter().rev() {
        let parent = vfs::parent_dir(d);
        vfs.sync_dir(&parent)
            .map_err(|e| StoreError::io("sync directory", &parent, e))?;
    }
    Ok(())
}
