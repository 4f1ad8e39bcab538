//! Message IDs in Mailpit's shape: 22 random base62 characters.

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of an ID.
pub const ID_LEN: usize = 22;

/// A new random ID (about 131 bits).
pub fn new_id() -> String {
    let mut bytes = [0u8; ID_LEN];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to the clock and a counter, still unique.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = (crate::time::now_ms() as u64) ^ COUNTER.fetch_add(1, Ordering::Relaxed) << 40;
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed.rotate_left(i as u32 * 7) as u8) ^ (i as u8);
        }
    }
    // 256 % 62 leaves a small bias; fine for an ID that only has to be unique.
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % 62] as char)
        .collect()
}

/// Whether `s` could be an ID (or `latest`): 1 to 64 ASCII letters, digits,
/// `-` or `_`. Anything else is a malformed request (400), not a miss (404).
pub fn is_valid(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
