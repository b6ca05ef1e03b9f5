//! Master side: the HA server. One acceptor thread; per slave, a reader
//! thread (offset reports → acknowledgements) and a writer thread (CommitLog
//! bytes from the offset the slave first reported, in frames of at most
//! `haTransferBatchSize`, heartbeats when idle).

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{fence, AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apogee_store::MessageStore;
use apogee_throttle::{throttled_warn, LogThrottle};
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use crate::codec::{self, REPORT_SIZE};
use crate::HaConfig;

/// What a SYNC_MASTER send learns from [`HaServer::wait_replicated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// A slave acknowledged the offset.
    Replicated,
    /// No acknowledgement within the timeout (FLUSH_SLAVE_TIMEOUT).
    Timeout,
    /// No slave connected, or the slaves are more than `haMaxGapNotInSync`
    /// behind (SLAVE_NOT_AVAILABLE).
    SlaveNotAvailable,
}

/// One connected slave, as the master sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveInfo {
    pub addr: SocketAddr,
    /// Last offset it reported (-1 before the first report).
    pub ack_offset: i64,
    /// Where the master sends next.
    pub next_transfer: u64,
    /// Within `haMaxGapNotInSync` of the master's end.
    pub in_sync: bool,
    /// CommitLog bytes sent to it in the last whole second.
    pub bytes_last_second: u64,
}

/// Bytes per second on one link, counted by its only writer.
#[derive(Default)]
pub(crate) struct Rate {
    second: AtomicU64,
    this_second: AtomicU64,
    last_second: AtomicU64,
}

impl Rate {
    fn now_s() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Writer side.
    pub(crate) fn add(&self, n: u64) {
        let now = Self::now_s();
        let cur = self.second.load(Ordering::Relaxed);
        if now != cur {
            let last = if now == cur + 1 {
                self.this_second.load(Ordering::Relaxed)
            } else {
                0
            };
            self.last_second.store(last, Ordering::Relaxed);
            self.this_second.store(0, Ordering::Relaxed);
            self.second.store(now, Ordering::Relaxed);
        }
        self.this_second.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes in the last whole second.
    pub(crate) fn per_second(&self) -> u64 {
        let now = Self::now_s();
        let cur = self.second.load(Ordering::Relaxed);
        if now == cur {
            self.last_second.load(Ordering::Relaxed)
        } else if now == cur + 1 {
            self.this_second.load(Ordering::Relaxed)
        } else {
            0
        }
    }
}

struct Conn {
    peer: SocketAddr,
    stream: TcpStream,
    /// First report (-1 until it arrives): where the transfer starts.
    request_offset: AtomicI64,
    ack: AtomicI64,
    next_transfer: AtomicU64,
    closed: AtomicBool,
    /// Last reported state, so that crossing the gap is logged once.
    in_sync: AtomicBool,
    rate: Rate,
}

impl Conn {
    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }
}

#[derive(Default)]
struct Waiters {
    next_ticket: u64,
    by_end: std::collections::BTreeMap<(u64, u64), oneshot::Sender<()>>,
}

struct Shared {
    store: Arc<MessageStore>,
    cfg: HaConfig,
    stop: AtomicBool,
    /// Highest offset `acks_needed` slaves have all acknowledged (with one,
    /// Apache's push2SlaveMaxOffset).
    acked: AtomicU64,
    /// Sends waiting for an acknowledgement, by (end offset, ticket): an
    /// acknowledgement completes exactly the ones it covers.
    waiters: Mutex<Waiters>,
    conns: Mutex<Vec<Arc<Conn>>>,
    data_mu: Mutex<()>,
    data_cv: Condvar,
    idle_writers: AtomicUsize,
}

impl Shared {
    /// Raises the acknowledged offset and completes the sends it covers.
    fn acknowledge(&self, offset: u64) {
        if self.acked.fetch_max(offset, Ordering::SeqCst) >= offset {
            return;
        }
        let done = {
            let mut w = self.waiters.lock();
            let rest = w.by_end.split_off(&(offset + 1, 0));
            std::mem::replace(&mut w.by_end, rest)
        };
        for tx in done.into_values() {
            let _ = tx.send(());
        }
    }

    /// A slave reported `offset` (already capped at the master's end):
    /// raises what `acks_needed` slaves hold.
    fn on_report(&self, offset: u64) {
        let n = self.cfg.acks_needed.max(1);
        if n == 1 {
            return self.acknowledge(offset);
        }
        let master_end = self.store.commit_log_max_offset().max(0) as u64;
        let mut acks: Vec<u64> = self
            .conns
            .lock()
            .iter()
            .filter_map(|c| u64::try_from(c.ack.load(Ordering::Acquire)).ok())
            .map(|a| a.min(master_end))
            .collect();
        if acks.len() >= n {
            acks.sort_unstable_by(|a, b| b.cmp(a));
            self.acknowledge(acks[n - 1]);
        }
    }

