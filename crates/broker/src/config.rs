//! `BrokerConfig`: the broker's settings, read from RocketMQ's `broker.conf`
//! keys (broker, network and store keys in one flat namespace, as Java's
//! `BrokerStartup` does). Store keys are mapped onto the store's
//! [`MessageStoreConfig`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use apogee_protocol::flags::PermName;
use apogee_store::{FlushDiskType, MessageStoreConfig};

use crate::error::{BrokerError, Result};

/// Default delay levels (`messageDelayLevel`).
pub const DEFAULT_MESSAGE_DELAY_LEVEL: &str =
    "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h";

/// Keys Java brokers accept that have no effect here. They are accepted so
/// existing broker.conf files load, and each one given is warned about at
/// the default log level: a setting that is silently ignored misleads.
const IGNORED_KEYS: &[&str] = &[
    "storePathConsumeQueue",
    "storePathIndex",
    "storeCheckpoint",
    "abortFile",
    "sendMessageThreadPoolNums",
    "pullMessageThreadPoolNums",
    "queryMessageThreadPoolNums",
    "adminBrokerThreadPoolNums",
    "clientManageThreadPoolNums",
    "consumerManageThreadPoolNums",
    "useReentrantLockWhenPutMessage",
    "transientStorePoolEnable",
    "warmMapedFileEnable",
    "fetchNamesrvAddrByAddressServer",
    "rocketmqHome",
    "forceRegister",
    // Decisions are written as op messages at once, never batched.
    "transactionOpBatchInterval",
    "transactionOpMsgMaxSize",
];

/// Keys Apogee parses, validates and reports (GET_BROKER_CONFIG) but does
/// not act on yet; each one given is warned about like [`IGNORED_KEYS`].
/// Remove a key when it is honoured.
const PARSED_NOT_HONOURED_KEYS: &[&str] = &[
    "osPageCacheBusyTimeOutMills",
    "waitTimeMillsInSendQueue",
    "filterSupportRetry",
    "useServerSideResetOffset",
];

/// A config value asking for a feature Apogee does not have yet, where
/// running without it would be unsafe (clients believing they are
/// authenticated or encrypted, a replica acting as a master, a log meant
/// to be replicated that is not). The start stops with
/// [`BrokerError::Unsupported`].
#[derive(Debug, Clone, Copy)]
pub struct UnsupportedValue {
    /// The broker.conf key.
    pub key: &'static str,
    /// The values refused (compared ignoring ASCII case); any other value
    /// of the key is what Apogee does anyway and is accepted.
    pub values: &'static [&'static str],
    /// What the value asks for, for the error message.
    pub feature: &'static str,
}

/// The refusal list, in one place: remove a row (or a value) when the
/// feature is honoured.
pub const UNSUPPORTED_VALUES: &[UnsupportedValue] = &[
    UnsupportedValue {
        key: "aclEnable",
        values: &["true"],
        feature: "ACL (access control lists)",
    },
    UnsupportedValue {
        key: "authenticationEnabled",
        values: &["true"],
        feature: "client authentication",
    },
    UnsupportedValue {
        key: "enableDLegerCommitLog",
        values: &["true"],
        feature: "DLedger (Raft) CommitLog",
    },
    UnsupportedValue {
        key: "tlsEnable",
        values: &["true"],
        feature: "TLS",
    },
];

/// The row of [`UNSUPPORTED_VALUES`] refusing `key=value`, if any.
pub fn unsupported_value(key: &str, value: &str) -> Option<&'static UnsupportedValue> {
    let value = value.trim();
    UNSUPPORTED_VALUES
        .iter()
        .find(|u| u.key == key && u.values.iter().any(|v| v.eq_ignore_ascii_case(value)))
}

