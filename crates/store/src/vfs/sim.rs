//! A simulated disk that keeps only what was synced, for power-loss tests.
//!
//! Each file has a "page cache" (a memfd, so mappings, pread and pwrite see
//! one another exactly as on a real file) and a durable image. fdatasync
//! copies the file into its image; msync copies the flushed range. Names
//! follow the same rule: a create, rename or delete is durable only once its
//! directory is fsynced. [`SimVfs::crash`] cuts the power: it returns a new
//! disk holding just the durable state (optionally with a torn prefix of
//! the unsynced bytes of some files, as a disk that was mid-write leaves
//! them), and every later call on the old one fails with EIO, so a store
//! still running on it cannot reach the new image.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::MmapRaw;
use parking_lot::Mutex;

use super::{DirEntry, LockGuard, OpenMode, Vfs, VfsFile};

/// One file: its page cache and what reached the disk.
struct Node {
    cache: File,
    durable: Mutex<Vec<u8>>,
    mtime_ms: AtomicU64,
}

impl Node {
    fn new(contents: &[u8]) -> io::Result<Arc<Node>> {
        let name = CString::new("apogee-sim").map_err(|_| io::Error::other("memfd name"))?;
        // SAFETY: memfd_create with a NUL-terminated name; the fd is ours.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let cache = unsafe { File::from_raw_fd(fd) };
        cache.set_len(contents.len() as u64)?;
        cache.write_all_at(contents, 0)?;
        Ok(Arc::new(Node {
            cache,
            durable: Mutex::new(contents.to_vec()),
            mtime_ms: AtomicU64::new(crate::commit_log::now_ms() as u64),
        }))
    }

    fn cache_contents(&self) -> io::Result<Vec<u8>> {
        let len = self.cache.metadata()?.len() as usize;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = self.cache.read_at(&mut buf[done..], done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(buf)
    }

    fn touch(&self) {
        self.mtime_ms
            .store(crate::commit_log::now_ms() as u64, Ordering::Relaxed);
    }
}

#[derive(Clone)]
enum Entry {
    Dir,
    File(Arc<Node>),
}

#[derive(Default)]
struct State {
    crashed: bool,
    /// What a running program sees.
    live: BTreeMap<PathBuf, Entry>,
    /// What survives a power loss (names whose directory was fsynced).
    durable: BTreeMap<PathBuf, Entry>,
    locks: HashSet<PathBuf>,
    /// Bumped by every crash: the next "boot".
    boot: u64,
}

/// How [`SimVfs::crash`] treats bytes written but never synced.
#[derive(Debug, Clone, Copy)]
pub struct CrashMode {
    /// Seed for every random choice of the crash.
    pub seed: u64,
    /// Chance (0..=1) that a file keeps a torn prefix of its unsynced
    /// bytes, as if the disk had written part of them before the power went.
    pub torn_probability: f64,
}

/// The simulated disk. Cheap to clone (clones share the disk).
#[derive(Clone, Default)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimVfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("SimVfs")
            .field("files", &s.live.len())
            .field("crashed", &s.crashed)
            .finish()
    }
}

fn dead() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

/// Canonical form of a path: components only (no `.`, no trailing slash).
fn norm(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// A small deterministic generator (SplitMix64): crash choices replay from
/// the seed. Public so tests can draw their own seeded choices alike.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)] // not an iterator: never ends
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    /// Uniform-ish in `[0, n)` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

impl SimVfs {
    /// An empty disk whose root directory `/` exists.
    pub fn new() -> SimVfs {
        let vfs = SimVfs::default();
        {
            let mut s = vfs.state.lock();
            s.live.insert(PathBuf::from("/"), Entry::Dir);
            s.durable.insert(PathBuf::from("/"), Entry::Dir);
        }
        vfs
    }

    /// Cut the power. Returns the disk as the next boot finds it; this one
    /// fails every later call.
    pub fn crash(&self, mode: CrashMode) -> io::Result<SimVfs> {
        let mut rng = Rng(mode.seed);
        let mut s = self.state.lock();
        s.crashed = true;
        let durable = std::mem::take(&mut s.durable);
        drop(s);
        let mut out = State {
            boot: self.state.lock().boot + 1,
            ..State::default()
        };
        for (path, entry) in &durable {
            // A name survives only if every directory above it does.
            let reachable = path
                .ancestors()
                .skip(1)
                .all(|a| a.as_os_str().is_empty() || durable.contains_key(a));
            if !reachable {
                continue;
            }
            let e = match entry {
                Entry::Dir => Entry::Dir,
                Entry::File(node) => {
                    let mut image = node.durable.lock().clone();
                    if rng.chance(mode.torn_probability) {
                        tear(&mut image, &node.cache_contents()?, &mut rng);
                    }
                    Entry::File(Node::new(&image)?)
                }
            };
            out.live.insert(path.clone(), e.clone());
            out.durable.insert(path.clone(), e);
        }
        Ok(SimVfs {
            state: Arc::new(Mutex::new(out)),
        })
    }

    /// Names currently visible (for test diagnostics).
    pub fn list_all(&self) -> Vec<PathBuf> {
        self.state.lock().live.keys().cloned().collect()
    }

    fn check(&self) -> io::Result<parking_lot::MutexGuard<'_, State>> {
        let s = self.state.lock();
        if s.crashed {
            return Err(dead());
        }
        Ok(s)
    }

    fn node(&self, path: &Path) -> io::Result<Arc<Node>> {
        match self.check()?.live.get(&norm(path)) {
            Some(Entry::File(n)) => Ok(n.clone()),
            Some(Entry::Dir) => Err(io::Error::from_raw_os_error(libc::EISDIR)),
            None => Err(not_found()),
        }
    }
}

