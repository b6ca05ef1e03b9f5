//! Topic commands: topicList, topicRoute, topicStatus, updateTopic, deleteTopic.

use std::collections::BTreeSet;

use anyhow::{bail, Context};
use apogee_protocol::body::TopicConfig;
use apogee_protocol::flags::PermName;
use clap::{ArgAction, ArgGroup, Args};
use serde_json::json;

use super::output::{fmt_ms, print_json, Table};
use super::{report_outcomes, Ctx};

/// Namespace of the NameServer KV store holding ordered topics' queue layout.
const ORDER_TOPIC_CONFIG: &str = "ORDER_TOPIC_CONFIG";

#[derive(Args, Debug)]
pub struct TopicListArgs {
    /// Only the topics of this cluster.
    #[arg(short = 'c', long = "cluster")]
    cluster: Option<String>,
}

#[derive(Args, Debug)]
pub struct TopicArg {
    /// Topic name.
    #[arg(short = 't', long = "topic")]
    pub topic: String,
}

#[derive(Args, Debug)]
#[command(group = ArgGroup::new("target").required(true).multiple(false))]
pub struct UpdateTopicArgs {
    /// Topic name.
    #[arg(short = 't', long = "topic")]
    topic: String,
    /// Create on this broker (host:port).
    #[arg(short = 'b', long = "broker-addr", group = "target")]
    broker: Option<String>,
    /// Create on every master broker of this cluster.
    #[arg(short = 'c', long = "cluster", group = "target")]
    cluster: Option<String>,
    /// Read queues per broker.
    #[arg(short = 'r', long = "read-queue-nums", default_value_t = 8)]
    read_queues: i32,
    /// Write queues per broker.
    #[arg(short = 'w', long = "write-queue-nums", default_value_t = 8)]
    write_queues: i32,
    /// Permission: 2 write, 4 read, 6 read+write.
    #[arg(short = 'p', long = "perm", default_value_t = 6)]
    perm: i32,
    /// Ordered topic (also records the queue layout on the NameServers).
    #[arg(short = 'o', long = "order", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true", value_name = "BOOL")]
    order: bool,
}

#[derive(Args, Debug)]
pub struct DeleteTopicArgs {
    /// Topic name.
    #[arg(short = 't', long = "topic")]
    topic: String,
    /// Cluster to delete it from (default: every cluster serving it).
    #[arg(short = 'c', long = "cluster")]
    cluster: Option<String>,
}

pub async fn topic_list(ctx: &Ctx, args: TopicListArgs) -> anyhow::Result<()> {
    let topics = match &args.cluster {
        Some(c) => ctx.admin.topics_by_cluster(c).await.with_context(|| {
            format!(
                "cannot list the topics of cluster {c} from NameServer {}",
                ctx.namesrv
            )
        })?,
        None => ctx
            .admin
            .topic_list()
            .await
            .with_context(|| format!("cannot list topics from NameServer {}", ctx.namesrv))?,
    };
    if ctx.json {
        print_json(&json!({ "topics": topics }));
    } else {
        for t in &topics {
            outln!("{t}");
        }
    }
    Ok(())
}

pub async fn topic_route(ctx: &Ctx, args: TopicArg) -> anyhow::Result<()> {
    let route = ctx.route(&args.topic).await?;
    if ctx.json {
        print_json(&json!(route));
        return Ok(());
    }
    outln!("Topic: {}", args.topic);
    if let Some(conf) = route.order_topic_conf.as_deref().filter(|c| !c.is_empty()) {
        outln!("Order conf: {conf}");
    }
    outln!();
    let mut brokers = Table::new(&["CLUSTER", "BROKER", "BID", "ADDR"]);
    for bd in &route.broker_datas {
        for (id, addr) in &bd.broker_addrs {
            brokers.row(vec![
                bd.cluster.clone(),
                bd.broker_name.clone(),
                id.to_string(),
                addr.clone(),
            ]);
        }
    }
    brokers.print();
    outln!();
    let mut queues = Table::new(&["BROKER", "READ_QUEUES", "WRITE_QUEUES", "PERM"]);
    for qd in &route.queue_datas {
        queues.row(vec![
            qd.broker_name.clone(),
            qd.read_queue_nums.to_string(),
            qd.write_queue_nums.to_string(),
            format!("{} ({})", PermName::perm_to_string(qd.perm), qd.perm),
        ]);
    }
    queues.print();
    Ok(())
}

