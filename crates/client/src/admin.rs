//! The admin client: what `apogee admin` (and mqadmin) does — cluster and
//! topic listings, routes, topic and consumer statistics, topic and group
//! maintenance, message lookups, offset resets, broker config and the
//! NameServer KV store.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use apogee_protocol::body::{
    ClusterInfo, ConsumeStats, ConsumerConnection, ConsumerRunningInfo, KVTable,
    ProducerConnection, ResetOffsetBody, SubscriptionGroupConfig, SubscriptionGroupWrapper,
    TopicConfig, TopicConfigSerializeWrapper, TopicList, TopicRouteData, TopicStatsTable,
};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::PullSysFlag;
use apogee_protocol::header::CommandHeader;
use apogee_protocol::header::{
    AddWritePermOfBrokerRequestHeader, AddWritePermOfBrokerResponseHeader,
    CreateTopicRequestHeader, DeleteKVConfigRequestHeader, DeleteSubscriptionGroupRequestHeader,
    DeleteTopicFromNamesrvRequestHeader, DeleteTopicRequestHeader, GetConsumeStatsRequestHeader,
    GetConsumerConnectionListRequestHeader, GetConsumerRunningInfoRequestHeader,
    GetKVConfigRequestHeader, GetKVConfigResponseHeader, GetKVListByNamespaceRequestHeader,
    GetProducerConnectionListRequestHeader, GetTopicStatsInfoRequestHeader,
    GetTopicsByClusterRequestHeader, PullMessageRequestHeader, PutKVConfigRequestHeader,
    QueryMessageRequestHeader, ResetOffsetRequestHeader, ViewMessageRequestHeader,
    WipeWritePermOfBrokerRequestHeader, WipeWritePermOfBrokerResponseHeader,
};
use apogee_protocol::message::{decode_offset_msg_id, decode_stored_many};
use apogee_protocol::{java_properties, topic, RemotingCommand};
use apogee_remoting::ProcessorRegistry;
use std::sync::Arc;

use crate::api::PullStatus;
use crate::error::{ClientError, Result};
use crate::instance::{ClientInstance, ClientOptions, MASTER_ID};
use crate::message::{MessageExt, MessageQueue};

/// Group name the admin uses for its one-off pulls (Java tools use this too).
pub const TOOLS_CONSUMER_GROUP: &str = "TOOLS_CONSUMER";

/// Builds an [`AdminClient`].
#[derive(Debug, Default, Clone)]
pub struct AdminClientBuilder {
    options: ClientOptions,
}

impl AdminClientBuilder {
    pub fn namesrv_addr(mut self, addr: impl Into<String>) -> Self {
        self.options.namesrv_addr = addr.into();
        self
    }

    /// Timeout of every admin call.
    pub fn api_timeout(mut self, t: Duration) -> Self {
        self.options.api_timeout = t;
        self
    }

    pub fn options(mut self, options: ClientOptions) -> Self {
        self.options = options;
        self
    }

    pub fn build(self) -> Result<AdminClient> {
        Ok(AdminClient {
            instance: ClientInstance::new(self.options, ProcessorRegistry::new())?,
        })
    }
}

/// One broker's answer inside a cluster-wide operation.
#[derive(Debug)]
pub struct BrokerOutcome {
    pub broker_addr: String,
    pub result: Result<()>,
}

/// Administration calls against NameServers and brokers.
#[derive(Debug, Clone)]
pub struct AdminClient {
    instance: Arc<ClientInstance>,
}

fn body_or_empty(resp: &apogee_protocol::RemotingCommand) -> &[u8] {
    resp.body.as_deref().unwrap_or(b"{}")
}

impl AdminClient {
    pub fn builder() -> AdminClientBuilder {
        AdminClientBuilder::default()
    }

    /// The underlying instance (for raw calls not wrapped here).
    pub fn instance(&self) -> &Arc<ClientInstance> {
        &self.instance
    }

    /// Closes the connections.
    pub async fn shutdown(&self) {
        self.instance.close().await;
    }

    // ---- NameServer views -------------------------------------------------

