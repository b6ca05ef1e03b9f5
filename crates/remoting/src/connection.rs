//! One live TCP connection, the same on server and client side: a reader task
//! that splits frames and dispatches them (responses to waiting callers,
//! requests to processors on their own tasks), a writer task that coalesces
//! queued frames into few writes, and [`Channel`], the cloneable handle to it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::codec::CodecError;
use apogee_protocol::command::{FLAG_ONEWAY, FLAG_RESPONSE};
use apogee_protocol::{FrameCodec, RemotingCommand};
use apogee_throttle::{throttled_error, throttled_warn, LogThrottle};
use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::error::{RemotingError, Result};
use crate::processor::{ProcessorRegistry, RequestContext, RequestProcessor};

// Per-request / per-connection complaints are throttled so that one noisy
// peer (or a broker refusing everything) cannot flood the log. Keys are the
// peer's IP (a reconnecting peer gets a new port) or the request code.
static BAD_FRAME: LogThrottle = LogThrottle::new("closing connection after a bad frame");
static OVERLOADED: LogThrottle = LogThrottle::new("too many requests in flight on one connection");
static PROCESSOR_FAILED: LogThrottle = LogThrottle::new("request processor failed");
static PROCESSOR_PANICKED: LogThrottle = LogThrottle::new("request processor panicked");

/// `RemotingSysResponseCode.SYSTEM_ERROR`.
pub const SYSTEM_ERROR: i32 = 1;
/// `RemotingSysResponseCode.SYSTEM_BUSY`.
pub const SYSTEM_BUSY: i32 = 2;
/// `RemotingSysResponseCode.REQUEST_CODE_NOT_SUPPORTED`.
pub const REQUEST_CODE_NOT_SUPPORTED: i32 = 3;

/// Bodies at least this long are written from their own buffer instead of
/// being copied into the batch buffer.
const COPY_BODY_LIMIT: usize = 4 * 1024;
/// A write batch stops growing at this many bytes or frames.
const BATCH_BYTES: usize = 256 * 1024;
const BATCH_FRAMES: usize = 256;
/// Initial (and regrown) size of a connection's read buffer.
const READ_BUFFER: usize = 64 * 1024;
/// What a connection reads into until its peer shows that it pipelines:
/// thousands of clients that only heartbeat must not hold 64 KiB each.
const FIRST_READ_BUFFER: usize = 4 * 1024;
/// Upper bound on buffers handed to one `write_vectored` call.
const MAX_IOV: usize = 64;
/// How long a closing connection may spend flushing what is still queued.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Per-connection tunables, filled from the server or client config.
#[derive(Debug, Clone)]
pub(crate) struct ConnOptions {
    pub max_frame_size: usize,
    pub idle_timeout: Option<Duration>,
    pub write_queue: usize,
    pub max_in_flight: usize,
}

/// What a connection needs from the server or client that owns it.
pub(crate) struct Runtime {
    pub processors: Arc<ProcessorRegistry>,
    /// Tasks running requests; a server waits on it during shutdown.
    pub requests: TaskTracker,
    /// Reader and writer tasks.
    pub io_tasks: TaskTracker,
    /// Cancelled when the owner stops taking new requests.
    pub stop_reading: CancellationToken,
    /// The runtime the owner was built on: connection tasks live there, not
    /// on whichever runtime first used a connection (a gRPC event loop that
    /// ends before the owner would take them down with it).
    pub handle: Option<tokio::runtime::Handle>,
    /// Parent of every connection's close token.
    pub close_all: CancellationToken,
    pub opts: ConnOptions,
}

impl Runtime {
    /// A reader, writer or watcher task on the owner's runtime.
    pub(crate) fn spawn_io<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.spawn_tracked(&self.io_tasks, task);
    }

    /// A request task on the owner's runtime (callable from any thread).
    pub(crate) fn spawn_request<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.spawn_tracked(&self.requests, task);
    }

    fn spawn_tracked<F>(&self, tracker: &TaskTracker, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.handle {
            Some(h) => drop(tracker.spawn_on(task, h)),
            None => drop(tracker.spawn(task)),
        }
    }
}

