//! Message index by key: RocketMQ's IndexFile layout (40-byte header, hash
//! slots of 4 bytes, entries of 20 bytes) under `index/`, one file per
//! `maxIndexNum` entries. Keys are `<topic>#<key>` for every KEYS word and
//! the UNIQ_KEY. Written by the dispatcher, queried concurrently.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::error::{Result, StoreError};
use crate::mapped_file::MappedFile;
use crate::vfs::VfsRef;

pub const INDEX_HEADER_SIZE: u64 = 40;
pub const HASH_SLOT_SIZE: u64 = 4;
pub const INDEX_ENTRY_SIZE: u64 = 20;

const BEGIN_TS_POS: u64 = 0;
const END_TS_POS: u64 = 8;
const BEGIN_PHY_POS: u64 = 16;
const END_PHY_POS: u64 = 24;
const HASH_SLOT_COUNT_POS: u64 = 32;
const INDEX_COUNT_POS: u64 = 36;

/// |Java `String.hashCode`| of `<topic>#<key>` (`Integer.MIN_VALUE` → 0),
/// computed without building the string.
pub fn index_key_hash(topic: &str, key: &str) -> i32 {
    let mut h: i32 = 0;
    let units = topic
        .encode_utf16()
        .chain("#".encode_utf16())
        .chain(key.encode_utf16());
    for u in units {
        h = h.wrapping_mul(31).wrapping_add(i32::from(u));
    }
    if h == i32::MIN {
        0
    } else {
        h.abs()
    }
}

/// One index file.
pub struct IndexFile {
    mf: MappedFile,
    slot_num: u32,
    index_num: u32,
    /// Written since its last flush (a checkpoint may only name offsets
    /// whose entries are synced, in every file, not just the newest).
    dirty: std::sync::atomic::AtomicBool,
}

impl IndexFile {
    pub fn file_size(slot_num: u32, index_num: u32) -> u64 {
        INDEX_HEADER_SIZE
            + u64::from(slot_num) * HASH_SLOT_SIZE
            + u64::from(index_num) * INDEX_ENTRY_SIZE
    }

    fn create(vfs: &VfsRef, path: &Path, slot_num: u32, index_num: u32) -> Result<IndexFile> {
        let mf = MappedFile::create(vfs, path, 0, Self::file_size(slot_num, index_num))?;
        let f = IndexFile {
            mf,
            slot_num,
            index_num,
            dirty: std::sync::atomic::AtomicBool::new(true),
        };
        f.set_i32(INDEX_COUNT_POS, 1);
        Ok(f)
    }

    fn open(vfs: &VfsRef, path: &Path, slot_num: u32, index_num: u32) -> Result<IndexFile> {
        let mf =
            MappedFile::open(vfs, path, 0, Self::file_size(slot_num, index_num)).map_err(|e| {
                match e {
                    StoreError::Corrupt { path, reason } => StoreError::Corrupt {
                        path,
                        reason: format!("{reason} (maxHashSlotNum/maxIndexNum must not change)"),
                    },
                    other => other,
                }
            })?;
        let f = IndexFile {
            mf,
            slot_num,
            index_num,
            dirty: std::sync::atomic::AtomicBool::new(false),
        };
        if f.index_count() < 1 {
            f.set_i32(INDEX_COUNT_POS, 1);
        }
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        self.mf.path()
    }

    fn get_i32(&self, pos: u64) -> i32 {
        self.mf
            .atomic_i32(pos)
            .map(|a| i32::from_be(a.load(Ordering::Acquire)))
            .unwrap_or(0)
    }
    fn set_i32(&self, pos: u64, v: i32) {
        if let Some(a) = self.mf.atomic_i32(pos) {
            a.store(v.to_be(), Ordering::Release);
        }
    }
    fn get_i64(&self, pos: u64) -> i64 {
        self.mf
            .atomic_i64(pos)
            .map(|a| i64::from_be(a.load(Ordering::Acquire)))
            .unwrap_or(0)
    }
    fn set_i64(&self, pos: u64, v: i64) {
        if let Some(a) = self.mf.atomic_i64(pos) {
            a.store(v.to_be(), Ordering::Release);
        }
    }

