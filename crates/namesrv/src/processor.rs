//! Request handling: one method per NameServer request code, each turning a
//! decoded request into a call on the route tables or the KV config.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::body::route::{BrokerData, ClusterInfo, QueueData, TopicRouteData};
use apogee_protocol::body::topic::{
    DataVersion as DataVersionBody, KVTable, RegisterBrokerBody, TopicList,
};
use apogee_protocol::code::{request_code as rc, response_code as resp};
use apogee_protocol::header::namesrv::*;
use apogee_protocol::header::CommandHeader;
use apogee_protocol::{java_properties, ProtocolError, RemotingCommand};
use apogee_remoting::{Channel, ProcessResult, RequestContext, RequestProcessor};
use futures::future::BoxFuture;
use parking_lot::{Mutex, RwLock};

use crate::config::NamesrvConfig;
use crate::kv_config::{KvConfigManager, ORDER_TOPIC_CONFIG};
use crate::route_info::{
    BrokerInfo, DataVersion, QueueInfo, Registration, RouteInfoManager, TopicQueueConfig,
};

/// Every request code the NameServer answers.
pub const HANDLED_CODES: &[i32] = &[
    rc::PUT_KV_CONFIG,
    rc::GET_KV_CONFIG,
    rc::DELETE_KV_CONFIG,
    rc::GET_KVLIST_BY_NAMESPACE,
    rc::REGISTER_BROKER,
    rc::UNREGISTER_BROKER,
    rc::BROKER_HEARTBEAT,
    rc::QUERY_DATA_VERSION,
    rc::GET_ROUTEINFO_BY_TOPIC,
    rc::GET_BROKER_CLUSTER_INFO,
    rc::WIPE_WRITE_PERM_OF_BROKER,
    rc::ADD_WRITE_PERM_OF_BROKER,
    rc::GET_ALL_TOPIC_LIST_FROM_NAMESERVER,
    rc::DELETE_TOPIC_IN_NAMESRV,
    rc::REGISTER_TOPIC_IN_NAMESRV,
    rc::GET_TOPICS_BY_CLUSTER,
    rc::GET_SYSTEM_TOPIC_LIST_FROM_NS,
    rc::GET_UNIT_TOPIC_LIST,
    rc::GET_HAS_UNIT_SUB_TOPIC_LIST,
    rc::GET_HAS_UNIT_SUB_UNUNIT_TOPIC_LIST,
    rc::UPDATE_NAMESRV_CONFIG,
    rc::GET_NAMESRV_CONFIG,
];

/// TopicSysFlag bits (`TopicSysFlag.java`).
const FLAG_UNIT: i32 = 0x1;
const FLAG_UNIT_SUB: i32 = 0x2;

/// Shared NameServer state, handed to every request.
pub struct NamesrvProcessor {
    pub(crate) routes: Arc<RouteInfoManager>,
    pub(crate) kv: Arc<KvConfigManager>,
    pub(crate) config: RwLock<NamesrvConfig>,
    /// Channels whose close we already watch (to unregister their brokers).
    watched: Arc<Mutex<HashSet<u64>>>,
    /// REGISTER_BROKER requests received (full and incremental alike).
    register_requests: AtomicU64,
}

/// A failed request: the response code and the remark that says why.
struct Fail {
    code: i32,
    remark: String,
}

/// What a handler returns before the server fills in opaque and flags.
type Reply = Result<RemotingCommand, Fail>;

fn ok() -> RemotingCommand {
    RemotingCommand::response(resp::SUCCESS, None)
}

fn fail(code: i32, remark: impl Into<String>) -> Fail {
    Fail {
        code,
        remark: remark.into(),
    }
}

fn bad_request(e: ProtocolError) -> Fail {
    fail(resp::INVALID_PARAMETER, e.to_string())
}

fn header<H: CommandHeader>(req: &RemotingCommand) -> Result<H, Fail> {
    req.decode_header::<H>().map_err(bad_request)
}

impl NamesrvProcessor {
    pub fn new(
        config: NamesrvConfig,
        routes: Arc<RouteInfoManager>,
        kv: Arc<KvConfigManager>,
    ) -> Self {
        NamesrvProcessor {
            routes,
            kv,
            config: RwLock::new(config),
            watched: Arc::new(Mutex::new(HashSet::new())),
            register_requests: AtomicU64::new(0),
        }
    }

