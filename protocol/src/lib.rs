//! mirrord-protocol: every message that crosses a process boundary.
//!
//! Three links use it:
//! - layer → server, control channel (one per process, on the session's unix socket);
//! - layer → server, one data connection per outgoing TCP flow (loopback TCP);
//! - server → agent, a control channel plus one connection per TCP/UDP flow.
//!
//! Every connection starts with a hello frame that carries [`PROTOCOL_VERSION`] and the session
//! token. After the hello (and, for TCP flows, the connect reply) a flow connection carries the
//! application's bytes unframed, so the data path costs no per-chunk encoding.
//!
//! This crate holds no I/O policy: only types, the codec and the version rule.

pub mod agent;
pub mod api;
pub mod codec;
pub mod config;
pub mod layer;
pub mod net;

pub use codec::{CodecError, MAX_FRAME_LEN};

/// Version of the wire protocol. Peers with different versions refuse each other in the hello.
pub const PROTOCOL_VERSION: u32 = 4;

/// Whether a peer speaking `theirs` can talk to us.
pub fn version_compatible(theirs: u32) -> bool {
    theirs == PROTOCOL_VERSION
}

/// Compares a presented token with the expected one in constant time, so a token cannot be
/// guessed byte by byte from how long a refusal takes.
pub fn token_eq(presented: &str, expected: &str) -> bool {
    presented.len() == expected.len()
        && presented
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        assert!(super::token_eq("abcdef", "abcdef"));
        assert!(!super::token_eq("abcdef", "abcdeg"));
        assert!(!super::token_eq("abc", "abcdef"));
    }
}
