//! `apogee namesrv`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use apogee_controller::{ControllerConfig, ControllerServer};
use apogee_namesrv::{NameServer, NamesrvConfig};
use apogee_remoting::ProcessorRegistry;
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
    // enableControllerInNamesrv: a controller group member in this process,
    // its client API on the NameServer's port, configured from the same
    // file (controllerDLegerGroup, controllerDLegerPeers, ...).
    let embed = match props.remove("enableControllerInNamesrv") {
        None => false,
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            _ => bail!("enableControllerInNamesrv: '{v}' is not true or false"),
        },
    };
    let mut config = NamesrvConfig::default();
    let unknown = config.apply(&props)?;
    let controller = if embed {
        let mut ctl = ControllerConfig::default();
        let ctl_props = props
            .iter()
            .filter(|(k, _)| unknown.contains(k) || k.as_str() == "bindAddress")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for key in ctl
            .apply(&ctl_props)
            .context("the embedded controller's configuration (enableControllerInNamesrv=true)")?
        {
            tracing::warn!("ignoring unknown namesrv config key '{key}'");
        }
        Some(ctl)
    } else {
        for key in unknown {
            tracing::warn!("ignoring unknown namesrv config key '{key}'");
        }
        None
    };
    if args.print_config {
        let mut all = config.to_properties();
        all.insert("enableControllerInNamesrv".into(), embed.to_string());
        if let Some(ctl) = &controller {
            for (k, v) in ctl.to_properties() {
                // listenPort is the NameServer's.
                all.entry(k).or_insert(v);
            }
        }
        settings::print(&all);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("apogee-namesrv")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let registry = ProcessorRegistry::new();
        let controller = match controller {
            Some(ctl) => Some(
                ControllerServer::start_embedded(ctl, &registry)
                    .await
                    .context("cannot start the embedded controller")?,
            ),
            None => None,
        };
        let server = match NameServer::start_with(config, registry).await {
            Ok(s) => s,
            Err(e) => {
                if let Some(c) = controller {
                    c.shutdown().await;
                }
                return Err(e.into());
            }
        };
        println!("apogee namesrv listening on {}", server.local_addr());
        if let Some(c) = &controller {
            println!(
                "apogee controller (in the namesrv) peer port {}",
                c.local_addr()
            );
        }
        apogee_remoting::shutdown_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        if let Some(c) = controller {
            c.shutdown().await;
        }
        Ok(())
    })
}
