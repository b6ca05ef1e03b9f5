//! Consumer group commands: updateSubGroup, deleteSubGroup, consumerProgress,
//! consumerConnection, resetOffsetByTime.

use std::collections::BTreeMap;

use anyhow::anyhow;
use apogee_client::{consume_lag, ClientError, MessageQueue};
use apogee_protocol::body::{ConsumeStats, OffsetWrapper, SubscriptionGroupConfig};
use apogee_protocol::code::response_code;
use apogee_protocol::topic::retry_topic;
use clap::{ArgAction, ArgGroup, Args};
use serde_json::json;

use super::output::{fmt_ms, parse_time, print_json, print_kv, Table};
use super::{is_no_route, report_outcomes, Ctx};

#[derive(Args, Debug)]
pub struct GroupArg {
    /// Consumer group.
    #[arg(short = 'g', long = "group")]
    pub group: String,
}

#[derive(Args, Debug)]
#[command(group = ArgGroup::new("target").required(true).multiple(false))]
pub struct UpdateSubGroupArgs {
    /// Consumer group.
    #[arg(short = 'g', long = "group")]
    group: String,
    /// On this broker (host:port).
    #[arg(short = 'b', long = "broker-addr", group = "target")]
    broker: Option<String>,
    /// On every master broker of this cluster.
    #[arg(short = 'c', long = "cluster", group = "target")]
    cluster: Option<String>,
    /// Whether the group may consume.
    #[arg(short = 's', long = "consume-enable", action = ArgAction::Set, value_name = "BOOL")]
    consume_enable: Option<bool>,
    /// Whether a new group starts from the queue's minimum offset.
    #[arg(short = 'm', long = "consume-from-min-enable", action = ArgAction::Set, value_name = "BOOL")]
    consume_from_min_enable: Option<bool>,
    /// Whether broadcasting consumption is allowed.
    #[arg(short = 'd', long = "consume-broadcast-enable", action = ArgAction::Set, value_name = "BOOL")]
    consume_broadcast_enable: Option<bool>,
    /// Whether the group consumes orderly.
    #[arg(short = 'o', long = "consume-message-orderly", action = ArgAction::Set, value_name = "BOOL")]
    consume_message_orderly: Option<bool>,
    /// Retry queues.
    #[arg(short = 'q', long = "retry-queue-nums")]
    retry_queue_nums: Option<i32>,
    /// Deliveries before a message goes to the dead-letter queue.
    #[arg(short = 'r', long = "retry-max-times")]
    retry_max_times: Option<i32>,
    /// Broker id to consume from.
    #[arg(short = 'i', long = "broker-id")]
    broker_id: Option<i64>,
    /// Broker id to consume from when consumption is slow.
    #[arg(short = 'w', long = "which-broker-when-consume-slowly")]
    which_broker_when_consume_slowly: Option<i64>,
    /// Whether clients are told when the group's members change.
    #[arg(short = 'a', long = "notify-consumer-ids-changed", action = ArgAction::Set, value_name = "BOOL")]
    notify_consumer_ids_changed: Option<bool>,
}

#[derive(Args, Debug)]
#[command(group = ArgGroup::new("target").required(true).multiple(false))]
pub struct DeleteSubGroupArgs {
    /// Consumer group.
    #[arg(short = 'g', long = "group")]
    group: String,
    /// On this broker (host:port).
    #[arg(short = 'b', long = "broker-addr", group = "target")]
    broker: Option<String>,
    /// On every master broker of this cluster.
    #[arg(short = 'c', long = "cluster", group = "target")]
    cluster: Option<String>,
    /// Also remove the group's consumer offsets.
    #[arg(short = 'r', long = "remove-offset", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    remove_offset: bool,
}

#[derive(Args, Debug)]
pub struct ConsumerProgressArgs {
    /// Consumer group.
    #[arg(short = 'g', long = "group")]
    group: String,
    /// Only this topic.
    #[arg(short = 't', long = "topic")]
    topic: Option<String>,
}

