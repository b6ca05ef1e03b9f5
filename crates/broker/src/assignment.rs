//! Server-side rebalancing (RocketMQ 5): QUERY_ASSIGNMENT answers a
//! consumer that leaves rebalancing to the broker with its share of a
//! topic's queues and whether to PULL or POP them; SET_MESSAGE_REQUEST_MODE
//! chooses that mode per (topic, group), kept in
//! `config/messageRequestMode.json` (Java's file and layout).
//!
//! A topic's queues span every broker that serves it, so they come from the
//! NameServer's route (cached a few seconds), as Java's broker takes them;
//! a broker with no NameServer answers from its own topic table. The group's
//! members are the clients heartbeating to this broker, and the split uses
//! the clients' own strategies (`apogee_protocol::allocate`), so a broker
//! and its clients agree on which queue is whose.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_protocol::allocate::{AllocateAveragely, AllocateAveragelyByCircle, AllocateStrategy};
use apogee_protocol::body::{
    MessageModel, MessageQueue, MessageQueueAssignment, MessageRequestMode,
    MessageRequestModeWrapper, QueryAssignmentRequestBody, QueryAssignmentResponseBody,
    SetMessageRequestModeRequestBody, TopicRouteData, PERM_READ,
};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::GetRouteInfoRequestHeader;
use apogee_protocol::topic::RETRY_GROUP_TOPIC_PREFIX;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ClientConfig, ProcessorRegistry, RemotingClient};
use apogee_store::vfs::VfsRef;
use apogee_throttle::{throttled_warn, LogThrottle};
use parking_lot::{Mutex, RwLock};

use crate::config::BrokerConfig;
use crate::context::BrokerContext;
use crate::error::{BrokerError, Result};
use crate::persist::{self, PersistStats, TableWriter};
use crate::processor::{bad_body, error_response, success};

const FILE_NAME: &str = "messageRequestMode.json";

/// How long a topic's queues from the NameServer are reused.
const ROUTE_TTL: Duration = Duration::from_secs(3);
/// Topics whose queues are cached at most; past it the cache starts over
/// (a client-controlled key set must not grow without bound).
const ROUTE_CACHE_MAX: usize = 4096;
/// One NameServer call's deadline.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(3);

/// A topic's queues and when they were fetched.
type CachedQueues = (Instant, Arc<Vec<MessageQueue>>);

type ModeMap = BTreeMap<String, BTreeMap<String, SetMessageRequestModeRequestBody>>;

/// The (topic, group) -> request mode table, saved in the background.
pub struct RequestModes {
    table: Arc<RwLock<ModeMap>>,
    writer: TableWriter,
}

impl RequestModes {
    /// Loads `config/messageRequestMode.json` (or its `.bak`) if present.
    pub fn with_vfs(config: &BrokerConfig, vfs: VfsRef) -> Result<Self> {
        let path = persist::config_path(&config.store.store_path_root_dir, FILE_NAME);
        let mut map = ModeMap::new();
        if let Some(data) = persist::read_optional(&*vfs, &path)? {
            let w = MessageRequestModeWrapper::decode(&data).map_err(|e| BrokerError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            map = w.message_request_mode_map;
        }
        let table = Arc::new(RwLock::new(map));
        let snap = Arc::clone(&table);
        let writer = TableWriter::start(
            FILE_NAME,
            path,
            vfs,
            Box::new(move || {
                MessageRequestModeWrapper {
                    message_request_mode_map: snap.read().clone(),
                }
                .encode()
            }),
        )?;
        Ok(RequestModes { table, writer })
    }

    /// The mode chosen for (topic, group), if any.
    pub fn get(&self, topic: &str, group: &str) -> Option<SetMessageRequestModeRequestBody> {
        self.table.read().get(topic)?.get(group).cloned()
    }

    /// Records a choice; saved soon (see [`RequestModes::persist`]).
    pub fn set(&self, body: SetMessageRequestModeRequestBody) {
        self.table
            .write()
            .entry(body.topic.clone())
            .or_default()
            .insert(body.consumer_group.clone(), body);
        self.writer.mark_dirty();
    }

    /// Saves the table now and waits for it (blocking file I/O).
    pub fn persist(&self) -> Result<()> {
        self.writer.flush()
    }

    pub fn persist_stats(&self) -> PersistStats {
        self.writer.stats()
    }
}

/// A topic's readable queues across brokers, from the NameServer.
pub struct RouteQueues {
    client: RemotingClient,
    addrs: Vec<String>,
    cache: Mutex<HashMap<String, CachedQueues>>,
}

/// Why a topic's queues are unknown.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("topic {0} does not exist")]
    NoTopic(String),
    #[error("no NameServer answered for topic {topic}: {reason}")]
    Unreachable { topic: String, reason: String },
}

