//! The capture socket's receive ring (`PACKET_RX_RING`, `TPACKET_V3`), mapped into the agent.
//!
//! Why a ring and not `recv`: the kernel copies each captured packet into a block of memory
//! the agent shares, and wakes the agent only when a block is closed (full, or
//! [`BLOCK_TIMEOUT_MS`] after its first packet). The agent then walks every closed block without
//! a system call. A socket read with `recv` woke the capture thread once per packet and cost one
//! system call per packet: work on the target's machine for every packet of the target's
//! traffic.
//!
//! Ownership of a block passes by its status word: `TP_STATUS_KERNEL` (the kernel fills it) or
//! `TP_STATUS_USER` (closed, the agent reads it). The agent reads the blocks in ring order and
//! hands each back when it has read its last packet.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

/// Size of one block: a whole GSO packet of 64 KiB and its headers fit (a larger one is cut and
/// counted as truncated). A multiple of the page size, as the kernel requires.
pub const BLOCK_SIZE: usize = 256 * 1024;
/// Blocks in the ring (16 MiB in all): what waits while the agent is busy. When every block is
/// the agent's, the kernel drops packets and counts them (`tp_drops`).
const BLOCKS: usize = 64;
/// A block with packets in it is closed this long after it was opened, even if not full: the
/// longest a copy waits in the kernel, and so the agent wakes about once per this period for a
/// trickle of packets. Measured (`in.mirror.nc`, 30 runs each): the pod's own new connections
/// took 1.19x with 1 ms, 1.10x with 4 ms, 1.06x with 16 ms, 1.07x with 32 ms: every wake-up
/// of the copies' chain (agent, program) costs the target more than the copies' bytes. It also
/// sets how long the ring bridges a busy agent under a steady load (about `BLOCKS` times this):
/// with 4 ms blocks copies were lost from ~5,500 requests/s (*Mirror under load*), with 16 ms
/// none up to the ~11,000 the load client reaches.
pub const BLOCK_TIMEOUT_MS: u32 = 16;
/// Nominal frame size the kernel wants for its arithmetic (V3 frames have the length of their
/// packet; this only has to divide the block).
const FRAME_SIZE: usize = 2048;

/// One captured packet, from its IP header on.
pub struct Frame<'a> {
    pub data: &'a [u8],
    /// The packet was longer than what the ring kept of it.
    pub truncated: bool,
}

/// The mapped ring and where the agent is in it. Only the capture thread uses it.
pub struct Ring {
    base: NonNull<u8>,
    /// Index of the block the agent reads next (or is reading).
    block: usize,
    /// Within the block being read: packets left and the offset of the next one. `None`: no
    /// block is held (the next one is looked at on the next call).
    reading: Option<(u32, usize)>,
}

// SAFETY: the ring is plain memory shared with the kernel; the Ring is its only user-space
// reader, used from one thread at a time (moved to the capture thread once).
unsafe impl Send for Ring {}

impl Ring {
    /// Switches `fd` (an `AF_PACKET` socket not bound yet) to `TPACKET_V3`, asks for the ring
    /// and maps it.
    pub fn setup(fd: RawFd) -> io::Result<Ring> {
        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        set_option(fd, libc::PACKET_VERSION, &version)?;
        let req = libc::tpacket_req3 {
            tp_block_size: BLOCK_SIZE as u32,
            tp_block_nr: BLOCKS as u32,
            tp_frame_size: FRAME_SIZE as u32,
            tp_frame_nr: (BLOCK_SIZE / FRAME_SIZE * BLOCKS) as u32,
            tp_retire_blk_tov: BLOCK_TIMEOUT_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        set_option(fd, libc::PACKET_RX_RING, &req)?;
        // SAFETY: a new shared mapping of the socket's ring, of exactly the size the kernel
        // allocated for it; nothing else is mapped at the address the kernel picks. (The
        // kernel's pages are mapped whole at once and never swapped: nothing to lock.)
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                BLOCK_SIZE * BLOCKS,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Ring {
            base: NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned 0"))?,
            block: 0,
            reading: None,
        })
    }

    fn block_desc(&self, block: usize) -> *mut libc::tpacket_block_desc {
        // SAFETY (of the arithmetic): block < BLOCKS, so the offset stays inside the mapping.
        unsafe { self.base.as_ptr().add(block * BLOCK_SIZE).cast() }
    }