    /// Connected slaves within `haMaxGapNotInSync` of `put_end`.
    fn in_sync_count(&self, put_end: u64) -> usize {
        self.conns
            .lock()
            .iter()
            .filter(|c| {
                let ack = c.ack.load(Ordering::Acquire);
                ack >= 0 && put_end.saturating_sub(ack as u64) < self.cfg.max_gap_not_in_sync
            })
            .count()
    }

    /// Writer side: sleep until data past `next` may exist, a wake, or `max`.
    fn wait_data(&self, next: u64, max: Duration) {
        let mut g = self.data_mu.lock();
        self.idle_writers.fetch_add(1, Ordering::SeqCst);
        if self.store.commit_log_max_offset() as u64 <= next && !self.stop.load(Ordering::Acquire) {
            self.data_cv.wait_for(&mut g, max);
        }
        self.idle_writers.fetch_sub(1, Ordering::SeqCst);
    }

    fn wake_writers(&self) {
        fence(Ordering::SeqCst);
        if self.idle_writers.load(Ordering::SeqCst) > 0 {
            let _g = self.data_mu.lock();
            self.data_cv.notify_all();
        }
    }

    fn remove(&self, conn: &Arc<Conn>) {
        self.conns.lock().retain(|c| !Arc::ptr_eq(c, conn));
    }
}

/// The HA server of a master. Dropping it does not stop it: call
/// [`HaServer::shutdown`].
pub struct HaServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

/// Longest sleep of an idle slave link before it looks for new data (as
/// Apache's transfer service, which waits 100 ms).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// How long a slave link that just sent everything waits for more before
/// it goes idle (and needs a wake-up per put).
const LINGER: Duration = Duration::from_micros(200);

static ACCEPT_FAILED: LogThrottle = LogThrottle::new("HA accept failed");
static SLAVE_LINK_CLOSED: LogThrottle = LogThrottle::new("HA slave link closed");

impl HaServer {
    /// Binds `cfg.listen_addr` and starts accepting slaves.
    pub fn start(store: Arc<MessageStore>, cfg: HaConfig) -> io::Result<HaServer> {
        let listener = TcpListener::bind(cfg.listen_addr)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store,
            cfg,
            stop: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            waiters: Mutex::new(Waiters::default()),
            conns: Mutex::new(Vec::new()),
            data_mu: Mutex::new(()),
            data_cv: Condvar::new(),
            idle_writers: AtomicUsize::new(0),
        });
        let sh = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("apogee-ha-accept".into())
            .spawn(move || accept_loop(sh, listener))?;
        tracing::info!(addr = %local_addr, "HA server listening for slaves");
        Ok(HaServer {
            shared,
            local_addr,
            acceptor: Mutex::new(Some(acceptor)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Tell idle slave links that the CommitLog grew (cheap when none waits).
    pub fn wake(&self) {
        self.shared.wake_writers();
    }

    /// Highest CommitLog offset the required number of slaves
    /// (`acks_needed`) have acknowledged.
    pub fn acked_offset(&self) -> u64 {
        self.shared.acked.load(Ordering::SeqCst)
    }

    /// Apache's `isSlaveOK`, for `acks_needed` slaves: that many are
    /// connected and less than `haMaxGapNotInSync` behind `put_end`.
    pub fn is_slave_ok(&self, put_end: u64) -> bool {
        self.shared.in_sync_count(put_end) >= self.shared.cfg.acks_needed.max(1)
    }

    /// Waits until a slave has acknowledged `end` (the end of a just stored
    /// message), at most `timeout`. Answers at once when no slave is fit.
    pub async fn wait_replicated(&self, end: u64, timeout: Duration) -> SyncOutcome {
        if !self.is_slave_ok(end) {
            return SyncOutcome::SlaveNotAvailable;
        }
        if self.acked_offset() >= end {
            return SyncOutcome::Replicated;
        }
        let (tx, rx) = oneshot::channel();
        let key = {
            let mut w = self.shared.waiters.lock();
            w.next_ticket += 1;
            let key = (end, w.next_ticket);
            w.by_end.insert(key, tx);
            key
        };
        // An acknowledgement may have come before the ticket was filed.
        if self.acked_offset() >= end {
            self.shared.waiters.lock().by_end.remove(&key);
            return SyncOutcome::Replicated;
        }
        self.wake();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => SyncOutcome::Replicated,
            _ => {
                self.shared.waiters.lock().by_end.remove(&key);
                SyncOutcome::Timeout
            }
        }
    }

    /// The connected slaves.
    pub fn slaves(&self) -> Vec<SlaveInfo> {
        let master_end = self.shared.store.commit_log_max_offset() as u64;
        let gap = self.shared.cfg.max_gap_not_in_sync;
        self.shared
            .conns
            .lock()
            .iter()
            .map(|c| {
                let ack = c.ack.load(Ordering::Acquire);
                SlaveInfo {
                    addr: c.peer,
                    ack_offset: ack,
                    next_transfer: c.next_transfer.load(Ordering::Acquire),
                    in_sync: ack >= 0 && master_end.saturating_sub(ack as u64) < gap,
                    bytes_last_second: c.rate.per_second(),
                }
            })
            .collect()
    }

    /// Stops accepting, closes every slave link and joins the acceptor.
    pub fn shutdown(&self) {
        if self.shared.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        // Unblock accept() with a connection of our own.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        for c in self.shared.conns.lock().drain(..) {
            c.close();
        }
        {
            let _g = self.shared.data_mu.lock();
            self.shared.data_cv.notify_all();
        }
        if let Some(h) = self.acceptor.lock().take() {
            let _ = h.join();
        }
        tracing::info!(addr = %self.local_addr, "HA server stopped");
    }
}

