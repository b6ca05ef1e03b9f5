//! `apogee bench …`: benchmark tools. `store` measures the storage engine
//! in-process, without the network.

pub mod consume;
pub mod grpc;
pub mod produce;
pub mod report;
pub mod scale;
pub mod store;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Append messages to an in-process store, then read them all back
    /// through the ConsumeQueue (no network).
    #[command(after_help = "Examples:\n  apogee bench store\n  \
                            apogee bench store -n 4000000 -s 1024 --flush async\n  \
                            apogee bench store -s 1024 --flush sync -w 64 -n 200000\n  \
                            apogee bench store -s 128 -n 10000000 --json")]
    Store(store::StoreArgs),
    /// Send messages to a topic from many concurrent senders and report
    /// throughput and send latency (any RocketMQ-compatible broker).
    #[command(after_help = "Examples:\n  apogee bench produce -n 127.0.0.1:9876\n  \
                            apogee bench produce -t BenchmarkTest -s 1024 -w 32 --duration 60\n  \
                            apogee bench produce --mode async --window 32 --count 1000000\n  \
                            apogee bench produce --batch 16 --tag TagA --keys --count 200000 --json\n  \
                            apogee bench produce --grpc 127.0.0.1:8081 --mode async --count 200000")]
    Produce(produce::ProduceArgs),
    /// Receive from a topic in a consumer group and report throughput and
    /// end-to-end latency (any RocketMQ-compatible broker).
    #[command(after_help = "Examples:\n  apogee bench consume -n 127.0.0.1:9876\n  \
                            apogee bench consume -t BenchmarkTest -g bench_group --duration 60\n  \
                            apogee bench consume --tag TagA --from last\n  \
                            apogee bench consume --count 1000000 --json\n  \
                            apogee bench consume --pop --count 200000\n  \
                            apogee bench consume --grpc 127.0.0.1:8081 --count 200000")]
    Consume(consume::ConsumeArgs),
    /// Create many topics and subscription groups on one broker, then
    /// report creation rate, settling time, memory, threads, routability,
    /// route lookup latency and produce throughput over all the topics.
    #[command(
        after_help = "Examples:\n  apogee bench scale -n 127.0.0.1:9876 --broker-pid $(pgrep -f 'apogee standalone')\n  \
                            apogee bench scale -t 100000 -g 1000 --broker-pid 4242 --json\n  \
                            apogee bench scale -t 10000 -b 127.0.0.1:10911 --produce-secs 0\n  \
                            apogee bench scale -t 1000 --route-samples 0 --lookups 20000"
    )]
    Scale(scale::ScaleArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Store(args) => store::run(args),
        BenchCommand::Produce(args) => produce::run(args),
        BenchCommand::Consume(args) => consume::run(args),
        BenchCommand::Scale(args) => scale::run(args),
    }
}
