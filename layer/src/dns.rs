//! Name lookups in the cluster: `getaddrinfo`, `gethostbyname(_r)`.
//!
//! A name is resolved by the agent with the pod's resolver configuration; the answer is turned
//! into the same structures glibc builds, allocated by the layer and freed by the layer's
//! `freeaddrinfo` (which tells its own lists from glibc's by their head pointer).

use crate::control;
use crate::detour::{layer_debug, real};
use crate::state::LayerState;
use libc::{addrinfo, c_char, c_int, hostent};
use mirrord_protocol::config::Route;
use mirrord_protocol::layer::{LayerRequest, ServerResponse};
use mirrord_protocol::net::{Family, ResolveError, Resolved};
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

/// Address → the name the program looked up to get it; lets hostname rules of the outgoing
/// filter apply to the connection that follows a lookup.
static NAMES: Mutex<Option<NameMap>> = Mutex::new(None);
type NameMap = HashMap<IpAddr, String>;
const MAX_NAMES: usize = 4096;

/// Heads of the addrinfo lists the layer allocated.
static OURS: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

/// What the fork hook holds across `fork`.
pub type ForkLocks = (
    std::sync::MutexGuard<'static, Option<NameMap>>,
    std::sync::MutexGuard<'static, Option<HashSet<usize>>>,
);

pub fn hostname_of(ip: IpAddr) -> Option<String> {
    let ip = mirrord_protocol::config::canonical_ip(ip);
    NAMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()?
        .get(&ip)
        .cloned()
}

fn remember(name: &str, addrs: &[IpAddr]) {
    let mut guard = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() + addrs.len() > MAX_NAMES {
        map.clear();
    }
    for a in addrs {
        map.insert(*a, name.to_owned());
    }
}

/// Locks used by the fork hook so no other thread holds them at the moment of the fork.
pub fn fork_locks() -> ForkLocks {
    (
        NAMES.lock().unwrap_or_else(|p| p.into_inner()),
        OURS.lock().unwrap_or_else(|p| p.into_inner()),
    )
}

/// Whether `name` is looked up in the cluster.
pub fn route_lookup(st: &LayerState, name: &str, port: u16) -> Route {
    let net = &st.config.feature.network;
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    if !net.dns.enabled
        || lower.is_empty()
        || lower.parse::<IpAddr>().is_ok()
        || lower == "localhost"
        || lower.ends_with(".localhost")
    {
        return Route::Local;
    }
    if let Some(f) = &net.dns.filter {
        if f.route(&lower, port) == Route::Local {
            return Route::Local;
        }
    }
    if let Some(f) = &net.outgoing.filter {
        if f.route_name(&lower) == Some(Route::Local) {
            return Route::Local;
        }
    }
    Route::Remote
}

/// Asks the cluster. Errors are already mapped to what the program should see.
pub fn resolve(name: &str, family: Family) -> Result<Resolved, ResolveError> {
    let req = LayerRequest::Resolve {
        name: name.to_owned(),
        family,
    };
    let result = match control::request(&req) {
        Ok(ServerResponse::Resolved(r)) => r,
        Ok(other) => Err(ResolveError::Failed(format!("unexpected answer {other:?}"))),
        Err(e) => Err(ResolveError::Temporary(e.to_string())),
    };
    layer_debug!("resolve {name} ({family:?}): {result:?}");
    if let Ok(r) = &result {
        remember(name, &r.addresses);
    }
    result
}

fn eai(e: &ResolveError) -> c_int {
    match e {
        ResolveError::NotFound => libc::EAI_NONAME,
        ResolveError::NoData => libc::EAI_NODATA,
        ResolveError::Temporary(_) => libc::EAI_AGAIN,
        ResolveError::Failed(_) => libc::EAI_FAIL,
    }
}

/// One entry glibc makes per address: (socktype, protocol, port).
type Template = (c_int, c_int, u16);

