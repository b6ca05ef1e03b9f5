//! The replicated state: per broker set, its replicas, its master and
//! master epoch, and its SyncStateSet and that set's epoch. [`Command`]s are
//! the Raft log entries; [`ControllerState::apply`] is deterministic and
//! checks the epochs a command was decided against, so a proposal made from
//! a stale view changes nothing and says why.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One replica of a broker set, as it registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub broker_id: u64,
    /// The broker's main remoting address (`ip:port`).
    pub address: String,
    /// Where it listens for slaves when master (Apogee's extension field).
    pub ha_address: Option<String>,
}

/// A broker set (all replicas sharing a brokerName).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerSet {
    pub cluster: String,
    pub broker_name: String,
    pub replicas: BTreeMap<u64, Replica>,
    /// Broker ids handed out with APPLY_BROKER_ID, with the check code that
    /// claimed them (a restart with the same code gets the same id back).
    pub applied_ids: BTreeMap<u64, String>,
    pub master: Option<u64>,
    pub master_epoch: u32,
    pub sync_state_set: BTreeSet<u64>,
    pub sync_state_set_epoch: u32,
}

impl BrokerSet {
    pub fn master_address(&self) -> Option<&str> {
        self.master
            .and_then(|m| self.replicas.get(&m))
            .map(|r| r.address.as_str())
    }

    pub fn next_broker_id(&self) -> u64 {
        // Ids start at 1: 0 is what a master registers with at the NameServer.
        let used = self
            .applied_ids
            .keys()
            .chain(self.replicas.keys())
            .max()
            .copied();
        used.map_or(1, |m| m + 1)
    }
}

/// A Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// CONTROLLER_APPLY_BROKER_ID.
    ApplyBrokerId {
        cluster: String,
        broker_name: String,
        broker_id: u64,
        check_code: String,
    },
    /// CONTROLLER_REGISTER_BROKER: records the replica's addresses.
    Register {
        cluster: String,
        broker_name: String,
        broker_id: u64,
        address: String,
        ha_address: Option<String>,
    },
    /// A master change decided by the leader from `master_epoch`: the new
    /// master (None leaves the set without one), its SyncStateSet being
    /// itself alone, both epochs bumped.
    Elect {
        broker_name: String,
        expected_master_epoch: u32,
        new_master: Option<u64>,
    },
    /// CONTROLLER_ALTER_SYNC_STATE_SET from the master.
    AlterSyncStateSet {
        broker_name: String,
        master_id: u64,
        master_epoch: u32,
        expected_sync_state_set_epoch: Option<u32>,
        new_set: BTreeSet<u64>,
    },
}

/// Why a command changed nothing; each maps to one of Apache's controller
/// response codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("broker set '{0}' is unknown to the controller")]
    UnknownBrokerSet(String),
    #[error("broker id {id} of '{broker_name}' is not registered")]
    NotRegistered { broker_name: String, id: u64 },
    #[error("broker id {id} of '{broker_name}' is taken by another broker")]
    IdTaken { broker_name: String, id: u64 },
    #[error("master epoch {got} is stale; the current one is {current}")]
    FencedMasterEpoch { current: u32, got: u32 },
    #[error("SyncStateSet epoch {got} is stale; the current one is {current}")]
    FencedSyncStateSetEpoch { current: u32, got: u32 },
    #[error("broker {got} is not the master of '{broker_name}'")]
    NotMaster { broker_name: String, got: u64 },
    #[error("invalid SyncStateSet: {0}")]
    InvalidReplicas(String),
    #[error("broker set '{broker_name}' already has {limit} replicas; Apogee's controller mode supports at most {limit} per broker set (a SYNC_MASTER's acknowledgement does not yet wait for every SyncStateSet member)")]
    TooManyReplicas { broker_name: String, limit: usize },
}

/// Replicas per broker set in controller mode. With more, a SYNC_MASTER
/// acknowledged by one slave could lose the message to the election of
/// another member (no `allAckInSyncStateSet` yet).
pub const MAX_REPLICAS: usize = 2;

