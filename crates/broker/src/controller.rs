//! `BrokerController`: starts a broker (store, tables, processors, the main
//! and VIP listeners, NameServer registration, periodic tasks) and shuts it
//! down cleanly (unregister, persist, close the store).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ProcessorRegistry, RemotingServer, ServerConfig};
use apogee_replication::{HaClient, HaConfig, HaServer};
use apogee_store::MessageStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::BrokerConfig;
use crate::context::BrokerContext;
use crate::error::{BrokerError, Result};
use crate::namesrv_api::NamesrvApi;
use crate::processor;
use crate::register::{Outgoing, RegisterSlot};

/// Request codes refused on the VIP port (Java registers no pull processor there).
const NOT_ON_VIP: &[i32] = &[request_code::PULL_MESSAGE, request_code::LITE_PULL_MESSAGE];

/// A running broker.
pub struct BrokerController {
    ctx: Arc<BrokerContext>,
    server: RemotingServer,
    namesrv: Arc<NamesrvApi>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    local_addr: SocketAddr,
    vip_addr: SocketAddr,
}

impl BrokerController {
    /// Opens the store, loads the tables, listens on `listenPort` and
    /// `listenPort - 2` (both ephemeral when `listenPort` is 0), registers
    /// with every NameServer and starts the periodic tasks.
    pub async fn start(mut config: BrokerConfig) -> Result<BrokerController> {
        let bind_ip: IpAddr = config.bind_address.parse().map_err(|_| {
            BrokerError::config(
                "bindAddress",
                format!("'{}' is not an IP address", config.bind_address),
            )
        })?;
        let advertised_ip: IpAddr = config.broker_ip1.parse().map_err(|_| {
            BrokerError::config(
                "brokerIP1",
                format!("'{}' is not an IP address", config.broker_ip1),
            )
        })?;
        let (main_port, vip_port) = match config.listen_port {
            0 => (0, 0),
            p if p >= 3 => (p, p - 2),
            p => {
                return Err(BrokerError::config(
                    "listenPort",
                    format!(
                    "{p} leaves no room for the VIP port (listenPort - 2); use 0 or a port >= 3"
                ),
                ))
            }
        };

        config.check_role()?;
        let ha_cfg = HaConfig {
            listen_addr: SocketAddr::new(bind_ip, config.effective_ha_listen_port()),
            heartbeat_interval: config.ha_send_heartbeat_interval,
            transfer_batch_size: config.ha_transfer_batch_size,
            max_gap_not_in_sync: config.ha_max_gap_not_in_sync,
            housekeeping_interval: config.ha_housekeeping_interval,
            // Controller mode: at most one slave (MAX_CONTROLLER_REPLICAS).
            acks_needed: if config.enable_controller_mode {
                1
            } else {
                config.slaves_to_ack()
            },
            ..HaConfig::default()
        };

        let store_cfg = config.store.clone();
        let store = tokio::task::spawn_blocking(move || MessageStore::open(store_cfg))
            .await
            .map_err(|e| BrokerError::Start(format!("store open task failed: {e}")))??;
        let store = Arc::new(store);

        let mut server_cfg = ServerConfig::new(SocketAddr::new(bind_ip, main_port))
            .also_listen(SocketAddr::new(bind_ip, vip_port));
        server_cfg.idle_timeout = Some(config.server_channel_max_idle_time);
        server_cfg.max_frame_size = server_cfg
            .max_frame_size
            .max(config.store.max_message_size.saturating_add(1 << 20));
        let registry = ProcessorRegistry::new();
        let server = match RemotingServer::bind(server_cfg, Arc::clone(&registry)).await {
            Ok(s) => s,
            Err(e) => {
                let _ = store.shutdown();
                return Err(e.into());
            }
        };
        let local_addr = server.local_addr();
        let vip_addr = server.local_addrs().get(1).copied().unwrap_or(local_addr);
        config.listen_port = local_addr.port();
        let store_host = SocketAddr::new(advertised_ip, local_addr.port());

        let ctx = match BrokerContext::new(config, Arc::clone(&store), store_host) {
            Ok(c) => c,
            Err(e) => {
                server.shutdown().await;
                let _ = store.shutdown();
                return Err(e);
            }
        };
        if let Err(e) = start_replication(&ctx, ha_cfg) {
            server.shutdown().await;
            let _ = store.shutdown();
            return Err(e);
        }
        if ctx.config.is_master() {
            // Before the first POP is served.
            crate::pop::revive::recover_pop_offsets(&ctx).await;
        }
        register_processors(&registry, &ctx, vip_addr.port());
        // The listener refers to the hold service only, so the store does not
        // keep the context alive.
        store.set_message_arriving_listener(ctx.pull_hold.listener());
        ctx.pull_hold.start(&ctx.store);
        // Delayed delivery writes to the store: masters only (a slave's
        // CommitLog is the master's copy).
        if ctx.config.is_master() {
            ctx.schedule.start(&ctx);
        }

        let namesrv = Arc::new(NamesrvApi::new(
            ctx.config.namesrv_addrs(),
            ctx.config.register_broker_timeout_mills,
        ));
        // Subscribed before the first registration, so no change falls
        // between it and the tasks that follow.
        let slots: Vec<(String, Arc<RegisterSlot>)> = namesrv
            .addrs()
            .iter()
            .map(|a| (a.clone(), ctx.register_signal().subscribe()))
            .collect();
        if namesrv.addrs().is_empty() {
            tracing::warn!("no NameServer address (namesrvAddr / NAMESRV_ADDR): clients cannot find this broker");
        } else {
            let ok = namesrv.register_broker_all(&ctx).await;
            tracing::info!(
                registered = ok,
                of = namesrv.addrs().len(),
                "registered with NameServers"
            );
        }

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks: Vec<JoinHandle<()>> = slots
            .into_iter()
            .map(|(addr, slot)| {
                spawn_register_loop(
                    Arc::clone(&ctx),
                    Arc::clone(&namesrv),
                    addr,
                    slot,
                    stop_rx.clone(),
                )
            })
            .collect();
        tasks.extend([
            spawn_offset_persist_loop(Arc::clone(&ctx), stop_rx.clone()),
            spawn_channel_scan_loop(Arc::clone(&ctx), stop_rx.clone()),
            spawn_log_summary_loop(stop_rx.clone()),
        ]);
        if ctx.config.is_master() {
            // Half messages are checked back by the master only.
            crate::transaction::create_system_topics(&ctx);
            tasks.push(crate::transaction::spawn_check_loop(
                Arc::clone(&ctx),
                stop_rx.clone(),
            ));
            // Un-acked POP messages are revived by the master only.
            tasks.push(crate::pop::revive::spawn_revive_loop(
                Arc::clone(&ctx),
                stop_rx.clone(),
            ));
        }
        if !ctx.config.is_master() {
            tasks.push(crate::slave_sync::spawn(Arc::clone(&ctx), stop_rx));
        }
        tracing::info!(
            addr = %local_addr,
            vip = %vip_addr,
            advertised = %ctx.broker_addr,
            broker = %ctx.config.broker_name,
            cluster = %ctx.config.broker_cluster_name,
            "broker started"
        );
        Ok(BrokerController {
            ctx,
            server,
            namesrv,
            tasks,
            stop,
            local_addr,
            vip_addr,
        })
    }

