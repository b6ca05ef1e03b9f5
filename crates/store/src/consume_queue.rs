//! `ConsumeQueue`: the per-(topic, queue) index of CommitLog records, 20-byte
//! entries (offset i64, size i32, tags code i64) in segment files under
//! `consumequeue/<topic>/<queueId>/`. Written only by the dispatcher; read by
//! pulls. Entry *n* lives at byte *n*×20 of the queue's logical space.
//!
//! A broker may hold hundreds of thousands of queues, so a queue costs no
//! file, descriptor, mapping or buffer until it is written, and a few hundred
//! bytes once idle. New entries go to an in-memory tail that readers see at
//! once; the ConsumeQueue flusher ([`crate::store`]) writes tails into the
//! segment files with `pwrite` and makes them durable, then drops them.
//! Files are opened per operation and never kept open or mapped, so neither
//! the open-files limit nor `vm.max_map_count` caps the number of queues,
//! and segment files are sparse (no block is reserved ahead: a full disk
//! fails a `pwrite` with an error, it cannot fault a store into a mapping).
//! Until its tail is durable a queue holds the checkpoint's dispatch point
//! back, so after a crash recovery rebuilds the tail from the CommitLog.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::config::CQ_ENTRY_SIZE;
use crate::error::{Result, StoreError};
use crate::mapped_file::segment_name;
use crate::vfs::{OpenMode, VfsFile, VfsRef};

/// Size field of a filler entry (pads a queue that does not start at 0).
pub const FILLER_SIZE: i32 = i32::MAX;

const ENTRY: usize = CQ_ENTRY_SIZE as usize;

/// Entries copied out per read step (bounds the stack buffer of readers).
const READ_CHUNK: usize = 256;

/// Entries read at once from the start of a file when a queue is loaded:
/// most queues end within them.
const LOAD_BLOCK: usize = 204;

/// One ConsumeQueue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    pub phys_offset: i64,
    pub size: i32,
    pub tags_code: i64,
}

impl CqEntry {
    pub fn is_filler(&self) -> bool {
        self.size == FILLER_SIZE && self.phys_offset == 0
    }
    fn is_empty(&self) -> bool {
        self.phys_offset == 0 && self.size == 0 && self.tags_code == 0
    }
    fn encode(&self) -> [u8; ENTRY] {
        let mut b = [0u8; ENTRY];
        b[..8].copy_from_slice(&self.phys_offset.to_be_bytes());
        b[8..12].copy_from_slice(&self.size.to_be_bytes());
        b[12..].copy_from_slice(&self.tags_code.to_be_bytes());
        b
    }
    fn decode(b: &[u8]) -> Option<CqEntry> {
        Some(CqEntry {
            phys_offset: i64::from_be_bytes(b.get(..8)?.try_into().ok()?),
            size: i32::from_be_bytes(b.get(8..12)?.try_into().ok()?),
            tags_code: i64::from_be_bytes(b.get(12..20)?.try_into().ok()?),
        })
    }
    const FILLER: CqEntry = CqEntry {
        phys_offset: 0,
        size: FILLER_SIZE,
        tags_code: 0,
    };
}

/// State every queue of one store shares with the ConsumeQueue flusher.
#[derive(Default)]
pub(crate) struct CqShared {
    /// Queues with a tail (or file bytes) not yet durable; each is listed
    /// once (see `Tail::listed`).
    pub(crate) dirty: Mutex<Vec<Arc<ConsumeQueue>>>,
    /// Bytes held in all tails.
    pub(crate) tail_bytes: AtomicU64,
    /// Entries were written straight into files (re-dispatch over existing
    /// entries, truncation): the next flush must sync the whole file system.
    pub(crate) files_unsynced: AtomicBool,
}

