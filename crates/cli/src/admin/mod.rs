//! `apogee admin …`: mqadmin's operator commands (same names, camelCase or
//! kebab-case, same short flags) on top of apogee-client's `AdminClient`.
//! Tables for people by default, `--json` for scripts; any failure ends the
//! process with exit code 1 and one line on stderr.

/// `println!` that ignores a closed stdout (e.g. `| head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod cluster;
mod controller;
mod group;
mod message;
mod output;
mod topic;

use std::time::Duration;

use anyhow::{anyhow, Context};
use apogee_client::{AdminClient, ClientError};
use apogee_protocol::code::response_code;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct AdminArgs {
    /// NameServer address(es), `host:port` separated by `;`.
    #[arg(
        short = 'n',
        long = "namesrv-addr",
        env = "NAMESRV_ADDR",
        default_value = "127.0.0.1:9876",
        global = true
    )]
    namesrv: String,
    /// Print the result as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Timeout of each call to a NameServer or broker, in milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// List the clusters' brokers with version, TPS and today's message counts.
    #[command(
        name = "clusterList",
        visible_alias = "cluster-list",
        after_help = "Examples:\n  apogee admin clusterList -n 127.0.0.1:9876\n  \
                      apogee admin clusterList -c DefaultCluster --json"
    )]
    ClusterList(cluster::ClusterListArgs),
    /// List topic names (all, or those of one cluster).
    #[command(
        name = "topicList",
        visible_alias = "topic-list",
        after_help = "Examples:\n  apogee admin topicList -n 127.0.0.1:9876\n  \
                      apogee admin topicList -c DefaultCluster\n  apogee admin topic-list --json"
    )]
    TopicList(topic::TopicListArgs),
    /// Show a topic's route: its brokers and queues.
    #[command(
        name = "topicRoute",
        visible_alias = "topic-route",
        after_help = "Examples:\n  apogee admin topicRoute -t TopicTest\n  \
                      apogee admin topicRoute -t TopicTest --json"
    )]
    TopicRoute(topic::TopicArg),
    /// Show every queue of a topic with its min/max offset and last update.
    #[command(
        name = "topicStatus",
        visible_alias = "topic-status",
        after_help = "Examples:\n  apogee admin topicStatus -t TopicTest\n  \
                      apogee admin topicStatus -t TopicTest --json"
    )]
    TopicStatus(topic::TopicArg),
    /// Create or update a topic on one broker (-b) or on every master of a cluster (-c).
    #[command(
        name = "updateTopic",
        visible_alias = "update-topic",
        after_help = "Examples:\n  apogee admin updateTopic -c DefaultCluster -t TopicTest\n  \
                      apogee admin updateTopic -b 127.0.0.1:10911 -t TopicTest -r 16 -w 16\n  \
                      apogee admin updateTopic -c DefaultCluster -t OrderTopic -r 4 -w 4 -o true\n  \
                      apogee admin updateTopic -c DefaultCluster -t ReadOnly -p 4\n\n\
                      Permissions (-p): 2 write only, 4 read only, 6 read and write."
    )]
    UpdateTopic(topic::UpdateTopicArgs),
    /// Delete a topic from the brokers of a cluster and from the NameServers.
    #[command(
        name = "deleteTopic",
        visible_alias = "delete-topic",
        after_help = "Examples:\n  apogee admin deleteTopic -t TopicTest -c DefaultCluster\n  \
                      apogee admin deleteTopic -t TopicTest   (every cluster that serves it)"
    )]
    DeleteTopic(topic::DeleteTopicArgs),
    /// Create or update a consumer group's configuration on brokers.
    #[command(
        name = "updateSubGroup",
        visible_alias = "update-sub-group",
        after_help = "Examples:\n  apogee admin updateSubGroup -c DefaultCluster -g GroupA\n  \
                      apogee admin updateSubGroup -b 127.0.0.1:10911 -g GroupA -r 3 -q 1\n  \
                      apogee admin updateSubGroup -c DefaultCluster -g GroupA -s false   (pause consumption)"
    )]
    UpdateSubGroup(group::UpdateSubGroupArgs),
    /// Delete a consumer group's configuration from brokers.
    #[command(
        name = "deleteSubGroup",
        visible_alias = "delete-sub-group",
        after_help = "Examples:\n  apogee admin deleteSubGroup -c DefaultCluster -g GroupA\n  \
                      apogee admin deleteSubGroup -b 127.0.0.1:10911 -g GroupA -r true   (also drop its offsets)"
    )]
    DeleteSubGroup(group::DeleteSubGroupArgs),
    /// Choose whether a group PULLs or POPs a topic when the broker assigns
    /// its queues (RocketMQ 5 clients that leave rebalancing to the broker).
    #[command(
        name = "setConsumeMode",
        visible_alias = "set-consume-mode",
        after_help = "Examples:\n  apogee admin setConsumeMode -c DefaultCluster -t TopicTest -g GroupA -m POP\n  \
                      apogee admin setConsumeMode -b 127.0.0.1:10911 -t TopicTest -g GroupA -m POP -q 1"
    )]
    SetConsumeMode(group::SetConsumeModeArgs),
    /// Show a consumer group's progress: offsets and lag per queue, and the total lag.
    #[command(
        name = "consumerProgress",
        visible_alias = "consumer-progress",
        after_help = "Examples:\n  apogee admin consumerProgress -g GroupA\n  \
                      apogee admin consumerProgress -g GroupA -t TopicTest --json"
    )]
    ConsumerProgress(group::ConsumerProgressArgs),
    /// List the clients connected in a consumer group and their subscriptions.
    #[command(
        name = "consumerConnection",
        visible_alias = "consumer-connection",
        after_help = "Examples:\n  apogee admin consumerConnection -g GroupA\n  \
                      apogee admin consumerConnection -g GroupA --json"
    )]
    ConsumerConnection(group::GroupArg),
    /// Show a broker's runtime statistics.
    #[command(
        name = "brokerStatus",
        visible_alias = "broker-status",
        after_help = "Examples:\n  apogee admin brokerStatus -b 127.0.0.1:10911\n  \
                      apogee admin brokerStatus -c DefaultCluster --json"
    )]
    BrokerStatus(cluster::BrokerTarget),
    /// Show a broker's replication state: on a master each slave's
    /// acknowledged offset and whether it is in sync, on a slave its link.
    #[command(
        name = "haStatus",
        visible_alias = "ha-status",
        after_help = "Examples:\n  apogee admin haStatus -b 127.0.0.1:10911\n  \
                      apogee admin haStatus -c DefaultCluster --json"
    )]
    HaStatus(cluster::BrokerTarget),
    /// Controller mode: who leads the controller group, and its peers.
    #[command(
        name = "getControllerMetaData",
        visible_alias = "get-controller-meta-data",
        after_help = "Examples:\n  apogee admin getControllerMetaData -a 127.0.0.1:9878"
    )]
    GetControllerMetaData(controller::ControllerAddr),
    /// Controller mode: each broker set's master, epochs and SyncStateSet.
    #[command(
        name = "getSyncStateSet",
        visible_alias = "get-sync-state-set",
        after_help = "Examples:\n  apogee admin getSyncStateSet -a 127.0.0.1:9878 -b broker-a\n  \
                      apogee admin getSyncStateSet -a 127.0.0.1:9878 -c DefaultCluster --json"
    )]
    GetSyncStateSet(controller::SyncStateSetArgs),
    /// Controller mode: each replica's epoch list (epoch -> CommitLog range).
    #[command(
        name = "getBrokerEpoch",
        visible_alias = "get-broker-epoch",
        after_help = "Examples:\n  apogee admin getBrokerEpoch -b broker-a\n  \
                      apogee admin getBrokerEpoch -c DefaultCluster --json"
    )]
    GetBrokerEpoch(controller::BrokerEpochArgs),
    /// Controller mode: make a replica of the SyncStateSet master.
    #[command(
        name = "electMaster",
        visible_alias = "elect-master",
        after_help = "Examples:\n  apogee admin electMaster -a 127.0.0.1:9878 -c DefaultCluster --brokerName broker-a -b 2"
    )]
    ElectMaster(controller::ElectMasterArgs),
    /// Look a message up by id: an offset message id or a client unique id (needs -t).
    #[command(
        name = "queryMsgById",
        visible_alias = "query-msg-by-id",
        after_help = "Examples:\n  apogee admin queryMsgById -i 7F00000100002A9F0000000000000000\n  \
                      apogee admin queryMsgById -t TopicTest -i 7F0000010B6418B4AAC2742E5C4F0000\n  \
                      apogee admin queryMsgById -t TopicTest -i ID1,ID2 --json"
    )]
    QueryMsgById(message::QueryByIdArgs),
    /// Look messages up by business key (the KEYS property) in a time range.
    #[command(
        name = "queryMsgByKey",
        visible_alias = "query-msg-by-key",
        after_help = "Examples:\n  apogee admin queryMsgByKey -t TopicTest -k order-42\n  \
                      apogee admin queryMsgByKey -t TopicTest -k order-42 -b 2024-03-05#00:00:00:000 -e now"
    )]
    QueryMsgByKey(message::QueryByKeyArgs),
    /// Show the message at an offset of one queue.
    #[command(
        name = "queryMsgByOffset",
        visible_alias = "query-msg-by-offset",
        after_help = "Examples:\n  apogee admin queryMsgByOffset -t TopicTest -b broker-a -i 0 -o 42\n  \
                      apogee admin queryMsgByOffset -t TopicTest -b broker-a -i 3 -o 0 --json"
    )]
    QueryMsgByOffset(message::QueryByOffsetArgs),
    /// Move a consumer group's offsets on a topic to the first message stored at or after a time.
    #[command(
        name = "resetOffsetByTime",
        visible_alias = "reset-offset-by-time",
        after_help = "Examples:\n  apogee admin resetOffsetByTime -g GroupA -t TopicTest -s now\n  \
                      apogee admin resetOffsetByTime -g GroupA -t TopicTest -s 2024-03-05#10:00:00:000\n  \
                      apogee admin resetOffsetByTime -g GroupA -t TopicTest -s 1709632800000 -f false\n\n\
                      -s takes now, milliseconds since the epoch, or local time as yyyy-MM-dd#HH:mm:ss:SSS."
    )]
    ResetOffsetByTime(group::ResetOffsetArgs),
    /// Send one message and print where it was stored.
    #[command(
        name = "sendMessage",
        visible_alias = "send-message",
        after_help = "Examples:\n  apogee admin sendMessage -t TopicTest -p 'hello world'\n  \
                      apogee admin sendMessage -t TopicTest -p 'order created' -c TagA -k order-42\n  \
                      apogee admin sendMessage -t TopicTest -p hi -b broker-a -i 2 --json"
    )]
    SendMessage(message::SendArgs),
    /// Print messages of a topic (all queues, or one queue from an offset).
    #[command(
        name = "consumeMessage",
        visible_alias = "consume-message",
        after_help = "Examples:\n  apogee admin consumeMessage -t TopicTest\n  \
                      apogee admin consumeMessage -t TopicTest -b broker-a -i 0 -o 100 -c 10\n  \
                      apogee admin consumeMessage -t TopicTest -s 2024-03-05#10:00:00:000 -e now --json"
    )]
    ConsumeMessage(message::ConsumeArgs),
    /// Print a broker's configuration.
    #[command(
        name = "getBrokerConfig",
        visible_alias = "get-broker-config",
        after_help = "Examples:\n  apogee admin getBrokerConfig -b 127.0.0.1:10911\n  \
                      apogee admin getBrokerConfig -c DefaultCluster --json"
    )]
    GetBrokerConfig(cluster::BrokerTarget),
    /// Change one configuration key on a broker or on every master of a cluster.
    #[command(
        name = "updateBrokerConfig",
        visible_alias = "update-broker-config",
        after_help = "Examples:\n  apogee admin updateBrokerConfig -b 127.0.0.1:10911 -k autoCreateTopicEnable -v false\n  \
                      apogee admin updateBrokerConfig -c DefaultCluster -k maxMessageSize -v 8388608"
    )]
    UpdateBrokerConfig(cluster::UpdateBrokerConfigArgs),
    /// Drop the queues of topics a broker's topic table no longer has.
    #[command(
        name = "cleanUnusedTopic",
        visible_alias = "clean-unused-topic",
        after_help = "Examples:\n  apogee admin cleanUnusedTopic -b 127.0.0.1:10911\n  \
                      apogee admin cleanUnusedTopic -c DefaultCluster"
    )]
    CleanUnusedTopic(cluster::BrokerTarget),
    /// Trim ConsumeQueue files that point only at deleted CommitLog segments.
    #[command(
        name = "cleanExpiredCQ",
        visible_alias = "clean-expired-cq",
        after_help = "Examples:\n  apogee admin cleanExpiredCQ -b 127.0.0.1:10911\n  \
                      apogee admin cleanExpiredCQ -c DefaultCluster"
    )]
    CleanExpiredCq(cluster::BrokerTarget),
}

