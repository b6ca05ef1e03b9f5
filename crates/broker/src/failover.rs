//! Controller mode on the broker side (`enableControllerMode=true`): a
//! supervisor that gets a broker id from the controller group, registers,
//! heartbeats to every controller, and runs the broker in whatever role the
//! controller decides.
//!
//! A role change restarts the broker inside the process (same ports, same
//! store): the old role's listeners, HA links and writers are all gone
//! before the new role opens, so no request ever sees half of each. Safety
//! rules:
//! - a master starts fenced (sends refused), records its epoch's first
//!   CommitLog offset in the epoch file, and only then accepts writes;
//! - a master that cannot get its role confirmed by the controller leader
//!   (which answers only with a quorum behind it) for half of
//!   `controllerHeartBeatTimeoutMills` fences itself: the controller elects
//!   a successor only after the full timeout without heartbeats;
//! - a replica that follows a new master first compares epoch files with it
//!   (GET_BROKER_EPOCH_CACHE) and cuts any CommitLog tail past the point
//!   where their logs stop agreeing, then copies the master's epoch list.
//!
//! A master also keeps its SyncStateSet: a slave that has not caught up for
//! `haMaxTimeSlaveNotCatchup` is dropped, a slave that reached the master's
//! end is added (CONTROLLER_ALTER_SYNC_STATE_SET); the controller only
//! elects members of that set.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_protocol::code::{request_code as rq, response_code as rs};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};
use apogee_store::epoch::{common_end, truncate_commit_log, EpochEntry, EpochFile};
use apogee_throttle::{throttled_warn, LogThrottle};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{BrokerConfig, ControllerAck};
use crate::context::{mono_ms_of, BrokerContext};
use crate::controller::BrokerController;
use crate::error::{BrokerError, Result};

static NO_CONTROLLER: LogThrottle = LogThrottle::new("controller leader unreachable");
static SSS_FAILED: LogThrottle = LogThrottle::new("SyncStateSet change failed");

/// File in the store root holding the id the controller gave this replica
/// and the code that claimed it (Apache keeps the same pair).
const BROKER_ID_FILE: &str = "brokerIdentity";

/// Timeout of one request to a controller.
const CONTROLLER_RPC_TIMEOUT: Duration = Duration::from_secs(3);

/// What the controller says about this broker set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReplicaView {
    master_id: Option<u64>,
    master_addr: Option<String>,
    master_ha_addr: Option<String>,
    master_epoch: u32,
    sync_state_set: BTreeSet<u64>,
    sync_state_set_epoch: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SyncStateSetBody {
    #[serde(default)]
    sync_state_set: BTreeSet<u64>,
    #[serde(default)]
    sync_state_set_epoch: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EpochCacheBody {
    #[serde(default)]
    broker_id: i64,
    #[serde(default)]
    epoch_list: Vec<EpochJson>,
    #[serde(default)]
    max_offset: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EpochJson {
    epoch: u32,
    start_offset: u64,
}

/// Why talking to the controller group failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerCallError {
    #[error("no controller answered as leader ({0})")]
    NoLeader(String),
    #[error("the controller refused: code {code}: {remark}")]
    Refused { code: i32, remark: String },
    #[error("bad answer from the controller: {0}")]
    BadAnswer(String),
}

/// The role the broker runs in now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Master {
        epoch: u32,
    },
    /// Following `master` (its remoting address), or nobody yet.
    Slave {
        master: Option<String>,
    },
}

/// A master's lease on its role. A watchdog task checks it every 100 ms,
/// apart from the supervisor loop, so that slow or hanging controller calls
/// never stretch it.
struct Lease {
    base: Instant,
    /// Milliseconds after `base` when the last confirmation was asked for
    /// (the time the question left, not when the answer came); 0: never.
    confirmed_ms: AtomicU64,
    length: Duration,
    /// The running master's context; None while not master.
    master: parking_lot::Mutex<Option<Arc<BrokerContext>>>,
    logged: AtomicBool,
}

impl Lease {
    fn new(length: Duration) -> Lease {
        Lease {
            base: Instant::now(),
            confirmed_ms: AtomicU64::new(0),
            length,
            master: parking_lot::Mutex::new(None),
            logged: AtomicBool::new(false),
        }
    }

    fn confirm(&self, asked: Instant) {
        let ms = asked.saturating_duration_since(self.base).as_millis() as u64 + 1;
        self.confirmed_ms.fetch_max(ms, Ordering::AcqRel);
        if let Some(ctx) = self.master.lock().as_ref() {
            let until = mono_ms_of(asked) + self.length.as_millis() as u64;
            ctx.lease_until_ms.fetch_max(until, Ordering::AcqRel);
        }
    }

