//! PROXY protocol version 2 (HAProxy's `send-proxy-v2`): the header a TCP proxy sends first so
//! that the server behind it learns the client's address, and a bounded parser for it.
//!
//! The director writes the header ([`proxy_v2_header`]) in front of a proxied connection; a
//! service behind a load balancer that speaks the protocol reads it with [`parse`]. The parser
//! is incremental: it is given what has arrived so far and says [`Parsed::Incomplete`] until the
//! whole header is there, but never asks for more than [`MAX_HEADER`] bytes, so a peer cannot make
//! us buffer by declaring a long header. A peer that is not speaking the protocol at all (a plain
//! HTTP request, an SSH banner) is refused on the first byte that differs from the signature, not
//! after 16 bytes, so a caller can fall back or hang up at once.
//!
//! Addresses are returned as they are on the wire: a TCP-over-IPv6 header that carries
//! IPv4-mapped addresses yields IPv6 socket addresses. The `LOCAL` command (a health check of
//! the proxy itself) and the `UNSPEC` and `UNIX` families carry no address a TCP server can use:
//! they yield none, and the caller keeps the connection's own endpoints. TLVs after the addresses
//! are skipped, but counted in [`Parsed::Header::consumed`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every version 2 header starts with (chosen by the specification so that no
/// other protocol's first bytes look like them).
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Largest length the header may declare after its 16 fixed bytes: the UNIX family's 216 address
/// bytes and room for TLVs, the buffer size the specification tells receivers to be ready for.
pub const MAX_LEN: usize = 536;

/// Largest header accepted, fixed part included: [`parse`] never needs more bytes than this.
pub const MAX_HEADER: usize = 16 + MAX_LEN;

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A valid start of a header: read more bytes (the whole header is at most [`MAX_HEADER`])
    /// and parse again from the beginning.
    Incomplete,
    /// A whole header.
    Header {
        /// The client's address; `None` for `LOCAL` and for the `UNSPEC` and `UNIX` families.
        source: Option<SocketAddr>,
        /// The address the client connected to; `None` when `source` is.
        destination: Option<SocketAddr>,
        /// Bytes the header took, TLVs included: the connection's own data starts after them.
        consumed: usize,
    },
}

/// Why the bytes are not a PROXY protocol version 2 header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes differ from [`SIGNATURE`]: the peer speaks something else (or version 1).
    #[error("not a PROXY protocol v2 header (the signature differs)")]
    BadSignature,
    /// The version nibble is not 2.
    #[error("PROXY protocol version {0} (only 2 is known)")]
    BadVersion(u8),
    /// The command nibble is neither `LOCAL` (0) nor `PROXY` (1).
    #[error("PROXY protocol command {0} (only LOCAL and PROXY are known)")]
    BadCommand(u8),
    /// An address family and transport byte the specification does not define (receivers must
    /// refuse those).
    #[error("PROXY protocol address family and transport {0:#04x} are not defined")]
    BadFamily(u8),
    /// The declared length cannot hold the family's addresses.
    #[error("PROXY header declares {len} address bytes, fewer than the {need} of its family")]
    TooShort {
        /// Declared length.
        len: usize,
        /// What the family takes.
        need: usize,
    },
    /// The declared length is over [`MAX_LEN`].
    #[error("PROXY header declares {0} bytes, more than the {MAX_LEN} accepted")]
    TooLong(usize),
}

/// Parses the header at the start of `buf`, the bytes received so far.
///
/// Every check is made as soon as the bytes it needs are there, so an error comes on the first
/// wrong byte and [`Parsed::Incomplete`] means that every byte so far is a valid start.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let sig = buf.len().min(SIGNATURE.len());
    if buf[..sig] != SIGNATURE[..sig] {
        return Err(ProxyError::BadSignature);
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadVersion(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return Err(ProxyError::BadCommand(c)),
    };
    let Some(&family) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    // LOCAL discards the address block, family included (the specification says so); PROXY must
    // name a defined family and transport, each with its address length.
    let need = if local {
        0
    } else {
        match family {
            0x00 => 0,
            0x11 | 0x12 => 12,
            0x21 | 0x22 => 36,
            0x31 | 0x32 => 216,
            f => return Err(ProxyError::BadFamily(f)),
        }
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Ok(Parsed::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_LEN {
        return Err(ProxyError::TooLong(len));
    }
    if len < need {
        return Err(ProxyError::TooShort { len, need });
    }
    let consumed = 16 + len;
    let Some(body) = buf.get(16..consumed) else {
        return Ok(Parsed::Incomplete);
    };
    let (source, destination) = match (local, family >> 4) {
        (false, 1) => addresses::<4>(body, |b| Ipv4Addr::from(b).into()),
        (false, 2) => addresses::<16>(body, |b| Ipv6Addr::from(b).into()),
        _ => (None, None),
    };
    Ok(Parsed::Header {
        source,
        destination,
        consumed,
    })
}

/// The source and destination of an address block: two `N`-byte addresses, then two ports.
fn addresses<const N: usize>(
    body: &[u8],
    ip: impl Fn([u8; N]) -> IpAddr,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let bytes = |at: usize| -> Option<[u8; N]> { body.get(at..at + N)?.try_into().ok() };
    let port = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?))
    };
    // `parse` checked the length, so these are all there; `None` rather than a panic if not.
    let src = bytes(0)
        .zip(port(2 * N))
        .map(|(a, p)| SocketAddr::new(ip(a), p));
    let dst = bytes(N)
        .zip(port(2 * N + 2))
        .map(|(a, p)| SocketAddr::new(ip(a), p));
    match (src, dst) {
        (Some(s), Some(d)) => (Some(s), Some(d)),
        _ => (None, None),
    }
}