    /// How many REGISTER_BROKER requests arrived since start.
    pub fn register_requests(&self) -> u64 {
        self.register_requests.load(Ordering::Relaxed)
    }

    pub async fn handle(&self, ctx: &RequestContext, req: &RemotingCommand) -> RemotingCommand {
        let result = match req.code {
            rc::PUT_KV_CONFIG => self.put_kv(req).await,
            rc::GET_KV_CONFIG => self.get_kv(req),
            rc::DELETE_KV_CONFIG => self.delete_kv(req).await,
            rc::GET_KVLIST_BY_NAMESPACE => self.kv_list(req),
            rc::REGISTER_BROKER => self.register_broker(ctx, req),
            rc::UNREGISTER_BROKER => self.unregister_broker(req),
            rc::BROKER_HEARTBEAT => self.broker_heartbeat(req),
            rc::QUERY_DATA_VERSION => self.query_data_version(req),
            rc::GET_ROUTEINFO_BY_TOPIC => self.route_by_topic(req),
            rc::GET_BROKER_CLUSTER_INFO => Ok(self.cluster_info()),
            rc::WIPE_WRITE_PERM_OF_BROKER => self.write_perm(req, false),
            rc::ADD_WRITE_PERM_OF_BROKER => self.write_perm(req, true),
            rc::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => self.all_topics(),
            rc::DELETE_TOPIC_IN_NAMESRV => self.delete_topic(req),
            rc::REGISTER_TOPIC_IN_NAMESRV => self.register_topic(req),
            rc::GET_TOPICS_BY_CLUSTER => self.topics_by_cluster(req),
            rc::GET_SYSTEM_TOPIC_LIST_FROM_NS => Ok(self.system_topics()),
            rc::GET_UNIT_TOPIC_LIST => self.flagged_topics(|f| f & FLAG_UNIT != 0),
            rc::GET_HAS_UNIT_SUB_TOPIC_LIST => {
                self.flagged_topics(|f| f & FLAG_UNIT == 0 && f & FLAG_UNIT_SUB != 0)
            }
            rc::GET_HAS_UNIT_SUB_UNUNIT_TOPIC_LIST => {
                self.flagged_topics(|f| f & FLAG_UNIT == 0 && f & FLAG_UNIT_SUB != 0)
            }
            rc::UPDATE_NAMESRV_CONFIG => self.update_config(req),
            rc::GET_NAMESRV_CONFIG => Ok(self.get_config()),
            other => Err(fail(
                resp::REQUEST_CODE_NOT_SUPPORTED,
                format!("request type {other} not supported"),
            )),
        };
        match result {
            Ok(r) => r,
            Err(f) => RemotingCommand::response(f.code, Some(f.remark)),
        }
    }

    // ------------------------------------------------------------- KV config

    async fn put_kv(&self, req: &RemotingCommand) -> Reply {
        let h: PutKVConfigRequestHeader = header(req)?;
        self.kv.put(&h.namespace, &h.key, &h.value);
        self.persist_kv().await?;
        Ok(ok())
    }

    fn get_kv(&self, req: &RemotingCommand) -> Reply {
        let h: GetKVConfigRequestHeader = header(req)?;
        match self.kv.get(&h.namespace, &h.key) {
            Some(value) => Ok(ok().with_header(&GetKVConfigResponseHeader { value: Some(value) })),
            None => Err(fail(
                resp::QUERY_NOT_FOUND,
                format!("No config item, Namespace: {} Key: {}", h.namespace, h.key),
            )),
        }
    }

    async fn delete_kv(&self, req: &RemotingCommand) -> Reply {
        let h: DeleteKVConfigRequestHeader = header(req)?;
        if self.kv.delete(&h.namespace, &h.key) {
            self.persist_kv().await?;
        }
        Ok(ok())
    }

    fn kv_list(&self, req: &RemotingCommand) -> Reply {
        let h: GetKVListByNamespaceRequestHeader = header(req)?;
        match self.kv.list(&h.namespace) {
            Some(table) => Ok(ok().with_body(
                KVTable {
                    table: table.into_iter().collect(),
                }
                .encode(),
            )),
            None => Err(fail(
                resp::QUERY_NOT_FOUND,
                format!("No config item, Namespace: {}", h.namespace),
            )),
        }
    }

