//! The persistent time-ordered index behind delayed delivery: a ring of
//! fixed-size time slots (the wheel) whose slots head linked lists of
//! entries in an append-only, segmented timer log, plus the checkpoint of
//! delivery progress. Knows nothing about messages beyond a CommitLog
//! offset and size; `schedule.rs` drives it.
//!
//! Layout under `<storePathRootDir>/timer/`:
//! * `wheel`: a 32-byte header (magic, version, precision, slot count) then
//!   one 24-byte slot per ring position: `slot_ms` i64 (the absolute slot
//!   time this ring position currently holds), `last_pos` i64 (timer-log
//!   position of the newest entry, -1 when empty), `count` i32, reserved.
//! * `log/<20-digit base position>`: 40-byte entries: `prev_pos` i64 (the
//!   slot's previous entry, -1 at the chain start), `slot_ms` i64 (slot the
//!   entry was filed in), `deliver_ms` i64, `cl_offset` i64, `size` i32,
//!   magic i32 (`TIM1` a message to deliver, `TIMD` a recall's delete
//!   marker).
//! * `checkpoint.json`: cursor (all slots before it are delivered), entries
//!   of the cursor slot already handled, the durable end of the log, and the
//!   caller's opaque progress map (enqueue offsets).
//!
//! Why this shape: finding due work costs O(1) per elapsed slot plus
//! O(entries in that slot); pending messages far in the future are never
//! touched. RAM holds only the slot array (fixed, independent of how many
//! messages are pending); entries stay on disk. A delay longer than the
//! ring's window is filed in the farthest slot the ring can hold and
//! re-filed ("rolled") when that slot comes due. Slot headers reach disk
//! only at a checkpoint, after the log they point into is synced; on open,
//! chains are cut back to the checkpointed log end, so an entry is in the
//! index exactly once for every enqueue the checkpoint accounts for.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use apogee_store::vfs::{self, OpenMode, VfsFile, VfsRef};
use serde::{Deserialize, Serialize};

use super::ScheduleError;

const WHEEL_MAGIC: u32 = 0x4150_5457; // "APTW"
const WHEEL_VERSION: u32 = 1;
const WHEEL_HEADER: usize = 32;
const SLOT_SIZE: usize = 24;
/// Size of one timer-log entry in bytes.
pub const ENTRY_SIZE: u64 = 40;
const ENTRY_MAGIC: i32 = 0x5449_4d31; // "TIM1"
const DELETE_MAGIC: i32 = 0x5449_4d44; // "TIMD"
/// Log bytes buffered in memory before they are written out.
const LOG_BUFFER_LIMIT: usize = 64 * 1024;

type Result<T> = std::result::Result<T, ScheduleError>;

fn io_err(context: &'static str, path: &Path, source: std::io::Error) -> ScheduleError {
    ScheduleError::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// One pending delivery: which stored record, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerEntry {
    pub deliver_ms: i64,
    pub cl_offset: i64,
    pub size: i32,
    /// The record is a recall's delete marker (`TIMER_DEL_UNIQKEY`): it
    /// cancels the message it names in the same slot and is never
    /// delivered itself. Kept in the entry (as Apache's `MAGIC_DELETE`) so
    /// a slot's markers are found without reading every record twice.
    pub delete: bool,
}

impl TimerEntry {
    /// An entry for a message to deliver.
    pub fn deliver(deliver_ms: i64, cl_offset: i64, size: i32) -> Self {
        TimerEntry {
            deliver_ms,
            cl_offset,
            size,
            delete: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    slot_ms: i64,
    last_pos: i64,
    count: i32,
}

const EMPTY_SLOT: Slot = Slot {
    slot_ms: -1,
    last_pos: -1,
    count: 0,
};

/// Shape of the index, fixed when it is first created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelShape {
    /// Width of one slot in ms.
    pub precision_ms: i64,
    /// Ring positions; the window is `precision_ms * slots`.
    pub slots: u32,
    /// Bytes per timer-log segment (a multiple of the entry size).
    pub segment_bytes: u64,
}

/// Persisted delivery progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TimerCheckpoint {
    /// Every slot before this time has been delivered.
    pub cursor_ms: i64,
    /// Entries of the cursor slot (in insertion order) already handled.
    pub cursor_done: u32,
    /// Timer-log bytes covered by this checkpoint.
    pub log_end: i64,
    /// Caller-owned progress (e.g. `"topic@queue" -> next queue offset`).
    pub progress: BTreeMap<String, i64>,
}

