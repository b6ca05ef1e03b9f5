//! apogee-remoting owns the network runtime shared by the NameServer, the
//! Broker and the client: a tokio TCP server that dispatches each request
//! code to a registered processor, a client that reuses one connection per
//! address and matches responses by opaque, and the per-connection machinery
//! both use (framing, concurrent request tasks, batched writes, idle close,
//! graceful shutdown). It knows frames and codes, not what they mean.
//!
//! ```
//! use std::time::Duration;
//! use apogee_protocol::RemotingCommand;
//! use apogee_remoting::{processor_fn, ClientConfig, ProcessorRegistry, RemotingClient,
//!     RemotingServer, ServerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let processors = ProcessorRegistry::new();
//! processors.register(105, processor_fn(|ctx, req: RemotingCommand| async move {
//!     let topic = req.ext("topic").unwrap_or_default().to_string();
//!     // opaque, flag and header serialization are filled in by the server
//!     Ok(Some(RemotingCommand::response(0, format!("{topic} from {}", ctx.peer_addr().ip()))))
//! }));
//! let server = RemotingServer::bind(ServerConfig::new("127.0.0.1:0".parse()?), processors).await?;
//! let addr = server.local_addr().to_string(); // the real port
//!
//! let client = RemotingClient::new(ClientConfig::default());
//! let mut req = RemotingCommand::request(105);
//! req.set_ext("topic", "T");
//! let resp = client.invoke(&addr, req, Duration::from_secs(3)).await?;
//! assert_eq!(resp.remark.as_deref(), Some("T from 127.0.0.1"));
//!
//! client.close().await;
//! server.shutdown().await; // a binary would first await apogee_remoting::shutdown_signal()
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod connection;
pub mod error;
pub mod processor;
pub mod server;

pub use client::{ClientConfig, RemotingClient};
pub use connection::{
    Channel, ChannelId, LocalEndpoint, REQUEST_CODE_NOT_SUPPORTED, SYSTEM_BUSY, SYSTEM_ERROR,
};
pub use error::{RemotingError, Result};
pub use processor::{
    processor_fn, FnProcessor, ProcessResult, ProcessorError, ProcessorRegistry, RequestContext,
    RequestProcessor,
};
pub use server::{shutdown_signal, RemotingServer, ServerConfig};
