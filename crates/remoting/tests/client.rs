//! Client behaviour and server-initiated requests over real TCP on 127.0.0.1.

mod common;

use std::time::Duration;

use apogee_protocol::RemotingCommand;
use apogee_remoting::{
    processor_fn, Channel, ClientConfig, ProcessorRegistry, RemotingClient, RemotingError,
    RemotingServer, ServerConfig,
};
use common::*;
use tokio::sync::mpsc;

const HEART_BEAT: i32 = 34;
const GET_CONSUMER_RUNNING_INFO: i32 = 307;
const NOTIFY_CONSUMER_IDS_CHANGED: i32 = 40;

#[tokio::test]
async fn server_invokes_the_client_over_its_channel() {
    // Server keeps the channel of whoever sends a heartbeat.
    let (chan_tx, mut chan_rx) = mpsc::unbounded_channel::<Channel>();
    let server_reg = ProcessorRegistry::new();
    server_reg.register(
        HEART_BEAT,
        processor_fn(move |ctx, _req| {
            let _ = chan_tx.send(ctx.channel().clone());
            async { Ok(Some(RemotingCommand::response(0, None))) }
        }),
    );
    let server = RemotingServer::bind(ServerConfig::new(loopback()), server_reg)
        .await
        .unwrap();
    let addr = server.local_addr().to_string();

    // Client answers running-info requests and records notifications.
    let (client_reg, notified) =
        answering_client(GET_CONSUMER_RUNNING_INFO, NOTIFY_CONSUMER_IDS_CHANGED);
    let client = RemotingClient::with_processors(ClientConfig::default(), client_reg);
    let hb = client
        .invoke(&addr, RemotingCommand::request(HEART_BEAT), WAIT)
        .await
        .unwrap();
    assert_eq!(hb.code, 0);
    let channel = chan_rx.recv().await.unwrap();
    assert!(channel.is_active());
    let client_local = client.channel(&addr).await.unwrap().local_addr();
    assert_eq!(channel.peer_addr(), client_local);

    let mut req = RemotingCommand::request(GET_CONSUMER_RUNNING_INFO);
    req.set_ext("consumerGroup", "G1");
    let info = channel.invoke(req, WAIT).await.unwrap();
    assert_eq!(info.code, 0);
    assert_eq!(info.body.as_deref(), Some(&b"info of G1"[..]));

    let mut notify = RemotingCommand::request(NOTIFY_CONSUMER_IDS_CHANGED);
    notify.set_ext("consumerGroup", "G1");
    channel.send_oneway(notify).await.unwrap();
    first_notice(&notified).await;
    assert_eq!(*notified.lock(), vec![Some("G1".to_string())]);

    // An unhandled server→client request is answered by the client with code 3.
    let resp = channel
        .invoke(RemotingCommand::request(4242), WAIT)
        .await
        .unwrap();
    assert_eq!(resp.code, apogee_remoting::REQUEST_CODE_NOT_SUPPORTED);

    // The server side observes the client going away.
    client.close().await;
    tokio::time::timeout(WAIT, channel.closed()).await.unwrap();
    assert!(!channel.is_active());
    assert!(matches!(
        channel.send_oneway(RemotingCommand::request(1)).await,
        Err(RemotingError::ConnectionClosed { .. })
    ));
}

#[tokio::test]
async fn client_times_out_and_the_connection_stays_usable() {
    let reg = echo_registry();
    reg.register(
        1,
        processor_fn(|_ctx, _req| async move {
            std::future::pending::<()>().await;
            Ok(None)
        }),
    );
    let server = start(reg).await;
    let addr = server.local_addr().to_string();
    let client = client();
    let err = client
        .invoke(
            &addr,
            RemotingCommand::request(1),
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
    match err {
        RemotingError::Timeout { addr: a, millis } => {
            assert_eq!(a, addr);
            assert_eq!(millis, 100);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let before = client.channel(&addr).await.unwrap();
    assert_eq!(
        before.pending_requests(),
        0,
        "the timed-out entry must be removed"
    );
    echo_ok(&client, &addr).await;
    assert_eq!(
        client.channel(&addr).await.unwrap(),
        before,
        "a timeout must not drop the connection"
    );
}

#[tokio::test]
async fn client_reconnects_after_server_restart() {
    let server = start(echo_registry()).await;
    let bound = server.local_addr();
    let addr = bound.to_string();
    let client = client();
    echo_ok(&client, &addr).await;
    let first = client.channel(&addr).await.unwrap();
    server.shutdown_within(WAIT).await;
    drop(server);
    tokio::time::timeout(WAIT, first.closed()).await.unwrap();
    assert!(client
        .invoke(&addr, RemotingCommand::request(ECHO), WAIT)
        .await
        .is_err());

    let restarted = RemotingServer::bind(ServerConfig::new(bound), echo_registry())
        .await
        .unwrap();
    echo_ok(&client, &addr).await;
    let second = client.channel(&addr).await.unwrap();
    assert_ne!(first.id(), second.id());
    drop(restarted);
}

#[tokio::test]
async fn connect_failure_is_reported_with_the_address() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let err = client()
        .invoke(&addr, RemotingCommand::request(ECHO), WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RemotingError::ConnectFailed { addr: a, .. } if *a == addr),
        "got {err:?}"
    );
}

#[tokio::test]
async fn oneway_from_the_client_reaches_the_server() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reg = ProcessorRegistry::new();
    reg.register(
        9,
        processor_fn(move |_ctx, req: RemotingCommand| {
            let _ = tx.send((req.is_oneway(), req.ext("x").map(str::to_string)));
            async { Ok(Some(RemotingCommand::response(0, None))) }
        }),
    );
    let server = start(reg).await;
    let client = client();
    let mut req = RemotingCommand::request(9);
    req.set_ext("x", "1");
    client
        .invoke_oneway(&server.local_addr().to_string(), req)
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, (true, Some("1".to_string())));
}

#[tokio::test]
async fn closed_client_refuses_new_calls() {
    let server = start(echo_registry()).await;
    let addr = server.local_addr().to_string();
    let client = client();
    echo_ok(&client, &addr).await;
    let ch = client.channel(&addr).await.unwrap();
    client.close().await;
    assert!(!ch.is_active());
    assert!(matches!(
        client
            .invoke(&addr, RemotingCommand::request(ECHO), WAIT)
            .await,
        Err(RemotingError::ClientClosed)
    ));
}

#[tokio::test]
async fn client_idle_connection_is_closed_and_reopened_on_use() {
    let server = start(echo_registry()).await;
    let addr = server.local_addr().to_string();
    let client = RemotingClient::new(ClientConfig {
        idle_timeout: Some(Duration::from_millis(200)),
        ..ClientConfig::default()
    });
    echo_ok(&client, &addr).await;
    let first = client.channel(&addr).await.unwrap();
    tokio::time::timeout(WAIT, first.closed()).await.unwrap();
    echo_ok(&client, &addr).await;
    assert_ne!(client.channel(&addr).await.unwrap().id(), first.id());
}