/// What every command gets.
pub(crate) struct Ctx {
    pub admin: AdminClient,
    pub namesrv: String,
    pub json: bool,
    pub timeout: Duration,
}

/// Runs one admin command; on failure prints `apogee admin: <reason>` and
/// exits with status 1.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    if let Err(e) = run_inner(args) {
        eprintln!("apogee admin: {}", one_line(&e));
        std::process::exit(1);
    }
    Ok(())
}

/// The error and its causes on one line, skipping a cause whose text the
/// line already holds (many errors repeat their source in their message).
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn run_inner(args: AdminArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let admin = AdminClient::builder()
            .namesrv_addr(args.namesrv.clone())
            .api_timeout(timeout)
            .build()
            .context("cannot create the admin client")?;
        let ctx = Ctx {
            admin,
            namesrv: args.namesrv,
            json: args.json,
            timeout,
        };
        let result = dispatch(&ctx, args.command).await;
        ctx.admin.shutdown().await;
        result
    })
}

async fn dispatch(ctx: &Ctx, command: AdminCommand) -> anyhow::Result<()> {
    use AdminCommand::*;
    match command {
        ClusterList(a) => cluster::cluster_list(ctx, a).await,
        BrokerStatus(a) => cluster::broker_status(ctx, a).await,
        HaStatus(a) => cluster::ha_status(ctx, a).await,
        GetControllerMetaData(a) => controller::get_controller_metadata(ctx, a).await,
        GetSyncStateSet(a) => controller::get_sync_state_set(ctx, a).await,
        GetBrokerEpoch(a) => controller::get_broker_epoch(ctx, a).await,
        ElectMaster(a) => controller::elect_master(ctx, a).await,
        GetBrokerConfig(a) => cluster::get_broker_config(ctx, a).await,
        UpdateBrokerConfig(a) => cluster::update_broker_config(ctx, a).await,
        CleanUnusedTopic(a) => cluster::cleanup(ctx, a, cluster::Cleanup::UnusedTopics).await,
        CleanExpiredCq(a) => cluster::cleanup(ctx, a, cluster::Cleanup::ExpiredConsumeQueues).await,
        TopicList(a) => topic::topic_list(ctx, a).await,
        TopicRoute(a) => topic::topic_route(ctx, a).await,
        TopicStatus(a) => topic::topic_status(ctx, a).await,
        UpdateTopic(a) => topic::update_topic(ctx, a).await,
        DeleteTopic(a) => topic::delete_topic(ctx, a).await,
        UpdateSubGroup(a) => group::update_sub_group(ctx, a).await,
        SetConsumeMode(a) => group::set_consume_mode(ctx, a).await,
        DeleteSubGroup(a) => group::delete_sub_group(ctx, a).await,
        ConsumerProgress(a) => group::consumer_progress(ctx, a).await,
        ConsumerConnection(a) => group::consumer_connection(ctx, a).await,
        ResetOffsetByTime(a) => group::reset_offset_by_time(ctx, a).await,
        QueryMsgById(a) => message::query_by_id(ctx, a).await,
        QueryMsgByKey(a) => message::query_by_key(ctx, a).await,
        QueryMsgByOffset(a) => message::query_by_offset(ctx, a).await,
        SendMessage(a) => message::send_message(ctx, a).await,
        ConsumeMessage(a) => message::consume_message(ctx, a).await,
    }
}

