//! Broker configuration over the wire: GET_BROKER_CONFIG (the effective
//! settings as properties text plus a version header) and
//! UPDATE_BROKER_CONFIG (properties text applied to the runtime config;
//! only keys that take effect without a restart are accepted, all or
//! nothing). Also the manual store cleanup calls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use apogee_protocol::body::DataVersion;
use apogee_protocol::code::response_code;
use apogee_protocol::header::GetBrokerConfigResponseHeader;
use apogee_protocol::{java_properties, RemotingCommand};
use apogee_remoting::RequestContext;

use super::{fail, ok};
use crate::config::{runtime_keys, BrokerConfig};
use crate::context::BrokerContext;

/// Counts accepted updates (the `counter` of the config version header).
static CONFIG_UPDATES: AtomicI64 = AtomicI64::new(0);

/// Applies `props` to a copy of `current`. Unknown keys are refused with
/// INVALID_PARAMETER, keys fixed at start with NO_PERMISSION (as Java
/// refuses its black-listed keys), bad values with INVALID_PARAMETER; the
/// error is `(code, remark)` and nothing is applied then.
pub fn apply_update(
    current: &BrokerConfig,
    props: &BTreeMap<String, String>,
) -> Result<BrokerConfig, (i32, String)> {
    // A value asking for an unsupported feature is named as such, not as
    // an unknown key.
    if let Some((k, v, u)) = props
        .iter()
        .find_map(|(k, v)| crate::config::unsupported_value(k, v).map(|u| (k, v.trim(), u)))
    {
        return Err((
            response_code::INVALID_PARAMETER,
            format!(
                "broker config {k}={v} is not supported yet: apogee has no {}",
                u.feature
            ),
        ));
    }
    let known = current.to_properties();
    let unknown: Vec<&str> = props
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains_key(*k))
        .collect();
    if !unknown.is_empty() {
        return Err((
            response_code::INVALID_PARAMETER,
            format!("unknown broker config key(s): {}", unknown.join(", ")),
        ));
    }
    // Only keys the table marks as runtime ones: everything else is fixed
    // at start (ports, names, store layout, settings services were built
    // from), so changing it would only pretend.
    let runtime: Vec<&str> = runtime_keys().collect();
    let fixed: Vec<&str> = props
        .keys()
        .map(String::as_str)
        .filter(|k| !runtime.contains(k))
        .collect();
    if !fixed.is_empty() {
        return Err((
            response_code::NO_PERMISSION,
            format!(
                "broker config key(s) {} cannot be changed at runtime; set them in broker.conf and restart \
                 (changeable at runtime: {})",
                fixed.join(", "),
                runtime.join(", ")
            ),
        ));
    }
    let mut next = current.clone();
    next.apply(props)
        .map_err(|e| (response_code::INVALID_PARAMETER, e.to_string()))?;
    Ok(next)
}

fn boot_millis(ctx: &BrokerContext) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    now - ctx.started_at.elapsed().as_millis() as i64
}