    /// GET_BROKER_CLUSTER_INFO.
    pub async fn cluster_info(&self) -> Result<ClusterInfo> {
        let resp = self
            .instance
            .invoke_namesrv_ok(ClientInstance::request(
                request_code::GET_BROKER_CLUSTER_INFO,
            ))
            .await?;
        Ok(ClusterInfo::decode(body_or_empty(&resp))?)
    }

    /// GET_ALL_TOPIC_LIST_FROM_NAMESERVER.
    pub async fn topic_list(&self) -> Result<BTreeSet<String>> {
        let resp = self
            .instance
            .invoke_namesrv_ok(ClientInstance::request(
                request_code::GET_ALL_TOPIC_LIST_FROM_NAMESERVER,
            ))
            .await?;
        Ok(TopicList::decode(body_or_empty(&resp))?.topic_list)
    }

    /// GET_TOPICS_BY_CLUSTER.
    pub async fn topics_by_cluster(&self, cluster: &str) -> Result<BTreeSet<String>> {
        let h = GetTopicsByClusterRequestHeader {
            cluster: cluster.to_string(),
        };
        let resp = self
            .instance
            .invoke_namesrv_ok(ClientInstance::request_with(
                request_code::GET_TOPICS_BY_CLUSTER,
                &h,
            ))
            .await?;
        Ok(TopicList::decode(body_or_empty(&resp))?.topic_list)
    }

    /// GET_ROUTEINFO_BY_TOPIC (also caches the broker addresses).
    pub async fn topic_route(&self, topic: &str) -> Result<TopicRouteData> {
        let (route, _) = self.instance.update_route(topic).await?;
        Ok(TopicRouteData::clone(&route))
    }

    /// Master addresses of a cluster's brokers, sorted.
    pub async fn cluster_master_addrs(&self, cluster: &str) -> Result<Vec<String>> {
        let info = self.cluster_info().await?;
        let names = info
            .cluster_addr_table
            .get(cluster)
            .ok_or_else(|| ClientError::InvalidArgument(format!("unknown cluster {cluster}")))?;
        let mut out: Vec<String> = names
            .iter()
            .filter_map(|n| info.broker_addr_table.get(n))
            .filter_map(|bd| bd.broker_addrs.get(&MASTER_ID).cloned())
            .collect();
        out.sort();
        Ok(out)
    }

    fn route_masters(route: &TopicRouteData) -> Vec<(String, String)> {
        route
            .broker_datas
            .iter()
            .filter_map(|bd| {
                bd.select_broker_addr()
                    .map(|a| (bd.broker_name.clone(), a.to_string()))
            })
            .collect()
    }

    // ---- topics -----------------------------------------------------------

    /// GET_TOPIC_STATS_INFO from every broker of the topic, merged.
    pub async fn topic_stats(&self, topic: &str) -> Result<TopicStatsTable> {
        let route = self.topic_route(topic).await?;
        let mut merged = TopicStatsTable::default();
        for (_, addr) in Self::route_masters(&route) {
            let h = GetTopicStatsInfoRequestHeader {
                topic: topic.to_string(),
                ..Default::default()
            };
            let resp = self
                .instance
                .invoke_ok(
                    &addr,
                    ClientInstance::request_with(request_code::GET_TOPIC_STATS_INFO, &h),
                )
                .await?;
            let t = TopicStatsTable::decode(body_or_empty(&resp))?;
            merged.offset_table.extend(t.offset_table);
            if let Some(tps) = t.topic_put_tps {
                *merged.topic_put_tps.get_or_insert(0.0) += tps;
            }
        }
        Ok(merged)
    }

