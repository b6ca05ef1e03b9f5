//! Controller errors.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ControllerError {
    #[error("invalid config '{key}': {reason}")]
    Config { key: String, reason: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the controller: {0}")]
    Start(String),
    #[error("raft: {0}")]
    Raft(String),
}

impl ControllerError {
    pub fn config(key: &str, reason: impl Into<String>) -> Self {
        ControllerError::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