#[derive(Args, Debug)]
pub struct ResetOffsetArgs {
    /// Consumer group.
    #[arg(short = 'g', long = "group")]
    group: String,
    /// Topic.
    #[arg(short = 't', long = "topic")]
    topic: String,
    /// Time: now, milliseconds since the epoch, or yyyy-MM-dd#HH:mm:ss:SSS.
    #[arg(short = 's', long = "timestamp")]
    timestamp: String,
    /// Also move offsets forward (false: only roll back).
    #[arg(short = 'f', long = "force", action = ArgAction::Set, default_value_t = true, value_name = "BOOL")]
    force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum RequestMode {
    Pull,
    Pop,
}

#[derive(Args, Debug)]
#[command(group = ArgGroup::new("target").required(true).multiple(false))]
pub struct SetConsumeModeArgs {
    /// On this broker (host:port).
    #[arg(short = 'b', long = "broker-addr", group = "target")]
    broker: Option<String>,
    /// On every master broker of this cluster.
    #[arg(short = 'c', long = "cluster", group = "target")]
    cluster: Option<String>,
    /// Topic.
    #[arg(short = 't', long = "topic")]
    topic: String,
    /// Consumer group.
    #[arg(short = 'g', long = "group")]
    group: String,
    /// PULL or POP.
    #[arg(short = 'm', long = "mode", value_enum, ignore_case = true)]
    mode: RequestMode,
    /// POP only: how many following clients' queues each client also pops
    /// (0: every client pops every queue).
    #[arg(short = 'q', long = "pop-share-queue-num", default_value_t = 0)]
    pop_share_queue_num: i32,
}

/// mqadmin setConsumeMode: how a group reads a topic when the broker
/// assigns its queues (RocketMQ 5 clients with client-side rebalancing off).
pub async fn set_consume_mode(ctx: &Ctx, a: SetConsumeModeArgs) -> anyhow::Result<()> {
    apogee_protocol::topic::validate_group(&a.group)
        .map_err(|e| anyhow!("invalid group name {}: {e}", a.group))?;
    apogee_protocol::topic::validate_topic(&a.topic)
        .map_err(|e| anyhow!("invalid topic name {}: {e}", a.topic))?;
    let body = apogee_protocol::body::SetMessageRequestModeRequestBody {
        topic: a.topic.clone(),
        consumer_group: a.group.clone(),
        mode: match a.mode {
            RequestMode::Pull => apogee_protocol::body::MessageRequestMode::Pull,
            RequestMode::Pop => apogee_protocol::body::MessageRequestMode::Pop,
        },
        pop_share_queue_num: a.pop_share_queue_num,
    };
    let addrs = ctx.targets(&a.broker, &a.cluster).await?;
    let mut outcomes = Vec::new();
    for addr in addrs {
        let r = ctx.admin.set_message_request_mode(&addr, &body).await;
        outcomes.push((addr, r.map_err(|e| e.to_string())));
    }
    report_outcomes(
        ctx,
        &format!(
            "set consume mode of group {} on topic {} to {}",
            a.group,
            a.topic,
            body.mode.java_name()
        ),
        outcomes,
        json!({"topic": a.topic, "group": a.group, "mode": body.mode.java_name(), "pop_share_queue_num": a.pop_share_queue_num}),
    )
}

pub async fn update_sub_group(ctx: &Ctx, a: UpdateSubGroupArgs) -> anyhow::Result<()> {
    let mut config = SubscriptionGroupConfig::new(a.group.clone());
    if let Some(v) = a.consume_enable {
        config.consume_enable = v;
    }
    if let Some(v) = a.consume_from_min_enable {
        config.consume_from_min_enable = v;
    }
    if let Some(v) = a.consume_broadcast_enable {
        config.consume_broadcast_enable = v;
    }
    if let Some(v) = a.consume_message_orderly {
        config.consume_message_orderly = v;
    }
    if let Some(v) = a.retry_queue_nums {
        config.retry_queue_nums = v;
    }
    if let Some(v) = a.retry_max_times {
        config.retry_max_times = v;
    }
    if let Some(v) = a.broker_id {
        config.broker_id = v;
    }
    if let Some(v) = a.which_broker_when_consume_slowly {
        config.which_broker_when_consume_slowly = v;
    }
    if let Some(v) = a.notify_consumer_ids_changed {
        config.notify_consumer_ids_changed_enable = v;
    }
    apogee_protocol::topic::validate_group(&a.group)
        .map_err(|e| anyhow!("invalid group name {}: {e}", a.group))?;
    let addrs = ctx.targets(&a.broker, &a.cluster).await?;
    let mut outcomes = Vec::new();
    for addr in addrs {
        let r = ctx.admin.create_subscription_group(&addr, &config).await;
        outcomes.push((addr, r.map_err(|e| e.to_string())));
    }
    report_outcomes(
        ctx,
        &format!("create subscription group {}", a.group),
        outcomes,
        json!({"group_config": config}),
    )?;
    if !ctx.json {
        outln!(
            "consume enable {}, broadcast {}, orderly {}, retry queues {}, retry max times {}",
            config.consume_enable,
            config.consume_broadcast_enable,
            config.consume_message_orderly,
            config.retry_queue_nums,
            config.retry_max_times
        );
    }
    Ok(())
}

pub async fn delete_sub_group(ctx: &Ctx, a: DeleteSubGroupArgs) -> anyhow::Result<()> {
    let addrs = ctx.targets(&a.broker, &a.cluster).await?;
    let mut outcomes = Vec::new();
    for addr in addrs {
        let r = ctx
            .admin
            .delete_subscription_group(&addr, &a.group, a.remove_offset)
            .await;
        outcomes.push((addr, r.map_err(|e| e.to_string())));
    }
    report_outcomes(
        ctx,
        &format!("delete subscription group {}", a.group),
        outcomes,
        json!({"group": a.group, "remove_offset": a.remove_offset}),
    )
}

/// A group's consume stats, with "unknown group" said plainly.
async fn stats(ctx: &Ctx, group: &str, topic: Option<&str>) -> anyhow::Result<ConsumeStats> {
    ctx.admin.consume_stats(group, topic).await.map_err(|e| {
        if is_no_route(&e) {
            anyhow!(
                "consumer group {group} is unknown: NameServer {} has no route for {}{}",
                ctx.namesrv,
                retry_topic(group),
                if topic.is_some() {
                    " nor for the topic"
                } else {
                    " (give the topic with -t)"
                }
            )
        } else {
            anyhow::Error::new(e)
                .context(format!("cannot get the progress of consumer group {group}"))
        }
    })
}

pub async fn consumer_progress(ctx: &Ctx, a: ConsumerProgressArgs) -> anyhow::Result<()> {
    let mut stats = stats(ctx, &a.group, a.topic.as_deref()).await?;
    if let Some(t) = &a.topic {
        stats.offset_table.retain(|mq, _| &mq.topic == t);
    }
    let total = consume_lag(&stats);
    let inflight_total: i64 = stats.offset_table.values().map(inflight).sum();
    if ctx.json {
        let queues: Vec<_> = stats
            .offset_table
            .iter()
            .map(|(mq, w)| {
                json!({
                    "topic": mq.topic,
                    "broker_name": mq.broker_name,
                    "queue_id": mq.queue_id,
                    "broker_offset": w.broker_offset,
                    "consumer_offset": w.consumer_offset,
                    "diff": w.broker_offset - w.consumer_offset,
                    "inflight": inflight(w),
                    "last_timestamp": w.last_timestamp,
                })
            })
            .collect();
        print_json(&json!({
            "group": a.group,
            "consume_tps": stats.consume_tps,
            "diff_total": total,
            "inflight_total": inflight_total,
            "queues": queues,
        }));
        return Ok(());
    }
    let mut t = Table::new(&[
        "TOPIC",
        "BROKER",
        "QID",
        "BROKER_OFFSET",
        "CONSUMER_OFFSET",
        "DIFF",
        "INFLIGHT",
        "LAST_TIME",
    ]);
    for (mq, w) in &stats.offset_table {
        t.row(vec![
            mq.topic.clone(),
            mq.broker_name.clone(),
            mq.queue_id.to_string(),
            w.broker_offset.to_string(),
            w.consumer_offset.to_string(),
            (w.broker_offset - w.consumer_offset).to_string(),
            inflight(w).to_string(),
            fmt_ms(w.last_timestamp),
        ]);
    }
    t.print();
    outln!();
    outln!("Consume TPS: {:.2}", stats.consume_tps);
    outln!("Diff Total: {total}");
    outln!("Inflight Total: {inflight_total}");
    Ok(())
}

/// Messages handed out but not settled: pulled past the committed offset
/// (mqadmin's #Inflight), plus those popped and not yet acked (POP).
fn inflight(w: &OffsetWrapper) -> i64 {
    (w.pull_offset - w.consumer_offset).max(0) + w.pop_inflight.max(0)
}

pub async fn consumer_connection(ctx: &Ctx, a: GroupArg) -> anyhow::Result<()> {
    let conn = ctx
        .admin
        .consumer_connections(&a.group)
        .await
        .map_err(|e| {
            if e.response_code() == Some(response_code::CONSUMER_NOT_ONLINE) {
                anyhow!("consumer group {} has no online client", a.group)
            } else if is_no_route(&e) {
                anyhow!(
                    "consumer group {} is unknown: NameServer {} has no route for {}",
                    a.group,
                    ctx.namesrv,
                    retry_topic(&a.group)
                )
            } else {
                anyhow::Error::new(e).context(format!(
                    "cannot list the connections of consumer group {}",
                    a.group
                ))
            }
        })?;
    if ctx.json {
        print_json(&json!({
            "group": a.group,
            "connections": conn.connection_set,
            "subscriptions": conn.subscription_table,
            "consume_type": conn.consume_type.java_name(),
            "message_model": conn.message_model.java_name(),
            "consume_from_where": conn.consume_from_where.java_name(),
        }));
        return Ok(());
    }
    let mut t = Table::new(&["#", "CLIENT_ID", "CLIENT_ADDR", "LANGUAGE", "VERSION"]);
    for (i, c) in conn.connection_set.iter().enumerate() {
        t.row(vec![
            (i + 1).to_string(),
            c.client_id.clone(),
            c.client_addr.clone(),
            c.language.name().to_string(),
            c.version.to_string(),
        ]);
    }
    t.print();
    outln!();
    let mut s = Table::new(&["TOPIC", "SUBSCRIPTION"]);
    for (topic, sub) in &conn.subscription_table {
        s.row(vec![topic.clone(), sub.sub_string.clone()]);
    }
    s.print();
    outln!();
    print_kv([
        ("ConsumeType:", conn.consume_type.java_name().to_string()),
        ("MessageModel:", conn.message_model.java_name().to_string()),
        (
            "ConsumeFromWhere:",
            conn.consume_from_where.java_name().to_string(),
        ),
    ]);
    Ok(())
}

pub async fn reset_offset_by_time(ctx: &Ctx, a: ResetOffsetArgs) -> anyhow::Result<()> {
    let timestamp = parse_time(&a.timestamp)?;
    ctx.route(&a.topic).await?;
    let offsets = match ctx
        .admin
        .reset_offset_by_time(&a.group, &a.topic, timestamp, a.force)
        .await
    {
        Ok(o) => o,
        // Older brokers refuse while no consumer of the group is online;
        // mqadmin then rewrites the stored offsets itself.
        Err(e) if e.response_code() == Some(response_code::CONSUMER_NOT_ONLINE) => {
            reset_offline(ctx, &a, timestamp).await?
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot reset the offsets of group {} on topic {}",
                a.group, a.topic
            )))
        }
    };
    if ctx.json {
        let queues: Vec<_> = offsets
            .iter()
            .map(|(mq, off)| json!({"broker_name": mq.broker_name, "queue_id": mq.queue_id, "offset": off}))
            .collect();
        print_json(&json!({
            "group": a.group,
            "topic": a.topic,
            "timestamp": timestamp,
            "force": a.force,
            "queues": queues,
        }));
        return Ok(());
    }
    outln!(
        "reset group {} on topic {} to {} ({timestamp})",
        a.group,
        a.topic,
        fmt_ms(timestamp)
    );
    let mut t = Table::new(&["BROKER", "QID", "NEW_OFFSET"]);
    for (mq, off) in &offsets {
        t.row(vec![
            mq.broker_name.clone(),
            mq.queue_id.to_string(),
            off.to_string(),
        ]);
    }
    t.print();
    Ok(())
}

/// The offline reset: per queue, search the offset of `timestamp` and store
/// it as the group's offset (only backwards unless forced).
async fn reset_offline(
    ctx: &Ctx,
    a: &ResetOffsetArgs,
    timestamp: i64,
) -> anyhow::Result<BTreeMap<MessageQueue, i64>> {
    let stats = stats(ctx, &a.group, Some(&a.topic)).await?;
    let mut out = BTreeMap::new();
    for (mq, w) in stats
        .offset_table
        .iter()
        .filter(|(mq, _)| mq.topic == a.topic)
    {
        let target = ctx.admin.search_offset(mq, timestamp).await?;
        if !a.force && target > w.consumer_offset {
            continue;
        }
        let inst = ctx.admin.instance();
        let addr = inst
            .master_addr_or_refresh(&mq.broker_name, &mq.topic)
            .await?;
        inst.update_consumer_offset(&addr, &a.group, mq, target, false)
            .await
            .map_err(|e: ClientError| {
                anyhow::Error::new(e).context(format!("cannot store the offset of {mq:?}"))
            })?;
        out.insert(mq.clone(), target);
    }
    Ok(out)
}
