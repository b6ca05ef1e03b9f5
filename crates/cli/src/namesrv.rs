//! `apogee namesrv`.

use std::path::PathBuf;

use anyhow::Context;
use apogee_namesrv::{NameServer, NamesrvConfig};
use clap::Args;

use crate::settings;

#[derive(Args, Debug)]
pub struct NamesrvArgs {
    /// A namesrv.conf in RocketMQ's properties format (keys such as listenPort).
    #[arg(short = 'c', long = "config-file")]
    config_file: Option<PathBuf>,
    /// Port to listen on (overrides listenPort; 0 picks a free port).
    #[arg(long)]
    listen_port: Option<u16>,
    /// Any config key, as key=value (repeatable); applied after the file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration and exit.
    #[arg(short = 'p', long = "print-config")]
    print_config: bool,
}

pub fn run(args: NamesrvArgs) -> anyhow::Result<()> {
    let mut props = settings::load(args.config_file.as_deref(), &args.set)?;
    if let Some(port) = args.listen_port {
        props.insert("listenPort".into(), port.to_string());
    }
    let mut config = NamesrvConfig::default();
    for key in config.apply(&props)? {
        tracing::warn!("ignoring unknown namesrv config key '{key}'");
    }
    if args.print_config {
        settings::print(&config.to_properties());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("apogee-namesrv")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let server = NameServer::start(config).await?;
        println!("apogee namesrv listening on {}", server.local_addr());
        apogee_remoting::shutdown_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}
