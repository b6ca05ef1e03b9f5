//! Admin requests (what `mqadmin`'s common commands call): offsets and
//! offset resets, consume/topic/broker statistics, client connections and
//! forwarded client calls, topic and subscription-group CRUD, and the
//! broker configuration. Each code answers with the response code Java
//! uses and a remark that says exactly what was wrong.

mod attributes;
mod broker_config;
mod epoch;
mod forward;
mod groups;
mod ha;
mod offsets;
mod runtime_info;
mod stats;
mod topics;

use std::future::Future;
use std::sync::Arc;

use apogee_protocol::code::{request_code as rc, request_code_name, response_code};
use apogee_protocol::{ProtocolError, RemotingCommand};
use apogee_remoting::{processor_fn, ProcessResult, ProcessorRegistry, RequestContext};

use crate::context::BrokerContext;

pub use attributes::{alter as alter_topic_attributes, parse as parse_topic_attributes};
pub use broker_config::apply_update;
pub use offsets::{reset_offsets, search_offset, ResetPlan};
pub use runtime_info::runtime_info;
pub use stats::{consume_stats, store_timestamp_at, topic_stats};
pub use topics::{validate_create_topic, MAX_QUEUE_NUMS};

/// Lowest client version (`MQVersion.V3_0_7_SNAPSHOT`) that understands
/// RESET_CONSUMER_CLIENT_OFFSET and GET_CONSUMER_STATUS_FROM_CLIENT.
pub const VERSION_V3_0_7_SNAPSHOT: i32 = 28;
/// Lowest client version (`MQVersion.V3_1_8_SNAPSHOT`) that answers
/// GET_CONSUMER_RUNNING_INFO and CONSUME_MESSAGE_DIRECTLY.
pub const VERSION_V3_1_8_SNAPSHOT: i32 = 77;

/// A SUCCESS response without remark.
pub(crate) fn ok() -> RemotingCommand {
    RemotingCommand::response(response_code::SUCCESS, None)
}

/// An error response with `code` and `remark`.
pub(crate) fn fail(code: i32, remark: impl Into<String>) -> RemotingCommand {
    RemotingCommand::response(code, Some(remark.into()))
}

/// The answer to a request whose header could not be decoded: Java's
/// decoder throws and the request is answered SYSTEM_ERROR with the text.
pub(crate) fn bad_header(req: &RemotingCommand, e: ProtocolError) -> RemotingCommand {
    let name = request_code_name(req.code).unwrap_or("request");
    static BAD_HEADER: apogee_throttle::LogThrottle =
        apogee_throttle::LogThrottle::new("bad admin request header");
    apogee_throttle::throttled_warn!(
        BAD_HEADER,
        req.code,
        code = req.code,
        "bad {name} header: {e}"
    );
    fail(
        response_code::SYSTEM_ERROR,
        format!("invalid {name} ({}) request header: {e}", req.code),
    )
}

/// Registers `f` for `code`; the handler always produces a response.
fn reg<F, Fut>(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>, code: i32, f: F)
where
    F: Fn(Arc<BrokerContext>, RequestContext, RemotingCommand) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RemotingCommand> + Send + 'static,
{
    let ctx = Arc::clone(ctx);
    let f = Arc::new(f);
    registry.register(
        code,
        processor_fn(move |rctx, req| {
            let ctx = Arc::clone(&ctx);
            let f = Arc::clone(&f);
            async move { Ok(Some(f(ctx, rctx, req).await)) as ProcessResult }
        }),
    );
}