    async fn persist_kv(&self) -> Result<(), Fail> {
        self.kv.persist().await.map_err(|e| {
            tracing::error!("cannot persist KV config: {e}");
            fail(resp::SYSTEM_ERROR, format!("cannot persist KV config: {e}"))
        })
    }

    // ------------------------------------------------------------ brokers

    fn register_broker(&self, ctx: &RequestContext, req: &RemotingCommand) -> Reply {
        self.register_requests.fetch_add(1, Ordering::Relaxed);
        let h: RegisterBrokerRequestHeader = header(req)?;
        let body = req.body.as_deref().unwrap_or_default();
        if h.body_crc32 != 0 {
            let crc = (crc32fast::hash(body) & 0x7FFF_FFFF) as i32;
            if crc != h.body_crc32 {
                return Err(fail(
                    resp::SYSTEM_ERROR,
                    format!(
                        "crc32 not match: header says {}, body has {crc}",
                        h.body_crc32
                    ),
                ));
            }
        }
        let parsed = if body.is_empty() {
            RegisterBrokerBody::default()
        } else {
            RegisterBrokerBody::decode_with(body, h.compressed).map_err(bad_request)?
        };
        let wrapper = parsed.topic_config_serialize_wrapper;
        let mut topics = Vec::with_capacity(wrapper.topic_config_table.len());
        for (name, t) in &wrapper.topic_config_table {
            let topic = if t.topic_name.is_empty() {
                name
            } else {
                &t.topic_name
            };
            topics.push(TopicQueueConfig {
                topic: topic.clone(),
                queue: QueueInfo {
                    read_queue_nums: t.read_queue_nums,
                    write_queue_nums: t.write_queue_nums,
                    perm: t.perm,
                    topic_sys_flag: t.topic_sys_flag,
                },
            });
        }
        let channel = ctx.channel().clone();
        self.watch_channel(&channel);
        let outcome = self.routes.register(Registration {
            cluster: h.cluster_name,
            broker_addr: h.broker_addr,
            broker_name: h.broker_name,
            broker_id: h.broker_id,
            ha_server_addr: h.ha_server_addr,
            zone_name: h.zone_name,
            timeout: h
                .heartbeat_timeout_millis
                .filter(|&ms| ms > 0)
                .map(|ms| Duration::from_millis(ms as u64)),
            enable_acting_master: h.enable_acting_master,
            data_version: data_version(&wrapper.data_version),
            topics,
            channel_id: Some(channel.id().0),
        });
        let mut response = ok().with_header(&RegisterBrokerResponseHeader {
            ha_server_addr: outcome.ha_server_addr,
            master_addr: outcome.master_addr,
        });
        if self.config.read().return_order_topic_config_to_broker {
            if let Some(table) = self.kv.list(ORDER_TOPIC_CONFIG) {
                response = response.with_body(
                    KVTable {
                        table: table.into_iter().collect(),
                    }
                    .encode(),
                );
            }
        }
        Ok(response)
    }

    /// Unregisters the brokers of a connection when it closes.
    fn watch_channel(&self, channel: &Channel) {
        let id = channel.id().0;
        if !self.watched.lock().insert(id) {
            return;
        }
        let routes = Arc::clone(&self.routes);
        let watched = Arc::clone(&self.watched);
        let closed = channel.closed();
        tokio::spawn(async move {
            closed.await;
            watched.lock().remove(&id);
            routes.on_channel_closed(id);
        });
    }

    fn unregister_broker(&self, req: &RemotingCommand) -> Reply {
        let h: UnRegisterBrokerRequestHeader = header(req)?;
        self.routes
            .unregister(&h.cluster_name, &h.broker_addr, &h.broker_name, h.broker_id);
        Ok(ok())
    }

    fn broker_heartbeat(&self, req: &RemotingCommand) -> Reply {
        let h: BrokerHeartbeatRequestHeader = header(req)?;
        self.routes.touch(&h.cluster_name, &h.broker_addr);
        Ok(ok())
    }

    fn query_data_version(&self, req: &RemotingCommand) -> Reply {
        let h: QueryDataVersionRequestHeader = header(req)?;
        let theirs = match req.body.as_deref() {
            Some(b) if !b.is_empty() => Some(DataVersionBody::decode(b).map_err(bad_request)?),
            _ => None,
        };
        let ours = self.routes.data_version(&h.cluster_name, &h.broker_addr);
        let changed = match (&theirs, ours) {
            (Some(t), Some(o)) => data_version(t) != o,
            _ => true,
        };
        self.routes.touch(&h.cluster_name, &h.broker_addr);
        let mut response = ok().with_header(&QueryDataVersionResponseHeader { changed });
        if let Some(o) = ours {
            response = response.with_body(
                DataVersionBody {
                    state_version: o.state_version,
                    timestamp: o.timestamp,
                    counter: o.counter,
                }
                .encode(),
            );
        }
        Ok(response)
    }