impl RouteQueues {
    pub fn new(addrs: Vec<String>) -> Self {
        RouteQueues {
            client: RemotingClient::new(ClientConfig::default()),
            addrs,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The topic's readable queues, sorted (Java's `MessageQueue` order).
    async fn get(
        &self,
        ctx: &BrokerContext,
        topic: &str,
    ) -> std::result::Result<Arc<Vec<MessageQueue>>, RouteError> {
        if self.addrs.is_empty() {
            return local_queues(ctx, topic)
                .map(Arc::new)
                .ok_or_else(|| RouteError::NoTopic(topic.to_string()));
        }
        let stale = {
            let cache = self.cache.lock();
            match cache.get(topic) {
                Some((at, q)) if at.elapsed() < ROUTE_TTL => return Ok(Arc::clone(q)),
                Some((_, q)) => Some(Arc::clone(q)),
                None => None,
            }
        };
        match self.fetch(topic).await {
            Ok(queues) => {
                let queues = Arc::new(queues);
                let mut cache = self.cache.lock();
                if cache.len() >= ROUTE_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(topic.to_string(), (Instant::now(), Arc::clone(&queues)));
                Ok(queues)
            }
            // A NameServer outage: the last known queues are still the best answer.
            Err(e @ RouteError::Unreachable { .. }) => stale.ok_or(e),
            Err(e) => Err(e),
        }
    }

    async fn fetch(&self, topic: &str) -> std::result::Result<Vec<MessageQueue>, RouteError> {
        let header = GetRouteInfoRequestHeader {
            topic: topic.to_string(),
            ..Default::default()
        };
        let mut reason = String::new();
        for addr in &self.addrs {
            let req =
                RemotingCommand::request(request_code::GET_ROUTEINFO_BY_TOPIC).with_header(&header);
            match self.client.invoke(addr, req, ROUTE_TIMEOUT).await {
                Ok(resp) if resp.code == response_code::SUCCESS => {
                    let body = resp.body.as_deref().unwrap_or_default();
                    match TopicRouteData::decode(body) {
                        Ok(route) => return Ok(route_queues(topic, &route)),
                        Err(e) => reason = format!("{addr}: bad route body: {e}"),
                    }
                }
                Ok(resp) if resp.code == response_code::TOPIC_NOT_EXIST => {
                    return Err(RouteError::NoTopic(topic.to_string()))
                }
                Ok(resp) => reason = format!("{addr}: code {} {:?}", resp.code, resp.remark),
                Err(e) => reason = format!("{addr}: {e}"),
            }
        }
        Err(RouteError::Unreachable {
            topic: topic.to_string(),
            reason,
        })
    }

    pub async fn close(&self) {
        self.client.close().await;
    }
}

/// Java's `topicRouteData2TopicSubscribeInfo`: every readable queue.
fn route_queues(topic: &str, route: &TopicRouteData) -> Vec<MessageQueue> {
    let mut out: Vec<MessageQueue> = route
        .queue_datas
        .iter()
        .filter(|q| q.perm & PERM_READ != 0)
        .flat_map(|q| {
            (0..q.read_queue_nums.max(0))
                .map(|i| MessageQueue::new(topic, q.broker_name.clone(), i))
        })
        .collect();
    out.sort();
    out
}

/// This broker's readable queues of `topic` (no NameServer configured).
fn local_queues(ctx: &BrokerContext, topic: &str) -> Option<Vec<MessageQueue>> {
    let tc = ctx.topics.get(topic)?;
    if tc.perm & PERM_READ == 0 {
        return Some(Vec::new());
    }
    Some(
        (0..tc.read_queue_nums.max(0))
            .map(|i| MessageQueue::new(topic, ctx.config.broker_name.clone(), i))
            .collect(),
    )
}

pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    let c = Arc::clone(ctx);
    registry.register(
        request_code::QUERY_ASSIGNMENT,
        processor_fn(move |_rc, req| {
            let ctx = Arc::clone(&c);
            async move { Ok(Some(query_assignment(&ctx, &req).await)) }
        }),
    );
    let c = Arc::clone(ctx);
    registry.register(
        request_code::SET_MESSAGE_REQUEST_MODE,
        processor_fn(move |_rc, req| {
            let ctx = Arc::clone(&c);
            async move { Ok(Some(set_request_mode(&ctx, &req).await)) }
        }),
    );
}

