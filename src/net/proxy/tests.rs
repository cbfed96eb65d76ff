//! The PROXY header parser against the specification's examples, every
//! truncation of valid headers, malformed and oversized ones.

use super::*;
use proptest::prelude::*;

const MAX_IPV6: &str = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";

fn addr(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

fn header(version: u8, source: Option<SocketAddr>, len: usize) -> Option<ProxyHeader> {
    Some(ProxyHeader { version, source, len })
}

/// A v2 header: `command` (0 LOCAL, 1 PROXY), `family`, the address block
/// and TLVs as `block`.
fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(block);
    out
}

/// The AF_INET block of 192.0.2.7:51000 -> 10.0.0.1:1883.
fn inet_block() -> Vec<u8> {
    let mut block = vec![192, 0, 2, 7, 10, 0, 0, 1];
    block.extend_from_slice(&51000u16.to_be_bytes());
    block.extend_from_slice(&1883u16.to_be_bytes());
    block
}

/// The AF_INET6 block of [2001:db8::7]:40000 -> [2001:db8::1]:8883.
fn inet6_block() -> Vec<u8> {
    let mut block = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
    block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    block.extend_from_slice(&40000u16.to_be_bytes());
    block.extend_from_slice(&8883u16.to_be_bytes());
    block
}

/// A valid header of each kind, with what it parses to.
fn valid_headers() -> Vec<(Vec<u8>, Option<SocketAddr>)> {
    let max_v6 = format!("PROXY TCP6 {MAX_IPV6} {MAX_IPV6} 65535 65535\r\n");
    // The specification's worst case.
    let max_unknown = format!("PROXY UNKNOWN {MAX_IPV6} {MAX_IPV6} 65535 65535\r\n");
    let mut tlvs = inet_block();
    // PP2_TYPE_ALPN "mqtt", PP2_TYPE_NOOP of 3 bytes: skipped.
    tlvs.extend_from_slice(&[0x01, 0, 4, b'm', b'q', b't', b't', 0x04, 0, 3, 0, 0, 0]);
    vec![
        (b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\n".to_vec(), addr("192.0.2.7:51000")),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 8883\r\n".to_vec(),
            addr("[2001:db8::7]:40000"),
        ),
        (b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n".to_vec(), addr("0.0.0.0:0")),
        (max_v6.into_bytes(), addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")),
        (max_unknown.into_bytes(), None),
        (b"PROXY UNKNOWN\r\n".to_vec(), None),
        (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n".to_vec(), None),
        (v2(1, 0x11, &inet_block()), addr("192.0.2.7:51000")),
        (v2(1, 0x21, &inet6_block()), addr("[2001:db8::7]:40000")),
        (v2(1, 0x11, &tlvs), addr("192.0.2.7:51000")),
        (v2(0, 0x00, &[]), None),
        // LOCAL discards the address block, whatever its family.
        (v2(0, 0x11, &inet_block()), None),
        (v2(0, 0x31, &[0; 216]), None),
        (v2(1, 0x00, &[]), None),
        (v2(1, 0x00, &[1, 2, 3]), None),
    ]
}

#[test]
fn valid_headers_give_the_client_address_and_their_length() {
    for (bytes, source) in valid_headers() {
        let version = if bytes[0] == b'P' { 1 } else { 2 };
        assert_eq!(parse(&bytes), Ok(header(version, source, bytes.len())), "{bytes:?}");
        // What follows (a CONNECT) is not part of it.
        let mut followed = bytes.clone();
        followed.extend_from_slice(&[0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T']);
        assert_eq!(parse(&followed), Ok(header(version, source, bytes.len())), "{bytes:?}");
    }
}

#[test]
fn the_longest_v1_header_is_107_bytes() {
    let (bytes, _) = &valid_headers()[4];
    assert_eq!(bytes.len(), V1_MAX_LEN);
    assert!(parse(bytes).unwrap().is_some());
    let mut longer = bytes.clone();
    longer.insert(10, b'N');
    assert_eq!(parse(&longer), Err(ProxyError::V1TooLong));
}

#[test]
fn every_truncation_of_a_valid_header_needs_more() {
    for (bytes, _) in valid_headers() {
        for end in 0..bytes.len() {
            assert_eq!(parse(&bytes[..end]), Ok(None), "{:?} cut at {end}", &bytes[..end]);
            assert!(wanted(&bytes[..end]) > end, "{:?} cut at {end}", &bytes[..end]);
        }
    }
}

#[test]
fn wanted_covers_v1_then_the_whole_v2_header() {
    assert_eq!(wanted(b""), V1_MAX_LEN);
    assert_eq!(wanted(b"PROXY TCP4"), V1_MAX_LEN);
    let inet = v2(1, 0x11, &inet_block());
    assert_eq!(wanted(&inet[..15]), V1_MAX_LEN);
    assert_eq!(wanted(&inet[..16]), inet.len());
    // Never more than the bound, whatever the length field says.
    let mut long = v2(1, 0x11, &inet_block());
    long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(wanted(&long[..16]), V2_MAX_LEN);
}

#[test]
fn a_client_without_a_header_is_refused_at_its_first_byte() {
    // A CONNECT, a TLS ClientHello, an HTTP request.
    for first in [&[0x10, 0x0C][..], &[0x16, 0x03, 0x01], b"GET / HTTP/1.1\r\n", b"proxy "] {
        assert_eq!(parse(first), Err(ProxyError::NoSignature), "{first:?}");
        assert_eq!(parse(&first[..1]), Err(ProxyError::NoSignature), "{first:?}");
    }
    assert_eq!(parse(b"PROXX"), Err(ProxyError::NoSignature));
    assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(ProxyError::NoSignature));
    assert_eq!(parse(b"\r\x10"), Err(ProxyError::NoSignature));
}

#[test]
fn malformed_v1_headers_are_refused() {
    let malformed: &[&[u8]] = &[
        b"PROXY \r\n",
        b"PROXY TCP4\r\n",
        b"PROXY UDP4 192.0.2.7 10.0.0.1 51000 1883\r\n",
        b"PROXY tcp4 192.0.2.7 10.0.0.1 51000 1883\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY  TCP4 192.0.2.7 10.0.0.1 51000 1883\r\n",
        b"PROXY TCP4 192.0.2.7  10.0.0.1 51000 1883\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883 \r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51000\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883 9\r\n",
        b"PROXY TCP4 192.0.2.256 10.0.0.1 51000 1883\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0 51000 1883\r\n",
        b"PROXY TCP4 2001:db8::7 10.0.0.1 51000 1883\r\n",
        b"PROXY TCP6 192.0.2.7 2001:db8::1 51000 1883\r\n",
        b"PROXY TCP6 2001:db8::7 10.0.0.1 51000 1883\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 1883\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 018\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 1883\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 1883\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\r",
        b"PROXY TCP4 192.0.2.7\t10.0.0.1 51000 1883\r\n",
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\0\r\n",
        "PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883é\r\n".as_bytes(),
    ];
    for bytes in malformed {
        assert!(matches!(parse(bytes), Err(ProxyError::V1Malformed(_))), "{bytes:?}");
    }
    // Refused as soon as the bad byte is seen, not at the line's end.
    assert!(matches!(parse(b"PROXY TCP4 1\0"), Err(ProxyError::V1Malformed(_))));
    assert!(matches!(parse(b"PROXY TCP4\r"), Ok(None)));
    assert!(matches!(parse(b"PROXY TCP4\rX"), Err(ProxyError::V1Malformed(_))));
}

#[test]
fn a_v1_header_without_crlf_in_107_bytes_is_too_long() {
    let mut long = b"PROXY UNKNOWN ".to_vec();
    long.resize(V1_MAX_LEN - 1, b'x');
    assert_eq!(parse(&long), Ok(None));
    long.push(b'\r');
    // `\r` at the 107th byte: the `\n` would be the 108th.
    assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    long.pop();
    long.push(b'x');
    assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    long.extend_from_slice(b"\r\n");
    assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    // One byte shorter fits.
    let mut fits = b"PROXY UNKNOWN ".to_vec();
    fits.resize(V1_MAX_LEN - 2, b'x');
    fits.extend_from_slice(b"\r\n");
    assert_eq!(parse(&fits), Ok(header(1, None, V1_MAX_LEN)));
}

#[test]
fn malformed_v2_headers_are_refused() {
    let mut version1 = v2(1, 0x11, &inet_block());
    version1[12] = 0x11;
    assert_eq!(parse(&version1), Err(ProxyError::V2Version(1)));
    // Known from the 13th byte on.
    assert_eq!(parse(&version1[..13]), Err(ProxyError::V2Version(1)));
    let mut command = v2(1, 0x11, &inet_block());
    command[12] = 0x22;
    assert_eq!(parse(&command[..13]), Err(ProxyError::V2Command(2)));
    for family in [0x12, 0x22, 0x31, 0x32, 0x10, 0x20, 0x41, 0x13, 0x01, 0x02] {
        let bytes = v2(1, family, &[0; 216]);
        assert_eq!(parse(&bytes), Err(ProxyError::V2Family(family)), "{family:#x}");
        assert_eq!(parse(&bytes[..16]), Err(ProxyError::V2Family(family)), "{family:#x}");
    }
    let short = v2(1, 0x11, &inet_block()[..11]);
    assert_eq!(parse(&short[..16]), Err(ProxyError::V2ShortAddresses(11)));
    let short6 = v2(1, 0x21, &inet6_block()[..35]);
    assert_eq!(parse(&short6), Err(ProxyError::V2ShortAddresses(35)));
    let short6 = v2(1, 0x21, &inet_block());
    assert_eq!(parse(&short6), Err(ProxyError::V2ShortAddresses(12)));
}

#[test]
fn an_oversized_v2_header_is_refused_from_its_fixed_part() {
    let fits = v2(1, 0x11, &[0; V2_MAX_LEN - 16]);
    assert_eq!(parse(&fits), Ok(header(2, addr("0.0.0.0:0"), V2_MAX_LEN)));
    let over = v2(1, 0x11, &[0; V2_MAX_LEN - 15]);
    assert_eq!(parse(&over[..16]), Err(ProxyError::V2TooLong(V2_MAX_LEN + 1)));
    let mut most = v2(0, 0x00, &[]);
    most[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(parse(&most), Err(ProxyError::V2TooLong(16 + 65535)));
}

proptest! {
    /// Whatever the bytes, the parser answers without panicking, and a
    /// header it accepts lies within them and within the bounds.
    #[test]
    fn any_bytes_are_answered(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some(header)) = parse(&bytes) {
            prop_assert!(header.len <= bytes.len());
            prop_assert!(header.len <= V2_MAX_LEN);
        }
        let _ = wanted(&bytes);
    }

    /// Read as the socket loop reads it, a prefix at a time: once a prefix
    /// is a header or an error, every longer one says the same, and while
    /// more is needed the loop is asked to look further than it has.
    /// Inputs start like headers half of the time, so both grammars are
    /// explored past their first bytes.
    #[test]
    fn longer_prefixes_never_change_the_answer(
        start in 0usize..3,
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut input = match start {
            0 => b"PROXY ".to_vec(),
            1 => V2_SIGNATURE.to_vec(),
            _ => Vec::new(),
        };
        input.extend_from_slice(&bytes);
        let mut answer = None;
        for end in 0..=input.len() {
            let now = parse(&input[..end]);
            match (&answer, now) {
                (None, Ok(None)) => prop_assert!(wanted(&input[..end]) > end),
                (None, settled) => answer = Some(settled),
                (Some(settled), now) => prop_assert_eq!(settled, &now, "at {}", end),
            }
        }
    }

    /// Any header followed by anything parses to the same header.
    #[test]
    fn a_header_is_read_whatever_follows(
        which in any::<proptest::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut headers = valid_headers();
        let (bytes, source) = headers.swap_remove(which.index(headers.len()));
        let version = if bytes[0] == b'P' { 1 } else { 2 };
        let mut all = bytes.clone();
        all.extend_from_slice(&tail);
        prop_assert_eq!(parse(&all), Ok(header(version, source, bytes.len())));
    }
}
