//! Raw messages stored compressed (LZ4), byte-exact when read back.
//!
//! Why: the raw source is most of what a commit writes (a 10 KiB message
//! was ~1.5 of the ~2.2 WAL pages each message costs), and the one writer
//! thread is the inbox's critical path. Mail is mostly text and compresses
//! well, so a message is packed on the SMTP session's task, before it is
//! queued, and the writer writes fewer pages. Mailpit, too, stores its raw
//! messages compressed (zstd). LZ4 (the pure-Rust, `unsafe`-free `lz4_flex`)
//! rather than zstd: it packs 10 KiB in microseconds and unpacks faster
//! still, and ingest speed matters more here than the last 20% of space.
//!
//! A message is kept packed only when that saves at least an eighth of its
//! size; otherwise (already compressed attachments, tiny messages) it is
//! stored as received and costs one failed attempt on the session's task.
//! Unpacking is bounded by the size stored beside the data, so a damaged
//! row is an error, never an outsized allocation.
//!
//! ```
//! use smtpsrv_inbox::packed;
//! let raw = b"Subject: hi\r\n\r\n".repeat(100);
//! let small = packed::pack(&raw).expect("repetitive text packs");
//! assert!(small.len() < raw.len() / 8);
//! assert_eq!(packed::unpack(&small, raw.len()).unwrap(), raw);
//! ```

/// `raw` compressed, or `None` when that would not save an eighth of it.
pub fn pack(raw: &[u8]) -> Option<Vec<u8>> {
    let small = lz4_flex::block::compress(raw);
    (small.len() <= raw.len() - raw.len() / 8).then_some(small)
}

/// Why stored data could not be unpacked.
#[derive(Debug)]
pub struct Damaged(String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stored message is damaged: {}", self.0)
    }
}

impl std::error::Error for Damaged {}

/// The `size` bytes that `data` (from [`pack`]) holds.
pub fn unpack(data: &[u8], size: usize) -> Result<Vec<u8>, Damaged> {
    let raw = lz4_flex::block::decompress(data, size).map_err(|e| Damaged(e.to_string()))?;
    if raw.len() != size {
        return Err(Damaged(format!("{} bytes, not {size}", raw.len())));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_packs_and_comes_back_byte_exact() {
        let raw: Vec<u8> = (0..2000)
            .flat_map(|i| format!("line {i} of a message body\r\n").into_bytes())
            .collect();
        let small = pack(&raw).unwrap();
        assert!(
            small.len() < raw.len() / 2,
            "{} of {}",
            small.len(),
            raw.len()
        );
        assert_eq!(unpack(&small, raw.len()).unwrap(), raw);
    }

    #[test]
    fn what_does_not_shrink_is_kept_as_received() {
        // Bytes from a simple generator: no repetition for LZ4 to find.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..10_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(pack(&noise).is_none());
        assert!(pack(b"").is_none(), "nothing to save on an empty message");
    }

    #[test]
    fn damaged_data_is_an_error_not_a_panic() {
        let raw = b"abcabcabcabcabcabcabcabcabcabcabcabcabcabcabc".repeat(20);
        let small = pack(&raw).unwrap();
        // The wrong size, a truncated block, garbage.
        assert!(unpack(&small, raw.len() - 1).is_err());
        assert!(unpack(&small, raw.len() + 1).is_err());
        assert!(unpack(&small[..small.len() / 2], raw.len()).is_err());
        assert!(unpack(&[0xff; 64], 1 << 20).is_err());
    }
}