    pub fn begin_timestamp(&self) -> i64 {
        self.get_i64(BEGIN_TS_POS)
    }
    pub fn end_timestamp(&self) -> i64 {
        self.get_i64(END_TS_POS)
    }
    pub fn begin_phy_offset(&self) -> i64 {
        self.get_i64(BEGIN_PHY_POS)
    }
    pub fn end_phy_offset(&self) -> i64 {
        self.get_i64(END_PHY_POS)
    }
    /// Next entry number (entry 0 is never used, so an empty file says 1).
    pub fn index_count(&self) -> i32 {
        self.get_i32(INDEX_COUNT_POS)
    }
    pub fn is_full(&self) -> bool {
        self.index_count() as i64 >= i64::from(self.index_num)
    }
    fn is_empty(&self) -> bool {
        self.index_count() <= 1
    }

    fn slot_pos(&self, hash: i32) -> u64 {
        INDEX_HEADER_SIZE + (hash.unsigned_abs() % self.slot_num) as u64 * HASH_SLOT_SIZE
    }
    fn entry_pos(&self, n: i32) -> u64 {
        INDEX_HEADER_SIZE + u64::from(self.slot_num) * HASH_SLOT_SIZE + n as u64 * INDEX_ENTRY_SIZE
    }

    fn read_entry(&self, n: i32) -> Option<(i32, i64, i32, i32)> {
        let b = self.mf.read(self.entry_pos(n), INDEX_ENTRY_SIZE)?;
        Some((
            i32::from_be_bytes(b.get(0..4)?.try_into().ok()?),
            i64::from_be_bytes(b.get(4..12)?.try_into().ok()?),
            i32::from_be_bytes(b.get(12..16)?.try_into().ok()?),
            i32::from_be_bytes(b.get(16..20)?.try_into().ok()?),
        ))
    }

    /// Add one key. Returns false if the file is full.
    fn put(&self, hash: i32, phys: i64, store_ts: i64) -> Result<bool> {
        let count = self.index_count();
        if count as i64 >= i64::from(self.index_num) {
            return Ok(false);
        }
        let slot_pos = self.slot_pos(hash);
        let mut head = self.get_i32(slot_pos);
        if head <= 0 || head >= count {
            head = 0;
        }
        let begin_ts = if self.is_empty() {
            store_ts
        } else {
            self.begin_timestamp()
        };
        let diff = ((store_ts - begin_ts) / 1000).clamp(0, i64::from(i32::MAX)) as i32;
        let mut e = [0u8; 20];
        e[0..4].copy_from_slice(&hash.to_be_bytes());
        e[4..12].copy_from_slice(&phys.to_be_bytes());
        e[12..16].copy_from_slice(&diff.to_be_bytes());
        e[16..20].copy_from_slice(&head.to_be_bytes());
        self.mf.write_at(self.entry_pos(count), &e)?;
        if self.is_empty() {
            self.set_i64(BEGIN_TS_POS, store_ts);
            self.set_i64(BEGIN_PHY_POS, phys);
        }
        if head == 0 {
            self.set_i32(HASH_SLOT_COUNT_POS, self.get_i32(HASH_SLOT_COUNT_POS) + 1);
        }
        self.set_i64(END_TS_POS, store_ts);
        self.set_i64(END_PHY_POS, phys);
        // Publish the count first so a reader that sees the new slot head
        // also sees a count that admits it (readers reject heads >= count).
        self.set_i32(INDEX_COUNT_POS, count + 1);
        self.set_i32(slot_pos, count);
        // After the bytes: a flush that clears the flag first syncs them.
        self.dirty.store(true, Ordering::Release);
        Ok(true)
    }

    /// Physical offsets of entries with this hash stored in `[begin, end]` ms,
    /// newest first, appended to `out` until it holds `max`.
    fn query(&self, hash: i32, begin: i64, end: i64, max: usize, out: &mut Vec<i64>) {
        let count = self.index_count();
        let base_ts = self.begin_timestamp();
        let mut n = self.get_i32(self.slot_pos(hash));
        let mut steps = 0i64;
        while n > 0 && n < count && out.len() < max && steps < i64::from(self.index_num) {
            steps += 1;
            let Some((h, phys, diff, prev)) = self.read_entry(n) else {
                break;
            };
            let ts = base_ts + i64::from(diff) * 1000;
            // Times are stored in whole seconds: widen the window by one second.
            if h == hash && ts + 999 >= begin && ts <= end {
                out.push(phys);
            }
            if prev >= n {
                break; // chains only point backwards; anything else is corrupt
            }
            n = prev;
        }
    }