static NO_ASSIGNMENT: LogThrottle = LogThrottle::new("no queue assignment");

async fn query_assignment(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let body = match req.body.as_deref() {
        Some(b) => match QueryAssignmentRequestBody::decode(b) {
            Ok(body) => body,
            Err(e) => return bad_body(req.code, "QueryAssignmentRequestBody", Some(&e)),
        },
        None => return bad_body(req.code, "QueryAssignmentRequestBody", None),
    };
    let mode = ctx
        .request_modes
        .get(&body.topic, &body.consumer_group)
        .unwrap_or_else(|| default_mode(&ctx.config, &body));
    let assigned = match ctx.route_queues.get(ctx, &body.topic).await {
        Ok(all) => assign(ctx, &body, &mode, &all),
        Err(e) => {
            // Retry topics have no route until their first retry: expected.
            if !body.topic.starts_with(RETRY_GROUP_TOPIC_PREFIX) {
                throttled_warn!(NO_ASSIGNMENT, (), group = %body.consumer_group, error = %e, "no queue assignment");
            }
            None
        }
    };
    let answer = QueryAssignmentResponseBody {
        message_queue_assignments: assigned.map(|queues| {
            queues
                .into_iter()
                .map(|message_queue| MessageQueueAssignment {
                    message_queue,
                    mode: mode.mode,
                    attachments: BTreeMap::new(),
                })
                .collect()
        }),
    };
    success().with_body(answer.encode())
}

/// The mode when SET_MESSAGE_REQUEST_MODE chose none: the broker's
/// default, except that retry topics are always pulled.
fn default_mode(
    config: &BrokerConfig,
    q: &QueryAssignmentRequestBody,
) -> SetMessageRequestModeRequestBody {
    let mode = if q.topic.starts_with(RETRY_GROUP_TOPIC_PREFIX) {
        MessageRequestMode::Pull
    } else {
        config.default_message_request_mode
    };
    SetMessageRequestModeRequestBody {
        topic: q.topic.clone(),
        consumer_group: q.consumer_group.clone(),
        mode,
        pop_share_queue_num: if mode == MessageRequestMode::Pop {
            config.default_pop_share_queue_num
        } else {
            0
        },
    }
}

