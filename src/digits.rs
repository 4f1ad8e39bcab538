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
///
/// Straight into `out`, last digit first, once the length is known: a
/// copy of a few digits from a scratch array is a `memcpy` call (three per
/// reply line for its enhanced status).
#[inline]
pub(crate) fn push_decimal(out: &mut [u8], at: usize, n: u32) -> usize {
    let digits = n.checked_ilog10().map_or(1, |log| log as usize + 1);
    let mut n = n;
    for slot in out[at..at + digits].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    at + digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_hex_are_written_in_place() {
        for n in [0, 7, 9, 10, 99, 100, 65_535, 1_000_000, u32::MAX] {
            let mut out = [b'x'; 14];
            let end = push_decimal(&mut out, 2, n);
            assert_eq!(&out[2..end], n.to_string().as_bytes());
            assert_eq!(out[end..], [b'x'; 14][end..]);
        }
        let mut out = [0u8; 16];
        let end = push_hex(&mut out, 0, 0x1f3);
        assert_eq!(&out[..end], b"1f3");
    }
}
