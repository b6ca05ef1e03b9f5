//! Talking to NameServers: REGISTER_BROKER (with the full topic table) to
//! every NameServer, and UNREGISTER_BROKER on shutdown.

use std::time::Duration;

use apogee_protocol::body::RegisterBrokerBody;
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{RegisterBrokerRequestHeader, UnRegisterBrokerRequestHeader};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};
use futures::future::join_all;

use crate::context::BrokerContext;

/// Client side of the broker-NameServer protocol.
pub struct NamesrvApi {
    client: RemotingClient,
    addrs: Vec<String>,
    timeout: Duration,
}

impl NamesrvApi {
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Self {
        NamesrvApi {
            client: RemotingClient::new(ClientConfig::default()),
            addrs,
            timeout,
        }
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    fn register_request(ctx: &BrokerContext) -> RemotingCommand {
        let body = RegisterBrokerBody {
            topic_config_serialize_wrapper: ctx.topics.serialize_wrapper().into(),
            filter_server_list: Vec::new(),
        }
        .encode();
        let crc = (crc32fast::hash(&body) & 0x7FFF_FFFF) as i32;
        let ip = ctx.store_host.ip();
        let header = RegisterBrokerRequestHeader {
            broker_name: ctx.config.broker_name.clone(),
            broker_addr: ctx.broker_addr.clone(),
            cluster_name: ctx.config.broker_cluster_name.clone(),
            // No HA service; Java advertises brokerIP2:haListenPort (listenPort + 1).
            ha_server_addr: format!("{ip}:{}", ctx.store_host.port().saturating_add(1)),
            broker_id: ctx.config.broker_id,
            heartbeat_timeout_millis: None,
            enable_acting_master: Some(false),
            compressed: false,
            body_crc32: crc,
            zone_name: None,
        };
        RemotingCommand::request(request_code::REGISTER_BROKER)
            .with_header(&header)
            .with_body(body)
    }

    /// Registers with every NameServer at once; returns how many accepted.
    pub async fn register_broker_all(&self, ctx: &BrokerContext) -> usize {
        if self.addrs.is_empty() {
            return 0;
        }
        let req = Self::register_request(ctx);
        let calls = self.addrs.iter().map(|addr| {
            let req = req.clone();
            async move {
                match self.client.invoke(addr, req, self.timeout).await {
                    Ok(resp) if resp.code == response_code::SUCCESS => {
                        tracing::debug!(namesrv = %addr, "registered with NameServer");
                        true
                    }
                    Ok(resp) => {
                        tracing::warn!(namesrv = %addr, code = resp.code, remark = ?resp.remark, "NameServer refused registration");
                        false
                    }
                    Err(e) => {
                        tracing::warn!(namesrv = %addr, error = %e, "cannot register with NameServer");
                        false
                    }
                }
            }
        });
        join_all(calls).await.into_iter().filter(|ok| *ok).count()
    }

    /// Unregisters from every NameServer (shutdown).
    pub async fn unregister_broker_all(&self, ctx: &BrokerContext) {
        let header = UnRegisterBrokerRequestHeader {
            broker_name: ctx.config.broker_name.clone(),
            broker_addr: ctx.broker_addr.clone(),
            cluster_name: ctx.config.broker_cluster_name.clone(),
            broker_id: ctx.config.broker_id,
        };
        let req = RemotingCommand::request(request_code::UNREGISTER_BROKER).with_header(&header);
        let calls = self.addrs.iter().map(|addr| {
            let req = req.clone();
            async move {
                match self.client.invoke(addr, req, self.timeout).await {
                    Ok(resp) if resp.code == response_code::SUCCESS => {
                        tracing::info!(namesrv = %addr, "unregistered from NameServer")
                    }
                    Ok(resp) => {
                        tracing::warn!(namesrv = %addr, code = resp.code, "NameServer refused unregistration")
                    }
                    Err(e) => tracing::warn!(namesrv = %addr, error = %e, "cannot unregister from NameServer"),
                }
            }
        });
        join_all(calls).await;
    }

    pub async fn close(&self) {
        self.client.close().await;
    }
}