struct Segment {
    base: u64,
    file: Box<dyn VfsFile>,
    path: PathBuf,
    /// Latest slot any entry of this segment was filed in; the segment is
    /// garbage once the cursor has passed it.
    max_slot_ms: i64,
}

/// The wheel, the timer log and the checkpoint.
pub struct TimerIndex {
    /// The store's file system (tests fail it or cut its power).
    vfs: VfsRef,
    dir: PathBuf,
    shape: WheelShape,
    wheel_file: Box<dyn VfsFile>,
    wheel_path: PathBuf,
    slots: Vec<Slot>,
    dirty: HashSet<usize>,
    segments: Vec<Segment>,
    /// End of the bytes written to segment files.
    written_end: u64,
    /// Log bytes below this are synced.
    synced_end: u64,
    /// Appended entries not yet written (they start at `written_end`).
    tail: Vec<u8>,
    cursor_ms: i64,
    cursor_done: u32,
    /// Checkpointed cursor: segments are deleted only behind it.
    durable_cursor_ms: i64,
    /// Entries read or written by insert / slot reads (observability and
    /// the test that a tick does not scan pending entries).
    touched: u64,
    pending_changes: bool,
    /// Segment files were created or deleted since the log directory was
    /// last synced (their names are not durable yet).
    log_dir_dirty: bool,
}

impl TimerIndex {
    /// Opens (or creates) the index in `dir`. An existing wheel keeps its
    /// own precision and slot count (changing them would scramble the ring);
    /// a mismatch with `shape` is logged. A new index starts its cursor at
    /// `now_ms`. Returns the checkpointed caller progress.
    pub fn open(
        dir: &Path,
        shape: WheelShape,
        now_ms: i64,
    ) -> Result<(Self, BTreeMap<String, i64>)> {
        Self::open_with(vfs::real(), dir, shape, now_ms)
    }

    /// [`TimerIndex::open`] on the given file system (the store's).
    pub fn open_with(
        vfs: VfsRef,
        dir: &Path,
        shape: WheelShape,
        now_ms: i64,
    ) -> Result<(Self, BTreeMap<String, i64>)> {
        if shape.precision_ms <= 0 || shape.slots < 2 {
            return Err(ScheduleError::Config(format!(
                "timer wheel needs precision > 0 and at least 2 slots, got {} ms x {}",
                shape.precision_ms, shape.slots
            )));
        }
        let seg_bytes = (shape.segment_bytes / ENTRY_SIZE).max(16) * ENTRY_SIZE;
        let log_dir = dir.join("log");
        if !vfs.exists(&log_dir) {
            crate::persist::create_dir_durable(&*vfs, &log_dir)
                .map_err(|(path, e)| io_err("create timer dir", &path, e))?;
        }
        let cp_path = dir.join("checkpoint.json");
        // Left by a checkpoint that a crash interrupted; never read.
        let stale = dir.join("checkpoint.json.tmp");
        if vfs.exists(&stale) {
            let _ = vfs.remove_file(&stale);
        }
        let cp: Option<TimerCheckpoint> = match vfs::read_file(&*vfs, &cp_path) {
            Ok(Some(bytes)) => {
                Some(
                    serde_json::from_slice(&bytes).map_err(|e| ScheduleError::Corrupt {
                        path: cp_path.clone(),
                        reason: e.to_string(),
                    })?,
                )
            }
            Ok(None) => None,
            Err(e) => return Err(io_err("read timer checkpoint", &cp_path, e)),
        };
        let wheel_path = dir.join("wheel");
        let (wheel_file, shape_used, slots) = load_wheel(&*vfs, &wheel_path, shape, cp.is_some())?;
        let shape_used = WheelShape {
            segment_bytes: seg_bytes,
            ..shape_used
        };
        let cp = cp.unwrap_or_else(|| TimerCheckpoint {
            cursor_ms: floor_to(now_ms, shape_used.precision_ms),
            ..Default::default()
        });
        let mut idx = TimerIndex {
            vfs,
            dir: dir.to_path_buf(),
            shape: shape_used,
            wheel_file,
            wheel_path,
            slots,
            dirty: HashSet::new(),
            segments: Vec::new(),
            written_end: 0,
            synced_end: 0,
            tail: Vec::new(),
            cursor_ms: cp.cursor_ms,
            cursor_done: cp.cursor_done,
            durable_cursor_ms: cp.cursor_ms,
            touched: 0,
            pending_changes: false,
            log_dir_dirty: false,
        };
        idx.load_segments(&log_dir)?;
        let log_end = u64::try_from(cp.log_end).unwrap_or(0);
        idx.cut_back(log_end)?;
        idx.truncate_log(log_end)?;
        idx.scan_segment_max()?;
        // Persist the repaired wheel right away so a second crash starts clean.
        idx.checkpoint(&cp.progress)?;
        Ok((idx, cp.progress))
    }

