//! `CommitLog`: the single ordered log of every stored record, in fixed-size
//! segments under `commitlog/`. Owns the append path (one short lock for
//! offset assignment + memcpy), queue-offset assignment, the flushed
//! watermark and zero-copy reads.

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use apogee_protocol::message::stored::{self, patch_stored, BLANK_MAGIC_CODE};
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;

use crate::error::{PutError, Result, StoreError};
use crate::mapped_file::MappedFile;
use crate::mapped_file_queue::MappedFileQueue;
use crate::vfs::VfsRef;

/// Next queue offset of every (topic, queue), looked up under the append
/// lock for every message: one flat table (not a table per topic, which
/// costs a second cache miss per message over 100,000s of topics), hashed
/// with foldhash and searched by borrowed `(&str, i32)` keys. Each queue
/// also gets a number, never reused by this log, that the append hands to
/// the dispatcher ([`DispatchHint`]) so it can find the queue's
/// ConsumeQueue without a table lookup of its own.
#[derive(Default)]
pub(crate) struct QueueOffsets {
    map: hashbrown::HashMap<QueueKey, QueueSlot, foldhash::fast::RandomState>,
}

struct QueueSlot {
    next: i64,
    /// [`NO_QUEUE_NUMBER`] until the append path first uses the slot.
    number: u32,
}

/// A queue without a number (slots made by recovery, numbers run out).
pub(crate) const NO_QUEUE_NUMBER: u32 = u32::MAX;

#[derive(PartialEq, Eq)]
struct QueueKey {
    /// Inline up to 24 bytes: comparing a key then reads no other line.
    topic: compact_str::CompactString,
    queue: i32,
}

impl std::hash::Hash for QueueKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        QueueRef(&self.topic, self.queue).hash(h);
    }
}

impl From<&QueueRef<'_>> for QueueKey {
    fn from(r: &QueueRef<'_>) -> QueueKey {
        QueueKey {
            topic: compact_str::CompactString::from(r.0),
            queue: r.1,
        }
    }
}

/// A borrowed [`QueueKey`]; hashes alike.
#[derive(Hash)]
struct QueueRef<'a>(&'a str, i32);

impl hashbrown::Equivalent<QueueKey> for QueueRef<'_> {
    fn equivalent(&self, k: &QueueKey) -> bool {
        k.queue == self.1 && &*k.topic == self.0
    }
}

impl QueueOffsets {
    /// The next offset of (topic, queue), if it has one.
    pub(crate) fn get(&self, topic: &str, queue: i32) -> Option<i64> {
        self.map.get(&QueueRef(topic, queue)).map(|s| s.next)
    }

    /// The slot of (topic, queue), created at 0 (the key is built only then).
    fn slot(&mut self, topic: &str, queue: i32) -> &mut QueueSlot {
        self.map
            .entry_ref(&QueueRef(topic, queue))
            .or_insert(QueueSlot {
                next: 0,
                number: NO_QUEUE_NUMBER,
            })
    }

    pub(crate) fn set(&mut self, topic: &str, queue: i32, next: i64) {
        self.slot(topic, queue).next = next;
    }

    /// Forget every queue of `topic`.
    pub(crate) fn remove_topic(&mut self, topic: &str) {
        self.map.retain(|k, _| &*k.topic != topic);
    }
}

/// Told by the append path to the dispatcher: the records in `[start, end)`
/// of the log belong to the queue numbered `number`. Only a hint: the
/// dispatcher checks the queue it finds against each record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DispatchHint {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) number: u32,
}

/// Hints kept for the dispatcher; when it lags further behind, appends stop
/// leaving hints and it looks the queues up itself.
const DISPATCH_HINTS: usize = 16 * 1024;

/// Bytes always left free at a segment's end for the BLANK marker.
pub const END_FILE_MIN_BLANK_LENGTH: u64 = 8;

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// CommitLog offset of the first record.
    pub phys_offset: u64,
    /// Bytes of the records (excluding any BLANK filler).
    pub wrote_bytes: usize,
    /// Queue offset of the first record (0 for non-dispatchable records).
    pub queue_offset: i64,
    pub store_timestamp: i64,
    pub count: usize,
}

