//! mqadmin's controller-mode commands: getControllerMetaData,
//! getSyncStateSet, electMaster (to a controller, `-a`) and getBrokerEpoch
//! (to the brokers of a broker set, found through the NameServer).

use anyhow::{bail, Context};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};
use clap::Args;
use serde_json::{json, Value};

use super::output::print_json;
use super::Ctx;

#[derive(Args, Debug)]
pub struct ControllerAddr {
    /// Controller address, host:port.
    #[arg(short = 'a', long = "controllerAddress")]
    pub controller: String,
}

#[derive(Args, Debug)]
pub struct SyncStateSetArgs {
    /// Controller address, host:port.
    #[arg(short = 'a', long = "controllerAddress")]
    pub controller: String,
    /// Broker set name(s), comma separated.
    #[arg(short = 'b', long = "brokerName")]
    pub broker_name: Option<String>,
    /// Every broker set of this cluster (names from the NameServer).
    #[arg(short = 'c', long = "clusterName")]
    pub cluster: Option<String>,
}

#[derive(Args, Debug)]
pub struct BrokerEpochArgs {
    /// Broker set name.
    #[arg(short = 'b', long = "brokerName")]
    pub broker_name: Option<String>,
    /// Every broker set of this cluster.
    #[arg(short = 'c', long = "clusterName")]
    pub cluster: Option<String>,
}

#[derive(Args, Debug)]
pub struct ElectMasterArgs {
    /// Controller address, host:port.
    #[arg(short = 'a', long = "controllerAddress")]
    pub controller: String,
    /// The replica (its controller broker id) to make master.
    #[arg(short = 'b', long = "brokerId")]
    pub broker_id: u64,
    /// Its broker set (mqadmin's -bn).
    #[arg(long = "brokerName", visible_alias = "bn")]
    pub broker_name: String,
    /// Its cluster.
    #[arg(short = 'c', long = "clusterName")]
    pub cluster: String,
}

async fn call(ctx: &Ctx, addr: &str, req: RemotingCommand) -> anyhow::Result<RemotingCommand> {
    let client = RemotingClient::new(ClientConfig::default());
    let r = client.invoke(addr, req, ctx.timeout).await;
    client.close().await;
    let resp = r.with_context(|| format!("no answer from {addr}"))?;
    if resp.code != response_code::SUCCESS {
        let name = apogee_protocol::code::response_code_name(resp.code).unwrap_or("?");
        bail!(
            "{addr} refused ({name} {}): {}",
            resp.code,
            resp.remark.unwrap_or_default()
        );
    }
    Ok(resp)
}

fn body_json(resp: &RemotingCommand) -> anyhow::Result<Value> {
    serde_json::from_slice(resp.body.as_deref().unwrap_or(b"null"))
        .context("the answer body is not JSON")
}

pub async fn get_controller_metadata(ctx: &Ctx, args: ControllerAddr) -> anyhow::Result<()> {
    let resp = call(
        ctx,
        &args.controller,
        RemotingCommand::request(request_code::CONTROLLER_GET_METADATA_INFO),
    )
    .await?;
    let v = json!({
        "group": resp.ext("group"),
        "controllerLeaderId": resp.ext("controllerLeaderId"),
        "controllerLeaderAddress": resp.ext("controllerLeaderAddress"),
        "isLeader": resp.ext("isLeader") == Some("true"),
        "peers": resp.ext("peers"),
    });
    if ctx.json {
        print_json(&v);
    } else {
        for k in [
            "group",
            "controllerLeaderId",
            "controllerLeaderAddress",
            "isLeader",
            "peers",
        ] {
            let val = match &v[k] {
                Value::String(s) => s.clone(),
                Value::Null => "-".into(),
                other => other.to_string(),
            };
            outln!("#{k:<26}: {val}");
        }
    }
    Ok(())
}

async fn broker_names(
    ctx: &Ctx,
    name: &Option<String>,
    cluster: &Option<String>,
) -> anyhow::Result<Vec<String>> {
    if let Some(n) = name {
        return Ok(n
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect());
    }
    let Some(c) = cluster else {
        bail!("give a broker set with -b or a cluster with -c");
    };
    let info = ctx
        .admin
        .cluster_info()
        .await
        .context("cannot read the cluster from the NameServer")?;
    let names: Vec<String> = info
        .cluster_addr_table
        .get(c)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default();
    if names.is_empty() {
        bail!("cluster {c} has no broker");
    }
    Ok(names)
}

