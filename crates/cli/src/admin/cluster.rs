//! Cluster and broker commands: clusterList, brokerStatus, getBrokerConfig,
//! updateBrokerConfig.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use super::output::{print_json, print_kv, Table};
use super::{report_outcomes, Ctx};

#[derive(Args, Debug)]
pub struct ClusterListArgs {
    /// Only this cluster.
    #[arg(short = 'c', long = "cluster")]
    cluster: Option<String>,
}

/// `-b` broker address or `-c` cluster (every master of it).
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct BrokerTarget {
    /// Broker address, host:port.
    #[arg(short = 'b', long = "broker-addr")]
    pub broker: Option<String>,
    /// Cluster name: every master broker of it.
    #[arg(short = 'c', long = "cluster")]
    pub cluster: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpdateBrokerConfigArgs {
    #[command(flatten)]
    target: BrokerTarget,
    /// Configuration key, e.g. autoCreateTopicEnable.
    #[arg(short = 'k', long = "key")]
    key: String,
    /// New value.
    #[arg(short = 'v', long = "value")]
    value: String,
}

/// First decimal of a "10s 60s 600s" TPS triple.
fn first_tps(v: Option<&String>) -> String {
    v.and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .map(|f| format!("{f:.2}"))
        .unwrap_or_else(|| "-".into())
}

/// `now - morning` of two counters in the runtime info.
fn today(info: &BTreeMap<String, String>, now: &str, morning: &str) -> String {
    let get = |k: &str| info.get(k).and_then(|v| v.trim().parse::<i64>().ok());
    match (get(now), get(morning)) {
        (Some(n), Some(m)) => (n - m).to_string(),
        _ => "-".into(),
    }
}

pub async fn cluster_list(ctx: &Ctx, args: ClusterListArgs) -> anyhow::Result<()> {
    let info = ctx
        .admin
        .cluster_info()
        .await
        .with_context(|| format!("cannot get cluster info from NameServer {}", ctx.namesrv))?;
    if let Some(c) = &args.cluster {
        if !info.cluster_addr_table.contains_key(c) {
            anyhow::bail!("cluster {c} is unknown to NameServer {}", ctx.namesrv);
        }
    }
    let mut rows = Vec::new();
    for (cluster, names) in &info.cluster_addr_table {
        if args.cluster.as_ref().is_some_and(|c| c != cluster) {
            continue;
        }
        for name in names {
            let Some(bd) = info.broker_addr_table.get(name) else {
                continue;
            };
            for (id, addr) in &bd.broker_addrs {
                let runtime = ctx.admin.broker_runtime_info(addr).await;
                rows.push((cluster.clone(), name.clone(), *id, addr.clone(), runtime));
            }
        }
    }
    if ctx.json {
        let brokers: Vec<Value> = rows
            .iter()
            .map(|(cluster, name, id, addr, rt)| {
                let mut v = json!({
                    "cluster": cluster,
                    "broker_name": name,
                    "broker_id": id,
                    "addr": addr,
                });
                match rt {
                    Ok(kv) => v["runtime"] = json!(kv),
                    Err(e) => v["error"] = json!(e.to_string()),
                }
                v
            })
            .collect();
        print_json(&json!({ "brokers": brokers }));
        return Ok(());
    }
    let mut t = Table::new(&[
        "CLUSTER",
        "BROKER",
        "BID",
        "ADDR",
        "VERSION",
        "IN_TPS",
        "OUT_TPS",
        "PUT_TODAY",
        "GET_TODAY",
        "DISK_RATIO",
    ]);
    for (cluster, name, id, addr, rt) in &rows {
        let mut row = vec![cluster.clone(), name.clone(), id.to_string(), addr.clone()];
        match rt {
            Ok(kv) => row.extend([
                kv.get("brokerVersionDesc")
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                first_tps(kv.get("putTps")),
                first_tps(kv.get("getTransferredTps")),
                today(kv, "msgPutTotalTodayNow", "msgPutTotalTodayMorning"),
                today(kv, "msgGetTotalTodayNow", "msgGetTotalTodayMorning"),
                kv.get("commitLogDiskRatio")
                    .and_then(|v| v.parse::<f64>().ok())
                    .map(|f| format!("{f:.2}"))
                    .unwrap_or_else(|| "-".into()),
            ]),
            Err(_) => row.extend(["unreachable".to_string()]),
        }
        t.row(row);
    }
    if t.is_empty() {
        outln!("no broker is registered with NameServer {}", ctx.namesrv);
    } else {
        t.print();
    }
    Ok(())
}

pub async fn broker_status(ctx: &Ctx, args: BrokerTarget) -> anyhow::Result<()> {
    let addrs = ctx.targets(&args.broker, &args.cluster).await?;
    let mut all = BTreeMap::new();
    for addr in &addrs {
        let kv = ctx
            .admin
            .broker_runtime_info(addr)
            .await
            .with_context(|| format!("cannot get the status of broker {addr}"))?;
        all.insert(addr.clone(), kv);
    }
    print_per_broker(ctx, all);
    Ok(())
}

pub async fn ha_status(ctx: &Ctx, args: BrokerTarget) -> anyhow::Result<()> {
    let addrs = ctx.targets(&args.broker, &args.cluster).await?;
    let mut all = serde_json::Map::new();
    for addr in &addrs {
        let v = ctx
            .admin
            .ha_status(addr)
            .await
            .with_context(|| format!("cannot get the HA status of broker {addr}"))?;
        all.insert(addr.clone(), v);
    }
    if ctx.json {
        print_json(&serde_json::Value::Object(all));
        return Ok(());
    }
    for (addr, v) in &all {
        let master = v["master"].as_bool().unwrap_or(false);
        // Java fills masterCommitLogMaxOffset on masters only.
        let end = if master {
            &v["masterCommitLogMaxOffset"]
        } else {
            &v["haClientRuntimeInfo"]["maxOffset"]
        };
        println!(
            "== {addr} ({}) CommitLog end {end}",
            if master { "master" } else { "slave" },
        );
        if master {
            let conns = v["haConnectionInfo"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            println!(
                "  slaves {} (in sync {})",
                conns.len(),
                v["inSyncSlaveNums"]
            );
            for c in conns {
                println!(
                    "  {:<22} acked {:<14} behind {:<12} in sync {:<5} {} B/s",
                    c["addr"].as_str().unwrap_or("?"),
                    c["slaveAckOffset"],
                    c["diff"],
                    c["inSync"],
                    c["transferredByteInSecond"]
                );
            }
        } else {
            let c = &v["haClientRuntimeInfo"];
            println!(
                "  master HA {}  last read {} ms ago  {} B/s",
                c["masterAddr"].as_str().unwrap_or("?"),
                ago_ms(c["lastReadTimestamp"].as_u64()),
                c["transferredByteInSecond"]
            );
        }
    }
    Ok(())
}

/// Milliseconds since a wall-clock ms timestamp ("never" for 0 / absent).
fn ago_ms(ts: Option<u64>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    match ts {
        Some(t) if t > 0 => now.saturating_sub(t).to_string(),
        _ => "never".into(),
    }
}

pub async fn get_broker_config(ctx: &Ctx, args: BrokerTarget) -> anyhow::Result<()> {
    let addrs = ctx.targets(&args.broker, &args.cluster).await?;
    let mut all = BTreeMap::new();
    for addr in &addrs {
        let kv = ctx
            .admin
            .broker_config(addr)
            .await
            .with_context(|| format!("cannot get the config of broker {addr}"))?;
        all.insert(addr.clone(), kv);
    }
    print_per_broker(ctx, all);
    Ok(())
}

/// A manual store cleanup on a broker or on every master of a cluster.
#[derive(Debug, Clone, Copy)]
pub enum Cleanup {
    /// CLEAN_UNUSED_TOPIC (mqadmin cleanUnusedTopic).
    UnusedTopics,
    /// CLEAN_EXPIRED_CONSUMEQUEUE (mqadmin cleanExpiredCQ).
    ExpiredConsumeQueues,
}

pub async fn cleanup(ctx: &Ctx, args: BrokerTarget, what: Cleanup) -> anyhow::Result<()> {
    let mut outcomes = Vec::new();
    for addr in ctx.targets(&args.broker, &args.cluster).await? {
        let r = match what {
            Cleanup::UnusedTopics => ctx.admin.clean_unused_topic(&addr).await,
            Cleanup::ExpiredConsumeQueues => ctx.admin.clean_expired_consume_queue(&addr).await,
        };
        outcomes.push((addr, r.map_err(|e| e.to_string())));
    }
    let action = match what {
        Cleanup::UnusedTopics => "clean unused topics",
        Cleanup::ExpiredConsumeQueues => "clean expired ConsumeQueue files",
    };
    report_outcomes(ctx, action, outcomes, json!({}))
}

/// One key/value map per broker: JSON `{addr: {k: v}}` or aligned lines
/// (under a `== addr ==` heading when there are several brokers).
fn print_per_broker(ctx: &Ctx, all: BTreeMap<String, BTreeMap<String, String>>) {
    if ctx.json {
        print_json(&json!(all));
        return;
    }
    let many = all.len() > 1;
    for (i, (addr, kv)) in all.iter().enumerate() {
        if many {
            if i > 0 {
                outln!();
            }
            outln!("== {addr} ==");
        }
        print_kv(kv.iter().map(|(k, v)| (k.as_str(), v.clone())));
    }
}

pub async fn update_broker_config(ctx: &Ctx, args: UpdateBrokerConfigArgs) -> anyhow::Result<()> {
    let addrs = ctx
        .targets(&args.target.broker, &args.target.cluster)
        .await?;
    let props = BTreeMap::from([(args.key.clone(), args.value.clone())]);
    let mut outcomes = Vec::new();
    for addr in addrs {
        let r = ctx.admin.update_broker_config(&addr, &props).await;
        outcomes.push((addr, r.map_err(|e| e.to_string())));
    }
    report_outcomes(
        ctx,
        &format!("update broker config {}={}", args.key, args.value),
        outcomes,
        json!({"key": args.key, "value": args.value}),
    )
}