impl AppendResult {
    /// CommitLog offset just past the last record.
    pub fn end_offset(&self) -> u64 {
        self.phys_offset + self.wrote_bytes as u64
    }
}

struct AppendState {
    current: Option<Arc<MappedFile>>,
    /// Next queue offset of every (topic, queue).
    queue_offsets: QueueOffsets,
    /// The number the next queue gets (see [`QueueOffsets`]).
    next_queue_number: u32,
}

pub struct CommitLog {
    mfq: MappedFileQueue,
    append: Mutex<AppendState>,
    /// Published end of the log: readers and the dispatcher stop here.
    max_offset: AtomicU64,
    /// Everything below this is on disk.
    flushed: AtomicU64,
    last_store_ts: AtomicI64,
    flushed_store_ts: AtomicI64,
    flush_count: AtomicU64,
    /// Filled under the append lock (so in log order), emptied by the dispatcher.
    hints: ArrayQueue<DispatchHint>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl CommitLog {
    pub fn load(vfs: &VfsRef, dir: &Path, segment_size: u64) -> Result<CommitLog> {
        let mfq = MappedFileQueue::load(vfs, dir, segment_size)?;
        let end = mfq.max_offset();
        Ok(CommitLog {
            mfq,
            append: Mutex::new(AppendState {
                current: None,
                queue_offsets: QueueOffsets::default(),
                next_queue_number: 0,
            }),
            max_offset: AtomicU64::new(end),
            flushed: AtomicU64::new(end),
            last_store_ts: AtomicI64::new(0),
            flushed_store_ts: AtomicI64::new(0),
            flush_count: AtomicU64::new(0),
            hints: ArrayQueue::new(DISPATCH_HINTS),
        })
    }

    /// The oldest hint not yet taken by the dispatcher.
    pub(crate) fn pop_hint(&self) -> Option<DispatchHint> {
        self.hints.pop()
    }

    pub fn segments(&self) -> &MappedFileQueue {
        &self.mfq
    }
    pub fn segment_size(&self) -> u64 {
        self.mfq.file_size()
    }
    /// End of the published log.
    pub fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }
    /// First offset still on disk.
    pub fn min_offset(&self) -> u64 {
        match self.mfq.first() {
            Some(f) => f.base(),
            None => self.max_offset(),
        }
    }
    pub fn flushed_offset(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }
    pub fn flushed_atomic(&self) -> &AtomicU64 {
        &self.flushed
    }
    /// Store timestamp of the newest record known to be flushed.
    pub fn flushed_store_ts(&self) -> i64 {
        self.flushed_store_ts.load(Ordering::Acquire)
    }

    /// Called by recovery once the valid end is known: truncate everything
    /// past `end`, set positions, and install the queue-offset table.
    pub(crate) fn set_recovered(
        &self,
        end: u64,
        queue_offsets: QueueOffsets,
        last_ts: i64,
    ) -> Result<()> {
        self.mfq
            .drop_from(end.div_ceil(self.segment_size()) * self.segment_size());
        let files = self.mfq.snapshot();
        let mut current = None;
        for f in &files {
            if f.base() + f.size() <= end {
                f.set_wrote(f.size());
                f.set_flushed(f.size());
            } else {
                let local = end.saturating_sub(f.base());
                f.zero_from(local)?;
                f.set_wrote(local);
                f.set_flushed(local);
            }
            current = Some(f.clone());
        }
        // `end` may sit exactly on a segment boundary after a BLANK: the next
        // append rolls to a new segment.
        self.max_offset.store(end, Ordering::Release);
        self.flushed.store(end, Ordering::Release);
        self.last_store_ts.store(last_ts, Ordering::Release);
        self.flushed_store_ts.store(last_ts, Ordering::Release);
        let mut st = self.append.lock();
        st.current = current;
        st.queue_offsets = queue_offsets;
        Ok(())
    }

