//! Policy validation, shared by the agent (policy file) and the operator
//! (admission webhook and reconciler): both call [`Policy::validate`], so a
//! policy the API accepts is a policy the agent runs.

use std::fmt;
use std::time::Duration;

use super::{GoDuration, Policy};

/// How strict validation is about gRPC's production minimums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// The agent's own file: any positive value is accepted (tests need short
    /// ones); values below gRPC's minimums produce warnings.
    Permissive,
    /// The Kubernetes API: values below gRPC's minimums are errors.
    Production,
}

/// gRPC clamps the server keepalive time to at least this.
pub(super) const MIN_SERVER_TIME: Duration = Duration::from_secs(1);
/// gRPC clamps the client keepalive time to at least this.
pub(super) const MIN_CLIENT_TIME: Duration = Duration::from_secs(10);

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted camelCase path, e.g. `server.timeout`.
    pub field: String,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// A valid but questionable setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyWarning {
    /// Dotted camelCase path.
    pub field: String,
    /// Why it is questionable.
    pub message: String,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a policy was rejected. Every message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text did not parse (syntax, unknown field, bad duration).
    #[error("{field}: {message}")]
    Parse {
        /// Dotted path of the field being read, or `.` for the document.
        field: String,
        /// The parser's message.
        message: String,
    },
    /// The values parsed but break a rule.
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl PolicyError {
    pub(super) fn parse(path: &serde_path_to_error::Path, inner: &dyn fmt::Display) -> Self {
        let field = path.to_string();
        let mut message = inner.to_string();
        // serde_yaml already starts its messages with the path.
        if let Some(rest) = message.strip_prefix(&format!("{field}: ")) {
            message = rest.to_owned();
        }
        PolicyError::Parse {
            field: if field.is_empty() { ".".into() } else { field },
            message,
        }
    }

    /// The individual field errors (one for a parse error).
    pub fn fields(&self) -> Vec<FieldError> {
        match self {
            PolicyError::Parse { field, message } => vec![FieldError {
                field: field.clone(),
                reason: message.clone(),
            }],
            PolicyError::Invalid(errors) => errors.clone(),
        }
    }
}

struct Checker {
    strictness: Strictness,
    errors: Vec<FieldError>,
    warnings: Vec<PolicyWarning>,
}

impl Checker {
    fn error(&mut self, field: &str, reason: String) {
        self.errors.push(FieldError {
            field: field.into(),
            reason,
        });
    }

    fn warn(&mut self, field: &str, message: String) {
        self.warnings.push(PolicyWarning {
            field: field.into(),
            message,
        });
    }

    /// Negative is always an error; zero is an error unless `zero_ok`.
    fn duration(&mut self, field: &str, value: Option<GoDuration>, zero_ok: bool) {
        let Some(v) = value else { return };
        if v.is_negative() {
            self.error(field, format!("must not be negative (got {v})"));
        } else if v == GoDuration::ZERO && !zero_ok {
            self.error(field, "must be greater than zero".into());
        }
    }

    /// gRPC's clamping minimums: errors in production, warnings otherwise.
    fn minimum(&mut self, field: &str, value: Option<GoDuration>, min: Duration) {
        let Some(v) = value else { return };
        if v.is_negative() || v == GoDuration::ZERO || v >= GoDuration::from(min) {
            return;
        }
        let min = GoDuration::from(min);
        match self.strictness {
            Strictness::Production => self.error(
                field,
                format!("must be at least {min}, gRPC's minimum (got {v})"),
            ),
            Strictness::Permissive => self.warn(
                field,
                format!("{v} is below gRPC's minimum of {min}; real gRPC peers clamp it"),
            ),
        }
    }
}

impl Policy {
    /// Checks every rule of docs/design.md §2.3. Returns warnings for valid
    /// but questionable settings, or every error found (not just the first),
    /// each naming its field.
    pub fn validate(&self, strictness: Strictness) -> Result<Vec<PolicyWarning>, PolicyError> {
        let mut c = Checker {
            strictness,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let s = &self.server;
        c.duration("server.time", s.time, false);
        c.minimum("server.time", s.time, MIN_SERVER_TIME);
        c.duration("server.timeout", s.timeout, false);
        c.duration("server.maxConnectionIdle", s.max_connection_idle, false);
        c.duration("server.maxConnectionAge", s.max_connection_age, false);
        c.duration(
            "server.maxConnectionAgeGrace",
            s.max_connection_age_grace,
            true,
        );
        if s.max_connection_age_grace.is_some() && s.max_connection_age.is_none() {
            c.warn(
                "server.maxConnectionAgeGrace",
                "has no effect without server.maxConnectionAge".into(),
            );
        }

        let e = &self.enforcement;
        c.duration("enforcement.minTime", e.min_time, false);

        let u = &self.upstream;
        c.duration("upstream.time", u.time, false);
        c.minimum("upstream.time", u.time, MIN_CLIENT_TIME);
        c.duration("upstream.timeout", u.timeout, false);
        if u.time.is_none() && (u.timeout.is_some() || u.permit_without_stream.is_some()) {
            c.warn(
                "upstream.time",
                "upstream keepalive is off; upstream.timeout and upstream.permitWithoutStream have no effect".into(),
            );
        }

        let d = &self.drain;
        c.duration("drain.delay", d.delay, true);
        c.duration("drain.timeout", d.timeout, false);
        c.duration("drain.goawayAckTimeout", d.goaway_ack_timeout, false);
        c.duration("drain.quietPeriod", d.quiet_period, true);
        if let Some(q) = d.quiet_period.and_then(GoDuration::to_std)
            && q > super::resolve::MAX_QUIET_PERIOD
        {
            c.error(
                "drain.quietPeriod",
                format!("must be at most 1m (got {})", GoDuration::from(q)),
            );
        }
        let r = &self.rebalance;
        c.duration("rebalance.window", r.window, false);
        if let Some(w) = r.window.and_then(GoDuration::to_std)
            && w > super::resolve::MAX_REBALANCE_WINDOW
        {
            c.error(
                "rebalance.window",
                format!("must be at most 10m (got {})", GoDuration::from(w)),
            );
        }
        if let Some(p) = r.max_percent
            && !(1..=100).contains(&p)
        {
            c.error(
                "rebalance.maxPercent",
                format!("must be between 1 and 100 (got {p})"),
            );
        }
        if r.enabled != Some(true) && (r.window.is_some() || r.max_percent.is_some()) {
            c.warn(
                "rebalance.enabled",
                "rebalancing is off; rebalance.window and rebalance.maxPercent have no effect"
                    .into(),
            );
        }

        let drain = self.drain_params();
        if c.errors.is_empty() && drain.goaway_ack_timeout >= drain.timeout {
            c.error(
                "drain.goawayAckTimeout",
                format!(
                    "must be less than drain.timeout ({}), or the second GOAWAY would come after the hard close (got {})",
                    GoDuration::from(drain.timeout),
                    GoDuration::from(drain.goaway_ack_timeout)
                ),
            );
        }

        if c.errors.is_empty() {
            Ok(c.warnings)
        } else {
            Err(PolicyError::Invalid(c.errors))
        }
    }
}
