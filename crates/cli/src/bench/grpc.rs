//! The gRPC side of `apogee bench produce --grpc` and `apogee bench consume
//! --grpc`: a client of the `apache.rocketmq.v2.MessagingService` messages
//! that `apogee-proxy` generates, doing what an official RocketMQ 5 client
//! does per message (SendMessage; SimpleConsumer-style ReceiveMessage +
//! AckMessage with one AckMessage per received batch), so the figures
//! compare with the remoting ones on the same broker.
//!
//! The client shares the machine with the server it measures, so its own CPU
//! per message bounds the figure; it therefore speaks gRPC over `h2`
//! directly instead of through tonic's channel. Each call runs in the
//! caller's task (tonic's channel hands every request to a buffer worker
//! task, and hyper spawns a task per request to await its response), and the
//! frames a connection task writes in one turn leave in one write (h2 writes
//! every DATA frame above 256 bytes separately). On the wire it is the same
//! gRPC as any client's: one HTTP/2 stream per call with the request headers
//! (`content-type`, `te`, `grpc-timeout`, `x-mq-client-id`), one
//! length-prefixed protobuf message, and the status from the trailers; every
//! call also has a local deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use apogee_proxy::convert;
use apogee_proxy::pb::{self, Code};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, TE, USER_AGENT};
use http::{Method, Request, Uri};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Why a gRPC call of the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("bad gRPC endpoint {addr:?}: {source}")]
    Endpoint {
        addr: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("cannot connect to the gRPC endpoint {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Handshake {
        addr: String,
        #[source]
        source: h2::Error,
    },
    #[error("gRPC transport: {0}")]
    Transport(#[from] h2::Error),
    #[error("{call}: gRPC status {code} {message}")]
    Status {
        call: &'static str,
        code: String,
        message: String,
    },
    #[error("{call}: {what}")]
    Protocol { call: &'static str, what: String },
    #[error("{call}: no answer within the {after:?} deadline")]
    Deadline { call: &'static str, after: Duration },
    #[error("{call}: {code} {message}")]
    Refused {
        call: &'static str,
        code: String,
        message: String,
    },
}

type Result<T> = std::result::Result<T, GrpcError>;

/// The largest message accepted either way (as the previous tonic client).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// HTTP/2 receive windows: hyper's client defaults (what tonic used), so a
/// ReceiveMessage batch never waits for a WINDOW_UPDATE.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// Write coalescing: frames are gathered up to this many bytes per write.
const WRITE_BUFFER: usize = 64 * 1024;

/// The MessagingService methods the benchmark calls.
#[derive(Clone, Copy)]
enum Method5 {
    QueryRoute,
    QueryAssignment,
    SendMessage,
    ReceiveMessage,
    AckMessage,
}

impl Method5 {
    const ALL: [Method5; 5] = [
        Method5::QueryRoute,
        Method5::QueryAssignment,
        Method5::SendMessage,
        Method5::ReceiveMessage,
        Method5::AckMessage,
    ];

    fn name(self) -> &'static str {
        match self {
            Method5::QueryRoute => "QueryRoute",
            Method5::QueryAssignment => "QueryAssignment",
            Method5::SendMessage => "SendMessage",
            Method5::ReceiveMessage => "ReceiveMessage",
            Method5::AckMessage => "AckMessage",
        }
    }
}

/// A per-call deadline and the request headers that carry it, built once
/// and reused by every call with that deadline.
pub struct Deadline {
    after: Duration,
    headers: HeaderMap,
}

/// One client identity over `connections` HTTP/2 connections to the
/// endpoint, used round-robin (an official client uses one per endpoint).
pub struct GrpcClient {
    connections: Vec<h2::client::SendRequest<Bytes>>,
    next: AtomicUsize,
    /// The request URI of each method (`Method5` order).
    uris: Vec<Uri>,
    client_id: HeaderValue,
}

/// What one ReceiveMessage returned.
pub struct Received {
    pub messages: Vec<pb::Message>,
}

fn refused(call: &'static str, s: Option<pb::Status>) -> GrpcError {
    let s = s.unwrap_or_default();
    GrpcError::Refused {
        call,
        code: Code::try_from(s.code)
            .map(|c| c.as_str_name().to_owned())
            .unwrap_or_else(|_| s.code.to_string()),
        message: s.message,
    }
}

fn is_ok(s: &Option<pb::Status>) -> bool {
    s.as_ref().is_some_and(|s| s.code == Code::Ok as i32)
}

fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        name: name.to_owned(),
        ..Default::default()
    })
}

