//! apogee-proxy owns Apogee's RocketMQ 5 gRPC endpoint: the
//! `apache.rocketmq.v2` API (its `.proto` files are compiled by `build.rs`),
//! the `MessagingService` that official gRPC clients talk to, their
//! Telemetry sessions, and the translation of every call into remoting
//! requests to brokers found through the NameServer. The same code serves a
//! standalone `apogee proxy` in front of a cluster and the "local" endpoint
//! inside `apogee standalone` / `apogee broker`, which simply points it at
//! the in-process broker's NameServer; it never links the broker crate.

pub mod ack;
pub mod backend;
pub mod convert;
pub mod error;
pub mod frames;
pub mod receipt;
pub mod service;
pub mod session;
pub mod tls;

/// The generated `apache.rocketmq.v2` types, server and client.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("apache.rocketmq.v2");
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::code::request_code;
use apogee_protocol::header::CheckTransactionStateRequestHeader;
use apogee_protocol::message::decode_stored;
use apogee_remoting::{processor_fn, ProcessorRegistry};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use backend::Backend;
pub use error::ProxyError;
use session::{Sessions, TxInfo};

/// Default gRPC port (`grpcServerPort`), as Apache's proxy.
pub const DEFAULT_GRPC_PORT: u16 = 8081;

/// What a proxy needs to start.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// NameServer addresses, `host:port;host:port`.
    pub namesrv_addr: String,
    /// Where to listen for gRPC.
    pub listen: SocketAddr,
    /// `host:port` put into routes instead of the address a client used
    /// (for NAT and containers).
    pub advertised_addr: Option<String>,
    /// Largest message body accepted (`maxMessageSize`).
    pub max_body_size: usize,
    /// PEM certificate chain and private key for TLS connections; `None`:
    /// a self-signed certificate made at start (the official clients do
    /// not verify the server's certificate unless told to).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Servers in this process by the address routes name them with (the
    /// broker of `apogee broker` / `apogee standalone`): reached without a
    /// socket, which is Apache's "local" proxy mode.
    pub local_servers: Vec<(String, apogee_remoting::LocalEndpoint)>,
    /// Threads serving gRPC connections (`grpcWorkerLoopNum`), each with a
    /// single-threaded runtime of its own: a connection, its streams and
    /// the calls it makes to an in-process broker stay on one thread, so a
    /// call costs no wake-up of another thread.
    pub event_loops: usize,
}

/// `grpcWorkerLoopNum` when not configured: one per CPU.
pub fn default_event_loops() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl ProxyConfig {
    pub fn new(namesrv_addr: impl Into<String>, listen: SocketAddr) -> Self {
        ProxyConfig {
            namesrv_addr: namesrv_addr.into(),
            listen,
            advertised_addr: None,
            max_body_size: 4 * 1024 * 1024,
            tls: None,
            local_servers: Vec::new(),
            event_loops: default_event_loops(),
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for gRPC on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Backend(#[from] ProxyError),
    #[error("gRPC TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot start a gRPC event-loop thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running gRPC endpoint.
pub struct ProxyServer {
    local_addr: SocketAddr,
    /// Asks every event loop to stop taking calls and finish.
    stop: CancellationToken,
    /// Ends what is left (open streams) when the graceful stop takes long.
    force: CancellationToken,
    /// One per event-loop thread: resolves when its runtime has ended.
    loops: Vec<oneshot::Receiver<()>>,
    heartbeat: JoinHandle<()>,
    backend: Arc<Backend>,
}

/// Smallest accepted gRPC frame limit.
const MIN_FRAME_LIMIT: usize = 16 * 1024 * 1024;
/// How often the proxy re-registers its producer group with brokers.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

impl ProxyServer {
    /// Binds `config.listen` and serves until [`shutdown`](Self::shutdown).
    pub async fn start(config: ProxyConfig) -> Result<ProxyServer, StartError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        // One port for TLS and plaintext, as Apache's proxy: the Go client
        // only speaks TLS, the Node.js and Python ones only plaintext.
        let tls = match &config.tls {
            Some((cert, key)) => tls::Tls::from_pem_files(cert, key)?,
            None => tls::Tls::self_signed()?,
        };

        let sessions = Arc::new(Sessions::default());
        let processors = ProcessorRegistry::new();
        let backend = Backend::new(&config.namesrv_addr, Arc::clone(&processors))?;
        for (addr, endpoint) in &config.local_servers {
            backend.connect_locally(addr, endpoint.clone());
        }
        register_check_back(&processors, &backend, &sessions);

        // tonic refuses frames over 4 MiB by default, which a body of
        // exactly maxMessageSize already is once wrapped: leave room for a
        // batch so that an oversized body gets MESSAGE_BODY_TOO_LARGE, not a
        // transport error.
        let max_frame = config.max_body_size.saturating_mul(4).max(MIN_FRAME_LIMIT);
        let event_loops = config.event_loops.max(1);
        let svc = Arc::new(service::MessagingService::new(
            Arc::clone(&backend),
            Arc::clone(&sessions),
            config,
        ));
        let stop = CancellationToken::new();
        let force = CancellationToken::new();
        // Every loop accepts on its own copy of the listening socket: the
        // kernel hands each connection to one of them.
        let listener = listener.into_std().map_err(|source| StartError::Bind {
            addr: local_addr,
            source,
        })?;
        let mut loops = Vec::with_capacity(event_loops);
        // A start that fails half-way ends the loops it already started.
        let started = force.clone().drop_guard();
        for i in 0..event_loops {
            let listener = listener.try_clone().map_err(StartError::Thread)?;
            let server =
                pb::messaging_service_server::MessagingServiceServer::from_arc(Arc::clone(&svc))
                    .max_decoding_message_size(max_frame);
            let (tls, stop, force) = (tls.clone(), stop.clone(), force.clone());
            let (done_tx, done_rx) = oneshot::channel();
            let (ready_tx, ready_rx) = oneshot::channel();
            std::thread::Builder::new()
                .name(format!("apogee-grpc-{i}"))
                .spawn(move || {
                    event_loop(listener, tls, server, stop, force, ready_tx);
                    let _ = done_tx.send(());
                })
                .map_err(StartError::Thread)?;
            loops.push(done_rx);
            // A loop that cannot run is a failed start, not a log line.
            match ready_rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StartError::Thread(e)),
                Err(_) => {
                    return Err(StartError::Thread(std::io::Error::other(
                        "gRPC event loop ended before it started",
                    )))
                }
            }
        }
        started.disarm();
        let hb = Arc::clone(&backend);
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                tick.tick().await;
                hb.heartbeat().await;
            }
        });
        tracing::info!(%local_addr, "gRPC endpoint listening");
        Ok(ProxyServer {
            local_addr,
            stop,
            force,
            loops,
            heartbeat,
            backend,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting calls, ends open streams and closes broker connections.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.heartbeat.abort();
        let all = futures::future::join_all(self.loops);
        tokio::pin!(all);
        // Open streams could hold the server for long: bounded wait.
        if tokio::time::timeout(Duration::from_secs(3), &mut all)
            .await
            .is_err()
        {
            self.force.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(3), &mut all).await;
        }
        self.backend.close().await;
    }
}

