//! The controller's state survives a restart: a one-member group elects a
//! master for a registered broker, stops, starts again on the same
//! controllerStorePath and still knows the master, its epoch and the set.

use std::time::{Duration, Instant};

use apogee_controller::{ControllerConfig, ControllerServer};
use apogee_protocol::code::{request_code, response_code};
use apogee_protocol::RemotingCommand;
use apogee_remoting::{ClientConfig, RemotingClient};

fn config(dir: &std::path::Path, peer_port: u16) -> ControllerConfig {
    let mut c = ControllerConfig::default();
    c.apply(
        &[
            ("bindAddress", "127.0.0.1".to_string()),
            ("listenPort", "0".to_string()),
            ("controllerDLegerPeers", format!("n0-127.0.0.1:{peer_port}")),
            ("controllerDLegerSelfId", "n0".to_string()),
            ("controllerStorePath", dir.display().to_string()),
            ("electionTimeoutMills", "200".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    )
    .expect("config");
    c
}

async fn until_ok(client: &RemotingClient, addr: &str, req: RemotingCommand) -> RemotingCommand {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = client
            .invoke(addr, req.clone(), Duration::from_secs(3))
            .await
        {
            if r.code == response_code::SUCCESS {
                return r;
            }
            assert!(Instant::now() < deadline, "still refused: {:?}", r.remark);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let peer = free_port();
    let client = RemotingClient::new(ClientConfig::default());

    let server = ControllerServer::start(config(dir.path(), peer))
        .await
        .expect("start");
    let addr = server.local_addr().to_string();
    let mut reg = RemotingCommand::request(request_code::CONTROLLER_REGISTER_BROKER);
    reg.set_ext("clusterName", "C");
    reg.set_ext("brokerName", "b");
    reg.set_ext("brokerId", "1");
    reg.set_ext("brokerAddress", "127.0.0.1:10911");
    let r = until_ok(&client, &addr, reg).await;
    assert_eq!(r.ext("masterBrokerId"), Some("1"));
    assert_eq!(r.ext("masterEpoch"), Some("1"));
    // A request without its header fields is refused, not a crash.
    let bad = client
        .invoke(
            &addr,
            RemotingCommand::request(request_code::CONTROLLER_REGISTER_BROKER),
            Duration::from_secs(3),
        )
        .await
        .expect("answer");
    assert_eq!(bad.code, response_code::CONTROLLER_INVALID_REQUEST);
    assert!(bad.remark.unwrap_or_default().contains("clusterName"));
    server.shutdown().await;
    client.close().await;

    let client = RemotingClient::new(ClientConfig::default());
    let server = ControllerServer::start(config(dir.path(), peer))
        .await
        .expect("restart");
    let addr = server.local_addr().to_string();
    let mut info = RemotingCommand::request(request_code::CONTROLLER_GET_REPLICA_INFO);
    info.set_ext("brokerName", "b");
    let r = until_ok(&client, &addr, info).await;
    assert_eq!(r.ext("masterBrokerId"), Some("1"));
    assert_eq!(r.ext("masterAddress"), Some("127.0.0.1:10911"));
    assert_eq!(r.ext("masterEpoch"), Some("1"));
    let body: serde_json::Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["syncStateSet"], serde_json::json!([1]));
    // The leader address GET_METADATA_INFO gives is the peer address, and
    // the same API answers there.
    let peer_addr = format!("127.0.0.1:{peer}");
    let meta = until_ok(
        &client,
        &peer_addr,
        RemotingCommand::request(request_code::CONTROLLER_GET_METADATA_INFO),
    )
    .await;
    assert_eq!(
        meta.ext("controllerLeaderAddress"),
        Some(peer_addr.as_str())
    );
    assert_eq!(meta.ext("isLeader"), Some("true"));
    server.shutdown().await;
    client.close().await;
}