    pub fn shape(&self) -> WheelShape {
        self.shape
    }

    /// Time of the next slot to deliver (every earlier slot is done).
    pub fn cursor_ms(&self) -> i64 {
        self.cursor_ms
    }

    /// Entries of the cursor slot already handled.
    pub fn cursor_done(&self) -> u32 {
        self.cursor_done
    }

    /// Records that the first `n` entries of the cursor slot are handled.
    pub fn set_cursor_done(&mut self, n: u32) {
        if n != self.cursor_done {
            self.cursor_done = n;
            self.pending_changes = true;
        }
    }

    /// Entries read or written so far.
    pub fn entries_touched(&self) -> u64 {
        self.touched
    }

    /// The window the ring covers in ms.
    pub fn window_ms(&self) -> i64 {
        self.shape.precision_ms * i64::from(self.shape.slots)
    }

    /// Whether the cursor slot has ended by `now_ms` (its entries are due).
    pub fn cursor_due(&self, now_ms: i64) -> bool {
        self.cursor_ms + self.shape.precision_ms <= now_ms
    }

    /// Entries filed (not yet delivered) in the cursor slot.
    pub fn cursor_count(&self) -> u32 {
        let s = self.slots[self.ring(self.cursor_ms)];
        if s.slot_ms == self.cursor_ms {
            u32::try_from(s.count).unwrap_or(0)
        } else {
            0
        }
    }

    fn ring(&self, slot_ms: i64) -> usize {
        let n = slot_ms.div_euclid(self.shape.precision_ms);
        n.rem_euclid(i64::from(self.shape.slots)) as usize
    }

    /// Files `e`: in its own slot when that lies within the window, in the
    /// cursor slot when already due, else in the farthest slot of the window
    /// (to be rolled forward later). Returns the slot used.
    pub fn insert(&mut self, e: TimerEntry) -> Result<i64> {
        let p = self.shape.precision_ms;
        let last_allowed = self.cursor_ms + self.window_ms() - p;
        let slot_ms = floor_to(e.deliver_ms, p).clamp(self.cursor_ms, last_allowed);
        let idx = self.ring(slot_ms);
        let cur = self.slots[idx];
        let (prev, count) = if cur.slot_ms == slot_ms {
            (cur.last_pos, cur.count)
        } else {
            (-1, 0)
        };
        let pos = self.append_entry(prev, slot_ms, e)?;
        self.slots[idx] = Slot {
            slot_ms,
            last_pos: pos as i64,
            count: count.saturating_add(1),
        };
        self.dirty.insert(idx);
        self.touched += 1;
        self.pending_changes = true;
        Ok(slot_ms)
    }

