//! `BrokerContext`: everything a request processor needs — configuration,
//! the store, the topic/group/offset tables, the client tables and the
//! services owned by the data path — shared as one `Arc` by all processors
//! and periodic tasks.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use apogee_replication::{HaClient, HaServer};

use crate::register::RegisterSignal;
use apogee_remoting::{Channel, ChannelId};
use apogee_store::MessageStore;
use parking_lot::{Mutex, RwLock};

use crate::client::{ConsumerManager, ProducerManager, RebalanceLockManager};
use crate::config::BrokerConfig;
use crate::error::Result;
use crate::filter::SqlFilterCache;
use crate::long_polling::PullRequestHoldService;
use crate::offset::ConsumerOffsetManager;
use crate::schedule::ScheduleMessageService;
use crate::stats::BrokerStats;
use crate::subscription_group::SubscriptionGroupManager;
use crate::topic_config::TopicConfigManager;

/// Shared broker state.
pub struct BrokerContext {
    /// Static after start.
    pub config: BrokerConfig,
    /// UPDATE_BROKER_CONFIG target; settings read per request come from here.
    pub runtime_config: RwLock<BrokerConfig>,
    pub store: Arc<MessageStore>,
    pub topics: TopicConfigManager,
    pub groups: SubscriptionGroupManager,
    pub offsets: ConsumerOffsetManager,
    pub consumers: ConsumerManager,
    pub producers: ProducerManager,
    pub locks: RebalanceLockManager,
    pub pull_hold: PullRequestHoldService,
    /// Compiled SQL92 subscriptions per (group, topic).
    pub sql_filters: SqlFilterCache,
    pub schedule: ScheduleMessageService,
    /// Queues being popped right now.
    pub pop_locks: crate::pop::processor::QueueLocks,
    /// Open orderly POP batches.
    pub pop_order: crate::pop::order::OrderTable,
    /// POP requests held by long polling (POLLING_INFO).
    pub pop_polling: crate::pop::processor::PollingCounts,
    /// NOTIFICATION requests held by long polling.
    pub pop_notify_polling: crate::pop::processor::PollingCounts,
    /// The POP revive service's per-queue scan state.
    pub pop_revive: crate::pop::revive::ReviveStates,
    pub stats: BrokerStats,
    /// `brokerIP1:port`, written into stored records as the store host.
    pub store_host: SocketAddr,
    /// `brokerIP1:port`, advertised to NameServers and in message ids.
    pub broker_addr: String,
    pub started_at: Instant,
    /// The HA server (masters), set once at start.
    pub ha_server: OnceLock<Arc<HaServer>>,
    /// The HA client (slaves), set once at start.
    pub ha_client: OnceLock<Arc<HaClient>>,
    /// A slave's master (its remoting address), from NameServer registration.
    pub master_addr: RwLock<Option<String>>,
    /// Controller mode: set while this master is not confirmed by the
    /// controller group (just started, lease lapsed, being demoted); sends
    /// are refused so that two masters never acknowledge for one broker set.
    pub write_fenced: std::sync::atomic::AtomicBool,
    /// Controller mode: the controller's SyncStateSet holds this master
    /// alone, so a SYNC_MASTER acknowledges without a slave (no other
    /// replica can be elected). Cleared before the set may grow.
    pub ack_alone: std::sync::atomic::AtomicBool,
    /// Controller mode: members of the SyncStateSet (this master included)
    /// in the controller's last confirmed answer; 0 before the first.
    /// Sends are refused while it is below `minInSyncReplicas`.
    pub sync_state_set_size: std::sync::atomic::AtomicUsize,
    /// Controller mode: a master takes writes only until this instant
    /// ([`mono_ms`]), the end of the lease its last confirmation by the
    /// controller leader bought. Checked on every send, so a master that
    /// was frozen or cut off refuses the requests queued meanwhile.
    pub lease_until_ms: std::sync::atomic::AtomicU64,
    /// Transactions being committed or recently committed, by origin.
    pub tx_origins: crate::transaction::RecentOrigins,
    /// SET_MESSAGE_REQUEST_MODE choices (`messageRequestMode.json`).
    pub request_modes: crate::assignment::RequestModes,
    /// Topics' queues across brokers, for QUERY_ASSIGNMENT.
    pub route_queues: crate::assignment::RouteQueues,
    register_signal: Arc<RegisterSignal>,
    watched: Mutex<HashSet<ChannelId>>,
    /// The runtime the broker started on: tasks that outlive a request
    /// (channel watches) go there, not onto whichever runtime the request
    /// ran on (a gRPC event loop calling in process ends before the broker).
    spawner: Option<tokio::runtime::Handle>,
}

/// Milliseconds on a process-wide monotonic clock (for leases).
pub fn mono_ms() -> u64 {
    mono_ms_of(Instant::now())
}

/// [`mono_ms`] of an earlier or later instant.
pub fn mono_ms_of(t: Instant) -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    t.saturating_duration_since(*BASE.get_or_init(Instant::now))
        .as_millis() as u64
}

