//! `apogee controller`: one member of a controller group (RocketMQ 5
//! controller mode).

use std::path::PathBuf;

use anyhow::Context;
use apogee_controller::{ControllerConfig, ControllerServer};
use clap::Args;

use crate::settings;

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// A controller.conf in RocketMQ's properties format (controllerDLegerGroup,
    /// controllerDLegerPeers, controllerDLegerSelfId, listenPort, controllerStorePath, …).
    #[arg(short = 'c', long = "config-file")]
    config_file: Option<PathBuf>,
    /// Any config key, as key=value (repeatable); applied after the file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration and exit.
    #[arg(short = 'p', long = "print-config")]
    print_config: bool,
}

pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let props = settings::load(args.config_file.as_deref(), &args.set)?;
    let mut config = ControllerConfig::default();
    for key in config.apply(&props)? {
        tracing::warn!("ignoring unknown controller config key '{key}'");
    }
    if args.print_config {
        settings::print(&config.to_properties());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("apogee-controller")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let server = ControllerServer::start(config).await?;
        println!("apogee controller listening on {}", server.local_addr());
        apogee_remoting::shutdown_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}