/// What glibc makes of `service` and the hints for any one address: the (socktype, protocol,
/// port) of each entry it would return, in its order, or its `EAI_*` error.
///
/// glibc itself is asked, with a numeric placeholder host (no lookup happens), so that the
/// services database, the socktype/protocol table (`SOCK_STREAM` only for `IPPROTO_TCP`, no UDP
/// entry for a TCP-only service, `EAI_SOCKTYPE` for impossible pairs, ...) and flag checks are
/// exactly those the program sees without the layer.
unsafe fn service_templates(
    service: *const c_char,
    flags: c_int,
    socktype: c_int,
    protocol: c_int,
) -> Result<Vec<Template>, c_int> {
    let mut hints: addrinfo = std::mem::zeroed();
    hints.ai_family = libc::AF_INET;
    hints.ai_socktype = socktype;
    hints.ai_protocol = protocol;
    // AI_ADDRCONFIG would look at this machine's interfaces, which say nothing about the pod.
    hints.ai_flags = (flags & !libc::AI_ADDRCONFIG) | libc::AI_NUMERICHOST;
    let mut res: *mut addrinfo = std::ptr::null_mut();
    let r = real::getaddrinfo(c"0.0.0.0".as_ptr(), service, &hints, &mut res);
    if r != 0 {
        return Err(r);
    }
    let mut templates = Vec::new();
    let mut node = res;
    while !node.is_null() {
        let n = &*node;
        let port = crate::caddr::read(n.ai_addr, n.ai_addrlen).map_or(0, |a| a.port());
        templates.push((n.ai_socktype, n.ai_protocol, port));
        node = n.ai_next;
    }
    if !res.is_null() {
        real::freeaddrinfo(res);
    }
    Ok(templates)
}

pub enum GaiOutcome {
    Bypass,
    Return(c_int),
}

/// # Safety
/// Arguments as for `getaddrinfo(3)`.
pub unsafe fn getaddrinfo(
    st: &LayerState,
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> GaiOutcome {
    if node.is_null() || res.is_null() {
        return GaiOutcome::Bypass;
    }
    let (flags, family, socktype, protocol) = if hints.is_null() {
        (
            libc::AI_V4MAPPED | libc::AI_ADDRCONFIG,
            libc::AF_UNSPEC,
            0,
            0,
        )
    } else {
        let h = &*hints;
        (h.ai_flags, h.ai_family, h.ai_socktype, h.ai_protocol)
    };
    if flags & libc::AI_NUMERICHOST != 0 {
        return GaiOutcome::Bypass;
    }
    let Ok(name) = CStr::from_ptr(node).to_str() else {
        return GaiOutcome::Bypass;
    };
    let wanted = match family {
        libc::AF_INET => Family::V4,
        libc::AF_INET6 => Family::V6,
        libc::AF_UNSPEC => Family::Any,
        _ => return GaiOutcome::Bypass, // libc's EAI_FAMILY, or a family the cluster lacks
    };
    // glibc checks the service and the socket type before it looks the name up, and so do we.
    let templates = match service_templates(service, flags, socktype, protocol) {
        Ok(t) => t,
        Err(e) => return GaiOutcome::Return(e),
    };
    let port = templates.first().map_or(0, |t| t.2);
    if route_lookup(st, name, port) == Route::Local {
        return GaiOutcome::Bypass;
    }
    let mut resolved = resolve(name, wanted);
    if family == libc::AF_INET6 && flags & libc::AI_V4MAPPED != 0 && resolved.is_err() {
        resolved = resolve(name, Family::V4);
    }
    let resolved = match resolved {
        Ok(r) => r,
        Err(e) => return GaiOutcome::Return(eai(&e)),
    };
    let mut entries = Vec::new();
    for ip in &resolved.addresses {
        for &(st_type, proto, port) in &templates {
            let addr = match (*ip, family) {
                (IpAddr::V4(v4), libc::AF_INET6) => {
                    SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), port)
                }
                _ => SocketAddr::new(*ip, port),
            };
            entries.push((addr, st_type, proto));
        }
    }
    let canon = (flags & libc::AI_CANONNAME != 0).then_some(resolved.canonical_name.as_str());
    match build_addrinfo(&entries, canon) {
        Some(head) => {
            *res = head;
            GaiOutcome::Return(0)
        }
        None => GaiOutcome::Return(libc::EAI_MEMORY),
    }
}