/// Hashes the pending-request table's keys, opaques: ints this process
/// hands out in sequence, so a multiply spreads them well enough and SipHash
/// (made for keys an attacker chooses) is not needed on every request.
type OpaqueHash = std::hash::BuildHasherDefault<OpaqueHasher>;

#[derive(Default)]
struct OpaqueHasher(u64);

impl std::hash::Hasher for OpaqueHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_i32(&mut self, v: i32) {
        self.0 = u64::from(v as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A process-unique connection id, usable as a map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u64);

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

static NEXT_CHANNEL_ID: AtomicU64 = AtomicU64::new(1);

/// Handle to a connection: send requests or oneway messages to the peer,
/// watch for the connection closing. Cheap to clone; equality and hashing
/// go by [`ChannelId`].
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

struct Inner {
    id: ChannelId,
    peer: SocketAddr,
    local: SocketAddr,
    tx: Tx,
    pending: Mutex<HashMap<i32, oneshot::Sender<RemotingCommand>, OpaqueHash>>,
    next_opaque: AtomicI32,
    closed: CancellationToken,
    started: Instant,
    /// Milliseconds since `started` of the last frame read or written.
    last_activity_ms: AtomicU64,
}

/// Where a channel's outgoing commands go.
enum Tx {
    /// A TCP connection's write queue, drained by its writer task.
    Socket(mpsc::Sender<RemotingCommand>),
    /// The other end of an in-process pair (see [`LocalEndpoint`]).
    Local(LocalTx),
}

/// The far end of an in-process pair: commands are handed to its dispatch
/// directly, so nothing is encoded, copied or written, and a request that
/// needs no waiting is answered before the sender's call returns.
struct LocalTx {
    peer: PeerRef,
    /// The far end's processors, task tracker and shutdown tokens.
    rt: Arc<Runtime>,
    /// Bounds the request tasks the far end runs for this pair.
    in_flight: Arc<Semaphore>,
}

/// The client end holds the server end; the server end (kept by the
/// broker's producer and consumer tables) refers back weakly, so a pair
/// forms no reference cycle.
enum PeerRef {
    Strong(Arc<Inner>),
    Weak(std::sync::Weak<Inner>),
}

impl LocalTx {
    /// Dispatches `cmd` at the far end; false when that end is gone,
    /// closed, or (for a request) no longer taking requests.
    fn deliver(&self, cmd: RemotingCommand) -> bool {
        let inner = match &self.peer {
            PeerRef::Strong(p) => Arc::clone(p),
            PeerRef::Weak(p) => match p.upgrade() {
                Some(p) => p,
                None => return false,
            },
        };
        let peer = Channel { inner };
        if !peer.is_active() || (!cmd.is_response() && self.rt.stop_reading.is_cancelled()) {
            return false;
        }
        if matches!(self.peer, PeerRef::Weak(_)) && !cmd.is_response() {
            // A server's request to the client (a check-back, a rebalance
            // notice) may be sent while the server holds a lock that the
            // client's handler would reach back for: it runs on a task of
            // its own, as it would behind a socket.
            let rt = Arc::clone(&self.rt);
            let in_flight = Arc::clone(&self.in_flight);
            self.rt.spawn_request(async move {
                dispatch(&peer, cmd, &rt, &in_flight);
            });
            return true;
        }
        dispatch(&peer, cmd, &self.rt, &self.in_flight);
        true
    }
}

/// A server's in-process entrance: a [`RemotingClient`] given one (with
/// [`RemotingClient::connect_locally`]) reaches the server's processors
/// without a socket when it "connects" to that address. Processors see an
/// ordinary [`Channel`] and may keep it to send requests back.
///
/// [`RemotingClient`]: crate::RemotingClient
/// [`RemotingClient::connect_locally`]: crate::RemotingClient::connect_locally
#[derive(Clone)]
pub struct LocalEndpoint {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) addr: SocketAddr,
}

