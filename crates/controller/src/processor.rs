//! The controller's request codes, with Apache's header and body field names
//! (`RequestCode.java` 904 and 1001–1013; the headers under
//! `protocol/header/controller`). Writes go to the Raft leader only; a
//! follower answers CONTROLLER_NOT_LEADER and names the leader in the remark.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apogee_protocol::code::{request_code as rq, response_code as rs};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{processor_fn, ProcessResult, ProcessorRegistry};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::server::{Heartbeat, ProposeError, Shared};
use crate::state::{BrokerSet, Command, Refusal};

/// Apogee's extension header fields: a replica's HA address travels with
/// its registration and back in the answers, so a new slave knows where to
/// connect without asking the NameServer. Apache's controllers ignore it.
pub const HA_ADDRESS: &str = "haAddress";
pub const MASTER_HA_ADDRESS: &str = "masterHaAddress";

/// Apache's `SyncStateSet` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStateSetBody {
    #[serde(default)]
    pub sync_state_set: BTreeSet<u64>,
    #[serde(default)]
    pub sync_state_set_epoch: u32,
}

fn respond(code: i32, remark: impl Into<String>) -> ProcessResult {
    Ok(Some(RemotingCommand::response(code, Some(remark.into()))))
}

fn required<'a>(req: &'a RemotingCommand, key: &str) -> Result<&'a str, String> {
    match req.ext(key).map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("header field '{key}' is missing")),
    }
}

fn required_u64(req: &RemotingCommand, key: &str) -> Result<u64, String> {
    let v = required(req, key)?;
    v.parse()
        .map_err(|_| format!("header field '{key}' is not a broker id: '{v}'"))
}

fn propose_failed(e: ProposeError) -> ProcessResult {
    match e {
        ProposeError::NotLeader(l) => respond(
            rs::CONTROLLER_NOT_LEADER,
            format!("this controller is not the leader; the leader is {l}"),
        ),
        ProposeError::Raft(r) => respond(rs::CONTROLLER_JRAFT_INTERNAL_ERROR, r),
    }
}

fn refusal_code(r: &Refusal) -> i32 {
    match r {
        Refusal::UnknownBrokerSet(_) => rs::CONTROLLER_BROKER_METADATA_NOT_EXIST,
        Refusal::NotRegistered { .. } => rs::CONTROLLER_BROKER_NEED_TO_BE_REGISTERED,
        Refusal::IdTaken { .. } => rs::CONTROLLER_BROKER_ID_INVALID,
        Refusal::FencedMasterEpoch { .. } => rs::CONTROLLER_FENCED_MASTER_EPOCH,
        Refusal::FencedSyncStateSetEpoch { .. } => rs::CONTROLLER_FENCED_SYNC_STATE_SET_EPOCH,
        Refusal::NotMaster { .. } => rs::CONTROLLER_INVALID_MASTER,
        Refusal::InvalidReplicas(_) | Refusal::TooManyReplicas { .. } => {
            rs::CONTROLLER_INVALID_REPLICAS
        }
    }
}

/// Master fields of a response header (register, elect, get replica info).
fn master_fields(resp: &mut RemotingCommand, set: &BrokerSet) {
    if let Some(m) = set.master {
        resp.set_ext("masterBrokerId", m.to_string());
    }
    if let Some(r) = set.master.and_then(|m| set.replicas.get(&m)) {
        resp.set_ext("masterAddress", &r.address);
        if let Some(ha) = &r.ha_address {
            resp.set_ext(MASTER_HA_ADDRESS, ha);
        }
    }
    resp.set_ext("masterEpoch", set.master_epoch.to_string());
    resp.set_ext("syncStateSetEpoch", set.sync_state_set_epoch.to_string());
}

fn sync_state_set_body(set: &BrokerSet) -> Vec<u8> {
    serde_json::to_vec(&SyncStateSetBody {
        sync_state_set: set.sync_state_set.clone(),
        sync_state_set_epoch: set.sync_state_set_epoch,
    })
    .unwrap_or_default()
}

