//! What every producer, consumer and admin client shares: the NameServer
//! list with fail-over, the connection pool, the client id, the route cache
//! (copy-on-write snapshots, so senders never contend on a lock) and the
//! plain request/response helpers that turn a refusal into a [`ClientError`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apogee_protocol::body::{HeartbeatData, TopicRouteData};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{
    CommandHeader, GetRouteInfoRequestHeader, UnregisterClientRequestHeader,
};
use apogee_protocol::{LanguageCode, RemotingCommand};
use apogee_remoting::{ClientConfig, ProcessorRegistry, RemotingClient};
use arc_swap::ArcSwap;

use crate::error::{ClientError, Result};

/// The broker id of a master.
pub const MASTER_ID: i64 = 0;
/// Topic whose route stands in for topics that do not exist yet.
pub const AUTO_CREATE_TOPIC_KEY: &str = "TBW102";
/// The version we announce; brokers and NameServers answer it with the
/// standard-JSON route dialect.
pub const CLIENT_VERSION: i32 = apogee_protocol::command::CURRENT_VERSION;

/// Settings common to producers, consumers and the admin client (Java `ClientConfig`).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// NameServer addresses, `host:port` separated by `;`.
    pub namesrv_addr: String,
    /// Part of the client id; `None` makes a per-instance unique one
    /// (`pid#nanos`), as Java 5 does for the default name.
    pub instance_name: Option<String>,
    /// Timeout of NameServer calls and broker admin calls (`mqClientApiTimeout`).
    pub api_timeout: Duration,
    /// Route refresh period (`pollNameServerInterval`).
    pub poll_name_server_interval: Duration,
    /// Broker heartbeat period (`heartbeatBrokerInterval`).
    pub heartbeat_broker_interval: Duration,
    /// Advertised client IP (client id); default: the first non-loopback IPv4.
    pub client_ip: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            namesrv_addr: std::env::var("NAMESRV_ADDR").unwrap_or_default(),
            instance_name: None,
            api_timeout: Duration::from_secs(3),
            poll_name_server_interval: Duration::from_secs(30),
            heartbeat_broker_interval: Duration::from_secs(30),
            client_ip: None,
        }
    }
}

fn local_ip() -> IpAddr {
    let guess = || -> Option<IpAddr> {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        // No packet is sent: connect only picks the outgoing interface.
        sock.connect("192.0.2.1:9").ok()?;
        let ip = sock.local_addr().ok()?.ip();
        (!ip.is_unspecified()).then_some(ip)
    };
    guess().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

static INSTANCE_SEQ: AtomicU64 = AtomicU64::new(0);

pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Splits `"h1:9876;h2:9876"` into addresses (blank entries dropped).
pub fn parse_namesrv_addr(s: &str) -> Vec<String> {
    s.split([';', ','])
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// A shared client runtime: connections, NameServers, routes.
pub struct ClientInstance {
    pub(crate) client_id: String,
    pub(crate) options: ClientOptions,
    pub(crate) remoting: RemotingClient,
    namesrv: Vec<String>,
    namesrv_index: AtomicUsize,
    /// topic → last route seen (snapshot replaced wholesale on change).
    /// Sharded: adding one topic's route must not copy every other one.
    routes: dashmap::DashMap<String, Arc<TopicRouteData>>,
    /// brokerName → (brokerId → address), merged from every route.
    brokers: ArcSwap<HashMap<String, BTreeMap<i64, String>>>,
    route_update: parking_lot::Mutex<()>,
}

impl std::fmt::Debug for ClientInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientInstance")
            .field("client_id", &self.client_id)
            .field("namesrv", &self.namesrv)
            .finish()
    }
}

