//! Slave side: the HA client. One thread connects to the master's HA
//! address, reports this store's CommitLog end, then appends every frame's
//! bytes at the offset the frame names, reporting the new end after each
//! frame and at least every `haSendHeartbeatInterval`. Any fault (refused
//! connection, silent master, corrupt or out-of-place frame, a store that
//! cannot take the bytes) closes the link with one log line and the link is
//! retried; nothing here panics on what the network or the disk hands it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apogee_store::{MessageStore, ReplicaAppendError};
use apogee_throttle::{throttled_error, throttled_info, throttled_warn, LogThrottle};
use bytes::{Buf, BytesMut};
use parking_lot::{Condvar, Mutex};

use crate::codec::{self, FrameError, TRANSFER_HEADER_SIZE};
use crate::HaConfig;

/// Why a link to the master ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot resolve the master's HA address {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("cannot connect to the master's HA address {addr} (is a master's haListenPort there?): {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("the master closed the connection")]
    Closed,
    #[error(
        "the peer closed the connection before sending anything: is {0} a master's \
         haListenPort (listenPort + 1), not its listenPort or another service?"
    )]
    NotAMaster(String),
    #[error("nothing from the master for {0:?} (haHousekeepingInterval)")]
    Silent(Duration),
    #[error("link I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("corrupt frame from the master: {0}")]
    Frame(#[from] FrameError),
    #[error(
        "the master sent CommitLog offset {master} but this slave is at {slave}: \
         the two CommitLogs differ (is it the right master, with the same brokerName?)"
    )]
    OffsetMismatch { slave: u64, master: u64 },
    #[error("cannot append the master's data: {0}")]
    Append(#[from] ReplicaAppendError),
}

impl LinkError {
    /// A short stable name, to throttle log lines per kind.
    fn kind(&self) -> &'static str {
        match self {
            LinkError::Resolve { .. } => "resolve",
            LinkError::Connect { .. } => "connect",
            LinkError::Closed => "closed",
            LinkError::NotAMaster(_) => "not-a-master",
            LinkError::Silent(_) => "silent",
            LinkError::Io(_) => "io",
            LinkError::Frame(_) => "frame",
            LinkError::OffsetMismatch { .. } => "offset",
            LinkError::Append(_) => "append",
        }
    }
}

struct Shared {
    store: Arc<MessageStore>,
    cfg: HaConfig,
    master: Mutex<Option<String>>,
    /// Bumped when the master address changes: the link is re-made.
    generation: AtomicU64,
    cv: Condvar,
    cv_mu: Mutex<()>,
    stop: AtomicBool,
    stream: Mutex<Option<TcpStream>>,
    connected: AtomicBool,
    reported: AtomicU64,
    /// Wall-clock ms of the last read from / write to the master (0 = never).
    last_read_ms: AtomicU64,
    last_write_ms: AtomicU64,
    rate: crate::master::Rate,
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn sleep(&self, d: Duration) {
        let mut g = self.cv_mu.lock();
        if !self.stop.load(Ordering::Acquire) {
            self.cv.wait_for(&mut g, d);
        }
    }

    fn wake(&self) {
        let _g = self.cv_mu.lock();
        self.cv.notify_all();
    }
}

