//! `x-forwarded-for` (docs/design.md §5.5): every request the agent forwards
//! carries the client's address, appended after whatever the client sent, so
//! the last entry is the one the app can trust — the agent wrote it. Without
//! it the app would see every request come from the agent, and the only
//! address it could use would be one a client chose.
//!
//! The value is made once per connection; a request that brings its own
//! header costs one joined copy.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The header.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether the agent appends the client's address (`--forwarded-for`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardedFor {
    /// Append it to `x-forwarded-for` (client-sent entries kept before it).
    #[default]
    Append,
    /// Forward requests as they came.
    Off,
}

/// The entry for a client at `ip` (an IPv4 client of a dual-stack
/// listener as plain IPv4).
pub fn entry(ip: IpAddr) -> HeaderValue {
    let text = ip.to_canonical().to_string();
    HeaderValue::try_from(text).expect("an IP address is a valid header value")
}

/// Appends `entry` to `headers`' `x-forwarded-for`, joining the entries a
/// client sent (in one field or several) into one list before it.
pub fn append(headers: &mut HeaderMap, entry: &HeaderValue) {
    let mut sent = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if sent.peek().is_none() {
        headers.insert(X_FORWARDED_FOR, entry.clone());
        return;
    }
    let mut list = Vec::new();
    for v in sent {
        list.extend_from_slice(v.as_bytes());
        list.extend_from_slice(b", ");
    }
    list.extend_from_slice(entry.as_bytes());
    // Made of valid values and ", ": valid.
    if let Ok(v) = HeaderValue::from_bytes(&list) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(headers: &HeaderMap) -> Vec<&str> {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn the_client_address_comes_last_after_what_the_client_sent() {
        let client = entry("10.1.2.3".parse().unwrap());
        let mut h = HeaderMap::new();
        append(&mut h, &client);
        assert_eq!(list(&h), ["10.1.2.3"]);

        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("7.7.7.7, 8.8.8.8"),
        );
        append(&mut h, &client);
        assert_eq!(list(&h), ["6.6.6.6, 7.7.7.7, 8.8.8.8, 10.1.2.3"]);
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_listener_read_as_ipv4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(entry(mapped), "10.1.2.3");
        assert_eq!(entry("fd00::7".parse().unwrap()), "fd00::7");
    }
}