    /// Make sure the segment the next append goes to exists. SYNC_FLUSH
    /// calls it at open, because its segments are created by writing zeros
    /// through them, which should not delay the first append.
    pub fn prepare_current(&self) -> Result<()> {
        let mut st = self.append.lock();
        if st.current.is_some() {
            return Ok(());
        }
        let seg_size = self.segment_size();
        let base = self.max_offset() / seg_size * seg_size;
        let s = match self.mfq.last() {
            Some(l) if l.base() == base => l,
            _ => self.mfq.create(base)?,
        };
        st.current = Some(s);
        Ok(())
    }

    /// Install the queue-offset table (after recovery).
    pub(crate) fn set_queue_offsets(&self, table: QueueOffsets) {
        self.append.lock().queue_offsets = table;
    }

    /// Run `f` with appends blocked, giving it the queue-offset table (topic
    /// deletion removes entries and must see no append meanwhile). `f` must
    /// be short: every put waits for it.
    pub(crate) fn with_append_lock<R>(&self, f: impl FnOnce(&mut QueueOffsets) -> R) -> R {
        f(&mut self.append.lock().queue_offsets)
    }

    /// Wait for in-flight appends to finish (shutdown barrier).
    pub fn barrier(&self) {
        drop(self.append.lock());
    }

    /// Next queue offset the append path will assign for (topic, queue).
    pub fn queue_offset(&self, topic: &str, queue_id: i32) -> i64 {
        self.append
            .lock()
            .queue_offsets
            .get(topic, queue_id)
            .unwrap_or(0)
    }

    /// Append the `count` encoded records in `buf` (one client send: same
    /// topic and queue) as one contiguous run. Offsets and the store
    /// timestamp are patched into `buf` first, so one memcpy does the write.
    pub fn append(
        &self,
        topic: &str,
        queue_id: i32,
        dispatchable: bool,
        buf: &mut [u8],
        count: usize,
    ) -> Result<AppendResult, PutError> {
        let total = buf.len() as u64;
        let seg_size = self.segment_size();
        if total + END_FILE_MIN_BLANK_LENGTH > seg_size {
            return Err(PutError::DoesNotFitSegment {
                size: buf.len(),
                segment: seg_size,
            });
        }
        check_records(buf, count)?;
        let mut guard = self.append.lock();
        let st = &mut *guard;
        // One lookup of the queue's slot (under the lock, where a miss in a
        // table of 100,000s of queues costs every other appender too). A
        // new slot starts at 0, so creating it before a failed write changes
        // nothing.
        let slot = if dispatchable {
            let slot = st.queue_offsets.slot(topic, queue_id);
            if slot.number == NO_QUEUE_NUMBER && st.next_queue_number != NO_QUEUE_NUMBER {
                slot.number = st.next_queue_number;
                st.next_queue_number += 1;
            }
            Some(slot)
        } else {
            None
        };
        let mut seg = match &st.current {
            Some(s) => s.clone(),
            None => {
                let base = self.max_offset() / seg_size * seg_size;
                let s = match self.mfq.last() {
                    Some(l) if l.base() == base => l,
                    _ => self.mfq.create(base)?,
                };
                st.current = Some(s.clone());
                s
            }
        };
        let mut pos = seg.wrote();
        if pos + total + END_FILE_MIN_BLANK_LENGTH > seg_size {
            let left = seg_size - pos;
            if left >= 8 {
                let mut blank = [0u8; 8];
                blank[..4].copy_from_slice(&(left as i32).to_be_bytes());
                blank[4..].copy_from_slice(&BLANK_MAGIC_CODE.to_be_bytes());
                seg.write_at(pos, &blank)?;
            }
            seg.set_wrote(seg_size);
            // Creating the file is I/O under the lock, but once per segment.
            seg = self.mfq.create(seg.base() + seg_size)?;
            st.current = Some(seg.clone());
            pos = 0;
            self.max_offset.store(seg.base(), Ordering::Release);
        }
        let phys = seg.base() + pos;
        let ts = now_ms().max(self.last_store_ts.load(Ordering::Relaxed));
        // Taken only once the bytes are written: a failed write must not
        // leave a hole in the queue.
        let queue_offset = slot.as_deref().map_or(0, |s| s.next);
        // Patch every record: physical offset, queue offset, store timestamp.
        // The layout was validated before taking the lock, so this cannot fail
        // half-way.
        let mut rel = 0usize;
        let mut i = 0i64;
        while rel < buf.len() {
            let size = stored::peek_total_size(&buf[rel..]).unwrap_or(buf.len() - rel);
            let end = (rel + size).min(buf.len());
            let qo = if dispatchable { queue_offset + i } else { 0 };
            patch_stored(&mut buf[rel..end], qo, (phys + rel as u64) as i64, ts)
                .map_err(|e| PutError::Encode(e.to_string()))?;
            rel = end;
            i += 1;
        }
        seg.write_at(pos, buf)?;
        if let Some(slot) = slot {
            slot.next = queue_offset + count as i64;
            if slot.number != NO_QUEUE_NUMBER {
                // Full: the dispatcher is far behind and finds this queue
                // by name; nothing is lost but the shortcut.
                let _ = self.hints.push(DispatchHint {
                    start: phys,
                    end: phys + total,
                    number: slot.number,
                });
            }
        }
        seg.set_wrote(pos + total);
        self.last_store_ts.store(ts, Ordering::Relaxed);
        self.max_offset.store(phys + total, Ordering::Release);
        drop(guard);
        Ok(AppendResult {
            phys_offset: phys,
            wrote_bytes: buf.len(),
            queue_offset,
            store_timestamp: ts,
            count,
        })
    }