impl std::fmt::Debug for LocalEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEndpoint")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Connects `client_rt` to `server` in process and returns the client's end.
/// Both ends share one close token: closing either closes both, as does the
/// server's or the client's shutdown.
pub(crate) fn local_pair(client_rt: &Arc<Runtime>, server: &LocalEndpoint) -> Channel {
    let closed = client_rt.close_all.child_token();
    // Not a socket: the client end is named by the server's IP and port 0.
    let server_addr = server.addr;
    let client_ip = if server_addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        server_addr.ip()
    };
    let client_addr = SocketAddr::new(client_ip, 0);
    // A server bound to 0.0.0.0 is named by the same IP as its client end.
    let server_addr = SocketAddr::new(client_ip, server_addr.port());
    let new_inner = |peer, local, tx, closed| Inner {
        id: ChannelId(NEXT_CHANNEL_ID.fetch_add(1, Ordering::Relaxed)),
        peer,
        local,
        tx,
        pending: Mutex::new(HashMap::default()),
        next_opaque: AtomicI32::new(1),
        closed,
        started: Instant::now(),
        last_activity_ms: AtomicU64::new(0),
    };
    let client = Arc::new_cyclic(|client_weak| {
        let server_end = Arc::new(new_inner(
            client_addr,
            server_addr,
            Tx::Local(LocalTx {
                peer: PeerRef::Weak(client_weak.clone()),
                rt: Arc::clone(client_rt),
                in_flight: Arc::new(Semaphore::new(client_rt.opts.max_in_flight.max(1))),
            }),
            closed.clone(),
        ));
        new_inner(
            server_addr,
            client_addr,
            Tx::Local(LocalTx {
                peer: PeerRef::Strong(server_end),
                rt: Arc::clone(&server.rt),
                in_flight: Arc::new(Semaphore::new(server.rt.opts.max_in_flight.max(1))),
            }),
            closed.clone(),
        )
    });
    // Stands in for a reader task: the server's shutdown (or drop) closes
    // the pair too, and however it closes, callers waiting on either end
    // are released.
    let server_closing = server.rt.close_all.clone();
    let weak = Arc::downgrade(&client);
    client_rt.spawn_io(async move {
        tokio::select! {
            _ = server_closing.cancelled() => {}
            _ = closed.cancelled() => {}
        }
        closed.cancel();
        if let Some(inner) = weak.upgrade() {
            Channel { inner }.close();
        }
    });
    let channel = Channel { inner: client };
    debug!(peer = %server_addr, channel = %channel.id(), "in-process connection open");
    channel
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .field("active", &self.is_active())
            .finish()
    }
}

impl PartialEq for Channel {
    fn eq(&self, other: &Self) -> bool {
        self.inner.id == other.inner.id
    }
}
impl Eq for Channel {}
impl std::hash::Hash for Channel {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.id.hash(state);
    }
}

impl Channel {
    pub fn id(&self) -> ChannelId {
        self.inner.id
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Requests sent on this connection still waiting for their response.
    pub fn pending_requests(&self) -> usize {
        self.inner.pending.lock().len()
    }

    /// False once the connection is closed or closing.
    pub fn is_active(&self) -> bool {
        !self.inner.closed.is_cancelled()
    }

    /// Closes the connection: frames already queued get a short chance to
    /// go out, waiting invocations fail with `ConnectionClosed`.
    pub fn close(&self) {
        self.inner.closed.cancel();
        self.inner.pending.lock().clear();
        // The other end of an in-process pair shares the token; its waiting
        // callers are released here as a reader task would release them.
        if let Tx::Local(l) = &self.inner.tx {
            let peer = match &l.peer {
                PeerRef::Strong(p) => Some(Arc::clone(p)),
                PeerRef::Weak(p) => p.upgrade(),
            };
            if let Some(p) = peer {
                p.pending.lock().clear();
            }
        }
    }

    /// Resolves once the connection is closed (for any reason).
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let token = self.inner.closed.clone();
        async move { token.cancelled().await }
    }

    /// Sends a request that expects no answer (the ONEWAY flag is set and an
    /// opaque assigned). Waits while the connection's write queue is full.
    pub async fn send_oneway(&self, mut cmd: RemotingCommand) -> Result<()> {
        cmd.flag = (cmd.flag | FLAG_ONEWAY) & !FLAG_RESPONSE;
        cmd.opaque = self.next_opaque();
        self.send(cmd).await
    }

