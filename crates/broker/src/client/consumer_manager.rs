//! `ConsumerManager`: consumer groups and their live channels and
//! subscriptions, kept current by heartbeats; tells every member of a group
//! (NOTIFY_CONSUMER_IDS_CHANGED, oneway) when its membership or
//! subscriptions change, and drops channels that close or fall silent.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use apogee_protocol::body::{ConsumeFromWhere, ConsumeType, MessageModel, SubscriptionData};
use apogee_protocol::code::request_code;
use apogee_protocol::header::NotifyConsumerIdsChangedRequestHeader;
use apogee_protocol::RemotingCommand;
use apogee_remoting::{Channel, ChannelId};
use parking_lot::RwLock;

use super::ClientChannelInfo;

/// A snapshot of one consumer group.
#[derive(Debug, Clone)]
pub struct ConsumerGroupInfo {
    pub group_name: String,
    /// Live channels, ordered by client id.
    pub channels: Vec<ClientChannelInfo>,
    /// topic -> subscription.
    pub subscriptions: BTreeMap<String, SubscriptionData>,
    pub consume_type: ConsumeType,
    pub message_model: MessageModel,
    pub consume_from_where: ConsumeFromWhere,
    /// Last heartbeat of any member.
    pub last_update: Instant,
}

struct Member {
    info: ClientChannelInfo,
    last_update: Instant,
}

struct Group {
    members: HashMap<ChannelId, Member>,
    subscriptions: BTreeMap<String, SubscriptionData>,
    consume_type: ConsumeType,
    message_model: MessageModel,
    consume_from_where: ConsumeFromWhere,
    last_update: Instant,
    notify: bool,
    /// Heartbeat V2 fingerprint of the subscriptions last sent in full.
    fingerprint: Option<i32>,
}

impl Group {
    fn snapshot(&self, name: &str) -> ConsumerGroupInfo {
        let mut channels: Vec<ClientChannelInfo> =
            self.members.values().map(|m| m.info.clone()).collect();
        channels.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        ConsumerGroupInfo {
            group_name: name.to_string(),
            channels,
            subscriptions: self.subscriptions.clone(),
            consume_type: self.consume_type,
            message_model: self.message_model,
            consume_from_where: self.consume_from_where,
            last_update: self.last_update,
        }
    }

    fn channels(&self) -> Vec<Channel> {
        self.members
            .values()
            .map(|m| m.info.channel.clone())
            .collect()
    }

    /// Java `ConsumerGroupInfo.updateSubscription`: new topics and removed
    /// topics count as a change; a newer `subVersion` replaces silently.
    fn update_subscriptions(&mut self, subs: Vec<SubscriptionData>) -> bool {
        let mut updated = false;
        let mut seen = std::collections::HashSet::new();
        for sub in subs {
            seen.insert(sub.topic.clone());
            match self.subscriptions.get(&sub.topic) {
                None => {
                    self.subscriptions.insert(sub.topic.clone(), sub);
                    updated = true;
                }
                Some(old) if sub.sub_version > old.sub_version => {
                    self.subscriptions.insert(sub.topic.clone(), sub);
                }
                Some(_) => {}
            }
        }
        let before = self.subscriptions.len();
        self.subscriptions.retain(|t, _| seen.contains(t));
        updated || self.subscriptions.len() != before
    }
}

/// Consumer groups. Shared by all connections.
pub struct ConsumerManager {
    groups: RwLock<HashMap<String, Group>>,
    channel_expired: Duration,
}

impl ConsumerManager {
    /// `channel_expired`: channels without a heartbeat for this long are
    /// dropped by [`ConsumerManager::scan_not_active`] (`channelExpiredTimeout`).
    pub fn new(channel_expired: Duration) -> Self {
        ConsumerManager {
            groups: RwLock::new(HashMap::new()),
            channel_expired,
        }
    }

    /// Registers (or refreshes) a consumer from a heartbeat; notifies the
    /// group's members when a channel joined or subscriptions changed.
    /// Returns whether anything changed.
    pub fn register(
        &self,
        group: &str,
        info: ClientChannelInfo,
        consume_type: ConsumeType,
        message_model: MessageModel,
        consume_from_where: ConsumeFromWhere,
        subscriptions: Vec<SubscriptionData>,
    ) -> bool {
        self.register_with_notify(
            group,
            info,
            consume_type,
            message_model,
            consume_from_where,
            Some(subscriptions),
            true,
        )
    }

