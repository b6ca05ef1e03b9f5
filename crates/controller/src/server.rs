//! A running controller: the Raft node, its peer listener (Raft RPCs), its
//! broker listener (`listenPort`, Apache's controller request codes), the
//! heartbeat table and the leader's scan for masters that went silent.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_protocol::RemotingCommand;
use apogee_remoting::{
    processor_fn, ClientConfig, ProcessorRegistry, RemotingClient, RemotingServer, ServerConfig,
};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::config::ControllerConfig;
use crate::error::ControllerError;
use crate::raft::{peer_code, LogStore, Network, Raft, StateMachine};
use crate::state::{choose_master, BrokerSet, Command, ControllerState, Outcome};

/// What the last heartbeat of a replica said.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub at: Instant,
    pub timeout: Duration,
    pub epoch: i64,
    pub max_offset: u64,
    pub address: String,
}

/// Why a proposal did not reach the log.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this controller is not the leader (leader: {0})")]
    NotLeader(String),
    #[error("the controller group cannot commit: {0}")]
    Raft(String),
}

pub(crate) struct Shared {
    pub config: ControllerConfig,
    pub self_id: u64,
    pub raft: Raft,
    pub sm: StateMachine,
    pub heartbeats: Mutex<HashMap<(String, u64), Heartbeat>>,
    pub started: Instant,
    /// (term, first seen leading in it): a new leader's heartbeat table is
    /// empty or stale while the old master may still hold its lease.
    pub leader_since: Mutex<Option<(u64, Instant)>>,
}

impl Shared {
    pub fn state<T>(&self, f: impl FnOnce(&ControllerState) -> T) -> T {
        self.sm.read(f)
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.self_id)
    }

    pub fn leader(&self) -> Option<(u64, String)> {
        let id = self.raft.metrics().borrow().current_leader?;
        let peer = self.config.peers.get(id as usize)?;
        Some((id, format!("{}-{}", peer.name, peer.addr)))
    }

    /// Whether `id` of `broker_name` heartbeats. Right after this controller
    /// started, a replica it has not heard from yet is given the benefit of
    /// the doubt for one timeout. Right after it became leader, every
    /// replica is, for its heartbeat timeout: this controller's table may be
    /// stale, and a master keeps its lease (half that timeout) from its last
    /// confirmation by the previous leader.
    pub fn alive(&self, broker_name: &str, id: u64) -> bool {
        let last = self
            .heartbeats
            .lock()
            .get(&(broker_name.to_string(), id))
            .map(|hb| (hb.at, hb.timeout));
        let timeout = last.map_or(self.config.default_broker_heartbeat_timeout, |(_, t)| t);
        if self
            .leading_since()
            .is_some_and(|at| at.elapsed() < timeout)
        {
            return true;
        }
        match last {
            Some((at, timeout)) => at.elapsed() < timeout,
            None => self.started.elapsed() < self.config.default_broker_heartbeat_timeout,
        }
    }

    /// When this controller was first seen leading in the current term
    /// (None: not leader). Noted by the scanner every tick, so it is at
    /// most one tick after the real takeover: the grace only grows.
    pub fn leading_since(&self) -> Option<Instant> {
        let (leader, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        if leader != Some(self.self_id) {
            return None;
        }
        let mut ls = self.leader_since.lock();
        match *ls {
            Some((t, at)) if t == term => Some(at),
            _ => {
                let now = Instant::now();
                *ls = Some((term, now));
                Some(now)
            }
        }
    }

    pub fn offset(&self, broker_name: &str, id: u64) -> u64 {
        self.heartbeats
            .lock()
            .get(&(broker_name.to_string(), id))
            .map_or(0, |h| h.max_offset)
    }

    /// Commits `cmd` through Raft; Ok holds what applying it answered.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ProposeError> {
        // Without a quorum a write never commits: give up rather than hang
        // the broker's request.
        let res = tokio::time::timeout(Duration::from_secs(3), self.raft.client_write(cmd))
            .await
            .map_err(|_| ProposeError::Raft("no quorum committed the change within 3 s".into()))?;
        match res {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let leader = f
                    .leader_node
                    .map(|n| n.addr)
                    .unwrap_or_else(|| "unknown".into());
                Err(ProposeError::NotLeader(leader))
            }
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// Confirms leadership with a quorum before a read, so that a deposed
    /// leader cut off from the others never answers from a stale state.
    pub async fn linearizable(&self) -> Result<(), ProposeError> {
        match tokio::time::timeout(Duration::from_secs(3), self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(_))) => Err(ProposeError::NotLeader(
                self.leader()
                    .map(|l| l.1)
                    .unwrap_or_else(|| "unknown".into()),
            )),
            Ok(Err(e)) => Err(ProposeError::Raft(e.to_string())),
            Err(_) => Err(ProposeError::Raft(
                "no quorum confirmed this leader within 3 s".into(),
            )),
        }
    }

    /// Elects a master for `set` if it has none or its master is silent.
    /// `prefer` is a replica that asked (or was designated).
    pub async fn elect(
        &self,
        set: &BrokerSet,
        prefer: Option<u64>,
    ) -> Result<Option<Outcome>, ProposeError> {
        let name = set.broker_name.as_str();
        let new = choose_master(
            set,
            |id| self.alive(name, id),
            |id| self.offset(name, id),
            self.config.enable_elect_unclean_master,
            prefer,
        );
        if new.is_none() && set.master.is_none() {
            return Ok(None);
        }
        if new.is_none() {
            tracing::warn!(
                broker = name,
                old_master = ?set.master,
                sync_state_set = ?set.sync_state_set,
                unclean = self.config.enable_elect_unclean_master,
                "cannot elect a new master: no live replica in the SyncStateSet; the set has no master until one returns"
            );
        }
        let out = self
            .propose(Command::Elect {
                broker_name: name.to_string(),
                expected_master_epoch: set.master_epoch,
                new_master: new,
            })
            .await?;
        if let Ok(s) = &out {
            tracing::info!(
                broker = name,
                master = ?s.master,
                address = ?s.master_address(),
                epoch = s.master_epoch,
                "master elected"
            );
        }
        Ok(Some(out))
    }
}

