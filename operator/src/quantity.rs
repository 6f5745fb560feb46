//! Kubernetes resource quantities (`10m`, `0.5`, `128Mi`, `1e3`), checked
//! the way the API server checks them.
//!
//! The operator copies the agent's resource flags into every injected pod.
//! A value the API server refuses would make each such pod fail
//! validation while the webhook reports success, so the flags are parsed
//! here at startup. k8s-openapi's `Quantity` is an unparsed string and the
//! crates that parse quantities convert them to floats or pull in a
//! decimal library, so this is a small port of apimachinery's
//! `resource.ParseQuantity` grammar:
//!
//! ```text
//! quantity        ::= signedNumber suffix
//! signedNumber    ::= number | sign number
//! number          ::= digits | digits "." digits | digits "." | "." digits
//! suffix          ::= binarySI | decimalSI | decimalExponent
//! binarySI        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! decimalSI       ::= n | u | m | "" | k | M | G | T | P | E
//! decimalExponent ::= ("e" | "E") signedNumber    (an integer)
//! ```
//!
//! The value comes back in nano-units, rounded up (apimachinery keeps nine
//! decimals) and saturating far beyond anything a container asks for, so
//! a request can be compared with its limit.

/// Why a string is not a quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a Kubernetes quantity ({reason}); use e.g. 100m, 0.5, 128Mi or 1G")]
pub(crate) struct QuantityError {
    input: String,
    reason: &'static str,
}

/// A quantity's value in billionths of its unit (cores, bytes), rounded
/// up, saturating at `i128::MAX` in magnitude.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Nanos(pub i128);

/// What the suffix multiplies by.
enum Scale {
    /// 10^exp.
    Decimal(i64),
    /// 2^exp.
    Binary(u32),
}

/// Whether a container's resource `request` is above its `limit` — the
/// API server refuses such a container. Unparsable or empty values
/// (no request, no limit) are never above.
pub(crate) fn request_exceeds_limit(request: &str, limit: &str) -> bool {
    matches!((parse(request), parse(limit)), (Ok(r), Ok(l)) if r > l)
}

/// Parses `input` as apimachinery's `ParseQuantity` would.
pub(crate) fn parse(input: &str) -> Result<Nanos, QuantityError> {
    let err = |reason| QuantityError {
        input: input.to_owned(),
        reason,
    };
    let mut s = input;
    let negative = s.starts_with('-');
    if let Some(rest) = s.strip_prefix(['-', '+']) {
        s = rest;
    }
    let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
    let (int, rest) = s.split_at(int_len);
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let n = after.bytes().take_while(u8::is_ascii_digit).count();
            after.split_at(n)
        }
        None => ("", rest),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(err("expected a number"));
    }
    let scale = match rest {
        "" => Scale::Decimal(0),
        "n" => Scale::Decimal(-9),
        "u" => Scale::Decimal(-6),
        "m" => Scale::Decimal(-3),
        "k" => Scale::Decimal(3),
        "M" => Scale::Decimal(6),
        "G" => Scale::Decimal(9),
        "T" => Scale::Decimal(12),
        "P" => Scale::Decimal(15),
        "E" => Scale::Decimal(18),
        "Ki" => Scale::Binary(10),
        "Mi" => Scale::Binary(20),
        "Gi" => Scale::Binary(30),
        "Ti" => Scale::Binary(40),
        "Pi" => Scale::Binary(50),
        "Ei" => Scale::Binary(60),
        _ => match rest.strip_prefix(['e', 'E']) {
            Some(exp) => Scale::Decimal(exponent(exp).ok_or_else(|| err("bad exponent"))?),
            None => return Err(err("unknown suffix")),
        },
    };
    let magnitude = nanos(int, frac, scale);
    Ok(Nanos(if negative { -magnitude } else { magnitude }))
}