unsafe fn build_addrinfo(
    entries: &[(SocketAddr, c_int, c_int)],
    canon: Option<&str>,
) -> Option<*mut addrinfo> {
    let mut head: *mut addrinfo = std::ptr::null_mut();
    let mut tail: *mut addrinfo = std::ptr::null_mut();
    for (i, (addr, socktype, proto)) in entries.iter().enumerate() {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let (storage, len) = crate::caddr::to_c(*addr, domain);
        let node = libc::calloc(1, std::mem::size_of::<addrinfo>() + len as usize) as *mut addrinfo;
        if node.is_null() {
            free_ours(head);
            return None;
        }
        let sa = (node as *mut u8).add(std::mem::size_of::<addrinfo>()) as *mut libc::sockaddr;
        std::ptr::copy_nonoverlapping(
            &storage as *const _ as *const u8,
            sa as *mut u8,
            len as usize,
        );
        (*node).ai_family = domain;
        (*node).ai_socktype = *socktype;
        (*node).ai_protocol = *proto;
        (*node).ai_addrlen = len;
        (*node).ai_addr = sa;
        if i == 0 {
            if let Some(c) = canon {
                let cs = std::ffi::CString::new(c).unwrap_or_default();
                (*node).ai_canonname = libc::strdup(cs.as_ptr());
            }
        }
        if head.is_null() {
            head = node;
        } else {
            (*tail).ai_next = node;
        }
        tail = node;
    }
    if head.is_null() {
        return None;
    }
    OURS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(head as usize);
    Some(head)
}

unsafe fn free_ours(mut node: *mut addrinfo) {
    while !node.is_null() {
        let next = (*node).ai_next;
        if !(*node).ai_canonname.is_null() {
            libc::free((*node).ai_canonname.cast());
        }
        libc::free(node.cast());
        node = next;
    }
}

/// Frees `res` if the layer made it; returns false for lists glibc made.
///
/// # Safety
/// `res` as for `freeaddrinfo(3)`.
pub unsafe fn freeaddrinfo(res: *mut addrinfo) -> bool {
    let ours = OURS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .is_some_and(|s| s.remove(&(res as usize)));
    if ours {
        free_ours(res);
    }
    ours
}

extern "C" {
    fn __h_errno_location() -> *mut c_int;
}

const HOST_NOT_FOUND: c_int = 1;
const TRY_AGAIN: c_int = 2;
const NO_RECOVERY: c_int = 3;
const NO_DATA: c_int = 4;

fn h_errno_of(e: &ResolveError) -> c_int {
    match e {
        ResolveError::NotFound => HOST_NOT_FOUND,
        ResolveError::NoData => NO_DATA,
        ResolveError::Temporary(_) => TRY_AGAIN,
        ResolveError::Failed(_) => NO_RECOVERY,
    }
}

/// A `hostent`'s contents: the official name, the family, the raw addresses.
type Host = (String, c_int, Vec<Vec<u8>>);

/// Answers of the family `af` for the `gethostbyname` family, or `None` to bypass.
fn lookup_host(
    st: &LayerState,
    name: *const c_char,
    af: c_int,
) -> Option<Result<Host, ResolveError>> {
    if name.is_null() {
        return None;
    }
    let family = match af {
        libc::AF_INET => Family::V4,
        libc::AF_INET6 => Family::V6,
        _ => return None,
    };
    // SAFETY: the caller passes a C string.
    let name = unsafe { CStr::from_ptr(name) }.to_str().ok()?;
    if route_lookup(st, name, 0) == Route::Local {
        return None;
    }
    Some(resolve(name, family).map(|r| {
        let addrs = r
            .addresses
            .iter()
            .filter_map(|a| match (a, af) {
                (IpAddr::V4(v4), libc::AF_INET) => Some(v4.octets().to_vec()),
                (IpAddr::V6(v6), libc::AF_INET6) => Some(v6.octets().to_vec()),
                _ => None,
            })
            .collect();
        // Like glibc's h_name: the name that answered, after the search list.
        let official = if r.canonical_name.is_empty() {
            name.to_owned()
        } else {
            r.canonical_name
        };
        (official, af, addrs)
    }))
}