/// The PROXY protocol version 2 header for a TCP connection from `src` to `dst` (the address the
/// client connected to), as HAProxy's `send-proxy-v2` writes it.
///
/// IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 clients) are written as IPv4 when
/// both ends are, so the server sees the client's IPv4 address; a mixed pair is written as IPv6.
pub fn proxy_v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    let norm = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(v4.into(), v6.port())),
        v4 => v4,
    };
    match (norm(src), norm(dst)) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11); // TCP over IPv4
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            h.push(0x21); // TCP over IPv6
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn header(source: &str, destination: &str, consumed: usize) -> Parsed {
        Parsed::Header {
            source: Some(addr(source)),
            destination: Some(addr(destination)),
            consumed,
        }
    }

    /// A header with the given command, family and body (the length is the body's).
    fn raw(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(family);
        h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn what_the_writer_writes_parses_back_for_ipv4_and_ipv6() {
        let h = proxy_v2_header(addr("192.0.2.7:40000"), addr("10.1.2.3:22"));
        assert_eq!(parse(&h), Ok(header("192.0.2.7:40000", "10.1.2.3:22", 28)));
        let h = proxy_v2_header(addr("[2001:db8::7]:5"), addr("[2001:db8::1]:22"));
        assert_eq!(
            parse(&h),
            Ok(header("[2001:db8::7]:5", "[2001:db8::1]:22", 52))
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_written_and_read_as_ipv4() {
        let h = proxy_v2_header(
            addr("[::ffff:192.0.2.7]:40000"),
            addr("[::ffff:10.1.2.3]:22"),
        );
        assert_eq!(h[13], 0x11);
        assert_eq!(parse(&h), Ok(header("192.0.2.7:40000", "10.1.2.3:22", 28)));
        // One IPv4 end and one IPv6 end: both go as IPv6, the IPv4 one mapped.
        let h = proxy_v2_header(addr("192.0.2.7:40000"), addr("[2001:db8::1]:22"));
        assert_eq!(h[13], 0x21);
        assert_eq!(
            parse(&h),
            Ok(header("[::ffff:192.0.2.7]:40000", "[2001:db8::1]:22", 52))
        );
    }

    #[test]
    fn local_and_addressless_families_give_no_address() {
        let none = |consumed| Parsed::Header {
            source: None,
            destination: None,
            consumed,
        };
        // LOCAL, as a proxy's health check sends it.
        assert_eq!(parse(&raw(0x20, 0x00, b"")), Ok(none(16)));
        // LOCAL with an address block: ignored, family included, but skipped.
        assert_eq!(parse(&raw(0x20, 0x11, &[1; 12])), Ok(none(28)));
        assert_eq!(parse(&raw(0x20, 0xff, &[1; 3])), Ok(none(19)));
        // PROXY over UNSPEC and over UNIX sockets.
        assert_eq!(parse(&raw(0x21, 0x00, b"")), Ok(none(16)));
        assert_eq!(parse(&raw(0x21, 0x31, &[b'/'; 216])), Ok(none(232)));
    }

    #[test]
    fn tlvs_are_skipped_but_consumed() {
        let mut h = proxy_v2_header(addr("192.0.2.7:40000"), addr("10.1.2.3:22"));
        // PP2_TYPE_AUTHORITY "example.org", then PP2_TYPE_NOOP with 3 bytes.
        let tlvs = b"\x02\x00\x0bexample.org\x04\x00\x03abc";
        h[14..16].copy_from_slice(&u16::try_from(12 + tlvs.len()).unwrap().to_be_bytes());
        h.extend_from_slice(tlvs);
        let consumed = h.len();
        h.extend_from_slice(b"SSH-2.0-client\r\n");
        assert_eq!(
            parse(&h),
            Ok(header("192.0.2.7:40000", "10.1.2.3:22", consumed))
        );
        assert_eq!(&h[consumed..], b"SSH-2.0-client\r\n");
    }

    #[test]
    fn fed_a_byte_at_a_time_it_is_incomplete_until_the_last_byte() {
        let mut h = proxy_v2_header(addr("[2001:db8::7]:5"), addr("[2001:db8::1]:22"));
        h[15] += 4;
        h.extend_from_slice(b"\x04\x00\x01x");
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Ok(Parsed::Incomplete), "after {n} bytes");
        }
        assert_eq!(
            parse(&h),
            Ok(header("[2001:db8::7]:5", "[2001:db8::1]:22", 56))
        );
    }

    #[test]
    fn another_protocol_is_refused_on_its_first_differing_byte() {
        let http = b"GET / HTTP/1.1\r\n";
        for n in 1..=http.len() {
            assert_eq!(parse(&http[..n]), Err(ProxyError::BadSignature));
        }
        // PROXY protocol version 1 shares no first byte with version 2 either.
        assert_eq!(parse(b"P"), Err(ProxyError::BadSignature));
        // A signature that goes wrong on its 8th byte is refused right there.
        assert_eq!(parse(&SIGNATURE[..7]), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"\r\n\r\n\0\r\nX"), Err(ProxyError::BadSignature));
    }

    #[test]
    fn bad_versions_commands_and_families_are_refused() {
        assert_eq!(
            parse(&raw(0x11, 0x11, &[0; 12])),
            Err(ProxyError::BadVersion(1))
        );
        assert_eq!(
            parse(&raw(0x31, 0x11, &[0; 12])),
            Err(ProxyError::BadVersion(3))
        );
        assert_eq!(
            parse(&raw(0x22, 0x11, &[0; 12])),
            Err(ProxyError::BadCommand(2))
        );
        assert_eq!(
            parse(&raw(0x21, 0x41, &[0; 12])),
            Err(ProxyError::BadFamily(0x41))
        );
        assert_eq!(
            parse(&raw(0x21, 0x13, &[0; 12])),
            Err(ProxyError::BadFamily(0x13))
        );
        // Known as soon as the byte is there.
        assert_eq!(
            parse(&raw(0x21, 0x10, &[0; 12])[..14]),
            Err(ProxyError::BadFamily(0x10))
        );
    }

    #[test]
    fn a_length_too_short_for_the_family_is_refused() {
        assert_eq!(
            parse(&raw(0x21, 0x11, &[0; 11])),
            Err(ProxyError::TooShort { len: 11, need: 12 })
        );
        assert_eq!(
            parse(&raw(0x21, 0x21, &[0; 12])),
            Err(ProxyError::TooShort { len: 12, need: 36 })
        );
        assert_eq!(
            parse(&raw(0x21, 0x31, &[0; 36])[..16]),
            Err(ProxyError::TooShort { len: 36, need: 216 })
        );
    }

    #[test]
    fn a_declared_length_over_the_cap_is_refused_before_its_bytes_arrive() {
        let at_cap = raw(0x21, 0x11, &[0; MAX_LEN]);
        assert_eq!(at_cap.len(), MAX_HEADER);
        assert!(matches!(
            parse(&at_cap),
            Ok(Parsed::Header {
                consumed: MAX_HEADER,
                ..
            })
        ));
        let over = raw(0x21, 0x11, &[0; MAX_LEN + 1]);
        assert_eq!(parse(&over[..16]), Err(ProxyError::TooLong(MAX_LEN + 1)));
        let mut most = raw(0x21, 0x11, &[]);
        most[14..16].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(parse(&most), Err(ProxyError::TooLong(0xffff)));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_within_the_buffer(
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..700),
            sig in 0..=12usize,
        ) {
            // Mostly the signature and then anything, so the parser gets past its first check.
            let mut buf = SIGNATURE[..sig].to_vec();
            buf.extend_from_slice(&tail);
            match parse(&buf) {
                Ok(Parsed::Header { consumed, .. }) => {
                    proptest::prop_assert!(consumed <= buf.len());
                    proptest::prop_assert!(consumed <= MAX_HEADER);
                }
                Ok(Parsed::Incomplete) => proptest::prop_assert!(buf.len() < MAX_HEADER),
                Err(_) => {}
            }
        }

        #[test]
        fn any_address_pair_round_trips(
            s in proptest::prelude::any::<SocketAddr>(),
            d in proptest::prelude::any::<SocketAddr>(),
        ) {
            let h = proxy_v2_header(s, d);
            let Ok(Parsed::Header { source: Some(s2), destination: Some(d2), consumed }) =
                parse(&h)
            else {
                return Err(proptest::test_runner::TestCaseError::fail("no addresses"));
            };
            proptest::prop_assert_eq!(consumed, h.len());
            proptest::prop_assert_eq!((s2.port(), d2.port()), (s.port(), d.port()));
            proptest::prop_assert_eq!(s2.ip().to_canonical(), s.ip().to_canonical());
            proptest::prop_assert_eq!(d2.ip().to_canonical(), d.ip().to_canonical());
            proptest::prop_assert_eq!(proxy_v2_header(s2, d2), h);
        }
    }
}