    /// Remove the newest entries whose offset is >= `phys_end`.
    fn truncate_past(&self, phys_end: i64) -> Result<usize> {
        let mut count = self.index_count();
        let mut removed = 0;
        while count > 1 {
            let n = count - 1;
            let Some((hash, phys, _, prev)) = self.read_entry(n) else {
                break;
            };
            if phys < phys_end {
                break;
            }
            let slot = self.slot_pos(hash);
            if self.get_i32(slot) == n {
                self.set_i32(slot, prev);
                if prev == 0 {
                    self.set_i32(
                        HASH_SLOT_COUNT_POS,
                        (self.get_i32(HASH_SLOT_COUNT_POS) - 1).max(0),
                    );
                }
            }
            self.dirty.store(true, Ordering::Release);
            self.mf.write_at(self.entry_pos(n), &[0u8; 20])?;
            count = n;
            self.set_i32(INDEX_COUNT_POS, count);
            removed += 1;
        }
        if removed > 0 {
            self.set_ends_from_entries();
        }
        Ok(removed)
    }

    /// Header end (and, when empty, begin) fields from the entries counted.
    fn set_ends_from_entries(&self) {
        let count = self.index_count();
        if count > 1 {
            let (_, first, _, _) = self.read_entry(1).unwrap_or_default();
            let (_, phys, diff, _) = self.read_entry(count - 1).unwrap_or_default();
            self.set_i64(BEGIN_PHY_POS, first);
            self.set_i64(END_PHY_POS, phys);
            self.set_i64(END_TS_POS, self.begin_timestamp() + i64::from(diff) * 1000);
        } else {
            for p in [BEGIN_TS_POS, END_TS_POS, BEGIN_PHY_POS, END_PHY_POS] {
                self.set_i64(p, 0);
            }
        }
        self.dirty.store(true, Ordering::Release);
    }

    fn flush(&self) -> Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.mf.sync_all().inspect_err(|_| {
            self.dirty.store(true, Ordering::Release);
        })
    }

    fn entry_is_zero(&self, n: i32) -> bool {
        self.mf
            .read(self.entry_pos(n), INDEX_ENTRY_SIZE)
            .is_none_or(|b| b.iter().all(|x| *x == 0))
    }

    /// Bring the file back to exactly the entries for CommitLog offsets below
    /// `safe` after a power loss. Everything below `safe` was synced before
    /// the checkpoint that names it; past it, any mix of header, slot and
    /// entry pages (even half an entry, with a chain link lost) may have
    /// survived, so the slot chains are rebuilt from the durable entries.
    /// Returns the entries removed.
    fn repair(&self, safe: i64) -> Result<usize> {
        let max_n = i32::try_from(self.index_num).unwrap_or(i32::MAX);
        // Entries below `k` are durable; entries are appended in offset order,
        // so "durable" is a prefix and can be found by bisection.
        let durable = |n: i32| -> bool {
            !self.entry_is_zero(n)
                && self
                    .read_entry(n)
                    .is_some_and(|(_, phys, _, _)| phys < safe)
        };
        let (mut lo, mut hi) = (1i32, max_n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if durable(mid) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let k = lo;
        let count = self.index_count().clamp(1, max_n);
        let removed = (count - k).max(0) as usize;
        tracing::warn!(
            path = %self.path().display(),
            kept = k - 1,
            "power loss: rebuilding the index file's slots from its durable entries"
        );
        self.rebuild(k, max_n)?;
        Ok(removed)
    }

    /// Keep entries `[1, k)`, relink every slot chain from them, clear the rest.
    fn rebuild(&self, k: i32, max_n: i32) -> Result<()> {
        let slots_len = u64::from(self.slot_num) * HASH_SLOT_SIZE;
        self.mf
            .write_at(INDEX_HEADER_SIZE, &vec![0u8; slots_len as usize])?;
        let mut used = 0i32;
        for n in 1..k {
            let Some((hash, _, _, _)) = self.read_entry(n) else {
                break;
            };
            let slot = self.slot_pos(hash);
            let prev = self.get_i32(slot);
            if prev == 0 {
                used += 1;
            }
            self.mf
                .write_at(self.entry_pos(n) + 16, &prev.to_be_bytes())?;
            self.set_i32(slot, n);
        }
        let mut n = k;
        while n < max_n && !self.entry_is_zero(n) {
            self.mf.write_at(self.entry_pos(n), &[0u8; 20])?;
            n += 1;
        }
        self.set_i32(HASH_SLOT_COUNT_POS, used);
        self.set_i32(INDEX_COUNT_POS, k);
        self.set_ends_from_entries();
        self.mf.sync_all()
    }
}

