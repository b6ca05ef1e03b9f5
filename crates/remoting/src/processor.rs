//! The request-processor API: the trait a handler implements, the context it
//! receives, and the per-code registry shared by a server or client.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use apogee_protocol::RemotingCommand;
use futures::future::BoxFuture;
use parking_lot::RwLock;

use crate::connection::Channel;

/// Any error a processor wants to report; it is answered as SYSTEM_ERROR
/// with the error text as remark.
pub type ProcessorError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a processor produces: a response to send (its opaque, flag and
/// serialization are filled in from the request), `None` to send nothing,
/// or an error.
pub type ProcessResult = Result<Option<RemotingCommand>, ProcessorError>;

/// Handles requests of one or more codes.
///
/// The returned future is spawned on its own task, so it may wait as long as
/// it likes (a long-polling pull) without holding up the connection.
pub trait RequestProcessor: Send + Sync + 'static {
    fn process(
        &self,
        ctx: RequestContext,
        request: RemotingCommand,
    ) -> BoxFuture<'static, ProcessResult>;
}

/// Where a request came from.
#[derive(Debug, Clone)]
pub struct RequestContext {
    channel: Channel,
}

impl RequestContext {
    pub(crate) fn new(channel: Channel) -> Self {
        RequestContext { channel }
    }

    /// The connection the request arrived on; it can be kept to send
    /// requests back to the peer later.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.channel.peer_addr()
    }

    /// The local address the connection was accepted on (tells the main
    /// port from the VIP port when a server listens on both).
    pub fn local_addr(&self) -> SocketAddr {
        self.channel.local_addr()
    }
}

/// Adapts an async closure into a [`RequestProcessor`]; see [`processor_fn`].
pub struct FnProcessor<F>(F);

/// Wraps `f(ctx, request) -> impl Future<Output = ProcessResult>` as a processor.
pub fn processor_fn<F, Fut>(f: F) -> FnProcessor<F>
where
    F: Fn(RequestContext, RemotingCommand) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ProcessResult> + Send + 'static,
{
    FnProcessor(f)
}

impl<F, Fut> RequestProcessor for FnProcessor<F>
where
    F: Fn(RequestContext, RemotingCommand) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ProcessResult> + Send + 'static,
{
    fn process(
        &self,
        ctx: RequestContext,
        request: RemotingCommand,
    ) -> BoxFuture<'static, ProcessResult> {
        Box::pin((self.0)(ctx, request))
    }
}

/// Request code → processor, plus an optional fallback for unlisted codes.
///
/// Registration may happen at any time; lookups take a short read lock and
/// clone an `Arc`, never holding the lock while a request runs.
#[derive(Default)]
pub struct ProcessorRegistry {
    by_code: RwLock<HashMap<i32, Arc<dyn RequestProcessor>>>,
    default: RwLock<Option<Arc<dyn RequestProcessor>>>,
}

impl ProcessorRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(ProcessorRegistry::default())
    }

    /// Routes `code` to `processor`, replacing any earlier registration.
    pub fn register<P: RequestProcessor>(&self, code: i32, processor: P) {
        self.register_shared(&[code], Arc::new(processor));
    }

    /// Routes every code in `codes` to one shared processor.
    pub fn register_shared(&self, codes: &[i32], processor: Arc<dyn RequestProcessor>) {
        let mut map = self.by_code.write();
        for &code in codes {
            map.insert(code, Arc::clone(&processor));
        }
    }

    /// Handles every code that has no processor of its own.
    pub fn set_default<P: RequestProcessor>(&self, processor: P) {
        *self.default.write() = Some(Arc::new(processor));
    }

    /// The processor for `code`, falling back to the default one.
    pub fn lookup(&self, code: i32) -> Option<Arc<dyn RequestProcessor>> {
        if let Some(p) = self.by_code.read().get(&code) {
            return Some(Arc::clone(p));
        }
        self.default.read().clone()
    }
}