/// Copy a prefix of the bytes where `cache` differs from `image` (the
/// unsynced writes, in file order) into `image`.
fn tear(image: &mut [u8], cache: &[u8], rng: &mut Rng) {
    let len = image.len().min(cache.len());
    let Some(first) = (0..len).find(|&i| image[i] != cache[i]) else {
        return;
    };
    let last = (first..len)
        .rev()
        .find(|&i| image[i] != cache[i])
        .unwrap_or(first);
    let keep = rng.below((last - first + 2) as u64) as usize;
    image[first..first + keep].copy_from_slice(&cache[first..first + keep]);
}

fn parent_of(path: &Path) -> Option<PathBuf> {
    path.parent().map(Path::to_path_buf)
}

/// An open simulated file: the node plus the disk's crash flag.
struct SimFile {
    vfs: SimVfs,
    node: Arc<Node>,
}

impl SimFile {
    fn alive(&self) -> io::Result<()> {
        self.vfs.check().map(drop)
    }
}

impl VfsFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.alive()?;
        Ok(self.node.cache.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.alive()?;
        self.node.touch();
        self.node.cache.set_len(len)
    }
    fn allocate(&self, off: u64, len: u64) -> io::Result<()> {
        self.alive()?;
        let end = off.saturating_add(len);
        if self.node.cache.metadata()?.len() < end {
            self.node.cache.set_len(end)?;
        }
        Ok(())
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        self.alive()?;
        // SAFETY: plain syscall on the memfd we own.
        let rc = unsafe {
            libc::fallocate(
                self.node.cache.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.node.touch();
        Ok(())
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.alive()?;
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .node
                .cache
                .read_at(&mut buf[done..], off + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
    fn write_all_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        self.alive()?;
        self.node.touch();
        self.node.cache.write_all_at(data, off)
    }
    fn sync_data(&self) -> io::Result<()> {
        // Hold the disk's lock while copying so a crash sees all or none of it.
        let _s = self.vfs.check()?;
        let contents = self.node.cache_contents()?;
        *self.node.durable.lock() = contents;
        Ok(())
    }
    fn map(&self) -> io::Result<MmapRaw> {
        self.alive()?;
        MmapRaw::map_raw(&self.node.cache)
    }
    fn msync(&self, map: &MmapRaw, off: u64, len: u64) -> io::Result<()> {
        let _s = self.vfs.check()?;
        let end = off
            .checked_add(len)
            .filter(|e| *e <= map.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let file_len = self.node.cache.metadata()?.len() as usize;
        let mut image = self.node.durable.lock();
        // msync writes the inode's size too when it changed.
        image.resize(file_len, 0);
        let end = (end as usize).min(file_len);
        let off = (off as usize).min(end);
        // SAFETY: `[off, end)` lies inside the live mapping.
        let src = unsafe { std::slice::from_raw_parts(map.as_ptr().add(off), end - off) };
        image[off..end].copy_from_slice(src);
        Ok(())
    }
}

struct SimLock {
    vfs: SimVfs,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.vfs.state.lock().locks.remove(&self.path);
    }
}

impl Vfs for SimVfs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let path = norm(path);
        let mut s = self.check()?;
        let node = match (s.live.get(&path).cloned(), mode) {
            (Some(Entry::Dir), _) => return Err(io::Error::from_raw_os_error(libc::EISDIR)),
            (Some(Entry::File(n)), OpenMode::CreateNew) => {
                n.cache.set_len(0)?;
                n.touch();
                n
            }
            (Some(Entry::File(n)), _) => n,
            (None, OpenMode::Existing) => return Err(not_found()),
            (None, _) => {
                match parent_of(&path).and_then(|p| s.live.get(&p).cloned()) {
                    Some(Entry::Dir) => {}
                    _ => return Err(not_found()),
                }
                let n = Node::new(&[])?;
                s.live.insert(path, Entry::File(n.clone()));
                n
            }
        };
        drop(s);
        Ok(Box::new(SimFile {
            vfs: self.clone(),
            node,
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut s = self.check()?;
        let mut dirs: Vec<PathBuf> = path
            .ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        dirs.reverse();
        for d in dirs {
            match s.live.get(&d) {
                Some(Entry::Dir) => {}
                Some(Entry::File(_)) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
                None => {
                    s.live.insert(d, Entry::Dir);
                }
            }
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let path = norm(path);
        let s = self.check()?;
        match s.live.get(&path) {
            Some(Entry::Dir) => {}
            Some(Entry::File(_)) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            None => return Err(not_found()),
        }
        Ok(s.live
            .iter()
            .filter(|(p, _)| p.parent() == Some(path.as_path()))
            .filter_map(|(p, e)| {
                Some(DirEntry {
                    name: p.file_name()?.to_owned(),
                    is_dir: matches!(e, Entry::Dir),
                })
            })
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        self.check()
            .map(|s| s.live.contains_key(&norm(path)))
            .unwrap_or(false)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(self.node(path)?.cache.metadata()?.len())
    }

    fn modified_ms(&self, path: &Path) -> Option<u64> {
        self.node(path)
            .ok()
            .map(|n| n.mtime_ms.load(Ordering::Relaxed))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (norm(from), norm(to));
        let mut s = self.check()?;
        let moved: Vec<(PathBuf, Entry)> = s
            .live
            .iter()
            .filter(|(p, _)| p.starts_with(&from))
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
        if moved.is_empty() {
            return Err(not_found());
        }
        if matches!(s.live.get(&to), Some(Entry::Dir)) {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        for (p, _) in &moved {
            s.live.remove(p);
        }
        for (p, e) in moved {
            let rest = p
                .strip_prefix(&from)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let dest = if rest.as_os_str().is_empty() {
                to.clone()
            } else {
                to.join(rest)
            };
            s.live.insert(dest, e);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut s = self.check()?;
        match s.live.get(&path) {
            Some(Entry::File(_)) => {
                s.live.remove(&path);
                Ok(())
            }
            Some(Entry::Dir) => Err(io::Error::from_raw_os_error(libc::EISDIR)),
            None => Err(not_found()),
        }
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut s = self.check()?;
        if !matches!(s.live.get(&path), Some(Entry::Dir)) {
            return Err(not_found());
        }
        if s.live.keys().any(|p| p.parent() == Some(path.as_path())) {
            return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        }
        s.live.remove(&path);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut s = self.check()?;
        if !s.live.contains_key(&path) {
            return Err(not_found());
        }
        s.live.retain(|p, _| !p.starts_with(&path));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut s = self.check()?;
        if !matches!(s.live.get(&path), Some(Entry::Dir)) {
            return Err(not_found());
        }
        // The directory's own entry list becomes durable: names added, renamed
        // into or removed from it. The directory itself must be durable in its
        // parent for any of this to be reachable after a crash.
        let State { live, durable, .. } = &mut *s;
        durable.retain(|p, _| p.parent() != Some(path.as_path()) || live.contains_key(p));
        for (p, e) in live.iter() {
            if p.parent() == Some(path.as_path()) {
                durable.insert(p.clone(), e.clone());
            }
        }
        // Files renamed away from here keep their node in the new place only.
        Ok(())
    }

    fn sync_fs(&self, _path: &Path) -> io::Result<()> {
        let mut s = self.check()?;
        // Every name and every file's bytes become durable, as after syncfs.
        let State { live, durable, .. } = &mut *s;
        *durable = live.clone();
        for e in live.values() {
            if let Entry::File(node) = e {
                let contents = node.cache_contents()?;
                *node.durable.lock() = contents;
            }
        }
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        let path = norm(path);
        let mut s = self.check()?;
        if !s.locks.insert(path.clone()) {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        drop(s);
        Ok(Box::new(SimLock {
            vfs: self.clone(),
            path,
        }))
    }

    fn boot_id(&self) -> Option<String> {
        Some(format!("sim-boot-{}", self.state.lock().boot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(v: &SimVfs) -> SimVfs {
        v.crash(CrashMode {
            seed: 1,
            torn_probability: 0.0,
        })
        .expect("crash")
    }

    #[test]
    fn only_synced_bytes_and_names_survive() {
        let v = SimVfs::new();
        v.create_dir_all(Path::new("/d")).unwrap();
        v.sync_dir(Path::new("/")).unwrap();
        let f = v.open(Path::new("/d/a"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"world", 5).unwrap();
        // Name not yet durable: the file is gone after a crash.
        assert!(!crash(&v).exists(Path::new("/d/a")));

        let v = SimVfs::new();
        v.create_dir_all(Path::new("/d")).unwrap();
        v.sync_dir(Path::new("/")).unwrap();
        let f = v.open(Path::new("/d/a"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        v.sync_dir(Path::new("/d")).unwrap();
        f.write_all_at(b"world", 5).unwrap();
        let after = crash(&v);
        let got = super::super::read_file(&after, Path::new("/d/a")).unwrap();
        assert_eq!(got.as_deref(), Some(&b"hello"[..]));
        // The old disk is dead.
        assert!(f.write_all_at(b"x", 0).is_err());
        assert!(v.open(Path::new("/d/b"), OpenMode::CreateNew).is_err());
    }

    #[test]
    fn msync_persists_the_range_from_the_mapping() {
        let v = SimVfs::new();
        let f = v.open(Path::new("/m"), OpenMode::CreateNew).unwrap();
        f.set_len(8192).unwrap();
        v.sync_dir(Path::new("/")).unwrap();
        let map = f.map().unwrap();
        // SAFETY: in bounds of an 8 KiB mapping nobody else uses.
        unsafe { std::ptr::copy_nonoverlapping(b"abcd".as_ptr(), map.as_mut_ptr(), 4) };
        unsafe { std::ptr::copy_nonoverlapping(b"wxyz".as_ptr(), map.as_mut_ptr().add(4096), 4) };
        f.msync(&map, 0, 4).unwrap();
        // pread sees what the mapping wrote (one page cache).
        let mut b = [0u8; 4];
        f.read_at(&mut b, 4096).unwrap();
        assert_eq!(&b, b"wxyz");
        let after = crash(&v);
        let got = super::super::read_file(&after, Path::new("/m"))
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 8192);
        assert_eq!(&got[..4], b"abcd");
        assert_eq!(&got[4096..4100], &[0, 0, 0, 0]);
    }

    #[test]
    fn torn_crash_keeps_a_prefix_of_unsynced_bytes() {
        let mut kept = HashSet::new();
        for seed in 0..64 {
            let v = SimVfs::new();
            let f = v.open(Path::new("/t"), OpenMode::CreateNew).unwrap();
            f.write_all_at(&[0u8; 16], 0).unwrap();
            f.sync_data().unwrap();
            v.sync_dir(Path::new("/")).unwrap();
            f.write_all_at(&[7u8; 16], 0).unwrap();
            let after = v
                .crash(CrashMode {
                    seed,
                    torn_probability: 1.0,
                })
                .unwrap();
            let got = super::super::read_file(&after, Path::new("/t"))
                .unwrap()
                .unwrap();
            let n = got.iter().take_while(|b| **b == 7).count();
            assert!(got[n..].iter().all(|b| *b == 0), "not a prefix: {got:?}");
            kept.insert(n);
        }
        assert!(kept.len() > 4, "tears should vary with the seed: {kept:?}");
    }

    #[test]
    fn rename_then_sync_dir_replaces_durably() {
        let v = SimVfs::new();
        super::super::write_atomic(&v, Path::new("/cfg"), b"one").unwrap();
        super::super::write_atomic(&v, Path::new("/cfg"), b"two").unwrap();
        let after = crash(&v);
        let got = super::super::read_file(&after, Path::new("/cfg")).unwrap();
        assert_eq!(got.as_deref(), Some(&b"two"[..]));
        assert!(!after.exists(Path::new("/cfg.tmp")));
    }
}