/// Entries `[start, start + bytes.len()/20)`: published to readers, not yet
/// durable in the segment files.
struct Tail {
    start: i64,
    bytes: Vec<u8>,
    /// CommitLog offset and store time of the first real entry (for the
    /// checkpoint: recovery must re-dispatch from there).
    first_phys: i64,
    first_ts: i64,
    /// When the tail became non-empty (ms).
    since_ms: i64,
    /// The queue is on `CqShared::dirty`.
    listed: bool,
    /// The last published entry and the one at the min offset, with their
    /// logical offsets, when known: recovery and retention look at them for
    /// every queue, and reading them from the files costs an open each.
    last: Option<(i64, CqEntry)>,
    at_min: Option<(i64, CqEntry)>,
}

/// What the flusher needs after writing one tail.
pub(crate) struct TailWrite {
    /// Entries below this are in the files (written, not yet synced).
    pub(crate) upto: i64,
    /// Segment files written.
    pub(crate) files: Vec<PathBuf>,
    /// A file or directory was created.
    pub(crate) created: bool,
}

pub struct ConsumeQueue {
    /// Inline up to 24 bytes: the dispatcher checks it for every record.
    topic: compact_str::CompactString,
    queue_id: i32,
    vfs: VfsRef,
    dir: PathBuf,
    file_size: u64,
    shared: Arc<CqShared>,
    /// Segment files on disk: bases `[first, end)` in steps of `file_size`.
    files: Mutex<(u64, u64)>,
    tail: Mutex<Tail>,
    /// Shared by file I/O; taken exclusively to retire the queue, so no
    /// I/O of a deleted queue reaches files a new queue of the same name
    /// may own.
    io: RwLock<()>,
    deleted: AtomicBool,
    /// Next logical offset (entries below it are published).
    max_logic: AtomicI64,
    /// First logical offset whose message is still in the CommitLog.
    min_logic: AtomicI64,
}

impl std::fmt::Debug for ConsumeQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeQueue")
            .field("topic", &self.topic)
            .field("queue_id", &self.queue_id)
            .field("min", &self.min_offset())
            .field("max", &self.max_offset())
            .finish()
    }
}

/// Read up to `buf.len()` bytes at `off`; bytes past the end of a short
/// file read as zeros (an empty entry).
fn read_full(file: &dyn VfsFile, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf[done..].fill(0);
    Ok(())
}

