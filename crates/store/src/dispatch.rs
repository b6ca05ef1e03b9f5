//! The dispatcher ("reput"): reads the CommitLog from the dispatched offset
//! to its published end and builds ConsumeQueue and index entries, then tells
//! the arriving-message listener. The CommitLog stays the only source of
//! truth: everything here can be rebuilt from it.

use std::borrow::Cow;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::message::{stored, sysflag, tags};

use crate::commit_log::DispatchHint;
use crate::consume_queue::ConsumeQueue;
use crate::error::{Result, StoreError};
use crate::mapped_file::MappedFile;
use crate::store::Inner;

/// Told about every message as soon as its ConsumeQueue entry exists
/// (RocketMQ `MessageArrivingListener`); the broker wakes long-polling pulls
/// here. Called on the dispatcher thread: keep it short and non-blocking.
pub trait MessageArrivingListener: Send + Sync {
    fn arriving(
        &self,
        topic: &str,
        queue_id: i32,
        logic_offset: i64,
        tags_code: i64,
        store_timestamp: i64,
    );

    /// Like [`MessageArrivingListener::arriving`], with the message's stored
    /// properties string (for property filters). The dispatcher calls this
    /// one; the default forwards to `arriving`.
    #[allow(clippy::too_many_arguments)]
    fn arriving_with_properties(
        &self,
        topic: &str,
        queue_id: i32,
        logic_offset: i64,
        tags_code: i64,
        store_timestamp: i64,
        _properties: &[u8],
    ) {
        self.arriving(topic, queue_id, logic_offset, tags_code, store_timestamp)
    }
}

impl<F> MessageArrivingListener for F
where
    F: Fn(&str, i32, i64, i64, i64) + Send + Sync,
{
    fn arriving(
        &self,
        topic: &str,
        queue_id: i32,
        logic_offset: i64,
        tags_code: i64,
        store_timestamp: i64,
    ) {
        self(topic, queue_id, logic_offset, tags_code, store_timestamp)
    }
}

/// How long the dispatcher sleeps after a pass that found work before it
/// looks again (RocketMQ's reput service sleeps 1 ms). Appenders do not wake
/// it meanwhile, so under load a message waits at most this long (plus one
/// pass) for its ConsumeQueue entry, and one wake-up serves many messages.
const BUSY_NAP: Duration = Duration::from_micros(500);

/// After a failed pass (typically a ConsumeQueue file that cannot be
/// created on a full disk) the dispatcher retries after this long, doubling
/// up to [`RETRY_MAX`]; retention wakes it as soon as it frees space.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Wake-up handshake between appenders and a background thread that sleeps
/// between passes: the thread advertises `idle` only before it parks after
/// a pass that found nothing; appenders unpark it only then, so a loaded
/// store pays no futex wake per message while an idle one still reacts at
/// once.
#[derive(Default)]
pub(crate) struct IdleFlag(AtomicBool);

impl IdleFlag {
    /// Thread side: announce that it is about to park. The caller must look
    /// for work once more afterwards (an appender may have published just
    /// before seeing the flag).
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Thread side: running again.
    pub(crate) fn clear(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    /// Appender side, after publishing work: true if the thread must be
    /// unparked (exactly one caller gets true per idle period).
    pub(crate) fn take(&self) -> bool {
        fence(Ordering::SeqCst);
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::AcqRel)
    }
}

/// Per-thread lookups the dispatcher keeps between records: the CommitLog
/// segment being read and recently used ConsumeQueues (profiles showed the
/// table lookup per record).
#[derive(Default)]
pub(crate) struct DispatchCache {
    segment: Option<Arc<MappedFile>>,
    queues: Vec<Option<Arc<ConsumeQueue>>>,
    /// Queues by the number the append path gave them (`DispatchHint`).
    numbered: Vec<Option<Arc<ConsumeQueue>>>,
    /// The append path's hint for the records at and after the current one.
    hint: Option<DispatchHint>,
    /// `Inner::cq_generation` the cached queues belong to.
    generation: u64,
}

const CQ_CACHE_SLOTS: usize = 64;