    /// Like [`Channel::send_oneway`] but fails with `QueueFull` instead of
    /// waiting when the peer is not keeping up.
    pub fn try_send_oneway(&self, mut cmd: RemotingCommand) -> Result<()> {
        cmd.flag = (cmd.flag | FLAG_ONEWAY) & !FLAG_RESPONSE;
        cmd.opaque = self.next_opaque();
        self.try_queue(cmd)
    }

    /// Queues `cmd` without waiting (an in-process pair never waits).
    fn try_queue(&self, cmd: RemotingCommand) -> Result<()> {
        let sent = match &self.inner.tx {
            Tx::Socket(tx) => match tx.try_send(cmd) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(RemotingError::QueueFull {
                        addr: self.inner.peer.to_string(),
                    })
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            Tx::Local(l) => l.deliver(cmd),
        };
        if sent {
            Ok(())
        } else {
            Err(self.closed_error())
        }
    }

    /// Queues `cmd`, waiting while a socket's write queue is full.
    async fn queue(&self, cmd: RemotingCommand) -> Result<()> {
        let sent = match &self.inner.tx {
            Tx::Socket(tx) => tx.send(cmd).await.is_ok(),
            Tx::Local(l) => l.deliver(cmd),
        };
        if sent {
            Ok(())
        } else {
            Err(self.closed_error())
        }
    }

    /// Queues `cmd` exactly as given (opaque and flag untouched), e.g. a
    /// response a processor decided to send itself.
    pub async fn send(&self, cmd: RemotingCommand) -> Result<()> {
        if !self.is_active() {
            return Err(self.closed_error());
        }
        self.queue(cmd).await
    }

    /// Sends a request and waits up to `timeout` for the matching response.
    pub async fn invoke(&self, cmd: RemotingCommand, timeout: Duration) -> Result<RemotingCommand> {
        self.invoke_until(cmd, Instant::now() + timeout, timeout)
            .await
    }

    /// `invoke` with an absolute deadline; `budget` is only used in the
    /// timeout error.
    pub(crate) async fn invoke_until(
        &self,
        mut cmd: RemotingCommand,
        deadline: Instant,
        budget: Duration,
    ) -> Result<RemotingCommand> {
        let opaque = self.next_opaque();
        cmd.opaque = opaque;
        cmd.flag &= !(FLAG_RESPONSE | FLAG_ONEWAY);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().insert(opaque, tx);
        // Removes the entry however this call ends (timeout, error, drop).
        let _guard = PendingGuard {
            channel: self,
            opaque,
        };
        // `close` cancels before clearing the table, so an entry inserted
        // before this check is either seen here or cleared by `close`.
        if !self.is_active() {
            return Err(self.closed_error());
        }
        let exchange = async {
            self.queue(cmd).await?;
            rx.await.map_err(|_| self.closed_error())
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RemotingError::Timeout {
                addr: self.inner.peer.to_string(),
                millis: budget.as_millis() as u64,
            }),
        }
    }

    fn next_opaque(&self) -> i32 {
        // Wrapping like Java's counter; only uniqueness among the requests
        // outstanding on this connection matters.
        self.inner.next_opaque.fetch_add(1, Ordering::Relaxed)
    }

    fn closed_error(&self) -> RemotingError {
        RemotingError::ConnectionClosed {
            addr: self.inner.peer.to_string(),
        }
    }

    fn touch(&self) {
        let ms = self.inner.started.elapsed().as_millis() as u64;
        self.inner.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.inner.last_activity_ms.load(Ordering::Relaxed));
        self.inner.started.elapsed().saturating_sub(last)
    }
}

struct PendingGuard<'a> {
    channel: &'a Channel,
    opaque: i32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.channel.inner.pending.lock().remove(&self.opaque);
    }
}

