//! `ConsumeQueue`: the per-(topic, queue) index of CommitLog records, 20-byte
//! entries (offset i64, size i32, tags code i64) in segment files under
//! `consumequeue/<topic>/<queueId>/`. Written only by the dispatcher; read by
//! pulls. Entry *n* lives at byte *n*×20 of the queue's logical space.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::config::CQ_ENTRY_SIZE;
use crate::error::Result;
use crate::mapped_file::MappedFile;
use crate::mapped_file_queue::MappedFileQueue;
use crate::vfs::VfsRef;

/// Size field of a filler entry (pads a queue that does not start at 0).
pub const FILLER_SIZE: i32 = i32::MAX;

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
    fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
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

pub struct ConsumeQueue {
    topic: String,
    queue_id: i32,
    mfq: MappedFileQueue,
    /// Next logical offset (entries below it are published).
    max_logic: AtomicI64,
    /// First logical offset whose message is still in the CommitLog.
    min_logic: AtomicI64,
}

impl ConsumeQueue {
    /// Open (or create the directory of) one queue and find its end.
    pub fn load(
        vfs: &VfsRef,
        dir: &Path,
        topic: &str,
        queue_id: i32,
        file_size: u64,
    ) -> Result<ConsumeQueue> {
        let mfq = MappedFileQueue::load(vfs, dir, file_size)?;
        // An empty last file after a non-empty one (crash right after it was
        // created) carries no entries: drop it so the end is found below.
        while mfq.len() > 1 {
            match mfq.last() {
                Some(l)
                    if l.read(0, CQ_ENTRY_SIZE)
                        .and_then(CqEntry::decode)
                        .is_some_and(|e| e.is_empty()) =>
                {
                    mfq.drop_from(l.base())
                }
                _ => break,
            }
        }
        let files = mfq.snapshot();
        let mut max_logic = 0i64;
        if let Some(last) = files.last() {
            for f in &files {
                f.set_wrote(f.size());
                f.set_flushed(f.size());
            }
            // Entries are written in order: binary-search the first empty one.
            let n = last.size() / CQ_ENTRY_SIZE;
            let (mut lo, mut hi) = (0u64, n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let e = last
                    .read(mid * CQ_ENTRY_SIZE, CQ_ENTRY_SIZE)
                    .and_then(CqEntry::decode);
                if e.is_some_and(|e| !e.is_empty()) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            last.set_wrote(lo * CQ_ENTRY_SIZE);
            last.set_flushed(lo * CQ_ENTRY_SIZE);
            max_logic = ((last.base() + lo * CQ_ENTRY_SIZE) / CQ_ENTRY_SIZE) as i64;
        }
        let cq = ConsumeQueue {
            topic: topic.to_owned(),
            queue_id,
            min_logic: AtomicI64::new((mfq.min_offset() / CQ_ENTRY_SIZE) as i64),
            mfq,
            max_logic: AtomicI64::new(max_logic),
        };
        cq.skip_fillers();
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
    pub fn segments(&self) -> &MappedFileQueue {
        &self.mfq
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

    fn segment_for(&self, byte_pos: u64) -> Result<Arc<MappedFile>> {
        if let Some(f) = self.mfq.find(byte_pos) {
            return Ok(f);
        }
        let size = self.mfq.file_size();
        let base = byte_pos / size * size;
        loop {
            let next = match self.mfq.last() {
                Some(l) => l.base() + size,
                None => base,
            };
            let f = self.mfq.create(next)?;
            if f.base() == base {
                return Ok(f);
            }
            f.set_wrote(f.size());
        }
    }

    fn write_entry(&self, logic: i64, e: &CqEntry) -> Result<()> {
        let pos = logic as u64 * CQ_ENTRY_SIZE;
        let f = self.segment_for(pos)?;
        let local = pos - f.base();
        f.write_at(local, &e.encode())?;
        if local < f.flushed() {
            // Rewriting below the flushed mark (re-dispatch after recovery).
            f.mark_dirty_from(local);
        }
        if f.wrote() < local + CQ_ENTRY_SIZE {
            f.set_wrote(local + CQ_ENTRY_SIZE);
        }
        Ok(())
    }

    /// Record the message with queue offset `logic`. Re-dispatch after a
    /// crash overwrites an existing entry with the same value; a gap is
    /// padded with filler entries.
    pub fn put(&self, logic: i64, phys_offset: i64, size: i32, tags_code: i64) -> Result<()> {
        if logic < 0 {
            return Ok(());
        }
        let max = self.max_offset();
        let entry = CqEntry {
            phys_offset,
            size,
            tags_code,
        };
        if logic < max {
            return self.write_entry(logic, &entry);
        }
        if logic > max {
            let file_size = self.mfq.file_size();
            let start = if self.mfq.is_empty() {
                // A new queue that starts late: pad only its first file.
                let first = (logic as u64 * CQ_ENTRY_SIZE) / file_size * file_size;
                (first / CQ_ENTRY_SIZE) as i64
            } else {
                tracing::warn!(topic = %self.topic, queue = self.queue_id, from = max, to = logic,
                    "gap in consume queue, padding with filler entries");
                max
            };
            if self.mfq.is_empty() {
                self.min_logic.store(logic, Ordering::Release);
            }
            for l in start..logic {
                self.write_entry(l, &CqEntry::FILLER)?;
            }
        }
        self.write_entry(logic, &entry)?;
        self.max_logic.store(logic + 1, Ordering::Release);
        Ok(())
    }

    /// The published entry at `logic`.
    pub fn entry(&self, logic: i64) -> Option<CqEntry> {
        if logic < 0 || logic >= self.max_offset() {
            return None;
        }
        let pos = logic as u64 * CQ_ENTRY_SIZE;
        let f = self.mfq.find(pos)?;
        f.read(pos - f.base(), CQ_ENTRY_SIZE)
            .and_then(CqEntry::decode)
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
        let max = self.max_offset();
        let mut logic = from;
        let mut visited = 0usize;
        while logic < max && visited < limit {
            let pos = logic as u64 * CQ_ENTRY_SIZE;
            let seg = self.mfq.find(pos)?;
            let local = pos - seg.base();
            let in_seg = ((seg.size() - local) / CQ_ENTRY_SIZE) as i64;
            let n = in_seg.min(max - logic).min((limit - visited) as i64);
            let bytes = seg.read(local, n as u64 * CQ_ENTRY_SIZE)?;
            for chunk in bytes.chunks_exact(CQ_ENTRY_SIZE as usize) {
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
        let size = self.mfq.file_size();
        let pos = logic.max(0) as u64 * CQ_ENTRY_SIZE;
        ((pos / size + 1) * size / CQ_ENTRY_SIZE) as i64
    }

    /// CommitLog end of the last entry (0 if empty).
    pub fn max_phys_end(&self) -> u64 {
        let max = self.max_offset();
        if max == 0 {
            return 0;
        }
        match self.entry(max - 1) {
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
            let Some(e) = self.entry(max - 1) else { break };
            // After a power loss the tail may hold empty or half-written
            // entries between real ones: only a whole entry pointing inside
            // the CommitLog ends the cut.
            let whole = e.size > 0 && e.phys_offset >= 0;
            if e.is_filler() || (whole && (e.phys_offset + i64::from(e.size)) as u64 <= phys_end) {
                break;
            }
            // Unpublish first, then clear the bytes.
            self.max_logic.store(max - 1, Ordering::Release);
            let pos = (max - 1) as u64 * CQ_ENTRY_SIZE;
            if let Some(f) = self.mfq.find(pos) {
                f.write_at(pos - f.base(), &[0u8; 20])?;
                f.set_wrote(pos - f.base());
                f.mark_dirty_from(pos - f.base());
            }
            max -= 1;
            removed += 1;
        }
        if self.min_offset() > max {
            self.min_logic.store(max, Ordering::Release);
        }
        // A last file left empty would make the next load find the end
        // in the wrong file: remove it.
        while self.mfq.len() > 1 {
            match self.mfq.last() {
                Some(l) if l.base() >= max as u64 * CQ_ENTRY_SIZE => self.mfq.drop_from(l.base()),
                _ => break,
            }
        }
        Ok(removed)
    }

    /// Move the min offset to the first entry whose message is still in the
    /// CommitLog (entries are sorted by CommitLog offset).
    pub fn correct_min_offset(&self, commitlog_min: u64) {
        let (mut lo, mut hi) = (self.min_offset(), self.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid) {
                Some(e) if e.is_filler() || (e.phys_offset as u64) < commitlog_min => lo = mid + 1,
                _ => hi = mid,
            }
        }
        self.min_logic.fetch_max(lo, Ordering::AcqRel);
    }

    /// Delete segments whose every entry points below `commitlog_min`; the
    /// last segment is always kept. Returns the number deleted.
    pub fn delete_expired(&self, commitlog_min: u64) -> usize {
        let files = self.mfq.snapshot();
        let mut n = 0;
        for f in files.iter().take(files.len().saturating_sub(1)) {
            let last_logic = ((f.base() + f.size()) / CQ_ENTRY_SIZE) as i64 - 1;
            let below = match self.entry(last_logic) {
                Some(e) => {
                    e.is_filler() || ((e.phys_offset + i64::from(e.size)) as u64) <= commitlog_min
                }
                None => false,
            };
            if !below {
                break;
            }
            f.destroy_now();
            n += 1;
        }
        if n > 0 {
            let first_remaining = files.get(n).map(|f| (f.base() / CQ_ENTRY_SIZE) as i64);
            if let Some(m) = first_remaining {
                self.min_logic.fetch_max(m, Ordering::AcqRel);
            }
            self.mfq.remove_first(n);
        }
        self.correct_min_offset(commitlog_min);
        n
    }

    pub fn flush(&self) -> Result<()> {
        for f in self.mfq.snapshot() {
            f.flush(f.wrote())?;
        }
        Ok(())
    }
}