/// The caller's share of `all` (sorted), or `None` when the broker cannot
/// decide (the client then keeps what it has), as Java's `doLoadBalance`.
fn assign(
    ctx: &BrokerContext,
    q: &QueryAssignmentRequestBody,
    mode: &SetMessageRequestModeRequestBody,
    all: &[MessageQueue],
) -> Option<BTreeSet<MessageQueue>> {
    if q.message_model == MessageModel::Broadcasting || !ctx.config.server_load_balancer_enabled {
        return Some(all.iter().cloned().collect());
    }
    let clients = ctx.consumers.client_ids(&q.consumer_group);
    if clients.is_empty() {
        throttled_warn!(NO_ASSIGNMENT, (), group = %q.consumer_group, topic = %q.topic, "no queue assignment: the group has no live consumer on this broker");
        return None;
    }
    let strategy: &dyn AllocateStrategy = match q.strategy_name.as_str() {
        "AVG" => &AllocateAveragely,
        "AVG_BY_CIRCLE" => &AllocateAveragelyByCircle,
        other => {
            throttled_warn!(NO_ASSIGNMENT, (), group = %q.consumer_group, strategy = %other, "no queue assignment: unsupported allocation strategy (AVG and AVG_BY_CIRCLE are)");
            return None;
        }
    };
    Some(split(
        strategy,
        mode,
        &q.consumer_group,
        &q.client_id,
        all,
        &clients,
    ))
}

/// Java's split: PULL takes the strategy's share; POP with no sharing
/// limit pops every queue (queue id -1 per broker); POP with sharing N also
/// takes the shares of the N clients after it (or one queue each when
/// there are more clients than queues).
fn split(
    strategy: &dyn AllocateStrategy,
    mode: &SetMessageRequestModeRequestBody,
    group: &str,
    client_id: &str,
    all: &[MessageQueue],
    clients: &[String],
) -> BTreeSet<MessageQueue> {
    if all.is_empty() {
        return BTreeSet::new();
    }
    if mode.mode != MessageRequestMode::Pop {
        return strategy
            .allocate(group, client_id, all, clients)
            .into_iter()
            .collect();
    }
    if mode.pop_share_queue_num <= 0 {
        return all
            .iter()
            .map(|mq| MessageQueue::new(mq.topic.clone(), mq.broker_name.clone(), -1))
            .collect();
    }
    let Some(index) = clients.iter().position(|c| c == client_id) else {
        return BTreeSet::new();
    };
    if clients.len() > all.len() {
        return BTreeSet::from([all[index % all.len()].clone()]);
    }
    let mut out: BTreeSet<MessageQueue> = strategy
        .allocate(group, client_id, all, clients)
        .into_iter()
        .collect();
    let share = usize::try_from(mode.pop_share_queue_num)
        .unwrap_or(0)
        .min(clients.len());
    for i in 1..=share {
        let next = &clients[(index + i) % clients.len()];
        out.extend(strategy.allocate(group, next, all, clients));
    }
    out
}

