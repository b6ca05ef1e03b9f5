//! apogee-remoting owns the network runtime shared by the NameServer, the
//! Broker and the client: a tokio TCP server that dispatches each request
//! code to a registered processor, a client that reuses one connection per
//! address and matches responses by opaque, and the per-connection machinery
//! both use (framing, concurrent request tasks, batched writes, idle close,
//! graceful shutdown). It knows frames and codes, not what they mean.

pub mod client;
pub mod connection;
pub mod error;
pub mod processor;
pub mod server;

pub use client::{ClientConfig, RemotingClient};
pub use connection::{Channel, ChannelId, REQUEST_CODE_NOT_SUPPORTED, SYSTEM_BUSY, SYSTEM_ERROR};
pub use error::{RemotingError, Result};
pub use processor::{
    processor_fn, FnProcessor, ProcessResult, ProcessorError, ProcessorRegistry, RequestContext,
    RequestProcessor,
};
pub use server::{shutdown_signal, RemotingServer, ServerConfig};