/// Starts the reader and writer tasks for `stream` and returns its handle.
pub(crate) fn spawn_connection(stream: TcpStream, rt: &Arc<Runtime>) -> std::io::Result<Channel> {
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    // Requests and responses are small and latency-bound; batching happens
    // in the writer task instead of in the kernel.
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(rt.opts.write_queue.max(1));
    let channel = Channel {
        inner: Arc::new(Inner {
            id: ChannelId(NEXT_CHANNEL_ID.fetch_add(1, Ordering::Relaxed)),
            peer,
            local,
            tx: Tx::Socket(tx),
            pending: Mutex::new(HashMap::default()),
            next_opaque: AtomicI32::new(1),
            closed: rt.close_all.child_token(),
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
        }),
    };
    debug!(peer = %peer, local = %local, channel = %channel.id(), "connection open");
    rt.spawn_io(write_loop(channel.clone(), rx, wr));
    rt.spawn_io(read_loop(channel.clone(), rd, Arc::clone(rt)));
    Ok(channel)
}

async fn read_loop(channel: Channel, rd: OwnedReadHalf, rt: Arc<Runtime>) {
    // A peer that batches its writes sends tens of KiB at once; a larger
    // read buffer takes them in one read instead of several.
    let mut frames = FramedRead::with_capacity(
        rd,
        FrameCodec::new(rt.opts.max_frame_size),
        FIRST_READ_BUFFER,
    );
    let mut grown = false;
    let idle = rt.opts.idle_timeout;
    // Without an idle timeout the timer is simply never polled.
    let timer = tokio::time::sleep(idle.unwrap_or(Duration::from_secs(3600)));
    tokio::pin!(timer);
    let peer = channel.peer_addr();
    // Bounds the request tasks (and the requests they hold) one peer can
    // have running, so a peer that floods requests without reading the
    // answers cannot grow memory without bound.
    let in_flight = Arc::new(Semaphore::new(rt.opts.max_in_flight.max(1)));
    loop {
        tokio::select! {
            _ = channel.inner.closed.cancelled() => break,
            _ = rt.stop_reading.cancelled() => {
                // Shutting down: take no new requests, but leave the
                // connection open so in-flight responses still go out; the
                // owner closes it afterwards.
                return;
            }
            _ = &mut timer, if idle.is_some() => {
                let limit = idle.unwrap_or_default();
                let quiet = channel.idle_for();
                if quiet >= limit {
                    debug!(peer = %peer, idle_ms = quiet.as_millis() as u64, "closing idle connection");
                    break;
                }
                timer.as_mut().reset(Instant::now() + (limit - quiet));
            }
            frame = frames.next() => match frame {
                None => {
                    debug!(peer = %peer, "peer closed the connection");
                    break;
                }
                Some(Ok(cmd)) => {
                    channel.touch();
                    if !grown && !frames.read_buffer().is_empty() {
                        // More arrived with this frame: the peer pipelines.
                        // A fresh buffer (not a reserve) so that later
                        // reallocations keep the larger size.
                        let buf = frames.read_buffer_mut();
                        let mut bigger = BytesMut::with_capacity(READ_BUFFER.max(buf.len()));
                        bigger.extend_from_slice(buf);
                        *buf = bigger;
                        grown = true;
                    }
                    dispatch(&channel, cmd, &rt, &in_flight);
                }
                Some(Err(CodecError::Protocol(e))) => {
                    throttled_warn!(BAD_FRAME, peer.ip(), peer = %peer, reason = %e,
                        "closing connection after a bad frame");
                    break;
                }
                Some(Err(CodecError::Io(e))) => {
                    debug!(peer = %peer, error = %e, "read failed; closing connection");
                    break;
                }
            }
        }
    }
    channel.close();
}

fn dispatch(channel: &Channel, cmd: RemotingCommand, rt: &Runtime, in_flight: &Arc<Semaphore>) {
    if cmd.is_response() {
        let waiter = channel.inner.pending.lock().remove(&cmd.opaque);
        match waiter {
            // The caller may have given up already; nothing to do then.
            Some(tx) => drop(tx.send(cmd)),
            None => debug!(
                peer = %channel.peer_addr(),
                opaque = cmd.opaque,
                code = cmd.code,
                "response matches no outstanding request (timed out?)"
            ),
        }
        return;
    }
    let Ok(permit) = Arc::clone(in_flight).try_acquire_owned() else {
        reject_overloaded(channel, cmd);
        return;
    };
    let processor = rt.processors.lookup(cmd.code);
    let mut request = Box::pin(run_request(channel.clone(), processor, cmd, permit));
    // Most requests (a send under ASYNC_FLUSH, an offset update) finish
    // without waiting on anything: running them right here saves a task
    // spawn and a cross-thread wake per request. Only one that has to wait
    // (a long-polling pull, a SYNC_FLUSH send, a full write queue) becomes
    // a task of its own; the task polls it again with its own waker.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if request.as_mut().poll(&mut cx).is_pending() {
        rt.requests.spawn(request);
    }
}