/// First retry after indexing failed (an index file could not be created);
/// doubles per failure up to [`INDEX_RETRY_MAX`].
const INDEX_RETRY_MIN: Duration = Duration::from_secs(1);
const INDEX_RETRY_MAX: Duration = Duration::from_secs(30);

/// Why and since when indexing is suspended.
struct Suspended {
    since: Instant,
    delay: Duration,
    retry_at: Instant,
    /// Messages not indexed meanwhile.
    skipped: u64,
}

/// The set of index files, newest last.
///
/// The index is an aid for queries by key, not a path to consumers: when it
/// cannot be written (typically no space for a new index file, whose
/// default size is 420 MB) indexing is suspended with one log line, messages
/// go on to their ConsumeQueues unindexed, and writing is retried with
/// backoff (1 s doubling to 30 s, sooner once retention freed space).
pub struct IndexService {
    vfs: VfsRef,
    dir: PathBuf,
    slot_num: u32,
    index_num: u32,
    files: RwLock<Vec<Arc<IndexFile>>>,
    /// Fast check for `suspended.is_some()` on the dispatch path.
    is_suspended: AtomicBool,
    suspended: Mutex<Option<Suspended>>,
}

impl IndexService {
    pub fn load(vfs: &VfsRef, dir: &Path, slot_num: u32, index_num: u32) -> Result<IndexService> {
        crate::mapped_file_queue::create_dir_durable(&**vfs, dir)?;
        let mut names = Vec::new();
        let entries = vfs
            .list_dir(dir)
            .map_err(|e| StoreError::io("list directory", dir, e))?;
        for entry in entries {
            if let Some(n) = entry.name.to_str() {
                if n.len() == 17 && n.bytes().all(|b| b.is_ascii_digit()) {
                    names.push(n.to_owned());
                }
            }
        }
        names.sort();
        let mut files = Vec::new();
        for n in names {
            files.push(Arc::new(IndexFile::open(
                vfs,
                &dir.join(n),
                slot_num,
                index_num,
            )?));
        }
        Ok(IndexService {
            vfs: vfs.clone(),
            dir: dir.to_path_buf(),
            slot_num,
            index_num,
            files: RwLock::new(files),
            is_suspended: AtomicBool::new(false),
            suspended: Mutex::new(None),
        })
    }

