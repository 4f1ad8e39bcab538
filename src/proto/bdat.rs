//! One `BDAT` chunk (RFC 3030): exactly `chunk_len` raw octets, no dot
//! handling and no line parsing, so binary content passes untouched.

use bytes::{Buf, BytesMut};

/// How a BDAT chunk ended. Every outcome means exactly the announced number
/// of octets was consumed, so the next command starts right after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdatOutcome {
    /// The chunk was appended to the output.
    Complete,
    /// The chunk would make the message larger than allowed; it was drained
    /// (`552 5.3.4`).
    TooLarge,
    /// The chunk was drained on request ([`BdatReceiver::discard`]).
    Discarded,
}

/// Receives one BDAT chunk into an output buffer.
///
/// ```
/// use bytes::BytesMut;
/// use smtpsrv::proto::{BdatOutcome, BdatReceiver};
///
/// // BDAT 5 LAST, with a pipelined QUIT after the chunk.
/// let mut receiver = BdatReceiver::new(5, 1024);
/// let mut src = BytesMut::from(&b"a\r\n.\nQUIT\r\n"[..]);
/// let mut message = BytesMut::new();
/// assert_eq!(receiver.feed(&mut src, &mut message), Some(BdatOutcome::Complete));
/// assert_eq!(&message[..], b"a\r\n.\n");
/// assert_eq!(&src[..], b"QUIT\r\n");
/// ```
#[derive(Debug, Clone)]
pub struct BdatReceiver {
    remaining: u64,
    /// What the chunk ends with; anything but `Complete` drains it.
    outcome: BdatOutcome,
}

impl BdatReceiver {
    /// A receiver for a chunk of `chunk_len` octets, when `room` more octets
    /// are allowed in the message. A chunk larger than `room` is drained and
    /// ends with [`BdatOutcome::TooLarge`]; the caller then frees the message.
    pub fn new(chunk_len: u64, room: u64) -> Self {
        let outcome = if chunk_len > room {
            BdatOutcome::TooLarge
        } else {
            BdatOutcome::Complete
        };
        Self {
            remaining: chunk_len,
            outcome,
        }
    }

    /// A receiver that drains exactly `chunk_len` octets and ends with
    /// [`BdatOutcome::Discarded`], for a BDAT that is answered with an error
    /// (e.g. `503` out of sequence) but whose octets must still be skipped.
    pub fn discard(chunk_len: u64) -> Self {
        Self {
            remaining: chunk_len,
            outcome: BdatOutcome::Discarded,
        }
    }

    /// Consumes up to the rest of the chunk from `src`, appending it to `out`
    /// unless the chunk is being drained.
    ///
    /// Returns `None` while octets are still due (all of `src` was used), and
    /// the outcome once the whole chunk has been consumed; the bytes after it
    /// stay in `src`. `BDAT 0` completes without consuming anything.
    pub fn feed(&mut self, src: &mut BytesMut, out: &mut BytesMut) -> Option<BdatOutcome> {
        let take = usize::try_from(self.remaining).map_or(src.len(), |due| due.min(src.len()));
        if self.outcome == BdatOutcome::Complete {
            out.extend_from_slice(&src[..take]);
        }
        src.advance(take);
        self.remaining -= take as u64;
        (self.remaining == 0).then_some(self.outcome)
    }

    /// How the chunk will end, known before any of it is read.
    pub fn outcome(&self) -> BdatOutcome {
        self.outcome
    }

    /// Octets of the chunk not yet consumed.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` in turn; after the outcome, later chunks only pile up
    /// in `src` as the next command would.
    fn run(
        mut receiver: BdatReceiver,
        chunks: &[&[u8]],
    ) -> (Vec<u8>, Option<BdatOutcome>, Vec<u8>) {
        let mut src = BytesMut::new();
        let mut out = BytesMut::new();
        // A first call with nothing to read: only `BDAT 0` may complete.
        let mut outcome = receiver.feed(&mut src, &mut out);
        for chunk in chunks {
            src.extend_from_slice(chunk);
            if outcome.is_none() {
                outcome = receiver.feed(&mut src, &mut out);
                if outcome.is_none() {
                    assert!(src.is_empty());
                }
            }
        }
        (out.to_vec(), outcome, src.to_vec())
    }

    #[test]
    fn consumes_exactly_the_chunk_raw() {
        let input = b"\r\n.\r\n..\n\0\xffBDAT 1 LAST\r\n";
        let got = run(BdatReceiver::new(10, 100), &[input]);
        assert_eq!(got.0, b"\r\n.\r\n..\n\0\xff");
        assert_eq!(got.1, Some(BdatOutcome::Complete));
        assert_eq!(got.2, b"BDAT 1 LAST\r\n");
    }

