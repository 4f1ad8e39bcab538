//! Command lines: CRLF-terminated, bounded in length, resumable.
//!
//! A line ends only at CRLF (RFC 5321 2.3.8): a bare LF or bare CR is part of
//! the line (and will make it a syntax error later). A line longer than the
//! limit is drained up to its CRLF without being buffered, then reported once
//! as [`LineEvent::TooLong`], so the session stays in sync with the client.

use bytes::{Buf, BytesMut};

/// What [`LineReader::poll_line`] found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line, without its CRLF.
    Line(BytesMut),
    /// A line longer than the limit was drained through its CRLF.
    TooLong,
}

/// Splits CRLF-terminated lines off an input buffer.
///
/// ```
/// use bytes::BytesMut;
/// use smtpsrv::proto::{LineEvent, LineReader};
///
/// let mut reader = LineReader::new(512);
/// let mut src = BytesMut::from(&b"NOOP\r\nQUI"[..]);
/// assert_eq!(reader.poll_line(&mut src), Some(LineEvent::Line(BytesMut::from(&b"NOOP"[..]))));
/// assert_eq!(reader.poll_line(&mut src), None); // "QUI" waits for more input
/// src.extend_from_slice(b"T\r\n");
/// assert_eq!(reader.poll_line(&mut src), Some(LineEvent::Line(BytesMut::from(&b"QUIT"[..]))));
/// ```
#[derive(Debug, Clone)]
pub struct LineReader {
    max_len: usize,
    /// Bytes at the front of `src` already searched for a line feed, so
    /// input arriving in small pieces is not scanned again and again.
    scanned: usize,
    discarding: bool,
}

impl LineReader {
    /// A reader for lines of at most `max_len` octets, CRLF included
    /// (RFC 5321 4.5.3.1.4 gives 512 for command lines). With `max_len < 2`
    /// every line is too long.
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            scanned: 0,
            discarding: false,
        }
    }

    /// Takes the next line off the front of `src`.
    ///
    /// Returns `None` when more input is needed; everything not yet returned
    /// stays in `src`, except the drained part of an over-long line, so
    /// `src` never holds more than about `max_len` octets because of us.
    pub fn poll_line(&mut self, src: &mut BytesMut) -> Option<LineEvent> {
        if !self.discarding {
            let window = src.len().min(self.max_len);
            match find_crlf(&src[..window], self.scanned) {
                Some(lf) => {
                    self.scanned = 0;
                    let line = src.split_to(lf - 1);
                    src.advance(2);
                    return Some(LineEvent::Line(line));
                }
                None if src.len() < self.max_len => {
                    self.scanned = window;
                    return None;
                }
                // No CRLF within `max_len` octets: the line is too long. Its
                // CRLF may still straddle the limit, so search all of `src`.
                None => {
                    self.discarding = true;
                    self.scanned = 0;
                }
            }
        }
        self.drain(src)
    }

    /// True while an over-long line is being drained.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    fn drain(&mut self, src: &mut BytesMut) -> Option<LineEvent> {
        if let Some(lf) = find_crlf(src, self.scanned) {
            src.advance(lf + 1);
            self.scanned = 0;
            self.discarding = false;
            return Some(LineEvent::TooLong);
        }
        // Keep a trailing CR: its LF may come with the next read.
        let keep = usize::from(src.last() == Some(&b'\r'));
        src.advance(src.len() - keep);
        self.scanned = keep;
        None
    }
}