/// Queues remembered by number: 8 bytes each, at most 128 MiB.
const NUMBERED_MAX: usize = 16 << 20;

impl DispatchCache {
    fn segment(&mut self, inner: &Inner, pos: u64) -> Option<Arc<MappedFile>> {
        if let Some(s) = &self.segment {
            if pos >= s.base() && pos < s.base() + s.size() && !s.is_deleted() {
                return Some(s.clone());
            }
        }
        self.segment = inner.commit_log.segment_at(pos);
        self.segment.clone()
    }

    /// The number the append path gave the queue of the record at `pos`,
    /// if it left a hint for it.
    fn hinted_number(&mut self, inner: &Inner, pos: u64) -> Option<u32> {
        loop {
            match self.hint {
                Some(h) if pos < h.start => return None,
                Some(h) if pos < h.end => return Some(h.number),
                _ => self.hint = Some(inner.commit_log.pop_hint()?),
            }
        }
    }

    /// The ConsumeQueue of the record at `pos`: found through the append
    /// path's hint when it left one (with 100,000s of queues a table lookup
    /// per record is several cache misses), else by name.
    fn queue(
        &mut self,
        inner: &Inner,
        pos: u64,
        topic: &[u8],
        queue_id: i32,
    ) -> Result<Arc<ConsumeQueue>> {
        if self.queues.is_empty() {
            self.queues.resize(CQ_CACHE_SLOTS, None);
        }
        // Checked per lookup, not per pass: a pass that began before a topic
        // was deleted may go on to records appended after it, and those must
        // go to a fresh queue, never into the deleted one. One load of a
        // rarely written word.
        let generation = inner.cq_generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.queues.iter_mut().for_each(|s| *s = None);
            self.numbered.clear();
            self.generation = generation;
        }
        let number = self
            .hinted_number(inner, pos)
            .map(|n| n as usize)
            .filter(|n| *n < NUMBERED_MAX);
        if let Some(n) = number {
            // Checked against the record: a hint left before the log was
            // cut back may describe other records now at these offsets.
            if let Some(Some(cq)) = self.numbered.get(n) {
                if cq.queue_id() == queue_id && cq.topic().as_bytes() == topic {
                    return Ok(cq.clone());
                }
            }
        }
        let cq = self.queue_by_name(inner, topic, queue_id)?;
        if let Some(n) = number {
            if self.numbered.len() <= n {
                self.numbered.resize(n + 1, None);
            }
            self.numbered[n] = Some(cq.clone());
        }
        Ok(cq)
    }

    fn queue_by_name(
        &mut self,
        inner: &Inner,
        topic: &[u8],
        queue_id: i32,
    ) -> Result<Arc<ConsumeQueue>> {
        // FNV-1a over the topic, mixed with the queue id: a direct-mapped slot.
        let mut h: u32 = 0x811c_9dc5;
        for b in topic {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
        let slot = (h.wrapping_add(queue_id as u32) as usize) % CQ_CACHE_SLOTS;
        if let Some(Some(cq)) = self.queues.get(slot) {
            if cq.queue_id() == queue_id && cq.topic().as_bytes() == topic {
                return Ok(cq.clone());
            }
        }
        let topic = std::str::from_utf8(topic)
            .map_err(|_| StoreError::IllegalRecord("TOPIC is not valid UTF-8".into()))?;
        let cq = inner.find_or_create_cq(topic, queue_id)?;
        if let Some(s) = self.queues.get_mut(slot) {
            *s = Some(cq.clone());
        }
        Ok(cq)
    }
}

/// The fields dispatching needs, borrowed from one stored record.
struct Record<'a> {
    queue_id: i32,
    queue_offset: i64,
    sys_flag: i32,
    store_timestamp: i64,
    topic: &'a [u8],
    properties: &'a [u8],
}

