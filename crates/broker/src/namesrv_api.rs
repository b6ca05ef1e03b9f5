//! Talking to NameServers: REGISTER_BROKER (the full topic table, or only
//! the changed topics) to every NameServer, and UNREGISTER_BROKER on
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::body::{RegisterBrokerBody, TopicConfigSerializeWrapper};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{
    RegisterBrokerRequestHeader, RegisterBrokerResponseHeader, UnRegisterBrokerRequestHeader,
};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};
use futures::future::join_all;

use crate::context::BrokerContext;
use crate::register::Outgoing;

/// A JSON body larger than this is sent compressed even without
/// `compressedRegister` (a quarter of the default 16 MiB frame limit).
pub const AUTO_COMPRESS_BYTES: usize = 4 * 1024 * 1024;

/// A table of this many topics is compressed without trying JSON first
/// (about 195 bytes a topic: 10,000 topics make 1.9 MiB of JSON, 100,000
/// make 18.6 MiB, past the frame limit).
pub const AUTO_COMPRESS_TOPICS: usize = 10_000;

/// Registrations of more topics than this are encoded off the async workers.
const INLINE_ENCODE_TOPICS: usize = 256;

/// A REGISTER_BROKER body and whether it is the compressed form.
#[derive(Debug, Clone)]
pub struct EncodedRegistration {
    pub body: Vec<u8>,
    pub compressed: bool,
}

/// Encodes a REGISTER_BROKER body: the compressed (Java
/// `RegisterBrokerBody.encode(true)`) form when asked, for
/// [`AUTO_COMPRESS_TOPICS`] topics or more, or when the JSON form exceeds
/// [`AUTO_COMPRESS_BYTES`]; else JSON.
pub fn encode_registration(
    wrapper: TopicConfigSerializeWrapper,
    compress: bool,
) -> EncodedRegistration {
    let compress = compress || wrapper.topic_config_table.len() >= AUTO_COMPRESS_TOPICS;
    let body = RegisterBrokerBody {
        topic_config_serialize_wrapper: wrapper.into(),
        filter_server_list: Vec::new(),
    };
    if !compress {
        let json = body.encode();
        if json.len() <= AUTO_COMPRESS_BYTES {
            return EncodedRegistration {
                body: json,
                compressed: false,
            };
        }
    }
    match body.encode_compressed(true) {
        Ok(zipped) => EncodedRegistration {
            body: zipped,
            compressed: true,
        },
        Err(e) => {
            static NO_ZIP: apogee_throttle::LogThrottle =
                apogee_throttle::LogThrottle::new("cannot compress the registration body");
            apogee_throttle::throttled_warn!(NO_ZIP, (), error = %e, "cannot compress the registration body; sending JSON");
            EncodedRegistration {
                body: body.encode(),
                compressed: false,
            }
        }
    }
}

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

    fn encode_now(ctx: &BrokerContext, out: Outgoing) -> RemotingCommand {
        let mut wrapper = match out {
            Outgoing::Full => ctx.topics.serialize_wrapper(),
            Outgoing::Increment(w) => w,
        };
        wrapper.data_version.state_version = ctx.config.state_version;
        let enc = encode_registration(wrapper, ctx.config.compressed_register);
        let crc = (crc32fast::hash(&enc.body) & 0x7FFF_FFFF) as i32;
        let header = RegisterBrokerRequestHeader {
            broker_name: ctx.config.broker_name.clone(),
            broker_addr: ctx.broker_addr.clone(),
            cluster_name: ctx.config.broker_cluster_name.clone(),
            ha_server_addr: ctx.ha_server_addr(),
            broker_id: ctx.config.broker_id,
            heartbeat_timeout_millis: None,
            enable_acting_master: Some(false),
            compressed: enc.compressed,
            body_crc32: crc,
            zone_name: None,
        };
        RemotingCommand::request(request_code::REGISTER_BROKER)
            .with_header(&header)
            .with_body(enc.body)
    }

    /// The REGISTER_BROKER request for `work`; a large table is read and
    /// encoded on a blocking thread. None if that thread failed.
    async fn register_request(ctx: &Arc<BrokerContext>, out: Outgoing) -> Option<RemotingCommand> {
        if matches!(&out, Outgoing::Increment(w) if w.topic_config_table.len() <= INLINE_ENCODE_TOPICS)
        {
            return Some(Self::encode_now(ctx, out));
        }
        let ctx = Arc::clone(ctx);
        match tokio::task::spawn_blocking(move || Self::encode_now(&ctx, out)).await {
            Ok(req) => Some(req),
            Err(e) => {
                tracing::error!(error = %e, "encoding the registration failed");
                None
            }
        }
    }

    async fn send(&self, ctx: &BrokerContext, addr: &str, req: RemotingCommand) -> bool {
        static REFUSED: apogee_throttle::LogThrottle =
            apogee_throttle::LogThrottle::new("NameServer refused registration");
        static UNREACHABLE: apogee_throttle::LogThrottle =
            apogee_throttle::LogThrottle::new("cannot register with NameServer");
        match self.client.invoke(addr, req, self.timeout).await {
            Ok(resp) if resp.code == response_code::SUCCESS => {
                tracing::debug!(namesrv = %addr, "registered with NameServer");
                Self::follow_master(ctx, &resp);
                true
            }
            Ok(resp) => {
                apogee_throttle::throttled_warn!(REFUSED, (), namesrv = %addr, code = resp.code, remark = ?resp.remark, "NameServer refused registration");
                false
            }
            Err(e) => {
                apogee_throttle::throttled_warn!(UNREACHABLE, (), namesrv = %addr, error = %e, "cannot register with NameServer");
                false
            }
        }
    }

    /// A slave learns its master from the registration answer (Java's
    /// `BrokerController.registerBrokerAll`): the master's remoting address,
    /// and its HA address unless `haMasterAddress` fixes it.
    fn follow_master(ctx: &BrokerContext, resp: &RemotingCommand) {
        let Some(client) = ctx.ha_client.get() else {
            return;
        };
        let Ok(h) = resp.decode_header::<RegisterBrokerResponseHeader>() else {
            return;
        };
        if let Some(master) = h.master_addr.filter(|a| !a.is_empty()) {
            let mut cur = ctx.master_addr.write();
            if cur.as_deref() != Some(master.as_str()) {
                tracing::info!(master = %master, "master address learned from the NameServer");
                *cur = Some(master);
            }
        }
        // In controller mode only the controller names the master: a replica
        // must compare epochs (and maybe cut its tail) before it follows.
        if ctx.config.ha_master_address.is_none() && !ctx.config.enable_controller_mode {
            if let Some(ha) = h.ha_server_addr.filter(|a| !a.is_empty()) {
                client.set_master_addr(&ha);
            }
        }
    }

    /// Sends `out` to one NameServer; true when it accepted.
    pub async fn register(&self, ctx: &Arc<BrokerContext>, addr: &str, out: Outgoing) -> bool {
        match Self::register_request(ctx, out).await {
            Some(req) => self.send(ctx, addr, req).await,
            None => false,
        }
    }

    /// Registers the full table with every NameServer at once; returns how
    /// many accepted.
    pub async fn register_broker_all(&self, ctx: &Arc<BrokerContext>) -> usize {
        if self.addrs.is_empty() {
            return 0;
        }
        let Some(req) = Self::register_request(ctx, Outgoing::Full).await else {
            return 0;
        };
        let calls = self
            .addrs
            .iter()
            .map(|addr| self.send(ctx, addr, req.clone()));
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