/// Index of the LF of the first CRLF in `buf` whose LF is at or after `from`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut from = from;
    while let Some(offset) = buf.get(from..).and_then(|rest| memchr::memchr(b'\n', rest)) {
        let lf = from + offset;
        if lf > 0 && buf.get(lf - 1) == Some(&b'\r') {
            return Some(lf);
        }
        from = lf + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Line(Vec<u8>),
        TooLong,
    }

    /// Feeds `chunks` one after the other, polling until each is used up.
    fn run(max_len: usize, chunks: &[&[u8]]) -> (Vec<Event>, Vec<u8>) {
        let mut reader = LineReader::new(max_len);
        let mut src = BytesMut::new();
        let mut events = Vec::new();
        for chunk in chunks {
            src.extend_from_slice(chunk);
            while let Some(event) = reader.poll_line(&mut src) {
                events.push(match event {
                    LineEvent::Line(line) => Event::Line(line.to_vec()),
                    LineEvent::TooLong => Event::TooLong,
                });
            }
            assert!(src.len() <= max_len.max(1), "src grew to {}", src.len());
        }
        (events, src.to_vec())
    }

    /// Obviously correct model: split at every CRLF, judge each line's length.
    fn reference(max_len: usize, input: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i + 1 < input.len() {
            if input[i] == b'\r' && input[i + 1] == b'\n' {
                let line = &input[start..i];
                events.push(if line.len() + 2 <= max_len {
                    Event::Line(line.to_vec())
                } else {
                    Event::TooLong
                });
                i += 2;
                start = i;
            } else {
                i += 1;
            }
        }
        events
    }

    fn line(text: &[u8]) -> Event {
        Event::Line(text.to_vec())
    }

    #[test]
    fn lines_end_only_at_crlf() {
        let cases: &[(&[u8], Vec<Event>, &[u8])] = &[
            (b"NOOP\r\n", vec![line(b"NOOP")], b""),
            (b"\r\n", vec![line(b"")], b""),
            (b"a\nb\r\n", vec![line(b"a\nb")], b""),
            (b"a\rb\r\n", vec![line(b"a\rb")], b""),
            (b"a\r\r\n", vec![line(b"a\r")], b""),
            (b"\n\r\n", vec![line(b"\n")], b""),
            (b"a\n", vec![], b"a\n"),
            (b"a\r", vec![], b"a\r"),
            (b"A\r\nB\r\nC", vec![line(b"A"), line(b"B")], b"C"),
        ];
        for (input, expected, leftover) in cases {
            let (events, rest) = run(512, &[input]);
            assert_eq!(&events, expected, "input {input:?}");
            assert_eq!(&rest[..], *leftover, "input {input:?}");
        }
    }

    #[test]
    fn limit_counts_the_crlf() {
        assert_eq!(run(6, &[b"abcd\r\n"]).0, vec![line(b"abcd")]);
        assert_eq!(
            run(6, &[b"abcde\r\nok\r\n"]).0,
            vec![Event::TooLong, line(b"ok")]
        );
        // CRLF straddling the limit: the CR is inside, the LF just past it.
        assert_eq!(
            run(6, &[b"abcde\r", b"\nok\r\n"]).0,
            vec![Event::TooLong, line(b"ok")]
        );
        assert_eq!(
            run(1, &[b"\r\nx\r\n"]).0,
            vec![Event::TooLong, Event::TooLong]
        );
    }

    #[test]
    fn too_long_is_reported_once_and_then_lines_resume() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\nmore\r\nNOOP\r\n");
        let (events, rest) = run(512, &[&input]);
        assert_eq!(events, vec![Event::TooLong, line(b"NOOP")]);
        assert!(rest.is_empty());
    }

    #[test]
    fn over_long_line_keeps_src_bounded() {
        let mut reader = LineReader::new(512);
        let mut src = BytesMut::new();
        for _ in 0..1000 {
            src.extend_from_slice(&[b'y'; 700]);
            src.extend_from_slice(b"\r");
            assert_eq!(reader.poll_line(&mut src), None);
            assert!(reader.is_discarding());
            assert!(src.len() <= 1, "src holds {} octets", src.len());
        }
        src.extend_from_slice(b"\nQUIT\r\n");
        assert_eq!(reader.poll_line(&mut src), Some(LineEvent::TooLong));
        assert!(!reader.is_discarding());
        assert_eq!(
            reader.poll_line(&mut src),
            Some(LineEvent::Line(BytesMut::from(&b"QUIT"[..])))
        );
        assert!(src.capacity() < 4096, "capacity {}", src.capacity());
    }

    #[test]
    fn waiting_line_stays_below_the_limit() {
        let mut reader = LineReader::new(512);
        let mut src = BytesMut::from(&[b'z'; 511][..]);
        assert_eq!(reader.poll_line(&mut src), None);
        assert!(!reader.is_discarding());
        assert_eq!(src.len(), 511);
        src.extend_from_slice(b"z");
        assert_eq!(reader.poll_line(&mut src), None);
        assert!(reader.is_discarding());
        assert!(src.is_empty());
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let inputs: &[&[u8]] = &[
            b"EHLO a\r\nMAIL FROM:<a@b>\r\n\r\nRCPT\nTO\r\nQU",
            b"0123456789\r\nabc\r\r\n\n\r\n0123456789abcdef\r\nok\r\n",
            b"12345678\r\n123456789\r\n1234567\r\r\n",
        ];
        for max_len in [2, 9, 10, 11, 512] {
            for input in inputs {
                let whole = run(max_len, &[input]);
                assert_eq!(whole.0, reference(max_len, input));
                for at in 0..=input.len() {
                    let (a, b) = input.split_at(at);
                    assert_eq!(run(max_len, &[a, b]).0, whole.0, "split at {at}");
                }
                let bytes: Vec<&[u8]> = input.chunks(1).collect();
                assert_eq!(run(max_len, &bytes).0, whole.0, "byte by byte");
            }
        }
    }

    use crate::proto::test_rng::XorShift;

    #[test]
    fn random_inputs_match_the_reference() {
        let alphabet = b"\r\r\n\n.xxxy";
        let mut rng = XorShift(0x5eed_1234_abcd_0001);
        for case in 0..4000 {
            let len = rng.below(60);
            let mut input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            input.extend_from_slice(b"\r\n");
            let max_len = 1 + rng.below(12);
            let mut chunks = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()).min(7));
                chunks.push(chunk);
                rest = tail;
            }
            let (events, leftover) = run(max_len, &chunks);
            assert_eq!(events, reference(max_len, &input), "case {case}: {input:?}");
            assert!(leftover.is_empty(), "case {case}");
        }
    }
}
