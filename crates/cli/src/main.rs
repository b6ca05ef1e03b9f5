//! `apogee`: one binary for every role — NameServer, Broker, both in one
//! process (`standalone`), the admin tool and the benchmark tool.

mod admin;
mod bench;
mod broker;
mod controller;
mod namesrv;
mod proxy;
mod settings;
mod standalone;

use clap::{Parser, Subcommand};

// Many small short-lived allocations per request (headers, futures); glibc's
// allocator spent a quarter of the broker's CPU on them under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "apogee",
    version,
    about = "A RocketMQ-compatible message broker",
    long_about = "Apogee speaks Apache RocketMQ's remoting protocol, so existing RocketMQ \
                  clients and tools work against it unchanged."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a NameServer (route registry), default port 9876.
    #[command(
        after_help = "Examples:\n  apogee namesrv\n  apogee namesrv --listen-port 19876\n  \
                            apogee namesrv -c conf/namesrv.conf\n  apogee namesrv -c conf/namesrv.conf -p"
    )]
    Namesrv(namesrv::NamesrvArgs),
    /// Run a Broker (default port 10911, VIP port 10909) that registers with
    /// the NameServer(s) given by -n, namesrvAddr or NAMESRV_ADDR.
    #[command(after_help = "Examples:\n  apogee broker -n 127.0.0.1:9876\n  \
                            apogee broker -c conf/broker.conf\n  \
                            apogee broker -n \"10.0.0.1:9876;10.0.0.2:9876\" --listen-port 10921 \
                            --set brokerName=broker-b --set storePathRootDir=/data/broker-b\n  \
                            apogee broker -c conf/broker.conf -p\n\n\
                            broker.conf uses RocketMQ's keys, e.g.:\n  \
                            brokerClusterName=DefaultCluster\n  brokerName=broker-a\n  \
                            listenPort=10911\n  namesrvAddr=127.0.0.1:9876\n  brokerIP1=192.168.1.10\n  \
                            storePathRootDir=/data/apogee\n  flushDiskType=ASYNC_FLUSH\n  \
                            autoCreateTopicEnable=true")]
    Broker(broker::BrokerArgs),
    /// Run one member of a controller group (RocketMQ 5 controller mode):
    /// elects a master for each broker set whose brokers run with
    /// enableControllerMode=true, and moves it when the master dies.
    #[command(after_help = "Examples:\n  \
                            apogee controller --set controllerDLegerPeers='n0-127.0.0.1:9877;n1-127.0.0.1:9867;n2-127.0.0.1:9857' \
                            --set controllerDLegerSelfId=n0 --set listenPort=9878 --set controllerStorePath=/data/ctl-n0\n  \
                            apogee controller -c conf/controller.conf")]
    Controller(controller::ControllerArgs),
    /// Run a NameServer and a Broker in one process, data in ./apogee-data,
    /// topics and groups created on first use. The easiest way to start.
    #[command(after_help = "Examples:\n  apogee standalone\n  \
                            apogee standalone --namesrv-port 19876 --listen-port 20911\n  \
                            apogee standalone --set storePathRootDir=/tmp/apogee --set brokerIP1=127.0.0.1\n  \
                            apogee standalone -c conf/broker.conf\n\n\
                            Clients then use the NameServer at 127.0.0.1:9876.")]
    Standalone(standalone::StandaloneArgs),
    /// Run a RocketMQ 5 gRPC endpoint (default port 8081) in front of the
    /// brokers a NameServer knows: official gRPC clients connect here.
    #[command(after_help = "Examples:\n  apogee proxy -n 127.0.0.1:9876\n  \
                            apogee proxy -n \"10.0.0.1:9876;10.0.0.2:9876\" --grpc-server-port 8081 \
                            --advertised-address proxy.example.com:8081")]
    Proxy(proxy::ProxyArgs),
    /// Operator tools: mqadmin's commands (clusterList, topicList, updateTopic,
    /// consumerProgress, queryMsgById, …) against a NameServer and its brokers.
    #[command(
        after_help = "Examples:\n  apogee admin clusterList -n 127.0.0.1:9876\n  \
                            apogee admin updateTopic -c DefaultCluster -t TopicTest\n  \
                            apogee admin consumerProgress -g GroupA --json\n  \
                            NAMESRV_ADDR=10.0.0.1:9876 apogee admin topic-list\n\n\
                            Run `apogee admin <command> --help` for its flags."
    )]
    Admin(admin::AdminArgs),
    /// Benchmark tools.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The admin and bench tools print results; only warnings belong next to them.
    let quiet = matches!(cli.command, Command::Admin(_) | Command::Bench(_));
    // openraft narrates every vote and replication step at info.
    init_tracing(if quiet { "warn" } else { "info,openraft=warn" });
    match cli.command {
        Command::Namesrv(args) => namesrv::run(args),
        Command::Broker(args) => broker::run(args),
        Command::Controller(args) => controller::run(args),
        Command::Standalone(args) => standalone::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

fn init_tracing(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("APOGEE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    // Logs go to stderr so that stdout carries only results (tables, JSON).
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