    /// Flush everything written so far; returns the new flushed offset.
    pub fn flush(&self) -> Result<u64> {
        let target = self.max_offset();
        let ts = self.last_store_ts.load(Ordering::Acquire);
        if target > self.flushed_offset() {
            self.mfq.flush(target)?;
            self.flushed.fetch_max(target, Ordering::AcqRel);
            self.flush_count.fetch_add(1, Ordering::Relaxed);
        }
        self.flushed_store_ts.fetch_max(ts, Ordering::AcqRel);
        Ok(self.flushed_offset())
    }

    pub fn flush_count(&self) -> u64 {
        self.flush_count.load(Ordering::Relaxed)
    }

    /// Bytes not yet flushed.
    pub fn dirty_bytes(&self) -> u64 {
        self.max_offset().saturating_sub(self.flushed_offset())
    }

    /// Zero-copy view of `size` published bytes at `phys`.
    pub fn read(&self, phys: u64, size: usize) -> Option<Bytes> {
        let seg = self.mfq.find(phys)?;
        let local = phys - seg.base();
        if local + size as u64 > seg.wrote() {
            return None;
        }
        Some(
            seg.shared_bytes()
                .slice(local as usize..local as usize + size),
        )
    }

    /// Zero-copy view of the published bytes from `phys` to the end of its
    /// segment's data, at most `max` of them (a replication batch). None when
    /// nothing is published at `phys` yet (or its segment is gone).
    pub fn read_from(&self, phys: u64, max: usize) -> Option<Bytes> {
        let seg = self.mfq.find(phys)?;
        let local = phys - seg.base();
        let end = seg.base() + seg.wrote();
        let avail = end.checked_sub(phys).filter(|a| *a > 0)?;
        let size = avail.min(max as u64) as usize;
        Some(
            seg.shared_bytes()
                .slice(local as usize..local as usize + size),
        )
    }