/// A signed decimal integer, as Go's `strconv.ParseInt(s, 10, 64)`.
fn exponent(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `int.frac × scale` in nano-units, rounded up, saturating.
fn nanos(int: &str, frac: &str, scale: Scale) -> i128 {
    // The digits as one integer, and the power of ten that makes them nanos.
    let mut mantissa: i128 = 0;
    let mut saturated = false;
    for b in int.bytes().chain(frac.bytes()) {
        match mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(b - b'0')))
        {
            Some(m) => mantissa = m,
            None => saturated = true,
        }
    }
    if saturated {
        return i128::MAX;
    }
    let frac_len = i64::try_from(frac.len()).unwrap_or(i64::MAX);
    let (pow10, pow2) = match scale {
        Scale::Decimal(e) => (e.saturating_add(9).saturating_sub(frac_len), 0),
        Scale::Binary(b) => (9_i64.saturating_sub(frac_len), b),
    };
    let Some(value) = 1_i128
        .checked_shl(pow2)
        .and_then(|p| mantissa.checked_mul(p))
    else {
        return i128::MAX;
    };
    if pow10 >= 0 {
        u32::try_from(pow10)
            .ok()
            .and_then(|p| 10_i128.checked_pow(p))
            .and_then(|p| value.checked_mul(p))
            .unwrap_or(if value == 0 { 0 } else { i128::MAX })
    } else {
        match u32::try_from(pow10.unsigned_abs())
            .ok()
            .and_then(|p| 10_i128.checked_pow(p))
        {
            Some(divisor) => value / divisor + i128::from(value % divisor != 0),
            // Smaller than a nano: rounds up to one (or stays zero).
            None => i128::from(value != 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NANO: i128 = 1_000_000_000;

    #[test]
    fn parses_what_apimachinery_parses() {
        let table: &[(&str, i128)] = &[
            ("0", 0),
            ("1", NANO),
            ("10m", 10_000_000),
            ("0.5", NANO / 2),
            (".5", NANO / 2),
            ("5.", 5 * NANO),
            ("1.G", NANO * NANO),
            ("+2", 2 * NANO),
            ("-2", -2 * NANO),
            ("128Mi", 128 * (1 << 20) * NANO),
            ("1.5Gi", 3 * (1 << 29) * NANO),
            ("1Ki", 1024 * NANO),
            ("1Ei", (1 << 60) * NANO),
            ("1k", 1000 * NANO),
            ("1M", 1_000_000 * NANO),
            ("1E", 1_000_000_000_000_000_000 * NANO),
            ("100n", 100),
            ("3u", 3_000),
            ("1e3", 1000 * NANO),
            ("1E3", 1000 * NANO),
            ("1e+3", 1000 * NANO),
            ("1.5e-3", 1_500_000),
            ("12e-11", 1),
            ("0.1n", 1),
            ("0e-40", 0),
            ("007", 7 * NANO),
        ];
        for &(input, want) in table {
            assert_eq!(parse(input), Ok(Nanos(want)), "{input}");
        }
    }

    #[test]
    fn rejects_what_apimachinery_rejects() {
        for bad in [
            "", "m", "Mi", "lots", "1K", "1KB", "1mi", "1 Mi", " 1", "1 ", "1e", "1e3.5", "1ee3",
            "1Kii", "1.2.3", "0x10", "1,5", "1e3m",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        // Go reads a lone sign or dot as zero; nobody means that.
        for degenerate in ["-", "+", "."] {
            assert!(parse(degenerate).is_err(), "{degenerate:?} parsed");
        }
        let message = parse("lots").unwrap_err().to_string();
        assert!(
            message.contains("\"lots\" is not a Kubernetes quantity"),
            "{message}"
        );
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        assert_eq!(parse("1e400"), Ok(Nanos(i128::MAX)));
        assert_eq!(parse(&"9".repeat(60)), Ok(Nanos(i128::MAX)));
        assert_eq!(parse("1e-400"), Ok(Nanos(1)));
        assert!(parse("2Gi").unwrap() > parse("2G").unwrap());
        assert!(parse("100m").unwrap() < parse("0.2").unwrap());
    }
}
