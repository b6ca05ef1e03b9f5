//! `ProducerManager`: producer groups and their live channels (from
//! heartbeats), used for connection listings and to reach a producer
//! (transaction checks) by client id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use apogee_remoting::{Channel, ChannelId};
use parking_lot::RwLock;

use super::ClientChannelInfo;

struct Member {
    info: ClientChannelInfo,
    last_update: Instant,
}

/// Producer groups. Shared by all connections.
pub struct ProducerManager {
    groups: RwLock<HashMap<String, HashMap<ChannelId, Member>>>,
    channel_expired: Duration,
}

impl ProducerManager {
    pub fn new(channel_expired: Duration) -> Self {
        ProducerManager {
            groups: RwLock::new(HashMap::new()),
            channel_expired,
        }
    }

    /// Registers or refreshes a producer channel; true when it is new.
    pub fn register(&self, group: &str, info: ClientChannelInfo) -> bool {
        let now = Instant::now();
        let mut groups = self.groups.write();
        let g = groups.entry(group.to_string()).or_default();
        match g.get_mut(&info.channel.id()) {
            Some(m) => {
                m.last_update = now;
                m.info.client_id = info.client_id;
                false
            }
            None => {
                tracing::debug!(group, client = %info.client_id, "producer registered");
                g.insert(
                    info.channel.id(),
                    Member {
                        info,
                        last_update: now,
                    },
                );
                true
            }
        }
    }

    /// Removes every channel of `client_id` from `group`; true if any was removed.
    pub fn unregister(&self, group: &str, client_id: &str) -> bool {
        let mut groups = self.groups.write();
        let Some(g) = groups.get_mut(group) else {
            return false;
        };
        let before = g.len();
        g.retain(|_, m| m.info.client_id != client_id);
        let removed = g.len() != before;
        if g.is_empty() {
            groups.remove(group);
        }
        removed
    }

    /// The group's live connections, ordered by client id.
    pub fn connections(&self, group: &str) -> Vec<ClientChannelInfo> {
        let mut v: Vec<ClientChannelInfo> = self
            .groups
            .read()
            .get(group)
            .map(|g| g.values().map(|m| m.info.clone()).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// A live channel of the client with this id, in any group.
    pub fn channel_for_client(&self, client_id: &str) -> Option<Channel> {
        self.groups
            .read()
            .values()
            .flat_map(|g| g.values())
            .find(|m| m.info.client_id == client_id && m.info.channel.is_active())
            .map(|m| m.info.channel.clone())
    }

    /// Any live channel of the group (transaction state checks).
    pub fn any_channel(&self, group: &str) -> Option<Channel> {
        self.groups
            .read()
            .get(group)?
            .values()
            .find(|m| m.info.channel.is_active())
            .map(|m| m.info.channel.clone())
    }

    pub fn groups(&self) -> Vec<String> {
        let mut v: Vec<String> = self.groups.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Drops a closed channel from every group.
    pub fn on_channel_closed(&self, id: ChannelId) {
        let mut groups = self.groups.write();
        for g in groups.values_mut() {
            g.remove(&id);
        }
        groups.retain(|_, g| !g.is_empty());
    }

    /// Drops (and closes) channels silent for longer than `channelExpiredTimeout`.
    pub fn scan_not_active(&self) -> usize {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut groups = self.groups.write();
            for (name, g) in groups.iter_mut() {
                g.retain(|_, m| {
                    let alive = now.saturating_duration_since(m.last_update) <= self.channel_expired;
                    if !alive {
                        tracing::info!(group = %name, client = %m.info.client_id, "producer channel expired");
                        closed.push(m.info.channel.clone());
                    }
                    alive
                });
            }
            groups.retain(|_, g| !g.is_empty());
        }
        for ch in &closed {
            ch.close();
        }
        closed.len()
    }
}

#[cfg(test)]
mod tests {
    use apogee_protocol::LanguageCode;
    use apogee_remoting::{
        ClientConfig, ProcessorRegistry, RemotingClient, RemotingServer, ServerConfig,
    };

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn register_lookup_expire() {
        let server = RemotingServer::bind(
            ServerConfig::new("127.0.0.1:0".parse().unwrap()),
            ProcessorRegistry::new(),
        )
        .await
        .unwrap();
        let addr = server.local_addr().to_string();
        let (c1, c2) = (
            RemotingClient::new(ClientConfig::default()),
            RemotingClient::new(ClientConfig::default()),
        );
        let (a, b) = (
            c1.channel(&addr).await.unwrap(),
            c2.channel(&addr).await.unwrap(),
        );
        let m = ProducerManager::new(Duration::from_millis(100));
        assert!(m.register(
            "pg",
            ClientChannelInfo::new(a.clone(), "A", LanguageCode::Java, 1)
        ));
        assert!(!m.register(
            "pg",
            ClientChannelInfo::new(a.clone(), "A", LanguageCode::Java, 1)
        ));
        assert_eq!(m.channel_for_client("A"), Some(a.clone()));
        assert!(m.any_channel("pg").is_some());
        assert!(m.unregister("pg", "A"));
        assert!(m.groups().is_empty());
        m.register(
            "pg",
            ClientChannelInfo::new(a.clone(), "A", LanguageCode::Java, 1),
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        m.register(
            "pg",
            ClientChannelInfo::new(b.clone(), "B", LanguageCode::Go, 1),
        );
        assert_eq!(m.scan_not_active(), 1);
        let conns = m.connections("pg");
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0].client_id, "B");
        m.on_channel_closed(b.id());
        assert!(m.connections("pg").is_empty());
    }
}
