//! `apache.rocketmq.v2.MessagingService`: each RPC checked, turned into
//! remoting calls through [`Backend`], and answered with Apache's status
//! codes. Bad input is a status, never a panic.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::header::{
    AckMessageRequestHeader, ChangeInvisibleTimeRequestHeader, EndTransactionRequestHeader,
    PopMessageRequestHeader, PullMessageRequestHeader, RecallMessageRequestHeader, RpcFields,
    SendMessageRequestHeaderV2,
};
use apogee_protocol::message::{decode_offset_msg_id, keys, properties, sysflag};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::backend::{Backend, PROXY_PRODUCER_GROUP};
use crate::convert::{self, duration, duration_ms, timestamp_ms};
use crate::error::ProxyError;
use crate::pb::{self, Code};
use crate::receipt::ReceiptHandle;
use crate::session::{Session, Sessions, TxInfo};
use crate::ProxyConfig;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The shortest and longest invisible time a receive may ask for.
const MIN_INVISIBLE_MS: i64 = 1_000;
const MAX_INVISIBLE_MS: i64 = 12 * 3600 * 1000;
/// Default invisible time when a push consumer sends none.
const DEFAULT_INVISIBLE_MS: i64 = 30_000;
/// Long polling when the request names none.
const DEFAULT_LONG_POLLING_MS: i64 = 20_000;
/// Longest long polling a request may ask for.
const MAX_LONG_POLLING_MS: i64 = 5 * 60 * 1000;
/// Part of the call's deadline kept for the answer to travel back.
const DEADLINE_MARGIN_MS: i64 = 500;
/// Deliveries of a message when the group's config cannot be read
/// (remoting's default of 16 retries).
const DEFAULT_MAX_ATTEMPTS: i32 = 17;
/// Pull sysFlag bits (Java `PullSysFlag`).
const PULL_FLAG_SUSPEND: i32 = 0x2;
const PULL_FLAG_SUBSCRIPTION: i32 = 0x4;
/// Most messages one receive returns.
const MAX_BATCH: i32 = 32;
/// How long a client may take to send its first Settings on Telemetry.
const SETTINGS_WAIT: Duration = Duration::from_secs(30);

fn status(code: Code, message: impl Into<String>) -> pb::Status {
    pb::Status {
        code: code as i32,
        message: message.into(),
    }
}

fn ok() -> pb::Status {
    status(Code::Ok, "OK")
}

fn err_status(e: &ProxyError) -> pb::Status {
    status(e.code(), e.to_string())
}

/// The `x-mq-client-id` every call must carry.
/// The status of a call answered per entry: OK when every entry is, the
/// entry's own when there is one, else MULTIPLE_RESULTS.
fn overall_status<'a>(
    entries: impl ExactSizeIterator<Item = Option<&'a pb::Status>>,
    mixed: &str,
) -> pb::Status {
    let statuses: Vec<Option<&pb::Status>> = entries.collect();
    if statuses
        .iter()
        .all(|s| s.is_some_and(|s| s.code == Code::Ok as i32))
    {
        ok()
    } else if let [only] = statuses.as_slice() {
        only.cloned().unwrap_or_default()
    } else {
        status(Code::MultipleResults, mixed)
    }
}

fn client_id<T>(req: &Request<T>) -> Result<String, pb::Status> {
    req.metadata()
        .get("x-mq-client-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            status(
                Code::ClientIdRequired,
                "x-mq-client-id metadata is required",
            )
        })
}

/// The call's deadline (`grpc-timeout`) in milliseconds, if any.
fn deadline_ms<T>(req: &Request<T>) -> Option<i64> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: i64 = num.parse().ok()?;
    Some(match unit {
        "H" => n.saturating_mul(3_600_000),
        "M" => n.saturating_mul(60_000),
        "S" => n.saturating_mul(1000),
        "m" => n,
        "u" => n / 1000,
        "n" => n / 1_000_000,
        _ => return None,
    })
}

