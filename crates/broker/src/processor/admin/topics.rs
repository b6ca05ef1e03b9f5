//! Topic administration: UPDATE_AND_CREATE_TOPIC (validated, persisted,
//! re-registered), DELETE_TOPIC_IN_BROKER (with the topic's offsets and
//! store queues),
//! GET_ALL_TOPIC_CONFIG, GET_TOPIC_CONFIG, GET_TOPIC_NAME_LIST and
//! GET_SYSTEM_TOPIC_LIST_FROM_BROKER.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use apogee_protocol::body::{
    TopicConfig, TopicConfigAndMappingSerializeWrapper, TopicFilterType, TopicList,
};
use apogee_protocol::code::response_code;
use apogee_protocol::flags::PermName;
use apogee_protocol::header::{
    CreateTopicRequestHeader, DeleteTopicRequestHeader, GetAllTopicConfigRequestHeader,
    GetAllTopicConfigResponseHeader, GetTopicConfigRequestHeader,
};
use apogee_protocol::topic::{is_system_topic, validate_topic, SYSTEM_TOPICS};
use apogee_protocol::RemotingCommand;
use apogee_remoting::RequestContext;

use super::{attributes, bad_header, fail, ok};
use crate::context::BrokerContext;

/// Most read or write queues a topic may be given here (Java sets no
/// limit; this keeps a typo from creating millions of queue files).
pub const MAX_QUEUE_NUMS: i32 = 1024;

/// Checks an UPDATE_AND_CREATE_TOPIC request and builds the resulting
/// config, `current` being the topic's config if it exists. The error is
/// `(response code, remark)`.
pub fn validate_create_topic(
    h: &CreateTopicRequestHeader,
    current: Option<&TopicConfig>,
) -> Result<TopicConfig, (i32, String)> {
    let invalid = |remark: String| Err((response_code::INVALID_PARAMETER, remark));
    if let Err(e) = validate_topic(&h.topic) {
        return invalid(e.to_string());
    }
    if is_system_topic(&h.topic) {
        return invalid(format!(
            "The topic[{}] is conflict with system topic.",
            h.topic
        ));
    }
    for (name, n) in [
        ("readQueueNums", h.read_queue_nums),
        ("writeQueueNums", h.write_queue_nums),
    ] {
        if !(1..=MAX_QUEUE_NUMS).contains(&n) {
            return invalid(format!(
                "{name} {n} is out of range: it must be between 1 and {MAX_QUEUE_NUMS}"
            ));
        }
    }
    if !PermName::is_valid(h.perm) {
        return invalid(format!(
            "perm {} is not valid: it must be a combination of READ (4), WRITE (2) and INHERIT (1), i.e. 0..7",
            h.perm
        ));
    }
    let Some(filter) = TopicFilterType::from_java_name(h.topic_filter_type.trim()) else {
        return invalid(format!(
            "topicFilterType {:?} is not valid: expected SINGLE_TAG or MULTI_TAG",
            h.topic_filter_type
        ));
    };
    // Attribute errors are exceptions in Java, hence SYSTEM_ERROR.
    let modification =
        attributes::parse(h.attributes.as_deref()).map_err(|e| (response_code::SYSTEM_ERROR, e))?;
    if modification.get("message.type").and_then(|v| v.as_deref()) == Some("MIXED") {
        return invalid("MIXED message type is not supported.".to_owned());
    }
    let empty = BTreeMap::new();
    let attrs = attributes::alter(
        current.is_none(),
        current.map_or(&empty, |c| &c.attributes),
        &modification,
    )
    .map_err(|e| (response_code::SYSTEM_ERROR, e))?;
    Ok(TopicConfig {
        topic_name: h.topic.clone(),
        read_queue_nums: h.read_queue_nums,
        write_queue_nums: h.write_queue_nums,
        perm: h.perm,
        topic_filter_type: filter,
        topic_sys_flag: h.topic_sys_flag.unwrap_or(0),
        order: h.order,
        attributes: attrs,
    })
}

pub(super) async fn update_and_create_topic(
    ctx: &Arc<BrokerContext>,
    rctx: &RequestContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: CreateTopicRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    let current = ctx.topics.get(&h.topic);
    let cfg = match validate_create_topic(&h, current.as_ref()) {
        Ok(c) => c,
        Err((code, remark)) => {
            tracing::warn!(caller = %rctx.peer_addr(), topic = %h.topic, "create topic refused: {remark}");
            return fail(code, remark);
        }
    };
    if current.as_ref() == Some(&cfg) {
        // Idempotent: nothing to persist or re-register.
        return ok();
    }
    tracing::info!(
        caller = %rctx.peer_addr(),
        topic = %cfg.topic_name,
        read = cfg.read_queue_nums,
        write = cfg.write_queue_nums,
        perm = cfg.perm,
        created = current.is_none(),
        "topic updated"
    );
    // Registered with the NameServers incrementally by the table itself.
    ctx.topics.update(cfg);
    ok()
}