/// A running controller.
pub struct ControllerServer {
    shared: Arc<Shared>,
    /// The client API's own listener; `None` when embedded in another
    /// server's port ([`ControllerServer::start_embedded`]).
    server: Option<RemotingServer>,
    peer_server: RemotingServer,
    tasks: Vec<JoinHandle<()>>,
}

impl ControllerServer {
    /// Starts a controller serving its client API on `listenPort`.
    pub async fn start(config: ControllerConfig) -> Result<ControllerServer, ControllerError> {
        Self::start_inner(config, None).await
    }

    /// Starts a controller whose client API is registered on `registry`,
    /// served by another server (the NameServer's port, as with Apache's
    /// `enableControllerInNamesrv`); peers still talk on the peer port.
    pub async fn start_embedded(
        config: ControllerConfig,
        registry: &Arc<ProcessorRegistry>,
    ) -> Result<ControllerServer, ControllerError> {
        Self::start_inner(config, Some(registry)).await
    }

    async fn start_inner(
        config: ControllerConfig,
        host: Option<&Arc<ProcessorRegistry>>,
    ) -> Result<ControllerServer, ControllerError> {
        let Some(self_id) = config.self_index() else {
            return Err(ControllerError::config(
                "controllerDLegerSelfId",
                format!("'{}' is not in controllerDLegerPeers", config.self_id),
            ));
        };
        let bind_ip: IpAddr = config.bind_address.parse().map_err(|_| {
            ControllerError::config(
                "bindAddress",
                format!("'{}' is not an IP address", config.bind_address),
            )
        })?;
        let self_peer = &config.peers[self_id as usize];
        let peer_port: u16 = self_peer
            .addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| {
                ControllerError::config("controllerDLegerPeers", "bad port for this node")
            })?;

        let dir = config.store_path.clone();
        let (log, sm) = tokio::task::spawn_blocking(move || {
            let log = LogStore::open(&dir)?;
            let sm = StateMachine::open(&dir)?;
            Ok::<_, std::io::Error>((log, sm))
        })
        .await
        .map_err(|e| ControllerError::Start(e.to_string()))?
        .map_err(|e| ControllerError::Io {
            path: config.store_path.display().to_string(),
            source: e,
        })?;

        let min = config.election_timeout_min.as_millis() as u64;
        let raft_cfg = openraft::Config {
            cluster_name: config.group.clone(),
            election_timeout_min: min,
            election_timeout_max: min * 2,
            heartbeat_interval: (min / 4).max(50),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(2000),
            max_in_snapshot_log_to_keep: 500,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| ControllerError::Raft(e.to_string()))?;
        let net = Network::new(
            RemotingClient::new(ClientConfig::default()),
            Duration::from_millis(min.max(500)),
        );
        let raft = Raft::new(self_id, Arc::new(raft_cfg), net, log, sm.clone())
            .await
            .map_err(|e| ControllerError::Raft(e.to_string()))?;

        let shared = Arc::new(Shared {
            config: config.clone(),
            self_id,
            raft: raft.clone(),
            sm,
            heartbeats: Mutex::new(HashMap::new()),
            started: Instant::now(),
            leader_since: Mutex::new(None),
        });

        let peer_registry = ProcessorRegistry::new();
        register_peer_processors(&peer_registry, &raft);
        // GET_METADATA_INFO names the leader by its peer address (the one in
        // controllerDLegerPeers): clients that follow it, as Apache's
        // brokers and mqadmin do, find the same API there.
        crate::processor::register(&peer_registry, &shared);
        let peer_server = RemotingServer::bind(
            ServerConfig::new(SocketAddr::new(bind_ip, peer_port)),
            peer_registry,
        )
        .await
        .map_err(|e| {
            ControllerError::config(
                "controllerDLegerPeers",
                format!("cannot listen for peers on port {peer_port}: {e}"),
            )
        })?;