fn be_i32(b: &[u8], p: usize) -> Option<i32> {
    Some(i32::from_be_bytes(
        b.get(p..p.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn be_i64(b: &[u8], p: usize) -> Option<i64> {
    Some(i64::from_be_bytes(
        b.get(p..p.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Reads only what dispatching needs from a record of `rec.len()` bytes (its
/// TOTALSIZE), checking every length against it. The append path wrote and
/// validated the record and recovery verifies its CRC, so the body is not
/// looked at here.
fn parse(rec: &[u8], version: stored::MessageVersion) -> std::result::Result<Record<'_>, String> {
    let short = || format!("record of {} bytes is too short for its fields", rec.len());
    let sys_flag = be_i32(rec, stored::SYS_FLAG_POS).ok_or_else(short)?;
    let queue_id = be_i32(rec, stored::QUEUE_ID_POS).ok_or_else(short)?;
    let queue_offset = be_i64(rec, stored::QUEUE_OFFSET_POS).ok_or_else(short)?;
    let store_timestamp = be_i64(rec, stored::store_timestamp_pos(sys_flag)).ok_or_else(short)?;
    let body_len_pos = stored::body_len_pos(sys_flag);
    let body_len = be_i32(rec, body_len_pos).ok_or_else(short)?;
    let body_len = usize::try_from(body_len).map_err(|_| format!("BODY length {body_len}"))?;
    let mut p = (body_len_pos + 4).checked_add(body_len).ok_or_else(short)?;
    let topic_len = match version {
        stored::MessageVersion::V1 => usize::from(*rec.get(p).ok_or_else(short)?),
        stored::MessageVersion::V2 => {
            let b = rec.get(p..p + 2).ok_or_else(short)?;
            usize::try_from(i16::from_be_bytes([b[0], b[1]]))
                .map_err(|_| "negative TOPIC length".to_string())?
        }
    };
    p += version.topic_len_size();
    let topic = rec.get(p..p + topic_len).ok_or_else(short)?;
    p += topic_len;
    let props_len = rec
        .get(p..p + 2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(short)?;
    let props_len =
        usize::try_from(props_len).map_err(|_| "negative PROPERTIES length".to_string())?;
    p += 2;
    let properties = rec.get(p..p + props_len).ok_or_else(short)?;
    if p + props_len != rec.len() {
        return Err(format!(
            "fields end at byte {} but TOTALSIZE is {}",
            p + props_len,
            rec.len()
        ));
    }
    Ok(Record {
        queue_id,
        queue_offset,
        sys_flag,
        store_timestamp,
        topic,
        properties,
    })
}

/// TAGS, KEYS and UNIQ_KEY of a properties string, found in one pass without
/// allocating. Same rules as `properties::get`: pairs split on U+0002, name
/// and value at the first U+0001, empty names or values skipped, the last
/// occurrence wins. Both separators are ASCII, so splitting the bytes is
/// splitting the UTF-8 text.
#[derive(Default)]
struct Wanted<'a> {
    tags: Option<&'a [u8]>,
    keys: Option<&'a [u8]>,
    uniq: Option<&'a [u8]>,
}

fn scan_properties(props: &[u8]) -> Wanted<'_> {
    let mut w = Wanted::default();
    for pair in props.split(|b| *b == 2) {
        let Some(i) = pair.iter().position(|b| *b == 1) else {
            continue;
        };
        let (name, value) = (&pair[..i], &pair[i + 1..]);
        if value.is_empty() {
            continue;
        }
        match name {
            b"TAGS" => w.tags = Some(value),
            b"KEYS" => w.keys = Some(value),
            b"UNIQ_KEY" => w.uniq = Some(value),
            _ => {}
        }
    }
    w
}

/// Property bytes as text; invalid UTF-8 is repaired as the full decoder
/// does (only then does this allocate).
fn text(v: Option<&[u8]>) -> Option<Cow<'_, str>> {
    v.map(String::from_utf8_lossy)
}

/// What dispatching one position produced.
enum Step {
    /// Nothing published at this position yet.
    End,
    /// Moved to `next`.
    Next(u64),
}

/// Dispatch the record at `pos` (which must be published). Returns where the
/// next record starts.
fn dispatch_at(
    inner: &Inner,
    cache: &mut DispatchCache,
    pos: u64,
    listener: Option<&dyn MessageArrivingListener>,
    last_ts: &mut i64,
) -> Result<Step> {
    let cl = &inner.commit_log;
    if pos >= cl.max_offset() {
        return Ok(Step::End);
    }
    let Some(seg) = cache.segment(inner, pos) else {
        // The segment holding `pos` was deleted: skip to the next one.
        let size = cl.segment_size();
        return Ok(Step::Next((pos / size + 1) * size));
    };
    let local = pos - seg.base();
    if local + 8 > seg.size() {
        return Ok(Step::Next(seg.base() + seg.size()));
    }
    let Some(head) = seg.read_visible(local, 8) else {
        return Ok(Step::End);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        path: seg.path().to_path_buf(),
        reason: format!("at CommitLog offset {pos}: {reason}"),
    };
    let (total, version) = match stored::peek_header(head).map_err(|e| corrupt(e.to_string()))? {
        stored::RecordHeader::Blank { .. } => return Ok(Step::Next(seg.base() + seg.size())),
        stored::RecordHeader::Message {
            total_size,
            version,
        } => (total_size as u64, version),
    };
    let rec = seg
        .read_visible(local, total)
        .ok_or_else(|| corrupt("record runs past the published end".into()))?;
    let info = parse(rec, version).map_err(corrupt)?;
    let dispatchable = sysflag::is_dispatchable(info.sys_flag);
    let indexed = dispatchable
        || sysflag::transaction_value(info.sys_flag) != sysflag::TRANSACTION_ROLLBACK_TYPE;
    let wanted = scan_properties(info.properties);
    if dispatchable {
        let tags_code = text(wanted.tags).map_or(0, |t| tags::tags_hash_code(&t));
        let cq = cache.queue(inner, pos, info.topic, info.queue_id)?;
        cq.put(
            info.queue_offset,
            pos as i64,
            total as i32,
            tags_code,
            info.store_timestamp,
        )?;
        build_index(inner, &cq, &wanted, pos, info.store_timestamp)?;
        if let Some(l) = listener {
            l.arriving_with_properties(
                cq.topic(),
                info.queue_id,
                info.queue_offset,
                tags_code,
                info.store_timestamp,
                info.properties,
            );
        }
    } else if indexed {
        // Prepared half messages are indexed (for transaction checks) but not queued.
        if let Some(index) = &inner.index {
            let topic = std::str::from_utf8(info.topic)
                .map_err(|_| corrupt("TOPIC is not valid UTF-8".into()))?;
            index.build_index(
                topic,
                text(wanted.keys).as_deref(),
                text(wanted.uniq).as_deref(),
                pos as i64,
                info.store_timestamp,
            )?;
        }
    }
    *last_ts = info.store_timestamp;
    Ok(Step::Next(pos + total))
}

fn build_index(
    inner: &Inner,
    cq: &ConsumeQueue,
    wanted: &Wanted<'_>,
    pos: u64,
    store_ts: i64,
) -> Result<()> {
    let Some(index) = &inner.index else {
        return Ok(());
    };
    if wanted.keys.is_none() && wanted.uniq.is_none() {
        return Ok(());
    }
    index.build_index(
        cq.topic(),
        text(wanted.keys).as_deref(),
        text(wanted.uniq).as_deref(),
        pos as i64,
        store_ts,
    )
}

/// Dispatch everything published, publishing progress as it goes.
pub(crate) fn dispatch_available(
    inner: &Inner,
    cache: &mut DispatchCache,
    notify: bool,
) -> Result<bool> {
    let mut pos = inner.dispatched.load(Ordering::Acquire);
    let cl_min = inner.commit_log.min_offset();
    let skipped = pos < cl_min;
    if skipped {
        // Retention deleted segments this dispatcher had not reached (only
        // done on a full disk with dispatch stalled; it logged the range).
        tracing::debug!(
            from = pos,
            to = cl_min,
            "skipping deleted CommitLog records"
        );
        pos = cl_min;
        inner.dispatched.store(pos, Ordering::Release);
    }
    let listener = if notify {
        inner.listener.read().clone()
    } else {
        None
    };
    let mut progressed = false;
    let mut n = 0u32;
    let mut last_ts = i64::MIN;
    let publish = |pos: u64, ts: i64| {
        if ts != i64::MIN {
            inner.dispatched_store_ts.store(ts, Ordering::Release);
        }
        inner.dispatched.store(pos, Ordering::Release);
    };
    let limit = inner.cfg.max_unwritten_consume_queue_bytes;
    let r = loop {
        let backlog = inner.cq_shared.tail_bytes.load(Ordering::Relaxed);
        if backlog > limit {
            inner.wake_cq_flusher();
            break Err(StoreError::ConsumeQueueBacklog {
                bytes: backlog,
                limit,
            });
        }
        match dispatch_at(inner, cache, pos, listener.as_deref(), &mut last_ts) {
            Err(e) => break Err(e),
            Ok(Step::End) => break Ok(()),
            Ok(Step::Next(next)) => {
                pos = next;
                progressed = true;
                n += 1;
                // Publish in small batches so pulls and waiters see progress.
                if n.is_multiple_of(64) {
                    publish(pos, last_ts);
                }
            }
        }
    };
    if progressed {
        publish(pos, last_ts);
        inner.notify_dispatched();
    }
    if skipped {
        // Queues got filler entries for the skipped records: start them at
        // their first message still stored.
        for cq in inner.all_cqs() {
            cq.correct_min_offset(cl_min);
        }
    }
    r.map(|()| progressed || skipped)
}

/// Dispatch everything published on the calling thread (recovery,
/// shutdown), writing ConsumeQueue tails out whenever they fill their
/// memory budget instead of failing.
pub(crate) fn dispatch_all_here(inner: &Inner, notify: bool) -> Result<bool> {
    let mut cache = DispatchCache::default();
    let mut any = false;
    loop {
        match dispatch_available(inner, &mut cache, notify) {
            Ok(p) => return Ok(any || p),
            Err(StoreError::ConsumeQueueBacklog { .. }) => {
                any = true;
                inner.flush_logics_all()?;
                let bytes = inner.cq_shared.tail_bytes.load(Ordering::Relaxed);
                let limit = inner.cfg.max_unwritten_consume_queue_bytes;
                if bytes > limit {
                    return Err(StoreError::ConsumeQueueBacklog { bytes, limit });
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The dispatcher thread body.
pub(crate) fn run_dispatcher(inner: Arc<Inner>) {
    let mut cache = DispatchCache::default();
    let mut failed = false;
    let mut retry = RETRY_MIN;
    let mut rechecks = 0u32;
    loop {
        let stopping = inner.stop_dispatcher.load(Ordering::Acquire);
        let progressed = match dispatch_available(&inner, &mut cache, true) {
            Ok(p) => {
                if failed {
                    tracing::info!(
                        offset = inner.dispatched.load(Ordering::Acquire),
                        "dispatch resumed"
                    );
                    inner.dispatch_stalled.store(false, Ordering::Release);
                }
                failed = false;
                retry = RETRY_MIN;
                p
            }
            Err(e) => {
                // Once, then a count per window while it keeps failing.
                static DISPATCH_FAILED: apogee_throttle::LogThrottle =
                    apogee_throttle::LogThrottle::new("dispatch failed");
                apogee_throttle::throttled_error!(DISPATCH_FAILED, (), error = %e,
                    offset = inner.dispatched.load(Ordering::Acquire),
                    "dispatch failed; retrying with backoff");
                if failed {
                    retry = (retry * 2).min(RETRY_MAX);
                } else {
                    inner.dispatch_stalled.store(true, Ordering::Release);
                }
                if e.is_out_of_space() {
                    inner.note_out_of_space();
                }
                // Drop a cached mapping of a segment retention may delete.
                cache.segment = None;
                failed = true;
                false
            }
        };
        if stopping && !progressed {
            break;
        }
        if progressed {
            // Busy: nap without advertising idleness, so appenders keep
            // going without waking us.
            rechecks = 0;
            std::thread::park_timeout(BUSY_NAP);
            continue;
        }
        if failed {
            std::thread::park_timeout(retry);
            continue;
        }
        inner.dispatcher_idle.set();
        // Work published just before the flag became visible would
        // otherwise wait for the timeout below: look once more.
        let pending = inner.dispatched.load(Ordering::Acquire) < inner.commit_log.max_offset();
        if !pending || rechecks >= 3 {
            std::thread::park_timeout(Duration::from_millis(if pending { 1 } else { 100 }));
            rechecks = 0;
        } else {
            rechecks += 1;
        }
        inner.dispatcher_idle.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apogee_protocol::message::{keys, properties, stored::MessageToStore};
    use bytes::{Bytes, BytesMut};

    fn record(topic: &str, props: &str, v6: bool, sys_flag: i32) -> Vec<u8> {
        let host: std::net::SocketAddr = if v6 {
            "[2001:db8::1]:10911".parse().unwrap()
        } else {
            "10.0.0.1:10911".parse().unwrap()
        };
        let m = MessageToStore {
            topic: topic.to_string(),
            queue_id: 3,
            flag: 7,
            body: Bytes::from_static(b"hello body"),
            properties: props.to_string(),
            sys_flag,
            born_timestamp: 11,
            born_host: host,
            store_host: host,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
            tags_code: 0,
        };
        let mut buf = BytesMut::new();
        stored::encode_stored(&m, &mut buf).unwrap();
        let mut v = buf.to_vec();
        stored::patch_stored(&mut v, 42, 4096, 1_700_000_000_123).unwrap();
        v
    }

    /// The lean parser and property scan agree with the full decoder.
    #[test]
    fn lean_parse_matches_full_decoder() {
        let long_topic = "T".repeat(200); // V2 layout (2-byte topic length)
        let cases = [
            ("BenchTopic", "TAGS\u{1}TagA\u{2}", false, 0),
            (
                "BenchTopic",
                "KEYS\u{1}k1 k2\u{2}UNIQ_KEY\u{1}ABC\u{2}TAGS\u{1}x\u{2}",
                true,
                0,
            ),
            ("BenchTopic", "TAGS\u{1}a\u{2}TAGS\u{1}b", false, 0), // last wins, no trailing separator
            (
                "BenchTopic",
                "\u{1}v\u{2}TAGS\u{1}\u{2}KEYS\u{1}a\u{1}b\u{2}junk",
                false,
                0,
            ),
            (
                "Tx",
                "UNIQ_KEY\u{1}Ü-é\u{2}",
                false,
                sysflag::TRANSACTION_PREPARED_TYPE,
            ),
            (long_topic.as_str(), "", false, 0),
        ];
        for (topic, props, v6, flag) in cases {
            let rec = record(topic, props, v6, flag);
            let full = stored::check_record(&rec, true).unwrap();
            let lean = parse(&rec, full.version).unwrap();
            assert_eq!(lean.topic, full.topic.as_bytes());
            assert_eq!(lean.queue_id, full.queue_id);
            assert_eq!(lean.queue_offset, full.queue_offset);
            assert_eq!(lean.sys_flag, full.sys_flag);
            assert_eq!(lean.store_timestamp, full.store_timestamp);
            assert_eq!(lean.properties, full.properties.as_bytes());
            let w = scan_properties(lean.properties);
            let get = |k: &str| properties::get(&full.properties, k).map(str::as_bytes);
            assert_eq!(w.tags, get(keys::TAGS), "{props:?}");
            assert_eq!(w.keys, get(keys::KEYS), "{props:?}");
            assert_eq!(w.uniq, get(keys::UNIQ_KEY), "{props:?}");
        }
    }

    /// Truncated or inconsistent records are errors, never panics.
    #[test]
    fn lean_parse_rejects_bad_lengths() {
        let rec = record("BenchTopic", "TAGS\u{1}TagA\u{2}", false, 0);
        for cut in 0..rec.len() {
            assert!(parse(&rec[..cut], stored::MessageVersion::V1).is_err());
        }
        let mut longer = rec.clone();
        longer.push(0);
        assert!(parse(&longer, stored::MessageVersion::V1).is_err());
        let mut bad = rec.clone();
        let p = stored::body_len_pos(0);
        bad[p..p + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(parse(&bad, stored::MessageVersion::V1).is_err());
        bad[p..p + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(parse(&bad, stored::MessageVersion::V1).is_err());
    }
}