/// What a command's application answers.
pub type Outcome = Result<BrokerSet, Refusal>;

/// Everything the controller group agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerState {
    /// Keyed by brokerName, as Apache's ReplicasInfoManager does.
    pub sets: BTreeMap<String, BrokerSet>,
}

impl ControllerState {
    pub fn set(&self, broker_name: &str) -> Option<&BrokerSet> {
        self.sets.get(broker_name)
    }

    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        match cmd {
            Command::ApplyBrokerId {
                cluster,
                broker_name,
                broker_id,
                check_code,
            } => {
                let set = self.entry(cluster, broker_name);
                if !set.applied_ids.contains_key(broker_id) && set.applied_ids.len() >= MAX_REPLICAS
                {
                    return Err(Refusal::TooManyReplicas {
                        broker_name: broker_name.clone(),
                        limit: MAX_REPLICAS,
                    });
                }
                match set.applied_ids.get(broker_id) {
                    Some(code) if code != check_code => {
                        return Err(Refusal::IdTaken {
                            broker_name: broker_name.clone(),
                            id: *broker_id,
                        })
                    }
                    _ => {}
                }
                set.applied_ids.insert(*broker_id, check_code.clone());
                Ok(set.clone())
            }
            Command::Register {
                cluster,
                broker_name,
                broker_id,
                address,
                ha_address,
            } => {
                let set = self.entry(cluster, broker_name);
                if !set.replicas.contains_key(broker_id) && set.replicas.len() >= MAX_REPLICAS {
                    return Err(Refusal::TooManyReplicas {
                        broker_name: broker_name.clone(),
                        limit: MAX_REPLICAS,
                    });
                }
                set.replicas.insert(
                    *broker_id,
                    Replica {
                        broker_id: *broker_id,
                        address: address.clone(),
                        ha_address: ha_address.clone(),
                    },
                );
                Ok(set.clone())
            }
            Command::Elect {
                broker_name,
                expected_master_epoch,
                new_master,
            } => {
                let set = self
                    .sets
                    .get_mut(broker_name)
                    .ok_or_else(|| Refusal::UnknownBrokerSet(broker_name.clone()))?;
                if set.master_epoch != *expected_master_epoch {
                    return Err(Refusal::FencedMasterEpoch {
                        current: set.master_epoch,
                        got: *expected_master_epoch,
                    });
                }
                if let Some(m) = new_master {
                    if !set.replicas.contains_key(m) {
                        return Err(Refusal::NotRegistered {
                            broker_name: broker_name.clone(),
                            id: *m,
                        });
                    }
                }
                set.master = *new_master;
                set.master_epoch += 1;
                // An empty set after a vacancy keeps the old members: they
                // are still the only replicas known to hold every
                // acknowledged message, so they stay electable.
                if let Some(m) = new_master {
                    set.sync_state_set = BTreeSet::from([*m]);
                }
                set.sync_state_set_epoch += 1;
                Ok(set.clone())
            }
            Command::AlterSyncStateSet {
                broker_name,
                master_id,
                master_epoch,
                expected_sync_state_set_epoch,
                new_set,
            } => {
                let set = self
                    .sets
                    .get_mut(broker_name)
                    .ok_or_else(|| Refusal::UnknownBrokerSet(broker_name.clone()))?;
                if set.master_epoch != *master_epoch {
                    return Err(Refusal::FencedMasterEpoch {
                        current: set.master_epoch,
                        got: *master_epoch,
                    });
                }
                if set.master != Some(*master_id) {
                    return Err(Refusal::NotMaster {
                        broker_name: broker_name.clone(),
                        got: *master_id,
                    });
                }
                if let Some(e) = expected_sync_state_set_epoch {
                    if *e != set.sync_state_set_epoch {
                        return Err(Refusal::FencedSyncStateSetEpoch {
                            current: set.sync_state_set_epoch,
                            got: *e,
                        });
                    }
                }
                if !new_set.contains(master_id) {
                    return Err(Refusal::InvalidReplicas(
                        "the new SyncStateSet does not hold the master".into(),
                    ));
                }
                if let Some(id) = new_set.iter().find(|id| !set.replicas.contains_key(id)) {
                    return Err(Refusal::InvalidReplicas(format!(
                        "broker id {id} is not a registered replica"
                    )));
                }
                set.sync_state_set = new_set.clone();
                set.sync_state_set_epoch += 1;
                Ok(set.clone())
            }
        }
    }

    fn entry(&mut self, cluster: &str, broker_name: &str) -> &mut BrokerSet {
        let set = self
            .sets
            .entry(broker_name.to_string())
            .or_insert_with(|| BrokerSet {
                broker_name: broker_name.to_string(),
                ..BrokerSet::default()
            });
        if set.cluster != cluster {
            set.cluster = cluster.to_string();
        }
        set
    }
}

