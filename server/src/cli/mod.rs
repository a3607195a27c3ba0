//! The CLI's commands besides `exec` (which is `crate::exec`): `port-forward`, `dump`, and the
//! helpers they share.

pub mod dump;
pub mod port_forward;
pub mod progress;