fn name_of(r: &Option<pb::Resource>) -> Option<&str> {
    r.as_ref().map(|r| r.name.trim()).filter(|n| !n.is_empty())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct MessagingService {
    backend: Arc<Backend>,
    sessions: Arc<Sessions>,
    config: ProxyConfig,
    next_stream: AtomicU64,
}

impl MessagingService {
    pub fn new(backend: Arc<Backend>, sessions: Arc<Sessions>, config: ProxyConfig) -> Self {
        MessagingService {
            backend,
            sessions,
            config,
            next_stream: AtomicU64::new(1),
        }
    }

    /// Where clients should connect: the configured advertised address,
    /// else the access point the client says it used, else the address
    /// the call arrived on.
    fn endpoints<T>(&self, req: &Request<T>, asked: Option<&pb::Endpoints>) -> pb::Endpoints {
        if let Some(adv) = &self.config.advertised_addr {
            if let Some(e) = parse_endpoints(adv) {
                return e;
            }
        }
        if let Some(e) = asked.filter(|e| !e.addresses.is_empty()) {
            return e.clone();
        }
        match req.local_addr() {
            Some(a) => pb::Endpoints {
                scheme: if a.is_ipv4() {
                    pb::AddressScheme::IPv4
                } else {
                    pb::AddressScheme::IPv6
                } as i32,
                addresses: vec![pb::Address {
                    host: a.ip().to_string(),
                    port: i32::from(a.port()),
                }],
            },
            None => pb::Endpoints::default(),
        }
    }

    async fn accept_types(
        &self,
        route: &apogee_protocol::body::TopicRouteData,
        topic: &str,
    ) -> Vec<i32> {
        let ty = self
            .backend
            .topic_config(route, topic)
            .await
            .and_then(|c| c.attributes.get("message.type").cloned());
        let all = || {
            vec![
                pb::MessageType::Normal as i32,
                pb::MessageType::Fifo as i32,
                pb::MessageType::Delay as i32,
                pb::MessageType::Transaction as i32,
            ]
        };
        match ty.as_deref().map(str::to_ascii_uppercase).as_deref() {
            Some("NORMAL") => vec![pb::MessageType::Normal as i32],
            Some("FIFO") => vec![pb::MessageType::Fifo as i32],
            Some("DELAY") => vec![pb::MessageType::Delay as i32],
            Some("TRANSACTION") => vec![pb::MessageType::Transaction as i32],
            _ => all(),
        }
    }

    /// The group's config on the first broker of `topic` that has one.
    async fn group_config(
        &self,
        topic: &str,
        group: &str,
    ) -> Option<apogee_protocol::body::SubscriptionGroupConfig> {
        let route = self.backend.route(topic).await.ok()?;
        for bd in &route.broker_datas {
            if let Some(addr) = bd.broker_addrs.get(&0) {
                if let Some(c) = self.backend.group_config(addr, group).await {
                    return Some(c);
                }
            }
        }
        None
    }

    /// Whether the group consumes in FIFO order (its `consumeMessageOrderly`).
    async fn group_is_fifo(&self, topic: &str, group: &str) -> bool {
        self.group_config(topic, group)
            .await
            .is_some_and(|c| c.consume_message_orderly)
    }

    async fn send_one(&self, msg: pb::Message) -> pb::SendResultEntry {
        match self.try_send_one(msg).await {
            Ok(e) => e,
            Err(s) => pb::SendResultEntry {
                status: Some(s),
                ..Default::default()
            },
        }
    }

    async fn try_send_one(&self, msg: pb::Message) -> Result<pb::SendResultEntry, pb::Status> {
        let topic = name_of(&msg.topic)
            .ok_or_else(|| status(Code::IllegalTopic, "message topic is required"))?
            .to_owned();
        let sys = msg.system_properties.unwrap_or_default();
        if sys.message_id.trim().is_empty() {
            return Err(status(Code::IllegalMessageId, "message_id is required"));
        }
        let max = self.config.max_body_size;
        let body = if sys.body_encoding == pb::Encoding::Gzip as i32 {
            convert::gunzip(&msg.body, max)
                .map(bytes::Bytes::from)
                .map_err(|e| status(Code::MessageCorrupted, e))?
        } else {
            msg.body
        };
        if body.len() > max {
            return Err(status(
                Code::MessageBodyTooLarge,
                format!(
                    "message body is {} bytes, more than the {max} allowed",
                    body.len()
                ),
            ));
        }
        let route = self
            .backend
            .route(&topic)
            .await
            .map_err(|e| err_status(&e))?;
        let queues = self.backend.writable_queues_of(&topic, &route);
        if queues.is_empty() {
            return Err(status(
                Code::Forbidden,
                format!("topic {topic} has no writable queue"),
            ));
        }
        let idx = match &sys.message_group {
            Some(g) if !g.is_empty() => {
                // Same group, same queue: FIFO order is kept per queue.
                let h = g
                    .bytes()
                    .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
                h as usize % queues.len()
            }
            _ => self.backend.next_index() % queues.len(),
        };
        let (broker_name, queue_id) = queues[idx].clone();
        let addr = self
            .backend
            .master_addr(&route, &broker_name)
            .map_err(|e| err_status(&e))?;

        // Values that would break the properties string (its separators).
        for (what, v) in [
            ("message_id", Some(sys.message_id.as_str())),
            ("tag", sys.tag.as_deref()),
            ("message_group", sys.message_group.as_deref()),
            ("trace_context", sys.trace_context.as_deref()),
        ]
        .into_iter()
        .chain(sys.keys.iter().map(|k| ("keys", Some(k.as_str()))))
        {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                if properties::validate_pair(what, v).is_err() || v.contains('\u{1}') {
                    let code = match what {
                        "tag" => Code::IllegalMessageTag,
                        "keys" => Code::IllegalMessageKey,
                        "message_group" => Code::IllegalMessageGroup,
                        "message_id" => Code::IllegalMessageId,
                        _ => Code::BadRequest,
                    };
                    return Err(status(code, format!("{what} contains a control character")));
                }
            }
        }
        let mut props = String::new();
        for (k, v) in &msg.user_properties {
            if convert::SYSTEM_KEYS.contains(&k.as_str()) {
                return Err(status(
                    Code::IllegalMessagePropertyKey,
                    format!("property {k:?} is reserved for the system"),
                ));
            }
            if properties::validate_pair(k, v).is_err() {
                return Err(status(
                    Code::IllegalMessagePropertyKey,
                    format!("property {k:?} has a character the protocol cannot carry"),
                ));
            }
            properties::append(&mut props, k, v);
        }
        if let Some(tag) = sys.tag.as_deref().filter(|t| !t.is_empty()) {
            if tag.contains('|') {
                return Err(status(
                    Code::IllegalMessageTag,
                    "a tag must not contain '|'",
                ));
            }
            properties::append(&mut props, keys::TAGS, tag);
        }
        let ks: Vec<&str> = sys
            .keys
            .iter()
            .map(String::as_str)
            .filter(|k| !k.is_empty())
            .collect();
        if !ks.is_empty() {
            properties::append(&mut props, keys::KEYS, &ks.join(keys::KEY_SEPARATOR));
        }
        properties::append(&mut props, keys::UNIQ_KEY, &sys.message_id);
        if let Some(g) = sys.message_group.as_deref().filter(|g| !g.is_empty()) {
            properties::append(&mut props, keys::SHARDING_KEY, g);
        }
        if let Some(t) = sys.trace_context.as_deref().filter(|t| !t.is_empty()) {
            properties::append(&mut props, keys::TRACE_CONTEXT, t);
        }
        if let Some(ts) = &sys.delivery_timestamp {
            let at = timestamp_ms(ts);
            if at > now_ms() {
                properties::append(&mut props, keys::TIMER_DELIVER_MS, &at.to_string());
            }
        }
        let transactional = sys.message_type == pb::MessageType::Transaction as i32;
        let mut sys_flag = 0;
        if transactional {
            properties::append(&mut props, keys::TRANSACTION_PREPARED, "true");
            properties::append(&mut props, keys::PRODUCER_GROUP, PROXY_PRODUCER_GROUP);
            if let Some(d) = sys
                .orphaned_transaction_recovery_duration
                .as_ref()
                .and_then(duration_ms)
            {
                properties::append(
                    &mut props,
                    keys::CHECK_IMMUNITY_TIME_IN_SECONDS,
                    &(d / 1000).max(1).to_string(),
                );
            }
            sys_flag |= sysflag::TRANSACTION_PREPARED_TYPE;
            // The broker checks back on the connection of the group.
            self.backend.ensure_registered(&addr).await;
        }
        let header = SendMessageRequestHeaderV2 {
            producer_group: PROXY_PRODUCER_GROUP.to_owned(),
            topic: topic.clone(),
            default_topic: apogee_protocol::topic::AUTO_CREATE_TOPIC_KEY_TOPIC.to_owned(),
            default_topic_queue_nums: crate::backend::AUTO_CREATE_QUEUES,
            queue_id,
            sys_flag,
            born_timestamp: sys
                .born_timestamp
                .as_ref()
                .map(timestamp_ms)
                .unwrap_or_else(now_ms),
            flag: 0,
            properties: Some(props),
            broker_name: Some(broker_name.clone()),
            ..Default::default()
        };
        let resp = self
            .backend
            .send(&addr, &header, body)
            .await
            .map_err(|e| err_status(&e))?;
        let transaction_id = if transactional {
            let (_, commit_log_offset) = decode_offset_msg_id(&resp.msg_id)
                .unwrap_or_else(|_| (std::net::SocketAddr::from(([0, 0, 0, 0], 0)), -1));
            let id = crate::session::transaction_id(&resp.msg_id, resp.queue_offset);
            self.sessions.remember_tx(
                &id,
                TxInfo {
                    broker_addr: addr.clone(),
                    commit_log_offset,
                    tran_state_table_offset: resp.queue_offset,
                    topic: topic.clone(),
                    at: std::time::Instant::now(),
                },
            );
            id
        } else {
            String::new()
        };
        Ok(pb::SendResultEntry {
            status: Some(ok()),
            message_id: sys.message_id,
            transaction_id,
            offset: resp.queue_offset,
            recall_handle: resp.recall_handle.unwrap_or_default(),
        })
    }

    /// Resolves a queue from a request to (topic, broker address, queue id).
    async fn locate(
        &self,
        mq: Option<&pb::MessageQueue>,
    ) -> Result<(String, String, String, i32), pb::Status> {
        let mq = mq.ok_or_else(|| status(Code::BadRequest, "message_queue is required"))?;
        let topic = name_of(&mq.topic)
            .ok_or_else(|| status(Code::IllegalTopic, "message_queue.topic is required"))?
            .to_owned();
        let route = self
            .backend
            .route(&topic)
            .await
            .map_err(|e| err_status(&e))?;
        let broker_name = match mq
            .broker
            .as_ref()
            .map(|b| b.name.as_str())
            .filter(|n| !n.is_empty())
        {
            Some(n) => n.to_owned(),
            None => route
                .queue_datas
                .first()
                .map(|q| q.broker_name.clone())
                .ok_or_else(|| {
                    status(Code::TopicNotFound, format!("topic {topic} has no queue"))
                })?,
        };
        let addr = self
            .backend
            .master_addr(&route, &broker_name)
            .map_err(|e| err_status(&e))?;
        Ok((topic, broker_name, addr, mq.id))
    }

    fn queues_of(
        &self,
        topic: &pb::Resource,
        route: &apogee_protocol::body::TopicRouteData,
        endpoints: &pb::Endpoints,
        accept: &[i32],
    ) -> Vec<pb::MessageQueue> {
        use apogee_protocol::flags::PermName;
        let mut out = Vec::new();
        for qd in &route.queue_datas {
            let n = qd.read_queue_nums.max(qd.write_queue_nums);
            for id in 0..n {
                let r = id < qd.read_queue_nums && PermName::is_readable(qd.perm);
                let w = id < qd.write_queue_nums && PermName::is_writeable(qd.perm);
                let permission = match (r, w) {
                    (true, true) => pb::Permission::ReadWrite,
                    (true, false) => pb::Permission::Read,
                    (false, true) => pb::Permission::Write,
                    (false, false) => pb::Permission::None,
                };
                out.push(pb::MessageQueue {
                    topic: Some(topic.clone()),
                    id,
                    permission: permission as i32,
                    broker: Some(pb::Broker {
                        name: qd.broker_name.clone(),
                        id: 0,
                        endpoints: Some(endpoints.clone()),
                    }),
                    accept_message_types: accept.to_vec(),
                });
            }
        }
        out
    }

    /// Settings the server adds to a client's: limits, retry policy, FIFO.
    async fn merged_settings(&self, mut s: pb::Settings) -> pb::Settings {
        use pb::settings::PubSub;
        match s.pub_sub.take() {
            Some(PubSub::Publishing(mut p)) => {
                p.max_body_size = i32::try_from(self.config.max_body_size).unwrap_or(i32::MAX);
                p.validate_message_type = true;
                s.backoff_policy = Some(pb::RetryPolicy {
                    max_attempts: 3,
                    strategy: Some(pb::retry_policy::Strategy::ExponentialBackoff(
                        pb::ExponentialBackoff {
                            initial: Some(duration(10)),
                            max: Some(duration(1000)),
                            multiplier: 2.0,
                        },
                    )),
                });
                s.pub_sub = Some(PubSub::Publishing(p));
            }
            Some(PubSub::Subscription(mut sub)) => {
                let group = name_of(&sub.group).map(str::to_owned);
                let topic = sub
                    .subscriptions
                    .iter()
                    .find_map(|e| name_of(&e.topic).map(str::to_owned));
                let config = match (&group, &topic) {
                    (Some(g), Some(t)) => self.group_config(t, g).await,
                    _ => None,
                };
                let fifo = config.as_ref().is_some_and(|c| c.consume_message_orderly);
                // Deliveries before the client forwards to the DLQ: the
                // first one plus the group's retries (remoting's rule).
                let max_attempts = config.as_ref().map_or(DEFAULT_MAX_ATTEMPTS, |c| {
                    c.retry_max_times.saturating_add(1).max(1)
                });
                sub.fifo = Some(fifo);
                sub.receive_batch_size = Some(MAX_BATCH);
                sub.long_polling_timeout = Some(duration(DEFAULT_LONG_POLLING_MS));
                // Remoting's delay levels from level 3 on, as a retry walks them.
                let next = [
                    1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800,
                    3600, 7200,
                ]
                .iter()
                .map(|s| duration(s * 1000))
                .collect();
                s.backoff_policy = Some(pb::RetryPolicy {
                    max_attempts,
                    strategy: Some(if fifo {
                        pb::retry_policy::Strategy::ExponentialBackoff(pb::ExponentialBackoff {
                            initial: Some(duration(1000)),
                            max: Some(duration(60_000)),
                            multiplier: 2.0,
                        })
                    } else {
                        pb::retry_policy::Strategy::CustomizedBackoff(pb::CustomizedBackoff {
                            next,
                        })
                    }),
                });
                s.pub_sub = Some(PubSub::Subscription(sub));
            }
            None => {}
        }
        // Metric export is not offered: the client's own setting is echoed
        // (the Python push consumer fails on a server-sent Metric it cannot use).
        s
    }
}

