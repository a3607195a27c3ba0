//! Small helpers: random names and ids, timestamps, `Status` error objects.

use std::io::Read;

use serde_json::{json, Value};

/// `n` random bytes from the kernel.
pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // Invariant: /dev/urandom exists and never runs dry on Linux; without it nothing in the
    // simulated cluster could be named.
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf
}

/// Lowercase hex of `n` random bytes.
pub(crate) fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` characters as Kubernetes uses in generated names (no vowels, no confusable digits).
pub(crate) fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes(n)
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A random UUID (version 4 layout).
pub(crate) fn uid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A container id as containerd makes them (64 hex digits).
pub(crate) fn container_id() -> String {
    random_hex(32)
}

/// Now, as Kubernetes writes times (`2026-01-02T03:04:05Z`).
pub(crate) fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .ok()
        .and_then(|t| k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", t).ok())
        // Invariant: the clock is between 1970 and 9999, which jiff represents.
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// A `Status` failure object.
pub(crate) fn status(code: u16, reason: &str, message: &str, details: Value) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if !details.is_null() {
        s["details"] = details;
    }
    s
}

/// `404 NotFound` for `name` of `qualified` (e.g. `pods`, `jobs.batch`).
pub(crate) fn not_found(qualified: &str, kind_plural: &str, group: &str, name: &str) -> Value {
    status(
        404,
        "NotFound",
        &format!("{qualified} \"{name}\" not found"),
        json!({"name": name, "group": group, "kind": kind_plural}),
    )
}