pub async fn topic_status(ctx: &Ctx, args: TopicArg) -> anyhow::Result<()> {
    ctx.route(&args.topic).await?;
    let stats = ctx
        .admin
        .topic_stats(&args.topic)
        .await
        .with_context(|| format!("cannot get the status of topic {}", args.topic))?;
    let total: i64 = stats
        .offset_table
        .values()
        .map(|o| (o.max_offset - o.min_offset).max(0))
        .sum();
    if ctx.json {
        let queues: Vec<_> = stats
            .offset_table
            .iter()
            .map(|(mq, o)| {
                json!({
                    "broker_name": mq.broker_name,
                    "queue_id": mq.queue_id,
                    "min_offset": o.min_offset,
                    "max_offset": o.max_offset,
                    "last_update_timestamp": o.last_update_timestamp,
                })
            })
            .collect();
        print_json(&json!({"topic": args.topic, "messages": total, "queues": queues}));
        return Ok(());
    }
    let mut t = Table::new(&["BROKER", "QID", "MIN_OFFSET", "MAX_OFFSET", "LAST_UPDATED"]);
    for (mq, o) in &stats.offset_table {
        t.row(vec![
            mq.broker_name.clone(),
            mq.queue_id.to_string(),
            o.min_offset.to_string(),
            o.max_offset.to_string(),
            fmt_ms(o.last_update_timestamp),
        ]);
    }
    t.print();
    outln!(
        "\n{} queue(s), {total} message(s) between min and max offsets",
        stats.offset_table.len()
    );
    Ok(())
}

pub async fn update_topic(ctx: &Ctx, args: UpdateTopicArgs) -> anyhow::Result<()> {
    if !PermName::is_valid(args.perm) {
        bail!(
            "invalid permission {} (use 2 write, 4 read or 6 read+write)",
            args.perm
        );
    }
    if args.read_queues <= 0 || args.write_queues <= 0 {
        bail!("-r and -w must be at least 1");
    }
    let mut config = TopicConfig::new(args.topic.clone());
    config.read_queue_nums = args.read_queues;
    config.write_queue_nums = args.write_queues;
    config.perm = args.perm;
    config.order = args.order;
    let addrs = ctx.targets(&args.broker, &args.cluster).await?;
    let mut outcomes = Vec::new();
    for addr in &addrs {
        let r = ctx.admin.create_topic(addr, &config).await;
        outcomes.push((addr.clone(), r.map_err(|e| e.to_string())));
    }
    let all_ok = outcomes.iter().all(|(_, r)| r.is_ok());
    let mut order_conf = None;
    if args.order && all_ok {
        // mqadmin keeps ordered topics' "brokerName:writeQueues;…" on the NameServers.
        let info = ctx
            .admin
            .cluster_info()
            .await
            .context("cannot read the cluster info to record the order config")?;
        let names: BTreeSet<String> = match &args.cluster {
            Some(c) => info.cluster_addr_table.get(c).cloned().unwrap_or_default(),
            None => info
                .broker_addr_table
                .values()
                .filter(|bd| bd.broker_addrs.values().any(|a| addrs.contains(a)))
                .map(|bd| bd.broker_name.clone())
                .collect(),
        };
        let conf = names
            .iter()
            .map(|n| format!("{n}:{}", args.write_queues))
            .collect::<Vec<_>>()
            .join(";");
        if !conf.is_empty() {
            ctx.admin
                .put_kv_config(ORDER_TOPIC_CONFIG, &args.topic, &conf)
                .await
                .context("cannot record the order config on the NameServers")?;
            order_conf = Some(conf);
        }
    }
    let extra = json!({"topic_config": config, "order_conf": order_conf});
    report_outcomes(
        ctx,
        &format!("create topic {}", args.topic),
        outcomes,
        extra,
    )?;
    if !ctx.json {
        outln!(
            "read queues {}, write queues {}, perm {} ({}), order {}",
            config.read_queue_nums,
            config.write_queue_nums,
            PermName::perm_to_string(config.perm),
            config.perm,
            config.order
        );
        if let Some(c) = order_conf {
            outln!("order conf {c}");
        }
    }
    Ok(())
}

pub async fn delete_topic(ctx: &Ctx, args: DeleteTopicArgs) -> anyhow::Result<()> {
    let clusters: BTreeSet<String> = match &args.cluster {
        Some(c) => BTreeSet::from([c.clone()]),
        None => ctx
            .route(&args.topic)
            .await?
            .broker_datas
            .iter()
            .map(|bd| bd.cluster.clone())
            .collect(),
    };
    if clusters.is_empty() {
        bail!(
            "topic {} is served by no cluster; give one with -c",
            args.topic
        );
    }
    for c in &clusters {
        ctx.admin
            .delete_topic(&args.topic, c)
            .await
            .with_context(|| format!("cannot delete topic {} from cluster {c}", args.topic))?;
    }
    if ctx.json {
        print_json(&json!({"action": "delete topic", "topic": args.topic, "clusters": clusters}));
    } else {
        for c in &clusters {
            outln!(
                "deleted topic {} from cluster {c} and the NameServers",
                args.topic
            );
        }
    }
    Ok(())
}
