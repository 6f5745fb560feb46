//! Errors of the operator library.

use std::fmt;

/// Why an operation of the operator failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object lacked a field the API always sets (name, namespace).
    #[error("{kind} has no {field}")]
    MissingField {
        /// The kind of the object.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The policy could not be rendered into the agent's file.
    #[error("rendering the policy file: {0}")]
    Render(#[from] serde_yaml::Error),
    /// Generating or loading the webhook certificate failed.
    #[error("webhook certificate: {0}")]
    Certificate(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A manifest given to the command line is not what it should be.
    #[error("{0}")]
    Manifest(String),
    /// Command-line flags (or their `GOAWAY_*` variables) the operator
    /// cannot run with; found before it binds a port or reads anything.
    #[error("{}", join(.0))]
    InvalidFlags(Vec<FlagError>),
}

/// A flag whose value the operator refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagError {
    /// The flag, with its dashes (`--default-drain-timeout`).
    pub flag: &'static str,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.flag, self.reason)
    }
}

fn join(errors: &[FlagError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
