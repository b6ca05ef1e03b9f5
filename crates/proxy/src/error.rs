//! Errors of the proxy's broker side, mapped to RocketMQ 5 status codes.

use crate::pb::Code;

/// Why a call to a broker or the NameServer failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("topic {0} does not exist")]
    TopicNotFound(String),
    #[error("no broker named {0} is known")]
    BrokerNotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("malformed receipt handle: {0}")]
    BadReceiptHandle(String),
    #[error("broker answered {code}: {remark}")]
    Broker { code: i32, remark: String },
    #[error("remoting: {0}")]
    Client(#[from] apogee_client::ClientError),
    #[error("protocol: {0}")]
    Protocol(#[from] apogee_protocol::ProtocolError),
}

impl ProxyError {
    /// The status code a client sees for this error.
    pub fn code(&self) -> Code {
        match self {
            ProxyError::TopicNotFound(_) => Code::TopicNotFound,
            ProxyError::BrokerNotFound(_) => Code::NotFound,
            ProxyError::BadRequest(_) => Code::BadRequest,
            ProxyError::BadReceiptHandle(_) => Code::InvalidReceiptHandle,
            ProxyError::Broker { code, .. } => broker_code(*code),
            ProxyError::Client(apogee_client::ClientError::Broker { code, .. }) => {
                broker_code(*code)
            }
            ProxyError::Client(_) => Code::ProxyTimeout,
            ProxyError::Protocol(_) => Code::InternalServerError,
        }
    }
}

/// A remoting response code as the status a gRPC client sees.
fn broker_code(code: i32) -> Code {
    use apogee_protocol::code::response_code as rc;
    match code {
        rc::TOPIC_NOT_EXIST => Code::TopicNotFound,
        rc::SUBSCRIPTION_GROUP_NOT_EXIST => Code::ConsumerGroupNotFound,
        rc::NO_PERMISSION => Code::Forbidden,
        rc::SYSTEM_BUSY => Code::TooManyRequests,
        rc::MESSAGE_ILLEGAL => Code::BadRequest,
        rc::INVALID_PARAMETER => Code::BadRequest,
        rc::NO_MESSAGE => Code::MessageNotFound,
        rc::FLUSH_DISK_TIMEOUT => Code::MasterPersistenceTimeout,
        rc::FLUSH_SLAVE_TIMEOUT | rc::SLAVE_NOT_AVAILABLE => Code::SlavePersistenceTimeout,
        rc::SUBSCRIPTION_NOT_EXIST | rc::SUBSCRIPTION_NOT_LATEST => Code::ConsumerGroupNotFound,
        rc::PULL_OFFSET_MOVED => Code::IllegalOffset,
        rc::REQUEST_CODE_NOT_SUPPORTED => Code::Unsupported,
        _ => Code::InternalServerError,
    }
}

pub type Result<T, E = ProxyError> = std::result::Result<T, E>;
