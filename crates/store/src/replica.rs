//! What a replication service needs from the store, and nothing about who
//! copies it: read CommitLog bytes from an offset as zero-copy slices (the
//! master side) and append CommitLog bytes copied from elsewhere at exactly
//! the end of this log (the replica side), after which the ordinary
//! dispatcher builds ConsumeQueues and the index from them.

use std::sync::atomic::Ordering;

use apogee_protocol::message::stored::{self, RecordHeader};
use bytes::Bytes;

use crate::commit_log::END_FILE_MIN_BLANK_LENGTH;
use crate::error::{StoreError, WriteRefused};
use crate::store::MessageStore;

/// What [`MessageStore::append_replicated`] took from its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAppend {
    /// Bytes of the input consumed: whole records (and any part of a BLANK
    /// filler). The rest is an incomplete record: offer it again with more.
    pub taken: usize,
    /// The CommitLog's end afterwards. It can be past `offset + taken`: a
    /// BLANK filler moves the log to its segment's end at once, and the
    /// filler's remaining bytes, when they arrive, are to be skipped.
    pub end: u64,
}

/// Why replicated bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaAppendError {
    /// The bytes are for another place in the log than its end.
    #[error(
        "replicated bytes are for CommitLog offset {got}, but this CommitLog ends at {expected}"
    )]
    OffsetMismatch { expected: u64, got: u64 },
    /// The bytes are not CommitLog records where records must start.
    #[error("replicated bytes at CommitLog offset {offset} are not a valid record: {reason}")]
    BadRecord { offset: u64, reason: String },
    /// The store takes no writes now (disk full, shut down, an earlier
    /// write failed).
    #[error(transparent)]
    Refused(#[from] WriteRefused),
    /// The store could not write them (I/O error).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MessageStore {
    /// Zero-copy view of up to `max` published CommitLog bytes starting at
    /// `offset`, never past the end of the segment holding it. None when
    /// nothing is published there (yet), or the segment was deleted.
    pub fn commit_log_data(&self, offset: u64, max: usize) -> Option<Bytes> {
        self.inner().commit_log.read_from(offset, max)
    }

    /// CommitLog segment size (`mappedFileSizeCommitLog`).
    pub fn commit_log_segment_size(&self) -> u64 {
        self.inner().commit_log.segment_size()
    }

    /// Makes the CommitLog take appends with pwrite (a replica: see
    /// `MappedFileQueue::set_pwrite_appends`); the warmer then stops, as
    /// there are no mapping faults left to take off the append path.
    /// SYNC_FLUSH stores already write that way.
    pub fn use_pwrite_appends(&self) {
        let segments = self.inner().commit_log.segments();
        if !segments.syscall_writes() {
            segments.set_pwrite_appends(true);
        }
    }

    /// Whether the CommitLog holds no segment at all (a new replica).
    pub fn commit_log_is_empty(&self) -> bool {
        self.inner().commit_log.segments().is_empty()
    }

    /// Append CommitLog bytes copied from a master. `offset` must be the end
    /// of this log, or any segment start when the log is empty. Only whole
    /// records are written (checked: header, size within the segment, and
    /// their PHYSICALOFFSET field equal to where they land); an incomplete
    /// record at the end of `data` is left for the caller to offer again
    /// with the bytes that follow it. The dispatcher then builds the
    /// ConsumeQueue and index entries as for local writes.
    pub fn append_replicated(
        &self,
        offset: u64,
        data: &[u8],
    ) -> Result<ReplicaAppend, ReplicaAppendError> {
        self.check_writable()?;
        let inner = self.inner();
        let cl = &inner.commit_log;
        let seg_size = cl.segment_size();
        let empty = self.commit_log_is_empty();
        let end = cl.max_offset();
        if empty {
            if !offset.is_multiple_of(seg_size) {
                return Err(ReplicaAppendError::BadRecord {
                    offset,
                    reason: format!(
                        "an empty replica can only start at a segment boundary \
                         (mappedFileSizeCommitLog {seg_size})"
                    ),
                });
            }
            // Nothing below `offset` will ever exist here.
            inner.dispatched.store(offset, Ordering::Release);
        } else if offset != end {
            return Err(ReplicaAppendError::OffsetMismatch {
                expected: end,
                got: offset,
            });
        }
        let mut pos = offset;
        let mut taken = 0usize;
        let mut new_end = if empty { offset } else { end };
        while taken < data.len() {
            let chunk = &data[taken..];
            let scan = scan_segment(pos, chunk, seg_size)?;
            if scan.len == 0 && !scan.blank {
                break;
            }
            new_end = match cl.append_replicated(pos, &chunk[..scan.len], scan.blank, scan.last_ts)
            {
                Ok(e) => e,
                Err(e) => {
                    if self.commit_log_is_empty() {
                        // Still empty: the next master may start elsewhere.
                        inner.dispatched.store(0, Ordering::Release);
                    }
                    return Err(e.into());
                }
            };
            taken += scan.len;
            pos += scan.len as u64;
            if scan.blank {
                // The rest of the filler (if any) is zeros already written.
                let filler_left = new_end - pos;
                let skip = (filler_left as usize).min(data.len() - taken);
                taken += skip;
                pos += skip as u64;
                if pos < new_end {
                    break;
                }
            } else if scan.len < chunk.len() && !scan.at_segment_end {
                // An incomplete record is left.
                break;
            }
        }
        if (new_end > end || empty) && inner.dispatcher_idle.take() {
            inner.wake_dispatcher();
        }
        Ok(ReplicaAppend {
            taken,
            end: new_end,
        })
    }
}