        let server = match host {
            Some(registry) => {
                crate::processor::register(registry, &shared);
                None
            }
            None => {
                let registry = ProcessorRegistry::new();
                crate::processor::register(&registry, &shared);
                match RemotingServer::bind(
                    ServerConfig::new(SocketAddr::new(bind_ip, config.listen_port)),
                    registry,
                )
                .await
                {
                    Ok(s) => Some(s),
                    Err(e) => {
                        peer_server.shutdown().await;
                        return Err(ControllerError::config(
                            "listenPort",
                            format!("cannot listen on {}: {e}", config.listen_port),
                        ));
                    }
                }
            }
        };

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ControllerError::Raft(e.to_string()))?;
        if !initialized {
            // Every member starts the group with the same membership; openraft
            // accepts this on each of them, and a vote settles the leader.
            let members: BTreeMap<u64, BasicNode> = config
                .peers
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u64, BasicNode::new(&p.addr)))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(error = %e, "raft initialize");
            }
        }

        let tasks = vec![
            spawn_scanner(Arc::clone(&shared)),
            spawn_quorum_watch(Arc::clone(&shared)),
        ];
        tracing::info!(
            addr = ?server.as_ref().map(RemotingServer::local_addr),
            peer = %peer_server.local_addr(),
            id = %config.self_id,
            group = %config.group,
            peers = %config.peers_string(),
            "controller started"
        );
        Ok(ControllerServer {
            shared,
            server,
            peer_server,
            tasks,
        })
    }

    /// Where the client API listens; for an embedded controller, its peer
    /// port (the host server's address is the one clients use).
    pub fn local_addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .map_or_else(|| self.peer_server.local_addr(), RemotingServer::local_addr)
    }

    pub fn is_leader(&self) -> bool {
        self.shared.is_leader()
    }

    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(server) = self.server {
            server.shutdown().await;
        }
        if let Err(e) = self.shared.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.peer_server.shutdown().await;
        tracing::info!("controller stopped");
    }
}

fn register_peer_processors(registry: &Arc<ProcessorRegistry>, raft: &Raft) {
    macro_rules! rpc {
        ($code:expr, $method:ident) => {{
            let raft = raft.clone();
            registry.register(
                $code,
                processor_fn(move |_ctx, req: RemotingCommand| {
                    let raft = raft.clone();
                    async move {
                        let body = req.body.as_deref().unwrap_or_default();
                        let rpc = match serde_json::from_slice(body) {
                            Ok(r) => r,
                            Err(e) => {
                                return Ok(Some(RemotingCommand::response(
                                    apogee_protocol::code::response_code::SYSTEM_ERROR,
                                    Some(format!("bad Raft request: {e}")),
                                )))
                            }
                        };
                        let res = raft.$method(rpc).await;
                        let out = serde_json::to_vec(&res)?;
                        Ok(Some(RemotingCommand::response(0, None).with_body(out)))
                    }
                }),
            );
        }};
    }
    rpc!(peer_code::APPEND_ENTRIES, append_entries);
    rpc!(peer_code::VOTE, vote);
    rpc!(peer_code::INSTALL_SNAPSHOT, install_snapshot);
}

/// On the leader: every `scanNotActiveBrokerInterval`, elects a new master
/// for each broker set whose master stopped heartbeating (or that has none
/// and a replica able to take over).
fn spawn_scanner(shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = shared.config.scan_not_active_broker_interval;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if shared.leading_since().is_none() {
                continue;
            }
            let sets: Vec<BrokerSet> = shared.state(|s| s.sets.values().cloned().collect());
            for set in sets {
                let silent = match set.master {
                    Some(m) => !shared.alive(&set.broker_name, m),
                    None => true,
                };
                if !silent || set.replicas.is_empty() {
                    continue;
                }
                if let Some(m) = set.master {
                    tracing::warn!(broker = %set.broker_name, master = m, "master stopped heartbeating");
                }
                if let Err(e) = shared.elect(&set, None).await {
                    tracing::warn!(broker = %set.broker_name, error = %e, "election failed");
                }
            }
        }
    })
}

/// Says clearly, every few seconds, when the group has no leader: then no
/// broker can register, be elected or change its SyncStateSet.
fn spawn_quorum_watch(shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let grace = shared.config.election_timeout_min * 4;
        let mut leaderless_since: Option<Instant> = None;
        let mut last_log: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            // A leader cut off from the others keeps calling itself leader
            // until it hears of a newer term: ask a quorum.
            let has_leader = if shared.is_leader() {
                shared.linearizable().await.is_ok()
            } else {
                shared.leader().is_some()
            };
            if has_leader {
                if leaderless_since.take().is_some() && last_log.is_some() {
                    tracing::info!(leader = ?shared.leader(), "controller group has a leader again");
                }
                last_log = None;
                continue;
            }
            let since = *leaderless_since.get_or_insert_with(Instant::now);
            if since.elapsed() > grace
                && last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5))
            {
                tracing::error!(
                    peers = %shared.config.peers_string(),
                    for_ms = since.elapsed().as_millis() as u64,
                    "controller group has no leader: no quorum of peers reachable; elections and registrations are impossible until a majority is back"
                );
                last_log = Some(Instant::now());
            }
        }
    })
}
