//! Byte relays for every process that moves a flow's bytes between two streams (the session,
//! the agent, the simulated API server's port-forward).
//!
//! A flow starts on the caller's runtime. Once it moves bulk data (a window of
//! [`priority::BULK_WINDOW`] carrying at least [`priority::BULK_BYTES`]), it continues on a
//! process-wide *bulk* runtime whose threads run at a lower scheduling priority (nice
//! [`priority::BULK_NICE`]); when it has been quiet for a while it comes back. On a machine whose
//! cores are busy, a keep-alive request then waits for the CPU behind other requests only, not
//! behind a download's copies and TLS records: the scheduler preempts the bulk threads when an
//! interactive thread wakes up. Without contention nothing changes: the bulk threads get every
//! idle cycle.
//!
//! Invariant: a relay never loses bytes when it changes runtime: the buffers and both streams
//! move together (one [`copy::Relay`] value), and a move happens only between two polls.

pub mod copy;
pub mod follow;
pub mod priority;

pub use follow::Following;
pub use priority::{relay, relay_and_return};