    fn write_perm(&self, req: &RemotingCommand, writable: bool) -> Reply {
        if writable {
            let h: AddWritePermOfBrokerRequestHeader = header(req)?;
            let n = self.routes.set_write_perm(&h.broker_name, true);
            tracing::info!(broker = %h.broker_name, topics = n, "write permission added");
            Ok(ok().with_header(&AddWritePermOfBrokerResponseHeader {
                add_topic_count: n as i32,
            }))
        } else {
            let h: WipeWritePermOfBrokerRequestHeader = header(req)?;
            let n = self.routes.set_write_perm(&h.broker_name, false);
            tracing::info!(broker = %h.broker_name, topics = n, "write permission wiped");
            Ok(ok().with_header(&WipeWritePermOfBrokerResponseHeader {
                wipe_topic_count: n as i32,
            }))
        }
    }

    // ------------------------------------------------------------- routes

    fn route_by_topic(&self, req: &RemotingCommand) -> Reply {
        let h: GetRouteInfoRequestHeader = header(req)?;
        apogee_protocol::topic::validate_topic(&h.topic).map_err(bad_request)?;
        let Some(route) = self.routes.route(&h.topic) else {
            return Err(fail(
                resp::TOPIC_NOT_EXIST,
                format!(
                    "No topic route info in name server for the topic: {}",
                    h.topic
                ),
            ));
        };
        let mut data = TopicRouteData {
            queue_datas: route
                .queues
                .into_iter()
                .map(|(broker_name, q)| QueueData {
                    broker_name,
                    read_queue_nums: q.read_queue_nums,
                    write_queue_nums: q.write_queue_nums,
                    perm: q.perm,
                    topic_sys_flag: q.topic_sys_flag,
                })
                .collect(),
            broker_datas: route.brokers.into_iter().map(broker_data).collect(),
            ..Default::default()
        };
        if self.config.read().order_message_enable {
            data.order_topic_conf = self.kv.get(ORDER_TOPIC_CONFIG, &h.topic);
        }
        let body = data.to_json(
            req.version >= 401,
            h.accept_standard_json_only.unwrap_or(false),
        );
        Ok(ok().with_body(body))
    }

    fn cluster_info(&self) -> RemotingCommand {
        let (brokers, clusters) = self.routes.cluster_info();
        let info = ClusterInfo {
            broker_addr_table: brokers
                .into_iter()
                .map(|b| (b.broker_name.clone(), broker_data(b)))
                .collect(),
            cluster_addr_table: clusters,
        };
        ok().with_body(info.encode())
    }

    fn all_topics(&self) -> Reply {
        if !self.config.read().enable_all_topic_list {
            return Err(fail(resp::SYSTEM_ERROR, "disable"));
        }
        Ok(topic_list(self.routes.all_topics(), None))
    }

    fn topics_by_cluster(&self, req: &RemotingCommand) -> Reply {
        if !self.config.read().enable_topic_list {
            return Err(fail(resp::SYSTEM_ERROR, "disable"));
        }
        let h: GetTopicsByClusterRequestHeader = header(req)?;
        Ok(topic_list(self.routes.topics_by_cluster(&h.cluster), None))
    }

    fn flagged_topics(&self, pred: impl Fn(i32) -> bool) -> Reply {
        if !self.config.read().enable_topic_list {
            return Err(fail(resp::SYSTEM_ERROR, "disable"));
        }
        Ok(topic_list(self.routes.topics_with_flag(pred), None))
    }

    fn system_topics(&self) -> RemotingCommand {
        let (topics, addr) = self.routes.system_topics();
        topic_list(topics, addr)
    }

    fn delete_topic(&self, req: &RemotingCommand) -> Reply {
        let h: DeleteTopicFromNamesrvRequestHeader = header(req)?;
        self.routes
            .delete_topic(&h.topic, h.cluster_name.as_deref());
        Ok(ok())
    }

