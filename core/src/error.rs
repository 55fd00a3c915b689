//! Errors of the core. Every message says what was wrong and, where it helps,
//! what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model file or folder that cannot be used as given.
    #[error("model {what}: {message}")]
    Model { what: String, message: String },
    /// A device that cannot be opened or a backend that failed at run time.
    #[error("device {device}: {message}")]
    Device { device: String, message: String },
    /// The backend does not implement an op/dtype combination the graph needs.
    #[error("backend {backend} does not support {what}")]
    Unsupported { backend: String, what: String },
    /// A graph or a call that breaks the HAL's rules (a bug in the caller).
    #[error("invalid graph or call: {0}")]
    Invalid(String),
    /// A request the user made that cannot be served as asked.
    #[error("{0}")]
    Request(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn model(what: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Error::Model {
            what: what.to_string(),
            message: message.into(),
        }
    }
    pub fn device(device: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Device {
            device: device.into(),
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }
}
