//! Request processors, one module per area. Each module exposes
//! `register(&ProcessorRegistry, &Arc<BrokerContext>)` for the codes it
//! serves; the controller calls them all. Shared response helpers live here.

pub mod admin;
pub mod client_manage;
pub mod consumer_manage;
pub mod pull;
pub mod query;
pub mod recall;
pub mod reply;
pub mod send;
pub mod send_back;

use apogee_protocol::code::response_code;
use apogee_protocol::{ProtocolError, RemotingCommand};
use apogee_throttle::{throttled_warn, LogThrottle};

// A misbehaving client repeats the same bad request: keyed by request code.
static BAD_HEADER: LogThrottle = LogThrottle::new("bad request header");
static BAD_BODY: LogThrottle = LogThrottle::new("bad request body");

/// Registers `code`, served by `f` with the broker context, the request's
/// connection and the request (the one closure shape every processor here
/// repeats).
pub fn register_with<F, Fut>(
    registry: &apogee_remoting::ProcessorRegistry,
    ctx: &std::sync::Arc<crate::context::BrokerContext>,
    code: i32,
    f: F,
) where
    F: Fn(
            std::sync::Arc<crate::context::BrokerContext>,
            apogee_remoting::RequestContext,
            RemotingCommand,
        ) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = Option<RemotingCommand>> + Send + 'static,
{
    let c = std::sync::Arc::clone(ctx);
    registry.register(
        code,
        apogee_remoting::processor_fn(move |rc, req| {
            let fut = f(std::sync::Arc::clone(&c), rc, req);
            async move { Ok(fut.await) }
        }),
    );
}

/// A response with `code` and `remark`.
pub fn error_response(code: i32, remark: impl Into<String>) -> RemotingCommand {
    RemotingCommand::response(code, Some(remark.into()))
}

/// The response for a request whose header could not be decoded: Java
/// answers SYSTEM_ERROR with the decoder's message, naming the field.
pub fn bad_header(code: i32, e: &ProtocolError) -> RemotingCommand {
    let name = apogee_protocol::code::request_code_name(code).unwrap_or("request");
    throttled_warn!(BAD_HEADER, code, code, error = %e, "bad {name} header");
    error_response(
        response_code::SYSTEM_ERROR,
        format!("bad {name} header: {e}"),
    )
}

/// The response for a request whose body is missing or malformed.
pub fn bad_body(code: i32, what: &str, e: Option<&ProtocolError>) -> RemotingCommand {
    let name = apogee_protocol::code::request_code_name(code).unwrap_or("request");
    let remark = match e {
        Some(e) => format!("bad {name} body ({what}): {e}"),
        None => format!("{name} needs a body ({what})"),
    };
    throttled_warn!(BAD_BODY, code, code, "{remark}");
    error_response(response_code::SYSTEM_ERROR, remark)
}

/// SUCCESS with no remark.
pub fn success() -> RemotingCommand {
    RemotingCommand::response(response_code::SUCCESS, None)
}