    /// The next captured packet, or `None` when the agent has read every closed block (then
    /// every block it read is the kernel's again).
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        loop {
            let desc = self.block_desc(self.block);
            match self.reading {
                Some((0, _)) => {
                    // The block's last packet was read (and its borrow has ended): hand it
                    // back. Release: the reads of it happen before the kernel may refill it.
                    fence(Ordering::Release);
                    // SAFETY: `desc` points at the block's descriptor inside the mapping;
                    // the block is the agent's until this store.
                    unsafe {
                        std::ptr::addr_of_mut!((*desc).hdr.bh1.block_status)
                            .write_volatile(libc::TP_STATUS_KERNEL)
                    };
                    self.reading = None;
                    self.block = (self.block + 1) % BLOCKS;
                }
                Some((left, offset)) => match self.frame_at(offset) {
                    Some(raw) => {
                        self.reading = Some(match raw.next {
                            Some(next) => (left - 1, next),
                            // The kernel said there was no next packet: the block is done.
                            None => (0, 0),
                        });
                        // SAFETY: `frame_at` checked the bytes are inside the current block,
                        // which the kernel does not write while it is the agent's; the slice
                        // borrows `self`, so the block is not handed back while it lives.
                        let data = unsafe { std::slice::from_raw_parts(raw.data, raw.len) };
                        return Some(Frame {
                            data,
                            truncated: raw.truncated,
                        });
                    }
                    // A header the kernel would never write: give the block up rather than
                    // read outside it.
                    None => self.reading = Some((0, 0)),
                },
                None => {
                    // SAFETY: `desc` is inside the mapping; the status word is read with a
                    // volatile load since the kernel writes it.
                    let status =
                        unsafe { std::ptr::addr_of!((*desc).hdr.bh1.block_status).read_volatile() };
                    if status & libc::TP_STATUS_USER == 0 {
                        return None;
                    }
                    // Acquire: the block's contents are read after its status said it is ours.
                    fence(Ordering::Acquire);
                    // SAFETY: the block is the agent's now; its header is not written by the
                    // kernel until the agent hands it back.
                    let (count, first) = unsafe {
                        let h = std::ptr::addr_of!((*desc).hdr.bh1).read_volatile();
                        (h.num_pkts, h.offset_to_first_pkt as usize)
                    };
                    self.reading = Some((count, first));
                }
            }
        }
    }

    /// Where the packet whose `tpacket3_hdr` is at `offset` in the current block is, and the
    /// offset of the packet after it; `None` if any of it would be outside the block. Only
    /// called while the current block is the agent's.
    fn frame_at(&self, offset: usize) -> Option<RawFrame> {
        let hdr_len = std::mem::size_of::<libc::tpacket3_hdr>();
        if offset < std::mem::size_of::<libc::tpacket_block_desc>()
            || offset.checked_add(hdr_len)? > BLOCK_SIZE
        {
            return None;
        }
        let block = self.block_desc(self.block).cast::<u8>();
        // SAFETY: offset + header length is inside the block (checked above), which is the
        // agent's while `reading` is set.
        let h = unsafe {
            block
                .add(offset)
                .cast::<libc::tpacket3_hdr>()
                .read_unaligned()
        };
        // SOCK_DGRAM: the packet starts at its network header.
        let start = offset + usize::from(h.tp_net);
        let len = h.tp_snaplen as usize;
        start.checked_add(len).filter(|&end| end <= BLOCK_SIZE)?;
        Some(RawFrame {
            // SAFETY (of the arithmetic): start + len <= BLOCK_SIZE, inside the block.
            data: unsafe { block.add(start) },
            len,
            truncated: h.tp_len > h.tp_snaplen,
            next: (h.tp_next_offset != 0).then(|| offset + h.tp_next_offset as usize),
        })
    }
}

/// A packet's place in the current block (see `Ring::frame_at`).
struct RawFrame {
    data: *const u8,
    len: usize,
    truncated: bool,
    next: Option<usize>,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `setup`, of that size; no frame borrows it any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), BLOCK_SIZE * BLOCKS) };
    }
}

fn set_option<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live T and the length passed is T's size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