/// The HA client of a slave.
pub struct HaClient {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

static LINK_FAILED: LogThrottle = LogThrottle::new("HA link to the master failed");
static CONNECTED: LogThrottle = LogThrottle::new("HA client connected");

impl HaClient {
    /// Starts the client; with no master address it waits for one
    /// ([`HaClient::set_master_addr`]).
    pub fn start(
        store: Arc<MessageStore>,
        cfg: HaConfig,
        master: Option<String>,
    ) -> io::Result<HaClient> {
        let shared = Arc::new(Shared {
            store,
            cfg,
            master: Mutex::new(master.filter(|m| !m.is_empty())),
            generation: AtomicU64::new(0),
            cv: Condvar::new(),
            cv_mu: Mutex::new(()),
            stop: AtomicBool::new(false),
            stream: Mutex::new(None),
            connected: AtomicBool::new(false),
            reported: AtomicU64::new(0),
            last_read_ms: AtomicU64::new(0),
            last_write_ms: AtomicU64::new(0),
            rate: crate::master::Rate::default(),
            last_error: Mutex::new(None),
        });
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("apogee-ha-client".into())
            .spawn(move || run(sh))?;
        Ok(HaClient {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Points the client at a (new) master HA address; a change drops the
    /// current link.
    pub fn set_master_addr(&self, addr: &str) {
        if addr.is_empty() {
            return;
        }
        {
            let mut m = self.shared.master.lock();
            if m.as_deref() == Some(addr) {
                return;
            }
            tracing::info!(old = ?m.as_deref(), new = addr, "HA client: master HA address updated");
            *m = Some(addr.to_owned());
        }
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(s) = self.shared.stream.lock().as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.shared.wake();
    }

    pub fn master_addr(&self) -> Option<String> {
        self.shared.master.lock().clone()
    }

    /// Whether a link to the master is up.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Last offset reported to the master.
    pub fn reported_offset(&self) -> u64 {
        self.shared.reported.load(Ordering::Acquire)
    }

    /// Wall-clock ms of the last bytes read from the master (0 = never).
    pub fn last_read_ms(&self) -> u64 {
        self.shared.last_read_ms.load(Ordering::Acquire)
    }

    /// Wall-clock ms of the last report written to the master (0 = never).
    pub fn last_write_ms(&self) -> u64 {
        self.shared.last_write_ms.load(Ordering::Acquire)
    }

    /// Why the last link ended (None once a link is up again).
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().clone()
    }

    /// Bytes received from the master in the last whole second.
    pub fn bytes_last_second(&self) -> u64 {
        self.shared.rate.per_second()
    }

    /// Closes the link and joins the thread.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(s) = self.shared.stream.lock().as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.shared.wake();
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for HaClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(shared: Arc<Shared>) {
    let mut link = Link::default();
    while !shared.stop.load(Ordering::Acquire) {
        let Some(addr) = shared.master.lock().clone() else {
            shared.sleep(Duration::from_millis(500));
            continue;
        };
        let generation = shared.generation.load(Ordering::Acquire);
        let result = link.run(&shared, &addr, generation);
        shared.connected.store(false, Ordering::Release);
        *shared.stream.lock() = None;
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        if let Err(e) = &result {
            *shared.last_error.lock() = Some(e.to_string());
        }
        match result {
            Ok(()) => {}
            Err(e @ (LinkError::OffsetMismatch { .. } | LinkError::Append(_))) => {
                throttled_error!(LINK_FAILED, e.kind(), master = %addr, error = %e,
                    "HA client: link to the master closed; retrying");
            }
            Err(e) => {
                throttled_warn!(LINK_FAILED, e.kind(), master = %addr, error = %e,
                    "HA client: link to the master closed; retrying");
            }
        }
        if shared.generation.load(Ordering::Acquire) == generation {
            shared.sleep(shared.cfg.reconnect_interval);
        }
    }
    tracing::info!("HA client stopped");
}

/// How long one connect attempt may take before stop is looked at again.
const CONNECT_TRY: Duration = Duration::from_millis(250);
/// How long all attempts of one connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to the master in short attempts, so that a stop or a new master
/// address is seen within one: a role switch joins this thread, and a
/// blocking connect to a cut-off master (SYNs dropped, no refusal) would
/// hold the switch, and so the failover, for the whole timeout.
/// `Ok(None)`: stopped or redirected meanwhile.
fn connect(
    shared: &Shared,
    addr: &str,
    target: &SocketAddr,
    generation: u64,
) -> Result<Option<TcpStream>, LinkError> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let try_for = left.min(CONNECT_TRY).max(Duration::from_millis(1));
        match TcpStream::connect_timeout(target, try_for) {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && Instant::now() < deadline => {
                if shared.stop.load(Ordering::Acquire)
                    || shared.generation.load(Ordering::Acquire) != generation
                {
                    return Ok(None);
                }
            }
            Err(source) => {
                return Err(LinkError::Connect {
                    addr: addr.to_owned(),
                    source,
                })
            }
        }
    }
}

/// One link's buffers, kept across reconnects (no allocation per frame).
#[derive(Default)]
struct Link {
    /// Bytes received but not yet in the store: the start of a record whose
    /// end has not arrived. They begin at the store's end.
    pending: BytesMut,
}

impl Link {
    fn run(&mut self, shared: &Shared, addr: &str, generation: u64) -> Result<(), LinkError> {
        let target = resolve(addr)?;
        let Some(mut stream) = connect(shared, addr, &target, generation)? else {
            return Ok(());
        };
        stream.set_nodelay(true)?;
        // Short reads so heartbeats, housekeeping and stop are timely.
        let tick = shared
            .cfg
            .heartbeat_interval
            .min(Duration::from_millis(200))
            .max(Duration::from_millis(10));
        stream.set_read_timeout(Some(tick))?;
        stream.set_write_timeout(Some(shared.cfg.housekeeping_interval))?;
        *shared.stream.lock() = Some(stream.try_clone()?);
        if shared.stop.load(Ordering::Acquire)
            || shared.generation.load(Ordering::Acquire) != generation
        {
            return Ok(());
        }
        let store = &shared.store;
        self.pending.clear();
        let fresh = store.commit_log_is_empty();
        // Where the master's next byte belongs (the stream position).
        let mut raw_pos = store.commit_log_max_offset() as u64;
        let mut store_end = raw_pos;
        let mut started = !fresh;
        report(shared, &mut stream, raw_pos)?;
        let mut last_report = Instant::now();
        let mut last_read = Instant::now();
        shared.connected.store(true, Ordering::Release);
        *shared.last_error.lock() = None;
        throttled_info!(
            CONNECTED,
            (),
            master = addr,
            offset = raw_pos,
            "HA client: connected to the master"
        );
        let mut got_any = false;
        let mut header = [0u8; TRANSFER_HEADER_SIZE];
        let mut header_got = 0usize;
        // Body being read: its size and the bytes of it received so far.
        let mut body: Option<(codec::FrameHeader, usize)> = None;
        let mut skip = 0usize;
        loop {
            if shared.stop.load(Ordering::Acquire)
                || shared.generation.load(Ordering::Acquire) != generation
            {
                return Ok(());
            }
            if last_report.elapsed() >= shared.cfg.heartbeat_interval {
                report(shared, &mut stream, raw_pos.max(store_end))?;
                last_report = Instant::now();
            }
            if last_read.elapsed() > shared.cfg.housekeeping_interval {
                return Err(LinkError::Silent(shared.cfg.housekeeping_interval));
            }
            let read = match &mut body {
                None => stream.read(&mut header[header_got..]),
                Some((h, got)) => {
                    let want = h.size - *got;
                    let len = self.pending.len();
                    self.pending.resize(len + want, 0);
                    let r = stream.read(&mut self.pending[len..]);
                    let n = *r.as_ref().unwrap_or(&0);
                    self.pending.truncate(len + n);
                    r
                }
            };
            let n = match read {
                Ok(0) if !got_any => return Err(LinkError::NotAMaster(addr.to_owned())),
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e)
                    if !got_any
                        && matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) =>
                {
                    return Err(LinkError::NotAMaster(addr.to_owned()))
                }
                Err(e) => return Err(e.into()),
            };
            last_read = Instant::now();
            got_any = true;
            shared.last_read_ms.store(now_ms(), Ordering::Release);
            shared.rate.add(n as u64);
            match &mut body {
                None => {
                    header_got += n;
                    if header_got < TRANSFER_HEADER_SIZE {
                        continue;
                    }
                    header_got = 0;
                    let h = codec::decode_header(&header)?;
                    if !started {
                        // An empty replica takes whatever segment the master
                        // starts it at (the store checks the alignment).
                        raw_pos = h.offset;
                        store_end = h.offset;
                        started = true;
                    }
                    if h.offset != raw_pos {
                        return Err(LinkError::OffsetMismatch {
                            slave: raw_pos,
                            master: h.offset,
                        });
                    }
                    if h.size == 0 {
                        continue;
                    }
                    // Bytes the store already has: the rest of a BLANK
                    // filler it completed when its header arrived.
                    skip = store_end.saturating_sub(raw_pos).min(h.size as u64) as usize;
                    self.pending.reserve(h.size);
                    body = Some((h, 0));
                }
                Some((h, got)) => {
                    *got += n;
                    if *got < h.size {
                        continue;
                    }
                    let size = h.size;
                    body = None;
                    raw_pos += size as u64;
                    if skip > 0 {
                        // `pending` held nothing before this frame (a filler
                        // completes everything before it).
                        self.pending.advance(skip);
                        skip = 0;
                    }
                    if !self.pending.is_empty() {
                        let r = store.append_replicated(store_end, &self.pending)?;
                        self.pending.advance(r.taken);
                        store_end = r.end;
                        if self.pending.is_empty() {
                            self.pending.clear();
                        }
                    }
                    let now_at = raw_pos.max(store_end);
                    if now_at > shared.reported.load(Ordering::Acquire) {
                        report(shared, &mut stream, now_at)?;
                        last_report = Instant::now();
                    }
                }
            }
        }
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, LinkError> {
    let err = |reason: String| LinkError::Resolve {
        addr: addr.to_owned(),
        reason,
    };
    addr.to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))
}

fn report(shared: &Shared, stream: &mut TcpStream, offset: u64) -> Result<(), LinkError> {
    stream.write_all(&codec::encode_report(offset))?;
    shared.reported.store(offset, Ordering::Release);
    shared.last_write_ms.store(now_ms(), Ordering::Release);
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