    fn register_topic(&self, req: &RemotingCommand) -> Reply {
        let h: RegisterTopicRequestHeader = header(req)?;
        apogee_protocol::topic::validate_topic(&h.topic).map_err(bad_request)?;
        let Some(body) = req.body.as_deref().filter(|b| !b.is_empty()) else {
            return Err(fail(
                resp::INVALID_PARAMETER,
                "REGISTER_TOPIC_IN_NAMESRV needs a TopicRouteData body",
            ));
        };
        let data = TopicRouteData::decode(body).map_err(bad_request)?;
        let queues: Vec<(String, QueueInfo)> = data
            .queue_datas
            .into_iter()
            .map(|q| {
                (
                    q.broker_name,
                    QueueInfo {
                        read_queue_nums: q.read_queue_nums,
                        write_queue_nums: q.write_queue_nums,
                        perm: q.perm,
                        topic_sys_flag: q.topic_sys_flag,
                    },
                )
            })
            .collect();
        self.routes.register_topic(&h.topic, &queues);
        Ok(ok())
    }

    // ------------------------------------------------------------- config

    fn get_config(&self) -> RemotingCommand {
        let props = self.config.read().to_properties();
        let text = java_properties::to_string(props.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        ok().with_body(text.into_bytes())
    }

    /// Applies a properties body to the running config; keys that only
    /// matter at start (port, paths) are refused, like Java's black list.
    fn update_config(&self, req: &RemotingCommand) -> Reply {
        let body = req.body.as_deref().unwrap_or_default();
        let text = std::str::from_utf8(body)
            .map_err(|_| fail(resp::INVALID_PARAMETER, "config body is not UTF-8"))?;
        let props: BTreeMap<String, String> = java_properties::parse(text);
        const FIXED: &[&str] = &[
            "listenPort",
            "bindAddress",
            "kvConfigPath",
            "configStorePath",
            "configBlackList",
        ];
        if let Some(k) = props.keys().find(|k| FIXED.contains(&k.as_str())) {
            return Err(fail(
                resp::NO_PERMISSION,
                format!("Can not update config in black list: {k}"),
            ));
        }
        let mut next = self.config.read().clone();
        let unknown = next
            .apply(&props)
            .map_err(|e| fail(resp::INVALID_PARAMETER, e.to_string()))?;
        if !unknown.is_empty() {
            return Err(fail(
                resp::INVALID_PARAMETER,
                format!("unknown config keys: {}", unknown.join(", ")),
            ));
        }
        *self.config.write() = next;
        Ok(ok())
    }
}

fn data_version(d: &DataVersionBody) -> DataVersion {
    DataVersion {
        state_version: d.state_version,
        timestamp: d.timestamp,
        counter: d.counter,
    }
}

fn broker_data(b: BrokerInfo) -> BrokerData {
    BrokerData {
        cluster: b.cluster,
        broker_name: b.broker_name,
        broker_addrs: b.addrs,
        zone_name: b.zone_name,
        enable_acting_master: b.enable_acting_master,
    }
}

fn topic_list(topics: Vec<String>, broker_addr: Option<String>) -> RemotingCommand {
    let list = TopicList {
        topic_list: topics.into_iter().collect::<BTreeSet<_>>(),
        broker_addr,
    };
    ok().with_body(list.encode())
}

/// Adapts the shared state to the remoting processor trait.
pub struct Dispatcher(pub Arc<NamesrvProcessor>);

impl RequestProcessor for Dispatcher {
    fn process(
        &self,
        ctx: RequestContext,
        request: RemotingCommand,
    ) -> BoxFuture<'static, ProcessResult> {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            let response = state.handle(&ctx, &request).await;
            if response.code == resp::INVALID_PARAMETER {
                // A misbehaving client repeats it: one line per peer per window.
                static BAD_REQUEST: apogee_throttle::LogThrottle =
                    apogee_throttle::LogThrottle::new("bad request");
                apogee_throttle::throttled_warn!(
                    BAD_REQUEST,
                    ctx.peer_addr().ip(),
                    code = request.code,
                    peer = %ctx.peer_addr(),
                    remark = response.remark.as_deref().unwrap_or(""),
                    "bad request"
                );
            } else if response.code != resp::SUCCESS {
                tracing::debug!(
                    code = request.code,
                    peer = %ctx.peer_addr(),
                    result = response.code,
                    remark = response.remark.as_deref().unwrap_or(""),
                    "request failed"
                );
            }
            Ok(Some(response))
        })
    }
}
