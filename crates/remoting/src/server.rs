//! The TCP server: listeners, the accept loops, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::codec::DEFAULT_MAX_FRAME_SIZE;
use apogee_throttle::{throttled_warn, LogThrottle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::connection::{spawn_connection, ConnOptions, LocalEndpoint, Runtime};
use crate::error::{RemotingError, Result};
use crate::processor::ProcessorRegistry;

// Out of file descriptors, accept fails every 100 ms until one frees up.
static ACCEPT_FAILED: LogThrottle = LogThrottle::new("accept failed");

/// Java's `serverChannelMaxIdleTimeSeconds`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default bound of each connection's outgoing frame queue.
pub const DEFAULT_WRITE_QUEUE: usize = 4096;
/// Default limit of requests running at once per connection.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2048;

/// How a [`RemotingServer`] listens and treats its connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Every address to listen on (port 0 picks a free port); all share the
    /// same processors. The broker adds its VIP port here.
    pub listen: Vec<SocketAddr>,
    /// Largest accepted frame, counting the 4-byte length prefix.
    pub max_frame_size: usize,
    /// Connections with no frame read or written for this long are closed.
    pub idle_timeout: Option<Duration>,
    /// Frames that may wait to be written per connection before senders wait.
    pub write_queue: usize,
    /// Requests one connection may have running at once; more are answered
    /// SYSTEM_BUSY (oneway ones dropped).
    pub max_in_flight: usize,
    /// How long [`RemotingServer::shutdown`] lets in-flight requests finish.
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    /// Listens on `addr` with default limits.
    pub fn new(addr: SocketAddr) -> Self {
        ServerConfig {
            listen: vec![addr],
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            write_queue: DEFAULT_WRITE_QUEUE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// Also listens on `addr`.
    pub fn also_listen(mut self, addr: SocketAddr) -> Self {
        self.listen.push(addr);
        self
    }
}

/// A running server. Dropping it closes listeners and connections at once;
/// [`RemotingServer::shutdown`] does it gracefully.
pub struct RemotingServer {
    local_addrs: Vec<SocketAddr>,
    rt: Arc<Runtime>,
    stop_accepting: CancellationToken,
    acceptors: TaskTracker,
    shutdown_grace: Duration,
}

impl RemotingServer {
    /// Binds every configured address and starts serving with `processors`.
    /// Register processors before calling this: requests arriving earlier
    /// are answered REQUEST_CODE_NOT_SUPPORTED.
    pub async fn bind(config: ServerConfig, processors: Arc<ProcessorRegistry>) -> Result<Self> {
        let mut listeners = Vec::with_capacity(config.listen.len());
        for addr in &config.listen {
            let listener =
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| RemotingError::BindFailed {
                        addr: addr.to_string(),
                        source,
                    })?;
            listeners.push(listener);
        }
        let local_addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?;
        let rt = Arc::new(Runtime {
            processors,
            requests: TaskTracker::new(),
            io_tasks: TaskTracker::new(),
            stop_reading: CancellationToken::new(),
            handle: tokio::runtime::Handle::try_current().ok(),
            close_all: CancellationToken::new(),
            opts: ConnOptions {
                max_frame_size: config.max_frame_size,
                idle_timeout: config.idle_timeout,
                write_queue: config.write_queue,
                max_in_flight: config.max_in_flight,
            },
        });
        let stop_accepting = CancellationToken::new();
        let acceptors = TaskTracker::new();
        for listener in listeners {
            acceptors.spawn(accept_loop(
                listener,
                Arc::clone(&rt),
                stop_accepting.clone(),
            ));
        }
        info!(addrs = ?local_addrs, "remoting server listening");
        Ok(RemotingServer {
            local_addrs,
            rt,
            stop_accepting,
            acceptors,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The first bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        // `bind` fails unless at least one address was configured and bound;
        // an empty list yields an unroutable placeholder instead of a panic.
        self.local_addrs
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Every bound address, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn processors(&self) -> &Arc<ProcessorRegistry> {
        &self.rt.processors
    }

    /// This server's in-process entrance, for a client in the same process
    /// (see [`crate::RemotingClient::connect_locally`]); its connections
    /// count as accepted on the first listen address.
    pub fn local_endpoint(&self) -> LocalEndpoint {
        LocalEndpoint {
            rt: Arc::clone(&self.rt),
            addr: self.local_addr(),
        }
    }

    /// Graceful shutdown with the configured grace period.
    pub async fn shutdown(&self) {
        self.shutdown_within(self.shutdown_grace).await;
    }

    /// Stops accepting and reading new requests, lets in-flight requests
    /// finish for up to `grace`, flushes their responses and closes every
    /// connection.
    pub async fn shutdown_within(&self, grace: Duration) {
        self.stop_accepting.cancel();
        self.acceptors.close();
        self.acceptors.wait().await;
        self.rt.stop_reading.cancel();
        self.rt.requests.close();
        if tokio::time::timeout(grace, self.rt.requests.wait())
            .await
            .is_err()
        {
            warn!(
                still_running = self.rt.requests.len(),
                grace_ms = grace.as_millis() as u64,
                "requests still running after the shutdown grace period; closing anyway"
            );
        }
        self.rt.close_all.cancel();
        self.rt.io_tasks.close();
        // Writers spend at most their own flush timeout; this only bounds it.
        let _ = tokio::time::timeout(Duration::from_secs(3), self.rt.io_tasks.wait()).await;
        info!(addrs = ?self.local_addrs, "remoting server stopped");
    }
}

impl Drop for RemotingServer {
    fn drop(&mut self) {
        self.stop_accepting.cancel();
        self.rt.close_all.cancel();
    }
}

async fn accept_loop(listener: TcpListener, rt: Arc<Runtime>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = spawn_connection(stream, &rt) {
                        debug!(peer = %peer, error = %e, "cannot set up accepted connection");
                    }
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    throttled_warn!(ACCEPT_FAILED, (), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("SIGINT received"),
        _ = terminate => info!("SIGTERM received"),
    }
}
