//! The PROXY protocol v2 parser must never panic, never claim more bytes than it was given or
//! than its cap, give the same verdict on every prefix of its input (incomplete, or the same
//! error), and read back what the writer writes for any addresses, decoded or made up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use switchboard_proto::proxy::{MAX_HEADER, Parsed, SIGNATURE, parse, proxy_v2_header};

/// Writes a header for `s` → `d` and parses it back: the same ports and addresses (up to the
/// writer's IPv4-mapped form), the whole header consumed, and the same bytes written again.
fn round_trip(s: SocketAddr, d: SocketAddr) {
    let h = proxy_v2_header(s, d);
    let Ok(Parsed::Header {
        source: Some(s2),
        destination: Some(d2),
        consumed,
    }) = parse(&h)
    else {
        panic!("the header written for {s} -> {d} does not parse: {h:?}");
    };
    assert_eq!(consumed, h.len());
    assert_eq!((s2.port(), d2.port()), (s.port(), d.port()));
    assert_eq!(s2.ip().to_canonical(), s.ip().to_canonical());
    assert_eq!(d2.ip().to_canonical(), d.ip().to_canonical());
    assert_eq!(proxy_v2_header(s2, d2), h);
}

/// An address from 18 bytes: IPv4 (the first 4) or IPv6 (the first 16, IPv4-mapped when `mapped`),
/// then the port.
fn address(b: &[u8], v4: bool, mapped: bool) -> SocketAddr {
    let port = u16::from_be_bytes([b[16], b[17]]);
    let ip4 = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let ip: IpAddr = match (v4, mapped) {
        (true, false) => ip4.into(),
        (true, true) => ip4.to_ipv6_mapped().into(),
        (false, _) => Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).unwrap()).into(),
    };
    SocketAddr::new(ip, port)
}

fuzz_target!(|data: &[u8]| {
    // Inputs whose first byte is odd get the signature in front, so that most of the time goes
    // past the first check.
    let owned;
    let buf = match data.split_first() {
        Some((b, rest)) if b & 1 == 1 => {
            owned = [&SIGNATURE[..], rest].concat();
            &owned[..]
        }
        _ => data,
    };
    let r = parse(buf);
    let end = match &r {
        Ok(Parsed::Header {
            source,
            destination,
            consumed,
        }) => {
            assert!(16 <= *consumed && *consumed <= buf.len() && *consumed <= MAX_HEADER);
            assert_eq!(source.is_some(), destination.is_some());
            if let (Some(s), Some(d)) = (source, destination) {
                round_trip(*s, *d);
            }
            assert_eq!(parse(&buf[..*consumed]), r);
            *consumed
        }
        Ok(Parsed::Incomplete) => {
            assert!(buf.len() < MAX_HEADER);
            buf.len()
        }
        Err(_) => buf.len().min(MAX_HEADER),
    };
    for n in 0..end {
        match parse(&buf[..n]) {
            Ok(Parsed::Incomplete) => {}
            Err(e) => assert_eq!(Err(e), r, "after {n} bytes"),
            Ok(h) => panic!(
                "{n} bytes are a whole header {h:?}, all {} give {r:?}",
                buf.len()
            ),
        }
    }
    // Made-up addresses: a flag byte, then 18 bytes for each end.
    if let Some((&flags, rest)) = data.split_first()
        && rest.len() >= 36
    {
        let s = address(&rest[..18], flags & 2 != 0, flags & 4 != 0);
        let d = address(&rest[18..36], flags & 8 != 0, flags & 16 != 0);
        round_trip(s, d);
    }
});