    fn lapsed(&self) -> bool {
        let ms = self.confirmed_ms.load(Ordering::Acquire);
        ms == 0 || self.base.elapsed().as_millis() as u64 > ms - 1 + self.length.as_millis() as u64
    }

    /// Fences the master if its lease lapsed; true when it did.
    fn enforce(&self) -> bool {
        let Some(ctx) = self.master.lock().clone() else {
            return false;
        };
        if !self.lapsed() {
            return false;
        }
        ctx.write_fenced.store(true, Ordering::Release);
        if !self.logged.swap(true, Ordering::AcqRel) {
            tracing::error!(
                lease_ms = self.length.as_millis() as u64,
                "master role not confirmed by the controller group in time; refusing writes until it is"
            );
        }
        true
    }
}

/// What the heartbeat task reports, kept current by the supervisor.
#[derive(Default)]
struct Beat {
    /// The master epoch while master, else -1.
    epoch: AtomicI64,
    /// The running broker, for its CommitLog end.
    running: parking_lot::Mutex<Option<Arc<BrokerContext>>>,
    last_max: AtomicI64,
}

/// BROKER_HEARTBEAT to every controller (each keeps its own liveness
/// table, so a new leader knows who is alive) every
/// `brokerHeartbeatInterval`, on a task of its own: a supervisor busy with a
/// restart or slow calls must not look dead to the controller.
fn spawn_heartbeats(
    base: BrokerConfig,
    broker_id: u64,
    controllers: Vec<String>,
    client: RemotingClient,
    beat: Arc<Beat>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = base.broker_heartbeat_interval;
        let timeout = every.max(Duration::from_millis(500));
        loop {
            let running = beat.running.lock().clone();
            if let Some(ctx) = running {
                beat.last_max
                    .store(ctx.store.commit_log_max_offset().max(0), Ordering::Release);
            }
            let max = beat.last_max.load(Ordering::Acquire);
            let mut req = RemotingCommand::request(rq::BROKER_HEARTBEAT);
            req.set_ext("clusterName", &base.broker_cluster_name);
            req.set_ext("brokerAddr", base.broker_addr());
            req.set_ext("brokerName", &base.broker_name);
            req.set_ext("brokerId", broker_id.to_string());
            req.set_ext("epoch", beat.epoch.load(Ordering::Acquire).to_string());
            req.set_ext("maxOffset", max.to_string());
            req.set_ext("confirmOffset", max.to_string());
            req.set_ext(
                "heartbeatTimeoutMills",
                base.controller_heart_beat_timeout.as_millis().to_string(),
            );
            req.set_ext("electionPriority", "0");
            let sends = controllers.iter().map(|addr| {
                let (req, client) = (req.clone(), client.clone());
                async move {
                    let _ = client.invoke(addr, req, timeout).await;
                }
            });
            futures::future::join_all(sends).await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    })
}

/// A broker in controller mode.
pub struct ControllerModeBroker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    watchdog: JoinHandle<()>,
    heartbeats: JoinHandle<()>,
    addr: String,
}

impl ControllerModeBroker {
    /// Starts the broker (first as a slave that follows nobody, so reads
    /// work even before the controller answers) and the supervisor.
    pub async fn start(config: BrokerConfig) -> Result<ControllerModeBroker> {
        config.check_controller_mode()?;
        let client = RemotingClient::new(ClientConfig::default());
        // Half the controller's timeout: it elects a successor only after
        // the full timeout without heartbeats.
        let lease = Arc::new(Lease::new(config.controller_heart_beat_timeout / 2));
        let beat = Arc::new(Beat {
            epoch: AtomicI64::new(-1),
            ..Beat::default()
        });
        let mut sup = Supervisor {
            beat: Arc::clone(&beat),
            lease: Arc::clone(&lease),
            controllers: config.controller_addrs(),
            leader_hint: 0,
            client,
            broker_id: 0,
            base: config,
            running: None,
            role: Role::Slave { master: None },
            caught_up: HashMap::new(),
            prev_max: 0,
            grow_barrier: None,
            my_epoch: None,
        };
        sup.broker_id = sup.ensure_broker_id().await?;
        sup.start_as(Role::Slave { master: None }, None, Instant::now())
            .await?;
        let addr = sup.base.broker_addr();
        let (stop, stop_rx) = watch::channel(false);
        let heartbeats = spawn_heartbeats(
            sup.base.clone(),
            sup.broker_id,
            sup.controllers.clone(),
            sup.client.clone(),
            beat,
            stop_rx.clone(),
        );
        let mut wd_stop = stop_rx.clone();
        let task = tokio::spawn(sup.run(stop_rx));
        let watchdog = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = wd_stop.changed() => return,
                }
                lease.enforce();
            }
        });
        Ok(ControllerModeBroker {
            stop,
            task,
            watchdog,
            heartbeats,
            addr,
        })
    }

    /// `brokerIP1:listenPort`.
    pub fn broker_addr(&self) -> &str {
        &self.addr
    }

    /// Stops the supervisor and the broker it runs.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.watchdog.abort();
        self.heartbeats.abort();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "controller-mode supervisor failed");
        }
    }
}

