//! Controller settings, read with RocketMQ's `ControllerConfig` keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ControllerError;

/// One member of the controller group (`controllerDLegerPeers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The name given in the peer list (`n0`).
    pub name: String,
    /// Where its Raft RPCs are served (`host:port`).
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// `listenPort`: where brokers and admin tools connect (9878). 0 picks a
    /// free port.
    pub listen_port: u16,
    /// `bindAddress`.
    pub bind_address: String,
    /// `controllerDLegerGroup`: the group's name.
    pub group: String,
    /// `controllerDLegerPeers`: `n0-host:port;n1-host:port;n2-host:port`.
    pub peers: Vec<Peer>,
    /// `controllerDLegerSelfId`: which of the peers this process is.
    pub self_id: String,
    /// `controllerStorePath`: the Raft log, vote and snapshot.
    pub store_path: PathBuf,
    /// `enableElectUncleanMaster`: elect a replica outside the SyncStateSet
    /// when no member is alive (may lose acknowledged messages).
    pub enable_elect_unclean_master: bool,
    /// `scanNotActiveBrokerInterval` (ms): how often the leader looks for
    /// masters whose heartbeats stopped.
    pub scan_not_active_broker_interval: Duration,
    /// The heartbeat timeout of a broker that does not send its own
    /// (`heartbeatTimeoutMills` in BROKER_HEARTBEAT wins when present).
    pub default_broker_heartbeat_timeout: Duration,
    /// Raft election timeout, lower bound (ms; openraft's setting).
    pub election_timeout_min: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        ControllerConfig {
            listen_port: 9878,
            bind_address: "0.0.0.0".into(),
            group: "DefaultControllerGroup".into(),
            peers: vec![Peer {
                name: "n0".into(),
                addr: "127.0.0.1:9877".into(),
            }],
            self_id: "n0".into(),
            store_path: home.join("DledgerController"),
            enable_elect_unclean_master: false,
            scan_not_active_broker_interval: Duration::from_secs(5),
            default_broker_heartbeat_timeout: Duration::from_secs(10),
            election_timeout_min: Duration::from_millis(1000),
        }
    }
}

fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ControllerError> {
    v.parse()
        .map_err(|_| ControllerError::config(key, format!("'{v}' is not a valid value")))
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ControllerError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ControllerError::config(
            key,
            format!("'{v}' is not true or false"),
        )),
    }
}

/// Parses `n0-host:port;n1-host:port`.
pub fn parse_peers(v: &str) -> Result<Vec<Peer>, ControllerError> {
    let key = "controllerDLegerPeers";
    let mut peers: Vec<Peer> = Vec::new();
    for item in v.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, addr)) = item.split_once('-') else {
            return Err(ControllerError::config(
                key,
                format!("'{item}' is not id-host:port (n0-127.0.0.1:9877)"),
            ));
        };
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if name.is_empty() || !port_ok {
            return Err(ControllerError::config(
                key,
                format!("'{item}' is not id-host:port (n0-127.0.0.1:9877)"),
            ));
        }
        if peers.iter().any(|p| p.name == name) {
            return Err(ControllerError::config(
                key,
                format!("peer id '{name}' appears twice"),
            ));
        }
        peers.push(Peer {
            name: name.into(),
            addr: addr.into(),
        });
    }
    if peers.is_empty() {
        return Err(ControllerError::config(key, "no peer given"));
    }
    Ok(peers)
}

