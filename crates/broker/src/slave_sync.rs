//! A slave's copy of its master's metadata (Java's `SlaveSynchronize`):
//! every [`SLAVE_SYNC_INTERVAL`] it asks the master (its remoting address,
//! learned from the NameServer registration) for the topic configs
//! (GET_ALL_TOPIC_CONFIG), subscription groups
//! (GET_ALL_SUBSCRIPTIONGROUP_CONFIG) and consumer offsets
//! (GET_ALL_CONSUMER_OFFSET), and takes them: topics and groups as the
//! master has them (added, changed, removed), offsets entry by entry. So
//! when the master is gone, consumers pulling from the slave find their
//! topics, groups and committed offsets. A slave that does not know its
//! master yet also asks for a registration each round: the answer names it.

use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::body::{SubscriptionGroupWrapper, TopicConfigAndMappingSerializeWrapper};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient, RemotingError};
use apogee_throttle::{throttled_warn, LogThrottle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::BrokerContext;

/// How often a slave copies its master's metadata (and, while it does not
/// know its master yet, registers again to learn it).
pub const SLAVE_SYNC_INTERVAL: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why one copy failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{what} from the master {master} failed: {source}")]
    Call {
        what: &'static str,
        master: String,
        #[source]
        source: RemotingError,
    },
    #[error("the master {master} refused {what}: code {code}, {remark}")]
    Refused {
        what: &'static str,
        master: String,
        code: i32,
        remark: String,
    },
    #[error("{what} from the master {master} does not decode: {reason}")]
    Decode {
        what: &'static str,
        master: String,
        reason: String,
    },
}

static SYNC_FAILED: LogThrottle = LogThrottle::new("slave metadata sync failed");
static NO_MASTER: LogThrottle = LogThrottle::new("slave without a master");

/// Starts the periodic copy (slaves only).
pub fn spawn(ctx: Arc<BrokerContext>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = RemotingClient::new(ClientConfig::default());
        let mut waited = 0u64;
        loop {
            // Until a registration has named the master (a slave started
            // before its master), register again every round instead of
            // every registerNameServerPeriod.
            let knows_master = ctx
                .ha_client
                .get()
                .is_none_or(|c| c.master_addr().is_some());
            if !knows_master {
                ctx.request_register();
                waited += 1;
                if waited % 10 == 3 {
                    throttled_warn!(NO_MASTER, (), broker = %ctx.config.broker_name,
                        cluster = %ctx.config.broker_cluster_name, waited_s = waited * SLAVE_SYNC_INTERVAL.as_secs(),
                        "slave: no master of this brokerName is registered with the NameServers \
                         (is the master up, with the same brokerName and cluster?); still waiting");
                }
            } else {
                waited = 0;
            }
            let master = ctx.master_addr.read().clone();
            if let Some(master) = master {
                for (what, r) in [
                    ("topic configs", sync_topics(&ctx, &client, &master).await),
                    (
                        "subscription groups",
                        sync_groups(&ctx, &client, &master).await,
                    ),
                    (
                        "consumer offsets",
                        sync_offsets(&ctx, &client, &master).await,
                    ),
                ] {
                    if let Err(e) = r {
                        throttled_warn!(SYNC_FAILED, what, error = %e, "slave: cannot copy the master's metadata");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(SLAVE_SYNC_INTERVAL) => {}
                _ = stop.changed() => break,
            }
        }
        client.close().await;
    })
}

async fn call(
    client: &RemotingClient,
    master: &str,
    code: i32,
    what: &'static str,
) -> Result<Vec<u8>, SyncError> {
    let resp = client
        .invoke(master, RemotingCommand::request(code), CALL_TIMEOUT)
        .await
        .map_err(|source| SyncError::Call {
            what,
            master: master.to_owned(),
            source,
        })?;
    if resp.code != response_code::SUCCESS {
        return Err(SyncError::Refused {
            what,
            master: master.to_owned(),
            code: resp.code,
            remark: resp.remark.unwrap_or_default(),
        });
    }
    Ok(resp.body.map(|b| b.to_vec()).unwrap_or_default())
}

fn decode_err(what: &'static str, master: &str, e: impl std::fmt::Display) -> SyncError {
    SyncError::Decode {
        what,
        master: master.to_owned(),
        reason: e.to_string(),
    }
}

async fn sync_topics(
    ctx: &BrokerContext,
    client: &RemotingClient,
    master: &str,
) -> Result<(), SyncError> {
    const WHAT: &str = "GET_ALL_TOPIC_CONFIG";
    let body = call(client, master, request_code::GET_ALL_TOPIC_CONFIG, WHAT).await?;
    let w = TopicConfigAndMappingSerializeWrapper::decode(&body)
        .map_err(|e| decode_err(WHAT, master, e))?;
    let mut changed = 0usize;
    for (name, cfg) in &w.topic_config_table {
        if ctx.topics.get(name).as_ref() != Some(cfg) {
            ctx.topics.update(cfg.clone());
            changed += 1;
        }
    }
    for name in ctx.topics.topic_names() {
        if !w.topic_config_table.contains_key(&name) && ctx.topics.delete(&name) {
            changed += 1;
        }
    }
    if changed > 0 {
        tracing::info!(
            changed,
            master,
            "slave: topic configs copied from the master"
        );
    }
    Ok(())
}

async fn sync_groups(
    ctx: &BrokerContext,
    client: &RemotingClient,
    master: &str,
) -> Result<(), SyncError> {
    const WHAT: &str = "GET_ALL_SUBSCRIPTIONGROUP_CONFIG";
    let body = call(
        client,
        master,
        request_code::GET_ALL_SUBSCRIPTIONGROUP_CONFIG,
        WHAT,
    )
    .await?;
    let w = SubscriptionGroupWrapper::decode(&body).map_err(|e| decode_err(WHAT, master, e))?;
    let mut changed = 0usize;
    for (name, cfg) in &w.subscription_group_table {
        if ctx.groups.get(name).as_ref() != Some(cfg) {
            ctx.groups.update(cfg.clone());
            changed += 1;
        }
    }
    for g in ctx.groups.all() {
        if !w.subscription_group_table.contains_key(&g.group_name)
            && ctx.groups.delete(&g.group_name)
        {
            changed += 1;
        }
    }
    if changed > 0 {
        tracing::info!(
            changed,
            master,
            "slave: subscription groups copied from the master"
        );
    }
    Ok(())
}

async fn sync_offsets(
    ctx: &BrokerContext,
    client: &RemotingClient,
    master: &str,
) -> Result<(), SyncError> {
    const WHAT: &str = "GET_ALL_CONSUMER_OFFSET";
    let body = call(client, master, request_code::GET_ALL_CONSUMER_OFFSET, WHAT).await?;
    ctx.offsets
        .merge_from_master(&body)
        .map_err(|e| decode_err(WHAT, master, e))?;
    Ok(())
}