/// The broker's configuration. Field names follow Java's `BrokerConfig`,
/// `NettyServerConfig` and `MessageStoreConfig` so existing files work.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `brokerClusterName` (DefaultCluster).
    pub broker_cluster_name: String,
    /// `brokerName` (broker-a).
    pub broker_name: String,
    /// `brokerId`: 0 = master.
    pub broker_id: i64,
    /// `listenPort` (10911); the VIP port is `listenPort - 2`. 0 picks
    /// ephemeral ports for both.
    pub listen_port: u16,
    /// `bindAddress`: the interface to listen on (0.0.0.0).
    pub bind_address: String,
    /// `brokerIP1`: the address advertised to NameServers and written into
    /// stored messages. Defaults to the first non-loopback IPv4 address.
    pub broker_ip1: String,
    /// `brokerIP2`: the address advertised for the HA port (`haServerAddr`);
    /// brokerIP1 when unset.
    pub broker_ip2: Option<String>,
    /// `namesrvAddr`: `host:port;host:port`; env `NAMESRV_ADDR` by default.
    pub namesrv_addr: Option<String>,
    /// `brokerRole`: ASYNC_MASTER, SYNC_MASTER or SLAVE.
    pub broker_role: String,
    /// `brokerPermission`: perm advertised for every topic (6 = RW).
    pub broker_permission: i32,
    /// `autoCreateTopicEnable`: create unknown topics on first send from TBW102.
    pub auto_create_topic_enable: bool,
    /// `grpcServerPort` (8081): the RocketMQ 5 gRPC endpoint of
    /// `apogee standalone` / `apogee broker`. With `listenPort=0` an unset
    /// port is ephemeral too, like the VIP and HA ports.
    pub grpc_server_port: Option<u16>,
    /// `grpcAdvertisedAddress`: `host:port` gRPC routes give clients
    /// instead of the address they dialled (NAT, containers).
    pub grpc_advertised_address: Option<String>,
    /// `autoCreateSubscriptionGroup`: create unknown groups on first use.
    pub auto_create_subscription_group: bool,
    /// `defaultTopicQueueNums`: queues of TBW102 and auto-created topics (8).
    pub default_topic_queue_nums: i32,
    /// `clusterTopicEnable`: the cluster-name topic is RW (else INHERIT only).
    pub cluster_topic_enable: bool,
    /// `brokerTopicEnable`: the broker-name topic is RW.
    pub broker_topic_enable: bool,
    /// `traceTopicEnable`: create the trace topic at start.
    pub trace_topic_enable: bool,
    /// `msgTraceTopicName` (RMQ_SYS_TRACE_TOPIC).
    pub msg_trace_topic_name: String,
    /// `longPollingEnable`: hold empty pulls until data arrives.
    pub long_polling_enable: bool,
    /// `storeReplyMessageEnable`: a reply (SEND_REPLY_MESSAGE) is stored in
    /// its topic as well as pushed to the requester (true).
    pub store_reply_message_enable: bool,
    /// `shortPollingTimeMills`: hold time when long polling is off (1 s).
    pub short_polling_time_mills: Duration,
    /// `messageDelayLevel`: the delay levels, e.g. `1s 5s 10s 30s 1m ... 2h`.
    pub message_delay_level: String,
    /// `timerWheelEnable`: serve any-time delays (TIMER_* properties).
    pub timer_wheel_enable: bool,
    /// `timerMaxDelaySec`: the longest any-time delay accepted (3 days).
    pub timer_max_delay_sec: u64,
    /// `timerPrecisionMs`: granularity of any-time delivery.
    pub timer_precision_ms: u64,
    /// `recallMessageEnable`: serve RECALL_MESSAGE (370) and gRPC
    /// RecallMessage. On by default (Apache 5.3 ships it off): only the
    /// producer that got a timer message's handle can recall it.
    pub recall_message_enable: bool,
    /// `allowRecallWhenBrokerNotWriteable`: recalls still accepted while
    /// brokerPermission forbids writes (true, as Apache).
    pub allow_recall_when_broker_not_writeable: bool,
    /// `flushConsumerOffsetInterval`: how often offsets are persisted (5 s).
    pub flush_consumer_offset_interval: Duration,
    /// `registerNameServerPeriod`: re-registration period (30 s).
    pub register_name_server_period: Duration,
    /// `compressedRegister`: send REGISTER_BROKER bodies zlib-compressed
    /// (Java's binary layout, header `compressed=true`). Off by default as in
    /// Java; a full registration too large for a comfortable frame is
    /// compressed anyway.
    pub compressed_register: bool,
    /// `registerBrokerTimeoutMills`: timeout of one REGISTER_BROKER call.
    pub register_broker_timeout_mills: Duration,
    /// `channelExpiredTimeout`: drop client channels silent this long (120 s).
    pub channel_expired_timeout: Duration,
    /// `channelScanInterval`: how often silent channels are looked for (10 s).
    pub channel_scan_interval: Duration,
    /// `rebalanceLockMaxLiveTime`: an orderly queue lock expires after this
    /// long without renewal (60 s; Java's `rocketmq.broker.rebalance.lockMaxLiveTime`).
    pub rebalance_lock_max_live_time: Duration,
    /// `serverChannelMaxIdleTimeSeconds`: idle connections are closed (120 s).
    pub server_channel_max_idle_time: Duration,
    /// `osPageCacheBusyTimeOutMills` (1 s): not honoured yet (the busy
    /// threshold is fixed at 1 s); see `PARSED_NOT_HONOURED_KEYS`.
    pub os_page_cache_busy_timeout_mills: Duration,
    /// `waitTimeMillsInSendQueue`: not honoured yet; see `PARSED_NOT_HONOURED_KEYS`.
    pub wait_time_mills_in_send_queue: Duration,
    /// `maxTransferBytesOnMessageInMemory`: pull response byte limit (256 KiB).
    pub max_transfer_bytes_on_message_in_memory: usize,
    /// `maxTransferCountOnMessageInMemory`: pull response message limit (32).
    pub max_transfer_count_on_message_in_memory: usize,
    /// `accessMessageInMemoryMaxRatio`: percent of RAM treated as page cache.
    pub access_message_in_memory_max_ratio: u32,
    /// `filterSupportRetry`: not honoured yet; see `PARSED_NOT_HONOURED_KEYS`.
    pub filter_support_retry: bool,
    /// `enablePropertyFilter`: accept SQL92 subscriptions. On by default
    /// here (Apache's default is off), so `MessageSelector.bySql` works
    /// out of the box; `false` refuses them as Apache does.
    pub enable_property_filter: bool,
    /// `useServerSideResetOffset`: not honoured yet; see `PARSED_NOT_HONOURED_KEYS`.
    pub use_server_side_reset_offset: bool,
    /// `rejectTransactionMessage`: refuse half messages with NO_PERMISSION.
    pub reject_transaction_message: bool,
    /// `transactionTimeOut`: a half message younger than this is not
    /// checked back yet (6 s).
    pub transaction_timeout: Duration,
    /// `transactionCheckMax`: check-backs of one half message before it is
    /// discarded to TRANS_CHECK_MAX_TIME_TOPIC (15).
    pub transaction_check_max: i32,
    /// `transactionCheckInterval`: period of the check-back scan (30 s).
    pub transaction_check_interval: Duration,
    /// `defaultMessageRequestMode`: how QUERY_ASSIGNMENT tells a group to
    /// read a topic when SET_MESSAGE_REQUEST_MODE chose nothing (PULL).
    pub default_message_request_mode: apogee_protocol::body::MessageRequestMode,
    /// `defaultPopShareQueueNum`: the POP queue sharing of that default (-1:
    /// every client pops every queue).
    pub default_pop_share_queue_num: i32,
    /// `reviveInterval`: how often the POP revive service looks (1 s).
    pub revive_interval: Duration,
    /// `maxPopPollingSize`: most POP requests held by long polling in all
    /// (100000); more are answered POLLING_FULL.
    pub max_pop_polling_size: usize,
    /// `popPollingSize`: most POP requests held per topic@group@queue (1024).
    pub pop_polling_size: usize,
    /// `initPopOffsetByCheckMsgInMem`: a group's first POP of a queue whose
    /// first message is still in memory starts at 0 (true).
    pub init_pop_offset_by_check_msg_in_mem: bool,
    /// `popFromRetryProbability`: percent of POPs that read the group's
    /// retry topics first (20).
    pub pop_from_retry_probability: u32,
    /// `serverLoadBalancerEnabled`: QUERY_ASSIGNMENT splits a topic's queues
    /// among the group's clients; off, each client gets them all.
    pub server_load_balancer_enabled: bool,
    /// `slaveReadEnable`: a master answers a consumer pulling old data (more
    /// than `accessMessageInMemoryMaxRatio` of RAM behind the CommitLog
    /// end) with `suggestWhichBrokerId` = the group's
    /// `whichBrokerWhenConsumeSlowly` (a slave), else the group's `brokerId`;
    /// off, every pull suggests the master (0).
    pub slave_read_enable: bool,
    /// `haListenPort`: where a master accepts slaves (listenPort + 1 when
    /// unset; ephemeral when listenPort is 0).
    pub ha_listen_port: Option<u16>,
    /// `haMasterAddress`: a slave's fixed master HA address (`host:port`);
    /// unset, it follows the `haServerAddr` its NameServer registration
    /// returns.
    pub ha_master_address: Option<String>,
    /// `haSendHeartbeatInterval`: a slave reports its offset at least this
    /// often; a master sends an empty frame after this long idle (5 s).
    pub ha_send_heartbeat_interval: Duration,
    /// `haTransferBatchSize`: most CommitLog bytes per HA frame (32 KiB).
    pub ha_transfer_batch_size: usize,
    /// `haMaxGapNotInSync`: a slave further behind is out of sync and a
    /// SYNC_MASTER answers SLAVE_NOT_AVAILABLE (256 MiB).
    pub ha_max_gap_not_in_sync: u64,
    /// `haHousekeepingInterval`: an HA link silent this long is closed (20 s).
    pub ha_housekeeping_interval: Duration,
    /// `enableControllerMode`: the controller group (`controllerAddr`)
    /// decides which replica of this brokerName is master; `brokerRole`
    /// then only says how a master acknowledges (SYNC_MASTER waits for a
    /// slave, otherwise ASYNC_MASTER) and `brokerId` is applied for from
    /// the controller.
    pub enable_controller_mode: bool,
    /// `controllerAddr`: the controllers' `host:port;host:port`.
    pub controller_addr: Option<String>,
    /// `controllerHeartBeatTimeoutMills`: the controller counts a broker
    /// dead after this long without a heartbeat, and a master that could
    /// not confirm its role with the controller group for half of it stops
    /// accepting writes (10 s).
    pub controller_heart_beat_timeout: Duration,
    /// `brokerHeartbeatInterval`: how often heartbeats go to the
    /// controllers and the role is checked (1 s).
    pub broker_heartbeat_interval: Duration,
    /// `haMaxTimeSlaveNotCatchup`: a slave behind the master for this long
    /// leaves the SyncStateSet (15 s).
    pub ha_max_time_slave_not_catchup: Duration,
    /// Store settings (`storePathRootDir`, `flushDiskType`, `maxMessageSize`, ...).
    pub store: MessageStoreConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        let namesrv_addr = std::env::var("NAMESRV_ADDR")
            .ok()
            .filter(|s| !s.trim().is_empty());
        BrokerConfig {
            broker_cluster_name: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_id: 0,
            listen_port: 10911,
            bind_address: "0.0.0.0".into(),
            broker_ip1: detect_broker_ip().to_string(),
            broker_ip2: None,
            namesrv_addr,
            broker_role: "ASYNC_MASTER".into(),
            broker_permission: PermName::PERM_READ | PermName::PERM_WRITE,
            auto_create_topic_enable: true,
            grpc_server_port: None,
            grpc_advertised_address: None,
            auto_create_subscription_group: true,
            default_topic_queue_nums: 8,
            cluster_topic_enable: true,
            broker_topic_enable: true,
            trace_topic_enable: false,
            msg_trace_topic_name: apogee_protocol::topic::RMQ_SYS_TRACE_TOPIC.into(),
            long_polling_enable: true,
            store_reply_message_enable: true,
            short_polling_time_mills: Duration::from_millis(1000),
            message_delay_level: DEFAULT_MESSAGE_DELAY_LEVEL.into(),
            timer_wheel_enable: true,
            timer_max_delay_sec: 3 * 24 * 3600,
            timer_precision_ms: 100,
            recall_message_enable: true,
            allow_recall_when_broker_not_writeable: true,
            flush_consumer_offset_interval: Duration::from_millis(5000),
            register_name_server_period: Duration::from_millis(30_000),
            register_broker_timeout_mills: Duration::from_millis(6000),
            compressed_register: false,
            channel_expired_timeout: Duration::from_millis(120_000),
            channel_scan_interval: Duration::from_millis(10_000),
            rebalance_lock_max_live_time: Duration::from_millis(60_000),
            server_channel_max_idle_time: Duration::from_secs(120),
            os_page_cache_busy_timeout_mills: Duration::from_millis(1000),
            wait_time_mills_in_send_queue: Duration::from_millis(200),
            max_transfer_bytes_on_message_in_memory: 256 * 1024,
            max_transfer_count_on_message_in_memory: 32,
            access_message_in_memory_max_ratio: 40,
            filter_support_retry: false,
            enable_property_filter: true,
            use_server_side_reset_offset: false,
            reject_transaction_message: false,
            transaction_timeout: Duration::from_millis(6000),
            transaction_check_max: 15,
            transaction_check_interval: Duration::from_millis(30_000),
            default_message_request_mode: apogee_protocol::body::MessageRequestMode::Pull,
            default_pop_share_queue_num: -1,
            revive_interval: Duration::from_millis(1000),
            max_pop_polling_size: 100_000,
            pop_polling_size: 1024,
            init_pop_offset_by_check_msg_in_mem: true,
            pop_from_retry_probability: 20,
            server_load_balancer_enabled: true,
            slave_read_enable: false,
            ha_listen_port: None,
            ha_master_address: None,
            ha_send_heartbeat_interval: Duration::from_millis(5000),
            ha_transfer_batch_size: 32 * 1024,
            ha_max_gap_not_in_sync: 256 * 1024 * 1024,
            ha_housekeeping_interval: Duration::from_millis(20_000),
            enable_controller_mode: false,
            controller_addr: None,
            controller_heart_beat_timeout: Duration::from_millis(10_000),
            broker_heartbeat_interval: Duration::from_millis(1000),
            ha_max_time_slave_not_catchup: Duration::from_millis(15_000),
            store: MessageStoreConfig::default(),
        }
    }
}

fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    v.trim()
        .parse::<T>()
        .map_err(|e| BrokerError::config(key, format!("'{v}' is not valid: {e}")))
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v.trim() {
        t if t.eq_ignore_ascii_case("true") => Ok(true),
        t if t.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(BrokerError::config(
            key,
            format!("'{v}' is not a boolean (expected true or false)"),
        )),
    }
}

fn millis(key: &str, v: &str) -> Result<Duration> {
    parse::<u64>(key, v).map(Duration::from_millis)
}

impl BrokerConfig {
    /// Applies `key=value` pairs (from broker.conf, `--set` or
    /// UPDATE_BROKER_CONFIG). Returns the keys it does not know so the
    /// caller can warn about them; a bad value is an error naming its key.
    /// On error `self` may be partly updated: apply to a clone when that matters.
    pub fn apply(&mut self, props: &BTreeMap<String, String>) -> Result<Vec<String>> {
        let mut unknown = Vec::new();
        for (key, value) in props {
            let v = value.trim();
            let k = key.as_str();
            if let Some(u) = unsupported_value(k, v) {
                return Err(BrokerError::Unsupported {
                    key: k.to_string(),
                    value: v.to_string(),
                    feature: u.feature,
                });
            }
            if PARSED_NOT_HONOURED_KEYS.contains(&k) {
                warn_not_honoured(k, v);
            }
            match k {
                "brokerClusterName" => self.broker_cluster_name = non_empty(k, v)?,
                "brokerName" => self.broker_name = non_empty(k, v)?,
                "brokerId" => self.broker_id = parse(k, v)?,
                "listenPort" => self.listen_port = parse(k, v)?,
                "bindAddress" => {
                    parse::<IpAddr>(k, v)?;
                    self.bind_address = v.to_string()
                }
                "brokerIP1" => {
                    parse::<IpAddr>(k, v)?;
                    self.broker_ip1 = v.to_string()
                }
                "brokerIP2" => {
                    if !v.is_empty() {
                        parse::<IpAddr>(k, v)?;
                    }
                    self.broker_ip2 = (!v.is_empty()).then(|| v.to_string());
                }
                "namesrvAddr" => {
                    self.namesrv_addr = (!v.is_empty()).then(|| v.to_string());
                    for addr in self.namesrv_addrs() {
                        if addr
                            .rsplit_once(':')
                            .and_then(|(_, p)| p.parse::<u16>().ok())
                            .is_none()
                        {
                            return Err(BrokerError::config(
                                k,
                                format!("'{addr}' is not host:port (expected e.g. 127.0.0.1:9876;10.0.0.2:9876)"),
                            ));
                        }
                    }
                }
                "brokerRole" => {
                    let role = v.to_ascii_uppercase();
                    if !["ASYNC_MASTER", "SYNC_MASTER", "SLAVE"].contains(&role.as_str()) {
                        return Err(BrokerError::config(
                            k,
                            format!("'{v}' is not ASYNC_MASTER, SYNC_MASTER or SLAVE"),
                        ));
                    }
                    self.broker_role = role;
                }
                "haListenPort" => self.ha_listen_port = Some(parse(k, v)?),
                "slaveReadEnable" => self.slave_read_enable = parse_bool(k, v)?,
                "haMasterAddress" => {
                    if !v.is_empty()
                        && v.rsplit_once(':')
                            .and_then(|(_, p)| p.parse::<u16>().ok())
                            .is_none()
                    {
                        return Err(BrokerError::config(
                            k,
                            format!("'{v}' is not host:port (the master's HA address, e.g. 10.0.0.1:10912)"),
                        ));
                    }
                    self.ha_master_address = (!v.is_empty()).then(|| v.to_string());
                }
                "haSendHeartbeatInterval" => self.ha_send_heartbeat_interval = positive_ms(k, v)?,
                "enableControllerMode" => self.enable_controller_mode = parse_bool(k, v)?,
                "controllerAddr" => {
                    let v = v.trim();
                    for a in v.split(';').map(str::trim).filter(|a| !a.is_empty()) {
                        if a.rsplit_once(':')
                            .and_then(|(_, p)| p.parse::<u16>().ok())
                            .is_none()
                        {
                            return Err(BrokerError::config(
                                k,
                                format!(
                                    "'{a}' is not host:port (controllers as host:port;host:port)"
                                ),
                            ));
                        }
                    }
                    self.controller_addr = (!v.is_empty()).then(|| v.to_string());
                }
                "controllerHeartBeatTimeoutMills" => {
                    self.controller_heart_beat_timeout = positive_ms(k, v)?
                }
                "brokerHeartbeatInterval" => self.broker_heartbeat_interval = positive_ms(k, v)?,
                "haMaxTimeSlaveNotCatchup" => {
                    self.ha_max_time_slave_not_catchup = positive_ms(k, v)?
                }
                "haTransferBatchSize" => {
                    let n: usize = positive(k, parse(k, v)?)?;
                    if n > 4 * 1024 * 1024 {
                        return Err(BrokerError::config(
                            k,
                            format!("{n} exceeds 4194304: slaves (Apache's too) read frames into a 4 MiB buffer"),
                        ));
                    }
                    self.ha_transfer_batch_size = n;
                }
                "haMaxGapNotInSync" | "haSlaveFallbehindMax" => {
                    self.ha_max_gap_not_in_sync = positive(k, parse(k, v)?)?
                }
                "haHousekeepingInterval" => self.ha_housekeeping_interval = positive_ms(k, v)?,
                "brokerPermission" => {
                    let p: i32 = parse(k, v)?;
                    if !(0..=15).contains(&p) {
                        return Err(BrokerError::config(
                            k,
                            format!("{p} is not a permission (0..15)"),
                        ));
                    }
                    self.broker_permission = p;
                }
                "autoCreateTopicEnable" => self.auto_create_topic_enable = parse_bool(k, v)?,
                "grpcServerPort" => self.grpc_server_port = Some(parse(k, v)?),
                "grpcAdvertisedAddress" => {
                    self.grpc_advertised_address = (!v.is_empty()).then(|| v.to_string())
                }
                "autoCreateSubscriptionGroup" => {
                    self.auto_create_subscription_group = parse_bool(k, v)?
                }
                "defaultTopicQueueNums" => {
                    let n: i32 = parse(k, v)?;
                    if !(1..=1024).contains(&n) {
                        return Err(BrokerError::config(k, format!("{n} is outside 1..1024")));
                    }
                    self.default_topic_queue_nums = n;
                }
                "clusterTopicEnable" => self.cluster_topic_enable = parse_bool(k, v)?,
                "brokerTopicEnable" => self.broker_topic_enable = parse_bool(k, v)?,
                "traceTopicEnable" => self.trace_topic_enable = parse_bool(k, v)?,
                "msgTraceTopicName" => self.msg_trace_topic_name = non_empty(k, v)?,
                "longPollingEnable" => self.long_polling_enable = parse_bool(k, v)?,
                "storeReplyMessageEnable" => self.store_reply_message_enable = parse_bool(k, v)?,
                "shortPollingTimeMills" => self.short_polling_time_mills = millis(k, v)?,
                "messageDelayLevel" => {
                    parse_delay_levels(v).map_err(|reason| BrokerError::config(k, reason))?;
                    self.message_delay_level = v.to_string();
                }
                "timerWheelEnable" => self.timer_wheel_enable = parse_bool(k, v)?,
                "timerMaxDelaySec" => self.timer_max_delay_sec = parse(k, v)?,
                "timerPrecisionMs" => self.timer_precision_ms = positive(k, parse(k, v)?)?,
                "recallMessageEnable" => self.recall_message_enable = parse_bool(k, v)?,
                "allowRecallWhenBrokerNotWriteable" => {
                    self.allow_recall_when_broker_not_writeable = parse_bool(k, v)?
                }
                "flushConsumerOffsetInterval" => {
                    self.flush_consumer_offset_interval = positive_ms(k, v)?
                }
                "registerNameServerPeriod" => self.register_name_server_period = positive_ms(k, v)?,
                "compressedRegister" => self.compressed_register = parse_bool(k, v)?,
                "registerBrokerTimeoutMills" => {
                    self.register_broker_timeout_mills = positive_ms(k, v)?
                }
                "channelExpiredTimeout" => self.channel_expired_timeout = positive_ms(k, v)?,
                "channelScanInterval" => self.channel_scan_interval = positive_ms(k, v)?,
                "rebalanceLockMaxLiveTime" | "rocketmq.broker.rebalance.lockMaxLiveTime" => {
                    self.rebalance_lock_max_live_time = positive_ms(k, v)?
                }
                "serverChannelMaxIdleTimeSeconds" => {
                    self.server_channel_max_idle_time = Duration::from_secs(parse(k, v)?)
                }
                "osPageCacheBusyTimeOutMills" => {
                    self.os_page_cache_busy_timeout_mills = millis(k, v)?
                }
                "waitTimeMillsInSendQueue" => self.wait_time_mills_in_send_queue = millis(k, v)?,
                "maxTransferBytesOnMessageInMemory" => {
                    self.max_transfer_bytes_on_message_in_memory = positive(k, parse(k, v)?)?
                }
                "maxTransferCountOnMessageInMemory" => {
                    self.max_transfer_count_on_message_in_memory = positive(k, parse(k, v)?)?
                }
                "accessMessageInMemoryMaxRatio" => {
                    self.access_message_in_memory_max_ratio = percent(k, v)?
                }
                "filterSupportRetry" => self.filter_support_retry = parse_bool(k, v)?,
                "enablePropertyFilter" => self.enable_property_filter = parse_bool(k, v)?,
                "useServerSideResetOffset" => self.use_server_side_reset_offset = parse_bool(k, v)?,
                "rejectTransactionMessage" => self.reject_transaction_message = parse_bool(k, v)?,
                "transactionTimeOut" => self.transaction_timeout = millis(k, v)?,
                "transactionCheckMax" => {
                    self.transaction_check_max = positive(k, parse::<i32>(k, v)?)?
                }
                "transactionCheckInterval" => self.transaction_check_interval = positive_ms(k, v)?,
                "defaultMessageRequestMode" => {
                    self.default_message_request_mode =
                        apogee_protocol::body::MessageRequestMode::from_java_name(v.trim())
                            .ok_or_else(|| {
                                BrokerError::config(k, format!("{v:?} is not PULL or POP"))
                            })?
                }
                "defaultPopShareQueueNum" => self.default_pop_share_queue_num = parse(k, v)?,
                "reviveInterval" => self.revive_interval = positive_ms(k, v)?,
                "maxPopPollingSize" => self.max_pop_polling_size = parse(k, v)?,
                "popPollingSize" => self.pop_polling_size = parse(k, v)?,
                "initPopOffsetByCheckMsgInMem" => {
                    self.init_pop_offset_by_check_msg_in_mem = parse_bool(k, v)?
                }
                "popFromRetryProbability" => self.pop_from_retry_probability = percent(k, v)?,
                "serverLoadBalancerEnabled" => {
                    self.server_load_balancer_enabled = parse_bool(k, v)?
                }
                // Store keys.
                "storePathRootDir" => {
                    self.store.store_path_root_dir = PathBuf::from(non_empty(k, v)?)
                }
                "storePathCommitLog" => {
                    let expected = self.store.store_path_root_dir.join("commitlog");
                    if expected.as_os_str() != v {
                        tracing::warn!(
                            "storePathCommitLog '{v}' ignored: the CommitLog always lives in \
                             <storePathRootDir>/commitlog"
                        );
                    }
                }
                "mappedFileSizeCommitLog" => {
                    self.store.mapped_file_size_commit_log = positive(k, parse(k, v)?)?
                }
                "mappedFileSizeConsumeQueue" => {
                    let n: u64 = parse(k, v)?;
                    if n == 0 || !n.is_multiple_of(20) {
                        return Err(BrokerError::config(
                            k,
                            format!("{n} is not a positive multiple of 20"),
                        ));
                    }
                    self.store.mapped_file_size_consume_queue = n
                }
                "flushDiskType" => {
                    self.store.flush_disk_type = match v.to_ascii_uppercase().as_str() {
                        "ASYNC_FLUSH" => FlushDiskType::AsyncFlush,
                        "SYNC_FLUSH" => FlushDiskType::SyncFlush,
                        _ => {
                            return Err(BrokerError::config(
                                k,
                                format!("'{v}' is not ASYNC_FLUSH or SYNC_FLUSH"),
                            ))
                        }
                    }
                }
                "flushIntervalCommitLog" => {
                    self.store.flush_interval_commit_log = positive(k, parse(k, v)?)?
                }
                "flushCommitLogLeastPages" => {
                    self.store.flush_commit_log_least_pages = parse(k, v)?
                }
                "flushIntervalConsumeQueue" => {
                    self.store.flush_interval_consume_queue = positive(k, parse(k, v)?)?
                }
                "syncFlushTimeout" => self.store.sync_flush_timeout = positive(k, parse(k, v)?)?,
                "maxMessageSize" => self.store.max_message_size = positive(k, parse(k, v)?)?,
                "fileReservedTime" => self.store.file_reserved_time = parse(k, v)?,
                "deleteWhen" => self.store.delete_when = v.to_string(),
                "diskMaxUsedSpaceRatio" => self.store.disk_max_used_space_ratio = percent(k, v)?,
                "diskSpaceCleanForciblyRatio" => {
                    self.store.disk_space_clean_forcibly_ratio = percent(k, v)?
                }
                "diskSpaceWarningLevelRatio" => {
                    self.store.disk_space_warning_level_ratio = percent(k, v)?
                }
                "cleanResourceInterval" => {
                    self.store.clean_resource_interval = positive(k, parse(k, v)?)?
                }
                "diskCheckInterval" => self.store.disk_check_interval = positive(k, parse(k, v)?)?,
                "destroyMapedFileIntervalForcibly" | "destroyMappedFileIntervalForcibly" => {
                    self.store.destroy_mapped_file_interval_forcibly = parse(k, v)?
                }
                "deleteFilesBatchMax" => {
                    self.store.delete_files_batch_max = positive(k, parse(k, v)?)?
                }
                "messageIndexEnable" => self.store.message_index_enable = parse_bool(k, v)?,
                "maxHashSlotNum" => self.store.max_hash_slot_num = positive(k, parse(k, v)?)?,
                "maxIndexNum" => self.store.max_index_num = positive(k, parse(k, v)?)?,
                "maxFilterMessageCount" => {
                    self.store.max_filter_message_count = positive(k, parse(k, v)?)?
                }
                // Their other values are what Apogee does anyway.
                "aclEnable" | "authenticationEnabled" | "enableDLegerCommitLog" | "tlsEnable" => {
                    parse_bool(k, v)?;
                }
                _ if IGNORED_KEYS.contains(&k) => warn_not_honoured(k, v),
                _ => unknown.push(key.clone()),
            }
        }
        Ok(unknown)
    }

