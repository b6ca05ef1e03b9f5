//! Starting and stopping a NameServer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use apogee_remoting::{ProcessorRegistry, RemotingServer, ServerConfig};
use tokio::task::JoinHandle;

use crate::config::NamesrvConfig;
use crate::error::NamesrvError;
use crate::kv_config::KvConfigManager;
use crate::processor::{Dispatcher, NamesrvProcessor, HANDLED_CODES};
use crate::route_info::RouteInfoManager;

/// A running NameServer.
pub struct NameServer {
    server: RemotingServer,
    state: Arc<NamesrvProcessor>,
    scanner: JoinHandle<()>,
}

impl NameServer {
    /// Loads the KV config, binds the port and starts the liveness scan.
    pub async fn start(config: NamesrvConfig) -> Result<NameServer, NamesrvError> {
        Self::start_with(config, ProcessorRegistry::new()).await
    }

    /// [`NameServer::start`] serving, beside its own codes, whatever
    /// `registry` already holds (a controller embedded in the NameServer,
    /// `enableControllerInNamesrv`); the NameServer's codes win a clash.
    pub async fn start_with(
        config: NamesrvConfig,
        registry: Arc<ProcessorRegistry>,
    ) -> Result<NameServer, NamesrvError> {
        let ip: IpAddr = config
            .bind_address
            .parse()
            .map_err(|_| NamesrvError::Config {
                key: "bindAddress".into(),
                reason: format!("'{}' is not an IP address", config.bind_address),
            })?;
        let kv = Arc::new(KvConfigManager::load(&config.kv_config_path)?);
        let routes = Arc::new(RouteInfoManager::new(
            config.broker_channel_expired_time,
            config.delete_topic_with_broker_registration,
        ));
        let mut server_config = ServerConfig::new(SocketAddr::new(ip, config.listen_port));
        server_config.max_frame_size = config.frame_max_length;
        server_config.idle_timeout = Some(config.server_channel_max_idle_time);
        let scan_every = config.scan_not_active_broker_interval;

        let state = Arc::new(NamesrvProcessor::new(config, Arc::clone(&routes), kv));
        registry.register_shared(HANDLED_CODES, Arc::new(Dispatcher(Arc::clone(&state))));
        let server = RemotingServer::bind(server_config, registry)
            .await
            .map_err(|e| NamesrvError::Start(e.to_string()))?;

        let scanner = tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + scan_every, scan_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                routes.scan_not_active();
                // Reports the counts of throttled log lines whose window passed.
                apogee_throttle::tick_all();
            }
        });
        tracing::info!(addr = %server.local_addr(), "name server started");
        Ok(NameServer {
            server,
            state,
            scanner,
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The route tables (for embedding and tests).
    pub fn routes(&self) -> &Arc<RouteInfoManager> {
        &self.state.routes
    }

    /// How many REGISTER_BROKER requests this NameServer received.
    pub fn register_requests(&self) -> u64 {
        self.state.register_requests()
    }

    /// Stops accepting, lets in-flight requests finish, persists KV config.
    pub async fn shutdown(self) {
        self.scanner.abort();
        self.server.shutdown().await;
        if let Err(e) = self.state.kv.persist().await {
            tracing::error!("cannot persist KV config on shutdown: {e}");
        }
        apogee_throttle::flush_all();
        tracing::info!("name server stopped");
    }
}