/// The gRPC `grpc-timeout` value for `d`: at most 8 digits and a unit.
fn grpc_timeout(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 100_000_000 {
        format!("{}m", ms.max(1))
    } else {
        format!("{}S", (d.as_secs()).min(99_999_999))
    }
}

/// One gRPC message as it goes on the wire: uncompressed flag, length, bytes.
fn frame(msg: &impl prost::Message) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    msg.encode_raw(&mut buf);
    buf.freeze()
}

impl GrpcClient {
    /// Connects to `addr` (`host:port`, plaintext HTTP/2).
    pub async fn connect(addr: &str, connections: usize) -> Result<GrpcClient> {
        let uris = Method5::ALL
            .iter()
            .map(|m| {
                format!(
                    "http://{addr}/apache.rocketmq.v2.MessagingService/{}",
                    m.name()
                )
                .parse::<Uri>()
                .map_err(|source| GrpcError::Endpoint {
                    addr: addr.to_owned(),
                    source,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut handles = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            handles.push(connect_one(addr).await?);
        }
        let id = format!(
            "apogee-bench@{}@{}",
            std::process::id(),
            super::produce::now_millis()
        );
        let client_id =
            HeaderValue::try_from(id).unwrap_or_else(|_| HeaderValue::from_static("apogee-bench"));
        Ok(GrpcClient {
            connections: handles,
            next: AtomicUsize::new(0),
            uris,
            client_id,
        })
    }

    /// The request headers of every call with deadline `after`.
    pub fn deadline(&self, after: Duration) -> Deadline {
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(USER_AGENT, HeaderValue::from_static("apogee-bench"));
        if let Ok(v) = HeaderValue::try_from(grpc_timeout(after)) {
            headers.insert(HeaderName::from_static("grpc-timeout"), v);
        }
        headers.insert(
            HeaderName::from_static("x-mq-client-id"),
            self.client_id.clone(),
        );
        Deadline { after, headers }
    }

    /// Sends one request message and returns the response stream once the
    /// response headers said the call goes on.
    async fn start(
        &self,
        method: Method5,
        msg: &impl prost::Message,
        deadline: &Deadline,
    ) -> Result<Option<h2::RecvStream>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut send = self.connections[i].clone().ready().await?;
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uris[method as usize].clone();
        *req.headers_mut() = deadline.headers.clone();
        let (response, mut stream) = send.send_request(req, false)?;
        stream.send_data(frame(msg), true)?;
        let (head, body) = response.await?.into_parts();
        let call = method.name();
        if head.status != http::StatusCode::OK {
            return Err(GrpcError::Protocol {
                call,
                what: format!("HTTP status {}", head.status),
            });
        }
        // A trailers-only response: the status is in the headers.
        if head.headers.contains_key("grpc-status") {
            check_status(call, &head.headers)?;
            return Ok(None);
        }
        Ok(Some(body))
    }

    /// One unary call: the request, then the response message and status.
    async fn unary<T: prost::Message + Default>(
        &self,
        method: Method5,
        msg: &impl prost::Message,
        deadline: &Deadline,
    ) -> Result<T> {
        let call = method.name();
        let answer = async {
            let Some(mut body) = self.start(method, msg, deadline).await? else {
                return Err(GrpcError::Protocol {
                    call,
                    what: "no response message".to_owned(),
                });
            };
            let mut response = None;
            read_messages(call, &mut body, |m| {
                if response.is_some() {
                    return Err(GrpcError::Protocol {
                        call,
                        what: "more than one response message".to_owned(),
                    });
                }
                response = Some(decode::<T>(call, m)?);
                Ok(())
            })
            .await?;
            response.ok_or_else(|| GrpcError::Protocol {
                call,
                what: "no response message".to_owned(),
            })
        };
        with_deadline(call, deadline.after, answer).await
    }

    /// The broker names a consumer group should receive `topic` from
    /// (QueryAssignment); fails fast when the endpoint or topic is missing.
    pub async fn assignments(&self, topic: &str, group: &str) -> Result<Vec<String>> {
        let req = pb::QueryAssignmentRequest {
            topic: resource(topic),
            group: resource(group),
            endpoints: None,
        };
        let deadline = self.deadline(Duration::from_secs(5));
        let resp: pb::QueryAssignmentResponse = self
            .unary(Method5::QueryAssignment, &req, &deadline)
            .await?;
        if !is_ok(&resp.status) {
            return Err(refused("QueryAssignment", resp.status));
        }
        let mut brokers: Vec<String> = resp
            .assignments
            .into_iter()
            .filter_map(|a| a.message_queue?.broker.map(|b| b.name))
            .collect();
        brokers.dedup();
        Ok(brokers)
    }

    /// Checks that `topic` has a route (QueryRoute).
    pub async fn route(&self, topic: &str) -> Result<usize> {
        let req = pb::QueryRouteRequest {
            topic: resource(topic),
            endpoints: None,
        };
        let deadline = self.deadline(Duration::from_secs(5));
        let resp: pb::QueryRouteResponse = self.unary(Method5::QueryRoute, &req, &deadline).await?;
        if !is_ok(&resp.status) {
            return Err(refused("QueryRoute", resp.status));
        }
        Ok(resp.message_queues.len())
    }

    /// One SendMessage carrying `messages`; every entry must be OK.
    pub async fn send(&self, messages: Vec<pb::Message>, deadline: &Deadline) -> Result<()> {
        let req = pb::SendMessageRequest { messages };
        let resp: pb::SendMessageResponse =
            self.unary(Method5::SendMessage, &req, deadline).await?;
        if !is_ok(&resp.status) {
            let failed = resp.entries.into_iter().find(|e| !is_ok(&e.status));
            return Err(refused(
                "SendMessage",
                failed.and_then(|e| e.status).or(resp.status),
            ));
        }
        Ok(())
    }

    /// One ReceiveMessage from `broker`'s queues of `topic` (long polling
    /// `poll`, within `deadline`); MESSAGE_NOT_FOUND is an empty result.
    #[allow(clippy::too_many_arguments)]
    pub async fn receive(
        &self,
        group: &str,
        topic: &str,
        broker: &str,
        batch: i32,
        invisible: Duration,
        poll: Duration,
        deadline: &Deadline,
    ) -> Result<Received> {
        use pb::receive_message_response::Content;
        let call = Method5::ReceiveMessage.name();
        let req = pb::ReceiveMessageRequest {
            group: resource(group),
            message_queue: Some(pb::MessageQueue {
                topic: resource(topic),
                id: -1,
                permission: pb::Permission::ReadWrite as i32,
                broker: Some(pb::Broker {
                    name: broker.to_owned(),
                    id: 0,
                    endpoints: None,
                }),
                accept_message_types: vec![],
            }),
            filter_expression: Some(pb::FilterExpression {
                r#type: pb::FilterType::Tag as i32,
                expression: "*".to_owned(),
            }),
            batch_size: batch,
            invisible_duration: Some(convert::duration(invisible.as_millis() as i64)),
            auto_renew: false,
            long_polling_timeout: Some(convert::duration(poll.as_millis() as i64)),
            attempt_id: None,
        };
        let answer = async {
            let mut messages = Vec::with_capacity(batch.max(0) as usize);
            let Some(mut body) = self.start(Method5::ReceiveMessage, &req, deadline).await? else {
                return Ok((messages, None));
            };
            let mut status = None;
            read_messages(call, &mut body, |m| {
                match decode::<pb::ReceiveMessageResponse>(call, m)?.content {
                    Some(Content::Status(s)) => status = Some(s),
                    Some(Content::Message(m)) => messages.push(m),
                    Some(Content::DeliveryTimestamp(_)) | None => {}
                }
                Ok(())
            })
            .await?;
            Ok((messages, status))
        };
        let (messages, status) = with_deadline(call, deadline.after, answer).await?;
        match status {
            Some(s) if s.code == Code::MessageNotFound as i32 => Ok(Received { messages }),
            s if is_ok(&s) => Ok(Received { messages }),
            s => Err(refused("ReceiveMessage", s)),
        }
    }

    /// One AckMessage for every message of a batch (whose ids and receipt
    /// handles move into the request).
    pub async fn ack(
        &self,
        group: &str,
        topic: &str,
        messages: Vec<pb::Message>,
        deadline: &Deadline,
    ) -> Result<()> {
        let entries = messages
            .into_iter()
            .filter_map(|m| {
                let sys = m.system_properties?;
                Some(pb::AckMessageEntry {
                    message_id: sys.message_id,
                    receipt_handle: sys.receipt_handle?,
                    lite_topic: None,
                })
            })
            .collect::<Vec<_>>();
        if entries.is_empty() {
            return Ok(());
        }
        let req = pb::AckMessageRequest {
            group: resource(group),
            topic: resource(topic),
            entries,
        };
        let resp: pb::AckMessageResponse = self.unary(Method5::AckMessage, &req, deadline).await?;
        if !is_ok(&resp.status) {
            let failed = resp.entries.into_iter().find(|e| !is_ok(&e.status));
            return Err(refused(
                "AckMessage",
                failed.and_then(|e| e.status).or(resp.status),
            ));
        }
        Ok(())
    }
}

async fn with_deadline<T>(
    call: &'static str,
    after: Duration,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, f).await {
        Ok(r) => r,
        // Dropping the call resets its stream, as a cancelled call does.
        Err(_) => Err(GrpcError::Deadline { call, after }),
    }
}

fn decode<T: prost::Message + Default>(call: &'static str, m: Bytes) -> Result<T> {
    T::decode(m).map_err(|e| GrpcError::Protocol {
        call,
        what: format!("bad response message: {e}"),
    })
}

/// The call's status from the trailers.
/// Reads a response body to its end: `each` gets every length-prefixed
/// message as it completes, then the trailers' status is checked and
/// nothing may be left half-received.
async fn read_messages(
    call: &'static str,
    body: &mut h2::RecvStream,
    mut each: impl FnMut(Bytes) -> Result<()>,
) -> Result<()> {
    let mut frames = Deframer::default();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        frames.push(chunk);
        while let Some(m) = frames.next(call)? {
            each(m)?;
        }
    }
    trailers(call, body).await?;
    frames.finish(call)
}

