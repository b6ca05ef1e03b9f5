//! Server behaviour over real TCP on 127.0.0.1.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::{RemotingCommand, SerializeType};
use apogee_remoting::{
    processor_fn, ProcessorRegistry, RemotingServer, ServerConfig, REQUEST_CODE_NOT_SUPPORTED,
    SYSTEM_ERROR,
};
use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

#[tokio::test]
async fn round_trip_answers_in_the_request_serialization() {
    let server = start(echo_registry()).await;
    let addr = server.local_addr().to_string();
    let client = client();
    for st in [SerializeType::Json, SerializeType::RocketMq] {
        let mut req = RemotingCommand::request(ECHO).with_body(&b"payload"[..]);
        req.serialize_type = st;
        req.set_ext("topic", "T");
        let resp = client.invoke(&addr, req, WAIT).await.unwrap();
        assert_eq!(resp.code, 0);
        assert!(resp.is_response());
        assert_eq!(
            resp.serialize_type, st,
            "response must use the request's header type"
        );
        assert_eq!(resp.ext("topic"), Some("T"));
        assert_eq!(resp.body.as_deref(), Some(&b"payload"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_survive_the_zero_copy_write_path() {
    let server = start(echo_registry()).await;
    let addr = server.local_addr().to_string();
    let client = client();
    let body: Bytes = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut calls = Vec::new();
    for i in 0..4 {
        let client = client.clone();
        let addr = addr.clone();
        // Mix big and small frames so batches interleave copied and shared pieces.
        let b = if i % 2 == 0 {
            body.clone()
        } else {
            Bytes::from_static(b"small")
        };
        calls.push(tokio::spawn(async move {
            let req = RemotingCommand::request(ECHO).with_body(b.clone());
            let resp = client.invoke(&addr, req, WAIT).await.unwrap();
            assert_eq!(resp.body, Some(b));
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
}

#[tokio::test]
async fn unknown_code_gets_request_code_not_supported() {
    let server = start(echo_registry()).await;
    let client = client();
    let resp = client
        .invoke(
            &server.local_addr().to_string(),
            RemotingCommand::request(4242),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(resp.code, REQUEST_CODE_NOT_SUPPORTED);
    assert_eq!(
        resp.remark.as_deref(),
        Some("request type 4242 not supported")
    );
}

#[tokio::test]
async fn default_processor_handles_unregistered_codes() {
    let reg = echo_registry();
    reg.set_default(processor_fn(|_ctx, req: RemotingCommand| async move {
        Ok(Some(RemotingCommand::response(
            0,
            format!("default saw {}", req.code),
        )))
    }));
    let server = start(reg).await;
    let resp = client()
        .invoke(
            &server.local_addr().to_string(),
            RemotingCommand::request(77),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(resp.code, 0);
    assert_eq!(resp.remark.as_deref(), Some("default saw 77"));
}

#[tokio::test]
async fn oneway_requests_are_processed_but_never_answered() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reg = echo_registry();
    let s = Arc::clone(&seen);
    reg.register(
        7,
        processor_fn(move |_ctx, req: RemotingCommand| {
            s.lock().push(req.opaque);
            // Returns a response on purpose: the server must still not send it.
            async { Ok(Some(RemotingCommand::response(0, None))) }
        }),
    );
    let server = start(reg).await;
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut oneway = RemotingCommand::request(7);
    oneway.opaque = 1;
    oneway.mark_oneway();
    write_cmd(&mut sock, &oneway).await;
    let mut unknown_oneway = RemotingCommand::request(9999);
    unknown_oneway.opaque = 2;
    unknown_oneway.mark_oneway();
    write_cmd(&mut sock, &unknown_oneway).await;
    let mut req = RemotingCommand::request(ECHO);
    req.opaque = 3;
    write_cmd(&mut sock, &req).await;
    let first = tokio::time::timeout(WAIT, read_frame(&mut sock))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.opaque, 3,
        "the first frame back must answer the normal request"
    );
    // The oneway request ran (it was sent before the echo, and the echo is answered).
    tokio::time::timeout(WAIT, async {
        while seen.lock().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(*seen.lock(), vec![1]);
    // The oneway task has run; had it queued an answer, it would come next.
    let mut req = RemotingCommand::request(ECHO);
    req.opaque = 4;
    write_cmd(&mut sock, &req).await;
    let next = tokio::time::timeout(WAIT, read_frame(&mut sock))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.opaque, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_requests_share_one_connection() {
    let peers = Arc::new(Mutex::new(HashSet::new()));
    let reg = ProcessorRegistry::new();
    let p = Arc::clone(&peers);
    reg.register(
        ECHO,
        processor_fn(move |ctx, req: RemotingCommand| {
            p.lock().insert(ctx.peer_addr());
            async move {
                // Yield so responses interleave and come back out of order.
                tokio::task::yield_now().await;
                let mut resp = RemotingCommand::response(0, None);
                resp.ext_fields = req.ext_fields;
                Ok(Some(resp))
            }
        }),
    );
    let server = start(reg).await;
    let addr = server.local_addr().to_string();
    let client = client();
    let calls = (0..1000).map(|i| {
        let client = client.clone();
        let addr = addr.clone();
        async move {
            let mut req = RemotingCommand::request(ECHO);
            req.set_ext("n", i.to_string());
            let resp = client.invoke(&addr, req, WAIT).await.unwrap();
            assert_eq!(resp.ext("n"), Some(i.to_string().as_str()));
        }
    });
    futures::future::join_all(calls).await;
    assert_eq!(peers.lock().len(), 1, "all calls must reuse one connection");
}

#[tokio::test]
async fn slow_request_does_not_block_a_fast_one_on_the_same_connection() {
    let release = Arc::new(Notify::new());
    let reg = echo_registry();
    let r = Arc::clone(&release);
    reg.register(
        1,
        processor_fn(move |_ctx, _req| {
            let r = Arc::clone(&r);
            async move {
                r.notified().await;
                Ok(Some(RemotingCommand::response(0, "slow".to_string())))
            }
        }),
    );
    let server = start(reg).await;
    let addr = server.local_addr().to_string();
    let client = client();
    let slow = {
        let client = client.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            client
                .invoke(&addr, RemotingCommand::request(1), WAIT)
                .await
        })
    };
    // The slow request cannot finish before it is released, which only
    // happens after the fast one has been answered.
    echo_ok(&client, &addr).await;
    assert!(!slow.is_finished());
    release.notify_one();
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.remark.as_deref(), Some("slow"));
}

async fn bad_input_closes_only_that_connection(garbage: Bytes) {
    let server = start(echo_registry()).await;
    let addr = server.local_addr().to_string();
    let good = client();
    echo_ok(&good, &addr).await;
    let mut bad = TcpStream::connect(server.local_addr()).await.unwrap();
    bad.write_all(&garbage).await.unwrap();
    assert!(
        closed_by_peer(&mut bad).await,
        "server must close the bad connection"
    );
    echo_ok(&good, &addr).await;
    let other = client();
    echo_ok(&other, &addr).await;
}

#[tokio::test]
async fn oversized_frame_length_closes_only_that_connection() {
    let mut g = BytesMut::new();
    g.put_u32(0x7FFF_FFF0);
    g.put_slice(b"whatever");
    bad_input_closes_only_that_connection(g.freeze()).await;
}

#[tokio::test]
async fn malformed_json_header_closes_only_that_connection() {
    let header = b"{\"code\":10,\"opaque\":";
    let mut g = BytesMut::new();
    g.put_u32(4 + header.len() as u32);
    g.put_u32(header.len() as u32);
    g.put_slice(header);
    bad_input_closes_only_that_connection(g.freeze()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_panic_or_error_answers_system_error_and_keeps_serving() {
    let reg = echo_registry();
    reg.register(
        5,
        processor_fn(|_ctx, _req| async move {
            if true {
                panic!("boom in processor");
            }
            Ok(None)
        }),
    );
    reg.register(
        6,
        processor_fn(|_ctx, _req| async move { Err("disk on fire".into()) }),
    );
    let server = start(reg).await;
    let addr = server.local_addr().to_string();
    let client = client();
    let resp = client
        .invoke(&addr, RemotingCommand::request(5), WAIT)
        .await
        .unwrap();
    assert_eq!(resp.code, SYSTEM_ERROR);
    assert!(resp
        .remark
        .unwrap_or_default()
        .contains("boom in processor"));
    let resp = client
        .invoke(&addr, RemotingCommand::request(6), WAIT)
        .await
        .unwrap();
    assert_eq!(resp.code, SYSTEM_ERROR);
    assert_eq!(resp.remark.as_deref(), Some("disk on fire"));
    echo_ok(&client, &addr).await;
}

#[tokio::test]
async fn processor_returning_none_sends_nothing() {
    let reg = echo_registry();
    reg.register(8, processor_fn(|_ctx, _req| async move { Ok(None) }));
    let server = start(reg).await;
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut silent = RemotingCommand::request(8);
    silent.opaque = 1;
    write_cmd(&mut sock, &silent).await;
    let mut req = RemotingCommand::request(ECHO);
    req.opaque = 2;
    write_cmd(&mut sock, &req).await;
    let first = tokio::time::timeout(WAIT, read_frame(&mut sock))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.opaque, 2);
}

#[tokio::test]
async fn listens_on_several_addresses_with_the_same_processors() {
    let config = ServerConfig::new(loopback()).also_listen(loopback());
    let server = RemotingServer::bind(config, echo_registry()).await.unwrap();
    let addrs = server.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0].port(), addrs[1].port());
    let client = client();
    let mut locals = HashSet::new();
    for a in &addrs {
        echo_ok(&client, &a.to_string()).await;
        locals.insert(client.channel(&a.to_string()).await.unwrap().peer_addr());
    }
    assert_eq!(locals.len(), 2);
}

#[tokio::test]
async fn request_context_reports_the_local_listener() {
    let reg = ProcessorRegistry::new();
    reg.register(
        ECHO,
        processor_fn(|ctx, _req| async move {
            Ok(Some(RemotingCommand::response(
                0,
                ctx.local_addr().port().to_string(),
            )))
        }),
    );
    let server = start(reg).await;
    let resp = client()
        .invoke(
            &server.local_addr().to_string(),
            RemotingCommand::request(ECHO),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(resp.remark, Some(server.local_addr().port().to_string()));
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let mut config = ServerConfig::new(loopback());
    config.idle_timeout = Some(Duration::from_millis(200));
    let server = RemotingServer::bind(config, echo_registry()).await.unwrap();
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    assert!(
        closed_by_peer(&mut sock).await,
        "idle connection must be closed"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_an_in_flight_request() {
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let started_tx = Arc::new(Mutex::new(Some(started_tx)));
    let release = Arc::new(Notify::new());
    let reg = echo_registry();
    let r = Arc::clone(&release);
    reg.register(
        1,
        processor_fn(move |_ctx, _req| {
            if let Some(tx) = started_tx.lock().take() {
                let _ = tx.send(());
            }
            let r = Arc::clone(&r);
            async move {
                r.notified().await;
                Ok(Some(RemotingCommand::response(0, "finished".to_string())))
            }
        }),
    );
    let server = Arc::new(start(reg).await);
    let addr = server.local_addr().to_string();
    let client = client();
    let in_flight = {
        let client = client.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            client
                .invoke(&addr, RemotingCommand::request(1), WAIT)
                .await
        })
    };
    started_rx.await.unwrap();
    let stopping = {
        let server = Arc::clone(&server);
        tokio::spawn(async move { server.shutdown_within(WAIT).await })
    };
    // Wait until the listener is gone, so the request is released only
    // while the server is already shutting down.
    tokio::time::timeout(WAIT, async {
        while TcpStream::connect(server.local_addr()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert!(
        !stopping.is_finished(),
        "shutdown must wait for the in-flight request"
    );
    release.notify_one();
    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(resp.remark.as_deref(), Some("finished"));
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
    let ch = client.channel(&addr).await;
    assert!(ch.is_err(), "server is gone after shutdown");
}

#[tokio::test]
async fn requests_over_the_in_flight_limit_get_system_busy() {
    // Permits, not Notify: the release must not depend on the processors
    // already waiting when it happens.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let reg = echo_registry();
    let r = Arc::clone(&release);
    reg.register(
        1,
        processor_fn(move |_ctx, _req| {
            let r = Arc::clone(&r);
            async move {
                r.acquire().await?.forget();
                Ok(Some(RemotingCommand::response(0, None)))
            }
        }),
    );
    let mut config = ServerConfig::new(loopback());
    config.max_in_flight = 2;
    let server = RemotingServer::bind(config, reg).await.unwrap();
    let mut sock = TcpStream::connect(server.local_addr()).await.unwrap();
    for opaque in 1..=3 {
        let mut req = RemotingCommand::request(1);
        req.opaque = opaque;
        write_cmd(&mut sock, &req).await;
    }
    // Two requests hold both slots, so the third is refused at once.
    let busy = tokio::time::timeout(WAIT, read_frame(&mut sock))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(busy.opaque, 3);
    assert_eq!(busy.code, apogee_remoting::SYSTEM_BUSY);
    release.add_permits(2);
    let mut done = vec![];
    for _ in 0..2 {
        let r = tokio::time::timeout(WAIT, read_frame(&mut sock))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.code, 0);
        done.push(r.opaque);
    }
    done.sort_unstable();
    assert_eq!(done, vec![1, 2]);
    // Slots are free again.
    let mut req = RemotingCommand::request(ECHO);
    req.opaque = 4;
    write_cmd(&mut sock, &req).await;
    let r = tokio::time::timeout(WAIT, read_frame(&mut sock))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.opaque, r.code), (4, 0));
}
