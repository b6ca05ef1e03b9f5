//! Request/response round trips over loopback through the full runtime
//! (client, framing, dispatch, batched writes): one call at a time, and 64
//! concurrent calls sharing one connection to exercise write coalescing.

use std::time::Duration;

use apogee_protocol::RemotingCommand;
use apogee_remoting::{
    processor_fn, ClientConfig, ProcessorRegistry, RemotingClient, RemotingServer, ServerConfig,
};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const ECHO: i32 = 100;

fn bench(c: &mut Criterion) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot build runtime: {e}");
            return;
        }
    };
    let setup = rt.block_on(async {
        let reg = ProcessorRegistry::new();
        reg.register(
            ECHO,
            processor_fn(|_ctx, req: RemotingCommand| async move {
                Ok(Some(
                    RemotingCommand::response(0, None).with_body(req.body.unwrap_or_default()),
                ))
            }),
        );
        let server =
            RemotingServer::bind(ServerConfig::new(([127, 0, 0, 1], 0).into()), reg).await?;
        let addr = server.local_addr().to_string();
        let client = RemotingClient::new(ClientConfig::default());
        client.channel(&addr).await?;
        Ok::<_, apogee_remoting::RemotingError>((server, client, addr))
    });
    let (_server, client, addr) = match setup {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start server: {e}");
            return;
        }
    };
    let body = Bytes::from(vec![7u8; 1024]);
    let timeout = Duration::from_secs(10);

    let mut g = c.benchmark_group("roundtrip_1KiB");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sequential", |b| {
        b.to_async(&rt).iter(|| async {
            let req = RemotingCommand::request(ECHO).with_body(body.clone());
            let resp = client.invoke(&addr, req, timeout).await;
            assert!(resp.is_ok());
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("concurrent_64", |b| {
        b.to_async(&rt).iter(|| async {
            let calls = (0..64).map(|_| {
                let req = RemotingCommand::request(ECHO).with_body(body.clone());
                client.invoke(&addr, req, timeout)
            });
            let results = futures::future::join_all(calls).await;
            assert!(results.iter().all(Result::is_ok));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
