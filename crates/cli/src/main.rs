//! `apogee`: one binary for every role — NameServer, Broker, both in one
//! process (`standalone`), the admin tool and the benchmark tool.

mod bench;
mod namesrv;
mod settings;

use clap::{Parser, Subcommand};

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
    /// Benchmark tools.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Namesrv(args) => namesrv::run(args),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("APOGEE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
