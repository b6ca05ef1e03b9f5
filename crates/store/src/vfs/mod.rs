//! The store's one door to the file system. Every file operation the store
//! makes (create, allocate, read, write, map, msync, fdatasync, rename,
//! delete, directory sync, lock) goes through a [`Vfs`], so tests can swap
//! the real file system for one that fails on demand ([`fault::FaultyVfs`])
//! or one that keeps only what was synced and can "lose power"
//! ([`sim::SimVfs`]). The store never calls `std::fs` directly.

pub mod fault;
pub mod sim;

use std::any::Any;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use memmap2::MmapRaw;

/// Shared handle to a file system.
pub type VfsRef = Arc<dyn Vfs>;

/// One kind of file-system operation (what a fault rule can target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Open with create (and truncate, for [`OpenMode::CreateNew`]).
    Create,
    /// Open an existing file.
    Open,
    SetLen,
    /// Reserve blocks (posix_fallocate).
    Allocate,
    PunchHole,
    Read,
    Write,
    Map,
    /// Flush a range of a mapping (msync).
    Msync,
    Fdatasync,
    Rename,
    Remove,
    RemoveDir,
    SyncDir,
    /// Make the whole file system durable (syncfs).
    SyncFs,
    CreateDir,
    ListDir,
    Stat,
    Lock,
}

impl Op {
    /// Every kind, for tests that walk them.
    pub const ALL: [Op; 19] = [
        Op::Create,
        Op::Open,
        Op::SetLen,
        Op::Allocate,
        Op::PunchHole,
        Op::Read,
        Op::Write,
        Op::Map,
        Op::Msync,
        Op::Fdatasync,
        Op::Rename,
        Op::Remove,
        Op::RemoveDir,
        Op::SyncDir,
        Op::SyncFs,
        Op::CreateDir,
        Op::ListDir,
        Op::Stat,
        Op::Lock,
    ];
}

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create it, truncating an existing one.
    CreateNew,
    /// Create it if missing, keep its contents otherwise.
    CreateOrOpen,
    /// It must exist.
    Existing,
}

/// A name in a directory.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: OsString,
    pub is_dir: bool,
}

/// An open file.
#[allow(clippy::len_without_is_empty)] // a file length, not a collection
pub trait VfsFile: Send + Sync {
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserve blocks for `[off, off+len)` so later stores into a mapping
    /// cannot hit a full disk (SIGBUS). File systems without support may
    /// return `Ok` without reserving.
    fn allocate(&self, off: u64, len: u64) -> io::Result<()>;
    /// Make `[off, off+len)` read as zeros, freeing its blocks.
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()>;
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    fn write_all_at(&self, data: &[u8], off: u64) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;
    /// A shared, writable mapping of the whole file (its current length).
    fn map(&self) -> io::Result<MmapRaw>;
    /// Write back `[off, off+len)` of `map` (a mapping of this file) and wait.
    fn msync(&self, map: &MmapRaw, off: u64, len: u64) -> io::Result<()>;
}

/// A held lock; dropping it releases the lock.
pub type LockGuard = Box<dyn Any + Send + Sync>;

/// A file system.
pub trait Vfs: Send + Sync + std::fmt::Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;
    /// Whether `path` names a file or directory (never fails: unreadable is absent).
    fn exists(&self, path: &Path) -> bool;
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Last modification time in ms since the epoch, if known.
    fn modified_ms(&self, path: &Path) -> Option<u64>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// fsync a directory so the names created, renamed or removed in it
    /// survive a power loss.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Make every write and every name on the file system holding `path`
    /// durable (syncfs): one call instead of an fdatasync per file and an
    /// fsync per directory when thousands of files changed.
    fn sync_fs(&self, path: &Path) -> io::Result<()>;
    /// Take an exclusive lock named by `path`; `WouldBlock` if another holder has it.
    fn lock(&self, path: &Path) -> io::Result<LockGuard>;
    /// Names the machine's current boot. A store that finds its abort marker
    /// from the same boot knows only the process died (the page cache kept
    /// every write); from another boot, unsynced writes may be lost or torn.
    fn boot_id(&self) -> Option<String>;
}

/// The operating system's file system.
pub fn real() -> VfsRef {
    Arc::new(RealVfs)
}

/// [`Vfs`] over `std::fs` and the syscalls behind it.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealVfs;

struct RealFile(File);

