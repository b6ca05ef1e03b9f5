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
}

/// A running gRPC endpoint.
pub struct ProxyServer {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    serve: JoinHandle<()>,
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
        let svc =
            service::MessagingService::new(Arc::clone(&backend), Arc::clone(&sessions), config);
        let incoming = tls::incoming(listener, Some(tls));
        let (tx, rx) = oneshot::channel::<()>();

        let serve = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(
                    pb::messaging_service_server::MessagingServiceServer::new(svc)
                        .max_decoding_message_size(max_frame),
                )
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        });
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
            shutdown: Some(tx),
            serve,
            heartbeat,
            backend,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting calls, ends open streams and closes broker connections.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.heartbeat.abort();
        // Open streams could hold the server for long: bounded wait.
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut self.serve).await;
        self.serve.abort();
        self.backend.close().await;
    }
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
