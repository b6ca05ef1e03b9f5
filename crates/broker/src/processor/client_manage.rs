//! Client management: HEART_BEAT (registers producers and consumers,
//! creates the group and its `%RETRY%` topic), UNREGISTER_CLIENT and
//! CHECK_CLIENT_CONFIG.

use std::sync::Arc;

use apogee_protocol::body::{CheckClientRequestBody, HeartbeatData};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::flags::{PermName, TopicSysFlag};
use apogee_protocol::header::UnregisterClientRequestHeader;
use apogee_protocol::{topic, RemotingCommand};
use apogee_remoting::{processor_fn, ProcessorRegistry, RequestContext};

use super::{bad_body, bad_header, error_response, success};
use crate::client::ClientChannelInfo;
use crate::context::BrokerContext;
use crate::filter::{is_sql92, FilterError};

/// 5.x heartbeat response extFields.
pub const IS_SUPPORT_HEART_BEAT_V2: &str = "IS_SUPPORT_HEART_BEAT_V2";
pub const IS_SUB_CHANGE: &str = "IS_SUB_CHANGE";

pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    let c = Arc::clone(ctx);
    registry.register(
        request_code::HEART_BEAT,
        processor_fn(move |rc, req| {
            let ctx = Arc::clone(&c);
            async move { Ok(Some(heartbeat(&ctx, &rc, &req))) }
        }),
    );
    let c = Arc::clone(ctx);
    registry.register(
        request_code::UNREGISTER_CLIENT,
        processor_fn(move |rc, req| {
            let ctx = Arc::clone(&c);
            async move { Ok(Some(unregister_client(&ctx, &rc, &req))) }
        }),
    );
    let c = Arc::clone(ctx);
    registry.register(
        request_code::CHECK_CLIENT_CONFIG,
        processor_fn(move |_rc, req| {
            let ctx = Arc::clone(&c);
            async move { Ok(Some(check_client_config(&ctx, &req))) }
        }),
    );
}

/// HEART_BEAT: refresh every producer and consumer group the client lists.
pub fn heartbeat(
    ctx: &Arc<BrokerContext>,
    rc: &RequestContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let Some(body) = req.body.as_deref() else {
        return bad_body(req.code, "HeartbeatData", None);
    };
    let data = match HeartbeatData::decode(body) {
        Ok(d) => d,
        Err(e) => return bad_body(req.code, "HeartbeatData", Some(&e)),
    };
    let info = ClientChannelInfo::new(
        rc.channel().clone(),
        data.client_id.clone(),
        req.language,
        req.version,
    );
    ctx.watch_channel(rc.channel());
    let v2 = data.heartbeat_fingerprint != 0;
    let mut sub_change = !v2;
    for consumer in data.consumer_data_set {
        let group = consumer.group_name.as_str();
        let mut notify = true;
        if let Some(sgc) = ctx.groups.find_or_create(group) {
            notify = sgc.notify_consumer_ids_changed_enable;
            let sys_flag = if consumer.unit_mode {
                TopicSysFlag::build(false, true).0
            } else {
                0
            };
            ctx.topics.get_or_create_system(
                &topic::retry_topic(group),
                sgc.retry_queue_nums,
                PermName::PERM_READ | PermName::PERM_WRITE,
                sys_flag,
            );
        }
        // A V2 heartbeat without subscriptions only refreshes the channel,
        // provided the broker still has the subscriptions it stands for.
        let subscriptions = if v2 && data.without_sub {
            if ctx.consumers.fingerprint(group) != Some(data.heartbeat_fingerprint) {
                sub_change = true;
            }
            None
        } else {
            Some(consumer.subscription_data_set)
        };
        if let Some(subs) = &subscriptions {
            // Compile SQL92 subscriptions now, so a bad one is logged at
            // registration and the first pull finds it ready.
            for sd in subs.iter().filter(|sd| is_sql92(&sd.expression_type)) {
                let _ = ctx
                    .sql_filters
                    .get_or_compile(group, &sd.topic, &sd.sub_string);
            }
        }
        let full = subscriptions.is_some();
        let changed = ctx.consumers.register_with_notify(
            group,
            info.clone(),
            consumer.consume_type,
            consumer.message_model,
            consumer.consume_from_where,
            subscriptions,
            notify,
        );
        if v2 && full {
            ctx.consumers
                .set_fingerprint(group, data.heartbeat_fingerprint);
        }
        if changed {
            tracing::info!(group, client = %info.client_id, "consumer group changed by heartbeat");
        }
    }
    for producer in data.producer_data_set {
        ctx.producers.register(&producer.group_name, info.clone());
    }
    let mut resp = success();
    resp.set_ext(IS_SUPPORT_HEART_BEAT_V2, "true");
    resp.set_ext(IS_SUB_CHANGE, if sub_change { "true" } else { "false" });
    resp
}

/// UNREGISTER_CLIENT: remove the client from the named groups.
pub fn unregister_client(
    ctx: &Arc<BrokerContext>,
    rc: &RequestContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: UnregisterClientRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req.code, &e),
    };
    if let Some(group) = h.producer_group.as_deref().filter(|g| !g.is_empty()) {
        ctx.producers.unregister(group, &h.client_id);
    }
    if let Some(group) = h.consumer_group.as_deref().filter(|g| !g.is_empty()) {
        ctx.consumers.unregister(group, &h.client_id);
    }
    tracing::debug!(client = %h.client_id, peer = %rc.peer_addr(), "client unregistered");
    success()
}

/// CHECK_CLIENT_CONFIG: TAG subscriptions are always fine; SQL92 needs
/// `enablePropertyFilter` and an expression that compiles (the client's
/// `start()` fails with SUBSCRIPTION_PARSE_FAILED and the parser's message
/// otherwise).
pub fn check_client_config(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let Some(body) = req.body.as_deref() else {
        return success();
    };
    let data = match CheckClientRequestBody::decode(body) {
        Ok(d) => d,
        Err(e) => return bad_body(req.code, "CheckClientRequestBody", Some(&e)),
    };
    let Some(sub) = data.subscription_data else {
        return success();
    };
    if sub.is_tag_type() {
        return success();
    }
    if !ctx.runtime_config.read().enable_property_filter {
        let e = FilterError::PropertyFilterDisabled(sub.expression_type.clone());
        return error_response(response_code::SYSTEM_ERROR, e.to_string());
    }
    if !is_sql92(&sub.expression_type) {
        let e = FilterError::UnsupportedType(sub.expression_type.clone());
        return error_response(response_code::SUBSCRIPTION_PARSE_FAILED, e.to_string());
    }
    if let Err(e) = apogee_filter::Expression::compile(&sub.sub_string) {
        return error_response(response_code::SUBSCRIPTION_PARSE_FAILED, e.to_string());
    }
    success()
}