    /// The cursor slot's entries in insertion order, each with the slot
    /// time it was filed under (its deliver time may lie beyond the slot
    /// when it is to be rolled).
    pub fn cursor_entries(&mut self) -> Result<Vec<TimerEntry>> {
        let s = self.slots[self.ring(self.cursor_ms)];
        if s.slot_ms != self.cursor_ms || s.last_pos < 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(usize::try_from(s.count).unwrap_or(0));
        let mut pos = s.last_pos;
        let mut guard = 0i64;
        while pos >= 0 {
            let (prev, slot_ms, e) = self.read_entry(pos as u64)?;
            self.touched += 1;
            if slot_ms != self.cursor_ms {
                return Err(ScheduleError::Corrupt {
                    path: self.dir.join("log"),
                    reason: format!(
                        "entry at {pos} belongs to slot {slot_ms}, expected {}",
                        self.cursor_ms
                    ),
                });
            }
            out.push(e);
            pos = prev;
            guard += 1;
            if guard > i64::from(s.count) + 1 {
                return Err(ScheduleError::Corrupt {
                    path: self.dir.join("log"),
                    reason: format!("chain of slot {} is longer than its count", self.cursor_ms),
                });
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Marks the cursor slot delivered and moves to the next one.
    pub fn advance(&mut self) {
        self.cursor_ms += self.shape.precision_ms;
        self.cursor_done = 0;
        self.pending_changes = true;
    }

    /// Moves the cursor over empty slots, at most up to the slot holding
    /// `now_ms`; returns whether it moved. Lets a long idle stretch (or a
    /// restart after downtime) be crossed without visiting each slot's log.
    pub fn skip_empty(&mut self, now_ms: i64) -> bool {
        let mut moved = false;
        while self.cursor_due(now_ms) && self.cursor_count() == 0 {
            self.cursor_ms += self.shape.precision_ms;
            self.cursor_done = 0;
            moved = true;
        }
        if moved {
            self.pending_changes = true;
        }
        moved
    }

    /// Whether anything changed since the last checkpoint.
    pub fn has_changes(&self) -> bool {
        self.pending_changes || !self.tail.is_empty() || !self.dirty.is_empty()
    }

    /// Makes everything durable: the log (synced), then the dirty slots
    /// (synced), then the checkpoint (atomic replace); finally deletes log
    /// segments the cursor has passed.
    pub fn checkpoint(&mut self, progress: &BTreeMap<String, i64>) -> Result<()> {
        self.write_tail()?;
        let seg_bytes = self.shape.segment_bytes;
        for seg in &self.segments {
            if seg.base + seg_bytes > self.synced_end && seg.base < self.written_end {
                seg.file
                    .sync_data()
                    .map_err(|e| io_err("sync timer log", &seg.path, e))?;
            }
        }
        self.synced_end = self.written_end;
        if self.log_dir_dirty {
            let log_dir = self.dir.join("log");
            self.vfs
                .sync_dir(&log_dir)
                .map_err(|e| io_err("sync timer log dir", &log_dir, e))?;
            self.log_dir_dirty = false;
        }
        if !self.dirty.is_empty() {
            let mut dirty: Vec<usize> = self.dirty.drain().collect();
            dirty.sort_unstable();
            let mut buf = [0u8; SLOT_SIZE];
            for i in dirty {
                encode_slot(&self.slots[i], &mut buf);
                let off = (WHEEL_HEADER + i * SLOT_SIZE) as u64;
                self.wheel_file
                    .write_all_at(&buf, off)
                    .map_err(|e| io_err("write timer wheel", &self.wheel_path, e))?;
            }
            self.wheel_file
                .sync_data()
                .map_err(|e| io_err("sync timer wheel", &self.wheel_path, e))?;
        }
        let cp = TimerCheckpoint {
            cursor_ms: self.cursor_ms,
            cursor_done: self.cursor_done,
            log_end: self.written_end as i64,
            progress: progress.clone(),
        };
        let path = self.dir.join("checkpoint.json");
        let bytes = serde_json::to_vec_pretty(&cp).map_err(|e| ScheduleError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        vfs::write_atomic(&*self.vfs, &path, &bytes)
            .map_err(|e| io_err("write timer checkpoint", &path, e.into_io()))?;
        self.durable_cursor_ms = self.cursor_ms;
        self.pending_changes = false;
        self.delete_passed_segments();
        Ok(())
    }

    /// Number of timer-log segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    // ---- timer log ----

    fn append_entry(&mut self, prev: i64, slot_ms: i64, e: TimerEntry) -> Result<u64> {
        let pos = self.written_end + self.tail.len() as u64;
        let seg_bytes = self.shape.segment_bytes;
        if pos.is_multiple_of(seg_bytes) && self.segment_for(pos).is_none() {
            self.write_tail()?;
            self.create_segment(pos)?;
        }
        let mut b = [0u8; ENTRY_SIZE as usize];
        b[0..8].copy_from_slice(&prev.to_be_bytes());
        b[8..16].copy_from_slice(&slot_ms.to_be_bytes());
        b[16..24].copy_from_slice(&e.deliver_ms.to_be_bytes());
        b[24..32].copy_from_slice(&e.cl_offset.to_be_bytes());
        b[32..36].copy_from_slice(&e.size.to_be_bytes());
        let magic = if e.delete { DELETE_MAGIC } else { ENTRY_MAGIC };
        b[36..40].copy_from_slice(&magic.to_be_bytes());
        self.tail.extend_from_slice(&b);
        if let Some(seg) = self.segments.last_mut() {
            seg.max_slot_ms = seg.max_slot_ms.max(slot_ms);
        }
        // A segment boundary or a full buffer: write out.
        if self.tail.len() >= LOG_BUFFER_LIMIT || (pos + ENTRY_SIZE).is_multiple_of(seg_bytes) {
            self.write_tail()?;
        }
        Ok(pos)
    }

    fn write_tail(&mut self) -> Result<()> {
        if self.tail.is_empty() {
            return Ok(());
        }
        let start = self.written_end;
        let seg = self
            .segments
            .last()
            .filter(|s| start >= s.base && start < s.base + self.shape.segment_bytes)
            .ok_or_else(|| ScheduleError::Corrupt {
                path: self.dir.join("log"),
                reason: format!("no segment holds log position {start}"),
            })?;
        seg.file
            .write_all_at(&self.tail, start - seg.base)
            .map_err(|e| io_err("write timer log", &seg.path, e))?;
        self.written_end += self.tail.len() as u64;
        self.tail.clear();
        Ok(())
    }

    fn read_entry(&self, pos: u64) -> Result<(i64, i64, TimerEntry)> {
        let mut b = [0u8; ENTRY_SIZE as usize];
        if pos >= self.written_end {
            let rel = (pos - self.written_end) as usize;
            let src = self
                .tail
                .get(rel..rel + ENTRY_SIZE as usize)
                .ok_or_else(|| self.bad_pos(pos))?;
            b.copy_from_slice(src);
        } else {
            let seg = self.segment_for(pos).ok_or_else(|| self.bad_pos(pos))?;
            read_exact_at(&*seg.file, &mut b, pos - seg.base)
                .map_err(|e| io_err("read timer log", &seg.path, e))?;
        }
        decode_entry(&b).ok_or_else(|| ScheduleError::Corrupt {
            path: self.dir.join("log"),
            reason: format!("bad entry magic at position {pos}"),
        })
    }

    fn bad_pos(&self, pos: u64) -> ScheduleError {
        ScheduleError::Corrupt {
            path: self.dir.join("log"),
            reason: format!("timer log position {pos} is not stored"),
        }
    }

    fn segment_for(&self, pos: u64) -> Option<&Segment> {
        let i = self
            .segments
            .partition_point(|s| s.base <= pos)
            .checked_sub(1)?;
        let s = self.segments.get(i)?;
        (pos < s.base + self.shape.segment_bytes).then_some(s)
    }

    fn create_segment(&mut self, base: u64) -> Result<()> {
        let path = self.dir.join("log").join(format!("{base:020}"));
        if !self.vfs.exists(&path) {
            self.log_dir_dirty = true;
        }
        let file = self
            .vfs
            .open(&path, OpenMode::CreateOrOpen)
            .map_err(|e| io_err("create timer log segment", &path, e))?;
        self.segments.push(Segment {
            base,
            file,
            path,
            max_slot_ms: i64::MIN,
        });
        Ok(())
    }

    fn load_segments(&mut self, log_dir: &Path) -> Result<()> {
        let rd = self
            .vfs
            .list_dir(log_dir)
            .map_err(|e| io_err("list timer log", log_dir, e))?;
        let mut found = Vec::new();
        for ent in rd {
            if ent.is_dir {
                continue;
            }
            let Some(base) = ent.name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if !base.is_multiple_of(self.shape.segment_bytes) {
                tracing::warn!(file = ?log_dir.join(&ent.name), "ignoring misaligned timer log segment");
                continue;
            }
            found.push(base);
        }
        found.sort_unstable();
        for base in found {
            self.create_segment(base)?;
        }
        Ok(())
    }

    /// Cuts every chain back to entries below `log_end` (entries after the
    /// checkpoint are re-created by re-enqueueing from the checkpointed
    /// progress).
    fn cut_back(&mut self, log_end: u64) -> Result<()> {
        // Read straight from the files: the tail buffer is empty at open.
        self.written_end = u64::MAX;
        let mut fixed = 0usize;
        for i in 0..self.slots.len() {
            let s = self.slots[i];
            if s.last_pos < 0 || (s.last_pos as u64) < log_end {
                continue;
            }
            let mut pos = s.last_pos;
            let mut count = s.count;
            while pos >= 0 && pos as u64 >= log_end {
                match self.read_entry(pos as u64) {
                    Ok((prev, _, _)) => {
                        pos = prev;
                        count -= 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, slot_ms = s.slot_ms, "timer chain unreadable after crash; slot reset");
                        pos = -1;
                        count = 0;
                    }
                }
            }
            self.slots[i] = if pos < 0 || count <= 0 {
                Slot {
                    slot_ms: s.slot_ms,
                    last_pos: -1,
                    count: 0,
                }
            } else {
                Slot {
                    last_pos: pos,
                    count,
                    ..s
                }
            };
            self.dirty.insert(i);
            fixed += 1;
        }
        if fixed > 0 {
            tracing::info!(slots = fixed, "timer wheel cut back to the last checkpoint");
        }
        Ok(())
    }

    fn truncate_log(&mut self, log_end: u64) -> Result<()> {
        let seg_bytes = self.shape.segment_bytes;
        while let Some(last) = self.segments.last() {
            if last.base > log_end || (last.base == log_end && log_end > 0) {
                let _ = self.vfs.remove_file(&last.path);
                self.log_dir_dirty = true;
                self.segments.pop();
            } else {
                break;
            }
        }
        if let Some(last) = self.segments.last() {
            let keep = (log_end - last.base).min(seg_bytes);
            last.file
                .set_len(keep)
                .map_err(|e| io_err("truncate timer log", &last.path, e))?;
        }
        self.written_end = log_end;
        self.synced_end = log_end;
        // Appends continue inside a segment: make sure it is there.
        if !log_end.is_multiple_of(seg_bytes) && self.segment_for(log_end).is_none() {
            tracing::warn!(
                log_end,
                "timer log segment holding the checkpointed end is missing"
            );
            self.create_segment(log_end / seg_bytes * seg_bytes)?;
        }
        Ok(())
    }

    /// Recomputes each segment's latest slot (one sequential read at open).
    fn scan_segment_max(&mut self) -> Result<()> {
        let end = self.written_end;
        let seg_bytes = self.shape.segment_bytes;
        let mut buf = vec![0u8; 4096 * ENTRY_SIZE as usize];
        for seg in &mut self.segments {
            let len = end.saturating_sub(seg.base).min(seg_bytes);
            let mut read = 0u64;
            let mut max = i64::MIN;
            while read < len {
                let want = ((len - read) as usize).min(buf.len());
                let chunk = &mut buf[..want];
                read_exact_at(&*seg.file, chunk, read)
                    .map_err(|e| io_err("scan timer log", &seg.path, e))?;
                for ent in chunk.chunks_exact(ENTRY_SIZE as usize) {
                    if let Some((_, slot_ms, _)) = decode_entry(ent) {
                        max = max.max(slot_ms);
                    }
                }
                read += want as u64;
            }
            seg.max_slot_ms = max;
        }
        Ok(())
    }

    fn delete_passed_segments(&mut self) {
        // Never the newest segment: appends continue there.
        while self.segments.len() > 1 {
            let s = &self.segments[0];
            if s.max_slot_ms >= self.durable_cursor_ms {
                break;
            }
            if let Err(e) = self.vfs.remove_file(&s.path) {
                // Retried at every checkpoint.
                static DELETE_FAILED: apogee_throttle::LogThrottle =
                    apogee_throttle::LogThrottle::new("could not delete timer log segment");
                apogee_throttle::throttled_warn!(DELETE_FAILED, (), path = ?s.path, error = %e,
                    "could not delete timer log segment");
                break;
            }
            self.segments.remove(0);
            self.log_dir_dirty = true;
        }
    }
}

/// Fills `buf` from `off`; a short file is an error.
fn read_exact_at(file: &dyn VfsFile, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    if file.read_at(buf, off)? < buf.len() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn floor_to(ms: i64, p: i64) -> i64 {
    ms.div_euclid(p) * p
}

fn encode_slot(s: &Slot, b: &mut [u8; SLOT_SIZE]) {
    b[0..8].copy_from_slice(&s.slot_ms.to_be_bytes());
    b[8..16].copy_from_slice(&s.last_pos.to_be_bytes());
    b[16..20].copy_from_slice(&s.count.to_be_bytes());
    b[20..24].copy_from_slice(&0i32.to_be_bytes());
}

fn be_i64(b: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn decode_slot(b: &[u8]) -> Option<Slot> {
    Some(Slot {
        slot_ms: be_i64(b, 0)?,
        last_pos: be_i64(b, 8)?,
        count: be_i32(b, 16)?,
    })
}

/// (prev_pos, slot_ms, entry), or None when the magic is wrong.
fn decode_entry(b: &[u8]) -> Option<(i64, i64, TimerEntry)> {
    let delete = match be_i32(b, 36)? {
        ENTRY_MAGIC => false,
        DELETE_MAGIC => true,
        _ => return None,
    };
    Some((
        be_i64(b, 0)?,
        be_i64(b, 8)?,
        TimerEntry {
            deliver_ms: be_i64(b, 16)?,
            cl_offset: be_i64(b, 24)?,
            size: be_i32(b, 32)?,
            delete,
        },
    ))
}

/// Loads the wheel file, or creates it with `shape`. Returns the shape in
/// force (the file's, when it exists).
fn load_wheel(
    vfs: &dyn vfs::Vfs,
    path: &Path,
    shape: WheelShape,
    expect_existing: bool,
) -> Result<(Box<dyn VfsFile>, WheelShape, Vec<Slot>)> {
    let exists = vfs.exists(path);
    let file = vfs
        .open(path, OpenMode::CreateOrOpen)
        .map_err(|e| io_err("open timer wheel", path, e))?;
    if exists {
        let bytes = file
            .len()
            .and_then(|len| {
                let len = usize::try_from(len)
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
                let mut bytes = vec![0u8; len];
                let n = file.read_at(&mut bytes, 0)?;
                bytes.truncate(n);
                Ok(bytes)
            })
            .map_err(|e| io_err("read timer wheel", path, e))?;
        let corrupt = |reason: String| ScheduleError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        if be_i32(&bytes, 0) != Some(WHEEL_MAGIC as i32) {
            return Err(corrupt("bad magic".into()));
        }
        let version = be_i32(&bytes, 4).unwrap_or(-1);
        if version != WHEEL_VERSION as i32 {
            return Err(corrupt(format!("unsupported version {version}")));
        }
        let precision_ms = be_i64(&bytes, 8).unwrap_or(0);
        let slots = be_i32(&bytes, 16)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        if precision_ms <= 0 || slots < 2 {
            return Err(corrupt(format!("bad shape {precision_ms} ms x {slots}")));
        }
        if bytes.len() != WHEEL_HEADER + slots as usize * SLOT_SIZE {
            return Err(corrupt(format!(
                "size {} does not match {slots} slots",
                bytes.len()
            )));
        }
        if precision_ms != shape.precision_ms || slots != shape.slots {
            tracing::warn!(
                file_precision_ms = precision_ms,
                file_slots = slots,
                configured_precision_ms = shape.precision_ms,
                configured_slots = shape.slots,
                "timer wheel keeps the shape it was created with"
            );
        }
        let list = bytes[WHEEL_HEADER..]
            .chunks_exact(SLOT_SIZE)
            .map(|c| decode_slot(c).unwrap_or(EMPTY_SLOT))
            .collect();
        Ok((
            file,
            WheelShape {
                precision_ms,
                slots,
                ..shape
            },
            list,
        ))
    } else {
        if expect_existing {
            tracing::warn!(path = ?path, "timer checkpoint exists but the wheel is missing; starting an empty wheel");
        }
        let mut bytes = vec![0u8; WHEEL_HEADER + shape.slots as usize * SLOT_SIZE];
        bytes[0..4].copy_from_slice(&WHEEL_MAGIC.to_be_bytes());
        bytes[4..8].copy_from_slice(&WHEEL_VERSION.to_be_bytes());
        bytes[8..16].copy_from_slice(&shape.precision_ms.to_be_bytes());
        bytes[16..20].copy_from_slice(&shape.slots.to_be_bytes());
        let mut buf = [0u8; SLOT_SIZE];
        encode_slot(&EMPTY_SLOT, &mut buf);
        for c in bytes[WHEEL_HEADER..].chunks_exact_mut(SLOT_SIZE) {
            c.copy_from_slice(&buf);
        }
        file.write_all_at(&bytes, 0)
            .and_then(|_| file.sync_data())
            .map_err(|e| io_err("create timer wheel", path, e))?;
        Ok((file, shape, vec![EMPTY_SLOT; shape.slots as usize]))
    }
}
