//! Log output, with repetitive warnings rate-limited.
//!
//! A hostile or broken peer can make the same WARN fire once per
//! connection or per burst of streams (a rapid-reset client reconnecting
//! in a loop wrote ~475 KiB of logs in 1.3 s). Each WARN or ERROR call site
//! may therefore log [`BURST`] lines per [`WINDOW`]; past that its lines are
//! counted, not written, and the count is reported when the call site next
//! logs in a new window. INFO and below are not limited (they are off or
//! rare at the default level), and take no lock.
//!
//! Written here rather than taken from a crate: the limit must be per call
//! site, whatever the field values (an attacker varies its peer address),
//! with nothing running in the background; `tracing-throttle` keys on field
//! values and needs its async feature for summaries.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use goaway_transport::log_filter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::cli::LogFormat;

/// Lines a WARN/ERROR call site may write per [`WINDOW`].
pub const BURST: u32 = 10;
/// See [`BURST`].
pub const WINDOW: Duration = Duration::from_secs(10);

/// Starts logging to stderr: `GOAWAY_LOG` (or `RUST_LOG`) filters, else
/// `default_filter`. Every filter goes through the same bounded parser
/// ([`log_filter::parse`]); one that does not parse is reported and the
/// default used.
pub fn init(format: LogFormat, default_filter: &str) {
    let from_env = ["GOAWAY_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|var| Some((var, std::env::var(var).ok()?)));
    let mut refused = None;
    let filter = match from_env.map(|(var, value)| (var, log_filter::parse(&value))) {
        Some((_, Ok(filter))) => filter,
        Some((var, Err(e))) => {
            refused = Some((var, e));
            default(default_filter)
        }
        None => default(default_filter),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(RateLimit::new(format));
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
    }
    if let Some((var, error)) = refused {
        tracing::error!(%error, var, "log filter refused; using the default");
    }
}

fn default(filter: &str) -> EnvFilter {
    log_filter::parse(filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The filter in force, replaceable at runtime (`PUT /log-level`).
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The log filter in force, as `GOAWAY_LOG` would spell it; `None` before
/// [`init`] (tests that log nothing).
pub fn filter() -> Option<String> {
    FILTER.get()?.with_current(|f| f.to_string()).ok()
}

/// Replaces the log filter (same syntax as `GOAWAY_LOG`: a level such as
/// `debug`, or directives such as `info,goaway_transport=debug`).
pub fn set_filter(directives: &str) -> Result<String, String> {
    let new = log_filter::parse(directives).map_err(|e| e.to_string())?;
    let handle = FILTER.get().ok_or("logging is not initialised")?;
    handle.reload(new).map_err(|e| e.to_string())?;
    filter().ok_or_else(|| "logging is not initialised".into())
}

/// The per-call-site limit, as a layer that vetoes events.
pub struct RateLimit {
    format: LogFormat,
    /// Keyed by the call site's static metadata address.
    sites: Mutex<HashMap<usize, Site>>,
}

struct Site {
    window_start: Instant,
    written: u32,
    suppressed: u64,
}

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it.
    Write,
    /// Write it, after reporting this many suppressed in the last window.
    WriteAfter(u64),
    /// Count it, do not write it.
    Suppress,
}

impl RateLimit {
    /// A limiter whose suppression reports use `format`.
    pub fn new(format: LogFormat) -> Self {
        RateLimit {
            format,
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// The verdict for an event from `site` at `now`.
    pub fn check(&self, site: usize, now: Instant) -> Verdict {
        // Call sites are static, so the map is bounded by the binary.
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let s = sites.entry(site).or_insert(Site {
            window_start: now,
            written: 0,
            suppressed: 0,
        });
        let mut reported = 0;
        if now.duration_since(s.window_start) >= WINDOW {
            reported = std::mem::take(&mut s.suppressed);
            s.window_start = now;
            s.written = 0;
        }
        if s.written >= BURST {
            s.suppressed += 1;
            return Verdict::Suppress;
        }
        s.written += 1;
        if reported > 0 {
            Verdict::WriteAfter(reported)
        } else {
            Verdict::Write
        }
    }

    /// The note written before a line whose call site was suppressed.
    /// Written straight to stderr: an event emitted from inside the
    /// subscriber would be dropped by tracing's re-entrancy guard.
    fn report(&self, event: &Event<'_>, suppressed: u64) {
        let meta = event.metadata();
        let line = match self.format {
            LogFormat::Text => format!(
                "{} WARN {}: suppressed {suppressed} earlier lines from {}:{} (more than {BURST} in {}s)\n",
                timestamp(),
                meta.target(),
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or(0),
                WINDOW.as_secs(),
            ),
            LogFormat::Json => format!(
                "{}\n",
                serde_json::json!({
                    "timestamp": timestamp(),
                    "level": "WARN",
                    "target": meta.target(),
                    "message": "suppressed earlier lines from a call site logging too often",
                    "suppressed": suppressed,
                    "site": format!("{}:{}", meta.file().unwrap_or("?"), meta.line().unwrap_or(0)),
                })
            ),
        };
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        let site = std::ptr::from_ref(meta) as usize;
        match self.check(site, Instant::now()) {
            Verdict::Write => true,
            Verdict::WriteAfter(n) => {
                self.report(event, n);
                true
            }
            Verdict::Suppress => false,
        }
    }
}

/// The time as the fmt layer writes it.
fn timestamp() -> String {
    let mut s = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut s));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_writes_a_burst_per_window_then_reports_what_it_suppressed() {
        let limit = RateLimit::new(LogFormat::Text);
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.check(1, t0), Verdict::Write);
        }
        for i in 0..25 {
            let at = t0 + Duration::from_millis(i * 100);
            assert_eq!(limit.check(1, at), Verdict::Suppress);
        }
        // Another call site has its own budget.
        assert_eq!(limit.check(2, t0), Verdict::Write);
        let next = t0 + WINDOW;
        assert_eq!(limit.check(1, next), Verdict::WriteAfter(25));
        assert_eq!(limit.check(1, next), Verdict::Write);
        // A quiet window reports nothing.
        assert_eq!(limit.check(1, next + WINDOW * 3), Verdict::Write);
    }
}
