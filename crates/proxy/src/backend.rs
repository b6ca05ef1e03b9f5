//! The proxy's broker side: every gRPC call becomes remoting requests to
//! the brokers a NameServer names, through one `ClientInstance`. Local mode
//! (inside `apogee standalone` / `apogee broker`) takes the same path
//! against the in-process broker, so both modes share one code path.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_client::{ClientInstance, ClientOptions};
use apogee_protocol::body::{
    HeartbeatData, ProducerData, SubscriptionGroupConfig, TopicConfig, TopicRouteData,
};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PermName;
use apogee_protocol::header::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, ChangeInvisibleTimeResponseHeader,
    CommandHeader, CreateTopicRequestHeader, EndTransactionRequestHeader,
    GetSubscriptionGroupConfigRequestHeader, GetTopicConfigRequestHeader, PopMessageRequestHeader,
    PopMessageResponseHeader, RecallMessageRequestHeader, RecallMessageResponseHeader,
    SendMessageRequestHeaderV2, SendMessageResponseHeader,
};
use apogee_protocol::message::{decode_stored_many, DecodedMessage};
use apogee_protocol::topic::AUTO_CREATE_TOPIC_KEY_TOPIC;
use apogee_protocol::{LanguageCode, RemotingCommand};
use apogee_remoting::ProcessorRegistry;
use parking_lot::Mutex;

use crate::error::{ProxyError, Result};

/// The producer group the proxy registers with brokers: the broker sends
/// transaction check-backs for gRPC producers to this group's connection.
pub const PROXY_PRODUCER_GROUP: &str = "PID_APOGEE_GRPC_PROXY";
/// Queues given to a topic the proxy creates on first use.
pub const AUTO_CREATE_QUEUES: i32 = 4;
/// How long a route stays cached (clients re-query every 30 s anyway).
const ROUTE_TTL: Duration = Duration::from_secs(3);
/// How long a consumer group's config stays cached: every ReceiveMessage
/// asks whether its group is FIFO, which would otherwise cost a broker round
/// trip per receive. A change of `consumeMessageOrderly` shows within this.
const GROUP_TTL: Duration = Duration::from_secs(3);

/// What a POP returned.
pub struct Popped {
    pub messages: Vec<DecodedMessage>,
    pub invisible_time: i64,
}

/// Remoting access to the cluster behind the proxy.
pub struct Backend {
    instance: Arc<ClientInstance>,
    routes: Mutex<HashMap<String, (Instant, Arc<TopicRouteData>)>>,
    round_robin: AtomicUsize,
    /// Brokers that have the proxy's producer group registered.
    registered: Mutex<std::collections::HashSet<String>>,
    /// Writable queues of each topic, computed once per route fetched
    /// (not once per message sent).
    writable: Mutex<HashMap<String, WritableQueues>>,
    /// Group configs by (broker address, group), with when they were read.
    groups: Mutex<HashMap<(String, String), (Instant, SubscriptionGroupConfig)>>,
    /// The runtime the proxy started on, for work that must outlive the
    /// event loop a call ran on (handing back messages a vanished client
    /// never got, while the loops shut down).
    spawner: Option<tokio::runtime::Handle>,
}

/// A route and the writable queues computed from it.
type WritableQueues = (Arc<TopicRouteData>, Arc<[(String, i32)]>);

fn request(code: i32) -> RemotingCommand {
    let mut cmd = RemotingCommand::request(code);
    cmd.language = LanguageCode::Rust;
    cmd.version = apogee_protocol::command::CURRENT_VERSION;
    cmd
}

fn request_with<H: CommandHeader>(code: i32, h: &H) -> RemotingCommand {
    request(code).with_header(h)
}

fn refused(resp: &RemotingCommand) -> ProxyError {
    ProxyError::Broker {
        code: resp.code,
        remark: resp.remark.clone().unwrap_or_default(),
    }
}