    #[test]
    fn zero_length_chunk_completes_at_once() {
        let mut receiver = BdatReceiver::new(0, 0);
        let mut src = BytesMut::from(&b"QUIT\r\n"[..]);
        let mut out = BytesMut::new();
        assert_eq!(
            receiver.feed(&mut src, &mut out),
            Some(BdatOutcome::Complete)
        );
        assert_eq!(&src[..], b"QUIT\r\n");
        let mut empty = BytesMut::new();
        assert_eq!(
            BdatReceiver::discard(0).feed(&mut empty, &mut out),
            Some(BdatOutcome::Discarded)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn chunk_larger_than_room_is_drained() {
        let mut receiver = BdatReceiver::new(3000, 2999);
        let mut out = BytesMut::from(&b"earlier chunk"[..]);
        let mut src = BytesMut::new();
        for _ in 0..2 {
            src.extend_from_slice(&[b'z'; 1000]);
            assert_eq!(receiver.feed(&mut src, &mut out), None);
            assert!(src.is_empty());
        }
        assert_eq!(receiver.remaining(), 1000);
        src.extend_from_slice(&[b'z'; 1000]);
        src.extend_from_slice(b"RSET\r\n");
        assert_eq!(
            receiver.feed(&mut src, &mut out),
            Some(BdatOutcome::TooLarge)
        );
        assert_eq!(&out[..], b"earlier chunk", "nothing of the chunk is kept");
        assert_eq!(&src[..], b"RSET\r\n");
        assert_eq!(receiver.remaining(), 0);
        // Exactly the room is fine.
        assert_eq!(
            run(BdatReceiver::new(3, 3), &[b"abc"]).1,
            Some(BdatOutcome::Complete)
        );
    }

    #[test]
    fn discard_drains_exactly_the_chunk() {
        let got = run(BdatReceiver::discard(4), &[b"ab", b"cdQUIT\r\n"]);
        assert_eq!(
            got,
            (
                Vec::new(),
                Some(BdatOutcome::Discarded),
                b"QUIT\r\n".to_vec()
            )
        );
    }

    #[test]
    fn huge_announced_length_is_not_buffered_up_front() {
        let mut receiver = BdatReceiver::discard(u64::MAX);
        let mut src = BytesMut::from(&[0u8; 4096][..]);
        let mut out = BytesMut::new();
        assert_eq!(receiver.feed(&mut src, &mut out), None);
        assert_eq!(receiver.remaining(), u64::MAX - 4096);
        assert_eq!(out.capacity(), 0);
    }

    #[test]
    fn every_split_gives_the_same_result() {
        let input: &[u8] = b"\r\n.\r\nabc\r\n.\r\nNEXT\r\n";
        let make = |kind: u8| match kind {
            0 => BdatReceiver::new(13, 13),
            1 => BdatReceiver::new(13, 12),
            _ => BdatReceiver::discard(13),
        };
        for kind in 0..3 {
            let one = run(make(kind), &[input]);
            assert_eq!(one.2, b"NEXT\r\n");
            for a in 0..=input.len() {
                for b in a..=input.len() {
                    let parts = [&input[..a], &input[a..b], &input[b..]];
                    assert_eq!(run(make(kind), &parts), one, "kind {kind} at {a},{b}");
                }
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(run(make(kind), &bytes), one, "byte by byte");
        }
    }

    use crate::proto::test_rng::XorShift;

    #[test]
    fn random_inputs_match_the_reference() {
        let alphabet = b"\r\n.x";
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for case in 0..3000 {
            let len = rng.below(40);
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let chunk_len = rng.below(len + 1);
            let room = rng.below(45) as u64;
            let mut chunks = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()).min(5));
                chunks.push(chunk);
                rest = tail;
            }
            let got = run(BdatReceiver::new(chunk_len as u64, room), &chunks);
            // Reference: the first `chunk_len` octets, kept only if they fit.
            let (chunk, after) = input.split_at(chunk_len);
            let expected = if chunk_len as u64 <= room {
                (chunk.to_vec(), Some(BdatOutcome::Complete), after.to_vec())
            } else {
                (Vec::new(), Some(BdatOutcome::TooLarge), after.to_vec())
            };
            assert_eq!(got, expected, "case {case}");
        }
    }
}
