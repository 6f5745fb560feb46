//! The agent's log filter (`GOAWAY_LOG`, tracing's `EnvFilter` syntax),
//! parsed at a bounded cost. One parser for every place a filter comes
//! from: the agent's environment and its `PUT /log-level`, and the
//! operator's webhook and `inject`, which check the
//! `goaway.dev/agent-log-level` annotation before it becomes the agent's
//! environment.
//!
//! `EnvFilter` compiles the value in a span field matcher
//! (`target[span{field=value}]=level`) into a regular-expression
//! automaton; a crafted value of a few hundred bytes took minutes and
//! gigabytes to compile. Here field values match by plain equality (the
//! only use a log filter has for them: `conn{peer=10.0.0.7:4312}`), and a
//! filter is at most [`MAX_LEN`] bytes in at most [`MAX_DIRECTIVES`]
//! directives, so parsing is linear in a small input.

use tracing_subscriber::EnvFilter;

/// The longest filter accepted, in bytes.
pub const MAX_LEN: usize = 1024;
/// The most comma-separated directives accepted.
pub const MAX_DIRECTIVES: usize = 32;

/// Why a filter was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Nothing but whitespace.
    #[error("empty log filter")]
    Empty,
    /// Over [`MAX_LEN`].
    #[error("log filter of {len} bytes; at most {MAX_LEN} are accepted")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Over [`MAX_DIRECTIVES`].
    #[error("log filter of {count} directives; at most {MAX_DIRECTIVES} are accepted")]
    TooManyDirectives {
        /// How many it had.
        count: usize,
    },
    /// Not `EnvFilter` syntax.
    #[error("not a log filter ({0}); e.g. debug, or info,goaway_transport=debug")]
    Syntax(String),
}

/// Parses `filter` (surrounding whitespace ignored).
pub fn parse(filter: &str) -> Result<EnvFilter, Error> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Err(Error::Empty);
    }
    if filter.len() > MAX_LEN {
        return Err(Error::TooLong { len: filter.len() });
    }
    let count = filter.split(',').count();
    if count > MAX_DIRECTIVES {
        return Err(Error::TooManyDirectives { count });
    }
    EnvFilter::builder()
        .with_regex(false)
        .parse(filter)
        .map_err(|e| Error::Syntax(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field matcher whose value, compiled as a regular expression,
    /// blows up (an alternation repeated 24 times); as an exact value it
    /// is just a string.
    fn hostile() -> String {
        let value = "(a|b)*a".to_string() + &"(a|b)".repeat(24);
        format!("goaway_agent[conn{{peer={value}}}]=trace")
    }

    #[test]
    fn levels_and_directives_parse() {
        for ok in [
            "debug",
            " info ",
            "info,goaway_transport=debug,h2=warn",
            "goaway_agent[conn{peer=10.0.0.7:4312}]=trace",
        ] {
            let f = parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(!f.to_string().is_empty());
        }
    }

    #[test]
    fn a_field_value_is_matched_as_text_not_compiled() {
        // With regular expressions on, this takes minutes and gigabytes
        // (nextest's slow-timeout ends the test well before).
        let f = parse(&hostile()).unwrap();
        assert!(f.to_string().contains("(a|b)*a(a|b)"), "{f}");
    }

    #[test]
    fn bad_filters_get_a_reason() {
        assert_eq!(parse(" \n").unwrap_err(), Error::Empty);
        let long = "a=info,".repeat(200);
        assert_eq!(
            parse(&long).unwrap_err(),
            Error::TooLong {
                len: long.trim().len()
            }
        );
        let many = vec!["a=info"; MAX_DIRECTIVES + 1].join(",");
        assert_eq!(
            parse(&many).unwrap_err(),
            Error::TooManyDirectives {
                count: MAX_DIRECTIVES + 1
            }
        );
        let e = parse("info,=[").unwrap_err();
        assert!(matches!(e, Error::Syntax(_)), "{e:?}");
        assert!(e.to_string().contains("e.g. debug"), "{e}");
    }
}