struct Supervisor {
    base: BrokerConfig,
    broker_id: u64,
    client: RemotingClient,
    controllers: Vec<String>,
    leader_hint: usize,
    running: Option<BrokerController>,
    role: Role,
    lease: Arc<Lease>,
    beat: Arc<Beat>,
    /// Per slave id, when it last had everything this master had a tick before.
    caught_up: HashMap<u64, Instant>,
    prev_max: u64,
    /// Growing the SyncStateSet: sends wait for a slave since the CommitLog
    /// ended here, and a slave joins only once it holds this much (so it
    /// has everything acknowledged while this master acked alone).
    grow_barrier: Option<u64>,
    /// This master's epoch entry (epoch, start offset): a slave whose
    /// epoch cache does not end with it has not aligned its log yet.
    my_epoch: Option<(u32, u64)>,
}

impl Supervisor {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let every = self.base.broker_heartbeat_interval;
        let mut registered = false;
        loop {
            if !registered {
                let asked = Instant::now();
                match self.register().await {
                    Ok(view) => {
                        registered = true;
                        tracing::info!(id = self.broker_id, master = ?view.master_id, epoch = view.master_epoch, "registered with the controller");
                        self.follow(view, asked).await;
                    }
                    Err(ControllerCallError::Refused { code, remark })
                        if code == rs::CONTROLLER_INVALID_REPLICAS =>
                    {
                        // A saved id of a set that meanwhile got two other
                        // replicas: say so loudly, it will not pass by itself.
                        throttled_warn!(NO_CONTROLLER, (), reason = %remark,
                            "the controller refuses this replica (too many replicas in the broker set); serving reads only");
                    }
                    Err(e) => {
                        throttled_warn!(NO_CONTROLLER, (), error = %e, controllers = ?self.controllers,
                            "cannot register with the controller group; serving reads as a replica without a master");
                    }
                }
            } else {
                let asked = Instant::now();
                match self.replica_info().await {
                    Ok(view) => {
                        if view.master_id == Some(self.broker_id) {
                            self.lease.confirm(asked);
                        }
                        let before = self.role.clone();
                        self.follow(view.clone(), asked).await;
                        if matches!(self.role, Role::Master { .. }) {
                            self.set_ack_alone(&view);
                            self.keep_sync_state_set(&view).await;
                            if self.role != before {
                                // Just became master: its lease runs from
                                // before the restart, so renew it at once
                                // rather than a heartbeat interval later
                                // (it would lapse and refuse the first
                                // writes of the new term).
                                continue;
                            }
                        }
                    }
                    Err(e) => {
                        throttled_warn!(NO_CONTROLLER, (), error = %e, controllers = ?self.controllers,
                            "cannot reach the controller leader");
                        self.lease.enforce();
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => break,
            }
        }
        if let Some(b) = self.running.take() {
            b.shutdown().await;
        }
        self.client.close().await;
    }

    /// Acknowledge alone only while the controller's set is this master
    /// alone (read from a confirmed, linearizable answer).
    fn set_ack_alone(&self, view: &ReplicaView) {
        let alone = self.grow_barrier.is_none()
            && view.sync_state_set.len() <= 1
            && view.sync_state_set.iter().all(|&id| id == self.broker_id);
        if let Some(b) = &self.running {
            b.context()
                .sync_state_set_size
                .store(view.sync_state_set.len(), Ordering::SeqCst);
            let was = b.context().ack_alone.swap(alone, Ordering::SeqCst);
            if was != alone {
                tracing::info!(
                    alone,
                    sync_state_set = ?view.sync_state_set,
                    sync_state_set_epoch = view.sync_state_set_epoch,
                    "SYNC_MASTER acknowledges {}",
                    if alone { "alone (SyncStateSet of this master only)" } else { "after a slave holds the message" }
                );
            }
        }
    }

    fn ctx_fence(&self, fenced: bool) {
        if let Some(b) = &self.running {
            b.context().write_fenced.store(fenced, Ordering::Release);
        }
    }

    /// Acts on the controller's view: become master, follow another
    /// master, or stop being master.
    /// `asked`: when the view was asked for (a lease runs from there).
    async fn follow(&mut self, view: ReplicaView, asked: Instant) {
        match (view.master_id, &self.role) {
            (Some(m), Role::Master { epoch }) if m == self.broker_id => {
                if *epoch != view.master_epoch {
                    // Re-elected after a vacancy: a new epoch starts here.
                    self.restart(
                        Role::Master {
                            epoch: view.master_epoch,
                        },
                        None,
                        asked,
                    )
                    .await;
                } else if !self.lease.lapsed() {
                    if self.lease.logged.swap(false, Ordering::AcqRel) {
                        tracing::info!("master role confirmed again; accepting writes");
                    }
                    self.ctx_fence(false);
                }
            }
            (Some(m), _) if m == self.broker_id => {
                tracing::info!(
                    epoch = view.master_epoch,
                    "the controller elected this broker master"
                );
                self.restart(
                    Role::Master {
                        epoch: view.master_epoch,
                    },
                    None,
                    asked,
                )
                .await;
            }
            (Some(_), role) => {
                let same = matches!(role, Role::Slave { master: Some(a) } if Some(a) == view.master_addr.as_ref());
                if !same {
                    tracing::info!(master = ?view.master_addr, epoch = view.master_epoch, "following the master the controller names");
                    self.restart(
                        Role::Slave {
                            master: view.master_addr.clone(),
                        },
                        Some(&view),
                        asked,
                    )
                    .await;
                }
            }
            (None, Role::Master { .. }) => {
                tracing::warn!(
                    "the controller group lists no master for this broker set; stepping down"
                );
                self.restart(Role::Slave { master: None }, None, asked)
                    .await;
            }
            (None, Role::Slave { .. }) => {}
        }
    }

    async fn restart(&mut self, role: Role, view: Option<&ReplicaView>, asked: Instant) {
        self.ctx_fence(true);
        if let Err(e) = self.start_as(role.clone(), view, asked).await {
            tracing::error!(error = %e, ?role, "cannot restart the broker in its new role; retrying next round");
            // Serve reads meanwhile, following nobody; the next round
            // compares the controller's view with this role again.
            self.role = Role::Slave { master: None };
            if self.running.is_none() {
                if let Err(e) = self
                    .start_as(Role::Slave { master: None }, None, asked)
                    .await
                {
                    tracing::error!(error = %e, "cannot start the broker as a replica either");
                }
            }
        }
    }

    /// Stops the running broker (if any) and starts it in `role`.
    /// `asked`: when the view naming this role was asked for; a master's
    /// lease runs from then, not from the end of a slow restart.
    async fn start_as(
        &mut self,
        role: Role,
        view: Option<&ReplicaView>,
        asked: Instant,
    ) -> Result<()> {
        let mut local_max = None;
        *self.lease.master.lock() = None;
        *self.beat.running.lock() = None;
        self.beat.epoch.store(-1, Ordering::Release);
        if let Some(b) = self.running.take() {
            let ctx = Arc::clone(b.context());
            b.shutdown().await;
            local_max = Some(ctx.store.commit_log_max_offset().max(0) as u64);
        }
        let mut cfg = self.base.clone();
        match &role {
            Role::Master { epoch } => {
                cfg.broker_role = if self.base.controller_ack() != ControllerAck::Master {
                    "SYNC_MASTER".into()
                } else {
                    "ASYNC_MASTER".into()
                };
                cfg.broker_id = 0;
                cfg.state_version = i64::from(*epoch);
            }
            Role::Slave { master } => {
                cfg.broker_role = "SLAVE".into();
                cfg.broker_id = self.broker_id as i64;
                cfg.state_version = view.map_or(0, |v| i64::from(v.master_epoch));
                if let (Some(_), Some(v)) = (master, view) {
                    // The tail to compare is the store's end as the last
                    // instance left it; without one, start one first.
                    let Some(max) = local_max else {
                        return Err(BrokerError::Start(
                            "no running replica to compare epochs from".into(),
                        ));
                    };
                    self.align_with_master(v, max).await?;
                    cfg.ha_master_address = v.master_ha_addr.clone().or_else(|| {
                        // Apogee's default: the HA port follows the main port.
                        let a = v.master_addr.as_deref()?;
                        let (h, p) = a.rsplit_once(':')?;
                        let p: u16 = p.parse().ok()?;
                        Some(format!("{h}:{}", p.checked_add(1)?))
                    });
                }
            }
        }
        let broker = BrokerController::start(cfg).await?;
        let ctx = Arc::clone(broker.context());
        match &role {
            Role::Master { epoch } => {
                let start = ctx.store.commit_log_max_offset().max(0) as u64;
                let root = self.base.store.store_path_root_dir.clone();
                let epoch = *epoch;
                let recorded = tokio::task::spawn_blocking(move || {
                    let mut f = EpochFile::load(&root)?;
                    f.append(epoch, start)
                })
                .await;
                match recorded {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        broker.shutdown().await;
                        return Err(BrokerError::Start(format!(
                            "cannot record the master epoch: {e}"
                        )));
                    }
                    Err(e) => {
                        broker.shutdown().await;
                        return Err(BrokerError::Start(format!("epoch file task failed: {e}")));
                    }
                }
                *self.lease.master.lock() = Some(Arc::clone(&ctx));
                // A fence logged in an earlier term is not this term's.
                self.lease.logged.store(false, Ordering::Release);
                self.lease.confirm(asked);
                self.caught_up.clear();
                self.grow_barrier = None;
                self.my_epoch = Some((epoch, start));
                self.prev_max = start;
                ctx.write_fenced.store(false, Ordering::Release);
                tracing::info!(
                    epoch,
                    start_offset = start,
                    "broker is master; accepting writes"
                );
            }
            Role::Slave { master } => {
                if let Some(m) = master {
                    *ctx.master_addr.write() = Some(m.clone());
                }
                tracing::info!(master = ?master, id = self.broker_id, "broker is a slave");
            }
        }
        *self.beat.running.lock() = Some(Arc::clone(&ctx));
        if let Role::Master { epoch } = &role {
            self.beat.epoch.store(i64::from(*epoch), Ordering::Release);
        }
        self.running = Some(broker);
        self.role = role;
        Ok(())
    }

