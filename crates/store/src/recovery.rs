//! Start-up recovery: find the valid end of the CommitLog by verifying every
//! record from the last safe point (checkpoint), truncate the CommitLog at
//! the first torn or corrupt record, drop ConsumeQueue and index entries
//! past the new end, and re-dispatch what the CommitLog has beyond them.
//! Work is proportional to the tail after the checkpoint, not the store.

use std::sync::atomic::Ordering;
use std::time::Instant;

use apogee_protocol::message::stored;

use crate::checkpoint::Checkpoint;
use crate::consume_queue::ConsumeQueue;
use crate::dispatch;
use crate::error::{Result, StoreError};
use crate::store::Inner;

/// Why the scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Zeros: the clean end of written data.
    Clean,
    /// A record that failed validation (torn write or corruption).
    Invalid(String),
    /// No more segments.
    NoSegment,
}

/// Verify records from `start` and return (valid end, store time of the last
/// valid record, why it stopped). With `torn_possible` (after a power loss)
/// a record must also end whole: BODYCRC covers only the body, so a record
/// whose last sectors never reached the disk (zeros, as our segments are
/// zero-filled when made) would otherwise pass with a cut topic or
/// properties.
pub(crate) fn scan(inner: &Inner, start: u64, torn_possible: bool) -> (u64, i64, ScanEnd) {
    let cl = &inner.commit_log;
    let size = cl.segment_size();
    let mut pos = start;
    let mut last_ts = 0i64;
    loop {
        let Some(seg) = cl.segment_at(pos) else {
            return (pos, last_ts, ScanEnd::NoSegment);
        };
        let local = pos - seg.base();
        if local + 8 > size {
            pos = seg.base() + size;
            continue;
        }
        let Some(head) = seg.read(local, 8) else {
            return (pos, last_ts, ScanEnd::Invalid("unreadable header".into()));
        };
        if head[..4] == [0, 0, 0, 0] {
            return (pos, last_ts, ScanEnd::Clean);
        }
        match stored::peek_header(head) {
            Ok(stored::RecordHeader::Blank { total_size }) => {
                if local + total_size as u64 == size {
                    pos = seg.base() + size;
                    continue;
                }
                return (
                    pos,
                    last_ts,
                    ScanEnd::Invalid(format!(
                        "BLANK of {total_size} bytes does not end the segment"
                    )),
                );
            }
            Ok(stored::RecordHeader::Message { total_size, .. }) => {
                let total = total_size as u64;
                if local + total + 8 > size {
                    return (
                        pos,
                        last_ts,
                        ScanEnd::Invalid(format!("record of {total} bytes overruns the segment")),
                    );
                }
                let Some(rec) = seg.read(local, total) else {
                    return (pos, last_ts, ScanEnd::Invalid("unreadable record".into()));
                };
                match stored::check_record(rec, true) {
                    Ok(info) if torn_possible && !ends_whole(&info) => {
                        return (
                            pos,
                            last_ts,
                            ScanEnd::Invalid("record ends in zeros (torn write)".into()),
                        );
                    }
                    Ok(info) if info.physical_offset as u64 == pos => {
                        last_ts = info.store_timestamp;
                        pos += total;
                    }
                    Ok(info) => {
                        return (
                            pos,
                            last_ts,
                            ScanEnd::Invalid(format!(
                                "PHYSICALOFFSET says {} (stale record)",
                                info.physical_offset
                            )),
                        );
                    }
                    Err(e) => return (pos, last_ts, ScanEnd::Invalid(e.to_string())),
                }
            }
            Err(e) => return (pos, last_ts, ScanEnd::Invalid(e.to_string())),
        }
    }
}

/// Whether the record's variable tail (topic, properties) ends in a real byte.
/// A property string ends with its separator (2) and a topic name never
/// holds NUL, so a trailing zero means the record was cut.
fn ends_whole(info: &stored::RecordInfo<'_>) -> bool {
    let last_nonzero = |b: &[u8]| b.last().is_none_or(|c| *c != 0);
    !info.topic.is_empty()
        && last_nonzero(info.topic.as_bytes())
        && last_nonzero(info.properties.as_bytes())
}