    /// The main listening address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The broker's in-process entrance for a gRPC endpoint in the same
    /// process (requests skip the socket and the frame codec).
    pub fn local_endpoint(&self) -> apogee_remoting::LocalEndpoint {
        self.server.local_endpoint()
    }

    /// The VIP listening address (`listenPort - 2`; pulls refused there).
    pub fn vip_addr(&self) -> SocketAddr {
        self.vip_addr
    }

    pub fn context(&self) -> &Arc<BrokerContext> {
        &self.ctx
    }

    /// Registers with every NameServer now; returns how many accepted.
    pub async fn register_now(&self) -> usize {
        self.namesrv.register_broker_all(&self.ctx).await
    }

    /// Unregisters from the NameServers, stops serving (letting in-flight
    /// requests finish), persists offsets and tables and closes the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        self.namesrv.unregister_broker_all(&self.ctx).await;
        self.ctx.pull_hold.shutdown();
        // Joins the timer thread and writes its final checkpoint (fsyncs):
        // blocking work, kept off the async workers.
        let schedule_ctx = Arc::clone(&self.ctx);
        if tokio::task::spawn_blocking(move || schedule_ctx.schedule.shutdown())
            .await
            .is_err()
        {
            tracing::error!("the delay/timer service did not shut down cleanly");
        }
        self.server.shutdown().await;
        let ctx = Arc::clone(&self.ctx);
        let done = tokio::task::spawn_blocking(move || {
            // Step times: a role switch waits for all of this.
            let t = std::time::Instant::now();
            if let Err(e) = ctx.offsets.persist() {
                tracing::error!(error = %e, "cannot persist consumer offsets");
            }
            if let Err(e) = ctx.topics.persist() {
                tracing::error!(error = %e, "cannot persist topic config");
            }
            if let Err(e) = ctx.groups.persist() {
                tracing::error!(error = %e, "cannot persist subscription groups");
            }
            let persist_ms = t.elapsed().as_millis() as u64;
            // Links first: they read or write the store.
            if let Some(ha) = ctx.ha_server.get() {
                ha.shutdown();
            }
            if let Some(ha) = ctx.ha_client.get() {
                ha.shutdown();
            }
            let links_ms = t.elapsed().as_millis() as u64 - persist_ms;
            if let Err(e) = ctx.store.shutdown() {
                tracing::error!(error = %e, "store shutdown failed");
            }
            tracing::debug!(
                persist_ms,
                links_ms,
                store_ms = t.elapsed().as_millis() as u64 - persist_ms - links_ms,
                "broker shutdown steps"
            );
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "shutdown task failed");
        }
        self.namesrv.close().await;
        // Counts still pending would otherwise never be reported.
        apogee_throttle::flush_all();
        tracing::info!("broker stopped");
    }
}