    /// Cuts what this replica holds past the point where its log and the
    /// new master's stop agreeing, then takes the master's epoch list.
    async fn align_with_master(&mut self, view: &ReplicaView, local_max: u64) -> Result<()> {
        let Some(master) = view.master_addr.clone() else {
            return Ok(());
        };
        let req = RemotingCommand::request(rq::GET_BROKER_EPOCH_CACHE);
        let resp = self
            .client
            .invoke(&master, req, CONTROLLER_RPC_TIMEOUT)
            .await
            .map_err(|e| {
                BrokerError::Start(format!(
                    "cannot read the master's epochs from {master}: {e}"
                ))
            })?;
        if resp.code != rs::SUCCESS {
            return Err(BrokerError::Start(format!(
                "the master {master} refused its epochs: {}",
                resp.remark.unwrap_or_default()
            )));
        }
        let body: EpochCacheBody = serde_json::from_slice(resp.body.as_deref().unwrap_or_default())
            .map_err(|e| BrokerError::Start(format!("bad epoch list from {master}: {e}")))?;
        if body.broker_id != 0 {
            // Not (yet) running as master there: its list is not the one to follow.
            return Err(BrokerError::Start(format!(
                "{master} does not run as master yet; will retry"
            )));
        }
        if body.epoch_list.last().map(|e| e.epoch) != Some(view.master_epoch) {
            // It has not recorded this epoch yet: aligning with an older
            // list would leave this slave unable to join the SyncStateSet.
            return Err(BrokerError::Start(format!(
                "{master} has not recorded epoch {} yet; will retry",
                view.master_epoch
            )));
        }
        let remote: Vec<EpochEntry> = body
            .epoch_list
            .iter()
            .map(|e| EpochEntry {
                epoch: e.epoch,
                start_offset: e.start_offset,
            })
            .collect();
        let remote_max = body.max_offset.max(0) as u64;
        let store_cfg = self.base.store.clone();
        let root = store_cfg.store_path_root_dir.clone();
        let done =
            tokio::task::spawn_blocking(move || -> std::result::Result<Option<u64>, String> {
                let mut local = EpochFile::load(&root).map_err(|e| e.to_string())?;
                let cut = match common_end(local.entries(), local_max, &remote, remote_max) {
                    Some(c) => c,
                    // No shared epoch: what precedes the master's first epoch is
                    // history from before controller mode, common to both.
                    None => remote
                        .first()
                        .map_or(local_max, |e| e.start_offset.min(local_max)),
                };
                let mut truncated = None;
                if cut < local_max {
                    truncate_commit_log(&store_cfg, cut).map_err(|e| e.to_string())?;
                    truncated = Some(cut);
                }
                local.replace(remote).map_err(|e| e.to_string())?;
                Ok(truncated)
            })
            .await
            .map_err(|e| BrokerError::Start(format!("truncation task failed: {e}")))?
            .map_err(BrokerError::Start)?;
        if let Some(cut) = done {
            tracing::warn!(
                from = local_max,
                to = cut,
                master = %master,
                "cut the CommitLog tail the new master never had (it was never acknowledged by this broker set)"
            );
        }
        Ok(())
    }

