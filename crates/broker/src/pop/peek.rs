//! PEEK_MESSAGE (200052) and NOTIFICATION (200054): look at a group's POP
//! progress without moving it.

use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::header::{
    NotificationRequestHeader, NotificationResponseHeader, PeekMessageRequestHeader,
    PollingInfoRequestHeader, PollingInfoResponseHeader, PopMessageResponseHeader,
};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ProcessorRegistry, RequestContext};
use bytes::BytesMut;

use super::processor::{candidate_queues, check_common};
use crate::context::BrokerContext;
use crate::filter::SubscriptionFilter;
use crate::processor::{bad_header, register_with};
use crate::schedule::now_ms;

/// Registers PEEK_MESSAGE, NOTIFICATION and POLLING_INFO.
pub fn register(registry: &ProcessorRegistry, ctx: &Arc<BrokerContext>) {
    register_with(
        registry,
        ctx,
        request_code::PEEK_MESSAGE,
        |ctx, _, req| async move { Some(peek_message(&ctx, &req)) },
    );
    register_with(
        registry,
        ctx,
        request_code::POLLING_INFO,
        |ctx, _, req| async move { Some(polling_info(&ctx, &req)) },
    );
    register_with(
        registry,
        ctx,
        request_code::NOTIFICATION,
        |ctx, rc, req| async move { notification(&ctx, &rc, &req).await },
    );
}

/// Where the group's POP progress is on a queue (its first message when
/// it has none yet, as Apache's peek).
fn progress(ctx: &BrokerContext, group: &str, topic: &str, qid: i32) -> i64 {
    match ctx.offsets.query(group, topic, qid) {
        Some(o) if o >= 0 => o,
        _ => ctx.store.min_offset(topic, qid),
    }
}

fn peek_message(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let h: PeekMessageRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req.code, &e),
    };
    if let Err(r) = check_common(ctx, &h.topic, &h.consumer_group, h.queue_id) {
        return *r;
    }
    let max = usize::try_from(h.max_msg_nums.clamp(1, 32)).unwrap_or(1);
    let mut records = Vec::new();
    let mut rest = 0i64;
    for (topic, qid) in candidate_queues(ctx, &h.topic, &h.consumer_group, h.queue_id, false) {
        let offset = progress(ctx, &h.consumer_group, &topic, qid);
        if records.len() >= max {
            rest += (ctx.store.max_offset(&topic, qid) - offset).max(0);
            continue;
        }
        let r = ctx.store.get_messages(
            &h.consumer_group,
            &topic,
            qid,
            offset,
            max - records.len(),
            usize::MAX,
            None,
        );
        rest += (r.max_offset - r.next_begin_offset).max(0);
        records.extend(r.messages);
    }
    let header = PopMessageResponseHeader {
        pop_time: now_ms(),
        invisible_time: 0,
        revive_qid: 0,
        rest_num: rest,
        ..Default::default()
    };
    if records.is_empty() {
        return RemotingCommand::response(
            response_code::PULL_NOT_FOUND,
            "NO_MESSAGE_IN_QUEUE".to_owned(),
        )
        .with_header(&header);
    }
    let mut body = BytesMut::with_capacity(records.iter().map(|r| r.len()).sum());
    for r in &records {
        body.extend_from_slice(r);
    }
    RemotingCommand::response(response_code::SUCCESS, "FOUND".to_owned())
        .with_header(&header)
        .with_body(body.freeze())
}

/// Whether a POP of the group would find a message now.
fn has_msg(ctx: &BrokerContext, h: &NotificationRequestHeader) -> bool {
    let order = h.order == Some(true);
    let now = now_ms();
    candidate_queues(ctx, &h.topic, &h.consumer_group, h.queue_id, order)
        .into_iter()
        .any(|(topic, qid)| {
            if order {
                let key = super::order::key(&topic, &h.consumer_group, qid);
                if ctx.pop_order.blocked(&key, h.attempt_id.as_deref(), now) {
                    return false;
                }
            }
            ctx.store.max_offset(&topic, qid) > progress(ctx, &h.consumer_group, &topic, qid)
        })
}

async fn notification(
    ctx: &BrokerContext,
    rc: &RequestContext,
    req: &RemotingCommand,
) -> Option<RemotingCommand> {
    let h: NotificationRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return Some(bad_header(req.code, &e)),
    };
    if let Err(r) = check_common(ctx, &h.topic, &h.consumer_group, h.queue_id) {
        return Some(*r);
    }
    if super::processor::timeout_too_much(h.born_time, h.poll_time) {
        return Some(crate::processor::error_response(
            response_code::POLLING_TIMEOUT,
            format!(
                "the broker[{}] notification is timeout too much",
                ctx.broker_addr
            ),
        ));
    }
    // Registered before the first look (see pop_message): an ack that
    // completes an orderly batch wakes a held orderly notification.
    let order = h.order == Some(true);
    let unblocked = ctx.pop_order.unblocked();
    tokio::pin!(unblocked);
    unblocked.as_mut().enable();
    let mut found = has_msg(ctx, &h);
    if !found && h.poll_time > 0 {
        let (max_total, per_key) = {
            let rc = ctx.runtime_config.read();
            (rc.max_pop_polling_size, rc.pop_polling_size)
        };
        let key = format!("{}@{}@{}", h.topic, h.consumer_group, h.queue_id);
        // Apache answers a full poll at once: SUCCESS with pollingFull.
        let Some(_held) = ctx.pop_notify_polling.hold(key, max_total, per_key) else {
            let header = NotificationResponseHeader {
                has_msg: false,
                polling_full: true,
            };
            return Some(
                RemotingCommand::response(response_code::SUCCESS, None).with_header(&header),
            );
        };
        // Held like a pop: woken when a queue it could read grows.
        let hold = ctx.pull_hold.hold_time(Duration::from_millis(
            u64::try_from(h.poll_time).unwrap_or(0),
        ));
        let all = Arc::new(SubscriptionFilter::all());
        let parked: Vec<_> = candidate_queues(ctx, &h.topic, &h.consumer_group, h.queue_id, false)
            .into_iter()
            .map(|(topic, qid)| {
                let max = ctx.store.max_offset(&topic, qid);
                Box::pin(
                    ctx.pull_hold
                        .park(&topic, qid, max, Arc::clone(&all))
                        .wait(hold),
                )
            })
            .collect();
        if !parked.is_empty() {
            tokio::select! {
                _ = futures::future::select_all(parked) => {}
                _ = &mut unblocked, if order => {}
                _ = rc.channel().closed() => return None,
            }
            found = has_msg(ctx, &h);
        }
    }
    let header = NotificationResponseHeader {
        has_msg: found,
        polling_full: false,
    };
    Some(RemotingCommand::response(response_code::SUCCESS, None).with_header(&header))
}

/// POLLING_INFO (200055): the POP requests held now for the group, topic
/// and queue id as they asked (-1 for any-queue pops).
fn polling_info(ctx: &BrokerContext, req: &RemotingCommand) -> RemotingCommand {
    let h: PollingInfoRequestHeader = match req.decode_header() {
        Ok(h) => h,
        Err(e) => return bad_header(req.code, &e),
    };
    if let Err(r) = check_common(ctx, &h.topic, &h.consumer_group, h.queue_id) {
        return *r;
    }
    let key = format!("{}@{}@{}", h.topic, h.consumer_group, h.queue_id);
    let header = PollingInfoResponseHeader {
        polling_num: ctx.pop_polling.get(&key),
    };
    RemotingCommand::response(response_code::SUCCESS, None).with_header(&header)
}
