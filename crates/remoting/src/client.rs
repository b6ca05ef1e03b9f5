//! The client side: one reused connection per address, re-established after
//! failure, with request/response matching done by [`Channel`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::codec::DEFAULT_MAX_FRAME_SIZE;
use apogee_protocol::RemotingCommand;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{
    local_pair, spawn_connection, Channel, ConnOptions, LocalEndpoint, Runtime,
};
use crate::error::{RemotingError, Result};
use crate::processor::ProcessorRegistry;
use crate::server::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_IN_FLIGHT, DEFAULT_WRITE_QUEUE};

/// How a [`RemotingClient`] connects and treats its connections.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Java's `connectTimeoutMillis` default is 3 s.
    pub connect_timeout: Duration,
    pub max_frame_size: usize,
    /// Idle connections are closed and transparently reopened on next use.
    pub idle_timeout: Option<Duration>,
    pub write_queue: usize,
    /// Server-initiated requests one connection may have running at once.
    pub max_in_flight: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(3),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            write_queue: DEFAULT_WRITE_QUEUE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// Sends requests to servers by address ("host:port"). Cheap to clone; all
/// clones share the connections. Requests the servers send back on these
/// connections go to the client's [`ProcessorRegistry`].
#[derive(Clone)]
pub struct RemotingClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    config: ClientConfig,
    rt: Arc<Runtime>,
    channels: Mutex<HashMap<String, Channel>>,
    /// One async lock per address so concurrent callers share one connect.
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Addresses served in this process, reached without a socket.
    locals: Mutex<HashMap<String, LocalEndpoint>>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.rt.close_all.cancel();
    }
}

impl RemotingClient {
    /// A client with no processors for server-initiated requests (they are
    /// answered REQUEST_CODE_NOT_SUPPORTED).
    pub fn new(config: ClientConfig) -> Self {
        Self::with_processors(config, ProcessorRegistry::new())
    }

    pub fn with_processors(config: ClientConfig, processors: Arc<ProcessorRegistry>) -> Self {
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
        RemotingClient {
            inner: Arc::new(ClientInner {
                config,
                rt,
                channels: Mutex::new(HashMap::new()),
                connecting: Mutex::new(HashMap::new()),
                locals: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Where server-initiated requests are dispatched.
    pub fn processors(&self) -> &Arc<ProcessorRegistry> {
        &self.inner.rt.processors
    }

    /// Reaches `addr` through `endpoint`, a server in this process, instead
    /// of a TCP connection: requests run on the server's processors without
    /// being encoded or leaving the process (a broker's own gRPC endpoint
    /// calling that broker). Takes effect from the next connect to `addr`.
    pub fn connect_locally(&self, addr: impl Into<String>, endpoint: LocalEndpoint) {
        let addr = addr.into();
        self.inner.locals.lock().insert(addr.clone(), endpoint);
        self.close_channel(&addr);
    }

    /// Sends `cmd` to `addr` and waits for the response. `timeout` covers
    /// connecting as well as the exchange.
    pub async fn invoke(
        &self,
        addr: &str,
        cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand> {
        self.invoke_until(addr, cmd, Instant::now() + timeout, timeout)
            .await
    }

    /// `invoke` with an absolute deadline, for callers that already read the
    /// clock (a retry loop); `timeout` only labels the timeout error.
    pub async fn invoke_until(
        &self,
        addr: &str,
        cmd: RemotingCommand,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<RemotingCommand> {
        let timed_out = || RemotingError::Timeout {
            addr: addr.to_string(),
            millis: timeout.as_millis() as u64,
        };
        // The common case, a live connection, needs no timer of its own.
        let channel = match self.live(addr) {
            Some(ch) => ch,
            None => tokio::time::timeout_at(deadline, self.channel(addr))
                .await
                .map_err(|_| timed_out())??,
        };
        match channel.invoke_until(cmd, deadline, timeout).await {
            Err(RemotingError::Timeout { .. }) => Err(timed_out()),
            Err(RemotingError::ConnectionClosed { .. }) => {
                self.forget(addr, &channel);
                Err(RemotingError::ConnectionClosed {
                    addr: addr.to_string(),
                })
            }
            other => other,
        }
    }

    /// Sends `cmd` to `addr` as a oneway request (no response expected).
    pub async fn invoke_oneway(&self, addr: &str, cmd: RemotingCommand) -> Result<()> {
        let channel = self.channel(addr).await?;
        let sent = channel.send_oneway(cmd).await;
        if sent.is_err() {
            self.forget(addr, &channel);
        }
        sent
    }

    /// The live connection to `addr`, connecting (once, even with many
    /// concurrent callers) if there is none.
    pub async fn channel(&self, addr: &str) -> Result<Channel> {
        if let Some(ch) = self.live(addr) {
            return Ok(ch);
        }
        if self.inner.rt.close_all.is_cancelled() {
            return Err(RemotingError::ClientClosed);
        }
        let lock = Arc::clone(
            self.inner
                .connecting
                .lock()
                .entry(addr.to_string())
                .or_default(),
        );
        let _connecting = lock.lock().await;
        if let Some(ch) = self.live(addr) {
            return Ok(ch);
        }
        let local = self.inner.locals.lock().get(addr).cloned();
        if let Some(endpoint) = local {
            let channel = local_pair(&self.inner.rt, &endpoint);
            self.inner
                .channels
                .lock()
                .insert(addr.to_string(), channel.clone());
            return Ok(channel);
        }
        let connect_failed = |source| RemotingError::ConnectFailed {
            addr: addr.to_string(),
            source,
        };
        let stream =
            tokio::time::timeout(self.inner.config.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| connect_failed(std::io::ErrorKind::TimedOut.into()))?
                .map_err(connect_failed)?;
        let channel = spawn_connection(stream, &self.inner.rt).map_err(connect_failed)?;
        self.inner
            .channels
            .lock()
            .insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Closes the connection to `addr`, if any; the next call reconnects.
    pub fn close_channel(&self, addr: &str) {
        if let Some(ch) = self.inner.channels.lock().remove(addr) {
            ch.close();
        }
    }

    /// Closes every connection; later calls fail with `ClientClosed`.
    pub async fn close(&self) {
        self.inner.rt.close_all.cancel();
        self.inner.channels.lock().clear();
        self.inner.rt.io_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.inner.rt.io_tasks.wait()).await;
    }

    fn live(&self, addr: &str) -> Option<Channel> {
        self.inner
            .channels
            .lock()
            .get(addr)
            .filter(|ch| ch.is_active())
            .cloned()
    }

    fn forget(&self, addr: &str, channel: &Channel) {
        let mut map = self.inner.channels.lock();
        if map.get(addr) == Some(channel) {
            map.remove(addr);
        }
    }
}
