//! Errors raised while decoding or validating protocol data.

use thiserror::Error;

/// Everything that can be wrong with bytes or fields received from a peer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    MalformedFrame(String),
    #[error("unknown serialize type {0}")]
    UnknownSerializeType(u8),
    #[error("invalid JSON header: {0}")]
    InvalidJsonHeader(String),
    #[error("invalid binary header: {0}")]
    InvalidBinaryHeader(String),
    #[error("missing required header field '{0}'")]
    MissingField(&'static str),
    #[error("header field '{field}' has invalid value '{value}': {reason}")]
    InvalidField {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid body: {0}")]
    InvalidBody(String),
    #[error("malformed message: {0}")]
    MalformedMessage(String),
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
    #[error("invalid group name: {0}")]
    InvalidGroup(String),
}

pub type Result<T, E = ProtocolError> = std::result::Result<T, E>;
