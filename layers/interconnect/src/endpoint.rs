//! Endpoint text (`host[:port]`), as the node table stores a node's interconnect address.

use std::net::Ipv6Addr;

use crate::DEFAULT_PORT;

/// The longest endpoint text accepted (a DNS name is at most 253 bytes).
pub const ENDPOINT_BYTES_MAX: usize = 300;

/// Why endpoint text is not `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("empty endpoint")]
    Empty,
    #[error("endpoint longer than {ENDPOINT_BYTES_MAX} bytes")]
    TooLong,
    #[error("bad port {0:?} (expected 1..=65535)")]
    BadPort(String),
    #[error("bad host {0:?}")]
    BadHost(String),
    #[error("unclosed '[' in {0:?} (IPv6 is written [addr]:port)")]
    UnclosedBracket(String),
}

/// Parses `host[:port]` into the host text and the port ([`DEFAULT_PORT`] if absent).
///
/// The host is a DNS name, an IPv4 address, or an IPv6 address in brackets (`[::1]:7711`); a
/// bare IPv6 address (`fe80::1`) is taken whole, with the default port. Names are resolved
/// by the driver when it dials, so a renumbered host is found again.
pub fn parse_endpoint(text: &str) -> Result<(String, u16), EndpointError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(EndpointError::Empty);
    }
    if text.len() > ENDPOINT_BYTES_MAX {
        return Err(EndpointError::TooLong);
    }
    let (host, port) = if let Some(inner) = text.strip_prefix('[') {
        let (host, after) = inner.split_once(']').ok_or_else(|| EndpointError::UnclosedBracket(text.to_string()))?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(EndpointError::BadHost(host.to_string()));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| EndpointError::BadPort(after.to_string()))?),
        };
        (host, port)
    } else if text.parse::<Ipv6Addr>().is_ok() {
        (text, None)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 && p.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return Err(EndpointError::BadPort(p.to_string())),
        },
    };
    let name_ok =
        |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !text.starts_with('[') && !host.contains(':') && !name_ok(host) {
        return Err(EndpointError::BadHost(host.to_string()));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let ok = |t: &str, h: &str, p: u16| assert_eq!(parse_endpoint(t), Ok((h.to_string(), p)), "{t}");
        ok("node1", "node1", DEFAULT_PORT);
        ok("node1.example.com:9000", "node1.example.com", 9000);
        ok("10.0.0.7", "10.0.0.7", DEFAULT_PORT);
        ok("10.0.0.7:7712", "10.0.0.7", 7712);
        ok("[::1]:7711", "::1", 7711);
        ok("[fe80::1]", "fe80::1", DEFAULT_PORT);
        ok("fe80::1", "fe80::1", DEFAULT_PORT);
        ok(" host-a:1 ", "host-a", 1);
    }

    #[test]
    fn refused_forms() {
        let bad = |t: &str| assert!(parse_endpoint(t).is_err(), "{t} accepted");
        for t in ["", "   ", "host:", "host:0", "host:65536", "host:+80", "host:x", "[::1", "[::1]x", "[nothost]:1"] {
            bad(t);
        }
        for t in [":7711", "a b:1", "host/evil:1", "1.2.3.4:5:6x"] {
            bad(t);
        }
        bad(&"a".repeat(ENDPOINT_BYTES_MAX + 1));
    }
}