/// Starts the HA server (masters) or the HA client (slaves).
fn start_replication(ctx: &Arc<BrokerContext>, cfg: HaConfig) -> Result<()> {
    if ctx.config.is_master() {
        let addr = cfg.listen_addr;
        let server = HaServer::start(Arc::clone(&ctx.store), cfg).map_err(|e| {
            BrokerError::config(
                "haListenPort",
                format!("cannot listen for slaves on {addr}: {e}"),
            )
        })?;
        let _ = ctx.ha_server.set(Arc::new(server));
    } else {
        // A slave appends the master's bytes in large batches: pwrite them
        // rather than fault fresh mapped pages (and warm them) per append.
        ctx.store.use_pwrite_appends();
        let master = ctx.config.ha_master_address.clone();
        if master.is_none() {
            tracing::info!("slave: the master's HA address comes from the NameServer registration");
        }
        let client = HaClient::start(Arc::clone(&ctx.store), cfg, master)
            .map_err(|e| BrokerError::Start(format!("cannot start the HA client: {e}")))?;
        let _ = ctx.ha_client.set(Arc::new(client));
    }
    Ok(())
}

fn register_processors(registry: &Arc<ProcessorRegistry>, ctx: &Arc<BrokerContext>, vip_port: u16) {
    processor::client_manage::register(registry, ctx);
    processor::consumer_manage::register(registry, ctx);
    processor::send::register(registry, ctx);
    processor::pull::register(registry, ctx);
    processor::send_back::register(registry, ctx);
    processor::recall::register(registry, ctx);
    processor::admin::register(registry, ctx);
    processor::query::register(registry, ctx);
    crate::transaction::register(registry, ctx);
    crate::pop::register(registry, ctx);
    crate::assignment::register(registry, ctx);
    // Java's VIP ("fast") server has no pull processor: refuse there.
    for &code in NOT_ON_VIP {
        let Some(inner) = registry.lookup(code) else {
            continue;
        };
        registry.register(
            code,
            processor_fn(move |rc, req: RemotingCommand| {
                let inner = Arc::clone(&inner);
                async move {
                    if rc.local_addr().port() == vip_port {
                        return Ok(Some(RemotingCommand::response(
                            response_code::REQUEST_CODE_NOT_SUPPORTED,
                            Some(format!(
                                " request type {} not supported on the VIP port {vip_port}; pull from the main port",
                                req.code
                            )),
                        )));
                    }
                    inner.process(rc, req).await
                }
            }),
        );
    }
}