impl BrokerContext {
    /// Loads the persisted tables under `config.store.store_path_root_dir`
    /// and builds the services. `store_host` is the advertised address
    /// (`brokerIP1` and the bound main port).
    pub fn new(
        config: BrokerConfig,
        store: Arc<MessageStore>,
        store_host: SocketAddr,
    ) -> Result<Arc<Self>> {
        let register_signal = Arc::new(RegisterSignal::new());
        // The config files go through the store's file system, so they
        // share its fault injection and power-loss simulation in tests.
        let vfs = store.vfs();
        let topics =
            TopicConfigManager::with_vfs(&config, Arc::clone(&register_signal), vfs.clone())?;
        let groups = SubscriptionGroupManager::with_vfs(&config, vfs.clone())?;
        let offsets = ConsumerOffsetManager::with_vfs(&config, vfs.clone())?;
        let pop_order = crate::pop::order::OrderTable::with_vfs(&config, vfs.clone())?;
        let request_modes = crate::assignment::RequestModes::with_vfs(&config, vfs)?;
        let route_queues = crate::assignment::RouteQueues::new(config.namesrv_addrs());
        let consumers = ConsumerManager::new(config.channel_expired_timeout);
        let producers = ProducerManager::new(config.channel_expired_timeout);
        let locks = RebalanceLockManager::new(config.rebalance_lock_max_live_time);
        let pull_hold = PullRequestHoldService::new(&config);
        let schedule = ScheduleMessageService::new(&config)?;
        let stats = BrokerStats::new();
        let fenced = config.enable_controller_mode;
        Ok(Arc::new(BrokerContext {
            runtime_config: RwLock::new(config.clone()),
            broker_addr: store_host.to_string(),
            config,
            store,
            topics,
            groups,
            offsets,
            consumers,
            producers,
            locks,
            pull_hold,
            sql_filters: SqlFilterCache::new(),
            schedule,
            pop_locks: Default::default(),
            pop_order,
            pop_polling: Default::default(),
            pop_notify_polling: Default::default(),
            pop_revive: Default::default(),
            stats,
            store_host,
            started_at: Instant::now(),
            ha_server: OnceLock::new(),
            ha_client: OnceLock::new(),
            master_addr: RwLock::new(None),
            // A controller-mode master writes only once the controller
            // confirmed it and its epoch is recorded.
            write_fenced: std::sync::atomic::AtomicBool::new(fenced),
            ack_alone: std::sync::atomic::AtomicBool::new(false),
            sync_state_set_size: std::sync::atomic::AtomicUsize::new(0),
            lease_until_ms: std::sync::atomic::AtomicU64::new(0),
            tx_origins: crate::transaction::RecentOrigins::new(
                crate::transaction::RECENT_ORIGINS_CAPACITY,
            ),
            request_modes,
            route_queues,
            register_signal,
            watched: Mutex::new(HashSet::new()),
            spawner: tokio::runtime::Handle::try_current().ok(),
        }))
    }

    /// Asks for a full registration with every NameServer soon (after a
    /// change the topic table does not report itself, e.g. the broker
    /// permission). Topic changes are registered incrementally on their own.
    /// Cheap; several requests collapse into one registration.
    pub fn request_register(&self) {
        self.register_signal.full();
    }

    /// Topic changes and full-registration requests, per NameServer.
    pub fn register_signal(&self) -> &Arc<RegisterSignal> {
        &self.register_signal
    }

    /// Removes a client channel from the client tables as soon as it
    /// closes (once per channel; later calls are no-ops).
    pub fn watch_channel(self: &Arc<Self>, channel: &Channel) {
        if !self.watched.lock().insert(channel.id()) {
            return;
        }
        let weak = Arc::downgrade(self);
        let ch = channel.clone();
        let watch = async move {
            ch.closed().await;
            if let Some(ctx) = weak.upgrade() {
                ctx.watched.lock().remove(&ch.id());
                ctx.consumers.on_channel_closed(ch.id());
                ctx.producers.on_channel_closed(ch.id());
            }
        };
        match &self.spawner {
            Some(rt) => drop(rt.spawn(watch)),
            None => drop(tokio::spawn(watch)),
        }
    }

    /// Whether sends are refused while the controller has not confirmed
    /// this master (controller mode).
    pub fn is_write_fenced(&self) -> bool {
        self.write_fenced.load(std::sync::atomic::Ordering::Acquire)
            || (self.config.enable_controller_mode
                && self.config.is_master()
                && mono_ms()
                    >= self
                        .lease_until_ms
                        .load(std::sync::atomic::Ordering::Acquire))
    }

    /// Whether a SYNC_MASTER acknowledges without a slave (controller mode,
    /// SyncStateSet of this master alone).
    pub fn acks_alone(&self) -> bool {
        self.ack_alone.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The HA server, on a master that runs one.
    pub fn ha_server(&self) -> Option<&Arc<HaServer>> {
        self.ha_server.get()
    }

    /// Tells the HA server that the CommitLog grew (no-op without one).
    pub fn wake_replication(&self) {
        if let Some(ha) = self.ha_server.get() {
            ha.wake();
        }
    }

    /// `brokerIP2:port` (else brokerIP1) of this broker's HA service, as
    /// registered with NameServers (`haServerAddr`).
    pub fn ha_server_addr(&self) -> String {
        let port = match self.ha_server.get() {
            Some(s) => s.local_addr().port(),
            None => match self.config.effective_ha_listen_port() {
                0 => self.store_host.port().saturating_add(1),
                p => p,
            },
        };
        match &self.config.broker_ip2 {
            Some(ip) => format!("{ip}:{port}"),
            None => format!("{}:{port}", self.store_host.ip()),
        }
    }

    /// The broker's name (`brokerName`).
    pub fn broker_name(&self) -> &str {
        &self.config.broker_name
    }
}