pub(crate) fn register(registry: &Arc<ProcessorRegistry>, shared: &Arc<Shared>) {
    macro_rules! route {
        ($code:expr, $handler:ident) => {{
            let shared = Arc::clone(shared);
            registry.register(
                $code,
                processor_fn(move |_ctx, req: RemotingCommand| {
                    let shared = Arc::clone(&shared);
                    async move { $handler(&shared, req).await }
                }),
            );
        }};
    }
    route!(rq::CONTROLLER_GET_METADATA_INFO, get_metadata);
    route!(rq::BROKER_HEARTBEAT, heartbeat);
    route!(rq::CONTROLLER_REGISTER_BROKER, register_broker);
    route!(rq::CONTROLLER_GET_REPLICA_INFO, get_replica_info);
    route!(rq::CONTROLLER_ALTER_SYNC_STATE_SET, alter_sync_state_set);
    route!(rq::CONTROLLER_ELECT_MASTER, elect_master);
    route!(rq::CONTROLLER_GET_SYNC_STATE_DATA, get_sync_state_data);
    route!(rq::CONTROLLER_GET_NEXT_BROKER_ID, get_next_broker_id);
    route!(rq::CONTROLLER_APPLY_BROKER_ID, apply_broker_id);
}

/// GET_METADATA_INFO: who leads the group.
async fn get_metadata(shared: &Shared, _req: RemotingCommand) -> ProcessResult {
    let mut resp = RemotingCommand::response(rs::SUCCESS, None);
    resp.set_ext("group", &shared.config.group);
    if let Some((id, addr)) = shared.leader() {
        if let Some(p) = shared.config.peers.get(id as usize) {
            resp.set_ext("controllerLeaderId", &p.name);
        }
        resp.set_ext(
            "controllerLeaderAddress",
            addr.split_once('-').map_or(addr.as_str(), |(_, a)| a),
        );
    }
    resp.set_ext("isLeader", shared.is_leader().to_string());
    resp.set_ext("peers", shared.config.peers_string());
    Ok(Some(resp))
}

