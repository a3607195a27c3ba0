//! `struct sockaddr` bytes read from and written to the program's memory.

use std::net::{IpAddr, SocketAddr};

/// The address in `bytes` (as the program passed it), if it is an IPv4 or IPv6 one.
pub fn parse(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?) as i32;
    let port = u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        _ => None,
    }
}

/// `addr` as a sockaddr of the socket's `domain` (an IPv4 address becomes v4-mapped for an
/// IPv6 socket).
pub fn encode(addr: SocketAddr, domain: i32) -> Vec<u8> {
    let ip = match (addr.ip(), domain) {
        (IpAddr::V4(v4), libc::AF_INET6) => IpAddr::V6(v4.to_ipv6_mapped()),
        (IpAddr::V6(v6), libc::AF_INET) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        (ip, _) => ip,
    };
    match ip {
        IpAddr::V4(v4) => {
            let mut b = vec![0u8; std::mem::size_of::<libc::sockaddr_in>()];
            b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&addr.port().to_be_bytes());
            b[4..8].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => {
            let mut b = vec![0u8; std::mem::size_of::<libc::sockaddr_in6>()];
            b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&addr.port().to_be_bytes());
            b[8..24].copy_from_slice(&v6.octets());
            b
        }
    }
}

/// The same endpoint, whatever the family it is written in.
pub fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    a.port() == b.port() && canon(a.ip()) == canon(b.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_maps_families() {
        let v4: SocketAddr = "10.96.0.50:8080".parse().unwrap();
        assert_eq!(parse(&encode(v4, libc::AF_INET)), Some(v4));
        let mapped = parse(&encode(v4, libc::AF_INET6)).unwrap();
        assert!(mapped.is_ipv6());
        assert!(same(mapped, v4));
        let v6: SocketAddr = "[fd00::1]:53".parse().unwrap();
        assert_eq!(parse(&encode(v6, libc::AF_INET6)), Some(v6));
        assert_eq!(parse(&[1, 0, 0, 0]), None);
        assert_eq!(parse(&[2]), None);
    }
}
