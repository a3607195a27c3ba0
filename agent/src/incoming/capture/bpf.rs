//! The classic BPF program of the capture socket: only TCP segments from or to a captured port,
//! built in code for the current port set (re-attached when it changes).
//!
//! The socket is `SOCK_DGRAM`, so the program sees the packet from its IP header on; the IP
//! version comes from the kernel's `skb->protocol` (an ancillary load). Dropped before the port
//! check: packets carrying the agent's own fwmark (the relay's connections to the target, which
//! would duplicate what the client sent), and loopback's outgoing copy of each packet (every
//! packet on `lo` is seen leaving and arriving; the arriving one is kept).

use socket2::SockFilter;

/// Most ports one program checks; every jump must fit in the 8-bit offsets of classic BPF.
pub const MAX_PORTS: usize = 100;

const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_IMM: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;

/// Ancillary loads (`SKF_AD_OFF + ...`, linux/filter.h).
const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_PROTOCOL: i32 = 0;
const SKF_AD_PKTTYPE: i32 = 4;
const SKF_AD_IFINDEX: i32 = 8;
const SKF_AD_MARK: i32 = 20;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;
const IPPROTO_TCP: u32 = 6;
const PACKET_OUTGOING: u32 = 4;
/// Bytes of a packet the socket gets: all of it (a GSO packet may be up to 64 KiB).
const ACCEPT_ALL: u32 = 0x0004_0000;

/// An instruction without jumps: (code, k).
type Stmt = (u16, u32);

fn stmt(code: u16, k: u32) -> Stmt {
    (code, k)
}

fn ancillary(what: i32) -> Stmt {
    stmt(BPF_LD | BPF_W | BPF_ABS, (SKF_AD_OFF + what) as u32)
}

/// A jump to a label, resolved by [`Program::finish`].
enum Insn {
    Plain(Stmt),
    /// `if A == k` (or `A & k` for `set`) goto `yes` else `no`; `None`: the next instruction.
    Jump {
        set: bool,
        k: u32,
        yes: Option<Label>,
        no: Option<Label>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Accept,
    Drop,
    V4,
    V6,
    Ports,
}

struct Program {
    insns: Vec<Insn>,
    labels: Vec<(Label, usize)>,
}

impl Program {
    fn plain(&mut self, f: Stmt) {
        self.insns.push(Insn::Plain(f));
    }
    fn jump(&mut self, set: bool, k: u32, yes: Option<Label>, no: Option<Label>) {
        self.insns.push(Insn::Jump { set, k, yes, no });
    }
    fn label(&mut self, l: Label) {
        self.labels.push((l, self.insns.len()));
    }

    fn finish(self) -> Option<Vec<SockFilter>> {
        let at = |l: Label| self.labels.iter().find(|(x, _)| *x == l).map(|(_, i)| *i);
        let mut out = Vec::with_capacity(self.insns.len());
        for (i, insn) in self.insns.iter().enumerate() {
            match insn {
                Insn::Plain((code, k)) => out.push(SockFilter::new(*code, 0, 0, *k)),
                Insn::Jump { set, k, yes, no } => {
                    let off = |l: &Option<Label>| -> Option<u8> {
                        match l {
                            None => Some(0),
                            Some(l) => u8::try_from(at(*l)?.checked_sub(i + 1)?).ok(),
                        }
                    };
                    let code = BPF_JMP | if *set { BPF_JSET } else { BPF_JEQ } | BPF_K;
                    out.push(SockFilter::new(code, off(yes)?, off(no)?, *k));
                }
            }
        }
        Some(out)
    }
}

/// The program for `ports` (`None` when there are more than [`MAX_PORTS`]); `lo_index` is the
/// loopback interface's index in the target's namespace. No ports: it drops everything.
pub fn program(ports: &[u16], lo_index: u32, agent_mark: u32) -> Option<Vec<SockFilter>> {
    if ports.len() > MAX_PORTS {
        return None;
    }
    if ports.is_empty() {
        return Some(vec![SockFilter::new(BPF_RET | BPF_K, 0, 0, 0)]);
    }
    let mut p = Program {
        insns: Vec::new(),
        labels: Vec::new(),
    };
    use Label::*;
    p.plain(ancillary(SKF_AD_MARK));
    p.jump(false, agent_mark, Some(Drop), None);
    p.plain(ancillary(SKF_AD_PKTTYPE));
    p.jump(false, PACKET_OUTGOING, None, Some(V4));
    p.plain(ancillary(SKF_AD_IFINDEX));
    p.jump(false, lo_index, Some(Drop), None);
    p.label(V4);
    p.plain(ancillary(SKF_AD_PROTOCOL));
    p.jump(false, ETH_P_IP, None, Some(V6));
    // IPv4: TCP, first fragment only (later ones carry no TCP header), X = header length.
    p.plain(stmt(BPF_LD | BPF_B | BPF_ABS, 9));
    p.jump(false, IPPROTO_TCP, None, Some(Drop));
    p.plain(stmt(BPF_LD | BPF_H | BPF_ABS, 6));
    p.jump(true, 0x1fff, Some(Drop), None);
    p.plain(stmt(BPF_LDX | BPF_B | BPF_MSH, 0));
    p.jump(true, 0, Some(Drop), Some(Ports)); // always to the ports (0 & A is never set)
    p.label(V6);
    p.jump(false, ETH_P_IPV6, None, Some(Drop));
    // IPv6: TCP right after the fixed header (no extension headers), X = 40.
    p.plain(stmt(BPF_LD | BPF_B | BPF_ABS, 6));
    p.jump(false, IPPROTO_TCP, None, Some(Drop));
    p.plain(stmt(BPF_LDX | BPF_IMM, 40));
    p.label(Ports);
    // Source port, then destination port.
    for field in [0, 2] {
        p.plain(stmt(BPF_LD | BPF_H | BPF_IND, field));
        for &port in ports {
            p.jump(false, u32::from(port), Some(Accept), None);
        }
    }
    p.label(Drop);
    p.plain(stmt(BPF_RET | BPF_K, 0));
    p.label(Accept);
    p.plain(stmt(BPF_RET | BPF_K, ACCEPT_ALL));
    p.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ports_drops_everything() {
        assert_eq!(program(&[], 1, 7).map(|p| p.len()), Some(1));
    }

    #[test]
    fn the_largest_port_set_still_fits_the_jump_offsets() {
        let ports: Vec<u16> = (1..=MAX_PORTS as u16).collect();
        assert!(program(&ports, 1, 7).is_some());
        let too_many: Vec<u16> = (1..=MAX_PORTS as u16 + 1).collect();
        assert!(program(&too_many, 1, 7).is_none());
    }
}