impl ClientInstance {
    /// A client instance; `processors` receives broker→client requests.
    pub fn new(options: ClientOptions, processors: Arc<ProcessorRegistry>) -> Result<Arc<Self>> {
        let namesrv = parse_namesrv_addr(&options.namesrv_addr);
        if namesrv.is_empty() {
            return Err(ClientError::NoNameServer);
        }
        let ip = options
            .client_ip
            .clone()
            .unwrap_or_else(|| local_ip().to_string());
        let instance = match &options.instance_name {
            Some(n) => n.clone(),
            None => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                let seq = INSTANCE_SEQ.fetch_add(1, Ordering::Relaxed);
                format!("{}#{}", std::process::id(), nanos.wrapping_add(seq))
            }
        };
        let remoting = RemotingClient::with_processors(ClientConfig::default(), processors);
        let start = rand::random::<usize>() % namesrv.len();
        Ok(Arc::new(ClientInstance {
            client_id: format!("{ip}@{instance}"),
            options,
            remoting,
            namesrv,
            namesrv_index: AtomicUsize::new(start),
            routes: dashmap::DashMap::new(),
            brokers: ArcSwap::from_pointee(HashMap::new()),
            route_update: parking_lot::Mutex::new(()),
        }))
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Reaches the server at `addr` in process through `endpoint` (a
    /// broker's own gRPC endpoint calling that broker) instead of over TCP.
    pub fn connect_locally(
        &self,
        addr: impl Into<String>,
        endpoint: apogee_remoting::LocalEndpoint,
    ) {
        self.remoting.connect_locally(addr, endpoint);
    }

    pub fn namesrv_addrs(&self) -> &[String] {
        &self.namesrv
    }

    /// A request stamped as coming from this client.
    pub(crate) fn request(code: i32) -> RemotingCommand {
        let mut cmd = RemotingCommand::request(code);
        cmd.language = LanguageCode::Rust;
        cmd.version = CLIENT_VERSION;
        cmd
    }

    pub(crate) fn request_with<H: CommandHeader>(code: i32, h: &H) -> RemotingCommand {
        Self::request(code).with_header(h)
    }

    /// Sends to a NameServer, moving on to the next one when one cannot be
    /// reached. Any answer (even a refusal) is returned as is.
    pub async fn invoke_namesrv(&self, cmd: RemotingCommand) -> Result<(String, RemotingCommand)> {
        let n = self.namesrv.len();
        let first = self.namesrv_index.load(Ordering::Relaxed);
        let mut last_err = None;
        for i in 0..n {
            let idx = (first + i) % n;
            let addr = &self.namesrv[idx];
            match self
                .remoting
                .invoke(addr, cmd.clone(), self.options.api_timeout)
                .await
            {
                Ok(resp) => {
                    if i > 0 {
                        self.namesrv_index.store(idx, Ordering::Relaxed);
                    }
                    return Ok((addr.clone(), resp));
                }
                Err(e) => {
                    tracing::debug!(namesrv = %addr, error = %e, "name server unreachable");
                    last_err = Some(e);
                }
            }
        }
        match last_err {
            Some(e) => Err(e.into()),
            None => Err(ClientError::NoNameServer),
        }
    }

    /// Like [`invoke_namesrv`](Self::invoke_namesrv) but a non-success code is an error.
    pub async fn invoke_namesrv_ok(&self, cmd: RemotingCommand) -> Result<RemotingCommand> {
        let (addr, resp) = self.invoke_namesrv(cmd).await?;
        if resp.code != response_code::SUCCESS {
            return Err(ClientError::broker(&addr, &resp));
        }
        Ok(resp)
    }

    /// Sends to every NameServer (writes such as DELETE_TOPIC_IN_NAMESRV).
    pub async fn invoke_all_namesrv_ok(&self, cmd: RemotingCommand) -> Result<()> {
        for addr in &self.namesrv {
            let resp = self
                .remoting
                .invoke(addr, cmd.clone(), self.options.api_timeout)
                .await?;
            if resp.code != response_code::SUCCESS {
                return Err(ClientError::broker(addr, &resp));
            }
        }
        Ok(())
    }

    /// Request/response to a broker, with the default API timeout.
    pub async fn invoke(&self, addr: &str, cmd: RemotingCommand) -> Result<RemotingCommand> {
        Ok(self
            .remoting
            .invoke(addr, cmd, self.options.api_timeout)
            .await?)
    }

    /// Request/response to a broker with a timeout of the caller's (a
    /// long-polling POP must outlive the default API timeout).
    pub async fn invoke_timeout(
        &self,
        addr: &str,
        cmd: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand> {
        Ok(self.remoting.invoke(addr, cmd, timeout).await?)
    }

    /// Like [`invoke`](Self::invoke) but a non-success code is an error.
    pub async fn invoke_ok(&self, addr: &str, cmd: RemotingCommand) -> Result<RemotingCommand> {
        let resp = self.invoke(addr, cmd).await?;
        if resp.code != response_code::SUCCESS {
            return Err(ClientError::broker(addr, &resp));
        }
        Ok(resp)
    }

    /// Asks the NameServers for the route of `topic` (no caching).
    pub async fn fetch_route(&self, topic: &str) -> Result<TopicRouteData> {
        let header = GetRouteInfoRequestHeader {
            topic: topic.to_string(),
            ..Default::default()
        };
        let (addr, resp) = self
            .invoke_namesrv(Self::request_with(
                request_code::GET_ROUTEINFO_BY_TOPIC,
                &header,
            ))
            .await?;
        match resp.code {
            response_code::SUCCESS => {
                let body = resp.body.as_deref().unwrap_or(b"{}");
                Ok(TopicRouteData::decode(body)?)
            }
            _ => Err(ClientError::broker(&addr, &resp)),
        }
    }

    /// Fetches the route of `topic` and caches it (and its broker addresses).
    /// Returns the new route and whether it differs from the cached one.
    pub async fn update_route(&self, topic: &str) -> Result<(Arc<TopicRouteData>, bool)> {
        let route = self.fetch_route(topic).await?;
        Ok(self.store_route(topic, route))
    }

    /// Caches a route fetched elsewhere.
    pub fn store_route(&self, topic: &str, route: TopicRouteData) -> (Arc<TopicRouteData>, bool) {
        let _guard = self.route_update.lock();
        let changed = self
            .routes
            .get(topic)
            .is_none_or(|r| !same_route(r.value(), &route));
        let route = Arc::new(route);
        if changed {
            self.routes.insert(topic.to_string(), Arc::clone(&route));
        }
        let brokers = self.brokers.load();
        let mut merged: Option<HashMap<String, BTreeMap<i64, String>>> = None;
        for bd in &route.broker_datas {
            if brokers.get(&bd.broker_name) != Some(&bd.broker_addrs) {
                merged
                    .get_or_insert_with(|| HashMap::clone(&brokers))
                    .insert(bd.broker_name.clone(), bd.broker_addrs.clone());
            }
        }
        if let Some(m) = merged {
            self.brokers.store(Arc::new(m));
        }
        (route, changed)
    }

    /// The cached route of `topic`.
    pub fn cached_route(&self, topic: &str) -> Option<Arc<TopicRouteData>> {
        self.routes.get(topic).map(|r| Arc::clone(r.value()))
    }

    /// Topics with a cached route.
    pub fn cached_topics(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.key().clone()).collect()
    }

    /// The master address of a broker name from the cache.
    pub fn master_addr(&self, broker_name: &str) -> Option<String> {
        self.brokers
            .load()
            .get(broker_name)
            .and_then(|a| a.get(&MASTER_ID))
            .cloned()
    }

    /// An address of a broker name: the given id, else the master, else any.
    pub fn broker_addr(&self, broker_name: &str, broker_id: i64) -> Option<String> {
        let brokers = self.brokers.load();
        let addrs = brokers.get(broker_name)?;
        addrs
            .get(&broker_id)
            .or_else(|| addrs.get(&MASTER_ID))
            .or_else(|| addrs.values().next())
            .cloned()
    }

    /// The master address of `broker_name`, refreshing `topic`'s route once
    /// if it is not known yet.
    pub async fn master_addr_or_refresh(&self, broker_name: &str, topic: &str) -> Result<String> {
        if let Some(a) = self.master_addr(broker_name) {
            return Ok(a);
        }
        self.update_route(topic).await?;
        self.master_addr(broker_name)
            .ok_or_else(|| ClientError::BrokerNotFound(broker_name.to_string()))
    }

    /// Where a consumer reads and commits for `broker_name`: the master,
    /// else (its route refreshed once) any address of the broker set, as
    /// Java's `findBrokerAddressInSubscribe(name, MASTER_ID, false)`; so
    /// consumers go on from a slave while the master is down.
    pub async fn subscribe_addr_or_refresh(
        &self,
        broker_name: &str,
        topic: &str,
    ) -> Result<String> {
        if let Some(a) = self.master_addr(broker_name) {
            return Ok(a);
        }
        self.update_route(topic).await?;
        self.broker_addr(broker_name, MASTER_ID)
            .ok_or_else(|| ClientError::BrokerNotFound(broker_name.to_string()))
    }

    /// The broker name serving `addr`, if a cached route mentions it.
    pub fn broker_name_of_addr(&self, addr: &str) -> Option<String> {
        self.brokers
            .load()
            .iter()
            .find(|(_, addrs)| addrs.values().any(|a| a == addr))
            .map(|(name, _)| name.clone())
    }

    /// Every known broker address (all ids when `masters_only` is false).
    pub fn all_broker_addrs(&self, masters_only: bool) -> Vec<String> {
        let mut out: Vec<String> = self
            .brokers
            .load()
            .values()
            .flat_map(|addrs| {
                addrs
                    .iter()
                    .filter(move |(id, _)| !masters_only || **id == MASTER_ID)
                    .map(|(_, a)| a.clone())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// HEART_BEAT to every known broker (masters only for producers);
    /// returns how many brokers accepted it.
    pub async fn send_heartbeat(&self, data: &HeartbeatData, masters_only: bool) -> usize {
        let body = bytes::Bytes::from(data.encode());
        let mut ok = 0;
        for addr in self.all_broker_addrs(masters_only) {
            let cmd = Self::request(request_code::HEART_BEAT).with_body(body.clone());
            match self.invoke(&addr, cmd).await {
                Ok(r) if r.code == response_code::SUCCESS => ok += 1,
                Ok(r) => {
                    tracing::warn!(broker = %addr, code = r.code, remark = ?r.remark, "heartbeat refused")
                }
                Err(e) => tracing::debug!(broker = %addr, error = %e, "heartbeat failed"),
            }
        }
        ok
    }

    /// UNREGISTER_CLIENT to every known broker.
    pub async fn unregister(&self, producer_group: Option<&str>, consumer_group: Option<&str>) {
        let header = UnregisterClientRequestHeader {
            client_id: self.client_id.clone(),
            producer_group: producer_group.map(str::to_string),
            consumer_group: consumer_group.map(str::to_string),
            ..Default::default()
        };
        for addr in self.all_broker_addrs(false) {
            let cmd = Self::request_with(request_code::UNREGISTER_CLIENT, &header);
            if let Err(e) = self.invoke(&addr, cmd).await {
                tracing::debug!(broker = %addr, error = %e, "unregister failed");
            }
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.remoting.close().await;
    }
}

/// Routes equal in what matters to clients (queues and addresses).
fn same_route(a: &TopicRouteData, b: &TopicRouteData) -> bool {
    let mut qa = a.queue_datas.clone();
    let mut qb = b.queue_datas.clone();
    qa.sort_by(|x, y| x.broker_name.cmp(&y.broker_name));
    qb.sort_by(|x, y| x.broker_name.cmp(&y.broker_name));
    let mut ba = a.broker_datas.clone();
    let mut bb = b.broker_datas.clone();
    ba.sort_by(|x, y| x.broker_name.cmp(&y.broker_name));
    bb.sort_by(|x, y| x.broker_name.cmp(&y.broker_name));
    qa == qb && ba == bb && a.order_topic_conf == b.order_topic_conf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namesrv_list_parsing() {
        assert_eq!(
            parse_namesrv_addr(" a:1;b:2 ;; c:3"),
            vec!["a:1", "b:2", "c:3"]
        );
        assert!(parse_namesrv_addr("  ").is_empty());
    }

    #[test]
    fn unique_client_ids() {
        let opts = ClientOptions {
            namesrv_addr: "127.0.0.1:1".into(),
            ..Default::default()
        };
        let a = ClientInstance::new(opts.clone(), ProcessorRegistry::new()).unwrap();
        let b = ClientInstance::new(opts, ProcessorRegistry::new()).unwrap();
        assert_ne!(a.client_id(), b.client_id());
        assert!(a.client_id().contains('@'));
    }
}
