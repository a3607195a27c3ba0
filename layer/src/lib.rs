//! mirrord-layer: loaded into the developer's program with `LD_PRELOAD`.
//!
//! The layer exports the libc functions it replaces (`connect`, `getaddrinfo`, ...); the dynamic
//! linker binds the program's calls to them because a preloaded object comes first in the lookup
//! order. Each replacement decides whether the call concerns the cluster; if not, it calls the
//! original (found with `dlsym(RTLD_NEXT, ..)`) with the same arguments, so calls the layer does
//! not handle behave exactly as without it.
//!
//! Invariants:
//! - A thread-local guard ([`detour::Guard`]) makes every hook call straight through to libc while
//!   the layer itself is running on that thread, so the layer never recurses into itself.
//! - No lock is held across a blocking wait: a control request waits for its answer with no lock
//!   held, so requests of different threads run concurrently.
//! - Nothing unwinds out of a hook, and errno is kept unless the call fails ([`detour::hook`]).
//! - Lock order: control channel slot → socket table → socket entries → pending connects →
//!   watcher → settled counter → name map → addrinfo set. `fork` takes every one of them in this
//!   order, so a child never inherits a held lock; no diagnostic is written under any of them.
//! - The layer runs two threads of its own per process, started on first use (again in a fork
//!   child): the control channel's reader and the connect watcher (`pending`). Both block every
//!   signal, so the program's signals reach the program's threads.
//! - Without `MIRRORD_PROXY_ADDR` in the environment the layer is inert.

mod caddr;
mod control;
mod debugger;
mod detour;
mod dns;
mod hooks;
mod incoming;
mod marked;
mod outgoing;
mod pending;
mod sockets;
mod state;
mod udp;

pub use hooks::*;