/// `host:port` (or `host1:port;host2:port`) as endpoints.
pub fn parse_endpoints(s: &str) -> Option<pb::Endpoints> {
    let mut addresses = Vec::new();
    let mut scheme = pb::AddressScheme::IPv4;
    for part in s.split([';', ',']).map(str::trim).filter(|p| !p.is_empty()) {
        let (host, port) = part.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(_)) => scheme = pb::AddressScheme::IPv6,
            Ok(_) => {}
            Err(_) => scheme = pb::AddressScheme::DomainName,
        }
        addresses.push(pb::Address {
            host: host.to_owned(),
            port: i32::from(port),
        });
    }
    (!addresses.is_empty()).then_some(pb::Endpoints {
        scheme: scheme as i32,
        addresses,
    })
}

#[tonic::async_trait]
impl pb::messaging_service_server::MessagingService for MessagingService {
    async fn query_route(
        &self,
        req: Request<pb::QueryRouteRequest>,
    ) -> Result<Response<pb::QueryRouteResponse>, Status> {
        let fail = |s| {
            Ok(Response::new(pb::QueryRouteResponse {
                status: Some(s),
                message_queues: vec![],
            }))
        };
        if let Err(s) = client_id(&req) {
            return fail(s);
        }
        let endpoints = self.endpoints(&req, req.get_ref().endpoints.as_ref());
        let r = req.into_inner();
        let Some(topic) = name_of(&r.topic).map(str::to_owned) else {
            return fail(status(Code::IllegalTopic, "topic is required"));
        };
        let route = match self.backend.route(&topic).await {
            Ok(r) => r,
            Err(e) => return fail(err_status(&e)),
        };
        let accept = self.accept_types(&route, &topic).await;
        let res = r.topic.unwrap_or_default();
        let queues = self.queues_of(&res, &route, &endpoints, &accept);
        Ok(Response::new(pb::QueryRouteResponse {
            status: Some(ok()),
            message_queues: queues,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let s = match client_id(&req) {
            Ok(_) => ok(),
            Err(s) => s,
        };
        Ok(Response::new(pb::HeartbeatResponse { status: Some(s) }))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let fail = |s| {
            Ok(Response::new(pb::SendMessageResponse {
                status: Some(s),
                entries: vec![],
            }))
        };
        if let Err(s) = client_id(&req) {
            return fail(s);
        }
        let r = req.into_inner();
        if r.messages.is_empty() {
            return fail(status(Code::BadRequest, "no message to send"));
        }
        let first = name_of(&r.messages[0].topic).map(str::to_owned);
        if r.messages
            .iter()
            .any(|m| name_of(&m.topic).map(str::to_owned) != first)
        {
            return fail(status(
                Code::BadRequest,
                "all messages of one send must share a topic",
            ));
        }
        // Several messages go out together, one round trip's wait for all;
        // a request with a message group keeps them in order, one by one.
        let ordered = r.messages.iter().any(|m| {
            m.system_properties
                .as_ref()
                .and_then(|s| s.message_group.as_deref())
                .is_some_and(|g| !g.is_empty())
        });
        let entries = if ordered || r.messages.len() == 1 {
            let mut entries = Vec::with_capacity(r.messages.len());
            for m in r.messages {
                entries.push(self.send_one(m).await);
            }
            entries
        } else {
            futures::future::join_all(r.messages.into_iter().map(|m| self.send_one(m))).await
        };
        let overall = overall_status(
            entries.iter().map(|e| e.status.as_ref()),
            "some messages failed; see the entries",
        );
        Ok(Response::new(pb::SendMessageResponse {
            status: Some(overall),
            entries,
        }))
    }

    async fn query_assignment(
        &self,
        req: Request<pb::QueryAssignmentRequest>,
    ) -> Result<Response<pb::QueryAssignmentResponse>, Status> {
        let fail = |s| {
            Ok(Response::new(pb::QueryAssignmentResponse {
                status: Some(s),
                assignments: vec![],
            }))
        };
        if let Err(s) = client_id(&req) {
            return fail(s);
        }
        let endpoints = self.endpoints(&req, req.get_ref().endpoints.as_ref());
        let r = req.into_inner();
        let Some(topic) = name_of(&r.topic).map(str::to_owned) else {
            return fail(status(Code::IllegalTopic, "topic is required"));
        };
        if name_of(&r.group).is_none() {
            return fail(status(Code::IllegalConsumerGroup, "group is required"));
        }
        let route = match self.backend.route(&topic).await {
            Ok(r) => r,
            Err(e) => return fail(err_status(&e)),
        };
        let accept = self.accept_types(&route, &topic).await;
        // One assignment per readable broker; the broker picks the queue
        // (queue id -1), as POP does.
        let res = r.topic.unwrap_or_default();
        let assignments = route
            .queue_datas
            .iter()
            .filter(|q| {
                apogee_protocol::flags::PermName::is_readable(q.perm) && q.read_queue_nums > 0
            })
            .map(|q| pb::Assignment {
                message_queue: Some(pb::MessageQueue {
                    topic: Some(res.clone()),
                    id: -1,
                    permission: pb::Permission::ReadWrite as i32,
                    broker: Some(pb::Broker {
                        name: q.broker_name.clone(),
                        id: 0,
                        endpoints: Some(endpoints.clone()),
                    }),
                    accept_message_types: accept.clone(),
                }),
            })
            .collect();
        Ok(Response::new(pb::QueryAssignmentResponse {
            status: Some(ok()),
            assignments,
        }))
    }

    type ReceiveMessageStream = BoxStream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        req: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        let one = |s: pb::Status| -> Result<Response<Self::ReceiveMessageStream>, Status> {
            let item = pb::ReceiveMessageResponse {
                content: Some(pb::receive_message_response::Content::Status(s)),
            };
            Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(item)]))))
        };
        let lang = match client_id(&req) {
            Ok(cid) => self.sessions.language_of(&cid),
            Err(s) => return one(s),
        };
        let deadline = deadline_ms(&req);
        let r = req.into_inner();
        let Some(group) = name_of(&r.group).map(str::to_owned) else {
            return one(status(Code::IllegalConsumerGroup, "group is required"));
        };
        if r.batch_size <= 0 || r.batch_size > MAX_BATCH {
            return one(status(
                Code::BadRequest,
                format!("batch_size must be 1..={MAX_BATCH}, got {}", r.batch_size),
            ));
        }
        let invisible = match &r.invisible_duration {
            None => DEFAULT_INVISIBLE_MS,
            Some(d) => match duration_ms(d) {
                Some(ms) if (MIN_INVISIBLE_MS..=MAX_INVISIBLE_MS).contains(&ms) => ms,
                _ => {
                    return one(status(
                        Code::IllegalInvisibleTime,
                        format!(
                        "invisible_duration must be {MIN_INVISIBLE_MS} ms to {MAX_INVISIBLE_MS} ms"
                    ),
                    ))
                }
            },
        };
        let mut poll = match &r.long_polling_timeout {
            None => DEFAULT_LONG_POLLING_MS,
            Some(d) => match duration_ms(d) {
                Some(ms) if ms <= MAX_LONG_POLLING_MS => ms,
                _ => {
                    return one(status(
                        Code::IllegalPollingTime,
                        format!("long_polling_timeout must be 0 to {MAX_LONG_POLLING_MS} ms"),
                    ))
                }
            },
        };
        if let Some(dl) = deadline {
            // Answer before the client gives up on the call.
            poll = poll.min((dl - DEADLINE_MARGIN_MS).max(0));
        }
        // Only the broker counts: like Apache's proxy, pop any queue of it
        // (-1). Clients keep sending the queue their route gave them, and
        // popping just that one would leave the others unread.
        let (topic, broker, addr, _queue) = match self.locate(r.message_queue.as_ref()).await {
            Ok(v) => v,
            Err(s) => return one(s),
        };
        let (exp_type, exp) = match &r.filter_expression {
            Some(f) if f.r#type == pb::FilterType::Sql as i32 => ("SQL92", f.expression.clone()),
            Some(f) if !f.expression.trim().is_empty() => ("TAG", f.expression.clone()),
            _ => ("TAG", "*".to_owned()),
        };
        let fifo = self.group_is_fifo(&topic, &group).await;
        let header = PopMessageRequestHeader {
            consumer_group: group,
            topic: topic.clone(),
            queue_id: -1,
            max_msg_nums: r.batch_size,
            invisible_time: invisible,
            poll_time: poll,
            born_time: now_ms(),
            // A new group starts at the first retained message.
            init_mode: 0,
            exp_type: Some(exp_type.to_owned()),
            exp: Some(exp),
            order: Some(fifo),
            attempt_id: r.attempt_id.clone(),
            ..Default::default()
        };
        let wait = Duration::from_millis((poll + 3000) as u64);
        let resource = r.message_queue.and_then(|q| q.topic).unwrap_or_default();
        let group = header.consumer_group.clone();
        // The POP runs on its own task and always completes: a client that
        // gives up mid-poll drops the stream, and what the broker popped for
        // it is handed back instead of staying invisible for nothing.
        // The whole answer goes over in one piece (`Frames`): the
        // connection's task is woken once, not once per message. A vanished
        // client's unsent messages are handed back when the stream is
        // dropped, the rest by this task when its send fails.
        let (tx, rx) = oneshot::channel();
        let frames = crate::frames::Frames::new(
            rx,
            crate::frames::HandBack {
                backend: Arc::clone(&self.backend),
                addr: addr.clone(),
                group: group.clone(),
                topic: topic.clone(),
            },
        );
        let backend = Arc::clone(&self.backend);
        tokio::spawn(async move {
            use pb::receive_message_response::Content;
            let frame = |c| Ok(pb::ReceiveMessageResponse { content: Some(c) });
            let popped = match backend.pop(&addr, &broker, &header, wait).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(vec![frame(Content::Status(err_status(&e)))]);
                    return;
                }
            };
            if popped.messages.is_empty() {
                let s = status(Code::MessageNotFound, "no new message");
                let _ = tx.send(vec![frame(Content::Status(s))]);
                return;
            }
            let invisible_time = popped.invisible_time;
            let left = if tx.is_closed() {
                // The client is gone: nothing to convert.
                popped
                    .messages
                    .iter()
                    .filter_map(|m| m.property(keys::POP_CK).map(str::to_owned))
                    .collect()
            } else {
                // Status, then when the broker handed the messages over
                // (clients measure delivery latency from it; Python requires
                // it), then them.
                let mut out = Vec::with_capacity(popped.messages.len() + 2);
                let mut hosts = convert::Hosts::default();
                out.push(frame(Content::Status(ok())));
                out.push(frame(Content::DeliveryTimestamp(convert::timestamp(
                    now_ms(),
                ))));
                for m in popped.messages {
                    let pm = convert::to_pb_message_in(
                        m,
                        resource.clone(),
                        Some(invisible_time),
                        lang,
                        &mut hosts,
                    );
                    out.push(frame(Content::Message(pm)));
                }
                match tx.send(out) {
                    Ok(()) => return,
                    Err(out) => crate::frames::receipts(out),
                }
            };
            for r in left {
                give_back(&backend, &addr, &group, &topic, &r).await;
            }
        });
        Ok(Response::new(Box::pin(frames)))
    }

    async fn ack_message(
        &self,
        req: Request<pb::AckMessageRequest>,
    ) -> Result<Response<pb::AckMessageResponse>, Status> {
        let fail = |s| {
            Ok(Response::new(pb::AckMessageResponse {
                status: Some(s),
                entries: vec![],
            }))
        };
        if let Err(s) = client_id(&req) {
            return fail(s);
        }
        let r = req.into_inner();
        let Some(group) = name_of(&r.group).map(str::to_owned) else {
            return fail(status(Code::IllegalConsumerGroup, "group is required"));
        };
        let Some(topic) = name_of(&r.topic).map(str::to_owned) else {
            return fail(status(Code::IllegalTopic, "topic is required"));
        };
        if r.entries.is_empty() {
            return fail(status(Code::BadRequest, "no entry to acknowledge"));
        }
        // One BATCH_ACK_MESSAGE per broker, not one ACK_MESSAGE per entry.
        let receipts: Vec<&str> = r
            .entries
            .iter()
            .map(|e| e.receipt_handle.as_str())
            .collect();
        let done = crate::ack::ack_all(&self.backend, &group, &topic, &receipts).await;
        let entries: Vec<_> = r
            .entries
            .into_iter()
            .zip(done)
            .map(|(e, d)| pb::AckMessageResultEntry {
                message_id: e.message_id,
                receipt_handle: e.receipt_handle,
                status: Some(d.map_or_else(|e| err_status(&e), |()| ok())),
            })
            .collect();
        let overall = overall_status(
            entries.iter().map(|e| e.status.as_ref()),
            "some acknowledgements failed; see the entries",
        );
        Ok(Response::new(pb::AckMessageResponse {
            status: Some(overall),
            entries,
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        req: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<pb::ForwardMessageToDeadLetterQueueResponse>, Status> {
        let reply = |s| {
            Ok(Response::new(pb::ForwardMessageToDeadLetterQueueResponse {
                status: Some(s),
            }))
        };
        if let Err(s) = client_id(&req) {
            return reply(s);
        }
        let r = req.into_inner();
        let (Some(group), Some(topic)) = (name_of(&r.group), name_of(&r.topic)) else {
            return reply(status(Code::BadRequest, "group and topic are required"));
        };
        match self.forward_to_dlq(group, topic, &r.receipt_handle).await {
            Ok(()) => reply(ok()),
            Err(s) => reply(s),
        }
    }

    type PullMessageStream = BoxStream<pb::PullMessageResponse>;

    async fn pull_message(
        &self,
        req: Request<pb::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        let one = |items: Vec<pb::pull_message_response::Content>| -> Result<Response<Self::PullMessageStream>, Status> {
            let items: Vec<_> = items
                .into_iter()
                .map(|c| Ok(pb::PullMessageResponse { content: Some(c) }))
                .collect();
            Ok(Response::new(Box::pin(tokio_stream::iter(items))))
        };
        use pb::pull_message_response::Content;
        let lang = match client_id(&req) {
            Ok(cid) => self.sessions.language_of(&cid),
            Err(s) => {
                return one(vec![Content::Status(s)]);
            }
        };
        let deadline = deadline_ms(&req);
        let r = req.into_inner();
        let Some(group) = name_of(&r.group).map(str::to_owned) else {
            return one(vec![Content::Status(status(
                Code::IllegalConsumerGroup,
                "group is required",
            ))]);
        };
        let (topic, broker, addr, queue_id) = match self.locate(r.message_queue.as_ref()).await {
            Ok(v) => v,
            Err(s) => return one(vec![Content::Status(s)]),
        };
        if queue_id < 0 {
            return one(vec![Content::Status(status(
                Code::BadRequest,
                "pull needs a queue id",
            ))]);
        }
        if r.offset < 0 {
            return one(vec![Content::Status(status(
                Code::IllegalOffset,
                "offset must not be negative",
            ))]);
        }
        let mut poll = match r.long_polling_timeout.as_ref().map(duration_ms) {
            None => 0,
            Some(Some(ms)) if ms <= MAX_LONG_POLLING_MS => ms,
            Some(_) => {
                return one(vec![Content::Status(status(
                    Code::IllegalPollingTime,
                    format!("long_polling_timeout must be 0 to {MAX_LONG_POLLING_MS} ms"),
                ))])
            }
        };
        if let Some(dl) = deadline {
            poll = poll.min((dl - DEADLINE_MARGIN_MS).max(0));
        }
        let (exp_type, exp) = match &r.filter_expression {
            Some(f) if f.r#type == pb::FilterType::Sql as i32 => ("SQL92", f.expression.clone()),
            Some(f) if !f.expression.trim().is_empty() => ("TAG", f.expression.clone()),
            _ => ("TAG", "*".to_owned()),
        };
        let h = PullMessageRequestHeader {
            consumer_group: group,
            topic: topic.clone(),
            queue_id,
            queue_offset: r.offset,
            max_msg_nums: r.batch_size.clamp(1, MAX_BATCH),
            // The subscription travels with the request (gRPC consumers
            // send no remoting heartbeat); offsets move by UpdateOffset only.
            sys_flag: PULL_FLAG_SUBSCRIPTION | if poll > 0 { PULL_FLAG_SUSPEND } else { 0 },
            commit_offset: 0,
            suspend_timeout_millis: poll,
            subscription: Some(exp),
            sub_version: 0,
            expression_type: Some(exp_type.to_owned()),
            ..Default::default()
        };
        let result = self
            .backend
            .instance()
            .pull(
                &addr,
                &broker,
                apogee_protocol::code::request_code::PULL_MESSAGE,
                &h,
                Duration::from_millis((poll + 3000) as u64),
            )
            .await;
        let res = match result {
            Ok(r) => r,
            Err(e) => return one(vec![Content::Status(err_status(&ProxyError::from(e)))]),
        };
        let resource = r.message_queue.and_then(|q| q.topic).unwrap_or_default();
        let mut items = Vec::new();
        if res.messages.is_empty() {
            items.push(Content::Status(status(
                Code::MessageNotFound,
                "no new message",
            )));
        } else {
            items.push(Content::Status(ok()));
        }
        for m in res.messages {
            items.push(Content::Message(crate::convert::ext_to_pb(
                m,
                resource.clone(),
                lang,
            )));
        }
        items.push(Content::NextOffset(res.next_begin_offset));
        one(items)
    }

    async fn update_offset(
        &self,
        req: Request<pb::UpdateOffsetRequest>,
    ) -> Result<Response<pb::UpdateOffsetResponse>, Status> {
        let reply = |s| Ok(Response::new(pb::UpdateOffsetResponse { status: Some(s) }));
        if let Err(s) = client_id(&req) {
            return reply(s);
        }
        let r = req.into_inner();
        let Some(group) = name_of(&r.group).map(str::to_owned) else {
            return reply(status(Code::IllegalConsumerGroup, "group is required"));
        };
        let (topic, broker, addr, queue_id) = match self.locate(r.message_queue.as_ref()).await {
            Ok(v) => v,
            Err(s) => return reply(s),
        };
        if queue_id < 0 || r.offset < 0 {
            return reply(status(
                Code::IllegalOffset,
                "a queue id and a non-negative offset are required",
            ));
        }
        let mq = apogee_client::MessageQueue::new(&topic, &broker, queue_id);
        match self
            .backend
            .instance()
            .update_consumer_offset(&addr, &group, &mq, r.offset, false)
            .await
        {
            Ok(()) => reply(ok()),
            Err(e) => reply(err_status(&e.into())),
        }
    }

    async fn get_offset(
        &self,
        req: Request<pb::GetOffsetRequest>,
    ) -> Result<Response<pb::GetOffsetResponse>, Status> {
        let reply = |s, offset| {
            Ok(Response::new(pb::GetOffsetResponse {
                status: Some(s),
                offset,
            }))
        };
        if let Err(s) = client_id(&req) {
            return reply(s, 0);
        }
        let r = req.into_inner();
        let Some(group) = name_of(&r.group).map(str::to_owned) else {
            return reply(status(Code::IllegalConsumerGroup, "group is required"), 0);
        };
        let (topic, broker, addr, queue_id) = match self.locate(r.message_queue.as_ref()).await {
            Ok(v) => v,
            Err(s) => return reply(s, 0),
        };
        let mq = apogee_client::MessageQueue::new(&topic, &broker, queue_id);
        match self
            .backend
            .instance()
            .query_consumer_offset(&addr, &group, &mq)
            .await
        {
            Ok(Some(o)) => reply(ok(), o),
            Ok(None) => reply(
                status(
                    Code::OffsetNotFound,
                    "the group has no offset on this queue",
                ),
                0,
            ),
            Err(e) => reply(err_status(&e.into()), 0),
        }
    }

    async fn query_offset(
        &self,
        req: Request<pb::QueryOffsetRequest>,
    ) -> Result<Response<pb::QueryOffsetResponse>, Status> {
        let reply = |s, offset| {
            Ok(Response::new(pb::QueryOffsetResponse {
                status: Some(s),
                offset,
            }))
        };
        if let Err(s) = client_id(&req) {
            return reply(s, 0);
        }
        let r = req.into_inner();
        let (topic, broker, addr, queue_id) = match self.locate(r.message_queue.as_ref()).await {
            Ok(v) => v,
            Err(s) => return reply(s, 0),
        };
        let mq = apogee_client::MessageQueue::new(&topic, &broker, queue_id);
        let inst = self.backend.instance();
        let res = match pb::QueryOffsetPolicy::try_from(r.query_offset_policy) {
            Ok(pb::QueryOffsetPolicy::Beginning) => inst.min_offset(&addr, &mq).await,
            Ok(pb::QueryOffsetPolicy::End) => inst.max_offset(&addr, &mq).await,
            Ok(pb::QueryOffsetPolicy::Timestamp) => match &r.timestamp {
                Some(t) => inst.search_offset(&addr, &mq, timestamp_ms(t)).await,
                None => return reply(status(Code::BadRequest, "timestamp is required"), 0),
            },
            Err(_) => return reply(status(Code::BadRequest, "unknown query_offset_policy"), 0),
        };
        match res {
            Ok(o) => reply(ok(), o),
            Err(e) => reply(err_status(&e.into()), 0),
        }
    }

    async fn end_transaction(
        &self,
        req: Request<pb::EndTransactionRequest>,
    ) -> Result<Response<pb::EndTransactionResponse>, Status> {
        let reply = |s| {
            Ok(Response::new(pb::EndTransactionResponse {
                status: Some(s),
            }))
        };
        if let Err(s) = client_id(&req) {
            return reply(s);
        }
        let r = req.into_inner();
        let commit = match pb::TransactionResolution::try_from(r.resolution) {
            Ok(pb::TransactionResolution::Commit) => sysflag::TRANSACTION_COMMIT_TYPE,
            Ok(pb::TransactionResolution::Rollback) => sysflag::TRANSACTION_ROLLBACK_TYPE,
            _ => {
                return reply(status(
                    Code::BadRequest,
                    "resolution must be COMMIT or ROLLBACK",
                ))
            }
        };
        // Remembered here, else decoded from the id (another proxy, or this
        // one before a restart, sent the half message).
        let tx = self.sessions.take_tx(&r.transaction_id).or_else(|| {
            let (host, commit_log_offset, queue_offset) =
                crate::session::parse_transaction_id(&r.transaction_id)?;
            Some(TxInfo {
                broker_addr: host.to_string(),
                commit_log_offset,
                tran_state_table_offset: queue_offset,
                topic: name_of(&r.topic).unwrap_or_default().to_owned(),
                at: std::time::Instant::now(),
            })
        });
        let Some(tx) = tx else {
            return reply(status(
                Code::InvalidTransactionId,
                format!("transaction {:?} is unknown here", r.transaction_id),
            ));
        };
        let h = EndTransactionRequestHeader {
            topic: Some(name_of(&r.topic).unwrap_or(&tx.topic).to_owned()),
            producer_group: PROXY_PRODUCER_GROUP.to_owned(),
            tran_state_table_offset: tx.tran_state_table_offset,
            commit_log_offset: tx.commit_log_offset,
            commit_or_rollback: commit,
            from_transaction_check: r.source == pb::TransactionSource::SourceServerCheck as i32,
            msg_id: r.message_id.clone(),
            transaction_id: Some(r.transaction_id.clone()),
            ..Default::default()
        };
        match self.backend.end_transaction(&tx.broker_addr, &h).await {
            Ok(()) => reply(ok()),
            Err(e) => {
                // Kept: the client may try again.
                self.sessions.remember_tx(&r.transaction_id, tx);
                reply(err_status(&e))
            }
        }
    }

    type TelemetryStream = BoxStream<pb::TelemetryCommand>;

    async fn telemetry(
        &self,
        req: Request<tonic::Streaming<pb::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        let cid = client_id(&req).map_err(|s| Status::invalid_argument(s.message))?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<pb::TelemetryCommand, Status>>(64);
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let this = self.clone_for_stream();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let next = if first {
                    match tokio::time::timeout(SETTINGS_WAIT, inbound.message()).await {
                        Ok(n) => n,
                        Err(_) => {
                            let _ = tx
                                .send(Err(Status::deadline_exceeded(
                                    "no Settings received: the first Telemetry command must be Settings",
                                )))
                                .await;
                            break;
                        }
                    }
                } else {
                    inbound.message().await
                };
                let cmd = match next {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(client = %cid, error = %e, "telemetry stream ended");
                        break;
                    }
                };
                use pb::telemetry_command::Command;
                match cmd.command {
                    Some(Command::Settings(s)) => {
                        let client_type = pb::ClientType::try_from(s.client_type.unwrap_or(0))
                            .unwrap_or(pb::ClientType::Unspecified);
                        let (topics, group) = match &s.pub_sub {
                            Some(pb::settings::PubSub::Publishing(p)) => {
                                (p.topics.iter().map(|t| t.name.clone()).collect(), None)
                            }
                            Some(pb::settings::PubSub::Subscription(sub)) => {
                                (Vec::new(), name_of(&sub.group).map(str::to_owned))
                            }
                            None => (Vec::new(), None),
                        };
                        this.sessions.open(
                            &cid,
                            Session {
                                client_type,
                                topics,
                                group,
                                outbox: tx.clone(),
                                stream_id,
                                language: s
                                    .user_agent
                                    .as_ref()
                                    .and_then(|ua| pb::Language::try_from(ua.language).ok())
                                    .unwrap_or(pb::Language::Unspecified),
                            },
                        );
                        let merged = this.merged_settings(s).await;
                        let reply = pb::TelemetryCommand {
                            status: Some(ok()),
                            command: Some(Command::Settings(merged)),
                        };
                        if tx.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    }
                    Some(_) if first => {
                        let _ = tx
                            .send(Err(Status::invalid_argument(
                                "the first Telemetry command must be Settings",
                            )))
                            .await;
                        break;
                    }
                    Some(Command::ThreadStackTrace(t)) => {
                        tracing::info!(client = %cid, nonce = %t.nonce, "thread stack trace received");
                    }
                    Some(Command::VerifyMessageResult(v)) => {
                        tracing::info!(client = %cid, nonce = %v.nonce, "verify-message result received");
                    }
                    Some(other) => {
                        tracing::debug!(client = %cid, command = ?std::mem::discriminant(&other), "ignoring a server-side command sent by a client");
                    }
                    None => {}
                }
                first = false;
            }
            this.sessions.close(&cid, stream_id);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn notify_client_termination(
        &self,
        req: Request<pb::NotifyClientTerminationRequest>,
    ) -> Result<Response<pb::NotifyClientTerminationResponse>, Status> {
        let s = match client_id(&req) {
            Ok(cid) => {
                self.sessions.remove(&cid);
                ok()
            }
            Err(s) => s,
        };
        Ok(Response::new(pb::NotifyClientTerminationResponse {
            status: Some(s),
        }))
    }

    async fn change_invisible_duration(
        &self,
        req: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<pb::ChangeInvisibleDurationResponse>, Status> {
        let reply = |s, receipt_handle| {
            Ok(Response::new(pb::ChangeInvisibleDurationResponse {
                status: Some(s),
                receipt_handle,
            }))
        };
        if let Err(s) = client_id(&req) {
            return reply(s, String::new());
        }
        let r = req.into_inner();
        let (Some(group), Some(topic)) = (name_of(&r.group), name_of(&r.topic)) else {
            return reply(
                status(Code::BadRequest, "group and topic are required"),
                String::new(),
            );
        };
        let invisible = match r.invisible_duration.as_ref().and_then(duration_ms) {
            Some(ms) if ms <= MAX_INVISIBLE_MS => ms,
            _ => {
                return reply(
                    status(
                        Code::IllegalInvisibleTime,
                        format!("invisible_duration must be 0 to {MAX_INVISIBLE_MS} ms"),
                    ),
                    String::new(),
                )
            }
        };
        let handle = match ReceiptHandle::parse(&r.receipt_handle) {
            Ok(h) => h,
            Err(e) => return reply(err_status(&e), String::new()),
        };
        let addr = match self.broker_of(topic, &handle).await {
            Ok(a) => a,
            Err(s) => return reply(s, String::new()),
        };
        let h = ChangeInvisibleTimeRequestHeader {
            consumer_group: group.to_owned(),
            topic: topic.to_owned(),
            queue_id: handle.queue_id,
            extra_info: r.receipt_handle.clone(),
            offset: handle.queue_offset,
            invisible_time: invisible,
            rpc: RpcFields {
                broker_name: Some(handle.broker_name.clone()),
                ..Default::default()
            },
        };
        match self.backend.change_invisible(&addr, &h).await {
            Ok(resp) => reply(
                ok(),
                handle.renewed(resp.pop_time, resp.invisible_time, resp.revive_qid),
            ),
            Err(e) => reply(err_status(&e), String::new()),
        }
    }

    async fn recall_message(
        &self,
        req: Request<pb::RecallMessageRequest>,
    ) -> Result<Response<pb::RecallMessageResponse>, Status> {
        let reply = |s, message_id| {
            Ok(Response::new(pb::RecallMessageResponse {
                status: Some(s),
                message_id,
            }))
        };
        if let Err(s) = client_id(&req) {
            return reply(s, String::new());
        }
        let r = req.into_inner();
        let Some(topic) = name_of(&r.topic).map(str::to_owned) else {
            return reply(
                status(Code::IllegalTopic, "topic is required"),
                String::new(),
            );
        };
        // Decoded here, as Apache's proxy does, to reach the broker it names.
        let handle = match apogee_protocol::recall::RecallHandle::decode(&r.recall_handle) {
            Ok(h) => h,
            Err(e) => return reply(status(Code::BadRequest, e.to_string()), String::new()),
        };
        let addr = match self.backend.master_addr_by_name(&handle.broker_name) {
            Ok(a) => a,
            Err(_) => {
                // Not cached yet: the topic's route names its brokers.
                if let Err(e) = self.backend.route(&topic).await {
                    return reply(err_status(&e), String::new());
                }
                match self.backend.master_addr_by_name(&handle.broker_name) {
                    Ok(a) => a,
                    Err(e) => return reply(err_status(&e), String::new()),
                }
            }
        };
        let h = RecallMessageRequestHeader {
            producer_group: Some(PROXY_PRODUCER_GROUP.to_owned()),
            topic,
            recall_handle: r.recall_handle,
            rpc: RpcFields {
                broker_name: Some(handle.broker_name),
                ..Default::default()
            },
        };
        match self.backend.recall(&addr, &h).await {
            Ok(id) => reply(ok(), id),
            // The broker's refusals of a handle (wrong topic, time passed)
            // are the caller's mistake, not the server's.
            Err(ProxyError::Broker { code, remark })
                if code == apogee_protocol::code::response_code::ILLEGAL_OPERATION =>
            {
                reply(status(Code::BadRequest, remark), String::new())
            }
            Err(e) => reply(err_status(&e), String::new()),
        }
    }

    async fn sync_lite_subscription(
        &self,
        _req: Request<pb::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<pb::SyncLiteSubscriptionResponse>, Status> {
        Ok(Response::new(pb::SyncLiteSubscriptionResponse {
            status: Some(status(
                Code::NotImplemented,
                "lite topics are not supported",
            )),
        }))
    }
}

impl MessagingService {
    fn clone_for_stream(&self) -> Arc<MessagingService> {
        Arc::new(MessagingService {
            backend: Arc::clone(&self.backend),
            sessions: Arc::clone(&self.sessions),
            config: self.config.clone(),
            next_stream: AtomicU64::new(0),
        })
    }

    async fn broker_of(&self, topic: &str, handle: &ReceiptHandle) -> Result<String, pb::Status> {
        if let Ok(a) = self.backend.master_addr_by_name(&handle.broker_name) {
            return Ok(a);
        }
        let route = self
            .backend
            .route(topic)
            .await
            .map_err(|e| err_status(&e))?;
        self.backend
            .master_addr(&route, &handle.broker_name)
            .map_err(|e| err_status(&e))
    }

    async fn ack_one(&self, group: &str, topic: &str, receipt: &str) -> Result<(), pb::Status> {
        let handle = ReceiptHandle::parse(receipt).map_err(|e| err_status(&e))?;
        let addr = self.broker_of(topic, &handle).await?;
        let h = AckMessageRequestHeader {
            consumer_group: group.to_owned(),
            topic: topic.to_owned(),
            queue_id: handle.queue_id,
            extra_info: receipt.to_owned(),
            offset: handle.queue_offset,
            rpc: RpcFields {
                broker_name: Some(handle.broker_name.clone()),
                ..Default::default()
            },
        };
        self.backend
            .ack(&addr, &h)
            .await
            .map_err(|e| err_status(&e))
    }

    /// Sends the message to the group's DLQ via the remoting send-back
    /// (delay level -1), then acknowledges it.
    async fn forward_to_dlq(
        &self,
        group: &str,
        topic: &str,
        receipt: &str,
    ) -> Result<(), pb::Status> {
        let handle = ReceiptHandle::parse(receipt).map_err(|e| err_status(&e))?;
        let addr = self.broker_of(topic, &handle).await?;
        let real = handle.real_topic(topic, group);
        let h = PullMessageRequestHeader {
            consumer_group: group.to_owned(),
            topic: real.clone(),
            queue_id: handle.queue_id,
            queue_offset: handle.queue_offset,
            max_msg_nums: 1,
            sys_flag: PULL_FLAG_SUBSCRIPTION,
            commit_offset: 0,
            suspend_timeout_millis: 0,
            subscription: Some("*".to_owned()),
            sub_version: 0,
            expression_type: Some("TAG".to_owned()),
            ..Default::default()
        };
        let pulled = self
            .backend
            .instance()
            .pull(
                &addr,
                &handle.broker_name,
                apogee_protocol::code::request_code::PULL_MESSAGE,
                &h,
                Duration::from_secs(3),
            )
            .await
            .map_err(|e| err_status(&e.into()))?;
        let Some(m) = pulled
            .messages
            .into_iter()
            .find(|m| m.queue_offset == handle.queue_offset)
        else {
            return Err(status(
                Code::MessageNotFound,
                "the message is no longer stored",
            ));
        };
        self.backend
            .instance()
            .send_msg_back(&addr, group, &m, -1, 16)
            .await
            .map_err(|e| err_status(&e.into()))?;
        self.ack_one(group, topic, receipt).await
    }
}

/// Makes a popped message visible again at once (the client that asked for
/// it is gone); it comes back through the retry topic.
pub(crate) async fn give_back(
    backend: &Backend,
    addr: &str,
    group: &str,
    topic: &str,
    receipt: &str,
) {
    let Ok(handle) = ReceiptHandle::parse(receipt) else {
        return;
    };
    let h = ChangeInvisibleTimeRequestHeader {
        consumer_group: group.to_owned(),
        topic: topic.to_owned(),
        queue_id: handle.queue_id,
        extra_info: receipt.to_owned(),
        offset: handle.queue_offset,
        invisible_time: 0,
        rpc: RpcFields {
            broker_name: Some(handle.broker_name.clone()),
            ..Default::default()
        },
    };
    match backend.change_invisible(addr, &h).await {
        Ok(_) => tracing::debug!(group, topic, "client gone: popped message handed back"),
        Err(e) => {
            tracing::debug!(group, topic, error = %e, "handing back a popped message failed; it returns after its invisible time")
        }
    }
}