pub(super) async fn delete_topic(
    ctx: &Arc<BrokerContext>,
    rctx: &RequestContext,
    req: &RemotingCommand,
) -> RemotingCommand {
    let h: DeleteTopicRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    if h.topic.trim().is_empty() {
        return fail(
            response_code::INVALID_PARAMETER,
            "The specified topic is blank.",
        );
    }
    if is_system_topic(&h.topic) {
        return fail(
            response_code::INVALID_PARAMETER,
            format!("The topic[{}] is conflict with system topic.", h.topic),
        );
    }
    // A removal asks for a full registration by itself.
    let existed = ctx.topics.delete(&h.topic);
    // Offsets of a deleted topic would resurface if it were re-created.
    ctx.offsets.remove_topic(&h.topic);
    // Its queues and queue offsets go too (also when the config was already
    // gone, so a failed attempt can be retried), as Java's deleteTopics: a
    // re-created topic starts at offset 0 with no old messages.
    let store = Arc::clone(&ctx.store);
    let topic = h.topic.clone();
    let outcome = match tokio::task::spawn_blocking(move || store.delete_topics(&[&topic])).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let removed = match outcome {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(topic = %h.topic, error = %e, "deleting the topic's queues failed");
            return fail(
                response_code::SYSTEM_ERROR,
                format!("deleting the queues of topic[{}] failed: {e}", h.topic),
            );
        }
    };
    tracing::info!(caller = %rctx.peer_addr(), topic = %h.topic, existed, queues = removed, "topic deleted");
    ok()
}

pub(super) fn get_all_topic_config(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    // Paging fields (5.x) are accepted but everything is returned, which
    // is what Java does unless `enableSplitMetadata` is on.
    if let Err(e) = req.decode_header::<GetAllTopicConfigRequestHeader>() {
        return bad_header(req, e);
    }
    let wrapper: TopicConfigAndMappingSerializeWrapper = ctx.topics.serialize_wrapper().into();
    let total = i32::try_from(wrapper.topic_config_table.len()).unwrap_or(i32::MAX);
    ok().with_header(&GetAllTopicConfigResponseHeader {
        total_topic_num: total,
    })
    .with_body(wrapper.encode())
}

pub(super) fn get_topic_config(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let h: GetTopicConfigRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req, e),
    };
    match ctx.topics.get(&h.topic) {
        // `TopicConfigAndQueueMapping` is the TopicConfig plus a mapping
        // detail that is absent without static topics.
        Some(cfg) => ok().with_body(cfg.encode()),
        None => fail(
            response_code::TOPIC_NOT_EXIST,
            format!("No topic in this broker. topic: {}", h.topic),
        ),
    }
}

pub(super) fn get_topic_name_list(ctx: &BrokerContext) -> RemotingCommand {
    let body = TopicList {
        topic_list: ctx.topics.topic_names().into_iter().collect(),
        broker_addr: Some(ctx.broker_addr.clone()),
    };
    ok().with_body(body.encode())
}

/// Java's system topic set: the fixed names plus the per-cluster and
/// per-broker topics the broker registers as system topics at start.
pub(super) fn get_system_topic_list(ctx: &BrokerContext) -> RemotingCommand {
    let mut topics: BTreeSet<String> = SYSTEM_TOPICS.iter().map(|t| t.to_string()).collect();
    topics.extend(
        ctx.topics
            .topic_names()
            .into_iter()
            .filter(|t| is_system_topic(t)),
    );
    topics.insert(ctx.config.broker_cluster_name.clone());
    topics.insert(ctx.config.broker_name.clone());
    ok().with_body(
        TopicList {
            topic_list: topics,
            broker_addr: None,
        }
        .encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(topic: &str) -> CreateTopicRequestHeader {
        CreateTopicRequestHeader {
            topic: topic.into(),
            default_topic: "TBW102".into(),
            read_queue_nums: 4,
            write_queue_nums: 4,
            perm: 6,
            topic_filter_type: "SINGLE_TAG".into(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_request_builds_config() {
        let mut h = header("Orders");
        h.attributes = Some("+message.type=FIFO".into());
        h.order = true;
        let c = validate_create_topic(&h, None).unwrap();
        assert_eq!(c.topic_name, "Orders");
        assert_eq!((c.read_queue_nums, c.write_queue_nums, c.perm), (4, 4, 6));
        assert!(c.order);
        assert_eq!(
            c.attributes.get("message.type").map(String::as_str),
            Some("FIFO")
        );
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let code = |h: &CreateTopicRequestHeader| validate_create_topic(h, None).unwrap_err();
        let (c, r) = code(&header("bad topic"));
        assert_eq!(c, response_code::INVALID_PARAMETER);
        assert!(r.contains("illegal character"), "{r}");
        let (c, r) = code(&header("TBW102"));
        assert_eq!(c, response_code::INVALID_PARAMETER);
        assert!(r.contains("system topic"), "{r}");
        let mut h = header("T");
        h.write_queue_nums = 0;
        assert!(code(&h).1.contains("writeQueueNums 0"));
        let mut h = header("T");
        h.read_queue_nums = 5000;
        assert!(code(&h).1.contains("readQueueNums 5000"));
        let mut h = header("T");
        h.perm = 9;
        assert!(code(&h).1.contains("perm 9"));
        let mut h = header("T");
        h.topic_filter_type = "SQL".into();
        assert!(code(&h).1.contains("topicFilterType"));
        let mut h = header("T");
        h.attributes = Some("+message.type=MIXED".into());
        assert!(code(&h).1.contains("MIXED"));
        let mut h = header("T");
        h.attributes = Some("+nope=1".into());
        let (c, r) = code(&h);
        assert_eq!(c, response_code::SYSTEM_ERROR);
        assert!(r.contains("unsupported key"));
    }
}