pub(super) fn get_broker_config(ctx: &BrokerContext) -> RemotingCommand {
    let props = ctx.runtime_config.read().to_properties();
    let text = java_properties::to_string(props.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let version = DataVersion {
        state_version: 0,
        timestamp: boot_millis(ctx),
        counter: CONFIG_UPDATES.load(Ordering::Relaxed),
    };
    let header = GetBrokerConfigResponseHeader {
        version: String::from_utf8_lossy(&version.encode()).into_owned(),
    };
    ok().with_header(&header).with_body(text.into_bytes())
}

pub(super) fn update_broker_config(
    ctx: &BrokerContext,
    rctx: &RequestContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    // Java accepts a request without body as a no-op.
    let Some(body) = req.body.as_deref().filter(|b| !b.is_empty()) else {
        return ok();
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return fail(
            response_code::SYSTEM_ERROR,
            "UPDATE_BROKER_CONFIG body is not UTF-8 properties text",
        );
    };
    let props = java_properties::parse(text);
    if props.is_empty() {
        return ok();
    }
    let next = {
        let mut cfg = ctx.runtime_config.write();
        match apply_update(&cfg, &props) {
            Ok(next) => {
                *cfg = next.clone();
                next
            }
            Err((code, remark)) => {
                tracing::warn!(caller = %rctx.peer_addr(), "broker config update refused: {remark}");
                return fail(code, remark);
            }
        }
    };
    CONFIG_UPDATES.fetch_add(1, Ordering::Relaxed);
    // Managers that cache a switch follow it.
    if props.contains_key("autoCreateTopicEnable") {
        ctx.topics.set_auto_create(next.auto_create_topic_enable);
    }
    if props.contains_key("autoCreateSubscriptionGroup") {
        ctx.groups
            .set_auto_create(next.auto_create_subscription_group);
    }
    if props.contains_key("brokerPermission") {
        // NameServers learn the new permission from the registration.
        ctx.request_register();
    }
    tracing::info!(caller = %rctx.peer_addr(), keys = ?props.keys().collect::<Vec<_>>(), "broker config updated");
    ok()
}

/// DELETE_EXPIRED_COMMITLOG (329): Java's `executeDeleteFilesManually`.
pub(super) async fn delete_expired_commit_log(
    ctx: &Arc<BrokerContext>,
    rctx: &RequestContext,
) -> RemotingCommand {
    tracing::warn!(caller = %rctx.peer_addr(), "manual deletion of expired CommitLog files requested");
    ctx.store.request_delete_expired_files();
    ok()
}

/// CLEAN_EXPIRED_CONSUMEQUEUE (306): ConsumeQueue files are trimmed with
/// the CommitLog segments they point into, so this runs the same cleanup.
pub(super) async fn clean_expired_consume_queue(
    ctx: &Arc<BrokerContext>,
    rctx: &RequestContext,
) -> RemotingCommand {
    tracing::warn!(caller = %rctx.peer_addr(), "manual cleanup of expired ConsumeQueue files requested");
    ctx.store.request_delete_expired_files();
    ok()
}

/// Whether CLEAN_UNUSED_TOPIC may drop the queues of `topic`, a topic the
/// store has queues for: only when the topic table no longer has it and it is
/// neither a system topic nor a light message queue (as Java's
/// `cleanUnusedTopic`).
pub fn is_unused_topic(topic: &str, in_topic_table: bool) -> bool {
    !in_topic_table
        && !apogee_protocol::topic::is_system_topic(topic)
        && !topic.starts_with(LMQ_PREFIX)
}

/// Light message queue topics (`%LMQ%...`) are never in the topic table.
const LMQ_PREFIX: &str = "%LMQ%";

/// CLEAN_UNUSED_TOPIC (316): drops the queues (and queue offsets) of topics
/// the store still holds but the topic table no longer has, e.g. left by a
/// topic config file restored from a backup.
pub(super) async fn clean_unused_topic(
    ctx: &Arc<BrokerContext>,
    rctx: &RequestContext,
) -> RemotingCommand {
    tracing::warn!(caller = %rctx.peer_addr(), "cleanup of unused topics requested");
    let unused: Vec<String> = ctx
        .store
        .topics()
        .into_iter()
        .filter(|t| is_unused_topic(t, ctx.topics.contains(t)))
        .collect();
    if unused.is_empty() {
        return ok();
    }
    let store = Arc::clone(&ctx.store);
    let names = unused.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        store.delete_topics(&refs)
    })
    .await;
    match outcome {
        Ok(Ok(n)) => {
            tracing::warn!(topics = ?unused, queues = n, "queues of unused topics deleted");
            ok()
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "deleting the queues of unused topics failed");
            fail(
                response_code::SYSTEM_ERROR,
                format!("deleting the queues of unused topics failed: {e}"),
            )
        }
        Err(e) => fail(
            response_code::SYSTEM_ERROR,
            format!("deleting the queues of unused topics failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_topics_missing_from_the_table_are_unused() {
        assert!(is_unused_topic("OldTopic", false));
        assert!(!is_unused_topic("OldTopic", true));
        assert!(!is_unused_topic("SCHEDULE_TOPIC_XXXX", false));
        assert!(!is_unused_topic("rmq_sys_wheel_timer", false));
        assert!(!is_unused_topic("%LMQ%123", false));
    }

    #[test]
    fn runtime_keys_are_all_known() {
        let known = BrokerConfig::default().to_properties();
        for k in runtime_keys() {
            assert!(known.contains_key(k), "{k} is not an exported key");
        }
    }

    #[test]
    fn applies_runtime_keys() {
        let cur = BrokerConfig::default();
        let next = apply_update(
            &cur,
            &props(&[
                ("autoCreateTopicEnable", "false"),
                ("maxTransferCountOnMessageInMemory", "7"),
            ]),
        )
        .unwrap();
        assert!(!next.auto_create_topic_enable);
        assert_eq!(next.max_transfer_count_on_message_in_memory, 7);
    }

    #[test]
    fn refuses_unknown_fixed_and_bad_values() {
        let cur = BrokerConfig::default();
        let (c, r) = apply_update(&cur, &props(&[("noSuchKey", "1")])).unwrap_err();
        assert_eq!(c, response_code::INVALID_PARAMETER);
        assert!(r.contains("noSuchKey"));
        let (c, r) = apply_update(
            &cur,
            &props(&[("listenPort", "1"), ("autoCreateTopicEnable", "true")]),
        )
        .unwrap_err();
        assert_eq!(c, response_code::NO_PERMISSION);
        assert!(r.contains("listenPort") && !r.starts_with("broker config key(s) autoCreate"));
        assert!(
            r.ends_with(
                "(changeable at runtime: brokerPermission, autoCreateTopicEnable, \
                 autoCreateSubscriptionGroup, maxTransferBytesOnMessageInMemory, \
                 maxTransferCountOnMessageInMemory, accessMessageInMemoryMaxRatio, \
                 enablePropertyFilter, slaveReadEnable)"
            ),
            "{r}"
        );
        let (c, r) = apply_update(&cur, &props(&[("autoCreateTopicEnable", "maybe")])).unwrap_err();
        assert_eq!(c, response_code::INVALID_PARAMETER);
        assert!(r.contains("autoCreateTopicEnable"), "{r}");
        let (c, r) = apply_update(&cur, &props(&[("aclEnable", "true")])).unwrap_err();
        assert_eq!(c, response_code::INVALID_PARAMETER);
        assert!(
            r.contains("aclEnable=true") && r.contains("not supported yet"),
            "{r}"
        );
    }
}