/// Load every ConsumeQueue directory into the table.
fn load_consume_queues(inner: &Inner) -> Result<()> {
    let root = inner.cfg.consumequeue_dir();
    crate::mapped_file_queue::create_dir_durable(&*inner.vfs, &root)?;
    let topics = inner
        .vfs
        .list_dir(&root)
        .map_err(|e| StoreError::io("list directory", &root, e))?;
    let mut queues = Vec::new();
    for t in topics {
        let Some(topic) = t.name.to_str().map(str::to_owned) else {
            continue;
        };
        if !t.is_dir {
            continue;
        }
        let dir = root.join(&topic);
        let listed = inner
            .vfs
            .list_dir(&dir)
            .map_err(|e| StoreError::io("list directory", &dir, e))?;
        for q in listed {
            if let Some(qid) = q.name.to_str().and_then(|s| s.parse::<i32>().ok()) {
                queues.push((topic.clone(), qid));
            }
        }
    }
    // Loading is a few syscalls per queue, and a broker may have 100,000s:
    // spread it over a few threads (outside the table's lock).
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4)
        .min(queues.len().div_ceil(1000).max(1));
    let chunk = queues.len().div_ceil(threads).max(1);
    let loaded: Vec<Result<Vec<ConsumeQueue>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = queues
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(topic, qid)| inner.load_cq(topic, *qid))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(StoreError::Corrupt {
                        path: root.clone(),
                        reason: "a ConsumeQueue loader thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    for part in loaded {
        for cq in part? {
            inner.insert_cq(cq);
        }
    }
    Ok(())
}

/// Run recovery. `crashed` is true when the abort marker was present;
/// `power_lost` when it came from another boot (writes never synced may be
/// missing or torn, not just unflushed).
pub(crate) fn recover(
    inner: &Inner,
    cp: Option<Checkpoint>,
    crashed: bool,
    power_lost: bool,
) -> Result<()> {
    let t0 = Instant::now();
    let cl = &inner.commit_log;
    let min = cl.min_offset();
    let seg_size = cl.segment_size();
    let files_end = cl
        .segments()
        .last()
        .map(|f| f.base() + seg_size)
        .unwrap_or(min);
    load_consume_queues(inner)?;

    // Safe point: everything below it was flushed and its ConsumeQueue and
    // index entries too. Without a readable checkpoint, scan everything.
    let (start, redispatch_from) = match cp {
        Some(cp) => {
            let s = cp
                .commitlog_flushed_offset
                .min(cp.dispatched_flushed_offset)
                .clamp(min, files_end);
            (s, cp.dispatched_flushed_offset.clamp(min, files_end))
        }
        None => (min, min),
    };
    if crashed {
        tracing::warn!(
            from = start,
            "store was not shut down cleanly: recovering from the checkpoint"
        );
    }
    let (mut end, mut last_ts, mut why) = scan(inner, start, power_lost);
    if start > min && end == start && matches!(why, ScanEnd::Invalid(_)) && cp.is_some() {
        // The safe point itself is not a valid record: the checkpoint does
        // not match the files. Fall back to a full scan.
        tracing::warn!(
            start,
            "checkpoint does not point at a valid record; scanning the whole CommitLog"
        );
        (end, last_ts, why) = scan(inner, min, power_lost);
    }
    if let ScanEnd::Invalid(reason) = &why {
        tracing::warn!(offset = end, reason = %reason, "truncating CommitLog at the first invalid record");
    }
    cl.set_recovered(end, Default::default(), last_ts)?;

    // ConsumeQueues and index: drop entries past the new end.
    let mut cq_removed = 0usize;
    for cq in inner.all_cqs() {
        cq_removed += cq.truncate_past(end)?;
    }
    // After a power loss the index may hold any mix of pages past the
    // dispatch safe point: rebuild it up to that point; re-dispatch below
    // adds the rest. A killed process left it whole: cut its tail.
    let idx_removed = match &inner.index {
        Some(i) if power_lost => i.repair_after_crash(redispatch_from.min(end))?,
        Some(i) => i.truncate_past(end)?,
        None => 0,
    };

    // Re-dispatch from the dispatch safe point (idempotent for entries
    // already there).
    let from = redispatch_from.min(end);
    inner.dispatched.store(from, Ordering::Release);
    dispatch::dispatch_all_here(inner, false)?;
    inner.dispatched.store(
        end.max(inner.dispatched.load(Ordering::Acquire)),
        Ordering::Release,
    );

    // Queue offsets for the append path come from the ConsumeQueues.
    let mut table = crate::commit_log::QueueOffsets::default();
    let cl_min = cl.min_offset();
    for cq in inner.all_cqs() {
        cq.correct_min_offset(cl_min);
        table.set(cq.topic(), cq.queue_id(), cq.max_offset());
    }
    cl.set_queue_offsets(table);
    tracing::info!(
        crashed,
        power_lost,
        scanned_from = start,
        end,
        redispatched_from = from,
        cq_entries_removed = cq_removed,
        index_entries_removed = idx_removed,
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "store recovery done"
    );
    Ok(())
}
