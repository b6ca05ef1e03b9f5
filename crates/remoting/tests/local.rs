//! In-process connections (`RemotingServer::local_endpoint` +
//! `RemotingClient::connect_locally`): the same request/response, oneway,
//! server-initiated and closing behaviour as a TCP connection, without one.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::RemotingCommand;
use apogee_remoting::{
    processor_fn, Channel, ClientConfig, ProcessorRegistry, RemotingClient, RemotingError,
};
use common::*;
use tokio::sync::mpsc;

const SLOW: i32 = 101;
const ONEWAY: i32 = 102;
const KEEP_CHANNEL: i32 = 103;
const ASK_CLIENT: i32 = 104;

/// No host answers here: a call that reached for a socket would fail to
/// resolve, so every success below went through the in-process pair.
const NOWHERE: &str = "no-such-host.invalid:10911";

#[tokio::test]
async fn a_local_client_reaches_the_servers_processors_without_a_socket() {
    let reg = echo_registry();
    reg.register(
        SLOW,
        processor_fn(|_ctx, req: RemotingCommand| async move {
            // Pending at first: the request has to become a task of its own.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Some(
                RemotingCommand::response(0, None).with_body(req.body.unwrap_or_default()),
            ))
        }),
    );
    let oneways = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&oneways);
    reg.register(
        ONEWAY,
        processor_fn(move |_ctx, _req| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Ok(Some(RemotingCommand::response(0, None))) }
        }),
    );
    let server = start(reg).await;
    let client = client();
    client.connect_locally(NOWHERE, server.local_endpoint());

    echo_ok(&client, NOWHERE).await;
    let mut slow = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        slow.push(tokio::spawn(async move {
            let req = RemotingCommand::request(SLOW).with_body(format!("slow {i}"));
            client.invoke(NOWHERE, req, WAIT).await
        }));
    }
    for (i, h) in slow.into_iter().enumerate() {
        let resp = h.await.unwrap().unwrap();
        assert_eq!(resp.body.as_deref(), Some(format!("slow {i}").as_bytes()));
    }
    let unknown = client
        .invoke(NOWHERE, RemotingCommand::request(4242), WAIT)
        .await
        .unwrap();
    assert_eq!(unknown.code, apogee_remoting::REQUEST_CODE_NOT_SUPPORTED);
    client
        .invoke_oneway(NOWHERE, RemotingCommand::request(ONEWAY))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        while oneways.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();

    // Only NOWHERE is local: any other address still means TCP.
    let tcp = server.local_addr().to_string();
    echo_ok(&client, &tcp).await;
    assert_ne!(
        client.channel(&tcp).await.unwrap().local_addr().port(),
        0,
        "a real socket has a real port"
    );
    assert_eq!(
        client.channel(NOWHERE).await.unwrap().local_addr().port(),
        0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_server_calls_back_a_local_client_on_its_channel() {
    let (chan_tx, mut chan_rx) = mpsc::unbounded_channel::<Channel>();
    let reg = ProcessorRegistry::new();
    reg.register(
        KEEP_CHANNEL,
        processor_fn(move |ctx, _req| {
            let _ = chan_tx.send(ctx.channel().clone());
            async { Ok(Some(RemotingCommand::response(0, None))) }
        }),
    );
    let server = start(reg).await;
    let server_addr = server.local_addr();

    let (client_reg, notified) = answering_client(ASK_CLIENT, ONEWAY);
    let client = RemotingClient::with_processors(ClientConfig::default(), client_reg);
    client.connect_locally(NOWHERE, server.local_endpoint());
    let resp = client
        .invoke(NOWHERE, RemotingCommand::request(KEEP_CHANNEL), WAIT)
        .await
        .unwrap();
    assert_eq!(resp.code, 0);
    let channel = chan_rx.recv().await.unwrap();
    // The server sees its own address as the local one and the client as
    // its IP with port 0 (no socket).
    assert_eq!(channel.local_addr(), server_addr);
    assert_eq!(channel.peer_addr().ip(), server_addr.ip());
    assert_eq!(channel.peer_addr().port(), 0);

    let mut ask = RemotingCommand::request(ASK_CLIENT);
    ask.set_ext("consumerGroup", "G0");
    let answer = channel.invoke(ask, WAIT).await.unwrap();
    assert_eq!(answer.body.as_deref(), Some(&b"info of G0"[..]));
    let mut note = RemotingCommand::request(ONEWAY);
    note.set_ext("consumerGroup", "G1");
    channel.send_oneway(note).await.unwrap();
    first_notice(&notified).await;
    assert_eq!(*notified.lock(), vec![Some("G1".to_string())]);

    // The client going away closes the server's end too.
    client.close().await;
    tokio::time::timeout(WAIT, channel.closed()).await.unwrap();
    assert!(matches!(
        channel
            .invoke(RemotingCommand::request(ASK_CLIENT), WAIT)
            .await,
        Err(RemotingError::ConnectionClosed { .. })
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_shutdown_releases_local_callers_at_once() {
    let reg = echo_registry();
    reg.register(
        SLOW,
        processor_fn(|_ctx, _req| async move {
            // Never answers: only the shutdown can end the caller's wait.
            std::future::pending::<()>().await;
            Ok(None)
        }),
    );
    let server = start(reg).await;
    let client = client();
    client.connect_locally(NOWHERE, server.local_endpoint());
    echo_ok(&client, NOWHERE).await;
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .invoke(
                    NOWHERE,
                    RemotingCommand::request(SLOW),
                    Duration::from_secs(60),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown_within(Duration::from_millis(100)).await;
    let ended = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert!(
        matches!(ended, Err(RemotingError::ConnectionClosed { .. })),
        "{ended:?}"
    );
    // Later calls fail fast too, instead of reaching a stopped server.
    let after = client
        .invoke(NOWHERE, RemotingCommand::request(common::ECHO), WAIT)
        .await;
    assert!(
        matches!(after, Err(RemotingError::ConnectionClosed { .. })),
        "{after:?}"
    );
}