/// Whole records at the start of `data`, which begins at CommitLog offset
/// `pos`, within `pos`'s segment.
struct SegmentScan {
    /// Bytes of whole records (for a BLANK: its 8-byte header).
    len: usize,
    /// The scan ended with a BLANK header: the segment is complete.
    blank: bool,
    /// The records run exactly to the segment's end.
    at_segment_end: bool,
    /// Store time of the last message record (0 if none).
    last_ts: i64,
}

fn scan_segment(pos: u64, data: &[u8], seg_size: u64) -> Result<SegmentScan, ReplicaAppendError> {
    let base = pos / seg_size * seg_size;
    let mut rel = 0usize;
    let mut last_ts = 0i64;
    let bad = |at: usize, reason: String| ReplicaAppendError::BadRecord {
        offset: pos + at as u64,
        reason,
    };
    loop {
        let at = pos + rel as u64;
        let local = at - base;
        if local == seg_size {
            return Ok(SegmentScan {
                len: rel,
                blank: false,
                at_segment_end: true,
                last_ts,
            });
        }
        let rest = &data[rel..];
        if rest.len() < 8 {
            break;
        }
        match stored::peek_header(rest) {
            Ok(RecordHeader::Blank { total_size }) => {
                if local + total_size as u64 != seg_size {
                    return Err(bad(
                        rel,
                        format!(
                            "BLANK filler of {total_size} bytes does not end the segment \
                             ({} bytes left); is mappedFileSizeCommitLog ({seg_size}) the \
                             master's?",
                            seg_size - local
                        ),
                    ));
                }
                return Ok(SegmentScan {
                    len: rel + 8,
                    blank: true,
                    at_segment_end: true,
                    last_ts,
                });
            }
            Ok(RecordHeader::Message { total_size, .. }) => {
                if local + total_size as u64 + END_FILE_MIN_BLANK_LENGTH > seg_size {
                    return Err(bad(
                        rel,
                        format!(
                            "record of {total_size} bytes overruns the segment ({} bytes left)",
                            seg_size - local
                        ),
                    ));
                }
                if rest.len() < total_size {
                    break;
                }
                let rec = &rest[..total_size];
                let field = |p: usize, n: usize| rec.get(p..p + n);
                let phys = field(stored::PHYSICAL_OFFSET_POS, 8)
                    .and_then(|b| b.try_into().ok())
                    .map(i64::from_be_bytes);
                if phys != Some(at as i64) {
                    return Err(bad(
                        rel,
                        format!("its PHYSICALOFFSET field says {phys:?}, not {at}"),
                    ));
                }
                let sys_flag = field(stored::SYS_FLAG_POS, 4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_be_bytes)
                    .ok_or_else(|| bad(rel, "record too short for its SYSFLAG".into()))?;
                last_ts = field(stored::store_timestamp_pos(sys_flag), 8)
                    .and_then(|b| b.try_into().ok())
                    .map(i64::from_be_bytes)
                    .ok_or_else(|| bad(rel, "record too short for its STORETIMESTAMP".into()))?;
                rel += total_size;
            }
            Err(e) => return Err(bad(rel, e.to_string())),
        }
    }
    Ok(SegmentScan {
        len: rel,
        blank: false,
        at_segment_end: false,
        last_ts,
    })
}
