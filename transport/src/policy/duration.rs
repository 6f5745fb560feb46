//! Go / Kubernetes duration strings (`100ms`, `15s`, `1h30m`).
//!
//! The policy is written by people who also write Go services and Kubernetes
//! manifests, so durations use Go's `time.ParseDuration` grammar exactly:
//! a sequence of decimal numbers, each with an optional fraction and a unit
//! (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), optionally signed; `0` alone is
//! allowed. Formatting follows Go's `Duration.String()` so a value read back
//! from `/policy` is what `kubectl` users expect to see.
//!
//! No crate implements this grammar faithfully (humantime accepts a different
//! language, `go-parse-duration` is unmaintained), so this is a port of the
//! algorithm, tested against Go's own table.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A signed Go duration, in nanoseconds (Go's `time.Duration`).
///
/// Negative values parse (Go accepts `-1s`) so that validation can reject
/// them with the field's name instead of a parse error.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(i64);

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct ParseDurationError {
    input: String,
    reason: &'static str,
}

const NANOSECOND: u64 = 1;
const MICROSECOND: u64 = 1_000 * NANOSECOND;
const MILLISECOND: u64 = 1_000 * MICROSECOND;
const SECOND: u64 = 1_000 * MILLISECOND;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

impl GoDuration {
    /// Zero duration.
    pub const ZERO: GoDuration = GoDuration(0);

    /// From whole nanoseconds.
    pub const fn from_nanos(nanos: i64) -> Self {
        GoDuration(nanos)
    }

    /// From whole milliseconds (saturating).
    pub const fn from_millis(ms: i64) -> Self {
        GoDuration(ms.saturating_mul(MILLISECOND as i64))
    }

    /// From whole seconds (saturating).
    pub const fn from_secs(secs: i64) -> Self {
        GoDuration(secs.saturating_mul(SECOND as i64))
    }

    /// Signed nanoseconds.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// True when strictly negative.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// The std duration, or `None` when negative.
    pub fn to_std(self) -> Option<Duration> {
        u64::try_from(self.0).ok().map(Duration::from_nanos)
    }
}

impl From<Duration> for GoDuration {
    /// Saturates at Go's maximum (~292 years).
    fn from(d: Duration) -> Self {
        GoDuration(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }
}

impl FromStr for GoDuration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse(input)
            .map(GoDuration)
            .map_err(|reason| ParseDurationError {
                input: input.to_owned(),
                reason,
            })
    }
}

fn parse(input: &str) -> Result<i64, &'static str> {
    let mut s = input.as_bytes();
    let mut neg = false;
    if let Some(&c) = s.first()
        && (c == b'-' || c == b'+')
    {
        neg = c == b'-';
        s = &s[1..];
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err("empty");
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err("expected a number");
        }
        // Integer part.
        let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
        let mut value: u64 = 0;
        for &c in &s[..digits] {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .filter(|&v| v <= 1 << 63)
                .ok_or("overflow")?;
        }
        let pre = digits > 0;
        s = &s[digits..];
        // Fraction, kept like Go does: digits beyond what fits are dropped.
        let mut frac: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
            let mut overflow = false;
            for &c in &s[..digits] {
                if overflow {
                    continue;
                }
                if frac > (i64::MAX as u64) / 10 {
                    overflow = true;
                    continue;
                }
                let next = frac * 10 + u64::from(c - b'0');
                if next > 1 << 63 {
                    overflow = true;
                    continue;
                }
                frac = next;
                scale *= 10.0;
            }
            post = digits > 0;
            s = &s[digits..];
        }
        if !pre && !post {
            return Err("expected digits");
        }
        let unit_len = s
            .iter()
            .take_while(|&&c| c != b'.' && !c.is_ascii_digit())
            .count();
        if unit_len == 0 {
            return Err("missing unit");
        }
        let unit = match &s[..unit_len] {
            b"ns" => NANOSECOND,
            b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => MICROSECOND, // us, µs (U+00B5), μs (U+03BC)
            b"ms" => MILLISECOND,
            b"s" => SECOND,
            b"m" => MINUTE,
            b"h" => HOUR,
            _ => return Err("unknown unit (use ns, us, ms, s, m or h)"),
        };
        s = &s[unit_len..];
        if value > (1 << 63) / unit {
            return Err("overflow");
        }
        value *= unit;
        if frac > 0 {
            // Float precision is what Go uses here as well.
            value += (frac as f64 * (unit as f64 / scale)) as u64;
            if value > 1 << 63 {
                return Err("overflow");
            }
        }
        total = total.checked_add(value).ok_or("overflow")?;
        if total > 1 << 63 {
            return Err("overflow");
        }
    }
    if neg {
        // -(1<<63) is representable.
        return Ok((total as i128).wrapping_neg() as i64);
    }
    i64::try_from(total).map_err(|_| "overflow")
}