    /// Append bytes copied from a master at exactly `offset`, which must be
    /// the end of this log (or, in an empty log, the start of a segment).
    /// The caller has checked that `data` holds whole records within one
    /// segment; record fields are kept as the master wrote them. With
    /// `fill_segment`, `data` ends with the header of a BLANK filler and the
    /// log moves on to the segment's end. `last_ts` is the store time of the
    /// last record. Returns the new end of the log.
    pub fn append_replicated(
        &self,
        offset: u64,
        data: &[u8],
        fill_segment: bool,
        last_ts: i64,
    ) -> Result<u64> {
        let seg_size = self.segment_size();
        let base = offset / seg_size * seg_size;
        let local = offset - base;
        if data.is_empty() || local + data.len() as u64 > seg_size {
            return Err(StoreError::IllegalRecord(format!(
                "{} replicated bytes at {offset} do not fit in one segment",
                data.len()
            )));
        }
        let mut st = self.append.lock();
        let end = self.max_offset();
        let empty = self.mfq.is_empty();
        if offset != end && !(empty && local == 0) {
            return Err(StoreError::IllegalRecord(format!(
                "replicated bytes start at {offset}, the CommitLog ends at {end}"
            )));
        }
        let seg = match &st.current {
            Some(s) if s.base() == base => s.clone(),
            _ => {
                let s = match self.mfq.last() {
                    Some(l) if l.base() == base => l,
                    _ => self.mfq.create(base)?,
                };
                st.current = Some(s.clone());
                s
            }
        };
        seg.write_at(local, data)?;
        // A BLANK filler: the rest of the segment is zeros already (segments
        // are created zero-filled), so only its header is written.
        let wrote = if fill_segment {
            seg_size
        } else {
            local + data.len() as u64
        };
        let new_end = base + wrote;
        seg.set_wrote(wrote);
        if last_ts > 0 {
            self.last_store_ts.store(last_ts, Ordering::Relaxed);
        }
        if empty {
            // A new replica starting at the master's current segment.
            self.flushed.store(offset, Ordering::Release);
        }
        self.max_offset.store(new_end, Ordering::Release);
        drop(st);
        Ok(new_end)
    }

    /// The published record at `phys`, length taken from its TOTALSIZE.
    pub fn read_record(&self, phys: u64) -> Option<Bytes> {
        let seg = self.mfq.find(phys)?;
        let local = phys - seg.base();
        let head = seg.read_visible(local, 4)?;
        let size = stored::peek_total_size(head)?;
        self.read(phys, size)
    }

    /// Borrow published bytes `[phys, phys+len)` within one segment (the
    /// returned `Arc` keeps the mapping alive).
    pub fn segment_at(&self, phys: u64) -> Option<Arc<MappedFile>> {
        self.mfq.find(phys)
    }

    /// Store timestamp of the record at `phys` (None if not readable).
    pub fn store_timestamp_at(&self, phys: u64, size: usize) -> Option<i64> {
        let seg = self.mfq.find(phys)?;
        let local = phys - seg.base();
        let rec = seg.read_visible(local, size as u64)?;
        let sys_flag = i32::from_be_bytes(rec.get(36..40)?.try_into().ok()?);
        let p = stored::store_timestamp_pos(sys_flag);
        Some(i64::from_be_bytes(rec.get(p..p + 8)?.try_into().ok()?))
    }
}

/// Check that `buf` holds exactly `count` records whose headers can be patched.
fn check_records(buf: &[u8], count: usize) -> Result<(), PutError> {
    let mut rel = 0usize;
    let mut n = 0usize;
    while rel < buf.len() {
        let rec = &buf[rel..];
        let size = stored::peek_total_size(rec)
            .filter(|s| *s <= rec.len())
            .ok_or_else(|| PutError::IllegalMessage("encoded record has a bad TOTALSIZE".into()))?;
        let sys_flag = rec
            .get(stored::SYS_FLAG_POS..stored::SYS_FLAG_POS + 4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_be_bytes)
            .ok_or_else(|| PutError::IllegalMessage("encoded record too short".into()))?;
        if stored::body_len_pos(sys_flag) > size {
            return Err(PutError::IllegalMessage("encoded record too short".into()));
        }
        rel += size;
        n += 1;
    }
    if n != count || n == 0 {
        return Err(PutError::IllegalMessage(format!(
            "batch holds {n} records, expected {count}"
        )));
    }
    Ok(())
}