impl Drop for HaServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                throttled_warn!(ACCEPT_FAILED, (), error = %e, "HA server: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Err(e) = start_conn(&shared, stream, peer) {
            tracing::warn!(slave = %peer, error = %e, "HA server: cannot serve a slave");
        }
    }
}

fn start_conn(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(shared.cfg.housekeeping_interval))?;
    stream.set_write_timeout(Some(shared.cfg.housekeeping_interval))?;
    let conn = Arc::new(Conn {
        peer,
        stream: stream.try_clone()?,
        request_offset: AtomicI64::new(-1),
        ack: AtomicI64::new(-1),
        next_transfer: AtomicU64::new(0),
        closed: AtomicBool::new(false),
        in_sync: AtomicBool::new(true),
        rate: Rate::default(),
    });
    let reader_stream = stream.try_clone()?;
    shared.conns.lock().push(Arc::clone(&conn));
    tracing::info!(slave = %peer, "HA server: slave connected");
    let (sh, c) = (Arc::clone(shared), Arc::clone(&conn));
    let spawned = std::thread::Builder::new()
        .name("apogee-ha-read".into())
        .spawn(move || {
            let why = read_reports(&sh, &c, reader_stream);
            finish(&sh, &c, &why);
        });
    if let Err(e) = spawned {
        shared.remove(&conn);
        conn.close();
        return Err(e);
    }
    let (sh, c) = (Arc::clone(shared), conn);
    let spawned = std::thread::Builder::new()
        .name("apogee-ha-write".into())
        .spawn(move || {
            let why = write_frames(&sh, &c, stream);
            finish(&sh, &c, &why);
        });
    spawned.map(|_| ())
}

fn finish(shared: &Shared, conn: &Arc<Conn>, why: &str) {
    let first = !conn.closed.load(Ordering::Acquire);
    conn.close();
    shared.remove(conn);
    if first && !shared.stop.load(Ordering::Acquire) {
        throttled_warn!(SLAVE_LINK_CLOSED, conn.peer, slave = %conn.peer, reason = why,
            acked = conn.ack.load(Ordering::Acquire), "HA server: slave link closed");
    }
}