    /// Controller addresses from `controllerAddr`.
    pub fn controller_addrs(&self) -> Vec<String> {
        self.controller_addr
            .as_deref()
            .unwrap_or("")
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// What controller mode needs before a start: impossible combinations
    /// stop it with an error naming the key.
    pub fn check_controller_mode(&self) -> Result<()> {
        if !self.enable_controller_mode {
            return Ok(());
        }
        if self.controller_addrs().is_empty() {
            return Err(BrokerError::config(
                "controllerAddr",
                "enableControllerMode=true needs the controllers' addresses (host:port;host:port)",
            ));
        }
        if self.listen_port == 0 {
            return Err(BrokerError::config(
                "listenPort",
                "controller mode needs a fixed port: the address registered with the controller must stay the same across role changes",
            ));
        }
        if self.ha_master_address.is_some() {
            return Err(BrokerError::config(
                "haMasterAddress",
                "in controller mode the controller names the master; remove haMasterAddress",
            ));
        }
        // Worst case between two heartbeats reaching a controller: one
        // interval plus one call timeout (the interval, at least 500 ms).
        // It must stay below the master's lease (half the timeout), or a
        // live master could be judged dead while it still holds its lease.
        let gap = self.broker_heartbeat_interval
            + self
                .broker_heartbeat_interval
                .max(std::time::Duration::from_millis(500));
        if gap >= self.controller_heart_beat_timeout / 2 {
            return Err(BrokerError::config(
                "brokerHeartbeatInterval",
                format!(
                    "a heartbeat may arrive {} ms after the previous one (interval + call timeout); that must be below half of controllerHeartBeatTimeoutMills ({} ms)",
                    gap.as_millis(),
                    (self.controller_heart_beat_timeout / 2).as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// NameServer addresses from `namesrvAddr` (`a:9876;b:9876`).
    pub fn namesrv_addrs(&self) -> Vec<String> {
        self.namesrv_addr
            .as_deref()
            .unwrap_or("")
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The gRPC port: `grpcServerPort`, else 8081, else 0 (ephemeral) when
    /// `listenPort` is 0 so that brokers on free ports never collide.
    pub fn effective_grpc_server_port(&self) -> u16 {
        match (self.grpc_server_port, self.listen_port) {
            (Some(p), _) => p,
            (None, 0) => 0,
            (None, _) => 8081,
        }
    }

    /// `brokerIP1:listenPort` (with the configured port; the controller
    /// uses the bound port when `listenPort` is 0).
    pub fn broker_addr(&self) -> String {
        format!("{}:{}", self.broker_ip1, self.listen_port)
    }

    /// The delay levels in milliseconds, level 1 first.
    pub fn delay_levels(&self) -> Vec<u64> {
        parse_delay_levels(&self.message_delay_level).unwrap_or_default()
    }

    /// True when the broker accepts writes as a master.
    pub fn is_master(&self) -> bool {
        self.broker_role != "SLAVE"
    }

    /// True for a SYNC_MASTER (sends wait for a slave).
    pub fn is_sync_master(&self) -> bool {
        self.broker_role == "SYNC_MASTER"
    }

    /// The HA port: `haListenPort`, else listenPort + 1 (0, ephemeral,
    /// when listenPort is 0).
    pub fn effective_ha_listen_port(&self) -> u16 {
        match (self.ha_listen_port, self.listen_port) {
            (Some(p), _) => p,
            (None, 0) => 0,
            (None, p) => p.saturating_add(1),
        }
    }

    /// Checks the role against brokerId as Apache's `BrokerStartup` does: a
    /// slave needs brokerId >= 1; a master is always brokerId 0 (a
    /// different value is replaced, with a warning).
    pub fn check_role(&mut self) -> Result<()> {
        if self.is_master() {
            if self.broker_id != 0 {
                tracing::warn!(
                    broker_id = self.broker_id,
                    role = %self.broker_role,
                    "a master is brokerId 0; using 0"
                );
                self.broker_id = 0;
            }
        } else if self.broker_id <= 0 {
            return Err(BrokerError::config(
                "brokerId",
                format!(
                    "{} is not a slave's id: with brokerRole=SLAVE, brokerId must be 1 or more",
                    self.broker_id
                ),
            ));
        }
        Ok(())
    }

    /// The effective configuration as `key=value` pairs (for `-p` and
    /// GET_BROKER_CONFIG).
    pub fn to_properties(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        let ms = |d: Duration| d.as_millis().to_string();
        put("brokerClusterName", self.broker_cluster_name.clone());
        put("brokerName", self.broker_name.clone());
        put("brokerId", self.broker_id.to_string());
        put("listenPort", self.listen_port.to_string());
        put(
            "grpcServerPort",
            self.effective_grpc_server_port().to_string(),
        );
        put(
            "grpcAdvertisedAddress",
            self.grpc_advertised_address.clone().unwrap_or_default(),
        );
        put("bindAddress", self.bind_address.clone());
        put("brokerIP1", self.broker_ip1.clone());
        put(
            "brokerIP2",
            self.broker_ip2
                .clone()
                .unwrap_or_else(|| self.broker_ip1.clone()),
        );
        put("namesrvAddr", self.namesrv_addr.clone().unwrap_or_default());
        put("brokerRole", self.broker_role.clone());
        put("haListenPort", self.effective_ha_listen_port().to_string());
        put("slaveReadEnable", self.slave_read_enable.to_string());
        put(
            "haMasterAddress",
            self.ha_master_address.clone().unwrap_or_default(),
        );
        put(
            "haSendHeartbeatInterval",
            ms(self.ha_send_heartbeat_interval),
        );
        put(
            "haTransferBatchSize",
            self.ha_transfer_batch_size.to_string(),
        );
        put("haMaxGapNotInSync", self.ha_max_gap_not_in_sync.to_string());
        put("haHousekeepingInterval", ms(self.ha_housekeeping_interval));
        put(
            "enableControllerMode",
            self.enable_controller_mode.to_string(),
        );
        put(
            "controllerAddr",
            self.controller_addr.clone().unwrap_or_default(),
        );
        put(
            "controllerHeartBeatTimeoutMills",
            ms(self.controller_heart_beat_timeout),
        );
        put(
            "brokerHeartbeatInterval",
            ms(self.broker_heartbeat_interval),
        );
        put(
            "haMaxTimeSlaveNotCatchup",
            ms(self.ha_max_time_slave_not_catchup),
        );
        put("brokerPermission", self.broker_permission.to_string());
        put(
            "autoCreateTopicEnable",
            self.auto_create_topic_enable.to_string(),
        );
        put(
            "autoCreateSubscriptionGroup",
            self.auto_create_subscription_group.to_string(),
        );
        put(
            "defaultTopicQueueNums",
            self.default_topic_queue_nums.to_string(),
        );
        put("clusterTopicEnable", self.cluster_topic_enable.to_string());
        put("brokerTopicEnable", self.broker_topic_enable.to_string());
        put("traceTopicEnable", self.trace_topic_enable.to_string());
        put("msgTraceTopicName", self.msg_trace_topic_name.clone());
        put("longPollingEnable", self.long_polling_enable.to_string());
        put(
            "storeReplyMessageEnable",
            self.store_reply_message_enable.to_string(),
        );
        put("shortPollingTimeMills", ms(self.short_polling_time_mills));
        put("messageDelayLevel", self.message_delay_level.clone());
        put("timerWheelEnable", self.timer_wheel_enable.to_string());
        put("timerMaxDelaySec", self.timer_max_delay_sec.to_string());
        put("timerPrecisionMs", self.timer_precision_ms.to_string());
        put(
            "recallMessageEnable",
            self.recall_message_enable.to_string(),
        );
        put(
            "allowRecallWhenBrokerNotWriteable",
            self.allow_recall_when_broker_not_writeable.to_string(),
        );
        put(
            "flushConsumerOffsetInterval",
            ms(self.flush_consumer_offset_interval),
        );
        put(
            "registerNameServerPeriod",
            ms(self.register_name_server_period),
        );
        put("compressedRegister", self.compressed_register.to_string());
        put(
            "registerBrokerTimeoutMills",
            ms(self.register_broker_timeout_mills),
        );
        put("channelExpiredTimeout", ms(self.channel_expired_timeout));
        put("channelScanInterval", ms(self.channel_scan_interval));
        put(
            "rebalanceLockMaxLiveTime",
            ms(self.rebalance_lock_max_live_time),
        );
        put(
            "serverChannelMaxIdleTimeSeconds",
            self.server_channel_max_idle_time.as_secs().to_string(),
        );
        put(
            "osPageCacheBusyTimeOutMills",
            ms(self.os_page_cache_busy_timeout_mills),
        );
        put(
            "waitTimeMillsInSendQueue",
            ms(self.wait_time_mills_in_send_queue),
        );
        put(
            "maxTransferBytesOnMessageInMemory",
            self.max_transfer_bytes_on_message_in_memory.to_string(),
        );
        put(
            "maxTransferCountOnMessageInMemory",
            self.max_transfer_count_on_message_in_memory.to_string(),
        );
        put(
            "accessMessageInMemoryMaxRatio",
            self.access_message_in_memory_max_ratio.to_string(),
        );
        put("filterSupportRetry", self.filter_support_retry.to_string());
        put(
            "enablePropertyFilter",
            self.enable_property_filter.to_string(),
        );
        put(
            "useServerSideResetOffset",
            self.use_server_side_reset_offset.to_string(),
        );
        put(
            "rejectTransactionMessage",
            self.reject_transaction_message.to_string(),
        );
        put("transactionTimeOut", ms(self.transaction_timeout));
        put(
            "transactionCheckMax",
            self.transaction_check_max.to_string(),
        );
        put(
            "transactionCheckInterval",
            ms(self.transaction_check_interval),
        );
        put(
            "defaultMessageRequestMode",
            self.default_message_request_mode.java_name().to_string(),
        );
        put(
            "defaultPopShareQueueNum",
            self.default_pop_share_queue_num.to_string(),
        );
        put("reviveInterval", ms(self.revive_interval));
        put("maxPopPollingSize", self.max_pop_polling_size.to_string());
        put("popPollingSize", self.pop_polling_size.to_string());
        put(
            "initPopOffsetByCheckMsgInMem",
            self.init_pop_offset_by_check_msg_in_mem.to_string(),
        );
        put(
            "popFromRetryProbability",
            self.pop_from_retry_probability.to_string(),
        );
        put(
            "serverLoadBalancerEnabled",
            self.server_load_balancer_enabled.to_string(),
        );
        let s = &self.store;
        put(
            "storePathRootDir",
            s.store_path_root_dir.display().to_string(),
        );
        put(
            "storePathCommitLog",
            s.store_path_root_dir
                .join("commitlog")
                .display()
                .to_string(),
        );
        put(
            "mappedFileSizeCommitLog",
            s.mapped_file_size_commit_log.to_string(),
        );
        put(
            "mappedFileSizeConsumeQueue",
            s.mapped_file_size_consume_queue.to_string(),
        );
        put(
            "flushDiskType",
            match s.flush_disk_type {
                FlushDiskType::AsyncFlush => "ASYNC_FLUSH",
                FlushDiskType::SyncFlush => "SYNC_FLUSH",
            }
            .to_string(),
        );
        put(
            "flushIntervalCommitLog",
            s.flush_interval_commit_log.to_string(),
        );
        put(
            "flushCommitLogLeastPages",
            s.flush_commit_log_least_pages.to_string(),
        );
        put(
            "flushIntervalConsumeQueue",
            s.flush_interval_consume_queue.to_string(),
        );
        put("syncFlushTimeout", s.sync_flush_timeout.to_string());
        put("maxMessageSize", s.max_message_size.to_string());
        put("fileReservedTime", s.file_reserved_time.to_string());
        put("deleteWhen", s.delete_when.clone());
        put(
            "diskMaxUsedSpaceRatio",
            s.disk_max_used_space_ratio.to_string(),
        );
        put(
            "diskSpaceCleanForciblyRatio",
            s.disk_space_clean_forcibly_ratio.to_string(),
        );
        put(
            "diskSpaceWarningLevelRatio",
            s.disk_space_warning_level_ratio.to_string(),
        );
        put(
            "cleanResourceInterval",
            s.clean_resource_interval.to_string(),
        );
        put("diskCheckInterval", s.disk_check_interval.to_string());
        put(
            "destroyMapedFileIntervalForcibly",
            s.destroy_mapped_file_interval_forcibly.to_string(),
        );
        put("deleteFilesBatchMax", s.delete_files_batch_max.to_string());
        put("messageIndexEnable", s.message_index_enable.to_string());
        put("maxHashSlotNum", s.max_hash_slot_num.to_string());
        put("maxIndexNum", s.max_index_num.to_string());
        put(
            "maxFilterMessageCount",
            s.max_filter_message_count.to_string(),
        );
        m
    }
}

fn warn_not_honoured(key: &str, value: &str) {
    tracing::warn!(
        "broker config key '{key}' is accepted but not honoured by apogee yet; \
         its value '{value}' has no effect"
    )
}

fn non_empty(key: &str, v: &str) -> Result<String> {
    if v.is_empty() {
        return Err(BrokerError::config(key, "must not be empty"));
    }
    Ok(v.to_string())
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(key: &str, n: T) -> Result<T> {
    if n <= T::default() {
        return Err(BrokerError::config(
            key,
            format!("must be greater than 0, got {n}"),
        ));
    }
    Ok(n)
}

fn positive_ms(key: &str, v: &str) -> Result<Duration> {
    let n: u64 = parse(key, v)?;
    positive(key, n).map(Duration::from_millis)
}

fn percent(key: &str, v: &str) -> Result<u32> {
    let n: u32 = parse(key, v)?;
    if n > 100 {
        return Err(BrokerError::config(
            key,
            format!("{n} is not a percentage (0..100)"),
        ));
    }
    Ok(n)
}

/// Parses `messageDelayLevel` (`1s 5s 1m 2h 1d`, units s/m/h/d) into
/// milliseconds per level.
pub fn parse_delay_levels(text: &str) -> std::result::Result<Vec<u64>, String> {
    let mut out = Vec::new();
    for part in text.split_whitespace() {
        let (num, unit) = part.split_at(part.len().saturating_sub(1));
        let mult: u64 = match unit {
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("level '{part}' must end in s, m, h or d")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("level '{part}' does not start with a whole number"))?;
        out.push(n.saturating_mul(mult));
    }
    if out.is_empty() {
        return Err("no delay levels given".into());
    }
    Ok(out)
}

/// The address a broker advertises by default: the source address the OS
/// would use to reach the outside (no packet is sent), if it is a
/// non-loopback IPv4 address; otherwise 127.0.0.1.
pub fn detect_broker_ip() -> IpAddr {
    for probe in ["8.8.8.8:80", "10.255.255.255:1", "192.168.255.255:1"] {
        let found = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| s.connect(probe).map(|_| s))
            .and_then(|s| s.local_addr());
        if let Ok(addr) = found {
            let ip = addr.ip();
            if ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified() {
                return ip;
            }
        }
    }
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn broker_and_store_keys_apply() {
        let mut c = BrokerConfig::default();
        let unknown = c
            .apply(&props(&[
                ("brokerName", "b1"),
                ("listenPort", "20911"),
                ("namesrvAddr", "10.0.0.1:9876; 10.0.0.2:9876"),
                ("storePathRootDir", "/tmp/x"),
                ("flushDiskType", "SYNC_FLUSH"),
                ("maxMessageSize", "1024"),
                ("sendMessageThreadPoolNums", "4"),
                ("noSuchKey", "1"),
            ]))
            .unwrap();
        assert_eq!(unknown, vec!["noSuchKey".to_string()]);
        assert_eq!(c.broker_name, "b1");
        assert_eq!(c.listen_port, 20911);
        assert_eq!(c.namesrv_addrs(), vec!["10.0.0.1:9876", "10.0.0.2:9876"]);
        assert_eq!(c.store.store_path_root_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.store.flush_disk_type, FlushDiskType::SyncFlush);
        assert_eq!(c.store.max_message_size, 1024);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (k, v) in [
            ("listenPort", "abc"),
            ("autoCreateTopicEnable", "yes"),
            ("flushDiskType", "SOMETIMES"),
            ("namesrvAddr", "nohost"),
            ("messageDelayLevel", "1s 5x"),
            ("brokerIP1", "not-an-ip"),
            ("diskMaxUsedSpaceRatio", "120"),
            ("channelExpiredTimeout", "0"),
        ] {
            let err = BrokerConfig::default()
                .apply(&props(&[(k, v)]))
                .unwrap_err();
            assert!(err.to_string().contains(k), "{err} should name {k}");
        }
    }

    /// Asserts `key=value` stops the configuration with an error that names
    /// the key and says it is not supported yet.
    fn assert_refused(key: &str, value: &str) {
        let err = BrokerConfig::default()
            .apply(&props(&[("brokerName", "b1"), (key, value)]))
            .unwrap_err();
        assert!(
            matches!(&err, BrokerError::Unsupported { key: k, .. } if k == key),
            "{key}={value}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(key), "{text} should name {key}");
        assert!(text.contains("not supported yet"), "{text}");
    }

    #[test]
    fn acl_enable_true_is_refused() {
        assert_refused("aclEnable", "true");
        assert_refused("aclEnable", " TRUE ");
    }

    #[test]
    fn authentication_enabled_true_is_refused() {
        assert_refused("authenticationEnabled", "true");
    }

    #[test]
    fn controller_mode_refuses_a_heartbeat_gap_reaching_half_the_timeout() {
        let mut c = BrokerConfig::default();
        c.apply(&props(&[
            ("enableControllerMode", "true"),
            ("listenPort", "10911"),
            ("controllerAddr", "127.0.0.1:9878"),
            ("controllerHeartBeatTimeoutMills", "3000"),
            // 300 + 500 (call timeout) = 800 ms < 1500 ms.
            ("brokerHeartbeatInterval", "300"),
        ]))
        .unwrap();
        c.check_controller_mode().unwrap();
        // 800 + 800 = 1600 ms >= 1500 ms.
        c.apply(&props(&[("brokerHeartbeatInterval", "800")]))
            .unwrap();
        match c.check_controller_mode() {
            Err(BrokerError::Config { key, .. }) => assert_eq!(key, "brokerHeartbeatInterval"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn controller_mode_needs_controllers_and_a_fixed_port() {
        let mut c = BrokerConfig::default();
        c.apply(&props(&[
            ("enableControllerMode", "true"),
            ("listenPort", "10911"),
        ]))
        .unwrap();
        let e = c.check_controller_mode().unwrap_err().to_string();
        assert!(e.contains("controllerAddr"), "{e}");
        c.apply(&props(&[(
            "controllerAddr",
            "127.0.0.1:9878;127.0.0.1:9868",
        )]))
        .unwrap();
        assert_eq!(c.controller_addrs().len(), 2);
        c.check_controller_mode().unwrap();
        c.listen_port = 0;
        let e = c.check_controller_mode().unwrap_err().to_string();
        assert!(e.contains("listenPort"), "{e}");
        let bad = BrokerConfig::default()
            .apply(&props(&[("controllerAddr", "nohost")]))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("controllerAddr"), "{bad}");
    }

    #[test]
    fn enable_dleger_commit_log_true_is_refused() {
        assert_refused("enableDLegerCommitLog", "true");
    }

    #[test]
    fn tls_enable_true_is_refused() {
        assert_refused("tlsEnable", "true");
    }

    #[test]
    fn safe_values_of_unsupported_keys_are_accepted() {
        let mut c = BrokerConfig::default();
        let unknown = c
            .apply(&props(&[
                ("aclEnable", "false"),
                ("authenticationEnabled", "false"),
                ("brokerRole", "ASYNC_MASTER"),
                ("enableControllerMode", "false"),
                ("enableDLegerCommitLog", "false"),
                ("tlsEnable", "false"),
            ]))
            .unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert!(c.is_master());
        // A value that is no boolean is still a bad value, not "unsupported".
        let err = BrokerConfig::default()
            .apply(&props(&[("tlsEnable", "yes")]))
            .unwrap_err();
        assert!(matches!(err, BrokerError::Config { .. }), "{err:?}");
    }

    #[test]
    fn ha_keys_apply_export_and_check_the_role() {
        let mut c = BrokerConfig::default();
        let unknown = c
            .apply(&props(&[
                ("brokerRole", "slave"),
                ("brokerId", "2"),
                ("listenPort", "20911"),
                ("haMasterAddress", "10.0.0.1:10912"),
                ("haSendHeartbeatInterval", "1000"),
                ("haTransferBatchSize", "65536"),
                ("haMaxGapNotInSync", "1048576"),
                ("haHousekeepingInterval", "9000"),
                ("syncFlushTimeout", "700"),
            ]))
            .unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert!(!c.is_master());
        assert_eq!(c.effective_ha_listen_port(), 20912, "listenPort + 1");
        assert_eq!(c.ha_master_address.as_deref(), Some("10.0.0.1:10912"));
        assert_eq!(c.ha_send_heartbeat_interval, Duration::from_millis(1000));
        assert_eq!(c.ha_transfer_batch_size, 65536);
        assert_eq!(c.ha_max_gap_not_in_sync, 1 << 20);
        assert_eq!(c.ha_housekeeping_interval, Duration::from_millis(9000));
        assert_eq!(c.store.sync_flush_timeout, 700);
        c.check_role().unwrap();
        let p = c.to_properties();
        assert_eq!(p["haListenPort"], "20912");
        assert_eq!(p["haMasterAddress"], "10.0.0.1:10912");
        let mut back = BrokerConfig::default();
        back.apply(&p).unwrap();
        assert_eq!(back.to_properties(), p);

        c.apply(&props(&[
            ("haListenPort", "30000"),
            ("brokerIP2", "10.1.1.1"),
        ]))
        .unwrap();
        assert_eq!(c.broker_ip2.as_deref(), Some("10.1.1.1"));
        assert_eq!(c.effective_ha_listen_port(), 30000);
        // A slave needs an id of 1 or more; a master is always 0.
        let mut bad = BrokerConfig::default();
        bad.apply(&props(&[("brokerRole", "SLAVE")])).unwrap();
        let err = bad.check_role().unwrap_err();
        assert!(err.to_string().contains("brokerId"), "{err}");
        let mut m = BrokerConfig::default();
        m.apply(&props(&[("brokerRole", "SYNC_MASTER"), ("brokerId", "3")]))
            .unwrap();
        m.check_role().unwrap();
        assert_eq!(m.broker_id, 0);
        assert!(m.is_sync_master());
        for (k, v) in [
            ("haMasterAddress", "nohost"),
            ("haTransferBatchSize", "0"),
            ("haTransferBatchSize", "8388608"),
            ("haListenPort", "70000"),
            ("haSendHeartbeatInterval", "0"),
            ("brokerIP2", "not-an-ip"),
        ] {
            let err = BrokerConfig::default()
                .apply(&props(&[(k, v)]))
                .unwrap_err();
            assert!(err.to_string().contains(k), "{err} should name {k}");
        }
    }

    #[test]
    fn properties_round_trip() {
        let mut c = BrokerConfig::default();
        c.apply(&props(&[("brokerName", "zz"), ("deleteWhen", "01;13")]))
            .unwrap();
        let mut d = BrokerConfig::default();
        let unknown = d.apply(&c.to_properties()).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(d.to_properties(), c.to_properties());
    }

    #[test]
    fn delay_levels_parse() {
        assert_eq!(
            parse_delay_levels("1s 2m 1h 1d").unwrap(),
            vec![1000, 120_000, 3_600_000, 86_400_000]
        );
        assert_eq!(BrokerConfig::default().delay_levels().len(), 18);
        assert!(parse_delay_levels("").is_err());
    }

    #[test]
    fn detected_ip_is_ipv4() {
        assert!(detect_broker_ip().is_ipv4());
    }
}
