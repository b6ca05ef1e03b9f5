//! Helpers shared by the remoting integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apogee_protocol::RemotingCommand;
use apogee_remoting::{
    processor_fn, ClientConfig, ProcessorRegistry, RemotingClient, RemotingServer, ServerConfig,
};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const ECHO: i32 = 100;
/// A generous bound so a loaded machine never makes a test flaky; tests
/// never assert on speed.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A registry answering ECHO with the request's body and extFields.
pub fn echo_registry() -> Arc<ProcessorRegistry> {
    let reg = ProcessorRegistry::new();
    reg.register(
        ECHO,
        processor_fn(|_ctx, req: RemotingCommand| async move {
            let mut resp = RemotingCommand::response(0, None);
            resp.ext_fields = req.ext_fields.clone();
            resp.body = req.body.clone();
            Ok(Some(resp))
        }),
    );
    reg
}

/// The `consumerGroup` of every notice a client's processors received.
pub type Notices = Arc<parking_lot::Mutex<Vec<Option<String>>>>;

/// A client's processors: `ask` is answered "info of {consumerGroup}",
/// the `consumerGroup` of each `notify` request is recorded.
pub fn answering_client(ask: i32, notify: i32) -> (Arc<ProcessorRegistry>, Notices) {
    let notices = Notices::default();
    let reg = ProcessorRegistry::new();
    reg.register(
        ask,
        processor_fn(|_ctx, req: RemotingCommand| async move {
            let group = req.ext("consumerGroup").unwrap_or_default().to_string();
            Ok(Some(
                RemotingCommand::response(0, None).with_body(format!("info of {group}")),
            ))
        }),
    );
    let n = Arc::clone(&notices);
    reg.register(
        notify,
        processor_fn(move |_ctx, req: RemotingCommand| {
            n.lock().push(req.ext("consumerGroup").map(str::to_string));
            async { Ok(None) }
        }),
    );
    (reg, notices)
}

/// Waits (up to WAIT) until a notice has been recorded.
pub async fn first_notice(notices: &Notices) {
    tokio::time::timeout(WAIT, async {
        while notices.lock().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a notice within WAIT");
}

pub async fn start(reg: Arc<ProcessorRegistry>) -> RemotingServer {
    RemotingServer::bind(ServerConfig::new(loopback()), reg)
        .await
        .expect("bind on 127.0.0.1:0")
}

pub fn client() -> RemotingClient {
    RemotingClient::new(ClientConfig::default())
}

pub async fn echo_ok(client: &RemotingClient, addr: &str) {
    let mut req = RemotingCommand::request(ECHO);
    req.set_ext("k", "v");
    let resp = client.invoke(addr, req, WAIT).await.expect("echo");
    assert_eq!(resp.code, 0);
    assert_eq!(resp.ext("k"), Some("v"));
}

/// Reads one frame from a raw socket; `None` on EOF or reset.
pub async fn read_frame(sock: &mut TcpStream) -> Option<RemotingCommand> {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    let mut frame = BytesMut::zeroed(len);
    sock.read_exact(&mut frame).await.ok()?;
    RemotingCommand::decode_frame(frame.freeze()).ok()
}

/// True once the peer has closed `sock` (EOF or reset), waiting up to WAIT.
pub async fn closed_by_peer(sock: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    read.is_ok()
}

pub async fn write_cmd(sock: &mut TcpStream, cmd: &RemotingCommand) {
    let mut bytes = cmd.to_bytes();
    while bytes.has_remaining() {
        let n = sock.write(&bytes).await.expect("write");
        bytes.advance(n);
    }
}
