//! NameServer errors.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NamesrvError {
    #[error("invalid config '{key}': {reason}")]
    Config { key: String, reason: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the server: {0}")]
    Start(String),
}
