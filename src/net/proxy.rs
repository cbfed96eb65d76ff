//! The PROXY protocol header (HAProxy's "PROXY protocol", versions 1 and
//! 2), sans-IO: [`parse`] reads it from the start of a byte slice, tells
//! when more bytes are needed, and says how long the header is, so the
//! caller consumes exactly the header and leaves what follows (a CONNECT,
//! a TLS ClientHello) in the socket.
//!
//! A listener with `proxy_protocol = true` sits behind a load balancer
//! (HAProxy, nginx, an Azure load balancer) that opens every connection
//! with this header, naming the client it forwards. Only the client's
//! (source) address is kept: it replaces the socket's peer address.
//!
//! * v1, text: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (or `TCP6`, or
//!   `UNKNOWN` followed by anything), at most [`V1_MAX_LEN`] bytes.
//! * v2, binary: a 12-byte signature, version 2 with the PROXY or LOCAL
//!   command, AF_INET or AF_INET6 over STREAM (or AF_UNSPEC), a length,
//!   the addresses, then TLVs, which are skipped; at most
//!   [`V2_MAX_LEN`] bytes in all.
//!
//! LOCAL (v2: the proxy's own connection, e.g. a health check), UNKNOWN
//! (v1) and AF_UNSPEC (v2) name no client: the socket's address is kept.
//!
//! Written here rather than taken from a crate: the protocol is small, and
//! the one maintained parser (`ppp`) reports a truncated v1 header as one
//! of several errors depending on where it was cut, so reading it from a
//! socket would need a framing layer of its own; this one answers
//! "incomplete" for every proper prefix of a valid header and rejects
//! bytes that can begin no header as soon as they are seen.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 header, `\r\n` included (the specification's bound:
/// `PROXY TCP6` with two full IPv6 addresses and two 5-digit ports).
pub const V1_MAX_LEN: usize = 107;

/// The longest v2 header accepted, its 16 fixed bytes included. The
/// specification allows up to 16 + 65535 bytes; addresses take at most
/// 216 (AF_UNIX), and what load balancers add as TLVs (TLS details,
/// an Azure Private Link or AWS endpoint id, a unique id) stays well
/// below this bound, which keeps what a stranger can make a shard hold
/// small.
pub const V2_MAX_LEN: usize = 2048;

/// The v1 header's first bytes.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The v2 header's first 12 bytes.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part of a v2 header: signature, version and command, family
/// and protocol, length.
const V2_FIXED_LEN: usize = 16;

/// A complete PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The protocol version: 1 (text) or 2 (binary).
    pub version: u8,
    /// The client's address, as the proxy saw it; `None` when the header
    /// names none (v1 UNKNOWN, v2 LOCAL or AF_UNSPEC): the socket's peer
    /// address stands.
    pub source: Option<SocketAddr>,
    /// The header's length in bytes: what follows it is the client's.
    pub len: usize,
}

/// Why bytes are not a PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes begin neither a v1 nor a v2 header (e.g. a client that
    /// connected directly and sent its CONNECT).
    #[error("no PROXY protocol signature")]
    NoSignature,
    /// A v1 header without `\r\n` within [`V1_MAX_LEN`] bytes.
    #[error("PROXY v1 header longer than 107 bytes")]
    V1TooLong,
    /// A v1 header that does not follow the grammar.
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    /// A v2 header whose version is not 2.
    #[error("PROXY v2 header of version {0}")]
    V2Version(u8),
    /// A v2 command other than LOCAL (0) and PROXY (1).
    #[error("PROXY v2 header with command {0}")]
    V2Command(u8),
    /// A v2 family or transport this broker does not take: UNIX, DGRAM,
    /// or an undefined value.
    #[error("PROXY v2 header with family/protocol byte {0:#04x}")]
    V2Family(u8),
    /// A v2 address block shorter than its family's addresses.
    #[error("PROXY v2 address block of {0} bytes is too short")]
    V2ShortAddresses(usize),
    /// A v2 header longer than [`V2_MAX_LEN`].
    #[error("PROXY v2 header of {0} bytes (at most 2048 are accepted)")]
    V2TooLong(usize),
}

/// Reads the PROXY header at the start of `buf` (which may hold bytes
/// after it): `Ok(None)` when `buf` is a proper prefix of a header and
/// more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NoSignature),
    }
}

/// How many bytes from the start of `buf` (a prefix of a header, as
/// [`parse`] left it) are worth looking at next: enough for any v1
/// header and the fixed part of a v2 one, then the whole v2 header once
/// its length is known.
pub fn wanted(buf: &[u8]) -> usize {
    match v2_length(buf) {
        Some(length) => (V2_FIXED_LEN + length).min(V2_MAX_LEN),
        None => V1_MAX_LEN,
    }
}

/// The length field of a v2 header whose fixed part `buf` holds.
fn v2_length(buf: &[u8]) -> Option<usize> {
    let fixed = buf.get(..V2_FIXED_LEN)?;
    (fixed[..12] == V2_SIGNATURE).then(|| usize::from(u16::from_be_bytes([fixed[14], fixed[15]])))
}