pub async fn get_sync_state_set(ctx: &Ctx, args: SyncStateSetArgs) -> anyhow::Result<()> {
    let names = broker_names(ctx, &args.broker_name, &args.cluster).await?;
    let req = RemotingCommand::request(request_code::CONTROLLER_GET_SYNC_STATE_DATA)
        .with_body(serde_json::to_vec(&names)?);
    let v = body_json(&call(ctx, &args.controller, req).await?)?;
    if ctx.json {
        print_json(&v);
        return Ok(());
    }
    let table = v["replicasInfoTable"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for name in &names {
        let Some(info) = table.get(name) else {
            outln!("== {name}: unknown to the controller");
            continue;
        };
        outln!(
            "== {name}: master {} ({}), master epoch {}, SyncStateSet epoch {}",
            info["masterBrokerId"],
            info["masterAddress"].as_str().unwrap_or("-"),
            info["masterEpoch"],
            info["syncStateSetEpoch"]
        );
        for (label, key) in [
            ("in sync", "inSyncReplicas"),
            ("not in sync", "notInSyncReplicas"),
        ] {
            for r in info[key].as_array().into_iter().flatten() {
                outln!(
                    "  {label:<12} id {:<4} {:<22} alive {}",
                    r["brokerId"],
                    r["brokerAddress"].as_str().unwrap_or("?"),
                    r["alive"]
                );
            }
        }
    }
    Ok(())
}

pub async fn get_broker_epoch(ctx: &Ctx, args: BrokerEpochArgs) -> anyhow::Result<()> {
    let names = broker_names(ctx, &args.broker_name, &args.cluster).await?;
    let info = ctx
        .admin
        .cluster_info()
        .await
        .context("cannot read the cluster from the NameServer")?;
    let mut all = serde_json::Map::new();
    for name in &names {
        let Some(data) = info.broker_addr_table.get(name) else {
            bail!("broker set {name} is not registered with the NameServer");
        };
        for addr in data.broker_addrs.values() {
            let resp = call(
                ctx,
                addr,
                RemotingCommand::request(request_code::GET_BROKER_EPOCH_CACHE),
            )
            .await?;
            all.insert(addr.clone(), body_json(&resp)?);
        }
    }
    if ctx.json {
        print_json(&Value::Object(all));
        return Ok(());
    }
    for (addr, v) in &all {
        outln!(
            "== {addr} ({} id {}) CommitLog end {}",
            v["brokerName"].as_str().unwrap_or("?"),
            v["brokerId"],
            v["maxOffset"]
        );
        for e in v["epochList"].as_array().into_iter().flatten() {
            outln!(
                "  epoch {:<6} start {:<16} end {}",
                e["epoch"],
                e["startOffset"],
                e["endOffset"]
            );
        }
    }
    Ok(())
}

pub async fn elect_master(ctx: &Ctx, args: ElectMasterArgs) -> anyhow::Result<()> {
    let mut req = RemotingCommand::request(request_code::CONTROLLER_ELECT_MASTER);
    req.set_ext("clusterName", &args.cluster);
    req.set_ext("brokerName", &args.broker_name);
    req.set_ext("brokerId", args.broker_id.to_string());
    req.set_ext("designateElect", "true");
    let resp = call(ctx, &args.controller, req).await?;
    let v = json!({
        "masterBrokerId": resp.ext("masterBrokerId"),
        "masterAddress": resp.ext("masterAddress"),
        "masterEpoch": resp.ext("masterEpoch"),
        "syncStateSetEpoch": resp.ext("syncStateSetEpoch"),
    });
    if ctx.json {
        print_json(&v);
    } else {
        outln!(
            "broker set {}: master is now id {} at {} (master epoch {})",
            args.broker_name,
            resp.ext("masterBrokerId").unwrap_or("-"),
            resp.ext("masterAddress").unwrap_or("-"),
            resp.ext("masterEpoch").unwrap_or("-")
        );
    }
    Ok(())
}
