//! Conversions between C socket addresses and `SocketAddr`.

use libc::{c_int, sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Reads an AF_INET/AF_INET6 address; `None` for other families or short buffers.
///
/// # Safety
/// `addr` must point to `len` readable bytes (or be null).
pub unsafe fn read(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    match (*addr).sa_family as c_int {
        libc::AF_INET if len as usize >= std::mem::size_of::<sockaddr_in>() => {
            let a = &*(addr as *const sockaddr_in);
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<sockaddr_in6>() => {
            let a = &*(addr as *const sockaddr_in6);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A C address for `addr`, in the family a socket of `domain` expects (IPv4 addresses become
/// v4-mapped IPv6 addresses for AF_INET6 sockets).
pub fn to_c(addr: SocketAddr, domain: c_int) -> (sockaddr_storage, socklen_t) {
    let addr = match (addr, domain) {
        (SocketAddr::V4(v4), libc::AF_INET6) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        (SocketAddr::V6(v6), libc::AF_INET) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        _ => addr,
    };
    // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
    let mut storage: sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            std::mem::size_of::<sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<sockaddr_in6>()
        }
    };
    (storage, len as socklen_t)
}

/// Whether a socket of `domain` can show `addr`: an IPv4 socket cannot show a (non-mapped) IPv6
/// peer, which then stays hidden rather than garbled.
pub fn representable(addr: SocketAddr, domain: c_int) -> bool {
    match (addr, domain) {
        (SocketAddr::V6(v6), libc::AF_INET) => v6.ip().to_ipv4_mapped().is_some(),
        _ => true,
    }
}

/// Writes `addr` to a caller's `(addr, len)` pair with the kernel's truncation rule: copy at most
/// `*len` bytes, then set `*len` to the full size.
///
/// # Safety
/// `out` must point to `*len` writable bytes and `len` must be valid, or either may be null.
pub unsafe fn write_out(addr: SocketAddr, domain: c_int, out: *mut sockaddr, len: *mut socklen_t) {
    if out.is_null() || len.is_null() {
        return;
    }
    let (storage, full) = to_c(addr, domain);
    let n = (*len).min(full) as usize;
    std::ptr::copy_nonoverlapping(&storage as *const _ as *const u8, out as *mut u8, n);
    *len = full;
}

/// The address family of an open socket (`SO_DOMAIN`), or `None` if `fd` is not a socket.
pub fn socket_domain(fd: c_int) -> Option<c_int> {
    sockopt_int(fd, libc::SO_DOMAIN)
}

/// The type of an open socket (`SO_TYPE`: SOCK_STREAM, SOCK_DGRAM, ...).
pub fn socket_type(fd: c_int) -> Option<c_int> {
    sockopt_int(fd, libc::SO_TYPE)
}

fn sockopt_int(fd: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: valid out pointers of the right size.
    let r = unsafe {
        crate::detour::real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            &mut v as *mut _ as *mut _,
            &mut len,
        )
    };
    (r == 0).then_some(v)
}