    fn writable_file(&self) -> Result<Arc<IndexFile>> {
        if let Some(f) = self.files.read().last() {
            if !f.is_full() {
                return Ok(f.clone());
            }
        }
        let mut name = local_timestamp_name(crate::commit_log::now_ms());
        let mut files = self.files.write();
        while files
            .last()
            .is_some_and(|f| f.path().file_name().and_then(|n| n.to_str()) >= Some(name.as_str()))
        {
            // Same millisecond as the previous file: keep names unique and sorted.
            let bumped = name.parse::<u64>().unwrap_or(0) + 1;
            name = format!("{bumped:017}");
        }
        let size = IndexFile::file_size(self.slot_num, self.index_num);
        if crate::cleanup::available_bytes(&self.dir).is_some_and(|a| a < size) {
            // Bound to fail: do not let the attempt take the last free blocks.
            return Err(StoreError::io(
                "create index file",
                self.dir.join(&name),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        let f = Arc::new(IndexFile::create(
            &self.vfs,
            &self.dir.join(&name),
            self.slot_num,
            self.index_num,
        )?);
        tracing::info!(file = %name, "created index file");
        files.push(f.clone());
        Ok(f)
    }

    /// Last indexed CommitLog offset (-1 if none): re-dispatch skips messages
    /// at or below it.
    pub fn last_indexed_phys(&self) -> i64 {
        match self.files.read().last() {
            Some(f) if !f.is_empty() => f.end_phy_offset(),
            _ => -1,
        }
    }

    /// Index one message: every non-empty space-separated word of `keys` and
    /// the unique key.
    ///
    /// Never fails: while the index cannot be written the message is left
    /// unindexed (see [`IndexService`]), so dispatching goes on.
    pub fn build_index(
        &self,
        topic: &str,
        keys: Option<&str>,
        uniq_key: Option<&str>,
        phys: i64,
        store_ts: i64,
    ) -> Result<()> {
        if phys <= self.last_indexed_phys() {
            return Ok(());
        }
        if self.is_suspended.load(Ordering::Acquire) && !self.retry_due() {
            return Ok(());
        }
        match self.put_keys(topic, keys, uniq_key, phys, store_ts) {
            Ok(()) => self.resume(),
            Err(e) => self.suspend(&e),
        }
        Ok(())
    }

    /// True when a suspended index should be tried again now; otherwise
    /// counts the message as skipped.
    fn retry_due(&self) -> bool {
        let mut g = self.suspended.lock();
        match g.as_mut() {
            Some(s) if Instant::now() < s.retry_at => {
                s.skipped += 1;
                false
            }
            _ => true,
        }
    }

    fn suspend(&self, e: &StoreError) {
        let now = Instant::now();
        let mut g = self.suspended.lock();
        match g.as_mut() {
            None => {
                tracing::warn!(error = %e, dir = %self.dir.display(),
                    "cannot write the message index: messages are not indexed by key until it can \
                     be written again (retrying with backoff); consumers are not affected");
                *g = Some(Suspended {
                    since: now,
                    delay: INDEX_RETRY_MIN,
                    retry_at: now + INDEX_RETRY_MIN,
                    skipped: 1,
                });
                self.is_suspended.store(true, Ordering::Release);
            }
            Some(s) => {
                tracing::debug!(error = %e, "index still cannot be written");
                s.delay = (s.delay * 2).min(INDEX_RETRY_MAX);
                s.retry_at = now + s.delay;
                s.skipped += 1;
            }
        }
    }

    fn resume(&self) {
        if !self.is_suspended.load(Ordering::Acquire) {
            return;
        }
        if let Some(s) = self.suspended.lock().take() {
            tracing::info!(
                unindexed_messages = s.skipped,
                suspended_ms = s.since.elapsed().as_millis() as u64,
                "message index writable again: indexing resumed"
            );
        }
        self.is_suspended.store(false, Ordering::Release);
    }

    /// Retry a suspended index at the next message (space was freed).
    pub fn retry_soon(&self) {
        if let Some(s) = self.suspended.lock().as_mut() {
            s.retry_at = Instant::now();
        }
    }

    /// Whether indexing is suspended because the index cannot be written.
    pub fn is_suspended(&self) -> bool {
        self.is_suspended.load(Ordering::Acquire)
    }

    fn put_keys(
        &self,
        topic: &str,
        keys: Option<&str>,
        uniq_key: Option<&str>,
        phys: i64,
        store_ts: i64,
    ) -> Result<()> {
        let words = keys
            .into_iter()
            .flat_map(|k| k.split(' '))
            .chain(uniq_key)
            .filter(|k| !k.is_empty());
        for key in words {
            let hash = index_key_hash(topic, key);
            let mut f = self.writable_file()?;
            if !f.put(hash, phys, store_ts)? {
                f = self.writable_file()?;
                f.put(hash, phys, store_ts)?;
            }
        }
        Ok(())
    }

    /// Offsets of messages indexed under `<topic>#<key>` stored within
    /// `[begin, end]` ms, newest first, at most `max` (hash collisions
    /// possible: callers re-check the key).
    pub fn query(&self, topic: &str, key: &str, max: usize, begin: i64, end: i64) -> Vec<i64> {
        let hash = index_key_hash(topic, key);
        let files = self.files.read().clone();
        let mut out = Vec::new();
        for f in files.iter().rev() {
            if out.len() >= max {
                break;
            }
            if f.is_empty() {
                continue;
            }
            // Skip files entirely outside the window.
            if f.end_timestamp() + 1000 < begin || f.begin_timestamp() > end {
                continue;
            }
            f.query(hash, begin, end, max, &mut out);
        }
        out
    }

    /// (end timestamp, end CommitLog offset) of the newest entry.
    pub fn last_update(&self) -> (i64, i64) {
        match self.files.read().last() {
            Some(f) => (f.end_timestamp(), f.end_phy_offset()),
            None => (0, 0),
        }
    }

    pub fn flush(&self) -> Result<()> {
        // Every file written since its last flush, not only the newest: a
        // burst can fill several files between two checkpoints.
        let files = self.files.read().clone();
        for f in files.iter().rev() {
            f.flush()?;
        }
        Ok(())
    }

    /// Drop entries for CommitLog offsets >= `phys_end` (crash recovery).
    pub fn truncate_past(&self, phys_end: u64) -> Result<usize> {
        let phys_end = phys_end as i64;
        let mut removed = 0;
        let mut files = self.files.write();
        while let Some(f) = files.last() {
            if !f.is_empty() && f.begin_phy_offset() >= phys_end {
                removed += (f.index_count() - 1).max(0) as usize;
                let _ = self.vfs.remove_file(f.path());
                files.pop();
                continue;
            }
            removed += f.truncate_past(phys_end)?;
            break;
        }
        Ok(removed)
    }

    /// After a power loss: make every file hold exactly the entries for CommitLog
    /// offsets below `safe` (the checkpoint's dispatch point), whatever a
    /// power loss kept of the rest; files wholly past it are removed.
    /// Re-dispatch from `safe` then adds the newer entries again.
    pub fn repair_after_crash(&self, safe: u64) -> Result<usize> {
        let safe = safe as i64;
        let mut removed = 0;
        let mut files = self.files.write();
        while let Some(f) = files.last().cloned() {
            removed += f.repair(safe)?;
            if f.is_empty() && files.len() > 1 {
                if let Err(e) = self.vfs.remove_file(f.path()) {
                    tracing::warn!(path = %f.path().display(), error = %e, "cannot delete index file");
                }
                files.pop();
                continue;
            }
            if f.end_phy_offset() < safe || f.is_empty() {
                break;
            }
        }
        Ok(removed)
    }

    /// Delete files (never the newest) whose entries all point below
    /// `commitlog_min`.
    pub fn delete_expired(&self, commitlog_min: u64) -> usize {
        let mut files = self.files.write();
        let mut n = 0;
        while files.len() > 1 {
            let f = &files[0];
            if f.end_phy_offset() >= commitlog_min as i64 {
                break;
            }
            if let Err(e) = self.vfs.remove_file(f.path()) {
                static DELETE_FAILED: apogee_throttle::LogThrottle =
                    apogee_throttle::LogThrottle::new("cannot delete index file");
                apogee_throttle::throttled_warn!(DELETE_FAILED, (), path = %f.path().display(),
                    error = %e, "cannot delete index file");
                break;
            }
            tracing::info!(path = %f.path().display(), "deleted index file");
            files.remove(0);
            n += 1;
        }
        n
    }

    pub fn file_count(&self) -> usize {
        self.files.read().len()
    }
}

/// `yyyyMMddHHmmssSSS` in local time, as RocketMQ names index files.
pub fn local_timestamp_name(ms: i64) -> String {
    let secs = ms.div_euclid(1000) as libc::time_t;
    let millis = ms.rem_euclid(1000);
    // SAFETY: localtime_r writes only into `tm`, which we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return format!("{:017}", ms.max(0));
    }
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{:03}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        millis
    )
}

/// Current local hour of day (0-23).
pub fn local_hour(ms: i64) -> u32 {
    let secs = ms.div_euclid(1000) as libc::time_t;
    // SAFETY: as above.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if ok {
        tm.tm_hour as u32
    } else {
        ((ms / 3_600_000) % 24) as u32
    }
}