/// Lays out a hostent in `buf`: addresses, then the pointer arrays, then the name.
unsafe fn fill_hostent(ret: *mut hostent, buf: *mut c_char, buflen: usize, host: &Host) -> bool {
    let (name, af, addrs) = host;
    let addr_len = if *af == libc::AF_INET6 { 16 } else { 4 };
    let ptr = std::mem::size_of::<*mut c_char>();
    let base = buf as usize;
    let aligned = (base + ptr - 1) & !(ptr - 1);
    let pad = aligned - base;
    let list_bytes = (addrs.len() + 1) * ptr;
    let alias_bytes = ptr;
    let addr_bytes = addrs.len() * addr_len;
    let need = pad + list_bytes + alias_bytes + addr_bytes + name.len() + 1;
    if need > buflen {
        return false;
    }
    let list = aligned as *mut *mut c_char;
    let aliases = list.add(addrs.len() + 1);
    let addr_area = aliases.add(1) as *mut u8;
    for (i, a) in addrs.iter().enumerate() {
        let slot = addr_area.add(i * addr_len);
        std::ptr::copy_nonoverlapping(a.as_ptr(), slot, addr_len);
        *list.add(i) = slot as *mut c_char;
    }
    *list.add(addrs.len()) = std::ptr::null_mut();
    *aliases = std::ptr::null_mut();
    let name_area = addr_area.add(addr_bytes);
    std::ptr::copy_nonoverlapping(name.as_ptr(), name_area, name.len());
    *name_area.add(name.len()) = 0;
    (*ret).h_name = name_area as *mut c_char;
    (*ret).h_aliases = aliases;
    (*ret).h_addrtype = *af;
    (*ret).h_length = addr_len as c_int;
    (*ret).h_addr_list = list;
    true
}