impl Backend {
    /// A backend over the NameServers in `namesrv_addr`; `processors`
    /// serves broker-to-proxy requests (transaction check-backs).
    pub fn new(namesrv_addr: &str, processors: Arc<ProcessorRegistry>) -> Result<Arc<Self>> {
        let options = ClientOptions {
            namesrv_addr: namesrv_addr.to_owned(),
            instance_name: Some(format!("grpc-proxy-{}", std::process::id())),
            ..ClientOptions::default()
        };
        Ok(Arc::new(Backend {
            instance: ClientInstance::new(options, processors)?,
            routes: Mutex::new(HashMap::new()),
            round_robin: AtomicUsize::new(0),
            registered: Mutex::new(std::collections::HashSet::new()),
            writable: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            spawner: tokio::runtime::Handle::try_current().ok(),
        }))
    }

    pub fn client_id(&self) -> &str {
        self.instance.client_id()
    }

    /// Runs `task` on the proxy's own runtime (else the current one; else
    /// not at all, outside any runtime).
    pub fn spawn_detached<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let rt = self
            .spawner
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok());
        if let Some(rt) = rt {
            drop(rt.spawn(task));
        }
    }

    /// Calls the server routes name `addr` in process (see
    /// [`ProxyConfig::local_servers`](crate::ProxyConfig::local_servers)).
    pub fn connect_locally(&self, addr: &str, endpoint: apogee_remoting::LocalEndpoint) {
        self.instance.connect_locally(addr, endpoint);
    }

    /// The route of `topic`, creating the topic the way a remoting send to
    /// an unknown topic would (on the brokers that carry TBW102) when the
    /// NameServer has none.
    pub async fn route(&self, topic: &str) -> Result<Arc<TopicRouteData>> {
        if let Some((at, r)) = self.routes.lock().get(topic) {
            if at.elapsed() < ROUTE_TTL {
                return Ok(Arc::clone(r));
            }
        }
        let route = match self.instance.update_route(topic).await {
            Ok((r, _)) => r,
            Err(apogee_client::ClientError::Broker { code, .. })
                if code == response_code::TOPIC_NOT_EXIST =>
            {
                self.auto_create(topic).await?
            }
            Err(e) => return Err(e.into()),
        };
        if route.queue_datas.is_empty() {
            return Err(ProxyError::TopicNotFound(topic.to_owned()));
        }
        self.routes
            .lock()
            .insert(topic.to_owned(), (Instant::now(), Arc::clone(&route)));
        Ok(route)
    }

    /// A route already known, or none (no NameServer call).
    pub fn cached_route(&self, topic: &str) -> Option<Arc<TopicRouteData>> {
        self.routes.lock().get(topic).map(|(_, r)| Arc::clone(r))
    }

    async fn auto_create(&self, topic: &str) -> Result<Arc<TopicRouteData>> {
        apogee_protocol::topic::validate_topic(topic)
            .map_err(|e| ProxyError::BadRequest(format!("illegal topic {topic:?}: {e}")))?;
        let template = match self.instance.fetch_route(AUTO_CREATE_TOPIC_KEY_TOPIC).await {
            Ok(r) => r,
            // No TBW102 anywhere: auto-creation is off in this cluster.
            Err(_) => return Err(ProxyError::TopicNotFound(topic.to_owned())),
        };
        let mut route = TopicRouteData::default();
        for qd in &template.queue_datas {
            if !PermName::is_writeable(qd.perm) {
                continue;
            }
            let Some(bd) = template
                .broker_datas
                .iter()
                .find(|b| b.broker_name == qd.broker_name)
            else {
                continue;
            };
            let Some(addr) = bd.broker_addrs.get(&0) else {
                continue;
            };
            let h = CreateTopicRequestHeader {
                topic: topic.to_owned(),
                default_topic: AUTO_CREATE_TOPIC_KEY_TOPIC.to_owned(),
                read_queue_nums: AUTO_CREATE_QUEUES,
                write_queue_nums: AUTO_CREATE_QUEUES,
                perm: PermName::PERM_READ | PermName::PERM_WRITE,
                topic_filter_type: "SINGLE_TAG".to_owned(),
                ..Default::default()
            };
            let resp = self
                .instance
                .invoke(
                    addr,
                    request_with(request_code::UPDATE_AND_CREATE_TOPIC, &h),
                )
                .await?;
            if resp.code != response_code::SUCCESS {
                tracing::warn!(topic, broker = %addr, code = resp.code, remark = ?resp.remark, "auto-creating a topic failed");
                continue;
            }
            let mut q = qd.clone();
            q.read_queue_nums = AUTO_CREATE_QUEUES;
            q.write_queue_nums = AUTO_CREATE_QUEUES;
            q.perm = PermName::PERM_READ | PermName::PERM_WRITE;
            route.queue_datas.push(q);
            route.broker_datas.push(bd.clone());
        }
        if route.queue_datas.is_empty() {
            return Err(ProxyError::TopicNotFound(topic.to_owned()));
        }
        tracing::info!(topic, "auto-created topic for a gRPC client");
        Ok(self.instance.store_route(topic, route).0)
    }

    /// The master address of `broker_name`.
    pub fn master_addr(&self, route: &TopicRouteData, broker_name: &str) -> Result<String> {
        route
            .broker_datas
            .iter()
            .find(|b| b.broker_name == broker_name)
            .and_then(|b| b.broker_addrs.get(&0).cloned())
            .or_else(|| self.instance.master_addr(broker_name))
            .ok_or_else(|| ProxyError::BrokerNotFound(broker_name.to_owned()))
    }

    /// Master address of a broker by name, from any route seen.
    pub fn master_addr_by_name(&self, broker_name: &str) -> Result<String> {
        self.instance
            .master_addr(broker_name)
            .ok_or_else(|| ProxyError::BrokerNotFound(broker_name.to_owned()))
    }

    /// Writable `(broker name, queue id)` pairs, in a stable order.
    pub fn writable_queues(route: &TopicRouteData) -> Vec<(String, i32)> {
        let mut out = BTreeSet::new();
        for qd in &route.queue_datas {
            if PermName::is_writeable(qd.perm) {
                for q in 0..qd.write_queue_nums {
                    out.insert((qd.broker_name.clone(), q));
                }
            }
        }
        out.into_iter().collect()
    }

    /// [`Backend::writable_queues`] of `topic`'s `route`, kept until the
    /// route is replaced by a newer one.
    pub fn writable_queues_of(
        &self,
        topic: &str,
        route: &Arc<TopicRouteData>,
    ) -> Arc<[(String, i32)]> {
        if let Some((r, q)) = self.writable.lock().get(topic) {
            if Arc::ptr_eq(r, route) {
                return Arc::clone(q);
            }
        }
        let queues: Arc<[(String, i32)]> = Self::writable_queues(route).into();
        self.writable
            .lock()
            .insert(topic.to_owned(), (Arc::clone(route), Arc::clone(&queues)));
        queues
    }

    /// The next queue in round-robin order.
    pub fn next_index(&self) -> usize {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }

    /// The topic's config on its first broker (attributes carry `message.type`).
    pub async fn topic_config(&self, route: &TopicRouteData, topic: &str) -> Option<TopicConfig> {
        let addr = route
            .broker_datas
            .iter()
            .find_map(|b| b.broker_addrs.get(&0))?;
        let h = GetTopicConfigRequestHeader {
            topic: topic.to_owned(),
            ..Default::default()
        };
        let resp = self
            .instance
            .invoke(addr, request_with(request_code::GET_TOPIC_CONFIG, &h))
            .await
            .ok()?;
        if resp.code != response_code::SUCCESS {
            return None;
        }
        TopicConfig::decode(resp.body.as_deref()?).ok()
    }

    /// The group's config on `addr`, if it has one (cached for
    /// [`GROUP_TTL`]; a group not found is asked for again next time).
    pub async fn group_config(&self, addr: &str, group: &str) -> Option<SubscriptionGroupConfig> {
        let key = (addr.to_owned(), group.to_owned());
        if let Some((at, c)) = self.groups.lock().get(&key) {
            if at.elapsed() < GROUP_TTL {
                return Some(c.clone());
            }
        }
        let c = self.fetch_group_config(addr, group).await?;
        self.groups.lock().insert(key, (Instant::now(), c.clone()));
        Some(c)
    }

    async fn fetch_group_config(&self, addr: &str, group: &str) -> Option<SubscriptionGroupConfig> {
        let h = GetSubscriptionGroupConfigRequestHeader {
            group: group.to_owned(),
            ..Default::default()
        };
        let resp = self
            .instance
            .invoke(
                addr,
                request_with(request_code::GET_SUBSCRIPTIONGROUP_CONFIG, &h),
            )
            .await
            .ok()?;
        if resp.code != response_code::SUCCESS {
            return None;
        }
        SubscriptionGroupConfig::decode(resp.body.as_deref()?).ok()
    }

    pub async fn send(
        &self,
        addr: &str,
        header: &SendMessageRequestHeaderV2,
        body: bytes::Bytes,
    ) -> Result<SendMessageResponseHeader> {
        let cmd = request_with(request_code::SEND_MESSAGE_V2, header).with_body(body);
        let resp = self.instance.invoke(addr, cmd).await?;
        if resp.code != response_code::SUCCESS {
            return Err(refused(&resp));
        }
        Ok(resp.decode_header()?)
    }

    /// POP_MESSAGE; `wait` bounds the whole call (long polling included).
    pub async fn pop(
        &self,
        addr: &str,
        broker_name: &str,
        header: &PopMessageRequestHeader,
        wait: Duration,
    ) -> Result<Popped> {
        let cmd = request_with(request_code::POP_MESSAGE, header);
        let resp = self.instance.invoke_timeout(addr, cmd, wait).await?;
        match resp.code {
            response_code::SUCCESS => {
                let h: PopMessageResponseHeader = resp.decode_header()?;
                let mut messages = resp
                    .body
                    .as_ref()
                    .map(|b| decode_stored_many(b, false))
                    .unwrap_or_default();
                stamp_receipts(&mut messages, &h, broker_name);
                Ok(Popped {
                    messages,
                    invisible_time: h.invisible_time,
                })
            }
            response_code::POLLING_TIMEOUT | response_code::NO_MESSAGE => Ok(Popped {
                messages: Vec::new(),
                invisible_time: header.invisible_time,
            }),
            _ => Err(refused(&resp)),
        }
    }

    pub async fn ack(&self, addr: &str, header: &AckMessageRequestHeader) -> Result<()> {
        let cmd = request_with(request_code::ACK_MESSAGE, header);
        let resp = self.instance.invoke(addr, cmd).await?;
        if resp.code != response_code::SUCCESS {
            return Err(refused(&resp));
        }
        Ok(())
    }

    /// BATCH_ACK_MESSAGE with a BatchAckMessageRequestBody (JSON).
    pub async fn batch_ack(&self, addr: &str, body: Vec<u8>) -> Result<()> {
        let cmd = request(request_code::BATCH_ACK_MESSAGE).with_body(bytes::Bytes::from(body));
        let resp = self.instance.invoke(addr, cmd).await?;
        if resp.code != response_code::SUCCESS {
            return Err(refused(&resp));
        }
        Ok(())
    }

    pub async fn change_invisible(
        &self,
        addr: &str,
        header: &ChangeInvisibleTimeRequestHeader,
    ) -> Result<ChangeInvisibleTimeResponseHeader> {
        let cmd = request_with(request_code::CHANGE_MESSAGE_INVISIBLETIME, header);
        let resp = self.instance.invoke(addr, cmd).await?;
        if resp.code != response_code::SUCCESS {
            return Err(refused(&resp));
        }
        Ok(resp.decode_header()?)
    }

    pub async fn end_transaction(
        &self,
        addr: &str,
        header: &EndTransactionRequestHeader,
    ) -> Result<()> {
        let cmd = request_with(request_code::END_TRANSACTION, header);
        let resp = self.instance.invoke(addr, cmd).await?;
        if resp.code != response_code::SUCCESS {
            return Err(refused(&resp));
        }
        Ok(())
    }

    pub async fn recall(&self, addr: &str, header: &RecallMessageRequestHeader) -> Result<String> {
        let cmd = request_with(request_code::RECALL_MESSAGE, header);
        let resp = self.instance.invoke(addr, cmd).await?;
        if resp.code != response_code::SUCCESS {
            return Err(refused(&resp));
        }
        Ok(resp.decode_header::<RecallMessageResponseHeader>()?.msg_id)
    }

    /// Any other request to a broker, answered as is.
    pub async fn invoke(&self, addr: &str, cmd: RemotingCommand) -> Result<RemotingCommand> {
        Ok(self.instance.invoke(addr, cmd).await?)
    }

    /// The underlying client (pull and offset calls).
    pub fn instance(&self) -> &Arc<ClientInstance> {
        &self.instance
    }

    /// Registers the proxy's producer group with every known master, so
    /// transaction check-backs reach this connection.
    /// Registers the producer group with `addr` unless that was done: a
    /// transactional send must not cost a heartbeat every time.
    pub async fn ensure_registered(&self, addr: &str) {
        if self.registered.lock().contains(addr) {
            return;
        }
        self.heartbeat().await;
    }

    pub async fn heartbeat(&self) -> usize {
        let data = HeartbeatData {
            client_id: self.instance.client_id().to_owned(),
            producer_data_set: vec![ProducerData {
                group_name: PROXY_PRODUCER_GROUP.to_owned(),
            }],
            ..Default::default()
        };
        let ok = self.instance.send_heartbeat(&data, true).await;
        let addrs = self.instance.all_broker_addrs(true);
        let mut reg = self.registered.lock();
        reg.clear();
        if ok == addrs.len() {
            reg.extend(addrs);
        }
        ok
    }

    pub async fn close(&self) {
        self.instance.close().await;
    }
}