/// Whether an error means "the NameServer knows no such topic".
pub(crate) fn is_no_route(e: &ClientError) -> bool {
    matches!(e, ClientError::NoRoute(_))
        || e.response_code() == Some(response_code::TOPIC_NOT_EXIST)
}

impl Ctx {
    /// A topic's route, with "does not exist" said plainly.
    pub async fn route(
        &self,
        topic: &str,
    ) -> anyhow::Result<apogee_protocol::body::TopicRouteData> {
        self.admin.topic_route(topic).await.map_err(|e| {
            if is_no_route(&e) {
                anyhow!(
                    "topic {topic} does not exist (NameServer {} has no route for it)",
                    self.namesrv
                )
            } else {
                anyhow::Error::new(e).context(format!(
                    "cannot get the route of topic {topic} from NameServer {}",
                    self.namesrv
                ))
            }
        })
    }

    /// Broker addresses named by `-b`, else every master of cluster `-c`.
    pub async fn targets(
        &self,
        broker: &Option<String>,
        cluster: &Option<String>,
    ) -> anyhow::Result<Vec<String>> {
        if let Some(b) = broker {
            return Ok(vec![b.clone()]);
        }
        let Some(c) = cluster else {
            anyhow::bail!("give a broker address with -b or a cluster name with -c");
        };
        let addrs = self
            .admin
            .cluster_master_addrs(c)
            .await
            .with_context(|| format!("cannot list the brokers of cluster {c}"))?;
        if addrs.is_empty() {
            anyhow::bail!("cluster {c} has no master broker");
        }
        Ok(addrs)
    }
}