/// Answers SYSTEM_BUSY like Java's rejected thread pool, without waiting:
/// if even the write queue is full the answer is dropped.
fn reject_overloaded(channel: &Channel, cmd: RemotingCommand) {
    let peer = channel.peer_addr();
    throttled_warn!(
        OVERLOADED,
        peer.ip(),
        peer = %peer,
        code = cmd.code,
        "too many requests in flight on one connection; answering SYSTEM_BUSY"
    );
    if cmd.is_oneway() {
        return;
    }
    let mut busy = RemotingCommand::response(
        SYSTEM_BUSY,
        "[OVERLOAD]system busy, too many requests in flight on this connection".to_string(),
    );
    busy.opaque = cmd.opaque;
    busy.serialize_type = cmd.serialize_type;
    if channel.try_queue(busy).is_err() {
        debug!(peer = %channel.peer_addr(), "write queue full; SYSTEM_BUSY answer dropped");
    }
}

/// Runs one request and queues its response; never panics outward. The
/// permit is held until the response is queued.
async fn run_request(
    channel: Channel,
    processor: Option<Arc<dyn RequestProcessor>>,
    request: RemotingCommand,
    _permit: OwnedSemaphorePermit,
) {
    let code = request.code;
    let opaque = request.opaque;
    let oneway = request.is_oneway();
    let serialize_type = request.serialize_type;
    let peer = channel.peer_addr();
    let response = match processor {
        None => Some(RemotingCommand::response(
            REQUEST_CODE_NOT_SUPPORTED,
            format!("request type {code} not supported"),
        )),
        Some(processor) => {
            let ctx = RequestContext::new(channel.clone());
            // The processor call itself is inside the async block so that a
            // panic before it returns its future is caught as well.
            let run = AssertUnwindSafe(async move { processor.process(ctx, request).await });
            match run.catch_unwind().await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => {
                    throttled_warn!(PROCESSOR_FAILED, code, peer = %peer, code, error = %e,
                        "request processor failed");
                    Some(RemotingCommand::response(SYSTEM_ERROR, e.to_string()))
                }
                Err(panic) => {
                    let msg = panic_message(panic.as_ref());
                    throttled_error!(PROCESSOR_PANICKED, code, peer = %peer, code, panic = %msg,
                        "request processor panicked");
                    Some(RemotingCommand::response(
                        SYSTEM_ERROR,
                        format!("processor panicked: {msg}"),
                    ))
                }
            }
        }
    };
    if oneway {
        return;
    }
    if let Some(mut response) = response {
        response.opaque = opaque;
        response.flag = (response.flag | FLAG_RESPONSE) & !FLAG_ONEWAY;
        response.serialize_type = serialize_type;
        if channel.send(response).await.is_err() {
            debug!(peer = %peer, code, "connection closed before the response was sent");
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Drains the queue, batching whatever is ready into one vectored write.
async fn write_loop(
    channel: Channel,
    mut rx: mpsc::Receiver<RemotingCommand>,
    mut wr: OwnedWriteHalf,
) {
    let mut batch = Batch::default();
    let peer = channel.peer_addr();
    loop {
        let first = tokio::select! {
            biased;
            cmd = rx.recv() => cmd,
            _ = channel.inner.closed.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(&first);
        batch.drain_ready(&mut rx);
        if !batch.is_full() {
            // Let tasks that are already runnable (callers woken by the
            // responses just read) queue their frames first: one write of
            // many frames instead of a syscall, and a loopback/NIC round,
            // per frame. Costs one trip through the run queue.
            tokio::task::yield_now().await;
            batch.drain_ready(&mut rx);
        }
        if let Err(e) = batch.write_to(&mut wr).await {
            debug!(peer = %peer, error = %e, "write failed; closing connection");
            channel.close();
            return;
        }
        channel.touch();
    }
    // Closing: give frames that are already queued (responses of requests
    // that finished during a graceful shutdown) a bounded chance to go out.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        batch.push(&cmd);
    }
    let flush = async {
        batch.write_to(&mut wr).await?;
        wr.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, flush)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        debug!(peer = %peer, error = %e, "final flush failed");
    }
    channel.close();
    debug!(peer = %peer, channel = %channel.id(), "connection closed");
}

/// Frames waiting to be written: small pieces are copied into `buf`, large
/// bodies are kept as their own `Bytes` so they are never copied.
#[derive(Default)]
struct Batch {
    buf: BytesMut,
    segments: VecDeque<Bytes>,
    frames: usize,
    bytes: usize,
}

impl Batch {
    fn is_full(&self) -> bool {
        self.frames >= BATCH_FRAMES || self.bytes >= BATCH_BYTES
    }

    /// Adds whatever is queued right now, up to the batch limits.
    fn drain_ready(&mut self, rx: &mut mpsc::Receiver<RemotingCommand>) {
        while !self.is_full() {
            match rx.try_recv() {
                Ok(cmd) => self.push(&cmd),
                Err(_) => break,
            }
        }
    }

    fn push(&mut self, cmd: &RemotingCommand) {
        let before = self.buf.len();
        cmd.encode_prefix(&mut self.buf);
        self.bytes += self.buf.len() - before + cmd.body_len();
        self.frames += 1;
        if let Some(body) = &cmd.body {
            if body.len() < COPY_BODY_LIMIT {
                self.buf.extend_from_slice(body);
            } else {
                self.segments.push_back(self.buf.split().freeze());
                self.segments.push_back(body.clone());
            }
        }
    }

    async fn write_to<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.segments.push_back(self.buf.split().freeze());
        }
        self.frames = 0;
        self.bytes = 0;
        while !self.segments.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (slot, seg) in iov.iter_mut().zip(self.segments.iter()) {
                *slot = IoSlice::new(seg);
                n_iov += 1;
            }
            let mut written = wr.write_vectored(&iov[..n_iov]).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while written > 0 {
                let Some(front) = self.segments.front_mut() else {
                    break;
                };
                if written >= front.len() {
                    written -= front.len();
                    self.segments.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn cmd(opaque: i32, body_len: usize) -> RemotingCommand {
        let body: Bytes = (0..body_len).map(|i| (i % 253) as u8).collect();
        let mut c = RemotingCommand::request(10).with_body(body);
        c.opaque = opaque;
        c
    }

    #[tokio::test]
    async fn batch_writes_frames_in_order_through_partial_writes() {
        // Mixed sizes: some bodies are copied, some written from their own buffer.
        let cmds: Vec<_> = [
            0,
            10,
            COPY_BODY_LIMIT,
            100_000,
            3,
            COPY_BODY_LIMIT - 1,
            200_000,
        ]
        .iter()
        .enumerate()
        .map(|(i, &n)| cmd(i as i32, n))
        .collect();
        let mut expected = BytesMut::new();
        let mut batch = Batch::default();
        for c in &cmds {
            c.encode(&mut expected);
            batch.push(c);
        }
        assert_eq!(batch.frames, cmds.len());
        assert_eq!(batch.bytes, expected.len());
        // A tiny pipe forces many short writes that end mid-segment.
        let (mut w, mut r) = tokio::io::duplex(1000);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.map(|_| got)
        });
        batch.write_to(&mut w).await.unwrap();
        assert_eq!((batch.frames, batch.bytes), (0, 0));
        assert!(batch.segments.is_empty());
        drop(w);
        let got = reader.await.unwrap().unwrap();
        assert_eq!(got, expected.to_vec());
    }

    #[tokio::test]
    async fn batch_is_reusable_after_a_write() {
        let (mut w, mut r) = tokio::io::duplex(1 << 20);
        let mut batch = Batch::default();
        let mut expected = BytesMut::new();
        for round in 0..3 {
            let c = cmd(round, 50_000);
            c.encode(&mut expected);
            batch.push(&c);
            batch.write_to(&mut w).await.unwrap();
        }
        drop(w);
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expected.to_vec());
    }
}
