//! Message IDs in Mailpit's shape: 22 base62 characters.
//!
//! The first 8 are the time in milliseconds, the other 14 random (about
//! 83 bits): IDs made later sort later, so each new ID lands at the right
//! edge of the `uid` index instead of on a random page — a commit of 50
//! messages dirties one or two index pages, not 50.

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of an ID.
pub const ID_LEN: usize = 22;

/// Leading characters that hold the time.
const TIME_CHARS: usize = 8;

/// A new ID: the time, then randomness.
pub fn new_id() -> String {
    let mut id = String::with_capacity(ID_LEN);
    let mut t = crate::time::now_ms().max(0) as u64;
    let mut digits = [0u8; TIME_CHARS];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(t % 62) as usize];
        t /= 62;
    }
    id.extend(digits.iter().map(|&b| b as char));
    id.push_str(&random_chars(ID_LEN - TIME_CHARS));
    id
}

/// `n` random base62 characters.
fn random_chars(n: usize) -> String {
    let mut bytes = vec![0u8; n];
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

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_valid_unique_and_sort_by_time() {
        let a = super::new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new_id();
        assert_eq!((a.len(), b.len()), (super::ID_LEN, super::ID_LEN));
        assert!(super::is_valid(&a) && super::is_valid(&b));
        assert!(a < b, "{a} then {b}");
        assert_ne!(a[8..], b[8..]);
    }
}
