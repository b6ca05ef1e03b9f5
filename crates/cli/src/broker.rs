//! `apogee broker`: runs one Broker until SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use apogee_broker::failover::ControllerModeBroker;
use apogee_broker::{BrokerConfig, BrokerController};
use clap::Args;

use crate::settings;

/// Options shared by `apogee broker` and `apogee standalone`.
#[derive(Args, Debug, Clone)]
pub struct BrokerArgs {
    /// A broker.conf in RocketMQ's properties format (brokerName, listenPort,
    /// storePathRootDir, flushDiskType, ...).
    #[arg(short = 'c', long = "config-file")]
    pub config_file: Option<PathBuf>,
    /// NameServer address(es), `host:port;host:port` (overrides namesrvAddr
    /// and the NAMESRV_ADDR environment variable).
    #[arg(short = 'n', long = "namesrv-addr", value_name = "ADDRS")]
    pub namesrv_addr: Option<String>,
    /// Main port (overrides listenPort; the VIP port is this minus 2; 0 picks
    /// free ports for both).
    #[arg(long)]
    pub listen_port: Option<u16>,
    /// Any broker.conf key, as key=value (repeatable); applied after the file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the effective configuration and exit.
    #[arg(short = 'p', long = "print-config")]
    pub print_config: bool,
}

/// Builds the configuration from the file, `--set`, the flags, and
/// `defaults` (applied first, so anything the user gives wins).
pub fn build_config(
    args: &BrokerArgs,
    defaults: &BTreeMap<String, String>,
) -> anyhow::Result<BrokerConfig> {
    let mut props = defaults.clone();
    props.extend(settings::load(args.config_file.as_deref(), &args.set)?);
    if let Some(port) = args.listen_port {
        props.insert("listenPort".into(), port.to_string());
    }
    if let Some(addr) = &args.namesrv_addr {
        props.insert("namesrvAddr".into(), addr.clone());
    }
    let mut config = BrokerConfig::default();
    for key in config.apply(&props)? {
        tracing::warn!("ignoring unknown broker config key '{key}'");
    }
    Ok(config)
}

pub fn run(args: BrokerArgs) -> anyhow::Result<()> {
    let config = build_config(&args, &BTreeMap::new())?;
    if args.print_config {
        settings::print(&config.to_properties());
        return Ok(());
    }
    if config.enable_controller_mode {
        return runtime()?.block_on(run_controller_mode(config));
    }
    runtime()?.block_on(async move {
        let grpc_config = config.clone();
        let broker = start_broker(config).await?;
        let grpc = match start_grpc(&grpc_config, &broker).await {
            Ok(g) => g,
            Err(e) => {
                broker.shutdown().await;
                return Err(e);
            }
        };
        apogee_remoting::shutdown_signal().await;
        tracing::info!("shutting down");
        if let Some(g) = grpc {
            g.shutdown().await;
        }
        broker.shutdown().await;
        Ok(())
    })
}

/// `enableControllerMode=true`: the controller group decides the role.
async fn run_controller_mode(config: BrokerConfig) -> anyhow::Result<()> {
    raise_open_files_limit();
    println!(
        "apogee broker data folder {}",
        config.store.store_path_root_dir.display()
    );
    let broker = ControllerModeBroker::start(config)
        .await
        .context("cannot start the broker in controller mode")?;
    println!("apogee broker listening on {}", broker.broker_addr());
    apogee_remoting::shutdown_signal().await;
    tracing::info!("shutting down");
    broker.shutdown().await;
    Ok(())
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("apogee-broker")
        .build()
        .context("cannot start the async runtime")
}

/// Raise the soft limit on open files to the hard limit. The store keeps one
/// file open per ConsumeQueue segment, so the common default of 1,024 stalls
/// dispatch after about a thousand queues; the hard limit is what the
/// operator granted (the Go runtime does the same at start).
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur >= lim.rlim_max {
        tracing::info!(open_files = lim.rlim_cur, "open files limit");
        return;
    }
    let from = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads the struct we own; raising the soft limit up
    // to the hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        tracing::info!(from, to = lim.rlim_cur, "raised the open files limit");
    } else {
        tracing::warn!(
            open_files = from,
            "cannot raise the open files limit; each ConsumeQueue segment keeps a file open"
        );
    }
}

/// Starts the broker and prints where it listens and what it advertises.
pub async fn start_broker(config: BrokerConfig) -> anyhow::Result<BrokerController> {
    raise_open_files_limit();
    println!(
        "apogee broker data folder {}",
        config.store.store_path_root_dir.display()
    );
    let broker = BrokerController::start(config)
        .await
        .context("cannot start the broker")?;
    let ctx = broker.context();
    println!(
        "apogee broker {} (cluster {}) advertises {} (brokerIP1; set brokerIP1 to change it)",
        ctx.config.broker_name, ctx.config.broker_cluster_name, ctx.broker_addr
    );
    println!("apogee broker VIP port on {}", broker.vip_addr());
    if let Some(ha) = ctx.ha_server() {
        println!("apogee broker HA port on {}", ha.local_addr());
    }
    println!("apogee broker listening on {}", broker.local_addr());
    Ok(broker)
}

/// Starts the broker's local gRPC endpoint (`grpcServerPort`): the proxy
/// code path, pointed at the NameServer(s) this broker registers with.
/// None when the broker has no NameServer to find routes in.
pub async fn start_grpc(
    config: &BrokerConfig,
    broker: &BrokerController,
) -> anyhow::Result<Option<apogee_proxy::ProxyServer>> {
    let Some(namesrv) = config.namesrv_addr.clone().filter(|n| !n.trim().is_empty()) else {
        tracing::warn!("no namesrvAddr: the gRPC endpoint is not started");
        return Ok(None);
    };
    let ip: std::net::IpAddr = config
        .bind_address
        .parse()
        .context("invalid broker config bindAddress")?;
    let port = config.effective_grpc_server_port();
    let mut pc = apogee_proxy::ProxyConfig::new(namesrv, std::net::SocketAddr::new(ip, port));
    pc.advertised_addr = config.grpc_advertised_address.clone();
    pc.max_body_size = config.store.max_message_size;
    pc.event_loops = config.grpc_worker_loop_num;
    // Calls to this broker stay in process; routes name it by its
    // advertised address. Other brokers are reached over TCP.
    pc.local_servers = vec![(
        broker.context().broker_addr.clone(),
        broker.local_endpoint(),
    )];
    let server = match apogee_proxy::ProxyServer::start(pc).await {
        Ok(s) => s,
        // The default port taken (a second broker on this host): the
        // broker runs without gRPC rather than not at all; a port that was
        // asked for is honoured or the start fails.
        Err(apogee_proxy::StartError::Bind { source, addr })
            if config.grpc_server_port.is_none()
                && source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            tracing::warn!(%addr, "the default gRPC port is in use (another broker on this host?): no gRPC endpoint; set grpcServerPort to serve one");
            return Ok(None);
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot start the gRPC endpoint (grpcServerPort={port})"
            )))
        }
    };
    println!("apogee grpc listening on {}", server.local_addr());
    Ok(Some(server))
}