async fn trailers(call: &'static str, body: &mut h2::RecvStream) -> Result<()> {
    match body.trailers().await? {
        Some(t) => check_status(call, &t),
        None => Err(GrpcError::Protocol {
            call,
            what: "no trailers (grpc-status)".to_owned(),
        }),
    }
}

fn check_status(call: &'static str, headers: &HeaderMap) -> Result<()> {
    let code = headers
        .get("grpc-status")
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    if code == b"0" {
        return Ok(());
    }
    let message = headers
        .get("grpc-message")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    Err(GrpcError::Status {
        call,
        code: String::from_utf8_lossy(code).into_owned(),
        message,
    })
}

/// Splits a response body into gRPC messages; a message that arrives whole
/// in one DATA frame is sliced from it, not copied.
#[derive(Default)]
struct Deframer {
    /// The rest of the latest DATA frame.
    buf: Bytes,
    /// A message that spans DATA frames, gathered.
    partial: BytesMut,
}

impl Deframer {
    fn push(&mut self, chunk: Bytes) {
        if self.buf.is_empty() && self.partial.is_empty() {
            self.buf = chunk;
        } else {
            let rest = std::mem::take(&mut self.buf);
            self.partial.extend_from_slice(&rest);
            self.partial.extend_from_slice(&chunk);
        }
    }