    /// [`ConsumerManager::register`] with the group's
    /// `notifyConsumerIdsChangedEnable` setting; `subscriptions` is `None`
    /// for a heartbeat V2 that omitted them (kept as they are).
    #[allow(clippy::too_many_arguments)]
    pub fn register_with_notify(
        &self,
        group: &str,
        info: ClientChannelInfo,
        consume_type: ConsumeType,
        message_model: MessageModel,
        consume_from_where: ConsumeFromWhere,
        subscriptions: Option<Vec<SubscriptionData>>,
        notify: bool,
    ) -> bool {
        let now = Instant::now();
        let (changed, to_notify) = {
            let mut groups = self.groups.write();
            let g = groups.entry(group.to_string()).or_insert_with(|| Group {
                members: HashMap::new(),
                subscriptions: BTreeMap::new(),
                consume_type,
                message_model,
                consume_from_where,
                last_update: now,
                notify,
                fingerprint: None,
            });
            g.consume_type = consume_type;
            g.message_model = message_model;
            g.consume_from_where = consume_from_where;
            g.notify = notify;
            g.last_update = now;
            let id = info.channel.id();
            let joined = match g.members.get_mut(&id) {
                Some(m) => {
                    if m.info.client_id != info.client_id {
                        tracing::warn!(group, old = %m.info.client_id, new = %info.client_id, "channel changed its client id");
                        m.info = info;
                    }
                    m.last_update = now;
                    false
                }
                None => {
                    tracing::info!(group, client = %info.client_id, peer = %info.channel.peer_addr(), "consumer joined");
                    g.members.insert(
                        id,
                        Member {
                            info,
                            last_update: now,
                        },
                    );
                    true
                }
            };
            let subs_changed = subscriptions.is_some_and(|s| g.update_subscriptions(s));
            let changed = joined || subs_changed;
            let to_notify = if changed && notify {
                g.channels()
            } else {
                Vec::new()
            };
            (changed, to_notify)
        };
        notify_channels(group, &to_notify);
        changed
    }

    /// Removes `client_id` from `group` (UNREGISTER_CLIENT); remaining
    /// members are notified. Returns whether a member was removed.
    pub fn unregister(&self, group: &str, client_id: &str) -> bool {
        let to_notify = {
            let mut groups = self.groups.write();
            let Some(g) = groups.get_mut(group) else {
                return false;
            };
            let before = g.members.len();
            g.members.retain(|_, m| m.info.client_id != client_id);
            if g.members.len() == before {
                return false;
            }
            tracing::info!(group, client = client_id, "consumer unregistered");
            let rest = if g.notify { g.channels() } else { Vec::new() };
            if g.members.is_empty() {
                groups.remove(group);
            }
            rest
        };
        notify_channels(group, &to_notify);
        true
    }

    /// Drops a closed channel from every group. Returns the affected groups.
    pub fn on_channel_closed(&self, id: ChannelId) -> Vec<String> {
        self.remove_where(|chid, _| chid == id, "connection closed")
    }

    /// Drops (and closes) channels whose last heartbeat is older than
    /// `channelExpiredTimeout`. Returns the affected groups.
    pub fn scan_not_active(&self) -> Vec<String> {
        let now = Instant::now();
        let limit = self.channel_expired;
        self.remove_where(
            |_, m| now.saturating_duration_since(m.last_update) > limit,
            "no heartbeat within channelExpiredTimeout",
        )
    }

    fn remove_where(&self, pred: impl Fn(ChannelId, &Member) -> bool, why: &str) -> Vec<String> {
        let mut notices: Vec<(String, Vec<Channel>)> = Vec::new();
        let mut closed = Vec::new();
        let mut affected = Vec::new();
        {
            let mut groups = self.groups.write();
            for (name, g) in groups.iter_mut() {
                let gone: Vec<ChannelId> = g
                    .members
                    .iter()
                    .filter(|(id, m)| pred(**id, m))
                    .map(|(id, _)| *id)
                    .collect();
                if gone.is_empty() {
                    continue;
                }
                for id in gone {
                    if let Some(m) = g.members.remove(&id) {
                        tracing::info!(group = %name, client = %m.info.client_id, reason = why, "consumer removed");
                        closed.push(m.info.channel);
                    }
                }
                affected.push(name.clone());
                if !g.members.is_empty() && g.notify {
                    notices.push((name.clone(), g.channels()));
                }
            }
            groups.retain(|_, g| !g.members.is_empty());
        }
        // Outside the lock: closing and notifying touch other tasks' queues.
        for ch in &closed {
            if ch.is_active() {
                ch.close();
            }
        }
        for (name, chans) in &notices {
            notify_channels(name, chans);
        }
        affected.sort();
        affected.dedup();
        affected
    }

