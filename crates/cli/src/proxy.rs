//! `apogee proxy`: a RocketMQ 5 gRPC endpoint in front of a cluster; routes
//! come from the NameServer(s), calls go to the brokers over remoting.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// NameServer address(es), `host:port;host:port` (default: NAMESRV_ADDR).
    #[arg(
        short = 'n',
        long = "namesrv-addr",
        value_name = "ADDRS",
        env = "NAMESRV_ADDR"
    )]
    namesrv_addr: String,
    /// gRPC port (0 picks a free port).
    #[arg(long = "grpc-server-port", default_value_t = apogee_proxy::DEFAULT_GRPC_PORT)]
    grpc_server_port: u16,
    /// Interface to listen on.
    #[arg(long = "bind-address", default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// `host:port` that routes tell clients to connect to, instead of the
    /// address they used (behind NAT or in containers).
    #[arg(long = "advertised-address")]
    advertised_address: Option<String>,
    /// Largest message body accepted, in bytes.
    #[arg(long = "max-body-size", default_value_t = 4 * 1024 * 1024)]
    max_body_size: usize,
    /// Threads serving gRPC connections (`grpcWorkerLoopNum`; default: one
    /// per CPU). Each runs its connections and their calls start to finish.
    #[arg(long = "grpc-worker-loop-num", value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    grpc_worker_loop_num: Option<u64>,
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let mut config = apogee_proxy::ProxyConfig::new(
        args.namesrv_addr,
        SocketAddr::new(args.bind_address, args.grpc_server_port),
    );
    config.advertised_addr = args.advertised_address;
    config.max_body_size = args.max_body_size;
    if let Some(n) = args.grpc_worker_loop_num {
        config.event_loops = n as usize;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("apogee-proxy")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let server = apogee_proxy::ProxyServer::start(config)
            .await
            .context("cannot start the gRPC proxy")?;
        println!("apogee grpc listening on {}", server.local_addr());
        apogee_remoting::shutdown_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        Ok(())
    })
}