/// Registers every admin code this module serves.
pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    // Offsets.
    reg(registry, ctx, rc::GET_MAX_OFFSET, |c, _, r| async move {
        offsets::get_max_offset(&c, &r)
    });
    reg(registry, ctx, rc::GET_MIN_OFFSET, |c, _, r| async move {
        offsets::get_min_offset(&c, &r)
    });
    reg(
        registry,
        ctx,
        rc::SEARCH_OFFSET_BY_TIMESTAMP,
        |c, _, r| async move { offsets::search_offset_by_timestamp(&c, &r).await },
    );
    reg(
        registry,
        ctx,
        rc::GET_EARLIEST_MSG_STORETIME,
        |c, _, r| async move { offsets::get_earliest_msg_store_time(&c, &r).await },
    );
    reg(
        registry,
        ctx,
        rc::INVOKE_BROKER_TO_RESET_OFFSET,
        |c, rx, r| async move { offsets::invoke_reset_offset(&c, &rx, &r).await },
    );
    reg(
        registry,
        ctx,
        rc::INVOKE_BROKER_TO_GET_CONSUMER_STATUS,
        |c, _, r| async move { forward::get_consumer_status(&c, &r).await },
    );

    // Statistics and client tables.
    reg(registry, ctx, rc::GET_CONSUME_STATS, |c, _, r| async move {
        stats::get_consume_stats(&c, &r).await
    });
    reg(
        registry,
        ctx,
        rc::GET_TOPIC_STATS_INFO,
        |c, _, r| async move { stats::get_topic_stats_info(&c, &r).await },
    );
    reg(
        registry,
        ctx,
        rc::GET_BROKER_HA_STATUS,
        |c, _, _| async move { ha::get_broker_ha_status(&c) },
    );
    reg(
        registry,
        ctx,
        rc::GET_BROKER_EPOCH_CACHE,
        |c, _, _| async move { epoch::get_broker_epoch_cache(&c).await },
    );
    reg(
        registry,
        ctx,
        rc::GET_BROKER_RUNTIME_INFO,
        |c, _, _| async move { runtime_info::get_broker_runtime_info(&c).await },
    );
    reg(
        registry,
        ctx,
        rc::GET_CONSUMER_CONNECTION_LIST,
        |c, _, r| async move { stats::get_consumer_connection_list(&c, &r) },
    );
    reg(
        registry,
        ctx,
        rc::GET_PRODUCER_CONNECTION_LIST,
        |c, _, r| async move { stats::get_producer_connection_list(&c, &r) },
    );
    reg(
        registry,
        ctx,
        rc::QUERY_TOPIC_CONSUME_BY_WHO,
        |c, _, r| async move { stats::query_topic_consume_by_who(&c, &r) },
    );
    reg(
        registry,
        ctx,
        rc::QUERY_TOPICS_BY_CONSUMER,
        |c, _, r| async move { stats::query_topics_by_consumer(&c, &r) },
    );
    reg(
        registry,
        ctx,
        rc::GET_ALL_CONSUMER_OFFSET,
        |c, _, _| async move { stats::get_all_consumer_offset(&c) },
    );
    reg(
        registry,
        ctx,
        rc::GET_ALL_DELAY_OFFSET,
        |c, _, _| async move { stats::get_all_delay_offset(&c) },
    );
    reg(
        registry,
        ctx,
        rc::GET_BROKER_CONSUME_STATS,
        |c, _, r| async move { stats::get_broker_consume_stats(&c, &r).await },
    );
    reg(
        registry,
        ctx,
        rc::GET_CONSUMER_RUNNING_INFO,
        |c, _, r| async move { forward::get_consumer_running_info(&c, r).await },
    );
    reg(
        registry,
        ctx,
        rc::CONSUME_MESSAGE_DIRECTLY,
        |c, _, r| async move { forward::consume_message_directly(&c, r).await },
    );

    // Topics.
    reg(
        registry,
        ctx,
        rc::UPDATE_AND_CREATE_TOPIC,
        |c, rx, r| async move { topics::update_and_create_topic(&c, &rx, &r).await },
    );
    reg(
        registry,
        ctx,
        rc::DELETE_TOPIC_IN_BROKER,
        |c, rx, r| async move { topics::delete_topic(&c, &rx, &r).await },
    );
    reg(
        registry,
        ctx,
        rc::GET_ALL_TOPIC_CONFIG,
        |c, _, r| async move { topics::get_all_topic_config(&c, &r) },
    );
    reg(registry, ctx, rc::GET_TOPIC_CONFIG, |c, _, r| async move {
        topics::get_topic_config(&c, &r)
    });
    reg(
        registry,
        ctx,
        rc::GET_TOPIC_NAME_LIST,
        |c, _, _| async move { topics::get_topic_name_list(&c) },
    );
    reg(
        registry,
        ctx,
        rc::GET_SYSTEM_TOPIC_LIST_FROM_BROKER,
        |c, _, _| async move { topics::get_system_topic_list(&c) },
    );

    // Subscription groups.
    reg(
        registry,
        ctx,
        rc::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP,
        |c, rx, r| async move { groups::update_and_create_subscription_group(&c, &rx, &r).await },
    );
    reg(
        registry,
        ctx,
        rc::GET_ALL_SUBSCRIPTIONGROUP_CONFIG,
        |c, _, r| async move { groups::get_all_subscription_group(&c, &r) },
    );
    reg(
        registry,
        ctx,
        rc::GET_SUBSCRIPTIONGROUP_CONFIG,
        |c, _, r| async move { groups::get_subscription_group(&c, &r) },
    );
    reg(
        registry,
        ctx,
        rc::DELETE_SUBSCRIPTIONGROUP,
        |c, rx, r| async move { groups::delete_subscription_group(&c, &rx, &r).await },
    );

    // Broker configuration and maintenance.
    reg(registry, ctx, rc::GET_BROKER_CONFIG, |c, _, _| async move {
        broker_config::get_broker_config(&c)
    });
    reg(
        registry,
        ctx,
        rc::UPDATE_BROKER_CONFIG,
        |c, rx, r| async move { broker_config::update_broker_config(&c, &rx, &r) },
    );
    reg(
        registry,
        ctx,
        rc::DELETE_EXPIRED_COMMITLOG,
        |c, rx, _| async move { broker_config::delete_expired_commit_log(&c, &rx).await },
    );
    reg(
        registry,
        ctx,
        rc::CLEAN_EXPIRED_CONSUMEQUEUE,
        |c, rx, _| async move { broker_config::clean_expired_consume_queue(&c, &rx).await },
    );
    reg(
        registry,
        ctx,
        rc::CLEAN_UNUSED_TOPIC,
        |c, rx, _| async move { broker_config::clean_unused_topic(&c, &rx).await },
    );
}
