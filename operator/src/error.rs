//! Errors of the operator library.
//!
//! Each variant's message includes its cause, and the cause is not also
//! reported as `source()`: the operator logs errors with their `Display`
//! (`warn!(%error)`), and `anyhow` prints the `source()` chain after the
//! message, so a wrapped error that was both would print twice.

use std::fmt;

/// Why an operation of the operator failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(kube::Error),
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
    Render(serde_yaml::Error),
    /// Generating or loading the webhook certificate failed.
    #[error("webhook certificate: {0}")]
    Certificate(String),
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file (or address).
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// A manifest given to the command line is not what it should be.
    #[error("{0}")]
    Manifest(String),
    /// Command-line flags (or their `GOAWAY_*` variables) the operator
    /// cannot run with; found before it binds a port or reads anything.
    #[error("{}", join(.0))]
    InvalidFlags(Vec<FlagError>),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

impl From<serde_yaml::Error> for Error {
    fn from(e: serde_yaml::Error) -> Self {
        Error::Render(e)
    }
}

impl Error {
    /// A short label for metrics (`error` of the reconciliation counter),
    /// as controller-rs's `metric_label`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingField { .. } => "missing_field",
            Error::Render(_) => "render",
            Error::Certificate(_) => "certificate",
            Error::Io { .. } => "io",
            Error::Manifest(_) => "manifest",
            Error::InvalidFlags(_) => "invalid_flags",
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_error_prints_its_cause_once() {
        let cause = std::io::Error::other("connection refused by 10.0.0.1:443");
        let e = Error::Kube(kube::Error::Service(Box::new(cause)));
        let printed = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            printed
                .matches("connection refused by 10.0.0.1:443")
                .count(),
            1,
            "{printed}"
        );
        assert!(printed.starts_with("Kubernetes API: "), "{printed}");
        let io = Error::Io {
            path: "/tls/tls.crt".into(),
            error: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let printed = format!("{:#}", anyhow::Error::from(io));
        assert_eq!(printed.matches("not found").count(), 1, "{printed}");
        assert_eq!(Error::Manifest("x".into()).metric_label(), "manifest");
    }
}
