//! `mirrord-server`: the long-lived daemon IDE plugins talk to (JSON-RPC over stdio or
//! WebSocket). Not built yet: the session engine it will serve is the library this binary links.

fn main() {
    eprintln!(
        "mirrord-server: the IDE daemon is not implemented yet; use `mirrord exec` (same session engine)"
    );
    std::process::exit(2);
}