    /// Keeps the SyncStateSet: drops slaves that fell behind for
    /// `haMaxTimeSlaveNotCatchup`, adds slaves that reached this master's end.
    async fn keep_sync_state_set(&mut self, view: &ReplicaView) {
        let Some(broker) = &self.running else {
            return;
        };
        let my_max = broker.context().store.commit_log_max_offset().max(0) as u64;
        // Highest offset acked on a live HA link (none: nobody caught up).
        let ha_ack = broker
            .context()
            .ha_server()
            .map(|ha| {
                ha.slaves()
                    .iter()
                    .map(|s| s.ack_offset.max(0) as u64)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        let replicas = match self.replica_addresses().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the broker set's replicas");
                return;
            }
        };
        // All replicas at once, each bounded well inside the lease: this
        // runs on the loop that renews the lease, and a cut-off replica
        // (packets dropped, no refusal) would otherwise hold it for the
        // whole timeout per replica and make this master fence itself.
        let probe_timeout =
            (self.lease.length / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let me = self.broker_id;
        let client = &self.client;
        let answers =
            futures::future::join_all(replicas.into_iter().filter(|(id, _)| *id != me).map(
                |(id, addr)| async move {
                    let req = RemotingCommand::request(rq::GET_BROKER_EPOCH_CACHE);
                    (id, client.invoke(&addr, req, probe_timeout).await)
                },
            ))
            .await;
        let now = Instant::now();
        let mut offsets = HashMap::new();
        for (id, resp) in answers {
            let Ok(resp) = resp else {
                continue;
            };
            let Ok(body) =
                serde_json::from_slice::<EpochCacheBody>(resp.body.as_deref().unwrap_or_default())
            else {
                continue;
            };
            // Apache expands only from the offset acked on the HA link,
            // which exists after the slave truncated its divergent tail.
            // The HA link carries no broker id, so bound the reported offset
            // by the best live link's ack, and require the slave's epoch
            // cache to end with this master's epoch (it aligned with us).
            let aligned = match (self.my_epoch, body.epoch_list.last()) {
                (Some((ep, start)), Some(last)) => last.epoch == ep && last.start_offset == start,
                _ => false,
            };
            if !aligned {
                continue;
            }
            let off = (body.max_offset.max(0) as u64).min(ha_ack);
            if off >= self.prev_max {
                self.caught_up.insert(id, now);
            }
            offsets.insert(id, off);
        }
        let limit = self.base.ha_max_time_slave_not_catchup;
        let mut new_set = BTreeSet::from([self.broker_id]);
        for &id in &view.sync_state_set {
            if id == self.broker_id {
                continue;
            }
            // A member never heard from gets one full period from now.
            let last = *self.caught_up.entry(id).or_insert(now);
            if now.saturating_duration_since(last) < limit {
                new_set.insert(id);
            }
        }
        let near: Vec<u64> = offsets
            .iter()
            .filter(|(id, &off)| !view.sync_state_set.contains(id) && off >= self.prev_max)
            .map(|(&id, _)| id)
            .collect();
        match self.grow_barrier {
            None if !near.is_empty() => {
                // First stop acknowledging alone, then note where the log
                // ends: a joiner must hold at least that.
                if let Some(b) = &self.running {
                    // SeqCst pairs with the send's read after its put: a
                    // put this read misses sees the flag cleared and waits.
                    b.context().ack_alone.store(false, Ordering::SeqCst);
                    std::sync::atomic::fence(Ordering::SeqCst);
                    self.grow_barrier =
                        Some(b.context().store.commit_log_max_offset().max(0) as u64);
                }
            }
            Some(_) if near.is_empty() => self.grow_barrier = None,
            Some(bar) => {
                for (&id, &off) in &offsets {
                    if !view.sync_state_set.contains(&id) && off >= bar {
                        new_set.insert(id);
                    }
                }
            }
            None => {}
        }
        self.prev_max = my_max;
        if new_set == view.sync_state_set {
            return;
        }
        let Role::Master { epoch } = self.role else {
            return;
        };
        let mut req = RemotingCommand::request(rq::CONTROLLER_ALTER_SYNC_STATE_SET);
        req.set_ext("brokerName", &self.base.broker_name);
        req.set_ext("masterBrokerId", self.broker_id.to_string());
        req.set_ext("masterEpoch", epoch.to_string());
        req.set_ext("invokeTime", now_ms().to_string());
        let body = serde_json::json!({
            "syncStateSet": new_set,
            "syncStateSetEpoch": view.sync_state_set_epoch,
        });
        let req = req.with_body(body.to_string());
        match self.call_leader(req).await {
            Ok(_) => {
                if !new_set.is_subset(&view.sync_state_set) {
                    self.grow_barrier = None;
                }
                tracing::info!(from = ?view.sync_state_set, to = ?new_set, "SyncStateSet changed")
            }
            Err(e) => throttled_warn!(SSS_FAILED, (), error = %e, "cannot change the SyncStateSet"),
        }
    }

    /// (id, address) of every replica the controller knows in this set.
    async fn replica_addresses(
        &mut self,
    ) -> std::result::Result<Vec<(u64, String)>, ControllerCallError> {
        let req = RemotingCommand::request(rq::CONTROLLER_GET_SYNC_STATE_DATA)
            .with_body(serde_json::json!([self.base.broker_name]).to_string());
        let resp = self.call_leader(req).await?;
        let v: serde_json::Value = serde_json::from_slice(resp.body.as_deref().unwrap_or_default())
            .map_err(|e| ControllerCallError::BadAnswer(e.to_string()))?;
        let info = &v["replicasInfoTable"][&self.base.broker_name];
        let mut out = Vec::new();
        for key in ["inSyncReplicas", "notInSyncReplicas"] {
            for r in info[key].as_array().into_iter().flatten() {
                if let (Some(id), Some(addr)) =
                    (r["brokerId"].as_u64(), r["brokerAddress"].as_str())
                {
                    out.push((id, addr.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// Sends `req` to the controller leader: the last one that answered as
    /// leader first, then the others.
    async fn call_leader(
        &mut self,
        req: RemotingCommand,
    ) -> std::result::Result<RemotingCommand, ControllerCallError> {
        let n = self.controllers.len();
        let mut last = String::from("no controller configured");
        for i in 0..n {
            let idx = (self.leader_hint + i) % n;
            let addr = self.controllers[idx].clone();
            match self
                .client
                .invoke(&addr, req.clone(), CONTROLLER_RPC_TIMEOUT)
                .await
            {
                Ok(resp) if resp.code == rs::CONTROLLER_NOT_LEADER => {
                    last = format!("{addr}: not the leader");
                }
                Ok(resp) if resp.code == rs::CONTROLLER_JRAFT_INTERNAL_ERROR => {
                    last = format!("{addr}: {}", resp.remark.unwrap_or_default());
                }
                Ok(resp) => {
                    self.leader_hint = idx;
                    if resp.code != rs::SUCCESS {
                        return Err(ControllerCallError::Refused {
                            code: resp.code,
                            remark: resp.remark.unwrap_or_default(),
                        });
                    }
                    return Ok(resp);
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(ControllerCallError::NoLeader(last))
    }

    /// The id the controller gave this replica (kept in the store root), or
    /// a new one (GET_NEXT_BROKER_ID, then APPLY_BROKER_ID with a code).
    async fn ensure_broker_id(&mut self) -> Result<u64> {
        let path = self.base.store.store_path_root_dir.join(BROKER_ID_FILE);
        let p = path.clone();
        let saved = tokio::task::spawn_blocking(move || std::fs::read_to_string(&p))
            .await
            .map_err(|e| BrokerError::Start(e.to_string()))?;
        if let Ok(text) = saved {
            if let Some(id) = text
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
            {
                if id > 0 {
                    return Ok(id);
                }
            }
            tracing::warn!(file = %path.display(), "unreadable broker id file; applying for a new id");
        }
        let code = format!(
            "{}-{}-{}",
            self.base.broker_addr(),
            std::process::id(),
            now_ms()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.apply_for_id(&code).await {
                Ok(id) => {
                    let root = self.base.store.store_path_root_dir.clone();
                    let text = format!("{id} {code}\n");
                    tokio::task::spawn_blocking(move || {
                        std::fs::create_dir_all(&root)?;
                        let tmp = root.join(format!("{BROKER_ID_FILE}.tmp"));
                        std::fs::write(&tmp, text)?;
                        std::fs::File::open(&tmp)?.sync_all()?;
                        std::fs::rename(&tmp, root.join(BROKER_ID_FILE))
                    })
                    .await
                    .map_err(|e| BrokerError::Start(e.to_string()))?
                    .map_err(|e| {
                        BrokerError::Start(format!(
                            "cannot save the broker id in {}: {e}",
                            path.display()
                        ))
                    })?;
                    tracing::info!(id, "broker id applied from the controller");
                    return Ok(id);
                }
                // The set is full (at most two replicas in controller mode):
                // waiting would not change that.
                Err(ControllerCallError::Refused { code, remark })
                    if code == rs::CONTROLLER_INVALID_REPLICAS =>
                {
                    return Err(BrokerError::config("brokerName", remark));
                }
                Err(e) if Instant::now() < deadline => {
                    throttled_warn!(NO_CONTROLLER, (), error = %e, "cannot get a broker id from the controller group; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(BrokerError::config(
                        "controllerAddr",
                        format!("no broker id from the controller group within 60 s: {e}"),
                    ))
                }
            }
        }
    }

    async fn apply_for_id(&mut self, code: &str) -> std::result::Result<u64, ControllerCallError> {
        let mut req = RemotingCommand::request(rq::CONTROLLER_GET_NEXT_BROKER_ID);
        req.set_ext("clusterName", &self.base.broker_cluster_name);
        req.set_ext("brokerName", &self.base.broker_name);
        let resp = self.call_leader(req).await?;
        let next: u64 = resp
            .ext("nextBrokerId")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ControllerCallError::BadAnswer("no nextBrokerId".into()))?;
        let mut req = RemotingCommand::request(rq::CONTROLLER_APPLY_BROKER_ID);
        req.set_ext("clusterName", &self.base.broker_cluster_name);
        req.set_ext("brokerName", &self.base.broker_name);
        req.set_ext("appliedBrokerId", next.to_string());
        req.set_ext("registerCheckCode", code);
        self.call_leader(req).await?;
        Ok(next)
    }

    fn ha_address(&self) -> String {
        let ip = self
            .base
            .broker_ip2
            .clone()
            .unwrap_or_else(|| self.base.broker_ip1.clone());
        format!("{ip}:{}", self.base.effective_ha_listen_port())
    }

    async fn register(&mut self) -> std::result::Result<ReplicaView, ControllerCallError> {
        let mut req = RemotingCommand::request(rq::CONTROLLER_REGISTER_BROKER);
        req.set_ext("clusterName", &self.base.broker_cluster_name);
        req.set_ext("brokerName", &self.base.broker_name);
        req.set_ext("brokerId", self.broker_id.to_string());
        req.set_ext("brokerAddress", self.base.broker_addr());
        req.set_ext("invokeTime", now_ms().to_string());
        req.set_ext("haAddress", self.ha_address());
        let resp = self.call_leader(req).await?;
        Ok(parse_view(&resp))
    }

    async fn replica_info(&mut self) -> std::result::Result<ReplicaView, ControllerCallError> {
        let mut req = RemotingCommand::request(rq::CONTROLLER_GET_REPLICA_INFO);
        req.set_ext("brokerName", &self.base.broker_name);
        let resp = self.call_leader(req).await?;
        Ok(parse_view(&resp))
    }
}

fn parse_view(resp: &RemotingCommand) -> ReplicaView {
    let body: SyncStateSetBody = resp
        .body
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    let text = |k: &str| resp.ext(k).filter(|v| !v.is_empty()).map(str::to_string);
    ReplicaView {
        master_id: resp.ext("masterBrokerId").and_then(|v| v.parse().ok()),
        master_addr: text("masterAddress"),
        master_ha_addr: text("masterHaAddress"),
        master_epoch: resp
            .ext("masterEpoch")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        sync_state_set_epoch: resp
            .ext("syncStateSetEpoch")
            .and_then(|v| v.parse().ok())
            .unwrap_or(body.sync_state_set_epoch),
        sync_state_set: body.sync_state_set,
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