async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
}

/// First pause after a failed registration; doubles up to [`REGISTER_RETRY_MAX`].
const REGISTER_RETRY_MIN: Duration = Duration::from_millis(100);
const REGISTER_RETRY_MAX: Duration = Duration::from_secs(5);
/// Least time between the starts of two registrations to one NameServer: a
/// lone change goes at once, a burst is sent in batches at most this often.
const REGISTER_MIN_INTERVAL: Duration = Duration::from_millis(10);

/// One NameServer's registrations: the full table every
/// `registerNameServerPeriod`, and in between, as soon as topics change,
/// the changed topics in one incremental registration. At most one
/// registration is in flight, and they start at most every
/// [`REGISTER_MIN_INTERVAL`]; changes made meanwhile accumulate in `slot`
/// and go together in the next one. A failed registration is retried with
/// backoff (100 ms doubling to 5 s), merged with whatever changed since.
fn spawn_register_loop(
    ctx: Arc<BrokerContext>,
    api: Arc<NamesrvApi>,
    addr: String,
    slot: Arc<RegisterSlot>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let period = ctx.config.register_name_server_period;
        let mut next_full = tokio::time::Instant::now() + period;
        let mut retry = REGISTER_RETRY_MIN;
        let mut last_start: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            if now < next_full && !slot.has_pending() {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_full) => {}
                    _ = slot.changed() => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            // In a burst, registrations start at most every
            // REGISTER_MIN_INTERVAL; the changes meanwhile go together.
            if let Some(at) = last_start.map(|t| t + REGISTER_MIN_INTERVAL) {
                if now < at {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
            let out = if tokio::time::Instant::now() >= next_full {
                // The full table covers whatever was pending.
                let _ = slot.take();
                Outgoing::Full
            } else {
                match ctx.topics.take_registration(&slot) {
                    Some(out) => out,
                    None => continue,
                }
            };
            last_start = Some(tokio::time::Instant::now());
            if matches!(out, Outgoing::Full) {
                next_full = tokio::time::Instant::now() + period;
            }
            let work = out.work();
            if api.register(&ctx, &addr, out).await {
                retry = REGISTER_RETRY_MIN;
                continue;
            }
            slot.restore(work);
            if wait_or_stop(&mut stop, retry).await {
                return;
            }
            retry = (retry * 2).min(REGISTER_RETRY_MAX);
        }
    })
}

/// Emits the counts of throttled log lines whose window has passed, so that
/// a flood that stopped is still summed up.
fn spawn_log_summary_loop(mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !wait_or_stop(&mut stop, Duration::from_secs(1)).await {
            apogee_throttle::tick_all();
        }
    })
}

fn spawn_offset_persist_loop(
    ctx: Arc<BrokerContext>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if wait_or_stop(&mut stop, ctx.config.flush_consumer_offset_interval).await {
                return;
            }
            // The table's writer thread saves it and reports failures.
            ctx.offsets.persist_soon();
        }
    })
}

fn spawn_channel_scan_loop(
    ctx: Arc<BrokerContext>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if wait_or_stop(&mut stop, ctx.config.channel_scan_interval).await {
                return;
            }
            ctx.consumers.scan_not_active();
            ctx.producers.scan_not_active();
        }
    })
}