/// BROKER_HEARTBEAT: every controller records it (brokers send to all), so
/// a new leader knows at once who is alive.
async fn heartbeat(shared: &Shared, req: RemotingCommand) -> ProcessResult {
    let (name, id) = match (required(&req, "brokerName"), required_u64(&req, "brokerId")) {
        (Ok(n), Ok(i)) => (n.to_string(), i),
        (Err(e), _) | (_, Err(e)) => return respond(rs::CONTROLLER_INVALID_REQUEST, e),
    };
    let timeout = req
        .ext("heartbeatTimeoutMills")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(
            shared.config.default_broker_heartbeat_timeout,
            Duration::from_millis,
        );
    let hb = Heartbeat {
        at: Instant::now(),
        timeout,
        epoch: req.ext("epoch").and_then(|v| v.parse().ok()).unwrap_or(-1),
        max_offset: req
            .ext("maxOffset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        address: req.ext("brokerAddr").unwrap_or_default().to_string(),
    };
    shared.heartbeats.lock().insert((name, id), hb);
    Ok(Some(RemotingCommand::response(rs::SUCCESS, None)))
}

/// CONTROLLER_REGISTER_BROKER: records the replica; a set without a master
/// gets one at once if a candidate is alive (the registering broker first).
async fn register_broker(shared: &Shared, req: RemotingCommand) -> ProcessResult {
    let parsed = (|| {
        Ok::<_, String>((
            required(&req, "clusterName")?.to_string(),
            required(&req, "brokerName")?.to_string(),
            required_u64(&req, "brokerId")?,
            required(&req, "brokerAddress")?.to_string(),
        ))
    })();
    let (cluster, name, id, address) = match parsed {
        Ok(p) => p,
        Err(e) => return respond(rs::CONTROLLER_INVALID_REQUEST, e),
    };
    if !shared.is_leader() {
        return propose_failed(ProposeError::NotLeader(
            shared
                .leader()
                .map(|l| l.1)
                .unwrap_or_else(|| "unknown".into()),
        ));
    }
    // Registering counts as being alive.
    shared.heartbeats.lock().insert(
        (name.clone(), id),
        Heartbeat {
            at: Instant::now(),
            timeout: shared.config.default_broker_heartbeat_timeout,
            epoch: -1,
            max_offset: 0,
            address: address.clone(),
        },
    );
    let ha_address = req.ext(HA_ADDRESS).map(str::to_string);
    let known = shared.state(|s| {
        s.set(&name)
            .and_then(|set| set.replicas.get(&id))
            .is_some_and(|r| r.address == address && r.ha_address == ha_address)
    });
    let mut set = if known {
        // Answered from local state: confirm leadership first, so that a
        // leader cut off from the quorum never answers from stale state.
        if let Err(e) = shared.linearizable().await {
            return propose_failed(e);
        }
        shared.state(|s| s.set(&name).cloned()).unwrap_or_default()
    } else {
        match shared
            .propose(Command::Register {
                cluster: cluster.clone(),
                broker_name: name.clone(),
                broker_id: id,
                address,
                ha_address,
            })
            .await
        {
            Ok(Ok(set)) => set,
            Ok(Err(r)) => return respond(refusal_code(&r), r.to_string()),
            Err(e) => return propose_failed(e),
        }
    };
    if set.master.is_none() {
        match shared.elect(&set, Some(id)).await {
            Ok(Some(Ok(s))) => set = s,
            Ok(_) => {}
            Err(e) => return propose_failed(e),
        }
    }
    let mut resp = RemotingCommand::response(rs::SUCCESS, None);
    resp.set_ext("clusterName", &cluster);
    resp.set_ext("brokerName", &name);
    master_fields(&mut resp, &set);
    Ok(Some(resp.with_body(sync_state_set_body(&set))))
}

/// CONTROLLER_GET_REPLICA_INFO: the master, its epoch and the SyncStateSet,
/// read only after a quorum confirmed this leader.
async fn get_replica_info(shared: &Shared, req: RemotingCommand) -> ProcessResult {
    let name = match required(&req, "brokerName") {
        Ok(n) => n.to_string(),
        Err(e) => return respond(rs::CONTROLLER_INVALID_REQUEST, e),
    };
    if let Err(e) = shared.linearizable().await {
        return propose_failed(e);
    }
    let Some(set) = shared.state(|s| s.set(&name).cloned()) else {
        return respond(
            rs::CONTROLLER_BROKER_METADATA_NOT_EXIST,
            format!("broker set '{name}' is unknown to the controller"),
        );
    };
    let mut resp = RemotingCommand::response(rs::SUCCESS, None);
    master_fields(&mut resp, &set);
    Ok(Some(resp.with_body(sync_state_set_body(&set))))
}

/// CONTROLLER_ALTER_SYNC_STATE_SET from the master; members it adds must be
/// alive.
async fn alter_sync_state_set(shared: &Shared, req: RemotingCommand) -> ProcessResult {
    let parsed = (|| {
        let name = required(&req, "brokerName")?.to_string();
        let master = required_u64(&req, "masterBrokerId")?;
        let epoch: u32 = required(&req, "masterEpoch")?
            .parse()
            .map_err(|_| "header field 'masterEpoch' is not a number".to_string())?;
        let body: SyncStateSetBody =
            serde_json::from_slice(req.body.as_deref().unwrap_or_default())
                .map_err(|e| format!("the body is not a SyncStateSet: {e}"))?;
        Ok::<_, String>((name, master, epoch, body))
    })();
    let (name, master, epoch, body) = match parsed {
        Ok(p) => p,
        Err(e) => return respond(rs::CONTROLLER_INVALID_REQUEST, e),
    };
    let current = shared.state(|s| s.set(&name).map(|s| s.sync_state_set.clone()));
    if let Some(dead) = body
        .sync_state_set
        .iter()
        .find(|&&id| current.as_ref().is_some_and(|c| !c.contains(&id)) && !shared.alive(&name, id))
    {
        return respond(
            rs::CONTROLLER_BROKER_NOT_ALIVE,
            format!("broker id {dead} of '{name}' is not alive"),
        );
    }
    match shared
        .propose(Command::AlterSyncStateSet {
            broker_name: name.clone(),
            master_id: master,
            master_epoch: epoch,
            expected_sync_state_set_epoch: Some(body.sync_state_set_epoch),
            new_set: body.sync_state_set,
        })
        .await
    {
        Ok(Ok(set)) => {
            tracing::info!(broker = %name, sync_state_set = ?set.sync_state_set, epoch = set.sync_state_set_epoch, "SyncStateSet changed");
            let mut resp = RemotingCommand::response(rs::SUCCESS, None);
            resp.set_ext("newSyncStateSetEpoch", set.sync_state_set_epoch.to_string());
            Ok(Some(resp))
        }
        Ok(Err(r)) => respond(refusal_code(&r), r.to_string()),
        Err(e) => propose_failed(e),
    }
}

/// CONTROLLER_ELECT_MASTER: from a broker (become master if the set has
/// none) or an admin (`designateElect`: this broker, if it is eligible).
async fn elect_master(shared: &Shared, req: RemotingCommand) -> ProcessResult {
    let (name, id) = match (required(&req, "brokerName"), required_u64(&req, "brokerId")) {
        (Ok(n), Ok(i)) => (n.to_string(), i),
        (Err(e), _) | (_, Err(e)) => return respond(rs::CONTROLLER_INVALID_REQUEST, e),
    };
    let designate = req.ext("designateElect") == Some("true");
    let Some(set) = shared.state(|s| s.set(&name).cloned()) else {
        return respond(
            rs::CONTROLLER_BROKER_METADATA_NOT_EXIST,
            format!("broker set '{name}' is unknown to the controller"),
        );
    };
    let master_alive = set.master.is_some_and(|m| shared.alive(&name, m));
    // With a live master, only a SyncStateSet member that heartbeats may be
    // designated (never an unclean pick): it holds every acknowledged message.
    if designate && master_alive && (!set.sync_state_set.contains(&id) || !shared.alive(&name, id))
    {
        return respond(
            rs::CONTROLLER_ELECT_MASTER_FAILED,
            format!(
                "broker {id} is not a live member of the SyncStateSet {:?} and the master is alive",
                set.sync_state_set
            ),
        );
    }
    if set.master == Some(id) || (master_alive && !designate) {
        let mut resp = RemotingCommand::response(
            rs::CONTROLLER_MASTER_STILL_EXIST,
            Some("the broker set has a live master".to_string()),
        );
        master_fields(&mut resp, &set);
        return Ok(Some(resp));
    }
    match shared.elect(&set, Some(id)).await {
        Ok(Some(Ok(s))) if !designate || s.master == Some(id) => {
            let mut resp = RemotingCommand::response(rs::SUCCESS, None);
            master_fields(&mut resp, &s);
            let members: BTreeMap<String, String> = s
                .replicas
                .values()
                .map(|r| (r.broker_id.to_string(), r.address.clone()))
                .collect();
            let body = json!({
                "brokerMemberGroup": {
                    "cluster": s.cluster,
                    "brokerName": s.broker_name,
                    "brokerAddrs": members,
                },
                "syncStateSet": s.sync_state_set,
            });
            Ok(Some(resp.with_body(body.to_string())))
        }
        Ok(Some(Ok(s))) => respond(
            rs::CONTROLLER_ELECT_MASTER_FAILED,
            format!(
                "broker {id} could not be elected (not alive or not in the SyncStateSet); master is now {:?}",
                s.master
            ),
        ),
        Ok(Some(Err(r))) => respond(refusal_code(&r), r.to_string()),
        Ok(None) => respond(
            rs::CONTROLLER_MASTER_NOT_AVAILABLE,
            "no live replica in the SyncStateSet can be elected",
        ),
        Err(e) => propose_failed(e),
    }
}

/// CONTROLLER_GET_SYNC_STATE_DATA: body is a JSON list of brokerNames; the
/// answer is Apache's `BrokerReplicasInfo`.
async fn get_sync_state_data(shared: &Shared, req: RemotingCommand) -> ProcessResult {
    let names: Vec<String> = match req.body.as_deref() {
        Some(b) if !b.is_empty() => match serde_json::from_slice(b) {
            Ok(n) => n,
            Err(e) => {
                return respond(
                    rs::CONTROLLER_INVALID_REQUEST,
                    format!("the body is not a list of broker names: {e}"),
                )
            }
        },
        _ => shared.state(|s| s.sets.keys().cloned().collect()),
    };
    let mut table = serde_json::Map::new();
    for name in names {
        let Some(set) = shared.state(|s| s.set(&name).cloned()) else {
            continue;
        };
        let ident = |id: &u64| {
            json!({
                "brokerName": name,
                "brokerId": id,
                "brokerAddress": set.replicas.get(id).map(|r| r.address.clone()).unwrap_or_default(),
                "alive": shared.alive(&name, *id),
            })
        };
        let in_sync: Vec<_> = set.sync_state_set.iter().map(ident).collect();
        let not_in_sync: Vec<_> = set
            .replicas
            .keys()
            .filter(|id| !set.sync_state_set.contains(id))
            .map(ident)
            .collect();
        table.insert(
            name.clone(),
            json!({
                "masterBrokerId": set.master,
                "masterAddress": set.master_address(),
                "masterEpoch": set.master_epoch,
                "syncStateSetEpoch": set.sync_state_set_epoch,
                "inSyncReplicas": in_sync,
                "notInSyncReplicas": not_in_sync,
            }),
        );
    }
    let body = json!({ "replicasInfoTable": table });
    Ok(Some(
        RemotingCommand::response(rs::SUCCESS, None).with_body(body.to_string()),
    ))
}

/// CONTROLLER_GET_NEXT_BROKER_ID.
async fn get_next_broker_id(shared: &Shared, req: RemotingCommand) -> ProcessResult {
    let (cluster, name) = match (required(&req, "clusterName"), required(&req, "brokerName")) {
        (Ok(c), Ok(n)) => (c.to_string(), n.to_string()),
        (Err(e), _) | (_, Err(e)) => return respond(rs::CONTROLLER_INVALID_REQUEST, e),
    };
    if let Err(e) = shared.linearizable().await {
        return propose_failed(e);
    }
    let next = shared.state(|s| s.set(&name).map_or(1, BrokerSet::next_broker_id));
    let mut resp = RemotingCommand::response(rs::SUCCESS, None);
    resp.set_ext("clusterName", cluster);
    resp.set_ext("brokerName", name);
    resp.set_ext("nextBrokerId", next.to_string());
    Ok(Some(resp))
}

/// CONTROLLER_APPLY_BROKER_ID: claims an id with a check code.
async fn apply_broker_id(shared: &Shared, req: RemotingCommand) -> ProcessResult {
    let parsed = (|| {
        Ok::<_, String>((
            required(&req, "clusterName")?.to_string(),
            required(&req, "brokerName")?.to_string(),
            required_u64(&req, "appliedBrokerId")?,
            required(&req, "registerCheckCode")?.to_string(),
        ))
    })();
    let (cluster, name, id, code) = match parsed {
        Ok(p) => p,
        Err(e) => return respond(rs::CONTROLLER_INVALID_REQUEST, e),
    };
    if id == 0 {
        return respond(
            rs::CONTROLLER_BROKER_ID_INVALID,
            "broker id 0 is reserved for whichever replica is master",
        );
    }
    match shared
        .propose(Command::ApplyBrokerId {
            cluster: cluster.clone(),
            broker_name: name.clone(),
            broker_id: id,
            check_code: code,
        })
        .await
    {
        Ok(Ok(_)) => {
            let mut resp = RemotingCommand::response(rs::SUCCESS, None);
            resp.set_ext("clusterName", cluster);
            resp.set_ext("brokerName", name);
            Ok(Some(resp))
        }
        Ok(Err(r)) => respond(refusal_code(&r), r.to_string()),
        Err(e) => propose_failed(e),
    }
}