/// One event-loop thread: a single-threaded runtime serving the
/// connections its copy of the listener accepts, until `stop` (gracefully)
/// or `force`; dropping the runtime then ends whatever is left on it.
/// `ready` says whether it could start.
fn event_loop(
    listener: std::net::TcpListener,
    tls: tls::Tls,
    server: pb::messaging_service_server::MessagingServiceServer<service::MessagingService>,
    stop: CancellationToken,
    force: CancellationToken,
    ready: oneshot::Sender<std::io::Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        // Registered with this thread's reactor, not the caller's.
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let incoming = tls::incoming(listener, Some(tls));
        let serve = tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
        tokio::select! {
            result = serve => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "gRPC server stopped");
                }
            }
            _ = force.cancelled() => {}
        }
    });
}

/// CHECK_TRANSACTION_STATE from a broker becomes a
/// RecoverOrphanedTransactionCommand on a producer's Telemetry stream.
fn register_check_back(
    processors: &ProcessorRegistry,
    backend: &Arc<Backend>,
    sessions: &Arc<Sessions>,
) {
    let backend = Arc::downgrade(backend);
    let sessions = Arc::clone(sessions);
    processors.register(
        request_code::CHECK_TRANSACTION_STATE,
        processor_fn(move |ctx, req| {
            let backend = backend.clone();
            let sessions = Arc::clone(&sessions);
            async move {
                let h: CheckTransactionStateRequestHeader = req.decode_header()?;
                let Some(body) = req.body.as_ref() else {
                    return Ok(None);
                };
                let (msg, _) = decode_stored(body, false)?;
                let broker_addr = h
                    .rpc
                    .broker_name
                    .as_deref()
                    .and_then(|n| backend.upgrade()?.master_addr_by_name(n).ok())
                    .unwrap_or_else(|| ctx.peer_addr().to_string());
                let transaction_id = session::transaction_id(
                    h.offset_msg_id.as_deref().unwrap_or(&msg.offset_msg_id()),
                    h.tran_state_table_offset,
                );
                let topic = msg.topic.clone();
                sessions.remember_tx(
                    &transaction_id,
                    TxInfo {
                        broker_addr,
                        commit_log_offset: h.commit_log_offset,
                        tran_state_table_offset: h.tran_state_table_offset,
                        topic: topic.clone(),
                        at: std::time::Instant::now(),
                    },
                );
                let Some((outbox, lang)) = sessions.producer_for(&topic) else {
                    tracing::debug!(%topic, "transaction check: no gRPC producer connected");
                    return Ok(None);
                };
                let resource = pb::Resource {
                    name: topic,
                    ..Default::default()
                };
                let cmd = pb::TelemetryCommand {
                    status: None,
                    command: Some(
                        pb::telemetry_command::Command::RecoverOrphanedTransactionCommand(
                            pb::RecoverOrphanedTransactionCommand {
                                message: Some(convert::to_pb_message(msg, resource, None, lang)),
                                transaction_id,
                            },
                        ),
                    ),
                };
                // A full outbox drops the check; the broker asks again.
                let _ = outbox.try_send(Ok(cmd));
                Ok(None)
            }
        }),
    );
}