    /// The length of the message at the start of `b`, once its prefix is there.
    fn length(call: &'static str, b: &[u8]) -> Result<Option<usize>> {
        if b.len() < 5 {
            return Ok(None);
        }
        if b[0] != 0 {
            return Err(GrpcError::Protocol {
                call,
                what: "compressed message, but none was asked for".to_owned(),
            });
        }
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(GrpcError::Protocol {
                call,
                what: format!("{len}-byte message over the {MAX_MESSAGE}-byte limit"),
            });
        }
        Ok(Some(len))
    }

    fn next(&mut self, call: &'static str) -> Result<Option<Bytes>> {
        if !self.partial.is_empty() {
            return match Self::length(call, &self.partial)? {
                Some(len) if self.partial.len() >= 5 + len => {
                    let mut m = self.partial.split_to(5 + len).freeze();
                    m.advance(5);
                    Ok(Some(m))
                }
                Some(len) => {
                    self.partial.reserve(5 + len - self.partial.len());
                    Ok(None)
                }
                None => Ok(None),
            };
        }
        match Self::length(call, &self.buf)? {
            Some(len) if self.buf.len() >= 5 + len => {
                let mut m = self.buf.split_to(5 + len);
                m.advance(5);
                Ok(Some(m))
            }
            _ => Ok(None),
        }
    }

    /// The body ended: nothing may be left half-received.
    fn finish(&self, call: &'static str) -> Result<()> {
        if self.buf.is_empty() && self.partial.is_empty() {
            Ok(())
        } else {
            Err(GrpcError::Protocol {
                call,
                what: "response body ends inside a message".to_owned(),
            })
        }
    }
}