async fn set_request_mode(ctx: &Arc<BrokerContext>, req: &RemotingCommand) -> RemotingCommand {
    let body = match req.body.as_deref() {
        Some(b) => match SetMessageRequestModeRequestBody::decode(b) {
            Ok(body) => body,
            Err(e) => return bad_body(req.code, "SetMessageRequestModeRequestBody", Some(&e)),
        },
        None => return bad_body(req.code, "SetMessageRequestModeRequestBody", None),
    };
    if body.topic.starts_with(RETRY_GROUP_TOPIC_PREFIX) {
        return error_response(
            response_code::NO_PERMISSION,
            "retry topic is not allowed to set mode",
        );
    }
    if body.topic.is_empty() || body.consumer_group.is_empty() {
        return error_response(
            response_code::SYSTEM_ERROR,
            "SET_MESSAGE_REQUEST_MODE needs a topic and a consumerGroup",
        );
    }
    tracing::info!(topic = %body.topic, group = %body.consumer_group, mode = body.mode.java_name(), pop_share_queue_num = body.pop_share_queue_num, "message request mode set");
    ctx.request_modes.set(body);
    // Answered once the choice is on disk, as Java persists before replying.
    let c = Arc::clone(ctx);
    match tokio::task::spawn_blocking(move || c.request_modes.persist()).await {
        Ok(Ok(())) => success(),
        Ok(Err(e)) => error_response(
            response_code::SYSTEM_ERROR,
            format!("mode set but not saved yet (retried in the background): {e}"),
        ),
        Err(e) => error_response(response_code::SYSTEM_ERROR, format!("saving failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(brokers: &[&str], n: i32) -> Vec<MessageQueue> {
        let mut v: Vec<MessageQueue> = brokers
            .iter()
            .flat_map(|b| (0..n).map(move |i| MessageQueue::new("t", *b, i)))
            .collect();
        v.sort();
        v
    }

    fn clients(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    fn mode(mode: MessageRequestMode, share: i32) -> SetMessageRequestModeRequestBody {
        SetMessageRequestModeRequestBody {
            topic: "t".into(),
            consumer_group: "g".into(),
            mode,
            pop_share_queue_num: share,
        }
    }

    #[test]
    fn pull_partitions_the_queues() {
        let all = queues(&["a", "b"], 4);
        let cs = clients(3);
        let mut seen = BTreeSet::new();
        for c in &cs {
            for q in split(
                &AllocateAveragely,
                &mode(MessageRequestMode::Pull, 0),
                "g",
                c,
                &all,
                &cs,
            ) {
                assert!(seen.insert(q), "a queue given twice");
            }
        }
        assert_eq!(seen.len(), all.len());
    }

    #[test]
    fn pop_without_sharing_limit_pops_every_broker() {
        let all = queues(&["a", "b"], 4);
        let got = split(
            &AllocateAveragely,
            &mode(MessageRequestMode::Pop, -1),
            "g",
            "c0",
            &all,
            &clients(2),
        );
        let want = BTreeSet::from([
            MessageQueue::new("t", "a", -1),
            MessageQueue::new("t", "b", -1),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn pop_sharing_adds_the_next_clients_shares() {
        let all = queues(&["a"], 4);
        let cs = clients(4);
        // Alone: one queue each; sharing 1: its own and the next client's.
        let own = split(
            &AllocateAveragely,
            &mode(MessageRequestMode::Pop, 0),
            "g",
            "c3",
            &all,
            &cs,
        );
        assert_eq!(
            own,
            BTreeSet::from([MessageQueue::new("t", "a", -1)]),
            "share 0 means any queue"
        );
        let got = split(
            &AllocateAveragely,
            &mode(MessageRequestMode::Pop, 1),
            "g",
            "c3",
            &all,
            &cs,
        );
        let want = BTreeSet::from([
            MessageQueue::new("t", "a", 3),
            MessageQueue::new("t", "a", 0),
        ]);
        assert_eq!(got, want);
        // A huge share is bounded by the group.
        let got = split(
            &AllocateAveragely,
            &mode(MessageRequestMode::Pop, i32::MAX),
            "g",
            "c0",
            &all,
            &cs,
        );
        assert_eq!(got.len(), 4);
        // More clients than queues: one queue each, round the ring.
        let got = split(
            &AllocateAveragely,
            &mode(MessageRequestMode::Pop, 1),
            "g",
            "c5",
            &all,
            &clients(6),
        );
        assert_eq!(got, BTreeSet::from([MessageQueue::new("t", "a", 1)]));
        // Not a member: nothing.
        assert!(split(
            &AllocateAveragely,
            &mode(MessageRequestMode::Pop, 1),
            "g",
            "zz",
            &all,
            &cs
        )
        .is_empty());
    }

    #[test]
    fn route_queues_skip_unreadable_brokers() {
        use apogee_protocol::body::QueueData;
        let route = TopicRouteData {
            queue_datas: vec![
                QueueData {
                    broker_name: "b".into(),
                    read_queue_nums: 2,
                    write_queue_nums: 2,
                    perm: 6,
                    topic_sys_flag: 0,
                },
                QueueData {
                    broker_name: "a".into(),
                    read_queue_nums: 3,
                    write_queue_nums: 3,
                    perm: 2,
                    topic_sys_flag: 0,
                },
            ],
            ..Default::default()
        };
        assert_eq!(route_queues("t", &route), queues(&["b"], 2));
    }
}
