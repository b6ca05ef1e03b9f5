//! Subscription-group administration: UPDATE_AND_CREATE_SUBSCRIPTIONGROUP,
//! GET_ALL_SUBSCRIPTIONGROUP_CONFIG, GET_SUBSCRIPTIONGROUP_CONFIG and
//! DELETE_SUBSCRIPTIONGROUP (optionally with the group's offsets).

use std::sync::Arc;

use apogee_protocol::body::SubscriptionGroupConfig;
use apogee_protocol::code::response_code;
use apogee_protocol::header::{
    DeleteSubscriptionGroupRequestHeader, GetAllSubscriptionGroupRequestHeader,
    GetAllSubscriptionGroupResponseHeader, GetSubscriptionGroupConfigRequestHeader,
};
use apogee_protocol::topic::validate_group;
use apogee_protocol::RemotingCommand;
use apogee_remoting::RequestContext;

use super::{bad_header, fail, ok};
use crate::context::BrokerContext;

/// Checks the body of UPDATE_AND_CREATE_SUBSCRIPTIONGROUP; the error is
/// `(response code, remark)`.
pub fn parse_group_config(body: Option<&[u8]>) -> Result<SubscriptionGroupConfig, (i32, String)> {
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return Err((
            response_code::SYSTEM_ERROR,
            "UPDATE_AND_CREATE_SUBSCRIPTIONGROUP needs a SubscriptionGroupConfig JSON body"
                .to_owned(),
        ));
    };
    let cfg = SubscriptionGroupConfig::decode(body).map_err(|e| {
        (
            response_code::SYSTEM_ERROR,
            format!("invalid SubscriptionGroupConfig body: {e}"),
        )
    })?;
    validate_group(&cfg.group_name)
        .map_err(|e| (response_code::INVALID_PARAMETER, e.to_string()))?;
    if cfg.retry_queue_nums < 0 || cfg.retry_max_times < -1 {
        return Err((
            response_code::INVALID_PARAMETER,
            format!(
                "retryQueueNums ({}) must be >= 0 and retryMaxTimes ({}) >= -1",
                cfg.retry_queue_nums, cfg.retry_max_times
            ),
        ));
    }
    Ok(cfg)
}

pub(super) async fn update_and_create_subscription_group(
    ctx: &Arc<BrokerContext>,
    rctx: &RequestContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let cfg = match parse_group_config(req.body.as_deref()) {
        Ok(c) => c,
        Err((code, remark)) => {
            tracing::warn!(caller = %rctx.peer_addr(), "subscription group update refused: {remark}");
            return fail(code, remark);
        }
    };
    tracing::info!(caller = %rctx.peer_addr(), group = %cfg.group_name, "subscription group updated");
    ctx.groups.update(cfg);
    ok()
}

pub(super) fn get_all_subscription_group(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    if let Err(e) = req.decode_header::<GetAllSubscriptionGroupRequestHeader>() {
        return bad_header(req, e);
    }
    let wrapper = ctx.groups.wrapper();
    let total = i32::try_from(wrapper.subscription_group_table.len()).unwrap_or(i32::MAX);
    ok().with_header(&GetAllSubscriptionGroupResponseHeader {
        total_group_num: total,
    })
    .with_body(wrapper.encode())
}

pub(super) fn get_subscription_group(
    ctx: &BrokerContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: GetSubscriptionGroupConfigRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    match ctx.groups.get(&h.group) {
        Some(cfg) => ok().with_body(cfg.encode()),
        None => fail(
            response_code::SUBSCRIPTION_GROUP_NOT_EXIST,
            format!("No group in this broker: {}", h.group),
        ),
    }
}

pub(super) async fn delete_subscription_group(
    ctx: &Arc<BrokerContext>,
    rctx: &RequestContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: DeleteSubscriptionGroupRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let existed = ctx.groups.delete(&h.group_name);
    if h.clean_offset {
        ctx.offsets.remove_group(&h.group_name);
    }
    tracing::info!(
        caller = %rctx.peer_addr(),
        group = %h.group_name,
        existed,
        clean_offset = h.clean_offset,
        "subscription group deleted"
    );
    ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_java_body_with_defaults() {
        let c = parse_group_config(Some(br#"{"groupName":"G1","retryMaxTimes":3}"#)).unwrap();
        assert_eq!(c.group_name, "G1");
        assert_eq!(c.retry_max_times, 3);
        assert_eq!(c.retry_queue_nums, 1);
        assert!(c.consume_enable);
    }

    #[test]
    fn rejects_missing_bad_and_invalid_bodies() {
        assert_eq!(
            parse_group_config(None).unwrap_err().0,
            response_code::SYSTEM_ERROR
        );
        assert_eq!(
            parse_group_config(Some(b"{")).unwrap_err().0,
            response_code::SYSTEM_ERROR
        );
        let (c, r) = parse_group_config(Some(br#"{"groupName":"bad group"}"#)).unwrap_err();
        assert_eq!(c, response_code::INVALID_PARAMETER);
        assert!(r.contains("illegal character"), "{r}");
        let (c, _) = parse_group_config(Some(br#"{"groupName":""}"#)).unwrap_err();
        assert_eq!(c, response_code::INVALID_PARAMETER);
        let (c, r) =
            parse_group_config(Some(br#"{"groupName":"G","retryQueueNums":-2}"#)).unwrap_err();
        assert_eq!(c, response_code::INVALID_PARAMETER);
        assert!(r.contains("retryQueueNums"));
    }
}
