//! `apogee bench …`: benchmark tools. `store` measures the storage engine
//! in-process, without the network.

pub mod report;
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
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Store(args) => store::run(args),
    }
}