/// Gives each popped message its receipt handle, as remoting clients build
/// it: the broker sends the parts (pop time, revive queue, and each
/// queue's start offset in `startOffsetInfo`) and sets `POP_CK` only on
/// retry copies.
fn stamp_receipts(
    messages: &mut [DecodedMessage],
    h: &PopMessageResponseHeader,
    broker_name: &str,
) {
    use apogee_protocol::message::{keys, properties};
    let mut starts: HashMap<(String, i32), i64> = HashMap::new();
    for entry in h.start_offset_info.as_deref().unwrap_or("").split(';') {
        let mut f = entry.split(' ');
        if let (Some(retry), Some(q), Some(o)) = (f.next(), f.next(), f.next()) {
            if let (Ok(q), Ok(o)) = (q.parse::<i32>(), o.parse::<i64>()) {
                starts.insert((retry.to_owned(), q), o);
            }
        }
    }
    for m in messages.iter_mut() {
        if m.properties.contains_key(keys::POP_CK) {
            continue;
        }
        let retry = retry_flag(&m.topic);
        let start = starts
            .get(&(retry.to_owned(), m.queue_id))
            .copied()
            .unwrap_or(m.queue_offset);
        let ck = format!(
            "{start} {} {} {} {retry} {broker_name} {} {}",
            h.pop_time, h.invisible_time, h.revive_qid, m.queue_id, m.queue_offset
        );
        properties::append(&mut m.properties_raw, keys::POP_CK, &ck);
        m.properties.insert(keys::POP_CK.to_owned(), ck);
    }
}

/// `0` normal topic, `1` retry topic v1 (`%RETRY%group_topic`), `2` v2
/// (`%RETRY%group+topic`).
fn retry_flag(topic: &str) -> &'static str {
    match topic.strip_prefix(apogee_protocol::topic::RETRY_GROUP_TOPIC_PREFIX) {
        None => "0",
        Some(rest) if rest.contains('+') => "2",
        Some(_) => "1",
    }
}