fn parse_v1(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    let malformed = ProxyError::V1Malformed;
    let head = &buf[..buf.len().min(V1_MAX_LEN)];
    let prefix = &head[..head.len().min(V1_PREFIX.len())];
    if prefix != &V1_PREFIX[..prefix.len()] {
        return Err(ProxyError::NoSignature);
    }
    // The line: printable ASCII up to `\r\n`; anything else is refused as
    // soon as it is seen.
    let Some(cr) = head.iter().position(|&b| !(b' '..=b'~').contains(&b)) else {
        return if head.len() == V1_MAX_LEN { Err(ProxyError::V1TooLong) } else { Ok(None) };
    };
    if head[cr] != b'\r' {
        return Err(malformed("a byte that is not printable ASCII"));
    }
    match head.get(cr + 1) {
        None if cr + 1 == V1_MAX_LEN => return Err(ProxyError::V1TooLong),
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(malformed("\\r not followed by \\n")),
    }
    if cr < V1_PREFIX.len() {
        return Err(malformed("no protocol"));
    }
    // Printable ASCII only, so valid UTF-8.
    let line = std::str::from_utf8(&head[V1_PREFIX.len()..cr])
        .map_err(|_| malformed("a byte that is not printable ASCII"))?;
    let len = cr + 2;
    let mut fields = line.split(' ');
    let source = match fields.next() {
        // "the receiver must ignore anything presented before the CRLF
        // is found" after UNKNOWN.
        Some("UNKNOWN") => None,
        Some("TCP4") => Some(v1_addresses(fields, |s| s.parse::<Ipv4Addr>().map(IpAddr::V4))?),
        Some("TCP6") => Some(v1_addresses(fields, |s| s.parse::<Ipv6Addr>().map(IpAddr::V6))?),
        _ => return Err(malformed("the protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Some(ProxyHeader { version: 1, source, len }))
}

/// The source address of `<src> <dst> <sport> <dport>`, each separated
/// by exactly one space, the addresses of the family `ip` parses.
fn v1_addresses<'a>(
    mut fields: impl Iterator<Item = &'a str>,
    ip: impl Fn(&str) -> Result<IpAddr, std::net::AddrParseError>,
) -> Result<SocketAddr, ProxyError> {
    let malformed = ProxyError::V1Malformed;
    let mut next = || fields.next().ok_or(malformed("fewer than four addresses and ports"));
    let source = ip(next()?).map_err(|_| malformed("a bad source address"))?;
    ip(next()?).map_err(|_| malformed("a bad destination address"))?;
    let source_port = v1_port(next()?).ok_or(malformed("a bad source port"))?;
    v1_port(next()?).ok_or(malformed("a bad destination port"))?;
    if fields.next().is_some() {
        return Err(malformed("more than four addresses and ports"));
    }
    Ok(SocketAddr::new(source, source_port))
}

/// A port in decimal, without leading zeros.
fn v1_port(field: &str) -> Option<u16> {
    let digits = !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit());
    if !digits || (field.len() > 1 && field.starts_with('0')) {
        return None;
    }
    field.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, ProxyError> {
    let signature = &buf[..buf.len().min(V2_SIGNATURE.len())];
    if signature != &V2_SIGNATURE[..signature.len()] {
        return Err(ProxyError::NoSignature);
    }
    let Some(&[version_command, family, high, low]) = buf.get(12..V2_FIXED_LEN) else {
        // Version and command are known from the 13th byte on.
        if let Some(&version_command) = buf.get(12) {
            v2_command(version_command)?;
        }
        return Ok(None);
    };
    let local = v2_command(version_command)?;
    let length = usize::from(u16::from_be_bytes([high, low]));
    let len = V2_FIXED_LEN + length;
    if len > V2_MAX_LEN {
        return Err(ProxyError::V2TooLong(len));
    }
    // The address length a family needs, checked before the whole header
    // is in: a header too short for its addresses is refused at once.
    let needed = match family {
        0x00 => 0,  // AF_UNSPEC: no address (the socket's stands).
        0x11 => 12, // AF_INET, STREAM: 2 x 4 address bytes, 2 x 2 port bytes.
        0x21 => 36, // AF_INET6, STREAM: 2 x 16 + 2 x 2.
        _ if local => 0,
        _ => return Err(ProxyError::V2Family(family)),
    };
    if !local && length < needed {
        return Err(ProxyError::V2ShortAddresses(length));
    }
    let Some(block) = buf.get(V2_FIXED_LEN..len) else { return Ok(None) };
    // "the receiver must accept this connection as valid and must use the
    // real connection endpoints and discard the protocol block including
    // the family" for LOCAL; TLVs after the addresses are skipped.
    let source = match (local, family) {
        (true, _) | (false, 0x00) => None,
        (false, 0x11) => {
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([block[8], block[9]])))
        }
        (false, _) => {
            let mut ip = [0; 16];
            ip.copy_from_slice(&block[..16]);
            Some(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                u16::from_be_bytes([block[32], block[33]]),
            ))
        }
    };
    Ok(Some(ProxyHeader { version: 2, source, len }))
}

/// Whether the version-and-command byte is LOCAL (true) or PROXY
/// (false); an error for anything else.
fn v2_command(version_command: u8) -> Result<bool, ProxyError> {
    match (version_command >> 4, version_command & 0x0F) {
        (2, 0) => Ok(true),
        (2, 1) => Ok(false),
        (2, command) => Err(ProxyError::V2Command(command)),
        (version, _) => Err(ProxyError::V2Version(version)),
    }
}

#[cfg(test)]
mod tests;