    /// UPDATE_AND_CREATE_TOPIC on one broker.
    pub async fn create_topic(&self, broker_addr: &str, config: &TopicConfig) -> Result<()> {
        topic::validate_topic(&config.topic_name)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let attributes = (!config.attributes.is_empty()).then(|| {
            config
                .attributes
                .iter()
                .map(|(k, v)| format!("+{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        });
        let h = CreateTopicRequestHeader {
            topic: config.topic_name.clone(),
            default_topic: crate::instance::AUTO_CREATE_TOPIC_KEY.to_string(),
            read_queue_nums: config.read_queue_nums,
            write_queue_nums: config.write_queue_nums,
            perm: config.perm,
            topic_filter_type: config.topic_filter_type.java_name().to_string(),
            topic_sys_flag: Some(config.topic_sys_flag),
            order: config.order,
            attributes,
            ..Default::default()
        };
        self.instance
            .invoke_ok(
                broker_addr,
                ClientInstance::request_with(request_code::UPDATE_AND_CREATE_TOPIC, &h),
            )
            .await
            .map(|_| ())
    }

    /// UPDATE_AND_CREATE_TOPIC on every master of `cluster`.
    pub async fn create_topic_in_cluster(
        &self,
        cluster: &str,
        config: &TopicConfig,
    ) -> Result<Vec<BrokerOutcome>> {
        let mut out = Vec::new();
        for addr in self.cluster_master_addrs(cluster).await? {
            let result = self.create_topic(&addr, config).await;
            out.push(BrokerOutcome {
                broker_addr: addr,
                result,
            });
        }
        Ok(out)
    }

    /// DELETE_TOPIC_IN_BROKER on every master of `cluster`, then
    /// DELETE_TOPIC_IN_NAMESRV on every NameServer (mqadmin deleteTopic).
    pub async fn delete_topic(&self, topic: &str, cluster: &str) -> Result<()> {
        let h = DeleteTopicRequestHeader {
            topic: topic.to_string(),
            ..Default::default()
        };
        for addr in self.cluster_master_addrs(cluster).await? {
            self.instance
                .invoke_ok(
                    &addr,
                    ClientInstance::request_with(request_code::DELETE_TOPIC_IN_BROKER, &h),
                )
                .await?;
        }
        let nh = DeleteTopicFromNamesrvRequestHeader {
            topic: topic.to_string(),
            cluster_name: Some(cluster.to_string()),
            ..Default::default()
        };
        self.instance
            .invoke_all_namesrv_ok(ClientInstance::request_with(
                request_code::DELETE_TOPIC_IN_NAMESRV,
                &nh,
            ))
            .await
    }

    /// GET_ALL_TOPIC_CONFIG of one broker.
    pub async fn broker_topic_configs(
        &self,
        broker_addr: &str,
    ) -> Result<TopicConfigSerializeWrapper> {
        let resp = self
            .instance
            .invoke_ok(
                broker_addr,
                ClientInstance::request(request_code::GET_ALL_TOPIC_CONFIG),
            )
            .await?;
        Ok(TopicConfigSerializeWrapper::decode(body_or_empty(&resp))?)
    }

    // ---- subscription groups ---------------------------------------------

    /// UPDATE_AND_CREATE_SUBSCRIPTIONGROUP on one broker.
    pub async fn create_subscription_group(
        &self,
        broker_addr: &str,
        config: &SubscriptionGroupConfig,
    ) -> Result<()> {
        let cmd = ClientInstance::request(request_code::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP)
            .with_body(config.encode());
        self.instance.invoke_ok(broker_addr, cmd).await.map(|_| ())
    }

    /// SET_MESSAGE_REQUEST_MODE on one broker: whether `group` PULLs or
    /// POPs `topic` when it leaves rebalancing to the broker.
    pub async fn set_message_request_mode(
        &self,
        broker_addr: &str,
        body: &apogee_protocol::body::SetMessageRequestModeRequestBody,
    ) -> Result<()> {
        let cmd = ClientInstance::request(request_code::SET_MESSAGE_REQUEST_MODE)
            .with_body(body.encode());
        self.instance.invoke_ok(broker_addr, cmd).await.map(|_| ())
    }

    /// … on every master of `cluster`.
    pub async fn create_subscription_group_in_cluster(
        &self,
        cluster: &str,
        config: &SubscriptionGroupConfig,
    ) -> Result<Vec<BrokerOutcome>> {
        let mut out = Vec::new();
        for addr in self.cluster_master_addrs(cluster).await? {
            let result = self.create_subscription_group(&addr, config).await;
            out.push(BrokerOutcome {
                broker_addr: addr,
                result,
            });
        }
        Ok(out)
    }

    /// DELETE_SUBSCRIPTIONGROUP on one broker.
    pub async fn delete_subscription_group(
        &self,
        broker_addr: &str,
        group: &str,
        clean_offset: bool,
    ) -> Result<()> {
        let h = DeleteSubscriptionGroupRequestHeader {
            group_name: group.to_string(),
            clean_offset,
            ..Default::default()
        };
        self.instance
            .invoke_ok(
                broker_addr,
                ClientInstance::request_with(request_code::DELETE_SUBSCRIPTIONGROUP, &h),
            )
            .await
            .map(|_| ())
    }

    /// … on every master of `cluster`.
    pub async fn delete_subscription_group_in_cluster(
        &self,
        cluster: &str,
        group: &str,
        clean_offset: bool,
    ) -> Result<Vec<BrokerOutcome>> {
        let mut out = Vec::new();
        for addr in self.cluster_master_addrs(cluster).await? {
            let result = self
                .delete_subscription_group(&addr, group, clean_offset)
                .await;
            out.push(BrokerOutcome {
                broker_addr: addr,
                result,
            });
        }
        Ok(out)
    }

    /// GET_ALL_SUBSCRIPTIONGROUP_CONFIG of one broker.
    pub async fn broker_subscription_groups(
        &self,
        broker_addr: &str,
    ) -> Result<SubscriptionGroupWrapper> {
        let resp = self
            .instance
            .invoke_ok(
                broker_addr,
                ClientInstance::request(request_code::GET_ALL_SUBSCRIPTIONGROUP_CONFIG),
            )
            .await?;
        Ok(SubscriptionGroupWrapper::decode(body_or_empty(&resp))?)
    }

    // ---- consumers --------------------------------------------------------

    /// The brokers to ask about a group: those of `%RETRY%<group>`, else
    /// those of `topic`.
    async fn group_brokers(
        &self,
        group: &str,
        topic: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        let retry = topic::retry_topic(group);
        match self.topic_route(&retry).await {
            Ok(r) => Ok(Self::route_masters(&r)),
            Err(e) => match topic {
                Some(t) => Ok(Self::route_masters(&self.topic_route(t).await?)),
                None => Err(e),
            },
        }
    }

    /// GET_CONSUME_STATS from every broker of the group, merged. Use
    /// [`consume_lag`] for the total lag.
    pub async fn consume_stats(&self, group: &str, topic: Option<&str>) -> Result<ConsumeStats> {
        let mut merged = ConsumeStats::default();
        let mut brokers = self.group_brokers(group, topic).await?;
        if let Some(t) = topic {
            if let Ok(r) = self.topic_route(t).await {
                brokers.extend(Self::route_masters(&r));
            }
        }
        brokers.sort();
        brokers.dedup();
        for (_, addr) in brokers {
            let h = GetConsumeStatsRequestHeader {
                consumer_group: group.to_string(),
                topic: topic.map(str::to_string),
                ..Default::default()
            };
            let resp = self
                .instance
                .invoke_ok(
                    &addr,
                    ClientInstance::request_with(request_code::GET_CONSUME_STATS, &h),
                )
                .await?;
            let s = ConsumeStats::decode(body_or_empty(&resp))?;
            merged.offset_table.extend(s.offset_table);
            merged.consume_tps += s.consume_tps;
        }
        Ok(merged)
    }

    /// GET_CONSUMER_CONNECTION_LIST (from the first broker that knows the group).
    pub async fn consumer_connections(&self, group: &str) -> Result<ConsumerConnection> {
        let h = GetConsumerConnectionListRequestHeader {
            consumer_group: group.to_string(),
            ..Default::default()
        };
        let mut last = None;
        for (_, addr) in self.group_brokers(group, None).await? {
            match self
                .instance
                .invoke_ok(
                    &addr,
                    ClientInstance::request_with(request_code::GET_CONSUMER_CONNECTION_LIST, &h),
                )
                .await
            {
                Ok(resp) => return Ok(ConsumerConnection::decode(body_or_empty(&resp))?),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::NoRoute(topic::retry_topic(group))))
    }

    /// GET_PRODUCER_CONNECTION_LIST (from a broker of `topic`).
    pub async fn producer_connections(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<ProducerConnection> {
        let route = self.topic_route(topic).await?;
        let h = GetProducerConnectionListRequestHeader {
            producer_group: group.to_string(),
            ..Default::default()
        };
        let mut merged = ProducerConnection::default();
        for (_, addr) in Self::route_masters(&route) {
            let resp = self
                .instance
                .invoke_ok(
                    &addr,
                    ClientInstance::request_with(request_code::GET_PRODUCER_CONNECTION_LIST, &h),
                )
                .await?;
            merged
                .connection_set
                .extend(ProducerConnection::decode(body_or_empty(&resp))?.connection_set);
        }
        Ok(merged)
    }

    /// GET_CONSUMER_RUNNING_INFO of one client (relayed by a broker).
    pub async fn consumer_running_info(
        &self,
        group: &str,
        client_id: &str,
    ) -> Result<ConsumerRunningInfo> {
        let h = GetConsumerRunningInfoRequestHeader {
            consumer_group: group.to_string(),
            client_id: client_id.to_string(),
            ..Default::default()
        };
        let brokers = self.group_brokers(group, None).await?;
        let (_, addr) = brokers
            .first()
            .ok_or_else(|| ClientError::NoRoute(topic::retry_topic(group)))?;
        let resp = self
            .instance
            .invoke_ok(
                addr,
                ClientInstance::request_with(request_code::GET_CONSUMER_RUNNING_INFO, &h),
            )
            .await?;
        Ok(ConsumerRunningInfo::decode(body_or_empty(&resp))?)
    }

    /// INVOKE_BROKER_TO_RESET_OFFSET on every broker of `topic`: the group's
    /// offsets go to the first message stored at or after `timestamp`
    /// (ms). Returns the new offsets.
    pub async fn reset_offset_by_time(
        &self,
        group: &str,
        topic: &str,
        timestamp: i64,
        force: bool,
    ) -> Result<BTreeMap<MessageQueue, i64>> {
        let route = self.topic_route(topic).await?;
        let h = ResetOffsetRequestHeader {
            group: group.to_string(),
            topic: topic.to_string(),
            timestamp,
            is_force: force,
            ..Default::default()
        };
        let mut out = BTreeMap::new();
        for (_, addr) in Self::route_masters(&route) {
            let resp = self
                .instance
                .invoke_ok(
                    &addr,
                    ClientInstance::request_with(request_code::INVOKE_BROKER_TO_RESET_OFFSET, &h),
                )
                .await?;
            if resp.body.is_some() {
                out.extend(ResetOffsetBody::decode(body_or_empty(&resp))?.offset_table);
            }
        }
        Ok(out)
    }

    // ---- brokers ----------------------------------------------------------

    /// GET_BROKER_RUNTIME_INFO.
    pub async fn broker_runtime_info(&self, broker_addr: &str) -> Result<BTreeMap<String, String>> {
        let resp = self
            .instance
            .invoke_ok(
                broker_addr,
                ClientInstance::request(request_code::GET_BROKER_RUNTIME_INFO),
            )
            .await?;
        Ok(KVTable::decode(body_or_empty(&resp))?.table)
    }

    /// GET_BROKER_HA_STATUS: the broker's replication state (Java's
    /// `HARuntimeInfo` JSON: `master`, `masterCommitLogMaxOffset`,
    /// `inSyncSlaveNums`, `haConnectionInfo`, `haClientRuntimeInfo`).
    pub async fn ha_status(&self, broker_addr: &str) -> Result<serde_json::Value> {
        let resp = self
            .instance
            .invoke_ok(
                broker_addr,
                ClientInstance::request(request_code::GET_BROKER_HA_STATUS),
            )
            .await?;
        serde_json::from_slice(body_or_empty(&resp)).map_err(|e| {
            ClientError::InvalidArgument(format!(
                "the HA status from {broker_addr} is not JSON: {e}"
            ))
        })
    }

    /// GET_BROKER_CONFIG (the properties text, parsed).
    pub async fn broker_config(&self, broker_addr: &str) -> Result<BTreeMap<String, String>> {
        let resp = self
            .instance
            .invoke_ok(
                broker_addr,
                ClientInstance::request(request_code::GET_BROKER_CONFIG),
            )
            .await?;
        let text = String::from_utf8_lossy(resp.body.as_deref().unwrap_or_default());
        Ok(java_properties::parse(&text))
    }

    /// UPDATE_BROKER_CONFIG with the given keys.
    pub async fn update_broker_config(
        &self,
        broker_addr: &str,
        props: &BTreeMap<String, String>,
    ) -> Result<()> {
        let text = java_properties::to_string(props.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let cmd = ClientInstance::request(request_code::UPDATE_BROKER_CONFIG)
            .with_body(text.into_bytes());
        self.instance.invoke_ok(broker_addr, cmd).await.map(|_| ())
    }

    /// CLEAN_UNUSED_TOPIC: the broker drops the queues of topics its topic
    /// table no longer has.
    pub async fn clean_unused_topic(&self, broker_addr: &str) -> Result<()> {
        let cmd = ClientInstance::request(request_code::CLEAN_UNUSED_TOPIC);
        self.instance.invoke_ok(broker_addr, cmd).await.map(|_| ())
    }

    /// CLEAN_EXPIRED_CONSUMEQUEUE: the broker trims ConsumeQueue files that
    /// point only below the CommitLog's first offset.
    pub async fn clean_expired_consume_queue(&self, broker_addr: &str) -> Result<()> {
        let cmd = ClientInstance::request(request_code::CLEAN_EXPIRED_CONSUMEQUEUE);
        self.instance.invoke_ok(broker_addr, cmd).await.map(|_| ())
    }

    /// WIPE_WRITE_PERM_OF_BROKER on every NameServer; per NameServer the
    /// number of topics changed.
    pub async fn wipe_write_perm(&self, broker_name: &str) -> Result<Vec<(String, i32)>> {
        let h = WipeWritePermOfBrokerRequestHeader {
            broker_name: broker_name.to_string(),
        };
        self.on_every_namesrv(request_code::WIPE_WRITE_PERM_OF_BROKER, &h, |r| {
            Ok(r.decode_header::<WipeWritePermOfBrokerResponseHeader>()?
                .wipe_topic_count)
        })
        .await
    }

    /// ADD_WRITE_PERM_OF_BROKER on every NameServer.
    pub async fn add_write_perm(&self, broker_name: &str) -> Result<Vec<(String, i32)>> {
        let h = AddWritePermOfBrokerRequestHeader {
            broker_name: broker_name.to_string(),
        };
        self.on_every_namesrv(request_code::ADD_WRITE_PERM_OF_BROKER, &h, |r| {
            Ok(r.decode_header::<AddWritePermOfBrokerResponseHeader>()?
                .add_topic_count)
        })
        .await
    }

    /// Sends one request to every NameServer and extracts a value per answer.
    async fn on_every_namesrv<H: CommandHeader, T>(
        &self,
        code: i32,
        header: &H,
        extract: impl Fn(&RemotingCommand) -> Result<T>,
    ) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        for addr in self.instance.namesrv_addrs() {
            let resp = self
                .instance
                .invoke_ok(addr, ClientInstance::request_with(code, header))
                .await?;
            out.push((addr.clone(), extract(&resp)?));
        }
        Ok(out)
    }

    // ---- KV config --------------------------------------------------------

    /// GET_KV_CONFIG; `None` when absent.
    pub async fn get_kv_config(&self, namespace: &str, key: &str) -> Result<Option<String>> {
        let h = GetKVConfigRequestHeader {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        let (addr, resp) = self
            .instance
            .invoke_namesrv(ClientInstance::request_with(
                request_code::GET_KV_CONFIG,
                &h,
            ))
            .await?;
        match resp.code {
            response_code::SUCCESS => Ok(resp.decode_header::<GetKVConfigResponseHeader>()?.value),
            response_code::QUERY_NOT_FOUND => Ok(None),
            _ => Err(ClientError::broker(&addr, &resp)),
        }
    }

    /// PUT_KV_CONFIG on every NameServer.
    pub async fn put_kv_config(&self, namespace: &str, key: &str, value: &str) -> Result<()> {
        let h = PutKVConfigRequestHeader {
            namespace: namespace.to_string(),
            key: key.to_string(),
            value: value.to_string(),
        };
        self.instance
            .invoke_all_namesrv_ok(ClientInstance::request_with(
                request_code::PUT_KV_CONFIG,
                &h,
            ))
            .await
    }

    /// DELETE_KV_CONFIG on every NameServer.
    pub async fn delete_kv_config(&self, namespace: &str, key: &str) -> Result<()> {
        let h = DeleteKVConfigRequestHeader {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        self.instance
            .invoke_all_namesrv_ok(ClientInstance::request_with(
                request_code::DELETE_KV_CONFIG,
                &h,
            ))
            .await
    }

    /// GET_KVLIST_BY_NAMESPACE.
    pub async fn kv_list(&self, namespace: &str) -> Result<BTreeMap<String, String>> {
        let h = GetKVListByNamespaceRequestHeader {
            namespace: namespace.to_string(),
        };
        let (addr, resp) = self
            .instance
            .invoke_namesrv(ClientInstance::request_with(
                request_code::GET_KVLIST_BY_NAMESPACE,
                &h,
            ))
            .await?;
        match resp.code {
            response_code::SUCCESS => Ok(KVTable::decode(body_or_empty(&resp))?.table),
            response_code::QUERY_NOT_FOUND => Ok(BTreeMap::new()),
            _ => Err(ClientError::broker(&addr, &resp)),
        }
    }

    // ---- messages ---------------------------------------------------------

    fn broker_name_of(&self, store: SocketAddr) -> String {
        let s = store.to_string();
        self.instance.broker_name_of_addr(&s).unwrap_or_default()
    }

    /// VIEW_MESSAGE_BY_ID: the message an offset message id points at.
    pub async fn view_message(&self, offset_msg_id: &str) -> Result<MessageExt> {
        let (addr, offset) = decode_offset_msg_id(offset_msg_id)?;
        let h = ViewMessageRequestHeader {
            topic: None,
            offset,
        };
        let addr_s = addr.to_string();
        let resp = self
            .instance
            .invoke_ok(
                &addr_s,
                ClientInstance::request_with(request_code::VIEW_MESSAGE_BY_ID, &h),
            )
            .await?;
        let body = resp.body.unwrap_or_default();
        let d = decode_stored_many(&body, false)
            .into_iter()
            .next()
            .ok_or_else(|| {
                ClientError::InvalidArgument(format!("no message at {offset_msg_id}"))
            })?;
        Ok(MessageExt::from_decoded(d, &self.broker_name_of(addr)))
    }

    async fn query_message(
        &self,
        topic: &str,
        key: &str,
        max_num: i32,
        begin: i64,
        end: i64,
        unique: bool,
    ) -> Result<Vec<MessageExt>> {
        let route = self.topic_route(topic).await?;
        let h = QueryMessageRequestHeader {
            topic: topic.to_string(),
            key: key.to_string(),
            max_num,
            begin_timestamp: begin,
            end_timestamp: end,
            unique_key_query: unique.then_some(true),
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut last_err = None;
        for (name, addr) in Self::route_masters(&route) {
            let resp = match self
                .instance
                .invoke(
                    &addr,
                    ClientInstance::request_with(request_code::QUERY_MESSAGE, &h),
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            match resp.code {
                response_code::SUCCESS => {
                    let body = resp.body.unwrap_or_default();
                    for d in decode_stored_many(&body, false) {
                        let m = MessageExt::from_decoded(d, &name);
                        let hit = if unique {
                            m.msg_id == key
                        } else {
                            m.keys().contains(&key)
                        };
                        if hit && m.topic == topic {
                            out.push(m);
                        }
                    }
                }
                response_code::QUERY_NOT_FOUND => {}
                _ => last_err = Some(ClientError::broker(&addr, &resp)),
            }
        }
        if out.is_empty() {
            if let Some(e) = last_err {
                return Err(e);
            }
        }
        out.sort_by_key(|m| (m.store_timestamp, m.commit_log_offset));
        Ok(out)
    }

    /// QUERY_MESSAGE by business key within `[begin, end]` (ms).
    pub async fn query_message_by_key(
        &self,
        topic: &str,
        key: &str,
        max_num: i32,
        begin: i64,
        end: i64,
    ) -> Result<Vec<MessageExt>> {
        self.query_message(topic, key, max_num, begin, end, false)
            .await
    }

    /// QUERY_MESSAGE with `_UNIQUE_KEY_QUERY`: messages whose UNIQ_KEY is `uniq_key`.
    pub async fn query_message_by_uniq_key(
        &self,
        topic: &str,
        uniq_key: &str,
    ) -> Result<Vec<MessageExt>> {
        self.query_message(topic, uniq_key, 32, 0, i64::MAX, true)
            .await
    }

    /// mqadmin queryMsgById: an offset message id is viewed directly; any
    /// other id (or a failed view) is looked up as a UNIQ_KEY in `topic`.
    pub async fn query_message_by_id(&self, topic: &str, id: &str) -> Result<Vec<MessageExt>> {
        if decode_offset_msg_id(id).is_ok() {
            if let Ok(m) = self.view_message(id).await {
                return Ok(vec![m]);
            }
        }
        self.query_message_by_uniq_key(topic, id).await
    }

    /// The message at `offset` of a queue (mqadmin queryMsgByOffset), or
    /// `None` when that offset holds nothing (yet).
    pub async fn message_at(&self, mq: &MessageQueue, offset: i64) -> Result<Option<MessageExt>> {
        let addr = self
            .instance
            .master_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await?;
        let h = PullMessageRequestHeader {
            consumer_group: TOOLS_CONSUMER_GROUP.to_string(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            queue_offset: offset,
            max_msg_nums: 1,
            sys_flag: PullSysFlag::build(false, false, true, false, false).0,
            commit_offset: 0,
            suspend_timeout_millis: 0,
            subscription: Some("*".to_string()),
            sub_version: 0,
            expression_type: Some("TAG".to_string()),
            ..Default::default()
        };
        let r = self
            .instance
            .pull(
                &addr,
                &mq.broker_name,
                request_code::PULL_MESSAGE,
                &h,
                self.instance.options.api_timeout,
            )
            .await?;
        Ok(match r.status {
            PullStatus::Found => r.messages.into_iter().find(|m| m.queue_offset == offset),
            _ => None,
        })
    }

    /// GET_MAX_OFFSET of a queue.
    pub async fn max_offset(&self, mq: &MessageQueue) -> Result<i64> {
        let addr = self
            .instance
            .master_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await?;
        self.instance.max_offset(&addr, mq).await
    }

    /// GET_MIN_OFFSET of a queue.
    pub async fn min_offset(&self, mq: &MessageQueue) -> Result<i64> {
        let addr = self
            .instance
            .master_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await?;
        self.instance.min_offset(&addr, mq).await
    }

    /// SEARCH_OFFSET_BY_TIMESTAMP of a queue.
    pub async fn search_offset(&self, mq: &MessageQueue, timestamp: i64) -> Result<i64> {
        let addr = self
            .instance
            .master_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await?;
        self.instance.search_offset(&addr, mq, timestamp).await
    }
}

/// Total lag of a group: Σ (broker offset − consumer offset) over queues
/// (Java `ConsumeStats.computeTotalDiff`).
pub fn consume_lag(stats: &ConsumeStats) -> i64 {
    stats
        .offset_table
        .values()
        .map(|w| w.broker_offset - w.consumer_offset)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apogee_protocol::body::OffsetWrapper;

    #[test]
    fn lag_sums_queue_differences() {
        let mut s = ConsumeStats::default();
        for (q, b, c) in [(0, 10, 4), (1, 5, 5), (2, 7, 0)] {
            s.offset_table.insert(
                MessageQueue::new("T", "b", q),
                OffsetWrapper {
                    broker_offset: b,
                    consumer_offset: c,
                    ..Default::default()
                },
            );
        }
        assert_eq!(consume_lag(&s), 6 + 7);
    }
}