impl VfsFile for RealFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn allocate(&self, off: u64, len: u64) -> io::Result<()> {
        // SAFETY: plain syscall on an owned fd.
        let rc = unsafe {
            libc::posix_fallocate(self.0.as_raw_fd(), off as libc::off_t, len as libc::off_t)
        };
        match rc {
            0 => Ok(()),
            // No fallocate here (some file systems): the file stays sparse.
            libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        // SAFETY: plain syscall on an owned fd.
        let rc = unsafe {
            libc::fallocate(
                self.0.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
    fn write_all_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        self.0.write_all_at(data, off)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn map(&self) -> io::Result<MmapRaw> {
        MmapRaw::map_raw(&self.0)
    }
    fn msync(&self, map: &MmapRaw, off: u64, len: u64) -> io::Result<()> {
        map.flush_range(off as usize, len as usize)
    }
}

/// The flock behind a [`RealVfs::lock`]: released when the file closes.
struct RealLock(#[allow(dead_code)] File);

impl Vfs for RealVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        match mode {
            OpenMode::CreateNew => o.create(true).truncate(true),
            OpenMode::CreateOrOpen => o.create(true).truncate(false),
            OpenMode::Existing => &mut o,
        };
        Ok(Box::new(RealFile(o.open(path)?)))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(path)? {
            let e = e?;
            out.push(DirEntry {
                name: e.file_name(),
                is_dir: e.file_type()?.is_dir(),
            });
        }
        Ok(out)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
    fn modified_ms(&self, path: &Path) -> Option<u64> {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn sync_fs(&self, path: &Path) -> io::Result<()> {
        let f = File::open(path)?;
        // SAFETY: syncfs on an fd we own; since Linux 5.8 it also reports
        // writeback errors of the file system.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                io::Error::from(io::ErrorKind::WouldBlock)
            } else {
                e
            });
        }
        Ok(Box::new(RealLock(f)))
    }
    fn boot_id(&self) -> Option<String> {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Some(id.trim().to_owned())
    }
}

/// The directory holding `path` ("." for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Where a failed [`write_atomic`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("fdatasync {path}: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error("rename to {path}: {source}")]
    Rename { path: PathBuf, source: io::Error },
    #[error("fsync directory {path}: {source}")]
    SyncDir { path: PathBuf, source: io::Error },
}

impl AtomicWriteError {
    /// The underlying I/O error, by value.
    pub fn into_io(self) -> io::Error {
        match self {
            AtomicWriteError::Create { source, .. }
            | AtomicWriteError::Write { source, .. }
            | AtomicWriteError::Sync { source, .. }
            | AtomicWriteError::Rename { source, .. }
            | AtomicWriteError::SyncDir { source, .. } => source,
        }
    }

    /// The underlying I/O error.
    pub fn io(&self) -> &io::Error {
        match self {
            AtomicWriteError::Create { source, .. }
            | AtomicWriteError::Write { source, .. }
            | AtomicWriteError::Sync { source, .. }
            | AtomicWriteError::Rename { source, .. }
            | AtomicWriteError::SyncDir { source, .. } => source,
        }
    }
}

/// Replace `path` with `data` so that a crash or power loss leaves either the
/// old file or the new one, never a mix: write `path.tmp`, fdatasync it,
/// rename it over `path`, fsync the directory. A failure removes the
/// temporary file, so a full disk leaves no litter.
pub fn write_atomic(vfs: &dyn Vfs, path: &Path, data: &[u8]) -> Result<(), AtomicWriteError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = vfs
        .open(&tmp, OpenMode::CreateNew)
        .map_err(|source| AtomicWriteError::Create {
            path: tmp.clone(),
            source,
        })?;
    let written = file
        .write_all_at(data, 0)
        .map_err(|source| AtomicWriteError::Write {
            path: tmp.clone(),
            source,
        })
        .and_then(|()| {
            file.sync_data().map_err(|source| AtomicWriteError::Sync {
                path: tmp.clone(),
                source,
            })
        });
    drop(file);
    if let Err(e) = written {
        let _ = vfs.remove_file(&tmp);
        return Err(e);
    }
    if let Err(source) = vfs.rename(&tmp, path) {
        let _ = vfs.remove_file(&tmp);
        return Err(AtomicWriteError::Rename {
            path: path.to_path_buf(),
            source,
        });
    }
    let dir = parent_dir(path);
    vfs.sync_dir(&dir)
        .map_err(|source| AtomicWriteError::SyncDir { path: dir, source })
}

/// Read a whole file (None if it does not exist).
pub fn read_file(vfs: &dyn Vfs, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let f = match vfs.open(path, OpenMode::Existing) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.len()?;
    let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    let mut buf = vec![0u8; len];
    let n = f.read_at(&mut buf, 0)?;
    buf.truncate(n);
    Ok(Some(buf))
}