/// Reads 8-byte offset reports until the link fails; returns why it ended.
fn read_reports(shared: &Shared, conn: &Conn, mut stream: TcpStream) -> String {
    let mut buf = [0u8; REPORT_SIZE];
    let mut got = 0usize;
    loop {
        if conn.closed.load(Ordering::Acquire) || shared.stop.load(Ordering::Acquire) {
            return "closed".into();
        }
        match stream.read(&mut buf[got..]) {
            Ok(0) => return "the slave closed the connection".into(),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return format!(
                    "no report from the slave for {} s (haHousekeepingInterval)",
                    shared.cfg.housekeeping_interval.as_secs()
                );
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return format!("read failed: {e}"),
        }
        if got < REPORT_SIZE {
            continue;
        }
        got = 0;
        let Some(offset) = codec::decode_report(&buf) else {
            return format!(
                "the slave reported a negative offset {}",
                i64::from_be_bytes(buf)
            );
        };
        let ack = offset as i64;
        conn.ack.store(ack, Ordering::Release);
        if conn.request_offset.load(Ordering::Acquire) < 0 {
            conn.request_offset.store(ack, Ordering::Release);
            tracing::info!(slave = %conn.peer, offset, "HA server: slave asks for data from offset");
            let _g = shared.data_mu.lock();
            shared.data_cv.notify_all();
        }
        // A slave ahead of this master (it kept data the master lost) must
        // not acknowledge sends it has not seen.
        let master_end = shared.store.commit_log_max_offset() as u64;
        let counted = offset.min(master_end);
        shared.on_report(counted);
        let behind = master_end.saturating_sub(offset);
        let in_sync = behind < shared.cfg.max_gap_not_in_sync;
        if in_sync != conn.in_sync.swap(in_sync, Ordering::AcqRel) {
            if in_sync {
                tracing::info!(slave = %conn.peer, behind, "HA server: slave back in sync");
            } else {
                tracing::warn!(slave = %conn.peer, behind, max_gap = shared.cfg.max_gap_not_in_sync,
                    "HA server: slave out of sync (more than haMaxGapNotInSync behind)");
            }
        }
    }
}

/// Streams CommitLog frames until the link fails; returns why it ended.
fn write_frames(shared: &Shared, conn: &Conn, mut stream: TcpStream) -> String {
    let cfg = &shared.cfg;
    let store = &shared.store;
    // Wait for the slave's first report.
    let request = loop {
        if conn.closed.load(Ordering::Acquire) || shared.stop.load(Ordering::Acquire) {
            return "closed".into();
        }
        let r = conn.request_offset.load(Ordering::Acquire);
        if r >= 0 {
            break r as u64;
        }
        let mut g = shared.data_mu.lock();
        shared.data_cv.wait_for(&mut g, Duration::from_millis(10));
    };
    let master_end = store.commit_log_max_offset() as u64;
    let mut next = if request == 0 {
        // A new slave starts at the master's last segment.
        let seg = store.commit_log_segment_size().max(1);
        master_end - master_end % seg
    } else {
        request
    };
    let master_min = store.commit_log_min_offset() as u64;
    if next < master_min {
        tracing::error!(slave = %conn.peer, slave_offset = next, master_min,
            "HA server: the slave needs CommitLog data this master has already deleted \
             (fileReservedTime); it cannot catch up: rebuild it from an empty store");
    }
    if next > master_end {
        tracing::warn!(slave = %conn.peer, slave_offset = next, master_end,
            "HA server: the slave is ahead of this master (it holds data this master does not); \
             it gets heartbeats only until the master passes that offset");
    }
    tracing::info!(slave = %conn.peer, from = next, "HA server: transfer starts");
    conn.next_transfer.store(next, Ordering::Release);
    let batch = cfg.transfer_batch_size.clamp(1, codec::MAX_FRAME_BODY);
    let mut last_write = Instant::now();
    let mut lingered = false;
    loop {
        if conn.closed.load(Ordering::Acquire) || shared.stop.load(Ordering::Acquire) {
            return "closed".into();
        }
        if let Some(data) = store.commit_log_data(next, batch) {
            let header = codec::encode_header(next, data.len() as u32);
            if let Err(e) = write_all_vectored(&mut stream, &header, &data) {
                return format!("write failed: {e}");
            }
            next += data.len() as u64;
            conn.rate.add(data.len() as u64);
            conn.next_transfer.store(next, Ordering::Release);
            last_write = Instant::now();
            lingered = false;
            continue;
        }
        if !lingered {
            // Under load more bytes arrive within moments: look again once
            // before going idle, so that many puts share one frame and one
            // wake-up instead of each waking this thread.
            lingered = true;
            std::thread::sleep(LINGER);
            continue;
        }
        lingered = false;
        let idle = last_write.elapsed();
        if idle >= cfg.heartbeat_interval {
            let header = codec::encode_header(next, 0);
            if let Err(e) = write_all_vectored(&mut stream, &header, &[]) {
                return format!("heartbeat write failed: {e}");
            }
            last_write = Instant::now();
            continue;
        }
        // Woken by the broker after its puts; appends it does not see
        // (e.g. scheduled deliveries) are found within IDLE_POLL.
        shared.wait_data(next, (cfg.heartbeat_interval - idle).min(IDLE_POLL));
    }
}

/// Writes `a` then `b` with as few syscalls as the socket allows.
fn write_all_vectored(stream: &mut TcpStream, a: &[u8], b: &[u8]) -> io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() || !b.is_empty() {
        let n = match stream.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    Ok(())
}