    /// The heartbeat V2 fingerprint recorded for the group.
    pub fn fingerprint(&self, group: &str) -> Option<i32> {
        self.groups.read().get(group)?.fingerprint
    }

    /// Records the fingerprint of a full heartbeat V2.
    pub fn set_fingerprint(&self, group: &str, fingerprint: i32) {
        if let Some(g) = self.groups.write().get_mut(group) {
            g.fingerprint = Some(fingerprint);
        }
    }

    pub fn find_subscription(&self, group: &str, topic: &str) -> Option<SubscriptionData> {
        self.groups
            .read()
            .get(group)?
            .subscriptions
            .get(topic)
            .cloned()
    }

    pub fn group_info(&self, group: &str) -> Option<ConsumerGroupInfo> {
        self.groups.read().get(group).map(|g| g.snapshot(group))
    }

    /// Client ids of the group's live channels, sorted.
    pub fn client_ids(&self, group: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .groups
            .read()
            .get(group)
            .map(|g| {
                g.members
                    .values()
                    .map(|m| m.info.client_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v.dedup();
        v
    }

    /// The channel of one client of a group.
    pub fn find_channel(&self, group: &str, client_id: &str) -> Option<ClientChannelInfo> {
        self.groups
            .read()
            .get(group)?
            .members
            .values()
            .find(|m| m.info.client_id == client_id)
            .map(|m| m.info.clone())
    }

    pub fn groups(&self) -> Vec<String> {
        let mut v: Vec<String> = self.groups.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Groups with a subscription to `topic` (Java `queryTopicConsumeByWho`).
    pub fn groups_by_topic(&self, topic: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .groups
            .read()
            .iter()
            .filter(|(_, g)| g.subscriptions.contains_key(topic))
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }
}

/// Sends NOTIFY_CONSUMER_IDS_CHANGED to each channel; never waits (a peer
/// that is not reading just misses it, as with Java's oneway).
fn notify_channels(group: &str, channels: &[Channel]) {
    if channels.is_empty() {
        return;
    }
    let header = NotifyConsumerIdsChangedRequestHeader {
        consumer_group: group.to_string(),
        ..Default::default()
    };
    for ch in channels {
        let cmd = RemotingCommand::request(request_code::NOTIFY_CONSUMER_IDS_CHANGED)
            .with_header(&header);
        if let Err(e) = ch.try_send_oneway(cmd) {
            tracing::debug!(group, peer = %ch.peer_addr(), error = %e, "cannot notify consumer of id change");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use apogee_protocol::LanguageCode;
    use apogee_remoting::{
        processor_fn, ClientConfig, ProcessorRegistry, RemotingClient, RemotingServer, ServerConfig,
    };
    use tokio::sync::mpsc;

    use super::*;

    /// A server that records NOTIFY_CONSUMER_IDS_CHANGED per connection,
    /// and client channels to it standing in for consumer connections.
    struct Peer {
        server: RemotingServer,
        notified: mpsc::UnboundedReceiver<(u16, String)>,
        clients: Vec<RemotingClient>,
    }

    impl Peer {
        async fn new() -> Peer {
            let registry = ProcessorRegistry::new();
            let (tx, rx) = mpsc::unbounded_channel();
            registry.register(
                request_code::NOTIFY_CONSUMER_IDS_CHANGED,
                processor_fn(move |ctx, req: RemotingCommand| {
                    let tx = tx.clone();
                    async move {
                        let group = req.ext("consumerGroup").unwrap_or_default().to_string();
                        let _ = tx.send((ctx.peer_addr().port(), group));
                        Ok(None)
                    }
                }),
            );
            let server =
                RemotingServer::bind(ServerConfig::new("127.0.0.1:0".parse().unwrap()), registry)
                    .await
                    .unwrap();
            Peer {
                server,
                notified: rx,
                clients: Vec::new(),
            }
        }

        async fn channel(&mut self) -> Channel {
            let c = RemotingClient::new(ClientConfig::default());
            let ch = c
                .channel(&self.server.local_addr().to_string())
                .await
                .unwrap();
            self.clients.push(c);
            ch
        }

        /// Local ports of the channels notified within a short wait.
        async fn notified_ports(&mut self) -> Vec<u16> {
            let mut v = Vec::new();
            while let Ok(Some((port, _))) =
                tokio::time::timeout(Duration::from_millis(300), self.notified.recv()).await
            {
                v.push(port);
            }
            v.sort();
            v
        }
    }

    fn info(ch: &Channel, id: &str) -> ClientChannelInfo {
        ClientChannelInfo::new(ch.clone(), id, LanguageCode::Java, 400)
    }

    fn subs(topics: &[&str]) -> Vec<SubscriptionData> {
        topics
            .iter()
            .map(|t| SubscriptionData::tag(*t, "*"))
            .collect()
    }

    fn reg(m: &ConsumerManager, ch: &Channel, id: &str, topics: &[&str]) -> bool {
        m.register(
            "g",
            info(ch, id),
            ConsumeType::ConsumePassively,
            MessageModel::Clustering,
            ConsumeFromWhere::ConsumeFromLastOffset,
            subs(topics),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn membership_changes_notify_every_member() {
        let mut peer = Peer::new().await;
        let (a, b) = (peer.channel().await, peer.channel().await);
        let m = ConsumerManager::new(Duration::from_secs(120));
        assert!(reg(&m, &a, "A", &["T"]));
        assert_eq!(peer.notified_ports().await, vec![a.local_addr().port()]);
        assert!(reg(&m, &b, "B", &["T"]));
        let mut both = vec![a.local_addr().port(), b.local_addr().port()];
        both.sort();
        assert_eq!(peer.notified_ports().await, both);
        // Same heartbeat again: nothing changes, nobody is told.
        assert!(!reg(&m, &a, "A", &["T"]));
        assert!(peer.notified_ports().await.is_empty());
        assert_eq!(m.client_ids("g"), vec!["A", "B"]);
        // B leaves: A is told.
        assert!(m.unregister("g", "B"));
        assert!(!m.unregister("g", "B"));
        assert_eq!(peer.notified_ports().await, vec![a.local_addr().port()]);
        // Dropping a subscription is a change too.
        assert!(reg(&m, &a, "A", &["T", "U"]));
        peer.notified_ports().await;
        assert!(reg(&m, &a, "A", &["U"]));
        assert!(m.find_subscription("g", "T").is_none());
        assert_eq!(m.groups_by_topic("U"), vec!["g"]);
        // The last member closing removes the group.
        assert_eq!(m.on_channel_closed(a.id()), vec!["g".to_string()]);
        assert!(m.group_info("g").is_none());
        assert!(m.groups().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn newer_sub_version_replaces_silently_and_v2_keeps_subscriptions() {
        let mut peer = Peer::new().await;
        let a = peer.channel().await;
        let m = ConsumerManager::new(Duration::from_secs(120));
        reg(&m, &a, "A", &["T"]);
        peer.notified_ports().await;
        let mut newer = SubscriptionData::tag("T", "x || y");
        newer.sub_version += 1_000;
        let changed = m.register(
            "g",
            info(&a, "A"),
            ConsumeType::ConsumePassively,
            MessageModel::Clustering,
            ConsumeFromWhere::ConsumeFromFirstOffset,
            vec![newer],
        );
        assert!(!changed);
        assert_eq!(m.find_subscription("g", "T").unwrap().sub_string, "x || y");
        let gi = m.group_info("g").unwrap();
        assert_eq!(
            gi.consume_from_where,
            ConsumeFromWhere::ConsumeFromFirstOffset
        );
        // A heartbeat without subscriptions leaves them alone.
        m.register_with_notify(
            "g",
            info(&a, "A"),
            ConsumeType::ConsumePassively,
            MessageModel::Clustering,
            ConsumeFromWhere::ConsumeFromFirstOffset,
            None,
            true,
        );
        assert!(m.find_subscription("g", "T").is_some());
        m.set_fingerprint("g", 42);
        assert_eq!(m.fingerprint("g"), Some(42));
        assert!(peer.notified_ports().await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_members_expire_and_are_closed() {
        let mut peer = Peer::new().await;
        let (a, b) = (peer.channel().await, peer.channel().await);
        let m = Arc::new(ConsumerManager::new(Duration::from_millis(100)));
        reg(&m, &a, "A", &["T"]);
        tokio::time::sleep(Duration::from_millis(150)).await;
        reg(&m, &b, "B", &["T"]);
        // Scan at once: A is past the limit, B has just been seen.
        assert_eq!(m.scan_not_active(), vec!["g".to_string()]);
        assert_eq!(m.client_ids("g"), vec!["B"]);
        assert!(!a.is_active(), "expired channel is closed");
        // B was told of its own arrival and of A's removal.
        let ports = peer.notified_ports().await;
        assert!(
            ports
                .iter()
                .filter(|p| **p == b.local_addr().port())
                .count()
                >= 2,
            "{ports:?}"
        );
        assert!(m.find_channel("g", "B").is_some());
        assert!(m.find_channel("g", "A").is_none());
    }
}