impl ConsumeQueue {
    /// Find the queue's files in `dir` (which need not exist) and its end.
    /// A broker may load 100,000s of queues at start: this costs a directory
    /// listing and one open and read of the last file for most of them.
    pub(crate) fn load(
        vfs: &VfsRef,
        dir: &Path,
        topic: &str,
        queue_id: i32,
        file_size: u64,
        shared: Arc<CqShared>,
    ) -> Result<ConsumeQueue> {
        let mut bases = Vec::new();
        match vfs.list_dir(dir) {
            Ok(rd) => {
                for entry in rd {
                    let Some(name) = entry.name.to_str() else {
                        continue;
                    };
                    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
                        if let Ok(base) = name.parse::<u64>() {
                            bases.push(base);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("list directory", dir, e)),
        }
        bases.sort_unstable();
        for (i, base) in bases.iter().enumerate() {
            if !base.is_multiple_of(file_size) {
                return Err(StoreError::Corrupt {
                    path: dir.join(segment_name(*base)),
                    reason: format!("segment name is not a multiple of the file size {file_size}"),
                });
            }
            if i > 0 && bases[i - 1] + file_size != *base {
                return Err(StoreError::Corrupt {
                    path: dir.join(segment_name(*base)),
                    reason: format!("gap in segments after {}", segment_name(bases[i - 1])),
                });
            }
        }
        let first = bases.first().copied().unwrap_or(0);
        let end = bases.last().map_or(0, |b| b + file_size);
        let cq = ConsumeQueue {
            topic: compact_str::CompactString::from(topic),
            queue_id,
            vfs: vfs.clone(),
            dir: dir.to_path_buf(),
            file_size,
            shared,
            files: Mutex::new((first, end)),
            tail: Mutex::new(Tail {
                start: 0,
                bytes: Vec::new(),
                first_phys: 0,
                first_ts: 0,
                since_ms: 0,
                listed: false,
                last: None,
                at_min: None,
            }),
            io: RwLock::new(()),
            deleted: AtomicBool::new(false),
            max_logic: AtomicI64::new(0),
            min_logic: AtomicI64::new((first / CQ_ENTRY_SIZE) as i64),
        };
        let file_entries = (file_size / CQ_ENTRY_SIZE) as usize;
        let mut block = [0u8; LOAD_BLOCK * ENTRY];
        let mut max_logic = (first / CQ_ENTRY_SIZE) as i64;
        let mut last_entry = None;
        // The first block of the last file when that file is also the first.
        let mut first_block: Option<usize> = None;
        loop {
            let (first, end) = cq.span();
            if end <= first {
                break;
            }
            let last = end - file_size;
            let path = cq.seg_path(last);
            let file = vfs
                .open(&path, OpenMode::Existing)
                .map_err(|e| StoreError::io("open segment", &path, e))?;
            let in_block = file_entries.min(LOAD_BLOCK);
            read_full(&*file, &mut block[..in_block * ENTRY], 0)
                .map_err(|e| StoreError::io("read segment", &path, e))?;
            let at = |b: &[u8], i: usize| CqEntry::decode(&b[i * ENTRY..(i + 1) * ENTRY]);
            // An empty last file after a non-empty one (a crash right after
            // it was created) carries no entries: drop it and look again.
            if end > first + file_size && at(&block, 0).is_none_or(|e| e.is_empty()) {
                drop(file);
                cq.remove_last_file()?;
                continue;
            }
            // Entries are written in order: the first empty one ends them.
            let n = match (0..in_block).find(|i| at(&block, *i).is_none_or(|e| e.is_empty())) {
                Some(n) => n,
                None => {
                    let (mut lo, mut hi) = (in_block as u64, file_entries as u64);
                    while lo < hi {
                        let mid = lo + (hi - lo) / 2;
                        let mut b = [0u8; ENTRY];
                        read_full(&*file, &mut b, mid * CQ_ENTRY_SIZE)
                            .map_err(|e| StoreError::io("read segment", &path, e))?;
                        if CqEntry::decode(&b).is_some_and(|e| !e.is_empty()) {
                            lo = mid + 1;
                        } else {
                            hi = mid;
                        }
                    }
                    lo as usize
                }
            };
            if n > 0 {
                let mut b = [0u8; ENTRY];
                if n <= in_block {
                    b.copy_from_slice(&block[(n - 1) * ENTRY..n * ENTRY]);
                } else {
                    read_full(&*file, &mut b, (n as u64 - 1) * CQ_ENTRY_SIZE)
                        .map_err(|e| StoreError::io("read segment", &path, e))?;
                }
                last_entry =
                    CqEntry::decode(&b).map(|e| ((last / CQ_ENTRY_SIZE) as i64 + n as i64 - 1, e));
            }
            if last == first {
                first_block = Some(n.min(in_block));
            }
            max_logic = ((last + n as u64 * CQ_ENTRY_SIZE) / CQ_ENTRY_SIZE) as i64;
            break;
        }
        cq.max_logic.store(max_logic, Ordering::Release);
        {
            let mut t = cq.tail.lock();
            t.start = max_logic;
            t.last = last_entry;
        }
        match first_block {
            // One file: skip fillers within the block already read.
            Some(valid) => {
                let base = cq.min_offset();
                let mut i = 0;
                while i < valid
                    && CqEntry::decode(&block[i * ENTRY..(i + 1) * ENTRY])
                        .is_some_and(|e| e.is_filler())
                {
                    i += 1;
                }
                if i == valid && valid == LOAD_BLOCK {
                    cq.skip_fillers();
                } else {
                    cq.min_logic.store(base + i as i64, Ordering::Release);
                    if i < valid {
                        let e = CqEntry::decode(&block[i * ENTRY..(i + 1) * ENTRY]);
                        cq.tail.lock().at_min = e.map(|e| (base + i as i64, e));
                    }
                }
            }
            None => cq.skip_fillers(),
        }
        Ok(cq)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn queue_id(&self) -> i32 {
        self.queue_id
    }
    /// Logical offset the next message of this queue gets.
    pub fn max_offset(&self) -> i64 {
        self.max_logic.load(Ordering::Acquire)
    }
    pub fn min_offset(&self) -> i64 {
        self.min_logic.load(Ordering::Acquire)
    }
    /// Number of segment files on disk.
    pub fn file_count(&self) -> u64 {
        let (first, end) = self.span();
        (end - first) / self.file_size
    }
    /// Bytes of entries held in memory, not yet durable in the files.
    pub fn tail_len(&self) -> usize {
        self.tail.lock().bytes.len()
    }

    fn span(&self) -> (u64, u64) {
        *self.files.lock()
    }

    fn seg_path(&self, base: u64) -> PathBuf {
        self.dir.join(segment_name(base))
    }

    fn seg_base(&self, byte_pos: u64) -> u64 {
        byte_pos / self.file_size * self.file_size
    }

    fn skip_fillers(&self) {
        let mut m = self.min_offset();
        while m < self.max_offset() {
            match self.entry(m) {
                Some(e) if e.is_filler() => m += 1,
                _ => break,
            }
        }
        self.min_logic.store(m, Ordering::Release);
    }

    fn remove_last_file(&self) -> Result<()> {
        let mut span = self.files.lock();
        if span.1 <= span.0 {
            return Ok(());
        }
        let path = self.seg_path(span.1 - self.file_size);
        match self.vfs.remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("delete segment", &path, e)),
        }
        span.1 -= self.file_size;
        if span.1 == span.0 {
            *span = (0, 0);
        }
        self.shared.files_unsynced.store(true, Ordering::Release);
        Ok(())
    }

    /// Make sure segment files exist up to and including the one at `base`
    /// (files are contiguous; the first one starts where the entries do).
    /// Returns true if it created one.
    fn ensure_file(&self, base: u64) -> Result<bool> {
        let mut span = self.files.lock();
        if span.1 > span.0 && base >= span.0 && base < span.1 {
            return Ok(false);
        }
        if span.1 > span.0 && base < span.0 {
            return Err(StoreError::Corrupt {
                path: self.seg_path(base),
                reason: format!("write below the first segment {}", segment_name(span.0)),
            });
        }
        if span.1 == span.0 {
            // Not synced here: a flush that created anything syncs the
            // whole file system (one call for any number of new queues).
            self.vfs
                .create_dir_all(&self.dir)
                .map_err(|e| StoreError::io("create directory", &self.dir, e))?;
            *span = (base, base);
        }
        while span.1 <= base {
            let path = self.seg_path(span.1);
            let f = self
                .vfs
                .open(&path, OpenMode::CreateNew)
                .map_err(|e| StoreError::io("create segment", &path, e))?;
            // Sparse: blocks are allocated as entries are written.
            f.set_len(self.file_size)
                .map_err(|e| StoreError::io("size segment", &path, e))?;
            span.1 += self.file_size;
        }
        Ok(true)
    }

    /// `pwrite` `bytes` (whole entries) at logical offset `logic`, creating
    /// segment files as needed. Returns the files written and whether any
    /// was created.
    fn write_files(&self, logic: i64, bytes: &[u8], out: &mut Vec<PathBuf>) -> Result<bool> {
        let _io = self.io.read();
        if self.deleted.load(Ordering::Acquire) {
            return Ok(false);
        }
        let mut created = false;
        let mut pos = logic as u64 * CQ_ENTRY_SIZE;
        let mut rest = bytes;
        while !rest.is_empty() {
            let base = self.seg_base(pos);
            let local = pos - base;
            let n = ((self.file_size - local) as usize).min(rest.len());
            created |= self.ensure_file(base)?;
            let path = self.seg_path(base);
            let f = self
                .vfs
                .open(&path, OpenMode::Existing)
                .map_err(|e| StoreError::io("open segment", &path, e))?;
            f.write_all_at(&rest[..n], local)
                .map_err(|e| StoreError::io("write segment", &path, e))?;
            if !out.contains(&path) {
                out.push(path);
            }
            rest = &rest[n..];
            pos += n as u64;
        }
        Ok(created)
    }

    /// Record the message with queue offset `logic`. Re-dispatch after a
    /// crash overwrites an existing entry with the same value; a gap is
    /// padded with filler entries. `store_ts` is the message's store time.
    pub fn put(
        self: &Arc<Self>,
        logic: i64,
        phys_offset: i64,
        size: i32,
        tags_code: i64,
        store_ts: i64,
    ) -> Result<()> {
        if logic < 0 {
            return Ok(());
        }
        let entry = CqEntry {
            phys_offset,
            size,
            tags_code,
        }
        .encode();
        let mut max = self.max_offset();
        let mut t = self.tail.lock();
        if logic < max && logic < t.start && t.bytes.is_empty() {
            // Re-dispatch after a crash (recovery runs alone): rather than
            // one file write per entry already in the files, take the queue
            // back to `logic` and let the entries come again into the tail;
            // the files keep their bytes until the tail is written over them.
            self.max_logic.store(logic, Ordering::Release);
            t.start = logic;
            t.last = None;
            t.at_min = None;
            max = logic;
        }
        if logic < max {
            let decoded = CqEntry {
                phys_offset,
                size,
                tags_code,
            };
            let t_ref = &mut *t;
            for (l, e) in [&mut t_ref.last, &mut t_ref.at_min].into_iter().flatten() {
                if *l == logic {
                    *e = decoded;
                }
            }
            if logic >= t.start {
                let at = (logic - t.start) as usize * ENTRY;
                if let Some(slot) = t.bytes.get_mut(at..at + ENTRY) {
                    slot.copy_from_slice(&entry);
                }
                return Ok(());
            }
            drop(t);
            // Below the tail: already in a file (re-dispatch after recovery).
            let mut files = Vec::new();
            self.write_files(logic, &entry, &mut files)?;
            self.shared.files_unsynced.store(true, Ordering::Release);
            return Ok(());
        }
        let was_empty = t.bytes.is_empty();
        if t.bytes.capacity() == 0 {
            // Room for a few entries: a cold queue then never reallocates.
            t.bytes.reserve(8 * ENTRY);
        }
        let mut start = max;
        if logic > max {
            let (first, end) = self.span();
            if end == first && was_empty {
                // A new queue that starts late: pad only its first file.
                let first_file = self.seg_base(logic as u64 * CQ_ENTRY_SIZE);
                start = (first_file / CQ_ENTRY_SIZE) as i64;
                t.start = start;
                self.min_logic.store(logic, Ordering::Release);
            } else {
                tracing::warn!(topic = %self.topic, queue = self.queue_id, from = max, to = logic,
                    "gap in consume queue, padding with filler entries");
                if self.min_offset() >= max {
                    // No live entry before the gap: the queue starts here,
                    // never at a filler.
                    self.min_logic.store(logic, Ordering::Release);
                }
            }
            let filler = CqEntry::FILLER.encode();
            for _ in start..logic {
                t.bytes.extend_from_slice(&filler);
            }
        }
        t.bytes.extend_from_slice(&entry);
        t.last = Some((
            logic,
            CqEntry {
                phys_offset,
                size,
                tags_code,
            },
        ));
        let added = (logic + 1 - start) as u64 * CQ_ENTRY_SIZE;
        if was_empty {
            t.first_phys = phys_offset;
            t.first_ts = store_ts;
            t.since_ms = crate::commit_log::now_ms();
        }
        let list = !t.listed;
        t.listed = true;
        self.max_logic.store(logic + 1, Ordering::Release);
        drop(t);
        self.shared.tail_bytes.fetch_add(added, Ordering::Relaxed);
        if list {
            self.shared.dirty.lock().push(self.clone());
        }
        Ok(())
    }

    /// Copy published entries from `from` on (at most `out.len() / 20`) into
    /// `out`; returns how many, or None if the file holding `from` is gone.
    fn copy_entries(&self, from: i64, out: &mut [u8]) -> Option<usize> {
        let max = self.max_offset();
        if from < 0 || from >= max {
            return Some(0);
        }
        let want = ((max - from) as usize).min(out.len() / ENTRY);
        let tail_start = {
            let t = self.tail.lock();
            if from >= t.start {
                let at = (from - t.start) as usize * ENTRY;
                let have = t.bytes.len().saturating_sub(at) / ENTRY;
                let n = want.min(have);
                out[..n * ENTRY].copy_from_slice(&t.bytes[at..at + n * ENTRY]);
                return Some(n);
            }
            t.start
        };
        if self.deleted.load(Ordering::Acquire) {
            return None;
        }
        let pos = from as u64 * CQ_ENTRY_SIZE;
        let base = self.seg_base(pos);
        let (first, end) = self.span();
        if base < first || base >= end {
            return None;
        }
        let in_seg = ((base + self.file_size - pos) / CQ_ENTRY_SIZE) as usize;
        let n = want.min(in_seg).min((tail_start - from) as usize);
        let _io = self.io.read();
        if self.deleted.load(Ordering::Acquire) {
            return None;
        }
        let path = self.seg_path(base);
        let read = self
            .vfs
            .open(&path, OpenMode::Existing)
            .and_then(|f| read_full(&*f, &mut out[..n * ENTRY], pos - base));
        match read {
            Ok(()) => Some(n),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    static READ_FAILED: apogee_throttle::LogThrottle =
                        apogee_throttle::LogThrottle::new("ConsumeQueue read failed");
                    apogee_throttle::throttled_warn!(READ_FAILED, (), path = %path.display(),
                        error = %e, "cannot read a ConsumeQueue segment");
                }
                None
            }
        }
    }

    /// The entry at `logic`, from the cached edges when it is one of them
    /// (no file opened).
    fn edge_or_entry(&self, logic: i64) -> Option<CqEntry> {
        if logic < 0 || logic >= self.max_offset() {
            return None;
        }
        {
            let t = self.tail.lock();
            for (l, e) in [t.last, t.at_min].into_iter().flatten() {
                if l == logic {
                    return Some(e);
                }
            }
        }
        self.entry(logic)
    }

    /// The published entry at `logic`.
    pub fn entry(&self, logic: i64) -> Option<CqEntry> {
        if logic < 0 || logic >= self.max_offset() {
            return None;
        }
        let mut b = [0u8; ENTRY];
        match self.copy_entries(logic, &mut b)? {
            0 => None,
            _ => CqEntry::decode(&b),
        }
    }

    /// Visit published entries from `from` on, at most `limit`, until `f`
    /// returns false. Returns the number of entries visited, or None if the
    /// segment holding `from` is gone.
    pub fn for_each(
        &self,
        from: i64,
        limit: usize,
        mut f: impl FnMut(i64, CqEntry) -> bool,
    ) -> Option<usize> {
        let mut buf = [0u8; READ_CHUNK * ENTRY];
        let mut logic = from;
        let mut visited = 0usize;
        while visited < limit {
            let room = (limit - visited).min(READ_CHUNK) * ENTRY;
            let n = match self.copy_entries(logic, &mut buf[..room]) {
                Some(0) => break,
                Some(n) => n,
                None if visited == 0 => return None,
                None => break,
            };
            for chunk in buf[..n * ENTRY].chunks_exact(ENTRY) {
                let e = CqEntry::decode(chunk)?;
                visited += 1;
                if !f(logic, e) {
                    return Some(visited);
                }
                logic += 1;
            }
        }
        Some(visited)
    }

    /// Logical offset of the segment after the one holding `logic`.
    pub fn next_segment_start(&self, logic: i64) -> i64 {
        let size = self.file_size;
        let pos = logic.max(0) as u64 * CQ_ENTRY_SIZE;
        ((pos / size + 1) * size / CQ_ENTRY_SIZE) as i64
    }

    /// CommitLog end of the last entry (0 if empty).
    pub fn max_phys_end(&self) -> u64 {
        let max = self.max_offset();
        if max == 0 {
            return 0;
        }
        match self.edge_or_entry(max - 1) {
            Some(e) if !e.is_filler() => (e.phys_offset + i64::from(e.size)) as u64,
            _ => 0,
        }
    }

    /// Remove entries pointing at or past `phys_end` (CommitLog truncated).
    /// Returns the number removed.
    pub fn truncate_past(&self, phys_end: u64) -> Result<usize> {
        let mut removed = 0;
        let mut max = self.max_offset();
        while max > self.min_offset() {
            let Some(e) = self.edge_or_entry(max - 1) else {
                break;
            };
            // After a power loss the tail may hold empty or half-written
            // entries between real ones: only a whole entry pointing inside
            // the CommitLog ends the cut.
            let whole = e.size > 0 && e.phys_offset >= 0;
            if e.is_filler() || (whole && (e.phys_offset + i64::from(e.size)) as u64 <= phys_end) {
                break;
            }
            // Unpublish first, then clear the bytes.
            self.max_logic.store(max - 1, Ordering::Release);
            let mut t = self.tail.lock();
            t.last = None;
            t.at_min = None;
            if max > t.start {
                let keep = (max - 1 - t.start) as usize * ENTRY;
                let cut = t.bytes.len().saturating_sub(keep) as u64;
                t.bytes.truncate(keep);
                self.shared.tail_bytes.fetch_sub(cut, Ordering::Relaxed);
            } else {
                t.start = max - 1;
                drop(t);
                let mut files = Vec::new();
                self.write_files(max - 1, &[0u8; ENTRY], &mut files)?;
                self.shared.files_unsynced.store(true, Ordering::Release);
            }
            max -= 1;
            removed += 1;
        }
        if self.min_offset() > max {
            self.min_logic.store(max, Ordering::Release);
        }
        // A last file left empty would make the next load find the end
        // in the wrong file: remove it.
        loop {
            let (first, end) = self.span();
            if end <= first + self.file_size || end - self.file_size < max as u64 * CQ_ENTRY_SIZE {
                break;
            }
            self.remove_last_file()?;
        }
        Ok(removed)
    }

    /// Move the min offset to the first entry whose message is still in the
    /// CommitLog (entries are sorted by CommitLog offset).
    pub fn correct_min_offset(&self, commitlog_min: u64) {
        let (mut lo, mut hi) = (self.min_offset(), self.max_offset());
        // Most calls find the first entry still stored: one read, or none.
        match self.edge_or_entry(lo) {
            Some(e) if !e.is_filler() && (e.phys_offset as u64) >= commitlog_min => return,
            _ => {}
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid) {
                Some(e) if e.is_filler() || (e.phys_offset as u64) < commitlog_min => lo = mid + 1,
                _ => hi = mid,
            }
        }
        let min = self.min_logic.fetch_max(lo, Ordering::AcqRel).max(lo);
        if let Some(e) = self.entry(min) {
            self.tail.lock().at_min = Some((min, e));
        }
    }

    /// Delete segments whose every entry points below `commitlog_min`; the
    /// last segment is always kept. Returns the number deleted.
    pub fn delete_expired(&self, commitlog_min: u64) -> usize {
        let mut n = 0;
        loop {
            let (first, end) = self.span();
            // Only whole files with a successor: the last one always stays.
            if end < first + 2 * self.file_size {
                break;
            }
            let last_logic = ((first + self.file_size) / CQ_ENTRY_SIZE) as i64 - 1;
            if last_logic >= self.tail.lock().start {
                // Part of it still waits in memory: the flusher will write
                // there, so the file stays until it has.
                break;
            }
            let below = match self.entry(last_logic) {
                Some(e) => {
                    e.is_filler() || ((e.phys_offset + i64::from(e.size)) as u64) <= commitlog_min
                }
                None => false,
            };
            if !below {
                break;
            }
            let path = self.seg_path(first);
            match self.vfs.remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete segment");
                    break;
                }
            }
            tracing::info!(path = %path.display(), "deleted segment");
            {
                let mut span = self.files.lock();
                if span.0 == first {
                    span.0 += self.file_size;
                }
            }
            self.min_logic.fetch_max(
                ((first + self.file_size) / CQ_ENTRY_SIZE) as i64,
                Ordering::AcqRel,
            );
            n += 1;
        }
        self.correct_min_offset(commitlog_min);
        n
    }

    /// The queue left the store (its topic was deleted and its folder moved
    /// away): no later write or read touches its old paths.
    pub(crate) fn retire(&self) {
        let _io = self.io.write();
        self.deleted.store(true, Ordering::Release);
        let mut t = self.tail.lock();
        let n = t.bytes.len() as u64;
        t.bytes = Vec::new();
        self.shared.tail_bytes.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Whether the tail is due for writing: `force`, at least `least_bytes`,
    /// or older than `max_age_ms`. Also the checkpoint bound of a tail that
    /// stays: CommitLog offset and store time of its first entry.
    pub(crate) fn tail_state(&self, now_ms: i64, least_bytes: usize, max_age_ms: i64) -> TailState {
        let t = self.tail.lock();
        if t.bytes.is_empty() {
            return TailState::Empty;
        }
        if t.bytes.len() >= least_bytes || now_ms.saturating_sub(t.since_ms) >= max_age_ms {
            TailState::Due
        } else {
            TailState::Kept {
                first_phys: t.first_phys,
                first_ts: t.first_ts,
            }
        }
    }

    /// Write the tail into the segment files (not synced; the tail stays in
    /// memory until [`ConsumeQueue::tail_written`]).
    pub(crate) fn write_tail(&self) -> Result<TailWrite> {
        let (start, bytes) = {
            let t = self.tail.lock();
            (t.start, t.bytes.clone())
        };
        let mut files = Vec::new();
        let created = self.write_files(start, &bytes, &mut files)?;
        Ok(TailWrite {
            upto: start + (bytes.len() / ENTRY) as i64,
            files,
            created,
        })
    }

    /// Entries below `upto` are durable in the files: drop them from the
    /// tail. Returns true if the tail still holds entries (the queue stays
    /// listed).
    pub(crate) fn tail_written(&self, upto: i64) -> bool {
        let mut t = self.tail.lock();
        if upto > t.start {
            let n = (((upto - t.start) as usize) * ENTRY).min(t.bytes.len());
            t.bytes.drain(..n);
            t.start = upto;
            self.shared
                .tail_bytes
                .fetch_sub(n as u64, Ordering::Relaxed);
            if !t.bytes.is_empty() {
                // Written after the copy: their own store time is unknown
                // here, but they are newer than the dispatch point the
                // flusher checkpoints (see `Inner::flush_logics`).
                if let Some(e) = t.bytes.get(..ENTRY).and_then(CqEntry::decode) {
                    t.first_phys = e.phys_offset;
                }
                t.since_ms = crate::commit_log::now_ms();
            }
        }
        if t.bytes.is_empty() {
            // Give the memory back: an idle queue holds no buffer.
            t.bytes = Vec::new();
            t.listed = false;
            false
        } else {
            true
        }
    }
}

/// See [`ConsumeQueue::tail_state`].
pub(crate) enum TailState {
    Empty,
    Due,
    Kept { first_phys: i64, first_ts: i64 },
}