impl fmt::Display for GoDuration {
    /// Go's `Duration.String()`: `1h30m0s`, `1.5s`, `100ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let mut u = self.0.unsigned_abs();
        if u == 0 {
            return f.write_str("0s");
        }
        let mut out = String::with_capacity(24);
        if u < SECOND {
            // Sub-second: one unit with a fraction.
            let (unit, prec, name) = if u < MICROSECOND {
                (NANOSECOND, 0, "ns")
            } else if u < MILLISECOND {
                (MICROSECOND, 3, "µs")
            } else {
                (MILLISECOND, 6, "ms")
            };
            push_fraction(&mut out, u / unit, u % unit, prec);
            out.push_str(name);
        } else {
            let hours = u / HOUR;
            u -= hours * HOUR;
            let minutes = u / MINUTE;
            u -= minutes * MINUTE;
            if hours > 0 {
                out.push_str(&hours.to_string());
                out.push('h');
            }
            if hours > 0 || minutes > 0 {
                out.push_str(&minutes.to_string());
                out.push('m');
            }
            push_fraction(&mut out, u / SECOND, u % SECOND, 9);
            out.push('s');
        }
        if neg {
            f.write_str("-")?;
        }
        f.write_str(&out)
    }
}

/// Appends `whole[.frac]` with trailing zeros of the fraction removed.
fn push_fraction(out: &mut String, whole: u64, frac: u64, prec: usize) {
    out.push_str(&whole.to_string());
    if prec == 0 || frac == 0 {
        return;
    }
    let digits = format!("{frac:0prec$}");
    out.push('.');
    out.push_str(digits.trim_end_matches('0'));
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for GoDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Go duration string such as \"15s\" or \"1h30m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GoDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for GoDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // The pattern is the subset of Go's grammar that CEL's duration()
        // also accepts, so CEL rules can compare the values.
        schemars::json_schema!({
            "type": "string",
            "pattern": PATTERN,
        })
    }
}

/// The schema pattern for durations: unsigned, CEL-compatible units.
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> i64 {
        s.parse::<GoDuration>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .as_nanos()
    }

    #[test]
    fn parses_go_table() {
        // Cases from Go's time.TestParseDuration.
        let s = SECOND as i64;
        let ms = MILLISECOND as i64;
        let table: &[(&str, i64)] = &[
            ("0", 0),
            ("5s", 5 * s),
            ("30s", 30 * s),
            ("1478s", 1478 * s),
            ("-5s", -5 * s),
            ("+5s", 5 * s),
            ("-0", 0),
            ("+0", 0),
            ("5.0s", 5 * s),
            ("5.6s", 5 * s + 600 * ms),
            ("5.s", 5 * s),
            (".5s", 500 * ms),
            ("1.0s", s),
            ("1.00s", s),
            ("1.004s", s + 4 * ms),
            ("1.0040s", s + 4 * ms),
            ("100.00100s", 100 * s + ms),
            ("10ns", 10),
            ("11us", 11_000),
            ("12µs", 12_000),
            ("12μs", 12_000),
            ("13ms", 13 * ms),
            ("14s", 14 * s),
            ("15m", 15 * 60 * s),
            ("16h", 16 * 3600 * s),
            ("3h30m", (3 * 3600 + 30 * 60) * s),
            ("10.5s4m", 4 * 60 * s + 10 * s + 500 * ms),
            ("-2m3.4s", -(2 * 60 * s + 3 * s + 400 * ms)),
            (
                "1h2m3s4ms5us6ns",
                3600 * s + 120 * s + 3 * s + 4 * ms + 5000 + 6,
            ),
            (
                "39h9m14.425s",
                39 * 3600 * s + 9 * 60 * s + 14 * s + 425 * ms,
            ),
            ("52763797000ns", 52_763_797_000),
            ("0.3333333333333333333h", 20 * 60 * s),
            ("9007199254740993ns", (1 << 53) + 1),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("0.100000000000000000000h", 6 * 60 * s),
        ];
        for &(input, want) in table {
            assert_eq!(ok(input), want, "{input}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "3000000h",
            "1x",
            "1.5",
            "1s-2s",
            "9223372036854775808ns",
            "15 s",
            " 1s",
        ] {
            assert!(bad.parse::<GoDuration>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn formats_like_go_string() {
        let cases: &[(i64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1µs"),
            (2_200_000, "2.2ms"),
            (3_300_000_000, "3.3s"),
            (4 * MINUTE as i64 + 5 * SECOND as i64, "4m5s"),
            (4 * MINUTE as i64 + 5_001 * MILLISECOND as i64, "4m5.001s"),
            (
                5 * HOUR as i64 + 6 * MINUTE as i64 + 7_001 * MILLISECOND as i64,
                "5h6m7.001s",
            ),
            (8 * MINUTE as i64 + 1, "8m0.000000001s"),
            (2 * HOUR as i64, "2h0m0s"),
            (-1, "-1ns"),
            (i64::MAX, "2562047h47m16.854775807s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ];
        for &(nanos, want) in cases {
            assert_eq!(GoDuration::from_nanos(nanos).to_string(), want);
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["1h30m0s", "100ms", "20s", "2h0m0s", "1.5s", "-3m0s", "7µs"] {
            let d: GoDuration = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn serde_uses_strings() {
        let d: GoDuration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m0s\"");
        assert!(serde_json::from_str::<GoDuration>("90").is_err());
    }
}
