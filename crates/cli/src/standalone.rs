//! `apogee standalone`: a NameServer and a Broker in one process — the
//! quickest way to run everything, with data in one folder.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use apogee_namesrv::{NameServer, NamesrvConfig};
use clap::Args;

use crate::broker::{self, BrokerArgs};
use crate::settings;

/// Default data folder (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "apogee-data";

#[derive(Args, Debug)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Port of the embedded NameServer (0 picks a free port).
    #[arg(long, default_value_t = 9876)]
    pub namesrv_port: u16,
}

pub fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    let data = std::env::current_dir()
        .context("cannot read the working directory")?
        .join(DEFAULT_DATA_DIR);
    let mut defaults = BTreeMap::new();
    defaults.insert("storePathRootDir".into(), data.display().to_string());
    defaults.insert("autoCreateTopicEnable".into(), "true".into());
    defaults.insert("autoCreateSubscriptionGroup".into(), "true".into());
    let mut config = broker::build_config(&args.broker, &defaults)?;
    if config.enable_controller_mode {
        anyhow::bail!(
            "invalid broker config enableControllerMode: standalone runs one broker beside its own \
             NameServer; run controller mode with `apogee controller` and `apogee broker`"
        );
    }
    if args.broker.print_config {
        let mut props = config.to_properties();
        props.insert("namesrvPort".into(), args.namesrv_port.to_string());
        settings::print(&props);
        return Ok(());
    }
    let namesrv_config = NamesrvConfig {
        listen_port: args.namesrv_port,
        bind_address: config.bind_address.clone(),
        kv_config_path: PathBuf::from(&config.store.store_path_root_dir)
            .join("namesrv")
            .join("kvConfig.json"),
        ..NamesrvConfig::default()
    };
    broker::runtime()?.block_on(async move {
        let namesrv = NameServer::start(namesrv_config)
            .await
            .context("cannot start the embedded NameServer")?;
        let ns_addr = namesrv.local_addr();
        println!("apogee namesrv listening on {ns_addr}");
        // The broker registers with its own NameServer over loopback unless
        // the NameServer is bound to one specific address.
        let ip: IpAddr = if ns_addr.ip().is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            ns_addr.ip()
        };
        config.namesrv_addr = Some(format!("{ip}:{}", ns_addr.port()));
        let grpc_config = config.clone();
        let broker = match broker::start_broker(config).await {
            Ok(b) => b,
            Err(e) => {
                namesrv.shutdown().await;
                return Err(e);
            }
        };
        let grpc = match broker::start_grpc(&grpc_config, &broker).await {
            Ok(g) => g,
            Err(e) => {
                broker.shutdown().await;
                namesrv.shutdown().await;
                return Err(e);
            }
        };
        apogee_remoting::shutdown_signal().await;
        tracing::info!("shutting down");
        if let Some(g) = grpc {
            g.shutdown().await;
        }
        broker.shutdown().await;
        namesrv.shutdown().await;
        Ok(())
    })
}
