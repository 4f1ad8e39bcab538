//! Numbers written as text without `fmt`: on the per-message and
//! per-connection paths (message ids, log span fields, reply codes),
//! `fmt`'s machinery costs several times the digits themselves.

/// Writes `n` in lower-case hex at `out[at..]`; returns the end.
pub(crate) fn push_hex(out: &mut [u8], at: usize, n: u64) -> usize {
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    for (i, slot) in out[at..at + digits].iter_mut().rev().enumerate() {
        *slot = b"0123456789abcdef"[((n >> (i * 4)) & 0xf) as usize];
    }
    at + digits
}

/// Writes `n` in decimal at `out[at..]`; returns the end.
#[inline]
pub(crate) fn push_decimal(out: &mut [u8], at: usize, n: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut n = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let tail = &digits[start..];
    out[at..at + tail.len()].copy_from_slice(tail);
    at + tail.len()
}
