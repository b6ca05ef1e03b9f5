//! A [`Vfs`] wrapper that counts every call and fails the ones a rule
//! picks, for tests that walk each I/O call site of the store in turn.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::MmapRaw;
use parking_lot::Mutex;

use super::{DirEntry, LockGuard, Op, OpenMode, Vfs, VfsFile, VfsRef};

/// Which calls fail, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRule {
    /// Only calls of this kind count (None: every call).
    pub op: Option<Op>,
    /// Only calls on a path containing this text count (None: every path).
    pub path_contains: Option<&'static str>,
    /// The first counted call that fails (0-based, among the counted ones).
    pub nth: u64,
    /// The error number returned (ENOSPC, EIO, …).
    pub errno: i32,
    /// Keep failing every counted call after the first failure (a disk that
    /// stays full) instead of failing just one.
    pub sticky: bool,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
    pub path: PathBuf,
}

#[derive(Default)]
struct Plan {
    /// Armed rules, each with its own count of matching calls.
    rules: Mutex<Vec<(FaultRule, u64)>>,
    failures: AtomicU64,
    trace: Mutex<Option<Vec<Call>>>,
}

/// Wraps a file system; see the module docs. Clones share the plan.
#[derive(Clone)]
pub struct FaultyVfs {
    inner: VfsRef,
    plan: Arc<Plan>,
}

impl std::fmt::Debug for FaultyVfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyVfs")
            .field("inner", &self.inner)
            .field("rules", &*self.plan.rules.lock())
            .finish()
    }
}

impl FaultyVfs {
    pub fn new(inner: VfsRef) -> FaultyVfs {
        FaultyVfs {
            inner,
            plan: Arc::new(Plan::default()),
        }
    }

    /// Arm a rule (counting restarts from zero), or disarm with None.
    pub fn set_rule(&self, rule: Option<FaultRule>) {
        self.set_rules(rule.into_iter().collect());
    }

    /// Arm several rules at once (a call fails if any rule says so; each
    /// counts its own matching calls from zero).
    pub fn set_rules(&self, rules: Vec<FaultRule>) {
        *self.plan.rules.lock() = rules.into_iter().map(|r| (r, 0)).collect();
    }

    /// How many calls have failed because of a rule.
    pub fn failures(&self) -> u64 {
        self.plan.failures.load(Ordering::SeqCst)
    }

    /// Start recording every call (kind and path).
    pub fn record(&self) {
        *self.plan.trace.lock() = Some(Vec::new());
    }

    /// The calls recorded since [`FaultyVfs::record`].
    pub fn recorded(&self) -> Vec<Call> {
        self.plan.trace.lock().clone().unwrap_or_default()
    }

    fn check(&self, op: Op, path: &Path) -> io::Result<()> {
        if let Some(t) = self.plan.trace.lock().as_mut() {
            t.push(Call {
                op,
                path: path.to_path_buf(),
            });
        }
        let mut rules = self.plan.rules.lock();
        let mut fail = None;
        for (rule, counted) in rules.iter_mut() {
            if rule.op.is_some_and(|o| o != op)
                || rule
                    .path_contains
                    .is_some_and(|p| !path.to_string_lossy().contains(p))
            {
                continue;
            }
            let n = *counted;
            *counted += 1;
            if fail.is_none() && (n == rule.nth || (rule.sticky && n > rule.nth)) {
                fail = Some(rule.errno);
            }
        }
        drop(rules);
        if let Some(errno) = fail {
            self.plan.failures.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }
}

struct FaultyFile {
    vfs: FaultyVfs,
    path: PathBuf,
    inner: Box<dyn VfsFile>,
}

impl VfsFile for FaultyFile {
    fn len(&self) -> io::Result<u64> {
        self.vfs.check(Op::Stat, &self.path)?;
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.vfs.check(Op::SetLen, &self.path)?;
        self.inner.set_len(len)
    }
    fn allocate(&self, off: u64, len: u64) -> io::Result<()> {
        self.vfs.check(Op::Allocate, &self.path)?;
        self.inner.allocate(off, len)
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        self.vfs.check(Op::PunchHole, &self.path)?;
        self.inner.punch_hole(off, len)
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.vfs.check(Op::Read, &self.path)?;
        self.inner.read_at(buf, off)
    }
    fn write_all_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        self.vfs.check(Op::Write, &self.path)?;
        self.inner.write_all_at(data, off)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.vfs.check(Op::Fdatasync, &self.path)?;
        self.inner.sync_data()
    }
    fn map(&self) -> io::Result<MmapRaw> {
        self.vfs.check(Op::Map, &self.path)?;
        self.inner.map()
    }
    fn msync(&self, map: &MmapRaw, off: u64, len: u64) -> io::Result<()> {
        self.vfs.check(Op::Msync, &self.path)?;
        self.inner.msync(map, off, len)
    }
}

impl Vfs for FaultyVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let op = if mode == OpenMode::Existing {
            Op::Open
        } else {
            Op::Create
        };
        self.check(op, path)?;
        Ok(Box::new(FaultyFile {
            vfs: self.clone(),
            path: path.to_path_buf(),
            inner: self.inner.open(path, mode)?,
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(Op::CreateDir, path)?;
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.check(Op::ListDir, path)?;
        self.inner.list_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.check(Op::Stat, path)?;
        self.inner.file_len(path)
    }
    fn modified_ms(&self, path: &Path) -> Option<u64> {
        self.inner.modified_ms(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, to)?;
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove, path)?;
        self.inner.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.check(Op::RemoveDir, path)?;
        self.inner.remove_dir(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(Op::RemoveDir, path)?;
        self.inner.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check(Op::SyncDir, path)?;
        self.inner.sync_dir(path)
    }
    fn sync_fs(&self, path: &Path) -> io::Result<()> {
        self.check(Op::SyncFs, path)?;
        self.inner.sync_fs(path)
    }
    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        self.check(Op::Lock, path)?;
        self.inner.lock(path)
    }
    fn boot_id(&self) -> Option<String> {
        self.inner.boot_id()
    }
}