/// Prints per-broker outcomes of a cluster-wide change and fails if any broker failed.
pub(crate) fn report_outcomes(
    ctx: &Ctx,
    what: &str,
    outcomes: Vec<(String, Result<(), String>)>,
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    let failed = outcomes.iter().filter(|(_, r)| r.is_err()).count();
    if ctx.json {
        let brokers: Vec<_> = outcomes
            .iter()
            .map(|(addr, r)| match r {
                Ok(()) => serde_json::json!({"broker_addr": addr, "ok": true}),
                Err(e) => serde_json::json!({"broker_addr": addr, "ok": false, "error": e}),
            })
            .collect();
        let mut v = serde_json::json!({ "action": what, "brokers": brokers });
        if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
            obj.extend(extra);
        }
        output::print_json(&v);
    } else {
        let mut t = output::Table::new(&["BROKER", "RESULT"]);
        for (addr, r) in &outcomes {
            t.row(vec![
                addr.clone(),
                match r {
                    Ok(()) => "OK".to_string(),
                    Err(e) => format!("FAILED: {e}"),
                },
            ]);
        }
        outln!("{what}:");
        t.print();
    }
    if failed > 0 {
        anyhow::bail!("{what} failed on {failed} of {} broker(s)", outcomes.len());
    }
    Ok(())
}