/// Opens one HTTP/2 connection and starts the task that drives it.
async fn connect_one(addr: &str) -> Result<h2::client::SendRequest<Bytes>> {
    let connect_err = |source| GrpcError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect_err)?;
    tcp.set_nodelay(true).map_err(connect_err)?;
    let (read, write) = tcp.into_split();
    let out = Arc::new(parking_lot::Mutex::new(Outgoing {
        half: write,
        buf: BytesMut::with_capacity(WRITE_BUFFER),
    }));
    let io = Io {
        read,
        out: Arc::clone(&out),
    };
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .enable_push(false)
        .max_frame_size(64 * 1024)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|source| GrpcError::Handshake {
            addr: addr.to_owned(),
            source,
        })?;
    tokio::spawn(Driver { connection, out });
    Ok(send)
}

/// The bytes h2 wrote and the socket they go to.
struct Outgoing {
    half: OwnedWriteHalf,
    buf: BytesMut,
}

impl Outgoing {
    /// Writes out everything gathered (or registers for writability).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.buf.is_empty() {
            let n = ready!(Pin::new(&mut self.half).poll_write(cx, &self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.buf.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Takes as much of `data` as the buffer holds, draining it first when full.
    fn poll_take(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.buf.len() >= WRITE_BUFFER {
            ready!(self.poll_drain(cx))?;
        }
        let n = data
            .len()
            .min(WRITE_BUFFER - self.buf.len().min(WRITE_BUFFER));
        self.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }
}

/// The connection's socket as h2 sees it: reads go straight through; writes
/// are gathered and leave when the connection task's turn ends (see
/// [`Driver`]), so one turn that queued many frames makes one write.
struct Io {
    read: OwnedReadHalf,
    out: Arc<parking_lot::Mutex<Outgoing>>,
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.out.lock().poll_take(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let mut out = self.out.lock();
        let mut taken = 0;
        for b in bufs {
            match out.poll_take(cx, b) {
                Poll::Ready(Ok(n)) => {
                    taken += n;
                    if n < b.len() {
                        break;
                    }
                }
                Poll::Ready(Err(e)) if taken == 0 => return Poll::Ready(Err(e)),
                Poll::Pending if taken == 0 => return Poll::Pending,
                _ => break,
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// h2 flushes whenever its own buffer fills (after every large DATA
    /// frame); the real write waits for the end of the turn.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut out = self.out.lock();
        ready!(out.poll_drain(cx))?;
        Pin::new(&mut out.half).poll_shutdown(cx)
    }
}

/// The task of one connection: polls h2, then writes what that turn queued.
struct Driver {
    connection: h2::client::Connection<Io, Bytes>,
    out: Arc<parking_lot::Mutex<Outgoing>>,
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let done = Pin::new(&mut self.connection).poll(cx);
        // A write that would block registers this task for writability.
        if let Poll::Ready(Err(e)) = self.out.lock().poll_drain(cx) {
            tracing::debug!(error = %e, "gRPC connection write failed");
            return Poll::Ready(());
        }
        match done {
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "gRPC connection ended");
                Poll::Ready(())
            }
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A normal message for SendMessage, as an official client builds it.
pub fn message(
    topic: &str,
    body: &Bytes,
    message_id: String,
    tag: Option<&str>,
    key: Option<String>,
) -> pb::Message {
    pb::Message {
        topic: resource(topic),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            tag: tag.map(str::to_owned),
            keys: key.into_iter().collect(),
            message_id,
            body_encoding: pb::Encoding::Identity as i32,
            message_type: pb::MessageType::Normal as i32,
            born_timestamp: Some(convert::timestamp(super::produce::now_millis())),
            ..Default::default()
        }),
        body: body.clone(),
    }
}