impl ControllerConfig {
    /// Applies `key=value` pairs; returns the unknown keys. A bad value is an
    /// error naming its key.
    pub fn apply(
        &mut self,
        props: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, ControllerError> {
        let mut unknown = Vec::new();
        for (key, value) in props {
            let v = value.trim();
            match key.as_str() {
                "listenPort" => self.listen_port = parse(key, v)?,
                "bindAddress" => self.bind_address = v.into(),
                "controllerDLegerGroup" => self.group = v.into(),
                "controllerDLegerPeers" => self.peers = parse_peers(v)?,
                "controllerDLegerSelfId" => self.self_id = v.into(),
                "controllerStorePath" => self.store_path = PathBuf::from(v),
                "enableElectUncleanMaster" => {
                    self.enable_elect_unclean_master = parse_bool(key, v)?
                }
                "scanNotActiveBrokerInterval" => {
                    self.scan_not_active_broker_interval = Duration::from_millis(parse(key, v)?)
                }
                "brokerHeartbeatTimeoutMills" => {
                    self.default_broker_heartbeat_timeout = Duration::from_millis(parse(key, v)?)
                }
                "electionTimeoutMills" => {
                    self.election_timeout_min = Duration::from_millis(parse(key, v)?)
                }
                _ => unknown.push(key.clone()),
            }
        }
        self.check()?;
        Ok(unknown)
    }

    fn check(&self) -> Result<(), ControllerError> {
        if self.self_index().is_none() {
            return Err(ControllerError::config(
                "controllerDLegerSelfId",
                format!(
                    "'{}' is not one of the peers in controllerDLegerPeers ({})",
                    self.self_id,
                    self.peers_string()
                ),
            ));
        }
        if self.scan_not_active_broker_interval.is_zero() {
            return Err(ControllerError::config(
                "scanNotActiveBrokerInterval",
                "must be greater than 0",
            ));
        }
        if self.election_timeout_min < Duration::from_millis(100) {
            return Err(ControllerError::config(
                "electionTimeoutMills",
                "must be at least 100",
            ));
        }
        Ok(())
    }

    /// This node's Raft id: its position in the peer list (every member
    /// must be given the same list).
    pub fn self_index(&self) -> Option<u64> {
        self.peers
            .iter()
            .position(|p| p.name == self.self_id)
            .map(|i| i as u64)
    }

    pub fn peers_string(&self) -> String {
        self.peers
            .iter()
            .map(|p| format!("{}-{}", p.name, p.addr))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The effective configuration (for `-p`).
    pub fn to_properties(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("listenPort".into(), self.listen_port.to_string());
        m.insert("bindAddress".into(), self.bind_address.clone());
        m.insert("controllerDLegerGroup".into(), self.group.clone());
        m.insert("controllerDLegerPeers".into(), self.peers_string());
        m.insert("controllerDLegerSelfId".into(), self.self_id.clone());
        m.insert(
            "controllerStorePath".into(),
            self.store_path.display().to_string(),
        );
        m.insert(
            "enableElectUncleanMaster".into(),
            self.enable_elect_unclean_master.to_string(),
        );
        m.insert(
            "scanNotActiveBrokerInterval".into(),
            self.scan_not_active_broker_interval.as_millis().to_string(),
        );
        m.insert(
            "brokerHeartbeatTimeoutMills".into(),
            self.default_broker_heartbeat_timeout
                .as_millis()
                .to_string(),
        );
        m.insert(
            "electionTimeoutMills".into(),
            self.election_timeout_min.as_millis().to_string(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_name_the_key() {
        let p = parse_peers("n0-127.0.0.1:9877;n1-127.0.0.1:9878; n2-h:1").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].addr, "h:1");
        for bad in ["", "n0", "n0-host", "n0-host:0", "n0-h:1;n0-h:2", "-h:1"] {
            let e = parse_peers(bad).unwrap_err().to_string();
            assert!(e.contains("controllerDLegerPeers"), "{bad}: {e}");
        }
    }

    #[test]
    fn self_id_must_be_a_peer() {
        let mut c = ControllerConfig::default();
        let props = BTreeMap::from([
            ("controllerDLegerPeers".into(), "n0-h:1;n1-h:2".into()),
            ("controllerDLegerSelfId".into(), "n2".into()),
        ]);
        let e = c.apply(&props).unwrap_err().to_string();
        assert!(e.contains("controllerDLegerSelfId"), "{e}");
    }
}