/// Chooses a new master for `set` (the leader's decision; the command it
/// leads to is checked again when applied). `alive` says whether a replica
/// heartbeats; `offset` is its last reported max CommitLog offset.
/// Only SyncStateSet members are candidates unless `unclean`; among them the
/// furthest ahead wins, ties to the lowest id. `prefer` (a broker asking to
/// be master, or an admin's designated one) wins when it is a candidate.
pub fn choose_master(
    set: &BrokerSet,
    alive: impl Fn(u64) -> bool,
    offset: impl Fn(u64) -> u64,
    unclean: bool,
    prefer: Option<u64>,
) -> Option<u64> {
    let old = set.master;
    let eligible = |id: u64| {
        Some(id) != old
            && alive(id)
            && set.replicas.contains_key(&id)
            && (set.sync_state_set.contains(&id) || unclean || set.sync_state_set.is_empty())
    };
    if let Some(p) = prefer {
        if eligible(p) {
            return Some(p);
        }
    }
    set.replicas
        .keys()
        .copied()
        .filter(|&id| eligible(id))
        .max_by(|&a, &b| offset(a).cmp(&offset(b)).then(b.cmp(&a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(s: &mut ControllerState, id: u64) {
        s.apply(&Command::Register {
            cluster: "C".into(),
            broker_name: "b".into(),
            broker_id: id,
            address: format!("127.0.0.1:{}", 10000 + id),
            ha_address: None,
        })
        .unwrap();
    }

    #[test]
    fn election_bumps_epochs_and_fences_stale_proposals() {
        let mut s = ControllerState::default();
        register(&mut s, 1);
        register(&mut s, 2);
        let set = s
            .apply(&Command::Elect {
                broker_name: "b".into(),
                expected_master_epoch: 0,
                new_master: Some(1),
            })
            .unwrap();
        assert_eq!(set.master, Some(1));
        assert_eq!(set.master_epoch, 1);
        assert_eq!(set.sync_state_set, BTreeSet::from([1]));
        // A second decision taken from the same (now stale) epoch is refused.
        let again = s.apply(&Command::Elect {
            broker_name: "b".into(),
            expected_master_epoch: 0,
            new_master: Some(2),
        });
        assert_eq!(
            again,
            Err(Refusal::FencedMasterEpoch { current: 1, got: 0 })
        );
        assert_eq!(s.set("b").unwrap().master, Some(1));
    }

    #[test]
    fn only_the_master_of_the_current_epoch_alters_the_set() {
        let mut s = ControllerState::default();
        register(&mut s, 1);
        register(&mut s, 2);
        s.apply(&Command::Elect {
            broker_name: "b".into(),
            expected_master_epoch: 0,
            new_master: Some(1),
        })
        .unwrap();
        let alter = |master_id, master_epoch, new_set: &[u64]| Command::AlterSyncStateSet {
            broker_name: "b".into(),
            master_id,
            master_epoch,
            expected_sync_state_set_epoch: None,
            new_set: new_set.iter().copied().collect(),
        };
        assert!(matches!(
            s.apply(&alter(2, 1, &[1, 2])),
            Err(Refusal::NotMaster { .. })
        ));
        assert!(matches!(
            s.apply(&alter(1, 0, &[1, 2])),
            Err(Refusal::FencedMasterEpoch { .. })
        ));
        assert!(matches!(
            s.apply(&alter(1, 1, &[2])),
            Err(Refusal::InvalidReplicas(_))
        ));
        assert!(matches!(
            s.apply(&alter(1, 1, &[1, 9])),
            Err(Refusal::InvalidReplicas(_))
        ));
        let set = s.apply(&alter(1, 1, &[1, 2])).unwrap();
        assert_eq!(set.sync_state_set, BTreeSet::from([1, 2]));
        assert_eq!(set.sync_state_set_epoch, 2);
    }

    #[test]
    fn choose_master_takes_only_live_in_sync_replicas_unless_unclean() {
        let mut s = ControllerState::default();
        for id in 1..=2 {
            register(&mut s, id);
        }
        let mut set = s.set("b").unwrap().clone();
        // A third replica, beyond what registration admits, to exercise
        // the choice alone.
        let mut third = set.replicas[&2].clone();
        third.broker_id = 3;
        set.replicas.insert(3, third);
        set.master = Some(1);
        set.sync_state_set = BTreeSet::from([1, 2]);
        let offsets = |id: u64| [0, 100, 50, 900][id as usize];
        // 3 is furthest ahead but out of sync: not a candidate.
        assert_eq!(choose_master(&set, |_| true, offsets, false, None), Some(2));
        assert_eq!(
            choose_master(&set, |id| id != 2, offsets, false, None),
            None
        );
        assert_eq!(
            choose_master(&set, |id| id != 2, offsets, true, None),
            Some(3)
        );
        // A designated replica outside the set is refused when clean.
        assert_eq!(
            choose_master(&set, |_| true, offsets, false, Some(3)),
            Some(2)
        );
    }

    #[test]
    fn broker_ids_are_handed_out_once_per_check_code() {
        let mut s = ControllerState::default();
        let apply = |s: &mut ControllerState, id, code: &str| {
            s.apply(&Command::ApplyBrokerId {
                cluster: "C".into(),
                broker_name: "b".into(),
                broker_id: id,
                check_code: code.into(),
            })
        };
        assert!(apply(&mut s, 1, "x").is_ok());
        assert!(apply(&mut s, 1, "x").is_ok());
        assert!(matches!(
            apply(&mut s, 1, "y"),
            Err(Refusal::IdTaken { .. })
        ));
        assert_eq!(s.set("b").unwrap().next_broker_id(), 2);
    }

    #[test]
    fn a_third_replica_is_refused_by_name() {
        let mut s = ControllerState::default();
        register(&mut s, 1);
        register(&mut s, 2);
        // Re-registering a known replica (a new address) still works.
        register(&mut s, 2);
        let third = s.apply(&Command::Register {
            cluster: "C".into(),
            broker_name: "b".into(),
            broker_id: 3,
            address: "127.0.0.1:10003".into(),
            ha_address: None,
        });
        assert!(matches!(
            third,
            Err(Refusal::TooManyReplicas {
                limit: MAX_REPLICAS,
                ..
            })
        ));
        let apply = |s: &mut ControllerState, id, code: &str| {
            s.apply(&Command::ApplyBrokerId {
                cluster: "C".into(),
                broker_name: "b".into(),
                broker_id: id,
                check_code: code.into(),
            })
        };
        assert!(apply(&mut s, 1, "x").is_ok());
        assert!(apply(&mut s, 2, "y").is_ok());
        assert!(matches!(
            apply(&mut s, 3, "z"),
            Err(Refusal::TooManyReplicas { .. })
        ));
    }
}