/// # Safety
/// Arguments as for `gethostbyname2_r(3)` (`gethostbyname_r` is `af` = AF_INET).
#[allow(clippy::too_many_arguments)]
pub unsafe fn gethostbyname2_r(
    st: &LayerState,
    name: *const c_char,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: usize,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> Option<c_int> {
    let answer = lookup_host(st, name, af)?;
    Some(into_caller_hostent(
        answer, ret, buf, buflen, result, h_errnop,
    ))
}

/// The `_r` functions' contract: the caller's buffer, `*result`, and `*h_errnop` (plus the
/// global `h_errno`, which glibc sets too and CPython reads).
unsafe fn into_caller_hostent(
    answer: Result<Host, ResolveError>,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: usize,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> c_int {
    if !result.is_null() {
        *result = std::ptr::null_mut();
    }
    match answer {
        Ok(host) => {
            if ret.is_null() || buf.is_null() || !fill_hostent(ret, buf, buflen, &host) {
                return libc::ERANGE;
            }
            if !result.is_null() {
                *result = ret;
            }
            0
        }
        Err(e) => {
            *__h_errno_location() = h_errno_of(&e);
            if !h_errnop.is_null() {
                *h_errnop = h_errno_of(&e);
            }
            0
        }
    }
}

/// The non-`_r` functions' contract: a pointer to static storage, or null with `h_errno` set.
unsafe fn into_static_hostent(answer: Result<Host, ResolveError>) -> *mut hostent {
    match answer {
        Ok(host) => HOSTENT
            .try_with(|cell| {
                let mut cell = cell.borrow_mut();
                let (ent, buf) = &mut *cell;
                if fill_hostent(ent, buf.as_mut_ptr(), buf.len(), &host) {
                    ent as *mut hostent
                } else {
                    *__h_errno_location() = NO_RECOVERY;
                    std::ptr::null_mut()
                }
            })
            .unwrap_or(std::ptr::null_mut()),
        Err(e) => {
            *__h_errno_location() = h_errno_of(&e);
            std::ptr::null_mut()
        }
    }
}

thread_local! {
    /// Storage behind `gethostbyname`'s result, valid until the thread's next call (glibc's is
    /// process-wide; per-thread is strictly safer).
    static HOSTENT: std::cell::RefCell<(hostent, Vec<c_char>)> =
        // SAFETY: hostent is plain data; all-zero is a valid empty value.
        std::cell::RefCell::new((unsafe { std::mem::zeroed() }, vec![0; 4096]));
}

/// # Safety
/// Arguments as for `gethostbyname2(3)` (`gethostbyname` is `af` = AF_INET).
pub unsafe fn gethostbyname2(
    st: &LayerState,
    name: *const c_char,
    af: c_int,
) -> Option<*mut hostent> {
    let answer = lookup_host(st, name, af)?;
    Some(into_static_hostent(answer))
}

/// Whether reverse lookups of `ip` go to the cluster: the addresses connections would go to.
fn route_reverse(st: &LayerState, ip: IpAddr) -> bool {
    let ip = mirrord_protocol::config::canonical_ip(ip);
    st.config.feature.network.dns.enabled
        && !ip.is_loopback()
        && !ip.is_unspecified()
        && crate::outgoing::route_tcp(st, std::net::SocketAddr::new(ip, 0), None) == Route::Remote
}

fn reverse(ip: IpAddr) -> Result<String, ResolveError> {
    let ip = mirrord_protocol::config::canonical_ip(ip);
    let result = match control::request(&LayerRequest::ReverseResolve { ip }) {
        Ok(ServerResponse::ReverseResolved(r)) => r,
        Ok(other) => Err(ResolveError::Failed(format!("unexpected answer {other:?}"))),
        Err(e) => Err(ResolveError::Temporary(e.to_string())),
    };
    layer_debug!("reverse {ip}: {result:?}");
    result
}

/// Copies `text` into a caller's C buffer with its NUL; false if it does not fit.
unsafe fn copy_c(text: &str, out: *mut c_char, len: usize) -> bool {
    if text.len() + 1 > len {
        return false;
    }
    std::ptr::copy_nonoverlapping(text.as_ptr(), out as *mut u8, text.len());
    *out.add(text.len()) = 0;
    true
}

/// # Safety
/// Arguments as for `getnameinfo(3)`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn getnameinfo(
    st: &LayerState,
    sa: *const libc::sockaddr,
    salen: libc::socklen_t,
    host: *mut c_char,
    hostlen: libc::socklen_t,
    serv: *mut c_char,
    servlen: libc::socklen_t,
    flags: c_int,
) -> Option<c_int> {
    if host.is_null() || hostlen == 0 || flags & libc::NI_NUMERICHOST != 0 {
        return None;
    }
    let addr = crate::caddr::read(sa, salen)?;
    if !route_reverse(st, addr.ip()) {
        return None;
    }
    // NI_NOFQDN shortens only names in the local host's own domain, which a cluster service's
    // name is not: like glibc, the full name it is.
    let name = match reverse(addr.ip()) {
        Ok(name) => name,
        Err(ResolveError::NotFound | ResolveError::NoData) if flags & libc::NI_NAMEREQD != 0 => {
            return Some(libc::EAI_NONAME)
        }
        Err(ResolveError::NotFound | ResolveError::NoData) => addr.ip().to_string(),
        Err(e) => return Some(eai(&e)),
    };
    if !copy_c(&name, host, hostlen as usize) {
        return Some(libc::EAI_OVERFLOW);
    }
    if !serv.is_null() && servlen > 0 {
        // The service part is local knowledge (/etc/services): libc does it.
        let r = crate::detour::real::getnameinfo(
            sa,
            salen,
            std::ptr::null_mut(),
            0,
            serv,
            servlen,
            flags | libc::NI_NUMERICHOST,
        );
        if r != 0 {
            return Some(r);
        }
    }
    Some(0)
}

/// The `hostent` of a reverse lookup, or `None` to bypass.
unsafe fn reverse_host(
    st: &LayerState,
    addr: *const libc::c_void,
    len: libc::socklen_t,
    af: c_int,
) -> Option<Result<Host, ResolveError>> {
    if addr.is_null() {
        return None;
    }
    let (ip, bytes): (IpAddr, Vec<u8>) = match (af, len) {
        (libc::AF_INET, 4) => {
            let mut b = [0u8; 4];
            std::ptr::copy_nonoverlapping(addr as *const u8, b.as_mut_ptr(), 4);
            (IpAddr::from(b), b.to_vec())
        }
        (libc::AF_INET6, 16) => {
            let mut b = [0u8; 16];
            std::ptr::copy_nonoverlapping(addr as *const u8, b.as_mut_ptr(), 16);
            (IpAddr::from(b), b.to_vec())
        }
        _ => return None,
    };
    if !route_reverse(st, ip) {
        return None;
    }
    Some(reverse(ip).map(|name| (name, af, vec![bytes])))
}

/// # Safety
/// Arguments as for `gethostbyaddr_r(3)`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gethostbyaddr_r(
    st: &LayerState,
    addr: *const libc::c_void,
    len: libc::socklen_t,
    af: c_int,
    ret: *mut hostent,
    buf: *mut c_char,
    buflen: usize,
    result: *mut *mut hostent,
    h_errnop: *mut c_int,
) -> Option<c_int> {
    let answer = reverse_host(st, addr, len, af)?;
    Some(into_caller_hostent(
        answer, ret, buf, buflen, result, h_errnop,
    ))
}

/// # Safety
/// Arguments as for `gethostbyaddr(3)`.
pub unsafe fn gethostbyaddr(
    st: &LayerState,
    addr: *const libc::c_void,
    len: libc::socklen_t,
    af: c_int,
) -> Option<*mut hostent> {
    let answer = reverse_host(st, addr, len, af)?;
    Some(into_static_hostent(answer))
}
